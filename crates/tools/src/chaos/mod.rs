//! Fault injection against real processes: the chaos runner behind
//! `jobvisor-chaos`, and the building blocks the crash tests use.
//!
//! A run starts a real `jobvisor serve` process, starts one job whose items
//! run a small shell program that logs every execution, and inflicts a
//! schedule of faults at random moments — SIGKILL and SIGTERM of the
//! server (restarted each time), restarts of the database (a throwaway
//! cluster of its own), and `pg_terminate_backend` of the server's
//! sessions. When the job has ended it compares the execution log with the
//! store (see [`audit`]) and prints a one-line verdict.

pub mod audit;
pub mod pg;

use anyhow::{Context, bail};
use audit::{ExecutionAudit, Snapshot};
use jobvisor::pb::{self, job_service_client::JobServiceClient};
use jobvisor_testkit::{
    db::with_database,
    process::{ServerProcess, ServerSpec},
};
use sqlx::{Connection, Executor, PgConnection};
use std::{
    collections::BTreeMap,
    fmt,
    net::SocketAddr,
    path::PathBuf,
    str::FromStr,
    time::{Duration, Instant},
};

/// A kind of fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Fault {
    /// SIGKILL of the server, then a restart.
    Kill,
    /// SIGTERM of the server (a drain), then a restart.
    Term,
    /// Stop the database, wait, start it again.
    DbRestart,
    /// `pg_terminate_backend` of every session of the server.
    BackendKill,
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Fault::Kill => "kill",
            Fault::Term => "term",
            Fault::DbRestart => "db-restart",
            Fault::BackendKill => "backend-kill",
        })
    }
}

impl FromStr for Fault {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "kill" => Ok(Fault::Kill),
            "term" => Ok(Fault::Term),
            "db-restart" => Ok(Fault::DbRestart),
            "backend-kill" => Ok(Fault::BackendKill),
            _ => Err(format!(
                "unknown fault {s:?}: kill, term, db-restart or backend-kill"
            )),
        }
    }
}

/// Parses a schedule like `kill:5,term:2,db-restart:1`.
pub fn parse_schedule(raw: &str) -> Result<Vec<(Fault, u32)>, String> {
    raw.split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|part| {
            let (name, n) = part.trim().split_once(':').unwrap_or((part.trim(), "1"));
            let n = n
                .parse()
                .map_err(|_| format!("{part:?}: the count must be a number"))?;
            Ok((name.parse()?, n))
        })
        .collect()
}

/// What to run and what to inflict.
#[derive(Debug, Clone)]
pub struct ChaosConfig {
    /// The `jobvisor` binary to run as the server.
    pub binary: PathBuf,
    pub items: u32,
    pub concurrency: u32,
    /// Steps per item and time per step: each step ends with a checkpoint.
    pub steps: u32,
    pub step: Duration,
    pub schedule: Vec<(Fault, u32)>,
    /// Time between faults: uniformly random in this range.
    pub gap: (Duration, Duration),
    /// A PostgreSQL to create the run's database in; `None`: a throwaway
    /// cluster (required for `db-restart`).
    pub admin_url: Option<String>,
    pub seed: u64,
    /// The server's `--shutdown-grace`.
    pub grace: Duration,
    /// Give up waiting for the job after this long.
    pub timeout: Duration,
    /// More `serve` arguments (e.g. `--pipelined-acks`).
    pub server_args: Vec<String>,
}

/// What a run found.
#[derive(Debug, Clone, Default)]
pub struct Verdict {
    pub seed: u64,
    pub faults: BTreeMap<Fault, u32>,
    pub items: u64,
    pub audit: ExecutionAudit,
    /// Completions the store recorded (the job's succeeded counter).
    pub completions: u64,
    /// Items not recorded as succeeded.
    pub lost: u64,
    /// Completions recorded more than once.
    pub duplicated: u64,
    pub final_state: String,
    /// Exit code and drain time of every SIGTERM.
    pub drains: Vec<(Option<i32>, Duration)>,
    /// Code and latency of calls made while the database was down.
    pub outage_calls: Vec<(String, Duration)>,
    pub seconds: f64,
    /// Problems beyond the figures (bad exit codes, slow outage calls).
    pub problems: Vec<String>,
    /// Where the logs of a failed run were kept.
    pub kept: Option<PathBuf>,
}

impl Verdict {
    pub fn passed(&self) -> bool {
        self.lost == 0
            && self.duplicated == 0
            && self.audit.unexplained.is_empty()
            && self.problems.is_empty()
            && self.final_state == "SUCCEEDED"
    }

    /// The one-line verdict.
    pub fn line(&self) -> String {
        let faults: Vec<String> = self
            .faults
            .iter()
            .map(|(f, n)| format!("{f}:{n}"))
            .collect();
        format!(
            "chaos {}: faults={} items={} executions={} re-executed={} (from their checkpoint: {}) \
             completions={} lost={} duplicated={} state={} in {:.1}s (seed {})",
            if self.passed() { "PASS" } else { "FAIL" },
            if faults.is_empty() {
                "none".into()
            } else {
                faults.join(",")
            },
            self.items,
            self.audit.executions,
            self.audit.re_executions,
            self.audit.resumed_from_checkpoint,
            self.completions,
            self.lost,
            self.duplicated,
            self.final_state,
            self.seconds,
            self.seed,
        )
    }
}

/// The program every item runs: steps with checkpoints, logging each
/// execution's start (and the step it starts from) and end.
const ITEM_SCRIPT: &str = r#"step="${JOBVISOR_CHECKPOINT:-0}"
echo "start $JOBVISOR_ITEM_INDEX $JOBVISOR_ATTEMPT $step" >> "$EXEC_LOG"
while [ "$step" -lt "$STEPS" ]; do
  sleep "$STEP_SECONDS"
  step=$((step + 1))
  echo "@checkpoint $step"
done
echo "end $JOBVISOR_ITEM_INDEX $JOBVISOR_ATTEMPT" >> "$EXEC_LOG"
"#;

/// A small deterministic random source (xorshift), so a run can be
/// replayed from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn between(&mut self, (lo, hi): (Duration, Duration)) -> Duration {
        let span = hi.saturating_sub(lo).as_millis() as u64;
        lo + Duration::from_millis(if span == 0 { 0 } else { self.next() % span })
    }
}

/// Where the run's database lives.
enum Database {
    Throwaway(pg::ThrowawayPostgres),
    Shared { admin_url: String, name: String },
}

impl Database {
    fn url(&self) -> String {
        match self {
            Database::Throwaway(pg) => pg.url("postgres"),
            Database::Shared { admin_url, name } => with_database(admin_url, name),
        }
    }
}

/// Runs the job under the fault schedule and returns the verdict.
pub async fn run(config: &ChaosConfig) -> anyhow::Result<Verdict> {
    let started = Instant::now();
    let needs_throwaway = config
        .schedule
        .iter()
        .any(|(f, n)| *f == Fault::DbRestart && *n > 0);
    let database = match (&config.admin_url, needs_throwaway) {
        (Some(admin_url), false) => {
            let name = format!(
                "jv_chaos_{}",
                &uuid::Uuid::new_v4().simple().to_string()[..12]
            );
            let mut admin = PgConnection::connect(admin_url)
                .await
                .context("cannot reach PostgreSQL")?;
            admin
                .execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                .await?;
            Database::Shared {
                admin_url: admin_url.clone(),
                name,
            }
        }
        _ => Database::Throwaway(pg::ThrowawayPostgres::start()?),
    };
    let result = run_on(config, &database, started).await;
    if let Database::Shared { admin_url, name } = &database
        && let Ok(mut admin) = PgConnection::connect(admin_url).await
    {
        let _ = admin
            .execute(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
            )))
            .await;
    }
    result
}

async fn run_on(
    config: &ChaosConfig,
    database: &Database,
    started: Instant,
) -> anyhow::Result<Verdict> {
    let work = tempfile::Builder::new().prefix("jv-chaos-").tempdir()?;
    let script = work.path().join("item.sh");
    std::fs::write(&script, ITEM_SCRIPT)?;
    let exec_log = work.path().join("executions.log");
    let spec = ServerSpec {
        binary: config.binary.clone(),
        addr: SocketAddr::from(([127, 0, 0, 1], jobvisor_testkit::process::free_port()?)),
        database_url: database.url(),
        args: vec![
            "--allow-exec".into(),
            "--shutdown-grace".into(),
            humantime::format_duration(config.grace).to_string(),
            "--db-acquire-timeout".into(),
            "1s".into(),
        ]
        .into_iter()
        .chain(config.server_args.iter().cloned())
        .collect(),
        log: work.path().join("server.log"),
        env: vec![],
        cwd: None,
    };
    let mut server = ServerProcess::start(&spec).await?;
    let mut db = PgConnection::connect(&database.url()).await?;

    let job = client(&spec)
        .await?
        .start_job(pb::StartJobRequest {
            name: "chaos".into(),
            executor: "exec".into(),
            items: (0..config.items).map(|i| format!("item-{i}")).collect(),
            concurrency: config.concurrency,
            params: [
                ("command".to_string(), "sh".to_string()),
                ("args".into(), serde_json::json!([script]).to_string()),
                (
                    "env".into(),
                    serde_json::json!({
                        "EXEC_LOG": exec_log,
                        "STEPS": config.steps.to_string(),
                        "STEP_SECONDS": format!("{:.3}", config.step.as_secs_f64()),
                    })
                    .to_string(),
                ),
                ("kill_grace".into(), "2s".into()),
            ]
            .into(),
            max_attempts: 100,
            ..Default::default()
        })
        .await?
        .into_inner();

    let mut verdict = Verdict {
        seed: config.seed,
        items: u64::from(config.items),
        ..Verdict::default()
    };
    let mut rng = Rng(config.seed.max(1));
    let mut pending: Vec<Fault> = config
        .schedule
        .iter()
        .flat_map(|(f, n)| std::iter::repeat_n(*f, *n as usize))
        .collect();
    let mut snapshots = Vec::new();
    while !pending.is_empty() {
        tokio::time::sleep(rng.between(config.gap)).await;
        if job_done(&spec, &job.id).await {
            break;
        }
        let fault = pending.swap_remove((rng.next() % pending.len() as u64) as usize);
        inflict(
            fault,
            &spec,
            &mut server,
            &mut db,
            database,
            &exec_log,
            &job.id,
            &mut verdict,
            &mut snapshots,
        )
        .await
        .with_context(|| format!("inflicting {fault}"))?;
        *verdict.faults.entry(fault).or_default() += 1;
    }

    // Let the job finish.
    let deadline = Instant::now() + config.timeout;
    let final_job = loop {
        if let Ok(mut c) = client(&spec).await
            && let Ok(j) = c
                .get_job(pb::GetJobRequest {
                    job_id: job.id.clone(),
                })
                .await
        {
            let j = j.into_inner();
            if matches!(
                pb::JobState::try_from(j.state),
                Ok(pb::JobState::Succeeded | pb::JobState::Failed | pb::JobState::Cancelled)
            ) {
                break j;
            }
        }
        if Instant::now() > deadline {
            bail!(
                "the job did not end within {:?}; server log:\n{}",
                config.timeout,
                jobvisor_testkit::process::tail(&spec.log)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    verdict.final_state = pb::JobState::try_from(final_job.state)
        .map(|s| s.as_str_name().trim_start_matches("JOB_STATE_").to_string())
        .unwrap_or_default();

    // What the store recorded.
    let mut db = PgConnection::connect(&database.url()).await?;
    let (succeeded_rows, counter): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM items WHERE job_id = $1::uuid AND state = 2), \
                (SELECT succeeded_items FROM jobs WHERE id = $1::uuid)",
    )
    .bind(&job.id)
    .fetch_one(&mut db)
    .await?;
    verdict.completions = counter as u64;
    verdict.lost = u64::from(config.items).saturating_sub(succeeded_rows as u64);
    verdict.duplicated = (counter - succeeded_rows).max(0) as u64;
    let log = audit::parse_log(&std::fs::read_to_string(&exec_log).unwrap_or_default());
    verdict.audit = audit::audit(&log, &snapshots);
    let _ = server
        .terminate(config.grace + Duration::from_secs(5))
        .await;
    verdict.seconds = started.elapsed().as_secs_f64();
    if !verdict.passed() {
        verdict
            .problems
            .extend(verdict.audit.unexplained.iter().take(5).cloned());
        let restarts: Vec<String> = snapshots.iter().map(|s| s.log_lines.to_string()).collect();
        verdict.problems.push(format!(
            "restarts after execution-log lines {}",
            restarts.join(", ")
        ));
        verdict.kept = Some(work.keep());
    }
    Ok(verdict)
}

async fn client(spec: &ServerSpec) -> anyhow::Result<JobServiceClient<tonic::transport::Channel>> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", spec.addr))?
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(10))
        .connect()
        .await?;
    Ok(JobServiceClient::new(channel))
}

async fn job_done(spec: &ServerSpec, id: &str) -> bool {
    let Ok(mut c) = client(spec).await else {
        return false;
    };
    let Ok(job) = c.get_job(pb::GetJobRequest { job_id: id.into() }).await else {
        return false;
    };
    job.into_inner().state != pb::JobState::Running as i32
}

/// Waits until every session opened before `db` on its database has ended.
/// A killed server's last statement may still be running in its
/// PostgreSQL session (a batch already sent commits after the process is
/// gone): what the store holds is only settled once those sessions end.
async fn sessions_ended(db: &mut PgConnection) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let older: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE datname = current_database() AND pid <> pg_backend_pid() \
               AND backend_start < (SELECT backend_start FROM pg_stat_activity \
                                    WHERE pid = pg_backend_pid())",
        )
        .fetch_one(&mut *db)
        .await?;
        if older == 0 {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("{older} session(s) of the stopped server still open after 10 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What the store holds for every unfinished item, keyed by index.
async fn snapshot(db: &mut PgConnection, job: &str, log_lines: usize) -> anyhow::Result<Snapshot> {
    let rows: Vec<(i32, Option<Vec<u8>>)> = sqlx::query_as(
        "SELECT idx, checkpoint FROM items WHERE job_id = $1::uuid AND state IN (0, 1)",
    )
    .bind(job)
    .fetch_all(&mut *db)
    .await?;
    Ok(Snapshot {
        log_lines,
        unfinished: rows
            .into_iter()
            .map(|(i, c)| {
                let step = c
                    .and_then(|c| String::from_utf8(c).ok()?.parse().ok())
                    .unwrap_or(0);
                (i as u32, step)
            })
            .collect(),
    })
}

fn log_lines(path: &std::path::Path) -> usize {
    std::fs::read_to_string(path)
        .map(|t| t.lines().count())
        .unwrap_or(0)
}

#[allow(clippy::too_many_arguments)]
async fn inflict(
    fault: Fault,
    spec: &ServerSpec,
    server: &mut ServerProcess,
    db: &mut PgConnection,
    database: &Database,
    exec_log: &std::path::Path,
    job: &str,
    verdict: &mut Verdict,
    snapshots: &mut Vec<Snapshot>,
) -> anyhow::Result<()> {
    match fault {
        Fault::Kill | Fault::Term => {
            if fault == Fault::Kill {
                server.kill9()?;
            } else {
                let started = Instant::now();
                let status = server
                    .terminate(spec_grace(spec) + Duration::from_secs(5))
                    .await?;
                let took = started.elapsed();
                if status.code() != Some(0) {
                    verdict
                        .problems
                        .push(format!("SIGTERM: the server exited with {status}"));
                }
                if took > spec_grace(spec) + Duration::from_secs(2) {
                    verdict
                        .problems
                        .push(format!("SIGTERM: the drain took {took:?}"));
                }
                verdict.drains.push((status.code(), took));
            }
            // The server is down: note what the store holds, then restart.
            let lines = log_lines(exec_log);
            *db = PgConnection::connect(&database.url()).await?;
            sessions_ended(db).await?;
            snapshots.push(snapshot(db, job, lines).await?);
            *server = ServerProcess::start(spec).await?;
        }
        Fault::DbRestart => {
            let Database::Throwaway(pg) = database else {
                bail!("db-restart needs the throwaway cluster");
            };
            pg.stop()?;
            // Calls made while it is down must fail fast with UNAVAILABLE.
            let started = Instant::now();
            let code = match client(spec).await {
                Ok(mut c) => {
                    let mut request = tonic::Request::new(pb::GetJobRequest { job_id: job.into() });
                    request.set_timeout(Duration::from_secs(5));
                    match c.get_job(request).await {
                        Ok(_) => "OK".to_string(),
                        Err(s) => format!("{:?}", s.code()),
                    }
                }
                Err(e) => format!("connect failed: {e}"),
            };
            let took = started.elapsed();
            if code != "Unavailable" || took > Duration::from_secs(3) {
                verdict.problems.push(format!(
                    "during the database outage GetJob answered {code} after {took:?}"
                ));
            }
            verdict.outage_calls.push((code, took));
            tokio::time::sleep(Duration::from_millis(500)).await;
            pg.start_again()?;
            *db = PgConnection::connect(&database.url()).await?;
        }
        Fault::BackendKill => {
            if db.ping().await.is_err() {
                *db = PgConnection::connect(&database.url()).await?;
            }
            sqlx::query(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE application_name LIKE 'jobvisor%' AND datname = current_database()",
            )
            .execute(&mut *db)
            .await?;
        }
    }
    Ok(())
}

fn spec_grace(spec: &ServerSpec) -> Duration {
    spec.args
        .iter()
        .position(|a| a == "--shutdown-grace")
        .and_then(|i| spec.args.get(i + 1))
        .and_then(|g| humantime::parse_duration(g).ok())
        .unwrap_or(Duration::from_secs(10))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_schedules() {
        assert_eq!(
            parse_schedule("kill:5, term:2,backend-kill").unwrap(),
            [(Fault::Kill, 5), (Fault::Term, 2), (Fault::BackendKill, 1)]
        );
        assert!(
            parse_schedule("explode:1")
                .unwrap_err()
                .contains("unknown fault")
        );
        assert!(parse_schedule("kill:x").is_err());
    }
}

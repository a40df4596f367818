//! `jobvisor-bench`: the performance scenarios of the benchmark suite,
//! each against a fresh database and a real server process (so its memory
//! is its own), printing a table row and a JSON line per scenario.
//!
//! The scenarios are in [`scenarios`]; this module holds what they share:
//! the environment (database, server, client), the jobs they start, the
//! figures (percentile summaries), timed control calls ([`calls`]) and the
//! server's Prometheus histograms ([`prom`]).

pub mod calls;
pub mod prom;
pub mod scenarios;

use anyhow::Context as _;
use jobvisor::pb::{self, job_service_client::JobServiceClient};
use jobvisor_testkit::{
    db,
    process::{ServerProcess, ServerSpec, free_port},
};
use serde::Serialize;
use sqlx::{Connection, Executor, PgConnection, PgPool, postgres::PgPoolOptions};
use std::{
    fmt,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};
use tonic::transport::Channel;

/// The generated client, as every scenario uses it.
pub type Client = JobServiceClient<Channel>;

/// What every scenario run needs: the binary under test, where to create
/// databases, the server flags common to the run, and whether to print
/// progress notes (on stderr, so stdout stays the table and the JSON).
#[derive(Debug, Clone)]
pub struct Setup {
    pub binary: PathBuf,
    pub admin_url: String,
    pub server_args: Vec<String>,
    pub progress: bool,
}

impl Setup {
    /// A progress note on stderr (not with --json).
    pub fn note(&self, message: impl fmt::Display) {
        if self.progress {
            eprintln!("# {message}");
        }
    }

    /// The common server flags followed by `extra`.
    pub fn args(&self, extra: &[&str]) -> Vec<String> {
        self.server_args
            .iter()
            .cloned()
            .chain(extra.iter().map(|a| a.to_string()))
            .collect()
    }
}

/// A fresh database on the benchmark's PostgreSQL, dropped at the end.
pub struct Database {
    admin_url: String,
    pub name: String,
    /// The URL of the database itself.
    pub url: String,
}

impl Database {
    pub async fn create(admin_url: &str) -> anyhow::Result<Database> {
        let name = format!(
            "jv_bench_{}",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        );
        let mut admin = PgConnection::connect(admin_url)
            .await
            .with_context(|| "cannot reach PostgreSQL (--database-url / DATABASE_URL)")?;
        admin
            .execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .await?;
        Ok(Database {
            admin_url: admin_url.to_string(),
            url: db::with_database(admin_url, &name),
            name,
        })
    }

    /// A small pool on the database, for the scenarios' own queries
    /// (after the server has created the tables).
    pub async fn pool(&self) -> anyhow::Result<PgPool> {
        Ok(PgPoolOptions::new()
            .max_connections(2)
            .connect(&self.url)
            .await?)
    }

    pub async fn remove(self) {
        if let Ok(mut admin) = PgConnection::connect(&self.admin_url).await {
            let _ = admin
                .execute(sqlx::AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                    self.name
                )))
                .await;
        }
    }

    /// How to start a server on this database at a free port, logging to
    /// `log`.
    pub fn spec(
        &self,
        binary: &Path,
        args: Vec<String>,
        log: PathBuf,
    ) -> anyhow::Result<ServerSpec> {
        Ok(ServerSpec {
            binary: binary.to_path_buf(),
            addr: SocketAddr::from(([127, 0, 0, 1], free_port()?)),
            database_url: self.url.clone(),
            args,
            log,
            env: vec![],
            cwd: None,
        })
    }
}

/// One server on one fresh database, for one scenario run.
pub struct Env {
    pub server: ServerProcess,
    pub spec: ServerSpec,
    pub db: Database,
    /// Where the server serves Prometheus metrics, if it was asked to.
    pub metrics: Option<SocketAddr>,
    _dir: tempfile::TempDir,
}

impl Env {
    /// Creates a database on `admin_url` and starts `binary serve` on it.
    pub async fn start(
        binary: &std::path::Path,
        admin_url: &str,
        args: &[&str],
    ) -> anyhow::Result<Env> {
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        Env::start_with(binary, admin_url, args, false).await
    }

    /// The same, with the run's flags plus `extra`, and `/metrics` on a
    /// free port if `metrics`.
    pub async fn start_setup(setup: &Setup, extra: &[&str], metrics: bool) -> anyhow::Result<Env> {
        Env::start_with(&setup.binary, &setup.admin_url, setup.args(extra), metrics).await
    }

    async fn start_with(
        binary: &Path,
        admin_url: &str,
        mut args: Vec<String>,
        metrics: bool,
    ) -> anyhow::Result<Env> {
        let db = Database::create(admin_url).await?;
        let dir = tempfile::Builder::new().prefix("jv-bench-").tempdir()?;
        let metrics = if metrics {
            let addr = SocketAddr::from(([127, 0, 0, 1], free_port()?));
            args.extend(["--metrics-listen".to_string(), addr.to_string()]);
            Some(addr)
        } else {
            None
        };
        let spec = db.spec(binary, args, dir.path().join("server.log"))?;
        let server = match ServerProcess::start(&spec).await {
            Ok(s) => s,
            Err(e) => {
                db.remove().await;
                return Err(e);
            }
        };
        Ok(Env {
            server,
            spec,
            db,
            metrics,
            _dir: dir,
        })
    }

    pub async fn client(&self) -> anyhow::Result<Client> {
        connect(self.spec.addr).await
    }

    /// Peak and current resident memory of the server, in MiB.
    pub fn rss_mib(&self) -> (f64, f64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.server.pid()))
            .unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
                .map(|kb| kb / 1024.0)
                .unwrap_or(0.0)
        };
        (field("VmHWM:"), field("VmRSS:"))
    }

    /// The server's `/metrics` page.
    pub async fn scrape(&self) -> anyhow::Result<String> {
        let addr = self
            .metrics
            .context("the server was started without --metrics-listen")?;
        prom::scrape(addr).await
    }

    /// Stops the server and drops the database.
    pub async fn finish(mut self) {
        let _ = self.server.terminate(Duration::from_secs(15)).await;
        self.db.remove().await;
    }
}

/// A client on its own HTTP/2 connection to `addr`.
pub async fn connect(addr: SocketAddr) -> anyhow::Result<Client> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
        .connect()
        .await?;
    Ok(JobServiceClient::new(channel).max_decoding_message_size(256 * 1024 * 1024))
}

/// A job of `sleep` items `item-0`…, as the scenarios start them.
#[derive(Debug, Clone)]
pub struct SleepJob {
    pub name: String,
    /// The executor the job names: `sleep`, or a remote executor whose
    /// workers run the same handler (the remote scenarios).
    pub executor: String,
    pub items: u32,
    pub concurrency: u32,
    pub duration_ms: u32,
    pub steps: u32,
    /// Items matching this regex fail on every attempt.
    pub fail_pattern: Option<String>,
    /// 0: the server's default (3).
    pub max_attempts: u32,
    /// The wait before a failed item's first retry (none: at once).
    pub retry_delay: Option<std::time::Duration>,
}

impl SleepJob {
    pub fn new(name: &str, items: u32, concurrency: u32, duration_ms: u32, steps: u32) -> SleepJob {
        SleepJob {
            name: name.into(),
            executor: "sleep".into(),
            items,
            concurrency,
            duration_ms,
            steps,
            fail_pattern: None,
            max_attempts: 0,
            retry_delay: None,
        }
    }

    /// The same job for another executor.
    pub fn on(mut self, executor: &str) -> SleepJob {
        self.executor = executor.into();
        self
    }

    pub fn request(&self) -> pb::StartJobRequest {
        let mut params: std::collections::HashMap<String, String> = [
            ("duration_ms".to_string(), self.duration_ms.to_string()),
            ("steps".into(), self.steps.to_string()),
        ]
        .into();
        if let Some(pattern) = &self.fail_pattern {
            params.insert("fail_pattern".into(), pattern.clone());
        }
        pb::StartJobRequest {
            name: self.name.clone(),
            executor: self.executor.clone(),
            items: (0..self.items).map(|i| format!("item-{i}")).collect(),
            concurrency: self.concurrency,
            max_attempts: self.max_attempts,
            params,
            retry_delay: self.retry_delay.and_then(|d| d.try_into().ok()),
            ..Default::default()
        }
    }

    pub async fn start(&self, client: &mut Client) -> anyhow::Result<pb::Job> {
        Ok(client.start_job(self.request()).await?.into_inner())
    }

    /// The job in words, for the reports.
    pub fn describe(&self) -> String {
        let retries = match self.retry_delay {
            Some(d) => format!(", retries after {}", humantime::format_duration(d)),
            None => String::new(),
        };
        format!(
            "{} × {} ms items in {} step(s), concurrency {}{retries}",
            self.items, self.duration_ms, self.steps, self.concurrency
        )
    }
}

/// Starts a job of `items` sleep items and returns it with the time the
/// call took.
pub async fn start_sleep_job(
    client: &mut Client,
    name: &str,
    items: u32,
    concurrency: u32,
    duration_ms: u32,
    steps: u32,
) -> anyhow::Result<(pb::Job, Duration)> {
    let started = Instant::now();
    let job = SleepJob::new(name, items, concurrency, duration_ms, steps)
        .start(client)
        .await?;
    Ok((job, started.elapsed()))
}

/// Starts `count` copies of `job`, `in_flight` calls at a time, and returns
/// their ids in order of answer.
pub async fn start_many(
    client: &Client,
    job: &SleepJob,
    count: u32,
    in_flight: usize,
) -> anyhow::Result<Vec<String>> {
    use futures::{StreamExt, TryStreamExt};
    let request = job.request();
    futures::stream::iter(0..count)
        .map(|_| {
            let mut client = client.clone();
            let request = request.clone();
            async move { anyhow::Ok(client.start_job(request).await?.into_inner().id) }
        })
        .buffer_unordered(in_flight.max(1))
        .try_collect()
        .await
}

/// Waits for the job's terminal event on a watch stream.
pub async fn wait_done(
    client: &mut Client,
    id: &str,
    timeout: Duration,
) -> anyhow::Result<pb::Job> {
    let mut stream = client
        .watch_job(pb::WatchJobRequest {
            job_id: id.into(),
            from_sequence: 0,
            window: None,
        })
        .await?
        .into_inner();
    tokio::time::timeout(timeout, async {
        while let Some(event) = stream.message().await? {
            if let Some(pb::job_event::Kind::StateChanged(c)) = &event.kind
                && is_terminal(c.to)
            {
                break;
            }
        }
        anyhow::Ok(())
    })
    .await
    .context("the job did not end in time")??;
    get_job(client, id).await
}

/// Polls GetJob every `every` until `ok` holds for the job (no stream:
/// a watcher would be part of the load).
pub async fn poll_job(
    client: &mut Client,
    id: &str,
    every: Duration,
    timeout: Duration,
    ok: impl Fn(&pb::Job) -> bool,
) -> anyhow::Result<pb::Job> {
    let deadline = Instant::now() + timeout;
    loop {
        let job = get_job(client, id).await?;
        if ok(&job) {
            return Ok(job);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "job {id} not as awaited within {timeout:?} (state {:?}, counts {:?})",
            pb::JobState::try_from(job.state),
            job.counts
        );
        tokio::time::sleep(every).await;
    }
}

pub async fn get_job(client: &mut Client, id: &str) -> anyhow::Result<pb::Job> {
    Ok(client
        .get_job(pb::GetJobRequest { job_id: id.into() })
        .await?
        .into_inner())
}

/// Whether a `JobState` value is terminal.
pub fn is_terminal(state: i32) -> bool {
    matches!(
        pb::JobState::try_from(state),
        Ok(pb::JobState::Succeeded | pb::JobState::Failed | pb::JobState::Cancelled)
    )
}

/// How many of the database's jobs are RUNNING with at least `min` item
/// claimed (from the job's counters, kept with the items).
pub async fn jobs_claiming(pool: &PgPool, min: i64) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar(
        "SELECT count(*) FROM jobs WHERE state = 'running' AND running_items >= $1",
    )
    .bind(min)
    .fetch_one(pool)
    .await?)
}

/// Polls [`jobs_claiming`] every `every` until it reaches `jobs`.
pub async fn wait_jobs_claiming(
    pool: &PgPool,
    jobs: i64,
    every: Duration,
    timeout: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let n = jobs_claiming(pool, 1).await?;
        if n >= jobs {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "only {n} of {jobs} jobs had an item running after {timeout:?}"
        );
        tokio::time::sleep(every).await;
    }
}

/// The p-th percentile (nearest rank) of sorted values.
fn rank(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// The median of some values.
pub fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        // Even: halfway between the two in the middle.
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// p50, p99 and max of some latencies, in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Summary {
    pub n: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Summary {
    pub fn of(samples: &[Duration]) -> Summary {
        Summary::of_ms(samples.iter().map(|d| d.as_secs_f64() * 1000.0).collect())
    }

    pub fn of_ms(mut ms: Vec<f64>) -> Summary {
        ms.sort_by(|a, b| a.total_cmp(b));
        Summary {
            n: ms.len(),
            p50_ms: rank(&ms, 50.0),
            p99_ms: rank(&ms, 99.0),
            max_ms: ms.last().copied().unwrap_or(0.0),
        }
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "p50 {:>8.2}  p99 {:>8.2}  max {:>8.2} ms  (n={})",
            self.p50_ms, self.p99_ms, self.max_ms, self.n
        )
    }
}

/// A small pseudo-random generator (splitmix64), to pick jobs at random
/// without another dependency.
pub struct Rng(u64);

impl Rng {
    pub fn seeded() -> Rng {
        Rng(SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0x9e37_79b9))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

/// CPU time (user + system) a process has used, in seconds.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // utime and stime are fields 14 and 15; count after the ")" ending the
    // name (field 2), whose first field is the state (field 3).
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // USER_HZ is 100 on Linux.
    (ticks(11) + ticks(12)) / 100.0
}

/// CPU time used by the PostgreSQL backends serving one database, read
/// from `/proc` (this runs on the database's machine): the backends'
/// pids come from `pg_stat_activity`. A reading is a map pid → seconds;
/// [`BackendCpu::since`] sums what each backend used after an earlier
/// reading (a backend that started since counts from zero; one that ended
/// in between is lost, which the server's pool, keeping its connections
/// open, makes rare). Background processes (WAL writer, checkpointer,
/// autovacuum) serve every database and are not counted.
#[derive(Debug, Clone, Default)]
pub struct BackendCpu(std::collections::HashMap<i32, f64>);

impl BackendCpu {
    pub async fn read(admin_url: &str, database: &str) -> anyhow::Result<BackendCpu> {
        let mut admin = PgConnection::connect(admin_url)
            .await
            .with_context(|| "cannot reach PostgreSQL (--database-url / DATABASE_URL)")?;
        let pids: Vec<i32> = sqlx::query_scalar(
            "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND backend_type = 'client backend'",
        )
        .bind(database)
        .fetch_all(&mut admin)
        .await?;
        let _ = admin.close().await;
        Ok(BackendCpu(
            pids.into_iter()
                .map(|pid| (pid, cpu_seconds(pid as u32)))
                .collect(),
        ))
    }

    /// Seconds the backends of `self` used after `earlier`.
    pub fn since(&self, earlier: &BackendCpu) -> f64 {
        self.0
            .iter()
            .map(|(pid, now)| now - earlier.0.get(pid).copied().unwrap_or(0.0))
            .sum()
    }
}

/// A `google.protobuf.Timestamp` as wall-clock time.
pub fn system_time(t: &prost_types::Timestamp) -> SystemTime {
    UNIX_EPOCH + Duration::new(t.seconds.max(0) as u64, t.nanos.max(0) as u32)
}

/// The machine and database a run happened on, printed with the results.
#[derive(Debug, Clone, Serialize)]
pub struct Context {
    pub cores: usize,
    pub postgres: String,
    pub settings: Vec<(String, String)>,
}

impl Context {
    pub async fn read(admin_url: &str) -> anyhow::Result<Context> {
        let mut db = PgConnection::connect(admin_url).await?;
        let postgres: String = sqlx::query_scalar("SHOW server_version")
            .fetch_one(&mut db)
            .await?;
        let mut settings = Vec::new();
        for name in [
            "fsync",
            "synchronous_commit",
            "full_page_writes",
            "wal_sync_method",
            "shared_buffers",
            "max_connections",
        ] {
            let value: String = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SHOW {name}")))
                .fetch_one(&mut db)
                .await?;
            settings.push((name.to_string(), value));
        }
        Ok(Context {
            cores: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            postgres,
            settings,
        })
    }
}

/// Where the `jobvisor` binary to benchmark is: the one built beside this
/// one, or `JOBVISOR_BIN`.
pub fn this_binary() -> anyhow::Result<PathBuf> {
    jobvisor_testkit::server_binary()
}

/// A table row: a label and a latency summary.
pub fn row(label: &str, s: &Summary) -> String {
    format!(
        "  {label:<44} {:>9.2} {:>9.2} {:>9.2} {:>7}",
        s.p50_ms, s.p99_ms, s.max_ms, s.n
    )
}

/// A table row of bucket bounds from a server histogram.
pub fn bucket_row(label: &str, e: &prom::BucketEstimate) -> String {
    let bound = |v: Option<f64>| match v {
        Some(ms) if ms.is_finite() => format!("≤{ms}"),
        Some(_) => ">max".into(),
        None => "-".into(),
    };
    format!(
        "  {label:<44} {:>9} {:>9} {:>9} {:>7}",
        bound(e.p50_le_ms),
        bound(e.p99_le_ms),
        "",
        e.count
    )
}

/// How a report says whether a target was met.
pub fn met(ok: bool) -> &'static str {
    if ok { "met" } else { "NOT met" }
}

/// The header of the tables of [`row`]s.
pub fn header(title: &str) -> String {
    format!(
        "  {title:<44} {:>9} {:>9} {:>9} {:>7}",
        "p50 ms", "p99 ms", "max ms", "n"
    )
}

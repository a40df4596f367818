//! `bench recovery`: how soon a server killed with SIGKILL serves again and
//! has every running job running again, once restarted on the same
//! database and port.
//!
//! The jobs are slow items (concurrency 1) in many steps, so they have
//! checkpoints when the server dies. Once every job has an item running
//! with a checkpoint saved, the server is killed (SIGKILL, as a crash or
//! an OOM kill) and started again at once. From the restart (the moment
//! the new process is spawned) this measures:
//!
//! - serving: the first GetJob answered (a call made every 10 ms, each
//!   waiting on its connection: the port is bound before recovery, so a
//!   call made early waits for the server to serve);
//! - re-claimed: every job has an item claimed by the new process. The
//!   jobs' RUNNING counters cannot tell: after a kill they still count the
//!   dead process's items until recovery releases them. A claim sets the
//!   item RUNNING with `updated_at = now()`, and the dead process can no
//!   longer write, so the signal is an item RUNNING with `updated_at` at or
//!   after the database's clock read just before the restart (polled
//!   every `poll`).

use crate::bench::{Env, Setup, SleepJob, connect, get_job, jobs_claiming, met, start_many};
use anyhow::Context as _;
use chrono::{DateTime, Utc};
use jobvisor_testkit::process::ServerProcess;
use serde::Serialize;
use sqlx::PgPool;
use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

#[derive(Debug, Clone, clap::Args)]
pub struct RecoveryOptions {
    #[arg(long, default_value_t = 1000)]
    pub jobs: u32,
    /// Items per job (600 s each, concurrency 1).
    #[arg(long, default_value_t = 4)]
    pub items: u32,
    /// Steps of each item (a checkpoint between steps).
    #[arg(long, default_value_t = 120)]
    pub steps: u32,
    /// How often (ms) the database is asked whether every job runs again.
    #[arg(long, default_value_t = 20)]
    pub poll_ms: u64,
    /// StartJob calls in flight while starting the jobs.
    #[arg(long, default_value_t = 16)]
    pub in_flight: usize,
}

impl RecoveryOptions {
    fn poll(&self) -> Duration {
        Duration::from_millis(self.poll_ms.max(1))
    }
}

/// The jobs running when the server dies.
pub fn recovery_job(opts: &RecoveryOptions) -> SleepJob {
    SleepJob::new("recovery", opts.items, 1, 600_000, opts.steps)
}

#[derive(Debug, Clone, Serialize)]
pub struct Recovery {
    pub jobs: u32,
    pub job: String,
    /// Items with a checkpoint when the server was killed.
    pub checkpointed_items: i64,
    /// Jobs the database still counted as claiming just after the kill
    /// (the dead process's items).
    pub stale_claiming_after_kill: i64,
    /// Restart → the first GetJob answered.
    pub serving_seconds: f64,
    /// Restart → the new process's health check SERVING, as the process
    /// runner saw it (polled every 50 ms).
    pub healthy_seconds: f64,
    /// Restart → the first job with an item claimed by the new process.
    pub first_reclaimed_seconds: f64,
    /// Restart → every job with an item claimed by the new process.
    pub all_reclaimed_seconds: f64,
    pub poll_ms: f64,
    pub target_seconds: f64,
    pub serving_met: bool,
    pub reclaimed_met: bool,
}

const TARGET_SECONDS: f64 = 2.0;

impl Recovery {
    pub fn human(&self) -> Vec<String> {
        vec![
            format!(
                "recovery: SIGKILL of a server running {} jobs of {} ({} items checkpointed), restart on the same database and port",
                self.jobs, self.job, self.checkpointed_items
            ),
            format!(
                "  restart → serving (first GetJob answered): {:.3} s (health SERVING seen after {:.3} s)",
                self.serving_seconds, self.healthy_seconds
            ),
            format!(
                "  restart → every job running again (an item claimed by the new process; polled every {} ms): {:.3} s (first job {:.3} s)",
                self.poll_ms, self.all_reclaimed_seconds, self.first_reclaimed_seconds
            ),
            format!(
                "  (the jobs' RUNNING counters still showed {} jobs claiming right after the kill: not a signal of recovery)",
                self.stale_claiming_after_kill
            ),
            format!(
                "  targets: serving within {TARGET_SECONDS} s: {}; every job running again within {TARGET_SECONDS} s: {}",
                met(self.serving_met),
                met(self.reclaimed_met)
            ),
        ]
    }
}

/// How long each wait may take before the scenario gives up.
const WITHIN: Duration = Duration::from_secs(120);

pub async fn recovery(setup: &Setup, opts: &RecoveryOptions) -> anyhow::Result<Recovery> {
    anyhow::ensure!(opts.jobs >= 1, "--jobs must be at least 1");
    let mut env = Env::start_setup(setup, &[], false).await?;
    // Whether env.server is a live process (not the one killed).
    let mut alive = true;
    let result = run(setup, &mut env, opts, &mut alive).await;
    if alive {
        env.finish().await;
    } else {
        let Env { db, .. } = env;
        db.remove().await;
    }
    result
}

async fn run(
    setup: &Setup,
    env: &mut Env,
    opts: &RecoveryOptions,
    alive: &mut bool,
) -> anyhow::Result<Recovery> {
    let client = env.client().await?;
    let pool = env.db.pool().await?;
    let job = recovery_job(opts);
    setup.note(format!("starting {} jobs", opts.jobs));
    let ids = start_many(&client, &job, opts.jobs, opts.in_flight).await?;
    drop(client);
    crate::bench::wait_jobs_claiming(
        &pool,
        i64::from(opts.jobs),
        Duration::from_millis(50),
        WITHIN,
    )
    .await?;
    // Until every job's running item has saved a checkpoint, so that the
    // restart continues them from it.
    if opts.steps > 1 {
        setup.note("waiting for a checkpoint of every job");
        wait_checkpoints(&pool, opts.jobs).await?;
    }
    let probe_id = ids.first().context("no job started")?.clone();

    setup.note("SIGKILL, restart");
    env.server.kill9().context("killing the server")?;
    *alive = false;
    let checkpointed_items: i64 =
        sqlx::query_scalar("SELECT count(*) FROM items WHERE state = 1 AND checkpoint IS NOT NULL")
            .fetch_one(&pool)
            .await?;
    let stale = jobs_claiming(&pool, 1).await?;
    let restart_at: DateTime<Utc> = sqlx::query_scalar("SELECT now()").fetch_one(&pool).await?;

    let restarted = Instant::now();
    let spec = env.spec.clone();
    let server = tokio::spawn(async move {
        let server = ServerProcess::start(&spec).await;
        (server, restarted.elapsed())
    });
    let serving = tokio::spawn(first_answer(env.spec.addr, probe_id, restarted));
    let reclaimed = wait_reclaimed(&pool, opts, restart_at, restarted).await;

    let (server, healthy) = server.await.context("the restart task panicked")?;
    let server = match server {
        Ok(server) => server,
        Err(e) => {
            serving.abort();
            return Err(e.context("restarting the server"));
        }
    };
    env.server = server;
    *alive = true;
    let (first, all) = match reclaimed {
        Ok(times) => times,
        Err(e) => {
            serving.abort();
            return Err(e);
        }
    };
    let serving = serving.await.context("the probe task panicked")??;
    pool.close().await;

    let serving_seconds = serving.as_secs_f64();
    let all_reclaimed_seconds = all.as_secs_f64();
    Ok(Recovery {
        jobs: opts.jobs,
        job: job.describe(),
        checkpointed_items,
        stale_claiming_after_kill: stale,
        serving_seconds,
        healthy_seconds: healthy.as_secs_f64(),
        first_reclaimed_seconds: first.as_secs_f64(),
        all_reclaimed_seconds,
        poll_ms: opts.poll().as_secs_f64() * 1000.0,
        target_seconds: TARGET_SECONDS,
        serving_met: serving_seconds <= TARGET_SECONDS,
        reclaimed_met: all_reclaimed_seconds <= TARGET_SECONDS,
    })
}

/// Waits until `jobs` running items have a checkpoint.
async fn wait_checkpoints(pool: &PgPool, jobs: u32) -> anyhow::Result<()> {
    let waited = Instant::now();
    loop {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM items WHERE state = 1 AND checkpoint IS NOT NULL",
        )
        .fetch_one(pool)
        .await?;
        if n >= i64::from(jobs) {
            return Ok(());
        }
        anyhow::ensure!(
            waited.elapsed() < WITHIN,
            "only {n} of {jobs} jobs had a checkpoint after {WITHIN:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Time from `since` to the first GetJob answered: a fresh connection
/// and call every 10 ms, each left to wait for its answer.
async fn first_answer(addr: SocketAddr, id: String, since: Instant) -> anyhow::Result<Duration> {
    let deadline = tokio::time::Instant::from_std(since + WITHIN);
    loop {
        let attempt = async {
            let mut client = connect(addr).await?;
            get_job(&mut client, &id).await
        };
        match tokio::time::timeout_at(deadline, attempt).await {
            Ok(Ok(_)) => return Ok(since.elapsed()),
            Ok(Err(_)) => tokio::time::sleep(Duration::from_millis(10)).await,
            Err(_) => anyhow::bail!("no GetJob answered within {WITHIN:?} of the restart"),
        }
    }
}

/// Polls until every job has an item claimed since `restart_at` (the
/// database's clock); returns the time from `since` to the first such job
/// and to all of them.
async fn wait_reclaimed(
    pool: &PgPool,
    opts: &RecoveryOptions,
    restart_at: DateTime<Utc>,
    since: Instant,
) -> anyhow::Result<(Duration, Duration)> {
    let mut first = None;
    loop {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(DISTINCT job_id) FROM items WHERE state = 1 AND updated_at >= $1",
        )
        .bind(restart_at)
        .fetch_one(pool)
        .await?;
        let elapsed = since.elapsed();
        if n > 0 && first.is_none() {
            first = Some(elapsed);
        }
        if n >= i64::from(opts.jobs) {
            return Ok((first.unwrap_or(elapsed), elapsed));
        }
        anyhow::ensure!(
            elapsed < WITHIN,
            "only {n} of {} jobs had an item claimed by the restarted server after {WITHIN:?}",
            opts.jobs
        );
        tokio::time::sleep(opts.poll()).await;
    }
}

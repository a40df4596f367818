//! The benchmark scenarios. Each returns its figures; the CLI prints them
//! (a table, and one JSON line of the figures).
//!
//! - [`throughput`] (and `peer`): one job of no-op items, end to end.
//! - [`control`]: control-call latency, idle and under the throughput load.
//! - [`many_jobs`]: memory per live job and control latency with 10,000
//!   jobs running at once.
//! - [`watchers`]: event delivery to 1,000 WatchJob streams on one job,
//!   and what they cost its throughput.
//! - [`list_jobs`]: the dashboard's jobs list (`GET /v1/jobs`) with
//!   100,000 stored jobs.
//! - [`pages`]: a million items sent in pages through nginx, and items
//!   added to a running job against a job started whole.
//! - [`recovery`]: SIGKILL and restart: time to serve, and until every
//!   running job runs again.
//! - [`store_cost`]: PostgreSQL's CPU per item through the store's batch
//!   function alone, split into per item and per commit.
//! - [`scale`]: a job of a million items against one of a hundred
//!   thousand.
//! - [`soak`]: ten million items through jobs of a hundred thousand with
//!   a retention: items/s and the items table's size over time.
//! - [`remote`]: remote workers: a worker process's throughput against the
//!   server's own, assignment and interrupt latency, and redelivery after
//!   a worker's SIGKILL.

pub mod control;
pub mod list_jobs;
pub mod many_jobs;
pub mod pages;
pub mod recovery;
pub mod remote;
pub mod scale;
pub mod soak;
pub mod store_cost;
pub mod watchers;

pub use control::control;
pub use list_jobs::list_jobs;
pub use many_jobs::many_jobs;
pub use pages::pages;
pub use recovery::recovery;
pub use scale::scale;
pub use soak::soak;
pub use store_cost::store_cost;
pub use watchers::watchers;

use super::{BackendCpu, Env, cpu_seconds, start_sleep_job, wait_done};
use serde::Serialize;
use std::{path::Path, time::Duration};

/// One run of a job of no-op items, end to end.
#[derive(Debug, Clone, Serialize)]
pub struct Throughput {
    pub items: u32,
    pub concurrency: u32,
    /// How long StartJob took (all items stored).
    pub start_seconds: f64,
    /// From StartJob's answer to the job's terminal event.
    pub run_seconds: f64,
    /// Items per second from the StartJob call to SUCCEEDED.
    pub items_per_second: f64,
    /// Items per second of the run alone (after StartJob returned).
    pub run_items_per_second: f64,
    /// The server's peak resident memory.
    pub rss_mib: f64,
    /// CPU of the PostgreSQL backends serving the job's database, per
    /// item, in µs: while StartJob stored the items, and over the run.
    pub pg_start_us_per_item: f64,
    pub pg_run_us_per_item: f64,
    /// The server process's own CPU per item over the run, in µs.
    pub server_run_us_per_item: f64,
}

/// A job of `items` sleep items of 0 ms (one step: no checkpoint), every
/// completion durable before it counts.
pub async fn throughput(
    binary: &Path,
    admin_url: &str,
    items: u32,
    concurrency: u32,
    server_args: &[&str],
) -> anyhow::Result<Throughput> {
    let env = Env::start(binary, admin_url, server_args).await?;
    let mut client = env.client().await?;
    let before = BackendCpu::read(admin_url, &env.db.name).await?;
    let (job, start) = start_sleep_job(&mut client, "throughput", items, concurrency, 0, 1).await?;
    // The job runs from StartJob's answer: the clock first, then the
    // readings (a connection to PostgreSQL of their own).
    let run_started = std::time::Instant::now();
    let server_cpu = cpu_seconds(env.server.pid());
    let stored = BackendCpu::read(admin_url, &env.db.name).await?;
    let done = wait_done(&mut client, &job.id, Duration::from_secs(600)).await?;
    let run = run_started.elapsed();
    let server_cpu = cpu_seconds(env.server.pid()) - server_cpu;
    let ended = BackendCpu::read(admin_url, &env.db.name).await?;
    let per_item = |seconds: f64| seconds * 1e6 / f64::from(items.max(1));
    let succeeded = done.counts.map(|c| c.succeeded).unwrap_or(0);
    anyhow::ensure!(
        succeeded == u64::from(items),
        "only {succeeded} of {items} items succeeded"
    );
    let (rss, _) = env.rss_mib();
    env.finish().await;
    let total = (start + run).as_secs_f64();
    Ok(Throughput {
        items,
        concurrency,
        start_seconds: start.as_secs_f64(),
        run_seconds: run.as_secs_f64(),
        items_per_second: f64::from(items) / total,
        run_items_per_second: f64::from(items) / run.as_secs_f64(),
        rss_mib: rss,
        pg_start_us_per_item: per_item(stored.since(&before)),
        pg_run_us_per_item: per_item(ended.since(&stored)),
        server_run_us_per_item: per_item(server_cpu),
    })
}

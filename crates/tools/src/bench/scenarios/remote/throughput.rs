//! `bench remote-throughput`: the same job of no-op items run in the
//! server (`sleep`, 0 ms in one step) and in a worker process (the same
//! handler, through [`jobvisor::worker::Worker`], with as many slots as the
//! job's concurrency), each on a fresh server and database started with
//! the same flags, one after the other: items/s of each and the ratio.
//!
//! Each run is timed like `bench throughput`: StartJob, then until the
//! job's terminal event on a WatchJob stream; the worker process is
//! connected (idle) before StartJob. The ratio compares the rates after
//! StartJob returned (storing the items is the same work either way).

use super::{EXECUTOR, WorkerCommand, WorkerProcess};
use crate::bench::{Env, Setup, SleepJob, cpu_seconds, median, met, prom::Histogram, wait_done};
use serde::Serialize;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, clap::Args)]
pub struct RemoteThroughputOptions {
    /// Items of the job.
    #[arg(long, default_value_t = 50_000)]
    pub items: u32,
    /// The job's concurrency, and the worker process's slots.
    #[arg(long, default_value_t = 64)]
    pub concurrency: u32,
    /// Pairs of runs (in the server, then remote; the order alternates
    /// from pair to pair), each on fresh servers.
    #[arg(long, default_value_t = 1)]
    pub runs: u32,
}

/// One run of the job.
#[derive(Debug, Clone, Serialize)]
pub struct Run {
    /// How long StartJob took.
    pub start_seconds: f64,
    /// From StartJob's answer to the terminal event.
    pub run_seconds: f64,
    /// From the StartJob call to the terminal event.
    pub items_per_second: f64,
    /// After StartJob returned.
    pub run_items_per_second: f64,
    /// CPU time of the server over the run (StartJob included).
    pub server_cpu_seconds: f64,
    /// CPU time of the worker process over the run (remote runs).
    pub worker_cpu_seconds: Option<f64>,
    /// The server's group commits of item outcomes and claims over the run
    /// (`jobvisor_store_batch_writes_size`'s count): a job whose items
    /// take a commit cycle each is bound by how many ride in one.
    pub commits: u64,
    pub items_per_commit: f64,
}

/// A pair: the job in the server and in a worker process.
#[derive(Debug, Clone, Serialize)]
pub struct Pair {
    /// The job run by the server's own workers.
    pub in_process: Run,
    /// The job run by the worker process.
    pub remote: Run,
    /// remote ÷ in-process, of the rates after StartJob.
    pub ratio: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct RemoteThroughput {
    /// The job: its items and concurrency.
    pub items: u32,
    pub concurrency: u32,
    /// The worker process's slots (the job's concurrency).
    pub worker_slots: u32,
    /// Every pair of runs, in order.
    pub pairs: Vec<Pair>,
    /// The median of the pairs' ratios, against the target.
    pub median_ratio: f64,
    pub target_ratio: f64,
    /// The median ratio at the target or above.
    pub met: bool,
}

const TARGET_RATIO: f64 = 0.8;

impl RemoteThroughput {
    pub fn human(&self) -> Vec<String> {
        let mut out = vec![
            format!(
                "remote-throughput: {} no-op items, concurrency {}; a worker process with {} slots against the server's own workers",
                self.items, self.concurrency, self.worker_slots
            ),
            format!(
                "  {:<12} {:>8} {:>8} {:>12} {:>12} {:>11} {:>11} {:>8} {:>13}",
                "pair",
                "start s",
                "run s",
                "items/s e2e",
                "items/s run",
                "server cpu",
                "worker cpu",
                "commits",
                "items/commit"
            ),
        ];
        let line = |label: String, r: &Run| {
            format!(
                "  {label:<12} {:>8.3} {:>8.3} {:>12.0} {:>12.0} {:>10.2}s {:>11} {:>8} {:>13.1}",
                r.start_seconds,
                r.run_seconds,
                r.items_per_second,
                r.run_items_per_second,
                r.server_cpu_seconds,
                r.worker_cpu_seconds
                    .map(|s| format!("{s:.2}s"))
                    .unwrap_or_else(|| "-".into()),
                r.commits,
                r.items_per_commit
            )
        };
        for (n, pair) in self.pairs.iter().enumerate() {
            out.push(line(format!("{} in-process", n + 1), &pair.in_process));
            out.push(line(format!("{} remote", n + 1), &pair.remote));
            out.push(format!(
                "  {:<12} remote at {:.1}% of in-process (after StartJob), {:.1}% end to end",
                "",
                pair.ratio * 100.0,
                pair.remote.items_per_second / pair.in_process.items_per_second * 100.0
            ));
        }
        out.push(format!(
            "  target: remote ≥ {:.0}% of in-process: {} (median ratio {:.1}% over {} pair(s))",
            self.target_ratio * 100.0,
            met(self.met),
            self.median_ratio * 100.0,
            self.pairs.len()
        ));
        out
    }
}

pub async fn throughput(
    setup: &Setup,
    opts: &RemoteThroughputOptions,
) -> anyhow::Result<RemoteThroughput> {
    anyhow::ensure!(
        (1..=1024).contains(&opts.concurrency),
        "--concurrency must be from 1 to 1024 (a worker's slots), got {}",
        opts.concurrency
    );
    let job = SleepJob::new("remote-throughput", opts.items, opts.concurrency, 0, 1);
    let slots = opts.concurrency;
    let worker = move |addr| WorkerProcess::command(addr, slots, false);
    let mut pairs = Vec::new();
    for n in 0..opts.runs.max(1) {
        setup.note(format!("pair {} of {}", n + 1, opts.runs.max(1)));
        let (in_process, remote) = if n % 2 == 0 {
            let local = run(setup, &job, None).await?;
            (local, run(setup, &job, Some(&worker)).await?)
        } else {
            let remote = run(setup, &job, Some(&worker)).await?;
            (run(setup, &job, None).await?, remote)
        };
        pairs.push(Pair {
            ratio: remote.run_items_per_second / in_process.run_items_per_second,
            in_process,
            remote,
        });
    }
    let ratios: Vec<f64> = pairs.iter().map(|p| p.ratio).collect();
    let median_ratio = median(&ratios);
    Ok(RemoteThroughput {
        items: opts.items,
        concurrency: opts.concurrency,
        worker_slots: opts.concurrency,
        pairs,
        median_ratio,
        target_ratio: TARGET_RATIO,
        met: median_ratio >= TARGET_RATIO,
    })
}

/// One run on a fresh server: in the server, or (`worker`) in the worker
/// process that command starts.
pub(super) async fn run(
    setup: &Setup,
    job: &SleepJob,
    worker: Option<&WorkerCommand>,
) -> anyhow::Result<Run> {
    let env = Env::start_setup(setup, &["--remote-executor", EXECUTOR], true).await?;
    let result = run_on(&env, job, worker).await;
    env.finish().await;
    result
}

async fn run_on(env: &Env, job: &SleepJob, worker: Option<&WorkerCommand>) -> anyhow::Result<Run> {
    let mut client = env.client().await?;
    let (job, worker) = match worker {
        Some(command) => (
            job.clone().on(EXECUTOR),
            Some(WorkerProcess::spawn(command(env.spec.addr)?).await?),
        ),
        None => (job.clone(), None),
    };
    let worker_pid = worker.as_ref().and_then(|w| w.pid());
    let commits = env.scrape().await?;
    let server_cpu = cpu_seconds(env.server.pid());
    let worker_cpu = worker_pid.map(cpu_seconds);
    let started = Instant::now();
    let id = job.start(&mut client).await?.id;
    let start = started.elapsed();
    let done = wait_done(&mut client, &id, Duration::from_secs(600)).await?;
    let total = started.elapsed();
    let server_cpu = cpu_seconds(env.server.pid()) - server_cpu;
    let worker_cpu = worker_pid.zip(worker_cpu).map(|(p, c)| cpu_seconds(p) - c);
    let batches = |page: &str| Histogram::parse(page, "jobvisor_store_batch_writes_size", &[]);
    let commits = batches(&env.scrape().await?)
        .since(&batches(&commits))
        .count();
    let succeeded = done.counts.map(|c| c.succeeded).unwrap_or(0);
    if let Some(worker) = worker {
        worker.stop(Duration::from_secs(10)).await?;
    }
    anyhow::ensure!(
        succeeded == u64::from(job.items),
        "only {succeeded} of {} items succeeded",
        job.items
    );
    let run = total - start;
    Ok(Run {
        start_seconds: start.as_secs_f64(),
        run_seconds: run.as_secs_f64(),
        items_per_second: f64::from(job.items) / total.as_secs_f64(),
        run_items_per_second: f64::from(job.items) / run.as_secs_f64(),
        server_cpu_seconds: server_cpu,
        worker_cpu_seconds: worker_cpu,
        commits,
        items_per_commit: f64::from(job.items) / commits.max(1) as f64,
    })
}

//! `bench remote-redelivery`: a worker process holding an item is killed
//! with SIGKILL; how long until the item's assignment arrives at another
//! worker. The server's `--worker-lease-time` is what it waits for the
//! dead worker to come back, so the figure is the lease plus the server's
//! reaction; the target is at most the lease plus 1 s.
//!
//! One round: a worker process (this binary's `remote-worker`, one slot)
//! connects; a job of one item of 10 minutes starts and the worker says
//! the item started; then a second worker (the raw protocol in this
//! process, one slot, idle) connects, the first is killed, and the time
//! from the kill to the item's second attempt read by the second worker is
//! taken. The job is then cancelled.

use super::{EXECUTOR, RawWorker, WorkerProcess};
use crate::bench::{Env, Setup, SleepJob, calls::wait_job, met};
use anyhow::Context as _;
use jobvisor::pb;
use serde::Serialize;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, clap::Args)]
pub struct RemoteRedeliveryOptions {
    /// Rounds (a worker process killed in each).
    #[arg(long, default_value_t = 5)]
    pub rounds: u32,
    /// The server's --worker-lease-time.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub lease: Duration,
}

#[derive(Debug, Clone, Serialize)]
pub struct RemoteRedelivery {
    /// Rounds made.
    pub rounds: u32,
    /// The server's --worker-lease-time.
    pub lease_seconds: f64,
    /// SIGKILL → the item's assignment at the other worker, every round.
    pub seconds: Vec<f64>,
    /// Their least, median and greatest.
    pub min_seconds: f64,
    pub median_seconds: f64,
    pub max_seconds: f64,
    /// The same less the lease: the server's own reaction.
    pub max_over_lease_seconds: f64,
    /// The lease plus 1 s.
    pub target_seconds: f64,
    /// Every round within the target.
    pub met: bool,
}

impl RemoteRedelivery {
    pub fn human(&self) -> Vec<String> {
        vec![
            format!(
                "remote-redelivery: {} rounds, --worker-lease-time {}; SIGKILL of the worker holding the item → its assignment at another worker",
                self.rounds,
                humantime::format_duration(Duration::from_secs_f64(self.lease_seconds))
            ),
            format!(
                "  min {:.3} s  median {:.3} s  max {:.3} s  (lease + {:.3} s at most)",
                self.min_seconds,
                self.median_seconds,
                self.max_seconds,
                self.max_over_lease_seconds
            ),
            format!(
                "  target: ≤ lease + 1 s ({:.1} s): {}",
                self.target_seconds,
                met(self.met)
            ),
        ]
    }
}

pub async fn redelivery(
    setup: &Setup,
    opts: &RemoteRedeliveryOptions,
) -> anyhow::Result<RemoteRedelivery> {
    let lease = humantime::format_duration(opts.lease).to_string();
    let env = Env::start_setup(
        setup,
        &["--remote-executor", EXECUTOR, "--worker-lease-time", &lease],
        false,
    )
    .await?;
    let mut seconds = Vec::new();
    let mut result = Ok(());
    for n in 0..opts.rounds.max(1) {
        setup.note(format!("round {} of {}", n + 1, opts.rounds.max(1)));
        match round(&env, opts.lease).await {
            Ok(d) => seconds.push(d.as_secs_f64()),
            Err(e) => {
                result = Err(e.context(format!("round {}", n + 1)));
                break;
            }
        }
    }
    env.finish().await;
    result?;
    let mut sorted = seconds.clone();
    sorted.sort_by(|a, b| a.total_cmp(b));
    let lease = opts.lease.as_secs_f64();
    let max = sorted.last().copied().unwrap_or(0.0);
    let target = lease + 1.0;
    Ok(RemoteRedelivery {
        rounds: opts.rounds.max(1),
        lease_seconds: lease,
        min_seconds: sorted.first().copied().unwrap_or(0.0),
        median_seconds: crate::bench::median(&sorted),
        max_seconds: max,
        max_over_lease_seconds: max - lease,
        target_seconds: target,
        met: max <= target,
        seconds,
    })
}

async fn round(env: &Env, lease: Duration) -> anyhow::Result<Duration> {
    let mut client = env.client().await?;
    let within = lease + Duration::from_secs(10);
    let mut first = WorkerProcess::start(env.spec.addr, 1, true).await?;
    let job = SleepJob::new("remote-redelivery", 1, 1, 600_000, 1).on(EXECUTOR);
    let id = job.start(&mut client).await?.id;
    let line = first.line(within).await?;
    anyhow::ensure!(
        line == format!("item {id} 0 1"),
        "the worker process said {line:?}, not that it started the item of {id}"
    );
    let mut second = RawWorker::connect(env.spec.addr, 1).await?;
    let killed = Instant::now();
    first.kill9().await?;
    let (item, at) = second
        .assignment(within)
        .await
        .context("the item was not assigned to the other worker")?;
    let took = at - killed;
    anyhow::ensure!(
        item.job_id == id && item.index == 0 && item.attempt == 2,
        "the other worker was assigned {item:?}, not the second attempt of {id}'s item"
    );
    client
        .cancel_job(pb::CancelJobRequest {
            job_id: id.clone(),
            reason: "bench".into(),
            ..Default::default()
        })
        .await?;
    second
        .interrupt(item.token, pb::InterruptReason::Cancel, within)
        .await?;
    second.stopped(item.token)?;
    wait_job(&mut client, &id, within, |j| {
        j.state == pb::JobState::Cancelled as i32
    })
    .await?;
    Ok(took)
}

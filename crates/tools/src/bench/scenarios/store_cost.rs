//! `bench store-cost`: what PostgreSQL spends on an item, split into what
//! each item costs and what each commit costs.
//!
//! The server's group committer sends one call of the batch function per
//! transaction: the successes of the items its workers finished and the
//! claims of their next items. How many items ride in one call depends on
//! how many workers wait on that commit (about the job's concurrency when
//! each outcome is durable before the worker's next item), so PostgreSQL's
//! CPU per item in `bench throughput` mixes two costs: the work of each
//! item (its claim and its success: two row updates, their index lookups
//! and WAL) and the work of each commit (the function's call and plan,
//! the job row, the commit and its WAL flush).
//!
//! This scenario takes the server out: it opens the store (the library's
//! `PgStore`, the same batch functions the server calls) on a fresh
//! database, stores one job of `--items` items, and runs it as the server
//! would with a fixed batch: each call carries the successes of the items
//! the previous call claimed and claims the next `--batch` items, until
//! every item succeeded. The CPU of the database's backends (from `/proc`)
//! over the run, per item, for each batch size, and a least-squares fit of
//! `per item + per commit / batch` over the sizes, tell the two costs
//! apart on this machine.

use crate::bench::{BackendCpu, Database};
use jobvisor::{
    domain::{JobId, JobSpec},
    store::{
        Batch, ClaimRequest, ClaimedItem, ItemWrite, Store, WriteKind,
        postgres::{PgConfig, PgStore},
    },
};
use serde::Serialize;
use std::{collections::BTreeMap, time::Instant};

#[derive(Debug, Clone, clap::Args)]
pub struct StoreCostOptions {
    /// Items of the job, for each batch size.
    #[arg(long, default_value_t = 100_000)]
    pub items: u32,
    /// Items per call (each call: that many successes and a claim of as
    /// many), comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = vec![16, 64, 256])]
    pub batch: Vec<u32>,
}

#[derive(Debug, Clone, Serialize)]
pub struct StoreCostRun {
    pub batch: u32,
    pub calls: u32,
    pub seconds: f64,
    pub backend_cpu_seconds: f64,
    pub us_per_item: f64,
    pub us_per_call: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct StoreCost {
    pub items: u32,
    pub runs: Vec<StoreCostRun>,
    /// The fit `per item + per commit / batch` over the runs (with two
    /// batch sizes or more).
    pub fit_us_per_item: Option<f64>,
    pub fit_us_per_commit: Option<f64>,
}

impl StoreCost {
    pub fn human(&self) -> Vec<String> {
        let mut lines = vec![
            format!(
                "store-cost: one job of {} items run through the store's batch function, a fixed batch per call; CPU of the database's backends",
                self.items
            ),
            format!(
                "  {:>6} {:>7} {:>9} {:>11} {:>11} {:>11}",
                "batch", "calls", "seconds", "cpu s", "µs/item", "µs/call"
            ),
        ];
        for r in &self.runs {
            lines.push(format!(
                "  {:>6} {:>7} {:>9.2} {:>11.2} {:>11.1} {:>11.0}",
                r.batch, r.calls, r.seconds, r.backend_cpu_seconds, r.us_per_item, r.us_per_call
            ));
        }
        if let (Some(item), Some(commit)) = (self.fit_us_per_item, self.fit_us_per_commit) {
            lines.push(format!(
                "  fit: {item:.1} µs per item + {commit:.0} µs per commit / batch"
            ));
        }
        lines
    }
}

pub async fn store_cost(admin_url: &str, opts: &StoreCostOptions) -> anyhow::Result<StoreCost> {
    anyhow::ensure!(opts.items > 0, "--items must be at least 1");
    anyhow::ensure!(
        !opts.batch.is_empty() && opts.batch.iter().all(|&b| (1..=1024).contains(&b)),
        "--batch takes sizes from 1 to 1024 (the server's largest batch), got {:?}",
        opts.batch
    );
    let mut runs = Vec::new();
    for &batch in &opts.batch {
        let db = Database::create(admin_url).await?;
        let result = run(admin_url, &db, opts.items, batch).await;
        db.remove().await;
        runs.push(result?);
    }
    let (fit_us_per_item, fit_us_per_commit) = fit(&runs);
    Ok(StoreCost {
        items: opts.items,
        runs,
        fit_us_per_item,
        fit_us_per_commit,
    })
}

async fn run(
    admin_url: &str,
    db: &Database,
    items: u32,
    batch: u32,
) -> anyhow::Result<StoreCostRun> {
    let store = PgStore::connect(&PgConfig::new(db.url.clone())).await?;
    let spec = JobSpec {
        name: "store-cost".into(),
        executor: "sleep".into(),
        items: (0..items).map(|i| format!("item-{i}")).collect(),
        concurrency: batch,
        params: BTreeMap::new(),
        labels: BTreeMap::new(),
        max_attempts: 3,
        request_id: None,
        request_scope: String::new(),
        policy: Default::default(),
        start: Default::default(),
        exclusive: false,
        open: false,
    };
    let job = JobId::new();
    store.create_job(job, &spec).await?;
    let before = BackendCpu::read(admin_url, &db.name).await?;
    let started = Instant::now();
    let mut claimed: Vec<ClaimedItem> = Vec::new();
    let mut from = 0;
    let mut calls = 0;
    loop {
        let writes: Vec<ItemWrite> = claimed
            .iter()
            .map(|c| ItemWrite {
                job,
                index: c.index,
                lease: c.lease,
                kind: WriteKind::succeeded(),
            })
            .collect();
        let claims = if from < items {
            vec![ClaimRequest {
                job,
                max: batch,
                from_index: from,
                retries: false,
            }]
        } else {
            Vec::new()
        };
        if writes.is_empty() && claims.is_empty() {
            break;
        }
        let outcome = store.write_batch(&Batch { writes, claims }).await?;
        calls += 1;
        anyhow::ensure!(
            outcome.applied.iter().all(|&a| a),
            "a success was refused (call {calls})"
        );
        claimed = outcome.claimed.into_iter().next().unwrap_or_default();
        from = claimed.last().map_or(items, |c| c.index + 1);
    }
    let seconds = started.elapsed().as_secs_f64();
    let after = BackendCpu::read(admin_url, &db.name).await?;
    let done = store.get_job(job).await?;
    anyhow::ensure!(
        done.counts.succeeded == u64::from(items),
        "{} of {items} items succeeded",
        done.counts.succeeded
    );
    let cpu = after.since(&before);
    Ok(StoreCostRun {
        batch,
        calls,
        seconds,
        backend_cpu_seconds: cpu,
        us_per_item: cpu * 1e6 / f64::from(items),
        us_per_call: cpu * 1e6 / f64::from(calls.max(1)),
    })
}

/// Least squares of µs per item against 1 / batch: the intercept is the
/// cost of an item, the slope the cost of a commit.
fn fit(runs: &[StoreCostRun]) -> (Option<f64>, Option<f64>) {
    let points: Vec<(f64, f64)> = runs
        .iter()
        .map(|r| (1.0 / f64::from(r.batch), r.us_per_item))
        .collect();
    let n = points.len() as f64;
    let mean_x = points.iter().map(|p| p.0).sum::<f64>() / n;
    let mean_y = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = points.iter().map(|p| (p.0 - mean_x).powi(2)).sum();
    if points.len() < 2 || sxx == 0.0 {
        return (None, None);
    }
    let sxy: f64 = points.iter().map(|p| (p.0 - mean_x) * (p.1 - mean_y)).sum();
    let slope = sxy / sxx;
    (Some(mean_y - slope * mean_x), Some(slope))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(batch: u32, us_per_item: f64) -> StoreCostRun {
        StoreCostRun {
            batch,
            calls: 0,
            seconds: 0.0,
            backend_cpu_seconds: 0.0,
            us_per_item,
            us_per_call: 0.0,
        }
    }

    #[test]
    fn the_fit_splits_item_and_commit() {
        // 10 µs an item and 800 µs a commit.
        let runs = [at(16, 60.0), at(64, 22.5), at(256, 13.125)];
        let (item, commit) = fit(&runs);
        assert!((item.unwrap() - 10.0).abs() < 1e-9);
        assert!((commit.unwrap() - 800.0).abs() < 1e-6);
        assert_eq!(fit(&runs[..1]), (None, None));
        assert_eq!(fit(&[at(64, 1.0), at(64, 2.0)]), (None, None));
    }
}

//! `bench scale`: a job of a million items against a job of a hundred
//! thousand, in one sitting (the performance issue's "cost that stays flat
//! as work grows"). Each job is [`throughput`]'s: no-op `sleep` items, on a
//! fresh server and database, from StartJob to SUCCEEDED. With `--runs N`
//! the two sizes alternate (small, large, small, …) and the medians are
//! compared. Targets: the large job's StartJob under 5 s (every run), and its items/s
//! (end to end, StartJob included) within 10% of the small job's.

use super::{Throughput, throughput};
use crate::bench::{Setup, median, met};
use serde::Serialize;

#[derive(Debug, Clone, clap::Args)]
pub struct ScaleOptions {
    /// Items of the large job.
    #[arg(long, default_value_t = 1_000_000)]
    pub items: u32,
    /// Items of the job it is compared with.
    #[arg(long, default_value_t = 100_000)]
    pub base_items: u32,
    #[arg(long, default_value_t = 64)]
    pub concurrency: u32,
    /// Pairs of runs (small, then large), medians compared.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=20))]
    pub runs: u32,
}

/// The large job's StartJob under this.
const START_TARGET_SECONDS: f64 = 5.0;
/// The large job's items/s over the small one's at least this.
const RATIO_TARGET: f64 = 0.9;

#[derive(Debug, Clone, Serialize)]
pub struct Scale {
    pub items: u32,
    pub base_items: u32,
    pub concurrency: u32,
    /// Every run, in the order run.
    pub base_runs: Vec<Throughput>,
    pub large_runs: Vec<Throughput>,
    /// Medians of the runs of each size.
    pub base_items_per_second: f64,
    pub large_items_per_second: f64,
    pub base_run_items_per_second: f64,
    pub large_run_items_per_second: f64,
    pub base_start_seconds: f64,
    pub large_start_seconds: f64,
    /// The slowest of the large job's StartJobs (the target's figure).
    pub large_start_max_seconds: f64,
    /// Large over small, end to end (the target) and after StartJob.
    pub ratio: f64,
    pub run_ratio: f64,
    pub start_target_seconds: f64,
    pub start_met: bool,
    pub ratio_target: f64,
    pub ratio_met: bool,
}

impl Scale {
    pub fn human(&self) -> Vec<String> {
        let line = |label: &str, r: &Throughput| {
            format!(
                "  {label:<10} {:>9} {:>10.3} {:>10.3} {:>12.0} {:>12.0} {:>9.1}",
                r.items,
                r.start_seconds,
                r.run_seconds,
                r.items_per_second,
                r.run_items_per_second,
                r.rss_mib
            )
        };
        let mut out = vec![
            format!(
                "scale: a job of {} items against one of {}, concurrency {}, {} run(s) of each, alternating",
                self.items,
                self.base_items,
                self.concurrency,
                self.base_runs.len()
            ),
            format!(
                "  {:<10} {:>9} {:>10} {:>10} {:>12} {:>12} {:>9}",
                "job", "items", "start s", "run s", "items/s", "run items/s", "RSS MiB"
            ),
        ];
        for (base, large) in self.base_runs.iter().zip(&self.large_runs) {
            out.push(line("small", base));
            out.push(line("large", large));
        }
        out.extend([
            format!(
                "  medians: small {:.0} items/s (StartJob {:.3} s), large {:.0} items/s (StartJob {:.3} s): {:.3}× end to end, {:.3}× after StartJob",
                self.base_items_per_second,
                self.base_start_seconds,
                self.large_items_per_second,
                self.large_start_seconds,
                self.ratio,
                self.run_ratio
            ),
            format!(
                "  targets: large StartJob under {} s (slowest {:.3} s): {}; large items/s within 10% of small (≥ {:.2}×): {}",
                self.start_target_seconds,
                self.large_start_max_seconds,
                met(self.start_met),
                self.ratio_target,
                met(self.ratio_met)
            ),
        ]);
        out
    }
}

pub async fn scale(setup: &Setup, opts: &ScaleOptions) -> anyhow::Result<Scale> {
    anyhow::ensure!(
        opts.base_items > 0 && opts.concurrency > 0,
        "--base-items and --concurrency must be above 0"
    );
    anyhow::ensure!(
        opts.items > opts.base_items,
        "--items ({}) must be above --base-items ({})",
        opts.items,
        opts.base_items
    );
    let args: Vec<&str> = setup.server_args.iter().map(String::as_str).collect();
    let mut base_runs = Vec::new();
    let mut large_runs = Vec::new();
    for n in 1..=opts.runs {
        for (items, runs) in [
            (opts.base_items, &mut base_runs),
            (opts.items, &mut large_runs),
        ] {
            setup.note(format!("run {n} of {}: {items} items", opts.runs));
            let r = throughput(
                &setup.binary,
                &setup.admin_url,
                items,
                opts.concurrency,
                &args,
            )
            .await?;
            setup.note(format!(
                "  start {:.3} s, {:.0} items/s",
                r.start_seconds, r.items_per_second
            ));
            runs.push(r);
        }
    }
    let med = |runs: &[Throughput], f: fn(&Throughput) -> f64| {
        median(&runs.iter().map(f).collect::<Vec<_>>())
    };
    let base_items_per_second = med(&base_runs, |r| r.items_per_second);
    let large_items_per_second = med(&large_runs, |r| r.items_per_second);
    let base_run_items_per_second = med(&base_runs, |r| r.run_items_per_second);
    let large_run_items_per_second = med(&large_runs, |r| r.run_items_per_second);
    let large_start_seconds = med(&large_runs, |r| r.start_seconds);
    let large_start_max_seconds = large_runs
        .iter()
        .map(|r| r.start_seconds)
        .fold(0.0, f64::max);
    let ratio = large_items_per_second / base_items_per_second;
    Ok(Scale {
        items: opts.items,
        base_items: opts.base_items,
        concurrency: opts.concurrency,
        base_items_per_second,
        large_items_per_second,
        base_run_items_per_second,
        large_run_items_per_second,
        base_start_seconds: med(&base_runs, |r| r.start_seconds),
        large_start_seconds,
        large_start_max_seconds,
        ratio,
        run_ratio: large_run_items_per_second / base_run_items_per_second,
        start_target_seconds: START_TARGET_SECONDS,
        start_met: large_start_max_seconds < START_TARGET_SECONDS,
        ratio_target: RATIO_TARGET,
        ratio_met: ratio >= RATIO_TARGET,
        base_runs,
        large_runs,
    })
}

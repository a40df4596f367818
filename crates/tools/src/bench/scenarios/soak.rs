//! `bench soak`: ten million items through jobs of a hundred thousand on
//! one server with a retention (the performance issue's "cost that stays
//! flat as work grows"). Ended jobs, and their items with them, are
//! deleted by the server's retention while the soak runs, so the `items`
//! table is a window of recent jobs that PostgreSQL's autovacuum has to
//! keep reusing.
//!
//! `--jobs-in-flight` jobs of `--job-items` no-op `sleep` items run at
//! once; as one ends the next starts, until `--items` were started. Every
//! second the scenario counts the items done (the ended jobs' items plus
//! the running jobs' succeeded counts, from GetJob) and every `--window`
//! it reads the `items` table's sizes (`pg_relation_size`,
//! `pg_indexes_size`, `pg_total_relation_size`) and its
//! `pg_stat_user_tables` row (live and dead tuples, autovacuum count).
//!
//! Targets:
//! - items/s in the last window (60 s) within 10% of the first. The last
//!   window ends when the last job was started: after that fewer jobs are
//!   left to run (the report also gives the final window, to the last
//!   item).
//! - the `items` table and its indexes end no bigger than twice their
//!   size once `--baseline-items` (1,000,000) were done.
//!
//! `--items-storage` (off by default) sets storage parameters on the items
//! table before the soak (`ALTER TABLE items SET (...)`), to try a
//! per-table autovacuum setting; without it the table is as the server's
//! migrations made it. Per-table settings do nothing where PostgreSQL's
//! `autovacuum` is off (the report prints it): `--vacuum-every` (off by
//! default) then runs `VACUUM items` from the scenario at that period, to
//! see what a vacuum that keeps up would do.

use crate::bench::{Client, Env, Setup, SleepJob, Summary, get_job, met, wait_done};
use anyhow::Context as _;
use serde::Serialize;
use sqlx::PgPool;
use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

#[derive(Debug, Clone, clap::Args)]
pub struct SoakOptions {
    /// Items through the soak in all.
    #[arg(long, default_value_t = 10_000_000)]
    pub items: u64,
    /// Items per job (the last job takes what is left).
    #[arg(long, default_value_t = 100_000)]
    pub job_items: u32,
    /// Jobs running at once: as one ends the next starts.
    #[arg(long, default_value_t = 2)]
    pub jobs_in_flight: u32,
    /// Each job's concurrency.
    #[arg(long, default_value_t = 64)]
    pub concurrency: u32,
    /// The server's --retention: ended jobs and their items are deleted
    /// this long after they end.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub retention: Duration,
    /// The items/s window compared (first against last), and the step of
    /// the series.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub window: Duration,
    /// The items table's sizes at the end are compared with its sizes once
    /// this many items were done.
    #[arg(long, default_value_t = 1_000_000)]
    pub baseline_items: u64,
    /// Off by default. Storage parameters set on the items table before
    /// the soak, as `ALTER TABLE items SET (<these>)`, e.g.
    /// "autovacuum_vacuum_scale_factor=0.01,autovacuum_vacuum_cost_delay=0".
    #[arg(long)]
    pub items_storage: Option<String>,
    /// Off by default. Runs `VACUUM items` on the soak's database this
    /// often (the period counts from the end of the last one), as an
    /// autovacuum that keeps up would.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub vacuum_every: Option<Duration>,
}

/// Items/s in the last window over the first at least this.
const RATE_TARGET: f64 = 0.9;
/// The items table's heap and indexes at the end at most this many times
/// their sizes at the baseline.
const SIZE_TARGET: f64 = 2.0;

/// The items table at one moment of the soak.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct ItemsTable {
    /// Seconds from the soak's start.
    pub seconds: f64,
    /// Items done by then.
    pub items_done: u64,
    /// Jobs stored (the retention has not deleted yet).
    pub jobs_stored: i64,
    /// `pg_relation_size('items')`: the heap's main fork.
    pub heap_bytes: i64,
    /// `pg_indexes_size('items')`.
    pub index_bytes: i64,
    /// `pg_total_relation_size('items')`: heap, indexes, TOAST, maps.
    pub total_bytes: i64,
    /// From `pg_stat_user_tables`.
    pub live_tuples: i64,
    pub dead_tuples: i64,
    pub autovacuum_count: i64,
    pub autoanalyze_count: i64,
    /// Manual VACUUMs (`--vacuum-every`).
    pub vacuum_count: i64,
}

/// One step of the series.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Step {
    /// Items/s over the step that ends here.
    pub items_per_second: f64,
    pub table: ItemsTable,
}

#[derive(Debug, Clone, Serialize)]
pub struct Soak {
    pub items: u64,
    pub job_items: u32,
    pub jobs: u64,
    pub jobs_in_flight: u32,
    pub concurrency: u32,
    pub retention_seconds: f64,
    /// `ALTER TABLE items SET (...)` before the soak, if asked for.
    pub items_storage: Option<String>,
    /// The items table's storage parameters (`pg_class.reloptions`).
    pub items_reloptions: Vec<String>,
    /// The server's autovacuum settings.
    pub autovacuum: Vec<(String, String)>,
    /// `--vacuum-every`, and how long each VACUUM the scenario ran took.
    pub vacuum_every_seconds: Option<f64>,
    pub vacuum_seconds: Vec<f64>,
    /// From the first StartJob to the last job's end.
    pub seconds: f64,
    pub items_per_second: f64,
    /// When the last job was started (its StartJob answered).
    pub fed_seconds: f64,
    /// The window compared: `--window`, or half the fed time if shorter.
    pub window_seconds: f64,
    pub first_items_per_second: f64,
    /// The window ending when the last job was started.
    pub last_items_per_second: f64,
    /// The window ending with the last item (fewer jobs left to run).
    pub final_items_per_second: f64,
    pub rate_ratio: f64,
    /// StartJob of each job, and of the first and last few.
    pub start_job: Summary,
    pub first_start_seconds: f64,
    pub last_start_seconds: f64,
    pub baseline: ItemsTable,
    pub end: ItemsTable,
    pub heap_ratio: f64,
    pub index_ratio: f64,
    pub total_ratio: f64,
    pub series: Vec<Step>,
    /// Whether the soak was fed for two whole windows (else the window
    /// was shrunk to half the fed time, and the rate target not judged).
    pub rate_measured: bool,
    pub rate_met: bool,
    pub size_met: bool,
}

fn mib(bytes: i64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

impl Soak {
    pub fn human(&self) -> Vec<String> {
        let mut out = vec![
            format!(
                "soak: {} items in {} jobs of {} ({} at once, concurrency {}), retention {} s{}",
                self.items,
                self.jobs,
                self.job_items,
                self.jobs_in_flight,
                self.concurrency,
                self.retention_seconds,
                match &self.items_storage {
                    Some(s) => format!(", items table SET ({s})"),
                    None => String::new(),
                }
            ),
            format!(
                "  items reloptions: {}; {}",
                self.items_reloptions.join(", "),
                self.autovacuum
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            format!(
                "  {:>7} {:>10} {:>9} {:>6} {:>9} {:>9} {:>9} {:>10} {:>10} {:>7} {:>4}",
                "s",
                "items done",
                "items/s",
                "jobs",
                "heap MiB",
                "idx MiB",
                "total MiB",
                "live tup",
                "dead tup",
                "autovac",
                "vac"
            ),
        ];
        let table_row = |rate: String, t: &ItemsTable| {
            format!(
                "  {:>7.1} {:>10} {:>9} {:>6} {:>9.1} {:>9.1} {:>9.1} {:>10} {:>10} {:>7} {:>4}",
                t.seconds,
                t.items_done,
                rate,
                t.jobs_stored,
                mib(t.heap_bytes),
                mib(t.index_bytes),
                mib(t.total_bytes),
                t.live_tuples,
                t.dead_tuples,
                t.autovacuum_count,
                t.vacuum_count
            )
        };
        for step in &self.series {
            out.push(table_row(
                format!("{:.0}", step.items_per_second),
                &step.table,
            ));
        }
        out.extend([
            format!("  at {} items done:", self.baseline.items_done),
            table_row("-".into(), &self.baseline),
            "  at the end:".into(),
            table_row("-".into(), &self.end),
            format!(
                "  {:.1} s, {:.0} items/s overall; {:.0} s windows: first {:.0} items/s, last while fed (to {:.1} s) {:.0} items/s ({:.3}×), final (to the last item) {:.0} items/s",
                self.seconds,
                self.items_per_second,
                self.window_seconds,
                self.first_items_per_second,
                self.fed_seconds,
                self.last_items_per_second,
                self.rate_ratio,
                self.final_items_per_second
            ),
            match self.vacuum_every_seconds {
                Some(every) => format!(
                    "  VACUUM items every {every} s (--vacuum-every): {} runs, {:.1} s in all, longest {:.1} s",
                    self.vacuum_seconds.len(),
                    self.vacuum_seconds.iter().sum::<f64>(),
                    self.vacuum_seconds.iter().copied().fold(0.0, f64::max)
                ),
                None => "  no VACUUM from the scenario (--vacuum-every not given)".into(),
            },
            format!(
                "  StartJob: {}; first {:.3} s, last {:.3} s",
                self.start_job, self.first_start_seconds, self.last_start_seconds
            ),
            format!(
                "  items table end/baseline: heap {:.2}×, indexes {:.2}×, total {:.2}×; autovacuums of items {} by the baseline, {} by the end",
                self.heap_ratio,
                self.index_ratio,
                self.total_ratio,
                self.baseline.autovacuum_count,
                self.end.autovacuum_count
            ),
            format!(
                "  targets: last window's items/s within 10% of the first (≥ {RATE_TARGET}×): {}; items heap and indexes at most {SIZE_TARGET}× their size at {} items: {}",
                if self.rate_measured {
                    met(self.rate_met)
                } else {
                    "not measured (fed for less than two --window)"
                },
                self.baseline.items_done,
                met(self.size_met)
            ),
        ]);
        out
    }
}

/// What the jobs report as they run: the ended jobs' items, and the jobs
/// running.
#[derive(Default)]
struct Progress {
    ended_items: u64,
    running: Vec<(String, u32)>,
}

/// One job of the soak, started and run to its end.
struct JobRun {
    /// When its StartJob was answered, from the soak's start.
    started_at: f64,
    start: Duration,
}

pub async fn soak(setup: &Setup, opts: &SoakOptions) -> anyhow::Result<Soak> {
    anyhow::ensure!(opts.job_items > 0, "--job-items must be above 0");
    anyhow::ensure!(opts.jobs_in_flight > 0, "--jobs-in-flight must be above 0");
    anyhow::ensure!(opts.concurrency > 0, "--concurrency must be above 0");
    anyhow::ensure!(
        opts.items >= u64::from(opts.job_items),
        "--items ({}) must be at least --job-items ({})",
        opts.items,
        opts.job_items
    );
    anyhow::ensure!(
        opts.baseline_items > 0 && opts.baseline_items < opts.items,
        "--baseline-items ({}) must be above 0 and below --items ({})",
        opts.baseline_items,
        opts.items
    );
    anyhow::ensure!(
        opts.window >= Duration::from_secs(1),
        "--window must be at least 1s"
    );
    anyhow::ensure!(
        opts.retention >= Duration::from_secs(1),
        "--retention must be at least 1s (the server's minimum)"
    );
    anyhow::ensure!(
        opts.vacuum_every
            .is_none_or(|d| d >= Duration::from_secs(1)),
        "--vacuum-every must be at least 1s"
    );
    if let Some(s) = &opts.items_storage {
        anyhow::ensure!(
            !s.trim().is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_=.,- ".contains(c)),
            "--items-storage takes storage parameters as name=value,… (letters, digits, _ = . , -), got {s:?}"
        );
    }
    let retention = humantime::format_duration(opts.retention).to_string();
    let env = Env::start_setup(setup, &["--retention", &retention], false).await?;
    let result = run(setup, opts, &env).await;
    env.finish().await;
    result
}

async fn run(setup: &Setup, opts: &SoakOptions, env: &Env) -> anyhow::Result<Soak> {
    let pool = env.db.pool().await?;
    if let Some(params) = &opts.items_storage {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "ALTER TABLE items SET ({params})"
        )))
        .execute(&pool)
        .await
        .with_context(|| format!("ALTER TABLE items SET ({params})"))?;
    }
    let items_reloptions: Vec<String> = sqlx::query_scalar(
        "SELECT coalesce(reloptions, '{}') FROM pg_class WHERE oid = 'items'::regclass",
    )
    .fetch_one(&pool)
    .await?;
    let mut autovacuum = Vec::new();
    for name in [
        "autovacuum",
        "autovacuum_naptime",
        "autovacuum_vacuum_scale_factor",
        "autovacuum_vacuum_threshold",
        "autovacuum_vacuum_insert_scale_factor",
        "autovacuum_vacuum_cost_delay",
        "autovacuum_vacuum_cost_limit",
        "autovacuum_max_workers",
    ] {
        let value: String = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SHOW {name}")))
            .fetch_one(&pool)
            .await?;
        autovacuum.push((name.to_string(), value));
    }
    let client = env.client().await?;
    let progress = Arc::new(Mutex::new(Progress::default()));
    let t0 = Instant::now();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let sampler = tokio::spawn(sample(
        client.clone(),
        pool.clone(),
        progress.clone(),
        t0,
        opts.window,
        opts.baseline_items,
        setup.progress,
        stopped,
    ));
    let jobs = opts.items.div_ceil(u64::from(opts.job_items));
    setup.note(format!(
        "soak: {} items in {jobs} jobs, {} at once, retention {}",
        opts.items,
        opts.jobs_in_flight,
        humantime::format_duration(opts.retention)
    ));
    let vacuum = opts
        .vacuum_every
        .map(|every| tokio::spawn(vacuum(env.db.url.clone(), every, stop.subscribe())));
    let fed = feed(opts, &client, &progress, t0).await;
    let seconds = t0.elapsed().as_secs_f64();
    let _ = stop.send(true);
    let sampled = sampler.await.context("the sampler panicked")?;
    let vacuum_seconds = match vacuum {
        Some(task) => task.await.context("the vacuum task panicked")??,
        None => vec![],
    };
    let runs = fed?;
    let (samples, series, baseline) = sampled?;
    let baseline = baseline.context("the baseline was never reached")?;
    let end = items_table(&pool, seconds, opts.items).await?;

    let fed_seconds = runs
        .iter()
        .map(|r| r.started_at)
        .fold(0.0, f64::max)
        .min(seconds);
    let window = opts.window.as_secs_f64().min(fed_seconds / 2.0);
    let done_at = |t: f64| done_at(&samples, t);
    let first_items_per_second = (done_at(window) - done_at(0.0)) / window;
    let last_items_per_second = (done_at(fed_seconds) - done_at(fed_seconds - window)) / window;
    let final_items_per_second = (done_at(seconds) - done_at(seconds - window)) / window;
    let rate_ratio = last_items_per_second / first_items_per_second;
    let rate_measured =
        fed_seconds >= 2.0 * opts.window.as_secs_f64() && first_items_per_second > 0.0;
    let starts: Vec<Duration> = runs.iter().map(|r| r.start).collect();
    let few =
        |d: &[Duration]| d.iter().map(Duration::as_secs_f64).sum::<f64>() / d.len().max(1) as f64;
    let n = starts.len().min(5);
    let ratio = |a: i64, b: i64| a as f64 / b.max(1) as f64;
    let heap_ratio = ratio(end.heap_bytes, baseline.heap_bytes);
    let index_ratio = ratio(end.index_bytes, baseline.index_bytes);
    Ok(Soak {
        items: opts.items,
        job_items: opts.job_items,
        jobs,
        jobs_in_flight: opts.jobs_in_flight,
        concurrency: opts.concurrency,
        retention_seconds: opts.retention.as_secs_f64(),
        items_storage: opts.items_storage.clone(),
        items_reloptions,
        autovacuum,
        vacuum_every_seconds: opts.vacuum_every.map(|d| d.as_secs_f64()),
        vacuum_seconds,
        seconds,
        items_per_second: opts.items as f64 / seconds,
        fed_seconds,
        window_seconds: window,
        first_items_per_second,
        last_items_per_second,
        final_items_per_second,
        rate_ratio,
        start_job: Summary::of(&starts),
        first_start_seconds: few(&starts[..n]),
        last_start_seconds: few(&starts[starts.len() - n..]),
        heap_ratio,
        index_ratio,
        total_ratio: ratio(end.total_bytes, baseline.total_bytes),
        rate_measured,
        rate_met: rate_measured && rate_ratio >= RATE_TARGET,
        size_met: heap_ratio <= SIZE_TARGET && index_ratio <= SIZE_TARGET,
        baseline,
        end,
        series,
    })
}

/// Starts the jobs, `--jobs-in-flight` at a time, each as one ends, and
/// waits for the last; returns them in the order they ended.
async fn feed(
    opts: &SoakOptions,
    client: &Client,
    progress: &Arc<Mutex<Progress>>,
    t0: Instant,
) -> anyhow::Result<Vec<JobRun>> {
    let mut running = tokio::task::JoinSet::new();
    let mut submitted = 0u64;
    let mut runs = Vec::new();
    loop {
        while running.len() < opts.jobs_in_flight as usize && submitted < opts.items {
            let items = (opts.items - submitted).min(u64::from(opts.job_items)) as u32;
            submitted += u64::from(items);
            let job = SleepJob::new("soak", items, opts.concurrency, 0, 1);
            running.spawn(run_job(client.clone(), job, progress.clone(), t0));
        }
        match running.join_next().await {
            Some(run) => runs.push(run.context("a job's task panicked")??),
            None => return Ok(runs),
        }
    }
}

async fn run_job(
    mut client: Client,
    job: SleepJob,
    progress: Arc<Mutex<Progress>>,
    t0: Instant,
) -> anyhow::Result<JobRun> {
    let called = Instant::now();
    let started = job.start(&mut client).await?;
    let start = called.elapsed();
    let started_at = t0.elapsed().as_secs_f64();
    progress
        .lock()
        .expect("progress lock")
        .running
        .push((started.id.clone(), job.items));
    let done = wait_done(&mut client, &started.id, Duration::from_secs(600)).await?;
    let succeeded = done.counts.map(|c| c.succeeded).unwrap_or(0);
    anyhow::ensure!(
        succeeded == u64::from(job.items),
        "job {}: only {succeeded} of {} items succeeded",
        started.id,
        job.items
    );
    let mut p = progress.lock().expect("progress lock");
    p.running.retain(|(id, _)| *id != started.id);
    p.ended_items += u64::from(job.items);
    Ok(JobRun { started_at, start })
}

/// `VACUUM items` every `every` (from the end of the last one) until
/// stopped; returns how long each took.
async fn vacuum(
    url: String,
    every: Duration,
    mut stopped: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<Vec<f64>> {
    use sqlx::Connection as _;
    let mut conn = sqlx::PgConnection::connect(&url).await?;
    let mut took = Vec::new();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stopped.changed() => return Ok(took),
        }
        let started = Instant::now();
        sqlx::raw_sql("VACUUM items")
            .execute(&mut conn)
            .await
            .context("VACUUM items")?;
        took.push(started.elapsed().as_secs_f64());
    }
}

/// Items done now: the ended jobs' items and the running jobs' succeeded
/// counts (a job deleted meanwhile had ended: all its items).
async fn items_done(client: &mut Client, progress: &Mutex<Progress>) -> u64 {
    let (ended, running) = {
        let p = progress.lock().expect("progress lock");
        (p.ended_items, p.running.clone())
    };
    let mut done = ended;
    for (id, items) in running {
        done += match get_job(client, &id).await {
            Ok(job) => job.counts.map(|c| c.succeeded).unwrap_or(0),
            Err(_) => u64::from(items),
        };
    }
    done
}

type Sampled = (Vec<(f64, u64)>, Vec<Step>, Option<ItemsTable>);

/// Every second: the items done; every `window`: a step of the series
/// (the items table read); once `baseline` items are done: the baseline.
#[allow(clippy::too_many_arguments)]
async fn sample(
    mut client: Client,
    pool: PgPool,
    progress: Arc<Mutex<Progress>>,
    t0: Instant,
    window: Duration,
    baseline_items: u64,
    notes: bool,
    mut stopped: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<Sampled> {
    let mut samples = vec![(0.0, 0u64)];
    let mut series = Vec::new();
    let mut baseline = None;
    let mut tick = tokio::time::interval_at(
        tokio::time::Instant::from_std(t0) + Duration::from_secs(1),
        Duration::from_secs(1),
    );
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut step_from = (0.0, 0u64);
    let mut next_step = window.as_secs_f64();
    loop {
        let stop = tokio::select! {
            _ = tick.tick() => false,
            _ = stopped.changed() => true,
        };
        let done = items_done(&mut client, &progress).await;
        let t = t0.elapsed().as_secs_f64();
        samples.push((t, done));
        if baseline.is_none() && done >= baseline_items {
            baseline = Some(items_table(&pool, t, done).await?);
        }
        if stop || t >= next_step {
            let table = items_table(&pool, t, done).await?;
            let rate = (done - step_from.1) as f64 / (t - step_from.0);
            if notes {
                eprintln!(
                    "# {t:.0} s: {done} items done, {rate:.0}/s; items table {:.1} MiB ({} dead tuples, {} autovacuums)",
                    mib(table.total_bytes),
                    table.dead_tuples,
                    table.autovacuum_count
                );
            }
            series.push(Step {
                items_per_second: rate,
                table,
            });
            step_from = (t, done);
            next_step += window.as_secs_f64();
        }
        if stop {
            return Ok((samples, series, baseline));
        }
    }
}

/// Items done at `t` seconds, between the samples around it.
fn done_at(samples: &[(f64, u64)], t: f64) -> f64 {
    let after = samples.partition_point(|&(s, _)| s < t);
    match (after.checked_sub(1).map(|i| samples[i]), samples.get(after)) {
        (Some((t1, d1)), Some(&(t2, d2))) if t2 > t1 => {
            d1 as f64 + (d2 as f64 - d1 as f64) * (t - t1) / (t2 - t1)
        }
        (_, Some(&(_, d))) | (Some((_, d)), None) => d as f64,
        (None, None) => 0.0,
    }
}

async fn items_table(pool: &PgPool, seconds: f64, items_done: u64) -> anyhow::Result<ItemsTable> {
    use sqlx::Row as _;
    let row = sqlx::query(
        "SELECT pg_relation_size('items'), pg_indexes_size('items'), \
                pg_total_relation_size('items'), s.n_live_tup, s.n_dead_tup, \
                s.autovacuum_count, s.autoanalyze_count, s.vacuum_count, \
                (SELECT count(*) FROM jobs) \
         FROM pg_stat_user_tables AS s WHERE s.relid = 'items'::regclass",
    )
    .fetch_one(pool)
    .await
    .context("reading the items table's sizes")?;
    let get = |i: usize| row.try_get::<i64, _>(i);
    Ok(ItemsTable {
        seconds,
        items_done,
        heap_bytes: get(0)?,
        index_bytes: get(1)?,
        total_bytes: get(2)?,
        live_tuples: get(3)?,
        dead_tuples: get(4)?,
        autovacuum_count: get(5)?,
        autoanalyze_count: get(6)?,
        vacuum_count: get(7)?,
        jobs_stored: get(8)?,
    })
}

#[cfg(test)]
mod tests {
    use super::done_at;

    #[test]
    fn items_done_between_samples_are_interpolated() {
        let samples = [(0.0, 0), (1.0, 100), (2.0, 300)];
        assert_eq!(done_at(&samples, 0.0), 0.0);
        assert_eq!(done_at(&samples, 0.5), 50.0);
        assert_eq!(done_at(&samples, 1.5), 200.0);
        assert_eq!(done_at(&samples, 2.0), 300.0);
        assert_eq!(done_at(&samples, 5.0), 300.0);
    }
}

//! `bench many-jobs`: what a live job costs the server, and whether control
//! calls slow down when very many jobs run at once in one process.
//!
//! After a warm-up job has run to the end, the server's resident memory
//! (VmRSS) is read; a few jobs are started and the control calls measured
//! on them (pause/resume rounds on those jobs, cancels of small jobs
//! started one at a time, as `bench control` makes them); then the rest of
//! the jobs are started, and once every job has an item running (its
//! RUNNING counter in the database) VmRSS is read again and the same calls
//! are measured on jobs picked at random among all of them.
//!
//! Every job is 10 slow items (600 s each, concurrency 1) that stay
//! running for the whole scenario: one supervisor actor, one worker and
//! one item in flight per job. With PostgreSQL the store is another
//! process, so the whole server delta counts as the jobs' cost; it is
//! reported as KiB per live job.
//!
//! With `--paused N`, a second part: N more jobs of the same kind, paused
//! (started paused: they hold no actors, as a job does once a pause has
//! drained it), VmRSS read again and reported per paused job, and the
//! control calls measured once more on the running jobs, beside the
//! paused ones.
//!
//! With `--waiting N`, a third part: N more jobs of the same kind on a
//! remote executor (`many-jobs-remote`) that no worker serves. They are
//! RUNNING and hold no actors either (their supervisors exit until a
//! worker serves them): once the server's metrics count them all as
//! waiting for workers, VmRSS is read again and reported per waiting job,
//! with the live supervisors the metrics count, and the control calls are
//! measured once more on the running jobs, beside the paused and waiting
//! ones.

use crate::bench::{
    Client, Env, Rng, Setup, SleepJob,
    calls::{self, CancelSummary, PauseResumeSummary},
    header, met, start_many, wait_done, wait_jobs_claiming,
};
use anyhow::Context as _;
use serde::Serialize;
use std::time::{Duration, Instant};

use super::control::victim_job;

#[derive(Debug, Clone, clap::Args)]
pub struct ManyJobsOptions {
    /// Jobs running at once at the end (the few included).
    #[arg(long, default_value_t = 10_000)]
    pub jobs: u32,
    /// Items per job (600 s each, concurrency 1: one runs, the rest wait).
    #[arg(long, default_value_t = 10)]
    pub items: u32,
    /// Steps of each item (a checkpoint between steps).
    #[arg(long, default_value_t = 10)]
    pub steps: u32,
    /// Jobs running during the first measurement of the calls.
    #[arg(long, default_value_t = 10)]
    pub few: u32,
    /// Pause/resume rounds per measurement.
    #[arg(long, default_value_t = 200)]
    pub rounds: u32,
    /// Cancels per measurement.
    #[arg(long, default_value_t = 20)]
    pub cancels: u32,
    /// StartJob calls in flight while starting the jobs.
    #[arg(long, default_value_t = 16)]
    pub in_flight: usize,
    /// The second part: this many paused jobs beside the running ones
    /// (0: none).
    #[arg(long, default_value_t = 0)]
    pub paused: u32,
    /// The third part: this many RUNNING jobs of a remote executor that
    /// no worker serves, beside the running (and paused) ones (0: none).
    #[arg(long, default_value_t = 0)]
    pub waiting: u32,
}

/// The remote executor of the waiting jobs; no worker ever connects.
const WAITING_EXECUTOR: &str = "many-jobs-remote";

/// The jobs kept running: slow items, one at a time.
pub fn live_job(opts: &ManyJobsOptions) -> SleepJob {
    SleepJob::new("many-jobs", opts.items, 1, 600_000, opts.steps)
}

/// The control calls of one measurement.
#[derive(Debug, Clone, Serialize)]
pub struct Calls {
    /// Jobs running while the calls were made.
    pub running_jobs: u32,
    #[serde(flatten)]
    pub pause_resume: PauseResumeSummary,
    pub cancel: CancelSummary,
}

impl Calls {
    fn rows(&self, label: &str) -> Vec<String> {
        calls::rows(label, &self.pause_resume, &self.cancel)
    }

    fn worst_p99(&self) -> f64 {
        calls::worst_p99(&self.pause_resume, &self.cancel)
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ManyJobs {
    pub jobs: u32,
    pub job: String,
    /// Server VmRSS after the warm-up job ended, with nothing running.
    pub rss_warm_mib: f64,
    /// With the few jobs running (after their control calls).
    pub rss_few_mib: f64,
    /// With every job running.
    pub rss_all_mib: f64,
    /// The server's peak (VmHWM) at that moment.
    pub peak_rss_mib: f64,
    /// (rss_all − rss_warm) / jobs: the server's whole delta per live job.
    pub kib_per_job: f64,
    /// (rss_all − rss_few) / (jobs − few): the same over the jobs started
    /// in bulk only.
    pub kib_per_job_bulk: f64,
    /// Starting the jobs after the few (StartJob calls, `in_flight` at a
    /// time), and until every job had an item running.
    pub start_seconds: f64,
    pub all_running_seconds: f64,
    pub few: Calls,
    pub many: Calls,
    /// The second part, with `--paused`.
    pub paused: Option<Paused>,
    /// The third part, with `--waiting`.
    pub waiting: Option<Waiting>,
}

/// Jobs waiting for remote workers beside the running (and paused) ones.
#[derive(Debug, Clone, Serialize)]
pub struct Waiting {
    pub jobs: u32,
    /// Server VmRSS with the waiting jobs too.
    pub rss_mib: f64,
    /// (rss − rss before they were started) / waiting jobs.
    pub kib_per_waiting_job: f64,
    pub start_seconds: f64,
    /// From the first StartJob until the metrics counted every job as
    /// waiting for workers (its supervisor gone).
    pub all_waiting_seconds: f64,
    /// Live supervisors in the server then (the metrics' gauge): the
    /// running jobs', none of the waiting ones'.
    pub supervisors: f64,
    /// The control calls on the running jobs, the waiting ones beside.
    pub calls: Calls,
    pub target_kib_per_waiting_job: f64,
    pub kib_met: bool,
}

/// Paused jobs beside the running ones.
#[derive(Debug, Clone, Serialize)]
pub struct Paused {
    pub jobs: u32,
    /// Server VmRSS with the paused jobs too.
    pub rss_mib: f64,
    /// (rss − rss with only the running jobs) / paused jobs.
    pub kib_per_paused_job: f64,
    pub start_seconds: f64,
    /// The control calls on the running jobs, the paused ones beside.
    pub calls: Calls,
    pub target_kib_per_paused_job: f64,
    pub kib_met: bool,
}

const TARGET_PAUSED_KIB: f64 = 1.0;

const TARGET_WAITING_KIB: f64 = 1.0;

impl ManyJobs {
    pub fn human(&self) -> Vec<String> {
        let mut out = vec![format!(
            "many-jobs: {} jobs running at once in one server, each {}",
            self.jobs, self.job
        )];
        out.push(format!(
            "  server RSS: {:.1} MiB warm and idle, {:.1} MiB with {} jobs, {:.1} MiB with {} jobs (peak {:.1} MiB)",
            self.rss_warm_mib,
            self.rss_few_mib,
            self.few.running_jobs,
            self.rss_all_mib,
            self.jobs,
            self.peak_rss_mib
        ));
        out.push(format!(
            "  per live job: {:.2} KiB (whole server delta / jobs; {:.2} KiB over the {} started in bulk); the store is PostgreSQL, another process",
            self.kib_per_job,
            self.kib_per_job_bulk,
            self.jobs - self.few.running_jobs
        ));
        out.push(format!(
            "  started {} jobs in {:.1} s; all {} running after {:.1} s",
            self.jobs - self.few.running_jobs,
            self.start_seconds,
            self.jobs,
            self.all_running_seconds
        ));
        out.push(header("call → response unless said"));
        out.extend(self.few.rows(&format!("{} jobs:", self.few.running_jobs)));
        out.extend(self.many.rows(&format!("{} jobs:", self.many.running_jobs)));
        out.push(format!(
            "  worst control p99: {:.2} ms with {} jobs, {:.2} ms with {} jobs",
            self.few.worst_p99(),
            self.few.running_jobs,
            self.many.worst_p99(),
            self.many.running_jobs
        ));
        if let Some(p) = &self.paused {
            out.push(format!(
                "  {} paused jobs beside them: server RSS {:.1} MiB, {:.3} KiB per paused job (started in {:.1} s)",
                p.jobs, p.rss_mib, p.kib_per_paused_job, p.start_seconds
            ));
            out.extend(p.calls.rows(&format!(
                "{} jobs + {} paused:",
                p.calls.running_jobs, p.jobs
            )));
            out.push(format!(
                "  worst control p99: {:.2} ms with {} paused jobs beside (with {} jobs alone: {:.2} ms)",
                p.calls.worst_p99(),
                p.jobs,
                self.few.running_jobs,
                self.few.worst_p99()
            ));
            out.push(format!(
                "  target: < {TARGET_PAUSED_KIB} KiB per paused job: {} ({:.3} KiB)",
                met(p.kib_met),
                p.kib_per_paused_job
            ));
        }
        if let Some(w) = &self.waiting {
            let paused = self.paused.as_ref().map_or(0, |p| p.jobs);
            out.push(format!(
                "  {} jobs waiting for remote workers beside them: server RSS {:.1} MiB, {:.3} KiB per waiting job (started in {:.1} s, all waiting after {:.1} s; {} live supervisors)",
                w.jobs, w.rss_mib, w.kib_per_waiting_job, w.start_seconds, w.all_waiting_seconds, w.supervisors
            ));
            out.extend(w.calls.rows(&format!(
                "{} jobs + {} paused + {} waiting:",
                w.calls.running_jobs, paused, w.jobs
            )));
            out.push(format!(
                "  worst control p99: {:.2} ms with {} waiting jobs beside (with {} jobs alone: {:.2} ms)",
                w.calls.worst_p99(),
                w.jobs,
                self.few.running_jobs,
                self.few.worst_p99()
            ));
            out.push(format!(
                "  target: < {TARGET_WAITING_KIB} KiB per waiting job: {} ({:.3} KiB)",
                met(w.kib_met),
                w.kib_per_waiting_job
            ));
        }
        out
    }
}

pub async fn many_jobs(setup: &Setup, opts: &ManyJobsOptions) -> anyhow::Result<ManyJobs> {
    anyhow::ensure!(
        opts.few >= 1 && opts.few < opts.jobs,
        "--few must be at least 1 and below --jobs"
    );
    anyhow::ensure!(opts.items >= 2, "--items must be at least 2");
    // The waiting jobs' remote executor, and the metrics that count the
    // supervisors and the jobs waiting for workers, only when asked for.
    let waiting = opts.waiting > 0;
    let extra: &[&str] = if waiting {
        &["--remote-executor", WAITING_EXECUTOR]
    } else {
        &[]
    };
    let env = Env::start_setup(setup, extra, waiting).await?;
    let result = run(setup, &env, opts).await;
    env.finish().await;
    result
}

async fn run(setup: &Setup, env: &Env, opts: &ManyJobsOptions) -> anyhow::Result<ManyJobs> {
    let mut client = env.client().await?;
    let pool = env.db.pool().await?;
    let mut rng = Rng::seeded();
    let job = live_job(opts);

    // Warm-up: the pools, the executor, the allocator's first arenas.
    let warm = SleepJob::new("many-jobs-warm-up", 200, 8, 0, 1)
        .start(&mut client)
        .await?;
    wait_done(&mut client, &warm.id, Duration::from_secs(60))
        .await
        .context("the warm-up job")?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_, rss_warm) = env.rss_mib();

    setup.note(format!("{} jobs: control calls", opts.few));
    let mut ids = start_many(&client, &job, opts.few, opts.in_flight).await?;
    wait_jobs_claiming(
        &pool,
        i64::from(opts.few),
        Duration::from_millis(20),
        Duration::from_secs(60),
    )
    .await?;
    let few = measure(&mut client, &ids, opts, &mut rng).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_, rss_few) = env.rss_mib();

    let rest = opts.jobs - opts.few;
    setup.note(format!("starting {rest} more jobs"));
    let started = Instant::now();
    ids.extend(start_many(&client, &job, rest, opts.in_flight).await?);
    let start_seconds = started.elapsed().as_secs_f64();
    // Generous: a debug build on a small machine starts a few hundred
    // jobs a second.
    let within = Duration::from_secs(60) + Duration::from_millis(30) * opts.jobs;
    wait_jobs_claiming(
        &pool,
        i64::from(opts.jobs),
        Duration::from_millis(100),
        within,
    )
    .await?;
    let all_running_seconds = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (peak, rss_all) = env.rss_mib();

    setup.note(format!("{} jobs: control calls", opts.jobs));
    let many = measure(&mut client, &ids, opts, &mut rng).await?;
    let paused = if opts.paused > 0 {
        setup.note(format!("starting {} paused jobs", opts.paused));
        let (_, rss_before) = env.rss_mib();
        let started = Instant::now();
        let mut held = job.clone();
        held.name = "many-jobs-paused".into();
        start_many_paused(&client, &held, opts.paused, opts.in_flight).await?;
        let start_seconds = started.elapsed().as_secs_f64();
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (_, rss_paused) = env.rss_mib();
        setup.note(format!(
            "{} jobs and {} paused: control calls",
            opts.jobs, opts.paused
        ));
        let calls = measure(&mut client, &ids, opts, &mut rng).await?;
        let kib = (rss_paused - rss_before) * 1024.0 / f64::from(opts.paused);
        Some(Paused {
            jobs: opts.paused,
            rss_mib: rss_paused,
            kib_per_paused_job: kib,
            start_seconds,
            calls,
            target_kib_per_paused_job: TARGET_PAUSED_KIB,
            kib_met: kib < TARGET_PAUSED_KIB,
        })
    } else {
        None
    };
    let waiting = if opts.waiting > 0 {
        Some(run_waiting(setup, env, opts, &ids, &mut client, &mut rng).await?)
    } else {
        None
    };
    pool.close().await;

    let kib_per_job = (rss_all - rss_warm) * 1024.0 / f64::from(opts.jobs);
    Ok(ManyJobs {
        jobs: opts.jobs,
        job: job.describe(),
        rss_warm_mib: rss_warm,
        rss_few_mib: rss_few,
        rss_all_mib: rss_all,
        peak_rss_mib: peak,
        kib_per_job,
        kib_per_job_bulk: (rss_all - rss_few) * 1024.0 / f64::from(rest),
        start_seconds,
        all_running_seconds,
        few,
        many,
        paused,
        waiting,
    })
}

/// The third part: `--waiting` jobs of a remote executor that no worker
/// serves, started beside the others; measured once every one of them is
/// waiting (the server's gauge), its supervisor gone.
async fn run_waiting(
    setup: &Setup,
    env: &Env,
    opts: &ManyJobsOptions,
    ids: &[String],
    client: &mut Client,
    rng: &mut Rng,
) -> anyhow::Result<Waiting> {
    setup.note(format!(
        "starting {} jobs waiting for remote workers",
        opts.waiting
    ));
    let (_, rss_before) = env.rss_mib();
    let started = Instant::now();
    let mut job = live_job(opts).on(WAITING_EXECUTOR);
    job.name = "many-jobs-waiting".into();
    start_many(client, &job, opts.waiting, opts.in_flight).await?;
    let start_seconds = started.elapsed().as_secs_f64();
    let within = Duration::from_secs(60) + Duration::from_millis(30) * opts.waiting;
    let supervisors = loop {
        let page = env.scrape().await?;
        let parked = gauge(&page, "jobvisor_jobs_waiting_for_workers").unwrap_or(0.0);
        if parked >= f64::from(opts.waiting) {
            break gauge(&page, "jobvisor_job_supervisors").unwrap_or(0.0);
        }
        anyhow::ensure!(
            started.elapsed() < within,
            "only {parked} of {} jobs were waiting for workers after {within:?}",
            opts.waiting
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let all_waiting_seconds = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (_, rss) = env.rss_mib();
    setup.note(format!(
        "{} jobs and {} waiting: control calls",
        opts.jobs, opts.waiting
    ));
    let calls = measure(client, ids, opts, rng).await?;
    let kib = (rss - rss_before) * 1024.0 / f64::from(opts.waiting);
    Ok(Waiting {
        jobs: opts.waiting,
        rss_mib: rss,
        kib_per_waiting_job: kib,
        start_seconds,
        all_waiting_seconds,
        supervisors,
        calls,
        target_kib_per_waiting_job: TARGET_WAITING_KIB,
        kib_met: kib < TARGET_WAITING_KIB,
    })
}

/// The value of an unlabelled gauge on a `/metrics` page, if it is there.
fn gauge(page: &str, name: &str) -> Option<f64> {
    page.lines()
        .filter_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .find_map(|v| v.trim().parse().ok())
}

/// Starts `count` copies of `job` paused, `in_flight` calls at a time.
async fn start_many_paused(
    client: &Client,
    job: &SleepJob,
    count: u32,
    in_flight: usize,
) -> anyhow::Result<()> {
    use futures::{StreamExt, TryStreamExt};
    let request = jobvisor::pb::StartJobRequest {
        start_paused: true,
        ..job.request()
    };
    futures::stream::iter(0..count)
        .map(|_| {
            let mut client = client.clone();
            let request = request.clone();
            async move {
                client.start_job(request).await?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(in_flight.max(1))
        .try_collect()
        .await
}

/// Pause/resume rounds on jobs picked at random among `ids`, then cancels
/// of small jobs started for it.
async fn measure(
    client: &mut Client,
    ids: &[String],
    opts: &ManyJobsOptions,
    rng: &mut Rng,
) -> anyhow::Result<Calls> {
    let pause_resume = calls::pause_resume(client, ids, opts.rounds, rng).await?;
    let cancels = calls::cancel_victims(client, &victim_job(), opts.cancels).await?;
    Ok(Calls {
        running_jobs: ids.len() as u32,
        pause_resume: pause_resume.summary(),
        cancel: cancels.summary(),
    })
}

#[cfg(test)]
mod tests {
    use super::gauge;

    #[test]
    fn a_gauge_is_read_by_its_whole_name() {
        let page = "# TYPE jobvisor_job_supervisors gauge\n\
                    jobvisor_job_supervisors_total 7\n\
                    jobvisor_job_supervisors 10\n\
                    jobvisor_jobs_waiting_for_workers 10000\n";
        assert_eq!(gauge(page, "jobvisor_job_supervisors"), Some(10.0));
        assert_eq!(
            gauge(page, "jobvisor_jobs_waiting_for_workers"),
            Some(10_000.0)
        );
        assert_eq!(gauge(page, "jobvisor_jobs"), None);
    }
}

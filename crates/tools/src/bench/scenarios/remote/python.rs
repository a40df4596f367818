//! `bench python-worker`: a worker process of the Python library
//! (`clients/python`, `import jobvisor`) running `crates/tools/python/
//! noop_worker.py`, measured like the Rust worker process:
//!
//! - throughput: the same job of no-op items (`sleep`, 0 ms in one step)
//!   run by the server's own workers and by one Python worker process with
//!   as many slots as the job's concurrency (a plain handler returning
//!   `b""`), each on a fresh server, timed like `remote-throughput`;
//! - stopping latency: on an idle server, a job of one item held by the
//!   Python handler (it waits on `item.stopping`); PauseJob(IMMEDIATE) and
//!   CancelJob → the moment the handler sees `stopping` set. The handler
//!   prints `time.monotonic_ns()` then; the bench reads CLOCK_MONOTONIC
//!   (the same clock, across processes) just before each call.
//!
//! The worker runs with `PYTHONPATH=<repo>/clients/python/src`; the
//! repository is `--repo` (or `JOBVISOR_REPO`), by default the one this
//! binary was built from.

use super::{EXECUTOR, WorkerProcess, throughput::Run};
use crate::bench::{Client, Env, Setup, SleepJob, Summary, calls::wait_job, header, met, row};
use anyhow::Context as _;
use jobvisor::pb;
use serde::Serialize;
use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

#[derive(Debug, Clone, clap::Args)]
pub struct PythonWorkerOptions {
    /// Items of the throughput job.
    #[arg(long, default_value_t = 20_000)]
    pub items: u32,
    /// The job's concurrency, and the Python worker's slots.
    #[arg(long, default_value_t = 16)]
    pub concurrency: u32,
    /// Rounds of the stopping latency (a job each: a pause and a cancel).
    #[arg(long, default_value_t = 50)]
    pub rounds: u32,
    /// The repository whose `clients/python/src` and
    /// `crates/tools/python/noop_worker.py` are used (default: the one this
    /// binary was built from).
    #[arg(long, env = "JOBVISOR_REPO")]
    pub repo: Option<PathBuf>,
    /// The Python interpreter (3.10 or later, with grpcio and protobuf).
    #[arg(long, default_value = "python3")]
    pub python: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct PythonWorker {
    /// The throughput job: its items and concurrency (the worker's slots).
    pub items: u32,
    pub concurrency: u32,
    /// The job run by the server's own workers.
    pub in_process: Run,
    /// The job run by the Python worker process.
    pub python: Run,
    /// python ÷ in-process, of the rates after StartJob, and its target.
    pub ratio: f64,
    pub target_ratio: f64,
    pub throughput_met: bool,
    /// Rounds of the stopping latency.
    pub rounds: u32,
    /// PauseJob(IMMEDIATE) call → `item.stopping` seen set in the handler.
    pub pause_to_stopping: Summary,
    /// CancelJob call → `item.stopping` seen set in the handler.
    pub cancel_to_stopping: Summary,
    pub target_stopping_p99_ms: f64,
    /// Both p99s within the target.
    pub stopping_met: bool,
}

const TARGET_RATIO: f64 = 0.5;
const TARGET_STOPPING_MS: f64 = 25.0;
const GAP: Duration = Duration::from_millis(10);
const WITHIN: Duration = Duration::from_secs(10);

impl PythonWorker {
    pub fn human(&self) -> Vec<String> {
        let line = |label: &str, r: &Run| {
            format!(
                "  {label:<12} start {:.3}s, run {:.3}s: {:.0} items/s after StartJob ({:.0} end to end); server cpu {:.2}s, worker cpu {}, {} commits",
                r.start_seconds,
                r.run_seconds,
                r.run_items_per_second,
                r.items_per_second,
                r.server_cpu_seconds,
                r.worker_cpu_seconds
                    .map(|s| format!("{s:.2}s"))
                    .unwrap_or_else(|| "-".into()),
                r.commits,
            )
        };
        vec![
            format!(
                "python-worker: {} no-op items, concurrency {}; one Python worker process with {} slots against the server's own workers",
                self.items, self.concurrency, self.concurrency
            ),
            line("in-process", &self.in_process),
            line("python", &self.python),
            format!(
                "  target: python ≥ {:.0}% of in-process: {} ({:.1}%)",
                self.target_ratio * 100.0,
                met(self.throughput_met),
                self.ratio * 100.0
            ),
            header(&format!(
                "call → item.stopping seen in the Python handler ({} rounds, idle server, jobs of 1 item)",
                self.rounds
            )),
            row("PauseJob(IMMEDIATE) → stopping", &self.pause_to_stopping),
            row("CancelJob → stopping", &self.cancel_to_stopping),
            format!(
                "  target: p99 ≤ {TARGET_STOPPING_MS} ms: {} (pause {:.2}, cancel {:.2} ms)",
                met(self.stopping_met),
                self.pause_to_stopping.p99_ms,
                self.cancel_to_stopping.p99_ms
            ),
        ]
    }
}

pub async fn python(setup: &Setup, opts: &PythonWorkerOptions) -> anyhow::Result<PythonWorker> {
    anyhow::ensure!(
        (1..=1024).contains(&opts.concurrency),
        "--concurrency must be from 1 to 1024 (a worker's slots), got {}",
        opts.concurrency
    );
    anyhow::ensure!(opts.rounds > 0, "--rounds must be at least 1");
    let repo = opts
        .repo
        .clone()
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../.."));
    let script = repo.join("crates/tools/python/noop_worker.py");
    let library = repo.join("clients/python/src");
    anyhow::ensure!(
        script.is_file() && library.join("jobvisor").is_dir(),
        "{} has no crates/tools/python/noop_worker.py or clients/python/src/jobvisor: pass the repository with --repo (or JOBVISOR_REPO)",
        repo.display()
    );
    let python = opts.python.clone();
    let slots = opts.concurrency;
    let command = move |slots: u32| {
        let (python, script, library) = (python.clone(), script.clone(), library.clone());
        move |addr: SocketAddr| {
            let mut command = tokio::process::Command::new(&python);
            command
                .arg(&script)
                .arg(addr.to_string())
                .arg(EXECUTOR)
                .args(["--slots", &slots.to_string()])
                .env("PYTHONPATH", &library)
                .env("PYTHONUNBUFFERED", "1");
            Ok(command)
        }
    };

    let job = SleepJob::new("python-worker", opts.items, opts.concurrency, 0, 1);
    setup.note("throughput: in the server");
    let in_process = super::throughput::run(setup, &job, None).await?;
    setup.note("throughput: in the Python worker");
    let python = super::throughput::run(setup, &job, Some(&command(slots))).await?;
    let ratio = python.run_items_per_second / in_process.run_items_per_second;

    setup.note("stopping latency");
    let env = Env::start_setup(setup, &["--remote-executor", EXECUTOR], false).await?;
    let result = stopping(setup, &env, opts.rounds, &command(1)).await;
    env.finish().await;
    let (pause, cancel) = result?;
    let pause_to_stopping = Summary::of_ms(pause);
    let cancel_to_stopping = Summary::of_ms(cancel);
    Ok(PythonWorker {
        items: opts.items,
        concurrency: opts.concurrency,
        in_process,
        python,
        ratio,
        target_ratio: TARGET_RATIO,
        throughput_met: ratio >= TARGET_RATIO,
        rounds: opts.rounds,
        stopping_met: pause_to_stopping.p99_ms.max(cancel_to_stopping.p99_ms) <= TARGET_STOPPING_MS,
        pause_to_stopping,
        cancel_to_stopping,
        target_stopping_p99_ms: TARGET_STOPPING_MS,
    })
}

/// CLOCK_MONOTONIC in nanoseconds: what Python's `time.monotonic_ns()`
/// reads on Linux (`Instant` reads it too, but does not show it).
fn monotonic_ns() -> i128 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    i128::from(t.tv_sec) * 1_000_000_000 + i128::from(t.tv_nsec)
}

/// The rounds of the stopping latency with a Python worker of one slot:
/// the milliseconds of each pause and each cancel.
async fn stopping(
    setup: &Setup,
    env: &Env,
    rounds: u32,
    command: &super::WorkerCommand,
) -> anyhow::Result<(Vec<f64>, Vec<f64>)> {
    let mut client = env.client().await?;
    let mut worker = WorkerProcess::spawn(command(env.spec.addr)?).await?;
    // A job whose item the Python handler holds until it is told to stop.
    let mut request = SleepJob::new("python-stopping", 1, 1, 0, 1)
        .on(EXECUTOR)
        .request();
    request.params.insert("hold".into(), "1".into());
    let (mut pause, mut cancel) = (Vec::new(), Vec::new());
    for n in 0..rounds {
        if n > 0 && n % 10 == 0 {
            setup.note(format!("round {n} of {rounds}"));
        }
        let id = client.start_job(request.clone()).await?.into_inner().id;
        round(&mut client, &mut worker, &id, &mut pause, &mut cancel)
            .await
            .with_context(|| format!("round {} (job {id})", n + 1))?;
    }
    worker.stop(WITHIN).await?;
    Ok((pause, cancel))
}

async fn round(
    client: &mut Client,
    worker: &mut WorkerProcess,
    id: &str,
    pause: &mut Vec<f64>,
    cancel: &mut Vec<f64>,
) -> anyhow::Result<()> {
    started(worker, id).await?;
    tokio::time::sleep(GAP).await;
    let asked = monotonic_ns();
    client
        .pause_job(pb::PauseJobRequest {
            job_id: id.into(),
            mode: pb::PauseMode::Immediate as i32,
            reason: "bench".into(),
            ..Default::default()
        })
        .await?;
    pause.push(stopped(worker, "pause", asked).await?);
    wait_job(client, id, WITHIN, |j| {
        j.state == pb::JobState::Paused as i32
    })
    .await?;

    client
        .resume_job(pb::ResumeJobRequest {
            job_id: id.into(),
            ..Default::default()
        })
        .await?;
    started(worker, id).await?;
    tokio::time::sleep(GAP).await;
    let asked = monotonic_ns();
    client
        .cancel_job(pb::CancelJobRequest {
            job_id: id.into(),
            reason: "bench".into(),
            ..Default::default()
        })
        .await?;
    cancel.push(stopped(worker, "cancel", asked).await?);
    wait_job(client, id, WITHIN, |j| {
        j.state == pb::JobState::Cancelled as i32
    })
    .await?;
    Ok(())
}

/// Waits for the worker's `started <id>`.
async fn started(worker: &mut WorkerProcess, id: &str) -> anyhow::Result<()> {
    let line = worker.line(WITHIN).await?;
    anyhow::ensure!(
        line == format!("started {id}"),
        "expected the worker to start an item of {id}, it said {line:?}"
    );
    Ok(())
}

/// Waits for the worker's `stopping <ns> <reason>`: the milliseconds from
/// `asked` (CLOCK_MONOTONIC, ns) to it.
async fn stopped(worker: &mut WorkerProcess, reason: &str, asked: i128) -> anyhow::Result<f64> {
    let line = worker.line(WITHIN).await?;
    let at = match line.split(' ').collect::<Vec<_>>()[..] {
        ["stopping", at, r] if r == reason => at
            .parse::<i128>()
            .with_context(|| format!("the worker's time in {line:?}"))?,
        _ => anyhow::bail!("expected the worker to say `stopping <ns> {reason}`, it said {line:?}"),
    };
    Ok((at - asked) as f64 / 1e6)
}

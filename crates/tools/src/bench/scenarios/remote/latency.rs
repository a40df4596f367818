//! `bench remote-latency`: on an idle server, how soon a worker hears of
//! what concerns it: the assignment of a new job's item, and the
//! interrupt of the item it holds when the job is paused (IMMEDIATE) or
//! cancelled. The worker is a [`RawWorker`] with one slot in this process,
//! so each arrival is timed where the message is read; each call is made
//! on a client connection of its own, in a task of its own, and timed from
//! just before it.
//!
//! One round, on a job of one item (concurrency 1):
//! StartJob → assignment; PauseJob(IMMEDIATE) → PAUSE interrupt; the
//! worker reports the item stopped; once PAUSED, ResumeJob → assignment
//! (again); CancelJob → CANCEL interrupt; stopped; once CANCELLED, the
//! next round. A gap of 10 ms precedes every timed call.

use super::{EXECUTOR, RawWorker};
use crate::bench::{Client, Env, Setup, SleepJob, Summary, calls::wait_job, header, met, row};
use anyhow::Context as _;
use jobvisor::pb;
use serde::Serialize;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, clap::Args)]
pub struct RemoteLatencyOptions {
    /// Rounds (a job each): one sample of every figure per round.
    #[arg(long, default_value_t = 200)]
    pub rounds: u32,
}

#[derive(Debug, Clone, Serialize)]
pub struct RemoteLatency {
    /// Rounds made.
    pub rounds: u32,
    /// StartJob call → the assignment read by the worker.
    pub start_to_assignment: Summary,
    /// StartJob call → its response.
    pub start_response: Summary,
    /// The difference of the two above: what the assignment takes after
    /// the job is stored (its supervisor's start, a seat, the claim's
    /// commit, the send); negative when it came before the response.
    pub start_response_to_assignment: Summary,
    /// PauseJob(IMMEDIATE) call → the PAUSE interrupt read by the worker.
    pub pause_to_interrupt: Summary,
    /// PauseJob(IMMEDIATE) call → its response.
    pub pause_response: Summary,
    /// ResumeJob call → the item's assignment read by the worker.
    pub resume_to_assignment: Summary,
    /// CancelJob call → the CANCEL interrupt read by the worker.
    pub cancel_to_interrupt: Summary,
    /// CancelJob call → its response.
    pub cancel_response: Summary,
    /// The targets: StartJob → assignment, and each call → interrupt.
    pub target_assignment_p99_ms: f64,
    pub target_interrupt_p99_ms: f64,
    /// StartJob → assignment's p99 within its target.
    pub assignment_met: bool,
    /// Both interrupts' p99 within theirs.
    pub interrupt_met: bool,
}

const TARGET_ASSIGNMENT_MS: f64 = 10.0;
const TARGET_INTERRUPT_MS: f64 = 20.0;
const GAP: Duration = Duration::from_millis(10);
const WITHIN: Duration = Duration::from_secs(10);

impl RemoteLatency {
    pub fn human(&self) -> Vec<String> {
        vec![
            format!(
                "remote-latency: {} rounds on an idle server, one worker (raw protocol, 1 slot), jobs of 1 item",
                self.rounds
            ),
            header("call → message read by the worker"),
            row("StartJob → assignment", &self.start_to_assignment),
            row("PauseJob(IMMEDIATE) → interrupt", &self.pause_to_interrupt),
            row("CancelJob → interrupt", &self.cancel_to_interrupt),
            row("ResumeJob → assignment", &self.resume_to_assignment),
            row("StartJob → response", &self.start_response),
            row(
                "  then → assignment (difference)",
                &self.start_response_to_assignment,
            ),
            row("PauseJob(IMMEDIATE) → response", &self.pause_response),
            row("CancelJob → response", &self.cancel_response),
            format!(
                "  targets: assignment p99 ≤ {TARGET_ASSIGNMENT_MS} ms: {} ({:.2} ms); interrupt p99 ≤ {TARGET_INTERRUPT_MS} ms: {} (pause {:.2}, cancel {:.2} ms)",
                met(self.assignment_met),
                self.start_to_assignment.p99_ms,
                met(self.interrupt_met),
                self.pause_to_interrupt.p99_ms,
                self.cancel_to_interrupt.p99_ms
            ),
        ]
    }
}

/// The samples of every round.
#[derive(Default)]
struct Samples {
    start_to_assignment: Vec<Duration>,
    start_response: Vec<Duration>,
    pause_to_interrupt: Vec<Duration>,
    pause_response: Vec<Duration>,
    resume_to_assignment: Vec<Duration>,
    cancel_to_interrupt: Vec<Duration>,
    cancel_response: Vec<Duration>,
}

pub async fn latency(setup: &Setup, opts: &RemoteLatencyOptions) -> anyhow::Result<RemoteLatency> {
    let env = Env::start_setup(setup, &["--remote-executor", EXECUTOR], false).await?;
    let result = run(setup, &env, opts).await;
    env.finish().await;
    let s = result?;
    let summary = |v: &[Duration]| Summary::of(v);
    let start_to_assignment = summary(&s.start_to_assignment);
    let pause_to_interrupt = summary(&s.pause_to_interrupt);
    let cancel_to_interrupt = summary(&s.cancel_to_interrupt);
    Ok(RemoteLatency {
        rounds: opts.rounds,
        assignment_met: start_to_assignment.p99_ms <= TARGET_ASSIGNMENT_MS,
        interrupt_met: pause_to_interrupt.p99_ms.max(cancel_to_interrupt.p99_ms)
            <= TARGET_INTERRUPT_MS,
        start_to_assignment,
        start_response: summary(&s.start_response),
        start_response_to_assignment: Summary::of_ms(
            s.start_to_assignment
                .iter()
                .zip(&s.start_response)
                .map(|(a, r)| (a.as_secs_f64() - r.as_secs_f64()) * 1000.0)
                .collect(),
        ),
        pause_to_interrupt,
        pause_response: summary(&s.pause_response),
        resume_to_assignment: summary(&s.resume_to_assignment),
        cancel_to_interrupt,
        cancel_response: summary(&s.cancel_response),
        target_assignment_p99_ms: TARGET_ASSIGNMENT_MS,
        target_interrupt_p99_ms: TARGET_INTERRUPT_MS,
    })
}

async fn run(setup: &Setup, env: &Env, opts: &RemoteLatencyOptions) -> anyhow::Result<Samples> {
    let mut client = env.client().await?;
    // The calls under measurement go on a connection of their own.
    let caller = env.client().await?;
    let mut worker = RawWorker::connect(env.spec.addr, 1).await?;
    // A job whose item would take a minute in the server (the raw worker
    // runs nothing: it answers as the round needs).
    let job = SleepJob::new("remote-latency", 1, 1, 60_000, 1).on(EXECUTOR);
    let mut s = Samples::default();
    for n in 0..opts.rounds {
        if n > 0 && n % 50 == 0 {
            setup.note(format!("round {n} of {}", opts.rounds));
        }
        round(&mut client, &caller, &mut worker, &job, &mut s)
            .await
            .with_context(|| format!("round {}", n + 1))?;
    }
    Ok(s)
}

async fn round(
    client: &mut Client,
    caller: &Client,
    worker: &mut RawWorker,
    job: &SleepJob,
    s: &mut Samples,
) -> anyhow::Result<()> {
    tokio::time::sleep(GAP).await;
    let asked = Instant::now();
    let call = timed(caller, {
        let request = job.request();
        move |mut c| async move { Ok(c.start_job(request).await?.into_inner().id) }
    });
    let (item, at) = worker.assignment(WITHIN).await?;
    s.start_to_assignment.push(at - asked);
    let (id, took) = call.await??;
    s.start_response.push(took);
    anyhow::ensure!(
        item.job_id == id,
        "assigned an item of {}, not of {id}",
        item.job_id
    );

    tokio::time::sleep(GAP).await;
    let asked = Instant::now();
    let call = timed(caller, {
        let id = id.clone();
        move |mut c| async move {
            c.pause_job(pb::PauseJobRequest {
                job_id: id,
                mode: pb::PauseMode::Immediate as i32,
                reason: "bench".into(),
                ..Default::default()
            })
            .await?;
            Ok(())
        }
    });
    let at = worker
        .interrupt(item.token, pb::InterruptReason::Pause, WITHIN)
        .await?;
    s.pause_to_interrupt.push(at - asked);
    s.pause_response.push(call.await??.1);
    worker.stopped(item.token)?;
    wait_job(client, &id, WITHIN, |j| {
        j.state == pb::JobState::Paused as i32
    })
    .await?;

    tokio::time::sleep(GAP).await;
    let asked = Instant::now();
    let call = timed(caller, {
        let id = id.clone();
        move |mut c| async move {
            c.resume_job(pb::ResumeJobRequest {
                job_id: id,
                ..Default::default()
            })
            .await?;
            Ok(())
        }
    });
    let (item, at) = worker.assignment(WITHIN).await?;
    s.resume_to_assignment.push(at - asked);
    call.await??;
    anyhow::ensure!(
        item.job_id == id,
        "assigned an item of {}, not of {id}",
        item.job_id
    );

    tokio::time::sleep(GAP).await;
    let asked = Instant::now();
    let call = timed(caller, {
        let id = id.clone();
        move |mut c| async move {
            c.cancel_job(pb::CancelJobRequest {
                job_id: id,
                reason: "bench".into(),
                ..Default::default()
            })
            .await?;
            Ok(())
        }
    });
    let at = worker
        .interrupt(item.token, pb::InterruptReason::Cancel, WITHIN)
        .await?;
    s.cancel_to_interrupt.push(at - asked);
    s.cancel_response.push(call.await??.1);
    worker.stopped(item.token)?;
    wait_job(client, &id, WITHIN, |j| {
        j.state == pb::JobState::Cancelled as i32
    })
    .await?;
    Ok(())
}

/// Makes a call in a task of its own (so the worker reads its stream
/// meanwhile): its answer and how long it took.
fn timed<T, F, Fut>(
    client: &Client,
    call: F,
) -> tokio::task::JoinHandle<anyhow::Result<(T, Duration)>>
where
    T: Send + 'static,
    F: FnOnce(Client) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = anyhow::Result<T>> + Send + 'static,
{
    let client = client.clone();
    tokio::spawn(async move {
        let asked = Instant::now();
        let answer = call(client).await?;
        Ok((answer, asked.elapsed()))
    })
}

//! Timed control calls, as the control-latency scenarios make them: rounds
//! of PauseJob (graceful) then ResumeJob, and CancelJob on small running
//! jobs with the time until the job is CANCELLED.

use super::{Client, Rng, SleepJob, Summary, row};
use anyhow::Context as _;
use jobvisor::pb;
use serde::Serialize;
use std::time::{Duration, Instant};

/// The pause between two calls of a round, so that each call meets a job
/// that has settled a little from the previous one.
const GAP: Duration = Duration::from_millis(10);

/// Call→response times of pause/resume rounds, in round order, and when
/// each pause was asked (since the first round began).
#[derive(Debug, Default)]
pub struct PauseResume {
    pub pause: Vec<Duration>,
    pub resume: Vec<Duration>,
    pub pause_asked: Vec<Duration>,
}

/// One slow call: its round (from 1), how long it took and when it was
/// asked, so that a report tells a tail at the start of a measurement (the
/// server or the database still settling) from one spread over it.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct SlowCall {
    pub round: u32,
    pub ms: f64,
    pub asked_at_s: f64,
}

/// Their summaries, for the report.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct PauseResumeSummary {
    pub pause: Summary,
    pub resume: Summary,
    /// The three slowest pauses, slowest first.
    pub slowest_pauses: [SlowCall; 3],
}

impl PauseResume {
    pub fn summary(&self) -> PauseResumeSummary {
        let mut slow: Vec<SlowCall> = self
            .pause
            .iter()
            .zip(&self.pause_asked)
            .enumerate()
            .map(|(i, (took, at))| SlowCall {
                round: i as u32 + 1,
                ms: took.as_secs_f64() * 1e3,
                asked_at_s: at.as_secs_f64(),
            })
            .collect();
        slow.sort_by(|a, b| b.ms.total_cmp(&a.ms));
        let mut slowest_pauses = [SlowCall::default(); 3];
        for (to, from) in slowest_pauses.iter_mut().zip(slow) {
            *to = from;
        }
        PauseResumeSummary {
            pause: Summary::of(&self.pause),
            resume: Summary::of(&self.resume),
            slowest_pauses,
        }
    }
}

/// `rounds` rounds of PauseJob (graceful) then ResumeJob, each on a job
/// picked at random from `jobs`, through `client`. PauseJob answers once
/// the job's supervisor has stopped claiming, so its call→response time is
/// also call→claims-stopped.
pub async fn pause_resume(
    client: &mut Client,
    jobs: &[String],
    rounds: u32,
    rng: &mut Rng,
) -> anyhow::Result<PauseResume> {
    anyhow::ensure!(!jobs.is_empty(), "no job to pause");
    let mut out = PauseResume::default();
    let began = Instant::now();
    for _ in 0..rounds {
        let id = &jobs[rng.below(jobs.len())];
        let asked = Instant::now();
        out.pause_asked.push(asked - began);
        let paused = client
            .pause_job(pb::PauseJobRequest {
                job_id: id.clone(),
                mode: pb::PauseMode::Graceful as i32,
                reason: "bench".into(),
                ..Default::default()
            })
            .await
            .with_context(|| format!("PauseJob {id}"))?
            .into_inner();
        out.pause.push(asked.elapsed());
        anyhow::ensure!(
            matches!(
                pb::JobState::try_from(paused.state),
                Ok(pb::JobState::Pausing | pb::JobState::Paused)
            ),
            "PauseJob {id} left the job {:?}",
            pb::JobState::try_from(paused.state)
        );
        tokio::time::sleep(GAP).await;
        let asked = Instant::now();
        let resumed = client
            .resume_job(pb::ResumeJobRequest {
                job_id: id.clone(),
                ..Default::default()
            })
            .await
            .with_context(|| format!("ResumeJob {id}"))?
            .into_inner();
        out.resume.push(asked.elapsed());
        anyhow::ensure!(
            resumed.state == pb::JobState::Running as i32,
            "ResumeJob {id} left the job {:?}",
            pb::JobState::try_from(resumed.state)
        );
        tokio::time::sleep(GAP).await;
    }
    Ok(out)
}

/// Call→response and call→CANCELLED times of cancels.
#[derive(Debug, Default)]
pub struct Cancels {
    pub response: Vec<Duration>,
    pub effect: Vec<Duration>,
}

#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct CancelSummary {
    pub response: Summary,
    /// Until the CANCELLED event arrived on a WatchJob stream opened
    /// before the call (every worker stopped, the transition committed,
    /// and the stream's delivery).
    pub effect: Summary,
}

impl Cancels {
    pub fn summary(&self) -> CancelSummary {
        CancelSummary {
            response: Summary::of(&self.response),
            effect: Summary::of(&self.effect),
        }
    }
}

/// `rounds` times, one after the other: starts `victim`, waits until an
/// item of it runs, opens a WatchJob stream, cancels the job and times the
/// answer and the arrival of the CANCELLED event.
pub async fn cancel_victims(
    client: &mut Client,
    victim: &SleepJob,
    rounds: u32,
) -> anyhow::Result<Cancels> {
    let mut out = Cancels::default();
    for _ in 0..rounds {
        let id = victim.start(client).await?.id;
        let job = wait_job(client, &id, Duration::from_secs(30), |j| {
            j.counts.as_ref().is_some_and(|c| c.running > 0)
        })
        .await?;
        let mut stream = client
            .watch_job(pb::WatchJobRequest {
                job_id: id.clone(),
                from_sequence: job.last_sequence,
                window: None,
            })
            .await?
            .into_inner();
        // The snapshot: the stream is live.
        stream
            .message()
            .await?
            .context("the watch stream ended at once")?;
        let asked = Instant::now();
        client
            .cancel_job(pb::CancelJobRequest {
                job_id: id.clone(),
                reason: "bench".into(),
                ..Default::default()
            })
            .await
            .with_context(|| format!("CancelJob {id}"))?;
        out.response.push(asked.elapsed());
        let effect = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(event) = stream.message().await? {
                if let Some(pb::job_event::Kind::StateChanged(c)) = &event.kind
                    && c.to == pb::JobState::Cancelled as i32
                {
                    return anyhow::Ok(asked.elapsed());
                }
            }
            anyhow::bail!("the watch stream of {id} ended before CANCELLED")
        })
        .await
        .with_context(|| format!("job {id} was not CANCELLED within 30 s"))??;
        out.effect.push(effect);
    }
    Ok(out)
}

/// Polls GetJob every 2 ms until `ok` holds for the job.
pub async fn wait_job(
    client: &mut Client,
    id: &str,
    timeout: Duration,
    ok: impl Fn(&pb::Job) -> bool,
) -> anyhow::Result<pb::Job> {
    super::poll_job(client, id, Duration::from_millis(2), timeout, ok).await
}

/// The table rows of a measurement of the calls.
pub fn rows(label: &str, pause_resume: &PauseResumeSummary, cancel: &CancelSummary) -> Vec<String> {
    let slowest: Vec<String> = pause_resume
        .slowest_pauses
        .iter()
        .filter(|s| s.round > 0)
        .map(|s| {
            format!(
                "round {} ({:.1} s in): {:.1} ms",
                s.round, s.asked_at_s, s.ms
            )
        })
        .collect();
    vec![
        row(
            &format!("{label} pause (= claims stopped)"),
            &pause_resume.pause,
        ),
        format!("    slowest pauses: {}", slowest.join("; ")),
        row(&format!("{label} resume"), &pause_resume.resume),
        row(&format!("{label} cancel response"), &cancel.response),
        row(
            &format!("{label} cancel effect (CANCELLED on stream)"),
            &cancel.effect,
        ),
    ]
}

/// The worst client-side p99 of a measurement of the calls.
pub fn worst_p99(pause_resume: &PauseResumeSummary, cancel: &CancelSummary) -> f64 {
    [
        pause_resume.pause.p99_ms,
        pause_resume.resume.p99_ms,
        cancel.response.p99_ms,
        cancel.effect.p99_ms,
    ]
    .into_iter()
    .fold(0.0, f64::max)
}

/// Cancels a job, ignoring the outcome (clean-up).
pub async fn cancel_quietly(client: &mut Client, id: &str) {
    let _ = client
        .cancel_job(pb::CancelJobRequest {
            job_id: id.into(),
            reason: "bench over".into(),
            ..Default::default()
        })
        .await;
}

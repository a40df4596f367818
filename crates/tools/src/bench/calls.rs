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

/// Call→response times of pause/resume rounds.
#[derive(Debug, Default)]
pub struct PauseResume {
    pub pause: Vec<Duration>,
    pub resume: Vec<Duration>,
}

/// Their summaries, for the report.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct PauseResumeSummary {
    pub pause: Summary,
    pub resume: Summary,
}

impl PauseResume {
    pub fn summary(&self) -> PauseResumeSummary {
        PauseResumeSummary {
            pause: Summary::of(&self.pause),
            resume: Summary::of(&self.resume),
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
    for _ in 0..rounds {
        let id = &jobs[rng.below(jobs.len())];
        let asked = Instant::now();
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
    vec![
        row(
            &format!("{label} pause (= claims stopped)"),
            &pause_resume.pause,
        ),
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

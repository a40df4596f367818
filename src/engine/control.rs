//! The control calls a client may make, and what a committed one counts
//! in the metrics.

use crate::domain::{Command, Job, JobState, PauseMode};
use std::time::Duration;

/// A control call a client may make.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    Pause(Pause),
    Resume,
    Cancel,
    RetryFailed,
}

/// What RunJob did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunOutcome {
    Started,
    Resumed,
    AlreadyRunning,
}

/// How to pause.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pause {
    pub mode: PauseMode,
    /// A graceful pause turns immediate after this long.
    pub drain_timeout: Option<Duration>,
    /// The job resumes by itself at this time (kept across restarts).
    pub resume_at: Option<chrono::DateTime<chrono::Utc>>,
}

impl Control {
    /// A plain pause in `mode`.
    pub fn pause(mode: PauseMode) -> Control {
        Control::Pause(Pause {
            mode,
            ..Pause::default()
        })
    }

    pub(super) fn command(self) -> Command {
        match self {
            Control::Pause(pause) => Command::Pause(pause.mode),
            Control::Resume => Command::Resume,
            Control::Cancel => Command::Cancel,
            Control::RetryFailed => Command::RetryFailed,
        }
    }
}

/// Most jobs one ControlJobs call may touch.
pub const BULK_LIMIT: usize = 10_000;

/// Counts a committed control call and how long it took to take effect.
pub(super) fn control_metrics(from: JobState, job: &Job, asked: std::time::Instant) {
    use crate::metrics::{control_effect, job_control, job_finished, pause_lasted};
    match job.state {
        // The supervisor has acknowledged: claims have stopped.
        JobState::Pausing => {
            job_control("jobvisor_jobs_paused_total");
            control_effect("pause", asked.elapsed());
        }
        JobState::Running if matches!(from, JobState::Pausing | JobState::Paused) => {
            job_control("jobvisor_jobs_resumed_total");
            if let Some(pause) = job.pauses.last()
                && let (Some(resumed), requested) = (pause.resumed_at, pause.requested_at)
            {
                pause_lasted((resumed - requested).to_std().unwrap_or_default());
            }
        }
        JobState::Cancelling => job_control("jobvisor_jobs_cancelled_total"),
        // Cancelled at once (it was paused): nothing was running.
        JobState::Cancelled => {
            job_control("jobvisor_jobs_cancelled_total");
            control_effect("cancel", asked.elapsed());
            job_finished("cancelled");
        }
        _ => {}
    }
}

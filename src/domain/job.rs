//! What a job and its items look like to every layer: plain data read
//! from the store and turned into API messages at the edge.

use super::{
    ids::JobId,
    machine::{Command, allows},
    state::{ItemState, JobState, PauseMode},
};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// How a job protects itself: a budget of running time and an error
/// breaker that pauses it instead of burning through its items.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct JobPolicy {
    /// Fail the job once it has run this long; paused time is not counted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Pause the job after this many failed attempts in a row.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pause_after_failures: Option<u32>,
    /// Pause the job when at least this share (0 to 1) of the last
    /// `failure_window` attempts failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pause_on_failure_ratio: Option<f64>,
    /// The attempts `pause_on_failure_ratio` looks at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_window: Option<u32>,
}

impl JobPolicy {
    /// The attempts the failure ratio is measured over.
    pub fn window(&self) -> u32 {
        self.failure_window.unwrap_or(20)
    }
}

/// How many items of a job are in each state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ItemCounts {
    pub total: u64,
    pub running: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub cancelled: u64,
}

impl ItemCounts {
    /// Items waiting to be claimed: every item not running and not ended.
    pub fn pending(&self) -> u64 {
        self.total
            .saturating_sub(self.running + self.succeeded + self.failed + self.cancelled)
    }

    /// Items that reached a terminal state.
    pub fn ended(&self) -> u64 {
        self.succeeded + self.failed + self.cancelled
    }
}

/// One pause of a job, from request to resume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PauseRecord {
    pub mode: PauseMode,
    pub reason: Option<String>,
    pub requested_by: Option<String>,
    pub request_id: Option<String>,
    pub requested_at: DateTime<Utc>,
    /// When the job reached PAUSED.
    pub paused_at: Option<DateTime<Utc>>,
    pub resumed_at: Option<DateTime<Utc>>,
    /// When the job resumes by itself, if the pause asked for it.
    pub resume_at: Option<DateTime<Utc>>,
}

/// A job as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    pub id: JobId,
    pub name: String,
    pub executor: String,
    pub state: JobState,
    pub counts: ItemCounts,
    pub concurrency: u32,
    pub max_attempts: u32,
    pub params: BTreeMap<String, String>,
    pub labels: BTreeMap<String, String>,
    pub policy: JobPolicy,
    pub request_id: Option<String>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub updated_at: DateTime<Utc>,
    pub ended_at: Option<DateTime<Utc>>,
    pub pauses: Vec<PauseRecord>,
    pub last_error: Option<String>,
    /// Sequence of the latest committed event.
    pub last_seq: u64,
}

impl Job {
    /// How long the job has been running, paused time not counted.
    pub fn active_time(&self, now: DateTime<Utc>) -> chrono::Duration {
        let started = self.started_at.unwrap_or(self.created_at);
        let end = self.ended_at.unwrap_or(now);
        let paused: chrono::Duration = self
            .pauses
            .iter()
            .map(|p| p.resumed_at.unwrap_or(end) - p.requested_at)
            .sum();
        (end - started - paused).max(chrono::Duration::zero())
    }

    pub fn can_pause(&self) -> bool {
        allows(self.state, Command::Pause(PauseMode::Graceful))
    }
    pub fn can_resume(&self) -> bool {
        allows(self.state, Command::Resume)
    }
    pub fn can_cancel(&self) -> bool {
        allows(self.state, Command::Cancel)
    }
}

/// One work item as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    pub index: u32,
    pub payload: String,
    pub state: ItemState,
    pub attempts: u32,
    pub last_error: Option<String>,
    pub checkpoint: Option<Vec<u8>>,
    /// What the executor reported for a succeeded item.
    pub result: Option<String>,
    pub updated_at: Option<DateTime<Utc>>,
}

/// Who asked for a control call, and why: recorded with the event it
/// causes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Provenance {
    pub reason: Option<String>,
    pub requested_by: Option<String>,
    pub request_id: Option<String>,
}

impl Provenance {
    /// A change the server made by itself, with why.
    pub fn system(reason: impl Into<String>) -> Self {
        Provenance {
            reason: Some(reason.into()),
            requested_by: None,
            request_id: None,
        }
    }
}

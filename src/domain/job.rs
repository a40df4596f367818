//! What a job and its items look like to every layer: plain data read
//! from the store and turned into API messages at the edge.

use super::{
    ids::JobId,
    machine::{Command, allows},
    state::{ItemState, JobState, PauseMode},
};
use chrono::{DateTime, Utc};
use std::collections::BTreeMap;

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

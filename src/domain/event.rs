//! The events of a job's log: every committed change, with a per-job
//! sequence. Stored as JSON, so adding a field is backward compatible.

use super::state::{JobState, PauseMode};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// What happened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EventBody {
    /// The job changed state. `from` is `None` for the job's creation.
    StateChanged {
        from: Option<JobState>,
        to: JobState,
        reason: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        requested_by: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        request_id: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pause_mode: Option<PauseMode>,
    },
    /// An attempt of an item failed.
    ItemFailed {
        index: u32,
        attempt: u32,
        error: String,
        will_retry: bool,
        /// A retry that waits: the time before which it is not claimed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retry_at: Option<DateTime<Utc>>,
    },
    /// The job's concurrency was changed.
    ConcurrencyChanged {
        from: u32,
        to: u32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        requested_by: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        request_id: Option<String>,
    },
    /// The job's rate limit on item starts was changed.
    RateLimitChanged {
        from: super::job::RateLimit,
        to: super::job::RateLimit,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        requested_by: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        request_id: Option<String>,
    },
    /// A worker died and was restarted.
    WorkerRestarted {
        index: u32,
        reason: String,
        restarts_in_window: u32,
    },
    /// Items were added to the job (AddItems), at indexes `first` on; the
    /// page may also have closed the job.
    ItemsAdded {
        first: u32,
        count: u32,
        closed: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        requested_by: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        request_id: Option<String>,
    },
    /// Chosen items were cancelled (CancelItems): `count` of them, from
    /// `first` to `last`.
    ItemsCancelled {
        count: u32,
        first: u32,
        last: u32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        requested_by: Option<String>,
    },
    /// A replica took the job over (multi-replica mode).
    OwnerChanged {
        owner: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        previous_owner: Option<String>,
        released_items: u64,
    },
}

impl EventBody {
    /// The short name stored in the `kind` column, for querying the log.
    pub fn kind(&self) -> &'static str {
        match self {
            EventBody::StateChanged { .. } => "state_changed",
            EventBody::ItemFailed { .. } => "item_failed",
            EventBody::WorkerRestarted { .. } => "worker_restarted",
            EventBody::ConcurrencyChanged { .. } => "concurrency_changed",
            EventBody::OwnerChanged { .. } => "owner_changed",
            EventBody::RateLimitChanged { .. } => "rate_limit_changed",
            EventBody::ItemsAdded { .. } => "items_added",
            EventBody::ItemsCancelled { .. } => "items_cancelled",
        }
    }

    /// Whether this event ends the job's stream: a move to a terminal state.
    pub fn is_terminal(&self) -> bool {
        matches!(self, EventBody::StateChanged { to, .. } if to.is_terminal())
    }
}

/// A committed event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobEvent {
    pub seq: u64,
    pub at: DateTime<Utc>,
    pub body: EventBody,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_round_trip_through_json() {
        let e = EventBody::StateChanged {
            from: Some(JobState::Running),
            to: JobState::Pausing,
            reason: Some("maintenance".into()),
            requested_by: None,
            request_id: Some("r1".into()),
            pause_mode: Some(PauseMode::Immediate),
        };
        let json = serde_json::to_string(&e).unwrap();
        assert!(json.contains(r#""type":"state_changed""#), "{json}");
        assert_eq!(serde_json::from_str::<EventBody>(&json).unwrap(), e);
        assert!(!e.is_terminal());
        let done = EventBody::StateChanged {
            from: Some(JobState::Running),
            to: JobState::Succeeded,
            reason: None,
            requested_by: None,
            request_id: None,
            pause_mode: None,
        };
        assert!(done.is_terminal());
        let cancelled = EventBody::ItemsCancelled {
            count: 2,
            first: 4,
            last: 9,
            reason: Some("not needed".into()),
            requested_by: None,
        };
        let json = serde_json::to_string(&cancelled).unwrap();
        assert!(json.contains(r#""type":"items_cancelled""#), "{json}");
        assert_eq!(cancelled.kind(), "items_cancelled");
        assert_eq!(serde_json::from_str::<EventBody>(&json).unwrap(), cancelled);
        assert!(!cancelled.is_terminal());
    }
}

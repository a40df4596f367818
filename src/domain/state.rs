//! The states a job, an item and a pause can be in, and their stable names
//! (the spelling stored in the database and shown in logs).

use serde::{Deserialize, Serialize};
use std::fmt;

/// Where a job is in its life cycle (docs/DESIGN.md, States).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    Running,
    Pausing,
    Paused,
    Cancelling,
    Cancelled,
    Succeeded,
    Failed,
}

impl JobState {
    /// Every state, for exhaustive tests and for listing.
    pub const ALL: [JobState; 7] = [
        JobState::Running,
        JobState::Pausing,
        JobState::Paused,
        JobState::Cancelling,
        JobState::Cancelled,
        JobState::Succeeded,
        JobState::Failed,
    ];

    /// The states a job can never leave (except through an explicit retry).
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobState::Cancelled | JobState::Succeeded | JobState::Failed
        )
    }

    /// The name stored in the `jobs.state` column.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Running => "running",
            JobState::Pausing => "pausing",
            JobState::Paused => "paused",
            JobState::Cancelling => "cancelling",
            JobState::Cancelled => "cancelled",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
        }
    }

    /// Parses a stored name; `None` for anything else.
    pub fn parse(name: &str) -> Option<JobState> {
        JobState::ALL.into_iter().find(|s| s.as_str() == name)
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where an item is in its life cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ItemState {
    Pending,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl ItemState {
    pub const ALL: [ItemState; 5] = [
        ItemState::Pending,
        ItemState::Running,
        ItemState::Succeeded,
        ItemState::Failed,
        ItemState::Cancelled,
    ];

    /// The code stored in the `items.state` column (a small integer keeps the
    /// hot table narrow).
    pub fn code(self) -> i16 {
        match self {
            ItemState::Pending => 0,
            ItemState::Running => 1,
            ItemState::Succeeded => 2,
            ItemState::Failed => 3,
            ItemState::Cancelled => 4,
        }
    }

    pub fn from_code(code: i16) -> Option<ItemState> {
        ItemState::ALL.into_iter().find(|s| s.code() == code)
    }

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            ItemState::Succeeded | ItemState::Failed | ItemState::Cancelled
        )
    }
}

/// How a pause treats the items already running.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum PauseMode {
    /// Items in flight finish; no new item starts.
    #[default]
    Graceful,
    /// Items in flight stop at their next checkpoint and go back to pending.
    Immediate,
}

impl PauseMode {
    pub fn as_str(self) -> &'static str {
        match self {
            PauseMode::Graceful => "graceful",
            PauseMode::Immediate => "immediate",
        }
    }

    pub fn parse(name: &str) -> Option<PauseMode> {
        match name {
            "graceful" => Some(PauseMode::Graceful),
            "immediate" => Some(PauseMode::Immediate),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_state_names_round_trip() {
        for s in JobState::ALL {
            assert_eq!(JobState::parse(s.as_str()), Some(s));
        }
        assert_eq!(JobState::parse("RUNNING"), None);
    }

    #[test]
    fn item_state_codes_round_trip() {
        for s in ItemState::ALL {
            assert_eq!(ItemState::from_code(s.code()), Some(s));
        }
        assert_eq!(ItemState::from_code(9), None);
    }
}

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
use std::time::Duration;

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
    /// How long an item waits before its first retry; each further retry
    /// waits twice as long as the one before (none: retried at once).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_delay_ms: Option<u64>,
    /// The longest wait before a retry (none: [`DEFAULT_RETRY_DELAY_MAX`],
    /// or `retry_delay_ms` if that is longer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_delay_max_ms: Option<u64>,
    /// Start at most this many items (retries included) per
    /// `rate_period_ms`, spaced evenly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<u32>,
    /// The period of `rate_limit` (none: [`DEFAULT_RATE_PERIOD`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_period_ms: Option<u64>,
}

/// The period of a job's rate limit when it does not say.
pub const DEFAULT_RATE_PERIOD: Duration = Duration::from_secs(1);

/// The longest period of a job's rate limit.
pub const MAX_RATE_PERIOD: Duration = Duration::from_secs(24 * 3600);

/// A job's rate limit on item starts: `limit` starts per `period_ms`
/// (none: no limit; no period: [`DEFAULT_RATE_PERIOD`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateLimit {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub period_ms: Option<u64>,
}

impl JobPolicy {
    /// The job's rate limit on item starts.
    pub fn rate(&self) -> RateLimit {
        RateLimit {
            limit: self.rate_limit,
            period_ms: self.rate_period_ms,
        }
    }

    pub fn set_rate(&mut self, rate: RateLimit) {
        self.rate_limit = rate.limit;
        self.rate_period_ms = rate.period_ms;
    }

    /// With a rate limit: the time between two item starts.
    pub fn start_interval(&self) -> Option<Duration> {
        let n = self.rate_limit.filter(|&n| n > 0)?;
        let period = self
            .rate_period_ms
            .map_or(DEFAULT_RATE_PERIOD, Duration::from_millis);
        Some((period / n).max(Duration::from_nanos(1)))
    }
}

/// The longest wait before a retry when the job does not say.
pub const DEFAULT_RETRY_DELAY_MAX: Duration = Duration::from_secs(3600);

/// The longest wait before a retry a job or an executor may ask for.
pub const MAX_RETRY_DELAY: Duration = Duration::from_secs(24 * 3600);

/// The most a retry's wait is lengthened at random, as a share of it.
pub const RETRY_JITTER: f64 = 0.2;

impl JobPolicy {
    /// The attempts the failure ratio is measured over.
    pub fn window(&self) -> u32 {
        self.failure_window.unwrap_or(20)
    }

    /// The waits between an item's attempts.
    pub fn backoff(&self) -> Backoff {
        Backoff {
            first_ms: self.retry_delay_ms.unwrap_or(0),
            max_ms: self.retry_delay_max_ms.unwrap_or(0),
        }
    }
}

/// The waits between an item's attempts, from a job's policy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Backoff {
    /// Before the first retry (0: retried at once).
    first_ms: u64,
    /// At most (0: [`DEFAULT_RETRY_DELAY_MAX`], or `first_ms` if longer).
    max_ms: u64,
}

impl Backoff {
    /// The first wait (zero: retried at once).
    pub fn first(&self) -> Duration {
        Duration::from_millis(self.first_ms)
    }

    /// The longest wait: the job's cap, or [`DEFAULT_RETRY_DELAY_MAX`] (the
    /// first wait if that is longer).
    pub fn cap(&self) -> Duration {
        match self.max_ms {
            0 => DEFAULT_RETRY_DELAY_MAX.max(self.first()),
            ms => Duration::from_millis(ms),
        }
    }

    /// How long an item waits after its attempt number `attempt` (from 1)
    /// failed, before it may be claimed again: the first delay doubled for
    /// each attempt after the first, at most the cap, then lengthened by
    /// `jitter` (0 to 1) times [`RETRY_JITTER`], so that items failing
    /// together do not all come back together.
    pub fn retry_after(&self, attempt: u32, jitter: f64) -> Duration {
        if self.first_ms == 0 {
            return Duration::ZERO;
        }
        let (first, max) = (self.first(), self.cap());
        let doublings = attempt.saturating_sub(1).min(31);
        let wait = first
            .checked_mul(1 << doublings)
            .map_or(max, |d| d.min(max));
        wait.mul_f64(1.0 + RETRY_JITTER * jitter.clamp(0.0, 1.0))
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
    /// Its name is unique among live exclusive jobs.
    pub exclusive: bool,
    /// It waits for more items and does not end until closed (AddItems
    /// with `close`).
    pub open: bool,
    /// The executor's own counters, summed over the succeeded items.
    pub counters: super::Counters,
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
    /// A succeeded item the executor skipped (it was done already): why.
    pub skip_reason: Option<String>,
    pub updated_at: Option<DateTime<Utc>>,
    /// A pending item waiting for its retry: the time before which it is
    /// not claimed.
    pub retry_at: Option<DateTime<Utc>>,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(delay: Option<u64>, max: Option<u64>) -> JobPolicy {
        JobPolicy {
            retry_delay_ms: delay,
            retry_delay_max_ms: max,
            ..JobPolicy::default()
        }
    }

    #[test]
    fn retries_wait_twice_as_long_each_time_up_to_the_cap() {
        let ms = Duration::from_millis;
        let p = policy(Some(100), Some(1000)).backoff();
        let waits: Vec<Duration> = (1..=6).map(|a| p.retry_after(a, 0.0)).collect();
        assert_eq!(
            waits,
            [ms(100), ms(200), ms(400), ms(800), ms(1000), ms(1000)]
        );
        // Jitter lengthens a wait by at most a fifth, never shortens it.
        assert_eq!(p.retry_after(1, 1.0), ms(120));
        assert_eq!(p.retry_after(1, 0.5), ms(110));
        assert_eq!(p.retry_after(6, 1.0), ms(1200));
        assert_eq!(p.retry_after(1, 7.0), ms(120));
        assert_eq!(p.retry_after(1, -1.0), ms(100));
        // No delay: at once, whatever the attempt.
        assert_eq!(
            policy(None, None).backoff().retry_after(5, 1.0),
            Duration::ZERO
        );
        // No cap given: an hour, or the first delay if longer.
        let p = policy(Some(1000), None).backoff();
        assert_eq!(p.retry_after(100, 0.0), DEFAULT_RETRY_DELAY_MAX);
        assert_eq!(p.retry_after(u32::MAX, 0.0), DEFAULT_RETRY_DELAY_MAX);
        let long = 2 * 3600 * 1000;
        let p = policy(Some(long), None).backoff();
        assert_eq!(p.retry_after(3, 0.0), ms(long));
    }
}

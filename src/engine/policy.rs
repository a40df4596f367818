//! A job's self-protection, as plain state the supervisor feeds: the error
//! breaker that pauses a job instead of letting it burn through its items,
//! the clock of its running time (which stops while it is paused), and the
//! pace of its item starts under a rate limit.

use crate::domain::JobPolicy;
use std::{
    collections::VecDeque,
    time::{Duration, Instant},
};

/// Counts failed attempts and says when to pause.
#[derive(Debug)]
pub struct Breaker {
    policy: JobPolicy,
    in_a_row: u32,
    /// The last `window` attempts, true for a failure.
    recent: VecDeque<bool>,
}

impl Breaker {
    pub fn new(policy: &JobPolicy) -> Breaker {
        Breaker {
            policy: policy.clone(),
            in_a_row: 0,
            recent: VecDeque::new(),
        }
    }

    /// Whether this breaker can trip at all.
    pub fn armed(&self) -> bool {
        self.policy.pause_after_failures.is_some() || self.policy.pause_on_failure_ratio.is_some()
    }

    /// Records an attempt; returns the reason to pause when it trips.
    pub fn record(&mut self, failed: bool, error: Option<&str>) -> Option<String> {
        if !self.armed() {
            return None;
        }
        self.in_a_row = if failed { self.in_a_row + 1 } else { 0 };
        let window = self.policy.window() as usize;
        self.recent.push_back(failed);
        while self.recent.len() > window {
            self.recent.pop_front();
        }
        let last = error
            .map(|e| format!(" (last: {})", e.lines().next().unwrap_or(e)))
            .unwrap_or_default();
        if let Some(n) = self.policy.pause_after_failures
            && self.in_a_row >= n
        {
            return Some(format!(
                "automatic pause: {n} failed attempts in a row{last}"
            ));
        }
        if let Some(ratio) = self.policy.pause_on_failure_ratio
            && failed
            && self.recent.len() == window
        {
            let failures = self.recent.iter().filter(|f| **f).count();
            if failures as f64 / window as f64 >= ratio {
                return Some(format!(
                    "automatic pause: {failures} of the last {window} attempts failed \
                     (limit {:.0}%){last}",
                    ratio * 100.0
                ));
            }
        }
        None
    }

    /// Forgets past attempts (on resume).
    pub fn reset(&mut self) {
        self.in_a_row = 0;
        self.recent.clear();
    }
}

/// How long a job has been running, paused time not counted.
#[derive(Debug, Clone, Copy)]
pub struct ActiveClock {
    before: Duration,
    since: Option<Instant>,
}

impl ActiveClock {
    /// A clock that has counted `so_far`, running now if `running`.
    pub fn new(so_far: Duration, running: bool) -> ActiveClock {
        ActiveClock {
            before: so_far,
            since: running.then(Instant::now),
        }
    }

    pub fn set_running(&mut self, running: bool) {
        match (self.since, running) {
            (None, true) => self.since = Some(Instant::now()),
            (Some(since), false) => {
                self.before += since.elapsed();
                self.since = None;
            }
            _ => {}
        }
    }

    pub fn elapsed(&self) -> Duration {
        self.before + self.since.map_or(Duration::ZERO, |s| s.elapsed())
    }
}

/// A job's rate limit on item starts (`JobPolicy::start_interval`): a
/// GCRA limiter (governor) that spaces starts evenly, with a burst of what
/// 20 ms allow (at least one), so that a fast rate is not held to one start
/// per claim's round trip. The supervisor takes starts from it before each
/// claim, so claimed items are items that may start now.
pub struct Pacer {
    limiter: governor::DefaultDirectRateLimiter,
    clock: governor::clock::DefaultClock,
}

/// Starts a rate limit lets through at once, at most.
const PACE_BURST: Duration = Duration::from_millis(20);

impl Pacer {
    /// The pacer of a job with a rate limit; none without one.
    pub fn new(policy: &JobPolicy) -> Option<Box<Pacer>> {
        let interval = policy.start_interval()?;
        let burst = (PACE_BURST.as_nanos() / interval.as_nanos().max(1)).clamp(1, 10_000) as u32;
        let quota = governor::Quota::with_period(interval)?
            .allow_burst(std::num::NonZeroU32::new(burst).unwrap_or(std::num::NonZeroU32::MIN));
        Some(Box::new(Pacer {
            limiter: governor::RateLimiter::direct(quota),
            clock: governor::clock::DefaultClock::default(),
        }))
    }

    /// Takes up to `want` (at least 1) starts: how many may start now, or
    /// how long until the next one may.
    pub fn take(&mut self, want: usize) -> Result<usize, Duration> {
        let mut granted = 0;
        while granted < want {
            match self.limiter.check() {
                Ok(()) => granted += 1,
                Err(_) if granted > 0 => break,
                Err(not_until) => {
                    use governor::clock::Clock as _;
                    return Err(not_until.wait_time_from(self.clock.now()));
                }
            }
        }
        Ok(granted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trips_after_failures_in_a_row_and_resets() {
        let mut b = Breaker::new(&JobPolicy {
            pause_after_failures: Some(3),
            ..JobPolicy::default()
        });
        assert_eq!(b.record(true, None), None);
        assert_eq!(b.record(false, None), None, "a success breaks the run");
        assert_eq!(b.record(true, None), None);
        assert_eq!(b.record(true, None), None);
        let why = b.record(true, Some("disk full\nmore")).unwrap();
        assert!(
            why.contains("3 failed attempts in a row (last: disk full)"),
            "{why}"
        );
        b.reset();
        assert_eq!(b.record(true, None), None);
    }

    #[test]
    fn trips_on_a_failure_ratio_over_a_full_window() {
        let mut b = Breaker::new(&JobPolicy {
            pause_on_failure_ratio: Some(0.5),
            failure_window: Some(6),
            ..JobPolicy::default()
        });
        // Not before the window is full.
        for f in [true, true, true] {
            assert_eq!(b.record(f, None), None);
        }
        assert_eq!(b.record(false, None), None);
        assert_eq!(b.record(false, None), None);
        let why = b.record(true, None).unwrap();
        assert!(why.contains("4 of the last 6 attempts failed"), "{why}");
    }

    #[test]
    fn an_unarmed_breaker_never_trips() {
        let mut b = Breaker::new(&JobPolicy::default());
        assert!(!b.armed());
        for _ in 0..100 {
            assert_eq!(b.record(true, None), None);
        }
    }

    #[test]
    fn the_clock_stops_while_paused() {
        let mut c = ActiveClock::new(Duration::from_secs(10), false);
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(c.elapsed(), Duration::from_secs(10));
        c.set_running(true);
        std::thread::sleep(Duration::from_millis(20));
        c.set_running(false);
        let after = c.elapsed();
        assert!(after >= Duration::from_millis(10_020));
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(c.elapsed(), after);
    }

    #[test]
    fn a_pacer_spaces_starts_and_lets_a_fast_rate_through_in_bursts() {
        let limited = |n, period_ms| JobPolicy {
            rate_limit: Some(n),
            rate_period_ms: Some(period_ms),
            ..JobPolicy::default()
        };
        assert!(Pacer::new(&JobPolicy::default()).is_none());
        // 10 a second: one at a time, the next about 100 ms later.
        let mut slow = Pacer::new(&limited(10, 1_000)).unwrap();
        assert_eq!(slow.take(5), Ok(1));
        let wait = slow.take(5).unwrap_err();
        assert!(
            wait > Duration::from_millis(50) && wait <= Duration::from_millis(100),
            "{wait:?}"
        );
        // 1,000 a second: 20 ms worth at once, then one per millisecond.
        let mut fast = Pacer::new(&limited(1_000, 1_000)).unwrap();
        assert_eq!(fast.take(50), Ok(20));
        assert!(fast.take(1).unwrap_err() <= Duration::from_millis(1));
    }
}

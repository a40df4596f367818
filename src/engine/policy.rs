//! A job's self-protection, as plain state the supervisor feeds: the error
//! breaker that pauses a job instead of letting it burn through its items,
//! and the clock of its running time (which stops while it is paused).

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
}

//! What the supervisor learns of items: a claim failed, an item ended
//! (the breaker counts it; a retry waits for its delay; an outcome not
//! stored fails the job), retries came due or were found waiting in the
//! store.

use super::{action::Action, state::Core};
use crate::{domain::JobState, engine::worker::Finished};
use std::time::{Duration, Instant};

impl Core {
    /// The claim out failed.
    pub fn claim_failed(&mut self, out: &mut Vec<Action>) {
        self.claims.failed();
        self.back_off(out);
    }

    /// A worker's item ended (its outcome committed, or not). Returns
    /// whether a worker waiting for an answer is held until the breaker's
    /// pause is committed.
    pub fn done(
        &mut self,
        index: u32,
        finished: &Finished,
        took: Duration,
        now: Instant,
        out: &mut Vec<Action>,
    ) -> bool {
        self.claims.item_time.observe(took);
        let tripped = match finished {
            Finished::Succeeded => self.breaker.record(false, None),
            Finished::Failed { error, .. } => self.breaker.record(true, Some(error)),
            _ => None,
        };
        if let Some(reason) = tripped
            && self.state == JobState::Running
            && self.auto_pause.is_none()
        {
            tracing::warn!(job_id = %self.job, %reason, "pausing the job");
            self.auto_pause = Some(reason);
        }
        match finished {
            // Failed for good (the worker said so, and the store agrees:
            // it fails an item the worker calls permanent): nothing goes
            // back to pending. Lowering the claims' bound to it would make
            // the next claim walk every item since, which after a retry's
            // wait is far.
            Finished::Succeeded | Finished::Cancelled | Finished::Failed { retry: None, .. } => {}
            // Pending again once its delay has passed.
            Finished::Failed {
                retry: Some(wait), ..
            } if !wait.is_zero() => self.wait(Some(index), now + *wait, out),
            // The item may be pending again.
            Finished::Failed { .. } | Finished::Released | Finished::LeaseLost => {
                self.claims.pending_again(index);
            }
            Finished::NotCommitted(e) => {
                if self.in_charge() {
                    self.failing = Some(format!(
                        "the outcome of item {index} could not be stored: {e}"
                    ));
                }
            }
        }
        self.auto_pause.is_some()
    }

    /// Items were cancelled: those of `waited` (ascending) were waiting
    /// for a retry's delay, and are not to be waited for any more (a job
    /// whose last items they were finishes now, not once the delays end).
    pub fn items_cancelled(&mut self, waited: &[u32]) {
        let cancelled = |i: &u32| waited.binary_search(i).is_ok();
        self.claims
            .waiting
            .retain(|(_, index)| !index.as_ref().is_some_and(cancelled));
        self.claims.due.retain(|i| !cancelled(i));
    }

    /// The wake-up set for `at` fired at `now`.
    pub fn woken(&mut self, at: Instant, now: Instant, out: &mut Vec<Action>) {
        out.extend(self.claims.woken(at, now).map(Action::WakeUpAt));
    }

    /// Retries the store holds, with how long each still waits.
    pub fn found_waiting(
        &mut self,
        found: Vec<(u32, Duration)>,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        for (index, wait) in found {
            self.wait(Some(index), now + wait, out);
        }
    }

    /// The item at `index` (none: any item) may be claimed again at `until`.
    pub(super) fn wait(&mut self, index: Option<u32>, until: Instant, out: &mut Vec<Action>) {
        out.extend(self.claims.wait(until, index).map(Action::WakeUpAt));
    }
}

#[cfg(test)]
mod tests {
    use super::super::{claims::WAKE_SPACING, testing::*};
    use super::*;
    use crate::domain::{Command, JobPolicy, PauseMode};
    use crate::engine::worker::Finished;

    #[test]
    fn the_breaker_pauses_the_job_and_holds_the_failed_worker() {
        let policy = JobPolicy {
            pause_after_failures: Some(2),
            ..JobPolicy::default()
        };
        let mut c = core_with(JobState::Running, policy);
        let now = Instant::now();
        let failed = Finished::Failed {
            retry: None,
            error: "bad".into(),
        };
        assert!(!c.done(1, &failed, Duration::ZERO, now, &mut Vec::new()));
        assert!(c.done(2, &failed, Duration::ZERO, now, &mut Vec::new()));
        let actions = next(&mut c, IDLE, now);
        let [
            Action::Settle {
                from,
                command,
                reason,
            },
        ] = &actions[..]
        else {
            panic!("{actions:?}");
        };
        assert_eq!(
            (*from, *command),
            (JobState::Running, Command::Pause(PauseMode::Graceful))
        );
        assert!(reason.contains("2 failed attempts in a row"), "{reason}");
        // Committed: the held workers go on (to a closed queue).
        let pausing = committed(JobState::Pausing, 6);
        let actions = act(|out| {
            c.settled(Ok(pausing), &IDLE, now, out);
        });
        assert_eq!(actions[0], Action::ReleaseHeld);
        assert!(actions.contains(&Action::OpenQueue(false)));
        // A resume clears the breaker: one failure does not trip it.
        c.changed(JobState::Running, 7, false, &mut Vec::new());
        assert!(!c.done(3, &failed, Duration::ZERO, now, &mut Vec::new()));
    }

    #[test]
    fn cancelled_retries_are_not_waited_for() {
        let mut c = core(JobState::Running);
        let now = Instant::now();
        exhausted(&mut c, now);
        let later = now + Duration::from_secs(3600);
        c.wait(Some(4), later, &mut Vec::new());
        c.wait(Some(6), later, &mut Vec::new());
        c.claims.due.insert(2);
        assert!(!c.claims.all_taken());
        c.items_cancelled(&[2, 4]);
        assert!(!c.claims.all_taken(), "item 6 still waits");
        c.items_cancelled(&[6]);
        assert!(c.claims.all_taken(), "nothing left to wait for");
    }

    #[test]
    fn wake_ups_for_retries_are_spaced() {
        let mut c = core(JobState::Running);
        let now = Instant::now();
        c.woken(now, now, &mut Vec::new());
        let failed = Finished::Failed {
            retry: Some(Duration::from_millis(1)),
            error: "x".into(),
        };
        let actions = act(|out| {
            c.done(1, &failed, Duration::ZERO, now, out);
        });
        assert_eq!(actions, [Action::WakeUpAt(now + WAKE_SPACING)]);
    }
}

//! The answers of the supervisor's own commits and reads, and the store's
//! errors: a transition committed or refused, a conflict (read the job
//! again), an unreachable store (back off, once), a lease lost, items
//! released by a lost commit. This is where the phase moves between
//! active, settling and backing off.

use super::{
    action::Action,
    state::{Committed, Core, Phase, Workers},
};
use crate::store::StoreError;
use std::time::{Duration, Instant};

/// How long after a store call failed it is tried again.
pub(super) const RETRY_AFTER: Duration = Duration::from_millis(500);

impl Core {
    /// The supervisor's own transition (or release of orphans) came back.
    /// Returns whether the job read was applied (it is news).
    pub fn settled(
        &mut self,
        result: Result<Committed, StoreError>,
        workers: &impl Workers,
        now: Instant,
        out: &mut Vec<Action>,
    ) -> bool {
        self.phase = match self.phase {
            Phase::Settling { backoff: true } => Phase::Backoff,
            Phase::Settling { backoff: false } => Phase::Active,
            other => other,
        };
        if self.auto_pause.is_none() {
            // The breaker's pause is committed (or failed): the workers
            // held for it go on (to find the queue closed).
            out.push(Action::ReleaseHeld);
        }
        match result {
            Ok(job) => {
                // Our own transition released whatever was still claimed
                // (PAUSED) or ended the job.
                out.push(Action::DrainQueue);
                self.apply_job(job, out)
            }
            Err(e) => {
                self.store_error(e, workers, now, out);
                false
            }
        }
    }

    /// A fresh read of the job came back. Returns whether it was applied.
    pub fn refreshed(
        &mut self,
        result: Result<Committed, StoreError>,
        workers: &impl Workers,
        now: Instant,
        out: &mut Vec<Action>,
    ) -> bool {
        match result {
            Ok(job) => self.apply_job(job, out),
            Err(e) => {
                self.store_error(e, workers, now, out);
                false
            }
        }
    }

    /// The retry timer fired: try again what failed.
    pub fn retry(&mut self) {
        self.phase = match self.phase {
            Phase::Backoff => Phase::Active,
            Phase::Settling { .. } => Phase::Settling { backoff: false },
            other => other,
        };
        self.claims.exhausted = false;
    }

    /// A store call failed with `e`.
    pub fn store_error(
        &mut self,
        e: StoreError,
        workers: &impl Workers,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        match e {
            // Someone else changed the job: find out what it is now.
            StoreError::Conflict { .. } => out.push(Action::Refresh),
            // Items went back to pending meanwhile: claim them. Items still
            // running with nothing in flight here were claimed by a batch
            // whose commit we never heard of (connection lost during
            // COMMIT): they are ours and nobody runs them, so put them
            // back.
            StoreError::NotFinished {
                running, retry_in, ..
            } => {
                match retry_in {
                    // Every pending item waits for its retry (the store
                    // knows of waits this supervisor did not start: before
                    // a restart, or on another replica): look again when
                    // the first ends.
                    Some(wait) => self.wait(None, now + wait, out),
                    None => self.claims.pending_again(0),
                }
                if running > 0
                    && workers.in_flight() == 0
                    && workers.queued() == 0
                    && self.claims.out.is_none()
                {
                    tracing::warn!(job_id = %self.job, "releasing items claimed by a lost commit");
                    self.settling();
                    out.push(Action::ReleaseOrphans);
                }
            }
            // The job is open (this supervisor had not heard): it waits
            // for items, or to be closed, before it finishes.
            StoreError::JobOpen => self.open = true,
            StoreError::NotFound(_) => {
                tracing::error!(job_id = %self.job, "job vanished from the store; stopping");
                out.push(Action::Exit("job not found".into()));
            }
            // Another replica owns the job now.
            StoreError::Fenced(_) => out.push(Action::LeaseLost),
            e => {
                tracing::warn!(job_id = %self.job, error = %e, "store call failed; will retry");
                self.back_off(out);
            }
        }
    }

    /// A store call failed: wait before trying again (once).
    pub(super) fn back_off(&mut self, out: &mut Vec<Action>) {
        let next = match self.phase {
            Phase::Active => Phase::Backoff,
            Phase::Settling { backoff: false } => Phase::Settling { backoff: true },
            // Already waiting, or no longer claiming or committing.
            Phase::Backoff
            | Phase::Settling { backoff: true }
            | Phase::ShuttingDown
            | Phase::Stopped => return,
        };
        self.phase = next;
        out.push(Action::RetryAfter(RETRY_AFTER));
    }

    /// A transition of its own goes out.
    pub(super) fn settling(&mut self) {
        self.phase = match self.phase {
            Phase::Active => Phase::Settling { backoff: false },
            Phase::Backoff => Phase::Settling { backoff: true },
            other => other,
        };
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;
    use crate::domain::JobState;

    #[test]
    fn store_errors_refresh_back_off_or_give_up() {
        let mut c = core(JobState::Running);
        let now = Instant::now();
        let job = c.job;
        let error = |c: &mut Core, e| act(|out| c.store_error(e, &IDLE, now, out));
        let conflict = StoreError::Conflict {
            expected: JobState::Running,
            current: JobState::Paused,
        };
        assert_eq!(error(&mut c, conflict), [Action::Refresh]);
        assert_eq!(error(&mut c, StoreError::Fenced(job)), [Action::LeaseLost]);
        assert_eq!(
            error(&mut c, StoreError::NotFound(job)),
            [Action::Exit("job not found".into())]
        );
        let down = || StoreError::Unavailable("refused".into());
        assert_eq!(error(&mut c, down()), [Action::RetryAfter(RETRY_AFTER)]);
        assert_eq!(c.phase, Phase::Backoff);
        assert_eq!(error(&mut c, down()), [], "a timer runs already");
        assert_eq!(next(&mut c, IDLE, now), [], "nothing is claimed meanwhile");
        c.retry();
        assert_eq!(next(&mut c, IDLE, now), [Action::Dispatch, claim(0, 4)]);
    }

    #[test]
    fn a_refused_finish_looks_again_or_releases_orphans() {
        let mut c = core(JobState::Running);
        let now = Instant::now();
        exhausted(&mut c, now);
        next(&mut c, IDLE, now);
        let refused = |running, retry_in| StoreError::NotFinished {
            pending: 1,
            running,
            retry_in,
        };
        // Every pending item waits: look again when the first may start.
        let wait = Duration::from_secs(2);
        let actions = act(|out| {
            c.settled(Err(refused(0, Some(wait))), &IDLE, now, out);
        });
        assert_eq!(actions, [Action::ReleaseHeld, Action::WakeUpAt(now + wait)]);
        assert_eq!(next(&mut c, IDLE, now), [Action::Dispatch]);
        c.woken(now + wait, now + wait, &mut Vec::new());
        assert!(c.claims.may_find());
        // Items running that nobody here runs: put back.
        let mut c = core(JobState::Running);
        exhausted(&mut c, now);
        let actions = act(|out| c.store_error(refused(2, None), &IDLE, now, out));
        assert_eq!(actions, [Action::ReleaseOrphans]);
        assert_eq!(c.phase, Phase::Settling { backoff: false });
        // Not while an item is in flight here.
        let mut c = core(JobState::Running);
        let actions = act(|out| c.store_error(refused(2, None), &ONE_BUSY, now, out));
        assert_eq!(actions, []);
        assert!(c.claims.may_find());
    }

    /// What happens to the core in a test of its phases.
    #[derive(Debug, Clone, Copy)]
    enum Event {
        /// A store call failed on an unreachable store.
        StoreDown,
        /// Its own transition came back, committed.
        Settled,
        /// The retry timer fired.
        Retry,
        Shutdown,
        Abandon,
    }

    #[test]
    fn every_phase_answers_every_event() {
        use Event::*;
        use Phase::*;
        let settling = Settling { backoff: false };
        let settling_backoff = Settling { backoff: true };
        // (phase, event, phase after, whether a retry timer is set)
        let table = [
            (Active, StoreDown, Backoff, true),
            (Active, Settled, Active, false),
            (Active, Retry, Active, false),
            (Active, Shutdown, ShuttingDown, false),
            (Active, Abandon, Stopped, false),
            (Backoff, StoreDown, Backoff, false),
            (Backoff, Settled, Backoff, false),
            (Backoff, Retry, Active, false),
            (Backoff, Shutdown, ShuttingDown, false),
            (Backoff, Abandon, Stopped, false),
            (settling, StoreDown, settling_backoff, true),
            (settling, Settled, Active, false),
            (settling, Retry, settling, false),
            (settling, Shutdown, ShuttingDown, false),
            (settling, Abandon, Stopped, false),
            (settling_backoff, StoreDown, settling_backoff, false),
            (settling_backoff, Settled, Backoff, false),
            (settling_backoff, Retry, settling, false),
            (settling_backoff, Shutdown, ShuttingDown, false),
            (settling_backoff, Abandon, Stopped, false),
            (ShuttingDown, StoreDown, ShuttingDown, false),
            (ShuttingDown, Settled, ShuttingDown, false),
            (ShuttingDown, Retry, ShuttingDown, false),
            (ShuttingDown, Shutdown, ShuttingDown, false),
            (ShuttingDown, Abandon, Stopped, false),
            (Stopped, StoreDown, Stopped, false),
            (Stopped, Settled, Stopped, false),
            (Stopped, Retry, Stopped, false),
            (Stopped, Shutdown, ShuttingDown, false),
            (Stopped, Abandon, Stopped, false),
        ];
        let now = Instant::now();
        for (phase, event, after, timer) in table {
            let mut c = core(JobState::Running);
            c.phase = phase;
            let actions = act(|out| match event {
                StoreDown => c.store_error(StoreError::Unavailable("down".into()), &IDLE, now, out),
                Settled => {
                    c.settled(Ok(committed(JobState::Running, 6)), &IDLE, now, out);
                }
                Retry => c.retry(),
                Shutdown => c.shutdown(out),
                Abandon => c.abandon(out),
            });
            assert_eq!(c.phase, after, "{phase:?} then {event:?}");
            assert_eq!(
                actions.contains(&Action::RetryAfter(RETRY_AFTER)),
                timer,
                "{phase:?} then {event:?}: {actions:?}"
            );
        }
    }

    #[test]
    fn only_an_active_core_decides_and_a_shutdown_decides_its_end() {
        use Phase::*;
        let now = Instant::now();
        for phase in [
            Backoff,
            Settling { backoff: false },
            Settling { backoff: true },
            Stopped,
        ] {
            let mut c = core(JobState::Running);
            c.phase = phase;
            c.failing = Some("broken".into());
            assert_eq!(next(&mut c, IDLE, now), [], "{phase:?}");
            assert_eq!(c.failing.as_deref(), Some("broken"), "kept for later");
        }
        // An ended job's supervisor stops, unless it answers a shutdown.
        let mut c = core(JobState::Succeeded);
        c.phase = Settling { backoff: true };
        assert_eq!(
            next(&mut c, IDLE, now),
            [Action::Exit("job succeeded".into())]
        );
        c.phase = ShuttingDown;
        assert_eq!(next(&mut c, IDLE, now), [Action::FinishShutdown]);
    }
}

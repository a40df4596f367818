//! The supervisor's core: what it knows of its job, as plain data, and how
//! each message changes that. Every method takes the time it needs as an
//! argument and returns what to do as [`Action`]s; nothing here touches
//! an actor, a timer or the store, so it is tested without them. Here:
//! the state, the phase, and the job's state changes (a caller's, a
//! notice's, its own); `items.rs`, `settle.rs` and `pool.rs` hold the
//! core's answers to items, to the store and to dead workers, and
//! `plan.rs` the decision taken after every message (`Core::next`).

use super::{action::Action, claims::Claims, pool::RestartBudget};
use crate::{
    domain::{JobId, JobPolicy, JobState, PauseMode, RateLimit},
    engine::policy::{ActiveClock, Breaker, Pacer},
    executor::StopReason,
};
use std::time::Duration;

/// What the supervisor is doing, apart from the job's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    /// Claims, hands out items and settles as the job's state asks.
    Active,
    /// A store call failed: nothing is claimed or committed until the
    /// retry timer fires.
    Backoff,
    /// A transition of its own is being committed: nothing else is
    /// decided until it is back. `backoff`: a store call failed meanwhile
    /// and the retry timer runs, so it is [`Phase::Backoff`] after.
    Settling { backoff: bool },
    /// The server shuts down: items stop at their next checkpoint; once
    /// none is in flight and no claim is out, it answers and stops. It
    /// claims and commits nothing more.
    ShuttingDown,
    /// Answered its shutdown, or lost its lease: decides nothing more.
    Stopped,
}

/// The engine's settings a supervisor decides with.
#[derive(Debug, Clone, Copy)]
pub(super) struct Settings {
    /// Items a worker may have outstanding (pipelined), 0 if not: how
    /// many to claim ahead for a job of fast items.
    pub outstanding_per_worker: u32,
    pub restart_window: Duration,
    pub restart_budget: u32,
}

/// A job's committed state, as a transition or a read returns it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Committed {
    pub state: JobState,
    pub seq: u64,
    /// A pause in progress is immediate: items in flight are interrupted.
    pub interrupt: bool,
}

impl Committed {
    pub fn of(job: &crate::domain::Job) -> Committed {
        Committed {
            state: job.state,
            seq: job.last_seq,
            interrupt: job.state == JobState::Pausing
                && job
                    .pauses
                    .last()
                    .is_some_and(|p| p.mode == PauseMode::Immediate),
        }
    }
}

/// What an `Observed` notice changed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct Observed {
    /// Anything (the state or the rate limit).
    pub changed: bool,
    /// The state was applied.
    pub applied: bool,
    /// The pool is to be resized to this many workers.
    pub resize: Option<u32>,
}

pub(super) struct Core {
    pub job: JobId,
    /// The job's state as last committed (by anyone).
    pub state: JobState,
    /// Sequence of the last state change applied: older notices are stale.
    pub state_seq: u64,
    pub concurrency: u32,
    pub phase: Phase,
    pub claims: Claims,
    /// A fatal error to commit (FAILED) as soon as possible.
    pub failing: Option<String>,
    /// A pause the breaker asked for, to commit.
    pub auto_pause: Option<String>,
    /// Pauses the job when too many attempts fail.
    pub(super) breaker: Breaker,
    /// Running time so far (paused time not counted) and its budget.
    clock: ActiveClock,
    timeout: Option<Duration>,
    /// The job's rate limit on item starts, and its pacer if it has one.
    pub rate: RateLimit,
    pub(super) pacer: Option<Box<Pacer>>,
    pub restarts: RestartBudget,
    pub(super) settings: Settings,
    /// Remote executors: the seats last asked of the worker hub.
    pub(super) seats_asked: Option<u32>,
    /// The job's items in all, as last heard: AddItems adds to them.
    pub total: u64,
    /// The job is open: it does not finish until closed, however many of
    /// its items are done.
    pub open: bool,
}

impl Core {
    /// The core of a job found in `state` at event `seq`, which has run
    /// for `active` so far.
    pub fn new(
        job: JobId,
        at: Committed,
        concurrency: u32,
        policy: &JobPolicy,
        active: Duration,
        settings: Settings,
    ) -> Core {
        Core {
            job,
            state: at.state,
            state_seq: at.seq,
            concurrency,
            phase: Phase::Active,
            claims: Claims::default(),
            failing: None,
            auto_pause: None,
            breaker: Breaker::new(policy),
            clock: ActiveClock::new(active, at.state == JobState::Running),
            timeout: policy.timeout_ms.map(Duration::from_millis),
            rate: policy.rate(),
            pacer: Pacer::new(policy),
            restarts: RestartBudget::new(settings.restart_window, settings.restart_budget),
            settings,
            seats_asked: None,
            total: 0,
            open: false,
        }
    }

    /// The job holds `total` items now and is `open` or not (AddItems, as
    /// committed): claims look again from the first new item, and a
    /// closed job may finish. Stale news (fewer items, open again after a
    /// close) changes nothing: items are never taken away, and a closed
    /// job never opens. Returns whether anything changed.
    pub fn grown(&mut self, total: u64, open: bool) -> bool {
        let mut changed = false;
        if total > self.total {
            self.claims
                .pending_again(self.total.min(u32::MAX as u64) as u32);
            self.total = total;
            changed = true;
        }
        if self.open && !open {
            self.open = false;
            changed = true;
        }
        changed
    }

    /// The workers' stop signal for a job found in `state`.
    pub fn initial_stop(state: JobState) -> Option<StopReason> {
        match state {
            JobState::Cancelling => Some(StopReason::Cancel),
            _ => None,
        }
    }

    /// Whether the job has a running-time budget to check (`Tick`).
    pub fn timed(&self) -> bool {
        self.timeout.is_some()
    }

    /// A caller's transition was committed as event `seq`. Returns whether
    /// it was news (and applied).
    pub fn changed(
        &mut self,
        state: JobState,
        seq: u64,
        interrupt: bool,
        out: &mut Vec<Action>,
    ) -> bool {
        if seq <= self.state_seq {
            return false;
        }
        self.state_seq = seq;
        self.apply_state(state, interrupt, out);
        true
    }

    /// Multi-replica mode: a committed change announced by the database.
    /// Other events (item failures…) move the sequence without changing
    /// the state: only a different state is applied.
    pub fn observed(
        &mut self,
        at: Committed,
        concurrency: u32,
        rate: Option<RateLimit>,
        out: &mut Vec<Action>,
    ) -> Observed {
        let mut seen = Observed::default();
        if let Some(rate) = rate
            && rate != self.rate
        {
            self.set_rate(rate);
            seen.changed = true;
        }
        if at.seq > self.state_seq && at.state != self.state {
            self.state_seq = at.seq;
            self.apply_state(at.state, at.interrupt, out);
            seen.changed = true;
            seen.applied = true;
        }
        if concurrency != self.concurrency && !self.state.is_terminal() {
            seen.resize = Some(concurrency);
        }
        seen
    }

    /// Escalates a graceful pause in progress to an immediate one.
    pub fn interrupt(&self, out: &mut Vec<Action>) {
        if self.state == JobState::Pausing {
            out.push(Action::Signal(Some(StopReason::Pause)));
        }
    }

    /// The lease is lost: stop at once, writing nothing more.
    pub fn abandon(&mut self, out: &mut Vec<Action>) {
        self.phase = Phase::Stopped;
        out.extend([
            Action::Signal(Some(StopReason::Shutdown)),
            Action::OpenQueue(false),
            Action::DrainQueue,
            Action::StopWorkers("lease lost"),
            Action::Exit("lease lost".into()),
        ]);
    }

    /// The server shuts down: stop items at their next checkpoint and
    /// leave the job as it is in the store.
    pub fn shutdown(&mut self, out: &mut Vec<Action>) {
        self.phase = Phase::ShuttingDown;
        out.push(Action::Signal(Some(StopReason::Shutdown)));
    }

    /// Whether it still claims and commits (not shutting down).
    pub fn in_charge(&self) -> bool {
        !matches!(self.phase, Phase::ShuttingDown | Phase::Stopped)
    }

    /// Fails the job once its running time (paused time not counted) is
    /// over its budget; otherwise checks again later.
    pub fn tick(&mut self, out: &mut Vec<Action>) {
        let Some(limit) = self.timeout else { return };
        if self.state.is_terminal() {
            return;
        }
        let ran = self.clock.elapsed();
        if ran >= limit {
            if self.failing.is_none() {
                self.failing = Some(format!(
                    "timeout: the job ran for {} (paused time not counted), its limit is {}",
                    humantime::format_duration(Duration::from_secs(ran.as_secs())),
                    humantime::format_duration(limit)
                ));
            }
            return;
        }
        out.push(Action::TickAfter((limit - ran).min(Duration::from_secs(5))));
    }

    /// Keeps to `rate` from the next start on (a new limit starts a new
    /// period); nothing changes if it is the limit already kept to.
    pub fn set_rate(&mut self, rate: RateLimit) {
        if rate == self.rate {
            return;
        }
        self.rate = rate;
        self.pacer = Pacer::new(&JobPolicy {
            rate_limit: rate.limit,
            rate_period_ms: rate.period_ms,
            ..JobPolicy::default()
        });
    }

    /// The pool now has `concurrency` workers (or is shrinking to them).
    pub fn resized(&mut self, concurrency: u32) {
        self.concurrency = concurrency;
    }

    /// Adopts a job as committed, unless what we know is newer. Returns
    /// whether it was adopted.
    pub(super) fn apply_job(&mut self, job: Committed, out: &mut Vec<Action>) -> bool {
        if job.seq < self.state_seq {
            return false;
        }
        self.state_seq = job.seq;
        self.apply_state(job.state, job.interrupt, out);
        true
    }

    /// Adopts a state committed by someone else (or by itself).
    fn apply_state(&mut self, state: JobState, interrupt: bool, out: &mut Vec<Action>) {
        let was = self.state;
        self.state = state;
        let running = state == JobState::Running;
        if !running {
            out.push(Action::ReleaseHeld);
        }
        // Whoever changed the job may have put items back to pending.
        self.claims.repend_from(0);
        // Closed before the change is acknowledged: nothing starts after a
        // pause or a cancel has returned.
        out.push(Action::OpenQueue(running));
        self.clock.set_running(running);
        if running && was != JobState::Running {
            // A resume clears the breaker.
            self.breaker.reset();
            self.auto_pause = None;
        }
        match state {
            JobState::Running => {
                out.push(Action::Signal(None));
                self.claims.exhausted = false;
            }
            JobState::Pausing if interrupt => {
                out.push(Action::Signal(Some(StopReason::Pause)));
            }
            JobState::Pausing => {}
            // Items still claimed were released by the transition to
            // PAUSED.
            JobState::Paused => out.push(Action::DrainQueue),
            JobState::Cancelling => out.push(Action::Signal(Some(StopReason::Cancel))),
            JobState::Cancelled | JobState::Succeeded | JobState::Failed => {
                out.extend([Action::Signal(Some(StopReason::Cancel)), Action::DrainQueue]);
            }
        }
        if was != state {
            tracing::info!(job_id = %self.job, from = %was, to = %state, "job state applied");
        }
    }
}

/// What the core reads of the worker pool and the work queue, read only
/// when a decision needs it (each read takes a lock per worker).
pub(super) trait Workers {
    /// Workers running an item (or committing one, or recovering one).
    fn in_flight(&self) -> usize;
    /// Workers in the pool.
    fn slots(&self) -> usize;
    /// Claimed items no worker took yet.
    fn queued(&self) -> usize;
    /// Remote executors: the worker slots granted and not yet used
    /// (`None`: items run here and need none).
    fn seats(&self) -> Option<usize> {
        None
    }
    /// Remote executors: no connected worker (here, or lent by another
    /// replica) serves the job now. Read last, when nothing else keeps
    /// the supervisor (it takes the worker hub's lock).
    fn unserved(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;
    use std::time::Instant;

    #[test]
    fn an_immediate_pause_or_a_drain_deadline_interrupts_the_items() {
        let mut c = core(JobState::Running);
        let actions = act(|out| {
            c.changed(JobState::Pausing, 6, true, out);
        });
        assert!(actions.contains(&Action::Signal(Some(StopReason::Pause))));
        // Graceful first, then the deadline escalates it.
        let mut c = core(JobState::Running);
        let graceful = act(|out| {
            c.changed(JobState::Pausing, 6, false, out);
        });
        assert!(!graceful.iter().any(|a| matches!(a, Action::Signal(_))));
        assert_eq!(
            act(|out| c.interrupt(out)),
            [Action::Signal(Some(StopReason::Pause))]
        );
        // Too late: it is paused already.
        c.changed(JobState::Paused, 7, false, &mut Vec::new());
        assert_eq!(act(|out| c.interrupt(out)), []);
    }

    #[test]
    fn stale_changes_are_ignored() {
        let mut c = core(JobState::Running);
        assert!(!c.changed(JobState::Paused, 5, false, &mut Vec::new()));
        assert_eq!(c.state, JobState::Running);
        // A read older than what is known is not adopted either.
        let old = committed(JobState::Paused, 4);
        assert!(!c.refreshed(Ok(old), &IDLE, Instant::now(), &mut Vec::new()));
        assert_eq!(c.state, JobState::Running);
    }

    #[test]
    fn a_resume_reopens_the_queue_and_looks_for_items_again() {
        let mut c = core(JobState::Running);
        let now = Instant::now();
        exhausted(&mut c, now);
        c.changed(JobState::Paused, 6, false, &mut Vec::new());
        let actions = act(|out| {
            c.changed(JobState::Running, 7, false, out);
        });
        assert_eq!(actions, [Action::OpenQueue(true), Action::Signal(None)]);
        assert_eq!(next(&mut c, IDLE, now), [Action::Dispatch, claim(0, 4)]);
    }

    #[test]
    fn a_lost_lease_stops_everything_at_once() {
        let mut c = core(JobState::Running);
        let actions = act(|out| c.abandon(out));
        assert_eq!(
            actions,
            [
                Action::Signal(Some(StopReason::Shutdown)),
                Action::OpenQueue(false),
                Action::DrainQueue,
                Action::StopWorkers("lease lost"),
                Action::Exit("lease lost".into()),
            ]
        );
        assert_eq!(next(&mut c, IDLE, Instant::now()), []);
    }

    #[test]
    fn a_notice_resizes_changes_the_rate_and_applies_only_a_new_state() {
        let mut c = core(JobState::Running);
        let same = committed(JobState::Running, 9);
        let seen = c.observed(same, 4, None, &mut Vec::new());
        assert!(!seen.changed && !seen.applied && seen.resize.is_none());
        let rate = RateLimit {
            limit: Some(5),
            period_ms: None,
        };
        let seen = c.observed(same, 8, Some(rate), &mut Vec::new());
        assert_eq!(
            (seen.changed, seen.applied, seen.resize),
            (true, false, Some(8))
        );
        c.resized(8);
        let pausing = Committed {
            state: JobState::Pausing,
            seq: 10,
            interrupt: true,
        };
        let mut out = Vec::new();
        let seen = c.observed(pausing, 8, Some(rate), &mut out);
        assert_eq!(
            (seen.changed, seen.applied, seen.resize),
            (true, true, None)
        );
        assert!(out.contains(&Action::Signal(Some(StopReason::Pause))));
        // An ended job is not resized.
        let ended = committed(JobState::Cancelled, 11);
        assert_eq!(c.observed(ended, 2, None, &mut Vec::new()).resize, None);
    }

    #[test]
    fn the_running_time_budget_fails_the_job_once_spent() {
        let policy = JobPolicy {
            timeout_ms: Some(60_000),
            ..JobPolicy::default()
        };
        let mut c = core_with(JobState::Running, policy.clone());
        assert_eq!(
            act(|out| c.tick(out)),
            [Action::TickAfter(Duration::from_secs(5))]
        );
        assert!(c.failing.is_none());
        let mut spent = Core::new(
            JobId::new(),
            committed(JobState::Running, 5),
            4,
            &policy,
            Duration::from_secs(61),
            c.settings,
        );
        assert_eq!(act(|out| spent.tick(out)), []);
        let why = spent.failing.clone().expect("timed out");
        assert!(why.starts_with("timeout: the job ran for 1m 1s"), "{why}");
    }
}

//! The supervisor's core: what it knows of its job, as plain data, and how
//! each message changes that. Every method takes the time it needs as an
//! argument and returns what to do as [`Action`]s; nothing here touches
//! an actor, a timer or the store, so it is tested without either.
//! `plan.rs` holds the decision taken after every message (`Core::next`).

use super::{action::Action, claims::Claims, pool::RestartBudget};
use crate::{
    domain::{JobId, JobPolicy, JobState, PauseMode, RateLimit},
    engine::{
        policy::{ActiveClock, Breaker, Pacer},
        worker::Finished,
    },
    executor::StopReason,
    store::StoreError,
};
use std::time::{Duration, Instant};

/// How long after a store call failed it is tried again.
pub(super) const RETRY_AFTER: Duration = Duration::from_millis(500);

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
    breaker: Breaker,
    /// Running time so far (paused time not counted) and its budget.
    clock: ActiveClock,
    timeout: Option<Duration>,
    /// The job's rate limit on item starts, and its pacer if it has one.
    pub rate: RateLimit,
    pub(super) pacer: Option<Box<Pacer>>,
    pub restarts: RestartBudget,
    pub(super) settings: Settings,
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
        }
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

    /// The pool now has `concurrency` workers (or is shrinking to them).
    pub fn resized(&mut self, concurrency: u32) {
        self.concurrency = concurrency;
    }

    /// A worker died at `now` running the item at `index`, if any: counts
    /// it against the restart budget, and fails the job once it is spent.
    /// Returns the restarts within the window.
    pub fn worker_died(&mut self, now: Instant, index: Option<u32>, error: &str) -> u32 {
        let restarts = self.restarts.record(now);
        if self.restarts.spent() {
            self.failing = Some(format!(
                "restart budget exhausted: {restarts} worker restarts within {}; last: {}",
                humantime::format_duration(self.restarts.window()),
                match index {
                    Some(i) => format!("item {i}: {error}"),
                    None => error.to_string(),
                }
            ));
        }
        restarts
    }

    /// Whether a worker that died is replaced.
    pub fn replaces_workers(&self) -> bool {
        !self.state.is_terminal() && self.in_charge()
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
    fn back_off(&mut self, out: &mut Vec<Action>) {
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

    /// The item at `index` (none: any item) may be claimed again at `until`.
    fn wait(&mut self, index: Option<u32>, until: Instant, out: &mut Vec<Action>) {
        out.extend(self.claims.wait(until, index).map(Action::WakeUpAt));
    }

    /// Adopts a job as committed, unless what we know is newer. Returns
    /// whether it was adopted.
    fn apply_job(&mut self, job: Committed, out: &mut Vec<Action>) -> bool {
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
}

#[cfg(test)]
mod tests {
    use super::super::{claims::WAKE_SPACING, testing::*};
    use super::*;
    use crate::{domain::Command, engine::worker::Finished};

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
    fn the_restart_budget_spent_fails_the_job() {
        let mut c = core(JobState::Running);
        let now = Instant::now();
        assert_eq!(c.worker_died(now, Some(1), "panic"), 1);
        assert_eq!(c.worker_died(now, None, "panic"), 2);
        assert!(c.failing.is_none(), "two restarts are within a budget of 2");
        // Restarts out of the window no longer count.
        let later = now + Duration::from_secs(61);
        assert_eq!(c.worker_died(later, Some(1), "panic"), 1);
        c.worker_died(later, Some(1), "panic");
        assert_eq!(c.worker_died(later, Some(7), "boom"), 3);
        let why = c.failing.clone().expect("the budget is spent");
        assert!(why.contains("3 worker restarts within 1m"), "{why}");
        assert!(why.ends_with("last: item 7: boom"), "{why}");
        assert!(c.replaces_workers());
        let actions = next(&mut c, IDLE, later);
        assert!(matches!(
            &actions[..],
            [
                Action::Signal(Some(StopReason::Shutdown)),
                Action::Settle {
                    command: Command::Fail,
                    ..
                }
            ]
        ));
    }

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

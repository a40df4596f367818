//! What the core's tests share: a pool to decide with, cores in a given
//! state, and shorthands for the actions expected.

use super::{
    action::Action,
    state::{Committed, Core, Settings, Workers},
};
use crate::domain::{Command, JobId, JobPolicy, JobState};
use std::time::{Duration, Instant};

/// The pool as the core sees it.
#[derive(Clone, Copy)]
pub struct Pool {
    pub in_flight: usize,
    pub slots: usize,
    pub queued: usize,
    /// Remote executors: the worker slots held (`None`: items run here).
    pub seats: Option<usize>,
    /// Remote executors: no connected worker serves the job.
    pub unserved: bool,
}

impl Workers for Pool {
    fn in_flight(&self) -> usize {
        self.in_flight
    }
    fn slots(&self) -> usize {
        self.slots
    }
    fn queued(&self) -> usize {
        self.queued
    }
    fn seats(&self) -> Option<usize> {
        self.seats
    }
    fn unserved(&self) -> bool {
        self.unserved
    }
}

/// Four workers, none busy, nothing queued.
pub const IDLE: Pool = Pool {
    in_flight: 0,
    slots: 4,
    queued: 0,
    seats: None,
    unserved: false,
};

/// Four workers, one of them running an item.
pub const ONE_BUSY: Pool = Pool {
    in_flight: 1,
    slots: 4,
    queued: 0,
    seats: None,
    unserved: false,
};

/// Four workers of a remote executor's job: `in_flight` busy, `queued`
/// items claimed, `seats` worker slots held.
pub fn remote(in_flight: usize, queued: usize, seats: usize) -> Pool {
    Pool {
        in_flight,
        slots: 4,
        queued,
        seats: Some(seats),
        unserved: false,
    }
}

/// Four idle workers of a remote executor's job that no connected worker
/// serves: no seat, nothing queued or in flight.
pub const UNSERVED: Pool = Pool {
    in_flight: 0,
    slots: 4,
    queued: 0,
    seats: Some(0),
    unserved: true,
};

/// The engine's settings in tests: a restart budget of 2 a minute.
pub const SETTINGS: Settings = Settings {
    outstanding_per_worker: 0,
    restart_window: Duration::from_secs(60),
    restart_budget: 2,
};

/// A core of four workers for a job in `state` at event 5.
pub fn core_with(state: JobState, policy: JobPolicy) -> Core {
    let at = Committed {
        state,
        seq: 5,
        interrupt: false,
    };
    Core::new(JobId::new(), at, 4, &policy, Duration::ZERO, SETTINGS)
}

pub fn core(state: JobState) -> Core {
    core_with(state, JobPolicy::default())
}

/// The job as committed in `state` at event `seq`.
pub fn committed(state: JobState, seq: u64) -> Committed {
    Committed {
        state,
        seq,
        interrupt: false,
    }
}

/// What the core decides next.
pub fn next(c: &mut Core, pool: Pool, now: Instant) -> Vec<Action> {
    act(|out| c.next(&pool, now, out))
}

/// The actions `f` decides.
pub fn act(f: impl FnOnce(&mut Vec<Action>)) -> Vec<Action> {
    let mut out = Vec::new();
    f(&mut out);
    out
}

/// A claim of the next `max` items from `from`.
pub fn claim(from: u32, max: u32) -> Action {
    Action::Claim {
        from,
        max,
        retries: false,
    }
}

pub fn settle(from: JobState, command: Command, reason: &str) -> Action {
    Action::Settle {
        from,
        command,
        reason: reason.into(),
    }
}

/// Runs a RUNNING core until every item was claimed and claims come back
/// empty.
pub fn exhausted(c: &mut Core, now: Instant) {
    assert_eq!(next(c, IDLE, now), [Action::Dispatch, claim(0, 4)]);
    c.claims.claimed(4, Some(3));
    assert_eq!(next(c, IDLE, now), [Action::Dispatch, claim(4, 4)]);
    c.claims.claimed(0, None);
    assert!(c.claims.all_taken());
}

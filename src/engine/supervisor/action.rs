//! What the supervisor's core decides and its actor carries out. Each
//! action is one side effect: a task that calls the store and reports
//! back, a timer, a signal to the workers, a change of the work queue.

use crate::{
    domain::{Command, JobState},
    executor::StopReason,
};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, PartialEq)]
pub(super) enum Action {
    /// Claim up to `max` pending items from `from` (`retries`: only due
    /// retries); the answer comes as `Claimed`.
    Claim { from: u32, max: u32, retries: bool },
    /// Wake idle workers while claimed items wait.
    Dispatch,
    /// Set the wake-up timer for this time (`WakeUp`).
    WakeUpAt(Instant),
    /// Try again, after this long, what failed on the store (`Retry`).
    RetryAfter(Duration),
    /// Check the running-time budget again after this long (`Tick`).
    TickAfter(Duration),
    /// Commit a transition of the supervisor's own, guarded by `from`
    /// (the state it believes); the answer comes as `Settled`.
    Settle {
        from: JobState,
        command: Command,
        reason: String,
    },
    /// Tell every worker how to stop its item (none: carry on).
    Signal(Option<StopReason>),
    /// Open or close the work queue: workers take items only while open.
    OpenQueue(bool),
    /// Drop the claimed items no worker took (released in the store).
    DrainQueue,
    /// Answer the workers held until the breaker's pause is committed.
    ReleaseHeld,
    /// Read the job again (`Refreshed`).
    Refresh,
    /// Put back items claimed by a batch whose commit was never heard of;
    /// the answer comes as `Settled`.
    ReleaseOrphans,
    /// Another replica owns the job: report the lease lost and abandon.
    LeaseLost,
    /// Release the items never started, answer the shutdown, and stop.
    FinishShutdown,
    /// Stop every worker at once.
    StopWorkers(&'static str),
    /// Stop the supervisor.
    Exit(String),
    /// Remote executors: stop the supervisor while no worker serves the
    /// job, leaving it RUNNING; the worker hub wakes it when one that
    /// serves it connects (if one connected meanwhile, it stays).
    Park,
    /// Remote executors: hold this many worker slots in all (asked of the
    /// worker hub; seats beyond it are given back).
    Seats(u32),
}

//! Executors: the per-item work a job does. An [`Executor`] is registered
//! under a name; for each job it checks the job's `params` once and returns
//! an [`ItemHandler`], which the job's workers call for every item with an
//! [`ItemContext`].
//!
//! A handler owns nothing durable: it gets the item's last checkpoint on
//! entry, saves new ones with [`ItemContext::save_checkpoint`] (which
//! returns once the checkpoint is committed), and stops at its next
//! checkpoint when [`ItemContext::stop_requested`] turns true (immediate
//! pause, cancel, shutdown), returning [`ItemError::Interrupted`].

pub mod exec;
pub mod protocol;
pub mod remote;
pub mod sleep;

use crate::domain::{FieldViolation, JobId};
use async_trait::async_trait;
use std::{collections::BTreeMap, fmt, sync::Arc, time::Duration};
use tokio::sync::watch;

/// A named kind of work.
pub trait Executor: Send + Sync + 'static {
    /// Checks a job's params and returns the handler for its items. Each
    /// problem names its field as `params[key]`.
    fn prepare(
        &self,
        params: &BTreeMap<String, String>,
    ) -> Result<Arc<dyn ItemHandler>, PrepareError>;

    /// Like [`Executor::prepare`], for an executor that needs more of the
    /// job than its params (a remote executor: its labels, which limit
    /// the workers that may take its items). By default, `prepare`.
    fn prepare_job(&self, job: &JobInfo<'_>) -> Result<Arc<dyn ItemHandler>, PrepareError> {
        self.prepare(job.params)
    }
}

/// What an executor is told of the job it prepares a handler for.
#[derive(Debug, Clone, Copy)]
pub struct JobInfo<'a> {
    pub name: &'a str,
    pub labels: &'a BTreeMap<String, String>,
    pub params: &'a BTreeMap<String, String>,
}

/// Why a job's executor cannot be prepared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PrepareError {
    /// Bad params (INVALID_ARGUMENT, each field named).
    Invalid(Vec<FieldViolation>),
    /// Well-formed but not allowed on this server (PERMISSION_DENIED).
    Forbidden(String),
}

/// Every problem in one line: `field: what` pairs, or the refusal.
impl fmt::Display for PrepareError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PrepareError::Invalid(violations) => {
                for (n, v) in violations.iter().enumerate() {
                    let sep = if n == 0 { "" } else { "; " };
                    write!(f, "{sep}{}: {}", v.field, v.description)?;
                }
                Ok(())
            }
            PrepareError::Forbidden(why) => f.write_str(why),
        }
    }
}

impl From<Vec<FieldViolation>> for PrepareError {
    fn from(v: Vec<FieldViolation>) -> Self {
        PrepareError::Invalid(v)
    }
}

/// Runs the items of one job.
#[async_trait]
pub trait ItemHandler: Send + Sync + 'static {
    /// Processes one item. `Ok` means the item succeeded.
    async fn run(&self, ctx: &mut ItemContext) -> Result<(), ItemError>;

    /// A handler whose items run in remote workers: its job's supervisor
    /// asks for worker slots (seats) before it claims items, and each item
    /// starts with one ([`ItemContext::take_seat`]). `None` for handlers
    /// that run items here.
    fn remote(&self) -> Option<&remote::RemoteHandler> {
        None
    }
}

/// How an item attempt ended, when it did not succeed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ItemError {
    /// Try again (up to the job's `max_attempts`).
    #[error("{0}")]
    Retryable(String),
    /// Do not try again: the item is FAILED now.
    #[error("permanent failure: {0}")]
    Permanent(String),
    /// Stopped because a stop was requested; the work up to the last saved
    /// checkpoint is kept.
    #[error("interrupted")]
    Interrupted,
    /// Given back without a result (a remote worker that drains, or lost
    /// before it got the item): the item goes back to pending and the
    /// attempt does not count.
    #[error("handed back: {0}")]
    Handback(String),
}

/// Why the items in flight are asked to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// Immediate pause: the item goes back to pending, keeping its attempt.
    Pause,
    /// The job is cancelled: the item ends CANCELLED.
    Cancel,
    /// The server is shutting down: the item goes back to pending.
    Shutdown,
}

/// Why a checkpoint could not be saved.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckpointError {
    /// The item is no longer this worker's (its claim was taken over); the
    /// handler should stop.
    #[error("the item's lease was lost")]
    LeaseLost,
    /// The store refused the write for good.
    #[error("checkpoint not saved: {0}")]
    Store(String),
}

/// Where checkpoints go: the engine's group committer, fenced by the
/// item's lease.
#[async_trait]
pub trait CheckpointSink: Send + Sync + 'static {
    async fn save(&self, data: Vec<u8>) -> Result<(), CheckpointError>;
}

/// Where the progress of items in flight goes (the engine shows it in
/// WatchJob's progress and uses it for the ETA). Kept in memory only.
pub trait ProgressSink: Send + Sync + 'static {
    /// Item `index` is `fraction` (0.0 to 1.0) done.
    fn report(&self, index: u32, fraction: f32);
}

/// Everything a handler gets for one attempt of one item.
pub struct ItemContext {
    job_id: JobId,
    index: u32,
    payload: String,
    attempt: u32,
    checkpoint: Option<Vec<u8>>,
    stop: watch::Receiver<Option<StopReason>>,
    /// This item's own stop signal (CancelItems cancelled it), if the
    /// engine gave one: true asks the item to stop as cancelled.
    item_stop: Option<watch::Receiver<bool>>,
    /// The last stop reason the handler was shown, so the outcome follows
    /// what the handler saw even if the signal changed since.
    observed: std::sync::Mutex<Option<StopReason>>,
    sink: Arc<dyn CheckpointSink>,
    progress: Option<Arc<dyn ProgressSink>>,
    result: Option<String>,
    /// The item was done already: why (see [`ItemContext::skip`]).
    skip: Option<String>,
    /// This attempt's counters (see [`ItemContext::count`]).
    counters: crate::domain::Counters,
    retry_after: Option<Duration>,
    /// The worker slot this attempt runs in (remote executors).
    seat: Option<remote::Seat>,
}

/// The longest skip reason kept, in characters.
pub const MAX_SKIP_REASON: usize = crate::domain::spec::MAX_REASON_CHARS;

/// The longest wait a handler may ask for before the next attempt: as
/// long as a job's own delay may be.
pub use crate::domain::job::MAX_RETRY_DELAY as MAX_RETRY_AFTER;

impl fmt::Debug for ItemContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ItemContext")
            .field("job_id", &self.job_id)
            .field("index", &self.index)
            .field("attempt", &self.attempt)
            .finish_non_exhaustive()
    }
}

impl ItemContext {
    /// Builds a context (the engine does this for every attempt; tests and
    /// embedders may too).
    pub fn new(
        job_id: JobId,
        index: u32,
        payload: String,
        attempt: u32,
        checkpoint: Option<Vec<u8>>,
        stop: watch::Receiver<Option<StopReason>>,
        sink: Arc<dyn CheckpointSink>,
    ) -> Self {
        ItemContext {
            job_id,
            index,
            payload,
            attempt,
            checkpoint,
            stop,
            item_stop: None,
            observed: std::sync::Mutex::new(None),
            sink,
            progress: None,
            result: None,
            skip: None,
            counters: crate::domain::Counters::new(),
            retry_after: None,
            seat: None,
        }
    }

    /// Gives this item a stop signal of its own, besides the job's: once
    /// it turns true the item is asked to stop as cancelled
    /// ([`StopReason::Cancel`]), whatever the job does.
    pub fn with_item_stop(mut self, stop: watch::Receiver<bool>) -> Self {
        self.item_stop = Some(stop);
        self
    }

    /// Runs this attempt in a remote worker's slot.
    pub fn with_seat(mut self, seat: Option<remote::Seat>) -> Self {
        self.seat = seat;
        self
    }

    /// The remote worker slot reserved for this attempt, if any (taken
    /// once).
    pub fn take_seat(&mut self) -> Option<remote::Seat> {
        self.seat.take()
    }

    /// Sends this item's progress reports to `sink`.
    pub fn with_progress(mut self, sink: Arc<dyn ProgressSink>) -> Self {
        self.progress = Some(sink);
        self
    }

    /// Reports how much of the item is done (0.0 to 1.0). Shown live; not
    /// stored.
    pub fn set_progress(&self, fraction: f32) {
        if let Some(sink) = &self.progress {
            sink.report(self.index, fraction.clamp(0.0, 1.0));
        }
    }

    /// Sets the item's result, stored with it if it succeeds.
    pub fn set_result(&mut self, result: String) {
        self.result = Some(result);
    }

    /// The result set by the handler, if any.
    pub fn take_result(&mut self) -> Option<String> {
        self.result.take()
    }

    /// Says the item was done already (its output exists, say): if the
    /// handler then returns `Ok`, the item ends SUCCEEDED, marked skipped
    /// with `reason` (at most [`MAX_SKIP_REASON`] characters; longer is
    /// cut). The last call counts.
    pub fn skip(&mut self, reason: impl Into<String>) {
        let mut reason: String = reason.into();
        if let Some((cut, _)) = reason.char_indices().nth(MAX_SKIP_REASON) {
            reason.truncate(cut);
        }
        self.skip = Some(reason);
    }

    /// The skip reason set by the handler, if any.
    pub fn take_skip(&mut self) -> Option<String> {
        self.skip.take()
    }

    /// Adds `n` to this attempt's counter `name` (frames processed,
    /// detections found). The job's counters grow by an attempt's counts
    /// when, and only if, it succeeds, in the commit of its success: a
    /// retried item counts once. Refused (nothing changes) for a bad name
    /// (1 to 64 of a-z, 0-9 and _, from a letter), a negative `n`, or a
    /// 33rd name.
    pub fn count(&mut self, name: &str, n: i64) -> Result<(), String> {
        crate::domain::counters::add_count(&mut self.counters, name, n)
    }

    /// This attempt's counters so far, taken (left empty).
    pub fn take_counters(&mut self) -> crate::domain::Counters {
        std::mem::take(&mut self.counters)
    }

    /// Asks that, if this attempt fails and the item is retried, the next
    /// attempt wait at least `wait` (a rate limit's Retry-After, say),
    /// however short the job's `retry_delay`; at most
    /// [`MAX_RETRY_AFTER`]. The last call counts.
    pub fn set_retry_after(&mut self, wait: Duration) {
        self.retry_after = Some(wait.min(MAX_RETRY_AFTER));
    }

    /// The wait asked for by [`ItemContext::set_retry_after`], if any.
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }

    pub fn job_id(&self) -> JobId {
        self.job_id
    }

    /// The item's position in its job, from 0.
    pub fn index(&self) -> u32 {
        self.index
    }

    /// The item itself, as given to StartJob.
    pub fn payload(&self) -> &str {
        &self.payload
    }

    /// This attempt's number, from 1.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The last checkpoint saved for this item (by this attempt or an
    /// earlier one), if any.
    pub fn checkpoint(&self) -> Option<&[u8]> {
        self.checkpoint.as_deref()
    }

    /// Saves a checkpoint; returns once it is durable. A later attempt of
    /// this item (after a crash, a pause or a retry) starts from it.
    pub async fn save_checkpoint(&mut self, data: Vec<u8>) -> Result<(), CheckpointError> {
        self.sink.save(data.clone()).await?;
        self.checkpoint = Some(data);
        Ok(())
    }

    /// Why the item should stop, if it should. The item itself cancelled
    /// is a cancel, whatever the job's signal says.
    pub fn stop_reason(&self) -> Option<StopReason> {
        let reason = if self.item_cancelled() {
            Some(StopReason::Cancel)
        } else {
            *self.stop.borrow()
        };
        self.observe(reason);
        reason
    }

    /// Whether the item's own stop signal asks it to stop.
    fn item_cancelled(&self) -> bool {
        self.item_stop.as_ref().is_some_and(|stop| *stop.borrow())
    }

    fn observe(&self, reason: Option<StopReason>) {
        if reason.is_some() {
            *self.observed.lock().expect("observed lock") = reason;
        }
    }

    /// The last stop reason the handler was shown, if any.
    pub fn observed_stop(&self) -> Option<StopReason> {
        *self.observed.lock().expect("observed lock")
    }

    /// Whether the item should stop at its next checkpoint.
    pub fn stop_requested(&self) -> bool {
        self.stop_reason().is_some()
    }

    /// Resolves when the item is asked to stop (for `select!`), by the
    /// job's signal or its own.
    pub async fn stopped(&self) {
        let mut stop = self.stop.clone();
        // An error means the engine dropped the sender: stop as well.
        let job = async {
            if let Ok(reason) = stop.wait_for(|s| s.is_some()).await {
                self.observe(*reason);
            }
        };
        let item = async {
            match self.item_stop.clone() {
                Some(mut own) => {
                    // A dropped sender asks nothing of this item: only
                    // the job's signal counts then.
                    if own.wait_for(|cancelled| *cancelled).await.is_ok() {
                        self.observe(Some(StopReason::Cancel));
                    } else {
                        std::future::pending::<()>().await;
                    }
                }
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            () = job => {}
            () = item => {}
        }
    }
}

/// The executors a server knows, by name.
#[derive(Clone, Default)]
pub struct Registry {
    executors: BTreeMap<String, Arc<dyn Executor>>,
    /// The worker sessions remote executors hand items to.
    remote: Option<Arc<remote::hub::WorkerHub>>,
}

/// Built-in executors a server has not enabled, and how to enable them.
const DISABLED: &[(&str, &str)] = &[(
    "exec",
    "the exec executor runs programs on the server and is off here; the operator enables it with --allow-exec",
)];

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.executors.keys()).finish()
    }
}

impl Registry {
    /// An empty registry.
    pub fn empty() -> Self {
        Registry::default()
    }

    /// The built-in executors that run no outside program: `sleep`.
    pub fn with_builtins() -> Self {
        Registry::empty().with("sleep", sleep::SleepExecutor)
    }

    /// Adds `exec`, which runs programs on the server's host within what
    /// its settings allow. Servers enable it explicitly (`--allow-exec`).
    pub fn with_exec(self, exec: exec::ExecExecutor) -> Self {
        self.with("exec", exec)
    }

    /// Adds (or replaces) an executor under `name`.
    pub fn with(mut self, name: impl Into<String>, executor: impl Executor) -> Self {
        self.executors.insert(name.into(), Arc::new(executor));
        self
    }

    /// The registered names, sorted.
    pub fn names(&self) -> Vec<&str> {
        self.executors.keys().map(String::as_str).collect()
    }

    /// Finds the executor and prepares a job's handler; every problem is
    /// a field violation (`executor` or `params[…]`).
    pub fn prepare(
        &self,
        name: &str,
        job: &JobInfo<'_>,
    ) -> Result<Arc<dyn ItemHandler>, PrepareError> {
        let Some(executor) = self.executors.get(name) else {
            if let Some((_, why)) = DISABLED.iter().find(|(n, _)| *n == name) {
                return Err(PrepareError::Forbidden(why.to_string()));
            }
            return Err(PrepareError::Invalid(vec![FieldViolation::new(
                "executor",
                format!(
                    "unknown executor {name:?}; known executors: {}",
                    self.names().join(", ")
                ),
            )]));
        };
        executor.prepare_job(job)
    }

    /// Adds a remote executor for each of the hub's names; a name already
    /// taken by a built-in executor is refused.
    pub fn with_remote(mut self, hub: Arc<remote::hub::WorkerHub>) -> Result<Self, String> {
        for name in &hub.config().executors {
            if self.executors.contains_key(name) || DISABLED.iter().any(|(n, _)| n == name) {
                return Err(format!(
                    "--remote-executor {name}: {name:?} is an executor built into this server; \
                     name remote executors otherwise"
                ));
            }
            let executor = remote::RemoteExecutor::new(hub.clone(), name);
            self.executors.insert(name.clone(), Arc::new(executor));
        }
        self.remote = Some(hub);
        Ok(self)
    }

    /// The worker hub, when this server has remote executors.
    pub fn remote(&self) -> Option<&Arc<remote::hub::WorkerHub>> {
        self.remote.as_ref()
    }
}

/// Reads the params an executor accepts, refusing unknown keys: the shared
/// helper every executor uses so errors read the same.
pub struct Params<'a> {
    params: &'a BTreeMap<String, String>,
    known: &'static [&'static str],
    bad: Vec<FieldViolation>,
}

impl<'a> Params<'a> {
    pub fn new(params: &'a BTreeMap<String, String>, known: &'static [&'static str]) -> Self {
        let mut bad = Vec::new();
        for key in params.keys() {
            if !known.contains(&key.as_str()) {
                bad.push(FieldViolation::new(
                    format!("params[{key}]"),
                    format!("unknown parameter; known: {}", known.join(", ")),
                ));
            }
        }
        Params { params, known, bad }
    }

    /// A raw value, if present.
    pub fn get(&self, key: &str) -> Option<&'a str> {
        debug_assert!(self.known.contains(&key));
        self.params.get(key).map(String::as_str)
    }

    /// A parsed value, or `default` when absent; a parse error is recorded.
    pub fn parse_or<T: std::str::FromStr>(&mut self, key: &str, default: T, what: &str) -> T {
        match self.get(key) {
            None => default,
            Some(raw) => match raw.trim().parse() {
                Ok(v) => v,
                Err(_) => {
                    self.invalid(key, format!("{raw:?} is not {what}"));
                    default
                }
            },
        }
    }

    /// Records a problem with `key`.
    pub fn invalid(&mut self, key: &str, description: impl Into<String>) {
        self.bad
            .push(FieldViolation::new(format!("params[{key}]"), description));
    }

    /// The recorded problems, if any.
    pub fn finish(self) -> Result<(), Vec<FieldViolation>> {
        if self.bad.is_empty() {
            Ok(())
        } else {
            Err(self.bad)
        }
    }
}

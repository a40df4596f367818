//! The system of record. The [`Store`] trait is everything the engine may
//! ask of durable state; each method is one transaction. Implementations:
//! [`postgres::PgStore`].
//!
//! Rules every implementation keeps (docs/DESIGN.md, Durability):
//! - a job changes state only from the state the caller saw, and the event
//!   describing the change is appended in the same transaction;
//! - every write for a running item is conditional on its lease, so a
//!   worker that lost its claim can change nothing;
//! - item counters on the job row move in the same transaction as the items.

pub mod leases;
pub mod postgres;
pub mod sqlite;

pub use leases::Leases;

use crate::domain::{
    Command, Decision, Effect, EventBody, Item, ItemCounts, ItemPage, ItemSelection, ItemState,
    Job, JobEvent, JobId, JobSpec, JobState, PauseMode, Provenance, RateLimit, decide,
    page::{ItemCursor, JobCursor},
};
use async_trait::async_trait;
use std::collections::BTreeMap;

/// Why a store call failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("job {0} not found")]
    NotFound(JobId),
    /// The job was not in the state the caller expected (someone else
    /// changed it first); re-read and decide again.
    #[error("job is {current}, not {expected}")]
    Conflict {
        expected: JobState,
        current: JobState,
    },
    /// A Finish was asked for while items are still pending or running.
    /// `retry_in`: every pending item waits for its retry's delay, and the
    /// first of them may be claimed in this long (none: one may be claimed
    /// now, or nothing is pending).
    #[error("job still has {pending} pending and {running} running items")]
    NotFinished {
        pending: u64,
        running: u64,
        retry_in: Option<std::time::Duration>,
    },
    /// A finish was asked for while the job is open: it waits for more
    /// items until a call closes it.
    #[error("job is open: it ends only once closed")]
    JobOpen,
    /// A page would take the job past the most items a job may hold.
    #[error("the job holds {total} items; {adding} more would pass the limit of {limit}")]
    TooManyItems { total: u64, adding: u64, limit: u64 },
    /// CancelItems named an item past the job's items (`field`: the
    /// request's `indexes` or `range`).
    #[error("{field} names item {index}; the job holds {total} items")]
    NoSuchItem {
        field: &'static str,
        index: u32,
        total: u64,
    },
    /// The job has not ended, so it may not be deleted.
    #[error("job is {0}; only an ended job may be deleted")]
    NotEnded(JobState),
    /// An exclusive job's name is taken by a live exclusive job.
    #[error("a live exclusive job is named {name:?}: {job}")]
    NameTaken { name: String, job: JobId },
    /// AIP-155: the request id was first used for a different request.
    #[error("request id {0:?} was already used for a different request")]
    RequestIdReused(String),
    /// The database cannot be reached now (connection refused or lost, pool
    /// exhausted, server shutting down); the operation may be retried.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The caller's lease on the job is not valid any more (another
    /// replica owns the job now, or the lease expired): it may change
    /// nothing for the job.
    #[error("the lease on job {0} is lost")]
    Fenced(JobId),
    /// Anything else: a bug or corrupt data. Not retried.
    #[error("store error: {0}")]
    Internal(String),
}

impl StoreError {
    /// Whether retrying the same operation later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }
}

/// The result of [`Store::create_job`].
#[derive(Debug, Clone)]
pub struct Created {
    pub job: Job,
    /// False when an earlier call with the same request id created it.
    pub created: bool,
}

/// A state change to apply if the job is still in `from`.
#[derive(Debug, Clone)]
pub struct TransitionWrite {
    pub from: JobState,
    pub to: JobState,
    pub effects: Vec<Effect>,
    pub provenance: Provenance,
    /// Recorded on the event of a change to PAUSING.
    pub pause_mode: Option<PauseMode>,
    /// With `Effect::OpenPause`: when the job resumes by itself.
    pub resume_at: Option<chrono::DateTime<chrono::Utc>>,
}

impl TransitionWrite {
    /// What the state machine decides for a command the system gives
    /// (no caller: no pause mode, no resume time), with its reason; none
    /// when the decision changes nothing or refuses.
    pub fn decided(state: JobState, command: Command, reason: &str) -> Option<TransitionWrite> {
        match decide(state, command) {
            Ok(Decision::Transition { from, to, effects }) => Some(TransitionWrite {
                from,
                to,
                effects,
                provenance: Provenance::system(reason),
                pause_mode: None,
                resume_at: None,
            }),
            Ok(Decision::NoOp { .. }) | Err(_) => None,
        }
    }

    /// How a job found PAUSING or CANCELLING at start-up settles, in
    /// either store: as when its supervisor saw it drained (its running
    /// items were released already). None for the other states.
    pub fn recovered(state: JobState) -> Option<TransitionWrite> {
        match state {
            JobState::Pausing | JobState::Cancelling => {
                TransitionWrite::decided(state, Command::Drained, "recovered after a restart")
            }
            _ => None,
        }
    }
}

/// The store as the runner of one job writes to it: under the job's lease
/// when it runs under one (multi-replica mode), every write fenced by it;
/// plainly otherwise. The choice is made here, once, instead of at every
/// call.
#[derive(Clone)]
pub struct JobWriter {
    store: std::sync::Arc<dyn Store>,
    job: JobId,
    lease: Option<Lease>,
}

impl JobWriter {
    pub fn new(store: std::sync::Arc<dyn Store>, job: JobId, lease: Option<Lease>) -> Self {
        JobWriter { store, job, lease }
    }

    /// [`Store::transition`], fenced by the lease if there is one.
    pub async fn transition(&self, write: &TransitionWrite) -> Result<Job, StoreError> {
        match &self.lease {
            Some(lease) => self.store.transition_fenced(self.job, write, lease).await,
            None => self.store.transition(self.job, write).await,
        }
    }

    /// [`Store::release_items`], fenced by the lease if there is one.
    pub async fn release_items(&self) -> Result<u64, StoreError> {
        match &self.lease {
            Some(lease) => self.store.release_items_fenced(self.job, lease).await,
            None => self.store.release_items(self.job).await,
        }
    }

    /// Reads the job.
    pub async fn get_job(&self) -> Result<Job, StoreError> {
        self.store.get_job(self.job).await
    }
}

pub use crate::domain::spec::STARTED_PAUSED;

/// A new job's first event: created RUNNING, or PAUSED.
pub fn started_event(spec: &JobSpec) -> EventBody {
    let paused = spec.start.state() == JobState::Paused;
    EventBody::StateChanged {
        from: None,
        to: spec.start.state(),
        reason: Some(if paused { STARTED_PAUSED } else { "started" }.into()),
        requested_by: None,
        request_id: spec.request_id.clone(),
        pause_mode: paused.then_some(PauseMode::Graceful),
    }
}

/// What [`Store::add_items`] did: the job as committed, and where the
/// page's items went (a retried page: where they went the first time).
#[derive(Debug, Clone)]
pub struct Added {
    pub job: Job,
    /// The index of the page's first item.
    pub first: u32,
    /// How many items the page added.
    pub count: u32,
}

impl From<crate::domain::PageRefusal> for StoreError {
    fn from(refusal: crate::domain::PageRefusal) -> Self {
        use crate::domain::PageRefusal as R;
        match refusal {
            R::TakesNoItems(current) => StoreError::Conflict {
                expected: JobState::Running,
                current,
            },
            R::TooManyItems {
                total,
                adding,
                limit,
            } => StoreError::TooManyItems {
                total,
                adding,
                limit,
            },
        }
    }
}

/// What [`Store::cancel_items`] did: the job as committed, and the items
/// the call cancelled.
#[derive(Debug, Clone)]
pub struct ItemsCancelled {
    pub job: Job,
    /// How many items the call cancelled (those already ended are not
    /// counted).
    pub cancelled: u32,
    /// The indexes of those that were running, ascending: their attempts
    /// are to be interrupted.
    pub interrupted: Vec<u32>,
    /// The indexes of those that were pending with a retry's wait (over
    /// or not), ascending: nothing is to be claimed for them.
    pub waited: Vec<u32>,
}

impl ItemsCancelled {
    /// The answer of a call that ended `ended`, with the job as committed.
    pub fn new(job: Job, ended: crate::domain::cancel::EndedItems) -> Self {
        ItemsCancelled {
            job,
            cancelled: ended.cancelled.len() as u32,
            interrupted: ended.interrupted,
            waited: ended.waited,
        }
    }
}

impl From<crate::domain::CancelRefusal> for StoreError {
    fn from(refusal: crate::domain::CancelRefusal) -> Self {
        use crate::domain::CancelRefusal as R;
        match refusal {
            R::NotCancellable(current) => StoreError::Conflict {
                expected: JobState::Running,
                current,
            },
            R::OutOfRange {
                field,
                index,
                total,
            } => StoreError::NoSuchItem {
                field,
                index,
                total,
            },
        }
    }
}

/// What one retention batch deleted: the jobs, and their items in all.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pruned {
    pub jobs: Vec<JobId>,
    pub items: u64,
}

/// How much one retention batch ([`Store::delete_ended`]) may delete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PruneLimits {
    pub jobs: u32,
    pub items: u64,
}

impl PruneLimits {
    /// Which of `candidates` (id, items, as the stores read them; the
    /// oldest first) one batch deletes: the first always, then more while
    /// the jobs fit in `self.jobs` and their items in `self.items`.
    pub fn take(self, candidates: &[(uuid::Uuid, i64)]) -> Pruned {
        let mut items = 0u64;
        let mut taken = Vec::new();
        for &(id, n) in candidates.iter().take(self.jobs as usize) {
            let n = n.max(0) as u64;
            if !taken.is_empty() && items.saturating_add(n) > self.items {
                break;
            }
            items = items.saturating_add(n);
            taken.push(JobId(id));
        }
        Pruned { jobs: taken, items }
    }
}

/// A filter and page for [`Store::list_jobs`].
#[derive(Debug, Clone, Default)]
pub struct JobQuery {
    pub states: Vec<JobState>,
    /// Only jobs of exactly this name.
    pub name: Option<String>,
    /// Every label must match exactly.
    pub labels: BTreeMap<String, String>,
    pub limit: u32,
    pub after: Option<JobCursor>,
}

/// A filter and page for [`Store::list_items`].
#[derive(Debug, Clone)]
pub struct ItemQuery {
    pub job: JobId,
    pub states: Vec<ItemState>,
    pub limit: u32,
    pub after: Option<ItemCursor>,
}

/// One page of results, and where the next one starts.
#[derive(Debug, Clone)]
pub struct Page<T, C> {
    pub rows: Vec<T>,
    pub next: Option<C>,
}

/// An item handed to a worker by a claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimedItem {
    pub index: u32,
    pub payload: String,
    /// This attempt's number, from 1.
    pub attempt: u32,
    pub checkpoint: Option<Vec<u8>>,
    /// The claim's fencing token: every write for this item carries it.
    pub lease: i64,
}

/// What a worker reports about a running item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteKind {
    /// Save the executor's checkpoint; the item keeps running.
    Checkpoint(Vec<u8>),
    /// The item finished, with the executor's result if it gave one;
    /// `skip_reason` when the executor found it done already; the
    /// attempt's counters, added to the job's in the same commit.
    Succeeded {
        result: Option<String>,
        skip_reason: Option<String>,
        counters: crate::domain::Counters,
    },
    /// The attempt failed. The item is retried unless `permanent` or out
    /// of attempts, in which case it is FAILED. A retry is not claimed
    /// before `retry_after` has passed (from the commit).
    Failed {
        error: String,
        permanent: bool,
        retry_after: std::time::Duration,
    },
    /// The item stopped before finishing (immediate pause, shutdown) and
    /// goes back to PENDING with its checkpoint; `refund` gives the attempt
    /// back.
    Released { refund: bool },
    /// The item stopped because its job is cancelled.
    Cancelled,
}

impl WriteKind {
    /// A success with no result, skip or counters.
    pub fn succeeded() -> WriteKind {
        WriteKind::Succeeded {
            result: None,
            skip_reason: None,
            counters: Default::default(),
        }
    }

    /// A success that carries a skip reason or counters: the batch's lean
    /// path for plain successes does not write those.
    pub fn has_extras(&self) -> bool {
        matches!(self, WriteKind::Succeeded { skip_reason, counters, .. }
            if skip_reason.is_some() || !counters.is_empty())
    }
}

/// A lease-fenced write for one item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemWrite {
    pub job: JobId,
    pub index: u32,
    pub lease: i64,
    pub kind: WriteKind,
}

/// A request to claim up to `max` of a job's lowest pending items, only if
/// the job is RUNNING. An item waiting for its retry's delay is not
/// pending for a claim until the delay has passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClaimRequest {
    pub job: JobId,
    pub max: u32,
    /// No item below this index is pending (the claimer knows): where the
    /// search starts. 0 is always correct; a higher bound saves walking
    /// over the items already done.
    pub from_index: u32,
    /// Only retries whose wait is over (items a failure put back with a
    /// delay), found without walking the items between them: how a
    /// supervisor claims the retries that came due behind its bound.
    pub retries: bool,
}

/// Writes and claims committed together (group commit).
#[derive(Debug, Clone, Default)]
pub struct Batch {
    pub writes: Vec<ItemWrite>,
    pub claims: Vec<ClaimRequest>,
}

/// A job's counters and latest sequence after a commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pulse {
    pub job: JobId,
    pub state: JobState,
    pub counts: ItemCounts,
    pub last_seq: u64,
}

impl Pulse {
    /// The pulse of a job as read.
    pub fn of(job: &Job) -> Pulse {
        Pulse {
            job: job.id,
            state: job.state,
            counts: job.counts,
            last_seq: job.last_seq,
        }
    }
}

/// A replica's lease on one job (multi-replica mode): writes made under it
/// apply only while it is the job's current, unexpired lease.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Lease {
    pub owner: std::sync::Arc<str>,
    pub epoch: i64,
}

/// The leases a batch is written under: every job the batch touches must
/// be listed, and the writes and claims of a job whose lease is not valid
/// are refused (see [`BatchOutcome::fenced`]).
#[derive(Debug, Clone, Default)]
pub struct BatchFence {
    pub owner: std::sync::Arc<str>,
    pub epochs: Vec<(JobId, i64)>,
}

/// What a [`Batch`] did.
#[derive(Debug, Clone, Default)]
pub struct BatchOutcome {
    /// For each write, in order: whether it applied (false: the lease was
    /// lost or the item is no longer running).
    pub applied: Vec<bool>,
    /// For each claim, in order: the items claimed.
    pub claimed: Vec<Vec<ClaimedItem>>,
    /// Every job the batch touched, as committed.
    pub pulses: Vec<Pulse>,
    /// Jobs whose writes and claims were refused by the fence: the lease
    /// they were made under is not valid any more.
    pub fenced: Vec<JobId>,
}

/// What [`Store::recover`] found and did at boot.
#[derive(Debug, Clone, Default)]
pub struct Recovery {
    /// Jobs to run again (RUNNING), with their running items released.
    pub running: Vec<JobId>,
    /// Jobs left PAUSED.
    pub paused: Vec<JobId>,
    /// PAUSING jobs moved to PAUSED, CANCELLING jobs to CANCELLED.
    pub settled: Vec<(JobId, JobState)>,
    /// Items put back to PENDING because they were running at the crash.
    pub released_items: u64,
}

/// The durable state of every job.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Stores a new RUNNING job with all its items, or, when `spec` carries
    /// a request id already used by the same request, returns that job.
    async fn create_job(&self, id: JobId, spec: &JobSpec) -> Result<Created, StoreError>;

    async fn get_job(&self, id: JobId) -> Result<Job, StoreError>;

    async fn list_jobs(&self, query: &JobQuery) -> Result<Page<Job, JobCursor>, StoreError>;

    async fn list_items(&self, query: &ItemQuery) -> Result<Page<Item, ItemCursor>, StoreError>;

    /// Adds `page`'s items after the job's last one, with an ItemsAdded
    /// event, and closes the job if the page says so, all in one commit.
    /// Only a RUNNING, PAUSING or PAUSED job takes items (otherwise
    /// `Conflict` with its state); at most `max_items` in all
    /// (`TooManyItems`). A page whose request id was used before adds
    /// nothing and answers as it did then, or `RequestIdReused` if it is
    /// another page.
    async fn add_items(
        &self,
        id: JobId,
        page: &ItemPage,
        max_items: u64,
        requested_by: Option<&str>,
    ) -> Result<Added, StoreError>;

    /// CancelItems: ends the items `which` chooses that are still pending
    /// or running (in its states) CANCELLED, in one commit under the job's
    /// row lock: their leases and retry waits cleared (a worker still
    /// running one can write nothing more for it), the job's counters
    /// moved, and an ItemsCancelled event appended, unless nothing was
    /// cancelled (no event then). Only a RUNNING, PAUSING or PAUSED job
    /// takes it (otherwise `Conflict` with its state), and only for items
    /// it holds (otherwise `NoSuchItem`); either way nothing changes.
    async fn cancel_items(
        &self,
        id: JobId,
        which: &ItemSelection,
        reason: Option<&str>,
        requested_by: Option<&str>,
    ) -> Result<ItemsCancelled, StoreError>;

    /// Applies `write` if the job is still in `write.from`, appending a
    /// StateChanged event; `Conflict` with the current state otherwise.
    async fn transition(&self, id: JobId, write: &TransitionWrite) -> Result<Job, StoreError>;

    /// Changes the concurrency of a job that has not ended, appending a
    /// ConcurrencyChanged event; `Conflict` if the job has ended.
    async fn set_concurrency(
        &self,
        id: JobId,
        concurrency: u32,
        provenance: &Provenance,
    ) -> Result<Job, StoreError>;

    /// Changes the rate limit of a job that has not ended, appending a
    /// RateLimitChanged event; `Conflict` if the job has ended.
    async fn set_rate_limit(
        &self,
        id: JobId,
        rate: RateLimit,
        provenance: &Provenance,
    ) -> Result<Job, StoreError>;

    /// Deletes an ended job with its items, events and pause history, in
    /// one transaction, and returns it as it was; `NotEnded` if the job has
    /// not ended (checked under the job's lock, so a concurrent retry or
    /// a supervisor cannot reopen it meanwhile).
    async fn delete_job(&self, id: JobId) -> Result<Job, StoreError>;

    /// Retention: deletes jobs that ended before `before`, the oldest
    /// first, in one transaction: at most `limits.jobs` jobs, and no more
    /// jobs past the first once their items would pass `limits.items`.
    /// Returns the ids deleted (none: nothing is that old) and their items.
    async fn delete_ended(
        &self,
        before: chrono::DateTime<chrono::Utc>,
        limits: PruneLimits,
    ) -> Result<Pruned, StoreError>;

    /// Makes the room of the rows deleted so far reusable now, after the
    /// retention deleted many items (see `engine/retention.rs`).
    /// PostgreSQL: `VACUUM` of the items and events tables, skipped if
    /// another vacuum holds them (autovacuum waits up to a minute between
    /// looks at a database, and meanwhile a busy server's items table
    /// grows by what it ran). SQLite: nothing to do (a deleted row's page
    /// goes to the database's free list at once).
    async fn reclaim(&self) -> Result<(), StoreError>;

    /// PAUSING or PAUSED jobs whose open pause asked to resume by `now`.
    async fn due_resumes(
        &self,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<Vec<JobId>, StoreError>;

    /// Appends an event that changes no state (e.g. a worker restart).
    async fn append_event(&self, id: JobId, body: &EventBody) -> Result<u64, StoreError>;

    /// Events with a sequence greater than `after`, oldest first.
    async fn events_after(
        &self,
        id: JobId,
        after: u64,
        limit: u32,
    ) -> Result<Vec<JobEvent>, StoreError>;

    /// Commits item writes and claims in one transaction.
    async fn write_batch(&self, batch: &Batch) -> Result<BatchOutcome, StoreError>;

    /// At boot: releases the items of every unfinished job that were
    /// running when the process died, settles PAUSING and CANCELLING jobs,
    /// and says which jobs to run.
    async fn recover(&self) -> Result<Recovery, StoreError>;

    /// Puts a job's RUNNING items back to PENDING (attempt refunded): its
    /// supervisor died, and a new one takes over with new leases.
    async fn release_items(&self, id: JobId) -> Result<u64, StoreError>;

    /// Checks the store answers.
    async fn ping(&self) -> Result<(), StoreError>;

    /// The job's pending items that wait for their retry's delay, at most
    /// `limit` of them, the first to be due first: each with how long it
    /// still waits. A supervisor that takes over a job asks (the waits
    /// its predecessor knew of are only in the store).
    async fn waiting_retries(
        &self,
        id: JobId,
        limit: u32,
    ) -> Result<Vec<(u32, std::time::Duration)>, StoreError>;

    /// [`Store::write_batch`] under leases (multi-replica mode). Stores
    /// that serve one process only do not support it.
    async fn write_batch_fenced(
        &self,
        _batch: &Batch,
        _fence: &BatchFence,
    ) -> Result<BatchOutcome, StoreError> {
        Err(StoreError::Internal(
            "this store serves one process only: it has no leases".into(),
        ))
    }

    /// [`Store::transition`] only while `lease` is the job's valid lease;
    /// `Fenced` otherwise.
    async fn transition_fenced(
        &self,
        _id: JobId,
        _write: &TransitionWrite,
        _lease: &Lease,
    ) -> Result<Job, StoreError> {
        Err(StoreError::Internal(
            "this store serves one process only: it has no leases".into(),
        ))
    }

    /// [`Store::release_items`] only while `lease` is the job's valid
    /// lease; `Fenced` otherwise.
    async fn release_items_fenced(&self, _id: JobId, _lease: &Lease) -> Result<u64, StoreError> {
        Err(StoreError::Internal(
            "this store serves one process only: it has no leases".into(),
        ))
    }

    /// Connections (idle, in use), for metrics; `None` when not pooled.
    fn pool_stats(&self) -> Option<(usize, usize)> {
        None
    }

    /// How many jobs are in each live state (RUNNING, PAUSING, PAUSED,
    /// CANCELLING), for metrics. This default pages through `list_jobs`;
    /// stores override it with a count.
    async fn live_job_counts(&self) -> Result<Vec<(JobState, u64)>, StoreError> {
        let mut counts = Vec::new();
        for state in [
            JobState::Running,
            JobState::Pausing,
            JobState::Paused,
            JobState::Cancelling,
        ] {
            let mut n = 0u64;
            let mut query = JobQuery {
                states: vec![state],
                limit: 1000,
                ..JobQuery::default()
            };
            loop {
                let page = self.list_jobs(&query).await?;
                n += page.rows.len() as u64;
                match page.next {
                    Some(next) => query.after = Some(next),
                    None => break,
                }
            }
            counts.push((state, n));
        }
        Ok(counts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jobs(items: &[i64]) -> Vec<(uuid::Uuid, i64)> {
        items.iter().map(|&n| (uuid::Uuid::new_v4(), n)).collect()
    }

    #[test]
    fn a_retention_batch_stops_at_its_job_and_item_limits() {
        let limits = PruneLimits {
            jobs: 3,
            items: 100,
        };
        let c = jobs(&[40, 50, 5, 1]);
        // Three jobs at most.
        assert_eq!(
            limits.take(&c).jobs,
            vec![JobId(c[0].0), JobId(c[1].0), JobId(c[2].0)]
        );
        // Items: 40 + 50 fit, 40 + 50 + 20 do not.
        let c = jobs(&[40, 50, 20]);
        assert_eq!(limits.take(&c).jobs, vec![JobId(c[0].0), JobId(c[1].0)]);
        // A job larger than the limit on its own is still deleted, alone.
        let c = jobs(&[1_000, 1]);
        assert_eq!(limits.take(&c).jobs, vec![JobId(c[0].0)]);
        assert!(limits.take(&[]).jobs.is_empty());
        assert_eq!(limits.take(&jobs(&[40, 50, 20])).items, 90);
    }
}

//! What several replicas on one database share (multi-replica mode): who
//! is up, who owns which live job, and the notifications that carry
//! commands and changes between them. PostgreSQL only; the embedded store
//! serves one process.
//!
//! Ownership is a lease row per job (owner, epoch, expiry). The epoch only
//! grows; the owner renews its leases with its heartbeat, and every write
//! it makes for a job is fenced by (owner, epoch) in the same transaction
//! (see [`super::Store::write_batch_fenced`]), so a replica that lost a
//! job can change nothing for it. Expiry is judged by the database's clock.

use super::{Lease, StoreError};
use crate::domain::{ItemCounts, Job, JobId, JobState, RateLimit, Runner};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use std::time::Duration;
use tokio::sync::mpsc;

/// A lease this replica still holds after a heartbeat, with the job's
/// state as committed (the owner's polling fallback for missed notices).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    pub job: JobId,
    pub epoch: i64,
    pub state: JobState,
    pub last_seq: u64,
    pub concurrency: u32,
    pub rate: RateLimit,
    /// Its items in all (AddItems adds to them).
    pub total: u64,
    /// Whether it waits for more items.
    pub open: bool,
}

/// A live replica and how many live jobs it owns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaLoad {
    pub id: String,
    pub jobs: u64,
}

/// The cluster as a heartbeat sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Census {
    /// Jobs that need an owner (RUNNING, PAUSING, CANCELLING).
    pub live_jobs: u64,
    /// Replicas up and not draining, least loaded first.
    pub replicas: Vec<ReplicaLoad>,
}

/// Another live replica that lends its workers' slots: where to reach it
/// and the executors it has live worker sessions for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// Its replica id.
    pub id: String,
    /// Where it serves WorkerService (host:port).
    pub address: String,
    /// The executors its connected workers serve (sorted).
    pub executors: Vec<String>,
}

/// A live job that has no valid owner (never owned, released, or its
/// owner's lease expired), or whose lease names this replica although it
/// does not run it (left by a previous run of this replica, or assigned to
/// it by another).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Orphan {
    pub job: JobId,
    /// The lease names this replica.
    pub mine: bool,
}

/// A committed change of a job, as the database announced it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobChange {
    pub job: JobId,
    pub state: JobState,
    pub last_seq: u64,
    pub concurrency: u32,
    /// PAUSING with an immediate pause: items in flight are interrupted.
    pub immediate: bool,
    pub counts: ItemCounts,
    /// The job's rate limit (none: not said, by a replica of an earlier
    /// version).
    pub rate: Option<RateLimit>,
    /// Whether the job is open (AddItems; none: not said, by a replica of
    /// an earlier version).
    pub open: Option<bool>,
}

/// A message from one replica to the others.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum Message {
    /// The owner of `job` applied the change with sequence `seq`.
    Ack { job: JobId, seq: u64, from: String },
    /// `to` should take `job` (its lease names it now).
    Assign { job: JobId, to: String },
    /// The owner of `job` should interrupt its items in flight (a graceful
    /// pause whose drain deadline passed).
    Interrupt { job: JobId },
    /// `from` released its leases (shutdown, rebalancing): adopt now.
    Handover { from: String },
    /// `from` is up and takes jobs: count it in when placing new ones.
    Joined { from: String },
}

/// What a replica hears.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    Changed(JobChange),
    Message(Message),
    /// The listening connection was lost and is back: notices may have
    /// been missed, so look at the store.
    Reconnected,
}

/// The lease operations of a store that several replicas can share.
#[async_trait]
pub trait Leases: Send + Sync + 'static {
    /// Registers `me` (its id is `me.server`) as up and taking jobs
    /// (again, after a restart), with its host and pid.
    async fn join(&self, me: &Runner, ttl: Duration) -> Result<(), StoreError>;

    /// Renews `me`'s heartbeat (registering it if needed) and every lease
    /// of `me` that has not expired; returns those leases.
    async fn heartbeat(&self, me: &str, ttl: Duration) -> Result<Vec<Held>, StoreError>;

    /// Takes the lease of `job` for `me` if nobody holds a valid one or it
    /// names `me`: the epoch grows, the items left running under the old
    /// lease go back to pending (attempt refunded). Returns the lease and
    /// the job, or `None` if another replica holds it.
    async fn take_over(
        &self,
        job: JobId,
        me: &str,
        ttl: Duration,
    ) -> Result<Option<(Lease, Job)>, StoreError>;

    /// Gives the lease of `job` to `to` if nobody holds a valid one, and
    /// tells it. Returns whether it did.
    async fn assign(&self, job: JobId, to: &str, ttl: Duration) -> Result<bool, StoreError>;

    /// The valid owner of `job`, if any.
    async fn owner(&self, job: JobId) -> Result<Option<String>, StoreError>;

    /// The valid owner of `job` with its host and pid, since it took the
    /// lease (GetJob shows it).
    async fn runner(&self, job: JobId) -> Result<Option<Runner>, StoreError>;

    /// Up to `limit` orphans (see [`Orphan`]), those naming `me` first,
    /// skipping `running` (jobs `me` runs already).
    async fn orphans(
        &self,
        me: &str,
        running: &[JobId],
        limit: u32,
    ) -> Result<Vec<Orphan>, StoreError>;

    /// Says where the other replicas reach `me` (none: they cannot) and
    /// the executors it has live worker sessions for (at each heartbeat).
    async fn advertise(
        &self,
        me: &str,
        address: Option<&str>,
        worker_executors: &[String],
    ) -> Result<(), StoreError>;

    /// The other live replicas that can lend: those with an address and
    /// live worker sessions.
    async fn peers(&self, me: &str) -> Result<Vec<Peer>, StoreError>;

    /// The live replicas and jobs.
    async fn census(&self) -> Result<Census, StoreError>;

    /// Gives up leases of `me` (the jobs ended or were handed over):
    /// they expire now, keeping their epoch.
    async fn release(&self, me: &str, leases: &[(JobId, i64)]) -> Result<(), StoreError>;

    /// Marks `me` as draining: it takes no new jobs.
    async fn drain(&self, me: &str) -> Result<(), StoreError>;

    /// Gives up every lease of `me` and its heartbeat, and tells the others
    /// to adopt now (graceful shutdown).
    async fn leave(&self, me: &str) -> Result<(), StoreError>;

    /// Sends `message` to every replica.
    async fn send(&self, message: &Message) -> Result<(), StoreError>;

    /// Starts listening; notices arrive on the receiver until it is
    /// dropped. A lost connection is re-established (with a
    /// [`Notice::Reconnected`]).
    async fn listen(&self) -> Result<mpsc::Receiver<Notice>, StoreError>;
}

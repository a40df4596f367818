//! The group committer: one task that gathers item writes and claims from
//! every worker and supervisor and commits them in shared transactions
//! (docs/DESIGN.md, Durability). A caller's future resolves only after its write
//! is committed, so a result counts once it is durable.
//!
//! While one transaction commits, the next batch fills up, so batching adds
//! no delay when the store is fast and grows the batches when it is slow.
//! When the store is unreachable the batch is held and retried with
//! backoff: workers wait, nothing is dropped.

use super::{cluster::Book, hub::Hub};
use crate::store::{
    Batch, BatchFence, BatchOutcome, ClaimRequest, ClaimedItem, ItemWrite, Store, StoreError,
};
use backon::{BackoffBuilder, ExponentialBuilder};
use std::{sync::Arc, time::Duration};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

/// Most operations in one transaction.
const MAX_BATCH: usize = 1024;

/// At most this many yields to other tasks while gathering a batch, when
/// fewer requests have come in than the previous commit answered.
const GATHER_YIELDS: u32 = 32;

/// Why a write was not committed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum WriteError {
    #[error("{0}")]
    Store(String),
    #[error("the writer has stopped")]
    Closed,
}

enum Op {
    Write(ItemWrite),
    /// With the epoch of the lease the claimer runs under (multi-replica).
    Claim(ClaimRequest, Option<i64>),
}

enum Reply {
    Applied(bool),
    Claimed(Vec<ClaimedItem>),
}

struct Request {
    op: Op,
    reply: oneshot::Sender<Result<Reply, WriteError>>,
}

/// A handle to the group committer; cheap to clone.
#[derive(Clone)]
pub struct Writer {
    tx: mpsc::UnboundedSender<Request>,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Writer")
    }
}

impl Writer {
    /// Starts the committer. It runs until every handle is dropped, or
    /// `abort` fires while it waits for an unreachable store.
    /// In multi-replica mode (`book`), every batch is fenced by the leases
    /// this replica holds.
    pub fn start(
        store: Arc<dyn Store>,
        hub: Arc<Hub>,
        abort: CancellationToken,
        book: Option<Arc<Book>>,
    ) -> Writer {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(store, hub, rx, abort, book));
        Writer { tx }
    }

    async fn submit(&self, op: Op) -> Result<Reply, WriteError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Request { op, reply })
            .map_err(|_| WriteError::Closed)?;
        rx.await.map_err(|_| WriteError::Closed)?
    }

    /// Queues a lease-fenced item write now and returns a ticket to wait
    /// for its commit later (a worker runs its next item meanwhile).
    pub fn submit_write(&self, write: ItemWrite) -> WriteTicket {
        let (reply, rx) = oneshot::channel();
        let sent = self
            .tx
            .send(Request {
                op: Op::Write(write),
                reply,
            })
            .is_ok();
        WriteTicket { rx, sent }
    }

    /// Commits a lease-fenced item write; `Ok(false)` when the lease was
    /// lost (someone else owns the item now).
    pub async fn write(&self, write: ItemWrite) -> Result<bool, WriteError> {
        match self.submit(Op::Write(write)).await? {
            Reply::Applied(applied) => Ok(applied),
            Reply::Claimed(_) => unreachable!("a write is answered with Applied"),
        }
    }

    /// Claims up to `claim.max` pending items of a RUNNING job (under
    /// the lease of `epoch`, in multi-replica mode).
    pub async fn claim(
        &self,
        claim: ClaimRequest,
        epoch: Option<i64>,
    ) -> Result<Vec<ClaimedItem>, WriteError> {
        match self.submit(Op::Claim(claim, epoch)).await? {
            Reply::Claimed(items) => Ok(items),
            Reply::Applied(_) => unreachable!("a claim is answered with Claimed"),
        }
    }
}

/// A write on its way to the store; see [`Writer::submit_write`].
pub struct WriteTicket {
    rx: oneshot::Receiver<Result<Reply, WriteError>>,
    sent: bool,
}

impl WriteTicket {
    /// Waits for the commit: `Ok(false)` when the lease was lost.
    pub async fn wait(self) -> Result<bool, WriteError> {
        if !self.sent {
            return Err(WriteError::Closed);
        }
        match self.rx.await.map_err(|_| WriteError::Closed)?? {
            Reply::Applied(applied) => Ok(applied),
            Reply::Claimed(_) => unreachable!("a write is answered with Applied"),
        }
    }
}

async fn run(
    store: Arc<dyn Store>,
    hub: Arc<Hub>,
    mut rx: mpsc::UnboundedReceiver<Request>,
    abort: CancellationToken,
    book: Option<Arc<Book>>,
) {
    // A request that could not join the previous batch (same item twice).
    let mut carried: Option<Request> = None;
    // Writes answered by the previous commit: their workers are about to
    // hand in their next outcomes.
    let mut woken = 0usize;
    // The items of the batch being gathered (kept, cleared, between
    // batches).
    let mut items: foldhash::HashSet<(crate::domain::JobId, u32)> =
        foldhash::HashSet::with_capacity_and_hasher(MAX_BATCH, Default::default());
    loop {
        let first = match carried.take() {
            Some(r) => r,
            None => match rx.recv().await {
                Some(r) => r,
                None => return,
            },
        };
        let mut requests = vec![first];
        items.clear();
        if let Op::Write(w) = &requests[0].op {
            items.insert((w.job, w.index));
        }
        // Gather what is queued; then, until as many writes have come in
        // as the previous commit answered, let the tasks it woke run for a
        // moment (yields, no timer) and gather what they hand in: workers
        // of short items come back within microseconds, and one batch for
        // all of them costs one commit instead of two half-sized ones
        // chasing each other. Workers of long items do not come back soon:
        // the yields run out and the batch goes.
        let mut yields = 0;
        let mut writes = usize::from(matches!(requests[0].op, Op::Write(_)));
        while requests.len() < MAX_BATCH && carried.is_none() {
            match rx.try_recv() {
                Ok(next) => {
                    // One write per item per transaction keeps the
                    // UPDATE … FROM UNNEST statements unambiguous.
                    if let Op::Write(w) = &next.op
                        && !items.insert((w.job, w.index))
                    {
                        carried = Some(next);
                        break;
                    }
                    writes += usize::from(matches!(next.op, Op::Write(_)));
                    requests.push(next);
                }
                Err(_) if writes < woken && yields < GATHER_YIELDS => {
                    yields += 1;
                    tokio::task::yield_now().await;
                }
                Err(_) => break,
            }
        }
        woken = writes;
        commit(&*store, &hub, requests, &abort, book.as_deref()).await;
    }
}

async fn commit(
    store: &dyn Store,
    hub: &Arc<Hub>,
    requests: Vec<Request>,
    abort: &CancellationToken,
    book: Option<&Book>,
) {
    let mut batch = Batch::default();
    for r in &requests {
        match &r.op {
            Op::Write(w) => batch.writes.push(w.clone()),
            Op::Claim(c, epoch) => {
                let mut c = *c;
                // A claim from a supervisor whose lease was replaced since
                // (by this replica) takes nothing.
                if let Some(book) = book
                    && epoch.is_some()
                    && book.epoch(c.job) != *epoch
                {
                    c.max = 0;
                }
                batch.claims.push(c);
            }
        }
    }
    let fence = book.map(|book| {
        book.fence(
            batch
                .writes
                .iter()
                .map(|w| w.job)
                .chain(batch.claims.iter().map(|c| c.job)),
        )
    });
    let started = std::time::Instant::now();
    let result = commit_with_retry(store, &batch, fence.as_ref(), abort).await;
    crate::metrics::store_transaction("batch", started.elapsed());
    crate::metrics::batch_size(batch.writes.len(), batch.claims.len());
    match result {
        Ok(outcome) => {
            for pulse in &outcome.pulses {
                hub.publish(*pulse);
            }
            if let Some(book) = book {
                for job in &outcome.fenced {
                    book.report_lost(*job);
                }
            }
            let BatchOutcome {
                applied, claimed, ..
            } = outcome;
            let (mut applied, mut claimed) = (applied.into_iter(), claimed.into_iter());
            for r in requests {
                let reply = match r.op {
                    Op::Write(_) => Reply::Applied(applied.next().unwrap_or(false)),
                    Op::Claim(..) => Reply::Claimed(claimed.next().unwrap_or_default()),
                };
                let _ = r.reply.send(Ok(reply));
            }
        }
        Err(e) => {
            for r in requests {
                let _ = r.reply.send(Err(e.clone()));
            }
        }
    }
}

/// Commits, retrying while the store is unreachable (with backoff capped at
/// a few seconds) until it answers or `abort` fires.
async fn commit_with_retry(
    store: &dyn Store,
    batch: &Batch,
    fence: Option<&BatchFence>,
    abort: &CancellationToken,
) -> Result<BatchOutcome, WriteError> {
    let mut backoff = ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(50))
        .with_max_delay(Duration::from_secs(3))
        .with_jitter()
        .without_max_times()
        .build();
    loop {
        let written = match fence {
            Some(fence) => store.write_batch_fenced(batch, fence).await,
            None => store.write_batch(batch).await,
        };
        match written {
            Ok(outcome) => return Ok(outcome),
            Err(e @ StoreError::Unavailable(_)) => {
                let delay = backoff.next().unwrap_or(Duration::from_secs(3));
                tracing::warn!(error = %e, ?delay, writes = batch.writes.len(),
                    claims = batch.claims.len(), "store unavailable; holding the batch");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = abort.cancelled() => return Err(WriteError::Store(e.to_string())),
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "batch refused by the store");
                return Err(WriteError::Store(e.to_string()));
            }
        }
    }
}

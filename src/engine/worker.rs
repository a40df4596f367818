//! The `Worker` actor: runs one item at a time through the job's handler,
//! commits the outcome through the group committer, then reports to its
//! supervisor. It owns nothing durable: a restarted worker gets its next
//! item (with that item's stored checkpoint) from the supervisor.
//!
//! A panic in the handler fails the actor; the supervisor sees it in
//! `handle_supervisor_evt`, retries the item and restarts the worker.

use super::{
    queue::{Current, WorkQueue},
    writer::{WriteError, WriteTicket, Writer},
};
use crate::{
    domain::{Backoff, JobId},
    executor::{CheckpointError, CheckpointSink, ItemContext, ItemError, ItemHandler, StopReason},
    store::{ClaimedItem, ItemWrite, WriteKind},
};
use async_trait::async_trait;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use std::{collections::VecDeque, sync::Arc, time::Duration};
use tokio::sync::watch;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// What a worker needs for every item of its job.
#[derive(Clone)]
pub struct WorkerArgs {
    pub job: JobId,
    /// The worker's place in its supervisor's pool.
    pub slot: usize,
    pub handler: Arc<dyn ItemHandler>,
    pub writer: Writer,
    /// The job-wide stop signal (immediate pause, cancel, shutdown).
    pub stop: watch::Receiver<Option<StopReason>>,
    /// Where to report finished items.
    pub supervisor: ActorRef<super::supervisor::SupervisorMsg>,
    /// Live progress of the job's items in flight.
    pub in_flight: Arc<super::hub::InFlight>,
    /// The job's claimed items; the worker takes its next item here.
    pub queue: Arc<WorkQueue>,
    /// The item this worker runs, readable by the supervisor.
    pub current: Current,
    /// How many outcomes may commit while the worker runs its next items
    /// (0: each outcome commits before the next item starts).
    pub pipeline_depth: u32,
    /// The job's attempts per item (to tell a retry from a final failure).
    pub max_attempts: u32,
    /// The waits between an item's attempts.
    pub backoff: Backoff,
    /// The StartJob call's span, which item spans link to.
    pub start: Option<opentelemetry::trace::SpanContext>,
    /// The job's executor, for metrics.
    pub executor: Arc<str>,
}

pub enum WorkerMsg {
    /// Take items from the queue until it is closed or empty.
    Wake,
}

/// How an item's attempt ended, as committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finished {
    Succeeded,
    /// Failed; `retry` when it goes back to pending for another attempt,
    /// with how long it waits before it may be claimed (one field for
    /// both: the supervisor's messages stay small).
    Failed {
        retry: Option<Duration>,
        error: String,
    },
    /// Stopped and back to pending.
    Released,
    Cancelled,
    /// The lease was lost: someone else owns the item; nothing was written.
    LeaseLost,
    /// The outcome could not be committed (store refused it for good).
    NotCommitted(String),
}

pub struct Worker;

impl Actor for Worker {
    type Msg = WorkerMsg;
    type State = WorkerArgs;
    type Arguments = WorkerArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: WorkerArgs,
    ) -> Result<WorkerArgs, ActorProcessingErr> {
        Ok(args)
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        msg: WorkerMsg,
        state: &mut WorkerArgs,
    ) -> Result<(), ActorProcessingErr> {
        let WorkerMsg::Wake = msg;
        // Boxed: ractor keeps one future for an actor's whole processing
        // loop, and its own wrappers around the handler more than double
        // the room it takes there (see the supervisor's `handle`).
        Box::pin(work(state)).await;
        Ok(())
    }
}

/// Takes items from the queue until it is closed or empty, then tells the
/// supervisor.
async fn work(state: &mut WorkerArgs) {
    // In pipelined mode, earlier items' outcomes commit while the next
    // items run (at most `pipeline_depth` outstanding, settled in order:
    // the committer commits in the order it was handed writes).
    let depth = state.pipeline_depth as usize;
    let mut outstanding: VecDeque<Outcome> = VecDeque::new();
    while let Some((item, seat)) = state.queue.take_into(&state.current) {
        let started = std::time::Instant::now();
        let outcome = run_item(state, item, seat, started).await;
        if depth == 0 {
            settle(state, outcome).await;
            continue;
        }
        while outstanding.len() >= depth {
            if let Some(oldest) = outstanding.pop_front() {
                settle(state, oldest).await;
            }
        }
        {
            let mut slot = state.current.lock().expect("slot lock");
            slot.running = None;
            slot.committing += 1;
        }
        outstanding.push_back(outcome);
    }
    for previous in outstanding {
        settle(state, previous).await;
    }
    let _ = state
        .supervisor
        .cast(super::supervisor::SupervisorMsg::Idle { slot: state.slot });
}

/// An item's outcome on its way to the store.
struct Outcome {
    index: u32,
    expected: Finished,
    /// The write on its way to the store; none when nothing is written.
    ticket: Option<WriteTicket>,
    started: std::time::Instant,
    /// A success's counters, counted live and in metrics once committed.
    counters: crate::domain::Counters,
}

/// Waits for an outcome's commit, frees the slot and reports to the
/// supervisor.
async fn settle(args: &WorkerArgs, outcome: Outcome) {
    let finished = match outcome.ticket {
        None => outcome.expected,
        Some(ticket) => match ticket.wait().await {
            Ok(true) => outcome.expected,
            Ok(false) => Finished::LeaseLost,
            Err(WriteError::Store(e)) => Finished::NotCommitted(e),
            Err(WriteError::Closed) => Finished::NotCommitted("the writer has stopped".into()),
        },
    };
    if finished == Finished::Succeeded && !outcome.counters.is_empty() {
        args.in_flight.counted(&outcome.counters);
        crate::metrics::item_counters(&args.executor, &outcome.counters);
    }
    {
        // The outcome is committed: the item is no longer ours.
        let mut slot = args.current.lock().expect("slot lock");
        // Pipelined: this outcome was counted as committing (never in
        // the other mode, where the count stays 0).
        slot.committing = slot.committing.saturating_sub(1);
        if slot
            .running
            .as_ref()
            .is_some_and(|i| i.index == outcome.index)
        {
            slot.running = None;
        }
    }
    let (slot, index, took) = (args.slot, outcome.index, outcome.started.elapsed());
    let failed = matches!(finished, Finished::Failed { .. });
    let done = move |ack| super::supervisor::SupervisorMsg::Done {
        slot,
        index,
        finished,
        took,
        ack,
    };
    if failed {
        // A failure may trip the job's breaker: take no other item before
        // the supervisor has counted it (see `SupervisorMsg::Done::ack`).
        let _ = args.supervisor.call(|ack| done(Some(ack)), None).await;
    } else {
        let _ = args.supervisor.cast(done(None));
    }
}

/// Saves checkpoints through the writer under the item's lease.
struct LeasedSink {
    writer: Writer,
    job: JobId,
    index: u32,
    lease: i64,
}

#[async_trait]
impl CheckpointSink for LeasedSink {
    async fn save(&self, data: Vec<u8>) -> Result<(), CheckpointError> {
        let write = ItemWrite {
            job: self.job,
            index: self.index,
            lease: self.lease,
            kind: WriteKind::Checkpoint(data),
        };
        match self.writer.write(write).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(CheckpointError::LeaseLost),
            Err(e) => Err(CheckpointError::Store(e.to_string())),
        }
    }
}

/// Runs one attempt of an item and queues its outcome for the store.
async fn run_item(
    args: &WorkerArgs,
    item: ClaimedItem,
    seat: Option<crate::executor::remote::Seat>,
    started: std::time::Instant,
) -> Outcome {
    // Each attempt is a trace of its own (a job outlives any call), linked
    // to the call that started the job.
    // At debug level under a target of its own: the trace exporter takes
    // it (see telemetry), the logs do not, and without an exporter it
    // costs nothing.
    let span = tracing::debug_span!(target: "jobvisor::item", parent: None, "item",
        job_id = %args.job, index = item.index, attempt = item.attempt);
    if let Some(start) = &args.start {
        span.add_link(start.clone());
    }
    let sink = Arc::new(LeasedSink {
        writer: args.writer.clone(),
        job: args.job,
        index: item.index,
        lease: item.lease,
    });
    let mut ctx = ItemContext::new(
        args.job,
        item.index,
        item.payload,
        item.attempt,
        item.checkpoint,
        args.stop.clone(),
        sink,
    )
    .with_progress(args.in_flight.clone())
    .with_seat(seat)
    // CancelItems stops this item alone through it (the supervisor finds
    // it in the slot).
    .with_item_stop(
        args.current
            .lock()
            .expect("slot lock")
            .item_stop()
            .subscribe(),
    );
    let result = args.handler.run(&mut ctx).instrument(span.clone()).await;
    args.in_flight.clear(item.index);
    // The reason the handler saw, if it saw one: a resume may have cleared
    // the signal since.
    let stop = ctx.observed_stop().or(*args.stop.borrow());
    let mut kind = outcome_write(result, stop);
    if matches!(kind, WriteKind::Succeeded { .. }) {
        let counters = ctx.take_counters();
        // A job holds a bounded set of counter names: a success that
        // would pass it fails instead, for good (another attempt would
        // report the same names).
        let reserved = if counters.is_empty() {
            Ok(())
        } else {
            args.in_flight.reserve(&counters)
        };
        kind = match reserved {
            Ok(()) => WriteKind::Succeeded {
                result: ctx.take_result(),
                skip_reason: ctx.take_skip(),
                counters,
            },
            Err(error) => WriteKind::Failed {
                error,
                permanent: true,
                retry_after: Duration::ZERO,
            },
        };
    }
    match &mut kind {
        // The last attempt's failure is for good: said so, the store need
        // not treat the item as going back to pending (it decides the same
        // from the attempts it counted).
        WriteKind::Failed { permanent, .. } if item.attempt >= args.max_attempts => {
            *permanent = true;
        }
        // The job's backoff, or longer if the handler asked for it.
        WriteKind::Failed {
            permanent: false,
            retry_after,
            ..
        } => {
            let backoff = args.backoff.retry_after(item.attempt, fastrand::f64());
            *retry_after = backoff.max(ctx.retry_after().unwrap_or_default());
        }
        _ => {}
    }
    let expected = match &kind {
        WriteKind::Succeeded { .. } => Finished::Succeeded,
        // Out of attempts is permanent by now (above); the store applies
        // the same rule.
        WriteKind::Failed {
            permanent,
            error,
            retry_after,
        } => Finished::Failed {
            retry: (!permanent).then_some(*retry_after),
            error: error.clone(),
        },
        WriteKind::Released { .. } => Finished::Released,
        WriteKind::Cancelled => Finished::Cancelled,
        WriteKind::Checkpoint(_) => unreachable!("an outcome is never a checkpoint"),
    };
    if let WriteKind::Failed { error, .. } = &kind {
        tracing::debug!(parent: &span, job_id = %args.job, index = item.index,
            attempt = item.attempt, %error, "item attempt failed");
    }
    // An item stopped by a cancel is not written: the job is CANCELLING
    // (or already ended), and the transition that ends it cancels every
    // item still claimed, this one included (`CancelRemaining`). Writing it
    // first would put a commit between the workers stopping and CANCELLED.
    let counters = match &kind {
        WriteKind::Succeeded { counters, .. } if !counters.is_empty() => counters.clone(),
        _ => Default::default(),
    };
    let ticket = (kind != WriteKind::Cancelled).then(|| {
        args.writer.submit_write(ItemWrite {
            job: args.job,
            index: item.index,
            lease: item.lease,
            kind,
        })
    });
    Outcome {
        index: item.index,
        expected,
        ticket,
        started,
        counters,
    }
}

/// What to store for an attempt that ended with `result` while the job's
/// stop signal was `stop`.
pub fn outcome_write(result: Result<(), ItemError>, stop: Option<StopReason>) -> WriteKind {
    match (result, stop) {
        (Ok(()), _) => WriteKind::succeeded(),
        (Err(ItemError::Permanent(error)), _) => WriteKind::Failed {
            error,
            permanent: true,
            retry_after: Duration::ZERO,
        },
        // A stop was asked for: an interruption, or an error the stop
        // probably caused, keeps the attempt.
        (Err(ItemError::Interrupted | ItemError::Retryable(_)), Some(StopReason::Cancel)) => {
            WriteKind::Cancelled
        }
        (
            Err(ItemError::Interrupted | ItemError::Retryable(_)),
            Some(StopReason::Pause | StopReason::Shutdown),
        ) => WriteKind::Released { refund: true },
        (Err(ItemError::Retryable(error)), None) => WriteKind::Failed {
            error,
            permanent: false,
            retry_after: Duration::ZERO,
        },
        // Handed back untried (a remote worker draining): pending again,
        // the attempt not counted, unless the job is being cancelled.
        (Err(ItemError::Handback(_)), Some(StopReason::Cancel)) => WriteKind::Cancelled,
        (Err(ItemError::Handback(_)), _) => WriteKind::Released { refund: true },
        (Err(ItemError::Interrupted), None) => WriteKind::Failed {
            error: "the executor stopped the item without being asked to".into(),
            permanent: false,
            retry_after: Duration::ZERO,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_follow_the_stop_signal() {
        use ItemError as E;
        use StopReason as S;
        assert_eq!(
            outcome_write(Ok(()), Some(S::Cancel)),
            WriteKind::succeeded()
        );
        assert_eq!(
            outcome_write(Err(E::Interrupted), Some(S::Pause)),
            WriteKind::Released { refund: true }
        );
        assert_eq!(
            outcome_write(Err(E::Interrupted), Some(S::Shutdown)),
            WriteKind::Released { refund: true }
        );
        assert_eq!(
            outcome_write(Err(E::Retryable("x".into())), Some(S::Cancel)),
            WriteKind::Cancelled
        );
        assert_eq!(
            outcome_write(Err(E::Permanent("x".into())), Some(S::Pause)),
            WriteKind::Failed {
                error: "x".into(),
                permanent: true,
                retry_after: Duration::ZERO,
            }
        );
        assert!(matches!(
            outcome_write(Err(E::Interrupted), None),
            WriteKind::Failed {
                permanent: false,
                ..
            }
        ));
    }
}

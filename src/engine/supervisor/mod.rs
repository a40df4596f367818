//! The `JobSupervisor` actor: one per live job. It holds the job's state as
//! last committed, spawns `concurrency` workers linked to itself, claims
//! items (through the group committer) and hands them out, applies pause /
//! resume / cancel, notices when the job is drained or finished and commits
//! that, and restarts workers that die.
//!
//! The store is the truth. Control calls are committed by the engine and
//! then told to the supervisor with the event's sequence; the supervisor's
//! own transitions are guarded by the state it believes, and a conflict
//! makes it re-read the job. All its I/O runs in spawned tasks that report
//! back as messages, so the supervisor always answers control calls at
//! once.
//!
//! Its decisions are data: each message goes to the pure core
//! ([`state::Core`], its phase one [`state::Phase`]), which returns
//! [`action::Action`]s; after every message the core decides what comes
//! next (`plan.rs`). This actor only carries the actions out
//! (`perform.rs`): the claims and commits (`io.rs`), the workers
//! (`pool.rs`), timers, signals and the work queue.

mod action;
mod claims;
mod io;
mod items;
mod perform;
mod plan;
mod pool;
mod settle;
mod state;
#[cfg(test)]
mod testing;

use super::{Runtime, queue::WorkQueue, worker::Finished, writer::WriteError};
use crate::{
    domain::{Backoff, Job, JobState, RateLimit},
    executor::{ItemHandler, StopReason},
    metrics::ItemOutcome,
    store::{ClaimedItem, Lease, StoreError},
};
use action::Action;
use pool::Pool;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use state::{Committed, Core, Settings};
use std::{
    sync::Arc,
    time::{Duration, Instant},
};
use tokio::sync::watch;

pub struct SupervisorArgs {
    pub job: Job,
    pub handler: Arc<dyn ItemHandler>,
    pub rt: Arc<Runtime>,
    /// The StartJob call's span, which item spans link to.
    pub start: Option<opentelemetry::trace::SpanContext>,
    /// Multi-replica mode: the lease the job runs under; every write is
    /// fenced by it.
    pub lease: Option<Lease>,
}

pub enum SupervisorMsg {
    /// A caller's transition was committed as event `seq`; reply once it
    /// is applied (claims stopped, interrupts sent).
    Changed {
        state: JobState,
        seq: u64,
        interrupt: bool,
        /// When the caller asked (for the request-to-effect metrics).
        asked: Instant,
        reply: RpcReplyPort<()>,
    },
    /// Escalate a graceful pause in progress to an immediate one.
    Interrupt(RpcReplyPort<()>),
    /// Multi-replica mode: the database announced a committed change of
    /// the job (by any replica); apply it if it is news. Replies whether
    /// anything changed.
    Observed {
        state: JobState,
        seq: u64,
        concurrency: u32,
        /// The job's rate limit, if the notice said.
        rate: Option<RateLimit>,
        interrupt: bool,
        /// The job's items in all, and whether it is open, if the notice
        /// said.
        items: Option<(u64, bool)>,
        /// The job's cancelled items: more than last heard, CancelItems
        /// may have cancelled items this supervisor runs.
        cancelled: u64,
        reply: RpcReplyPort<bool>,
    },
    /// Items were added to the job, or it was closed (AddItems, committed
    /// here): it holds `total` items and is `open` or not.
    Grown {
        total: u64,
        open: bool,
        reply: RpcReplyPort<()>,
    },
    /// Chosen items of the job were cancelled (CancelItems, committed
    /// here: the store ended them and cleared their leases). `indexes`:
    /// those that were running (claimed), to drop from the queue or
    /// interrupt; `waited`: those that were waiting for a retry, not to be
    /// waited for. Reply once the interrupts are sent.
    ItemsCancelled {
        indexes: Vec<u32>,
        waited: Vec<u32>,
        reply: RpcReplyPort<()>,
    },
    /// Multi-replica mode: items this supervisor had claimed (index and
    /// lease) are no longer running in the store (CancelItems through
    /// another replica): stop them, as for `ItemsCancelled`.
    Gone(Vec<(u32, i64)>),
    /// Multi-replica mode: the lease is lost; stop at once, writing
    /// nothing more.
    Abandon,
    /// A claim came back.
    Claimed(Result<Vec<ClaimedItem>, WriteError>),
    /// A worker found the queue closed or empty and waits to be woken.
    Idle { slot: usize },
    /// A worker finished an item (its outcome is committed).
    Done {
        slot: usize,
        index: u32,
        finished: Finished,
        /// From the item's start to its committed outcome.
        took: Duration,
        /// A worker whose item failed waits for this answer before it
        /// takes another item: if the failure trips the breaker, the
        /// answer comes once the job is no longer RUNNING, so no item
        /// starts after the one that tripped it.
        ack: Option<RpcReplyPort<()>>,
    },
    /// The supervisor's own transition came back. Boxed, as is
    /// `Refreshed`: a message is held several times over in the future
    /// ractor keeps for the actor's processing loop, so the largest
    /// variant sets the size of every live supervisor (a `Job` inline made
    /// this enum 352 bytes).
    Settled(Box<Result<Job, StoreError>>),
    /// A fresh read of the job (after a conflict).
    Refreshed(Box<Result<Job, StoreError>>),
    /// Try again what failed on an unreachable store.
    Retry,
    /// Check the job's running-time budget.
    Tick,
    /// The job's rate limit was changed (committed); reply once the next
    /// start keeps to it.
    RateLimit {
        rate: RateLimit,
        reply: RpcReplyPort<()>,
    },
    /// The wake-up set for this time: retries whose delay has passed may
    /// be claimed, and the next start under the rate limit may be due.
    WakeUp(Instant),
    /// Retries waiting in the store when the supervisor started, with how
    /// long each still waits.
    Waiting(Vec<(u32, Duration)>),
    /// The job's concurrency was changed (committed); reply once the
    /// workers are added or told to go.
    Resize {
        concurrency: u32,
        reply: RpcReplyPort<()>,
    },
    /// The server is shutting down: stop items at their next checkpoint,
    /// leave the job as it is in the store, reply, exit.
    Shutdown(RpcReplyPort<()>),
    /// Remote executors: the worker hub granted a worker's slot.
    Seated(crate::executor::remote::Seat),
    /// Remote executors: a worker connected while the supervisor was
    /// about to wait for one with no actors; decide again.
    Served,
}

/// The actor's state: the pure core, and what carries its actions out.
pub struct SupervisorState {
    core: Core,
    /// The executor's name, for metrics.
    executor: String,
    handler: Arc<dyn ItemHandler>,
    rt: Arc<Runtime>,
    pool: Pool,
    /// Claimed items not yet taken by a worker.
    queue: Arc<WorkQueue>,
    /// Workers' stop signal; shared by all of them.
    stop: watch::Sender<Option<StopReason>>,
    /// Live progress of the items in flight, shown by WatchJob.
    in_flight: Arc<super::hub::InFlight>,
    /// Set while shutting down: whom to tell when done.
    shutdown: Option<RpcReplyPort<()>>,
    /// Workers waiting until the breaker's pause is committed (or the job
    /// changed otherwise).
    held_acks: Vec<RpcReplyPort<()>>,
    /// The StartJob call's span, which item spans link to.
    start: Option<opentelemetry::trace::SpanContext>,
    /// Multi-replica mode: the lease every write is fenced by.
    lease: Option<Lease>,
    /// When a cancel was asked, until it is committed (for the
    /// request-to-effect metric).
    cancel_asked: Option<Instant>,
    max_attempts: u32,
    /// The waits between an item's attempts.
    backoff: Backoff,
    /// Actions decided and not yet carried out (kept for its room).
    actions: Vec<Action>,
    /// Remote executors: how the worker hub hands this job its seats.
    deliver: Option<crate::executor::remote::hub::Deliver>,
    /// Items cancelled while a claim was out (ascending): that claim may
    /// have taken them before they were cancelled; they are not queued.
    cancelled_in_claim: Vec<u32>,
    /// Multi-replica mode: the job's cancelled items as last heard (a
    /// notice with more makes it look for its items cancelled).
    cancelled_seen: u64,
}

pub struct JobSupervisor;

impl Actor for JobSupervisor {
    type Msg = SupervisorMsg;
    type State = SupervisorState;
    type Arguments = SupervisorArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<SupervisorMsg>,
        args: SupervisorArgs,
    ) -> Result<SupervisorState, ActorProcessingErr> {
        let SupervisorArgs {
            job,
            handler,
            rt,
            start,
            lease,
        } = args;
        let (stop, _) = watch::channel(Core::initial_stop(job.state));
        let in_flight = Arc::new(super::hub::InFlight::with_counters(&job.counters));
        in_flight.note(job.state, job.last_seq);
        rt.hub.register_in_flight(job.id, in_flight.clone());
        let settings = Settings {
            outstanding_per_worker: rt.config.outstanding_per_worker(),
            restart_window: rt.config.restart_window,
            restart_budget: rt.config.restart_budget,
        };
        let active = job
            .active_time(chrono::Utc::now())
            .to_std()
            .unwrap_or_default();
        let at = Committed {
            state: job.state,
            seq: job.last_seq,
            interrupt: false,
        };
        let remote = handler.remote().is_some();
        if let Some(remote) = handler.remote() {
            // Supervised (again): the hub has nothing to wake.
            remote.unpark(job.id);
        }
        let deliver: Option<crate::executor::remote::hub::Deliver> = remote.then(|| {
            let me = myself.clone();
            let deliver = move |seat| {
                // A supervisor gone drops the seat: it goes back.
                let _ = me.cast(SupervisorMsg::Seated(seat));
            };
            Arc::new(deliver) as crate::executor::remote::hub::Deliver
        });
        let mut core = Core::new(job.id, at, job.concurrency, &job.policy, active, settings);
        (core.total, core.open) = (job.counts.total, job.open);
        let mut st = SupervisorState {
            core,
            executor: job.executor.clone(),
            handler,
            rt,
            pool: Pool::default(),
            queue: Arc::new(if remote {
                WorkQueue::with_seats()
            } else {
                WorkQueue::default()
            }),
            stop,
            in_flight,
            shutdown: None,
            held_acks: Vec::new(),
            start,
            lease,
            cancel_asked: None,
            max_attempts: job.max_attempts,
            backoff: job.policy.backoff(),
            actions: Vec::new(),
            deliver,
            cancelled_in_claim: Vec::new(),
            cancelled_seen: job.counts.cancelled,
        };
        st.queue.set_open(job.state == JobState::Running);
        for _ in 0..job.concurrency {
            st.add_worker(&myself).await?;
        }
        tracing::debug!(job_id = %job.id, state = %job.state, "supervisor started");
        Ok(st)
    }

    async fn post_start(
        &self,
        myself: ActorRef<SupervisorMsg>,
        st: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        if st.core.timed() {
            let _ = myself.cast(SupervisorMsg::Tick);
        }
        // A job taken over (after a restart, from another replica) may
        // have retries waiting that only the store knows of (the job's
        // retry delay, or a wait its handler asked for); a new job
        // (nothing after its first event) has none.
        if st.core.state_seq > 1 && !st.core.state.is_terminal() {
            st.find_waiting(&myself);
        }
        st.pump(&myself);
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<SupervisorMsg>,
        st: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        st.rt.hub.unregister_in_flight(st.core.job);
        if let Some(remote) = st.handler.remote() {
            remote.forget(st.core.job);
        }
        // Seats still held go back.
        drop(st.queue.trim_seats(0));
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<SupervisorMsg>,
        msg: SupervisorMsg,
        st: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        if let Some((concurrency, answer)) = st.handle_msg(&myself, msg) {
            // Boxed, as is `handle_supervisor_evt`: ractor keeps one
            // future for an actor's whole processing loop, sized for its
            // largest handler. A supervisor is idle nearly all its life,
            // and its other messages are handled without waiting: this way
            // an idle one holds no room for the rare handlers that wait
            // (spawning workers).
            Box::pin(st.resize(&myself, concurrency)).await?;
            match answer {
                Answer::Observed(reply) => {
                    let _ = reply.send(true);
                }
                Answer::Resized(reply) => {
                    let _ = reply.send(());
                }
            }
        }
        st.pump(&myself);
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<SupervisorMsg>,
        event: SupervisionEvent,
        st: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        Box::pin(handle_event(myself, event, st)).await
    }
}

/// Whom to answer once the pool is resized.
enum Answer {
    /// `SupervisorMsg::Observed`: something changed.
    Observed(RpcReplyPort<bool>),
    Resized(RpcReplyPort<()>),
}

async fn handle_event(
    myself: ActorRef<SupervisorMsg>,
    event: SupervisionEvent,
    st: &mut SupervisorState,
) -> Result<(), ActorProcessingErr> {
    // A worker that ends normally was stopped by us; one that fails
    // (panics) is replaced and its item retried from its checkpoint.
    if let SupervisionEvent::ActorFailed(cell, err) = event {
        let Some(slot) = st.pool.position(cell.get_id()) else {
            return Ok(());
        };
        st.worker_died(&myself, slot, err.to_string()).await?;
        st.pump(&myself);
    }
    Ok(())
}

impl SupervisorState {
    /// Hands a message to the core and carries out what it decided;
    /// returns the pool's new size, and whom to answer, if it changes
    /// (which waits: workers are spawned).
    fn handle_msg(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        msg: SupervisorMsg,
    ) -> Option<(u32, Answer)> {
        let out = &mut self.actions;
        match msg {
            SupervisorMsg::Changed {
                state,
                seq,
                interrupt,
                asked,
                reply,
            } => {
                if self.core.changed(state, seq, interrupt, out) && state == JobState::Cancelling {
                    self.cancel_asked = Some(asked);
                }
                // Carried out before the answer: the queue is closed when
                // a pause or a cancel returns.
                self.perform(myself);
                let _ = reply.send(());
            }
            SupervisorMsg::Interrupt(reply) => {
                self.core.interrupt(out);
                self.perform(myself);
                let _ = reply.send(());
            }
            SupervisorMsg::ItemsCancelled {
                indexes,
                waited,
                reply,
            } => {
                self.items_cancelled(&indexes);
                self.core.items_cancelled(&waited);
                self.perform(myself);
                let _ = reply.send(());
            }
            SupervisorMsg::Grown { total, open, reply } => {
                self.core.grown(total, open);
                self.perform(myself);
                let _ = reply.send(());
            }
            SupervisorMsg::Observed {
                state,
                seq,
                concurrency,
                rate,
                interrupt,
                items,
                cancelled,
                reply,
            } => {
                let at = Committed {
                    state,
                    seq,
                    interrupt,
                };
                let mut seen = self.core.observed(at, concurrency, rate, out);
                if let Some((total, open)) = items {
                    seen.changed |= self.core.grown(total, open);
                }
                if cancelled > self.cancelled_seen {
                    self.cancelled_seen = cancelled;
                    seen.changed = true;
                    // A job being cancelled or ended stops every item
                    // anyway.
                    if matches!(state, JobState::Running | JobState::Pausing) {
                        self.find_gone(myself);
                    }
                }
                if seen.applied && state == JobState::Cancelling {
                    self.cancel_asked = Some(Instant::now());
                }
                self.perform(myself);
                match seen.resize {
                    Some(concurrency) => return Some((concurrency, Answer::Observed(reply))),
                    None => {
                        let _ = reply.send(seen.changed);
                    }
                }
            }
            SupervisorMsg::Gone(items) => {
                let gone = |index: u32, lease: i64| items.contains(&(index, lease));
                let dropped = self.queue.remove(|i| gone(i.index, i.lease));
                let stopped = self.pool.stop_if(|i| gone(i.index, i.lease));
                tracing::debug!(job_id = %self.core.job, dropped, stopped,
                    "items cancelled elsewhere stopped");
            }
            SupervisorMsg::Abandon => {
                tracing::warn!(job_id = %self.core.job, "lease lost: stopping the job here");
                self.core.abandon(out);
                self.perform(myself);
            }
            SupervisorMsg::Claimed(Ok(mut items)) => {
                let last = items.last().map(|i| i.index);
                self.core.claims.claimed(items.len(), last);
                crate::metrics::items_claimed(&self.executor, items.len());
                let cancelled = std::mem::take(&mut self.cancelled_in_claim);
                items.retain(|i| cancelled.binary_search(&i.index).is_err());
                self.queue.push(items);
            }
            SupervisorMsg::Claimed(Err(e)) => {
                // Nothing was claimed: nothing to drop from it.
                self.cancelled_in_claim.clear();
                tracing::warn!(job_id = %self.core.job, error = %e, "claim failed");
                self.core.claim_failed(out);
                self.perform(myself);
            }
            SupervisorMsg::Idle { slot } => self.pool.idle(slot),
            SupervisorMsg::Done {
                slot,
                index,
                finished,
                took,
                ack,
            } => {
                let outcome = match &finished {
                    Finished::Succeeded => ItemOutcome::Succeeded,
                    Finished::Failed { retry: Some(_), .. } => ItemOutcome::Retried,
                    Finished::Failed { retry: None, .. } => ItemOutcome::Failed,
                    _ => ItemOutcome::Other,
                };
                self.pool.done(slot);
                let hold = self.core.done(index, &finished, took, Instant::now(), out);
                if let Some(ack) = ack {
                    if hold {
                        self.held_acks.push(ack);
                    } else {
                        let _ = ack.send(());
                    }
                }
                crate::metrics::item_finished(&self.executor, outcome, took);
                self.perform(myself);
            }
            SupervisorMsg::Settled(result) => {
                if let Ok(job) = result.as_ref() {
                    if job.state.is_terminal() {
                        crate::metrics::job_finished(job.state.as_str());
                    }
                    if job.state == JobState::Cancelled
                        && let Some(asked) = self.cancel_asked.take()
                    {
                        crate::metrics::control_effect("cancel", asked.elapsed());
                    }
                }
                self.adopt(myself, *result, true);
            }
            SupervisorMsg::Refreshed(result) => self.adopt(myself, *result, false),
            SupervisorMsg::Retry => self.core.retry(),
            SupervisorMsg::Tick => {
                self.core.tick(out);
                self.perform(myself);
            }
            SupervisorMsg::RateLimit { rate, reply } => {
                self.core.set_rate(rate);
                let _ = reply.send(());
            }
            SupervisorMsg::WakeUp(at) => {
                self.core.woken(at, Instant::now(), out);
                self.perform(myself);
            }
            SupervisorMsg::Waiting(found) => {
                self.core.found_waiting(found, Instant::now(), out);
                self.perform(myself);
            }
            SupervisorMsg::Resize { concurrency, reply } => {
                return Some((concurrency, Answer::Resized(reply)));
            }
            SupervisorMsg::Shutdown(reply) => {
                self.shutdown = Some(reply);
                self.core.shutdown(out);
                self.perform(myself);
            }
            SupervisorMsg::Seated(seat) => self.queue.add_seat(seat),
            // `pump`, after every message, decides again.
            SupervisorMsg::Served => {}
        }
        None
    }

    /// Remote executors: the job waits for a worker with no actors. The
    /// hub records it, and wakes it (the engine supervises it again) once
    /// a worker that serves it connects; if one connected since the
    /// decision, the supervisor stays and decides again.
    fn park(&mut self, myself: &ActorRef<SupervisorMsg>) {
        let Some(remote) = self.handler.remote() else {
            return;
        };
        if remote.park(self.core.job) {
            tracing::debug!(job_id = %self.core.job, "no worker serves the job: its supervisor exits until one does");
            myself.stop(Some("waiting for workers".into()));
        } else {
            let _ = myself.cast(SupervisorMsg::Served);
        }
    }
}

impl SupervisorState {
    /// CancelItems cancelled `indexes` (ascending), which were claimed:
    /// those waiting in the queue leave it, and the workers running the
    /// others are asked to stop them (their outcomes are refused: the
    /// store cleared their leases). A claim out now may bring some of
    /// them: they are dropped when it comes back.
    fn items_cancelled(&mut self, indexes: &[u32]) {
        if indexes.is_empty() {
            return;
        }
        let cancelled = |index: u32| indexes.binary_search(&index).is_ok();
        let dropped = self.queue.remove(|i| cancelled(i.index));
        let stopped = self.pool.stop_if(|i| cancelled(i.index));
        if self.core.claims.out.is_some() {
            self.cancelled_in_claim.extend_from_slice(indexes);
            self.cancelled_in_claim.sort_unstable();
            self.cancelled_in_claim.dedup();
        }
        tracing::debug!(job_id = %self.core.job, dropped, stopped, "cancelled items stopped");
    }
}

#[cfg(test)]
mod sizes {
    /// Every live supervisor's processing loop holds room for a message
    /// several times over (ractor's wrappers, our handler): keep large
    /// payloads boxed. With a `Job` inline it was 352 bytes, and the
    /// many-jobs bench's memory per job 0.8 KiB higher.
    #[test]
    fn supervisor_messages_stay_small() {
        let size = std::mem::size_of::<super::SupervisorMsg>();
        assert!(size <= 96, "SupervisorMsg is {size} bytes");
    }
}

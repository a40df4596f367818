//! Remote executors: the items of a job run in a worker process elsewhere,
//! connected over `WorkerService.Work`.
//!
//! The job's worker actors stay the owners of its items, as for any
//! executor: a [`RemoteHandler`] is the handler they call, and for one
//! item it sends the assignment through the seat its supervisor was
//! granted ([`hub::Seat`]), relays the worker's checkpoints (acknowledged
//! once committed), progress and outcome, pushes the job's interrupt the
//! moment it is signalled, and revokes the item if the worker ignores it
//! past the grace time. Pause, cancel, retries, the breaker and the audit
//! trail therefore apply to remote items unchanged.

pub mod hub;
pub mod lend;
pub mod link;

use super::{
    CheckpointError, Executor, ItemContext, ItemError, ItemHandler, JobInfo, PrepareError,
};
use crate::domain::JobId;
use async_trait::async_trait;
use hub::{AssignItem, Assigned, Deliver, ItemMsg, Refusal, ToWorker, Via, WorkerHub};
use std::{collections::BTreeMap, sync::Arc, time::Duration};

pub use hub::{RemoteConfig, Seat};

/// A remote executor: its items run in connected worker processes.
pub struct RemoteExecutor {
    hub: Arc<WorkerHub>,
    name: Arc<str>,
}

impl RemoteExecutor {
    pub fn new(hub: Arc<WorkerHub>, name: &str) -> Self {
        RemoteExecutor {
            hub,
            name: Arc::from(name),
        }
    }
}

impl Executor for RemoteExecutor {
    fn prepare(
        &self,
        params: &BTreeMap<String, String>,
    ) -> Result<Arc<dyn ItemHandler>, PrepareError> {
        self.prepare_job(&JobInfo {
            name: "",
            labels: &BTreeMap::new(),
            params,
        })
    }

    /// Any params: the worker checks them.
    fn prepare_job(&self, job: &JobInfo<'_>) -> Result<Arc<dyn ItemHandler>, PrepareError> {
        Ok(Arc::new(RemoteHandler {
            hub: self.hub.clone(),
            executor: self.name.clone(),
            labels: Arc::new(job.labels.clone()),
            params: Arc::new(job.params.clone()),
            job_name: Arc::from(job.name),
        }))
    }
}

/// A job's handler for a remote executor.
pub struct RemoteHandler {
    hub: Arc<WorkerHub>,
    executor: Arc<str>,
    /// The job's labels: a worker whose token is scoped takes only the
    /// items of jobs within its scope.
    labels: Arc<BTreeMap<String, String>>,
    params: Arc<BTreeMap<String, String>>,
    job_name: Arc<str>,
}

impl RemoteHandler {
    /// The job wants to hold `want` seats (its supervisor's decision);
    /// granted seats arrive through `deliver`.
    pub fn want(&self, job: JobId, want: u32, deliver: &Deliver) {
        self.hub
            .want(job, &self.executor, &self.labels, want, deliver);
    }

    /// The job's supervisor stopped.
    pub fn forget(&self, job: JobId) {
        self.hub.forget(job);
    }

    /// Whether no connected worker (here, or lent by another replica)
    /// serves the job.
    pub fn unserved(&self) -> bool {
        self.hub.no_worker_for(&self.executor, &self.labels)
    }

    /// The job's supervisor exits to wait for a worker: the hub wakes the
    /// job when one that serves it connects. `false` when one serves it
    /// already (the supervisor stays).
    pub fn park(&self, job: JobId) -> bool {
        self.hub.park(job, &self.executor, &self.labels)
    }

    /// The job has a supervisor: it is no longer parked.
    pub fn unpark(&self, job: JobId) {
        self.hub.unpark(job);
    }

    /// What the job waits for, when no connected worker serves it.
    pub fn waiting_for(&self) -> Option<String> {
        self.hub
            .no_worker_for(&self.executor, &self.labels)
            .then(|| waiting_for(&self.executor))
    }
}

/// How a job waiting for a worker says so.
pub fn waiting_for(executor: &str) -> String {
    format!("waiting for a worker for executor {executor:?}")
}

/// Ends the item's route when the handler ends, however it ends (its
/// worker actor stopped, say): later messages for it are refused.
struct RouteGuard<'a> {
    via: &'a Via,
    token: u64,
}

impl Drop for RouteGuard<'_> {
    fn drop(&mut self) {
        self.via.release(self.token);
    }
}

#[async_trait]
impl ItemHandler for RemoteHandler {
    async fn run(&self, ctx: &mut ItemContext) -> Result<(), ItemError> {
        let Some(seat) = ctx.take_seat() else {
            return Err(ItemError::Handback(
                "no worker slot was reserved for the item".into(),
            ));
        };
        let item = AssignItem {
            index: ctx.index(),
            payload: ctx.payload().to_string(),
            attempt: ctx.attempt(),
            checkpoint: ctx.checkpoint().map(<[u8]>::to_vec),
            params: self.params.clone(),
            job_name: self.job_name.clone(),
            executor: self.executor.clone(),
            // The handler runs in the item's span.
            trace_context: crate::telemetry::propagation::current_span_headers(),
        };
        let Assigned {
            token,
            mut inbox,
            worker,
            via,
        } = seat.assign(item).await.map_err(ItemError::Handback)?;
        let _route = RouteGuard { via: &via, token };
        let grace = self.hub.config().interrupt_grace;
        let mut revoke_at: Option<tokio::time::Instant> = None;
        loop {
            tokio::select! {
                msg = inbox.recv() => match msg {
                    None => return Err(ItemError::Retryable(format!("worker {worker} went away"))),
                    Some(ItemMsg::Checkpoint { id, data }) => match ctx.save_checkpoint(data).await {
                        Ok(()) => via.send(token, ToWorker::CheckpointSaved { token, checkpoint_id: id }),
                        Err(CheckpointError::LeaseLost) => {
                            via.revoke(token, "the item's lease was lost: another runner has it");
                            return Err(ItemError::Interrupted);
                        }
                        Err(CheckpointError::Store(why)) => via.send(
                            token,
                            ToWorker::Refused(Refusal {
                                token,
                                checkpoint_id: id,
                                reason: "NOT_SAVED",
                                message: format!("the checkpoint was not saved: {why}"),
                            }),
                        ),
                    },
                    Some(ItemMsg::Progress(fraction)) => ctx.set_progress(fraction),
                    Some(ItemMsg::Succeeded { result, skip_reason, counters }) => {
                        if !result.is_empty() {
                            ctx.set_result(result);
                        }
                        if !skip_reason.is_empty() {
                            ctx.skip(skip_reason);
                        }
                        for (name, n) in counters {
                            // Checked when the worker sent them.
                            let _ = ctx.count(&name, n);
                        }
                        return Ok(());
                    }
                    Some(ItemMsg::Failed { error, permanent, retry_after }) => {
                        if let Some(wait) = retry_after {
                            ctx.set_retry_after(wait);
                        }
                        return Err(if permanent { ItemError::Permanent(error) } else { ItemError::Retryable(error) });
                    }
                    Some(ItemMsg::Stopped) => {
                        return Err(if revoke_at.is_some() || ctx.stop_requested() {
                            ItemError::Interrupted
                        } else {
                            ItemError::Handback(format!("worker {worker} gave the item back"))
                        });
                    }
                    Some(ItemMsg::Lost(why)) => return Err(ItemError::Retryable(why)),
                },
                _ = ctx.stopped(), if revoke_at.is_none() => {
                    let reason = ctx.stop_reason().unwrap_or(crate::executor::StopReason::Shutdown);
                    via.send(token, ToWorker::Interrupt { tokens: vec![token], reason });
                    revoke_at = Some(tokio::time::Instant::now() + grace);
                }
                _ = sleep_until(revoke_at), if revoke_at.is_some() => {
                    via.revoke(
                        token,
                        &format!("it did not stop within {} of the interrupt", human(grace)),
                    );
                    return Err(ItemError::Interrupted);
                }
            }
        }
    }

    fn remote(&self) -> Option<&RemoteHandler> {
        Some(self)
    }
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn human(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

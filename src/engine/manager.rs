//! The `JobManager` actor: one per process. Owns the map job id →
//! supervisor, spawns supervisors linked to itself, replaces one that
//! crashes (reading the job again from the store), and shuts them all down.

use super::{
    EngineError, Runtime,
    supervisor::{JobSupervisor, SupervisorArgs, SupervisorMsg},
};
use crate::{
    domain::{Job, JobId},
    executor::ItemHandler,
    store::Lease,
};
use ractor::{
    Actor, ActorId, ActorProcessingErr, ActorRef, ActorStatus, RpcReplyPort, SupervisionEvent,
};
use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::{Duration, Instant},
};

pub enum ManagerMsg {
    /// Supervise `job` (as just read from the store) unless a live
    /// supervisor already does; reply with the supervisor.
    Supervise {
        job: Box<Job>,
        handler: Arc<dyn ItemHandler>,
        /// The StartJob call's span, which item spans link to.
        start: Option<opentelemetry::trace::SpanContext>,
        /// Multi-replica mode: the lease the job runs under.
        lease: Option<Lease>,
        reply: RpcReplyPort<Result<ActorRef<SupervisorMsg>, EngineError>>,
    },
    /// The job's lease is lost: stop its supervisor at once, writing
    /// nothing (whatever it still tries is refused by the store).
    Abandon(JobId),
    /// Stop the job's supervisor as a shutdown would (items stop at their
    /// next checkpoint, committed); reply when it has, or after `grace`.
    HandOver {
        job: JobId,
        grace: Duration,
        reply: RpcReplyPort<()>,
    },
    /// The live supervisor of a job, if any.
    Lookup {
        job: JobId,
        reply: RpcReplyPort<Option<ActorRef<SupervisorMsg>>>,
    },
    /// How many supervisors are live.
    Count(RpcReplyPort<usize>),
    /// Ask every supervisor to stop its items at their next checkpoint
    /// and exit; reply when all have, or when `grace` has passed.
    Shutdown {
        grace: Duration,
        reply: RpcReplyPort<()>,
    },
    /// A crashed supervisor's job, read again: supervise it anew.
    Readopt(JobId),
    /// A worker that serves the job connected while it waited for one
    /// with no supervisor: supervise it again (once the job's supervisor,
    /// if one is still stopping, is gone).
    Wake(JobId),
}

pub struct ManagerState {
    rt: Arc<Runtime>,
    /// Re-reads a job and prepares its handler, for re-adoption.
    readopt: Arc<dyn Fn(JobId) + Send + Sync>,
    /// A supervisor stopped (not crashed), with the epoch of its lease.
    ended: Arc<dyn Fn(JobId, Option<i64>) + Send + Sync>,
    /// Reads a job that waited for workers and supervises it if it is
    /// still RUNNING; with the epoch of the lease its last supervisor ran
    /// under, if it had one (released if the job no longer runs).
    wake: Arc<dyn Fn(JobId, Option<i64>) + Send + Sync>,
    supervisors: HashMap<JobId, ActorRef<SupervisorMsg>>,
    /// Jobs woken while their supervisor was in the map: it may be the
    /// one exiting to wait (the worker connected as it parked), so the
    /// job is woken once it is gone.
    woken: HashSet<JobId>,
    /// Each live supervisor's job and lease epoch.
    by_actor: HashMap<ActorId, (JobId, Option<i64>)>,
    /// Recent supervisor crashes per job: a job whose supervisor keeps
    /// crashing is failed rather than restarted forever.
    crashes: HashMap<JobId, Vec<Instant>>,
    shutting_down: bool,
}

pub struct ManagerArgs {
    pub rt: Arc<Runtime>,
    pub readopt: Arc<dyn Fn(JobId) + Send + Sync>,
    pub ended: Arc<dyn Fn(JobId, Option<i64>) + Send + Sync>,
    pub wake: Arc<dyn Fn(JobId, Option<i64>) + Send + Sync>,
}

pub struct JobManager;

impl Actor for JobManager {
    type Msg = ManagerMsg;
    type State = ManagerState;
    type Arguments = ManagerArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<ManagerMsg>,
        args: ManagerArgs,
    ) -> Result<ManagerState, ActorProcessingErr> {
        Ok(ManagerState {
            rt: args.rt,
            readopt: args.readopt,
            ended: args.ended,
            wake: args.wake,
            supervisors: HashMap::new(),
            woken: HashSet::new(),
            by_actor: HashMap::new(),
            crashes: HashMap::new(),
            shutting_down: false,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<ManagerMsg>,
        msg: ManagerMsg,
        st: &mut ManagerState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            ManagerMsg::Supervise {
                job,
                handler,
                start,
                lease,
                reply,
            } => {
                let result = supervise(&myself, st, *job, handler, start, lease).await;
                let _ = reply.send(result);
            }
            ManagerMsg::Abandon(job) => {
                // Out of the map now, so the job can be taken again while
                // this one stops.
                if let Some(supervisor) = st.supervisors.remove(&job) {
                    crate::metrics::supervisors(st.supervisors.len());
                    let _ = supervisor.cast(SupervisorMsg::Abandon);
                }
                st.woken.remove(&job);
            }
            ManagerMsg::HandOver { job, grace, reply } => match st.supervisors.get(&job).cloned() {
                Some(supervisor) => {
                    tokio::spawn(async move {
                        let _ = supervisor.call(SupervisorMsg::Shutdown, Some(grace)).await;
                        let _ = reply.send(());
                    });
                }
                None => {
                    let _ = reply.send(());
                }
            },
            ManagerMsg::Lookup { job, reply } => {
                let _ = reply.send(live(st, job));
            }
            ManagerMsg::Count(reply) => {
                let _ = reply.send(st.supervisors.len());
            }
            ManagerMsg::Shutdown { grace, reply } => {
                st.shutting_down = true;
                let supervisors: Vec<_> = st.supervisors.values().cloned().collect();
                tokio::spawn(async move {
                    let all = supervisors.into_iter().map(|s| async move {
                        let _ = s.call(SupervisorMsg::Shutdown, Some(grace)).await;
                    });
                    let _ = tokio::time::timeout(grace, futures::future::join_all(all)).await;
                    let _ = reply.send(());
                });
            }
            ManagerMsg::Readopt(job) => {
                if !st.shutting_down && !st.supervisors.contains_key(&job) {
                    (st.readopt)(job);
                }
            }
            ManagerMsg::Wake(_) if st.shutting_down => {}
            ManagerMsg::Wake(job) => {
                if st.supervisors.contains_key(&job) {
                    // Whether it stays or is stopping, the job is looked
                    // at again once it is gone (a job that no longer runs
                    // is left alone then).
                    st.woken.insert(job);
                } else {
                    (st.wake)(job, None);
                }
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<ManagerMsg>,
        event: SupervisionEvent,
        st: &mut ManagerState,
    ) -> Result<(), ActorProcessingErr> {
        match event {
            SupervisionEvent::ActorTerminated(cell, _, _) => {
                if let Some((job, epoch)) = st.by_actor.remove(&cell.get_id()) {
                    if !forget(st, job, cell.get_id()) {
                        // Replaced (a supervisor that exited to wait, or
                        // paused, and a control call came as it stopped)
                        // or abandoned: the lease, if any, is the newer
                        // supervisor's, or was given up already.
                        return Ok(());
                    }
                    if st.woken.remove(&job) && !st.shutting_down {
                        // A worker came for the job while this supervisor
                        // stopped: supervised again under the same lease
                        // (released instead if the job no longer runs).
                        (st.wake)(job, epoch);
                    } else {
                        (st.ended)(job, epoch);
                    }
                }
            }
            SupervisionEvent::ActorFailed(cell, err) => {
                let Some((job, _)) = st.by_actor.remove(&cell.get_id()) else {
                    return Ok(());
                };
                // Re-adopted below if it is to run: a wake-up adds nothing.
                st.woken.remove(&job);
                if !forget(st, job, cell.get_id()) {
                    // Abandoned before it crashed: nothing to re-adopt.
                    return Ok(());
                }
                tracing::error!(job_id = %job, error = %err, "job supervisor crashed");
                let now = Instant::now();
                let window = st.rt.config.restart_window;
                let crashes = st.crashes.entry(job).or_default();
                crashes.retain(|t| now.duration_since(*t) <= window);
                crashes.push(now);
                if crashes.len() as u32 > st.rt.config.restart_budget {
                    tracing::error!(job_id = %job, "supervisor keeps crashing; leaving the job");
                } else if !st.shutting_down {
                    let _ = myself.cast(ManagerMsg::Readopt(job));
                }
            }
            _ => {}
        }
        Ok(())
    }
}

/// Removes the job's supervisor from the map if it is `actor` (a newer one
/// may have replaced it); whether it was.
fn forget(st: &mut ManagerState, job: JobId, actor: ActorId) -> bool {
    if st
        .supervisors
        .get(&job)
        .is_some_and(|s| s.get_id() == actor)
    {
        st.supervisors.remove(&job);
        crate::metrics::supervisors(st.supervisors.len());
        true
    } else {
        false
    }
}

fn live(st: &ManagerState, job: JobId) -> Option<ActorRef<SupervisorMsg>> {
    st.supervisors
        .get(&job)
        .filter(|s| {
            s.get_status() == ActorStatus::Running || s.get_status() == ActorStatus::Starting
        })
        .cloned()
}

async fn supervise(
    myself: &ActorRef<ManagerMsg>,
    st: &mut ManagerState,
    job: Job,
    handler: Arc<dyn ItemHandler>,
    start: Option<opentelemetry::trace::SpanContext>,
    lease: Option<Lease>,
) -> Result<ActorRef<SupervisorMsg>, EngineError> {
    if let Some(existing) = live(st, job.id) {
        return Ok(existing);
    }
    if st.shutting_down {
        return Err(EngineError::ShuttingDown("the server is shutting down"));
    }
    let id = job.id;
    let epoch = lease.as_ref().map(|l| l.epoch);
    let args = SupervisorArgs {
        job,
        handler,
        rt: st.rt.clone(),
        start,
        lease,
    };
    let (supervisor, _) = Actor::spawn_linked(None, JobSupervisor, args, myself.get_cell())
        .await
        .map_err(|e| {
            EngineError::NotApplied(format!("could not start the job's supervisor: {e}"))
        })?;
    st.supervisors.insert(id, supervisor.clone());
    crate::metrics::supervisors(st.supervisors.len());
    st.by_actor.insert(supervisor.get_id(), (id, epoch));
    Ok(supervisor)
}

//! The `JobManager` actor: one per process. Owns the map job id →
//! supervisor, spawns supervisors linked to itself, replaces one that
//! crashes (reading the job again from the store), and shuts them all down.

use super::{
    Runtime,
    supervisor::{JobSupervisor, SupervisorArgs, SupervisorMsg},
};
use crate::{
    domain::{Job, JobId},
    executor::ItemHandler,
};
use ractor::{
    Actor, ActorId, ActorProcessingErr, ActorRef, ActorStatus, RpcReplyPort, SupervisionEvent,
};
use std::{
    collections::HashMap,
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
        reply: RpcReplyPort<Result<ActorRef<SupervisorMsg>, String>>,
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
}

pub struct ManagerState {
    rt: Arc<Runtime>,
    /// Re-reads a job and prepares its handler, for re-adoption.
    readopt: Arc<dyn Fn(JobId) + Send + Sync>,
    supervisors: HashMap<JobId, ActorRef<SupervisorMsg>>,
    by_actor: HashMap<ActorId, JobId>,
    /// Recent supervisor crashes per job: a job whose supervisor keeps
    /// crashing is failed rather than restarted forever.
    crashes: HashMap<JobId, Vec<Instant>>,
    shutting_down: bool,
}

pub struct ManagerArgs {
    pub rt: Arc<Runtime>,
    pub readopt: Arc<dyn Fn(JobId) + Send + Sync>,
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
            supervisors: HashMap::new(),
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
                reply,
            } => {
                let result = supervise(&myself, st, *job, handler, start).await;
                let _ = reply.send(result);
            }
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
                if let Some(job) = st.by_actor.remove(&cell.get_id()) {
                    st.supervisors.remove(&job);
                }
            }
            SupervisionEvent::ActorFailed(cell, err) => {
                let Some(job) = st.by_actor.remove(&cell.get_id()) else {
                    return Ok(());
                };
                st.supervisors.remove(&job);
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
) -> Result<ActorRef<SupervisorMsg>, String> {
    if let Some(existing) = live(st, job.id) {
        return Ok(existing);
    }
    if st.shutting_down {
        return Err("the server is shutting down".into());
    }
    let id = job.id;
    let args = SupervisorArgs {
        job,
        handler,
        rt: st.rt.clone(),
        start,
    };
    let (supervisor, _) = Actor::spawn_linked(None, JobSupervisor, args, myself.get_cell())
        .await
        .map_err(|e| format!("could not start the job's supervisor: {e}"))?;
    if let Some(old) = st.supervisors.insert(id, supervisor.clone()) {
        st.by_actor.remove(&old.get_id());
    }
    st.by_actor.insert(supervisor.get_id(), id);
    Ok(supervisor)
}

//! The engine: runs jobs with ractor actors (manager → one supervisor per
//! live job → workers) on top of the [`Store`]. The API layer talks to the
//! [`Engine`] handle only; the engine knows the store trait, never SQL,
//! and never tonic.
//!
//! A control call is decided by the pure state machine, committed by the
//! store guarded by the state it was decided from (re-read and decided
//! again if someone else moved first), and then told to the job's
//! supervisor, which acknowledges once it has taken effect.

mod cluster;
mod config;
mod control;
mod error;
mod hub;
mod manager;
mod placement;
mod policy;
mod queue;
mod retention;
mod supervisor;
mod watch;
mod worker;
mod writer;

pub use cluster::ClusterConfig;
pub use config::{EngineConfig, host_name, this_process};
pub use control::{BULK_LIMIT, Control, Pause, RunOutcome};
pub use error::EngineError;
pub use hub::{EventBatch, Hub, SharedEvent};
pub use watch::{Progress, WatchBatch, WatchItem};
pub use worker::outcome_write;
pub use writer::{WriteError, Writer};

use crate::{
    domain::{
        Decision, FieldViolation, Item, Job, JobId, JobSpec, JobState, NewJob, Provenance, Refusal,
        Runner, decide,
        page::{ItemCursor, JobCursor},
    },
    executor::{ItemHandler, JobInfo, PrepareError, Registry},
    store::{
        ItemQuery, JobQuery, JobWriter, Leases, Page, Pulse, Store, StoreError, TransitionWrite,
    },
};
use cluster::{Book, Cluster, Replicated};
use control::control_metrics;
use futures::StreamExt as _;
use manager::{JobManager, ManagerArgs, ManagerMsg};
use opentelemetry::trace::TraceContextExt as _;
use placement::{Placement, Solo};
use ractor::{Actor, ActorRef};
use std::collections::BTreeMap;
use std::{sync::Arc, time::Duration};
use supervisor::SupervisorMsg;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// What every actor of the engine shares.
pub struct Runtime {
    pub store: Arc<dyn Store>,
    pub writer: Writer,
    pub hub: Arc<Hub>,
    pub config: EngineConfig,
    /// Multi-replica mode: the leases this replica holds.
    pub book: Option<Arc<Book>>,
}

/// The handle the API uses; cheap to clone.
#[derive(Clone)]
pub struct Engine {
    rt: Arc<Runtime>,
    registry: Arc<Registry>,
    manager: ActorRef<ManagerMsg>,
    /// Where jobs run: here alone, or on the replica holding each one's
    /// lease (multi-replica mode).
    placement: Arc<dyn Placement>,
    /// Fires when the server starts shutting down: watch streams end.
    closing: CancellationToken,
    /// Fires when the grace period is over: held writes are dropped.
    abort: CancellationToken,
    /// The runtime the engine was started on: the work of API calls
    /// (StartJob, control) runs there, with the actors and the committer,
    /// whichever runtime the call came in on.
    tasks: tokio::runtime::Handle,
}

/// What [`Engine::start`] found in the store.
#[derive(Debug, Clone, Default)]
pub struct Adopted {
    pub running: usize,
    pub paused: usize,
    pub settled: usize,
    pub released_items: u64,
}

impl Engine {
    /// Starts the engine on `store`: recovers what a previous process left
    /// (docs/DESIGN.md, Durability) and resumes every RUNNING job.
    pub async fn start(
        store: Arc<dyn Store>,
        registry: Registry,
        config: EngineConfig,
    ) -> Result<(Engine, Adopted), EngineError> {
        Engine::start_inner(store, registry, config, None).await
    }

    /// Starts the engine as one of several replicas sharing the store
    /// (multi-replica mode): instead of recovering every unfinished job,
    /// it joins the others and takes its share (see `cluster`).
    pub async fn start_replicated(
        store: Arc<dyn Store>,
        leases: Arc<dyn Leases>,
        registry: Registry,
        config: EngineConfig,
        cluster: ClusterConfig,
    ) -> Result<(Engine, Adopted), EngineError> {
        Engine::start_inner(store, registry, config, Some(Cluster::new(cluster, leases))).await
    }

    async fn start_inner(
        store: Arc<dyn Store>,
        registry: Registry,
        config: EngineConfig,
        cluster: Option<Arc<Cluster>>,
    ) -> Result<(Engine, Adopted), EngineError> {
        let hub = Hub::new(config.watch_window, config.watch_reads);
        let abort = CancellationToken::new();
        let book = cluster.as_ref().map(|c| c.book.clone());
        let writer = Writer::start(store.clone(), hub.clone(), abort.clone(), book.clone());
        let rt = Arc::new(Runtime {
            store,
            writer,
            hub,
            config,
            book,
        });
        let registry = Arc::new(registry);
        // A crashed supervisor's job is read again and re-adopted; the
        // manager calls back through this without knowing the engine.
        let slot: Arc<std::sync::OnceLock<Engine>> = Arc::new(std::sync::OnceLock::new());
        let readopt = {
            let slot = slot.clone();
            Arc::new(move |job: JobId| {
                if let Some(engine) = slot.get().cloned() {
                    tokio::spawn(async move { engine.readopt(job).await });
                }
            })
        };
        let ended = {
            let slot = slot.clone();
            Arc::new(move |job: JobId, epoch: Option<i64>| {
                if let Some(engine) = slot.get() {
                    engine.supervisor_ended(job, epoch);
                }
            })
        };
        let wake = {
            let slot = slot.clone();
            Arc::new(move |job: JobId, epoch: Option<i64>| {
                if let Some(engine) = slot.get().cloned() {
                    tokio::spawn(async move { engine.wake(job, epoch).await });
                }
            })
        };
        let (manager, _) = Actor::spawn(
            None,
            JobManager,
            ManagerArgs {
                rt: rt.clone(),
                readopt,
                ended,
                wake,
            },
        )
        .await
        .map_err(|e| EngineError::Internal(format!("could not start the job manager: {e}")))?;
        let engine = Engine {
            rt,
            registry,
            manager,
            placement: match cluster {
                Some(cluster) => Arc::new(Replicated(cluster)),
                None => Arc::new(Solo),
            },
            closing: CancellationToken::new(),
            abort,
            tasks: tokio::runtime::Handle::current(),
        };
        let _ = slot.set(engine.clone());
        if let Some(hub) = engine.registry.remote() {
            // A job that waits for workers holds no supervisor: the hub
            // wakes it through the manager, which waits for a supervisor
            // still stopping to be gone first.
            let manager = engine.manager.clone();
            hub.set_waker(Arc::new(move |job| {
                let _ = manager.cast(ManagerMsg::Wake(job));
            }));
        }
        let adopted = engine.adopt().await?;
        engine.schedule_resumes();
        engine.schedule_pruning();
        Ok((engine, adopted))
    }

    async fn adopt(&self) -> Result<Adopted, EngineError> {
        self.placement.adopt(self).await
    }

    /// A single server's start-up: recovers every unfinished job the
    /// previous process left (docs/DESIGN.md, Durability) and runs the
    /// RUNNING ones.
    async fn recover_all(&self) -> Result<Adopted, EngineError> {
        /// Jobs adopted at once (well within the store's pool).
        const ADOPT_IN_FLIGHT: usize = 8;
        let recovery = self.rt.store.recover().await?;
        // Several jobs at a time (each is a read and a supervisor start):
        // a thousand jobs one after the other would keep the server from
        // serving for seconds.
        {
            use futures::{StreamExt as _, TryStreamExt as _};
            futures::stream::iter(recovery.running.iter().copied())
                .map(|id| async move {
                    let job = self.rt.store.get_job(id).await?;
                    self.supervise(job, None).await?;
                    Ok::<_, EngineError>(())
                })
                .buffer_unordered(ADOPT_IN_FLIGHT)
                .try_collect::<()>()
                .await?;
        }
        let adopted = Adopted {
            running: recovery.running.len(),
            paused: recovery.paused.len(),
            settled: recovery.settled.len(),
            released_items: recovery.released_items,
        };
        tracing::info!(?adopted, "recovered unfinished jobs");
        Ok(adopted)
    }

    /// The executors this engine runs.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Validates and stores a job, then starts running it. The work runs in
    /// its own task on the engine's runtime: a caller that gives up
    /// (deadline, disconnect) cannot leave a stored job without its
    /// supervisor.
    pub async fn start_job(&self, input: NewJob) -> Result<Job, EngineError> {
        let engine = self.clone();
        self.detached("start", async move { engine.start_job_inner(input).await })
            .await
    }

    /// Runs `work` in its own task on the engine's runtime, in the
    /// caller's span, to the end even if the caller stops waiting.
    async fn detached<T: Send + 'static>(
        &self,
        what: &str,
        work: impl Future<Output = Result<T, EngineError>> + Send + 'static,
    ) -> Result<T, EngineError> {
        self.tasks
            .spawn(work.in_current_span())
            .await
            .map_err(|e| EngineError::Internal(format!("{what} task failed: {e}")))?
    }

    /// RunJob: starts `input` as an exclusive job if no live exclusive job
    /// has its name, resumes that job if it is PAUSED or PAUSING (when
    /// `may_resume`), and leaves it alone if it is RUNNING. Race-free: the
    /// store's unique name among live exclusive jobs decides between two
    /// calls at once, and the loser looks again. `dry`: decides and does
    /// nothing.
    pub async fn run_job(
        &self,
        mut input: NewJob,
        may_resume: bool,
        provenance: Provenance,
        dry: bool,
    ) -> Result<(Job, RunOutcome), EngineError> {
        self.check_open()?;
        input.exclusive = true;
        for _ in 0..8 {
            let live = self.live_exclusive(input.name.trim()).await?;
            let Some(job) = live else {
                if dry {
                    return Ok((self.validate_job(input).await?, RunOutcome::Started));
                }
                match self.start_job(input.clone()).await {
                    Ok(job) => return Ok((job, RunOutcome::Started)),
                    // Another call started it first: look again.
                    Err(EngineError::NameTaken { .. }) => continue,
                    Err(e) => return Err(e),
                }
            };
            // The call that started it, made again (its answer was lost, or
            // an upload in pages picks up where it stopped): answered as
            // the first was, by StartJob's own check of the request id (a
            // different request under the same id is refused there).
            if !dry
                && !input.request_id.is_empty()
                && job.request_id.as_deref() == Some(input.request_id.as_str())
            {
                match self.start_job(input.clone()).await {
                    // The first call's job (or, had it ended meanwhile, one
                    // this call started).
                    Ok(started) => return Ok((started, RunOutcome::Started)),
                    // Another caller's request id: the job is not this call's.
                    Err(EngineError::NameTaken { .. }) => {}
                    Err(e) => return Err(e),
                }
            }
            match job.state {
                JobState::Running => return Ok((job, RunOutcome::AlreadyRunning)),
                JobState::Paused | JobState::Pausing | JobState::Cancelling => {
                    if !may_resume {
                        return Err(EngineError::PermissionDenied(format!(
                            "job {} named {:?} is {}: resuming it needs the control permission",
                            job.id, job.name, job.state
                        )));
                    }
                    if dry {
                        if !job.can_resume() {
                            return Err(crate::domain::Refusal::NotResumable(job.state).into());
                        }
                        return Ok((job, RunOutcome::Resumed));
                    }
                    match self
                        .control(job.id, Control::Resume, provenance.clone())
                        .await
                    {
                        Ok(job) => return Ok((job, RunOutcome::Resumed)),
                        // CANCELLING: not resumable; say so.
                        Err(e @ EngineError::Refused(_)) if job.state == JobState::Cancelling => {
                            return Err(e);
                        }
                        // It changed meanwhile (resumed, ended): look again.
                        Err(EngineError::Refused(_)) => continue,
                        Err(e) => return Err(e),
                    }
                }
                // Ended meanwhile: the name is free.
                _ => continue,
            }
        }
        Err(EngineError::Internal(format!(
            "the job named {:?} kept changing while it was run; try again",
            input.name
        )))
    }

    /// The live exclusive job named `name`, if any.
    async fn live_exclusive(&self, name: &str) -> Result<Option<Job>, EngineError> {
        let query = JobQuery {
            states: vec![
                JobState::Running,
                JobState::Pausing,
                JobState::Paused,
                JobState::Cancelling,
            ],
            name: Some(name.to_string()),
            limit: 100,
            ..JobQuery::default()
        };
        let page = self.rt.store.list_jobs(&query).await?;
        Ok(page.rows.into_iter().find(|j| j.exclusive))
    }

    /// Checks a job as StartJob would (fields, limits, executor and
    /// params) and stores nothing: the job as it would start (a dry run,
    /// `validate_only`).
    pub async fn validate_job(&self, input: NewJob) -> Result<Job, EngineError> {
        self.check_open()?;
        let (spec, _handler) = self.checked(input)?;
        Ok(spec.preview(chrono::Utc::now()))
    }

    async fn start_job_inner(&self, input: NewJob) -> Result<Job, EngineError> {
        self.check_open()?;
        let (spec, handler) = self.checked(input)?;
        let created = self.rt.store.create_job(JobId::new(), &spec).await?;
        let job = created.job;
        if created.created {
            crate::metrics::job_started();
            tracing::info!(job_id = %job.id, name = %job.name, items = job.counts.total,
                executor = %job.executor, "job started");
        }
        if matches!(
            job.state,
            JobState::Running | JobState::Pausing | JobState::Cancelling
        ) {
            // Item spans link to this call's span.
            let start = tracing::Span::current()
                .context()
                .span()
                .span_context()
                .clone();
            let start = start.is_valid().then_some(start);
            self.placement.place_new(self, &job, handler, start).await?;
        }
        Ok(job)
    }

    /// A job's spec checked and its executor prepared, or every bad field
    /// (or the executor's refusal).
    fn checked(&self, input: NewJob) -> Result<(JobSpec, Arc<dyn ItemHandler>), EngineError> {
        let spec = JobSpec::parse(input.clone(), &self.rt.config.limits);
        let prepared = self.registry.prepare(
            &input.executor,
            &JobInfo {
                name: &input.name,
                labels: &input.labels,
                params: &input.params,
            },
        );
        match (spec, prepared) {
            (Ok(spec), Ok(handler)) => Ok((spec, handler)),
            (_, Err(PrepareError::Forbidden(why))) => Err(EngineError::PermissionDenied(why)),
            (spec, prepared) => {
                let mut bad = spec.err().unwrap_or_default();
                // An empty executor is already reported by the spec.
                if !input.executor.is_empty()
                    && let Err(PrepareError::Invalid(more)) = prepared
                {
                    bad.extend(more);
                }
                Err(EngineError::InvalidArgument(bad))
            }
        }
    }

    /// Applies a client's control call; see the table in docs/DESIGN.md, States. Like
    /// `start_job`, it runs to the end (commit, then the supervisor told)
    /// even if the caller gives up.
    pub async fn control(
        &self,
        id: JobId,
        control: Control,
        provenance: Provenance,
    ) -> Result<Job, EngineError> {
        let engine = self.clone();
        self.detached("control", async move {
            engine.control_inner(id, control, provenance).await
        })
        .await
    }

    async fn control_inner(
        &self,
        id: JobId,
        control: Control,
        provenance: Provenance,
    ) -> Result<Job, EngineError> {
        self.check_open()?;
        let asked = std::time::Instant::now();
        let command = control.command();
        let (pause_mode, resume_at, drain_timeout) = match control {
            Control::Pause(p) => (Some(p.mode), p.resume_at, p.drain_timeout),
            _ => (None, None, None),
        };
        // Each retry means another call changed the job between our read
        // (or guess) and our write; a handful is plenty unless the job is
        // hammered. The first try decides from the state this process last
        // committed or saw for the job, when it runs it and that state calls
        // for a transition: the transition is guarded by that state, so a
        // stale guess is refused (a conflict). A refusal names the state it
        // found under the job's lock, and the next try decides from that,
        // without a read, when it calls for a transition. Anything else (no
        // change, a refusal) is decided from a read.
        let transition_from = |state: JobState| {
            Some(state)
                .filter(|state| matches!(decide(*state, command), Ok(Decision::Transition { .. })))
        };
        let mut guess = self.rt.hub.known_state(id).and_then(transition_from);
        for _ in 0..16 {
            let (state, read) = match guess.take() {
                Some(state) => (state, None),
                None => {
                    let job = self.rt.store.get_job(id).await?;
                    (job.state, Some(job))
                }
            };
            match decide(state, command)? {
                Decision::NoOp { interrupt } => {
                    let job = match read {
                        Some(job) => job,
                        None => self.rt.store.get_job(id).await?,
                    };
                    // Nothing changes, but make sure the supervisor knows
                    // the state: an earlier call may have committed and
                    // then lost its caller before telling it.
                    self.placement
                        .tell(self, &job, false, std::time::Instant::now(), false)
                        .await?;
                    if interrupt {
                        self.interrupt(id).await;
                    }
                    return Ok(job);
                }
                Decision::Transition { from, to, effects } => {
                    let interrupt = effects.contains(&crate::domain::Effect::Interrupt);
                    let write = TransitionWrite {
                        from,
                        to,
                        effects,
                        provenance: provenance.clone(),
                        pause_mode,
                        resume_at,
                    };
                    let committing = std::time::Instant::now();
                    let committed = self.rt.store.transition(id, &write).await;
                    crate::metrics::store_transaction("transition", committing.elapsed());
                    match committed {
                        Ok(job) => {
                            tracing::info!(job_id = %id, %from, %to, ?control, "job changed");
                            self.publish(&job);
                            self.notify_asked(&job, interrupt, asked).await?;
                            control_metrics(from, &job, asked);
                            if let (JobState::Pausing, Some(after)) = (job.state, drain_timeout) {
                                self.escalate_after(id, job.last_seq, after);
                            }
                            return Ok(job);
                        }
                        // Typically a resume racing the supervisor's own
                        // move from PAUSING to PAUSED (its last item
                        // ended): one round trip fewer than a read first.
                        Err(StoreError::Conflict { current, .. }) => {
                            guess = transition_from(current);
                            continue;
                        }
                        Err(e) => return Err(e.into()),
                    }
                }
            }
        }
        Err(EngineError::Contended(id))
    }

    /// AddItems: adds a page of items to a job that has not ended (see
    /// [`Store::add_items`]), then tells its runner, here or on another
    /// replica (which learns of it from the database), so that it claims
    /// them or, once closed, may finish. Like `control`, it runs to the
    /// end even if the caller gives up: a committed page is never left
    /// unseen by a runner waiting for items.
    pub async fn add_items(
        &self,
        id: JobId,
        input: crate::domain::NewItems,
        requested_by: Option<String>,
    ) -> Result<crate::store::Added, EngineError> {
        self.check_open()?;
        let limits = self.rt.config.limits;
        let page =
            crate::domain::ItemPage::parse(input, &limits).map_err(EngineError::InvalidArgument)?;
        let engine = self.clone();
        self.detached("add items", async move {
            let store = &engine.rt.store;
            let max = limits.max_items as u64;
            let added = match store
                .add_items(id, &page, max, requested_by.as_deref())
                .await
            {
                Ok(added) => added,
                Err(StoreError::Conflict { current, .. }) => {
                    return Err(Refusal::TakesNoItems(current).into());
                }
                Err(e) => return Err(e.into()),
            };
            let (total, open) = (added.job.counts.total, added.job.open);
            engine
                .setting_changed(Ok(added.job.clone()), |reply| SupervisorMsg::Grown {
                    total,
                    open,
                    reply,
                })
                .await?;
            Ok(added)
        })
        .await
    }

    /// CancelItems: ends chosen items of a job that has not ended (see
    /// [`Store::cancel_items`]: the store ends them at once, clearing
    /// their leases), then tells its supervisor here, which drops them
    /// from its queue and interrupts those running, or makes sure the
    /// owner on another replica has seen the change (it learns of it from
    /// the database, and looks for its items that were cancelled). Like
    /// `add_items`, it runs to the end even if the caller gives up: a
    /// committed change is never left unseen.
    pub async fn cancel_items(
        &self,
        id: JobId,
        input: crate::domain::NewSelection,
        provenance: Provenance,
    ) -> Result<crate::store::ItemsCancelled, EngineError> {
        self.check_open()?;
        let which =
            crate::domain::ItemSelection::parse(input).map_err(EngineError::InvalidArgument)?;
        let engine = self.clone();
        self.detached("cancel items", async move {
            let cancelled = match engine
                .rt
                .store
                .cancel_items(
                    id,
                    &which,
                    provenance.reason.as_deref(),
                    provenance.requested_by.as_deref(),
                )
                .await
            {
                Ok(cancelled) => cancelled,
                Err(StoreError::Conflict { current, .. }) => {
                    return Err(Refusal::ItemsNotCancellable(current).into());
                }
                Err(e) => return Err(e.into()),
            };
            tracing::info!(job_id = %id, cancelled = cancelled.cancelled,
                interrupted = cancelled.interrupted.len(), requested_by = ?provenance.requested_by,
                reason = ?provenance.reason, "items cancelled");
            if cancelled.cancelled > 0 {
                let indexes = cancelled.interrupted.clone();
                let waited = cancelled.waited.clone();
                engine
                    .setting_changed(Ok(cancelled.job.clone()), |reply| {
                        SupervisorMsg::ItemsCancelled {
                            indexes,
                            waited,
                            reply,
                        }
                    })
                    .await?;
            }
            Ok(cancelled)
        })
        .await
    }

    /// Changes how many items a job runs at once (1 to the limit), while
    /// it runs or is paused; the live supervisor adds workers or lets the
    /// extra ones finish their item and go.
    pub async fn set_concurrency(
        &self,
        id: JobId,
        concurrency: u32,
        provenance: Provenance,
    ) -> Result<Job, EngineError> {
        self.check_open()?;
        let max = self.rt.config.limits.max_concurrency;
        if concurrency == 0 || concurrency > max {
            return Err(EngineError::InvalidArgument(vec![FieldViolation::new(
                "concurrency",
                format!("is {concurrency}; it must be between 1 and {max}"),
            )]));
        }
        let changed = self
            .rt
            .store
            .set_concurrency(id, concurrency, &provenance)
            .await;
        self.setting_changed(changed, |reply| SupervisorMsg::Resize {
            concurrency,
            reply,
        })
        .await
    }

    /// After a live job's setting was changed in the store (`changed`):
    /// tells its supervisor here (`tell`), or makes sure the owner
    /// elsewhere has seen it (it learns of it from the database). A job
    /// that has ended is refused.
    async fn setting_changed(
        &self,
        changed: Result<Job, StoreError>,
        tell: impl FnOnce(ractor::RpcReplyPort<()>) -> SupervisorMsg,
    ) -> Result<Job, EngineError> {
        let job = match changed {
            Ok(job) => job,
            Err(StoreError::Conflict { current, .. }) => {
                return Err(Refusal::Ended(current).into());
            }
            Err(e) => return Err(e.into()),
        };
        self.publish(&job);
        if let Some(supervisor) = self.lookup(job.id).await {
            let _ = supervisor
                .call(tell, Some(self.rt.config.control_timeout))
                .await;
        } else {
            self.placement.setting_changed(self, &job).await?;
        }
        Ok(job)
    }

    /// Changes a job's rate limit on item starts (none removes it), while
    /// it runs or is paused; its supervisor keeps to the new one from its
    /// next start.
    pub async fn set_rate_limit(
        &self,
        id: JobId,
        rate_limit: u32,
        rate_period_ms: u64,
        provenance: Provenance,
    ) -> Result<Job, EngineError> {
        self.check_open()?;
        let rate = crate::domain::parse_rate(rate_limit, rate_period_ms)
            .map_err(EngineError::InvalidArgument)?;
        let changed = self.rt.store.set_rate_limit(id, rate, &provenance).await;
        self.setting_changed(changed, |reply| SupervisorMsg::RateLimit { rate, reply })
            .await
    }

    /// Applies `control` to the jobs named in `ids` and to every job not
    /// yet ended that carries all of `labels` (at most [`BULK_LIMIT`]),
    /// each on its own; returns each job's outcome.
    pub async fn control_jobs(
        &self,
        ids: Vec<JobId>,
        labels: Option<BTreeMap<String, String>>,
        control: Control,
        provenance: Provenance,
    ) -> Result<Vec<(JobId, Result<Job, EngineError>)>, EngineError> {
        self.check_open()?;
        let mut targets = ids;
        if let Some(labels) = labels {
            let mut query = JobQuery {
                states: vec![
                    JobState::Running,
                    JobState::Pausing,
                    JobState::Paused,
                    JobState::Cancelling,
                ],
                labels,
                limit: 1000,
                after: None,
                name: None,
            };
            loop {
                let page = self.rt.store.list_jobs(&query).await?;
                targets.extend(page.rows.iter().map(|j| j.id));
                if targets.len() > BULK_LIMIT {
                    return Err(EngineError::InvalidArgument(vec![FieldViolation::new(
                        "labels",
                        format!("selects more than {BULK_LIMIT} jobs; narrow the selector"),
                    )]));
                }
                match page.next {
                    Some(next) => query.after = Some(next),
                    None => break,
                }
            }
        }
        targets.sort_unstable();
        targets.dedup();
        let outcomes = futures::stream::iter(targets)
            .map(|id| {
                let provenance = provenance.clone();
                async move { (id, self.control(id, control, provenance).await) }
            })
            .buffer_unordered(16)
            .collect()
            .await;
        Ok(outcomes)
    }

    pub async fn get_job(&self, id: JobId) -> Result<Job, EngineError> {
        Ok(self.rt.store.get_job(id).await?)
    }

    /// Who runs `job` (none unless it is RUNNING, PAUSING or CANCELLING):
    /// this server in single-server mode (which alone runs the jobs of
    /// its store), the lease holder in multi-replica mode.
    pub async fn runner_of(&self, job: &Job) -> Result<Option<Runner>, EngineError> {
        if !matches!(
            job.state,
            JobState::Running | JobState::Pausing | JobState::Cancelling
        ) {
            return Ok(None);
        }
        self.placement.owner(self, job).await
    }

    pub async fn list_jobs(&self, query: &JobQuery) -> Result<Page<Job, JobCursor>, EngineError> {
        Ok(self.rt.store.list_jobs(query).await?)
    }

    pub async fn list_items(
        &self,
        query: &ItemQuery,
    ) -> Result<Page<Item, ItemCursor>, EngineError> {
        Ok(self.rt.store.list_items(query).await?)
    }

    /// The items of job `id` running now, lowest index first, at most
    /// `limit`.
    pub async fn running_items(&self, id: JobId, limit: u32) -> Result<Vec<Item>, EngineError> {
        let query = ItemQuery {
            job: id,
            states: vec![crate::domain::ItemState::Running],
            limit,
            after: None,
        };
        Ok(self.rt.store.list_items(&query).await?.rows)
    }

    /// Whether the store answers (readiness).
    pub async fn ping(&self) -> Result<(), EngineError> {
        Ok(self.rt.store.ping().await?)
    }

    /// Samples the gauges that come from the store (pool use, live jobs).
    pub async fn sample_metrics(&self) {
        if let Some((idle, used)) = self.rt.store.pool_stats() {
            crate::metrics::pool(idle, used);
        }
        if let Ok(counts) = self.rt.store.live_job_counts().await {
            for (state, n) in counts {
                crate::metrics::live_jobs(state.as_str(), n);
            }
        }
    }

    /// Number of live job supervisors.
    pub async fn live_jobs(&self) -> usize {
        ractor::call!(self.manager, ManagerMsg::Count).unwrap_or(0)
    }

    /// Stops the engine: watch streams end, items in flight stop at their
    /// next checkpoint and their state is committed, within `grace`. Jobs
    /// stay as they are in the store and continue at the next start.
    pub async fn shutdown(&self, grace: Duration) {
        self.closing.cancel();
        self.rt.hub.close();
        self.placement.drain().await;
        let started = tokio::time::Instant::now();
        let _ = self
            .manager
            .call(|reply| ManagerMsg::Shutdown { grace, reply }, Some(grace))
            .await;
        // Let the committer finish what the workers handed it, then drop
        // whatever is still held (it is re-run after the restart).
        let rest = grace.saturating_sub(started.elapsed());
        tokio::time::sleep(rest.min(Duration::from_millis(50))).await;
        // Multi-replica mode: the others take the jobs over now.
        self.placement.leave().await;
        self.abort.cancel();
        self.manager.stop(Some("shutdown".into()));
    }

    /// Fires when the engine starts shutting down.
    pub fn closing(&self) -> CancellationToken {
        self.closing.clone()
    }

    fn check_open(&self) -> Result<(), EngineError> {
        if self.closing.is_cancelled() {
            Err(EngineError::ShuttingDown("the server is shutting down"))
        } else {
            Ok(())
        }
    }

    fn publish(&self, job: &Job) {
        self.rt.hub.publish(Pulse::of(job));
    }

    /// What a RUNNING job of a remote executor waits for, when no
    /// connected worker serves it (within its labels).
    pub fn waiting_for(&self, job: &Job) -> Option<String> {
        let hub = self.registry.remote()?;
        (job.state == JobState::Running
            && hub.serves(&job.executor)
            && hub.no_worker_for(&job.executor, &job.labels))
        .then(|| crate::executor::remote::waiting_for(&job.executor))
    }

    fn handler(&self, job: &Job) -> Result<Arc<dyn ItemHandler>, String> {
        self.registry
            .prepare(
                &job.executor,
                &JobInfo {
                    name: &job.name,
                    labels: &job.labels,
                    params: &job.params,
                },
            )
            .map_err(|why| format!("executor {:?} cannot run this job: {why}", job.executor))
    }

    /// Makes sure a live supervisor runs `job` (as read from the store);
    /// a job whose executor cannot be prepared any more is failed.
    /// In multi-replica mode, only a job whose lease this replica holds
    /// is run (under that lease).
    async fn supervise(
        &self,
        job: Job,
        start: Option<opentelemetry::trace::SpanContext>,
    ) -> Result<Option<ActorRef<SupervisorMsg>>, EngineError> {
        let Some(lease) = self.placement.run_here(job.id) else {
            return Ok(None);
        };
        match self.handler(&job) {
            Ok(handler) => self
                .supervise_with(job, handler, start, lease)
                .await
                .map(Some),
            Err(reason) => {
                tracing::error!(job_id = %job.id, %reason, "failing the job");
                if let Some(write) =
                    TransitionWrite::decided(job.state, crate::domain::Command::Fail, &reason)
                {
                    let failed = JobWriter::new(self.rt.store.clone(), job.id, lease.clone())
                        .transition(&write)
                        .await;
                    match failed {
                        Ok(job) => self.publish(&job),
                        Err(StoreError::Conflict { .. } | StoreError::Fenced(_)) => {}
                        Err(e) => return Err(e.into()),
                    }
                }
                if let Some(lease) = lease {
                    self.placement
                        .supervisor_ended(self, job.id, Some(lease.epoch));
                }
                Ok(None)
            }
        }
    }

    async fn supervise_with(
        &self,
        job: Job,
        handler: Arc<dyn ItemHandler>,
        start: Option<opentelemetry::trace::SpanContext>,
        lease: Option<crate::store::Lease>,
    ) -> Result<ActorRef<SupervisorMsg>, EngineError> {
        let result = self
            .manager
            .call(
                |reply| ManagerMsg::Supervise {
                    job: Box::new(job),
                    handler,
                    start,
                    lease,
                    reply,
                },
                Some(self.rt.config.control_timeout),
            )
            .await;
        match result {
            Ok(ractor::rpc::CallResult::Success(Ok(supervisor))) => Ok(supervisor),
            Ok(ractor::rpc::CallResult::Success(Err(e))) => Err(e),
            Ok(_) | Err(_) => Err(EngineError::NotApplied(
                "the job manager is not answering".into(),
            )),
        }
    }

    async fn lookup(&self, id: JobId) -> Option<ActorRef<SupervisorMsg>> {
        self.manager
            .call(
                |reply| ManagerMsg::Lookup { job: id, reply },
                Some(self.rt.config.control_timeout),
            )
            .await
            .ok()
            .and_then(|r| r.success_or(()).ok())
            .flatten()
    }

    /// Tells the job's runner about a committed change and waits for it
    /// to take effect. A job that needs a supervisor and has none (after a
    /// restart, or once its supervisor ended) gets one.
    async fn notify_asked(
        &self,
        job: &Job,
        interrupt: bool,
        asked: std::time::Instant,
    ) -> Result<(), EngineError> {
        self.placement.tell(self, job, interrupt, asked, true).await
    }

    /// Tells this process's supervisor of the job (starting one if the
    /// job needs it and may run here).
    async fn tell_local(
        &self,
        job: &Job,
        interrupt: bool,
        asked: std::time::Instant,
    ) -> Result<(), EngineError> {
        let needs_supervisor = matches!(
            job.state,
            JobState::Running | JobState::Pausing | JobState::Cancelling
        );
        for _ in 0..3 {
            let supervisor = if needs_supervisor {
                match self.supervise(job.clone(), None).await? {
                    Some(s) => s,
                    None => return Ok(()),
                }
            } else {
                match self.lookup(job.id).await {
                    Some(s) => s,
                    None => return Ok(()),
                }
            };
            let acked = supervisor
                .call(
                    |reply| SupervisorMsg::Changed {
                        state: job.state,
                        seq: job.last_seq,
                        interrupt,
                        asked,
                        reply,
                    },
                    Some(self.rt.config.control_timeout),
                )
                .await;
            match acked {
                Ok(ractor::rpc::CallResult::Success(())) => return Ok(()),
                // Started from the job as committed, it found no worker
                // serving it and exited to wait for one: the change is
                // in effect (the next supervisor reads the job).
                Ok(ractor::rpc::CallResult::SenderError) | Err(_)
                    if job.state == JobState::Running && self.parked(job.id) =>
                {
                    return Ok(());
                }
                // The supervisor ended between lookup and call: try again.
                Ok(ractor::rpc::CallResult::SenderError) | Err(_) if needs_supervisor => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Ok(ractor::rpc::CallResult::SenderError) | Err(_) => return Ok(()),
                Ok(ractor::rpc::CallResult::Timeout) => {
                    return Err(EngineError::NotApplied(format!(
                        "job {} did not acknowledge the change in time; it is {} in the store",
                        job.id, job.state
                    )));
                }
            }
        }
        Err(EngineError::NotApplied(format!(
            "no supervisor could take job {}",
            job.id
        )))
    }

    /// A graceful pause still PAUSING after `after` turns immediate (unless
    /// the job changed meanwhile).
    fn escalate_after(&self, id: JobId, seq: u64, after: Duration) {
        let engine = self.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = tokio::time::sleep(after) => {}
                _ = engine.closing.cancelled() => return,
            }
            match engine.get_job(id).await {
                Ok(job)
                    if job.state == JobState::Pausing
                        && job.pauses.last().is_some_and(|p| p.resumed_at.is_none())
                        && job.last_seq >= seq =>
                {
                    tracing::info!(job_id = %id, ?after, "drain deadline passed: pausing immediately");
                    engine.interrupt(id).await;
                }
                _ => {}
            }
        });
    }

    /// Resumes the jobs whose pause asked to resume by now; runs until
    /// shutdown. The times are in the store, so they survive a restart.
    fn schedule_resumes(&self) {
        let engine = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = engine.closing.cancelled() => return,
                }
                let due = match engine.rt.store.due_resumes(chrono::Utc::now()).await {
                    Ok(due) => due,
                    Err(e) => {
                        tracing::debug!(error = %e, "cannot look for scheduled resumes now");
                        continue;
                    }
                };
                for id in due {
                    let provenance = Provenance::system("scheduled resume (resume_at)");
                    match engine.control(id, Control::Resume, provenance).await {
                        Ok(_) => tracing::info!(job_id = %id, "resumed as scheduled"),
                        Err(e) => {
                            tracing::warn!(job_id = %id, error = %e, "scheduled resume failed")
                        }
                    }
                }
            }
        });
    }

    async fn interrupt(&self, id: JobId) {
        self.placement.interrupt(self, id).await
    }

    async fn interrupt_local(&self, id: JobId) {
        if let Some(supervisor) = self.lookup(id).await {
            let _ = supervisor
                .call(
                    SupervisorMsg::Interrupt,
                    Some(self.rt.config.control_timeout),
                )
                .await;
        }
    }

    /// A supervisor stopped. A job that waits for workers (parked in the
    /// worker hub) keeps its lease, as the job stays RUNNING here with no
    /// actors: released, the job would be adopted again at once by some
    /// replica, only to wait there. Any other job's lease is released as
    /// the placement does.
    fn supervisor_ended(&self, job: JobId, epoch: Option<i64>) {
        if self.parked(job) {
            return;
        }
        self.placement.supervisor_ended(self, job, epoch);
    }

    /// Whether the job waits here for a worker, with no supervisor.
    fn parked(&self, job: JobId) -> bool {
        self.registry.remote().is_some_and(|hub| hub.parked(job))
    }

    /// A worker that serves a job waiting for one connected: the job is
    /// read and, if it is still RUNNING, supervised again (it claims and
    /// runs). One paused, cancelled, ended or deleted meanwhile is not
    /// started; the lease its last supervisor ran under (`epoch`) is then
    /// released, as for any supervisor that ended. A store that does not
    /// answer is tried again: the job is no longer parked, and nothing
    /// else would start it.
    async fn wake(&self, id: JobId, epoch: Option<i64>) {
        let mut wait = Duration::from_millis(100);
        loop {
            if self.closing.is_cancelled() {
                return;
            }
            let result = match self.rt.store.get_job(id).await {
                Ok(job) if job.state == JobState::Running => {
                    tracing::debug!(job_id = %id, "a worker serves the job: supervising it again");
                    self.supervise(job, None).await.map(|_| ())
                }
                Ok(_) | Err(StoreError::NotFound(_)) => {
                    if epoch.is_some() {
                        self.placement.supervisor_ended(self, id, epoch);
                    }
                    Ok(())
                }
                Err(e) => Err(e.into()),
            };
            match result {
                Ok(()) => return,
                Err(e) => {
                    tracing::warn!(job_id = %id, error = %e, ?wait,
                        "could not supervise a job a worker came for; trying again");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// Supervises a job again after its supervisor crashed: the items it
    /// had claimed go back to pending first.
    async fn readopt(&self, id: JobId) {
        self.placement.readopt(self, id).await
    }
}

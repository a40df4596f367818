//! Where a job runs. A single server runs every live job of its store
//! ([`Solo`]); with `--multi-replica`, the replica that holds a job's lease
//! runs it (`cluster::Replicated`). The engine asks its placement and
//! never which mode it is in, as Oban's peers are two implementations of
//! one behaviour.

use super::{Adopted, Engine, EngineError};
use crate::{
    domain::{Job, JobId, JobState, Runner},
    executor::ItemHandler,
    store::Lease,
};
use async_trait::async_trait;
use std::{sync::Arc, time::Instant};

/// How this process takes part in running a store's jobs.
#[async_trait]
pub(super) trait Placement: Send + Sync {
    /// At start-up: takes the unfinished jobs this process runs.
    async fn adopt(&self, engine: &Engine) -> Result<Adopted, EngineError>;

    /// Runs a job just stored (here, or on the replica that should).
    async fn place_new(
        &self,
        engine: &Engine,
        job: &Job,
        handler: Arc<dyn ItemHandler>,
        start: Option<opentelemetry::trace::SpanContext>,
    ) -> Result<(), EngineError>;

    /// After a change to `job` was committed: its runner applies it (and
    /// interrupts its items when `interrupt`). With `wait`, a runner
    /// elsewhere is waited for (bounded) before the call answers.
    async fn tell(
        &self,
        engine: &Engine,
        job: &Job,
        interrupt: bool,
        asked: Instant,
        wait: bool,
    ) -> Result<(), EngineError>;

    /// After a setting of `job` changed and no supervisor of it runs
    /// here: makes sure its runner has seen it.
    async fn setting_changed(&self, engine: &Engine, job: &Job) -> Result<(), EngineError>;

    /// Asks the runner of `job` to interrupt its items.
    async fn interrupt(&self, engine: &Engine, job: JobId);

    /// Who runs a live job.
    async fn owner(&self, engine: &Engine, job: &Job) -> Result<Option<Runner>, EngineError>;

    /// The lease this process runs `job` under, and whether it may run it
    /// at all: `Some(None)` runs it with no lease (a single server),
    /// `None` does not run it here.
    fn run_here(&self, job: JobId) -> Option<Option<Lease>>;

    /// A supervisor ended (its job ended, or it was handed over).
    fn supervisor_ended(&self, engine: &Engine, job: JobId, epoch: Option<i64>);

    /// Supervises a job again after its supervisor crashed.
    async fn readopt(&self, engine: &Engine, job: JobId);

    /// Graceful shutdown begins: take no new jobs.
    async fn drain(&self);

    /// Graceful shutdown, after the supervisors stopped.
    async fn leave(&self);
}

/// A single server: it alone runs its store's jobs (the runner lock sees
/// to that), with no lease.
pub(super) struct Solo;

#[async_trait]
impl Placement for Solo {
    async fn adopt(&self, engine: &Engine) -> Result<Adopted, EngineError> {
        engine.recover_all().await
    }

    async fn place_new(
        &self,
        engine: &Engine,
        job: &Job,
        handler: Arc<dyn ItemHandler>,
        start: Option<opentelemetry::trace::SpanContext>,
    ) -> Result<(), EngineError> {
        engine
            .supervise_with(job.clone(), handler, start, None)
            .await
            .map(|_| ())
    }

    async fn tell(
        &self,
        engine: &Engine,
        job: &Job,
        interrupt: bool,
        asked: Instant,
        _wait: bool,
    ) -> Result<(), EngineError> {
        engine.tell_local(job, interrupt, asked).await
    }

    async fn setting_changed(&self, _engine: &Engine, _job: &Job) -> Result<(), EngineError> {
        // No supervisor here means none anywhere: the job is not running.
        Ok(())
    }

    async fn interrupt(&self, engine: &Engine, job: JobId) {
        engine.interrupt_local(job).await
    }

    async fn owner(&self, engine: &Engine, job: &Job) -> Result<Option<Runner>, EngineError> {
        Ok(Some(engine.rt.config.runner.running_since(job.created_at)))
    }

    fn run_here(&self, _job: JobId) -> Option<Option<Lease>> {
        Some(None)
    }

    fn supervisor_ended(&self, _engine: &Engine, _job: JobId, _epoch: Option<i64>) {}

    async fn readopt(&self, engine: &Engine, id: JobId) {
        let result = async {
            engine.rt.store.release_items(id).await?;
            let job = engine.rt.store.get_job(id).await?;
            if matches!(
                job.state,
                JobState::Running | JobState::Pausing | JobState::Cancelling
            ) {
                engine.supervise(job, None).await?;
            }
            Ok::<_, EngineError>(())
        }
        .await;
        if let Err(e) = result {
            tracing::error!(job_id = %id, error = %e, "could not re-adopt the job");
        }
    }

    async fn drain(&self) {}

    async fn leave(&self) {}
}

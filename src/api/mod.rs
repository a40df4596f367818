//! tonic glue: the `jobvisor.v1.JobService` implementation. Each RPC parses
//! its request (naming bad fields), calls the engine, and converts the
//! answer; errors become statuses in [`status`] only. No SQL here.

pub mod accept;
pub mod auth;
pub mod codec;
pub mod conn;
pub mod convert;
pub mod guard;
pub mod http_api;
pub mod lend;
pub mod limits;
pub mod routes;
pub mod status;
pub mod trace;
pub mod watch_caps;
pub mod workers;

use crate::{
    domain::{FieldViolation, JobId, Provenance},
    engine::{Control, Engine, EngineError, Pause, RunOutcome},
    pb::{self, job_service_server::JobService},
};
use auth::Caller;
use futures::{Stream, StreamExt};
use std::pin::Pin;
use tonic::{Request, Response, Status};

/// The items running now that GetJob lists, at most.
const RUNNING_SHOWN: u32 = 20;

/// Metadata header naming who makes a control call, recorded with it.
pub const REQUESTED_BY_HEADER: &str = "x-requested-by";
const MAX_REQUESTED_BY_CHARS: usize = 200;

/// The JobService.
#[derive(Clone)]
pub struct JobApi {
    engine: Engine,
}

impl JobApi {
    pub fn new(engine: Engine) -> Self {
        JobApi { engine }
    }
}

/// Who is calling (set by the guard layer; anyone when there is none).
fn caller<T>(request: &Request<T>) -> Caller {
    request
        .extensions()
        .get::<Caller>()
        .cloned()
        .unwrap_or_else(Caller::anyone)
}

/// Who asked, as recorded with a control call: the authenticated identity,
/// or, when authentication is off, the `x-requested-by` header.
fn requested_by<T>(request: &Request<T>) -> Option<String> {
    if let Some(identity) = caller(request).identity() {
        return Some(identity);
    }
    let value = request.metadata().get(REQUESTED_BY_HEADER)?.to_str().ok()?;
    let value: String = value.chars().take(MAX_REQUESTED_BY_CHARS).collect();
    (!value.is_empty()).then_some(value)
}

impl JobApi {
    /// The job a call names by `job_id`, checked with the bad fields the
    /// handler found (`more`), and visible to the caller.
    async fn named_job(
        &self,
        who: &Caller,
        job_id: &str,
        more: Vec<FieldViolation>,
    ) -> Result<JobId, Status> {
        let mut violations = Vec::new();
        let id = convert::job_id("job_id", job_id, &mut violations);
        violations.extend(more);
        let id = convert::checked(id, violations).map_err(bad)?;
        record_job(id);
        self.visible(who, id).await?;
        Ok(id)
    }

    /// The job a control call names, with who asked, the caller's reason
    /// and request id as recorded: the job id checked first, then the bad
    /// fields the handler found (`more`), then the reason and request id;
    /// the job visible to the caller.
    async fn control_target<T>(
        &self,
        request: &Request<T>,
        job_id: &str,
        more: Vec<FieldViolation>,
        (reason, request_id): (&str, &str),
    ) -> Result<(JobId, Provenance), Status> {
        let mut violations = Vec::new();
        let id = convert::job_id("job_id", job_id, &mut violations);
        violations.extend(more);
        let (reason, request_id) =
            convert::reason_and_request_id(reason, request_id, &mut violations);
        let id = convert::checked(id, violations).map_err(bad)?;
        record_job(id);
        self.visible(&caller(request), id).await?;
        let provenance = Provenance {
            reason,
            requested_by: requested_by(request),
            request_id,
        };
        Ok((id, provenance))
    }

    /// A job outside the caller's label scope does not exist for it.
    async fn visible(&self, caller: &Caller, id: JobId) -> Result<(), Status> {
        if caller.scope.is_empty() {
            return Ok(());
        }
        let job = self.engine.get_job(id).await?;
        if caller.sees(&job.labels) {
            Ok(())
        } else {
            Err(EngineError::NotFound(id).into())
        }
    }
}

/// A StartJob request as the engine takes it, from `who`: its request ids
/// are its scope's alone, and a scoped caller's jobs carry its scope's
/// labels (another value for one of them is refused).
fn new_job_for(
    who: &Caller,
    request: pb::StartJobRequest,
) -> Result<crate::domain::NewJob, Status> {
    let mut violations = Vec::new();
    let mut input = convert::new_job(request, &mut violations);
    if !violations.is_empty() {
        return Err(bad(violations));
    }
    input.request_scope = crate::domain::request_scope(&who.scope);
    for (key, value) in &who.scope {
        match input.labels.get(key) {
            Some(v) if v != value => {
                return Err(Status::permission_denied(format!(
                    "{:?} may only start jobs labelled {key}={value}",
                    who.name
                )));
            }
            _ => {
                input.labels.insert(key.clone(), value.clone());
            }
        }
    }
    Ok(input)
}

/// A pause as asked: graceful unless immediate, with an optional drain
/// deadline (graceful only) and an optional time to resume by itself.
fn pause_from(
    mode: i32,
    drain_timeout: &Option<prost_types::Duration>,
    resume_at: &Option<prost_types::Timestamp>,
    violations: &mut Vec<FieldViolation>,
) -> Pause {
    let mode = convert::pause_mode_from(mode, violations);
    let drain = convert::duration_ms("drain_timeout", drain_timeout, violations);
    if drain > 0 && mode == crate::domain::PauseMode::Immediate {
        violations.push(FieldViolation::new(
            "drain_timeout",
            "applies to a graceful pause (an immediate one does not wait)",
        ));
    }
    let resume_at = convert::future_time("resume_at", resume_at, violations);
    Pause {
        mode,
        drain_timeout: (drain > 0).then(|| std::time::Duration::from_millis(drain)),
        resume_at,
    }
}

fn outcome_error(id: JobId, status: &Status) -> pb::ControlOutcome {
    pb::ControlOutcome {
        job_id: id.to_string(),
        job: None,
        error_code: status::code_name(status.code()).to_string(),
        error_message: status.message().to_string(),
    }
}

/// Tags the RPC's span (see [`trace`]) with the job it is about.
fn record_job(id: crate::domain::JobId) {
    tracing::Span::current().record("job_id", tracing::field::display(id));
}

fn bad(violations: Vec<FieldViolation>) -> Status {
    status::invalid_argument(&violations)
}

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::JobEvent, Status>> + Send>>;

#[tonic::async_trait]
impl JobService for JobApi {
    async fn start_job(
        &self,
        request: Request<pb::StartJobRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        let who = caller(&request);
        let validate_only = request.get_ref().validate_only;
        let input = new_job_for(&who, request.into_inner())?;
        if validate_only {
            // Nothing stored: the job as it would start, without an id.
            let job = self.engine.validate_job(input).await?;
            return Ok(Response::new(pb::Job {
                id: String::new(),
                ..convert::job(&job)
            }));
        }
        let job = self.engine.start_job(input).await?;
        record_job(job.id);
        Ok(Response::new(convert::job(&job)))
    }

    async fn run_job(
        &self,
        request: Request<pb::RunJobRequest>,
    ) -> Result<Response<pb::RunJobResponse>, Status> {
        let who = caller(&request);
        let requested_by = requested_by(&request);
        let r = request.into_inner();
        let Some(job) = r.job else {
            return Err(bad(vec![FieldViolation::new(
                "job",
                "is required: the job to start if none of its name is live",
            )]));
        };
        let dry = job.validate_only;
        let mut violations = Vec::new();
        let (reason, request_id) =
            convert::reason_and_request_id(&r.reason, &job.request_id, &mut violations);
        if !violations.is_empty() {
            return Err(bad(violations));
        }
        let input = new_job_for(&who, job)?;
        let provenance = Provenance {
            reason,
            requested_by,
            request_id,
        };
        let may_resume = who.may(auth::Permission::Control);
        let (job, outcome) = match self
            .engine
            .run_job(input, may_resume, provenance, dry)
            .await
        {
            // A live job of that name outside the caller's scope: taken,
            // without saying by which job.
            Ok((job, _)) if !who.sees(&job.labels) => {
                return Err(Status::already_exists(
                    "a live exclusive job of another scope has this name; run this one under another name",
                ));
            }
            Ok(done) => done,
            Err(e) => return Err(e.into()),
        };
        if !dry {
            record_job(job.id);
        }
        let outcome = match outcome {
            RunOutcome::Started => pb::RunOutcome::Started,
            RunOutcome::Resumed => pb::RunOutcome::Resumed,
            RunOutcome::AlreadyRunning => pb::RunOutcome::AlreadyRunning,
        };
        let mut job = convert::job(&job);
        if dry && outcome == pb::RunOutcome::Started {
            job.id = String::new();
        }
        Ok(Response::new(pb::RunJobResponse {
            job: Some(job),
            outcome: outcome as i32,
        }))
    }

    async fn get_job(
        &self,
        request: Request<pb::GetJobRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        let mut violations = Vec::new();
        let id = convert::job_id("job_id", &request.get_ref().job_id, &mut violations);
        let id = convert::checked(id, violations).map_err(bad)?;
        record_job(id);
        let job = self.engine.get_job(id).await?;
        if !caller(&request).sees(&job.labels) {
            return Err(EngineError::NotFound(id).into());
        }
        let owner = self.engine.runner_of(&job).await?;
        let running = if job.counts.running > 0 {
            self.engine.running_items(id, RUNNING_SHOWN).await?
        } else {
            Vec::new()
        };
        Ok(Response::new(pb::Job {
            owner: owner.as_ref().map(convert::owner),
            waiting_for: self.engine.waiting_for(&job).unwrap_or_default(),
            status: Some(convert::status(&job, &running, chrono::Utc::now())),
            ..convert::job(&job)
        }))
    }

    async fn list_jobs(
        &self,
        request: Request<pb::ListJobsRequest>,
    ) -> Result<Response<pb::ListJobsResponse>, Status> {
        let who = caller(&request);
        let mut query = convert::job_query(request.into_inner()).map_err(bad)?;
        // A scoped caller lists only its jobs.
        match who.narrow(std::mem::take(&mut query.labels)) {
            Some(labels) => query.labels = labels,
            None => return Ok(Response::new(pb::ListJobsResponse::default())),
        }
        let page = self.engine.list_jobs(&query).await?;
        Ok(Response::new(pb::ListJobsResponse {
            jobs: page
                .rows
                .iter()
                .map(|job| pb::Job {
                    waiting_for: self.engine.waiting_for(job).unwrap_or_default(),
                    ..convert::job(job)
                })
                .collect(),
            next_page_token: page.next.map(|c| c.encode()).unwrap_or_default(),
        }))
    }

    async fn list_job_items(
        &self,
        request: Request<pb::ListJobItemsRequest>,
    ) -> Result<Response<pb::ListJobItemsResponse>, Status> {
        let who = caller(&request);
        let query = convert::item_query(request.into_inner()).map_err(bad)?;
        record_job(query.job);
        self.visible(&who, query.job).await?;
        let page = self.engine.list_items(&query).await?;
        Ok(Response::new(pb::ListJobItemsResponse {
            items: page.rows.iter().map(convert::item).collect(),
            next_page_token: page.next.map(|c| c.encode()).unwrap_or_default(),
        }))
    }

    async fn pause_job(
        &self,
        request: Request<pb::PauseJobRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        let r = request.get_ref();
        let mut violations = Vec::new();
        let pause = pause_from(r.mode, &r.drain_timeout, &r.resume_at, &mut violations);
        let (id, provenance) = self
            .control_target(&request, &r.job_id, violations, (&r.reason, &r.request_id))
            .await?;
        let job = self
            .engine
            .control(id, Control::Pause(pause), provenance)
            .await?;
        Ok(Response::new(convert::job(&job)))
    }

    async fn resume_job(
        &self,
        request: Request<pb::ResumeJobRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        let r = request.get_ref();
        let (id, provenance) = self
            .control_target(&request, &r.job_id, Vec::new(), ("", &r.request_id))
            .await?;
        let job = self.engine.control(id, Control::Resume, provenance).await?;
        Ok(Response::new(convert::job(&job)))
    }

    async fn cancel_job(
        &self,
        request: Request<pb::CancelJobRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        let r = request.get_ref();
        let (id, provenance) = self
            .control_target(&request, &r.job_id, Vec::new(), (&r.reason, &r.request_id))
            .await?;
        let job = self.engine.control(id, Control::Cancel, provenance).await?;
        Ok(Response::new(convert::job(&job)))
    }

    async fn retry_failed_items(
        &self,
        request: Request<pb::RetryFailedItemsRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        let r = request.get_ref();
        let (id, mut provenance) = self
            .control_target(&request, &r.job_id, Vec::new(), ("", &r.request_id))
            .await?;
        provenance.reason = Some("retry failed items".into());
        let job = self
            .engine
            .control(id, Control::RetryFailed, provenance)
            .await?;
        Ok(Response::new(convert::job(&job)))
    }

    async fn cancel_items(
        &self,
        request: Request<pb::CancelItemsRequest>,
    ) -> Result<Response<pb::CancelItemsResponse>, Status> {
        let r = request.get_ref();
        let mut violations = Vec::new();
        let mut states = Vec::new();
        for (i, &s) in r.states.iter().enumerate() {
            match convert::item_state_from(s) {
                Some(state) => states.push(state),
                None => violations.push(FieldViolation::new(
                    format!("states[{i}]"),
                    format!("{s} is not an item state"),
                )),
            }
        }
        let (id, provenance) = self
            .control_target(&request, &r.job_id, violations, (&r.reason, ""))
            .await?;
        let input = crate::domain::NewSelection {
            indexes: r.indexes.clone(),
            range: r.range.map(|range| (range.first, range.last)),
            states,
        };
        let done = self.engine.cancel_items(id, input, provenance).await?;
        Ok(Response::new(pb::CancelItemsResponse {
            job: Some(convert::job(&done.job)),
            cancelled: done.cancelled,
            interrupted: done.interrupted,
        }))
    }

    async fn add_items(
        &self,
        request: Request<pb::AddItemsRequest>,
    ) -> Result<Response<pb::AddItemsResponse>, Status> {
        let requested_by = requested_by(&request);
        let who = caller(&request);
        let r = request.into_inner();
        let mut violations = Vec::new();
        let id = convert::job_id("job_id", &r.job_id, &mut violations);
        let id = convert::checked(id, violations).map_err(bad)?;
        record_job(id);
        self.visible(&who, id).await?;
        let input = crate::domain::NewItems {
            items: r.items,
            request_id: r.request_id,
            close: r.close,
        };
        let added = self.engine.add_items(id, input, requested_by).await?;
        Ok(Response::new(pb::AddItemsResponse {
            job: Some(convert::job(&added.job)),
            first_index: added.first,
            added: added.count,
        }))
    }

    async fn set_job_concurrency(
        &self,
        request: Request<pb::SetJobConcurrencyRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        let r = request.get_ref();
        let (id, provenance) = self
            .control_target(&request, &r.job_id, Vec::new(), ("", &r.request_id))
            .await?;
        let job = self
            .engine
            .set_concurrency(id, r.concurrency, provenance)
            .await?;
        Ok(Response::new(convert::job(&job)))
    }

    async fn set_job_rate_limit(
        &self,
        request: Request<pb::SetJobRateLimitRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        let r = request.get_ref();
        let mut violations = Vec::new();
        let period_ms = convert::duration_ms("rate_period", &r.rate_period, &mut violations);
        let (id, provenance) = self
            .control_target(&request, &r.job_id, violations, ("", &r.request_id))
            .await?;
        let job = self
            .engine
            .set_rate_limit(id, r.rate_limit, period_ms, provenance)
            .await?;
        Ok(Response::new(convert::job(&job)))
    }

    async fn delete_job(
        &self,
        request: Request<pb::DeleteJobRequest>,
    ) -> Result<Response<pb::DeleteJobResponse>, Status> {
        let who = caller(&request);
        let id = self
            .named_job(&who, &request.get_ref().job_id, Vec::new())
            .await?;
        let job = self.engine.delete_job(id).await?;
        Ok(Response::new(pb::DeleteJobResponse {
            job: Some(convert::job(&job)),
        }))
    }

    async fn control_jobs(
        &self,
        request: Request<pb::ControlJobsRequest>,
    ) -> Result<Response<pb::ControlJobsResponse>, Status> {
        let who = caller(&request);
        let by = requested_by(&request);
        let r = request.into_inner();
        let mut violations = Vec::new();
        let control = match pb::ControlAction::try_from(r.action) {
            Ok(pb::ControlAction::Pause) => Some(Control::Pause(pause_from(
                r.mode,
                &r.drain_timeout,
                &r.resume_at,
                &mut violations,
            ))),
            Ok(pb::ControlAction::Resume) => Some(Control::Resume),
            Ok(pb::ControlAction::Cancel) => Some(Control::Cancel),
            _ => {
                violations.push(FieldViolation::new(
                    "action",
                    "is required: CONTROL_ACTION_PAUSE, _RESUME or _CANCEL",
                ));
                None
            }
        };
        let mut ids = Vec::new();
        for (i, raw) in r.job_ids.iter().enumerate() {
            if let Some(id) = convert::job_id(&format!("job_ids[{i}]"), raw, &mut violations) {
                ids.push(id);
            }
        }
        let selected = !r.labels.is_empty();
        let selector = convert::selector(r.labels, &mut violations);
        if r.job_ids.is_empty() && !selected {
            violations.push(FieldViolation::new(
                "labels",
                "give job_ids and/or labels: which jobs to change",
            ));
        }
        if ids.len() > crate::engine::BULK_LIMIT {
            violations.push(FieldViolation::new(
                "job_ids",
                format!("names more than {} jobs", crate::engine::BULK_LIMIT),
            ));
        }
        let (reason, request_id) =
            convert::reason_and_request_id(&r.reason, &r.request_id, &mut violations);
        let control = convert::checked(control, violations).map_err(bad)?;
        // A scoped caller selects within its scope (a selector naming
        // another value of a scope label selects nothing), and named jobs
        // outside it do not exist for it.
        let mut outcomes = Vec::new();
        let mut visible = Vec::new();
        for id in ids {
            match self.visible(&who, id).await {
                Ok(()) => visible.push(id),
                Err(status) => outcomes.push(outcome_error(id, &status)),
            }
        }
        let labels = if selected { who.narrow(selector) } else { None };
        let provenance = Provenance {
            reason,
            requested_by: by,
            request_id,
        };
        let results = self
            .engine
            .control_jobs(visible, labels, control, provenance)
            .await?;
        for (id, result) in results {
            outcomes.push(match result {
                Ok(job) => pb::ControlOutcome {
                    job_id: id.to_string(),
                    job: Some(convert::job(&job)),
                    ..Default::default()
                },
                Err(e) => outcome_error(id, &Status::from(e)),
            });
        }
        Ok(Response::new(pb::ControlJobsResponse { outcomes }))
    }

    type WatchJobStream = EventStream;

    async fn watch_job(
        &self,
        request: Request<pb::WatchJobRequest>,
    ) -> Result<Response<Self::WatchJobStream>, Status> {
        let (id, from_seq, window) = self.watch_request(request).await?;
        let stream = self.engine.watch(id, from_seq, window).await?;
        let stream = stream.map(|item| match item {
            Ok(item) => Ok(convert::watch_item(&item)),
            Err(e) => Err(Status::from(e)),
        });
        Ok(Response::new(Box::pin(stream)))
    }
}

impl JobApi {
    /// A WatchJob request checked, and the caller allowed to see the job:
    /// the job, the sequence to stream after and the stream's window.
    /// Shared by the generated service's `watch_job` and by
    /// [`routes::JobRoutes`], which serves WatchJob in this server.
    async fn watch_request(
        &self,
        request: Request<pb::WatchJobRequest>,
    ) -> Result<(JobId, u64, std::time::Duration), Status> {
        let who = caller(&request);
        let r = request.into_inner();
        let mut violations = Vec::new();
        let window = convert::watch_window(&r.window, &mut violations);
        let id = self.named_job(&who, &r.job_id, violations).await?;
        Ok((id, r.from_sequence, window))
    }
}

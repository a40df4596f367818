//! The one place engine errors become gRPC statuses. Refusals carry a
//! `google.rpc.ErrorInfo` with a stable reason; bad requests carry a
//! `google.rpc.BadRequest` naming each field. Internal causes are logged,
//! never sent: a client sees no SQL.

use crate::{
    domain::{FieldViolation, spec::echo},
    engine::EngineError,
};
use std::collections::HashMap;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// A gRPC code as the specification spells it (`FAILED_PRECONDITION`): in
/// ControlJobs outcomes, span attributes, metrics labels and the CLI.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// The `domain` of every ErrorInfo we send.
pub const ERROR_DOMAIN: &str = "jobvisor";

/// Most bad fields a status names: with each violation's own length
/// bounded (see [`FieldViolation::new`]), the message and details stay a
/// few kilobytes, within what gRPC clients accept in trailers.
const MAX_VIOLATIONS: usize = 10;

/// INVALID_ARGUMENT naming the bad fields (the first [`MAX_VIOLATIONS`],
/// and how many more there are).
pub fn invalid_argument(violations: &[FieldViolation]) -> Status {
    let shown = &violations[..violations.len().min(MAX_VIOLATIONS)];
    let mut details = ErrorDetails::new();
    for v in shown {
        details.add_bad_request_violation(v.field.clone(), v.description.clone());
    }
    let mut summary: Vec<String> = shown
        .iter()
        .map(|v| format!("{}: {}", v.field, v.description))
        .collect();
    if violations.len() > shown.len() {
        summary.push(format!(
            "and {} more bad fields",
            violations.len() - shown.len()
        ));
    }
    Status::with_error_details(
        Code::InvalidArgument,
        format!("invalid request: {}", summary.join("; ")),
        details,
    )
}

fn with_reason(
    code: Code,
    message: String,
    reason: &str,
    metadata: HashMap<String, String>,
) -> Status {
    Status::with_error_details(
        code,
        message,
        ErrorDetails::with_error_info(reason, ERROR_DOMAIN, metadata),
    )
}

impl From<EngineError> for Status {
    fn from(e: EngineError) -> Status {
        match e {
            EngineError::InvalidArgument(violations) => invalid_argument(&violations),
            EngineError::PermissionDenied(why) => with_reason(
                Code::PermissionDenied,
                why,
                "NOT_ALLOWED_ON_THIS_SERVER",
                HashMap::new(),
            ),
            EngineError::NotFound(id) => with_reason(
                Code::NotFound,
                format!("job {id} not found"),
                "JOB_NOT_FOUND",
                HashMap::from([("job_id".into(), id.to_string())]),
            ),
            EngineError::Refused(refusal) => {
                let state = match refusal {
                    crate::domain::Refusal::NotPausable(s)
                    | crate::domain::Refusal::NotResumable(s)
                    | crate::domain::Refusal::NotCancellable(s)
                    | crate::domain::Refusal::NotRetryable(s)
                    | crate::domain::Refusal::Ended(s)
                    | crate::domain::Refusal::NotDeletable(s)
                    | crate::domain::Refusal::TakesNoItems(s)
                    | crate::domain::Refusal::ItemsNotCancellable(s)
                    | crate::domain::Refusal::Stale { state: s, .. } => s,
                };
                with_reason(
                    Code::FailedPrecondition,
                    refusal.to_string(),
                    refusal.reason_code(),
                    HashMap::from([("state".into(), state.as_str().to_uppercase())]),
                )
            }
            EngineError::RequestIdReused(key) => with_reason(
                Code::AlreadyExists,
                format!(
                    "request id {} was already used for a different request",
                    echo(&key)
                ),
                "REQUEST_ID_REUSED",
                HashMap::from([("request_id".into(), key)]),
            ),
            EngineError::NameTaken { name, job } => with_reason(
                Code::AlreadyExists,
                format!(
                    "job {job} is a live exclusive job named {}: pause, cancel or run it, or start \
                     this one under another name",
                    echo(&name)
                ),
                "JOB_NAME_TAKEN",
                HashMap::from([("job_id".into(), job.to_string())]),
            ),
            EngineError::StoreUnavailable(cause) => {
                tracing::warn!(error = %cause, "unavailable");
                Status::unavailable("the job store is unavailable; retry later")
            }
            EngineError::ShuttingDown(message) => Status::unavailable(message),
            EngineError::NotApplied(message) => {
                tracing::warn!(%message, "unavailable");
                Status::unavailable(message)
            }
            EngineError::Contended(id) => with_reason(
                Code::Aborted,
                format!("job {id} is changing too fast; retry"),
                "JOB_CONTENDED",
                HashMap::from([("job_id".into(), id.to_string())]),
            ),
            EngineError::Lagging { sent, stalled } => with_reason(
                Code::ResourceExhausted,
                format!(
                    "this WatchJob stream fell behind: its client read nothing for {} s while \
                     newer events were stored (--watch-stall-timeout). Every event up to \
                     sequence {sent} was sent: watch again with from_sequence {sent}",
                    stalled.as_secs()
                ),
                "WATCH_LAGGING",
                HashMap::from([("from_sequence".into(), sent.to_string())]),
            ),
            EngineError::Store(cause) => {
                tracing::error!(error = %cause, "store failed");
                Status::internal("internal error; see the server log")
            }
            EngineError::Internal(why) => {
                tracing::error!(%why, "internal error");
                Status::internal("internal error; see the server log")
            }
        }
    }
}

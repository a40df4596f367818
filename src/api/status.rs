//! The one place engine errors become gRPC statuses. Refusals carry a
//! `google.rpc.ErrorInfo` with a stable reason; bad requests carry a
//! `google.rpc.BadRequest` naming each field. Internal causes are logged,
//! never sent: a client sees no SQL.

use crate::{domain::FieldViolation, engine::EngineError};
use std::collections::HashMap;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// The `domain` of every ErrorInfo we send.
pub const ERROR_DOMAIN: &str = "jobvisor";

/// INVALID_ARGUMENT naming every bad field.
pub fn invalid_argument(violations: &[FieldViolation]) -> Status {
    let mut details = ErrorDetails::new();
    for v in violations {
        details.add_bad_request_violation(v.field.clone(), v.description.clone());
    }
    let summary: Vec<String> = violations
        .iter()
        .map(|v| format!("{}: {}", v.field, v.description))
        .collect();
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
                format!("request id {key:?} was already used for a different request"),
                "REQUEST_ID_REUSED",
                HashMap::from([("request_id".into(), key)]),
            ),
            EngineError::Unavailable(why) => {
                tracing::warn!(%why, "unavailable");
                let message = if why.contains("shutting down") || why.contains("acknowledge") {
                    why
                } else {
                    "the job store is unavailable; retry later".into()
                };
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
            EngineError::Internal(why) => {
                tracing::error!(%why, "internal error");
                Status::internal("internal error; see the server log")
            }
        }
    }
}

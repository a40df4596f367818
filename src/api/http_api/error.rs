//! The one place a gRPC status becomes an HTTP answer: the HTTP status
//! from the code (the usual mapping, below), and the body in the JSON
//! form of Google's APIs, with the status's details as they are:
//!
//! ```json
//! {"error": {"code": 409, "status": "FAILED_PRECONDITION",
//!   "message": "job … is SUCCEEDED: it cannot be paused",
//!   "details": [{"@type": "type.googleapis.com/google.rpc.ErrorInfo",
//!                "reason": "JOB_NOT_PAUSABLE", "domain": "jobvisor",
//!                "metadata": {"state": "SUCCEEDED"}}]}}
//! ```
//!
//! Bad fields come as a `google.rpc.BadRequest` detail
//! (`fieldViolations`), a wait as `google.rpc.RetryInfo` and a
//! `Retry-After` header.

use super::super::status::code_name;
use axum::{body::Body, response::Response};
use http::{HeaderValue, StatusCode, header};
use serde_json::{Value, json};
use tonic::{Code, Status};
use tonic_types::StatusExt as _;

/// The HTTP status of a gRPC code. FAILED_PRECONDITION is 409 Conflict,
/// not Google's 400: the request is well formed, and the job's state
/// refuses it (pausing a SUCCEEDED job); 400 stays for requests that are
/// wrong whatever the state.
pub fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::InvalidArgument | Code::OutOfRange => StatusCode::BAD_REQUEST,
        Code::FailedPrecondition | Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        // The client went away (nginx's 499).
        Code::Cancelled => StatusCode::from_u16(499).expect("499 is a status code"),
        Code::Unknown | Code::Internal | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// The JSON error of a status, with `http` as its code.
pub fn error_json(status: &Status, http: StatusCode) -> Value {
    let details = status.get_error_details();
    let mut shown = Vec::new();
    if let Some(info) = details.error_info() {
        shown.push(json!({
            "@type": "type.googleapis.com/google.rpc.ErrorInfo",
            "reason": info.reason,
            "domain": info.domain,
            "metadata": info.metadata,
        }));
    }
    if let Some(bad) = details.bad_request() {
        let violations: Vec<Value> = bad
            .field_violations
            .iter()
            .map(|v| json!({"field": v.field, "description": v.description}))
            .collect();
        shown.push(json!({
            "@type": "type.googleapis.com/google.rpc.BadRequest",
            "fieldViolations": violations,
        }));
    }
    if let Some(delay) = details.retry_info().and_then(|r| r.retry_delay) {
        shown.push(json!({
            "@type": "type.googleapis.com/google.rpc.RetryInfo",
            "retryDelay": format!("{:.3}s", delay.as_secs_f64()),
        }));
    }
    json!({"error": {
        "code": http.as_u16(),
        "status": code_name(status.code()),
        "message": status.message(),
        "details": shown,
    }})
}

/// The HTTP answer for a status.
pub fn response(status: &Status) -> Response {
    response_with(status, http_status(status.code()))
}

/// The HTTP answer for a status, with an HTTP status of the caller's
/// choosing (413 for a body over the limit).
pub fn response_with(status: &Status, http: StatusCode) -> Response {
    let body = serde_json::to_vec(&error_json(status, http)).unwrap_or_default();
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = http;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if status.code() == Code::Unauthenticated {
        headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    if let Some(delay) = status.get_details_retry_info().and_then(|r| r.retry_delay) {
        // Whole seconds, rounded up: at least 1.
        let seconds = delay.as_secs() + u64::from(delay.subsec_nanos() > 0);
        headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds.max(1)));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::FieldViolation;

    #[test]
    fn codes_map_to_the_usual_http_statuses() {
        for (code, http) in [
            (Code::InvalidArgument, 400),
            (Code::NotFound, 404),
            (Code::AlreadyExists, 409),
            (Code::Aborted, 409),
            (Code::FailedPrecondition, 409),
            (Code::PermissionDenied, 403),
            (Code::Unauthenticated, 401),
            (Code::ResourceExhausted, 429),
            (Code::Unavailable, 503),
            (Code::Internal, 500),
        ] {
            assert_eq!(http_status(code).as_u16(), http, "{code:?}");
        }
    }

    #[test]
    fn an_error_carries_the_bad_fields_and_the_reason() {
        let status = super::super::super::status::invalid_argument(&[FieldViolation::new(
            "job_id",
            "is not a UUID",
        )]);
        let json = error_json(&status, StatusCode::BAD_REQUEST);
        assert_eq!(json["error"]["code"], 400);
        assert_eq!(json["error"]["status"], "INVALID_ARGUMENT");
        assert_eq!(
            json["error"]["details"][0]["fieldViolations"][0]["field"],
            "job_id"
        );
        let refused: Status =
            crate::engine::EngineError::Contended(crate::domain::JobId::new()).into();
        let json = error_json(&refused, http_status(refused.code()));
        assert_eq!(json["error"]["details"][0]["reason"], "JOB_CONTENDED");
        let unauthenticated = response(&Status::unauthenticated("no token"));
        assert_eq!(unauthenticated.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            unauthenticated.headers()[header::WWW_AUTHENTICATE],
            "Bearer"
        );
    }
}

//! The HTTP/JSON API (`serve --http-listen`): the JobService over HTTP with
//! JSON bodies, in the shape of the common HTTP mapping of gRPC
//! (google.api.http), and WatchJob as Server-Sent Events ([`sse`]).
//!
//! | route | RPC |
//! | --- | --- |
//! | `GET /v1/jobs?states=…&labels[k]=v&page_size=…&page_token=…&name=…` | ListJobs |
//! | `POST /v1/jobs` | StartJob |
//! | `POST /v1/jobs:run` | RunJob |
//! | `POST /v1/jobs:control` | ControlJobs |
//! | `GET /v1/jobs/{job_id}` | GetJob |
//! | `DELETE /v1/jobs/{job_id}` | DeleteJob |
//! | `GET /v1/jobs/{job_id}/items?states=…&page_size=…&page_token=…` | ListJobItems |
//! | `POST /v1/jobs/{job_id}:addItems` | AddItems |
//! | `POST /v1/jobs/{job_id}:cancelItems` | CancelItems |
//! | `POST /v1/jobs/{job_id}:pause`, `:resume`, `:cancel`, `:retryFailedItems`, `:setConcurrency`, `:setRateLimit` | PauseJob, ResumeJob, CancelJob, RetryFailedItems, SetJobConcurrency, SetJobRateLimit |
//! | `GET /v1/jobs/{job_id}/events` (`Last-Event-ID`, `?after=`, `?window=`) | WatchJob |
//! | `GET /v1/me` | (none: who the caller is and what they may do) |
//!
//! The same port serves the dashboard ([`dashboard`]): `GET /`,
//! `GET /jobs/{job_id}` and `/assets/…`.
//!
//! Nothing is written twice. A route turns its path, query and JSON body
//! into the RPC's protobuf request ([`json`]) and sends it as a gRPC call,
//! in process, through the stack the gRPC port serves the JobService with:
//! the trace layer (span, metrics), the guard (bearer token, permission,
//! per-caller rate and concurrency limits, shared with the gRPC port),
//! the limits layer and [`JobRoutes`], which runs the JobService handlers.
//! So validation, errors, auth, permissions, label scopes, audit and
//! WatchJob's stream caps are those of gRPC. The answer's message becomes
//! JSON; a status becomes an HTTP status and a JSON error with the same
//! reason and bad fields ([`error`]).
//!
//! A POST must say `Content-Type: application/json`: a web page of
//! another site cannot send that without the browser asking first (a CORS
//! preflight, which this server never grants), so it cannot make a
//! browser that reaches this port pause or cancel jobs.

mod dashboard;
mod error;
mod json;
mod listen;
mod sse;

pub use listen::{serve, tls_for_http};

use super::{
    guard::{Guard, GuardLayer},
    limits::{Limits, LimitsLayer},
    routes::JobRoutes,
    status,
    trace::{TraceLayer, TracedBody},
};
use crate::domain::FieldViolation;
use axum::{
    Router,
    body::Body,
    extract::{FromRequestParts, Path, Request, State},
    response::Response,
    routing::{get, post},
};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::{HeaderValue, Method, StatusCode, header, request::Parts};
use http_body_util::{BodyExt as _, Full, LengthLimitError, Limited};
use std::{sync::Arc, time::Duration};
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt as _};
use tower::{Layer as _, Service as _};

/// The gRPC port's stack for the JobService, as the routes call it.
type Grpc = super::trace::Traced<Guard<Limits<JobRoutes>>>;

/// An answer that refuses the request, before or instead of the call.
type Refused = Box<Response>;

/// A gRPC answer as the stack gives it.
type GrpcResponse = http::Response<TracedBody<tonic::body::Body>>;

/// The HTTP API: the routes and what they call.
#[derive(Clone)]
pub struct HttpApi {
    grpc: Grpc,
    /// The guard in `grpc`, for `GET /v1/me`.
    guard: GuardLayer,
    /// The largest request body, in bytes (`--max-request-bytes`).
    max_body_bytes: usize,
    /// An events stream on which nothing was sent for this long gets a
    /// `: keepalive` comment (`--stream-keepalive`).
    keepalive: Duration,
    /// Stored events as SSE events, shared by the events streams.
    shared_events: Arc<sse::SharedEvents>,
}

/// How a route gives its RPC's fields besides the path's `job_id`.
#[derive(Clone, Copy)]
enum Input {
    /// The query string (GET, DELETE).
    Query,
    /// A JSON body, the request message (POST).
    Body,
}

impl HttpApi {
    /// The API over `jobs` (the JobService as the gRPC port mounts it),
    /// behind the same `guard` and `limits` as the gRPC port.
    pub fn new(
        jobs: JobRoutes,
        guard: &GuardLayer,
        limits: LimitsLayer,
        keepalive: Duration,
    ) -> Self {
        HttpApi {
            grpc: TraceLayer.layer(guard.layer(limits.layer(jobs))),
            guard: guard.clone(),
            max_body_bytes: limits.max_request_bytes,
            keepalive,
            shared_events: Arc::default(),
        }
    }

    /// The routes (see the module docs).
    pub fn router(self) -> Router {
        Router::new()
            .route("/v1/jobs", get(list_jobs).post(start_job))
            .route("/v1/jobs:run", post(run_job))
            .route("/v1/jobs:control", post(control_jobs))
            .route(
                "/v1/jobs/{job}",
                get(get_job).delete(delete_job).post(job_method),
            )
            .route("/v1/jobs/{job}/items", get(list_items))
            .route("/v1/jobs/{job}/events", get(events))
            .route("/v1/me", get(me))
            .route("/", get(dashboard::page))
            .route("/jobs/{job}", get(dashboard::page))
            .route("/assets/app.js", get(dashboard::script))
            .route("/assets/app.css", get(dashboard::style))
            .fallback(no_route)
            .method_not_allowed_fallback(no_method)
            .with_state(self)
    }

    /// Calls `method` with `request`'s path `job_id` (if any) and its
    /// query or body, and answers with the RPC's answer as JSON.
    async fn unary(
        &self,
        method: &str,
        request: Request,
        job_id: Option<&str>,
        input: Input,
    ) -> Response {
        match self.try_unary(method, request, job_id, input).await {
            Ok(response) => response,
            Err(refused) => *refused,
        }
    }

    async fn try_unary(
        &self,
        method: &str,
        request: Request,
        job_id: Option<&str>,
        input: Input,
    ) -> Result<Response, Refused> {
        let rpc = json::method(method);
        let desc = rpc.input();
        let (parts, body) = request.into_parts();
        let mut object = match input {
            Input::Query => {
                json::query_object(&desc, parts.uri.query().unwrap_or("")).map_err(bad)?
            }
            Input::Body => {
                json_content_type(&parts)?;
                let body = self.read_body(&parts, body).await?;
                json::body_object(&body).map_err(bad)?
            }
        };
        if let Some(id) = job_id {
            json::set_from_path(&mut object, &desc, "job_id", id).map_err(bad)?;
        }
        let message = json::encode(&desc, object).map_err(bad)?;
        let answer = self.call(&parts, method, message).await.map_err(refusal)?;
        let answer = unary_answer(answer).await.map_err(refusal)?;
        let body = json::to_json(&rpc.output(), &answer).map_err(|why| {
            tracing::error!(%why, method, "an answer did not convert to JSON");
            refusal(Status::internal("internal error; see the server log"))
        })?;
        Ok(json_response(StatusCode::OK, body))
    }

    /// The request body, at most `max_body_bytes` of it.
    async fn read_body(&self, parts: &Parts, body: Body) -> Result<Bytes, Refused> {
        let limit = self.max_body_bytes;
        let too_large = || {
            let status = Status::with_error_details(
                Code::ResourceExhausted,
                format!(
                    "the request body is larger than the server's limit of {limit} bytes \
                     (--max-request-bytes)"
                ),
                ErrorDetails::with_bad_request_violation("body", format!("is over {limit} bytes")),
            );
            Box::new(error::response_with(&status, StatusCode::PAYLOAD_TOO_LARGE))
        };
        let declared = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit as u64) {
            return Err(too_large());
        }
        match Limited::new(body, limit).collect().await {
            Ok(collected) => Ok(collected.to_bytes()),
            Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => Err(too_large()),
            Err(e) => Err(bad(FieldViolation::new(
                "body",
                format!("could not be read: {e}"),
            ))),
        }
    }

    /// Sends `message` as a call of the JobService's `method` through the
    /// gRPC stack, with the caller's headers (token, `x-requested-by`,
    /// trace context) and connection (address, client certificate).
    async fn call(
        &self,
        parts: &Parts,
        method: &str,
        message: Vec<u8>,
    ) -> Result<GrpcResponse, Status> {
        let mut framed = BytesMut::with_capacity(5 + message.len());
        framed.put_u8(0);
        framed.put_u32(u32::try_from(message.len()).map_err(|_| {
            Status::resource_exhausted("the request is larger than a gRPC message can be")
        })?);
        framed.extend_from_slice(&message);
        let mut request = http::Request::new(Full::new(framed.freeze()));
        *request.method_mut() = Method::POST;
        *request.version_mut() = http::Version::HTTP_2;
        *request.uri_mut() = format!("/jobvisor.v1.JobService/{method}")
            .parse()
            .expect("a JobService path is a URI");
        let headers = request.headers_mut();
        for (name, value) in &parts.headers {
            if forwarded(name) {
                headers.append(name.clone(), value.clone());
            }
        }
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
        listen::copy_connection(&parts.extensions, request.extensions_mut());
        let mut grpc = self.grpc.clone();
        let Ok(()) = std::future::poll_fn(|cx| {
            tower::Service::<http::Request<Full<Bytes>>>::poll_ready(&mut grpc, cx)
        })
        .await;
        let Ok(response) = grpc.call(request).await;
        // A refusal before any message (the guard's, a handler's) comes
        // in the headers.
        match Status::from_header_map(response.headers()) {
            Some(status) if status.code() != Code::Ok => Err(status),
            _ => Ok(response),
        }
    }
}

/// Whether a header of the HTTP request goes on to the gRPC call: the
/// caller's (authorization, x-requested-by, trace context…), not the
/// HTTP transport's nor gRPC's own.
fn forwarded(name: &header::HeaderName) -> bool {
    !(matches!(
        *name,
        header::HOST
            | header::CONNECTION
            | header::CONTENT_TYPE
            | header::CONTENT_LENGTH
            | header::TRANSFER_ENCODING
            | header::TE
            | header::UPGRADE
            | header::ACCEPT
            | header::ACCEPT_ENCODING
            | header::COOKIE
    ) || name.as_str().starts_with("grpc-")
        || name.as_str() == "last-event-id")
}

/// The one message of a unary answer, or its status.
async fn unary_answer(response: GrpcResponse) -> Result<Bytes, Status> {
    let collected = response.into_body().collect().await?;
    if let Some(status) = collected.trailers().and_then(Status::from_header_map)
        && status.code() != Code::Ok
    {
        return Err(status);
    }
    let data = collected.to_bytes();
    let mut messages = Messages::default();
    messages.push(data);
    match messages.next() {
        Some(message) => Ok(message),
        None => Err(Status::internal("the answer held no message")),
    }
}

/// gRPC messages out of a body's bytes: each a 5-byte prefix (not
/// compressed, big-endian length) and the message.
///
/// The in-process stack hands over whole messages (a WatchJob batch is
/// one chunk of them): a chunk that comes while nothing is held is cut as
/// it is, each message a view of it, not a copy. Only a message split
/// across chunks is gathered in `partial`.
#[derive(Default)]
struct Messages {
    /// A chunk being cut (empty while `partial` holds anything).
    whole: Bytes,
    partial: BytesMut,
}

impl Messages {
    fn push(&mut self, data: Bytes) {
        if self.whole.is_empty() && self.partial.is_empty() {
            self.whole = data;
            return;
        }
        if !self.whole.is_empty() {
            self.partial.extend_from_slice(&self.whole);
            self.whole = Bytes::new();
        }
        self.partial.extend_from_slice(&data);
    }

    /// The next whole message, if it has arrived.
    fn next(&mut self) -> Option<Bytes> {
        if !self.whole.is_empty() {
            let len = whole_message(&self.whole)?;
            self.whole.advance(5);
            return Some(self.whole.split_to(len));
        }
        let len = whole_message(&self.partial)?;
        self.partial.advance(5);
        Some(self.partial.split_to(len).freeze())
    }
}

/// The length of the message `buf` starts with, if all of it is there.
fn whole_message(buf: &[u8]) -> Option<usize> {
    let prefix = buf.get(..5)?;
    let len = u32::from_be_bytes(prefix[1..5].try_into().expect("4 bytes")) as usize;
    (buf.len() >= 5 + len).then_some(len)
}

/// A POST body must be JSON, and say so (see the module docs).
fn json_content_type(parts: &Parts) -> Result<(), Refused> {
    let json = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
    if json {
        return Ok(());
    }
    let status = Status::with_error_details(
        Code::InvalidArgument,
        "send the request message as JSON, with Content-Type: application/json \
         (curl --json '{…}'); an empty message is {}",
        ErrorDetails::with_bad_request_violation("Content-Type", "must be application/json"),
    );
    Err(Box::new(error::response_with(
        &status,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
    )))
}

fn bad(violation: FieldViolation) -> Refused {
    refusal(status::invalid_argument(&[violation]))
}

fn refusal(status: Status) -> Refused {
    Box::new(error::response(&status))
}

fn json_response(code: StatusCode, body: Vec<u8>) -> Response {
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = code;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// The `{job}` of a route's path; a path that does not decode (not
/// UTF-8) is refused like any bad field, in JSON.
struct JobPath(String);

impl<S: Send + Sync> FromRequestParts<S> for JobPath {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Response> {
        match Path::<String>::from_request_parts(parts, state).await {
            Ok(Path(job)) => Ok(JobPath(job)),
            Err(rejection) => Err(*bad(FieldViolation::new("job_id", rejection.body_text()))),
        }
    }
}

async fn list_jobs(State(api): State<HttpApi>, request: Request) -> Response {
    api.unary("ListJobs", request, None, Input::Query).await
}

async fn start_job(State(api): State<HttpApi>, request: Request) -> Response {
    api.unary("StartJob", request, None, Input::Body).await
}

async fn run_job(State(api): State<HttpApi>, request: Request) -> Response {
    api.unary("RunJob", request, None, Input::Body).await
}

async fn control_jobs(State(api): State<HttpApi>, request: Request) -> Response {
    api.unary("ControlJobs", request, None, Input::Body).await
}

async fn get_job(State(api): State<HttpApi>, JobPath(job): JobPath, request: Request) -> Response {
    if job.contains(':') {
        return no_method().await;
    }
    api.unary("GetJob", request, Some(&job), Input::Query).await
}

async fn delete_job(
    State(api): State<HttpApi>,
    JobPath(job): JobPath,
    request: Request,
) -> Response {
    if job.contains(':') {
        return no_method().await;
    }
    api.unary("DeleteJob", request, Some(&job), Input::Query)
        .await
}

async fn list_items(
    State(api): State<HttpApi>,
    JobPath(job): JobPath,
    request: Request,
) -> Response {
    api.unary("ListJobItems", request, Some(&job), Input::Query)
        .await
}

/// The custom methods on one job: `POST /v1/jobs/{job_id}:verb`.
const JOB_METHODS: [(&str, &str); 8] = [
    ("addItems", "AddItems"),
    ("cancelItems", "CancelItems"),
    ("pause", "PauseJob"),
    ("resume", "ResumeJob"),
    ("cancel", "CancelJob"),
    ("retryFailedItems", "RetryFailedItems"),
    ("setConcurrency", "SetJobConcurrency"),
    ("setRateLimit", "SetJobRateLimit"),
];

async fn job_method(
    State(api): State<HttpApi>,
    JobPath(job_verb): JobPath,
    request: Request,
) -> Response {
    let found = job_verb.rsplit_once(':').and_then(|(job, verb)| {
        JOB_METHODS
            .iter()
            .find(|(name, _)| *name == verb)
            .map(|(_, method)| (job, *method))
    });
    match found {
        Some((job, method)) => api.unary(method, request, Some(job), Input::Body).await,
        None => error::response(&Status::not_found(format!(
            "no such method: POST /v1/jobs/{{job_id}}:VERB with VERB one of {}",
            JOB_METHODS.map(|(verb, _)| verb).join(", ")
        ))),
    }
}

async fn events(State(api): State<HttpApi>, JobPath(job): JobPath, request: Request) -> Response {
    sse::events(&api, &job, request).await
}

/// `GET /v1/me`: the caller's name, permissions and label scope, as the
/// guard identifies them (401 without a valid token when tokens are on).
/// The dashboard shows action buttons only to a caller who may use them.
async fn me(State(api): State<HttpApi>, request: Request) -> Response {
    let (parts, _) = request.into_parts();
    let mut probe = http::Request::new(());
    *probe.headers_mut() = parts.headers.clone();
    listen::copy_connection(&parts.extensions, probe.extensions_mut());
    match api.guard.whoami(&probe) {
        Ok(caller) => {
            let permissions: Vec<&str> = caller.permissions.iter().map(|p| p.as_str()).collect();
            let body = serde_json::json!({
                "name": caller.name,
                "permissions": permissions,
                "scope": caller.scope,
                "authenticated": caller.via != super::auth::Via::Nobody,
            });
            json_response(StatusCode::OK, body.to_string().into_bytes())
        }
        Err(status) => error::response(&status),
    }
}

async fn no_route() -> Response {
    error::response(&Status::not_found(
        "no such route; the API is under /v1/jobs (see the README, HTTP/JSON API)",
    ))
}

async fn no_method() -> Response {
    let status = Status::unimplemented("this route does not take this method");
    error::response_with(&status, StatusCode::METHOD_NOT_ALLOWED)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_cut_at_their_prefixes_whatever_the_chunks() {
        let mut framed = Vec::new();
        for message in [&b"abc"[..], b"", b"defgh"] {
            framed.push(0);
            framed.extend_from_slice(&(message.len() as u32).to_be_bytes());
            framed.extend_from_slice(message);
        }
        // Whole, in two-byte pieces, and a message and a half at a time.
        for size in [framed.len(), 2, 12] {
            let mut messages = Messages::default();
            let mut got = Vec::new();
            for chunk in framed.chunks(size) {
                messages.push(Bytes::copy_from_slice(chunk));
                while let Some(m) = messages.next() {
                    got.push(m);
                }
            }
            assert_eq!(got, vec![&b"abc"[..], b"", b"defgh"], "chunks of {size}");
        }
    }
}

//! WatchJob as Server-Sent Events: `GET /v1/jobs/{job_id}/events`.
//!
//! The route calls WatchJob through the gRPC stack like any other route,
//! so it is the same stream: the job's watchers in this process share one
//! feed (one read of each new event for all of them, see `engine/hub.rs`),
//! progress comes at most every `progress_interval` (500 ms), a quiet
//! stream gets a progress message every `--stream-keepalive`, and the
//! stream caps, the stall timeout and shutdown apply as they do to gRPC.
//! Each message becomes one SSE event:
//!
//! ```text
//! id: 42
//! data: {"sequence":"42","time":"…","stateChanged":{…}}
//! ```
//!
//! `id` is where to resume: the sequence of the last stored event this
//! stream has sent (or the one it started after). A stored event's `id` is
//! its own sequence; a snapshot or progress message repeats the last one,
//! not its own `sequence` field, which may name events this stream has not
//! sent yet. A client that reconnects with `Last-Event-ID` (browsers do it
//! by themselves), or `?after=`, gets every stored event after it, once.
//!
//! The stream ends with `event: end` after the job's terminal event, or
//! `event: error` with the JSON error (a lagging client, a shutdown), so
//! that a browser's EventSource, which reconnects whenever a stream ends,
//! can tell it to stop. A comment `: keepalive` is sent when nothing else
//! was for `--stream-keepalive`.

use super::{HttpApi, Messages, error, json};
use crate::{domain::FieldViolation, pb};
use axum::{body::Body, extract::Request, response::Response};
use bytes::Bytes;
use http::{HeaderValue, StatusCode, header};
use http_body::Frame;
use prost::Message as _;
use prost_reflect::{DynamicMessage, MessageDescriptor};
use std::{
    collections::VecDeque,
    convert::Infallible,
    future::Future,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};
use tokio::time::{Instant, Sleep};
use tonic::{Code, Status};

/// The events of a job, from `Last-Event-ID`, `?after=` or the start.
pub async fn events(api: &HttpApi, job: &str, request: Request) -> Response {
    let (parts, _) = request.into_parts();
    let from = match resume_point(&parts) {
        Ok(from) => from,
        Err(violation) => return *super::bad(violation),
    };
    let message = pb::WatchJobRequest {
        job_id: job.to_string(),
        from_sequence: from,
    }
    .encode_to_vec();
    let answer = match api.call(&parts, "WatchJob", message).await {
        Ok(answer) => answer,
        Err(status) => return error::response(&status),
    };
    let body = SseBody {
        inner: Box::pin(answer.into_body()),
        messages: Messages::default(),
        out: VecDeque::new(),
        cursor: from,
        desc: json::job_event(),
        keepalive: api.keepalive,
        timer: Box::pin(tokio::time::sleep(api.keepalive)),
        ended: false,
    };
    let mut response = Response::new(Body::new(body));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // nginx would otherwise hold events back in its buffer.
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    *response.status_mut() = StatusCode::OK;
    response
}

/// The sequence to stream after: `Last-Event-ID` (what a browser sends
/// when it reconnects) over `?after=`, else 0 (the whole history).
fn resume_point(parts: &http::request::Parts) -> Result<u64, FieldViolation> {
    if let Some(value) = parts.headers.get("last-event-id") {
        return value
            .to_str()
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(|| {
                FieldViolation::new("Last-Event-ID", "must be an event's sequence (a number)")
            });
    }
    let mut after = 0;
    for pair in parts.uri.query().unwrap_or("").split('&') {
        match pair.split_once('=').unwrap_or((pair, "")) {
            ("", _) => {}
            ("after", value) => {
                after = value.parse().map_err(|_| {
                    FieldViolation::new("after", "must be an event's sequence (a number)")
                })?;
            }
            (name, _) => {
                return Err(FieldViolation::new(
                    name,
                    "is not a query parameter of the events stream (after is)",
                ));
            }
        }
    }
    Ok(after)
}

type Inner = Pin<Box<dyn http_body::Body<Data = Bytes, Error = Status> + Send>>;

/// The events stream's body: the WatchJob answer's messages as SSE events.
struct SseBody {
    inner: Inner,
    messages: Messages,
    /// Events made and not yet handed to the connection.
    out: VecDeque<Bytes>,
    /// Where a client resumes: the last stored event sent.
    cursor: u64,
    desc: MessageDescriptor,
    keepalive: Duration,
    timer: Pin<Box<Sleep>>,
    ended: bool,
}

impl SseBody {
    /// One message as an SSE event.
    fn event(&mut self, message: Bytes) -> Bytes {
        let event = match DynamicMessage::decode(self.desc.clone(), message) {
            Ok(event) => event,
            Err(e) => return error_event(&Status::internal(format!("undecodable event: {e}"))),
        };
        let stored = !(event.has_field_by_number(10) || event.has_field_by_number(14));
        if stored {
            let sequence = event
                .get_field_by_number(1)
                .and_then(|v| v.as_u64())
                .unwrap_or(self.cursor);
            self.cursor = self.cursor.max(sequence);
        }
        match json::message_json(&event) {
            Ok(data) => {
                let mut out = format!("id: {}\ndata: ", self.cursor).into_bytes();
                out.extend_from_slice(&data);
                out.extend_from_slice(b"\n\n");
                Bytes::from(out)
            }
            Err(e) => error_event(&Status::internal(format!("unconvertible event: {e}"))),
        }
    }

    /// The stream's last event: `end` after an OK status, `error` else.
    fn finish(&mut self, status: Option<Status>) {
        self.ended = true;
        let last = match status {
            Some(status) if status.code() != Code::Ok => error_event(&status),
            _ => Bytes::from_static(b"event: end\ndata: {}\n\n"),
        };
        self.out.push_back(last);
    }
}

fn error_event(status: &Status) -> Bytes {
    let json = error::error_json(status, error::http_status(status.code()));
    Bytes::from(format!("event: error\ndata: {json}\n\n"))
}

impl http_body::Body for SseBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = &mut *self;
        loop {
            if let Some(out) = this.out.pop_front() {
                let next = Instant::now() + this.keepalive;
                this.timer.as_mut().reset(next);
                return Poll::Ready(Some(Ok(Frame::data(out))));
            }
            if this.ended {
                return Poll::Ready(None);
            }
            match this.inner.as_mut().poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        this.messages.push(data);
                        while let Some(message) = this.messages.next() {
                            let event = this.event(message);
                            this.out.push_back(event);
                        }
                    }
                    Err(frame) => {
                        let status = frame.trailers_ref().and_then(Status::from_header_map);
                        this.finish(status);
                    }
                },
                Poll::Ready(Some(Err(status))) => this.finish(Some(status)),
                Poll::Ready(None) => this.finish(None),
                Poll::Pending => {
                    if this.timer.as_mut().poll(cx).is_ready() {
                        this.out.push_back(Bytes::from_static(b": keepalive\n\n"));
                        continue;
                    }
                    return Poll::Pending;
                }
            }
        }
    }
}

//! WatchJob as Server-Sent Events: `GET /v1/jobs/{job_id}/events`.
//!
//! The route calls WatchJob through the gRPC stack like any other route,
//! so it is the same stream: the job's watchers in this process share one
//! feed (one read of each new event for all of them, see `engine/hub.rs`),
//! progress comes at most every `progress_interval` (500 ms), a quiet
//! stream gets a progress message every `--stream-keepalive`, and the
//! stream caps, the stall timeout and shutdown apply as they do to gRPC.
//!
//! Its window (WatchJobRequest's `window`, `?window=` as a JSON Duration
//! such as `0.05s`) is [`DEFAULT_WINDOW`] unless the URL says otherwise: a
//! page shows a few updates a second, and each window costs the server a
//! wake-up, a write and a TCP segment per viewer, however many events it
//! gathers. With a hundred viewers of a busy job that was most of what
//! they cost with the gRPC default of 20 ms (`bench watchers --sse`).
//!
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
//! A stored event's SSE event (its `id` line and JSON) is made once for
//! all the streams of this server ([`SharedEvents`]), as its protobuf
//! encoding is for WatchJob's: with a hundred viewers, converting each
//! event for each of them doubled the server's CPU over a run (`bench
//! watchers --sse`). A stream reads only the sequence and the kind of a
//! message ([`Head`]) to find it there; a snapshot or progress message is
//! its stream's own and converted there.
//!
//! The stream ends with `event: end` after the job's terminal event, or
//! `event: error` with the JSON error (a lagging client, a shutdown), so
//! that a browser's EventSource, which reconnects whenever a stream ends,
//! can tell it to stop. A comment `: keepalive` is sent when nothing else
//! was for `--stream-keepalive`.

use super::{HttpApi, Messages, error, json};
use crate::{domain::FieldViolation, pb};
use axum::{body::Body, extract::Request, response::Response};
use bytes::{Bytes, BytesMut};
use http::{HeaderValue, StatusCode, header};
use http_body::Frame;
use prost::Message as _;
use prost_reflect::{DynamicMessage, MessageDescriptor};
use std::{
    collections::VecDeque,
    convert::Infallible,
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::Duration,
};
use tokio::time::{Instant, Sleep};
use tonic::{Code, Status};

/// An events stream's window unless its URL names one (`?window=`).
pub const DEFAULT_WINDOW: prost_types::Duration = prost_types::Duration {
    seconds: 0,
    nanos: 250_000_000,
};

/// The events of a job, from `Last-Event-ID`, `?after=` or the start.
pub async fn events(api: &HttpApi, job: &str, request: Request) -> Response {
    let (parts, _) = request.into_parts();
    let (from, window) = match stream_params(&parts) {
        Ok(params) => params,
        Err(violation) => return *super::bad(violation),
    };
    let message = pb::WatchJobRequest {
        job_id: job.to_string(),
        from_sequence: from,
        window: Some(window),
    }
    .encode_to_vec();
    let answer = match api.call(&parts, "WatchJob", message).await {
        Ok(answer) => answer,
        Err(status) => return error::response(&status),
    };
    let body = SseBody {
        inner: Box::pin(answer.into_body()),
        messages: Messages::default(),
        out: BytesMut::new(),
        job: Arc::from(job),
        shared: api.shared_events.clone(),
        cursor: from,
        desc: json::job_event(),
        keepalive: api.keepalive,
        sent: Instant::now(),
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
/// when it reconnects) over `?after=`, else 0 (the whole history); and the
/// stream's window, `?window=` or [`DEFAULT_WINDOW`] (WatchJob checks its
/// range).
fn stream_params(
    parts: &http::request::Parts,
) -> Result<(u64, prost_types::Duration), FieldViolation> {
    let mut after = 0;
    let mut window = DEFAULT_WINDOW;
    for pair in parts.uri.query().unwrap_or("").split('&') {
        match pair.split_once('=').unwrap_or((pair, "")) {
            ("", _) => {}
            ("after", value) => {
                after = value.parse().map_err(|_| {
                    FieldViolation::new("after", "must be an event's sequence (a number)")
                })?;
            }
            ("window", value) => {
                window = value.parse().map_err(|_| {
                    FieldViolation::new(
                        "window",
                        format!("is {value:?}; it must be a duration in seconds, such as 0.25s"),
                    )
                })?;
            }
            (name, _) => {
                return Err(FieldViolation::new(
                    name,
                    "is not a query parameter of the events stream (after and window are)",
                ));
            }
        }
    }
    if let Some(value) = parts.headers.get("last-event-id") {
        after = value
            .to_str()
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(|| {
                FieldViolation::new("Last-Event-ID", "must be an event's sequence (a number)")
            })?;
    }
    Ok((after, window))
}

type Inner = Pin<Box<dyn http_body::Body<Data = Bytes, Error = Status> + Send>>;

/// The events stream's body: the WatchJob answer's messages as SSE events.
struct SseBody {
    inner: Inner,
    messages: Messages,
    /// Events made and not yet handed to the connection: one frame.
    out: BytesMut,
    /// The job, as the path named it: with the sequence, the key of its
    /// events in `shared`.
    job: Arc<str>,
    shared: Arc<SharedEvents>,
    /// Where a client resumes: the last stored event sent.
    cursor: u64,
    desc: MessageDescriptor,
    keepalive: Duration,
    /// When bytes were last handed to the connection.
    sent: Instant,
    /// Due for a keepalive: set `keepalive` after the last one; when it
    /// fires after bytes were sent since, it is moved to `sent +
    /// keepalive` then (setting it at each frame cost a timer update per
    /// frame and stream).
    timer: Pin<Box<Sleep>>,
    ended: bool,
}

impl SseBody {
    /// Appends one message as an SSE event.
    fn event(&mut self, message: Bytes) {
        let head = match Head::decode(message.clone()) {
            Ok(head) => head,
            Err(e) => {
                let status = Status::internal(format!("undecodable event: {e}"));
                return self.out.extend_from_slice(&error_event(&status));
            }
        };
        let to_json = || {
            DynamicMessage::decode(self.desc.clone(), message)
                .map_err(|e| e.to_string())
                .and_then(|event| json::message_json(&event))
        };
        let stored = head.is_stored();
        if stored {
            self.cursor = self.cursor.max(head.sequence);
        }
        // A stored event's `id` is its own sequence (the stream's events
        // come in order, after the one it started from): the same SSE
        // event for every stream.
        let made = if stored && self.cursor == head.sequence {
            self.shared.get_or_make(&self.job, head.sequence, || {
                to_json().map(|json| sse_event(head.sequence, &json).freeze())
            })
        } else {
            to_json().map(|json| sse_event(self.cursor, &json).freeze())
        };
        match made {
            Ok(event) => self.out.extend_from_slice(&event),
            Err(e) => {
                let status = Status::internal(format!("unconvertible event: {e}"));
                self.out.extend_from_slice(&error_event(&status));
            }
        }
    }

    /// The stream's last event: `end` after an OK status, `error` else.
    fn finish(&mut self, status: Option<Status>) {
        self.ended = true;
        match status {
            Some(status) if status.code() != Code::Ok => {
                self.out.extend_from_slice(&error_event(&status))
            }
            _ => self.out.extend_from_slice(b"event: end\ndata: {}\n\n"),
        }
    }
}

/// Stored events kept in [`SharedEvents`], at most: the last few windows of
/// a busy job's events, or of a few jobs', for the streams at the tail;
/// one further behind converts its events again.
const SHARED_EVENTS_KEEP: usize = 4096;

/// Stored events as SSE events (`id` line and JSON), by job and sequence,
/// made by the first stream that sends one and taken as they are by the
/// others (a stored event never changes). The oldest go first.
#[derive(Debug, Default)]
pub struct SharedEvents {
    held: Mutex<HeldEvents>,
}

#[derive(Debug, Default)]
struct HeldEvents {
    by_event: foldhash::HashMap<(Arc<str>, u64), Bytes>,
    order: VecDeque<(Arc<str>, u64)>,
}

impl SharedEvents {
    /// The SSE event of `job`'s event `sequence`: held, or made by `make`
    /// now.
    fn get_or_make(
        &self,
        job: &Arc<str>,
        sequence: u64,
        make: impl FnOnce() -> Result<Bytes, String>,
    ) -> Result<Bytes, String> {
        let key = (job.clone(), sequence);
        if let Some(json) = self
            .held
            .lock()
            .expect("shared JSON lock")
            .by_event
            .get(&key)
        {
            return Ok(json.clone());
        }
        // Made outside the lock: two streams may both make it, once.
        let json = make()?;
        let mut held = self.held.lock().expect("shared JSON lock");
        if held.by_event.insert(key.clone(), json.clone()).is_none() {
            held.order.push_back(key);
            while held.order.len() > SHARED_EVENTS_KEEP {
                if let Some(oldest) = held.order.pop_front() {
                    held.by_event.remove(&oldest);
                }
            }
        }
        Ok(json)
    }
}

/// An SSE event: its `id` and its `data`, the JSON of a message.
fn sse_event(id: u64, json: &[u8]) -> BytesMut {
    let mut event = BytesMut::with_capacity(json.len() + 32);
    event.extend_from_slice(b"id: ");
    event.extend_from_slice(id.to_string().as_bytes());
    event.extend_from_slice(b"\ndata: ");
    event.extend_from_slice(json);
    event.extend_from_slice(b"\n\n");
    event
}

/// What a stream reads of a WatchJob message to place it: its sequence
/// and whether it is a stored event, decoded by prost as `pb::JobEvent`
/// with every other field skipped. Decoding the whole event for every
/// stream made its strings each time, only to find it in
/// [`SharedEvents`].
#[derive(Clone, PartialEq, prost::Message)]
struct Head {
    #[prost(uint64, tag = "1")]
    sequence: u64,
    /// `pb::JobEvent`'s `snapshot` (10) and `progress` (14): the kinds
    /// that are not stored; every other kind is a stored event.
    #[prost(message, optional, tag = "10")]
    snapshot: Option<Skipped>,
    #[prost(message, optional, tag = "14")]
    progress: Option<Skipped>,
}

/// A message field read past.
#[derive(Clone, PartialEq, prost::Message)]
struct Skipped {}

impl Head {
    fn is_stored(&self) -> bool {
        self.snapshot.is_none() && self.progress.is_none()
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
            if !this.out.is_empty() {
                this.sent = Instant::now();
                return Poll::Ready(Some(Ok(Frame::data(this.out.split().freeze()))));
            }
            if this.ended {
                return Poll::Ready(None);
            }
            match this.inner.as_mut().poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        this.messages.push(data);
                        while let Some(message) = this.messages.next() {
                            this.event(message);
                        }
                    }
                    Err(frame) => {
                        let status = frame.trailers_ref().and_then(Status::from_header_map);
                        this.finish(status);
                    }
                },
                Poll::Ready(Some(Err(status))) => this.finish(Some(status)),
                Poll::Ready(None) => this.finish(None),
                Poll::Pending => loop {
                    if this.timer.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    let due = this.sent + this.keepalive;
                    if due <= Instant::now() {
                        this.timer.as_mut().reset(Instant::now() + this.keepalive);
                        this.out.extend_from_slice(b": keepalive\n\n");
                        break;
                    }
                    // Something was sent since it was set.
                    this.timer.as_mut().reset(due);
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_events_sse_event_is_made_once_and_the_oldest_go_first() {
        let shared = SharedEvents::default();
        let job: Arc<str> = Arc::from("job");
        let mut made = 0;
        for _ in 0..3 {
            let json = shared
                .get_or_make(&job, 1, || {
                    made += 1;
                    Ok(Bytes::from_static(b"{}"))
                })
                .unwrap();
            assert_eq!(json, "{}");
        }
        assert_eq!(made, 1, "made once for every stream");
        for seq in 2..=(SHARED_EVENTS_KEEP as u64 + 1) {
            shared.get_or_make(&job, seq, || Ok(Bytes::new())).unwrap();
        }
        let held = shared.held.lock().unwrap();
        assert_eq!(held.by_event.len(), SHARED_EVENTS_KEEP);
        assert!(
            !held.by_event.contains_key(&(job.clone(), 1)),
            "the oldest went"
        );
    }

    #[test]
    fn the_head_of_a_message_is_its_sequence_and_whether_it_is_stored() {
        use pb::job_event::Kind;
        let kinds = [
            (Kind::Snapshot(pb::Job::default()), false),
            (Kind::Progress(pb::Progress::default()), false),
            (
                Kind::ItemFailed(pb::ItemFailed {
                    error: "boom".into(),
                    ..Default::default()
                }),
                true,
            ),
            (Kind::StateChanged(pb::StateChanged::default()), true),
            (Kind::ItemsAdded(pb::ItemsAdded::default()), true),
        ];
        for (kind, stored) in kinds {
            let event = pb::JobEvent {
                sequence: 42,
                time: Some(prost_types::Timestamp {
                    seconds: 1,
                    nanos: 2,
                }),
                kind: Some(kind.clone()),
            };
            let head = Head::decode(event.encode_to_vec().as_slice()).unwrap();
            assert_eq!(head.sequence, 42, "{kind:?}");
            assert_eq!(head.is_stored(), stored, "{kind:?}");
        }
    }
}

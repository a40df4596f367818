//! The JobService as this server mounts it: the generated service for every
//! call but WatchJob, which is served here so that a stored event is
//! encoded once for all the streams that send it.
//!
//! With a thousand watchers on a job, the generated path converted and
//! encoded each stored event a thousand times, one message at a time
//! through tonic's encoder. Here each stream's batch (a page of events, a
//! snapshot or a progress message) becomes one DATA frame of gRPC
//! messages; a stored event's message, length prefix included, is made by
//! the first stream that sends it and shared with the others
//! ([`SharedEvent`]), and so is a batch of events, for the streams at the
//! same place ([`EventBatch`](crate::engine::EventBatch)). The bytes on
//! the wire are the same as tonic's: a
//! message is the 5-byte prefix (not compressed, length) and the
//! protobuf encoding of `pb::JobEvent`, and the stream ends with
//! `grpc-status` trailers.
//!
//! Each stream takes a place of [`WatchCaps`] before anything is read for
//! it, and gives it back when its body is dropped.
//!
//! The request is read with tonic's own decoder (size limit included), and
//! errors before the stream starts are trailers-only responses, as tonic
//! makes them, so the layers around the service see what they see for any
//! other call.

use super::{
    JobApi, convert,
    watch_caps::{CallerKey, WatchCaps, WatchSlot},
};
use crate::{
    engine::{EngineError, SharedEvent, WatchBatch},
    pb::{self, job_service_server::JobServiceServer},
};
use bytes::{BufMut, Bytes, BytesMut};
use futures::{Stream, TryStream, TryStreamExt};
use http::{HeaderValue, header::CONTENT_TYPE};
use http_body::Frame;
use prost::Message;
use std::{
    convert::Infallible,
    pin::{Pin, pin},
    sync::Arc,
    task::{Context, Poll, ready},
};
use tonic::{
    Status,
    codec::{Codec, Streaming},
    server::NamedService,
};

/// The WatchJob method's path.
pub const WATCH_JOB: &str = "/jobvisor.v1.JobService/WatchJob";

type BoxFuture<T> = Pin<Box<dyn std::future::Future<Output = T> + Send + 'static>>;

/// The JobService: WatchJob served here, every other method by the
/// generated service.
#[derive(Clone)]
pub struct JobRoutes {
    api: Arc<JobApi>,
    generated: JobServiceServer<JobApi>,
    max_request_bytes: usize,
    /// The WatchJob streams open, and how many may be.
    caps: Arc<WatchCaps>,
}

impl JobRoutes {
    /// `max_request_bytes` limits every request message, WatchJob's too;
    /// `caps` the WatchJob streams open at once.
    pub fn new(api: JobApi, max_request_bytes: usize, caps: Arc<WatchCaps>) -> Self {
        let api = Arc::new(api);
        JobRoutes {
            generated: JobServiceServer::from_arc(api.clone())
                .max_decoding_message_size(max_request_bytes),
            api,
            max_request_bytes,
            caps,
        }
    }
}

impl NamedService for JobRoutes {
    const NAME: &'static str = <JobServiceServer<JobApi> as NamedService>::NAME;
}

impl<B> tower::Service<http::Request<B>> for JobRoutes
where
    B: http_body::Body + Send + 'static,
    B::Error: Into<tonic::codegen::StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if request.uri().path() != WATCH_JOB {
            return self.generated.call(request);
        }
        let (api, limit) = (self.api.clone(), self.max_request_bytes);
        let slot = self.caps.open(&caller_key(&request));
        Box::pin(async move {
            let answer = match slot {
                Ok(slot) => watch_job(&api, request, limit, slot).await,
                Err(refused) => Err(refused),
            };
            Ok(answer.unwrap_or_else(Status::into_http))
        })
    }
}

/// Who a stream counts against: what the guard found, or the peer's
/// address (a server without the guard layer).
fn caller_key<B>(request: &http::Request<B>) -> String {
    let extensions = request.extensions();
    if let Some(CallerKey(key)) = extensions.get::<CallerKey>() {
        return key.clone();
    }
    extensions
        .get::<tonic::transport::server::TcpConnectInfo>()
        .and_then(|info| info.remote_addr())
        .map_or_else(|| "anyone".to_string(), |addr| addr.ip().to_string())
}

/// Reads the request as tonic does for a call with one request message,
/// then answers with a [`WatchBody`], which holds the stream's `slot`.
async fn watch_job<B>(
    api: &JobApi,
    request: http::Request<B>,
    limit: usize,
    slot: WatchSlot,
) -> Result<http::Response<tonic::body::Body>, Status>
where
    B: http_body::Body + Send + 'static,
    B::Error: Into<tonic::codegen::StdError> + Send + 'static,
{
    // No compression is accepted (none is for the other methods either).
    if let Some(encoding) = request.headers().get("grpc-encoding")
        && encoding != "identity"
    {
        return Err(Status::unimplemented(format!(
            "Content is compressed with `{}` which isn't supported",
            String::from_utf8_lossy(encoding.as_bytes())
        )));
    }
    let (parts, body) = request.into_parts();
    let decoder =
        super::codec::ProtoCodec::<pb::JobEvent, pb::WatchJobRequest>::default().decoder();
    let mut messages = pin!(Streaming::new_request(decoder, body, None, Some(limit)));
    let message = messages
        .try_next()
        .await?
        .ok_or_else(|| Status::internal("Missing request message."))?;
    let request = tonic::Request::from_http(http::Request::from_parts(parts, message));
    let (id, from_seq, window) = api.watch_request(request).await?;
    let batches = api.engine.watch_batches(id, from_seq, window).await?;
    let mut response = http::Response::new(tonic::body::Body::new(WatchBody {
        batches: Box::pin(batches),
        ended: false,
        _slot: slot,
    }));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    Ok(response)
}

type Batches = Pin<Box<dyn Stream<Item = Result<WatchBatch, EngineError>> + Send>>;

/// A WatchJob response body: one DATA frame per batch, then the trailers.
/// It polls the stream only when HTTP/2 asks for more (there is room in
/// the stream's window), so a client that does not read holds nothing up.
struct WatchBody {
    batches: Batches,
    ended: bool,
    /// The stream's place among those open, given back when the body is
    /// dropped.
    _slot: WatchSlot,
}

impl http_body::Body for WatchBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        if self.ended {
            return Poll::Ready(None);
        }
        let status = match ready!(self.batches.as_mut().try_poll_next(cx)) {
            Some(Ok(batch)) => return Poll::Ready(Some(Ok(Frame::data(encode_batch(&batch))))),
            Some(Err(e)) => Status::from(e),
            None => Status::ok(""),
        };
        self.ended = true;
        let mut trailers = http::HeaderMap::new();
        Poll::Ready(Some(
            status
                .add_header(&mut trailers)
                .map(|()| Frame::trailers(trailers)),
        ))
    }

    fn is_end_stream(&self) -> bool {
        self.ended
    }
}

/// A batch as gRPC messages, one after the other.
fn encode_batch(batch: &WatchBatch) -> Bytes {
    match batch {
        WatchBatch::One(item) => {
            let mut buf = BytesMut::new();
            put_message(&mut buf, &convert::watch_item(item));
            buf.freeze()
        }
        // Once for the job's watchers at the same place.
        WatchBatch::Events(batch) => batch.encoded(|events| match events {
            [event] => encoded_event(event),
            events => {
                let mut buf = BytesMut::new();
                for event in events {
                    buf.extend_from_slice(&encoded_event(event));
                }
                buf.freeze()
            }
        }),
    }
}

fn encoded_event(event: &SharedEvent) -> Bytes {
    event.encoded(|event| {
        let mut buf = BytesMut::new();
        put_message(&mut buf, &convert::event(event));
        buf.freeze()
    })
}

/// Appends one gRPC message: not compressed, its length (big-endian u32),
/// its protobuf encoding.
fn put_message(buf: &mut BytesMut, message: &pb::JobEvent) {
    let len = message.encoded_len();
    buf.reserve(5 + len);
    buf.put_u8(0);
    buf.put_u32(u32::try_from(len).expect("a watch message is far below 4 GiB"));
    message.encode_raw(buf);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        domain::{EventBody, ItemCounts, JobEvent},
        engine::{EventBatch, Progress, WatchItem},
    };
    use chrono::Utc;

    fn failed(seq: u64) -> Arc<SharedEvent> {
        Arc::new(SharedEvent::new(JobEvent {
            seq,
            at: Utc::now(),
            body: EventBody::ItemFailed {
                index: seq as u32,
                attempt: 1,
                error: format!("item {seq} failed"),
                will_retry: false,
                retry_at: None,
            },
        }))
    }

    /// What tonic's encoder makes of a stream of these messages.
    fn as_tonic_would(items: &[WatchItem]) -> Vec<u8> {
        let mut out = Vec::new();
        for item in items {
            let bytes = convert::watch_item(item).encode_to_vec();
            out.push(0);
            out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
            out.extend_from_slice(&bytes);
        }
        out
    }

    fn events(events: &[Arc<SharedEvent>]) -> WatchBatch {
        WatchBatch::Events(Arc::new(EventBatch::new(events.to_vec())))
    }

    #[test]
    fn a_batch_is_the_messages_tonic_would_send() {
        let progress = WatchItem::Progress(Progress {
            seq: 3,
            at: Utc::now(),
            counts: ItemCounts::default(),
            in_flight_fraction: 0.5,
            items_per_second: 12.0,
            eta: None,
            counters: [("frames".to_string(), 7)].into(),
        });
        let two = events(&[failed(1), failed(2)]);
        assert_eq!(
            encode_batch(&two).as_ref(),
            as_tonic_would(&two.clone().into_items())
        );
        let one = events(&[failed(7)]);
        assert_eq!(
            encode_batch(&one).as_ref(),
            as_tonic_would(&one.clone().into_items())
        );
        let progress = WatchBatch::One(progress);
        assert_eq!(
            encode_batch(&progress).as_ref(),
            as_tonic_would(&progress.clone().into_items())
        );
    }

    #[test]
    fn a_shared_event_and_a_shared_batch_are_encoded_once_for_every_stream() {
        let event = failed(5);
        let first = encode_batch(&events(std::slice::from_ref(&event)));
        let second = encode_batch(&events(std::slice::from_ref(&event)));
        // The same bytes, not an equal copy.
        assert_eq!(first.as_ptr(), second.as_ptr());
        let mut calls = 0;
        event.encoded(|_| {
            calls += 1;
            Bytes::new()
        });
        assert_eq!(calls, 0, "encoded again");
        // In a longer batch they are copied in as they are, and the
        // streams that share the batch share its bytes.
        let pair = events(&[event.clone(), event]);
        let (one, other) = (encode_batch(&pair), encode_batch(&pair.clone()));
        assert_eq!(one.as_ptr(), other.as_ptr());
        assert_eq!(&one[..first.len()], first.as_ref());
        assert_eq!(&one[first.len()..], first.as_ref());
    }
}

//! A tower layer on the server: one span per RPC, joined to the caller's
//! trace (W3C `traceparent`/`tracestate` from the request metadata), named
//! and tagged per the OpenTelemetry RPC conventions (`rpc.system.name`,
//! `rpc.method`, `rpc.response.status_code`), and RPC metrics. The status
//! is read where gRPC puts it: the response headers for an immediate error,
//! the trailers otherwise (so a stream's final status counts too). Only
//! server faults mark a span as an error; a refused transition or a bad
//! request is the client's business.

use http::{HeaderMap, Request, Response};
use http_body::{Body, Frame};
use opentelemetry::propagation::Extractor;
use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
    time::Instant,
};
use tower::{Layer, Service};
use tracing::{Instrument, Span, field::Empty};
use tracing_opentelemetry::OpenTelemetrySpanExt;

#[derive(Debug, Clone, Copy, Default)]
pub struct TraceLayer;

impl<S> Layer<S> for TraceLayer {
    type Service = Traced<S>;

    fn layer(&self, inner: S) -> Traced<S> {
        Traced { inner }
    }
}

#[derive(Debug, Clone)]
pub struct Traced<S> {
    inner: S,
}

struct Headers<'a>(&'a HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// gRPC codes that are the server's fault (OpenTelemetry RPC conventions).
fn is_server_error(code: i32) -> bool {
    matches!(code, 2 | 4 | 12 | 13 | 14 | 15)
}

/// Records the outcome of an RPC on its span and in the metrics, once.
struct Outcome {
    span: Span,
    method: String,
    started: Instant,
    recorded: bool,
}

impl Outcome {
    fn record(&mut self, headers: &HeaderMap) -> bool {
        let Some(code) = headers
            .get("grpc-status")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<i32>().ok())
        else {
            return false;
        };
        if self.recorded {
            return true;
        }
        self.recorded = true;
        let name = super::status::code_name(tonic::Code::from(code));
        self.span.record("rpc.response.status_code", name);
        if is_server_error(code) {
            self.span.record("otel.status_code", "ERROR");
        }
        crate::metrics::rpc(&self.method, name, self.started.elapsed());
        true
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Traced<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Send + 'static,
    S::Future: Send + 'static,
    ResBody: Body + Send + 'static,
{
    type Response = Response<TracedBody<ResBody>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        // "/jobvisor.v1.JobService/StartJob" → "jobvisor.v1.JobService/StartJob"
        let method = request.uri().path().trim_start_matches('/').to_string();
        let parent = opentelemetry::global::get_text_map_propagator(|p| {
            p.extract(&Headers(request.headers()))
        });
        let span = tracing::info_span!(
            "rpc",
            otel.name = %method,
            otel.kind = "server",
            otel.status_code = Empty,
            rpc.system.name = "grpc",
            rpc.method = %method,
            rpc.response.status_code = Empty,
            job_id = Empty,
        );
        let _ = span.set_parent(parent);
        let outcome = Outcome {
            span: span.clone(),
            method,
            started: Instant::now(),
            recorded: false,
        };
        let call = self.inner.call(request).instrument(span);
        Box::pin(async move {
            let response = call.await?;
            let mut outcome = outcome;
            outcome.record(response.headers());
            Ok(response.map(|body| TracedBody {
                inner: body,
                outcome: Some(outcome),
            }))
        })
    }
}

pin_project_lite::pin_project! {
    /// The response body, watched for the trailers that carry the status.
    pub struct TracedBody<B> {
        #[pin]
        inner: B,
        outcome: Option<Outcome>,
    }
}

impl<B: Body> Body for TracedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let frame = this.inner.poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &frame
            && let Some(trailers) = frame.trailers_ref()
            && let Some(outcome) = this.outcome.as_mut()
        {
            outcome.record(trailers);
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

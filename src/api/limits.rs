//! A tower layer on every RPC that enforces the caller's deadline and
//! gives limit errors the codes gRPC clients expect:
//! - `grpc-timeout` is honoured with DEADLINE_EXCEEDED (tonic's own timeout
//!   answers CANCELLED; ours fires a hair earlier, so clients see the code
//!   the gRPC spec uses for a deadline);
//! - a request larger than `--max-request-bytes` is answered
//!   RESOURCE_EXHAUSTED with the limit named (tonic says OUT_OF_RANGE).

use http::{HeaderMap, HeaderValue, Request, Response};
use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};
use tonic::{Code, Status};
use tower::{Layer, Service};

/// How much earlier than tonic's timeout ours fires.
const MARGIN: Duration = Duration::from_millis(5);

#[derive(Debug, Clone, Copy)]
pub struct LimitsLayer {
    /// The decoding limit configured on the service, for the message.
    pub max_request_bytes: usize,
}

impl<S> Layer<S> for LimitsLayer {
    type Service = Limits<S>;

    fn layer(&self, inner: S) -> Limits<S> {
        Limits {
            inner,
            max_request_bytes: self.max_request_bytes,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Limits<S> {
    inner: S,
    max_request_bytes: usize,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Limits<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Send + 'static,
    S::Future: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        // Fixed now, not when the future is first polled: under load that
        // can be much later, and tonic's own timer started at this point.
        let deadline = grpc_timeout(request.headers())
            .map(|d| tokio::time::Instant::now() + d.saturating_sub(MARGIN));
        let limit = self.max_request_bytes;
        let call = self.inner.call(request);
        Box::pin(async move {
            let response = match deadline {
                Some(at) => match tokio::time::timeout_at(at, call).await {
                    Ok(r) => r?,
                    Err(_) => {
                        return Ok(Status::deadline_exceeded(
                            "the call's deadline (grpc-timeout) expired",
                        )
                        .into_http());
                    }
                },
                None => call.await?,
            };
            Ok(name_a_malformed_request(name_the_size_limit(
                response, limit,
            )))
        })
    }
}

/// Parses a `grpc-timeout` header: digits and a unit (H, M, S, m, u, n).
pub fn grpc_timeout(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get("grpc-timeout")?.to_str().ok()?;
    if value.len() < 2 || value.len() > 9 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Turns tonic's INTERNAL for a request whose framing is malformed (a body
/// with no message, a message cut short) into INVALID_ARGUMENT, as for any
/// other malformed request: the caller's fault, not the server's. tonic
/// says which only in its message text: `hostile.rs` sends both, so a
/// tonic that words them otherwise fails there.
fn name_a_malformed_request<B: Default>(response: Response<B>) -> Response<B> {
    const MALFORMED: [&str; 2] = [
        "Missing request message.",
        "Unexpected EOF decoding stream.",
    ];
    let Some(status) = Status::from_header_map(response.headers()) else {
        return response;
    };
    if status.code() != Code::Internal || !MALFORMED.contains(&status.message()) {
        return response;
    }
    let what = if status.message().starts_with("Missing") {
        "the request has no message"
    } else {
        "the request's message is cut short"
    };
    rewrite(
        response,
        Status::invalid_argument(format!("malformed request: {what}")),
    )
}

/// `status` in place of the trailers-only answer `response`, keeping the
/// other headers tonic set.
fn rewrite<B: Default>(response: Response<B>, status: Status) -> Response<B> {
    let mut rewritten = status.into_http::<B>();
    for (name, value) in response.headers() {
        if !name.as_str().starts_with("grpc-") {
            rewritten.headers_mut().insert(name.clone(), value.clone());
        }
    }
    if let Ok(v) = HeaderValue::from_str("application/grpc") {
        rewritten
            .headers_mut()
            .insert(http::header::CONTENT_TYPE, v);
    }
    rewritten
}

/// Turns tonic's OUT_OF_RANGE "message too large" into RESOURCE_EXHAUSTED
/// naming the setting.
fn name_the_size_limit<B: Default>(response: Response<B>, limit: usize) -> Response<B> {
    let Some(status) = Status::from_header_map(response.headers()) else {
        return response;
    };
    if status.code() != Code::OutOfRange || !status.message().contains("message length too large") {
        return response;
    }
    let found = status
        .message()
        .split("found ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .unwrap_or("?");
    rewrite(
        response,
        Status::resource_exhausted(format!(
            "request too large: {found} bytes; the server's limit is {limit} bytes \
             (--max-request-bytes); split the work into several calls"
        )),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A service that answers OK after `delay`.
    #[derive(Clone)]
    struct Slow(Duration);

    impl Service<Request<()>> for Slow {
        type Response = Response<()>;
        type Error = std::convert::Infallible;
        type Future = Pin<Box<dyn Future<Output = Result<Response<()>, Self::Error>> + Send>>;
        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }
        fn call(&mut self, _: Request<()>) -> Self::Future {
            let delay = self.0;
            Box::pin(async move {
                tokio::time::sleep(delay).await;
                Ok(Response::new(()))
            })
        }
    }

    fn request(timeout: Option<&'static str>) -> Request<()> {
        let mut r = Request::new(());
        if let Some(t) = timeout {
            r.headers_mut()
                .insert("grpc-timeout", HeaderValue::from_static(t));
        }
        r
    }

    #[tokio::test]
    async fn a_call_past_its_deadline_is_answered_deadline_exceeded() {
        let layer = LimitsLayer {
            max_request_bytes: 1024,
        };
        let mut slow = layer.layer(Slow(Duration::from_secs(5)));
        let started = std::time::Instant::now();
        let response = slow.call(request(Some("50m"))).await.unwrap();
        let status = Status::from_header_map(response.headers()).unwrap();
        assert_eq!(status.code(), Code::DeadlineExceeded);
        assert!(started.elapsed() < Duration::from_secs(1));

        let mut fast = layer.layer(Slow(Duration::from_millis(1)));
        let response = fast.call(request(Some("1S"))).await.unwrap();
        assert!(Status::from_header_map(response.headers()).is_none());
        let response = fast.call(request(None)).await.unwrap();
        assert!(Status::from_header_map(response.headers()).is_none());
    }

    #[test]
    fn parses_grpc_timeouts() {
        let mut h = HeaderMap::new();
        for (raw, expected) in [
            ("5S", Some(Duration::from_secs(5))),
            ("250m", Some(Duration::from_millis(250))),
            ("2H", Some(Duration::from_secs(7200))),
            ("100u", Some(Duration::from_micros(100))),
            ("7", None),
            ("x5S", None),
            ("1234567890S", None),
        ] {
            h.insert("grpc-timeout", HeaderValue::from_static(raw));
            assert_eq!(grpc_timeout(&h), expected, "{raw}");
        }
    }
}

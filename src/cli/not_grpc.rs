//! Answers that are not gRPC: a proxy between the CLI and the server that
//! refused the request itself (nginx's 413 when the body is over
//! `client_max_body_size`, its 502/503/504 when the server is down) sends
//! an HTTP status and an HTML page. tonic reads that page as gRPC frames
//! and reports a protocol error ("invalid compression flag: 60") that
//! names neither the proxy nor the fix.
//!
//! [`NotGrpc`] wraps the client's channel and turns such an answer into a
//! trailers-only gRPC error carrying the HTTP status in a header of its
//! own ([`HTTP_STATUS_HEADER`]), so [`describe`] can read it from the
//! status's metadata (structured, not matched in the message text) and
//! say what to do, for every CLI command alike.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};
use tonic::body::Body;

/// The header carrying the HTTP status of an answer that was not gRPC.
pub const HTTP_STATUS_HEADER: &str = "jobvisor-http-status";

/// The client channel, with answers that are not gRPC made gRPC errors.
#[derive(Clone)]
pub struct NotGrpc<S>(pub S);

impl<S> tower::Service<http::Request<Body>> for NotGrpc<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let answer = self.0.call(request);
        Box::pin(async move { answer.await.map(as_grpc) })
    }
}

/// The answer itself when it is gRPC; otherwise a gRPC error in its
/// headers, with the HTTP status, and without the page.
fn as_grpc(response: http::Response<Body>) -> http::Response<Body> {
    let grpc = response.headers().contains_key("grpc-status")
        || (response.status() == http::StatusCode::OK
            && response
                .headers()
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.starts_with("application/grpc")));
    if grpc {
        return response;
    }
    let (mut parts, _page) = response.into_parts();
    let http = parts.status;
    let code = grpc_code(http) as i32;
    let headers = &mut parts.headers;
    headers.insert("grpc-status", code.into());
    if let Ok(message) = format!("the answer was HTTP {}, not gRPC", http.as_u16()).parse() {
        headers.insert("grpc-message", message);
    }
    headers.insert(HTTP_STATUS_HEADER, http.as_u16().into());
    http::Response::from_parts(parts, Body::empty())
}

/// The gRPC code for an HTTP status, as gRPC maps them (and tonic does
/// when a response has no grpc-status): so a proxy's 502 is UNAVAILABLE
/// and a broken watch behind it is resumed.
fn grpc_code(http: http::StatusCode) -> tonic::Code {
    use http::StatusCode as H;
    use tonic::Code;
    match http {
        H::BAD_REQUEST => Code::Internal,
        H::UNAUTHORIZED => Code::Unauthenticated,
        H::FORBIDDEN => Code::PermissionDenied,
        H::NOT_FOUND => Code::Unimplemented,
        H::TOO_MANY_REQUESTS | H::BAD_GATEWAY | H::SERVICE_UNAVAILABLE | H::GATEWAY_TIMEOUT => {
            Code::Unavailable
        }
        _ => Code::Unknown,
    }
}

/// What to tell the user about an answer that was not gRPC: the HTTP
/// status and what to do. None for a gRPC error (the server's own).
pub fn describe(status: &tonic::Status) -> Option<String> {
    let http = status
        .metadata()
        .get(HTTP_STATUS_HEADER)?
        .to_str()
        .ok()?
        .parse::<u16>()
        .ok()
        .and_then(|code| http::StatusCode::from_u16(code).ok())?;
    let named = match http.canonical_reason() {
        Some(reason) => format!("HTTP {} ({reason})", http.as_u16()),
        None => format!("HTTP {}", http.as_u16()),
    };
    use http::StatusCode as H;
    Some(match http {
        H::PAYLOAD_TOO_LARGE => format!(
            "the proxy refused the request with {named}: its request body limit is below \
             this request's size; raise it (nginx: client_max_body_size) or send smaller \
             pages (jobvisor start and add: --page-bytes, 512 KiB by default)"
        ),
        H::BAD_GATEWAY | H::SERVICE_UNAVAILABLE | H::GATEWAY_TIMEOUT => format!(
            "the proxy answered {named}: it could not reach the jobvisor server behind it; \
             is the server running?"
        ),
        _ => format!(
            "the server answered {named}, not gRPC: is --server a jobvisor server, or a proxy \
             passing gRPC to one (nginx: grpc_pass)?"
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: u16, content_type: &str) -> http::Response<Body> {
        http::Response::builder()
            .status(status)
            .header(http::header::CONTENT_TYPE, content_type)
            .body(Body::empty())
            .unwrap()
    }

    fn status_of(response: http::Response<Body>) -> Option<tonic::Status> {
        tonic::Status::from_header_map(response.headers())
    }

    #[test]
    fn a_grpc_answer_passes_untouched() {
        let ok = as_grpc(answer(200, "application/grpc"));
        assert!(ok.headers().get(HTTP_STATUS_HEADER).is_none());
        assert!(status_of(ok).is_none());
    }

    #[test]
    fn a_proxy_s_page_becomes_an_error_naming_its_http_status() {
        let refused = status_of(as_grpc(answer(413, "text/html"))).unwrap();
        assert_eq!(refused.code(), tonic::Code::Unknown);
        let said = describe(&refused).unwrap();
        assert!(said.contains("HTTP 413 (Payload Too Large)"), "{said}");
        assert!(said.contains("client_max_body_size"), "{said}");

        let down = status_of(as_grpc(answer(502, "text/html"))).unwrap();
        assert_eq!(down.code(), tonic::Code::Unavailable);
        assert!(describe(&down).unwrap().contains("is the server running?"));

        // A web page with 200: not gRPC either.
        let page = status_of(as_grpc(answer(200, "text/html"))).unwrap();
        assert!(describe(&page).unwrap().contains("not gRPC"));
    }

    #[test]
    fn the_server_s_own_errors_are_not_described() {
        assert_eq!(describe(&tonic::Status::not_found("no such job")), None);
    }
}

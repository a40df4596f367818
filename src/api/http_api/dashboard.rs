//! The dashboard: a page in plain HTML, CSS and JavaScript, embedded in
//! the binary (`include_str!`, no build step) and served on the HTTP API's
//! port: `GET /` (the jobs), `GET /jobs/{job_id}` (one job) and its
//! assets under `/assets/`. The page is the same for every path; its
//! script reads the path and calls the JSON API (`fetch`) with the
//! caller's bearer token, and reads a job's live events from
//! `GET /v1/jobs/{id}/events` with `fetch` too (an `EventSource` cannot
//! send the token), so the page has no access of its own: a token that may
//! only read sees no action buttons, and the API refuses it anyway.
//!
//! Every answer here carries a strict Content-Security-Policy (scripts,
//! styles and requests only from this origin, no inline script, no
//! framing) and `X-Content-Type-Options: nosniff`. The page itself holds
//! nothing secret: it is served without a token.

use axum::{body::Body, response::Response};
use http::{HeaderValue, StatusCode, header};

const INDEX_HTML: &str = include_str!("dashboard/index.html");
const APP_JS: &str = include_str!("dashboard/app.js");
const APP_CSS: &str = include_str!("dashboard/app.css");

/// What the page may load and do: only this origin, no inline script or
/// style, no plugins, no framing, forms only to this origin.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
                   img-src 'self' data:; connect-src 'self'; object-src 'none'; \
                   base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// The page, for `/` and `/jobs/{job_id}`.
pub async fn page() -> Response {
    asset("text/html; charset=utf-8", INDEX_HTML)
}

pub async fn script() -> Response {
    asset("text/javascript; charset=utf-8", APP_JS)
}

pub async fn style() -> Response {
    asset("text/css; charset=utf-8", APP_CSS)
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = StatusCode::OK;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    // The assets change with the binary: revalidate, never serve stale.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

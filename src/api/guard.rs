//! A tower layer in front of every RPC: identifies the caller (bearer
//! token, client certificate, or nobody when authentication is off),
//! checks the permission the RPC needs, and limits each caller's request
//! rate and concurrent requests. The caller rides on in the request's
//! extensions for the handlers (label scopes, who asked).

use super::auth::{Caller, Permission, Tokens, Via, certificate_subject};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use http::{Request, Response};
use std::{
    collections::HashMap,
    future::Future,
    net::IpAddr,
    num::NonZeroU32,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::Duration,
};
use tokio::sync::Semaphore;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};
use tower::{Layer, Service};

/// What the guard enforces.
#[derive(Debug, Clone, Default)]
pub struct GuardConfig {
    /// Bearer tokens; `None`: no authentication (everyone may do
    /// everything, e.g. behind a mesh that authenticates).
    pub tokens: Option<Arc<Tokens>>,
    /// Whether health checks and reflection need a token too.
    pub protect_discovery: bool,
    /// Requests per second per caller (0: no limit), and the burst.
    pub rate_per_second: u32,
    pub rate_burst: u32,
    /// Requests handled at once per caller (0: no limit).
    pub concurrent_per_caller: u32,
}

struct Shared {
    config: GuardConfig,
    rate: Option<DefaultKeyedRateLimiter<String>>,
    in_flight: Mutex<HashMap<String, Arc<Semaphore>>>,
}

#[derive(Clone)]
pub struct GuardLayer {
    shared: Arc<Shared>,
}

impl GuardLayer {
    pub fn new(config: GuardConfig) -> GuardLayer {
        let rate = NonZeroU32::new(config.rate_per_second).map(|per_second| {
            let burst = NonZeroU32::new(config.rate_burst).unwrap_or(per_second);
            RateLimiter::keyed(Quota::per_second(per_second).allow_burst(burst))
        });
        GuardLayer {
            shared: Arc::new(Shared {
                config,
                rate,
                in_flight: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Who is calling, by the rules every RPC's caller is identified by,
    /// but with no permission to check (`GET /v1/me`, which the dashboard
    /// asks to know which buttons to show): with tokens on, a request
    /// without a valid one is refused, as discovery calls are with
    /// `--auth-protect-discovery`. It costs no database query, so it is
    /// not counted against the caller's rate.
    pub fn whoami<B>(&self, request: &Request<B>) -> Result<Caller, Status> {
        self.shared.identify_for(request, None, false)
    }
}

impl<S> Layer<S> for GuardLayer {
    type Service = Guard<S>;

    fn layer(&self, inner: S) -> Guard<S> {
        Guard {
            inner,
            shared: self.shared.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Guard<S> {
    inner: S,
    shared: Arc<Shared>,
}

fn bearer<B>(request: &Request<B>) -> Option<&str> {
    let value = request.headers().get("authorization")?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// The client certificate's subject and the peer address, from what tonic
/// put in the extensions.
fn peer<B>(request: &Request<B>) -> (Option<String>, Option<IpAddr>) {
    use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
    let ext = request.extensions();
    if let Some(tls) = ext.get::<TlsConnectInfo<TcpConnectInfo>>() {
        let subject = tls
            .peer_certs()
            .and_then(|certs| certs.first().and_then(|c| certificate_subject(c.as_ref())));
        return (subject, tls.get_ref().remote_addr().map(|a| a.ip()));
    }
    let ip = ext
        .get::<TcpConnectInfo>()
        .and_then(|info| info.remote_addr())
        .map(|a| a.ip());
    (None, ip)
}

fn refuse<B: Default>(status: Status) -> Response<B> {
    status.into_http()
}

fn exhausted<B: Default>(message: String, retry_after: Duration) -> Response<B> {
    Status::with_error_details(
        Code::ResourceExhausted,
        message,
        ErrorDetails::with_retry_info(Some(retry_after)),
    )
    .into_http()
}

impl Shared {
    /// Who is calling, or the refusal.
    fn identify<B>(&self, request: &Request<B>) -> Result<Caller, Status> {
        let required = Permission::for_method(request.uri().path());
        let open = required.is_none() && !self.config.protect_discovery;
        self.identify_for(request, required, open)
    }

    /// Who is calling, if they may do what needs `required`; `open`: a
    /// request without a valid token is anyone's (health, reflection).
    fn identify_for<B>(
        &self,
        request: &Request<B>,
        required: Option<Permission>,
        open: bool,
    ) -> Result<Caller, Status> {
        let path = request.uri().path();
        let (subject, _) = peer(request);
        let caller = match &self.config.tokens {
            Some(tokens) => match bearer(request).and_then(|t| tokens.lookup(t)) {
                Some(caller) => caller,
                None if open => {
                    return Ok(Caller::anyone());
                }
                None => {
                    let why = if bearer(request).is_some() {
                        "the bearer token is not valid"
                    } else {
                        "this server needs a bearer token (metadata authorization: Bearer <token>)"
                    };
                    return Err(Status::unauthenticated(why));
                }
            },
            None => match subject {
                Some(subject) => Caller {
                    name: subject,
                    via: Via::Certificate,
                    ..Caller::anyone()
                },
                None => Caller::anyone(),
            },
        };
        if let Some(p) = required
            && !caller.may(p)
        {
            let method = path.rsplit('/').next().unwrap_or(path);
            return Err(Status::permission_denied(format!(
                "{:?} may not call {method}: it needs the {} permission",
                caller.name,
                p.as_str()
            )));
        }
        Ok(caller)
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Guard<S>
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

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        let caller = match self.shared.identify(&request) {
            Ok(caller) => caller,
            Err(status) => return Box::pin(async move { Ok(refuse(status)) }),
        };
        // Limits apply per caller: its name, or its address when anonymous.
        let key = match (caller.via, peer(&request).1) {
            (Via::Nobody, Some(ip)) => ip.to_string(),
            _ => caller.name.clone(),
        };
        if let Some(rate) = &self.shared.rate
            && let Err(not_until) = rate.check_key(&key)
        {
            let wait = not_until.wait_time_from(governor::clock::Clock::now(
                &governor::clock::DefaultClock::default(),
            ));
            let message = format!(
                "rate limit: at most {} requests per second for {key}; retry in {wait:.2?}",
                self.shared.config.rate_per_second
            );
            return Box::pin(async move { Ok(exhausted(message, wait)) });
        }
        let permit = match self.shared.config.concurrent_per_caller {
            0 => None,
            limit => {
                let semaphore = {
                    let mut map = self.shared.in_flight.lock().expect("in-flight lock");
                    map.entry(key.clone())
                        .or_insert_with(|| Arc::new(Semaphore::new(limit as usize)))
                        .clone()
                };
                match semaphore.try_acquire_owned() {
                    Ok(permit) => Some(permit),
                    Err(_) => {
                        let message = format!(
                            "too many requests at once: at most {limit} for {key}; retry shortly"
                        );
                        return Box::pin(async move {
                            Ok(exhausted(message, Duration::from_millis(100)))
                        });
                    }
                }
            }
        };
        request.extensions_mut().insert(caller);
        // WatchJob's stream caps count per caller the same way.
        request
            .extensions_mut()
            .insert(super::watch_caps::CallerKey(key));
        let call = self.inner.call(request);
        Box::pin(async move {
            let response = call.await;
            drop(permit);
            response
        })
    }
}

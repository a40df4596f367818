//! The client side of the worker protocol (`proto/jobvisor/v1/worker.proto`):
//! a [`Worker`] connects to a server's `WorkerService`, serves one or more
//! of its remote executors, and runs the items it is assigned through the
//! embedding API ([`Executor`] / [`ItemHandler`](crate::executor::ItemHandler)),
//! so a handler written for an embedded server runs unchanged in a worker
//! process on another machine:
//!
//! ```no_run
//! # use std::sync::Arc;
//! # async fn demo(executor: Arc<dyn jobvisor::executor::Executor>) -> Result<(), jobvisor::worker::WorkerError> {
//! use jobvisor::worker::{Connect, Worker};
//! let server = Connect::from_url("http://jobvisor:50051")?.with_token("secret")?;
//! Worker::new(server, "ocr", executor)
//!     .slots(8)
//!     .run(async { tokio::signal::ctrl_c().await.ok(); })
//!     .await
//! # }
//! ```
//!
//! What a worker does, as the protocol asks:
//! - it says hello (its name, `host:pid` by default; its executors; its
//!   slots; protocol version 1; this crate's version as its build), and
//!   never runs more items than its slots; a slot is credited back once
//!   the item's outcome is reported and its handler has returned;
//! - it prepares each job's handler once, from the assignment's params
//!   (a prepare error fails the item for good with the error's text);
//! - a handler's checkpoints return once the server has committed them,
//!   and fail once the item is no longer this worker's (revoked, refused);
//!   an interrupt from the server is the handler's stop signal;
//! - it pings at least every `heartbeat_interval` and treats a server silent
//!   for `lease_time` as a broken stream; a broken stream is reconnected
//!   with backoff and the session resumed, so items in flight continue;
//! - when the `shutdown` future given to [`Worker::run`] resolves it drains:
//!   tells the server, asks its items to stop
//!   ([`StopReason::Shutdown`](crate::executor::StopReason)), waits for them
//!   to report, and returns.
//!
//! This module is a client: it uses the generated protocol ([`crate::pb`])
//! and the executor API, never the engine or the store.

mod session;

use crate::executor::Executor;
use std::{collections::BTreeMap, fmt, sync::Arc, time::Duration};
use tonic::{
    metadata::{Ascii, MetadataValue},
    transport::Endpoint,
};

/// The protocol version this worker speaks.
pub const PROTOCOL_VERSION: u32 = 1;
/// The most slots one worker may have.
pub const MAX_SLOTS: u32 = 1024;
/// The longest result a worker may report (`WorkerSucceeded.result`).
pub const MAX_RESULT_BYTES: usize = 64 * 1024;

/// Where the server is and how to authenticate: a tonic [`Endpoint`] (with
/// its TLS settings, for `https://` servers and mTLS) and a bearer token.
#[derive(Clone)]
pub struct Connect {
    /// The server's address and transport settings; connected afresh for
    /// every (re)connection.
    endpoint: Endpoint,
    /// `Bearer <token>`, sent as `authorization` with every stream.
    authorization: Option<MetadataValue<Ascii>>,
}

impl fmt::Debug for Connect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connect")
            .field("uri", self.endpoint.uri())
            .field("token", &self.authorization.as_ref().map(|_| "<set>"))
            .finish()
    }
}

impl Connect {
    /// The server at `endpoint` (TLS, timeouts and all as configured on it).
    pub fn new(endpoint: Endpoint) -> Connect {
        Connect {
            endpoint,
            authorization: None,
        }
    }

    /// The server at `url` (`http://host:port`; `host:port` means
    /// `http://`), with a connect timeout of 5 s. For `https://` with a CA
    /// or a client certificate, configure an [`Endpoint`] and use
    /// [`Connect::new`].
    pub fn from_url(url: &str) -> Result<Connect, WorkerError> {
        let url = if url.contains("://") {
            url.to_string()
        } else {
            format!("http://{url}")
        };
        let endpoint = Endpoint::from_shared(url.clone())
            .map_err(|e| WorkerError::Config(format!("{url:?} is not a valid address: {e}")))?
            .connect_timeout(Duration::from_secs(5));
        Ok(Connect::new(endpoint))
    }

    /// Authenticates with a bearer token (`authorization: Bearer <token>`);
    /// the token needs the `work` permission.
    pub fn with_token(mut self, token: &str) -> Result<Connect, WorkerError> {
        let value = format!("Bearer {}", token.trim()).parse().map_err(|_| {
            WorkerError::Config("the token holds characters that cannot be sent".into())
        })?;
        self.authorization = Some(value);
        Ok(self)
    }

    /// The server's address.
    pub fn uri(&self) -> &http::Uri {
        self.endpoint.uri()
    }
}

/// Why a worker stopped without draining.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WorkerError {
    /// The worker's own settings are unusable (no executor, bad slots…).
    #[error("{0}")]
    Config(String),
    /// The server refused the worker for good: a bad or missing token, a
    /// token without the `work` permission, an executor the server does
    /// not run remotely, an unsupported protocol version, a server
    /// without the worker service. Reconnecting would not help.
    #[error("the server refused the worker ({code:?}): {message}")]
    Refused {
        /// The gRPC status code.
        code: tonic::Code,
        /// The server's message.
        message: String,
    },
}

/// What the worker tells its [`Worker::on_status`] callback: one line a
/// person may want to see.
#[derive(Debug, Clone, PartialEq)]
pub enum Status {
    /// A session is open.
    Connected {
        /// The server's id (`WorkerWelcome.server`).
        server: String,
        /// The session's id.
        session: String,
        /// Items in flight that continue in this session (after a
        /// reconnection).
        resumed: usize,
        /// Items in flight the server took back while the stream was
        /// broken.
        lost: usize,
    },
    /// The stream broke (or could not be opened); trying again after
    /// `retry_in`.
    Reconnecting {
        /// Why, in words.
        why: String,
        /// The wait before the next attempt.
        retry_in: Duration,
        /// Items still running here meanwhile.
        in_flight: usize,
    },
    /// Shutting down: waiting for the items in flight to stop and report.
    Draining {
        /// How many are still running.
        in_flight: usize,
    },
    /// Drained: every item reported, the session closed.
    Stopped,
}

/// Called with every [`Status`] change.
pub type StatusFn = Arc<dyn Fn(&Status) + Send + Sync>;

/// A worker process's connection to a server, serving remote executors
/// with local [`Executor`]s. Built with [`Worker::new`], set up with the
/// builder methods, started with [`Worker::run`].
pub struct Worker {
    /// The server.
    connect: Connect,
    /// What runs the items of each executor this worker serves, by the
    /// server's (remote) executor name.
    executors: BTreeMap<String, Arc<dyn Executor>>,
    /// How many items run at once.
    slots: u32,
    /// The name the server's logs show.
    name: String,
    /// The build the server's logs show.
    build_id: String,
    /// The shortest and longest wait between reconnection attempts.
    backoff: (Duration, Duration),
    /// Told of connections, reconnections and the drain.
    on_status: Option<StatusFn>,
}

impl fmt::Debug for Worker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Worker")
            .field("connect", &self.connect)
            .field("executors", &self.executors.keys().collect::<Vec<_>>())
            .field("slots", &self.slots)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Worker {
    /// A worker that runs the items of the server's remote executor
    /// `executor_name` with `executor`, one at a time until
    /// [`Worker::slots`] says otherwise.
    pub fn new(
        connect: Connect,
        executor_name: impl Into<String>,
        executor: Arc<dyn Executor>,
    ) -> Worker {
        Worker {
            connect,
            executors: BTreeMap::from([(executor_name.into(), executor)]),
            slots: 1,
            name: default_name(),
            build_id: env!("CARGO_PKG_VERSION").to_string(),
            backoff: (Duration::from_millis(100), Duration::from_secs(2)),
            on_status: None,
        }
    }

    /// Serves another remote executor too.
    pub fn executor(mut self, name: impl Into<String>, executor: Arc<dyn Executor>) -> Worker {
        self.executors.insert(name.into(), executor);
        self
    }

    /// How many items run at once (1 to 1024; default 1).
    pub fn slots(mut self, slots: u32) -> Worker {
        self.slots = slots;
        self
    }

    /// The name the server's logs show (default `host:pid`; 1 to 128
    /// characters).
    pub fn name(mut self, name: impl Into<String>) -> Worker {
        self.name = name.into();
        self
    }

    /// The shortest and longest wait between reconnection attempts
    /// (default 100 ms to 2 s, doubling, with jitter). Keep the longest
    /// well under the server's lease time, or items in flight are lost
    /// while the worker waits.
    pub fn reconnect_backoff(mut self, min: Duration, max: Duration) -> Worker {
        self.backoff = (min, max.max(min));
        self
    }

    /// Calls `f` with every [`Status`] change (for a status line).
    pub fn on_status(mut self, f: impl Fn(&Status) + Send + Sync + 'static) -> Worker {
        self.on_status = Some(Arc::new(f));
        self
    }

    /// Runs until `shutdown` resolves and the worker has drained (`Ok`),
    /// or until the server refuses it for good (`Err`). A broken stream
    /// is not an error: the worker reconnects and resumes its session.
    pub async fn run(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send,
    ) -> Result<(), WorkerError> {
        self.check()?;
        session::run(self, shutdown).await
    }

    fn check(&self) -> Result<(), WorkerError> {
        if !(1..=MAX_SLOTS).contains(&self.slots) {
            return Err(WorkerError::Config(format!(
                "slots must be between 1 and {MAX_SLOTS}; got {}",
                self.slots
            )));
        }
        if self.executors.is_empty() || self.executors.len() > 16 {
            return Err(WorkerError::Config(
                "a worker serves 1 to 16 executors".into(),
            ));
        }
        if let Some(name) = self.executors.keys().find(|n| n.trim().is_empty()) {
            return Err(WorkerError::Config(format!(
                "executor name {name:?} is empty"
            )));
        }
        let chars = self.name.chars().count();
        if !(1..=128).contains(&chars) {
            return Err(WorkerError::Config(format!(
                "the worker's name must have 1 to 128 characters; {:?} has {chars}",
                self.name
            )));
        }
        Ok(())
    }
}

/// `host:pid`, at most 128 characters.
fn default_name() -> String {
    let uname = rustix::system::uname();
    let host = uname.nodename().to_string_lossy();
    let pid = std::process::id();
    let host: String = host.chars().take(100).collect();
    format!("{host}:{pid}")
}

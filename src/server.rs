//! Runs the service: the store, the engine, and one gRPC port serving
//! `jobvisor.v1.JobService`, `grpc.health.v1.Health` and server reflection
//! (v1 and v1alpha), and optionally the HTTP/JSON API on a port of its own
//! ([`api::http_api`](crate::api::http_api)), until the shutdown future
//! given as an argument fires.
//! Tests start it on port 0 with a future of their own; the binary wires
//! SIGTERM/SIGINT to it.

use crate::{
    api::workers::WorkerApi,
    api::{
        JobApi, accept,
        guard::{GuardConfig, GuardLayer},
        http_api::{self, HttpApi},
        limits::LimitsLayer,
        routes::JobRoutes,
        trace::TraceLayer,
        watch_caps::WatchCaps,
    },
    engine::{ClusterConfig, Engine, EngineConfig},
    executor::{
        Registry,
        remote::{RemoteConfig, hub::WorkerHub},
    },
    pb::{self, job_service_server::JobServiceServer, worker_service_server::WorkerServiceServer},
    store::{
        Leases, Store,
        postgres::{
            PgConfig, PgStore, redacted,
            runner_lock::{RUNNER_LOCK_KEY, RunnerLock, RunnerMode, application_name},
        },
        sqlite::{SqliteStore, dir_lock::DirLock},
    },
};
use anyhow::Context as _;
use std::{future::Future, path::PathBuf, sync::Arc, time::Duration};
use tokio::net::TcpListener;
use tonic_health::ServingStatus;

/// Everything `serve` needs to know.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// PostgreSQL, the system of record (used unless `embedded` is set).
    pub database: PgConfig,
    /// The embedded store's file: one process, no PostgreSQL needed.
    pub embedded: Option<PathBuf>,
    pub engine: EngineConfig,
    /// How long a shutdown waits for items in flight to reach their next
    /// checkpoint before exiting anyway.
    pub shutdown_grace: Duration,
    /// Largest request accepted, in bytes.
    pub max_request_bytes: usize,
    /// How often readiness checks the store.
    pub health_interval: Duration,
    /// Who may call what, and how often.
    pub guard: GuardConfig,
    /// TLS on the gRPC port; `None`: plaintext.
    pub tls: Option<TlsFiles>,
    /// Multi-replica mode: several servers share the PostgreSQL database.
    pub cluster: Option<ClusterConfig>,
    /// Multi-replica mode: the token this replica presents to the others
    /// when it borrows their workers (`--peer-token`), if they check tokens.
    pub peer_token: Option<String>,
    /// Threads of the engine's own runtime (see [`serve`]); `None`: half
    /// the cores, at least one.
    pub engine_threads: Option<usize>,
    /// How long a new connection has for its TLS (if any) and HTTP/2
    /// handshakes before it is closed.
    pub handshake_timeout: Duration,
    /// WatchJob streams open at once, on the whole server.
    pub max_watch_streams: usize,
    /// WatchJob streams open at once for one caller (its name, or its
    /// address when anonymous).
    pub max_watch_streams_per_caller: usize,
    /// Remote executors and the worker protocol's times; no executor
    /// named: WorkerService refuses every worker.
    pub remote: RemoteConfig,
}

/// The sockets a server answers on.
#[derive(Debug)]
pub struct Listeners {
    /// gRPC: JobService, WorkerService, health, reflection.
    pub grpc: TcpListener,
    /// The HTTP/JSON API (`--http-listen`); `None`: not served.
    pub http: Option<TcpListener>,
}

impl Listeners {
    /// gRPC only.
    pub fn grpc(listener: TcpListener) -> Self {
        Listeners {
            grpc: listener,
            http: None,
        }
    }
}

/// PEM files for TLS.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Require client certificates signed by this CA (mTLS).
    pub client_ca: Option<PathBuf>,
}

impl TlsFiles {
    fn acceptor(&self) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
        let read = |path: &PathBuf, what: &str| {
            std::fs::read(path).with_context(|| format!("cannot read {what} {}", path.display()))
        };
        let cert = read(&self.cert, "the TLS certificate (--tls-cert)")?;
        let key = read(&self.key, "the TLS key (--tls-key)")?;
        let ca = match &self.client_ca {
            Some(ca) => Some(read(ca, "the client CA (--tls-client-ca)")?),
            None => None,
        };
        accept::tls_acceptor(&cert, &key, ca.as_deref())
            .map_err(|why| anyhow::anyhow!("invalid TLS configuration: {why}"))
    }
}

impl ServerConfig {
    /// A server on the embedded store in `path` (a file, created if
    /// missing).
    pub fn embedded(path: impl Into<PathBuf>) -> Self {
        let mut config = ServerConfig::new(String::new());
        config.embedded = Some(path.into());
        config
    }

    pub fn new(database_url: impl Into<String>) -> Self {
        ServerConfig {
            database: PgConfig::new(database_url),
            embedded: None,
            engine: EngineConfig::default(),
            shutdown_grace: Duration::from_secs(10),
            max_request_bytes: 64 * 1024 * 1024,
            health_interval: Duration::from_secs(2),
            guard: GuardConfig::default(),
            tls: None,
            cluster: None,
            peer_token: None,
            engine_threads: None,
            handshake_timeout: Duration::from_secs(10),
            max_watch_streams: 4096,
            max_watch_streams_per_caller: 1024,
            remote: RemoteConfig::default(),
        }
    }
}

/// Serves until `shutdown` fires, then drains: health goes NOT_SERVING,
/// watch streams end with UNAVAILABLE, items in flight stop at their next
/// checkpoint and are committed (within the grace period), and the
/// function returns. Jobs stay RUNNING in the store.
///
/// One runner per job (docs/DESIGN.md): on PostgreSQL the server takes
/// the runner lock before the engine adopts a job, and returns an error
/// if another server's mode excludes it, or, later, if it lost the lock
/// to another server (the engine is dropped then, at once); the embedded
/// store's data directory is locked before its file is opened.
///
/// The engine (its actors, the group committer, and the work of StartJob
/// and the control calls) runs on a runtime of its own, started here and
/// stopped when this returns; the gRPC connections, and with them every
/// WatchJob stream's encoding and sending, run on the caller's. A job's
/// commit cycle then never waits in a run queue behind a thousand
/// streams' frames.
pub async fn serve(
    config: ServerConfig,
    registry: Registry,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    serve_listeners(config, registry, Listeners::grpc(listener), shutdown).await
}

/// [`serve`] on the gRPC port and, if given, the HTTP/JSON API's: the
/// same calls, handlers, tokens and limits on both.
pub async fn serve_listeners(
    config: ServerConfig,
    registry: Registry,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    match &config.embedded {
        Some(_) if config.cluster.is_some() => anyhow::bail!(
            "multi-replica mode (--multi-replica) needs PostgreSQL (--database-url / \
             DATABASE_URL): the embedded store serves one process only"
        ),
        Some(path) => {
            tracing::info!(path = %path.display(), "store: embedded (SQLite)");
            // Before the file is opened: one process per data directory.
            let dir = match path.parent() {
                Some(dir) if !dir.as_os_str().is_empty() => dir,
                _ => std::path::Path::new("."),
            };
            let _lock = DirLock::take(dir, config.engine.runner.since)?;
            let store = Arc::new(SqliteStore::open(path).await?);
            serve_on(config, store, None, registry, listeners, shutdown).await
        }
        None => {
            tracing::info!(url = %redacted(&config.database.url), "store: PostgreSQL");
            let mode = match config.cluster {
                Some(_) => RunnerMode::Replica,
                None => RunnerMode::Single,
            };
            let mut database = config.database.clone();
            database.announce_changes = config.cluster.is_some();
            database.application_name = application_name(mode, &config.engine.runner);
            let store = Arc::new(PgStore::connect(&database).await?);
            // Before the engine adopts a single job: a server that may not
            // run them stops here (docs/DESIGN.md, "One runner per job").
            let lock = RunnerLock::acquire(&database, mode).await?;
            tracing::info!(key = RUNNER_LOCK_KEY, ?mode, "runner lock taken");
            let leases: Option<Arc<dyn Leases>> = match config.cluster {
                Some(_) => Some(store.clone()),
                None => None,
            };
            tokio::select! {
                result = serve_on(config, store, leases, registry, listeners, shutdown) => result,
                lost = lock.hold() => {
                    tracing::error!(error = %lost, "runner lock lost: stopping at once");
                    Err(anyhow::Error::new(lost).context(
                        "this server lost the runner lock and stopped running jobs",
                    ))
                }
            }
        }
    }
}

/// [`serve`] on a store of the caller's choosing.
pub async fn serve_with_store(
    config: ServerConfig,
    store: Arc<dyn Store>,
    registry: Registry,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    serve_on(
        config,
        store,
        None,
        registry,
        Listeners::grpc(listener),
        shutdown,
    )
    .await
}

async fn serve_on(
    config: ServerConfig,
    store: Arc<dyn Store>,
    leases: Option<Arc<dyn Leases>>,
    registry: Registry,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let Listeners {
        grpc: listener,
        http: http_listener,
    } = listeners;
    // Remote executors hand items to the worker sessions of this hub.
    let mut remote = config.remote.clone();
    remote.server = match &config.cluster {
        Some(cluster) => cluster.replica.clone(),
        None => config.engine.runner.server.clone(),
    };
    let hub = WorkerHub::new(remote);
    if config.cluster.is_some() {
        // Jobs of this replica borrow the workers of the others.
        hub.set_dialer(Arc::new(crate::api::lend::PeerDialer::new(
            config.peer_token.as_deref(),
        )?));
    }
    let registry = registry
        .with_remote(hub.clone())
        .map_err(anyhow::Error::msg)?;
    let engine_runtime = EngineRuntime::start(config.engine_threads)?;
    let (mut engine_config, cluster) = (config.engine.clone(), config.cluster.clone());
    // A quarter of the pool for the watch streams' reads (one at least):
    // a semaphore over the one pool rather than a pool of their own, so
    // the database sees no more connections than configured and the
    // embedded store is bounded alike.
    engine_config.watch_reads = (config.database.max_connections as usize / 4).max(1);
    let (engine, adopted) = engine_runtime
        .handle()
        .spawn(async move {
            anyhow::Ok(match (leases, cluster) {
                (Some(leases), Some(cluster)) => {
                    Engine::start_replicated(store, leases, registry, engine_config, cluster)
                        .await?
                }
                (None, Some(_)) => anyhow::bail!("multi-replica mode needs a store with leases"),
                _ => Engine::start(store, registry, engine_config).await?,
            })
        })
        .await
        .context("the engine's start-up task failed")??;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, executors = ?engine.registry().names(),
        running = adopted.running, paused = adopted.paused, "jobvisor serving");

    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<JobServiceServer<JobApi>>().await;
    health.set_serving::<WorkerServiceServer<WorkerApi>>().await;
    health.set_service_status("", ServingStatus::Serving).await;
    health
        .set_service_status(LIVENESS, ServingStatus::Serving)
        .await;
    let readiness = tokio::spawn(watch_readiness(
        engine.clone(),
        health.clone(),
        config.health_interval,
    ));
    let _liveness = watch_liveness(
        health.clone(),
        [
            ("API", tokio::runtime::Handle::current()),
            ("engine", engine_runtime.handle().clone()),
        ],
    );

    // The error detail types are served too, so grpcurl can show the
    // BadRequest and ErrorInfo details of an error.
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection().build_v1()?;
    let reflection_v1alpha = reflection().build_v1alpha()?;
    let jobs = JobRoutes::new(
        JobApi::new(engine.clone()),
        config.max_request_bytes,
        WatchCaps::new(
            config.max_watch_streams,
            config.max_watch_streams_per_caller,
        ),
    );

    let workers = WorkerServiceServer::new(WorkerApi::new(hub.clone()))
        .max_decoding_message_size(config.max_request_bytes);

    // One guard for both ports: a caller's rate and concurrency limits
    // count its calls on either.
    let guard = GuardLayer::new(config.guard.clone());
    let limits = LimitsLayer {
        max_request_bytes: config.max_request_bytes,
    };
    let tls = config.tls.as_ref().map(TlsFiles::acceptor).transpose()?;
    // Stopped once the engine has drained (as the gRPC port stops), or
    // when this returns, whichever comes first.
    let http_stop = tokio_util::sync::CancellationToken::new();
    let _http_stopped = http_stop.clone().drop_guard();
    let mut http_server = match http_listener {
        Some(http_listener) => {
            let api = HttpApi::new(jobs.clone(), &guard, limits, config.engine.stream_keepalive);
            tracing::info!(addr = %http_listener.local_addr()?, tls = tls.is_some(),
                "HTTP/JSON API serving");
            Some(tokio::spawn(http_api::serve(
                http_listener,
                tls.as_ref().map(http_api::tls_for_http),
                api.router(),
                config.handshake_timeout,
                http_stop.clone(),
            )))
        }
        None => None,
    };

    let draining = {
        let (engine, health, grace) = (engine.clone(), health.clone(), config.shutdown_grace);
        let hub = hub.clone();
        async move {
            shutdown.await;
            tracing::info!(?grace, "shutting down: draining jobs");
            readiness.abort();
            health
                .set_service_status("", ServingStatus::NotServing)
                .await;
            health.set_not_serving::<JobServiceServer<JobApi>>().await;
            health
                .set_not_serving::<WorkerServiceServer<WorkerApi>>()
                .await;
            // Items this server's workers run for other replicas' jobs are
            // interrupted with its own, so that they are stopped and
            // reported, not lost (their attempts would count).
            let began = std::time::Instant::now();
            hub.stop_lending();
            engine.shutdown(grace).await;
            hub.lent_reported(grace.saturating_sub(began.elapsed()))
                .await;
            // The items in remote workers were stopped and reported with
            // the jobs; the sessions end now.
            hub.close();
            tracing::info!("jobs drained");
            http_stop.cancel();
        }
    };

    let router = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .layer(TraceLayer)
        .layer(guard)
        .layer(limits)
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(jobs)
        .add_service(workers);
    // Connections are accepted here (`api::accept`), TLS included, so that
    // one that never finishes its handshakes is closed.
    let timeout = config.handshake_timeout;
    match tls {
        Some(tls) => {
            router
                .serve_with_incoming_shutdown(accept::tls(listener, tls, timeout), draining)
                .await?
        }
        None => {
            router
                .serve_with_incoming_shutdown(accept::plain(listener, timeout), draining)
                .await?
        }
    }
    // The HTTP connections finish their answers; the events streams have
    // ended with the engine.
    if let Some(server) = http_server.as_mut()
        && tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .is_err()
    {
        tracing::warn!("HTTP/JSON API connections still open after 5 s: closed");
    }
    if let Some(server) = http_server {
        server.abort();
    }
    Ok(())
}

/// The health service name of liveness: fails only if a runtime is
/// wedged (Kubernetes restarts the pod then), never for a database outage.
pub const LIVENESS: &str = "liveness";

/// How long a runtime may go without running its heartbeat task before
/// liveness turns NOT_SERVING.
const WEDGED_AFTER: Duration = Duration::from_secs(10);

/// A task on each runtime beats every second; a plain thread (which a
/// wedged runtime cannot stop) checks the beats and sets liveness.
fn watch_liveness<const N: usize>(
    health: tonic_health::server::HealthReporter,
    runtimes: [(&'static str, tokio::runtime::Handle); N],
) -> LivenessGuard {
    let stopped = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let guard = LivenessGuard(stopped.clone());
    let beats = runtimes.map(|(name, runtime)| {
        let beat = Arc::new(std::sync::Mutex::new(std::time::Instant::now()));
        let runtime_beat = beat.clone();
        runtime.spawn(async move {
            loop {
                *runtime_beat.lock().expect("heartbeat lock") = std::time::Instant::now();
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
        (name, beat)
    });
    let spawned = std::thread::Builder::new()
        .name("liveness".into())
        .spawn(move || {
            let mut serving = true;
            while !stopped.load(std::sync::atomic::Ordering::Relaxed) {
                std::thread::sleep(Duration::from_secs(1));
                let wedged = beats.iter().find(|(_, beat)| {
                    beat.lock().expect("heartbeat lock").elapsed() >= WEDGED_AFTER
                });
                let alive = wedged.is_none();
                if alive != serving {
                    serving = alive;
                    let status = match wedged {
                        None => ServingStatus::Serving,
                        Some((name, _)) => {
                            eprintln!("the {name} runtime is wedged: liveness NOT_SERVING");
                            ServingStatus::NotServing
                        }
                    };
                    futures::executor::block_on(health.set_service_status(LIVENESS, status));
                }
            }
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start the liveness watchdog");
    }
    guard
}

/// The engine's runtime (see [`serve`]); shut down, without waiting for
/// its tasks, when dropped.
struct EngineRuntime(Option<tokio::runtime::Runtime>);

impl EngineRuntime {
    fn start(threads: Option<usize>) -> anyhow::Result<EngineRuntime> {
        anyhow::ensure!(
            threads != Some(0),
            "the engine needs at least one thread (--engine-threads)"
        );
        let threads = threads.unwrap_or_else(|| {
            std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1))
        });
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("jobvisor-engine")
            .enable_all()
            .build()
            .context("cannot start the engine's runtime")?;
        Ok(EngineRuntime(Some(runtime)))
    }

    fn handle(&self) -> &tokio::runtime::Handle {
        self.0.as_ref().expect("the engine's runtime").handle()
    }
}

impl Drop for EngineRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

/// Stops the liveness watchdog when the server stops.
struct LivenessGuard(Arc<std::sync::atomic::AtomicBool>);

impl Drop for LivenessGuard {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Readiness follows the store: NOT_SERVING while it cannot be reached.
async fn watch_readiness(
    engine: Engine,
    health: tonic_health::server::HealthReporter,
    every: Duration,
) {
    let mut serving = true;
    loop {
        tokio::time::sleep(every).await;
        let ok = tokio::time::timeout(every, engine.ping())
            .await
            .is_ok_and(|r| r.is_ok());
        if ok != serving {
            serving = ok;
            let status = if ok {
                tracing::info!("store reachable again: serving");
                ServingStatus::Serving
            } else {
                tracing::warn!("store unreachable: not serving");
                ServingStatus::NotServing
            };
            health.set_service_status("", status).await;
            health
                .set_service_status("jobvisor.v1.JobService", status)
                .await;
        }
    }
}

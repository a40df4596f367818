//! `spawn_app()`: a fresh PostgreSQL database per test, the real server on
//! an ephemeral port (in this process), and a typed client — the same path
//! a user takes. Logs appear only with `TEST_LOG=1`.

use super::executors::{Executions, Flaky, Gate, Panicky, Recording};
use jobvisor::{
    api::guard::GuardConfig,
    executor::{Registry, remote::RemoteConfig},
    pb::{self, job_service_client::JobServiceClient},
    server::{Listeners, ServerConfig, TlsFiles, serve_listeners},
};
use sqlx::PgPool;
use std::{
    sync::Once,
    time::{Duration, Instant},
};
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

pub use jobvisor_testkit::db::TestDb;

pub fn init_logs() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if std::env::var("TEST_LOG").is_ok() {
            let _ = jobvisor::telemetry::init(jobvisor::telemetry::LogFormat::Text);
        }
    });
}

/// Which store the server runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum StoreKind {
    #[default]
    Postgres,
    /// The embedded SQLite store, in a temporary directory.
    Embedded,
}

/// Tweaks for one test's server.
#[derive(Clone)]
pub struct Options {
    pub store: StoreKind,
    pub restart_budget: u32,
    /// The API's database connections (the committer has its own two).
    pub db_connections: u32,
    pub acquire_timeout: Duration,
    pub max_request_bytes: usize,
    pub pipelined_acks: bool,
    /// `serve --retention`.
    pub retention: Option<Duration>,
    /// `serve --vacuum-after`.
    pub vacuum_after: u64,
    /// `serve --watch-stall-timeout`.
    pub watch_stall: Duration,
    /// `serve --handshake-timeout`.
    pub handshake_timeout: Duration,
    /// `serve --stream-keepalive`.
    pub stream_keepalive: Duration,
    /// `serve --max-watch-streams` and `--max-watch-streams-per-caller`.
    pub max_watch_streams: usize,
    pub max_watch_streams_per_caller: usize,
    /// `serve --tls-cert`, `--tls-key` and `--tls-client-ca`.
    pub tls: Option<TlsFiles>,
    /// How the harness's own client reaches a TLS server: the CA it
    /// trusts, the name it expects, and (under mTLS) its certificate.
    pub client_tls: Option<ClientTlsConfig>,
    /// Tokens, permissions and rate limits (`serve --auth-tokens`, …).
    pub guard: GuardConfig,
    /// The server's executors, instead of the test executors (`recording`,
    /// `gate`, `panicky`, `flaky`) beside the built-ins and `exec`.
    pub registry: Option<Registry>,
    /// Remote executors (`serve --remote-executor`, by default `remote`)
    /// and the worker protocol's times (short here: a lease of 1 s, a
    /// grace of 2 s).
    pub remote: RemoteConfig,
    /// Serve the HTTP/JSON API too (`serve --http-listen`), on an
    /// ephemeral port: [`TestApp::http_addr`].
    pub http: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            store: StoreKind::Postgres,
            restart_budget: 5,
            db_connections: 16,
            acquire_timeout: Duration::from_secs(3),
            max_request_bytes: 64 * 1024 * 1024,
            pipelined_acks: false,
            retention: None,
            vacuum_after: 1_000_000,
            watch_stall: Duration::from_secs(30),
            handshake_timeout: Duration::from_secs(10),
            stream_keepalive: Duration::from_secs(15),
            max_watch_streams: 4096,
            max_watch_streams_per_caller: 1024,
            tls: None,
            client_tls: None,
            guard: GuardConfig::default(),
            registry: None,
            remote: RemoteConfig {
                executors: vec!["remote".into()],
                lease_time: Duration::from_secs(1),
                interrupt_grace: Duration::from_secs(2),
                ..RemoteConfig::default()
            },
            http: false,
        }
    }
}

/// A running server and what a test needs to talk to it.
pub struct TestApp {
    pub client: JobServiceClient<Channel>,
    pub addr: std::net::SocketAddr,
    /// The HTTP/JSON API's address, with [`Options::http`].
    pub http_addr: Option<std::net::SocketAddr>,
    /// Direct access to the test's PostgreSQL database, for assertions
    /// (`None` on the embedded store; see [`TestApp::pg`]).
    pool: Option<PgPool>,
    /// The database (PostgreSQL) or its directory (embedded).
    pub db: TestDb,
    /// Keeps the embedded store's directory alive.
    _dir: Option<tempfile::TempDir>,
    /// Every execution the test executors saw.
    pub executions: Executions,
    /// Opens the `gate` executor's items.
    pub gate: Gate,
    /// Breaks and fixes the `flaky` executor's items.
    pub flaky: Flaky,
    options: Options,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<anyhow::Result<()>>>,
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(Options::default()).await
}

pub async fn spawn_app_with(options: Options) -> TestApp {
    init_logs();
    let (db, dir) = match options.store {
        StoreKind::Postgres => (TestDb::create().await, None),
        StoreKind::Embedded => {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("jobvisor.db").display().to_string();
            (
                TestDb {
                    name: String::new(),
                    url: path,
                },
                Some(dir),
            )
        }
    };
    let executions = Executions::default();
    let gate = Gate::default();
    let flaky = Flaky::default().with_log(executions.clone());
    let (channel, (addr, http_addr), shutdown, server) =
        start_server(&db.url, &options, &executions, &gate, &flaky).await;
    let pool = match options.store {
        StoreKind::Postgres => Some(
            PgPool::connect(&db.url)
                .await
                .expect("connect to the test db"),
        ),
        StoreKind::Embedded => None,
    };
    TestApp {
        client: JobServiceClient::new(channel),
        addr,
        http_addr,
        pool,
        db,
        _dir: dir,
        executions,
        gate,
        flaky,
        options,
        shutdown: Some(shutdown),
        server: Some(server),
    }
}

type Running = (
    Channel,
    (std::net::SocketAddr, Option<std::net::SocketAddr>),
    oneshot::Sender<()>,
    JoinHandle<anyhow::Result<()>>,
);

async fn start_server(
    db_url: &str,
    options: &Options,
    executions: &Executions,
    gate: &Gate,
    flaky: &Flaky,
) -> Running {
    let registry = options.registry.clone().unwrap_or_else(|| {
        Registry::with_builtins()
            .with("recording", Recording::new(executions.clone()))
            .with("gate", gate.clone().with_log(executions.clone()))
            .with("panicky", Panicky)
            .with("flaky", flaky.clone())
            .with_exec(
                jobvisor::executor::exec::ExecExecutor::new(&Default::default()).expect("exec"),
            )
    });
    let mut config = match options.store {
        StoreKind::Postgres => ServerConfig::new(db_url),
        StoreKind::Embedded => ServerConfig::embedded(db_url),
    };
    config.shutdown_grace = Duration::from_secs(5);
    config.health_interval = Duration::from_millis(200);
    config.engine.restart_budget = options.restart_budget;
    config.database.max_connections = options.db_connections;
    config.database.acquire_timeout = options.acquire_timeout;
    config.max_request_bytes = options.max_request_bytes;
    config.engine.pipelined_acks = options.pipelined_acks;
    config.engine.retention = options.retention;
    config.engine.vacuum_after = options.vacuum_after;
    config.engine.watch_stall = options.watch_stall;
    config.engine.stream_keepalive = options.stream_keepalive;
    config.handshake_timeout = options.handshake_timeout;
    config.max_watch_streams = options.max_watch_streams;
    config.max_watch_streams_per_caller = options.max_watch_streams_per_caller;
    config.tls = options.tls.clone();
    config.guard = options.guard.clone();
    config.remote = options.remote.clone();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let http = match options.http {
        true => Some(TcpListener::bind("127.0.0.1:0").await.unwrap()),
        false => None,
    };
    let http_addr = http.as_ref().map(|l| l.local_addr().unwrap());
    let listeners = Listeners {
        grpc: listener,
        http,
    };
    let (tx, rx) = oneshot::channel::<()>();
    let server = tokio::spawn(serve_listeners(config, registry, listeners, async {
        let _ = rx.await;
    }));
    let endpoint = match &options.client_tls {
        None => endpoint(addr),
        Some(tls) => tls_endpoint(addr, tls.clone()),
    };
    (connect_to(endpoint).await, (addr, http_addr), tx, server)
}

/// A plaintext endpoint of the server at `addr`.
pub fn endpoint(addr: std::net::SocketAddr) -> Endpoint {
    Endpoint::from_shared(format!("http://{addr}")).unwrap()
}

/// A TLS endpoint of the server at `addr`, by the name `localhost` (the
/// name its test certificates carry).
pub fn tls_endpoint(addr: std::net::SocketAddr, tls: ClientTlsConfig) -> Endpoint {
    Endpoint::from_shared(format!("https://localhost:{}", addr.port()))
        .unwrap()
        .tls_config(tls)
        .unwrap()
}

/// Shuts the server down gracefully and starts a new one on the same
/// database, as a restart of the service would.
pub async fn restart(mut app: TestApp) -> TestApp {
    app.shutdown_server().await;
    let (channel, (addr, http_addr), shutdown, server) = start_server(
        &app.db.url,
        &app.options,
        &app.executions,
        &app.gate,
        &app.flaky,
    )
    .await;
    app.client = JobServiceClient::new(channel);
    app.addr = addr;
    app.http_addr = http_addr;
    app.shutdown = Some(shutdown);
    app.server = Some(server);
    app
}

/// Connects, waiting for the server to listen and migrate.
/// GetJob through `client` (of any server: a [`TestApp`]'s, or one the
/// test started otherwise).
pub async fn get_job(client: &JobServiceClient<Channel>, id: &str) -> pb::Job {
    client
        .clone()
        .get_job(pb::GetJobRequest { job_id: id.into() })
        .await
        .expect("GetJob")
        .into_inner()
}

/// Polls GetJob through `client` until the job is in `state`.
pub async fn wait_for_state(
    client: &JobServiceClient<Channel>,
    id: &str,
    state: pb::JobState,
    within: Duration,
) -> pb::Job {
    let deadline = Instant::now() + within;
    loop {
        let job = get_job(client, id).await;
        if job.state == state as i32 {
            return job;
        }
        if Instant::now() > deadline {
            panic!(
                "job {id} is {:?} after {within:?}, not {state:?}: {job:?}",
                pb::JobState::try_from(job.state)
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub async fn connect(addr: std::net::SocketAddr) -> Channel {
    connect_to(endpoint(addr)).await
}

/// [`connect`], through `endpoint` (plaintext or TLS).
pub async fn connect_to(endpoint: Endpoint) -> Channel {
    let addr = endpoint.uri().clone();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match endpoint.connect().await {
            Ok(ch) => {
                // The port is bound before the store is ready: wait until
                // health answers SERVING.
                let mut health = tonic_health::pb::health_client::HealthClient::new(ch.clone());
                let req = tonic_health::pb::HealthCheckRequest {
                    service: String::new(),
                };
                if let Ok(r) = health.check(req).await
                    && r.into_inner().status == 1
                {
                    return ch;
                }
            }
            Err(_) if Instant::now() < deadline => {}
            Err(e) => panic!("server at {addr} never came up: {e}"),
        }
        if Instant::now() > deadline {
            panic!("server at {addr} never became healthy");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

impl TestApp {
    /// Shuts the server down gracefully (SIGTERM's path), keeping the
    /// database.
    pub async fn shutdown_server(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(server) = self.server.take() {
            let result = tokio::time::timeout(Duration::from_secs(10), server)
                .await
                .expect("the server did not stop within 10 s");
            result.expect("server task").expect("server result");
        }
    }

    /// Stops the server and drops the database.
    pub async fn stop(mut self) {
        self.shutdown_server().await;
        if let Some(pool) = &self.pool {
            pool.close().await;
            self.db.drop_db().await;
        }
    }

    /// A StartJob request with the given basics.
    pub fn job(
        &self,
        executor: &str,
        items: usize,
        concurrency: u32,
        params: &[(&str, &str)],
    ) -> pb::StartJobRequest {
        pb::StartJobRequest {
            name: format!("test-{executor}"),
            executor: executor.into(),
            items: (0..items).map(|i| format!("item-{i}")).collect(),
            concurrency,
            params: params
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        }
    }

    pub async fn start(&self, request: pb::StartJobRequest) -> pb::Job {
        self.client
            .clone()
            .start_job(request)
            .await
            .expect("StartJob")
            .into_inner()
    }

    pub async fn get(&self, id: &str) -> pb::Job {
        get_job(&self.client, id).await
    }

    pub async fn pause(&self, id: &str, mode: pb::PauseMode) -> Result<pb::Job, tonic::Status> {
        self.client
            .clone()
            .pause_job(pb::PauseJobRequest {
                job_id: id.into(),
                mode: mode as i32,
                reason: "test".into(),
                ..Default::default()
            })
            .await
            .map(|r| r.into_inner())
    }

    pub async fn resume(&self, id: &str) -> Result<pb::Job, tonic::Status> {
        self.client
            .clone()
            .resume_job(pb::ResumeJobRequest {
                job_id: id.into(),
                request_id: String::new(),
            })
            .await
            .map(|r| r.into_inner())
    }

    pub async fn cancel(&self, id: &str) -> Result<pb::Job, tonic::Status> {
        self.client
            .clone()
            .cancel_job(pb::CancelJobRequest {
                job_id: id.into(),
                reason: "test".into(),
                request_id: String::new(),
            })
            .await
            .map(|r| r.into_inner())
    }

    /// Polls until the job is in `state`.
    pub async fn wait_for(&self, id: &str, state: pb::JobState, within: Duration) -> pb::Job {
        wait_for_state(&self.client, id, state, within).await
    }

    /// Polls until `check` holds.
    pub async fn eventually<F, Fut>(&self, what: &str, within: Duration, mut check: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let deadline = Instant::now() + within;
        while !check().await {
            if Instant::now() > deadline {
                panic!("timed out after {within:?} waiting for {what}");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Every item of a job, in index order.
    pub async fn items(&self, id: &str) -> Vec<pb::Item> {
        let mut items = Vec::new();
        let mut token = String::new();
        loop {
            let page = self
                .client
                .clone()
                .list_job_items(pb::ListJobItemsRequest {
                    job_id: id.into(),
                    page_size: 1000,
                    page_token: token,
                    states: vec![],
                })
                .await
                .expect("ListJobItems")
                .into_inner();
            items.extend(page.items);
            if page.next_page_token.is_empty() {
                return items;
            }
            token = page.next_page_token;
        }
    }

    /// The stream of a job from `from`, until it ends (or `within`).
    /// Opens a WatchJob stream after sequence `from`.
    pub async fn open_watch(&self, id: &str, from: u64) -> tonic::Streaming<pb::JobEvent> {
        self.client
            .clone()
            .watch_job(pb::WatchJobRequest {
                job_id: id.into(),
                from_sequence: from,
                window: None,
            })
            .await
            .expect("WatchJob")
            .into_inner()
    }

    pub async fn watch_all(&self, id: &str, from: u64, within: Duration) -> Vec<pb::JobEvent> {
        let mut stream = self.open_watch(id, from).await;
        let mut events = Vec::new();
        let collect = async {
            while let Some(e) = stream.message().await.expect("stream message") {
                events.push(e);
            }
        };
        tokio::time::timeout(within, collect)
            .await
            .expect("the watch stream did not end in time");
        // A progress message never claims a sequence the stream has not
        // sent: resuming from it must miss nothing.
        let mut sent = from;
        for e in &events {
            match &e.kind {
                Some(pb::job_event::Kind::Snapshot(_)) => {}
                Some(pb::job_event::Kind::Progress(_)) => assert!(
                    e.sequence <= sent,
                    "a progress message at {} after stored events up to {sent}",
                    e.sequence
                ),
                _ => sent = e.sequence,
            }
        }
        events
    }

    /// The PostgreSQL pool, for tests that only run there.
    pub fn pg(&self) -> &PgPool {
        self.pool.as_ref().expect("this test runs on PostgreSQL")
    }

    /// Items of a job ever claimed: not pending, or pending after an attempt.
    pub async fn claimed(&self, id: &str) -> i64 {
        self.items(id)
            .await
            .iter()
            .filter(|i| i.state != pb::ItemState::Pending as i32 || i.attempts > 0)
            .count() as i64
    }
}

/// Only the stored events (no snapshot, no progress).
pub fn stored(events: &[pb::JobEvent]) -> Vec<&pb::JobEvent> {
    use pb::job_event::Kind;
    events
        .iter()
        .filter(|e| !matches!(e.kind, Some(Kind::Snapshot(_)) | Some(Kind::Progress(_))))
        .collect()
}

/// The (from, to) of every state change in a stream.
pub fn transitions(events: &[pb::JobEvent]) -> Vec<(pb::JobState, pb::JobState)> {
    events
        .iter()
        .filter_map(|e| match &e.kind {
            Some(pb::job_event::Kind::StateChanged(c)) => Some((
                pb::JobState::try_from(c.from).unwrap(),
                pb::JobState::try_from(c.to).unwrap(),
            )),
            _ => None,
        })
        .collect()
}

pub const SECS: fn(u64) -> Duration = Duration::from_secs;

/// The stable reason (`google.rpc.ErrorInfo`) of a refusal; empty if none.
pub fn reason(status: &tonic::Status) -> String {
    use tonic_types::StatusExt as _;
    status
        .get_details_error_info()
        .map(|i| i.reason)
        .unwrap_or_default()
}

/// The fields a refusal names as bad (`google.rpc.BadRequest`), in order.
pub fn bad_fields(status: &tonic::Status) -> Vec<String> {
    use tonic_types::StatusExt as _;
    status
        .get_details_bad_request()
        .map(|b| b.field_violations.into_iter().map(|v| v.field).collect())
        .unwrap_or_default()
}

/// Sends `body` as the one message of a call to `method`, whatever its
/// bytes (the hostile-input and property tests' malformed messages).
pub async fn raw_call(
    channel: &tonic::transport::Channel,
    method: &str,
    body: Vec<u8>,
) -> Result<(), tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready().await.unwrap();
    let path =
        http::uri::PathAndQuery::try_from(format!("/jobvisor.v1.JobService/{method}")).unwrap();
    let request = tonic::Request::new(body);
    if method == "WatchJob" {
        grpc.server_streaming(request, path, RawCodec)
            .await
            .map(|_| ())
    } else {
        grpc.unary(request, path, RawCodec).await.map(|_| ())
    }
}

/// Sends and receives raw bytes as gRPC messages.
#[derive(Clone, Default)]
pub struct RawCodec;

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;
    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }
    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

impl tonic::codec::Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(
        &mut self,
        item: Vec<u8>,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        use bytes::BufMut;
        dst.put_slice(&item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Vec<u8>>, tonic::Status> {
        use bytes::Buf;
        let bytes = src.copy_to_bytes(src.remaining());
        Ok(Some(bytes.to_vec()))
    }
}

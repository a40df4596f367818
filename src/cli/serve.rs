//! `jobvisor serve`: configuration from flags and `JOBVISOR_*` variables,
//! logging, the listening socket, and SIGTERM/SIGINT wired to a graceful
//! shutdown.

use crate::api::{auth::Tokens, guard::GuardConfig};
use crate::{
    engine::host_name,
    executor::{
        Registry,
        exec::{CommandPolicy, ExecExecutor, ExecSettings, ExecSetupError},
    },
    server, telemetry,
};
use anyhow::Context;
use clap::Args;
use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on for gRPC (JobService, health, reflection).
    #[arg(long, env = "JOBVISOR_LISTEN", default_value = "127.0.0.1:50051")]
    listen: SocketAddr,

    /// PostgreSQL connection URL, e.g. postgres://user@host:5432/db. Without
    /// it, jobs are kept in an embedded store under --data-dir (one process
    /// only; PostgreSQL is the store for production and several replicas).
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,

    /// Where the embedded store keeps its file (without --database-url);
    /// one server at a time (the directory is locked).
    #[arg(long, env = "JOBVISOR_DATA_DIR", default_value = "./jobvisor-data")]
    data_dir: PathBuf,

    /// Most connections to PostgreSQL.
    #[arg(long, env = "JOBVISOR_DB_MAX_CONNECTIONS", default_value_t = 16)]
    db_max_connections: u32,

    /// How long a call waits for a free database connection before failing
    /// with UNAVAILABLE: while the database is down, the most a call that
    /// needs it takes.
    #[arg(long, env = "JOBVISOR_DB_ACQUIRE_TIMEOUT", default_value = "3s",
          value_parser = humantime::parse_duration)]
    db_acquire_timeout: Duration,

    /// On SIGTERM/SIGINT, how long items in flight get to reach their next
    /// checkpoint before the process exits anyway.
    #[arg(long, env = "JOBVISOR_SHUTDOWN_GRACE", default_value = "10s",
          value_parser = humantime::parse_duration)]
    shutdown_grace: Duration,

    /// Worker restarts (panics) a job tolerates within --restart-window;
    /// one more fails the job.
    #[arg(long, env = "JOBVISOR_RESTART_BUDGET", default_value_t = 5)]
    restart_budget: u32,

    /// The window of --restart-budget.
    #[arg(long, env = "JOBVISOR_RESTART_WINDOW", default_value = "60s",
          value_parser = humantime::parse_duration)]
    restart_window: Duration,

    /// Largest request accepted, in bytes (a StartJob carries its items).
    #[arg(long, env = "JOBVISOR_MAX_REQUEST_BYTES", default_value_t = 64 * 1024 * 1024)]
    max_request_bytes: usize,

    /// Let each worker start its next items while its previous items'
    /// outcomes commit (at most --pipeline-depth outstanding). Faster for
    /// short items; after a crash, those items run again too.
    #[arg(long, env = "JOBVISOR_PIPELINED_ACKS")]
    pipelined_acks: bool,

    /// With --pipelined-acks: outcomes a worker may have committing at
    /// once (1–64).
    #[arg(long, env = "JOBVISOR_PIPELINE_DEPTH", default_value_t = 32,
          value_parser = clap::value_parser!(u32).range(1..=64), requires = "pipelined_acks")]
    pipeline_depth: u32,

    /// A job's WatchJob streams are woken at most once per this window and
    /// get the events it gathered in one frame: up to this much latency
    /// for much less work per event when many watch a busy job (0s: every
    /// event at once; at most 1s).
    #[arg(long, env = "JOBVISOR_WATCH_WINDOW", default_value = "20ms",
          value_parser = humantime::parse_duration)]
    watch_window: Duration,

    /// WatchJob streams open at once on this server; one more is refused
    /// with RESOURCE_EXHAUSTED.
    #[arg(long, env = "JOBVISOR_MAX_WATCH_STREAMS", default_value_t = 4096)]
    max_watch_streams: usize,

    /// WatchJob streams open at once for one caller (its token or
    /// certificate name, or its address without one); one more is refused
    /// with RESOURCE_EXHAUSTED.
    #[arg(
        long,
        env = "JOBVISOR_MAX_WATCH_STREAMS_PER_CALLER",
        default_value_t = 1024
    )]
    max_watch_streams_per_caller: usize,

    /// A WatchJob stream whose client reads nothing for this long while
    /// newer events are stored ends with RESOURCE_EXHAUSTED (the client
    /// watches again from its last sequence).
    #[arg(long, env = "JOBVISOR_WATCH_STALL_TIMEOUT", default_value = "30s",
          value_parser = humantime::parse_duration)]
    watch_stall_timeout: Duration,

    /// A WatchJob stream on which nothing was sent for this long (a paused
    /// job, long items) gets a progress message anyway, so that proxies
    /// and load balancers that time out idle streams (nginx 60 s, cloud
    /// load balancers 30–350 s) keep it open.
    #[arg(long, env = "JOBVISOR_STREAM_KEEPALIVE", default_value = "15s",
          value_parser = humantime::parse_duration)]
    stream_keepalive: Duration,

    /// Delete ended jobs (SUCCEEDED, FAILED, CANCELLED) this long after
    /// they ended, with their items, events and pause history, e.g. 30d.
    /// Without it, ended jobs are kept until a DeleteJob call.
    #[arg(long, env = "JOBVISOR_RETENTION", value_parser = humantime::parse_duration)]
    retention: Option<Duration>,

    /// With --retention on PostgreSQL: once the retention has deleted this
    /// many items since the last time, the server vacuums the items and
    /// events tables itself, so that new items reuse the room at once
    /// (autovacuum looks at a database once a minute at most, by default,
    /// and a busy server's items table grows by what it ran meanwhile).
    /// 0: leave it to autovacuum.
    #[arg(long, env = "JOBVISOR_VACUUM_AFTER", default_value_t = 1_000_000)]
    vacuum_after: u64,

    /// An executor whose items run in worker processes connected over
    /// WorkerService (`jobvisor worker`, the Python library, any gRPC
    /// client), e.g. --remote-executor ocr. Repeat it, or separate names
    /// with commas. A job for it waits, saying so in GetJob, while no
    /// worker serves it.
    #[arg(
        long = "remote-executor",
        env = "JOBVISOR_REMOTE_EXECUTORS",
        value_delimiter = ','
    )]
    remote_executors: Vec<String>,

    /// How long a remote worker that went silent, or whose stream broke,
    /// keeps its items before they go back to pending for another worker
    /// (the lost attempt counts). A worker that reconnects within it
    /// continues its items.
    #[arg(long, env = "JOBVISOR_WORKER_LEASE_TIME", default_value = "5s",
          value_parser = humantime::parse_duration)]
    worker_lease_time: Duration,

    /// How long a remote worker has to stop an interrupted item (pause,
    /// cancel, shutdown) before the item is taken from it; whatever it
    /// sends for the item afterwards is refused.
    #[arg(long, env = "JOBVISOR_WORKER_INTERRUPT_GRACE", default_value = "10s",
          value_parser = humantime::parse_duration)]
    worker_interrupt_grace: Duration,

    /// The largest checkpoint a remote worker may save, in bytes.
    #[arg(long, env = "JOBVISOR_MAX_CHECKPOINT_BYTES", default_value_t = 1024 * 1024)]
    max_checkpoint_bytes: usize,

    /// Threads of the engine's own runtime: its actors, the group
    /// committer, the executors' async code. The gRPC connections (and
    /// every WatchJob stream) run on other threads. Default: half the
    /// cores, at least one.
    #[arg(long, env = "JOBVISOR_ENGINE_THREADS",
          value_parser = clap::value_parser!(u16).range(1..=1024))]
    engine_threads: Option<u16>,

    /// Enable the `exec` executor, which runs programs on this host for
    /// each item.
    #[arg(long, env = "JOBVISOR_ALLOW_EXEC")]
    allow_exec: bool,

    /// With --allow-exec: only these commands may be run (comma-separated
    /// names or absolute paths). Each name is resolved on the server's PATH
    /// at start-up, and jobs run that absolute path. Empty: any command.
    #[arg(long, env = "JOBVISOR_EXEC_COMMANDS", value_delimiter = ',')]
    exec_commands: Vec<String>,

    /// With --allow-exec: the server's environment variables programs get
    /// (comma-separated names; empty: none). Programs never get the rest
    /// of the server's environment. PATH is always given: the server's,
    /// without relative entries.
    #[arg(
        long,
        env = "JOBVISOR_EXEC_ENV_PASS",
        value_delimiter = ',',
        default_value = "HOME,LANG,LC_ALL,TMPDIR,TZ"
    )]
    exec_env_pass: Vec<String>,

    /// With --allow-exec: variables jobs may set in their `env` although
    /// they change which program runs or what code it loads (PATH, LD_*,
    /// PYTHONPATH, …; refused otherwise). Comma-separated.
    #[arg(long, env = "JOBVISOR_EXEC_ALLOW_ENV", value_delimiter = ',')]
    exec_allow_env: Vec<String>,

    /// With --allow-exec: programs run under this directory. A job's `cwd`
    /// must lie inside it (a relative one is taken from it); without `cwd`
    /// a program runs in it. Unset: a `cwd` must be an absolute path.
    #[arg(long, env = "JOBVISOR_EXEC_CWD_ROOT")]
    exec_cwd_root: Option<PathBuf>,

    /// Where to serve Prometheus metrics (`http://ADDR/metrics`), or `off`.
    #[arg(
        long,
        env = "JOBVISOR_METRICS_LISTEN",
        default_value = "127.0.0.1:9464"
    )]
    metrics_listen: String,

    /// Where to serve the HTTP/JSON API and its Server-Sent Events
    /// (`http://ADDR/v1/jobs`), or `off`. The same tokens, permissions and
    /// limits as gRPC; in TLS when the gRPC port is (the same certificate),
    /// and like it refused on a non-loopback address in plaintext without
    /// --insecure.
    #[arg(long, env = "JOBVISOR_HTTP_LISTEN", default_value = "127.0.0.1:8080")]
    http_listen: String,

    /// How long a new connection has to finish its handshakes (TLS, if
    /// configured, and HTTP/2: the client's preface and first SETTINGS
    /// frame) before it is closed.
    #[arg(long, env = "JOBVISOR_HANDSHAKE_TIMEOUT", default_value = "10s",
          value_parser = humantime::parse_duration)]
    handshake_timeout: Duration,

    /// TLS certificate (PEM) for the gRPC port. With --tls-key.
    #[arg(long, env = "JOBVISOR_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,

    /// TLS private key (PEM) for the gRPC port.
    #[arg(long, env = "JOBVISOR_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,

    /// CA (PEM) that client certificates must be signed by: mTLS. The
    /// certificate subject is then the caller's identity.
    #[arg(long, env = "JOBVISOR_TLS_CLIENT_CA", requires = "tls_cert")]
    tls_client_ca: Option<PathBuf>,

    /// Serve plaintext on a non-loopback address (e.g. behind a mesh that
    /// encrypts and authenticates). Without it, that refuses to start.
    #[arg(long, env = "JOBVISOR_INSECURE")]
    insecure: bool,

    /// File of hashed bearer tokens with their permissions (see
    /// `jobvisor token new`); reloaded on SIGHUP. Without it, every caller
    /// may do everything.
    #[arg(long, env = "JOBVISOR_AUTH_TOKENS")]
    auth_tokens: Option<PathBuf>,

    /// With --auth-tokens: health checks and reflection need a token too.
    #[arg(long, env = "JOBVISOR_AUTH_PROTECT_DISCOVERY")]
    auth_protect_discovery: bool,

    /// Requests per second per caller (0: no limit); above it,
    /// RESOURCE_EXHAUSTED with a retry delay.
    #[arg(long, env = "JOBVISOR_RATE_LIMIT", default_value_t = 0)]
    rate_limit: u32,

    /// Burst allowed above --rate-limit (0: the rate itself).
    #[arg(long, env = "JOBVISOR_RATE_BURST", default_value_t = 0)]
    rate_burst: u32,

    /// Requests handled at once per caller (0: no limit).
    #[arg(long, env = "JOBVISOR_MAX_CONCURRENT_PER_CALLER", default_value_t = 0)]
    max_concurrent_per_caller: u32,

    /// Several replicas share the PostgreSQL database: each live job is
    /// owned by one replica through a lease, control calls reach the owner
    /// wherever they land, and a replica that dies has its jobs adopted by
    /// the others after --lease-timeout. Every server on the database needs
    /// it: a server without it runs every job alone, and is refused beside
    /// replicas (as they are beside it).
    #[arg(long, env = "JOBVISOR_MULTI_REPLICA")]
    multi_replica: bool,

    /// With --multi-replica: how long a replica's leases last without
    /// renewal (renewed every third of it). Shorter: a dead replica's jobs
    /// move sooner; longer: a replica survives longer stalls (GC, network)
    /// without losing its jobs.
    #[arg(long, env = "JOBVISOR_LEASE_TIMEOUT", default_value = "10s",
          value_parser = humantime::parse_duration)]
    lease_timeout: Duration,

    /// With --multi-replica: this replica's id, unique among those running
    /// (on Kubernetes, the pod name). Default: the host name and the gRPC
    /// port. A replica restarted with the same id takes its jobs back at
    /// once.
    #[arg(long, env = "JOBVISOR_REPLICA_ID")]
    replica_id: Option<String>,

    /// With --multi-replica: the host:port where the other replicas reach
    /// this one's gRPC port, to borrow the slots of the workers connected
    /// here for the jobs they own (on Kubernetes, the pod IP). Default: the
    /// --listen address, unless it is unspecified (0.0.0.0, ::): then the
    /// workers connected here serve only this replica's jobs.
    #[arg(long, env = "JOBVISOR_ADVERTISE_ADDRESS")]
    advertise_address: Option<String>,

    /// With --multi-replica: the token this replica presents to the others
    /// when it borrows their workers, if they check tokens (--auth-tokens);
    /// it needs the `work` permission. Links between replicas are
    /// plaintext.
    #[arg(long, env = "JOBVISOR_PEER_TOKEN", hide_env_values = true)]
    peer_token: Option<String>,

    /// Log format: text (for a terminal) or json.
    #[arg(long, env = "JOBVISOR_LOG_FORMAT", default_value = "text")]
    log_format: telemetry::LogFormat,
}

impl ServeArgs {
    fn config(&self) -> anyhow::Result<server::ServerConfig> {
        let mut config = match &self.database_url {
            Some(url) if !url.trim().is_empty() => server::ServerConfig::new(url),
            _ => server::ServerConfig::embedded(self.data_dir.join("jobvisor.db")),
        };
        if self.db_max_connections == 0 {
            anyhow::bail!("--db-max-connections (JOBVISOR_DB_MAX_CONNECTIONS) must be at least 1");
        }
        if self.max_request_bytes < 1024 {
            anyhow::bail!("--max-request-bytes (JOBVISOR_MAX_REQUEST_BYTES) must be at least 1024");
        }
        if self.restart_window.is_zero() {
            anyhow::bail!("--restart-window (JOBVISOR_RESTART_WINDOW) must be longer than 0s");
        }
        if self.watch_window > Duration::from_secs(1) {
            anyhow::bail!(
                "--watch-window (JOBVISOR_WATCH_WINDOW) must be at most 1s, got {}",
                humantime::format_duration(self.watch_window)
            );
        }
        if self.max_watch_streams == 0 {
            anyhow::bail!("--max-watch-streams (JOBVISOR_MAX_WATCH_STREAMS) must be at least 1");
        }
        if self.max_watch_streams_per_caller == 0 {
            anyhow::bail!(
                "--max-watch-streams-per-caller (JOBVISOR_MAX_WATCH_STREAMS_PER_CALLER) must be at least 1"
            );
        }
        if self.watch_stall_timeout < Duration::from_secs(1) {
            anyhow::bail!(
                "--watch-stall-timeout (JOBVISOR_WATCH_STALL_TIMEOUT) must be at least 1s, got {}",
                humantime::format_duration(self.watch_stall_timeout)
            );
        }
        if !(Duration::from_millis(100)..=Duration::from_secs(3600))
            .contains(&self.stream_keepalive)
        {
            anyhow::bail!(
                "--stream-keepalive (JOBVISOR_STREAM_KEEPALIVE) must be from 100ms to 1h, got {}",
                humantime::format_duration(self.stream_keepalive)
            );
        }
        for name in &self.remote_executors {
            if name.is_empty()
                || name.len() > 128
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.:/".contains(c))
            {
                anyhow::bail!(
                    "--remote-executor (JOBVISOR_REMOTE_EXECUTORS): {name:?} is not an executor name \
                     (1 to 128 letters, digits and - _ . : /)"
                );
            }
        }
        if !(Duration::from_millis(200)..=Duration::from_secs(3600))
            .contains(&self.worker_lease_time)
        {
            anyhow::bail!(
                "--worker-lease-time (JOBVISOR_WORKER_LEASE_TIME) must be from 200ms to 1h, got {}",
                humantime::format_duration(self.worker_lease_time)
            );
        }
        if self.worker_interrupt_grace > Duration::from_secs(24 * 3600) {
            anyhow::bail!(
                "--worker-interrupt-grace (JOBVISOR_WORKER_INTERRUPT_GRACE) must be at most 24h, got {}",
                humantime::format_duration(self.worker_interrupt_grace)
            );
        }
        if !(1024..=64 * 1024 * 1024).contains(&self.max_checkpoint_bytes) {
            anyhow::bail!(
                "--max-checkpoint-bytes (JOBVISOR_MAX_CHECKPOINT_BYTES) must be from 1024 to 67108864, got {}",
                self.max_checkpoint_bytes
            );
        }
        if self.handshake_timeout < Duration::from_millis(100) {
            anyhow::bail!(
                "--handshake-timeout (JOBVISOR_HANDSHAKE_TIMEOUT) must be at least 100ms, got {}",
                humantime::format_duration(self.handshake_timeout)
            );
        }
        if let Some(retention) = self.retention {
            if retention < Duration::from_secs(1) {
                anyhow::bail!(
                    "--retention (JOBVISOR_RETENTION) must be at least 1s, got {}",
                    humantime::format_duration(retention)
                );
            }
            if chrono::Duration::from_std(retention).is_err() {
                anyhow::bail!("--retention (JOBVISOR_RETENTION) is too long");
            }
        }
        config.database.max_connections = self.db_max_connections;
        config.database.acquire_timeout = self.db_acquire_timeout;
        config.shutdown_grace = self.shutdown_grace;
        config.max_request_bytes = self.max_request_bytes;
        config.engine.restart_budget = self.restart_budget;
        config.engine.restart_window = self.restart_window;
        config.engine.pipelined_acks = self.pipelined_acks;
        config.engine.pipeline_depth = self.pipeline_depth;
        config.engine.watch_window = self.watch_window;
        config.engine.retention = self.retention;
        config.engine.vacuum_after = self.vacuum_after;
        config.engine.watch_stall = self.watch_stall_timeout;
        config.engine.stream_keepalive = self.stream_keepalive;
        config.remote.executors = self.remote_executors.clone();
        config.remote.lease_time = self.worker_lease_time;
        config.remote.interrupt_grace = self.worker_interrupt_grace;
        config.remote.max_checkpoint_bytes = self.max_checkpoint_bytes;
        config.handshake_timeout = self.handshake_timeout;
        config.max_watch_streams = self.max_watch_streams;
        config.max_watch_streams_per_caller = self.max_watch_streams_per_caller;
        config.engine_threads = self.engine_threads.map(usize::from);
        config.tls = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Some(server::TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                client_ca: self.tls_client_ca.clone(),
            }),
            _ => None,
        };
        if config.tls.is_none() && !self.listen.ip().is_loopback() && !self.insecure {
            anyhow::bail!(
                "refusing to serve plaintext on {}: anyone who can reach it could start, \
                 pause and cancel jobs. Give --tls-cert and --tls-key, or --insecure \
                 (JOBVISOR_INSECURE) if a mesh encrypts and authenticates the traffic",
                self.listen
            );
        }
        if let Some(http) = self.http_addr()?
            && config.tls.is_none()
            && !http.ip().is_loopback()
            && !self.insecure
        {
            anyhow::bail!(
                "refusing to serve the HTTP API in plaintext on {http} (--http-listen, \
                 JOBVISOR_HTTP_LISTEN): anyone who can reach it could start, pause and cancel \
                 jobs. Give --tls-cert and --tls-key, --insecure (JOBVISOR_INSECURE) if a mesh \
                 encrypts and authenticates the traffic, or --http-listen off"
            );
        }
        if self.multi_replica {
            if config.embedded.is_some() {
                anyhow::bail!(
                    "--multi-replica (JOBVISOR_MULTI_REPLICA) needs PostgreSQL: give \
                     --database-url (DATABASE_URL); the embedded store serves one process only"
                );
            }
            if self.lease_timeout < Duration::from_millis(500) {
                anyhow::bail!("--lease-timeout (JOBVISOR_LEASE_TIMEOUT) must be at least 500ms");
            }
            let replica = match &self.replica_id {
                Some(id) if id.trim().is_empty() || id.len() > 200 => {
                    anyhow::bail!("--replica-id (JOBVISOR_REPLICA_ID) must be 1 to 200 characters")
                }
                Some(id) => id.trim().to_string(),
                None => format!("{}:{}", host_name(), self.listen.port()),
            };
            config.engine.runner.server = replica.clone();
            let mut cluster = crate::engine::ClusterConfig::new(replica);
            cluster.lease_timeout = self.lease_timeout;
            cluster.advertise = match &self.advertise_address {
                Some(_) if config.tls.is_some() => anyhow::bail!(
                    "--advertise-address (JOBVISOR_ADVERTISE_ADDRESS) needs a plaintext gRPC port: \
                     the links between replicas that lend workers are plaintext, and this one \
                     serves TLS (--tls-cert); leave it out, and the workers connected here \
                     serve only this replica's jobs"
                ),
                None if config.tls.is_some() => {
                    if !self.remote_executors.is_empty() {
                        tracing::warn!(
                            "the links between replicas that lend workers are plaintext and this \
                             replica serves TLS: the workers connected here serve only its own jobs"
                        );
                    }
                    None
                }
                Some(address) => {
                    let address = address.trim();
                    let port = address.rsplit_once(':').map(|(_, p)| p);
                    if address.is_empty() || port.is_none_or(|p| p.parse::<u16>().is_err()) {
                        anyhow::bail!(
                            "--advertise-address (JOBVISOR_ADVERTISE_ADDRESS) {address:?} is not \
                             a host:port the other replicas can reach, like 10.1.2.3:50051"
                        );
                    }
                    Some(address.to_string())
                }
                None if self.listen.ip().is_unspecified() => {
                    if !self.remote_executors.is_empty() {
                        tracing::warn!(listen = %self.listen,
                            "no --advertise-address (JOBVISOR_ADVERTISE_ADDRESS) and --listen is \
                             unspecified: the other replicas cannot borrow the workers connected here");
                    }
                    None
                }
                None => Some(self.listen.to_string()),
            };
            config.cluster = Some(cluster);
            config.peer_token = self.peer_token.clone();
        } else if self.advertise_address.is_some() || self.peer_token.is_some() {
            anyhow::bail!(
                "--advertise-address and --peer-token (JOBVISOR_ADVERTISE_ADDRESS, \
                 JOBVISOR_PEER_TOKEN) need --multi-replica"
            );
        } else if self.replica_id.is_some() {
            anyhow::bail!("--replica-id (JOBVISOR_REPLICA_ID) needs --multi-replica");
        } else {
            config.engine.runner.server = format!("{}:{}", host_name(), self.listen.port());
        }
        config.guard = GuardConfig {
            tokens: match &self.auth_tokens {
                Some(path) => Some(Arc::new(Tokens::load(path)?)),
                None => None,
            },
            protect_discovery: self.auth_protect_discovery,
            rate_per_second: self.rate_limit,
            rate_burst: self.rate_burst,
            concurrent_per_caller: self.max_concurrent_per_caller,
        };
        Ok(config)
    }

    /// The HTTP API's address; `None` when it is `off`.
    fn http_addr(&self) -> anyhow::Result<Option<SocketAddr>> {
        if self.http_listen.trim() == "off" {
            return Ok(None);
        }
        self.http_listen.trim().parse().map(Some).map_err(|_| {
            anyhow::anyhow!(
                "--http-listen (JOBVISOR_HTTP_LISTEN) {:?} is not an address like \
                 127.0.0.1:8080, or off",
                self.http_listen
            )
        })
    }

    /// The `exec` executor, if enabled, with the commands resolved now.
    fn exec(&self) -> anyhow::Result<Option<ExecExecutor>> {
        if !self.allow_exec {
            for (set, flag) in [
                (
                    !self.exec_commands.is_empty(),
                    "--exec-commands (JOBVISOR_EXEC_COMMANDS)",
                ),
                (
                    !self.exec_allow_env.is_empty(),
                    "--exec-allow-env (JOBVISOR_EXEC_ALLOW_ENV)",
                ),
                (
                    self.exec_cwd_root.is_some(),
                    "--exec-cwd-root (JOBVISOR_EXEC_CWD_ROOT)",
                ),
            ] {
                if set {
                    anyhow::bail!("{flag} needs --allow-exec");
                }
            }
            return Ok(None);
        }
        let commands: Vec<String> = self
            .exec_commands
            .iter()
            .filter(|c| !c.trim().is_empty())
            .cloned()
            .collect();
        let settings = ExecSettings {
            commands: if commands.is_empty() {
                CommandPolicy::Any
            } else {
                CommandPolicy::Only(commands)
            },
            env_pass: self.exec_env_pass.clone(),
            allow_env: self.exec_allow_env.clone(),
            cwd_root: self.exec_cwd_root.clone(),
        };
        match ExecExecutor::new(&settings) {
            Ok(exec) => Ok(Some(exec)),
            Err(e @ ExecSetupError::Command { .. }) => {
                anyhow::bail!("--exec-commands (JOBVISOR_EXEC_COMMANDS): {e}")
            }
            Err(e @ ExecSetupError::CwdRoot { .. }) => {
                anyhow::bail!("--exec-cwd-root (JOBVISOR_EXEC_CWD_ROOT): {e}")
            }
        }
    }
}

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let telemetry = telemetry::init(args.log_format)?;
    let config = args.config()?;
    let mut registry = Registry::with_builtins();
    if let Some(exec) = args.exec()? {
        registry = registry.with_exec(exec);
    }
    if args.metrics_listen != "off" {
        let addr: SocketAddr = args.metrics_listen.parse().map_err(|_| {
            anyhow::anyhow!(
                "--metrics-listen (JOBVISOR_METRICS_LISTEN) {:?} is not an address like 0.0.0.0:9464, or off",
                args.metrics_listen
            )
        })?;
        telemetry::serve_metrics(addr)?;
        tracing::info!(%addr, "metrics at /metrics");
    }
    if telemetry.tracing_enabled() {
        tracing::info!("exporting traces over OTLP");
    }
    if let Some(tokens) = config.guard.tokens.clone() {
        tracing::info!(tokens = tokens.len(), "bearer tokens required");
        tokio::spawn(reload_on_sighup(tokens));
    }
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| {
            format!(
                "cannot listen on {} (--listen, JOBVISOR_LISTEN)",
                args.listen
            )
        })?;
    let http = match args.http_addr()? {
        Some(addr) => Some(tokio::net::TcpListener::bind(addr).await.with_context(|| {
            format!(
                "cannot listen on {addr} for the HTTP API (--http-listen, JOBVISOR_HTTP_LISTEN): \
                 give another address, or `off`"
            )
        })?),
        None => None,
    };
    let listeners = server::Listeners {
        grpc: listener,
        http,
    };
    let result = server::serve_listeners(config, registry, listeners, shutdown_signal()).await;
    telemetry.shutdown();
    result
}

/// Reloads the token file on every SIGHUP; a bad file keeps the old one.
async fn reload_on_sighup(tokens: Arc<Tokens>) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::error!("cannot listen for SIGHUP: the token file will not be reloaded");
        return;
    };
    while hup.recv().await.is_some() {
        match tokens.reload() {
            Ok(n) => tracing::info!(tokens = n, "token file reloaded"),
            Err(e) => tracing::error!(error = %e, "token file not reloaded; the old one stays"),
        }
    }
}

/// Resolves on SIGTERM or SIGINT.
pub(super) async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        serve: ServeArgs,
    }

    fn config(args: &[&str]) -> server::ServerConfig {
        let args = std::iter::once("serve").chain(args.iter().copied());
        Cli::try_parse_from(args).unwrap().serve.config().unwrap()
    }

    /// The README promises UNAVAILABLE within 3 s while the database is
    /// down: the wait for a connection is what takes that long.
    #[test]
    fn a_call_waits_at_most_3s_for_a_connection_by_default() {
        let database = config(&["--database-url", "postgres://localhost/x"]).database;
        assert_eq!(database.acquire_timeout, Duration::from_secs(3));
        let library = crate::store::postgres::PgConfig::new("postgres://localhost/x");
        assert_eq!(library.acquire_timeout, database.acquire_timeout);
    }

    fn refused(args: &[&str]) -> String {
        let args = std::iter::once("serve").chain(args.iter().copied());
        Cli::try_parse_from(args)
            .unwrap()
            .serve
            .config()
            .unwrap_err()
            .to_string()
    }

    /// The HTTP API is on loopback by default, `off` turns it off, and a
    /// non-loopback address in plaintext needs --insecure, as gRPC does.
    #[test]
    fn the_http_api_listens_on_loopback_unless_told_and_refuses_plaintext_elsewhere() {
        let args = |extra: &[&'static str]| {
            let args = std::iter::once("serve").chain(extra.iter().copied());
            Cli::try_parse_from(args).unwrap().serve
        };
        let default = args(&[]).http_addr().unwrap().unwrap();
        assert!(default.ip().is_loopback());
        assert_ne!(default.port(), 50051);
        assert_ne!(default.port(), 9464);
        assert_eq!(args(&["--http-listen", "off"]).http_addr().unwrap(), None);
        let plain = refused(&["--http-listen", "0.0.0.0:8080"]);
        assert!(
            plain.contains("--http-listen") && plain.contains("--insecure"),
            "{plain}"
        );
        config(&["--http-listen", "0.0.0.0:8080", "--insecure"]);
        config(&[
            "--http-listen",
            "0.0.0.0:8080",
            "--tls-cert",
            "server.pem",
            "--tls-key",
            "server.key",
        ]);
        let typo = refused(&["--http-listen", "localhost"]);
        assert!(typo.contains("is not an address"), "{typo}");
    }

    /// Where the other replicas borrow this one's workers: the flag, else
    /// the listen address unless it is unspecified.
    #[test]
    fn a_replica_advertises_the_listen_address_unless_told_or_unspecified() {
        let db = [
            "--database-url",
            "postgres://localhost/x",
            "--multi-replica",
        ];
        let advertised = |extra: &[&str]| {
            let args: Vec<&str> = db.iter().chain(extra).copied().collect();
            config(&args).cluster.unwrap().advertise
        };
        assert_eq!(
            advertised(&["--listen", "127.0.0.1:7000"]).as_deref(),
            Some("127.0.0.1:7000")
        );
        assert_eq!(
            advertised(&["--listen", "0.0.0.0:7000", "--insecure"]),
            None
        );
        assert_eq!(
            advertised(&[
                "--listen",
                "0.0.0.0:7000",
                "--insecure",
                "--advertise-address",
                "10.1.2.3:7000"
            ])
            .as_deref(),
            Some("10.1.2.3:7000")
        );
        let args: Vec<&str> = db
            .iter()
            .chain(&["--advertise-address", "10.1.2.3"])
            .copied()
            .collect();
        assert!(refused(&args).contains("is not a host:port"));
        let alone = refused(&[
            "--database-url",
            "postgres://localhost/x",
            "--advertise-address",
            "10.1.2.3:7000",
        ]);
        assert!(alone.contains("need --multi-replica"), "{alone}");
        let args: Vec<&str> = db
            .iter()
            .chain(&[
                "--tls-cert",
                "server.pem",
                "--tls-key",
                "server.key",
                "--advertise-address",
                "10.1.2.3:7000",
            ])
            .copied()
            .collect();
        assert!(refused(&args).contains("needs a plaintext gRPC port"));
        let args: Vec<&str> = db
            .iter()
            .chain(&["--tls-cert", "server.pem", "--tls-key", "server.key"])
            .copied()
            .collect();
        assert_eq!(
            config(&args).cluster.unwrap().advertise,
            None,
            "TLS: no lending"
        );
    }
}

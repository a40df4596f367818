//! `jobvisor serve`: configuration from flags and `JOBVISOR_*` variables,
//! logging, the listening socket, and SIGTERM/SIGINT wired to a graceful
//! shutdown.

use crate::{
    executor::{Registry, exec::CommandPolicy},
    server, telemetry,
};
use anyhow::Context;
use clap::Args;
use std::{net::SocketAddr, time::Duration};

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on for gRPC (JobService, health, reflection).
    #[arg(long, env = "JOBVISOR_LISTEN", default_value = "127.0.0.1:50051")]
    listen: SocketAddr,

    /// PostgreSQL connection URL, e.g. postgres://user@host:5432/db.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    database_url: String,

    /// Most connections to PostgreSQL.
    #[arg(long, env = "JOBVISOR_DB_MAX_CONNECTIONS", default_value_t = 16)]
    db_max_connections: u32,

    /// How long a call waits for a free database connection before failing
    /// with UNAVAILABLE.
    #[arg(long, env = "JOBVISOR_DB_ACQUIRE_TIMEOUT", default_value = "5s",
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

    /// Let each worker start its next item while its previous item's outcome
    /// commits (at most one outstanding). Faster for short items; after a
    /// crash, up to two items per worker run again instead of one.
    #[arg(long, env = "JOBVISOR_PIPELINED_ACKS")]
    pipelined_acks: bool,

    /// Enable the `exec` executor, which runs programs on this host for
    /// each item.
    #[arg(long, env = "JOBVISOR_ALLOW_EXEC")]
    allow_exec: bool,

    /// With --allow-exec: only these commands may be run (comma-separated,
    /// as written in the job's `command` param). Empty: any command.
    #[arg(long, env = "JOBVISOR_EXEC_COMMANDS", value_delimiter = ',')]
    exec_commands: Vec<String>,

    /// Where to serve Prometheus metrics (`http://ADDR/metrics`), or `off`.
    #[arg(
        long,
        env = "JOBVISOR_METRICS_LISTEN",
        default_value = "127.0.0.1:9464"
    )]
    metrics_listen: String,

    /// Log format: text (for a terminal) or json.
    #[arg(long, env = "JOBVISOR_LOG_FORMAT", default_value = "text")]
    log_format: telemetry::LogFormat,
}

impl ServeArgs {
    fn config(&self) -> anyhow::Result<server::ServerConfig> {
        let mut config = server::ServerConfig::new(&self.database_url);
        if self.db_max_connections == 0 {
            anyhow::bail!("--db-max-connections (JOBVISOR_DB_MAX_CONNECTIONS) must be at least 1");
        }
        if self.max_request_bytes < 1024 {
            anyhow::bail!("--max-request-bytes (JOBVISOR_MAX_REQUEST_BYTES) must be at least 1024");
        }
        if self.restart_window.is_zero() {
            anyhow::bail!("--restart-window (JOBVISOR_RESTART_WINDOW) must be longer than 0s");
        }
        config.database.max_connections = self.db_max_connections;
        config.database.acquire_timeout = self.db_acquire_timeout;
        config.shutdown_grace = self.shutdown_grace;
        config.max_request_bytes = self.max_request_bytes;
        config.engine.restart_budget = self.restart_budget;
        config.engine.restart_window = self.restart_window;
        config.engine.pipelined_acks = self.pipelined_acks;
        Ok(config)
    }
}

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let telemetry = telemetry::init(args.log_format)?;
    let config = args.config()?;
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
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| {
            format!(
                "cannot listen on {} (--listen, JOBVISOR_LISTEN)",
                args.listen
            )
        })?;
    let mut registry = Registry::with_builtins();
    if args.allow_exec {
        let policy = if args.exec_commands.is_empty() {
            CommandPolicy::Any
        } else {
            CommandPolicy::Only(args.exec_commands.clone())
        };
        registry = registry.with_exec(policy);
    } else if !args.exec_commands.is_empty() {
        anyhow::bail!("--exec-commands (JOBVISOR_EXEC_COMMANDS) needs --allow-exec");
    }
    let result = server::serve(config, registry, listener, shutdown_signal()).await;
    telemetry.shutdown();
    result
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
}

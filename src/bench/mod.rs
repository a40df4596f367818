//! `jobvisor bench`: the performance scenarios of the benchmark suite,
//! each against a fresh database and a real server process (so its memory
//! is its own), printing a table row and a JSON line per scenario.
//!
//! The scenarios are in [`scenarios`]; this module holds what they share:
//! the environment (server, database, client) and the figures.

pub mod scenarios;

use crate::{
    chaos::{
        self,
        process::{ServerProcess, ServerSpec, free_port},
    },
    pb::{self, job_service_client::JobServiceClient},
};
use anyhow::Context as _;
use serde::Serialize;
use sqlx::{Connection, Executor, PgConnection};
use std::{
    net::SocketAddr,
    path::PathBuf,
    time::{Duration, Instant},
};
use tonic::transport::Channel;

/// One server on one fresh database, for one scenario run.
pub struct Env {
    pub server: ServerProcess,
    pub spec: ServerSpec,
    admin_url: String,
    database: String,
    _dir: tempfile::TempDir,
}

impl Env {
    /// Creates a database on `admin_url` and starts `binary serve` on it.
    pub async fn start(
        binary: &std::path::Path,
        admin_url: &str,
        args: &[&str],
    ) -> anyhow::Result<Env> {
        let database = format!(
            "jv_bench_{}",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        );
        let mut admin = PgConnection::connect(admin_url)
            .await
            .with_context(|| "cannot reach PostgreSQL (--database-url / DATABASE_URL)")?;
        admin
            .execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {database}")))
            .await?;
        let dir = tempfile::Builder::new().prefix("jv-bench-").tempdir()?;
        let spec = ServerSpec {
            binary: binary.to_path_buf(),
            addr: SocketAddr::from(([127, 0, 0, 1], free_port()?)),
            database_url: chaos::with_database(admin_url, &database),
            args: args.iter().map(|a| a.to_string()).collect(),
            log: dir.path().join("server.log"),
            env: vec![],
            cwd: None,
        };
        let server = ServerProcess::start(&spec).await?;
        Ok(Env {
            server,
            spec,
            admin_url: admin_url.to_string(),
            database,
            _dir: dir,
        })
    }

    pub async fn client(&self) -> anyhow::Result<JobServiceClient<Channel>> {
        let channel =
            tonic::transport::Endpoint::from_shared(format!("http://{}", self.spec.addr))?
                .connect()
                .await?;
        Ok(JobServiceClient::new(channel).max_decoding_message_size(256 * 1024 * 1024))
    }

    /// Peak and current resident memory of the server, in MiB.
    pub fn rss_mib(&self) -> (f64, f64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.server.pid()))
            .unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
                .map(|kb| kb / 1024.0)
                .unwrap_or(0.0)
        };
        (field("VmHWM:"), field("VmRSS:"))
    }

    /// Stops the server and drops the database.
    pub async fn finish(mut self) {
        let _ = self.server.terminate(Duration::from_secs(15)).await;
        if let Ok(mut admin) = PgConnection::connect(&self.admin_url).await {
            let _ = admin
                .execute(sqlx::AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                    self.database
                )))
                .await;
        }
    }
}

/// Starts a job of `items` sleep items and returns it with the time the
/// call took.
pub async fn start_sleep_job(
    client: &mut JobServiceClient<Channel>,
    name: &str,
    items: u32,
    concurrency: u32,
    duration_ms: u32,
    steps: u32,
) -> anyhow::Result<(pb::Job, Duration)> {
    let request = pb::StartJobRequest {
        name: name.into(),
        executor: "sleep".into(),
        items: (0..items).map(|i| format!("item-{i}")).collect(),
        concurrency,
        params: [
            ("duration_ms".to_string(), duration_ms.to_string()),
            ("steps".into(), steps.to_string()),
        ]
        .into(),
        ..Default::default()
    };
    let started = Instant::now();
    let job = client.start_job(request).await?.into_inner();
    Ok((job, started.elapsed()))
}

/// Waits for the job's terminal event on a watch stream.
pub async fn wait_done(
    client: &mut JobServiceClient<Channel>,
    id: &str,
    timeout: Duration,
) -> anyhow::Result<pb::Job> {
    let mut stream = client
        .watch_job(pb::WatchJobRequest {
            job_id: id.into(),
            from_sequence: 0,
        })
        .await?
        .into_inner();
    tokio::time::timeout(timeout, async {
        while let Some(event) = stream.message().await? {
            if let Some(pb::job_event::Kind::StateChanged(c)) = &event.kind
                && matches!(
                    pb::JobState::try_from(c.to),
                    Ok(pb::JobState::Succeeded | pb::JobState::Failed | pb::JobState::Cancelled)
                )
            {
                break;
            }
        }
        anyhow::Ok(())
    })
    .await
    .context("the job did not end in time")??;
    Ok(client
        .get_job(pb::GetJobRequest { job_id: id.into() })
        .await?
        .into_inner())
}

/// p-th percentile (0–100) of `samples`, in milliseconds.
pub fn percentile_ms(samples: &[Duration], p: f64) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    let mut ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
    ms.sort_by(|a, b| a.total_cmp(b));
    let rank = ((p / 100.0) * (ms.len() - 1) as f64).round() as usize;
    ms[rank.min(ms.len() - 1)]
}

/// The median of some values.
pub fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() { 0.0 } else { v[v.len() / 2] }
}

/// The machine and database a run happened on, printed with the results.
#[derive(Debug, Clone, Serialize)]
pub struct Context {
    pub cores: usize,
    pub postgres: String,
    pub settings: Vec<(String, String)>,
}

impl Context {
    pub async fn read(admin_url: &str) -> anyhow::Result<Context> {
        let mut db = PgConnection::connect(admin_url).await?;
        let postgres: String = sqlx::query_scalar("SHOW server_version")
            .fetch_one(&mut db)
            .await?;
        let mut settings = Vec::new();
        for name in [
            "fsync",
            "synchronous_commit",
            "full_page_writes",
            "wal_sync_method",
            "shared_buffers",
            "max_connections",
        ] {
            let value: String = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SHOW {name}")))
                .fetch_one(&mut db)
                .await?;
            settings.push((name.to_string(), value));
        }
        Ok(Context {
            cores: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            postgres,
            settings,
        })
    }
}

/// Where the `jobvisor` binary to benchmark is: this one.
pub fn this_binary() -> anyhow::Result<PathBuf> {
    Ok(std::env::current_exe()?)
}

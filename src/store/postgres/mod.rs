//! [`Store`] on PostgreSQL through sqlx: connection, migrations (embedded
//! in the binary), error classification and the read paths. Writes live in
//! [`jobs`] (one transaction per job-level change) and [`batch`] (group
//! commit of item writes and claims).

mod batch;
pub mod code;
mod jobs;
mod leases;
mod rows;
pub mod runner_lock;

use super::{ItemQuery, JobQuery, Page, Store, StoreError};
use crate::domain::{
    Item, Job, JobEvent, JobId,
    page::{ItemCursor, JobCursor},
};
use async_trait::async_trait;
use sqlx::{
    ConnectOptions, PgPool,
    postgres::{PgConnectOptions, PgPoolOptions},
};
use std::{str::FromStr, time::Duration};

/// How the server connects to PostgreSQL.
#[derive(Clone)]
pub struct PgConfig {
    pub url: String,
    /// Most connections the pool opens.
    pub max_connections: u32,
    /// How long a call waits for a free connection before failing with
    /// UNAVAILABLE.
    pub acquire_timeout: Duration,
    /// Connections reserved for the group committer (item results and
    /// claims), so a flood of API calls cannot starve the jobs.
    pub writer_connections: u32,
    /// Several replicas share the database: committed job changes are
    /// announced with NOTIFY (multi-replica mode).
    pub announce_changes: bool,
    /// The `application_name` of every session: names this server in
    /// `pg_stat_activity` (see [`runner_lock::application_name`]).
    pub application_name: String,
}

/// The URL with its password replaced, for anything that prints it.
pub fn redacted(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let credentials = &url[scheme + 3..at];
            match credentials.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

impl std::fmt::Debug for PgConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgConfig")
            .field("url", &redacted(&self.url))
            .field("max_connections", &self.max_connections)
            .field("acquire_timeout", &self.acquire_timeout)
            .field("writer_connections", &self.writer_connections)
            .field("announce_changes", &self.announce_changes)
            .field("application_name", &self.application_name)
            .finish()
    }
}

impl PgConfig {
    pub fn new(url: impl Into<String>) -> Self {
        PgConfig {
            url: url.into(),
            max_connections: 16,
            acquire_timeout: Duration::from_secs(3),
            writer_connections: 2,
            announce_changes: false,
            application_name: "jobvisor".into(),
        }
    }
}

/// The PostgreSQL store.
#[derive(Clone, Debug)]
pub struct PgStore {
    pool: PgPool,
    /// The group committer's own connections.
    writer: PgPool,
}

impl PgStore {
    /// Connects (without waiting for the database to be up) and applies the
    /// embedded migrations. Migrations take a PostgreSQL advisory lock, so
    /// several servers starting at once apply them once.
    pub async fn connect(config: &PgConfig) -> Result<PgStore, StoreError> {
        let mut options = connect_options(config)?;
        if config.announce_changes {
            // Read by the jobs_changed trigger (migrations/postgres/0005).
            options = options.options([("jobvisor.notify", "on")]);
        }
        let pool = pool_options(config.max_connections, config.acquire_timeout)
            .connect_lazy_with(options.clone());
        let writer = pool_options(config.writer_connections.max(1), config.acquire_timeout)
            .connect_lazy_with(options);
        let store = PgStore { pool, writer };
        store.migrate().await?;
        Ok(store)
    }

    /// Wraps an existing pool (tests, embedding), shared by the API and
    /// the group committer. Does not migrate.
    pub fn from_pool(pool: PgPool) -> PgStore {
        PgStore {
            writer: pool.clone(),
            pool,
        }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Applies the migrations and then the functions kept as code
    /// ([`code`]), on one connection holding [`SCHEMA_LOCK`]: several
    /// servers starting at once do both once, in order.
    async fn migrate(&self) -> Result<(), StoreError> {
        let mut conn = self.pool.acquire().await.map_err(db_error)?;
        sqlx::query("SELECT pg_advisory_lock($1)")
            .bind(SCHEMA_LOCK)
            .execute(&mut *conn)
            .await
            .map_err(db_error)?;
        let result = migrate_locked(&mut conn).await;
        let unlocked = sqlx::query("SELECT pg_advisory_unlock($1)")
            .bind(SCHEMA_LOCK)
            .execute(&mut *conn)
            .await;
        if unlocked.is_err() {
            // The session is gone, and its lock with it; do not hand the
            // connection back to the pool in an unknown state.
            conn.detach();
        }
        result
    }
}

/// The advisory lock held while the schema and the functions change:
/// "jobv_sch" with the low bit set, so it is odd and never sqlx's own
/// migration lock (0x3d32ad9e times a CRC, always even).
pub const SCHEMA_LOCK: i64 = 0x6a6f_6276_5f73_6369;

/// The migrations, then the functions. The caller holds [`SCHEMA_LOCK`].
async fn migrate_locked(conn: &mut sqlx::PgConnection) -> Result<(), StoreError> {
    // `run_direct` on the connection itself: `run(&mut *conn)` goes through
    // `Acquire`, whose lifetime the compiler then cannot prove general
    // enough for the server's start-up future to be `Send`.
    sqlx::migrate!("migrations/postgres")
        .run_direct(None, &mut *conn, false)
        .await
        .map_err(|e| match e {
            sqlx::migrate::MigrateError::Execute(e) => db_error(e),
            other => StoreError::Internal(format!("migration failed: {other}")),
        })?;
    match code::apply(conn).await.map_err(db_error)? {
        code::Applied::Current => {}
        code::Applied::Updated { from } => {
            tracing::info!(?from, to = code::VERSION, "database functions updated")
        }
        code::Applied::Newer { held } => tracing::warn!(
            held,
            ours = code::VERSION,
            "the database holds a newer server's functions: left as they are"
        ),
    }
    Ok(())
}

/// The options of every connection of `config`.
fn connect_options(config: &PgConfig) -> Result<PgConnectOptions, StoreError> {
    Ok(PgConnectOptions::from_str(&config.url)
        .map_err(|e| StoreError::Internal(format!("invalid database URL: {}", redact(&e))))?
        .application_name(&config.application_name)
        .log_statements(tracing::log::LevelFilter::Trace)
        .log_slow_statements(tracing::log::LevelFilter::Warn, Duration::from_secs(1)))
}

/// Whether a failed sqlx call may succeed later. Connection loss, pool
/// exhaustion, an administrator terminating the session and the server
/// starting up or shutting down are transient; everything else is a bug.
/// A connection that was idle for longer than this is checked (a round
/// trip) before it is handed out.
const CHECK_IDLE_AFTER: Duration = Duration::from_secs(1);

/// The options of both pools. sqlx checks every idle connection with a
/// round trip before handing it out; the group committer takes one for
/// every batch, and that check was a sixth of a batch's time (the
/// throughput bench went from 42,000–43,000 to 48,000–49,000 items/s
/// without it). Only connections idle for a while are checked now: those
/// are the ones a database restart has cut. A busy connection that died
/// fails its statement as unavailable (the committer retries the batch,
/// an API call returns UNAVAILABLE) and is dropped from the pool.
fn pool_options(max_connections: u32, acquire_timeout: Duration) -> PgPoolOptions {
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(acquire_timeout)
        .test_before_acquire(false)
        .before_acquire(|conn, meta| {
            Box::pin(async move {
                if meta.idle_for > CHECK_IDLE_AFTER {
                    sqlx::Connection::ping(conn).await?;
                }
                Ok(true)
            })
        })
}

pub(crate) fn db_error(e: sqlx::Error) -> StoreError {
    use sqlx::Error as E;
    match &e {
        E::Io(_) | E::Tls(_) | E::PoolTimedOut | E::PoolClosed | E::WorkerCrashed => {
            StoreError::Unavailable(e.to_string())
        }
        E::Protocol(_) => StoreError::Unavailable(e.to_string()),
        E::Database(db) => {
            let code = db.code().unwrap_or_default();
            // 08: connection exception; 57P0x: admin shutdown, crash
            // shutdown, cannot connect now; 53300: too many connections;
            // 40001/40P01: serialization failure, deadlock (retry).
            if code.starts_with("08")
                || code.starts_with("57P")
                || code == "53300"
                || code == "40001"
                || code == "40P01"
            {
                StoreError::Unavailable(format!("{} ({code})", db.message()))
            } else {
                StoreError::Internal(format!("{} ({code})", db.message()))
            }
        }
        _ => StoreError::Internal(e.to_string()),
    }
}

/// An error about a connection string, without the password it may hold.
fn redact(e: &sqlx::Error) -> String {
    let text = e.to_string();
    match text.find("://") {
        Some(_) => "could not parse the connection string".to_string(),
        None => text,
    }
}

#[async_trait]
impl Store for PgStore {
    async fn create_job(
        &self,
        id: JobId,
        spec: &crate::domain::JobSpec,
    ) -> Result<super::Created, StoreError> {
        jobs::create_job(&self.pool, id, spec).await
    }

    async fn get_job(&self, id: JobId) -> Result<Job, StoreError> {
        let mut conn = self.pool.acquire().await.map_err(db_error)?;
        rows::fetch_job(&mut conn, id)
            .await?
            .ok_or(StoreError::NotFound(id))
    }

    async fn list_jobs(&self, q: &JobQuery) -> Result<Page<Job, JobCursor>, StoreError> {
        rows::list_jobs(&self.pool, q).await
    }

    async fn list_items(&self, q: &ItemQuery) -> Result<Page<Item, ItemCursor>, StoreError> {
        rows::list_items(&self.pool, q).await
    }

    async fn transition(
        &self,
        id: JobId,
        write: &super::TransitionWrite,
    ) -> Result<Job, StoreError> {
        jobs::transition_fenced(&self.pool, id, write, None).await
    }

    async fn add_items(
        &self,
        id: JobId,
        page: &crate::domain::ItemPage,
        max_items: u64,
        requested_by: Option<&str>,
    ) -> Result<super::Added, StoreError> {
        jobs::add_items(&self.pool, id, page, max_items, requested_by).await
    }

    async fn cancel_items(
        &self,
        id: JobId,
        which: &crate::domain::ItemSelection,
        reason: Option<&str>,
        requested_by: Option<&str>,
    ) -> Result<super::ItemsCancelled, StoreError> {
        jobs::cancel_items(&self.pool, id, which, reason, requested_by).await
    }

    async fn set_concurrency(
        &self,
        id: JobId,
        concurrency: u32,
        provenance: &crate::domain::Provenance,
    ) -> Result<Job, StoreError> {
        jobs::set_concurrency(&self.pool, id, concurrency, provenance).await
    }

    async fn set_rate_limit(
        &self,
        id: JobId,
        rate: crate::domain::RateLimit,
        provenance: &crate::domain::Provenance,
    ) -> Result<Job, StoreError> {
        jobs::set_rate_limit(&self.pool, id, rate, provenance).await
    }

    async fn delete_job(&self, id: JobId) -> Result<Job, StoreError> {
        jobs::delete_job(&self.pool, id).await
    }

    async fn delete_ended(
        &self,
        before: chrono::DateTime<chrono::Utc>,
        limits: super::PruneLimits,
    ) -> Result<super::Pruned, StoreError> {
        jobs::delete_ended(&self.pool, before, limits).await
    }

    async fn reclaim(&self) -> Result<(), StoreError> {
        jobs::reclaim(&self.pool).await
    }

    async fn due_resumes(
        &self,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<Vec<JobId>, StoreError> {
        jobs::due_resumes(&self.pool, now).await
    }

    async fn append_event(
        &self,
        id: JobId,
        body: &crate::domain::EventBody,
    ) -> Result<u64, StoreError> {
        jobs::append_event(&self.pool, id, body).await
    }

    async fn events_after(
        &self,
        id: JobId,
        after: u64,
        limit: u32,
    ) -> Result<Vec<JobEvent>, StoreError> {
        rows::events_after(&self.pool, id, after, limit).await
    }

    async fn write_batch(&self, batch: &super::Batch) -> Result<super::BatchOutcome, StoreError> {
        batch::write_batch(&self.writer, batch).await
    }

    async fn recover(&self) -> Result<super::Recovery, StoreError> {
        jobs::recover(&self.pool).await
    }

    async fn release_items(&self, id: JobId) -> Result<u64, StoreError> {
        jobs::release_items(&self.pool, id, None).await
    }

    async fn waiting_retries(
        &self,
        id: JobId,
        limit: u32,
    ) -> Result<Vec<(u32, std::time::Duration)>, StoreError> {
        rows::waiting_retries(&self.pool, id, limit).await
    }

    async fn write_batch_fenced(
        &self,
        batch: &super::Batch,
        fence: &super::BatchFence,
    ) -> Result<super::BatchOutcome, StoreError> {
        batch::write_batch_fenced(&self.writer, batch, fence).await
    }

    async fn transition_fenced(
        &self,
        id: JobId,
        write: &super::TransitionWrite,
        lease: &super::Lease,
    ) -> Result<Job, StoreError> {
        jobs::transition_fenced(&self.pool, id, write, Some(lease)).await
    }

    async fn release_items_fenced(
        &self,
        id: JobId,
        lease: &super::Lease,
    ) -> Result<u64, StoreError> {
        jobs::release_items(&self.pool, id, Some(lease)).await
    }

    fn pool_stats(&self) -> Option<(usize, usize)> {
        let size = self.pool.size() as usize + self.writer.size() as usize;
        let idle = self.pool.num_idle() + self.writer.num_idle();
        Some((idle, size.saturating_sub(idle)))
    }

    async fn live_job_counts(&self) -> Result<Vec<(crate::domain::JobState, u64)>, StoreError> {
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT state, count(*) FROM jobs \
             WHERE state IN ('running', 'pausing', 'paused', 'cancelling') GROUP BY state",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(db_error)?;
        let mut counts: Vec<(crate::domain::JobState, u64)> = [
            crate::domain::JobState::Running,
            crate::domain::JobState::Pausing,
            crate::domain::JobState::Paused,
            crate::domain::JobState::Cancelling,
        ]
        .into_iter()
        .map(|s| (s, 0))
        .collect();
        for (state, n) in rows {
            if let Some(entry) = counts.iter_mut().find(|(s, _)| s.as_str() == state) {
                entry.1 = n.max(0) as u64;
            }
        }
        Ok(counts)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map(|_| ())
            .map_err(db_error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redacted("postgres://app:hunter2@db:5432/jobs"),
            "postgres://app:***@db:5432/jobs"
        );
        assert_eq!(redacted("postgres://app@db/jobs"), "postgres://app@db/jobs");
        let config = PgConfig::new("postgres://app:hunter2@db/jobs");
        assert!(!format!("{config:?}").contains("hunter2"));
    }
}

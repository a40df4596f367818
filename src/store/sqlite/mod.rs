//! [`Store`] on an embedded SQLite file through sqlx: opening the file
//! (durability settings, migrations embedded in the binary), error
//! classification and the dispatch of each trait method. Reads live in
//! [`reads`], job-level writes in [`jobs`], group commit in [`batch`],
//! crash takeover in [`recovery`], and the column representations in
//! [`codec`].
//!
//! Concurrency: SQLite has one writer at a time. Writes go through a pool
//! of one connection, so they queue in this process instead of spinning
//! on SQLite's busy handler, and every write transaction starts with
//! `BEGIN IMMEDIATE`: it takes the write lock up front, so two writers
//! (another process on the same file included) never deadlock on a lock
//! upgrade. Reads use their own pool and, in WAL mode, never wait for the
//! writer.

mod batch;
mod codec;
pub mod dir_lock;
mod jobs;
mod reads;
mod recovery;

use super::{
    Batch, BatchOutcome, Created, ItemQuery, JobQuery, Page, Recovery, Store, StoreError,
    TransitionWrite,
};
use crate::domain::{
    EventBody, Item, Job, JobEvent, JobId, JobSpec,
    page::{ItemCursor, JobCursor},
};
use async_trait::async_trait;
use sqlx::{
    ConnectOptions, Sqlite, SqlitePool, Transaction,
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous},
};
use std::{path::Path, time::Duration};

/// How long a statement waits for a lock held by another connection (a
/// reader finishing a WAL checkpoint, another process) before SQLITE_BUSY.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a call waits for a connection before failing with
/// UNAVAILABLE. Writes queue for the single writer connection, so this is
/// the longest a write may wait behind the others.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections for reads; WAL lets them run beside the writer.
const READ_CONNECTIONS: u32 = 8;

/// The embedded SQLite store: one file, no server.
#[derive(Clone, Debug)]
pub struct SqliteStore {
    /// Reads: several connections, each read sees a committed snapshot.
    read: SqlitePool,
    /// Writes: one connection, so write transactions queue here in order.
    write: SqlitePool,
}

impl SqliteStore {
    /// Opens the database at `path`, creating the file (and its parent
    /// directory) when missing, and applies the embedded migrations.
    ///
    /// Durability is the product: WAL journal with `synchronous = FULL`
    /// syncs the log on every commit, so a committed write survives a power
    /// cut, not only a process crash.
    pub async fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            tokio::fs::create_dir_all(parent).await.map_err(|e| {
                StoreError::Unavailable(format!("cannot create {}: {e}", parent.display()))
            })?;
        }
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(BUSY_TIMEOUT)
            .foreign_keys(true)
            .log_statements(tracing::log::LevelFilter::Trace)
            .log_slow_statements(tracing::log::LevelFilter::Warn, Duration::from_secs(1));
        // The writer connects first and alone: it creates the file and
        // switches it to WAL before any reader opens it.
        let write = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(options.clone())
            .await
            .map_err(db_error)?;
        let read = SqlitePoolOptions::new()
            .max_connections(READ_CONNECTIONS)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_lazy_with(options);
        sqlx::migrate!("migrations/sqlite")
            .run(&write)
            .await
            .map_err(|e| match e {
                sqlx::migrate::MigrateError::Execute(e) => db_error(e),
                other => StoreError::Internal(format!("migration failed: {other}")),
            })?;
        Ok(SqliteStore { read, write })
    }

    /// Closes both pools, waiting for connections in use to be returned
    /// (the WAL is checkpointed when the last connection closes).
    pub async fn close(&self) {
        self.read.close().await;
        self.write.close().await;
    }
}

/// Starts a write transaction holding the database's write lock.
pub(super) async fn begin_write(
    pool: &SqlitePool,
) -> Result<Transaction<'static, Sqlite>, StoreError> {
    pool.begin_with("BEGIN IMMEDIATE").await.map_err(db_error)
}

/// Whether a failed sqlx call may succeed later. A lock held too long by
/// someone else, an I/O error (disk gone, disk full) and an exhausted or
/// closed pool are transient; everything else is a bug or corrupt data.
pub(crate) fn db_error(e: sqlx::Error) -> StoreError {
    use sqlx::Error as E;
    match &e {
        E::Io(_) | E::PoolTimedOut | E::PoolClosed | E::WorkerCrashed => {
            StoreError::Unavailable(e.to_string())
        }
        E::Database(db) => {
            let code = db.code().and_then(|c| c.parse::<i32>().ok()).unwrap_or(0);
            // The primary result code is the low byte of the extended one.
            // 5 BUSY, 6 LOCKED, 10 IOERR, 13 FULL, 14 CANTOPEN, 15 PROTOCOL
            // (a WAL lock race): retrying later may succeed.
            if matches!(code & 0xff, 5 | 6 | 10 | 13 | 14 | 15) {
                StoreError::Unavailable(format!("{} (sqlite {code})", db.message()))
            } else {
                StoreError::Internal(format!("{} (sqlite {code})", db.message()))
            }
        }
        _ => StoreError::Internal(e.to_string()),
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn create_job(&self, id: JobId, spec: &JobSpec) -> Result<Created, StoreError> {
        jobs::create_job(&self.write, id, spec).await
    }

    async fn get_job(&self, id: JobId) -> Result<Job, StoreError> {
        reads::get_job(&self.read, id).await
    }

    async fn list_jobs(&self, q: &JobQuery) -> Result<Page<Job, JobCursor>, StoreError> {
        reads::list_jobs(&self.read, q).await
    }

    async fn list_items(&self, q: &ItemQuery) -> Result<Page<Item, ItemCursor>, StoreError> {
        reads::list_items(&self.read, q).await
    }

    async fn transition(&self, id: JobId, write: &TransitionWrite) -> Result<Job, StoreError> {
        jobs::transition(&self.write, id, write).await
    }

    async fn add_items(
        &self,
        id: JobId,
        page: &crate::domain::ItemPage,
        max_items: u64,
        requested_by: Option<&str>,
    ) -> Result<crate::store::Added, StoreError> {
        jobs::add_items(&self.write, id, page, max_items, requested_by).await
    }

    async fn cancel_items(
        &self,
        id: JobId,
        which: &crate::domain::ItemSelection,
        reason: Option<&str>,
        requested_by: Option<&str>,
    ) -> Result<crate::store::ItemsCancelled, StoreError> {
        jobs::cancel_items(&self.write, id, which, reason, requested_by).await
    }

    async fn set_concurrency(
        &self,
        id: JobId,
        concurrency: u32,
        provenance: &crate::domain::Provenance,
    ) -> Result<Job, StoreError> {
        jobs::set_concurrency(&self.write, id, concurrency, provenance).await
    }

    async fn set_rate_limit(
        &self,
        id: JobId,
        rate: crate::domain::RateLimit,
        provenance: &crate::domain::Provenance,
    ) -> Result<Job, StoreError> {
        jobs::set_rate_limit(&self.write, id, rate, provenance).await
    }

    async fn delete_job(&self, id: JobId) -> Result<Job, StoreError> {
        jobs::delete_job(&self.write, id).await
    }

    async fn delete_ended(
        &self,
        before: chrono::DateTime<chrono::Utc>,
        limits: super::PruneLimits,
    ) -> Result<super::Pruned, StoreError> {
        jobs::delete_ended(&self.write, before, limits).await
    }

    /// Nothing to do: a page freed by a delete goes to SQLite's free list
    /// at once and the next inserts take it.
    async fn reclaim(&self) -> Result<(), StoreError> {
        Ok(())
    }

    async fn due_resumes(
        &self,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<Vec<JobId>, StoreError> {
        jobs::due_resumes(&self.read, now).await
    }

    async fn append_event(&self, id: JobId, body: &EventBody) -> Result<u64, StoreError> {
        jobs::append_event(&self.write, id, body).await
    }

    async fn events_after(
        &self,
        id: JobId,
        after: u64,
        limit: u32,
    ) -> Result<Vec<JobEvent>, StoreError> {
        reads::events_after(&self.read, id, after, limit).await
    }

    async fn write_batch(&self, batch: &Batch) -> Result<BatchOutcome, StoreError> {
        batch::write_batch(&self.write, batch).await
    }

    async fn recover(&self) -> Result<Recovery, StoreError> {
        recovery::recover(&self.write).await
    }

    async fn release_items(&self, id: JobId) -> Result<u64, StoreError> {
        recovery::release_items(&self.write, id).await
    }

    async fn waiting_retries(
        &self,
        id: JobId,
        limit: u32,
    ) -> Result<Vec<(u32, std::time::Duration)>, StoreError> {
        reads::waiting_retries(&self.read, id, limit).await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1")
            .execute(&self.read)
            .await
            .map(|_| ())
            .map_err(db_error)
    }
}

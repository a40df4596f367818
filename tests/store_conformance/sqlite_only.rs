//! What only the SQLite store has: a file of its own. Opening creates it
//! (and its directory) in WAL mode, and what was committed is there after
//! the store is closed and opened again.

use crate::harness::{claim, create, get, items, spec};
use jobvisor::store::{Store, sqlite::SqliteStore};
use sqlx::{Connection, SqliteConnection, sqlite::SqliteConnectOptions};
use std::sync::Arc;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_open_creates_the_file_and_keeps_what_was_committed() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("a").join("b").join("jobvisor.db");
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&path).await.expect("open"));
    assert!(path.is_file(), "open creates the file and its directories");
    let job = create(&store, &spec(3)).await;
    let claimed = claim(&store, job.id, 2).await;
    let before = (get(&store, job.id).await, items(&store, job.id).await);
    drop(store);

    // Opening again applies no migration twice and finds every commit.
    let reopened = SqliteStore::open(&path).await.expect("reopen");
    let store: Arc<dyn Store> = Arc::new(reopened.clone());
    assert_eq!(
        (get(&store, job.id).await, items(&store, job.id).await),
        before
    );
    assert_eq!(claimed.len(), 2);
    reopened.close().await;

    let mut conn = SqliteConnection::connect_with(&SqliteConnectOptions::new().filename(&path))
        .await
        .expect("inspect the file");
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(&mut conn)
        .await
        .expect("journal mode");
    assert_eq!(mode, "wal");
}

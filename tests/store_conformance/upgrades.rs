//! Upgrades: a database written before a migration that rebuilds or
//! re-keys a table keeps everything it held, on both stores. Each test
//! migrates a fresh database to the version before, writes rows as that
//! schema had them, and opens the store, which applies the rest.

use crate::harness::{create, get, items, spec};
use jobvisor::store::{
    Store,
    postgres::{PgConfig, PgStore},
    sqlite::SqliteStore,
};
use sqlx::{Connection, SqliteConnection, sqlite::SqliteConnectOptions};
use std::{path::Path, sync::Arc};

/// The migrations in `dir` before `version`.
async fn migrations_before(dir: &str, version: i64) -> sqlx::migrate::Migrator {
    let mut migrator = sqlx::migrate::Migrator::new(Path::new(dir))
        .await
        .expect("read the migrations");
    migrator.migrations = migrator
        .migrations
        .iter()
        .filter(|m| m.version < version)
        .cloned()
        .collect();
    migrator
}

/// Migration 0016 (a request id is unique within a scope) on a database
/// written before it: every job, item and event is kept, and a retry of a
/// request made before finds its job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_upgrade_to_scoped_request_ids_keeps_everything() {
    crate::harness::on_empty_database(|url| async move {
        let pool = sqlx::PgPool::connect(&url).await.expect("connect");
        let before = migrations_before("migrations/postgres", 16).await;
        before.run(&pool).await.expect("migrate to 0014");
        let mut keyed = spec(2);
        keyed.request_id = Some("nightly".into());
        let id = uuid::Uuid::new_v4();
        sqlx::query(
            "INSERT INTO jobs (id, name, executor, state, concurrency, max_attempts, params, \
             labels, request_id, request_fingerprint, total_items, last_seq, created_at, \
             started_at, updated_at, policy) \
             VALUES ($1, $2, $3, 'running', 2, 3, '{}', '{}', 'nightly', $4, 2, 1, now(), now(), \
             now(), '{}')",
        )
        .bind(id)
        .bind(&keyed.name)
        .bind(&keyed.executor)
        .bind(keyed.fingerprint())
        .execute(&pool)
        .await
        .expect("a job");
        sqlx::query(
            "INSERT INTO items (job_id, idx, payload) VALUES ($1, 0, 'item-0'), ($1, 1, 'item-1')",
        )
        .bind(id)
        .execute(&pool)
        .await
        .expect("its items");
        pool.close().await;

        let pg = PgStore::connect(&PgConfig::new(url))
            .await
            .expect("connect applies 0016");
        let store: Arc<dyn Store> = Arc::new(pg);
        let job = store
            .get_job(jobvisor::domain::JobId(id))
            .await
            .expect("the job is kept");
        assert_eq!(job.request_id.as_deref(), Some("nightly"));
        assert_eq!(items(&store, job.id).await.len(), 2);
        let retry = store
            .create_job(jobvisor::domain::JobId::new(), &keyed)
            .await
            .expect("a retry");
        assert!(!retry.created);
        assert_eq!(retry.job.id, job.id);
        let mut scoped = keyed.clone();
        scoped.request_scope = r#"{"team":"video"}"#.into();
        let other = create(&store, &scoped).await;
        assert_ne!(other.id, job.id);
    })
    .await;
}

/// Migration 0016 rebuilds the jobs table (a request id is unique within
/// a scope): a file written before it keeps every job with its items,
/// events and pauses, and a retry of a request made before finds its job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_upgrade_to_scoped_request_ids_keeps_everything() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("jobvisor.db");
    let options = SqliteConnectOptions::new()
        .filename(&path)
        .create_if_missing(true)
        .foreign_keys(true);
    let mut conn = SqliteConnection::connect_with(&options)
        .await
        .expect("create the file");
    // The file as the server before 0016 left it.
    let before = migrations_before("migrations/sqlite", 16).await;
    before.run(&mut conn).await.expect("migrate to 0004");
    let mut keyed = spec(2);
    keyed.request_id = Some("nightly".into());
    let id = uuid::Uuid::new_v4();
    sqlx::query(
        "INSERT INTO jobs (id, name, executor, state, concurrency, max_attempts, params, labels, \
         request_id, request_fingerprint, total_items, last_seq, created_at, started_at, \
         updated_at, policy) \
         VALUES (?1, ?2, ?3, 'paused', 2, 3, '{}', '{}', 'nightly', ?4, 2, 1, 1, 1, 1, '{}')",
    )
    .bind(id)
    .bind(&keyed.name)
    .bind(&keyed.executor)
    .bind(keyed.fingerprint())
    .execute(&mut conn)
    .await
    .expect("a job");
    for idx in 0..2 {
        sqlx::query("INSERT INTO items (job_id, idx, payload) VALUES (?1, ?2, ?3)")
            .bind(id)
            .bind(idx)
            .bind(format!("item-{idx}"))
            .execute(&mut conn)
            .await
            .expect("an item");
    }
    sqlx::query(
        "INSERT INTO job_events (job_id, seq, at, kind, body) VALUES (?1, 1, 1, 'state_changed', \
         '{\"type\":\"state_changed\",\"from\":null,\"to\":\"paused\"}')",
    )
    .bind(id)
    .execute(&mut conn)
    .await
    .expect("an event");
    sqlx::query(
        "INSERT INTO job_pauses (job_id, n, mode, requested_at, paused_at) \
         VALUES (?1, 1, 'graceful', 1, 1)",
    )
    .bind(id)
    .execute(&mut conn)
    .await
    .expect("a pause");
    conn.close().await.expect("close");

    let opened = SqliteStore::open(&path).await.expect("open applies 0016");
    let store: Arc<dyn Store> = Arc::new(opened.clone());
    let job = get(&store, jobvisor::domain::JobId(id)).await;
    assert_eq!(job.request_id.as_deref(), Some("nightly"));
    assert_eq!(job.pauses.len(), 1);
    assert_eq!(items(&store, job.id).await.len(), 2);
    let retry = store
        .create_job(jobvisor::domain::JobId::new(), &keyed)
        .await
        .expect("a retry");
    assert!(!retry.created);
    assert_eq!(retry.job.id, job.id);
    // The foreign keys still hold: deleting the job deletes its rows.
    let mut conn = SqliteConnection::connect_with(&options).await.unwrap();
    let violations: Vec<(String,)> = sqlx::query_as("PRAGMA foreign_key_check")
        .fetch_all(&mut conn)
        .await
        .unwrap();
    assert!(violations.is_empty(), "{violations:?}");
    sqlx::query("DELETE FROM jobs WHERE id = ?1")
        .bind(id)
        .execute(&mut conn)
        .await
        .unwrap();
    let left: i64 = sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM items) + (SELECT count(*) FROM job_events) \
         + (SELECT count(*) FROM job_pauses)",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!(left, 0);
    opened.close().await;
}

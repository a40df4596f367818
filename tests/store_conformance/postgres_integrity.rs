//! What the foreign key items → jobs guaranteed, now kept by triggers
//! (migrations/postgres/0008_items_bulk.sql, 0010_item_job_kept.sql):
//! items cannot name a job that does not exist, whether inserted or moved,
//! deleting a job deletes its items, and a job's id cannot change under its
//! items. Nothing already stored changes when one of these is refused.

use crate::harness::{create, items, on_postgres_store, spec};
use jobvisor::store::{Store, postgres::PgStore};
use sqlx::Connection;
use std::sync::Arc;

/// Checks that `err` is a foreign key violation whose message mentions
/// `mentions`.
fn assert_fk_violation(err: sqlx::Error, mentions: &str) {
    let db = err.as_database_error().expect("a database error");
    assert_eq!(db.code().as_deref(), Some("23503"), "{db}");
    assert!(db.message().contains(mentions), "{db}");
}

async fn item_count(pg: &PgStore) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM items")
        .fetch_one(pg.pool())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_items_of_a_job_that_does_not_exist_are_refused() {
    on_postgres_store(|pg: Arc<PgStore>| async move {
        let store: Arc<dyn Store> = pg.clone();
        let job = create(&store, &spec(3)).await;
        let missing = uuid::Uuid::new_v4();
        // One statement with items of an existing job and of a missing one:
        // all of it is refused.
        let err = sqlx::query(
            "INSERT INTO items (job_id, idx, payload) \
             VALUES ($1, 100, 'a'), ($2, 0, 'b')",
        )
        .bind(job.id.0)
        .bind(missing)
        .execute(pg.pool())
        .await
        .expect_err("an item of a missing job is refused");
        assert_fk_violation(err, &missing.to_string());
        assert_eq!(item_count(&pg).await, 3, "nothing was inserted");
        assert_eq!(items(&store, job.id).await.len(), 3);

        // Items of an existing job still go in.
        sqlx::query("INSERT INTO items (job_id, idx, payload) VALUES ($1, 100, 'a')")
            .bind(job.id.0)
            .execute(pg.pool())
            .await
            .unwrap();
        assert_eq!(item_count(&pg).await, 4);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_deleting_a_job_deletes_its_items_only() {
    on_postgres_store(|pg: Arc<PgStore>| async move {
        let store: Arc<dyn Store> = pg.clone();
        let gone = create(&store, &spec(5)).await;
        let kept = create(&store, &spec(2)).await;
        sqlx::query("DELETE FROM jobs WHERE id = $1")
            .bind(gone.id.0)
            .execute(pg.pool())
            .await
            .unwrap();
        assert_eq!(item_count(&pg).await, 2);
        assert_eq!(items(&store, kept.id).await.len(), 2);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_job_id_cannot_change_under_its_items() {
    on_postgres_store(|pg: Arc<PgStore>| async move {
        let store: Arc<dyn Store> = pg.clone();
        let job = create(&store, &spec(2)).await;
        // Its events would refuse the change through their own foreign key.
        sqlx::query("DELETE FROM job_events WHERE job_id = $1")
            .bind(job.id.0)
            .execute(pg.pool())
            .await
            .unwrap();
        let err = sqlx::query("UPDATE jobs SET id = $2 WHERE id = $1")
            .bind(job.id.0)
            .bind(uuid::Uuid::new_v4())
            .execute(pg.pool())
            .await
            .expect_err("the id of a job with items cannot change");
        assert_fk_violation(err, "cannot change");
        assert_eq!(items(&store, job.id).await.len(), 2, "the job is untouched");
        assert_eq!(store.get_job(job.id).await.unwrap().id, job.id);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_an_item_cannot_move_to_a_job_that_does_not_exist() {
    on_postgres_store(|pg: Arc<PgStore>| async move {
        let store: Arc<dyn Store> = pg.clone();
        let job = create(&store, &spec(3)).await;
        let other = create(&store, &spec(1)).await;
        let missing = uuid::Uuid::new_v4();
        let err = sqlx::query("UPDATE items SET job_id = $2 WHERE job_id = $1")
            .bind(job.id.0)
            .bind(missing)
            .execute(pg.pool())
            .await
            .expect_err("an item cannot move to a missing job");
        assert_fk_violation(err, &missing.to_string());
        assert_eq!(items(&store, job.id).await.len(), 3, "nothing moved");

        // Naming the column without changing it is no move.
        sqlx::query("UPDATE items SET job_id = job_id WHERE job_id = $1")
            .bind(job.id.0)
            .execute(pg.pool())
            .await
            .unwrap();
        // A move to a job that exists is allowed, as the key allowed it.
        sqlx::query("UPDATE items SET job_id = $2, idx = idx + 10 WHERE job_id = $1 AND idx = 0")
            .bind(job.id.0)
            .bind(other.id.0)
            .execute(pg.pool())
            .await
            .unwrap();
        assert_eq!(items(&store, job.id).await.len(), 2);
        assert_eq!(items(&store, other.id).await.len(), 2);
    })
    .await;
}

/// Seq scans of `table` in this session's open transaction.
async fn seq_scans(conn: &mut sqlx::PgConnection, table: &str) -> i64 {
    sqlx::query_scalar("SELECT pg_stat_get_xact_numscans($1::regclass)")
        .bind(table)
        .fetch_one(conn)
        .await
        .unwrap()
}

/// The triggers' queries are planned once per session and kept until the
/// tables' statistics change (never, with autovacuum off). Planned while
/// the tables were small, they must still find jobs and items by their
/// keys once the tables are large: a plan that hashed the whole jobs table
/// made every StartJob cost more the more jobs were stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_the_triggers_find_jobs_and_items_by_key_however_the_tables_grew() {
    on_postgres_store(|pg: Arc<PgStore>| async move {
        let store: Arc<dyn Store> = pg.clone();
        let kept = create(&store, &spec(1)).await;
        let small = create(&store, &spec(1)).await;
        let big = create(&store, &spec(1)).await;
        // One session plans the triggers now, with three jobs of one item
        // stored: an insert of ten items (a hash join looked cheapest for
        // them), and the deletion of a job.
        // (A connection of its own: the pool's have planned the triggers
        // already, for the jobs created above.)
        let mut session = sqlx::PgConnection::connect_with(&pg.pool().connect_options())
            .await
            .unwrap();
        sqlx::query(
            "INSERT INTO items (job_id, idx, payload) \
             SELECT $1, g, 'a' FROM generate_series(100, 109) AS g",
        )
        .bind(kept.id.0)
        .execute(&mut session)
        .await
        .unwrap();
        sqlx::query("DELETE FROM jobs WHERE id = $1")
            .bind(small.id.0)
            .execute(&mut session)
            .await
            .unwrap();

        // The tables grow, through another connection: 5,000 jobs and
        // 50,000 items.
        sqlx::query(
            "INSERT INTO jobs SELECT (jsonb_populate_record(NULL::jobs, \
             to_jsonb(j) || jsonb_build_object('id', gen_random_uuid()))).* \
             FROM jobs AS j, generate_series(1, 5000) WHERE j.id = $1",
        )
        .bind(kept.id.0)
        .execute(pg.pool())
        .await
        .unwrap();
        sqlx::query(
            "INSERT INTO items (job_id, idx, payload) \
             SELECT $1, g, 'x' FROM generate_series(1000, 50999) AS g",
        )
        .bind(big.id.0)
        .execute(pg.pool())
        .await
        .unwrap();

        // The same session inserts items and deletes a job again, with the
        // plans it made: no table is read whole.
        let mut tx = session.begin().await.unwrap();
        sqlx::query("INSERT INTO items (job_id, idx, payload) VALUES ($1, 110, 'a')")
            .bind(kept.id.0)
            .execute(&mut *tx)
            .await
            .unwrap();
        sqlx::query("DELETE FROM jobs WHERE id = $1")
            .bind(big.id.0)
            .execute(&mut *tx)
            .await
            .unwrap();
        assert_eq!(seq_scans(&mut tx, "jobs").await, 0, "jobs read whole");
        assert_eq!(seq_scans(&mut tx, "items").await, 0, "items read whole");
        tx.commit().await.unwrap();
        session.close().await.unwrap();
        assert_eq!(items(&store, kept.id).await.len(), 12);
        assert_eq!(
            item_count(&pg).await,
            12,
            "the deleted job's items went along"
        );
    })
    .await;
}

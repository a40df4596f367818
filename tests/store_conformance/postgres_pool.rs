//! The pools check a connection before handing it out only when it was
//! idle for more than a second (src/store/postgres/mod.rs,
//! `pool_options`): a session cut while idle (a database restart, an
//! administrator) is replaced without the caller seeing an error, and a
//! busy one that is cut costs one call, reported as unavailable.

use crate::harness::{create, get, on_postgres_store, spec};
use jobvisor::store::{Store, StoreError, postgres::PgStore};
use std::{sync::Arc, time::Duration};

/// Ends every session of the store's database, as a restart would, from a
/// connection of its own (which it keeps). Returns how many it ended.
async fn cut_sessions(pg: &PgStore) -> i64 {
    let admin = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect_with(pg.pool().connect_options().as_ref().clone())
        .await
        .unwrap();
    sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = current_database() AND pid <> pg_backend_pid()) AS t",
    )
    .fetch_one(&admin)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_sessions_cut_while_idle_are_replaced_unseen() {
    on_postgres_store(|pg: Arc<PgStore>| async move {
        let store: Arc<dyn Store> = pg.clone();
        let job = create(&store, &spec(3)).await;
        assert!(cut_sessions(&pg).await >= 1, "the store had a session");
        tokio::time::sleep(Duration::from_millis(1300)).await;
        for _ in 0..5 {
            assert_eq!(store.get_job(job.id).await.unwrap().id, job.id);
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_busy_session_cut_costs_one_unavailable_call() {
    on_postgres_store(|pg: Arc<PgStore>| async move {
        let store: Arc<dyn Store> = pg.clone();
        let job = create(&store, &spec(3)).await;
        cut_sessions(&pg).await;
        // Not idle long enough to be checked: the call may fail, and then
        // only as unavailable (a caller retries those).
        match store.get_job(job.id).await {
            Ok(found) => assert_eq!(found.id, job.id),
            Err(e) => assert!(matches!(e, StoreError::Unavailable(_)), "{e:?}"),
        }
        let mut ok = false;
        for _ in 0..5 {
            ok |= store.get_job(job.id).await.is_ok();
        }
        assert!(ok, "the pool opened a new session");
        assert_eq!(get(&store, job.id).await.id, job.id);
    })
    .await;
}

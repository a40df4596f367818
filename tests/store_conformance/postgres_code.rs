//! The PL/pgSQL functions kept as code (src/store/postgres/sql/, applied at
//! start-up by `store::postgres::code`): a database made by the migrations
//! up to 0014, when the functions still lived in migrations, upgrades with
//! nothing lost and the current functions; a second start changes nothing; an
//! older server leaves a newer one's functions alone.

use crate::harness::on_empty_database;
use jobvisor::store::postgres::{PgConfig, PgStore, code};
use sqlx::{Connection, PgConnection};

/// Every function of the schema, as PostgreSQL prints its definition.
const FUNCTIONS: &str = "SELECT string_agg(pg_get_functiondef(p.oid), E'\\n' \
     ORDER BY p.oid::regprocedure::text) \
     FROM pg_proc AS p JOIN pg_namespace AS n ON n.oid = p.pronamespace \
     WHERE n.nspname = 'public'";

/// The rows of the tables that hold jobs, as JSON objects, in a fixed order.
const ROWS: [&str; 4] = [
    "SELECT to_jsonb(j) FROM jobs AS j ORDER BY j.id",
    "SELECT to_jsonb(i) FROM items AS i ORDER BY i.job_id, i.idx",
    "SELECT to_jsonb(e) FROM job_events AS e ORDER BY e.job_id, e.seq",
    "SELECT to_jsonb(p) FROM job_pauses AS p ORDER BY p.job_id, p.n",
];

async fn rows(conn: &mut PgConnection) -> Vec<Vec<serde_json::Value>> {
    let mut tables = Vec::new();
    for query in ROWS {
        tables.push(
            sqlx::query_scalar::<_, serde_json::Value>(query)
                .fetch_all(&mut *conn)
                .await
                .expect(query),
        );
    }
    tables
}

/// Every row `before` had is still there with every value it had (later
/// migrations may add columns).
fn kept(before: &[Vec<serde_json::Value>], after: &[Vec<serde_json::Value>]) {
    for (query, (old, new)) in ROWS.iter().zip(before.iter().zip(after)) {
        assert_eq!(old.len(), new.len(), "{query}: rows lost or added");
        for (old, new) in old.iter().zip(new) {
            for (column, value) in old.as_object().expect("a row") {
                assert_eq!(
                    new.get(column),
                    Some(value),
                    "{query}: {column} changed in {new}"
                );
            }
        }
    }
}

async fn text(conn: &mut PgConnection, query: &'static str) -> String {
    sqlx::query_scalar::<_, Option<String>>(query)
        .fetch_one(conn)
        .await
        .expect(query)
        .unwrap_or_default()
}

async fn held_version(conn: &mut PgConnection) -> (i32, String) {
    sqlx::query_as("SELECT version, digest FROM jobvisor_code")
        .fetch_one(conn)
        .await
        .expect("the version of the functions")
}

/// A paused job of three items as a server at migration 0014 left it: one
/// succeeded, one with a checkpoint, one waiting for a retry; a pause.
const JOB_AT_0014: &str = "
INSERT INTO jobs (id, name, executor, state, concurrency, max_attempts, params, labels,
                  request_id, total_items, succeeded_items, last_seq, created_at,
                  started_at, updated_at, policy)
VALUES ('5e1f3a52-8d0c-4c7e-9a39-4f7c2a0d1b11', 'old', 'sleep', 'paused', 2, 3,
        '{\"duration_ms\":\"5\"}', '{\"team\":\"video\"}', 'req-1', 3, 1, 2,
        now(), now(), now(), '{\"rate_limit\":10,\"rate_period_ms\":1000}');
INSERT INTO items (job_id, idx, state, attempts, payload, checkpoint, last_error, result, retry_at)
VALUES ('5e1f3a52-8d0c-4c7e-9a39-4f7c2a0d1b11', 0, 2, 1, 'a', NULL, NULL, 'done', NULL),
       ('5e1f3a52-8d0c-4c7e-9a39-4f7c2a0d1b11', 1, 0, 1, 'b', '\\x6672616d653d3132'::bytea, NULL, NULL, NULL),
       ('5e1f3a52-8d0c-4c7e-9a39-4f7c2a0d1b11', 2, 0, 1, 'c', NULL, 'boom', NULL, now() + interval '1 hour');
INSERT INTO job_pauses (job_id, n, mode, reason, requested_at, paused_at)
SELECT '5e1f3a52-8d0c-4c7e-9a39-4f7c2a0d1b11', 1, 'graceful', 'maintenance', now(), now();
";

/// The functions a new database gets from the current code.
async fn current_functions() -> String {
    let fresh = jobvisor_testkit::db::TestDb::create().await;
    let store = PgStore::connect(&PgConfig::new(fresh.url.clone()))
        .await
        .expect("a new database's start-up");
    let mut conn = PgConnection::connect(&fresh.url).await.expect("connect");
    let functions = text(&mut conn, FUNCTIONS).await;
    drop((conn, store));
    fresh.drop_db().await;
    functions
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_database_at_0014_upgrades_with_nothing_lost() {
    on_empty_database(|url| async move {
        let mut conn = PgConnection::connect(&url).await.expect("connect");
        sqlx::migrate!("migrations/postgres")
            .run_to(14, &mut conn)
            .await
            .expect("migrate to 0014");
        sqlx::raw_sql(JOB_AT_0014)
            .execute(&mut conn)
            .await
            .expect("a job as 0014 stored it");
        let functions = text(&mut conn, FUNCTIONS).await;
        let before = rows(&mut conn).await;
        assert!(functions.contains("jobvisor_write_batch"), "{functions}");
        assert_eq!(before[3].len(), 1, "the pause");

        let store = PgStore::connect(&PgConfig::new(url.clone()))
            .await
            .expect("the new server's start-up");
        // The functions are the current code's, as a new database gets
        // them.
        assert_eq!(
            text(&mut conn, FUNCTIONS).await,
            current_functions().await,
            "the upgraded database's functions are not the current code's"
        );
        kept(&before, &rows(&mut conn).await);
        assert_eq!(
            held_version(&mut conn).await,
            (code::VERSION, code::DIGEST.to_string())
        );
        let job = jobvisor::store::Store::get_job(
            &store,
            "5e1f3a52-8d0c-4c7e-9a39-4f7c2a0d1b11".parse().unwrap(),
        )
        .await
        .expect("the old job reads");
        assert_eq!(job.counts.total, 3);
        assert_eq!(job.counts.succeeded, 1);
        drop(store);

        // A second start finds them current and rewrites nothing.
        let before: chrono::DateTime<chrono::Utc> =
            sqlx::query_scalar("SELECT applied_at FROM jobvisor_code")
                .fetch_one(&mut conn)
                .await
                .unwrap();
        PgStore::connect(&PgConfig::new(url))
            .await
            .expect("start again");
        let after: chrono::DateTime<chrono::Utc> =
            sqlx::query_scalar("SELECT applied_at FROM jobvisor_code")
                .fetch_one(&mut conn)
                .await
                .unwrap();
        assert_eq!(before, after, "a second start applied the functions again");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_an_older_server_leaves_newer_functions_alone() {
    on_empty_database(|url| async move {
        PgStore::connect(&PgConfig::new(url.clone()))
            .await
            .expect("first start");
        let mut conn = PgConnection::connect(&url).await.expect("connect");
        // A newer server's function, and its version.
        sqlx::raw_sql(
            "CREATE OR REPLACE FUNCTION jobvisor_jobs_deleted() RETURNS trigger
             LANGUAGE plpgsql AS $$ BEGIN /* newer */ RETURN NULL; END; $$;
             UPDATE jobvisor_code SET version = version + 1, digest = 'newer';",
        )
        .execute(&mut conn)
        .await
        .unwrap();
        PgStore::connect(&PgConfig::new(url.clone()))
            .await
            .expect("the older server starts");
        let body: String = sqlx::query_scalar(
            "SELECT prosrc FROM pg_proc WHERE proname = 'jobvisor_jobs_deleted'",
        )
        .fetch_one(&mut conn)
        .await
        .unwrap();
        assert!(
            body.contains("newer"),
            "an older server replaced it: {body}"
        );
        assert_eq!(held_version(&mut conn).await.0, code::VERSION + 1);

        // The same version with other contents (a development build) is
        // applied again.
        sqlx::query("UPDATE jobvisor_code SET version = $1, digest = 'other'")
            .bind(code::VERSION)
            .execute(&mut conn)
            .await
            .unwrap();
        PgStore::connect(&PgConfig::new(url))
            .await
            .expect("start again");
        let body: String = sqlx::query_scalar(
            "SELECT prosrc FROM pg_proc WHERE proname = 'jobvisor_jobs_deleted'",
        )
        .fetch_one(&mut conn)
        .await
        .unwrap();
        assert!(!body.contains("newer"), "{body}");
        assert_eq!(
            held_version(&mut conn).await,
            (code::VERSION, code::DIGEST.to_string())
        );
    })
    .await
}

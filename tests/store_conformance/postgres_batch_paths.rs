//! On PostgreSQL a batch of successes and claims only goes through
//! `jobvisor_write_successes` (migrations/postgres/0011), any other batch
//! through `jobvisor_write_batch`. The two functions are called here with
//! the same batch on two identical jobs: they must apply the same writes,
//! claim the same items, answer the same counters and leave the same rows.
//! (Every other scenario of the suite goes through whichever the store
//! picks; this one holds the two to each other.)

use crate::harness::{claim, create, get, items, on_postgres_store, spec};
use jobvisor::{
    domain::{Item, JobId},
    store::{Store, postgres::PgStore},
};
use sqlx::{PgPool, Row};
use std::sync::Arc;

/// One batch: successes `(index, lease, result)` and a claim of up to
/// `max` items from index 0 under `claim_lease`.
struct Call<'a> {
    successes: &'a [(i32, i64, Option<&'a str>)],
    max: i32,
    claim_lease: i64,
}

impl Call<'_> {
    /// The successes' indexes, leases and results, one array each.
    fn columns(&self) -> (Vec<i32>, Vec<i64>, Vec<Option<&str>>) {
        (
            self.successes.iter().map(|s| s.0).collect(),
            self.successes.iter().map(|s| s.1).collect(),
            self.successes.iter().map(|s| s.2).collect(),
        )
    }
}

/// What a call answered: the positions (from 1) of the writes applied,
/// the items claimed `(index, payload, attempt)` and the job's counters
/// `(state, total, running, succeeded, failed, cancelled, last_seq)`.
#[derive(Debug, PartialEq)]
struct Answer {
    applied: Vec<i32>,
    claimed: Vec<(i32, String, i32)>,
    counters: Vec<(String, i64, i64, i64, i64, i64, i64)>,
}

async fn through_successes(pool: &PgPool, job: JobId, call: &Call<'_>) -> Answer {
    let n = call.successes.len();
    let (indexes, leases, results) = call.columns();
    let rows =
        sqlx::query("SELECT * FROM jobvisor_write_successes($1, $2, $3, $4, $5, $6, $7, $8)")
            .bind(vec![job.0; n])
            .bind(indexes)
            .bind(leases)
            .bind(results)
            .bind(vec![job.0])
            .bind(vec![call.max])
            .bind(vec![0i32])
            .bind(vec![call.claim_lease])
            .fetch_all(pool)
            .await
            .expect("jobvisor_write_successes");
    let mut applied = Vec::new();
    for row in rows.iter().filter(|r| r.get::<i16, _>("tag") == 0) {
        applied.extend(
            row.get::<Option<Vec<i32>>, _>("applied")
                .unwrap_or_default(),
        );
    }
    answer(applied, &rows)
}

async fn through_general(pool: &PgPool, job: JobId, call: &Call<'_>) -> Answer {
    let n = call.successes.len();
    let (indexes, leases, results) = call.columns();
    let rows = sqlx::query(
        "SELECT * FROM jobvisor_write_batch($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
    )
    .bind(vec![1i16; n])
    .bind(vec![job.0; n])
    .bind(indexes)
    .bind(leases)
    .bind(vec![None::<Vec<u8>>; n])
    .bind(results)
    .bind(vec![false; n])
    .bind(vec![job.0])
    .bind(vec![call.max])
    .bind(vec![0i32])
    .bind(vec![call.claim_lease])
    .fetch_all(pool)
    .await
    .expect("jobvisor_write_batch");
    let applied = rows
        .iter()
        .filter(|r| r.get::<i16, _>("tag") == 0)
        .map(|r| r.get::<i32, _>("pos"))
        .collect();
    answer(applied, &rows)
}

fn answer(mut applied: Vec<i32>, rows: &[sqlx::postgres::PgRow]) -> Answer {
    applied.sort_unstable();
    let mut claimed: Vec<(i32, String, i32)> = rows
        .iter()
        .filter(|r| r.get::<i16, _>("tag") == 1)
        .map(|r| (r.get("idx"), r.get("payload"), r.get("attempt")))
        .collect();
    claimed.sort_unstable();
    let counters = rows
        .iter()
        .filter(|r| r.get::<i16, _>("tag") == 2)
        .map(|r| {
            (
                r.get("state"),
                r.get("total"),
                r.get("running"),
                r.get("succeeded"),
                r.get("failed"),
                r.get("cancelled"),
                r.get("last_seq"),
            )
        })
        .collect();
    Answer {
        applied,
        claimed,
        counters,
    }
}

/// The rows as stored, but for the time of the last change; with whether
/// each holds a lease.
async fn stored(store: &Arc<dyn Store>, pool: &PgPool, job: JobId) -> Vec<(Item, bool)> {
    let leased: Vec<bool> =
        sqlx::query_scalar("SELECT lease IS NOT NULL FROM items WHERE job_id = $1 ORDER BY idx")
            .bind(job.0)
            .fetch_all(pool)
            .await
            .unwrap();
    items(store, job)
        .await
        .into_iter()
        .map(|item| Item {
            updated_at: None,
            ..item
        })
        .zip(leased)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_the_successes_function_does_what_the_batch_function_does() {
    on_postgres_store(|pg: Arc<PgStore>| async move {
        let store: Arc<dyn Store> = pg.clone();
        let pool = pg.pool().clone();
        let (a, b) = (
            create(&store, &spec(10)).await,
            create(&store, &spec(10)).await,
        );
        // Items 0 to 3 of each running, under a lease of each job's own.
        let (la, lb) = (
            claim(&store, a.id, 4).await[0].lease,
            claim(&store, b.id, 4).await[0].lease,
        );
        let calls = |lease: i64| {
            [
                // Two successes (with a result and without), one with a
                // lease nobody holds, one for an item not running; and a
                // claim of the next three.
                vec![
                    (0, lease, Some("r0")),
                    (1, lease, None),
                    (2, lease ^ 1, Some("late")),
                    (7, lease, Some("not running")),
                ],
                // The last running one, claiming more than is left.
                vec![(3, lease, Some("r3"))],
                // A claim alone.
                vec![],
            ]
        };
        let (calls_a, calls_b) = (calls(la), calls(lb));
        for (n, (wa, wb)) in calls_a.iter().zip(&calls_b).enumerate() {
            let max = [3, 9, 2][n];
            let got_a = through_successes(
                &pool,
                a.id,
                &Call {
                    successes: wa,
                    max,
                    claim_lease: 7,
                },
            )
            .await;
            let got_b = through_general(
                &pool,
                b.id,
                &Call {
                    successes: wb,
                    max,
                    claim_lease: 7,
                },
            )
            .await;
            assert_eq!(got_a, got_b, "call {n}");
            assert_eq!(
                stored(&store, &pool, a.id).await,
                stored(&store, &pool, b.id).await,
                "rows after call {n}"
            );
        }
        // What the calls did, so that the comparison above is not between
        // two functions that did nothing.
        let (ja, jb) = (get(&store, a.id).await, get(&store, b.id).await);
        assert_eq!(ja.counts, jb.counts);
        assert_eq!(ja.counts.succeeded, 3, "{:?}", ja.counts);
        assert_eq!(ja.counts.running, 7, "{:?}", ja.counts);
        let rows = stored(&store, &pool, a.id).await;
        assert_eq!(rows[0].0.result.as_deref(), Some("r0"));
        assert!(!rows[0].1, "a succeeded item holds no lease");
        assert_eq!(
            rows[2].0.result, None,
            "the write with a stale lease did nothing"
        );
        assert!(rows[2].1, "item 2 still runs under its lease");
    })
    .await;
}

//! Group commit: the item writes and claims of many workers and jobs in one
//! `BEGIN IMMEDIATE` transaction. Each write is conditional on the item's
//! lease and on the item still running; claims take the lowest pending
//! items of RUNNING jobs; counters and the event log move once per job per
//! batch. Same outcome, row for row, as `postgres/batch.rs`.
//!
//! Writes are applied in order, then claims in order, each seeing what the
//! ones before it changed: an item released or retried by a write of this
//! batch is pending for a claim of the same batch.

use super::{
    begin_write,
    codec::{count, count32, counts_from_row, job_state, micros, now, optional_time},
    db_error,
    jobs::insert_event,
};
use crate::{
    domain::{EventBody, JobId, JobState},
    store::{
        Batch, BatchOutcome, ClaimRequest, ClaimedItem, ItemWrite, Pulse, StoreError, WriteKind,
    },
};
use sqlx::{Row, SqliteConnection, SqlitePool};
use std::collections::BTreeMap;
use uuid::Uuid;

/// Longest error text stored for an item; the rest is cut.
const MAX_ERROR_BYTES: usize = 8 * 1024;

/// What a batch changes on one job row. A job has an entry once the batch
/// changed one of its items' states (a checkpoint alone changes nothing
/// the job row counts).
#[derive(Default)]
struct Delta {
    running: i64,
    succeeded: i64,
    failed: i64,
    cancelled: i64,
    events: Vec<EventBody>,
    /// The counters of the successes applied.
    counters: crate::domain::Counters,
}

pub(super) async fn write_batch(
    pool: &SqlitePool,
    batch: &Batch,
) -> Result<BatchOutcome, StoreError> {
    let mut tx = begin_write(pool).await?;
    let at = micros(now());
    // Job ids in order, so pulses come out in a stable order.
    let mut deltas: BTreeMap<Uuid, Delta> = BTreeMap::new();
    let mut applied = Vec::with_capacity(batch.writes.len());
    for w in &batch.writes {
        applied.push(apply_write(&mut tx, w, at, &mut deltas).await?);
    }
    let mut claimed = Vec::with_capacity(batch.claims.len());
    for claim in &batch.claims {
        let items = claim_items(&mut tx, claim, at).await?;
        if !items.is_empty() {
            deltas.entry(claim.job.0).or_default().running += items.len() as i64;
        }
        claimed.push(items);
    }
    let pulses = update_jobs(&mut tx, &deltas, at).await?;
    tx.commit().await.map_err(db_error)?;
    Ok(BatchOutcome {
        applied,
        claimed,
        pulses,
        fenced: Vec::new(),
    })
}

/// A statement on one item, conditional on its lease: `?1` job, `?2`
/// index, `?3` lease (and `?4` the time). Appends the fence to a statement
/// that ends with `WHERE`, and anything after it.
macro_rules! fenced {
    ($head:literal $(, $tail:literal)?) => {
        concat!($head, "job_id = ?1 AND idx = ?2 AND lease = ?3 AND state = 1" $(, " ", $tail)?)
    };
}

/// Applies one lease-fenced write; false when the item is not running
/// under that lease (the write changes nothing then).
async fn apply_write(
    conn: &mut SqliteConnection,
    w: &ItemWrite,
    at: i64,
    deltas: &mut BTreeMap<Uuid, Delta>,
) -> Result<bool, StoreError> {
    let index = i64::from(w.index);
    let bind_fence = |sql: &'static str| {
        sqlx::query(sql)
            .bind(w.job.0)
            .bind(index)
            .bind(w.lease)
            .bind(at)
    };
    let hit = match &w.kind {
        WriteKind::Checkpoint(data) => {
            let done = bind_fence(fenced!(
                "UPDATE items SET checkpoint = ?5, updated_at = ?4 WHERE "
            ))
            .bind(data.as_slice())
            .execute(&mut *conn)
            .await
            .map_err(db_error)?;
            // A checkpoint changes no count: no entry for the job.
            return Ok(done.rows_affected() == 1);
        }
        WriteKind::Succeeded {
            result,
            skip_reason,
            counters,
        } => {
            let done = bind_fence(fenced!(
                "UPDATE items SET state = 2, lease = NULL, updated_at = ?4, result = ?5, \
                 skip_reason = ?6 WHERE "
            ))
            .bind(result.as_deref().map(clean_error))
            .bind(skip_reason.as_deref())
            .execute(&mut *conn)
            .await
            .map_err(db_error)?;
            let hit = done.rows_affected() == 1;
            if hit {
                let d = deltas.entry(w.job.0).or_default();
                d.running -= 1;
                d.succeeded += 1;
                crate::domain::counters::merge(&mut d.counters, counters);
            }
            hit
        }
        WriteKind::Failed {
            error,
            permanent,
            retry_after,
        } => {
            // Retried unless permanent or out of attempts (the attempt
            // that failed is already counted in `attempts`), not before
            // `retry_at` if it waits.
            let row =
                bind_fence(fenced!(
                    "UPDATE items SET \
                    state = CASE WHEN ?5 OR attempts >= \
                        (SELECT max_attempts FROM jobs WHERE id = ?1) THEN 3 ELSE 0 END, \
                    lease = NULL, last_error = ?6, updated_at = ?4, retry_at = ?7 \
                 WHERE ",
                    "RETURNING attempts, state, last_error, retry_at"
                ))
                .bind(*permanent)
                .bind(clean_error(error))
                .bind((!retry_after.is_zero()).then(|| {
                    at.saturating_add(retry_after.as_micros().min(i64::MAX as u128) as i64)
                }))
                .fetch_optional(&mut *conn)
                .await
                .map_err(db_error)?;
            let Some(row) = row else { return Ok(false) };
            let attempt = count32(&row, "attempts")?;
            let state: i64 = row.try_get("state").map_err(db_error)?;
            let error: Option<String> = row.try_get("last_error").map_err(db_error)?;
            let will_retry = state == 0;
            let d = deltas.entry(w.job.0).or_default();
            d.running -= 1;
            if !will_retry {
                d.failed += 1;
            }
            d.events.push(EventBody::ItemFailed {
                index: w.index,
                attempt,
                error: error.unwrap_or_default(),
                will_retry,
                retry_at: match will_retry {
                    true => optional_time(&row, "retry_at")?,
                    false => None,
                },
            });
            true
        }
        WriteKind::Released { refund } => {
            let done = bind_fence(fenced!(
                "UPDATE items SET state = 0, lease = NULL, updated_at = ?4, \
                    attempts = CASE WHEN ?5 THEN MAX(attempts - 1, 0) ELSE attempts END \
                 WHERE "
            ))
            .bind(*refund)
            .execute(&mut *conn)
            .await
            .map_err(db_error)?;
            let hit = done.rows_affected() == 1;
            if hit {
                deltas.entry(w.job.0).or_default().running -= 1;
            }
            hit
        }
        WriteKind::Cancelled => {
            let done = bind_fence(fenced!(
                "UPDATE items SET state = 4, lease = NULL, updated_at = ?4 WHERE "
            ))
            .execute(&mut *conn)
            .await
            .map_err(db_error)?;
            let hit = done.rows_affected() == 1;
            if hit {
                let d = deltas.entry(w.job.0).or_default();
                d.running -= 1;
                d.cancelled += 1;
            }
            hit
        }
    };
    Ok(hit)
}

/// Claims up to `claim.max` of the job's lowest pending items (from
/// `claim.from_index`) under a new lease, only if the job is RUNNING.
async fn claim_items(
    conn: &mut SqliteConnection,
    claim: &ClaimRequest,
    at: i64,
) -> Result<Vec<ClaimedItem>, StoreError> {
    if claim.max == 0 {
        return Ok(Vec::new());
    }
    let state: Option<String> = sqlx::query_scalar("SELECT state FROM jobs WHERE id = ?1")
        .bind(claim.job.0)
        .fetch_optional(&mut *conn)
        .await
        .map_err(db_error)?;
    match state {
        Some(s) if job_state(&s)? == JobState::Running => {}
        _ => return Ok(Vec::new()),
    }
    let lease = new_lease();
    // A claim of due retries only takes items with a wait (over by now).
    macro_rules! claim_sql {
        ($due:literal) => {
            concat!(
                "UPDATE items SET state = 1, lease = ?3, attempts = attempts + 1, \
                    updated_at = ?4, retry_at = NULL \
                 WHERE job_id = ?1 AND idx IN ( \
                    SELECT idx FROM items WHERE job_id = ?1 AND idx >= ?2 AND state = 0 \
                    AND ",
                $due,
                " ORDER BY idx LIMIT ?5) \
                 RETURNING idx, payload, attempts, checkpoint"
            )
        };
    }
    let sql = if claim.retries {
        claim_sql!("retry_at IS NOT NULL AND retry_at <= ?4")
    } else {
        claim_sql!("(retry_at IS NULL OR retry_at <= ?4)")
    };
    let rows = sqlx::query(sql)
        .bind(claim.job.0)
        .bind(i64::from(claim.from_index))
        .bind(lease)
        .bind(at)
        .bind(i64::from(claim.max))
        .fetch_all(&mut *conn)
        .await
        .map_err(db_error)?;
    let mut items = rows
        .iter()
        .map(|row| {
            Ok(ClaimedItem {
                index: count32(row, "idx")?,
                payload: row.try_get("payload").map_err(db_error)?,
                attempt: count32(row, "attempts")?,
                checkpoint: row.try_get("checkpoint").map_err(db_error)?,
                lease,
            })
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    // RETURNING comes in no promised order.
    items.sort_unstable_by_key(|i| i.index);
    Ok(items)
}

/// Applies each job's counter changes, bumps its sequence by its number of
/// events and appends them with consecutive sequences.
async fn update_jobs(
    conn: &mut SqliteConnection,
    deltas: &BTreeMap<Uuid, Delta>,
    at: i64,
) -> Result<Vec<Pulse>, StoreError> {
    let mut pulses = Vec::with_capacity(deltas.len());
    for (id, d) in deltas {
        let row = sqlx::query(
            "UPDATE jobs SET \
                running_items = running_items + ?2, \
                succeeded_items = succeeded_items + ?3, \
                failed_items = failed_items + ?4, \
                cancelled_items = cancelled_items + ?5, \
                last_seq = last_seq + ?6, \
                updated_at = ?7 \
             WHERE id = ?1 \
             RETURNING state, total_items, running_items, succeeded_items, failed_items, \
                cancelled_items, last_seq",
        )
        .bind(id)
        .bind(d.running)
        .bind(d.succeeded)
        .bind(d.failed)
        .bind(d.cancelled)
        .bind(d.events.len() as i64)
        .bind(at)
        .fetch_one(&mut *conn)
        .await
        .map_err(db_error)?;
        if !d.counters.is_empty() {
            // Summed in JSON by SQLite itself, in this transaction.
            let more = serde_json::to_string(&d.counters)
                .map_err(|e| StoreError::Internal(format!("counters: {e}")))?;
            sqlx::query(
                "UPDATE jobs SET counters = ( \
                    SELECT json_group_object(key, total) FROM ( \
                        SELECT key, sum(value) AS total FROM ( \
                            SELECT key, value FROM json_each(jobs.counters) \
                            UNION ALL SELECT key, value FROM json_each(?2)) \
                        GROUP BY key)) \
                 WHERE id = ?1",
            )
            .bind(id)
            .bind(more)
            .execute(&mut *conn)
            .await
            .map_err(db_error)?;
        }
        let state: String = row.try_get("state").map_err(db_error)?;
        let last_seq = count(&row, "last_seq")?;
        let first = last_seq + 1 - d.events.len() as u64;
        for (n, body) in d.events.iter().enumerate() {
            insert_event(conn, JobId(*id), (first + n as u64) as i64, at, body).await?;
        }
        pulses.push(Pulse {
            job: JobId(*id),
            state: job_state(&state)?,
            counts: counts_from_row(&row)?,
            last_seq,
        });
    }
    Ok(pulses)
}

/// A fresh fencing token. Random 64 bits: unique across processes and
/// restarts without a shared counter.
fn new_lease() -> i64 {
    Uuid::new_v4().as_u64_pair().0 as i64
}

/// Error text as stored: at most [`MAX_ERROR_BYTES`], with NUL characters
/// replaced as the PostgreSQL store must (its text cannot hold them), so
/// both stores keep the same text.
fn clean_error(error: &str) -> String {
    let mut end = error.len().min(MAX_ERROR_BYTES);
    while !error.is_char_boundary(end) {
        end -= 1;
    }
    error[..end].replace('\0', "\u{FFFD}")
}

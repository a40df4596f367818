//! Group commit: the item writes and claims of many workers and jobs in one
//! transaction. Each write is conditional on the item's lease; counters and
//! the event log move once per job per batch.
//!
//! Lock order (shared with `jobs.rs`, which is why nothing deadlocks): the
//! job rows first, in id order, then their items.

use super::{
    db_error,
    rows::{counts_from_row, job_state},
};
use crate::{
    domain::{EventBody, JobId, JobState},
    store::{Batch, BatchOutcome, ClaimedItem, ItemWrite, Pulse, StoreError, WriteKind},
};
use sqlx::{PgConnection, PgPool, Row, types::Json};
use std::collections::{BTreeMap, HashMap};
use uuid::Uuid;

/// Longest error text stored for an item; the rest is cut.
const MAX_ERROR_BYTES: usize = 8 * 1024;

/// What a batch changes on one job row.
#[derive(Default)]
struct Delta {
    running: i64,
    succeeded: i64,
    failed: i64,
    cancelled: i64,
    events: Vec<EventBody>,
}

impl Delta {
    fn is_empty(&self) -> bool {
        self.running == 0
            && self.succeeded == 0
            && self.failed == 0
            && self.cancelled == 0
            && self.events.is_empty()
    }
}

/// Columns of one kind of write, ready to bind as arrays.
#[derive(Default)]
struct Columns {
    positions: Vec<usize>,
    jobs: Vec<Uuid>,
    indexes: Vec<i32>,
    leases: Vec<i64>,
}

impl Columns {
    fn push(&mut self, pos: usize, w: &ItemWrite) {
        self.positions.push(pos);
        self.jobs.push(w.job.0);
        self.indexes.push(w.index as i32);
        self.leases.push(w.lease);
    }

    /// Marks the writes whose (job, index) came back from RETURNING.
    fn mark(&self, returned: &[(Uuid, i32)], applied: &mut [bool]) {
        let at: HashMap<(Uuid, i32), usize> = self
            .jobs
            .iter()
            .zip(&self.indexes)
            .zip(&self.positions)
            .map(|((j, i), p)| ((*j, *i), *p))
            .collect();
        for key in returned {
            if let Some(&p) = at.get(key) {
                applied[p] = true;
            }
        }
    }
}

pub(super) async fn write_batch(pool: &PgPool, batch: &Batch) -> Result<BatchOutcome, StoreError> {
    let mut job_ids: Vec<Uuid> = batch
        .writes
        .iter()
        .map(|w| w.job.0)
        .chain(batch.claims.iter().map(|c| c.job.0))
        .collect();
    job_ids.sort_unstable();
    job_ids.dedup();

    let mut tx = pool.begin().await.map_err(db_error)?;
    let locked: Vec<(Uuid, String)> =
        sqlx::query_as("SELECT id, state FROM jobs WHERE id = ANY($1) ORDER BY id FOR UPDATE")
            .bind(&job_ids)
            .fetch_all(&mut *tx)
            .await
            .map_err(db_error)?;
    let mut states = HashMap::with_capacity(locked.len());
    for (id, state) in locked {
        states.insert(id, job_state(&state)?);
    }

    let mut applied = vec![false; batch.writes.len()];
    let mut deltas: BTreeMap<Uuid, Delta> = BTreeMap::new();
    apply_writes(&mut tx, &batch.writes, &mut applied, &mut deltas).await?;

    let mut claimed = Vec::with_capacity(batch.claims.len());
    for claim in &batch.claims {
        let items = if states.get(&claim.job.0) == Some(&JobState::Running) && claim.max > 0 {
            claim_items(&mut tx, claim.job, claim.max).await?
        } else {
            Vec::new()
        };
        deltas.entry(claim.job.0).or_default().running += items.len() as i64;
        claimed.push(items);
    }

    let pulses = update_jobs(&mut tx, &deltas).await?;
    tx.commit().await.map_err(db_error)?;
    Ok(BatchOutcome {
        applied,
        claimed,
        pulses,
    })
}

async fn apply_writes(
    conn: &mut PgConnection,
    writes: &[ItemWrite],
    applied: &mut [bool],
    deltas: &mut BTreeMap<Uuid, Delta>,
) -> Result<(), StoreError> {
    let (mut checkpoints, mut checkpoint_data) = (Columns::default(), Vec::<&[u8]>::new());
    let mut succeeded = Columns::default();
    let (mut failed, mut errors, mut permanent) = (Columns::default(), Vec::new(), Vec::new());
    let (mut released, mut refunds) = (Columns::default(), Vec::new());
    let mut cancelled = Columns::default();
    for (pos, w) in writes.iter().enumerate() {
        match &w.kind {
            WriteKind::Checkpoint(data) => {
                checkpoints.push(pos, w);
                checkpoint_data.push(data);
            }
            WriteKind::Succeeded => succeeded.push(pos, w),
            WriteKind::Failed {
                error,
                permanent: p,
            } => {
                failed.push(pos, w);
                errors.push(clean_error(error));
                permanent.push(*p);
            }
            WriteKind::Released { refund } => {
                released.push(pos, w);
                refunds.push(*refund);
            }
            WriteKind::Cancelled => cancelled.push(pos, w),
        }
    }

    if !checkpoints.jobs.is_empty() {
        let rows: Vec<(Uuid, i32)> = sqlx::query_as(
            "UPDATE items AS i SET checkpoint = u.cp, updated_at = now() \
             FROM UNNEST($1::uuid[], $2::int4[], $3::int8[], $4::bytea[]) \
                AS u(job_id, idx, lease, cp) \
             WHERE i.job_id = u.job_id AND i.idx = u.idx AND i.lease = u.lease AND i.state = 1 \
             RETURNING i.job_id, i.idx",
        )
        .bind(&checkpoints.jobs)
        .bind(&checkpoints.indexes)
        .bind(&checkpoints.leases)
        .bind(&checkpoint_data)
        .fetch_all(&mut *conn)
        .await
        .map_err(db_error)?;
        checkpoints.mark(&rows, applied);
    }

    if !succeeded.jobs.is_empty() {
        let rows: Vec<(Uuid, i32)> = sqlx::query_as(
            "UPDATE items AS i SET state = 2, lease = NULL, updated_at = now() \
             FROM UNNEST($1::uuid[], $2::int4[], $3::int8[]) AS u(job_id, idx, lease) \
             WHERE i.job_id = u.job_id AND i.idx = u.idx AND i.lease = u.lease AND i.state = 1 \
             RETURNING i.job_id, i.idx",
        )
        .bind(&succeeded.jobs)
        .bind(&succeeded.indexes)
        .bind(&succeeded.leases)
        .fetch_all(&mut *conn)
        .await
        .map_err(db_error)?;
        succeeded.mark(&rows, applied);
        for (job, _) in &rows {
            let d = deltas.entry(*job).or_default();
            d.running -= 1;
            d.succeeded += 1;
        }
    }

    if !failed.jobs.is_empty() {
        let rows = sqlx::query(
            "UPDATE items AS i SET \
                state = CASE WHEN u.permanent OR i.attempts >= j.max_attempts THEN 3 ELSE 0 END, \
                lease = NULL, last_error = u.err, updated_at = now() \
             FROM UNNEST($1::uuid[], $2::int4[], $3::int8[], $4::text[], $5::bool[]) \
                AS u(job_id, idx, lease, err, permanent), jobs AS j \
             WHERE j.id = u.job_id AND i.job_id = u.job_id AND i.idx = u.idx \
                AND i.lease = u.lease AND i.state = 1 \
             RETURNING i.job_id, i.idx, i.attempts, i.state, i.last_error",
        )
        .bind(&failed.jobs)
        .bind(&failed.indexes)
        .bind(&failed.leases)
        .bind(&errors)
        .bind(&permanent)
        .fetch_all(&mut *conn)
        .await
        .map_err(db_error)?;
        let mut returned = Vec::with_capacity(rows.len());
        for row in rows {
            let job: Uuid = row.try_get("job_id").map_err(db_error)?;
            let index: i32 = row.try_get("idx").map_err(db_error)?;
            let attempt: i32 = row.try_get("attempts").map_err(db_error)?;
            let state: i16 = row.try_get("state").map_err(db_error)?;
            let error: Option<String> = row.try_get("last_error").map_err(db_error)?;
            let d = deltas.entry(job).or_default();
            d.running -= 1;
            let will_retry = state == 0;
            if !will_retry {
                d.failed += 1;
            }
            d.events.push(EventBody::ItemFailed {
                index: index as u32,
                attempt: attempt as u32,
                error: error.unwrap_or_default(),
                will_retry,
            });
            returned.push((job, index));
        }
        failed.mark(&returned, applied);
    }

    if !released.jobs.is_empty() {
        let rows: Vec<(Uuid, i32)> = sqlx::query_as(
            "UPDATE items AS i SET state = 0, lease = NULL, updated_at = now(), \
                attempts = CASE WHEN u.refund THEN GREATEST(i.attempts - 1, 0) ELSE i.attempts END \
             FROM UNNEST($1::uuid[], $2::int4[], $3::int8[], $4::bool[]) \
                AS u(job_id, idx, lease, refund) \
             WHERE i.job_id = u.job_id AND i.idx = u.idx AND i.lease = u.lease AND i.state = 1 \
             RETURNING i.job_id, i.idx",
        )
        .bind(&released.jobs)
        .bind(&released.indexes)
        .bind(&released.leases)
        .bind(&refunds)
        .fetch_all(&mut *conn)
        .await
        .map_err(db_error)?;
        released.mark(&rows, applied);
        for (job, _) in &rows {
            deltas.entry(*job).or_default().running -= 1;
        }
    }

    if !cancelled.jobs.is_empty() {
        let rows: Vec<(Uuid, i32)> = sqlx::query_as(
            "UPDATE items AS i SET state = 4, lease = NULL, updated_at = now() \
             FROM UNNEST($1::uuid[], $2::int4[], $3::int8[]) AS u(job_id, idx, lease) \
             WHERE i.job_id = u.job_id AND i.idx = u.idx AND i.lease = u.lease AND i.state = 1 \
             RETURNING i.job_id, i.idx",
        )
        .bind(&cancelled.jobs)
        .bind(&cancelled.indexes)
        .bind(&cancelled.leases)
        .fetch_all(&mut *conn)
        .await
        .map_err(db_error)?;
        cancelled.mark(&rows, applied);
        for (job, _) in &rows {
            let d = deltas.entry(*job).or_default();
            d.running -= 1;
            d.cancelled += 1;
        }
    }
    Ok(())
}

/// Claims up to `max` of the job's lowest pending items under a new lease.
async fn claim_items(
    conn: &mut PgConnection,
    job: JobId,
    max: u32,
) -> Result<Vec<ClaimedItem>, StoreError> {
    let lease = new_lease();
    let rows = sqlx::query(
        "WITH c AS ( \
            SELECT idx FROM items WHERE job_id = $1 AND state = 0 \
            ORDER BY idx LIMIT $2 FOR UPDATE) \
         UPDATE items AS i SET state = 1, lease = $3, attempts = i.attempts + 1, \
            updated_at = now() \
         FROM c WHERE i.job_id = $1 AND i.idx = c.idx \
         RETURNING i.idx, i.payload, i.attempts, i.checkpoint",
    )
    .bind(job.0)
    .bind(max as i64)
    .bind(lease)
    .fetch_all(&mut *conn)
    .await
    .map_err(db_error)?;
    let mut items = rows
        .iter()
        .map(|row| {
            let index: i32 = row.try_get("idx").map_err(db_error)?;
            let attempt: i32 = row.try_get("attempts").map_err(db_error)?;
            Ok(ClaimedItem {
                index: index as u32,
                payload: row.try_get("payload").map_err(db_error)?,
                attempt: attempt as u32,
                checkpoint: row.try_get("checkpoint").map_err(db_error)?,
                lease,
            })
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    items.sort_unstable_by_key(|i| i.index);
    Ok(items)
}

/// Applies each job's counter changes, bumps its sequence by its number of
/// events and appends them.
async fn update_jobs(
    conn: &mut PgConnection,
    deltas: &BTreeMap<Uuid, Delta>,
) -> Result<Vec<Pulse>, StoreError> {
    let changed: Vec<(&Uuid, &Delta)> = deltas.iter().filter(|(_, d)| !d.is_empty()).collect();
    if changed.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<Uuid> = changed.iter().map(|(id, _)| **id).collect();
    let column = |f: fn(&Delta) -> i64| changed.iter().map(|(_, d)| f(d)).collect::<Vec<i64>>();
    let rows = sqlx::query(
        "UPDATE jobs AS j SET \
            running_items = j.running_items + d.running, \
            succeeded_items = j.succeeded_items + d.succeeded, \
            failed_items = j.failed_items + d.failed, \
            cancelled_items = j.cancelled_items + d.cancelled, \
            last_seq = j.last_seq + d.events, \
            updated_at = now() \
         FROM UNNEST($1::uuid[], $2::int8[], $3::int8[], $4::int8[], $5::int8[], $6::int8[]) \
            AS d(id, running, succeeded, failed, cancelled, events) \
         WHERE j.id = d.id \
         RETURNING j.id, j.state, j.total_items, j.running_items, j.succeeded_items, \
            j.failed_items, j.cancelled_items, j.last_seq",
    )
    .bind(&ids)
    .bind(column(|d| d.running))
    .bind(column(|d| d.succeeded))
    .bind(column(|d| d.failed))
    .bind(column(|d| d.cancelled))
    .bind(column(|d| d.events.len() as i64))
    .fetch_all(&mut *conn)
    .await
    .map_err(db_error)?;

    let (mut ev_jobs, mut ev_seqs, mut ev_kinds, mut ev_bodies) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut pulses = Vec::with_capacity(rows.len());
    for row in rows {
        let id: Uuid = row.try_get("id").map_err(db_error)?;
        let state: String = row.try_get("state").map_err(db_error)?;
        let last_seq: i64 = row.try_get("last_seq").map_err(db_error)?;
        let events = &deltas[&id].events;
        let first = last_seq - events.len() as i64 + 1;
        for (n, body) in events.iter().enumerate() {
            ev_jobs.push(id);
            ev_seqs.push(first + n as i64);
            ev_kinds.push(body.kind());
            ev_bodies.push(Json(body));
        }
        pulses.push(Pulse {
            job: JobId(id),
            state: job_state(&state)?,
            counts: counts_from_row(&row)?,
            last_seq: last_seq as u64,
        });
    }
    if !ev_jobs.is_empty() {
        sqlx::query(
            "INSERT INTO job_events (job_id, seq, at, kind, body) \
             SELECT u.job_id, u.seq, now(), u.kind, u.body \
             FROM UNNEST($1::uuid[], $2::int8[], $3::text[], $4::jsonb[]) \
                AS u(job_id, seq, kind, body)",
        )
        .bind(&ev_jobs)
        .bind(&ev_seqs)
        .bind(&ev_kinds)
        .bind(&ev_bodies)
        .execute(&mut *conn)
        .await
        .map_err(db_error)?;
    }
    Ok(pulses)
}

/// A fresh fencing token. Random 64 bits: unique across processes and
/// restarts without a shared counter.
fn new_lease() -> i64 {
    Uuid::new_v4().as_u64_pair().0 as i64
}

/// Error text as stored: at most [`MAX_ERROR_BYTES`], without the NUL
/// characters PostgreSQL text cannot hold.
fn clean_error(error: &str) -> String {
    let mut end = error.len().min(MAX_ERROR_BYTES);
    while !error.is_char_boundary(end) {
        end -= 1;
    }
    error[..end].replace('\0', "\u{FFFD}")
}

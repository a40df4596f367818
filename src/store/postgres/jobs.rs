//! Job-level transactions: creating a job with its items, guarded state
//! transitions with their effects and event, and recovery at boot.

use super::{
    db_error,
    rows::{self, job_state},
};
use crate::{
    domain::{
        Effect, EventBody, ItemPage, ItemSelection, ItemState, Job, JobId, JobPolicy, JobSpec,
        JobState, PauseMode, Provenance, RateLimit,
        cancel::{EndedItems, cancelled_event},
    },
    store::{
        Added, Created, ItemsCancelled, Lease, PruneLimits, Pruned, Recovery, StoreError,
        TransitionWrite,
    },
};
use sqlx::{PgConnection, PgPool, types::Json};
use std::time::Duration;

/// Items inserted per statement when creating a job: keeps each bind
/// message well under PostgreSQL's limits for the largest jobs.
const INSERT_CHUNK: usize = 50_000;

pub(super) async fn create_job(
    pool: &PgPool,
    id: JobId,
    spec: &JobSpec,
) -> Result<Created, StoreError> {
    let fingerprint = spec.fingerprint();
    if let Some(key) = &spec.request_id
        && let Some(found) = find_by_request_id(pool, spec, key, &fingerprint).await?
    {
        return Ok(found);
    }
    let state = spec.start.state();
    let mut tx = pool.begin().await.map_err(db_error)?;
    let inserted = sqlx::query(
        "INSERT INTO jobs (id, name, executor, state, concurrency, max_attempts, params, labels, \
         request_id, request_scope, request_fingerprint, total_items, last_seq, created_at, \
         started_at, updated_at, policy, exclusive, open) \
         VALUES ($1, $2, $3, $12, $4, $5, $6, $7, $8, $13, $9, $10, 1, now(), now(), now(), $11, \
         $14, $15) \
         ON CONFLICT (request_scope, request_id) DO NOTHING",
    )
    .bind(id.0)
    .bind(&spec.name)
    .bind(&spec.executor)
    .bind(spec.concurrency as i32)
    .bind(spec.max_attempts as i32)
    .bind(Json(&spec.params))
    .bind(Json(&spec.labels))
    .bind(&spec.request_id)
    .bind(&fingerprint)
    .bind(spec.items.len() as i64)
    .bind(Json(&spec.policy))
    .bind(state.as_str())
    .bind(&spec.request_scope)
    .bind(spec.exclusive)
    .bind(spec.open)
    .execute(&mut *tx)
    .await;
    let inserted = match inserted {
        Err(sqlx::Error::Database(e)) if e.constraint() == Some("jobs_live_exclusive_name") => {
            drop(tx);
            return Err(name_taken(pool, &spec.name).await);
        }
        other => other.map_err(db_error)?,
    };
    if inserted.rows_affected() == 0 {
        // A concurrent call with the same request id won the race.
        drop(tx);
        let key = spec.request_id.as_deref().unwrap_or_default();
        return find_by_request_id(pool, spec, key, &fingerprint)
            .await?
            .ok_or_else(|| StoreError::Internal("request id vanished".into()));
    }
    insert_items(&mut tx, id, 0, &spec.items).await?;
    if state == JobState::Paused {
        // Paused from the start: a pause record like PauseJob's, already
        // reached, which ResumeJob (or its resume_at) closes.
        sqlx::query(
            "INSERT INTO job_pauses (job_id, n, mode, reason, request_id, requested_at, \
             paused_at, resume_at) VALUES ($1, 1, $2, $3, $4, now(), now(), $5)",
        )
        .bind(id.0)
        .bind(PauseMode::Graceful.as_str())
        .bind(crate::store::STARTED_PAUSED)
        .bind(&spec.request_id)
        .bind(spec.start.resume_at())
        .execute(&mut *tx)
        .await
        .map_err(db_error)?;
    }
    insert_event(&mut tx, id, 1, &crate::store::started_event(spec)).await?;
    let job = rows::fetch_job(&mut tx, id)
        .await?
        .ok_or_else(|| StoreError::Internal("created job vanished".into()))?;
    tx.commit().await.map_err(db_error)?;
    Ok(Created { job, created: true })
}

/// Inserts `items` as the job's items from index `first`.
async fn insert_items(
    conn: &mut PgConnection,
    id: JobId,
    first: u64,
    items: &[String],
) -> Result<(), StoreError> {
    for (n, chunk) in items.chunks(INSERT_CHUNK).enumerate() {
        sqlx::query(
            "INSERT INTO items (job_id, idx, payload) \
             SELECT $1, $2 + t.ord - 1, t.payload \
             FROM UNNEST($3::text[]) WITH ORDINALITY AS t(payload, ord)",
        )
        .bind(id.0)
        .bind((first as usize + n * INSERT_CHUNK) as i64)
        .bind(chunk)
        .execute(&mut *conn)
        .await
        .map_err(db_error)?;
    }
    Ok(())
}

/// AddItems: see [`crate::store::Store::add_items`]. The job's row lock
/// orders pages, finishes and transitions: a page either lands before a
/// finish (which then finds its items pending and is refused) or finds the
/// job ended.
pub(super) async fn add_items(
    pool: &PgPool,
    id: JobId,
    page: &ItemPage,
    max_items: u64,
    requested_by: Option<&str>,
) -> Result<Added, StoreError> {
    let fingerprint = page.fingerprint();
    let mut tx = pool.begin().await.map_err(db_error)?;
    let row: Option<(String, i64, bool)> =
        sqlx::query_as("SELECT state, total_items, open FROM jobs WHERE id = $1 FOR UPDATE")
            .bind(id.0)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db_error)?;
    let Some((state, total, open)) = row else {
        return Err(StoreError::NotFound(id));
    };
    if let Some(key) = &page.request_id {
        let seen: Option<(i64, i32, Vec<u8>)> = sqlx::query_as(
            "SELECT first_index, added, fingerprint FROM job_item_pages \
             WHERE job_id = $1 AND request_id = $2",
        )
        .bind(id.0)
        .bind(key)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db_error)?;
        if let Some((first, count, stored)) = seen {
            if stored != fingerprint {
                return Err(StoreError::RequestIdReused(key.clone()));
            }
            let job = rows::fetch_job(&mut tx, id)
                .await?
                .ok_or(StoreError::NotFound(id))?;
            return Ok(Added {
                job,
                first: first as u32,
                count: count as u32,
            });
        }
    }
    let grows = page.growth(job_state(&state)?, total.max(0) as u64, open, max_items)?;
    if grows.changes() {
        insert_items(&mut tx, id, grows.first, &page.items).await?;
        let seq: i64 = sqlx::query_scalar(
            "UPDATE jobs SET total_items = total_items + $2, open = open AND NOT $3, \
             last_seq = last_seq + 1, updated_at = now() WHERE id = $1 RETURNING last_seq",
        )
        .bind(id.0)
        .bind(grows.adding as i64)
        .bind(page.close)
        .fetch_one(&mut *tx)
        .await
        .map_err(db_error)?;
        let event = grows.event(page, requested_by);
        insert_event(&mut tx, id, seq, &event).await?;
    }
    if let Some(key) = &page.request_id {
        sqlx::query(
            "INSERT INTO job_item_pages (job_id, request_id, first_index, added, closed, \
             fingerprint) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(id.0)
        .bind(key)
        .bind(grows.first as i64)
        .bind(grows.adding as i32)
        .bind(page.close)
        .bind(&fingerprint)
        .execute(&mut *tx)
        .await
        .map_err(db_error)?;
    }
    let job = rows::fetch_job(&mut tx, id)
        .await?
        .ok_or(StoreError::NotFound(id))?;
    tx.commit().await.map_err(db_error)?;
    Ok(Added {
        job,
        first: grows.first as u32,
        count: grows.adding as u32,
    })
}

/// CancelItems: see [`crate::store::Store::cancel_items`]. The job's row
/// is locked first (the lock order of `batch.rs`): no item write, claim or
/// transition of the job runs meanwhile, and the choice is checked against
/// the state and the items counted under that lock.
pub(super) async fn cancel_items(
    pool: &PgPool,
    id: JobId,
    which: &ItemSelection,
    reason: Option<&str>,
    requested_by: Option<&str>,
) -> Result<ItemsCancelled, StoreError> {
    let mut tx = pool.begin().await.map_err(db_error)?;
    let row: Option<(String, i64)> =
        sqlx::query_as("SELECT state, total_items FROM jobs WHERE id = $1 FOR UPDATE")
            .bind(id.0)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db_error)?;
    let Some((state, total)) = row else {
        return Err(StoreError::NotFound(id));
    };
    which.check(job_state(&state)?, total.max(0) as u64)?;
    let (first, last) = which.bounds();
    let indexes: Option<Vec<i32>> = which
        .indexes()
        .map(|indexes| indexes.iter().map(|&i| i as i32).collect());
    // The chosen items as they were, then ended: a statement's snapshot
    // sees them before its own update.
    let ended: Vec<(i32, i16, bool)> = sqlx::query_as(
        "WITH chosen AS ( \
             SELECT idx, state, retry_at IS NOT NULL AS waited FROM items \
              WHERE job_id = $1 AND idx BETWEEN $2 AND $3 AND state = ANY($4::int2[]) \
                AND ($5::int4[] IS NULL OR idx = ANY($5::int4[])) \
                FOR UPDATE), \
         ended AS ( \
             UPDATE items AS i SET state = 4, lease = NULL, retry_at = NULL, updated_at = now() \
               FROM chosen AS c WHERE i.job_id = $1 AND i.idx = c.idx \
             RETURNING c.idx, c.state, c.waited) \
         SELECT idx, state, waited FROM ended ORDER BY idx",
    )
    .bind(id.0)
    .bind(first as i32)
    .bind(last as i32)
    .bind(which.state_codes())
    .bind(indexes)
    .fetch_all(&mut *tx)
    .await
    .map_err(db_error)?;
    let running = ItemState::Running.code();
    let ended = EndedItems::of(
        ended
            .into_iter()
            .map(|(i, state, waited)| (i as u32, state == running, waited)),
    );
    if let Some(event) = cancelled_event(&ended.cancelled, reason, requested_by) {
        let seq: i64 = sqlx::query_scalar(
            "UPDATE jobs SET running_items = running_items - $2, \
             cancelled_items = cancelled_items + $3, last_seq = last_seq + 1, \
             updated_at = now() WHERE id = $1 RETURNING last_seq",
        )
        .bind(id.0)
        .bind(ended.interrupted.len() as i64)
        .bind(ended.cancelled.len() as i64)
        .fetch_one(&mut *tx)
        .await
        .map_err(db_error)?;
        insert_event(&mut tx, id, seq, &event).await?;
    }
    let job = rows::fetch_job(&mut tx, id)
        .await?
        .ok_or(StoreError::NotFound(id))?;
    tx.commit().await.map_err(db_error)?;
    Ok(ItemsCancelled::new(job, ended))
}

/// The live exclusive job that holds `name` (a start lost the race to
/// it), as an error.
async fn name_taken(pool: &PgPool, name: &str) -> StoreError {
    let found: Result<Option<uuid::Uuid>, _> = sqlx::query_scalar(
        "SELECT id FROM jobs WHERE name = $1 AND exclusive \
         AND state IN ('running', 'pausing', 'paused', 'cancelling')",
    )
    .bind(name)
    .fetch_optional(pool)
    .await;
    match found {
        Ok(Some(id)) => StoreError::NameTaken {
            name: name.to_string(),
            job: JobId(id),
        },
        // Ended meanwhile: the caller may try again.
        Ok(None) => StoreError::Unavailable(format!(
            "the live job named {name:?} ended while this one started; try again"
        )),
        Err(e) => db_error(e),
    }
}

/// The job an earlier call with this request id in the spec's scope
/// created, if the request was the same; `RequestIdReused` if it was not.
async fn find_by_request_id(
    pool: &PgPool,
    spec: &JobSpec,
    key: &str,
    fingerprint: &[u8],
) -> Result<Option<Created>, StoreError> {
    let found: Option<(uuid::Uuid, Option<Vec<u8>>)> = sqlx::query_as(
        "SELECT id, request_fingerprint FROM jobs WHERE request_scope = $1 AND request_id = $2",
    )
    .bind(&spec.request_scope)
    .bind(key)
    .fetch_optional(pool)
    .await
    .map_err(db_error)?;
    let Some((id, stored)) = found else {
        return Ok(None);
    };
    if stored.as_deref() != Some(fingerprint) {
        return Err(StoreError::RequestIdReused(key.to_string()));
    }
    let mut conn = pool.acquire().await.map_err(db_error)?;
    let job = rows::fetch_job(&mut conn, JobId(id))
        .await?
        .ok_or(StoreError::NotFound(JobId(id)))?;
    Ok(Some(Created {
        job,
        created: false,
    }))
}

pub(super) async fn insert_event(
    conn: &mut PgConnection,
    id: JobId,
    seq: i64,
    body: &EventBody,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO job_events (job_id, seq, at, kind, body) VALUES ($1, $2, now(), $3, $4)",
    )
    .bind(id.0)
    .bind(seq)
    .bind(body.kind())
    .bind(Json(body))
    .execute(&mut *conn)
    .await
    .map_err(db_error)?;
    Ok(())
}

/// Locks the job row and returns its state, or `NotFound`.
pub(super) async fn lock_job(conn: &mut PgConnection, id: JobId) -> Result<JobState, StoreError> {
    let state: Option<String> =
        sqlx::query_scalar("SELECT state FROM jobs WHERE id = $1 FOR UPDATE")
            .bind(id.0)
            .fetch_optional(&mut *conn)
            .await
            .map_err(db_error)?;
    job_state(&state.ok_or(StoreError::NotFound(id))?)
}

pub(super) async fn transition(
    pool: &PgPool,
    id: JobId,
    w: &TransitionWrite,
) -> Result<Job, StoreError> {
    transition_fenced(pool, id, w, None).await
}

/// Checks, with the job row locked, that `lease` is the job's valid lease.
pub(super) async fn check_lease(
    conn: &mut PgConnection,
    id: JobId,
    lease: &Lease,
) -> Result<(), StoreError> {
    let valid: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM job_leases WHERE job_id = $1 AND owner = $2 \
         AND epoch = $3 AND expires_at > now())",
    )
    .bind(id.0)
    .bind(&*lease.owner)
    .bind(lease.epoch)
    .fetch_one(&mut *conn)
    .await
    .map_err(db_error)?;
    if valid {
        Ok(())
    } else {
        Err(StoreError::Fenced(id))
    }
}

/// A transition, only under `lease` when one is given: one call of
/// `jobvisor_transition` (migration 0007), which checks and writes what
/// the steps below describe, in one round trip and one transaction.
///
/// With the job row locked: the job exists, `lease` (if any) is its valid
/// lease, it is in `w.from`, and a finish (SUCCEEDED, or FAILED because
/// items failed) finds no item pending or running — a fatal failure is not
/// checked, it comes with `Effect::ReleaseRunning`. Then the effects in
/// order, the new state with the next sequence, and its event.
pub(super) async fn transition_fenced(
    pool: &PgPool,
    id: JobId,
    w: &TransitionWrite,
    lease: Option<&Lease>,
) -> Result<Job, StoreError> {
    let effects: Vec<&str> = w.effects.iter().filter_map(|e| effect_name(*e)).collect();
    let open_mode = w.effects.iter().find_map(|e| match e {
        Effect::OpenPause(mode) => Some(mode.as_str()),
        _ => None,
    });
    let last_error = (w.to == JobState::Failed)
        .then(|| w.provenance.reason.clone())
        .flatten();
    let event = EventBody::StateChanged {
        from: Some(w.from),
        to: w.to,
        reason: w.provenance.reason.clone(),
        requested_by: w.provenance.requested_by.clone(),
        request_id: w.provenance.request_id.clone(),
        pause_mode: w.pause_mode,
    };
    let p = &w.provenance;
    let row = sqlx::query(rows::TRANSITION)
        .bind(id.0)
        .bind(w.from.as_str())
        .bind(w.to.as_str())
        .bind(&effects)
        .bind(open_mode)
        .bind(&p.reason)
        .bind(&p.requested_by)
        .bind(&p.request_id)
        .bind(w.resume_at)
        .bind(&last_error)
        .bind(event.kind())
        .bind(Json(&event))
        .bind(lease.map(|l| &*l.owner))
        .bind(lease.map(|l| l.epoch))
        .fetch_one(pool)
        .await;
    match row {
        Ok(row) => rows::job_from_row(&row),
        Err(e) => match transition_error(id, w, e) {
            StoreError::NotFinished {
                pending, running, ..
            } if pending > 0 => Err(StoreError::NotFinished {
                pending,
                running,
                retry_in: retry_in(pool, id).await?,
            }),
            e => Err(e),
        },
    }
}

/// When every pending item of the job waits for its retry's delay: how
/// long until the first may be claimed.
async fn retry_in(pool: &PgPool, id: JobId) -> Result<Option<Duration>, StoreError> {
    let ms: Option<i64> = sqlx::query_scalar(
        "SELECT CASE WHEN bool_and(COALESCE(retry_at > now(), false)) \
                THEN ceil(EXTRACT(EPOCH FROM min(retry_at) - now()) * 1000)::bigint END \
         FROM items WHERE job_id = $1 AND state = 0",
    )
    .bind(id.0)
    .fetch_one(pool)
    .await
    .map_err(db_error)?;
    Ok(ms.map(|ms| Duration::from_millis(ms.max(0) as u64)))
}

/// `Effect`'s name in `jobvisor_transition`; `None` for runtime-only ones.
fn effect_name(effect: Effect) -> Option<&'static str> {
    Some(match effect {
        Effect::OpenPause(_) => "open_pause",
        Effect::MarkPaused => "mark_paused",
        Effect::ClosePause => "close_pause",
        Effect::ReleaseRunning => "release_running",
        Effect::CancelRemaining => "cancel_remaining",
        Effect::ResetFailed => "reset_failed",
        Effect::End => "end",
        Effect::Reopen => "reopen",
        Effect::Interrupt => return None,
    })
}

/// The refusals `jobvisor_transition` raises, as the store's errors.
fn transition_error(id: JobId, w: &TransitionWrite, e: sqlx::Error) -> StoreError {
    let sqlx::Error::Database(db) = &e else {
        return db_error(e);
    };
    let message = db.message();
    match db.code().as_deref() {
        Some("JV404") => StoreError::NotFound(id),
        Some("JV423") => StoreError::Fenced(id),
        Some("JV409") => match job_state(message) {
            Ok(current) => StoreError::Conflict {
                expected: w.from,
                current,
            },
            Err(e) => e,
        },
        Some("JV426") => StoreError::JobOpen,
        Some("JV425") => {
            let mut counts = message.split(' ').map(str::parse::<u64>);
            match (counts.next(), counts.next()) {
                (Some(Ok(pending)), Some(Ok(running))) => StoreError::NotFinished {
                    pending,
                    running,
                    retry_in: None,
                },
                _ => StoreError::Internal(format!("unexpected refusal to finish: {message}")),
            }
        }
        _ => db_error(e),
    }
}

/// Locks a job whose settings may still change; `Conflict` with its state
/// if it has ended.
async fn lock_live(conn: &mut PgConnection, id: JobId) -> Result<(), StoreError> {
    let state = lock_job(conn, id).await?;
    if state.is_terminal() {
        return Err(StoreError::Conflict {
            expected: JobState::Running,
            current: state,
        });
    }
    Ok(())
}

/// Appends the event of a setting's change as `seq`, commits, and returns
/// the job as it is now.
async fn commit_change(
    mut tx: sqlx::Transaction<'_, sqlx::Postgres>,
    id: JobId,
    seq: i64,
    event: &EventBody,
) -> Result<Job, StoreError> {
    insert_event(&mut tx, id, seq, event).await?;
    let job = rows::fetch_job(&mut tx, id)
        .await?
        .ok_or(StoreError::NotFound(id))?;
    tx.commit().await.map_err(db_error)?;
    Ok(job)
}

pub(super) async fn set_concurrency(
    pool: &PgPool,
    id: JobId,
    concurrency: u32,
    p: &Provenance,
) -> Result<Job, StoreError> {
    let mut tx = pool.begin().await.map_err(db_error)?;
    lock_live(&mut tx, id).await?;
    let from: i32 = sqlx::query_scalar("SELECT concurrency FROM jobs WHERE id = $1")
        .bind(id.0)
        .fetch_one(&mut *tx)
        .await
        .map_err(db_error)?;
    let seq: i64 = sqlx::query_scalar(
        "UPDATE jobs SET concurrency = $2, last_seq = last_seq + 1, updated_at = now() \
         WHERE id = $1 RETURNING last_seq",
    )
    .bind(id.0)
    .bind(concurrency as i32)
    .fetch_one(&mut *tx)
    .await
    .map_err(db_error)?;
    let event = EventBody::ConcurrencyChanged {
        from: from as u32,
        to: concurrency,
        requested_by: p.requested_by.clone(),
        request_id: p.request_id.clone(),
    };
    commit_change(tx, id, seq, &event).await
}

pub(super) async fn set_rate_limit(
    pool: &PgPool,
    id: JobId,
    rate: RateLimit,
    p: &Provenance,
) -> Result<Job, StoreError> {
    let mut tx = pool.begin().await.map_err(db_error)?;
    lock_live(&mut tx, id).await?;
    let Json(mut policy): Json<JobPolicy> =
        sqlx::query_scalar("SELECT policy FROM jobs WHERE id = $1")
            .bind(id.0)
            .fetch_one(&mut *tx)
            .await
            .map_err(db_error)?;
    let from = policy.rate();
    policy.set_rate(rate);
    let seq: i64 = sqlx::query_scalar(
        "UPDATE jobs SET policy = $2, last_seq = last_seq + 1, updated_at = now() \
         WHERE id = $1 RETURNING last_seq",
    )
    .bind(id.0)
    .bind(Json(&policy))
    .fetch_one(&mut *tx)
    .await
    .map_err(db_error)?;
    let event = EventBody::RateLimitChanged {
        from,
        to: rate,
        requested_by: p.requested_by.clone(),
        request_id: p.request_id.clone(),
    };
    commit_change(tx, id, seq, &event).await
}

pub(super) async fn delete_job(pool: &PgPool, id: JobId) -> Result<Job, StoreError> {
    let mut tx = pool.begin().await.map_err(db_error)?;
    let state = lock_job(&mut tx, id).await?;
    crate::domain::deletable(state).map_err(|_| StoreError::NotEnded(state))?;
    let job = rows::fetch_job(&mut tx, id)
        .await?
        .ok_or(StoreError::NotFound(id))?;
    // Its items go with it (trigger jobs_deleted), its events, pauses and
    // lease by their foreign keys.
    sqlx::query("DELETE FROM jobs WHERE id = $1")
        .bind(id.0)
        .execute(&mut *tx)
        .await
        .map_err(db_error)?;
    tx.commit().await.map_err(db_error)?;
    Ok(job)
}

pub(super) async fn delete_ended(
    pool: &PgPool,
    before: chrono::DateTime<chrono::Utc>,
    limits: PruneLimits,
) -> Result<Pruned, StoreError> {
    let mut tx = pool.begin().await.map_err(db_error)?;
    // Locked, so that a RetryFailedItems cannot reopen one meanwhile;
    // skipped if locked, so that replicas pruning at once share the work.
    let candidates: Vec<(uuid::Uuid, i64)> = sqlx::query_as(
        "SELECT id, total_items FROM jobs \
         WHERE state IN ('succeeded', 'failed', 'cancelled') AND ended_at < $1 \
         ORDER BY ended_at LIMIT $2 FOR UPDATE SKIP LOCKED",
    )
    .bind(before)
    .bind(i64::from(limits.jobs))
    .fetch_all(&mut *tx)
    .await
    .map_err(db_error)?;
    let pruned = limits.take(&candidates);
    if pruned.jobs.is_empty() {
        return Ok(pruned);
    }
    let raw: Vec<uuid::Uuid> = pruned.jobs.iter().map(|id| id.0).collect();
    sqlx::query("DELETE FROM jobs WHERE id = ANY($1)")
        .bind(&raw)
        .execute(&mut *tx)
        .await
        .map_err(db_error)?;
    tx.commit().await.map_err(db_error)?;
    Ok(pruned)
}

/// Reclaim: see [`crate::store::Store::reclaim`]. Not the jobs table:
/// its rows are few and autovacuum's pace suits them. No truncation of
/// the tables' empty ends: that takes an exclusive lock (briefly, but a
/// standby replays it and cancels its queries), and the room is reused
/// anyway.
pub(super) async fn reclaim(pool: &PgPool) -> Result<(), StoreError> {
    // As a simple query: VACUUM cannot be a prepared statement's.
    sqlx::raw_sql("VACUUM (SKIP_LOCKED, TRUNCATE false) items, job_events")
        .execute(pool)
        .await
        .map_err(db_error)?;
    Ok(())
}

pub(super) async fn due_resumes(
    pool: &PgPool,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<Vec<JobId>, StoreError> {
    let ids: Vec<uuid::Uuid> = sqlx::query_scalar(
        "SELECT p.job_id FROM job_pauses AS p JOIN jobs AS j ON j.id = p.job_id \
         WHERE p.resume_at IS NOT NULL AND p.resume_at <= $1 AND p.resumed_at IS NULL \
           AND j.state IN ('pausing', 'paused') \
         ORDER BY p.resume_at LIMIT 1000",
    )
    .bind(now)
    .fetch_all(pool)
    .await
    .map_err(db_error)?;
    Ok(ids.into_iter().map(JobId).collect())
}

pub(super) async fn append_event(
    pool: &PgPool,
    id: JobId,
    body: &EventBody,
) -> Result<u64, StoreError> {
    let mut tx = pool.begin().await.map_err(db_error)?;
    let seq: Option<i64> = sqlx::query_scalar(
        "UPDATE jobs SET last_seq = last_seq + 1 WHERE id = $1 RETURNING last_seq",
    )
    .bind(id.0)
    .fetch_optional(&mut *tx)
    .await
    .map_err(db_error)?;
    let seq = seq.ok_or(StoreError::NotFound(id))?;
    insert_event(&mut tx, id, seq, body).await?;
    tx.commit().await.map_err(db_error)?;
    Ok(seq as u64)
}

pub(super) async fn release_items(
    pool: &PgPool,
    id: JobId,
    lease: Option<&Lease>,
) -> Result<u64, StoreError> {
    let mut tx = pool.begin().await.map_err(db_error)?;
    lock_job(&mut tx, id).await?;
    if let Some(lease) = lease {
        check_lease(&mut tx, id, lease).await?;
    }
    let released = release_running(&mut tx, id).await?;
    tx.commit().await.map_err(db_error)?;
    Ok(released)
}

/// Puts the job's RUNNING items back to PENDING, refunding the attempt, and
/// zeroes its running counter. The caller holds the job row lock.
pub(super) async fn release_running(conn: &mut PgConnection, id: JobId) -> Result<u64, StoreError> {
    release_running_of(conn, &[id.0]).await
}

/// [`release_running`] for several jobs in one statement; returns the items
/// released in all. The caller holds the jobs' row locks.
async fn release_running_of(
    conn: &mut PgConnection,
    ids: &[uuid::Uuid],
) -> Result<u64, StoreError> {
    let released: i64 = sqlx::query_scalar(
        "WITH released AS ( \
            UPDATE items SET state = 0, lease = NULL, attempts = GREATEST(attempts - 1, 0), \
            updated_at = now() WHERE job_id = ANY($1) AND state = 1 RETURNING 1), \
         counted AS (SELECT count(*) AS n FROM released), \
         zeroed AS (UPDATE jobs SET running_items = 0 WHERE id = ANY($1) AND running_items <> 0) \
         SELECT n FROM counted",
    )
    .bind(ids)
    .fetch_one(&mut *conn)
    .await
    .map_err(db_error)?;
    Ok(released as u64)
}

pub(super) async fn recover(pool: &PgPool) -> Result<Recovery, StoreError> {
    // One transaction for every unfinished job: lock them (a row changed
    // meanwhile by another process is re-checked by the lock and left out
    // if it no longer matches), release their running items and zero
    // their running counters. A thousand jobs cost four round trips and
    // one commit instead of a transaction each (1.1 s of a restart with
    // 500 jobs on a slow 2-core machine).
    let mut tx = pool.begin().await.map_err(db_error)?;
    let unfinished: Vec<(uuid::Uuid, String)> = sqlx::query_as(
        "SELECT id, state FROM jobs WHERE state IN ('running', 'pausing', 'paused', 'cancelling') \
         ORDER BY created_at FOR UPDATE",
    )
    .fetch_all(&mut *tx)
    .await
    .map_err(db_error)?;
    let ids: Vec<uuid::Uuid> = unfinished.iter().map(|(id, _)| *id).collect();
    let released = release_running_of(&mut tx, &ids).await?;
    tx.commit().await.map_err(db_error)?;
    let mut recovery = Recovery {
        released_items: released,
        ..Recovery::default()
    };
    for (id, state) in unfinished {
        let id = JobId(id);
        let state = job_state(&state)?;
        match state {
            JobState::Running => recovery.running.push(id),
            JobState::Paused => recovery.paused.push(id),
            state => {
                if let Some(write) = TransitionWrite::recovered(state) {
                    match transition(pool, id, &write).await {
                        Ok(_) => recovery.settled.push((id, write.to)),
                        Err(StoreError::Conflict { .. }) => {}
                        Err(e) => return Err(e),
                    }
                }
            }
        }
    }
    Ok(recovery)
}

//! Job-level transactions: creating a job with its items, guarded state
//! transitions with their effects and event, and events that change no
//! state. Every function here is one `BEGIN IMMEDIATE` transaction, so a
//! read-check-write sequence inside it cannot race another writer.

use super::{
    begin_write,
    codec::{body_to_json, job_state, map_to_json, micros, now},
    db_error,
    reads::fetch_job,
};
use crate::{
    domain::{
        Effect, EventBody, ItemPage, ItemSelection, ItemState, Job, JobId, JobPolicy, JobSpec,
        JobState, PauseMode, Provenance, RateLimit,
        cancel::{EndedItems, cancelled_event},
    },
    store::{Added, Created, ItemsCancelled, PruneLimits, Pruned, StoreError, TransitionWrite},
};
use chrono::{DateTime, Utc};
use sqlx::{QueryBuilder, Sqlite, SqliteConnection, SqlitePool};
use std::time::Duration;

/// Items inserted per statement when creating a job: three variables per
/// row stays well under SQLite's 32,766 variables per statement.
const INSERT_CHUNK: usize = 5_000;

pub(super) async fn create_job(
    pool: &SqlitePool,
    id: JobId,
    spec: &JobSpec,
) -> Result<Created, StoreError> {
    let fingerprint = spec.fingerprint();
    // The write lock is held from the request-id lookup to the commit, so
    // concurrent calls with one key see each other: one inserts, the
    // others find its job.
    let mut tx = begin_write(pool).await?;
    if let Some(key) = &spec.request_id {
        let found: Option<(uuid::Uuid, Option<Vec<u8>>)> = sqlx::query_as(
            "SELECT id, request_fingerprint FROM jobs \
                 WHERE request_scope = ?1 AND request_id = ?2",
        )
        .bind(&spec.request_scope)
        .bind(key)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db_error)?;
        if let Some((existing, stored)) = found {
            if stored.as_deref() != Some(fingerprint.as_slice()) {
                return Err(StoreError::RequestIdReused(key.clone()));
            }
            let job = fetch_job(&mut tx, JobId(existing))
                .await?
                .ok_or(StoreError::NotFound(JobId(existing)))?;
            return Ok(Created {
                job,
                created: false,
            });
        }
    }
    if spec.exclusive {
        // Under the write lock: no other start can take the name now. (The
        // partial unique index of migration 0018 guards it as well.)
        let holder: Option<uuid::Uuid> = sqlx::query_scalar(
            "SELECT id FROM jobs WHERE name = ?1 AND exclusive = 1 \
             AND state IN ('running', 'pausing', 'paused', 'cancelling')",
        )
        .bind(&spec.name)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db_error)?;
        if let Some(holder) = holder {
            return Err(StoreError::NameTaken {
                name: spec.name.clone(),
                job: JobId(holder),
            });
        }
    }
    let state = spec.start.state();
    let at = micros(now());
    sqlx::query(
        "INSERT INTO jobs (id, name, executor, state, concurrency, max_attempts, params, labels, \
         request_id, request_scope, request_fingerprint, total_items, last_seq, created_at, \
         started_at, updated_at, policy, exclusive, open) \
         VALUES (?1, ?2, ?3, ?13, ?4, ?5, ?6, ?7, ?8, ?14, ?9, ?10, 1, ?11, ?11, ?11, ?12, ?15, \
         ?16)",
    )
    .bind(id.0)
    .bind(&spec.name)
    .bind(&spec.executor)
    .bind(i64::from(spec.concurrency))
    .bind(i64::from(spec.max_attempts))
    .bind(map_to_json(&spec.params)?)
    .bind(map_to_json(&spec.labels)?)
    .bind(&spec.request_id)
    .bind(&fingerprint)
    .bind(spec.items.len() as i64)
    .bind(at)
    .bind(serde_json::to_string(&spec.policy).map_err(|e| StoreError::Internal(e.to_string()))?)
    .bind(state.as_str())
    .bind(&spec.request_scope)
    .bind(spec.exclusive)
    .bind(spec.open)
    .execute(&mut *tx)
    .await
    .map_err(db_error)?;
    insert_items(&mut tx, id, 0, &spec.items).await?;
    if state == JobState::Paused {
        // Paused from the start: a pause record like PauseJob's, already
        // reached, which ResumeJob (or its resume_at) closes.
        sqlx::query(
            "INSERT INTO job_pauses (job_id, n, mode, reason, request_id, requested_at, \
             paused_at, resume_at) VALUES (?1, 1, ?2, ?3, ?4, ?5, ?5, ?6)",
        )
        .bind(id.0)
        .bind(PauseMode::Graceful.as_str())
        .bind(crate::store::STARTED_PAUSED)
        .bind(&spec.request_id)
        .bind(at)
        .bind(spec.start.resume_at().map(micros))
        .execute(&mut *tx)
        .await
        .map_err(db_error)?;
    }
    let started = crate::store::started_event(spec);
    insert_event(&mut tx, id, 1, at, &started).await?;
    let job = fetch_job(&mut tx, id)
        .await?
        .ok_or_else(|| StoreError::Internal("created job vanished".into()))?;
    tx.commit().await.map_err(db_error)?;
    Ok(Created { job, created: true })
}

/// Inserts `items` as the job's items from index `first`.
async fn insert_items(
    conn: &mut SqliteConnection,
    id: JobId,
    first: u64,
    items: &[String],
) -> Result<(), StoreError> {
    for (n, chunk) in items.chunks(INSERT_CHUNK).enumerate() {
        let first = (first as usize + n * INSERT_CHUNK) as i64;
        let mut insert = QueryBuilder::<Sqlite>::new("INSERT INTO items (job_id, idx, payload) ");
        insert.push_values(chunk.iter().enumerate(), |mut row, (k, payload)| {
            row.push_bind(id.0)
                .push_bind(first + k as i64)
                .push_bind(payload.as_str());
        });
        insert.build().execute(&mut *conn).await.map_err(db_error)?;
    }
    Ok(())
}

/// AddItems: see [`crate::store::Store::add_items`]. Under the store's
/// write lock from the request-id lookup to the commit.
pub(super) async fn add_items(
    pool: &SqlitePool,
    id: JobId,
    page: &ItemPage,
    max_items: u64,
    requested_by: Option<&str>,
) -> Result<Added, StoreError> {
    let fingerprint = page.fingerprint();
    let mut tx = begin_write(pool).await?;
    let current = current_state(&mut tx, id).await?;
    if let Some(key) = &page.request_id {
        let seen: Option<(i64, i64, Vec<u8>)> = sqlx::query_as(
            "SELECT first_index, added, fingerprint FROM job_item_pages \
             WHERE job_id = ?1 AND request_id = ?2",
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
            let job = fetch_job(&mut tx, id)
                .await?
                .ok_or(StoreError::NotFound(id))?;
            return Ok(Added {
                job,
                first: first as u32,
                count: count as u32,
            });
        }
    }
    let (total, open): (i64, bool) =
        sqlx::query_as("SELECT total_items, open FROM jobs WHERE id = ?1")
            .bind(id.0)
            .fetch_one(&mut *tx)
            .await
            .map_err(db_error)?;
    let grows = page.growth(current, total.max(0) as u64, open, max_items)?;
    if grows.changes() {
        insert_items(&mut tx, id, grows.first, &page.items).await?;
        let at = micros(now());
        let seq: i64 = sqlx::query_scalar(
            "UPDATE jobs SET total_items = total_items + ?2, open = open AND NOT ?3, \
             last_seq = last_seq + 1, updated_at = ?4 WHERE id = ?1 RETURNING last_seq",
        )
        .bind(id.0)
        .bind(grows.adding as i64)
        .bind(page.close)
        .bind(at)
        .fetch_one(&mut *tx)
        .await
        .map_err(db_error)?;
        let event = grows.event(page, requested_by);
        insert_event(&mut tx, id, seq, at, &event).await?;
    }
    if let Some(key) = &page.request_id {
        sqlx::query(
            "INSERT INTO job_item_pages (job_id, request_id, first_index, added, closed, \
             fingerprint) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )
        .bind(id.0)
        .bind(key)
        .bind(grows.first as i64)
        .bind(grows.adding as i64)
        .bind(page.close)
        .bind(&fingerprint)
        .execute(&mut *tx)
        .await
        .map_err(db_error)?;
    }
    let job = fetch_job(&mut tx, id)
        .await?
        .ok_or(StoreError::NotFound(id))?;
    tx.commit().await.map_err(db_error)?;
    Ok(Added {
        job,
        first: grows.first as u32,
        count: grows.adding as u32,
    })
}

/// CancelItems: see [`crate::store::Store::cancel_items`]. Under the
/// store's write lock from the job's read to the commit.
pub(super) async fn cancel_items(
    pool: &SqlitePool,
    id: JobId,
    which: &ItemSelection,
    reason: Option<&str>,
    requested_by: Option<&str>,
) -> Result<ItemsCancelled, StoreError> {
    let mut tx = begin_write(pool).await?;
    let current = current_state(&mut tx, id).await?;
    let total: i64 = sqlx::query_scalar("SELECT total_items FROM jobs WHERE id = ?1")
        .bind(id.0)
        .fetch_one(&mut *tx)
        .await
        .map_err(db_error)?;
    which.check(current, total.max(0) as u64)?;
    let (first, last) = which.bounds();
    // The lists go in as JSON arrays: a call may name 100,000 indexes,
    // more than a statement has variables.
    let states = serde_json::to_string(&which.state_codes())
        .map_err(|e| StoreError::Internal(e.to_string()))?;
    let indexes = which
        .indexes()
        .map(serde_json::to_string)
        .transpose()
        .map_err(|e| StoreError::Internal(e.to_string()))?;
    macro_rules! chosen {
        () => {
            "job_id = ?1 AND idx BETWEEN ?2 AND ?3 \
             AND state IN (SELECT value FROM json_each(?4)) \
             AND (?5 IS NULL OR idx IN (SELECT value FROM json_each(?5)))"
        };
    }
    let chosen: Vec<(i64, i64, bool)> = sqlx::query_as(concat!(
        "SELECT idx, state, retry_at IS NOT NULL FROM items WHERE ",
        chosen!(),
        " ORDER BY idx"
    ))
    .bind(id.0)
    .bind(i64::from(first))
    .bind(i64::from(last))
    .bind(&states)
    .bind(&indexes)
    .fetch_all(&mut *tx)
    .await
    .map_err(db_error)?;
    let running = i64::from(ItemState::Running.code());
    let ended = EndedItems::of(
        chosen
            .into_iter()
            .map(|(i, state, waited)| (i as u32, state == running, waited)),
    );
    if let Some(event) = cancelled_event(&ended.cancelled, reason, requested_by) {
        let at = micros(now());
        sqlx::query(concat!(
            "UPDATE items SET state = 4, lease = NULL, retry_at = NULL, updated_at = ?6 WHERE ",
            chosen!()
        ))
        .bind(id.0)
        .bind(i64::from(first))
        .bind(i64::from(last))
        .bind(&states)
        .bind(&indexes)
        .bind(at)
        .execute(&mut *tx)
        .await
        .map_err(db_error)?;
        let seq: i64 = sqlx::query_scalar(
            "UPDATE jobs SET running_items = running_items - ?2, \
             cancelled_items = cancelled_items + ?3, last_seq = last_seq + 1, updated_at = ?4 \
             WHERE id = ?1 RETURNING last_seq",
        )
        .bind(id.0)
        .bind(ended.interrupted.len() as i64)
        .bind(ended.cancelled.len() as i64)
        .bind(at)
        .fetch_one(&mut *tx)
        .await
        .map_err(db_error)?;
        insert_event(&mut tx, id, seq, at, &event).await?;
    }
    let job = fetch_job(&mut tx, id)
        .await?
        .ok_or(StoreError::NotFound(id))?;
    tx.commit().await.map_err(db_error)?;
    Ok(ItemsCancelled::new(job, ended))
}

pub(super) async fn insert_event(
    conn: &mut SqliteConnection,
    id: JobId,
    seq: i64,
    at: i64,
    body: &EventBody,
) -> Result<(), StoreError> {
    sqlx::query("INSERT INTO job_events (job_id, seq, at, kind, body) VALUES (?1, ?2, ?3, ?4, ?5)")
        .bind(id.0)
        .bind(seq)
        .bind(at)
        .bind(body.kind())
        .bind(body_to_json(body)?)
        .execute(&mut *conn)
        .await
        .map_err(db_error)?;
    Ok(())
}

/// The job's state, or `NotFound`. Inside a write transaction the row
/// cannot change until the commit.
pub(super) async fn current_state(
    conn: &mut SqliteConnection,
    id: JobId,
) -> Result<JobState, StoreError> {
    let state: Option<String> = sqlx::query_scalar("SELECT state FROM jobs WHERE id = ?1")
        .bind(id.0)
        .fetch_optional(&mut *conn)
        .await
        .map_err(db_error)?;
    job_state(&state.ok_or(StoreError::NotFound(id))?)
}

pub(super) async fn transition(
    pool: &SqlitePool,
    id: JobId,
    w: &TransitionWrite,
) -> Result<Job, StoreError> {
    let mut tx = begin_write(pool).await?;
    let current = current_state(&mut tx, id).await?;
    if current != w.from {
        return Err(StoreError::Conflict {
            expected: w.from,
            current,
        });
    }
    if matches!(w.to, JobState::Succeeded | JobState::Failed) {
        check_finished(&mut tx, id, w).await?;
    }
    let at = now();
    for effect in &w.effects {
        apply_effect(&mut tx, id, *effect, w, at).await?;
    }
    let last_error = (w.to == JobState::Failed)
        .then(|| w.provenance.reason.clone())
        .flatten();
    let seq: i64 = sqlx::query_scalar(
        "UPDATE jobs SET state = ?2, last_seq = last_seq + 1, updated_at = ?3, \
         last_error = COALESCE(?4, last_error) WHERE id = ?1 RETURNING last_seq",
    )
    .bind(id.0)
    .bind(w.to.as_str())
    .bind(micros(at))
    .bind(&last_error)
    .fetch_one(&mut *tx)
    .await
    .map_err(db_error)?;
    let event = EventBody::StateChanged {
        from: Some(w.from),
        to: w.to,
        reason: w.provenance.reason.clone(),
        requested_by: w.provenance.requested_by.clone(),
        request_id: w.provenance.request_id.clone(),
        pause_mode: w.pause_mode,
    };
    insert_event(&mut tx, id, seq, micros(at), &event).await?;
    let job = fetch_job(&mut tx, id)
        .await?
        .ok_or(StoreError::NotFound(id))?;
    tx.commit().await.map_err(db_error)?;
    Ok(job)
}

/// A job may only finish (Succeeded, or Failed because items failed) once
/// no item is pending or running. A fatal failure (from a state other than
/// a finish) is not checked: it is decided with `Effect::ReleaseRunning`.
async fn check_finished(
    conn: &mut SqliteConnection,
    id: JobId,
    w: &TransitionWrite,
) -> Result<(), StoreError> {
    if w.effects.contains(&Effect::ReleaseRunning) {
        return Ok(());
    }
    // An open job (AddItems) does not finish until it is closed.
    let open: bool = sqlx::query_scalar("SELECT open FROM jobs WHERE id = ?1")
        .bind(id.0)
        .fetch_one(&mut *conn)
        .await
        .map_err(db_error)?;
    if open {
        return Err(StoreError::JobOpen);
    }
    let (pending, running): (i64, i64) = sqlx::query_as(
        "SELECT total_items - running_items - succeeded_items - failed_items - cancelled_items, \
         running_items FROM jobs WHERE id = ?1",
    )
    .bind(id.0)
    .fetch_one(&mut *conn)
    .await
    .map_err(db_error)?;
    if pending != 0 || running != 0 {
        // Whether every pending item waits for its retry's delay, and the
        // first of those delays.
        let now = micros(now());
        let (claimable, first): (i64, Option<i64>) = sqlx::query_as(
            "SELECT COUNT(*) FILTER (WHERE retry_at IS NULL OR retry_at <= ?2), MIN(retry_at) \
             FROM items WHERE job_id = ?1 AND state = 0",
        )
        .bind(id.0)
        .bind(now)
        .fetch_one(&mut *conn)
        .await
        .map_err(db_error)?;
        let retry_in = match first {
            Some(at) if claimable == 0 && pending > 0 => {
                Some(Duration::from_micros(at.saturating_sub(now).max(0) as u64))
            }
            _ => None,
        };
        return Err(StoreError::NotFinished {
            pending: pending.max(0) as u64,
            running: running.max(0) as u64,
            retry_in,
        });
    }
    Ok(())
}

/// Applies one durable effect of a transition. Item counters move in the
/// same transaction as the items they count.
async fn apply_effect(
    conn: &mut SqliteConnection,
    id: JobId,
    effect: Effect,
    w: &TransitionWrite,
    at: DateTime<Utc>,
) -> Result<(), StoreError> {
    let p = &w.provenance;
    let at = micros(at);
    // (statement, whether it binds the time as ?2), run in order.
    let statements: &[(&'static str, bool)] = match effect {
        Effect::OpenPause(mode) => {
            sqlx::query(
                "INSERT INTO job_pauses (job_id, n, mode, reason, requested_by, request_id, \
                 requested_at, resume_at) \
                 SELECT ?1, COALESCE(MAX(n), 0) + 1, ?2, ?3, ?4, ?5, ?6, ?7 \
                 FROM job_pauses WHERE job_id = ?1",
            )
            .bind(id.0)
            .bind(mode.as_str())
            .bind(&p.reason)
            .bind(&p.requested_by)
            .bind(&p.request_id)
            .bind(at)
            .bind(w.resume_at.map(micros))
            .execute(&mut *conn)
            .await
            .map_err(db_error)?;
            return Ok(());
        }
        Effect::ReleaseRunning => {
            release_running_items(conn, id, at).await?;
            return Ok(());
        }
        Effect::MarkPaused => &[(
            "UPDATE job_pauses SET paused_at = ?2 \
             WHERE job_id = ?1 AND paused_at IS NULL AND resumed_at IS NULL",
            true,
        )],
        Effect::ClosePause => &[(
            "UPDATE job_pauses SET resumed_at = ?2 WHERE job_id = ?1 AND resumed_at IS NULL",
            true,
        )],
        // Counters first: they count the items the next statement changes.
        Effect::CancelRemaining => &[
            (
                "UPDATE jobs SET running_items = 0, cancelled_items = cancelled_items + \
                    (SELECT count(*) FROM items WHERE job_id = ?1 AND state IN (0, 1)) \
                 WHERE id = ?1",
                false,
            ),
            (
                "UPDATE items SET state = 4, lease = NULL, updated_at = ?2 \
                 WHERE job_id = ?1 AND state IN (0, 1)",
                true,
            ),
        ],
        Effect::ResetFailed => &[
            (
                "UPDATE jobs SET failed_items = failed_items - \
                    (SELECT count(*) FROM items WHERE job_id = ?1 AND state = 3) \
                 WHERE id = ?1",
                false,
            ),
            (
                "UPDATE items SET state = 0, attempts = 0, updated_at = ?2 \
                 WHERE job_id = ?1 AND state = 3",
                true,
            ),
        ],
        Effect::End => &[("UPDATE jobs SET ended_at = ?2 WHERE id = ?1", true)],
        Effect::Reopen => &[("UPDATE jobs SET ended_at = NULL WHERE id = ?1", false)],
        // Runtime-only: nothing to store.
        Effect::Interrupt => &[],
    };
    for (sql, binds_time) in statements {
        let mut q = sqlx::query(*sql).bind(id.0);
        if *binds_time {
            q = q.bind(at);
        }
        q.execute(&mut *conn).await.map_err(db_error)?;
    }
    Ok(())
}

/// Puts the job's RUNNING items back to PENDING with their checkpoints,
/// refunding the attempt, and takes them off the running counter. Returns
/// how many were released.
pub(super) async fn release_running_items(
    conn: &mut SqliteConnection,
    id: JobId,
    at: i64,
) -> Result<u64, StoreError> {
    let released = sqlx::query(
        "UPDATE items SET state = 0, lease = NULL, attempts = MAX(attempts - 1, 0), \
         updated_at = ?2 WHERE job_id = ?1 AND state = 1",
    )
    .bind(id.0)
    .bind(at)
    .execute(&mut *conn)
    .await
    .map_err(db_error)?
    .rows_affected();
    sqlx::query("UPDATE jobs SET running_items = running_items - ?2 WHERE id = ?1")
        .bind(id.0)
        .bind(released as i64)
        .execute(&mut *conn)
        .await
        .map_err(db_error)?;
    Ok(released)
}

/// Checks, inside a write transaction, that a job's settings may still
/// change; `Conflict` with its state if it has ended.
async fn check_live(conn: &mut SqliteConnection, id: JobId) -> Result<(), StoreError> {
    let state = current_state(conn, id).await?;
    if state.is_terminal() {
        return Err(StoreError::Conflict {
            expected: JobState::Running,
            current: state,
        });
    }
    Ok(())
}

/// Appends the event of a setting's change as `seq` at `at`, commits, and
/// returns the job as it is now.
async fn commit_change(
    mut tx: sqlx::Transaction<'_, Sqlite>,
    id: JobId,
    seq: i64,
    at: i64,
    event: &EventBody,
) -> Result<Job, StoreError> {
    insert_event(&mut tx, id, seq, at, event).await?;
    let job = fetch_job(&mut tx, id)
        .await?
        .ok_or(StoreError::NotFound(id))?;
    tx.commit().await.map_err(db_error)?;
    Ok(job)
}

pub(super) async fn set_concurrency(
    pool: &SqlitePool,
    id: JobId,
    concurrency: u32,
    p: &Provenance,
) -> Result<Job, StoreError> {
    let mut tx = begin_write(pool).await?;
    check_live(&mut tx, id).await?;
    let from: i64 = sqlx::query_scalar("SELECT concurrency FROM jobs WHERE id = ?1")
        .bind(id.0)
        .fetch_one(&mut *tx)
        .await
        .map_err(db_error)?;
    let at = micros(now());
    let seq: i64 = sqlx::query_scalar(
        "UPDATE jobs SET concurrency = ?2, last_seq = last_seq + 1, updated_at = ?3 \
         WHERE id = ?1 RETURNING last_seq",
    )
    .bind(id.0)
    .bind(i64::from(concurrency))
    .bind(at)
    .fetch_one(&mut *tx)
    .await
    .map_err(db_error)?;
    let event = EventBody::ConcurrencyChanged {
        from: from as u32,
        to: concurrency,
        requested_by: p.requested_by.clone(),
        request_id: p.request_id.clone(),
    };
    commit_change(tx, id, seq, at, &event).await
}

pub(super) async fn set_rate_limit(
    pool: &SqlitePool,
    id: JobId,
    rate: RateLimit,
    p: &Provenance,
) -> Result<Job, StoreError> {
    let mut tx = begin_write(pool).await?;
    check_live(&mut tx, id).await?;
    let stored: String = sqlx::query_scalar("SELECT policy FROM jobs WHERE id = ?1")
        .bind(id.0)
        .fetch_one(&mut *tx)
        .await
        .map_err(db_error)?;
    let mut policy: JobPolicy =
        serde_json::from_str(&stored).map_err(|e| StoreError::Internal(e.to_string()))?;
    let from = policy.rate();
    policy.set_rate(rate);
    let at = micros(now());
    let seq: i64 = sqlx::query_scalar(
        "UPDATE jobs SET policy = ?2, last_seq = last_seq + 1, updated_at = ?3 \
         WHERE id = ?1 RETURNING last_seq",
    )
    .bind(id.0)
    .bind(serde_json::to_string(&policy).map_err(|e| StoreError::Internal(e.to_string()))?)
    .bind(at)
    .fetch_one(&mut *tx)
    .await
    .map_err(db_error)?;
    let event = EventBody::RateLimitChanged {
        from,
        to: rate,
        requested_by: p.requested_by.clone(),
        request_id: p.request_id.clone(),
    };
    commit_change(tx, id, seq, at, &event).await
}

pub(super) async fn delete_job(pool: &SqlitePool, id: JobId) -> Result<Job, StoreError> {
    let mut tx = begin_write(pool).await?;
    let state = current_state(&mut tx, id).await?;
    crate::domain::deletable(state).map_err(|_| StoreError::NotEnded(state))?;
    let job = fetch_job(&mut tx, id)
        .await?
        .ok_or(StoreError::NotFound(id))?;
    // Items, events and pauses go with it by their foreign keys.
    sqlx::query("DELETE FROM jobs WHERE id = ?1")
        .bind(id.0)
        .execute(&mut *tx)
        .await
        .map_err(db_error)?;
    tx.commit().await.map_err(db_error)?;
    Ok(job)
}

pub(super) async fn delete_ended(
    pool: &SqlitePool,
    before: DateTime<Utc>,
    limits: PruneLimits,
) -> Result<Pruned, StoreError> {
    let mut tx = begin_write(pool).await?;
    let candidates: Vec<(uuid::Uuid, i64)> = sqlx::query_as(
        "SELECT id, total_items FROM jobs \
         WHERE state IN ('succeeded', 'failed', 'cancelled') AND ended_at < ?1 \
         ORDER BY ended_at LIMIT ?2",
    )
    .bind(micros(before))
    .bind(i64::from(limits.jobs))
    .fetch_all(&mut *tx)
    .await
    .map_err(db_error)?;
    let pruned = limits.take(&candidates);
    if pruned.jobs.is_empty() {
        return Ok(pruned);
    }
    let mut delete = QueryBuilder::<Sqlite>::new("DELETE FROM jobs WHERE id IN (");
    let mut list = delete.separated(", ");
    for id in &pruned.jobs {
        list.push_bind(id.0);
    }
    delete.push(")");
    delete.build().execute(&mut *tx).await.map_err(db_error)?;
    tx.commit().await.map_err(db_error)?;
    Ok(pruned)
}

pub(super) async fn due_resumes(
    pool: &SqlitePool,
    now: DateTime<Utc>,
) -> Result<Vec<JobId>, StoreError> {
    let ids: Vec<uuid::Uuid> = sqlx::query_scalar(
        "SELECT p.job_id FROM job_pauses AS p JOIN jobs AS j ON j.id = p.job_id \
         WHERE p.resume_at IS NOT NULL AND p.resume_at <= ?1 AND p.resumed_at IS NULL \
           AND j.state IN ('pausing', 'paused') \
         ORDER BY p.resume_at LIMIT 1000",
    )
    .bind(micros(now))
    .fetch_all(pool)
    .await
    .map_err(db_error)?;
    Ok(ids.into_iter().map(JobId).collect())
}

pub(super) async fn append_event(
    pool: &SqlitePool,
    id: JobId,
    body: &EventBody,
) -> Result<u64, StoreError> {
    let mut tx = begin_write(pool).await?;
    let seq: Option<i64> = sqlx::query_scalar(
        "UPDATE jobs SET last_seq = last_seq + 1 WHERE id = ?1 RETURNING last_seq",
    )
    .bind(id.0)
    .fetch_optional(&mut *tx)
    .await
    .map_err(db_error)?;
    let seq = seq.ok_or(StoreError::NotFound(id))?;
    insert_event(&mut tx, id, seq, micros(now()), body).await?;
    tx.commit().await.map_err(db_error)?;
    Ok(seq as u64)
}

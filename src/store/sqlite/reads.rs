//! The read paths: one job (with its pause history), pages of jobs and
//! items, and the event log. Each read runs in a read transaction, so a
//! job and its pause history come from the same committed snapshot.
//!
//! Filters are bound as JSON arrays and expanded with `json_each`, so
//! every query is one fixed statement (prepared once, cached) whatever the
//! filter holds.

use super::{
    codec::{
        ITEM_COLUMNS, JOB_COLUMNS, event_from_row, item_from_row, job_from_row, map_to_json,
        micros, pause_from_row,
    },
    db_error,
};
use crate::{
    domain::{
        Item, Job, JobEvent, JobId, PauseRecord,
        page::{ItemCursor, JobCursor},
    },
    store::{ItemQuery, JobQuery, Page, StoreError},
};
use sqlx::{SqliteConnection, SqlitePool};
use std::collections::HashMap;
use uuid::Uuid;

pub(super) async fn get_job(pool: &SqlitePool, id: JobId) -> Result<Job, StoreError> {
    let mut tx = pool.begin().await.map_err(db_error)?;
    fetch_job(&mut tx, id)
        .await?
        .ok_or(StoreError::NotFound(id))
}

/// One job with its pause history, or `None`.
pub(super) async fn fetch_job(
    conn: &mut SqliteConnection,
    id: JobId,
) -> Result<Option<Job>, StoreError> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?1"
    )))
    .bind(id.0)
    .fetch_optional(&mut *conn)
    .await
    .map_err(db_error)?;
    let Some(row) = row else { return Ok(None) };
    let mut jobs = [job_from_row(&row)?];
    attach_pauses(conn, &mut jobs).await?;
    let [job] = jobs;
    Ok(Some(job))
}

/// Loads the pause history of `jobs` and attaches it.
async fn attach_pauses(conn: &mut SqliteConnection, jobs: &mut [Job]) -> Result<(), StoreError> {
    if jobs.is_empty() {
        return Ok(());
    }
    // Ids travel as a JSON array of hex strings: one fixed statement for
    // any number of jobs.
    let ids: Vec<String> = jobs.iter().map(|j| j.id.0.simple().to_string()).collect();
    let ids = serde_json::to_string(&ids).map_err(|e| StoreError::Internal(e.to_string()))?;
    let rows = sqlx::query(
        "SELECT job_id, mode, reason, requested_by, request_id, requested_at, paused_at, \
         resumed_at, resume_at FROM job_pauses \
         WHERE job_id IN (SELECT unhex(value) FROM json_each(?1)) ORDER BY job_id, n",
    )
    .bind(ids)
    .fetch_all(&mut *conn)
    .await
    .map_err(db_error)?;
    let mut by_job: HashMap<Uuid, Vec<PauseRecord>> = HashMap::new();
    for row in &rows {
        let (job_id, record) = pause_from_row(row)?;
        by_job.entry(job_id).or_default().push(record);
    }
    for job in jobs {
        job.pauses = by_job.remove(&job.id.0).unwrap_or_default();
    }
    Ok(())
}

pub(super) async fn list_jobs(
    pool: &SqlitePool,
    q: &JobQuery,
) -> Result<Page<Job, JobCursor>, StoreError> {
    let states: Vec<&str> = q.states.iter().map(|s| s.as_str()).collect();
    let states = serde_json::to_string(&states).map_err(|e| StoreError::Internal(e.to_string()))?;
    let labels = map_to_json(&q.labels)?;
    let limit = i64::from(q.limit.max(1));
    // The first page starts after a key above every job, so each page is
    // one range seek on `jobs_by_creation`.
    let (after_at, after_id) = match q.after {
        Some(c) => (micros(c.created_at), c.id.0),
        None => (i64::MAX, Uuid::max()),
    };
    let mut tx = pool.begin().await.map_err(db_error)?;
    // Labels: no wanted label that the job lacks or holds with another
    // value (PostgreSQL's `labels @> $2`).
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {JOB_COLUMNS} FROM jobs \
         WHERE (json_array_length(?1) = 0 OR state IN (SELECT value FROM json_each(?1))) \
           AND NOT EXISTS ( \
               SELECT 1 FROM json_each(?2) AS want \
               WHERE NOT EXISTS ( \
                   SELECT 1 FROM json_each(jobs.labels) AS have \
                   WHERE have.key = want.key AND have.type = 'text' \
                     AND have.value = want.value)) \
           AND (created_at, id) < (?3, ?4) \
           AND (?6 IS NULL OR name = ?6) \
         ORDER BY created_at DESC, id DESC LIMIT ?5"
    )))
    .bind(states)
    .bind(labels)
    .bind(after_at)
    .bind(after_id)
    .bind(limit + 1)
    .bind(q.name.as_deref())
    .fetch_all(&mut *tx)
    .await
    .map_err(db_error)?;
    let mut jobs = rows
        .iter()
        .map(job_from_row)
        .collect::<Result<Vec<_>, _>>()?;
    let next = if jobs.len() as i64 > limit {
        jobs.truncate(limit as usize);
        jobs.last().map(|j| JobCursor {
            created_at: j.created_at,
            id: j.id,
        })
    } else {
        None
    };
    attach_pauses(&mut tx, &mut jobs).await?;
    Ok(Page { rows: jobs, next })
}

pub(super) async fn list_items(
    pool: &SqlitePool,
    q: &ItemQuery,
) -> Result<Page<Item, ItemCursor>, StoreError> {
    let mut tx = pool.begin().await.map_err(db_error)?;
    let exists: Option<i64> = sqlx::query_scalar("SELECT 1 FROM jobs WHERE id = ?1")
        .bind(q.job.0)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db_error)?;
    if exists.is_none() {
        return Err(StoreError::NotFound(q.job));
    }
    let states: Vec<i16> = q.states.iter().map(|s| s.code()).collect();
    let states = serde_json::to_string(&states).map_err(|e| StoreError::Internal(e.to_string()))?;
    let after = q.after.map(|c| i64::from(c.after_index)).unwrap_or(-1);
    let limit = i64::from(q.limit.max(1));
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {ITEM_COLUMNS} FROM items \
         WHERE job_id = ?1 \
           AND (json_array_length(?2) = 0 OR state IN (SELECT value FROM json_each(?2))) \
           AND idx > ?3 \
         ORDER BY idx LIMIT ?4"
    )))
    .bind(q.job.0)
    .bind(states)
    .bind(after)
    .bind(limit + 1)
    .fetch_all(&mut *tx)
    .await
    .map_err(db_error)?;
    let mut items = rows
        .iter()
        .map(item_from_row)
        .collect::<Result<Vec<_>, _>>()?;
    let next = if items.len() as i64 > limit {
        items.truncate(limit as usize);
        items.last().map(|i| ItemCursor {
            after_index: i.index,
        })
    } else {
        None
    };
    Ok(Page { rows: items, next })
}

pub(super) async fn events_after(
    pool: &SqlitePool,
    id: JobId,
    after: u64,
    limit: u32,
) -> Result<Vec<JobEvent>, StoreError> {
    let rows = sqlx::query(
        "SELECT seq, at, body FROM job_events WHERE job_id = ?1 AND seq > ?2 \
         ORDER BY seq LIMIT ?3",
    )
    .bind(id.0)
    .bind(i64::try_from(after).unwrap_or(i64::MAX))
    .bind(i64::from(limit))
    .fetch_all(pool)
    .await
    .map_err(db_error)?;
    rows.iter().map(event_from_row).collect()
}

/// The job's pending items whose retry waits, the first due first, with
/// how long each still waits.
pub(super) async fn waiting_retries(
    pool: &SqlitePool,
    id: JobId,
    limit: u32,
) -> Result<Vec<(u32, std::time::Duration)>, StoreError> {
    let now = micros(chrono::Utc::now());
    let rows: Vec<(i64, i64)> = sqlx::query_as(
        "SELECT idx, retry_at FROM items \
         WHERE job_id = ?1 AND state = 0 AND retry_at > ?2 \
         ORDER BY retry_at, idx LIMIT ?3",
    )
    .bind(id.0)
    .bind(now)
    .bind(i64::from(limit))
    .fetch_all(pool)
    .await
    .map_err(db_error)?;
    Ok(rows
        .into_iter()
        .map(|(idx, at)| {
            let wait = std::time::Duration::from_micros(at.saturating_sub(now).max(0) as u64);
            (idx as u32, wait)
        })
        .collect())
}

//! Reading rows into domain types: jobs (with their pause history), items
//! and events.

use super::db_error;
use crate::{
    domain::{
        EventBody, Item, ItemCounts, ItemState, Job, JobEvent, JobId, JobPolicy, JobState,
        PauseMode, PauseRecord,
        page::{ItemCursor, JobCursor},
    },
    store::{ItemQuery, JobQuery, Page, StoreError},
};
use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool, Row, postgres::PgRow, types::Json};
use std::collections::{BTreeMap, HashMap};
use uuid::Uuid;

/// The columns [`job_from_row`] reads, in a form every query can splice.
pub(super) const JOB_COLUMNS: &str = "id, name, executor, state, concurrency, max_attempts, \
     params, labels, policy, request_id, total_items, running_items, succeeded_items, failed_items, \
     cancelled_items, last_seq, last_error, created_at, started_at, updated_at, ended_at";

fn corrupt(what: impl std::fmt::Display) -> StoreError {
    StoreError::Internal(format!("corrupt row: {what}"))
}

pub(super) fn job_state(name: &str) -> Result<JobState, StoreError> {
    JobState::parse(name).ok_or_else(|| corrupt(format!("unknown job state {name:?}")))
}

fn count(row: &PgRow, column: &str) -> Result<u64, StoreError> {
    let n: i64 = row.try_get(column).map_err(db_error)?;
    u64::try_from(n).map_err(|_| corrupt(format!("{column} is {n}")))
}

pub(super) fn counts_from_row(row: &PgRow) -> Result<ItemCounts, StoreError> {
    Ok(ItemCounts {
        total: count(row, "total_items")?,
        running: count(row, "running_items")?,
        succeeded: count(row, "succeeded_items")?,
        failed: count(row, "failed_items")?,
        cancelled: count(row, "cancelled_items")?,
    })
}

/// A job without its pause history (see [`attach_pauses`]).
pub(super) fn job_from_row(row: &PgRow) -> Result<Job, StoreError> {
    let get_err = db_error;
    let state: String = row.try_get("state").map_err(get_err)?;
    let Json(params): Json<BTreeMap<String, String>> = row.try_get("params").map_err(get_err)?;
    let Json(labels): Json<BTreeMap<String, String>> = row.try_get("labels").map_err(get_err)?;
    let Json(policy): Json<JobPolicy> = row.try_get("policy").map_err(get_err)?;
    let concurrency: i32 = row.try_get("concurrency").map_err(get_err)?;
    let max_attempts: i32 = row.try_get("max_attempts").map_err(get_err)?;
    Ok(Job {
        id: JobId(row.try_get("id").map_err(get_err)?),
        name: row.try_get("name").map_err(get_err)?,
        executor: row.try_get("executor").map_err(get_err)?,
        state: job_state(&state)?,
        counts: counts_from_row(row)?,
        concurrency: concurrency as u32,
        max_attempts: max_attempts as u32,
        params,
        labels,
        policy,
        request_id: row.try_get("request_id").map_err(get_err)?,
        created_at: row.try_get("created_at").map_err(get_err)?,
        started_at: row.try_get("started_at").map_err(get_err)?,
        updated_at: row.try_get("updated_at").map_err(get_err)?,
        ended_at: row.try_get("ended_at").map_err(get_err)?,
        pauses: Vec::new(),
        last_error: row.try_get("last_error").map_err(get_err)?,
        last_seq: count(row, "last_seq")?,
    })
}

/// Loads the pause history of `jobs` and attaches it.
async fn attach_pauses(conn: &mut PgConnection, jobs: &mut [Job]) -> Result<(), StoreError> {
    if jobs.is_empty() {
        return Ok(());
    }
    let ids: Vec<Uuid> = jobs.iter().map(|j| j.id.0).collect();
    let rows = sqlx::query(
        "SELECT job_id, mode, reason, requested_by, request_id, requested_at, paused_at, \
         resumed_at, resume_at FROM job_pauses WHERE job_id = ANY($1) ORDER BY job_id, n",
    )
    .bind(&ids)
    .fetch_all(&mut *conn)
    .await
    .map_err(db_error)?;
    let mut by_job: HashMap<Uuid, Vec<PauseRecord>> = HashMap::new();
    for row in rows {
        let mode: String = row.try_get("mode").map_err(db_error)?;
        let record = PauseRecord {
            mode: PauseMode::parse(&mode)
                .ok_or_else(|| corrupt(format!("unknown pause mode {mode:?}")))?,
            reason: row.try_get("reason").map_err(db_error)?,
            requested_by: row.try_get("requested_by").map_err(db_error)?,
            request_id: row.try_get("request_id").map_err(db_error)?,
            requested_at: row.try_get("requested_at").map_err(db_error)?,
            paused_at: row.try_get("paused_at").map_err(db_error)?,
            resumed_at: row.try_get("resumed_at").map_err(db_error)?,
            resume_at: row.try_get("resume_at").map_err(db_error)?,
        };
        let job_id: Uuid = row.try_get("job_id").map_err(db_error)?;
        by_job.entry(job_id).or_default().push(record);
    }
    for job in jobs {
        job.pauses = by_job.remove(&job.id.0).unwrap_or_default();
    }
    Ok(())
}

/// One job with its pause history, or `None`.
pub(super) async fn fetch_job(
    conn: &mut PgConnection,
    id: JobId,
) -> Result<Option<Job>, StoreError> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1"
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

pub(super) async fn list_jobs(
    pool: &PgPool,
    q: &JobQuery,
) -> Result<Page<Job, JobCursor>, StoreError> {
    let states: Vec<&str> = q.states.iter().map(|s| s.as_str()).collect();
    let labels =
        serde_json::to_value(&q.labels).map_err(|e| StoreError::Internal(e.to_string()))?;
    let limit = q.limit.max(1) as i64;
    let mut conn = pool.acquire().await.map_err(db_error)?;
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {JOB_COLUMNS} FROM jobs \
         WHERE (cardinality($1::text[]) = 0 OR state = ANY($1)) \
           AND labels @> $2 \
           AND ($3::timestamptz IS NULL OR (created_at, id) < ($3, $4)) \
         ORDER BY created_at DESC, id DESC LIMIT $5"
    )))
    .bind(&states)
    .bind(Json(labels))
    .bind(q.after.map(|c| c.created_at))
    .bind(q.after.map(|c| c.id.0))
    .bind(limit + 1)
    .fetch_all(&mut *conn)
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
    attach_pauses(&mut conn, &mut jobs).await?;
    Ok(Page { rows: jobs, next })
}

pub(super) async fn list_items(
    pool: &PgPool,
    q: &ItemQuery,
) -> Result<Page<Item, ItemCursor>, StoreError> {
    let mut conn = pool.acquire().await.map_err(db_error)?;
    let exists: Option<i32> = sqlx::query_scalar("SELECT 1 FROM jobs WHERE id = $1")
        .bind(q.job.0)
        .fetch_optional(&mut *conn)
        .await
        .map_err(db_error)?;
    if exists.is_none() {
        return Err(StoreError::NotFound(q.job));
    }
    let states: Vec<i16> = q.states.iter().map(|s| s.code()).collect();
    let after = q.after.map(|c| c.after_index as i64).unwrap_or(-1);
    let limit = q.limit.max(1) as i64;
    let rows = sqlx::query(
        "SELECT idx, payload, state, attempts, last_error, checkpoint, result, updated_at \
         FROM items \
         WHERE job_id = $1 AND (cardinality($2::int2[]) = 0 OR state = ANY($2)) AND idx > $3 \
         ORDER BY idx LIMIT $4",
    )
    .bind(q.job.0)
    .bind(&states)
    .bind(after)
    .bind(limit + 1)
    .fetch_all(&mut *conn)
    .await
    .map_err(db_error)?;
    let mut items = Vec::with_capacity(rows.len());
    for row in &rows {
        let state: i16 = row.try_get("state").map_err(db_error)?;
        let index: i32 = row.try_get("idx").map_err(db_error)?;
        let attempts: i32 = row.try_get("attempts").map_err(db_error)?;
        items.push(Item {
            index: index as u32,
            payload: row.try_get("payload").map_err(db_error)?,
            state: ItemState::from_code(state)
                .ok_or_else(|| corrupt(format!("unknown item state {state}")))?,
            attempts: attempts as u32,
            last_error: row.try_get("last_error").map_err(db_error)?,
            checkpoint: row.try_get("checkpoint").map_err(db_error)?,
            result: row.try_get("result").map_err(db_error)?,
            updated_at: row.try_get("updated_at").map_err(db_error)?,
        });
    }
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
    pool: &PgPool,
    id: JobId,
    after: u64,
    limit: u32,
) -> Result<Vec<JobEvent>, StoreError> {
    let rows = sqlx::query(
        "SELECT seq, at, body FROM job_events WHERE job_id = $1 AND seq > $2 \
         ORDER BY seq LIMIT $3",
    )
    .bind(id.0)
    .bind(i64::try_from(after).unwrap_or(i64::MAX))
    .bind(limit as i64)
    .fetch_all(pool)
    .await
    .map_err(db_error)?;
    rows.iter()
        .map(|row| {
            let seq: i64 = row.try_get("seq").map_err(db_error)?;
            let at: DateTime<Utc> = row.try_get("at").map_err(db_error)?;
            let Json(body): Json<EventBody> = row.try_get("body").map_err(db_error)?;
            Ok(JobEvent {
                seq: seq as u64,
                at,
                body,
            })
        })
        .collect()
}

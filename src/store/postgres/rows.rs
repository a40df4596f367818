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
use std::collections::BTreeMap;

macro_rules! job_fields {
    () => {
        "jobs.id, jobs.name, jobs.executor, jobs.state, jobs.concurrency, jobs.max_attempts, \
         jobs.params, jobs.labels, jobs.policy, jobs.request_id, jobs.total_items, \
         jobs.running_items, jobs.succeeded_items, jobs.failed_items, jobs.cancelled_items, \
         jobs.last_seq, jobs.last_error, jobs.created_at, jobs.started_at, jobs.updated_at, \
         jobs.ended_at, jobs.exclusive, jobs.open, jobs.counters"
    };
}

/// The pause history's columns, as `jobvisor_job_pauses` (migration 0007)
/// returns them.
macro_rules! pause_fields {
    () => {
        "pause_mode, pause_reason, pause_requested_by, pause_request_id, pause_requested_at, \
         pause_paused_at, pause_resumed_at, pause_resume_at"
    };
}

/// Selects the columns [`job_from_row`] reads: each job of `jobs` with its
/// pause history beside it. The queries are whole literals, built once at
/// compile time.
macro_rules! select_jobs {
    () => {
        concat!(
            "SELECT ",
            job_fields!(),
            ", ",
            pause_fields!(),
            " FROM jobs CROSS JOIN LATERAL jobvisor_job_pauses(jobs.id) AS pauses"
        )
    };
}

/// `jobvisor_transition` (migration 0007) with the job it returns read as
/// [`job_from_row`] reads it.
pub(super) const TRANSITION: &str = concat!(
    "SELECT ",
    job_fields!(),
    ", ",
    pause_fields!(),
    " FROM (SELECT (r.job).*, ",
    pause_fields!(),
    " FROM jobvisor_transition($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14) \
       AS r) AS jobs"
);

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

/// A job with its pause history, from the columns of `select_jobs!`.
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
        pauses: pauses_from_row(row)?,
        last_error: row.try_get("last_error").map_err(get_err)?,
        last_seq: count(row, "last_seq")?,
        exclusive: row.try_get("exclusive").map_err(get_err)?,
        open: row.try_get("open").map_err(get_err)?,
        counters: {
            let Json(value): Json<serde_json::Value> = row.try_get("counters").map_err(get_err)?;
            crate::domain::counters::from_json(&value)
        },
    })
}

fn pauses_from_row(row: &PgRow) -> Result<Vec<PauseRecord>, StoreError> {
    type Column<T> = Option<Vec<Option<T>>>;
    let modes: Option<Vec<String>> = row.try_get("pause_mode").map_err(db_error)?;
    let Some(modes) = modes else {
        return Ok(Vec::new());
    };
    let texts = |column: &str| -> Result<std::vec::IntoIter<Option<String>>, StoreError> {
        let v: Column<String> = row.try_get(column).map_err(db_error)?;
        Ok(v.unwrap_or_default().into_iter())
    };
    let times = |column: &str| -> Result<std::vec::IntoIter<Option<DateTime<Utc>>>, StoreError> {
        let v: Column<DateTime<Utc>> = row.try_get(column).map_err(db_error)?;
        Ok(v.unwrap_or_default().into_iter())
    };
    let (mut reason, mut by, mut request_id) = (
        texts("pause_reason")?,
        texts("pause_requested_by")?,
        texts("pause_request_id")?,
    );
    let (mut requested_at, mut paused_at, mut resumed_at, mut resume_at) = (
        times("pause_requested_at")?,
        times("pause_paused_at")?,
        times("pause_resumed_at")?,
        times("pause_resume_at")?,
    );
    let short = || corrupt("pause history arrays of different lengths");
    modes
        .into_iter()
        .map(|mode| {
            Ok(PauseRecord {
                mode: PauseMode::parse(&mode)
                    .ok_or_else(|| corrupt(format!("unknown pause mode {mode:?}")))?,
                reason: reason.next().ok_or_else(short)?,
                requested_by: by.next().ok_or_else(short)?,
                request_id: request_id.next().ok_or_else(short)?,
                requested_at: requested_at
                    .next()
                    .flatten()
                    .ok_or_else(|| corrupt("a pause without requested_at"))?,
                paused_at: paused_at.next().ok_or_else(short)?,
                resumed_at: resumed_at.next().ok_or_else(short)?,
                resume_at: resume_at.next().ok_or_else(short)?,
            })
        })
        .collect()
}

/// One job with its pause history, or `None`.
pub(super) async fn fetch_job(
    conn: &mut PgConnection,
    id: JobId,
) -> Result<Option<Job>, StoreError> {
    let row = sqlx::query(concat!(select_jobs!(), " WHERE jobs.id = $1"))
        .bind(id.0)
        .fetch_optional(&mut *conn)
        .await
        .map_err(db_error)?;
    row.as_ref().map(job_from_row).transpose()
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
    if !q.labels.is_empty() {
        // A label filter: look among the newest jobs that pass the other
        // filters first, in the order of the page (`jobs_by_creation`). If
        // they hold the page, those are its jobs, whatever the planner
        // would guess of the labels' selectivity: it cannot see how common
        // a label set is (none may be in its statistics), and for a common
        // one chose the labels' GIN index, read every match (10,000 of
        // 100,000 jobs) and sorted them: 85 ms a page against 2 ms
        // (`jobvisor-bench list-jobs`). A rarer label falls through to the
        // query below, where the index pays.
        let ids: Vec<uuid::Uuid> = sqlx::query_scalar(
            "SELECT r.id FROM ( \
                SELECT id, created_at, labels FROM jobs \
                WHERE (cardinality($1::text[]) = 0 OR state = ANY($1)) \
                  AND ($3::timestamptz IS NULL OR (created_at, id) < ($3, $4)) \
                  AND ($6::text IS NULL OR name = $6) \
                ORDER BY created_at DESC, id DESC LIMIT $7) AS r \
             WHERE r.labels @> $2 ORDER BY r.created_at DESC, r.id DESC LIMIT $5",
        )
        .persistent(false)
        .bind(&states)
        .bind(Json(&labels))
        .bind(q.after.map(|c| c.created_at))
        .bind(q.after.map(|c| c.id.0))
        .bind(limit + 1)
        .bind(q.name.as_deref())
        .bind(LABEL_SCAN)
        .fetch_all(&mut *conn)
        .await
        .map_err(db_error)?;
        if ids.len() as i64 > limit {
            let rows = sqlx::query(concat!(
                select_jobs!(),
                " WHERE jobs.id = ANY($1) ORDER BY created_at DESC, id DESC"
            ))
            .bind(&ids)
            .fetch_all(&mut *conn)
            .await
            .map_err(db_error)?;
            return page_of(&rows, limit);
        }
    }
    let rows = sqlx::query(concat!(
        select_jobs!(),
        " WHERE (cardinality($1::text[]) = 0 OR state = ANY($1)) \
           AND labels @> $2 \
           AND ($3::timestamptz IS NULL OR (created_at, id) < ($3, $4)) \
           AND ($6::text IS NULL OR name = $6) \
         ORDER BY created_at DESC, id DESC LIMIT $5"
    ))
    // Planned with its values each time: the generic plan PostgreSQL
    // switches a prepared statement to after five runs cannot see that the
    // filters are empty, and reads every job's pauses before the sort and
    // the limit (520 ms a page with 100,000 jobs, 0.3 ms planned with its
    // values; `bench list-jobs`).
    .persistent(false)
    .bind(&states)
    .bind(Json(labels))
    .bind(q.after.map(|c| c.created_at))
    .bind(q.after.map(|c| c.id.0))
    .bind(limit + 1)
    .bind(q.name.as_deref())
    .fetch_all(&mut *conn)
    .await
    .map_err(db_error)?;
    page_of(&rows, limit)
}

/// How many of the newest jobs (after the other filters) a label filter
/// looks among before it asks the labels' index.
const LABEL_SCAN: i64 = 2_000;

/// A page of at most `limit` jobs from `rows` (one more says there is a
/// next page).
fn page_of(rows: &[PgRow], limit: i64) -> Result<Page<Job, JobCursor>, StoreError> {
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
        "SELECT idx, payload, state, attempts, last_error, checkpoint, result, skip_reason, \
                updated_at, CASE WHEN state = 0 THEN retry_at END AS retry_at \
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
            skip_reason: row.try_get("skip_reason").map_err(db_error)?,
            updated_at: row.try_get("updated_at").map_err(db_error)?,
            retry_at: row.try_get("retry_at").map_err(db_error)?,
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

/// The job's pending items whose retry waits, the first due first, with
/// how long each still waits. It reads every item of the job (there is no
/// index on the wait: one would cost every claim its HOT update), so it is
/// asked once, when a supervisor takes over a job that has retry delays.
pub(super) async fn waiting_retries(
    pool: &PgPool,
    id: JobId,
    limit: u32,
) -> Result<Vec<(u32, std::time::Duration)>, StoreError> {
    let rows: Vec<(i32, i64)> = sqlx::query_as(
        "SELECT idx, ceil(EXTRACT(EPOCH FROM retry_at - now()) * 1000)::bigint \
         FROM items WHERE job_id = $1 AND state = 0 AND retry_at > now() \
         ORDER BY retry_at, idx LIMIT $2",
    )
    .bind(id.0)
    .bind(i64::from(limit))
    .fetch_all(pool)
    .await
    .map_err(db_error)?;
    Ok(rows
        .into_iter()
        .map(|(idx, ms)| {
            (
                idx as u32,
                std::time::Duration::from_millis(ms.max(0) as u64),
            )
        })
        .collect())
}

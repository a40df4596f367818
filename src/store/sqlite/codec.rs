//! How domain values are represented in SQLite columns, both ways:
//! timestamps as integer microseconds, maps and event bodies as JSON text,
//! job and item states by their stable names and codes. Every row is
//! decoded here, so a representation is defined in one place.

use super::db_error;
use crate::{
    domain::{
        EventBody, Item, ItemCounts, ItemState, Job, JobEvent, JobId, JobState, PauseMode,
        PauseRecord,
    },
    store::StoreError,
};
use chrono::{DateTime, Utc};
use sqlx::{Row, sqlite::SqliteRow};
use std::collections::BTreeMap;

/// The columns [`job_from_row`] reads, in a form every query can splice.
pub(super) const JOB_COLUMNS: &str = "id, name, executor, state, concurrency, max_attempts, \
     params, labels, policy, request_id, total_items, running_items, succeeded_items, failed_items, \
     cancelled_items, last_seq, last_error, created_at, started_at, updated_at, ended_at, \
     exclusive, open, counters";

/// The columns [`item_from_row`] reads.
pub(super) const ITEM_COLUMNS: &str = "idx, payload, state, attempts, last_error, checkpoint, result, updated_at, retry_at, \
     skip_reason";

pub(super) fn corrupt(what: impl std::fmt::Display) -> StoreError {
    StoreError::Internal(format!("corrupt row: {what}"))
}

/// The time a transaction stamps on what it writes, cut to the microsecond
/// so that what is returned equals what is read back later (PostgreSQL's
/// precision too).
pub(super) fn now() -> DateTime<Utc> {
    let t = Utc::now();
    DateTime::from_timestamp_micros(t.timestamp_micros()).unwrap_or(t)
}

pub(super) fn micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

fn time(row: &SqliteRow, column: &str) -> Result<DateTime<Utc>, StoreError> {
    let v: i64 = row.try_get(column).map_err(db_error)?;
    DateTime::from_timestamp_micros(v).ok_or_else(|| corrupt(format!("{column} is {v}")))
}

pub(super) fn optional_time(
    row: &SqliteRow,
    column: &str,
) -> Result<Option<DateTime<Utc>>, StoreError> {
    let v: Option<i64> = row.try_get(column).map_err(db_error)?;
    v.map(|v| DateTime::from_timestamp_micros(v).ok_or_else(|| corrupt(format!("{column} is {v}"))))
        .transpose()
}

/// A map as stored: a JSON object of strings.
pub(super) fn map_to_json(map: &BTreeMap<String, String>) -> Result<String, StoreError> {
    serde_json::to_string(map).map_err(|e| StoreError::Internal(e.to_string()))
}

fn map(row: &SqliteRow, column: &str) -> Result<BTreeMap<String, String>, StoreError> {
    let text: String = row.try_get(column).map_err(db_error)?;
    serde_json::from_str(&text).map_err(|e| corrupt(format!("{column}: {e}")))
}

/// An event body as stored: its serde JSON, the same document PostgreSQL
/// keeps in jsonb.
pub(super) fn body_to_json(body: &EventBody) -> Result<String, StoreError> {
    serde_json::to_string(body).map_err(|e| StoreError::Internal(e.to_string()))
}

pub(super) fn job_state(name: &str) -> Result<JobState, StoreError> {
    JobState::parse(name).ok_or_else(|| corrupt(format!("unknown job state {name:?}")))
}

/// A non-negative integer column.
pub(super) fn count(row: &SqliteRow, column: &str) -> Result<u64, StoreError> {
    let n: i64 = row.try_get(column).map_err(db_error)?;
    u64::try_from(n).map_err(|_| corrupt(format!("{column} is {n}")))
}

/// A non-negative integer column that must fit in 32 bits.
pub(super) fn count32(row: &SqliteRow, column: &str) -> Result<u32, StoreError> {
    let n: i64 = row.try_get(column).map_err(db_error)?;
    u32::try_from(n).map_err(|_| corrupt(format!("{column} is {n}")))
}

pub(super) fn counts_from_row(row: &SqliteRow) -> Result<ItemCounts, StoreError> {
    Ok(ItemCounts {
        total: count(row, "total_items")?,
        running: count(row, "running_items")?,
        succeeded: count(row, "succeeded_items")?,
        failed: count(row, "failed_items")?,
        cancelled: count(row, "cancelled_items")?,
    })
}

/// A job without its pause history (see `reads::attach_pauses`).
pub(super) fn job_from_row(row: &SqliteRow) -> Result<Job, StoreError> {
    let state: String = row.try_get("state").map_err(db_error)?;
    Ok(Job {
        id: JobId(row.try_get("id").map_err(db_error)?),
        name: row.try_get("name").map_err(db_error)?,
        executor: row.try_get("executor").map_err(db_error)?,
        state: job_state(&state)?,
        counts: counts_from_row(row)?,
        concurrency: count32(row, "concurrency")?,
        max_attempts: count32(row, "max_attempts")?,
        params: map(row, "params")?,
        labels: map(row, "labels")?,
        policy: {
            let text: String = row.try_get("policy").map_err(db_error)?;
            serde_json::from_str(&text).map_err(|e| corrupt(format!("policy: {e}")))?
        },
        request_id: row.try_get("request_id").map_err(db_error)?,
        created_at: time(row, "created_at")?,
        started_at: optional_time(row, "started_at")?,
        updated_at: time(row, "updated_at")?,
        ended_at: optional_time(row, "ended_at")?,
        pauses: Vec::new(),
        last_error: row.try_get("last_error").map_err(db_error)?,
        last_seq: count(row, "last_seq")?,
        exclusive: row.try_get("exclusive").map_err(db_error)?,
        open: row.try_get("open").map_err(db_error)?,
        counters: {
            let text: String = row.try_get("counters").map_err(db_error)?;
            let value: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| corrupt(format!("counters: {e}")))?;
            crate::domain::counters::from_json(&value)
        },
    })
}

pub(super) fn item_state(code: i64) -> Result<ItemState, StoreError> {
    i16::try_from(code)
        .ok()
        .and_then(ItemState::from_code)
        .ok_or_else(|| corrupt(format!("unknown item state {code}")))
}

pub(super) fn item_from_row(row: &SqliteRow) -> Result<Item, StoreError> {
    let state: i64 = row.try_get("state").map_err(db_error)?;
    Ok(Item {
        index: count32(row, "idx")?,
        payload: row.try_get("payload").map_err(db_error)?,
        state: item_state(state)?,
        attempts: count32(row, "attempts")?,
        last_error: row.try_get("last_error").map_err(db_error)?,
        checkpoint: row.try_get("checkpoint").map_err(db_error)?,
        result: row.try_get("result").map_err(db_error)?,
        skip_reason: row.try_get("skip_reason").map_err(db_error)?,
        updated_at: optional_time(row, "updated_at")?,
        retry_at: match item_state(state)? {
            ItemState::Pending => optional_time(row, "retry_at")?,
            _ => None,
        },
    })
}

/// A pause record and the job it belongs to.
pub(super) fn pause_from_row(row: &SqliteRow) -> Result<(uuid::Uuid, PauseRecord), StoreError> {
    let mode: String = row.try_get("mode").map_err(db_error)?;
    let record = PauseRecord {
        mode: PauseMode::parse(&mode)
            .ok_or_else(|| corrupt(format!("unknown pause mode {mode:?}")))?,
        reason: row.try_get("reason").map_err(db_error)?,
        requested_by: row.try_get("requested_by").map_err(db_error)?,
        request_id: row.try_get("request_id").map_err(db_error)?,
        requested_at: time(row, "requested_at")?,
        paused_at: optional_time(row, "paused_at")?,
        resumed_at: optional_time(row, "resumed_at")?,
        resume_at: optional_time(row, "resume_at")?,
    };
    Ok((row.try_get("job_id").map_err(db_error)?, record))
}

pub(super) fn event_from_row(row: &SqliteRow) -> Result<JobEvent, StoreError> {
    let body: String = row.try_get("body").map_err(db_error)?;
    Ok(JobEvent {
        seq: count(row, "seq")?,
        at: time(row, "at")?,
        body: serde_json::from_str(&body).map_err(|e| corrupt(format!("event body: {e}")))?,
    })
}

//! Taking over after a crash: releasing the items a dead supervisor or
//! process held (attempt refunded, checkpoint kept), and at boot settling
//! every unfinished job the way `postgres/jobs.rs` does. One `BEGIN
//! IMMEDIATE` transaction per job, so recovery never holds the write lock
//! for the whole store at once.

use super::{
    begin_write,
    codec::{job_state, micros, now},
    db_error,
    jobs::{current_state, release_running_items, transition},
};
use crate::{
    domain::{JobId, JobState},
    store::{Recovery, StoreError, TransitionWrite},
};
use sqlx::{SqliteConnection, SqlitePool};

pub(super) async fn release_items(pool: &SqlitePool, id: JobId) -> Result<u64, StoreError> {
    let mut tx = begin_write(pool).await?;
    current_state(&mut tx, id).await?;
    let released = release_running(&mut tx, id).await?;
    tx.commit().await.map_err(db_error)?;
    Ok(released)
}

/// Releases the job's RUNNING items (attempt refunded) and zeroes its
/// running counter: whoever held them is gone.
async fn release_running(conn: &mut SqliteConnection, id: JobId) -> Result<u64, StoreError> {
    let released = release_running_items(conn, id, micros(now())).await?;
    sqlx::query("UPDATE jobs SET running_items = 0 WHERE id = ?1")
        .bind(id.0)
        .execute(&mut *conn)
        .await
        .map_err(db_error)?;
    Ok(released)
}

pub(super) async fn recover(pool: &SqlitePool) -> Result<Recovery, StoreError> {
    let unfinished: Vec<(uuid::Uuid, String)> = sqlx::query_as(
        "SELECT id, state FROM jobs WHERE state IN ('running', 'pausing', 'paused', 'cancelling') \
         ORDER BY created_at",
    )
    .fetch_all(pool)
    .await
    .map_err(db_error)?;
    let mut recovery = Recovery::default();
    for (id, state) in unfinished {
        let id = JobId(id);
        let state = job_state(&state)?;
        let mut tx = begin_write(pool).await?;
        if current_state(&mut tx, id).await? != state {
            // Changed since the listing (another process recovering too):
            // leave it to whoever changed it.
            continue;
        }
        let released = release_running(&mut tx, id).await?;
        tx.commit().await.map_err(db_error)?;
        recovery.released_items += released;
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

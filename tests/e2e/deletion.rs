//! Deleting ended jobs: DeleteJob, and a server's retention. What is
//! deleted is gone from every call; what has not ended is refused and
//! keeps running; the other jobs do not change.

use super::harness::{
    Options, SECS, StoreKind, TestApp, bad_fields, reason, spawn_app, spawn_app_with,
};
use jobvisor::pb::{self, JobState};
use std::time::Duration;
use tonic::Code;

async fn delete(app: &TestApp, id: &str) -> Result<pb::Job, tonic::Status> {
    let answer = app
        .client
        .clone()
        .delete_job(pb::DeleteJobRequest { job_id: id.into() })
        .await?
        .into_inner();
    Ok(answer.job.expect("DeleteJob returns the job"))
}

/// Every call that reads a job answers NOT_FOUND for `id`.
async fn gone(app: &TestApp, id: &str) {
    let mut client = app.client.clone();
    let calls = [
        client
            .get_job(pb::GetJobRequest { job_id: id.into() })
            .await
            .map(|_| ()),
        client
            .list_job_items(pb::ListJobItemsRequest {
                job_id: id.into(),
                ..Default::default()
            })
            .await
            .map(|_| ()),
        client
            .watch_job(pb::WatchJobRequest {
                job_id: id.into(),
                from_sequence: 0,
                window: None,
            })
            .await
            .map(|_| ()),
        delete(app, id).await.map(|_| ()),
    ];
    for result in calls {
        let status = result.unwrap_err();
        assert_eq!(status.code(), Code::NotFound, "{status:?}");
        assert_eq!(reason(&status), "JOB_NOT_FOUND");
    }
    let listed = client
        .list_jobs(pb::ListJobsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(listed.jobs.iter().all(|j| j.id != id), "{id} still listed");
}

#[tokio::test]
async fn an_ended_job_is_deleted_and_a_live_one_is_refused() {
    let app = spawn_app().await;
    let done = app
        .start(app.job("sleep", 5, 2, &[("duration_ms", "0")]))
        .await;
    let done = app.wait_for(&done.id, JobState::Succeeded, SECS(10)).await;
    // Held at the gate: RUNNING with items in flight.
    let live = app.start(app.job("gate", 4, 2, &[])).await;
    app.eventually("the gated job claims", SECS(5), || async {
        app.claimed(&live.id).await == 2
    })
    .await;

    let status = delete(&app, &live.id).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert_eq!(reason(&status), "JOB_NOT_DELETABLE");
    assert!(status.message().contains("running"), "{}", status.message());
    let status = delete(&app, "not-a-uuid").await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(bad_fields(&status), ["job_id"]);

    let deleted = delete(&app, &done.id).await.unwrap();
    // The job as it was (the status is GetJob's alone).
    assert_eq!(
        deleted,
        pb::Job {
            status: None,
            ..done.clone()
        },
        "the job as it was"
    );
    gone(&app, &done.id).await;
    for table in ["items", "job_events", "job_pauses", "jobs"] {
        let column = if table == "jobs" { "id" } else { "job_id" };
        let left: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT count(*) FROM {table} WHERE {column} = $1::uuid"
        )))
        .bind(&done.id)
        .fetch_one(app.pg())
        .await
        .unwrap();
        assert_eq!(left, 0, "{table} rows of the deleted job");
    }

    // The refused job was not touched: it runs to the end.
    app.gate.open();
    let ended = app.wait_for(&live.id, JobState::Succeeded, SECS(10)).await;
    assert_eq!(ended.counts.unwrap().succeeded, 4);
    app.stop().await;
}

/// With a retention of 2 s, a job is deleted 2 to 3 s after it ended (the
/// retention looks every second); jobs still running are kept.
async fn retention_deletes_ended_jobs(store: StoreKind) {
    let app = spawn_app_with(Options {
        store,
        retention: Some(SECS(2)),
        ..Options::default()
    })
    .await;
    let live = app.start(app.job("gate", 2, 1, &[])).await;
    let done = app
        .start(app.job("sleep", 3, 3, &[("duration_ms", "0")]))
        .await;
    app.wait_for(&done.id, JobState::Succeeded, SECS(10)).await;
    let ended = std::time::Instant::now();
    let mut client = app.client.clone();
    loop {
        let found = client
            .get_job(pb::GetJobRequest {
                job_id: done.id.clone(),
            })
            .await;
        match found {
            Ok(_) => {
                assert!(
                    ended.elapsed() < SECS(10),
                    "still there {:?} after it ended",
                    ended.elapsed()
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(status) => {
                assert_eq!(status.code(), Code::NotFound, "{status:?}");
                break;
            }
        }
    }
    // Not before its time (the end was seen up to a poll late).
    assert!(
        ended.elapsed() >= Duration::from_millis(1_500),
        "{:?}",
        ended.elapsed()
    );
    gone(&app, &done.id).await;
    // The job that has not ended stays, however old.
    tokio::time::sleep(SECS(2)).await;
    assert_eq!(app.get(&live.id).await.state, JobState::Running as i32);
    app.gate.open();
    app.wait_for(&live.id, JobState::Succeeded, SECS(10)).await;
    app.stop().await;
}

#[tokio::test]
async fn the_retention_deletes_ended_jobs_by_itself() {
    retention_deletes_ended_jobs(StoreKind::Postgres).await;
}

#[tokio::test]
async fn the_retention_deletes_ended_jobs_by_itself_on_the_embedded_store() {
    retention_deletes_ended_jobs(StoreKind::Embedded).await;
}

/// Once the retention has deleted `--vacuum-after` items, the server
/// vacuums the items and events tables itself (PostgreSQL's count of
/// manual vacuums of `items` moves), and the jobs still running are
/// untouched by it.
#[tokio::test]
async fn the_retention_vacuums_once_it_has_deleted_enough_items() {
    let app = spawn_app_with(Options {
        retention: Some(SECS(1)),
        vacuum_after: 5,
        ..Options::default()
    })
    .await;
    let vacuums = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT vacuum_count FROM pg_stat_user_tables WHERE relname = 'items'",
        )
        .fetch_one(app.pg())
        .await
        .unwrap()
    };
    let live = app.start(app.job("gate", 2, 1, &[])).await;
    // Three items deleted: not yet.
    let first = app
        .start(app.job("sleep", 3, 3, &[("duration_ms", "0")]))
        .await;
    app.wait_for(&first.id, JobState::Succeeded, SECS(10)).await;
    gone_within(&app, &first.id, SECS(10)).await;
    tokio::time::sleep(SECS(2)).await;
    assert_eq!(vacuums().await, 0, "vacuumed after 3 items deleted of 5");
    // Three more: six deleted, past the threshold.
    let second = app
        .start(app.job("sleep", 3, 3, &[("duration_ms", "0")]))
        .await;
    app.wait_for(&second.id, JobState::Succeeded, SECS(10))
        .await;
    gone_within(&app, &second.id, SECS(10)).await;
    app.eventually("the items table vacuumed", SECS(10), || async {
        vacuums().await >= 1
    })
    .await;
    assert_eq!(app.get(&live.id).await.state, JobState::Running as i32);
    app.gate.open();
    app.wait_for(&live.id, JobState::Succeeded, SECS(10)).await;
    app.stop().await;
}

/// Waits until the job is gone (NOT_FOUND).
async fn gone_within(app: &TestApp, id: &str, within: Duration) {
    app.eventually("the job deleted", within, || async {
        matches!(
            app.client
                .clone()
                .get_job(pb::GetJobRequest { job_id: id.into() })
                .await,
            Err(status) if status.code() == Code::NotFound
        )
    })
    .await;
}

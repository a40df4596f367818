//! Jobs started paused (`start_paused`) and jobs scheduled for later
//! (`start_paused` with `resume_at`): nothing runs before the resume, then
//! the job runs as any other; a schedule holds across a restart.

use super::harness::{Options, SECS, StoreKind, restart, spawn_app_with, transitions};
use jobvisor::pb::JobState;
use std::time::Duration;
use tonic::Code;
use tonic_types::StatusExt;

fn timestamp(t: chrono::DateTime<chrono::Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: t.timestamp_subsec_nanos() as i32,
    }
}

#[tokio::test]
async fn a_job_started_paused_runs_nothing_until_resumed() {
    started_paused_on(StoreKind::Postgres).await;
}

#[tokio::test]
async fn a_job_started_paused_runs_nothing_until_resumed_on_the_embedded_store() {
    started_paused_on(StoreKind::Embedded).await;
}

async fn started_paused_on(store: StoreKind) {
    let app = spawn_app_with(Options {
        store,
        ..Options::default()
    })
    .await;
    let mut request = app.job("recording", 6, 2, &[("duration_ms", "5")]);
    request.start_paused = true;
    let job = app.start(request).await;
    assert_eq!(job.state, JobState::Paused as i32);
    assert!(job.can_resume && job.can_cancel);
    let pause = &job.pauses[0];
    assert_eq!(pause.reason, "started paused");
    assert!(pause.paused_time.is_some() && pause.scheduled_resume_time.is_none());
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(app.executions.started(), 0, "nothing ran while paused");
    assert_eq!(app.get(&job.id).await.state, JobState::Paused as i32);

    app.resume(&job.id).await.unwrap();
    let done = app.wait_for(&job.id, JobState::Succeeded, SECS(10)).await;
    assert_eq!(done.counts.unwrap().succeeded, 6);
    assert_eq!(app.executions.started(), 6);
    let events = app.watch_all(&job.id, 0, SECS(5)).await;
    assert_eq!(
        transitions(&events),
        [
            (JobState::Unspecified, JobState::Paused),
            (JobState::Paused, JobState::Running),
            (JobState::Running, JobState::Succeeded),
        ]
    );
    app.stop().await;
}

/// Scheduled 2 s ahead, the server restarted meanwhile: the job starts by
/// itself at its time, not before.
#[tokio::test]
async fn a_job_scheduled_for_later_starts_by_itself_after_a_restart() {
    let app = spawn_app_with(Options::default()).await;
    let at = chrono::Utc::now() + chrono::Duration::seconds(2);
    let mut request = app.job("recording", 4, 2, &[("duration_ms", "5")]);
    request.start_paused = true;
    request.resume_at = Some(timestamp(at));
    let job = app.start(request).await;
    assert_eq!(job.state, JobState::Paused as i32);
    let scheduled = job.pauses[0].scheduled_resume_time.unwrap();
    assert_eq!(scheduled.seconds, at.timestamp());

    let app = restart(app).await;
    assert_eq!(app.get(&job.id).await.state, JobState::Paused as i32);
    assert_eq!(app.executions.started(), 0);
    let done = app.wait_for(&job.id, JobState::Succeeded, SECS(15)).await;
    assert_eq!(done.counts.unwrap().succeeded, 4);
    let resumed = done.pauses[0].resume_time.expect("resumed");
    let resumed = chrono::DateTime::from_timestamp(resumed.seconds, resumed.nanos as u32).unwrap();
    assert!(resumed >= at, "resumed at {resumed}, scheduled for {at}");
    app.stop().await;
}

#[tokio::test]
async fn a_schedule_without_start_paused_or_in_the_past_is_refused() {
    let app = spawn_app_with(Options::default()).await;
    let later = chrono::Utc::now() + chrono::Duration::hours(1);
    let earlier = chrono::Utc::now() - chrono::Duration::seconds(5);
    let mut alone = app.job("sleep", 2, 1, &[]);
    alone.resume_at = Some(timestamp(later));
    let mut past = app.job("sleep", 2, 1, &[]);
    past.start_paused = true;
    past.resume_at = Some(timestamp(earlier));
    for (request, description) in [(alone, "start_paused"), (past, "in the past")] {
        let status = app.client.clone().start_job(request).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        let violations = status.get_details_bad_request().unwrap().field_violations;
        assert_eq!(violations.len(), 1, "{violations:?}");
        assert_eq!(violations[0].field, "resume_at");
        assert!(
            violations[0].description.contains(description),
            "{violations:?}"
        );
    }
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs")
        .fetch_one(app.pg())
        .await
        .unwrap();
    assert_eq!(stored, 0);
    app.stop().await;
}

//! The controls beyond pause/resume/cancel: retrying failed items, a pause
//! with a drain deadline or a resume time, bulk control by label, the error
//! breaker, concurrency changes, a running-time budget, item results.

use super::harness::{SECS, spawn_app, transitions};
use jobvisor::pb::{self, ItemState, JobState, PauseMode};
use std::time::{Duration, Instant};
use tonic::Code;

fn flaky_job(items: &[&str], concurrency: u32) -> pb::StartJobRequest {
    pb::StartJobRequest {
        name: "flaky".into(),
        executor: "flaky".into(),
        items: items.iter().map(|s| s.to_string()).collect(),
        concurrency,
        max_attempts: 2,
        ..Default::default()
    }
}

fn in_future(after: Duration) -> prost_types::Timestamp {
    let at = chrono::Utc::now() + chrono::Duration::from_std(after).unwrap();
    prost_types::Timestamp {
        seconds: at.timestamp(),
        nanos: at.timestamp_subsec_nanos() as i32,
    }
}

#[tokio::test]
async fn retry_failed_items_reruns_exactly_the_failed_ones() {
    let app = spawn_app().await;
    app.flaky.break_items(&["b", "d"]);
    let job = app.start(flaky_job(&["a", "b", "c", "d", "e"], 2)).await;
    let failed = app.wait_for(&job.id, JobState::Failed, SECS(10)).await;
    assert_eq!(failed.counts.unwrap().failed, 2);
    let ran_before = app.executions.all();
    // Each failing item ran twice (max_attempts 2), the others once.
    assert_eq!(ran_before.len(), 3 + 2 * 2);

    app.flaky.fix_all();
    let mut client = app.client.clone();
    let retried = client
        .retry_failed_items(pb::RetryFailedItemsRequest {
            job_id: job.id.clone(),
            request_id: "retry-1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(retried.state, JobState::Running as i32);
    let done = app.wait_for(&job.id, JobState::Succeeded, SECS(10)).await;
    assert_eq!(done.counts.unwrap().succeeded, 5);
    assert!(done.end_time.is_some());
    let again: Vec<(u32, u32)> = app.executions.all()[ran_before.len()..]
        .iter()
        .map(|e| (e.index, e.attempt))
        .collect();
    let mut indexes: Vec<u32> = again.iter().map(|e| e.0).collect();
    indexes.sort_unstable();
    assert_eq!(indexes, [1, 3], "only the failed items ran again");
    assert!(again.iter().all(|e| e.1 == 1), "their attempts start over");
    let items = app.items(&job.id).await;
    assert_eq!(items[1].result, "done b");
    // The errors stay in the history.
    let history = app.watch_all(&job.id, 0, SECS(5)).await;
    let failures = history
        .iter()
        .filter(|e| matches!(e.kind, Some(pb::job_event::Kind::ItemFailed(_))))
        .count();
    assert_eq!(failures, 4);
    // A succeeded job: a no-op; a running one: refused.
    let same = client
        .retry_failed_items(pb::RetryFailedItemsRequest {
            job_id: job.id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(same.last_sequence, done.last_sequence);
    let running = app.start(app.job("gate", 1, 1, &[])).await;
    let refused = client
        .retry_failed_items(pb::RetryFailedItemsRequest {
            job_id: running.id,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition);
    app.stop().await;
}

#[tokio::test]
async fn a_graceful_pause_turns_immediate_at_its_drain_deadline() {
    let app = spawn_app().await;
    let job = app.start(app.job("gate", 4, 2, &[])).await;
    app.eventually("2 in flight", SECS(10), || async {
        app.executions.running() == 2
    })
    .await;
    let started = Instant::now();
    let pausing = app
        .client
        .clone()
        .pause_job(pb::PauseJobRequest {
            job_id: job.id.clone(),
            drain_timeout: Some(prost_types::Duration {
                seconds: 0,
                nanos: 300_000_000,
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(pausing.state, JobState::Pausing as i32);
    // The gate never opens: only the deadline can end the pause.
    app.wait_for(&job.id, JobState::Paused, SECS(5)).await;
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(300), "{took:?}");
    assert!(took < Duration::from_secs(3), "{took:?}");
    assert!(
        app.executions
            .all()
            .iter()
            .all(|e| e.outcome == Some("interrupted"))
    );
    // An immediate pause with a drain deadline makes no sense.
    let status = app
        .client
        .clone()
        .pause_job(pb::PauseJobRequest {
            job_id: job.id.clone(),
            mode: PauseMode::Immediate as i32,
            drain_timeout: Some(prost_types::Duration {
                seconds: 1,
                nanos: 0,
            }),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    app.stop().await;
}

#[tokio::test]
async fn a_pause_resumes_by_itself_even_across_a_restart() {
    let app = spawn_app().await;
    let job = app
        .start(app.job("sleep", 20, 2, &[("duration_ms", "20"), ("steps", "1")]))
        .await;
    let paused = app
        .client
        .clone()
        .pause_job(pb::PauseJobRequest {
            job_id: job.id.clone(),
            reason: "nightly window".into(),
            resume_at: Some(in_future(Duration::from_secs(3))),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(paused.pauses[0].scheduled_resume_time.is_some());
    app.wait_for(&job.id, JobState::Paused, SECS(5)).await;
    // Restart the server while it waits: the time is in the store.
    let app = super::harness::restart(app).await;
    let done = app.wait_for(&job.id, JobState::Succeeded, SECS(20)).await;
    let pause = &done.pauses[0];
    assert!(pause.resume_time.is_some());
    let events = app.watch_all(&job.id, 0, SECS(5)).await;
    let resumed = events.iter().find_map(|e| match &e.kind {
        Some(pb::job_event::Kind::StateChanged(c))
            if c.to == JobState::Running as i32 && c.from != 0 =>
        {
            Some(c.clone())
        }
        _ => None,
    });
    assert!(resumed.unwrap().reason.contains("scheduled resume"));
    // A time in the past is refused.
    let status = app
        .client
        .clone()
        .pause_job(pb::PauseJobRequest {
            job_id: job.id.clone(),
            resume_at: Some(prost_types::Timestamp {
                seconds: 1,
                nanos: 0,
            }),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    app.stop().await;
}

#[tokio::test]
async fn bulk_control_by_label_and_id_reports_each_job() {
    let app = spawn_app().await;
    let mut video = Vec::new();
    for _ in 0..3 {
        let mut r = app.job("gate", 2, 1, &[]);
        r.labels = [("team".to_string(), "video".to_string())].into();
        video.push(app.start(r).await.id);
    }
    let mut r = app.job("gate", 2, 1, &[]);
    r.labels = [("team".to_string(), "data".to_string())].into();
    let data = app.start(r).await.id;
    let unknown = uuid::Uuid::new_v4().to_string();
    let mut client = app.client.clone();
    let answer = client
        .control_jobs(pb::ControlJobsRequest {
            action: pb::ControlAction::Pause as i32,
            labels: [("team".to_string(), "video".to_string())].into(),
            job_ids: vec![unknown.clone()],
            reason: "video maintenance".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.outcomes.len(), 4);
    for outcome in &answer.outcomes {
        if outcome.job_id == unknown {
            assert_eq!(outcome.error_code, "NOT_FOUND");
        } else {
            assert!(video.contains(&outcome.job_id));
            let job = outcome.job.as_ref().unwrap();
            assert_eq!(job.state, JobState::Pausing as i32, "{outcome:?}");
            assert_eq!(job.pauses[0].reason, "video maintenance");
        }
    }
    assert_eq!(
        app.get(&data).await.state,
        JobState::Running as i32,
        "other teams untouched"
    );
    // Cancel them all by id, including one already cancelled: a no-op.
    app.cancel(&video[0]).await.unwrap();
    let answer = client
        .control_jobs(pb::ControlJobsRequest {
            action: pb::ControlAction::Cancel as i32,
            job_ids: video.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        answer.outcomes.iter().all(|o| o.error_code.is_empty()),
        "{answer:?}"
    );
    // No selector at all is refused.
    let status = client
        .control_jobs(pb::ControlJobsRequest {
            action: pb::ControlAction::Resume as i32,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    app.stop().await;
}

#[tokio::test]
async fn the_breaker_pauses_a_failing_job_and_resume_clears_it() {
    let app = spawn_app().await;
    app.flaky.break_items(&["3", "4", "5", "6", "7", "8"]);
    let mut request = flaky_job(&["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"], 1);
    request.max_attempts = 1;
    request.pause_after_failures = 3;
    let job = app.start(request).await;
    let paused = app.wait_for(&job.id, JobState::Paused, SECS(10)).await;
    let pause = &paused.pauses[0];
    assert!(
        pause
            .reason
            .contains("automatic pause: 3 failed attempts in a row"),
        "{}",
        pause.reason
    );
    assert!(pause.reason.contains("is broken"), "{}", pause.reason);
    assert_eq!(paused.counts.unwrap().failed, 3);
    // Fixed and resumed: the breaker starts counting afresh, the job ends.
    app.flaky.fix_all();
    app.resume(&job.id).await.unwrap();
    let done = app.wait_for(&job.id, JobState::Failed, SECS(10)).await;
    let counts = done.counts.unwrap();
    assert_eq!((counts.succeeded, counts.failed), (7, 3));
    assert_eq!(done.pauses.len(), 1);
    app.stop().await;
}

#[tokio::test]
async fn concurrency_changes_under_load_lose_nothing() {
    let app = spawn_app().await;
    let job = app
        .start(app.job(
            "recording",
            200,
            2,
            &[("duration_ms", "40"), ("steps", "2")],
        ))
        .await;
    app.eventually("2 in flight", SECS(10), || async {
        app.executions.running() == 2
    })
    .await;
    let mut client = app.client.clone();
    let up = client
        .set_job_concurrency(pb::SetJobConcurrencyRequest {
            job_id: job.id.clone(),
            concurrency: 8,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(up.concurrency, 8);
    app.eventually("8 in flight", SECS(10), || async {
        app.executions.running() >= 7
    })
    .await;
    client
        .set_job_concurrency(pb::SetJobConcurrencyRequest {
            job_id: job.id.clone(),
            concurrency: 1,
            ..Default::default()
        })
        .await
        .unwrap();
    app.eventually("1 in flight", SECS(10), || async {
        app.executions.running() <= 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(app.executions.running() <= 1);
    // Back up, and let it finish: every item exactly once.
    client
        .set_job_concurrency(pb::SetJobConcurrencyRequest {
            job_id: job.id.clone(),
            concurrency: 6,
            ..Default::default()
        })
        .await
        .unwrap();
    app.wait_for(&job.id, JobState::Succeeded, SECS(30)).await;
    let mut order: Vec<u32> = app.executions.all().iter().map(|e| e.index).collect();
    order.sort_unstable();
    assert_eq!(order, (0..200).collect::<Vec<_>>());
    let events = app.watch_all(&job.id, 0, SECS(5)).await;
    let changes: Vec<(u32, u32)> = events
        .iter()
        .filter_map(|e| match &e.kind {
            Some(pb::job_event::Kind::ConcurrencyChanged(c)) => Some((c.from, c.to)),
            _ => None,
        })
        .collect();
    assert_eq!(changes, [(2, 8), (8, 1), (1, 6)]);
    let status = client
        .set_job_concurrency(pb::SetJobConcurrencyRequest {
            job_id: job.id.clone(),
            concurrency: 3,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "an ended job");
    app.stop().await;
}

#[tokio::test]
async fn the_running_time_budget_does_not_count_paused_time() {
    let app = spawn_app().await;
    let mut request = app.job("sleep", 100, 1, &[("duration_ms", "50"), ("steps", "1")]);
    request.timeout = Some(prost_types::Duration {
        seconds: 0,
        nanos: 600_000_000,
    });
    let job = app.start(request).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    app.pause(&job.id, PauseMode::Immediate).await.unwrap();
    app.wait_for(&job.id, JobState::Paused, SECS(5)).await;
    // Paused well past the budget: the clock is stopped.
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert_eq!(app.get(&job.id).await.state, JobState::Paused as i32);
    app.resume(&job.id).await.unwrap();
    let failed = app.wait_for(&job.id, JobState::Failed, SECS(10)).await;
    assert!(
        failed.last_error.contains("timeout"),
        "{}",
        failed.last_error
    );
    let events = app.watch_all(&job.id, 0, SECS(5)).await;
    assert_eq!(
        transitions(&events).last().unwrap(),
        &(JobState::Running, JobState::Failed)
    );
    // It ran about 600 ms in all, not counting the pause.
    let items = app.items(&job.id).await;
    let done = items
        .iter()
        .filter(|i| i.state == ItemState::Succeeded as i32)
        .count();
    assert!((5..=14).contains(&done), "{done} items of 50 ms in ~600 ms");
    app.stop().await;
}

//! A job's rate limit on item starts (`rate_limit`, `rate_period`): starts
//! are spaced evenly whatever the concurrency, the limit is kept with the
//! job, and SetJobRateLimit changes it while the job runs.

use super::harness::{Options, SECS, StoreKind, bad_fields, spawn_app_with};
use jobvisor::pb::{self, JobState};
use std::time::Duration;
use tonic::Code;
use tonic_types::StatusExt;

#[tokio::test]
async fn a_rate_limit_spaces_the_item_starts() {
    rate_limited_on(StoreKind::Postgres).await;
}

#[tokio::test]
async fn a_rate_limit_spaces_the_item_starts_on_the_embedded_store() {
    rate_limited_on(StoreKind::Embedded).await;
}

/// 12 instant items, 4 at once, at most 10 starts a second: a start every
/// 100 ms, so 1.1 s from the first start to the last.
async fn rate_limited_on(store: StoreKind) {
    let app = spawn_app_with(Options {
        store,
        ..Options::default()
    })
    .await;
    let mut request = app.job("recording", 12, 4, &[("duration_ms", "0")]);
    request.rate_limit = 10;
    let job = app.start(request).await;
    let policy = job.policy.unwrap();
    assert_eq!(policy.rate_limit, 10);
    assert_eq!(
        policy.rate_period.map(|p| p.seconds),
        Some(1),
        "the default"
    );
    app.wait_for(&job.id, JobState::Succeeded, SECS(15)).await;

    let mut starts: Vec<_> = app.executions.all().iter().map(|e| e.started).collect();
    assert_eq!(starts.len(), 12);
    starts.sort();
    // The limiter spaces the claims 100 ms apart; a claim slower than the
    // others brings two starts closer (16 ms once, on a loaded machine).
    // Any eleven starts in a row still span ten intervals, less a slow
    // claim's delay; without the limit all 12 start within a few
    // milliseconds.
    for w in starts.windows(11) {
        let took = w[10] - w[0];
        assert!(
            took >= Duration::from_millis(800),
            "{starts:?}: 11 in {took:?}"
        );
    }
    let span = starts[11] - starts[0];
    assert!(
        span >= Duration::from_millis(900) && span < Duration::from_secs(4),
        "{span:?}"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_rate_period_without_a_rate_limit_is_refused() {
    let app = spawn_app_with(Options::default()).await;
    let mut request = app.job("sleep", 2, 1, &[]);
    request.rate_period = Some(prost_types::Duration {
        seconds: 60,
        nanos: 0,
    });
    let status = app.client.clone().start_job(request).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    let violations = status.get_details_bad_request().unwrap().field_violations;
    assert_eq!(violations.len(), 1, "{violations:?}");
    assert_eq!(violations[0].field, "rate_period");
    app.stop().await;
}

#[tokio::test]
async fn a_rate_limit_changed_while_the_job_runs_applies_to_the_next_starts() {
    rate_changed_on(StoreKind::Postgres).await;
}

#[tokio::test]
async fn a_rate_limit_changed_while_the_job_runs_applies_on_the_embedded_store() {
    rate_changed_on(StoreKind::Embedded).await;
}

/// 40 instant items at 2 a second would take 20 s; raised to 1,000 a
/// second after the first few, the rest take a few milliseconds.
async fn rate_changed_on(store: StoreKind) {
    let app = spawn_app_with(Options {
        store,
        ..Options::default()
    })
    .await;
    let mut request = app.job("recording", 40, 4, &[("duration_ms", "0")]);
    request.rate_limit = 2;
    let job = app.start(request).await;
    app.eventually("two items started", SECS(5), || async {
        app.executions.started() >= 2
    })
    .await;
    let changed = app
        .client
        .clone()
        .set_job_rate_limit(pb::SetJobRateLimitRequest {
            job_id: job.id.clone(),
            rate_limit: 1_000,
            request_id: "faster".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(changed.policy.unwrap().rate_limit, 1_000);
    let started_at_change = app.executions.started();
    assert!(started_at_change < 10, "{started_at_change} started at 2/s");
    app.wait_for(&job.id, JobState::Succeeded, SECS(5)).await;
    let events = app.watch_all(&job.id, 0, SECS(5)).await;
    let change = events
        .iter()
        .find_map(|e| match &e.kind {
            Some(pb::job_event::Kind::RateLimitChanged(c)) => Some(c.clone()),
            _ => None,
        })
        .expect("a RateLimitChanged event");
    assert_eq!((change.from_limit, change.to_limit), (2, 1_000));
    assert_eq!(change.from_period.map(|p| p.seconds), Some(1));
    assert_eq!(change.request_id, "faster");

    // Not on an ended job; a bad field is named.
    let status = app
        .client
        .clone()
        .set_job_rate_limit(pb::SetJobRateLimitRequest {
            job_id: job.id.clone(),
            rate_limit: 5,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    let status = app
        .client
        .clone()
        .set_job_rate_limit(pb::SetJobRateLimitRequest {
            job_id: job.id.clone(),
            rate_limit: 2_000_000,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(bad_fields(&status), ["rate_limit"]);
    app.stop().await;
}

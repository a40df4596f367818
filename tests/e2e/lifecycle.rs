//! A job from start to its end.

use super::harness::{Options, SECS, StoreKind, spawn_app, spawn_app_with, stored, transitions};
use jobvisor::pb::{self, JobState};

#[tokio::test]
async fn a_job_runs_every_item_and_succeeds() {
    a_job_runs_every_item_and_succeeds_on(StoreKind::Postgres).await;
}

pub async fn a_job_runs_every_item_and_succeeds_on(store: StoreKind) {
    let app = spawn_app_with(Options {
        store,
        ..Options::default()
    })
    .await;
    let job = app
        .start(app.job("sleep", 30, 4, &[("duration_ms", "20"), ("steps", "2")]))
        .await;
    assert_eq!(job.state, JobState::Running as i32);
    assert_eq!(job.counts.as_ref().unwrap().total, 30);
    assert!(job.can_pause && job.can_cancel);

    let events = app.watch_all(&job.id, 0, SECS(30)).await;
    // The stream starts with a snapshot and ends with the terminal event.
    assert!(matches!(
        events[0].kind,
        Some(pb::job_event::Kind::Snapshot(_))
    ));
    assert_eq!(
        transitions(&events),
        [
            (JobState::Unspecified, JobState::Running),
            (JobState::Running, JobState::Succeeded)
        ]
    );
    let last = events.last().unwrap();
    assert!(
        matches!(&last.kind, Some(pb::job_event::Kind::StateChanged(c)) if c.to == JobState::Succeeded as i32)
    );

    let done = app.get(&job.id).await;
    let counts = done.counts.unwrap();
    assert_eq!(
        (counts.succeeded, counts.pending, counts.running),
        (30, 0, 0)
    );
    assert!(done.end_time.is_some());
    assert!(!done.can_pause && !done.can_resume && !done.can_cancel);
    assert_eq!(done.last_sequence, stored(&events).last().unwrap().sequence);
    for item in app.items(&job.id).await {
        assert_eq!(item.state, pb::ItemState::Succeeded as i32, "{item:?}");
        assert_eq!(item.attempts, 1);
    }
    app.stop().await;
}

#[tokio::test]
async fn failing_items_are_retried_then_fail_the_job() {
    failing_items_are_retried_then_fail_the_job_on(StoreKind::Postgres).await;
}

pub async fn failing_items_are_retried_then_fail_the_job_on(store: StoreKind) {
    let app = spawn_app_with(Options {
        store,
        ..Options::default()
    })
    .await;
    let mut request = app.job(
        "sleep",
        10,
        2,
        &[("duration_ms", "0"), ("fail_pattern", "^item-[37]$")],
    );
    request.max_attempts = 2;
    let job = app.start(request).await;
    let events = app.watch_all(&job.id, 0, SECS(30)).await;
    let done = app.get(&job.id).await;
    assert_eq!(done.state, JobState::Failed as i32);
    let counts = done.counts.unwrap();
    assert_eq!((counts.succeeded, counts.failed), (8, 2));
    assert!(
        done.last_error.contains("2 of 10 items failed"),
        "{}",
        done.last_error
    );
    // Each failing item failed twice: once retried, once for good.
    let failures: Vec<_> = events
        .iter()
        .filter_map(|e| match &e.kind {
            Some(pb::job_event::Kind::ItemFailed(f)) => Some((f.index, f.attempt, f.will_retry)),
            _ => None,
        })
        .collect();
    for index in [3, 7] {
        let mine: Vec<_> = failures.iter().filter(|f| f.0 == index).collect();
        assert_eq!(
            mine,
            [&(index, 1, true), &(index, 2, false)],
            "{failures:?}"
        );
    }
    let items = app.items(&job.id).await;
    assert_eq!(items[3].state, pb::ItemState::Failed as i32);
    assert_eq!(items[3].attempts, 2);
    assert!(items[3].last_error.contains("fail_pattern"));
    app.stop().await;
}

/// A failed attempt goes back to pending and is claimed again with the
/// items around it, not after the rest of the job: the claims' lower bound
/// goes back to the failed item even when a claim sent before the failure
/// was reported is answered after it (that answer used to raise the bound
/// past the item, which then waited for the job's end, about one retry in
/// two).
#[tokio::test]
async fn a_failed_attempt_is_retried_soon_not_at_the_end_of_the_job() {
    let app = spawn_app().await;
    // Items 100, 200, …, 2900 fail on every attempt.
    let mut request = app.job(
        "sleep",
        3000,
        16,
        &[
            ("duration_ms", "0"),
            ("fail_pattern", "^item-[1-9][0-9]*00$"),
        ],
    );
    request.max_attempts = 2;
    let job = app.start(request).await;
    let events = app.watch_all(&job.id, 0, SECS(60)).await;
    assert_eq!(app.get(&job.id).await.state, JobState::Failed as i32);
    // Where each attempt's failure is in the event log.
    let at = |index: u32, attempt: u32| {
        events
            .iter()
            .find(|e| {
                matches!(&e.kind, Some(pb::job_event::Kind::ItemFailed(f))
                    if f.index == index && f.attempt == attempt)
            })
            .map(|e| e.sequence)
            .unwrap_or_else(|| panic!("no failure of item {index}, attempt {attempt}"))
    };
    let late: Vec<u32> = (1..=24)
        .map(|k| k * 100)
        .filter(|&k| at(k, 2) > at(k + 500, 1))
        .collect();
    assert!(
        late.is_empty(),
        "retried only after item k + 500 had failed once, for k in {late:?}"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_restarted_server_adopts_running_jobs() {
    a_restarted_server_adopts_running_jobs_on(StoreKind::Postgres).await;
}

pub async fn a_restarted_server_adopts_running_jobs_on(store: StoreKind) {
    let app = spawn_app_with(Options {
        store,
        ..Options::default()
    })
    .await;
    let job = app
        .start(app.job("sleep", 40, 2, &[("duration_ms", "50"), ("steps", "5")]))
        .await;
    // Stop the server mid-job (graceful), then start a new one on the same
    // database: the job continues by itself.
    app.eventually("a few items done", SECS(10), || async {
        app.get(&job.id).await.counts.unwrap().succeeded >= 4
    })
    .await;
    let db_url = app.db.url.clone();
    let second = super::harness::restart(app).await;
    let done = second
        .wait_for(&job.id, JobState::Succeeded, SECS(30))
        .await;
    assert_eq!(done.counts.unwrap().succeeded, 40);
    assert_eq!(second.db.url, db_url);
    second.stop().await;
}

/// GetJob names the server that runs a live job (this one: a single
/// server runs every job of its store), and nobody once it has ended.
#[tokio::test]
async fn get_job_names_the_server_that_runs_a_live_job() {
    let app = spawn_app().await;
    let job = app
        .start(app.job("sleep", 4, 1, &[("duration_ms", "300"), ("steps", "3")]))
        .await;
    let live = app.get(&job.id).await;
    let owner = live.owner.expect("a running job has an owner");
    assert_eq!(owner.pid, std::process::id());
    assert!(!owner.host.is_empty() && !owner.server.is_empty());
    let since = owner.since_time.unwrap();
    assert!(since.seconds >= live.create_time.unwrap().seconds);
    // Only GetJob says it: the answer of StartJob does not.
    assert!(job.owner.is_none());
    let done = app.wait_for(&job.id, JobState::Succeeded, SECS(30)).await;
    assert!(app.get(&done.id).await.owner.is_none());
    app.stop().await;
}

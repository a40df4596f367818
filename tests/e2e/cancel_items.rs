//! Chosen items of a live job cancelled (CancelItems), on both stores:
//! pending ones never run, running ones are interrupted at once, the rest
//! of the job runs and it ends with exact counts and one event per call;
//! a paused job keeps them cancelled after its resume, RetryFailedItems
//! does not run them, and bad input changes nothing.

use super::harness::*;
use jobvisor::pb::{self, ItemState, JobState};
use std::time::{Duration, Instant};
use tonic::Code;

const WITHIN: Duration = Duration::from_secs(10);

fn counts(job: &pb::Job) -> pb::ItemCounts {
    job.counts.unwrap_or_default()
}

fn request(id: &str) -> pb::CancelItemsRequest {
    pb::CancelItemsRequest {
        job_id: id.into(),
        reason: "not needed".into(),
        ..Default::default()
    }
}

fn by_index(id: &str, indexes: &[u32]) -> pb::CancelItemsRequest {
    pb::CancelItemsRequest {
        indexes: indexes.to_vec(),
        ..request(id)
    }
}

fn by_range(id: &str, first: u32, last: u32, states: &[ItemState]) -> pb::CancelItemsRequest {
    pb::CancelItemsRequest {
        range: Some(pb::ItemRange { first, last }),
        states: states.iter().map(|s| *s as i32).collect(),
        ..request(id)
    }
}

async fn cancel_items(
    app: &TestApp,
    request: pb::CancelItemsRequest,
) -> Result<pb::CancelItemsResponse, tonic::Status> {
    app.client
        .clone()
        .cancel_items(request)
        .await
        .map(|r| r.into_inner())
}

/// Each item's state, in index order.
async fn item_states(app: &TestApp, id: &str) -> Vec<ItemState> {
    app.items(id)
        .await
        .iter()
        .map(|i| ItemState::try_from(i.state).unwrap())
        .collect()
}

fn cancelled_events(events: &[pb::JobEvent]) -> Vec<pb::ItemsCancelled> {
    events
        .iter()
        .filter_map(|e| match &e.kind {
            Some(pb::job_event::Kind::ItemsCancelled(c)) => Some(c.clone()),
            _ => None,
        })
        .collect()
}

/// The indexes the test executors started, sorted.
fn ran(app: &TestApp) -> Vec<u32> {
    let mut ran: Vec<u32> = app.executions.all().iter().map(|e| e.index).collect();
    ran.sort_unstable();
    ran
}

async fn app_on(store: StoreKind) -> TestApp {
    spawn_app_with(Options {
        store,
        ..Options::default()
    })
    .await
}

async fn pending_items_cancelled_by_index_never_run(store: StoreKind) {
    use ItemState as I;
    let app = app_on(store).await;
    let job = app.start(app.job("gate", 6, 1, &[])).await;
    app.eventually("item 0 in flight", WITHIN, || async {
        app.executions.running() == 1
    })
    .await;
    let done = cancel_items(&app, by_index(&job.id, &[4, 2]))
        .await
        .expect("CancelItems");
    assert_eq!((done.cancelled, done.interrupted.len()), (2, 0));
    let after = done.job.unwrap();
    assert_eq!(after.state, JobState::Running as i32);
    assert_eq!(
        (counts(&after).cancelled, counts(&after).pending),
        (2, 3),
        "{after:?}"
    );
    app.gate.open();
    let ended = app.wait_for(&job.id, JobState::Succeeded, WITHIN).await;
    let c = counts(&ended);
    assert_eq!((c.total, c.succeeded, c.cancelled, c.failed), (6, 4, 2, 0));
    assert_eq!(ran(&app), [0, 1, 3, 5], "cancelled items never ran");
    assert_eq!(
        item_states(&app, &job.id).await,
        [
            I::Succeeded,
            I::Succeeded,
            I::Cancelled,
            I::Succeeded,
            I::Cancelled,
            I::Succeeded
        ]
    );
    let history = app.watch_all(&job.id, 0, WITHIN).await;
    let cancelled = cancelled_events(&history);
    assert_eq!(cancelled.len(), 1, "{cancelled:?}");
    assert_eq!(
        (
            cancelled[0].count,
            cancelled[0].first_index,
            cancelled[0].last_index
        ),
        (2, 2, 4)
    );
    assert_eq!(cancelled[0].reason, "not needed");
    app.stop().await;
}

#[tokio::test]
async fn pending_items_cancelled_by_index_never_run_postgres() {
    pending_items_cancelled_by_index_never_run(StoreKind::Postgres).await;
}

#[tokio::test]
async fn pending_items_cancelled_by_index_never_run_embedded() {
    pending_items_cancelled_by_index_never_run(StoreKind::Embedded).await;
}

async fn a_running_item_is_interrupted_at_once(store: StoreKind) {
    let app = app_on(store).await;
    // Each item sleeps a minute in one step: no checkpoint (whose refusal
    // would stop it too) before its end.
    let job = app
        .start(app.job(
            "recording",
            3,
            2,
            &[("duration_ms", "60000"), ("steps", "1")],
        ))
        .await;
    app.eventually("items 0 and 1 in flight", WITHIN, || async {
        app.executions.running() == 2
    })
    .await;
    let asked = Instant::now();
    let done = cancel_items(&app, by_index(&job.id, &[0]))
        .await
        .expect("CancelItems");
    assert_eq!((done.cancelled, done.interrupted), (1, vec![0]));
    app.eventually("item 0 interrupted", Duration::from_secs(3), || async {
        app.executions.of(0)[0].outcome == Some("interrupted")
    })
    .await;
    assert!(asked.elapsed() < Duration::from_secs(3));
    assert_eq!(item_states(&app, &job.id).await[0], ItemState::Cancelled);
    // Its worker took the next item (2); cancel the running ones by range.
    app.eventually("item 2 in flight", WITHIN, || async {
        app.executions.of(2).len() == 1
    })
    .await;
    let rest = cancel_items(&app, by_range(&job.id, 0, 2, &[ItemState::Running]))
        .await
        .expect("CancelItems");
    assert_eq!((rest.cancelled, rest.interrupted), (2, vec![1, 2]));
    // The job ends as soon as they have stopped, not after their minute.
    let ended = app
        .wait_for(&job.id, JobState::Succeeded, Duration::from_secs(5))
        .await;
    assert!(asked.elapsed() < Duration::from_secs(10));
    let c = counts(&ended);
    assert_eq!((c.total, c.cancelled, c.succeeded, c.running), (3, 3, 0, 0));
    // Each ran once, and stopped as interrupted.
    for index in 0..3 {
        let runs = app.executions.of(index);
        assert_eq!(runs.len(), 1, "item {index}: {runs:?}");
        assert_eq!(runs[0].outcome, Some("interrupted"), "item {index}");
    }
    let history = app.watch_all(&job.id, 0, WITHIN).await;
    assert_eq!(cancelled_events(&history).len(), 2);
    app.stop().await;
}

#[tokio::test]
async fn a_running_item_is_interrupted_at_once_postgres() {
    a_running_item_is_interrupted_at_once(StoreKind::Postgres).await;
}

#[tokio::test]
async fn a_running_item_is_interrupted_at_once_embedded() {
    a_running_item_is_interrupted_at_once(StoreKind::Embedded).await;
}

async fn a_range_cancels_only_the_states_asked_for(store: StoreKind) {
    use ItemState as I;
    let app = app_on(store).await;
    let job = app.start(app.job("gate", 6, 2, &[])).await;
    app.eventually("items 0 and 1 in flight", WITHIN, || async {
        app.executions.running() == 2
    })
    .await;
    // Pending ones of 0 to 3: items 2 and 3; the running ones stay.
    let pending = cancel_items(&app, by_range(&job.id, 0, 3, &[I::Pending]))
        .await
        .expect("CancelItems");
    assert_eq!((pending.cancelled, pending.interrupted.len()), (2, 0));
    // Running ones of 4 to 5: none, and nothing is recorded.
    let seq = pending.job.as_ref().unwrap().last_sequence;
    let none = cancel_items(&app, by_range(&job.id, 4, 5, &[I::Running]))
        .await
        .expect("CancelItems");
    assert_eq!(none.cancelled, 0);
    assert_eq!(none.job.unwrap().last_sequence, seq, "no event");
    assert_eq!(app.executions.running(), 2, "the running items go on");
    app.gate.open();
    let ended = app.wait_for(&job.id, JobState::Succeeded, WITHIN).await;
    let c = counts(&ended);
    assert_eq!((c.succeeded, c.cancelled), (4, 2));
    assert_eq!(ran(&app), [0, 1, 4, 5]);
    assert_eq!(
        item_states(&app, &job.id).await,
        [
            I::Succeeded,
            I::Succeeded,
            I::Cancelled,
            I::Cancelled,
            I::Succeeded,
            I::Succeeded
        ]
    );
    app.stop().await;
}

#[tokio::test]
async fn a_range_cancels_only_the_states_asked_for_postgres() {
    a_range_cancels_only_the_states_asked_for(StoreKind::Postgres).await;
}

#[tokio::test]
async fn a_range_cancels_only_the_states_asked_for_embedded() {
    a_range_cancels_only_the_states_asked_for(StoreKind::Embedded).await;
}

async fn items_cancelled_while_paused_stay_cancelled(store: StoreKind) {
    let app = app_on(store).await;
    let job = app.start(app.job("gate", 4, 1, &[])).await;
    app.eventually("item 0 in flight", WITHIN, || async {
        app.executions.running() == 1
    })
    .await;
    app.pause(&job.id, pb::PauseMode::Immediate).await.unwrap();
    app.wait_for(&job.id, JobState::Paused, WITHIN).await;
    let done = cancel_items(&app, by_index(&job.id, &[1, 2]))
        .await
        .expect("CancelItems on a paused job");
    assert_eq!(done.cancelled, 2);
    let paused = done.job.unwrap();
    assert_eq!(paused.state, JobState::Paused as i32);
    assert_eq!(counts(&paused).pending, 2);
    app.resume(&job.id).await.unwrap();
    app.gate.open();
    let ended = app.wait_for(&job.id, JobState::Succeeded, WITHIN).await;
    let c = counts(&ended);
    assert_eq!((c.succeeded, c.cancelled), (2, 2));
    let ran = ran(&app);
    assert!(!ran.contains(&1) && !ran.contains(&2), "{ran:?}");
    assert_eq!(
        item_states(&app, &job.id).await,
        [
            ItemState::Succeeded,
            ItemState::Cancelled,
            ItemState::Cancelled,
            ItemState::Succeeded
        ]
    );
    app.stop().await;
}

#[tokio::test]
async fn items_cancelled_while_paused_stay_cancelled_postgres() {
    items_cancelled_while_paused_stay_cancelled(StoreKind::Postgres).await;
}

#[tokio::test]
async fn items_cancelled_while_paused_stay_cancelled_embedded() {
    items_cancelled_while_paused_stay_cancelled(StoreKind::Embedded).await;
}

async fn retry_failed_items_does_not_run_cancelled_ones(store: StoreKind) {
    let app = app_on(store).await;
    app.flaky.break_items(&["broken"]);
    let job = app
        .start(pb::StartJobRequest {
            name: "flaky".into(),
            executor: "flaky".into(),
            items: ["a", "broken", "c", "d"].map(String::from).to_vec(),
            max_attempts: 1,
            start_paused: true,
            ..Default::default()
        })
        .await;
    let done = cancel_items(&app, by_index(&job.id, &[2, 3]))
        .await
        .expect("CancelItems");
    assert_eq!(done.cancelled, 2);
    app.resume(&job.id).await.unwrap();
    let failed = app.wait_for(&job.id, JobState::Failed, WITHIN).await;
    let c = counts(&failed);
    assert_eq!((c.succeeded, c.failed, c.cancelled), (1, 1, 2));
    app.flaky.fix_all();
    app.client
        .clone()
        .retry_failed_items(pb::RetryFailedItemsRequest {
            job_id: job.id.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    let retried = app.wait_for(&job.id, JobState::Succeeded, WITHIN).await;
    let c = counts(&retried);
    assert_eq!((c.succeeded, c.failed, c.cancelled), (2, 0, 2));
    assert_eq!(ran(&app), [0, 1, 1], "only the failed item ran again");
    app.stop().await;
}

#[tokio::test]
async fn retry_failed_items_does_not_run_cancelled_ones_postgres() {
    retry_failed_items_does_not_run_cancelled_ones(StoreKind::Postgres).await;
}

#[tokio::test]
async fn retry_failed_items_does_not_run_cancelled_ones_embedded() {
    retry_failed_items_does_not_run_cancelled_ones(StoreKind::Embedded).await;
}

async fn bad_calls_change_nothing(store: StoreKind) {
    let app = app_on(store).await;
    let job = app.start(app.job("gate", 3, 1, &[])).await;
    app.eventually("item 0 in flight", WITHIN, || async {
        app.executions.running() == 1
    })
    .await;
    let before = (app.get(&job.id).await, app.items(&job.id).await);
    let refused = |status: tonic::Status, fields: &[&str]| {
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert_eq!(bad_fields(&status), fields, "{status:?}");
    };
    let both = pb::CancelItemsRequest {
        range: Some(pb::ItemRange { first: 0, last: 1 }),
        ..by_index(&job.id, &[1])
    };
    refused(cancel_items(&app, both).await.unwrap_err(), &["range"]);
    refused(
        cancel_items(&app, request(&job.id)).await.unwrap_err(),
        &["indexes"],
    );
    refused(
        cancel_items(&app, by_index(&job.id, &[1, 3]))
            .await
            .unwrap_err(),
        &["indexes"],
    );
    refused(
        cancel_items(&app, by_range(&job.id, 1, 5, &[]))
            .await
            .unwrap_err(),
        &["range"],
    );
    refused(
        cancel_items(&app, by_range(&job.id, 2, 1, &[]))
            .await
            .unwrap_err(),
        &["range"],
    );
    refused(
        cancel_items(&app, by_range(&job.id, 0, 2, &[ItemState::Succeeded]))
            .await
            .unwrap_err(),
        &["states[0]"],
    );
    let unknown_state = pb::CancelItemsRequest {
        states: vec![ItemState::Pending as i32, 99],
        ..by_index(&job.id, &[1])
    };
    refused(
        cancel_items(&app, unknown_state).await.unwrap_err(),
        &["states[1]"],
    );
    let too_many = pb::CancelItemsRequest {
        indexes: vec![1; 100_001],
        ..request(&job.id)
    };
    let status = cancel_items(&app, too_many).await.unwrap_err();
    assert!(status.message().contains("100000"), "{status:?}");
    refused(status, &["indexes"]);
    let long_reason = pb::CancelItemsRequest {
        reason: "r".repeat(1001),
        ..by_index(&job.id, &[1])
    };
    refused(
        cancel_items(&app, long_reason).await.unwrap_err(),
        &["reason"],
    );
    refused(
        cancel_items(&app, by_index("not-a-uuid", &[1]))
            .await
            .unwrap_err(),
        &["job_id"],
    );
    let unknown = cancel_items(&app, by_index("00000000-0000-4000-8000-000000000000", &[1]))
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound, "{unknown:?}");
    let after = (app.get(&job.id).await, app.items(&job.id).await);
    assert_eq!(counts(&after.0), counts(&before.0));
    assert_eq!(after.0.last_sequence, before.0.last_sequence);
    assert_eq!(after.1, before.1, "the items are as they were");

    // An ended job takes none, and says why.
    app.gate.open();
    let ended = app.wait_for(&job.id, JobState::Succeeded, WITHIN).await;
    let late = cancel_items(&app, by_index(&job.id, &[0]))
        .await
        .unwrap_err();
    assert_eq!(late.code(), Code::FailedPrecondition, "{late:?}");
    assert_eq!(reason(&late), "JOB_ITEMS_NOT_CANCELLABLE");
    let still = app.get(&job.id).await;
    assert_eq!(
        (counts(&still), still.last_sequence),
        (counts(&ended), ended.last_sequence)
    );
    app.stop().await;
}

#[tokio::test]
async fn bad_calls_change_nothing_postgres() {
    bad_calls_change_nothing(StoreKind::Postgres).await;
}

#[tokio::test]
async fn bad_calls_change_nothing_embedded() {
    bad_calls_change_nothing(StoreKind::Embedded).await;
}

async fn cli(app: &TestApp, args: &[&str]) -> (bool, String, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_jobvisor"))
        .arg("cancel-items")
        .args(args)
        .args(["--server", &format!("http://{}", app.addr)])
        .output()
        .await
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn the_cli_cancels_items_and_says_which_were_running() {
    let app = spawn_app().await;
    let job = app.start(app.job("gate", 8, 1, &[])).await;
    app.eventually("item 0 in flight", WITHIN, || async {
        app.executions.running() == 1
    })
    .await;
    let (ok, stdout, stderr) = cli(&app, &[&job.id, "0", "2", "--reason", "not needed"]).await;
    assert!(ok, "{stdout} {stderr}");
    assert!(
        stdout.contains("cancelled 2 items; interrupted (were running): 0"),
        "{stdout}"
    );
    // Indexes and a range at once: refused before any call.
    let (ok, _, stderr) = cli(&app, &[&job.id, "1", "--from", "1", "--to", "3"]).await;
    assert!(!ok, "{stderr}");
    // Item 0's worker took item 1. The supervisor may have claimed a
    // few items ahead of it (RUNNING in the store, waiting in its
    // queue), never as far as 5: 5 to 7 are pending.
    app.eventually("item 1 in flight", WITHIN, || async {
        app.executions.of(1).len() == 1
    })
    .await;
    let (ok, stdout, stderr) = cli(
        &app,
        &[
            &job.id, "--from", "5", "--to", "7", "--state", "pending", "--json",
        ],
    )
    .await;
    assert!(ok, "{stdout} {stderr}");
    let answer: serde_json::Value = serde_json::from_str(stdout.trim()).expect("JSON");
    assert_eq!(answer["cancelled"], 3, "{answer}");
    assert_eq!(answer["interrupted"], serde_json::json!([]));
    assert_eq!(answer["job"]["counts"]["cancelled"], 5, "{answer}");
    // Past the job's items: the server names the field.
    let (ok, _, stderr) = cli(&app, &[&job.id, "99"]).await;
    assert!(!ok);
    assert!(stderr.contains("indexes"), "{stderr}");
    let (ok, stdout, stderr) = cli(&app, &[&job.id, "1"]).await;
    assert!(ok, "{stdout} {stderr}");
    assert!(
        stdout.contains("cancelled 1 item; interrupted (were running): 1"),
        "{stdout}"
    );
    // The rest (3 and 4, pending or claimed ahead), by range.
    let (ok, stdout, stderr) = cli(&app, &[&job.id, "--from", "0", "--to", "7"]).await;
    assert!(ok, "{stdout} {stderr}");
    assert!(stdout.contains("cancelled 2 items"), "{stdout}");
    let ended = app.wait_for(&job.id, JobState::Succeeded, WITHIN).await;
    assert_eq!(counts(&ended).cancelled, 8);
    app.stop().await;
}

//! Items added to a job that has not ended (AddItems), and jobs started
//! open, on both stores: an open job waits for its items until a call
//! closes it; a page retried with its request id adds nothing twice;
//! pause, cancel, retry-failed and watch stay exact for the late items.

use super::harness::*;
use jobvisor::pb::{self, JobState};
use std::time::Duration;
use tonic::Code;

const WITHIN: Duration = Duration::from_secs(10);

async fn add(
    app: &TestApp,
    id: &str,
    items: &[&str],
    request_id: &str,
    close: bool,
) -> Result<pb::AddItemsResponse, tonic::Status> {
    app.client
        .clone()
        .add_items(pb::AddItemsRequest {
            job_id: id.into(),
            items: items.iter().map(|s| s.to_string()).collect(),
            request_id: request_id.into(),
            close,
        })
        .await
        .map(|r| r.into_inner())
}

fn counts(job: &pb::Job) -> pb::ItemCounts {
    job.counts.unwrap_or_default()
}

fn added(events: &[pb::JobEvent]) -> Vec<pb::ItemsAdded> {
    events
        .iter()
        .filter_map(|e| match &e.kind {
            Some(pb::job_event::Kind::ItemsAdded(a)) => Some(a.clone()),
            _ => None,
        })
        .collect()
}

async fn an_open_job_runs_its_pages_and_ends_once_closed(store: StoreKind) {
    let app = spawn_app_with(Options {
        store,
        ..Options::default()
    })
    .await;
    let job = app
        .start(pb::StartJobRequest {
            open: true,
            ..app.job("recording", 2, 2, &[])
        })
        .await;
    assert!(job.open);
    app.eventually("the first page done", WITHIN, || async {
        counts(&app.get(&job.id).await).succeeded == 2
    })
    .await;
    // Every item done, and still running: it is open.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let waiting = app.get(&job.id).await;
    assert_eq!(waiting.state, JobState::Running as i32, "{waiting:?}");
    assert!(waiting.open);

    let page = add(&app, &job.id, &["c", "d", "e"], "page-2", false)
        .await
        .unwrap();
    assert_eq!((page.first_index, page.added), (2, 3));
    assert_eq!(counts(page.job.as_ref().unwrap()).total, 5);
    // The same page again adds nothing and answers as the first did.
    let again = add(&app, &job.id, &["c", "d", "e"], "page-2", false)
        .await
        .unwrap();
    assert_eq!((again.first_index, again.added), (2, 3));
    // Another page under that request id: refused, nothing added.
    let reused = add(&app, &job.id, &["x"], "page-2", false)
        .await
        .unwrap_err();
    assert_eq!(reused.code(), Code::AlreadyExists, "{reused:?}");
    assert_eq!(counts(&app.get(&job.id).await).total, 5);

    app.eventually("the second page done", WITHIN, || async {
        counts(&app.get(&job.id).await).succeeded == 5
    })
    .await;
    assert_eq!(app.get(&job.id).await.state, JobState::Running as i32);
    // An empty page that closes: the job ends.
    let closed = add(&app, &job.id, &[], "", true).await.unwrap();
    assert_eq!(closed.added, 0);
    assert!(!closed.job.unwrap().open);
    let done = app.wait_for(&job.id, JobState::Succeeded, WITHIN).await;
    assert_eq!(counts(&done).total, 5);
    assert_eq!(counts(&done).succeeded, 5);
    // Each item ran once.
    let mut ran: Vec<u32> = app.executions.all().iter().map(|e| e.index).collect();
    ran.sort_unstable();
    assert_eq!(ran, [0, 1, 2, 3, 4]);
    let payloads: Vec<String> = app
        .items(&job.id)
        .await
        .into_iter()
        .map(|i| i.payload)
        .collect();
    assert_eq!(payloads, ["item-0", "item-1", "c", "d", "e"]);

    // The history says what was added, by whom, once.
    let history = app.watch_all(&job.id, 0, WITHIN).await;
    let pages = added(&history);
    assert_eq!(pages.len(), 2, "{pages:?}");
    assert_eq!((pages[0].first_index, pages[0].count), (2, 3));
    assert_eq!(pages[0].request_id, "page-2");
    assert!(!pages[0].closed);
    assert_eq!((pages[1].first_index, pages[1].count), (5, 0));
    assert!(pages[1].closed);

    // An ended job takes no items, and says why.
    let late = add(&app, &job.id, &["f"], "", false).await.unwrap_err();
    assert_eq!(late.code(), Code::FailedPrecondition);
    assert_eq!(reason(&late), "JOB_TAKES_NO_ITEMS");
    app.stop().await;
}

#[tokio::test]
async fn an_open_job_runs_its_pages_and_ends_once_closed_postgres() {
    an_open_job_runs_its_pages_and_ends_once_closed(StoreKind::Postgres).await;
}

#[tokio::test]
async fn an_open_job_runs_its_pages_and_ends_once_closed_embedded() {
    an_open_job_runs_its_pages_and_ends_once_closed(StoreKind::Embedded).await;
}

async fn late_items_obey_pause_cancel_and_retry(store: StoreKind) {
    let app = spawn_app_with(Options {
        store,
        ..Options::default()
    })
    .await;
    // Cancelled: the late items end CANCELLED with the rest, and a
    // cancelled job takes no more.
    let gated = app
        .start(pb::StartJobRequest {
            open: true,
            ..app.job("gate", 1, 1, &[])
        })
        .await;
    add(&app, &gated.id, &["r", "s", "t"], "", false)
        .await
        .unwrap();
    app.cancel(&gated.id).await.unwrap();
    let cancelled = app.wait_for(&gated.id, JobState::Cancelled, WITHIN).await;
    assert_eq!(counts(&cancelled).total, 4);
    assert_eq!(counts(&cancelled).cancelled, 4, "{cancelled:?}");
    let refused = add(&app, &gated.id, &["u"], "", false).await.unwrap_err();
    assert_eq!(reason(&refused), "JOB_TAKES_NO_ITEMS");

    // Paused: items added wait for the resume, then run.
    let job = app.start(app.job("gate", 2, 1, &[])).await;
    app.eventually("one in flight", WITHIN, || async {
        app.executions.running() == 1
    })
    .await;
    app.pause(&job.id, pb::PauseMode::Immediate).await.unwrap();
    app.wait_for(&job.id, JobState::Paused, WITHIN).await;
    let page = add(&app, &job.id, &["p", "q"], "", false).await.unwrap();
    assert_eq!((page.first_index, page.added), (2, 2));
    let paused = page.job.unwrap();
    assert_eq!(paused.state, JobState::Paused as i32);
    assert_eq!(counts(&paused).pending, 4);
    let started = app.executions.started();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        app.executions.started(),
        started,
        "a paused job runs nothing"
    );
    app.resume(&job.id).await.unwrap();
    app.gate.open();
    let done = app.wait_for(&job.id, JobState::Succeeded, WITHIN).await;
    assert_eq!((counts(&done).total, counts(&done).succeeded), (4, 4));

    // Retry-failed reruns a late item that failed, and only it.
    app.flaky.break_items(&["late-broken"]);
    let before = app.executions.all().len();
    let flaky = app
        .start(pb::StartJobRequest {
            name: "flaky".into(),
            executor: "flaky".into(),
            items: vec!["a".into()],
            max_attempts: 1,
            open: true,
            ..Default::default()
        })
        .await;
    add(&app, &flaky.id, &["late-broken", "b"], "", true)
        .await
        .unwrap();
    let failed = app.wait_for(&flaky.id, JobState::Failed, WITHIN).await;
    assert_eq!((counts(&failed).succeeded, counts(&failed).failed), (2, 1));
    app.flaky.fix_all();
    app.client
        .clone()
        .retry_failed_items(pb::RetryFailedItemsRequest {
            job_id: flaky.id.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    let retried = app.wait_for(&flaky.id, JobState::Succeeded, WITHIN).await;
    assert_eq!(counts(&retried).succeeded, 3);
    let broken_runs: Vec<u32> = app.executions.all()[before..]
        .iter()
        .map(|e| e.index)
        .filter(|&i| i == 1)
        .collect();
    assert_eq!(broken_runs, [1, 1], "the failed late item ran again, once");
    app.stop().await;
}

#[tokio::test]
async fn late_items_obey_pause_cancel_and_retry_postgres() {
    late_items_obey_pause_cancel_and_retry(StoreKind::Postgres).await;
}

#[tokio::test]
async fn late_items_obey_pause_cancel_and_retry_embedded() {
    late_items_obey_pause_cancel_and_retry(StoreKind::Embedded).await;
}

/// Pages over a limit, bad ids and unknown jobs are refused whole, with
/// the field named, and add nothing.
#[tokio::test]
async fn bad_pages_are_refused_whole_naming_the_field() {
    let app = spawn_app().await;
    let job = app
        .start(pb::StartJobRequest {
            open: true,
            ..app.job("gate", 1, 1, &[])
        })
        .await;
    let many: Vec<String> = (0..100_001).map(|i| i.to_string()).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    let status = add(&app, &job.id, &many, "", false).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(bad_fields(&status), ["items"], "{status:?}");
    assert!(status.message().contains("100000"), "{status:?}");

    let status = add(&app, "not-a-uuid", &["a"], "", false)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(bad_fields(&status), ["job_id"]);
    let status = add(
        &app,
        "00000000-0000-4000-8000-000000000000",
        &["a"],
        "",
        false,
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    let long_id = "r".repeat(201);
    let status = add(&app, &job.id, &["a"], &long_id, false)
        .await
        .unwrap_err();
    assert_eq!(bad_fields(&status), ["request_id"], "{status:?}");

    let after = app.get(&job.id).await;
    assert_eq!(counts(&after).total, 1, "nothing was added");
    assert!(after.open);
    // A job that was not started open closes as a no-op.
    let whole = app.start(app.job("gate", 1, 1, &[])).await;
    assert!(!whole.open);
    let page = add(&app, &whole.id, &["b"], "", true).await.unwrap();
    assert_eq!((page.first_index, page.added), (1, 1));
    app.gate.open();
    app.wait_for(&whole.id, JobState::Succeeded, WITHIN).await;
    app.stop().await;
}

//! Pause, resume and cancel, as a user sees them.

use super::harness::{Options, SECS, StoreKind, spawn_app_with, transitions};
use jobvisor::pb::{ItemState, JobState, PauseMode};
use std::time::Duration;

#[tokio::test]
async fn no_item_is_claimed_after_pause_returns() {
    no_item_is_claimed_after_pause_returns_on(StoreKind::Postgres).await;
}

pub async fn no_item_is_claimed_after_pause_returns_on(store: StoreKind) {
    let app = spawn_app_with(Options {
        store,
        ..Options::default()
    })
    .await;
    // Three workers, all blocked on the gate: the job is busy.
    let job = app.start(app.job("gate", 20, 3, &[])).await;
    app.eventually("3 items in flight", SECS(10), || async {
        app.executions.running() == 3
    })
    .await;
    let paused = app.pause(&job.id, PauseMode::Graceful).await.unwrap();
    assert_eq!(paused.state, JobState::Pausing as i32);
    let claimed_at_pause = app.claimed(&job.id).await;
    let started_at_pause = app.executions.started();
    assert_eq!(started_at_pause, 3);

    // Workers finish their items; nothing new may be claimed or started.
    app.gate.open();
    let done = app.wait_for(&job.id, JobState::Paused, SECS(10)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(app.claimed(&job.id).await, claimed_at_pause);
    assert_eq!(app.executions.started(), started_at_pause);
    let counts = done.counts.unwrap();
    assert_eq!(
        (counts.succeeded, counts.pending, counts.running),
        (3, 17, 0)
    );
    let pause = done.pauses.last().unwrap();
    assert_eq!(pause.reason, "test");
    assert!(pause.paused_time.is_some() && pause.resume_time.is_none());
    assert!(done.can_resume);
    app.stop().await;
}

#[tokio::test]
async fn resume_continues_in_index_order_and_reruns_nothing() {
    resume_continues_in_index_order_and_reruns_nothing_on(StoreKind::Postgres).await;
}

pub async fn resume_continues_in_index_order_and_reruns_nothing_on(store: StoreKind) {
    let app = spawn_app_with(Options {
        store,
        ..Options::default()
    })
    .await;
    let job = app
        .start(app.job("recording", 12, 1, &[("duration_ms", "40"), ("steps", "2")]))
        .await;
    app.eventually("5 items done", SECS(10), || async {
        app.get(&job.id).await.counts.unwrap().succeeded >= 5
    })
    .await;
    app.pause(&job.id, PauseMode::Graceful).await.unwrap();
    let paused = app.wait_for(&job.id, JobState::Paused, SECS(10)).await;
    let done_before = paused.counts.unwrap().succeeded as u32;
    let runs_before = app.executions.started();

    let resumed = app.resume(&job.id).await.unwrap();
    assert_eq!(resumed.state, JobState::Running as i32);
    assert!(resumed.pauses.last().unwrap().resume_time.is_some());
    app.wait_for(&job.id, JobState::Succeeded, SECS(20)).await;

    let runs = app.executions.all();
    // The first item run after the resume is the lowest one not done.
    assert_eq!(runs[runs_before].index, done_before);
    // Every item ran exactly once, in index order.
    let order: Vec<u32> = runs.iter().map(|r| r.index).collect();
    assert_eq!(order, (0..12).collect::<Vec<_>>());
    assert!(runs.iter().all(|r| r.outcome == Some("ok")));
    app.stop().await;
}

#[tokio::test]
async fn immediate_pause_resumes_items_from_their_checkpoint() {
    immediate_pause_resumes_items_from_their_checkpoint_on(StoreKind::Postgres).await;
}

pub async fn immediate_pause_resumes_items_from_their_checkpoint_on(store: StoreKind) {
    let app = spawn_app_with(Options {
        store,
        ..Options::default()
    })
    .await;
    // One slow item at a time: 10 steps of 100 ms each.
    let job = app
        .start(app.job(
            "recording",
            3,
            1,
            &[("duration_ms", "1000"), ("steps", "10")],
        ))
        .await;
    app.eventually("item 0 past step 3", SECS(10), || async {
        let items = app.items(&job.id).await;
        let step: u32 = String::from_utf8_lossy(&items[0].checkpoint)
            .parse()
            .unwrap_or(0);
        step >= 3
    })
    .await;
    let started = std::time::Instant::now();
    app.pause(&job.id, PauseMode::Immediate).await.unwrap();
    let paused = app.wait_for(&job.id, JobState::Paused, SECS(5)).await;
    // It stopped at its next checkpoint, not after finishing the item.
    assert!(
        started.elapsed() < Duration::from_millis(600),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(paused.counts.unwrap().succeeded, 0);
    let item = &app.items(&job.id).await[0];
    assert_eq!(item.state, ItemState::Pending as i32);
    assert_eq!(item.attempts, 0, "an interrupted attempt is not spent");
    let saved: u32 = String::from_utf8_lossy(&item.checkpoint).parse().unwrap();
    assert!(saved >= 3);

    app.resume(&job.id).await.unwrap();
    app.wait_for(&job.id, JobState::Succeeded, SECS(20)).await;
    let runs = app.executions.of(0);
    assert_eq!(runs.len(), 2, "{runs:?}");
    assert_eq!(runs[0].from_step, 0);
    assert_eq!(runs[0].outcome, Some("interrupted"));
    assert_eq!(
        runs[1].from_step, saved,
        "the second run continues from the checkpoint"
    );
    assert_eq!(runs[1].outcome, Some("ok"));
    assert_eq!(app.items(&job.id).await[0].attempts, 1);
    app.stop().await;
}

/// Every item ended, and none is left pending or running.
async fn all_ended_cancelled(app: &super::harness::TestApp, id: &str, ran: u64) {
    let job = app.get(id).await;
    assert_eq!(job.state, JobState::Cancelled as i32);
    let counts = job.counts.unwrap();
    assert_eq!((counts.pending, counts.running), (0, 0));
    assert_eq!(counts.succeeded, ran);
    assert_eq!(counts.cancelled, counts.total - ran);
    for item in app.items(id).await {
        assert!(
            item.state == ItemState::Cancelled as i32 || item.state == ItemState::Succeeded as i32,
            "{item:?}"
        );
    }
    assert!(job.end_time.is_some());
}

#[tokio::test]
async fn cancel_from_running_stops_items_in_flight() {
    cancel_from_running_stops_items_in_flight_on(StoreKind::Postgres).await;
}

pub async fn cancel_from_running_stops_items_in_flight_on(store: StoreKind) {
    let app = spawn_app_with(Options {
        store,
        ..Options::default()
    })
    .await;
    let job = app.start(app.job("gate", 10, 2, &[])).await;
    app.eventually("2 in flight", SECS(10), || async {
        app.executions.running() == 2
    })
    .await;
    let cancelling = app.cancel(&job.id).await.unwrap();
    assert!(
        cancelling.state == JobState::Cancelling as i32
            || cancelling.state == JobState::Cancelled as i32
    );
    app.wait_for(&job.id, JobState::Cancelled, SECS(5)).await;
    all_ended_cancelled(&app, &job.id, 0).await;
    assert!(
        app.executions
            .all()
            .iter()
            .all(|e| e.outcome == Some("interrupted"))
    );
    let events = app.watch_all(&job.id, 0, SECS(5)).await;
    assert_eq!(
        transitions(&events),
        [
            (JobState::Unspecified, JobState::Running),
            (JobState::Running, JobState::Cancelling),
            (JobState::Cancelling, JobState::Cancelled),
        ]
    );
    app.stop().await;
}

#[tokio::test]
async fn cancel_from_pausing_and_from_paused() {
    cancel_from_pausing_and_from_paused_on(StoreKind::Postgres).await;
}

pub async fn cancel_from_pausing_and_from_paused_on(store: StoreKind) {
    let app = spawn_app_with(Options {
        store,
        ..Options::default()
    })
    .await;
    // PAUSING: a graceful pause waits for the gate, then cancel.
    let job = app.start(app.job("gate", 10, 2, &[])).await;
    app.eventually("2 in flight", SECS(10), || async {
        app.executions.running() == 2
    })
    .await;
    let pausing = app.pause(&job.id, PauseMode::Graceful).await.unwrap();
    assert_eq!(pausing.state, JobState::Pausing as i32);
    app.cancel(&job.id).await.unwrap();
    app.wait_for(&job.id, JobState::Cancelled, SECS(5)).await;
    all_ended_cancelled(&app, &job.id, 0).await;

    // PAUSED: cancel ends it at once.
    let job = app
        .start(app.job("sleep", 10, 1, &[("duration_ms", "20"), ("steps", "1")]))
        .await;
    app.eventually("2 items done", SECS(10), || async {
        app.get(&job.id).await.counts.unwrap().succeeded >= 2
    })
    .await;
    app.pause(&job.id, PauseMode::Graceful).await.unwrap();
    let paused = app.wait_for(&job.id, JobState::Paused, SECS(5)).await;
    let ran = paused.counts.unwrap().succeeded;
    let cancelled = app.cancel(&job.id).await.unwrap();
    assert_eq!(cancelled.state, JobState::Cancelled as i32);
    all_ended_cancelled(&app, &job.id, ran).await;
    app.stop().await;
}

#[tokio::test]
async fn pipelined_acknowledgements_keep_pause_and_resume_exact() {
    let app = spawn_app_with(Options {
        pipelined_acks: true,
        ..Options::default()
    })
    .await;
    let job = app
        .start(app.job("recording", 300, 8, &[("duration_ms", "2"), ("steps", "1")]))
        .await;
    app.eventually("some items done", SECS(10), || async {
        app.get(&job.id).await.counts.unwrap().succeeded >= 50
    })
    .await;
    app.pause(&job.id, PauseMode::Graceful).await.unwrap();
    let paused = app.wait_for(&job.id, JobState::Paused, SECS(10)).await;
    // PAUSED only once every outcome in flight is committed.
    let counts = paused.counts.unwrap();
    assert_eq!(counts.running, 0);
    let started = app.executions.started() as u64;
    assert_eq!(
        counts.succeeded, started,
        "every run that started finished and counted"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        app.executions.started() as u64,
        started,
        "nothing starts while paused"
    );
    app.resume(&job.id).await.unwrap();
    app.wait_for(&job.id, JobState::Succeeded, SECS(30)).await;
    let mut order: Vec<u32> = app.executions.all().iter().map(|r| r.index).collect();
    order.sort_unstable();
    assert_eq!(order, (0..300).collect::<Vec<_>>(), "each item ran once");
    app.stop().await;
}

/// A control call first decides from the state the server last saw for a
/// job it runs. A change committed behind its back (by another process)
/// makes that guess stale: the call must still act on what is stored.
#[tokio::test]
async fn a_change_committed_elsewhere_decides_the_next_call() {
    use jobvisor::{
        domain::{JobId, Provenance, machine::Command, machine::Decision, machine::decide},
        store::{Store, TransitionWrite, postgres::PgStore},
    };
    let app = super::harness::spawn_app().await;
    let job = app.start(app.job("gate", 20, 3, &[])).await;
    app.eventually("3 items in flight", SECS(10), || async {
        app.executions.running() == 3
    })
    .await;
    // Cancelled straight in the store, as another process would: this
    // server still believes the job RUNNING.
    let id = JobId(job.id.parse().unwrap());
    let Ok(Decision::Transition { from, to, effects }) =
        decide(jobvisor::domain::JobState::Running, Command::Cancel)
    else {
        panic!("RUNNING can be cancelled");
    };
    let elsewhere = PgStore::from_pool(app.pg().clone())
        .transition(
            id,
            &TransitionWrite {
                from,
                to,
                effects,
                provenance: Provenance::system("elsewhere"),
                pause_mode: None,
                resume_at: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(elsewhere.state, jobvisor::domain::JobState::Cancelling);

    // The guess (RUNNING → PAUSING) is refused by the store; the job is
    // read and the pause refused as for any cancelling job.
    let refused = app.pause(&job.id, PauseMode::Graceful).await.unwrap_err();
    assert_eq!(
        refused.code(),
        tonic::Code::FailedPrecondition,
        "{refused:?}"
    );
    let stored = app.get(&job.id).await;
    assert_eq!(stored.state, JobState::Cancelling as i32);
    assert!(stored.pauses.is_empty(), "{:?}", stored.pauses);

    // And a cancel, guessed as a transition too, is the no-op it is.
    let again = app.cancel(&job.id).await.unwrap();
    assert_eq!(again.state, JobState::Cancelling as i32);
    assert_eq!(again.last_sequence, stored.last_sequence);
    app.gate.open();
    app.stop().await;
}

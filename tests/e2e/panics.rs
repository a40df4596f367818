//! A worker that panics is restarted; its item is retried from its
//! checkpoint; past the restart budget the job fails and says why.

use super::harness::{Options, SECS, StoreKind, spawn_app_with};
use jobvisor::pb::{self, JobState};

#[tokio::test]
async fn a_panicking_worker_is_restarted_and_its_item_resumes() {
    a_panicking_worker_is_restarted_and_its_item_resumes_on(StoreKind::Postgres).await;
}

pub async fn a_panicking_worker_is_restarted_and_its_item_resumes_on(store: StoreKind) {
    let app = spawn_app_with(Options {
        store,
        ..Options::default()
    })
    .await;
    let job = app
        .start(app.job(
            "recording",
            6,
            2,
            &[
                ("duration_ms", "100"),
                ("steps", "10"),
                ("panic_pattern", "^item-2$"),
            ],
        ))
        .await;
    let events = app.watch_all(&job.id, 0, SECS(30)).await;
    let done = app.get(&job.id).await;
    assert_eq!(done.state, JobState::Succeeded as i32, "{done:?}");
    let runs = app.executions.of(2);
    assert_eq!(runs.len(), 2, "{runs:?}");
    assert_eq!(runs[0].outcome, None, "the first run died in a panic");
    // The sleep executor panics right after saving step 5.
    assert_eq!(
        runs[1].from_step, 5,
        "the retry continues from the checkpoint"
    );
    assert_eq!(runs[1].outcome, Some("ok"));
    let restarts: Vec<_> = events
        .iter()
        .filter_map(|e| match &e.kind {
            Some(pb::job_event::Kind::WorkerRestarted(w)) => Some(w.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(restarts.len(), 1);
    assert_eq!(restarts[0].index, 2);
    assert!(restarts[0].reason.contains("panic"), "{restarts:?}");
    let item = &app.items(&job.id).await[2];
    assert_eq!(item.attempts, 2);
    // Other items ran once each.
    for i in [0, 1, 3, 4, 5] {
        assert_eq!(app.executions.of(i).len(), 1);
    }
    app.stop().await;
}

#[tokio::test]
async fn a_panic_on_every_attempt_spends_the_restart_budget() {
    let app = spawn_app_with(Options {
        restart_budget: 3,
        ..Options::default()
    })
    .await;
    let mut request = app.job("panicky", 5, 1, &[]);
    request.max_attempts = 10;
    let job = app.start(request).await;
    let done = app.wait_for(&job.id, JobState::Failed, SECS(20)).await;
    assert!(
        done.last_error
            .contains("restart budget exhausted: 4 worker restarts"),
        "{}",
        done.last_error
    );
    assert!(
        done.last_error.contains("always panics"),
        "{}",
        done.last_error
    );
    // Nothing is left running.
    let counts = done.counts.unwrap();
    assert_eq!(counts.running, 0);
    app.stop().await;
}

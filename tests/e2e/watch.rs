//! WatchJob: replay from the store, live changes, gap-free resumption.

use super::harness::{Options, SECS, StoreKind, spawn_app_with, stored};
use jobvisor::pb::{self, JobState, PauseMode};

fn sequences(events: &[pb::JobEvent]) -> Vec<u64> {
    stored(events).iter().map(|e| e.sequence).collect()
}

#[tokio::test]
async fn watching_a_finished_job_replays_its_whole_history() {
    watching_a_finished_job_replays_its_whole_history_on(StoreKind::Postgres).await;
}

pub async fn watching_a_finished_job_replays_its_whole_history_on(store: StoreKind) {
    let app = spawn_app_with(Options {
        store,
        ..Options::default()
    })
    .await;
    let job = app
        .start(app.job(
            "sleep",
            20,
            2,
            &[
                ("duration_ms", "10"),
                ("steps", "1"),
                ("fail_pattern", "^item-1[05]$"),
            ],
        ))
        .await;
    app.pause(&job.id, PauseMode::Graceful).await.unwrap();
    app.wait_for(&job.id, JobState::Paused, SECS(5)).await;
    app.resume(&job.id).await.unwrap();
    let done = app.wait_for(&job.id, JobState::Failed, SECS(30)).await;

    let replay = app.watch_all(&job.id, 0, SECS(5)).await;
    let seqs = sequences(&replay);
    // Gap-free from 1 to the last, ending with the terminal event.
    assert_eq!(seqs, (1..=done.last_sequence).collect::<Vec<_>>());
    match &replay.last().unwrap().kind {
        Some(pb::job_event::Kind::StateChanged(c)) => assert_eq!(c.to, JobState::Failed as i32),
        other => panic!("last event {other:?}"),
    }
    // Pause and resume records are in the log with who asked and why.
    let pause = replay.iter().find_map(|e| match &e.kind {
        Some(pb::job_event::Kind::StateChanged(c)) if c.to == JobState::Pausing as i32 => {
            Some(c.clone())
        }
        _ => None,
    });
    let pause = pause.expect("a pause event");
    assert_eq!(pause.reason, "test");
    assert_eq!(pause.pause_mode, PauseMode::Graceful as i32);

    // Reconnecting after sequence k yields exactly the events after k.
    let k = done.last_sequence / 2;
    let tail = app.watch_all(&job.id, k, SECS(5)).await;
    assert_eq!(
        sequences(&tail),
        (k + 1..=done.last_sequence).collect::<Vec<_>>()
    );
    app.stop().await;
}

#[tokio::test]
async fn two_live_watchers_see_the_same_sequence() {
    two_live_watchers_see_the_same_sequence_on(StoreKind::Postgres).await;
}

pub async fn two_live_watchers_see_the_same_sequence_on(store: StoreKind) {
    let app = spawn_app_with(Options {
        store,
        ..Options::default()
    })
    .await;
    let job = app
        .start(app.job(
            "sleep",
            40,
            4,
            &[
                ("duration_ms", "30"),
                ("steps", "3"),
                ("fail_pattern", "^item-(7|21|33)$"),
            ],
        ))
        .await;
    let (a, b) = tokio::join!(
        app.watch_all(&job.id, 0, SECS(30)),
        app.watch_all(&job.id, 0, SECS(30))
    );
    assert_eq!(sequences(&a), sequences(&b));
    let ends = |e: &[pb::JobEvent]| {
        matches!(&e.last().unwrap().kind,
            Some(pb::job_event::Kind::StateChanged(c)) if c.to == JobState::Failed as i32)
    };
    assert!(ends(&a) && ends(&b));
    // Live progress came with counts that never go backwards.
    let ended: Vec<u64> = a
        .iter()
        .filter_map(|e| match &e.kind {
            Some(pb::job_event::Kind::Progress(p)) => {
                let c = p.counts.as_ref().unwrap();
                Some(c.succeeded + c.failed + c.cancelled)
            }
            _ => None,
        })
        .collect();
    assert!(ended.windows(2).all(|w| w[0] <= w[1]), "{ended:?}");
    app.stop().await;
}

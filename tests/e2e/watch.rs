//! WatchJob: replay from the store, live changes, gap-free resumption.

use super::harness::{Options, SECS, StoreKind, spawn_app, spawn_app_with, stored};
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

/// Fifty streams on one busy job: events committed close together reach
/// each stream in batches (one wake-up per window for all of them), and
/// every stream still gets every event once, in order, to the end.
#[tokio::test]
async fn many_watchers_of_a_busy_job_each_get_every_event() {
    let app = spawn_app().await;
    let job = app
        .start(app.job(
            "sleep",
            600,
            8,
            &[
                ("duration_ms", "0"),
                ("steps", "1"),
                ("fail_pattern", "^item-[0-9]*[05]$"),
            ],
        ))
        .await;
    let streams: Vec<_> = (0..50)
        .map(|_| app.watch_all(&job.id, 0, SECS(60)))
        .collect();
    let streams = futures::future::join_all(streams).await;
    let done = app.get(&job.id).await;
    assert_eq!(done.state, JobState::Failed as i32);
    // 120 failing items, each a stored event, plus the state changes.
    assert!(done.last_sequence > 120, "{}", done.last_sequence);
    let all: Vec<u64> = (1..=done.last_sequence).collect();
    for events in &streams {
        assert_eq!(sequences(events), all);
    }
    app.stop().await;
}

/// A server shutting down ends its streams with UNAVAILABLE, which tells
/// the client to reconnect with its last sequence.
#[tokio::test]
async fn a_stream_ends_unavailable_when_the_server_shuts_down() {
    let mut app = spawn_app().await;
    let job = app.start(app.job("gate", 4, 2, &[])).await;
    let mut stream = app.open_watch(&job.id, 0).await;
    let first = stream.message().await.unwrap().unwrap();
    assert!(matches!(first.kind, Some(pb::job_event::Kind::Snapshot(_))));
    let ended = tokio::spawn(async move {
        loop {
            match stream.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => return None,
                Err(status) => return Some(status),
            }
        }
    });
    app.shutdown_server().await;
    let status = tokio::time::timeout(SECS(10), ended)
        .await
        .expect("the stream did not end")
        .unwrap()
        .expect("the stream ended without an error");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(status.message().contains("last sequence"), "{status:?}");
    app.stop().await;
}

/// A stream on a quiet job (paused: nothing changes) still gets a message
/// at least every `--stream-keepalive`, so that a proxy's idle timeout
/// does not cut it: a progress message carrying the latest sequence.
#[tokio::test]
async fn a_quiet_stream_gets_a_keepalive() {
    let app = spawn_app_with(Options {
        stream_keepalive: std::time::Duration::from_millis(300),
        ..Options::default()
    })
    .await;
    let job = app.start(app.job("gate", 4, 2, &[])).await;
    app.pause(&job.id, PauseMode::Immediate).await.unwrap();
    let paused = app.wait_for(&job.id, JobState::Paused, SECS(10)).await;
    let mut stream = app.open_watch(&job.id, paused.last_sequence).await;
    let first = stream.message().await.unwrap().unwrap();
    assert!(matches!(first.kind, Some(pb::job_event::Kind::Snapshot(_))));
    // Nothing happens to the job from here on; messages keep coming.
    let started = std::time::Instant::now();
    for n in 0..4 {
        let next = tokio::time::timeout(SECS(3), stream.message())
            .await
            .unwrap_or_else(|_| panic!("no keepalive {n} within 3 s on a quiet stream"))
            .unwrap()
            .expect("the stream goes on");
        match next.kind {
            Some(pb::job_event::Kind::Progress(_)) => {
                assert_eq!(next.sequence, paused.last_sequence, "{next:?}")
            }
            other => panic!("a quiet job sent {other:?}"),
        }
    }
    // Four, 300 ms apart at the least (a progress message may come at the
    // progress interval's next tick after that).
    assert!(started.elapsed() >= std::time::Duration::from_millis(900));
    app.stop().await;
}

/// A stream with a window of its own (WatchJobRequest's `window`) gets a
/// busy job's stored events gathered: at most one batch per window, every
/// event still once and in order. One over a second is refused, named.
#[tokio::test]
async fn a_stream_with_a_longer_window_gets_the_events_gathered() {
    let app = spawn_app().await;
    let job = app
        .start(app.job(
            "sleep",
            600,
            4,
            &[
                ("duration_ms", "5"),
                ("steps", "1"),
                ("fail_pattern", "^item-[0-9]*[05]$"),
            ],
        ))
        .await;
    let window = std::time::Duration::from_millis(400);
    let mut stream = app
        .client
        .clone()
        .watch_job(pb::WatchJobRequest {
            job_id: job.id.clone(),
            from_sequence: 0,
            window: Some(window.try_into().unwrap()),
        })
        .await
        .expect("WatchJob")
        .into_inner();
    let started = std::time::Instant::now();
    let mut events = Vec::new();
    // When each stored event came.
    let mut arrivals = Vec::new();
    tokio::time::timeout(SECS(60), async {
        while let Some(e) = stream.message().await.expect("stream message") {
            if !matches!(
                e.kind,
                Some(pb::job_event::Kind::Snapshot(_) | pb::job_event::Kind::Progress(_))
            ) {
                arrivals.push(started.elapsed());
            }
            events.push(e);
        }
    })
    .await
    .expect("the watch stream did not end in time");
    let took = started.elapsed();
    let done = app.get(&job.id).await;
    assert_eq!(done.state, JobState::Failed as i32);
    assert_eq!(
        sequences(&events),
        (1..=done.last_sequence).collect::<Vec<_>>()
    );
    // Batches: events that came within 50 ms of the one before. A window
    // opens after each batch, and events stored meanwhile come at its end
    // or with a progress message (every 500 ms, when the stream wakes
    // anyway): at most that many, and one for the history before it
    // (with the server's 20 ms window, about a batch per 20 ms).
    let batches = 1 + arrivals
        .windows(2)
        .filter(|w| w[1] - w[0] > std::time::Duration::from_millis(50))
        .count();
    let most = (took.as_secs_f64() / window.as_secs_f64()).ceil() as usize
        + (took.as_secs_f64() / 0.5).ceil() as usize
        + 1;
    assert!(
        batches <= most,
        "{batches} batches of stored events in {took:?} with a {window:?} window (at most {most}); \
         arrivals {arrivals:?}"
    );

    let status = app
        .client
        .clone()
        .watch_job(pb::WatchJobRequest {
            job_id: job.id.clone(),
            from_sequence: 0,
            window: Some(prost_types::Duration {
                seconds: 2,
                nanos: 0,
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert_eq!(super::harness::bad_fields(&status), vec!["window"]);
    app.stop().await;
}

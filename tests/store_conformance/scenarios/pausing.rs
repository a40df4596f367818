//! Pausing: the pause history a pause opens, marks and closes, the
//! provenance and pause mode on its events, and the running items a
//! drained pause releases.

use crate::harness::*;
use jobvisor::{
    domain::{Effect, EventBody, ItemState, JobState, PauseMode, Provenance},
    store::{Store, TransitionWrite, WriteKind},
};
use std::sync::Arc;

use Effect as E;
use JobState as S;

pub async fn pause_and_resume_keep_a_pause_history(store: Arc<dyn Store>) {
    let job = create(&store, &spec(4)).await;
    let asked = provenance("maintenance", "alice", "pause-1");
    let paused = store
        .transition(
            job.id,
            &TransitionWrite {
                from: S::Running,
                to: S::Pausing,
                effects: vec![E::OpenPause(PauseMode::Graceful)],
                provenance: asked.clone(),
                pause_mode: Some(PauseMode::Graceful),
                resume_at: None,
            },
        )
        .await
        .expect("pause");
    assert_eq!(paused.state, S::Pausing);
    assert_eq!(paused.last_seq, 2);
    assert!(paused.updated_at >= job.updated_at);
    assert_eq!(paused.ended_at, None);
    assert_eq!(paused.last_error, None);
    assert_eq!(paused.pauses.len(), 1);
    let record = &paused.pauses[0];
    assert_eq!(record.mode, PauseMode::Graceful);
    assert_eq!(record.reason.as_deref(), Some("maintenance"));
    assert_eq!(record.requested_by.as_deref(), Some("alice"));
    assert_eq!(record.request_id.as_deref(), Some("pause-1"));
    assert_eq!(record.requested_at, paused.updated_at);
    assert_eq!((record.paused_at, record.resumed_at), (None, None));
    assert_eq!(get(&store, job.id).await, paused);
    let log = events(&store, job.id).await;
    assert_eq!(log[1].seq, 2);
    assert_eq!(log[1].at, paused.updated_at);
    assert_eq!(
        log[1].body,
        EventBody::StateChanged {
            from: Some(S::Running),
            to: S::Pausing,
            reason: Some("maintenance".into()),
            requested_by: Some("alice".into()),
            request_id: Some("pause-1".into()),
            pause_mode: Some(PauseMode::Graceful),
        }
    );

    let settled = go(
        &store,
        job.id,
        S::Pausing,
        S::Paused,
        vec![E::MarkPaused, E::ReleaseRunning],
    )
    .await;
    assert_eq!(settled.pauses.len(), 1);
    assert_eq!(settled.pauses[0].paused_at, Some(settled.updated_at));
    assert_eq!(settled.pauses[0].resumed_at, None);
    assert_eq!(settled.pauses[0].requested_at, record.requested_at);

    let resumed = go(&store, job.id, S::Paused, S::Running, vec![E::ClosePause]).await;
    assert_eq!(resumed.pauses.len(), 1);
    assert_eq!(resumed.pauses[0].paused_at, settled.pauses[0].paused_at);
    assert_eq!(resumed.pauses[0].resumed_at, Some(resumed.updated_at));

    // An immediate pause resumed before it settled: a second record, never
    // marked paused, and the first record untouched.
    let again = store
        .transition(
            job.id,
            &TransitionWrite {
                from: S::Running,
                to: S::Pausing,
                effects: vec![E::OpenPause(PauseMode::Immediate), E::Interrupt],
                provenance: Provenance::default(),
                pause_mode: Some(PauseMode::Immediate),
                resume_at: None,
            },
        )
        .await
        .expect("second pause");
    assert_eq!(again.pauses.len(), 2);
    assert_eq!(again.pauses[0], resumed.pauses[0]);
    assert_eq!(again.pauses[1].mode, PauseMode::Immediate);
    assert_eq!(again.pauses[1].reason, None);
    let back = go(&store, job.id, S::Pausing, S::Running, vec![E::ClosePause]).await;
    assert_eq!(back.pauses[1].paused_at, None);
    assert_eq!(back.pauses[1].resumed_at, Some(back.updated_at));
    assert_eq!(back.pauses[0], resumed.pauses[0]);
    assert_eq!(back.last_seq, 6);
    assert_eq!(get(&store, job.id).await, back);
    consistent(&store, job.id).await;

    let log = events(&store, job.id).await;
    let path: Vec<(Option<S>, S, Option<PauseMode>)> = log
        .iter()
        .map(|e| match &e.body {
            EventBody::StateChanged {
                from,
                to,
                pause_mode,
                ..
            } => (*from, *to, *pause_mode),
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(
        path,
        vec![
            (None, S::Running, None),
            (Some(S::Running), S::Pausing, Some(PauseMode::Graceful)),
            (Some(S::Pausing), S::Paused, None),
            (Some(S::Paused), S::Running, None),
            (Some(S::Running), S::Pausing, Some(PauseMode::Immediate)),
            (Some(S::Pausing), S::Running, None),
        ]
    );
    match &log[2].body {
        EventBody::StateChanged {
            reason,
            requested_by,
            request_id,
            ..
        } => {
            assert_eq!(reason.as_deref(), Some("pausing to paused"));
            assert_eq!((requested_by, request_id), (&None, &None));
        }
        other => panic!("unexpected {other:?}"),
    }
}

pub async fn drained_pause_releases_running_items(store: Arc<dyn Store>) {
    let job = create(&store, &spec(5)).await;
    let claimed = claim(&store, job.id, 3).await;
    let lease = claimed[0].lease;
    assert!(write(&store, job.id, 0, lease, WriteKind::succeeded()).await);
    assert!(
        write(
            &store,
            job.id,
            1,
            lease,
            WriteKind::Checkpoint(b"half".to_vec())
        )
        .await
    );
    go(
        &store,
        job.id,
        S::Running,
        S::Pausing,
        vec![E::OpenPause(PauseMode::Immediate)],
    )
    .await;
    let paused = go(
        &store,
        job.id,
        S::Pausing,
        S::Paused,
        vec![E::MarkPaused, E::ReleaseRunning],
    )
    .await;
    assert_eq!(paused.counts.running, 0);
    assert_eq!(paused.counts.succeeded, 1);
    let items = items(&store, job.id).await;
    assert_eq!(items[0].state, ItemState::Succeeded);
    for i in [1, 2] {
        assert_eq!(items[i].state, ItemState::Pending, "item {i}");
        assert_eq!(items[i].attempts, 0, "item {i}: the attempt is refunded");
    }
    assert_eq!(items[1].checkpoint.as_deref(), Some(&b"half"[..]));
    // The old lease is dead.
    assert!(!write(&store, job.id, 1, lease, WriteKind::succeeded()).await);
    consistent(&store, job.id).await;
}

//! Guarded transitions: cancelling, finishing, retrying the failed items,
//! a fatal failure, and the refusals (Conflict, NotFound, NotFinished)
//! that leave everything as it was. Pausing is in `pausing.rs`.

use crate::harness::*;
use jobvisor::{
    domain::{Effect, ItemState, JobId, JobState, PauseMode, Provenance},
    store::{Store, StoreError, TransitionWrite, WriteKind},
};
use std::sync::Arc;

use Effect as E;
use JobState as S;

pub async fn cancel_cancels_what_remains(store: Arc<dyn Store>) {
    let job = create(&store, &spec(6)).await;
    let lease = claim(&store, job.id, 3).await[0].lease;
    assert!(write(&store, job.id, 0, lease, WriteKind::succeeded()).await);

    let cancelling = go(
        &store,
        job.id,
        S::Running,
        S::Cancelling,
        vec![E::Interrupt],
    )
    .await;
    // Interrupt is for the runtime: nothing stored changes but the state.
    assert_eq!(cancelling.counts, get(&store, job.id).await.counts);
    assert_eq!(cancelling.counts.running, 2);
    assert_eq!(cancelling.ended_at, None);
    // Workers still report while the job is cancelling.
    assert!(write(&store, job.id, 1, lease, WriteKind::Cancelled).await);
    assert!(claim(&store, job.id, 5).await.is_empty());
    consistent(&store, job.id).await;

    let cancelled = go(
        &store,
        job.id,
        S::Cancelling,
        S::Cancelled,
        vec![E::CancelRemaining, E::End],
    )
    .await;
    assert_eq!(cancelled.counts.succeeded, 1);
    assert_eq!(cancelled.counts.cancelled, 5);
    assert_eq!(cancelled.counts.running, 0);
    assert_eq!(cancelled.counts.pending(), 0);
    assert_eq!(cancelled.ended_at, Some(cancelled.updated_at));
    let states: Vec<ItemState> = items(&store, job.id)
        .await
        .iter()
        .map(|i| i.state)
        .collect();
    assert_eq!(states[0], ItemState::Succeeded);
    assert!(
        states[1..].iter().all(|s| *s == ItemState::Cancelled),
        "{states:?}"
    );
    assert!(!write(&store, job.id, 2, lease, WriteKind::succeeded()).await);
    assert_eq!(get(&store, job.id).await, cancelled);
    consistent(&store, job.id).await;

    // A paused job is cancelled in one step.
    let other = create(&store, &spec(3)).await;
    claim(&store, other.id, 1).await;
    go(
        &store,
        other.id,
        S::Running,
        S::Pausing,
        vec![E::OpenPause(PauseMode::Graceful)],
    )
    .await;
    go(
        &store,
        other.id,
        S::Pausing,
        S::Paused,
        vec![E::MarkPaused, E::ReleaseRunning],
    )
    .await;
    let gone = go(
        &store,
        other.id,
        S::Paused,
        S::Cancelled,
        vec![E::CancelRemaining, E::End],
    )
    .await;
    assert_eq!(gone.counts.cancelled, 3);
    assert!(gone.ended_at.is_some());
    consistent(&store, other.id).await;
}

pub async fn finish_and_retry_failed(store: Arc<dyn Store>) {
    let mut s = spec(3);
    s.max_attempts = 1;
    let job = create(&store, &s).await;
    let lease = claim(&store, job.id, 3).await[0].lease;
    assert!(write(&store, job.id, 0, lease, WriteKind::succeeded()).await);
    assert!(write(&store, job.id, 1, lease, failed("out of attempts", false)).await);
    assert!(write(&store, job.id, 2, lease, failed("permanent", true)).await);
    consistent(&store, job.id).await;

    let done = store
        .transition(
            job.id,
            &TransitionWrite {
                from: S::Running,
                to: S::Failed,
                effects: vec![E::End],
                provenance: Provenance::system("2 of 3 items failed"),
                pause_mode: None,
                resume_at: None,
            },
        )
        .await
        .expect("finish failed");
    assert_eq!(done.state, S::Failed);
    assert_eq!(done.last_error.as_deref(), Some("2 of 3 items failed"));
    assert_eq!(done.ended_at, Some(done.updated_at));
    assert_eq!(done.counts.failed, 2);

    let reopened = go(
        &store,
        job.id,
        S::Failed,
        S::Running,
        vec![E::ResetFailed, E::Reopen],
    )
    .await;
    assert_eq!(reopened.ended_at, None);
    assert_eq!(reopened.counts.failed, 0);
    assert_eq!(reopened.counts.succeeded, 1);
    assert_eq!(reopened.counts.pending(), 2);
    // A state change without a reason to record keeps the last error.
    assert_eq!(reopened.last_error.as_deref(), Some("2 of 3 items failed"));
    let items = items(&store, job.id).await;
    for i in [1, 2] {
        assert_eq!(items[i].state, ItemState::Pending);
        assert_eq!(items[i].attempts, 0);
    }
    assert_eq!(items[0].attempts, 1);
    consistent(&store, job.id).await;

    let again = claim(&store, job.id, 5).await;
    assert_eq!(
        again
            .iter()
            .map(|c| (c.index, c.attempt))
            .collect::<Vec<_>>(),
        vec![(1, 1), (2, 1)]
    );
    for c in &again {
        assert!(write(&store, job.id, c.index, c.lease, WriteKind::succeeded()).await);
    }
    let succeeded = go(&store, job.id, S::Running, S::Succeeded, vec![E::End]).await;
    assert_eq!(succeeded.counts.succeeded, 3);
    assert!(succeeded.ended_at.is_some());
    assert_eq!(succeeded.last_error.as_deref(), Some("2 of 3 items failed"));
    consistent(&store, job.id).await;
}

pub async fn fatal_failure_releases_running_items(store: Arc<dyn Store>) {
    let job = create(&store, &spec(4)).await;
    claim(&store, job.id, 2).await;
    // A fatal failure is not a finish: pending and running items allowed.
    let failed_job = store
        .transition(
            job.id,
            &TransitionWrite {
                from: S::Running,
                to: S::Failed,
                effects: vec![E::ReleaseRunning, E::End],
                provenance: Provenance::system("restart budget spent"),
                pause_mode: None,
                resume_at: None,
            },
        )
        .await
        .expect("fatal failure");
    assert_eq!(
        failed_job.last_error.as_deref(),
        Some("restart budget spent")
    );
    assert_eq!(failed_job.counts.running, 0);
    assert_eq!(failed_job.counts.pending(), 4);
    assert!(
        items(&store, job.id)
            .await
            .iter()
            .all(|i| i.state == ItemState::Pending && i.attempts == 0)
    );
    consistent(&store, job.id).await;
}

pub async fn refused_transitions_change_nothing(store: Arc<dyn Store>) {
    let job = create(&store, &spec(3)).await;
    let unknown = JobId::new();
    is_not_found(
        store
            .transition(
                unknown,
                &TransitionWrite {
                    from: S::Running,
                    to: S::Pausing,
                    effects: vec![E::OpenPause(PauseMode::Graceful)],
                    provenance: Provenance::default(),
                    pause_mode: None,
                    resume_at: None,
                },
            )
            .await,
        unknown,
    );

    let attempt = |from: S, to: S, effects: Vec<Effect>| {
        let store = store.clone();
        async move {
            store
                .transition(
                    job.id,
                    &TransitionWrite {
                        from,
                        to,
                        effects,
                        provenance: Provenance::system("refused"),
                        pause_mode: None,
                        resume_at: None,
                    },
                )
                .await
        }
    };
    let before = get(&store, job.id).await;
    match attempt(S::Paused, S::Running, vec![E::ClosePause]).await {
        Err(StoreError::Conflict { expected, current }) => {
            assert_eq!((expected, current), (S::Paused, S::Running));
        }
        other => panic!("expected Conflict, got {other:?}"),
    }
    match attempt(S::Running, S::Succeeded, vec![E::End]).await {
        Err(StoreError::NotFinished {
            pending, running, ..
        }) => assert_eq!((pending, running), (3, 0)),
        other => panic!("expected NotFinished, got {other:?}"),
    }
    claim(&store, job.id, 2).await;
    let claimed = get(&store, job.id).await;
    for to in [S::Succeeded, S::Failed] {
        match attempt(S::Running, to, vec![E::End]).await {
            Err(StoreError::NotFinished {
                pending, running, ..
            }) => {
                assert_eq!((pending, running), (1, 2), "{to}");
            }
            other => panic!("expected NotFinished, got {other:?}"),
        }
    }
    // Nothing moved: not the state, not the counters, not the log, not the
    // pause history (a refused OpenPause opens nothing).
    match attempt(
        S::Pausing,
        S::Paused,
        vec![E::MarkPaused, E::ReleaseRunning],
    )
    .await
    {
        Err(StoreError::Conflict { expected, current }) => {
            assert_eq!((expected, current), (S::Pausing, S::Running));
        }
        other => panic!("expected Conflict, got {other:?}"),
    }
    let after = consistent(&store, job.id).await;
    assert_eq!(after, claimed);
    assert_eq!(after.last_seq, before.last_seq);
    assert!(after.pauses.is_empty());
    assert_eq!(events(&store, job.id).await.len(), 1);
}

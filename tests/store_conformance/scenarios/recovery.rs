//! Boot recovery and supervisor takeover: items that were running go back
//! to PENDING with their checkpoints and their attempt refunded; PAUSING
//! and CANCELLING jobs settle, with an event.

use crate::harness::*;
use jobvisor::{
    domain::{Effect, EventBody, ItemState, JobId, JobState, PauseMode},
    store::{Store, WriteKind},
};
use std::sync::Arc;

use Effect as E;
use JobState as S;

pub async fn recover_releases_and_settles(store: Arc<dyn Store>) {
    // Created in this order; recovery walks jobs oldest first.
    let running = create(&store, &spec(4)).await;
    let pausing = create(&store, &spec(3)).await;
    let cancelling = create(&store, &spec(4)).await;
    let paused = create(&store, &spec(2)).await;
    let succeeded = create(&store, &spec(1)).await;
    let failed_job = create(&store, &spec(2)).await;

    let r = claim(&store, running.id, 2).await;
    assert!(
        write(
            &store,
            running.id,
            0,
            r[0].lease,
            WriteKind::Checkpoint(b"cp-r".to_vec())
        )
        .await
    );

    let p = claim(&store, pausing.id, 2).await;
    assert!(
        write(
            &store,
            pausing.id,
            1,
            p[0].lease,
            WriteKind::Checkpoint(b"cp-p".to_vec())
        )
        .await
    );
    go(
        &store,
        pausing.id,
        S::Running,
        S::Pausing,
        vec![E::OpenPause(PauseMode::Immediate), E::Interrupt],
    )
    .await;

    let c = claim(&store, cancelling.id, 2).await;
    assert!(write(&store, cancelling.id, 0, c[0].lease, WriteKind::succeeded()).await);
    go(
        &store,
        cancelling.id,
        S::Running,
        S::Cancelling,
        vec![E::Interrupt],
    )
    .await;

    claim(&store, paused.id, 1).await;
    go(
        &store,
        paused.id,
        S::Running,
        S::Pausing,
        vec![E::OpenPause(PauseMode::Graceful)],
    )
    .await;
    go(
        &store,
        paused.id,
        S::Pausing,
        S::Paused,
        vec![E::MarkPaused, E::ReleaseRunning],
    )
    .await;

    let s = claim(&store, succeeded.id, 1).await;
    assert!(write(&store, succeeded.id, 0, s[0].lease, WriteKind::succeeded()).await);
    go(&store, succeeded.id, S::Running, S::Succeeded, vec![E::End]).await;
    go(
        &store,
        failed_job.id,
        S::Running,
        S::Failed,
        vec![E::ReleaseRunning, E::End],
    )
    .await;

    let ended_before = (
        get(&store, succeeded.id).await,
        get(&store, failed_job.id).await,
    );
    let running_seq = get(&store, running.id).await.last_seq;

    let rec = store.recover().await.expect("recover");
    assert_eq!(rec.running, vec![running.id]);
    assert_eq!(rec.paused, vec![paused.id]);
    assert_eq!(
        rec.settled,
        vec![(pausing.id, S::Paused), (cancelling.id, S::Cancelled)]
    );
    // 2 running in `running`, 2 in `pausing`, 1 in `cancelling`.
    assert_eq!(rec.released_items, 5);

    // RUNNING: its items back to pending, attempt refunded, checkpoint
    // kept, and no event (nothing a watcher needs to know).
    let job = consistent(&store, running.id).await;
    assert_eq!(job.state, S::Running);
    assert_eq!(job.counts.running, 0);
    assert_eq!(job.last_seq, running_seq);
    let its = items(&store, running.id).await;
    assert!(
        its.iter()
            .all(|i| i.state == ItemState::Pending && i.attempts == 0),
        "{its:?}"
    );
    assert_eq!(its[0].checkpoint, Some(b"cp-r".to_vec()));
    assert!(
        !write(&store, running.id, 0, r[0].lease, WriteKind::succeeded()).await,
        "old leases are dead"
    );

    // PAUSING settled to PAUSED, its pause marked, with an event.
    let job = consistent(&store, pausing.id).await;
    assert_eq!(job.state, S::Paused);
    assert_eq!(job.pauses.len(), 1);
    assert_eq!(job.pauses[0].paused_at, Some(job.updated_at));
    let its = items(&store, pausing.id).await;
    assert!(
        its.iter()
            .all(|i| i.state == ItemState::Pending && i.attempts == 0),
        "{its:?}"
    );
    assert_eq!(its[1].checkpoint, Some(b"cp-p".to_vec()));
    let recovered = |from: S, to: S| EventBody::StateChanged {
        from: Some(from),
        to,
        reason: Some("recovered after a restart".into()),
        requested_by: None,
        request_id: None,
        pause_mode: None,
    };
    let log = events(&store, pausing.id).await;
    assert_eq!(
        log.last().map(|e| &e.body),
        Some(&recovered(S::Pausing, S::Paused))
    );

    // CANCELLING settled to CANCELLED: what was left is cancelled.
    let job = consistent(&store, cancelling.id).await;
    assert_eq!(job.state, S::Cancelled);
    assert_eq!(job.ended_at, Some(job.updated_at));
    assert_eq!((job.counts.succeeded, job.counts.cancelled), (1, 3));
    let log = events(&store, cancelling.id).await;
    assert_eq!(
        log.last().map(|e| &e.body),
        Some(&recovered(S::Cancelling, S::Cancelled))
    );

    // PAUSED and ended jobs are left as they were.
    assert_eq!(consistent(&store, paused.id).await.state, S::Paused);
    assert_eq!(get(&store, succeeded.id).await, ended_before.0);
    assert_eq!(get(&store, failed_job.id).await, ended_before.1);

    // A second boot finds nothing to release or settle.
    let again = store.recover().await.expect("recover again");
    assert_eq!(again.running, vec![running.id]);
    assert_eq!(again.paused, vec![pausing.id, paused.id]);
    assert!(again.settled.is_empty());
    assert_eq!(again.released_items, 0);
}

pub async fn release_items_puts_running_items_back(store: Arc<dyn Store>) {
    let job = create(&store, &spec(5)).await;
    let claimed = claim(&store, job.id, 3).await;
    let lease = claimed[0].lease;
    assert!(
        write(
            &store,
            job.id,
            1,
            lease,
            WriteKind::Checkpoint(b"one".to_vec())
        )
        .await
    );
    assert!(write(&store, job.id, 0, lease, failed("retry me", false)).await);
    let before = consistent(&store, job.id).await;

    // Items 1 and 2 were running; item 0 is already pending (retry).
    assert_eq!(store.release_items(job.id).await.expect("release"), 2);
    let after = consistent(&store, job.id).await;
    assert_eq!(after.counts.running, 0);
    assert_eq!(after.state, S::Running);
    assert_eq!(
        after.last_seq, before.last_seq,
        "a release appends no event"
    );
    let its = items(&store, job.id).await;
    assert!(its.iter().all(|i| i.state == ItemState::Pending), "{its:?}");
    assert_eq!(
        its.iter().map(|i| i.attempts).collect::<Vec<_>>(),
        vec![1, 0, 0, 0, 0]
    );
    assert_eq!(its[1].checkpoint, Some(b"one".to_vec()));
    assert_eq!(its[0].last_error.as_deref(), Some("retry me"));
    for index in [1, 2] {
        assert!(
            !write(&store, job.id, index, lease, WriteKind::succeeded()).await,
            "item {index}"
        );
    }
    assert_eq!(store.release_items(job.id).await.expect("release again"), 0);

    let again = claim(&store, job.id, 3).await;
    assert_eq!(
        again
            .iter()
            .map(|c| (c.index, c.attempt, c.checkpoint.clone()))
            .collect::<Vec<_>>(),
        vec![(0, 2, None), (1, 1, Some(b"one".to_vec())), (2, 1, None)]
    );
    consistent(&store, job.id).await;

    let unknown = JobId::new();
    is_not_found(store.release_items(unknown).await, unknown);
}

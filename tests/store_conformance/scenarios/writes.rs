//! Lease-fenced item writes: what each kind does to the item, the job's
//! counters and the event log, and that a write without the item's current
//! lease changes nothing at all.

use crate::harness::*;
use jobvisor::{
    domain::{ItemState, JobId, JobState},
    store::{Batch, Store, WriteKind},
};
use std::sync::Arc;

pub async fn wrong_lease_changes_nothing(store: Arc<dyn Store>) {
    let job = create(&store, &spec(3)).await;
    let claimed = claim(&store, job.id, 2).await;
    let lease = claimed[0].lease;
    assert!(
        write(
            &store,
            job.id,
            0,
            lease,
            WriteKind::Checkpoint(b"mine".to_vec())
        )
        .await
    );

    let snapshot = || {
        let store = store.clone();
        async move {
            (
                get(&store, job.id).await,
                items(&store, job.id).await,
                events(&store, job.id).await,
            )
        }
    };
    let before = snapshot().await;
    let kinds = [
        WriteKind::Checkpoint(b"theirs".to_vec()),
        WriteKind::succeeded(),
        failed("not yours", false),
        failed("not yours", true),
        WriteKind::Released { refund: true },
        WriteKind::Released { refund: false },
        WriteKind::Cancelled,
    ];
    for kind in &kinds {
        let mut writes = vec![
            // The right item, another lease.
            write_of(job.id, 0, lease.wrapping_add(1), kind.clone()),
            write_of(job.id, 1, !lease, kind.clone()),
            // A pending item, with the lease of the running ones.
            write_of(job.id, 2, lease, kind.clone()),
            // No such item, no such job.
            write_of(job.id, 99, lease, kind.clone()),
            write_of(JobId::new(), 0, lease, kind.clone()),
        ];
        // Each alone, and all together.
        for w in &writes {
            let out = batch(
                &store,
                Batch {
                    writes: vec![w.clone()],
                    claims: vec![],
                },
            )
            .await;
            assert_eq!(out.applied, vec![false], "{w:?}");
            assert!(out.pulses.is_empty(), "{w:?}");
        }
        writes.reverse();
        let out = batch(
            &store,
            Batch {
                writes,
                claims: vec![],
            },
        )
        .await;
        assert_eq!(out.applied, vec![false; 5], "{kind:?}");
        assert!(out.pulses.is_empty());
        assert_eq!(
            snapshot().await,
            before,
            "{kind:?} with a wrong lease changed something"
        );
    }

    // Once released, the item is pending: its old lease is dead, and the
    // next claim brings a new one that alone works.
    assert!(
        write(
            &store,
            job.id,
            0,
            lease,
            WriteKind::Released { refund: true }
        )
        .await
    );
    assert!(!write(&store, job.id, 0, lease, WriteKind::succeeded()).await);
    let again = claim(&store, job.id, 1).await;
    assert_eq!(again[0].index, 0);
    assert_ne!(again[0].lease, lease);
    assert!(!write(&store, job.id, 0, lease, WriteKind::succeeded()).await);
    assert!(write(&store, job.id, 0, again[0].lease, WriteKind::succeeded()).await);
    // An ended item takes no more writes, even with its last lease.
    assert!(!write(&store, job.id, 0, again[0].lease, failed("late", false)).await);
    assert!(
        !write(
            &store,
            job.id,
            0,
            again[0].lease,
            WriteKind::Checkpoint(vec![1])
        )
        .await
    );
    let job_now = consistent(&store, job.id).await;
    assert_eq!(job_now.counts.succeeded, 1);
    assert_eq!(job_now.last_seq, 1, "no write here appended an event");
}

pub async fn failures_retry_then_fail_for_good(store: Arc<dyn Store>) {
    let mut s = spec(2);
    s.max_attempts = 2;
    let job = create(&store, &s).await;

    let first = claim(&store, job.id, 1).await;
    assert_eq!((first[0].index, first[0].attempt), (0, 1));
    let out = batch(
        &store,
        Batch {
            writes: vec![write_of(job.id, 0, first[0].lease, failed("boom 1", false))],
            claims: vec![],
        },
    )
    .await;
    assert_eq!(out.applied, vec![true]);
    let retried = item(&store, job.id, 0).await;
    assert_eq!(retried.state, ItemState::Pending);
    assert_eq!(retried.attempts, 1);
    assert_eq!(retried.last_error.as_deref(), Some("boom 1"));
    let after_first = consistent(&store, job.id).await;
    assert_eq!(after_first.counts.failed, 0);
    assert_eq!(after_first.counts.running, 0);
    assert_eq!(after_first.last_seq, 2);
    assert_eq!(out.pulses.len(), 1);
    assert_eq!(out.pulses[0].job, job.id);
    assert_eq!(out.pulses[0].counts, after_first.counts);
    assert_eq!(out.pulses[0].last_seq, 2);
    assert_eq!(out.pulses[0].state, JobState::Running);
    let log = events(&store, job.id).await;
    assert_eq!(item_failed(&log[1]), (0, 1, "boom 1".into(), true));
    assert!(log[1].at >= log[0].at);

    // The retry comes first (lowest pending), as attempt 2 of 2.
    let second = claim(&store, job.id, 1).await;
    assert_eq!((second[0].index, second[0].attempt), (0, 2));
    assert!(write(&store, job.id, 0, second[0].lease, failed("boom 2", false)).await);
    let gone = item(&store, job.id, 0).await;
    assert_eq!(gone.state, ItemState::Failed);
    assert_eq!(gone.attempts, 2);
    assert_eq!(gone.last_error.as_deref(), Some("boom 2"));
    let log = events(&store, job.id).await;
    assert_eq!(item_failed(&log[2]), (0, 2, "boom 2".into(), false));

    // Permanent: failed for good at the first attempt.
    let third = claim(&store, job.id, 1).await;
    assert_eq!((third[0].index, third[0].attempt), (1, 1));
    assert!(write(&store, job.id, 1, third[0].lease, failed("bad input", true)).await);
    let log = events(&store, job.id).await;
    assert_eq!(item_failed(&log[3]), (1, 1, "bad input".into(), false));
    let end = consistent(&store, job.id).await;
    assert_eq!(end.counts.failed, 2);
    assert_eq!(end.counts.pending(), 0);
    assert_eq!(end.last_seq, 4);
    assert!(claim(&store, job.id, 1).await.is_empty());
}

pub async fn error_text_is_cut_and_cleaned(store: Arc<dyn Store>) {
    let mut s = spec(3);
    s.max_attempts = 1;
    let job = create(&store, &s).await;
    let lease = claim(&store, job.id, 3).await[0].lease;
    // 2-byte characters: 8 KiB falls on a character boundary.
    let long = "é".repeat(5000);
    // 3-byte characters: 8 KiB falls inside one; the cut backs off.
    let longer = "€".repeat(3000);
    let cases = [
        (0, long, "é".repeat(4096)),
        (1, longer, "€".repeat(2730)),
        (2, "a\0b".to_string(), "a\u{FFFD}b".to_string()),
    ];
    for (index, error, stored) in &cases {
        assert!(write(&store, job.id, *index, lease, failed(error, false)).await);
        assert_eq!(
            item(&store, job.id, *index).await.last_error.as_ref(),
            Some(stored)
        );
    }
    assert!("é".repeat(4096).len() == 8192 && "€".repeat(2730).len() == 8190);
    let log = events(&store, job.id).await;
    for (n, (index, _, stored)) in cases.iter().enumerate() {
        assert_eq!(item_failed(&log[n + 1]), (*index, 1, stored.clone(), false));
    }
    consistent(&store, job.id).await;
}

pub async fn released_with_and_without_refund(store: Arc<dyn Store>) {
    let job = create(&store, &spec(3)).await;
    let lease = claim(&store, job.id, 2).await[0].lease;
    let out = batch(
        &store,
        Batch {
            writes: vec![
                write_of(job.id, 0, lease, WriteKind::Released { refund: true }),
                write_of(job.id, 1, lease, WriteKind::Released { refund: false }),
            ],
            claims: vec![],
        },
    )
    .await;
    assert_eq!(out.applied, vec![true, true]);
    let items_now = items(&store, job.id).await;
    assert_eq!(
        (items_now[0].state, items_now[0].attempts),
        (ItemState::Pending, 0)
    );
    assert_eq!(
        (items_now[1].state, items_now[1].attempts),
        (ItemState::Pending, 1)
    );
    let after = consistent(&store, job.id).await;
    assert_eq!(after.counts.running, 0);
    assert_eq!(after.last_seq, 1, "a release appends no event");
    assert_eq!(out.pulses.len(), 1);
    assert_eq!(out.pulses[0].counts, after.counts);

    let again = claim(&store, job.id, 2).await;
    assert_eq!(
        again
            .iter()
            .map(|c| (c.index, c.attempt))
            .collect::<Vec<_>>(),
        vec![(0, 1), (1, 2)]
    );
    consistent(&store, job.id).await;
}

pub async fn succeeded_and_cancelled_end_items(store: Arc<dyn Store>) {
    let job = create(&store, &spec(4)).await;
    let lease = claim(&store, job.id, 3).await[0].lease;
    let out = batch(
        &store,
        Batch {
            writes: vec![
                write_of(job.id, 0, lease, WriteKind::succeeded()),
                write_of(job.id, 1, lease, WriteKind::Cancelled),
            ],
            claims: vec![],
        },
    )
    .await;
    assert_eq!(out.applied, vec![true, true]);
    let after = consistent(&store, job.id).await;
    assert_eq!(
        (
            after.counts.succeeded,
            after.counts.cancelled,
            after.counts.running,
            after.counts.pending()
        ),
        (1, 1, 1, 1)
    );
    assert_eq!(out.pulses[0].counts, after.counts);
    assert_eq!(after.last_seq, 1);
    let items_now = items(&store, job.id).await;
    assert_eq!(items_now[0].state, ItemState::Succeeded);
    assert_eq!(items_now[1].state, ItemState::Cancelled);
    assert_eq!(items_now[0].attempts, 1);
    assert!(items_now[0].updated_at.is_some());
    for kind in [
        WriteKind::succeeded(),
        WriteKind::Cancelled,
        failed("x", true),
    ] {
        assert!(!write(&store, job.id, 0, lease, kind.clone()).await);
        assert!(!write(&store, job.id, 1, lease, kind).await);
    }
    assert_eq!(consistent(&store, job.id).await.counts, after.counts);
}

pub async fn checkpoint_kept_across_release_and_reclaim(store: Arc<dyn Store>) {
    let job = create(&store, &spec(2)).await;
    let first = claim(&store, job.id, 1).await;
    let lease = first[0].lease;
    let out = batch(
        &store,
        Batch {
            writes: vec![write_of(
                job.id,
                0,
                lease,
                WriteKind::Checkpoint(b"step-1".to_vec()),
            )],
            claims: vec![],
        },
    )
    .await;
    assert_eq!(out.applied, vec![true]);
    assert!(out.pulses.is_empty(), "a checkpoint changes no counter");
    assert!(
        write(
            &store,
            job.id,
            0,
            lease,
            WriteKind::Checkpoint(vec![0, 255, 0, 7])
        )
        .await
    );
    let saved = item(&store, job.id, 0).await;
    assert_eq!(saved.state, ItemState::Running);
    assert_eq!(saved.checkpoint, Some(vec![0, 255, 0, 7]));

    assert!(
        write(
            &store,
            job.id,
            0,
            lease,
            WriteKind::Released { refund: true }
        )
        .await
    );
    let released = item(&store, job.id, 0).await;
    assert_eq!(released.state, ItemState::Pending);
    assert_eq!(released.checkpoint, Some(vec![0, 255, 0, 7]));

    let again = claim(&store, job.id, 1).await;
    assert_eq!(again[0].index, 0);
    assert_eq!(again[0].attempt, 1);
    assert_eq!(again[0].checkpoint, Some(vec![0, 255, 0, 7]));
    // An empty checkpoint is a checkpoint, not none.
    assert!(
        write(
            &store,
            job.id,
            0,
            again[0].lease,
            WriteKind::Checkpoint(vec![])
        )
        .await
    );
    assert_eq!(item(&store, job.id, 0).await.checkpoint, Some(vec![]));
    assert!(
        write(
            &store,
            job.id,
            0,
            again[0].lease,
            WriteKind::Released { refund: false }
        )
        .await
    );
    let third = claim(&store, job.id, 1).await;
    assert_eq!(
        (third[0].attempt, third[0].checkpoint.clone()),
        (2, Some(vec![]))
    );
    assert!(
        write(
            &store,
            job.id,
            0,
            third[0].lease,
            WriteKind::Checkpoint(b"last".to_vec())
        )
        .await
    );
    assert!(write(&store, job.id, 0, third[0].lease, WriteKind::succeeded()).await);
    // A finished item keeps its last checkpoint.
    assert_eq!(
        item(&store, job.id, 0).await.checkpoint,
        Some(b"last".to_vec())
    );
    consistent(&store, job.id).await;
}

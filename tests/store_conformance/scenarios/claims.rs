//! Claims: the lowest pending items first, under a fresh lease, with the
//! attempt counted; nothing for a job that is not RUNNING.

use crate::harness::*;
use jobvisor::{
    domain::{Effect, ItemState, JobId, JobState, PauseMode},
    store::{Batch, ClaimRequest, Store, WriteKind},
};
use std::sync::Arc;

use Effect as E;
use JobState as S;

pub async fn claims_take_lowest_pending_items_in_order(store: Arc<dyn Store>) {
    let job = create(&store, &spec(8)).await;
    let first = claim(&store, job.id, 3).await;
    assert_eq!(
        first.iter().map(|c| c.index).collect::<Vec<_>>(),
        vec![0, 1, 2]
    );
    for c in &first {
        assert_eq!(c.payload, format!("item-{}", c.index));
        assert_eq!(c.attempt, 1);
        assert_eq!(c.checkpoint, None);
        assert_eq!(c.lease, first[0].lease, "one lease per claim");
    }
    let running = consistent(&store, job.id).await;
    assert_eq!(running.counts.running, 3);
    assert!(
        items(&store, job.id).await[..3]
            .iter()
            .all(|i| i.state == ItemState::Running && i.attempts == 1)
    );

    let second = claim(&store, job.id, 2).await;
    assert_eq!(
        second.iter().map(|c| c.index).collect::<Vec<_>>(),
        vec![3, 4]
    );
    assert_ne!(
        second[0].lease, first[0].lease,
        "every claim has a new lease"
    );

    // An item put back is the lowest pending again, and is claimed first.
    assert!(
        write(
            &store,
            job.id,
            1,
            first[0].lease,
            WriteKind::Released { refund: true }
        )
        .await
    );
    let third = claim(&store, job.id, 10).await;
    assert_eq!(
        third
            .iter()
            .map(|c| (c.index, c.attempt))
            .collect::<Vec<_>>(),
        vec![(1, 1), (5, 1), (6, 1), (7, 1)]
    );
    assert!(
        claim(&store, job.id, 10).await.is_empty(),
        "nothing left to claim"
    );
    assert!(claim(&store, job.id, 0).await.is_empty());
    let all_running = consistent(&store, job.id).await;
    assert_eq!(all_running.counts.running, 8);
}

pub async fn claims_honour_from_index_and_several_jobs(store: Arc<dyn Store>) {
    let a = create(&store, &spec(6)).await;
    let b = create(&store, &spec(4)).await;
    let out = batch(
        &store,
        Batch {
            writes: vec![],
            claims: vec![claim_of(a.id, 3), claim_of(b.id, 1)],
        },
    )
    .await;
    assert_eq!(
        out.claimed[0].iter().map(|c| c.index).collect::<Vec<_>>(),
        vec![0, 1, 2]
    );
    assert_eq!(
        out.claimed[1].iter().map(|c| c.index).collect::<Vec<_>>(),
        vec![0]
    );
    assert_ne!(out.claimed[0][0].lease, out.claimed[1][0].lease);
    // A pulse for each job the batch changed, as committed.
    assert_eq!(out.pulses.len(), 2);
    for pulse in &out.pulses {
        let job = get(&store, pulse.job).await;
        assert_eq!(
            (pulse.state, pulse.counts, pulse.last_seq),
            (job.state, job.counts, job.last_seq)
        );
    }

    // Items 0..3 of `a` are done: a claimer that knows it starts at 3.
    for c in &out.claimed[0] {
        assert!(write(&store, a.id, c.index, c.lease, WriteKind::succeeded()).await);
    }
    let from_three = batch(
        &store,
        Batch {
            writes: vec![],
            claims: vec![ClaimRequest {
                job: a.id,
                max: 2,
                from_index: 3,
                retries: false,
            }],
        },
    )
    .await;
    assert_eq!(
        from_three.claimed[0]
            .iter()
            .map(|c| c.index)
            .collect::<Vec<_>>(),
        vec![3, 4]
    );
    let tail = batch(
        &store,
        Batch {
            writes: vec![],
            claims: vec![ClaimRequest {
                job: a.id,
                max: 5,
                from_index: 5,
                retries: false,
            }],
        },
    )
    .await;
    assert_eq!(
        tail.claimed[0].iter().map(|c| c.index).collect::<Vec<_>>(),
        vec![5]
    );
    consistent(&store, a.id).await;
    consistent(&store, b.id).await;
}

pub async fn no_claims_unless_running(store: Arc<dyn Store>) {
    let refused = |job: JobId| {
        let store = store.clone();
        async move {
            let before = get(&store, job).await;
            let out = batch(
                &store,
                Batch {
                    writes: vec![],
                    claims: vec![claim_of(job, 5)],
                },
            )
            .await;
            assert!(
                out.claimed[0].is_empty(),
                "claimed from a {} job",
                before.state
            );
            assert!(out.pulses.is_empty(), "a claim of nothing changes no job");
            assert_eq!(get(&store, job).await, before);
        }
    };

    let job = create(&store, &spec(3)).await;
    go(
        &store,
        job.id,
        S::Running,
        S::Pausing,
        vec![E::OpenPause(PauseMode::Graceful)],
    )
    .await;
    refused(job.id).await;
    go(
        &store,
        job.id,
        S::Pausing,
        S::Paused,
        vec![E::MarkPaused, E::ReleaseRunning],
    )
    .await;
    refused(job.id).await;
    go(&store, job.id, S::Paused, S::Running, vec![E::ClosePause]).await;
    assert_eq!(
        claim(&store, job.id, 1).await.len(),
        1,
        "a resumed job is claimed again"
    );
    go(
        &store,
        job.id,
        S::Running,
        S::Cancelling,
        vec![E::Interrupt],
    )
    .await;
    refused(job.id).await;
    go(
        &store,
        job.id,
        S::Cancelling,
        S::Cancelled,
        vec![E::CancelRemaining, E::End],
    )
    .await;
    refused(job.id).await;

    let failed_job = create(&store, &spec(2)).await;
    go(
        &store,
        failed_job.id,
        S::Running,
        S::Failed,
        vec![E::ReleaseRunning, E::End],
    )
    .await;
    refused(failed_job.id).await;

    let done = create(&store, &spec(1)).await;
    let c = claim(&store, done.id, 1).await;
    assert!(write(&store, done.id, 0, c[0].lease, WriteKind::succeeded()).await);
    go(&store, done.id, S::Running, S::Succeeded, vec![E::End]).await;
    refused(done.id).await;

    // An unknown job has nothing to claim.
    let out = batch(
        &store,
        Batch {
            writes: vec![],
            claims: vec![claim_of(JobId::new(), 5)],
        },
    )
    .await;
    assert!(out.claimed[0].is_empty() && out.pulses.is_empty());
}

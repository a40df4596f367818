//! A delay between an item's attempts: a failure to be retried after a
//! delay puts its item back to pending, but no claim takes it before the
//! delay has passed, in a batch of its own or in the batch of the failure;
//! a refused finish says when the first waiting item may be claimed.

use crate::harness::*;
use jobvisor::{
    domain::{Effect, EventBody, ItemState, JobId, JobState, Provenance},
    store::{Batch, Store, StoreError, TransitionWrite, WriteKind},
};
use std::{sync::Arc, time::Duration};

fn failed_after(wait: Duration) -> WriteKind {
    WriteKind::Failed {
        error: "busy".into(),
        permanent: false,
        retry_after: wait,
    }
}

/// A finish that must be refused; how long the store says the first
/// waiting item waits, if they all wait.
async fn refused_finish(store: &Arc<dyn Store>, job: JobId) -> (u64, u64, Option<Duration>) {
    let finish = TransitionWrite {
        from: JobState::Running,
        to: JobState::Succeeded,
        effects: vec![Effect::End],
        provenance: Provenance::system("every item ended"),
        pause_mode: None,
        resume_at: None,
    };
    match store.transition(job, &finish).await {
        Err(StoreError::NotFinished {
            pending,
            running,
            retry_in,
        }) => (pending, running, retry_in),
        other => panic!("expected NotFinished, got {other:?}"),
    }
}

fn indexes(items: &[jobvisor::store::ClaimedItem]) -> Vec<(u32, u32)> {
    items.iter().map(|i| (i.index, i.attempt)).collect()
}

pub async fn a_retry_waits_for_its_delay(store: Arc<dyn Store>) {
    let job = create(&store, &spec(5)).await;
    let first = claim(&store, job.id, 5).await;
    let lease = first[0].lease;
    let long = Duration::from_secs(60);
    // Long enough that a stalled machine does not see it end too soon.
    let short = Duration::from_secs(3);
    // Item 1 waits a minute, item 3 three seconds; item 2 is retried at
    // once.
    assert!(write(&store, job.id, 1, lease, failed_after(long)).await);
    assert!(write(&store, job.id, 2, lease, failed("down", false)).await);
    // A failure to retry later and a claim in one batch: the claim does
    // not take the item it just put back.
    let out = batch(
        &store,
        Batch {
            writes: vec![write_of(job.id, 3, lease, failed_after(short))],
            claims: vec![claim_of(job.id, 10)],
        },
    )
    .await;
    assert_eq!(out.applied, vec![true]);
    assert_eq!(indexes(&out.claimed[0]), vec![(2, 2)]);
    let waiting = item(&store, job.id, 1).await;
    assert_eq!((waiting.state, waiting.attempts), (ItemState::Pending, 1));
    // The failure's event says when the retry may start, and so does the
    // item; a failure retried at once names no time.
    let log = events(&store, job.id).await;
    let retry_at = |index| {
        log.iter()
            .find_map(|e| match e.body {
                EventBody::ItemFailed {
                    index: i, retry_at, ..
                } if i == index => Some((e.at, retry_at)),
                _ => None,
            })
            .unwrap_or_else(|| panic!("no failure of item {index}"))
    };
    let (failed_at, at) = retry_at(1);
    let wait = (at.expect("item 1 waits") - failed_at)
        .to_std()
        .expect("later");
    assert!(
        wait >= long - Duration::from_millis(1) && wait < long + Duration::from_secs(1),
        "item 1 waits {wait:?} from its failure's event"
    );
    assert_eq!(waiting.retry_at, at, "the item and its event agree");
    assert_eq!(retry_at(2).1, None);
    assert_eq!(item(&store, job.id, 2).await.retry_at, None);
    assert!(claim(&store, job.id, 10).await.is_empty());
    // The waiting retries, the first due first, with how long each waits.
    let found = store.waiting_retries(job.id, 10).await.expect("waiting");
    assert_eq!(found.iter().map(|w| w.0).collect::<Vec<_>>(), vec![3, 1]);
    assert!(found[0].1 <= short && found[0].1 > short / 4, "{found:?}");
    assert!(found[1].1 <= long && found[1].1 > long / 2, "{found:?}");
    let first = store.waiting_retries(job.id, 1).await.expect("waiting");
    assert_eq!(first.iter().map(|w| w.0).collect::<Vec<_>>(), vec![3]);
    let job_now = consistent(&store, job.id).await;
    assert_eq!((job_now.counts.running, job_now.counts.pending()), (3, 2));

    // Every pending item waits: the refusal says when the first wait ends.
    let (pending, running, retry_in) = refused_finish(&store, job.id).await;
    assert_eq!((pending, running), (2, 3));
    let wait = retry_in.expect("every pending item waits");
    assert!(
        wait > short / 4 && wait <= short,
        "the first wait ends in {wait:?}"
    );

    // Once its wait is over, item 3 is claimed (its second attempt); item
    // 1 still waits.
    tokio::time::sleep(short + Duration::from_millis(100)).await;
    let again = claim(&store, job.id, 10).await;
    assert_eq!(indexes(&again), vec![(3, 2)]);
    assert_eq!(item(&store, job.id, 3).await.retry_at, None, "claimed");
    let found = store.waiting_retries(job.id, 10).await.expect("waiting");
    assert_eq!(found.iter().map(|w| w.0).collect::<Vec<_>>(), vec![1]);
    for (index, lease) in [
        (0, lease),
        (2, out.claimed[0][0].lease),
        (3, again[0].lease),
    ] {
        let ok = WriteKind::succeeded();
        assert!(
            write(&store, job.id, index, lease, ok).await,
            "item {index}"
        );
    }
    assert!(
        write(
            &store,
            job.id,
            4,
            lease,
            WriteKind::Released { refund: true }
        )
        .await
    );

    // Item 4 is pending with no wait: the finish is refused with none.
    assert_eq!(refused_finish(&store, job.id).await, (2, 0, None));
    let last = claim(&store, job.id, 10).await;
    assert_eq!(indexes(&last), vec![(4, 1)]);
    let ok = WriteKind::succeeded();
    assert!(write(&store, job.id, 4, last[0].lease, ok).await);

    // Only item 1 is left, and it waits: the refusal says for how long.
    let (pending, running, retry_in) = refused_finish(&store, job.id).await;
    assert_eq!((pending, running), (1, 0));
    let wait = retry_in.expect("the only pending item waits");
    assert!(
        wait > Duration::from_secs(50) && wait <= long,
        "the first wait ends in {wait:?}"
    );
    assert!(claim(&store, job.id, 10).await.is_empty());
    consistent(&store, job.id).await;
}

/// A claim of due retries only (`retries: true`) takes the items whose
/// wait is over, from its bound on, and nothing else that is pending.
pub async fn a_claim_of_due_retries_takes_only_them(store: Arc<dyn Store>) {
    let job = create(&store, &spec(6)).await;
    let first = claim(&store, job.id, 6).await;
    let lease = first[0].lease;
    let short = Duration::from_millis(300);
    assert!(write(&store, job.id, 1, lease, failed_after(short)).await);
    assert!(write(&store, job.id, 3, lease, failed_after(short)).await);
    assert!(
        write(
            &store,
            job.id,
            4,
            lease,
            failed_after(Duration::from_secs(60))
        )
        .await
    );
    let back = WriteKind::Released { refund: true };
    assert!(write(&store, job.id, 2, lease, back).await);
    let retries = |from_index, max| Batch {
        writes: vec![],
        claims: vec![jobvisor::store::ClaimRequest {
            job: job.id,
            max,
            from_index,
            retries: true,
        }],
    };
    // Not yet due: nothing, though item 2 is pending.
    assert!(batch(&store, retries(0, 10)).await.claimed[0].is_empty());
    tokio::time::sleep(short + Duration::from_millis(100)).await;
    // Due: items 1 and 3, lowest first and no more than asked; not item 2
    // (pending, but no retry) nor item 4 (still waiting).
    let out = batch(&store, retries(0, 1)).await;
    assert_eq!(indexes(&out.claimed[0]), vec![(1, 2)]);
    let out = batch(&store, retries(2, 10)).await;
    assert_eq!(indexes(&out.claimed[0]), vec![(3, 2)]);
    assert!(batch(&store, retries(0, 10)).await.claimed[0].is_empty());
    // The next items from the bound: item 2.
    assert_eq!(indexes(&claim(&store, job.id, 10).await), vec![(2, 1)]);
    consistent(&store, job.id).await;
}

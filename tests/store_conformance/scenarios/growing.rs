//! Jobs that grow (AddItems): pages append after the last item, a page
//! retried with its request id adds nothing again, a job holds at most
//! `max_items`, an open job does not finish until a page closes it, and
//! an ended job takes no items.

use crate::harness::*;
use jobvisor::{
    domain::{Effect, EventBody, ItemPage, JobId, JobState, Provenance},
    store::{Store, StoreError, TransitionWrite, WriteKind},
};
use std::sync::Arc;

fn page(items: &[&str], request_id: Option<&str>, close: bool) -> ItemPage {
    ItemPage {
        items: items.iter().map(|s| s.to_string()).collect(),
        request_id: request_id.map(String::from),
        close,
    }
}

fn finish() -> TransitionWrite {
    TransitionWrite {
        from: JobState::Running,
        to: JobState::Succeeded,
        effects: vec![Effect::End],
        provenance: Provenance::system("every item ended"),
        pause_mode: None,
        resume_at: None,
    }
}

pub async fn an_open_job_grows_and_ends_only_once_closed(store: Arc<dyn Store>) {
    let mut s = spec(2);
    s.open = true;
    let job = create(&store, &s).await;
    assert!(job.open);
    let lease = claim(&store, job.id, 2).await[0].lease;
    for i in 0..2 {
        assert!(write(&store, job.id, i, lease, WriteKind::succeeded()).await);
    }
    // Every item done: still no finish, it is open.
    match store.transition(job.id, &finish()).await {
        Err(StoreError::JobOpen) => {}
        other => panic!("expected JobOpen, got {other:?}"),
    }
    assert_eq!(get(&store, job.id).await.state, JobState::Running);

    let added = store
        .add_items(
            job.id,
            &page(&["c", "d"], Some("p-1"), false),
            5,
            Some("ops"),
        )
        .await
        .expect("add a page");
    assert_eq!((added.first, added.count), (2, 2));
    assert_eq!(added.job.counts.total, 4);
    assert_eq!(added.job.counts.pending(), 2);
    assert!(added.job.open);
    // Again: nothing added, the same answer; another page under that id:
    // refused.
    let again = store
        .add_items(job.id, &page(&["c", "d"], Some("p-1"), false), 5, None)
        .await
        .expect("the same page again");
    assert_eq!((again.first, again.count), (2, 2));
    assert_eq!(again.job.counts.total, 4);
    match store
        .add_items(job.id, &page(&["x"], Some("p-1"), false), 5, None)
        .await
    {
        Err(StoreError::RequestIdReused(id)) => assert_eq!(id, "p-1"),
        other => panic!("expected RequestIdReused, got {other:?}"),
    }
    // Over max_items: refused whole.
    match store
        .add_items(job.id, &page(&["e", "f"], None, false), 5, None)
        .await
    {
        Err(StoreError::TooManyItems {
            total: 4,
            adding: 2,
            limit: 5,
        }) => {}
        other => panic!("expected TooManyItems, got {other:?}"),
    }
    let grown = consistent(&store, job.id).await;
    assert_eq!(grown.counts.total, 4);
    let payloads: Vec<String> = items(&store, job.id)
        .await
        .into_iter()
        .map(|i| i.payload)
        .collect();
    assert_eq!(payloads, ["item-0", "item-1", "c", "d"]);

    // The new items are claimed like the first ones.
    let claimed = claim(&store, job.id, 5).await;
    let indexes: Vec<u32> = claimed.iter().map(|c| c.index).collect();
    assert_eq!(indexes, [2, 3]);
    for c in &claimed {
        assert!(write(&store, job.id, c.index, c.lease, WriteKind::succeeded()).await);
    }
    let closed = store
        .add_items(job.id, &page(&[], None, true), 5, None)
        .await
        .expect("close");
    assert_eq!((closed.first, closed.count), (4, 0));
    assert!(!closed.job.open);
    let done = store.transition(job.id, &finish()).await.expect("finish");
    assert_eq!(done.state, JobState::Succeeded);
    assert_eq!(done.counts.succeeded, 4);

    // Ended: no items.
    match store
        .add_items(job.id, &page(&["late"], None, false), 5, None)
        .await
    {
        Err(StoreError::Conflict { current, .. }) => assert_eq!(current, JobState::Succeeded),
        other => panic!("expected Conflict, got {other:?}"),
    }
    let history = events(&store, job.id).await;
    let pages: Vec<&EventBody> = history
        .iter()
        .map(|e| &e.body)
        .filter(|b| matches!(b, EventBody::ItemsAdded { .. }))
        .collect();
    assert_eq!(
        pages,
        [
            &EventBody::ItemsAdded {
                first: 2,
                count: 2,
                closed: false,
                requested_by: Some("ops".into()),
                request_id: Some("p-1".into()),
            },
            &EventBody::ItemsAdded {
                first: 4,
                count: 0,
                closed: true,
                requested_by: None,
                request_id: None,
            },
        ]
    );
    consistent(&store, job.id).await;
    let unknown = JobId::new();
    is_not_found(
        store
            .add_items(unknown, &page(&["a"], None, false), 5, None)
            .await,
        unknown,
    );
}

pub async fn a_cancelled_job_cancels_its_late_items_and_takes_no_more(store: Arc<dyn Store>) {
    use Effect as E;
    use JobState as S;
    let job = create(&store, &spec(1)).await;
    assert!(!job.open);
    store
        .add_items(job.id, &page(&["b", "c"], None, false), 100, None)
        .await
        .expect("add to a running job");
    go(
        &store,
        job.id,
        S::Running,
        S::Cancelling,
        vec![E::Interrupt],
    )
    .await;
    let refused = |r: Result<jobvisor::store::Added, StoreError>, state: S| match r {
        Err(StoreError::Conflict { current, .. }) => assert_eq!(current, state),
        other => panic!("expected Conflict in {state:?}, got {other:?}"),
    };
    refused(
        store
            .add_items(job.id, &page(&["d"], None, false), 100, None)
            .await,
        S::Cancelling,
    );
    let cancelled = go(
        &store,
        job.id,
        S::Cancelling,
        S::Cancelled,
        vec![E::CancelRemaining, E::End],
    )
    .await;
    assert_eq!(cancelled.counts.total, 3);
    assert_eq!(cancelled.counts.cancelled, 3);
    refused(
        store
            .add_items(job.id, &page(&["d"], None, false), 100, None)
            .await,
        S::Cancelled,
    );
    consistent(&store, job.id).await;
}

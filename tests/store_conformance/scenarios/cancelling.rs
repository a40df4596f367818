//! Items cancelled one by one (CancelItems): the chosen pending and
//! running items end CANCELLED in one commit with one event, their leases
//! gone (a worker's late writes for them are refused), items already ended
//! are left alone, a bad choice or a job that takes none changes nothing,
//! and the job finishes once its other items are done.

use crate::harness::*;
use jobvisor::{
    domain::{
        Command, EventBody, ItemSelection, ItemState, Job, JobId, JobState, NewSelection,
        cancel::Which,
    },
    store::{ItemsCancelled, Store, StoreError, TransitionWrite, WriteKind},
};
use std::{sync::Arc, time::Duration};

fn by_index(indexes: &[u32]) -> ItemSelection {
    ItemSelection::parse(NewSelection {
        indexes: indexes.to_vec(),
        ..NewSelection::default()
    })
    .expect("a valid selection")
}

fn by_range(first: u32, last: u32, states: &[ItemState]) -> ItemSelection {
    ItemSelection::parse(NewSelection {
        range: Some((first, last)),
        states: states.to_vec(),
        ..NewSelection::default()
    })
    .expect("a valid selection")
}

async fn cancel_items(
    store: &Arc<dyn Store>,
    job: JobId,
    which: &ItemSelection,
) -> Result<ItemsCancelled, StoreError> {
    store
        .cancel_items(job, which, Some("not needed"), Some("ops"))
        .await
}

fn states(items: &[jobvisor::domain::Item]) -> Vec<ItemState> {
    items.iter().map(|i| i.state).collect()
}

/// The job and its items are as they were.
async fn unchanged(store: &Arc<dyn Store>, before: &Job) {
    let now = consistent(store, before.id).await;
    assert_eq!(
        (now.state, now.counts, now.last_seq),
        (before.state, before.counts, before.last_seq)
    );
}

/// The transition the state machine decides for `command`, which must be
/// accepted.
async fn decided(store: &Arc<dyn Store>, job: JobId, state: JobState, command: Command) -> Job {
    let write = TransitionWrite::decided(state, command, "test").expect("a transition");
    store
        .transition(job, &write)
        .await
        .unwrap_or_else(|e| panic!("{command:?} from {state}: {e}"))
}

pub async fn chosen_items_end_cancelled_and_the_job_finishes_without_them(store: Arc<dyn Store>) {
    use ItemState as I;
    let job = create(&store, &spec(6)).await;
    let claimed = claim(&store, job.id, 2).await;
    let lease = |index: u32| claimed.iter().find(|c| c.index == index).unwrap().lease;
    assert_eq!(claimed.len(), 2);

    // Item 1 runs, 2 and 5 are pending; 1 is named twice.
    let done = cancel_items(&store, job.id, &by_index(&[5, 1, 2, 1]))
        .await
        .expect("cancel items");
    assert_eq!(done.cancelled, 3);
    assert_eq!(done.interrupted, [1]);
    assert!(done.waited.is_empty());
    assert_eq!(done.job.counts.running, 1);
    assert_eq!(done.job.counts.cancelled, 3);
    assert_eq!(done.job.counts.pending(), 2);
    assert_eq!(done.job.state, JobState::Running);
    let job_now = consistent(&store, job.id).await;
    assert_eq!(job_now.counts, done.job.counts);
    assert_eq!(job_now.last_seq, done.job.last_seq);
    assert_eq!(
        states(&items(&store, job.id).await),
        [
            I::Running,
            I::Cancelled,
            I::Cancelled,
            I::Pending,
            I::Pending,
            I::Cancelled
        ]
    );
    let last = events(&store, job.id).await.pop().expect("an event");
    assert_eq!(last.seq, done.job.last_seq);
    assert_eq!(
        last.body,
        EventBody::ItemsCancelled {
            count: 3,
            first: 1,
            last: 5,
            reason: Some("not needed".into()),
            requested_by: Some("ops".into()),
        }
    );

    // The worker that ran item 1 can change nothing any more.
    let before = get(&store, job.id).await;
    let late = [
        WriteKind::Checkpoint(b"half".to_vec()),
        WriteKind::succeeded(),
        failed("late", false),
        WriteKind::Released { refund: true },
    ];
    for kind in late {
        assert!(
            !write(&store, job.id, 1, lease(1), kind.clone()).await,
            "{kind:?} for a cancelled item"
        );
    }
    assert_eq!(item(&store, job.id, 1).await.state, I::Cancelled);
    assert_eq!(item(&store, job.id, 1).await.checkpoint, None);
    unchanged(&store, &before).await;

    // Again: nothing more is cancelled, and no event.
    let again = cancel_items(&store, job.id, &by_index(&[1, 2, 5]))
        .await
        .expect("cancel again");
    assert_eq!((again.cancelled, again.interrupted.len()), (0, 0));
    unchanged(&store, &before).await;

    // By range and state: only the running item of 0 to 4.
    let running = cancel_items(&store, job.id, &by_range(0, 4, &[I::Running]))
        .await
        .expect("cancel the running ones");
    assert_eq!((running.cancelled, running.interrupted), (1, vec![0]));
    assert_eq!(running.job.counts.running, 0);
    assert!(!write(&store, job.id, 0, lease(0), WriteKind::succeeded()).await);
    assert_eq!(
        states(&items(&store, job.id).await),
        [
            I::Cancelled,
            I::Cancelled,
            I::Cancelled,
            I::Pending,
            I::Pending,
            I::Cancelled
        ]
    );

    // Past the job's items: refused, nothing changed.
    let before = consistent(&store, job.id).await;
    match cancel_items(&store, job.id, &by_index(&[3, 6])).await {
        Err(StoreError::NoSuchItem {
            field: "indexes",
            index: 6,
            total: 6,
        }) => {}
        other => panic!("expected NoSuchItem (indexes), got {other:?}"),
    }
    match cancel_items(&store, job.id, &by_range(3, 9, &[])).await {
        Err(StoreError::NoSuchItem {
            field: "range",
            index: 9,
            total: 6,
        }) => {}
        other => panic!("expected NoSuchItem (range), got {other:?}"),
    }
    unchanged(&store, &before).await;

    // Cancelled items are not claimed; the others run, and the job then
    // finishes: nothing is pending or running.
    let rest = claim(&store, job.id, 10).await;
    let indexes: Vec<u32> = rest.iter().map(|c| c.index).collect();
    assert_eq!(indexes, [3, 4]);
    for c in &rest {
        assert!(write(&store, job.id, c.index, c.lease, WriteKind::succeeded()).await);
    }
    let ended = decided(
        &store,
        job.id,
        JobState::Running,
        Command::Finish { any_failed: false },
    )
    .await;
    assert_eq!(ended.state, JobState::Succeeded);
    assert_eq!((ended.counts.succeeded, ended.counts.cancelled), (2, 4));

    // An ended job takes none: nothing changes.
    let before = consistent(&store, job.id).await;
    match cancel_items(&store, job.id, &by_index(&[3])).await {
        Err(StoreError::Conflict { current, .. }) => assert_eq!(current, JobState::Succeeded),
        other => panic!("expected Conflict, got {other:?}"),
    }
    unchanged(&store, &before).await;
    let unknown = JobId::new();
    is_not_found(
        cancel_items(&store, unknown, &by_index(&[0])).await,
        unknown,
    );
}

pub async fn items_are_cancelled_while_paused_but_not_once_the_job_is_cancelling(
    store: Arc<dyn Store>,
) {
    use Command as C;
    use JobState as S;
    let job = create(&store, &spec(5)).await;
    let claimed = claim(&store, job.id, 2).await;
    decided(&store, job.id, S::Running, C::Pause(Default::default())).await;
    // PAUSING: item 0 still runs; pending ones by range.
    let pausing = cancel_items(&store, job.id, &by_range(0, 2, &[]))
        .await
        .expect("cancel while pausing");
    assert_eq!((pausing.cancelled, pausing.interrupted), (3, vec![0, 1]));
    assert_eq!(pausing.job.state, S::Pausing);
    for c in &claimed {
        assert!(
            !write(
                &store,
                job.id,
                c.index,
                c.lease,
                WriteKind::Released { refund: true }
            )
            .await
        );
    }
    decided(&store, job.id, S::Pausing, C::Drained).await;
    let paused = cancel_items(&store, job.id, &by_index(&[4]))
        .await
        .expect("cancel while paused");
    assert_eq!((paused.cancelled, paused.job.state), (1, S::Paused));
    // Resumed: only item 3 is claimed.
    decided(&store, job.id, S::Paused, C::Resume).await;
    let rest = claim(&store, job.id, 10).await;
    assert_eq!(rest.iter().map(|c| c.index).collect::<Vec<_>>(), [3]);
    consistent(&store, job.id).await;

    decided(&store, job.id, S::Running, C::Cancel).await;
    let before = consistent(&store, job.id).await;
    match cancel_items(&store, job.id, &by_index(&[3])).await {
        Err(StoreError::Conflict { current, .. }) => assert_eq!(current, S::Cancelling),
        other => panic!("expected Conflict, got {other:?}"),
    }
    unchanged(&store, &before).await;
}

pub async fn a_retry_waiting_for_its_delay_is_cancelled_and_no_longer_waits(store: Arc<dyn Store>) {
    let job = create(&store, &spec(3)).await;
    let claimed = claim(&store, job.id, 1).await;
    let retry = WriteKind::Failed {
        error: "busy".into(),
        permanent: false,
        retry_after: Duration::from_secs(3600),
    };
    assert!(write(&store, job.id, 0, claimed[0].lease, retry).await);
    assert!(item(&store, job.id, 0).await.retry_at.is_some());
    let done = cancel_items(&store, job.id, &by_range(0, 1, &[ItemState::Pending]))
        .await
        .expect("cancel");
    assert_eq!(done.cancelled, 2);
    assert_eq!(done.waited, [0]);
    let cancelled = item(&store, job.id, 0).await;
    assert_eq!(
        (cancelled.state, cancelled.retry_at),
        (ItemState::Cancelled, None)
    );
    assert!(store.waiting_retries(job.id, 10).await.unwrap().is_empty());
    let selection = by_index(&[2]);
    assert_eq!(selection.which, Which::Indexes(vec![2]));
    consistent(&store, job.id).await;
}

pub async fn a_call_names_as_many_indexes_as_it_may(store: Arc<dyn Store>) {
    let n = jobvisor::domain::cancel::MAX_CANCEL_INDEXES;
    let job = create(&store, &spec(n)).await;
    // Every other item, from the last down.
    let chosen: Vec<u32> = (0..n as u32).rev().step_by(2).collect();
    let done = cancel_items(&store, job.id, &by_index(&chosen))
        .await
        .expect("cancel");
    assert_eq!(done.cancelled as usize, n / 2);
    assert_eq!(done.job.counts.cancelled as usize, n / 2);
    assert_eq!(done.job.counts.pending() as usize, n - n / 2);
    let last = events(&store, job.id).await.pop().expect("an event");
    assert!(matches!(
        last.body,
        EventBody::ItemsCancelled { count, first: 1, last, .. }
            if count as usize == n / 2 && last as usize == n - 1
    ));
    consistent(&store, job.id).await;
}

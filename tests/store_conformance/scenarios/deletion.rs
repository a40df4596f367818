//! Deleting jobs: one ended job by its id (DeleteJob), and the ended jobs
//! older than a time in bounded batches (the retention). A job that has not
//! ended is never deleted, and deleting one job leaves the others as they
//! were.

use crate::harness::*;
use jobvisor::{
    domain::{Effect, Job, JobId, JobState, PauseMode},
    store::{PruneLimits, Pruned, Store, StoreError, WriteKind},
};
use std::sync::Arc;

use Effect as E;
use JobState as S;

/// Everything a caller can read of a job.
async fn everything(store: &Arc<dyn Store>, id: JobId) -> (Job, Vec<String>, usize) {
    let items = items(store, id)
        .await
        .iter()
        .map(|i| format!("{i:?}"))
        .collect();
    (get(store, id).await, items, events(store, id).await.len())
}

pub async fn an_ended_job_is_deleted_with_all_it_holds(store: Arc<dyn Store>) {
    let mut keyed = spec(4);
    keyed.request_id = Some("nightly-2026-12-06".into());
    let job = create(&store, &keyed).await;
    let other = create(&store, &spec(3)).await;
    let lease = claim(&store, job.id, 2).await[0].lease;
    assert!(write(&store, job.id, 0, lease, WriteKind::succeeded()).await);
    claim(&store, other.id, 1).await;
    let ended = cancel(&store, job.id).await;
    let others_before = everything(&store, other.id).await;

    let deleted = store.delete_job(job.id).await.expect("delete_job");
    assert_eq!(deleted, ended, "the job as it was");
    is_not_found(store.get_job(job.id).await, job.id);
    assert!(
        store
            .events_after(job.id, 0, 100)
            .await
            .unwrap_or_default()
            .is_empty(),
        "its events went with it"
    );
    // Once is enough: the second time there is nothing to delete.
    is_not_found(store.delete_job(job.id).await, job.id);
    // The other job did not change.
    assert_eq!(everything(&store, other.id).await, others_before);
    consistent(&store, other.id).await;
    // The request id is free again: the same request makes a new job.
    let again = store.create_job(JobId::new(), &keyed).await.unwrap();
    assert!(again.created);
    assert_ne!(again.job.id, job.id);
}

pub async fn a_job_that_has_not_ended_is_not_deleted(store: Arc<dyn Store>) {
    let job = create(&store, &spec(3)).await;
    claim(&store, job.id, 1).await;
    let refused = |state: JobState| {
        let store = store.clone();
        async move {
            let before = everything(&store, job.id).await;
            assert_eq!(before.0.state, state);
            match store.delete_job(job.id).await {
                Err(StoreError::NotEnded(s)) => assert_eq!(s, state),
                other => panic!("deleting a {state} job: {other:?}"),
            }
            assert_eq!(everything(&store, job.id).await, before);
        }
    };
    refused(S::Running).await;
    go(
        &store,
        job.id,
        S::Running,
        S::Pausing,
        vec![E::OpenPause(PauseMode::Graceful)],
    )
    .await;
    refused(S::Pausing).await;
    go(
        &store,
        job.id,
        S::Pausing,
        S::Paused,
        vec![E::MarkPaused, E::ReleaseRunning],
    )
    .await;
    refused(S::Paused).await;
    go(&store, job.id, S::Paused, S::Running, vec![E::ClosePause]).await;
    go(
        &store,
        job.id,
        S::Running,
        S::Cancelling,
        vec![E::Interrupt],
    )
    .await;
    refused(S::Cancelling).await;
    let missing = JobId::new();
    is_not_found(store.delete_job(missing).await, missing);
}

pub async fn the_retention_deletes_the_oldest_ended_jobs_in_batches(store: Arc<dyn Store>) {
    let before_any = chrono::Utc::now() - chrono::Duration::seconds(1);
    let mut ended = Vec::new();
    for _ in 0..3 {
        let job = create(&store, &spec(3)).await;
        ended.push(cancel(&store, job.id).await.id);
    }
    let live = create(&store, &spec(3)).await;
    let later = chrono::Utc::now() + chrono::Duration::hours(1);
    let limits = |jobs, items| PruneLimits { jobs, items };

    // Nothing had ended a second ago.
    assert!(
        store
            .delete_ended(before_any, limits(10, 1_000))
            .await
            .unwrap()
            .jobs
            .is_empty()
    );
    // Two jobs at most: the two that ended first.
    assert_eq!(
        store.delete_ended(later, limits(2, 1_000)).await.unwrap(),
        Pruned {
            jobs: ended[..2].to_vec(),
            items: 6
        }
    );
    // 3 items fit in 4, the next job's 3 would not: one job.
    let last = create(&store, &spec(3)).await;
    let last = cancel(&store, last.id).await.id;
    assert_eq!(
        store.delete_ended(later, limits(10, 4)).await.unwrap().jobs,
        vec![ended[2]]
    );
    // A job larger than the items' limit goes alone.
    assert_eq!(
        store.delete_ended(later, limits(10, 1)).await.unwrap().jobs,
        vec![last]
    );
    assert!(
        store
            .delete_ended(later, limits(10, 1_000))
            .await
            .unwrap()
            .jobs
            .is_empty()
    );
    for id in ended.iter().chain([&last]) {
        is_not_found(store.get_job(*id).await, *id);
    }
    // The job still running was never a candidate.
    assert_eq!(get(&store, live.id).await.state, S::Running);
    consistent(&store, live.id).await;
}

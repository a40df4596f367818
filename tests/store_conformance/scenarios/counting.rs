//! Skipped items and counters of the job's own: a success may carry a
//! skip reason (kept with the item) and counters (added to the job's in
//! the same commit); a success whose lease is lost adds nothing, and
//! several successes of one batch add up.

use crate::harness::*;
use jobvisor::{
    domain::{Counters, ItemState},
    store::{Batch, JobQuery, Store, WriteKind},
};
use std::sync::Arc;

fn success(skip: Option<&str>, counts: &[(&str, i64)]) -> WriteKind {
    WriteKind::Succeeded {
        result: None,
        skip_reason: skip.map(String::from),
        counters: counts.iter().map(|(n, v)| (n.to_string(), *v)).collect(),
    }
}

fn counters(pairs: &[(&str, i64)]) -> Counters {
    pairs.iter().map(|(n, v)| (n.to_string(), *v)).collect()
}

pub async fn successes_carry_skips_and_counters(store: Arc<dyn Store>) {
    let job = create(&store, &spec(6)).await;
    assert!(job.counters.is_empty());
    let c = claim(&store, job.id, 6).await;

    // A skip with counters, alone in its batch.
    let skipped = success(Some("out.mp4 exists"), &[("frames", 10), ("faces", 2)]);
    assert!(write(&store, job.id, 0, c[0].lease, skipped).await);
    let first = item(&store, job.id, 0).await;
    assert_eq!(first.state, ItemState::Succeeded);
    assert_eq!(first.skip_reason.as_deref(), Some("out.mp4 exists"));
    assert_eq!(
        get(&store, job.id).await.counters,
        counters(&[("faces", 2), ("frames", 10)])
    );

    // A failure reports no counters; a success that lost its lease adds
    // nothing.
    assert!(write(&store, job.id, 1, c[1].lease, failed("boom", false)).await);
    let stale = success(None, &[("frames", 1000)]);
    assert!(!write(&store, job.id, 2, c[2].lease + 1, stale).await);
    assert_eq!(get(&store, job.id).await.counters["frames"], 10);

    // Several successes in one batch, beside a checkpoint (the batch's
    // general path) and a plain success: they add up, per name.
    let out = batch(
        &store,
        Batch {
            writes: vec![
                write_of(job.id, 2, c[2].lease, success(None, &[("frames", 5)])),
                write_of(
                    job.id,
                    3,
                    c[3].lease,
                    success(None, &[("frames", 1), ("new", 7)]),
                ),
                write_of(job.id, 4, c[4].lease, WriteKind::Checkpoint(b"x".to_vec())),
                write_of(job.id, 5, c[5].lease, WriteKind::succeeded()),
            ],
            claims: vec![],
        },
    )
    .await;
    assert_eq!(out.applied, [true, true, true, true]);
    let after = consistent(&store, job.id).await;
    assert_eq!(
        after.counters,
        counters(&[("faces", 2), ("frames", 16), ("new", 7)])
    );
    assert_eq!(after.counts.succeeded, 4);
    for index in [2, 3, 5] {
        assert_eq!(item(&store, job.id, index).await.skip_reason, None);
    }
    // Lists carry them too.
    let listed = all_jobs(&store, JobQuery::default()).await;
    assert_eq!(listed[0].counters, after.counters);

    // Sums are exact past 32 bits.
    let big = success(None, &[("frames", 5_000_000_000)]);
    assert!(write(&store, job.id, 4, c[4].lease, big).await);
    assert_eq!(get(&store, job.id).await.counters["frames"], 5_000_000_016);
}

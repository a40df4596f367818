//! Whole runs: several jobs in one batch, and a job driven to its end
//! through every kind of result, with counters, pulses and the event log
//! checked after every commit.

use crate::harness::*;
use jobvisor::{
    domain::{Effect, EventBody, JobState},
    store::{Batch, Store, WriteKind},
};
use std::{collections::HashSet, sync::Arc};

pub async fn one_batch_many_jobs(store: Arc<dyn Store>) {
    let a = create(&store, &spec(5)).await;
    let b = create(&store, &spec(5)).await;
    let out = batch(
        &store,
        Batch {
            writes: vec![],
            claims: vec![claim_of(a.id, 3), claim_of(b.id, 3)],
        },
    )
    .await;
    let (la, lb) = (out.claimed[0][0].lease, out.claimed[1][0].lease);

    // Writes to both jobs, interleaved, and claims, all in one transaction.
    let out = batch(
        &store,
        Batch {
            writes: vec![
                write_of(a.id, 1, la, failed("a1", false)),
                write_of(b.id, 0, lb, failed("b0", true)),
                write_of(a.id, 0, la, failed("a0", false)),
                write_of(b.id, 1, lb, WriteKind::Checkpoint(b"b1".to_vec())),
                write_of(a.id, 2, la, WriteKind::succeeded()),
                write_of(b.id, 2, lb, WriteKind::Cancelled),
                write_of(a.id, 3, la, WriteKind::succeeded()),
            ],
            claims: vec![claim_of(b.id, 1)],
        },
    )
    .await;
    assert_eq!(out.applied, vec![true, true, true, true, true, true, false]);
    assert_eq!(
        out.claimed[0].iter().map(|c| c.index).collect::<Vec<_>>(),
        vec![3]
    );

    // ItemFailed events in the order of the writes, numbered after the log.
    let log_a = events(&store, a.id).await;
    assert_eq!(log_a.len(), 3);
    assert_eq!(item_failed(&log_a[1]), (1, 1, "a1".into(), true));
    assert_eq!(item_failed(&log_a[2]), (0, 1, "a0".into(), true));
    assert_eq!(log_a[1].at, log_a[2].at, "one transaction, one time");
    let log_b = events(&store, b.id).await;
    assert_eq!(log_b.len(), 2);
    assert_eq!(item_failed(&log_b[1]), (0, 1, "b0".into(), false));

    let job_a = consistent(&store, a.id).await;
    let job_b = consistent(&store, b.id).await;
    assert_eq!(
        (
            job_a.counts.succeeded,
            job_a.counts.running,
            job_a.counts.pending()
        ),
        (1, 0, 4)
    );
    assert_eq!(
        (
            job_b.counts.failed,
            job_b.counts.cancelled,
            job_b.counts.running,
            job_b.counts.pending()
        ),
        (1, 1, 2, 1)
    );
    assert_eq!(out.pulses.len(), 2, "{:?}", out.pulses);
    for job in [&job_a, &job_b] {
        let pulse = out
            .pulses
            .iter()
            .find(|p| p.job == job.id)
            .expect("a pulse per job");
        assert_eq!(
            (pulse.state, pulse.counts, pulse.last_seq),
            (job.state, job.counts, job.last_seq)
        );
    }
    assert_eq!(item(&store, b.id, 1).await.checkpoint, Some(b"b1".to_vec()));
}

/// A whole job driven batch by batch, with every kind of result; the
/// counters and the log are checked after every commit.
pub async fn counters_follow_items_through_a_whole_run(store: Arc<dyn Store>) {
    let mut s = spec(20);
    s.max_attempts = 2;
    let job = create(&store, &s).await;
    let mut released = HashSet::new();
    let mut writes = Vec::new();
    for round in 0.. {
        assert!(round < 100, "the run does not end");
        let out = batch(
            &store,
            Batch {
                writes: std::mem::take(&mut writes),
                claims: vec![claim_of(job.id, 4)],
            },
        )
        .await;
        assert!(
            out.applied.iter().all(|a| *a),
            "every write holds its lease"
        );
        let now = consistent(&store, job.id).await;
        if let Some(pulse) = out.pulses.iter().find(|p| p.job == job.id) {
            assert_eq!((pulse.counts, pulse.last_seq), (now.counts, now.last_seq));
        }
        let claimed = &out.claimed[0];
        if claimed.is_empty() && now.counts.running == 0 {
            assert_eq!(now.counts.pending(), 0);
            break;
        }
        for c in claimed {
            let kind = match (c.index % 5, c.attempt) {
                (1, 1) | (2, _) => failed("flaky", false),
                (3, _) if released.insert(c.index) => WriteKind::Released { refund: true },
                (4, _) => {
                    // A checkpoint commits on its own (one write per item
                    // per batch); the result follows in the next batch.
                    assert!(
                        write(
                            &store,
                            job.id,
                            c.index,
                            c.lease,
                            WriteKind::Checkpoint(vec![4])
                        )
                        .await
                    );
                    consistent(&store, job.id).await;
                    WriteKind::succeeded()
                }
                _ => WriteKind::succeeded(),
            };
            writes.push(write_of(job.id, c.index, c.lease, kind));
        }
    }
    let end = consistent(&store, job.id).await;
    // Items 2, 7, 12, 17 fail twice; items 1, 6, 11, 16 once.
    assert_eq!((end.counts.succeeded, end.counts.failed), (16, 4));
    let failures = events(&store, job.id)
        .await
        .iter()
        .filter(|e| matches!(e.body, EventBody::ItemFailed { .. }))
        .count();
    assert_eq!(failures, 12);
    for item in items(&store, job.id).await {
        let expected = match item.index % 5 {
            1 | 2 => 2,
            _ => 1,
        };
        assert_eq!(item.attempts, expected, "attempts of item {}", item.index);
    }
    let finished = go(
        &store,
        job.id,
        JobState::Running,
        JobState::Failed,
        vec![Effect::End],
    )
    .await;
    assert_eq!(finished.counts, end.counts);
    consistent(&store, job.id).await;
}

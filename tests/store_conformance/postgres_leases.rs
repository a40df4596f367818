//! What only the PostgreSQL store has: leases for several replicas
//! (multi-replica mode). Taking a job over moves the epoch on and puts its
//! running items back to pending; anything written under an old or
//! expired lease is refused; heartbeats renew only what is still held.

use crate::harness::{
    claim_of, consistent, create, events, failed, get, item, on_postgres_store, spec, write_of,
};
use jobvisor::{
    domain::{Effect, EventBody, JobState, Provenance},
    store::{
        Batch, BatchFence, Lease, Leases, Store, StoreError, TransitionWrite, WriteKind,
        leases::Peer, postgres::PgStore,
    },
};
use std::{sync::Arc, time::Duration};

const TTL: Duration = Duration::from_secs(30);

/// Replica `id`, as it registers itself.
fn replica(id: &str) -> jobvisor::domain::Runner {
    jobvisor::domain::Runner {
        server: id.into(),
        host: format!("host-{id}"),
        pid: 4242,
        since: chrono::Utc::now(),
    }
}

fn fence(owner: &str, job: jobvisor::domain::JobId, epoch: i64) -> BatchFence {
    BatchFence {
        owner: Arc::from(owner),
        epochs: vec![(job, epoch)],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_lease_is_taken_once_and_writes_under_an_old_one_are_refused() {
    on_postgres_store(|pg: Arc<PgStore>| async move {
        let store: Arc<dyn Store> = pg.clone();
        let job = create(&store, &spec(6)).await;
        pg.join(&replica("a"), TTL).await.unwrap();
        pg.join(&replica("b"), TTL).await.unwrap();

        let (a, _) = pg.take_over(job.id, "a", TTL).await.unwrap().expect("free");
        assert_eq!(a.epoch, 1);
        assert!(
            pg.take_over(job.id, "b", TTL).await.unwrap().is_none(),
            "b cannot take a valid lease of a"
        );
        assert_eq!(pg.owner(job.id).await.unwrap().as_deref(), Some("a"));
        // The runner GetJob shows: the holder, its process, since it took it.
        let runner = pg.runner(job.id).await.unwrap().expect("a runner");
        assert_eq!(
            (runner.server.as_str(), runner.host.as_str(), runner.pid),
            ("a", "host-a", 4242)
        );

        // a claims two items under its lease.
        let out = store
            .write_batch_fenced(
                &Batch {
                    writes: vec![],
                    claims: vec![claim_of(job.id, 2)],
                },
                &fence("a", job.id, a.epoch),
            )
            .await
            .unwrap();
        assert!(out.fenced.is_empty());
        let claimed = out.claimed[0].clone();
        assert_eq!(claimed.len(), 2);

        // a's lease expires (released here); b takes the job over: the
        // epoch moves on and a's items are pending again, attempt given back.
        pg.release("a", &[(job.id, a.epoch)]).await.unwrap();
        assert_eq!(pg.runner(job.id).await.unwrap(), None, "a released lease");
        let (b, taken) = pg
            .take_over(job.id, "b", TTL)
            .await
            .unwrap()
            .expect("released");
        assert_eq!(b.epoch, 2);
        assert_eq!(taken.counts.running, 0);
        let last = events(&store, job.id).await.pop().unwrap();
        assert_eq!(
            last.body,
            EventBody::OwnerChanged {
                owner: "b".into(),
                previous_owner: Some("a".into()),
                released_items: 2,
            }
        );

        // Whatever a still tries is refused: its results, its claims…
        let out = store
            .write_batch_fenced(
                &Batch {
                    writes: vec![write_of(
                        job.id,
                        claimed[0].index,
                        claimed[0].lease,
                        WriteKind::succeeded(),
                    )],
                    claims: vec![claim_of(job.id, 3)],
                },
                &fence("a", job.id, a.epoch),
            )
            .await
            .unwrap();
        assert_eq!(out.applied, vec![false]);
        assert!(out.claimed[0].is_empty());
        assert_eq!(out.fenced, vec![job.id]);
        // …its transitions and its releases.
        let finish = TransitionWrite {
            from: JobState::Running,
            to: JobState::Failed,
            effects: vec![Effect::ReleaseRunning, Effect::End],
            provenance: Provenance::system("zombie"),
            pause_mode: None,
            resume_at: None,
        };
        assert!(matches!(
            store.transition_fenced(job.id, &finish, &a).await,
            Err(StoreError::Fenced(id)) if id == job.id
        ));
        assert!(matches!(
            store.release_items_fenced(job.id, &a).await,
            Err(StoreError::Fenced(_))
        ));
        // A job the batch does not list a lease for is refused too.
        let out = store
            .write_batch_fenced(
                &Batch {
                    writes: vec![],
                    claims: vec![claim_of(job.id, 1)],
                },
                &BatchFence {
                    owner: Arc::from("b"),
                    epochs: vec![],
                },
            )
            .await
            .unwrap();
        assert!(out.claimed[0].is_empty());
        assert_eq!(out.fenced, vec![job.id]);

        // b's lease works.
        let out = store
            .write_batch_fenced(
                &Batch {
                    writes: vec![],
                    claims: vec![claim_of(job.id, 6)],
                },
                &fence("b", job.id, b.epoch),
            )
            .await
            .unwrap();
        assert_eq!(out.claimed[0].len(), 6);
        let job_now = consistent(&store, job.id).await;
        assert_eq!(job_now.counts.running, 6);
        assert_eq!(get(&store, job.id).await.state, JobState::Running);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_heartbeats_renew_what_is_held_and_orphans_are_found() {
    on_postgres_store(|pg: Arc<PgStore>| async move {
        let store: Arc<dyn Store> = pg.clone();
        let mine = create(&store, &spec(2)).await;
        let theirs = create(&store, &spec(2)).await;
        let nobodys = create(&store, &spec(2)).await;
        pg.join(&replica("a"), TTL).await.unwrap();
        pg.join(&replica("b"), TTL).await.unwrap();
        let (lease, _) = pg.take_over(mine.id, "a", TTL).await.unwrap().unwrap();
        pg.take_over(theirs.id, "b", TTL).await.unwrap().unwrap();

        let held = pg.heartbeat("a", TTL).await.unwrap();
        assert_eq!(held.len(), 1);
        assert_eq!((held[0].job, held[0].epoch), (mine.id, lease.epoch));
        assert_eq!(held[0].state, JobState::Running);

        // For a: its own lease when it is not running the job (after a
        // restart), and the job nobody owns; never b's.
        let orphans = pg.orphans("a", &[], 10).await.unwrap();
        let ids: Vec<_> = orphans.iter().map(|o| (o.job, o.mine)).collect();
        assert!(ids.contains(&(mine.id, true)), "{ids:?}");
        assert!(ids.contains(&(nobodys.id, false)), "{ids:?}");
        assert!(!ids.iter().any(|(j, _)| *j == theirs.id), "{ids:?}");
        let orphans = pg.orphans("a", &[mine.id], 10).await.unwrap();
        assert_eq!(
            orphans.iter().map(|o| o.job).collect::<Vec<_>>(),
            vec![nobodys.id]
        );

        let census = pg.census().await.unwrap();
        assert_eq!(census.live_jobs, 3);
        let loads: Vec<(String, u64)> = census
            .replicas
            .iter()
            .map(|r| (r.id.clone(), r.jobs))
            .collect();
        assert_eq!(loads, vec![("a".into(), 1), ("b".into(), 1)]);

        // A draining replica takes no new jobs; one that left holds nothing.
        pg.drain("b").await.unwrap();
        assert_eq!(pg.census().await.unwrap().replicas.len(), 1);
        pg.leave("b").await.unwrap();
        assert!(pg.owner(theirs.id).await.unwrap().is_none());
        assert!(pg.heartbeat("b", TTL).await.unwrap().is_empty());
        // An expired lease is not renewed: it must be taken over again.
        pg.release("a", &[(mine.id, lease.epoch)]).await.unwrap();
        assert!(pg.heartbeat("a", TTL).await.unwrap().is_empty());
        let (again, _) = pg.take_over(mine.id, "a", TTL).await.unwrap().unwrap();
        assert!(again.epoch > lease.epoch, "epochs only grow");
        assert_eq!(
            again,
            Lease {
                owner: Arc::from("a"),
                epoch: lease.epoch + 1
            }
        );
    })
    .await;
}

/// Remote workers across replicas: a replica advertises its address and
/// its workers' executors; the others see it as a peer only while it is
/// live, reachable and has workers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_replicas_that_lend_workers_are_listed_to_the_others() {
    on_postgres_store(|pg: Arc<PgStore>| async move {
        for id in ["a", "b", "c"] {
            pg.join(&replica(id), TTL).await.unwrap();
        }
        let ocr = ["ocr".to_string(), "asr".to_string()];
        pg.advertise("a", Some("10.0.0.1:50051"), &ocr)
            .await
            .unwrap();
        // No address: it cannot lend. No workers: nothing to lend.
        pg.advertise("b", None, &ocr).await.unwrap();
        pg.advertise("c", Some("10.0.0.3:50051"), &[])
            .await
            .unwrap();
        let peers = pg.peers("c").await.unwrap();
        assert_eq!(
            peers,
            vec![Peer {
                id: "a".into(),
                address: "10.0.0.1:50051".into(),
                executors: vec!["asr".into(), "ocr".into()],
            }]
        );
        assert!(pg.peers("a").await.unwrap().is_empty(), "never itself");
        // A heartbeat keeps what was advertised; a replica that left is no
        // peer.
        pg.heartbeat("a", TTL).await.unwrap();
        assert_eq!(pg.peers("b").await.unwrap().len(), 1);
        pg.leave("a").await.unwrap();
        assert!(pg.peers("b").await.unwrap().is_empty());
    })
    .await;
}

/// A batch in rounds (two writes for one item, and a claim that sees an
/// item the batch puts back) is fenced in each of its rounds: applied
/// whole under the job's lease, refused whole under an old one, the job
/// reported fenced once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_batch_in_rounds_is_fenced_in_every_round() {
    on_postgres_store(|pg: Arc<PgStore>| async move {
        let store: Arc<dyn Store> = pg.clone();
        let job = create(&store, &spec(4)).await;
        pg.join(&replica("a"), TTL).await.unwrap();
        let (a, _) = pg.take_over(job.id, "a", TTL).await.unwrap().unwrap();
        let fence_a = fence("a", job.id, a.epoch);
        let in_rounds = |lease: i64| Batch {
            writes: vec![
                write_of(job.id, 0, lease, WriteKind::Checkpoint(b"half".to_vec())),
                write_of(job.id, 0, lease, WriteKind::succeeded()),
                write_of(job.id, 1, lease, failed("again", false)),
            ],
            claims: vec![claim_of(job.id, 2)],
        };
        let out = store
            .write_batch_fenced(
                &Batch {
                    writes: vec![],
                    claims: vec![claim_of(job.id, 2)],
                },
                &fence_a,
            )
            .await
            .unwrap();
        let lease = out.claimed[0][0].lease;

        // A stale lease: nothing applies, nothing is claimed, in any round.
        let stale = fence("a", job.id, a.epoch + 1);
        let out = store
            .write_batch_fenced(&in_rounds(lease), &stale)
            .await
            .unwrap();
        assert_eq!(out.applied, vec![false, false, false]);
        assert!(out.claimed[0].is_empty());
        assert_eq!(out.fenced, vec![job.id], "reported once, not per round");
        assert_eq!(consistent(&store, job.id).await.counts.running, 2);

        // The lease: the writes apply in order, and the claim takes item 1
        // again (put back by this batch) before item 2.
        let out = store
            .write_batch_fenced(&in_rounds(lease), &fence_a)
            .await
            .unwrap();
        assert_eq!(out.applied, vec![true, true, true]);
        assert!(out.fenced.is_empty());
        let claimed: Vec<(u32, u32)> = out.claimed[0]
            .iter()
            .map(|c| (c.index, c.attempt))
            .collect();
        assert_eq!(claimed, vec![(1, 2), (2, 1)]);
        let after = consistent(&store, job.id).await;
        assert_eq!(
            (after.counts.succeeded, after.counts.running),
            (1, 2),
            "item 0 succeeded; items 1 and 2 running"
        );
        // The counters handed back are the job's after the last round.
        let pulse = out.pulses.iter().find(|p| p.job == job.id).unwrap();
        assert_eq!(pulse.counts, after.counts);
        assert_eq!(
            item(&store, job.id, 0).await.checkpoint,
            Some(b"half".to_vec())
        );
    })
    .await;
}

/// The fenced batch function takes the retries' delays as the plain one
/// does: a failure under a valid lease puts its item back to wait, and no
/// claim of the same batch or the next takes it before then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_retry_waits_under_a_lease_too() {
    on_postgres_store(|pg: Arc<PgStore>| async move {
        let store: Arc<dyn Store> = pg.clone();
        let job = create(&store, &spec(3)).await;
        pg.join(&replica("a"), TTL).await.unwrap();
        let (a, _) = pg.take_over(job.id, "a", TTL).await.unwrap().expect("free");
        let under_a = fence("a", job.id, a.epoch);
        let batch = |writes, claims| Batch { writes, claims };
        let out = store
            .write_batch_fenced(&batch(vec![], vec![claim_of(job.id, 1)]), &under_a)
            .await
            .unwrap();
        let first = out.claimed[0][0].clone();
        let later = WriteKind::Failed {
            error: "busy".into(),
            permanent: false,
            retry_after: Duration::from_secs(60),
        };
        let write = write_of(job.id, first.index, first.lease, later);
        let out = store
            .write_batch_fenced(&batch(vec![write], vec![claim_of(job.id, 5)]), &under_a)
            .await
            .unwrap();
        assert_eq!(out.applied, vec![true]);
        let taken: Vec<u32> = out.claimed[0].iter().map(|c| c.index).collect();
        assert_eq!(taken, vec![1, 2], "item 0 waits");
        let waiting = item(&store, job.id, 0).await;
        assert!(waiting.retry_at.is_some(), "item 0 says until when");
        let found = store.waiting_retries(job.id, 10).await.unwrap();
        assert_eq!(found.iter().map(|w| w.0).collect::<Vec<_>>(), vec![0]);
        let out = store
            .write_batch_fenced(&batch(vec![], vec![claim_of(job.id, 5)]), &under_a)
            .await
            .unwrap();
        assert!(out.claimed[0].is_empty(), "still waiting");

        // A server of the version before the delays calls the function with
        // the arguments it knew (no delays): its claims skip the waiting
        // item too.
        let rows: Vec<(i16, Option<i32>)> = sqlx::query_as(
            "SELECT tag, idx FROM jobvisor_write_batch_fenced($1, $2, $3, \
             $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
        )
        .bind("a")
        .bind(vec![job.id.0])
        .bind(vec![a.epoch])
        .bind(Vec::<i16>::new())
        .bind(Vec::<uuid::Uuid>::new())
        .bind(Vec::<i32>::new())
        .bind(Vec::<i64>::new())
        .bind(Vec::<Vec<u8>>::new())
        .bind(Vec::<String>::new())
        .bind(Vec::<bool>::new())
        .bind(vec![job.id.0])
        .bind(vec![5i32])
        .bind(vec![0i32])
        .bind(vec![42i64])
        .fetch_all(pg.pool())
        .await
        .expect("the earlier arguments still work");
        assert!(
            rows.iter().all(|(tag, _)| *tag != 1),
            "nothing claimed: {rows:?}"
        );
        assert!(
            rows.iter().all(|(tag, _)| *tag != 3),
            "not fenced: {rows:?}"
        );
        consistent(&store, job.id).await;
    })
    .await;
}

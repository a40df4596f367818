//! Listing: jobs filtered by state and by exact labels, newest first, in
//! keyset pages; items filtered by state, in index order, in pages.

use crate::harness::*;
use jobvisor::{
    domain::{
        Effect, ItemState, Job, JobId, JobState, PauseMode,
        page::{ItemCursor, JobCursor},
    },
    store::{ItemQuery, JobQuery, Store, WriteKind},
};
use std::{collections::BTreeMap, sync::Arc};

/// Newest first; ties on the creation time broken by id, descending.
fn newest_first(mut jobs: Vec<Job>) -> Vec<JobId> {
    jobs.sort_by_key(|j| std::cmp::Reverse((j.created_at, j.id)));
    jobs.into_iter().map(|j| j.id).collect()
}

fn ids(jobs: &[Job]) -> Vec<JobId> {
    jobs.iter().map(|j| j.id).collect()
}

fn query(states: &[JobState], pairs: &[(&str, &str)]) -> JobQuery {
    JobQuery {
        states: states.to_vec(),
        labels: labels(pairs),
        limit: 100,
        after: None,
        name: None,
    }
}

pub async fn list_jobs_filters_by_state_and_labels(store: Arc<dyn Store>) {
    let with = |pairs: &[(&str, &str)]| {
        let mut s = spec(2);
        s.labels = labels(pairs);
        s
    };
    let a = create(&store, &with(&[("team", "video"), ("env", "prod")])).await;
    let b = create(&store, &with(&[("team", "video"), ("env", "dev")])).await;
    let c = create(&store, &with(&[("team", "audio")])).await;
    let d = create(&store, &with(&[])).await;
    let e = create(
        &store,
        &with(&[("team", "video"), ("odd \"key\" '.$[0]", "v a l")]),
    )
    .await;

    go(
        &store,
        b.id,
        JobState::Running,
        JobState::Pausing,
        vec![Effect::OpenPause(PauseMode::Graceful)],
    )
    .await;
    go(
        &store,
        b.id,
        JobState::Pausing,
        JobState::Paused,
        vec![Effect::MarkPaused, Effect::ReleaseRunning],
    )
    .await;
    go(
        &store,
        c.id,
        JobState::Running,
        JobState::Cancelling,
        vec![Effect::Interrupt],
    )
    .await;
    go(
        &store,
        c.id,
        JobState::Cancelling,
        JobState::Cancelled,
        vec![Effect::CancelRemaining, Effect::End],
    )
    .await;

    let mut current = BTreeMap::new();
    for job in [&a, &b, &c, &d, &e] {
        current.insert(job.id, get(&store, job.id).await);
    }
    let expect =
        |keep: &[&Job]| newest_first(keep.iter().map(|j| current[&j.id].clone()).collect());
    let list = |q: JobQuery| {
        let store = store.clone();
        async move { store.list_jobs(&q).await.expect("list_jobs") }
    };

    let everything = list(JobQuery {
        limit: 100,
        ..JobQuery::default()
    })
    .await;
    assert_eq!(ids(&everything.rows), expect(&[&a, &b, &c, &d, &e]));
    assert!(everything.next.is_none());
    // Listed jobs are whole jobs, pause history included.
    for job in &everything.rows {
        assert_eq!(job, &current[&job.id]);
    }
    assert_eq!(current[&b.id].pauses.len(), 1);

    let cases: Vec<(JobQuery, Vec<&Job>)> = vec![
        (query(&[JobState::Running], &[]), vec![&a, &d, &e]),
        (
            query(&[JobState::Paused, JobState::Cancelled], &[]),
            vec![&b, &c],
        ),
        (query(&[JobState::Succeeded], &[]), vec![]),
        (query(&[], &[("team", "video")]), vec![&a, &b, &e]),
        (query(&[], &[("team", "video"), ("env", "prod")]), vec![&a]),
        (query(&[], &[("team", "vid")]), vec![]),
        (query(&[], &[("team", "VIDEO")]), vec![]),
        (query(&[], &[("env", "")]), vec![]),
        (query(&[], &[("team", "video"), ("absent", "")]), vec![]),
        (query(&[], &[("odd \"key\" '.$[0]", "v a l")]), vec![&e]),
        (query(&[JobState::Paused], &[("env", "prod")]), vec![]),
        (
            query(&[JobState::Paused, JobState::Running], &[("team", "video")]),
            vec![&a, &b, &e],
        ),
    ];
    for (q, keep) in cases {
        let described = format!("states {:?} labels {:?}", q.states, q.labels);
        let page = list(q).await;
        assert_eq!(ids(&page.rows), expect(&keep), "{described}");
        assert!(page.next.is_none(), "{described}");
    }

    // A label filter in pages smaller than its matches (PostgreSQL finds
    // such a page among the newest jobs first): the same jobs, whole, in
    // the same order, page after page.
    for states in [vec![], vec![JobState::Running, JobState::Paused]] {
        let mut q = query(&states, &[("team", "video")]);
        q.limit = 1;
        let mut seen = Vec::new();
        loop {
            let page = list(q.clone()).await;
            for job in &page.rows {
                assert_eq!(job, &current[&job.id]);
            }
            seen.extend(page.rows);
            match page.next {
                Some(next) => q.after = Some(next),
                None => break,
            }
        }
        assert_eq!(ids(&seen), expect(&[&a, &b, &e]), "states {states:?}");
    }
}

pub async fn list_jobs_pages_newest_first(store: Arc<dyn Store>) {
    let mut created = Vec::new();
    for n in 0..7 {
        let mut s = spec(1);
        s.labels = labels(&[("parity", if n % 2 == 0 { "even" } else { "odd" })]);
        created.push(create(&store, &s).await);
    }
    let expected = newest_first(created.clone());

    // Pages of 3: 3 + 3 + 1, each continuing exactly after the last.
    let mut q = JobQuery {
        limit: 3,
        ..JobQuery::default()
    };
    let mut seen = Vec::new();
    let mut sizes = Vec::new();
    loop {
        let page = store.list_jobs(&q).await.expect("page");
        sizes.push(page.rows.len());
        seen.extend(ids(&page.rows));
        if let Some(next) = page.next {
            let last = page.rows.last().expect("a page with a next has rows");
            assert_eq!(
                next,
                JobCursor {
                    created_at: last.created_at,
                    id: last.id
                }
            );
            q.after = Some(next);
        } else {
            break;
        }
    }
    assert_eq!(sizes, vec![3, 3, 1]);
    assert_eq!(seen, expected);

    // A page that ends exactly at the last job has no next.
    let whole = store
        .list_jobs(&JobQuery {
            limit: 7,
            ..JobQuery::default()
        })
        .await
        .expect("whole");
    assert_eq!(ids(&whole.rows), expected);
    assert!(whole.next.is_none());
    // A limit of 0 is read as 1.
    let one = store.list_jobs(&JobQuery::default()).await.expect("one");
    assert_eq!(ids(&one.rows), expected[..1].to_vec());
    assert!(one.next.is_some());

    // Filters hold across pages: 4 even jobs in pages of 2.
    let even = all_jobs(&store, query(&[], &[("parity", "even")])).await;
    let even_expected: Vec<JobId> = expected
        .iter()
        .copied()
        .filter(|id| {
            created
                .iter()
                .position(|j| j.id == *id)
                .is_some_and(|n| n % 2 == 0)
        })
        .collect();
    assert_eq!(ids(&even), even_expected);

    // After the oldest job: nothing.
    let oldest = created
        .iter()
        .find(|j| j.id == expected[6])
        .expect("oldest");
    let past = store
        .list_jobs(&JobQuery {
            limit: 10,
            after: Some(JobCursor {
                created_at: oldest.created_at,
                id: oldest.id,
            }),
            ..JobQuery::default()
        })
        .await
        .expect("past the end");
    assert!(past.rows.is_empty() && past.next.is_none());
}

pub async fn list_items_pages_filters_and_not_found(store: Arc<dyn Store>) {
    let job = create(&store, &spec(10)).await;
    let claimed = claim(&store, job.id, 3).await;
    let lease = claimed[0].lease;
    assert!(write(&store, job.id, 0, lease, WriteKind::succeeded()).await);
    assert!(write(&store, job.id, 1, lease, failed("bad input", true)).await);
    consistent(&store, job.id).await;

    let page_through = |states: Vec<ItemState>, limit: u32| {
        let store = store.clone();
        async move {
            let (mut indexes, mut sizes, mut after) = (Vec::new(), Vec::new(), None);
            loop {
                let page = store
                    .list_items(&ItemQuery {
                        job: job.id,
                        states: states.clone(),
                        limit,
                        after,
                    })
                    .await
                    .expect("list_items");
                sizes.push(page.rows.len());
                indexes.extend(page.rows.iter().map(|i| i.index));
                match page.next {
                    Some(next) => {
                        assert_eq!(next.after_index, page.rows.last().expect("rows").index);
                        after = Some(next);
                    }
                    None => return (indexes, sizes),
                }
            }
        }
    };
    assert_eq!(
        page_through(vec![], 4).await,
        ((0..10).collect(), vec![4, 4, 2])
    );
    assert_eq!(
        page_through(vec![ItemState::Pending], 3).await,
        ((3..10).collect(), vec![3, 3, 1])
    );
    assert_eq!(
        page_through(vec![ItemState::Succeeded, ItemState::Failed], 10).await,
        (vec![0, 1], vec![2])
    );
    assert_eq!(
        page_through(vec![ItemState::Running], 10).await,
        (vec![2], vec![1])
    );
    assert_eq!(
        page_through(vec![ItemState::Cancelled], 10).await,
        (vec![], vec![0])
    );
    // A limit of 0 is read as 1.
    assert_eq!(
        page_through(vec![ItemState::Running], 0).await,
        (vec![2], vec![1])
    );

    let tail = store
        .list_items(&ItemQuery {
            job: job.id,
            states: vec![],
            limit: 10,
            after: Some(ItemCursor { after_index: 7 }),
        })
        .await
        .expect("tail");
    assert_eq!(
        tail.rows.iter().map(|i| i.index).collect::<Vec<_>>(),
        vec![8, 9]
    );
    assert!(tail.next.is_none());

    let all = items(&store, job.id).await;
    assert_eq!(all[0].state, ItemState::Succeeded);
    assert_eq!(all[0].attempts, 1);
    assert!(all[0].updated_at.is_some());
    assert_eq!(all[1].state, ItemState::Failed);
    assert_eq!(all[1].last_error.as_deref(), Some("bad input"));
    assert_eq!(all[2].state, ItemState::Running);
    assert_eq!(all[3].updated_at, None);

    let unknown = JobId::new();
    is_not_found(
        store
            .list_items(&ItemQuery {
                job: unknown,
                states: vec![],
                limit: 10,
                after: None,
            })
            .await,
        unknown,
    );
}

//! Creating and reading jobs: every field round-trips, request ids make a
//! retried create harmless (also under concurrency), and the event log
//! appends and pages.

use crate::harness::*;
use chrono::{Duration, Utc};
use jobvisor::{
    domain::{EventBody, ItemCounts, ItemState, JobId, JobSpec, JobState},
    store::{JobQuery, Store, StoreError},
};
use std::sync::Arc;

pub async fn create_and_get_round_trip_every_field(store: Arc<dyn Store>) {
    let before = Utc::now() - Duration::seconds(5);
    let mut s = spec(0);
    s.name = "round trip ✓".into();
    s.executor = "exec".into();
    s.concurrency = 7;
    s.max_attempts = 5;
    s.params = labels(&[
        ("duration_ms", "10"),
        ("steps", "2"),
        ("quote", "it's \"x\""),
    ]);
    s.labels = labels(&[("team", "video"), ("env", "prod")]);
    s.request_id = Some("round-trip-1".into());
    s.items = vec![
        "a".into(),
        "".into(),
        "ünïcødé 🎉 'quoted' \"double\"".into(),
        "x".repeat(64 * 1024),
    ];
    let id = JobId::new();
    let created = store.create_job(id, &s).await.expect("create_job");
    let after = Utc::now() + Duration::seconds(5);
    assert!(created.created);
    let job = created.job;
    assert_eq!(job.id, id);
    assert_eq!(job.name, s.name);
    assert_eq!(job.executor, s.executor);
    assert_eq!(job.state, JobState::Running);
    assert_eq!(
        job.counts,
        ItemCounts {
            total: 4,
            ..ItemCounts::default()
        }
    );
    assert_eq!(job.concurrency, 7);
    assert_eq!(job.max_attempts, 5);
    assert_eq!(job.params, s.params);
    assert_eq!(job.labels, s.labels);
    assert_eq!(job.request_id.as_deref(), Some("round-trip-1"));
    assert!(job.created_at > before && job.created_at < after, "{job:?}");
    assert_eq!(job.started_at, Some(job.created_at));
    assert_eq!(job.updated_at, job.created_at);
    assert_eq!(job.ended_at, None);
    assert!(job.pauses.is_empty());
    assert_eq!(job.last_error, None);
    assert_eq!(job.last_seq, 1);
    // What create returned is exactly what a later read sees (timestamps
    // included, to the microsecond).
    assert_eq!(get(&store, id).await, job);

    let items = items(&store, id).await;
    assert_eq!(items.len(), 4);
    for (i, item) in items.iter().enumerate() {
        assert_eq!(item.index, i as u32);
        assert_eq!(item.payload, s.items[i]);
        assert_eq!(item.state, ItemState::Pending);
        assert_eq!(item.attempts, 0);
        assert_eq!(item.last_error, None);
        assert_eq!(item.checkpoint, None);
        assert_eq!(item.updated_at, None);
    }

    let log = events(&store, id).await;
    assert_eq!(log.len(), 1);
    assert_eq!(log[0].seq, 1);
    assert_eq!(log[0].at, job.created_at);
    assert_eq!(
        log[0].body,
        EventBody::StateChanged {
            from: None,
            to: JobState::Running,
            reason: Some("started".into()),
            requested_by: None,
            request_id: Some("round-trip-1".into()),
            pause_mode: None,
        }
    );

    // A job without request id, params or labels.
    let plain = create(&store, &spec(1)).await;
    assert_eq!(plain.request_id, None);
    assert!(plain.params.is_empty() && plain.labels.is_empty());
    assert_eq!(get(&store, plain.id).await, plain);

    let unknown = JobId::new();
    is_not_found(store.get_job(unknown).await, unknown);
}

pub async fn create_is_idempotent_by_request_id(store: Arc<dyn Store>) {
    let mut s = spec(3);
    s.request_id = Some("idem-1".into());
    let first = store.create_job(JobId::new(), &s).await.expect("create");
    assert!(first.created);

    // A retry carries a new server-assigned id: the first job comes back.
    let retry_id = JobId::new();
    let again = store.create_job(retry_id, &s).await.expect("retry");
    assert!(!again.created);
    assert_eq!(again.job, first.job);
    is_not_found(store.get_job(retry_id).await, retry_id);

    // The same key for a different request is refused, whatever differs.
    let mut other_items = s.clone();
    other_items.items.push("extra".into());
    let mut other_name = s.clone();
    other_name.name = "another".into();
    let mut other_labels = s.clone();
    other_labels.labels = labels(&[("k", "v")]);
    for different in [other_items, other_name, other_labels] {
        match store.create_job(JobId::new(), &different).await {
            Err(StoreError::RequestIdReused(key)) => assert_eq!(key, "idem-1"),
            other => panic!("expected RequestIdReused, got {other:?}"),
        }
    }

    // Without a key, the same request twice is two jobs.
    let plain = spec(3);
    let a = create(&store, &plain).await;
    let b = create(&store, &plain).await;
    assert_ne!(a.id, b.id);

    let all = all_jobs(&store, JobQuery::default()).await;
    assert_eq!(all.len(), 3);
    assert_eq!(consistent(&store, first.job.id).await.last_seq, 1);
}

/// A request id is unique within a scope: another scope's use of it is
/// neither found nor refused, and each scope retries to its own job.
pub async fn request_ids_are_unique_within_a_scope(store: Arc<dyn Store>) {
    let keyed = |scope: &str, team: &str| {
        let mut s = spec(2);
        s.request_id = Some("nightly".into());
        s.request_scope = scope.into();
        s.labels = labels(&[("team", team)]);
        s
    };
    let video = keyed(r#"{"team":"video"}"#, "video");
    let audio = keyed(r#"{"team":"audio"}"#, "audio");
    let unscoped = keyed("", "audio");
    let first = store.create_job(JobId::new(), &video).await.expect("video");
    let other = store.create_job(JobId::new(), &audio).await.expect("audio");
    let third = store
        .create_job(JobId::new(), &unscoped)
        .await
        .expect("unscoped");
    assert!(first.created && other.created && third.created);
    assert_ne!(first.job.id, other.job.id);
    assert_ne!(other.job.id, third.job.id);
    assert_eq!(other.job.request_id.as_deref(), Some("nightly"));
    for (spec, created) in [(&video, &first), (&audio, &other), (&unscoped, &third)] {
        let again = store.create_job(JobId::new(), spec).await.expect("retry");
        assert!(!again.created);
        assert_eq!(again.job.id, created.job.id);
    }
    // Within a scope, a different request with the key is still refused.
    let mut changed = audio.clone();
    changed.name = "another".into();
    match store.create_job(JobId::new(), &changed).await {
        Err(StoreError::RequestIdReused(key)) => assert_eq!(key, "nightly"),
        other => panic!("expected RequestIdReused, got {other:?}"),
    }
    assert_eq!(all_jobs(&store, JobQuery::default()).await.len(), 3);
}

pub async fn concurrent_creates_with_one_key_make_one_job(store: Arc<dyn Store>) {
    let mut s = spec(50);
    s.request_id = Some("race-1".into());
    let tasks: Vec<_> = (0..10)
        .map(|_| {
            let (store, s) = (store.clone(), s.clone());
            tokio::spawn(async move { store.create_job(JobId::new(), &s).await })
        })
        .collect();
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.expect("task").expect("every create succeeds"));
    }
    assert_eq!(results.iter().filter(|c| c.created).count(), 1);
    let id = results[0].job.id;
    assert!(results.iter().all(|c| c.job.id == id));
    let all = all_jobs(&store, JobQuery::default()).await;
    assert_eq!(all.len(), 1);
    let job = consistent(&store, id).await;
    assert_eq!(job.counts.total, 50);
    assert_eq!(job.last_seq, 1);
}

pub async fn events_append_and_page(store: Arc<dyn Store>) {
    let job = create(&store, &spec(2)).await;
    let restarted = |index| EventBody::WorkerRestarted {
        index,
        reason: format!("panic at {index}"),
        restarts_in_window: index + 1,
    };
    for n in 0..4u32 {
        let seq = store
            .append_event(job.id, &restarted(n))
            .await
            .expect("append_event");
        assert_eq!(seq, 2 + u64::from(n));
    }
    let job_after = consistent(&store, job.id).await;
    assert_eq!(job_after.last_seq, 5);
    // An event that changes no state changes nothing else either.
    assert_eq!(job_after.state, job.state);
    assert_eq!(job_after.counts, job.counts);

    let log = events(&store, job.id).await;
    assert_eq!(log[1].body, restarted(0));
    assert_eq!(log[4].body, restarted(3));
    assert!(log.windows(2).all(|w| w[0].at <= w[1].at));

    let page = store.events_after(job.id, 2, 2).await.expect("page");
    let seqs: Vec<u64> = page.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, vec![3, 4]);
    assert!(
        store
            .events_after(job.id, 5, 10)
            .await
            .expect("tail")
            .is_empty()
    );
    assert!(
        store
            .events_after(job.id, 0, 0)
            .await
            .expect("none")
            .is_empty()
    );
    // The log of an unknown job is empty (watchers poll it).
    assert!(
        store
            .events_after(JobId::new(), 0, 10)
            .await
            .expect("unknown")
            .is_empty()
    );
    let unknown = JobId::new();
    is_not_found(store.append_event(unknown, &restarted(0)).await, unknown);
}

pub async fn ping_answers(store: Arc<dyn Store>) {
    store.ping().await.expect("ping");
}

pub async fn an_exclusive_name_is_held_while_its_job_is_live(store: Arc<dyn Store>) {
    let exclusive = |name: &str| JobSpec {
        name: name.into(),
        exclusive: true,
        ..spec(2)
    };
    let first = create(&store, &exclusive("nightly")).await;
    assert!(first.exclusive);
    match store.create_job(JobId::new(), &exclusive("nightly")).await {
        Err(StoreError::NameTaken { name, job }) => {
            assert_eq!((name.as_str(), job), ("nightly", first.id));
        }
        other => panic!("expected the name taken, got {other:?}"),
    }
    // Jobs that do not ask for it may share the name; others keep theirs.
    let shared = create(
        &store,
        &JobSpec {
            name: "nightly".into(),
            ..spec(1)
        },
    )
    .await;
    assert!(!shared.exclusive);
    create(&store, &exclusive("weekly")).await;
    let by_name = store
        .list_jobs(&JobQuery {
            name: Some("nightly".into()),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(by_name.rows.len(), 2, "listed by name");
    // Ended, it frees the name.
    cancel(&store, first.id).await;
    let next = create(&store, &exclusive("nightly")).await;
    assert_ne!(next.id, first.id);
}

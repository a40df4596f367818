//! The newer controls: a job's policy, a pause that resumes by itself, a
//! job created paused, concurrency changes, and a succeeded item's result.

use crate::harness::*;
use jobvisor::{
    domain::{Effect, EventBody, JobPolicy, JobState, PauseMode, RateLimit, StartAs},
    store::{Store, StoreError, TransitionWrite, WriteKind},
};
use std::sync::Arc;

use Effect as E;
use JobState as S;

pub async fn a_policy_is_kept_with_the_job(store: Arc<dyn Store>) {
    let mut s = spec(2);
    s.policy = JobPolicy {
        timeout_ms: Some(90_000),
        pause_after_failures: Some(4),
        pause_on_failure_ratio: Some(0.25),
        failure_window: Some(40),
        retry_delay_ms: Some(2_500),
        retry_delay_max_ms: Some(60_000),
        rate_limit: Some(300),
        rate_period_ms: Some(60_000),
    };
    let job = create(&store, &s).await;
    assert_eq!(job.policy, s.policy);
    assert_eq!(get(&store, job.id).await.policy, s.policy);
    let plain = create(&store, &spec(1)).await;
    assert_eq!(plain.policy, JobPolicy::default());
}

pub async fn pauses_due_to_resume_are_found(store: Arc<dyn Store>) {
    let now = chrono::Utc::now();
    let later = create(&store, &spec(2)).await;
    let due = create(&store, &spec(2)).await;
    let plain = create(&store, &spec(2)).await;
    for (job, at) in [
        (later.id, Some(now + chrono::Duration::hours(1))),
        (due.id, Some(now - chrono::Duration::seconds(1))),
        (plain.id, None),
    ] {
        let paused = store
            .transition(
                job,
                &TransitionWrite {
                    from: S::Running,
                    to: S::Pausing,
                    effects: vec![E::OpenPause(PauseMode::Graceful)],
                    provenance: provenance("later", "ops", "r"),
                    pause_mode: Some(PauseMode::Graceful),
                    resume_at: at,
                },
            )
            .await
            .unwrap();
        let stored = paused.pauses[0].resume_at;
        match at {
            Some(t) => assert!(stored.is_some_and(|s| (s - t).num_milliseconds().abs() < 1)),
            None => assert_eq!(stored, None),
        }
    }
    assert_eq!(store.due_resumes(now).await.unwrap(), vec![due.id]);
    // Once resumed, it is no longer due.
    go(&store, due.id, S::Pausing, S::Running, vec![E::ClosePause]).await;
    assert!(store.due_resumes(now).await.unwrap().is_empty());
}

pub async fn concurrency_changes_are_recorded(store: Arc<dyn Store>) {
    let job = create(&store, &spec(3)).await;
    let changed = store
        .set_concurrency(job.id, 7, &provenance("", "ops", "c-1"))
        .await
        .unwrap();
    assert_eq!(changed.concurrency, 7);
    assert_eq!(changed.last_seq, job.last_seq + 1);
    let log = events(&store, job.id).await;
    assert_eq!(
        log.last().unwrap().body,
        EventBody::ConcurrencyChanged {
            from: 2,
            to: 7,
            requested_by: Some("ops".into()),
            request_id: Some("c-1".into()),
        }
    );
    consistent(&store, job.id).await;
    // Not once the job has ended.
    cancel(&store, job.id).await;
    match store
        .set_concurrency(job.id, 3, &provenance("", "", ""))
        .await
    {
        Err(StoreError::Conflict { current, .. }) => assert_eq!(current, S::Cancelled),
        other => panic!("expected a conflict, got {other:?}"),
    }
    assert_eq!(get(&store, job.id).await.concurrency, 7);
}

pub async fn a_succeeded_items_result_is_kept(store: Arc<dyn Store>) {
    let job = create(&store, &spec(2)).await;
    let c = claim(&store, job.id, 2).await;
    let done = WriteKind::Succeeded {
        result: Some("42 frames".into()),
        skip_reason: None,
        counters: Default::default(),
    };
    assert!(write(&store, job.id, 0, c[0].lease, done).await);
    assert!(write(&store, job.id, 1, c[1].lease, WriteKind::succeeded()).await);
    assert_eq!(
        item(&store, job.id, 0).await.result.as_deref(),
        Some("42 frames")
    );
    assert_eq!(item(&store, job.id, 1).await.result, None);
    consistent(&store, job.id).await;
}

pub async fn a_job_created_paused_waits_for_its_resume(store: Arc<dyn Store>) {
    let now = chrono::Utc::now();
    let at = now + chrono::Duration::hours(1);
    let mut scheduled = spec(3);
    scheduled.start = StartAs::Paused {
        resume_at: Some(at),
    };
    scheduled.request_id = Some("later".into());
    let mut held = spec(2);
    held.start = StartAs::Paused { resume_at: None };
    let job = create(&store, &scheduled).await;
    let other = create(&store, &held).await;

    assert_eq!(job.state, S::Paused);
    assert_eq!(job.counts.pending(), 3);
    assert_eq!(job.pauses.len(), 1);
    let pause = &job.pauses[0];
    assert_eq!(pause.mode, PauseMode::Graceful);
    assert_eq!(pause.reason.as_deref(), Some("started paused"));
    assert_eq!(pause.request_id.as_deref(), Some("later"));
    assert!(pause.paused_at.is_some() && pause.resumed_at.is_none());
    assert!(
        pause
            .resume_at
            .is_some_and(|t| (t - at).num_milliseconds().abs() < 1)
    );
    match &events(&store, job.id).await[..] {
        [first] => match &first.body {
            EventBody::StateChanged {
                from: None,
                to: S::Paused,
                pause_mode: Some(PauseMode::Graceful),
                ..
            } => {}
            other => panic!("the first event: {other:?}"),
        },
        all => panic!("one event expected: {all:?}"),
    }
    // Nothing is claimed while paused; the same request returns the job.
    assert!(claim(&store, job.id, 3).await.is_empty());
    let again = store
        .create_job(jobvisor::domain::JobId::new(), &scheduled)
        .await
        .unwrap();
    assert!(!again.created);
    assert_eq!(again.job.id, job.id);
    // Due at its time, not before; the one without a time never.
    assert!(store.due_resumes(now).await.unwrap().is_empty());
    let later = at + chrono::Duration::seconds(1);
    assert_eq!(store.due_resumes(later).await.unwrap(), vec![job.id]);

    let resumed = go(&store, job.id, S::Paused, S::Running, vec![E::ClosePause]).await;
    assert!(resumed.pauses[0].resumed_at.is_some());
    assert_eq!(claim(&store, job.id, 3).await.len(), 3);
    assert!(store.due_resumes(later).await.unwrap().is_empty());
    assert_eq!(get(&store, other.id).await.state, S::Paused);
    consistent(&store, job.id).await;
    consistent(&store, other.id).await;
}

pub async fn rate_limit_changes_are_recorded(store: Arc<dyn Store>) {
    let mut s = spec(3);
    s.policy.rate_limit = Some(10);
    s.policy.retry_delay_ms = Some(500);
    let job = create(&store, &s).await;
    let per_minute = RateLimit {
        limit: Some(300),
        period_ms: Some(60_000),
    };
    let changed = store
        .set_rate_limit(job.id, per_minute, &provenance("", "ops", "r-1"))
        .await
        .unwrap();
    assert_eq!(changed.policy.rate(), per_minute);
    // The rest of the policy is kept.
    assert_eq!(changed.policy.retry_delay_ms, Some(500));
    assert_eq!(changed.last_seq, job.last_seq + 1);
    assert_eq!(get(&store, job.id).await.policy, changed.policy);
    assert_eq!(
        events(&store, job.id).await.last().unwrap().body,
        EventBody::RateLimitChanged {
            from: RateLimit {
                limit: Some(10),
                period_ms: None
            },
            to: per_minute,
            requested_by: Some("ops".into()),
            request_id: Some("r-1".into()),
        }
    );
    // Removed.
    let unlimited = store
        .set_rate_limit(job.id, RateLimit::default(), &provenance("", "ops", "r-2"))
        .await
        .unwrap();
    assert_eq!(unlimited.policy.start_interval(), None);
    consistent(&store, job.id).await;
    // Not once the job has ended.
    cancel(&store, job.id).await;
    let before = get(&store, job.id).await;
    match store
        .set_rate_limit(job.id, per_minute, &provenance("", "ops", "r-3"))
        .await
    {
        Err(StoreError::Conflict { current, .. }) => assert_eq!(current, S::Cancelled),
        other => panic!("{other:?}"),
    }
    assert_eq!(get(&store, job.id).await, before);
}

//! A delay between an item's attempts (`retry_delay`, `retry_delay_max`):
//! the retry waits, the job's other items go on meanwhile, and the wait is
//! kept across a restart of the server.

use super::harness::{Options, SECS, StoreKind, TestApp, restart, spawn_app_with};
use jobvisor::pb::{self, JobState};
use std::time::Duration;

fn ms(n: u64) -> prost_types::Duration {
    prost_types::Duration {
        seconds: (n / 1000) as i64,
        nanos: ((n % 1000) * 1_000_000) as i32,
    }
}

type Time = chrono::DateTime<chrono::Utc>;

fn time(t: &Option<prost_types::Timestamp>) -> Option<Time> {
    t.as_ref()
        .map(|t| chrono::DateTime::from_timestamp(t.seconds, t.nanos as u32).expect("a valid time"))
}

/// Each failed attempt of `index`: its number, when it was committed and
/// the time its retry waits for, if any.
fn failures(events: &[pb::JobEvent], index: u32) -> Vec<(u32, Time, Option<Time>)> {
    events
        .iter()
        .filter_map(|e| match &e.kind {
            Some(pb::job_event::Kind::ItemFailed(f)) if f.index == index => Some((
                f.attempt,
                time(&e.time).expect("a stored event has its time"),
                time(&f.retry_time),
            )),
            _ => None,
        })
        .collect()
}

fn gap(a: chrono::DateTime<chrono::Utc>, b: chrono::DateTime<chrono::Utc>) -> Duration {
    (b - a).to_std().expect("attempts in order")
}

async fn app_on(store: StoreKind) -> TestApp {
    spawn_app_with(Options {
        store,
        ..Options::default()
    })
    .await
}

/// `items` sleep items of `each_ms`, `concurrency` at once; item `failing`
/// fails on each of `attempts` attempts, and its first retry waits
/// `delay_ms`.
fn failing_job(
    app: &TestApp,
    (items, concurrency, each_ms): (usize, u32, u64),
    failing: u32,
    attempts: u32,
    delay_ms: u64,
) -> pb::StartJobRequest {
    let pattern = format!("^item-{failing}$");
    let mut request = app.job(
        "sleep",
        items,
        concurrency,
        &[
            ("duration_ms", &each_ms.to_string()),
            ("fail_pattern", &pattern),
        ],
    );
    request.max_attempts = attempts;
    request.retry_delay = Some(ms(delay_ms));
    request
}

async fn item(app: &TestApp, id: &str, index: u32) -> pb::Item {
    app.items(id)
        .await
        .into_iter()
        .find(|i| i.index == index)
        .expect("the item is listed")
}

#[tokio::test]
async fn a_retry_waits_for_its_delay_while_the_other_items_go_on() {
    a_retry_waits_for_its_delay_while_the_other_items_go_on_on(StoreKind::Postgres).await;
}

pub async fn a_retry_waits_for_its_delay_while_the_other_items_go_on_on(store: StoreKind) {
    let app = app_on(store).await;
    // Item 5 fails on every attempt; 60 items of 20 ms at 4 at once take
    // about 0.3 s, less than item 5's first wait.
    let mut request = failing_job(&app, (60, 4, 20), 5, 3, 800);
    request.retry_delay_max = Some(ms(1000));
    let job = app.start(request).await;
    let policy = job.policy.expect("the job's policy");
    assert_eq!(policy.retry_delay, Some(ms(800)));
    assert_eq!(policy.retry_delay_max, Some(ms(1000)));
    let events = app.watch_all(&job.id, 0, SECS(30)).await;
    let done = app.get(&job.id).await;
    assert_eq!(done.state, JobState::Failed as i32);
    assert_eq!(done.counts.unwrap().failed, 1);
    let attempts = failures(&events, 5);
    assert_eq!(
        attempts.iter().map(|a| a.0).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    assert_eq!(attempts[2].2, None, "the last attempt is not retried");
    // The other items went on while item 5 waited for its retry: they all
    // succeeded, and some between its first failure and its second. (How
    // many depends on the machine's speed, not on the engine: a moment
    // when all 59 are done and item 5 still waits need not come on a
    // loaded machine, where 59 items may take longer than its three
    // attempts.)
    let items = app.items(&job.id).await;
    let ended: Vec<Time> = items
        .iter()
        .filter(|i| i.index != 5)
        .inspect(|i| assert_eq!(i.state, pb::ItemState::Succeeded as i32, "{i:?}"))
        .map(|i| time(&i.update_time).expect("an ended item's time"))
        .collect();
    assert_eq!(ended.len(), 59);
    assert!(
        ended
            .iter()
            .any(|t| *t > attempts[0].1 && *t < attempts[1].1),
        "no other item ended while item 5 waited for its retry: {attempts:?}, {ended:?}"
    );
    // 0.8 s, then 1.6 capped at 1 s; each lengthened by up to a fifth.
    for (k, wait) in [(0, 800), (1, 1000)] {
        let promised = gap(attempts[k].1, attempts[k].2.expect("the retry's time"));
        assert!(
            promised >= Duration::from_millis(wait)
                && promised <= Duration::from_millis(wait * 6 / 5 + 5),
            "attempt {} promised a retry {promised:?} after it, which waits {wait} ms",
            k + 1
        );
        let took = gap(attempts[k].1, attempts[k + 1].1);
        assert!(
            took >= Duration::from_millis(wait)
                && took < Duration::from_millis(wait * 6 / 5 + 3000),
            "attempt {} failed {took:?} after attempt {}, which waits {wait} ms",
            k + 2,
            k + 1
        );
    }
    app.stop().await;
}

#[tokio::test]
async fn a_waiting_retry_keeps_its_delay_across_a_restart() {
    a_waiting_retry_keeps_its_delay_across_a_restart_on(StoreKind::Postgres).await;
}

pub async fn a_waiting_retry_keeps_its_delay_across_a_restart_on(store: StoreKind) {
    let app = app_on(store).await;
    let job = app.start(failing_job(&app, (3, 1, 10), 1, 2, 3000)).await;
    app.eventually("items 0 and 2 done, item 1 waiting", SECS(20), || async {
        app.get(&job.id).await.counts.unwrap().succeeded == 2
    })
    .await;
    // A new server on the same database knows nothing of the wait but
    // what is stored.
    let second = restart(app).await;
    let done = second.wait_for(&job.id, JobState::Failed, SECS(30)).await;
    assert_eq!(done.counts.unwrap().failed, 1);
    let events = second.watch_all(&job.id, 0, SECS(10)).await;
    let attempts = failures(&events, 1);
    assert_eq!(attempts.len(), 2, "two attempts of item 1: {attempts:?}");
    let took = gap(attempts[0].1, attempts[1].1);
    assert!(
        took >= Duration::from_millis(3000) && took < Duration::from_millis(3600 + 3000),
        "the retry came {took:?} after the failure, which waits 3 s"
    );
    second.stop().await;
}

#[tokio::test]
async fn a_waiting_retry_comes_in_its_time_after_a_restart_not_at_the_end() {
    a_waiting_retry_comes_in_its_time_after_a_restart_not_at_the_end_on(StoreKind::Postgres).await;
}

pub async fn a_waiting_retry_comes_in_its_time_after_a_restart_not_at_the_end_on(store: StoreKind) {
    let app = app_on(store).await;
    // 100 items of 40 ms one at a time: about 4 s; item 1 fails, then
    // waits 1 s.
    let job = app.start(failing_job(&app, (100, 1, 40), 1, 2, 1000)).await;
    app.eventually("item 1 failed once", SECS(20), || async {
        item(&app, &job.id, 1).await.attempts == 1
            && app.get(&job.id).await.counts.unwrap().succeeded >= 1
    })
    .await;
    // The new server's supervisor finds the wait in the store: its claims
    // go back to item 1 when the wait ends, not once the other items are
    // done.
    let second = restart(app).await;
    let done = second.wait_for(&job.id, JobState::Failed, SECS(30)).await;
    let events = second.watch_all(&job.id, 0, SECS(10)).await;
    let attempts = failures(&events, 1);
    assert_eq!(attempts.len(), 2, "two attempts of item 1: {attempts:?}");
    let end = time(&done.end_time).expect("the job ended");
    let took = gap(attempts[0].1, attempts[1].1);
    assert!(
        took >= Duration::from_millis(1000),
        "retried after {took:?}"
    );
    assert!(
        gap(attempts[1].1, end) >= Duration::from_secs(1),
        "the retry came {:?} before the end of the job, {took:?} after the failure",
        gap(attempts[1].1, end)
    );
    second.stop().await;
}

/// A pause does not lose a waiting retry: paused past its time, the item
/// is claimed as soon as the job resumes; a cancel ends it with the rest.
#[tokio::test]
async fn a_retry_that_waits_through_a_pause_runs_after_the_resume() {
    let app = app_on(StoreKind::Postgres).await;
    // Items 0 and 2 succeed, item 1 fails once and waits 500 ms (its
    // second attempt fails for good).
    let job = app.start(failing_job(&app, (3, 1, 10), 1, 2, 500)).await;
    app.eventually("item 1 waiting", SECS(20), || async {
        let waiting = item(&app, &job.id, 1).await;
        waiting.attempts == 1 && waiting.state == pb::ItemState::Pending as i32
    })
    .await;
    app.pause(&job.id, pb::PauseMode::Graceful).await.unwrap();
    app.wait_for(&job.id, JobState::Paused, SECS(10)).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let paused = item(&app, &job.id, 1).await;
    assert_eq!(
        (paused.state, paused.attempts),
        (pb::ItemState::Pending as i32, 1),
        "nothing runs while the job is paused"
    );
    let resumed_at = chrono::Utc::now();
    app.resume(&job.id).await.unwrap();
    let done = app.wait_for(&job.id, JobState::Failed, SECS(10)).await;
    assert_eq!(done.counts.unwrap().succeeded, 2);
    let events = app.watch_all(&job.id, 0, SECS(10)).await;
    let attempts = failures(&events, 1);
    assert_eq!(attempts.len(), 2, "{attempts:?}");
    assert!(
        gap(resumed_at, attempts[1].1) < Duration::from_secs(2),
        "the retry ran {:?} after the resume",
        gap(resumed_at, attempts[1].1)
    );

    // Cancelled while it waits: the waiting item ends CANCELLED.
    let job = app.start(failing_job(&app, (3, 1, 10), 1, 2, 60_000)).await;
    app.eventually("item 1 waiting a minute", SECS(20), || async {
        let waiting = item(&app, &job.id, 1).await;
        waiting.attempts == 1 && app.get(&job.id).await.counts.unwrap().succeeded == 2
    })
    .await;
    app.cancel(&job.id).await.unwrap();
    let cancelled = app.wait_for(&job.id, JobState::Cancelled, SECS(10)).await;
    assert_eq!(cancelled.counts.unwrap().cancelled, 1);
    app.stop().await;
}

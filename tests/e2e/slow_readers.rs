//! WatchJob streams whose clients do not read, on a job with a long
//! history of large events: the server's control calls and readiness are
//! not held up by them, a stream whose client stopped reading ends with
//! RESOURCE_EXHAUSTED (and the client resumes from its last sequence),
//! and the streams open at once are capped per caller and in total.

use super::harness::{Options, TestApp, connect, reason, spawn_app_with, stored};
use jobvisor::pb::{self, job_service_client::JobServiceClient};
use std::time::Duration;
use tonic::{Code, Streaming, transport::Channel};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

/// A running job (its one item waits at the gate) with `events` stored
/// item failures of `bytes` of error text each after its own events.
/// Returns its id and its last sequence.
async fn long_history(app: &TestApp, events: i32, bytes: i32) -> (String, u64) {
    let job = app.start(app.job("gate", 1, 1, &[])).await;
    app.wait_for(&job.id, pb::JobState::Running, Duration::from_secs(10))
        .await;
    let mut tx = app.pg().begin().await.unwrap();
    let (from,): (i64,) =
        sqlx::query_as("SELECT last_seq FROM jobs WHERE id = $1::uuid FOR UPDATE")
            .bind(&job.id)
            .fetch_one(&mut *tx)
            .await
            .unwrap();
    sqlx::query(
        "INSERT INTO job_events (job_id, seq, at, kind, body) \
         SELECT $1::uuid, $2 + g, now(), 'item_failed', jsonb_build_object( \
             'type', 'item_failed', 'index', 0, 'attempt', g, \
             'error', repeat('e', $4), 'will_retry', true) \
         FROM generate_series(1, $3) AS g",
    )
    .bind(&job.id)
    .bind(from)
    .bind(events)
    .bind(bytes)
    .execute(&mut *tx)
    .await
    .unwrap();
    let (last,): (i64,) = sqlx::query_as(
        "UPDATE jobs SET last_seq = last_seq + $2 WHERE id = $1::uuid RETURNING last_seq",
    )
    .bind(&job.id)
    .bind(i64::from(events))
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();
    (job.id, last as u64)
}

async fn watch(
    client: &mut JobServiceClient<Channel>,
    job: &str,
    from: u64,
) -> Result<Streaming<pb::JobEvent>, tonic::Status> {
    client
        .watch_job(pb::WatchJobRequest {
            job_id: job.into(),
            from_sequence: from,
            window: None,
        })
        .await
        .map(tonic::Response::into_inner)
}

/// The stored events' sequences a stream delivers until it has `last` or
/// ends, and how it ended (`None`: it got to `last`).
async fn read_until(
    stream: &mut Streaming<pb::JobEvent>,
    last: u64,
) -> (Vec<u64>, Option<tonic::Status>) {
    let mut seqs = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(30), stream.message()).await {
            Err(_) => panic!("the stream stalled after {:?}", seqs.last()),
            Ok(Err(status)) => return (seqs, Some(status)),
            Ok(Ok(None)) => panic!("the stream ended without a status after {:?}", seqs.last()),
            Ok(Ok(Some(event))) => {
                // The snapshot and progress messages carry no stored event.
                if !stored(std::slice::from_ref(&event)).is_empty() {
                    seqs.push(event.sequence);
                }
                if seqs.last() == Some(&last) {
                    return (seqs, None);
                }
            }
        }
    }
}

fn consecutive(seqs: &[u64], from: u64) -> bool {
    seqs.iter().zip(from + 1..).all(|(got, want)| *got == want)
}

#[tokio::test]
async fn streams_that_never_read_leave_control_calls_and_readiness_alone() {
    let app = spawn_app_with(Options {
        db_connections: 4,
        acquire_timeout: Duration::from_secs(2),
        ..Options::default()
    })
    .await;
    let (job, _) = long_history(&app, 2000, 8000).await;
    let mut control = JobServiceClient::new(connect(app.addr).await);
    let mut health = HealthClient::new(connect(app.addr).await);

    // 200 streams from the start of the history over 5 connections, held
    // and never read, opened all at once while the control calls go on.
    let mut clients = Vec::new();
    for _ in 0..5 {
        clients.push(JobServiceClient::new(connect(app.addr).await));
    }
    let opening = futures::future::join_all((0..200).map(|i| {
        let mut client = clients[i % clients.len()].clone();
        let job = job.clone();
        async move { watch(&mut client, &job, 0).await.expect("WatchJob") }
    }));
    let probing = async {
        let mut problems = Vec::new();
        for _ in 0..60 {
            let mut get = tonic::Request::new(pb::GetJobRequest {
                job_id: job.clone(),
            });
            get.set_timeout(Duration::from_secs(1));
            if let Err(status) = control.get_job(get).await {
                problems.push(format!("GetJob: {:?} {}", status.code(), status.message()));
            }
            let ready = health
                .check(HealthCheckRequest {
                    service: String::new(),
                })
                .await
                .map(|r| r.into_inner().status);
            if !matches!(ready, Ok(1)) {
                problems.push(format!("readiness: {ready:?}"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        problems
    };
    let (held, problems) = tokio::join!(opening, probing);
    assert!(
        problems.is_empty(),
        "with 200 streams not reading: {problems:#?}"
    );
    assert_eq!(held.len(), 200);
}

#[tokio::test]
async fn a_stream_whose_client_stops_reading_ends_resource_exhausted_and_resumes() {
    let app = spawn_app_with(Options {
        watch_stall: Duration::from_secs(1),
        ..Options::default()
    })
    .await;
    let (job, last) = long_history(&app, 2000, 8000).await;
    let mut client = app.client.clone();

    // A client that reads keeps its stream, page after page.
    let mut reading = watch(&mut client, &job, 0).await.unwrap();
    let (seqs, ended) = read_until(&mut reading, last).await;
    assert!(
        ended.is_none(),
        "a reading client's stream ended: {ended:?}"
    );
    assert!(consecutive(&seqs, 0), "gaps or repeats");

    // One that stops reading falls behind: once it reads again it gets
    // what was sent, then RESOURCE_EXHAUSTED naming where to resume.
    let mut stopped = watch(&mut client, &job, 0).await.unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (seqs, ended) = read_until(&mut stopped, last).await;
    let status = ended.expect("the stream of a client that stopped reading went on");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert_eq!(reason(&status), "WATCH_LAGGING");
    assert!(consecutive(&seqs, 0), "gaps or repeats");
    let sent = seqs.last().copied().unwrap_or(0);
    assert!(sent < last, "it had everything");
    assert!(
        status.message().contains(&format!("from_sequence {sent}"))
            && status.message().contains("--watch-stall-timeout"),
        "{}",
        status.message()
    );

    // Watching again from there brings the rest, without a gap.
    let mut again = watch(&mut client, &job, sent).await.unwrap();
    let (rest, ended) = read_until(&mut again, last).await;
    assert!(ended.is_none(), "{ended:?}");
    assert!(consecutive(&rest, sent), "gaps or repeats after {sent}");
}

#[tokio::test]
async fn streams_over_the_caps_are_refused_with_resource_exhausted() {
    let app = spawn_app_with(Options {
        max_watch_streams: 5,
        max_watch_streams_per_caller: 3,
        ..Options::default()
    })
    .await;
    let (job, _) = long_history(&app, 10, 100).await;
    let mut client = app.client.clone();
    let mut open = Vec::new();
    for _ in 0..3 {
        open.push(watch(&mut client, &job, 0).await.unwrap());
    }
    // This test's calls all come from one address: one caller.
    let refused = watch(&mut client, &job, 0).await.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused.message().contains("--max-watch-streams-per-caller"),
        "{}",
        refused.message()
    );
    // A closed stream gives its place back.
    open.pop();
    app.eventually("a place freed", Duration::from_secs(10), || {
        let (mut client, job) = (client.clone(), job.clone());
        async move {
            match watch(&mut client, &job, 0).await {
                Ok(stream) => {
                    drop(stream);
                    true
                }
                Err(_) => false,
            }
        }
    })
    .await;
}

#[tokio::test]
async fn streams_over_the_servers_cap_are_refused_with_resource_exhausted() {
    let app = spawn_app_with(Options {
        max_watch_streams: 2,
        ..Options::default()
    })
    .await;
    let (job, _) = long_history(&app, 10, 100).await;
    let mut client = app.client.clone();
    let _open = [
        watch(&mut client, &job, 0).await.unwrap(),
        watch(&mut client, &job, 0).await.unwrap(),
    ];
    let refused = watch(&mut client, &job, 0).await.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused.message().contains("(--max-watch-streams)"),
        "{}",
        refused.message()
    );
    // Other calls are not affected.
    app.get(&job).await;
}

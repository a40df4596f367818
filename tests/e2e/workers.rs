//! WorkerService, driven message by message through the generated client:
//! what a worker in any language sees. The server's remote executor
//! `remote` (the harness's default) with a lease of 1 s and an interrupt
//! grace of 2 s. The library-level and process-level tests (SIGKILLed
//! workers, `jobvisor worker`, the Python library) are elsewhere; these pin
//! the protocol itself: flow control, fencing, interrupts, leases, resumed
//! sessions, refusals and auth.

use super::harness::*;
use jobvisor::{
    api::{
        auth::{Permission, Tokens, new_token},
        guard::GuardConfig,
    },
    pb::{
        self, work_request::Kind as In, work_response::Kind as Out,
        worker_service_client::WorkerServiceClient,
    },
};
use std::{collections::BTreeMap, sync::Arc, time::Duration};
use tokio::sync::mpsc;
use tonic::Code;

/// One worker session, by hand.
struct RawWorker {
    tx: mpsc::UnboundedSender<pb::WorkRequest>,
    rx: tonic::Streaming<pb::WorkResponse>,
    welcome: pb::WorkerWelcome,
    /// Items of an assignments message not yet taken by `assignment`.
    assigned: std::collections::VecDeque<pb::Assignment>,
}

fn hello(slots: u32) -> pb::WorkerHello {
    pb::WorkerHello {
        worker_name: "test-worker".into(),
        executors: vec!["remote".into()],
        slots,
        protocol_version: 1,
        build_id: "test".into(),
        ..Default::default()
    }
}

/// Opens a stream whose first message is `first`; the server's answer
/// (its first message, or the error).
async fn open(
    app: &TestApp,
    first: In,
    token: Option<&str>,
) -> Result<
    (
        mpsc::UnboundedSender<pb::WorkRequest>,
        tonic::Streaming<pb::WorkResponse>,
        pb::WorkResponse,
    ),
    tonic::Status,
> {
    let channel = connect(app.addr).await;
    let mut client = WorkerServiceClient::new(channel);
    let (tx, rx) = mpsc::unbounded_channel();
    tx.send(pb::WorkRequest { kind: Some(first) }).unwrap();
    let outbound =
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) });
    let mut request = tonic::Request::new(outbound);
    if let Some(token) = token {
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    let mut stream = client.work(request).await?.into_inner();
    let first = stream
        .message()
        .await?
        .ok_or_else(|| tonic::Status::internal("the stream ended at once"))?;
    Ok((tx, stream, first))
}

impl RawWorker {
    async fn connect(app: &TestApp, hello: pb::WorkerHello) -> RawWorker {
        RawWorker::try_connect(app, hello, None)
            .await
            .expect("hello")
    }

    async fn try_connect(
        app: &TestApp,
        hello: pb::WorkerHello,
        token: Option<&str>,
    ) -> Result<RawWorker, tonic::Status> {
        let (tx, rx, first) = open(app, In::Hello(hello), token).await?;
        let Some(Out::Welcome(welcome)) = first.kind else {
            panic!("the first answer is not a welcome: {first:?}");
        };
        // Pings keep the session alive (the lease is 1 s) until the
        // worker is dropped.
        let pinger = tx.downgrade();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(250)).await;
                let Some(tx) = pinger.upgrade() else { return };
                let ping = pb::WorkRequest {
                    kind: Some(In::Ping(pb::WorkerPing {})),
                };
                if tx.send(ping).is_err() {
                    return;
                }
            }
        });
        Ok(RawWorker {
            tx,
            rx,
            welcome,
            assigned: Default::default(),
        })
    }

    fn send(&self, kind: In) {
        self.tx.send(pb::WorkRequest { kind: Some(kind) }).unwrap();
    }

    /// The next message that is not a ping.
    async fn next(&mut self) -> Out {
        loop {
            let msg = tokio::time::timeout(Duration::from_secs(10), self.rx.message())
                .await
                .expect("a message within 10 s")
                .expect("the stream is fine")
                .expect("the stream is open");
            match msg.kind {
                Some(Out::Ping(_)) => continue,
                Some(kind) => return kind,
                None => panic!("a message without a kind"),
            }
        }
    }

    /// Nothing but pings for `within` (the worker keeps the session alive).
    async fn quiet(&mut self, within: Duration) {
        let until = tokio::time::Instant::now() + within;
        loop {
            self.send(In::Ping(pb::WorkerPing {}));
            let left = until.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return;
            }
            match tokio::time::timeout(left.min(Duration::from_millis(200)), self.rx.message())
                .await
            {
                Err(_) => {}
                Ok(Ok(Some(pb::WorkResponse {
                    kind: Some(Out::Ping(_)),
                }))) => {}
                Ok(other) => panic!("expected nothing, got {other:?}"),
            }
        }
    }

    /// The next item assigned (assignments ready together come in one
    /// message).
    async fn assignment(&mut self) -> pb::Assignment {
        if let Some(item) = self.assigned.pop_front() {
            return item;
        }
        match self.next().await {
            Out::Assignments(batch) => {
                self.assigned.extend(batch.items);
                self.assigned
                    .pop_front()
                    .expect("an assignments message holds items")
            }
            other => panic!("expected an assignment, got {other:?}"),
        }
    }

    async fn checkpoint(&mut self, token: u64, id: u64, data: &[u8]) {
        self.send(In::Checkpoint(pb::WorkerCheckpoint {
            token,
            checkpoint_id: id,
            data: data.to_vec(),
        }));
        match self.next().await {
            Out::CheckpointSaved(saved) => {
                assert_eq!((saved.token, saved.checkpoint_id), (token, id));
            }
            other => panic!("expected the checkpoint saved, got {other:?}"),
        }
    }

    fn succeed(&self, token: u64, result: &str) {
        self.send(In::Succeeded(pb::WorkerSucceeded {
            token,
            result: result.into(),
            ..Default::default()
        }));
        self.send(In::Credit(pb::WorkerCredit { slots: 1 }));
    }
}

fn remote_job(app: &TestApp, items: usize, concurrency: u32) -> pb::StartJobRequest {
    app.job("remote", items, concurrency, &[("model", "small")])
}

/// A token: its name, permissions and scope labels.
type TokenSpec<'a> = (&'a str, &'a [Permission], &'a [(&'a str, &'a str)]);

const WITHIN: Duration = Duration::from_secs(10);

#[tokio::test]
async fn a_worker_runs_every_item_with_checkpoints_results_and_credits() {
    let app = spawn_app().await;
    let mut worker = RawWorker::connect(&app, hello(1)).await;
    assert_eq!(worker.welcome.protocol_version, 1);
    assert_eq!(worker.welcome.lease_time.unwrap().seconds, 1);
    let job = app.start(remote_job(&app, 3, 2)).await;
    for expected in 0..3 {
        let a = worker.assignment().await;
        assert_eq!((a.index, a.attempt), (expected, 1));
        assert_eq!(a.job_id, job.id);
        assert_eq!(a.payload, format!("item-{expected}"));
        assert_eq!(a.params.get("model").map(String::as_str), Some("small"));
        assert_eq!(a.executor, "remote");
        assert_eq!(a.checkpoint, None);
        worker.checkpoint(a.token, 1, b"half").await;
        worker.send(In::Progress(pb::WorkerProgress {
            token: a.token,
            fraction: 0.5,
        }));
        worker.succeed(a.token, &format!("done-{expected}"));
    }
    app.wait_for(&job.id, pb::JobState::Succeeded, WITHIN).await;
    let items = app.items(&job.id).await;
    for item in &items {
        assert_eq!(item.result, format!("done-{}", item.index));
        assert_eq!(item.attempts, 1);
    }
    app.stop().await;
}

/// A batch of worker messages: each counts as if sent alone.
fn batch(messages: Vec<In>) -> In {
    In::Batch(pb::WorkerBatch {
        messages: messages
            .into_iter()
            .map(|kind| pb::WorkRequest { kind: Some(kind) })
            .collect(),
    })
}

fn success(token: u64, result: &str) -> In {
    In::Succeeded(pb::WorkerSucceeded {
        token,
        result: result.into(),
        ..Default::default()
    })
}

#[tokio::test]
async fn a_batch_s_messages_count_one_by_one_and_a_bad_one_is_refused_alone() {
    let app = spawn_app().await;
    let mut worker = RawWorker::connect(&app, hello(2)).await;
    assert!(worker.welcome.batches, "the welcome says batches are taken");
    let job = app.start(remote_job(&app, 4, 2)).await;
    let (a, b) = (worker.assignment().await, worker.assignment().await);
    // Two outcomes, two messages that have no place in a batch, and the
    // credit for both slots, in one message.
    worker.send(batch(vec![
        success(a.token, &format!("done-{}", a.index)),
        In::Hello(hello(2)),
        success(b.token, &format!("done-{}", b.index)),
        batch(vec![In::Ping(pb::WorkerPing {})]),
        In::Credit(pb::WorkerCredit { slots: 2 }),
    ]));
    let mut refused = Vec::new();
    let mut next = Vec::new();
    while next.len() < 2 {
        match worker.next().await {
            Out::Refused(r) => refused.push((r.reason, r.message)),
            Out::Assignments(list) => next.extend(list.items),
            other => panic!("expected refusals and assignments, got {other:?}"),
        }
    }
    assert_eq!(refused.len(), 2, "{refused:?}");
    assert!(
        refused.iter().all(|(reason, _)| reason == "UNEXPECTED"),
        "{refused:?}"
    );
    assert!(refused[0].1.contains("hello"), "{refused:?}");
    assert!(
        refused[1].1.contains("a batch inside a batch"),
        "{refused:?}"
    );
    worker.send(batch(
        next.iter()
            .map(|i| success(i.token, &format!("done-{}", i.index)))
            .chain([In::Credit(pb::WorkerCredit { slots: 2 })])
            .collect(),
    ));
    app.wait_for(&job.id, pb::JobState::Succeeded, WITHIN).await;
    for item in app.items(&job.id).await {
        assert_eq!(item.result, format!("done-{}", item.index));
        assert_eq!(item.attempts, 1);
    }
    app.stop().await;
}

#[tokio::test]
async fn a_job_waits_visibly_until_a_worker_connects_and_claims_nothing_before() {
    let app = spawn_app().await;
    let job = app.start(remote_job(&app, 2, 2)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let waiting = app.get(&job.id).await;
    assert_eq!(
        waiting.waiting_for, "waiting for a worker for executor \"remote\"",
        "{waiting:?}"
    );
    assert_eq!(waiting.counts.unwrap().running, 0, "nothing claimed");
    let mut watch = app.open_watch(&job.id, 0).await;
    let first = watch.message().await.unwrap().unwrap();
    let Some(pb::job_event::Kind::Snapshot(snapshot)) = first.kind else {
        panic!("a watch starts with a snapshot: {first:?}");
    };
    assert_eq!(
        snapshot.waiting_for, waiting.waiting_for,
        "WatchJob says so too"
    );
    let listed = app
        .client
        .clone()
        .list_jobs(pb::ListJobsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        listed.jobs[0].waiting_for, waiting.waiting_for,
        "and ListJobs"
    );
    let mut worker = RawWorker::connect(&app, hello(2)).await;
    let first = worker.assignment().await;
    let second = worker.assignment().await;
    assert_eq!(app.get(&job.id).await.waiting_for, "");
    worker.succeed(first.token, "");
    worker.succeed(second.token, "");
    app.wait_for(&job.id, pb::JobState::Succeeded, WITHIN).await;
    app.stop().await;
}

#[tokio::test]
async fn a_worker_never_holds_more_items_than_its_slots() {
    let app = spawn_app().await;
    let mut worker = RawWorker::connect(&app, hello(2)).await;
    let job = app.start(remote_job(&app, 5, 8)).await;
    let a = worker.assignment().await;
    let b = worker.assignment().await;
    worker.quiet(Duration::from_millis(500)).await;
    // An outcome alone frees no slot: the credit does.
    worker.send(In::Succeeded(pb::WorkerSucceeded {
        token: a.token,
        result: String::new(),
        ..Default::default()
    }));
    worker.quiet(Duration::from_millis(300)).await;
    worker.send(In::Credit(pb::WorkerCredit { slots: 1 }));
    let c = worker.assignment().await;
    worker.succeed(b.token, "");
    let d = worker.assignment().await;
    worker.succeed(c.token, "");
    let e = worker.assignment().await;
    worker.succeed(d.token, "");
    worker.succeed(e.token, "");
    app.wait_for(&job.id, pb::JobState::Succeeded, WITHIN).await;
    app.stop().await;
}

#[tokio::test]
async fn an_immediate_pause_interrupts_the_worker_and_a_resume_continues_from_the_checkpoint_elsewhere()
 {
    let app = spawn_app().await;
    let mut first = RawWorker::connect(&app, hello(1)).await;
    let job = app.start(remote_job(&app, 1, 1)).await;
    let a = first.assignment().await;
    first.checkpoint(a.token, 7, b"frame=120").await;
    let asked = std::time::Instant::now();
    app.pause(&job.id, pb::PauseMode::Immediate).await.unwrap();
    match first.next().await {
        Out::Interrupt(i) => {
            assert_eq!(i.tokens, vec![a.token]);
            assert_eq!(i.reason, pb::InterruptReason::Pause as i32);
        }
        other => panic!("expected an interrupt, got {other:?}"),
    }
    assert!(asked.elapsed() < Duration::from_secs(2), "pushed at once");
    first.send(In::Stopped(pb::WorkerStopped { token: a.token }));
    app.wait_for(&job.id, pb::JobState::Paused, WITHIN).await;
    drop(first);

    let mut second = RawWorker::connect(&app, hello(1)).await;
    second.quiet(Duration::from_millis(300)).await;
    app.resume(&job.id).await.unwrap();
    let again = second.assignment().await;
    assert_eq!(again.index, 0);
    assert_eq!(again.attempt, 1, "a pause does not count the attempt");
    assert_eq!(again.checkpoint.as_deref(), Some(&b"frame=120"[..]));
    assert_ne!(again.token, a.token, "a new token for a new assignment");
    second.succeed(again.token, "ok");
    app.wait_for(&job.id, pb::JobState::Succeeded, WITHIN).await;
    app.stop().await;
}

#[tokio::test]
async fn a_graceful_pause_lets_the_items_in_flight_finish() {
    let app = spawn_app().await;
    let mut worker = RawWorker::connect(&app, hello(1)).await;
    let job = app.start(remote_job(&app, 3, 1)).await;
    let a = worker.assignment().await;
    let paused = app.pause(&job.id, pb::PauseMode::Graceful).await.unwrap();
    assert_eq!(paused.state, pb::JobState::Pausing as i32);
    worker.quiet(Duration::from_millis(300)).await;
    worker.succeed(a.token, "finished");
    app.wait_for(&job.id, pb::JobState::Paused, WITHIN).await;
    worker.quiet(Duration::from_millis(300)).await;
    let items = app.items(&job.id).await;
    assert_eq!(items[0].state, pb::ItemState::Succeeded as i32);
    assert_eq!(items[1].state, pb::ItemState::Pending as i32);
    app.stop().await;
}

#[tokio::test]
async fn a_cancel_reaches_the_worker_and_ends_the_job() {
    let app = spawn_app().await;
    let mut worker = RawWorker::connect(&app, hello(1)).await;
    let job = app.start(remote_job(&app, 2, 1)).await;
    let a = worker.assignment().await;
    app.cancel(&job.id).await.unwrap();
    match worker.next().await {
        Out::Interrupt(i) => assert_eq!(i.reason, pb::InterruptReason::Cancel as i32),
        other => panic!("expected an interrupt, got {other:?}"),
    }
    worker.send(In::Stopped(pb::WorkerStopped { token: a.token }));
    app.wait_for(&job.id, pb::JobState::Cancelled, WITHIN).await;
    app.stop().await;
}

#[tokio::test]
async fn an_ignored_interrupt_revokes_the_item_and_its_late_result_is_refused() {
    let app = spawn_app().await;
    let mut worker = RawWorker::connect(&app, hello(1)).await;
    let job = app.start(remote_job(&app, 1, 1)).await;
    let a = worker.assignment().await;
    app.pause(&job.id, pb::PauseMode::Immediate).await.unwrap();
    assert!(matches!(worker.next().await, Out::Interrupt(_)));
    // The grace is 2 s: keep the session alive and ignore it.
    match worker.next().await {
        Out::Revoked(r) => {
            assert_eq!(r.token, a.token);
            assert!(r.reason.contains("did not stop"), "{r:?}");
        }
        other => panic!("expected the item revoked, got {other:?}"),
    }
    app.wait_for(&job.id, pb::JobState::Paused, WITHIN).await;
    worker.send(In::Succeeded(pb::WorkerSucceeded {
        token: a.token,
        result: "late".into(),
        ..Default::default()
    }));
    match worker.next().await {
        Out::Refused(r) => {
            assert_eq!((r.token, r.reason.as_str()), (a.token, "UNKNOWN_TOKEN"));
        }
        other => panic!("expected the late result refused, got {other:?}"),
    }
    let items = app.items(&job.id).await;
    assert_eq!(items[0].state, pb::ItemState::Pending as i32);
    assert_eq!(items[0].result, "", "the late result changed nothing");
    app.stop().await;
}

#[tokio::test]
async fn a_lost_worker_s_item_goes_to_another_worker_with_its_checkpoint_within_the_lease() {
    let app = spawn_app().await;
    let mut lost = RawWorker::connect(&app, hello(1)).await;
    let job = app.start(remote_job(&app, 1, 1)).await;
    let a = lost.assignment().await;
    lost.checkpoint(a.token, 1, b"step=3").await;
    let mut other = RawWorker::connect(&app, hello(1)).await;
    let gone = std::time::Instant::now();
    drop(lost);
    let again = tokio::time::timeout(Duration::from_secs(5), other.assignment())
        .await
        .expect("redelivered");
    let took = gone.elapsed();
    assert!(took < Duration::from_secs(3), "lease 1 s; took {took:?}");
    assert_eq!(again.attempt, 2, "a lost worker's attempt counts");
    assert_eq!(again.checkpoint.as_deref(), Some(&b"step=3"[..]));
    other.succeed(again.token, "");
    app.wait_for(&job.id, pb::JobState::Succeeded, WITHIN).await;
    app.stop().await;
}

#[tokio::test]
async fn a_worker_that_reconnects_within_the_lease_keeps_its_items() {
    let app = spawn_app().await;
    let mut worker = RawWorker::connect(&app, hello(1)).await;
    let job = app.start(remote_job(&app, 1, 1)).await;
    let a = worker.assignment().await;
    let session = worker.welcome.session_id.clone();
    drop(worker);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut back = RawWorker::connect(
        &app,
        pb::WorkerHello {
            resume_session_id: session.clone(),
            held_tokens: vec![a.token, 424242],
            slots: 0,
            ..hello(1)
        },
    )
    .await;
    assert_eq!(back.welcome.session_id, session);
    assert_eq!(back.welcome.resumed_tokens, vec![a.token]);
    match back.next().await {
        Out::Revoked(r) => assert_eq!(r.token, 424242),
        other => panic!("expected the unknown token revoked, got {other:?}"),
    }
    back.succeed(a.token, "kept");
    app.wait_for(&job.id, pb::JobState::Succeeded, WITHIN).await;
    assert_eq!(app.items(&job.id).await[0].attempts, 1);
    app.stop().await;
}

#[tokio::test]
async fn messages_about_items_the_session_does_not_hold_are_refused_and_change_nothing() {
    let app = spawn_app().await;
    let mut worker = RawWorker::connect(&app, hello(1)).await;
    let job = app.start(remote_job(&app, 1, 1)).await;
    let a = worker.assignment().await;
    worker.send(In::Checkpoint(pb::WorkerCheckpoint {
        token: a.token + 1,
        checkpoint_id: 9,
        data: b"x".to_vec(),
    }));
    match worker.next().await {
        Out::Refused(r) => {
            assert_eq!(r.reason, "UNKNOWN_TOKEN");
            assert_eq!((r.token, r.checkpoint_id), (a.token + 1, 9));
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    // Out-of-range fields are named; the session goes on.
    worker.send(In::Progress(pb::WorkerProgress {
        token: a.token,
        fraction: 1.5,
    }));
    match worker.next().await {
        Out::Refused(r) => {
            assert_eq!(r.reason, "INVALID");
            assert!(r.message.contains("progress.fraction"), "{r:?}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    worker.send(In::Checkpoint(pb::WorkerCheckpoint {
        token: a.token,
        checkpoint_id: 10,
        data: vec![0; 2 * 1024 * 1024],
    }));
    match worker.next().await {
        Out::Refused(r) => {
            assert_eq!((r.reason.as_str(), r.checkpoint_id), ("INVALID", 10));
            assert!(r.message.contains("checkpoint.data"), "{r:?}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    worker.send(In::Hello(hello(1)));
    match worker.next().await {
        Out::Refused(r) => assert_eq!(r.reason, "UNEXPECTED"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    // A success with a bad counter or an overlong skip reason is refused
    // whole, naming it: the item is still running, nothing is counted.
    for (counters, skip, named) in [
        (vec![("Frames", 1)], "", "succeeded.counters[Frames]"),
        (vec![("frames", -2)], "", "negative"),
        (
            vec![],
            "x".repeat(1001).leak() as &str,
            "succeeded.skip_reason",
        ),
    ] {
        worker.send(In::Succeeded(pb::WorkerSucceeded {
            token: a.token,
            result: "early".into(),
            skip_reason: skip.into(),
            counters: counters.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
        }));
        match worker.next().await {
            Out::Refused(r) => {
                assert_eq!(r.reason, "INVALID");
                assert!(r.message.contains(named), "{r:?}");
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
    }
    assert_eq!(app.get(&job.id).await.counts.unwrap().running, 1);
    worker.send(In::Succeeded(pb::WorkerSucceeded {
        token: a.token,
        result: "fine".into(),
        skip_reason: String::new(),
        counters: [("frames".to_string(), 12)].into(),
    }));
    worker.send(In::Credit(pb::WorkerCredit { slots: 1 }));
    app.wait_for(&job.id, pb::JobState::Succeeded, WITHIN).await;
    let item = &app.items(&job.id).await[0];
    assert_eq!((item.result.as_str(), item.attempts), ("fine", 1));
    assert_eq!(app.get(&job.id).await.counters.get("frames"), Some(&12));
    app.stop().await;
}

#[tokio::test]
async fn a_bad_hello_is_refused_naming_what_was_wrong() {
    let app = spawn_app().await;
    let status = open(&app, In::Ping(pb::WorkerPing {}), None)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("must be a hello"), "{status:?}");

    let status = RawWorker::try_connect(
        &app,
        pb::WorkerHello {
            slots: 0,
            worker_name: String::new(),
            ..hello(1)
        },
        None,
    )
    .await
    .err()
    .expect("refused");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(bad_fields(&status), ["hello.worker_name", "hello.slots"]);

    let status = RawWorker::try_connect(
        &app,
        pb::WorkerHello {
            executors: vec!["remote".into(), "sleep".into()],
            ..hello(1)
        },
        None,
    )
    .await
    .err()
    .expect("refused");
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(
        status
            .message()
            .contains("\"sleep\" is not a remote executor"),
        "{status:?}"
    );

    let status = RawWorker::try_connect(
        &app,
        pb::WorkerHello {
            protocol_version: 2,
            ..hello(1)
        },
        None,
    )
    .await
    .err()
    .expect("refused");
    assert_eq!(status.code(), Code::FailedPrecondition);
    app.stop().await;
}

#[tokio::test]
async fn a_worker_needs_the_work_permission_and_takes_only_its_scope_s_items() {
    use Permission::*;
    let dir = tempfile::tempdir().unwrap();
    let entries: [TokenSpec; 3] = [
        ("ops", &[Admin], &[]),
        ("reader", &[Read, Start, Control], &[]),
        ("audio-worker", &[Work], &[("team", "audio")]),
    ];
    let mut tokens = Vec::new();
    let mut json = Vec::new();
    for (name, permissions, scope) in entries {
        let scope: BTreeMap<String, String> = scope
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let (token, entry) = new_token(name, permissions, &scope);
        tokens.push(token);
        json.push(entry);
    }
    let path = dir.path().join("tokens.json");
    std::fs::write(&path, serde_json::json!({ "tokens": json }).to_string()).unwrap();
    let app = spawn_app_with(Options {
        guard: GuardConfig {
            tokens: Some(Arc::new(Tokens::load(&path).unwrap())),
            ..GuardConfig::default()
        },
        ..Options::default()
    })
    .await;
    let status = RawWorker::try_connect(&app, hello(1), Some(&tokens[1]))
        .await
        .err()
        .expect("refused");
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains("work permission"), "{status:?}");
    let status = RawWorker::try_connect(&app, hello(1), None)
        .await
        .err()
        .expect("refused");
    assert_eq!(status.code(), Code::Unauthenticated);

    let mut worker = RawWorker::try_connect(&app, hello(2), Some(&tokens[2]))
        .await
        .expect("a work token");
    let start = |team: &str| {
        let mut request = remote_job(&app, 1, 1);
        request.labels.insert("team".into(), team.into());
        let mut request = tonic::Request::new(request);
        request.metadata_mut().insert(
            "authorization",
            format!("Bearer {}", tokens[0]).parse().unwrap(),
        );
        let mut client = app.client.clone();
        async move { client.start_job(request).await.unwrap().into_inner() }
    };
    let video = start("video").await;
    let audio = start("audio").await;
    let a = worker.assignment().await;
    assert_eq!(a.job_id, audio.id, "only its team's job");
    worker.succeed(a.token, "");
    worker.quiet(Duration::from_millis(500)).await;
    let mut get = tonic::Request::new(pb::GetJobRequest {
        job_id: video.id.clone(),
    });
    get.metadata_mut().insert(
        "authorization",
        format!("Bearer {}", tokens[0]).parse().unwrap(),
    );
    let video = app.client.clone().get_job(get).await.unwrap().into_inner();
    assert_eq!(video.counts.unwrap().succeeded, 0);
    assert_eq!(
        video.waiting_for,
        "waiting for a worker for executor \"remote\""
    );
    app.stop().await;
}

#[tokio::test]
async fn several_jobs_share_one_executor_s_workers() {
    let app = spawn_app().await;
    let mut worker = RawWorker::connect(&app, hello(2)).await;
    let first = app.start(remote_job(&app, 20, 4)).await;
    let second = app.start(remote_job(&app, 20, 4)).await;
    // Ten items in turn: each job gets about half of them.
    let mut per_job: BTreeMap<String, u32> = BTreeMap::new();
    for _ in 0..10 {
        let a = worker.assignment().await;
        *per_job.entry(a.job_id.clone()).or_default() += 1;
        worker.succeed(a.token, "");
    }
    for id in [&first.id, &second.id] {
        let n = per_job.get(id).copied().unwrap_or_default();
        assert!((3..=7).contains(&n), "job {id} got {n} of 10: {per_job:?}");
    }
    app.stop().await;
}

#[tokio::test]
async fn the_embedded_store_runs_remote_items_too() {
    let app = spawn_app_with(Options {
        store: StoreKind::Embedded,
        ..Options::default()
    })
    .await;
    let mut worker = RawWorker::connect(&app, hello(1)).await;
    let job = app.start(remote_job(&app, 2, 1)).await;
    let a = worker.assignment().await;
    worker.checkpoint(a.token, 1, b"c").await;
    app.pause(&job.id, pb::PauseMode::Immediate).await.unwrap();
    assert!(matches!(worker.next().await, Out::Interrupt(_)));
    worker.send(In::Stopped(pb::WorkerStopped { token: a.token }));
    worker.send(In::Credit(pb::WorkerCredit { slots: 1 }));
    app.wait_for(&job.id, pb::JobState::Paused, WITHIN).await;
    app.resume(&job.id).await.unwrap();
    let again = worker.assignment().await;
    assert_eq!(
        (again.index, again.checkpoint.as_deref()),
        (0, Some(&b"c"[..]))
    );
    worker.succeed(again.token, "");
    let b = worker.assignment().await;
    worker.succeed(b.token, "");
    app.wait_for(&job.id, pb::JobState::Succeeded, WITHIN).await;
    app.stop().await;
}

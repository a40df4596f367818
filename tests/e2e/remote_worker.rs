//! `jobvisor::worker::Worker`, the Rust side of the worker protocol, in
//! this process against the real server (remote executor `remote`, a lease
//! of 1 s, an interrupt grace of 2 s): executors written against the
//! embedding API run as remote workers, with checkpoints, stops, drains,
//! crashes and broken connections. The protocol itself, message by
//! message, is pinned in `workers.rs`; `jobvisor worker` as a process in
//! `tests/crash/workers.rs`.

use super::{
    executors::{Executions, Recording},
    harness::*,
    security::{Pki, write},
};
use jobvisor::server::TlsFiles;
use jobvisor::{
    api::{
        auth::{Permission, Tokens, new_token},
        guard::GuardConfig,
    },
    executor::{Executor, ItemContext, ItemError, ItemHandler, PrepareError},
    pb,
    worker::{Connect, Status, Worker, WorkerError},
};
use std::{
    collections::BTreeMap,
    process::Stdio,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};

const WITHIN: Duration = Duration::from_secs(10);

/// A worker running in a task of this process.
struct RunningWorker {
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), WorkerError>>,
    /// Every status it reported.
    statuses: Arc<Mutex<Vec<Status>>>,
}

impl RunningWorker {
    fn start(worker: Worker) -> RunningWorker {
        let statuses = Arc::new(Mutex::new(Vec::new()));
        let seen = statuses.clone();
        let worker = worker.on_status(move |s| seen.lock().unwrap().push(s.clone()));
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(worker.run(async {
            let _ = rx.await;
        }));
        RunningWorker {
            shutdown: Some(tx),
            task,
            statuses,
        }
    }

    /// Asks it to drain; waits for it to finish.
    async fn drain(mut self, within: Duration) -> Result<(), WorkerError> {
        let _ = self.shutdown.take().unwrap().send(());
        tokio::time::timeout(within, self.task)
            .await
            .expect("the worker drains in time")
            .expect("the worker's task")
    }

    /// Gone at once, as if its process died: nothing more is sent.
    fn crash(self) {
        self.task.abort();
    }

    fn statuses(&self) -> Vec<Status> {
        self.statuses.lock().unwrap().clone()
    }

    /// Waits until it is connected.
    async fn connected(&self) {
        let deadline = Instant::now() + WITHIN;
        while !self
            .statuses()
            .iter()
            .any(|s| matches!(s, Status::Connected { .. }))
        {
            assert!(
                !self.task.is_finished(),
                "the worker ended: {:?}",
                self.statuses()
            );
            assert!(Instant::now() < deadline, "the worker never connected");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

fn server(addr: std::net::SocketAddr) -> Connect {
    Connect::new(endpoint(addr))
}

/// A worker of `remote` with `slots` slots, connected.
async fn worker(
    addr: std::net::SocketAddr,
    executor: Arc<dyn Executor>,
    slots: u32,
) -> RunningWorker {
    let worker = RunningWorker::start(Worker::new(server(addr), "remote", executor).slots(slots));
    worker.connected().await;
    worker
}

fn recording(log: &Executions) -> Arc<dyn Executor> {
    Arc::new(Recording::new(log.clone()))
}

/// A job of `remote` whose items sleep `ms` in `steps` checkpointed steps.
fn sleepy(
    app: &TestApp,
    items: usize,
    concurrency: u32,
    ms: u32,
    steps: u32,
) -> pb::StartJobRequest {
    app.job(
        "remote",
        items,
        concurrency,
        &[
            ("duration_ms", &ms.to_string()),
            ("steps", &steps.to_string()),
        ],
    )
}

/// Waits until every item of the job has a checkpoint of at least `step`.
async fn checkpointed(app: &TestApp, id: &str, step: u32) {
    app.eventually("the items' checkpoints", WITHIN, || async {
        app.items(id).await.iter().all(|i| {
            std::str::from_utf8(&i.checkpoint)
                .ok()
                .and_then(|c| c.parse::<u32>().ok())
                .is_some_and(|c| c >= step)
        })
    })
    .await;
}

#[tokio::test]
async fn a_rust_executor_runs_every_item_exactly_once_in_a_remote_worker_within_its_slots() {
    let app = spawn_app().await;
    let log = Executions::default();
    let worker = worker(app.addr, recording(&log), 3).await;
    let job = app.start(sleepy(&app, 9, 9, 150, 3)).await;
    let most = Arc::new(Mutex::new(0usize));
    let sampler = {
        let (log, most) = (log.clone(), most.clone());
        tokio::spawn(async move {
            loop {
                let running = log.running();
                {
                    let mut most = most.lock().unwrap();
                    *most = (*most).max(running);
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    app.wait_for(&job.id, pb::JobState::Succeeded, WITHIN).await;
    sampler.abort();
    let runs = log.all();
    assert_eq!(runs.len(), 9, "{runs:?}");
    for index in 0..9 {
        let of: Vec<_> = runs.iter().filter(|r| r.index == index).collect();
        assert_eq!(of.len(), 1, "item {index} ran once: {runs:?}");
        assert_eq!((of[0].attempt, of[0].outcome), (1, Some("ok")));
    }
    let most = *most.lock().unwrap();
    assert!((1..=3).contains(&most), "at most 3 at once, saw {most}");
    assert!(app.items(&job.id).await.iter().all(|i| i.attempts == 1));
    worker.drain(WITHIN).await.unwrap();
    app.stop().await;
}

#[tokio::test]
async fn an_immediate_pause_stops_the_handler_and_a_resume_continues_from_its_checkpoint_in_another_worker()
 {
    let app = spawn_app().await;
    let (first_log, second_log) = (Executions::default(), Executions::default());
    let first = worker(app.addr, recording(&first_log), 1).await;
    let job = app.start(sleepy(&app, 1, 1, 4000, 40)).await;
    checkpointed(&app, &job.id, 3).await;
    let asked = Instant::now();
    app.pause(&job.id, pb::PauseMode::Immediate).await.unwrap();
    app.wait_for(&job.id, pb::JobState::Paused, WITHIN).await;
    assert!(
        asked.elapsed() < Duration::from_secs(2),
        "stopped at its next step, not after the grace: {:?}",
        asked.elapsed()
    );
    assert_eq!(first_log.all()[0].outcome, Some("interrupted"));
    let kept: u32 = String::from_utf8(app.items(&job.id).await[0].checkpoint.clone())
        .unwrap()
        .parse()
        .unwrap();
    first.drain(WITHIN).await.unwrap();

    let second = worker(app.addr, recording(&second_log), 1).await;
    app.resume(&job.id).await.unwrap();
    app.wait_for(&job.id, pb::JobState::Succeeded, WITHIN).await;
    let again = second_log.all();
    assert_eq!(again.len(), 1, "{again:?}");
    assert_eq!(again[0].from_step, kept, "continued from the checkpoint");
    assert_eq!(again[0].attempt, 1, "a pause does not count the attempt");
    second.drain(WITHIN).await.unwrap();
    app.stop().await;
}

#[tokio::test]
async fn a_cancel_reaches_the_running_handler() {
    let app = spawn_app().await;
    let log = Executions::default();
    let worker = worker(app.addr, recording(&log), 2).await;
    let job = app.start(sleepy(&app, 2, 2, 10_000, 100)).await;
    checkpointed(&app, &job.id, 1).await;
    let asked = Instant::now();
    app.cancel(&job.id).await.unwrap();
    app.wait_for(&job.id, pb::JobState::Cancelled, WITHIN).await;
    assert!(
        asked.elapsed() < Duration::from_secs(2),
        "{:?}",
        asked.elapsed()
    );
    let runs = log.all();
    assert_eq!(runs.len(), 2);
    assert!(
        runs.iter().all(|r| r.outcome == Some("interrupted")),
        "{runs:?}"
    );
    worker.drain(WITHIN).await.unwrap();
    app.stop().await;
}

#[tokio::test]
async fn a_draining_worker_stops_its_items_hands_them_back_and_another_continues_them() {
    let app = spawn_app().await;
    let (first_log, second_log) = (Executions::default(), Executions::default());
    let first = worker(app.addr, recording(&first_log), 2).await;
    let job = app.start(sleepy(&app, 2, 2, 4000, 40)).await;
    checkpointed(&app, &job.id, 3).await;
    let statuses = first.statuses.clone();
    let asked = Instant::now();
    first.drain(WITHIN).await.unwrap();
    assert!(
        asked.elapsed() < Duration::from_secs(2),
        "{:?}",
        asked.elapsed()
    );
    let said = statuses.lock().unwrap().clone();
    assert!(
        said.contains(&Status::Draining { in_flight: 2 }) && said.last() == Some(&Status::Stopped),
        "{said:?}"
    );
    assert!(
        first_log
            .all()
            .iter()
            .all(|r| r.outcome == Some("interrupted"))
    );
    // Back to pending at once.
    app.eventually("the items back to pending", WITHIN, || async {
        app.items(&job.id)
            .await
            .iter()
            .all(|i| i.state == pb::ItemState::Pending as i32)
    })
    .await;

    let second = worker(app.addr, recording(&second_log), 2).await;
    app.wait_for(&job.id, pb::JobState::Succeeded, WITHIN).await;
    for run in second_log.all() {
        assert!(run.from_step >= 3, "from its checkpoint: {run:?}");
        assert_eq!(run.attempt, 1, "{run:?}");
    }
    second.drain(WITHIN).await.unwrap();
    app.stop().await;
}

#[tokio::test]
async fn a_crashed_worker_s_items_are_taken_over_from_their_checkpoints_within_the_lease() {
    let app = spawn_app().await;
    let (first_log, second_log) = (Executions::default(), Executions::default());
    let first = worker(app.addr, recording(&first_log), 1).await;
    let job = app.start(sleepy(&app, 1, 1, 4000, 40)).await;
    checkpointed(&app, &job.id, 3).await;
    let second = worker(app.addr, recording(&second_log), 1).await;
    let crashed = Instant::now();
    first.crash();
    app.eventually("the item taken over", WITHIN, || async {
        second_log.started() == 1
    })
    .await;
    let took = crashed.elapsed();
    assert!(took < Duration::from_secs(3), "lease 1 s; took {took:?}");
    app.wait_for(&job.id, pb::JobState::Succeeded, WITHIN).await;
    let run = &second_log.all()[0];
    assert_eq!(run.attempt, 2, "a lost worker's attempt counts");
    assert!(run.from_step >= 3, "{run:?}");
    second.drain(WITHIN).await.unwrap();
    app.stop().await;
}

/// A TCP relay to the server whose connections the test can cut.
struct Relay {
    addr: std::net::SocketAddr,
    conns: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accept: JoinHandle<()>,
}

impl Relay {
    async fn start(upstream: std::net::SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let conns: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let accept = {
            let conns = conns.clone();
            tokio::spawn(async move {
                while let Ok((mut inbound, _)) = listener.accept().await {
                    let conn = tokio::spawn(async move {
                        if let Ok(mut outbound) = tokio::net::TcpStream::connect(upstream).await {
                            let _ =
                                tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                        }
                    });
                    conns.lock().unwrap().push(conn);
                }
            })
        };
        Relay {
            addr,
            conns,
            accept,
        }
    }

    /// Closes every connection through it (new ones still pass).
    fn cut(&self) {
        for conn in self.conns.lock().unwrap().drain(..) {
            conn.abort();
        }
    }
}

impl Relay {
    /// Closes every connection and takes no more (the server out of reach).
    fn refuse(&self) {
        self.accept.abort();
        self.cut();
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.cut();
        self.accept.abort();
    }
}

#[tokio::test]
async fn a_broken_connection_is_resumed_and_the_items_in_flight_continue() {
    let app = spawn_app().await;
    let relay = Relay::start(app.addr).await;
    let log = Executions::default();
    let worker = worker(relay.addr, recording(&log), 2).await;
    let job = app.start(sleepy(&app, 2, 2, 3000, 30)).await;
    checkpointed(&app, &job.id, 3).await;
    relay.cut();
    app.wait_for(&job.id, pb::JobState::Succeeded, WITHIN).await;
    let runs = log.all();
    assert_eq!(runs.len(), 2, "nothing ran twice: {runs:?}");
    assert!(runs.iter().all(|r| r.outcome == Some("ok")));
    assert!(app.items(&job.id).await.iter().all(|i| i.attempts == 1));
    let said = worker.statuses();
    assert!(
        said.iter()
            .any(|s| matches!(s, Status::Reconnecting { in_flight: 2, .. })),
        "{said:?}"
    );
    assert!(
        said.iter().any(|s| matches!(
            s,
            Status::Connected {
                resumed: 2,
                lost: 0,
                ..
            }
        )),
        "{said:?}"
    );
    worker.drain(WITHIN).await.unwrap();
    app.stop().await;
}

#[tokio::test]
async fn a_worker_that_cannot_reach_the_server_still_drains_and_exits_once_the_lease_is_over() {
    let app = spawn_app().await;
    let relay = Relay::start(app.addr).await;
    let log = Executions::default();
    let worker = worker(relay.addr, recording(&log), 2).await;
    let job = app.start(sleepy(&app, 2, 2, 10_000, 100)).await;
    checkpointed(&app, &job.id, 1).await;
    relay.refuse();
    app.eventually("the worker disconnected", WITHIN, || async {
        worker
            .statuses()
            .iter()
            .any(|s| matches!(s, Status::Reconnecting { in_flight: 2, .. }))
    })
    .await;
    let statuses = worker.statuses.clone();
    let asked = Instant::now();
    worker.drain(WITHIN).await.unwrap();
    let took = asked.elapsed();
    assert!(took < Duration::from_secs(3), "lease 1 s; took {took:?}");
    // The items stopped; their reports could not be sent, and after the
    // lease they no longer count: the server took them back.
    assert!(log.all().iter().all(|r| r.outcome == Some("interrupted")));
    assert_eq!(statuses.lock().unwrap().last(), Some(&Status::Stopped));
    app.stop().await;
}

/// What each item does, by its payload: `ok` succeeds with a result,
/// `retry` fails once asking for a wait, `fail` fails for good, `panic`
/// panics once. Any param is refused.
struct Outcomes {
    /// When each attempt started and ended.
    times: Arc<Mutex<Vec<Attempt>>>,
}

/// One attempt of one item: its payload, its number, its start and end.
type Attempt = (String, u32, Instant, Instant);

#[async_trait::async_trait]
impl ItemHandler for Outcomes {
    async fn run(&self, ctx: &mut ItemContext) -> Result<(), ItemError> {
        let started = Instant::now();
        let payload = ctx.payload().to_string();
        let result = match (payload.as_str(), ctx.attempt()) {
            ("retry", 1) => {
                // Counted only if the attempt succeeds: this one fails.
                ctx.count("frames", 1000).unwrap();
                ctx.set_retry_after(Duration::from_millis(600));
                Err(ItemError::Retryable("busy, come back later".into()))
            }
            ("fail", _) => Err(ItemError::Permanent("no good, ever".into())),
            ("panic", 1) => {
                ctx.count("frames", 1000).unwrap();
                panic!("boom")
            }
            ("skip", _) => {
                ctx.skip("already there");
                ctx.count("skipped", 1).unwrap();
                Ok(())
            }
            _ => {
                ctx.count("frames", 10).unwrap();
                ctx.set_result(format!("{payload} done"));
                Ok(())
            }
        };
        self.times
            .lock()
            .unwrap()
            .push((payload, ctx.attempt(), started, Instant::now()));
        result
    }
}

struct OutcomesExecutor(Arc<Outcomes>);

impl Executor for OutcomesExecutor {
    fn prepare(
        &self,
        params: &BTreeMap<String, String>,
    ) -> Result<Arc<dyn ItemHandler>, PrepareError> {
        match params.keys().next() {
            Some(key) => Err(PrepareError::Invalid(vec![
                jobvisor::domain::FieldViolation::new(
                    format!("params[{key}]"),
                    "outcomes takes no params",
                ),
            ])),
            None => Ok(self.0.clone()),
        }
    }
}

#[tokio::test]
async fn results_failures_retry_waits_panics_and_prepare_errors_reach_the_server() {
    let app = spawn_app().await;
    let outcomes = Arc::new(Outcomes {
        times: Arc::default(),
    });
    let worker = worker(app.addr, Arc::new(OutcomesExecutor(outcomes.clone())), 4).await;
    let mut request = app.job("remote", 0, 4, &[]);
    request.items = ["ok", "retry", "fail", "panic", "skip"]
        .map(String::from)
        .to_vec();
    request.max_attempts = 3;
    let job = app.start(request).await;
    app.wait_for(&job.id, pb::JobState::Failed, WITHIN).await;
    let items = app.items(&job.id).await;
    let item = |payload: &str| items.iter().find(|i| i.payload == payload).unwrap();
    assert_eq!(item("ok").result, "ok done");
    assert_eq!(item("ok").state, pb::ItemState::Succeeded as i32);
    assert_eq!(
        (item("retry").state, item("retry").attempts),
        (pb::ItemState::Succeeded as i32, 2)
    );
    assert_eq!(item("fail").state, pb::ItemState::Failed as i32);
    assert_eq!(
        item("fail").attempts,
        1,
        "a permanent failure is not retried"
    );
    assert!(
        item("fail").last_error.contains("no good, ever"),
        "{:?}",
        item("fail")
    );
    assert_eq!(
        (item("panic").state, item("panic").attempts),
        (pb::ItemState::Succeeded as i32, 2)
    );
    // A skip and counters: only the attempts that succeeded count (ok,
    // retry's second attempt, panic's second attempt).
    assert_eq!(item("skip").state, pb::ItemState::Succeeded as i32);
    assert_eq!(item("skip").skip_reason, "already there");
    assert_eq!(item("ok").skip_reason, "");
    let counters: BTreeMap<String, i64> = app.get(&job.id).await.counters.into_iter().collect();
    assert_eq!(
        counters,
        BTreeMap::from([("frames".to_string(), 30), ("skipped".to_string(), 1)])
    );
    let times = outcomes.times.lock().unwrap().clone();
    let at = |attempt: u32| {
        times
            .iter()
            .find(|(p, a, _, _)| p == "retry" && *a == attempt)
            .unwrap()
    };
    let waited = at(2).2.duration_since(at(1).3);
    assert!(
        waited >= Duration::from_millis(550),
        "the retry waited as asked: {waited:?}"
    );

    // A job whose params the worker's executor refuses: its items fail for
    // good with the executor's words.
    let bad = app
        .start(app.job("remote", 2, 2, &[("colour", "red")]))
        .await;
    app.wait_for(&bad.id, pb::JobState::Failed, WITHIN).await;
    for item in app.items(&bad.id).await {
        assert_eq!(item.attempts, 1);
        assert!(
            item.last_error
                .contains("params[colour]: outcomes takes no params"),
            "{item:?}"
        );
    }
    worker.drain(WITHIN).await.unwrap();
    app.stop().await;
}

/// Ignores its first stop request for 3 s (longer than the 2 s grace),
/// then succeeds anyway; later attempts stop when asked.
struct Stubborn {
    runs: Arc<Mutex<Vec<&'static str>>>,
}

#[async_trait::async_trait]
impl ItemHandler for Stubborn {
    async fn run(&self, ctx: &mut ItemContext) -> Result<(), ItemError> {
        let first = self.runs.lock().unwrap().is_empty();
        self.runs.lock().unwrap().push("started");
        if first {
            ctx.stopped().await;
            tokio::time::sleep(Duration::from_secs(3)).await;
            // The checkpoint of a revoked item is refused.
            let saved = ctx.save_checkpoint(b"late".to_vec()).await;
            self.runs.lock().unwrap().push(match saved {
                Ok(()) => "late checkpoint saved",
                Err(_) => "late checkpoint refused",
            });
            ctx.set_result("late".into());
            self.runs.lock().unwrap().push("returned late");
            return Ok(());
        }
        ctx.set_result("on time".into());
        Ok(())
    }
}

impl Executor for Stubborn {
    fn prepare(&self, _: &BTreeMap<String, String>) -> Result<Arc<dyn ItemHandler>, PrepareError> {
        Ok(Arc::new(Stubborn {
            runs: self.runs.clone(),
        }))
    }
}

#[tokio::test]
async fn an_item_that_ignores_its_interrupt_is_revoked_its_late_result_dropped_and_its_slot_freed()
{
    let app = spawn_app().await;
    let runs: Arc<Mutex<Vec<&'static str>>> = Arc::default();
    let worker = worker(app.addr, Arc::new(Stubborn { runs: runs.clone() }), 1).await;
    let job = app.start(app.job("remote", 1, 1, &[])).await;
    app.eventually("the item running", WITHIN, || async {
        !runs.lock().unwrap().is_empty()
    })
    .await;
    app.pause(&job.id, pb::PauseMode::Immediate).await.unwrap();
    app.wait_for(&job.id, pb::JobState::Paused, WITHIN).await;
    app.eventually("the late return", WITHIN, || async {
        runs.lock().unwrap().contains(&"returned late")
    })
    .await;
    assert!(
        runs.lock().unwrap().contains(&"late checkpoint refused"),
        "{runs:?}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let item = &app.items(&job.id).await[0];
    assert_eq!(item.state, pb::ItemState::Pending as i32, "{item:?}");
    assert_eq!(item.result, "", "the late result was dropped");
    assert!(item.checkpoint.is_empty(), "{item:?}");
    // Its slot came back: the same one-slot worker runs the item again.
    app.resume(&job.id).await.unwrap();
    app.wait_for(&job.id, pb::JobState::Succeeded, WITHIN).await;
    assert_eq!(app.items(&job.id).await[0].result, "on time");
    worker.drain(WITHIN).await.unwrap();
    app.stop().await;
}

#[tokio::test]
async fn a_worker_is_refused_for_good_without_the_work_permission_or_for_an_unknown_executor() {
    use Permission::*;
    let dir = tempfile::tempdir().unwrap();
    let (work, work_entry) = new_token("worker", &[Work], &BTreeMap::new());
    let (read, read_entry) = new_token("reader", &[Read], &BTreeMap::new());
    let path = dir.path().join("tokens.json");
    std::fs::write(
        &path,
        serde_json::json!({ "tokens": [work_entry, read_entry] }).to_string(),
    )
    .unwrap();
    let app = spawn_app_with(Options {
        guard: GuardConfig {
            tokens: Some(Arc::new(Tokens::load(&path).unwrap())),
            ..GuardConfig::default()
        },
        ..Options::default()
    })
    .await;
    let log = Executions::default();
    let run = |connect: Connect, executor: &str| {
        let worker = Worker::new(connect, executor, recording(&log));
        tokio::time::timeout(WITHIN, worker.run(std::future::pending::<()>()))
    };
    let refused = |result: Result<Result<(), WorkerError>, _>| match result {
        Ok(Err(WorkerError::Refused { code, message })) => (code, message),
        other => panic!("expected a refusal, got {other:?}"),
    };
    let (code, _) = refused(run(server(app.addr), "remote").await);
    assert_eq!(code, tonic::Code::Unauthenticated);
    let (code, message) = refused(run(server(app.addr).with_token(&read).unwrap(), "remote").await);
    assert_eq!(code, tonic::Code::PermissionDenied);
    assert!(message.contains("work"), "{message}");
    let (code, message) = refused(run(server(app.addr).with_token(&work).unwrap(), "ocr").await);
    assert_eq!(code, tonic::Code::FailedPrecondition);
    assert!(message.contains("--remote-executor ocr"), "{message}");

    // The right token works.
    let worker = RunningWorker::start(
        Worker::new(
            server(app.addr).with_token(&work).unwrap(),
            "remote",
            recording(&log),
        )
        .slots(2),
    );
    worker.connected().await;
    worker.drain(WITHIN).await.unwrap();
    app.stop().await;
}

#[tokio::test]
async fn the_worker_command_connects_over_mtls_with_a_token_file() {
    let dir = tempfile::tempdir().unwrap();
    let (server_ca, client_ca) = (Pki::new("server-ca"), Pki::new("client-ca"));
    let (cert, key) = server_ca.leaf("jobvisor");
    let tls = TlsFiles {
        cert: write(&dir, "server.pem", &cert),
        key: write(&dir, "server.key", &key),
        client_ca: Some(write(&dir, "client-ca.pem", &client_ca.ca_pem)),
    };
    let (cert, key) = client_ca.leaf("harness");
    let harness = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(&server_ca.ca_pem))
        .domain_name("localhost")
        .identity(tonic::transport::Identity::from_pem(cert, key));
    let (work, work_entry) = new_token("worker", &[Permission::Work], &BTreeMap::new());
    let (admin, admin_entry) = new_token("ops", &[Permission::Admin], &BTreeMap::new());
    let tokens = write(
        &dir,
        "tokens.json",
        &serde_json::json!({ "tokens": [work_entry, admin_entry] }).to_string(),
    );
    let app = spawn_app_with(Options {
        tls: Some(tls),
        client_tls: Some(harness),
        guard: GuardConfig {
            tokens: Some(Arc::new(Tokens::load(&tokens).unwrap())),
            ..GuardConfig::default()
        },
        ..Options::default()
    })
    .await;
    let (cert, key) = client_ca.leaf("worker");
    let stderr = dir.path().join("worker.log");
    let mut worker = tokio::process::Command::new(env!("CARGO_BIN_EXE_jobvisor"))
        .args(["worker", "--executor", "remote", "--slots", "2", "--server"])
        .arg(format!("localhost:{}", app.addr.port()))
        .arg("--ca-cert")
        .arg(write(&dir, "ca.pem", &server_ca.ca_pem))
        .arg("--client-cert")
        .arg(write(&dir, "worker.pem", &cert))
        .arg("--client-key")
        .arg(write(&dir, "worker.key", &key))
        .arg("--token-file")
        .arg(write(&dir, "token", &format!("{work}\n")))
        .args(["--", "sh", "-c", "echo \"@result tls-$JOBVISOR_ITEM\""])
        .env_remove("JOBVISOR_TOKEN")
        .stdin(Stdio::null())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut request = tonic::Request::new(app.job("remote", 2, 2, &[]));
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {admin}").parse().unwrap());
    let job = app
        .client
        .clone()
        .start_job(request)
        .await
        .unwrap()
        .into_inner();
    let deadline = Instant::now() + WITHIN;
    let items = loop {
        let mut request = tonic::Request::new(pb::ListJobItemsRequest {
            job_id: job.id.clone(),
            ..Default::default()
        });
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {admin}").parse().unwrap());
        let items = app
            .client
            .clone()
            .list_job_items(request)
            .await
            .unwrap()
            .into_inner()
            .items;
        if items
            .iter()
            .all(|i| i.state == pb::ItemState::Succeeded as i32)
        {
            break items;
        }
        assert!(
            Instant::now() < deadline,
            "{items:?}; the worker said:\n{}",
            std::fs::read_to_string(&stderr).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    for item in items {
        assert_eq!(item.result, format!("tls-{}", item.payload));
    }
    let said = std::fs::read_to_string(&stderr).unwrap();
    assert!(
        said.contains(&format!(
            "connected to https://localhost:{}",
            app.addr.port()
        )),
        "{said}"
    );
    let pid = rustix::process::Pid::from_raw(worker.id().unwrap() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    let status = tokio::time::timeout(WITHIN, worker.wait())
        .await
        .expect("the worker drains")
        .unwrap();
    assert_eq!(status.code(), Some(0));
    app.stop().await;
}

/// Items stopped, each with the reason its handler was shown.
type Stops = Arc<Mutex<Vec<(u32, Option<jobvisor::executor::StopReason>)>>>;

/// Waits for its item's stop, then says why it was asked to stop.
#[derive(Clone, Default)]
struct StopWitness {
    stops: Stops,
    started: Arc<Mutex<Vec<u32>>>,
}

impl Executor for StopWitness {
    fn prepare(
        &self,
        _params: &BTreeMap<String, String>,
    ) -> Result<Arc<dyn ItemHandler>, PrepareError> {
        Ok(Arc::new(self.clone()))
    }
}

#[async_trait::async_trait]
impl ItemHandler for StopWitness {
    async fn run(&self, ctx: &mut ItemContext) -> Result<(), ItemError> {
        self.started.lock().unwrap().push(ctx.index());
        ctx.stopped().await;
        self.stops
            .lock()
            .unwrap()
            .push((ctx.index(), ctx.stop_reason()));
        Err(ItemError::Interrupted)
    }
}

/// CancelItems on an item a remote worker runs: the worker is sent an
/// interrupt with reason CANCEL for that item alone, its slot takes the
/// next item, and the job ends once the others are cancelled too.
#[tokio::test]
async fn a_cancelled_item_is_interrupted_in_its_remote_worker_as_cancelled() {
    use jobvisor::executor::StopReason;
    let app = spawn_app().await;
    let witness = StopWitness::default();
    let worker = worker(app.addr, Arc::new(witness.clone()), 2).await;
    let job = app.start(app.job("remote", 3, 2, &[])).await;
    let started = |n: usize| {
        let witness = witness.clone();
        move || {
            let witness = witness.clone();
            async move { witness.started.lock().unwrap().len() == n }
        }
    };
    app.eventually("items 0 and 1 in the worker", WITHIN, started(2))
        .await;
    let asked = Instant::now();
    let done = app
        .client
        .clone()
        .cancel_items(pb::CancelItemsRequest {
            job_id: job.id.clone(),
            indexes: vec![0],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(done.interrupted, [0]);
    app.eventually("item 2 in the freed slot", WITHIN, started(3))
        .await;
    assert!(
        asked.elapsed() < Duration::from_secs(2),
        "{:?}",
        asked.elapsed()
    );
    assert_eq!(
        *witness.stops.lock().unwrap(),
        [(0, Some(StopReason::Cancel))],
        "only item 0 was stopped, as cancelled"
    );
    app.client
        .clone()
        .cancel_items(pb::CancelItemsRequest {
            job_id: job.id.clone(),
            range: Some(pb::ItemRange { first: 1, last: 2 }),
            ..Default::default()
        })
        .await
        .unwrap();
    let ended = app.wait_for(&job.id, pb::JobState::Succeeded, WITHIN).await;
    assert_eq!(ended.counts.unwrap().cancelled, 3);
    let mut stops = witness.stops.lock().unwrap().clone();
    stops.sort_unstable_by_key(|(index, _)| *index);
    assert_eq!(
        stops,
        [
            (0, Some(StopReason::Cancel)),
            (1, Some(StopReason::Cancel)),
            (2, Some(StopReason::Cancel))
        ]
    );
    worker.drain(WITHIN).await.unwrap();
    app.stop().await;
}

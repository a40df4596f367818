//! A RUNNING job of a remote executor that no connected worker serves
//! holds no actors (docs/DESIGN.md, "Jobs that wait hold no actors"):
//! against the real binary, whose Prometheus metrics count the live
//! supervisors and the jobs waiting for workers. While it waits, its
//! control calls and settings still work; once a worker that serves it
//! connects, it runs every item exactly once. A server restarted with such
//! a job supervises it and lets it wait again.

use super::{
    executors::{Executions, Recording},
    harness::{endpoint, get_job, restart, spawn_app, wait_for_state},
    telemetry::{Server, metric, scrape},
};
use jobvisor::{
    pb,
    worker::{Connect, Status, Worker},
};
use jobvisor_testkit::process::free_port;
use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};
use tokio::sync::oneshot;

const WITHIN: Duration = Duration::from_secs(20);

/// A server of the remote executor `remote` with its metrics on a port of
/// its own.
async fn server() -> (Server, SocketAddr) {
    let metrics = SocketAddr::from(([127, 0, 0, 1], free_port().unwrap()));
    let listen = metrics.to_string();
    let server = Server::start(
        &["--remote-executor", "remote", "--metrics-listen", &listen],
        &[],
    )
    .await;
    (server, metrics)
}

/// The live supervisors and the jobs waiting for workers, as the metrics
/// say (NaN for a gauge not yet set, which matches nothing: both are set
/// by the time a job has started and parked).
async fn gauges(metrics: SocketAddr) -> (f64, f64) {
    let text = scrape(metrics).await;
    let read = |name: &str| {
        if text.lines().any(|l| l.starts_with(name)) {
            metric(&text, name)
        } else {
            f64::NAN
        }
    };
    (
        read("jobvisor_job_supervisors "),
        read("jobvisor_jobs_waiting_for_workers "),
    )
}

/// Waits until the metrics show `supervisors` and `waiting`.
async fn wait_gauges(metrics: SocketAddr, supervisors: f64, waiting: f64) {
    let deadline = Instant::now() + WITHIN;
    loop {
        let seen = gauges(metrics).await;
        if seen == (supervisors, waiting) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "expected {supervisors} supervisors and {waiting} waiting jobs, the metrics say {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A job of `remote`, open for more items, of `items` items of 20 ms.
fn remote_job(items: usize) -> pb::StartJobRequest {
    pb::StartJobRequest {
        name: "waiting".into(),
        executor: "remote".into(),
        items: (0..items).map(|i| format!("item-{i}")).collect(),
        concurrency: 2,
        params: [
            ("duration_ms".to_string(), "20".to_string()),
            ("steps".to_string(), "1".to_string()),
        ]
        .into(),
        open: true,
        ..Default::default()
    }
}

/// A worker of `remote` in a task of this process, connected; stops when
/// the sender is dropped or fired.
async fn worker(addr: SocketAddr, log: &Executions, slots: u32) -> oneshot::Sender<()> {
    let connected = Arc::new(Mutex::new(false));
    let seen = connected.clone();
    let worker = Worker::new(
        Connect::new(endpoint(addr)),
        "remote",
        Arc::new(Recording::new(log.clone())),
    )
    .slots(slots)
    .on_status(move |s| {
        if matches!(s, Status::Connected { .. }) {
            *seen.lock().unwrap() = true;
        }
    });
    let (tx, rx) = oneshot::channel::<()>();
    tokio::spawn(worker.run(async {
        let _ = rx.await;
    }));
    let deadline = Instant::now() + WITHIN;
    while !*connected.lock().unwrap() {
        assert!(Instant::now() < deadline, "the worker never connected");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tx
}

/// Every item of `items` ran once, first time, to its end.
fn ran_once_each(log: &Executions, items: u32) {
    let runs = log.all();
    assert_eq!(runs.len(), items as usize, "{runs:?}");
    for index in 0..items {
        let of: Vec<_> = runs.iter().filter(|r| r.index == index).collect();
        assert_eq!(of.len(), 1, "item {index} ran once: {runs:?}");
        assert_eq!((of[0].attempt, of[0].outcome), (1, Some("ok")));
    }
}

#[tokio::test]
async fn a_job_that_no_worker_serves_holds_no_supervisor_and_runs_once_a_worker_connects() {
    let (server, metrics) = server().await;
    let mut client = server.client().await;
    let job = client.start_job(remote_job(4)).await.unwrap().into_inner();
    let id = job.id.clone();
    // RUNNING, waiting for a worker, with no supervisor.
    wait_gauges(metrics, 0.0, 1.0).await;
    let now = get_job(&client, &id).await;
    assert_eq!(now.state(), pb::JobState::Running);
    assert!(now.waiting_for.contains("remote"), "{now:?}");

    // Paused while it waits: a supervisor drains it (nothing ran) and
    // goes; the job no longer waits for workers.
    client
        .pause_job(pb::PauseJobRequest {
            job_id: id.clone(),
            mode: pb::PauseMode::Graceful.into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let paused = wait_for_state(&client, &id, pb::JobState::Paused, WITHIN).await;
    assert!(paused.waiting_for.is_empty(), "{paused:?}");
    wait_gauges(metrics, 0.0, 0.0).await;
    // Resumed: RUNNING again, and waiting with no supervisor again.
    client
        .resume_job(pb::ResumeJobRequest {
            job_id: id.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    wait_gauges(metrics, 0.0, 1.0).await;
    let resumed = get_job(&client, &id).await;
    assert_eq!(resumed.state(), pb::JobState::Running);
    assert!(!resumed.waiting_for.is_empty(), "{resumed:?}");

    // Its settings and items change with no supervisor, in the store.
    let wider = client
        .set_job_concurrency(pb::SetJobConcurrencyRequest {
            job_id: id.clone(),
            concurrency: 3,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(wider.concurrency, 3);
    client
        .add_items(pb::AddItemsRequest {
            job_id: id.clone(),
            items: vec!["item-4".into(), "item-5".into()],
            close: true,
            ..Default::default()
        })
        .await
        .unwrap();
    wait_gauges(metrics, 0.0, 1.0).await;

    // A worker comes: the job is supervised again and runs every item,
    // the added ones too, exactly once.
    let log = Executions::default();
    let stop = worker(server.addr, &log, 2).await;
    let done = wait_for_state(&client, &id, pb::JobState::Succeeded, WITHIN).await;
    assert_eq!(done.concurrency, 3);
    ran_once_each(&log, 6);
    wait_gauges(metrics, 0.0, 0.0).await;
    let _ = stop.send(());
    server.stop().await;
}

#[tokio::test]
async fn a_job_cancelled_while_it_waits_for_workers_ends_cancelled() {
    let (server, metrics) = server().await;
    let mut client = server.client().await;
    let job = client.start_job(remote_job(3)).await.unwrap().into_inner();
    wait_gauges(metrics, 0.0, 1.0).await;
    client
        .cancel_job(pb::CancelJobRequest {
            job_id: job.id.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    let cancelled = wait_for_state(&client, &job.id, pb::JobState::Cancelled, WITHIN).await;
    assert!(cancelled.waiting_for.is_empty(), "{cancelled:?}");
    wait_gauges(metrics, 0.0, 0.0).await;
    // A worker that comes later runs nothing of it.
    let log = Executions::default();
    let stop = worker(server.addr, &log, 2).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(log.all().is_empty(), "{:?}", log.all());
    assert_eq!(
        get_job(&client, &job.id).await.state(),
        pb::JobState::Cancelled
    );
    let _ = stop.send(());
    server.stop().await;
}

/// A restarted server supervises its RUNNING jobs; one that no worker
/// serves waits again, and runs once a worker connects.
#[tokio::test]
async fn a_job_waiting_for_workers_across_a_restart_runs_once_a_worker_connects() {
    let app = spawn_app().await;
    let mut request = remote_job(3);
    request.open = false;
    let job = app.start(request).await;
    let app = restart(app).await;
    let client = app.client.clone();
    let waiting = get_job(&client, &job.id).await;
    assert_eq!(waiting.state(), pb::JobState::Running);
    assert!(!waiting.waiting_for.is_empty(), "{waiting:?}");
    let log = Executions::default();
    let stop = worker(app.addr, &log, 2).await;
    wait_for_state(&client, &job.id, pb::JobState::Succeeded, WITHIN).await;
    ran_once_each(&log, 3);
    let _ = stop.send(());
    app.stop().await;
}

//! The Python worker library (`clients/python`) in real worker processes
//! (`examples/python/worker.py`, which "processes frames" with a
//! checkpoint after each one) against the real server on PostgreSQL, its
//! executor declared with `--remote-executor`: a job runs to the end with
//! every item succeeded once, never more items in a worker than its
//! slots; an immediate pause stops an item at its checkpoint and another
//! process continues it after the resume; a SIGKILLed worker's item is
//! taken over by another worker from its checkpoint, and a frozen one's is
//! revoked when it comes back; a cancel reaches the running handlers;
//! SIGTERM drains a worker, which exits 0 and leaves its item to another;
//! a worker without the `work` permission is refused for good. Plain and
//! `async def` handlers both. And the library's own tests
//! (`clients/python/tests`), which need no server.

use super::connect;
use jobvisor::pb::{self, job_service_client::JobServiceClient};
use jobvisor_testkit::{
    db::TestDb,
    process::{ServerProcess, ServerSpec, free_port},
};
use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};
use tonic::transport::Channel;

/// The remote executor the workers serve.
const EXECUTOR: &str = "frames";

fn repo(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// Fails, saying what to install, when Python 3 with grpcio is missing.
fn require_python() {
    let probe = Command::new("python3")
        .args(["-c", "import grpc, google.protobuf"])
        .output();
    assert!(
        probe.is_ok_and(|o| o.status.success()),
        "these tests need Python 3 with grpcio and protobuf: \
         python3 -m pip install grpcio grpcio-tools (.ci/run installs them)"
    );
}

/// The environment a Python process of these tests runs with: the library
/// from the source tree, no bytecode written into it, output unbuffered.
fn python_env(command: &mut Command) -> &mut Command {
    command
        .env("PYTHONPATH", repo("clients/python/src"))
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("PYTHONUNBUFFERED", "1")
}

/// One `examples/python/worker.py` process; its output (stdout and the
/// library's log on stderr) goes to a file.
struct PyWorker {
    child: Child,
    out: PathBuf,
}

impl PyWorker {
    fn start(addr: SocketAddr, dir: &Path, name: &str, args: &[&str]) -> PyWorker {
        let out = dir.join(format!("{name}.out"));
        let file = std::fs::File::create(&out).unwrap();
        let mut command = Command::new("python3");
        python_env(&mut command)
            .arg(repo("examples/python/worker.py"))
            .arg(addr.to_string())
            .arg(EXECUTOR)
            .args(args)
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file);
        let child = command.spawn().expect("python3 starts");
        PyWorker { child, out }
    }

    fn output(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }

    /// The output's lines that start with `prefix`.
    fn lines(&self, prefix: &str) -> Vec<String> {
        self.output()
            .lines()
            .filter(|l| l.starts_with(prefix))
            .map(str::to_string)
            .collect()
    }

    /// Waits (at most `within`) for a line starting with `prefix`.
    async fn wait_line(&mut self, prefix: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            if let Some(line) = self.lines(prefix).into_iter().next() {
                return line;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "the worker exited ({status}) before printing {prefix:?}:\n{}",
                    self.output()
                );
            }
            assert!(
                Instant::now() < deadline,
                "no {prefix:?} from the worker within {within:?}:\n{}",
                self.output()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn signal(&self, signal: rustix::process::Signal) {
        let pid = rustix::process::Pid::from_raw(self.child.id() as i32).unwrap();
        rustix::process::kill_process(pid, signal).unwrap();
    }

    /// Waits (at most `within`) for the process to exit.
    async fn exit(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the worker did not exit within {within:?}:\n{}",
                self.output()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Checks the output has none of the library's protocol complaints.
    fn assert_clean(&self) {
        let out = self.output();
        for bad in [
            "more items than this worker's",
            "refused a message",
            "Traceback",
        ] {
            assert!(!out.contains(bad), "{bad:?} in the worker's output:\n{out}");
        }
    }
}

impl Drop for PyWorker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A server with the remote executor on a fresh database, a short worker
/// lease (a killed worker's items go back after 2 s).
struct Fixture {
    server: Option<ServerProcess>,
    addr: SocketAddr,
    db: TestDb,
    dir: tempfile::TempDir,
}

impl Fixture {
    async fn start() -> Fixture {
        Fixture::start_with(&[]).await
    }

    /// [`Fixture::start`], with more `serve` arguments.
    async fn start_with(more: &[String]) -> Fixture {
        require_python();
        let db = TestDb::create_with_prefix("jv_pyworker_").await;
        let dir = tempfile::tempdir().unwrap();
        let spec = ServerSpec {
            binary: PathBuf::from(env!("CARGO_BIN_EXE_jobvisor")),
            addr: SocketAddr::from(([127, 0, 0, 1], free_port().unwrap())),
            database_url: db.url.clone(),
            args: ["--remote-executor", EXECUTOR, "--worker-lease-time", "2s"]
                .map(String::from)
                .into_iter()
                .chain(more.iter().cloned())
                .collect(),
            log: dir.path().join("server.log"),
            env: vec![],
            cwd: None,
        };
        let server = ServerProcess::start(&spec).await.unwrap();
        Fixture {
            server: Some(server),
            addr: spec.addr,
            db,
            dir,
        }
    }

    fn worker(&self, name: &str, args: &[&str]) -> PyWorker {
        PyWorker::start(self.addr, self.dir.path(), name, args)
    }

    async fn client(&self) -> JobServiceClient<Channel> {
        connect(self.addr).await
    }

    async fn finish(mut self) {
        drop(self.server.take());
        self.db.drop_db().await;
    }
}

/// A job of `items` clips of `frames` frames, `frame_ms` each.
fn clips(items: u32, frames: u32, frame_ms: u32, concurrency: u32) -> pb::StartJobRequest {
    pb::StartJobRequest {
        name: "python-frames".into(),
        executor: EXECUTOR.into(),
        items: (0..items).map(|i| format!("clip-{i}")).collect(),
        concurrency,
        params: [
            ("frames".to_string(), frames.to_string()),
            ("frame_ms".into(), frame_ms.to_string()),
        ]
        .into(),
        ..Default::default()
    }
}

async fn start(client: &mut JobServiceClient<Channel>, job: pb::StartJobRequest) -> String {
    client.start_job(job).await.unwrap().into_inner().id
}

async fn get(client: &mut JobServiceClient<Channel>, id: &str) -> pb::Job {
    client
        .get_job(pb::GetJobRequest { job_id: id.into() })
        .await
        .unwrap()
        .into_inner()
}

async fn items(client: &mut JobServiceClient<Channel>, id: &str) -> Vec<pb::Item> {
    client
        .list_job_items(pb::ListJobItemsRequest {
            job_id: id.into(),
            page_size: 1000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .items
}

/// The frame an item's checkpoint says it reached (0 without one).
fn frame(item: &pb::Item) -> u32 {
    let text = String::from_utf8_lossy(&item.checkpoint);
    text.strip_prefix("frame=")
        .map(|n| n.parse().unwrap())
        .unwrap_or(0)
}

/// Waits (at most 20 s) until the job is in `state`.
async fn wait_state(
    client: &mut JobServiceClient<Channel>,
    id: &str,
    state: pb::JobState,
) -> pb::Job {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let job = get(client, id).await;
        if job.state == state as i32 {
            return job;
        }
        assert!(
            Instant::now() < deadline,
            "the job did not become {state:?}: {job:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits (at most 20 s) until item `index` has a checkpoint of at least
/// frame `at_least`; returns it.
async fn wait_frame(
    client: &mut JobServiceClient<Channel>,
    id: &str,
    index: usize,
    at_least: u32,
) -> u32 {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let reached = frame(&items(client, id).await[index]);
        if reached >= at_least {
            return reached;
        }
        assert!(
            Instant::now() < deadline,
            "item {index} never reached frame {at_least} (at {reached})"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The number in `key=N` on a line of the example's output.
fn field(line: &str, key: &str) -> u32 {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("no {key}= in {line:?}"))
        .parse()
        .unwrap()
}

async fn runs_to_success(handler: &[&str]) {
    let f = Fixture::start().await;
    let mut args = vec!["--slots", "3"];
    args.extend_from_slice(handler);
    let mut worker = f.worker("w", &args);
    let mut client = f.client().await;
    // The job would run 6 at once: the worker's 3 slots bound it.
    let id = start(&mut client, clips(12, 4, 20, 6)).await;
    let done = super::wait_end(client.clone(), id.clone()).await;
    assert_eq!(
        done.state,
        pb::JobState::Succeeded as i32,
        "{done:?}\n{}",
        worker.output()
    );
    for item in items(&mut client, &id).await {
        assert_eq!(item.state, pb::ItemState::Succeeded as i32, "{item:?}");
        assert_eq!(item.attempts, 1, "{item:?}");
        assert_eq!(item.result, format!("clip-{}: 4 frames", item.index));
        assert_eq!(frame(&item), 4, "{item:?}");
        // Each item's handler ran to the end exactly once.
        assert_eq!(
            worker.lines(&format!("done item={} ", item.index)).len(),
            1,
            "{}",
            worker.output()
        );
    }
    assert_eq!(worker.lines("started ").len(), 12, "{}", worker.output());
    // Each clip's frames counted once, by the attempt that finished it.
    assert_eq!(done.counters.get("frames"), Some(&48), "{done:?}");
    worker.assert_clean();
    worker.signal(rustix::process::Signal::TERM);
    let status = worker.exit(Duration::from_secs(10)).await;
    assert_eq!(status.code(), Some(0), "{}", worker.output());
    worker
        .wait_line("worker exits", Duration::from_secs(1))
        .await;
    f.finish().await;
}

#[tokio::test]
async fn a_python_worker_runs_a_job_to_success_each_item_once() {
    runs_to_success(&[]).await;
}

#[tokio::test]
async fn an_async_python_worker_runs_a_job_to_success_each_item_once() {
    runs_to_success(&["--async"]).await;
}

/// An immediate pause stops the running item at its checkpoint (the
/// handler sees `stopping`, reason pause, and returns: `stopped`); the
/// attempt is not counted. After the resume another process (this time
/// with a plain handler) continues from that checkpoint.
#[tokio::test]
async fn an_immediate_pause_stops_the_item_and_another_process_continues_it() {
    let f = Fixture::start().await;
    let mut first = f.worker("first", &["--slots", "1", "--async"]);
    let mut client = f.client().await;
    let id = start(&mut client, clips(1, 40, 50, 1)).await;
    first
        .wait_line("started item=0 attempt=1 frame=0", Duration::from_secs(20))
        .await;
    wait_frame(&mut client, &id, 0, 5).await;
    client
        .pause_job(pb::PauseJobRequest {
            job_id: id.clone(),
            mode: pb::PauseMode::Immediate as i32,
            reason: "python test".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    wait_state(&mut client, &id, pb::JobState::Paused).await;
    let stopping = first
        .wait_line("stopping item=0", Duration::from_secs(5))
        .await;
    assert!(stopping.ends_with("reason=pause"), "{stopping}");
    let item = items(&mut client, &id).await.remove(0);
    assert_eq!(item.state, pb::ItemState::Pending as i32, "{item:?}");
    assert_eq!(item.attempts, 0, "a pause does not count the attempt");
    let kept = frame(&item);
    assert!(kept >= 5, "{item:?}");
    assert_eq!(field(&stopping, "frame"), kept, "stopped at its checkpoint");
    // The first worker goes away (a drain: it holds nothing).
    first.signal(rustix::process::Signal::TERM);
    assert_eq!(first.exit(Duration::from_secs(10)).await.code(), Some(0));

    let mut second = f.worker("second", &["--slots", "1"]);
    client
        .resume_job(pb::ResumeJobRequest {
            job_id: id.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    let started = second
        .wait_line("started item=0", Duration::from_secs(20))
        .await;
    assert_eq!(
        field(&started, "frame"),
        kept,
        "continued at the checkpoint"
    );
    assert_eq!(field(&started, "attempt"), 1, "{started}");
    let done = super::wait_end(client.clone(), id.clone()).await;
    assert_eq!(done.state, pb::JobState::Succeeded as i32, "{done:?}");
    let item = items(&mut client, &id).await.remove(0);
    assert_eq!((item.attempts, frame(&item)), (1, 40), "{item:?}");
    first.assert_clean();
    second.assert_clean();
    f.finish().await;
}

/// A worker killed with SIGKILL mid-item: once its lease ran out (2 s),
/// the item goes to the other worker, which continues from the last
/// checkpoint; the lost attempt counts.
#[tokio::test]
async fn a_killed_workers_item_is_taken_over_from_its_checkpoint() {
    let f = Fixture::start().await;
    let mut doomed = f.worker("doomed", &["--slots", "1"]);
    let mut client = f.client().await;
    let id = start(&mut client, clips(1, 60, 50, 1)).await;
    doomed
        .wait_line("started item=0 attempt=1", Duration::from_secs(20))
        .await;
    let mut heir = f.worker("heir", &["--slots", "1", "--async"]);
    heir.wait_line("worker pid=", Duration::from_secs(10)).await;
    let before = wait_frame(&mut client, &id, 0, 5).await;
    doomed.signal(rustix::process::Signal::KILL);
    doomed.exit(Duration::from_secs(5)).await;
    let started = heir
        .wait_line("started item=0", Duration::from_secs(20))
        .await;
    assert_eq!(field(&started, "attempt"), 2, "{started}");
    assert!(
        field(&started, "frame") >= before,
        "{started} (checkpoint was {before})"
    );
    let done = super::wait_end(client.clone(), id.clone()).await;
    assert_eq!(done.state, pb::JobState::Succeeded as i32, "{done:?}");
    let item = items(&mut client, &id).await.remove(0);
    assert_eq!((item.attempts, frame(&item)), (2, 60), "{item:?}");
    // Two attempts, one count: only the attempt that succeeded reports.
    assert_eq!(done.counters.get("frames"), Some(&60), "{done:?}");
    heir.assert_clean();
    f.finish().await;
}

/// A worker frozen (SIGSTOP) past its lease loses its item to the other
/// worker; thawed, it finds its session gone when it reconnects: the item
/// is revoked in it (its handler sees `stopping`, reason revoked) and
/// nothing it had is reported. The item is completed once, by the other.
#[tokio::test]
async fn a_frozen_worker_loses_its_item_and_reports_nothing_for_it() {
    let f = Fixture::start().await;
    let mut zombie = f.worker("zombie", &["--slots", "1", "--async"]);
    let mut client = f.client().await;
    let id = start(&mut client, clips(1, 60, 50, 1)).await;
    zombie
        .wait_line("started item=0 attempt=1", Duration::from_secs(20))
        .await;
    let mut heir = f.worker("heir", &["--slots", "1"]);
    heir.wait_line("worker pid=", Duration::from_secs(10)).await;
    let before = wait_frame(&mut client, &id, 0, 3).await;
    zombie.signal(rustix::process::Signal::STOP);
    let started = heir
        .wait_line("started item=0", Duration::from_secs(20))
        .await;
    assert_eq!(field(&started, "attempt"), 2, "{started}");
    assert!(field(&started, "frame") >= before, "{started}");
    zombie.signal(rustix::process::Signal::CONT);
    zombie
        .wait_line("stopping item=0", Duration::from_secs(20))
        .await;
    let done = super::wait_end(client.clone(), id.clone()).await;
    assert_eq!(done.state, pb::JobState::Succeeded as i32, "{done:?}");
    let item = items(&mut client, &id).await.remove(0);
    assert_eq!((item.attempts, frame(&item)), (2, 60), "{item:?}");
    assert_eq!(heir.lines("done item=0").len(), 1, "{}", heir.output());
    let out = zombie.output();
    assert!(out.contains("reason=revoked"), "{out}");
    assert!(!out.contains("done item=0"), "{out}");
    // Still a worker: it drains and exits 0.
    zombie.signal(rustix::process::Signal::TERM);
    assert_eq!(zombie.exit(Duration::from_secs(10)).await.code(), Some(0));
    heir.assert_clean();
    f.finish().await;
}

/// A cancel interrupts the running handlers: they see `stopping` with
/// reason cancel, return, and the items end CANCELLED at once.
#[tokio::test]
async fn a_cancel_sets_stopping_in_the_running_handlers() {
    let f = Fixture::start().await;
    let mut worker = f.worker("w", &["--slots", "2"]);
    let mut client = f.client().await;
    let id = start(&mut client, clips(2, 400, 50, 2)).await;
    for i in 0..2 {
        worker
            .wait_line(&format!("started item={i}"), Duration::from_secs(20))
            .await;
    }
    let asked = Instant::now();
    client
        .cancel_job(pb::CancelJobRequest {
            job_id: id.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    let done = super::wait_end(client.clone(), id.clone()).await;
    assert_eq!(done.state, pb::JobState::Cancelled as i32, "{done:?}");
    assert!(
        asked.elapsed() < Duration::from_secs(5),
        "the handlers stopped at once: {:?}",
        asked.elapsed()
    );
    for i in 0..2 {
        let line = worker
            .wait_line(&format!("stopping item={i}"), Duration::from_secs(5))
            .await;
        assert!(line.ends_with("reason=cancel"), "{line}");
    }
    for item in items(&mut client, &id).await {
        assert_eq!(item.state, pb::ItemState::Cancelled as i32, "{item:?}");
    }
    assert!(worker.lines("done ").is_empty(), "{}", worker.output());
    worker.assert_clean();
    f.finish().await;
}

/// SIGTERM drains a worker: its handler sees `stopping` (reason drain),
/// the item is reported `stopped` and goes back to pending with its
/// checkpoint, the attempt not counted; the worker exits 0. The job then
/// waits for a worker, and the next one continues the item.
#[tokio::test]
async fn sigterm_drains_a_worker_and_its_item_continues_in_the_next() {
    let f = Fixture::start().await;
    let mut first = f.worker("first", &["--slots", "1", "--async"]);
    let mut client = f.client().await;
    let id = start(&mut client, clips(1, 60, 50, 1)).await;
    first
        .wait_line("started item=0 attempt=1", Duration::from_secs(20))
        .await;
    wait_frame(&mut client, &id, 0, 3).await;
    first.signal(rustix::process::Signal::TERM);
    let status = first.exit(Duration::from_secs(10)).await;
    assert_eq!(status.code(), Some(0), "{}", first.output());
    let stopping = first
        .wait_line("stopping item=0", Duration::from_secs(1))
        .await;
    assert!(stopping.ends_with("reason=drain"), "{stopping}");
    let item = items(&mut client, &id).await.remove(0);
    assert_eq!(item.state, pb::ItemState::Pending as i32, "{item:?}");
    assert_eq!(item.attempts, 0, "a drained item's attempt is not counted");
    let kept = frame(&item);
    assert_eq!(field(&stopping, "frame"), kept);
    let job = get(&mut client, &id).await;
    assert_eq!(job.state, pb::JobState::Running as i32, "{job:?}");
    assert_eq!(
        job.waiting_for,
        format!("waiting for a worker for executor {EXECUTOR:?}")
    );

    let mut second = f.worker("second", &["--slots", "1"]);
    let started = second
        .wait_line("started item=0", Duration::from_secs(20))
        .await;
    assert_eq!(
        (field(&started, "attempt"), field(&started, "frame")),
        (1, kept),
        "{started}"
    );
    let done = super::wait_end(client.clone(), id.clone()).await;
    assert_eq!(done.state, pb::JobState::Succeeded as i32, "{done:?}");
    first.assert_clean();
    second.assert_clean();
    f.finish().await;
}

/// Tokens: a worker whose token lacks the `work` permission, or that has
/// none, is refused for good (it does not retry: it exits 2, naming the
/// error); one whose token has it runs the job.
#[tokio::test]
async fn a_worker_needs_a_token_with_the_work_permission() {
    use jobvisor::api::auth::{Permission, new_token};
    let scope = Default::default();
    let (work, work_entry) = new_token("py-worker", &[Permission::Work], &scope);
    let (read, read_entry) = new_token("reader", &[Permission::Read], &scope);
    let (admin, admin_entry) = new_token("ops", &[Permission::Admin], &scope);
    let tokens = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        tokens.path(),
        serde_json::json!({ "tokens": [work_entry, read_entry, admin_entry] }).to_string(),
    )
    .unwrap();
    let f =
        Fixture::start_with(&["--auth-tokens".into(), tokens.path().display().to_string()]).await;

    for (name, token, code) in [
        ("reader", read.as_str(), "PERMISSION_DENIED"),
        ("nobody", "", "UNAUTHENTICATED"),
    ] {
        let mut refused = f.worker(name, &["--token", token]);
        let status = refused.exit(Duration::from_secs(15)).await;
        assert_eq!(status.code(), Some(2), "{}", refused.output());
        let line = refused
            .wait_line("worker refused:", Duration::from_secs(1))
            .await;
        assert!(line.contains(code), "{line}");
    }

    let mut worker = f.worker("w", &["--token", &work]);
    let mut client = f.client().await;
    let mut request = tonic::Request::new(clips(3, 2, 10, 3));
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {admin}").parse().unwrap());
    let id = client.start_job(request).await.unwrap().into_inner().id;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut request = tonic::Request::new(pb::GetJobRequest { job_id: id.clone() });
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {admin}").parse().unwrap());
        let job = client.get_job(request).await.unwrap().into_inner();
        if job.end_time.is_some() {
            assert_eq!(job.state, pb::JobState::Succeeded as i32, "{job:?}");
            break;
        }
        assert!(Instant::now() < deadline, "{job:?}\n{}", worker.output());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(worker.lines("done ").len(), 3, "{}", worker.output());
    worker.signal(rustix::process::Signal::TERM);
    assert_eq!(worker.exit(Duration::from_secs(10)).await.code(), Some(0));
    f.finish().await;
}

/// The library's own tests: pure rules (reports, error texts, backoff),
/// the package (stubs current, dependencies), and the protocol against a
/// scripted WorkerService.
#[test]
fn the_python_librarys_own_tests_pass() {
    require_python();
    let tests = repo("clients/python/tests");
    let mut command = Command::new("python3");
    python_env(&mut command)
        .env(
            "PYTHONPATH",
            std::env::join_paths([repo("clients/python/src"), tests.clone()]).unwrap(),
        )
        .args(["-m", "unittest", "discover", "-v", "-s"])
        .arg(&tests)
        .arg("-t")
        .arg(&tests);
    let out = command.output().unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the Python tests failed:\n{text}");
    assert!(text.contains("\nOK"), "{text}");
}

//! `jobvisor worker` as real processes, against a real `jobvisor serve
//! --remote-executor remote` (a lease of 1 s, an interrupt grace of 2 s),
//! running a shell script in the exec protocol: items run exactly once;
//! an immediate pause, a cancel and a drain stop the running programs; a
//! paused item continues from its checkpoint on another worker process; a
//! SIGKILLed worker's items are taken over from their checkpoints within
//! the lease; a graceful pause lets the items in flight finish. With
//! three replicas (`--multi-replica`), a worker connected to one replica
//! runs the items of a job another replica owns, and an immediate pause
//! reaches it there.

use super::{connect, wait_end};
use jobvisor::pb;
use jobvisor_testkit::{
    db::TestDb,
    process::{ServerProcess, ServerSpec, descendants, free_port, tail},
};
use std::{
    net::SocketAddr,
    path::PathBuf,
    process::{Child, Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

/// One item in the exec protocol: `JOBVISOR_PARAM_STEPS` steps of 100 ms
/// from its checkpoint, a checkpoint after each; every start, stop (on
/// SIGTERM) and end is logged with the item, attempt, step and worker.
const SCRIPT: &str = r#"
step=${JOBVISOR_CHECKPOINT:-0}
steps=${JOBVISOR_PARAM_STEPS:-5}
log() { echo "$1 $JOBVISOR_ITEM_INDEX $JOBVISOR_ATTEMPT $step $WORKER_TAG" >> "$WORK_LOG"; }
trap 'log stopped; exit 143' TERM
log start
while [ "$step" -lt "$steps" ]; do
  sleep 0.1
  step=$((step + 1))
  echo "@checkpoint $step"
  echo "@progress $step/$steps"
done
echo "@result done-$JOBVISOR_ITEM"
log end
"#;

const WITHIN: Duration = Duration::from_secs(20);

/// A server, the script, and the log every program writes.
struct Setup {
    /// Killed when the test ends, before the rest goes.
    servers: Vec<ServerProcess>,
    /// The first server's address (the one most tests use).
    addr: SocketAddr,
    /// Every server's address (replica `i` is `r{i}`).
    addrs: Vec<SocketAddr>,
    /// The script, its log, the server's and the workers' output.
    dir: tempfile::TempDir,
    _db: TestDb,
}

impl Setup {
    async fn start() -> Setup {
        Setup::start_replicas(0).await
    }

    /// One server, or `replicas` servers in multi-replica mode (ids `r0`,
    /// `r1`, …; leases of 3 s, so they find each other's workers within a
    /// second).
    async fn start_replicas(replicas: usize) -> Setup {
        let db = TestDb::create().await;
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("item.sh"), SCRIPT).unwrap();
        std::fs::write(dir.path().join("work.log"), "").unwrap();
        let spec = |i: usize| {
            let mut args = [
                "--remote-executor",
                "remote",
                "--worker-lease-time",
                "1s",
                "--worker-interrupt-grace",
                "2s",
            ]
            .map(String::from)
            .to_vec();
            if replicas > 0 {
                args.extend(
                    [
                        "--multi-replica",
                        "--lease-timeout",
                        "3s",
                        "--replica-id",
                        &format!("r{i}"),
                    ]
                    .map(String::from),
                );
            }
            ServerSpec {
                binary: PathBuf::from(env!("CARGO_BIN_EXE_jobvisor")),
                addr: SocketAddr::from(([127, 0, 0, 1], free_port().unwrap())),
                database_url: db.url.clone(),
                args,
                log: dir.path().join(if i == 0 {
                    "server.log".to_string()
                } else {
                    format!("server-{i}.log")
                }),
                env: vec![],
                cwd: None,
            }
        };
        let specs: Vec<ServerSpec> = (0..replicas.max(1)).map(spec).collect();
        // The first applies the migrations; the others start together.
        let mut servers = vec![ServerProcess::start(&specs[0]).await.unwrap()];
        let rest = futures::future::join_all(specs[1..].iter().map(ServerProcess::start)).await;
        servers.extend(rest.into_iter().map(Result::unwrap));
        Setup {
            _db: db,
            addr: specs[0].addr,
            addrs: specs.iter().map(|s| s.addr).collect(),
            dir,
            servers,
        }
    }

    /// A `jobvisor worker` process tagged `tag` in the log, connected.
    async fn worker(&self, tag: &str, slots: u32) -> WorkerProcess {
        self.worker_at(self.addr, tag, slots).await
    }

    /// A `jobvisor worker` process connected to the server at `addr`.
    async fn worker_at(&self, addr: SocketAddr, tag: &str, slots: u32) -> WorkerProcess {
        let stderr = self.dir.path().join(format!("worker-{tag}.log"));
        let child = Command::new(env!("CARGO_BIN_EXE_jobvisor"))
            .args(["worker", "--server"])
            .arg(format!("http://{addr}"))
            .args(["--executor", "remote", "--slots", &slots.to_string()])
            .args(["--kill-grace", "2s", "--", "sh"])
            .arg(self.dir.path().join("item.sh"))
            .env("WORK_LOG", self.dir.path().join("work.log"))
            .env("WORKER_TAG", tag)
            .env("JOBVISOR_LOG_FORMAT", "text")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap();
        let mut worker = WorkerProcess { child, stderr };
        worker.wait_said("connected to", WITHIN).await;
        worker
    }

    fn job(&self, items: u32, concurrency: u32, steps: u32) -> pb::StartJobRequest {
        pb::StartJobRequest {
            name: "remote-script".into(),
            executor: "remote".into(),
            items: (0..items).map(|i| format!("item-{i}")).collect(),
            concurrency,
            params: [
                ("steps".to_string(), steps.to_string()),
                // A param cannot choose the worker's program.
                ("command".into(), "/bin/false".into()),
            ]
            .into(),
            ..Default::default()
        }
    }

    async fn start_job(&self, request: pb::StartJobRequest) -> String {
        connect(self.addr)
            .await
            .start_job(request)
            .await
            .unwrap()
            .into_inner()
            .id
    }

    async fn items(&self, id: &str) -> Vec<pb::Item> {
        self.items_at(0, id).await
    }

    /// The job's items, as server `i` reads them.
    async fn items_at(&self, i: usize, id: &str) -> Vec<pb::Item> {
        connect(self.addrs[i])
            .await
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

    async fn get(&self, id: &str) -> pb::Job {
        connect(self.addr)
            .await
            .get_job(pb::GetJobRequest { job_id: id.into() })
            .await
            .unwrap()
            .into_inner()
    }

    /// Waits until the job is in `state`.
    async fn wait_state(&self, id: &str, state: pb::JobState) -> pb::Job {
        let deadline = Instant::now() + WITHIN;
        loop {
            let job = self.get(id).await;
            if job.state == state as i32 {
                return job;
            }
            assert!(
                Instant::now() < deadline,
                "the job is not {state:?}: {job:?}; server log:\n{}",
                tail(&self.dir.path().join("server.log"))
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until `n` items have a checkpoint of at least `step`; returns
    /// the checkpoints by index.
    async fn checkpointed(&self, id: &str, n: usize, step: u32) -> Vec<(u32, u32)> {
        let deadline = Instant::now() + WITHIN;
        loop {
            let kept: Vec<(u32, u32)> = self
                .items(id)
                .await
                .iter()
                .filter_map(|i| {
                    let c = std::str::from_utf8(&i.checkpoint).ok()?.parse().ok()?;
                    (c >= step).then_some((i.index, c))
                })
                .collect();
            if kept.len() >= n {
                return kept;
            }
            assert!(
                Instant::now() < deadline,
                "only {kept:?} checkpointed; log:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn pause(&self, id: &str, mode: pb::PauseMode) {
        connect(self.addr)
            .await
            .pause_job(pb::PauseJobRequest {
                job_id: id.into(),
                mode: mode as i32,
                ..Default::default()
            })
            .await
            .unwrap();
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("work.log")).unwrap()
    }

    /// The script's log: (event, index, attempt, step, worker).
    fn log(&self) -> Vec<Line> {
        self.log_text()
            .lines()
            .map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                Line {
                    event: f[0].to_string(),
                    index: f[1].parse().unwrap(),
                    attempt: f[2].parse().unwrap(),
                    step: f[3].parse().unwrap(),
                    worker: f[4].to_string(),
                }
            })
            .collect()
    }

    /// Waits until the log has `n` lines of `event`.
    async fn wait_logged(&self, event: &str, n: usize) -> Vec<Line> {
        let deadline = Instant::now() + WITHIN;
        loop {
            let found: Vec<Line> = self
                .log()
                .into_iter()
                .filter(|l| l.event == event)
                .collect();
            if found.len() >= n {
                return found;
            }
            assert!(
                Instant::now() < deadline,
                "{n} × {event:?} not logged:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// One line of the script's log.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Line {
    event: String,
    index: u32,
    attempt: u32,
    step: u32,
    worker: String,
}

/// A `jobvisor worker` process.
struct WorkerProcess {
    child: Child,
    /// Where its status lines go.
    stderr: PathBuf,
}

impl WorkerProcess {
    fn said(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    async fn wait_said(&mut self, what: &str, within: Duration) {
        let deadline = Instant::now() + within;
        while !self.said().contains(what) {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("the worker exited ({status}):\n{}", self.said());
            }
            assert!(
                Instant::now() < deadline,
                "the worker did not say {what:?}:\n{}",
                self.said()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGKILL of the worker and the programs it runs, at once (as a
    /// container runtime kills a container).
    fn kill9(&mut self) {
        use rustix::process::{Pid, Signal, kill_process};
        let root = self.child.id();
        let signal = |pid: u32, sig: Signal| {
            if let Some(pid) = Pid::from_raw(pid as i32) {
                let _ = kill_process(pid, sig);
            }
        };
        signal(root, Signal::STOP);
        let tree = descendants(root);
        for pid in &tree {
            signal(*pid, Signal::STOP);
        }
        self.child.kill().unwrap();
        for pid in tree {
            signal(pid, Signal::KILL);
        }
        self.child.wait().unwrap();
    }

    /// SIGTERM; its exit status within `within`.
    async fn terminate(&mut self, within: Duration) -> ExitStatus {
        let pid = rustix::process::Pid::from_raw(self.child.id() as i32).unwrap();
        rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the worker did not exit within {within:?} of SIGTERM:\n{}",
                self.said()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.kill9();
        }
    }
}

/// Each index's lines of `event`.
fn of(lines: &[Line], event: &str, index: u32) -> Vec<Line> {
    lines
        .iter()
        .filter(|l| l.event == event && l.index == index)
        .cloned()
        .collect()
}

#[tokio::test]
async fn worker_processes_run_every_item_exactly_once_with_the_job_s_params_as_variables() {
    let s = Setup::start().await;
    let _a = s.worker("A", 2).await;
    let _b = s.worker("B", 2).await;
    let id = s.start_job(s.job(8, 8, 3)).await;
    let job = wait_end(connect(s.addr).await, id.clone()).await;
    assert_eq!(job.state, pb::JobState::Succeeded as i32, "{job:?}");
    let log = s.log();
    for index in 0..8 {
        let starts = of(&log, "start", index);
        let ends = of(&log, "end", index);
        assert_eq!((starts.len(), ends.len()), (1, 1), "item {index}: {log:?}");
        assert_eq!(
            ends[0].step, 3,
            "JOBVISOR_PARAM_STEPS=3 reached the program"
        );
    }
    let workers: std::collections::BTreeSet<&str> = log.iter().map(|l| l.worker.as_str()).collect();
    assert_eq!(workers.len(), 2, "both workers took items: {log:?}");
    for item in s.items(&id).await {
        assert_eq!(item.result, format!("done-{}", item.payload));
        assert_eq!(item.attempts, 1);
    }
}

#[tokio::test]
async fn an_immediate_pause_then_resume_continues_from_the_checkpoint_on_another_worker_process() {
    let s = Setup::start().await;
    let mut a = s.worker("A", 1).await;
    let id = s.start_job(s.job(1, 1, 60)).await;
    s.checkpointed(&id, 1, 3).await;
    let asked = Instant::now();
    s.pause(&id, pb::PauseMode::Immediate).await;
    s.wait_state(&id, pb::JobState::Paused).await;
    assert!(
        asked.elapsed() < Duration::from_secs(2),
        "the program stopped at once: {:?}",
        asked.elapsed()
    );
    let stopped = s.wait_logged("stopped", 1).await;
    assert_eq!(stopped[0].worker, "A");
    let kept: u32 = std::str::from_utf8(&s.items(&id).await[0].checkpoint)
        .unwrap()
        .parse()
        .unwrap();
    assert!(kept >= 3);
    assert_eq!(a.terminate(Duration::from_secs(5)).await.code(), Some(0));

    let _b = s.worker("B", 1).await;
    connect(s.addr)
        .await
        .resume_job(pb::ResumeJobRequest {
            job_id: id.clone(),
            request_id: String::new(),
        })
        .await
        .unwrap();
    let job = wait_end(connect(s.addr).await, id.clone()).await;
    assert_eq!(job.state, pb::JobState::Succeeded as i32, "{job:?}");
    let log = s.log();
    let starts = of(&log, "start", 0);
    assert_eq!(starts.len(), 2, "{log:?}");
    assert_eq!(
        (starts[1].worker.as_str(), starts[1].attempt, starts[1].step),
        ("B", 1, kept),
        "on B, the pause not counted, from the checkpoint: {log:?}"
    );
    assert_eq!(of(&log, "end", 0).len(), 1);
}

#[tokio::test]
async fn a_sigkilled_worker_s_item_is_taken_over_from_its_checkpoint_within_the_lease() {
    let s = Setup::start().await;
    let mut a = s.worker("A", 1).await;
    let id = s.start_job(s.job(1, 1, 60)).await;
    s.checkpointed(&id, 1, 3).await;
    let _b = s.worker("B", 1).await;
    let killed = Instant::now();
    a.kill9();
    let starts = s.wait_logged("start", 2).await;
    let took = killed.elapsed();
    assert!(
        took < Duration::from_secs(3),
        "lease 1 s, taken over after {took:?}"
    );
    assert_eq!(starts[1].worker, "B");
    assert_eq!(starts[1].attempt, 2, "the lost attempt counts");
    assert!(starts[1].step >= 3, "from the checkpoint: {starts:?}");
    let job = wait_end(connect(s.addr).await, id.clone()).await;
    assert_eq!(job.state, pb::JobState::Succeeded as i32, "{job:?}");
    let ends = of(&s.log(), "end", 0);
    assert_eq!(ends.len(), 1, "{:?}", s.log());
    assert_eq!(ends[0].worker, "B");
}

#[tokio::test]
async fn a_cancel_reaches_the_running_programs() {
    let s = Setup::start().await;
    let _a = s.worker("A", 2).await;
    let id = s.start_job(s.job(2, 2, 200)).await;
    s.checkpointed(&id, 2, 1).await;
    let asked = Instant::now();
    connect(s.addr)
        .await
        .cancel_job(pb::CancelJobRequest {
            job_id: id.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    s.wait_state(&id, pb::JobState::Cancelled).await;
    assert!(
        asked.elapsed() < Duration::from_secs(2),
        "{:?}",
        asked.elapsed()
    );
    let stopped = s.wait_logged("stopped", 2).await;
    assert_eq!(stopped.len(), 2);
    assert!(s.log().iter().all(|l| l.event != "end"), "{:?}", s.log());
}

#[tokio::test]
async fn a_graceful_pause_lets_the_items_in_flight_finish() {
    let s = Setup::start().await;
    let _a = s.worker("A", 2).await;
    let id = s.start_job(s.job(6, 2, 10)).await;
    s.wait_logged("start", 2).await;
    s.pause(&id, pb::PauseMode::Graceful).await;
    s.wait_state(&id, pb::JobState::Paused).await;
    let log = s.log();
    let started: Vec<&Line> = log.iter().filter(|l| l.event == "start").collect();
    let ended: Vec<&Line> = log.iter().filter(|l| l.event == "end").collect();
    assert_eq!(started.len(), 2, "nothing new started: {log:?}");
    assert_eq!(ended.len(), 2, "the two in flight finished: {log:?}");
    assert!(log.iter().all(|l| l.event != "stopped"), "{log:?}");
    let items = s.items(&id).await;
    let succeeded = items
        .iter()
        .filter(|i| i.state == pb::ItemState::Succeeded as i32)
        .count();
    let pending = items
        .iter()
        .filter(|i| i.state == pb::ItemState::Pending as i32)
        .count();
    assert_eq!((succeeded, pending), (2, 4), "{items:?}");
}

#[tokio::test]
async fn a_worker_killed_and_restarted_continues_its_items_from_their_checkpoints() {
    let s = Setup::start().await;
    let mut a = s.worker("A", 2).await;
    let id = s.start_job(s.job(4, 2, 20)).await;
    let kept = s.checkpointed(&id, 2, 3).await;
    a.kill9();
    let _again = s.worker("A2", 2).await;
    let job = wait_end(connect(s.addr).await, id.clone()).await;
    assert_eq!(job.state, pb::JobState::Succeeded as i32, "{job:?}");
    let log = s.log();
    for index in 0..4 {
        assert_eq!(of(&log, "end", index).len(), 1, "item {index}: {log:?}");
    }
    for (index, step) in kept {
        let again = of(&log, "start", index);
        let last = again.last().unwrap();
        assert_eq!(last.worker, "A2", "{log:?}");
        assert_eq!(last.attempt, 2, "{log:?}");
        assert!(last.step >= step, "from its checkpoint: {log:?}");
    }
}

#[tokio::test]
async fn sigterm_drains_a_worker_process_and_its_items_continue_elsewhere_uncounted() {
    let s = Setup::start().await;
    let mut a = s.worker("A", 2).await;
    let id = s.start_job(s.job(2, 2, 60)).await;
    let kept = s.checkpointed(&id, 2, 3).await;
    let asked = Instant::now();
    let status = a.terminate(Duration::from_secs(5)).await;
    assert_eq!(status.code(), Some(0), "{}", a.said());
    assert!(
        asked.elapsed() < Duration::from_secs(2),
        "{:?}",
        asked.elapsed()
    );
    let said = a.said();
    assert!(said.contains("draining"), "{said}");
    assert!(said.contains("drained; stopped"), "{said}");
    assert_eq!(s.wait_logged("stopped", 2).await.len(), 2);

    let _b = s.worker("B", 2).await;
    let job = wait_end(connect(s.addr).await, id.clone()).await;
    assert_eq!(job.state, pb::JobState::Succeeded as i32, "{job:?}");
    let log = s.log();
    for (index, step) in kept {
        let starts = of(&log, "start", index);
        let last = starts.last().unwrap();
        assert_eq!(
            (last.worker.as_str(), last.attempt),
            ("B", 1),
            "a drain does not count the attempt: {log:?}"
        );
        assert!(last.step >= step, "{log:?}");
    }
}

/// Three replicas: the job's owner and a worker ("A", 2 slots) connected
/// to the next one. Returns the setup, the job, the owner's index, and
/// the worker.
async fn job_owned_elsewhere(
    request: pb::StartJobRequest,
) -> (Setup, String, usize, WorkerProcess) {
    let s = Setup::start_replicas(3).await;
    let id = s.start_job(request).await;
    let deadline = Instant::now() + WITHIN;
    let owner = loop {
        let job = s.get(&id).await;
        if let Some(owner) = job.owner.clone().filter(|o| !o.server.is_empty()) {
            break owner.server;
        }
        assert!(Instant::now() < deadline, "the job has no owner: {job:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let owner: usize = owner.trim_start_matches('r').parse().unwrap();
    let elsewhere = (owner + 1) % 3;
    let job = s.get(&id).await;
    assert!(
        job.waiting_for.contains("waiting for a worker"),
        "no worker anywhere yet: {job:?}"
    );
    let worker = s.worker_at(s.addrs[elsewhere], "A", 2).await;
    (s, id, owner, worker)
}

#[tokio::test]
async fn a_worker_connected_to_one_replica_runs_the_items_of_a_job_another_replica_owns() {
    let (s, id, _, _worker) = job_owned_elsewhere(s_job(6, 4, 3)).await;
    let job = wait_end(connect(s.addr).await, id.clone()).await;
    assert_eq!(job.state, pb::JobState::Succeeded as i32, "{job:?}");
    let log = s.log();
    for index in 0..6 {
        let starts = of(&log, "start", index);
        let ends = of(&log, "end", index);
        assert_eq!((starts.len(), ends.len()), (1, 1), "item {index}: {log:?}");
        assert_eq!(ends[0].step, 3);
    }
    for item in s.items(&id).await {
        assert_eq!(item.result, format!("done-{}", item.payload));
        assert_eq!(item.attempts, 1, "{item:?}");
    }
}

#[tokio::test]
async fn an_immediate_pause_reaches_a_worker_on_another_replica_and_resume_continues_from_the_checkpoint()
 {
    let (s, id, _, _worker) = job_owned_elsewhere(s_job(1, 1, 60)).await;
    s.checkpointed(&id, 1, 3).await;
    let asked = Instant::now();
    s.pause(&id, pb::PauseMode::Immediate).await;
    s.wait_state(&id, pb::JobState::Paused).await;
    assert!(
        asked.elapsed() < Duration::from_secs(2),
        "the program stopped at once: {:?}",
        asked.elapsed()
    );
    s.wait_logged("stopped", 1).await;
    let kept: u32 = std::str::from_utf8(&s.items(&id).await[0].checkpoint)
        .unwrap()
        .parse()
        .unwrap();
    assert!(kept >= 3);
    connect(s.addr)
        .await
        .resume_job(pb::ResumeJobRequest {
            job_id: id.clone(),
            request_id: String::new(),
        })
        .await
        .unwrap();
    let job = wait_end(connect(s.addr).await, id.clone()).await;
    assert_eq!(job.state, pb::JobState::Succeeded as i32, "{job:?}");
    let log = s.log();
    let starts = of(&log, "start", 0);
    assert_eq!(starts.len(), 2, "{log:?}");
    assert_eq!(
        (starts[1].attempt, starts[1].step),
        (1, kept),
        "the pause not counted, from the checkpoint: {log:?}"
    );
    assert_eq!(of(&log, "end", 0).len(), 1);
}

#[tokio::test]
async fn when_the_replica_a_worker_is_lent_from_dies_its_item_runs_again_on_a_worker_elsewhere() {
    let (mut s, id, owner, _a) = job_owned_elsewhere(s_job(1, 1, 60)).await;
    let kept = s.checkpointed(&id, 1, 3).await[0].1;
    let third = (owner + 2) % 3;
    let _b = s.worker_at(s.addrs[third], "B", 1).await;
    // The replica worker A is connected to dies: the owner's link to it
    // breaks, and the item is lost there (its attempt counts).
    s.servers[(owner + 1) % 3].kill9().unwrap();
    let again = s.first_start_on("B", owner).await;
    assert_eq!(again.attempt, 2, "the lost attempt counts: {again:?}");
    assert!(again.step >= kept, "from its checkpoint: {again:?}");
    let job = wait_end(connect(s.addrs[owner]).await, id.clone()).await;
    assert_eq!(job.state, pb::JobState::Succeeded as i32, "{job:?}");
    let item = &s.items_at(owner, &id).await[0];
    assert_eq!(item.attempts, 2, "{item:?}");
}

#[tokio::test]
async fn when_the_replica_a_worker_is_lent_from_shuts_down_its_item_is_stopped_and_continues_elsewhere_uncounted()
 {
    let (mut s, id, owner, _a) = job_owned_elsewhere(s_job(1, 1, 60)).await;
    s.checkpointed(&id, 1, 3).await;
    let third = (owner + 2) % 3;
    let _b = s.worker_at(s.addrs[third], "B", 1).await;
    // The replica worker A is connected to shuts down (SIGTERM): it stops
    // the item it runs for the owner's job as it stops its own, and the
    // owner gets it back with its checkpoint, the attempt not counted.
    let lender = (owner + 1) % 3;
    let status = s.servers[lender].terminate(WITHIN).await.unwrap();
    assert!(status.success(), "the lender's exit: {status:?}");
    let stopped = of(&s.log(), "stopped", 0);
    assert_eq!(
        stopped.len(),
        1,
        "A's program was stopped: {}",
        s.log_text()
    );
    assert_eq!(stopped[0].worker, "A");
    let again = s.first_start_on("B", owner).await;
    assert_eq!(
        again.attempt, 1,
        "the stopped attempt is not counted: {again:?}"
    );
    assert!(again.step >= 3, "from its checkpoint: {again:?}");
    let job = wait_end(connect(s.addrs[owner]).await, id.clone()).await;
    assert_eq!(job.state, pb::JobState::Succeeded as i32, "{job:?}");
    let item = &s.items_at(owner, &id).await[0];
    assert_eq!(item.attempts, 1, "{item:?}");
    assert_eq!(of(&s.log(), "end", 0).len(), 1, "{}", s.log_text());
}

impl Setup {
    /// Item 0's first start on `worker`, waited for (within `WITHIN`); the
    /// owner's log (replica `owner`) is shown if it does not come.
    async fn first_start_on(&self, worker: &str, owner: usize) -> Line {
        let deadline = Instant::now() + WITHIN;
        loop {
            if let Some(line) = of(&self.log(), "start", 0)
                .into_iter()
                .find(|l| l.worker == worker)
            {
                return line;
            }
            assert!(
                Instant::now() < deadline,
                "the item did not move to worker {worker}: {}\nowner's log:\n{}",
                self.log_text(),
                tail(&self.dir.path().join(if owner == 0 {
                    "server.log".to_string()
                } else {
                    format!("server-{owner}.log")
                }))
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// A job of the remote executor: `items` items of `steps` steps.
fn s_job(items: u32, concurrency: u32, steps: u32) -> pb::StartJobRequest {
    pb::StartJobRequest {
        name: "remote-script".into(),
        executor: "remote".into(),
        items: (0..items).map(|i| format!("item-{i}")).collect(),
        concurrency,
        params: [("steps".to_string(), steps.to_string())].into(),
        ..Default::default()
    }
}

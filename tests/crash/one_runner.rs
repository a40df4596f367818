//! One runner per job, whatever the operator starts: a second `serve` on
//! the same PostgreSQL database (no extra flag) or on the same data
//! directory refuses to start and names the holder; the first runs on
//! undisturbed; after the first is killed, a new server continues the job.
//! And the command line ends quietly when its reader goes away.

use super::{connect, wait_end};
use jobvisor::pb;
use jobvisor_testkit::{
    db::TestDb,
    process::{ServerProcess, ServerSpec, free_port},
};
use sqlx::{Connection, PgConnection};
use std::{
    net::SocketAddr,
    path::PathBuf,
    process::{ExitStatus, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicI64, Ordering},
    },
    time::{Duration, Instant},
};

fn spec(database_url: &str, cwd: Option<PathBuf>, log: PathBuf) -> ServerSpec {
    ServerSpec {
        binary: PathBuf::from(env!("CARGO_BIN_EXE_jobvisor")),
        addr: SocketAddr::from(([127, 0, 0, 1], free_port().unwrap())),
        database_url: database_url.into(),
        args: vec![],
        log,
        env: vec![],
        cwd,
    }
}

/// Runs `jobvisor serve` as `spec` says until it exits by itself (at most
/// 20 s): its status and what it printed.
async fn serve_until_exit(spec: &ServerSpec) -> (ExitStatus, String) {
    let mut command = tokio::process::Command::new(&spec.binary);
    if let Some(dir) = &spec.cwd {
        command.current_dir(dir);
    }
    if spec.database_url.is_empty() {
        command.env_remove("DATABASE_URL");
    } else {
        command.env("DATABASE_URL", &spec.database_url);
    }
    let run = command
        .args(["serve", "--listen", &spec.addr.to_string()])
        .env("JOBVISOR_METRICS_LISTEN", "off")
        .env("JOBVISOR_HTTP_LISTEN", "off")
        .env("JOBVISOR_LOG_FORMAT", "text")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(20), run)
        .await
        .expect("the second server should refuse and exit, not serve")
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status, text)
}

fn sleep_job(items: u32, ms: u32) -> pb::StartJobRequest {
    pb::StartJobRequest {
        name: "one-runner".into(),
        executor: "sleep".into(),
        items: (0..items).map(|i| format!("item-{i}")).collect(),
        concurrency: 2,
        params: [
            ("duration_ms".to_string(), ms.to_string()),
            ("steps".into(), "5".into()),
        ]
        .into(),
        ..Default::default()
    }
}

async fn succeeded(addr: SocketAddr, id: &str) -> u64 {
    connect(addr)
        .await
        .get_job(pb::GetJobRequest { job_id: id.into() })
        .await
        .unwrap()
        .into_inner()
        .counts
        .unwrap()
        .succeeded
}

/// Waits until at least `n` items of the job succeeded (within 30 s).
async fn wait_succeeded(addr: SocketAddr, id: &str, n: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let done = succeeded(addr, id).await;
        if done >= n {
            return done;
        }
        assert!(
            Instant::now() < deadline,
            "only {done} of {n} items succeeded"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_second_server_on_one_database_refuses_to_start_and_the_first_runs_on() {
    let db = TestDb::create_with_prefix("jv_one_runner_").await;
    let url = db.url.clone();
    let dir = tempfile::tempdir().unwrap();
    let first_spec = spec(&url, None, dir.path().join("first.log"));
    let second_spec = spec(&url, None, dir.path().join("second.log"));
    let mut first = ServerProcess::start(&first_spec).await.unwrap();
    let job = connect(first_spec.addr)
        .await
        .start_job(sleep_job(24, 400))
        .await
        .unwrap()
        .into_inner();

    // The most items RUNNING at once, as the store has them, all along.
    let most = Arc::new(AtomicI64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (most, stop, url, id) = (most.clone(), stop.clone(), url.clone(), job.id.clone());
        tokio::spawn(async move {
            let mut pg = PgConnection::connect(&url).await.unwrap();
            while !stop.load(Ordering::Relaxed) {
                let running: i64 = sqlx::query_scalar(
                    "SELECT count(*) FROM items WHERE job_id = $1::uuid AND state = 1",
                )
                .bind(&id)
                .fetch_one(&mut pg)
                .await
                .unwrap();
                most.fetch_max(running, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    wait_succeeded(first_spec.addr, &job.id, 2).await;

    // The second server, same database, no extra flag: refused, naming
    // the first, before it touches the job.
    let (status, said) = serve_until_exit(&second_spec).await;
    assert!(!status.success(), "{status}: {said}");
    assert!(
        said.contains("another jobvisor server already runs the jobs of this database"),
        "{said}"
    );
    assert!(
        said.contains(&format!("jobvisor serve {}@", first.pid())),
        "the refusal names the holder: {said}"
    );
    assert!(said.contains("--multi-replica"), "{said}");
    assert!(!said.contains("jobvisor serving"), "{said}");

    // The first runs on undisturbed.
    let before = succeeded(first_spec.addr, &job.id).await;
    wait_succeeded(first_spec.addr, &job.id, before + 4).await;

    // Killed, then started again: the job continues to the end.
    first.kill9().unwrap();
    let _first = ServerProcess::start(&first_spec).await.unwrap();
    let done = wait_end(connect(first_spec.addr).await, job.id.clone()).await;
    stop.store(true, Ordering::Relaxed);
    sampler.await.unwrap();
    assert_eq!(done.state, pb::JobState::Succeeded as i32);
    let counts = done.counts.unwrap();
    assert_eq!((counts.succeeded, counts.failed), (24, 0));
    let most = most.load(Ordering::Relaxed);
    assert!(
        most <= 2,
        "{most} items RUNNING at once in a job of concurrency 2"
    );
    // Each item succeeded once: one counted attempt each (an attempt cut
    // by the kill is refunded).
    let mut pg = PgConnection::connect(&url).await.unwrap();
    let attempts: Vec<(i32, i32, i16)> =
        sqlx::query_as("SELECT idx, attempts, state FROM items WHERE job_id = $1::uuid")
            .bind(&job.id)
            .fetch_all(&mut pg)
            .await
            .unwrap();
    assert!(
        attempts.iter().all(|(_, a, s)| *a == 1 && *s == 2),
        "{attempts:?}"
    );
    drop((pg, _first));
    db.drop_db().await;
}

#[tokio::test]
async fn a_second_server_on_one_data_directory_exits_naming_the_holder() {
    let dir = tempfile::tempdir().unwrap();
    let cwd = Some(dir.path().to_path_buf());
    let first_spec = spec("", cwd.clone(), dir.path().join("first.log"));
    let second_spec = spec("", cwd, dir.path().join("second.log"));
    let mut first = ServerProcess::start(&first_spec).await.unwrap();
    let job = connect(first_spec.addr)
        .await
        .start_job(sleep_job(24, 300))
        .await
        .unwrap()
        .into_inner();
    wait_succeeded(first_spec.addr, &job.id, 2).await;

    let (status, said) = serve_until_exit(&second_spec).await;
    assert!(!status.success(), "{status}: {said}");
    assert!(
        said.contains(&format!(
            "the data directory ./jobvisor-data is in use by another jobvisor server (pid {}, since",
            first.pid()
        )),
        "{said}"
    );
    assert!(!said.contains("jobvisor serving"), "{said}");

    // The first runs on undisturbed.
    let before = succeeded(first_spec.addr, &job.id).await;
    wait_succeeded(first_spec.addr, &job.id, before + 4).await;

    // A SIGKILL leaves no stale lock: a new server starts and finishes.
    first.kill9().unwrap();
    let _next = ServerProcess::start(&first_spec).await.unwrap();
    let done = wait_end(connect(first_spec.addr).await, job.id.clone()).await;
    assert_eq!(done.state, pb::JobState::Succeeded as i32);
    assert_eq!(done.counts.unwrap().succeeded, 24);
}

/// `jobvisor items … | head`, `get` and `list` whose reader is gone
/// before they print: a quiet end, no panic.
#[tokio::test]
async fn a_command_whose_reader_went_away_ends_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let spec = spec(
        "",
        Some(dir.path().to_path_buf()),
        dir.path().join("server.log"),
    );
    let _server = ServerProcess::start(&spec).await.unwrap();
    let job = connect(spec.addr)
        .await
        .start_job(sleep_job(500, 10))
        .await
        .unwrap()
        .into_inner();
    let server = format!("http://{}", spec.addr);
    for args in [
        vec!["items", job.id.as_str(), "--page-size", "500"],
        vec!["get", job.id.as_str()],
        vec!["list"],
    ] {
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_jobvisor"))
            .args(&args)
            .args(["--server", &server])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        // The reader goes away before the command prints anything.
        drop(child.stdout.take());
        let out = tokio::time::timeout(Duration::from_secs(20), child.wait_with_output())
            .await
            .unwrap()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            matches!(out.status.code(), Some(0 | 141)),
            "{args:?}: {} {stderr}",
            out.status
        );
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert!(!stderr.contains("Broken pipe"), "{args:?}: {stderr}");
    }
    // `| head`, as a shell runs it: the pipeline's status is jobvisor's.
    let shell = std::process::Command::new("bash")
        .args([
            "-c",
            "set -o pipefail; \"$0\" items \"$1\" --page-size 500 --server \"$2\" | head -n 1",
            env!("CARGO_BIN_EXE_jobvisor"),
            &job.id,
            &server,
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&shell.stderr);
    assert!(
        matches!(shell.status.code(), Some(0 | 141)),
        "{} {stderr}",
        shell.status
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(String::from_utf8_lossy(&shell.stdout).lines().count(), 1);
}

/// Two servers on one machine: the second's metrics port is taken, and
/// the error says how to pick another.
#[tokio::test]
async fn a_taken_metrics_port_names_the_setting_that_picks_another() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_jobvisor"))
        .args(["serve", "--listen", "127.0.0.1:0", "--metrics-listen"])
        .arg(addr.to_string())
        .current_dir(dir.path())
        .env_remove("DATABASE_URL")
        .env_remove("JOBVISOR_METRICS_LISTEN")
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(20), out)
        .await
        .expect("a server whose metrics port is taken exits")
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains(&addr.to_string()), "{stderr}");
    assert!(
        stderr.contains("--metrics-listen (JOBVISOR_METRICS_LISTEN)") && stderr.contains("`off`"),
        "{stderr}"
    );
}

/// A server whose lock connection is cut while another server takes the
/// lock stops at once (exit non-zero), and runs nothing more.
#[tokio::test]
async fn a_server_that_lost_the_runner_lock_to_another_stops_at_once() {
    use jobvisor::store::postgres::runner_lock::RUNNER_LOCK_KEY;
    use sqlx::{ConnectOptions, postgres::PgConnectOptions};
    use std::str::FromStr;
    let db = TestDb::create_with_prefix("jv_lost_lock_").await;
    let url = db.url.clone();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("server.log");
    let spec = spec(&url, None, log.clone());
    let mut server = ServerProcess::start(&spec).await.unwrap();
    let job = connect(spec.addr)
        .await
        .start_job(sleep_job(40, 300))
        .await
        .unwrap()
        .into_inner();
    wait_succeeded(spec.addr, &job.id, 2).await;

    // Cut every session of the server, and take the lock first.
    let mut usurper = PgConnectOptions::from_str(&url)
        .unwrap()
        .application_name("jobvisor serve 1@usurper 2026-12-07T01:47:02Z")
        .connect()
        .await
        .unwrap();
    let mut admin = PgConnection::connect(&url).await.unwrap();
    sqlx::query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE application_name LIKE $1",
    )
    .bind(format!("jobvisor serve {}@%", server.pid()))
    .execute(&mut admin)
    .await
    .unwrap();
    let took = async {
        while !sqlx::query_scalar::<_, bool>("SELECT pg_try_advisory_lock($1)")
            .bind(RUNNER_LOCK_KEY)
            .fetch_one(&mut usurper)
            .await
            .unwrap()
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(5), took)
        .await
        .expect("the usurper takes the lock");

    let status = server
        .wait_exit(Duration::from_secs(15))
        .await
        .unwrap()
        .expect("the server stops");
    assert!(!status.success(), "{status}");
    let said = std::fs::read_to_string(&log).unwrap();
    assert!(said.contains("lost the runner lock"), "{said}");
    assert!(said.contains("1@usurper"), "{said}");
    // It runs nothing more: the items stay as it left them.
    let snapshot = "SELECT count(*) FILTER (WHERE state = 2), max(updated_at)::text \
                    FROM items WHERE job_id = $1::uuid";
    let before: (i64, Option<String>) = sqlx::query_as(snapshot)
        .bind(&job.id)
        .fetch_one(&mut admin)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    let after: (i64, Option<String>) = sqlx::query_as(snapshot)
        .bind(&job.id)
        .fetch_one(&mut admin)
        .await
        .unwrap();
    assert_eq!(before, after);
    assert!(before.0 < 40, "the job did not run to its end elsewhere");
    drop((usurper, admin));
    db.drop_db().await;
}

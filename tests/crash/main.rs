//! Crash tests: the real `jobvisor` binary, killed (SIGKILL), drained
//! (SIGTERM), its database restarted and its sessions terminated — alone
//! or as one of several replicas ([`replicas`]) — then checked: no item
//! lost, none completed twice, every re-execution from the checkpoint the
//! store held. Also through a real nginx in front of the server ([`proxy`]),
//! remote items in `jobvisor worker` processes ([`workers`]), and worker
//! processes of the Python library ([`python_worker`]).

mod one_runner;
mod proxy;
mod python_worker;
mod replicas;
mod watch_resume;
mod workers;

use jobvisor::pb::{self, job_service_client::JobServiceClient};
use jobvisor_testkit::{
    db::{TestDb, admin_url},
    process::{ServerProcess, ServerSpec, free_port},
};
use jobvisor_tools::chaos::{self, ChaosConfig, Fault};
use std::{
    net::SocketAddr,
    path::PathBuf,
    time::{Duration, Instant},
};

fn config(items: u32, schedule: &[(Fault, u32)], seed: u64) -> ChaosConfig {
    ChaosConfig {
        binary: PathBuf::from(env!("CARGO_BIN_EXE_jobvisor")),
        items,
        concurrency: 8,
        steps: 3,
        step: Duration::from_millis(20),
        schedule: schedule.to_vec(),
        gap: (Duration::from_millis(300), Duration::from_millis(900)),
        admin_url: Some(admin_url()),
        seed,
        grace: Duration::from_secs(5),
        timeout: Duration::from_secs(180),
        server_args: vec![],
    }
}

/// A client of the server at `addr`.
async fn connect(addr: SocketAddr) -> JobServiceClient<tonic::transport::Channel> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    JobServiceClient::new(channel)
}

/// Polls the job until it has ended (at most a minute) and returns it.
async fn wait_end(mut client: JobServiceClient<tonic::transport::Channel>, id: String) -> pb::Job {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let j = client
            .get_job(pb::GetJobRequest { job_id: id.clone() })
            .await
            .unwrap()
            .into_inner();
        if j.end_time.is_some() {
            return j;
        }
        assert!(Instant::now() < deadline, "the job did not finish: {j:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

async fn run(config: ChaosConfig) -> chaos::Verdict {
    let verdict = chaos::run(&config)
        .await
        .unwrap_or_else(|e| panic!("chaos run failed: {e:#}"));
    println!("{}", verdict.line());
    verdict
}

fn assert_clean(v: &chaos::Verdict) {
    assert_eq!(v.final_state, "SUCCEEDED", "{}", v.line());
    assert_eq!(v.lost, 0, "{}", v.line());
    assert_eq!(v.duplicated, 0, "{}", v.line());
    assert_eq!(
        v.completions,
        v.items,
        "one recorded completion per item: {}",
        v.line()
    );
    assert!(v.audit.unexplained.is_empty(), "{:?}", v.audit.unexplained);
    assert!(v.problems.is_empty(), "{:?}", v.problems);
    // Every re-execution resumed from the checkpoint the store held.
    assert_eq!(
        v.audit.resumed_from_checkpoint,
        v.audit.re_executions,
        "{}",
        v.line()
    );
}

#[tokio::test]
async fn a_killed_server_resumes_only_what_was_in_flight() {
    let v = run(config(400, &[(Fault::Kill, 1)], seed())).await;
    assert_eq!(v.faults.get(&Fault::Kill), Some(&1), "{}", v.line());
    assert_clean(&v);
    // Only items in flight at the kill ran again: at most one per worker.
    assert!(v.audit.re_executions <= 8, "{}", v.line());
}

#[tokio::test]
async fn five_kills_at_random_moments_lose_nothing() {
    let mut c = config(2500, &[(Fault::Kill, 5)], seed());
    c.concurrency = 16;
    c.steps = 2;
    c.step = Duration::from_millis(10);
    let v = run(c).await;
    assert_eq!(
        v.faults.get(&Fault::Kill),
        Some(&5),
        "the job ended too early: {}",
        v.line()
    );
    assert_clean(&v);
}

#[tokio::test]
async fn pipelined_acknowledgements_lose_nothing_across_kills() {
    let mut c = config(1500, &[(Fault::Kill, 3), (Fault::Term, 1)], seed());
    let depth = 4;
    c.server_args = vec![
        "--pipelined-acks".into(),
        "--pipeline-depth".into(),
        depth.to_string(),
    ];
    let v = run(c).await;
    assert_eq!(v.faults.values().sum::<u32>(), 4, "{}", v.line());
    assert_clean(&v);
    // At most 1 + depth items per worker (one running, `depth` committing)
    // per kill, 8 workers.
    assert!(v.audit.re_executions <= 4 * (1 + depth) * 8, "{}", v.line());
}

#[tokio::test]
async fn database_restarts_and_terminated_sessions_lose_nothing() {
    // A throwaway cluster of its own, so the restarts disturb nobody.
    let mut c = config(
        800,
        &[(Fault::DbRestart, 2), (Fault::BackendKill, 3)],
        seed(),
    );
    c.admin_url = None;
    let v = run(c).await;
    assert_eq!(v.faults.get(&Fault::DbRestart), Some(&2), "{}", v.line());
    assert_clean(&v);
    for (code, took) in &v.outage_calls {
        assert_eq!(code, "Unavailable");
        assert!(*took < Duration::from_secs(3), "{took:?}");
    }
}

#[tokio::test]
async fn repeated_backend_kills_lose_nothing() {
    let mut c = config(600, &[(Fault::BackendKill, 5)], seed());
    c.gap = (Duration::from_millis(100), Duration::from_millis(400));
    let v = run(c).await;
    assert_eq!(v.faults.get(&Fault::BackendKill), Some(&5), "{}", v.line());
    assert_clean(&v);
    assert_eq!(
        v.audit.re_executions, 0,
        "no restart, so nothing runs twice"
    );
}

/// SIGTERM: health goes NOT_SERVING, the watch stream ends with
/// UNAVAILABLE, the process exits 0 within the grace period with the job
/// still RUNNING, and after a restart the job continues from its
/// checkpoints; a watcher that reconnects with its last sequence sees a
/// gap-free sequence.
#[tokio::test]
async fn sigterm_drains_and_the_job_continues_after_restart() {
    let db = chaos::pg::ThrowawayPostgres::start().expect("throwaway PostgreSQL");
    let log = tempfile::NamedTempFile::new().unwrap();
    let spec = ServerSpec {
        binary: PathBuf::from(env!("CARGO_BIN_EXE_jobvisor")),
        addr: SocketAddr::from(([127, 0, 0, 1], free_port().unwrap())),
        database_url: db.url("postgres"),
        args: vec!["--shutdown-grace".into(), "5s".into()],
        log: log.path().to_path_buf(),
        env: vec![],
        cwd: None,
    };
    let mut server = ServerProcess::start(&spec).await.unwrap();
    let connect = || connect(spec.addr);
    let mut client = connect().await;
    let job = client
        .start_job(pb::StartJobRequest {
            name: "drain".into(),
            executor: "sleep".into(),
            items: (0..40).map(|i| format!("item-{i}")).collect(),
            concurrency: 4,
            params: [
                ("duration_ms".to_string(), "2000".to_string()),
                ("steps".into(), "20".into()),
            ]
            .into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut stream = client
        .watch_job(pb::WatchJobRequest {
            job_id: job.id.clone(),
            from_sequence: 0,
            window: None,
        })
        .await
        .unwrap()
        .into_inner();
    let mut seen: Vec<u64> = Vec::new();
    // Let the items get past a few checkpoints.
    tokio::time::sleep(Duration::from_millis(700)).await;

    let started = Instant::now();
    let status = server.terminate(Duration::from_secs(10)).await.unwrap();
    assert_eq!(status.code(), Some(0), "a drain exits 0");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );

    // The open stream ended with UNAVAILABLE (after the events it had).
    let ended = loop {
        match stream.message().await {
            Ok(Some(e)) => {
                if matches!(e.kind, Some(pb::job_event::Kind::StateChanged(_))) {
                    seen.push(e.sequence);
                }
            }
            Ok(None) => break None,
            Err(status) => break Some(status.code()),
        }
    };
    assert_eq!(ended, Some(tonic::Code::Unavailable));

    // The job is still RUNNING in the store, and the interrupted items kept
    // their checkpoints and their attempts.
    let mut pg = sqlx::PgConnection::connect(&db.url("postgres"))
        .await
        .unwrap();
    use sqlx::Connection;
    let state: String = sqlx::query_scalar("SELECT state FROM jobs WHERE id = $1::uuid")
        .bind(&job.id)
        .fetch_one(&mut pg)
        .await
        .unwrap();
    assert_eq!(state, "running");
    let resumable: Vec<(i32, Vec<u8>, i32)> = sqlx::query_as(
        "SELECT idx, checkpoint, attempts FROM items \
         WHERE job_id = $1::uuid AND state = 0 AND checkpoint IS NOT NULL",
    )
    .bind(&job.id)
    .fetch_all(&mut pg)
    .await
    .unwrap();
    assert_eq!(
        resumable.len(),
        4,
        "the four items in flight were checkpointed"
    );
    assert!(resumable.iter().all(|(_, _, attempts)| *attempts == 0));
    let running: i64 =
        sqlx::query_scalar("SELECT count(*) FROM items WHERE job_id = $1::uuid AND state = 1")
            .bind(&job.id)
            .fetch_one(&mut pg)
            .await
            .unwrap();
    assert_eq!(running, 0);

    // Restart: the job continues and succeeds; the reconnecting watcher
    // resumes after its last sequence and sees every later event once.
    let _server = ServerProcess::start(&spec).await.unwrap();
    let mut client = connect().await;
    let last = seen.last().copied().unwrap_or(0);
    let mut stream = client
        .watch_job(pb::WatchJobRequest {
            job_id: job.id.clone(),
            from_sequence: last,
            window: None,
        })
        .await
        .unwrap()
        .into_inner();
    let mut after = Vec::new();
    while let Some(e) = tokio::time::timeout(Duration::from_secs(60), stream.message())
        .await
        .expect("the job finishes")
        .unwrap()
    {
        if !matches!(
            e.kind,
            Some(pb::job_event::Kind::Snapshot(_) | pb::job_event::Kind::Progress(_))
        ) {
            after.push(e.sequence);
        }
    }
    seen.extend(after);
    let done = client
        .get_job(pb::GetJobRequest {
            job_id: job.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(done.state, pb::JobState::Succeeded as i32);
    assert_eq!(
        seen,
        (1..=done.last_sequence).collect::<Vec<_>>(),
        "gap-free"
    );
    // Each interrupted item resumed from its checkpoint: it needed one
    // attempt in all.
    let attempts: Vec<i32> =
        sqlx::query_scalar("SELECT attempts FROM items WHERE job_id = $1::uuid AND idx = ANY($2)")
            .bind(&job.id)
            .bind(resumable.iter().map(|r| r.0).collect::<Vec<_>>())
            .fetch_all(&mut pg)
            .await
            .unwrap();
    assert!(attempts.iter().all(|a| *a == 1), "{attempts:?}");
}

/// The embedded store, from nothing: the binary with no DATABASE_URL in an
/// empty directory runs a job to the end; in a second run it is killed
/// mid-job (SIGKILL), restarted, and the job finishes with every item once.
#[tokio::test]
async fn the_embedded_store_survives_a_kill() {
    let dir = tempfile::tempdir().unwrap();
    let spec = ServerSpec {
        binary: PathBuf::from(env!("CARGO_BIN_EXE_jobvisor")),
        addr: SocketAddr::from(([127, 0, 0, 1], free_port().unwrap())),
        database_url: String::new(),
        args: vec![],
        log: dir.path().join("server.log"),
        env: vec![],
        cwd: Some(dir.path().to_path_buf()),
    };
    let connect = || connect(spec.addr);
    let job = |items: u32, ms: &str| pb::StartJobRequest {
        name: "embedded".into(),
        executor: "sleep".into(),
        items: (0..items).map(|i| format!("item-{i}")).collect(),
        concurrency: 4,
        params: [
            ("duration_ms".to_string(), ms.to_string()),
            ("steps".into(), "5".into()),
        ]
        .into(),
        ..Default::default()
    };
    // First run: a job to completion; the store is created on the way.
    let mut server = ServerProcess::start(&spec).await.unwrap();
    let mut client = connect().await;
    let first = client.start_job(job(20, "10")).await.unwrap().into_inner();
    let done = wait_end(client, first.id.clone()).await;
    assert_eq!(done.state, pb::JobState::Succeeded as i32);
    assert!(dir.path().join("jobvisor-data/jobvisor.db").exists());
    server.terminate(Duration::from_secs(10)).await.unwrap();

    // Second run: killed mid-job, restarted, finished.
    let mut server = ServerProcess::start(&spec).await.unwrap();
    let mut client = connect().await;
    let second = client.start_job(job(60, "200")).await.unwrap().into_inner();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let j = client
            .get_job(pb::GetJobRequest {
                job_id: second.id.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        if j.counts.unwrap().succeeded >= 10 {
            break;
        }
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.kill9().unwrap();
    let _server = ServerProcess::start(&spec).await.unwrap();
    let done = wait_end(connect().await, second.id.clone()).await;
    assert_eq!(done.state, pb::JobState::Succeeded as i32);
    let counts = done.counts.unwrap();
    assert_eq!((counts.succeeded, counts.failed, counts.total), (60, 0, 60));
    // The first job is still there, as it was.
    let kept = connect()
        .await
        .get_job(pb::GetJobRequest {
            job_id: done.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(kept.id, done.id);
}

/// A SIGKILL while a retry waits for its delay: after the restart the wait
/// still holds (each attempt comes no earlier than its time), the other
/// items end once each, and the failing item has exactly its attempts.
#[tokio::test]
async fn a_kill_while_a_retry_waits_keeps_the_wait() {
    use sqlx::Connection;
    let db = TestDb::create_with_prefix("jv_crash_retry_").await;
    let url = db.url.clone();
    let log = tempfile::NamedTempFile::new().unwrap();
    let spec = ServerSpec {
        binary: PathBuf::from(env!("CARGO_BIN_EXE_jobvisor")),
        addr: SocketAddr::from(([127, 0, 0, 1], free_port().unwrap())),
        database_url: url.clone(),
        args: vec![],
        log: log.path().to_path_buf(),
        env: vec![],
        cwd: None,
    };
    let connect = || connect(spec.addr);
    let mut server = ServerProcess::start(&spec).await.unwrap();
    // Item 3 fails on every attempt: 1.5 s, then 3 s before its retries.
    let job = connect()
        .await
        .start_job(pb::StartJobRequest {
            name: "waits".into(),
            executor: "sleep".into(),
            items: (0..40).map(|i| format!("item-{i}")).collect(),
            concurrency: 2,
            params: [
                ("duration_ms".to_string(), "50".to_string()),
                ("fail_pattern".into(), "^item-3$".into()),
            ]
            .into(),
            max_attempts: 3,
            retry_delay: Some(prost_types::Duration {
                seconds: 1,
                nanos: 500_000_000,
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut pg = sqlx::PgConnection::connect(&url).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let waiting: Option<bool> = sqlx::query_scalar(
            "SELECT retry_at > now() FROM items \
             WHERE job_id = $1::uuid AND idx = 3 AND state = 0 AND attempts = 1",
        )
        .bind(&job.id)
        .fetch_optional(&mut pg)
        .await
        .unwrap()
        .flatten();
        if waiting == Some(true) {
            break;
        }
        assert!(Instant::now() < deadline, "item 3 never waited");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.kill9().unwrap();
    let _server = ServerProcess::start(&spec).await.unwrap();
    let done = wait_end(connect().await, job.id.clone()).await;
    assert_eq!(done.state, pb::JobState::Failed as i32);
    let counts = done.counts.unwrap();
    assert_eq!((counts.succeeded, counts.failed), (39, 1));
    // The store agrees with the counters: 39 items succeeded, once each
    // counted; item 3 failed after exactly its three attempts.
    let items: Vec<(i32, i16, i32)> = sqlx::query_as(
        "SELECT idx, state, attempts FROM items WHERE job_id = $1::uuid ORDER BY idx",
    )
    .bind(&job.id)
    .fetch_all(&mut pg)
    .await
    .unwrap();
    assert_eq!(items.iter().filter(|i| i.1 == 2).count(), 39);
    assert_eq!(items[3], (3, 3, 3));
    // Each attempt of item 3 came no earlier than its wait allowed.
    let failed_at: Vec<f64> = sqlx::query_scalar(
        "SELECT extract(epoch FROM at)::float8 FROM job_events \
         WHERE job_id = $1::uuid AND kind = 'item_failed' ORDER BY seq",
    )
    .bind(&job.id)
    .fetch_all(&mut pg)
    .await
    .unwrap();
    assert_eq!(failed_at.len(), 3, "three failures of item 3");
    assert!(failed_at[1] - failed_at[0] >= 1.5, "{failed_at:?}");
    assert!(failed_at[2] - failed_at[1] >= 3.0, "{failed_at:?}");
    drop(pg);
    drop(_server);
    db.try_drop().await.unwrap();
}

/// Counters of a job's own across a SIGKILL: every item of an exec job
/// reports `@count frames 3` before it ends; the server is killed with
/// items in flight and restarted. The items that were running run again
/// and report again, yet the job's counter is exactly 3 per item: only the
/// attempt whose success was committed counted.
#[tokio::test]
async fn counters_count_each_item_once_across_a_kill() {
    let db = TestDb::create_with_prefix("jv_crash_counters_").await;
    let log = tempfile::NamedTempFile::new().unwrap();
    let spec = ServerSpec {
        binary: PathBuf::from(env!("CARGO_BIN_EXE_jobvisor")),
        addr: SocketAddr::from(([127, 0, 0, 1], free_port().unwrap())),
        database_url: db.url.clone(),
        args: vec!["--allow-exec".into()],
        log: log.path().to_path_buf(),
        env: vec![],
        cwd: None,
    };
    let connect = || connect(spec.addr);
    let mut server = ServerProcess::start(&spec).await.unwrap();
    // Counts first, then works: a kill during the work leaves counts that
    // an uncommitted attempt reported.
    let script =
        r#"echo "@count frames 1"; echo "@count frames 2"; sleep 0.3; echo "@count items 1""#;
    let items = 40u32;
    let job = connect()
        .await
        .start_job(pb::StartJobRequest {
            name: "counted".into(),
            executor: "exec".into(),
            items: (0..items).map(|i| format!("item-{i}")).collect(),
            concurrency: 8,
            params: [
                ("command".to_string(), "sh".to_string()),
                (
                    "args".into(),
                    serde_json::to_string(&["-c", script]).unwrap(),
                ),
            ]
            .into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut client = connect().await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let j = client
            .get_job(pb::GetJobRequest {
                job_id: job.id.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        let c = j.counts.unwrap();
        if c.succeeded >= 10 && c.running > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "the job did not get going");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.kill9().unwrap();
    let _server = ServerProcess::start(&spec).await.unwrap();
    let done = wait_end(connect().await, job.id.clone()).await;
    assert_eq!(done.state, pb::JobState::Succeeded as i32);
    assert_eq!(done.counts.unwrap().succeeded, u64::from(items));
    let counters: std::collections::BTreeMap<_, _> = done.counters.into_iter().collect();
    let expected = std::collections::BTreeMap::from([
        ("frames".to_string(), 3 * i64::from(items)),
        ("items".to_string(), i64::from(items)),
    ]);
    assert_eq!(counters, expected, "each item counted once");
}

//! Through a real proxy: Debian's nginx with `grpc_pass` in front of the
//! real server process, as jobvisor is often deployed. The job lifecycle
//! works through it; a watch on a quiet (paused) job outlives the proxy's
//! read timeout because the server's keepalive Progress messages keep it
//! busy (and is cut without them); the CLI names a proxy's refusal (413,
//! 502) instead of a gRPC protocol error.

use jobvisor::pb::{self, job_event::Kind, job_service_client::JobServiceClient};
use jobvisor_testkit::{
    db::TestDb,
    process::{ServerProcess, ServerSpec, free_port},
    proxy::{Proxy, ProxySpec},
};
use std::{
    net::SocketAddr,
    path::PathBuf,
    time::{Duration, Instant},
};
use tonic::transport::Channel;

/// A server with `args` on a fresh database.
async fn server(db: &TestDb, log: &tempfile::NamedTempFile, args: &[&str]) -> ServerProcess {
    let spec = ServerSpec {
        binary: PathBuf::from(env!("CARGO_BIN_EXE_jobvisor")),
        addr: SocketAddr::from(([127, 0, 0, 1], free_port().unwrap())),
        database_url: db.url.clone(),
        args: args.iter().map(|a| a.to_string()).collect(),
        log: log.path().to_path_buf(),
        env: vec![],
        cwd: None,
    };
    ServerProcess::start(&spec).await.unwrap()
}

/// nginx in front of `upstream`; the test fails (never skips) without it.
async fn proxy(spec: ProxySpec) -> Proxy {
    Proxy::start(&spec)
        .await
        .unwrap_or_else(|e| panic!("cannot run the proxy: {e:#}"))
}

fn sleep_job(items: u32, ms: u32, concurrency: u32) -> pb::StartJobRequest {
    pb::StartJobRequest {
        name: "proxied".into(),
        executor: "sleep".into(),
        items: (0..items).map(|i| format!("item-{i}")).collect(),
        concurrency,
        params: [
            ("duration_ms".to_string(), ms.to_string()),
            ("steps".into(), "5".into()),
        ]
        .into(),
        ..Default::default()
    }
}

async fn get(client: &mut JobServiceClient<Channel>, id: &str) -> pb::Job {
    client
        .get_job(pb::GetJobRequest {
            job_id: id.to_string(),
        })
        .await
        .unwrap()
        .into_inner()
}

/// Waits (at most 20 s) until the job is in `state`.
async fn wait_state(client: &mut JobServiceClient<Channel>, id: &str, state: pb::JobState) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let job = get(client, id).await;
        if job.state == state as i32 {
            return;
        }
        assert!(Instant::now() < deadline, "not {state:?}: {job:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn pause_now(client: &mut JobServiceClient<Channel>, id: &str) {
    client
        .pause_job(pb::PauseJobRequest {
            job_id: id.to_string(),
            mode: pb::PauseMode::Immediate as i32,
            ..Default::default()
        })
        .await
        .unwrap();
    wait_state(client, id, pb::JobState::Paused).await;
}

#[tokio::test]
async fn the_job_lifecycle_works_through_nginx() {
    let db = TestDb::create().await;
    let log = tempfile::NamedTempFile::new().unwrap();
    let server = server(&db, &log, &[]).await;
    let nginx = proxy(ProxySpec::new(server.addr)).await;
    let mut client = super::connect(nginx.addr).await;

    // Start, pause, resume, cancel, get: every call through nginx.
    let job = client
        .start_job(sleep_job(200, 200, 2))
        .await
        .unwrap()
        .into_inner();
    pause_now(&mut client, &job.id).await;
    client
        .resume_job(pb::ResumeJobRequest {
            job_id: job.id.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    wait_state(&mut client, &job.id, pb::JobState::Running).await;
    client
        .cancel_job(pb::CancelJobRequest {
            job_id: job.id.clone(),
            reason: "enough".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    wait_state(&mut client, &job.id, pb::JobState::Cancelled).await;
    // A second job runs to the end behind the proxy.
    let second = client
        .start_job(sleep_job(10, 20, 4))
        .await
        .unwrap()
        .into_inner();
    let done = super::wait_end(client.clone(), second.id.clone()).await;
    assert_eq!(done.state, pb::JobState::Succeeded as i32);
    assert_eq!(done.counts.unwrap().succeeded, 10);
    // The same answer as straight from the server.
    let direct = get(&mut super::connect(server.addr).await, &job.id).await;
    assert_eq!(get(&mut client, &job.id).await, direct);
    drop(nginx);
    drop(server);
    db.drop_db().await;
}

/// What a watch through the proxy saw in `quiet` on a paused job.
struct Quiet {
    /// Keepalive Progress messages received.
    progress: usize,
    /// Stored events' sequences received.
    stored: Vec<u64>,
    /// The longest time without a message, after the first.
    longest_gap: Duration,
    /// How the stream broke, and when, if it did.
    broke: Option<(String, Duration)>,
}

/// Reads a watch stream on a paused job for `quiet`.
async fn watch_quietly(stream: &mut tonic::Streaming<pb::JobEvent>, quiet: Duration) -> Quiet {
    let started = Instant::now();
    let mut seen = Quiet {
        progress: 0,
        stored: Vec::new(),
        longest_gap: Duration::ZERO,
        broke: None,
    };
    let mut last: Option<Instant> = None;
    while let Some(left) = quiet.checked_sub(started.elapsed()) {
        match tokio::time::timeout(left, stream.message()).await {
            Err(_) => break,
            Ok(Ok(Some(event))) => {
                if let Some(last) = last {
                    seen.longest_gap = seen.longest_gap.max(last.elapsed());
                }
                last = Some(Instant::now());
                match event.kind {
                    Some(Kind::Progress(_)) => seen.progress += 1,
                    Some(Kind::Snapshot(_)) => {}
                    _ => seen.stored.push(event.sequence),
                }
            }
            Ok(Ok(None)) => {
                seen.broke = Some(("ended".into(), started.elapsed()));
                break;
            }
            Ok(Err(status)) => {
                seen.broke = Some((format!("{status}"), started.elapsed()));
                break;
            }
        }
    }
    seen
}

/// A paused job watched through nginx with `grpc_read_timeout 2s`, its
/// server started with `--stream-keepalive keepalive`.
struct QuietWatch {
    db: TestDb,
    _log: tempfile::NamedTempFile,
    server: ServerProcess,
    nginx: Proxy,
    client: JobServiceClient<Channel>,
    job: pb::Job,
    stream: tonic::Streaming<pb::JobEvent>,
}

async fn quiet_watch(keepalive: &str) -> QuietWatch {
    let db = TestDb::create().await;
    let log = tempfile::NamedTempFile::new().unwrap();
    let server = server(&db, &log, &["--stream-keepalive", keepalive]).await;
    let mut spec = ProxySpec::new(server.addr);
    spec.read_timeout = Duration::from_secs(2);
    let nginx = proxy(spec).await;
    let mut client = super::connect(nginx.addr).await;
    let job = client
        .start_job(sleep_job(30, 50, 2))
        .await
        .unwrap()
        .into_inner();
    pause_now(&mut client, &job.id).await;
    let stream = client
        .watch_job(pb::WatchJobRequest {
            job_id: job.id.clone(),
            from_sequence: 0,
            window: None,
        })
        .await
        .unwrap()
        .into_inner();
    QuietWatch {
        db,
        _log: log,
        server,
        nginx,
        client,
        job,
        stream,
    }
}

/// A watch on a paused job, through nginx with `grpc_read_timeout 2s`,
/// for 5 s: the server's keepalive Progress every 500 ms keeps it open,
/// and after the resume it goes on to the job's end with every stored
/// event once, in order.
#[tokio::test]
async fn a_watch_on_a_paused_job_outlives_the_proxy_s_read_timeout() {
    let QuietWatch {
        db,
        _log,
        server,
        nginx,
        mut client,
        job,
        mut stream,
    } = quiet_watch("500ms").await;
    let quiet = watch_quietly(&mut stream, Duration::from_secs(5)).await;
    assert_eq!(
        quiet.broke,
        None,
        "the proxy cut the stream; nginx: {}",
        nginx.logs()
    );
    println!(
        "{} keepalive Progress messages in 5 s, at most {:?} apart",
        quiet.progress, quiet.longest_gap
    );
    // Sent on the server's progress tick once 500 ms were quiet: about one
    // a second, always well inside the proxy's 2 s.
    assert!(quiet.progress >= 3, "keepalives: {}", quiet.progress);
    assert!(
        quiet.longest_gap < Duration::from_millis(1800),
        "{:?}",
        quiet.longest_gap
    );

    client
        .resume_job(pb::ResumeJobRequest {
            job_id: job.id.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut stored = quiet.stored;
    while let Some(event) = tokio::time::timeout(Duration::from_secs(60), stream.message())
        .await
        .expect("the job ends")
        .unwrap_or_else(|e| panic!("the stream broke after the resume: {e}"))
    {
        if !matches!(event.kind, Some(Kind::Progress(_) | Kind::Snapshot(_))) {
            stored.push(event.sequence);
        }
    }
    let done = get(&mut client, &job.id).await;
    assert_eq!(done.state, pb::JobState::Succeeded as i32);
    assert_eq!(
        stored,
        (1..=done.last_sequence).collect::<Vec<_>>(),
        "gap-free and once each"
    );
    drop(nginx);
    drop(server);
    db.drop_db().await;
}

/// The failure the keepalive prevents, shown real: with the server's
/// keepalive at an hour, the same proxy cuts the same quiet watch after
/// its 2 s read timeout.
#[tokio::test]
async fn without_keepalives_the_proxy_cuts_a_quiet_watch() {
    let QuietWatch {
        db,
        _log,
        server,
        nginx,
        client: _,
        job: _,
        mut stream,
    } = quiet_watch("1h").await;
    let quiet = watch_quietly(&mut stream, Duration::from_secs(8)).await;
    let (how, after) = quiet.broke.expect("the proxy cut the quiet stream");
    println!("cut after {after:?}: {how}");
    assert!(after >= Duration::from_millis(1500), "{after:?}: {how}");
    assert_eq!(quiet.progress, 0);
    drop(nginx);
    drop(server);
    db.drop_db().await;
}

/// Runs the CLI with `args` against `server`: its exit code and stderr.
async fn cli(server: SocketAddr, args: &[&str]) -> (Option<i32>, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_jobvisor"))
        .args(args)
        .arg("--server")
        .arg(format!("http://{server}"))
        .env_remove("JOBVISOR_SERVER")
        .env_remove("JOBVISOR_TOKEN")
        .output()
        .await
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

/// nginx's 413 (a request over `client_max_body_size`) and its 502 (no
/// server behind it) reach the user as what they are, with what to do,
/// not as a gRPC protocol error about compression flags; the same job
/// started in pages small enough for the proxy goes through it.
#[tokio::test]
async fn the_cli_names_a_proxy_s_refusal() {
    let db = TestDb::create().await;
    let log = tempfile::NamedTempFile::new().unwrap();
    let server = server(&db, &log, &[]).await;
    let mut spec = ProxySpec::new(server.addr);
    spec.client_max_body_size = "64k".into();
    let nginx = proxy(spec).await;

    // 20,000 generated item names: about 200 KB.
    let (code, stderr) = cli(nginx.addr, &["start", "--name", "big", "--count", "20000"]).await;
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("the proxy refused the request with HTTP 413 (Payload Too Large)")
            && stderr.contains("client_max_body_size")
            && stderr.contains("--page-bytes"),
        "{stderr}"
    );
    assert!(!stderr.contains("compression flag"), "{stderr}");
    // Nothing was started.
    let page = super::connect(server.addr)
        .await
        .list_jobs(pb::ListJobsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(page.jobs.is_empty(), "{page:?}");
    // A small start goes through the same proxy, and so does the big one
    // in pages small enough for it.
    let (code, stderr) = cli(nginx.addr, &["start", "--name", "small", "--count", "3"]).await;
    assert_eq!(code, Some(0), "{stderr}");
    let (code, stderr) = cli(
        nginx.addr,
        &[
            "start",
            "--name",
            "big",
            "--count",
            "20000",
            "--page-bytes",
            "32768",
            "--param",
            "duration_ms=0",
            "--param",
            "steps=1",
            "--concurrency",
            "16",
        ],
    )
    .await;
    assert_eq!(code, Some(0), "{stderr}");
    let mut direct = super::connect(server.addr).await;
    let big = direct
        .list_jobs(pb::ListJobsRequest {
            name: "big".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .jobs;
    assert_eq!(big.len(), 1, "{big:?}");
    let done = super::wait_end(direct.clone(), big[0].id.clone()).await;
    assert_eq!(done.state, pb::JobState::Succeeded as i32, "{done:?}");
    assert_eq!(done.counts.unwrap().succeeded, 20_000);
    assert!(!done.open);

    // Nothing behind the proxy: its 502, for any command.
    let mut spec = ProxySpec::new(SocketAddr::from(([127, 0, 0, 1], free_port().unwrap())));
    spec.client_max_body_size = "64k".into();
    let orphan = proxy(spec).await;
    let (code, stderr) = cli(
        orphan.addr,
        &["get", "00000000-0000-0000-0000-000000000000"],
    )
    .await;
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("the proxy answered HTTP 502 (Bad Gateway)")
            && stderr.contains("is the server running?"),
        "{stderr}"
    );
    drop((nginx, orphan));
    drop(server);
    db.drop_db().await;
}

/// A page through the proxy retried with its request id (as a client
/// does when the answer was lost) adds its items once.
#[tokio::test]
async fn a_page_retried_through_nginx_is_added_once() {
    let db = TestDb::create().await;
    let log = tempfile::NamedTempFile::new().unwrap();
    let server = server(&db, &log, &[]).await;
    let nginx = proxy(ProxySpec::new(server.addr)).await;
    let mut client = super::connect(nginx.addr).await;
    let job = client
        .start_job(pb::StartJobRequest {
            open: true,
            ..sleep_job(1, 0, 4)
        })
        .await
        .unwrap()
        .into_inner();
    let page = pb::AddItemsRequest {
        job_id: job.id.clone(),
        items: (1..=1000).map(|i| format!("late-{i}")).collect(),
        request_id: "page-1".into(),
        close: false,
    };
    for _ in 0..3 {
        let added = client.add_items(page.clone()).await.unwrap().into_inner();
        assert_eq!((added.first_index, added.added), (1, 1000));
        assert_eq!(added.job.unwrap().counts.unwrap().total, 1001);
    }
    client
        .add_items(pb::AddItemsRequest {
            job_id: job.id.clone(),
            close: true,
            ..Default::default()
        })
        .await
        .unwrap();
    let done = super::wait_end(client, job.id.clone()).await;
    assert_eq!(done.state, pb::JobState::Succeeded as i32, "{done:?}");
    assert_eq!(done.counts.unwrap().succeeded, 1001);
    drop(nginx);
    drop(server);
    db.drop_db().await;
}

/// A job of a million items started with the CLI through nginx's default
/// 1 MiB body limit: the CLI sends them in pages, and every item runs to
/// success, once.
#[tokio::test]
async fn a_million_item_job_started_in_pages_through_nginx_succeeds_in_full() {
    const ITEMS: u64 = 1_000_000;
    let db = TestDb::create().await;
    let log = tempfile::NamedTempFile::new().unwrap();
    let server = server(&db, &log, &["--pipelined-acks"]).await;
    let nginx = proxy(ProxySpec::new(server.addr)).await;
    let count = ITEMS.to_string();
    let (code, stderr) = cli(
        nginx.addr,
        &[
            "start",
            "--name",
            "million",
            "--count",
            &count,
            "--param",
            "duration_ms=0",
            "--param",
            "steps=1",
            "--concurrency",
            "64",
        ],
    )
    .await;
    assert_eq!(code, Some(0), "{stderr}");
    let mut client = super::connect(server.addr).await;
    let jobs = client
        .list_jobs(pb::ListJobsRequest {
            name: "million".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .jobs;
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    let id = jobs[0].id.clone();
    let deadline = Instant::now() + Duration::from_secs(240);
    let done = loop {
        let job = get(&mut client, &id).await;
        if job.end_time.is_some() {
            break job;
        }
        assert!(Instant::now() < deadline, "not done in 4 minutes: {job:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(done.state, pb::JobState::Succeeded as i32, "{done:?}");
    let counts = done.counts.unwrap();
    assert_eq!((counts.total, counts.succeeded), (ITEMS, ITEMS));
    // Each item once, in the order given.
    let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
    let (n, distinct, max_attempts, first, last): (i64, i64, i32, String, String) = sqlx::query_as(
        "SELECT count(*), count(DISTINCT idx), max(attempts), \
                min(payload) FILTER (WHERE idx = 0), min(payload) FILTER (WHERE idx = $2) \
         FROM items WHERE job_id = $1::uuid AND state = 2",
    )
    .bind(&id)
    .bind(ITEMS as i32 - 1)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!((n, distinct, max_attempts), (ITEMS as i64, ITEMS as i64, 1));
    assert_eq!((first.as_str(), last.as_str()), ("item-0", "item-999999"));
    pool.close().await;
    drop(nginx);
    drop(server);
    db.drop_db().await;
}

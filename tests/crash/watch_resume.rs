//! `jobvisor watch` across a server restart: the stream breaks, the CLI
//! says so on stderr and watches again from the last sequence it showed,
//! with backoff; its output has every stored event once, in order.

use super::connect;
use jobvisor::pb;
use jobvisor_testkit::{
    db::TestDb,
    process::{ServerProcess, ServerSpec, free_port},
};
use std::{net::SocketAddr, path::PathBuf, process::Stdio, time::Duration};

#[tokio::test]
async fn the_cli_watch_resumes_after_a_restart_without_a_gap_or_a_repeat() {
    let db = TestDb::create().await;
    let log = tempfile::NamedTempFile::new().unwrap();
    let spec = ServerSpec {
        binary: PathBuf::from(env!("CARGO_BIN_EXE_jobvisor")),
        addr: SocketAddr::from(([127, 0, 0, 1], free_port().unwrap())),
        database_url: db.url.clone(),
        args: vec!["--shutdown-grace".into(), "3s".into()],
        log: log.path().to_path_buf(),
        env: vec![],
        cwd: None,
    };
    let mut server = ServerProcess::start(&spec).await.unwrap();
    let mut client = connect(spec.addr).await;
    // 40 items of 150 ms, 2 at a time (3 s); four of them fail, each a
    // stored event, before and after the restart.
    let job = client
        .start_job(pb::StartJobRequest {
            name: "watched".into(),
            executor: "sleep".into(),
            items: (0..40).map(|i| format!("item-{i}")).collect(),
            concurrency: 2,
            max_attempts: 1,
            params: [
                ("duration_ms".to_string(), "150".to_string()),
                ("fail_pattern".into(), "^item-(2|9|25|33)$".into()),
            ]
            .into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let watch = tokio::process::Command::new(env!("CARGO_BIN_EXE_jobvisor"))
        .args(["watch", &job.id, "--json", "--server"])
        .arg(format!("http://{}", spec.addr))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();

    tokio::time::sleep(Duration::from_millis(1200)).await;
    let drained = server.terminate(Duration::from_secs(10)).await.unwrap();
    assert_eq!(drained.code(), Some(0));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let _server = ServerProcess::start(&spec).await.unwrap();

    let out = tokio::time::timeout(Duration::from_secs(60), watch.wait_with_output())
        .await
        .expect("the watch ends with the job")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(3),
        "a job with failed items: {stderr}"
    );
    assert!(
        stderr.contains("resuming after sequence"),
        "the CLI says it resumes: {stderr}"
    );
    let done = client
        .get_job(pb::GetJobRequest {
            job_id: job.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    // Every line on stdout is one JSON event; the stored ones (not the
    // snapshots and progress of each stream) run 1..=last, once each.
    let mut stored = Vec::new();
    for line in stdout.lines() {
        let event: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line:?}"));
        let body = &event["event"];
        if body.get("snapshot").is_none() && body.get("progress").is_none() {
            stored.push(event["sequence"].as_u64().expect("a sequence"));
        }
    }
    assert_eq!(
        stored,
        (1..=done.last_sequence).collect::<Vec<_>>(),
        "gap-free and shown once: {stdout}"
    );
    db.drop_db().await;
}

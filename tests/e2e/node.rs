//! The Node.js example (`examples/node/client.js`), which loads the
//! repository's proto files at run time with @grpc/proto-loader, run as a
//! real process against a real server on the embedded store; the job it
//! drove is then checked through the Rust client.

use jobvisor::pb::{self, job_service_client::JobServiceClient};
use jobvisor_testkit::process::{ServerProcess, ServerSpec, free_port};
use std::{net::SocketAddr, path::PathBuf, process::Command, time::Duration};

fn repo(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(path)
}

const NEEDS_NODE: &str = "this test needs Node.js 18 or newer and npm: \
    apt-get install nodejs npm (.ci/run installs them)";

/// Fails the test, saying how to install them, unless `node` (18 or newer)
/// and `npm` run.
fn require_node_and_npm() {
    let node = match Command::new("node").arg("--version").output() {
        Ok(node) => node,
        Err(e) => panic!("{NEEDS_NODE} (node: {e})"),
    };
    let version = String::from_utf8_lossy(&node.stdout).trim().to_string();
    let major: Option<u32> = version
        .strip_prefix('v')
        .and_then(|v| v.split('.').next())
        .and_then(|m| m.parse().ok());
    assert!(
        node.status.success() && major.is_some_and(|m| m >= 18),
        "{NEEDS_NODE} (node --version said {version:?})"
    );
    match Command::new("npm").arg("--version").output() {
        Ok(npm) => assert!(npm.status.success(), "{NEEDS_NODE} (npm --version failed)"),
        Err(e) => panic!("{NEEDS_NODE} (npm: {e})"),
    }
}

#[tokio::test]
async fn the_node_example_starts_pauses_resumes_and_finishes_a_job() {
    require_node_and_npm();
    // The packages pinned by the committed package-lock.json, into
    // examples/node/node_modules (git-ignored); from npm's cache when it
    // has them.
    let install = Command::new("npm")
        .args(["ci", "--prefer-offline", "--no-audit", "--no-fund"])
        .current_dir(repo("examples/node"))
        .output()
        .unwrap();
    assert!(
        install.status.success(),
        "npm ci in examples/node failed:\n{}\n{}",
        String::from_utf8_lossy(&install.stdout),
        String::from_utf8_lossy(&install.stderr)
    );

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
    let mut server = ServerProcess::start(&spec).await.unwrap();
    let url = format!("http://{}", spec.addr);
    let server_url = url.clone();
    let run = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .arg(repo("examples/node/client.js"))
            .env("JOBVISOR_SERVER", server_url)
            .output()
            .unwrap()
    });
    let out = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("the client finishes")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "client failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for line in [
        "  paused: JOB_STATE_PAUS",
        " -> JOB_STATE_PAUSED ",
        "  resumed: JOB_STATE_RUNNING",
        "JOB_STATE_RUNNING -> JOB_STATE_SUCCEEDED every item ended",
        "ended JOB_STATE_SUCCEEDED: 20 succeeded, 1 pause(s)",
        "pausing a finished job: FAILED_PRECONDITION",
    ] {
        assert!(stdout.contains(line), "no {line:?} in:\n{stdout}");
    }

    // The job as the server has it, through the Rust client.
    let id = stdout
        .lines()
        .find_map(|l| l.strip_prefix("started ")?.split(':').next())
        .unwrap_or_else(|| panic!("no 'started <id>:' line in:\n{stdout}"))
        .to_string();
    let mut client = JobServiceClient::connect(url).await.unwrap();
    let job = client
        .get_job(pb::GetJobRequest { job_id: id })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(job.state(), pb::JobState::Succeeded);
    assert_eq!(job.name, "node-example");
    assert_eq!(job.labels.get("example").map(String::as_str), Some("node"));
    let counts = job.counts.unwrap();
    assert_eq!((counts.total, counts.succeeded), (20, 20));
    assert_eq!(job.pauses.len(), 1, "{:?}", job.pauses);
    assert_eq!(job.pauses[0].reason, "demo");
    assert!(job.pauses[0].resume_time.is_some(), "{:?}", job.pauses[0]);
    server.terminate(Duration::from_secs(10)).await.unwrap();
}

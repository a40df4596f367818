//! The Python example (`examples/python/client.py`), with stubs generated
//! by grpcio-tools, against a real server on the embedded store.

use jobvisor_testkit::process::{ServerProcess, ServerSpec, free_port};
use std::{net::SocketAddr, path::PathBuf, process::Command, time::Duration};

fn repo(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(path)
}

#[tokio::test]
async fn the_python_example_starts_pauses_resumes_and_finishes_a_job() {
    let probe = Command::new("python3")
        .args(["-c", "import grpc, grpc_tools"])
        .output();
    assert!(
        probe.is_ok_and(|o| o.status.success()),
        "this test needs Python 3 with grpcio and grpcio-tools: \
         python3 -m pip install grpcio grpcio-tools (.ci/run installs them)"
    );
    let dir = tempfile::tempdir().unwrap();
    let generated = dir.path().join("gen");
    std::fs::create_dir_all(&generated).unwrap();
    let protoc = Command::new("python3")
        .args(["-m", "grpc_tools.protoc", "-I"])
        .arg(repo("proto"))
        .arg(format!("--python_out={}", generated.display()))
        .arg(format!("--grpc_python_out={}", generated.display()))
        .arg(repo("proto/jobvisor/v1/jobvisor.proto"))
        .output()
        .unwrap();
    assert!(
        protoc.status.success(),
        "{}",
        String::from_utf8_lossy(&protoc.stderr)
    );

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
    let addr = spec.addr.to_string();
    let run = tokio::task::spawn_blocking(move || {
        Command::new("python3")
            .arg(repo("examples/python/client.py"))
            .arg(addr)
            .env("PYTHONPATH", &generated)
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
    assert!(
        stdout.contains("ended JOB_STATE_SUCCEEDED: 20 succeeded, 1 pause(s)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("pausing a finished job: FAILED_PRECONDITION"),
        "{stdout}"
    );
    server.terminate(Duration::from_secs(10)).await.unwrap();
}

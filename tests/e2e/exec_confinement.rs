//! What a server lets `exec` jobs do, against hostile callers: allowed
//! commands run the path the server resolved, whatever `PATH` a job
//! sets; a job may not set loader or interpreter variables; programs do
//! not see the server's environment; a `cwd` is checked; `kill_grace`
//! and `timeout` are bounded. The flags are tested on the real binary,
//! started as the README says.

use super::harness::{SECS, TestApp, TestDb, bad_fields, connect, spawn_app};
use jobvisor::pb::{self, JobState, job_service_client::JobServiceClient};
use jobvisor_testkit::process::{ServerProcess, ServerSpec, free_port};
use std::{
    net::SocketAddr,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
};
use tonic::{Code, transport::Channel};

fn exec(command: &str, params: &[(&str, &str)]) -> pb::StartJobRequest {
    let mut params: std::collections::HashMap<String, String> = params
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    params.insert("command".into(), command.into());
    pb::StartJobRequest {
        name: "confined".into(),
        executor: "exec".into(),
        items: vec!["a".into()],
        params,
        ..Default::default()
    }
}

/// A shell command run by `sh -c`.
fn shell(script: &str, more: &[(&str, &str)]) -> pb::StartJobRequest {
    let args = serde_json::to_string(&["-c", script]).unwrap();
    let mut params = vec![("args", args.as_str())];
    params.extend_from_slice(more);
    exec("sh", &params)
}

/// `jobvisor serve` with these flags and environment, on its own database.
struct Served {
    client: JobServiceClient<Channel>,
    _server: ServerProcess,
    db: TestDb,
    _dir: tempfile::TempDir,
}

impl Served {
    async fn start(args: &[&str], env: &[(&str, &str)]) -> Served {
        Served::start_with(args, env, |url| url.to_string()).await
    }

    async fn start_with(
        args: &[&str],
        env: &[(&str, &str)],
        url: impl Fn(&str) -> String,
    ) -> Served {
        let db = TestDb::create().await;
        let dir = tempfile::tempdir().unwrap();
        let spec = ServerSpec {
            binary: PathBuf::from(env!("CARGO_BIN_EXE_jobvisor")),
            addr: SocketAddr::from(([127, 0, 0, 1], free_port().unwrap())),
            database_url: url(&db.url),
            args: args.iter().map(|a| a.to_string()).collect(),
            log: dir.path().join("server.log"),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            cwd: None,
        };
        let server = ServerProcess::start(&spec).await.unwrap();
        Served {
            client: JobServiceClient::new(connect(spec.addr).await),
            _server: server,
            db,
            _dir: dir,
        }
    }

    async fn start_job(&self, request: pb::StartJobRequest) -> Result<pb::Job, tonic::Status> {
        self.client
            .clone()
            .start_job(request)
            .await
            .map(|r| r.into_inner())
    }

    /// Runs a one-item job to its end and returns its item's result.
    async fn result_of(&self, request: pb::StartJobRequest) -> String {
        let job = self.start_job(request).await.expect("StartJob");
        let deadline = std::time::Instant::now() + SECS(20);
        loop {
            let mut client = self.client.clone();
            let state = client
                .get_job(pb::GetJobRequest {
                    job_id: job.id.clone(),
                })
                .await
                .unwrap()
                .into_inner()
                .state;
            let item = || async {
                client
                    .clone()
                    .list_job_items(pb::ListJobItemsRequest {
                        job_id: job.id.clone(),
                        page_size: 10,
                        ..Default::default()
                    })
                    .await
                    .unwrap()
                    .into_inner()
                    .items
                    .remove(0)
            };
            if state == JobState::Succeeded as i32 {
                return item().await.result;
            }
            if state == JobState::Failed as i32 || std::time::Instant::now() > deadline {
                panic!("the job did not succeed: {:?}", item().await);
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    async fn stop(self) {
        drop(self._server);
        self.db.drop_db().await;
    }
}

/// A directory with a fake `date` that reports itself.
fn fake_date() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let fake = dir.path().join("date");
    std::fs::write(&fake, "#!/bin/sh\necho '@result fake'\n").unwrap();
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

fn assert_refused(status: &tonic::Status, field: &str, naming: &str) {
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_eq!(bad_fields(status), [field], "{status:?}");
    assert!(status.message().contains(naming), "{}", status.message());
}

/// `--exec-commands date` resolves `date` on the server's PATH when it
/// starts; a job that puts a directory with its own `date` first on its
/// `PATH` (even with the operator's leave to set `PATH`), or `PATH=.`
/// with a `cwd` there, still runs the real one.
#[tokio::test]
async fn allowed_commands_run_the_path_the_server_resolved() {
    let fake = fake_date();
    let fake_dir = fake.path().to_str().unwrap();
    let server = Served::start(
        &[
            "--allow-exec",
            "--exec-commands",
            "date,sh",
            "--exec-allow-env",
            "PATH",
        ],
        &[],
    )
    .await;
    let real = [("args", r#"["+@result real"]"#)];
    let path_first = format!(r#"{{"PATH":"{fake_dir}:/usr/bin:/bin"}}"#);
    let mut params = real.to_vec();
    params.push(("env", path_first.as_str()));
    assert_eq!(server.result_of(exec("date", &params)).await, "real");
    let mut params = real.to_vec();
    params.extend([("env", r#"{"PATH":"."}"#), ("cwd", fake_dir)]);
    assert_eq!(server.result_of(exec("date", &params)).await, "real");
    // The job's PATH still reaches the program (the operator allowed it),
    // so the fake is what the program itself would find.
    let found = server
        .result_of(shell(
            r#"echo "@result $(command -v date)""#,
            &[("env", path_first.as_str())],
        ))
        .await;
    assert_eq!(found, format!("{fake_dir}/date"));

    // The fake is not an allowed command, by name or path.
    let status = server
        .start_job(exec(&format!("{fake_dir}/date"), &[]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    // Only PATH was allowed: the loader's variables stay refused.
    let status = server
        .start_job(exec(
            "date",
            &[("env", r#"{"LD_PRELOAD":"/tmp/evil.so","LANG":"C"}"#)],
        ))
        .await
        .unwrap_err();
    assert_refused(&status, "params[env]", "LD_PRELOAD");
    server.stop().await;
}

/// A job may not set variables that choose the program or make it load
/// other code (without the operator's leave): refused at StartJob, by
/// name.
#[tokio::test]
async fn a_job_may_not_set_loader_or_search_variables() {
    let app = spawn_app().await;
    let fake = fake_date();
    let path = format!(r#"{{"PATH":"{}"}}"#, fake.path().display());
    for (env, key) in [
        (path.as_str(), "PATH"),
        (r#"{"LD_PRELOAD":"/tmp/evil.so"}"#, "LD_PRELOAD"),
        (r#"{"LD_LIBRARY_PATH":"/tmp"}"#, "LD_LIBRARY_PATH"),
        (r#"{"PYTHONPATH":"/tmp"}"#, "PYTHONPATH"),
        (r#"{"BASH_ENV":"/tmp/rc"}"#, "BASH_ENV"),
        (r#"{"NODE_OPTIONS":"--require /tmp/x.js"}"#, "NODE_OPTIONS"),
    ] {
        let status = app
            .client
            .clone()
            .start_job(exec("date", &[("env", env)]))
            .await
            .unwrap_err();
        assert_refused(&status, "params[env]", key);
    }
    let ok = app.start(exec("date", &[("env", r#"{"LANG":"C"}"#)])).await;
    app.wait_for(&ok.id, JobState::Succeeded, SECS(10)).await;
    app.stop().await;
}

/// Programs start from a clean environment: the variables the operator
/// passes, `PATH`, the job's own and the protocol's — never the server's
/// database URL, tokens or anything else it was started with.
#[tokio::test]
async fn programs_do_not_see_the_servers_environment() {
    let marker = uuid::Uuid::new_v4().simple().to_string();
    let secret = format!("secret-{marker}");
    let shown = format!("shown-{marker}");
    let password = format!("pw{}", &marker[..8]);
    let server = Served::start_with(
        &["--allow-exec", "--exec-env-pass", "PROBE_SHOWN,LANG"],
        &[
            ("PROBE_SECRET", secret.as_str()),
            ("JOBVISOR_TOKEN", secret.as_str()),
            ("AWS_SECRET_ACCESS_KEY", secret.as_str()),
            ("PROBE_SHOWN", shown.as_str()),
        ],
        // Trust authentication ignores the password.
        |url| url.replace("postgres@", &format!("postgres:{password}@")),
    )
    .await;
    let env = server
        .result_of(shell(
            r#"echo "@result $(env | tr '\n' ' ')""#,
            &[("env", r#"{"JOB_OWN":"mine"}"#)],
        ))
        .await;
    for seen in [
        format!("PROBE_SHOWN={shown}"),
        "JOB_OWN=mine".into(),
        "JOBVISOR_ITEM=a".into(),
        "PATH=/".into(),
    ] {
        assert!(env.contains(&seen), "{seen} missing from {env}");
    }
    for unseen in [
        secret.as_str(),
        password.as_str(),
        "DATABASE_URL",
        "JOBVISOR_TOKEN",
        "PROBE_SECRET",
        "RUST_LOG",
    ] {
        assert!(!env.contains(unseen), "{unseen} leaked into {env}");
    }
    server.stop().await;
}

async fn pwd_of(app: &TestApp, cwd: &str) -> Result<String, tonic::Status> {
    let job = app
        .client
        .clone()
        .start_job(shell(r#"echo "@result $(pwd -P)""#, &[("cwd", cwd)]))
        .await?
        .into_inner();
    app.wait_for(&job.id, JobState::Succeeded, SECS(10)).await;
    Ok(app.items(&job.id).await[0].result.clone())
}

/// Without `--exec-cwd-root`, a `cwd` is an existing absolute directory
/// with no `..` in it.
#[tokio::test]
async fn a_cwd_is_an_existing_absolute_directory() {
    let app = spawn_app().await;
    let dir = tempfile::tempdir().unwrap();
    let real = dir.path().canonicalize().unwrap();
    assert_eq!(
        pwd_of(&app, dir.path().to_str().unwrap()).await.unwrap(),
        real.display().to_string()
    );
    let missing = dir.path().join("missing").display().to_string();
    let dotted = format!("{}/../..", dir.path().display());
    for bad in [".", "tmp", dotted.as_str(), missing.as_str()] {
        let status = pwd_of(&app, bad).await.unwrap_err();
        assert_refused(&status, "params[cwd]", bad);
    }
    app.stop().await;
}

/// With `--exec-cwd-root`, programs run inside it: there by default, a
/// relative `cwd` is taken from it, and nothing (a symbolic link
/// included) leads out.
#[tokio::test]
async fn a_cwd_stays_under_the_root() {
    let top = tempfile::tempdir().unwrap();
    let root = top.path().canonicalize().unwrap().join("root");
    std::fs::create_dir_all(root.join("work")).unwrap();
    std::os::unix::fs::symlink("/", root.join("escape")).unwrap();
    let server = Served::start(
        &["--allow-exec", "--exec-cwd-root", root.to_str().unwrap()],
        &[],
    )
    .await;
    let pwd = |cwd: Option<&str>| {
        let more: Vec<(&str, &str)> = cwd.map(|c| ("cwd", c)).into_iter().collect();
        shell(r#"echo "@result $(pwd -P)""#, &more)
    };
    let show = |p: &Path| p.display().to_string();
    assert_eq!(server.result_of(pwd(None)).await, show(&root));
    assert_eq!(
        server.result_of(pwd(Some("work"))).await,
        show(&root.join("work"))
    );
    for bad in ["escape", "/tmp", "work/../..", "missing"] {
        let status = server.start_job(pwd(Some(bad))).await.unwrap_err();
        assert_refused(&status, "params[cwd]", bad);
    }
    server.stop().await;
}

/// `kill_grace` and `timeout` are bounded: a cancelled job whose program
/// ignores SIGTERM cannot stay CANCELLING for years.
#[tokio::test]
async fn kill_grace_and_timeout_are_bounded() {
    let app = spawn_app().await;
    for (key, value) in [
        ("kill_grace", "100000000000days"),
        ("kill_grace", "11m"),
        ("timeout", "100000000000days"),
    ] {
        let status = app
            .client
            .clone()
            .start_job(shell("sleep 1", &[(key, value)]))
            .await
            .unwrap_err();
        assert_refused(&status, &format!("params[{key}]"), "longer than the limit");
    }
    let at_the_bound = app
        .start(shell(
            "true",
            &[("kill_grace", "10m"), ("timeout", "30days")],
        ))
        .await;
    app.wait_for(&at_the_bound.id, JobState::Succeeded, SECS(10))
        .await;
    app.stop().await;
}

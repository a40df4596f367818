//! One live job per name: StartJob's `exclusive`, RunJob (start, resume or
//! find running, race-free), names on the command line, on both stores.

use super::harness::*;
use jobvisor::pb::{self, JobState, RunOutcome};
use std::time::Duration;
use tonic::Code;

const WITHIN: Duration = Duration::from_secs(10);

fn nightly(app: &TestApp) -> pb::StartJobRequest {
    pb::StartJobRequest {
        name: "nightly-quotes".into(),
        ..app.job("gate", 3, 1, &[])
    }
}

async fn run(
    app: &TestApp,
    job: pb::StartJobRequest,
) -> Result<(pb::Job, RunOutcome), tonic::Status> {
    let answer = app
        .client
        .clone()
        .run_job(pb::RunJobRequest {
            job: Some(job),
            reason: "nightly".into(),
        })
        .await?
        .into_inner();
    Ok((
        answer.job.unwrap(),
        RunOutcome::try_from(answer.outcome).unwrap(),
    ))
}

async fn named(app: &TestApp, name: &str) -> Vec<pb::Job> {
    app.client
        .clone()
        .list_jobs(pb::ListJobsRequest {
            name: name.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .jobs
}

async fn starts_resumes_and_finds_running(store: StoreKind) {
    let app = spawn_app_with(Options {
        store,
        ..Options::default()
    })
    .await;
    let (job, outcome) = run(&app, nightly(&app)).await.unwrap();
    assert_eq!(outcome, RunOutcome::Started);
    assert!(job.exclusive);
    let (again, outcome) = run(&app, nightly(&app)).await.unwrap();
    assert_eq!(outcome, RunOutcome::AlreadyRunning);
    assert_eq!(again.id, job.id);
    app.pause(&job.id, pb::PauseMode::Immediate).await.unwrap();
    app.wait_for(&job.id, JobState::Paused, WITHIN).await;
    let (resumed, outcome) = run(&app, nightly(&app)).await.unwrap();
    assert_eq!(outcome, RunOutcome::Resumed);
    assert_eq!(resumed.id, job.id);
    assert_eq!(resumed.state, JobState::Running as i32);
    assert_eq!(named(&app, "nightly-quotes").await.len(), 1);
    // Ended, the name is free: the next run starts a new job.
    app.cancel(&job.id).await.unwrap();
    app.wait_for(&job.id, JobState::Cancelled, WITHIN).await;
    let (next, outcome) = run(&app, nightly(&app)).await.unwrap();
    assert_eq!(outcome, RunOutcome::Started);
    assert_ne!(next.id, job.id);
    app.stop().await;
}

#[tokio::test]
async fn run_starts_finds_running_and_resumes_one_job_per_name() {
    starts_resumes_and_finds_running(StoreKind::Postgres).await;
}

#[tokio::test]
async fn run_starts_finds_running_and_resumes_on_the_embedded_store() {
    starts_resumes_and_finds_running(StoreKind::Embedded).await;
}

async fn concurrent_runs_make_one_job(store: StoreKind) {
    let app = spawn_app_with(Options {
        store,
        ..Options::default()
    })
    .await;
    let calls = (0..8).map(|_| run(&app, nightly(&app)));
    let answers = futures::future::join_all(calls).await;
    let mut started = 0;
    let mut ids = std::collections::BTreeSet::new();
    for answer in answers {
        let (job, outcome) = answer.expect("every run succeeds");
        ids.insert(job.id);
        match outcome {
            RunOutcome::Started => started += 1,
            RunOutcome::AlreadyRunning => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(started, 1, "one call started it");
    assert_eq!(ids.len(), 1, "every call answered the same job");
    assert_eq!(
        named(&app, "nightly-quotes").await.len(),
        1,
        "one job stored"
    );
    app.stop().await;
}

#[tokio::test]
async fn concurrent_runs_of_one_name_make_one_job() {
    concurrent_runs_make_one_job(StoreKind::Postgres).await;
}

#[tokio::test]
async fn concurrent_runs_of_one_name_make_one_job_on_the_embedded_store() {
    concurrent_runs_make_one_job(StoreKind::Embedded).await;
}

async fn a_run_made_again_with_its_request_id_answers_as_the_first(store: StoreKind) {
    let app = spawn_app_with(Options {
        store,
        ..Options::default()
    })
    .await;
    let with_id = |id: &str| pb::StartJobRequest {
        request_id: id.into(),
        ..nightly(&app)
    };
    let (job, outcome) = run(&app, with_id("nightly-1")).await.unwrap();
    assert_eq!(outcome, RunOutcome::Started);
    // The same call again (its answer lost, or an upload in pages picking
    // up where it stopped): the first call's answer, the same job.
    let (again, outcome) = run(&app, with_id("nightly-1")).await.unwrap();
    assert_eq!(
        (outcome, again.id.as_str()),
        (RunOutcome::Started, job.id.as_str())
    );
    // Another call finds it running, whatever its own request id.
    let (other, outcome) = run(&app, with_id("nightly-2")).await.unwrap();
    assert_eq!(
        (outcome, other.id.as_str()),
        (RunOutcome::AlreadyRunning, job.id.as_str())
    );
    let (other, outcome) = run(&app, nightly(&app)).await.unwrap();
    assert_eq!(
        (outcome, other.id.as_str()),
        (RunOutcome::AlreadyRunning, job.id.as_str())
    );
    // A different request under the first one's id is refused, and
    // changes nothing.
    let different = pb::StartJobRequest {
        items: vec!["other".into()],
        ..with_id("nightly-1")
    };
    let refused = run(&app, different).await.unwrap_err();
    assert_eq!(refused.code(), Code::AlreadyExists, "{refused:?}");
    assert!(refused.message().contains("nightly-1"), "{refused:?}");
    assert_eq!(named(&app, "nightly-quotes").await.len(), 1);
    assert_eq!(app.items(&job.id).await.len(), 3);
    app.stop().await;
}

#[tokio::test]
async fn a_run_made_again_with_its_request_id_answers_as_the_first_did() {
    a_run_made_again_with_its_request_id_answers_as_the_first(StoreKind::Postgres).await;
}

#[tokio::test]
async fn a_run_made_again_with_its_request_id_answers_as_the_first_did_on_the_embedded_store() {
    a_run_made_again_with_its_request_id_answers_as_the_first(StoreKind::Embedded).await;
}

#[tokio::test]
async fn an_exclusive_start_is_refused_while_a_live_job_holds_the_name() {
    let app = spawn_app().await;
    let first = app
        .start(pb::StartJobRequest {
            exclusive: true,
            ..nightly(&app)
        })
        .await;
    let refused = app
        .client
        .clone()
        .start_job(pb::StartJobRequest {
            exclusive: true,
            ..nightly(&app)
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::AlreadyExists);
    assert_eq!(reason(&refused), "JOB_NAME_TAKEN");
    assert!(refused.message().contains(&first.id), "{refused:?}");
    // A job that does not ask for the name to itself may share it.
    let shared = app.start(nightly(&app)).await;
    assert!(!shared.exclusive);
    // Paused still holds it.
    app.pause(&first.id, pb::PauseMode::Immediate)
        .await
        .unwrap();
    app.wait_for(&first.id, JobState::Paused, WITHIN).await;
    let refused = app
        .client
        .clone()
        .start_job(pb::StartJobRequest {
            exclusive: true,
            ..nightly(&app)
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::AlreadyExists);
    app.stop().await;
}

#[tokio::test]
async fn a_dry_run_says_what_a_run_would_do_and_changes_nothing() {
    let app = spawn_app().await;
    let dry = pb::StartJobRequest {
        validate_only: true,
        ..nightly(&app)
    };
    let (job, outcome) = run(&app, dry.clone()).await.unwrap();
    assert_eq!((outcome, job.id.as_str()), (RunOutcome::Started, ""));
    assert!(
        named(&app, "nightly-quotes").await.is_empty(),
        "nothing stored"
    );
    let (started, _) = run(&app, nightly(&app)).await.unwrap();
    app.pause(&started.id, pb::PauseMode::Immediate)
        .await
        .unwrap();
    app.wait_for(&started.id, JobState::Paused, WITHIN).await;
    let (job, outcome) = run(&app, dry).await.unwrap();
    assert_eq!(outcome, RunOutcome::Resumed);
    assert_eq!(job.state, JobState::Paused as i32, "still paused");
    assert_eq!(app.get(&started.id).await.state, JobState::Paused as i32);
    app.stop().await;
}

#[tokio::test]
async fn a_run_without_a_job_or_a_name_is_refused_naming_the_field() {
    let app = spawn_app().await;
    let status = app
        .client
        .clone()
        .run_job(pb::RunJobRequest::default())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(bad_fields(&status), ["job"]);
    let status = run(
        &app,
        pb::StartJobRequest {
            name: " ".into(),
            ..nightly(&app)
        },
    )
    .await
    .unwrap_err();
    assert_eq!(bad_fields(&status), ["name"]);
    app.stop().await;
}

#[tokio::test]
async fn the_cli_runs_by_name_and_names_a_live_job_wherever_an_id_goes() {
    let app = spawn_app().await;
    let server = format!("http://{}", app.addr);
    let cli = |args: &[&str]| {
        let server = server.clone();
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        async move {
            let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_jobvisor"))
                .args(&args)
                .args(["--server", &server])
                .output()
                .await
                .unwrap();
            (
                out.status.success(),
                String::from_utf8_lossy(&out.stdout).to_string(),
                String::from_utf8_lossy(&out.stderr).to_string(),
            )
        }
    };
    let (ok, out, err) = cli(&[
        "run",
        "--name",
        "nightly",
        "--executor",
        "gate",
        "--count",
        "3",
    ])
    .await;
    assert!(ok, "{out} {err}");
    assert!(out.starts_with("started:"), "{out}");
    let (ok, out, _) = cli(&[
        "run",
        "--name",
        "nightly",
        "--executor",
        "gate",
        "--count",
        "3",
    ])
    .await;
    assert!(ok && out.starts_with("already running:"), "{out}");
    let (ok, out, err) = cli(&["pause", "nightly", "--immediate"]).await;
    assert!(ok, "{out} {err}");
    let (ok, out, _) = cli(&["get", "nightly"]).await;
    assert!(ok && out.contains("name:      nightly"), "{out}");
    let (ok, out, _) = cli(&[
        "run",
        "--name",
        "nightly",
        "--executor",
        "gate",
        "--count",
        "3",
    ])
    .await;
    assert!(ok && out.starts_with("resumed:"), "{out}");
    // More items than one request: sent in pages, the job closed after
    // the last one, and found running (its items left alone) next time.
    let many = [
        "run",
        "--name",
        "paged",
        "--executor",
        "gate",
        "--count",
        "3000",
        "--page-bytes",
        "4096",
        "--json",
    ];
    let (ok, out, err) = cli(&many).await;
    assert!(ok, "{out} {err}");
    let answer: serde_json::Value = serde_json::from_str(out.trim()).expect(&out);
    assert_eq!(answer["outcome"], "started", "{out}");
    let paged = answer["job"]["id"].as_str().unwrap().to_string();
    let job = app.get(&paged).await;
    assert_eq!(job.counts.unwrap().total, 3000, "{job:?}");
    assert!(!job.open, "the last page closed it: {job:?}");
    let (ok, out, err) = cli(&many).await;
    assert!(ok, "{out} {err}");
    assert!(out.contains("\"outcome\":\"already running\""), "{out}");
    assert_eq!(app.get(&paged).await.counts.unwrap().total, 3000);
    // Two live jobs of one name: the CLI lists them rather than guess.
    app.start(pb::StartJobRequest {
        name: "nightly".into(),
        ..app.job("gate", 1, 1, &[])
    })
    .await;
    let (ok, _, err) = cli(&["get", "nightly"]).await;
    assert!(
        !ok && err.contains("2 live jobs are named \"nightly\""),
        "{err}"
    );
    let (ok, _, err) = cli(&["get", "nobody"]).await;
    assert!(
        !ok && err.contains("neither a job id nor the name of a live job"),
        "{err}"
    );
    app.stop().await;
}

#[tokio::test]
async fn get_job_shows_time_rate_eta_and_the_items_running_now() {
    let app = spawn_app().await;
    let job = app
        .start(app.job("sleep", 40, 2, &[("duration_ms", "100"), ("steps", "2")]))
        .await;
    let server = format!("http://{}", app.addr);
    tokio::time::sleep(Duration::from_millis(700)).await;
    let got = app.get(&job.id).await;
    let status = got.status.expect("GetJob sets the status");
    assert!(status.active_time.unwrap().nanos > 0 || status.active_time.unwrap().seconds > 0);
    assert!(status.items_per_second > 1.0, "{status:?}");
    assert!(status.eta.is_some(), "{status:?}");
    assert!(
        !status.running_items.is_empty() && status.running_items.len() <= 2,
        "{status:?}"
    );
    for item in &status.running_items {
        assert_eq!(item.state, pb::ItemState::Running as i32);
        assert!(item.update_time.is_some(), "since when it runs");
    }
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_jobvisor"))
        .args(["get", &job.id, "--server", &server])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    for line in ["elapsed:", "rate:", "ETA", "running:   #"] {
        assert!(stdout.contains(line), "{line} in {stdout}");
    }
    // Ended: no ETA, nothing running; the status stays.
    app.cancel(&job.id).await.unwrap();
    let ended = app.wait_for(&job.id, JobState::Cancelled, WITHIN).await;
    let ended = app.get(&ended.id).await.status.unwrap();
    assert!(
        ended.eta.is_none() && ended.running_items.is_empty(),
        "{ended:?}"
    );
    app.stop().await;
}

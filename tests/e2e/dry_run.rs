//! Dry runs (StartJob `validate_only`, `jobvisor start --dry-run`): every
//! check a start makes, and nothing stored, not even the request id.

use super::harness::{bad_fields, spawn_app};
use jobvisor::pb::{self, JobState};

async fn stored_jobs(app: &super::harness::TestApp) -> usize {
    app.client
        .clone()
        .list_jobs(pb::ListJobsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .jobs
        .len()
}

#[tokio::test]
async fn a_dry_run_answers_the_job_as_it_would_start_and_stores_nothing() {
    let app = spawn_app().await;
    let mut request = app.job("sleep", 10, 2, &[("duration_ms", "5")]);
    request.request_id = "nightly".into();
    request.labels = [("team".to_string(), "video".to_string())].into();
    let dry = app
        .client
        .clone()
        .start_job(pb::StartJobRequest {
            validate_only: true,
            ..request.clone()
        })
        .await
        .expect("a valid job passes")
        .into_inner();
    assert_eq!(dry.id, "", "a dry run has no id");
    assert_eq!(dry.state, JobState::Running as i32);
    assert_eq!(dry.counts.as_ref().unwrap().total, 10);
    assert_eq!(dry.concurrency, 2);
    assert_eq!(dry.labels.get("team").map(String::as_str), Some("video"));
    assert_eq!(stored_jobs(&app).await, 0, "nothing stored");

    // Not even the request id: a start with it afterwards creates its job.
    let job = app.start(request.clone()).await;
    assert!(!job.id.is_empty());
    assert_eq!(stored_jobs(&app).await, 1);
    // A dry run does not read request ids either (documented).
    let again = app
        .client
        .clone()
        .start_job(pb::StartJobRequest {
            validate_only: true,
            ..request
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.id, "");
    assert_eq!(stored_jobs(&app).await, 1);

    // A job that would start paused is answered PAUSED, with its pause.
    let mut paused = app.job("sleep", 3, 1, &[]);
    paused.start_paused = true;
    paused.validate_only = true;
    let dry = app
        .client
        .clone()
        .start_job(paused)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(dry.state, JobState::Paused as i32);
    assert_eq!(dry.pauses.len(), 1);
    assert_eq!(stored_jobs(&app).await, 1);
    app.stop().await;
}

#[tokio::test]
async fn a_dry_run_refuses_what_a_start_would() {
    let app = spawn_app().await;
    let mut bad = app.job("sleep", 3, 0, &[("duration_ms", "soon")]);
    bad.max_attempts = 1_000_000;
    let started = app.client.clone().start_job(bad.clone()).await.unwrap_err();
    let dry = app
        .client
        .clone()
        .start_job(pb::StartJobRequest {
            validate_only: true,
            ..bad
        })
        .await
        .unwrap_err();
    assert_eq!(dry.code(), tonic::Code::InvalidArgument);
    assert_eq!(bad_fields(&dry), bad_fields(&started), "the same checks");
    assert!(bad_fields(&dry).len() >= 2, "{:?}", bad_fields(&dry));
    let unknown = app
        .client
        .clone()
        .start_job(pb::StartJobRequest {
            validate_only: true,
            ..app.job("no-such-executor", 1, 1, &[])
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::InvalidArgument);
    assert_eq!(bad_fields(&unknown), vec!["executor".to_string()]);
    assert_eq!(stored_jobs(&app).await, 0);
    app.stop().await;
}

#[tokio::test]
async fn the_cli_dry_run_prints_the_job_and_stores_nothing() {
    let app = spawn_app().await;
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_jobvisor"))
        .args(["start", "--dry-run", "--name", "nightly", "--count", "5"])
        .args(["--server", &format!("http://{}", app.addr)])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("dry run"), "{stdout}");
    assert!(stdout.contains("5 total"), "{stdout}");
    assert_eq!(stored_jobs(&app).await, 0);
    app.stop().await;
}

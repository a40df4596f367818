//! What a caller gets for a wrong call: the right code, a stable reason,
//! every bad field named, and nothing stored.

use super::harness::{SECS, bad_fields, reason, spawn_app};
use jobvisor::pb::{self, JobState, PauseMode};
use tonic::Code;

async fn jobs_stored(app: &super::harness::TestApp) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM jobs")
        .fetch_one(app.pg())
        .await
        .unwrap()
}

#[tokio::test]
async fn illegal_transitions_are_refused_with_a_reason() {
    let app = spawn_app().await;
    let job = app
        .start(app.job("sleep", 2, 2, &[("duration_ms", "0")]))
        .await;
    app.wait_for(&job.id, JobState::Succeeded, SECS(10)).await;
    for (status, expected) in [
        (
            app.pause(&job.id, PauseMode::Graceful).await.unwrap_err(),
            "JOB_NOT_PAUSABLE",
        ),
        (
            app.pause(&job.id, PauseMode::Immediate).await.unwrap_err(),
            "JOB_NOT_PAUSABLE",
        ),
        (app.resume(&job.id).await.unwrap_err(), "JOB_NOT_RESUMABLE"),
        (
            app.cancel(&job.id).await.unwrap_err(),
            "JOB_NOT_CANCELLABLE",
        ),
    ] {
        assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
        assert_eq!(reason(&status), expected);
        assert!(
            status.message().contains("succeeded"),
            "{}",
            status.message()
        );
    }

    // Cancelled: pause and resume refused, cancel is a no-op.
    let job = app.start(app.job("gate", 3, 1, &[])).await;
    app.cancel(&job.id).await.unwrap();
    app.wait_for(&job.id, JobState::Cancelled, SECS(5)).await;
    let status = app.pause(&job.id, PauseMode::Graceful).await.unwrap_err();
    assert_eq!(
        (status.code(), reason(&status).as_str()),
        (Code::FailedPrecondition, "JOB_NOT_PAUSABLE")
    );
    let status = app.resume(&job.id).await.unwrap_err();
    assert_eq!(reason(&status), "JOB_NOT_RESUMABLE");
    let again = app.cancel(&job.id).await.unwrap();
    assert_eq!(again.state, JobState::Cancelled as i32);
    app.stop().await;
}

#[tokio::test]
async fn idempotent_calls_return_the_job_unchanged() {
    let app = spawn_app().await;
    let job = app.start(app.job("gate", 3, 1, &[])).await;
    // An item held at the gate keeps a graceful pause PAUSING; without
    // one, the job would go on to PAUSED between the two pauses below.
    app.eventually("an item in flight", SECS(10), || async {
        app.executions.running() == 1
    })
    .await;
    // Resume of a running job, pause of a pausing or paused job: no-ops.
    let same = app.resume(&job.id).await.unwrap();
    assert_eq!(same.state, JobState::Running as i32);
    let first = app.pause(&job.id, PauseMode::Graceful).await.unwrap();
    let second = app.pause(&job.id, PauseMode::Graceful).await.unwrap();
    assert_eq!(first.last_sequence, second.last_sequence);
    assert_eq!(second.pauses.len(), 1);
    app.gate.open();
    app.wait_for(&job.id, JobState::Paused, SECS(5)).await;
    let third = app.pause(&job.id, PauseMode::Immediate).await.unwrap();
    assert_eq!(third.state, JobState::Paused as i32);
    assert_eq!(third.pauses.len(), 1);
    app.stop().await;
}

#[tokio::test]
async fn unknown_jobs_are_not_found() {
    let app = spawn_app().await;
    let id = uuid::Uuid::new_v4().to_string();
    let mut client = app.client.clone();
    let calls = [
        client
            .get_job(pb::GetJobRequest { job_id: id.clone() })
            .await
            .map(|_| ()),
        app.pause(&id, PauseMode::Graceful).await.map(|_| ()),
        app.resume(&id).await.map(|_| ()),
        app.cancel(&id).await.map(|_| ()),
        client
            .list_job_items(pb::ListJobItemsRequest {
                job_id: id.clone(),
                ..Default::default()
            })
            .await
            .map(|_| ()),
    ];
    for result in calls {
        let status = result.unwrap_err();
        assert_eq!(status.code(), Code::NotFound, "{status:?}");
        assert_eq!(reason(&status), "JOB_NOT_FOUND");
    }
    let status = client
        .watch_job(pb::WatchJobRequest {
            job_id: id,
            from_sequence: 0,
            window: None,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    app.stop().await;
}

#[tokio::test]
async fn each_bad_field_is_named_and_nothing_is_stored() {
    let app = spawn_app().await;
    let mut client = app.client.clone();
    let valid = app.job("sleep", 2, 1, &[]);
    let cases: Vec<(pb::StartJobRequest, &[&str])> = vec![
        (
            pb::StartJobRequest {
                name: String::new(),
                ..valid.clone()
            },
            &["name"],
        ),
        (
            pb::StartJobRequest {
                name: "x".repeat(201),
                ..valid.clone()
            },
            &["name"],
        ),
        (
            pb::StartJobRequest {
                executor: "nope".into(),
                ..valid.clone()
            },
            &["executor"],
        ),
        (
            pb::StartJobRequest {
                items: vec![],
                ..valid.clone()
            },
            &["items"],
        ),
        (
            pb::StartJobRequest {
                items: vec!["x".repeat(64 * 1024 + 1)],
                ..valid.clone()
            },
            &["items[0]"],
        ),
        (
            pb::StartJobRequest {
                concurrency: 1025,
                ..valid.clone()
            },
            &["concurrency"],
        ),
        (
            pb::StartJobRequest {
                max_attempts: 101,
                ..valid.clone()
            },
            &["max_attempts"],
        ),
        (
            pb::StartJobRequest {
                params: [
                    ("steps".to_string(), "0".to_string()),
                    ("colour".into(), "red".into()),
                ]
                .into(),
                ..valid.clone()
            },
            &["params[colour]", "params[steps]"],
        ),
        (
            pb::StartJobRequest {
                params: [("fail_pattern".to_string(), "(".to_string())].into(),
                ..valid.clone()
            },
            &["params[fail_pattern]"],
        ),
        (
            pb::StartJobRequest {
                labels: [("bad key".to_string(), "v".to_string())].into(),
                ..valid.clone()
            },
            &["labels[bad key]"],
        ),
        (
            pb::StartJobRequest {
                name: String::new(),
                concurrency: 5000,
                ..valid.clone()
            },
            &["name", "concurrency"],
        ),
        (
            pb::StartJobRequest {
                retry_delay_max: Some(prost_types::Duration {
                    seconds: 60,
                    nanos: 0,
                }),
                ..valid.clone()
            },
            &["retry_delay_max"],
        ),
        (
            pb::StartJobRequest {
                retry_delay: Some(prost_types::Duration {
                    seconds: 25 * 3600,
                    nanos: 0,
                }),
                ..valid.clone()
            },
            &["retry_delay"],
        ),
        (
            pb::StartJobRequest {
                retry_delay: Some(prost_types::Duration {
                    seconds: -1,
                    nanos: 0,
                }),
                ..valid.clone()
            },
            &["retry_delay"],
        ),
    ];
    for (request, fields) in cases {
        let status = client.start_job(request).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert_eq!(bad_fields(&status), fields, "{}", status.message());
        for field in fields {
            assert!(status.message().contains(field), "{}", status.message());
        }
    }
    // A million and one items.
    let huge = pb::StartJobRequest {
        items: vec![String::new(); 1_000_001],
        ..valid.clone()
    };
    let status = client.start_job(huge).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("limit is 1000000"),
        "{}",
        status.message()
    );

    let bad_id = app
        .pause("not-a-uuid", PauseMode::Graceful)
        .await
        .unwrap_err();
    assert_eq!(bad_id.code(), Code::InvalidArgument);
    assert_eq!(bad_fields(&bad_id), ["job_id"]);
    let bad_mode = client
        .pause_job(pb::PauseJobRequest {
            job_id: uuid::Uuid::new_v4().to_string(),
            mode: 42,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(bad_fields(&bad_mode), ["mode"]);
    let bad_token = client
        .list_jobs(pb::ListJobsRequest {
            page_token: "garbage".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(bad_fields(&bad_token), ["page_token"]);
    let bad_state = client
        .list_jobs(pb::ListJobsRequest {
            states: vec![0, 99],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(bad_fields(&bad_state), ["states[0]", "states[1]"]);

    assert_eq!(
        jobs_stored(&app).await,
        0,
        "a refused request stores nothing"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_request_id_starts_one_job() {
    let app = spawn_app().await;
    let mut request = app.job("sleep", 3, 1, &[("duration_ms", "0")]);
    request.request_id = "nightly-2026-11-22".into();
    let first = app.start(request.clone()).await;
    let second = app.start(request.clone()).await;
    assert_eq!(first.id, second.id);
    assert_eq!(second.request_id, "nightly-2026-11-22");
    assert_eq!(jobs_stored(&app).await, 1);

    request.items.push("one more".into());
    let status = app.client.clone().start_job(request).await.unwrap_err();
    assert_eq!(status.code(), Code::AlreadyExists);
    assert_eq!(reason(&status), "REQUEST_ID_REUSED");
    assert_eq!(jobs_stored(&app).await, 1);

    // Concurrent retries of one request still create one job.
    let mut concurrent = app.job("sleep", 3, 1, &[("duration_ms", "0")]);
    concurrent.request_id = "burst".into();
    let calls = (0..10).map(|_| app.start(concurrent.clone()));
    let jobs = futures::future::join_all(calls).await;
    assert!(jobs.iter().all(|j| j.id == jobs[0].id));
    assert_eq!(jobs_stored(&app).await, 2);
    app.stop().await;
}

#[tokio::test]
async fn list_jobs_filters_and_pages() {
    let app = spawn_app().await;
    let mut ids = Vec::new();
    for i in 0..5 {
        let mut request = app.job("gate", 1, 1, &[]);
        request.labels = [(
            "team".to_string(),
            if i % 2 == 0 { "video" } else { "data" }.to_string(),
        )]
        .into();
        ids.push(app.start(request).await.id);
    }
    app.cancel(&ids[0]).await.unwrap();
    app.wait_for(&ids[0], JobState::Cancelled, SECS(5)).await;
    let mut client = app.client.clone();
    let video = client
        .list_jobs(pb::ListJobsRequest {
            labels: [("team".to_string(), "video".to_string())].into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let found: Vec<&str> = video.jobs.iter().map(|j| j.id.as_str()).collect();
    assert_eq!(
        found,
        [ids[4].as_str(), ids[2].as_str(), ids[0].as_str()],
        "newest first"
    );
    let cancelled = client
        .list_jobs(pb::ListJobsRequest {
            states: vec![JobState::Cancelled as i32],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(cancelled.jobs.len(), 1);
    // Pages of two walk every job once.
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = client
            .list_jobs(pb::ListJobsRequest {
                page_size: 2,
                page_token: token,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        seen.extend(page.jobs.into_iter().map(|j| j.id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    ids.reverse();
    assert_eq!(seen, ids);
    app.stop().await;
}

/// Runs `jobvisor serve` with `flag value` in an empty directory, with no
/// database: it must refuse to start with a message that names the flag
/// and says `expected`, and create nothing.
fn serve_refuses(flag: &str, value: &str, expected: &str) {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_jobvisor"))
        .args(["serve", "--listen", "127.0.0.1:0", flag, value])
        .env_remove("DATABASE_URL")
        .env("JOBVISOR_METRICS_LISTEN", "off")
        .env("JOBVISOR_HTTP_LISTEN", "off")
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success(), "{flag} {value} was accepted");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(flag) && stderr.contains(expected),
        "{flag} {value}: {stderr}"
    );
    // Nothing was created.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

/// A serve flag out of range stops the server before it touches any
/// store, naming the flag.
#[test]
fn a_watch_window_over_a_second_is_refused() {
    serve_refuses("--watch-window", "2s", "at most 1s");
}

/// So does a retention under a second, or one that is not a duration.
#[test]
fn a_bad_retention_is_refused() {
    serve_refuses("--retention", "500ms", "at least 1s");
    serve_refuses("--retention", "a month", "invalid value");
}

/// A label selector (ListJobs, ControlJobs) is checked as a job's labels
/// are: a NUL, a bad key, a value past 256 characters are named, never
/// sent to the store (a NUL made PostgreSQL fail: INTERNAL).
#[tokio::test]
async fn label_selectors_are_checked_as_labels_are() {
    let app = spawn_app().await;
    let mut client = app.client.clone();
    let job = app
        .start(app.job("sleep", 1, 1, &[("duration_ms", "60000")]))
        .await;
    let selector = |k: &str, v: &str| [(k.to_string(), v.to_string())].into();
    let cases: Vec<(std::collections::HashMap<String, String>, &str)> = vec![
        (selector("team", "a\0b"), "labels[team]"),
        (selector("team", &"v".repeat(1024 * 1024)), "labels[team]"),
        (selector("team", &"v".repeat(257)), "labels[team]"),
        (selector("bad key", "v"), "labels[bad key]"),
        (selector("t\0", "v"), "labels[t\0]"),
    ];
    for (labels, field) in cases {
        let listed = client
            .list_jobs(pb::ListJobsRequest {
                labels: labels.clone(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(listed.code(), Code::InvalidArgument, "{listed:?}");
        assert_eq!(bad_fields(&listed), [field]);
        for action in [
            pb::ControlAction::Pause,
            pb::ControlAction::Resume,
            pb::ControlAction::Cancel,
        ] {
            let controlled = client
                .control_jobs(pb::ControlJobsRequest {
                    action: action as i32,
                    labels: labels.clone(),
                    ..Default::default()
                })
                .await
                .unwrap_err();
            assert_eq!(controlled.code(), Code::InvalidArgument, "{controlled:?}");
            assert_eq!(bad_fields(&controlled), [field]);
        }
    }
    // The limits are a job's: the longest label value a job may carry
    // selects it.
    let long = "v".repeat(256);
    let mut labelled = app.job("sleep", 1, 1, &[("duration_ms", "60000")]);
    labelled.labels = selector("team", &long);
    let labelled = app.start(labelled).await;
    let listed = client
        .list_jobs(pb::ListJobsRequest {
            labels: selector("team", &long),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let ids: Vec<&str> = listed.jobs.iter().map(|j| j.id.as_str()).collect();
    assert_eq!(ids, [labelled.id.as_str()]);
    assert_eq!(app.get(&job.id).await.state, JobState::Running as i32);
    app.stop().await;
}

/// A protobuf Duration that is not valid, negative, or finer than the
/// millisecond every duration field keeps is refused, naming the field;
/// it used to be carried over (1 s + 2e9 ns stored as 3 s), wrapped
/// (-5 ns as 999 ms) or rounded (1 ns as 1 s).
#[tokio::test]
async fn bad_durations_are_refused_not_rounded() {
    let app = spawn_app().await;
    let mut client = app.client.clone();
    let d = |seconds, nanos| Some(prost_types::Duration { seconds, nanos });
    let valid = app.job("sleep", 1, 1, &[("duration_ms", "60000")]);
    let cases = [
        (d(1, 2_000_000_000), "nanos is 2000000000"),
        (d(1, -5), "opposite signs"),
        (d(-1, 0), "negative"),
        (d(0, 1), "milliseconds"),
        (d(2, 500_000), "milliseconds"),
    ];
    for (duration, why) in &cases {
        let requests = [
            (
                "timeout",
                pb::StartJobRequest {
                    timeout: *duration,
                    ..valid.clone()
                },
            ),
            (
                "retry_delay",
                pb::StartJobRequest {
                    retry_delay: *duration,
                    ..valid.clone()
                },
            ),
            (
                "rate_period",
                pb::StartJobRequest {
                    rate_limit: 1,
                    rate_period: *duration,
                    ..valid.clone()
                },
            ),
        ];
        for (field, request) in requests {
            let status = client.start_job(request).await.unwrap_err();
            assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
            assert_eq!(bad_fields(&status), [field], "{duration:?}");
            assert!(status.message().contains(why), "{}", status.message());
        }
    }
    assert_eq!(jobs_stored(&app).await, 0);

    let job = app.start(valid).await;
    for (duration, why) in &cases {
        let status = client
            .pause_job(pb::PauseJobRequest {
                job_id: job.id.clone(),
                drain_timeout: *duration,
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(bad_fields(&status), ["drain_timeout"], "{status:?}");
        assert!(status.message().contains(why), "{}", status.message());
        let status = client
            .set_job_rate_limit(pb::SetJobRateLimitRequest {
                job_id: job.id.clone(),
                rate_limit: 5,
                rate_period: *duration,
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(bad_fields(&status), ["rate_period"], "{status:?}");
    }
    // A Timestamp's nanos too (they were clamped at 0).
    for nanos in [-1, 1_000_000_000] {
        let status = client
            .pause_job(pb::PauseJobRequest {
                job_id: job.id.clone(),
                resume_at: Some(prost_types::Timestamp {
                    seconds: 4_000_000_000,
                    nanos,
                }),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(bad_fields(&status), ["resume_at"], "{status:?}");
    }
    let unchanged = app.get(&job.id).await;
    assert_eq!(unchanged.state, JobState::Running as i32);
    assert_eq!(unchanged.policy.unwrap().rate_limit, 0);

    // Whole milliseconds are taken as they are.
    let mut exact = app.job("sleep", 1, 1, &[("duration_ms", "60000")]);
    exact.timeout = d(1, 500_000_000);
    let exact = app.start(exact).await;
    assert_eq!(exact.policy.unwrap().timeout, d(1, 500_000_000));
    app.stop().await;
}

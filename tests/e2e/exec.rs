//! The `exec` executor through a real server: programs per item, their
//! exit codes, timeouts, checkpoints across an immediate pause, and no
//! process left behind.

use super::harness::{Options, SECS, StoreKind, TestApp, spawn_app, spawn_app_with};
use jobvisor::pb::{self, ItemState, JobState, PauseMode};
use std::{path::Path, time::Duration};

fn repo(path: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(path)
        .display()
        .to_string()
}

fn exec_job(
    app: &TestApp,
    items: &[&str],
    concurrency: u32,
    params: &[(&str, String)],
) -> pb::StartJobRequest {
    let mut request = app.job("exec", 0, concurrency, &[]);
    request.items = items.iter().map(|s| s.to_string()).collect();
    request.params = params
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    request
}

/// Executions logged by the example scripts: (index, attempt, from).
fn exec_log(path: &Path) -> Vec<(u32, u32, u32)> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| {
            let v: Vec<u32> = l.split(' ').map(|x| x.parse().unwrap()).collect();
            (v[0], v[1], v[2])
        })
        .collect()
}

#[tokio::test]
async fn the_shell_example_runs_every_item_with_checkpoints() {
    let app = spawn_app().await;
    let job = app
        .start(exec_job(
            &app,
            &["a", "b", "c", "d"],
            2,
            &[
                ("command", "sh".into()),
                ("args", format!(r#"["{}"]"#, repo("examples/exec/steps.sh"))),
                ("env", r#"{"STEPS":"3","STEP_SECONDS":"0.01"}"#.into()),
            ],
        ))
        .await;
    app.wait_for(&job.id, JobState::Succeeded, SECS(20)).await;
    for item in app.items(&job.id).await {
        assert_eq!(item.state, ItemState::Succeeded as i32);
        // The last checkpoint the script printed, and its result line.
        assert_eq!(item.checkpoint, b"3");
        assert_eq!(item.result, format!("{}: 3 steps", item.payload));
    }
    app.stop().await;
}

/// `@skip` and `@count`: a program says an item was done already, and
/// reports counters of its own; the job sums them over the attempts that
/// succeeded only, and a bad counter line is named in the item's error.
#[tokio::test]
async fn a_program_skips_what_is_done_and_counts_what_it_did_postgres() {
    skips_and_counts(StoreKind::Postgres).await;
}

#[tokio::test]
async fn a_program_skips_what_is_done_and_counts_what_it_did_embedded() {
    skips_and_counts(StoreKind::Embedded).await;
}

async fn skips_and_counts(store: StoreKind) {
    let app = spawn_app_with(Options {
        store,
        ..Options::default()
    })
    .await;
    let script = r#"
        case "$JOBVISOR_ITEM" in
          done) echo "@skip out/done.mp4 exists"; echo "@count skipped 1" ;;
          flaky)
            if [ "$JOBVISOR_ATTEMPT" -lt 2 ]; then echo "@count frames 1000"; exit 1; fi
            echo "@count frames 7" ;;
          typo) echo "@count Frames 1"; exit 3 ;;
          *) echo "@count frames 10"; echo "@count faces 2"; echo "@count frames 3" ;;
        esac"#;
    let mut request = exec_job(
        &app,
        &["a", "b", "done", "flaky", "typo"],
        2,
        &[
            ("command", "sh".into()),
            ("args", serde_json::to_string(&["-c", script]).unwrap()),
        ],
    );
    request.max_attempts = 2;
    let job = app.start(request).await;
    app.wait_for(&job.id, JobState::Failed, SECS(20)).await;
    let got = app.get(&job.id).await;
    let counters: std::collections::BTreeMap<_, _> = got.counters.into_iter().collect();
    assert_eq!(
        counters,
        [("faces", 4), ("frames", 33), ("skipped", 1)]
            .map(|(k, v)| (k.to_string(), v))
            .into()
    );
    let items = app.items(&job.id).await;
    let item = |payload: &str| items.iter().find(|i| i.payload == payload).unwrap();
    assert_eq!(item("done").state, ItemState::Succeeded as i32);
    assert_eq!(item("done").skip_reason, "out/done.mp4 exists");
    assert_eq!(item("a").skip_reason, "");
    assert_eq!(item("flaky").attempts, 2);
    assert_eq!(item("typo").state, ItemState::Failed as i32);
    assert!(
        item("typo")
            .last_error
            .contains("counter name \"Frames\" must start with a-z"),
        "{:?}",
        item("typo").last_error
    );
    app.stop().await;
}

/// `@retry-after`: a program that hits a rate limit says how long to wait,
/// and its retry waits that long though the job has no retry delay; a
/// program that says nothing is retried at once.
#[tokio::test]
async fn a_program_asks_its_retry_to_wait() {
    let app = spawn_app().await;
    let script = r#"
        [ "$JOBVISOR_ATTEMPT" -ge 2 ] && exit 0
        case "$JOBVISOR_ITEM" in
          limited) echo "@retry-after 1.5"; echo "429 Too Many Requests"; exit 1 ;;
          *) echo "try again"; exit 1 ;;
        esac"#;
    let mut request = exec_job(
        &app,
        &["limited", "plain"],
        2,
        &[
            ("command", "sh".into()),
            ("args", serde_json::to_string(&["-c", script]).unwrap()),
        ],
    );
    request.max_attempts = 2;
    let job = app.start(request).await;
    let events = app.watch_all(&job.id, 0, SECS(20)).await;
    assert_eq!(app.get(&job.id).await.state, JobState::Succeeded as i32);
    let failure = |index: u32| {
        events
            .iter()
            .find_map(|e| match &e.kind {
                Some(pb::job_event::Kind::ItemFailed(f)) if f.index == index => {
                    Some((e.time.unwrap(), f.retry_time))
                }
                _ => None,
            })
            .unwrap_or_else(|| panic!("no failure of item {index}"))
    };
    let secs = |t: prost_types::Timestamp| t.seconds as f64 + f64::from(t.nanos) / 1e9;
    let (failed_at, retry_at) = failure(0);
    let waits = secs(retry_at.expect("the program asked for a wait")) - secs(failed_at);
    assert!((1.49..1.6).contains(&waits), "item 0 waits {waits} s");
    assert_eq!(failure(1).1, None, "item 1 is retried at once");
    let ended = secs(app.get(&job.id).await.end_time.unwrap());
    assert!(
        ended - secs(failed_at) >= 1.5,
        "the job ended before the wait"
    );
    app.stop().await;
}

#[tokio::test]
async fn exit_codes_decide_success_retry_and_permanent_failure() {
    let app = spawn_app().await;
    let script = r#"
        echo "working on $JOBVISOR_ITEM" >&2
        case "$JOBVISOR_ITEM" in
          ok) exit 0 ;;
          flaky) [ "$JOBVISOR_ATTEMPT" -ge 2 ] && exit 0; echo "not yet"; exit 1 ;;
          broken) echo "cannot parse"; exit 100 ;;
          *) echo "always fails"; exit 7 ;;
        esac"#;
    let mut request = exec_job(
        &app,
        &["ok", "flaky", "broken", "bad"],
        2,
        &[
            ("command", "sh".into()),
            ("args", serde_json::to_string(&["-c", script]).unwrap()),
        ],
    );
    request.max_attempts = 3;
    let job = app.start(request).await;
    let done = app.wait_for(&job.id, JobState::Failed, SECS(20)).await;
    let counts = done.counts.unwrap();
    assert_eq!((counts.succeeded, counts.failed), (2, 2));
    let items = app.items(&job.id).await;
    assert_eq!(
        (items[0].state, items[0].attempts),
        (ItemState::Succeeded as i32, 1)
    );
    assert_eq!(
        (items[1].state, items[1].attempts),
        (ItemState::Succeeded as i32, 2)
    );
    // A permanent failure is not retried, and its output is in the error.
    assert_eq!(
        (items[2].state, items[2].attempts),
        (ItemState::Failed as i32, 1)
    );
    assert!(
        items[2].last_error.contains("exited with code 100"),
        "{}",
        items[2].last_error
    );
    assert!(
        items[2].last_error.contains("cannot parse"),
        "{}",
        items[2].last_error
    );
    assert!(
        items[2].last_error.contains("working on broken"),
        "{}",
        items[2].last_error
    );
    assert_eq!(
        (items[3].state, items[3].attempts),
        (ItemState::Failed as i32, 3)
    );
    assert!(items[3].last_error.contains("exited with code 7"));
    app.stop().await;
}

#[tokio::test]
async fn a_program_past_its_timeout_is_killed_and_retried() {
    let app = spawn_app().await;
    let mut request = exec_job(
        &app,
        &["slow"],
        1,
        &[
            ("command", "sh".into()),
            ("args", r#"["-c","trap '' TERM; sleep 30"]"#.into()),
            ("timeout", "300ms".into()),
            ("kill_grace", "200ms".into()),
        ],
    );
    request.max_attempts = 2;
    let started = std::time::Instant::now();
    let job = app.start(request).await;
    let done = app.wait_for(&job.id, JobState::Failed, SECS(10)).await;
    // Two attempts of 300 ms plus 200 ms of grace each: far from 30 s.
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let item = &app.items(&job.id).await[0];
    assert_eq!(item.attempts, 2);
    assert!(
        item.last_error.contains("timed out after 300ms"),
        "{}",
        done.last_error
    );
    app.stop().await;
}

#[tokio::test]
async fn an_immediate_pause_stops_the_program_and_resume_continues_from_its_checkpoint() {
    let app = spawn_app().await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("exec.log");
    let job = app
        .start(exec_job(
            &app,
            &["only"],
            1,
            &[
                ("command", "sh".into()),
                ("args", format!(r#"["{}"]"#, repo("examples/exec/steps.sh"))),
                (
                    "env",
                    serde_json::json!({"STEPS": "40", "STEP_SECONDS": "0.05",
                                       "EXEC_LOG": log.display().to_string()})
                    .to_string(),
                ),
            ],
        ))
        .await;
    app.eventually("step 5 saved", SECS(10), || async {
        let step: u32 = String::from_utf8_lossy(&app.items(&job.id).await[0].checkpoint)
            .parse()
            .unwrap_or(0);
        step >= 5
    })
    .await;
    app.pause(&job.id, PauseMode::Immediate).await.unwrap();
    app.wait_for(&job.id, JobState::Paused, SECS(5)).await;
    let item = &app.items(&job.id).await[0];
    assert_eq!((item.state, item.attempts), (ItemState::Pending as i32, 0));
    let saved: u32 = String::from_utf8_lossy(&item.checkpoint).parse().unwrap();
    assert!((5..40).contains(&saved), "{saved}");

    app.resume(&job.id).await.unwrap();
    app.wait_for(&job.id, JobState::Succeeded, SECS(20)).await;
    let runs = exec_log(&log);
    assert_eq!(
        runs,
        [(0, 1, 0), (0, 1, saved)],
        "the attempt was not spent"
    );
    app.stop().await;
}

fn alive(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

#[tokio::test]
async fn cancel_kills_the_program_and_its_children() {
    let app = spawn_app().await;
    let dir = tempfile::tempdir().unwrap();
    let pids = dir.path().join("pids");
    // The program starts a grandchild, then waits: both must go.
    let script = format!("sleep 60 & echo $$ $! >> {}; wait", pids.display());
    let job = app
        .start(exec_job(
            &app,
            &["a", "b"],
            2,
            &[
                ("command", "sh".into()),
                ("args", serde_json::to_string(&["-c", &script]).unwrap()),
            ],
        ))
        .await;
    app.eventually("both programs started", SECS(10), || async {
        std::fs::read_to_string(&pids)
            .unwrap_or_default()
            .lines()
            .count()
            == 2
    })
    .await;
    let started: Vec<i32> = std::fs::read_to_string(&pids)
        .unwrap()
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    assert!(started.iter().all(|p| alive(*p)));
    app.cancel(&job.id).await.unwrap();
    app.wait_for(&job.id, JobState::Cancelled, SECS(10)).await;
    app.eventually("no process left", SECS(5), || async {
        started.iter().all(|p| !alive(*p))
    })
    .await;
    for item in app.items(&job.id).await {
        assert_eq!(item.state, ItemState::Cancelled as i32);
    }
    app.stop().await;
}

#[tokio::test]
async fn the_python_example_pauses_mid_item_and_resumes_at_its_frame() {
    let app = spawn_app().await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("exec.log");
    let job = app
        .start(exec_job(
            &app,
            &["intro.mp4:60", "bad item"],
            1,
            &[
                ("command", "python3".into()),
                (
                    "args",
                    format!(r#"["{}"]"#, repo("examples/exec/frames.py")),
                ),
                (
                    "env",
                    serde_json::json!({"FRAME_SECONDS": "0.03",
                                       "EXEC_LOG": log.display().to_string()})
                    .to_string(),
                ),
            ],
        ))
        .await;
    app.eventually("frame 10 saved", SECS(10), || async {
        let checkpoint = app.items(&job.id).await[0].checkpoint.clone();
        serde_json::from_slice::<serde_json::Value>(&checkpoint)
            .ok()
            .and_then(|v| v["frame"].as_u64())
            .is_some_and(|f| f >= 10)
    })
    .await;
    app.pause(&job.id, PauseMode::Immediate).await.unwrap();
    app.wait_for(&job.id, JobState::Paused, SECS(5)).await;
    let checkpoint: serde_json::Value =
        serde_json::from_slice(&app.items(&job.id).await[0].checkpoint).unwrap();
    let frame = checkpoint["frame"].as_u64().unwrap() as u32;
    assert!((10..60).contains(&frame), "{frame}");

    app.resume(&job.id).await.unwrap();
    let done = app.wait_for(&job.id, JobState::Failed, SECS(30)).await;
    let counts = done.counts.unwrap();
    assert_eq!(
        (counts.succeeded, counts.failed),
        (1, 1),
        "the malformed item fails"
    );
    let items = app.items(&job.id).await;
    assert_eq!(items[1].attempts, 1, "exit code 100 is not retried");
    assert!(
        items[1].last_error.contains("malformed item"),
        "{}",
        items[1].last_error
    );
    let runs: Vec<_> = exec_log(&log).into_iter().filter(|r| r.0 == 0).collect();
    assert_eq!(runs, [(0, 1, 0), (0, 1, frame)]);
    app.stop().await;
}

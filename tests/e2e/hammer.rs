//! Many clients racing control calls on one job leave it consistent.

use super::harness::{SECS, spawn_app, stored, transitions};
use jobvisor::pb::{JobState, PauseMode};
use tonic::Code;

#[tokio::test]
async fn fifty_clients_hammering_controls_leave_a_consistent_job() {
    let app = spawn_app().await;
    let job = app
        .start(app.job("sleep", 400, 8, &[("duration_ms", "20"), ("steps", "2")]))
        .await;
    let mut tasks = Vec::new();
    for client in 0..50u32 {
        let (id, app_client) = (job.id.clone(), app.client.clone());
        tasks.push(tokio::spawn(async move {
            let mut c = app_client;
            for round in 0..6u32 {
                let pick = (client * 7 + round * 3) % 10;
                let result = match pick {
                    0..=3 => c
                        .pause_job(jobvisor::pb::PauseJobRequest {
                            job_id: id.clone(),
                            mode: if pick % 2 == 0 {
                                PauseMode::Graceful
                            } else {
                                PauseMode::Immediate
                            } as i32,
                            ..Default::default()
                        })
                        .await
                        .map(|_| ()),
                    4..=8 => c
                        .resume_job(jobvisor::pb::ResumeJobRequest {
                            job_id: id.clone(),
                            ..Default::default()
                        })
                        .await
                        .map(|_| ()),
                    _ if client % 25 == 24 && round == 5 => c
                        .cancel_job(jobvisor::pb::CancelJobRequest {
                            job_id: id.clone(),
                            ..Default::default()
                        })
                        .await
                        .map(|_| ()),
                    _ => Ok(()),
                };
                if let Err(status) = result {
                    // Refusals after a cancel are expected; nothing else is.
                    assert!(
                        matches!(status.code(), Code::FailedPrecondition | Code::Aborted),
                        "{status:?}"
                    );
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    // Let it settle: resume if paused, then wait for a terminal state.
    let _ = app.resume(&job.id).await;
    let mut final_job = app.get(&job.id).await;
    for _ in 0..600 {
        final_job = app.get(&job.id).await;
        let state = JobState::try_from(final_job.state).unwrap();
        if matches!(state, JobState::Succeeded | JobState::Cancelled) {
            break;
        }
        if state == JobState::Paused {
            let _ = app.resume(&job.id).await;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let state = JobState::try_from(final_job.state).unwrap();
    assert!(
        matches!(state, JobState::Succeeded | JobState::Cancelled),
        "{state:?}"
    );

    // The event log is gap-free and its state changes chain: each starts
    // where the previous ended, and the last one is the job's state.
    let events = app.watch_all(&job.id, 0, SECS(10)).await;
    let seqs: Vec<u64> = stored(&events).iter().map(|e| e.sequence).collect();
    assert_eq!(seqs, (1..=final_job.last_sequence).collect::<Vec<_>>());
    let changes = transitions(&events);
    for pair in changes.windows(2) {
        assert_eq!(pair[0].1, pair[1].0, "{changes:?}");
    }
    assert_eq!(changes.last().unwrap().1, state);

    // The job's counters match its items, and no item is left running.
    let by_state: Vec<(i16, i64)> = sqlx::query_as(
        "SELECT state, count(*) FROM items WHERE job_id = $1::uuid GROUP BY state ORDER BY state",
    )
    .bind(&job.id)
    .fetch_all(app.pg())
    .await
    .unwrap();
    let count = |s: i16| {
        by_state
            .iter()
            .find(|(k, _)| *k == s)
            .map_or(0, |(_, n)| *n as u64)
    };
    let counts = final_job.counts.unwrap();
    assert_eq!(count(1), 0, "no item left running");
    assert_eq!(count(0), counts.pending);
    assert_eq!(count(2), counts.succeeded);
    assert_eq!(count(4), counts.cancelled);
    assert_eq!(counts.running, 0);
    // A pause record for each pause, each closed (except one ended by cancel).
    let pauses = changes
        .iter()
        .filter(|(_, to)| *to == JobState::Pausing)
        .count();
    assert_eq!(final_job.pauses.len(), pauses);
    app.stop().await;
}

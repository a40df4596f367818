//! The core end-to-end scenarios run again
//! on the embedded (SQLite) store: lifecycle, pause/resume/cancel, watch
//! replay, worker panics and a restart of the server.

use super::harness::StoreKind;

#[tokio::test]
async fn a_job_runs_every_item_and_succeeds() {
    super::lifecycle::a_job_runs_every_item_and_succeeds_on(StoreKind::Embedded).await;
}

#[tokio::test]
async fn a_restarted_server_adopts_running_jobs() {
    super::lifecycle::a_restarted_server_adopts_running_jobs_on(StoreKind::Embedded).await;
}

#[tokio::test]
async fn failing_items_are_retried_then_fail_the_job() {
    super::lifecycle::failing_items_are_retried_then_fail_the_job_on(StoreKind::Embedded).await;
}

#[tokio::test]
async fn no_item_is_claimed_after_pause_returns() {
    super::control::no_item_is_claimed_after_pause_returns_on(StoreKind::Embedded).await;
}

#[tokio::test]
async fn resume_continues_in_index_order_and_reruns_nothing() {
    super::control::resume_continues_in_index_order_and_reruns_nothing_on(StoreKind::Embedded)
        .await;
}

#[tokio::test]
async fn immediate_pause_resumes_items_from_their_checkpoint() {
    super::control::immediate_pause_resumes_items_from_their_checkpoint_on(StoreKind::Embedded)
        .await;
}

#[tokio::test]
async fn cancel_from_running_stops_items_in_flight() {
    super::control::cancel_from_running_stops_items_in_flight_on(StoreKind::Embedded).await;
}

#[tokio::test]
async fn cancel_from_pausing_and_from_paused() {
    super::control::cancel_from_pausing_and_from_paused_on(StoreKind::Embedded).await;
}

#[tokio::test]
async fn watching_a_finished_job_replays_its_whole_history() {
    super::watch::watching_a_finished_job_replays_its_whole_history_on(StoreKind::Embedded).await;
}

#[tokio::test]
async fn two_live_watchers_see_the_same_sequence() {
    super::watch::two_live_watchers_see_the_same_sequence_on(StoreKind::Embedded).await;
}

#[tokio::test]
async fn a_panicking_worker_is_restarted_and_its_item_resumes() {
    super::panics::a_panicking_worker_is_restarted_and_its_item_resumes_on(StoreKind::Embedded)
        .await;
}

#[tokio::test]
async fn a_retry_waits_for_its_delay_while_the_other_items_go_on() {
    super::retry_delay::a_retry_waits_for_its_delay_while_the_other_items_go_on_on(
        StoreKind::Embedded,
    )
    .await;
}

#[tokio::test]
async fn a_waiting_retry_keeps_its_delay_across_a_restart() {
    super::retry_delay::a_waiting_retry_keeps_its_delay_across_a_restart_on(StoreKind::Embedded)
        .await;
}

#[tokio::test]
async fn a_waiting_retry_comes_in_its_time_after_a_restart_not_at_the_end() {
    super::retry_delay::a_waiting_retry_comes_in_its_time_after_a_restart_not_at_the_end_on(
        StoreKind::Embedded,
    )
    .await;
}

//! The metrics jobvisor records, in one place: their names, labels and
//! meaning. The engine and the API call these functions; without an
//! installed recorder (tests, embedding) they cost next to nothing.

use metrics::{
    Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram,
};
use std::time::Duration;

/// Registers the help text of every metric (shown in /metrics).
pub fn describe() {
    describe_gauge!(
        "jobvisor_jobs",
        "Jobs by state (live states, from the store)."
    );
    describe_counter!(
        "jobvisor_items_claimed_total",
        "Items claimed by workers, by executor."
    );
    describe_counter!(
        "jobvisor_items_succeeded_total",
        "Items that succeeded, by executor."
    );
    describe_counter!(
        "jobvisor_items_failed_total",
        "Items that failed for good (last attempt or permanent), by executor."
    );
    describe_counter!(
        "jobvisor_items_retried_total",
        "Failed attempts that go back to pending for another attempt, by executor."
    );
    describe_counter!(
        "jobvisor_item_counter_total",
        "The executors' own counters (exec: @count), summed over succeeded items, by executor and counter name."
    );
    describe_histogram!(
        "jobvisor_item_duration_seconds",
        Unit::Seconds,
        "Item attempts, from start to committed outcome, by executor."
    );
    describe_counter!("jobvisor_jobs_started_total", "Jobs started.");
    describe_counter!(
        "jobvisor_jobs_paused_total",
        "Pauses accepted (RUNNING to PAUSING)."
    );
    describe_counter!("jobvisor_jobs_resumed_total", "Resumes accepted.");
    describe_counter!("jobvisor_jobs_cancelled_total", "Cancels accepted.");
    describe_counter!(
        "jobvisor_jobs_finished_total",
        "Jobs that reached a terminal state, by state."
    );
    describe_counter!(
        "jobvisor_jobs_deleted_total",
        "Ended jobs deleted, by why: a DeleteJob call or the retention."
    );
    describe_histogram!(
        "jobvisor_pause_duration_seconds",
        Unit::Seconds,
        "How long jobs stayed paused, from PauseJob to ResumeJob."
    );
    describe_histogram!(
        "jobvisor_control_effect_seconds",
        Unit::Seconds,
        "From a control call to its effect: pause = claims stopped, cancel = workers stopped."
    );
    describe_counter!(
        "jobvisor_worker_restarts_total",
        "Workers restarted after a panic."
    );
    describe_histogram!(
        "jobvisor_store_transaction_seconds",
        Unit::Seconds,
        "Store transactions, by kind (batch, transition)."
    );
    describe_counter!(
        "jobvisor_store_batches_in_rounds_total",
        "Group commits that took several calls of the batch function in one transaction (two writes for one item, or a claim that could take an item the batch puts back to pending): BEGIN, a call per round, COMMIT, instead of one call."
    );
    describe_histogram!(
        "jobvisor_store_batch_writes_size",
        "Item writes per group commit."
    );
    describe_histogram!(
        "jobvisor_store_batch_claims_size",
        "Claims per group commit."
    );
    describe_gauge!(
        "jobvisor_db_pool_connections",
        "Database connections, by state (idle, used)."
    );
    describe_gauge!("jobvisor_watch_streams", "Open WatchJob streams.");
    describe_gauge!(
        "jobvisor_job_supervisors",
        "Live job supervisors in this process: RUNNING, PAUSING and CANCELLING jobs, less those that wait for remote workers (they hold none)."
    );
    describe_gauge!(
        "jobvisor_jobs_waiting_for_workers",
        "RUNNING jobs of remote executors waiting here, with no supervisor, for a worker that serves them."
    );
    describe_counter!(
        "jobvisor_rpc_requests_total",
        "RPCs answered, by method and gRPC code."
    );
    describe_histogram!(
        "jobvisor_rpc_duration_seconds",
        Unit::Seconds,
        "RPC latency, by method."
    );
}

pub fn items_claimed(executor: &str, n: usize) {
    counter!("jobvisor_items_claimed_total", "executor" => executor.to_string())
        .increment(n as u64);
}

/// An item attempt ended with a committed outcome.
pub fn item_finished(executor: &str, outcome: ItemOutcome, took: Duration) {
    let name = match outcome {
        ItemOutcome::Succeeded => "jobvisor_items_succeeded_total",
        ItemOutcome::Failed => "jobvisor_items_failed_total",
        ItemOutcome::Retried => "jobvisor_items_retried_total",
        ItemOutcome::Other => {
            return;
        }
    };
    counter!(name, "executor" => executor.to_string()).increment(1);
    histogram!("jobvisor_item_duration_seconds", "executor" => executor.to_string())
        .record(took.as_secs_f64());
}

/// A success carrying counters was committed: the totals by executor and
/// counter name (not by job: jobs come and go, executors stay).
pub fn item_counters(executor: &str, counters: &crate::domain::Counters) {
    for (name, n) in counters {
        counter!("jobvisor_item_counter_total",
            "executor" => executor.to_string(), "counter" => name.clone())
        .increment((*n).max(0) as u64);
    }
}

/// How an item attempt ended, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ItemOutcome {
    Succeeded,
    Failed,
    Retried,
    /// Released, cancelled or not committed: not counted as an outcome.
    Other,
}

pub fn job_started() {
    counter!("jobvisor_jobs_started_total").increment(1);
}

pub fn job_control(name: &'static str) {
    counter!(name).increment(1);
}

pub fn job_finished(state: &str) {
    counter!("jobvisor_jobs_finished_total", "state" => state.to_string()).increment(1);
}

/// `by`: "call" (DeleteJob) or "retention".
pub fn jobs_deleted(by: &'static str, n: usize) {
    counter!("jobvisor_jobs_deleted_total", "by" => by).increment(n as u64);
}

pub fn pause_lasted(d: Duration) {
    histogram!("jobvisor_pause_duration_seconds").record(d.as_secs_f64());
}

pub fn control_effect(op: &'static str, d: Duration) {
    histogram!("jobvisor_control_effect_seconds", "op" => op).record(d.as_secs_f64());
}

pub fn worker_restarted() {
    counter!("jobvisor_worker_restarts_total").increment(1);
}

pub fn store_transaction(kind: &'static str, d: Duration) {
    histogram!("jobvisor_store_transaction_seconds", "kind" => kind).record(d.as_secs_f64());
}

pub fn batch_size(writes: usize, claims: usize) {
    histogram!("jobvisor_store_batch_writes_size").record(writes as f64);
    histogram!("jobvisor_store_batch_claims_size").record(claims as f64);
}

pub fn batch_in_rounds() {
    counter!("jobvisor_store_batches_in_rounds_total").increment(1);
}

pub fn pool(idle: usize, used: usize) {
    gauge!("jobvisor_db_pool_connections", "state" => "idle").set(idle as f64);
    gauge!("jobvisor_db_pool_connections", "state" => "used").set(used as f64);
}

pub fn live_jobs(state: &str, n: u64) {
    gauge!("jobvisor_jobs", "state" => state.to_string()).set(n as f64);
}

pub fn supervisors(n: usize) {
    gauge!("jobvisor_job_supervisors").set(n as f64);
}

pub fn jobs_waiting_for_workers(n: usize) {
    gauge!("jobvisor_jobs_waiting_for_workers").set(n as f64);
}

pub fn watch_streams(delta: f64) {
    gauge!("jobvisor_watch_streams").increment(delta);
}

pub fn rpc(method: &str, code: &str, took: Duration) {
    counter!("jobvisor_rpc_requests_total", "method" => method.to_string(), "code" => code.to_string())
        .increment(1);
    histogram!("jobvisor_rpc_duration_seconds", "method" => method.to_string())
        .record(took.as_secs_f64());
}

//! Proto ↔ domain: what the wire says, parsed into domain input (every bad
//! field named), and domain values turned into API messages.

use crate::{
    domain::{
        EventBody, FieldViolation, Item, ItemCounts, ItemState, Job, JobEvent, JobId, JobPolicy,
        JobState, NewJob, PauseMode, PauseRecord, RateLimit, Runner, check_labels,
        page::{ItemCursor, JobCursor},
        spec::{MAX_REASON_CHARS, MAX_REQUEST_ID_CHARS, optional_text},
    },
    engine::{Progress, WatchItem},
    pb,
    store::{ItemQuery, JobQuery},
};
use chrono::{DateTime, Utc};
use std::collections::BTreeMap;

/// Default and largest page sizes (AIP-158: larger requests are lowered).
const JOBS_PAGE: (u32, u32) = (50, 1000);
const ITEMS_PAGE: (u32, u32) = (100, 1000);

pub fn timestamp(t: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: t.timestamp_subsec_nanos() as i32,
    }
}

pub fn job_state(s: JobState) -> pb::JobState {
    match s {
        JobState::Running => pb::JobState::Running,
        JobState::Pausing => pb::JobState::Pausing,
        JobState::Paused => pb::JobState::Paused,
        JobState::Cancelling => pb::JobState::Cancelling,
        JobState::Cancelled => pb::JobState::Cancelled,
        JobState::Succeeded => pb::JobState::Succeeded,
        JobState::Failed => pb::JobState::Failed,
    }
}

fn job_state_from(value: i32) -> Option<JobState> {
    Some(match pb::JobState::try_from(value).ok()? {
        pb::JobState::Unspecified => return None,
        pb::JobState::Running => JobState::Running,
        pb::JobState::Pausing => JobState::Pausing,
        pb::JobState::Paused => JobState::Paused,
        pb::JobState::Cancelling => JobState::Cancelling,
        pb::JobState::Cancelled => JobState::Cancelled,
        pb::JobState::Succeeded => JobState::Succeeded,
        pb::JobState::Failed => JobState::Failed,
    })
}

pub fn item_state(s: ItemState) -> pb::ItemState {
    match s {
        ItemState::Pending => pb::ItemState::Pending,
        ItemState::Running => pb::ItemState::Running,
        ItemState::Succeeded => pb::ItemState::Succeeded,
        ItemState::Failed => pb::ItemState::Failed,
        ItemState::Cancelled => pb::ItemState::Cancelled,
    }
}

pub fn item_state_from(value: i32) -> Option<ItemState> {
    Some(match pb::ItemState::try_from(value).ok()? {
        pb::ItemState::Unspecified => return None,
        pb::ItemState::Pending => ItemState::Pending,
        pb::ItemState::Running => ItemState::Running,
        pb::ItemState::Succeeded => ItemState::Succeeded,
        pb::ItemState::Failed => ItemState::Failed,
        pb::ItemState::Cancelled => ItemState::Cancelled,
    })
}

pub fn pause_mode(m: PauseMode) -> pb::PauseMode {
    match m {
        PauseMode::Graceful => pb::PauseMode::Graceful,
        PauseMode::Immediate => pb::PauseMode::Immediate,
    }
}

pub fn counts(c: &ItemCounts) -> pb::ItemCounts {
    pb::ItemCounts {
        total: c.total,
        pending: c.pending(),
        running: c.running,
        succeeded: c.succeeded,
        failed: c.failed,
        cancelled: c.cancelled,
    }
}

/// Milliseconds as a protobuf Duration (the resolution every duration
/// field is kept at).
pub fn duration(ms: u64) -> prost_types::Duration {
    prost_types::Duration {
        seconds: (ms / 1000) as i64,
        nanos: ((ms % 1000) * 1_000_000) as i32,
    }
}

/// A request's duration field as milliseconds (unset: 0). A Duration
/// that is not valid protobuf (nanos beyond a second, seconds and nanos of
/// opposite signs), a negative one, and one finer than a millisecond (the
/// resolution every duration field is kept at) are violations: nothing is
/// carried over, rounded or clamped behind the caller's back.
pub fn duration_ms(
    field: &str,
    d: &Option<prost_types::Duration>,
    bad: &mut Vec<FieldViolation>,
) -> u64 {
    let Some(d) = d else { return 0 };
    match checked_duration_ms(d) {
        Ok(ms) => ms,
        Err(why) => {
            bad.push(FieldViolation::new(field, why));
            0
        }
    }
}

/// The longest window a WatchJob stream may ask for: what its client waits
/// for an event at most, as the server's own `--watch-window` at most.
pub const MAX_WATCH_WINDOW: std::time::Duration = std::time::Duration::from_secs(1);

/// WatchJobRequest's `window` (unset: zero, the server's), at most
/// [`MAX_WATCH_WINDOW`].
pub fn watch_window(
    d: &Option<prost_types::Duration>,
    bad: &mut Vec<FieldViolation>,
) -> std::time::Duration {
    let ms = duration_ms("window", d, bad);
    let window = std::time::Duration::from_millis(ms);
    if window > MAX_WATCH_WINDOW {
        bad.push(FieldViolation::new(
            "window",
            format!(
                "is {}; it must be at most 1s (a stream's events wait that long at most)",
                humantime::format_duration(window)
            ),
        ));
    }
    window
}

fn checked_duration_ms(d: &prost_types::Duration) -> Result<u64, String> {
    const NANOS_PER_MS: i32 = 1_000_000;
    if !(-999_999_999..=999_999_999).contains(&d.nanos) {
        return Err(format!(
            "nanos is {}; it must be between 0 and 999999999 (whole seconds go in seconds)",
            d.nanos
        ));
    }
    if (d.seconds > 0 && d.nanos < 0) || (d.seconds < 0 && d.nanos > 0) {
        return Err(format!(
            "seconds ({}) and nanos ({}) have opposite signs: not a valid Duration",
            d.seconds, d.nanos
        ));
    }
    if d.seconds < 0 || d.nanos < 0 {
        return Err("must not be negative".into());
    }
    if d.nanos % NANOS_PER_MS != 0 {
        return Err(format!(
            "has {} ns beyond a whole millisecond; durations are kept in milliseconds",
            d.nanos % NANOS_PER_MS
        ));
    }
    u64::try_from(d.seconds)
        .ok()
        .and_then(|s| s.checked_mul(1000))
        .and_then(|ms| ms.checked_add((d.nanos / NANOS_PER_MS) as u64))
        .ok_or_else(|| format!("{} seconds is too long", d.seconds))
}

/// A request's timestamp field; an invalid one is a violation.
pub fn timestamp_from(
    field: &str,
    t: &Option<prost_types::Timestamp>,
    bad: &mut Vec<FieldViolation>,
) -> Option<DateTime<Utc>> {
    let t = t.as_ref()?;
    if !(0..=999_999_999).contains(&t.nanos) {
        bad.push(FieldViolation::new(
            field,
            format!("nanos is {}; it must be between 0 and 999999999", t.nanos),
        ));
        return None;
    }
    match DateTime::from_timestamp(t.seconds, t.nanos as u32) {
        Some(t) => Some(t),
        None => {
            bad.push(FieldViolation::new(field, "is not a valid time"));
            None
        }
    }
}

/// [`timestamp_from`] for a time that must be in the future (when a
/// paused job resumes by itself).
pub fn future_time(
    field: &str,
    t: &Option<prost_types::Timestamp>,
    bad: &mut Vec<FieldViolation>,
) -> Option<DateTime<Utc>> {
    let t = timestamp_from(field, t, bad);
    if t.is_some_and(|t| t <= Utc::now()) {
        bad.push(FieldViolation::new(field, "is in the past"));
    }
    t
}

fn policy(p: &JobPolicy) -> pb::JobPolicy {
    pb::JobPolicy {
        timeout: p.timeout_ms.map(duration),
        pause_after_failures: p.pause_after_failures.unwrap_or(0),
        pause_on_failure_ratio: p.pause_on_failure_ratio.unwrap_or(0.0),
        failure_window: p.failure_window.unwrap_or(0),
        retry_delay: p.retry_delay_ms.map(duration),
        retry_delay_max: p.retry_delay_max_ms.map(duration),
        rate_limit: p.rate_limit.unwrap_or(0),
        rate_period: rate_period(&p.rate()),
    }
}

/// A rate limit's period in effect (a second unless the job said); none
/// without a limit.
fn rate_period(r: &RateLimit) -> Option<prost_types::Duration> {
    r.limit.map(|_| {
        duration(
            r.period_ms
                .unwrap_or(crate::domain::job::DEFAULT_RATE_PERIOD.as_millis() as u64),
        )
    })
}

fn pause_record(p: &PauseRecord) -> pb::PauseRecord {
    pb::PauseRecord {
        mode: pause_mode(p.mode) as i32,
        reason: p.reason.clone().unwrap_or_default(),
        requested_by: p.requested_by.clone().unwrap_or_default(),
        request_id: p.request_id.clone().unwrap_or_default(),
        request_time: Some(timestamp(p.requested_at)),
        paused_time: p.paused_at.map(timestamp),
        resume_time: p.resumed_at.map(timestamp),
        scheduled_resume_time: p.resume_at.map(timestamp),
    }
}

pub fn job(j: &Job) -> pb::Job {
    pb::Job {
        id: j.id.to_string(),
        name: j.name.clone(),
        executor: j.executor.clone(),
        state: job_state(j.state) as i32,
        counts: Some(counts(&j.counts)),
        concurrency: j.concurrency,
        max_attempts: j.max_attempts,
        params: j.params.clone().into_iter().collect(),
        labels: j.labels.clone().into_iter().collect(),
        create_time: Some(timestamp(j.created_at)),
        start_time: j.started_at.map(timestamp),
        update_time: Some(timestamp(j.updated_at)),
        end_time: j.ended_at.map(timestamp),
        pauses: j.pauses.iter().map(pause_record).collect(),
        can_pause: j.can_pause(),
        can_resume: j.can_resume(),
        can_cancel: j.can_cancel(),
        last_error: j.last_error.clone().unwrap_or_default(),
        last_sequence: j.last_seq,
        request_id: j.request_id.clone().unwrap_or_default(),
        policy: Some(policy(&j.policy)),
        owner: None,
        waiting_for: String::new(),
        exclusive: j.exclusive,
        open: j.open,
        status: None,
        counters: j.counters.clone().into_iter().collect(),
    }
}

/// How a job is doing now (GetJob only): its active time, average rate
/// and ETA, and the items running now.
pub fn status(j: &Job, running: &[Item], now: chrono::DateTime<Utc>) -> pb::JobStatus {
    let active = j.active_time(now).to_std().unwrap_or_default();
    let ended = j.counts.ended();
    let secs = active.as_secs_f64();
    let rate = if secs > 0.0 { ended as f64 / secs } else { 0.0 };
    let left = j.counts.total.saturating_sub(ended);
    let eta = (rate > 0.0 && !j.state.is_terminal())
        .then(|| std::time::Duration::from_secs_f64(left as f64 / rate))
        .map(|d| duration(d.as_millis() as u64));
    pb::JobStatus {
        active_time: Some(duration(active.as_millis() as u64)),
        items_per_second: rate,
        eta,
        running_items: running.iter().map(item).collect(),
    }
}

/// The runner of a live job (GetJob only).
pub fn owner(r: &Runner) -> pb::JobOwner {
    pb::JobOwner {
        server: r.server.clone(),
        host: r.host.clone(),
        pid: r.pid,
        since_time: Some(timestamp(r.since)),
    }
}

pub fn item(i: &Item) -> pb::Item {
    pb::Item {
        index: i.index,
        payload: i.payload.clone(),
        state: item_state(i.state) as i32,
        attempts: i.attempts,
        last_error: i.last_error.clone().unwrap_or_default(),
        checkpoint: i.checkpoint.clone().unwrap_or_default(),
        update_time: i.updated_at.map(timestamp),
        result: i.result.clone().unwrap_or_default(),
        retry_time: i.retry_at.map(timestamp),
        skip_reason: i.skip_reason.clone().unwrap_or_default(),
    }
}

pub fn event(e: &JobEvent) -> pb::JobEvent {
    use pb::job_event::Kind;
    let kind = match &e.body {
        EventBody::StateChanged {
            from,
            to,
            reason,
            requested_by,
            request_id,
            pause_mode: mode,
        } => Kind::StateChanged(pb::StateChanged {
            from: from.map_or(pb::JobState::Unspecified, job_state) as i32,
            to: job_state(*to) as i32,
            reason: reason.clone().unwrap_or_default(),
            requested_by: requested_by.clone().unwrap_or_default(),
            request_id: request_id.clone().unwrap_or_default(),
            pause_mode: mode.map_or(pb::PauseMode::Unspecified, pause_mode) as i32,
        }),
        EventBody::ItemsAdded {
            first,
            count,
            closed,
            requested_by,
            request_id,
        } => Kind::ItemsAdded(pb::ItemsAdded {
            first_index: *first,
            count: *count,
            closed: *closed,
            requested_by: requested_by.clone().unwrap_or_default(),
            request_id: request_id.clone().unwrap_or_default(),
        }),
        EventBody::ItemsCancelled {
            count,
            first,
            last,
            reason,
            requested_by,
        } => Kind::ItemsCancelled(pb::ItemsCancelled {
            count: *count,
            first_index: *first,
            last_index: *last,
            reason: reason.clone().unwrap_or_default(),
            requested_by: requested_by.clone().unwrap_or_default(),
        }),
        EventBody::ItemFailed {
            index,
            attempt,
            error,
            will_retry,
            retry_at,
        } => Kind::ItemFailed(pb::ItemFailed {
            index: *index,
            attempt: *attempt,
            error: error.clone(),
            will_retry: *will_retry,
            retry_time: retry_at.map(timestamp),
        }),
        EventBody::ConcurrencyChanged {
            from,
            to,
            requested_by,
            request_id,
        } => Kind::ConcurrencyChanged(pb::ConcurrencyChanged {
            from: *from,
            to: *to,
            requested_by: requested_by.clone().unwrap_or_default(),
            request_id: request_id.clone().unwrap_or_default(),
        }),
        EventBody::RateLimitChanged {
            from,
            to,
            requested_by,
            request_id,
        } => Kind::RateLimitChanged(pb::RateLimitChanged {
            from_limit: from.limit.unwrap_or(0),
            from_period: rate_period(from),
            to_limit: to.limit.unwrap_or(0),
            to_period: rate_period(to),
            requested_by: requested_by.clone().unwrap_or_default(),
            request_id: request_id.clone().unwrap_or_default(),
        }),
        EventBody::WorkerRestarted {
            index,
            reason,
            restarts_in_window,
        } => Kind::WorkerRestarted(pb::WorkerRestarted {
            index: *index,
            reason: reason.clone(),
            restarts_in_window: *restarts_in_window,
        }),
        EventBody::OwnerChanged {
            owner,
            previous_owner,
            released_items,
        } => Kind::OwnerChanged(pb::OwnerChanged {
            owner: owner.clone(),
            previous_owner: previous_owner.clone().unwrap_or_default(),
            released_items: *released_items,
        }),
    };
    pb::JobEvent {
        sequence: e.seq,
        time: Some(timestamp(e.at)),
        kind: Some(kind),
    }
}

fn progress(p: &Progress) -> pb::JobEvent {
    pb::JobEvent {
        sequence: p.seq,
        time: Some(timestamp(p.at)),
        kind: Some(pb::job_event::Kind::Progress(pb::Progress {
            counts: Some(counts(&p.counts)),
            items_per_second: p.items_per_second,
            in_flight_fraction: p.in_flight_fraction,
            eta: p.eta.and_then(|d| prost_types::Duration::try_from(d).ok()),
            counters: p.counters.clone().into_iter().collect(),
        })),
    }
}

pub fn watch_item(w: &WatchItem) -> pb::JobEvent {
    match w {
        WatchItem::Snapshot(j, waiting) => pb::JobEvent {
            sequence: j.last_seq,
            time: Some(timestamp(Utc::now())),
            kind: Some(pb::job_event::Kind::Snapshot(pb::Job {
                waiting_for: waiting.clone().unwrap_or_default(),
                ..job(j)
            })),
        },
        WatchItem::Event(e) => event(e),
        WatchItem::Progress(p) => progress(p),
    }
}

/// Parses a job id field.
pub fn job_id(field: &str, raw: &str, bad: &mut Vec<FieldViolation>) -> Option<JobId> {
    match raw.parse() {
        Ok(id) => Some(id),
        Err(why) => {
            bad.push(FieldViolation::new(field, why));
            None
        }
    }
}

/// Turns a list of violations into a result.
pub fn checked<T>(value: Option<T>, bad: Vec<FieldViolation>) -> Result<T, Vec<FieldViolation>> {
    match value {
        Some(v) if bad.is_empty() => Ok(v),
        _ => Err(bad),
    }
}

/// A StartJob request as domain input; bad durations are collected in
/// `bad` (the rest is checked by `JobSpec::parse`).
pub fn new_job(r: pb::StartJobRequest, bad: &mut Vec<FieldViolation>) -> NewJob {
    let timeout_ms = duration_ms("timeout", &r.timeout, bad);
    let retry_delay_ms = duration_ms("retry_delay", &r.retry_delay, bad);
    let retry_delay_max_ms = duration_ms("retry_delay_max", &r.retry_delay_max, bad);
    let resume_at = future_time("resume_at", &r.resume_at, bad);
    let rate_period_ms = duration_ms("rate_period", &r.rate_period, bad);
    NewJob {
        rate_limit: r.rate_limit,
        rate_period_ms,
        start_paused: r.start_paused,
        resume_at,
        timeout_ms,
        retry_delay_ms,
        retry_delay_max_ms,
        pause_after_failures: r.pause_after_failures,
        pause_on_failure_ratio: r.pause_on_failure_ratio,
        failure_window: r.failure_window,
        name: r.name,
        executor: r.executor,
        items: r.items,
        concurrency: r.concurrency,
        params: r.params.into_iter().collect::<BTreeMap<_, _>>(),
        labels: r.labels.into_iter().collect::<BTreeMap<_, _>>(),
        max_attempts: r.max_attempts,
        request_id: r.request_id,
        request_scope: String::new(),
        exclusive: r.exclusive,
        open: r.open,
    }
}

pub fn pause_mode_from(value: i32, bad: &mut Vec<FieldViolation>) -> PauseMode {
    match pb::PauseMode::try_from(value) {
        Ok(pb::PauseMode::Unspecified | pb::PauseMode::Graceful) => PauseMode::Graceful,
        Ok(pb::PauseMode::Immediate) => PauseMode::Immediate,
        Err(_) => {
            bad.push(FieldViolation::new(
                "mode",
                format!("{value} is not a PauseMode"),
            ));
            PauseMode::Graceful
        }
    }
}

/// A label selector (ListJobs, ControlJobs), checked as a job's labels
/// are.
pub fn selector(
    labels: std::collections::HashMap<String, String>,
    bad: &mut Vec<FieldViolation>,
) -> BTreeMap<String, String> {
    let labels = labels.into_iter().collect();
    check_labels("labels", &labels, bad);
    labels
}

/// A control call's reason and request id.
pub fn reason_and_request_id(
    reason: &str,
    request_id: &str,
    bad: &mut Vec<FieldViolation>,
) -> (Option<String>, Option<String>) {
    (
        optional_text("reason", reason, MAX_REASON_CHARS, bad),
        optional_text("request_id", request_id, MAX_REQUEST_ID_CHARS, bad),
    )
}

fn page_size(requested: u32, (default, max): (u32, u32)) -> u32 {
    match requested {
        0 => default,
        n => n.min(max),
    }
}

pub fn job_query(r: pb::ListJobsRequest) -> Result<JobQuery, Vec<FieldViolation>> {
    let mut bad = Vec::new();
    let mut states = Vec::new();
    for (i, s) in r.states.iter().enumerate() {
        match job_state_from(*s) {
            Some(state) => states.push(state),
            None => bad.push(FieldViolation::new(
                format!("states[{i}]"),
                format!("{s} is not a job state"),
            )),
        }
    }
    let after = match r.page_token.as_str() {
        "" => None,
        token => match JobCursor::decode(token) {
            Ok(c) => Some(c),
            Err(why) => {
                bad.push(FieldViolation::new("page_token", why));
                None
            }
        },
    };
    checked(
        Some(JobQuery {
            states,
            labels: selector(r.labels, &mut bad),
            limit: page_size(r.page_size, JOBS_PAGE),
            after,
            name: (!r.name.is_empty()).then_some(r.name),
        }),
        bad,
    )
}

pub fn item_query(r: pb::ListJobItemsRequest) -> Result<ItemQuery, Vec<FieldViolation>> {
    let mut bad = Vec::new();
    let job = job_id("job_id", &r.job_id, &mut bad);
    let mut states = Vec::new();
    for (i, s) in r.states.iter().enumerate() {
        match item_state_from(*s) {
            Some(state) => states.push(state),
            None => bad.push(FieldViolation::new(
                format!("states[{i}]"),
                format!("{s} is not an item state"),
            )),
        }
    }
    let after = match r.page_token.as_str() {
        "" => None,
        token => match ItemCursor::decode(token) {
            Ok(c) => Some(c),
            Err(why) => {
                bad.push(FieldViolation::new("page_token", why));
                None
            }
        },
    };
    let query = job.map(|job| ItemQuery {
        job,
        states,
        limit: page_size(r.page_size, ITEMS_PAGE),
        after,
    });
    checked(query, bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(seconds: i64, nanos: i32) -> Result<u64, String> {
        let mut bad = Vec::new();
        let ms = duration_ms(
            "timeout",
            &Some(prost_types::Duration { seconds, nanos }),
            &mut bad,
        );
        match bad.pop() {
            None => Ok(ms),
            Some(v) => {
                assert_eq!(v.field, "timeout");
                Err(v.description)
            }
        }
    }

    #[test]
    fn durations_are_taken_exactly_or_refused() {
        assert_eq!(ms(1, 500_000_000), Ok(1500));
        assert_eq!(ms(0, 1_000_000), Ok(1));
        assert_eq!(ms(0, 0), Ok(0));
        assert!(ms(1, 2_000_000_000).unwrap_err().contains("nanos"));
        assert!(ms(1, -5).unwrap_err().contains("opposite signs"));
        assert!(ms(-1, 0).unwrap_err().contains("negative"));
        assert!(ms(0, -5_000_000).unwrap_err().contains("negative"));
        assert!(ms(0, 1).unwrap_err().contains("milliseconds"));
        assert!(ms(1, 999_999).unwrap_err().contains("milliseconds"));
        assert!(ms(i64::MAX, 0).unwrap_err().contains("too long"));
    }
}

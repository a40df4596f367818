//! How the CLI shows things: text for people, JSON for scripts, and the
//! live view of `watch` (a progress bar on a terminal, JSON lines
//! otherwise).

use crate::pb;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Value, json};
use std::{collections::BTreeMap, process::ExitCode};

pub use crate::api::status::code_name;

pub fn job_state_name(value: i32) -> String {
    pb::JobState::try_from(value)
        .map(|s| s.as_str_name().trim_start_matches("JOB_STATE_").to_string())
        .unwrap_or_else(|_| value.to_string())
}

fn item_state_name(value: i32) -> String {
    pb::ItemState::try_from(value)
        .map(|s| {
            s.as_str_name()
                .trim_start_matches("ITEM_STATE_")
                .to_string()
        })
        .unwrap_or_else(|_| value.to_string())
}

fn pause_mode_name(value: i32) -> String {
    pb::PauseMode::try_from(value)
        .map(|s| {
            s.as_str_name()
                .trim_start_matches("PAUSE_MODE_")
                .to_string()
        })
        .unwrap_or_else(|_| value.to_string())
}

pub fn parse_job_state(raw: &str) -> Result<pb::JobState, String> {
    let name = format!("JOB_STATE_{}", raw.to_ascii_uppercase());
    pb::JobState::from_str_name(&name)
        .filter(|s| *s != pb::JobState::Unspecified)
        .ok_or_else(|| {
            format!("{raw:?} is not a job state (running, pausing, paused, cancelling, cancelled, succeeded, failed)")
        })
}

pub fn parse_item_state(raw: &str) -> Result<pb::ItemState, String> {
    let name = format!("ITEM_STATE_{}", raw.to_ascii_uppercase());
    pb::ItemState::from_str_name(&name)
        .filter(|s| *s != pb::ItemState::Unspecified)
        .ok_or_else(|| {
            format!("{raw:?} is not an item state (pending, running, succeeded, failed, cancelled)")
        })
}

fn time(t: &Option<prost_types::Timestamp>) -> Value {
    match t {
        Some(t) => chrono::DateTime::from_timestamp(t.seconds, t.nanos as u32)
            .map(|d| Value::String(d.to_rfc3339()))
            .unwrap_or(Value::Null),
        None => Value::Null,
    }
}

fn counts_json(c: &Option<pb::ItemCounts>) -> Value {
    let c = c.unwrap_or_default();
    json!({"total": c.total, "pending": c.pending, "running": c.running,
           "succeeded": c.succeeded, "failed": c.failed, "cancelled": c.cancelled})
}

pub fn job_json(j: &pb::Job) -> Value {
    json!({
        "id": j.id, "name": j.name, "executor": j.executor,
        "state": job_state_name(j.state), "counts": counts_json(&j.counts),
        "concurrency": j.concurrency, "max_attempts": j.max_attempts,
        "params": j.params, "labels": j.labels,
        "create_time": time(&j.create_time), "start_time": time(&j.start_time),
        "update_time": time(&j.update_time), "end_time": time(&j.end_time),
        "pauses": j.pauses.iter().map(|p| json!({
            "mode": pause_mode_name(p.mode), "reason": p.reason,
            "requested_by": p.requested_by, "request_id": p.request_id,
            "request_time": time(&p.request_time), "paused_time": time(&p.paused_time),
            "resume_time": time(&p.resume_time),
            "scheduled_resume_time": time(&p.scheduled_resume_time),
        })).collect::<Vec<_>>(),
        "can_pause": j.can_pause, "can_resume": j.can_resume, "can_cancel": j.can_cancel,
        "last_error": j.last_error, "last_sequence": j.last_sequence,
        "request_id": j.request_id, "policy": policy_json(j.policy.as_ref()),
        "waiting_for": j.waiting_for,
        "exclusive": j.exclusive,
        "open": j.open,
        "counters": sorted(&j.counters),
        "status": j.status.as_ref().map(|s| json!({
            "active_seconds": s.active_time.as_ref().map(|d| d.seconds),
            "items_per_second": s.items_per_second,
            "eta_seconds": s.eta.as_ref().map(|d| d.seconds),
            "running_items": s.running_items.iter().map(|i| json!({
                "index": i.index, "payload": i.payload, "attempts": i.attempts,
                "since": time(&i.update_time),
            })).collect::<Vec<_>>(),
        })),
        "owner": j.owner.as_ref().map(|o| json!({
            "server": o.server, "host": o.host, "pid": o.pid,
            "since_time": time(&o.since_time),
        })),
    })
}

/// Counters in name order (the wire's map has none).
fn sorted(counters: &std::collections::HashMap<String, i64>) -> BTreeMap<&str, i64> {
    counters.iter().map(|(k, v)| (k.as_str(), *v)).collect()
}

/// Counters as words: `faces 3 · frames 120`; empty without any.
fn counters_text(counters: &std::collections::HashMap<String, i64>) -> String {
    sorted(counters)
        .iter()
        .map(|(name, n)| format!("{name} {n}"))
        .collect::<Vec<_>>()
        .join(" · ")
}

/// A duration in seconds, or null when unset.
fn seconds(d: &Option<prost_types::Duration>) -> Value {
    match d.and_then(|d| std::time::Duration::try_from(d).ok()) {
        Some(d) => json!(d.as_secs_f64()),
        None => Value::Null,
    }
}

fn policy_json(p: Option<&pb::JobPolicy>) -> Value {
    let p = p.cloned().unwrap_or_default();
    json!({
        "timeout_seconds": seconds(&p.timeout),
        "pause_after_failures": p.pause_after_failures,
        "pause_on_failure_ratio": p.pause_on_failure_ratio,
        "failure_window": p.failure_window,
        "retry_delay_seconds": seconds(&p.retry_delay),
        "retry_delay_max_seconds": seconds(&p.retry_delay_max),
        "rate_limit": p.rate_limit,
        "rate_period_seconds": seconds(&p.rate_period),
    })
}

/// The job's running-time budget, error breaker, retry delays and rate
/// limit, in words; none when it has none of them.
fn policy_lines(p: &pb::JobPolicy) -> Vec<String> {
    let std = |d: prost_types::Duration| std::time::Duration::try_from(d).unwrap_or_default();
    let mut lines = Vec::new();
    if let Some(t) = p.timeout {
        lines.push(format!(
            "timeout:   fails after running {} (paused time not counted)",
            humantime::format_duration(std(t))
        ));
    }
    if p.pause_after_failures > 0 {
        lines.push(format!(
            "breaker:   pauses after {} failed attempts in a row",
            p.pause_after_failures
        ));
    }
    if p.pause_on_failure_ratio > 0.0 {
        let window = match p.failure_window {
            0 => 20,
            w => w,
        };
        lines.push(format!(
            "breaker:   pauses when {}% of the last {window} attempts failed",
            p.pause_on_failure_ratio * 100.0
        ));
    }
    if p.retry_delay.is_some() {
        // The server's own reading of the two delays (the cap's default).
        let ms = |d: Option<prost_types::Duration>| d.map(|d| std(d).as_millis() as u64);
        let backoff = crate::domain::JobPolicy {
            retry_delay_ms: ms(p.retry_delay),
            retry_delay_max_ms: ms(p.retry_delay_max),
            ..Default::default()
        }
        .backoff();
        lines.push(format!(
            "retries:   after {}, twice as long each time, at most {}",
            humantime::format_duration(backoff.first()),
            humantime::format_duration(backoff.cap())
        ));
    }
    if p.rate_limit > 0 {
        lines.push(format!(
            "rate:      at most {}",
            rate_words(p.rate_limit, &p.rate_period)
        ));
    }
    lines
}

/// A rate limit in words: "300 item starts per 1m", or "none".
fn rate_words(limit: u32, period: &Option<prost_types::Duration>) -> String {
    if limit == 0 {
        return "none".into();
    }
    let period = period
        .and_then(|d| std::time::Duration::try_from(d).ok())
        .unwrap_or(crate::domain::job::DEFAULT_RATE_PERIOD);
    format!(
        "{limit} item starts per {}",
        humantime::format_duration(period)
    )
}

/// `host:port (host h, pid 42) since T`: who runs a live job.
fn owner_text(o: &pb::JobOwner) -> String {
    let mut process = Vec::new();
    if !o.host.is_empty() {
        process.push(format!("host {}", o.host));
    }
    if o.pid != 0 {
        process.push(format!("pid {}", o.pid));
    }
    let process = if process.is_empty() {
        String::new()
    } else {
        format!(" ({})", process.join(", "))
    };
    let since = time(&o.since_time)
        .as_str()
        .map(|t| format!(" since {t}"))
        .unwrap_or_default();
    format!("{}{process}{since}", o.server)
}

fn counts_text(c: &Option<pb::ItemCounts>) -> String {
    let c = c.unwrap_or_default();
    format!(
        "{} total: {} pending, {} running, {} succeeded, {} failed, {} cancelled",
        c.total, c.pending, c.running, c.succeeded, c.failed, c.cancelled
    )
}

/// A protobuf duration, to the second, as people read it (`3m 12s`).
fn human_seconds(d: &Option<prost_types::Duration>) -> Option<String> {
    let d = d.as_ref()?;
    let secs = u64::try_from(d.seconds).ok()?;
    Some(humantime::format_duration(std::time::Duration::from_secs(secs)).to_string())
}

/// GetJob's status: time, rate and ETA, the items running now, and where
/// the failed ones are.
fn status_lines(j: &pb::Job, s: &pb::JobStatus) -> Vec<String> {
    let mut lines = Vec::new();
    if let Some(active) = human_seconds(&s.active_time) {
        lines.push(format!("elapsed:   {active} (time paused not counted)"));
    }
    if s.items_per_second > 0.0 {
        let eta = human_seconds(&s.eta)
            .map(|eta| format!("; ETA {eta}"))
            .unwrap_or_default();
        lines.push(format!(
            "rate:      {:.2} items/s on average{eta}",
            s.items_per_second
        ));
    }
    let now = chrono::Utc::now();
    for (n, item) in s.running_items.iter().enumerate() {
        let since = item
            .update_time
            .as_ref()
            .and_then(|t| chrono::DateTime::from_timestamp(t.seconds, 0))
            .map(|t| {
                let secs = (now - t).num_seconds().max(0) as u64;
                humantime::format_duration(std::time::Duration::from_secs(secs)).to_string()
            })
            .unwrap_or_else(|| "?".into());
        let label = if n == 0 { "running:  " } else { "          " };
        let payload: String = item.payload.chars().take(60).collect();
        lines.push(format!(
            "{label} #{} {payload} (attempt {}, for {since})",
            item.index,
            item.attempts.max(1)
        ));
    }
    let counts = j.counts.unwrap_or_default();
    let shown = s.running_items.len() as u64;
    if counts.running > shown && shown > 0 {
        lines.push(format!("           … and {} more", counts.running - shown));
    }
    if counts.failed > 0 {
        lines.push(format!(
            "failed:    {} items: jobvisor items {} --state failed",
            counts.failed, j.id
        ));
    }
    lines
}

pub fn print_job(j: &pb::Job, json: bool) {
    if json {
        say!("{}", job_json(j));
        return;
    }
    say!("id:        {}", j.id);
    say!("name:      {}", j.name);
    say!("state:     {}", job_state_name(j.state));
    say!(
        "executor:  {} (concurrency {}, max attempts {})",
        j.executor,
        j.concurrency,
        j.max_attempts
    );
    say!("items:     {}", counts_text(&j.counts));
    if !j.counters.is_empty() {
        say!("counters:  {}", counters_text(&j.counters));
    }
    if j.open {
        say!("open:      takes more items (jobvisor add); ends only once closed (jobvisor close)");
    }
    if !j.waiting_for.is_empty() {
        say!("waiting:   {}", j.waiting_for);
    }
    if let Some(status) = &j.status {
        for line in status_lines(j, status) {
            say!("{line}");
        }
    }
    if let Some(owner) = &j.owner {
        say!("owner:     {}", owner_text(owner));
    }
    for line in j.policy.as_ref().map(policy_lines).unwrap_or_default() {
        say!("{line}");
    }
    if !j.last_error.is_empty() {
        say!("error:     {}", j.last_error);
    }
    for p in &j.pauses {
        let reason = if p.reason.is_empty() {
            String::new()
        } else {
            format!(" ({})", p.reason)
        };
        // A scheduled resume is news only while the job is still paused.
        let paused_now =
            [pb::JobState::Pausing as i32, pb::JobState::Paused as i32].contains(&j.state);
        let resumed = match (
            time(&p.resume_time).as_str(),
            time(&p.scheduled_resume_time).as_str(),
        ) {
            (Some(at), _) => format!("resumed {at}"),
            (None, Some(at)) if paused_now => format!("resumes by itself at {at}"),
            _ => "resumed -".into(),
        };
        say!(
            "paused:    {} at {}{}, {}",
            pause_mode_name(p.mode).to_lowercase(),
            time(&p.request_time).as_str().unwrap_or("?"),
            reason,
            resumed,
        );
    }
}

pub fn print_jobs(page: &pb::ListJobsResponse, json: bool) {
    if json {
        let jobs: Vec<Value> = page.jobs.iter().map(job_json).collect();
        say!(
            "{}",
            json!({"jobs": jobs, "next_page_token": page.next_page_token})
        );
        return;
    }
    say!(
        "{:<36}  {:<10}  {:>9}  {:>9}  NAME",
        "ID",
        "STATE",
        "DONE",
        "TOTAL"
    );
    for j in &page.jobs {
        let c = j.counts.unwrap_or_default();
        say!(
            "{:<36}  {:<10}  {:>9}  {:>9}  {}",
            j.id,
            job_state_name(j.state),
            c.succeeded + c.failed + c.cancelled,
            c.total,
            j.name
        );
    }
    if !page.next_page_token.is_empty() {
        say!("(more: --page-token {})", page.next_page_token);
    }
}

pub fn print_items(page: &pb::ListJobItemsResponse, json: bool) {
    if json {
        let items: Vec<Value> = page
            .items
            .iter()
            .map(|i| {
                json!({"index": i.index, "payload": i.payload, "state": item_state_name(i.state),
                       "attempts": i.attempts, "last_error": i.last_error,
                       "checkpoint": String::from_utf8_lossy(&i.checkpoint),
                       "result": i.result, "skip_reason": i.skip_reason,
                       "update_time": time(&i.update_time),
                       "retry_time": time(&i.retry_time)})
            })
            .collect();
        say!(
            "{}",
            json!({"items": items, "next_page_token": page.next_page_token})
        );
        return;
    }
    say!(
        "{:>7}  {:<9}  {:>8}  {:<12}  PAYLOAD / ERROR",
        "INDEX",
        "STATE",
        "ATTEMPTS",
        "CHECKPOINT"
    );
    for i in &page.items {
        let checkpoint: String = String::from_utf8_lossy(&i.checkpoint)
            .chars()
            .take(12)
            .collect();
        let payload: String = i.payload.chars().take(40).collect();
        let mut error = if i.last_error.is_empty() {
            String::new()
        } else {
            format!("  ! {}", i.last_error)
        };
        if let Some(at) = time(&i.retry_time).as_str() {
            error.push_str(&format!("  (retry at {at})"));
        }
        if !i.skip_reason.is_empty() {
            error.push_str(&format!("  (skipped: {})", i.skip_reason));
        }
        say!(
            "{:>7}  {:<9}  {:>8}  {:<12}  {}{}",
            i.index,
            item_state_name(i.state),
            i.attempts,
            checkpoint,
            payload,
            error
        );
    }
    if !page.next_page_token.is_empty() {
        say!("(more: --page-token {})", page.next_page_token);
    }
}

pub fn print_outcomes(answer: &pb::ControlJobsResponse, json: bool) {
    for o in &answer.outcomes {
        if json {
            say!(
                "{}",
                json!({"job_id": o.job_id, "state": o.job.as_ref().map(|j| job_state_name(j.state)),
                       "error_code": o.error_code, "error_message": o.error_message})
            );
        } else if o.error_code.is_empty() {
            let state = o
                .job
                .as_ref()
                .map(|j| job_state_name(j.state))
                .unwrap_or_default();
            say!("{}  {state}", o.job_id);
        } else {
            say!(
                "{}  refused: {} {}",
                o.job_id,
                o.error_code,
                o.error_message
            );
        }
    }
}

/// The exit code for a job that ended in `state`.
pub fn exit_code(state: i32) -> ExitCode {
    match pb::JobState::try_from(state) {
        Ok(pb::JobState::Succeeded) => ExitCode::SUCCESS,
        Ok(pb::JobState::Failed) => ExitCode::from(3),
        Ok(pb::JobState::Cancelled) => ExitCode::from(4),
        _ => ExitCode::SUCCESS,
    }
}

/// The live view of a job.
pub struct WatchView {
    json: bool,
    bar: Option<ProgressBar>,
    state: i32,
}

impl WatchView {
    pub fn new(json: bool) -> Self {
        WatchView {
            json,
            bar: None,
            state: 0,
        }
    }

    /// The state the job was last seen in.
    pub fn last_state(&self) -> i32 {
        self.state
    }

    fn bar(&mut self, total: u64) -> &ProgressBar {
        self.bar.get_or_insert_with(|| {
            let bar = ProgressBar::new(total);
            bar.set_style(
                ProgressStyle::with_template("{spinner} [{bar:40}] {pos}/{len} {msg}")
                    .expect("progress template")
                    .progress_chars("=> "),
            );
            bar
        })
    }

    fn update(&mut self, counts: &Option<pb::ItemCounts>, extra: &str) {
        let c = counts.unwrap_or_default();
        let state = job_state_name(self.state).to_lowercase();
        let bar = self.bar(c.total);
        bar.set_length(c.total);
        bar.set_position(c.succeeded + c.failed + c.cancelled);
        bar.set_message(format!(
            "{state} · {} ok, {} failed, {} cancelled, {} running{extra}",
            c.succeeded, c.failed, c.cancelled, c.running
        ));
    }

    /// Prints a line without breaking the bar.
    /// A line for the person watching, on stderr (stdout carries only the
    /// job's events, one JSON line each with `--json`).
    pub fn note(&mut self, line: &str) {
        match &self.bar {
            Some(bar) => bar.suspend(|| eprintln!("{line}")),
            None => eprintln!("{line}"),
        }
    }

    /// Shows one event; returns the exit code once the job has ended.
    pub fn show(&mut self, event: &pb::JobEvent) -> Option<ExitCode> {
        use pb::job_event::Kind;
        let Some(kind) = &event.kind else { return None };
        if self.json {
            say!("{}", event_json(event));
        }
        match kind {
            Kind::Snapshot(job) => {
                self.state = job.state;
                if !self.json {
                    self.note(&format!(
                        "{} · {} ({})",
                        job.id,
                        job.name,
                        job_state_name(job.state)
                    ));
                    if !job.waiting_for.is_empty() {
                        self.note(&job.waiting_for);
                    }
                    self.update(&job.counts, "");
                }
            }
            Kind::StateChanged(c) => {
                self.state = c.to;
                if !self.json {
                    let reason = if c.reason.is_empty() {
                        String::new()
                    } else {
                        format!(": {}", c.reason)
                    };
                    self.note(&format!(
                        "#{} {} → {}{}",
                        event.sequence,
                        job_state_name(c.from),
                        job_state_name(c.to),
                        reason
                    ));
                }
                if matches!(
                    pb::JobState::try_from(c.to),
                    Ok(pb::JobState::Succeeded | pb::JobState::Failed | pb::JobState::Cancelled)
                ) {
                    return Some(exit_code(c.to));
                }
            }
            Kind::ItemFailed(f) => {
                if !self.json {
                    let retry = match (f.will_retry, time(&f.retry_time).as_str()) {
                        (true, Some(at)) => format!("will retry at {at}"),
                        (true, None) => "will retry".into(),
                        (false, _) => "gave up".into(),
                    };
                    self.note(&format!(
                        "#{} item {} attempt {} failed ({retry}): {}",
                        event.sequence, f.index, f.attempt, f.error
                    ));
                }
            }
            Kind::ItemsAdded(a) => {
                if !self.json {
                    let items = match a.count {
                        0 => String::new(),
                        1 => format!("item {} added", a.first_index),
                        n => format!(
                            "{n} items added ({}–{})",
                            a.first_index,
                            a.first_index as u64 + n as u64 - 1
                        ),
                    };
                    let closed = match (a.closed, a.count) {
                        (false, _) => "",
                        (true, 0) => "closed: it ends once its items are done",
                        (true, _) => "; closed",
                    };
                    self.note(&format!("#{} {items}{closed}", event.sequence));
                }
            }
            Kind::ItemsCancelled(c) => {
                if !self.json {
                    let items = match c.count {
                        1 => format!("item {} cancelled", c.first_index),
                        n => format!("{n} items cancelled ({}–{})", c.first_index, c.last_index),
                    };
                    let why = if c.reason.is_empty() {
                        String::new()
                    } else {
                        format!(": {}", c.reason)
                    };
                    self.note(&format!("#{} {items}{why}", event.sequence));
                }
            }
            Kind::ConcurrencyChanged(c) => {
                if !self.json {
                    self.note(&format!(
                        "#{} concurrency {} → {}",
                        event.sequence, c.from, c.to
                    ));
                }
            }
            Kind::RateLimitChanged(r) => {
                if !self.json {
                    self.note(&format!(
                        "#{} rate limit {} → {}",
                        event.sequence,
                        rate_words(r.from_limit, &r.from_period),
                        rate_words(r.to_limit, &r.to_period)
                    ));
                }
            }
            Kind::WorkerRestarted(w) => {
                if !self.json {
                    self.note(&format!(
                        "#{} worker restarted on item {}: {}",
                        event.sequence, w.index, w.reason
                    ));
                }
            }
            Kind::OwnerChanged(o) => {
                if !self.json {
                    let from = if o.previous_owner.is_empty() {
                        String::new()
                    } else {
                        format!(" from {}", o.previous_owner)
                    };
                    self.note(&format!(
                        "#{} taken over by replica {}{from} ({} running items back to pending)",
                        event.sequence, o.owner, o.released_items
                    ));
                }
            }
            Kind::Progress(p) => {
                if !self.json {
                    let eta = p
                        .eta
                        .as_ref()
                        .map(|d| format!(", ETA {}s", d.seconds))
                        .unwrap_or_default();
                    let counters = match counters_text(&p.counters) {
                        text if text.is_empty() => text,
                        text => format!(" · {text}"),
                    };
                    self.update(
                        &p.counts,
                        &format!(" · {:.1} items/s{eta}{counters}", p.items_per_second),
                    );
                }
            }
        }
        None
    }

    pub fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish();
        }
    }
}

fn event_json(e: &pb::JobEvent) -> Value {
    use pb::job_event::Kind;
    let body = match &e.kind {
        Some(Kind::Snapshot(j)) => json!({"snapshot": job_json(j)}),
        Some(Kind::StateChanged(c)) => json!({"state_changed": {
            "from": job_state_name(c.from), "to": job_state_name(c.to), "reason": c.reason,
            "requested_by": c.requested_by, "request_id": c.request_id,
            "pause_mode": pause_mode_name(c.pause_mode)}}),
        Some(Kind::ItemFailed(f)) => json!({"item_failed": {
            "index": f.index, "attempt": f.attempt, "error": f.error, "will_retry": f.will_retry,
            "retry_time": time(&f.retry_time)}}),
        Some(Kind::ItemsAdded(a)) => json!({"items_added": {
            "first_index": a.first_index, "count": a.count, "closed": a.closed,
            "requested_by": a.requested_by, "request_id": a.request_id}}),
        Some(Kind::ItemsCancelled(c)) => json!({"items_cancelled": {
            "count": c.count, "first_index": c.first_index, "last_index": c.last_index,
            "reason": c.reason, "requested_by": c.requested_by}}),
        Some(Kind::ConcurrencyChanged(c)) => json!({"concurrency_changed": {
            "from": c.from, "to": c.to, "requested_by": c.requested_by,
            "request_id": c.request_id}}),
        Some(Kind::RateLimitChanged(r)) => json!({"rate_limit_changed": {
            "from_limit": r.from_limit, "from_period_seconds": seconds(&r.from_period),
            "to_limit": r.to_limit, "to_period_seconds": seconds(&r.to_period),
            "requested_by": r.requested_by, "request_id": r.request_id}}),
        Some(Kind::WorkerRestarted(w)) => json!({"worker_restarted": {
            "index": w.index, "reason": w.reason, "restarts_in_window": w.restarts_in_window}}),
        Some(Kind::OwnerChanged(o)) => json!({"owner_changed": {
            "owner": o.owner, "previous_owner": o.previous_owner,
            "released_items": o.released_items}}),
        Some(Kind::Progress(p)) => json!({"progress": {
            "counts": counts_json(&p.counts), "items_per_second": p.items_per_second,
            "eta_seconds": p.eta.as_ref().map(|d| d.seconds),
            "counters": sorted(&p.counters)}}),
        None => Value::Null,
    };
    json!({"sequence": e.sequence, "time": time(&e.time), "event": body})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_names_are_grpc_spelling() {
        assert_eq!(
            code_name(tonic::Code::FailedPrecondition),
            "FAILED_PRECONDITION"
        );
        assert_eq!(code_name(tonic::Code::NotFound), "NOT_FOUND");
    }

    #[test]
    fn a_policy_is_put_in_words() {
        let secs = |seconds| prost_types::Duration { seconds, nanos: 0 };
        assert!(policy_lines(&pb::JobPolicy::default()).is_empty());
        let p = pb::JobPolicy {
            timeout: Some(secs(7200)),
            pause_after_failures: 5,
            pause_on_failure_ratio: 0.5,
            failure_window: 0,
            retry_delay: Some(secs(2)),
            retry_delay_max: None,
            rate_limit: 300,
            rate_period: Some(secs(60)),
        };
        assert_eq!(
            policy_lines(&p),
            [
                "timeout:   fails after running 2h (paused time not counted)",
                "breaker:   pauses after 5 failed attempts in a row",
                "breaker:   pauses when 50% of the last 20 attempts failed",
                "retries:   after 2s, twice as long each time, at most 1h",
                "rate:      at most 300 item starts per 1m",
            ]
        );
        let json = policy_json(Some(&p));
        assert_eq!(json["retry_delay_seconds"], json!(2.0));
        assert_eq!(json["retry_delay_max_seconds"], Value::Null);
        assert_eq!(json["timeout_seconds"], json!(7200.0));
        assert_eq!(rate_words(0, &None), "none");
        assert_eq!(rate_words(5, &None), "5 item starts per 1s");
        assert_eq!(json["rate_limit"], json!(300));
        assert_eq!(json["rate_period_seconds"], json!(60.0));
    }

    #[test]
    fn a_pause_s_scheduled_resume_is_in_the_json() {
        let at = prost_types::Timestamp {
            seconds: 1_796_623_200,
            nanos: 0,
        };
        let job = pb::Job {
            pauses: vec![pb::PauseRecord {
                scheduled_resume_time: Some(at),
                ..Default::default()
            }],
            ..Default::default()
        };
        let json = job_json(&job);
        assert_eq!(
            json["pauses"][0]["scheduled_resume_time"],
            json!("2026-12-07T06:00:00+00:00")
        );
        assert_eq!(json["pauses"][0]["resume_time"], Value::Null);
    }

    #[test]
    fn the_owner_of_a_live_job_is_shown_with_its_process() {
        let owner = pb::JobOwner {
            server: "db-1:50051".into(),
            host: "db-1".into(),
            pid: 4242,
            since_time: Some(prost_types::Timestamp {
                seconds: 1_796_623_200,
                nanos: 0,
            }),
        };
        assert_eq!(
            owner_text(&owner),
            "db-1:50051 (host db-1, pid 4242) since 2026-12-07T06:00:00+00:00"
        );
        let job = pb::Job {
            owner: Some(owner),
            ..Default::default()
        };
        assert_eq!(job_json(&job)["owner"]["pid"], json!(4242));
        assert_eq!(job_json(&pb::Job::default())["owner"], Value::Null);
    }

    #[test]
    fn states_parse_case_insensitively() {
        assert_eq!(parse_job_state("paused"), Ok(pb::JobState::Paused));
        assert!(parse_job_state("unspecified").is_err());
        assert_eq!(parse_item_state("FAILED"), Ok(pb::ItemState::Failed));
    }
}

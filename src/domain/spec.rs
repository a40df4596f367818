//! Parsing what a caller sent into what the system stores: a `JobSpec`
//! exists only if every field was valid, and a refusal names every bad
//! field (by its API name) with what was wrong.

use super::job::{JobPolicy, RateLimit};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// One bad field of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    /// The field's name in the API, e.g. `items[3]` or `params[steps]`.
    pub field: String,
    pub description: String,
}

impl FieldViolation {
    /// A violation as a caller will read it. A field name that holds the
    /// caller's input (a map key: `labels[…]`) is cut to [`MAX_ECHO_CHARS`]
    /// and a description to [`MAX_DESCRIPTION_CHARS`]: an error that
    /// repeated a megabyte of input whole would be larger than the request,
    /// and larger than the trailers gRPC clients accept.
    pub fn new(field: impl Into<String>, description: impl Into<String>) -> Self {
        FieldViolation {
            field: cut(field.into(), MAX_ECHO_CHARS),
            description: cut(description.into(), MAX_DESCRIPTION_CHARS),
        }
    }
}

/// Most characters of a caller's value an error repeats.
pub const MAX_ECHO_CHARS: usize = 64;
/// Longest description of a violation (ours are far shorter: only a
/// value repeated in one is ever cut).
const MAX_DESCRIPTION_CHARS: usize = 200;

/// `text`, or its first `max` characters and "…".
fn cut(mut text: String, max: usize) -> String {
    if let Some((at, _)) = text.char_indices().nth(max) {
        text.truncate(at);
        text.push('…');
    }
    text
}

/// A caller's value as an error repeats it: quoted, and cut to
/// [`MAX_ECHO_CHARS`] characters.
pub fn echo(value: &str) -> String {
    let shown = cut(value.to_string(), MAX_ECHO_CHARS);
    format!("{shown:?}")
}

/// How much work one call may create. The defaults are the API contract's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_items: usize,
    pub max_item_bytes: usize,
    pub max_concurrency: u32,
    pub max_attempts: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_items: 1_000_000,
            max_item_bytes: 64 * 1024,
            max_concurrency: 1024,
            max_attempts: 100,
        }
    }
}

/// Longest job name, in characters.
pub const MAX_NAME_CHARS: usize = 200;
/// Longest reason of a control call, in characters.
pub const MAX_REASON_CHARS: usize = 1000;
/// Longest request id, in characters.
pub const MAX_REQUEST_ID_CHARS: usize = 200;
const MAX_MAP_ENTRIES: usize = 64;
const MAX_KEY_CHARS: usize = 128;
const MAX_LABEL_VALUE_CHARS: usize = 256;
const MAX_PARAM_VALUE_BYTES: usize = 64 * 1024;
const DEFAULT_MAX_ATTEMPTS: u32 = 3;

/// A StartJob request as received, before parsing.
#[derive(Debug, Clone, Default)]
pub struct NewJob {
    pub name: String,
    pub executor: String,
    pub items: Vec<String>,
    pub concurrency: u32,
    pub params: BTreeMap<String, String>,
    pub labels: BTreeMap<String, String>,
    pub max_attempts: u32,
    pub request_id: String,
    /// Whose request ids `request_id` is one of (see
    /// [`JobSpec::request_scope`]).
    pub request_scope: String,
    /// The name is unique among live exclusive jobs.
    pub exclusive: bool,
    /// The job is open: it does not end until a call closes it, and may
    /// start with no items (they come in pages, [`NewItems`]).
    pub open: bool,
    /// Running-time budget in milliseconds (0: none).
    pub timeout_ms: u64,
    /// Pause after this many failed attempts in a row (0: never).
    pub pause_after_failures: u32,
    /// Pause when this share of recent attempts failed (0: never).
    pub pause_on_failure_ratio: f64,
    /// The attempts that ratio is measured over (0: 20).
    pub failure_window: u32,
    /// Wait before an item's first retry, doubled for each further one
    /// (0: retried at once).
    pub retry_delay_ms: u64,
    /// The longest wait before a retry (0: an hour, or `retry_delay_ms`
    /// if that is longer).
    pub retry_delay_max_ms: u64,
    /// Items started per `rate_period_ms` at most (0: no limit).
    pub rate_limit: u32,
    /// The period of `rate_limit` (0: a second).
    pub rate_period_ms: u64,
    /// Create the job PAUSED.
    pub start_paused: bool,
    /// With `start_paused`: when it resumes by itself.
    pub resume_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// How a new job starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StartAs {
    /// Its items are claimed at once.
    #[default]
    Running,
    /// Nothing runs until a ResumeJob call, or until `resume_at`.
    Paused {
        resume_at: Option<chrono::DateTime<chrono::Utc>>,
    },
}

impl StartAs {
    /// The state the job is created in.
    pub fn state(self) -> super::JobState {
        match self {
            StartAs::Running => super::JobState::Running,
            StartAs::Paused { .. } => super::JobState::Paused,
        }
    }

    /// When a job created paused resumes by itself, if it does.
    pub fn resume_at(self) -> Option<chrono::DateTime<chrono::Utc>> {
        match self {
            StartAs::Running => None,
            StartAs::Paused { resume_at } => resume_at,
        }
    }
}

/// Longest running-time budget: 30 days.
const MAX_TIMEOUT_MS: u64 = 30 * 24 * 3600 * 1000;

/// A job that can be stored: every field checked, defaults applied.
#[derive(Debug, Clone, PartialEq)]
pub struct JobSpec {
    pub name: String,
    pub executor: String,
    pub items: Vec<String>,
    pub concurrency: u32,
    pub params: BTreeMap<String, String>,
    pub labels: BTreeMap<String, String>,
    pub max_attempts: u32,
    pub request_id: Option<String>,
    /// The callers among whom `request_id` is unique: the label scope of
    /// the caller that started the job ([`request_scope`]), empty for an
    /// unscoped one. A caller in another scope never meets the key, not
    /// even as a refusal that would tell it the key exists.
    pub request_scope: String,
    pub policy: JobPolicy,
    pub start: StartAs,
    /// The name is unique among live exclusive jobs (StartJob's
    /// `exclusive`, RunJob).
    pub exclusive: bool,
    /// It does not end until closed (AddItems with `close`), however many
    /// of its items are done.
    pub open: bool,
}

/// The request-id scope of a caller with these scope labels: empty for
/// none, else the labels as one canonical text (sorted, JSON-quoted, so
/// two different scopes never read the same).
pub fn request_scope(scope: &BTreeMap<String, String>) -> String {
    if scope.is_empty() {
        return String::new();
    }
    serde_json::to_string(scope).unwrap_or_default()
}

/// The reason recorded for a job created PAUSED.
pub const STARTED_PAUSED: &str = "started paused";

impl JobSpec {
    /// The job this spec would store if it started `now` (a dry run's
    /// answer): no id, no event yet.
    pub fn preview(&self, now: chrono::DateTime<chrono::Utc>) -> super::Job {
        let state = self.start.state();
        let paused = state == super::JobState::Paused;
        super::Job {
            id: super::JobId(uuid::Uuid::nil()),
            name: self.name.clone(),
            executor: self.executor.clone(),
            state,
            counts: super::ItemCounts {
                total: self.items.len() as u64,
                ..super::ItemCounts::default()
            },
            concurrency: self.concurrency,
            max_attempts: self.max_attempts,
            params: self.params.clone(),
            labels: self.labels.clone(),
            policy: self.policy.clone(),
            request_id: self.request_id.clone(),
            created_at: now,
            started_at: Some(now),
            updated_at: now,
            ended_at: None,
            pauses: paused
                .then(|| super::PauseRecord {
                    mode: super::PauseMode::Graceful,
                    reason: Some(STARTED_PAUSED.into()),
                    requested_by: None,
                    request_id: None,
                    requested_at: now,
                    paused_at: Some(now),
                    resumed_at: None,
                    resume_at: self.start.resume_at(),
                })
                .into_iter()
                .collect(),
            last_error: None,
            last_seq: 0,
            exclusive: self.exclusive,
            open: self.open,
            counters: Default::default(),
        }
    }

    /// Checks every field of `input` against `limits`.
    pub fn parse(input: NewJob, limits: &Limits) -> Result<JobSpec, Vec<FieldViolation>> {
        let mut bad = Vec::new();
        let name = input.name.trim().to_string();
        let name_chars = name.chars().count();
        if name_chars == 0 {
            bad.push(FieldViolation::new("name", "is required"));
        } else if name.contains('\0') {
            bad.push(FieldViolation::new("name", "contains a NUL character"));
        } else if name_chars > MAX_NAME_CHARS {
            bad.push(FieldViolation::new(
                "name",
                format!("is {name_chars} characters long; the limit is {MAX_NAME_CHARS}"),
            ));
        }
        if input.executor.is_empty() {
            bad.push(FieldViolation::new("executor", "is required"));
        }
        if input.items.is_empty() && !input.open {
            bad.push(FieldViolation::new(
                "items",
                "must hold at least one item (a job started open may start with none)",
            ));
        }
        check_count("items", input.items.len(), limits.max_items, &mut bad);
        check_each_item(&input.items, limits, &mut bad);
        let concurrency = match input.concurrency {
            0 => 1,
            n if n > limits.max_concurrency => {
                bad.push(FieldViolation::new(
                    "concurrency",
                    format!(
                        "is {n}; it must be between 1 and {}",
                        limits.max_concurrency
                    ),
                ));
                n
            }
            n => n,
        };
        let max_attempts = match input.max_attempts {
            0 => DEFAULT_MAX_ATTEMPTS,
            n if n > limits.max_attempts => {
                bad.push(FieldViolation::new(
                    "max_attempts",
                    format!("is {n}; it must be between 1 and {}", limits.max_attempts),
                ));
                n
            }
            n => n,
        };
        check_map("params", &input.params, MAX_PARAM_VALUE_BYTES, &mut bad);
        check_labels("labels", &input.labels, &mut bad);
        let request_id = optional_text(
            "request_id",
            &input.request_id,
            MAX_REQUEST_ID_CHARS,
            &mut bad,
        );
        let policy = parse_policy(&input, &mut bad);
        let start = match (input.start_paused, input.resume_at) {
            (false, None) => StartAs::Running,
            (false, Some(_)) => {
                bad.push(FieldViolation::new(
                    "resume_at",
                    "applies to a job started paused (start_paused)",
                ));
                StartAs::Running
            }
            (true, resume_at) => StartAs::Paused { resume_at },
        };
        if !bad.is_empty() {
            return Err(bad);
        }
        Ok(JobSpec {
            name,
            executor: input.executor,
            items: input.items,
            concurrency,
            params: input.params,
            labels: input.labels,
            max_attempts,
            request_id,
            request_scope: input.request_scope,
            policy,
            start,
            exclusive: input.exclusive,
            open: input.open,
        })
    }

    /// A digest of everything the request asked for except its request id:
    /// two requests with the same key and the same fingerprint are the same
    /// request (AIP-155).
    pub fn fingerprint(&self) -> Vec<u8> {
        let mut h = Sha256::new();
        let mut field = |bytes: &[u8]| {
            h.update((bytes.len() as u64).to_le_bytes());
            h.update(bytes);
        };
        field(self.name.as_bytes());
        field(self.executor.as_bytes());
        field(&[u8::from(self.exclusive)]);
        field(&self.concurrency.to_le_bytes());
        field(&self.max_attempts.to_le_bytes());
        field(
            serde_json::to_string(&self.policy)
                .unwrap_or_default()
                .as_bytes(),
        );
        for map in [&self.params, &self.labels] {
            field(&(map.len() as u64).to_le_bytes());
            for (k, v) in map {
                field(k.as_bytes());
                field(v.as_bytes());
            }
        }
        match self.start {
            StartAs::Running => field(b"running"),
            StartAs::Paused { resume_at } => {
                field(b"paused");
                field(
                    &resume_at
                        .and_then(|t| t.timestamp_nanos_opt())
                        .unwrap_or(0)
                        .to_le_bytes(),
                );
            }
        }
        if self.open {
            field(b"open");
        }
        field(&(self.items.len() as u64).to_le_bytes());
        for item in &self.items {
            field(item.as_bytes());
        }
        h.finalize().to_vec()
    }
}

/// Most items one AddItems page may hold.
pub const MAX_PAGE_ITEMS: usize = 100_000;
/// Most bytes of items (their payloads) one AddItems page may hold: pages
/// stay small enough for proxies and default client limits.
pub const MAX_PAGE_BYTES: usize = 4 * 1024 * 1024;

/// An AddItems request as received, before parsing.
#[derive(Debug, Clone, Default)]
pub struct NewItems {
    pub items: Vec<String>,
    pub request_id: String,
    /// Close the job with this page: it may end once its items are done.
    pub close: bool,
}

/// A page of items to add to a job that has not ended: checked, each item
/// within the job's limits and the page within [`MAX_PAGE_ITEMS`] and
/// [`MAX_PAGE_BYTES`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemPage {
    pub items: Vec<String>,
    /// A retried page with the same request id adds nothing again.
    pub request_id: Option<String>,
    pub close: bool,
}

/// What a page does to its job (see [`ItemPage::growth`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Growth {
    /// The index of the page's first item: the job's items before it.
    pub first: u64,
    /// The items the page adds.
    pub adding: u64,
    /// The page closes an open job.
    pub closes: bool,
}

impl Growth {
    /// Whether the job changes (items, or its open flag): if not, no event.
    pub fn changes(&self) -> bool {
        self.adding > 0 || self.closes
    }

    /// The job's event for the page.
    pub fn event(&self, page: &ItemPage, requested_by: Option<&str>) -> super::EventBody {
        super::EventBody::ItemsAdded {
            first: self.first as u32,
            count: self.adding as u32,
            closed: self.closes,
            requested_by: requested_by.map(String::from),
            request_id: page.request_id.clone(),
        }
    }
}

/// Why a job takes no page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageRefusal {
    /// Only a RUNNING, PAUSING or PAUSED job takes items.
    TakesNoItems(super::JobState),
    /// The page would take the job past the most items a job may hold.
    TooManyItems { total: u64, adding: u64, limit: u64 },
}

impl ItemPage {
    /// Checks every field of `input` against `limits`. An empty page is a
    /// page that only closes the job.
    pub fn parse(input: NewItems, limits: &Limits) -> Result<ItemPage, Vec<FieldViolation>> {
        let mut bad = Vec::new();
        if input.items.is_empty() && !input.close {
            bad.push(FieldViolation::new(
                "items",
                "must hold at least one item (or set close to only close the job)",
            ));
        }
        check_count("items", input.items.len(), MAX_PAGE_ITEMS, &mut bad);
        let bytes: usize = input.items.iter().map(String::len).sum();
        if bytes > MAX_PAGE_BYTES {
            bad.push(FieldViolation::new(
                "items",
                format!(
                    "holds {bytes} bytes of items; a page may hold at most {MAX_PAGE_BYTES} \
                     (send more pages)"
                ),
            ));
        }
        check_each_item(&input.items, limits, &mut bad);
        let request_id = optional_text(
            "request_id",
            &input.request_id,
            MAX_REQUEST_ID_CHARS,
            &mut bad,
        );
        if !bad.is_empty() {
            return Err(bad);
        }
        Ok(ItemPage {
            items: input.items,
            request_id,
            close: input.close,
        })
    }

    /// What the page does to a job in `state` that holds `total` items and
    /// is `open` or not, at most `max_items` in all: decided here, without
    /// I/O, for both stores. A page that adds nothing and closes nothing
    /// (an empty close of a job that is not open) changes nothing.
    pub fn growth(
        &self,
        state: super::JobState,
        total: u64,
        open: bool,
        max_items: u64,
    ) -> Result<Growth, PageRefusal> {
        super::growable(state).map_err(|_| PageRefusal::TakesNoItems(state))?;
        let adding = self.items.len() as u64;
        if total + adding > max_items {
            return Err(PageRefusal::TooManyItems {
                total,
                adding,
                limit: max_items,
            });
        }
        Ok(Growth {
            first: total,
            adding,
            closes: self.close && open,
        })
    }

    /// A digest of the page (its items and whether it closes): a request id
    /// used again with another page is refused (AIP-155).
    pub fn fingerprint(&self) -> Vec<u8> {
        let mut h = Sha256::new();
        h.update([self.close as u8]);
        h.update((self.items.len() as u64).to_le_bytes());
        for item in &self.items {
            h.update((item.len() as u64).to_le_bytes());
            h.update(item.as_bytes());
        }
        h.finalize().to_vec()
    }
}

fn parse_policy(input: &NewJob, bad: &mut Vec<FieldViolation>) -> JobPolicy {
    let mut policy = JobPolicy::default();
    if input.timeout_ms > MAX_TIMEOUT_MS {
        bad.push(FieldViolation::new(
            "timeout",
            format!(
                "is longer than the limit of {} days",
                MAX_TIMEOUT_MS / 86_400_000
            ),
        ));
    } else if input.timeout_ms > 0 {
        policy.timeout_ms = Some(input.timeout_ms);
    }
    if input.pause_after_failures > 0 {
        policy.pause_after_failures = Some(input.pause_after_failures);
    }
    let ratio = input.pause_on_failure_ratio;
    if !ratio.is_finite() || !(0.0..=1.0).contains(&ratio) {
        bad.push(FieldViolation::new(
            "pause_on_failure_ratio",
            "must be between 0 (off) and 1",
        ));
    } else if ratio > 0.0 {
        policy.pause_on_failure_ratio = Some(ratio);
    }
    match input.failure_window {
        0 => {}
        w if !(5..=10_000).contains(&w) => bad.push(FieldViolation::new(
            "failure_window",
            format!("is {w}; it must be between 5 and 10000 attempts"),
        )),
        w => policy.failure_window = Some(w),
    }
    if policy.failure_window.is_some() && policy.pause_on_failure_ratio.is_none() {
        bad.push(FieldViolation::new(
            "failure_window",
            "only applies with pause_on_failure_ratio",
        ));
    }
    parse_retry_delays(input, &mut policy, bad);
    parse_rate_limit(input, &mut policy, bad);
    policy
}

/// Most items a job may start per period.
const MAX_RATE_LIMIT: u32 = 1_000_000;

fn parse_rate_limit(input: &NewJob, policy: &mut JobPolicy, bad: &mut Vec<FieldViolation>) {
    match parse_rate(input.rate_limit, input.rate_period_ms) {
        Ok(rate) => policy.set_rate(rate),
        Err(violations) => bad.extend(violations),
    }
}

/// A rate limit as asked for (`rate_limit`, `rate_period`; 0: none and
/// the default), checked.
pub fn parse_rate(limit: u32, period_ms: u64) -> Result<RateLimit, Vec<FieldViolation>> {
    let mut bad = Vec::new();
    if limit > MAX_RATE_LIMIT {
        bad.push(FieldViolation::new(
            "rate_limit",
            format!("is {limit}; it must be between 1 and {MAX_RATE_LIMIT} (0: no limit)"),
        ));
    }
    if period_ms > 0 && limit == 0 {
        bad.push(FieldViolation::new(
            "rate_period",
            "only applies with rate_limit",
        ));
    } else if u128::from(period_ms) > super::job::MAX_RATE_PERIOD.as_millis() {
        bad.push(FieldViolation::new(
            "rate_period",
            format!(
                "is longer than the limit of {} hours",
                super::job::MAX_RATE_PERIOD.as_secs() / 3600
            ),
        ));
    }
    if !bad.is_empty() {
        return Err(bad);
    }
    Ok(RateLimit {
        limit: (limit > 0).then_some(limit),
        period_ms: (period_ms > 0).then_some(period_ms),
    })
}

fn parse_retry_delays(input: &NewJob, policy: &mut JobPolicy, bad: &mut Vec<FieldViolation>) {
    let (delay, max) = (input.retry_delay_ms, input.retry_delay_max_ms);
    for (field, ms) in [("retry_delay", delay), ("retry_delay_max", max)] {
        if u128::from(ms) > super::job::MAX_RETRY_DELAY.as_millis() {
            bad.push(FieldViolation::new(
                field,
                format!(
                    "is longer than the limit of {} hours",
                    super::job::MAX_RETRY_DELAY.as_secs() / 3600
                ),
            ));
        }
    }
    if max > 0 && delay == 0 {
        bad.push(FieldViolation::new(
            "retry_delay_max",
            "only applies with retry_delay",
        ));
    } else if max > 0 && max < delay {
        bad.push(FieldViolation::new(
            "retry_delay_max",
            format!("is shorter than retry_delay ({max} ms < {delay} ms)"),
        ));
    }
    policy.retry_delay_ms = (delay > 0).then_some(delay);
    policy.retry_delay_max_ms = (max > 0).then_some(max);
}

/// A list of items holds at most `limit`.
fn check_count(field: &str, count: usize, limit: usize, bad: &mut Vec<FieldViolation>) {
    if count > limit {
        bad.push(FieldViolation::new(
            field,
            format!("holds {count} items; the limit is {limit}"),
        ));
    }
}

/// Each item within the size limit and free of NUL characters.
fn check_each_item(items: &[String], limits: &Limits, bad: &mut Vec<FieldViolation>) {
    if items.len() > limits.max_items.max(MAX_PAGE_ITEMS) {
        return;
    }
    // Report at most a few oversized items: a million violations would be
    // a bigger problem than the one they describe.
    let oversized = items
        .iter()
        .enumerate()
        .filter(|(_, item)| item.len() > limits.max_item_bytes);
    for (i, _) in items
        .iter()
        .enumerate()
        .filter(|(_, i)| i.contains('\0'))
        .take(5)
    {
        bad.push(FieldViolation::new(
            format!("items[{i}]"),
            "contains a NUL character",
        ));
    }
    for (i, item) in oversized.take(5) {
        bad.push(FieldViolation::new(
            format!("items[{i}]"),
            format!(
                "is {} bytes; the limit is {} bytes",
                item.len(),
                limits.max_item_bytes
            ),
        ));
    }
}

/// Labels, a job's or a selector's (ListJobs, ControlJobs): the same
/// keys, values and limits, so that a selector can name any label a job
/// can carry and nothing a store would refuse.
pub fn check_labels(field: &str, labels: &BTreeMap<String, String>, bad: &mut Vec<FieldViolation>) {
    check_map(field, labels, MAX_LABEL_VALUE_CHARS, bad);
}

fn check_map(
    field: &str,
    map: &BTreeMap<String, String>,
    max_value: usize,
    bad: &mut Vec<FieldViolation>,
) {
    if map.len() > MAX_MAP_ENTRIES {
        bad.push(FieldViolation::new(
            field,
            format!("has {} entries; the limit is {MAX_MAP_ENTRIES}", map.len()),
        ));
        return;
    }
    for (k, v) in map {
        let valid_key = !k.is_empty()
            && k.chars().count() <= MAX_KEY_CHARS
            && k.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '/'));
        if !valid_key {
            bad.push(FieldViolation::new(
                format!("{field}[{k}]"),
                format!(
                    "key must be 1 to {MAX_KEY_CHARS} characters of letters, digits, '_', '-', '.' or '/'"
                ),
            ));
        }
        if v.contains('\0') {
            bad.push(FieldViolation::new(
                format!("{field}[{k}]"),
                "value contains a NUL character",
            ));
        } else if v.len() > max_value {
            bad.push(FieldViolation::new(
                format!("{field}[{k}]"),
                format!("value is {} bytes; the limit is {max_value}", v.len()),
            ));
        }
    }
}

/// An optional free-text field: empty means absent.
pub fn optional_text(
    field: &str,
    value: &str,
    max_chars: usize,
    bad: &mut Vec<FieldViolation>,
) -> Option<String> {
    let n = value.chars().count();
    if value.contains('\0') {
        bad.push(FieldViolation::new(field, "contains a NUL character"));
    } else if n > max_chars {
        bad.push(FieldViolation::new(
            field,
            format!("is {n} characters long; the limit is {max_chars}"),
        ));
    }
    (!value.is_empty()).then(|| value.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Every state, open or not, within the limit or past it: what a page
    /// does, decided without a store.
    #[test]
    fn a_page_grows_a_job_that_has_not_ended_within_its_limit() {
        use crate::domain::JobState;
        let page = |n: usize, close: bool| ItemPage {
            items: vec!["x".into(); n],
            request_id: None,
            close,
        };
        for state in JobState::ALL {
            let takes = matches!(
                state,
                JobState::Running | JobState::Pausing | JobState::Paused
            );
            for open in [false, true] {
                for close in [false, true] {
                    for n in [0, 3] {
                        let got = page(n, close).growth(state, 5, open, 8);
                        if !takes {
                            assert_eq!(got, Err(PageRefusal::TakesNoItems(state)));
                            continue;
                        }
                        let grows = got.unwrap();
                        assert_eq!((grows.first, grows.adding), (5, n as u64));
                        assert_eq!(grows.closes, close && open, "{state:?} {open} {close}");
                        assert_eq!(grows.changes(), n > 0 || (close && open));
                    }
                }
            }
            if takes {
                assert_eq!(
                    page(4, false).growth(state, 5, true, 8),
                    Err(PageRefusal::TooManyItems {
                        total: 5,
                        adding: 4,
                        limit: 8
                    })
                );
                assert!(
                    page(3, false).growth(state, 5, true, 8).is_ok(),
                    "up to the limit"
                );
            }
        }
    }

    fn valid() -> NewJob {
        NewJob {
            name: "encode".into(),
            executor: "sleep".into(),
            items: vec!["a".into(), "b".into()],
            ..Default::default()
        }
    }

    fn fields(r: Result<JobSpec, Vec<FieldViolation>>) -> Vec<String> {
        r.unwrap_err().into_iter().map(|v| v.field).collect()
    }

    #[test]
    fn echoed_input_is_cut_short() {
        let long = "é".repeat(10_000);
        let v = FieldViolation::new(format!("labels[{long}]"), format!("bad: {}", echo(&long)));
        assert_eq!(v.field.chars().count(), MAX_ECHO_CHARS + 1);
        assert!(v.field.starts_with("labels[éé") && v.field.ends_with('…'));
        assert_eq!(echo(&long).chars().count(), MAX_ECHO_CHARS + 3);
        assert!(v.description.chars().count() <= MAX_DESCRIPTION_CHARS + 1);
        let short = FieldViolation::new("labels[team]", "is required");
        assert_eq!(
            (short.field.as_str(), short.description.as_str()),
            ("labels[team]", "is required")
        );
        assert_eq!(echo("abc"), "\"abc\"");
    }

    #[test]
    fn applies_defaults() {
        let spec = JobSpec::parse(valid(), &Limits::default()).unwrap();
        assert_eq!(spec.concurrency, 1);
        assert_eq!(spec.max_attempts, 3);
        assert_eq!(spec.request_id, None);
    }

    #[test]
    fn names_every_bad_field() {
        let mut input = valid();
        input.name = "  ".into();
        input.executor = String::new();
        input.items = vec![];
        input.concurrency = 5000;
        input.max_attempts = 101;
        input.labels.insert("bad key".into(), "v".into());
        input.request_id = "x".repeat(201);
        assert_eq!(
            fields(JobSpec::parse(input, &Limits::default())),
            [
                "name",
                "executor",
                "items",
                "concurrency",
                "max_attempts",
                "labels[bad key]",
                "request_id"
            ]
        );
    }

    #[test]
    fn retry_delays_are_checked() {
        let with = |delay, max| {
            let mut input = valid();
            input.retry_delay_ms = delay;
            input.retry_delay_max_ms = max;
            JobSpec::parse(input, &Limits::default())
        };
        let spec = with(500, 0).expect("a delay alone is valid");
        assert_eq!(spec.policy.retry_delay_ms, Some(500));
        assert_eq!(spec.policy.retry_delay_max_ms, None);
        let spec = with(500, 500).expect("a cap equal to the delay is valid");
        assert_eq!(spec.policy.retry_delay_max_ms, Some(500));
        assert_eq!(with(0, 0).expect("none").policy.retry_delay_ms, None);
        let day = 24 * 3600 * 1000;
        assert_eq!(fields(with(day + 1, 0)), ["retry_delay"]);
        assert_eq!(
            fields(with(day + 1, day + 2)),
            ["retry_delay", "retry_delay_max"]
        );
        assert_eq!(fields(with(0, 1000)), ["retry_delay_max"]);
        let refused = with(2000, 1000).expect_err("a cap below the delay");
        assert_eq!(refused[0].field, "retry_delay_max");
        assert!(
            refused[0].description.contains("shorter than retry_delay"),
            "{}",
            refused[0].description
        );
    }

    #[test]
    fn enforces_item_limits() {
        let limits = Limits {
            max_items: 3,
            max_item_bytes: 4,
            ..Limits::default()
        };
        let mut input = valid();
        input.items = vec!["12345".into(), "ok".into(), "123456".into()];
        assert_eq!(
            fields(JobSpec::parse(input.clone(), &limits)),
            ["items[0]", "items[2]"]
        );
        input.items = vec!["a".into(); 4];
        let err = JobSpec::parse(input, &limits).unwrap_err();
        assert_eq!(err[0].field, "items");
        assert!(err[0].description.contains("limit is 3"));
    }

    #[test]
    fn long_names_are_refused() {
        let mut input = valid();
        input.name = "n".repeat(201);
        assert_eq!(
            fields(JobSpec::parse(input.clone(), &Limits::default())),
            ["name"]
        );
        input.name = "n".repeat(200);
        assert!(JobSpec::parse(input, &Limits::default()).is_ok());
    }

    #[test]
    fn a_job_starts_paused_only_if_asked_and_resumes_by_itself_only_then() {
        let at = chrono::Utc::now() + chrono::Duration::hours(8);
        let limits = Limits::default();
        assert_eq!(
            JobSpec::parse(valid(), &limits).unwrap().start,
            StartAs::Running
        );
        let mut paused = valid();
        paused.start_paused = true;
        assert_eq!(
            JobSpec::parse(paused.clone(), &limits).unwrap().start,
            StartAs::Paused { resume_at: None }
        );
        paused.resume_at = Some(at);
        assert_eq!(
            JobSpec::parse(paused, &limits).unwrap().start,
            StartAs::Paused {
                resume_at: Some(at)
            }
        );
        let mut alone = valid();
        alone.resume_at = Some(at);
        assert_eq!(fields(JobSpec::parse(alone, &limits)), ["resume_at"]);
    }

    #[test]
    fn a_rate_limit_spaces_the_starts_evenly_and_bad_ones_are_named() {
        let limits = Limits::default();
        let parse = |limit, period_ms| {
            let mut input = valid();
            input.rate_limit = limit;
            input.rate_period_ms = period_ms;
            JobSpec::parse(input, &limits)
        };
        assert_eq!(parse(0, 0).unwrap().policy.start_interval(), None);
        let ms = Duration::from_millis;
        assert_eq!(parse(5, 0).unwrap().policy.start_interval(), Some(ms(200)));
        assert_eq!(
            parse(300, 60_000).unwrap().policy.start_interval(),
            Some(ms(200))
        );
        assert_eq!(
            parse(1, 86_400_000).unwrap().policy.start_interval(),
            Some(Duration::from_secs(86_400))
        );
        assert_eq!(
            parse(1_000_000, 1).unwrap().policy.start_interval(),
            Some(Duration::from_nanos(1))
        );
        assert_eq!(fields(parse(0, 1_000)), ["rate_period"]);
        assert_eq!(fields(parse(1_000_001, 0)), ["rate_limit"]);
        assert_eq!(fields(parse(1, 86_400_001)), ["rate_period"]);
    }

    #[test]
    fn how_a_job_starts_is_part_of_its_fingerprint() {
        let running = JobSpec::parse(valid(), &Limits::default()).unwrap();
        let mut paused = running.clone();
        paused.start = StartAs::Paused { resume_at: None };
        let mut scheduled = running.clone();
        scheduled.start = StartAs::Paused {
            resume_at: Some(chrono::Utc::now()),
        };
        assert_ne!(running.fingerprint(), paused.fingerprint());
        assert_ne!(paused.fingerprint(), scheduled.fingerprint());
    }

    #[test]
    fn fingerprint_ignores_the_request_id_only() {
        let a = JobSpec::parse(valid(), &Limits::default()).unwrap();
        let mut b = a.clone();
        b.request_id = Some("k".into());
        assert_eq!(a.fingerprint(), b.fingerprint());
        let mut c = a.clone();
        c.items.push("c".into());
        assert_ne!(a.fingerprint(), c.fingerprint());
        // Field boundaries matter: ("ab","") differs from ("a","b").
        let mut d = a.clone();
        d.items = vec!["ab".into(), "".into()];
        let mut e = a.clone();
        e.items = vec!["a".into(), "b".into()];
        assert_ne!(d.fingerprint(), e.fingerprint());
    }
}

//! Property tests over everything that parses caller input: job requests,
//! page tokens, deadlines, the exec line protocol and token files. Nothing
//! may panic, and what is accepted keeps its invariants. (cargo fuzz needs
//! a nightly toolchain this machine does not have; these run in CI.)

use jobvisor::{
    api::{auth::Tokens, convert, limits::grpc_timeout},
    domain::{
        JobSpec, Limits, NewJob, StartAs,
        page::{ItemCursor, JobCursor},
    },
    executor::protocol::parse_line,
    pb,
};
use proptest::prelude::*;
use std::collections::BTreeMap;

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        ".{0,40}",
        "[a-z0-9_./-]{0,20}",
        Just(String::new()),
        Just("\0".to_string()),
        Just("x".repeat(300)),
    ]
}

fn map() -> impl Strategy<Value = BTreeMap<String, String>> {
    prop::collection::btree_map(text(), text(), 0..6)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(
        std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(512)
    ))]

    #[test]
    fn job_requests_are_parsed_or_refused_by_field(
        name in text(),
        executor in text(),
        items in prop::collection::vec(text(), 0..20),
        concurrency in any::<u32>(),
        max_attempts in any::<u32>(),
        params in map(),
        labels in map(),
        request_id in text(),
        timeout_ms in prop_oneof![Just(0u64), any::<u64>()],
        pause_after_failures in any::<u32>(),
        pause_on_failure_ratio in prop_oneof![Just(0.0f64), any::<f64>()],
        failure_window in prop_oneof![Just(0u32), any::<u32>()],
        retry in (prop_oneof![Just(0u64), 0..100_000_000u64, any::<u64>()],
                  prop_oneof![Just(0u64), 0..100_000_000u64, any::<u64>()]),
        start in (any::<bool>(), prop::option::of(any::<i32>())),
        rate in (prop_oneof![Just(0u32), 1..2_000_000u32, any::<u32>()],
                 prop_oneof![Just(0u64), 1..100_000_000u64, any::<u64>()]),
    ) {
        let (rate_limit, rate_period_ms) = rate;
        let (retry_delay_ms, retry_delay_max_ms) = retry;
        let (start_paused, resume_at) = start;
        let resume_at = resume_at.and_then(|s| chrono::DateTime::from_timestamp(i64::from(s), 0));
        let limits = Limits { max_items: 10, max_item_bytes: 64, ..Limits::default() };
        let input = NewJob {
            name, executor, items, concurrency, params, labels, max_attempts, request_id,
            request_scope: String::new(),
            timeout_ms, pause_after_failures, pause_on_failure_ratio, failure_window,
            retry_delay_ms, retry_delay_max_ms, start_paused, resume_at, rate_limit,
            rate_period_ms,
        };
        match JobSpec::parse(input, &limits) {
            Ok(spec) => {
                prop_assert!(!spec.name.is_empty() && spec.name.chars().count() <= 200);
                prop_assert!((1..=limits.max_concurrency).contains(&spec.concurrency));
                prop_assert!((1..=limits.max_attempts).contains(&spec.max_attempts));
                prop_assert!(!spec.items.is_empty() && spec.items.len() <= limits.max_items);
                prop_assert!(spec.items.iter().all(|i| i.len() <= limits.max_item_bytes && !i.contains('\0')));
                prop_assert_eq!(spec.fingerprint().len(), 32);
                if let Some(r) = spec.policy.pause_on_failure_ratio {
                    prop_assert!(r > 0.0 && r <= 1.0);
                }
                let (delay, max) = (spec.policy.retry_delay_ms, spec.policy.retry_delay_max_ms);
                prop_assert!(delay.is_none_or(|d| d > 0 && d <= 86_400_000));
                prop_assert!(max.is_none_or(|m| delay.is_some_and(|d| d <= m) && m <= 86_400_000));
                // A rate limit within bounds, its starts at least 1 ns apart.
                match spec.policy.start_interval() {
                    None => prop_assert!(rate_limit == 0 && rate_period_ms == 0),
                    Some(interval) => {
                        prop_assert!((1..=1_000_000).contains(&rate_limit));
                        prop_assert!(rate_period_ms <= 86_400_000);
                        prop_assert!(!interval.is_zero());
                    }
                }
                // Paused exactly when asked; a resume time only with it.
                match spec.start {
                    StartAs::Running => prop_assert!(!start_paused && resume_at.is_none()),
                    StartAs::Paused { resume_at: at } => {
                        prop_assert!(start_paused);
                        prop_assert_eq!(at, resume_at);
                    }
                }
            }
            Err(violations) => {
                prop_assert!(!violations.is_empty());
                for v in violations {
                    let known = ["name", "executor", "items", "concurrency", "max_attempts", "params",
                                 "labels", "request_id", "timeout", "pause_on_failure_ratio", "failure_window",
                                 "retry_delay", "resume_at", "rate_limit", "rate_period"];
                    prop_assert!(known.iter().any(|k| v.field.starts_with(k)), "field {}", v.field);
                    prop_assert!(!v.description.is_empty());
                }
            }
        }
    }

    #[test]
    fn list_requests_never_panic(token in text(), states in prop::collection::vec(any::<i32>(), 0..5), size in any::<u32>()) {
        let jobs = convert::job_query(pb::ListJobsRequest { page_size: size, page_token: token.clone(), states: states.clone(), labels: Default::default() });
        if let Ok(q) = jobs {
            prop_assert!((1..=1000).contains(&q.limit));
        }
        let _ = convert::item_query(pb::ListJobItemsRequest { job_id: token.clone(), page_size: size, page_token: token, states });
    }

    #[test]
    fn page_tokens_round_trip_and_garbage_is_refused(micros in 0i64..4_000_000_000_000_000, index in any::<u32>(), junk in ".{0,60}") {
        let c = JobCursor { created_at: chrono::DateTime::from_timestamp_micros(micros).unwrap(), id: jobvisor::domain::JobId::new() };
        prop_assert_eq!(JobCursor::decode(&c.encode()), Ok(c));
        let i = ItemCursor { after_index: index };
        prop_assert_eq!(ItemCursor::decode(&i.encode()), Ok(i));
        let _ = JobCursor::decode(&junk);
        let _ = ItemCursor::decode(&junk);
    }

    #[test]
    fn deadlines_and_protocol_lines_never_panic(raw in ".{0,30}") {
        let mut headers = http::HeaderMap::new();
        if let Ok(v) = http::HeaderValue::from_str(&raw) {
            headers.insert("grpc-timeout", v);
            let _ = grpc_timeout(&headers);
        }
        let _ = parse_line(&raw);
        let _ = parse_line(&format!("@progress {raw}"));
    }

    #[test]
    fn token_files_are_loaded_or_refused(json in ".{0,200}") {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), &json).unwrap();
        let _ = Tokens::load(file.path());
    }
}

//! Property tests over everything that parses caller input: job requests,
//! pages of items,
//! label selectors, Durations, page tokens, deadlines, the exec line
//! protocol, token files, and raw bytes sent as a gRPC message to the real
//! server. Nothing may panic, and what is accepted keeps its invariants.
//! (cargo fuzz needs a nightly toolchain this machine does not have; these
//! run in CI.)

use super::harness::raw_call;
use jobvisor::{
    api::{auth::Tokens, convert, limits::grpc_timeout},
    domain::{
        ItemPage, JobSpec, Limits, NewItems, NewJob, StartAs,
        page::{ItemCursor, JobCursor},
    },
    executor::protocol::parse_line,
    pb,
};
use proptest::prelude::*;
use prost::Message;
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
    fn pages_of_items_are_parsed_or_refused_by_field(
        items in prop::collection::vec(text(), 0..20),
        request_id in text(),
        close in any::<bool>(),
    ) {
        let limits = Limits { max_item_bytes: 64, ..Limits::default() };
        let input = NewItems { items: items.clone(), request_id: request_id.clone(), close };
        match ItemPage::parse(input, &limits) {
            Ok(page) => {
                prop_assert!(close || !page.items.is_empty());
                prop_assert_eq!(&page.items, &items);
                prop_assert!(page.items.iter().all(|i| i.len() <= 64 && !i.contains('\0')));
                prop_assert!(page.request_id.as_ref().is_none_or(|r| !r.is_empty() && r.chars().count() <= 200));
                prop_assert_eq!(page.fingerprint().len(), 32);
            }
            Err(bad) => {
                prop_assert!(!bad.is_empty());
                prop_assert!(bad.iter().all(|v| v.field.starts_with("items") || v.field == "request_id"), "{:?}", bad);
            }
        }
    }

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
            rate_period_ms, exclusive: false, open: false,
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

    /// A selector is refused exactly when the same map as a job's labels
    /// would be: one check, with a job's limits.
    #[test]
    fn selectors_are_checked_as_labels_are(labels in map()) {
        let mut bad = Vec::new();
        let selector = convert::selector(labels.clone().into_iter().collect(), &mut bad);
        prop_assert_eq!(&selector, &labels);
        let mut as_labels = Vec::new();
        jobvisor::domain::check_labels("labels", &labels, &mut as_labels);
        prop_assert_eq!(&bad, &as_labels);
        if bad.is_empty() {
            prop_assert!(labels.len() <= 64);
            for (k, v) in &labels {
                prop_assert!(!k.is_empty() && k.chars().count() <= 128 && !k.contains('\0'));
                prop_assert!(v.len() <= 256 && !v.contains('\0'));
            }
        }
        for v in &bad {
            prop_assert!(v.field.starts_with("labels"), "field {}", v.field);
            prop_assert!(v.field.chars().count() <= 65);
        }
        let listed = convert::job_query(pb::ListJobsRequest {
            labels: labels.into_iter().collect(),
            ..Default::default()
        });
        prop_assert_eq!(listed.is_ok(), bad.is_empty());
    }

    /// A Duration is taken exactly, in whole milliseconds, or refused
    /// naming its field: never carried over, wrapped or rounded.
    #[test]
    fn durations_are_exact_or_refused(
        seconds in prop_oneof![-2i64..100_000, any::<i64>()],
        nanos in prop_oneof![Just(0i32), (0i32..1000).prop_map(|ms| ms * 1_000_000), any::<i32>()],
    ) {
        let mut bad = Vec::new();
        let d = prost_types::Duration { seconds, nanos };
        let ms = convert::duration_ms("retry_delay", &Some(d), &mut bad);
        match bad.as_slice() {
            [] => {
                prop_assert!(seconds >= 0 && (0..1_000_000_000).contains(&nanos));
                prop_assert_eq!(nanos % 1_000_000, 0);
                prop_assert_eq!(
                    i128::from(ms),
                    i128::from(seconds) * 1000 + i128::from(nanos / 1_000_000)
                );
            }
            [v] => {
                prop_assert_eq!(v.field.as_str(), "retry_delay");
                let valid = seconds >= 0 && (0..1_000_000_000).contains(&nanos)
                    && nanos % 1_000_000 == 0
                    && seconds.checked_mul(1000).is_some();
                prop_assert!(!valid, "{d:?} refused: {}", v.description);
            }
            more => prop_assert!(false, "one field, one violation: {more:?}"),
        }
    }

    #[test]
    fn list_requests_never_panic(token in text(), states in prop::collection::vec(any::<i32>(), 0..5), size in any::<u32>()) {
        let jobs = convert::job_query(pb::ListJobsRequest { page_size: size, page_token: token.clone(), states: states.clone(), labels: Default::default(), name: String::new() });
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

/// Whether bytes decode as a method's request message.
type Decodes = fn(&[u8]) -> bool;

/// Every method of the service, with whether bytes decode as its request.
const METHODS: [(&str, Decodes); 13] = [
    ("StartJob", |b| pb::StartJobRequest::decode(b).is_ok()),
    ("GetJob", |b| pb::GetJobRequest::decode(b).is_ok()),
    ("ListJobs", |b| pb::ListJobsRequest::decode(b).is_ok()),
    ("ListJobItems", |b| {
        pb::ListJobItemsRequest::decode(b).is_ok()
    }),
    ("PauseJob", |b| pb::PauseJobRequest::decode(b).is_ok()),
    ("ResumeJob", |b| pb::ResumeJobRequest::decode(b).is_ok()),
    ("CancelJob", |b| pb::CancelJobRequest::decode(b).is_ok()),
    ("RetryFailedItems", |b| {
        pb::RetryFailedItemsRequest::decode(b).is_ok()
    }),
    ("SetJobConcurrency", |b| {
        pb::SetJobConcurrencyRequest::decode(b).is_ok()
    }),
    ("SetJobRateLimit", |b| {
        pb::SetJobRateLimitRequest::decode(b).is_ok()
    }),
    ("DeleteJob", |b| pb::DeleteJobRequest::decode(b).is_ok()),
    ("ControlJobs", |b| pb::ControlJobsRequest::decode(b).is_ok()),
    ("WatchJob", |b| pb::WatchJobRequest::decode(b).is_ok()),
];

/// Message bodies: random bytes, and real requests broken by a flipped
/// byte, a cut, or a string field that is not UTF-8.
fn frame() -> impl Strategy<Value = Vec<u8>> {
    let request = pb::StartJobRequest {
        name: "n".into(),
        executor: "sleep".into(),
        items: vec!["a".into(), "b".into()],
        labels: [("team".to_string(), "video".to_string())].into(),
        timeout: Some(prost_types::Duration {
            seconds: 1,
            nanos: 0,
        }),
        ..Default::default()
    }
    .encode_to_vec();
    let len = request.len();
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..64),
        (0..len, any::<u8>()).prop_map({
            let request = request.clone();
            move |(at, byte)| {
                let mut broken = request.clone();
                broken[at] ^= byte | 1;
                broken
            }
        }),
        (0..len).prop_map({
            let request = request.clone();
            move |at| request[..at].to_vec()
        }),
        (1u8..16, prop::collection::vec(0x80u8..=0xff, 1..8)).prop_map(|(field, bytes)| {
            let mut out = vec![field << 3 | 2, bytes.len() as u8];
            out.extend(bytes);
            out
        }),
    ]
}

/// Raw bytes sent as the message of any method to the real server: what
/// does not decode is INVALID_ARGUMENT, nothing is INTERNAL or UNKNOWN,
/// and the server serves on.
#[test]
fn raw_frames_are_refused_as_invalid_arguments_by_the_real_server() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = jobvisor::server::ServerConfig::embedded(dir.path().join("jobvisor.db"));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (channel, server) = rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(jobvisor::server::serve(
            config,
            jobvisor::executor::Registry::with_builtins(),
            listener,
            async {
                let _ = stopped.await;
            },
        ));
        let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        let channel = loop {
            match endpoint.connect().await {
                Ok(channel) => break channel,
                Err(e) if std::time::Instant::now() > deadline => panic!("no server: {e}"),
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
            }
        };
        (channel, server)
    });
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(256);
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(cases));
    runner
        .run(&(0..METHODS.len(), frame()), |(m, bytes)| {
            let (method, decodes) = METHODS[m];
            let code = code_of(rt.block_on(raw_call(&channel, method, bytes.clone())));
            prop_assert!(
                !matches!(code, tonic::Code::Internal | tonic::Code::Unknown),
                "{method} {bytes:?}: {code:?}"
            );
            if !decodes(&bytes) {
                prop_assert_eq!(code, tonic::Code::InvalidArgument, "{} {:?}", method, bytes);
            }
            Ok(())
        })
        .unwrap();
    let still = code_of(rt.block_on(raw_call(&channel, "ListJobs", Vec::new())));
    assert_eq!(still, tonic::Code::Ok, "the server serves on");
    let _ = stop.send(());
    rt.block_on(async {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(10), server).await;
    });
}

/// An answer's code (`Ok` for an answer).
fn code_of(answer: Result<(), tonic::Status>) -> tonic::Code {
    answer.err().map_or(tonic::Code::Ok, |s| s.code())
}

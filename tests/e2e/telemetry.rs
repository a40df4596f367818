//! Operability, against the real binary: OTLP traces that join the
//! caller's trace, Prometheus metrics that match the job, JSON logs that
//! carry the job id, and the liveness health service.

use jobvisor::pb::{self, job_service_client::JobServiceClient};
use jobvisor_testkit::{
    db::{TestDb, admin_url},
    process::{ServerProcess, ServerSpec, free_port},
};
use opentelemetry_proto::tonic::{
    collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
        trace_service_server::{TraceService, TraceServiceServer},
    },
    common::v1::any_value::Value,
    trace::v1::{Span, span::SpanKind, status::StatusCode},
};
use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// An OTLP trace collector that keeps every span it receives.
#[derive(Clone, Default)]
struct Collector(Arc<Mutex<Vec<Span>>>);

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.0.lock().unwrap();
        for resource in request.into_inner().resource_spans {
            for scope in resource.scope_spans {
                spans.extend(scope.spans);
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

impl Collector {
    async fn start(&self) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let service = TraceServiceServer::new(self.clone());
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        addr
    }

    fn find(&self, pred: impl Fn(&Span) -> bool) -> Option<Span> {
        self.0.lock().unwrap().iter().find(|s| pred(s)).cloned()
    }

    async fn wait_for(&self, what: &str, pred: impl Fn(&Span) -> bool) -> Span {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(span) = self.find(&pred) {
                return span;
            }
            if Instant::now() > deadline {
                let names: Vec<String> = self
                    .0
                    .lock()
                    .unwrap()
                    .iter()
                    .map(|s| s.name.clone())
                    .collect();
                panic!("no exported span {what}; got {names:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn attribute(span: &Span, key: &str) -> Option<String> {
    span.attributes.iter().find(|a| a.key == key).and_then(|a| {
        match a.value.as_ref()?.value.as_ref()? {
            Value::StringValue(s) => Some(s.clone()),
            Value::IntValue(i) => Some(i.to_string()),
            Value::BoolValue(b) => Some(b.to_string()),
            other => Some(format!("{other:?}")),
        }
    })
}

/// A fresh database and a server process on it.
pub(super) struct Server {
    process: ServerProcess,
    pub(super) addr: SocketAddr,
    database: TestDb,
    log: tempfile::NamedTempFile,
}

impl Server {
    pub(super) async fn start(args: &[&str], env: &[(&str, String)]) -> Server {
        let database = TestDb::create().await;
        let log = tempfile::NamedTempFile::new().unwrap();
        let spec = ServerSpec {
            binary: PathBuf::from(env!("CARGO_BIN_EXE_jobvisor")),
            addr: SocketAddr::from(([127, 0, 0, 1], free_port().unwrap())),
            database_url: database.url.clone(),
            args: args.iter().map(|a| a.to_string()).collect(),
            log: log.path().to_path_buf(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
            cwd: None,
        };
        let process = ServerProcess::start(&spec).await.unwrap();
        Server {
            addr: spec.addr,
            process,
            database,
            log,
        }
    }

    pub(super) async fn client(&self) -> JobServiceClient<tonic::transport::Channel> {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect()
            .await
            .unwrap();
        JobServiceClient::new(channel)
    }

    pub(super) async fn stop(mut self) -> String {
        let _ = self.process.terminate(Duration::from_secs(15)).await;
        self.database.drop_db().await;
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }
}

async fn run_job(
    client: &mut JobServiceClient<tonic::transport::Channel>,
    request: tonic::Request<pb::StartJobRequest>,
) -> pb::Job {
    let job = client.start_job(request).await.unwrap().into_inner();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = client
            .get_job(pb::GetJobRequest {
                job_id: job.id.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        if now.end_time.is_some() {
            return now;
        }
        assert!(Instant::now() < deadline, "job did not end: {now:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn sleep_job(items: u32, fail: &str) -> pb::StartJobRequest {
    pb::StartJobRequest {
        name: "telemetry".into(),
        executor: "sleep".into(),
        items: (0..items).map(|i| format!("item-{i}")).collect(),
        concurrency: 4,
        max_attempts: 2,
        params: [
            ("duration_ms".to_string(), "10".to_string()),
            ("steps".into(), "2".into()),
            ("fail_pattern".into(), fail.to_string()),
        ]
        .into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn the_server_span_joins_the_callers_trace() {
    let collector = Collector::default();
    let otlp = collector.start().await;
    let server = Server::start(
        &[],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{otlp}")),
            ("OTEL_BSP_SCHEDULE_DELAY", "100".into()),
            ("OTEL_SERVICE_NAME", "jobvisor-test".into()),
        ],
    )
    .await;
    let mut client = server.client().await;
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let parent_id = "00f067aa0ba902b7";
    let mut request = tonic::Request::new(sleep_job(3, "^$"));
    request.metadata_mut().insert(
        "traceparent",
        format!("00-{trace_id}-{parent_id}-01").parse().unwrap(),
    );
    let job = run_job(&mut client, request).await;

    let span = collector
        .wait_for("for StartJob", |s| {
            s.name == "jobvisor.v1.JobService/StartJob"
        })
        .await;
    assert_eq!(hex(&span.trace_id), trace_id, "the caller's trace");
    assert_eq!(
        hex(&span.parent_span_id),
        parent_id,
        "the caller's span is the parent"
    );
    assert_eq!(span.kind, SpanKind::Server as i32);
    assert_eq!(attribute(&span, "rpc.system.name").as_deref(), Some("grpc"));
    assert_eq!(
        attribute(&span, "rpc.method").as_deref(),
        Some("jobvisor.v1.JobService/StartJob")
    );
    assert_eq!(
        attribute(&span, "rpc.response.status_code").as_deref(),
        Some("OK")
    );
    assert_eq!(attribute(&span, "job_id").as_deref(), Some(job.id.as_str()));

    // A refused transition is the client's business: not an error span.
    let refused = client
        .pause_job(pb::PauseJobRequest {
            job_id: job.id.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
    let span = collector
        .wait_for("for PauseJob", |s| {
            s.name == "jobvisor.v1.JobService/PauseJob"
        })
        .await;
    assert_eq!(
        attribute(&span, "rpc.response.status_code").as_deref(),
        Some("FAILED_PRECONDITION")
    );
    assert_ne!(
        span.status.as_ref().map(|s| s.code),
        Some(StatusCode::Error as i32),
        "{span:?}"
    );

    // Each item attempt is a span of its own, tagged with the job.
    let item = collector
        .wait_for("for an item", |s| {
            s.name == "item" && attribute(s, "job_id").as_deref() == Some(job.id.as_str())
        })
        .await;
    assert!(attribute(&item, "index").is_some() && attribute(&item, "attempt").is_some());
    // It links to the StartJob call's span.
    assert!(
        item.links.iter().any(|l| hex(&l.trace_id) == trace_id),
        "item spans link to the start: {:?}",
        item.links
    );
    server.stop().await;
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub(super) async fn scrape(addr: SocketAddr) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut body = String::new();
    stream.read_to_string(&mut body).await.unwrap();
    body
}

/// The value of the metric line that starts with `prefix`.
pub(super) fn metric(text: &str, prefix: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no metric {prefix} in:\n{text}"))
}

/// The executors' own counters in the metrics: by executor and counter
/// name (not by job), counted for the attempts that succeeded only.
#[tokio::test]
async fn counters_are_totals_by_executor_in_the_metrics() {
    let metrics_port = free_port().unwrap();
    let listen = format!("127.0.0.1:{metrics_port}");
    let server = Server::start(&["--metrics-listen", &listen, "--allow-exec"], &[]).await;
    let mut client = server.client().await;
    // Each item counts 5 frames; item-2 counts 100 on its first attempt
    // and fails it.
    let script = r#"echo "@count frames 5"
        if [ "$JOBVISOR_ITEM" = item-2 ] && [ "$JOBVISOR_ATTEMPT" = 1 ]; then
          echo "@count frames 100"; exit 1
        fi"#;
    let request = pb::StartJobRequest {
        name: "counted".into(),
        executor: "exec".into(),
        items: (0..4).map(|i| format!("item-{i}")).collect(),
        concurrency: 2,
        max_attempts: 2,
        params: [
            ("command".to_string(), "sh".to_string()),
            (
                "args".into(),
                serde_json::to_string(&["-c", script]).unwrap(),
            ),
        ]
        .into(),
        ..Default::default()
    };
    let job = run_job(&mut client, tonic::Request::new(request)).await;
    assert_eq!(job.state, pb::JobState::Succeeded as i32);
    assert_eq!(job.counters.get("frames"), Some(&20));
    let text = scrape(SocketAddr::from(([127, 0, 0, 1], metrics_port))).await;
    let line = text
        .lines()
        .find(|l| {
            l.starts_with("jobvisor_item_counter_total{")
                && l.contains("executor=\"exec\"")
                && l.contains("counter=\"frames\"")
        })
        .unwrap_or_else(|| panic!("no counter metric in:\n{text}"));
    let value: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    assert_eq!(value, 20.0, "{line}");
    assert!(!text.contains(&job.id), "the metric has no per-job series");
    server.stop().await;
}

#[tokio::test]
async fn metrics_match_the_job_and_logs_carry_its_id() {
    let metrics_port = free_port().unwrap();
    let listen = format!("127.0.0.1:{metrics_port}");
    let server = Server::start(
        &["--metrics-listen", &listen],
        &[("JOBVISOR_LOG_FORMAT", "json".to_string())],
    )
    .await;
    let mut client = server.client().await;
    // 20 items, 2 of which fail twice (retried once, then failed).
    let job = run_job(
        &mut client,
        tonic::Request::new(sleep_job(20, "^item-1[27]$")),
    )
    .await;
    assert_eq!(job.state, pb::JobState::Failed as i32);

    let text = scrape(SocketAddr::from(([127, 0, 0, 1], metrics_port))).await;
    assert_eq!(
        metric(&text, "jobvisor_items_succeeded_total{executor=\"sleep\"}"),
        18.0
    );
    assert_eq!(
        metric(&text, "jobvisor_items_failed_total{executor=\"sleep\"}"),
        2.0
    );
    assert_eq!(
        metric(&text, "jobvisor_items_retried_total{executor=\"sleep\"}"),
        2.0
    );
    assert_eq!(
        metric(&text, "jobvisor_items_claimed_total{executor=\"sleep\"}"),
        22.0
    );
    assert_eq!(metric(&text, "jobvisor_jobs_started_total"), 1.0);
    assert_eq!(
        metric(&text, "jobvisor_jobs_finished_total{state=\"failed\"}"),
        1.0
    );
    assert_eq!(
        metric(
            &text,
            "jobvisor_item_duration_seconds_count{executor=\"sleep\"}"
        ),
        22.0
    );
    assert!(
        metric(
            &text,
            "jobvisor_store_transaction_seconds_count{kind=\"batch\"}"
        ) >= 1.0
    );
    assert!(text.contains(
        "jobvisor_rpc_requests_total{method=\"jobvisor.v1.JobService/StartJob\",code=\"OK\"} 1"
    ));

    // Liveness answers on its own service name.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", server.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let live = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "liveness".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(live.status, 1, "SERVING");

    let log = server.stop().await;
    // JSON lines; every line about the job carries its id as a field.
    let lines: Vec<serde_json::Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert!(!lines.is_empty(), "JSON log lines expected:\n{log}");
    let about_the_job: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|l| l.to_string().contains(&job.id))
        .collect();
    assert!(about_the_job.len() >= 2, "{log}");
    for line in about_the_job {
        let in_fields = line["fields"]["job_id"].as_str() == Some(job.id.as_str());
        let in_span = line["span"]["job_id"].as_str() == Some(job.id.as_str());
        assert!(in_fields || in_span, "{line}");
    }
}

/// A server exporting to `collector`, with `OTEL_PROPAGATORS` set to
/// `propagators` (unset when `None`) and `args`.
async fn traced_server(collector: &Collector, propagators: Option<&str>, args: &[&str]) -> Server {
    let otlp = collector.start().await;
    let mut env = vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{otlp}")),
        ("OTEL_BSP_SCHEDULE_DELAY", "100".into()),
    ];
    env.extend(propagators.map(|p| ("OTEL_PROPAGATORS", p.to_string())));
    Server::start(args, &env).await
}

/// Request metadata: header names and values.
type Headers = Vec<(&'static str, String)>;

/// The span of a ListJobs call made with `headers`, as exported.
async fn list_jobs_span(
    server: &Server,
    collector: &Collector,
    headers: &[(&'static str, String)],
) -> Span {
    let mut client = server.client().await;
    let mut request = tonic::Request::new(pb::ListJobsRequest::default());
    for (name, value) in headers {
        request.metadata_mut().insert(*name, value.parse().unwrap());
    }
    client.list_jobs(request).await.unwrap();
    collector
        .wait_for("for ListJobs", |s| {
            s.name == "jobvisor.v1.JobService/ListJobs"
        })
        .await
}

/// OTEL_PROPAGATORS picks the formats a call's trace context is read in:
/// B3 (one header or several) joins the caller's trace when asked for, and
/// a format not asked for (or `none`) starts a trace of its own.
#[tokio::test]
async fn calls_join_the_callers_trace_in_the_configured_format() {
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let parent_id = "00f067aa0ba902b7";
    let traceparent = ("traceparent", format!("00-{trace_id}-{parent_id}-01"));
    let b3 = ("b3", format!("{trace_id}-{parent_id}-1"));
    let b3multi = [
        ("x-b3-traceid", trace_id.to_string()),
        ("x-b3-spanid", parent_id.to_string()),
        ("x-b3-sampled", "1".to_string()),
    ];
    let cases: Vec<(&str, Headers, bool)> = vec![
        ("b3", vec![b3.clone()], true),
        ("b3multi", b3multi.to_vec(), true),
        // B3's readers take both forms, the single header first.
        ("b3multi", vec![b3.clone()], true),
        ("tracecontext,b3", vec![b3.clone()], true),
        ("b3", vec![traceparent.clone()], false),
        ("none", vec![traceparent.clone(), b3.clone()], false),
    ];
    for (propagators, headers, joins) in cases {
        let collector = Collector::default();
        let server = traced_server(&collector, Some(propagators), &[]).await;
        let span = list_jobs_span(&server, &collector, &headers).await;
        let what = format!("OTEL_PROPAGATORS={propagators} with {headers:?}");
        if joins {
            assert_eq!(hex(&span.trace_id), trace_id, "{what}: the caller's trace");
            assert_eq!(
                hex(&span.parent_span_id),
                parent_id,
                "{what}: the caller's span"
            );
        } else {
            assert_ne!(hex(&span.trace_id), trace_id, "{what}: a trace of its own");
            assert!(span.parent_span_id.is_empty(), "{what}: a root span");
        }
        server.stop().await;
    }
}

/// A propagator the server does not know stops it at start-up, with a
/// message naming the setting and the name.
#[tokio::test]
async fn an_unknown_propagator_is_refused_at_start_up() {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_jobvisor"))
        .arg("serve")
        .env("OTEL_PROPAGATORS", "tracecontext,zipkin")
        .env("JOBVISOR_LISTEN", "127.0.0.1:0")
        .env("JOBVISOR_METRICS_LISTEN", "off")
        .env("JOBVISOR_HTTP_LISTEN", "off")
        .env("DATABASE_URL", admin_url())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(20), output)
        .await
        .expect("the server should refuse to start, not serve")
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("OTEL_PROPAGATORS") && stderr.contains("\"zipkin\""),
        "{stderr}"
    );
}

/// Runs one `exec` item whose program reports what it finds in the
/// variables `shown` as its result, `[A] [B]…`.
async fn exec_result(server: &Server, shown: &[&str]) -> (pb::Job, String) {
    let script = shown
        .iter()
        .map(|v| format!("[${v}]"))
        .collect::<Vec<_>>()
        .join(" ");
    let request = pb::StartJobRequest {
        name: "child-trace".into(),
        executor: "exec".into(),
        items: vec!["one".into()],
        params: [
            ("command".to_string(), "/bin/sh".to_string()),
            (
                "args".into(),
                serde_json::json!(["-c", format!("echo \"@result {script}\"")]).to_string(),
            ),
        ]
        .into(),
        ..Default::default()
    };
    let mut client = server.client().await;
    let job = run_job(&mut client, tonic::Request::new(request)).await;
    assert_eq!(job.state, pb::JobState::Succeeded as i32, "{job:?}");
    let items = client
        .list_job_items(pb::ListJobItemsRequest {
            job_id: job.id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .items;
    (job, items[0].result.clone())
}

/// The program an item runs gets the item's trace context: the trace is
/// the item's and the parent span is the item's span, as exported, so the
/// program's own spans sit under it. In the format OTEL_PROPAGATORS names.
#[tokio::test]
async fn exec_programs_get_their_items_trace_context() {
    let collector = Collector::default();
    let server = traced_server(&collector, None, &["--allow-exec"]).await;
    let (job, result) = exec_result(&server, &["TRACEPARENT", "B3"]).await;
    let item = collector
        .wait_for("for the item", |s| {
            s.name == "item" && attribute(s, "job_id").as_deref() == Some(job.id.as_str())
        })
        .await;
    let (trace, span) = (hex(&item.trace_id), hex(&item.span_id));
    assert_eq!(result, format!("[00-{trace}-{span}-01] []"));
    server.stop().await;

    let collector = Collector::default();
    let server = traced_server(&collector, Some("b3multi,b3"), &["--allow-exec"]).await;
    let (job, result) = exec_result(
        &server,
        &[
            "X_B3_TRACEID",
            "X_B3_SPANID",
            "X_B3_SAMPLED",
            "B3",
            "TRACEPARENT",
        ],
    )
    .await;
    let item = collector
        .wait_for("for the item", |s| {
            s.name == "item" && attribute(s, "job_id").as_deref() == Some(job.id.as_str())
        })
        .await;
    let (trace, span) = (hex(&item.trace_id), hex(&item.span_id));
    assert_eq!(
        result,
        format!("[{trace}] [{span}] [1] [{trace}-{span}-1] []")
    );
    server.stop().await;
}

/// Without tracing there is no context to pass, and a program never gets
/// one the server itself inherited: it would name an unrelated trace.
#[tokio::test]
async fn exec_programs_get_no_stale_trace_context() {
    let server = Server::start(
        &["--allow-exec"],
        &[
            (
                "TRACEPARENT",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
            ),
            ("TRACESTATE", "vendor=x".into()),
        ],
    )
    .await;
    let (_, result) = exec_result(&server, &["TRACEPARENT", "TRACESTATE"]).await;
    assert_eq!(result, "[] []");
    server.stop().await;
}

/// A remote worker gets its item's trace context with the assignment: the
/// trace is the item's and the parent span the item's span, as exported.
#[tokio::test]
async fn remote_workers_get_their_items_trace_context() {
    use jobvisor::pb::{
        work_request::Kind as In, work_response::Kind as Out,
        worker_service_client::WorkerServiceClient,
    };
    let collector = Collector::default();
    let server = traced_server(&collector, None, &["--remote-executor", "remote"]).await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", server.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tx.send(pb::WorkRequest {
        kind: Some(In::Hello(pb::WorkerHello {
            worker_name: "traced".into(),
            executors: vec!["remote".into()],
            slots: 1,
            protocol_version: 1,
            ..Default::default()
        })),
    })
    .unwrap();
    let outbound =
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) });
    let mut stream = WorkerServiceClient::new(channel)
        .work(outbound)
        .await
        .unwrap()
        .into_inner();
    assert!(matches!(
        stream.message().await.unwrap().unwrap().kind,
        Some(Out::Welcome(_))
    ));
    let job = server
        .client()
        .await
        .start_job(pb::StartJobRequest {
            name: "traced-remote".into(),
            executor: "remote".into(),
            items: vec!["one".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let assignment = loop {
        match stream.message().await.unwrap().unwrap().kind {
            Some(Out::Assignments(mut batch)) => break batch.items.remove(0),
            _ => continue,
        }
    };
    tx.send(pb::WorkRequest {
        kind: Some(In::Succeeded(pb::WorkerSucceeded {
            token: assignment.token,
            result: String::new(),
            ..Default::default()
        })),
    })
    .unwrap();
    let item = collector
        .wait_for("for the item", |s| {
            s.name == "item" && attribute(s, "job_id").as_deref() == Some(job.id.as_str())
        })
        .await;
    let (trace, span) = (hex(&item.trace_id), hex(&item.span_id));
    assert_eq!(
        assignment.trace_context.get("traceparent"),
        Some(&format!("00-{trace}-{span}-01")),
        "{:?}",
        assignment.trace_context
    );
    drop(tx);
    server.stop().await;
}

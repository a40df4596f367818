//! Under load and abuse: pool exhaustion with deadlines, a stale worker's
//! writes, raw garbage on the port, oversized and malformed messages. The
//! server answers with errors or closes the connection, keeps serving,
//! and nothing stored is touched.

use super::harness::{Options, RawCodec, SECS, raw_call, spawn_app, spawn_app_with};
use jobvisor::{
    domain::JobId,
    pb::{self, JobState, PauseMode},
    store::{Batch, ClaimRequest, ItemWrite, Store, WriteKind, postgres::PgStore},
};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Code;

#[tokio::test]
async fn hundreds_of_calls_on_two_connections_succeed_or_fail_cleanly() {
    let app = spawn_app_with(Options {
        db_connections: 2,
        acquire_timeout: Duration::from_secs(2),
        ..Options::default()
    })
    .await;
    let job = app
        .start(app.job("sleep", 200, 4, &[("duration_ms", "20"), ("steps", "2")]))
        .await;
    let started = Instant::now();
    let calls = (0..400).map(|i| {
        let (mut client, id) = (app.client.clone(), job.id.clone());
        async move {
            let deadline = Duration::from_millis(300 + (i % 7) * 200);
            let t0 = Instant::now();
            let result = match i % 4 {
                0 => {
                    let mut r = tonic::Request::new(pb::GetJobRequest { job_id: id });
                    r.set_timeout(deadline);
                    client.get_job(r).await.map(|_| ())
                }
                1 => {
                    let mut r = tonic::Request::new(pb::ListJobsRequest::default());
                    r.set_timeout(deadline);
                    client.list_jobs(r).await.map(|_| ())
                }
                2 => {
                    let mut r = tonic::Request::new(pb::ResumeJobRequest {
                        job_id: id,
                        ..Default::default()
                    });
                    r.set_timeout(deadline);
                    client.resume_job(r).await.map(|_| ())
                }
                _ => {
                    let mut r = tonic::Request::new(pb::ListJobItemsRequest {
                        job_id: id,
                        ..Default::default()
                    });
                    r.set_timeout(deadline);
                    client.list_job_items(r).await.map(|_| ())
                }
            };
            // tonic's client enforces the deadline itself too and calls
            // its own expiry CANCELLED "Timeout expired" (other gRPC
            // clients say DEADLINE_EXCEEDED): count it as the deadline.
            let code = match result {
                Ok(()) => Code::Ok,
                Err(s) if s.code() == Code::Cancelled && s.message() == "Timeout expired" => {
                    Code::DeadlineExceeded
                }
                Err(s) => s.code(),
            };
            (code, t0.elapsed(), deadline)
        }
    });
    let results = futures::future::join_all(calls).await;
    let mut codes = std::collections::BTreeMap::new();
    for (code, took, deadline) in &results {
        let code = *code;
        *codes.entry(format!("{code:?}")).or_insert(0) += 1;
        assert!(
            matches!(code, Code::Ok | Code::DeadlineExceeded | Code::Unavailable),
            "{code:?}"
        );
        // Nobody waits past their deadline (plus scheduling slack).
        assert!(
            *took < *deadline + Duration::from_millis(500),
            "{took:?} > {deadline:?}"
        );
    }
    println!("400 calls in {:?}: {codes:?}", started.elapsed());
    // The server then serves normally and the job finishes.
    let done = app.wait_for(&job.id, JobState::Succeeded, SECS(30)).await;
    assert_eq!(done.counts.unwrap().succeeded, 200);
    app.get(&job.id).await;
    app.stop().await;
}

#[tokio::test]
async fn a_stale_worker_cannot_complete_or_checkpoint_its_old_item() {
    let app = spawn_app().await;
    // A job that is PAUSED, so its supervisor claims nothing meanwhile.
    let job = app.start(app.job("gate", 3, 1, &[])).await;
    app.pause(&job.id, PauseMode::Graceful).await.unwrap();
    app.gate.open();
    app.wait_for(&job.id, JobState::Paused, SECS(5)).await;
    let id = JobId(job.id.parse().unwrap());
    let finished_before = app.get(&job.id).await.counts.unwrap().succeeded;

    // Drive the store directly: claim as an "old" worker, lose the claim
    // (taken over after a restart), and a new claim under a new lease.
    let store = PgStore::from_pool(app.pg().clone());
    sqlx::query("UPDATE jobs SET state = 'running' WHERE id = $1")
        .bind(id.0)
        .execute(app.pg())
        .await
        .unwrap();
    let claim = |max| Batch {
        writes: vec![],
        claims: vec![ClaimRequest {
            job: id,
            max,
            from_index: 0,
            retries: false,
        }],
    };
    let old = store.write_batch(&claim(1)).await.unwrap().claimed[0][0].clone();
    store.release_items(id).await.unwrap();
    let new = store.write_batch(&claim(1)).await.unwrap().claimed[0][0].clone();
    assert_eq!(old.index, new.index);
    assert_ne!(old.lease, new.lease);

    let stale = |kind| ItemWrite {
        job: id,
        index: old.index,
        lease: old.lease,
        kind,
    };
    let outcome = store
        .write_batch(&Batch {
            writes: vec![
                stale(WriteKind::Checkpoint(b"stale".to_vec())),
                stale(WriteKind::succeeded()),
            ],
            claims: vec![],
        })
        .await
        .unwrap();
    assert_eq!(outcome.applied, [false, false], "the old lease is refused");
    let item = &app.items(&job.id).await[old.index as usize];
    assert_eq!(item.state, pb::ItemState::Running as i32);
    assert_ne!(item.checkpoint, b"stale");
    let after = app.get(&job.id).await.counts.unwrap();
    assert_eq!(
        after.succeeded, finished_before,
        "the stale success did not count"
    );

    // The new owner's writes go through.
    let fresh = store
        .write_batch(&Batch {
            writes: vec![ItemWrite {
                job: id,
                index: new.index,
                lease: new.lease,
                kind: WriteKind::succeeded(),
            }],
            claims: vec![],
        })
        .await
        .unwrap();
    assert_eq!(fresh.applied, [true]);
    app.stop().await;
}

/// Sends raw bytes and reads until the server closes or goes quiet.
async fn poke(addr: std::net::SocketAddr, bytes: &[u8]) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let _ = stream.write_all(bytes).await;
    let mut sink = vec![0u8; 4096];
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while let Ok(n) = stream.read(&mut sink).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
}

#[tokio::test]
async fn garbage_and_malformed_messages_leave_the_server_serving() {
    let app = spawn_app_with(Options {
        max_request_bytes: 1024 * 1024,
        ..Options::default()
    })
    .await;
    let job = app
        .start(app.job("sleep", 5, 1, &[("duration_ms", "0")]))
        .await;
    let before = app.wait_for(&job.id, JobState::Succeeded, SECS(10)).await;

    // Raw garbage, an HTTP/1 request, a truncated HTTP/2 preface, and a
    // preface followed by a truncated frame.
    poke(
        app.addr,
        b"\x00\xff garbage \x13\x37 not http at all\r\n\r\n",
    )
    .await;
    poke(app.addr, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    poke(app.addr, b"PRI * HTTP/2.0\r\n\r\nSM").await;
    poke(
        app.addr,
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x12\x04\x00\x00\x00\x00\x00\x00\x03",
    )
    .await;
    let noise = (0..64 * 1024)
        .map(|i| (i * 7 % 251) as u8)
        .collect::<Vec<u8>>();
    poke(app.addr, &noise).await;

    // An oversized request: RESOURCE_EXHAUSTED naming the limit.
    let mut big = app.job("sleep", 0, 1, &[]);
    big.items = vec!["x".repeat(60 * 1024); 40];
    let status = app.client.clone().start_job(big).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains("--max-request-bytes"),
        "{}",
        status.message()
    );

    // A well-framed gRPC call whose protobuf is garbage.
    let channel = super::harness::connect(app.addr).await;
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let path = http::uri::PathAndQuery::from_static("/jobvisor.v1.JobService/GetJob");
    let garbage: Result<tonic::Response<Vec<u8>>, tonic::Status> = grpc
        .unary(
            tonic::Request::new(vec![0xff, 0xff, 0xff, 0x0f, 0x08]),
            path,
            RawCodec,
        )
        .await;
    let status = garbage.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");

    // Still serving, and the stored job is as it was.
    let after = app.get(&job.id).await;
    assert_eq!(after, before);
    let jobs: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs")
        .fetch_one(app.pg())
        .await
        .unwrap();
    assert_eq!(jobs, 1);
    app.stop().await;
}

/// WatchJob is served apart from the generated service (each stored event
/// encoded once for all its watchers): its request is refused as every
/// other method's is, and a bad one changes nothing.
#[tokio::test]
async fn watch_job_refuses_bad_requests_as_the_other_methods_do() {
    let app = spawn_app_with(Options {
        max_request_bytes: 1024 * 1024,
        ..Options::default()
    })
    .await;
    let job = app
        .start(app.job("sleep", 3, 1, &[("duration_ms", "0")]))
        .await;
    let before = app.wait_for(&job.id, JobState::Succeeded, SECS(10)).await;
    let path = "/jobvisor.v1.JobService/WatchJob";
    let channel = super::harness::connect(app.addr).await;

    // Garbage protobuf.
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready().await.unwrap();
    let garbage = grpc
        .server_streaming(
            tonic::Request::new(vec![0xff, 0xff, 0xff, 0x0f, 0x08]),
            http::uri::PathAndQuery::from_static(path),
            RawCodec,
        )
        .await
        .map(|_| ());
    let status = garbage.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("decode"), "{}", status.message());

    // Oversized: RESOURCE_EXHAUSTED naming the limit.
    let status = app
        .client
        .clone()
        .watch_job(pb::WatchJobRequest {
            job_id: "x".repeat(2 * 1024 * 1024),
            from_sequence: 0,
            window: None,
        })
        .await
        .map(|_| ())
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains("--max-request-bytes"),
        "{}",
        status.message()
    );

    // A compressed request: no compression is accepted.
    let request = pb::WatchJobRequest {
        job_id: job.id.clone(),
        from_sequence: 0,
        window: None,
    };
    let mut frame = vec![1u8];
    frame.extend_from_slice(&(prost::Message::encoded_len(&request) as u32).to_be_bytes());
    frame.extend_from_slice(&prost::Message::encode_to_vec(&request));
    let raw = http::Request::builder()
        .method("POST")
        .uri(format!("http://{}{path}", app.addr))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("grpc-encoding", "gzip")
        .body(tonic::body::Body::new(
            String::from_utf8(frame).expect("a short frame is ASCII"),
        ))
        .unwrap();
    let mut raw_channel = channel;
    let response = tower::ServiceExt::oneshot(&mut raw_channel, raw)
        .await
        .unwrap();
    let status =
        tonic::Status::from_header_map(response.headers()).expect("a trailers-only answer");
    assert_eq!(status.code(), Code::Unimplemented, "{status:?}");
    assert!(status.message().contains("gzip"), "{}", status.message());

    // A malformed job id is named, an unknown one is not found.
    for (job_id, code) in [
        ("not-a-job-id".to_string(), Code::InvalidArgument),
        (JobId::new().to_string(), Code::NotFound),
    ] {
        let status = app
            .client
            .clone()
            .watch_job(pb::WatchJobRequest {
                job_id,
                from_sequence: 0,
                window: None,
            })
            .await
            .map(|_| ())
            .unwrap_err();
        assert_eq!(status.code(), code, "{status:?}");
    }

    // The well-formed call streams the job's history to its end.
    let events = app.watch_all(&job.id, 0, SECS(5)).await;
    assert_eq!(
        events.last().map(|e| e.sequence),
        Some(before.last_sequence)
    );
    assert_eq!(app.get(&job.id).await, before);
    app.stop().await;
}

/// Every method of the service, by path.
const METHODS: [&str; 15] = [
    "StartJob",
    "AddItems",
    "CancelItems",
    "GetJob",
    "ListJobs",
    "ListJobItems",
    "PauseJob",
    "ResumeJob",
    "CancelJob",
    "RetryFailedItems",
    "SetJobConcurrency",
    "SetJobRateLimit",
    "DeleteJob",
    "ControlJobs",
    "WatchJob",
];

/// Bytes that are not a valid protobuf message, and a string field that
/// is not UTF-8: INVALID_ARGUMENT, the caller's mistake, for every method
/// (tonic's own codec says INTERNAL).
#[tokio::test]
async fn malformed_messages_are_invalid_arguments_for_every_method() {
    let app = spawn_app().await;
    let channel = super::harness::connect(app.addr).await;
    // A varint that never ends, a length past the end, a wire type 7.
    let garbage: [&[u8]; 3] = [
        &[0xff, 0xff, 0xff, 0x0f, 0x08],
        &[0x0a, 0x7f, 0x61],
        &[0x0f],
    ];
    for method in METHODS {
        for bytes in garbage {
            let status = raw_call(&channel, method, bytes.to_vec())
                .await
                .expect_err("a malformed message is refused");
            assert_eq!(
                status.code(),
                Code::InvalidArgument,
                "{method} {bytes:?}: {status:?}"
            );
            assert!(
                status.message().contains("protobuf"),
                "{}",
                status.message()
            );
            assert_eq!(super::harness::bad_fields(&status), ["message"]);
        }
    }
    // Invalid UTF-8 in a string field: job_id, name or page_token.
    for (method, field) in [
        ("StartJob", 1u8),
        ("GetJob", 1),
        ("ListJobs", 2),
        ("PauseJob", 1),
        ("ControlJobs", 2),
        ("WatchJob", 1),
    ] {
        let bytes = vec![field << 3 | 2, 2, 0xff, 0xfe];
        let status = raw_call(&channel, method, bytes)
            .await
            .expect_err("a malformed message is refused");
        assert_eq!(status.code(), Code::InvalidArgument, "{method}: {status:?}");
        assert!(status.message().contains("UTF-8"), "{}", status.message());
    }
    let listed = app
        .client
        .clone()
        .list_jobs(pb::ListJobsRequest::default())
        .await
        .expect("still serving");
    assert!(listed.into_inner().jobs.is_empty());
    app.stop().await;
}

/// An error repeats at most a short prefix of what the caller sent: a
/// 10 KB job id made a 20 KB trailer that grpcio's client refuses, an
/// 8 MiB one a 19 MB header. Every field's value, every map key.
#[tokio::test]
async fn errors_repeat_only_a_short_prefix_of_bad_input() {
    use tonic_types::StatusExt as _;
    let app = spawn_app().await;
    let mut client = app.client.clone();
    let small = |status: &tonic::Status| {
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(
            status.message().len() < 2048,
            "message of {} bytes",
            status.message().len()
        );
        assert!(
            status.details().len() < 4096,
            "details of {} bytes",
            status.details().len()
        );
        let violations = status
            .get_details_bad_request()
            .expect("bad fields")
            .field_violations;
        assert!(!violations.is_empty() && violations.len() <= 10);
        for v in violations {
            assert!(v.field.chars().count() <= 65, "{}", v.field);
            assert!(v.description.chars().count() <= 201, "{}", v.description);
        }
    };
    for len in [10 * 1024, 8 * 1024 * 1024] {
        let id = "x".repeat(len);
        let status = client
            .get_job(pb::GetJobRequest { job_id: id.clone() })
            .await
            .unwrap_err();
        small(&status);
        assert!(
            status.message().contains("is not a UUID"),
            "{}",
            status.message()
        );
        assert!(status.message().contains('…'), "{}", status.message());
        let status = client
            .control_jobs(pb::ControlJobsRequest {
                action: pb::ControlAction::Cancel as i32,
                job_ids: vec![id.clone(); 3],
                ..Default::default()
            })
            .await
            .unwrap_err();
        small(&status);
    }
    // Long keys, and more bad entries than an error lists.
    let mut request = app.job("sleep", 1, 1, &[]);
    request.labels = (0..64)
        .map(|i| (format!("{i} {}", "k".repeat(100 * 1024)), "v".into()))
        .collect();
    request.params = [("p".repeat(1024 * 1024), "v".to_string())].into();
    let status = client.start_job(request).await.unwrap_err();
    small(&status);
    assert!(
        status.message().contains("more bad fields"),
        "{}",
        status.message()
    );
    let status = client
        .list_jobs(pb::ListJobsRequest {
            labels: [("k".repeat(1024 * 1024), "v".repeat(1024 * 1024))].into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    small(&status);
    app.stop().await;
}

/// What an HTTP/2 client sends first, then its (empty) SETTINGS frame.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const EMPTY_SETTINGS: &[u8] = &[0, 0, 0, 4, 0, 0, 0, 0, 0];

/// Reads until the server closes the connection (`true`), or `within`
/// passes with it open (`false`).
async fn closed_within(stream: &mut tokio::net::TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 4096];
    let until_closed = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(within, until_closed).await.is_ok()
}

#[tokio::test]
async fn connections_that_never_finish_the_http2_handshake_are_closed() {
    let app = spawn_app_with(Options {
        handshake_timeout: Duration::from_secs(1),
        ..Options::default()
    })
    .await;
    // Silent, half a preface, the preface without SETTINGS, the preface
    // and half a SETTINGS frame.
    let mut half_settings = PREFACE.to_vec();
    half_settings.extend_from_slice(&[0, 0, 6, 4, 0, 0, 0, 0, 0, 0, 3]);
    let mut stalled = Vec::new();
    for sent in [&b""[..], &PREFACE[..10], PREFACE, &half_settings] {
        for _ in 0..5 {
            let mut stream = tokio::net::TcpStream::connect(app.addr).await.unwrap();
            stream.write_all(sent).await.unwrap();
            stalled.push(stream);
        }
    }
    // A client that finished its handshake stays connected while idle.
    let mut finished = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    finished.write_all(PREFACE).await.unwrap();
    finished.write_all(EMPTY_SETTINGS).await.unwrap();

    for (n, stream) in stalled.iter_mut().enumerate() {
        assert!(
            closed_within(stream, Duration::from_secs(5)).await,
            "connection {n} is still open past the handshake timeout"
        );
    }
    assert!(
        !closed_within(&mut finished, Duration::from_millis(500)).await,
        "a connection that finished its handshake was closed"
    );
    // The server goes on serving.
    let job = app.start(app.job("sleep", 1, 1, &[])).await;
    app.get(&job.id).await;
}

/// A request body with no message at all, or with a message cut short,
/// is malformed input too: INVALID_ARGUMENT for every method, never
/// INTERNAL (tonic's own word for both).
#[tokio::test]
async fn requests_framed_wrong_are_invalid_arguments_for_every_method() {
    use tower::Service as _;
    let app = spawn_app().await;
    let channel = super::harness::connect(app.addr).await;
    // No message; a 5-byte prefix announcing 100 bytes, then 3.
    let bodies: [(&str, &str); 2] = [
        ("", "has no message"),
        ("\u{0}\u{0}\u{0}\u{0}\u{64}abc", "is cut short"),
    ];
    for method in METHODS {
        for (body, says) in bodies {
            let request = http::Request::builder()
                .method("POST")
                .uri(format!(
                    "http://{}/jobvisor.v1.JobService/{method}",
                    app.addr
                ))
                .header("content-type", "application/grpc")
                .header("te", "trailers")
                .body(tonic::body::Body::new(body.to_string()))
                .unwrap();
            let mut service = channel.clone();
            futures::future::poll_fn(|cx| service.poll_ready(cx))
                .await
                .unwrap();
            let response = service.call(request).await.unwrap();
            let status = tonic::Status::from_header_map(response.headers())
                .unwrap_or_else(|| panic!("{method}: a trailers-only answer"));
            assert_eq!(
                status.code(),
                tonic::Code::InvalidArgument,
                "{method} with a body that {says}: {status:?}"
            );
            assert!(status.message().contains(says), "{method}: {status:?}");
        }
    }
    // The server serves on.
    let listed = app
        .client
        .clone()
        .list_jobs(jobvisor::pb::ListJobsRequest::default())
        .await;
    assert!(listed.is_ok(), "{listed:?}");
    app.stop().await;
}

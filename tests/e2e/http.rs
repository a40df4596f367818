//! The HTTP/JSON API (`serve --http-listen`) against a real server and
//! PostgreSQL: every route as its RPC, bad input refused with the field
//! named and nothing changed, tokens and permissions, and the events
//! stream (Server-Sent Events) resumed without a gap or a repeat, shared
//! by many subscribers. The client is plain HTTP/1.1 (hyper), as curl's.

use super::harness::{Options, SECS, TestApp, spawn_app_with};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use jobvisor::{
    api::{
        auth::{Permission, Tokens, new_token},
        guard::GuardConfig,
    },
    pb::{self, JobState},
};
use serde_json::{Value, json};
use std::{collections::BTreeMap, net::SocketAddr, sync::Arc, time::Duration};
use tokio::net::TcpStream;

/// An HTTP answer: status, headers and the body as JSON (`Null` if not).
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: http::HeaderMap,
    json: Value,
}

impl Answer {
    /// The reason of the error's ErrorInfo, if any.
    fn reason(&self) -> &str {
        self.details("ErrorInfo")["reason"].as_str().unwrap_or("")
    }

    /// The fields the error's BadRequest names.
    fn bad_fields(&self) -> Vec<String> {
        self.details("BadRequest")["fieldViolations"]
            .as_array()
            .map(|v| {
                v.iter()
                    .map(|f| f["field"].as_str().unwrap().to_string())
                    .collect()
            })
            .unwrap_or_default()
    }

    fn details(&self, kind: &str) -> &Value {
        self.json["error"]["details"]
            .as_array()
            .and_then(|d| {
                d.iter().find(|d| {
                    d["@type"]
                        .as_str()
                        .is_some_and(|t| t.ends_with(&format!("google.rpc.{kind}")))
                })
            })
            .unwrap_or(&Value::Null)
    }
}

/// A client of the HTTP API at `addr`, with a bearer token or none, in
/// plaintext or TLS.
#[derive(Clone)]
struct Http {
    addr: SocketAddr,
    token: Option<String>,
    tls: Option<tokio_rustls::TlsConnector>,
}

impl Http {
    fn of(app: &TestApp) -> Http {
        Http {
            addr: app.http_addr.expect("the app serves HTTP"),
            token: None,
            tls: None,
        }
    }

    fn with_token(&self, token: &str) -> Http {
        Http {
            token: Some(token.to_string()),
            ..self.clone()
        }
    }

    /// Sends one request on a connection of its own.
    async fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<Vec<u8>>,
    ) -> http::Response<hyper::body::Incoming> {
        let tcp = TcpStream::connect(self.addr).await.unwrap();
        let mut sender = match &self.tls {
            None => {
                let (sender, connection) =
                    hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
                        .await
                        .unwrap();
                tokio::spawn(connection);
                sender
            }
            Some(tls) => {
                let name = "localhost".try_into().unwrap();
                let tls = tls.connect(name, tcp).await.unwrap();
                let (sender, connection) =
                    hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
                        .await
                        .unwrap();
                tokio::spawn(connection);
                sender
            }
        };
        let mut request = http::Request::builder()
            .method(method)
            .uri(path)
            .header("host", self.addr.to_string());
        if let Some(token) = &self.token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .unwrap();
        sender.send_request(request).await.unwrap()
    }

    async fn call(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<Vec<u8>>,
    ) -> Answer {
        let response = self.send(method, path, headers, body).await;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Answer {
            status,
            headers,
            json,
        }
    }

    async fn get(&self, path: &str) -> Answer {
        self.call("GET", path, &[], None).await
    }

    /// A POST of `body` as JSON.
    async fn post(&self, path: &str, body: Value) -> Answer {
        self.post_raw(path, body.to_string().into_bytes()).await
    }

    async fn post_raw(&self, path: &str, body: Vec<u8>) -> Answer {
        self.call(
            "POST",
            path,
            &[("content-type", "application/json")],
            Some(body),
        )
        .await
    }

    /// Opens the events stream of a job (`path` after `/v1/jobs/{id}`).
    async fn events(&self, path: &str, headers: &[(&str, &str)]) -> Events {
        let response = self.send("GET", path, headers, None).await;
        assert_eq!(response.status(), 200, "events stream refused");
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        Events {
            body: response.into_body(),
            text: String::new(),
        }
    }
}

/// One Server-Sent Event, or a comment.
#[derive(Debug, Clone, PartialEq)]
struct Event {
    /// `event:`; empty for a message.
    kind: String,
    id: Option<u64>,
    data: Value,
    comment: bool,
}

/// An events stream being read.
struct Events {
    body: hyper::body::Incoming,
    text: String,
}

impl Events {
    /// The next event (or comment); `None` when the stream ends.
    async fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(end) = self.text.find("\n\n") {
                let block: String = self.text.drain(..end + 2).collect();
                let mut event = Event {
                    kind: String::new(),
                    id: None,
                    data: Value::Null,
                    comment: false,
                };
                for line in block.lines() {
                    if let Some(comment) = line.strip_prefix(':') {
                        assert_eq!(comment.trim(), "keepalive");
                        event.comment = true;
                    } else if let Some(kind) = line.strip_prefix("event: ") {
                        event.kind = kind.to_string();
                    } else if let Some(id) = line.strip_prefix("id: ") {
                        event.id = Some(id.parse().unwrap());
                    } else if let Some(data) = line.strip_prefix("data: ") {
                        event.data = serde_json::from_str(data).unwrap();
                    }
                }
                return Some(event);
            }
            let frame = self.body.frame().await?.unwrap();
            if let Ok(data) = frame.into_data() {
                self.text.push_str(std::str::from_utf8(&data).unwrap());
            }
        }
    }

    /// The next event that is not a comment, within `within`.
    async fn next_event(&mut self, within: Duration) -> Option<Event> {
        tokio::time::timeout(within, async {
            loop {
                match self.next().await {
                    Some(e) if e.comment => continue,
                    other => return other,
                }
            }
        })
        .await
        .expect("no event in time")
    }

    /// Every event until the stream ends.
    async fn rest(&mut self, within: Duration) -> Vec<Event> {
        let mut events = Vec::new();
        tokio::time::timeout(within, async {
            while let Some(e) = self.next().await {
                if !e.comment {
                    events.push(e);
                }
            }
        })
        .await
        .expect("the events stream did not end in time");
        events
    }
}

/// Whether an event is a stored one (not the snapshot, nor progress).
fn is_stored(event: &Event) -> bool {
    event.kind.is_empty()
        && event.data.get("snapshot").is_none()
        && event.data.get("progress").is_none()
}

fn sequence(event: &Event) -> u64 {
    event.data["sequence"].as_str().unwrap().parse().unwrap()
}

async fn http_app() -> TestApp {
    spawn_app_with(Options {
        http: true,
        ..Options::default()
    })
    .await
}

fn gate_job(name: &str, items: usize, labels: Value) -> Value {
    json!({
        "name": name,
        "executor": "gate",
        "items": (0..items).map(|i| format!("item-{i}")).collect::<Vec<_>>(),
        "concurrency": 2,
        "labels": labels,
    })
}

#[tokio::test]
async fn every_route_answers_as_its_rpc_does() {
    let app = http_app().await;
    let http = Http::of(&app);

    // StartJob, then GetJob: the job in the JSON mapping.
    let started = http
        .post("/v1/jobs", gate_job("http-a", 4, json!({"team": "video"})))
        .await;
    assert_eq!(started.status, 200, "{:?}", started.json);
    let id = started.json["id"].as_str().unwrap().to_string();
    assert_eq!(started.json["state"], "JOB_STATE_RUNNING");
    assert_eq!(started.json["counts"]["total"], "4");
    let got = http.get(&format!("/v1/jobs/{id}")).await;
    assert_eq!(got.status, 200);
    assert_eq!(got.json["name"], "http-a");
    assert_eq!(got.json["labels"]["team"], "video");
    assert!(
        got.json["status"].is_object(),
        "GetJob's status: {:?}",
        got.json
    );
    // validate_only stores nothing.
    let dry = http
        .post(
            "/v1/jobs",
            json!({"name": "dry", "executor": "sleep", "items": ["a"], "validateOnly": true}),
        )
        .await;
    assert_eq!((dry.status, dry.json["id"].as_str()), (200, Some("")));

    // ListJobs by state and label, and paging.
    let other = http
        .post("/v1/jobs", gate_job("http-b", 1, json!({"team": "audio"})))
        .await;
    let other_id = other.json["id"].as_str().unwrap().to_string();
    let video = http
        .get("/v1/jobs?labels[team]=video&states=JOB_STATE_RUNNING&page_size=10")
        .await;
    assert_eq!(video.status, 200);
    let ids: Vec<&str> = video.json["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![id.as_str()]);
    let page = http.get("/v1/jobs?pageSize=1").await;
    assert_eq!(page.json["jobs"].as_array().unwrap().len(), 1);
    let token = page.json["nextPageToken"].as_str().unwrap();
    assert!(!token.is_empty());
    let next = http
        .get(&format!("/v1/jobs?pageSize=1&pageToken={token}"))
        .await;
    assert_eq!(next.status, 200);
    assert_ne!(next.json["jobs"][0]["id"], page.json["jobs"][0]["id"]);

    // ListJobItems, filtered by state.
    let items = http
        .get(&format!(
            "/v1/jobs/{id}/items?states=ITEM_STATE_PENDING&states=ITEM_STATE_RUNNING"
        ))
        .await;
    assert_eq!(items.status, 200);
    assert_eq!(items.json["items"].as_array().unwrap().len(), 4);
    assert_eq!(items.json["items"][0]["payload"], "item-0");

    // PauseJob with a reason and who asked; ResumeJob.
    let paused = http
        .call(
            "POST",
            &format!("/v1/jobs/{id}:pause"),
            &[
                ("content-type", "application/json"),
                ("x-requested-by", "alice"),
            ],
            Some(
                json!({"reason": "deploy", "mode": "PAUSE_MODE_IMMEDIATE"})
                    .to_string()
                    .into_bytes(),
            ),
        )
        .await;
    assert_eq!(paused.status, 200, "{:?}", paused.json);
    assert_eq!(paused.json["pauses"][0]["reason"], "deploy");
    assert_eq!(paused.json["pauses"][0]["requestedBy"], "alice");
    assert_eq!(paused.json["pauses"][0]["mode"], "PAUSE_MODE_IMMEDIATE");
    app.wait_for(&id, JobState::Paused, SECS(10)).await;
    let resumed = http.post(&format!("/v1/jobs/{id}:resume"), json!({})).await;
    assert_eq!(resumed.status, 200);
    assert_eq!(resumed.json["state"], "JOB_STATE_RUNNING");

    // SetJobConcurrency, SetJobRateLimit.
    let scaled = http
        .post(
            &format!("/v1/jobs/{id}:setConcurrency"),
            json!({"concurrency": 3}),
        )
        .await;
    assert_eq!(
        (scaled.status, &scaled.json["concurrency"]),
        (200, &json!(3))
    );
    let limited = http
        .post(
            &format!("/v1/jobs/{id}:setRateLimit"),
            json!({"rateLimit": 5, "ratePeriod": "2s"}),
        )
        .await;
    assert_eq!(limited.status, 200, "{:?}", limited.json);
    assert_eq!(limited.json["policy"]["rateLimit"], 5);
    assert_eq!(limited.json["policy"]["ratePeriod"], "2s");

    // CancelItems: item 3 (pending or running, by index), then an index
    // past the job's items, refused naming the field.
    let chosen = http
        .post(
            &format!("/v1/jobs/{id}:cancelItems"),
            json!({"indexes": [3], "states": ["ITEM_STATE_PENDING", "ITEM_STATE_RUNNING"],
                   "reason": "not needed"}),
        )
        .await;
    assert_eq!(chosen.status, 200, "{:?}", chosen.json);
    assert_eq!(chosen.json["cancelled"], 1);
    assert_eq!(chosen.json["job"]["counts"]["cancelled"], "1");
    let past = http
        .post(
            &format!("/v1/jobs/{id}:cancelItems"),
            json!({"range": {"first": 2, "last": 9}}),
        )
        .await;
    assert_eq!(past.status, 400, "{:?}", past.json);
    assert_eq!(past.bad_fields(), ["range"]);

    // CancelJob, then DeleteJob.
    let cancelled = http
        .post(
            &format!("/v1/jobs/{id}:cancel"),
            json!({"reason": "enough"}),
        )
        .await;
    assert_eq!(cancelled.status, 200);
    app.wait_for(&id, JobState::Cancelled, SECS(10)).await;
    let deleted = http
        .call("DELETE", &format!("/v1/jobs/{id}"), &[], None)
        .await;
    assert_eq!(deleted.status, 200, "{:?}", deleted.json);
    assert_eq!(deleted.json["job"]["id"], id.as_str());
    assert_eq!(http.get(&format!("/v1/jobs/{id}")).await.status, 404);

    // ControlJobs by label: pauses the audio job.
    let control = http
        .post(
            "/v1/jobs:control",
            json!({"action": "CONTROL_ACTION_PAUSE", "labels": {"team": "audio"}, "reason": "bulk"}),
        )
        .await;
    assert_eq!(control.status, 200, "{:?}", control.json);
    assert_eq!(control.json["outcomes"][0]["jobId"], other_id.as_str());
    assert_eq!(control.json["outcomes"][0]["errorCode"], "");

    // RunJob: starts, then answers the live one.
    let run = json!({"job": {"name": "nightly", "executor": "gate", "items": ["x"]}});
    let first = http.post("/v1/jobs:run", run.clone()).await;
    assert_eq!(first.status, 200, "{:?}", first.json);
    assert_eq!(first.json["outcome"], "RUN_OUTCOME_STARTED");
    let again = http.post("/v1/jobs:run", run).await;
    assert_eq!(again.json["outcome"], "RUN_OUTCOME_ALREADY_RUNNING");
    assert_eq!(again.json["job"]["id"], first.json["job"]["id"]);

    // AddItems to an open job, the last page closing it.
    let open = http
        .post(
            "/v1/jobs",
            json!({"name": "open", "executor": "sleep", "items": ["a"], "open": true,
                   "params": {"duration_ms": "1", "steps": "1"}}),
        )
        .await;
    assert_eq!(open.status, 200, "{:?}", open.json);
    assert_eq!(open.json["open"], true);
    let open = open.json["id"].as_str().unwrap().to_string();
    let page = json!({"items": ["b", "c"], "requestId": "page-1", "close": true});
    for _ in 0..2 {
        let added = http
            .post(&format!("/v1/jobs/{open}:addItems"), page.clone())
            .await;
        assert_eq!(added.status, 200, "{:?}", added.json);
        assert_eq!(
            (&added.json["firstIndex"], &added.json["added"]),
            (&json!(1), &json!(2))
        );
    }
    let done = app.wait_for(&open, JobState::Succeeded, SECS(10)).await;
    assert_eq!(done.counts.unwrap().total, 3);
    let late = http
        .post(
            &format!("/v1/jobs/{open}:addItems"),
            json!({"items": ["d"]}),
        )
        .await;
    assert_eq!(late.status, 409, "{:?}", late.json);
    assert_eq!(late.reason(), "JOB_TAKES_NO_ITEMS");

    // RetryFailedItems on a failed job.
    let failing = http
        .post(
            "/v1/jobs",
            json!({"name": "failing", "executor": "sleep", "items": ["a", "b"], "maxAttempts": 1,
                   "params": {"duration_ms": "1", "fail_pattern": "^b$"}}),
        )
        .await;
    let failing = failing.json["id"].as_str().unwrap().to_string();
    app.wait_for(&failing, JobState::Failed, SECS(10)).await;
    let retried = http
        .post(&format!("/v1/jobs/{failing}:retryFailedItems"), json!({}))
        .await;
    assert_eq!(retried.status, 200, "{:?}", retried.json);
    assert_eq!(retried.json["state"], "JOB_STATE_RUNNING");

    app.gate.open();
    app.stop().await;
}

#[tokio::test]
async fn bad_requests_name_what_is_wrong_and_change_nothing() {
    let app = spawn_app_with(Options {
        http: true,
        max_request_bytes: 64 * 1024,
        ..Options::default()
    })
    .await;
    let http = Http::of(&app);
    let job = app.start(app.job("gate", 3, 1, &[])).await;
    let id = job.id.clone();
    let before = app.get(&id).await;
    let pause = format!("/v1/jobs/{id}:pause");

    // Malformed JSON, a body that is not an object.
    let malformed = http.post_raw(&pause, b"{\"reason\": ".to_vec()).await;
    assert_eq!(malformed.status, 400, "{:?}", malformed.json);
    assert_eq!(malformed.json["error"]["status"], "INVALID_ARGUMENT");
    assert_eq!(malformed.bad_fields(), vec!["body"]);
    let list = http.post_raw(&pause, b"[1, 2]".to_vec()).await;
    assert_eq!(
        (list.status, list.bad_fields()),
        (400, vec!["body".to_string()])
    );
    // An unknown field, top level and nested; a value of the wrong type.
    let unknown = http
        .post(&pause, json!({"reason": "x", "graceful": true}))
        .await;
    assert_eq!(
        (unknown.status, unknown.bad_fields()),
        (400, vec!["graceful".to_string()])
    );
    let nested = http
        .post(
            "/v1/jobs:run",
            json!({"job": {"name": "n", "executr": "gate"}}),
        )
        .await;
    assert_eq!(
        (nested.status, nested.bad_fields()),
        (400, vec!["job.executr".to_string()])
    );
    let typed = http.post(&pause, json!({"mode": 1.5})).await;
    assert_eq!(
        (typed.status, typed.bad_fields()),
        (400, vec!["mode".to_string()])
    );
    // What the handlers refuse, named as over gRPC.
    let handler = http
        .post(
            &pause,
            json!({"mode": "PAUSE_MODE_IMMEDIATE", "drainTimeout": "5s"}),
        )
        .await;
    assert_eq!(
        (handler.status, handler.bad_fields()),
        (400, vec!["drain_timeout".to_string()])
    );
    // A body over the limit.
    let huge = json!({"reason": "x".repeat(100 * 1024)});
    let oversized = http.post(&pause, huge).await;
    assert_eq!(oversized.status, 413, "{:?}", oversized.json);
    assert_eq!(oversized.bad_fields(), vec!["body"]);
    // Not JSON: refused before anything is read.
    let form = http
        .call(
            "POST",
            &pause,
            &[("content-type", "application/x-www-form-urlencoded")],
            Some(b"reason=x".to_vec()),
        )
        .await;
    assert_eq!(
        (form.status, form.bad_fields()),
        (415, vec!["Content-Type".to_string()])
    );
    // The path and the body disagree.
    let clash = http.post(&pause, json!({"jobId": "somebody-else"})).await;
    assert_eq!(
        (clash.status, clash.bad_fields()),
        (400, vec!["jobId".to_string()])
    );
    // Bad ids, an unknown job, an unknown method, an unknown route, an
    // unknown query parameter.
    let bad_id = http.post("/v1/jobs/not-a-uuid:pause", json!({})).await;
    assert_eq!(
        (bad_id.status, bad_id.bad_fields()),
        (400, vec!["job_id".to_string()])
    );
    assert_eq!(http.get("/v1/jobs/42").await.status, 400);
    let undecodable = http.get("/v1/jobs/%FF").await;
    assert_eq!(
        (undecodable.status, undecodable.bad_fields()),
        (400, vec!["job_id".to_string()])
    );
    let missing = http
        .post(
            &format!("/v1/jobs/{}:pause", uuid::Uuid::new_v4()),
            json!({}),
        )
        .await;
    assert_eq!((missing.status, missing.reason()), (404, "JOB_NOT_FOUND"));
    let verb = http
        .post(&format!("/v1/jobs/{id}:explode"), json!({}))
        .await;
    assert_eq!(verb.status, 404);
    assert_eq!(http.get("/v2/jobs").await.status, 404);
    let query = http.get("/v1/jobs?colour=red").await;
    assert_eq!(
        (query.status, query.bad_fields()),
        (400, vec!["colour".to_string()])
    );
    let state = http.get("/v1/jobs?states=JOB_STATE_ASLEEP").await;
    assert_eq!(
        (state.status, state.bad_fields()),
        (400, vec!["states".to_string()])
    );
    assert_eq!(http.call("PUT", "/v1/jobs", &[], None).await.status, 405);
    // A refused transition: 409 with its reason.
    let resume_running = http
        .post(&format!("/v1/jobs/{id}:retryFailedItems"), json!({}))
        .await;
    assert_eq!(resume_running.status, 409, "{:?}", resume_running.json);
    assert_eq!(
        resume_running.json["error"]["status"],
        "FAILED_PRECONDITION"
    );
    assert_eq!(resume_running.reason(), "JOB_NOT_RETRYABLE");
    // A bad StartJob stores nothing.
    let bad_start = http
        .post(
            "/v1/jobs",
            json!({"name": "n", "executor": "nope", "items": ["a"]}),
        )
        .await;
    assert_eq!(
        (bad_start.status, bad_start.bad_fields()),
        (400, vec!["executor".to_string()])
    );

    // Nothing changed: the job is as it was, with no new event, and it is
    // the only job.
    let after = app.get(&id).await;
    assert_eq!(after.state, before.state);
    assert_eq!(after.last_sequence, before.last_sequence);
    assert!(after.pauses.is_empty());
    let jobs = http.get("/v1/jobs").await;
    assert_eq!(jobs.json["jobs"].as_array().unwrap().len(), 1);
    app.gate.open();
    app.stop().await;
}

/// A token file with a read-only, a control-only and an admin token.
fn tokens(dir: &tempfile::TempDir) -> (GuardConfig, [String; 3]) {
    let mut entries = Vec::new();
    let mut secrets = Vec::new();
    for (name, permissions) in [
        ("viewer", &[Permission::Read][..]),
        ("operator", &[Permission::Read, Permission::Control][..]),
        ("admin", &[Permission::Admin][..]),
    ] {
        let (token, entry) = new_token(name, permissions, &BTreeMap::new());
        secrets.push(token);
        entries.push(entry);
    }
    let path = dir.path().join("tokens.json");
    std::fs::write(&path, json!({ "tokens": entries }).to_string()).unwrap();
    let guard = GuardConfig {
        tokens: Some(Arc::new(Tokens::load(&path).unwrap())),
        ..GuardConfig::default()
    };
    (guard, secrets.try_into().unwrap())
}

#[tokio::test]
async fn tokens_and_permissions_are_those_of_grpc() {
    let dir = tempfile::tempdir().unwrap();
    let (guard, [viewer, operator, admin]) = tokens(&dir);
    let app = spawn_app_with(Options {
        http: true,
        guard,
        ..Options::default()
    })
    .await;
    let anonymous = Http::of(&app);
    let (viewer, operator, admin) = (
        anonymous.with_token(&viewer),
        anonymous.with_token(&operator),
        anonymous.with_token(&admin),
    );
    let started = admin
        .post("/v1/jobs", gate_job("guarded", 2, json!({})))
        .await;
    assert_eq!(started.status, 200, "{:?}", started.json);
    let id = started.json["id"].as_str().unwrap().to_string();

    // No token, a wrong one: 401 with the scheme to use.
    let none = anonymous.get("/v1/jobs").await;
    assert_eq!(none.status, 401);
    assert_eq!(none.json["error"]["status"], "UNAUTHENTICATED");
    assert_eq!(none.headers["www-authenticate"], "Bearer");
    assert_eq!(
        anonymous
            .with_token("jv_wrong")
            .get("/v1/jobs")
            .await
            .status,
        401
    );
    let none = anonymous
        .post(&format!("/v1/jobs/{id}:pause"), json!({}))
        .await;
    assert_eq!(none.status, 401);

    // Read-only: reads and the events stream, and 403 for every write.
    assert_eq!(viewer.get("/v1/jobs").await.status, 200);
    assert_eq!(viewer.get(&format!("/v1/jobs/{id}")).await.status, 200);
    assert_eq!(
        viewer.get(&format!("/v1/jobs/{id}/items")).await.status,
        200
    );
    let mut events = viewer.events(&format!("/v1/jobs/{id}/events"), &[]).await;
    let snapshot = events.next_event(SECS(5)).await.unwrap();
    assert!(snapshot.data.get("snapshot").is_some(), "{snapshot:?}");
    drop(events);
    for (path, body) in [
        ("/v1/jobs".to_string(), gate_job("no", 1, json!({}))),
        (
            "/v1/jobs:run".to_string(),
            json!({"job": gate_job("no", 1, json!({}))}),
        ),
        (
            "/v1/jobs:control".to_string(),
            json!({"action": "CONTROL_ACTION_CANCEL", "jobIds": [id]}),
        ),
        (
            format!("/v1/jobs/{id}:addItems"),
            json!({"items": ["late"]}),
        ),
        (format!("/v1/jobs/{id}:pause"), json!({})),
        (format!("/v1/jobs/{id}:resume"), json!({})),
        (format!("/v1/jobs/{id}:cancel"), json!({})),
        (
            format!("/v1/jobs/{id}:cancelItems"),
            json!({"indexes": [0]}),
        ),
        (format!("/v1/jobs/{id}:retryFailedItems"), json!({})),
        (
            format!("/v1/jobs/{id}:setConcurrency"),
            json!({"concurrency": 1}),
        ),
        (
            format!("/v1/jobs/{id}:setRateLimit"),
            json!({"rateLimit": 1}),
        ),
    ] {
        let refused = viewer.post(&path, body).await;
        assert_eq!(refused.status, 403, "{path}: {:?}", refused.json);
        assert_eq!(refused.json["error"]["status"], "PERMISSION_DENIED");
    }
    let delete = viewer
        .call("DELETE", &format!("/v1/jobs/{id}"), &[], None)
        .await;
    assert_eq!(delete.status, 403);
    // Control without start: pause yes, start no.
    assert_eq!(
        operator
            .post("/v1/jobs", gate_job("no", 1, json!({})))
            .await
            .status,
        403
    );
    let paused = operator
        .post(&format!("/v1/jobs/{id}:pause"), json!({"reason": "ops"}))
        .await;
    assert_eq!(paused.status, 200, "{:?}", paused.json);
    // Who asked is the token's name, as over gRPC.
    assert_eq!(paused.json["pauses"][0]["requestedBy"], "operator");

    // Nothing the refused calls asked for happened: one job, paused once.
    let job = admin.get(&format!("/v1/jobs/{id}")).await;
    assert_eq!(job.json["pauses"].as_array().unwrap().len(), 1);
    assert_eq!(job.json["concurrency"], 2);
    assert_eq!(
        admin.get("/v1/jobs").await.json["jobs"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    app.gate.open();
    app.stop().await;
}

#[tokio::test]
async fn events_resume_after_a_disconnect_with_no_gap_and_no_repeat() {
    let app = http_app().await;
    let http = Http::of(&app);
    let job = app
        .start(app.job(
            "sleep",
            40,
            2,
            &[("duration_ms", "100"), ("fail_pattern", "^item-(3|7|11)$")],
        ))
        .await;
    let path = format!("/v1/jobs/{}/events", job.id);

    // The first connection: the snapshot, then some stored events.
    let mut first = http.events(&path, &[]).await;
    let snapshot = first.next_event(SECS(5)).await.unwrap();
    assert!(snapshot.data.get("snapshot").is_some(), "{snapshot:?}");
    assert_eq!(snapshot.id, Some(0));
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let event = first.next_event(SECS(10)).await.unwrap();
        if is_stored(&event) {
            assert_eq!(
                event.id,
                Some(sequence(&event)),
                "a stored event's id is its sequence"
            );
            seen.push(sequence(&event));
        } else {
            // A progress message repeats where to resume.
            assert_eq!(event.id, Some(seen.last().copied().unwrap_or(0)));
        }
    }
    let last_id = seen.last().copied().unwrap();
    drop(first);

    // Meanwhile the job changes: a pause and a resume.
    app.pause(&job.id, pb::PauseMode::Immediate).await.unwrap();
    app.wait_for(&job.id, JobState::Paused, SECS(10)).await;
    app.resume(&job.id).await.unwrap();

    // Reconnect as a browser does, from the last id seen: every stored
    // event after it, once, to the end.
    let last = last_id.to_string();
    let mut second = http.events(&path, &[("last-event-id", &last)]).await;
    let rest = second.rest(SECS(30)).await;
    let end = rest.last().unwrap();
    assert_eq!(end.kind, "end", "the stream says it ended: {end:?}");
    let done = app.get(&job.id).await;
    assert_eq!(done.state, JobState::Failed as i32);
    let after: Vec<u64> = rest.iter().filter(|e| is_stored(e)).map(sequence).collect();
    seen.extend(&after);
    assert_eq!(
        seen,
        (1..=done.last_sequence).collect::<Vec<_>>(),
        "every stored event once, in order"
    );
    // The pause is there, as StateChanged events.
    assert!(
        rest.iter()
            .any(|e| e.data["stateChanged"]["to"] == "JOB_STATE_PAUSING")
    );

    // ?after= does the same; a finished job's stream ends at once.
    let half = done.last_sequence / 2;
    let mut tail = http.events(&format!("{path}?after={half}"), &[]).await;
    let tail: Vec<u64> = tail
        .rest(SECS(10))
        .await
        .iter()
        .filter(|e| is_stored(e))
        .map(sequence)
        .collect();
    assert_eq!(tail, (half + 1..=done.last_sequence).collect::<Vec<_>>());
    // A bad resume point is refused, named.
    let bad = http
        .call("GET", &path, &[("last-event-id", "yesterday")], None)
        .await;
    assert_eq!(bad.status, 400);
    assert_eq!(bad.bad_fields(), vec!["Last-Event-ID"]);
    let bad = http.get(&format!("{path}?from=3")).await;
    assert_eq!(
        (bad.status, bad.bad_fields()),
        (400, vec!["from".to_string()])
    );
    // A window that is no duration, or over a second, is refused, named;
    // one in range streams (the job has ended: the whole history at once).
    for window in ["250ms", "-1s", "2s"] {
        let bad = http.get(&format!("{path}?window={window}")).await;
        assert_eq!(
            (bad.status, bad.bad_fields()),
            (400, vec!["window".to_string()]),
            "{window}"
        );
    }
    let mut windowed = http
        .events(&format!("{path}?window=1s&after={half}"), &[])
        .await;
    assert_eq!(
        windowed
            .rest(SECS(10))
            .await
            .iter()
            .filter(|e| is_stored(e))
            .count() as u64,
        done.last_sequence - half
    );
    let missing = http
        .get(&format!("/v1/jobs/{}/events", uuid::Uuid::new_v4()))
        .await;
    assert_eq!((missing.status, missing.reason()), (404, "JOB_NOT_FOUND"));
    app.stop().await;
}

#[tokio::test]
async fn many_subscribers_get_the_same_events() {
    let app = http_app().await;
    let http = Http::of(&app);
    let job = app
        .start(app.job(
            "sleep",
            60,
            4,
            &[("duration_ms", "50"), ("fail_pattern", "^item-(5|25)$")],
        ))
        .await;
    let path = format!("/v1/jobs/{}/events", job.id);
    let mut subscribers = Vec::new();
    for _ in 0..8 {
        subscribers.push(http.events(&path, &[]).await);
    }
    let mut streams = Vec::new();
    for mut events in subscribers {
        streams.push(tokio::spawn(async move { events.rest(SECS(60)).await }));
    }
    let mut stored_of_each = Vec::new();
    let mut progress = 0;
    for stream in streams {
        let events = stream.await.unwrap();
        assert_eq!(events.last().unwrap().kind, "end");
        progress += events
            .iter()
            .filter(|e| e.data.get("progress").is_some())
            .count();
        let stored: Vec<Value> = events
            .into_iter()
            .filter(is_stored)
            .map(|e| e.data)
            .collect();
        stored_of_each.push(stored);
    }
    let done = app.get(&job.id).await;
    let first = &stored_of_each[0];
    assert_eq!(
        first
            .iter()
            .map(|e| e["sequence"].as_str().unwrap().parse::<u64>().unwrap())
            .collect::<Vec<_>>(),
        (1..=done.last_sequence).collect::<Vec<_>>()
    );
    for other in &stored_of_each[1..] {
        assert_eq!(other, first, "every subscriber gets the same events");
    }
    assert!(progress > 0, "progress came too");
    app.stop().await;
}

#[tokio::test]
async fn a_quiet_events_stream_gets_keepalive_comments() {
    let app = spawn_app_with(Options {
        http: true,
        stream_keepalive: Duration::from_millis(200),
        ..Options::default()
    })
    .await;
    let http = Http::of(&app);
    let job = app
        .start(pb::StartJobRequest {
            start_paused: true,
            ..app.job("sleep", 1, 1, &[])
        })
        .await;
    let mut events = http
        .events(&format!("/v1/jobs/{}/events", job.id), &[])
        .await;
    let comment = tokio::time::timeout(SECS(5), async {
        loop {
            if let Some(event) = events.next().await
                && event.comment
            {
                return event;
            }
        }
    })
    .await
    .expect("a keepalive comment on a paused job's stream");
    assert!(comment.comment);
    app.stop().await;
}

/// Under TLS with client certificates (mTLS), the HTTP port is served
/// with the gRPC port's certificate and CA, and the certificate names the
/// caller, as over gRPC; plaintext does not get through.
#[tokio::test]
async fn under_mtls_the_http_api_is_served_in_tls_and_the_certificate_names_the_caller() {
    use super::security::{Pki, write};
    use tokio_rustls::rustls::{
        self,
        pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    };
    let dir = tempfile::tempdir().unwrap();
    let server_ca = Pki::new("server-ca");
    let client_ca = Pki::new("client-ca");
    let (cert, key) = server_ca.leaf("jobvisor");
    let tls = jobvisor::server::TlsFiles {
        cert: write(&dir, "server.pem", &cert),
        key: write(&dir, "server.key", &key),
        client_ca: Some(write(&dir, "client-ca.pem", &client_ca.ca_pem)),
    };
    let (client_cert, client_key) = client_ca.leaf("alice");
    let client_tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(&server_ca.ca_pem))
        .identity(tonic::transport::Identity::from_pem(
            &client_cert,
            &client_key,
        ))
        .domain_name("localhost");
    let app = spawn_app_with(Options {
        http: true,
        tls: Some(tls),
        client_tls: Some(client_tls),
        ..Options::default()
    })
    .await;

    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(server_ca.ca_pem.as_bytes()) {
        roots.add(ca.unwrap()).unwrap();
    }
    let chain = CertificateDer::pem_slice_iter(client_cert.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_slice(client_key.as_bytes()).unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .unwrap();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let https = Http {
        tls: Some(tokio_rustls::TlsConnector::from(Arc::new(config))),
        ..Http::of(&app)
    };
    let started = https.post("/v1/jobs", gate_job("tls", 1, json!({}))).await;
    assert_eq!(started.status, 200, "{:?}", started.json);
    let id = started.json["id"].as_str().unwrap();
    let paused = https
        .post(&format!("/v1/jobs/{id}:pause"), json!({"reason": "tls"}))
        .await;
    assert_eq!(paused.status, 200, "{:?}", paused.json);
    let who = paused.json["pauses"][0]["requestedBy"].as_str().unwrap();
    assert!(
        who.contains("CN=alice"),
        "the certificate names the caller: {who}"
    );

    // Plaintext against the TLS port: no answer.
    let mut tcp = TcpStream::connect(app.http_addr.unwrap()).await.unwrap();
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    tcp.write_all(b"GET /v1/jobs HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(SECS(5), tcp.read_to_end(&mut answer)).await;
    assert!(
        !String::from_utf8_lossy(&answer).contains("200 OK"),
        "plaintext got through"
    );
    app.gate.open();
    app.stop().await;
}

/// A caller over its rate limit gets 429 with a Retry-After, from the
/// guard both ports share.
#[tokio::test]
async fn a_caller_over_its_rate_limit_gets_429_with_retry_after() {
    let app = spawn_app_with(Options {
        http: true,
        guard: GuardConfig {
            rate_per_second: 1,
            rate_burst: 2,
            ..GuardConfig::default()
        },
        ..Options::default()
    })
    .await;
    let http = Http::of(&app);
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(http.get("/v1/jobs").await);
    }
    let limited = statuses
        .iter()
        .find(|a| a.status == 429)
        .expect("a call over the limit is refused");
    assert_eq!(limited.json["error"]["status"], "RESOURCE_EXHAUSTED");
    assert!(
        limited.headers.contains_key("retry-after"),
        "{:?}",
        limited.headers
    );
    app.stop().await;
}

/// A scoped token sees only its team's jobs over HTTP too: another team's
/// job is not found, lists are filtered, and its jobs get its label.
#[tokio::test]
async fn a_scoped_token_sees_and_touches_only_its_teams_jobs() {
    let dir = tempfile::tempdir().unwrap();
    let mut entries = Vec::new();
    let mut secrets = Vec::new();
    for (name, scope) in [("video", "video"), ("audio", "audio")] {
        let scope = BTreeMap::from([("team".to_string(), scope.to_string())]);
        let (token, entry) = new_token(name, &[Permission::Admin], &scope);
        secrets.push(token);
        entries.push(entry);
    }
    let path = dir.path().join("tokens.json");
    std::fs::write(&path, json!({ "tokens": entries }).to_string()).unwrap();
    let app = spawn_app_with(Options {
        http: true,
        guard: GuardConfig {
            tokens: Some(Arc::new(Tokens::load(&path).unwrap())),
            ..GuardConfig::default()
        },
        ..Options::default()
    })
    .await;
    let http = Http::of(&app);
    let (video, audio) = (http.with_token(&secrets[0]), http.with_token(&secrets[1]));
    let started = video.post("/v1/jobs", gate_job("v", 1, json!({}))).await;
    assert_eq!(started.status, 200, "{:?}", started.json);
    assert_eq!(started.json["labels"]["team"], "video");
    let id = started.json["id"].as_str().unwrap();
    let hidden = audio.get(&format!("/v1/jobs/{id}")).await;
    assert_eq!((hidden.status, hidden.reason()), (404, "JOB_NOT_FOUND"));
    let pause = audio.post(&format!("/v1/jobs/{id}:pause"), json!({})).await;
    assert_eq!(pause.status, 404);
    let events = audio.get(&format!("/v1/jobs/{id}/events")).await;
    assert_eq!(events.status, 404);
    assert!(
        audio.get("/v1/jobs").await.json["jobs"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        video.get("/v1/jobs").await.json["jobs"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let job = video.get(&format!("/v1/jobs/{id}")).await;
    assert_eq!(
        job.json["pauses"],
        json!([]),
        "the refused pause changed nothing"
    );
    app.gate.open();
    app.stop().await;
}

/// A shutdown ends an open events stream with an error event (as
/// WatchJob's UNAVAILABLE), and the server stops in time.
#[tokio::test]
async fn a_shutdown_ends_the_events_streams_with_an_error_event() {
    let mut app = http_app().await;
    let http = Http::of(&app);
    let job = app.start(app.job("gate", 2, 1, &[])).await;
    let mut events = http
        .events(&format!("/v1/jobs/{}/events", job.id), &[])
        .await;
    let snapshot = events.next_event(SECS(5)).await.unwrap();
    assert!(snapshot.data.get("snapshot").is_some());
    let reader = tokio::spawn(async move { events.rest(SECS(20)).await });
    app.shutdown_server().await;
    let rest = reader.await.unwrap();
    let last = rest.last().expect("an event before the end");
    assert_eq!(last.kind, "error", "{rest:?}");
    assert_eq!(last.data["error"]["status"], "UNAVAILABLE");
    assert_eq!(last.data["error"]["code"], 503);
    app.gate.open();
    app.stop().await;
}

/// The events streams count against WatchJob's stream caps: one more than
/// `--max-watch-streams-per-caller` is refused with 429, and a place
/// freed by a closed stream is taken again.
#[tokio::test]
async fn events_streams_count_against_the_watch_stream_caps() {
    let app = spawn_app_with(Options {
        http: true,
        max_watch_streams_per_caller: 2,
        ..Options::default()
    })
    .await;
    let http = Http::of(&app);
    let job = app.start(app.job("gate", 1, 1, &[])).await;
    let path = format!("/v1/jobs/{}/events", job.id);
    let first = http.events(&path, &[]).await;
    let _second = http.events(&path, &[]).await;
    let third = http.get(&path).await;
    assert_eq!(third.status, 429, "{:?}", third.json);
    assert_eq!(third.json["error"]["status"], "RESOURCE_EXHAUSTED");
    assert!(
        third.json["error"]["message"]
            .as_str()
            .unwrap()
            .contains("--max-watch-streams-per-caller")
    );
    drop(first);
    let mut again = None;
    for _ in 0..100 {
        let response = http.send("GET", &path, &[], None).await;
        if response.status() == 200 {
            again = Some(response);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(again.is_some(), "a closed stream's place is given back");
    app.gate.open();
    app.stop().await;
}

//! The dashboard in a real browser: headless Chromium driven through
//! chromedriver's WebDriver (the W3C JSON protocol over HTTP, with a small
//! client here), against a real server with its HTTP port and a fresh
//! PostgreSQL database. The progress bar moves without a reload, pause and
//! resume from the page change the job, a bulk cancel by label, and a
//! read-only token sees no action buttons.
//!
//! Chromium and chromedriver must be installed (Debian: `apt-get install
//! chromium chromium-driver`; `.ci/run` does it), or named by `CHROMIUM`
//! and `CHROMEDRIVER`: without them these tests fail, they never skip.
//! Screenshots go to `target/tmp/dashboard/`; with
//! `JOBVISOR_UPDATE_SCREENSHOT=1`, the one of a running job also
//! replaces `docs/dashboard.png`, which the README shows.

use super::harness::{Options, SECS, TestApp, spawn_app_with};
use base64::Engine as _;
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
use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::PathBuf,
    process::Stdio,
    sync::Arc,
    time::{Duration, Instant},
};
use tokio::{net::TcpStream, process::Child, sync::Mutex};

/// One browser at a time: two Chromiums on a small machine make each
/// test's timing worse than running them in turn.
static ONE_BROWSER: Mutex<()> = Mutex::const_new(());

/// The W3C WebDriver's name of an element reference in JSON.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// One HTTP/1.1 request on a connection of its own: status, headers, body.
async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<Value>,
) -> (u16, http::HeaderMap, Bytes) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(connection);
    let mut builder = http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string());
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let body = match body {
        Some(json) => {
            builder = builder.header("content-type", "application/json");
            Bytes::from(json.to_string())
        }
        None => Bytes::new(),
    };
    let response = sender
        .send_request(builder.body(Full::new(body)).unwrap())
        .await
        .unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, headers, body)
}

fn find_program(env: &str, names: &[&str]) -> PathBuf {
    if let Ok(path) = std::env::var(env) {
        return PathBuf::from(path);
    }
    for name in names {
        for dir in std::env::var("PATH").unwrap_or_default().split(':') {
            let path = PathBuf::from(dir).join(name);
            if path.is_file() {
                return path;
            }
        }
    }
    panic!(
        "the dashboard tests need {} (or ${env} naming it): \
         apt-get install -y chromium chromium-driver",
        names.join(" or ")
    );
}

/// A headless Chromium through its own chromedriver; a test that fails
/// before [`Browser::close`] still ends both when it drops it.
struct Browser {
    driver: Child,
    /// Whether the session (and so Chromium) has been closed.
    closed: bool,
    addr: SocketAddr,
    session: String,
    /// The server's HTTP API, which paths are relative to.
    base: String,
}

impl Browser {
    async fn start(app: &TestApp) -> Browser {
        let chromium = find_program(
            "CHROMIUM",
            &["chromium", "chromium-browser", "google-chrome"],
        );
        let chromedriver = find_program("CHROMEDRIVER", &["chromedriver"]);
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let driver = tokio::process::Command::new(&chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", chromedriver.display()));
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let deadline = Instant::now() + SECS(20);
        loop {
            if TcpStream::connect(addr).await.is_ok() {
                let (status, _, body) = request(addr, "GET", "/status", &[], None).await;
                let ready: Value = serde_json::from_slice(&body).unwrap_or_default();
                if status == 200 && ready["value"]["ready"] == true {
                    break;
                }
            }
            assert!(Instant::now() < deadline, "chromedriver did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            // A confirmation dialog waits for the test to accept it.
            "unhandledPromptBehavior": "ignore",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1280,900"],
            },
        }}});
        let (status, _, body) = request(addr, "POST", "/session", &[], Some(capabilities)).await;
        let answer: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(status, 200, "new session: {answer}");
        Browser {
            driver,
            closed: false,
            addr,
            session: answer["value"]["sessionId"].as_str().unwrap().to_string(),
            base: format!("http://{}", app.http_addr.expect("the app serves HTTP")),
        }
    }

    /// A WebDriver command; its `value`, or the error.
    async fn try_command(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, Value> {
        let path = format!("/session/{}{path}", self.session);
        let (status, _, bytes) = request(self.addr, method, &path, &[], body).await;
        let answer: Value = serde_json::from_slice(&bytes).unwrap_or_default();
        match status {
            200 => Ok(answer["value"].clone()),
            _ => Err(answer["value"].clone()),
        }
    }

    async fn command(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        self.try_command(method, path, body)
            .await
            .unwrap_or_else(|e| panic!("WebDriver {method} {path}: {e}"))
    }

    /// Opens `path` of the server and waits until the page has drawn.
    async fn open(&self, path: &str) {
        let url = format!("{}{path}", self.base);
        self.command("POST", "/url", Some(json!({ "url": url })))
            .await;
        self.wait_for(
            "the page to draw",
            "return document.body.dataset.ready === '1'",
        )
        .await;
    }

    /// Runs `script` in the page (a function body) and gives its result.
    async fn js(&self, script: &str) -> Value {
        self.command(
            "POST",
            "/execute/sync",
            Some(json!({ "script": script, "args": [] })),
        )
        .await
    }

    /// Waits until `script` returns true.
    async fn wait_for(&self, what: &str, script: &str) {
        let deadline = Instant::now() + SECS(20);
        loop {
            if self.js(script).await == true {
                return;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn element(&self, css: &str) -> String {
        let deadline = Instant::now() + SECS(10);
        loop {
            let found = self
                .try_command(
                    "POST",
                    "/element",
                    Some(json!({"using": "css selector", "value": css})),
                )
                .await;
            if let Ok(found) = found {
                return found[ELEMENT]
                    .as_str()
                    .unwrap_or_else(|| panic!("{css}: {found}"))
                    .to_string();
            }
            assert!(Instant::now() < deadline, "no element {css}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn click(&self, css: &str) {
        let id = self.element(css).await;
        self.command("POST", &format!("/element/{id}/click"), Some(json!({})))
            .await;
    }

    async fn type_into(&self, css: &str, text: &str) {
        let id = self.element(css).await;
        self.command("POST", &format!("/element/{id}/clear"), Some(json!({})))
            .await;
        self.command(
            "POST",
            &format!("/element/{id}/value"),
            Some(json!({ "text": text })),
        )
        .await;
    }

    /// Accepts the confirmation dialog an action opens.
    async fn confirm(&self) {
        let deadline = Instant::now() + SECS(10);
        while self
            .try_command("POST", "/alert/accept", Some(json!({})))
            .await
            .is_err()
        {
            if Instant::now() > deadline {
                let shot = self.screenshot("no-dialog").await;
                panic!("no confirmation dialog (see {})", shot.display());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn text(&self, css: &str) -> String {
        let css = serde_json::to_string(css).unwrap();
        self.js(&format!(
            "const e = document.querySelector({css}); return e ? e.textContent : null"
        ))
        .await
        .as_str()
        .unwrap_or_default()
        .to_string()
    }

    /// Keeps a screenshot under target/tmp/dashboard/.
    async fn screenshot(&self, name: &str) -> PathBuf {
        let png = self.command("GET", "/screenshot", None).await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(png.as_str().unwrap())
            .unwrap();
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, png).unwrap();
        path
    }

    async fn close(mut self) {
        let _ = self.try_command("DELETE", "", None).await;
        self.closed = true;
        let _ = self.driver.kill().await;
    }
}

impl Drop for Browser {
    /// After a failure: chromedriver closes Chromium when its session is
    /// deleted, not when it is killed (which `kill_on_drop` then does),
    /// so the session is deleted here, blocking, in plain HTTP/1.1.
    fn drop(&mut self) {
        use std::io::{Read as _, Write as _};
        if self.closed {
            return;
        }
        let Ok(mut tcp) = std::net::TcpStream::connect_timeout(&self.addr, SECS(2)) else {
            return;
        };
        let _ = tcp.set_read_timeout(Some(SECS(10)));
        let _ = write!(
            tcp,
            "DELETE /session/{} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            self.session, self.addr
        );
        let _ = tcp.read_to_end(&mut Vec::new());
    }
}

async fn dashboard_app(guard: GuardConfig) -> TestApp {
    spawn_app_with(Options {
        http: true,
        guard,
        ..Options::default()
    })
    .await
}

fn sleep_job(app: &TestApp, name: &str, items: usize, ms: u32) -> pb::StartJobRequest {
    let mut job = app.job("sleep", items, 4, &[("duration_ms", &ms.to_string())]);
    job.name = name.into();
    job.labels = [("team".to_string(), "video".to_string())].into();
    job
}

fn gate_job(app: &TestApp, name: &str, team: &str) -> pb::StartJobRequest {
    let mut job = app.job("gate", 4, 2, &[]);
    job.name = name.into();
    job.labels = [("team".to_string(), team.to_string())].into();
    job
}

#[tokio::test]
async fn the_pages_carry_their_policy_and_me_answers_who_calls() {
    let app = dashboard_app(GuardConfig::default()).await;
    let http = app.http_addr.unwrap();
    for (path, kind) in [
        ("/", "text/html"),
        ("/jobs/0b6a4f8e-0000-4000-8000-000000000000", "text/html"),
        ("/assets/app.js", "text/javascript"),
        ("/assets/app.css", "text/css"),
    ] {
        let (status, headers, body) = request(http, "GET", path, &[], None).await;
        assert_eq!(status, 200, "{path}");
        assert!(!body.is_empty(), "{path}");
        let content_type = headers["content-type"].to_str().unwrap();
        assert!(content_type.starts_with(kind), "{path}: {content_type}");
        let csp = headers["content-security-policy"].to_str().unwrap();
        for directive in [
            "default-src 'self'",
            "script-src 'self'",
            "frame-ancestors 'none'",
        ] {
            assert!(csp.contains(directive), "{path}: {csp}");
        }
        assert_eq!(headers["x-content-type-options"], "nosniff", "{path}");
    }
    // The page loads no inline script.
    let (_, _, page) = request(http, "GET", "/", &[], None).await;
    let page = String::from_utf8(page.to_vec()).unwrap();
    assert_eq!(page.matches("<script").count(), 1, "{page}");
    assert!(page.contains(r#"<script src="/assets/app.js""#), "{page}");
    // Without tokens, anyone may do anything, and is told so.
    let (status, _, body) = request(http, "GET", "/v1/me", &[], None).await;
    assert_eq!(status, 200);
    let me: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(me["permissions"], json!(["admin"]));
    assert_eq!(me["authenticated"], false);
    // Other paths are still the API's JSON 404.
    let (status, _, body) = request(http, "GET", "/nope", &[], None).await;
    assert_eq!(status, 404);
    let error: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(error["error"]["status"], "NOT_FOUND");
    app.stop().await;
}

#[tokio::test]
async fn the_progress_bar_advances_without_a_reload() {
    let _one = ONE_BROWSER.lock().await;
    let app = dashboard_app(GuardConfig::default()).await;
    let job = app
        .start(sleep_job(&app, "thumbnails-2026-12", 300, 60))
        .await;
    app.start(gate_job(&app, "reindex-search", "search")).await;
    let browser = Browser::start(&app).await;

    // The list: the job with its bar.
    browser.open("/").await;
    let row = format!("tr[data-job='{}'] progress", job.id);
    browser.element(&row).await;

    // The job's page: the bar moves on the events stream, on the same
    // page (the marker set now survives).
    browser.open(&format!("/jobs/{}", job.id)).await;
    browser.js("window.notReloaded = true; return null").await;
    let first = browser
        .js("return document.querySelector('#progress').value")
        .await
        .as_f64()
        .unwrap();
    browser
        .wait_for(
            "the bar to advance",
            &format!(
                "const v = document.querySelector('#progress').value; \
                 return v > {first} && v >= 60"
            ),
        )
        .await;
    let shot = browser.screenshot("running-job").await;
    assert_eq!(browser.js("return window.notReloaded === true").await, true);
    assert_eq!(browser.text("#state").await, "RUNNING");
    if std::env::var_os("JOBVISOR_UPDATE_SCREENSHOT").is_some() {
        let docs = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs/dashboard.png");
        std::fs::copy(&shot, docs).unwrap();
    }

    // To the end, still without a reload.
    browser
        .wait_for(
            "the job to succeed on the page",
            "return document.querySelector('#state').textContent === 'SUCCEEDED' \
             && document.querySelector('#progress').value === 300",
        )
        .await;
    assert_eq!(browser.js("return window.notReloaded === true").await, true);
    assert_eq!(app.get(&job.id).await.state(), JobState::Succeeded);
    browser.close().await;
    app.stop().await;
}

#[tokio::test]
async fn pause_and_resume_from_the_page_change_the_job() {
    let _one = ONE_BROWSER.lock().await;
    let app = dashboard_app(GuardConfig::default()).await;
    let job = app.start(gate_job(&app, "nightly-export", "data")).await;
    let browser = Browser::start(&app).await;
    browser.open(&format!("/jobs/{}", job.id)).await;
    assert_eq!(browser.text("#state").await, "RUNNING");

    browser
        .js("document.querySelector('#pause-mode').value = 'PAUSE_MODE_IMMEDIATE'; return null")
        .await;
    browser
        .type_into("#pause-reason", "deploy from the browser")
        .await;
    browser.click("#pause").await;
    browser.confirm().await;
    let paused = app.wait_for(&job.id, JobState::Paused, SECS(10)).await;
    let record = paused.pauses.last().expect("a pause record");
    assert_eq!(record.reason, "deploy from the browser");
    assert_eq!(record.mode(), pb::PauseMode::Immediate);
    browser
        .wait_for(
            "the page to show the pause",
            "return document.querySelector('#state').textContent === 'PAUSED' \
             && document.querySelector('#pauses').textContent.includes('deploy from the browser') \
             && !document.querySelector('#resume').disabled",
        )
        .await;
    browser.screenshot("paused-job").await;

    browser.click("#resume").await;
    browser.confirm().await;
    app.wait_for(&job.id, JobState::Running, SECS(10)).await;
    browser
        .wait_for(
            "the page to show the job running again",
            "return document.querySelector('#state').textContent === 'RUNNING' \
             && document.querySelector('#outcomes').textContent.includes('RUNNING')",
        )
        .await;

    // Scale and pace from the page.
    browser.type_into("#concurrency-input", "3").await;
    browser.click("#scale").await;
    browser.confirm().await;
    app.eventually("concurrency 3", SECS(10), || async {
        app.get(&job.id).await.concurrency == 3
    })
    .await;
    browser.type_into("#rate-input", "5").await;
    browser.type_into("#period-input", "2").await;
    browser.click("#rate").await;
    browser.confirm().await;
    browser
        .wait_for(
            "the page to show both changes",
            "return document.querySelector('#stat-concurrency b').textContent === '3' \
             && document.querySelector('#events').textContent.includes('rateLimitChanged')",
        )
        .await;
    browser.close().await;
    app.stop().await;
}

/// The job page shows the executor's counters (as read, then as the
/// events stream's progress brings them) and why a skipped item was
/// skipped.
#[tokio::test]
async fn counters_and_skips_show_on_the_job_page() {
    let _one = ONE_BROWSER.lock().await;
    let app = dashboard_app(GuardConfig::default()).await;
    let script = r#"case "$JOBVISOR_ITEM" in
        done) echo "@skip output exists" ;;
        *) sleep 0.2; echo "@count frames 40" ;;
      esac"#;
    let mut request = app.job("exec", 0, 2, &[]);
    request.items = ["done", "a", "b", "c", "d", "e"].map(String::from).to_vec();
    request.params = [
        ("command".to_string(), "sh".to_string()),
        (
            "args".into(),
            serde_json::to_string(&["-c", script]).unwrap(),
        ),
    ]
    .into();
    let job = app.start(request).await;
    let browser = Browser::start(&app).await;
    browser.open(&format!("/jobs/{}", job.id)).await;
    browser
        .wait_for(
            "the counter to reach its total on the page",
            "const c = document.querySelector('#counter-frames b');              return c !== null && c.textContent === '200'",
        )
        .await;
    browser.open(&format!("/jobs/{}", job.id)).await;
    browser
        .wait_for(
            "the skipped item's reason in the items",
            "const t = document.querySelector('#items'); \
             return t !== null && t.textContent.includes('skipped: output exists')",
        )
        .await;
    assert_eq!(app.get(&job.id).await.counters.get("frames"), Some(&200));
    browser.close().await;
    app.stop().await;
}

#[tokio::test]
async fn a_bulk_cancel_by_label_cancels_those_jobs_only() {
    let _one = ONE_BROWSER.lock().await;
    let app = dashboard_app(GuardConfig::default()).await;
    let a1 = app.start(gate_job(&app, "batch-a1", "a")).await;
    let a2 = app.start(gate_job(&app, "batch-a2", "a")).await;
    let b = app.start(gate_job(&app, "batch-b", "b")).await;
    let browser = Browser::start(&app).await;
    browser.open("/").await;
    browser.type_into("#bulk-labels", "team=a").await;
    browser.click("#labels-cancel").await;
    browser.confirm().await;
    browser
        .wait_for(
            "an outcome for each job",
            "return document.querySelectorAll('#outcomes li.ok').length === 2",
        )
        .await;
    let outcomes = browser.text("#outcomes").await;
    assert!(
        outcomes.contains("batch-a1") && outcomes.contains("batch-a2"),
        "{outcomes}"
    );
    assert!(!outcomes.contains("batch-b"), "{outcomes}");
    for job in [&a1, &a2] {
        app.wait_for(&job.id, JobState::Cancelled, SECS(10)).await;
    }
    assert_eq!(app.get(&b.id).await.state(), JobState::Running);
    browser.screenshot("bulk-cancel").await;

    // The filters go into the URL: running jobs only.
    browser
        .js("document.querySelector('#filter-state').value = 'JOB_STATE_RUNNING'; return null")
        .await;
    browser.click("#filters button[type=submit]").await;
    browser
        .wait_for(
            "the filtered list",
            &format!(
                "return location.search.includes('state=JOB_STATE_RUNNING') \
                 && document.body.dataset.ready === '1' \
                 && document.querySelectorAll('#jobs tr[data-job]').length === 1 \
                 && !!document.querySelector(\"tr[data-job='{}']\")",
                b.id
            ),
        )
        .await;
    browser.close().await;
    app.stop().await;
}

#[tokio::test]
async fn a_read_only_token_sees_no_action_buttons() {
    let _one = ONE_BROWSER.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let mut entries = Vec::new();
    let mut secrets = Vec::new();
    for (name, permissions) in [
        ("viewer", &[Permission::Read][..]),
        ("ops", &[Permission::Admin][..]),
    ] {
        let (token, entry) = new_token(name, permissions, &BTreeMap::new());
        secrets.push(token);
        entries.push(entry);
    }
    let path = dir.path().join("tokens.json");
    std::fs::write(&path, json!({ "tokens": entries }).to_string()).unwrap();
    let app = dashboard_app(GuardConfig {
        tokens: Some(Arc::new(Tokens::load(&path).unwrap())),
        ..GuardConfig::default()
    })
    .await;
    let (viewer, ops) = (&secrets[0], &secrets[1]);
    let mut start = tonic::Request::new(gate_job(&app, "guarded", "ops"));
    start
        .metadata_mut()
        .insert("authorization", format!("Bearer {ops}").parse().unwrap());
    let job = app
        .client
        .clone()
        .start_job(start)
        .await
        .unwrap()
        .into_inner();
    let http = app.http_addr.unwrap();

    // The page needs no token, and carries its policy; the API does.
    let (status, headers, _) = request(http, "GET", "/", &[], None).await;
    assert_eq!(status, 200);
    let csp = headers["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains("default-src 'self'") && csp.contains("script-src 'self'"),
        "{csp}"
    );
    let (status, _, _) = request(http, "GET", "/v1/me", &[], None).await;
    assert_eq!(status, 401);
    let bearer = format!("Bearer {viewer}");
    let (status, _, body) =
        request(http, "GET", "/v1/me", &[("authorization", &bearer)], None).await;
    assert_eq!(status, 200);
    let me: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(me["name"], "viewer");
    assert_eq!(me["permissions"], json!(["read"]));
    let (status, _, _) = request(
        http,
        "POST",
        &format!("/v1/jobs/{}:pause", job.id),
        &[("authorization", &bearer)],
        Some(json!({})),
    )
    .await;
    assert_eq!(status, 403);

    // The page asks for a token, and with the viewer's shows the jobs
    // and no action.
    let browser = Browser::start(&app).await;
    let url = format!("{}/", browser.base);
    browser
        .command("POST", "/url", Some(json!({ "url": url })))
        .await;
    browser.type_into("#token-input", viewer).await;
    browser.click("#token-submit").await;
    browser
        .wait_for("the list", "return document.body.dataset.ready === '1'")
        .await;
    browser.element(&format!("tr[data-job='{}']", job.id)).await;
    let actions = "return document.querySelectorAll('button.action, input.pick, #actions').length";
    assert_eq!(browser.js(actions).await, 0);
    browser.open(&format!("/jobs/{}", job.id)).await;
    assert_eq!(browser.text("#state").await, "RUNNING");
    assert_eq!(browser.js(actions).await, 0);
    browser.screenshot("read-only").await;

    // The admin's token in the same tab: the buttons are there.
    browser
        .js(&format!(
            "sessionStorage.setItem('jobvisor.token', {}); return null",
            serde_json::to_string(ops).unwrap()
        ))
        .await;
    browser.open(&format!("/jobs/{}", job.id)).await;
    assert!(browser.js(actions).await.as_u64().unwrap() > 0);
    browser.close().await;
    app.stop().await;
}

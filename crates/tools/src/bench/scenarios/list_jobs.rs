//! `bench list-jobs`: the dashboard's jobs list with very many stored
//! jobs. The page itself is static; what it costs is its call of the HTTP
//! API, `GET /v1/jobs` (ListJobs: one keyset read of a page of job rows,
//! their counts included), made when the page opens, on Refresh and every
//! 5 s. With `--jobs` (100,000) paused one-item jobs stored, one in ten
//! labelled `team=video`, it times, on one keep-alive HTTP/1.1
//! connection, `--requests` calls each of: the first page of 50, the
//! first page filtered by state and label (as the page's filters ask), and
//! the pages after it, following the page tokens (as Next page does);
//! and a job's page's call, `GET /v1/jobs/{id}` (GetJob), for jobs spread
//! over the store. Targets: p99 under 50 ms for each list call (the dashboard
//! issue), and under 10 ms for ListJobs and GetJob (the performance
//! issue: cost that stays flat as the store grows).

use crate::bench::{Setup, SleepJob, Summary, header, met, row};
use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use jobvisor_testkit::process::free_port;
use serde::Serialize;
use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

#[derive(Debug, Clone, clap::Args)]
pub struct ListJobsOptions {
    /// Jobs stored before the list is timed.
    #[arg(long, default_value_t = 100_000)]
    pub jobs: u32,
    /// Timed calls of each kind.
    #[arg(long, default_value_t = 500)]
    pub requests: u32,
    /// StartJob calls in flight while storing the jobs.
    #[arg(long, default_value_t = 32)]
    pub in_flight: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct ListJobs {
    pub jobs: u32,
    pub store_seconds: f64,
    /// `GET /v1/jobs?page_size=50`.
    pub first_page: Summary,
    /// `…&states=JOB_STATE_PAUSED&labels[team]=video`.
    pub filtered: Summary,
    /// The pages after the first, by their page tokens.
    pub next_pages: Summary,
    /// `GET /v1/jobs/{id}` of stored jobs spread over the store.
    pub get_job: Summary,
    pub target_p99_ms: f64,
    pub met: bool,
    /// ListJobs (first and next pages) and GetJob under
    /// [`FLAT_TARGET_P99_MS`].
    pub flat_target_p99_ms: f64,
    pub flat_met: bool,
}

const TARGET_P99_MS: f64 = 50.0;
const FLAT_TARGET_P99_MS: f64 = 10.0;

impl ListJobs {
    pub fn human(&self) -> Vec<String> {
        vec![
            format!(
                "list-jobs: the jobs list (GET /v1/jobs, pages of 50) with {} stored jobs (stored in {:.1} s)",
                self.jobs, self.store_seconds
            ),
            header("call"),
            row("first page", &self.first_page),
            row("first page, by state and label", &self.filtered),
            row("next pages, by page token", &self.next_pages),
            row("a job (GetJob), across the store", &self.get_job),
            format!(
                "  target: p99 under {} ms for each list call: {}",
                self.target_p99_ms,
                met(self.met)
            ),
            format!(
                "  target: first page, next pages and GetJob p99 under {} ms: {}",
                self.flat_target_p99_ms,
                met(self.flat_met)
            ),
        ]
    }
}

pub async fn list_jobs(setup: &Setup, opts: &ListJobsOptions) -> anyhow::Result<ListJobs> {
    let http = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let listen = http.to_string();
    let env = crate::bench::Env::start_setup(setup, &["--http-listen", &listen], false).await?;
    let result = run_on(&env, setup, opts, http).await;
    env.finish().await;
    result
}

async fn run_on(
    env: &crate::bench::Env,
    setup: &Setup,
    opts: &ListJobsOptions,
    http: SocketAddr,
) -> anyhow::Result<ListJobs> {
    use futures::{StreamExt as _, TryStreamExt as _};
    let client = env.client().await?;
    setup.note(format!("storing {} paused jobs", opts.jobs));
    let job = SleepJob::new("listed", 1, 1, 0, 1);
    let started = Instant::now();
    let ids: Vec<String> = futures::stream::iter(0..opts.jobs)
        .map(|i| {
            let mut client = client.clone();
            let mut request = job.request();
            request.start_paused = true;
            let team = if i % 10 == 0 { "video" } else { "other" };
            request.labels = [("team".to_string(), team.to_string())].into();
            async move { anyhow::Ok(client.start_job(request).await?.into_inner().id) }
        })
        .buffer_unordered(opts.in_flight.max(1))
        .try_collect::<Vec<_>>()
        .await?;
    let store_seconds = started.elapsed().as_secs_f64();

    let mut api = Api::connect(http).await?;
    setup.note("timing the first page");
    let mut first = Vec::new();
    for _ in 0..opts.requests {
        first.push(api.get("/v1/jobs?page_size=50").await?.0);
    }
    setup.note("timing the filtered page");
    let mut filtered = Vec::new();
    for _ in 0..opts.requests {
        let path = "/v1/jobs?page_size=50&states=JOB_STATE_PAUSED&labels%5Bteam%5D=video";
        let (took, page) = api.get(path).await?;
        anyhow::ensure!(
            page["jobs"]
                .as_array()
                .is_some_and(|j| j.len() == 50.min(opts.jobs as usize / 10)),
            "the filtered page is short: {page}"
        );
        filtered.push(took);
    }
    setup.note("timing the next pages");
    let mut next = Vec::new();
    let mut token = String::new();
    while next.len() < opts.requests as usize {
        let path = match token.as_str() {
            "" => "/v1/jobs?page_size=50".to_string(),
            t => format!("/v1/jobs?page_size=50&page_token={}", urlencode(t)),
        };
        let (took, page) = api.get(&path).await?;
        if !token.is_empty() {
            next.push(took);
        }
        token = page["nextPageToken"].as_str().unwrap_or("").to_string();
        if token.is_empty() {
            break;
        }
    }
    setup.note("timing GetJob");
    let mut gets = Vec::new();
    for n in 0..opts.requests as usize {
        // Spread over the whole store (a prime stride), old jobs and new.
        let id = &ids[n.wrapping_mul(7_919) % ids.len()];
        let (took, job) = api.get(&format!("/v1/jobs/{id}")).await?;
        anyhow::ensure!(job["id"] == id.as_str(), "GetJob {id} answered {job}");
        gets.push(took);
    }
    let (first_page, filtered, next_pages, get_job) = (
        Summary::of(&first),
        Summary::of(&filtered),
        Summary::of(&next),
        Summary::of(&gets),
    );
    let met = [first_page, filtered, next_pages]
        .iter()
        .all(|s| s.p99_ms < TARGET_P99_MS);
    let flat_met = [first_page, next_pages, get_job]
        .iter()
        .all(|s| s.p99_ms < FLAT_TARGET_P99_MS);
    Ok(ListJobs {
        jobs: opts.jobs,
        store_seconds,
        first_page,
        filtered,
        next_pages,
        get_job,
        target_p99_ms: TARGET_P99_MS,
        met,
        flat_target_p99_ms: FLAT_TARGET_P99_MS,
        flat_met,
    })
}

/// Percent-encodes what a page token may hold beyond URL-safe characters.
fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// One keep-alive HTTP/1.1 connection to the HTTP API, as a browser tab's.
struct Api {
    addr: SocketAddr,
    sender: hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
}

impl Api {
    async fn connect(addr: SocketAddr) -> anyhow::Result<Api> {
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to the HTTP API on {addr}"))?;
        tcp.set_nodelay(true)?;
        let (sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp)).await?;
        tokio::spawn(connection);
        Ok(Api { addr, sender })
    }

    /// `GET path`: how long until the whole answer was read, and its JSON.
    async fn get(&mut self, path: &str) -> anyhow::Result<(Duration, serde_json::Value)> {
        let request = http::Request::get(path)
            .header("host", self.addr.to_string())
            .body(Empty::new())?;
        let asked = Instant::now();
        self.sender.ready().await?;
        let response = self.sender.send_request(request).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        let took = asked.elapsed();
        anyhow::ensure!(
            status.is_success(),
            "GET {path}: {status}: {}",
            String::from_utf8_lossy(&body)
        );
        Ok((took, serde_json::from_slice(&body)?))
    }
}

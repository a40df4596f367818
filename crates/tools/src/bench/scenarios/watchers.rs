//! `bench watchers`: one job watched by many WatchJob streams at once —
//! how late the events arrive, whether every stream gets every event, and
//! what the watchers cost the job's throughput.
//!
//! The job (no-op items, some of which fail on every attempt so that
//! stored events flow while it runs) is run twice, each time on a fresh
//! server and
//! database: without watchers, then with the streams open on it. Each
//! time it is started, paused at once (graceful) and, once PAUSED and the
//! streams (if any) have their snapshot, resumed; the run is ResumeJob →
//! the job's end (polled with GetJob every 20 ms), and items/s counts the
//! items that ended in that span.
//!
//! Delivery latency of a stored event = the client's clock when the
//! message is decoded − the event's `time` (`now()` of the transaction
//! that stored it), over every event on every stream. Progress messages
//! are not stored: their `time` is when the server produced them, so
//! theirs is reported apart (server send → client receipt). The client
//! records only a timestamp and a sequence per message, but it runs on the
//! same cores as the server and PostgreSQL, which the report says.
//!
//! With `--sse` the streams are the HTTP API's Server-Sent Events
//! (`GET /v1/jobs/{id}/events`, one HTTP/1.1 connection each, as a
//! browser's dashboard opens them) instead of WatchJob: the same feed,
//! plus the JSON of each message and the HTTP layer.

use crate::bench::{
    Client, Env, Setup, SleepJob, Summary, calls, connect, cpu_seconds, get_job, header,
    is_terminal, median, met, poll_job, row, system_time,
};
use anyhow::Context as _;
use jobvisor::pb::{self, job_event::Kind};
use jobvisor_testkit::process::free_port;
use serde::Serialize;
use std::time::{Duration, Instant, SystemTime};
use tokio::{sync::mpsc, task::JoinSet};

#[derive(Debug, Clone, clap::Args)]
pub struct WatchersOptions {
    #[arg(long, default_value_t = 100_000)]
    pub items: u32,
    #[arg(long, default_value_t = 64)]
    pub concurrency: u32,
    /// WatchJob streams open on the job.
    #[arg(long, default_value_t = 1000)]
    pub watchers: u32,
    /// HTTP/2 connections the streams are spread over (one connection
    /// carries a limited number of concurrent streams).
    #[arg(long, default_value_t = 10)]
    pub connections: u32,
    /// Items at non-zero multiples of this (a power of ten) fail, once and
    /// for good: stored events while the job runs. 0: none.
    #[arg(long, default_value_t = 100)]
    pub fail_every: u32,
    /// Attempts per item: the failing items fail on every one, so all but
    /// the last attempt are retried (stored events each).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub attempts: u32,
    /// The job's retry_delay (e.g. 50ms): a failed item waits this long
    /// before its first retry, twice as long before each further one.
    /// Default: retried at once.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub retry_delay: Option<std::time::Duration>,
    /// Repeat the pair of runs (without, then with the watchers), each on
    /// fresh servers, and end with a summary over them: the ratio drifts
    /// by ±15% from one pair to the next on a small machine.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub runs: u32,
    /// Watch through the HTTP API's Server-Sent Events (one HTTP/1.1
    /// connection per stream) instead of gRPC WatchJob.
    #[arg(long)]
    pub sse: bool,
    /// Each stream's window (WatchJobRequest's `window`, `?window=` for
    /// `--sse`), e.g. 250ms: the stream gets the events stored within it
    /// together. Default: the stream's own default (gRPC: the server's
    /// 20 ms; SSE: 250 ms).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub window: Option<std::time::Duration>,
}

/// The job watched: no-op items, the failing ones failing on each of
/// `--attempts` attempts.
pub fn watched_job(opts: &WatchersOptions) -> anyhow::Result<SleepJob> {
    let mut job = SleepJob::new("watchers", opts.items, opts.concurrency, 0, 1);
    if opts.fail_every > 0 {
        let zeros = (opts.fail_every as f64).log10().round() as u32;
        anyhow::ensure!(
            opts.fail_every >= 10 && 10u32.pow(zeros) == opts.fail_every,
            "--fail-every must be 0 or a power of ten (10, 100, 1000, …)"
        );
        // Non-zero multiples of 10^k: a leading non-zero digit, then k
        // zeros at the end.
        job.fail_pattern = Some(format!("^item-[1-9][0-9]*0{{{zeros}}}$"));
        job.max_attempts = opts.attempts;
        job.retry_delay = opts.retry_delay;
    }
    Ok(job)
}

/// One run of the job.
#[derive(Debug, Clone, Serialize)]
pub struct Run {
    pub watchers: u32,
    /// Items that ended between ResumeJob and the job's end.
    pub items_run: u64,
    pub run_seconds: f64,
    pub items_per_second: f64,
    /// CPU time over the run: the server's, and this client's (the
    /// streams' decoding included).
    pub server_cpu_seconds: f64,
    pub client_cpu_seconds: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Watchers {
    pub job: String,
    pub failing_items: u32,
    /// Attempts per item: each failing item fails this many times.
    pub attempts: u32,
    pub watchers: u32,
    pub connections: u32,
    /// The streams were the HTTP API's Server-Sent Events (`--sse`).
    pub sse: bool,
    /// The streams' window, when `--window` set one.
    pub window_ms: Option<f64>,
    pub without: Run,
    pub with: Run,
    /// Items/s with the watchers over items/s without.
    pub throughput_ratio: f64,
    /// Stored events: receipt − the event's stored time, every event on
    /// every stream.
    pub delivery: Summary,
    /// Progress messages: receipt − when the server produced them.
    pub progress_delivery: Summary,
    /// Stored events each stream had to deliver: from the resume to the
    /// terminal event.
    pub expected_events_per_stream: u64,
    /// Streams that got exactly those, in order with no gap, and ended.
    pub complete_streams: u32,
    /// The first problems seen on the other streams.
    pub problems: Vec<String>,
    pub cores: usize,
    pub target_p99_ms: f64,
    pub delivery_met: bool,
    pub target_ratio: f64,
    pub throughput_met: bool,
}

/// Several pairs of runs (`--runs`): each pair's throughput ratio and
/// delivery p99, their medians, and in how many pairs each target was met.
#[derive(Debug, Clone, Serialize)]
pub struct WatchersSummary {
    pub runs: usize,
    pub throughput_ratios: Vec<f64>,
    pub median_throughput_ratio: f64,
    pub throughput_met_runs: usize,
    pub delivery_p99_ms: Vec<f64>,
    pub median_delivery_p99_ms: f64,
    pub delivery_met_runs: usize,
    /// Pairs in which every stream got every stored event, in order, and
    /// ended.
    pub complete_runs: usize,
    pub target_p99_ms: f64,
    pub target_ratio: f64,
}

impl WatchersSummary {
    pub fn of(runs: &[Watchers]) -> WatchersSummary {
        let ratios: Vec<f64> = runs.iter().map(|r| r.throughput_ratio).collect();
        let p99s: Vec<f64> = runs.iter().map(|r| r.delivery.p99_ms).collect();
        WatchersSummary {
            runs: runs.len(),
            median_throughput_ratio: median(&ratios),
            throughput_met_runs: runs.iter().filter(|r| r.throughput_met).count(),
            median_delivery_p99_ms: median(&p99s),
            delivery_met_runs: runs.iter().filter(|r| r.delivery_met).count(),
            complete_runs: runs
                .iter()
                .filter(|r| r.complete_streams == r.watchers)
                .count(),
            throughput_ratios: ratios,
            delivery_p99_ms: p99s,
            target_p99_ms: runs.first().map_or(TARGET_P99_MS, |r| r.target_p99_ms),
            target_ratio: TARGET_RATIO,
        }
    }

    pub fn human(&self) -> Vec<String> {
        let list = |values: &[f64], scale: f64| {
            values
                .iter()
                .map(|v| format!("{:.1}", v * scale))
                .collect::<Vec<_>>()
                .join(", ")
        };
        vec![
            format!("watchers over {} pairs of runs:", self.runs),
            format!(
                "  throughput with watchers / without: {} % (median {:.1}%); ≥ {:.0}% in {} of {}",
                list(&self.throughput_ratios, 100.0),
                self.median_throughput_ratio * 100.0,
                self.target_ratio * 100.0,
                self.throughput_met_runs,
                self.runs
            ),
            format!(
                "  delivery p99: {} ms (median {:.1}); < {} ms in {} of {}",
                list(&self.delivery_p99_ms, 1.0),
                self.median_delivery_p99_ms,
                self.target_p99_ms,
                self.delivery_met_runs,
                self.runs
            ),
            format!(
                "  every stream complete and gap-free in {} of {}",
                self.complete_runs, self.runs
            ),
        ]
    }
}

const TARGET_P99_MS: f64 = 50.0;
/// A dashboard viewer's update delay (`--sse`): p99 under a second.
const TARGET_SSE_P99_MS: f64 = 1000.0;

fn target_p99_ms(sse: bool) -> f64 {
    if sse {
        TARGET_SSE_P99_MS
    } else {
        TARGET_P99_MS
    }
}
const TARGET_RATIO: f64 = 0.9;

impl Watchers {
    pub fn human(&self) -> Vec<String> {
        let run = |r: &Run| {
            format!(
                "{:.0} items/s ({} items in {:.2} s; CPU: server {:.1} s, client {:.1} s)",
                r.items_per_second,
                r.items_run,
                r.run_seconds,
                r.server_cpu_seconds,
                r.client_cpu_seconds
            )
        };
        let streams = match self.sse {
            true => format!(
                "{} Server-Sent Events streams (HTTP API), one HTTP/1.1 connection each",
                self.watchers
            ),
            false => format!(
                "{} WatchJob streams over {} HTTP/2 connections",
                self.watchers, self.connections
            ),
        };
        let window = match self.window_ms {
            Some(ms) => format!(", a window of {ms} ms each"),
            None => String::new(),
        };
        let mut out = vec![format!(
            "watchers: a job of {} ({} failing on each of {} attempt(s): stored events while it runs); {streams}{window}",
            self.job, self.failing_items, self.attempts
        )];
        out.push(format!("  without watchers: {}", run(&self.without)));
        out.push(format!("  with watchers:    {}", run(&self.with)));
        out.push(header("delivery (client receipt − event time)"));
        out.push(row("stored events: committed → received", &self.delivery));
        out.push(row(
            "progress (not stored): sent → received",
            &self.progress_delivery,
        ));
        out.push(format!(
            "  streams: {} of {} got all {} stored events in order, no gap, and ended{}",
            self.complete_streams,
            self.watchers,
            self.expected_events_per_stream,
            if self.problems.is_empty() {
                String::new()
            } else {
                format!("; problems: {}", self.problems.join("; "))
            }
        ));
        out.push(format!(
            "  note: the client (its {} streams), the server and PostgreSQL share this machine's {} cores",
            self.watchers, self.cores
        ));
        out.push(format!(
            "  targets: delivery p99 < {} ms: {} ({:.2} ms); throughput with watchers ≥ {:.0}% of without: {} ({:.1}%); every stream complete: {}",
            self.target_p99_ms,
            met(self.delivery_met),
            self.delivery.p99_ms,
            TARGET_RATIO * 100.0,
            met(self.throughput_met),
            self.throughput_ratio * 100.0,
            met(self.complete_streams == self.watchers)
        ));
        out
    }
}

pub async fn watchers(setup: &Setup, opts: &WatchersOptions) -> anyhow::Result<Watchers> {
    anyhow::ensure!(
        opts.watchers >= 1 && opts.connections >= 1,
        "--watchers and --connections must be at least 1"
    );
    let job = watched_job(opts)?;
    setup.note("without watchers");
    let (without, _) = one_run(setup, &job, opts, 0).await?;
    setup.note(format!("with {} watchers", opts.watchers));
    let (with, streams) = one_run(setup, &job, opts, opts.watchers).await?;

    let mut stored = Vec::new();
    let mut progress = Vec::new();
    let mut problems = Vec::new();
    let mut complete = 0;
    for (n, s) in streams.outcomes.into_iter().enumerate() {
        let problem = s.problem.or_else(|| {
            (s.terminal != Some(streams.last_seq)).then(|| {
                format!(
                    "ended at sequence {:?}, the job's terminal event is {}",
                    s.terminal, streams.last_seq
                )
            })
        });
        match problem {
            None => complete += 1,
            Some(p) if problems.len() < 5 => problems.push(format!("stream {n}: {p}")),
            Some(_) => {}
        }
        stored.extend(s.stored_ms);
        progress.extend(s.progress_ms);
    }
    let delivery = Summary::of_ms(stored);
    let ratio = with.items_per_second / without.items_per_second;
    Ok(Watchers {
        job: job.describe(),
        failing_items: failing_items(opts),
        attempts: opts.attempts,
        watchers: opts.watchers,
        connections: opts.connections,
        sse: opts.sse,
        window_ms: opts.window.map(|w| w.as_secs_f64() * 1e3),
        without,
        with,
        throughput_ratio: ratio,
        delivery_met: delivery.n > 0 && delivery.p99_ms < target_p99_ms(opts.sse),
        delivery,
        progress_delivery: Summary::of_ms(progress),
        expected_events_per_stream: streams.last_seq - streams.from_seq,
        complete_streams: complete,
        problems,
        cores: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        target_p99_ms: target_p99_ms(opts.sse),
        target_ratio: TARGET_RATIO,
        throughput_met: ratio >= TARGET_RATIO,
    })
}

fn failing_items(opts: &WatchersOptions) -> u32 {
    match opts.fail_every {
        0 => 0,
        n => opts.items.saturating_sub(1) / n,
    }
}

/// What one stream got.
#[derive(Debug, Default)]
struct StreamOutcome {
    stored_ms: Vec<f64>,
    progress_ms: Vec<f64>,
    /// The sequence of the terminal event, if it came.
    terminal: Option<u64>,
    /// The first thing wrong: a gap, an error.
    problem: Option<String>,
}

/// The streams of a run, and the sequences they had to cover.
#[derive(Debug, Default)]
struct Streams {
    outcomes: Vec<StreamOutcome>,
    /// The job's sequence when paused (the streams start after it).
    from_seq: u64,
    /// Its terminal event's.
    last_seq: u64,
}

/// The job on a fresh server, with `watchers` streams on it.
async fn one_run(
    setup: &Setup,
    job: &SleepJob,
    opts: &WatchersOptions,
    watchers: u32,
) -> anyhow::Result<(Run, Streams)> {
    // All the streams come from this one client: the server's stream
    // limits must let them all in.
    let (total, per_caller) = (
        watchers.max(4096).to_string(),
        watchers.max(1024).to_string(),
    );
    let mut args = vec![
        "--max-watch-streams".to_string(),
        total,
        "--max-watch-streams-per-caller".to_string(),
        per_caller,
    ];
    let http = match opts.sse {
        true => {
            let addr = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()?));
            args.extend(["--http-listen".to_string(), addr.to_string()]);
            Some(addr)
        }
        false => None,
    };
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let env = Env::start_setup(setup, &args, false).await?;
    let result = run_on(&env, job, opts, watchers, http).await;
    env.finish().await;
    result
}

async fn run_on(
    env: &Env,
    job: &SleepJob,
    opts: &WatchersOptions,
    watchers: u32,
    http: Option<std::net::SocketAddr>,
) -> anyhow::Result<(Run, Streams)> {
    let mut client = env.client().await?;
    let id = job.start(&mut client).await?.id;
    client
        .pause_job(pb::PauseJobRequest {
            job_id: id.clone(),
            mode: pb::PauseMode::Graceful as i32,
            reason: "bench: open the watchers first".into(),
            ..Default::default()
        })
        .await
        .context("PauseJob")?;
    let paused = calls::wait_job(&mut client, &id, Duration::from_secs(60), |j| {
        j.state == pb::JobState::Paused as i32
    })
    .await?;
    let from_seq = paused.last_sequence;

    // Open the streams, each on one of the connections, and wait until
    // every one has its snapshot.
    let mut tasks = JoinSet::new();
    if watchers > 0 {
        let mut channels = Vec::new();
        for _ in 0..opts.connections {
            channels.push(connect(env.spec.addr).await?);
        }
        let (ready_tx, mut ready_rx) = mpsc::channel::<Result<(), String>>(watchers as usize);
        for n in 0..watchers {
            let client = channels[n as usize % channels.len()].clone();
            let (id, ready) = (id.clone(), ready_tx.clone());
            let window = opts.window;
            tasks.spawn(async move {
                let mut out = StreamOutcome::default();
                let watched = match http {
                    Some(addr) => watch_sse(addr, &id, from_seq, window, ready, &mut out).await,
                    None => watch(client, &id, from_seq, window, ready, &mut out).await,
                };
                if let Err(e) = watched {
                    out.problem.get_or_insert(format!("{e:#}"));
                }
                out
            });
        }
        drop(ready_tx);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        for opened in 0..watchers {
            match tokio::time::timeout_at(deadline, ready_rx.recv()).await {
                Ok(Some(Ok(()))) => {}
                Ok(Some(Err(e))) => anyhow::bail!("a watch stream did not open: {e}"),
                Ok(None) => anyhow::bail!("the watch streams ended before opening"),
                Err(_) => anyhow::bail!(
                    "only {opened} of {watchers} watch streams had their snapshot after 120 s"
                ),
            }
        }
    }

    let ended_before = ended(&paused);
    let (server_cpu, client_cpu) = (
        cpu_seconds(env.server.pid()),
        cpu_seconds(std::process::id()),
    );
    let resumed = Instant::now();
    client
        .resume_job(pb::ResumeJobRequest {
            job_id: id.clone(),
            ..Default::default()
        })
        .await
        .context("ResumeJob")?;
    let done = poll_job(
        &mut client,
        &id,
        Duration::from_millis(20),
        Duration::from_secs(600),
        |j| is_terminal(j.state),
    )
    .await?;
    let run_seconds = resumed.elapsed().as_secs_f64();
    let run = Run {
        watchers,
        items_run: ended(&done) - ended_before,
        run_seconds,
        items_per_second: (ended(&done) - ended_before) as f64 / run_seconds,
        server_cpu_seconds: cpu_seconds(env.server.pid()) - server_cpu,
        client_cpu_seconds: cpu_seconds(std::process::id()) - client_cpu,
    };

    // The streams end with the terminal event.
    let mut streams = Streams {
        outcomes: Vec::with_capacity(watchers as usize),
        from_seq,
        last_seq: get_job(&mut client, &id).await?.last_sequence,
    };
    let collected = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(outcome) = tasks.join_next().await {
            streams
                .outcomes
                .push(outcome.context("a watch task panicked")?);
        }
        anyhow::Ok(())
    })
    .await;
    match collected {
        Ok(r) => r?,
        Err(_) => anyhow::bail!(
            "{} of {watchers} watch streams had not ended 60 s after the job did",
            tasks.len()
        ),
    }
    Ok((run, streams))
}

/// Reads one stream to its end: the snapshot (then says it is ready),
/// then every message, keeping only its latency and sequence.
async fn watch(
    mut client: Client,
    id: &str,
    from_seq: u64,
    window: Option<Duration>,
    ready: mpsc::Sender<Result<(), String>>,
    out: &mut StreamOutcome,
) -> anyhow::Result<()> {
    let opened = async {
        let mut stream = client
            .watch_job(pb::WatchJobRequest {
                job_id: id.into(),
                from_sequence: from_seq,
                window: window.and_then(|w| prost_types::Duration::try_from(w).ok()),
            })
            .await?
            .into_inner();
        let first = stream
            .message()
            .await?
            .context("the stream ended before its snapshot")?;
        anyhow::ensure!(
            matches!(first.kind, Some(Kind::Snapshot(_))),
            "the first message is not the snapshot"
        );
        anyhow::Ok(stream)
    }
    .await;
    let mut stream = match opened {
        Ok(s) => {
            let _ = ready.send(Ok(())).await;
            s
        }
        Err(e) => {
            let _ = ready.send(Err(format!("{e:#}"))).await;
            return Err(e);
        }
    };
    drop(ready);
    let mut next = from_seq + 1;
    while let Some(event) = stream.message().await? {
        let now = SystemTime::now();
        let ms = event
            .time
            .as_ref()
            .map(|t| match now.duration_since(system_time(t)) {
                Ok(d) => d.as_secs_f64() * 1000.0,
                // The event's clock ahead of ours (same machine: rounding).
                Err(e) => -e.duration().as_secs_f64() * 1000.0,
            });
        match &event.kind {
            Some(Kind::Progress(_)) => out.progress_ms.extend(ms),
            Some(Kind::Snapshot(_)) | None => {}
            Some(kind) => {
                if event.sequence != next && out.problem.is_none() {
                    out.problem = Some(format!("expected sequence {next}, got {}", event.sequence));
                }
                next = event.sequence + 1;
                out.stored_ms.extend(ms);
                if let Kind::StateChanged(c) = kind
                    && is_terminal(c.to)
                {
                    out.terminal = Some(event.sequence);
                }
            }
        }
    }
    Ok(())
}

/// [`watch`], through the HTTP API's events stream: each event's `data`
/// is a JobEvent in JSON.
async fn watch_sse(
    addr: std::net::SocketAddr,
    id: &str,
    from_seq: u64,
    window: Option<Duration>,
    ready: mpsc::Sender<Result<(), String>>,
    out: &mut StreamOutcome,
) -> anyhow::Result<()> {
    let opened = async {
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp)).await?;
        tokio::spawn(connection);
        let window = window
            .map(|w| format!("&window={}s", w.as_secs_f64()))
            .unwrap_or_default();
        let request = http::Request::get(format!("/v1/jobs/{id}/events?after={from_seq}{window}"))
            .header("host", addr.to_string())
            .body(http_body_util::Empty::<bytes::Bytes>::new())?;
        let response = sender.send_request(request).await?;
        anyhow::ensure!(
            response.status() == 200,
            "the events stream answered {}",
            response.status()
        );
        let mut events = SseReader {
            body: response.into_body(),
            text: Vec::new(),
            read: 0,
        };
        let first = events
            .next()
            .await?
            .context("the stream ended before its snapshot")?;
        anyhow::ensure!(first.snapshot, "the first event is not the snapshot");
        anyhow::Ok(events)
    }
    .await;
    let mut events = match opened {
        Ok(events) => {
            let _ = ready.send(Ok(())).await;
            events
        }
        Err(e) => {
            let _ = ready.send(Err(format!("{e:#}"))).await;
            return Err(e);
        }
    };
    drop(ready);
    let mut next = from_seq + 1;
    while let Some(event) = events.next().await? {
        let now = SystemTime::now();
        let ms = event
            .time
            .map(|t| match now.duration_since(SystemTime::from(t)) {
                Ok(d) => d.as_secs_f64() * 1000.0,
                Err(e) => -e.duration().as_secs_f64() * 1000.0,
            });
        if event.progress {
            out.progress_ms.extend(ms);
            continue;
        }
        if let Some(error) = event.error {
            anyhow::bail!("the stream ended with an error: {error}");
        }
        if event.snapshot {
            continue;
        }
        let sequence = event.sequence.context("an event without a sequence")?;
        if sequence != next && out.problem.is_none() {
            out.problem = Some(format!("expected sequence {next}, got {sequence}"));
        }
        next = sequence + 1;
        out.stored_ms.extend(ms);
        if event.terminal {
            out.terminal = Some(sequence);
        }
    }
    Ok(())
}

/// What the bench reads of an event's `data` (a JobEvent in JSON, or an
/// error): the other fields are skipped, not built. The viewers run on the
/// same cores as the server, so what they spend is taken from the job; a
/// browser's share is on its own machine.
#[derive(Debug, Default, PartialEq)]
struct SseEvent {
    time: Option<chrono::DateTime<chrono::FixedOffset>>,
    sequence: Option<u64>,
    progress: bool,
    snapshot: bool,
    /// The job's terminal state change.
    terminal: bool,
    error: Option<String>,
}

impl SseEvent {
    fn parse(data: &str) -> anyhow::Result<SseEvent> {
        use serde::de::IgnoredAny;
        use std::borrow::Cow;
        #[derive(serde::Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Data<'a> {
            #[serde(borrow)]
            time: Option<Cow<'a, str>>,
            #[serde(borrow)]
            sequence: Option<Cow<'a, str>>,
            progress: Option<IgnoredAny>,
            snapshot: Option<IgnoredAny>,
            #[serde(borrow)]
            state_changed: Option<StateChanged<'a>>,
        }
        #[derive(serde::Deserialize)]
        struct StateChanged<'a> {
            #[serde(borrow)]
            to: Option<Cow<'a, str>>,
        }
        #[derive(serde::Deserialize)]
        struct Error {
            error: Option<serde_json::Value>,
        }
        let d: Data = serde_json::from_str(data)?;
        let mut event = SseEvent {
            time: d
                .time
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(&t).ok()),
            sequence: d.sequence.and_then(|s| s.parse().ok()),
            progress: d.progress.is_some(),
            snapshot: d.snapshot.is_some(),
            terminal: d.state_changed.and_then(|c| c.to).is_some_and(|to| {
                matches!(
                    to.as_ref(),
                    "JOB_STATE_SUCCEEDED" | "JOB_STATE_FAILED" | "JOB_STATE_CANCELLED"
                )
            }),
            error: None,
        };
        if event.time.is_none() && event.sequence.is_none() {
            // An `event: error`'s data: `{"error": {…}}`.
            let e: Error = serde_json::from_str(data)?;
            event.error = e.error.map(|e| e.to_string());
        }
        Ok(event)
    }
}

/// Server-Sent Events read from a response body: each event's `data`
/// (`event: error`'s as an error); `None` after `event: end` or the body's
/// end. The events of a frame are read in place: the buffer is moved once
/// per frame, not once per event.
struct SseReader {
    body: hyper::body::Incoming,
    text: Vec<u8>,
    /// Where the next event starts in `text`.
    read: usize,
}

impl SseReader {
    async fn next(&mut self) -> anyhow::Result<Option<SseEvent>> {
        use http_body_util::BodyExt as _;
        loop {
            while let Some(end) = self.text[self.read..].windows(2).position(|w| w == b"\n\n") {
                let block = std::str::from_utf8(&self.text[self.read..self.read + end])?;
                self.read += end + 2;
                let mut kind = "";
                let mut data = None;
                for line in block.lines() {
                    if let Some(k) = line.strip_prefix("event: ") {
                        kind = k;
                    } else if let Some(d) = line.strip_prefix("data: ") {
                        data = Some(SseEvent::parse(d)?);
                    }
                }
                match (kind, data) {
                    ("end", _) => return Ok(None),
                    (_, Some(data)) => return Ok(Some(data)),
                    // A comment (keepalive).
                    (_, None) => {}
                }
            }
            self.text.drain(..self.read);
            self.read = 0;
            let Some(frame) = self.body.frame().await else {
                return Ok(None);
            };
            if let Ok(data) = frame?.into_data() {
                self.text.extend_from_slice(&data);
            }
        }
    }
}

fn ended(job: &pb::Job) -> u64 {
    job.counts
        .as_ref()
        .map(|c| c.succeeded + c.failed + c.cancelled)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_events_stream_s_data_is_read_for_what_the_bench_needs() {
        let stored = SseEvent::parse(
            r#"{"sequence":"42","time":"2026-12-07T20:00:00.250Z","stateChanged":{"from":"JOB_STATE_RUNNING","to":"JOB_STATE_FAILED","reason":"a \"quoted\" reason"}}"#,
        )
        .unwrap();
        assert_eq!(stored.sequence, Some(42));
        assert_eq!(
            stored.time.unwrap().timestamp_millis(),
            chrono::DateTime::parse_from_rfc3339("2026-12-07T20:00:00.250Z")
                .unwrap()
                .timestamp_millis()
        );
        assert!(stored.terminal && !stored.progress && !stored.snapshot);
        let running = SseEvent::parse(
            r#"{"sequence":"3","time":"2026-12-07T20:00:00Z","stateChanged":{"to":"JOB_STATE_RUNNING"}}"#,
        )
        .unwrap();
        assert!(!running.terminal);
        let progress = SseEvent::parse(
            r#"{"sequence":"9","time":"2026-12-07T20:00:00Z","progress":{"counts":{"succeeded":"5"}}}"#,
        )
        .unwrap();
        assert!(progress.progress && !progress.snapshot);
        let snapshot =
            SseEvent::parse(r#"{"sequence":"9","snapshot":{"id":"x","labels":{"a":"b"}}}"#)
                .unwrap();
        assert!(snapshot.snapshot);
        let error = SseEvent::parse(r#"{"error":{"code":503,"message":"shutting down"}}"#).unwrap();
        assert!(error.error.unwrap().contains("shutting down"));
        assert!(SseEvent::parse("not json").is_err());
    }

    fn pair(ratio: f64, p99_ms: f64, complete_streams: u32) -> Watchers {
        let run = |watchers, items_per_second| Run {
            watchers,
            items_run: 1000,
            run_seconds: 1000.0 / items_per_second,
            items_per_second,
            server_cpu_seconds: 1.0,
            client_cpu_seconds: 1.0,
        };
        Watchers {
            job: "job".into(),
            failing_items: 0,
            attempts: 1,
            watchers: 10,
            connections: 1,
            sse: false,
            window_ms: None,
            without: run(0, 1000.0),
            with: run(10, 1000.0 * ratio),
            throughput_ratio: ratio,
            delivery: Summary {
                n: 100,
                p50_ms: p99_ms / 2.0,
                p99_ms,
                max_ms: p99_ms,
            },
            progress_delivery: Summary::default(),
            expected_events_per_stream: 10,
            complete_streams,
            problems: vec![],
            cores: 2,
            target_p99_ms: TARGET_P99_MS,
            delivery_met: p99_ms < TARGET_P99_MS,
            target_ratio: TARGET_RATIO,
            throughput_met: ratio >= TARGET_RATIO,
        }
    }

    #[test]
    fn the_summary_counts_each_target_per_pair_and_takes_medians() {
        let s = WatchersSummary::of(&[
            pair(0.80, 40.0, 10),
            pair(0.95, 60.0, 10),
            pair(0.70, 45.0, 9),
        ]);
        assert_eq!(s.runs, 3);
        assert_eq!(s.throughput_ratios, [0.80, 0.95, 0.70]);
        assert_eq!(s.median_throughput_ratio, 0.80);
        assert_eq!(s.throughput_met_runs, 1);
        assert_eq!(s.median_delivery_p99_ms, 45.0);
        assert_eq!(s.delivery_met_runs, 2);
        assert_eq!(s.complete_runs, 2);
        let text = s.human().join("\n");
        assert!(text.contains("80.0, 95.0, 70.0 % (median 80.0%)"), "{text}");
        assert!(text.contains("in 1 of 3"), "{text}");
        // An even count: halfway between the two in the middle.
        let s = WatchersSummary::of(&[pair(0.80, 40.0, 10), pair(0.90, 60.0, 10)]);
        assert!((s.median_throughput_ratio - 0.85).abs() < 1e-9);
        assert_eq!(s.median_delivery_p99_ms, 50.0);
    }
}

//! The client subcommands: each builds a request, calls the server named
//! by `--server` / `JOBVISOR_SERVER`, and prints the answer.

use super::{not_grpc::NotGrpc, output};
use crate::{
    api::REQUESTED_BY_HEADER,
    pb::{self, job_service_client::JobServiceClient},
};
use anyhow::{Context, bail};
use clap::Args;
use std::{collections::HashMap, io::IsTerminal, process::ExitCode, time::Duration};
use tonic::transport::{Channel, Endpoint};

/// How long a unary call may take before the client gives up.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Args, Clone)]
pub struct Conn {
    /// The server's address.
    #[arg(
        long,
        env = "JOBVISOR_SERVER",
        default_value = "http://127.0.0.1:50051",
        global = true
    )]
    server: String,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    /// Bearer token, for servers that require one.
    #[arg(long, env = "JOBVISOR_TOKEN", global = true, hide_env_values = true)]
    token: Option<String>,
    /// A file holding the bearer token (instead of --token, which other
    /// users of the machine may see in the process list).
    #[arg(
        long,
        env = "JOBVISOR_TOKEN_FILE",
        global = true,
        conflicts_with = "token"
    )]
    token_file: Option<std::path::PathBuf>,
    /// CA certificate (PEM) to verify the server with (https:// servers).
    #[arg(long, env = "JOBVISOR_CA_CERT", global = true)]
    ca_cert: Option<std::path::PathBuf>,
    /// Client certificate (PEM), for servers that require mTLS.
    #[arg(
        long,
        env = "JOBVISOR_CLIENT_CERT",
        global = true,
        requires = "client_key"
    )]
    client_cert: Option<std::path::PathBuf>,
    /// Client key (PEM).
    #[arg(
        long,
        env = "JOBVISOR_CLIENT_KEY",
        global = true,
        requires = "client_cert"
    )]
    client_key: Option<std::path::PathBuf>,
}

/// Adds the caller's token to every request.
#[derive(Clone)]
pub struct Auth(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl tonic::service::Interceptor for Auth {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

pub type Client =
    JobServiceClient<tonic::service::interceptor::InterceptedService<NotGrpc<Channel>, Auth>>;

impl Conn {
    /// The server's address, with the TLS settings of --ca-cert and
    /// --client-cert/--client-key for `https://` servers (a bare
    /// `host:port` is `https://` when one of them is given).
    pub(super) fn endpoint(&self) -> anyhow::Result<Endpoint> {
        let tls = self.ca_cert.is_some() || self.client_cert.is_some();
        let url = if self.server.contains("://") {
            self.server.clone()
        } else if tls {
            format!("https://{}", self.server)
        } else {
            format!("http://{}", self.server)
        };
        let mut endpoint = Channel::from_shared(url.clone())
            .with_context(|| format!("--server {url:?} is not a valid address"))?
            .connect_timeout(Duration::from_secs(5));
        if url.starts_with("https://") {
            let mut config = tonic::transport::ClientTlsConfig::new();
            if let Some(ca) = &self.ca_cert {
                let pem = std::fs::read(ca)
                    .with_context(|| format!("cannot read --ca-cert {}", ca.display()))?;
                config = config.ca_certificate(tonic::transport::Certificate::from_pem(pem));
            }
            if let (Some(cert), Some(key)) = (&self.client_cert, &self.client_key) {
                let cert = std::fs::read(cert)
                    .with_context(|| format!("cannot read --client-cert {}", cert.display()))?;
                let key = std::fs::read(key)
                    .with_context(|| format!("cannot read --client-key {}", key.display()))?;
                config = config.identity(tonic::transport::Identity::from_pem(cert, key));
            }
            endpoint = endpoint
                .tls_config(config)
                .context("invalid TLS settings")?;
        }
        Ok(endpoint)
    }

    /// The bearer token, from --token or --token-file.
    pub(super) fn token(&self) -> anyhow::Result<Option<String>> {
        match (&self.token, &self.token_file) {
            (Some(token), _) => Ok(Some(token.clone())),
            (None, Some(path)) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read --token-file {}", path.display()))?;
                let token = text.trim();
                if token.is_empty() {
                    bail!("--token-file {} is empty", path.display());
                }
                Ok(Some(token.to_string()))
            }
            (None, None) => Ok(None),
        }
    }

    async fn client(&self) -> anyhow::Result<Client> {
        let endpoint = self.endpoint()?;
        let url = endpoint.uri().to_string().trim_end_matches('/').to_string();
        let auth = match self.token()? {
            Some(token) => Some(
                format!("Bearer {token}")
                    .parse()
                    .context("the token holds characters that cannot be sent")?,
            ),
            None => None,
        };
        let channel = endpoint
            .connect()
            .await
            .with_context(|| format!("cannot reach the jobvisor server at {url}"))?;
        Ok(
            JobServiceClient::with_interceptor(NotGrpc(channel), Auth(auth))
                .max_decoding_message_size(64 * 1024 * 1024),
        )
    }
}

/// A request with a deadline and the caller's name attached.
pub(super) fn request<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(CALL_TIMEOUT);
    let who = std::env::var("USER").unwrap_or_else(|_| "jobvisor-cli".into());
    if let Ok(value) = format!("cli:{who}").parse() {
        request.metadata_mut().insert(REQUESTED_BY_HEADER, value);
    }
    request
}

pub(super) fn status_error(status: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{}", status_text(&status))
}

/// A failed call in words: the server's code and message, or what a proxy
/// in between answered instead of gRPC and what to do about it.
pub(super) fn status_text(status: &tonic::Status) -> String {
    super::not_grpc::describe(status)
        .unwrap_or_else(|| format!("{}: {}", output::code_name(status.code()), status.message()))
}

fn key_value(raw: &str) -> Result<(String, String), String> {
    raw.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("{raw:?} is not key=value"))
}

#[derive(Debug, Args)]
pub struct StartArgs {
    #[command(flatten)]
    conn: Conn,
    /// The job's name.
    #[arg(long)]
    name: String,
    /// The executor that processes each item.
    #[arg(long, default_value = "sleep")]
    executor: String,
    #[command(flatten)]
    items: ItemArgs,
    /// Start the job open: it takes more items (`jobvisor add`) and does not
    /// end until closed (`jobvisor close`, or `add --close`), however many
    /// of its items are done. It may then start with no items.
    #[arg(long)]
    open: bool,
    /// An executor parameter, key=value (repeat for more).
    #[arg(long = "param", value_parser = key_value)]
    params: Vec<(String, String)>,
    /// A label, key=value (repeat for more).
    #[arg(long = "label", value_parser = key_value)]
    labels: Vec<(String, String)>,
    /// Items processed at once.
    #[arg(long, default_value_t = 1)]
    concurrency: u32,
    /// Attempts per item (0: the server's default, 3).
    #[arg(long, default_value_t = 0)]
    max_attempts: u32,
    /// Idempotency key: retrying with the same key starts nothing new.
    #[arg(long)]
    request_id: Option<String>,
    /// Follow the job after starting it, like `jobvisor watch`.
    #[arg(long)]
    watch: bool,
    /// Check the job as the server would start it (fields, executor and
    /// params, permissions, limits) and store nothing; print it.
    #[arg(long, conflicts_with = "watch")]
    dry_run: bool,
    /// The name is unique among live jobs: while one started with
    /// --exclusive (or by `jobvisor run`) is live, this start is refused.
    #[arg(long)]
    exclusive: bool,
    /// Fail the job once it has run this long (paused time not counted).
    #[arg(long, value_parser = humantime::parse_duration)]
    timeout: Option<Duration>,
    /// Pause the job by itself after this many failed attempts in a row.
    #[arg(long, default_value_t = 0)]
    pause_after_failures: u32,
    /// Pause the job by itself when this share (0-1) of recent attempts failed.
    #[arg(long, default_value_t = 0.0)]
    pause_on_failure_ratio: f64,
    /// The attempts --pause-on-failure-ratio looks at (default 20).
    #[arg(long, default_value_t = 0)]
    failure_window: u32,
    /// Wait this long before an item's first retry (e.g. 2s), twice as long
    /// before each further one (default: retry at once).
    #[arg(long, value_parser = humantime::parse_duration)]
    retry_delay: Option<Duration>,
    /// The longest wait before a retry (default 1h).
    #[arg(long, value_parser = humantime::parse_duration)]
    retry_delay_max: Option<Duration>,
    /// Start at most this many items per --rate-period (retries included),
    /// spaced evenly: for work against a service with a rate limit.
    #[arg(long, default_value_t = 0)]
    rate_limit: u32,
    /// The period of --rate-limit (default 1s), e.g. 1m for "per minute".
    #[arg(long, value_parser = humantime::parse_duration, requires = "rate_limit")]
    rate_period: Option<Duration>,
    /// Create the job PAUSED: nothing runs until `jobvisor resume` (or
    /// --resume-at).
    #[arg(long)]
    paused: bool,
    /// With --paused: resume by itself at this time: RFC 3339, or
    /// +duration from now (a job scheduled for later).
    #[arg(long, value_parser = parse_when, requires = "paused")]
    resume_at: Option<prost_types::Timestamp>,
}

fn proto_duration(d: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

/// A time given as RFC 3339 (2026-11-22T18:00:00Z) or from now (+2h).
fn parse_when(raw: &str) -> Result<prost_types::Timestamp, String> {
    let at = match raw.strip_prefix('+') {
        Some(after) => {
            let d = humantime::parse_duration(after)
                .map_err(|e| format!("{raw:?}: {e} (try +30m or an RFC 3339 time)"))?;
            chrono::Utc::now()
                + chrono::Duration::from_std(d).map_err(|_| format!("{raw:?} is too far"))?
        }
        None => chrono::DateTime::parse_from_rfc3339(raw)
            .map_err(|_| format!("{raw:?} is not an RFC 3339 time or +duration"))?
            .with_timezone(&chrono::Utc),
    };
    Ok(prost_types::Timestamp {
        seconds: at.timestamp(),
        nanos: at.timestamp_subsec_nanos() as i32,
    })
}

/// Where a command's items come from, and how they are sent.
#[derive(Debug, Args)]
pub struct ItemArgs {
    /// An item (repeat for more).
    #[arg(long = "item")]
    items: Vec<String>,
    /// A file with one item per line ("-" for standard input).
    #[arg(long)]
    items_file: Option<String>,
    /// Generate this many items named item-0, item-1, … (for trying things).
    #[arg(long)]
    count: Option<u32>,
    /// Send the items in pages of at most this many bytes (a job's items
    /// beyond the first page go in AddItems calls, each retried on its own
    /// and never added twice), so that no request passes a proxy's body
    /// limit (nginx: 1 MiB by default). At most 4 MiB.
    #[arg(long, default_value_t = super::pages::DEFAULT_PAGE_BYTES,
          value_parser = clap::value_parser!(u32).range(1024..=4 * 1024 * 1024))]
    page_bytes: u32,
}

/// The items `args` names, read from their flags and files; none is an
/// error unless `may_be_empty`.
fn items_of(args: &ItemArgs, may_be_empty: bool) -> anyhow::Result<Vec<String>> {
    let mut items = args.items.clone();
    if let Some(path) = &args.items_file {
        let text = if path == "-" {
            std::io::read_to_string(std::io::stdin()).context("cannot read items from stdin")?
        } else {
            std::fs::read_to_string(path).with_context(|| format!("cannot read {path}"))?
        };
        items.extend(text.lines().filter(|l| !l.is_empty()).map(String::from));
    }
    if let Some(n) = args.count {
        items.extend((0..n).map(|i| format!("item-{i}")));
    }
    if items.is_empty() && !may_be_empty {
        bail!("no items: give --item, --items-file or --count");
    }
    Ok(items)
}

/// The StartJob request `args` asks for, with `items`.
fn start_request(args: &StartArgs, items: Vec<String>) -> pb::StartJobRequest {
    pb::StartJobRequest {
        name: args.name.clone(),
        executor: args.executor.clone(),
        items,
        concurrency: args.concurrency,
        params: args.params.iter().cloned().collect::<HashMap<_, _>>(),
        labels: args.labels.iter().cloned().collect::<HashMap<_, _>>(),
        max_attempts: args.max_attempts,
        request_id: args.request_id.clone().unwrap_or_default(),
        timeout: args.timeout.map(proto_duration),
        pause_after_failures: args.pause_after_failures,
        pause_on_failure_ratio: args.pause_on_failure_ratio,
        failure_window: args.failure_window,
        retry_delay: args.retry_delay.map(proto_duration),
        retry_delay_max: args.retry_delay_max.map(proto_duration),
        rate_limit: args.rate_limit,
        rate_period: args.rate_period.map(proto_duration),
        start_paused: args.paused,
        resume_at: args.resume_at,
        validate_only: args.dry_run,
        exclusive: args.exclusive,
        open: args.open,
    }
}

/// The request that starts a job: the whole job when it fits one request
/// (or for a dry run, which checks the first page only: it stores
/// nothing, so there is nothing to add to), else the first page of an
/// upload, open, under the upload's key (given back with it).
fn first_page(
    args: &StartArgs,
    items: &[String],
    pages: &[std::ops::Range<usize>],
) -> (pb::StartJobRequest, Option<String>) {
    let first = pages.first().cloned().unwrap_or_default();
    let mut start = start_request(args, items[first].to_vec());
    if pages.len() > 1 {
        start.open = true;
        if !args.dry_run {
            let key = args
                .request_id
                .clone()
                .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
            start.request_id = key.clone();
            return (start, Some(key));
        }
    }
    (start, None)
}

/// Sends the pages after the first to the job `job_id` an upload under
/// `key` started; the last one closes it unless `--open`.
async fn send_rest(
    client: &mut Client,
    args: &StartArgs,
    items: &[String],
    pages: &[std::ops::Range<usize>],
    job_id: &str,
    key: &str,
) -> anyhow::Result<pb::Job> {
    let upload = super::pages::Upload {
        job_id,
        items,
        pages: &pages[1..],
        key,
        close: !args.open,
    };
    upload.send(client).await
}

pub async fn start(args: StartArgs) -> anyhow::Result<ExitCode> {
    let items = items_of(&args.items, args.open)?;
    let pages = super::pages::split(&items, args.items.page_bytes as usize);
    let mut client = args.conn.client().await?;
    let (start, key) = first_page(&args, &items, &pages);
    let job = match key {
        None => client
            .start_job(request(start))
            .await
            .map_err(status_error)?
            .into_inner(),
        Some(key) => {
            let job = super::pages::first_call("starting the job", || {
                let (mut client, start) = (client.clone(), start.clone());
                async move { client.start_job(request(start)).await }
            })
            .await?;
            send_rest(&mut client, &args, &items, &pages, &job.id, &key).await?
        }
    };
    if args.dry_run {
        if !args.conn.json {
            say!("dry run: the job would start as below; nothing was stored");
        }
        output::print_job(&job, args.conn.json);
        return Ok(ExitCode::SUCCESS);
    }
    if args.watch {
        return follow(&mut client, &job.id, 0, args.conn.json).await;
    }
    output::print_job(&job, args.conn.json);
    Ok(ExitCode::SUCCESS)
}

/// `jobvisor run`: starts the job of `--name`, or resumes it, or finds it
/// running (RunJob), and says which. Items beyond one request go as
/// `start` sends them: the job starts open with the first page, the others
/// follow (AddItems), the last closing it; only when this call started the
/// job (a job found running or resumed keeps its own items).
pub async fn run(args: StartArgs) -> anyhow::Result<ExitCode> {
    let items = items_of(&args.items, args.open)?;
    let pages = super::pages::split(&items, args.items.page_bytes as usize);
    let mut client = args.conn.client().await?;
    let (start, key) = first_page(&args, &items, &pages);
    let run = pb::RunJobRequest {
        job: Some(start),
        reason: String::new(),
    };
    let answer = match key {
        None => client
            .run_job(request(run))
            .await
            .map_err(status_error)?
            .into_inner(),
        Some(key) => {
            let mut answer = super::pages::first_call("running the job", || {
                let (mut client, run) = (client.clone(), run.clone());
                async move { client.run_job(request(run)).await }
            })
            .await?;
            if answer.outcome == pb::RunOutcome::Started as i32 {
                let id = answer
                    .job
                    .as_ref()
                    .map(|j| j.id.clone())
                    .unwrap_or_default();
                answer.job = Some(send_rest(&mut client, &args, &items, &pages, &id, &key).await?);
            }
            answer
        }
    };
    let job = answer
        .job
        .ok_or_else(|| anyhow::anyhow!("the server answered RunJob without the job"))?;
    let did = match pb::RunOutcome::try_from(answer.outcome) {
        Ok(pb::RunOutcome::Started) => "started",
        Ok(pb::RunOutcome::Resumed) => "resumed",
        Ok(pb::RunOutcome::AlreadyRunning) => "already running",
        _ => "unknown outcome",
    };
    if !args.conn.json {
        if args.dry_run {
            say!("dry run: it would be {did}; nothing changed");
        } else {
            say!("{did}:");
        }
    }
    if args.watch && !args.dry_run {
        return follow(&mut client, &job.id, 0, args.conn.json).await;
    }
    if args.conn.json {
        say!(
            "{}",
            serde_json::json!({"outcome": did, "job": output::job_json(&job)})
        );
    } else {
        output::print_job(&job, false);
    }
    Ok(ExitCode::SUCCESS)
}

/// A job named on the command line: its id, or the name of a live job
/// (one only: several are listed).
async fn resolve(client: &mut Client, named: &str) -> anyhow::Result<String> {
    if uuid::Uuid::parse_str(named).is_ok() {
        return Ok(named.to_string());
    }
    let live = [
        pb::JobState::Running,
        pb::JobState::Pausing,
        pb::JobState::Paused,
        pb::JobState::Cancelling,
    ];
    let page = client
        .list_jobs(request(pb::ListJobsRequest {
            page_size: 20,
            states: live.iter().map(|s| *s as i32).collect(),
            name: named.to_string(),
            ..Default::default()
        }))
        .await
        .map_err(status_error)?
        .into_inner();
    match page.jobs.as_slice() {
        [] => bail!(
            "{named:?} is neither a job id nor the name of a live job (a name names a job only \
             while it is RUNNING, PAUSING, PAUSED or CANCELLING; jobvisor list shows the ids)"
        ),
        [one] => Ok(one.id.clone()),
        several => {
            let list: Vec<String> = several
                .iter()
                .map(|j| format!("  {} {}", j.id, output::job_state_name(j.state)))
                .collect();
            bail!(
                "{} live jobs are named {named:?}; name one by its id:\n{}",
                several.len(),
                list.join("\n")
            )
        }
    }
}

#[derive(Debug, Args)]
pub struct JobArgs {
    #[command(flatten)]
    conn: Conn,
    /// The job's id, or the name of a live job (retry and delete, whose
    /// jobs have ended: its id).
    job_id: String,
}

#[derive(Debug, Args)]
pub struct AddArgs {
    #[command(flatten)]
    conn: Conn,
    /// The job's id, or the name of a live job.
    job_id: String,
    #[command(flatten)]
    items: ItemArgs,
    /// Close the job with the last page: it ends once its items are done.
    #[arg(long)]
    close: bool,
    /// Idempotency key of this addition: running the command again with
    /// the same key adds no page twice (it goes on where it stopped).
    #[arg(long)]
    request_id: Option<String>,
}

pub async fn add(args: AddArgs) -> anyhow::Result<ExitCode> {
    let items = items_of(&args.items, args.close)?;
    let pages = super::pages::split(&items, args.items.page_bytes as usize);
    let mut client = args.conn.client().await?;
    let job_id = resolve(&mut client, &args.job_id).await?;
    let key = args
        .request_id
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let upload = super::pages::Upload {
        job_id: &job_id,
        items: &items,
        pages: &pages,
        key: &key,
        close: args.close,
    };
    let job = upload.send(&mut client).await?;
    output::print_job(&job, args.conn.json);
    Ok(ExitCode::SUCCESS)
}

pub async fn close(args: JobArgs) -> anyhow::Result<ExitCode> {
    let mut client = args.conn.client().await?;
    let job_id = resolve(&mut client, &args.job_id).await?;
    // A page of no items that closes, retried like any other page.
    let key = uuid::Uuid::new_v4().to_string();
    let upload = super::pages::Upload {
        job_id: &job_id,
        items: &[],
        pages: &[],
        key: &key,
        close: true,
    };
    let job = upload.send(&mut client).await?;
    output::print_job(&job, args.conn.json);
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, Args)]
pub struct PauseArgs {
    #[command(flatten)]
    conn: Conn,
    /// The job's id, or the name of a live job.
    job_id: String,
    /// Stop items in flight at their next checkpoint instead of letting
    /// them finish.
    #[arg(long)]
    immediate: bool,
    /// Why (kept in the job's pause history).
    #[arg(long, default_value = "")]
    reason: String,
    /// Turn the graceful pause immediate after this long.
    #[arg(long, value_parser = humantime::parse_duration)]
    drain_timeout: Option<Duration>,
    /// Resume by itself at this time: RFC 3339, or +duration from now.
    #[arg(long, value_parser = parse_when)]
    resume_at: Option<prost_types::Timestamp>,
}

pub async fn pause(args: PauseArgs) -> anyhow::Result<ExitCode> {
    let mode = if args.immediate {
        pb::PauseMode::Immediate
    } else {
        pb::PauseMode::Graceful
    };
    let mut client = args.conn.client().await?;
    let job_id = resolve(&mut client, &args.job_id).await?;
    let job = client
        .pause_job(request(pb::PauseJobRequest {
            job_id,
            mode: mode as i32,
            reason: args.reason,
            request_id: String::new(),
            drain_timeout: args.drain_timeout.map(proto_duration),
            resume_at: args.resume_at,
        }))
        .await
        .map_err(status_error)?
        .into_inner();
    output::print_job(&job, args.conn.json);
    Ok(ExitCode::SUCCESS)
}

pub async fn resume(args: JobArgs) -> anyhow::Result<ExitCode> {
    let mut client = args.conn.client().await?;
    let job_id = resolve(&mut client, &args.job_id).await?;
    let job = client
        .resume_job(request(pb::ResumeJobRequest {
            job_id,
            request_id: String::new(),
        }))
        .await
        .map_err(status_error)?
        .into_inner();
    output::print_job(&job, args.conn.json);
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, Args)]
pub struct CancelArgs {
    #[command(flatten)]
    conn: Conn,
    /// The job's id, or the name of a live job.
    job_id: String,
    /// Why (recorded in the job's event log).
    #[arg(long, default_value = "")]
    reason: String,
}

pub async fn cancel(args: CancelArgs) -> anyhow::Result<ExitCode> {
    let mut client = args.conn.client().await?;
    let job_id = resolve(&mut client, &args.job_id).await?;
    let job = client
        .cancel_job(request(pb::CancelJobRequest {
            job_id,
            reason: args.reason,
            request_id: String::new(),
        }))
        .await
        .map_err(status_error)?
        .into_inner();
    output::print_job(&job, args.conn.json);
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, Args)]
pub struct CancelItemsArgs {
    #[command(flatten)]
    conn: Conn,
    /// The job's id, or the name of a live job.
    job_id: String,
    /// The items to cancel, by index (or give --from and --to).
    #[arg(conflicts_with_all = ["from", "to"])]
    indexes: Vec<u32>,
    /// The first item of a range to cancel.
    #[arg(long, requires = "to")]
    from: Option<u32>,
    /// The last item of the range (included).
    #[arg(long, requires = "from")]
    to: Option<u32>,
    /// Only the chosen items in this state (again for both; default: both).
    #[arg(long = "state", value_parser = ["pending", "running"])]
    states: Vec<String>,
    /// Why (recorded in the job's event log).
    #[arg(long, default_value = "")]
    reason: String,
}

/// Cancels chosen items of a job; says how many and which were running.
pub async fn cancel_items(args: CancelItemsArgs) -> anyhow::Result<ExitCode> {
    let mut client = args.conn.client().await?;
    let job_id = resolve(&mut client, &args.job_id).await?;
    let range = match (args.from, args.to) {
        (Some(first), Some(last)) => Some(pb::ItemRange { first, last }),
        _ => None,
    };
    let states = args
        .states
        .iter()
        .map(|s| match s.as_str() {
            "running" => pb::ItemState::Running as i32,
            _ => pb::ItemState::Pending as i32,
        })
        .collect();
    let answer = client
        .cancel_items(request(pb::CancelItemsRequest {
            job_id,
            indexes: args.indexes,
            range,
            states,
            reason: args.reason,
        }))
        .await
        .map_err(status_error)?
        .into_inner();
    let job = answer.job.ok_or_else(|| {
        anyhow::anyhow!("the server cancelled the items but did not return the job")
    })?;
    if args.conn.json {
        say!(
            "{}",
            serde_json::json!({
                "cancelled": answer.cancelled,
                "interrupted": answer.interrupted,
                "job": output::job_json(&job),
            })
        );
        return Ok(ExitCode::SUCCESS);
    }
    let items = match answer.cancelled {
        1 => "1 item".to_string(),
        n => format!("{n} items"),
    };
    let interrupted = if answer.interrupted.is_empty() {
        String::new()
    } else {
        let list: Vec<String> = answer.interrupted.iter().map(u32::to_string).collect();
        format!("; interrupted (were running): {}", list.join(", "))
    };
    say!("cancelled {items}{interrupted}");
    output::print_job(&job, false);
    Ok(ExitCode::SUCCESS)
}

pub async fn get(args: JobArgs) -> anyhow::Result<ExitCode> {
    let mut client = args.conn.client().await?;
    let job_id = resolve(&mut client, &args.job_id).await?;
    let job = client
        .get_job(request(pb::GetJobRequest { job_id }))
        .await
        .map_err(status_error)?
        .into_inner();
    output::print_job(&job, args.conn.json);
    Ok(ExitCode::SUCCESS)
}

pub async fn retry(args: JobArgs) -> anyhow::Result<ExitCode> {
    let job = args
        .conn
        .client()
        .await?
        .retry_failed_items(request(pb::RetryFailedItemsRequest {
            job_id: args.job_id,
            request_id: String::new(),
        }))
        .await
        .map_err(status_error)?
        .into_inner();
    output::print_job(&job, args.conn.json);
    Ok(ExitCode::SUCCESS)
}

/// Deletes an ended job; prints it as it was.
pub async fn delete(args: JobArgs) -> anyhow::Result<ExitCode> {
    let answer = args
        .conn
        .client()
        .await?
        .delete_job(request(pb::DeleteJobRequest {
            job_id: args.job_id,
        }))
        .await
        .map_err(status_error)?
        .into_inner();
    let job = answer
        .job
        .ok_or_else(|| anyhow::anyhow!("the server deleted the job but did not return it"))?;
    if !args.conn.json {
        say!("deleted:");
    }
    output::print_job(&job, args.conn.json);
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, Args)]
pub struct ScaleArgs {
    #[command(flatten)]
    conn: Conn,
    /// The job's id, or the name of a live job.
    job_id: String,
    /// Items at once from now on.
    concurrency: u32,
}

pub async fn scale(args: ScaleArgs) -> anyhow::Result<ExitCode> {
    let mut client = args.conn.client().await?;
    let job_id = resolve(&mut client, &args.job_id).await?;
    let job = client
        .set_job_concurrency(request(pb::SetJobConcurrencyRequest {
            job_id,
            concurrency: args.concurrency,
            request_id: String::new(),
        }))
        .await
        .map_err(status_error)?
        .into_inner();
    output::print_job(&job, args.conn.json);
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, Args)]
pub struct RateArgs {
    #[command(flatten)]
    conn: Conn,
    /// The job's id, or the name of a live job.
    job_id: String,
    /// Item starts per --period from now on (0: no limit).
    rate_limit: u32,
    /// The period of the limit (default 1s), e.g. 1m for "per minute".
    #[arg(long, value_parser = humantime::parse_duration)]
    period: Option<Duration>,
}

pub async fn rate(args: RateArgs) -> anyhow::Result<ExitCode> {
    let mut client = args.conn.client().await?;
    let job_id = resolve(&mut client, &args.job_id).await?;
    let job = client
        .set_job_rate_limit(request(pb::SetJobRateLimitRequest {
            job_id,
            rate_limit: args.rate_limit,
            rate_period: args.period.map(proto_duration),
            request_id: String::new(),
        }))
        .await
        .map_err(status_error)?
        .into_inner();
    output::print_job(&job, args.conn.json);
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, Args)]
pub struct BulkArgs {
    #[command(flatten)]
    conn: Conn,
    /// pause, resume or cancel.
    #[arg(value_parser = ["pause", "resume", "cancel"])]
    action: String,
    /// Every live job with this label, key=value (repeatable; all must match).
    #[arg(long = "label", value_parser = key_value)]
    labels: Vec<(String, String)>,
    /// And these jobs (repeatable).
    #[arg(long = "id")]
    ids: Vec<String>,
    /// For pause: stop items in flight at their next checkpoint.
    #[arg(long)]
    immediate: bool,
    /// Why (recorded with every job's event).
    #[arg(long, default_value = "")]
    reason: String,
}

pub async fn bulk(args: BulkArgs) -> anyhow::Result<ExitCode> {
    let action = match args.action.as_str() {
        "pause" => pb::ControlAction::Pause,
        "resume" => pb::ControlAction::Resume,
        _ => pb::ControlAction::Cancel,
    };
    let mode = if args.immediate {
        pb::PauseMode::Immediate
    } else {
        pb::PauseMode::Graceful
    };
    let answer = args
        .conn
        .client()
        .await?
        .control_jobs(request(pb::ControlJobsRequest {
            action: action as i32,
            job_ids: args.ids,
            labels: args.labels.into_iter().collect(),
            mode: mode as i32,
            reason: args.reason,
            ..Default::default()
        }))
        .await
        .map_err(status_error)?
        .into_inner();
    output::print_outcomes(&answer, args.conn.json);
    let failed = answer.outcomes.iter().any(|o| !o.error_code.is_empty());
    Ok(if failed {
        ExitCode::from(5)
    } else {
        ExitCode::SUCCESS
    })
}

#[derive(Debug, Args)]
pub struct ListArgs {
    #[command(flatten)]
    conn: Conn,
    /// Only jobs in this state (running, paused, succeeded…); repeatable.
    #[arg(long = "state", value_parser = output::parse_job_state)]
    states: Vec<pb::JobState>,
    /// Only jobs with this label, key=value; repeatable.
    #[arg(long = "label", value_parser = key_value)]
    labels: Vec<(String, String)>,
    /// Jobs per page.
    #[arg(long, default_value_t = 50)]
    page_size: u32,
    /// Continue from a previous page.
    #[arg(long, default_value = "")]
    page_token: String,
    /// Only jobs of exactly this name.
    #[arg(long, default_value = "")]
    name: String,
}

pub async fn list(args: ListArgs) -> anyhow::Result<ExitCode> {
    let page = args
        .conn
        .client()
        .await?
        .list_jobs(request(pb::ListJobsRequest {
            page_size: args.page_size,
            page_token: args.page_token,
            states: args.states.iter().map(|s| *s as i32).collect(),
            labels: args.labels.into_iter().collect(),
            name: args.name,
        }))
        .await
        .map_err(status_error)?
        .into_inner();
    output::print_jobs(&page, args.conn.json);
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, Args)]
pub struct ItemsArgs {
    #[command(flatten)]
    conn: Conn,
    /// The job's id, or the name of a live job.
    job_id: String,
    /// Only items in this state (pending, running, failed…); repeatable.
    #[arg(long = "state", value_parser = output::parse_item_state)]
    states: Vec<pb::ItemState>,
    /// Items per page.
    #[arg(long, default_value_t = 100)]
    page_size: u32,
    /// Continue from a previous page.
    #[arg(long, default_value = "")]
    page_token: String,
}

pub async fn items(args: ItemsArgs) -> anyhow::Result<ExitCode> {
    let mut client = args.conn.client().await?;
    let job_id = resolve(&mut client, &args.job_id).await?;
    let page = client
        .list_job_items(request(pb::ListJobItemsRequest {
            job_id,
            page_size: args.page_size,
            page_token: args.page_token,
            states: args.states.iter().map(|s| *s as i32).collect(),
        }))
        .await
        .map_err(status_error)?
        .into_inner();
    output::print_items(&page, args.conn.json);
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, Args)]
pub struct WatchArgs {
    #[command(flatten)]
    conn: Conn,
    /// The job's id, or the name of a live job.
    job_id: String,
    /// Replay events after this sequence (0: the whole history).
    #[arg(long, default_value_t = 0)]
    from_sequence: u64,
}

pub async fn watch(args: WatchArgs) -> anyhow::Result<ExitCode> {
    let mut client = args.conn.client().await?;
    let job_id = resolve(&mut client, &args.job_id).await?;
    follow(&mut client, &job_id, args.from_sequence, args.conn.json).await
}

/// Streams a job to its end. When the stream breaks (a server restart, a
/// proxy that cut it, a stream that fell behind) it watches again from
/// the last sequence it showed, with backoff, and says so on stderr: no
/// event is missed or shown twice.
async fn follow(
    client: &mut Client,
    job_id: &str,
    from_sequence: u64,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let json = json || !std::io::stdout().is_terminal();
    let mut view = output::WatchView::new(json);
    let mut last = from_sequence;
    let mut retries = watch_backoff();
    loop {
        let stream = client
            .watch_job(pb::WatchJobRequest {
                job_id: job_id.to_string(),
                from_sequence: last,
                window: None,
            })
            .await;
        let broken = match stream {
            Ok(stream) => {
                let mut stream = stream.into_inner();
                loop {
                    match stream.message().await {
                        Ok(Some(event)) => {
                            retries = watch_backoff();
                            if !matches!(
                                event.kind,
                                Some(
                                    pb::job_event::Kind::Snapshot(_)
                                        | pb::job_event::Kind::Progress(_)
                                )
                            ) {
                                last = event.sequence;
                            }
                            if let Some(end) = view.show(&event) {
                                view.finish();
                                return Ok(end);
                            }
                        }
                        Ok(None) => {
                            // Ended without a terminal event after our
                            // sequence: the job had already ended.
                            view.finish();
                            return Ok(output::exit_code(view.last_state()));
                        }
                        Err(status) => break status,
                    }
                }
            }
            Err(status) => status,
        };
        match retries.next().filter(|_| resumable(&broken)) {
            Some(wait) => {
                view.note(&format!(
                    "watch stream interrupted ({}); resuming after sequence {last} in {}",
                    status_text(&broken),
                    humantime::format_duration(wait)
                ));
                tokio::time::sleep(wait).await;
            }
            None => {
                view.finish();
                return Err(status_error(broken));
            }
        }
    }
}

/// The waits between a watch's attempts to resume: from half a second,
/// doubling to at most 10 s, for about five minutes.
pub(super) fn watch_backoff() -> impl Iterator<Item = Duration> {
    use backon::BackoffBuilder as _;
    backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(500))
        .with_max_delay(Duration::from_secs(10))
        .with_max_times(35)
        .build()
}

/// Whether a broken watch stream is worth resuming: the server or the path
/// to it failed (restart, drain, a proxy's cut, a stream behind), not the
/// request.
fn resumable(status: &tonic::Status) -> bool {
    use tonic::Code::*;
    matches!(
        status.code(),
        Unavailable | Internal | Unknown | ResourceExhausted | Aborted | Cancelled
    )
}

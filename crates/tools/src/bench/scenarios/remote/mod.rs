//! The remote-worker scenarios: a server with a remote executor
//! ([`EXECUTOR`]) and workers connected over `WorkerService.Work`.
//!
//! - [`throughput`]: one job of no-op items run by a worker process (this
//!   binary's hidden `remote-worker` subcommand: [`jobvisor::worker::Worker`]
//!   with the `sleep` executor's handler at 0 ms) against the same job run
//!   in the server: items/s of each and the ratio.
//! - [`latency`]: on an idle server, StartJob → the assignment at the
//!   worker, and PauseJob(IMMEDIATE) / CancelJob → the interrupt at the
//!   worker holding the item (a worker of the raw protocol in this
//!   process, [`RawWorker`], so the arrival is timed where it is read).
//! - [`python`]: throughput and stopping latency of a worker process
//!   of the Python library (`clients/python`).
//! - [`redelivery`]: a worker process holding an item is SIGKILLed: time
//!   until the item's assignment arrives at another worker.
//!
//! What they share: the worker process ([`WorkerProcess`], and
//! [`worker_main`] that runs in it) and the raw worker.

pub mod latency;
pub mod python;
pub mod redelivery;
pub mod throughput;

pub use latency::latency;
pub use python::python;
pub use redelivery::redelivery;
pub use throughput::throughput;

use anyhow::Context as _;
use async_trait::async_trait;
use jobvisor::{
    executor::{Executor, ItemContext, ItemError, ItemHandler, PrepareError, sleep::SleepExecutor},
    pb::{
        self, work_request::Kind as Up, work_response::Kind as Down,
        worker_service_client::WorkerServiceClient,
    },
    worker::{Connect, Status, Worker},
};
use std::{
    collections::BTreeMap,
    net::SocketAddr,
    process::Stdio,
    sync::Arc,
    time::{Duration, Instant},
};
use tokio::{
    io::{AsyncBufReadExt, BufReader, Lines},
    process::{Child, ChildStdout},
    sync::mpsc,
};

/// The remote executor the scenarios' servers declare.
pub const EXECUTOR: &str = "noop";

/// The hidden `remote-worker` subcommand: a worker process for the
/// scenarios, running the `sleep` executor's handler for [`EXECUTOR`]'s
/// items (with the job's params: 0 ms in one step is a no-op).
#[derive(Debug, Clone, clap::Args)]
pub struct WorkerOptions {
    /// The server, `http://host:port`.
    #[arg(long)]
    pub server: String,
    /// How many items run at once.
    #[arg(long, default_value_t = 1)]
    pub slots: u32,
    /// Print `item <job> <index> <attempt>` on stdout as each item starts.
    #[arg(long)]
    pub announce: bool,
}

/// The worker process's main: prints `connected` on stdout once a session
/// is open, and drains on SIGTERM.
pub async fn worker_main(opts: &WorkerOptions) -> anyhow::Result<()> {
    let executor: Arc<dyn Executor> = if opts.announce {
        Arc::new(Announcing)
    } else {
        Arc::new(SleepExecutor)
    };
    let connect = Connect::from_url(&opts.server)?;
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    Worker::new(connect, EXECUTOR, executor)
        .slots(opts.slots)
        .on_status(|status| {
            if let Status::Connected { session, .. } = status {
                println!("connected {session}");
            }
        })
        .run(async move {
            terminate.recv().await;
        })
        .await?;
    Ok(())
}

/// The `sleep` executor, telling stdout of each item as it starts.
struct Announcing;

impl Executor for Announcing {
    fn prepare(
        &self,
        params: &BTreeMap<String, String>,
    ) -> Result<Arc<dyn ItemHandler>, PrepareError> {
        Ok(Arc::new(Announced(SleepExecutor.prepare(params)?)))
    }
}

/// A job's `sleep` handler, announced.
struct Announced(Arc<dyn ItemHandler>);

#[async_trait]
impl ItemHandler for Announced {
    async fn run(&self, ctx: &mut ItemContext) -> Result<(), ItemError> {
        println!("item {} {} {}", ctx.job_id(), ctx.index(), ctx.attempt());
        self.0.run(ctx).await
    }
}

/// How a scenario starts a worker process for the server at an address.
pub type WorkerCommand = dyn Fn(SocketAddr) -> anyhow::Result<tokio::process::Command> + Sync;

/// A worker process (this binary's `remote-worker`, or the Python one),
/// killed if dropped.
pub struct WorkerProcess {
    child: Child,
    /// What it prints: `connected …`, and `item …` with `--announce`.
    lines: Lines<BufReader<ChildStdout>>,
}

impl WorkerProcess {
    /// Starts one for the server at `addr` and waits until it is connected.
    pub async fn start(addr: SocketAddr, slots: u32, announce: bool) -> anyhow::Result<Self> {
        Self::spawn(Self::command(addr, slots, announce)?).await
    }

    /// The command of this binary's `remote-worker` for the server at
    /// `addr`.
    pub fn command(
        addr: SocketAddr,
        slots: u32,
        announce: bool,
    ) -> anyhow::Result<tokio::process::Command> {
        let exe = std::env::current_exe().context("finding this binary")?;
        let mut command = tokio::process::Command::new(exe);
        command
            .args(["remote-worker", "--server"])
            .arg(format!("http://{addr}"))
            .args(["--slots", &slots.to_string()]);
        if announce {
            command.arg("--announce");
        }
        Ok(command)
    }

    /// Starts `command`, a worker process that prints `connected` once its
    /// session is open (this binary's or another, e.g. the Python one),
    /// and waits until it is connected.
    pub async fn spawn(mut command: tokio::process::Command) -> anyhow::Result<Self> {
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            // Its errors, if any, appear with the bench's.
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        let mut child = command
            .spawn()
            .with_context(|| format!("starting a worker process: {command:?}"))?;
        let stdout = child.stdout.take().context("the worker's stdout")?;
        let mut worker = WorkerProcess {
            child,
            lines: BufReader::new(stdout).lines(),
        };
        let line = worker.line(Duration::from_secs(15)).await?;
        anyhow::ensure!(
            line.starts_with("connected"),
            "the worker process said {line:?} before it connected"
        );
        Ok(worker)
    }

    /// The next line it prints, within `within`.
    pub async fn line(&mut self, within: Duration) -> anyhow::Result<String> {
        tokio::time::timeout(within, self.lines.next_line())
            .await
            .with_context(|| format!("the worker process said nothing within {within:?}"))??
            .context("the worker process exited")
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// SIGKILL, and waits for it to be gone.
    pub async fn kill9(&mut self) -> anyhow::Result<()> {
        self.child.start_kill().context("SIGKILL of the worker")?;
        self.child.wait().await?;
        Ok(())
    }

    /// SIGTERM (the worker drains), then SIGKILL if it is still there
    /// after `within`.
    pub async fn stop(mut self, within: Duration) -> anyhow::Result<()> {
        if let Some(pid) = self
            .child
            .id()
            .and_then(|p| rustix::process::Pid::from_raw(p as i32))
        {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        match tokio::time::timeout(within, self.child.wait()).await {
            Ok(status) => {
                let status = status?;
                anyhow::ensure!(status.success(), "the worker process ended with {status}");
                Ok(())
            }
            Err(_) => {
                self.kill9().await?;
                anyhow::bail!("the worker process did not drain within {within:?} of SIGTERM")
            }
        }
    }
}

/// A worker session of the raw protocol in this process: it reads the
/// server's messages itself, so their arrival is timed where it happens.
pub struct RawWorker {
    out: mpsc::UnboundedSender<pb::WorkRequest>,
    inbound: tonic::Streaming<pb::WorkResponse>,
    /// Keeps the pings going while the worker lives.
    pinger: tokio::task::JoinHandle<()>,
}

impl Drop for RawWorker {
    fn drop(&mut self) {
        self.pinger.abort();
    }
}

impl RawWorker {
    /// Connects (its own HTTP/2 connection) and says hello with `slots`.
    pub async fn connect(addr: SocketAddr, slots: u32) -> anyhow::Result<RawWorker> {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
            .connect()
            .await?;
        let mut client = WorkerServiceClient::new(channel);
        let (out, rx) = mpsc::unbounded_channel();
        out.send(pb::WorkRequest {
            kind: Some(Up::Hello(pb::WorkerHello {
                worker_name: format!("bench:{}", std::process::id()),
                executors: vec![EXECUTOR.into()],
                slots,
                protocol_version: 1,
                build_id: env!("CARGO_PKG_VERSION").into(),
                ..Default::default()
            })),
        })?;
        let outbound = tokio_stream::wrappers::UnboundedReceiverStream::new(rx);
        let mut inbound = client.work(outbound).await?.into_inner();
        let welcome = match inbound.message().await?.and_then(|m| m.kind) {
            Some(Down::Welcome(w)) => w,
            other => anyhow::bail!("the server's first message is not a welcome: {other:?}"),
        };
        // Ping at half the heartbeat interval the server asks for.
        let every = welcome
            .heartbeat_interval
            .and_then(|d| Duration::try_from(d).ok())
            .unwrap_or(Duration::from_secs(1))
            / 2;
        let pings = out.downgrade();
        let pinger = tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(out) = pings.upgrade() else { return };
                let ping = pb::WorkRequest {
                    kind: Some(Up::Ping(pb::WorkerPing {})),
                };
                if out.send(ping).is_err() {
                    return;
                }
            }
        });
        Ok(RawWorker {
            out,
            inbound,
            pinger,
        })
    }

    pub fn send(&self, kind: Up) -> anyhow::Result<()> {
        self.out
            .send(pb::WorkRequest { kind: Some(kind) })
            .context("the worker's stream is closed")
    }

    /// The next message that is not a ping, and when it was read.
    pub async fn next(&mut self, within: Duration) -> anyhow::Result<(Down, Instant)> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let message = tokio::time::timeout_at(deadline, self.inbound.message())
                .await
                .with_context(|| format!("no message from the server within {within:?}"))??
                .context("the server ended the worker's stream")?;
            let at = Instant::now();
            match message.kind {
                Some(Down::Ping(_)) => continue,
                Some(kind) => return Ok((kind, at)),
                None => anyhow::bail!("a message from the server without a kind"),
            }
        }
    }

    /// The next assignment (of one item), and when it arrived.
    pub async fn assignment(
        &mut self,
        within: Duration,
    ) -> anyhow::Result<(pb::Assignment, Instant)> {
        match self.next(within).await? {
            (Down::Assignments(batch), at) => {
                let [item]: [pb::Assignment; 1] = batch
                    .items
                    .try_into()
                    .map_err(|items| anyhow::anyhow!("expected one assignment, got {items:?}"))?;
                Ok((item, at))
            }
            (other, _) => anyhow::bail!("expected an assignment, got {other:?}"),
        }
    }

    /// The next interrupt, which must be for `token` with `reason`, and
    /// when it arrived.
    pub async fn interrupt(
        &mut self,
        token: u64,
        reason: pb::InterruptReason,
        within: Duration,
    ) -> anyhow::Result<Instant> {
        match self.next(within).await? {
            (Down::Interrupt(i), at) if i.tokens.contains(&token) && i.reason == reason as i32 => {
                Ok(at)
            }
            (other, _) => {
                anyhow::bail!("expected a {reason:?} interrupt of {token}, got {other:?}")
            }
        }
    }

    /// Reports the item stopped and its slot free.
    pub fn stopped(&self, token: u64) -> anyhow::Result<()> {
        self.send(Up::Stopped(pb::WorkerStopped { token }))?;
        self.send(Up::Credit(pb::WorkerCredit { slots: 1 }))
    }

    /// Reports the item succeeded and its slot free.
    pub fn succeeded(&self, token: u64) -> anyhow::Result<()> {
        self.send(Up::Succeeded(pb::WorkerSucceeded {
            token,
            ..Default::default()
        }))?;
        self.send(Up::Credit(pb::WorkerCredit { slots: 1 }))
    }
}

//! A `jobvisor serve` process under test: started on a fixed address, then
//! killed (SIGKILL), terminated (SIGTERM) and started again.

use anyhow::{Context, bail};
use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

/// A running server process.
pub struct ServerProcess {
    child: Child,
    pub addr: SocketAddr,
    log: PathBuf,
}

/// How to start the server each time.
#[derive(Debug, Clone)]
pub struct ServerSpec {
    pub binary: PathBuf,
    pub addr: SocketAddr,
    pub database_url: String,
    /// More `serve` arguments (e.g. `--allow-exec`).
    pub args: Vec<String>,
    /// Server output goes here (appended across restarts).
    pub log: PathBuf,
    /// More environment variables for the server.
    pub env: Vec<(String, String)>,
    /// The directory the server runs in (the embedded store's data dir
    /// is relative to it).
    pub cwd: Option<PathBuf>,
}

/// A free port on 127.0.0.1 (free now; the server binds it soon after).
pub fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

impl ServerProcess {
    /// Starts the server and waits until its health check says SERVING.
    pub async fn start(spec: &ServerSpec) -> anyhow::Result<ServerProcess> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&spec.log)
            .with_context(|| format!("cannot open {}", spec.log.display()))?;
        let mut command = Command::new(&spec.binary);
        if let Some(dir) = &spec.cwd {
            command.current_dir(dir);
        }
        // An empty URL: no PostgreSQL, the embedded store.
        if spec.database_url.is_empty() {
            command.env_remove("DATABASE_URL");
        } else {
            command.env("DATABASE_URL", &spec.database_url);
        }
        let child = command
            .arg("serve")
            .arg("--listen")
            .arg(spec.addr.to_string())
            .args(&spec.args)
            .env("JOBVISOR_LOG_FORMAT", "text")
            .env("JOBVISOR_METRICS_LISTEN", "off")
            .env("JOBVISOR_HTTP_LISTEN", "off")
            .envs(spec.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env(
                "RUST_LOG",
                std::env::var("CHAOS_SERVER_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {}", spec.binary.display()))?;
        let mut server = ServerProcess {
            child,
            addr: spec.addr,
            log: spec.log.clone(),
        };
        server.wait_serving(Duration::from_secs(30)).await?;
        Ok(server)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    async fn wait_serving(&mut self, within: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        let url = format!("http://{}", self.addr);
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "the server exited with {status} while starting; its log:\n{}",
                    tail(&self.log)
                );
            }
            if let Ok(channel) = tonic::transport::Endpoint::from_shared(url.clone())?
                .connect_timeout(Duration::from_millis(500))
                .connect()
                .await
            {
                let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
                let check = health.check(tonic_health::pb::HealthCheckRequest {
                    service: String::new(),
                });
                if let Ok(Ok(answer)) = tokio::time::timeout(Duration::from_secs(1), check).await
                    && answer.into_inner().status
                        == tonic_health::pb::health_check_response::ServingStatus::Serving as i32
                {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "the server did not become healthy within {within:?}; its log:\n{}",
                    tail(&self.log)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGKILL of the server and every process it started, at once, the
    /// way a container runtime or systemd kills a service's whole cgroup.
    /// (Outside such a cgroup, a bare `kill -9` of the server leaves the
    /// programs of `exec` items running until they end by themselves.)
    pub fn kill9(&mut self) -> anyhow::Result<()> {
        use rustix::process::{Pid, Signal, kill_process};
        let signal = |pid: u32, sig: Signal| {
            if let Some(pid) = Pid::from_raw(pid as i32) {
                let _ = kill_process(pid, sig);
            }
        };
        // Freeze the whole tree first, so nothing forks or writes between
        // finding the processes and killing them, then kill it all.
        let root = self.child.id();
        signal(root, Signal::STOP);
        let mut tree: Vec<u32> = Vec::new();
        loop {
            let found: Vec<u32> = descendants(root)
                .into_iter()
                .filter(|p| !tree.contains(p))
                .collect();
            if found.is_empty() {
                break;
            }
            for pid in &found {
                signal(*pid, Signal::STOP);
            }
            tree.extend(found);
        }
        self.child.kill().context("SIGKILL")?;
        for pid in tree {
            signal(pid, Signal::KILL);
        }
        self.child.wait()?;
        Ok(())
    }

    /// SIGTERM, then waits up to `within` for it to exit.
    pub async fn terminate(&mut self, within: Duration) -> anyhow::Result<ExitStatus> {
        let pid = rustix::process::Pid::from_raw(self.child.id() as i32).context("server pid")?;
        rustix::process::kill_process(pid, rustix::process::Signal::TERM).context("SIGTERM")?;
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                self.kill9()?;
                bail!("the server did not exit within {within:?} of SIGTERM");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits up to `within` for the process to exit by itself: its status,
    /// or none if it still runs.
    pub async fn wait_exit(&mut self, within: Duration) -> anyhow::Result<Option<ExitStatus>> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(Some(status));
            }
            if Instant::now() > deadline {
                return Ok(None);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGSTOP / SIGCONT: freeze and thaw the process (a zombie owner).
    pub fn freeze(&self, frozen: bool) -> anyhow::Result<()> {
        let pid = rustix::process::Pid::from_raw(self.child.id() as i32).context("server pid")?;
        let signal = if frozen {
            rustix::process::Signal::STOP
        } else {
            rustix::process::Signal::CONT
        };
        rustix::process::kill_process(pid, signal)?;
        Ok(())
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Every process descended from `root`, found through /proc.
pub fn descendants(root: u32) -> Vec<u32> {
    let mut parents: Vec<(u32, u32)> = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            // The parent pid is the second field after the ")" closing the name.
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|p| p.parse().ok());
            if let Some(ppid) = ppid {
                parents.push((pid, ppid));
            }
        }
    }
    let mut found = Vec::new();
    let mut frontier = vec![root];
    while let Some(parent) = frontier.pop() {
        for (pid, ppid) in &parents {
            if *ppid == parent && !found.contains(pid) {
                found.push(*pid);
                frontier.push(*pid);
            }
        }
    }
    found
}

/// The last lines of a log file, for error messages.
pub fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

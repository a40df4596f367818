//! A real nginx in front of a server under test: Debian's `nginx-light`
//! with `grpc_pass`, the way jobvisor is often deployed, run in the
//! foreground as a child process with everything (config, pid file, logs,
//! temp paths) in a directory of its own, on a free loopback port.
//! Killed on drop.

use crate::process::{free_port, tail};
use anyhow::{Context, bail};
use std::{
    net::SocketAddr,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// How to configure the proxy.
#[derive(Debug, Clone)]
pub struct ProxySpec {
    /// The gRPC server it passes to.
    pub upstream: SocketAddr,
    /// `grpc_read_timeout`: how long nginx waits between two reads from the
    /// server before it cuts the stream (nginx's default is 60s).
    pub read_timeout: Duration,
    /// `grpc_send_timeout`.
    pub send_timeout: Duration,
    /// `client_max_body_size`, as nginx spells it (`64k`, `1m`; nginx's
    /// default is `1m`).
    pub client_max_body_size: String,
}

impl ProxySpec {
    /// nginx's defaults in front of `upstream`.
    pub fn new(upstream: SocketAddr) -> ProxySpec {
        ProxySpec {
            upstream,
            read_timeout: Duration::from_secs(60),
            send_timeout: Duration::from_secs(60),
            client_max_body_size: "1m".into(),
        }
    }
}

/// A running nginx.
pub struct Proxy {
    child: Child,
    /// Where clients connect.
    pub addr: SocketAddr,
    /// Holds the config, logs and temp paths; removed after the process.
    dir: tempfile::TempDir,
}

/// The nginx binary, or an error saying how to install it.
pub fn nginx_binary() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("NGINX_BIN") {
        return Ok(path.into());
    }
    let candidates = std::iter::once(PathBuf::from("/usr/sbin/nginx")).chain(
        std::env::var_os("PATH")
            .map(|p| {
                std::env::split_paths(&p)
                    .map(|d| d.join("nginx"))
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default(),
    );
    for path in candidates {
        if path.is_file() {
            return Ok(path);
        }
    }
    bail!(
        "nginx is not installed (not at /usr/sbin/nginx nor on PATH): the proxy tests need a real \
         nginx with grpc_pass; install it with `apt-get install nginx-light` (.ci/run does) \
         or set NGINX_BIN"
    )
}

/// A duration as nginx reads one (whole milliseconds).
fn nginx_time(d: Duration) -> String {
    format!("{}ms", d.as_millis().max(1))
}

impl Proxy {
    /// Starts nginx and waits until it accepts connections.
    pub async fn start(spec: &ProxySpec) -> anyhow::Result<Proxy> {
        let nginx = nginx_binary()?;
        let dir = tempfile::Builder::new().prefix("jv-nginx-").tempdir()?;
        let root = dir.path();
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        // A single process (no master and workers), so killing the child
        // stops all of nginx; `user` only means something to root.
        let user = if rustix::process::geteuid().is_root() {
            "user root;"
        } else {
            ""
        };
        let config = format!(
            "{user}
daemon off;
master_process off;
pid {root}/nginx.pid;
error_log {root}/error.log info;
events {{ worker_connections 256; }}
http {{
    access_log {root}/access.log;
    client_body_temp_path {root}/body;
    proxy_temp_path {root}/proxy;
    fastcgi_temp_path {root}/fastcgi;
    uwsgi_temp_path {root}/uwsgi;
    scgi_temp_path {root}/scgi;
    server {{
        listen {addr} http2;
        client_max_body_size {body};
        location / {{
            grpc_pass grpc://{upstream};
            grpc_read_timeout {read};
            grpc_send_timeout {send};
        }}
    }}
}}
",
            root = root.display(),
            body = spec.client_max_body_size,
            upstream = spec.upstream,
            read = nginx_time(spec.read_timeout),
            send = nginx_time(spec.send_timeout),
        );
        let conf = root.join("nginx.conf");
        std::fs::write(&conf, config)?;
        let output = std::fs::File::create(root.join("stderr.log"))?;
        let child = Command::new(&nginx)
            .arg("-p")
            .arg(root)
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(output.try_clone()?)
            .stderr(output)
            .spawn()
            .with_context(|| format!("cannot start {}", nginx.display()))?;
        let mut proxy = Proxy { child, addr, dir };
        proxy.wait_accepting(Duration::from_secs(10)).await?;
        Ok(proxy)
    }

    async fn wait_accepting(&mut self, within: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "nginx exited with {status} while starting:\n{}",
                    self.logs()
                );
            }
            if tokio::net::TcpStream::connect(self.addr).await.is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "nginx did not accept connections within {within:?}:\n{}",
                    self.logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// nginx's own output and error log, for failure messages.
    pub fn logs(&self) -> String {
        format!(
            "{}\n{}",
            tail(&self.dir.path().join("stderr.log")),
            tail(&self.dir.path().join("error.log"))
        )
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

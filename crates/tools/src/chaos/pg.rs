//! A throwaway PostgreSQL cluster on its own port, so a test can stop and
//! restart the database without disturbing any other: `initdb` into a
//! temporary directory, `pg_ctl` to start, stop and restart it. Run as the
//! `postgres` user when the caller is root (PostgreSQL refuses root).

use anyhow::{Context, bail};
use std::{
    path::{Path, PathBuf},
    process::Command,
};

pub struct ThrowawayPostgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    pub port: u16,
    as_postgres: bool,
}

/// The newest installed PostgreSQL's `bin` directory.
fn find_bin() -> anyhow::Result<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .context("PostgreSQL server binaries not found under /usr/lib/postgresql")?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse().ok()?;
            Some((v, e.path().join("bin")))
        })
        .filter(|(_, bin)| bin.join("initdb").exists())
        .collect();
    versions.sort();
    versions
        .pop()
        .map(|(_, bin)| bin)
        .context("no PostgreSQL version with initdb under /usr/lib/postgresql")
}

impl ThrowawayPostgres {
    /// Creates and starts a new cluster (trust auth, user `postgres`).
    pub fn start() -> anyhow::Result<ThrowawayPostgres> {
        let bin = find_bin()?;
        let dir = tempfile::Builder::new().prefix("jv-pg-").tempdir()?;
        let as_postgres = rustix::process::geteuid().is_root();
        let pg = ThrowawayPostgres {
            port: jobvisor_testkit::process::free_port()?,
            dir,
            bin,
            as_postgres,
        };
        if as_postgres {
            pg.run("chown", &["-R", "postgres:postgres", &pg.root()])?;
        }
        let data = pg.data();
        pg.run_pg(
            "initdb",
            &["-D", &data, "-A", "trust", "-U", "postgres", "--no-sync"],
        )?;
        pg.ctl_start()?;
        Ok(pg)
    }

    fn root(&self) -> String {
        self.dir.path().display().to_string()
    }

    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    /// A connection URL for database `db` in this cluster.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    fn run(&self, program: &str, args: &[&str]) -> anyhow::Result<()> {
        let out = Command::new(program).args(args).output()?;
        if !out.status.success() {
            bail!(
                "{program} {args:?} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    fn run_pg(&self, tool: &str, args: &[&str]) -> anyhow::Result<()> {
        let path = self.bin.join(tool).display().to_string();
        if self.as_postgres {
            let mut full = vec!["-u", "postgres", "--", path.as_str()];
            full.extend_from_slice(args);
            self.run("runuser", &full)
        } else {
            self.run(&path, args)
        }
    }

    fn ctl_start(&self) -> anyhow::Result<()> {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c max_connections=200",
            self.port,
            self.root()
        );
        let log = Path::new(&self.root())
            .join("postgres.log")
            .display()
            .to_string();
        self.run_pg(
            "pg_ctl",
            &[
                "-D",
                &self.data(),
                "-o",
                &options,
                "-l",
                &log,
                "-w",
                "start",
            ],
        )
    }

    /// Stops the cluster (`fast`: sessions are cut, like a crash for them).
    pub fn stop(&self) -> anyhow::Result<()> {
        self.run_pg("pg_ctl", &["-D", &self.data(), "-m", "fast", "-w", "stop"])
    }

    /// Starts it again after `stop`.
    pub fn start_again(&self) -> anyhow::Result<()> {
        self.ctl_start()
    }
}

impl Drop for ThrowawayPostgres {
    fn drop(&mut self) {
        let _ = self.run_pg(
            "pg_ctl",
            &["-D", &self.data(), "-m", "immediate", "-w", "stop"],
        );
    }
}

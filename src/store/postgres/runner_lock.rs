//! The runner lock: one server-wide session advisory lock, held on a
//! connection of its own (not from the pool) for the server's whole life,
//! so that two servers never run the same jobs (docs/DESIGN.md, "One
//! runner per job"). A single server takes it exclusively, a multi-replica
//! server shared: replicas coexist (their leases share out the jobs), a
//! single server excludes everyone, and mixing the two is refused either
//! way.
//!
//! Every session of a server carries an `application_name` naming it
//! ([`application_name`]); a refusal names the holders from `pg_locks`
//! and `pg_stat_activity`. Nothing here runs per item or per call: one
//! `SELECT 1` a second on the lock's own connection.

use super::{PgConfig, connect_options, db_error};
use crate::{domain::Runner, store::StoreError};
use chrono::{DateTime, Utc};
use sqlx::{ConnectOptions, PgConnection, postgres::PgConnectOptions};
use std::time::{Duration, Instant};

/// The lock's key: "jobvisor" in ASCII with its lowest bit set. Being odd,
/// it is never one of sqlx's migration lock keys (0x3d32ad9e times the
/// CRC-32 of the database name: always even).
pub const RUNNER_LOCK_KEY: i64 = 0x6A6F_6276_6973_6F73;

/// How often the lock's connection is checked.
const CHECK_EVERY: Duration = Duration::from_secs(1);
/// How long a check may take before the connection counts as lost.
const CHECK_TIMEOUT: Duration = Duration::from_secs(5);
/// How long taking the lock waits for a holder, or another server's
/// sessions, to go away (a server killed a moment ago): then it refuses.
const GRACE: Duration = Duration::from_secs(3);
/// The pause between two tries within [`GRACE`].
const TICK: Duration = Duration::from_millis(250);

/// How a server shares the database with others.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunnerMode {
    /// Without --multi-replica: it alone runs jobs (the lock exclusive).
    Single,
    /// With --multi-replica: one of several replicas (the lock shared).
    Replica,
}

impl RunnerMode {
    fn prefix(self) -> &'static str {
        match self {
            RunnerMode::Single => "jobvisor serve",
            RunnerMode::Replica => "jobvisor replica",
        }
    }
}

/// The `application_name` of every session of a server:
/// `jobvisor serve PID@HOST SINCE` (`jobvisor replica …` with
/// --multi-replica), SINCE its start in RFC 3339. PostgreSQL keeps 63
/// bytes of it, so the host is shortened to fit.
pub fn application_name(mode: RunnerMode, runner: &Runner) -> String {
    let since = runner.since.format("%Y-%m-%dT%H:%M:%SZ").to_string();
    let pid = runner.pid.to_string();
    let room = 63usize.saturating_sub(mode.prefix().len() + pid.len() + since.len() + 3);
    let host: String = runner
        .host
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(room)
        .collect();
    format!("{} {pid}@{host} {since}", mode.prefix())
}

/// Another server's sessions, as `pg_stat_activity` shows them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    /// Its `application_name` (see [`application_name`]).
    pub name: String,
    /// Where it connects from; none on a local socket, or when the
    /// database's role may not see it.
    pub client: Option<String>,
    pub backend_start: Option<DateTime<Utc>>,
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = if self.name.is_empty() {
            "a session without application_name"
        } else {
            &self.name
        };
        write!(f, "{name:?}")?;
        if let Some(client) = &self.client {
            write!(f, " from {client}")?;
        }
        if let Some(start) = self.backend_start {
            write!(f, ", connected {}", start.format("%Y-%m-%dT%H:%M:%SZ"))?;
        }
        Ok(())
    }
}

fn list(holders: &[Holder]) -> String {
    holders
        .iter()
        .map(Holder::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// Why this server may not run jobs on the database.
#[derive(Debug, thiserror::Error)]
pub enum RunnerLockError {
    /// Another server holds the lock in a mode that excludes ours.
    #[error("{}", held_message(*.mode, .holders))]
    Held {
        mode: RunnerMode,
        holders: Vec<Holder>,
    },
    /// We hold the lock, but another server's sessions are still
    /// connected (its lock connection dropped while it still runs).
    #[error(
        "another jobvisor server is still connected to this database ({}): stop it, \
         or run every server with --multi-replica (JOBVISOR_MULTI_REPLICA)",
        list(.others)
    )]
    Others { others: Vec<Holder> },
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn held_message(mode: RunnerMode, holders: &[Holder]) -> String {
    match mode {
        RunnerMode::Single => format!(
            "another jobvisor server already runs the jobs of this database (held by {}): \
             stop it before starting this one, or run every server with --multi-replica \
             (JOBVISOR_MULTI_REPLICA)",
            list(holders)
        ),
        RunnerMode::Replica => format!(
            "a jobvisor server without --multi-replica runs the jobs of this database \
             (held by {}): stop it, or restart it with --multi-replica like this one",
            list(holders)
        ),
    }
}

/// The runner lock, held until dropped (its connection closes) or the
/// process ends.
pub struct RunnerLock {
    conn: PgConnection,
    options: PgConnectOptions,
    mode: RunnerMode,
}

impl RunnerLock {
    /// Takes the lock on a connection of its own, waiting a few seconds
    /// for a holder (or another server's lingering sessions) to go away
    /// before refusing. Call it before anything touches a job.
    pub async fn acquire(
        config: &PgConfig,
        mode: RunnerMode,
    ) -> Result<RunnerLock, RunnerLockError> {
        // A server that died without closing its connections leaves
        // sessions (and the lock) behind until the database notices:
        // keepalives on this session bound that to about half a minute.
        let options = connect_options(config)?.options([
            ("tcp_keepalives_idle", "10"),
            ("tcp_keepalives_interval", "5"),
            ("tcp_keepalives_count", "3"),
        ]);
        let mut conn = options.connect().await.map_err(db_error)?;
        take(&mut conn, mode, false).await?;
        Ok(RunnerLock {
            conn,
            options,
            mode,
        })
    }

    /// Keeps the lock: checks its connection every second and, when it
    /// was lost (a database restart, the session terminated), reconnects
    /// and takes the lock again. Returns only when that is refused:
    /// another server runs the jobs now, and this one must stop.
    pub async fn hold(mut self) -> RunnerLockError {
        loop {
            tokio::time::sleep(CHECK_EVERY).await;
            let check = sqlx::query("SELECT 1").execute(&mut self.conn);
            if matches!(tokio::time::timeout(CHECK_TIMEOUT, check).await, Ok(Ok(_))) {
                continue;
            }
            tracing::warn!("the connection holding the runner lock was lost: taking it again");
            loop {
                let connect = self.options.connect();
                let conn = match tokio::time::timeout(CHECK_TIMEOUT, connect).await {
                    Ok(Ok(conn)) => conn,
                    Ok(Err(e)) => {
                        tracing::debug!(error = %e, "cannot reconnect for the runner lock yet");
                        tokio::time::sleep(CHECK_EVERY).await;
                        continue;
                    }
                    Err(_) => continue,
                };
                self.conn = conn;
                match take(&mut self.conn, self.mode, true).await {
                    Ok(()) => {
                        tracing::info!("runner lock taken again");
                        break;
                    }
                    Err(RunnerLockError::Store(e)) => {
                        tracing::debug!(error = %e, "cannot take the runner lock yet");
                        tokio::time::sleep(CHECK_EVERY).await;
                    }
                    Err(refused) => return refused,
                }
            }
        }
    }
}

/// Takes the lock on `conn` in `mode`, then makes sure no other server's
/// sessions are connected; waits up to [`GRACE`] for either. `again`: the
/// lock is being taken back after a lost connection, and a holder that is
/// this server's own old session is waited for as long as it lasts (it
/// still excludes the others).
async fn take(
    conn: &mut PgConnection,
    mode: RunnerMode,
    again: bool,
) -> Result<(), RunnerLockError> {
    let deadline = Instant::now() + GRACE;
    let try_lock = match mode {
        RunnerMode::Single => "SELECT pg_try_advisory_lock($1)",
        RunnerMode::Replica => "SELECT pg_try_advisory_lock_shared($1)",
    };
    loop {
        let taken: bool = sqlx::query_scalar(try_lock)
            .bind(RUNNER_LOCK_KEY)
            .fetch_one(&mut *conn)
            .await
            .map_err(db_error)?;
        if taken {
            return check_others(conn, mode, deadline).await;
        }
        let holders = holders(conn).await?;
        let own = current_name(conn).await?;
        // Our own previous session still excludes the others: wait for it.
        let ours = again && holders.iter().all(|h| process(&h.name) == process(&own));
        if !holders.is_empty() && !ours && Instant::now() >= deadline {
            return Err(RunnerLockError::Held { mode, holders });
        }
        tokio::time::sleep(TICK).await;
    }
}

/// With the lock taken: other servers' sessions that it should have
/// excluded (a single server, for anyone; another single server, for a
/// replica) must go away within the grace, or the lock is given back.
async fn check_others(
    conn: &mut PgConnection,
    mode: RunnerMode,
    deadline: Instant,
) -> Result<(), RunnerLockError> {
    loop {
        let others = others(conn, mode).await?;
        if others.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            let unlock = match mode {
                RunnerMode::Single => "SELECT pg_advisory_unlock($1)",
                RunnerMode::Replica => "SELECT pg_advisory_unlock_shared($1)",
            };
            sqlx::query(unlock)
                .bind(RUNNER_LOCK_KEY)
                .execute(&mut *conn)
                .await
                .map_err(db_error)?;
            return Err(RunnerLockError::Others { others });
        }
        tokio::time::sleep(TICK).await;
    }
}

/// The `PID@HOST` of a server's `application_name`: sessions of one
/// process (a server restarted within a process, e.g. when embedded, or
/// its own earlier sessions) are never "another server".
fn process(name: &str) -> Option<&str> {
    name.split(' ').nth(2)
}

async fn current_name(conn: &mut PgConnection) -> Result<String, StoreError> {
    sqlx::query_scalar("SELECT current_setting('application_name')")
        .fetch_one(&mut *conn)
        .await
        .map_err(db_error)
}

/// The sessions holding the lock, one line per server.
async fn holders(conn: &mut PgConnection) -> Result<Vec<Holder>, StoreError> {
    let rows: Vec<HolderRow> = sqlx::query_as(
        "SELECT coalesce(a.application_name, ''), min(host(a.client_addr)), \
             min(a.backend_start) \
         FROM pg_locks AS l LEFT JOIN pg_stat_activity AS a ON a.pid = l.pid \
         WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 \
           AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
           AND l.classid = $1::bigint::oid AND l.objid = $2::bigint::oid \
         GROUP BY 1 ORDER BY 1",
    )
    .bind(RUNNER_LOCK_KEY >> 32)
    .bind(RUNNER_LOCK_KEY & 0xFFFF_FFFF)
    .fetch_all(&mut *conn)
    .await
    .map_err(db_error)?;
    Ok(rows.into_iter().map(holder).collect())
}

/// Sessions of other servers (other processes, see [`process`]) that
/// `mode` excludes: any other server's for a single server, single
/// servers' for a replica.
async fn others(conn: &mut PgConnection, mode: RunnerMode) -> Result<Vec<Holder>, StoreError> {
    let rows: Vec<HolderRow> = sqlx::query_as(
        "SELECT application_name, min(host(client_addr)), min(backend_start) \
         FROM pg_stat_activity \
         WHERE datname = current_database() \
           AND split_part(application_name, ' ', 3) \
               <> split_part(current_setting('application_name'), ' ', 3) \
           AND (application_name LIKE 'jobvisor serve %' \
                OR ($1 AND application_name LIKE 'jobvisor replica %')) \
         GROUP BY 1 ORDER BY 1",
    )
    .bind(mode == RunnerMode::Single)
    .fetch_all(&mut *conn)
    .await
    .map_err(db_error)?;
    Ok(rows.into_iter().map(holder).collect())
}

/// `application_name`, client address, backend start.
type HolderRow = (Option<String>, Option<String>, Option<DateTime<Utc>>);

fn holder((name, client, backend_start): HolderRow) -> Holder {
    Holder {
        name: name.unwrap_or_default(),
        client,
        backend_start,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runner(host: &str, pid: u32) -> Runner {
        Runner {
            server: host.into(),
            host: host.into(),
            pid,
            since: DateTime::parse_from_rfc3339("2026-12-07T01:47:02.5Z")
                .unwrap()
                .with_timezone(&Utc),
        }
    }

    #[test]
    fn the_application_name_names_the_server_within_postgresql_s_63_bytes() {
        assert_eq!(
            application_name(RunnerMode::Single, &runner("db-1", 4242)),
            "jobvisor serve 4242@db-1 2026-12-07T01:47:02Z"
        );
        let long = application_name(RunnerMode::Replica, &runner(&"h".repeat(80), 4_194_304));
        assert_eq!(long.len(), 63);
        assert!(long.starts_with("jobvisor replica 4194304@hhh"));
        assert!(long.ends_with(" 2026-12-07T01:47:02Z"));
    }

    #[test]
    fn the_key_is_never_a_migration_lock_key() {
        // sqlx's keys are 0x3d32ad9e × a CRC-32: even.
        const { assert!(RUNNER_LOCK_KEY % 2 == 1 && RUNNER_LOCK_KEY > 0) };
    }
}

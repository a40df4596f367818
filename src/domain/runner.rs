//! Who runs a live job: a server process, named for the operator (its id,
//! host, pid) with the time it took the job.

use chrono::{DateTime, Utc};

/// A server process that runs jobs, or the one that runs a given job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Runner {
    /// The server's id: its replica id in multi-replica mode, else
    /// `host:port`.
    pub server: String,
    pub host: String,
    /// Its process id on `host` (0: not known, e.g. a replica of an
    /// earlier version).
    pub pid: u32,
    /// For a server: when it started. For a job's runner: since when it
    /// runs the job.
    pub since: DateTime<Utc>,
}

impl Runner {
    /// This server as the runner of a job it has run since `since` at the
    /// earliest (adopted at start-up, or started later).
    pub fn running_since(&self, since: DateTime<Utc>) -> Runner {
        Runner {
            since: self.since.max(since),
            ..self.clone()
        }
    }
}

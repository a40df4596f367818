//! The engine's settings, and who this process is as a runner of jobs.

use crate::domain::{Limits, Runner};
use std::time::Duration;

/// Settings of the engine.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// How much work one StartJob may create.
    pub limits: Limits,
    /// Worker restarts a job tolerates within `restart_window`; one more
    /// fails the job.
    pub restart_budget: u32,
    pub restart_window: Duration,
    /// How often WatchJob streams send progress, at most.
    pub progress_interval: Duration,
    /// WatchJob streams are woken for new events at most once per window,
    /// and send what it gathered in one frame: a little latency for much
    /// less work per event when many watch a busy job.
    pub watch_window: Duration,
    /// How long a control call waits for the supervisor to acknowledge.
    pub control_timeout: Duration,
    /// A worker starts its next items while the outcomes of its previous
    /// ones commit (docs/DESIGN.md, Durability), up to `pipeline_depth` of them:
    /// more throughput for short items; a crash re-runs those too.
    pub pipelined_acks: bool,
    /// Outcomes a worker may have committing at once with `pipelined_acks`.
    pub pipeline_depth: u32,
    /// Ended jobs older than this are deleted (none: kept until a
    /// DeleteJob call).
    pub retention: Option<Duration>,
    /// Items the retention deletes between two reclaims of their room
    /// ([`crate::store::Store::reclaim`]); 0: never.
    pub vacuum_after: u64,
    /// Store reads WatchJob streams may run at once, all streams together
    /// (their snapshots, replay pages and polls): the rest of the
    /// database connections stay for control calls and readiness.
    pub watch_reads: usize,
    /// A WatchJob stream whose client took nothing for this long while
    /// newer events were stored ends with RESOURCE_EXHAUSTED; the client
    /// watches again from its last sequence.
    pub watch_stall: Duration,
    /// A WatchJob stream on which nothing was sent for this long gets a
    /// progress message anyway, so that proxies keep a quiet stream open.
    pub stream_keepalive: Duration,
    /// This server, as GetJob names it as the runner of its live jobs
    /// (single-server mode; a replica's jobs name their lease holder).
    pub runner: Runner,
}

/// This process as a runner of jobs, named `server`, started now.
pub fn this_process(server: impl Into<String>) -> Runner {
    Runner {
        server: server.into(),
        host: host_name(),
        pid: std::process::id(),
        since: chrono::Utc::now(),
    }
}

/// This host's name (the pod name on Kubernetes).
pub fn host_name() -> String {
    rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned()
}

impl EngineConfig {
    /// Outcomes a worker may have committing while it runs its next items:
    /// 0 unless `pipelined_acks`.
    pub fn outstanding_per_worker(&self) -> u32 {
        if self.pipelined_acks {
            self.pipeline_depth.clamp(1, 64)
        } else {
            0
        }
    }
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            limits: Limits::default(),
            restart_budget: 5,
            restart_window: Duration::from_secs(60),
            progress_interval: Duration::from_millis(500),
            watch_window: Duration::from_millis(20),
            control_timeout: Duration::from_secs(5),
            pipelined_acks: false,
            pipeline_depth: 32,
            retention: None,
            vacuum_after: 1_000_000,
            watch_reads: 4,
            watch_stall: Duration::from_secs(30),
            stream_keepalive: Duration::from_secs(15),
            runner: this_process(host_name()),
        }
    }
}

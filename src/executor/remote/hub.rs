//! The worker hub: the worker sessions connected to this server, the jobs
//! that want their slots, and the seats it grants.
//!
//! A session is one worker process's stream (`WorkerService.Work`): the
//! executors it serves, its label scope (its token's), its free slots, and
//! the items it holds, each by its fencing token. A job of a remote
//! executor says how many seats it wants (its supervisor's decision); the
//! hub grants free slots to those jobs in turn, so that several jobs of
//! one executor share its workers fairly, and never more than a job asked
//! for. A granted [`Seat`] is one slot of one session, held by the job
//! until one of its workers assigns an item through it; a seat dropped
//! unused goes back to its session at once. An item is therefore claimed
//! only once a worker has a slot for it: nothing waits claimed for a
//! worker that may never come.
//!
//! Everything here is in memory: the items' durable state is in the store,
//! written by the job's worker actors (which own the items) as for any
//! executor.

use super::link::{Dialer, FromLender, Link, PeerReplica, ToLender};
use crate::domain::JobId;
use std::{
    collections::{BTreeMap, BTreeSet, HashMap, VecDeque},
    sync::{Arc, Mutex, Weak},
    time::Duration,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// The largest number of slots one session may have.
pub const MAX_SLOTS: u32 = 1024;
/// The protocol version this server speaks.
pub const PROTOCOL_VERSION: u32 = 1;

/// Settings of the worker protocol.
#[derive(Debug, Clone)]
pub struct RemoteConfig {
    /// The executors whose items remote workers run (`--remote-executor`).
    pub executors: Vec<String>,
    /// How long a silent or disconnected worker keeps its items.
    pub lease_time: Duration,
    /// How long an interrupted item has to stop before it is revoked.
    pub interrupt_grace: Duration,
    /// The largest checkpoint a worker may save, in bytes.
    pub max_checkpoint_bytes: usize,
    /// This server's id, told to workers.
    pub server: String,
}

impl Default for RemoteConfig {
    fn default() -> Self {
        RemoteConfig {
            executors: Vec::new(),
            lease_time: Duration::from_secs(5),
            interrupt_grace: Duration::from_secs(10),
            max_checkpoint_bytes: 1024 * 1024,
            server: String::new(),
        }
    }
}

impl RemoteConfig {
    /// How often a worker must send something: three times per lease.
    pub fn heartbeat(&self) -> Duration {
        (self.lease_time / 3).max(Duration::from_millis(50))
    }
}

/// What the hub sends a session (the API turns it into protobuf).
#[derive(Debug, Clone, PartialEq)]
pub enum ToWorker {
    Assign(Vec<Assignment>),
    CheckpointSaved {
        token: u64,
        checkpoint_id: u64,
    },
    Interrupt {
        tokens: Vec<u64>,
        reason: crate::executor::StopReason,
    },
    Revoked {
        token: u64,
        reason: String,
    },
    Refused(Refusal),
    Ping,
    /// End the stream with this error.
    Close(CloseReason),
}

/// Why the server ends a session's stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    /// The server is shutting down (UNAVAILABLE).
    ShuttingDown,
    /// The worker was silent for the lease time (its items went back).
    Silent,
    /// The same session was resumed on another stream.
    Replaced,
    /// A message could not be read (INVALID_ARGUMENT); the session's
    /// items wait for the worker to reconnect.
    Invalid(String),
}

/// One attempt of one item, as sent to a worker.
#[derive(Debug, Clone, PartialEq)]
pub struct Assignment {
    pub token: u64,
    pub job: JobId,
    pub index: u32,
    pub payload: String,
    pub attempt: u32,
    pub checkpoint: Option<Vec<u8>>,
    pub params: Arc<BTreeMap<String, String>>,
    pub job_name: Arc<str>,
    pub executor: Arc<str>,
    /// The item's trace context (propagation headers), if traced.
    pub trace_context: BTreeMap<String, String>,
}

/// A worker's message about one of its items, routed to the item's
/// handler.
#[derive(Debug, Clone, PartialEq)]
pub enum ItemMsg {
    Checkpoint {
        id: u64,
        data: Vec<u8>,
    },
    Progress(f32),
    Succeeded {
        result: String,
        /// Empty: the item ran.
        skip_reason: String,
        counters: crate::domain::Counters,
    },
    Failed {
        error: String,
        permanent: bool,
        retry_after: Option<Duration>,
    },
    Stopped,
    /// The worker's session is lost (silent, or gone for the lease time).
    Lost(String),
}

impl ItemMsg {
    /// Whether the message ends the item's assignment.
    pub(crate) fn ends(&self) -> bool {
        matches!(
            self,
            ItemMsg::Succeeded { .. }
                | ItemMsg::Failed { .. }
                | ItemMsg::Stopped
                | ItemMsg::Lost(_)
        )
    }
}

/// A message refused, and why (the session continues).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub token: u64,
    pub checkpoint_id: u64,
    pub reason: &'static str,
    pub message: String,
}

impl Refusal {
    pub fn invalid(token: u64, message: impl Into<String>) -> Refusal {
        Refusal {
            token,
            checkpoint_id: 0,
            reason: "INVALID",
            message: message.into(),
        }
    }

    pub fn unexpected(message: impl Into<String>) -> Refusal {
        Refusal {
            token: 0,
            checkpoint_id: 0,
            reason: "UNEXPECTED",
            message: message.into(),
        }
    }

    fn unknown(token: u64) -> Refusal {
        Refusal {
            token,
            checkpoint_id: 0,
            reason: "UNKNOWN_TOKEN",
            message: format!(
                "token {token} is not an item this session holds (it ended, was revoked, or was never assigned here)"
            ),
        }
    }
}

/// A worker's hello, checked by the API.
#[derive(Debug, Clone)]
pub struct Hello {
    pub worker_name: String,
    pub executors: Vec<String>,
    pub slots: u32,
    pub build_id: String,
    pub resume: Option<u64>,
    pub held: Vec<u64>,
}

/// Why a hello is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HelloError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotRemote(String),
    #[error("the server is shutting down")]
    ShuttingDown,
}

/// A session attached to a stream.
pub struct Attached {
    /// Cancelled when the server ends this stream (shutdown, silence, the
    /// session resumed elsewhere): its reader stops.
    pub ended: CancellationToken,
    pub session: u64,
    /// Tells this stream apart from an earlier or later one of the same
    /// session (a resumed session).
    pub stream: u64,
    pub outbound: mpsc::UnboundedReceiver<ToWorker>,
    pub resumed: Vec<u64>,
}

/// Who a session is: its token's name and label scope.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identity {
    pub name: String,
    pub scope: BTreeMap<String, String>,
}

/// Delivers a granted seat to the job that asked for it (a job gone
/// meanwhile drops it: it goes back).
pub type Deliver = Arc<dyn Fn(Seat) + Send + Sync>;

/// Starts the supervisor of a job that waited for workers again, once a
/// worker that serves it is connected (the engine's).
pub type Waker = Arc<dyn Fn(JobId) + Send + Sync>;

/// A job that waits for workers with no supervisor: what a worker must
/// serve to wake it.
struct Parked {
    executor: Arc<str>,
    labels: Arc<BTreeMap<String, String>>,
}

struct Session {
    worker: String,
    identity: Identity,
    executors: BTreeSet<String>,
    /// Slots free for new items.
    free: u32,
    /// Slots in all: free, granted as seats, or holding an item.
    slots: u32,
    draining: bool,
    /// The stream's sender; `None` while the session is detached.
    out: Option<mpsc::UnboundedSender<ToWorker>>,
    stream: u64,
    /// Ends the current stream's reader.
    ended: CancellationToken,
    items: HashMap<u64, Route>,
}

impl Session {
    fn serves(&self, executor: &str, labels: &BTreeMap<String, String>) -> bool {
        self.out.is_some()
            && self.executors.contains(executor)
            && self
                .identity
                .scope
                .iter()
                .all(|(k, v)| labels.get(k) == Some(v))
    }

    fn send(&self, msg: ToWorker) {
        if let Some(out) = &self.out {
            let _ = out.send(msg);
        }
    }
}

struct Route {
    job: JobId,
    index: u32,
    to_handler: mpsc::UnboundedSender<ItemMsg>,
    /// The item is another replica's, lent through a link.
    lent: bool,
}

/// Who wants seats: a job of this server (`link` 0), or a job of another
/// replica borrowing through the lending link `link` (the same job may be
/// both for a moment while it moves between replicas).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct DemandKey {
    /// The job that wants seats.
    pub job: JobId,
    /// 0 for a job of this server; else the lending link it came by.
    pub link: u64,
}

impl DemandKey {
    fn local(job: JobId) -> DemandKey {
        DemandKey { job, link: 0 }
    }
}

struct Demand {
    executor: Arc<str>,
    labels: Arc<BTreeMap<String, String>>,
    /// Seats the job wants to hold in all.
    want: u32,
    /// Seats granted and not yet used or given back.
    held: u32,
    /// Of `held`, those borrowed from other replicas.
    borrowed: u32,
    deliver: Deliver,
}

/// A borrowing link to another replica, as the hub keeps it.
struct LinkEntry {
    /// The link itself (shared with its seats and items).
    link: Arc<Link>,
    /// The executors its workers serve now (its last advertisement).
    executors: BTreeSet<String>,
    /// The seats asked of it per job (the last `want` sent).
    asked: HashMap<JobId, u32>,
}

#[derive(Default)]
struct Inner {
    sessions: HashMap<u64, Session>,
    demand: HashMap<DemandKey, Demand>,
    /// The order jobs take turns in.
    turns: VecDeque<DemandKey>,
    /// Borrowing links to the other replicas, by link id.
    links: HashMap<u64, LinkEntry>,
    /// The last link id given out (borrowing and lending links alike).
    next_link: u64,
    /// RUNNING jobs whose supervisor exited because no worker served them:
    /// woken (and forgotten here) when one that serves them connects.
    parked: HashMap<JobId, Parked>,
    next_session: u64,
    next_stream: u64,
    next_token: u64,
    closed: bool,
}

/// The worker sessions of this server and the jobs that want their slots.
pub struct WorkerHub {
    config: RemoteConfig,
    inner: Mutex<Inner>,
    me: Weak<WorkerHub>,
    /// Opens borrowing links to other replicas (multi-replica mode only).
    dialer: Mutex<Option<Arc<dyn Dialer>>>,
    /// Cancelled at shutdown: lending links end.
    closing: CancellationToken,
    /// Wakes parked jobs (set by the engine).
    waker: Mutex<Option<Waker>>,
}

impl std::fmt::Debug for WorkerHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerHub")
            .field("executors", &self.config.executors)
            .finish_non_exhaustive()
    }
}

impl WorkerHub {
    pub fn new(config: RemoteConfig) -> Arc<WorkerHub> {
        // Tokens start at a random point: a worker that resumes against a
        // restarted server names tokens this process never gave out.
        let start = fastrand::u64(1..u64::MAX / 2);
        Arc::new_cyclic(|me| WorkerHub {
            config,
            inner: Mutex::new(Inner {
                next_token: start,
                next_session: fastrand::u64(1..u64::MAX / 2),
                ..Inner::default()
            }),
            me: me.clone(),
            dialer: Mutex::new(None),
            closing: CancellationToken::new(),
            waker: Mutex::new(None),
        })
    }

    /// Lets the hub borrow from other replicas, opening links with
    /// `dialer`.
    pub fn set_dialer(&self, dialer: Arc<dyn Dialer>) {
        *self.dialer.lock().expect("dialer lock") = Some(dialer);
    }

    /// Lets the hub wake the jobs that wait for workers with no
    /// supervisor, through `waker`.
    pub fn set_waker(&self, waker: Waker) {
        *self.waker.lock().expect("waker lock") = Some(waker);
    }

    /// Cancelled when the server shuts down.
    pub fn closing(&self) -> &CancellationToken {
        &self.closing
    }

    pub fn config(&self) -> &RemoteConfig {
        &self.config
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("worker hub lock")
    }

    /// Whether `name` is one of this server's remote executors.
    pub fn serves(&self, name: &str) -> bool {
        self.config.executors.iter().any(|e| e == name)
    }

    /// A worker says hello on a new stream: a new session, or one resumed.
    pub fn attach(&self, hello: Hello, identity: Identity) -> Result<Attached, HelloError> {
        for executor in &hello.executors {
            if !self.serves(executor) {
                return Err(HelloError::NotRemote(format!(
                    "executor {executor:?} is not a remote executor of this server (remote executors: {}); \
                     the operator adds it with `jobvisor serve --remote-executor {executor}`",
                    if self.config.executors.is_empty() {
                        "none".to_string()
                    } else {
                        self.config.executors.join(", ")
                    }
                )));
            }
        }
        let (tx, outbound) = mpsc::unbounded_channel();
        let ended = CancellationToken::new();
        let mut lost = Vec::new();
        let attached = {
            let mut inner = self.lock();
            if inner.closed {
                return Err(HelloError::ShuttingDown);
            }
            inner.next_stream += 1;
            let stream = inner.next_stream;
            let resumed_session = hello.resume.filter(|id| {
                inner
                    .sessions
                    .get(id)
                    .is_some_and(|s| s.identity == identity)
            });
            let (session, resumed) = match resumed_session {
                Some(id) => {
                    let s = inner.sessions.get_mut(&id).expect("checked");
                    if let Some(old) = s.out.take() {
                        let _ = old.send(ToWorker::Close(CloseReason::Replaced));
                    }
                    s.ended.cancel();
                    s.ended = ended.clone();
                    let held: BTreeSet<u64> = hello.held.iter().copied().collect();
                    // Items the worker no longer has are lost now.
                    let gone: Vec<u64> = s
                        .items
                        .keys()
                        .filter(|t| !held.contains(t))
                        .copied()
                        .collect();
                    for token in gone {
                        if let Some(route) = s.items.remove(&token) {
                            lost.push(route);
                        }
                    }
                    let resumed: Vec<u64> = hello
                        .held
                        .iter()
                        .copied()
                        .filter(|t| s.items.contains_key(t))
                        .collect();
                    for token in hello.held.iter().filter(|t| !s.items.contains_key(t)) {
                        let _ = tx.send(ToWorker::Revoked {
                            token: *token,
                            reason: "this item is no longer this worker's".into(),
                        });
                    }
                    s.out = Some(tx);
                    s.stream = stream;
                    s.executors = hello.executors.iter().cloned().collect();
                    s.worker = hello.worker_name.clone();
                    s.draining = false;
                    s.free = hello.slots;
                    // The slots it had in all: its items it still runs
                    // (and any revoked but not yet credited) are not free.
                    s.slots = s
                        .slots
                        .max(s.items.len() as u32 + hello.slots)
                        .min(MAX_SLOTS);
                    (id, resumed)
                }
                None => {
                    inner.next_session += 1;
                    let id = inner.next_session;
                    for token in &hello.held {
                        let _ = tx.send(ToWorker::Revoked {
                            token: *token,
                            reason: "the session it belonged to is gone".into(),
                        });
                    }
                    inner.sessions.insert(
                        id,
                        Session {
                            worker: hello.worker_name.clone(),
                            identity,
                            executors: hello.executors.iter().cloned().collect(),
                            free: hello.slots,
                            slots: hello.slots,
                            draining: false,
                            out: Some(tx),
                            stream,
                            ended: ended.clone(),
                            items: HashMap::new(),
                        },
                    );
                    (id, Vec::new())
                }
            };
            Attached {
                ended,
                session,
                stream,
                outbound,
                resumed,
            }
        };
        tracing::info!(session = attached.session, worker = %hello.worker_name,
            executors = ?hello.executors, slots = hello.slots, build = %hello.build_id,
            resumed = attached.resumed.len(), "worker connected");
        for route in lost {
            let _ = route
                .to_handler
                .send(ItemMsg::Lost("the worker reconnected without it".into()));
        }
        self.grant();
        self.wake_served();
        Ok(attached)
    }

    /// The worker freed `slots` slots.
    pub fn credit(&self, session: u64, slots: u32) -> Result<(), Refusal> {
        {
            let mut inner = self.lock();
            let Some(s) = inner.sessions.get_mut(&session) else {
                return Ok(());
            };
            let in_use = s.slots - s.free;
            if slots == 0 {
                return Err(Refusal::invalid(0, "credit.slots must be at least 1"));
            }
            let credited = slots.min(in_use);
            let growth = slots - credited;
            if s.slots + growth > MAX_SLOTS {
                return Err(Refusal::invalid(
                    0,
                    format!(
                        "credit.slots {slots} would give the worker {} slots; at most {MAX_SLOTS}",
                        s.slots + growth
                    ),
                ));
            }
            s.slots += growth;
            s.free += slots;
        }
        self.grant();
        Ok(())
    }

    /// The worker is going away: grant it nothing more.
    pub fn drain(&self, session: u64) {
        let mut inner = self.lock();
        if let Some(s) = inner.sessions.get_mut(&session) {
            s.draining = true;
            tracing::info!(session, worker = %s.worker, "worker draining");
        }
    }

    /// A worker's message about item `token`: to the item's handler, or
    /// refused when the session does not hold it.
    pub fn route(&self, session: u64, token: u64, msg: ItemMsg) -> Result<(), Refusal> {
        let checkpoint_id = match &msg {
            ItemMsg::Checkpoint { id, .. } => *id,
            _ => 0,
        };
        let mut inner = self.lock();
        let Some(s) = inner.sessions.get_mut(&session) else {
            return Err(Refusal::unknown(token));
        };
        let ends = msg.ends();
        let Some(route) = s.items.get(&token) else {
            return Err(Refusal {
                checkpoint_id,
                ..Refusal::unknown(token)
            });
        };
        if route.to_handler.send(msg).is_err() {
            s.items.remove(&token);
            return Err(Refusal::unknown(token));
        }
        if ends {
            s.items.remove(&token);
        }
        Ok(())
    }

    /// The session's stream ended (`stream` names which): the session
    /// keeps its items for the lease time, waiting for the worker to
    /// resume it; then they are lost.
    pub fn detach(&self, session: u64, stream: u64, why: &str) {
        {
            let mut inner = self.lock();
            let Some(s) = inner.sessions.get_mut(&session) else {
                return;
            };
            if s.stream != stream {
                return;
            }
            s.out = None;
            s.free = 0;
            tracing::info!(session, worker = %s.worker, held = s.items.len(), %why,
                "worker disconnected; its items wait for it to reconnect");
        }
        let me = self.me.clone();
        let lease = self.config.lease_time;
        tokio::spawn(async move {
            tokio::time::sleep(lease).await;
            if let Some(hub) = me.upgrade() {
                hub.expire(
                    session,
                    stream,
                    "it did not reconnect within the lease time",
                );
            }
        });
    }

    /// The session is over (its worker was silent, or did not come back):
    /// its items are lost, the handlers told.
    pub fn expire(&self, session: u64, stream: u64, why: &str) {
        let routes = {
            let mut inner = self.lock();
            match inner.sessions.get(&session) {
                Some(s) if s.stream == stream => {}
                _ => return,
            }
            let s = inner.sessions.remove(&session).expect("checked");
            s.send(ToWorker::Close(CloseReason::Silent));
            s.ended.cancel();
            if !s.items.is_empty() {
                tracing::warn!(session, worker = %s.worker, items = s.items.len(), %why,
                    "worker lost; its items go to other workers");
            }
            s.items.into_values().collect::<Vec<_>>()
        };
        let worker_why = format!("the worker was lost: {why}");
        for route in routes {
            let _ = route.to_handler.send(ItemMsg::Lost(worker_why.clone()));
        }
    }

    /// A job of a remote executor wants to hold `want` seats in all.
    pub fn want(
        &self,
        job: JobId,
        executor: &Arc<str>,
        labels: &Arc<BTreeMap<String, String>>,
        want: u32,
        deliver: &Deliver,
    ) {
        self.want_for(DemandKey::local(job), executor, labels, want, deliver);
    }

    /// `want` for a job of this server or of a borrowing replica.
    pub(crate) fn want_for(
        &self,
        key: DemandKey,
        executor: &Arc<str>,
        labels: &Arc<BTreeMap<String, String>>,
        want: u32,
        deliver: &Deliver,
    ) {
        {
            let mut inner = self.lock();
            match inner.demand.get_mut(&key) {
                Some(d) => d.want = want,
                None => {
                    inner.demand.insert(
                        key,
                        Demand {
                            executor: executor.clone(),
                            labels: labels.clone(),
                            want,
                            held: 0,
                            borrowed: 0,
                            deliver: deliver.clone(),
                        },
                    );
                    inner.turns.push_back(key);
                }
            }
        }
        self.grant();
    }

    /// The job's supervisor is gone: it wants nothing more.
    pub fn forget(&self, job: JobId) {
        self.forget_for(DemandKey::local(job));
    }

    /// `forget` for a job of this server or of a borrowing replica.
    pub(crate) fn forget_for(&self, key: DemandKey) {
        let mut inner = self.lock();
        inner.demand.remove(&key);
        inner.turns.retain(|j| *j != key);
        if key.link == 0 {
            for entry in inner.links.values_mut() {
                if entry.asked.remove(&key.job).is_some() {
                    entry.link.send(ToLender::Forget(key.job));
                }
            }
        }
    }

    /// A new link id (a lending link names its borrower's demands by it).
    pub(crate) fn new_link_id(&self) -> u64 {
        let mut inner = self.lock();
        inner.next_link += 1;
        inner.next_link
    }

    /// Whether no connected worker serves `executor` for a job with these
    /// labels.
    pub fn no_worker_for(&self, executor: &str, labels: &BTreeMap<String, String>) -> bool {
        !self.lock().served(executor, labels)
    }

    /// The job's supervisor exits because no worker serves it: remember
    /// it, to wake it once one does. Checked and recorded under the lock
    /// that a connecting worker's session is added under, so that a
    /// worker is either seen here (`false`: the job is served, its
    /// supervisor stays) or wakes the job once parked (`true`).
    pub fn park(
        &self,
        job: JobId,
        executor: &Arc<str>,
        labels: &Arc<BTreeMap<String, String>>,
    ) -> bool {
        let mut inner = self.lock();
        if inner.closed || inner.served(executor, labels) {
            return false;
        }
        inner.parked.insert(
            job,
            Parked {
                executor: executor.clone(),
                labels: labels.clone(),
            },
        );
        crate::metrics::jobs_waiting_for_workers(inner.parked.len());
        true
    }

    /// The job has a supervisor again (or is woken): it is no longer
    /// parked here.
    pub fn unpark(&self, job: JobId) {
        let mut inner = self.lock();
        if inner.parked.remove(&job).is_some() {
            crate::metrics::jobs_waiting_for_workers(inner.parked.len());
        }
    }

    /// Whether the job waits here for a worker, with no supervisor.
    pub fn parked(&self, job: JobId) -> bool {
        self.lock().parked.contains_key(&job)
    }

    /// Jobs parked here.
    #[cfg(test)]
    pub fn parked_jobs(&self) -> usize {
        self.lock().parked.len()
    }

    /// Wakes the parked jobs a connected worker (or a lending replica)
    /// serves now: they leave the set, and the engine supervises them
    /// again (it reads each job first: one paused or ended meanwhile is
    /// not started).
    fn wake_served(&self) {
        let woken: Vec<JobId> = {
            let mut inner = self.lock();
            if inner.parked.is_empty() || inner.closed {
                return;
            }
            // The executors anyone serves, first: most parked jobs wait
            // for one that nobody serves, and are passed over without
            // going through every session (this runs at each worker's
            // hello and each refresh of the other replicas).
            let offered = inner.offered();
            let served: Vec<JobId> = inner
                .parked
                .iter()
                .filter(|(_, p)| {
                    offered.contains(&*p.executor) && inner.served(&p.executor, &p.labels)
                })
                .map(|(job, _)| *job)
                .collect();
            for job in &served {
                inner.parked.remove(job);
            }
            crate::metrics::jobs_waiting_for_workers(inner.parked.len());
            served
        };
        if woken.is_empty() {
            return;
        }
        let Some(waker) = self.waker.lock().expect("waker lock").clone() else {
            return;
        };
        tracing::info!(
            jobs = woken.len(),
            "a worker serves jobs that waited for one: supervising them again"
        );
        for job in woken {
            waker(job);
        }
    }

    /// The executors served by live (connected, not draining) sessions,
    /// sorted: what this replica advertises to the others.
    pub fn live_executors(&self) -> Vec<String> {
        let inner = self.lock();
        let all: BTreeSet<&String> = inner.live_executors().collect();
        all.into_iter().cloned().collect()
    }

    /// Connected sessions, and the slots they have in all.
    pub fn census(&self) -> (usize, u32) {
        let inner = self.lock();
        let live = inner.sessions.values().filter(|s| s.out.is_some());
        live.fold((0, 0), |(n, slots), s| (n + 1, slots + s.slots))
    }

    /// Grants free slots to the jobs that want them, one seat per job in
    /// turn; delivers them outside the lock.
    fn grant(&self) {
        let mut granted: Vec<(Deliver, Seat)> = Vec::new();
        {
            let mut inner = self.lock();
            if inner.closed {
                return;
            }
            let Inner {
                sessions,
                demand,
                turns,
                links,
                ..
            } = &mut *inner;
            let mut idle_rounds = 0;
            while idle_rounds < turns.len() {
                let Some(key) = turns.pop_front() else { break };
                turns.push_back(key);
                let Some(d) = demand.get_mut(&key) else {
                    idle_rounds += 1;
                    continue;
                };
                if d.held >= d.want {
                    idle_rounds += 1;
                    continue;
                }
                // The session with the most free slots spreads the load.
                let best = sessions
                    .iter_mut()
                    .filter(|(_, s)| s.free > 0 && !s.draining && s.serves(&d.executor, &d.labels))
                    .max_by_key(|(_, s)| s.free);
                let Some((&session, s)) = best else {
                    idle_rounds += 1;
                    continue;
                };
                s.free -= 1;
                d.held += 1;
                idle_rounds = 0;
                granted.push((
                    d.deliver.clone(),
                    Seat {
                        hub: self.me.clone(),
                        job: key.job,
                        kind: SeatKind::Local {
                            session,
                            stream: s.stream,
                            key,
                        },
                        used: false,
                    },
                ));
            }
            ask_peers(demand, links);
        }
        for (deliver, seat) in granted {
            deliver(seat);
        }
    }

    /// A seat given back unused.
    fn give_back(&self, session: u64, stream: u64, key: DemandKey) {
        {
            let mut inner = self.lock();
            if let Some(d) = inner.demand.get_mut(&key) {
                d.held = d.held.saturating_sub(1);
            }
            if let Some(s) = inner.sessions.get_mut(&session)
                && s.out.is_some()
                && s.stream == stream
            {
                s.free += 1;
            }
        }
        self.grant();
    }

    /// Sends an item through a seat: the slot now holds it.
    fn assign(
        &self,
        session: u64,
        stream: u64,
        key: DemandKey,
        item: AssignItem,
    ) -> Result<(u64, mpsc::UnboundedReceiver<ItemMsg>, Arc<str>), String> {
        let job = key.job;
        let (tx, rx) = mpsc::unbounded_channel();
        let mut inner = self.lock();
        if let Some(d) = inner.demand.get_mut(&key) {
            d.held = d.held.saturating_sub(1);
        }
        inner.next_token += 1;
        let token = inner.next_token;
        let Some(s) = inner.sessions.get_mut(&session) else {
            return Err("the worker disconnected before the item was sent".into());
        };
        let Some(out) = s.out.as_ref().filter(|_| s.stream == stream) else {
            return Err("the worker disconnected before the item was sent".into());
        };
        let index = item.index;
        if out
            .send(ToWorker::Assign(vec![item.into_assignment(token, job)]))
            .is_err()
        {
            return Err("the worker disconnected before the item was sent".into());
        }
        s.items.insert(
            token,
            Route {
                job,
                index,
                to_handler: tx,
                lent: key.link != 0,
            },
        );
        Ok((token, rx, Arc::from(s.worker.as_str())))
    }

    /// Sends `msg` to a session, if it is connected.
    pub fn send(&self, session: u64, msg: ToWorker) {
        if let Some(s) = self.lock().sessions.get(&session) {
            s.send(msg);
        }
    }

    /// The item is no longer the session's (revoked after an ignored
    /// interrupt, or its lease lost): later messages for it are refused.
    pub(crate) fn revoke(&self, session: u64, token: u64, reason: &str) {
        let mut inner = self.lock();
        if let Some(s) = inner.sessions.get_mut(&session)
            && s.items.remove(&token).is_some()
        {
            s.send(ToWorker::Revoked {
                token,
                reason: reason.into(),
            });
        }
    }

    /// The item's handler ended without the worker's report (the job's
    /// supervisor stopped): forget the route.
    pub(crate) fn release(&self, session: u64, token: u64) {
        if let Some(s) = self.lock().sessions.get_mut(&session) {
            s.items.remove(&token);
        }
    }

    /// The server begins to shut down: nothing more is granted or attached,
    /// and the items its workers run for other replicas' jobs (lent through
    /// links) are interrupted as the server's own items are: their workers
    /// stop them and report them, and the replica that owns each gives it
    /// back without counting the attempt. The sessions stay open for the
    /// reports until [`close`](Self::close). Returns how many were
    /// interrupted.
    pub fn stop_lending(&self) -> usize {
        let mut inner = self.lock();
        inner.closed = true;
        let mut interrupted = 0;
        for s in inner.sessions.values() {
            let tokens: Vec<u64> = s
                .items
                .iter()
                .filter(|(_, route)| route.lent)
                .map(|(token, _)| *token)
                .collect();
            if !tokens.is_empty() {
                interrupted += tokens.len();
                s.send(ToWorker::Interrupt {
                    tokens,
                    reason: crate::executor::StopReason::Shutdown,
                });
            }
        }
        interrupted
    }

    /// Waits, at most `within`, until no lent item is left in any session
    /// (each reported, or lost with its session); whether none is.
    pub async fn lent_reported(&self, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let left: usize = {
                let inner = self.lock();
                inner
                    .sessions
                    .values()
                    .map(|s| s.items.values().filter(|r| r.lent).count())
                    .sum()
            };
            if left == 0 {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!(
                    left,
                    "shutting down with items lent to other replicas not yet reported: \
                     they are lost there, their attempts counted"
                );
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The server is shutting down: grant nothing more, end every stream.
    pub fn close(&self) {
        self.closing.cancel();
        let (sessions, links) = {
            let mut inner = self.lock();
            inner.closed = true;
            (
                std::mem::take(&mut inner.sessions),
                std::mem::take(&mut inner.links),
            )
        };
        for entry in links.into_values() {
            entry.link.broke("the server is shutting down");
        }
        for (_, s) in sessions {
            s.send(ToWorker::Close(CloseReason::ShuttingDown));
            s.ended.cancel();
            for route in s.items.into_values() {
                let _ = route
                    .to_handler
                    .send(ItemMsg::Lost("the server is shutting down".into()));
            }
        }
    }

    /// The other replicas that lend workers now (at each heartbeat): opens
    /// a link to each new one serving an executor of this server; a link
    /// to a peer no longer listed is asked for nothing more (it stays open
    /// for the items on it until it breaks).
    pub fn set_peers(&self, peers: Vec<PeerReplica>) {
        let Some(dialer) = self.dialer.lock().expect("dialer lock").clone() else {
            return;
        };
        let mut dial = Vec::new();
        {
            let mut inner = self.lock();
            if inner.closed {
                return;
            }
            let listed: BTreeSet<&str> = peers.iter().map(|p| p.id.as_str()).collect();
            for entry in inner.links.values_mut() {
                if !listed.contains(entry.link.peer()) {
                    entry.executors.clear();
                }
            }
            for peer in &peers {
                let executors: BTreeSet<String> = peer
                    .executors
                    .iter()
                    .filter(|e| self.serves(e))
                    .cloned()
                    .collect();
                if let Some(entry) = inner.links.values_mut().find(|e| e.link.peer() == peer.id) {
                    entry.executors = executors;
                    continue;
                }
                if executors.is_empty() {
                    continue;
                }
                inner.next_link += 1;
                let id = inner.next_link;
                let (tx, rx) = mpsc::unbounded_channel();
                let link = Arc::new(Link::new(peer.id.clone(), tx));
                tracing::info!(link = id, peer = %peer.id, address = %peer.address,
                    executors = ?executors, "borrowing workers from another replica");
                inner.links.insert(
                    id,
                    LinkEntry {
                        link,
                        executors,
                        asked: HashMap::new(),
                    },
                );
                dial.push((id, peer.address.clone(), rx));
            }
        }
        for (id, address, rx) in dial {
            dialer.dial(self.me.clone(), id, address, rx);
        }
        self.grant();
        // A link now offering an executor wakes the jobs waiting for it:
        // their supervisors borrow its workers.
        self.wake_served();
    }

    /// A message from the lender at the other end of link `link`.
    pub fn on_lend(&self, link: u64, msg: FromLender) {
        let Some(l) = self.lock().links.get(&link).map(|e| e.link.clone()) else {
            return;
        };
        let FromLender::Granted { job, seat_id } = msg else {
            l.on_message(msg);
            return;
        };
        let deliver = {
            let mut inner = self.lock();
            inner.demand.get_mut(&DemandKey::local(job)).map(|d| {
                d.held += 1;
                d.borrowed += 1;
                d.deliver.clone()
            })
        };
        match deliver {
            Some(deliver) => deliver(Seat {
                hub: self.me.clone(),
                job,
                kind: SeatKind::Borrowed { link: l, seat_id },
                used: false,
            }),
            None => l.send(ToLender::GiveBack(seat_id)),
        }
    }

    /// Link `link` ended: its seats are void and its items lost; a new
    /// link is opened at a later heartbeat if the peer still lends.
    pub fn link_ended(&self, link: u64, why: &str) {
        let Some(entry) = self.lock().links.remove(&link) else {
            return;
        };
        tracing::warn!(link, peer = %entry.link.peer(), %why,
            "the link to a lending replica ended; its items are lost");
        entry.link.broke(why);
    }

    /// A borrowed seat of `job` was used or given back.
    fn borrowed_seat_done(&self, job: JobId) {
        if let Some(d) = self.lock().demand.get_mut(&DemandKey::local(job)) {
            d.held = d.held.saturating_sub(1);
            d.borrowed = d.borrowed.saturating_sub(1);
        }
    }

    /// The job and index of an item a session holds (for logs).
    pub fn held(&self, session: u64, token: u64) -> Option<(JobId, u32)> {
        let inner = self.lock();
        let route = inner.sessions.get(&session)?.items.get(&token)?;
        Some((route.job, route.index))
    }
}

impl Inner {
    /// The executors of the live (connected, not draining) sessions, each
    /// once per session that serves it.
    fn live_executors(&self) -> impl Iterator<Item = &String> {
        self.sessions
            .values()
            .filter(|s| s.out.is_some() && !s.draining)
            .flat_map(|s| s.executors.iter())
    }

    /// The executors some live session or link serves: an executor not
    /// among them is served for no labels ([`Inner::served`] is false).
    fn offered(&self) -> foldhash::HashSet<&str> {
        self.live_executors()
            .chain(self.links.values().flat_map(|l| l.executors.iter()))
            .map(String::as_str)
            .collect()
    }

    /// Whether a connected worker here (not draining), or a lending
    /// replica's, serves `executor` for a job with these labels.
    fn served(&self, executor: &str, labels: &BTreeMap<String, String>) -> bool {
        self.sessions
            .values()
            .any(|s| !s.draining && s.serves(executor, labels))
            || self.links.values().any(|l| l.executors.contains(executor))
    }
}

/// Asks the lending replicas for what this server's jobs still want after
/// the local grants: each job's want, less the local seats it holds, split
/// over the links whose workers serve its executor (a link's share counts
/// the seats it granted and the job still holds, as the lender counts
/// them). Only changes are sent.
fn ask_peers(demand: &HashMap<DemandKey, Demand>, links: &mut HashMap<u64, LinkEntry>) {
    if links.is_empty() {
        return;
    }
    let mut ids: Vec<u64> = links.keys().copied().collect();
    ids.sort_unstable();
    for (key, d) in demand.iter().filter(|(k, _)| k.link == 0) {
        let serving: Vec<u64> = ids
            .iter()
            .copied()
            .filter(|id| links[id].executors.contains(&*d.executor))
            .collect();
        let local = d.held.saturating_sub(d.borrowed);
        let shares = super::link::split(d.want.saturating_sub(local), serving.len());
        for id in &ids {
            let share = serving
                .iter()
                .position(|s| s == id)
                .map_or(0, |i| shares[i]);
            let entry = links.get_mut(id).expect("listed");
            if entry.asked.get(&key.job).copied().unwrap_or(0) == share {
                continue;
            }
            entry.asked.insert(key.job, share);
            entry.link.send(ToLender::Want {
                job: key.job,
                executor: d.executor.clone(),
                labels: d.labels.clone(),
                seats: share,
            });
        }
    }
}

/// What a job's handler sends for an item.
pub(crate) struct AssignItem {
    pub index: u32,
    pub payload: String,
    pub attempt: u32,
    pub checkpoint: Option<Vec<u8>>,
    pub params: Arc<BTreeMap<String, String>>,
    pub job_name: Arc<str>,
    pub executor: Arc<str>,
    /// The item's trace context (propagation headers), if traced.
    pub trace_context: BTreeMap<String, String>,
}

impl AssignItem {
    /// The assignment a worker gets for it, under `token`.
    pub(crate) fn into_assignment(self, token: u64, job: JobId) -> Assignment {
        Assignment {
            token,
            job,
            index: self.index,
            payload: self.payload,
            attempt: self.attempt,
            checkpoint: self.checkpoint,
            params: self.params,
            job_name: self.job_name,
            executor: self.executor,
            trace_context: self.trace_context,
        }
    }

    /// Item `index` of a job of executor `ocr`, for tests.
    #[cfg(test)]
    pub(crate) fn for_test(index: u32) -> AssignItem {
        AssignItem {
            index,
            payload: String::new(),
            attempt: 1,
            checkpoint: None,
            params: Arc::default(),
            job_name: Arc::from("j"),
            executor: Arc::from("ocr"),
            trace_context: BTreeMap::new(),
        }
    }
}

#[cfg(test)]
impl Hello {
    /// A worker `w` of executor `ocr` with `slots` slots, for tests.
    pub(crate) fn for_test(slots: u32) -> Hello {
        Hello {
            worker_name: "w".into(),
            executors: vec!["ocr".into()],
            slots,
            build_id: String::new(),
            resume: None,
            held: Vec::new(),
        }
    }
}

/// One free slot of one worker, granted to a job: of a session of this
/// server, or borrowed from another replica through a link. Dropped
/// unused, it goes back.
pub struct Seat {
    hub: Weak<WorkerHub>,
    /// The job it was granted to.
    job: JobId,
    /// Where the slot is.
    kind: SeatKind,
    /// Assigned (or being assigned): not given back on drop.
    used: bool,
}

/// Where a seat's slot is.
enum SeatKind {
    /// A slot of a session of this server.
    Local {
        session: u64,
        /// The stream it was granted on: a seat of a stream since broken
        /// is void (the resumed worker counted its free slots afresh).
        stream: u64,
        /// The demand it was granted to.
        key: DemandKey,
    },
    /// A slot of a worker of another replica, lent through `link`.
    Borrowed { link: Arc<Link>, seat_id: u64 },
}

impl std::fmt::Debug for Seat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut d = f.debug_struct("Seat");
        match &self.kind {
            SeatKind::Local { session, .. } => d.field("session", session),
            SeatKind::Borrowed { link, seat_id } => {
                d.field("peer", &link.peer()).field("seat", seat_id)
            }
        };
        d.field("job", &self.job).finish()
    }
}

/// An item sent to a worker: its token, where the worker's messages about
/// it arrive, the worker's name, and the way back to the worker.
pub(crate) struct Assigned {
    /// The item's fencing token (the worker session's).
    pub token: u64,
    /// Where the worker's messages about the item arrive.
    pub inbox: mpsc::UnboundedReceiver<ItemMsg>,
    /// The worker's name, for errors and logs.
    pub worker: Arc<str>,
    /// The way back to the worker.
    pub via: Via,
}

/// The way to the worker that holds an item: its session here, or the
/// link to the replica it is connected to.
#[derive(Clone)]
pub(crate) enum Via {
    Local { hub: Arc<WorkerHub>, session: u64 },
    Link(Arc<Link>),
}

impl Via {
    /// Sends `msg` about item `token` to its worker.
    pub fn send(&self, token: u64, msg: ToWorker) {
        match self {
            Via::Local { hub, session } => hub.send(*session, msg),
            Via::Link(link) => link.to_worker(token, msg),
        }
    }

    /// The item is no longer the worker's: it is told, and later messages
    /// for it are refused.
    pub fn revoke(&self, token: u64, reason: &str) {
        match self {
            Via::Local { hub, session } => hub.revoke(*session, token, reason),
            Via::Link(link) => link.revoke(token, reason),
        }
    }

    /// The item's handler ended: forget the route.
    pub fn release(&self, token: u64) {
        match self {
            Via::Local { hub, session } => hub.release(*session, token),
            Via::Link(link) => link.release(token),
        }
    }
}

impl Seat {
    /// Sends the item to the worker; the slot now holds it.
    pub(crate) async fn assign(mut self, item: AssignItem) -> Result<Assigned, String> {
        self.used = true;
        let hub = self
            .hub
            .upgrade()
            .ok_or_else(|| "the server is shutting down".to_string())?;
        match &self.kind {
            SeatKind::Local {
                session,
                stream,
                key,
            } => {
                let (token, inbox, worker) = hub.assign(*session, *stream, *key, item)?;
                Ok(Assigned {
                    token,
                    inbox,
                    worker,
                    via: Via::Local {
                        hub: hub.clone(),
                        session: *session,
                    },
                })
            }
            SeatKind::Borrowed { link, seat_id } => {
                hub.borrowed_seat_done(self.job);
                let (token, inbox, worker) = link.assign(*seat_id, self.job, item).await?;
                Ok(Assigned {
                    token,
                    inbox,
                    worker,
                    via: Via::Link(link.clone()),
                })
            }
        }
    }
}

impl Drop for Seat {
    fn drop(&mut self) {
        if self.used {
            return;
        }
        let Some(hub) = self.hub.upgrade() else {
            return;
        };
        match &self.kind {
            SeatKind::Local {
                session,
                stream,
                key,
            } => hub.give_back(*session, *stream, *key),
            SeatKind::Borrowed { link, seat_id } => {
                link.send(ToLender::GiveBack(*seat_id));
                hub.borrowed_seat_done(self.job);
                hub.grant();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex as StdMutex;

    fn hello(slots: u32) -> Hello {
        Hello::for_test(slots)
    }

    fn hub() -> Arc<WorkerHub> {
        WorkerHub::new(RemoteConfig {
            executors: vec!["ocr".into()],
            ..RemoteConfig::default()
        })
    }

    /// A job's demand: the seats it was granted land in the returned list.
    fn job(
        hub: &WorkerHub,
        want: u32,
        labels: &[(&str, &str)],
    ) -> (JobId, Arc<StdMutex<Vec<Seat>>>) {
        let id = JobId::new();
        let got = Arc::new(StdMutex::new(Vec::new()));
        let sink = got.clone();
        let deliver: Deliver = Arc::new(move |seat| sink.lock().unwrap().push(seat));
        let labels = Arc::new(
            labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        hub.want(id, &Arc::from("ocr"), &labels, want, &deliver);
        (id, got)
    }

    fn item(index: u32) -> AssignItem {
        AssignItem::for_test(index)
    }

    /// A hub whose woken jobs land in the returned list.
    fn waking_hub() -> (Arc<WorkerHub>, Arc<StdMutex<Vec<JobId>>>) {
        let hub = hub();
        let woken = Arc::new(StdMutex::new(Vec::new()));
        let sink = woken.clone();
        hub.set_waker(Arc::new(move |job| sink.lock().unwrap().push(job)));
        (hub, woken)
    }

    fn labels(pairs: &[(&str, &str)]) -> Arc<BTreeMap<String, String>> {
        Arc::new(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    #[test]
    fn a_job_parks_only_while_no_worker_serves_it_and_a_worker_that_does_wakes_it() {
        let (hub, woken) = waking_hub();
        let ocr: Arc<str> = Arc::from("ocr");
        let video = labels(&[("team", "video")]);
        let job = JobId::new();
        assert!(hub.park(job, &ocr, &video));
        assert!(hub.parked(job));
        assert_eq!(hub.parked_jobs(), 1);
        // A worker scoped to another team does not serve it: it stays.
        let audio = Identity {
            name: "audio".into(),
            scope: [("team".to_string(), "audio".to_string())].into(),
        };
        let _scoped = hub.attach(hello(2), audio).unwrap();
        assert!(woken.lock().unwrap().is_empty());
        assert!(hub.parked(job));
        // One that serves it wakes it, once, and it leaves the set.
        let _w = hub.attach(hello(2), Identity::default()).unwrap();
        assert_eq!(*woken.lock().unwrap(), [job]);
        assert!(!hub.parked(job));
        assert_eq!(hub.parked_jobs(), 0);
        // Served now: it is not parked (its supervisor stays).
        assert!(!hub.park(job, &ocr, &video));
        assert!(!hub.park(JobId::new(), &ocr, &labels(&[])));
        assert_eq!(hub.parked_jobs(), 0);
        let _again = hub.attach(hello(1), Identity::default()).unwrap();
        assert_eq!(woken.lock().unwrap().len(), 1, "woken once");
    }

    #[test]
    fn a_worker_wakes_the_jobs_of_its_executors_only() {
        let (hub, woken) = waking_hub();
        let (ocr, tts): (Arc<str>, Arc<str>) = (Arc::from("ocr"), Arc::from("tts"));
        let speech: Vec<JobId> = (0..3).map(|_| JobId::new()).collect();
        for job in &speech {
            assert!(hub.park(*job, &tts, &labels(&[])));
        }
        let read = JobId::new();
        assert!(hub.park(read, &ocr, &labels(&[])));
        let _w = hub.attach(hello(1), Identity::default()).unwrap();
        assert_eq!(*woken.lock().unwrap(), [read]);
        for job in &speech {
            assert!(hub.parked(*job), "nobody serves tts: still parked");
        }
        assert_eq!(hub.parked_jobs(), 3);
    }

    #[test]
    fn a_job_supervised_again_is_not_woken() {
        let (hub, woken) = waking_hub();
        let job = JobId::new();
        assert!(hub.park(job, &Arc::from("ocr"), &labels(&[])));
        // A resume or a cancel started a supervisor meanwhile.
        hub.unpark(job);
        assert!(!hub.parked(job));
        let _w = hub.attach(hello(1), Identity::default()).unwrap();
        assert!(woken.lock().unwrap().is_empty());
    }

    #[test]
    fn seats_go_to_the_jobs_in_turn_and_never_beyond_what_they_want() {
        let hub = hub();
        let (a, got_a) = job(&hub, 10, &[]);
        let (b, got_b) = job(&hub, 1, &[]);
        let _w = hub.attach(hello(5), Identity::default()).unwrap();
        assert_eq!(got_b.lock().unwrap().len(), 1, "b wanted one");
        assert_eq!(got_a.lock().unwrap().len(), 4, "a the rest");
        // A seat given back goes to whoever still wants one: a, once b
        // is gone.
        hub.forget(b);
        let seat = got_b.lock().unwrap().pop();
        drop(seat);
        assert_eq!(got_a.lock().unwrap().len(), 5);
        hub.forget(a);
    }

    #[tokio::test]
    async fn shutting_down_interrupts_the_lent_items_only_grants_nothing_more_and_waits_for_their_reports()
     {
        let hub = hub();
        let (_, local) = job(&hub, 1, &[]);
        // A job of another replica, borrowing through link 7.
        let lent_seats = Arc::new(StdMutex::new(Vec::new()));
        let sink = lent_seats.clone();
        let deliver: Deliver = Arc::new(move |seat| sink.lock().unwrap().push(seat));
        let borrowed = DemandKey {
            job: JobId::new(),
            link: 7,
        };
        hub.want_for(borrowed, &Arc::from("ocr"), &labels(&[]), 1, &deliver);
        let mut w = hub.attach(hello(3), Identity::default()).unwrap();
        let seat = local.lock().unwrap().pop().unwrap();
        let mine = seat.assign(item(0)).await.unwrap();
        let seat = lent_seats.lock().unwrap().pop().unwrap();
        let lent = seat.assign(item(1)).await.unwrap();
        for _ in 0..2 {
            assert!(matches!(w.outbound.recv().await, Some(ToWorker::Assign(_))));
        }
        assert_eq!(hub.stop_lending(), 1);
        match w.outbound.recv().await {
            Some(ToWorker::Interrupt { tokens, reason }) => {
                assert_eq!(
                    (tokens, reason),
                    (vec![lent.token], crate::executor::StopReason::Shutdown)
                );
            }
            other => panic!("expected the lent item interrupted, got {other:?}"),
        }
        // The worker's free slot goes to no one now.
        let (_, late) = job(&hub, 1, &[]);
        assert!(late.lock().unwrap().is_empty());
        assert!(!hub.lent_reported(Duration::from_millis(30)).await);
        hub.route(w.session, lent.token, ItemMsg::Stopped).unwrap();
        assert!(hub.lent_reported(Duration::ZERO).await);
        // The server's own item is the engine's to stop: left alone here.
        assert!(w.outbound.try_recv().is_err());
        hub.route(w.session, mine.token, ItemMsg::Stopped).unwrap();
    }

    #[test]
    fn a_scoped_worker_s_slots_go_only_to_jobs_within_its_scope() {
        let hub = hub();
        let (_, other) = job(&hub, 2, &[("team", "video")]);
        let (_, mine) = job(&hub, 2, &[("team", "audio"), ("tier", "x")]);
        let scope = Identity {
            name: "audio".into(),
            scope: [("team".to_string(), "audio".to_string())].into(),
        };
        let _w = hub.attach(hello(4), scope).unwrap();
        assert_eq!(mine.lock().unwrap().len(), 2);
        assert!(other.lock().unwrap().is_empty());
        assert!(hub.no_worker_for("ocr", &[("team".to_string(), "video".to_string())].into()));
    }

    #[tokio::test]
    async fn an_assignment_routes_the_workers_messages_until_its_outcome() {
        let hub = hub();
        let (first, got) = job(&hub, 1, &[]);
        let mut w = hub.attach(hello(1), Identity::default()).unwrap();
        let seat = got.lock().unwrap().pop().unwrap();
        let Assigned {
            token, mut inbox, ..
        } = seat.assign(item(3)).await.unwrap();
        assert!(
            matches!(w.outbound.recv().await, Some(ToWorker::Assign(a)) if a[0].token == token)
        );
        hub.route(w.session, token, ItemMsg::Progress(0.5)).unwrap();
        hub.route(
            w.session,
            token,
            ItemMsg::Succeeded {
                result: "r".into(),
                skip_reason: String::new(),
                counters: Default::default(),
            },
        )
        .unwrap();
        assert_eq!(inbox.recv().await, Some(ItemMsg::Progress(0.5)));
        assert!(matches!(
            inbox.recv().await,
            Some(ItemMsg::Succeeded { .. })
        ));
        // Ended: anything more for it is refused.
        let refused = hub.route(w.session, token, ItemMsg::Stopped).unwrap_err();
        assert_eq!(refused.reason, "UNKNOWN_TOKEN");
        // The slot stays in use until the worker credits it.
        hub.forget(first);
        let (_, more) = job(&hub, 1, &[]);
        assert!(more.lock().unwrap().is_empty());
        hub.credit(w.session, 1).unwrap();
        assert_eq!(more.lock().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn a_seat_granted_before_a_stream_broke_is_void_after_the_worker_resumes() {
        let hub = hub();
        let (_, got) = job(&hub, 1, &[]);
        let w = hub.attach(hello(1), Identity::default()).unwrap();
        let stale = got.lock().unwrap().pop().unwrap();
        hub.detach(w.session, w.stream, "test");
        let resumed = hub
            .attach(
                Hello {
                    resume: Some(w.session),
                    ..hello(1)
                },
                Identity::default(),
            )
            .unwrap();
        assert_eq!(resumed.session, w.session);
        // The stale seat sends nothing (the resumed worker counted its
        // free slots afresh)…
        assert!(stale.assign(item(0)).await.is_err());
        // …and, used up, it no longer counts: the resumed worker's free
        // slot goes to the job.
        hub.credit(resumed.session, 1).ok();
        assert_eq!(got.lock().unwrap().len(), 1);
    }

    /// A dialer that keeps the links' outboxes instead of connecting.
    #[derive(Default)]
    struct Dialed(StdMutex<Vec<(u64, mpsc::UnboundedReceiver<ToLender>)>>);

    impl Dialer for Dialed {
        fn dial(
            &self,
            _hub: Weak<WorkerHub>,
            link: u64,
            _address: String,
            out: mpsc::UnboundedReceiver<ToLender>,
        ) {
            self.0.lock().unwrap().push((link, out));
        }
    }

    /// A hub that borrows from one peer, "b", lending workers of "ocr".
    fn borrowing() -> (Arc<WorkerHub>, u64, mpsc::UnboundedReceiver<ToLender>) {
        let hub = hub();
        let dialed = Arc::new(Dialed::default());
        hub.set_dialer(dialed.clone());
        hub.set_peers(vec![PeerReplica {
            id: "b".into(),
            address: "10.0.0.2:50051".into(),
            executors: vec!["ocr".into(), "not-remote-here".into()],
        }]);
        // Listed again: the same link.
        hub.set_peers(vec![PeerReplica {
            id: "b".into(),
            address: "10.0.0.2:50051".into(),
            executors: vec!["ocr".into()],
        }]);
        let (link, out) = dialed.0.lock().unwrap().pop().unwrap();
        assert!(dialed.0.lock().unwrap().is_empty(), "one link per peer");
        (hub, link, out)
    }

    #[tokio::test]
    async fn a_job_borrows_only_what_local_workers_do_not_grant_and_gives_back_what_it_does_not_use()
     {
        let (hub, link, mut out) = borrowing();
        let _w = hub.attach(hello(1), Identity::default()).unwrap();
        let (id, got) = job(&hub, 3, &[]);
        assert_eq!(got.lock().unwrap().len(), 1, "the local slot");
        assert!(
            matches!(out.try_recv(), Ok(ToLender::Want { job, seats: 2, .. }) if job == id),
            "the peer is asked for the rest"
        );
        hub.on_lend(
            link,
            FromLender::Granted {
                job: id,
                seat_id: 7,
            },
        );
        assert_eq!(got.lock().unwrap().len(), 2, "a borrowed seat arrives");
        assert!(
            out.try_recv().is_err(),
            "nothing changed: nothing more asked"
        );
        let borrowed = got.lock().unwrap().pop().unwrap();
        drop(borrowed);
        assert!(matches!(out.try_recv(), Ok(ToLender::GiveBack(7))));
        // A grant for a job that wants nothing here goes back at once.
        hub.on_lend(
            link,
            FromLender::Granted {
                job: JobId::new(),
                seat_id: 8,
            },
        );
        assert!(matches!(out.try_recv(), Ok(ToLender::GiveBack(8))));
        hub.forget(id);
        assert!(matches!(out.try_recv(), Ok(ToLender::Forget(job)) if job == id));
        assert!(!hub.no_worker_for("ocr", &BTreeMap::new()));
    }

    #[tokio::test]
    async fn an_item_on_a_borrowed_seat_is_routed_through_its_link_and_lost_when_the_link_breaks() {
        let (hub, link, mut out) = borrowing();
        let (id, got) = job(&hub, 1, &[]);
        assert!(matches!(
            out.try_recv(),
            Ok(ToLender::Want { seats: 1, .. })
        ));
        hub.on_lend(
            link,
            FromLender::Granted {
                job: id,
                seat_id: 1,
            },
        );
        let seat = got.lock().unwrap().pop().unwrap();
        let assigning = tokio::spawn(seat.assign(item(4)));
        let Some(ToLender::Assign { seat_id: 1, item }) = out.recv().await else {
            panic!("the item goes to the lender");
        };
        assert_eq!((item.job, item.index), (id, 4));
        hub.on_lend(
            link,
            FromLender::Assigned {
                seat_id: 1,
                token: 42,
                worker: "w".into(),
            },
        );
        let Assigned {
            token,
            mut inbox,
            worker,
            via,
        } = assigning.await.unwrap().unwrap();
        assert_eq!((token, &*worker), (42, "w"));
        hub.on_lend(
            link,
            FromLender::Item {
                token,
                msg: ItemMsg::Progress(0.5),
            },
        );
        assert_eq!(inbox.recv().await, Some(ItemMsg::Progress(0.5)));
        via.send(
            token,
            ToWorker::CheckpointSaved {
                token,
                checkpoint_id: 3,
            },
        );
        assert!(matches!(
            out.try_recv(),
            Ok(ToLender::ToWorker {
                token: 42,
                msg: ToWorker::CheckpointSaved {
                    checkpoint_id: 3,
                    ..
                }
            })
        ));
        hub.link_ended(link, "connection reset");
        assert!(
            matches!(inbox.recv().await, Some(ItemMsg::Lost(why)) if why.contains("connection reset"))
        );
        assert!(
            hub.no_worker_for("ocr", &BTreeMap::new()),
            "the link is gone"
        );
    }

    #[test]
    fn credits_are_bounded() {
        let hub = hub();
        let w = hub.attach(hello(MAX_SLOTS), Identity::default()).unwrap();
        let refused = hub.credit(w.session, 1).unwrap_err();
        assert_eq!(refused.reason, "INVALID");
        assert!(refused.message.contains("at most 1024"), "{refused:?}");
        assert_eq!(hub.credit(w.session, 0).unwrap_err().reason, "INVALID");
    }

    #[test]
    fn a_worker_may_serve_only_remote_executors() {
        let hub = hub();
        let err = hub
            .attach(
                Hello {
                    executors: vec!["sleep".into()],
                    ..hello(1)
                },
                Identity::default(),
            )
            .err()
            .unwrap();
        assert!(
            matches!(err, HelloError::NotRemote(why) if why.contains("--remote-executor sleep"))
        );
    }
}

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
    fn ends(&self) -> bool {
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
}

struct Demand {
    executor: Arc<str>,
    labels: Arc<BTreeMap<String, String>>,
    /// Seats the job wants to hold in all.
    want: u32,
    /// Seats granted and not yet used or given back.
    held: u32,
    deliver: Deliver,
}

#[derive(Default)]
struct Inner {
    sessions: HashMap<u64, Session>,
    demand: HashMap<JobId, Demand>,
    /// The order jobs take turns in.
    turns: VecDeque<JobId>,
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
        })
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
                    s.slots = (s.items.len() as u32 + hello.slots).min(MAX_SLOTS);
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
        {
            let mut inner = self.lock();
            match inner.demand.get_mut(&job) {
                Some(d) => d.want = want,
                None => {
                    inner.demand.insert(
                        job,
                        Demand {
                            executor: executor.clone(),
                            labels: labels.clone(),
                            want,
                            held: 0,
                            deliver: deliver.clone(),
                        },
                    );
                    inner.turns.push_back(job);
                }
            }
        }
        self.grant();
    }

    /// The job's supervisor is gone: it wants nothing more.
    pub fn forget(&self, job: JobId) {
        let mut inner = self.lock();
        inner.demand.remove(&job);
        inner.turns.retain(|j| *j != job);
    }

    /// Whether no connected worker serves `executor` for a job with these
    /// labels.
    pub fn no_worker_for(&self, executor: &str, labels: &BTreeMap<String, String>) -> bool {
        let inner = self.lock();
        !inner
            .sessions
            .values()
            .any(|s| !s.draining && s.serves(executor, labels))
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
                ..
            } = &mut *inner;
            let mut idle_rounds = 0;
            while idle_rounds < turns.len() {
                let Some(job) = turns.pop_front() else { break };
                turns.push_back(job);
                let Some(d) = demand.get_mut(&job) else {
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
                        session,
                        stream: s.stream,
                        job,
                        used: false,
                    },
                ));
            }
        }
        for (deliver, seat) in granted {
            deliver(seat);
        }
    }

    /// A seat given back unused.
    fn give_back(&self, session: u64, stream: u64, job: JobId) {
        {
            let mut inner = self.lock();
            if let Some(d) = inner.demand.get_mut(&job) {
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
        job: JobId,
        item: AssignItem,
    ) -> Result<(u64, mpsc::UnboundedReceiver<ItemMsg>, Arc<str>), String> {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut inner = self.lock();
        if let Some(d) = inner.demand.get_mut(&job) {
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
        let assignment = Assignment {
            token,
            job,
            index: item.index,
            payload: item.payload,
            attempt: item.attempt,
            checkpoint: item.checkpoint,
            params: item.params,
            job_name: item.job_name,
            executor: item.executor,
        };
        if out.send(ToWorker::Assign(vec![assignment])).is_err() {
            return Err("the worker disconnected before the item was sent".into());
        }
        s.items.insert(
            token,
            Route {
                job,
                index: item.index,
                to_handler: tx,
            },
        );
        Ok((token, rx, Arc::from(s.worker.as_str())))
    }

    /// Sends `msg` to a session, if it is connected.
    pub(crate) fn send(&self, session: u64, msg: ToWorker) {
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

    /// The server is shutting down: grant nothing more, end every stream.
    pub fn close(&self) {
        let sessions = {
            let mut inner = self.lock();
            inner.closed = true;
            std::mem::take(&mut inner.sessions)
        };
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

    /// The job and index of an item a session holds (for logs).
    pub fn held(&self, session: u64, token: u64) -> Option<(JobId, u32)> {
        let inner = self.lock();
        let route = inner.sessions.get(&session)?.items.get(&token)?;
        Some((route.job, route.index))
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
}

/// One free slot of one worker session, granted to a job. Dropped unused,
/// it goes back to the session.
pub struct Seat {
    hub: Weak<WorkerHub>,
    session: u64,
    /// The stream it was granted on: a seat of a stream since broken is
    /// void (the resumed worker counted its free slots afresh).
    stream: u64,
    job: JobId,
    used: bool,
}

impl std::fmt::Debug for Seat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Seat")
            .field("session", &self.session)
            .field("job", &self.job)
            .finish()
    }
}

impl Seat {
    pub fn session(&self) -> u64 {
        self.session
    }

    /// Sends the item to the worker; the slot now holds it. Returns the
    /// item's token, where the worker's messages about it arrive, and the
    /// worker's name.
    pub(crate) fn assign(
        mut self,
        item: AssignItem,
    ) -> Result<(u64, mpsc::UnboundedReceiver<ItemMsg>, Arc<str>), String> {
        self.used = true;
        let hub = self
            .hub
            .upgrade()
            .ok_or_else(|| "the server is shutting down".to_string())?;
        hub.assign(self.session, self.stream, self.job, item)
    }
}

impl Drop for Seat {
    fn drop(&mut self) {
        if !self.used
            && let Some(hub) = self.hub.upgrade()
        {
            hub.give_back(self.session, self.stream, self.job);
        }
    }
}

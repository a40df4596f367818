//! The worker's loop: open a stream, say hello, run the assigned items,
//! relay what their handlers report, keep the session alive, and when the
//! stream breaks, reconnect and resume it while the items keep running.
//!
//! One task owns all the state ([`State`]); item handlers run in tasks of
//! their own and reach it through a channel ([`Event`]) or by returning.
//!
//! Slot accounting across reconnections: a hello's `slots` is this
//! worker's slots minus every item it still has (running, or ended with an
//! outcome not yet reported), and each of those items is then credited
//! back on that session exactly once, when it goes (reported, or revoked
//! and its handler returned). An item that goes while no hello is out is
//! not credited: the next hello counts its slot as free.

use super::{
    Connect, MAX_RESULT_BYTES, MAX_SLOTS, PROTOCOL_VERSION, Status, StatusFn, Worker, WorkerError,
};
use crate::{
    domain::JobId,
    executor::{
        CheckpointError, CheckpointSink, Executor, ItemContext, ItemError, ItemHandler,
        ProgressSink, StopReason,
    },
    pb::{
        self, work_request::Kind as Up, work_response::Kind as Down,
        worker_service_client::WorkerServiceClient,
    },
};
use async_trait::async_trait;
use futures::FutureExt as _;
use std::{
    collections::{BTreeMap, HashMap, HashSet},
    future::Future,
    panic::AssertUnwindSafe,
    pin::{Pin, pin},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};
use tokio::{
    sync::{mpsc, oneshot, watch},
    task::JoinSet,
    time::Instant,
};
use tokio_stream::wrappers::UnboundedReceiverStream;
use tracing::Instrument as _;

/// How long opening a stream may take, hello to welcome.
const OPEN_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a drained worker waits for the server to end the stream after
/// its last report, so the reports are read before the connection goes.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// Prepared handlers of jobs with no item here are kept up to this many.
const IDLE_HANDLERS: usize = 64;
/// The largest message a worker accepts (assignments carry checkpoints).
const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;
/// Used when a welcome leaves them out (a server against the contract).
const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(5);
const DEFAULT_LEASE: Duration = Duration::from_secs(15);

/// What an item's handler asks of the loop.
enum Event {
    /// Save a checkpoint; answer once the server committed it.
    Checkpoint {
        token: u64,
        id: u64,
        data: Vec<u8>,
        reply: oneshot::Sender<Result<(), CheckpointError>>,
    },
    /// Show the item's progress.
    Progress { token: u64, fraction: f32 },
}

/// An item this worker holds: from its assignment until its slot is free.
struct Held {
    /// Its job's id, to keep the job's prepared handler while it runs.
    job: String,
    /// Its handler's stop signal (interrupts, revocation, the drain).
    stop: watch::Sender<Option<StopReason>>,
    /// No longer this worker's: its messages are dropped, its checkpoints
    /// fail; it waits only for its handler to return.
    revoked: bool,
    /// Checkpoints sent (or to send after a reconnection), by id, with
    /// the handler waiting for each.
    checkpoints: BTreeMap<u64, PendingCheckpoint>,
    /// How it ended, once its handler returned, until it is reported (the
    /// stream was broken then).
    outcome: Option<Up>,
    /// The session on the current stream counts its slot as in use, so it
    /// is credited when the item goes.
    counted: bool,
}

struct PendingCheckpoint {
    data: Vec<u8>,
    reply: oneshot::Sender<Result<(), CheckpointError>>,
}

/// A job's handler, prepared from its params once (or why it cannot be).
struct Prepared {
    handler: Result<Arc<dyn ItemHandler>, String>,
    last_used: Instant,
}

/// How an attempt to open a stream failed.
enum Failure {
    /// Try again later.
    Retry(String),
    /// The server refused the worker for good.
    Fatal(WorkerError),
}

/// An open stream, welcomed.
struct Opened {
    inbound: tonic::Streaming<pb::WorkResponse>,
    out: mpsc::UnboundedSender<pb::WorkRequest>,
    welcome: pb::WorkerWelcome,
    /// Keeps the connection's client alive as long as the stream.
    _client: WorkerServiceClient<tonic::transport::Channel>,
}

/// Everything the loop knows.
struct State {
    executors: BTreeMap<String, Arc<dyn Executor>>,
    slots: u32,
    name: String,
    build_id: String,
    on_status: Option<StatusFn>,
    /// The items in slots, by token.
    items: HashMap<u64, Held>,
    /// Prepared handlers, by job id.
    handlers: HashMap<String, Prepared>,
    /// The running handlers; each returns its item's token and outcome.
    tasks: JoinSet<(u64, Up)>,
    /// Given to every item's sinks.
    events: mpsc::UnboundedSender<Event>,
    /// The current stream's sender; `None` while disconnected.
    out: Option<mpsc::UnboundedSender<pb::WorkRequest>>,
    /// Slots to credit on the current stream.
    owed: u32,
    /// The session to resume after a broken stream.
    session: Option<String>,
    /// Shutting down: no new items, the ones in flight asked to stop.
    draining: bool,
    /// The server's lease time, as last welcomed.
    lease: Duration,
    /// When the last stream broke, while disconnected.
    broken_at: Option<Instant>,
}

pub(super) async fn run(
    worker: Worker,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), WorkerError> {
    let Worker {
        connect,
        executors,
        slots,
        name,
        build_id,
        backoff: (min_wait, max_wait),
        on_status,
    } = worker;
    let (events, mut inbox) = mpsc::unbounded_channel();
    let mut st = State {
        executors,
        slots,
        name,
        build_id,
        on_status,
        items: HashMap::new(),
        handlers: HashMap::new(),
        tasks: JoinSet::new(),
        events,
        out: None,
        owed: 0,
        session: None,
        draining: false,
        lease: DEFAULT_LEASE,
        broken_at: None,
    };
    let mut shutdown = pin!(shutdown);
    let new_backoff = || {
        use backon::BackoffBuilder as _;
        backon::ExponentialBuilder::default()
            .with_min_delay(min_wait)
            .with_max_delay(max_wait)
            .with_jitter()
            .without_max_times()
            .build()
    };
    let mut backoff = new_backoff();
    loop {
        let (hello, held) = st.hello();
        let opened = match st
            .pump(&mut inbox, shutdown.as_mut(), open(connect.clone(), hello))
            .await
        {
            None => return st.stopped(),
            Some(Ok(opened)) => opened,
            Some(Err(Failure::Fatal(e))) => return Err(e),
            Some(Err(Failure::Retry(why))) => {
                let wait = backoff.next().unwrap_or(max_wait);
                if !st
                    .reconnect_after(&mut inbox, shutdown.as_mut(), why, wait)
                    .await
                {
                    return st.stopped();
                }
                continue;
            }
        };
        backoff = new_backoff();
        let Opened {
            mut inbound,
            out,
            welcome,
            _client,
        } = opened;
        let heartbeat = positive(welcome.heartbeat_interval).unwrap_or(DEFAULT_HEARTBEAT);
        let lease = positive(welcome.lease_time).unwrap_or(DEFAULT_LEASE);
        st.lease = lease;
        st.welcomed(welcome, out, &held);
        let mut ping = tokio::time::interval_at(Instant::now() + heartbeat, heartbeat);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut silent_until = Instant::now() + lease;
        let why = loop {
            if st.draining && st.items.is_empty() {
                st.out = None;
                close(&mut inbound).await;
                return st.stopped();
            }
            tokio::select! {
                message = inbound.message() => match message {
                    Ok(Some(message)) => {
                        silent_until = Instant::now() + lease;
                        st.on_message(message);
                    }
                    Ok(None) => break "the server ended the stream".to_string(),
                    // Whatever ended an open session, the worker resumes
                    // it: a refusal for good shows at the next hello.
                    Err(status) => break status_text(&status),
                },
                Some(event) = inbox.recv() => st.on_event(event),
                Some(done) = st.tasks.join_next() => st.on_done(done),
                _ = ping.tick() => st.send(Up::Ping(pb::WorkerPing {})),
                () = tokio::time::sleep_until(silent_until) => {
                    break format!("no message from the server for {}", human(lease));
                }
                () = shutdown.as_mut(), if !st.draining => st.begin_drain(),
            }
            if st.out.as_ref().is_some_and(|out| out.is_closed()) {
                break "the stream to the server closed".to_string();
            }
        };
        let wait = backoff.next().unwrap_or(max_wait);
        if !st
            .reconnect_after(&mut inbox, shutdown.as_mut(), why, wait)
            .await
        {
            return st.stopped();
        }
    }
}

/// Opens a stream and says hello; returns once welcomed.
async fn open(connect: Connect, hello: pb::WorkerHello) -> Result<Opened, Failure> {
    let uri = connect.endpoint.uri().clone();
    let attempt = async {
        let channel = connect
            .endpoint
            .connect()
            .await
            .map_err(|e| Failure::Retry(format!("cannot reach {uri}: {}", error_chain(&e))))?;
        let mut client =
            WorkerServiceClient::new(channel).max_decoding_message_size(MAX_MESSAGE_BYTES);
        let (out, requests) = mpsc::unbounded_channel();
        let _ = out.send(pb::WorkRequest {
            kind: Some(Up::Hello(hello)),
        });
        let mut request = tonic::Request::new(UnboundedReceiverStream::new(requests));
        if let Some(auth) = &connect.authorization {
            request.metadata_mut().insert("authorization", auth.clone());
        }
        let mut inbound = client.work(request).await.map_err(classify)?.into_inner();
        let welcome = match inbound.message().await.map_err(classify)? {
            Some(pb::WorkResponse {
                kind: Some(Down::Welcome(welcome)),
            }) => welcome,
            Some(other) => {
                return Err(Failure::Retry(format!(
                    "the server answered the hello with {} instead of a welcome",
                    kind_name(&other)
                )));
            }
            None => {
                return Err(Failure::Retry(
                    "the server ended the stream without a welcome".into(),
                ));
            }
        };
        if welcome.protocol_version != PROTOCOL_VERSION {
            return Err(Failure::Fatal(WorkerError::Refused {
                code: tonic::Code::FailedPrecondition,
                message: format!(
                    "the server speaks worker protocol version {}; this worker speaks {PROTOCOL_VERSION}",
                    welcome.protocol_version
                ),
            }));
        }
        Ok(Opened {
            inbound,
            out,
            welcome,
            _client: client,
        })
    };
    tokio::time::timeout(OPEN_TIMEOUT, attempt)
        .await
        .unwrap_or_else(|_| {
            Err(Failure::Retry(format!(
                "no welcome from {uri} within {}",
                human(OPEN_TIMEOUT)
            )))
        })
}

/// Half-closes the stream and waits (a little) for the server to end it,
/// so what was sent last is read.
async fn close(inbound: &mut tonic::Streaming<pb::WorkResponse>) {
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
        while let Ok(Some(_)) = inbound.message().await {}
    })
    .await;
}

/// An error opening a stream: the refusals that reconnecting cannot cure
/// end the worker; anything else (the server restarting or shutting down, the
/// network, a proxy) is retried.
fn classify(status: tonic::Status) -> Failure {
    use tonic::Code::*;
    let code = status.code();
    let message = status.message().to_string();
    match code {
        Unauthenticated | PermissionDenied | InvalidArgument | FailedPrecondition => {
            Failure::Fatal(WorkerError::Refused { code, message })
        }
        Unimplemented => Failure::Fatal(WorkerError::Refused {
            code,
            message: format!(
                "the server has no worker service (a jobvisor server older than remote executors?){}",
                if message.is_empty() {
                    String::new()
                } else {
                    format!(": {message}")
                }
            ),
        }),
        _ => Failure::Retry(status_text(&status)),
    }
}

fn status_text(status: &tonic::Status) -> String {
    if status.message().is_empty() {
        format!("{:?}", status.code())
    } else {
        format!("{:?}: {}", status.code(), status.message())
    }
}

impl State {
    /// Runs `fut` while still serving the items (their events, their
    /// ends, the drain). `None` if the worker finished draining meanwhile.
    /// The stream is gone: says the worker reconnects in `wait`, and
    /// waits, its items' events handled meanwhile. False if the worker
    /// is to stop instead (it drained).
    async fn reconnect_after(
        &mut self,
        inbox: &mut mpsc::UnboundedReceiver<Event>,
        shutdown: Pin<&mut (impl Future<Output = ()> + Send)>,
        why: String,
        wait: Duration,
    ) -> bool {
        self.disconnected();
        self.status(Status::Reconnecting {
            why,
            retry_in: wait,
            in_flight: self.items.len(),
        });
        self.pump(inbox, shutdown, tokio::time::sleep(wait))
            .await
            .is_some()
    }

    async fn pump<T>(
        &mut self,
        inbox: &mut mpsc::UnboundedReceiver<Event>,
        mut shutdown: Pin<&mut (impl Future<Output = ()> + Send)>,
        fut: impl Future<Output = T>,
    ) -> Option<T> {
        let mut fut = pin!(fut);
        loop {
            if self.draining {
                // Disconnected past the lease: the server has taken the
                // items back; what they would report no longer counts.
                if self.broken_at.is_some_and(|at| at.elapsed() >= self.lease) {
                    self.items.retain(|_, item| item.outcome.is_none());
                }
                if self.items.is_empty() {
                    return None;
                }
            }
            // Once, when the lease of a broken stream runs out while
            // draining (then the check above lets the worker go).
            let give_up = self
                .broken_at
                .map(|at| at + self.lease)
                .filter(|at| self.draining && *at > Instant::now());
            tokio::select! {
                result = &mut fut => return Some(result),
                Some(event) = inbox.recv() => self.on_event(event),
                Some(done) = self.tasks.join_next() => self.on_done(done),
                () = shutdown.as_mut(), if !self.draining => self.begin_drain(),
                () = sleep_until(give_up), if give_up.is_some() => {}
            }
        }
    }

    /// The hello for the next stream, and the tokens it names as held.
    fn hello(&mut self) -> (pb::WorkerHello, Vec<u64>) {
        let held: Vec<u64> = self
            .items
            .iter()
            .filter(|(_, item)| !item.revoked)
            .map(|(token, _)| *token)
            .collect();
        for item in self.items.values_mut() {
            item.counted = true;
        }
        self.owed = 0;
        let in_use = u32::try_from(self.items.len()).unwrap_or(MAX_SLOTS);
        let hello = pb::WorkerHello {
            worker_name: self.name.clone(),
            executors: self.executors.keys().cloned().collect(),
            slots: self.slots.saturating_sub(in_use),
            protocol_version: PROTOCOL_VERSION,
            build_id: self.build_id.clone(),
            resume_session_id: self.session.clone().unwrap_or_default(),
            held_tokens: if self.session.is_some() {
                held.clone()
            } else {
                Vec::new()
            },
        };
        (hello, held)
    }

    /// A stream is open: the held items the server kept continue (their
    /// pending checkpoints and outcomes sent now); the others are lost.
    fn welcomed(
        &mut self,
        welcome: pb::WorkerWelcome,
        out: mpsc::UnboundedSender<pb::WorkRequest>,
        held: &[u64],
    ) {
        self.out = Some(out);
        self.broken_at = None;
        self.session = Some(welcome.session_id.clone());
        let kept: HashSet<u64> = welcome.resumed_tokens.iter().copied().collect();
        let (mut resumed, mut lost) = (0, 0);
        for &token in held {
            if !self.items.contains_key(&token) {
                continue;
            }
            if kept.contains(&token) {
                resumed += 1;
                let item = self.items.get_mut(&token).expect("checked");
                let outcome = item.outcome.take();
                let checkpoints: Vec<(u64, Vec<u8>)> = item
                    .checkpoints
                    .iter()
                    .map(|(id, c)| (*id, c.data.clone()))
                    .collect();
                for (checkpoint_id, data) in checkpoints {
                    self.send(Up::Checkpoint(pb::WorkerCheckpoint {
                        token,
                        checkpoint_id,
                        data,
                    }));
                }
                if let Some(outcome) = outcome {
                    self.send(outcome);
                    self.remove(token);
                }
            } else {
                lost += 1;
                self.revoke(
                    token,
                    "the server did not keep it while the stream was broken",
                );
            }
        }
        self.flush_credit();
        if self.draining {
            self.send(Up::Drain(pb::WorkerDrain {}));
        }
        self.status(Status::Connected {
            server: welcome.server,
            session: welcome.session_id,
            resumed,
            lost,
        });
    }

    /// The stream broke: nothing is sent until the next one.
    fn disconnected(&mut self) {
        self.out = None;
        self.owed = 0;
        for item in self.items.values_mut() {
            item.counted = false;
        }
        if self.broken_at.is_none() {
            self.broken_at = Some(Instant::now());
        }
    }

    fn on_message(&mut self, message: pb::WorkResponse) {
        let Some(kind) = message.kind else {
            tracing::warn!("the server sent an empty message");
            return;
        };
        match kind {
            Down::Assignments(batch) => {
                for assignment in batch.items {
                    self.assign(assignment);
                }
            }
            Down::CheckpointSaved(saved) => {
                if let Some(pending) = self
                    .items
                    .get_mut(&saved.token)
                    .and_then(|item| item.checkpoints.remove(&saved.checkpoint_id))
                {
                    let _ = pending.reply.send(Ok(()));
                }
            }
            Down::Interrupt(interrupt) => {
                let reason = match pb::InterruptReason::try_from(interrupt.reason) {
                    Ok(pb::InterruptReason::Pause) => StopReason::Pause,
                    Ok(pb::InterruptReason::Cancel) => StopReason::Cancel,
                    _ => StopReason::Shutdown,
                };
                for token in interrupt.tokens {
                    if let Some(item) = self.items.get(&token).filter(|i| !i.revoked) {
                        tracing::debug!(token, ?reason, "item interrupted");
                        item.stop.send_replace(Some(reason));
                    }
                }
            }
            Down::Revoked(revoked) => self.revoke(revoked.token, &revoked.reason),
            Down::Refused(refused) => self.refused(refused),
            Down::Ping(_) => {}
            Down::Welcome(_) => {
                tracing::warn!("the server sent a second welcome on one stream; ignored");
            }
        }
    }

    fn refused(&mut self, refused: pb::WorkerRefused) {
        let pb::WorkerRefused {
            token,
            checkpoint_id,
            reason,
            message,
        } = refused;
        let pending = self
            .items
            .get_mut(&token)
            .and_then(|item| item.checkpoints.remove(&checkpoint_id));
        if let Some(pending) = pending {
            let error = if reason == "UNKNOWN_TOKEN" {
                CheckpointError::LeaseLost
            } else {
                CheckpointError::Store(format!("{reason}: {message}"))
            };
            let _ = pending.reply.send(Err(error));
        } else {
            tracing::warn!(token, %reason, %message, "the server refused a message");
        }
        if reason == "UNKNOWN_TOKEN" && self.items.contains_key(&token) {
            self.revoke(token, &message);
        }
    }

    /// The item is no longer this worker's: stop it, fail its checkpoints,
    /// drop whatever it reports.
    fn revoke(&mut self, token: u64, why: &str) {
        let Some(item) = self.items.get_mut(&token) else {
            return;
        };
        if !item.revoked {
            tracing::info!(token, job = %item.job, %why, "item revoked");
        }
        item.revoked = true;
        item.stop.send_if_modified(|stop| {
            let changed = stop.is_none();
            stop.get_or_insert(StopReason::Shutdown);
            changed
        });
        for (_, pending) in std::mem::take(&mut item.checkpoints) {
            let _ = pending.reply.send(Err(CheckpointError::LeaseLost));
        }
        if item.outcome.is_some() {
            self.remove(token);
            self.flush_credit();
        }
    }

    fn assign(&mut self, assignment: pb::Assignment) {
        let token = assignment.token;
        if self.items.contains_key(&token) {
            tracing::warn!(
                token,
                "the server assigned a token this worker already holds; ignored"
            );
            return;
        }
        if self.draining {
            // Given back untouched: it goes back to pending, the attempt
            // not counted.
            self.send(Up::Stopped(pb::WorkerStopped { token }));
            self.credit_now();
            return;
        }
        if self.items.len() >= self.slots as usize {
            tracing::error!(
                token,
                slots = self.slots,
                "the server sent more items than this worker's slots (against the protocol); \
                 the item is given back"
            );
            self.send(Up::Stopped(pb::WorkerStopped { token }));
            return;
        }
        let handler = match self.handler(&assignment) {
            Ok(handler) => handler,
            Err(error) => {
                self.send(Up::Failed(pb::WorkerFailed {
                    token,
                    error,
                    permanent: true,
                    retry_after: None,
                }));
                self.credit_now();
                return;
            }
        };
        let job: JobId = match assignment.job_id.parse() {
            Ok(job) => job,
            Err(why) => {
                self.send(Up::Failed(pb::WorkerFailed {
                    token,
                    error: format!("the assignment's job_id {:?} {why}", assignment.job_id),
                    permanent: true,
                    retry_after: None,
                }));
                self.credit_now();
                return;
            }
        };
        let (stop, stop_rx) = watch::channel(None);
        let sink = Arc::new(Checkpoints {
            token,
            events: self.events.clone(),
            next_id: AtomicU64::new(1),
        });
        let progress = Arc::new(Progress {
            token,
            events: self.events.clone(),
        });
        let ctx = ItemContext::new(
            job,
            assignment.index,
            assignment.payload,
            assignment.attempt,
            assignment.checkpoint,
            stop_rx,
            sink,
        )
        .with_progress(progress);
        let span = tracing::info_span!("item", job_id = %job, index = assignment.index,
            attempt = assignment.attempt, token);
        // The server's item span is the parent: with tracing on here too,
        // this attempt's spans (and an exec program's, through its
        // TRACEPARENT) join the item's trace.
        if !assignment.trace_context.is_empty() {
            let parent =
                crate::telemetry::propagation::context_from_headers(&assignment.trace_context);
            let _ = tracing_opentelemetry::OpenTelemetrySpanExt::set_parent(&span, parent);
        }
        self.tasks
            .spawn(run_item(token, handler, ctx).instrument(span));
        self.items.insert(
            token,
            Held {
                job: assignment.job_id,
                stop,
                revoked: false,
                checkpoints: BTreeMap::new(),
                outcome: None,
                counted: true,
            },
        );
    }

    /// The job's prepared handler (prepared now on its first item), or the
    /// error that fails its items.
    fn handler(&mut self, assignment: &pb::Assignment) -> Result<Arc<dyn ItemHandler>, String> {
        let Some(executor) = self.executors.get(&assignment.executor) else {
            return Err(format!(
                "this worker does not serve executor {:?} (it serves {})",
                assignment.executor,
                self.executors
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        };
        let now = Instant::now();
        if let Some(prepared) = self.handlers.get_mut(&assignment.job_id) {
            prepared.last_used = now;
            return prepared.handler.clone();
        }
        let params: BTreeMap<String, String> = assignment
            .params
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let handler = executor.prepare(&params).map_err(|e| e.to_string());
        self.forget_idle_handlers();
        self.handlers.insert(
            assignment.job_id.clone(),
            Prepared {
                handler: handler.clone(),
                last_used: now,
            },
        );
        handler
    }

    /// Keeps at most [`IDLE_HANDLERS`] handlers of jobs with no item here,
    /// the most recently used.
    fn forget_idle_handlers(&mut self) {
        let busy: HashSet<&str> = self.items.values().map(|i| i.job.as_str()).collect();
        let mut idle: Vec<(Instant, String)> = self
            .handlers
            .iter()
            .filter(|(job, _)| !busy.contains(job.as_str()))
            .map(|(job, p)| (p.last_used, job.clone()))
            .collect();
        if idle.len() < IDLE_HANDLERS {
            return;
        }
        idle.sort();
        for (_, job) in idle.iter().take(idle.len() + 1 - IDLE_HANDLERS) {
            self.handlers.remove(job);
        }
    }

    fn on_event(&mut self, event: Event) {
        match event {
            Event::Checkpoint {
                token,
                id,
                data,
                reply,
            } => {
                let Some(item) = self.items.get_mut(&token).filter(|i| !i.revoked) else {
                    let _ = reply.send(Err(CheckpointError::LeaseLost));
                    return;
                };
                if let Some(out) = &self.out {
                    let _ = out.send(pb::WorkRequest {
                        kind: Some(Up::Checkpoint(pb::WorkerCheckpoint {
                            token,
                            checkpoint_id: id,
                            data: data.clone(),
                        })),
                    });
                }
                item.checkpoints
                    .insert(id, PendingCheckpoint { data, reply });
            }
            Event::Progress { token, fraction } => {
                if self.items.get(&token).is_some_and(|i| !i.revoked) {
                    self.send(Up::Progress(pb::WorkerProgress { token, fraction }));
                }
            }
        }
    }

    /// An item's handler returned: report it (now, or after the
    /// reconnection) and free its slot.
    fn on_done(&mut self, done: Result<(u64, Up), tokio::task::JoinError>) {
        let (token, outcome) = match done {
            Ok(done) => done,
            Err(e) => {
                // Panics are caught in the task; only a runtime shutting
                // down cancels one.
                tracing::error!(error = %e, "an item's task ended without an outcome");
                return;
            }
        };
        let Some(item) = self.items.get_mut(&token) else {
            return;
        };
        // Its checkpoints no longer wait for anyone.
        item.checkpoints.clear();
        if item.revoked {
            self.remove(token);
        } else if self.out.is_some() {
            self.send(outcome);
            self.remove(token);
        } else {
            item.outcome = Some(outcome);
            return;
        }
        self.flush_credit();
    }

    /// Shutting down: tell the server, ask every item to stop.
    fn begin_drain(&mut self) {
        self.draining = true;
        self.send(Up::Drain(pb::WorkerDrain {}));
        for item in self.items.values() {
            item.stop.send_if_modified(|stop| {
                let changed = stop.is_none();
                stop.get_or_insert(StopReason::Shutdown);
                changed
            });
        }
        self.status(Status::Draining {
            in_flight: self.items.len(),
        });
    }

    /// The item's slot is free.
    fn remove(&mut self, token: u64) {
        if let Some(item) = self.items.remove(&token)
            && item.counted
        {
            self.owed += 1;
        }
    }

    /// Credits a slot that held an item only for a moment (given back or
    /// failed before it ran).
    fn credit_now(&mut self) {
        self.owed += 1;
        self.flush_credit();
    }

    fn flush_credit(&mut self) {
        if self.owed > 0 && self.out.is_some() {
            let slots = std::mem::take(&mut self.owed);
            self.send(Up::Credit(pb::WorkerCredit { slots }));
        }
    }

    /// Sends on the current stream, if there is one.
    fn send(&self, kind: Up) {
        if let Some(out) = &self.out {
            let _ = out.send(pb::WorkRequest { kind: Some(kind) });
        }
    }

    fn status(&self, status: Status) {
        tracing::debug!(?status, "worker status");
        if let Some(f) = &self.on_status {
            f(&status);
        }
    }

    /// Drained: the end of [`run`].
    fn stopped(&self) -> Result<(), WorkerError> {
        self.status(Status::Stopped);
        Ok(())
    }
}

/// Runs one attempt and says how it ended, as the protocol reports it.
async fn run_item(token: u64, handler: Arc<dyn ItemHandler>, mut ctx: ItemContext) -> (u64, Up) {
    let result = AssertUnwindSafe(handler.run(&mut ctx)).catch_unwind().await;
    let failed = |error: String, permanent: bool, retry_after: Option<Duration>| {
        Up::Failed(pb::WorkerFailed {
            token,
            error,
            permanent,
            retry_after: retry_after.map(|d| prost_types::Duration {
                seconds: d.as_secs() as i64,
                nanos: d.subsec_nanos() as i32,
            }),
        })
    };
    let outcome = match result {
        Ok(Ok(())) => {
            let result = ctx.take_result().unwrap_or_default();
            if result.len() > MAX_RESULT_BYTES {
                failed(
                    format!(
                        "the item's result is {} bytes; a worker may report at most {MAX_RESULT_BYTES}",
                        result.len()
                    ),
                    true,
                    None,
                )
            } else {
                Up::Succeeded(pb::WorkerSucceeded {
                    token,
                    result,
                    skip_reason: ctx.take_skip().unwrap_or_default(),
                    counters: ctx.take_counters().into_iter().collect(),
                })
            }
        }
        Ok(Err(ItemError::Retryable(error))) => failed(error, false, ctx.retry_after()),
        Ok(Err(ItemError::Permanent(error))) => failed(error, true, None),
        Ok(Err(ItemError::Interrupted | ItemError::Handback(_))) => {
            Up::Stopped(pb::WorkerStopped { token })
        }
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic".into());
            failed(
                format!("the item's handler panicked: {what}"),
                false,
                ctx.retry_after(),
            )
        }
    };
    (token, outcome)
}

/// An item's checkpoints, through the loop to the server.
struct Checkpoints {
    token: u64,
    events: mpsc::UnboundedSender<Event>,
    /// The next `checkpoint_id` (from 1; 0 means none in a refusal).
    next_id: AtomicU64,
}

#[async_trait]
impl CheckpointSink for Checkpoints {
    async fn save(&self, data: Vec<u8>) -> Result<(), CheckpointError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (reply, answer) = oneshot::channel();
        self.events
            .send(Event::Checkpoint {
                token: self.token,
                id,
                data,
                reply,
            })
            .map_err(|_| CheckpointError::LeaseLost)?;
        answer.await.unwrap_or(Err(CheckpointError::LeaseLost))
    }
}

/// An item's progress, through the loop to the server.
struct Progress {
    token: u64,
    events: mpsc::UnboundedSender<Event>,
}

impl ProgressSink for Progress {
    fn report(&self, _index: u32, fraction: f32) {
        let _ = self.events.send(Event::Progress {
            token: self.token,
            fraction,
        });
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn positive(d: Option<prost_types::Duration>) -> Option<Duration> {
    let d = d?;
    let d = Duration::try_from(d).ok()?;
    (!d.is_zero()).then_some(d)
}

fn human(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

fn kind_name(message: &pb::WorkResponse) -> &'static str {
    match &message.kind {
        None => "an empty message",
        Some(Down::Welcome(_)) => "a welcome",
        Some(Down::Assignments(_)) => "assignments",
        Some(Down::CheckpointSaved(_)) => "checkpoint_saved",
        Some(Down::Interrupt(_)) => "an interrupt",
        Some(Down::Revoked(_)) => "revoked",
        Some(Down::Refused(_)) => "refused",
        Some(Down::Ping(_)) => "a ping",
    }
}

/// An error with its causes (a transport error's own message is often
/// just "transport error").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

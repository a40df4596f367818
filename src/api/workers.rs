//! tonic glue for `jobvisor.v1.WorkerService`: one stream per worker
//! process. The hello is checked here (every bad field named) and the
//! session handed to the worker hub; a task reads the worker's messages,
//! checks each one and routes it to the item's handler by its token; the
//! hub's messages to the worker are converted and sent. A message that is
//! refused gets a `WorkerRefused` and the session continues. Nothing here
//! decides what happens to an item: the job's worker actor does, through
//! its [`RemoteHandler`](crate::executor::remote::RemoteHandler).

use super::{auth::Caller, caller, status};
use crate::{
    domain::FieldViolation,
    executor::{
        MAX_RETRY_AFTER, StopReason,
        remote::hub::{
            self, Assignment, CloseReason, Hello, HelloError, Identity, ItemMsg, MAX_SLOTS,
            PROTOCOL_VERSION, Refusal, ToWorker, WorkerHub,
        },
    },
    pb::{self, work_request::Kind as In, work_response::Kind as Out},
};
use futures::{Stream, StreamExt as _};
use std::{pin::Pin, sync::Arc, time::Duration};
use tokio::sync::mpsc;
use tonic::{Request, Response, Status, Streaming};

/// The longest worker name and build id.
const MAX_NAME_CHARS: usize = 128;
/// The most executors one worker serves.
const MAX_EXECUTORS: usize = 16;
/// The longest result a worker may report.
const MAX_RESULT_BYTES: usize = 64 * 1024;
/// Errors longer than this are cut (the stored error stays readable).
const MAX_ERROR_CHARS: usize = 4096;
/// How long a new stream has to say hello.
const HELLO_WITHIN: Duration = Duration::from_secs(10);

/// The WorkerService.
#[derive(Clone)]
pub struct WorkerApi {
    hub: Arc<WorkerHub>,
}

impl WorkerApi {
    pub fn new(hub: Arc<WorkerHub>) -> Self {
        WorkerApi { hub }
    }
}

type WorkStream = Pin<Box<dyn Stream<Item = Result<pb::WorkResponse, Status>> + Send>>;

#[tonic::async_trait]
impl pb::worker_service_server::WorkerService for WorkerApi {
    type WorkStream = WorkStream;
    type LendStream = super::lend::LendStream;

    /// Another replica borrows this server's workers (multi-replica mode).
    async fn lend(
        &self,
        request: Request<Streaming<pb::LendRequest>>,
    ) -> Result<Response<Self::LendStream>, Status> {
        super::lend::lend(self.hub.clone(), request).await
    }

    async fn work(
        &self,
        request: Request<Streaming<pb::WorkRequest>>,
    ) -> Result<Response<WorkStream>, Status> {
        let who: Caller = caller(&request);
        let mut inbound = request.into_inner();
        let first = match tokio::time::timeout(HELLO_WITHIN, inbound.message()).await {
            Err(_) => {
                return Err(Status::deadline_exceeded(format!(
                    "no hello within {}: a worker's first message is its hello",
                    humantime::format_duration(HELLO_WITHIN)
                )));
            }
            Ok(Err(status)) => return Err(status),
            Ok(Ok(None)) => {
                return Err(Status::invalid_argument(
                    "the stream ended before its hello",
                ));
            }
            Ok(Ok(Some(first))) => first,
        };
        let hello = match first.kind {
            Some(In::Hello(hello)) => checked_hello(hello)?,
            other => {
                return Err(Status::invalid_argument(format!(
                    "a worker's first message must be a hello, not {}",
                    kind_name(&other)
                )));
            }
        };
        let identity = Identity {
            name: who.name.clone(),
            scope: who.scope.clone(),
        };
        let attached = self.hub.attach(hello, identity).map_err(|e| match e {
            HelloError::Invalid(why) => Status::invalid_argument(why),
            HelloError::NotRemote(why) => Status::failed_precondition(why),
            HelloError::ShuttingDown => {
                Status::unavailable("the server is shutting down: reconnect later or elsewhere")
            }
        })?;
        let config = self.hub.config();
        let welcome = pb::WorkResponse {
            kind: Some(Out::Welcome(pb::WorkerWelcome {
                session_id: attached.session.to_string(),
                heartbeat_interval: Some(duration(config.heartbeat())),
                lease_time: Some(duration(config.lease_time)),
                resumed_tokens: attached.resumed.clone(),
                protocol_version: PROTOCOL_VERSION,
                server: config.server.clone(),
                interrupt_grace: Some(duration(config.interrupt_grace)),
                batches: true,
            })),
        };
        let (hub, ended) = (self.hub.clone(), attached.ended.clone());
        let (session, stream) = (attached.session, attached.stream);
        tokio::spawn(async move {
            tokio::select! {
                () = read(hub, session, stream, inbound) => {}
                // The server ended the stream: stop reading it.
                () = ended.cancelled() => {}
            }
        });
        let rest = futures::stream::unfold(
            Some((attached.outbound, None)),
            |state: Option<(mpsc::UnboundedReceiver<ToWorker>, Option<ToWorker>)>| async move {
                let (mut rx, carried) = state?;
                let msg = match carried {
                    Some(msg) => msg,
                    None => rx.recv().await?,
                };
                let (msg, next) = with_ready_assignments(msg, &mut rx);
                match msg {
                    ToWorker::Close(reason) => Some((Err(closed(reason)), None)),
                    msg => Some((Ok(response(msg)), Some((rx, next)))),
                }
            },
        );
        let stream = futures::stream::once(async move { Ok(welcome) }).chain(rest);
        Ok(Response::new(Box::pin(stream)))
    }
}

/// Reads the worker's messages until its stream ends, is broken, or stays
/// silent for the lease time.
async fn read(
    hub: Arc<WorkerHub>,
    session: u64,
    stream: u64,
    mut inbound: Streaming<pb::WorkRequest>,
) {
    let lease = hub.config().lease_time;
    let max_checkpoint = hub.config().max_checkpoint_bytes;
    loop {
        let msg = match tokio::time::timeout(lease, inbound.message()).await {
            Err(_) => {
                let why = format!(
                    "it sent nothing for {} (the lease time)",
                    humantime::format_duration(lease)
                );
                hub.expire(session, stream, &why);
                return;
            }
            Ok(Ok(Some(msg))) => msg,
            Ok(Ok(None)) => {
                hub.detach(session, stream, "the worker ended its stream");
                return;
            }
            Ok(Err(status)) => {
                // A message that does not decode, or a broken stream: the
                // worker is told (if it still listens), and its items wait
                // for it to reconnect.
                let why = status.message().to_string();
                hub.send(session, ToWorker::Close(CloseReason::Invalid(why.clone())));
                hub.detach(session, stream, &why);
                return;
            }
        };
        let answer = |msg| {
            if let Err(refusal) = handle(&hub, session, msg, max_checkpoint) {
                hub.send(session, ToWorker::Refused(refusal));
            }
        };
        match msg.kind {
            // A batch's messages count one by one, as if sent alone.
            Some(In::Batch(batch)) => batch.messages.into_iter().for_each(answer),
            kind => answer(pb::WorkRequest { kind }),
        }
    }
}

/// One message from the worker: checked, then to the hub.
fn handle(
    hub: &WorkerHub,
    session: u64,
    msg: pb::WorkRequest,
    max_checkpoint: usize,
) -> Result<(), Refusal> {
    match msg.kind {
        None => Err(Refusal::unexpected(
            "a message with no kind set (an empty WorkRequest)",
        )),
        Some(In::Hello(_)) => Err(Refusal::unexpected(
            "a hello after the session started (send one per stream, first)",
        )),
        Some(In::Credit(c)) => hub.credit(session, c.slots),
        Some(In::Checkpoint(c)) => {
            if c.data.len() > max_checkpoint {
                return Err(Refusal {
                    checkpoint_id: c.checkpoint_id,
                    ..Refusal::invalid(
                        c.token,
                        format!(
                            "checkpoint.data is {} bytes; at most {max_checkpoint}",
                            c.data.len()
                        ),
                    )
                });
            }
            let item = ItemMsg::Checkpoint {
                id: c.checkpoint_id,
                data: c.data,
            };
            hub.route(session, c.token, item)
        }
        Some(In::Progress(p)) => {
            if !(0.0..=1.0).contains(&p.fraction) {
                return Err(Refusal::invalid(
                    p.token,
                    format!(
                        "progress.fraction is {}; it must be from 0 to 1",
                        p.fraction
                    ),
                ));
            }
            hub.route(session, p.token, ItemMsg::Progress(p.fraction))
        }
        Some(In::Succeeded(s)) => {
            if s.result.len() > MAX_RESULT_BYTES {
                return Err(Refusal::invalid(
                    s.token,
                    format!(
                        "succeeded.result is {} bytes; at most {MAX_RESULT_BYTES}",
                        s.result.len()
                    ),
                ));
            }
            let max = crate::executor::MAX_SKIP_REASON;
            if s.skip_reason.chars().count() > max {
                return Err(Refusal::invalid(
                    s.token,
                    format!("succeeded.skip_reason is longer than {max} characters"),
                ));
            }
            let mut counters = crate::domain::Counters::new();
            for (name, n) in &s.counters {
                if let Err(why) = crate::domain::counters::add_count(&mut counters, name, *n) {
                    return Err(Refusal::invalid(
                        s.token,
                        format!("succeeded.counters[{name}]: {why}"),
                    ));
                }
            }
            hub.route(
                session,
                s.token,
                ItemMsg::Succeeded {
                    result: s.result,
                    skip_reason: s.skip_reason,
                    counters,
                },
            )
        }
        Some(In::Failed(f)) => {
            let retry_after = match &f.retry_after {
                None => None,
                Some(_) => {
                    let mut bad = Vec::new();
                    let ms =
                        super::convert::duration_ms("failed.retry_after", &f.retry_after, &mut bad);
                    if let Some(v) = bad.first() {
                        return Err(Refusal::invalid(
                            f.token,
                            format!("{}: {}", v.field, v.description),
                        ));
                    }
                    let wait = Duration::from_millis(ms);
                    if wait > MAX_RETRY_AFTER {
                        return Err(Refusal::invalid(
                            f.token,
                            format!(
                                "failed.retry_after is {}; at most {}",
                                humantime::format_duration(wait),
                                humantime::format_duration(MAX_RETRY_AFTER)
                            ),
                        ));
                    }
                    Some(wait)
                }
            };
            let mut error = f.error;
            if error.chars().count() > MAX_ERROR_CHARS {
                error = error.chars().take(MAX_ERROR_CHARS).collect::<String>() + "…";
            }
            if error.is_empty() {
                error = "the worker reported a failure without saying why".into();
            }
            let item = ItemMsg::Failed {
                error,
                permanent: f.permanent,
                retry_after,
            };
            hub.route(session, f.token, item)
        }
        Some(In::Stopped(s)) => hub.route(session, s.token, ItemMsg::Stopped),
        Some(In::Drain(_)) => {
            hub.drain(session);
            Ok(())
        }
        Some(In::Ping(_)) => {
            hub.send(session, ToWorker::Ping);
            Ok(())
        }
        // Only a batch inside a batch comes here (`read` opens the outer
        // one).
        Some(In::Batch(_)) => Err(Refusal::unexpected(
            "a batch inside a batch (put its messages in the outer one)",
        )),
    }
}

/// The hello's fields, every bad one named.
fn checked_hello(h: pb::WorkerHello) -> Result<Hello, Status> {
    let mut bad = Vec::new();
    let name_len = h.worker_name.chars().count();
    if name_len == 0 || name_len > MAX_NAME_CHARS {
        bad.push(FieldViolation::new(
            "hello.worker_name",
            format!("must be 1 to {MAX_NAME_CHARS} characters (for example host:pid)"),
        ));
    }
    if h.build_id.chars().count() > MAX_NAME_CHARS {
        bad.push(FieldViolation::new(
            "hello.build_id",
            format!("at most {MAX_NAME_CHARS} characters"),
        ));
    }
    if h.executors.is_empty() || h.executors.len() > MAX_EXECUTORS {
        bad.push(FieldViolation::new(
            "hello.executors",
            format!("name 1 to {MAX_EXECUTORS} executors"),
        ));
    }
    for (i, e) in h.executors.iter().enumerate() {
        if e.is_empty() || e.len() > MAX_NAME_CHARS {
            bad.push(FieldViolation::new(
                format!("hello.executors[{i}]"),
                format!("must be 1 to {MAX_NAME_CHARS} characters"),
            ));
        }
    }
    let resume = match h.resume_session_id.as_str() {
        "" => None,
        raw => match raw.parse::<u64>() {
            Ok(id) => Some(id),
            Err(_) => {
                bad.push(FieldViolation::new(
                    "hello.resume_session_id",
                    format!("{raw:?} is not a session id this protocol gives out"),
                ));
                None
            }
        },
    };
    let free_min = if resume.is_some() { 0 } else { 1 };
    if h.slots < free_min || h.slots > MAX_SLOTS {
        bad.push(FieldViolation::new(
            "hello.slots",
            format!("is {}; it must be from {free_min} to {MAX_SLOTS}", h.slots),
        ));
    }
    if h.held_tokens.len() > MAX_SLOTS as usize {
        bad.push(FieldViolation::new(
            "hello.held_tokens",
            format!("at most {MAX_SLOTS} tokens"),
        ));
    }
    if !bad.is_empty() {
        return Err(status::invalid_argument(&bad));
    }
    if h.protocol_version != PROTOCOL_VERSION {
        return Err(Status::failed_precondition(format!(
            "protocol version {} is not spoken here; this server speaks version {PROTOCOL_VERSION}",
            h.protocol_version
        )));
    }
    Ok(Hello {
        worker_name: h.worker_name,
        executors: h.executors,
        slots: h.slots,
        build_id: h.build_id,
        resume,
        held: h.held_tokens,
    })
}

/// A std Duration as the protobuf one, to the millisecond.
pub(super) fn duration(d: Duration) -> prost_types::Duration {
    super::convert::duration(d.as_millis() as u64)
}

fn kind_name(kind: &Option<In>) -> &'static str {
    match kind {
        None => "an empty message",
        Some(In::Hello(_)) => "a hello",
        Some(In::Credit(_)) => "a credit",
        Some(In::Checkpoint(_)) => "a checkpoint",
        Some(In::Progress(_)) => "a progress report",
        Some(In::Succeeded(_)) => "a success",
        Some(In::Failed(_)) => "a failure",
        Some(In::Stopped(_)) => "a stop",
        Some(In::Drain(_)) => "a drain",
        Some(In::Ping(_)) => "a ping",
        Some(In::Batch(_)) => "a batch",
    }
}

fn closed(reason: CloseReason) -> Status {
    match reason {
        CloseReason::ShuttingDown => Status::unavailable(
            "the server is shutting down: reconnect, with the session id, to another server or later",
        ),
        CloseReason::Silent => Status::deadline_exceeded(
            "the worker sent nothing for the lease time: its items went back to other workers",
        ),
        CloseReason::Replaced => Status::aborted("the session was resumed on another stream"),
        CloseReason::Invalid(why) => Status::invalid_argument(format!(
            "a message could not be read ({why}); reconnect with the session id: items are kept for the lease time"
        )),
    }
}

pub(super) fn interrupt_reason(reason: StopReason) -> pb::InterruptReason {
    match reason {
        StopReason::Pause => pb::InterruptReason::Pause,
        StopReason::Cancel => pb::InterruptReason::Cancel,
        StopReason::Shutdown => pb::InterruptReason::Shutdown,
    }
}

/// At most this many bytes of payloads and checkpoints go in one
/// assignments message (an item larger than that goes alone): well within
/// the 4 MiB a gRPC client takes by default.
const MAX_ASSIGNMENT_BYTES: usize = 1 << 20;

/// Assignments ready together go out in one message, in their order: a
/// busy worker reads one message where it would read one per item. Gives
/// the message to send, and the message after it if one was taken from
/// the channel already (it goes next, so nothing overtakes an assignment).
fn with_ready_assignments(
    msg: ToWorker,
    rx: &mut mpsc::UnboundedReceiver<ToWorker>,
) -> (ToWorker, Option<ToWorker>) {
    let ToWorker::Assign(mut items) = msg else {
        return (msg, None);
    };
    let size = |items: &[Assignment]| -> usize {
        items
            .iter()
            .map(|a| a.payload.len() + a.checkpoint.as_ref().map_or(0, Vec::len))
            .sum()
    };
    let mut bytes = size(&items);
    while bytes < MAX_ASSIGNMENT_BYTES {
        match rx.try_recv() {
            Ok(ToWorker::Assign(more)) => {
                let more_bytes = size(&more);
                if bytes + more_bytes > MAX_ASSIGNMENT_BYTES {
                    return (ToWorker::Assign(items), Some(ToWorker::Assign(more)));
                }
                bytes += more_bytes;
                items.extend(more);
            }
            Ok(other) => return (ToWorker::Assign(items), Some(other)),
            Err(_) => break,
        }
    }
    (ToWorker::Assign(items), None)
}

fn response(msg: ToWorker) -> pb::WorkResponse {
    let kind = match msg {
        ToWorker::Assign(items) => Out::Assignments(pb::WorkerAssignments {
            items: items.into_iter().map(assignment).collect(),
        }),
        ToWorker::CheckpointSaved {
            token,
            checkpoint_id,
        } => Out::CheckpointSaved(pb::CheckpointSaved {
            token,
            checkpoint_id,
        }),
        ToWorker::Interrupt { tokens, reason } => Out::Interrupt(pb::WorkerInterrupt {
            tokens,
            reason: interrupt_reason(reason) as i32,
        }),
        ToWorker::Revoked { token, reason } => Out::Revoked(pb::WorkerRevoked { token, reason }),
        ToWorker::Refused(r) => Out::Refused(pb::WorkerRefused {
            token: r.token,
            checkpoint_id: r.checkpoint_id,
            reason: r.reason.to_string(),
            message: r.message,
        }),
        ToWorker::Ping | ToWorker::Close(_) => Out::Ping(pb::WorkerPing {}),
    };
    pb::WorkResponse { kind: Some(kind) }
}

pub(super) fn assignment(a: hub::Assignment) -> pb::Assignment {
    pb::Assignment {
        token: a.token,
        job_id: a.job.to_string(),
        index: a.index,
        payload: a.payload,
        attempt: a.attempt,
        checkpoint: a.checkpoint,
        params: a
            .params
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        job_name: a.job_name.to_string(),
        executor: a.executor.to_string(),
        trace_context: a.trace_context.into_iter().collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::JobId;
    use std::collections::BTreeMap;

    fn item(token: u64, payload_bytes: usize) -> Assignment {
        Assignment {
            token,
            job: JobId(uuid::Uuid::nil()),
            index: token as u32,
            payload: "x".repeat(payload_bytes),
            attempt: 1,
            checkpoint: None,
            params: Arc::new(BTreeMap::new()),
            job_name: "j".into(),
            executor: "remote".into(),
            trace_context: BTreeMap::new(),
        }
    }

    fn tokens(msg: &ToWorker) -> Vec<u64> {
        match msg {
            ToWorker::Assign(items) => items.iter().map(|a| a.token).collect(),
            other => panic!("not an assignment: {other:?}"),
        }
    }

    #[test]
    fn assignments_ready_together_go_in_one_message_up_to_the_next_other_message() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        for t in [2, 3] {
            tx.send(ToWorker::Assign(vec![item(t, 10)])).unwrap();
        }
        tx.send(ToWorker::Ping).unwrap();
        tx.send(ToWorker::Assign(vec![item(4, 10)])).unwrap();
        let (msg, next) = with_ready_assignments(ToWorker::Assign(vec![item(1, 10)]), &mut rx);
        assert_eq!(tokens(&msg), [1, 2, 3]);
        // The ping keeps its place: nothing after it is merged before it.
        assert!(matches!(next, Some(ToWorker::Ping)));
        let (msg, next) = with_ready_assignments(rx.try_recv().unwrap(), &mut rx);
        assert_eq!((tokens(&msg), next.is_none()), (vec![4], true));
        // Other messages go as they are.
        let (msg, next) = with_ready_assignments(ToWorker::Ping, &mut rx);
        assert!(matches!((msg, next), (ToWorker::Ping, None)));
    }

    #[test]
    fn an_assignments_message_stays_within_its_size() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let half = MAX_ASSIGNMENT_BYTES / 2;
        tx.send(ToWorker::Assign(vec![item(2, half)])).unwrap();
        tx.send(ToWorker::Assign(vec![item(3, half)])).unwrap();
        let (msg, next) = with_ready_assignments(ToWorker::Assign(vec![item(1, 10)]), &mut rx);
        assert_eq!(tokens(&msg), [1, 2]);
        let next = next.expect("the item that did not fit goes next");
        assert_eq!(tokens(&next), [3]);
        // An item larger than the bound goes alone.
        tx.send(ToWorker::Assign(vec![item(5, 1)])).unwrap();
        let big = ToWorker::Assign(vec![item(4, 2 * MAX_ASSIGNMENT_BYTES)]);
        let (msg, next) = with_ready_assignments(big, &mut rx);
        assert_eq!(tokens(&msg), [4]);
        assert!(next.is_none());
        assert_eq!(tokens(&rx.try_recv().unwrap()), [5]);
    }
}

//! tonic glue for `WorkerService.Lend`, both ways: the lender's handler
//! (another replica borrows this server's workers, see
//! [`Lending`](crate::executor::remote::lend::Lending)) and the borrower's
//! client ([`PeerDialer`], which opens the links the hub asks for, see
//! [`link`](crate::executor::remote::link)). Messages are converted here;
//! nothing here decides anything about an item. Links are plaintext HTTP/2
//! (the peers' advertised addresses on the deployment's network), with the
//! peer token when tokens are on.

use super::workers::{assignment, duration, interrupt_reason};
use crate::{
    domain::JobId,
    executor::{
        StopReason,
        remote::{
            hub::{AssignItem, ItemMsg, Refusal, ToWorker, WorkerHub},
            lend::Lending,
            link::{Dialer, FromLender, ToLender},
        },
    },
    pb::{
        self, lend_item_message::Kind as ItemKind, lend_request::Kind as In,
        lend_response::Kind as Out, lend_to_worker::Kind as ToKind,
        worker_service_client::WorkerServiceClient,
    },
};
use futures::{Stream, StreamExt as _};
use std::{
    pin::Pin,
    sync::{Arc, Mutex, Weak},
    time::Duration,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::{
    Request, Response, Status, Streaming,
    metadata::{Ascii, MetadataValue},
    transport::Endpoint,
};

pub(super) type LendStream = Pin<Box<dyn Stream<Item = Result<pb::LendResponse, Status>> + Send>>;

/// The lender's side of one link: reads the borrower's messages until the
/// stream ends (or one is malformed, which ends it with INVALID_ARGUMENT).
pub(super) async fn lend(
    hub: Arc<WorkerHub>,
    request: Request<Streaming<pb::LendRequest>>,
) -> Result<Response<LendStream>, Status> {
    if hub.closing().is_cancelled() {
        return Err(Status::unavailable("the server is shutting down"));
    }
    let mut inbound = request.into_inner();
    let (tx, rx) = mpsc::unbounded_channel();
    let lending = Lending::open(hub.clone(), tx);
    let ended = lending.ended.clone();
    let failed: Arc<Mutex<Option<Status>>> = Arc::default();
    let fail = failed.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                msg = inbound.message() => match msg {
                    Ok(Some(msg)) => if let Err(why) = handle(&lending, msg).await {
                        tracing::warn!(%why, "a borrowing replica sent a malformed message; link ended");
                        *fail.lock().expect("fail lock") = Some(Status::invalid_argument(why));
                        break;
                    },
                    Ok(None) | Err(_) => break,
                },
                () = hub.closing().cancelled() => {
                    *fail.lock().expect("fail lock") = Some(Status::unavailable("the server is shutting down"));
                    break;
                }
            }
        }
        lending.end();
    });
    let tail = futures::stream::once(async move { failed.lock().expect("fail lock").take() })
        .filter_map(|status| async move { status.map(Err) });
    let stream = UnboundedReceiverStream::new(rx)
        .map(|m| Ok(response(m)))
        .take_until(ended.cancelled_owned())
        .chain(tail);
    Ok(Response::new(Box::pin(stream)))
}

/// One message from the borrower: checked, then to the lending link.
async fn handle(lending: &Lending, msg: pb::LendRequest) -> Result<(), String> {
    match msg.kind {
        None => Err("a LendRequest with no kind set".into()),
        Some(In::Want(w)) => {
            let job = job_id("want.job_id", &w.job_id)?;
            lending.want(job, &w.executor, w.labels.into_iter().collect(), w.seats)
        }
        Some(In::GiveBack(g)) => {
            lending.give_back(g.seat_id);
            Ok(())
        }
        Some(In::Assign(a)) => {
            let Some(item) = a.item else {
                return Err("assign.item is not set".into());
            };
            let item = AssignItem {
                index: item.index,
                payload: item.payload,
                attempt: item.attempt,
                checkpoint: item.checkpoint,
                params: Arc::new(item.params.into_iter().collect()),
                job_name: Arc::from(item.job_name),
                executor: Arc::from(item.executor),
                trace_context: item.trace_context.into_iter().collect(),
            };
            lending.assign(a.seat_id, item).await;
            Ok(())
        }
        Some(In::ToWorker(t)) => {
            let token = t.token;
            let msg = match t.kind {
                None => return Err("to_worker has no kind set".into()),
                Some(ToKind::CheckpointSaved(c)) => ToWorker::CheckpointSaved {
                    token,
                    checkpoint_id: c.checkpoint_id,
                },
                Some(ToKind::Interrupt(i)) => ToWorker::Interrupt {
                    tokens: vec![token],
                    reason: match pb::InterruptReason::try_from(i.reason) {
                        Ok(pb::InterruptReason::Pause) => StopReason::Pause,
                        Ok(pb::InterruptReason::Cancel) => StopReason::Cancel,
                        _ => StopReason::Shutdown,
                    },
                },
                Some(ToKind::Revoked(r)) => ToWorker::Revoked {
                    token,
                    reason: r.reason,
                },
                Some(ToKind::Refused(r)) => ToWorker::Refused(Refusal {
                    token,
                    checkpoint_id: r.checkpoint_id,
                    reason: refusal_code(&r.reason),
                    message: r.message,
                }),
            };
            lending.to_worker(token, msg);
            Ok(())
        }
        Some(In::Forget(f)) => {
            lending.forget(job_id("forget.job_id", &f.job_id)?);
            Ok(())
        }
    }
}

fn job_id(field: &str, raw: &str) -> Result<JobId, String> {
    raw.parse()
        .map_err(|_| format!("{field} {raw:?} is not a job id (a UUID)"))
}

/// The refusal codes of the worker protocol (anything else: UNEXPECTED).
fn refusal_code(code: &str) -> &'static str {
    match code {
        "UNKNOWN_TOKEN" => "UNKNOWN_TOKEN",
        "INVALID" => "INVALID",
        "NOT_SAVED" => "NOT_SAVED",
        _ => "UNEXPECTED",
    }
}

fn response(msg: FromLender) -> pb::LendResponse {
    let kind = match msg {
        FromLender::Granted { job, seat_id } => Out::Granted(pb::LendGranted {
            job_id: job.to_string(),
            seat_id,
        }),
        FromLender::Assigned {
            seat_id,
            token,
            worker,
        } => Out::Assigned(pb::LendAssigned {
            seat_id,
            token,
            worker_name: worker,
        }),
        FromLender::AssignFailed { seat_id, why } => Out::AssignFailed(pb::LendAssignFailed {
            seat_id,
            reason: why,
        }),
        FromLender::Item { token, msg } => Out::ItemMessage(pb::LendItemMessage {
            token,
            kind: Some(match msg {
                ItemMsg::Checkpoint { id, data } => ItemKind::Checkpoint(pb::WorkerCheckpoint {
                    token,
                    checkpoint_id: id,
                    data,
                }),
                ItemMsg::Progress(fraction) => {
                    ItemKind::Progress(pb::WorkerProgress { token, fraction })
                }
                ItemMsg::Succeeded {
                    result,
                    skip_reason,
                    counters,
                } => ItemKind::Succeeded(pb::WorkerSucceeded {
                    token,
                    result,
                    skip_reason,
                    counters: counters.into_iter().collect(),
                }),
                ItemMsg::Failed {
                    error,
                    permanent,
                    retry_after,
                } => ItemKind::Failed(pb::WorkerFailed {
                    token,
                    error,
                    permanent,
                    retry_after: retry_after.map(duration),
                }),
                ItemMsg::Stopped => ItemKind::Stopped(pb::WorkerStopped { token }),
                ItemMsg::Lost(why) => ItemKind::Lost(why),
            }),
        }),
    };
    pb::LendResponse { kind: Some(kind) }
}

/// Opens borrowing links to other replicas.
pub struct PeerDialer {
    /// `Bearer <peer token>`, when the replicas check tokens.
    authorization: Option<MetadataValue<Ascii>>,
}

impl PeerDialer {
    /// `token`: the peer token (`--peer-token`), which needs the `work`
    /// permission on the other replicas.
    pub fn new(token: Option<&str>) -> anyhow::Result<PeerDialer> {
        let authorization = match token {
            None => None,
            Some(token) => Some(format!("Bearer {token}").parse().map_err(|_| {
                anyhow::anyhow!(
                    "--peer-token (JOBVISOR_PEER_TOKEN) must be printable ASCII without spaces"
                )
            })?),
        };
        Ok(PeerDialer { authorization })
    }
}

impl Dialer for PeerDialer {
    fn dial(
        &self,
        hub: Weak<WorkerHub>,
        link: u64,
        address: String,
        out: mpsc::UnboundedReceiver<ToLender>,
    ) {
        let authorization = self.authorization.clone();
        tokio::spawn(async move {
            let why = borrow(&hub, link, &address, authorization, out).await;
            if let Some(hub) = hub.upgrade() {
                hub.link_ended(link, &why);
            }
        });
    }
}

/// Runs one borrowing link until it ends; returns why it ended.
async fn borrow(
    hub: &Weak<WorkerHub>,
    link: u64,
    address: &str,
    authorization: Option<MetadataValue<Ascii>>,
    out: mpsc::UnboundedReceiver<ToLender>,
) -> String {
    let endpoint = match Endpoint::from_shared(format!("http://{address}")) {
        Ok(endpoint) => endpoint,
        Err(e) => return format!("the advertised address {address:?} is not usable: {e}"),
    };
    let endpoint = endpoint
        .connect_timeout(Duration::from_secs(5))
        .http2_keep_alive_interval(Duration::from_secs(5))
        .keep_alive_timeout(Duration::from_secs(10))
        .keep_alive_while_idle(true);
    let channel = match endpoint.connect().await {
        Ok(channel) => channel,
        Err(e) => return format!("cannot connect to {address}: {e}"),
    };
    let mut client = WorkerServiceClient::new(channel).max_decoding_message_size(16 << 20);
    let outbound = UnboundedReceiverStream::new(out).filter_map(|m| async move { request(m) });
    let mut request = Request::new(outbound);
    if let Some(value) = authorization {
        request.metadata_mut().insert("authorization", value);
    }
    let mut inbound = match client.lend(request).await {
        Ok(response) => response.into_inner(),
        Err(status) => {
            return format!(
                "{address} refused the link ({:?}): {}",
                status.code(),
                status.message()
            );
        }
    };
    loop {
        match inbound.message().await {
            Ok(Some(msg)) => {
                let Some(hub) = hub.upgrade() else {
                    return "the server is shutting down".into();
                };
                match from_lender(msg) {
                    Ok(msg) => hub.on_lend(link, msg),
                    Err(why) => return format!("{address} sent a malformed message: {why}"),
                }
            }
            Ok(None) => return format!("{address} ended the link"),
            Err(status) => return format!("{:?}: {}", status.code(), status.message()),
        }
    }
}

fn request(msg: ToLender) -> Option<pb::LendRequest> {
    let kind = match msg {
        ToLender::Want {
            job,
            executor,
            labels,
            seats,
        } => In::Want(pb::LendWant {
            job_id: job.to_string(),
            executor: executor.to_string(),
            labels: labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            seats,
        }),
        ToLender::GiveBack(seat_id) => In::GiveBack(pb::LendGiveBack { seat_id }),
        ToLender::Assign { seat_id, item } => In::Assign(pb::LendAssign {
            seat_id,
            item: Some(assignment(item)),
        }),
        ToLender::ToWorker { token, msg } => In::ToWorker(pb::LendToWorker {
            token,
            kind: Some(match msg {
                ToWorker::CheckpointSaved {
                    token,
                    checkpoint_id,
                } => ToKind::CheckpointSaved(pb::CheckpointSaved {
                    token,
                    checkpoint_id,
                }),
                ToWorker::Interrupt { tokens, reason } => ToKind::Interrupt(pb::WorkerInterrupt {
                    tokens,
                    reason: interrupt_reason(reason) as i32,
                }),
                ToWorker::Revoked { token, reason } => {
                    ToKind::Revoked(pb::WorkerRevoked { token, reason })
                }
                ToWorker::Refused(r) => ToKind::Refused(pb::WorkerRefused {
                    token: r.token,
                    checkpoint_id: r.checkpoint_id,
                    reason: r.reason.to_string(),
                    message: r.message,
                }),
                // Never sent about one item.
                ToWorker::Assign(_) | ToWorker::Ping | ToWorker::Close(_) => return None,
            }),
        }),
        ToLender::Forget(job) => In::Forget(pb::LendForget {
            job_id: job.to_string(),
        }),
    };
    Some(pb::LendRequest { kind: Some(kind) })
}

fn from_lender(msg: pb::LendResponse) -> Result<FromLender, String> {
    Ok(match msg.kind {
        None => return Err("a LendResponse with no kind set".into()),
        Some(Out::Granted(g)) => FromLender::Granted {
            job: job_id("granted.job_id", &g.job_id)?,
            seat_id: g.seat_id,
        },
        Some(Out::Assigned(a)) => FromLender::Assigned {
            seat_id: a.seat_id,
            token: a.token,
            worker: a.worker_name,
        },
        Some(Out::AssignFailed(f)) => FromLender::AssignFailed {
            seat_id: f.seat_id,
            why: f.reason,
        },
        Some(Out::ItemMessage(m)) => FromLender::Item {
            token: m.token,
            msg: match m.kind {
                None => return Err("item_message has no kind set".into()),
                Some(ItemKind::Checkpoint(c)) => ItemMsg::Checkpoint {
                    id: c.checkpoint_id,
                    data: c.data,
                },
                Some(ItemKind::Progress(p)) => ItemMsg::Progress(p.fraction),
                Some(ItemKind::Succeeded(s)) => ItemMsg::Succeeded {
                    result: s.result,
                    skip_reason: s.skip_reason,
                    counters: s.counters.into_iter().collect(),
                },
                Some(ItemKind::Failed(f)) => ItemMsg::Failed {
                    error: f.error,
                    permanent: f.permanent,
                    retry_after: f
                        .retry_after
                        .map(|d| Duration::new(d.seconds.max(0) as u64, d.nanos.max(0) as u32)),
                },
                Some(ItemKind::Stopped(_)) => ItemMsg::Stopped,
                Some(ItemKind::Lost(why)) => ItemMsg::Lost(why),
            },
        },
    })
}

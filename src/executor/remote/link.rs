//! Borrowing workers from other replicas (multi-replica mode): a worker is
//! connected to one replica, and a job owned by another borrows its slots
//! through a link (`WorkerService.Lend`) between the two.
//!
//! One [`Link`] per lending replica, for all the jobs of this one. The hub
//! asks each link for the seats its jobs still want after the local
//! grants (see `ask_peers` in the hub); a seat granted through a link is a
//! [`Seat`](super::hub::Seat) like a local one, and an item assigned
//! through it is routed here by its token: the worker's messages arrive as
//! the lender relays them, and the job's answers go back the same way. The
//! job's worker actors stay the owners of its items, as for a local
//! worker. A broken link voids its seats and loses its items (their
//! attempt counts, as for a lost worker); the next heartbeat opens a new
//! link if the peer still advertises workers.

use super::hub::{AssignItem, Assignment, ItemMsg, ToWorker, WorkerHub};
use crate::domain::JobId;
use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex, Weak},
};
use tokio::sync::{mpsc, oneshot};

/// Another replica that lends its workers (as the store lists it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerReplica {
    /// Its replica id.
    pub id: String,
    /// Where it serves WorkerService (host:port).
    pub address: String,
    /// The executors its live worker sessions serve.
    pub executors: Vec<String>,
}

/// What a borrower sends its lender (the API turns it into protobuf).
#[derive(Debug, Clone, PartialEq)]
pub enum ToLender {
    /// The job wants this many seats of the lender's workers in all.
    Want {
        job: JobId,
        executor: Arc<str>,
        labels: Arc<BTreeMap<String, String>>,
        seats: u32,
    },
    /// A granted seat not used.
    GiveBack(u64),
    /// An item to send through a granted seat (its token is the lender's
    /// to give).
    Assign { seat_id: u64, item: Assignment },
    /// A message for the worker about item `token`.
    ToWorker { token: u64, msg: ToWorker },
    /// The job wants no more seats.
    Forget(JobId),
}

/// What a lender sends its borrower.
#[derive(Debug, Clone, PartialEq)]
pub enum FromLender {
    Granted {
        job: JobId,
        seat_id: u64,
    },
    Assigned {
        seat_id: u64,
        token: u64,
        worker: String,
    },
    AssignFailed {
        seat_id: u64,
        why: String,
    },
    /// The worker's message about item `token` (or its loss).
    Item {
        token: u64,
        msg: ItemMsg,
    },
}

/// Opens links to other replicas (the API's gRPC client): it sends what
/// arrives on `out` to the peer at `address`, hands the peer's messages
/// to [`WorkerHub::on_lend`], and calls [`WorkerHub::link_ended`] when the
/// link ends.
pub trait Dialer: Send + Sync + 'static {
    fn dial(
        &self,
        hub: Weak<WorkerHub>,
        link: u64,
        address: String,
        out: mpsc::UnboundedReceiver<ToLender>,
    );
}

/// What an assignment through the link waits for: the lender's answer,
/// and where the item's messages go once it is sent.
type Pending = (
    oneshot::Sender<Result<(u64, Arc<str>), String>>,
    mpsc::UnboundedSender<ItemMsg>,
);

/// A borrowing link to one lending replica.
pub struct Link {
    /// The lending replica's id (for logs and errors).
    peer: String,
    /// To the lender, through the dialer's stream.
    out: mpsc::UnboundedSender<ToLender>,
    /// What is in flight on the link.
    state: Mutex<LinkState>,
}

#[derive(Default)]
struct LinkState {
    /// Set once the link broke: why.
    broken: Option<String>,
    /// Assignments sent and not yet answered, by seat id.
    pending: HashMap<u64, Pending>,
    /// The items assigned through the link, by token: where their
    /// messages go.
    items: HashMap<u64, mpsc::UnboundedSender<ItemMsg>>,
}

impl Link {
    pub(crate) fn new(peer: String, out: mpsc::UnboundedSender<ToLender>) -> Link {
        Link {
            peer,
            out,
            state: Mutex::new(LinkState::default()),
        }
    }

    /// The lending replica's id.
    pub fn peer(&self) -> &str {
        &self.peer
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LinkState> {
        self.state.lock().expect("link lock")
    }

    pub(crate) fn send(&self, msg: ToLender) {
        let _ = self.out.send(msg);
    }

    /// Sends an item through the granted seat `seat_id`; returns its token,
    /// where its messages arrive, and the worker's name.
    pub(crate) async fn assign(
        &self,
        seat_id: u64,
        job: JobId,
        item: AssignItem,
    ) -> Result<(u64, mpsc::UnboundedReceiver<ItemMsg>, Arc<str>), String> {
        let (answer, answered) = oneshot::channel();
        let (to_handler, inbox) = mpsc::unbounded_channel();
        {
            let mut st = self.lock();
            if let Some(why) = &st.broken {
                return Err(self.broke_why(why));
            }
            st.pending.insert(seat_id, (answer, to_handler));
        }
        self.send(ToLender::Assign {
            seat_id,
            // The lender gives it its own token.
            item: item.into_assignment(0, job),
        });
        match answered.await {
            Ok(Ok((token, worker))) => Ok((token, inbox, worker)),
            Ok(Err(why)) => Err(why),
            Err(_) => Err(format!(
                "the link to replica {} ended before the item was sent",
                self.peer
            )),
        }
    }

    fn broke_why(&self, why: &str) -> String {
        format!("the link to replica {} broke: {why}", self.peer)
    }

    /// A message from the lender (other than a grant, which the hub takes).
    pub(crate) fn on_message(&self, msg: FromLender) {
        match msg {
            FromLender::Granted { .. } => {}
            FromLender::Assigned {
                seat_id,
                token,
                worker,
            } => {
                let pending = {
                    let mut st = self.lock();
                    let pending = st.pending.remove(&seat_id);
                    if let Some((_, to_handler)) = &pending {
                        st.items.insert(token, to_handler.clone());
                    }
                    pending
                };
                match pending {
                    Some((answer, _)) => {
                        let _ = answer.send(Ok((token, Arc::from(worker.as_str()))));
                    }
                    // Nobody waits for it (cannot happen unless the lender
                    // answered twice): the worker must not run it.
                    None => self.to_worker(
                        token,
                        ToWorker::Revoked {
                            token,
                            reason: "no job waits for this assignment".into(),
                        },
                    ),
                }
            }
            FromLender::AssignFailed { seat_id, why } => {
                let pending = self.lock().pending.remove(&seat_id);
                if let Some((answer, _)) = pending {
                    let _ = answer.send(Err(why));
                }
            }
            FromLender::Item { token, msg } => {
                let ends = msg.ends();
                let mut st = self.lock();
                if let Some(to_handler) = st.items.get(&token)
                    && (to_handler.send(msg).is_err() || ends)
                {
                    st.items.remove(&token);
                }
            }
        }
    }

    /// Sends `msg` about item `token` to its worker, through the lender.
    pub(crate) fn to_worker(&self, token: u64, msg: ToWorker) {
        self.send(ToLender::ToWorker { token, msg });
    }

    /// The item is no longer its worker's: the lender revokes it.
    pub(crate) fn revoke(&self, token: u64, reason: &str) {
        if self.lock().items.remove(&token).is_some() {
            self.to_worker(
                token,
                ToWorker::Revoked {
                    token,
                    reason: reason.into(),
                },
            );
        }
    }

    /// The item's handler ended: if the worker did not report its end,
    /// the lender revokes it (anything more for it is refused).
    pub(crate) fn release(&self, token: u64) {
        self.revoke(token, "its job no longer runs it here");
    }

    /// The link broke: assignments waiting fail, and the items assigned
    /// through it are lost.
    pub(crate) fn broke(&self, why: &str) {
        let (pending, items) = {
            let mut st = self.lock();
            st.broken = Some(why.to_string());
            (
                std::mem::take(&mut st.pending),
                std::mem::take(&mut st.items),
            )
        };
        let why = self.broke_why(why);
        for (answer, _) in pending.into_values() {
            let _ = answer.send(Err(why.clone()));
        }
        for to_handler in items.into_values() {
            let _ = to_handler.send(ItemMsg::Lost(why.clone()));
        }
    }
}

/// `total` seats split over `n` peers as evenly as can be, the first ones
/// taking the remainder.
pub(crate) fn split(total: u32, n: usize) -> Vec<u32> {
    if n == 0 {
        return Vec::new();
    }
    let n32 = u32::try_from(n).unwrap_or(u32::MAX);
    let (each, rest) = (total / n32, total % n32);
    (0..n32).map(|i| each + u32::from(i < rest)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seats_are_split_evenly_over_the_peers() {
        assert_eq!(split(5, 2), [3, 2]);
        assert_eq!(split(1, 3), [1, 0, 0]);
        assert_eq!(split(0, 2), [0, 0]);
        assert!(split(4, 0).is_empty());
        assert_eq!(split(6, 3).iter().sum::<u32>(), 6);
    }
}

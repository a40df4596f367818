//! Lending this server's workers to another replica (multi-replica mode):
//! the lender's side of one `WorkerService.Lend` stream.
//!
//! The borrower's jobs become demands in this server's hub, under the
//! link's id: they take turns with the local jobs for the free slots, and
//! a scoped worker serves only those within its scope, exactly as for
//! local jobs. A seat granted to one is kept here under a seat id and
//! announced; the borrower assigns an item through it (sent to the worker
//! as a local job's would be) or gives it back. The worker's messages
//! about the item are relayed to the borrower, whose job owns the item,
//! and its answers relayed to the worker. When the link ends, its jobs
//! are forgotten, its seats go back and its items are revoked.

use super::hub::{AssignItem, Assigned, Deliver, DemandKey, Seat, ToWorker, Via, WorkerHub};
use super::link::FromLender;
use crate::domain::JobId;
use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::{Arc, Mutex},
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// One lending link, seen from the lender.
pub struct Lending {
    /// This server's hub: its workers are the ones lent.
    hub: Arc<WorkerHub>,
    /// Names the borrower's demands in the hub.
    link: u64,
    /// To the borrower.
    out: mpsc::UnboundedSender<FromLender>,
    /// Seats and items of the link (shared with the hub's deliveries and
    /// the relays).
    state: Arc<Mutex<LendState>>,
    /// Cancelled when the link is over: the stream to the borrower ends.
    pub ended: CancellationToken,
}

#[derive(Default)]
struct LendState {
    /// Set when the link is over: nothing more is granted or assigned.
    over: bool,
    /// The last seat id given out.
    next_seat: u64,
    /// Seats granted and not yet used or given back.
    seats: HashMap<u64, Seat>,
    /// The items assigned through the link, by token.
    items: HashMap<u64, Via>,
    /// The borrower's jobs that have a demand here.
    jobs: BTreeSet<JobId>,
}

impl Lending {
    pub fn open(hub: Arc<WorkerHub>, out: mpsc::UnboundedSender<FromLender>) -> Lending {
        let link = hub.new_link_id();
        Lending {
            hub,
            link,
            out,
            state: Arc::default(),
            ended: CancellationToken::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LendState> {
        self.state.lock().expect("lending lock")
    }

    /// The borrower's job wants `seats` seats in all.
    pub fn want(
        &self,
        job: JobId,
        executor: &str,
        labels: BTreeMap<String, String>,
        seats: u32,
    ) -> Result<(), String> {
        if !self.hub.serves(executor) {
            return Err(format!(
                "executor {executor:?} is not a remote executor of this replica"
            ));
        }
        {
            let mut st = self.lock();
            if st.over {
                return Ok(());
            }
            st.jobs.insert(job);
        }
        let (state, out) = (self.state.clone(), self.out.clone());
        // Called by the hub outside its lock; this link's lock is never
        // held while calling the hub.
        let deliver: Deliver = Arc::new(move |seat: Seat| {
            let mut st = state.lock().expect("lending lock");
            if st.over {
                drop(st);
                // The link is over: the seat goes back (dropped unlocked).
                drop(seat);
                return;
            }
            st.next_seat += 1;
            let id = st.next_seat;
            st.seats.insert(id, seat);
            drop(st);
            let _ = out.send(FromLender::Granted { job, seat_id: id });
        });
        self.hub.want_for(
            DemandKey {
                job,
                link: self.link,
            },
            &Arc::from(executor),
            &Arc::new(labels),
            seats,
            &deliver,
        );
        Ok(())
    }

    /// The borrower does not use seat `seat_id`: it goes back.
    pub fn give_back(&self, seat_id: u64) {
        let seat = self.lock().seats.remove(&seat_id);
        drop(seat);
    }

    /// The borrower's job wants no more seats.
    pub fn forget(&self, job: JobId) {
        self.lock().jobs.remove(&job);
        self.hub.forget_for(DemandKey {
            job,
            link: self.link,
        });
    }

    /// Sends an item through seat `seat_id`, answers with its token, and
    /// relays the worker's messages about it until it ends.
    pub(crate) async fn assign(&self, seat_id: u64, item: AssignItem) {
        let seat = self.lock().seats.remove(&seat_id);
        let Some(seat) = seat else {
            let _ = self.out.send(FromLender::AssignFailed {
                seat_id,
                why: format!("seat {seat_id} is not granted to this link (given back, or void)"),
            });
            return;
        };
        let Assigned {
            token,
            mut inbox,
            worker,
            via,
        } = match seat.assign(item).await {
            Ok(assigned) => assigned,
            Err(why) => {
                let _ = self.out.send(FromLender::AssignFailed { seat_id, why });
                return;
            }
        };
        let over = {
            let mut st = self.lock();
            if !st.over {
                st.items.insert(token, via.clone());
            }
            st.over
        };
        if over {
            via.revoke(
                token,
                "the replica that owns its job is no longer linked here",
            );
            return;
        }
        let _ = self.out.send(FromLender::Assigned {
            seat_id,
            token,
            worker: worker.to_string(),
        });
        let (state, out) = (self.state.clone(), self.out.clone());
        tokio::spawn(async move {
            while let Some(msg) = inbox.recv().await {
                let ends = msg.ends();
                let _ = out.send(FromLender::Item { token, msg });
                if ends {
                    break;
                }
            }
            state.lock().expect("lending lock").items.remove(&token);
        });
    }

    /// The borrower's message for the worker about item `token`.
    pub fn to_worker(&self, token: u64, msg: ToWorker) {
        let revoke = matches!(msg, ToWorker::Revoked { .. });
        let via = {
            let mut st = self.lock();
            if revoke {
                st.items.remove(&token)
            } else {
                st.items.get(&token).cloned()
            }
        };
        let Some(via) = via else { return };
        match msg {
            ToWorker::Revoked { reason, .. } => via.revoke(token, &reason),
            msg => via.send(token, msg),
        }
    }

    /// The link is over: the borrower's jobs are forgotten, its seats go
    /// back, and its items are revoked.
    pub fn end(&self) {
        let (jobs, seats, items) = {
            let mut st = self.lock();
            st.over = true;
            (
                std::mem::take(&mut st.jobs),
                std::mem::take(&mut st.seats),
                std::mem::take(&mut st.items),
            )
        };
        for job in jobs {
            self.hub.forget_for(DemandKey {
                job,
                link: self.link,
            });
        }
        drop(seats);
        for (token, via) in items {
            via.revoke(
                token,
                "the replica that owns its job is no longer linked here",
            );
        }
        self.ended.cancel();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::executor::{
        StopReason,
        remote::hub::{Hello, Identity, ItemMsg, RemoteConfig},
    };

    fn hub() -> Arc<WorkerHub> {
        WorkerHub::new(RemoteConfig {
            executors: vec!["ocr".into()],
            ..RemoteConfig::default()
        })
    }

    fn hello(slots: u32) -> Hello {
        Hello::for_test(slots)
    }

    fn item() -> AssignItem {
        AssignItem {
            payload: "p".into(),
            ..AssignItem::for_test(2)
        }
    }

    #[tokio::test]
    async fn a_lent_seat_carries_the_item_to_the_worker_and_its_messages_back() {
        let hub = hub();
        let mut w = hub.attach(hello(3), Identity::default()).unwrap();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let lending = Lending::open(hub.clone(), tx);
        let job = JobId::new();
        lending.want(job, "ocr", BTreeMap::new(), 1).unwrap();
        let Some(FromLender::Granted {
            job: granted,
            seat_id,
        }) = rx.recv().await
        else {
            panic!("a seat is granted");
        };
        assert_eq!(granted, job);
        assert!(rx.try_recv().is_err(), "one seat: what the job wanted");
        lending.assign(seat_id, item()).await;
        let Some(FromLender::Assigned { token, .. }) = rx.recv().await else {
            panic!("the item was sent");
        };
        assert!(
            matches!(w.outbound.recv().await, Some(ToWorker::Assign(a)) if a[0].token == token && a[0].job == job)
        );
        hub.route(w.session, token, ItemMsg::Progress(0.25))
            .unwrap();
        assert!(matches!(
            rx.recv().await,
            Some(FromLender::Item { token: t, msg: ItemMsg::Progress(_) }) if t == token
        ));
        lending.to_worker(
            token,
            ToWorker::Interrupt {
                tokens: vec![token],
                reason: StopReason::Pause,
            },
        );
        assert!(matches!(
            w.outbound.recv().await,
            Some(ToWorker::Interrupt { .. })
        ));
        // A seat used twice is refused.
        lending.assign(seat_id, item()).await;
        assert!(matches!(
            rx.recv().await,
            Some(FromLender::AssignFailed { .. })
        ));
        // The link ends: its item is revoked.
        lending.end();
        assert!(
            matches!(w.outbound.recv().await, Some(ToWorker::Revoked { token: t, .. }) if t == token)
        );
        assert!(lending.ended.is_cancelled());
    }

    #[tokio::test]
    async fn a_borrower_s_job_gets_seats_only_of_workers_whose_scope_it_is_in() {
        let hub = hub();
        let scope = Identity {
            name: "audio".into(),
            scope: [("team".to_string(), "audio".to_string())].into(),
        };
        let _w = hub.attach(hello(2), scope).unwrap();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let lending = Lending::open(hub.clone(), tx);
        let video = [("team".to_string(), "video".to_string())].into();
        lending.want(JobId::new(), "ocr", video, 2).unwrap();
        assert!(rx.try_recv().is_err(), "out of the worker's scope");
        let audio = [("team".to_string(), "audio".to_string())].into();
        lending.want(JobId::new(), "ocr", audio, 2).unwrap();
        assert!(matches!(rx.try_recv(), Ok(FromLender::Granted { .. })));
        assert!(matches!(rx.try_recv(), Ok(FromLender::Granted { .. })));
        let err = lending
            .want(JobId::new(), "sleep", BTreeMap::new(), 1)
            .unwrap_err();
        assert!(err.contains("not a remote executor"), "{err}");
    }
}

//! Carrying out what the core decided: each [`Action`] becomes a task
//! that calls the store, a timer, a signal to the workers or a change of
//! the work queue. Nothing here decides.

use super::{SupervisorMsg, SupervisorState, action::Action, pool::View, state::Committed};
use crate::{
    domain::{Command, Job, Provenance},
    store::{ClaimedItem, StoreError},
};
use ractor::ActorRef;
use std::time::Instant;

impl SupervisorState {
    /// Hands a job read from the store (or the error that came instead) to
    /// the core, as the answer to its own transition (`settled`) or to a
    /// read, and publishes the job if it was news.
    pub(super) fn adopt(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        result: Result<Job, StoreError>,
        settled: bool,
    ) {
        let (committed, job) = match result {
            Ok(job) => (Ok(Committed::of(&job)), Some(job)),
            Err(e) => (Err(e), None),
        };
        let view = View {
            pool: &self.pool,
            queue: &self.queue,
            remote: self.handler.remote(),
        };
        let (now, out) = (Instant::now(), &mut self.actions);
        let applied = if settled {
            self.core.settled(committed, &view, now, out)
        } else {
            self.core.refreshed(committed, &view, now, out)
        };
        self.perform(myself);
        if applied && let Some(job) = &job {
            self.rt.hub.publish(crate::store::Pulse::of(job));
        }
    }

    /// Decides what comes next and does it. Called after every message.
    pub(super) fn pump(&mut self, myself: &ActorRef<SupervisorMsg>) {
        let view = View {
            pool: &self.pool,
            queue: &self.queue,
            remote: self.handler.remote(),
        };
        self.core.next(&view, Instant::now(), &mut self.actions);
        self.perform(myself);
    }

    /// Carries out the actions the core decided, in order.
    pub(super) fn perform(&mut self, myself: &ActorRef<SupervisorMsg>) {
        let mut actions = std::mem::take(&mut self.actions);
        for action in actions.drain(..) {
            self.carry_out(myself, action);
        }
        self.actions = actions;
    }

    fn carry_out(&mut self, myself: &ActorRef<SupervisorMsg>, action: Action) {
        match action {
            Action::Claim { from, max, retries } => self.claim(myself, from, max, retries),
            Action::Dispatch => self.pool.dispatch(&self.queue, self.core.job),
            Action::WakeUpAt(at) => {
                let wait = at.saturating_duration_since(Instant::now());
                myself.send_after(wait, move || SupervisorMsg::WakeUp(at));
            }
            Action::RetryAfter(wait) => {
                myself.send_after(wait, || SupervisorMsg::Retry);
            }
            Action::TickAfter(wait) => {
                myself.send_after(wait, || SupervisorMsg::Tick);
            }
            Action::Settle {
                from,
                command,
                reason,
            } => {
                // The only pause the supervisor commits is the breaker's.
                if let Command::Pause(_) = command {
                    crate::metrics::job_control("jobvisor_jobs_paused_total");
                }
                self.settle(myself, from, command, Provenance::system(reason));
            }
            Action::Signal(reason) => {
                self.stop.send_replace(reason);
            }
            Action::OpenQueue(open) => self.queue.set_open(open),
            Action::DrainQueue => {
                let _: Vec<ClaimedItem> = self.queue.drain();
            }
            Action::ReleaseHeld => {
                for ack in self.held_acks.drain(..) {
                    let _ = ack.send(());
                }
            }
            Action::Refresh => self.refresh(myself),
            Action::ReleaseOrphans => self.release_orphans(myself),
            Action::LeaseLost => {
                if let Some(book) = &self.rt.book {
                    book.report_lost(self.core.job);
                }
                let _ = myself.cast(SupervisorMsg::Abandon);
            }
            Action::FinishShutdown => self.finish_shutdown(myself),
            Action::StopWorkers(reason) => myself.stop_children(Some(reason.into())),
            Action::Exit(reason) => myself.stop(Some(reason)),
            Action::Park => self.park(myself),
            Action::Seats(want) => {
                if let (Some(remote), Some(deliver)) = (self.handler.remote(), &self.deliver) {
                    remote.want(self.core.job, want, deliver);
                }
                // Dropped here, outside the queue's lock: given back.
                drop(self.queue.trim_seats(want as usize));
            }
        }
    }
}

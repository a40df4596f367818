//! The supervisor's calls to the store and the group committer. Each runs
//! in a task of its own and reports back as a message, so the supervisor
//! always answers control calls at once.

use super::{SupervisorMsg, SupervisorState};
use crate::{
    domain::{Command, Decision, EventBody, JobState, Provenance, decide},
    engine::worker::Finished,
    store::{
        ClaimRequest, ClaimedItem, ItemWrite, JobWriter, StoreError, TransitionWrite, WriteKind,
    },
};
use ractor::ActorRef;
use std::time::Duration;

/// Most retries read back from the store at start; any others are found
/// when the claims have run dry (a refused finish says when they end).
const MAX_WAITING_READ: u32 = 10_000;

impl SupervisorState {
    /// The store as this job's runner writes to it (under its lease in
    /// multi-replica mode).
    fn job_writer(&self) -> JobWriter {
        JobWriter::new(self.rt.store.clone(), self.core.job, self.lease.clone())
    }

    /// Claims up to `max` of the job's pending items from `from_index`:
    /// its next items from the claims' bound, or the `retries` that are
    /// due (`SupervisorMsg::Claimed`).
    pub(super) fn claim(
        &self,
        myself: &ActorRef<SupervisorMsg>,
        from_index: u32,
        max: u32,
        retries: bool,
    ) {
        let (writer, job, me) = (self.rt.writer.clone(), self.core.job, myself.clone());
        let epoch = self.lease.as_ref().map(|l| l.epoch);
        tokio::spawn(async move {
            let request = ClaimRequest {
                job,
                max,
                from_index,
                retries,
            };
            let result = writer.claim(request, epoch).await;
            let _ = me.cast(SupervisorMsg::Claimed(result));
        });
    }

    /// Commits a transition of the supervisor's own, guarded by the state
    /// it believes the job is in (`SupervisorMsg::Settled`).
    pub(super) fn settle(
        &self,
        myself: &ActorRef<SupervisorMsg>,
        from: JobState,
        command: Command,
        provenance: Provenance,
    ) {
        let (store, me) = (self.job_writer(), myself.clone());
        tokio::spawn(async move {
            let result = async {
                let mut provenance = provenance;
                let command = match command {
                    Command::Finish { .. } => {
                        let counts = store.get_job().await?.counts;
                        if counts.failed > 0 {
                            provenance.reason = Some(format!(
                                "{} of {} items failed",
                                counts.failed, counts.total
                            ));
                        }
                        Command::Finish {
                            any_failed: counts.failed > 0,
                        }
                    }
                    other => other,
                };
                let Ok(Decision::Transition { from, to, effects }) = decide(from, command) else {
                    return Err(StoreError::Conflict {
                        expected: from,
                        current: from,
                    });
                };
                let pause_mode = match command {
                    Command::Pause(mode) => Some(mode),
                    _ => None,
                };
                let write = TransitionWrite {
                    from,
                    to,
                    effects,
                    provenance,
                    pause_mode,
                    resume_at: None,
                };
                store.transition(&write).await
            }
            .await;
            let _ = me.cast(SupervisorMsg::Settled(Box::new(result)));
        });
    }

    /// Puts back the items claimed by a batch whose commit was never heard
    /// of, then reads the job (`SupervisorMsg::Settled`).
    pub(super) fn release_orphans(&self, myself: &ActorRef<SupervisorMsg>) {
        let (store, me) = (self.job_writer(), myself.clone());
        tokio::spawn(async move {
            let result = match store.release_items().await {
                Ok(_) => store.get_job().await,
                Err(e) => Err(e),
            };
            let _ = me.cast(SupervisorMsg::Settled(Box::new(result)));
        });
    }

    /// Reads the job again (`SupervisorMsg::Refreshed`).
    pub(super) fn refresh(&self, myself: &ActorRef<SupervisorMsg>) {
        let (store, job, me) = (self.rt.store.clone(), self.core.job, myself.clone());
        tokio::spawn(async move {
            let result = store.get_job(job).await;
            let _ = me.cast(SupervisorMsg::Refreshed(Box::new(result)));
        });
    }

    /// Reads the retries waiting in the store (`SupervisorMsg::Waiting`).
    pub(super) fn find_waiting(&self, myself: &ActorRef<SupervisorMsg>) {
        let (store, job, me) = (self.rt.store.clone(), self.core.job, myself.clone());
        tokio::spawn(async move {
            match store.waiting_retries(job, MAX_WAITING_READ).await {
                Ok(found) if !found.is_empty() => {
                    let _ = me.cast(SupervisorMsg::Waiting(found));
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(job_id = %job, error = %e,
                        "could not read the retries waiting; they run once the claims run dry");
                }
            }
        });
    }

    /// Multi-replica mode: CancelItems through another replica may have
    /// cancelled items claimed here (the notice does not say which). Reads
    /// the job's running items and reports those claimed here that are no
    /// longer among them (`SupervisorMsg::Gone`). An item that ended here
    /// meanwhile is reported too, and stopping it changes nothing.
    pub(super) fn find_gone(&self, myself: &ActorRef<SupervisorMsg>) {
        let mut ours = self.pool.running();
        ours.extend(self.queue.claims());
        if ours.is_empty() {
            return;
        }
        let (store, job, me) = (self.rt.store.clone(), self.core.job, myself.clone());
        tokio::spawn(async move {
            let mut running = std::collections::BTreeSet::new();
            let mut query = crate::store::ItemQuery {
                job,
                states: vec![crate::domain::ItemState::Running],
                limit: 1000,
                after: None,
            };
            loop {
                match store.list_items(&query).await {
                    Ok(page) => {
                        running.extend(page.rows.iter().map(|i| i.index));
                        match page.next {
                            Some(next) => query.after = Some(next),
                            None => break,
                        }
                    }
                    Err(e) => {
                        tracing::warn!(job_id = %job, error = %e,
                            "could not read the running items; cancelled ones stop at their next checkpoint");
                        return;
                    }
                }
            }
            ours.retain(|(index, _)| !running.contains(index));
            if !ours.is_empty() {
                let _ = me.cast(SupervisorMsg::Gone(ours));
            }
        });
    }

    /// Shutting down: release the items claimed but never started, then
    /// tell whoever asked and stop. The job stays as it is in the store.
    pub(super) fn finish_shutdown(&mut self, myself: &ActorRef<SupervisorMsg>) {
        let Some(reply) = self.shutdown.take() else {
            return;
        };
        self.queue.set_open(false);
        let buffered: Vec<ClaimedItem> = self.queue.drain();
        let (writer, job, me) = (self.rt.writer.clone(), self.core.job, myself.clone());
        tokio::spawn(async move {
            let writes = buffered.into_iter().map(|item| {
                writer.write(ItemWrite {
                    job,
                    index: item.index,
                    lease: item.lease,
                    kind: WriteKind::Released { refund: true },
                })
            });
            futures::future::join_all(writes).await;
            let _ = reply.send(());
            me.stop(Some("shutdown".into()));
        });
    }

    /// Fails the item a dead worker of `slot` ran (retried from its
    /// checkpoint if it has attempts left), records the restart, and
    /// reports the outcome as the worker would have (`Done`).
    pub(super) fn fail_dead_workers_item(
        &self,
        myself: &ActorRef<SupervisorMsg>,
        slot: usize,
        item: ClaimedItem,
        error: String,
        restarts: u32,
    ) {
        let (rt, job, me) = (self.rt.clone(), self.core.job, myself.clone());
        let retry = (item.attempt < self.max_attempts)
            .then(|| self.backoff.retry_after(item.attempt, fastrand::f64()));
        tokio::spawn(async move {
            let reason = format!("worker panicked: {error}");
            let write = ItemWrite {
                job,
                index: item.index,
                lease: item.lease,
                kind: WriteKind::Failed {
                    error: reason.clone(),
                    permanent: false,
                    retry_after: retry.unwrap_or_default(),
                },
            };
            let finished = match rt.writer.write(write).await {
                Ok(true) => Finished::Failed {
                    retry,
                    error: reason.clone(),
                },
                Ok(false) => Finished::LeaseLost,
                Err(e) => Finished::NotCommitted(e.to_string()),
            };
            // Recorded only while the item was still ours (a lost lease
            // may write nothing).
            if matches!(finished, Finished::Failed { .. }) {
                let event = EventBody::WorkerRestarted {
                    index: item.index,
                    reason,
                    restarts_in_window: restarts,
                };
                if let Err(e) = rt.store.append_event(job, &event).await {
                    tracing::warn!(job_id = %job, error = %e, "could not record a worker restart");
                }
            }
            let _ = me.cast(SupervisorMsg::Done {
                slot,
                index: item.index,
                finished,
                took: Duration::ZERO,
                ack: None,
            });
        });
    }
}

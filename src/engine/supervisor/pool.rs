//! The supervisor's workers: one slot per worker, spawned linked to the
//! supervisor, woken while claimed items wait, added or retired when the
//! concurrency changes, and replaced when one dies (within a restart
//! budget, [`RestartBudget`], whose decision is the core's).

use super::{
    SupervisorMsg, SupervisorState,
    state::{Core, Workers},
};
use crate::store::ClaimedItem;
use crate::{
    domain::JobId,
    engine::{
        queue::{Current, WorkQueue},
        worker::{Worker, WorkerArgs, WorkerMsg},
    },
};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use std::{
    collections::VecDeque,
    time::{Duration, Instant},
};

/// One worker of the pool.
pub(super) struct Slot {
    worker: ActorRef<WorkerMsg>,
    /// The item it runs, if any (set by the worker as it takes an item).
    current: Current,
    /// Woken and not yet reported idle: it takes items by itself.
    awake: bool,
    /// Its previous worker died and the item's failure is being written.
    recovering: bool,
}

impl Slot {
    fn retired(&self) -> bool {
        self.current.lock().expect("current item lock").retired
    }

    fn busy(&self) -> bool {
        self.current.lock().expect("current item lock").busy() || self.recovering
    }
}

#[derive(Default)]
pub(super) struct Pool {
    slots: Vec<Slot>,
}

impl Pool {
    /// Workers running, committing or recovering an item.
    pub fn in_flight(&self) -> usize {
        self.slots.iter().filter(|s| s.busy()).count()
    }

    /// Asks the workers running an item `chosen` chooses to stop it;
    /// returns how many were.
    pub fn stop_if(&self, chosen: impl Fn(&ClaimedItem) -> bool) -> usize {
        self.slots
            .iter()
            .filter(|s| {
                s.current
                    .lock()
                    .expect("current item lock")
                    .stop_if(&chosen)
            })
            .count()
    }

    /// The items the workers run, by index and lease.
    pub fn running(&self) -> Vec<(u32, i64)> {
        self.slots
            .iter()
            .filter_map(|s| {
                let slot = s.current.lock().expect("current item lock");
                slot.running.as_ref().map(|i| (i.index, i.lease))
            })
            .collect()
    }

    /// The slot of the worker `id`, if it is one of ours.
    pub fn position(&self, id: ractor::ActorId) -> Option<usize> {
        self.slots.iter().position(|s| s.worker.get_id() == id)
    }

    /// The worker of `slot` found the queue closed or empty: it waits to
    /// be woken, or stops if its slot is retired.
    pub fn idle(&mut self, slot: usize) {
        if let Some(s) = self.slots.get_mut(slot) {
            s.awake = false;
            if s.retired() && !s.busy() {
                s.worker.stop(Some("concurrency lowered".into()));
            }
        }
    }

    /// The item of `slot` ended: a dead worker's item is recovered.
    pub fn done(&mut self, slot: usize) {
        if let Some(s) = self.slots.get_mut(slot) {
            s.recovering = false;
        }
    }

    /// Wakes idle workers while items wait; an awake worker keeps taking
    /// items by itself until the queue is closed or empty.
    pub fn dispatch(&mut self, queue: &WorkQueue, job: JobId) {
        let mut waiting = queue.ready();
        for slot in self.slots.iter_mut() {
            if waiting == 0 {
                break;
            }
            if slot.awake || slot.busy() || slot.retired() {
                continue;
            }
            slot.awake = true;
            waiting -= 1;
            if let Err(e) = slot.worker.cast(WorkerMsg::Wake) {
                // The worker is gone; its failure event will follow.
                tracing::warn!(job_id = %job, error = %e, "could not wake a worker");
            }
        }
    }
}

/// The pool and the queue, as the core reads them.
pub(super) struct View<'a> {
    pub pool: &'a Pool,
    pub queue: &'a WorkQueue,
    /// Remote executors: the job's handler, which asks the worker hub
    /// whether a worker serves the job.
    pub remote: Option<&'a crate::executor::remote::RemoteHandler>,
}

impl Workers for View<'_> {
    fn in_flight(&self) -> usize {
        self.pool.in_flight()
    }

    fn slots(&self) -> usize {
        self.pool.slots.len()
    }

    fn queued(&self) -> usize {
        self.queue.len()
    }

    fn seats(&self) -> Option<usize> {
        self.queue.seats()
    }

    fn unserved(&self) -> bool {
        self.remote.is_some_and(|r| r.unserved())
    }
}

/// Counts worker deaths within a sliding window; one more than the budget
/// is one too many.
#[derive(Debug)]
pub(super) struct RestartBudget {
    window: Duration,
    budget: u32,
    /// When workers died, within the window.
    deaths: VecDeque<Instant>,
}

impl RestartBudget {
    pub fn new(window: Duration, budget: u32) -> RestartBudget {
        RestartBudget {
            window,
            budget,
            deaths: VecDeque::new(),
        }
    }

    /// A worker died at `now`: returns the deaths within the window.
    pub fn record(&mut self, now: Instant) -> u32 {
        self.deaths.push_back(now);
        while self
            .deaths
            .front()
            .is_some_and(|t| now.duration_since(*t) > self.window)
        {
            self.deaths.pop_front();
        }
        self.deaths.len() as u32
    }

    /// More deaths within the window than the budget allows.
    pub fn spent(&self) -> bool {
        self.deaths.len() as u32 > self.budget
    }

    pub fn window(&self) -> Duration {
        self.window
    }
}

impl SupervisorState {
    /// Spawns the worker of `slot`, linked to the supervisor.
    async fn spawn_worker(
        &self,
        myself: &ActorRef<SupervisorMsg>,
        slot: usize,
        current: Current,
    ) -> Result<ActorRef<WorkerMsg>, ActorProcessingErr> {
        let args = WorkerArgs {
            job: self.core.job,
            slot,
            handler: self.handler.clone(),
            writer: self.rt.writer.clone(),
            stop: self.stop.subscribe(),
            supervisor: myself.clone(),
            in_flight: self.in_flight.clone(),
            queue: self.queue.clone(),
            current,
            pipeline_depth: self.rt.config.outstanding_per_worker(),
            max_attempts: self.max_attempts,
            backoff: self.backoff,
            start: self.start.clone(),
            executor: self.executor.as_str().into(),
        };
        let (worker, _) = Actor::spawn_linked(None, Worker, args, myself.get_cell()).await?;
        Ok(worker)
    }

    /// Adds a slot and its worker at the end of the pool.
    pub(super) async fn add_worker(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
    ) -> Result<(), ActorProcessingErr> {
        let current = Current::default();
        let slot = self.pool.slots.len();
        let worker = self.spawn_worker(myself, slot, current.clone()).await?;
        self.pool.slots.push(Slot {
            worker,
            current,
            awake: false,
            recovering: false,
        });
        Ok(())
    }

    /// Adds workers, or marks the last ones to go: a worker told to go
    /// finishes its item, takes no other, and stops.
    pub(super) async fn resize(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        concurrency: u32,
    ) -> Result<(), ActorProcessingErr> {
        self.core.resized(concurrency);
        let wanted = concurrency as usize;
        for slot in 0..self.pool.slots.len().max(wanted) {
            if slot >= self.pool.slots.len() {
                self.add_worker(myself).await?;
                continue;
            }
            let keep = slot < wanted;
            let was_retired = self.pool.slots[slot].retired();
            self.pool.slots[slot]
                .current
                .lock()
                .expect("current item lock")
                .retired = !keep;
            let s = &self.pool.slots[slot];
            if keep && was_retired {
                // Brought back: its worker may have stopped meanwhile.
                if s.worker.get_status() != ractor::ActorStatus::Running {
                    let current = s.current.clone();
                    let worker = self.spawn_worker(myself, slot, current).await?;
                    let s = &mut self.pool.slots[slot];
                    s.worker = worker;
                    s.awake = false;
                }
            } else if !keep && !s.busy() && !s.awake {
                s.worker.stop(Some("concurrency lowered".into()));
            }
        }
        tracing::info!(job_id = %self.core.job, concurrency, "concurrency changed");
        Ok(())
    }

    /// The worker of `slot` died (panicked): it is replaced unless the job
    /// ended or the slot is retired, and its item is failed (retried from
    /// its checkpoint).
    pub(super) async fn worker_died(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        slot: usize,
        error: String,
    ) -> Result<(), ActorProcessingErr> {
        let item = {
            let mut items = self.pool.slots[slot]
                .current
                .lock()
                .expect("current item lock");
            // An outcome being committed is in the writer's hands already.
            items.committing = 0;
            items.running.take()
        };
        self.pool.slots[slot].awake = false;
        let index = item.as_ref().map(|i| i.index);
        let restarts = self.core.worker_died(Instant::now(), index, &error);
        tracing::warn!(job_id = %self.core.job, ?index, %error, restarts, "worker died; restarting it");
        crate::metrics::worker_restarted();
        if self.core.replaces_workers() && !self.pool.slots[slot].retired() {
            let current = self.pool.slots[slot].current.clone();
            self.pool.slots[slot].worker = self.spawn_worker(myself, slot, current).await?;
        }
        if let Some(item) = item {
            self.pool.slots[slot].recovering = true;
            self.fail_dead_workers_item(myself, slot, item, error, restarts);
        }
        Ok(())
    }
}

/// The restart budget's decisions.
impl Core {
    /// A worker died at `now` running the item at `index`, if any: counts
    /// it against the restart budget, and fails the job once it is spent.
    /// Returns the restarts within the window.
    pub fn worker_died(&mut self, now: Instant, index: Option<u32>, error: &str) -> u32 {
        let restarts = self.restarts.record(now);
        if self.restarts.spent() {
            self.failing = Some(format!(
                "restart budget exhausted: {restarts} worker restarts within {}; last: {}",
                humantime::format_duration(self.restarts.window()),
                match index {
                    Some(i) => format!("item {i}: {error}"),
                    None => error.to_string(),
                }
            ));
        }
        restarts
    }

    /// Whether a worker that died is replaced.
    pub fn replaces_workers(&self) -> bool {
        !self.state.is_terminal() && self.in_charge()
    }
}

#[cfg(test)]
mod tests {
    use super::super::action::Action;
    use super::super::testing::*;
    use super::*;
    use crate::{
        domain::{Command, JobState},
        executor::StopReason,
    };

    #[test]
    fn the_budget_counts_deaths_within_the_window() {
        let mut b = RestartBudget::new(Duration::from_secs(10), 2);
        let t0 = Instant::now();
        assert_eq!(b.record(t0), 1);
        assert_eq!(b.record(t0 + Duration::from_secs(1)), 2);
        assert!(!b.spent(), "as many as the budget is within it");
        assert_eq!(b.record(t0 + Duration::from_secs(10)), 3);
        assert!(b.spent(), "one more than the budget within the window");
        // Eleven seconds on, the first two are out of the window.
        assert_eq!(b.record(t0 + Duration::from_secs(12)), 2);
        assert!(!b.spent());
    }

    #[test]
    fn the_restart_budget_spent_fails_the_job() {
        let mut c = core(JobState::Running);
        let now = Instant::now();
        assert_eq!(c.worker_died(now, Some(1), "panic"), 1);
        assert_eq!(c.worker_died(now, None, "panic"), 2);
        assert!(c.failing.is_none(), "two restarts are within a budget of 2");
        // Restarts out of the window no longer count.
        let later = now + Duration::from_secs(61);
        assert_eq!(c.worker_died(later, Some(1), "panic"), 1);
        c.worker_died(later, Some(1), "panic");
        assert_eq!(c.worker_died(later, Some(7), "boom"), 3);
        let why = c.failing.clone().expect("the budget is spent");
        assert!(why.contains("3 worker restarts within 1m"), "{why}");
        assert!(why.ends_with("last: item 7: boom"), "{why}");
        assert!(c.replaces_workers());
        let actions = next(&mut c, IDLE, later);
        assert!(matches!(
            &actions[..],
            [
                Action::Signal(Some(StopReason::Shutdown)),
                Action::Settle {
                    command: Command::Fail,
                    ..
                }
            ]
        ));
    }
}

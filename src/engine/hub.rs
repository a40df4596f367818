//! In-process notifications of committed changes, per job: the latest
//! sequence and counters. They only wake watchers and carry progress; the
//! events themselves are always read from the store, so a missed or
//! coalesced notification loses nothing.

use crate::{domain::JobId, executor::ProgressSink, store::Pulse};
use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};
use tokio::sync::watch;

/// How far along each item in flight of one job is, as its executor
/// reported (in memory only: it is live information, not state).
#[derive(Debug, Default)]
pub struct InFlight {
    fractions: Mutex<HashMap<u32, f32>>,
}

impl InFlight {
    /// Forgets an item that ended.
    pub fn clear(&self, index: u32) {
        self.fractions
            .lock()
            .expect("in-flight lock")
            .remove(&index);
    }

    /// The sum of the fractions done of the items in flight.
    pub fn total(&self) -> f64 {
        let fractions = self.fractions.lock().expect("in-flight lock");
        fractions.values().map(|f| f64::from(*f)).sum()
    }
}

impl ProgressSink for InFlight {
    fn report(&self, index: u32, fraction: f32) {
        self.fractions
            .lock()
            .expect("in-flight lock")
            .insert(index, fraction);
    }
}

/// The per-job pulse channels that have subscribers, and the in-flight
/// progress of the jobs this process runs.
#[derive(Debug, Default)]
pub struct Hub {
    channels: Mutex<HashMap<JobId, watch::Sender<Pulse>>>,
    in_flight: Mutex<HashMap<JobId, Arc<InFlight>>>,
}

impl Hub {
    pub fn new() -> Self {
        Hub::default()
    }

    /// Tells the job's watchers about a commit. A pulse older than the one
    /// they have (a slower path committing earlier) is ignored.
    pub fn publish(&self, pulse: Pulse) {
        let mut channels = self.channels.lock().expect("hub lock");
        let Some(tx) = channels.get(&pulse.job) else {
            return;
        };
        if tx.receiver_count() == 0 {
            channels.remove(&pulse.job);
            return;
        }
        tx.send_if_modified(|current| {
            if pulse.last_seq > current.last_seq
                || (pulse.last_seq == current.last_seq && pulse.counts != current.counts)
            {
                *current = pulse;
                true
            } else {
                false
            }
        });
    }

    /// Registers the in-flight progress of a job this process runs.
    pub fn register_in_flight(&self, job: JobId, in_flight: Arc<InFlight>) {
        self.in_flight
            .lock()
            .expect("hub lock")
            .insert(job, in_flight);
    }

    pub fn unregister_in_flight(&self, job: JobId) {
        self.in_flight.lock().expect("hub lock").remove(&job);
    }

    /// How much of its items in flight a job has done (0 if none report).
    pub fn in_flight_fraction(&self, job: JobId) -> f64 {
        let registry = self.in_flight.lock().expect("hub lock");
        registry.get(&job).map_or(0.0, |f| f.total())
    }

    /// Subscribes to a job's pulses, starting from `initial` (what the
    /// subscriber read from the store) if nothing newer is known.
    pub fn subscribe(&self, initial: Pulse) -> watch::Receiver<Pulse> {
        let mut channels = self.channels.lock().expect("hub lock");
        match channels.get(&initial.job) {
            Some(tx) => {
                let rx = tx.subscribe();
                drop(channels);
                self.publish(initial);
                rx
            }
            None => {
                let (tx, rx) = watch::channel(initial);
                channels.insert(initial.job, tx);
                rx
            }
        }
    }
}

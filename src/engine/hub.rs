//! In-process notifications of committed changes, per job: the latest
//! sequence and counters. They only wake watchers and carry progress; the
//! events themselves are always read from the store, so a missed or
//! coalesced notification loses nothing.

use crate::{domain::JobId, store::Pulse};
use std::{collections::HashMap, sync::Mutex};
use tokio::sync::watch;

/// The per-job pulse channels that have subscribers.
#[derive(Debug, Default)]
pub struct Hub {
    channels: Mutex<HashMap<JobId, watch::Sender<Pulse>>>,
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

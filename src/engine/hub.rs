//! In-process notifications of committed changes, per job: the latest
//! sequence and counters. They only wake watchers and carry progress; the
//! events themselves are always read from the store, so a missed or
//! coalesced notification loses nothing. The watchers of one job share a
//! [`Tail`] of its latest stored events, so a thousand watchers cost one
//! store read per change, not a thousand.

use crate::{
    domain::{JobEvent, JobId, JobState},
    executor::ProgressSink,
    store::{Pulse, StoreError},
};
use std::{
    collections::VecDeque,
    future::Future,
    sync::{Arc, Mutex},
};
use tokio::sync::watch;

/// Stored events a [`Tail`] keeps: a watcher further behind reads the
/// store itself.
const TAIL_KEEP: usize = 1024;

/// The latest stored events of one job, read once for all its watchers in
/// this process. It holds every event with a sequence in `(from, upto]`.
#[derive(Debug, Default)]
pub struct Tail {
    from: u64,
    upto: u64,
    events: VecDeque<JobEvent>,
}

impl Tail {
    /// Up to `limit` events after `cursor`, having read the store (with
    /// `read(after, limit)`) up to at least `wanted` if the tail was behind
    /// it; `None` if `cursor` lies before what the tail holds (the caller
    /// reads the store itself).
    pub async fn after<F, Fut>(
        &mut self,
        cursor: u64,
        wanted: u64,
        limit: u32,
        read: F,
    ) -> Result<Option<Vec<JobEvent>>, StoreError>
    where
        F: Fn(u64, u32) -> Fut,
        Fut: Future<Output = Result<Vec<JobEvent>, StoreError>>,
    {
        if self.events.is_empty() && cursor > self.upto {
            // Nothing held: start where this watcher is.
            self.from = cursor;
            self.upto = cursor;
        }
        if cursor < self.from {
            return Ok(None);
        }
        while self.upto < wanted {
            let page = read(self.upto, limit).await?;
            let full = page.len() == limit as usize;
            for event in page {
                if event.seq > self.upto {
                    self.upto = event.seq;
                    self.events.push_back(event);
                }
            }
            while self.events.len() > TAIL_KEEP {
                if let Some(old) = self.events.pop_front() {
                    self.from = old.seq;
                }
            }
            if !full {
                break;
            }
        }
        if cursor < self.from {
            // Evicted while catching up: this watcher was far behind.
            return Ok(None);
        }
        Ok(Some(
            self.events
                .iter()
                .filter(|e| e.seq > cursor)
                .take(limit as usize)
                .cloned()
                .collect(),
        ))
    }
}

/// A job's pulse channel and the tail its watchers share.
#[derive(Debug)]
struct Channel {
    tx: watch::Sender<Pulse>,
    tail: Arc<tokio::sync::Mutex<Tail>>,
}

/// How far along each item in flight of one job is, as its executor
/// reported (in memory only: it is live information, not state), and the
/// newest state of the job this process has committed or seen.
#[derive(Debug, Default)]
pub struct InFlight {
    fractions: Mutex<foldhash::HashMap<u32, f32>>,
    state: Mutex<Option<(JobState, u64)>>,
}

impl InFlight {
    /// Records the job's state as of `seq`, unless a newer one is known.
    pub fn note(&self, state: JobState, seq: u64) {
        let mut known = self.state.lock().expect("in-flight lock");
        if known.is_none_or(|(_, at)| seq >= at) {
            *known = Some((state, seq));
        }
    }

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
    channels: Mutex<foldhash::HashMap<JobId, Channel>>,
    in_flight: Mutex<foldhash::HashMap<JobId, Arc<InFlight>>>,
}

impl Hub {
    pub fn new() -> Self {
        Hub::default()
    }

    /// Tells the job's watchers about a commit. A pulse older than the one
    /// they have (a slower path committing earlier) is ignored.
    pub fn publish(&self, pulse: Pulse) {
        if let Some(live) = self.in_flight.lock().expect("hub lock").get(&pulse.job) {
            live.note(pulse.state, pulse.last_seq);
        }
        let mut channels = self.channels.lock().expect("hub lock");
        let Some(Channel { tx, .. }) = channels.get(&pulse.job) else {
            return;
        };
        if tx.receiver_count() == 0 {
            channels.remove(&pulse.job);
            return;
        }
        // Watchers are woken only by a new sequence (a stored event, a
        // state change); newer counters are stored without waking anybody
        // and read at each watcher's next progress tick. Waking a thousand
        // watchers on every commit would cost more than the job.
        tx.send_if_modified(|current| {
            if pulse.last_seq > current.last_seq {
                *current = pulse;
                true
            } else {
                if pulse.last_seq == current.last_seq && pulse.counts != current.counts {
                    *current = pulse;
                }
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

    /// The newest state this process has committed or seen for a job it
    /// runs, if it runs it. Only a guess: another process may have changed
    /// the job since.
    pub fn known_state(&self, job: JobId) -> Option<JobState> {
        let registry = self.in_flight.lock().expect("hub lock");
        let live = registry.get(&job)?;
        let known = *live.state.lock().expect("in-flight lock");
        known.map(|(state, _)| state)
    }

    /// How much of its items in flight a job has done (0 if none report).
    pub fn in_flight_fraction(&self, job: JobId) -> f64 {
        let registry = self.in_flight.lock().expect("hub lock");
        registry.get(&job).map_or(0.0, |f| f.total())
    }

    /// Subscribes to a job's pulses, starting from `initial` (what the
    /// subscriber read from the store) if nothing newer is known, and
    /// returns the tail of stored events its watchers share.
    pub fn subscribe(
        &self,
        initial: Pulse,
    ) -> (watch::Receiver<Pulse>, Arc<tokio::sync::Mutex<Tail>>) {
        let mut channels = self.channels.lock().expect("hub lock");
        match channels.get(&initial.job) {
            Some(channel) => {
                let rx = channel.tx.subscribe();
                let tail = channel.tail.clone();
                drop(channels);
                self.publish(initial);
                (rx, tail)
            }
            None => {
                let (tx, rx) = watch::channel(initial);
                let tail = Arc::new(tokio::sync::Mutex::new(Tail::default()));
                channels.insert(
                    initial.job,
                    Channel {
                        tx,
                        tail: tail.clone(),
                    },
                );
                (rx, tail)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{EventBody, JobState};
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn event(seq: u64) -> JobEvent {
        JobEvent {
            seq,
            at: chrono::Utc::now(),
            body: EventBody::StateChanged {
                from: Some(JobState::Running),
                to: JobState::Running,
                reason: Some(format!("event {seq}")),
                requested_by: None,
                request_id: None,
                pause_mode: None,
            },
        }
    }

    /// A store holding events 1..=n, counting its reads.
    fn store(
        n: u64,
        reads: &AtomicUsize,
    ) -> impl Fn(u64, u32) -> std::future::Ready<Result<Vec<JobEvent>, StoreError>> + '_ {
        move |after, limit| {
            reads.fetch_add(1, Ordering::SeqCst);
            std::future::ready(Ok(((after + 1)..=n)
                .take(limit as usize)
                .map(event)
                .collect()))
        }
    }

    fn seqs(events: &[JobEvent]) -> Vec<u64> {
        events.iter().map(|e| e.seq).collect()
    }

    #[tokio::test]
    async fn watchers_at_the_same_place_share_one_read() {
        let reads = AtomicUsize::new(0);
        let mut tail = Tail::default();
        for _ in 0..100 {
            let got = tail
                .after(0, 5, 500, store(5, &reads))
                .await
                .unwrap()
                .unwrap();
            assert_eq!(seqs(&got), vec![1, 2, 3, 4, 5]);
        }
        assert_eq!(reads.load(Ordering::SeqCst), 1);
        // A new commit: one more read for everybody.
        for cursor in [5, 5, 3] {
            let got = tail
                .after(cursor, 7, 500, store(7, &reads))
                .await
                .unwrap()
                .unwrap();
            assert_eq!(*seqs(&got).last().unwrap(), 7);
            assert_eq!(seqs(&got)[0], cursor + 1);
        }
        assert_eq!(reads.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_watcher_behind_the_tail_reads_the_store_itself() {
        let reads = AtomicUsize::new(0);
        let mut tail = Tail::default();
        // The first watcher starts at 10: the tail holds (10, 12].
        let got = tail
            .after(10, 12, 500, store(12, &reads))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(seqs(&got), vec![11, 12]);
        assert!(
            tail.after(4, 12, 500, store(12, &reads))
                .await
                .unwrap()
                .is_none()
        );
    }

    #[tokio::test]
    async fn the_tail_keeps_a_bounded_window_and_pages() {
        let reads = AtomicUsize::new(0);
        let mut tail = Tail::default();
        let n = (TAIL_KEEP as u64) * 3;
        let got = tail.after(0, n, 500, store(n, &reads)).await.unwrap();
        // Evicted while catching up: the caller was too far behind.
        assert!(got.is_none());
        assert_eq!(tail.events.len(), TAIL_KEEP);
        assert_eq!(tail.upto, n);
        let got = tail
            .after(n - 10, n, 500, store(n, &reads))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(seqs(&got), ((n - 9)..=n).collect::<Vec<_>>());
        // Pages of `limit` from the tail.
        let got = tail
            .after(n - 100, n, 30, store(n, &reads))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(seqs(&got), ((n - 99)..=(n - 70)).collect::<Vec<_>>());
    }
}

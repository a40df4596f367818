//! WatchJob: a snapshot, then every stored event after the caller's
//! sequence (replayed from the store, then live), with progress at a
//! bounded rate, until the job's terminal event.
//!
//! Events always come from the store's log, read in pages after the last
//! sequence sent; the hub only says when to look, and a periodic re-read
//! covers writers in other processes. So a slow watcher is refilled from
//! the store (never skipped), and a watcher never slows the job: the job
//! does not wait for anybody's stream.

use super::{Engine, EngineError};
use crate::{
    domain::{ItemCounts, Job, JobEvent, JobId, JobState},
    store::Pulse,
};
use chrono::{DateTime, Utc};
use std::{
    collections::VecDeque,
    time::{Duration, Instant},
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

/// Stored events read per query.
const PAGE: u32 = 500;
/// How often a stream re-reads the store even without a local pulse (for
/// jobs run by another process).
const POLL: Duration = Duration::from_secs(1);
/// The window over which the rate is measured.
const RATE_WINDOW: Duration = Duration::from_secs(10);

/// Counts, rate and time to completion.
#[derive(Debug, Clone, PartialEq)]
pub struct Progress {
    pub seq: u64,
    pub at: DateTime<Utc>,
    pub counts: ItemCounts,
    /// How much of its items in flight the job has done, summed (items
    /// whose executor reports progress).
    pub in_flight_fraction: f64,
    pub items_per_second: f64,
    pub eta: Option<Duration>,
}

/// One message of a watch stream.
#[derive(Debug, Clone, PartialEq)]
pub enum WatchItem {
    Snapshot(Box<Job>),
    Event(JobEvent),
    Progress(Progress),
}

/// Measures the rate at which items end.
#[derive(Default)]
struct Rate {
    samples: VecDeque<(Instant, f64)>,
}

impl Rate {
    fn observe(&mut self, ended: f64) -> f64 {
        let now = Instant::now();
        self.samples.push_back((now, ended));
        while self
            .samples
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) > RATE_WINDOW)
        {
            self.samples.pop_front();
        }
        let (t0, n0) = self.samples.front().copied().unwrap_or((now, ended));
        let dt = now.duration_since(t0).as_secs_f64();
        if dt < 0.2 {
            0.0
        } else {
            (ended - n0).max(0.0) / dt
        }
    }
}

impl Engine {
    /// Streams a job (see the module docs). The stream ends with an error
    /// if the job is unknown, the store fails, or the server shuts down.
    pub async fn watch(
        &self,
        id: JobId,
        from_seq: u64,
    ) -> Result<ReceiverStream<Result<WatchItem, EngineError>>, EngineError> {
        self.check_open()?;
        let job = self.get_job(id).await?;
        let (tx, rx) = mpsc::channel(64);
        let engine = self.clone();
        tokio::spawn(async move {
            crate::metrics::watch_streams(1.0);
            let result = engine.stream(job, from_seq, &tx).await;
            crate::metrics::watch_streams(-1.0);
            if let Err(e) = result {
                let _ = tx.send(Err(e)).await;
            }
        });
        Ok(ReceiverStream::new(rx))
    }

    async fn stream(
        &self,
        job: Job,
        from_seq: u64,
        tx: &mpsc::Sender<Result<WatchItem, EngineError>>,
    ) -> Result<(), EngineError> {
        let id = job.id;
        let (mut pulses, tail) = self.rt.hub.subscribe(Pulse {
            job: id,
            state: job.state,
            counts: job.counts,
            last_seq: job.last_seq,
        });
        let mut known = *pulses.borrow();
        let mut sent_counts = job.counts;
        let mut sent_partial = 0.0;
        let mut rate = Rate::default();
        rate.observe(job.counts.ended() as f64);
        if tx
            .send(Ok(WatchItem::Snapshot(Box::new(job))))
            .await
            .is_err()
        {
            return Ok(());
        }
        let mut cursor = from_seq;
        let mut progress = tokio::time::interval(self.rt.config.progress_interval);
        progress.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut poll = tokio::time::interval(POLL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut last_pulse = Instant::now();
        let mut heard = known;
        loop {
            // Send everything stored after the cursor: through the tail
            // this job's watchers share, or from the store for a watcher
            // behind it. Nothing to read while the cursor is at the last
            // sequence known (a commit pulses, another process's commits
            // are polled).
            while cursor < known.last_seq {
                let shared = tail
                    .lock()
                    .await
                    .after(cursor, known.last_seq, PAGE, |after, limit| {
                        self.rt.store.events_after(id, after, limit)
                    })
                    .await?;
                let events = match shared {
                    Some(events) => events,
                    None => self.rt.store.events_after(id, cursor, PAGE).await?,
                };
                let full = events.len() == PAGE as usize;
                for event in events {
                    cursor = event.seq;
                    let terminal = event.body.is_terminal();
                    if tx.send(Ok(WatchItem::Event(event))).await.is_err() {
                        return Ok(());
                    }
                    if terminal {
                        return Ok(());
                    }
                }
                if !full {
                    break;
                }
            }
            // A terminal job whose terminal event lies at or before the
            // caller's sequence: nothing more will come.
            if known.state.is_terminal() && cursor >= known.last_seq {
                return Ok(());
            }
            tokio::select! {
                changed = pulses.changed() => {
                    if changed.is_err() {
                        return Ok(());
                    }
                    known = *pulses.borrow_and_update();
                    last_pulse = Instant::now();
                }
                _ = progress.tick() => {
                    // The latest counters (stored without a wake-up).
                    let latest = *pulses.borrow();
                    if latest.last_seq >= known.last_seq {
                        known = latest;
                    }
                    let partial = self.rt.hub.in_flight_fraction(id);
                    if known.counts != sent_counts || partial != sent_partial {
                        sent_counts = known.counts;
                        sent_partial = partial;
                        let item = progress_of(&known, partial, &mut rate);
                        if tx.send(Ok(WatchItem::Progress(item))).await.is_err() {
                            return Ok(());
                        }
                    }
                }
                _ = poll.tick() => {
                    // Another process may run this job: read it directly
                    // when nothing was heard locally for a while (counters
                    // stored without a wake-up count as heard).
                    let latest = *pulses.borrow();
                    if latest != heard {
                        heard = latest;
                        last_pulse = Instant::now();
                    }
                    if last_pulse.elapsed() >= POLL {
                        let job = self.get_job(id).await?;
                        known = Pulse {
                            job: id,
                            state: job.state,
                            counts: job.counts,
                            last_seq: job.last_seq,
                        };
                    }
                }
                _ = self.closing.cancelled() => {
                    return Err(EngineError::Unavailable(
                        "the server is shutting down; reconnect with your last sequence".into(),
                    ));
                }
                _ = tx.closed() => return Ok(()),
            }
        }
    }
}

fn progress_of(pulse: &Pulse, in_flight_fraction: f64, rate: &mut Rate) -> Progress {
    let done = pulse.counts.ended() as f64 + in_flight_fraction;
    let per_second = rate.observe(done);
    let remaining =
        ((pulse.counts.pending() + pulse.counts.running) as f64 - in_flight_fraction).max(0.0);
    let eta = (pulse.state == JobState::Running && per_second > 0.0)
        .then(|| Duration::from_secs_f64(remaining / per_second));
    Progress {
        seq: pulse.last_seq,
        at: Utc::now(),
        counts: pulse.counts,
        in_flight_fraction,
        items_per_second: per_second,
        eta,
    }
}

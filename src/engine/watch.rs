//! WatchJob: a snapshot, then every stored event after the caller's
//! sequence (replayed from the store, then live), with progress at a
//! bounded rate, until the job's terminal event.
//!
//! Events always come from the store's log, read in pages after the last
//! sequence sent; the hub only says when to look, and a periodic re-read
//! covers writers in other processes. So a slow watcher is refilled from
//! the store (never skipped), and a watcher never slows the job: the job
//! does not wait for anybody's stream.
//!
//! What a stream costs while its client does not read is bounded: a batch
//! holds about [`BATCH_BYTES`] at most (the frame HTTP/2 keeps until the
//! client makes room), its store reads queue for one of the hub's few
//! places ([`Hub::watch_read`](super::Hub::watch_read)), and a stream
//! whose client took nothing for `watch_stall` while newer events were
//! stored ends with [`EngineError::Lagging`] (the client watches again
//! from its last sequence).

use super::{
    Engine, EngineError,
    hub::{EventBatch, SharedEvent, Tail},
};
use crate::{
    domain::{EventBody, ItemCounts, Job, JobEvent, JobId, JobState},
    store::Pulse,
};
use chrono::{DateTime, Utc};
use futures::{Stream, TryStreamExt as _};
use std::{
    collections::VecDeque,
    pin::Pin,
    sync::Arc,
    time::{Duration, Instant},
};

/// Stored events read per query, at most.
const PAGE: u32 = 500;
/// About the most a batch of events holds (as [`approx_bytes`] counts),
/// unless one event alone is larger: a client that does not read keeps
/// one batch waiting in the server, not a page of 500 large events.
const BATCH_BYTES: usize = 128 * 1024;
/// The largest a stored event gets, about (an item's error is at most
/// 8 KiB): the first page of a stream is sized for events this large.
const EVENT_BYTES: usize = 9 * 1024;
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
    /// The job's counters, as committed.
    pub counters: crate::domain::Counters,
}

/// One message of a watch stream.
#[derive(Debug, Clone, PartialEq)]
pub enum WatchItem {
    /// The job as the stream starts, and what it waits for (see
    /// [`Engine::waiting_for`]).
    Snapshot(Box<Job>, Option<String>),
    /// Shared with the job's other watchers in this process, encoding
    /// included.
    Event(Arc<SharedEvent>),
    Progress(Progress),
}

/// What a watch stream sends at once (in one frame): a snapshot, a
/// progress message, or stored events.
#[derive(Debug, Clone, PartialEq)]
pub enum WatchBatch {
    One(WatchItem),
    /// Never empty. Shared with the job's other watchers at the same
    /// place in this process, encoding included.
    Events(Arc<EventBatch>),
}

impl WatchBatch {
    /// The messages, one by one.
    pub fn into_items(self) -> Vec<WatchItem> {
        match self {
            WatchBatch::One(item) => vec![item],
            WatchBatch::Events(batch) => batch
                .events()
                .iter()
                .map(|event| WatchItem::Event(event.clone()))
                .collect(),
        }
    }
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
    ///
    /// The stream does its work when it is polled, in the task that sends
    /// it to the client: no task of its own, no buffer between the two. A
    /// client that does not read holds nothing up; it reads the store from
    /// its cursor when it comes back.
    ///
    /// Messages are produced a batch at a time (a page of events, a
    /// snapshot or a progress message), and every message of a batch is
    /// ready at once: gRPC encodes a batch into one frame, and the client
    /// is woken once for it.
    pub async fn watch(
        &self,
        id: JobId,
        from_seq: u64,
        window: Duration,
    ) -> Result<impl Stream<Item = Result<WatchItem, EngineError>> + Send + 'static, EngineError>
    {
        Ok(self
            .watch_batches(id, from_seq, window)
            .await?
            .map_ok(|batch| futures::stream::iter(batch.into_items().into_iter().map(Ok)))
            .try_flatten())
    }

    /// [`Engine::watch`], a batch at a time (never empty).
    ///
    /// `window`: the stream looks for new stored events at most once per
    /// this window after it sent some (the hub's own window, the least,
    /// applies to all the job's watchers in this process). A longer one
    /// costs a busy job's stream a wake-up per window instead of one per
    /// hub window.
    pub async fn watch_batches(
        &self,
        id: JobId,
        from_seq: u64,
        window: Duration,
    ) -> Result<impl Stream<Item = Result<WatchBatch, EngineError>> + Send + 'static, EngineError>
    {
        self.check_open()?;
        let job = self.rt.hub.watch_read(self.get_job(id)).await?;
        let window = (window > self.rt.config.watch_window).then_some(window);
        // Boxed: the stream moves it from one batch's future to the next.
        let watcher = Box::new(Watcher::new(self.clone(), job, from_seq, window));
        Ok(futures::stream::unfold(
            Some(watcher),
            |watcher| async move {
                let mut watcher = watcher?;
                match watcher.next().await {
                    Ok(Some(batch)) => Some((Ok(batch), Some(watcher))),
                    Ok(None) => None,
                    // An error ends the stream.
                    Err(e) => Some((Err(e), None)),
                }
            },
        ))
    }
}

/// One watch stream's state between its batches.
struct Watcher {
    engine: Engine,
    id: JobId,
    /// The job as read when the stream started, until it is sent.
    snapshot: Option<Box<Job>>,
    pulses: tokio::sync::watch::Receiver<Pulse>,
    tail: Arc<Tail>,
    /// The newest pulse this stream acted on.
    known: Pulse,
    /// The last stored event sent (or the caller's sequence).
    cursor: u64,
    /// The newest sequence after which the store was found empty.
    looked: u64,
    /// The terminal event was sent.
    ended: bool,
    /// Events to read per query: as many as fit in [`BATCH_BYTES`], judged
    /// by the largest of the last batch.
    limit: u32,
    /// When the last batch was handed to the client's stream: the next
    /// call comes when the client has made room for more.
    handed: Option<Instant>,
    /// When the last batch was produced: a progress message keeps a quiet
    /// stream alive after `stream_keepalive`.
    sent_at: Instant,
    sent_counts: ItemCounts,
    sent_partial: f64,
    /// The job's counters as last read from the store (the snapshot, a
    /// poll); a job this process runs has newer ones in the hub.
    read_counters: crate::domain::Counters,
    sent_counters: crate::domain::Counters,
    rate: Rate,
    /// When the next progress message is due, and the next check for a
    /// job run elsewhere: one timer for both, set to the earlier (a stream
    /// is woken about 50 times a second, and each wake-up polls what it
    /// waits for).
    next_progress: tokio::time::Instant,
    next_poll: tokio::time::Instant,
    timer: Pin<Box<tokio::time::Sleep>>,
    last_pulse: Instant,
    heard: Pulse,
    /// The stream's own window, when longer than the hub's: after a batch
    /// of events it does not listen to the job's pulses until `window`
    /// later (`gate`), so a busy job wakes it once per window.
    window: Option<Duration>,
    gate: Option<tokio::time::Instant>,
}

impl Watcher {
    fn new(engine: Engine, job: Job, from_seq: u64, window: Option<Duration>) -> Watcher {
        let id = job.id;
        let (pulses, tail) = engine.rt.hub.subscribe(Pulse::of(&job));
        let known = *pulses.borrow();
        let mut rate = Rate::default();
        rate.observe(job.counts.ended() as f64);
        // Both are due at once, as an interval's first tick is.
        let now = tokio::time::Instant::now();
        crate::metrics::watch_streams(1.0);
        Watcher {
            engine,
            id,
            sent_counts: job.counts,
            read_counters: job.counters.clone(),
            sent_counters: job.counters.clone(),
            snapshot: Some(Box::new(job)),
            pulses,
            tail,
            known,
            cursor: from_seq,
            looked: 0,
            ended: false,
            limit: (BATCH_BYTES / EVENT_BYTES) as u32,
            handed: None,
            sent_at: Instant::now(),
            sent_partial: 0.0,
            rate,
            next_progress: now,
            next_poll: now,
            timer: Box::pin(tokio::time::sleep_until(now)),
            last_pulse: Instant::now(),
            heard: known,
            window,
            gate: None,
        }
    }

    /// The next messages to send; `None` once the terminal event was sent.
    /// A stream whose client took nothing for `watch_stall` (the time since
    /// the last batch was handed over) while newer events were stored
    /// fails with [`EngineError::Lagging`] instead.
    async fn next(&mut self) -> Result<Option<WatchBatch>, EngineError> {
        if let Some(handed) = self.handed.take() {
            let stalled = handed.elapsed();
            let stored = self.pulses.borrow().last_seq.max(self.known.last_seq);
            if stalled >= self.engine.rt.config.watch_stall && stored > self.cursor && !self.ended {
                return Err(EngineError::Lagging {
                    sent: self.cursor,
                    stalled,
                });
            }
        }
        let batch = self.produce().await?;
        if batch.is_some() {
            self.handed = Some(Instant::now());
            self.sent_at = Instant::now();
        }
        Ok(batch)
    }

    /// [`Watcher::next`] without the check for a client behind.
    async fn produce(&mut self) -> Result<Option<WatchBatch>, EngineError> {
        if let Some(job) = self.snapshot.take() {
            let waiting = self.engine.waiting_for(&job);
            return Ok(Some(WatchBatch::One(WatchItem::Snapshot(job, waiting))));
        }
        let id = self.id;
        let store = &self.engine.rt.store;
        let hub = &self.engine.rt.hub;
        loop {
            if self.ended {
                return Ok(None);
            }
            // Send what is stored after the cursor, a page at a time:
            // through the tail this job's watchers share, or from the
            // store for a watcher behind it. Nothing to read while the
            // cursor is at the last sequence known (a commit pulses,
            // another process's commits are polled).
            if self.cursor < self.known.last_seq && self.looked < self.known.last_seq {
                let shared = self
                    .tail
                    .after(
                        self.cursor,
                        self.known.last_seq,
                        self.limit,
                        |after, limit| hub.watch_read(store.events_after(id, after, limit)),
                    )
                    .await?;
                let batch = match shared {
                    Some(batch) => batch,
                    None => Arc::new(EventBatch::new(
                        (hub.watch_read(store.events_after(id, self.cursor, self.limit))
                            .await?)
                            .into_iter()
                            .map(|event| Arc::new(SharedEvent::new(event)))
                            .collect(),
                    )),
                };
                let batch = within_budget(batch);
                if !batch.events().is_empty() {
                    self.limit = page_for(batch.events());
                }
                // Up to the terminal event, if it is there (the batch
                // ends with it).
                if let Some(last) = batch.events().last() {
                    self.cursor = last.seq;
                    self.ended = last.body.is_terminal();
                    self.gate = self
                        .window
                        .map(|window| tokio::time::Instant::now() + window);
                    return Ok(Some(WatchBatch::Events(batch)));
                }
                // Nothing after the cursor yet, whatever the pulse said:
                // wait for the next one.
                self.looked = self.known.last_seq;
            }
            // A terminal job whose terminal event lies at or before the
            // caller's sequence: nothing more will come.
            if self.known.state.is_terminal() && self.cursor >= self.known.last_seq {
                return Ok(None);
            }
            // The engine closing wakes every watcher (the hub's flag is
            // set before the wake-up, so none waits past it).
            if self.engine.rt.hub.is_closed() {
                return Err(EngineError::ShuttingDown(
                    "the server is shutting down; reconnect with your last sequence",
                ));
            }
            // Within the stream's own window after its last events, the
            // pulses wait (one wake-up at its end takes all they said).
            let gate = self.gate.filter(|gate| *gate > tokio::time::Instant::now());
            tokio::select! {
                biased;
                changed = self.pulses.changed(), if gate.is_none() => {
                    if changed.is_err() {
                        return Ok(None);
                    }
                    self.known = *self.pulses.borrow_and_update();
                    self.last_pulse = Instant::now();
                }
                () = tokio::time::sleep_until(gate.unwrap_or_else(tokio::time::Instant::now)),
                    if gate.is_some() => {
                    self.gate = None;
                }
                () = self.timer.as_mut() => {
                    let now = tokio::time::Instant::now();
                    let progress_due = now >= self.next_progress;
                    if progress_due {
                        self.next_progress = later_tick(
                            self.next_progress,
                            self.engine.rt.config.progress_interval,
                            now,
                        );
                    }
                    let poll_due = now >= self.next_poll;
                    if poll_due {
                        self.next_poll = later_tick(self.next_poll, POLL, now);
                    }
                    self.timer
                        .as_mut()
                        .reset(self.next_progress.min(self.next_poll));
                    if poll_due {
                        // Another process may run this job: read it
                        // directly when nothing was heard locally for a
                        // while (counters stored without a wake-up count
                        // as heard).
                        let latest = *self.pulses.borrow();
                        if latest != self.heard {
                            self.heard = latest;
                            self.last_pulse = Instant::now();
                        }
                        if self.last_pulse.elapsed() >= POLL {
                            let job = hub.watch_read(self.engine.get_job(id)).await?;
                            self.known = Pulse::of(&job);
                            self.read_counters = job.counters;
                        }
                    }
                    if progress_due {
                        // The latest counters (stored without a wake-up).
                        let latest = *self.pulses.borrow();
                        if latest.last_seq >= self.known.last_seq {
                            self.known = latest;
                        }
                        let partial = self.engine.rt.hub.in_flight_fraction(id);
                        let counters = self
                            .engine
                            .rt
                            .hub
                            .live_counters(id)
                            .unwrap_or_else(|| self.read_counters.clone());
                        // Sent when the counts moved, and on a quiet stream
                        // (a paused job, long items) as its keepalive.
                        let quiet = self.sent_at.elapsed() >= self.engine.rt.config.stream_keepalive;
                        if self.known.counts != self.sent_counts
                            || partial != self.sent_partial
                            || counters != self.sent_counters
                            || quiet
                        {
                            self.sent_counts = self.known.counts;
                            self.sent_partial = partial;
                            self.sent_counters = counters.clone();
                            // Its sequence is the last stored event this
                            // stream sent, not the newest the hub knows
                            // of (which may not have been read yet): a
                            // client that resumes from it misses nothing.
                            let item = progress_of(
                                &self.known,
                                self.cursor,
                                partial,
                                counters,
                                &mut self.rate,
                            );
                            return Ok(Some(WatchBatch::One(WatchItem::Progress(item))));
                        }
                    }
                }
            }
        }
    }
}

/// About how many bytes an event takes on the wire: its text, and a
/// little for the rest.
fn approx_bytes(event: &JobEvent) -> usize {
    let text = |s: &Option<String>| s.as_ref().map_or(0, String::len);
    64 + match &event.body {
        EventBody::StateChanged {
            reason,
            requested_by,
            request_id,
            ..
        } => text(reason) + text(requested_by) + text(request_id),
        EventBody::ItemFailed { error, .. } => error.len(),
        EventBody::WorkerRestarted { reason, .. } => reason.len(),
        EventBody::ConcurrencyChanged {
            requested_by,
            request_id,
            ..
        }
        | EventBody::RateLimitChanged {
            requested_by,
            request_id,
            ..
        }
        | EventBody::ItemsAdded {
            requested_by,
            request_id,
            ..
        } => text(requested_by) + text(request_id),
        EventBody::ItemsCancelled {
            reason,
            requested_by,
            ..
        } => text(reason) + text(requested_by),
        EventBody::OwnerChanged {
            owner,
            previous_owner,
            ..
        } => owner.len() + text(previous_owner),
    }
}

/// The batch, or as much of it as fits in [`BATCH_BYTES`] (one event at
/// least): the rest is read again for the next batch.
fn within_budget(batch: Arc<EventBatch>) -> Arc<EventBatch> {
    let events = batch.events();
    let mut total = 0;
    let fits = events
        .iter()
        .take_while(|event| {
            total += approx_bytes(event);
            total <= BATCH_BYTES
        })
        .count()
        .max(1);
    if fits >= events.len() {
        return batch;
    }
    Arc::new(EventBatch::new(events[..fits].to_vec()))
}

/// Events to read next: as many as fit in [`BATCH_BYTES`] if they are as
/// large as the largest of `last`.
fn page_for(last: &[Arc<SharedEvent>]) -> u32 {
    let largest = last
        .iter()
        .map(|e| approx_bytes(e))
        .max()
        .unwrap_or(EVENT_BYTES);
    u32::try_from(BATCH_BYTES / largest.max(1)).map_or(PAGE, |n| n.clamp(1, PAGE))
}

/// The next tick of a period that ticked at `last`; one period after
/// `now` if that was missed (missed ticks are not made up).
fn later_tick(
    last: tokio::time::Instant,
    period: Duration,
    now: tokio::time::Instant,
) -> tokio::time::Instant {
    let next = last + period;
    if next > now { next } else { now + period }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        crate::metrics::watch_streams(-1.0);
    }
}

fn progress_of(
    pulse: &Pulse,
    seq: u64,
    in_flight_fraction: f64,
    counters: crate::domain::Counters,
    rate: &mut Rate,
) -> Progress {
    let done = pulse.counts.ended() as f64 + in_flight_fraction;
    let per_second = rate.observe(done);
    let remaining =
        ((pulse.counts.pending() + pulse.counts.running) as f64 - in_flight_fraction).max(0.0);
    let eta = (pulse.state == JobState::Running && per_second > 0.0)
        .then(|| Duration::from_secs_f64(remaining / per_second));
    Progress {
        seq,
        at: Utc::now(),
        counts: pulse.counts,
        in_flight_fraction,
        items_per_second: per_second,
        eta,
        counters,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failure(seq: u64, error_bytes: usize) -> Arc<SharedEvent> {
        Arc::new(SharedEvent::new(JobEvent {
            seq,
            at: Utc::now(),
            body: EventBody::ItemFailed {
                index: 0,
                attempt: 1,
                error: "e".repeat(error_bytes),
                will_retry: true,
                retry_at: None,
            },
        }))
    }

    #[test]
    fn a_batch_of_large_events_is_cut_to_the_budget_and_the_next_page_sized_for_them() {
        let large: Vec<_> = (1..=500).map(|seq| failure(seq, 8000)).collect();
        let cut = within_budget(Arc::new(EventBatch::new(large.clone())));
        let bytes: usize = cut.events().iter().map(|e| approx_bytes(e)).sum();
        assert!(bytes <= BATCH_BYTES, "{bytes} bytes");
        assert_eq!(cut.events().len(), BATCH_BYTES / 8064);
        assert_eq!(page_for(cut.events()), (BATCH_BYTES / 8064) as u32);
        // One event larger than the budget still goes, alone.
        let huge = within_budget(Arc::new(EventBatch::new(vec![failure(1, 2 * BATCH_BYTES)])));
        assert_eq!(huge.events().len(), 1);
        assert_eq!(page_for(huge.events()), 1);
        // Small events: a batch that fits is kept as it is (still shared),
        // and pages are full ones.
        let small = Arc::new(EventBatch::new(
            (1..=500).map(|seq| failure(seq, 10)).collect(),
        ));
        assert!(Arc::ptr_eq(&within_budget(small.clone()), &small));
        assert_eq!(page_for(small.events()), PAGE);
        // The first page of a stream fits events of the largest size.
        let first = (BATCH_BYTES / EVENT_BYTES) * approx_bytes(&failure(1, 8 * 1024));
        assert!(first <= BATCH_BYTES, "a first page of {first} bytes");
    }

    #[test]
    fn a_tick_on_time_comes_one_period_later_and_a_missed_one_is_skipped() {
        let t0 = tokio::time::Instant::now();
        let period = Duration::from_millis(500);
        let ms = Duration::from_millis;
        // On time, or late by less than a period: the next tick is on the
        // same grid.
        assert_eq!(later_tick(t0, period, t0), t0 + period);
        assert_eq!(later_tick(t0, period, t0 + ms(499)), t0 + period);
        // A whole period late or more: ticks missed are not made up, the
        // next one is a period from now.
        assert_eq!(later_tick(t0, period, t0 + ms(500)), t0 + ms(1000));
        assert_eq!(later_tick(t0, period, t0 + ms(1700)), t0 + ms(2200));
    }
}

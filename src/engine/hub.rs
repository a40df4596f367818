//! In-process notifications of committed changes, per job: the latest
//! sequence and counters. They only wake watchers and carry progress; the
//! events themselves are always read from the store, so a missed or
//! coalesced notification loses nothing. The watchers of one job share a
//! [`Tail`] of its latest stored events, so a thousand watchers cost one
//! store read per change, not a thousand, and one encoding per event
//! ([`SharedEvent`]).

use crate::{
    domain::{JobEvent, JobId, JobState},
    executor::ProgressSink,
    store::{Pulse, StoreError},
};
use std::{
    collections::VecDeque,
    future::Future,
    ops::Deref,
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};
use tokio::{sync::watch, time::Instant};

/// Stored events a [`Tail`] keeps: a watcher further behind reads the
/// store itself.
const TAIL_KEEP: usize = 1024;

/// A stored event as the watchers of a job in this process share it, with
/// room for its encoding on the wire: the first stream that sends it
/// encodes it, and the others send the same bytes.
#[derive(Debug)]
pub struct SharedEvent {
    event: JobEvent,
    encoded: OnceLock<bytes::Bytes>,
}

impl SharedEvent {
    pub fn new(event: JobEvent) -> Self {
        SharedEvent {
            event,
            encoded: OnceLock::new(),
        }
    }

    /// The event as `encode` makes it, made once and then shared (a
    /// `Bytes` clone is a reference count, not a copy).
    pub fn encoded(&self, encode: impl FnOnce(&JobEvent) -> bytes::Bytes) -> bytes::Bytes {
        self.encoded.get_or_init(|| encode(&self.event)).clone()
    }
}

impl Deref for SharedEvent {
    type Target = JobEvent;

    fn deref(&self) -> &JobEvent {
        &self.event
    }
}

impl PartialEq for SharedEvent {
    /// The same event, whether or not it was encoded yet.
    fn eq(&self, other: &Self) -> bool {
        self.event == other.event
    }
}

/// Consecutive stored events of one job, as one watch stream sends them
/// in one frame. Watchers at the same place get the same batch from the
/// job's tail, encoding included: with a thousand of them, a window's events
/// are gathered and encoded once, not once per stream.
#[derive(Debug)]
pub struct EventBatch {
    events: Vec<Arc<SharedEvent>>,
    encoded: OnceLock<bytes::Bytes>,
}

impl EventBatch {
    /// The events up to the first terminal one (nothing follows it).
    pub fn new(mut events: Vec<Arc<SharedEvent>>) -> Self {
        if let Some(end) = events.iter().position(|e| e.body.is_terminal()) {
            events.truncate(end + 1);
        }
        EventBatch {
            events,
            encoded: OnceLock::new(),
        }
    }

    pub fn events(&self) -> &[Arc<SharedEvent>] {
        &self.events
    }

    /// The batch as `encode` makes it, made once and then shared.
    pub fn encoded(
        &self,
        encode: impl FnOnce(&[Arc<SharedEvent>]) -> bytes::Bytes,
    ) -> bytes::Bytes {
        self.encoded.get_or_init(|| encode(&self.events)).clone()
    }
}

impl PartialEq for EventBatch {
    /// The same events, whether or not the batch was encoded yet.
    fn eq(&self, other: &Self) -> bool {
        self.events == other.events
    }
}

/// The latest stored events of one job, read once for all its watchers in
/// this process. It holds every event with a sequence in `(from, upto]`.
///
/// Watchers take their batch from it under a short synchronous lock (the
/// same [`EventBatch`] for those at the same place); only the one that
/// finds it behind reads the store (the others wait for that read instead
/// of repeating it), so a thousand watchers woken by one commit cost one
/// query. Those that come while the read runs wait on an async lock and
/// are handed it one after the other once it is done; waking them all at
/// once instead (a flag and a `Notify`) made no measurable difference in
/// `bench watchers` (10 alternating runs each: median 88% vs 85%, ranges
/// overlapping), so the simpler lock stays.
#[derive(Debug, Default)]
pub struct Tail {
    held: Mutex<Held>,
    refill: tokio::sync::Mutex<()>,
}

#[derive(Debug, Default)]
struct Held {
    from: u64,
    upto: u64,
    events: VecDeque<Arc<SharedEvent>>,
    /// The last batch handed out, and the cursor it follows.
    batch: Option<(u64, Arc<EventBatch>)>,
}

impl Held {
    /// The events after `cursor`, up to `limit` of them; `None` if `cursor`
    /// lies before the window. The batch is shared with the watchers
    /// that ask from the same cursor while nothing newer is held.
    fn after(&mut self, cursor: u64, limit: u32) -> Option<Arc<EventBatch>> {
        if cursor < self.from {
            return None;
        }
        // The same events as it would gather now: everything held after
        // the cursor, or a full page of it.
        if let Some((at, batch)) = &self.batch
            && *at == cursor
            && batch.events.len() <= limit as usize
            && (batch.events.last().is_some_and(|e| e.seq == self.upto)
                || batch.events.len() == limit as usize)
        {
            return Some(batch.clone());
        }
        // Held in sequence order.
        let first = self.events.partition_point(|e| e.seq <= cursor);
        let batch = Arc::new(EventBatch::new(
            self.events
                .range(first..)
                .take(limit as usize)
                .cloned()
                .collect(),
        ));
        if !batch.events.is_empty() {
            self.batch = Some((cursor, batch.clone()));
        }
        Some(batch)
    }
}

impl Tail {
    /// Up to `limit` events after `cursor`, having read the store (with
    /// `read(after, limit)`) up to at least `wanted` if the tail was behind
    /// it; `None` if `cursor` lies before what the tail holds (the caller
    /// reads the store itself).
    pub async fn after<F, Fut>(
        &self,
        cursor: u64,
        wanted: u64,
        limit: u32,
        read: F,
    ) -> Result<Option<Arc<EventBatch>>, StoreError>
    where
        F: Fn(u64, u32) -> Fut,
        Fut: Future<Output = Result<Vec<JobEvent>, StoreError>>,
    {
        {
            let mut held = self.held();
            if held.upto >= wanted && !held.events.is_empty() {
                return Ok(held.after(cursor, limit));
            }
        }
        // Behind: one watcher reads, the others wait for its read (and
        // then find what they want held).
        let _reading = self.refill.lock().await;
        {
            let mut held = self.held();
            if held.events.is_empty() && cursor > held.upto {
                // Nothing held: start where this watcher is.
                held.from = cursor;
                held.upto = cursor;
            }
        }
        loop {
            let upto = {
                let held = self.held();
                if held.upto >= wanted {
                    break;
                }
                held.upto
            };
            let page = read(upto, limit).await?;
            let full = page.len() == limit as usize;
            let mut held = self.held();
            for event in page {
                if event.seq > held.upto {
                    held.upto = event.seq;
                    held.events.push_back(Arc::new(SharedEvent::new(event)));
                }
            }
            while held.events.len() > TAIL_KEEP {
                if let Some(old) = held.events.pop_front() {
                    held.from = old.seq;
                }
            }
            if !full {
                // The store has nothing more yet.
                break;
            }
        }
        // Evicted while catching up: this watcher was far behind.
        Ok(self.held().after(cursor, limit))
    }

    fn held(&self) -> std::sync::MutexGuard<'_, Held> {
        self.held.lock().expect("tail lock")
    }
}

/// A job's pulse channel and the tail its watchers share.
#[derive(Debug)]
struct Channel {
    tx: watch::Sender<Pulse>,
    tail: Arc<Tail>,
    /// When the watchers were last woken (`None`: not yet).
    woke: Option<Instant>,
    /// The job's state they were last woken with.
    woke_state: JobState,
    /// A wake-up is scheduled for the end of the current window.
    deferred: bool,
    /// The runtime the watchers subscribed from, where the wake-up at the
    /// end of a window runs: the commits that publish come from the
    /// engine's runtime, and waking a thousand watchers from there would
    /// cost the engine's thread a thousand cross-runtime hand-offs per
    /// window.
    watchers: Option<tokio::runtime::Handle>,
}

impl Channel {
    fn wake(&mut self, now: Instant) {
        self.woke = Some(now);
        self.woke_state = self.tx.borrow().state;
        self.tx.send_modify(|_| {});
    }

    fn new(tx: watch::Sender<Pulse>, tail: Arc<Tail>) -> Self {
        let woke_state = tx.borrow().state;
        Channel {
            woke_state,
            tx,
            tail,
            woke: None,
            deferred: false,
            watchers: tokio::runtime::Handle::try_current().ok(),
        }
    }
}

/// How far along each item in flight of one job is, as its executor
/// reported (in memory only: it is live information, not state), and the
/// newest state of the job this process has committed or seen.
#[derive(Debug, Default)]
pub struct InFlight {
    fractions: Mutex<foldhash::HashMap<u32, f32>>,
    state: Mutex<Option<(JobState, u64)>>,
    counters: Mutex<JobCounters>,
}

/// A running job's counters as this process committed them, and the names
/// its items in flight may still add.
#[derive(Debug, Default)]
struct JobCounters {
    /// As committed (read when the job's supervisor started, then summed
    /// here at each commit of a success that carried counters).
    committed: crate::domain::Counters,
    /// Every name committed or about to be (see [`InFlight::reserve`]).
    names: std::collections::BTreeSet<String>,
}

impl InFlight {
    /// A job's in-flight record, starting from its stored counters.
    pub fn with_counters(counters: &crate::domain::Counters) -> Self {
        let live = InFlight::default();
        {
            let mut c = live.counters.lock().expect("in-flight lock");
            c.committed = counters.clone();
            c.names = counters.keys().cloned().collect();
        }
        live
    }

    /// Takes the names of an attempt's counters for the job before its
    /// success is written; refused (naming the limit) if they would take
    /// the job past [`crate::domain::counters::MAX_JOB_COUNTERS`] names.
    pub fn reserve(&self, counters: &crate::domain::Counters) -> Result<(), String> {
        use crate::domain::counters::MAX_JOB_COUNTERS;
        let mut c = self.counters.lock().expect("in-flight lock");
        let new = counters.keys().filter(|n| !c.names.contains(*n)).count();
        if c.names.len() + new > MAX_JOB_COUNTERS {
            return Err(format!(
                "the item's counters would give the job more than {MAX_JOB_COUNTERS} counter \
                 names (it has {}); counters are for a few totals, not a name per item",
                c.names.len()
            ));
        }
        c.names.extend(counters.keys().cloned());
        Ok(())
    }

    /// A success carrying `counters` was committed.
    pub fn counted(&self, counters: &crate::domain::Counters) {
        let mut c = self.counters.lock().expect("in-flight lock");
        crate::domain::counters::merge(&mut c.committed, counters);
    }

    /// The job's counters as committed by this process.
    pub fn counters(&self) -> crate::domain::Counters {
        self.counters
            .lock()
            .expect("in-flight lock")
            .committed
            .clone()
    }

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
#[derive(Debug)]
pub struct Hub {
    channels: Mutex<foldhash::HashMap<JobId, Channel>>,
    in_flight: Mutex<foldhash::HashMap<JobId, Arc<InFlight>>>,
    /// A job's watchers are woken at most once per `window`.
    window: Duration,
    /// The engine is shutting down: watchers end (checked at each
    /// wake-up, instead of each watcher also waiting on the engine's
    /// cancellation token, whose lock all of them would take at every
    /// wake-up).
    closed: AtomicBool,
    /// Store reads the watch streams may run at once (see
    /// [`Hub::watch_read`]).
    reads: tokio::sync::Semaphore,
}

impl Hub {
    /// A hub that wakes a job's watchers at most once per `window` (zero:
    /// at every new sequence), whose watchers run at most `reads` store
    /// reads at once.
    pub fn new(window: Duration, reads: usize) -> Arc<Self> {
        Arc::new(Hub {
            channels: Mutex::default(),
            in_flight: Mutex::default(),
            window,
            closed: AtomicBool::new(false),
            reads: tokio::sync::Semaphore::new(reads.max(1)),
        })
    }

    /// Runs a watch stream's store read once one of the `reads` places is
    /// free. A hundred streams replaying a long history at once would
    /// otherwise take every database connection, and control calls and
    /// readiness would wait behind them; here they queue among
    /// themselves.
    pub async fn watch_read<T>(&self, read: impl Future<Output = T>) -> T {
        // Never closed, so acquiring cannot fail.
        let _place = self.reads.acquire().await.ok();
        read.await
    }

    /// Ends every watch stream: sets the flag they check, then wakes them.
    pub fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        let channels = self.channels.lock().expect("hub lock");
        for channel in channels.values() {
            channel.tx.send_modify(|_| {});
        }
    }

    /// Whether [`Hub::close`] was called.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// Tells the job's watchers about a commit. A pulse older than the one
    /// they have (a slower path committing earlier) is ignored.
    ///
    /// Watchers are woken only by a new sequence (a stored event, a state
    /// change); newer counters are stored without waking anybody and read
    /// at each watcher's next progress tick. Waking a thousand watchers on
    /// every commit would cost more than the job. A new sequence within
    /// `window` of the last wake-up is stored too, and the watchers are
    /// woken once at the end of the window for all of them: each watcher
    /// then reads them in one go and sends them in one frame. A change of
    /// the job's state wakes them at once, and so does the first new
    /// sequence after a quiet window.
    pub fn publish(self: &Arc<Self>, pulse: Pulse) {
        if let Some(live) = self.in_flight.lock().expect("hub lock").get(&pulse.job) {
            live.note(pulse.state, pulse.last_seq);
        }
        let mut channels = self.channels.lock().expect("hub lock");
        let Some(channel) = channels.get_mut(&pulse.job) else {
            return;
        };
        if channel.tx.receiver_count() == 0 {
            channels.remove(&pulse.job);
            return;
        }
        let mut newer = false;
        channel.tx.send_if_modified(|current| {
            if pulse.last_seq > current.last_seq {
                *current = pulse;
                newer = true;
            } else if pulse.last_seq == current.last_seq && pulse.counts != current.counts {
                *current = pulse;
            }
            false
        });
        // A change of state (a pause, a cancel, the end) is rare and
        // awaited: it wakes the watchers at once, window or not. (Compared
        // with the state they last woke with: a pulse that repeats a
        // sequence stores its state without waking anybody.)
        let moved = newer && channel.tx.borrow().state != channel.woke_state;
        if !newer || (channel.deferred && !moved) {
            return;
        }
        let now = Instant::now();
        let due = channel.woke.map_or(now, |woke| woke + self.window);
        let runtime = channel
            .watchers
            .clone()
            .or_else(|| tokio::runtime::Handle::try_current().ok());
        match runtime {
            Some(runtime) if due > now && !moved => {
                channel.deferred = true;
                let hub = Arc::downgrade(self);
                let job = pulse.job;
                runtime.spawn(async move {
                    tokio::time::sleep_until(due).await;
                    if let Some(hub) = hub.upgrade() {
                        hub.wake(job);
                    }
                });
            }
            _ => channel.wake(now),
        }
    }

    /// Wakes a job's watchers at the end of a window.
    fn wake(&self, job: JobId) {
        let mut channels = self.channels.lock().expect("hub lock");
        if let Some(channel) = channels.get_mut(&job) {
            channel.deferred = false;
            channel.wake(Instant::now());
        }
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
    /// The counters of a job this process runs, as it committed them;
    /// none if it does not run it.
    pub fn live_counters(&self, job: JobId) -> Option<crate::domain::Counters> {
        let registry = self.in_flight.lock().expect("hub lock");
        registry.get(&job).map(|f| f.counters())
    }

    pub fn in_flight_fraction(&self, job: JobId) -> f64 {
        let registry = self.in_flight.lock().expect("hub lock");
        registry.get(&job).map_or(0.0, |f| f.total())
    }

    /// Subscribes to a job's pulses, starting from `initial` (what the
    /// subscriber read from the store) if nothing newer is known, and
    /// returns the tail of stored events its watchers share.
    pub fn subscribe(self: &Arc<Self>, initial: Pulse) -> (watch::Receiver<Pulse>, Arc<Tail>) {
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
                let tail = Arc::new(Tail::default());
                channels.insert(initial.job, Channel::new(tx, tail.clone()));
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
    use std::time::Duration;

    fn event(seq: u64) -> JobEvent {
        moved_to(seq, JobState::Running)
    }

    #[test]
    fn a_job_holds_a_bounded_set_of_counter_names() {
        use crate::domain::counters::MAX_JOB_COUNTERS;
        let names = |range: std::ops::Range<usize>| -> crate::domain::Counters {
            range.map(|i| (format!("c{i}"), 1)).collect()
        };
        // Starts from what the store holds.
        let live = InFlight::with_counters(&names(0..60));
        assert_eq!(live.counters().len(), 60);
        live.reserve(&names(55..64)).unwrap();
        // Names already there are always fine; one more is refused.
        live.reserve(&names(0..MAX_JOB_COUNTERS)).unwrap();
        let err = live.reserve(&names(60..65)).unwrap_err();
        assert!(err.contains("more than 64 counter names"), "{err}");
        // Reserved is not counted: only a committed success adds.
        assert_eq!(live.counters()["c0"], 1);
        assert!(!live.counters().contains_key("c63"));
        live.counted(&names(0..2));
        assert_eq!(live.counters()["c1"], 2);
    }

    /// A change of state from RUNNING.
    fn moved_to(seq: u64, to: JobState) -> JobEvent {
        JobEvent {
            seq,
            at: chrono::Utc::now(),
            body: EventBody::StateChanged {
                from: Some(JobState::Running),
                to,
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

    fn seqs(batch: &EventBatch) -> Vec<u64> {
        batch.events().iter().map(|e| e.seq).collect()
    }

    /// What the tail hands a watcher at `cursor` that wants up to `wanted`,
    /// from a store holding events 1..=`wanted`.
    async fn batch_at(
        tail: &Tail,
        cursor: u64,
        wanted: u64,
        limit: u32,
        reads: &AtomicUsize,
    ) -> Arc<EventBatch> {
        tail.after(cursor, wanted, limit, store(wanted, reads))
            .await
            .unwrap()
            .unwrap()
    }

    #[tokio::test]
    async fn watchers_at_the_same_place_share_one_read() {
        let reads = AtomicUsize::new(0);
        let tail = Tail::default();
        for _ in 0..100 {
            let got = batch_at(&tail, 0, 5, 500, &reads).await;
            assert_eq!(seqs(&got), vec![1, 2, 3, 4, 5]);
        }
        assert_eq!(reads.load(Ordering::SeqCst), 1);
        // A new commit: one more read for everybody.
        for cursor in [5, 5, 3] {
            let got = batch_at(&tail, cursor, 7, 500, &reads).await;
            assert_eq!(*seqs(&got).last().unwrap(), 7);
            assert_eq!(seqs(&got)[0], cursor + 1);
        }
        assert_eq!(reads.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn watchers_at_the_same_place_share_one_batch_until_newer_events() {
        let reads = AtomicUsize::new(0);
        let tail = Tail::default();
        let first = batch_at(&tail, 0, 5, 500, &reads).await;
        let again = batch_at(&tail, 0, 5, 500, &reads).await;
        assert!(Arc::ptr_eq(&first, &again), "a batch of its own");
        // From elsewhere: a batch of its own.
        let behind = batch_at(&tail, 2, 5, 500, &reads).await;
        assert_eq!(seqs(&behind), vec![3, 4, 5]);
        // Newer events: the same cursor gets them too, not the old batch.
        let newer = batch_at(&tail, 0, 7, 500, &reads).await;
        assert_eq!(seqs(&newer), (1..=7).collect::<Vec<_>>());
        // A full page is shared even though more is held after it.
        let page = batch_at(&tail, 0, 7, 3, &reads).await;
        let same = batch_at(&tail, 0, 7, 3, &reads).await;
        assert_eq!(seqs(&page), vec![1, 2, 3]);
        assert!(Arc::ptr_eq(&page, &same));
    }

    #[test]
    fn a_batch_ends_with_the_terminal_event() {
        let batch = EventBatch::new(
            [
                event(1),
                event(2),
                moved_to(3, JobState::Succeeded),
                event(4),
            ]
            .into_iter()
            .map(|e| Arc::new(SharedEvent::new(e)))
            .collect(),
        );
        assert_eq!(seqs(&batch), vec![1, 2, 3]);
    }

    #[tokio::test]
    async fn watchers_woken_together_wait_for_one_read() {
        let reads = AtomicUsize::new(0);
        let tail = Tail::default();
        // A slow store: every watcher asks while the first read runs.
        let slow = |after: u64, limit: u32| {
            reads.fetch_add(1, Ordering::SeqCst);
            async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                Ok(((after + 1)..=9)
                    .take(limit as usize)
                    .map(event)
                    .collect::<Vec<_>>())
            }
        };
        let watchers = (0..50u64).map(|i| tail.after(i % 5, 9, 500, slow));
        for got in futures::future::join_all(watchers).await {
            let got = got.unwrap().unwrap();
            assert_eq!(*seqs(&got).last().unwrap(), 9);
            assert!(got.events().windows(2).all(|w| w[0].seq + 1 == w[1].seq));
        }
        assert_eq!(reads.load(Ordering::SeqCst), 1);
    }

    fn pulse(job: JobId, last_seq: u64) -> Pulse {
        Pulse {
            job,
            state: JobState::Running,
            counts: Default::default(),
            last_seq,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn commits_within_a_window_wake_the_watchers_once() {
        let hub = Hub::new(Duration::from_millis(20), 1);
        let job = JobId::new();
        let (mut rx, _tail) = hub.subscribe(pulse(job, 0));
        // The first new sequence: woken at once.
        hub.publish(pulse(job, 1));
        assert!(rx.has_changed().unwrap());
        assert_eq!(rx.borrow_and_update().last_seq, 1);
        // Within the window: stored, but nobody woken yet.
        hub.publish(pulse(job, 2));
        hub.publish(pulse(job, 3));
        assert!(!rx.has_changed().unwrap());
        assert_eq!(rx.borrow().last_seq, 3);
        // An older pulse is ignored.
        hub.publish(pulse(job, 2));
        assert_eq!(rx.borrow().last_seq, 3);
        // One wake-up at the end of the window, for both.
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(!rx.has_changed().unwrap());
        tokio::time::sleep(Duration::from_millis(15)).await;
        assert!(rx.has_changed().unwrap());
        assert_eq!(rx.borrow_and_update().last_seq, 3);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!rx.has_changed().unwrap());
        // After a quiet window: at once again.
        hub.publish(pulse(job, 4));
        assert!(rx.has_changed().unwrap());
        assert_eq!(rx.borrow_and_update().last_seq, 4);
    }

    /// The commits that publish come from the engine's runtime; the
    /// wake-up at the end of a window runs on the runtime the watchers
    /// subscribed from. Here the publisher's runtime is gone right after
    /// publishing: the watchers are woken all the same.
    #[test]
    fn the_end_of_a_window_wakes_the_watchers_from_their_own_runtime() {
        let watchers = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let hub = Hub::new(Duration::from_millis(20), 1);
        let job = JobId::new();
        let (mut rx, _tail) = watchers.block_on(async { hub.subscribe(pulse(job, 0)) });
        let engine = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        engine.block_on(async { hub.publish(pulse(job, 1)) });
        assert_eq!(rx.borrow_and_update().last_seq, 1, "woken at once");
        // Within the window: the wake-up is deferred...
        engine.block_on(async { hub.publish(pulse(job, 2)) });
        assert!(!rx.has_changed().unwrap());
        // ...and the publisher's runtime does not outlive the window.
        drop(engine);
        let woken = watchers
            .block_on(async { tokio::time::timeout(Duration::from_secs(2), rx.changed()).await });
        assert!(matches!(woken, Ok(Ok(()))), "never woken: {woken:?}");
        assert_eq!(rx.borrow_and_update().last_seq, 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_change_of_state_wakes_the_watchers_at_once() {
        let hub = Hub::new(Duration::from_millis(20), 1);
        let job = JobId::new();
        let (mut rx, _tail) = hub.subscribe(pulse(job, 0));
        hub.publish(pulse(job, 1));
        assert_eq!(rx.borrow_and_update().last_seq, 1);
        // Within the window: an item event waits for its end...
        hub.publish(pulse(job, 2));
        assert!(!rx.has_changed().unwrap());
        // ...but the cancel does not, and brings it along.
        let mut cancelling = pulse(job, 3);
        cancelling.state = JobState::Cancelling;
        hub.publish(cancelling);
        assert!(rx.has_changed().unwrap());
        assert_eq!(rx.borrow_and_update().state, JobState::Cancelling);
        // A pulse repeating a sequence stores its state silently; the next
        // sequence still wakes at once for the change.
        let mut early = pulse(job, 3);
        early.state = JobState::Cancelled;
        early.counts.cancelled = 4;
        hub.publish(early);
        assert!(!rx.has_changed().unwrap());
        assert_eq!(rx.borrow().state, JobState::Cancelled);
        let mut cancelled = pulse(job, 4);
        cancelled.state = JobState::Cancelled;
        hub.publish(cancelled);
        assert!(rx.has_changed().unwrap());
        assert_eq!(rx.borrow_and_update().last_seq, 4);
    }

    #[tokio::test(start_paused = true)]
    async fn a_zero_window_wakes_at_every_new_sequence() {
        let hub = Hub::new(Duration::ZERO, 1);
        let job = JobId::new();
        let (mut rx, _tail) = hub.subscribe(pulse(job, 0));
        for seq in 1..=3 {
            hub.publish(pulse(job, seq));
            assert!(rx.has_changed().unwrap());
            assert_eq!(rx.borrow_and_update().last_seq, seq);
        }
        // New counters at the same sequence wake nobody.
        let mut counted = pulse(job, 3);
        counted.counts.succeeded = 7;
        hub.publish(counted);
        assert!(!rx.has_changed().unwrap());
        assert_eq!(rx.borrow().counts.succeeded, 7);
    }

    #[tokio::test]
    async fn a_watcher_behind_the_tail_reads_the_store_itself() {
        let reads = AtomicUsize::new(0);
        let tail = Tail::default();
        // The first watcher starts at 10: the tail holds (10, 12].
        let got = batch_at(&tail, 10, 12, 500, &reads).await;
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
        let tail = Tail::default();
        let n = (TAIL_KEEP as u64) * 3;
        let got = tail.after(0, n, 500, store(n, &reads)).await.unwrap();
        // Evicted while catching up: the caller was too far behind.
        assert!(got.is_none());
        assert_eq!(tail.held().events.len(), TAIL_KEEP);
        assert_eq!(tail.held().upto, n);
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

//! A job's claimed items waiting for a worker. The supervisor fills it
//! from claims; workers take from it directly, so a worker that finished
//! an item starts the next one without a round trip through the
//! supervisor. It is open only while the job is RUNNING: the supervisor
//! closes it (under the same lock workers take items with) before it
//! acknowledges a pause or a cancel, so no item starts after either call
//! has returned.
//!
//! A job of a remote executor also keeps here the worker slots (seats) it
//! was granted: a worker takes an item only together with a seat, so an
//! item starts only where a worker has room for it.

use crate::{executor::remote::Seat, store::ClaimedItem};
use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
};
use tokio::sync::watch;

/// What a worker holds, shared with its supervisor so a worker that dies
/// does not take the knowledge of its item with it.
pub type Current = Arc<Mutex<SlotItems>>;

#[derive(Debug, Default)]
pub struct SlotItems {
    /// The item being run.
    pub running: Option<ClaimedItem>,
    /// Items whose outcomes are still being committed (pipelined mode).
    pub committing: u32,
    /// The slot is being removed (concurrency lowered): take nothing more.
    pub retired: bool,
    /// The running item's own stop signal (CancelItems cancelled it): made
    /// by whichever of the worker (as it starts the item) and the
    /// supervisor (as it stops it) comes first, and dropped when the slot
    /// takes its next item.
    pub item_stop: Option<watch::Sender<bool>>,
}

impl SlotItems {
    pub fn busy(&self) -> bool {
        self.running.is_some() || self.committing > 0
    }

    /// The running item's stop signal, made if it has none yet.
    pub fn item_stop(&mut self) -> &watch::Sender<bool> {
        self.item_stop
            .get_or_insert_with(|| watch::Sender::new(false))
    }

    /// Asks the running item to stop if `chosen` chooses it; returns
    /// whether it did.
    pub fn stop_if(&mut self, chosen: impl Fn(&ClaimedItem) -> bool) -> bool {
        if !self.running.as_ref().is_some_and(chosen) {
            return false;
        }
        self.item_stop().send_replace(true);
        true
    }
}

#[derive(Debug, Default)]
pub struct WorkQueue {
    inner: Mutex<Inner>,
    /// Items need seats (remote executors): read without the lock, as the
    /// supervisor's plan asks after every message.
    remote: bool,
}

#[derive(Debug, Default)]
struct Inner {
    open: bool,
    items: VecDeque<ClaimedItem>,
    /// Remote executors: each item starts in one of these.
    seats: Option<Vec<Seat>>,
}

impl WorkQueue {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("work queue lock")
    }

    /// A queue whose items each need a seat to start (remote executors).
    pub fn with_seats() -> Self {
        WorkQueue {
            inner: Mutex::new(Inner {
                seats: Some(Vec::new()),
                ..Inner::default()
            }),
            remote: true,
        }
    }

    pub fn push(&self, items: impl IntoIterator<Item = ClaimedItem>) {
        self.lock().items.extend(items);
    }

    /// Takes the next item into `current` (with a seat, if items need
    /// one), if the queue is open and not empty; under one lock, so a
    /// closed queue hands out nothing.
    pub fn take_into(&self, current: &Current) -> Option<(ClaimedItem, Option<Seat>)> {
        let mut inner = self.lock();
        if !inner.open || inner.items.is_empty() {
            return None;
        }
        if inner.seats.as_ref().is_some_and(Vec::is_empty) {
            return None;
        }
        let mut slot = current.lock().expect("current item lock");
        if slot.retired {
            return None;
        }
        let item = inner.items.pop_front()?;
        let seat = inner.seats.as_mut().and_then(Vec::pop);
        slot.running = Some(item.clone());
        slot.item_stop = None;
        Some((item, seat))
    }

    /// Keeps a seat granted to the job.
    pub fn add_seat(&self, seat: Seat) {
        if let Some(seats) = self.lock().seats.as_mut() {
            seats.push(seat);
        }
    }

    /// Seats held and not yet used; `None` when items need none.
    pub fn seats(&self) -> Option<usize> {
        if !self.remote {
            return None;
        }
        self.lock().seats.as_ref().map(Vec::len)
    }

    /// Removes the seats beyond `keep`, to be dropped (given back) by the
    /// caller once the lock is released.
    pub fn trim_seats(&self, keep: usize) -> Vec<Seat> {
        match self.lock().seats.as_mut() {
            Some(seats) if seats.len() > keep => seats.split_off(keep),
            _ => Vec::new(),
        }
    }

    /// Items a worker could start now: waiting, and with a seat if they
    /// need one.
    pub fn ready(&self) -> usize {
        let inner = self.lock();
        match &inner.seats {
            Some(seats) => inner.items.len().min(seats.len()),
            None => inner.items.len(),
        }
    }

    pub fn set_open(&self, open: bool) {
        self.lock().open = open;
    }

    pub fn len(&self) -> usize {
        self.lock().items.len()
    }

    /// Removes every waiting item.
    pub fn drain(&self) -> Vec<ClaimedItem> {
        self.lock().items.drain(..).collect()
    }

    /// Removes the waiting items `chosen` chooses: they were cancelled
    /// after they were claimed, before any worker took them. Returns how
    /// many were removed.
    pub fn remove(&self, chosen: impl Fn(&ClaimedItem) -> bool) -> usize {
        let mut inner = self.lock();
        let before = inner.items.len();
        inner.items.retain(|item| !chosen(item));
        before - inner.items.len()
    }

    /// The waiting items, by index and lease.
    pub fn claims(&self) -> Vec<(u32, i64)> {
        self.lock()
            .items
            .iter()
            .map(|item| (item.index, item.lease))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(index: u32) -> ClaimedItem {
        ClaimedItem {
            index,
            payload: String::new(),
            attempt: 1,
            checkpoint: None,
            lease: 1,
        }
    }

    #[test]
    fn a_closed_queue_hands_out_nothing() {
        let queue = WorkQueue::default();
        let current = Current::default();
        queue.push([item(1), item(2)]);
        assert!(queue.take_into(&current).is_none(), "closed at first");
        queue.set_open(true);
        assert_eq!(queue.take_into(&current).map(|(i, _)| i.index), Some(1));
        assert_eq!(
            current.lock().unwrap().running.as_ref().map(|i| i.index),
            Some(1)
        );
        queue.set_open(false);
        assert!(queue.take_into(&current).is_none());
        assert_eq!(queue.drain().len(), 1);
    }

    #[test]
    fn cancelled_items_leave_the_queue_and_stop_where_they_run() {
        let queue = WorkQueue::default();
        queue.set_open(true);
        queue.push([item(1), item(2), item(3), item(4)]);
        let current = Current::default();
        assert_eq!(queue.take_into(&current).map(|(i, _)| i.index), Some(1));
        // Item 1 runs; 2 and 4 wait and are dropped; 7 is not here.
        assert_eq!(queue.claims(), [(2, 1), (3, 1), (4, 1)]);
        assert_eq!(queue.remove(|i| [1, 2, 4, 7].contains(&i.index)), 2);
        assert_eq!(queue.claims(), [(3, 1)]);
        let mut slot = current.lock().unwrap();
        let seen = slot.item_stop().subscribe();
        assert!(!*seen.borrow());
        assert!(!slot.stop_if(|i| i.index == 2), "not the running item");
        assert!(!*seen.borrow());
        assert!(slot.stop_if(|i| i.index == 1));
        assert!(*seen.borrow());
        drop(slot);
        // The next item starts with no stop asked.
        assert_eq!(queue.take_into(&current).map(|(i, _)| i.index), Some(3));
        let mut slot = current.lock().unwrap();
        assert!(!*slot.item_stop().subscribe().borrow());
        // Asked before the worker made the signal: it finds it asked.
        slot.item_stop = None;
        assert!(slot.stop_if(|i| i.index == 3));
        assert!(*slot.item_stop().subscribe().borrow());
    }
}

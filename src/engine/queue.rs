//! A job's claimed items waiting for a worker. The supervisor fills it
//! from claims; workers take from it directly, so a worker that finished
//! an item starts the next one without a round trip through the
//! supervisor. It is open only while the job is RUNNING: the supervisor
//! closes it (under the same lock workers take items with) before it
//! acknowledges a pause or a cancel, so no item starts after either call
//! has returned.

use crate::store::ClaimedItem;
use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
};

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
}

impl SlotItems {
    pub fn busy(&self) -> bool {
        self.running.is_some() || self.committing > 0
    }
}

#[derive(Debug, Default)]
pub struct WorkQueue {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    open: bool,
    items: VecDeque<ClaimedItem>,
}

impl WorkQueue {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("work queue lock")
    }

    pub fn push(&self, items: impl IntoIterator<Item = ClaimedItem>) {
        self.lock().items.extend(items);
    }

    /// Takes the next item into `current`, if the queue is open and not
    /// empty; both under one lock, so a closed queue hands out nothing.
    pub fn take_into(&self, current: &Current) -> Option<ClaimedItem> {
        let mut inner = self.lock();
        if !inner.open {
            return None;
        }
        let mut slot = current.lock().expect("current item lock");
        if slot.retired {
            return None;
        }
        let item = inner.items.pop_front()?;
        slot.running = Some(item.clone());
        Some(item)
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
        assert_eq!(queue.take_into(&current), None, "closed at first");
        queue.set_open(true);
        assert_eq!(queue.take_into(&current).map(|i| i.index), Some(1));
        assert_eq!(
            current.lock().unwrap().running.as_ref().map(|i| i.index),
            Some(1)
        );
        queue.set_open(false);
        assert_eq!(queue.take_into(&current), None);
        assert_eq!(queue.drain().len(), 1);
    }
}

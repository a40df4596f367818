//! How many WatchJob streams may be open: on the whole server and per
//! caller (`--max-watch-streams`, `--max-watch-streams-per-caller`).
//! A stream holds its place from the moment it is accepted until its body
//! is dropped (the stream ended, or the client went away); one more is
//! refused with RESOURCE_EXHAUSTED naming the setting.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};
use tonic::Status;

/// Who a stream counts against: the caller's name, or its address when
/// anonymous (as the guard's per-caller limits count). The guard puts it
/// in the request's extensions.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CallerKey(pub String);

/// The open streams and their limits.
#[derive(Debug)]
pub struct WatchCaps {
    total: usize,
    per_caller: usize,
    open: Mutex<Open>,
}

#[derive(Debug, Default)]
struct Open {
    total: usize,
    /// Only callers with a stream open.
    by_caller: HashMap<String, usize>,
}

/// One open stream's place; given back when dropped.
#[derive(Debug)]
pub struct WatchSlot {
    caps: Arc<WatchCaps>,
    caller: String,
}

impl WatchCaps {
    /// At most `total` streams, and `per_caller` for any one caller.
    pub fn new(total: usize, per_caller: usize) -> Arc<Self> {
        Arc::new(WatchCaps {
            total,
            per_caller,
            open: Mutex::default(),
        })
    }

    /// A place for one more stream of `caller`, or the refusal.
    pub fn open(self: &Arc<Self>, caller: &str) -> Result<WatchSlot, Status> {
        let mut open = self.open.lock().expect("watch caps lock");
        if open.total >= self.total {
            return Err(Status::resource_exhausted(format!(
                "too many WatchJob streams: the server's limit of {} is reached \
                 (--max-watch-streams); retry later",
                self.total
            )));
        }
        let mine = open.by_caller.get(caller).copied().unwrap_or(0);
        if mine >= self.per_caller {
            return Err(Status::resource_exhausted(format!(
                "too many WatchJob streams for {caller}: at most {} at once \
                 (--max-watch-streams-per-caller); close one first",
                self.per_caller
            )));
        }
        open.total += 1;
        open.by_caller.insert(caller.to_string(), mine + 1);
        Ok(WatchSlot {
            caps: self.clone(),
            caller: caller.to_string(),
        })
    }
}

impl Drop for WatchSlot {
    fn drop(&mut self) {
        let mut open = self.caps.open.lock().expect("watch caps lock");
        open.total -= 1;
        if let Some(n) = open.by_caller.get_mut(&self.caller) {
            *n -= 1;
            if *n == 0 {
                open.by_caller.remove(&self.caller);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    #[test]
    fn streams_are_capped_per_caller_and_in_total_and_places_come_back() {
        let caps = WatchCaps::new(3, 2);
        let a1 = caps.open("a").unwrap();
        let _a2 = caps.open("a").unwrap();
        let refused = caps.open("a").unwrap_err();
        assert_eq!(refused.code(), Code::ResourceExhausted);
        assert!(refused.message().contains("--max-watch-streams-per-caller"));
        let _b1 = caps.open("b").unwrap();
        let refused = caps.open("c").unwrap_err();
        assert_eq!(refused.code(), Code::ResourceExhausted);
        assert!(refused.message().contains("(--max-watch-streams)"));
        drop(a1);
        let _c1 = caps.open("c").unwrap();
        assert_eq!(caps.open.lock().unwrap().by_caller.len(), 3);
    }
}

//! Which items the supervisor claims next, as plain state: the claims'
//! bound, the retries waiting for their delay and those due, the claim out
//! now, how long items take, and the one wake-up timer (for retries due and
//! for the rate limit's next start). No I/O and no clock of its own: the
//! core asks it, passing the time, and turns its answers into actions.

use std::{
    collections::BTreeSet,
    time::{Duration, Instant},
};

/// The least time between two wake-ups: each wake-up costs a claim of its
/// own (a job of short items with many retries waiting woke for nearly
/// every one), and a retry may come this much after its time. (A rate
/// limit lets 20 ms' worth of starts through at once, so its pace keeps.)
pub(super) const WAKE_SPACING: Duration = Duration::from_millis(20);

/// Items faster than this are claimed ahead.
const PREFETCH_BELOW: Duration = Duration::from_millis(20);

#[derive(Debug, Default)]
pub(super) struct Claims {
    /// No item below this index is pending: where claims start looking.
    /// Raised past every claim, lowered when an item may be pending again,
    /// reset on any state change.
    pub from: u32,
    /// Retries waiting for their delay, by when it ends: claims skip them
    /// (the store does) until then. An item's entry moves to `due` when its
    /// time comes; an entry without an item is a look at the whole job
    /// (the claims' bound back to 0) when the store said the first wait
    /// ends.
    pub waiting: BTreeSet<(Instant, Option<u32>)>,
    /// Retries whose wait is over, below the claims' bound: claimed by a
    /// claim of their own, from the lowest and no more than there are, so
    /// that it stops at them instead of walking every item since up to
    /// the bound (a retry that waited a second is tens of thousands of
    /// items behind it in a job of short items).
    pub due: BTreeSet<u32>,
    /// The last claim found nothing, and nothing went back to pending
    /// while it was out: nothing is pending until an item goes back.
    pub exhausted: bool,
    /// The claim out now, if any (one at a time).
    pub out: Option<Claiming>,
    /// When the wake-up timer set last fires, if it has not yet.
    pub wake_at: Option<Instant>,
    /// When the timer last fired (wake-ups are [`WAKE_SPACING`] apart).
    pub woke_at: Option<Instant>,
    /// How long items take, to decide whether to claim ahead.
    pub item_time: ItemTime,
}

/// A claim that is out.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct Claiming {
    /// The lowest item that may have gone back to pending since the claim
    /// was sent ([`Claims::repend_from`]).
    pub repended: Option<u32>,
    /// It claims the retries in `due`, from the first and at most so
    /// many (none: the job's next items from the bound).
    pub retries: Option<(u32, u32)>,
}

/// The claim to send: up to `max` pending items from `from`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct NextClaim {
    pub from: u32,
    pub max: u32,
    /// Due retries only (a claim that stops at them).
    pub retries: bool,
}

impl Claims {
    /// Whether a claim may find something: a retry is due, or the last
    /// claim did not come back empty.
    pub fn may_find(&self) -> bool {
        !self.due.is_empty() || !self.exhausted
    }

    /// Nothing pending, due or waiting for its delay.
    pub fn all_taken(&self) -> bool {
        self.exhausted && self.waiting.is_empty() && self.due.is_empty()
    }

    /// The claim of up to `want` items to send next: the due retries
    /// first, else the next items from the bound. It is then out.
    pub fn send(&mut self, want: usize) -> NextClaim {
        let next = match self.due.first() {
            Some(&first) => NextClaim {
                from: first,
                max: self.due.len().min(want) as u32,
                retries: true,
            },
            None => NextClaim {
                from: self.from,
                max: want as u32,
                retries: false,
            },
        };
        self.out = Some(Claiming {
            repended: None,
            retries: next.retries.then_some((next.from, next.max)),
        });
        next
    }

    /// The claim out came back with `count` items, the last of them at
    /// `last`.
    pub fn claimed(&mut self, count: usize, last: Option<u32>) {
        let Claiming { repended, retries } = self.out.take().unwrap_or_default();
        if let Some((from, max)) = retries {
            // The due retries from `from` to the last item taken were
            // taken (or are no longer pending); if fewer came than asked
            // for, the claim found none after it either.
            let upto = match last {
                Some(last) if count == max as usize => last,
                _ => u32::MAX,
            };
            self.due.retain(|&i| i < from || i > upto);
        } else if count == 0 && repended.is_none() {
            self.exhausted = true;
        }
        // A claim of the next items took every pending item up to its
        // last; one of due retries took only those.
        if let Some(last) = last
            && retries.is_none()
        {
            self.from = self.from.max(last + 1);
        }
        // The claim may have been answered from before those items went
        // back: they are still to be claimed.
        if let Some(index) = repended {
            self.repend_from(index);
        }
    }

    /// The claim out failed: nothing was taken.
    pub fn failed(&mut self) {
        self.out = None;
    }

    /// Items from `index` up may be pending again: claims look from there,
    /// also after the answer of the claim out now, which may not have seen
    /// them (when it shares its batch with the write that put them back, or
    /// is answered after the worker's report, it takes only items past them
    /// and would raise the bound beyond them).
    pub fn repend_from(&mut self, index: u32) {
        self.from = self.from.min(index);
        // The claims take those from the bound on.
        self.due.retain(|&i| i < index);
        if let Some(claim) = &mut self.out {
            claim.repended = Some(claim.repended.map_or(index, |r| r.min(index)));
        }
    }

    /// An item went back to pending (or may have): look for it again.
    pub fn pending_again(&mut self, index: u32) {
        self.exhausted = false;
        self.repend_from(index);
    }

    /// The item at `index` (none: any item) may be claimed again at
    /// `until`. Returns the wake-up to set, if one is needed.
    pub fn wait(&mut self, until: Instant, index: Option<u32>) -> Option<Instant> {
        self.waiting.insert((until, index));
        self.first_wake_up()
    }

    /// The wake-up for the first retry waiting, if one is needed.
    fn first_wake_up(&mut self) -> Option<Instant> {
        let &(first, _) = self.waiting.first()?;
        self.wake_up_at(first)
    }

    /// The wake-up to set for `at` (or [`WAKE_SPACING`] after the last
    /// wake-up, if later), unless one is set for then or earlier.
    pub fn wake_up_at(&mut self, at: Instant) -> Option<Instant> {
        let due = match self.woke_at {
            Some(woke) => at.max(woke + WAKE_SPACING),
            None => at,
        };
        if self.wake_at.is_some_and(|set| set <= due) {
            return None;
        }
        self.wake_at = Some(due);
        Some(due)
    }

    /// The wake-up set for `at` fired at `now`: the retries whose wait is
    /// over become due. Returns the next wake-up to set, if one is needed.
    pub fn woken(&mut self, at: Instant, now: Instant) -> Option<Instant> {
        if self.wake_at == Some(at) {
            self.wake_at = None;
        }
        self.woke_at = Some(now);
        while let Some(&(due, index)) = self.waiting.first()
            && due <= now
        {
            self.waiting.pop_first();
            self.exhausted = false;
            match index {
                // Past the bound the claims take it anyway.
                Some(index) if index < self.from => {
                    self.due.insert(index);
                }
                Some(_) => {}
                None => self.repend_from(0),
            }
        }
        self.first_wake_up()
    }
}

/// A moving average of item durations. Jobs of fast items claim a round
/// of items ahead (so a worker never waits for a claim's commit); jobs of
/// slow items claim only for idle workers (so RUNNING means running).
#[derive(Debug, Default)]
pub(super) struct ItemTime {
    average: Option<Duration>,
}

impl ItemTime {
    pub fn observe(&mut self, took: Duration) {
        if took.is_zero() {
            return;
        }
        self.average = Some(match self.average {
            None => took,
            Some(avg) => (avg * 7 + took) / 8,
        });
    }

    pub fn fast(&self) -> bool {
        self.average.is_some_and(|a| a < PREFETCH_BELOW)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_claim_of_next_items_raises_the_bound_and_an_empty_one_exhausts() {
        let mut c = Claims::default();
        assert_eq!(
            c.send(8),
            NextClaim {
                from: 0,
                max: 8,
                retries: false
            }
        );
        c.claimed(8, Some(7));
        assert_eq!(c.from, 8);
        assert!(!c.exhausted);
        assert_eq!(c.send(8).from, 8);
        c.claimed(0, None);
        assert!(c.exhausted && c.all_taken() && !c.may_find());
        c.pending_again(3);
        assert!(!c.exhausted);
        assert_eq!(c.from, 3);
    }

    #[test]
    fn an_item_back_while_a_claim_is_out_is_claimed_again() {
        let mut c = Claims {
            from: 10,
            ..Claims::default()
        };
        c.send(4);
        c.repend_from(5);
        assert_eq!(c.from, 5);
        // Answered from before item 5 went back: it took 10..13 and found
        // the job empty, yet 5 is to be claimed and nothing is exhausted.
        c.claimed(0, None);
        assert!(!c.exhausted, "an item went back while the claim was out");
        assert_eq!(c.from, 5);
        c.send(4);
        c.claimed(4, Some(13));
        c.repend_from(6);
        assert_eq!(c.from, 6, "the bound stays below an item that went back");
    }

    #[test]
    fn due_retries_are_claimed_alone_from_the_lowest() {
        let mut c = Claims {
            from: 1_000,
            ..Claims::default()
        };
        let now = Instant::now();
        assert_eq!(c.wait(now + ms(100), Some(7)), Some(now + ms(100)));
        assert_eq!(c.wait(now + ms(50), Some(3)), Some(now + ms(50)));
        // A later wait sets no timer: the one set fires first.
        assert_eq!(c.wait(now + ms(200), Some(9)), None);
        // Nothing is due before its time (the timer is set again).
        assert_eq!(c.woken(now + ms(50), now + ms(10)), Some(now + ms(50)));
        assert!(c.due.is_empty());
        // 3 and 7 are due at 150 ms; 9 sets the next wake-up.
        assert_eq!(c.woken(now + ms(50), now + ms(150)), Some(now + ms(200)));
        assert_eq!(c.due.iter().copied().collect::<Vec<_>>(), vec![3, 7]);
        assert_eq!(
            c.send(1),
            NextClaim {
                from: 3,
                max: 1,
                retries: true
            }
        );
        c.claimed(1, Some(3));
        assert_eq!(c.due.iter().copied().collect::<Vec<_>>(), vec![7]);
        assert_eq!(c.from, 1_000, "a claim of retries leaves the bound");
        // Fewer than asked: none is left after it.
        c.send(5);
        c.claimed(0, None);
        assert!(c.due.is_empty());
        assert!(!c.exhausted, "a claim of retries says nothing of the rest");
    }

    #[test]
    fn a_retry_past_the_bound_is_left_to_the_claims_and_a_whole_job_look_lowers_it() {
        let mut c = Claims {
            from: 5,
            exhausted: true,
            ..Claims::default()
        };
        let now = Instant::now();
        c.wait(now, Some(8));
        c.woken(now, now);
        assert!(c.due.is_empty(), "8 is past the bound: the claims take it");
        assert!(!c.exhausted);
        c.exhausted = true;
        c.wait(now, None);
        c.woken(now, now + ms(30));
        assert_eq!(c.from, 0);
        assert!(!c.exhausted);
    }

    #[test]
    fn wake_ups_are_spaced() {
        let mut c = Claims::default();
        let now = Instant::now();
        c.woken(now, now);
        // Asked for 1 ms later, set 20 ms after the last wake-up.
        assert_eq!(c.wake_up_at(now + ms(1)), Some(now + WAKE_SPACING));
        // One is set for then already.
        assert_eq!(c.wake_up_at(now + ms(5)), None);
        assert_eq!(c.wake_up_at(now + ms(50)), None);
        // A stale wake-up leaves the one set.
        c.woken(now + ms(1), now + ms(2));
        assert_eq!(c.wake_at, Some(now + WAKE_SPACING));
    }

    #[test]
    fn only_fast_items_are_claimed_ahead() {
        let mut t = ItemTime::default();
        assert!(!t.fast(), "nothing known yet");
        t.observe(Duration::ZERO);
        assert!(!t.fast(), "a zero duration is no measure");
        t.observe(ms(1));
        assert!(t.fast());
        for _ in 0..30 {
            t.observe(ms(100));
        }
        assert!(!t.fast());
    }
}

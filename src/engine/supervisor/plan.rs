//! The decision taken after every message: hand out items, claim more, and
//! commit drained, finished, paused or failed when the time comes. A pure
//! function of the core's state, what the pool reports and the time.

use super::{
    action::Action,
    state::{Core, Phase, Workers},
};
use crate::domain::{Command, JobState, PauseMode};
use std::time::Instant;

impl Core {
    /// What to do next, given the pool's state and the time.
    pub fn next(&mut self, workers: &impl Workers, now: Instant, out: &mut Vec<Action>) {
        if self.state != JobState::Running || self.phase != Phase::Active {
            // Only a running job starts items: it holds no worker slots.
            self.ask_seats(workers, 0, out);
        }
        match self.phase {
            Phase::ShuttingDown => {
                if workers.in_flight() == 0 && self.claims.out.is_none() {
                    self.phase = Phase::Stopped;
                    out.push(Action::FinishShutdown);
                }
                return;
            }
            Phase::Stopped => return,
            Phase::Active | Phase::Backoff | Phase::Settling { .. } => {}
        }
        if self.state.is_terminal() {
            out.push(Action::Exit(format!("job {}", self.state)));
            return;
        }
        if self.phase != Phase::Active {
            return;
        }
        if self.state == JobState::Paused
            && workers.in_flight() == 0
            && self.claims.out.is_none()
            && self.failing.is_none()
        {
            // A paused job holds no actors: a resume (or its scheduled
            // time) starts a supervisor again, as for a job started paused.
            out.push(Action::Exit("job paused".into()));
            return;
        }
        if self.waits_for_workers(workers) {
            // A job that no worker serves holds no actors either: the
            // worker hub starts a supervisor again once one that serves
            // it connects (or a resume, a cancel… does, as for a paused
            // job).
            out.push(Action::Park);
            return;
        }
        if let Some(reason) = self.failing.take() {
            out.push(Action::Signal(Some(crate::executor::StopReason::Shutdown)));
            self.settle(Command::Fail, reason, out);
            return;
        }
        if self.state == JobState::Running
            && let Some(reason) = self.auto_pause.take()
        {
            self.settle(Command::Pause(PauseMode::Graceful), reason, out);
            return;
        }
        match self.state {
            JobState::Running => self.run(workers, now, out),
            JobState::Pausing | JobState::Cancelling
                if workers.in_flight() == 0 && self.claims.out.is_none() =>
            {
                let why = if self.state == JobState::Pausing {
                    "no item in flight"
                } else {
                    "every worker stopped"
                };
                self.settle(Command::Drained, why.into(), out);
            }
            _ => {}
        }
    }

    /// Whether the job is RUNNING with nothing to look after until a
    /// worker serves it: a remote executor's job that no connected worker
    /// serves, with no item in flight, no claim out, nothing queued, no
    /// seat held and nothing to commit. Not a job whose items have all
    /// ended (it finishes), nor one with a running-time budget (its
    /// supervisor fails it when the budget is spent, worker or not).
    fn waits_for_workers(&self, workers: &impl Workers) -> bool {
        self.state == JobState::Running
            && self.failing.is_none()
            && self.auto_pause.is_none()
            && !self.timed()
            && self.claims.out.is_none()
            && (self.open || !self.claims.all_taken())
            && workers.seats() == Some(0)
            && workers.in_flight() == 0
            && workers.queued() == 0
            && workers.unserved()
    }

    /// RUNNING: wake workers for the items claimed, claim for the idle
    /// ones (and ahead, for fast items), or finish once every item ended.
    fn run(&mut self, workers: &impl Workers, now: Instant, out: &mut Vec<Action>) {
        out.push(Action::Dispatch);
        if self.claims.out.is_some() {
            // Nothing to decide until the claim is back (no second claim,
            // no finish while one is out): skip reading the pool, which
            // takes a lock per worker and would run after every message.
            return;
        }
        let busy = workers.in_flight();
        let mut idle = workers.slots().saturating_sub(busy);
        // A job with a rate limit claims only what may start now.
        let mut ahead = if self.claims.item_time.fast() && self.pacer.is_none() {
            // A claim lands one commit after it is asked for, and each
            // worker ends an item per commit (pipelined: up to
            // `pipeline_depth`): keep two commits' worth claimed ahead.
            let per_worker = match self.settings.outstanding_per_worker {
                0 => 2,
                depth => depth as usize,
            };
            self.concurrency as usize * per_worker
        } else {
            0
        };
        let waiting = workers.queued();
        if let Some(seats) = workers.seats() {
            // A remote executor: ask for a worker slot per idle worker
            // (only for the items claimed, once nothing more is pending),
            // and claim for the slots granted. Ahead, for fast items, only
            // one item per item in flight: a slot's next item waits in the
            // queue when its worker frees it, instead of a claim's commit
            // later; a job that no worker serves claims nothing.
            let want = if self.claims.may_find() {
                idle
            } else {
                waiting.min(idle)
            };
            self.ask_seats(workers, want, out);
            idle = idle.min(seats);
            ahead = if ahead > 0 { busy } else { 0 };
        }
        let want = (idle + ahead).saturating_sub(waiting);
        // Claim for idle workers at once; top up the read-ahead in rounds,
        // not an item at a time.
        let worth_it = waiting < idle || want >= (ahead / 4).max(1);
        if want > 0 && worth_it && self.claims.may_find() {
            let want = match self.pacer.as_mut().map(|p| p.take(want)) {
                None => want,
                Some(Ok(granted)) => granted,
                // None may start yet: wake up for the next.
                Some(Err(wait)) => {
                    out.extend(self.claims.wake_up_at(now + wait).map(Action::WakeUpAt));
                    return;
                }
            };
            let claim = self.claims.send(want);
            out.push(Action::Claim {
                from: claim.from,
                max: claim.max,
                retries: claim.retries,
            });
        } else if self.claims.all_taken() && workers.queued() == 0 && busy == 0 && !self.open {
            // Whether any item failed is read from the counters when the
            // transition is committed. (An open job waits instead, holding
            // its workers, until items are added or it is closed.)
            self.settle(
                Command::Finish { any_failed: false },
                "every item ended".into(),
                out,
            );
        }
    }

    /// Remote executors: asks the worker hub for `want` seats in all, when
    /// that changed or seats beyond it are held (given back).
    fn ask_seats(&mut self, workers: &impl Workers, want: usize, out: &mut Vec<Action>) {
        let Some(held) = workers.seats() else {
            return;
        };
        let want = want as u32;
        if self.seats_asked != Some(want) || held > want as usize {
            self.seats_asked = Some(want);
            out.push(Action::Seats(want));
        }
    }

    /// Commits a transition of its own, guarded by the state it believes.
    fn settle(&mut self, command: Command, reason: String, out: &mut Vec<Action>) {
        self.settling();
        out.push(Action::Settle {
            from: self.state,
            command,
            reason,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::super::{settle::RETRY_AFTER, testing::*};
    use super::*;
    use crate::{
        domain::{JobPolicy, RateLimit},
        engine::worker::Finished,
        executor::StopReason,
        store::StoreError,
    };
    use std::time::Duration;

    #[test]
    fn a_remote_job_asks_a_seat_per_idle_worker_and_claims_only_for_the_seats_it_holds() {
        let mut c = core(JobState::Running);
        let now = Instant::now();
        // No worker slot yet: ask for one per idle worker, claim nothing.
        assert_eq!(
            next(&mut c, remote(0, 0, 0), now),
            [Action::Dispatch, Action::Seats(4)]
        );
        // Asked already: nothing new, however often it looks.
        assert_eq!(next(&mut c, remote(0, 0, 0), now), [Action::Dispatch]);
        // Two granted: two items claimed, for them only.
        assert_eq!(
            next(&mut c, remote(0, 0, 2), now),
            [Action::Dispatch, claim(0, 2)]
        );
        c.claims.claimed(2, Some(1));
        // Both items wait for a worker to take them with their seats.
        assert_eq!(next(&mut c, remote(0, 2, 2), now), [Action::Dispatch]);
        // Taken: two busy, two idle workers want seats (still four asked
        // of the hub in all, counting the two it granted and were used).
        assert_eq!(
            next(&mut c, remote(2, 0, 0), now),
            [Action::Dispatch, Action::Seats(2)]
        );
    }

    #[test]
    fn a_remote_job_claims_ahead_only_an_item_per_item_in_flight() {
        let mut c = core(JobState::Running);
        let now = Instant::now();
        c.claims.item_time.observe(Duration::from_millis(1));
        assert!(c.claims.item_time.fast());
        // A local job of fast items claims two commits' worth ahead…
        let mut local = core(JobState::Running);
        local.claims.item_time.observe(Duration::from_millis(1));
        assert_eq!(
            next(&mut local, IDLE, now),
            [Action::Dispatch, claim(0, 12)]
        );
        // …a remote one with no item in flight only one per seat: no
        // worker, no claim, nothing hoarded.
        assert_eq!(
            next(&mut c, remote(0, 0, 3), now),
            [Action::Dispatch, Action::Seats(4), claim(0, 3)]
        );
        c.claims.claimed(3, Some(2));
        // Three in flight, the fourth worker idle with no seat: the three
        // slots' next items are claimed ahead, nothing more.
        assert_eq!(
            next(&mut c, remote(3, 0, 0), now),
            [Action::Dispatch, Action::Seats(1), claim(3, 3)]
        );
        // Slow items: never ahead.
        let mut slow = core(JobState::Running);
        slow.claims.item_time.observe(Duration::from_secs(1));
        assert_eq!(
            next(&mut slow, remote(3, 0, 0), now),
            [Action::Dispatch, Action::Seats(1)]
        );
    }

    #[test]
    fn a_remote_job_that_stops_running_gives_its_seats_back() {
        let now = Instant::now();
        for state in [
            JobState::Pausing,
            JobState::Paused,
            JobState::Cancelling,
            JobState::Succeeded,
        ] {
            let mut c = core(state);
            let actions = next(&mut c, remote(0, 0, 2), now);
            assert_eq!(actions.first(), Some(&Action::Seats(0)), "{state}");
            // Given back (none held now): nothing more to ask.
            let again = next(&mut c, remote(0, 0, 0), now);
            assert!(!again.contains(&Action::Seats(0)), "{state}: {again:?}");
        }
    }

    #[test]
    fn a_remote_job_with_nothing_left_to_claim_wants_seats_only_for_its_queued_items() {
        let mut c = core(JobState::Running);
        let now = Instant::now();
        assert_eq!(
            next(&mut c, remote(0, 0, 4), now),
            [Action::Dispatch, Action::Seats(4), claim(0, 4)]
        );
        // Only one item was left.
        c.claims.claimed(1, Some(0));
        c.claims.send(4);
        c.claims.claimed(0, None);
        assert!(!c.claims.may_find());
        // One queued, four seats: three go back.
        assert_eq!(
            next(&mut c, remote(0, 1, 4), now),
            [Action::Dispatch, Action::Seats(1)]
        );
    }

    #[test]
    fn running_claims_for_idle_workers_one_claim_at_a_time() {
        let mut c = core(JobState::Running);
        let now = Instant::now();
        assert_eq!(next(&mut c, IDLE, now), [Action::Dispatch, claim(0, 4)]);
        // No second claim while one is out, however idle the pool.
        assert_eq!(next(&mut c, IDLE, now), [Action::Dispatch]);
        c.claims.claimed(4, Some(3));
        // Three busy, one idle, nothing queued: one more, from item 4.
        let pool = Pool {
            in_flight: 3,
            ..IDLE
        };
        assert_eq!(next(&mut c, pool, now), [Action::Dispatch, claim(4, 1)]);
        c.claims.claimed(1, Some(4));
        // Every worker busy or an item waiting for each idle one: no claim.
        let full = Pool {
            in_flight: 4,
            ..IDLE
        };
        assert_eq!(next(&mut c, full, now), [Action::Dispatch]);
        let fed = Pool {
            in_flight: 2,
            slots: 4,
            queued: 2,
            seats: None,
            unserved: false,
        };
        assert_eq!(next(&mut c, fed, now), [Action::Dispatch]);
    }

    #[test]
    fn fast_items_are_claimed_ahead_in_rounds() {
        let mut c = core(JobState::Running);
        let now = Instant::now();
        c.claims.item_time.observe(Duration::from_millis(1));
        // 4 workers, 2 commits' worth ahead each: 4 idle + 8 ahead.
        assert_eq!(next(&mut c, IDLE, now), [Action::Dispatch, claim(0, 12)]);
        c.claims.claimed(12, Some(11));
        // Every worker busy, 7 of the 8 ahead queued: not worth a claim
        // of one.
        let topped = Pool {
            in_flight: 4,
            slots: 4,
            queued: 7,
            seats: None,
            unserved: false,
        };
        assert_eq!(next(&mut c, topped, now), [Action::Dispatch]);
        // 2 are: a round is a quarter of the read-ahead.
        let low = Pool {
            queued: 6,
            ..topped
        };
        assert_eq!(next(&mut c, low, now), [Action::Dispatch, claim(12, 2)]);
    }

    #[test]
    fn a_rate_limit_claims_only_what_may_start_and_wakes_up_for_the_next() {
        let policy = JobPolicy {
            rate_limit: Some(1),
            rate_period_ms: Some(10_000),
            ..JobPolicy::default()
        };
        let mut c = core_with(JobState::Running, policy);
        c.claims.item_time.observe(Duration::from_millis(1));
        let now = Instant::now();
        // Fast items, yet no read-ahead: one start now.
        assert_eq!(next(&mut c, IDLE, now), [Action::Dispatch, claim(0, 1)]);
        c.claims.claimed(1, Some(0));
        let actions = next(&mut c, IDLE, now);
        let [Action::Dispatch, Action::WakeUpAt(at)] = actions[..] else {
            panic!("{actions:?}");
        };
        assert!(
            at > now + Duration::from_secs(9) && at <= now + Duration::from_secs(10),
            "the next start is 10 s later"
        );
        assert!(c.claims.out.is_none(), "nothing is claimed before then");
        // A limit lifted: the workers are fed again.
        c.set_rate(RateLimit::default());
        assert_eq!(next(&mut c, IDLE, now), [Action::Dispatch, claim(1, 12)]);
    }

    #[test]
    fn running_finishes_once_every_item_ended_and_nothing_waits() {
        let mut c = core(JobState::Running);
        let now = Instant::now();
        exhausted(&mut c, now);
        // An item still running, or queued: not yet.
        assert_eq!(next(&mut c, ONE_BUSY, now), [Action::Dispatch]);
        let queued = Pool { queued: 1, ..IDLE };
        assert_eq!(next(&mut c, queued, now), [Action::Dispatch]);
        // A retry waiting for its delay: not yet either.
        let mut out = Vec::new();
        let failed = Finished::Failed {
            retry: Some(Duration::from_secs(1)),
            error: "boom".into(),
        };
        c.done(3, &failed, Duration::ZERO, now, &mut out);
        assert_eq!(out, [Action::WakeUpAt(now + Duration::from_secs(1))]);
        assert_eq!(next(&mut c, IDLE, now), [Action::Dispatch]);
        // Its time comes: it is claimed alone, from where it is.
        c.woken(
            now + Duration::from_secs(1),
            now + Duration::from_secs(1),
            &mut out,
        );
        let later = now + Duration::from_secs(1);
        let due = Action::Claim {
            from: 3,
            max: 1,
            retries: true,
        };
        assert_eq!(next(&mut c, IDLE, later), [Action::Dispatch, due]);
        c.claims.claimed(1, Some(3));
        // A wake-up looks past the bound once more.
        assert_eq!(next(&mut c, IDLE, later), [Action::Dispatch, claim(4, 4)]);
        c.claims.claimed(0, None);
        assert_eq!(
            next(&mut c, IDLE, later),
            [
                Action::Dispatch,
                settle(
                    JobState::Running,
                    Command::Finish { any_failed: false },
                    "every item ended"
                )
            ]
        );
        assert_eq!(c.phase, Phase::Settling { backoff: false });
        // Nothing more is decided until the transition is back.
        assert_eq!(next(&mut c, IDLE, later), []);
    }

    #[test]
    fn a_graceful_pause_settles_only_once_the_items_in_flight_are_done() {
        let mut c = core(JobState::Running);
        let now = Instant::now();
        next(&mut c, IDLE, now);
        let applied = act(|out| assert!(c.changed(JobState::Pausing, 6, false, out)));
        // Closed before the call is answered; items in flight carry on.
        assert_eq!(applied, [Action::ReleaseHeld, Action::OpenQueue(false)]);
        assert_eq!(next(&mut c, ONE_BUSY, now), []);
        // The claim out is still out: not yet.
        assert_eq!(next(&mut c, IDLE, now), []);
        c.claims.claimed(4, Some(3));
        let drained = settle(JobState::Pausing, Command::Drained, "no item in flight");
        assert_eq!(next(&mut c, IDLE, now), [drained]);
        // Committed PAUSED: the queue's items (released by it) dropped.
        let paused = committed(JobState::Paused, 7);
        let actions = act(|out| assert!(c.settled(Ok(paused), &IDLE, now, out)));
        assert!(actions.contains(&Action::DrainQueue), "{actions:?}");
        assert_eq!(c.phase, Phase::Active);
        // Paused, it holds no actors: the supervisor goes (a resume starts
        // another).
        assert_eq!(next(&mut c, IDLE, now), [Action::Exit("job paused".into())]);
    }

    #[test]
    fn a_paused_job_s_supervisor_leaves_only_once_nothing_is_out() {
        let now = Instant::now();
        let mut c = core(JobState::Paused);
        // An item still committing, or a claim out: it waits.
        assert_eq!(next(&mut c, ONE_BUSY, now), []);
        c.claims.send(4);
        assert_eq!(next(&mut c, IDLE, now), []);
        c.claims.claimed(0, None);
        assert_eq!(next(&mut c, IDLE, now), [Action::Exit("job paused".into())]);
    }

    #[test]
    fn a_cancel_stops_the_items_and_settles_when_every_worker_stopped() {
        let mut c = core(JobState::Paused);
        let now = Instant::now();
        let actions = act(|out| {
            c.changed(JobState::Cancelling, 6, false, out);
        });
        assert!(actions.contains(&Action::Signal(Some(StopReason::Cancel))));
        assert_eq!(next(&mut c, ONE_BUSY, now), []);
        assert_eq!(
            next(&mut c, IDLE, now),
            [settle(
                JobState::Cancelling,
                Command::Drained,
                "every worker stopped"
            )]
        );
        let cancelled = committed(JobState::Cancelled, 7);
        c.settled(Ok(cancelled), &IDLE, now, &mut Vec::new());
        assert_eq!(
            next(&mut c, IDLE, now),
            [Action::Exit("job cancelled".into())]
        );
    }

    #[test]
    fn an_outcome_not_stored_fails_the_job_even_with_a_claim_out() {
        let mut c = core(JobState::Running);
        let now = Instant::now();
        next(&mut c, IDLE, now);
        let lost = Finished::NotCommitted("disk full".into());
        c.done(2, &lost, Duration::ZERO, now, &mut Vec::new());
        let actions = next(&mut c, IDLE, now);
        assert_eq!(
            actions,
            [
                Action::Signal(Some(StopReason::Shutdown)),
                settle(
                    JobState::Running,
                    Command::Fail,
                    "the outcome of item 2 could not be stored: disk full"
                )
            ]
        );
        // The claim fails meanwhile: back off once the failure is in.
        assert_eq!(
            act(|out| c.claim_failed(out)),
            [Action::RetryAfter(RETRY_AFTER)]
        );
        assert_eq!(c.phase, Phase::Settling { backoff: true });
        c.settled(
            Err(StoreError::Unavailable("down".into())),
            &IDLE,
            now,
            &mut Vec::new(),
        );
        assert_eq!(c.phase, Phase::Backoff, "one retry timer, not two");
        assert_eq!(next(&mut c, IDLE, now), []);
        c.retry();
        assert_eq!(c.phase, Phase::Active);
    }

    #[test]
    fn a_shutdown_answers_once_nothing_is_in_flight_and_decides_nothing_more() {
        let mut c = core(JobState::Running);
        let now = Instant::now();
        next(&mut c, IDLE, now);
        assert_eq!(
            act(|out| c.shutdown(out)),
            [Action::Signal(Some(StopReason::Shutdown))]
        );
        assert!(!c.replaces_workers());
        // The claim out must come back (its items are released).
        assert_eq!(next(&mut c, IDLE, now), []);
        assert_eq!(act(|out| c.claim_failed(out)), [], "no retry");
        assert_eq!(next(&mut c, ONE_BUSY, now), []);
        // A failure is not committed while shutting down.
        let lost = Finished::NotCommitted("gone".into());
        c.done(1, &lost, Duration::ZERO, now, &mut Vec::new());
        assert!(c.failing.is_none());
        assert_eq!(next(&mut c, IDLE, now), [Action::FinishShutdown]);
        assert_eq!(next(&mut c, IDLE, now), [], "answered once");
    }

    #[test]
    fn a_remote_job_that_no_worker_serves_parks_its_supervisor_until_one_does() {
        let now = Instant::now();
        let mut c = core(JobState::Running);
        // No worker serves it: nothing to claim, no seat to ask for, no
        // actor to hold.
        assert_eq!(next(&mut c, UNSERVED, now), [Action::Park]);
        // A worker came before the supervisor was gone (the hub refused to
        // park it): the next decision asks for seats as usual.
        assert_eq!(
            next(&mut c, remote(0, 0, 0), now),
            [Action::Dispatch, Action::Seats(4)]
        );
        // Its worker went away again, with the seats it granted.
        assert_eq!(
            next(&mut c, UNSERVED, now),
            [Action::Park],
            "a seat asked for and not granted keeps nothing"
        );
    }

    /// Every combination of what the pool reports, in every state: the
    /// supervisor parks exactly when the job is RUNNING, of a remote
    /// executor that no worker serves, with no item in flight, nothing
    /// queued, no seat held and no claim out.
    #[test]
    fn a_supervisor_parks_only_when_every_condition_holds() {
        let now = Instant::now();
        let mut seen = 0;
        for state in JobState::ALL {
            for in_flight in [0, 1] {
                for queued in [0, 1] {
                    for seats in [None, Some(0), Some(1)] {
                        for unserved in [false, true] {
                            for claim_out in [false, true] {
                                let mut c = core(state);
                                if claim_out {
                                    c.claims.send(4);
                                }
                                let pool = Pool {
                                    in_flight,
                                    slots: 4,
                                    queued,
                                    seats,
                                    unserved,
                                };
                                let parks = next(&mut c, pool, now).contains(&Action::Park);
                                let expected = state == JobState::Running
                                    && in_flight == 0
                                    && queued == 0
                                    && seats == Some(0)
                                    && unserved
                                    && !claim_out;
                                assert_eq!(
                                    parks, expected,
                                    "{state} in flight {in_flight} queued {queued} seats {seats:?} \
                                     unserved {unserved} claim out {claim_out}"
                                );
                                seen += usize::from(parks);
                            }
                        }
                    }
                }
            }
        }
        assert_eq!(seen, 1, "one combination parks");
        // Only an active supervisor parks: not one backing off from the
        // store, committing a transition, or shutting down.
        for phase in [
            Phase::Backoff,
            Phase::Settling { backoff: false },
            Phase::Settling { backoff: true },
            Phase::ShuttingDown,
            Phase::Stopped,
        ] {
            let mut c = core(JobState::Running);
            c.phase = phase;
            let actions = next(&mut c, UNSERVED, now);
            assert!(!actions.contains(&Action::Park), "{phase:?}: {actions:?}");
        }
    }

    #[test]
    fn a_job_that_no_worker_serves_still_finishes_fails_or_keeps_to_its_budget() {
        let now = Instant::now();
        // Every item ended: it finishes, worker or not.
        let mut done = core(JobState::Running);
        exhausted(&mut done, now);
        assert_eq!(
            next(&mut done, UNSERVED, now),
            [
                Action::Dispatch,
                Action::Seats(0),
                settle(
                    JobState::Running,
                    Command::Finish { any_failed: false },
                    "every item ended"
                )
            ]
        );
        // An open job whose items all ended waits for more (and workers)
        // with no actors.
        let mut open = core(JobState::Running);
        open.open = true;
        exhausted(&mut open, now);
        assert_eq!(next(&mut open, UNSERVED, now), [Action::Park]);
        // A failure to commit is committed first.
        let mut failing = core(JobState::Running);
        failing.failing = Some("disk full".into());
        let actions = next(&mut failing, UNSERVED, now);
        assert!(!actions.contains(&Action::Park), "{actions:?}");
        assert!(
            actions.contains(&settle(JobState::Running, Command::Fail, "disk full")),
            "{actions:?}"
        );
        // The breaker's pause is committed first too.
        let mut breaker = core(JobState::Running);
        breaker.auto_pause = Some("too many failures".into());
        let actions = next(&mut breaker, UNSERVED, now);
        assert_eq!(
            actions,
            [settle(
                JobState::Running,
                Command::Pause(PauseMode::Graceful),
                "too many failures"
            )]
        );
        // A job with a running-time budget keeps its supervisor, which
        // fails it once the budget is spent, worker or not.
        let policy = JobPolicy {
            timeout_ms: Some(60_000),
            ..JobPolicy::default()
        };
        let mut timed = core_with(JobState::Running, policy);
        let actions = next(&mut timed, UNSERVED, now);
        assert!(!actions.contains(&Action::Park), "{actions:?}");
    }

    #[test]
    fn a_parked_job_s_new_supervisor_claims_once_a_worker_serves_it() {
        let now = Instant::now();
        // Woken: a new supervisor, from the store, with a worker serving.
        let mut c = core(JobState::Running);
        assert_eq!(
            next(&mut c, remote(0, 0, 0), now),
            [Action::Dispatch, Action::Seats(4)]
        );
        assert_eq!(
            next(&mut c, remote(0, 0, 2), now),
            [Action::Dispatch, claim(0, 2)]
        );
        // A claim out: it does not park, even if the worker left.
        assert_eq!(next(&mut c, UNSERVED, now), [Action::Dispatch]);
        c.claims.claimed(2, Some(1));
        // Two items queued for seats: it waits for a worker with them.
        let queued = Pool {
            queued: 2,
            ..UNSERVED
        };
        assert!(!next(&mut c, queued, now).contains(&Action::Park));
        // An item in flight (its worker may come back within its lease).
        let busy = Pool {
            in_flight: 1,
            ..UNSERVED
        };
        assert!(!next(&mut c, busy, now).contains(&Action::Park));
        // Both ended or went back: nothing left to look after.
        assert_eq!(next(&mut c, UNSERVED, now), [Action::Park]);
    }

    #[test]
    fn a_larger_pool_claims_more() {
        let mut c = core(JobState::Running);
        let now = Instant::now();
        c.resized(6);
        let pool = Pool { slots: 6, ..IDLE };
        assert_eq!(next(&mut c, pool, now), [Action::Dispatch, claim(0, 6)]);
    }
}

//! The job state machine: one pure function from (current state, command)
//! to a decision, or a typed refusal. Nothing here does I/O; the store
//! applies a decision's durable effects in one transaction and the engine
//! applies its runtime effects.

use super::state::{JobState, PauseMode};

/// Something that asks a job to change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// A caller asks to pause.
    Pause(PauseMode),
    /// A caller asks to resume.
    Resume,
    /// A caller asks to cancel.
    Cancel,
    /// A caller asks to run the FAILED items of a finished job again.
    RetryFailed,
    /// The supervisor saw no item left in flight.
    Drained,
    /// The supervisor saw every item end.
    Finish { any_failed: bool },
    /// A fatal error (restart budget spent, executor gone, store lost).
    Fail,
}

/// A durable or runtime consequence of a transition, applied by the layer
/// that owns it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// Store: open a pause record with this mode.
    OpenPause(PauseMode),
    /// Store: stamp the open pause record with the time PAUSED was reached.
    MarkPaused,
    /// Store: stamp the open pause record with the resume time.
    ClosePause,
    /// Store: items still RUNNING (claimed but no longer in flight) go back
    /// to PENDING with their checkpoints, without spending the attempt.
    ReleaseRunning,
    /// Store: every PENDING or RUNNING item becomes CANCELLED.
    CancelRemaining,
    /// Store: FAILED items go back to PENDING with their attempts reset.
    ResetFailed,
    /// Store: stamp the job's end time.
    End,
    /// Store: clear the job's end time (it runs again).
    Reopen,
    /// Runtime: ask items in flight to stop at their next checkpoint.
    Interrupt,
}

/// What the state machine decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Nothing to store; return the job as it is. `interrupt` escalates a
    /// graceful pause in progress to an immediate one.
    NoOp { interrupt: bool },
    /// Move from `from` to `to` and apply `effects`.
    Transition {
        from: JobState,
        to: JobState,
        effects: Vec<Effect>,
    },
}

/// Why a command was refused. The API turns each into FAILED_PRECONDITION
/// with a stable reason; `Stale` never reaches a caller (the supervisor
/// re-reads the job instead).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("a {0} job cannot be paused")]
    NotPausable(JobState),
    #[error("a {0} job cannot be resumed")]
    NotResumable(JobState),
    #[error("a {0} job cannot be cancelled")]
    NotCancellable(JobState),
    #[error("a {0} job has no failed items to retry")]
    NotRetryable(JobState),
    #[error("{command:?} does not apply to a {state} job")]
    Stale { state: JobState, command: Command },
    /// A change that only makes sense before the job ends.
    #[error("the job has ended ({0})")]
    Ended(JobState),
    #[error(
        "a {0} job cannot be deleted: only an ended job can (cancel it and wait for CANCELLED)"
    )]
    NotDeletable(JobState),
    /// AddItems on a job that is ending or has ended.
    #[error("a {0} job takes no more items: only a running, pausing or paused job does")]
    TakesNoItems(JobState),
    /// CancelItems on a job that is being cancelled or has ended.
    #[error(
        "a {0} job has no items to cancel one by one: only a running, pausing or paused job has"
    )]
    ItemsNotCancellable(JobState),
}

impl Refusal {
    /// The stable machine-readable reason sent in `google.rpc.ErrorInfo`.
    pub fn reason_code(&self) -> &'static str {
        match self {
            Refusal::NotPausable(_) => "JOB_NOT_PAUSABLE",
            Refusal::NotResumable(_) => "JOB_NOT_RESUMABLE",
            Refusal::NotCancellable(_) => "JOB_NOT_CANCELLABLE",
            Refusal::NotRetryable(_) => "JOB_NOT_RETRYABLE",
            Refusal::Stale { .. } => "JOB_STATE_CHANGED",
            Refusal::Ended(_) => "JOB_FINISHED",
            Refusal::NotDeletable(_) => "JOB_NOT_DELETABLE",
            Refusal::TakesNoItems(_) => "JOB_TAKES_NO_ITEMS",
            Refusal::ItemsNotCancellable(_) => "JOB_ITEMS_NOT_CANCELLABLE",
        }
    }
}

/// Whether a job in `state` may be deleted: only once it has ended, so
/// that no supervisor, worker or claim can still write for it.
pub fn deletable(state: JobState) -> Result<(), Refusal> {
    if state.is_terminal() {
        Ok(())
    } else {
        Err(Refusal::NotDeletable(state))
    }
}

/// Whether items may be added to a job in `state` (AddItems): while it
/// runs, pauses or is paused, not once it is being cancelled or has ended
/// (a FAILED job's items are retried by RetryFailedItems, not added to).
pub fn growable(state: JobState) -> Result<(), Refusal> {
    match state {
        JobState::Running | JobState::Pausing | JobState::Paused => Ok(()),
        _ => Err(Refusal::TakesNoItems(state)),
    }
}

/// Whether chosen items of a job in `state` may be cancelled
/// (CancelItems): while it runs, pauses or is paused. A job being
/// cancelled cancels all its items anyway, and an ended job's items have
/// ended.
pub fn items_cancellable(state: JobState) -> Result<(), Refusal> {
    match state {
        JobState::Running | JobState::Pausing | JobState::Paused => Ok(()),
        _ => Err(Refusal::ItemsNotCancellable(state)),
    }
}

/// Decides what `command` does to a job in `state`.
pub fn decide(state: JobState, command: Command) -> Result<Decision, Refusal> {
    use Command as C;
    use Effect as E;
    use JobState as S;
    let go = |to: JobState, effects: Vec<Effect>| {
        Ok(Decision::Transition {
            from: state,
            to,
            effects,
        })
    };
    let noop = Ok(Decision::NoOp { interrupt: false });
    match (command, state) {
        (C::Pause(mode), S::Running) => {
            let mut effects = vec![E::OpenPause(mode)];
            if mode == PauseMode::Immediate {
                effects.push(E::Interrupt);
            }
            go(S::Pausing, effects)
        }
        (C::Pause(mode), S::Pausing) => Ok(Decision::NoOp {
            interrupt: mode == PauseMode::Immediate,
        }),
        (C::Pause(_), S::Paused) => noop,
        (C::Pause(_), _) => Err(Refusal::NotPausable(state)),

        (C::Resume, S::Running) => noop,
        (C::Resume, S::Pausing | S::Paused) => go(S::Running, vec![E::ClosePause]),
        (C::Resume, _) => Err(Refusal::NotResumable(state)),

        (C::Cancel, S::Running | S::Pausing) => go(S::Cancelling, vec![E::Interrupt]),
        (C::Cancel, S::Paused) => go(S::Cancelled, vec![E::CancelRemaining, E::End]),
        (C::Cancel, S::Cancelling | S::Cancelled) => noop,
        (C::Cancel, _) => Err(Refusal::NotCancellable(state)),

        (C::RetryFailed, S::Failed) => go(S::Running, vec![E::ResetFailed, E::Reopen]),
        (C::RetryFailed, S::Succeeded) => noop,
        (C::RetryFailed, _) => Err(Refusal::NotRetryable(state)),

        (C::Drained, S::Pausing) => go(S::Paused, vec![E::MarkPaused, E::ReleaseRunning]),
        (C::Drained, S::Cancelling) => go(S::Cancelled, vec![E::CancelRemaining, E::End]),

        (C::Finish { any_failed }, S::Running | S::Pausing) => {
            let to = if any_failed { S::Failed } else { S::Succeeded };
            go(to, vec![E::End])
        }

        (C::Fail, s) if !s.is_terminal() => go(S::Failed, vec![E::ReleaseRunning, E::End]),

        (command, state) => Err(Refusal::Stale { state, command }),
    }
}

/// Whether a caller's command would be accepted now (a no-op counts):
/// the `can_pause` / `can_resume` / `can_cancel` flags of a job.
pub fn allows(state: JobState, command: Command) -> bool {
    decide(state, command).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use JobState as S;

    /// What a caller sees: the table of calls by state (README, docs/DESIGN.md), cell by cell.
    #[derive(Debug, PartialEq)]
    enum Cell {
        To(JobState),
        NoOp,
        Refused(&'static str),
    }

    fn cell(state: JobState, command: Command) -> Cell {
        match decide(state, command) {
            Ok(Decision::Transition { to, .. }) => Cell::To(to),
            Ok(Decision::NoOp { .. }) => Cell::NoOp,
            Err(r) => Cell::Refused(r.reason_code()),
        }
    }

    #[test]
    fn the_api_table_holds_for_every_state_and_call() {
        use Cell::*;
        let pause = Command::Pause(PauseMode::Graceful);
        let expected: [(JobState, [Cell; 3]); 7] = [
            (S::Running, [To(S::Pausing), NoOp, To(S::Cancelling)]),
            (S::Pausing, [NoOp, To(S::Running), To(S::Cancelling)]),
            (S::Paused, [NoOp, To(S::Running), To(S::Cancelled)]),
            (
                S::Cancelling,
                [
                    Refused("JOB_NOT_PAUSABLE"),
                    Refused("JOB_NOT_RESUMABLE"),
                    NoOp,
                ],
            ),
            (
                S::Cancelled,
                [
                    Refused("JOB_NOT_PAUSABLE"),
                    Refused("JOB_NOT_RESUMABLE"),
                    NoOp,
                ],
            ),
            (
                S::Succeeded,
                [
                    Refused("JOB_NOT_PAUSABLE"),
                    Refused("JOB_NOT_RESUMABLE"),
                    Refused("JOB_NOT_CANCELLABLE"),
                ],
            ),
            (
                S::Failed,
                [
                    Refused("JOB_NOT_PAUSABLE"),
                    Refused("JOB_NOT_RESUMABLE"),
                    Refused("JOB_NOT_CANCELLABLE"),
                ],
            ),
        ];
        assert_eq!(expected.len(), JobState::ALL.len());
        for (state, [p, r, c]) in expected {
            assert_eq!(cell(state, pause), p, "PauseJob on {state}");
            assert_eq!(
                cell(state, Command::Pause(PauseMode::Immediate)),
                p,
                "immediate PauseJob on {state}"
            );
            assert_eq!(cell(state, Command::Resume), r, "ResumeJob on {state}");
            assert_eq!(cell(state, Command::Cancel), c, "CancelJob on {state}");
        }
    }

    #[test]
    fn only_an_ended_job_may_be_deleted() {
        use JobState as S;
        for state in JobState::ALL {
            let expected = match state {
                S::Succeeded | S::Failed | S::Cancelled => Ok(()),
                S::Running | S::Pausing | S::Paused | S::Cancelling => {
                    Err(Refusal::NotDeletable(state))
                }
            };
            assert_eq!(deletable(state), expected, "DeleteJob on {state}");
        }
        assert_eq!(
            Refusal::NotDeletable(S::Running).reason_code(),
            "JOB_NOT_DELETABLE"
        );
    }

    #[test]
    fn items_may_be_added_until_the_job_ends_or_is_cancelled() {
        for state in JobState::ALL {
            let expected = match state {
                S::Running | S::Pausing | S::Paused => Ok(()),
                S::Cancelling | S::Cancelled | S::Succeeded | S::Failed => {
                    Err(Refusal::TakesNoItems(state))
                }
            };
            assert_eq!(growable(state), expected, "AddItems on {state}");
        }
        assert_eq!(
            Refusal::TakesNoItems(S::Cancelling).reason_code(),
            "JOB_TAKES_NO_ITEMS"
        );
    }

    #[test]
    fn items_may_be_cancelled_one_by_one_until_the_job_ends_or_is_cancelled() {
        for state in JobState::ALL {
            let expected = match state {
                S::Running | S::Pausing | S::Paused => Ok(()),
                S::Cancelling | S::Cancelled | S::Succeeded | S::Failed => {
                    Err(Refusal::ItemsNotCancellable(state))
                }
            };
            assert_eq!(items_cancellable(state), expected, "CancelItems on {state}");
        }
        assert_eq!(
            Refusal::ItemsNotCancellable(S::Succeeded).reason_code(),
            "JOB_ITEMS_NOT_CANCELLABLE"
        );
    }

    #[test]
    fn every_state_and_command_pair_is_decided_consistently() {
        let commands = [
            Command::Pause(PauseMode::Graceful),
            Command::Pause(PauseMode::Immediate),
            Command::Resume,
            Command::Cancel,
            Command::RetryFailed,
            Command::Drained,
            Command::Finish { any_failed: false },
            Command::Finish { any_failed: true },
            Command::Fail,
        ];
        for state in JobState::ALL {
            for command in commands {
                match decide(state, command) {
                    Ok(Decision::Transition { from, to, effects }) => {
                        assert_eq!(from, state);
                        assert_ne!(from, to, "{command:?} on {state} loops");
                        // Only a retry leaves a terminal state.
                        if state.is_terminal() {
                            assert_eq!(command, Command::RetryFailed);
                        }
                        // A terminal target is stamped with an end time,
                        // and only a terminal target.
                        assert_eq!(
                            to.is_terminal(),
                            effects.contains(&Effect::End),
                            "{command:?} on {state}"
                        );
                        // Reaching CANCELLED cancels what is left.
                        if to == S::Cancelled {
                            assert!(effects.contains(&Effect::CancelRemaining));
                        }
                        // Entering CANCELLING, or PAUSING immediately,
                        // interrupts items in flight.
                        let interrupts = effects.contains(&Effect::Interrupt);
                        let should =
                            to == S::Cancelling || command == Command::Pause(PauseMode::Immediate);
                        assert_eq!(interrupts, should, "{command:?} on {state}");
                    }
                    Ok(Decision::NoOp { interrupt }) => {
                        if interrupt {
                            assert_eq!(
                                (state, command),
                                (S::Pausing, Command::Pause(PauseMode::Immediate))
                            );
                        }
                    }
                    Err(refusal) => {
                        // Internal commands never produce a caller-facing
                        // refusal, and callers' commands never a stale one.
                        let internal = matches!(
                            command,
                            Command::Drained | Command::Finish { .. } | Command::Fail
                        );
                        assert_eq!(
                            matches!(refusal, Refusal::Stale { .. }),
                            internal,
                            "{command:?} on {state}: {refusal:?}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn internal_commands_move_the_job_on() {
        assert_eq!(cell(S::Pausing, Command::Drained), Cell::To(S::Paused));
        assert_eq!(
            cell(S::Cancelling, Command::Drained),
            Cell::To(S::Cancelled)
        );
        for s in [S::Running, S::Paused, S::Cancelled, S::Succeeded, S::Failed] {
            assert!(matches!(cell(s, Command::Drained), Cell::Refused(_)), "{s}");
        }
        let done = Command::Finish { any_failed: false };
        let failed = Command::Finish { any_failed: true };
        assert_eq!(cell(S::Running, done), Cell::To(S::Succeeded));
        assert_eq!(cell(S::Running, failed), Cell::To(S::Failed));
        assert_eq!(cell(S::Pausing, done), Cell::To(S::Succeeded));
        for s in [
            S::Paused,
            S::Cancelling,
            S::Cancelled,
            S::Succeeded,
            S::Failed,
        ] {
            assert!(matches!(cell(s, done), Cell::Refused(_)), "{s}");
        }
        for s in JobState::ALL {
            let expected = if s.is_terminal() {
                Cell::Refused("JOB_STATE_CHANGED")
            } else {
                Cell::To(S::Failed)
            };
            assert_eq!(cell(s, Command::Fail), expected, "{s}");
        }
    }

    #[test]
    fn retry_failed_reopens_only_a_failed_job() {
        assert_eq!(cell(S::Failed, Command::RetryFailed), Cell::To(S::Running));
        assert_eq!(cell(S::Succeeded, Command::RetryFailed), Cell::NoOp);
        for s in [
            S::Running,
            S::Pausing,
            S::Paused,
            S::Cancelling,
            S::Cancelled,
        ] {
            assert_eq!(
                cell(s, Command::RetryFailed),
                Cell::Refused("JOB_NOT_RETRYABLE"),
                "{s}"
            );
        }
    }

    #[test]
    fn can_flags_follow_the_table() {
        assert!(allows(S::Running, Command::Pause(PauseMode::Graceful)));
        assert!(allows(S::Paused, Command::Pause(PauseMode::Graceful)));
        assert!(!allows(S::Cancelling, Command::Pause(PauseMode::Graceful)));
        assert!(allows(S::Running, Command::Resume));
        assert!(!allows(S::Succeeded, Command::Cancel));
        assert!(allows(S::Cancelled, Command::Cancel));
    }
}

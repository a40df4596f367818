//! CancelItems: which items of a job a call cancels, checked, and whether
//! a job takes the call — decided here, without I/O, for both stores.

use super::{EventBody, FieldViolation, ItemState, JobState, Refusal, items_cancellable};

/// Most indexes one CancelItems call may name.
pub const MAX_CANCEL_INDEXES: usize = 100_000;

/// A CancelItems request as received, before parsing.
#[derive(Debug, Clone, Default)]
pub struct NewSelection {
    pub indexes: Vec<u32>,
    /// `first` to `last`, both included.
    pub range: Option<(u32, u32)>,
    /// Only items in these states (empty: pending and running).
    pub states: Vec<ItemState>,
}

/// Which items a selection names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Which {
    /// These indexes: ascending, each once, at least one.
    Indexes(Vec<u32>),
    /// `first` to `last`, both included (`first <= last`).
    Range { first: u32, last: u32 },
}

/// The items a CancelItems call cancels: checked, not yet against a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemSelection {
    pub which: Which,
    /// Only items in these states: pending and/or running, each once.
    pub states: Vec<ItemState>,
}

/// Why a job takes no CancelItems call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelRefusal {
    /// Only a RUNNING, PAUSING or PAUSED job has items to cancel one by
    /// one.
    NotCancellable(JobState),
    /// An index named (field `indexes`) or the range (`range`) is past the
    /// job's `total` items.
    OutOfRange {
        field: &'static str,
        index: u32,
        total: u64,
    },
}

impl From<CancelRefusal> for FieldViolation {
    /// An out-of-range selection as the caller reads it (a refused state
    /// is a [`Refusal`], not a bad field).
    fn from(refusal: CancelRefusal) -> FieldViolation {
        match refusal {
            CancelRefusal::OutOfRange {
                field,
                index,
                total,
            } => FieldViolation::new(
                field,
                format!(
                    "names item {index}, but the job holds {total} items (indexes 0 to {})",
                    total.saturating_sub(1)
                ),
            ),
            CancelRefusal::NotCancellable(state) => {
                FieldViolation::new("job_id", Refusal::ItemsNotCancellable(state).to_string())
            }
        }
    }
}

impl ItemSelection {
    /// Checks `input`: exactly one of indexes and range, at most
    /// [`MAX_CANCEL_INDEXES`] indexes, a range that does not end before it
    /// starts, and only the pending and running states.
    pub fn parse(input: NewSelection) -> Result<ItemSelection, Vec<FieldViolation>> {
        let mut bad = Vec::new();
        let which = match (input.indexes.is_empty(), input.range) {
            (false, Some(_)) => {
                bad.push(FieldViolation::new(
                    "range",
                    "is given with indexes: name the items by indexes or by range, not both",
                ));
                None
            }
            (true, None) => {
                bad.push(FieldViolation::new(
                    "indexes",
                    "is empty and no range is given: name the items to cancel by indexes or by \
                     range",
                ));
                None
            }
            (false, None) if input.indexes.len() > MAX_CANCEL_INDEXES => {
                bad.push(FieldViolation::new(
                    "indexes",
                    format!(
                        "names {} items; one call may name at most {MAX_CANCEL_INDEXES} (use a \
                         range, or more calls)",
                        input.indexes.len()
                    ),
                ));
                None
            }
            (false, None) => {
                let mut indexes = input.indexes;
                indexes.sort_unstable();
                indexes.dedup();
                Some(Which::Indexes(indexes))
            }
            (true, Some((first, last))) if last < first => {
                bad.push(FieldViolation::new(
                    "range",
                    format!("ends ({last}) before it starts ({first})"),
                ));
                None
            }
            (true, Some((first, last))) => Some(Which::Range { first, last }),
        };
        let mut states = Vec::new();
        for (i, state) in input.states.iter().enumerate() {
            match state {
                ItemState::Pending | ItemState::Running => {
                    if !states.contains(state) {
                        states.push(*state);
                    }
                }
                other => bad.push(FieldViolation::new(
                    format!("states[{i}]"),
                    format!(
                        "is {}; only pending and running items can be cancelled",
                        format!("{other:?}").to_lowercase()
                    ),
                )),
            }
        }
        if states.is_empty() {
            states = vec![ItemState::Pending, ItemState::Running];
        }
        match which {
            Some(which) if bad.is_empty() => Ok(ItemSelection { which, states }),
            _ => Err(bad),
        }
    }

    /// The lowest and highest index the selection names.
    pub fn bounds(&self) -> (u32, u32) {
        match &self.which {
            Which::Indexes(indexes) => (indexes[0], indexes[indexes.len() - 1]),
            Which::Range { first, last } => (*first, *last),
        }
    }

    /// The named indexes, or none for a range (every index of
    /// [`ItemSelection::bounds`]).
    pub fn indexes(&self) -> Option<&[u32]> {
        match &self.which {
            Which::Indexes(indexes) => Some(indexes),
            Which::Range { .. } => None,
        }
    }

    /// The `items.state` codes of the states chosen.
    pub fn state_codes(&self) -> Vec<i16> {
        self.states.iter().map(|s| s.code()).collect()
    }

    /// Whether a job in `state` that holds `total` items takes the
    /// selection: decided here for both stores, under the job's lock.
    pub fn check(&self, state: JobState, total: u64) -> Result<(), CancelRefusal> {
        items_cancellable(state).map_err(|_| CancelRefusal::NotCancellable(state))?;
        let (_, last) = self.bounds();
        if u64::from(last) >= total {
            let field = match self.which {
                Which::Indexes(_) => "indexes",
                Which::Range { .. } => "range",
            };
            return Err(CancelRefusal::OutOfRange {
                field,
                index: last,
                total,
            });
        }
        Ok(())
    }
}

/// The items one call ended, sorted as its answer and the owner need
/// them: both stores build it from the rows they ended.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EndedItems {
    /// Every item the call cancelled, ascending.
    pub cancelled: Vec<u32>,
    /// Those that were running: their attempts are to be interrupted.
    pub interrupted: Vec<u32>,
    /// Those that were pending with a retry's wait: nothing is to be
    /// claimed for them.
    pub waited: Vec<u32>,
}

impl EndedItems {
    /// From each ended item, ascending: its index, whether it was running,
    /// and whether it waited for a retry.
    pub fn of(items: impl IntoIterator<Item = (u32, bool, bool)>) -> EndedItems {
        let mut ended = EndedItems::default();
        for (index, running, waited) in items {
            ended.cancelled.push(index);
            if running {
                ended.interrupted.push(index);
            } else if waited {
                ended.waited.push(index);
            }
        }
        ended
    }
}

/// The event of a call that cancelled `cancelled` (ascending); none when
/// it cancelled nothing (no event then).
pub fn cancelled_event(
    cancelled: &[u32],
    reason: Option<&str>,
    requested_by: Option<&str>,
) -> Option<EventBody> {
    let (first, last) = (*cancelled.first()?, *cancelled.last()?);
    Some(EventBody::ItemsCancelled {
        count: cancelled.len() as u32,
        first,
        last,
        reason: reason.map(String::from),
        requested_by: requested_by.map(String::from),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ended_items_are_sorted_by_what_they_were() {
        let ended = EndedItems::of([(1, false, false), (3, true, false), (4, false, true)]);
        assert_eq!(ended.cancelled, [1, 3, 4]);
        assert_eq!(ended.interrupted, [3]);
        assert_eq!(ended.waited, [4]);
        assert_eq!(EndedItems::of([]), EndedItems::default());
    }

    fn parse(
        indexes: Vec<u32>,
        range: Option<(u32, u32)>,
        states: Vec<ItemState>,
    ) -> Result<ItemSelection, Vec<FieldViolation>> {
        ItemSelection::parse(NewSelection {
            indexes,
            range,
            states,
        })
    }

    fn fields(r: Result<ItemSelection, Vec<FieldViolation>>) -> Vec<String> {
        r.unwrap_err().into_iter().map(|v| v.field).collect()
    }

    #[test]
    fn a_selection_names_its_items_one_way() {
        let s = parse(vec![7, 2, 7, 4], None, vec![]).unwrap();
        assert_eq!(s.which, Which::Indexes(vec![2, 4, 7]));
        assert_eq!(s.states, [ItemState::Pending, ItemState::Running]);
        assert_eq!(s.bounds(), (2, 7));
        assert_eq!(s.indexes(), Some(&[2, 4, 7][..]));
        let s = parse(vec![], Some((3, 3)), vec![ItemState::Running]).unwrap();
        assert_eq!((s.bounds(), s.indexes()), ((3, 3), None));
        assert_eq!(s.state_codes(), [ItemState::Running.code()]);
        assert_eq!(fields(parse(vec![1], Some((0, 2)), vec![])), ["range"]);
        assert_eq!(fields(parse(vec![], None, vec![])), ["indexes"]);
        assert_eq!(fields(parse(vec![], Some((5, 4)), vec![])), ["range"]);
        let many = vec![0; MAX_CANCEL_INDEXES + 1];
        assert_eq!(fields(parse(many, None, vec![])), ["indexes"]);
        assert!(parse(vec![0; MAX_CANCEL_INDEXES], None, vec![]).is_ok());
        assert_eq!(
            fields(parse(
                vec![1],
                None,
                vec![ItemState::Pending, ItemState::Failed, ItemState::Cancelled]
            )),
            ["states[1]", "states[2]"]
        );
    }

    /// Every job state, within the job's items or past them: whether a
    /// call is taken, decided without a store.
    #[test]
    fn a_job_takes_a_selection_while_it_runs_within_its_items() {
        let indexes = parse(vec![1, 4], None, vec![]).unwrap();
        let range = parse(vec![], Some((2, 4)), vec![]).unwrap();
        for state in JobState::ALL {
            let takes = matches!(
                state,
                JobState::Running | JobState::Pausing | JobState::Paused
            );
            for s in [&indexes, &range] {
                if !takes {
                    assert_eq!(s.check(state, 5), Err(CancelRefusal::NotCancellable(state)));
                    // The state is refused first, whatever the items.
                    assert_eq!(s.check(state, 1), Err(CancelRefusal::NotCancellable(state)));
                    continue;
                }
                assert_eq!(s.check(state, 5), Ok(()), "{state}");
            }
            if takes {
                assert_eq!(
                    indexes.check(state, 4),
                    Err(CancelRefusal::OutOfRange {
                        field: "indexes",
                        index: 4,
                        total: 4
                    })
                );
                assert_eq!(
                    range.check(state, 3),
                    Err(CancelRefusal::OutOfRange {
                        field: "range",
                        index: 4,
                        total: 3
                    })
                );
            }
        }
        let v = FieldViolation::from(CancelRefusal::OutOfRange {
            field: "range",
            index: 9,
            total: 3,
        });
        assert_eq!(v.field, "range");
        assert!(v.description.contains("holds 3 items"), "{}", v.description);
    }

    #[test]
    fn a_call_that_cancels_nothing_has_no_event() {
        assert_eq!(cancelled_event(&[], None, None), None);
        assert_eq!(
            cancelled_event(&[3, 5, 9], Some("not needed"), Some("ci")),
            Some(EventBody::ItemsCancelled {
                count: 3,
                first: 3,
                last: 9,
                reason: Some("not needed".into()),
                requested_by: Some("ci".into()),
            })
        );
    }
}

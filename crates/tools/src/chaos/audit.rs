//! Checking a chaos run: what the executor saw (its execution log) against
//! what the store recorded, around every fault.
//!
//! The execution log has one line per event, appended by every execution:
//! `start <index> <attempt> <from-step>` and `end <index> <attempt>`. At each
//! fault that restarts the server, the runner notes how long the log was
//! and which checkpoint the store held for every unfinished item. From
//! that, a re-execution is legitimate only if a restart separates it from
//! the item's previous execution, the item was not recorded as done at
//! that restart, and it starts from the checkpoint the store held then.

use std::collections::{BTreeMap, HashMap};

/// One line of the execution log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogLine {
    Start { index: u32, attempt: u32, from: u32 },
    End { index: u32 },
}

pub fn parse_log(text: &str) -> Vec<LogLine> {
    text.lines()
        .filter_map(|line| {
            let parts: Vec<&str> = line.split_whitespace().collect();
            match parts.as_slice() {
                ["start", i, a, f] => Some(LogLine::Start {
                    index: i.parse().ok()?,
                    attempt: a.parse().ok()?,
                    from: f.parse().ok()?,
                }),
                ["end", i, _] => Some(LogLine::End {
                    index: i.parse().ok()?,
                }),
                _ => None,
            }
        })
        .collect()
}

/// What the store held at a server restart.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Lines in the execution log when the server went down.
    pub log_lines: usize,
    /// The checkpoint (as a step number) of every item not yet done.
    pub unfinished: HashMap<u32, u32>,
}

/// The executor-side figures of a run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecutionAudit {
    pub executions: u64,
    pub re_executions: u64,
    /// Re-executions that started exactly at the checkpoint the store held.
    pub resumed_from_checkpoint: u64,
    /// Re-executions no restart explains, or that ignored their checkpoint.
    pub unexplained: Vec<String>,
}

pub fn audit(log: &[LogLine], snapshots: &[Snapshot]) -> ExecutionAudit {
    let mut result = ExecutionAudit::default();
    // Per item: the log position of its previous start.
    let mut previous: BTreeMap<u32, usize> = BTreeMap::new();
    for (position, line) in log.iter().enumerate() {
        let LogLine::Start { index, from, .. } = line else {
            continue;
        };
        result.executions += 1;
        if let Some(&before) = previous.get(index) {
            result.re_executions += 1;
            // The last restart between the previous start and this one.
            let restart = snapshots
                .iter()
                .rev()
                .find(|s| s.log_lines > before && s.log_lines <= position);
            match restart.and_then(|s| s.unfinished.get(index).map(|c| (s, *c))) {
                Some((_, checkpoint)) if checkpoint == *from => {
                    result.resumed_from_checkpoint += 1;
                }
                Some((s, checkpoint)) => result.unexplained.push(format!(
                    "item {index} restarted at step {from}, but the store held step {checkpoint} \
                     at the restart after log line {}",
                    s.log_lines
                )),
                None => result.unexplained.push(format!(
                    "item {index} ran again (log line {position}) with no restart in between, \
                     or after it was recorded done"
                )),
            }
        }
        previous.insert(*index, position);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn start(index: u32, from: u32) -> LogLine {
        LogLine::Start {
            index,
            attempt: 1,
            from,
        }
    }

    #[test]
    fn re_executions_need_a_restart_and_their_checkpoint() {
        let log = vec![
            start(0, 0),
            start(1, 0),
            LogLine::End { index: 0 },
            // restart here (after 3 lines): item 1 was at step 2
            start(1, 2),
            LogLine::End { index: 1 },
            start(2, 0),
            start(2, 0), // no restart between: unexplained
        ];
        let snapshots = vec![Snapshot {
            log_lines: 3,
            unfinished: HashMap::from([(1, 2), (2, 0)]),
        }];
        let a = audit(&log, &snapshots);
        assert_eq!(
            (a.executions, a.re_executions, a.resumed_from_checkpoint),
            (5, 2, 1)
        );
        assert_eq!(a.unexplained.len(), 1, "{:?}", a.unexplained);

        // Restarting from an older checkpoint than the store held is wrong.
        let log = vec![start(7, 0), start(7, 1)];
        let snapshots = vec![Snapshot {
            log_lines: 1,
            unfinished: HashMap::from([(7, 3)]),
        }];
        assert_eq!(audit(&log, &snapshots).unexplained.len(), 1);
    }

    #[test]
    fn parses_the_log() {
        assert_eq!(
            parse_log("start 3 1 0\nend 3 1\ngarbage\n"),
            [start(3, 0), LogLine::End { index: 3 }]
        );
    }
}

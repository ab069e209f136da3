//! A history of concurrent client operations and a per-key checker for the single-writer,
//! increasing-values workload used by the migration tests.
//!
//! The workload: every key has exactly one writer, which writes strictly increasing integers
//! (`{"w": n}`) one write at a time; any task may read any key. Each operation is recorded with
//! its invoke and complete instants (read from one monotonic clock) and its outcome:
//!
//! - [`Outcome::Ok`]: the store acknowledged it (for a read: returned a value or "not found");
//! - [`Outcome::Fail`]: a definite failure (the write certainly did not happen: 4xx, 503, a
//!   connection that was never made);
//! - [`Outcome::Unknown`]: it may or may not have happened (504 `outcome_unknown`, a timeout or a
//!   transport error after the request was sent).
//!
//! Because a key has one sequential writer with increasing values, linearizability of a key
//! reduces to checks that need no search (see [`check`]): a read must see at least the newest
//! value whose write completed, or that another read already saw, before it began; it must only
//! see values whose writes could have happened (acknowledged or unknown) and were invoked before
//! it completed; and the key's final value must be its last acknowledged write or a later
//! unknown one. This module records and judges; it must not talk to the store.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// What an operation did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpKind {
    Write,
    Read,
}

/// How an operation ended, as the client could tell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Acknowledged by the store.
    Ok,
    /// Certainly not applied.
    Fail,
    /// May or may not have been applied.
    Unknown,
}

/// The value an operation wrote or a read observed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Observed {
    /// The key did not exist (a read's 404). Never used for writes.
    Missing,
    /// The integer `n` of `{"w": n}`.
    Value(u64),
    /// Something that is not a value of this workload (kept verbatim for the report).
    Garbage(String),
}

/// One recorded operation. Instants are offsets from the history's origin.
#[derive(Clone, Debug)]
pub struct Op {
    pub key: String,
    pub kind: OpKind,
    pub value: Observed,
    pub invoke_at: Duration,
    pub complete_at: Duration,
    pub outcome: Outcome,
}

/// A thread-safe recorder of operations, sharing one monotonic origin.
pub struct History {
    origin: Instant,
    ops: Mutex<Vec<Op>>,
}

impl Default for History {
    fn default() -> Self {
        Self::new()
    }
}

impl History {
    /// An empty history whose clock starts now.
    #[must_use]
    pub fn new() -> Self {
        Self {
            origin: Instant::now(),
            ops: Mutex::new(Vec::new()),
        }
    }

    /// The current instant on the history's clock; take it just before sending a request.
    #[must_use]
    pub fn now(&self) -> Duration {
        self.origin.elapsed()
    }

    /// Records a write of `value`, invoked at `invoke_at` and completing now.
    pub fn record_write(&self, key: &str, value: u64, invoke_at: Duration, outcome: Outcome) {
        self.push(Op {
            key: key.to_owned(),
            kind: OpKind::Write,
            value: Observed::Value(value),
            invoke_at,
            complete_at: self.now(),
            outcome,
        });
    }

    /// Records a read that observed `value`, invoked at `invoke_at` and completing now.
    pub fn record_read(&self, key: &str, value: Observed, invoke_at: Duration, outcome: Outcome) {
        self.push(Op {
            key: key.to_owned(),
            kind: OpKind::Read,
            value,
            invoke_at,
            complete_at: self.now(),
            outcome,
        });
    }

    /// Adds an operation as it is (tests build histories with chosen instants this way).
    pub fn push(&self, op: Op) {
        // A poisoned lock only means another recording task panicked; its ops are still valid.
        let mut ops = self
            .ops
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        ops.push(op);
    }

    /// A copy of every operation recorded so far.
    #[must_use]
    pub fn ops(&self) -> Vec<Op> {
        self.ops
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Checks the recorded operations against the final value of each key (see [`check`]).
    #[must_use]
    pub fn check(&self, finals: &BTreeMap<String, Observed>) -> CheckReport {
        check(&self.ops(), finals)
    }
}

/// One way a history breaks the workload's guarantees.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Violation {
    /// A read returned less than a value that was already visible when it began.
    StaleRead {
        key: String,
        read_invoke_at: Duration,
        observed: Observed,
        /// The newest value known visible before the read began.
        floor: u64,
    },
    /// A read returned a value no write with an acknowledged or unknown outcome wrote.
    NeverWritten { key: String, observed: Observed },
    /// A read returned a value whose write was invoked only after the read completed.
    ReadFromFuture {
        key: String,
        value: u64,
        read_complete_at: Duration,
        write_invoke_at: Duration,
    },
    /// The key's final value is older than its last acknowledged write (or missing).
    LostWrite {
        key: String,
        last_acknowledged: u64,
        final_value: Observed,
    },
    /// The key's final value was never written (or was written only by a definitely failed write).
    FinalNeverWritten { key: String, final_value: Observed },
    /// A key written during the run has no final value to check against.
    NoFinalValue { key: String },
    /// The workload broke its own rule (values of a key not strictly increasing): the
    /// checker's conclusions about this key would be meaningless.
    BadWorkload { key: String, reason: String },
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::StaleRead {
                key,
                read_invoke_at,
                observed,
                floor,
            } => write!(
                f,
                "stale read of {key}: read invoked at {read_invoke_at:?} saw {observed:?} although \
                 {floor} was already visible"
            ),
            Self::NeverWritten { key, observed } => {
                write!(
                    f,
                    "read of {key} saw {observed:?}, which no write could have written"
                )
            }
            Self::ReadFromFuture {
                key,
                value,
                read_complete_at,
                write_invoke_at,
            } => write!(
                f,
                "read of {key} completed at {read_complete_at:?} saw {value}, whose write was \
                 invoked later, at {write_invoke_at:?}"
            ),
            Self::LostWrite {
                key,
                last_acknowledged,
                final_value,
            } => write!(
                f,
                "lost write of {key}: last acknowledged {last_acknowledged}, final value \
                 {final_value:?}"
            ),
            Self::FinalNeverWritten { key, final_value } => write!(
                f,
                "final value of {key} is {final_value:?}, which no write could have written"
            ),
            Self::NoFinalValue { key } => write!(f, "no final value was read for {key}"),
            Self::BadWorkload { key, reason } => write!(f, "workload error on {key}: {reason}"),
        }
    }
}

/// What [`check`] found, with counts that show the history was not empty.
#[derive(Clone, Debug, Default)]
pub struct CheckReport {
    pub violations: Vec<Violation>,
    pub keys: usize,
    pub writes_ok: usize,
    pub writes_failed: usize,
    pub writes_unknown: usize,
    /// Reads with an acknowledged answer (the only ones checked).
    pub reads_checked: usize,
    pub reads_not_answered: usize,
    /// The longest acknowledged write, invoke to complete. The admin holds a write to a moving
    /// partition and retries it at the new owner, so a move's write pause shows up here.
    pub max_ok_write_latency: Duration,
}

impl CheckReport {
    /// True when no violation was found.
    #[must_use]
    pub fn is_ok(&self) -> bool {
        self.violations.is_empty()
    }

    /// A short human summary: counts, figures and the first `max_listed` violations.
    #[must_use]
    pub fn summary(&self, max_listed: usize) -> String {
        let mut s = format!(
            "{} keys; writes ok {} / failed {} / unknown {}; reads checked {} (unanswered {}); \
             longest acknowledged write {:?}; {} violations",
            self.keys,
            self.writes_ok,
            self.writes_failed,
            self.writes_unknown,
            self.reads_checked,
            self.reads_not_answered,
            self.max_ok_write_latency,
            self.violations.len()
        );
        for v in self.violations.iter().take(max_listed) {
            s.push_str("\n  ");
            s.push_str(&v.to_string());
        }
        if self.violations.len() > max_listed {
            s.push_str(&format!(
                "\n  ... and {} more",
                self.violations.len() - max_listed
            ));
        }
        s
    }
}

/// Checks a history of the single-writer, increasing-values workload, key by key.
///
/// `finals` holds each key's value read after all load stopped; every key with a write in
/// `ops` must have one. Per key, with W the writes and R the acknowledged reads:
/// - a read that observed `n` needs a write of `n` whose outcome is not `Fail`, invoked before
///   the read completed;
/// - a read must observe at least the floor at its invoke: the largest value among writes
///   acknowledged and reads answered before that instant (missing counts as below every value);
/// - the final value must be the last acknowledged write, or an unknown write after it.
#[must_use]
pub fn check(ops: &[Op], finals: &BTreeMap<String, Observed>) -> CheckReport {
    let mut report = CheckReport::default();
    let mut by_key: BTreeMap<&str, Vec<&Op>> = BTreeMap::new();
    for op in ops {
        by_key.entry(op.key.as_str()).or_default().push(op);
    }
    report.keys = by_key.len();
    for (key, key_ops) in by_key {
        check_key(key, &key_ops, finals.get(key), &mut report);
    }
    report
}

/// The checks of [`check`] for one key.
fn check_key(key: &str, ops: &[&Op], final_value: Option<&Observed>, report: &mut CheckReport) {
    let mut writes: Vec<(&Op, u64)> = Vec::new();
    let mut reads: Vec<&Op> = Vec::new();
    for op in ops {
        match (op.kind, &op.value) {
            (OpKind::Write, Observed::Value(n)) => writes.push((op, *n)),
            (OpKind::Write, other) => report.violations.push(Violation::BadWorkload {
                key: key.to_owned(),
                reason: format!("a write recorded with value {other:?}"),
            }),
            (OpKind::Read, _) if op.outcome == Outcome::Ok => reads.push(op),
            (OpKind::Read, _) => report.reads_not_answered += 1,
        }
    }
    writes.sort_by_key(|(op, _)| op.invoke_at);
    for pair in writes.windows(2) {
        let ((a, va), (b, vb)) = (pair[0], pair[1]);
        if vb <= va || b.invoke_at < a.complete_at {
            report.violations.push(Violation::BadWorkload {
                key: key.to_owned(),
                reason: format!(
                    "writes must be sequential with increasing values: {va} ({:?}..{:?}) then \
                     {vb} ({:?}..{:?})",
                    a.invoke_at, a.complete_at, b.invoke_at, b.complete_at
                ),
            });
            return;
        }
    }
    tally_writes(&writes, report);

    // Values a read may have seen: written by a write that did not definitely fail.
    let possible: BTreeMap<u64, &Op> = writes
        .iter()
        .filter(|(op, _)| op.outcome != Outcome::Fail)
        .map(|(op, v)| (*v, *op))
        .collect();

    // Events that make a value visible, by completion instant: acknowledged writes and answered
    // reads. The floor at instant t is the largest value among those completed before t.
    let mut visible: Vec<(Duration, u64)> = writes
        .iter()
        .filter(|(op, _)| op.outcome == Outcome::Ok)
        .map(|(op, v)| (op.complete_at, *v))
        .collect();
    visible.extend(reads.iter().filter_map(|op| match op.value {
        Observed::Value(n) => Some((op.complete_at, n)),
        _ => None,
    }));
    visible.sort_unstable();
    let mut prefix_max: Vec<u64> = Vec::with_capacity(visible.len());
    for (_, v) in &visible {
        let prev = prefix_max.last().copied().unwrap_or(0);
        prefix_max.push(prev.max(*v));
    }
    let floor_before = |t: Duration| -> Option<u64> {
        let n = visible.partition_point(|(at, _)| *at < t);
        n.checked_sub(1).map(|i| prefix_max[i])
    };

    for read in &reads {
        report.reads_checked += 1;
        match &read.value {
            Observed::Value(n) => match possible.get(n) {
                None => report.violations.push(Violation::NeverWritten {
                    key: key.to_owned(),
                    observed: read.value.clone(),
                }),
                Some(w) if w.invoke_at > read.complete_at => {
                    report.violations.push(Violation::ReadFromFuture {
                        key: key.to_owned(),
                        value: *n,
                        read_complete_at: read.complete_at,
                        write_invoke_at: w.invoke_at,
                    });
                }
                Some(_) => {}
            },
            Observed::Garbage(_) => report.violations.push(Violation::NeverWritten {
                key: key.to_owned(),
                observed: read.value.clone(),
            }),
            Observed::Missing => {}
        }
        if let Some(floor) = floor_before(read.invoke_at) {
            let below = match read.value {
                Observed::Value(n) => n < floor,
                Observed::Missing => true,
                // Already reported as never written.
                Observed::Garbage(_) => false,
            };
            if below {
                report.violations.push(Violation::StaleRead {
                    key: key.to_owned(),
                    read_invoke_at: read.invoke_at,
                    observed: read.value.clone(),
                    floor,
                });
            }
        }
    }

    check_final(key, &writes, &possible, final_value, report);
}

/// Counts write outcomes and the longest acknowledged write of one key.
fn tally_writes(writes: &[(&Op, u64)], report: &mut CheckReport) {
    for (op, _) in writes {
        match op.outcome {
            Outcome::Ok => {
                report.writes_ok += 1;
                report.max_ok_write_latency = report
                    .max_ok_write_latency
                    .max(op.complete_at.saturating_sub(op.invoke_at));
            }
            Outcome::Fail => report.writes_failed += 1,
            Outcome::Unknown => report.writes_unknown += 1,
        }
    }
}

/// The final value must be the last acknowledged write, or an unknown-outcome write after it.
fn check_final(
    key: &str,
    writes: &[(&Op, u64)],
    possible: &BTreeMap<u64, &Op>,
    final_value: Option<&Observed>,
    report: &mut CheckReport,
) {
    if writes.is_empty() {
        return;
    }
    let Some(final_value) = final_value else {
        report.violations.push(Violation::NoFinalValue {
            key: key.to_owned(),
        });
        return;
    };
    let last_ok = writes
        .iter()
        .filter(|(op, _)| op.outcome == Outcome::Ok)
        .map(|(_, v)| *v)
        .max();
    match final_value {
        Observed::Value(n) if !possible.contains_key(n) => {
            report.violations.push(Violation::FinalNeverWritten {
                key: key.to_owned(),
                final_value: final_value.clone(),
            });
        }
        Observed::Garbage(_) => report.violations.push(Violation::FinalNeverWritten {
            key: key.to_owned(),
            final_value: final_value.clone(),
        }),
        _ => {
            let final_n = match final_value {
                Observed::Value(n) => Some(*n),
                _ => None,
            };
            if let Some(last) = last_ok
                && final_n.is_none_or(|n| n < last)
            {
                report.violations.push(Violation::LostWrite {
                    key: key.to_owned(),
                    last_acknowledged: last,
                    final_value: final_value.clone(),
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn write(key: &str, value: u64, from: u64, to: u64, outcome: Outcome) -> Op {
        Op {
            key: key.into(),
            kind: OpKind::Write,
            value: Observed::Value(value),
            invoke_at: ms(from),
            complete_at: ms(to),
            outcome,
        }
    }

    fn read(key: &str, value: Observed, from: u64, to: u64) -> Op {
        Op {
            key: key.into(),
            kind: OpKind::Read,
            value,
            invoke_at: ms(from),
            complete_at: ms(to),
            outcome: Outcome::Ok,
        }
    }

    fn finals(pairs: &[(&str, Observed)]) -> BTreeMap<String, Observed> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect()
    }

    use Observed::{Missing, Value};

    /// A valid history with concurrent reads, a definite failure, an unknown write that took
    /// effect and one that did not, and unanswered reads is accepted.
    #[test]
    fn accepts_a_valid_history() {
        let ops = vec![
            read("a", Missing, 0, 5),
            write("a", 1, 1, 10, Outcome::Ok),
            // Concurrent with the write of 1: may see either.
            read("a", Missing, 2, 9),
            read("a", Value(1), 3, 8),
            read("a", Value(1), 11, 12),
            write("a", 2, 13, 20, Outcome::Fail),
            read("a", Value(1), 21, 22),
            write("a", 3, 23, 30, Outcome::Unknown),
            // The unknown write of 3 may land late: reads may still see 1 until one sees 3.
            read("a", Value(1), 31, 32),
            read("a", Value(3), 33, 34),
            write("a", 4, 35, 40, Outcome::Ok),
            read("a", Value(4), 36, 41),
            Op {
                outcome: Outcome::Unknown,
                ..read("a", Missing, 50, 60)
            },
            write("b", 1, 0, 3, Outcome::Ok),
            write("b", 2, 4, 9, Outcome::Unknown),
            read("b", Value(1), 10, 11),
            // An unknown write of c that never took effect: the key may stay missing.
            write("c", 7, 0, 3, Outcome::Unknown),
            read("c", Missing, 4, 5),
        ];
        let report = check(
            &ops,
            &finals(&[("a", Value(4)), ("b", Value(2)), ("c", Missing)]),
        );
        assert!(report.is_ok(), "{}", report.summary(10));
        assert_eq!(report.keys, 3);
        assert_eq!(report.writes_ok, 3);
        assert_eq!(report.writes_failed, 1);
        assert_eq!(report.writes_unknown, 3);
        assert_eq!(report.reads_checked, 10);
        assert_eq!(report.reads_not_answered, 1);
        assert_eq!(report.max_ok_write_latency, ms(9));

        // The final value of b may also be its last acknowledged one (the unknown write lost).
        let report = check(
            &ops,
            &finals(&[("a", Value(4)), ("b", Value(1)), ("c", Value(7))]),
        );
        assert!(report.is_ok(), "{}", report.summary(10));
    }

    /// A read that began after a write completed and returns an older value, or "not found", is a
    /// stale read; so is one that goes back below what an earlier read already returned.
    #[test]
    fn catches_stale_reads() {
        let ops = vec![
            write("a", 1, 0, 5, Outcome::Ok),
            write("a", 2, 6, 10, Outcome::Ok),
            read("a", Value(1), 11, 12),
            write("b", 1, 0, 5, Outcome::Ok),
            read("b", Missing, 6, 7),
            // c: an unknown write seen by one read must not be "unseen" by a later read.
            write("c", 1, 0, 2, Outcome::Ok),
            write("c", 2, 3, 4, Outcome::Unknown),
            read("c", Value(2), 5, 6),
            read("c", Value(1), 7, 8),
        ];
        let report = check(
            &ops,
            &finals(&[("a", Value(2)), ("b", Value(1)), ("c", Value(2))]),
        );
        let stale: Vec<&str> = report
            .violations
            .iter()
            .filter_map(|v| match v {
                Violation::StaleRead { key, .. } => Some(key.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(stale, ["a", "b", "c"], "{}", report.summary(10));
        assert_eq!(report.violations.len(), 3, "{}", report.summary(10));
    }

    /// A final value older than the last acknowledged write, or a missing key that was written,
    /// is a lost write; a key with writes but no final value is reported too.
    #[test]
    fn catches_lost_writes() {
        let ops = vec![
            write("a", 1, 0, 5, Outcome::Ok),
            write("a", 2, 6, 10, Outcome::Ok),
            write("a", 3, 11, 12, Outcome::Unknown),
            write("b", 1, 0, 5, Outcome::Ok),
            write("c", 1, 0, 5, Outcome::Ok),
        ];
        let report = check(&ops, &finals(&[("a", Value(1)), ("b", Missing)]));
        assert_eq!(
            report.violations,
            vec![
                Violation::LostWrite {
                    key: "a".into(),
                    last_acknowledged: 2,
                    final_value: Value(1),
                },
                Violation::LostWrite {
                    key: "b".into(),
                    last_acknowledged: 1,
                    final_value: Missing,
                },
                Violation::NoFinalValue { key: "c".into() },
            ]
        );
    }

    /// A read (or final value) of a value nobody wrote, of one whose write definitely failed,
    /// of garbage, or of a value whose write began only after the read ended, is caught.
    #[test]
    fn catches_reads_of_values_never_written() {
        let ops = vec![
            write("a", 1, 0, 5, Outcome::Ok),
            read("a", Value(9), 6, 7),
            write("b", 1, 0, 5, Outcome::Ok),
            write("b", 2, 6, 8, Outcome::Fail),
            read("b", Value(2), 9, 10),
            write("c", 1, 0, 5, Outcome::Ok),
            read("c", Observed::Garbage("\"\"".into()), 6, 7),
            write("d", 1, 0, 5, Outcome::Ok),
            read("d", Value(2), 6, 7),
            write("d", 2, 8, 9, Outcome::Ok),
        ];
        let report = check(
            &ops,
            &finals(&[
                ("a", Value(1)),
                ("b", Value(2)),
                ("c", Value(1)),
                ("d", Value(2)),
            ]),
        );
        let mut kinds: Vec<String> = report
            .violations
            .iter()
            .map(|v| match v {
                Violation::NeverWritten { key, .. } => format!("never:{key}"),
                Violation::FinalNeverWritten { key, .. } => format!("final-never:{key}"),
                Violation::ReadFromFuture { key, .. } => format!("future:{key}"),
                other => format!("other:{other}"),
            })
            .collect();
        kinds.sort();
        assert_eq!(
            kinds,
            ["final-never:b", "future:d", "never:a", "never:b", "never:c"],
            "{}",
            report.summary(10)
        );
    }

    /// A workload that breaks its own single-writer rule is flagged rather than judged.
    #[test]
    fn flags_a_workload_that_breaks_its_rules() {
        let ops = vec![
            write("a", 2, 0, 5, Outcome::Ok),
            write("a", 1, 6, 10, Outcome::Ok),
        ];
        let report = check(&ops, &finals(&[("a", Value(1))]));
        assert!(
            matches!(
                report.violations.as_slice(),
                [Violation::BadWorkload { .. }]
            ),
            "{}",
            report.summary(10)
        );
    }

    /// The recorder keeps every operation with ordered instants from its own clock.
    #[test]
    fn recorder_keeps_operations_in_clock_order() {
        let history = History::new();
        let t0 = history.now();
        history.record_write("k", 1, t0, Outcome::Ok);
        let t1 = history.now();
        history.record_read("k", Value(1), t1, Outcome::Ok);
        let ops = history.ops();
        assert_eq!(ops.len(), 2);
        assert!(ops[0].invoke_at <= ops[0].complete_at);
        assert!(ops[0].complete_at <= ops[1].invoke_at);
        assert!(history.check(&finals(&[("k", Value(1))])).is_ok());
    }
}

//! Per-fault figures of a chaos run, read off the recorded history: for each kind of fault,
//! over every window from its injection to its heal, the availability (acknowledged operations
//! among those invoked in the window), the acknowledged operations per second, the time from
//! the injection to the first acknowledged write, the longest stretch without an acknowledged
//! write (the longest write pause) and, for a fault that takes a leader away, the time until
//! another replica of its cluster reported itself leader (watched by the run during the hold).

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use crate::linearizability::{Call, Operation, Outcome};

/// One fault's window on the recorder's clock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FaultWindow {
    pub kind: &'static str,
    pub start: Duration,
    pub end: Duration,
    /// For a fault that takes a leader away, whether and when another replica took over.
    pub new_leader: NewLeader,
}

/// What the run saw of a new leader during one fault's hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NewLeader {
    /// The fault does not take a leader away: nothing watched.
    NotWatched,
    /// Another replica of the cluster reported itself leader this long after the injection.
    After(Duration),
    /// None did within the hold.
    NoneWithinHold,
}

/// The figures of one kind of fault over all its windows.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FaultFigures {
    pub windows: usize,
    /// Time under this kind of fault, all windows together.
    pub under_fault: Duration,
    pub ops_invoked: usize,
    pub ops_ok: usize,
    /// Slowest first acknowledged write after an injection (the window's length if none).
    pub worst_first_write: Duration,
    /// Median over the windows of the first acknowledged write after the injection.
    pub median_first_write: Duration,
    /// Longest stretch inside a window with no acknowledged write.
    pub longest_write_pause: Duration,
    /// Median and slowest time to a new leader over the windows that saw one.
    pub new_leader: Option<(Duration, Duration)>,
    /// Windows of a leader-taking fault in which no new leader was seen within the hold.
    pub no_new_leader: usize,
}

impl FaultFigures {
    /// Acknowledged among the operations invoked under the fault.
    #[must_use]
    pub fn availability(&self) -> f64 {
        if self.ops_invoked == 0 {
            return 1.0;
        }
        #[allow(clippy::cast_precision_loss)]
        let ratio = self.ops_ok as f64 / self.ops_invoked as f64;
        ratio
    }

    /// Acknowledged operations per second under the fault.
    #[must_use]
    pub fn ok_per_second(&self) -> f64 {
        let secs = self.under_fault.as_secs_f64();
        #[allow(clippy::cast_precision_loss)]
        let rate = if secs > 0.0 {
            self.ops_ok as f64 / secs
        } else {
            0.0
        };
        rate
    }
}

impl fmt::Display for FaultFigures {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} windows, {:.1?} under fault: availability {:.1}%, {:.0} ok ops/s, first write \
             after {:.2?} (median) / {:.2?} (worst), longest write pause {:.2?}",
            self.windows,
            self.under_fault,
            self.availability() * 100.0,
            self.ok_per_second(),
            self.median_first_write,
            self.worst_first_write,
            self.longest_write_pause
        )?;
        if let Some((median, worst)) = self.new_leader {
            write!(
                f,
                ", new leader after {median:.2?} (median) / {worst:.2?} (worst)"
            )?;
        }
        if self.no_new_leader > 0 {
            write!(f, ", {} windows without a new leader", self.no_new_leader)?;
        }
        Ok(())
    }
}

fn is_write<V>(op: &Operation<V>) -> bool {
    !matches!(op.call, Call::Get)
}

/// The figures per kind of fault (by name) for `windows` over `ops`.
#[must_use]
pub fn per_fault<V>(
    windows: &[FaultWindow],
    ops: &[Operation<V>],
) -> BTreeMap<String, FaultFigures> {
    let mut ok_writes: Vec<Duration> = ops
        .iter()
        .filter(|op| is_write(op) && matches!(op.outcome, Outcome::Ok(_)))
        .map(|op| op.complete_at)
        .collect();
    ok_writes.sort_unstable();
    let mut firsts: BTreeMap<&str, Vec<Duration>> = BTreeMap::new();
    let mut elections: BTreeMap<&str, Vec<Duration>> = BTreeMap::new();
    let mut out: BTreeMap<String, FaultFigures> = BTreeMap::new();
    for w in windows.iter().filter(|w| w.end > w.start) {
        let figures = out.entry(w.kind.to_owned()).or_default();
        figures.windows += 1;
        figures.under_fault += w.end - w.start;
        match w.new_leader {
            NewLeader::After(after) => elections.entry(w.kind).or_default().push(after),
            NewLeader::NoneWithinHold => figures.no_new_leader += 1,
            NewLeader::NotWatched => {}
        }
        for op in ops
            .iter()
            .filter(|op| op.invoke_at >= w.start && op.invoke_at < w.end)
        {
            figures.ops_invoked += 1;
            if matches!(op.outcome, Outcome::Ok(_)) {
                figures.ops_ok += 1;
            }
        }
        // Acknowledged writes inside the window, bounded by its start and end.
        let inside: Vec<Duration> = ok_writes
            .iter()
            .copied()
            .filter(|t| *t >= w.start && *t <= w.end)
            .collect();
        let first = inside.first().map_or(w.end - w.start, |t| *t - w.start);
        firsts.entry(w.kind).or_default().push(first);
        figures.worst_first_write = figures.worst_first_write.max(first);
        let mut previous = w.start;
        for t in inside.iter().copied().chain(std::iter::once(w.end)) {
            figures.longest_write_pause = figures.longest_write_pause.max(t - previous);
            previous = t;
        }
    }
    for (kind, mut times) in firsts {
        times.sort_unstable();
        if let Some(figures) = out.get_mut(kind) {
            figures.median_first_write = times[times.len() / 2];
        }
    }
    for (kind, mut times) in elections {
        times.sort_unstable();
        if let (Some(figures), Some(worst)) = (out.get_mut(kind), times.last()) {
            figures.new_leader = Some((times[times.len() / 2], *worst));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::linearizability::Reply;

    fn op(call: Call<u64>, invoke_ms: u64, complete_ms: u64, ok: bool) -> Operation<u64> {
        Operation {
            key: "k".into(),
            call,
            invoke_at: Duration::from_millis(invoke_ms),
            complete_at: Duration::from_millis(complete_ms),
            outcome: if ok {
                Outcome::Ok(Reply::Written { version: None })
            } else {
                Outcome::Fail
            },
        }
    }

    fn put(invoke_ms: u64, complete_ms: u64, ok: bool) -> Operation<u64> {
        op(
            Call::Put {
                value: 1,
                cas: None,
            },
            invoke_ms,
            complete_ms,
            ok,
        )
    }

    /// Within a window: availability over invoked ops, first write and longest pause bounded
    /// by the window, ops outside ignored.
    #[test]
    fn figures_of_one_window() {
        let ops = vec![
            put(500, 600, true),    // before the window
            put(1000, 1900, false), // failed during the failover
            put(1900, 2300, true),  // first write, 1.3 s after the start
            put(2300, 2400, true),
            op(Call::Get, 2400, 2450, true),
            put(3500, 3600, true), // after the window
        ];
        let windows = [FaultWindow {
            kind: "kill_leader",
            start: Duration::from_millis(1000),
            end: Duration::from_millis(3000),
            new_leader: NewLeader::After(Duration::from_millis(1200)),
        }];
        let f = &per_fault(&windows, &ops)["kill_leader"];
        assert_eq!(f.windows, 1);
        assert_eq!((f.ops_invoked, f.ops_ok), (4, 3));
        assert_eq!(f.median_first_write, Duration::from_millis(1300));
        assert_eq!(f.worst_first_write, Duration::from_millis(1300));
        // 1000 → 2300 with no acknowledged write, then 2400 → 3000.
        assert_eq!(f.longest_write_pause, Duration::from_millis(1300));
        assert!((f.availability() - 0.75).abs() < 1e-9);
        assert!((f.ok_per_second() - 1.5).abs() < 1e-9);
        let one = Duration::from_millis(1200);
        assert_eq!((f.new_leader, f.no_new_leader), (Some((one, one)), 0));
    }

    /// A window with no acknowledged write counts its whole length as the pause.
    #[test]
    fn a_window_without_writes_is_one_pause() {
        let windows = [
            FaultWindow {
                kind: "pause",
                start: Duration::from_secs(1),
                end: Duration::from_secs(2),
                new_leader: NewLeader::NotWatched,
            },
            FaultWindow {
                kind: "pause",
                start: Duration::from_secs(5),
                end: Duration::from_secs(8),
                new_leader: NewLeader::NotWatched,
            },
        ];
        let f = &per_fault::<u64>(&windows, &[])["pause"];
        assert_eq!(
            (f.new_leader, f.no_new_leader),
            (None, 0),
            "not a leader fault"
        );
        assert_eq!(f.windows, 2);
        assert_eq!(f.longest_write_pause, Duration::from_secs(3));
        assert_eq!(f.worst_first_write, Duration::from_secs(3));
        assert_eq!(f.median_first_write, Duration::from_secs(3));
    }
}

//! A general per-key linearizability checker for histories of put / get / delete / compare-and-set
//! against the store's HTTP API, in the style of Wing & Gong and Porcupine: a depth-first search
//! for a linearization, memoized on (set of operations already linearized, register state), with a
//! step budget so that a pathological history ends "inconclusive" instead of hanging. It judges a
//! recorded history; it must not talk to the store (recording is the workload's job).
//!
//! # The model: a register with "absent" and per-key versions
//!
//! Each key is checked on its own (linearizability is compositional, so a history is
//! linearizable exactly when every key's sub-history is). The model is the HTTP contract
//! (`docs/design.md#http-api` and `#versions`):
//!
//! - the state is *absent*, or *present* with a value and a version;
//! - a successful put gives the key a version strictly greater than every version the key ever
//!   had (also before a delete). The exact increment is not modelled: the store draws versions
//!   from a per-partition counter shared with other keys, so the contract only promises "strictly
//!   increasing". A put whose new version is not known (an unknown outcome, or a reply recorded
//!   without it) therefore leaves a version known only as "above some bound, and none of these
//!   values" until a later read or CAS pins it;
//! - `cas = Some(n)` compares versions: 0 means "only if absent", `n > 0` means "only if present
//!   with version `n`". A mismatch changes nothing and may report the current version (0 =
//!   absent);
//! - a get returns the value and (optionally) its version, or "not found"; a delete returns
//!   whether the key existed.
//!
//! # Outcomes
//!
//! - [`Outcome::Ok`]: the reply is known and must be explained by the linearization;
//! - [`Outcome::Fail`]: the operation certainly did not happen (a definite error): dropped;
//! - [`Outcome::Unknown`]: it may have taken effect at any instant after its invocation — also
//!   long after the client gave up — or never. Its recorded completion time is ignored and its
//!   reply is unconstrained. An unknown read is dropped (it changes nothing and told nothing).
//!
//! Real-time order: operation A precedes B when A completed strictly before B was invoked;
//! operations with equal instants are treated as concurrent (the clock's resolution cannot order
//! them, so the checker must not).
//!
//! # Search
//!
//! From a state, any pending operation not preceded by another pending acknowledged operation may
//! be linearized next, if the model allows its reply there. The search succeeds once every
//! acknowledged operation is linearized (pending unknown ones then "never happened"). An unknown
//! write is only ever linearized where it has an effect: leaving it pending admits everything
//! linearizing it as a no-op would. Each (linearized set, state) pair is expanded once. When no
//! linearization exists, the report gives the longest linearizable prefix found, the first
//! acknowledged operation that could not follow it and the operations concurrent with that one.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Default search budget of one key, in search states expanded. A state costs O(ops of the key)
/// time and about (ops/8 + size of a value) bytes of memo, so this bounds a key's check to
/// seconds and to memory in the tens of megabytes for keys of a few hundred operations.
pub const DEFAULT_MAX_STEPS_PER_KEY: u64 = 500_000;

/// Most operations listed as concurrent with the operation that could not be linearized.
const MAX_LISTED_CONCURRENT: usize = 16;

/// Most operations of the longest linearizable prefix listed in a violation (its tail).
const MAX_LISTED_PREFIX: usize = 8;

/// What a client asked for.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Call<V> {
    /// Read the key.
    Get,
    /// Write `value`; with `cas = Some(n)` only if the key's version is `n` (0 = only if absent).
    Put { value: V, cas: Option<u64> },
    /// Delete the key; with `cas = Some(n)` only if its version is `n` (0 = only if absent).
    Delete { cas: Option<u64> },
}

/// What the store answered to an acknowledged operation.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Reply<V> {
    /// A get found `value`, with its version when the recorder kept it.
    Found { value: V, version: Option<u64> },
    /// A get found no such key.
    NotFound,
    /// A put took effect, giving the key this version when the recorder kept it.
    Written { version: Option<u64> },
    /// A delete took effect; `deleted` says whether the key existed.
    Deleted { deleted: bool },
    /// A put or delete with `cas` did nothing because the version differed; `current` is the
    /// key's version as the store reported it (0 = absent), when the recorder kept it.
    CasMismatch { current: Option<u64> },
}

/// How an operation ended, as the client could tell.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome<V> {
    /// Acknowledged with this reply.
    Ok(Reply<V>),
    /// Certainly not applied.
    Fail,
    /// May have been applied, at any instant after its invocation, or never.
    Unknown,
}

/// One recorded operation. Instants are offsets from one monotonic origin shared by all clients.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Operation<V> {
    pub key: String,
    pub call: Call<V>,
    pub invoke_at: Duration,
    /// When the client got its answer or gave up (ignored for an unknown outcome).
    pub complete_at: Duration,
    pub outcome: Outcome<V>,
}

impl<V: fmt::Debug> fmt::Display for Operation<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.call {
            Call::Get => write!(f, "get")?,
            Call::Put { value, cas: None } => write!(f, "put({value:?})")?,
            Call::Put {
                value,
                cas: Some(c),
            } => write!(f, "put({value:?}, cas={c})")?,
            Call::Delete { cas: None } => write!(f, "delete")?,
            Call::Delete { cas: Some(c) } => write!(f, "delete(cas={c})")?,
        }
        write!(f, " [{:?}..", self.invoke_at)?;
        match &self.outcome {
            Outcome::Unknown => write!(f, "?] -> unknown"),
            Outcome::Fail => write!(f, "{:?}] -> fail", self.complete_at),
            Outcome::Ok(reply) => {
                write!(f, "{:?}] -> ", self.complete_at)?;
                match reply {
                    Reply::Found { value, version } => {
                        write!(f, "{value:?}")?;
                        if let Some(v) = version {
                            write!(f, " v{v}")?;
                        }
                        Ok(())
                    }
                    Reply::NotFound => write!(f, "not found"),
                    Reply::Written { version: Some(v) } => write!(f, "written v{v}"),
                    Reply::Written { version: None } => write!(f, "written"),
                    Reply::Deleted { deleted } => write!(f, "deleted={deleted}"),
                    Reply::CasMismatch { current: Some(v) } => {
                        write!(f, "cas mismatch (current v{v})")
                    }
                    Reply::CasMismatch { current: None } => write!(f, "cas mismatch"),
                }
            }
        }
    }
}

/// Limits of one check.
#[derive(Clone, Debug)]
pub struct CheckConfig {
    /// Search states one key may expand before its verdict is "inconclusive".
    pub max_steps_per_key: u64,
}

impl Default for CheckConfig {
    fn default() -> Self {
        Self {
            max_steps_per_key: DEFAULT_MAX_STEPS_PER_KEY,
        }
    }
}

/// A key whose history has no linearization, with the operations that show it.
#[derive(Clone, Debug)]
pub struct Violation<V> {
    pub key: String,
    /// The first acknowledged operation (by completion) that could not follow the longest
    /// linearizable prefix the search found.
    pub blocking: Operation<V>,
    /// Operations whose interval overlaps the blocking one's (unknown ones last until the end).
    pub concurrent: Vec<Operation<V>>,
    /// The last operations of that prefix, in linearization order.
    pub prefix_tail: Vec<Operation<V>>,
    /// Operations (acknowledged and unknown) in that prefix.
    pub prefix_len: usize,
    /// The register after that prefix, for a person.
    pub state_after_prefix: String,
    /// Acknowledged operations of the key.
    pub acknowledged: usize,
    /// Search states expanded before the search ran out of options.
    pub steps: u64,
}

impl<V: fmt::Debug> fmt::Display for Violation<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "key {:?} is not linearizable: after the longest linearizable prefix ({} ops, state \
             {}), {} cannot be placed; {} acknowledged ops, {} search steps",
            self.key,
            self.prefix_len,
            self.state_after_prefix,
            self.blocking,
            self.acknowledged,
            self.steps
        )?;
        if !self.prefix_tail.is_empty() {
            write!(f, "\n    prefix ends with:")?;
            for op in &self.prefix_tail {
                write!(f, "\n      {op}")?;
            }
        }
        if !self.concurrent.is_empty() {
            write!(f, "\n    concurrent with it:")?;
            for op in &self.concurrent {
                write!(f, "\n      {op}")?;
            }
        }
        Ok(())
    }
}

/// A key whose search hit its step budget before finding a linearization or ruling one out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inconclusive {
    pub key: String,
    /// Operations of the key that took part in the search.
    pub ops: usize,
    pub steps: u64,
}

/// A key whose recorded operations do not make sense (a reply that does not fit its call, a
/// completion before the invocation): the recorder is wrong, so the key is not judged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Malformed {
    pub key: String,
    pub reason: String,
}

/// The verdict on one key.
#[derive(Clone, Debug)]
pub enum KeyVerdict<V> {
    Linearizable { steps: u64 },
    Violation(Box<Violation<V>>),
    Inconclusive(Inconclusive),
    Malformed(Malformed),
}

/// What [`check`] found, with figures that show what was checked.
#[derive(Clone, Debug)]
pub struct Report<V> {
    pub keys_checked: usize,
    pub ops_total: usize,
    pub ops_ok: usize,
    pub ops_failed: usize,
    pub ops_unknown: usize,
    pub violations: Vec<Violation<V>>,
    pub inconclusive: Vec<Inconclusive>,
    pub malformed: Vec<Malformed>,
    /// Search states expanded over all keys.
    pub steps_total: u64,
    /// The most search states one key needed.
    pub steps_max_key: u64,
}

impl<V> Default for Report<V> {
    fn default() -> Self {
        Self {
            keys_checked: 0,
            ops_total: 0,
            ops_ok: 0,
            ops_failed: 0,
            ops_unknown: 0,
            violations: Vec::new(),
            inconclusive: Vec::new(),
            malformed: Vec::new(),
            steps_total: 0,
            steps_max_key: 0,
        }
    }
}

impl<V: fmt::Debug> Report<V> {
    /// True when every key was shown linearizable (no violation, nothing inconclusive or
    /// malformed).
    #[must_use]
    pub fn is_ok(&self) -> bool {
        self.violations.is_empty() && self.inconclusive.is_empty() && self.malformed.is_empty()
    }

    /// A short human summary: figures, then the first `max_listed` problems.
    #[must_use]
    pub fn summary(&self, max_listed: usize) -> String {
        let mut s = format!(
            "linearizability: {} keys, {} ops (ok {} / failed {} / unknown {}); {} violations, \
             {} inconclusive, {} malformed; search steps {} (most for one key {})",
            self.keys_checked,
            self.ops_total,
            self.ops_ok,
            self.ops_failed,
            self.ops_unknown,
            self.violations.len(),
            self.inconclusive.len(),
            self.malformed.len(),
            self.steps_total,
            self.steps_max_key
        );
        let mut listed = 0;
        for v in &self.violations {
            if listed == max_listed {
                break;
            }
            s.push_str(&format!("\n  {v}"));
            listed += 1;
        }
        for i in &self.inconclusive {
            if listed == max_listed {
                break;
            }
            s.push_str(&format!(
                "\n  key {:?} inconclusive: {} ops, gave up after {} steps",
                i.key, i.ops, i.steps
            ));
            listed += 1;
        }
        for m in &self.malformed {
            if listed == max_listed {
                break;
            }
            s.push_str(&format!("\n  key {:?} malformed: {}", m.key, m.reason));
            listed += 1;
        }
        let problems = self.violations.len() + self.inconclusive.len() + self.malformed.len();
        if problems > listed {
            s.push_str(&format!("\n  ... and {} more", problems - listed));
        }
        s
    }
}

/// Checks every key of `ops` independently (see the module doc for the model).
#[must_use]
pub fn check<V>(ops: &[Operation<V>], config: &CheckConfig) -> Report<V>
where
    V: Clone + Eq + Hash + fmt::Debug,
{
    let mut report = Report::default();
    let mut by_key: BTreeMap<&str, Vec<&Operation<V>>> = BTreeMap::new();
    for op in ops {
        report.ops_total += 1;
        match op.outcome {
            Outcome::Ok(_) => report.ops_ok += 1,
            Outcome::Fail => report.ops_failed += 1,
            Outcome::Unknown => report.ops_unknown += 1,
        }
        by_key.entry(op.key.as_str()).or_default().push(op);
    }
    report.keys_checked = by_key.len();
    for (key, key_ops) in by_key {
        match check_key(key, &key_ops, config) {
            KeyVerdict::Linearizable { steps } => report.add_steps(steps),
            KeyVerdict::Violation(v) => {
                report.add_steps(v.steps);
                report.violations.push(*v);
            }
            KeyVerdict::Inconclusive(i) => {
                report.add_steps(i.steps);
                report.inconclusive.push(i);
            }
            KeyVerdict::Malformed(m) => report.malformed.push(m),
        }
    }
    report
}

impl<V> Report<V> {
    fn add_steps(&mut self, steps: u64) {
        self.steps_total += steps;
        self.steps_max_key = self.steps_max_key.max(steps);
    }
}

/// Checks the operations of one key (all of `ops` must be on `key`).
#[must_use]
pub fn check_key<V>(key: &str, ops: &[&Operation<V>], config: &CheckConfig) -> KeyVerdict<V>
where
    V: Clone + Eq + Hash + fmt::Debug,
{
    let mut entries: Vec<Entry<'_, V>> = Vec::with_capacity(ops.len());
    for op in ops {
        if let Err(reason) = validate(key, op) {
            return KeyVerdict::Malformed(Malformed {
                key: key.to_owned(),
                reason,
            });
        }
        match (&op.outcome, &op.call) {
            (Outcome::Fail, _) | (Outcome::Unknown, Call::Get) => {}
            (Outcome::Ok(reply), _) => entries.push(Entry {
                op,
                complete: Some(op.complete_at),
                reply: Some(reply),
            }),
            (Outcome::Unknown, _) => entries.push(Entry {
                op,
                complete: None,
                reply: None,
            }),
        }
    }
    // Acknowledged operations first, each group in invocation order: the search tries
    // candidates in this order, and a history is usually close to its invocation order.
    entries.sort_by_key(|e| (e.complete.is_none(), e.op.invoke_at));
    match search(&entries, config.max_steps_per_key) {
        Search::Linearizable { steps } => KeyVerdict::Linearizable { steps },
        Search::Exhausted { steps } => KeyVerdict::Inconclusive(Inconclusive {
            key: key.to_owned(),
            ops: entries.len(),
            steps,
        }),
        Search::Impossible {
            steps,
            prefix,
            state,
        } => KeyVerdict::Violation(Box::new(describe_violation(
            key, &entries, &prefix, &state, steps,
        ))),
    }
}

/// Rejects an operation the recorder cannot have seen.
fn validate<V>(key: &str, op: &Operation<V>) -> Result<(), String> {
    if op.key != key {
        return Err(format!(
            "an operation on {:?} was filed under this key",
            op.key
        ));
    }
    let Outcome::Ok(reply) = &op.outcome else {
        return Ok(());
    };
    if op.complete_at < op.invoke_at {
        return Err(format!(
            "an operation completed at {:?}, before its invocation at {:?}",
            op.complete_at, op.invoke_at
        ));
    }
    let fits = match (&op.call, reply) {
        (Call::Get, Reply::Found { .. } | Reply::NotFound) => true,
        (Call::Put { .. }, Reply::Written { .. }) => true,
        (Call::Delete { .. }, Reply::Deleted { .. }) => true,
        (Call::Put { cas, .. } | Call::Delete { cas }, Reply::CasMismatch { .. }) => cas.is_some(),
        _ => false,
    };
    if fits {
        Ok(())
    } else {
        Err(format!(
            "reply {:?} does not fit call {:?}",
            reply_kind(reply),
            call_kind(&op.call)
        ))
    }
}

fn call_kind<V>(call: &Call<V>) -> &'static str {
    match call {
        Call::Get => "get",
        Call::Put { cas: None, .. } => "put",
        Call::Put { cas: Some(_), .. } => "put with cas",
        Call::Delete { cas: None } => "delete",
        Call::Delete { cas: Some(_) } => "delete with cas",
    }
}

fn reply_kind<V>(reply: &Reply<V>) -> &'static str {
    match reply {
        Reply::Found { .. } => "found",
        Reply::NotFound => "not found",
        Reply::Written { .. } => "written",
        Reply::Deleted { .. } => "deleted",
        Reply::CasMismatch { .. } => "cas mismatch",
    }
}

// ------------------------------------------------------------------------------------ model

/// What is known of a present key's version.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Version {
    Exact(u64),
    /// Some `v > lo` not in `excluded` (sorted, all above `lo`).
    Above {
        lo: u64,
        excluded: Vec<u64>,
    },
}

impl Version {
    fn admits(&self, v: u64) -> bool {
        match self {
            Self::Exact(x) => *x == v,
            Self::Above { lo, excluded } => v > *lo && excluded.binary_search(&v).is_err(),
        }
    }

    /// The smallest version it may be: what later versions must exceed, at the least.
    fn min(&self) -> u64 {
        match self {
            Self::Exact(x) => *x,
            Self::Above { lo, excluded } => {
                let mut v = lo + 1;
                for e in excluded {
                    if *e == v {
                        v += 1;
                    } else if *e > v {
                        break;
                    }
                }
                v
            }
        }
    }

    /// Known to be `v`, if it may be.
    fn pin(&self, v: u64) -> Option<Self> {
        self.admits(v).then_some(Self::Exact(v))
    }

    /// Known not to be `v`, if it may differ.
    fn exclude(&self, v: u64) -> Option<Self> {
        match self {
            Self::Exact(x) => (*x != v).then(|| self.clone()),
            Self::Above { lo, excluded } => {
                let mut excluded = excluded.clone();
                if v > *lo
                    && let Err(at) = excluded.binary_search(&v)
                {
                    excluded.insert(at, v);
                }
                Some(Self::Above { lo: *lo, excluded })
            }
        }
    }
}

/// The register of one key.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Register<V> {
    /// No such key; every later version must exceed `floor` (the least the key's newest version
    /// so far may be; 0 if it never existed).
    Absent {
        floor: u64,
    },
    Present {
        value: V,
        version: Version,
    },
}

impl<V: fmt::Debug> Register<V> {
    fn describe(&self) -> String {
        match self {
            Self::Absent { floor: 0 } => "absent".to_owned(),
            Self::Absent { floor } => format!("absent (deleted at version > {floor})"),
            Self::Present {
                value,
                version: Version::Exact(v),
            } => format!("{value:?} v{v}"),
            Self::Present {
                value,
                version: Version::Above { lo, excluded },
            } if excluded.is_empty() => format!("{value:?} v>{lo}"),
            Self::Present {
                value,
                version: Version::Above { lo, excluded },
            } => format!("{value:?} v>{lo} not {excluded:?}"),
        }
    }
}

impl<V: Clone + Eq> Register<V> {
    /// The least value the key's newest version may have (a put must exceed it).
    fn version_floor(&self) -> u64 {
        match self {
            Self::Absent { floor } => *floor,
            Self::Present { version, .. } => version.min(),
        }
    }

    /// This state refined by "a CAS on `expected` matched", and by "it did not".
    fn cas_split(&self, expected: u64) -> (Option<Self>, Option<Self>) {
        match self {
            Self::Absent { .. } if expected == 0 => (Some(self.clone()), None),
            Self::Absent { .. } => (None, Some(self.clone())),
            Self::Present { .. } if expected == 0 => (None, Some(self.clone())),
            Self::Present { value, version } => {
                let with = |version| Self::Present {
                    value: value.clone(),
                    version,
                };
                (
                    version.pin(expected).map(with),
                    version.exclude(expected).map(with),
                )
            }
        }
    }

    /// This state refined by "the store reported version `current`" (0 = absent).
    fn with_current(self, current: u64) -> Option<Self> {
        match self {
            Self::Absent { .. } => (current == 0).then_some(self),
            Self::Present { .. } if current == 0 => None,
            Self::Present { value, version } => version
                .pin(current)
                .map(|version| Self::Present { value, version }),
        }
    }

    /// The state after a put of `value` that took effect here, giving version `new_version`.
    fn put(&self, value: &V, new_version: Option<u64>) -> Option<Self> {
        let floor = self.version_floor();
        let version = match new_version {
            Some(n) if n > floor => Version::Exact(n),
            Some(_) => return None,
            None => Version::Above {
                lo: floor,
                excluded: Vec::new(),
            },
        };
        Some(Self::Present {
            value: value.clone(),
            version,
        })
    }

    /// The state after a delete that took effect here, if the key existed (`deleted`) as told.
    fn delete(&self, deleted: bool) -> Option<Self> {
        match (self, deleted) {
            (Self::Present { version, .. }, true) => Some(Self::Absent {
                floor: version.min(),
            }),
            (Self::Absent { .. }, false) => Some(self.clone()),
            _ => None,
        }
    }

    /// The states an operation can lead to from here. `reply` is `None` for an unknown outcome:
    /// then only states where the operation had an effect are returned (see the module doc).
    fn step(&self, call: &Call<V>, reply: Option<&Reply<V>>) -> Vec<Self> {
        let matched = |cas: Option<u64>| match cas {
            None => Some(self.clone()),
            Some(expected) => self.cas_split(expected).0,
        };
        let mismatched = |cas: Option<u64>, current: Option<u64>| {
            let state = self.cas_split(cas?).1?;
            match current {
                Some(c) => state.with_current(c),
                None => Some(state),
            }
        };
        let next = match (call, reply) {
            (Call::Get, Some(Reply::NotFound)) => {
                matches!(self, Self::Absent { .. }).then(|| self.clone())
            }
            (Call::Get, Some(Reply::Found { value, version })) => match self {
                Self::Present {
                    value: have,
                    version: known,
                } if have == value => match version {
                    None => Some(self.clone()),
                    Some(v) => known.pin(*v).map(|version| Self::Present {
                        value: value.clone(),
                        version,
                    }),
                },
                _ => None,
            },
            (Call::Put { value, cas }, Some(Reply::Written { version })) => {
                matched(*cas).and_then(|s| s.put(value, *version))
            }
            (Call::Put { value, cas }, None) => matched(*cas).and_then(|s| s.put(value, None)),
            (Call::Delete { cas }, Some(Reply::Deleted { deleted })) => {
                matched(*cas).and_then(|s| s.delete(*deleted))
            }
            (Call::Delete { cas }, None) => match matched(*cas) {
                // Deleting an absent key changes nothing: leaving the op pending covers it.
                Some(s @ Self::Present { .. }) => s.delete(true),
                _ => None,
            },
            (
                Call::Put { cas, .. } | Call::Delete { cas },
                Some(Reply::CasMismatch { current }),
            ) => mismatched(*cas, *current),
            _ => None,
        };
        next.into_iter().collect()
    }
}

// ----------------------------------------------------------------------------------- search

/// An operation taking part in the search.
struct Entry<'a, V> {
    op: &'a Operation<V>,
    /// `None` for an unknown outcome: it never precedes anything.
    complete: Option<Duration>,
    /// `None` for an unknown outcome.
    reply: Option<&'a Reply<V>>,
}

/// A set of entry indices.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Bitset(Vec<u64>);

impl Bitset {
    fn new(len: usize) -> Self {
        Self(vec![0; len.div_ceil(64)])
    }

    fn contains(&self, i: usize) -> bool {
        self.0[i / 64] & (1 << (i % 64)) != 0
    }

    fn set(&mut self, i: usize) {
        self.0[i / 64] |= 1 << (i % 64);
    }

    fn clear(&mut self, i: usize) {
        self.0[i / 64] &= !(1 << (i % 64));
    }
}

enum Search<V> {
    Linearizable {
        steps: u64,
    },
    /// No linearization: `prefix` (entry indices, in order) is the longest linearizable prefix
    /// found, by acknowledged operations, and `state` the register after it.
    Impossible {
        steps: u64,
        prefix: Vec<usize>,
        state: Register<V>,
    },
    Exhausted {
        steps: u64,
    },
}

/// One level of the depth-first search: a state and the moves out of it not yet tried.
struct Frame<V> {
    candidates: Vec<(usize, Register<V>)>,
    next: usize,
}

/// Entries that may be linearized next from `state`, with the state each leads to.
fn candidates<V: Clone + Eq>(
    entries: &[Entry<'_, V>],
    done: &Bitset,
    state: &Register<V>,
) -> Vec<(usize, Register<V>)> {
    // An entry may go next unless a pending acknowledged entry completed before it was invoked.
    let horizon = entries
        .iter()
        .enumerate()
        .filter(|(i, _)| !done.contains(*i))
        .filter_map(|(_, e)| e.complete)
        .min();
    let mut out = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        if done.contains(i) || horizon.is_some_and(|h| e.op.invoke_at > h) {
            continue;
        }
        for next in state.step(&e.op.call, e.reply) {
            out.push((i, next));
        }
    }
    out
}

/// Depth-first search for a linearization of `entries`, expanding at most `budget` states.
fn search<V: Clone + Eq + Hash>(entries: &[Entry<'_, V>], budget: u64) -> Search<V> {
    let acknowledged = entries.iter().filter(|e| e.complete.is_some()).count();
    let initial = Register::Absent { floor: 0 };
    let mut done = Bitset::new(entries.len());
    let mut memo: HashSet<(Bitset, Register<V>)> = HashSet::new();
    memo.insert((done.clone(), initial.clone()));
    let mut path: Vec<usize> = Vec::new();
    let mut acknowledged_done = 0;
    let mut steps: u64 = 1;
    let mut best = (0, Vec::new(), initial.clone());
    let mut frames = vec![Frame {
        candidates: candidates(entries, &done, &initial),
        next: 0,
    }];
    loop {
        if acknowledged_done == acknowledged {
            return Search::Linearizable { steps };
        }
        let Some(frame) = frames.last_mut() else {
            let (_, prefix, state) = best;
            return Search::Impossible {
                steps,
                prefix,
                state,
            };
        };
        if frame.next == frame.candidates.len() {
            frames.pop();
            if let Some(i) = path.pop() {
                done.clear(i);
                if entries[i].complete.is_some() {
                    acknowledged_done -= 1;
                }
            }
            continue;
        }
        let (i, state) = frame.candidates[frame.next].clone();
        frame.next += 1;
        done.set(i);
        if !memo.insert((done.clone(), state.clone())) {
            done.clear(i);
            continue;
        }
        steps += 1;
        if steps > budget {
            return Search::Exhausted { steps };
        }
        path.push(i);
        if entries[i].complete.is_some() {
            acknowledged_done += 1;
            if acknowledged_done > best.0 {
                best = (acknowledged_done, path.clone(), state.clone());
            }
        }
        frames.push(Frame {
            candidates: candidates(entries, &done, &state),
            next: 0,
        });
    }
}

/// Names the operation that could not follow the longest prefix, and its company.
fn describe_violation<V: Clone + fmt::Debug>(
    key: &str,
    entries: &[Entry<'_, V>],
    prefix: &[usize],
    state: &Register<V>,
    steps: u64,
) -> Violation<V> {
    let in_prefix: HashSet<usize> = prefix.iter().copied().collect();
    let blocking = entries
        .iter()
        .enumerate()
        .filter(|(i, _)| !in_prefix.contains(i))
        .filter_map(|(i, e)| e.complete.map(|c| (c, i)))
        .min()
        .map_or(0, |(_, i)| i);
    let b = &entries[blocking];
    let b_complete = b.complete.unwrap_or(Duration::MAX);
    let concurrent = entries
        .iter()
        .enumerate()
        .filter(|(i, e)| {
            *i != blocking
                && e.op.invoke_at <= b_complete
                && e.complete.is_none_or(|c| c >= b.op.invoke_at)
        })
        .take(MAX_LISTED_CONCURRENT)
        .map(|(_, e)| e.op.clone())
        .collect();
    let tail_from = prefix.len().saturating_sub(MAX_LISTED_PREFIX);
    Violation {
        key: key.to_owned(),
        blocking: b.op.clone(),
        concurrent,
        prefix_tail: prefix[tail_from..]
            .iter()
            .map(|i| entries[*i].op.clone())
            .collect(),
        prefix_len: prefix.len(),
        state_after_prefix: state.describe(),
        acknowledged: entries.iter().filter(|e| e.complete.is_some()).count(),
        steps,
    }
}

// --------------------------------------------------------------------------------- recorder

/// A thread-safe recorder of operations for [`check`], sharing one monotonic origin.
pub struct Recorder<V> {
    origin: Instant,
    ops: Mutex<Vec<Operation<V>>>,
}

impl<V: Clone> Default for Recorder<V> {
    fn default() -> Self {
        Self::new()
    }
}

impl<V: Clone> Recorder<V> {
    /// An empty recorder whose clock starts now.
    #[must_use]
    pub fn new() -> Self {
        Self {
            origin: Instant::now(),
            ops: Mutex::new(Vec::new()),
        }
    }

    /// The current instant on the recorder's clock; take it just before sending a request.
    #[must_use]
    pub fn now(&self) -> Duration {
        self.origin.elapsed()
    }

    /// Records `call` on `key`, invoked at `invoke_at` and completing now with `outcome`.
    pub fn record(&self, key: &str, call: Call<V>, invoke_at: Duration, outcome: Outcome<V>) {
        let op = Operation {
            key: key.to_owned(),
            call,
            invoke_at,
            complete_at: self.now(),
            outcome,
        };
        // A poisoned lock only means another recording task panicked; its ops are still valid.
        self.ops
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(op);
    }

    /// A copy of every operation recorded so far.
    #[must_use]
    pub fn ops(&self) -> Vec<Operation<V>> {
        self.ops
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

impl<V: Clone + Eq + Hash + fmt::Debug> Recorder<V> {
    /// Checks everything recorded so far.
    #[must_use]
    pub fn check(&self, config: &CheckConfig) -> Report<V> {
        check(&self.ops(), config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    /// Seed of the random-history tests (printed, so a failure can be replayed).
    const SEED: u64 = 0x5eed_4a11;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn op(call: Call<u8>, from: u64, to: u64, outcome: Outcome<u8>) -> Operation<u8> {
        Operation {
            key: "k".into(),
            call,
            invoke_at: ms(from),
            complete_at: ms(to),
            outcome,
        }
    }

    fn put(value: u8, from: u64, to: u64, version: Option<u64>) -> Operation<u8> {
        op(
            Call::Put { value, cas: None },
            from,
            to,
            Outcome::Ok(Reply::Written { version }),
        )
    }

    fn put_unknown(value: u8, from: u64, to: u64) -> Operation<u8> {
        op(Call::Put { value, cas: None }, from, to, Outcome::Unknown)
    }

    fn cas(value: u8, expected: u64, from: u64, to: u64, reply: Reply<u8>) -> Operation<u8> {
        op(
            Call::Put {
                value,
                cas: Some(expected),
            },
            from,
            to,
            Outcome::Ok(reply),
        )
    }

    fn get(value: Option<u8>, from: u64, to: u64) -> Operation<u8> {
        let reply = match value {
            Some(value) => Reply::Found {
                value,
                version: None,
            },
            None => Reply::NotFound,
        };
        op(Call::Get, from, to, Outcome::Ok(reply))
    }

    fn get_v(value: u8, version: u64, from: u64, to: u64) -> Operation<u8> {
        op(
            Call::Get,
            from,
            to,
            Outcome::Ok(Reply::Found {
                value,
                version: Some(version),
            }),
        )
    }

    fn delete(deleted: bool, from: u64, to: u64) -> Operation<u8> {
        op(
            Call::Delete { cas: None },
            from,
            to,
            Outcome::Ok(Reply::Deleted { deleted }),
        )
    }

    fn verdict(ops: &[Operation<u8>]) -> Report<u8> {
        check(ops, &CheckConfig::default())
    }

    // ------------------------------------------------------------------ brute-force oracle

    /// A key's state with concrete versions: the value and version if present, and the largest
    /// version the key ever had.
    #[derive(Clone, Debug)]
    struct Concrete {
        present: Option<(u8, u64)>,
        max_ever: u64,
    }

    impl Concrete {
        fn version(&self) -> u64 {
            self.present.map_or(0, |(_, v)| v)
        }
    }

    /// Every concrete state `op` can lead to from `s` (`reply` None: any reply, including
    /// "no effect"), trying every new version up to `max_version`.
    fn concrete_step(
        s: &Concrete,
        call: &Call<u8>,
        reply: Option<&Reply<u8>>,
        max_version: u64,
    ) -> Vec<Concrete> {
        let matches = |cas: Option<u64>| cas.is_none_or(|c| c == s.version());
        let mut out = Vec::new();
        match call {
            Call::Get => match reply {
                Some(Reply::NotFound) if s.present.is_none() => out.push(s.clone()),
                Some(Reply::Found { value, version }) => {
                    if let Some((have, v)) = s.present
                        && have == *value
                        && version.is_none_or(|x| x == v)
                    {
                        out.push(s.clone());
                    }
                }
                _ => {}
            },
            Call::Put { value, cas } => {
                let mismatch_ok = match reply {
                    None => true,
                    Some(Reply::CasMismatch { current }) => {
                        current.is_none_or(|c| c == s.version())
                    }
                    _ => false,
                };
                if !matches(*cas) {
                    if cas.is_some() && mismatch_ok {
                        out.push(s.clone());
                    }
                } else {
                    let wanted = match reply {
                        None => None,
                        Some(Reply::Written { version }) => *version,
                        _ => return out,
                    };
                    for v in s.max_ever + 1..=max_version {
                        if wanted.is_none_or(|w| w == v) {
                            out.push(Concrete {
                                present: Some((*value, v)),
                                max_ever: v,
                            });
                        }
                    }
                }
            }
            Call::Delete { cas } => {
                let mismatch_ok = match reply {
                    None => true,
                    Some(Reply::CasMismatch { current }) => {
                        current.is_none_or(|c| c == s.version())
                    }
                    _ => false,
                };
                if !matches(*cas) {
                    if cas.is_some() && mismatch_ok {
                        out.push(s.clone());
                    }
                } else {
                    let existed = s.present.is_some();
                    let ok = match reply {
                        None => true,
                        Some(Reply::Deleted { deleted }) => *deleted == existed,
                        _ => false,
                    };
                    if ok {
                        out.push(Concrete {
                            present: None,
                            max_ever: s.max_ever,
                        });
                    }
                }
            }
        }
        out
    }

    /// Tries every order of the operations consistent with real time, every choice of which
    /// unknown operations happened and every concrete version: no memo, no symbolic versions.
    fn brute_force(ops: &[Operation<u8>]) -> bool {
        let ops: Vec<&Operation<u8>> = ops
            .iter()
            .filter(|o| {
                !matches!(
                    (&o.outcome, &o.call),
                    (Outcome::Fail, _) | (Outcome::Unknown, Call::Get)
                )
            })
            .collect();
        let mut mentioned = 0;
        for o in &ops {
            let versions = match (&o.call, &o.outcome) {
                (Call::Put { cas, .. } | Call::Delete { cas }, _) if cas.is_some() => *cas,
                _ => None,
            };
            mentioned = mentioned.max(versions.unwrap_or(0));
            if let Outcome::Ok(r) = &o.outcome {
                let v = match r {
                    Reply::Found { version, .. } | Reply::Written { version } => *version,
                    Reply::CasMismatch { current } => *current,
                    _ => None,
                };
                mentioned = mentioned.max(v.unwrap_or(0));
            }
        }
        let max_version = mentioned + ops.len() as u64 + 1;
        let mut placed = vec![false; ops.len()];
        let start = Concrete {
            present: None,
            max_ever: 0,
        };
        brute_dfs(&ops, &mut placed, &start, max_version)
    }

    fn brute_dfs(
        ops: &[&Operation<u8>],
        placed: &mut [bool],
        s: &Concrete,
        max_version: u64,
    ) -> bool {
        let is_ok = |o: &Operation<u8>| matches!(o.outcome, Outcome::Ok(_));
        if ops.iter().zip(placed.iter()).all(|(o, p)| *p || !is_ok(o)) {
            return true;
        }
        for i in 0..ops.len() {
            if placed[i] {
                continue;
            }
            let preceded = (0..ops.len())
                .any(|j| !placed[j] && is_ok(ops[j]) && ops[j].complete_at < ops[i].invoke_at);
            if preceded {
                continue;
            }
            let reply = match &ops[i].outcome {
                Outcome::Ok(r) => Some(r),
                _ => None,
            };
            for next in concrete_step(s, &ops[i].call, reply, max_version) {
                placed[i] = true;
                if brute_dfs(ops, placed, &next, max_version) {
                    placed[i] = false;
                    return true;
                }
                placed[i] = false;
            }
        }
        false
    }

    // ---------------------------------------------------------------- random histories

    fn random_version(rng: &mut StdRng) -> u64 {
        rng.random_range(0..=6)
    }

    fn random_call(rng: &mut StdRng) -> Call<u8> {
        let cas = |rng: &mut StdRng, p: f64| rng.random_bool(p).then(|| random_version(rng));
        match rng.random_range(0..10) {
            0..4 => Call::Get,
            4..8 => Call::Put {
                value: rng.random_range(1..=3),
                cas: cas(rng, 0.35),
            },
            _ => Call::Delete {
                cas: cas(rng, 0.25),
            },
        }
    }

    fn random_reply(rng: &mut StdRng, call: &Call<u8>) -> Reply<u8> {
        let version = |rng: &mut StdRng| rng.random_bool(0.7).then(|| rng.random_range(1..=6));
        let cas = match call {
            Call::Get => {
                return if rng.random_bool(0.3) {
                    Reply::NotFound
                } else {
                    Reply::Found {
                        value: rng.random_range(1..=3),
                        version: version(rng),
                    }
                };
            }
            Call::Put { cas, .. } | Call::Delete { cas } => *cas,
        };
        if cas.is_some() && rng.random_bool(0.4) {
            let current = rng.random_bool(0.6).then(|| random_version(rng));
            return Reply::CasMismatch { current };
        }
        match call {
            Call::Put { .. } => Reply::Written {
                version: version(rng),
            },
            _ => Reply::Deleted {
                deleted: rng.random_bool(0.6),
            },
        }
    }

    fn random_interval(rng: &mut StdRng) -> (u64, u64) {
        let from = rng.random_range(0..12);
        (from, from + rng.random_range(0..6))
    }

    /// Fully random operations: mostly not linearizable.
    fn random_history(rng: &mut StdRng) -> Vec<Operation<u8>> {
        let n = rng.random_range(1..=6);
        (0..n)
            .map(|_| {
                let call = random_call(rng);
                let (from, to) = random_interval(rng);
                let outcome = match rng.random_range(0..20) {
                    0..14 => Outcome::Ok(random_reply(rng, &call)),
                    14..17 => Outcome::Unknown,
                    _ => Outcome::Fail,
                };
                op(call, from, to, outcome)
            })
            .collect()
    }

    /// Operations run against a concrete register at random instants inside their intervals
    /// (so linearizable by construction), then sometimes one reply is replaced by a random one.
    fn simulated_history(rng: &mut StdRng) -> Vec<Operation<u8>> {
        let n = rng.random_range(1..=6);
        let mut planned: Vec<(u64, Operation<u8>, bool)> = (0..n)
            .map(|_| {
                let call = random_call(rng);
                let (from, to) = random_interval(rng);
                // Instants are scaled so that a linearization point can fall strictly inside.
                let point = rng.random_range(from * 10..=to * 10);
                let outcome = match rng.random_range(0..20) {
                    0..15 => Outcome::Ok(Reply::NotFound),
                    15..18 => Outcome::Unknown,
                    _ => Outcome::Fail,
                };
                // An unknown operation may or may not take effect; a failed one never does.
                let applies = match outcome {
                    Outcome::Ok(_) => true,
                    Outcome::Unknown => rng.random_bool(0.5),
                    Outcome::Fail => false,
                };
                (point, op(call, from, to, outcome), applies)
            })
            .collect();
        planned.sort_by_key(|(point, _, _)| *point);
        let mut present: Option<(u8, u64)> = None;
        let mut counter = 0;
        for (_, o, applies) in &mut planned {
            if !*applies {
                continue;
            }
            let current = present.map_or(0, |(_, v)| v);
            let keep_version = rng.random_bool(0.8);
            let reply = match &o.call {
                Call::Get => match present {
                    None => Reply::NotFound,
                    Some((value, v)) => Reply::Found {
                        value,
                        version: keep_version.then_some(v),
                    },
                },
                Call::Put { cas: Some(c), .. } | Call::Delete { cas: Some(c) } if *c != current => {
                    Reply::CasMismatch {
                        current: keep_version.then_some(current),
                    }
                }
                Call::Put { value, .. } => {
                    // The partition counter is shared with other keys: it may skip versions.
                    counter += rng.random_range(1..=2);
                    present = Some((*value, counter));
                    Reply::Written {
                        version: keep_version.then_some(counter),
                    }
                }
                Call::Delete { .. } => {
                    let deleted = present.is_some();
                    if deleted {
                        counter += 1;
                    }
                    present = None;
                    Reply::Deleted { deleted }
                }
            };
            if matches!(o.outcome, Outcome::Ok(_)) {
                o.outcome = Outcome::Ok(reply);
            }
        }
        let mut ops: Vec<Operation<u8>> = planned.into_iter().map(|(_, o, _)| o).collect();
        if rng.random_bool(0.4) {
            let i = rng.random_range(0..ops.len());
            if matches!(ops[i].outcome, Outcome::Ok(_)) {
                ops[i].outcome = Outcome::Ok(random_reply(rng, &ops[i].call));
            }
        }
        ops
    }

    /// On thousands of small random histories (fully random, and simulated runs with some
    /// replies corrupted), the checker's verdict equals the brute-force oracle's, and both
    /// verdicts occur often enough for the agreement to mean something.
    #[test]
    fn agrees_with_brute_force_on_small_random_histories() {
        eprintln!("linearizability self-test seed: {SEED:#x}");
        let mut rng = StdRng::seed_from_u64(SEED);
        let (mut linearizable, mut not) = (0, 0);
        for round in 0..6000 {
            let ops = if round % 2 == 0 {
                random_history(&mut rng)
            } else {
                simulated_history(&mut rng)
            };
            let expected = brute_force(&ops);
            let report = verdict(&ops);
            assert!(
                report.inconclusive.is_empty() && report.malformed.is_empty(),
                "seed {SEED:#x} round {round}: {}",
                report.summary(3)
            );
            let listed: Vec<String> = ops.iter().map(ToString::to_string).collect();
            assert_eq!(
                report.violations.is_empty(),
                expected,
                "seed {SEED:#x} round {round}: brute force says linearizable={expected} for\n  \
                 {}\nchecker: {}",
                listed.join("\n  "),
                report.summary(3)
            );
            if expected {
                linearizable += 1;
            } else {
                not += 1;
            }
        }
        eprintln!("{linearizable} linearizable, {not} not");
        assert!(linearizable > 1500 && not > 1500, "{linearizable} / {not}");
    }

    /// A read that begins after a put completed and returns the older value, or "not found",
    /// is reported, naming the key and the read.
    #[test]
    fn catches_stale_reads() {
        let stale_value = [
            put(1, 0, 1, Some(1)),
            put(2, 2, 3, Some(2)),
            get(Some(1), 4, 5),
        ];
        let report = verdict(&stale_value);
        assert_eq!(report.violations.len(), 1, "{}", report.summary(3));
        let v = &report.violations[0];
        assert_eq!(v.key, "k");
        assert_eq!(v.blocking, stale_value[2]);
        assert_eq!(v.state_after_prefix, "2 v2");

        let stale_absent = [put(1, 0, 1, None), get(None, 2, 3)];
        assert_eq!(verdict(&stale_absent).violations.len(), 1);

        // Two reads: once one has seen the new value, a later one may not go back.
        let back_in_time = [
            put(1, 0, 1, None),
            put(2, 2, 10, None),
            get(Some(2), 3, 4),
            get(Some(1), 5, 6),
        ];
        assert_eq!(verdict(&back_in_time).violations.len(), 1);
    }

    /// An acknowledged put that no later read reflects (the key reads back older, or missing,
    /// after everything completed) is a lost write.
    #[test]
    fn catches_lost_writes() {
        let lost = [
            put(1, 0, 1, None),
            put(2, 2, 3, None),
            put(3, 4, 5, None),
            get(Some(2), 10, 11),
        ];
        let report = verdict(&lost);
        assert_eq!(report.violations.len(), 1, "{}", report.summary(3));
        assert_eq!(report.violations[0].blocking, lost[3]);

        let vanished = [put(1, 0, 1, Some(4)), delete(false, 2, 3)];
        assert_eq!(verdict(&vanished).violations.len(), 1);
    }

    /// A read of a value nobody wrote, of one whose write definitely failed, or of a value
    /// whose write began only after the read ended, is reported.
    #[test]
    fn catches_reads_of_values_never_written() {
        let nobody = [put(1, 0, 1, None), get(Some(3), 2, 3)];
        assert_eq!(verdict(&nobody).violations.len(), 1);

        let failed = [
            put(1, 0, 1, None),
            op(
                Call::Put {
                    value: 2,
                    cas: None,
                },
                2,
                3,
                Outcome::Fail,
            ),
            get(Some(2), 4, 5),
        ];
        assert_eq!(verdict(&failed).violations.len(), 1);

        let from_the_future = [get(Some(1), 0, 1), put_unknown(1, 2, 3)];
        assert_eq!(verdict(&from_the_future).violations.len(), 1);

        let wrong_version = [put(1, 0, 1, Some(5)), get_v(1, 6, 2, 3)];
        assert_eq!(verdict(&wrong_version).violations.len(), 1);
    }

    /// A CAS that succeeded although the key's version was certainly another one, a CAS
    /// mismatch while the version certainly matched, and versions going backwards are reported.
    #[test]
    fn catches_cas_that_saw_a_different_version() {
        let stale_cas = [
            put(1, 0, 1, Some(5)),
            put(2, 2, 3, Some(7)),
            cas(3, 5, 4, 5, Reply::Written { version: None }),
        ];
        let report = verdict(&stale_cas);
        assert_eq!(report.violations.len(), 1, "{}", report.summary(3));
        assert_eq!(report.violations[0].blocking, stale_cas[2]);

        let create_twice = [
            cas(1, 0, 0, 1, Reply::Written { version: None }),
            cas(2, 0, 2, 3, Reply::Written { version: None }),
        ];
        assert_eq!(verdict(&create_twice).violations.len(), 1);

        let bogus_mismatch = [
            put(1, 0, 1, Some(5)),
            cas(2, 5, 2, 3, Reply::CasMismatch { current: None }),
        ];
        assert_eq!(verdict(&bogus_mismatch).violations.len(), 1);

        // A mismatch on version 1 of a put whose version was unknown means it is at least 2,
        // so a later put cannot be given version 2.
        let excluded = [
            put(1, 0, 1, None),
            cas(2, 1, 2, 3, Reply::CasMismatch { current: None }),
            put(3, 4, 5, Some(2)),
        ];
        assert_eq!(verdict(&excluded).violations.len(), 1);
        let excluded_ok = [
            put(1, 0, 1, None),
            cas(2, 1, 2, 3, Reply::CasMismatch { current: None }),
            put(3, 4, 5, Some(3)),
        ];
        assert!(verdict(&excluded_ok).is_ok());

        let backwards = [put(1, 0, 1, Some(5)), put(2, 2, 3, Some(5))];
        assert_eq!(verdict(&backwards).violations.len(), 1);

        // An unknown put between two known versions needs a version strictly between them.
        let no_room = [
            put(1, 0, 1, Some(3)),
            put_unknown(2, 2, 3),
            get(Some(2), 4, 5),
            put(3, 6, 7, Some(4)),
        ];
        assert_eq!(verdict(&no_room).violations.len(), 1);
    }

    /// Valid histories with overlapping operations, unknown writes that took effect late or
    /// never, CAS with versions learnt from reads, deletes and re-creates are accepted.
    #[test]
    fn accepts_valid_concurrent_histories_with_unknown_writes() {
        let ops = [
            // Concurrent with the put of 1: may see either.
            get(None, 0, 5),
            put(1, 1, 10, Some(3)),
            get(Some(1), 2, 9),
            get(None, 3, 8),
            // An unknown put whose client gave up at 14; it lands after the put of 2.
            put_unknown(9, 11, 14),
            put(2, 15, 20, Some(6)),
            get_v(2, 6, 21, 22),
            get(Some(9), 23, 24),
            // Its version is unknown but above 6: a CAS learns it from a read.
            op(
                Call::Get,
                25,
                26,
                Outcome::Ok(Reply::Found {
                    value: 9,
                    version: Some(8),
                }),
            ),
            cas(4, 7, 27, 28, Reply::CasMismatch { current: Some(8) }),
            cas(4, 8, 29, 30, Reply::Written { version: Some(9) }),
            delete(true, 31, 32),
            delete(false, 33, 34),
            // Re-created: any version above 9.
            cas(5, 0, 35, 36, Reply::Written { version: Some(10) }),
            // An unknown put that never took effect.
            put_unknown(6, 37, 38),
            get_v(5, 10, 39, 40),
            // An unknown CAS delete that did.
            op(Call::Delete { cas: Some(10) }, 41, 42, Outcome::Unknown),
            get(None, 43, 44),
            // Failed operations and unanswered reads change nothing.
            op(
                Call::Put {
                    value: 7,
                    cas: None,
                },
                45,
                46,
                Outcome::Fail,
            ),
            op(Call::Get, 47, 48, Outcome::Unknown),
            get(None, 49, 50),
        ];
        let report = verdict(&ops);
        assert!(report.is_ok(), "{}", report.summary(5));
        assert_eq!(report.keys_checked, 1);
        assert_eq!(report.ops_total, ops.len());
        assert_eq!(report.ops_ok, 16);
        assert_eq!(report.ops_unknown, 4);
        assert_eq!(report.ops_failed, 1);
    }

    /// Keys are judged independently: a violation on one key names that key only.
    #[test]
    fn partitions_by_key_and_names_the_offending_key() {
        let mut ops = vec![put(1, 0, 1, None), get(Some(1), 2, 3)];
        let mut bad = [put(1, 0, 1, None), get(None, 2, 3)];
        for o in &mut bad {
            o.key = "bad".into();
        }
        ops.extend(bad.iter().cloned());
        let report = verdict(&ops);
        assert_eq!(report.keys_checked, 2);
        assert_eq!(report.violations.len(), 1);
        assert_eq!(report.violations[0].key, "bad");
        assert_eq!(report.violations[0].blocking, bad[1]);
        assert_eq!(report.violations[0].concurrent, Vec::<Operation<u8>>::new());
        let text = report.summary(5);
        assert!(text.contains("\"bad\"") && text.contains("get [2ms..3ms] -> not found"));
    }

    /// A history too costly for the step budget ends inconclusive (not hanging, not "ok").
    #[test]
    fn reports_inconclusive_when_the_budget_runs_out() {
        // Many unknown puts that are never needed, and a read that nothing explains: the
        // search must try every subset and order of them before giving up.
        let mut ops: Vec<Operation<u8>> = (0..14).map(|i| put_unknown(i, 0, 1)).collect();
        ops.push(get(Some(200), 2, 3));
        let report = check(
            &ops,
            &CheckConfig {
                max_steps_per_key: 1000,
            },
        );
        assert_eq!(
            report.inconclusive,
            vec![Inconclusive {
                key: "k".into(),
                ops: 15,
                steps: 1001,
            }]
        );
        assert!(!report.is_ok());
    }

    /// A reply that does not fit its call (the recorder's bug) is reported, not judged.
    #[test]
    fn reports_malformed_operations() {
        let ops = [op(
            Call::Get,
            0,
            1,
            Outcome::Ok(Reply::Written { version: None }),
        )];
        let report = verdict(&ops);
        assert_eq!(report.malformed.len(), 1, "{}", report.summary(3));
        let backwards = [get(None, 5, 1)];
        assert_eq!(verdict(&backwards).malformed.len(), 1);
    }

    /// A long valid history (four concurrent clients, a thousand operations on one key with
    /// unknown outcomes) is shown linearizable well within the default budget.
    #[test]
    fn checks_a_long_concurrent_history_quickly() {
        let mut rng = StdRng::seed_from_u64(SEED ^ 1);
        let mut present: Option<(u8, u64)> = None;
        let mut counter = 0;
        let mut ops = Vec::new();
        let mut clock = 0u64;
        for _ in 0..1000 {
            // Each op's effect happens at `clock`; its interval straddles it by up to 3 units.
            clock += 2;
            let from = clock - rng.random_range(0..3).min(clock);
            let to = clock + rng.random_range(0..3);
            let call = random_call(&mut rng);
            let unknown = rng.random_bool(0.05);
            let current = present.map_or(0, |(_, v)| v);
            let reply = match &call {
                Call::Get => present.map_or(Reply::NotFound, |(value, v)| Reply::Found {
                    value,
                    version: Some(v),
                }),
                Call::Put { cas: Some(c), .. } | Call::Delete { cas: Some(c) } if *c != current => {
                    Reply::CasMismatch {
                        current: Some(current),
                    }
                }
                Call::Put { value, .. } => {
                    counter += 1;
                    present = Some((*value, counter));
                    Reply::Written {
                        version: Some(counter),
                    }
                }
                Call::Delete { .. } => {
                    let deleted = present.take().is_some();
                    Reply::Deleted { deleted }
                }
            };
            let outcome = if unknown && !matches!(call, Call::Get) {
                Outcome::Unknown
            } else {
                Outcome::Ok(reply)
            };
            ops.push(op(call, from, to, outcome));
        }
        let started = Instant::now();
        let report = verdict(&ops);
        assert!(report.is_ok(), "{}", report.summary(3));
        eprintln!(
            "1000 ops checked in {:?}: {}",
            started.elapsed(),
            report.summary(0)
        );
    }

    /// The recorder stamps operations from one clock and feeds them to the checker.
    #[test]
    fn recorder_records_in_clock_order() {
        let recorder: Recorder<u8> = Recorder::new();
        let t0 = recorder.now();
        recorder.record(
            "k",
            Call::Put {
                value: 1,
                cas: None,
            },
            t0,
            Outcome::Ok(Reply::Written { version: Some(1) }),
        );
        let t1 = recorder.now();
        recorder.record(
            "k",
            Call::Get,
            t1,
            Outcome::Ok(Reply::Found {
                value: 1,
                version: Some(1),
            }),
        );
        let ops = recorder.ops();
        assert_eq!(ops.len(), 2);
        assert!(ops[0].complete_at <= ops[1].invoke_at);
        assert!(recorder.check(&CheckConfig::default()).is_ok());
    }
}

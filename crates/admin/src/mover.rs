//! The mover: drives every partition move recorded in the metadata through its steps.
//!
//! # Invariants
//!
//! - **Persist, then act.** A move's step is persisted by `meta` (fsynced) *before* its action is
//!   sent to a node, and every action is idempotent at the node. A restarted admin therefore
//!   finds each move at a step it may repeat, and [`run`] resumes all of them at start.
//! - **Forward only after ACTIVATE.** Before ACTIVATE was ever sent, a move whose target stays
//!   leaderless or unreachable for more than [`TARGET_DOWN_ABORT_MS`] (or whose step is refused
//!   by a node) is aborted: RESTORE at the source, best-effort ABANDON at the target, drop the
//!   record, retry that partition after the retry backoff ([`DEFAULT_MOVE_RETRY_BACKOFF_MS`]).
//!   An abort because the target was down backs off every move *to that target*, not only that
//!   partition: otherwise the mover would freeze the source's next partitions one batch after
//!   another, each refusing writes for [`TARGET_DOWN_ABORT_MS`] until it aborts in turn. Once
//!   ACTIVATE may have been sent the target may have served writes, so the move only goes
//!   forward (retrying).
//! - **Transient failures are retried.** A transport error, no leader or an OUTCOME_UNKNOWN
//!   answer repeats the same step (idempotent) with a backoff.
//! - **Bounded.** At most `max_concurrent_moves` moves are started at once (moves resumed after a
//!   restart always run); a copy moves at most [`INGEST_MAX_RECORDS`] records and
//!   [`INGEST_MAX_BYTES`] per INGEST.
//! - **Only on confirmed clusters.** A move starts only between clusters that confirmed the
//!   current assignment epoch in this run: from then on any `Assign` the placement task sends
//!   them is already applied, so it cannot undo what the migration steps changed.
//!
//! This module must not change the table by itself (only through `meta` commands) and must not
//! hold a lock across an `.await`.

use crate::cluster_view::STATUS_DEADLINE_MS;
use crate::meta::{MetaCommand, MetaError, MetaRefusal, MoveRecord, MoveStep, plan_moves};
use crate::placement::{LeaderCallError, call_leader, control_request};
use crate::{AdminState, SharedState};
use ravel_core::{ClusterId, PartitionId, limits};
use ravel_proto::v1::control_client::ControlClient;
use ravel_proto::v1::node_error::Kind;
use ravel_proto::v1::{
    MigrateOp, MigrateRecord, MigrateReply, MigrateRequest, NodeError, ScanPartitionReply,
    ScanPartitionRequest, StatusRequest,
};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

/// Default of `--max-concurrent-moves`.
pub const DEFAULT_MAX_CONCURRENT_MOVES: usize = 4;

/// Most records per INGEST (and per ScanPartition batch asked for).
pub const INGEST_MAX_RECORDS: usize = 512;

/// Most key and value bytes per INGEST: far below the gRPC message cap, so one Raft entry stays
/// small enough not to stall the target's log.
pub const INGEST_MAX_BYTES: usize = 2 * 1024 * 1024;

/// A move whose target has had no reachable leader this long, before ACTIVATE, is aborted.
pub const TARGET_DOWN_ABORT_MS: u64 = 10_000;

/// Default of `--move-retry-backoff-ms`: after an abort, the same partition (and, when the
/// target was down, every move to that target) is not tried again for this long.
pub const DEFAULT_MOVE_RETRY_BACKOFF_MS: u64 = 30_000;

/// Pause between attempts of one step: starts here, doubles up to [`STEP_RETRY_MAX_MS`].
const STEP_RETRY_MIN_MS: u64 = 50;
const STEP_RETRY_MAX_MS: u64 = 1_000;

/// Pause before repeating a step a node refused after ACTIVATE (it needs an operator's eye; the
/// error is logged each time).
const REFUSED_RETRY_MS: u64 = 2_000;

/// Period of the mover's pass when nothing wakes it earlier.
const MOVER_INTERVAL_MS: u64 = 1_000;

/// Framing bytes counted per record on top of its key and value, for the INGEST byte cap.
const RECORD_OVERHEAD_BYTES: usize = 16;

/// Keys one PURGE entry deletes at most (about 40 ms of the source's apply on this machine).
pub const PURGE_BATCH_KEYS: u32 = 2_048;

/// Most rounds over the change log in a pre-copy, after the whole partition was copied.
pub const PRECOPY_MAX_ROUNDS: usize = 8;

/// A pre-copy round that copied at most this many changes ends the pre-copy: what is left for
/// the freeze is about as small as it gets.
pub const PRECOPY_SETTLED_CHANGES: u64 = 64;

/// Longest a background batch (pre-copy, purge) waits for another move's write pause to end
/// before it goes ahead anyway (a pause stuck on an unreachable cluster must not stall them).
const PAUSE_PRIORITY_MAX_WAIT_MS: u64 = 500;

/// Window over which `/v1/cluster` reports the migration rate.
pub const RATE_WINDOW_MS: u64 = 10_000;

/// Longest a move waits, before its write pause, for a membership change of its source or
/// target to end (after that it pauses anyway: a replica may stay a learner for good).
pub const PAUSE_MEMBERSHIP_WAIT_MS: u64 = 10_000;
/// How often that wait asks the clusters again.
const MEMBERSHIP_POLL_MS: u64 = 100;

/// Held by a background batch (pre-copy, purge) while it runs ([`Mover::yield_to_pause`]).
type BackgroundTurn = tokio::sync::OwnedRwLockReadGuard<()>;

/// How far a move's copy has read the source's change log (kept in memory: a move resumed
/// after an admin restart copies its partition whole).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tail {
    /// Changes up to this change-log version are at the target.
    after: u64,
    /// The source's version counter last sent to the target.
    floor: u64,
}

/// The migration rate over the last [`RATE_WINDOW_MS`].
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct MigrationRate {
    pub keys_per_sec: f64,
    pub bytes_per_sec: f64,
}

/// The mover's shared, in-memory side: its wake-up, live copy progress and rate.
#[derive(Default)]
pub struct Mover {
    wake: Notify,
    /// Records copied so far per partition being copied (persisted only at batch boundaries).
    progress: Mutex<BTreeMap<PartitionId, u64>>,
    /// Where each pre-copied move's copy of the change log stands.
    tails: Mutex<BTreeMap<PartitionId, Tail>>,
    /// (when, records, bytes) of each batch copied within the rate window.
    batches: Mutex<VecDeque<(Instant, u64, u64)>>,
    /// Held (written) by the one move in its write pause, from the end of its pre-copy to its
    /// table switch; background batches (pre-copy, purge) take it shared, so they wait while a
    /// pause is on ([`Mover::yield_to_pause`]).
    pause_gate: Arc<tokio::sync::RwLock<()>>,
    /// The move holding `pause_gate`, with its guard.
    pausing: Mutex<Option<(PartitionId, tokio::sync::OwnedRwLockWriteGuard<()>)>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Mover {
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Asks for a pass now (plan changed, a cluster confirmed its assignment).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Live count of records copied for `partition`, if it is being copied in this run.
    pub fn keys_copied(&self, partition: PartitionId) -> Option<u64> {
        lock(&self.progress).get(&partition).copied()
    }

    fn set_progress(&self, partition: PartitionId, copied: u64) {
        lock(&self.progress).insert(partition, copied);
    }

    /// Counts one batch of `records` (`bytes` of keys and values) copied for `partition`, whose
    /// move has copied `total` so far.
    fn copied(&self, partition: PartitionId, total: u64, records: u64, bytes: u64) {
        self.set_progress(partition, total);
        metrics::counter!("ravel_admin_migrated_records_total").increment(records);
        metrics::counter!("ravel_admin_migrated_bytes_total").increment(bytes);
        let now = Instant::now();
        let mut batches = lock(&self.batches);
        batches.push_back((now, records, bytes));
        Self::trim(&mut batches, now);
    }

    fn trim(batches: &mut VecDeque<(Instant, u64, u64)>, now: Instant) {
        let window = Duration::from_millis(RATE_WINDOW_MS);
        while batches
            .front()
            .is_some_and(|(at, _, _)| now.duration_since(*at) > window)
        {
            batches.pop_front();
        }
    }

    /// Records and bytes copied per second over the last [`RATE_WINDOW_MS`].
    pub fn rate(&self) -> MigrationRate {
        let now = Instant::now();
        let mut batches = lock(&self.batches);
        Self::trim(&mut batches, now);
        let seconds = RATE_WINDOW_MS as f64 / 1e3;
        let (records, bytes) = batches.iter().fold((0, 0), |(r, b), (_, records, bytes)| {
            (r + records, b + bytes)
        });
        MigrationRate {
            keys_per_sec: records as f64 / seconds,
            bytes_per_sec: bytes as f64 / seconds,
        }
    }

    fn tail(&self, partition: PartitionId) -> Option<Tail> {
        lock(&self.tails).get(&partition).copied()
    }

    fn set_tail(&self, partition: PartitionId, tail: Tail) {
        lock(&self.tails).insert(partition, tail);
    }

    fn forget_tail(&self, partition: PartitionId) {
        lock(&self.tails).remove(&partition);
    }

    /// Forgets every move's in-memory side (copy progress, change-log positions, the pause):
    /// a new term of leading starts from the persisted steps alone, since another admin may
    /// have led the moves meanwhile.
    fn forget_live_state(&self) {
        lock(&self.progress).clear();
        lock(&self.tails).clear();
        *lock(&self.pausing) = None;
    }

    /// Forgets a move's in-memory side once its task ended.
    fn clear_progress(&self, partition: PartitionId) {
        lock(&self.progress).remove(&partition);
        self.forget_tail(partition);
        self.leave_pause(partition);
    }

    /// Waits until no other move is in its write pause (at most [`PAUSE_PRIORITY_MAX_WAIT_MS`])
    /// and returns a turn to hold through one background batch: a move entering its pause waits
    /// for the batches in flight, and no new one starts during the pause, so that its few Raft
    /// commits do not queue behind copies and purges at the same clusters. `None` when the wait
    /// timed out or `partition` itself is pausing.
    async fn yield_to_pause(&self, partition: PartitionId) -> Option<BackgroundTurn> {
        if self.is_pausing(partition) {
            return None;
        }
        let wait = Duration::from_millis(PAUSE_PRIORITY_MAX_WAIT_MS);
        let gate = Arc::clone(&self.pause_gate);
        tokio::time::timeout(wait, gate.read_owned()).await.ok()
    }

    /// Makes `partition` the one move in its write pause, waiting for the one before it and for
    /// background batches in flight.
    async fn enter_pause(&self, partition: PartitionId) {
        if self.is_pausing(partition) {
            return;
        }
        let guard = Arc::clone(&self.pause_gate).write_owned().await;
        *lock(&self.pausing) = Some((partition, guard));
    }

    fn is_pausing(&self, partition: PartitionId) -> bool {
        lock(&self.pausing)
            .as_ref()
            .is_some_and(|(p, _)| *p == partition)
    }

    /// Ends `partition`'s write pause, if it is in one.
    fn leave_pause(&self, partition: PartitionId) {
        let mut pausing = lock(&self.pausing);
        if pausing.as_ref().is_some_and(|(p, _)| *p == partition) {
            *pausing = None;
        }
    }
}

/// How one move task ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MoveEnd {
    Finished,
    /// Aborted before ACTIVATE; `target_down` names the target when the abort was because it
    /// had no reachable leader (as seen by this task: an abort resumed after an admin restart
    /// does not know why it began).
    Aborted {
        target_down: Option<ClusterId>,
    },
    /// The record disappeared under the task (a forced removal settled it).
    Gone,
    Stopped,
}

/// Wall-clock milliseconds since the Unix epoch (only for reporting durations).
fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Runs the mover whenever this admin leads the admins' group, until `shutdown` is cancelled:
/// each time it begins to lead, [`run`] resumes every persisted move from its step; when it
/// stops leading, its moves stop (the next leader resumes them).
pub async fn run_while_leading(
    state: SharedState,
    max_concurrent_moves: usize,
    retry_backoff: Duration,
    shutdown: CancellationToken,
) {
    let mut leading = state.meta.leading();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            led = leading.wait_for(|l| *l) => if led.map(|_| ()).is_err() { return },
        }
        state.mover.forget_live_state();
        tracing::info!("this admin leads: driving partition moves");
        let term = shutdown.child_token();
        let moves = run(
            SharedState::clone(&state),
            max_concurrent_moves,
            retry_backoff,
            term.clone(),
        );
        tokio::pin!(moves);
        tokio::select! {
            () = &mut moves => return,
            _ = async { leading.wait_for(|l| !*l).await.map(|_| ()) } => {
                term.cancel();
                moves.await;
                state.mover.forget_live_state();
                tracing::info!("this admin no longer leads: its partition moves stopped");
            }
        }
    }
}

/// Runs the mover until `shutdown` is cancelled: resumes every persisted move, starts planned
/// ones up to `max_concurrent_moves` at a time; an aborted move is not retried for
/// `retry_backoff`.
pub async fn run(
    state: SharedState,
    max_concurrent_moves: usize,
    retry_backoff: Duration,
    shutdown: CancellationToken,
) {
    let max = max_concurrent_moves.max(1);
    let mut running: JoinSet<(PartitionId, MoveEnd)> = JoinSet::new();
    let mut tasks: BTreeMap<tokio::task::Id, PartitionId> = BTreeMap::new();
    let mut active: BTreeSet<PartitionId> = BTreeSet::new();
    let mut retry_after: BTreeMap<PartitionId, Instant> = BTreeMap::new();
    // Targets found down: no move to them starts before the instant.
    let mut target_retry_after: BTreeMap<ClusterId, Instant> = BTreeMap::new();
    let mut tick = tokio::time::interval(Duration::from_millis(MOVER_INTERVAL_MS));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let meta = state.meta.current();
        metrics::gauge!("ravel_admin_moves_in_progress").set(meta.moves.len() as f64);
        for &p in meta.moves.keys() {
            if active.insert(p) {
                let handle = running.spawn(drive(SharedState::clone(&state), p, shutdown.clone()));
                tasks.insert(handle.id(), p);
            }
        }
        let now = Instant::now();
        retry_after.retain(|_, t| *t > now);
        target_retry_after.retain(|_, t| *t > now);
        if meta.has_data && active.len() < max {
            let epoch = meta.assignment_epoch;
            let candidates: Vec<_> = plan_moves(&meta)
                .into_iter()
                .filter(|m| !retry_after.contains_key(&m.partition))
                .filter(|m| !target_retry_after.contains_key(&m.target))
                .filter(|m| {
                    state.placement.confirmed(m.source, epoch)
                        && state.placement.confirmed(m.target, epoch)
                })
                .take(max - active.len())
                .collect();
            for m in candidates {
                let command = MetaCommand::StartMove {
                    partition: m.partition,
                    source: m.source,
                    target: m.target,
                    at_ms: now_ms(),
                };
                // Only here, never forwarded: a deposed leader must not plan moves through
                // the new one.
                match state.meta.execute_here(command).await {
                    Ok(_) => {
                        tracing::info!(
                            partition = m.partition,
                            source = m.source,
                            target = m.target,
                            "partition move planned"
                        );
                        active.insert(m.partition);
                        let handle = running.spawn(drive(
                            SharedState::clone(&state),
                            m.partition,
                            shutdown.clone(),
                        ));
                        tasks.insert(handle.id(), m.partition);
                    }
                    Err(e) => {
                        tracing::warn!(partition = m.partition, error = %e, "cannot start move")
                    }
                }
            }
        }
        drop(meta);
        tokio::select! {
            () = shutdown.cancelled() => {
                running.abort_all();
                while running.join_next().await.is_some() {}
                return;
            }
            Some(joined) = running.join_next_with_id(), if !running.is_empty() => {
                let (id, end) = match joined {
                    Ok((id, (_, end))) => (id, end),
                    Err(e) => {
                        tracing::error!(error = %e, "move task failed");
                        (e.id(), MoveEnd::Stopped)
                    }
                };
                if let Some(p) = tasks.remove(&id) {
                    active.remove(&p);
                    state.mover.clear_progress(p);
                    if let MoveEnd::Aborted { target_down } = end {
                        let until = Instant::now() + retry_backoff;
                        retry_after.insert(p, until);
                        if let Some(target) = target_down {
                            let backoff_ms = retry_backoff.as_millis();
                            tracing::warn!(
                                target,
                                backoff_ms,
                                "target cluster down: no move to it starts before the backoff ends"
                            );
                            target_retry_after.insert(target, until);
                        }
                    }
                }
            }
            () = state.mover.wake.notified() => {}
            _ = tick.tick() => {}
        }
    }
}

/// Why one step did not complete.
#[derive(Debug)]
enum StepFail {
    /// The move record changed or a cluster it names went away: re-read and follow it.
    Changed,
    /// A node refused the step definitely (e.g. not allowed in the partition's state).
    Refused(String),
    /// The target had no reachable leader for longer than [`TARGET_DOWN_ABORT_MS`].
    TargetDown(String),
    /// The admin could not persist the step.
    Meta(String),
    /// This admin could not confirm that it still leads the admins' group: another admin may
    /// be driving the move, so this one stops touching the clusters.
    NotLeading,
}

impl StepFail {
    fn why(self) -> String {
        match self {
            Self::Changed => "the move record changed".to_owned(),
            Self::Refused(why) | Self::TargetDown(why) | Self::Meta(why) => why,
            Self::NotLeading => "this admin no longer leads the admins' group".to_owned(),
        }
    }
}

/// Drives the move of `partition` from its persisted step to its end.
async fn drive(
    state: SharedState,
    partition: PartitionId,
    stop: CancellationToken,
) -> (PartitionId, MoveEnd) {
    let end = tokio::select! {
        () = stop.cancelled() => MoveEnd::Stopped,
        end = drive_steps(&state, partition) => end,
    };
    (partition, end)
}

/// Which cluster of a move a step's call goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    Source,
    Target,
}

/// What a step does at the nodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Action {
    /// Nothing: the step only records the move.
    Nothing,
    /// One idempotent MIGRATE call on one side's leader.
    Call(Side, MigrateOp),
    /// PREPARE_INCOMING at the target, the whole exporting partition, then its change log in
    /// rounds ([`pre_copy`]).
    PreCopy,
    /// The frozen partition's last changes, or the whole partition when this run did not
    /// pre-copy it ([`final_copy`]).
    FinalCopy,
    /// PURGE at the source in entries of at most [`PURGE_BATCH_KEYS`] keys until it holds none
    /// of the partition ([`purge`]).
    Purge,
}

/// What the admin persists once a step's action succeeded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Then {
    Advance(MoveStep),
    /// The table names the target (`SwitchOwner`); the move goes on at `Purging`.
    Switch,
    /// The move is done (`FinishMove`).
    Finish,
    /// The abort is done (`AbortMove`), after a best-effort ABANDON at the target.
    Abort,
}

/// The step table (`docs/design.md#the-steps-of-a-move`): each persisted step's actions, taken
/// in order, and the metadata command that follows them. Inside the write pause (FREEZE to the
/// switch) only the steps that must be persisted before their action are: the freeze (so a
/// restarted admin knows the source refuses writes) and ACTIVATE (after which the move may not
/// be aborted); the final copy and RELEASE ride along, as both are idempotent.
fn step_plan(step: MoveStep) -> (&'static [Action], Then) {
    use Action::{Call, FinalCopy, Nothing, PreCopy, Purge};
    use MigrateOp as Op;
    use MoveStep as S;
    use Side::{Source, Target};
    match step {
        S::Planned => (&[Nothing], Then::Advance(S::Exporting)),
        S::Exporting => (&[Call(Source, Op::Export)], Then::Advance(S::Precopying)),
        S::Precopying => (&[PreCopy], Then::Advance(S::Freezing)),
        S::Freezing => (
            &[Call(Source, Op::Freeze), FinalCopy],
            Then::Advance(S::Activating),
        ),
        // The separate steps of earlier versions, for records they persisted.
        S::Copying => (&[FinalCopy], Then::Advance(S::Releasing)),
        S::Releasing => (&[Call(Source, Op::Release)], Then::Advance(S::Activating)),
        S::Activating => (
            &[Call(Source, Op::Release), Call(Target, Op::Activate)],
            Then::Switch,
        ),
        S::Purging => (&[Purge], Then::Finish),
        S::Aborting => (&[Call(Source, Op::Restore)], Then::Abort),
    }
}

/// Drives the move of `partition` from its persisted step to its end: each pass takes the
/// step's action, then persists what follows it.
async fn drive_steps(state: &AdminState, p: PartitionId) -> MoveEnd {
    // Set when this task began an abort because the target was down.
    let mut target_down = None;
    loop {
        let meta = state.meta.current();
        let Some(record) = meta.moves.get(&p).cloned() else {
            return MoveEnd::Gone;
        };
        let pausing = matches!(
            record.step,
            MoveStep::Freezing | MoveStep::Copying | MoveStep::Releasing | MoveStep::Activating
        );
        if !pausing {
            // Switched, aborting, or back before the freeze after a failed last round.
            state.mover.leave_pause(p);
        }
        let exists = |side| {
            meta.clusters.contains_key(&match side {
                Side::Source => record.source,
                Side::Target => record.target,
            })
        };
        let (source_exists, target_exists) = (exists(Side::Source), exists(Side::Target));
        drop(meta);
        let result = take_step(state, p, &record, source_exists, target_exists).await;
        let result = match result {
            Ok(Some(end)) => {
                let outcome = if end == MoveEnd::Finished {
                    "finished"
                } else {
                    "aborted"
                };
                report_end(p, &record, outcome);
                return match end {
                    MoveEnd::Aborted { .. } => MoveEnd::Aborted { target_down },
                    end => end,
                };
            }
            Ok(None) => Ok(()),
            Err(e) => Err(e),
        };
        let (s, t) = (record.source, record.target);
        match result {
            Ok(()) => {}
            Err(StepFail::NotLeading) => {
                tracing::info!(
                    partition = p,
                    step = record.step.name(),
                    "move left to the admins' leader"
                );
                return MoveEnd::Stopped;
            }
            Err(StepFail::Changed) => {
                // Let whatever changed the record settle before re-reading it.
                tokio::time::sleep(Duration::from_millis(STEP_RETRY_MIN_MS)).await;
            }
            Err(fail @ (StepFail::Refused(_) | StepFail::TargetDown(_)))
                if !record.step.past_activate() && record.step != MoveStep::Aborting =>
            {
                if matches!(fail, StepFail::TargetDown(_)) {
                    target_down = Some(t);
                }
                let why = fail.why();
                tracing::warn!(
                    partition = p,
                    source = s,
                    target = t,
                    step = record.step.name(),
                    why,
                    "aborting partition move"
                );
                match advance(state, p, MoveStep::Aborting, record.keys_copied).await {
                    Ok(()) => {}
                    Err(StepFail::NotLeading) => return MoveEnd::Stopped,
                    Err(e) => {
                        tracing::warn!(partition = p, error = ?e, "cannot persist the abort; retrying");
                        tokio::time::sleep(Duration::from_millis(REFUSED_RETRY_MS)).await;
                    }
                }
            }
            Err(StepFail::Refused(why) | StepFail::TargetDown(why) | StepFail::Meta(why)) => {
                tracing::error!(
                    partition = p,
                    source = s,
                    target = t,
                    step = record.step.name(),
                    why,
                    "partition move step failed; retrying"
                );
                tokio::time::sleep(Duration::from_millis(REFUSED_RETRY_MS)).await;
            }
        }
    }
}

/// Takes the actions of `record`'s step and persists what follows them; `Some` when the move
/// ended.
async fn take_step(
    state: &AdminState,
    p: PartitionId,
    record: &MoveRecord,
    source_exists: bool,
    target_exists: bool,
) -> Result<Option<MoveEnd>, StepFail> {
    let step = record.step;
    let (actions, then) = step_plan(step);
    let mut copied = record.keys_copied;
    let began = Instant::now();
    for &action in actions {
        let at = Instant::now();
        copied = act(
            state,
            p,
            record,
            action,
            copied,
            source_exists,
            target_exists,
        )
        .await?;
        tracing::debug!(
            partition = p,
            step = step.name(),
            ?action,
            ms = at.elapsed().as_secs_f64() * 1e3,
            "move action taken"
        );
    }
    let acted = Instant::now();
    let result = persist_then(state, p, record, then, copied, target_exists).await;
    tracing::debug!(
        partition = p,
        step = step.name(),
        action_ms = acted.duration_since(began).as_secs_f64() * 1e3,
        persist_ms = acted.elapsed().as_secs_f64() * 1e3,
        "move step taken"
    );
    result
}

/// Takes one action of `record`'s step; returns the records the move copied so far
/// (`copied` unless the action copied).
async fn act(
    state: &AdminState,
    p: PartitionId,
    record: &MoveRecord,
    action: Action,
    copied: u64,
    source_exists: bool,
    target_exists: bool,
) -> Result<u64, StepFail> {
    let step = record.step;
    match action {
        Action::Nothing => {}
        Action::Call(side, op) => {
            let (cluster, exists) = match side {
                Side::Source => (record.source, source_exists),
                Side::Target => (record.target, target_exists),
            };
            // A step that only cleans up has nothing to do on a cluster that is gone (any other
            // step on a missing cluster is answered `Changed` by the call).
            let cleanup = matches!(step, MoveStep::Purging | MoveStep::Aborting);
            if exists || !cleanup {
                let abortable = side == Side::Target && !step.past_activate();
                match migrate(state, step, step_request(p, cluster, op), abortable).await {
                    // Refused: the source holds the partition in no restorable state (it was
                    // never exported or frozen), so there is nothing to restore.
                    Err(StepFail::Refused(why)) if step == MoveStep::Aborting => {
                        tracing::warn!(
                            partition = p,
                            source = cluster,
                            why,
                            "RESTORE refused; nothing to restore"
                        );
                    }
                    other => {
                        other?;
                    }
                }
            }
        }
        Action::PreCopy => return pre_copy(state, p, record).await,
        Action::FinalCopy => return final_copy(state, p, record).await,
        // Nothing to delete on a source that is gone.
        Action::Purge if source_exists => purge(state, p, record.source).await?,
        Action::Purge => {}
    }
    Ok(copied)
}

/// Persists what follows a step whose action succeeded; `Some` when the move ended.
async fn persist_then(
    state: &AdminState,
    p: PartitionId,
    record: &MoveRecord,
    then: Then,
    copied: u64,
    target_exists: bool,
) -> Result<Option<MoveEnd>, StepFail> {
    match then {
        Then::Advance(next) => advance(state, p, next, copied).await.map(|()| None),
        Then::Switch => execute(
            state,
            MetaCommand::SwitchOwner {
                partition: p,
                at_ms: now_ms(),
            },
        )
        .await
        .map(|()| None),
        Then::Finish => execute(state, MetaCommand::FinishMove { partition: p })
            .await
            .map(|()| Some(MoveEnd::Finished)),
        Then::Abort => {
            if target_exists {
                abandon_once(state, p, record.target).await;
            }
            execute(state, MetaCommand::AbortMove { partition: p })
                .await
                .map(|()| Some(MoveEnd::Aborted { target_down: None }))
        }
    }
}

/// Logs and counts the end of a move.
fn report_end(p: PartitionId, record: &MoveRecord, outcome: &'static str) {
    let duration_ms = now_ms().saturating_sub(record.started_at_ms);
    metrics::counter!("ravel_admin_moves_total", "outcome" => outcome).increment(1);
    if outcome == "finished" {
        let pause_ms = record.write_pause_ms().unwrap_or(0);
        metrics::histogram!("ravel_admin_move_duration_seconds").record(duration_ms as f64 / 1e3);
        metrics::histogram!("ravel_admin_move_write_pause_seconds").record(pause_ms as f64 / 1e3);
        tracing::info!(
            partition = p,
            source = record.source,
            target = record.target,
            keys_copied = record.keys_copied,
            duration_ms,
            write_pause_ms = pause_ms,
            "partition moved"
        );
    } else {
        tracing::warn!(
            partition = p,
            source = record.source,
            target = record.target,
            duration_ms,
            "partition move aborted; the source serves it again"
        );
    }
}

/// Persists a meta command through this admin's own Raft, never forwarded: a move step
/// persisted on behalf of a deposed leader would step over the new leader's. A refusal means
/// the record changed under us; a failure while this admin cannot confirm it leads stops the
/// move here ([`StepFail::NotLeading`]).
async fn execute(state: &AdminState, command: MetaCommand) -> Result<(), StepFail> {
    match state.meta.execute_here(command).await {
        Ok(_) => Ok(()),
        Err(MetaError::Refused(MetaRefusal::MoveRefused { why, partition })) => {
            tracing::debug!(partition, why, "move record changed");
            Err(StepFail::Changed)
        }
        Err(MetaError::NotLeader { .. }) => Err(StepFail::NotLeading),
        Err(_) if !state.meta.confirm_leading().await => Err(StepFail::NotLeading),
        Err(e) => Err(StepFail::Meta(e.to_string())),
    }
}

async fn advance(
    state: &AdminState,
    p: PartitionId,
    step: MoveStep,
    keys_copied: u64,
) -> Result<(), StepFail> {
    execute(
        state,
        MetaCommand::AdvanceMove {
            partition: p,
            step,
            keys_copied,
            at_ms: now_ms(),
        },
    )
    .await
}

/// Calls `call` on `cluster`'s leader until it answers, retrying transient failures (no leader,
/// transport, OUTCOME_UNKNOWN) with a backoff. Gives up when the move record leaves `step`, the
/// cluster is gone, a node refuses definitely, or (`abortable`) the cluster stays without a
/// leader for [`TARGET_DOWN_ABORT_MS`].
async fn call_with_retry<T, F, Fut>(
    state: &AdminState,
    p: PartitionId,
    cluster: ClusterId,
    step: MoveStep,
    abortable: bool,
    call: F,
) -> Result<T, StepFail>
where
    F: Fn(ControlClient<Channel>) -> Fut,
    Fut: Future<Output = Result<(T, Option<NodeError>), tonic::Status>>,
{
    let mut backoff = Duration::from_millis(STEP_RETRY_MIN_MS);
    let mut down_since: Option<Instant> = None;
    loop {
        // Only a confirmed leader of the admins' group touches a move's clusters: a deposed one
        // that does not know it yet (cut off from the other admins) must not repeat an older
        // step over what the new leader did since.
        if !state.meta.confirm_leading().await {
            return Err(StepFail::NotLeading);
        }
        {
            let meta = state.meta.current();
            if !meta.clusters.contains_key(&cluster)
                || meta.moves.get(&p).map(|m| m.step) != Some(step)
            {
                return Err(StepFail::Changed);
            }
        }
        let why = match call_leader(state, cluster, &call).await {
            Ok(value) => return Ok(value),
            Err(LeaderCallError::Refused {
                kind: Kind::OutcomeUnknown,
                message,
                node,
            }) => {
                format!("replica {node}: outcome unknown: {message}")
            }
            Err(LeaderCallError::Refused {
                node,
                kind,
                message,
            }) => {
                return Err(StepFail::Refused(format!(
                    "replica {node} of cluster {cluster}: {kind:?}: {message}"
                )));
            }
            Err(LeaderCallError::NoLeader(why)) => why,
        };
        let since = *down_since.get_or_insert_with(Instant::now);
        if abortable && since.elapsed() >= Duration::from_millis(TARGET_DOWN_ABORT_MS) {
            return Err(StepFail::TargetDown(format!(
                "cluster {cluster} without a reachable leader for {TARGET_DOWN_ABORT_MS} ms: {why}"
            )));
        }
        tracing::debug!(
            partition = p,
            cluster,
            step = step.name(),
            why,
            "move step not answered; retrying"
        );
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_millis(STEP_RETRY_MAX_MS));
    }
}

/// One MIGRATE `request` (which names the cluster, partition and op) on that cluster's leader,
/// retried until answered.
async fn migrate(
    state: &AdminState,
    step: MoveStep,
    request: MigrateRequest,
    abortable: bool,
) -> Result<MigrateReply, StepFail> {
    let (p, cluster) = (request.partition, request.cluster_id);
    call_with_retry(state, p, cluster, step, abortable, |mut client| {
        let request = request.clone();
        async move {
            let mut reply = client
                .migrate(control_request(request, limits::CONTROL_RPC_TIMEOUT_MS))
                .await?
                .into_inner();
            let error = reply.error.take();
            Ok((reply, error))
        }
    })
    .await
}

/// A MIGRATE request with no records.
fn step_request(p: PartitionId, cluster: ClusterId, op: MigrateOp) -> MigrateRequest {
    MigrateRequest {
        cluster_id: cluster,
        partition: p,
        op: op as i32,
        ..MigrateRequest::default()
    }
}

/// Deletes the released partition at `source` in bounded entries (one entry deleting 50,000
/// keys held the source's apply for about a second, stalling every other partition there).
async fn purge(state: &AdminState, p: PartitionId, source: ClusterId) -> Result<(), StepFail> {
    loop {
        let _turn = state.mover.yield_to_pause(p).await;
        let request = MigrateRequest {
            max_records: PURGE_BATCH_KEYS,
            ..step_request(p, source, MigrateOp::Purge)
        };
        let reply = migrate(state, MoveStep::Purging, request, false).await?;
        if reply.partition_keys == 0 {
            return Ok(());
        }
    }
}

/// One attempt at ABANDON on the target of an aborted move; failures only leave garbage that
/// the next PREPARE_INCOMING there wipes.
async fn abandon_once(state: &AdminState, p: PartitionId, cluster: ClusterId) {
    let result = call_leader(state, cluster, |mut client| async move {
        let request = step_request(p, cluster, MigrateOp::Abandon);
        let mut reply = client
            .migrate(control_request(request, limits::CONTROL_RPC_TIMEOUT_MS))
            .await?
            .into_inner();
        let error = reply.error.take();
        Ok(((), error))
    })
    .await;
    if let Err(e) = result {
        tracing::info!(partition = p, target = cluster, error = %e, "ABANDON not applied (best effort)");
    }
}

/// The pre-copy, while the source still serves the (exporting) partition: PREPARE_INCOMING at
/// the target, the whole partition in key order, then rounds over its change log while each
/// round copies fewer changes than the one before, at most [`PRECOPY_MAX_ROUNDS`], until one
/// copies at most [`PRECOPY_SETTLED_CHANGES`]. Remembers where the change log was copied to
/// for [`final_copy`]. Returns the records copied.
async fn pre_copy(
    state: &AdminState,
    p: PartitionId,
    record: &MoveRecord,
) -> Result<u64, StepFail> {
    let step = MoveStep::Precopying;
    state.mover.forget_tail(p);
    prepare_target(state, p, record, step).await?;
    let mut copied = copy_records(state, p, record, step).await?;
    let mut tail = Tail::default();
    let mut previous_round = u64::MAX;
    for round in 1..=PRECOPY_MAX_ROUNDS {
        let changes = copy_changes(state, p, record, step, &mut tail, copied).await?;
        copied += changes;
        tracing::debug!(partition = p, round, changes, "pre-copy round");
        if changes <= PRECOPY_SETTLED_CHANGES || changes >= previous_round {
            break;
        }
        previous_round = changes;
    }
    // While a replica joins either cluster, its commits may wait for the newcomer (measured:
    // an ACTIVATE took a second while the target grew from one replica to three), so the
    // pause waits for that to end. One move at a time freezes; the changes made while this one
    // waited are copied before the freeze, so its pause stays short.
    wait_membership_settled(state, p, record).await;
    state.mover.enter_pause(p).await;
    copied += copy_changes(state, p, record, step, &mut tail, copied).await?;
    state.mover.set_tail(p, tail);
    Ok(copied)
}

/// Waits until neither cluster of the move reports a membership change in progress, at most
/// [`PAUSE_MEMBERSHIP_WAIT_MS`]. A cluster that does not answer counts as settled: the steps
/// after the wait find out about it.
async fn wait_membership_settled(state: &AdminState, p: PartitionId, record: &MoveRecord) {
    let began = Instant::now();
    loop {
        let mut changing = Vec::new();
        for cluster in [record.source, record.target] {
            if membership_changing(state, cluster).await {
                changing.push(cluster);
            }
        }
        if changing.is_empty() {
            return;
        }
        if began.elapsed() >= Duration::from_millis(PAUSE_MEMBERSHIP_WAIT_MS) {
            tracing::warn!(
                partition = p,
                clusters = ?changing,
                waited_ms = PAUSE_MEMBERSHIP_WAIT_MS,
                "membership still changing; freezing the partition anyway"
            );
            return;
        }
        tracing::debug!(partition = p, clusters = ?changing, "membership changing; the freeze waits");
        tokio::time::sleep(Duration::from_millis(MEMBERSHIP_POLL_MS)).await;
    }
}

/// Whether `cluster`'s leader reports a membership change in progress; a cluster without a
/// leader that answers counts as not changing. Every replica answers Status, so a reply from
/// one that does not lead is passed back as "not leader" (with its hint): `call_leader` then
/// asks the next replica and does not remember a follower as the leader.
async fn membership_changing(state: &AdminState, cluster: ClusterId) -> bool {
    let answer = call_leader(state, cluster, |mut client| async move {
        let reply = client
            .status(control_request(StatusRequest {}, STATUS_DEADLINE_MS))
            .await?
            .into_inner();
        if reply.role != "leader" {
            let not_leader = NodeError {
                kind: Kind::NotLeader as i32,
                message: format!("replica {} is {}", reply.node_id, reply.role),
                leader_id: reply.leader_id,
                ..NodeError::default()
            };
            return Ok((false, Some(not_leader)));
        }
        Ok((reply.membership_changing, None))
    })
    .await;
    answer.unwrap_or(false)
}

/// The copy while the source is frozen: the change log after where [`pre_copy`] left it or,
/// when this run did not pre-copy the partition (a move resumed after an admin restart, or
/// persisted by an older version), PREPARE_INCOMING and the whole partition. Returns the
/// records copied by the whole move.
async fn final_copy(
    state: &AdminState,
    p: PartitionId,
    record: &MoveRecord,
) -> Result<u64, StepFail> {
    let step = record.step;
    match state.mover.tail(p) {
        Some(mut tail) => {
            let changes =
                copy_changes(state, p, record, step, &mut tail, record.keys_copied).await?;
            state.mover.set_tail(p, tail);
            Ok(record.keys_copied + changes)
        }
        None => {
            prepare_target(state, p, record, step).await?;
            copy_records(state, p, record, step).await
        }
    }
}

async fn prepare_target(
    state: &AdminState,
    p: PartitionId,
    record: &MoveRecord,
    step: MoveStep,
) -> Result<(), StepFail> {
    let request = step_request(p, record.target, MigrateOp::PrepareIncoming);
    migrate(state, step, request, true).await?;
    state.mover.set_progress(p, 0);
    Ok(())
}

/// The whole partition from the source in key order, INGESTed at the target in batches.
/// Returns the number of records copied.
async fn copy_records(
    state: &AdminState,
    p: PartitionId,
    record: &MoveRecord,
    step: MoveStep,
) -> Result<u64, StepFail> {
    let (s, t) = (record.source, record.target);
    let mut after: Option<Vec<u8>> = None;
    let mut copied: u64 = 0;
    loop {
        let _turn = match step {
            MoveStep::Precopying => state.mover.yield_to_pause(p).await,
            _ => None,
        };
        let batch = scan(state, p, s, step, ScanFrom::Key(after.clone())).await?;
        if !batch.done && batch.records.is_empty() {
            return Err(StepFail::Refused(format!(
                "cluster {s} answered an empty scan batch that is not the last"
            )));
        }
        if let Some(last) = batch.records.last() {
            after = Some(last.key.clone());
        }
        let (op, floor) = (MigrateOp::Ingest, batch.version_floor);
        copied += ingest(state, p, t, step, op, batch.records, floor, copied).await?;
        if batch.done {
            return Ok(copied);
        }
    }
}

/// Copies the source's change log after `tail` to the target (INGEST_CHANGES in batches) up to
/// the log's end as of the last batch read, and moves `tail` on. `copied_before` is the move's
/// count so far, for the progress shown. Returns the changes copied.
async fn copy_changes(
    state: &AdminState,
    p: PartitionId,
    record: &MoveRecord,
    step: MoveStep,
    tail: &mut Tail,
    copied_before: u64,
) -> Result<u64, StepFail> {
    let (s, t) = (record.source, record.target);
    let mut copied = 0;
    loop {
        let _turn = match step {
            MoveStep::Precopying => state.mover.yield_to_pause(p).await,
            _ => None,
        };
        let batch = scan(state, p, s, step, ScanFrom::Version(tail.after)).await?;
        if !batch.done && batch.records.is_empty() {
            return Err(StepFail::Refused(format!(
                "cluster {s} answered an empty change batch that is not the last"
            )));
        }
        // Nothing new and no newer version counter: the target already has all of it.
        if !batch.records.is_empty() || batch.version_floor > tail.floor {
            let (op, floor) = (MigrateOp::IngestChanges, batch.version_floor);
            let total = copied_before + copied;
            copied += ingest(state, p, t, step, op, batch.records, floor, total).await?;
            tail.floor = floor;
        }
        tail.after = tail.after.max(batch.last_version);
        if batch.done {
            return Ok(copied);
        }
    }
}

/// Sends one scan batch's `records` to the target with `op` (INGEST or INGEST_CHANGES) in
/// bounded chunks, counting them for the progress (`copied_before` of the move so far) and the
/// rate. Returns the records sent.
#[allow(clippy::too_many_arguments)]
async fn ingest(
    state: &AdminState,
    p: PartitionId,
    target: ClusterId,
    step: MoveStep,
    op: MigrateOp,
    records: Vec<MigrateRecord>,
    version_floor: u64,
    copied_before: u64,
) -> Result<u64, StepFail> {
    let mut sent = 0;
    for chunk in ingest_chunks(records) {
        let n = chunk.len() as u64;
        let bytes = record_bytes(&chunk);
        let request = MigrateRequest {
            records: chunk,
            version_floor,
            ..step_request(p, target, op)
        };
        migrate(state, step, request, true).await?;
        sent += n;
        state.mover.copied(p, copied_before + sent, n, bytes);
    }
    Ok(sent)
}

/// Bytes of keys and values in `records` (for the migration rate).
fn record_bytes(records: &[MigrateRecord]) -> u64 {
    records
        .iter()
        .map(|r| (r.key.len() + r.value.len()) as u64)
        .sum()
}

/// Where a scan starts: after a key (records in key order; `None` = from the start) or after a
/// change-log version.
enum ScanFrom {
    Key(Option<Vec<u8>>),
    Version(u64),
}

/// One ScanPartition batch from the source's leader.
async fn scan(
    state: &AdminState,
    p: PartitionId,
    cluster: ClusterId,
    step: MoveStep,
    from: ScanFrom,
) -> Result<ScanPartitionReply, StepFail> {
    let request = match from {
        ScanFrom::Key(after) => ScanPartitionRequest {
            cluster_id: cluster,
            partition: p,
            from_start: after.is_none(),
            after_key: after.unwrap_or_default(),
            limit: INGEST_MAX_RECORDS as u32,
            ..ScanPartitionRequest::default()
        },
        ScanFrom::Version(after_version) => ScanPartitionRequest {
            cluster_id: cluster,
            partition: p,
            limit: INGEST_MAX_RECORDS as u32,
            changes: true,
            after_version,
            ..ScanPartitionRequest::default()
        },
    };
    call_with_retry(state, p, cluster, step, false, |mut client| {
        let request = request.clone();
        async move {
            let mut reply = client
                .scan_partition(control_request(request, limits::CONTROL_RPC_TIMEOUT_MS))
                .await?
                .into_inner();
            let error = reply.error.take();
            Ok((reply, error))
        }
    })
    .await
}

/// Splits records into INGEST batches of at most [`INGEST_MAX_RECORDS`] records and
/// [`INGEST_MAX_BYTES`] (a single larger record still goes alone). Always at least one batch, so
/// that an empty partition still carries its version floor to the target.
pub(crate) fn ingest_chunks(records: Vec<MigrateRecord>) -> Vec<Vec<MigrateRecord>> {
    let mut chunks = Vec::new();
    let mut current: Vec<MigrateRecord> = Vec::new();
    let mut bytes = 0usize;
    for r in records {
        let size = r.key.len() + r.value.len() + RECORD_OVERHEAD_BYTES;
        if !current.is_empty()
            && (current.len() >= INGEST_MAX_RECORDS || bytes + size > INGEST_MAX_BYTES)
        {
            chunks.push(std::mem::take(&mut current));
            bytes = 0;
        }
        bytes += size;
        current.push(r);
    }
    if !current.is_empty() || chunks.is_empty() {
        chunks.push(current);
    }
    chunks
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meta::MetaStore;
    use ravel_proto::v1::control_server::{Control, ControlServer};
    use ravel_proto::v1::{
        AssignReply, AssignRequest, JoinReply, JoinRequest, LeaveReply, LeaveRequest,
        PartitionStateView, StatusReply, StatusRequest,
    };
    use tonic::{Request, Response, Status};

    /// A fake partition's records: key → (version, value).
    type FakeRecords = BTreeMap<Vec<u8>, (u64, Vec<u8>)>;

    /// One partition as a fake cluster holds it.
    #[derive(Clone, Debug, Default)]
    struct FakePartition {
        state: i32,
        records: FakeRecords,
        floor: u64,
        /// The change log while exporting: version → key.
        changes: BTreeMap<u64, Vec<u8>>,
        /// The records when RELEASE was applied (before a PURGE empties them).
        at_release: Option<FakeRecords>,
    }

    impl FakePartition {
        /// A client write while exporting: a put of a new key, and a delete of the first key
        /// still there; both logged.
        fn client_writes(&mut self) {
            self.floor += 1;
            let key = format!("w{:05}", self.floor).into_bytes();
            self.records
                .insert(key.clone(), (self.floor, b"2".to_vec()));
            self.changes.insert(self.floor, key);
            if let Some(first) = self.records.keys().next().cloned() {
                self.floor += 1;
                self.records.remove(&first);
                self.changes.insert(self.floor, first);
            }
        }
    }

    /// A one-replica cluster (always the leader) that applies migration steps with the node
    /// semantics of the proto, and records every step it applied.
    #[derive(Default)]
    struct FakeCluster {
        node: u64,
        cluster: u64,
        partitions: Mutex<BTreeMap<PartitionId, FakePartition>>,
        ops: Mutex<Vec<String>>,
        /// Answer OUTCOME_UNKNOWN (without applying) to this many Migrate calls first.
        flaky: Mutex<u32>,
        /// Client writes applied at each scan of an exporting partition.
        churn: Mutex<u32>,
        /// Report a membership change in progress to this many Status calls first.
        membership_changing: Mutex<u32>,
        /// Answer Status as a follower (with no leader known) rather than as the leader.
        follower: Mutex<bool>,
    }

    fn wrong_owner(why: &str) -> Option<NodeError> {
        Some(NodeError {
            kind: Kind::WrongOwner as i32,
            message: why.into(),
            ..NodeError::default()
        })
    }

    /// The served handle of a fake cluster (the test keeps another to inspect it).
    struct Fake(Arc<FakeCluster>);

    impl std::ops::Deref for Fake {
        type Target = FakeCluster;
        fn deref(&self) -> &FakeCluster {
            &self.0
        }
    }

    #[tonic::async_trait]
    impl Control for Fake {
        async fn status(&self, _: Request<StatusRequest>) -> Result<Response<StatusReply>, Status> {
            let membership_changing = {
                let mut left = lock(&self.membership_changing);
                let changing = *left > 0;
                *left = left.saturating_sub(1);
                changing
            };
            if membership_changing {
                lock(&self.ops).push("Status: membership changing".into());
            }
            Ok(Response::new(StatusReply {
                node_id: self.node,
                cluster_id: self.cluster,
                role: if *lock(&self.follower) {
                    "follower"
                } else {
                    "leader"
                }
                .into(),
                term: 1,
                membership_changing,
                ..StatusReply::default()
            }))
        }
        async fn join(&self, _: Request<JoinRequest>) -> Result<Response<JoinReply>, Status> {
            Err(Status::unimplemented("not used"))
        }
        async fn leave(&self, _: Request<LeaveRequest>) -> Result<Response<LeaveReply>, Status> {
            Err(Status::unimplemented("not used"))
        }
        async fn assign(&self, _: Request<AssignRequest>) -> Result<Response<AssignReply>, Status> {
            Err(Status::unimplemented("not used"))
        }

        async fn migrate(
            &self,
            r: Request<MigrateRequest>,
        ) -> Result<Response<MigrateReply>, Status> {
            use PartitionStateView as V;
            let req = r.into_inner();
            {
                let mut flaky = lock(&self.flaky);
                if *flaky > 0 {
                    *flaky -= 1;
                    return Ok(Response::new(MigrateReply {
                        error: Some(NodeError {
                            kind: Kind::OutcomeUnknown as i32,
                            message: "timed out".into(),
                            ..NodeError::default()
                        }),
                        ..MigrateReply::default()
                    }));
                }
            }
            let op = MigrateOp::try_from(req.op).unwrap_or(MigrateOp::Unspecified);
            let mut parts = lock(&self.partitions);
            let part = parts.entry(req.partition).or_default();
            let state = V::try_from(part.state).unwrap_or(V::Absent);
            let mut error = None;
            let mut applied = 0;
            match (op, state) {
                (MigrateOp::Export, V::Serving) => {
                    part.state = V::Exporting as i32;
                    part.changes.clear();
                }
                (MigrateOp::Export, V::Exporting) => {}
                (MigrateOp::Freeze, V::Serving | V::Exporting | V::Frozen) => {
                    if state == V::Exporting {
                        // Writes that came in after the last pre-copy round, before the freeze.
                        for _ in 0..*lock(&self.churn) {
                            part.client_writes();
                        }
                    }
                    part.state = V::Frozen as i32;
                }
                (MigrateOp::PrepareIncoming, V::Absent | V::Incoming | V::Released) => {
                    *part = FakePartition {
                        state: V::Incoming as i32,
                        ..FakePartition::default()
                    };
                }
                (MigrateOp::Ingest, V::Incoming) => {
                    for rec in req.records {
                        part.records.insert(rec.key, (rec.version, rec.value));
                        applied += 1;
                    }
                    part.floor = part.floor.max(req.version_floor);
                }
                (MigrateOp::IngestChanges, V::Incoming) => {
                    for rec in req.records {
                        let here = part.records.get(&rec.key).map_or(0, |(v, _)| *v);
                        if rec.version > here {
                            if rec.deleted {
                                part.records.remove(&rec.key);
                            } else {
                                part.records.insert(rec.key, (rec.version, rec.value));
                            }
                            applied += 1;
                        }
                    }
                    part.floor = part.floor.max(req.version_floor);
                }
                (MigrateOp::Release, V::Frozen | V::Released) => {
                    if state == V::Frozen {
                        part.at_release = Some(part.records.clone());
                    }
                    part.state = V::Released as i32;
                }
                (MigrateOp::Activate, V::Incoming | V::Serving) => part.state = V::Serving as i32,
                (MigrateOp::Purge, V::Released) if req.max_records > 0 => {
                    let first: Vec<Vec<u8>> = (part.records.keys())
                        .take(req.max_records as usize)
                        .cloned()
                        .collect();
                    for key in first {
                        part.records.remove(&key);
                    }
                }
                (MigrateOp::Purge, V::Released) => part.records.clear(),
                (MigrateOp::Restore, V::Exporting | V::Frozen | V::Released | V::Serving) => {
                    part.state = V::Serving as i32;
                    part.changes.clear();
                }
                (MigrateOp::Abandon, V::Incoming | V::Absent) => {
                    *part = FakePartition::default();
                }
                (op, state) => error = wrong_owner(&format!("{op:?} not allowed in {state:?}")),
            }
            if error.is_none() {
                lock(&self.ops).push(format!("{:?} p{}", op, req.partition));
            }
            Ok(Response::new(MigrateReply {
                state: part.state,
                records_applied: applied,
                partition_keys: part.records.len() as u64,
                error,
            }))
        }

        async fn scan_partition(
            &self,
            r: Request<ScanPartitionRequest>,
        ) -> Result<Response<ScanPartitionReply>, Status> {
            use PartitionStateView as V;
            let req = r.into_inner();
            let mut parts = lock(&self.partitions);
            let part = parts.entry(req.partition).or_default();
            let state = V::try_from(part.state).unwrap_or(V::Absent);
            if state == V::Exporting {
                for _ in 0..*lock(&self.churn) {
                    part.client_writes();
                }
            }
            let part = part.clone();
            if !matches!(state, V::Exporting | V::Frozen) {
                return Ok(Response::new(ScanPartitionReply {
                    error: wrong_owner("neither exporting nor frozen"),
                    ..ScanPartitionReply::default()
                }));
            }
            if req.changes {
                let mut records: Vec<MigrateRecord> = Vec::new();
                let mut last_version = req.after_version;
                for (v, key) in part.changes.range(req.after_version + 1..) {
                    if records.len() >= req.limit as usize {
                        break;
                    }
                    last_version = *v;
                    records.push(match part.records.get(key) {
                        Some((version, value)) => MigrateRecord {
                            key: key.clone(),
                            version: *version,
                            value: value.clone(),
                            deleted: false,
                        },
                        None => MigrateRecord {
                            key: key.clone(),
                            version: *v,
                            value: Vec::new(),
                            deleted: true,
                        },
                    });
                }
                return Ok(Response::new(ScanPartitionReply {
                    records,
                    done: part.changes.range(last_version + 1..).next().is_none(),
                    version_floor: part.floor,
                    last_version,
                    error: None,
                }));
            }
            let mut records: Vec<MigrateRecord> = part
                .records
                .iter()
                .filter(|(k, _)| req.from_start || **k > req.after_key)
                .map(|(k, (v, val))| MigrateRecord {
                    key: k.clone(),
                    version: *v,
                    value: val.clone(),
                    deleted: false,
                })
                .collect();
            let done = records.len() <= req.limit as usize;
            records.truncate(req.limit as usize);
            Ok(Response::new(ScanPartitionReply {
                records,
                done,
                version_floor: part.floor,
                last_version: 0,
                error: None,
            }))
        }
    }

    /// Serves a fake cluster on a loopback port until `stop`.
    async fn serve(fake: Arc<FakeCluster>, stop: CancellationToken) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(ControlServer::new(Fake(fake)))
                .serve_with_incoming_shutdown(
                    tokio_stream::wrappers::TcpListenerStream::new(listener),
                    stop.cancelled_owned(),
                ),
        );
        addr
    }

    struct Setup {
        _dir: tempfile::TempDir,
        state: SharedState,
        source: Arc<FakeCluster>,
        target: Arc<FakeCluster>,
        stop: CancellationToken,
    }

    /// Admin with P=8: cluster 1 (node 1) owns everything and serves partition 3 with
    /// `keys` records; then cluster 2 (node 2) is added, so some partitions are planned to it.
    async fn setup(keys: u64) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let state: SharedState = Arc::new(AdminState::new(
            MetaStore::open(dir.path(), Some(8)).await.unwrap(),
        ));
        let stop = CancellationToken::new();
        let source = Arc::new(FakeCluster {
            node: 1,
            cluster: 1,
            ..FakeCluster::default()
        });
        let target = Arc::new(FakeCluster {
            node: 2,
            cluster: 2,
            ..FakeCluster::default()
        });
        {
            let mut parts = lock(&source.partitions);
            for p in 0..8 {
                parts.insert(
                    p,
                    FakePartition {
                        state: PartitionStateView::Serving as i32,
                        ..FakePartition::default()
                    },
                );
            }
            let part = parts.get_mut(&3).unwrap();
            for i in 0..keys {
                part.records
                    .insert(format!("k{i:05}").into_bytes(), (i + 1, b"1".to_vec()));
            }
            part.floor = keys + 7;
        }
        for (fake, new_cluster) in [(&source, true), (&target, true)] {
            let addr = serve(Arc::clone(fake), stop.clone()).await;
            state
                .meta
                .execute(MetaCommand::RegisterReplica {
                    token: fake.node,
                    raft_addr: addr.clone(),
                    grpc_addr: addr,
                    new_cluster,
                })
                .await
                .unwrap();
            if fake.node == 1 {
                state.meta.ensure_has_data().await.unwrap();
            }
        }
        Setup {
            _dir: dir,
            state,
            source,
            target,
            stop,
        }
    }

    async fn start(s: &Setup) {
        s.state
            .meta
            .execute(MetaCommand::StartMove {
                partition: 3,
                source: 1,
                target: 2,
                at_ms: 1,
            })
            .await
            .unwrap();
    }

    fn ops(f: &FakeCluster) -> Vec<String> {
        lock(&f.ops).clone()
    }

    /// One move at a time is in its write pause: a second one waits to enter until the first
    /// leaves; a background batch of another move gets no turn while a pause is on (it goes
    /// ahead without one after the bounded wait) and gets one once it ended; the pausing move's
    /// own batches never wait for it.
    #[tokio::test]
    async fn one_move_pauses_at_a_time_and_background_batches_yield() {
        let mover = Arc::new(Mover::new());
        assert!(mover.yield_to_pause(1).await.is_some());
        mover.enter_pause(1).await;
        assert!(mover.yield_to_pause(1).await.is_none(), "its own batch");
        assert!(
            mover.yield_to_pause(2).await.is_none(),
            "no turn during a pause"
        );
        let second = tokio::spawn({
            let mover = Arc::clone(&mover);
            async move { mover.enter_pause(2).await }
        });
        tokio::task::yield_now().await;
        assert!(
            !second.is_finished(),
            "the second pause waits for the first"
        );
        mover.leave_pause(2);
        assert!(!second.is_finished(), "leaving is by the pausing move only");
        mover.leave_pause(1);
        second.await.unwrap();
        assert!(mover.is_pausing(2));
        mover.leave_pause(2);
        let turn = mover.yield_to_pause(3).await;
        assert!(turn.is_some(), "a turn once no pause is on");
    }

    /// A move does not freeze while a cluster of it changes its membership: it asks again until
    /// the change is over, then freezes.
    #[tokio::test]
    async fn the_freeze_waits_for_a_membership_change_to_end() {
        let s = setup(20).await;
        *lock(&s.source.membership_changing) = 3;
        start(&s).await;
        assert_eq!(drive_steps(&s.state, 3).await, MoveEnd::Finished);
        let source_ops = ops(&s.source);
        let freeze = source_ops.iter().position(|op| op == "Freeze p3").unwrap();
        let changing_before_freeze = source_ops[..freeze]
            .iter()
            .filter(|op| op.starts_with("Status"))
            .count();
        assert_eq!(changing_before_freeze, 3, "{source_ops:?}");
    }

    /// An admin that cannot confirm it leads the admins' group (here its Raft has stopped)
    /// takes no step at the clusters: the move is left, as persisted, to the group's leader.
    #[tokio::test]
    async fn an_admin_that_does_not_lead_takes_no_step() {
        let s = setup(20).await;
        start(&s).await;
        let migrates =
            |f: &FakeCluster| ops(f).iter().filter(|op| !op.starts_with("Status")).count();
        let before = (migrates(&s.source), migrates(&s.target));
        s.state.meta.close().await;
        assert!(!s.state.meta.confirm_leading().await);
        assert_eq!(drive_steps(&s.state, 3).await, MoveEnd::Stopped);
        assert_eq!((migrates(&s.source), migrates(&s.target)), before);
        assert!(
            s.state.meta.current().moves.contains_key(&3),
            "the move stays as persisted"
        );
    }

    /// A replica that answers Status as a follower is neither believed about the membership nor
    /// remembered as its cluster's leader.
    #[tokio::test]
    async fn a_follower_answering_status_is_not_taken_for_the_leader() {
        let s = setup(1).await;
        *lock(&s.source.follower) = true;
        *lock(&s.source.membership_changing) = 1;
        s.state.pool.forget_leader(1, 1);
        assert!(!membership_changing(&s.state, 1).await);
        assert_eq!(s.state.pool.leader(1), None);
        *lock(&s.source.follower) = false;
        assert!(
            !membership_changing(&s.state, 1).await,
            "the one 'changing' answer was used up"
        );
        assert_eq!(s.state.pool.leader(1), Some(1));
    }

    /// A source holding more than one PURGE entry's worth of keys is purged in entries of at
    /// most `PURGE_BATCH_KEYS` keys, until none is left.
    #[tokio::test]
    async fn a_large_partition_is_purged_in_bounded_entries() {
        let keys = 2 * u64::from(PURGE_BATCH_KEYS) + 100;
        let s = setup(keys).await;
        start(&s).await;
        assert_eq!(drive_steps(&s.state, 3).await, MoveEnd::Finished);
        assert_eq!(lock(&s.target.partitions)[&3].records.len() as u64, keys);
        assert!(lock(&s.source.partitions)[&3].records.is_empty());
        let purges = ops(&s.source).iter().filter(|op| *op == "Purge p3").count();
        assert_eq!(purges, 3);
    }

    /// One move driven to completion moves every record with its version and the version floor,
    /// takes the steps in order at the right clusters (surviving an OUTCOME_UNKNOWN answer),
    /// switches the table, purges the source and drops the record.
    #[tokio::test]
    async fn one_move_runs_to_completion() {
        let s = setup(1200).await;
        start(&s).await;
        *lock(&s.target.flaky) = 2;
        let epoch = s.state.meta.current().table.epoch;
        assert_eq!(drive_steps(&s.state, 3).await, MoveEnd::Finished);

        let meta = s.state.meta.current();
        assert_eq!(meta.table.owner(3), Some(2));
        assert_eq!(meta.table.epoch, epoch + 1);
        assert!(meta.moves.is_empty());
        let t = lock(&s.target.partitions)[&3].clone();
        assert_eq!(t.state, PartitionStateView::Serving as i32);
        assert_eq!(t.records.len(), 1200);
        assert_eq!(t.records[b"k00041".as_slice()].0, 42);
        assert_eq!(t.floor, 1207);
        let src = lock(&s.source.partitions)[&3].clone();
        assert_eq!(src.state, PartitionStateView::Released as i32);
        assert!(src.records.is_empty(), "the source's copy is purged");
        assert_eq!(
            ops(&s.source),
            ["Export p3", "Freeze p3", "Release p3", "Purge p3"]
        );
        // 1200 records: three INGEST batches of at most 512, then one (empty) change batch
        // carrying the version counter; the freeze finds nothing newer to copy.
        assert_eq!(
            ops(&s.target),
            [
                "PrepareIncoming p3",
                "Ingest p3",
                "Ingest p3",
                "Ingest p3",
                "IngestChanges p3",
                "Activate p3"
            ]
        );
        s.stop.cancel();
    }

    /// Writes and deletes that clients make while the partition is pre-copied reach the target
    /// through the change log — in the rounds while the source serves, and in the last one
    /// after the freeze — so that at RELEASE the target holds exactly the source's records.
    #[tokio::test]
    async fn pre_copy_carries_writes_made_during_the_copy() {
        let s = setup(1200).await;
        *lock(&s.source.churn) = 3;
        start(&s).await;
        assert_eq!(drive_steps(&s.state, 3).await, MoveEnd::Finished);
        let src = lock(&s.source.partitions)[&3].clone();
        let at_release = src.at_release.expect("the source was released");
        let t = lock(&s.target.partitions)[&3].clone();
        assert_eq!(t.records, at_release, "the target has the source's records");
        assert!(
            at_release.keys().any(|k| k.starts_with(b"w")),
            "clients wrote during the copy"
        );
        assert!(
            !at_release.contains_key(b"k00000".as_slice()),
            "clients deleted during the copy"
        );
        assert_eq!(t.floor, src.floor);
        let changes = ops(&s.target)
            .iter()
            .filter(|o| o.starts_with("IngestChanges"))
            .count();
        assert!(changes >= 2, "rounds of changes: {:?}", ops(&s.target));
        s.stop.cancel();
    }

    /// The step table and the metadata agree: each step's action is followed by the step that
    /// `MoveStep::next` allows, and only the source or the target is called, never both.
    #[test]
    fn step_table_follows_the_move_order() {
        let mut step = MoveStep::Planned;
        let mut seen = vec![step];
        while let (_, Then::Advance(next)) = step_plan(step) {
            assert_eq!(step.next(), Some(next), "after {step:?}");
            step = next;
            seen.push(step);
        }
        assert_eq!(step, MoveStep::Activating);
        assert_eq!(step_plan(step).1, Then::Switch);
        assert_eq!(step_plan(MoveStep::Purging).1, Then::Finish);
        assert_eq!(step_plan(MoveStep::Aborting).1, Then::Abort);
        assert_eq!(
            seen,
            [
                MoveStep::Planned,
                MoveStep::Exporting,
                MoveStep::Precopying,
                MoveStep::Freezing,
                MoveStep::Activating
            ]
        );
        let calls = |step| step_plan(step).0.to_vec();
        // Writes stop at FREEZE: every step before it leaves the source serving.
        for step in seen.iter().take_while(|s| **s != MoveStep::Freezing) {
            assert!(!calls(*step).contains(&Action::Call(Side::Source, MigrateOp::Freeze)));
        }
        // The final copy comes after the freeze, RELEASE before ACTIVATE.
        assert_eq!(
            calls(MoveStep::Freezing),
            [
                Action::Call(Side::Source, MigrateOp::Freeze),
                Action::FinalCopy
            ]
        );
        assert_eq!(
            calls(MoveStep::Activating),
            [
                Action::Call(Side::Source, MigrateOp::Release),
                Action::Call(Side::Target, MigrateOp::Activate)
            ]
        );
        // A record an earlier version persisted at its separate steps goes on to ACTIVATE.
        assert_eq!(
            step_plan(MoveStep::Copying).1,
            Then::Advance(MoveStep::Releasing)
        );
        assert_eq!(
            step_plan(MoveStep::Releasing).1,
            Then::Advance(MoveStep::Activating)
        );
    }

    /// A move resumed from each persisted step (as after an admin crash right after persisting
    /// it, with the previous steps already applied at the nodes) finishes with the same result.
    #[tokio::test]
    async fn resumes_from_every_persisted_step() {
        use MoveStep as S;
        let current = [
            S::Planned,
            S::Exporting,
            S::Precopying,
            S::Freezing,
            S::Activating,
            S::Purging,
        ];
        // The separate copying and releasing steps of records an earlier version persisted.
        let earlier = [
            S::Planned,
            S::Exporting,
            S::Precopying,
            S::Freezing,
            S::Copying,
            S::Releasing,
            S::Activating,
            S::Purging,
        ];
        for order in [&current[..], &earlier[..]] {
            resume_from_every_step_of(order).await;
        }
    }

    async fn resume_from_every_step_of(order: &[MoveStep]) {
        for (i, &resume_at) in order.iter().enumerate() {
            let s = setup(20).await;
            start(&s).await;
            // Take the steps before `resume_at` by hand, as a previous admin run would have.
            for &step in &order[1..=i] {
                if step == MoveStep::Purging {
                    s.state
                        .meta
                        .execute(MetaCommand::SwitchOwner {
                            partition: 3,
                            at_ms: 5,
                        })
                        .await
                        .unwrap();
                } else {
                    advance(&s.state, 3, step, 0).await.unwrap();
                }
                // The action of the step before the next one was taken too.
                let previous = order[order.iter().position(|x| *x == step).unwrap() - 1];
                match previous {
                    MoveStep::Exporting => {
                        lock(&s.source.partitions).get_mut(&3).unwrap().state =
                            PartitionStateView::Exporting as i32;
                    }
                    MoveStep::Freezing => {
                        lock(&s.source.partitions).get_mut(&3).unwrap().state =
                            PartitionStateView::Frozen as i32;
                    }
                    MoveStep::Precopying | MoveStep::Copying => {
                        let mut parts = lock(&s.target.partitions);
                        let src = lock(&s.source.partitions)[&3].clone();
                        parts.insert(
                            3,
                            FakePartition {
                                state: PartitionStateView::Incoming as i32,
                                ..src
                            },
                        );
                    }
                    MoveStep::Releasing => {
                        lock(&s.source.partitions).get_mut(&3).unwrap().state =
                            PartitionStateView::Released as i32;
                    }
                    MoveStep::Activating => {
                        lock(&s.source.partitions).get_mut(&3).unwrap().state =
                            PartitionStateView::Released as i32;
                        lock(&s.target.partitions).get_mut(&3).unwrap().state =
                            PartitionStateView::Serving as i32;
                    }
                    _ => {}
                }
            }
            assert_eq!(s.state.meta.current().moves[&3].step, resume_at);
            assert_eq!(
                drive_steps(&s.state, 3).await,
                MoveEnd::Finished,
                "resumed at {resume_at:?}"
            );
            let meta = s.state.meta.current();
            assert_eq!(meta.table.owner(3), Some(2), "resumed at {resume_at:?}");
            assert!(meta.moves.is_empty());
            let t = lock(&s.target.partitions)[&3].clone();
            assert_eq!(
                t.state,
                PartitionStateView::Serving as i32,
                "resumed at {resume_at:?}"
            );
            assert_eq!(t.records.len(), 20, "resumed at {resume_at:?}");
            let src = lock(&s.source.partitions)[&3].clone();
            assert_eq!(src.state, PartitionStateView::Released as i32);
            assert!(src.records.is_empty());
            s.stop.cancel();
        }
    }

    /// A target with no reachable leader before ACTIVATE aborts the move: the source serves the
    /// partition again and the record is gone; the table never changed.
    #[tokio::test]
    async fn unreachable_target_aborts_before_activate() {
        let s = setup(5).await;
        // Point cluster 2's replica at a port nobody listens on.
        let dead = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .to_string();
        s.state
            .meta
            .execute(MetaCommand::RegisterReplica {
                token: 2,
                raft_addr: dead.clone(),
                grpc_addr: dead,
                new_cluster: true,
            })
            .await
            .unwrap();
        start(&s).await;
        let epoch = s.state.meta.current().table.epoch;
        assert_eq!(
            drive_steps(&s.state, 3).await,
            MoveEnd::Aborted {
                target_down: Some(2)
            }
        );
        let meta = s.state.meta.current();
        assert!(meta.moves.is_empty());
        assert_eq!(meta.table.owner(3), Some(1));
        assert_eq!(meta.table.epoch, epoch);
        assert_eq!(
            lock(&s.source.partitions)[&3].state,
            PartitionStateView::Serving as i32
        );
        // The target fails at PREPARE_INCOMING, before the source ever stopped taking writes.
        assert_eq!(ops(&s.source), ["Export p3", "Restore p3"]);
        s.stop.cancel();
    }

    /// An abort because the target was down backs off every move to that target, not only the
    /// aborted partition: the source's next partitions are not frozen one after another, each
    /// refusing writes until it aborts in turn.
    #[tokio::test]
    async fn target_down_abort_backs_off_every_move_to_that_target() {
        let s = setup(5).await;
        let dead = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .to_string();
        s.state
            .meta
            .execute(MetaCommand::RegisterReplica {
                token: 2,
                raft_addr: dead.clone(),
                grpc_addr: dead,
                new_cluster: true,
            })
            .await
            .unwrap();
        assert!(plan_moves(&s.state.meta.current()).len() > 1);
        let epoch = s.state.meta.current().assignment_epoch;
        s.state.placement.set_confirmed(1, epoch);
        s.state.placement.set_confirmed(2, epoch);
        let task = tokio::spawn(run(
            SharedState::clone(&s.state),
            1,
            Duration::from_secs(600),
            s.stop.clone(),
        ));
        let deadline = Instant::now() + Duration::from_millis(TARGET_DOWN_ABORT_MS + 10_000);
        while !ops(&s.source).iter().any(|o| o.starts_with("Restore")) {
            assert!(Instant::now() < deadline, "the first move never aborted");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Time for several mover passes: none may start a move to the down target.
        tokio::time::sleep(Duration::from_millis(3 * MOVER_INTERVAL_MS / 2)).await;
        assert!(s.state.meta.current().moves.is_empty());
        let exports = ops(&s.source)
            .iter()
            .filter(|o| o.starts_with("Export"))
            .count();
        assert_eq!(
            exports, 1,
            "one partition exported, then the target backed off"
        );
        s.stop.cancel();
        task.await.unwrap();
    }

    /// The mover task itself starts planned moves once both clusters confirmed the assignment,
    /// never more than its concurrency at once, and moves every planned partition to cluster 2.
    #[tokio::test]
    async fn run_moves_every_planned_partition() {
        let s = setup(3).await;
        let epoch = s.state.meta.current().assignment_epoch;
        let planned = plan_moves(&s.state.meta.current());
        assert!(!planned.is_empty());
        let task = tokio::spawn(run(
            SharedState::clone(&s.state),
            2,
            Duration::from_millis(DEFAULT_MOVE_RETRY_BACKOFF_MS),
            s.stop.clone(),
        ));
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            s.state.meta.current().moves.is_empty(),
            "no move before confirmation"
        );
        s.state.placement.set_confirmed(1, epoch);
        s.state.placement.set_confirmed(2, epoch);
        s.state.mover.wake();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let meta = s.state.meta.current();
            assert!(meta.moves.len() <= 2, "at most 2 moves at once");
            if plan_moves(&meta).is_empty() && meta.moves.is_empty() {
                break;
            }
            assert!(Instant::now() < deadline, "moves did not finish");
            drop(meta);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let meta = s.state.meta.current();
        for m in planned {
            assert_eq!(meta.table.owner(m.partition), Some(2));
        }
        assert_eq!(meta.table.owners, meta.target);
        s.stop.cancel();
        task.await.unwrap();
    }

    /// INGEST batches respect both the record and the byte cap, and an empty partition still
    /// gets one (empty) batch to carry its version floor.
    #[test]
    fn ingest_batches_are_bounded() {
        let rec = |n: usize| MigrateRecord {
            key: vec![b'k'],
            version: 1,
            value: vec![0; n],
            deleted: false,
        };
        assert_eq!(ingest_chunks(vec![]).len(), 1);
        let sizes: Vec<usize> = ingest_chunks((0..1100).map(|_| rec(1)).collect())
            .iter()
            .map(Vec::len)
            .collect();
        assert_eq!(sizes, [512, 512, 76]);
        let big = ingest_chunks((0..5).map(|_| rec(900 * 1024)).collect());
        assert_eq!(big.iter().map(Vec::len).collect::<Vec<_>>(), [2, 2, 1]);
        let huge = ingest_chunks(vec![rec(3 * 1024 * 1024)]);
        assert_eq!(huge.len(), 1);
    }
}

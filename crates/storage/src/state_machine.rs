//! The replicated state machine (openraft `RaftStateMachine`) on the sled `sm` tree.
//!
//! Invariants this module keeps:
//! - **Deterministic apply.** The answer to an entry depends only on the state before it and the
//!   entry: no clock, no randomness, no hash-map iteration (all maps are `BTreeMap`). Refusals
//!   (`WrongOwner`, `CasMismatch`) are answers recorded with the entry; an I/O error instead
//!   fails the whole `apply()` and openraft stops the group, rather than let replicas diverge.
//! - **Ownership fencing.** A write is applied only if its partition is `Serving` here, checked
//!   in log order, so a write lands either before a freeze (and is copied) or is refused.
//! - **Versions strictly increase per key**, even across delete and re-create: each partition
//!   keeps a persisted counter, the largest version ever issued in it (puts and deletes both
//!   consume one), and a put's new version is that counter plus one.
//! - **Atomic, written behind.** The changes of `apply()` calls gather in an in-memory overlay
//!   (`Unwritten`) that every read consults before the tree, and are written to the `sm` tree as
//!   one `sled::Batch` — data and metadata (last_applied, membership, partition states, epoch,
//!   counters, key count) together — once the overlay holds [`MAX_UNWRITTEN_RECORDS`] records or
//!   is [`MAX_UNWRITTEN_AGE_MS`] old, before any scan of the tree (snapshots, partition scans,
//!   wipes) and at [`crate::Storage::sync`]. So a crash leaves the stored state machine at an
//!   entry boundary with `last_applied` matching the data. Nothing is fsynced per apply: the log
//!   is the WAL and openraft re-applies `(last_applied, committed]` after a restart. (sled seals
//!   and `sync_file_range`s a buffer for every batch, which made one batch per entry cost more
//!   than the WAL's own fdatasync; see BENCHMARKS.md.)
//! - **The in-memory cache equals what was written.** The cache (states, counters, epoch, ...)
//!   is updated only after the batch is applied, under the same write lock that readers take,
//!   so a reader never sees a state check and data from different points of the log.
//! - **Migration steps are state transitions in log order** (`docs/design.md#partition-states`).
//!   Each step is allowed only in the states that table lists, and is idempotent: repeated in
//!   the state it leads to, it answers success and changes nothing. A step not allowed is
//!   answered with `MigrationRefused` naming the current state; nothing changes. `Released` is a
//!   tombstone: `Assign` only moves partitions between absent and `Serving`, so a late
//!   assignment can never revive a partition at the owner it moved away from. Deleting a
//!   partition's data (PURGE, PREPARE_INCOMING, ABANDON) is one prefix scan turned into
//!   removals in the same batch; PURGE_SOME removes only the first keys of that scan.
//! - **The change log of an exporting partition** (pre-copy, `docs/design.md#pre-copy`): while
//!   a partition is `Exporting`, every put and delete also records `(version → key)` in its
//!   change log, in the same batch as the data, so that a copy taken while the partition is
//!   served can catch up by version. The log lives in the cache and in the tree, is part of
//!   snapshots, and is dropped when the partition is released, restored or purged.
//! - **Per-partition key counts** are kept in the cache and on disk next to the data, so the
//!   keys of one partition are known without a scan.
//!
//! This module must not touch the Raft log and must not call sled's `flush_async`.

use crate::codec::{self, META_EPOCH, META_KEY_COUNT, META_LAST_APPLIED, META_MEMBERSHIP};
use crate::error::{IntoRaft, Op, RaftStorageError, StorageError};
use crate::flusher::Flusher;
use crate::snapshot::{self, SnapshotBuilder, SnapshotImage};
use crate::types::{ChangeScan, PartitionScan, PartitionState, RavelNode, ReadRefused, TypeConfig};
use openraft::storage::RaftStateMachine;
use openraft::{
    Entry, EntryPayload, LogId, OptionalSend, Snapshot, SnapshotMeta, StoredMembership,
};
use ravel_core::PartitionId;
use ravel_core::command::{
    ChangedRecord, Command, CommandResult, MigratedRecord, MigrationStep, Record,
};
use std::collections::{BTreeMap, BTreeSet};
use std::io::Cursor;
use std::ops::Bound;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

/// Most changed data records the write-behind overlay holds before it is written to sled.
pub const MAX_UNWRITTEN_RECORDS: usize = 4096;

/// Oldest change the overlay holds before it is written to sled (checked at each apply).
pub const MAX_UNWRITTEN_AGE_MS: u64 = 50;

/// Most changed records the overlay holds while a snapshot scan has the tree frozen; beyond
/// this, applies wait for the scan to end.
pub const MAX_UNWRITTEN_RECORDS_WHILE_FROZEN: usize = 64 * MAX_UNWRITTEN_RECORDS;

/// How often a writer waiting for a snapshot scan to end looks again.
const THAW_POLL_MS: u64 = 1;

/// The tree frozen for one snapshot scan; dropping it lets writes reach the tree again.
pub(crate) struct FrozenTree {
    shared: Arc<SmShared>,
}

impl Drop for FrozenTree {
    fn drop(&mut self) {
        self.shared.scans.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The state machine at one log point, captured serialized with apply: the cache and the
/// overlay's data changes as they were, over a tree that nothing writes until this is dropped.
pub(crate) struct SnapshotSource {
    cache: SmCache,
    changes: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    frozen: FrozenTree,
}

impl SnapshotSource {
    /// Scans the frozen tree and lays the captured changes over it (both in key order): the
    /// image at the capture point. Slow for a big state machine; applies go on meanwhile.
    pub(crate) fn into_image(self) -> Result<SnapshotImage, StorageError> {
        let tree = self.frozen.shared.tree.clone();
        let mut records = Vec::new();
        let mut push = |raw_key: &[u8], raw_value: Option<&[u8]>| -> Result<(), StorageError> {
            let Some(raw_value) = raw_value else {
                return Ok(());
            };
            let (partition, key) = codec::split_data_key(raw_key)?;
            let record = codec::decode_record(raw_value)?;
            records.push(snapshot::SnapshotRecord {
                partition,
                key: key.to_vec(),
                version: record.version,
                value: record.value,
            });
            Ok(())
        };
        let mut changes = self.changes.iter().peekable();
        for item in tree.scan_prefix(codec::all_data_prefix()) {
            let (raw_key, raw_value) = item?;
            while let Some((key, change)) = changes.next_if(|(key, _)| key[..] < raw_key[..]) {
                push(key, change.as_deref())?;
            }
            match changes.next_if(|(key, _)| key[..] == raw_key[..]) {
                Some((key, change)) => push(key, change.as_deref())?,
                None => push(&raw_key, Some(&raw_value))?,
            }
        }
        for (key, change) in changes {
            push(key, change.as_deref())?;
        }
        drop(self.frozen);
        Ok(SnapshotImage::new(&self.cache, records))
    }
}

/// What the state machine knows besides its data records; mirrors the `sm` tree's metadata.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct SmCache {
    pub(crate) last_applied: Option<LogId<u64>>,
    pub(crate) membership: StoredMembership<u64, RavelNode>,
    pub(crate) epoch: u64,
    pub(crate) states: BTreeMap<PartitionId, PartitionState>,
    pub(crate) counters: BTreeMap<PartitionId, u64>,
    /// Keys stored per partition; partitions with none are left out.
    pub(crate) partition_keys: BTreeMap<PartitionId, u64>,
    /// Keys stored in all partitions (the sum of `partition_keys`).
    pub(crate) key_count: u64,
    /// The change log of each exporting (or frozen after exporting) partition: version → key.
    pub(crate) change_logs: BTreeMap<PartitionId, BTreeMap<u64, Vec<u8>>>,
}

/// State shared by the state machine, its snapshot builders and readers.
pub(crate) struct SmShared {
    pub(crate) tree: sled::Tree,
    pub(crate) snapshots: sled::Tree,
    pub(crate) flusher: Flusher,
    cache: RwLock<SmCache>,
    /// Applied changes not yet written to `tree`. Locked only while holding `cache`'s lock.
    unwritten: RwLock<Unwritten>,
    /// Snapshot scans reading the tree now; nothing writes the tree while there is one.
    scans: AtomicUsize,
    snapshots_installed: AtomicU64,
    /// Serializes read-compare-write of the stored current snapshot.
    pub(crate) snapshot_store_lock: Mutex<()>,
}

impl SmShared {
    pub(crate) fn open(
        tree: sled::Tree,
        snapshots: sled::Tree,
        flusher: Flusher,
    ) -> Result<Self, StorageError> {
        let cache = load_cache(&tree)?;
        Ok(Self {
            tree,
            snapshots,
            flusher,
            cache: RwLock::new(cache),
            unwritten: RwLock::new(Unwritten::default()),
            scans: AtomicUsize::new(0),
            snapshots_installed: AtomicU64::new(0),
            snapshot_store_lock: Mutex::new(()),
        })
    }

    fn read_cache(&self) -> Result<RwLockReadGuard<'_, SmCache>, StorageError> {
        self.cache.read().map_err(|_| poisoned())
    }

    fn write_cache(&self) -> Result<RwLockWriteGuard<'_, SmCache>, StorageError> {
        self.cache.write().map_err(|_| poisoned())
    }

    fn read_unwritten(&self) -> Result<RwLockReadGuard<'_, Unwritten>, StorageError> {
        self.unwritten.read().map_err(|_| poisoned())
    }

    fn write_unwritten(&self) -> Result<RwLockWriteGuard<'_, Unwritten>, StorageError> {
        self.unwritten.write().map_err(|_| poisoned())
    }

    /// Writes every applied change still in the overlay to the tree (one atomic batch), once
    /// no snapshot scan has the tree frozen.
    pub(crate) fn write_behind(&self) -> Result<(), StorageError> {
        let _cache = self.write_cache_thawed()?;
        let mut unwritten = self.write_unwritten()?;
        unwritten.write_to(&self.tree)
    }

    /// The cache's write lock, taken while no snapshot scan has the tree frozen; as long as it
    /// is held, no scan can start, so the tree may be written.
    fn write_cache_thawed(&self) -> Result<RwLockWriteGuard<'_, SmCache>, StorageError> {
        loop {
            let cache = self.write_cache()?;
            if self.scans.load(Ordering::Acquire) == 0 {
                return Ok(cache);
            }
            drop(cache);
            std::thread::sleep(Duration::from_millis(THAW_POLL_MS));
        }
    }

    /// Applies `entries` as one atomic batch and returns one answer per entry.
    fn apply_entries(
        &self,
        entries: impl IntoIterator<Item = Entry<TypeConfig>>,
    ) -> Result<Vec<CommandResult>, StorageError> {
        let mut cache = self.write_cache()?;
        if self
            .unwritten
            .read()
            .map_err(|_| poisoned())?
            .changes
            .data
            .len()
            >= MAX_UNWRITTEN_RECORDS_WHILE_FROZEN
        {
            // Back-pressure: a snapshot scan has held the tree for long; wait for it.
            drop(cache);
            cache = self.write_cache_thawed()?;
        }
        let mut unwritten = self.write_unwritten()?;
        let mut work = Apply {
            tree: &self.tree,
            cache: &cache,
            unwritten: &unwritten,
            pending: Pending::default(),
        };
        let mut answers = Vec::new();
        for entry in entries {
            answers.push(work.entry(entry)?);
        }
        let pending = work.pending;
        pending.update(&mut cache);
        unwritten.absorb(pending);
        // While a snapshot scan has the tree frozen the changes stay in the overlay.
        if unwritten.is_due() && self.scans.load(Ordering::Acquire) == 0 {
            unwritten.write_to(&self.tree)?;
        }
        Ok(answers)
    }

    /// Captures the state machine at this log point (run serialized with apply): the cache and
    /// the unwritten changes are copied, and the tree is frozen until the returned source has
    /// been scanned, so that applies can go on meanwhile without blocking on the scan.
    pub(crate) fn capture(shared: &Arc<SmShared>) -> Result<SnapshotSource, StorageError> {
        let cache = shared.write_cache()?;
        let unwritten = shared.read_unwritten()?;
        shared.scans.fetch_add(1, Ordering::AcqRel);
        let frozen = FrozenTree {
            shared: Arc::clone(shared),
        };
        let data_prefix = codec::all_data_prefix();
        let changes = unwritten
            .changes
            .data
            .range(data_prefix.to_vec()..)
            .take_while(|(key, _)| key.starts_with(&data_prefix))
            .map(|(key, change)| (key.clone(), change.clone()))
            .collect();
        Ok(SnapshotSource {
            cache: cache.clone(),
            changes,
            frozen,
        })
    }

    /// Replaces the whole state machine by `image`, atomically.
    fn replace_with(&self, image: SnapshotImage) -> Result<(), StorageError> {
        let mut cache = self.write_cache_thawed()?;
        // Everything unwritten is replaced too.
        *self.write_unwritten()? = Unwritten::default();
        let mut batch = sled::Batch::default();
        for key in self.tree.iter().keys() {
            batch.remove(key?);
        }
        let next = image.write_into(&mut batch)?;
        self.tree.apply_batch(batch)?;
        *cache = next;
        Ok(())
    }
}

impl Drop for SmShared {
    /// A clean close writes what is unwritten (a crash instead leaves it to the log's replay).
    fn drop(&mut self) {
        if let Ok(unwritten) = self.unwritten.get_mut()
            && let Err(e) = unwritten.write_to(&self.tree)
        {
            tracing::warn!(error = %e, "could not write the state machine's last changes at close");
        }
    }
}

fn poisoned() -> StorageError {
    StorageError::corrupt("state machine cache", "lock poisoned by an earlier panic")
}

/// Reads the cache from the `sm` tree's metadata keys.
fn load_cache(tree: &sled::Tree) -> Result<SmCache, StorageError> {
    let meta = |key: &[u8]| tree.get(key);
    let mut cache = SmCache {
        last_applied: meta(META_LAST_APPLIED)?
            .map(|b| codec::decode("last_applied", &b))
            .transpose()?
            .flatten(),
        membership: meta(META_MEMBERSHIP)?
            .map(|b| codec::decode("membership", &b))
            .transpose()?
            .unwrap_or_default(),
        epoch: meta(META_EPOCH)?
            .map(|b| codec::decode("epoch", &b))
            .transpose()?
            .unwrap_or(0),
        key_count: meta(META_KEY_COUNT)?
            .map(|b| codec::decode("key count", &b))
            .transpose()?
            .unwrap_or(0),
        ..SmCache::default()
    };
    for item in tree.scan_prefix(codec::all_states_prefix()) {
        let (k, v) = item?;
        cache
            .states
            .insert(codec::state_partition(&k)?, codec::decode_state(&v)?);
    }
    for item in tree.scan_prefix(codec::all_counters_prefix()) {
        let (k, v) = item?;
        cache
            .counters
            .insert(codec::counter_partition(&k)?, codec::decode_counter(&v)?);
    }
    for item in tree.scan_prefix(codec::all_key_counts_prefix()) {
        let (k, v) = item?;
        cache
            .partition_keys
            .insert(codec::key_count_partition(&k)?, codec::decode_counter(&v)?);
    }
    for item in tree.scan_prefix(codec::all_changes_prefix()) {
        let (k, v) = item?;
        let (partition, version) = codec::split_change_key(&k)?;
        cache
            .change_logs
            .entry(partition)
            .or_default()
            .insert(version, codec::decode_change(&v)?);
    }
    if cache.partition_keys.values().sum::<u64>() != cache.key_count {
        rebuild_key_counts(tree, &mut cache)?;
    }
    Ok(cache)
}

/// Recounts the keys of every partition from the data and stores the counts. Only needed for a
/// state machine written before per-partition counts existed: afterwards every apply keeps
/// them, in the same batch as the data they count.
fn rebuild_key_counts(tree: &sled::Tree, cache: &mut SmCache) -> Result<(), StorageError> {
    let mut counts: BTreeMap<PartitionId, u64> = BTreeMap::new();
    for key in tree.scan_prefix(codec::all_data_prefix()).keys() {
        let (partition, _) = codec::split_data_key(&key?)?;
        *counts.entry(partition).or_default() += 1;
    }
    let mut batch = sled::Batch::default();
    for key in tree.scan_prefix(codec::all_key_counts_prefix()).keys() {
        batch.remove(key?);
    }
    for (p, n) in &counts {
        batch.insert(&codec::key_count_key(*p)[..], codec::encode_counter(*n));
    }
    let total: u64 = counts.values().sum();
    batch.insert(META_KEY_COUNT, codec::encode(&total)?);
    tree.apply_batch(batch)?;
    tracing::info!(keys = total, "rebuilt the per-partition key counts");
    cache.partition_keys = counts;
    cache.key_count = total;
    Ok(())
}

/// What one `apply()` call did to a partition's change log.
#[derive(Default)]
struct ChangeLogEdit {
    /// The log was dropped first (what `added` holds came after).
    cleared: bool,
    added: BTreeMap<u64, Vec<u8>>,
}

/// Changes made by one `apply()` call, not yet written.
#[derive(Default)]
struct Pending {
    /// Raw key → new encoded value, or `None` for a removal: data records and change-log
    /// entries (the cache's `change_logs` is updated from `change_logs` below).
    data: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    change_logs: BTreeMap<PartitionId, ChangeLogEdit>,
    /// Changed partition states; `None` makes the partition absent.
    states: BTreeMap<PartitionId, Option<PartitionState>>,
    counters: BTreeMap<PartitionId, u64>,
    /// Changed per-partition key counts.
    partition_keys: BTreeMap<PartitionId, u64>,
    last_applied: Option<LogId<u64>>,
    membership: Option<StoredMembership<u64, RavelNode>>,
    epoch: Option<u64>,
    key_count: Option<u64>,
}

impl Pending {
    /// The one batch that writes these changes (data and metadata in the `sm` tree).
    fn to_batch(&self) -> Result<sled::Batch, StorageError> {
        let mut batch = sled::Batch::default();
        for (key, value) in &self.data {
            match value {
                Some(v) => batch.insert(key.as_slice(), v.as_slice()),
                None => batch.remove(key.as_slice()),
            }
        }
        for (p, state) in &self.states {
            match state {
                Some(state) => {
                    batch.insert(&codec::state_key(*p)[..], &codec::encode_state(*state)[..]);
                }
                None => batch.remove(&codec::state_key(*p)[..]),
            }
        }
        for (p, counter) in &self.counters {
            batch.insert(&codec::counter_key(*p)[..], codec::encode_counter(*counter));
        }
        for (p, keys) in &self.partition_keys {
            if *keys == 0 {
                batch.remove(&codec::key_count_key(*p)[..]);
            } else {
                batch.insert(&codec::key_count_key(*p)[..], codec::encode_counter(*keys));
            }
        }
        if let Some(last_applied) = &self.last_applied {
            batch.insert(META_LAST_APPLIED, codec::encode(&Some(*last_applied))?);
        }
        if let Some(membership) = &self.membership {
            batch.insert(META_MEMBERSHIP, codec::encode(membership)?);
        }
        if let Some(epoch) = self.epoch {
            batch.insert(META_EPOCH, codec::encode(&epoch)?);
        }
        if let Some(key_count) = self.key_count {
            batch.insert(META_KEY_COUNT, codec::encode(&key_count)?);
        }
        Ok(batch)
    }

    /// Brings the cache to what these changes make it.
    fn update(&self, cache: &mut SmCache) {
        for (p, state) in &self.states {
            match state {
                Some(state) => cache.states.insert(*p, *state),
                None => cache.states.remove(p),
            };
        }
        cache.counters.extend(&self.counters);
        for (p, edit) in &self.change_logs {
            if edit.cleared {
                cache.change_logs.remove(p);
            }
            if !edit.added.is_empty() {
                let log = cache.change_logs.entry(*p).or_default();
                log.extend(edit.added.iter().map(|(v, k)| (*v, k.clone())));
            }
        }
        for (p, keys) in &self.partition_keys {
            if *keys == 0 {
                cache.partition_keys.remove(p);
            } else {
                cache.partition_keys.insert(*p, *keys);
            }
        }
        if self.last_applied.is_some() {
            cache.last_applied = self.last_applied;
        }
        if let Some(membership) = &self.membership {
            cache.membership = membership.clone();
        }
        if let Some(epoch) = self.epoch {
            cache.epoch = epoch;
        }
        if let Some(key_count) = self.key_count {
            cache.key_count = key_count;
        }
    }

    /// Lays `later` (the changes of a later apply) over these.
    fn merge(&mut self, later: Pending) {
        self.data.extend(later.data);
        for (p, edit) in later.change_logs {
            if edit.cleared {
                self.change_logs.insert(p, edit);
            } else {
                self.change_logs
                    .entry(p)
                    .or_default()
                    .added
                    .extend(edit.added);
            }
        }
        self.states.extend(later.states);
        self.counters.extend(later.counters);
        self.partition_keys.extend(later.partition_keys);
        self.last_applied = later.last_applied.or(self.last_applied);
        self.membership = later.membership.or(self.membership.take());
        self.epoch = later.epoch.or(self.epoch);
        self.key_count = later.key_count.or(self.key_count);
    }

    fn is_empty(&self) -> bool {
        self.data.is_empty()
            && self.change_logs.is_empty()
            && self.states.is_empty()
            && self.counters.is_empty()
            && self.partition_keys.is_empty()
            && self.last_applied.is_none()
            && self.membership.is_none()
            && self.epoch.is_none()
            && self.key_count.is_none()
    }
}

/// Applied changes not yet written to sled: what every read sees over the tree.
#[derive(Default)]
struct Unwritten {
    changes: Pending,
    /// When the oldest change still here was applied.
    since: Option<Instant>,
}

impl Unwritten {
    fn absorb(&mut self, pending: Pending) {
        if pending.is_empty() {
            return;
        }
        self.since.get_or_insert_with(Instant::now);
        self.changes.merge(pending);
    }

    fn is_due(&self) -> bool {
        self.changes.data.len() >= MAX_UNWRITTEN_RECORDS
            || self
                .since
                .is_some_and(|t| t.elapsed() >= Duration::from_millis(MAX_UNWRITTEN_AGE_MS))
    }

    /// A data key's change still unwritten: `Some(Some(record))`, `Some(None)` if removed, or
    /// `None` when the tree has the current value.
    fn data(&self, data_key: &[u8]) -> Option<Option<&[u8]>> {
        self.changes.data.get(data_key).map(Option::as_deref)
    }

    fn write_to(&mut self, tree: &sled::Tree) -> Result<(), StorageError> {
        if self.changes.is_empty() {
            return Ok(());
        }
        tree.apply_batch(self.changes.to_batch()?)?;
        *self = Unwritten::default();
        Ok(())
    }
}

/// Writes a whole partition-state map into `batch` (which already clears the tree).
pub(crate) fn write_states(
    batch: &mut sled::Batch,
    states: &BTreeMap<PartitionId, PartitionState>,
) {
    for (p, state) in states {
        batch.insert(&codec::state_key(*p)[..], &codec::encode_state(*state)[..]);
    }
}

/// One `apply()` call in progress: reads see the tree overlaid by the unwritten changes, then
/// by this call's `pending` ones (the cache already includes the unwritten ones).
struct Apply<'a> {
    tree: &'a sled::Tree,
    cache: &'a SmCache,
    unwritten: &'a Unwritten,
    pending: Pending,
}

impl Apply<'_> {
    fn entry(&mut self, entry: Entry<TypeConfig>) -> Result<CommandResult, StorageError> {
        self.pending.last_applied = Some(entry.log_id);
        match entry.payload {
            EntryPayload::Blank => Ok(CommandResult::Empty),
            EntryPayload::Membership(m) => {
                self.pending.membership = Some(StoredMembership::new(Some(entry.log_id), m));
                Ok(CommandResult::Empty)
            }
            EntryPayload::Normal(command) => self.command(command),
        }
    }

    fn command(&mut self, command: Command) -> Result<CommandResult, StorageError> {
        match command {
            Command::Put {
                partition,
                key,
                value,
                cas,
            } => self.put(partition, &key, value, cas),
            Command::Delete {
                partition,
                key,
                cas,
            } => self.delete(partition, &key, cas),
            Command::Assign { epoch, partitions } => Ok(self.assign(epoch, &partitions)),
            Command::Migrate { partition, step } => self.migrate(partition, step),
            Command::Batch(commands) => {
                let mut answers = Vec::with_capacity(commands.len());
                for command in commands {
                    answers.push(self.command(command)?);
                }
                Ok(CommandResult::Batch(answers))
            }
        }
    }

    fn put(
        &mut self,
        partition: PartitionId,
        key: &[u8],
        value: Vec<u8>,
        cas: Option<u64>,
    ) -> Result<CommandResult, StorageError> {
        if !self.writable(partition) {
            return Ok(CommandResult::WrongOwner {
                epoch: self.epoch(),
            });
        }
        let data_key = codec::data_key(partition, key);
        let current = self.version_of(&data_key)?;
        if cas.is_some_and(|expected| expected != current) {
            return Ok(CommandResult::CasMismatch { current });
        }
        let version = self.next_version(partition);
        if current == 0 {
            self.add_keys(partition, 1);
        }
        self.log_change(partition, version, key);
        let record = codec::encode_record(&Record { version, value });
        self.pending.data.insert(data_key, Some(record));
        Ok(CommandResult::Written { version })
    }

    fn delete(
        &mut self,
        partition: PartitionId,
        key: &[u8],
        cas: Option<u64>,
    ) -> Result<CommandResult, StorageError> {
        if !self.writable(partition) {
            return Ok(CommandResult::WrongOwner {
                epoch: self.epoch(),
            });
        }
        let data_key = codec::data_key(partition, key);
        let current = self.version_of(&data_key)?;
        if cas.is_some_and(|expected| expected != current) {
            return Ok(CommandResult::CasMismatch { current });
        }
        if current == 0 {
            return Ok(CommandResult::Deleted { deleted: false });
        }
        // A delete consumes a version too, so a later re-create is newer than the deletion.
        let version = self.next_version(partition);
        self.log_change(partition, version, key);
        self.remove_keys(partition, 1);
        self.pending.data.insert(data_key, None);
        Ok(CommandResult::Deleted { deleted: true })
    }

    fn assign(&mut self, epoch: u64, partitions: &[PartitionId]) -> CommandResult {
        if epoch <= self.epoch() {
            return CommandResult::Assigned {
                epoch: self.epoch(),
            };
        }
        // Only absent <-> Serving: frozen, incoming and released partitions belong to a move in
        // progress (or finished) and only its steps may change them. Data of a partition that
        // becomes absent stays on disk untouched.
        let listed: BTreeSet<PartitionId> = partitions.iter().copied().collect();
        let dropped: Vec<PartitionId> = self
            .current_states()
            .into_iter()
            .filter(|(p, s)| *s == PartitionState::Serving && !listed.contains(p))
            .map(|(p, _)| p)
            .collect();
        for p in dropped {
            self.set_state(p, None);
        }
        for p in listed {
            if self.state(p).is_none() {
                self.set_state(p, Some(PartitionState::Serving));
            }
        }
        self.pending.epoch = Some(epoch);
        CommandResult::Assigned { epoch }
    }

    /// Applies one migration step (the transitions: the module doc and
    /// `docs/design.md#partition-states`).
    fn migrate(
        &mut self,
        partition: PartitionId,
        step: MigrationStep,
    ) -> Result<CommandResult, StorageError> {
        use PartitionState::{Exporting, Frozen, Incoming, Released, Serving};
        let before = self.state(partition);
        let mut records_applied = 0;
        match (&step, before) {
            (MigrationStep::Export, Some(Serving)) => {
                self.clear_change_log(partition);
                self.set_state(partition, Some(Exporting));
            }
            (MigrationStep::Freeze, Some(Serving | Exporting)) => {
                self.set_state(partition, Some(Frozen));
            }
            (MigrationStep::PrepareIncoming, None | Some(Incoming | Released)) => {
                self.wipe(partition)?;
                self.set_state(partition, Some(Incoming));
            }
            (MigrationStep::Ingest { records, .. }, Some(Incoming)) => {
                let keys = records.iter().map(|r| (r.key.as_slice(), r.version));
                if let Some(why) = malformed(keys) {
                    return Ok(self.refuse(partition, why));
                }
                records_applied = records.len() as u64;
            }
            (MigrationStep::IngestChanges { records, .. }, Some(Incoming)) => {
                let keys = records.iter().map(|r| (r.key.as_slice(), r.version));
                if let Some(why) = malformed(keys) {
                    return Ok(self.refuse(partition, why));
                }
            }
            (MigrationStep::Release, Some(Frozen)) => {
                self.clear_change_log(partition);
                self.set_state(partition, Some(Released));
            }
            (MigrationStep::Activate, Some(Incoming)) => self.set_state(partition, Some(Serving)),
            (MigrationStep::Purge, Some(Released)) => {
                self.clear_change_log(partition);
                self.wipe(partition)?;
            }
            (MigrationStep::PurgeSome { max_keys }, Some(Released)) => {
                self.clear_change_log(partition);
                self.wipe_some(partition, *max_keys)?;
            }
            (MigrationStep::Restore, Some(Exporting | Frozen | Released)) => {
                self.clear_change_log(partition);
                self.set_state(partition, Some(Serving));
            }
            (MigrationStep::Abandon, Some(Incoming)) => {
                self.wipe(partition)?;
                self.set_state(partition, None);
            }
            // Already in the state the step leads to: idempotent success, nothing changes.
            (MigrationStep::Freeze, Some(Frozen))
            | (MigrationStep::Export, Some(Exporting))
            | (MigrationStep::Release, Some(Released))
            | (MigrationStep::Activate | MigrationStep::Restore, Some(Serving))
            | (MigrationStep::Abandon, None) => {}
            (step, state) => {
                let reason = format!(
                    "{} is not allowed while the partition is {}",
                    step.name(),
                    PartitionState::name(state)
                );
                return Ok(self.refuse(partition, reason));
            }
        }
        match step {
            MigrationStep::Ingest {
                records,
                version_floor,
            } => self.ingest(partition, records, version_floor)?,
            MigrationStep::IngestChanges {
                records,
                version_floor,
            } => records_applied = self.ingest_changes(partition, records, version_floor)?,
            _ => {}
        }
        Ok(CommandResult::Migrated {
            state: self.state(partition),
            records_applied,
            partition_keys: self.partition_keys(partition),
        })
    }

    fn refuse(&self, partition: PartitionId, reason: String) -> CommandResult {
        CommandResult::MigrationRefused {
            state: self.state(partition),
            reason,
        }
    }

    /// Stores copied records (overwriting) and raises the partition's version counter to at
    /// least `version_floor` and every record's version, so a write after activation gets a
    /// version above every copied one.
    fn ingest(
        &mut self,
        partition: PartitionId,
        records: Vec<MigratedRecord>,
        version_floor: u64,
    ) -> Result<(), StorageError> {
        let mut floor = version_floor;
        for r in records {
            floor = floor.max(r.version);
            let data_key = codec::data_key(partition, &r.key);
            if self.version_of(&data_key)? == 0 {
                self.add_keys(partition, 1);
            }
            let record = Record {
                version: r.version,
                value: r.value,
            };
            self.pending
                .data
                .insert(data_key, Some(codec::encode_record(&record)));
        }
        if floor > self.counter(partition) {
            self.pending.counters.insert(partition, floor);
        }
        Ok(())
    }

    /// Applies changes read from a source's change log where they are newer than what is here
    /// (a deletion removes the key); returns how many took effect. Raises the version counter
    /// like [`Self::ingest`].
    fn ingest_changes(
        &mut self,
        partition: PartitionId,
        records: Vec<ChangedRecord>,
        version_floor: u64,
    ) -> Result<u64, StorageError> {
        let mut floor = version_floor;
        let mut applied = 0;
        for r in records {
            floor = floor.max(r.version);
            let data_key = codec::data_key(partition, &r.key);
            let current = self.version_of(&data_key)?;
            if r.version <= current {
                continue;
            }
            match r.value {
                Some(value) => {
                    if current == 0 {
                        self.add_keys(partition, 1);
                    }
                    let record = Record {
                        version: r.version,
                        value,
                    };
                    self.pending
                        .data
                        .insert(data_key, Some(codec::encode_record(&record)));
                }
                None if current == 0 => continue,
                None => {
                    self.remove_keys(partition, 1);
                    self.pending.data.insert(data_key, None);
                }
            }
            applied += 1;
        }
        if floor > self.counter(partition) {
            self.pending.counters.insert(partition, floor);
        }
        Ok(applied)
    }

    /// Records `(version → key)` in the partition's change log if it is exporting.
    fn log_change(&mut self, partition: PartitionId, version: u64, key: &[u8]) {
        if self.state(partition) != Some(PartitionState::Exporting) {
            return;
        }
        self.pending.data.insert(
            codec::change_key(partition, version).to_vec(),
            Some(codec::encode_change(key)),
        );
        self.pending
            .change_logs
            .entry(partition)
            .or_default()
            .added
            .insert(version, key.to_vec());
    }

    /// Drops the partition's change log: the entries applied before this call and those added
    /// earlier in it.
    fn clear_change_log(&mut self, partition: PartitionId) {
        let mut versions: Vec<u64> = self
            .cache
            .change_logs
            .get(&partition)
            .map(|log| log.keys().copied().collect())
            .unwrap_or_default();
        if let Some(edit) = self.pending.change_logs.get(&partition) {
            versions.extend(edit.added.keys());
        }
        if versions.is_empty() && !self.pending.change_logs.contains_key(&partition) {
            return;
        }
        for v in versions {
            self.pending
                .data
                .insert(codec::change_key(partition, v).to_vec(), None);
        }
        self.pending.change_logs.insert(
            partition,
            ChangeLogEdit {
                cleared: true,
                added: BTreeMap::new(),
            },
        );
    }

    /// Deletes every record of `partition`: those stored and those written earlier in this same
    /// `apply()` call. The version counter is kept, so versions never go backwards.
    fn wipe(&mut self, partition: PartitionId) -> Result<(), StorageError> {
        let prefix = codec::data_prefix(partition);
        for (key, value) in self.pending.data.range_mut(prefix.to_vec()..) {
            if !key.starts_with(&prefix) {
                break;
            }
            *value = None;
        }
        for (key, value) in self.unwritten.changes.data.range(prefix.to_vec()..) {
            if !key.starts_with(&prefix) {
                break;
            }
            if value.is_some() {
                self.pending.data.insert(key.clone(), None);
            }
        }
        for key in self.tree.scan_prefix(prefix).keys() {
            self.pending.data.insert(key?.to_vec(), None);
        }
        let keys = self.partition_keys(partition);
        self.remove_keys(partition, keys);
        Ok(())
    }

    /// Deletes the first `max_keys` live keys of `partition` in key order (all of them if
    /// fewer). The same keys on every replica: the overlaid view is the same everywhere, and its
    /// first `max_keys` live keys are among the keys changed in memory and the first
    /// `max_keys + (keys changed in memory)` keys of the tree, since at most that many of those
    /// tree keys can be removed in memory.
    fn wipe_some(&mut self, partition: PartitionId, max_keys: u32) -> Result<(), StorageError> {
        let prefix = codec::data_prefix(partition);
        // Key → whether it is live; a key changed in memory is as its latest change says, one
        // only in the tree is live (the tree holds no deletions).
        let mut candidates: BTreeMap<Vec<u8>, bool> = BTreeMap::new();
        for changed in [&self.unwritten.changes.data, &self.pending.data] {
            let keys = changed.range(prefix.to_vec()..);
            for (key, value) in keys.take_while(|(key, _)| key.starts_with(&prefix)) {
                candidates.insert(key.clone(), value.is_some());
            }
        }
        let from_tree = (max_keys as usize).saturating_add(candidates.len());
        for key in self.tree.scan_prefix(prefix).keys().take(from_tree) {
            candidates.entry(key?.to_vec()).or_insert(true);
        }
        let mut removed = 0;
        for (key, _) in candidates.into_iter().filter(|(_, live)| *live) {
            if removed == u64::from(max_keys) {
                break;
            }
            self.pending.data.insert(key, None);
            removed += 1;
        }
        self.remove_keys(partition, removed);
        Ok(())
    }

    /// Every partition's state as of this point of the apply call.
    fn current_states(&self) -> BTreeMap<PartitionId, PartitionState> {
        let mut states = self.cache.states.clone();
        for (p, state) in &self.pending.states {
            match state {
                Some(state) => states.insert(*p, *state),
                None => states.remove(p),
            };
        }
        states
    }

    fn state(&self, partition: PartitionId) -> Option<PartitionState> {
        match self.pending.states.get(&partition) {
            Some(state) => *state,
            None => self.cache.states.get(&partition).copied(),
        }
    }

    fn set_state(&mut self, partition: PartitionId, state: Option<PartitionState>) {
        self.pending.states.insert(partition, state);
    }

    fn partition_keys(&self, partition: PartitionId) -> u64 {
        self.pending
            .partition_keys
            .get(&partition)
            .or_else(|| self.cache.partition_keys.get(&partition))
            .copied()
            .unwrap_or(0)
    }

    fn add_keys(&mut self, partition: PartitionId, n: u64) {
        let keys = self.partition_keys(partition) + n;
        self.pending.partition_keys.insert(partition, keys);
        self.pending.key_count = Some(self.key_count() + n);
    }

    fn remove_keys(&mut self, partition: PartitionId, n: u64) {
        let keys = self.partition_keys(partition).saturating_sub(n);
        self.pending.partition_keys.insert(partition, keys);
        self.pending.key_count = Some(self.key_count().saturating_sub(n));
    }

    fn writable(&self, partition: PartitionId) -> bool {
        self.state(partition).is_some_and(PartitionState::writable)
    }

    fn epoch(&self) -> u64 {
        self.pending.epoch.unwrap_or(self.cache.epoch)
    }

    fn key_count(&self) -> u64 {
        self.pending.key_count.unwrap_or(self.cache.key_count)
    }

    /// The largest version issued in the partition so far, seeing this call's changes.
    fn counter(&self, partition: PartitionId) -> u64 {
        self.pending
            .counters
            .get(&partition)
            .or_else(|| self.cache.counters.get(&partition))
            .copied()
            .unwrap_or(0)
    }

    /// Issues the partition's next version and records the bumped counter.
    fn next_version(&mut self, partition: PartitionId) -> u64 {
        let version = self.counter(partition) + 1;
        self.pending.counters.insert(partition, version);
        version
    }

    /// The current version of a data key (0 if absent), seeing earlier entries of this call.
    fn version_of(&self, data_key: &[u8]) -> Result<u64, StorageError> {
        let overlaid = match self.pending.data.get(data_key) {
            Some(change) => Some(change.as_deref()),
            None => self.unwritten.data(data_key),
        };
        match overlaid {
            Some(Some(record)) => codec::record_version(record),
            Some(None) => Ok(0),
            None => match self.tree.get(data_key)? {
                Some(record) => codec::record_version(&record),
                None => Ok(0),
            },
        }
    }
}

/// Why a copied batch cannot have come from a store, if it cannot: a record without a key or
/// with version 0. Checked before anything of the batch is applied.
fn malformed<'k>(mut records: impl Iterator<Item = (&'k [u8], u64)>) -> Option<String> {
    let (key, version) = records.find(|(key, version)| *version == 0 || key.is_empty())?;
    Some(format!(
        "a copied record needs a key and a version above 0 (key {:?}, version {version})",
        String::from_utf8_lossy(key)
    ))
}

/// The state machine openraft drives. Cloning gives another handle to the same state.
#[derive(Clone)]
pub struct StateMachine {
    shared: Arc<SmShared>,
}

impl StateMachine {
    pub(crate) fn new(shared: Arc<SmShared>) -> Self {
        Self { shared }
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<u64>>, StoredMembership<u64, RavelNode>), RaftStorageError> {
        let cache = self.shared.read_cache().raft(Op::ReadStateMachine)?;
        Ok((cache.last_applied, cache.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<CommandResult>, RaftStorageError>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let started = std::time::Instant::now();
        let results = self
            .shared
            .apply_entries(entries)
            .raft(Op::WriteStateMachine)?;
        crate::metrics::record_apply(started.elapsed(), results.len());
        Ok(results)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        // Runs serialized with apply: the copy is consistent even though `build_snapshot`
        // then runs concurrently with later applies.
        SnapshotBuilder::new(self.shared.clone(), SmShared::capture(&self.shared))
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, RaftStorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<u64, RavelNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), RaftStorageError> {
        let data = snapshot.into_inner();
        let image = SnapshotImage::decode(&data).raft(Op::ReadSnapshot)?;
        image.check_matches(meta).raft(Op::ReadSnapshot)?;
        self.shared
            .replace_with(image)
            .raft(Op::WriteStateMachine)?;
        snapshot::store_current(&self.shared, meta, &data).raft(Op::WriteSnapshot)?;
        // The installed state must be durable before openraft purges the logs it replaces.
        self.shared.flusher.sync().await.raft(Op::WriteSnapshot)?;
        self.shared
            .snapshots_installed
            .fetch_add(1, Ordering::Relaxed);
        crate::metrics::count_snapshot("installed");
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, RaftStorageError> {
        snapshot::load_current(&self.shared).raft(Op::ReadSnapshot)
    }
}

/// Reads the applied state outside openraft (after a linearizable-read barrier, or stale).
#[derive(Clone)]
pub struct SmReader {
    shared: Arc<SmShared>,
}

impl SmReader {
    pub(crate) fn new(shared: Arc<SmShared>) -> Self {
        Self { shared }
    }

    /// The key's record if this cluster serves reads of `partition` (`Serving` or `Frozen`);
    /// `Err(ReadRefused::WrongOwner{epoch})` if it is absent, `Incoming` or `Released` here.
    pub fn get(&self, partition: PartitionId, key: &[u8]) -> Result<Option<Record>, ReadRefused> {
        // Holding the read lock keeps the ownership check and the data read at one log point.
        let cache = self.shared.read_cache().map_err(unavailable)?;
        if !cache.states.get(&partition).is_some_and(|s| s.readable()) {
            return Err(ReadRefused::WrongOwner { epoch: cache.epoch });
        }
        let data_key = codec::data_key(partition, key);
        let unwritten = self.shared.read_unwritten().map_err(unavailable)?;
        if let Some(change) = unwritten.data(&data_key) {
            return change
                .map(codec::decode_record)
                .transpose()
                .map_err(unavailable);
        }
        drop(unwritten);
        let stored = self
            .shared
            .tree
            .get(data_key)
            .map_err(|e| unavailable(e.into()))?;
        stored
            .map(|bytes| codec::decode_record(&bytes))
            .transpose()
            .map_err(unavailable)
    }

    /// One batch of an `Exporting` or `Frozen` partition's records in key order, starting after
    /// `after` (from the start when `None`): at most `limit_records` records and, past the first
    /// record, at most `limit_bytes` of keys and values. Refused with `NotCopyable` in any other
    /// state. Only a frozen partition's records are final; an exporting partition's change log
    /// names every key written since it began exporting, so a copy of it can catch up.
    pub fn scan_partition(
        &self,
        partition: PartitionId,
        after: Option<&[u8]>,
        limit_records: usize,
        limit_bytes: usize,
    ) -> Result<PartitionScan, ReadRefused> {
        // The scan reads the tree alone, so first write what is unwritten. Holding the read
        // lock then keeps the state check, the records and the counter at one point.
        self.shared.write_behind().map_err(unavailable)?;
        let cache = self.shared.read_cache().map_err(unavailable)?;
        let state = cache.states.get(&partition).copied();
        if !state.is_some_and(PartitionState::copyable) {
            return Err(ReadRefused::NotCopyable { state });
        }
        let prefix = codec::data_prefix(partition);
        let start = match after {
            Some(key) => Bound::Excluded(codec::data_key(partition, key)),
            None => Bound::Included(prefix.to_vec()),
        };
        let mut items = self
            .shared
            .tree
            .range::<Vec<u8>, _>((start, Bound::Unbounded))
            .take_while(|item| item.as_ref().map_or(true, |(k, _)| k.starts_with(&prefix)));
        let mut scan = PartitionScan {
            version_floor: cache.counters.get(&partition).copied().unwrap_or(0),
            ..PartitionScan::default()
        };
        let mut bytes = 0usize;
        scan.done = loop {
            let full = scan.records.len() >= limit_records.max(1)
                || (!scan.records.is_empty() && bytes >= limit_bytes);
            let Some(item) = items.next() else {
                break true;
            };
            if full {
                break false;
            }
            let (raw_key, raw_value) = item.map_err(|e| unavailable(e.into()))?;
            let (_, key) = codec::split_data_key(&raw_key).map_err(unavailable)?;
            let record = codec::decode_record(&raw_value).map_err(unavailable)?;
            let size = key.len() + record.value.len();
            if !scan.records.is_empty() && bytes + size > limit_bytes {
                break false;
            }
            bytes += size;
            scan.records.push(MigratedRecord {
                key: key.to_vec(),
                version: record.version,
                value: record.value,
            });
        };
        Ok(scan)
    }

    /// One batch of an `Exporting` or `Frozen` partition's change log: the keys changed by the
    /// versions above `after_version`, in version order, each once, with its current record (or
    /// as deleted, with the version of its latest change in the batch); at most `limit_records` and,
    /// past the first, `limit_bytes` of keys and values. `last_version` is the last change
    /// covered; `done` when the log has nothing after it. A frozen partition that never exported
    /// has an empty log.
    pub fn scan_changes(
        &self,
        partition: PartitionId,
        after_version: u64,
        limit_records: usize,
        limit_bytes: usize,
    ) -> Result<ChangeScan, ReadRefused> {
        // Holding the read lock keeps the log, the records and the counter at one point.
        let cache = self.shared.read_cache().map_err(unavailable)?;
        let state = cache.states.get(&partition).copied();
        if !state.is_some_and(PartitionState::copyable) {
            return Err(ReadRefused::NotCopyable { state });
        }
        let unwritten = self.shared.read_unwritten().map_err(unavailable)?;
        let mut scan = ChangeScan {
            version_floor: cache.counters.get(&partition).copied().unwrap_or(0),
            last_version: after_version,
            done: true,
            ..ChangeScan::default()
        };
        let Some(log) = cache.change_logs.get(&partition) else {
            return Ok(scan);
        };
        // Index in `scan.records` of each key already in the batch.
        let mut seen: BTreeMap<&[u8], usize> = BTreeMap::new();
        let mut bytes = 0usize;
        for (version, key) in log.range(after_version.saturating_add(1)..) {
            if let Some(&i) = seen.get(key.as_slice()) {
                // A deletion is carried with the version of the key's latest change covered,
                // which is newer than any copy of the key the target may hold.
                scan.last_version = *version;
                let record = &mut scan.records[i];
                if record.value.is_none() {
                    record.version = *version;
                }
                continue;
            }
            if scan.records.len() >= limit_records.max(1)
                || (!scan.records.is_empty() && bytes >= limit_bytes)
            {
                scan.done = false;
                break;
            }
            scan.last_version = *version;
            seen.insert(key.as_slice(), scan.records.len());
            let data_key = codec::data_key(partition, key);
            let record = match unwritten.data(&data_key) {
                Some(change) => change.map(codec::decode_record).transpose(),
                None => self
                    .shared
                    .tree
                    .get(&data_key)
                    .map_err(StorageError::from)
                    .and_then(|stored| stored.map(|b| codec::decode_record(&b)).transpose()),
            }
            .map_err(unavailable)?;
            let changed = match record {
                Some(record) => ChangedRecord {
                    key: key.clone(),
                    version: record.version,
                    value: Some(record.value),
                },
                None => ChangedRecord {
                    key: key.clone(),
                    version: *version,
                    value: None,
                },
            };
            bytes += changed.key.len() + changed.value.as_ref().map_or(0, Vec::len);
            scan.records.push(changed);
        }
        Ok(scan)
    }

    /// The partition's state here (`None` = absent).
    pub fn partition_state(&self, partition: PartitionId) -> Option<PartitionState> {
        self.shared
            .read_cache()
            .ok()
            .and_then(|c| c.states.get(&partition).copied())
    }

    /// Keys stored here under the partition, whatever its state.
    pub fn partition_keys(&self, partition: PartitionId) -> u64 {
        self.shared
            .read_cache()
            .ok()
            .and_then(|c| c.partition_keys.get(&partition).copied())
            .unwrap_or(0)
    }

    /// (assignment epoch, number of partitions served) as applied.
    pub fn assignment(&self) -> (u64, u32) {
        match self.shared.read_cache() {
            Ok(cache) => {
                let serving = cache.states.values().filter(|s| s.writable()).count();
                (cache.epoch, u32::try_from(serving).unwrap_or(u32::MAX))
            }
            Err(_) => (0, 0),
        }
    }

    /// Number of keys stored, in all partitions (served or not).
    pub fn key_count(&self) -> u64 {
        self.shared.read_cache().map(|c| c.key_count).unwrap_or(0)
    }

    /// Snapshots received from a leader and installed since this process started.
    pub fn snapshots_installed(&self) -> u64 {
        self.shared.snapshots_installed.load(Ordering::Relaxed)
    }

    /// The log id of the last applied entry (for metrics and tests).
    pub fn last_applied(&self) -> Option<LogId<u64>> {
        self.shared.read_cache().ok().and_then(|c| c.last_applied)
    }
}

fn unavailable(e: StorageError) -> ReadRefused {
    tracing::error!(error = %e, code = e.code(), "state machine read failed");
    ReadRefused::Unavailable {
        reason: e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A state machine written before per-partition key counts existed (data and a total, no
    /// counts) gets its counts rebuilt from the data at open, and stored, so the next open
    /// reads them back without recounting.
    #[test]
    fn missing_key_counts_are_rebuilt_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().path(dir.path()).open().unwrap();
        let tree = db.open_tree("sm").unwrap();
        let record = codec::encode_record(&Record {
            version: 1,
            value: b"1".to_vec(),
        });
        for (p, key) in [(1, "a"), (1, "b"), (7, "a")] {
            tree.insert(codec::data_key(p, key.as_bytes()), record.clone())
                .unwrap();
        }
        tree.insert(META_KEY_COUNT, codec::encode(&3u64).unwrap())
            .unwrap();
        let cache = load_cache(&tree).unwrap();
        assert_eq!(cache.partition_keys, BTreeMap::from([(1, 2), (7, 1)]));
        assert_eq!(cache.key_count, 3);
        let stored = tree.get(codec::key_count_key(1)).unwrap().unwrap();
        assert_eq!(codec::decode_counter(&stored).unwrap(), 2);
        assert_eq!(load_cache(&tree).unwrap(), cache);
    }

    fn entry(index: u64, command: Command) -> Entry<TypeConfig> {
        Entry {
            log_id: LogId::new(openraft::CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(command),
        }
    }

    fn put(key: String) -> Command {
        Command::Put {
            partition: 0,
            key: key.into_bytes(),
            value: b"1".to_vec(),
            cas: None,
        }
    }

    /// Applied changes are read from the write-behind overlay at once, reach the tree only when
    /// the overlay is due (here: by size) or written explicitly, and then carry `last_applied`.
    #[tokio::test]
    async fn applied_changes_are_written_behind() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().path(dir.path()).open().unwrap();
        let flusher = Flusher::start(db.clone(), dir.path()).unwrap();
        let sm = SmShared::open(
            db.open_tree("sm").unwrap(),
            db.open_tree("snapshot").unwrap(),
            flusher,
        )
        .unwrap();
        let assign = Command::Assign {
            epoch: 1,
            partitions: vec![0],
        };
        sm.apply_entries([entry(1, assign), entry(2, put("young".into()))])
            .unwrap();
        let reader = SmReader::new(Arc::new(sm));
        let sm = &reader.shared;
        let stored = |key: &str| sm.tree.get(codec::data_key(0, key.as_bytes())).unwrap();
        assert_eq!(reader.get(0, b"young").unwrap().unwrap().version, 1);
        assert!(stored("young").is_none(), "written at once");

        let many: Vec<_> = (0..MAX_UNWRITTEN_RECORDS as u64)
            .map(|i| entry(3 + i, put(format!("k{i}"))))
            .collect();
        let last = many.last().unwrap().log_id;
        sm.apply_entries(many).unwrap();
        assert!(stored("young").is_some() && stored("k0").is_some());
        let stored_applied = sm.tree.get(META_LAST_APPLIED).unwrap().unwrap();
        let stored_applied: Option<LogId<u64>> =
            codec::decode("last_applied", &stored_applied).unwrap();
        assert_eq!(stored_applied, Some(last));

        sm.apply_entries([entry(last.index + 1, put("late".into()))])
            .unwrap();
        assert!(stored("late").is_none());
        sm.write_behind().unwrap();
        assert!(stored("late").is_some());
        assert_eq!(reader.key_count(), MAX_UNWRITTEN_RECORDS as u64 + 2);
    }

    /// A snapshot captured with changes still unwritten (an overwrite, a delete, a new key)
    /// images exactly the state at the capture, although applies go on during the scan and
    /// the overlay is due meanwhile; the tree is written again once the scan has ended.
    #[tokio::test]
    async fn capture_images_its_log_point_while_applies_go_on() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().path(dir.path()).open().unwrap();
        let flusher = Flusher::start(db.clone(), dir.path()).unwrap();
        let sm = Arc::new(
            SmShared::open(
                db.open_tree("sm").unwrap(),
                db.open_tree("snapshot").unwrap(),
                flusher,
            )
            .unwrap(),
        );
        let assign = Command::Assign {
            epoch: 1,
            partitions: vec![0],
        };
        let del = |key: &str| Command::Delete {
            partition: 0,
            key: key.as_bytes().to_vec(),
            cas: None,
        };
        sm.apply_entries([
            entry(1, assign),
            entry(2, put("a".into())),
            entry(3, put("b".into())),
            entry(4, put("c".into())),
        ])
        .unwrap();
        sm.write_behind().unwrap();
        sm.apply_entries([
            entry(5, put("b".into())),
            entry(6, del("c")),
            entry(7, put("d".into())),
        ])
        .unwrap();
        let source = SmShared::capture(&sm).unwrap();

        // Later applies, enough to make the overlay due: they must not reach the tree now.
        let later: Vec<_> = (0..MAX_UNWRITTEN_RECORDS as u64)
            .map(|i| entry(8 + i, put(format!("later{i}"))))
            .collect();
        sm.apply_entries(later).unwrap();
        sm.apply_entries([entry(9_000, del("a"))]).unwrap();
        assert!(sm.tree.get(codec::data_key(0, b"d")).unwrap().is_none());

        let image = source.into_image().unwrap();
        let keys: Vec<(Vec<u8>, u64)> = image
            .records()
            .iter()
            .map(|r| (r.key.clone(), r.version))
            .collect();
        assert_eq!(
            keys,
            vec![(b"a".to_vec(), 1), (b"b".to_vec(), 4), (b"d".to_vec(), 6)]
        );
        assert_eq!(image.last_applied().map(|l| l.index), Some(7));

        // Thawed: the next write-behind reaches the tree, with everything applied since.
        sm.write_behind().unwrap();
        assert!(sm.tree.get(codec::data_key(0, b"a")).unwrap().is_none());
        assert!(
            sm.tree
                .get(codec::data_key(0, b"later0"))
                .unwrap()
                .is_some()
        );
    }
}

//! Snapshots of the state machine: the image format, the builder, and the stored current one.
//!
//! openraft 0.9 runs `build_snapshot` concurrently with later applies, so the state machine is
//! captured in `get_snapshot_builder` (serialized with apply: the cache and unwritten changes
//! copied, the sled tree frozen) and scanned, encoded and stored here while applies go on. openraft also never reloads a stored snapshot into the state machine at start, and it
//! purges logs below a snapshot once built or installed: so both building and installing end
//! with a full flush + fsync, which makes the state machine durable at least up to the
//! snapshot's last log id before any log it covers can be purged.
//!
//! Image format: the format tag, then postcard of [`SnapshotImage`] (last_applied, membership,
//! assignment epoch, partition states — `Released` included — version counters and every data
//! record with its version; per-partition key counts are recounted from the records), followed
//! — only when some partition is exporting — by postcard of the change logs, so that an image
//! without change logs is byte for byte what earlier versions wrote. Field and variant order are
//! part of the format: append, never reorder.
//! This module must not decide when snapshots are taken; openraft does.

use crate::codec::{
    self, META_EPOCH, META_KEY_COUNT, META_LAST_APPLIED, META_MEMBERSHIP, SNAP_DATA, SNAP_META,
    SNAP_SEQ,
};
use crate::error::{IntoRaft, Op, RaftStorageError, StorageError};
use crate::state_machine::{SmCache, SmShared, SnapshotSource, write_states};
use crate::types::{PartitionState, RavelNode, TypeConfig};
use openraft::{LogId, RaftSnapshotBuilder, Snapshot, SnapshotMeta, StoredMembership};
use ravel_core::PartitionId;
use ravel_core::command::Record;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Cursor;
use std::sync::Arc;

/// One data record in a snapshot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SnapshotRecord {
    pub(crate) partition: PartitionId,
    pub(crate) key: Vec<u8>,
    pub(crate) version: u64,
    pub(crate) value: Vec<u8>,
}

/// The whole state machine at one log position.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SnapshotImage {
    last_applied: Option<LogId<u64>>,
    membership: StoredMembership<u64, RavelNode>,
    epoch: u64,
    states: Vec<(PartitionId, PartitionState)>,
    counters: Vec<(PartitionId, u64)>,
    records: Vec<SnapshotRecord>,
    /// (partition, version, key) of every change-log entry; encoded after the rest.
    #[serde(skip)]
    change_log: Vec<(PartitionId, u64, Vec<u8>)>,
}

impl SnapshotImage {
    pub(crate) fn new(cache: &SmCache, records: Vec<SnapshotRecord>) -> Self {
        Self {
            last_applied: cache.last_applied,
            membership: cache.membership.clone(),
            epoch: cache.epoch,
            states: cache.states.iter().map(|(p, s)| (*p, *s)).collect(),
            counters: cache.counters.iter().map(|(p, c)| (*p, *c)).collect(),
            records,
            change_log: cache
                .change_logs
                .iter()
                .flat_map(|(p, log)| log.iter().map(|(v, k)| (*p, *v, k.clone())))
                .collect(),
        }
    }

    /// The stored form: the image, then its change logs if there are any.
    pub(crate) fn encode(&self) -> Result<Vec<u8>, StorageError> {
        let mut bytes = codec::encode(self)?;
        if !self.change_log.is_empty() {
            bytes = postcard::to_extend(&self.change_log, bytes)
                .map_err(|e| StorageError::corrupt("snapshot", e))?;
        }
        Ok(bytes)
    }

    #[cfg(test)]
    pub(crate) fn records(&self) -> &[SnapshotRecord] {
        &self.records
    }

    #[cfg(test)]
    pub(crate) fn last_applied(&self) -> Option<LogId<u64>> {
        self.last_applied
    }

    pub(crate) fn decode(bytes: &[u8]) -> Result<Self, StorageError> {
        let body = codec::strip_tag("snapshot", bytes)?;
        let (mut image, rest): (Self, _) =
            postcard::take_from_bytes(body).map_err(|e| StorageError::corrupt("snapshot", e))?;
        if !rest.is_empty() {
            image.change_log =
                postcard::from_bytes(rest).map_err(|e| StorageError::corrupt("snapshot", e))?;
        }
        Ok(image)
    }

    /// Refuses an image whose position differs from the metadata it arrived with.
    pub(crate) fn check_matches(
        &self,
        meta: &SnapshotMeta<u64, RavelNode>,
    ) -> Result<(), StorageError> {
        if self.last_applied == meta.last_log_id {
            return Ok(());
        }
        Err(StorageError::corrupt(
            "snapshot",
            format!(
                "image at {:?} but metadata says {:?}",
                self.last_applied, meta.last_log_id
            ),
        ))
    }

    /// Adds this image's keys to `batch` (which already clears the tree) and returns the cache
    /// that matches them.
    pub(crate) fn write_into(self, batch: &mut sled::Batch) -> Result<SmCache, StorageError> {
        let mut cache = SmCache {
            last_applied: self.last_applied,
            membership: self.membership,
            epoch: self.epoch,
            states: self.states.into_iter().collect(),
            counters: self.counters.into_iter().collect(),
            partition_keys: BTreeMap::new(),
            key_count: self.records.len() as u64,
            change_logs: BTreeMap::new(),
        };
        for (p, version, key) in self.change_log {
            batch.insert(
                &codec::change_key(p, version)[..],
                codec::encode_change(&key),
            );
            cache.change_logs.entry(p).or_default().insert(version, key);
        }
        for r in &self.records {
            *cache.partition_keys.entry(r.partition).or_default() += 1;
        }
        for r in self.records {
            let record = Record {
                version: r.version,
                value: r.value,
            };
            batch.insert(
                codec::data_key(r.partition, &r.key),
                codec::encode_record(&record),
            );
        }
        write_states(batch, &cache.states);
        for (p, counter) in &cache.counters {
            batch.insert(&codec::counter_key(*p)[..], codec::encode_counter(*counter));
        }
        for (p, keys) in &cache.partition_keys {
            batch.insert(&codec::key_count_key(*p)[..], codec::encode_counter(*keys));
        }
        batch.insert(META_LAST_APPLIED, codec::encode(&cache.last_applied)?);
        batch.insert(META_MEMBERSHIP, codec::encode(&cache.membership)?);
        batch.insert(META_EPOCH, codec::encode(&cache.epoch)?);
        batch.insert(META_KEY_COUNT, codec::encode(&cache.key_count)?);
        Ok(cache)
    }
}

/// Builds a snapshot from the state machine captured serialized with apply.
pub struct SnapshotBuilder {
    shared: Arc<SmShared>,
    source: Option<Result<SnapshotSource, StorageError>>,
}

impl SnapshotBuilder {
    pub(crate) fn new(shared: Arc<SmShared>, source: Result<SnapshotSource, StorageError>) -> Self {
        Self {
            shared,
            source: Some(source),
        }
    }

    async fn build(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let source = self
            .source
            .take()
            .unwrap_or_else(|| Err(StorageError::corrupt("snapshot", "builder used twice")))?;
        // The scan and the encoding are slow for a big state machine: off the async threads.
        let (image, data) = tokio::task::spawn_blocking(move || {
            let image = source.into_image()?;
            let data = image.encode()?;
            Ok::<_, StorageError>((image, data))
        })
        .await
        .map_err(|e| StorageError::corrupt("snapshot", format!("build thread failed: {e}")))??;
        let seq = next_seq(&self.shared)?;
        let meta = SnapshotMeta {
            last_log_id: image.last_applied,
            last_membership: image.membership,
            snapshot_id: snapshot_id(image.last_applied, seq),
        };
        store_current(&self.shared, &meta, &data)?;
        // Makes the state machine (at or past this image: the captured changes are still in the
        // overlay until written here) and the snapshot durable before openraft may purge the
        // logs the snapshot covers.
        self.shared.write_behind()?;
        self.shared.flusher.sync().await?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, RaftStorageError> {
        let snapshot = self.build().await.raft(Op::WriteSnapshot)?;
        crate::metrics::count_snapshot("built");
        Ok(snapshot)
    }
}

fn snapshot_id(last: Option<LogId<u64>>, seq: u64) -> String {
    match last {
        Some(id) => format!(
            "{}-{}-{}-{seq}",
            id.leader_id.term, id.leader_id.node_id, id.index
        ),
        None => format!("none-{seq}"),
    }
}

/// Allocates the next snapshot sequence number (only used to make snapshot ids distinct).
fn next_seq(shared: &SmShared) -> Result<u64, StorageError> {
    let _guard = shared
        .snapshot_store_lock
        .lock()
        .map_err(|_| lock_poisoned())?;
    let seq = match shared.snapshots.get(SNAP_SEQ)? {
        Some(bytes) => codec::decode::<u64>("snapshot sequence", &bytes)? + 1,
        None => 1,
    };
    shared.snapshots.insert(SNAP_SEQ, codec::encode(&seq)?)?;
    Ok(seq)
}

fn lock_poisoned() -> StorageError {
    StorageError::corrupt("snapshot store", "lock poisoned by an earlier panic")
}

/// Stores `meta` + `data` as the current snapshot, unless a newer one is already stored (a
/// build that finished after an install of a later snapshot must not replace it).
pub(crate) fn store_current(
    shared: &SmShared,
    meta: &SnapshotMeta<u64, RavelNode>,
    data: &[u8],
) -> Result<(), StorageError> {
    let _guard = shared
        .snapshot_store_lock
        .lock()
        .map_err(|_| lock_poisoned())?;
    if let Some(current) = load_meta(shared)?
        && current.last_log_id > meta.last_log_id
    {
        return Ok(());
    }
    let mut batch = sled::Batch::default();
    batch.insert(SNAP_META, codec::encode(meta)?);
    batch.insert(SNAP_DATA, data);
    shared.snapshots.apply_batch(batch)?;
    Ok(())
}

fn load_meta(shared: &SmShared) -> Result<Option<SnapshotMeta<u64, RavelNode>>, StorageError> {
    shared
        .snapshots
        .get(SNAP_META)?
        .map(|bytes| codec::decode("snapshot metadata", &bytes))
        .transpose()
}

/// The stored current snapshot, if any.
pub(crate) fn load_current(
    shared: &SmShared,
) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
    let _guard = shared
        .snapshot_store_lock
        .lock()
        .map_err(|_| lock_poisoned())?;
    let Some(meta) = load_meta(shared)? else {
        return Ok(None);
    };
    let data = shared
        .snapshots
        .get(SNAP_DATA)?
        .ok_or_else(|| StorageError::corrupt("snapshot", "metadata without data"))?;
    Ok(Some(Snapshot {
        meta,
        snapshot: Box::new(Cursor::new(data.to_vec())),
    }))
}

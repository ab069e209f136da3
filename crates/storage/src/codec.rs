//! On-disk encodings: sled keys, the one-byte format tag in front of every stored value, and
//! postcard for structured values (entries, vote, membership, snapshots).
//!
//! Layout of the `sm` tree (data and metadata share one tree so that one `sled::Batch` per
//! `apply()` is atomic without a transaction):
//!
//! | key | value |
//! | --- | --- |
//! | `b'd'`, partition u32 BE, key bytes | tag, version u64 BE, exact JSON text |
//! | `b's'`, partition u32 BE | tag, `PartitionState` byte |
//! | `b'v'`, partition u32 BE | tag, max version ever issued in the partition, u64 BE |
//! | `b'c'`, partition u32 BE | tag, number of keys stored under the partition, u64 BE (absent = 0) |
//! | `b'x'`, partition u32 BE, version u64 BE | tag, key bytes: the change log of an exporting partition |
//! | `b'm'`, name | tag, postcard value |
//!
//! One partition's data is therefore one prefix scan (`data_prefix(p)`), which migration needs.
//! Keys of the old `raft_log` tree (read by the upgrade only) are the entry index as u64
//! big-endian, so sled's byte order is index order.
//! This module must not touch sled trees or do I/O; it only turns values into bytes and back.

use crate::error::StorageError;
use crate::types::PartitionState;
use ravel_core::PartitionId;
use ravel_core::command::Record;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// The format tag of every value this version writes. A reader that meets another tag refuses
/// it (corruption or a newer format) rather than guess.
pub(crate) const FORMAT_V1: u8 = 1;

const DATA_PREFIX: u8 = b'd';
const STATE_PREFIX: u8 = b's';
const COUNTER_PREFIX: u8 = b'v';
const KEY_COUNT_PREFIX: u8 = b'c';
const CHANGE_PREFIX: u8 = b'x';

/// Reserved metadata keys of the `sm` tree.
pub(crate) const META_LAST_APPLIED: &[u8] = b"m/last_applied";
pub(crate) const META_MEMBERSHIP: &[u8] = b"m/membership";
pub(crate) const META_EPOCH: &[u8] = b"m/epoch";
pub(crate) const META_KEY_COUNT: &[u8] = b"m/key_count";

/// Keys of the `raft_meta` tree, which held the log's metadata before the WAL (read by the
/// upgrade only).
pub(crate) const RAFT_VOTE: &[u8] = b"vote";
pub(crate) const RAFT_COMMITTED: &[u8] = b"committed";
pub(crate) const RAFT_LAST_PURGED: &[u8] = b"last_purged";

/// Keys of the `snapshot` tree.
pub(crate) const SNAP_META: &[u8] = b"meta";
pub(crate) const SNAP_DATA: &[u8] = b"data";
pub(crate) const SNAP_SEQ: &[u8] = b"seq";

/// Encodes `value` as the format tag followed by its postcard bytes.
pub(crate) fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, StorageError> {
    postcard::to_extend(value, vec![FORMAT_V1]).map_err(|e| StorageError::corrupt("value", e))
}

/// Decodes a value written by [`encode`]; `what` names it in the error.
pub(crate) fn decode<T: DeserializeOwned>(
    what: &'static str,
    bytes: &[u8],
) -> Result<T, StorageError> {
    let body = strip_tag(what, bytes)?;
    postcard::from_bytes(body).map_err(|e| StorageError::corrupt(what, e))
}

pub(crate) fn strip_tag<'a>(what: &'static str, bytes: &'a [u8]) -> Result<&'a [u8], StorageError> {
    match bytes.split_first() {
        Some((&FORMAT_V1, body)) => Ok(body),
        Some((tag, _)) => Err(StorageError::corrupt(
            what,
            format!("unknown format tag {tag}"),
        )),
        None => Err(StorageError::corrupt(what, "empty value")),
    }
}

/// The log index a sled key of the `raft_log` tree names.
pub(crate) fn log_index(key: &[u8]) -> Result<u64, StorageError> {
    let raw: [u8; 8] = key
        .try_into()
        .map_err(|_| StorageError::corrupt("log key", format!("{} bytes", key.len())))?;
    Ok(u64::from_be_bytes(raw))
}

fn partition_key(prefix: u8, partition: PartitionId) -> [u8; 5] {
    let p = partition.to_be_bytes();
    [prefix, p[0], p[1], p[2], p[3]]
}

/// The prefix under which all of `partition`'s data keys live.
pub(crate) fn data_prefix(partition: PartitionId) -> [u8; 5] {
    partition_key(DATA_PREFIX, partition)
}

/// The prefix of all data keys of all partitions.
pub(crate) fn all_data_prefix() -> [u8; 1] {
    [DATA_PREFIX]
}

/// The sled key of `key` in `partition`.
pub(crate) fn data_key(partition: PartitionId, key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + key.len());
    out.extend_from_slice(&data_prefix(partition));
    out.extend_from_slice(key);
    out
}

/// Splits a data key into (partition, user key).
pub(crate) fn split_data_key(raw: &[u8]) -> Result<(PartitionId, &[u8]), StorageError> {
    let partition = split_partition_key(DATA_PREFIX, raw, "data key")?;
    Ok((partition, &raw[5..]))
}

fn split_partition_key(
    prefix: u8,
    raw: &[u8],
    what: &'static str,
) -> Result<PartitionId, StorageError> {
    match raw {
        [p, a, b, c, d, ..] if *p == prefix => Ok(u32::from_be_bytes([*a, *b, *c, *d])),
        _ => Err(StorageError::corrupt(
            what,
            format!("malformed key {raw:?}"),
        )),
    }
}

/// The sled key of `partition`'s state.
pub(crate) fn state_key(partition: PartitionId) -> [u8; 5] {
    partition_key(STATE_PREFIX, partition)
}

/// The prefix of all partition-state keys.
pub(crate) fn all_states_prefix() -> [u8; 1] {
    [STATE_PREFIX]
}

/// The partition a state key names.
pub(crate) fn state_partition(raw: &[u8]) -> Result<PartitionId, StorageError> {
    split_partition_key(STATE_PREFIX, raw, "partition state key")
}

/// The sled key of `partition`'s version counter.
pub(crate) fn counter_key(partition: PartitionId) -> [u8; 5] {
    partition_key(COUNTER_PREFIX, partition)
}

/// The prefix of all version-counter keys.
pub(crate) fn all_counters_prefix() -> [u8; 1] {
    [COUNTER_PREFIX]
}

/// The partition a counter key names.
pub(crate) fn counter_partition(raw: &[u8]) -> Result<PartitionId, StorageError> {
    split_partition_key(COUNTER_PREFIX, raw, "version counter key")
}

/// The sled key of `partition`'s key count.
pub(crate) fn key_count_key(partition: PartitionId) -> [u8; 5] {
    partition_key(KEY_COUNT_PREFIX, partition)
}

/// The prefix of all per-partition key-count keys.
pub(crate) fn all_key_counts_prefix() -> [u8; 1] {
    [KEY_COUNT_PREFIX]
}

/// The partition a key-count key names.
pub(crate) fn key_count_partition(raw: &[u8]) -> Result<PartitionId, StorageError> {
    split_partition_key(KEY_COUNT_PREFIX, raw, "partition key count key")
}

/// The sled key of the change-log entry of `partition` with `version`.
pub(crate) fn change_key(partition: PartitionId, version: u64) -> [u8; 13] {
    let mut out = [0u8; 13];
    out[..5].copy_from_slice(&partition_key(CHANGE_PREFIX, partition));
    out[5..].copy_from_slice(&version.to_be_bytes());
    out
}

/// The prefix of all change-log keys.
pub(crate) fn all_changes_prefix() -> [u8; 1] {
    [CHANGE_PREFIX]
}

/// Splits a change-log key into (partition, version).
pub(crate) fn split_change_key(raw: &[u8]) -> Result<(PartitionId, u64), StorageError> {
    let partition = split_partition_key(CHANGE_PREFIX, raw, "change log key")?;
    match split_u64(&raw[5..]) {
        Some((version, [])) => Ok((partition, version)),
        _ => Err(StorageError::corrupt(
            "change log key",
            format!("malformed key {raw:?}"),
        )),
    }
}

/// Encodes a change-log entry's value: tag, the user key that changed.
pub(crate) fn encode_change(key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + key.len());
    out.push(FORMAT_V1);
    out.extend_from_slice(key);
    out
}

/// Decodes a change-log entry's value.
pub(crate) fn decode_change(bytes: &[u8]) -> Result<Vec<u8>, StorageError> {
    Ok(strip_tag("change log entry", bytes)?.to_vec())
}

/// Encodes a stored record: tag, version u64 BE, the exact JSON text.
pub(crate) fn encode_record(record: &Record) -> Vec<u8> {
    let mut out = Vec::with_capacity(9 + record.value.len());
    out.push(FORMAT_V1);
    out.extend_from_slice(&record.version.to_be_bytes());
    out.extend_from_slice(&record.value);
    out
}

/// Decodes a stored record.
pub(crate) fn decode_record(bytes: &[u8]) -> Result<Record, StorageError> {
    let body = strip_tag("record", bytes)?;
    let (version, value) = split_u64(body)
        .ok_or_else(|| StorageError::corrupt("record", "shorter than its version"))?;
    Ok(Record {
        version,
        value: value.to_vec(),
    })
}

/// The version of a stored record, without copying its value.
pub(crate) fn record_version(bytes: &[u8]) -> Result<u64, StorageError> {
    let body = strip_tag("record", bytes)?;
    split_u64(body)
        .map(|(v, _)| v)
        .ok_or_else(|| StorageError::corrupt("record", "shorter than its version"))
}

fn split_u64(body: &[u8]) -> Option<(u64, &[u8])> {
    let (head, rest) = body.split_first_chunk::<8>()?;
    Some((u64::from_be_bytes(*head), rest))
}

/// Encodes a version counter.
pub(crate) fn encode_counter(counter: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(9);
    out.push(FORMAT_V1);
    out.extend_from_slice(&counter.to_be_bytes());
    out
}

/// Decodes a version counter.
pub(crate) fn decode_counter(bytes: &[u8]) -> Result<u64, StorageError> {
    let body = strip_tag("version counter", bytes)?;
    match split_u64(body) {
        Some((v, [])) => Ok(v),
        _ => Err(StorageError::corrupt("version counter", "not 8 bytes")),
    }
}

/// Encodes a partition state.
pub(crate) fn encode_state(state: PartitionState) -> [u8; 2] {
    [FORMAT_V1, state.to_byte()]
}

/// Decodes a partition state.
pub(crate) fn decode_state(bytes: &[u8]) -> Result<PartitionState, StorageError> {
    match strip_tag("partition state", bytes)? {
        [b] => PartitionState::from_byte(*b)
            .ok_or_else(|| StorageError::corrupt("partition state", format!("unknown state {b}"))),
        _ => Err(StorageError::corrupt("partition state", "not one byte")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A record survives encode/decode byte for byte, and its version is readable alone.
    #[test]
    fn record_round_trip() {
        let record = Record {
            version: 0x0102_0304_0506_0708,
            value: br#"{"a":[1,2]}"#.to_vec(),
        };
        let bytes = encode_record(&record);
        assert_eq!(bytes[0], FORMAT_V1);
        assert_eq!(&bytes[1..9], &record.version.to_be_bytes());
        assert_eq!(decode_record(&bytes).unwrap(), record);
        assert_eq!(record_version(&bytes).unwrap(), record.version);
    }

    /// A value with an unknown format tag is refused, not misread.
    #[test]
    fn unknown_tag_is_refused() {
        let mut bytes = encode_record(&Record {
            version: 1,
            value: b"1".to_vec(),
        });
        bytes[0] = 9;
        assert!(matches!(
            decode_record(&bytes),
            Err(StorageError::Corrupt { .. })
        ));
        assert!(matches!(
            decode::<u64>("x", &[]),
            Err(StorageError::Corrupt { .. })
        ));
    }

    /// Data keys of one partition share its prefix and sort after lower partitions.
    #[test]
    fn data_keys_group_by_partition() {
        let k = data_key(7, b"abc");
        assert!(k.starts_with(&data_prefix(7)));
        assert!(!k.starts_with(&data_prefix(8)));
        assert!(data_key(7, b"\xff\xff") < data_key(8, b""));
        assert_eq!(split_data_key(&k).unwrap(), (7, &b"abc"[..]));
        assert_eq!(state_partition(&state_key(300)).unwrap(), 300);
        assert_eq!(counter_partition(&counter_key(9)).unwrap(), 9);
        assert_eq!(key_count_partition(&key_count_key(11)).unwrap(), 11);
        assert!(key_count_partition(&counter_key(11)).is_err());
        assert_eq!(split_change_key(&change_key(5, 77)).unwrap(), (5, 77));
        assert!(change_key(5, 77) < change_key(5, 78));
        assert!(change_key(5, u64::MAX) < change_key(6, 0));
        assert!(split_change_key(&counter_key(5)).is_err());
        assert_eq!(decode_change(&encode_change(b"k1")).unwrap(), b"k1");
    }

    /// Old log keys (big-endian indexes) read back as their index; other lengths are refused.
    #[test]
    fn log_keys_read_back() {
        assert_eq!(log_index(&42u64.to_be_bytes()).unwrap(), 42);
        assert!(log_index(&[1, 2, 3]).is_err());
    }
}

//! The frozen partition function: `partition(key) = xxh3_64(key bytes) % P`.
//!
//! This function decides where every key lives on disk. Changing it would silently hide data,
//! so it is pinned by a fixed-vector test below; do not edit the vectors to make a test pass.

use crate::PartitionId;
use xxhash_rust::xxh3::xxh3_64;

/// The partition that owns `key` in a store of `partitions` partitions.
///
/// # Panics
/// If `partitions` is zero, which the admin never allows.
#[must_use]
pub fn partition_of(key: &[u8], partitions: u32) -> PartitionId {
    assert!(partitions > 0, "the partition count is never zero");
    // The remainder is < partitions <= u32::MAX, so the narrowing is exact.
    (xxh3_64(key) % u64::from(partitions)) as PartitionId
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The partition function is frozen: these keys map to these partitions forever.
    #[test]
    fn pinned_partition_vectors() {
        let vectors: &[(&str, u32, u32)] = &[
            ("", 1024, 194),
            ("a", 1024, 543),
            ("key", 1024, 483),
            ("user:1", 1024, 257),
            ("user:2", 1024, 2),
            ("hello world", 1024, 139),
            ("ravel", 1024, 529),
            ("κλειδί", 1024, 489),
            ("key", 7, 5),
            ("user:1", 65536, 38145),
        ];
        for &(key, partitions, expected) in vectors {
            assert_eq!(
                partition_of(key.as_bytes(), partitions),
                expected,
                "partition_of({key:?}, {partitions})"
            );
        }
    }

    /// The hash value itself is pinned too, so that a change of xxhash crate is caught.
    #[test]
    fn pinned_xxh3_value() {
        assert_eq!(xxh3_64(b""), 0x2d06_8005_38d3_94c2);
    }

    #[test]
    fn every_partition_is_in_range() {
        for i in 0..10_000u32 {
            let key = format!("k{i}");
            assert!(partition_of(key.as_bytes(), 1024) < 1024);
        }
    }
}

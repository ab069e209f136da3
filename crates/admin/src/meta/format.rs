//! The on-disk format of the state record: its format tag, the encoding, the upgrade of the
//! older layout, and the invariants a loaded state must satisfy.

use super::{ClusterRecord, MetaError, MetaState, ReplicaRecord};
use ravel_core::{ClusterId, NodeId, PartitionTable};
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};

/// First byte of the stored record: the encoding of what follows (1 = postcard of the layout
/// before migration, [`MetaStateV1`]; 2 = postcard of `MetaState`). A new layout gets a new tag,
/// so an old binary refuses a newer file instead of misreading it, and a new binary upgrades an
/// old one on load.
pub(super) const STATE_FORMAT_V1: u8 = 1;
const STATE_FORMAT_V2: u8 = 2;

impl MetaState {
    /// Checks invariants a loaded state must satisfy, so a damaged file fails loudly at start.
    pub(super) fn validate(&self) -> Result<(), MetaError> {
        let corrupt = |what: String| Err(MetaError::Corrupt(what));
        if self.table.partitions() != self.partitions {
            return corrupt(format!(
                "table has {} partitions, header says {}",
                self.table.partitions(),
                self.partitions
            ));
        }
        for (id, cluster) in &self.clusters {
            if *id != cluster.id || *id >= self.next_cluster_id {
                return corrupt(format!("cluster record {id} is inconsistent"));
            }
            for n in &cluster.replicas {
                if self.replicas.get(n).map(|r| r.cluster_id) != Some(*id) {
                    return corrupt(format!("cluster {id} lists replica {n} it does not hold"));
                }
            }
        }
        if self.target.len() != self.partitions as usize {
            return corrupt(format!("target has {} partitions", self.target.len()));
        }
        if let Some(c) = self
            .draining
            .iter()
            .find(|c| !self.clusters.contains_key(c))
        {
            return corrupt(format!("draining cluster {c} does not exist"));
        }
        if let Some(p) = self.moves.keys().find(|p| **p >= self.partitions) {
            return corrupt(format!("move of partition {p} is out of range"));
        }
        if self.assignment_epoch > self.table.epoch {
            return corrupt("assignment epoch is ahead of the table".into());
        }
        for (id, r) in &self.replicas {
            if *id != r.node_id || *id >= self.next_node_id {
                return corrupt(format!("replica record {id} is inconsistent"));
            }
            if !self
                .clusters
                .get(&r.cluster_id)
                .is_some_and(|c| c.replicas.contains(id))
            {
                return corrupt(format!(
                    "replica {id} names missing cluster {}",
                    r.cluster_id
                ));
            }
        }
        Ok(())
    }
}

/// The stored layout before migration (format 1), kept to upgrade an older admin's file.
#[derive(Deserialize)]
struct MetaStateV1 {
    partitions: u32,
    table: PartitionTable,
    clusters: BTreeMap<ClusterId, ClusterRecord>,
    replicas: BTreeMap<NodeId, ReplicaRecord>,
    has_data: bool,
    next_node_id: NodeId,
    next_cluster_id: ClusterId,
    tokens: BTreeMap<u64, NodeId>,
    founders: BTreeMap<ClusterId, NodeId>,
}

impl From<MetaStateV1> for MetaState {
    fn from(v1: MetaStateV1) -> Self {
        let target = v1.table.owners.clone();
        // Format 1 only changed the table by recomputing (an assignment) or by a forced
        // removal; either way no cluster needs more than the table's epoch.
        let assignment_epoch = v1.table.epoch;
        Self {
            partitions: v1.partitions,
            table: v1.table,
            clusters: v1.clusters,
            replicas: v1.replicas,
            has_data: v1.has_data,
            next_node_id: v1.next_node_id,
            next_cluster_id: v1.next_cluster_id,
            tokens: v1.tokens,
            founders: v1.founders,
            assignment_epoch,
            target,
            draining: BTreeSet::new(),
            moves: BTreeMap::new(),
            max_write_pause_ms: 0,
        }
    }
}

/// Encodes a state as stored: format tag, then postcard.
pub(super) fn encode(state: &MetaState) -> Result<Vec<u8>, MetaError> {
    let mut bytes = vec![STATE_FORMAT_V2];
    bytes.extend(postcard::to_stdvec(state)?);
    Ok(bytes)
}

/// Decodes a stored state (upgrading format 1), refusing unknown format tags.
pub(super) fn decode(bytes: &[u8]) -> Result<MetaState, MetaError> {
    match bytes.split_first() {
        Some((&STATE_FORMAT_V2, rest)) => Ok(postcard::from_bytes(rest)?),
        Some((&STATE_FORMAT_V1, rest)) => Ok(postcard::from_bytes::<MetaStateV1>(rest)?.into()),
        Some((&tag, _)) => Err(MetaError::UnknownFormat(tag)),
        None => Err(MetaError::Corrupt("empty state record".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stored record with an unknown format tag is refused rather than misread.
    #[test]
    fn unknown_format_is_refused() {
        assert!(matches!(
            decode(&[9, 1, 2]),
            Err(MetaError::UnknownFormat(9))
        ));
        let s = MetaState::new(4);
        assert_eq!(decode(&encode(&s).unwrap()).unwrap(), s);
    }
}

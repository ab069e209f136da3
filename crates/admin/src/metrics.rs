//! The admin's Prometheus series: their HELP text and units, and the gauges read from the
//! metadata at scrape time (clusters, replicas, partitions per cluster, table epoch, clusters
//! with a known leader). Counters and histograms are recorded where things happen: requests in
//! `http`, route retries in `router`, moves and their write pauses in `mover`.

use metrics::{Unit, describe_counter, describe_gauge, describe_histogram, gauge};

use crate::AdminState;

/// Registers the HELP text and unit of every admin series (the recorder must exist already).
pub fn describe() {
    // The admins' Raft log is the replicas' WAL code, which records its group-commit syncs
    // under the storage crate's series names (`ravel_node_log_fsync_*`).
    ravel_storage::describe_metrics();
    describe_counter!(
        "ravel_admin_requests_total",
        "Client HTTP requests answered, by route and code"
    );
    describe_histogram!(
        "ravel_admin_request_duration_seconds",
        Unit::Seconds,
        "Time to answer a client HTTP request, by route"
    );
    describe_counter!(
        "ravel_admin_route_retries_total",
        "Requests re-sent to a cluster (a new leader, a moved partition), by reason"
    );
    describe_counter!(
        "ravel_admin_moves_total",
        "Partition moves ended, by outcome (finished, aborted)"
    );
    describe_gauge!("ravel_admin_moves_in_progress", "Partition moves under way");
    describe_counter!(
        "ravel_admin_migrated_records_total",
        "Records (and deletions) copied to the targets of partition moves"
    );
    describe_counter!(
        "ravel_admin_migrated_bytes_total",
        Unit::Bytes,
        "Bytes of keys and values copied to the targets of partition moves"
    );
    describe_histogram!(
        "ravel_admin_move_duration_seconds",
        Unit::Seconds,
        "Time from the start of a partition move to its end"
    );
    describe_histogram!(
        "ravel_admin_move_write_pause_seconds",
        Unit::Seconds,
        "Time a moving partition refused writes (source freeze to table switch)"
    );
    describe_gauge!("ravel_admin_clusters", "Clusters known to the admin");
    describe_gauge!("ravel_admin_replicas", "Replicas known to the admin");
    describe_gauge!(
        "ravel_admin_clusters_with_leader",
        "Clusters whose leader the admin knows"
    );
    describe_gauge!(
        "ravel_admin_cluster_partitions",
        "Partitions each cluster owns in the table, by cluster id"
    );
    describe_gauge!(
        "ravel_admin_table_epoch",
        "Epoch of the partition table (grows with every change)"
    );
    describe_gauge!(
        "ravel_admin_partitions",
        "Partitions in the table (fixed at the first start)"
    );
    describe_gauge!(
        "ravel_admin_group_leader",
        "1 while this admin leads the admins' Raft group (and drives moves), else 0"
    );
    describe_gauge!(
        "ravel_admin_group_term",
        "The admins' Raft group's current term"
    );
    describe_gauge!(
        "ravel_admin_group_voters",
        "Voters of the admins' Raft group"
    );
}

/// Sets the gauges that are read off the metadata, just before a scrape renders them.
#[allow(clippy::cast_precision_loss)] // Prometheus samples are f64.
pub fn record_scrape_gauges(state: &AdminState) {
    let meta = state.meta.current();
    gauge!("ravel_admin_clusters").set(meta.clusters.len() as f64);
    gauge!("ravel_admin_replicas").set(meta.replicas.len() as f64);
    gauge!("ravel_admin_table_epoch").set(meta.table.epoch as f64);
    gauge!("ravel_admin_partitions").set(f64::from(meta.partitions));
    let mut with_leader = 0_u32;
    for &cluster in meta.clusters.keys() {
        gauge!("ravel_admin_cluster_partitions", "cluster" => cluster.to_string())
            .set(meta.table.count_of(cluster) as f64);
        if state.pool.leader(cluster).is_some() {
            with_leader += 1;
        }
    }
    gauge!("ravel_admin_clusters_with_leader").set(f64::from(with_leader));
    let status = state.meta.status(&crate::meta::raft::AdminNode::default());
    gauge!("ravel_admin_group_leader").set(if state.meta.is_leader() { 1.0 } else { 0.0 });
    gauge!("ravel_admin_group_term").set(status.term as f64);
    gauge!("ravel_admin_group_voters").set(status.voters.len() as f64);
}

//! The storage's Prometheus series (recorded through the `metrics` facade; the process that
//! installs a recorder — `ravel_node` with `--http` — exports them): how long the Raft log's
//! group-commit syncs take and how many appends each one makes durable, and how long applying
//! a run of committed entries to the state machine takes, and how many snapshots were built
//! and installed.

use std::time::Duration;

use metrics::{Unit, describe_histogram, histogram};

const LOG_SYNC_SECONDS: &str = "ravel_node_log_fsync_duration_seconds";
const LOG_SYNC_WAITERS: &str = "ravel_node_log_fsync_appends";
const APPLY_SECONDS: &str = "ravel_node_apply_duration_seconds";
const APPLY_ENTRIES: &str = "ravel_node_apply_entries";
const SNAPSHOTS: &str = "ravel_node_snapshots_total";

/// Registers the HELP text and unit of every storage series.
pub fn describe_metrics() {
    describe_histogram!(
        LOG_SYNC_SECONDS,
        Unit::Seconds,
        "Time of one fdatasync of the Raft log (one group commit)"
    );
    describe_histogram!(
        LOG_SYNC_WAITERS,
        "Log appends made durable by one group-commit fdatasync"
    );
    describe_histogram!(
        APPLY_SECONDS,
        Unit::Seconds,
        "Time to apply one run of committed entries to the state machine"
    );
    describe_histogram!(APPLY_ENTRIES, "Committed entries applied in one run");
    metrics::describe_counter!(
        SNAPSHOTS,
        "Snapshots of the state machine since the replica started, by how (built, installed)"
    );
}

pub(crate) fn count_snapshot(how: &'static str) {
    metrics::counter!(SNAPSHOTS, "how" => how).increment(1);
}

pub(crate) fn record_log_sync(took: Duration, appends: usize) {
    histogram!(LOG_SYNC_SECONDS).record(took.as_secs_f64());
    #[allow(clippy::cast_precision_loss)] // Prometheus samples are f64.
    histogram!(LOG_SYNC_WAITERS).record(appends as f64);
}

pub(crate) fn record_apply(took: Duration, entries: usize) {
    histogram!(APPLY_SECONDS).record(took.as_secs_f64());
    #[allow(clippy::cast_precision_loss)]
    histogram!(APPLY_ENTRIES).record(entries as f64);
}

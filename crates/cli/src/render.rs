//! Tables for a person: aligned columns, and the `status` page built from `GET /v1/cluster`
//! (admins, clusters, replicas, moves). Fields the admin did not send show as `-`.

use serde_json::Value;

/// `headers` and `rows` as left-aligned columns separated by two spaces, one line per row.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut out = String::new();
        for (i, cell) in cells.enumerate() {
            if i > 0 {
                out.push_str("  ");
            }
            out.push_str(cell);
            let pad = widths[i].saturating_sub(cell.chars().count());
            out.extend(std::iter::repeat_n(' ', pad));
        }
        out.truncate(out.trim_end().len());
        out.push('\n');
        out
    };
    let mut out = line(&mut headers.iter().copied());
    for row in rows {
        out.push_str(&line(&mut row.iter().map(String::as_str)));
    }
    out
}

/// A JSON field as a cell: strings bare, null or missing as `-`, anything else as JSON.
fn cell(value: &Value) -> String {
    match value {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        Value::Bool(true) => "yes".into(),
        Value::Bool(false) => "no".into(),
        other => other.to_string(),
    }
}

fn items(value: &Value) -> &[Value] {
    value.as_array().map_or(&[], Vec::as_slice)
}

/// The `ravel_admin status` page for a `/v1/cluster` document.
pub fn status_table(view: &Value) -> String {
    let mut out = String::new();
    let admins = items(&view["admins"]);
    if !admins.is_empty() {
        let rows: Vec<Vec<String>> = admins
            .iter()
            .map(|a| {
                vec![
                    cell(&a["grpc_addr"]),
                    cell(&a["http_addr"]),
                    cell(&a["role"]),
                    cell(&a["healthy"]),
                ]
            })
            .collect();
        out.push_str("ADMINS\n");
        out.push_str(&table(&["GRPC", "HTTP", "ROLE", "HEALTHY"], &rows));
        out.push('\n');
    }

    let clusters = items(&view["clusters"]);
    let cluster_rows: Vec<Vec<String>> = clusters
        .iter()
        .map(|c| {
            let state = if c["draining"] == Value::Bool(true) {
                "draining"
            } else if c["leader"].is_null() {
                "no leader"
            } else {
                "serving"
            };
            vec![
                cell(&c["id"]),
                cell(&c["leader"]),
                cell(&c["partitions"]),
                cell(&c["keys"]),
                items(&c["replicas"]).len().to_string(),
                state.to_owned(),
            ]
        })
        .collect();
    out.push_str("CLUSTERS\n");
    if cluster_rows.is_empty() {
        out.push_str("(none: start a replica with `ravel_node start ... -l`)\n");
    } else {
        out.push_str(&table(
            &[
                "CLUSTER",
                "LEADER",
                "PARTITIONS",
                "KEYS",
                "REPLICAS",
                "STATE",
            ],
            &cluster_rows,
        ));
    }

    let replica_rows: Vec<Vec<String>> = clusters
        .iter()
        .flat_map(|c| {
            items(&c["replicas"]).iter().map(move |r| {
                vec![
                    cell(&r["id"]),
                    cell(&c["id"]),
                    cell(&r["role"]),
                    cell(&r["healthy"]),
                    cell(&r["grpc_addr"]),
                    cell(&r["raft_addr"]),
                    cell(&r["term"]),
                    cell(&r["last_applied"]),
                    cell(&r["keys"]),
                ]
            })
        })
        .collect();
    if !replica_rows.is_empty() {
        out.push_str("\nREPLICAS\n");
        out.push_str(&table(
            &[
                "ID", "CLUSTER", "ROLE", "HEALTHY", "GRPC", "RAFT", "TERM", "APPLIED", "KEYS",
            ],
            &replica_rows,
        ));
    }

    let moves = items(&view["migrations"]);
    out.push_str("\nMOVES\n");
    if moves.is_empty() {
        out.push_str("(none in progress)\n");
    } else {
        let rows: Vec<Vec<String>> = moves
            .iter()
            .map(|m| {
                vec![
                    cell(&m["partition"]),
                    cell(&m["source"]),
                    cell(&m["target"]),
                    cell(&m["step"]),
                    cell(&m["keys_copied"]),
                ]
            })
            .collect();
        out.push_str(&table(
            &["PARTITION", "SOURCE", "TARGET", "STEP", "KEYS COPIED"],
            &rows,
        ));
    }
    out.push_str(&format!(
        "\npartitions {}, table epoch {}, moves pending {}\n",
        cell(&view["partitions"]),
        cell(&view["epoch"]),
        cell(&view["moves_pending"]),
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_are_aligned() {
        let t = table(
            &["A", "LONG HEADER"],
            &[vec!["wide cell".into(), "x".into()]],
        );
        assert_eq!(t, "A          LONG HEADER\nwide cell  x\n");
    }

    /// The status page names every cluster, replica, leader and move of the view.
    #[test]
    fn status_lists_clusters_replicas_and_moves() {
        let view = serde_json::json!({
            "partitions": 8, "epoch": 3, "moves_pending": 1,
            "clusters": [{
                "id": 1, "leader": 2, "partitions": 8, "keys": 10, "draining": false,
                "replicas": [
                    {"id": 1, "role": "follower", "healthy": true, "grpc_addr": "h:1",
                     "raft_addr": "h:2", "term": 4, "last_applied": 9, "keys": 10},
                    {"id": 2, "role": "leader", "healthy": true, "grpc_addr": "h:3",
                     "raft_addr": "h:4", "term": 4, "last_applied": 9, "keys": 10},
                    {"id": 3, "role": "unreachable", "healthy": false, "grpc_addr": "h:5",
                     "raft_addr": "h:6"}
                ]
            }],
            "migrations": [{"partition": 5, "source": 1, "target": 2, "step": "copy",
                            "keys_copied": 4}]
        });
        let page = status_table(&view);
        assert!(
            page.contains("CLUSTER  LEADER  PARTITIONS  KEYS  REPLICAS  STATE"),
            "{page}"
        );
        assert!(
            page.contains("1        2       8           10    3         serving"),
            "{page}"
        );
        assert!(page.contains("unreachable  no"), "{page}");
        assert!(
            page.contains("5          1       2       copy  4"),
            "{page}"
        );
        assert!(
            page.contains("partitions 8, table epoch 3, moves pending 1"),
            "{page}"
        );
    }
}

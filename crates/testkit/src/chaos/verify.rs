//! What is checked after the faults are healed, besides the linearizability search: that the
//! replicas of each cluster hold the same data, and that no key's final state drops its last
//! acknowledged write ("lost writes", a figure a person reads at a glance; the checker would
//! also reject such a history). Also the history's JSON-lines dump kept with a failed run's
//! logs. This module reads and compares; it injects no fault and drives no load.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use ravel_proto::v1::GetRequest;
use serde_json::json;

use crate::linearizability::{Call, Operation, Outcome, Reply};
use crate::{TestCluster, wait_until};

/// How long replicas may take to apply what their leader applied before they are compared.
pub const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(60);
/// How long replica contents may keep differing (a purge of a moved partition still being
/// applied) before the difference is reported.
pub const COMPARE_TIMEOUT: Duration = Duration::from_secs(30);

/// What one replica answered to a local read of a key: (refusal code, found, version, value).
type LocalRead = (Option<i32>, bool, u64, Vec<u8>);

/// Compares, for every cluster, every replica's local (`stale`) read of every key in `keys`
/// once all have applied what the leader had. Returns the differences found (empty = same).
pub async fn compare_replicas(
    tc: &TestCluster,
    clusters: &BTreeMap<usize, Vec<String>>,
    keys: &BTreeSet<String>,
    partitions: u32,
) -> Result<Vec<String>> {
    let mut problems = Vec::new();
    for (number, names) in clusters {
        let deadline = Instant::now() + COMPARE_TIMEOUT;
        loop {
            match compare_cluster(tc, names, keys, partitions).await {
                Ok(None) => break,
                Ok(Some(diff)) if Instant::now() > deadline => {
                    problems.push(format!("cluster c{number}: {diff}"));
                    break;
                }
                Err(e) if Instant::now() > deadline => {
                    problems.push(format!("cluster c{number}: could not compare: {e:#}"));
                    break;
                }
                _ => tokio::time::sleep(Duration::from_millis(500)).await,
            }
        }
    }
    Ok(problems)
}

/// `Ok(None)` when every replica of `names` answers the same for every key.
async fn compare_cluster(
    tc: &TestCluster,
    names: &[String],
    keys: &BTreeSet<String>,
    partitions: u32,
) -> Result<Option<String>> {
    let leader = crate::chaos::nemesis::leader_of(tc, names)
        .await
        .context("no leader")?;
    let st = tc.status(&leader).await?;
    let (target, cluster_id) = (st.last_applied_index, st.cluster_id);
    for name in names {
        wait_until(
            &format!("{name} applies index {target}"),
            CATCH_UP_TIMEOUT,
            || async {
                tc.status(name)
                    .await
                    .is_ok_and(|s| s.last_applied_index >= target)
            },
        )
        .await?;
    }
    let mut reference: BTreeMap<&str, LocalRead> = BTreeMap::new();
    for (i, name) in names.iter().enumerate() {
        let mut client = tc.data_client(name).await?;
        for key in keys {
            let req = GetRequest {
                cluster_id,
                partition: ravel_core::partition_of(key.as_bytes(), partitions),
                key: key.clone().into_bytes(),
                stale: true,
                forward: false,
            };
            let reply = client
                .get(req)
                .await
                .with_context(|| format!("local read of {key} on {name}"))?
                .into_inner();
            let here = (
                reply.error.map(|e| e.kind),
                reply.found,
                reply.version,
                reply.value.to_vec(),
            );
            if i == 0 {
                reference.insert(key, here);
            } else if reference.get(key.as_str()) != Some(&here) {
                return Ok(Some(format!(
                    "{key} differs: {} has {:?}, {name} has {:?}",
                    names[0],
                    reference.get(key.as_str()).map(show),
                    show(&here)
                )));
            }
        }
    }
    Ok(None)
}

fn show(r: &LocalRead) -> String {
    match r {
        (Some(kind), ..) => format!("refused (kind {kind})"),
        (None, false, ..) => "absent".to_owned(),
        (None, true, version, value) => {
            format!("v{version} {}", String::from_utf8_lossy(value))
        }
    }
}

/// Keys whose final read (an acknowledged get invoked at or after `final_from`) is explained by
/// no write that could have been the key's last: acknowledged writes not followed by another
/// acknowledged write, any unknown write, or the initial absence when nothing was acknowledged.
/// One line per such key, naming the final read and the newest acknowledged write.
#[must_use]
pub fn lost_writes(ops: &[Operation<String>], final_from: Duration) -> Vec<String> {
    let mut by_key: BTreeMap<&str, Vec<&Operation<String>>> = BTreeMap::new();
    for op in ops {
        by_key.entry(op.key.as_str()).or_default().push(op);
    }
    let mut lost = Vec::new();
    for (key, ops) in by_key {
        let Some(final_read) = ops.iter().rev().find(|op| {
            op.invoke_at >= final_from
                && matches!(op.call, Call::Get)
                && matches!(op.outcome, Outcome::Ok(_))
        }) else {
            continue;
        };
        let effects: Vec<&&Operation<String>> = ops
            .iter()
            .filter(|op| {
                op.invoke_at < final_from
                    && !matches!(op.call, Call::Get)
                    && matches!(
                        op.outcome,
                        Outcome::Unknown
                            | Outcome::Ok(Reply::Written { .. } | Reply::Deleted { .. })
                    )
            })
            .collect();
        let acked: Vec<&&&Operation<String>> = effects
            .iter()
            .filter(|op| matches!(op.outcome, Outcome::Ok(_)))
            .collect();
        let may_be_last = |op: &Operation<String>| match op.outcome {
            Outcome::Unknown => true,
            _ => !acked.iter().any(|a| a.invoke_at > op.complete_at),
        };
        let explained = match &final_read.outcome {
            Outcome::Ok(Reply::Found { value, .. }) => effects.iter().any(|op| {
                matches!(&op.call, Call::Put { value: v, .. } if v == value) && may_be_last(op)
            }),
            Outcome::Ok(Reply::NotFound) => {
                acked.is_empty()
                    || effects
                        .iter()
                        .any(|op| matches!(op.call, Call::Delete { .. }) && may_be_last(op))
            }
            _ => true,
        };
        if !explained {
            let newest = acked
                .iter()
                .max_by_key(|op| op.complete_at)
                .map_or_else(|| "none".to_owned(), |op| op.to_string());
            lost.push(format!(
                "key {key:?}: final read {final_read}; newest acknowledged write {newest}"
            ));
        }
    }
    lost
}

/// Writes every operation as one JSON object per line to `path`.
pub fn write_history(path: &Path, ops: &[Operation<String>]) -> Result<()> {
    let mut file = std::io::BufWriter::new(
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?,
    );
    for op in ops {
        writeln!(file, "{}", op_json(op))?;
    }
    file.flush()?;
    Ok(())
}

fn op_json(op: &Operation<String>) -> serde_json::Value {
    let (call, value, cas) = match &op.call {
        Call::Get => ("get", None, None),
        Call::Put { value, cas } => ("put", Some(value.clone()), *cas),
        Call::Delete { cas } => ("delete", None, *cas),
    };
    let (outcome, reply) = match &op.outcome {
        Outcome::Fail => ("fail", serde_json::Value::Null),
        Outcome::Unknown => ("unknown", serde_json::Value::Null),
        Outcome::Ok(r) => (
            "ok",
            match r {
                Reply::Found { value, version } => {
                    json!({"found": true, "value": value, "version": version})
                }
                Reply::NotFound => json!({"found": false}),
                Reply::Written { version } => json!({"version": version}),
                Reply::Deleted { deleted } => json!({"deleted": deleted}),
                Reply::CasMismatch { current } => json!({"cas_mismatch": true, "current": current}),
            },
        ),
    };
    json!({
        "key": op.key,
        "call": call,
        "value": value,
        "cas": cas,
        "invoke_us": u64::try_from(op.invoke_at.as_micros()).unwrap_or(u64::MAX),
        "complete_us": u64::try_from(op.complete_at.as_micros()).unwrap_or(u64::MAX),
        "outcome": outcome,
        "reply": reply,
    })
}

/// The ops of `ops` on `key`, one per line, in invocation order (for a failure message).
#[must_use]
pub fn key_history(ops: &[Operation<String>], key: &str, max: usize) -> String {
    let mut of_key: Vec<&Operation<String>> = ops.iter().filter(|o| o.key == key).collect();
    of_key.sort_by_key(|o| o.invoke_at);
    let mut s = String::new();
    let skip = of_key.len().saturating_sub(max);
    if skip > 0 {
        let _ = write!(s, "\n      ... {skip} earlier ops");
    }
    for op in of_key.into_iter().skip(skip) {
        let _ = write!(s, "\n      {op}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn op(call: Call<String>, at: (u64, u64), outcome: Outcome<String>) -> Operation<String> {
        Operation {
            key: "k".into(),
            call,
            invoke_at: ms(at.0),
            complete_at: ms(at.1),
            outcome,
        }
    }

    fn put(v: &str) -> Call<String> {
        Call::Put {
            value: v.into(),
            cas: None,
        }
    }

    fn written() -> Outcome<String> {
        Outcome::Ok(Reply::Written { version: None })
    }

    fn found(v: &str) -> Outcome<String> {
        Outcome::Ok(Reply::Found {
            value: v.into(),
            version: None,
        })
    }

    /// A final read of the last acknowledged value, or of a later unknown write, loses nothing;
    /// a final read of an overwritten value, or absence after acknowledged puts, is a lost write.
    #[test]
    fn final_reads_are_explained_by_last_writes_only() {
        let base = vec![
            op(put("a"), (0, 10), written()),
            op(put("b"), (20, 30), written()),
            op(put("c"), (40, 0), Outcome::Unknown),
        ];
        let with_final = |o: Outcome<String>| {
            let mut ops = base.clone();
            ops.push(op(Call::Get, (100, 110), o));
            ops
        };
        assert!(lost_writes(&with_final(found("b")), ms(100)).is_empty());
        assert!(lost_writes(&with_final(found("c")), ms(100)).is_empty());
        assert_eq!(lost_writes(&with_final(found("a")), ms(100)).len(), 1);
        assert_eq!(
            lost_writes(&with_final(Outcome::Ok(Reply::NotFound)), ms(100)).len(),
            1
        );
        // Concurrent acknowledged writes may land in either order.
        let concurrent = vec![
            op(put("x"), (0, 50), written()),
            op(put("y"), (10, 40), written()),
            op(Call::Get, (100, 110), found("x")),
        ];
        assert!(lost_writes(&concurrent, ms(100)).is_empty());
    }

    /// The dump has one parseable JSON object per operation.
    #[test]
    fn history_dump_is_json_lines() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("h.jsonl");
        let ops = vec![
            op(put("a"), (0, 10), written()),
            op(Call::Get, (5, 6), found("a")),
        ];
        write_history(&path, &ops).expect("write");
        let text = std::fs::read_to_string(&path).expect("read");
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("json line"))
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["call"], "put");
        assert_eq!(lines[1]["reply"]["value"], "a");
    }
}

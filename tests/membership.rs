//! End-to-end membership tests on the real binaries: `ravel_node kill` of replicas, a cluster
//! added once keys exist, and an admin restart that resumes routing from its own disk.

mod common;

use std::time::Duration;

use anyhow::Result;
use ravel_testkit::{READY_TIMEOUT, wait_until};
use serde_json::json;

/// `ravel_node kill` of a follower removes it from the membership, stops it and deletes its
/// directory, and the cluster keeps serving; killing a cluster's last replica while it holds
/// keys is refused with a clear message and deletes nothing, unless `--force`.
#[tokio::test(flavor = "multi_thread")]
async fn kill_shrinks_membership_and_refuses_to_drop_the_last_replica_with_keys() -> Result<()> {
    let mut tc = common::new_cluster("kill_replicas")?;
    common::start_clusters(&mut tc, 1, 3).await?;
    for i in 0..20 {
        assert_eq!(tc.put(&format!("k{i}"), &json!(i)).await?.0, 200);
    }

    // Remove two replicas, one at a time: first the leader itself, then a follower.
    let mut remaining = common::members(&tc, 1);
    for _ in 0..2 {
        let refs: Vec<&str> = remaining.iter().map(String::as_str).collect();
        let leader = tc.wait_leader(&refs).await?;
        let victim = if remaining.len() == 3 {
            leader
        } else {
            remaining
                .iter()
                .find(|n| **n != leader)
                .expect("a follower")
                .clone()
        };
        remaining.retain(|n| *n != victim);
        let dir = tc.node(&victim).dir.clone();
        let (ok, out) = tc.run_node_kill(&victim, &[])?;
        assert!(ok, "ravel_node kill {victim} succeeds: {out}");
        assert!(!dir.exists(), "kill deletes {}", dir.display());
        tc.forget_node(&victim);
        let expected = remaining.len();
        let names = remaining.clone();
        wait_until("membership shrinks", READY_TIMEOUT, || async {
            let mut ok = true;
            for n in &names {
                ok &= tc.status(n).await.is_ok_and(|s| s.voters.len() == expected);
            }
            ok
        })
        .await?;
        let view = tc.cluster_view().await?;
        let replicas = view["clusters"][0]["replicas"]
            .as_array()
            .expect("replicas")
            .len();
        assert_eq!(
            replicas, expected,
            "the admin forgot the removed replica: {view}"
        );
        for i in 0..20 {
            let got = tc.get(&format!("k{i}")).await?;
            assert_eq!(got.1["val"], json!(i), "k{i} survives removing {victim}");
        }
    }

    // The last replica holds keys: refused, nothing deleted, still serving.
    let last = remaining.pop().expect("the last replica");
    let dir = tc.node(&last).dir.clone();
    let (ok, out) = tc.run_node_kill(&last, &[])?;
    assert!(!ok, "killing the last replica with keys is refused");
    assert!(
        out.contains("--force"),
        "the refusal says how to override it: {out}"
    );
    assert!(dir.exists(), "a refused kill deletes nothing");
    assert_eq!(tc.get("k0").await?.1["val"], json!(0));

    // With --force it goes, and the store says plainly that no cluster serves the keys.
    let (ok, out) = tc.run_node_kill(&last, &["--force"])?;
    assert!(ok, "kill --force succeeds: {out}");
    assert!(!dir.exists());
    tc.forget_node(&last);
    let put = tc.put("k0", &json!("again")).await?;
    assert_eq!(put.0, 503, "no cluster left: {}", put.1);
    assert_eq!(put.1["code"], "no_cluster");
    tc.finish();
    Ok(())
}

/// Once keys exist, a new cluster receives its share of the partitions by migration: the table
/// changes only as moves complete, and every key keeps its value and version.
#[tokio::test(flavor = "multi_thread")]
async fn cluster_added_after_keys_exist_receives_its_share_by_migration() -> Result<()> {
    let mut tc = common::new_cluster("late_cluster")?;
    common::start_clusters(&mut tc, 1, 1).await?;
    let mut versions = Vec::new();
    for i in 0..50 {
        let put = tc.put(&format!("k{i}"), &json!(i)).await?;
        assert_eq!(put.0, 200);
        versions.push(put.1["version"].clone());
    }
    let epoch_before = tc.cluster_view().await?["epoch"].as_u64().expect("epoch");

    tc.start_node("c2n1", true)?;
    common::wait_replica_count(&tc, 2).await?;
    wait_until("migration to the new cluster", READY_TIMEOUT, || async {
        tc.cluster_view().await.is_ok_and(|v| {
            v["migrations"].as_array().is_some_and(Vec::is_empty)
                && v["moves_pending"].as_u64() == Some(0)
                && v["clusters"][1]["partitions"]
                    .as_u64()
                    .is_some_and(|n| n > 0)
        })
    })
    .await?;
    let view = tc.cluster_view().await?;
    let clusters = view["clusters"].as_array().expect("clusters");
    let moved = clusters[1]["partitions"].as_u64().expect("count");
    assert_eq!(
        clusters[0]["partitions"].as_u64().expect("count") + moved,
        1024,
        "{view}"
    );
    assert!(
        (412..=612).contains(&moved),
        "about half the partitions moved: {view}"
    );
    assert!(
        view["epoch"].as_u64().expect("epoch") > epoch_before,
        "the table changed as partitions moved: {view}"
    );
    for (i, version) in versions.iter().enumerate() {
        let got = tc.get(&format!("k{i}")).await?;
        assert_eq!(got.1["val"], json!(i), "{}", got.1);
        assert_eq!(
            &got.1["version"], version,
            "versions are kept when keys move"
        );
    }
    assert_eq!(tc.put("new", &json!(true)).await?.0, 200);
    tc.finish();
    Ok(())
}

/// A `kill -9` of the admin alone: restarted with the same command line, it routes reads and
/// writes from its persisted state at once, before any replica reports to it again.
#[tokio::test(flavor = "multi_thread")]
async fn admin_restart_resumes_routing_from_its_own_state() -> Result<()> {
    let mut tc = common::new_cluster("admin_restart")?;
    common::start_clusters(&mut tc, 2, 2).await?;
    for i in 0..100 {
        assert_eq!(tc.put(&format!("k{i}"), &json!(i)).await?.0, 200);
    }
    let before = tc.cluster_view().await?;

    tc.kill9_admin();
    tc.start_admin().await?;
    // No wait for readiness: the first requests must already succeed.
    for i in 0..100 {
        let got = tc.get(&format!("k{i}")).await?;
        assert_eq!(got.0, 200, "k{i} after the admin restart: {}", got.1);
        assert_eq!(got.1["val"], json!(i));
    }
    assert_eq!(tc.put("after-restart", &json!(1)).await?.0, 200);
    let after = tc.cluster_view().await?;
    assert_eq!(after["epoch"], before["epoch"]);
    assert_eq!(after["partitions"], before["partitions"]);
    assert_eq!(
        after["clusters"].as_array().map(Vec::len),
        before["clusters"].as_array().map(Vec::len)
    );
    // And it becomes ready without any replica restarting.
    tokio::time::timeout(Duration::from_secs(60), tc.wait_ready()).await??;
    tc.finish();
    Ok(())
}

/// Replicas started before the admin keep retrying their registration and form their clusters
/// once the admin comes up.
#[tokio::test(flavor = "multi_thread")]
async fn replicas_started_before_the_admin_wait_for_it() -> Result<()> {
    let mut tc = common::new_cluster("start_order")?;
    tc.start_node("c1n1", true)?;
    wait_until(
        "the replica retries its registration",
        READY_TIMEOUT,
        || async { tc.node_log("c1n1").contains("waiting for the admin") },
    )
    .await?;
    tc.start_admin().await?;
    common::wait_replica_count(&tc, 1).await?;
    tc.start_node("c1n2", false)?;
    common::wait_voters(&tc, 2).await?;
    tc.wait_ready().await?;
    assert_eq!(tc.put("k", &json!("v")).await?.0, 200);
    assert_eq!(tc.get("k").await?.1["val"], json!("v"));
    tc.finish();
    Ok(())
}

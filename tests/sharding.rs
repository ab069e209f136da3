//! End-to-end sharding tests on the real binaries: with two clusters, keys land on both, and a
//! partition is served only by the cluster that owns it.

mod common;

use std::collections::BTreeMap;

use anyhow::Result;
use ravel_proto::v1::node_error::Kind;
use ravel_proto::v1::{GetRequest, PutRequest};
use serde_json::json;

/// With two clusters of three, keys land on both clusters, each key is stored by its owner, and
/// the other cluster's leader refuses the key's partition with WRONG_OWNER.
#[tokio::test(flavor = "multi_thread")]
async fn two_clusters_split_keys_and_serve_only_their_own() -> Result<()> {
    let mut tc = common::new_cluster("two_clusters")?;
    common::start_clusters(&mut tc, 2, 3).await?;

    let view = tc.cluster_view().await?;
    let clusters = view["clusters"].as_array().expect("clusters").clone();
    assert_eq!(clusters.len(), 2, "{view}");
    for c in &clusters {
        let owned = c["partitions"].as_u64().expect("partition count");
        assert!(
            (312..=712).contains(&owned),
            "both clusters own a fair share of 1024 partitions: {view}"
        );
    }

    for i in 0..200 {
        let put = tc.put(&format!("k{i}"), &json!(i)).await?;
        assert_eq!(put.0, 200, "{}", put.1);
    }

    // Which cluster each replica belongs to and who leads it.
    let mut leader_of: BTreeMap<u64, String> = BTreeMap::new();
    for c in 1..=2 {
        let names = common::members(&tc, c);
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let leader = tc.wait_leader(&refs).await?;
        let st = tc.status(&leader).await?;
        leader_of.insert(st.cluster_id, leader);
    }
    assert_eq!(leader_of.len(), 2);

    let mut per_cluster: BTreeMap<u64, usize> = BTreeMap::new();
    for i in 0..200 {
        let key = format!("k{i}");
        let partition = ravel_core::partition_of(key.as_bytes(), 1024);
        let mut owners = Vec::new();
        for (&cluster_id, leader) in &leader_of {
            let mut client = tc.data_client(leader).await?;
            let reply = client
                .get(GetRequest {
                    cluster_id,
                    partition,
                    key: key.clone().into_bytes(),
                    stale: false,
                    forward: false,
                })
                .await?
                .into_inner();
            match reply.error {
                None => {
                    assert!(reply.found, "{key} is stored by its owner");
                    assert_eq!(reply.value.as_ref(), i.to_string().as_bytes());
                    owners.push(cluster_id);
                }
                Some(e) => assert_eq!(e.kind(), Kind::WrongOwner, "{key}: {e:?}"),
            }
        }
        assert_eq!(owners.len(), 1, "{key} is served by exactly one cluster");
        *per_cluster.entry(owners[0]).or_default() += 1;

        // A write sent to the cluster that does not own the partition is refused.
        let other = leader_of
            .keys()
            .copied()
            .find(|c| *c != owners[0])
            .expect("two clusters");
        let mut client = tc.data_client(&leader_of[&other]).await?;
        let reply = client
            .put(PutRequest {
                cluster_id: other,
                partition,
                key: key.clone().into_bytes(),
                value: b"\"intruder\"".to_vec().into(),
                cas: None,
                forward: false,
            })
            .await?
            .into_inner();
        let err = reply.error.expect("a non-owner refuses the write");
        assert_eq!(err.kind(), Kind::WrongOwner, "{key}: {err:?}");
    }
    assert_eq!(
        per_cluster.len(),
        2,
        "keys land on both clusters: {per_cluster:?}"
    );
    assert!(per_cluster.values().all(|n| *n >= 40), "{per_cluster:?}");

    // The refused writes changed nothing.
    for i in 0..200 {
        let got = tc.get(&format!("k{i}")).await?;
        assert_eq!(got.1["val"], json!(i));
    }
    tc.finish();
    Ok(())
}

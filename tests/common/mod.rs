//! Shared set-ups for the end-to-end tests: clusters of real processes on loopback.

#![allow(dead_code)]

use anyhow::Result;
use ravel_testkit::TestCluster;

/// A test cluster using the binaries Cargo built for this package.
pub fn new_cluster(test_name: &str) -> Result<TestCluster> {
    TestCluster::new(
        test_name,
        env!("CARGO_BIN_EXE_ravel_admin"),
        env!("CARGO_BIN_EXE_ravel_node"),
    )
}

/// Starts the admin and `clusters` clusters of `replicas` replicas each (`c{i}n{j}`), and waits
/// until the admin is ready to serve. Replicas start one at a time, round-robin over the
/// clusters, each after the previous one registered: placement (fewest replicas, lowest id first)
/// then puts every replica in the cluster its name says.
pub async fn start_clusters(tc: &mut TestCluster, clusters: usize, replicas: usize) -> Result<()> {
    tc.start_admin().await?;
    let mut registered = 0;
    for r in 1..=replicas {
        for c in 1..=clusters {
            tc.start_node(&format!("c{c}n{r}"), r == 1)?;
            registered += 1;
            wait_replica_count(tc, registered).await?;
        }
    }
    wait_voters(tc, clusters * replicas).await?;
    tc.wait_ready().await
}

/// Starts the admin and one cluster of three replicas (see [`start_clusters`]); returns the
/// replicas' names and the one that leads.
pub async fn start_one_cluster(tc: &mut TestCluster) -> Result<(Vec<String>, String)> {
    start_clusters(tc, 1, 3).await?;
    let names = members(tc, 1);
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let leader = tc.wait_leader(&refs).await?;
    Ok((names, leader))
}

/// Sleeps past the leader lease that follows an election: during it a new leader counts as
/// heard by its majority and rejects a successor's campaign.
pub async fn sleep_past_first_lease() {
    tokio::time::sleep(std::time::Duration::from_millis(
        ravel_node::ELECTION_TIMEOUT_MAX_MS + 200,
    ))
    .await;
}

/// Waits until `/v1/cluster` lists `n` replicas in all.
pub async fn wait_replica_count(tc: &TestCluster, n: usize) -> Result<()> {
    ravel_testkit::wait_until(
        "replica registration",
        ravel_testkit::READY_TIMEOUT,
        || async {
            tc.cluster_view().await.is_ok_and(|v| {
                v["clusters"].as_array().is_some_and(|cs| {
                    cs.iter()
                        .map(|c| c["replicas"].as_array().map_or(0, Vec::len))
                        .sum::<usize>()
                        == n
                })
            })
        },
    )
    .await
}

/// Waits until every started replica is a voter of its cluster (seen from its own status).
pub async fn wait_voters(tc: &TestCluster, total: usize) -> Result<()> {
    ravel_testkit::wait_until(
        "all replicas voters",
        ravel_testkit::READY_TIMEOUT,
        || async {
            let mut voters = 0;
            for name in tc.node_names() {
                if let Ok(st) = tc.status(&name).await
                    && st.voters.contains(&st.node_id)
                {
                    voters += 1;
                }
            }
            voters == total
        },
    )
    .await
}

/// The names of the replicas of cluster `c` (`c{c}n*`).
pub fn members(tc: &TestCluster, c: usize) -> Vec<String> {
    let prefix = format!("c{c}n");
    tc.node_names()
        .into_iter()
        .filter(|n| n.starts_with(&prefix))
        .collect()
}

/// Fails unless the single-writer history `report` has no violation, every one of the `keys`
/// keys was read back (`read_back`), and the workload did enough to prove something.
pub fn ensure_history_proves(
    report: &ravel_testkit::history::CheckReport,
    read_back: usize,
    keys: usize,
) -> Result<()> {
    eprintln!("history check: {}", report.summary(20));
    anyhow::ensure!(
        report.is_ok(),
        "the history has violations: {}",
        report.summary(20)
    );
    anyhow::ensure!(read_back == keys, "{read_back} of {keys} keys read back");
    anyhow::ensure!(
        report.writes_ok >= keys && report.reads_checked > 0,
        "the workload did too little to prove anything: {}",
        report.summary(0)
    );
    Ok(())
}

/// One Prometheus text page parsed into `series → value` (the series with its labels, as
/// written).
pub fn parse_metrics(text: &str) -> std::collections::BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_owned(), value.parse().ok()?))
        })
        .collect()
}

/// GETs the `/metrics` page at `url`: its text and its series parsed.
pub async fn scrape(url: &str) -> Result<(String, std::collections::BTreeMap<String, f64>)> {
    let resp = reqwest::get(url).await?;
    if resp.status() != 200 {
        anyhow::bail!("{url} answered {}", resp.status());
    }
    let text = resp.text().await?;
    let parsed = parse_metrics(&text);
    Ok((text, parsed))
}

/// The recorded workload of the end-to-end tests: `writers` and `readers` on `keys` keys
/// `{key_prefix}{i}`, paced so that moves are not starved of the machine's two cores, with a
/// seed from `RAVEL_TEST_SEED` or the clock (printed, so that a failing run can be replayed).
pub fn workload_config(
    keys: usize,
    key_prefix: &str,
    writers: usize,
    readers: usize,
) -> ravel_testkit::workload::WorkloadConfig {
    let seed = std::env::var("RAVEL_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_secs())
        });
    let config = ravel_testkit::workload::WorkloadConfig {
        keys,
        key_prefix: key_prefix.into(),
        writers,
        readers,
        op_pause: std::time::Duration::from_millis(20),
        seed,
        request_timeout: std::time::Duration::from_secs(20),
    };
    eprintln!("workload: {config:?} (replay with RAVEL_TEST_SEED={seed})");
    config
}

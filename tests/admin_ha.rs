//! End-to-end tests of the admin group (three admins on Raft, real processes on loopback):
//! every admin routes, the admin leader's `kill -9` costs the clients only a move to another
//! admin, a new admin leader takes over the moves, and a majority of admins down stops only
//! metadata changes.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use ravel_testkit::TestCluster;
use ravel_testkit::workload::{Workload, WorkloadConfig, read_finals};
use serde_json::{Value, json};

/// Admins in the group.
const ADMINS: usize = 3;

/// Replicas per cluster.
const REPLICAS: usize = 3;

/// How long a new admin leader, a catch-up or a migration may take on this 2-core machine.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(120);

/// How long the moves of one added cluster may take (1024 partitions, under load).
const MOVES_TIMEOUT: Duration = Duration::from_secs(300);

const POLL: Duration = Duration::from_millis(100);

/// The e2e tests of this file run one at a time: each starts a dozen processes.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// `/v1/cluster` of admin `i`.
async fn view_at(tc: &TestCluster, i: usize) -> Result<Value> {
    let resp = reqwest::get(tc.admin_url(i, "/v1/cluster")).await?;
    ensure!(
        resp.status() == 200,
        "admin {i} /v1/cluster answered {}",
        resp.status()
    );
    Ok(resp.json().await?)
}

/// The index of the admin that `view` lists as the admins' leader, if any.
fn leader_in(tc: &TestCluster, view: &Value) -> Option<usize> {
    let admins = view["admins"].as_array()?;
    let leader = admins.iter().find(|a| a["role"] == "leader")?;
    (0..tc.admin_count()).find(|i| leader["grpc_addr"] == tc.admin_addrs(*i).1.as_str())
}

/// Waits until admin `asked` sees an admin leader other than `not`, every admin it lists as
/// `expect_healthy` healthy; returns the leader's index.
async fn wait_admin_leader(
    tc: &TestCluster,
    asked: usize,
    not: Option<usize>,
    expect_healthy: usize,
) -> Result<usize> {
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    let mut last = Value::Null;
    loop {
        if let Ok(view) = view_at(tc, asked).await {
            let healthy = view["admins"]
                .as_array()
                .map_or(0, |a| a.iter().filter(|a| a["healthy"] == true).count());
            if let Some(leader) = leader_in(tc, &view)
                && Some(leader) != not
                && healthy >= expect_healthy
            {
                return Ok(leader);
            }
            last = view["admins"].clone();
        }
        if Instant::now() > deadline {
            bail!(
                "no admin leader (other than {not:?}) with {expect_healthy} healthy admins seen by admin {asked}: {last}"
            );
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Writes `key` through admin `i` until it is acknowledged; the time that took.
async fn first_write_through(tc: &TestCluster, i: usize, key: &str) -> Result<Duration> {
    let http = ravel_testkit::http_client(Duration::from_secs(5))?;
    let began = Instant::now();
    loop {
        let sent = http
            .post(tc.admin_url(i, "/put"))
            .json(&json!({"key": key, "val": 1}))
            .send()
            .await;
        if sent.is_ok_and(|r| r.status() == 200) {
            return Ok(began.elapsed());
        }
        ensure!(
            began.elapsed() < SETTLE_TIMEOUT,
            "no write through admin {i} succeeded"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Successful writes of the workload so far.
async fn writes_ok(workload: &Workload) -> u64 {
    workload
        .answers()
        .await
        .get("write 200")
        .copied()
        .unwrap_or(0)
}

/// Partitions owned per cluster id in `view`.
fn partition_counts(view: &Value) -> BTreeMap<u64, u64> {
    view["clusters"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| Some((c["id"].as_u64()?, c["partitions"].as_u64()?)))
        .collect()
}

/// Three admins and two clusters of three under a workload spread over all three admins:
/// the admin leader is killed with `kill -9` (operations through the others keep succeeding,
/// a new admin leader is elected, the killed admin restarts and catches up); then a third
/// cluster is added and the admin leader is killed while partitions move to it: the
/// migration completes under the next admin leader. The checker finds no violation and no
/// lost write.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_admins_survive_the_leader_kill_and_finish_a_migration_under_a_new_leader() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let mut tc = common::new_cluster("admin_ha_leader_kill")
        .expect("test cluster")
        .with_admins(ADMINS);
    let config = common::workload_config(600, "ha-", 6, 3);
    if let Err(e) = leader_kill_and_migration(&mut tc, &config).await {
        panic!("admin HA test failed (seed {}): {e:#}", config.seed);
    }
    tc.finish();
}

async fn leader_kill_and_migration(tc: &mut TestCluster, config: &WorkloadConfig) -> Result<()> {
    common::start_clusters(tc, 2, REPLICAS).await?;
    let leader = wait_admin_leader(tc, 0, None, ADMINS).await?;
    for i in 0..ADMINS {
        // Every admin routes: a write through each one succeeds.
        first_write_through(tc, i, &format!("through-{i}")).await?;
    }
    let keys: Vec<String> = (0..config.keys)
        .map(|i| format!("{}{i}", config.key_prefix))
        .collect();
    let workload = Workload::start_spread(&tc.admin_urls(), config, keys.clone())?;
    workload.wait_loaded(SETTLE_TIMEOUT).await?;

    // The admin leader dies; the other two keep serving.
    let survivor = (leader + 1) % ADMINS;
    tc.use_admin(survivor);
    tc.kill9_admin_at(leader);
    let killed_at = Instant::now();
    let gap = first_write_through(tc, survivor, "failover-probe").await?;
    eprintln!("admin leader {leader} killed: first write through admin {survivor} after {gap:?}");
    let before = writes_ok(&workload).await;
    let new_leader = wait_admin_leader(tc, survivor, Some(leader), ADMINS - 1).await?;
    eprintln!(
        "admin {new_leader} leads {:?} after the kill",
        killed_at.elapsed()
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let during = writes_ok(&workload).await - before;
    ensure!(
        during > 0,
        "no write succeeded while the admin leader was down"
    );
    eprintln!("{during} writes succeeded while admin {leader} was down");

    // It restarts and catches up: all three healthy again.
    tc.start_admin_at(leader).await?;
    wait_admin_leader(tc, leader, None, ADMINS).await?;

    // A third cluster: partitions move to it; the admin leader dies mid-move.
    tc.use_admin(new_leader);
    let started = Instant::now();
    let existing = tc.node_names().len();
    for n in 1..=REPLICAS {
        tc.start_node(&format!("c3n{n}"), n == 1)?;
        common::wait_replica_count(tc, existing + n).await?;
    }
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    loop {
        let view = view_at(tc, new_leader).await?;
        if view["migrations"].as_array().is_some_and(|m| !m.is_empty()) {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "no move started: {}",
            view["migrations"]
        );
        tokio::time::sleep(POLL).await;
    }
    tc.kill9_admin_at(new_leader);
    let survivor = (new_leader + 1) % ADMINS;
    tc.use_admin(survivor);
    let third = wait_admin_leader(tc, survivor, Some(new_leader), ADMINS - 1).await?;
    eprintln!("admin leader {new_leader} killed mid-move; admin {third} leads");
    tc.start_admin_at(new_leader).await?;

    // The moves finish: three clusters, each with about a third of the partitions.
    let deadline = Instant::now() + MOVES_TIMEOUT;
    let view = loop {
        let view = view_at(tc, third).await?;
        let counts = partition_counts(&view);
        let idle =
            view["migrations"].as_array().is_some_and(Vec::is_empty) && view["moves_pending"] == 0;
        if idle && counts.len() == 3 && counts.values().all(|n| *n > 0) {
            break view;
        }
        ensure!(
            Instant::now() < deadline,
            "the moves did not finish: partitions {counts:?}, migrations {}",
            view["migrations"]
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    eprintln!(
        "moves to the third cluster done {:?} after it started: {:?}",
        started.elapsed(),
        partition_counts(&view)
    );

    let history = workload.history();
    let answers = workload.stop().await?;
    eprintln!("workload answers: {answers:?}");
    let finals = read_finals(&tc.url(""), &keys, 16, 25)
        .await
        .context("reading every key back")?;
    let report = history.check(&finals);
    common::ensure_history_proves(&report, finals.len(), keys.len())
}

/// `count` writes and reads of fresh keys through admin `i`; fails on any answer but 200.
async fn all_served_through(tc: &TestCluster, i: usize, tag: &str, count: usize) -> Result<()> {
    let http = ravel_testkit::http_client(Duration::from_secs(10))?;
    for n in 0..count {
        let key = format!("{tag}-{n}");
        let put = http
            .post(tc.admin_url(i, "/put"))
            .json(&json!({"key": key, "val": n}))
            .send()
            .await?;
        ensure!(
            put.status() == 200,
            "write of {key} through admin {i}: {}",
            put.status()
        );
        let get = http
            .post(tc.admin_url(i, "/get"))
            .json(&json!({"key": key}))
            .send()
            .await?;
        ensure!(
            get.status() == 200,
            "read of {key} through admin {i}: {}",
            get.status()
        );
        let body: Value = get.json().await?;
        ensure!(body["val"] == n, "read of {key} through admin {i}: {body}");
    }
    Ok(())
}

/// Replicas registered, as admin `i` sees them.
async fn replicas_seen_by(tc: &TestCluster, i: usize) -> Result<usize> {
    let view = view_at(tc, i).await?;
    Ok(view["clusters"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| c["replicas"].as_array().map_or(0, Vec::len))
        .sum())
}

/// With one admin of three down every admin still up routes every request; with two down the
/// last one still serves reads and writes, while a metadata change (a new replica registering)
/// waits until a majority is back, and then goes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_majority_of_admins_down_stops_only_metadata_changes() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let mut tc = common::new_cluster("admin_ha_majority")
        .expect("test cluster")
        .with_admins(ADMINS);
    if let Err(e) = majority_down(&mut tc).await {
        panic!("admin majority test failed: {e:#}");
    }
    tc.finish();
}

async fn majority_down(tc: &mut TestCluster) -> Result<()> {
    common::start_clusters(tc, 1, REPLICAS).await?;
    let leader = wait_admin_leader(tc, 0, None, ADMINS).await?;
    let follower = (leader + 1) % ADMINS;
    let last = (leader + 2) % ADMINS;

    tc.kill9_admin_at(follower);
    for i in [leader, last] {
        all_served_through(tc, i, &format!("minority-{i}"), 20).await?;
    }

    tc.kill9_admin_at(leader);
    tc.use_admin(last);
    all_served_through(tc, last, "majority", 20).await?;
    let registered = replicas_seen_by(tc, last).await?;
    tc.start_node("c1n4", false)?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    ensure!(
        replicas_seen_by(tc, last).await? == registered,
        "a replica registered without a majority of admins"
    );
    // The routing still works meanwhile.
    all_served_through(tc, last, "majority-later", 5).await?;

    tc.start_admin_at(leader).await?;
    common::wait_replica_count(tc, registered + 1).await?;
    common::wait_voters(tc, registered + 1).await?;
    Ok(())
}

/// Runs `ravel_admin members ...` against `endpoint`; fails unless it exits 0. Its output.
fn members_command(args: &[&str], endpoint: &str) -> Result<String> {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ravel_admin"))
        .arg("members")
        .args(args)
        .args(["--endpoints", endpoint, "--timeout-ms", "60000"])
        .output()
        .context("running ravel_admin members")?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(
        out.status.success(),
        "ravel_admin members {args:?} failed: {text}"
    );
    Ok(text)
}

/// A single admin grows into a group of three with `members add` (the second asked of the
/// first admin, the third of the second, which forwards to the leader); every member routes;
/// the first admin's `kill -9` leaves two that elect a leader, and `members remove` takes the
/// dead one out.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn admins_are_added_and_removed_with_members_commands() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let mut tc = common::new_cluster("admin_ha_members").expect("test cluster");
    if let Err(e) = add_and_remove(&mut tc).await {
        panic!("admin membership test failed: {e:#}");
    }
    tc.finish();
}

async fn add_and_remove(tc: &mut TestCluster) -> Result<()> {
    common::start_clusters(tc, 1, 1).await?;
    all_served_through(tc, 0, "alone", 5).await?;

    let second = tc.add_joining_admin();
    tc.start_admin_at(second).await?;
    let out = members_command(&["add", &tc.admin_addrs(second).1], &tc.admin_url(0, ""))?;
    eprintln!("{out}");
    let third = tc.add_joining_admin();
    tc.start_admin_at(third).await?;
    let out = members_command(
        &["add", &tc.admin_addrs(third).1],
        &tc.admin_url(second, ""),
    )?;
    eprintln!("{out}");
    ensure!(out.contains("added"), "{out}");

    wait_admin_leader(tc, third, None, 3).await?;
    for i in [second, third] {
        all_served_through(tc, i, &format!("member-{i}"), 5).await?;
    }

    tc.kill9_admin_at(0);
    tc.use_admin(second);
    let leader = wait_admin_leader(tc, second, Some(0), 2).await?;
    eprintln!("admin {leader} leads after the first admin's kill");
    let out = members_command(&["remove", &tc.admin_addrs(0).1], &tc.admin_url(third, ""))?;
    eprintln!("{out}");
    let view = view_at(tc, second).await?;
    let admins = view["admins"].as_array().map_or(0, Vec::len);
    ensure!(
        admins == 2,
        "the removed admin is still listed: {}",
        view["admins"]
    );
    all_served_through(tc, third, "after-remove", 5).await?;
    Ok(())
}

/// Replicas may start before the admins, and register while the admins' group is still
/// forming: a registration is never lost to the group's base state (it waits for the base, or
/// is refused and retried), and every admin then routes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_started_before_the_admins_register_once_the_group_forms() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let mut tc = common::new_cluster("admin_ha_start_order")
        .expect("test cluster")
        .with_admins(ADMINS);
    if let Err(e) = replicas_first(&mut tc).await {
        panic!("admin start-order test failed: {e:#}");
    }
    tc.finish();
}

async fn replicas_first(tc: &mut TestCluster) -> Result<()> {
    tc.start_node("c1n1", true)?;
    tc.start_node("c2n1", true)?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    tc.start_admin().await?;
    common::wait_replica_count(tc, 2).await?;
    tc.wait_ready().await?;
    wait_admin_leader(tc, 0, None, ADMINS).await?;
    for i in 0..ADMINS {
        all_served_through(tc, i, &format!("order-{i}"), 5).await?;
        ensure!(
            replicas_seen_by(tc, i).await? == 2,
            "admin {i} lost a registration"
        );
    }
    Ok(())
}

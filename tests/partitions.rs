//! End-to-end network and pause faults on the real binaries: a cluster of three replicas, each
//! behind its own fault-injecting Raft proxy (`TestCluster::with_raft_proxies`), under the
//! single-writer read/write workload whose history is checked afterwards.
//!
//! How a leader is cut off both ways: every replica advertises its proxy's address, so every
//! Raft connection *to* a replica goes through that replica's proxy, and every connection *from*
//! it goes through a peer's proxy. Blackholing the leader's own proxy alone is not enough: in Raft
//! the leader opens the connections (AppendEntries to followers), so its heartbeats would still
//! reach the followers through *their* proxies and nobody would start an election. Blackholing
//! the followers' proxies would also cut the followers from each other. So the proxies name the
//! source of each connection (the replica process that opened it) and `isolate_node` blackholes
//! the leader's own proxy (no peer reaches it) plus, on every other proxy, only the connections
//! the leader opened (it reaches no peer); the two followers still reach each other. Held
//! connections stall as TCP does under packet loss, and deliver late after the heal.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use ravel_core::limits::DEFAULT_PARTITIONS;
use ravel_proto::v1::node_error::Kind;
use ravel_proto::v1::{GetRequest, PutRequest};
use ravel_testkit::workload::{Workload, WorkloadConfig, read_finals};
use ravel_testkit::{TestCluster, wait_until};
use serde_json::json;

/// The tests share two cores: one cluster at a time keeps their timings meaningful.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// How long after the fault writes through the admin must succeed again.
const RECOVERY_DEADLINE: Duration = Duration::from_secs(20);
/// How long the fault lasts once writes have recovered (the workload keeps running).
const FAULT_HOLD: Duration = Duration::from_secs(3);
/// How long the old leader has to catch up after the heal.
const CATCH_UP_DEADLINE: Duration = Duration::from_secs(20);
const REPLICAS: usize = 3;

/// The fault applied to the leader.
#[derive(Clone, Copy, Debug)]
enum Fault {
    /// Cut off both ways through the proxies.
    Isolate,
    /// SIGSTOP: a paused "zombie" leader that resumes later still believing it leads.
    Pause,
}

/// A leader cut off from both followers (both ways) is replaced by one of them; writes through
/// the admin succeed again within a deadline; after the heal the old leader rejoins as a
/// follower and catches up; the history has no violation and every key reads back its last
/// acknowledged (or a later unknown) value, the same on every replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn isolated_leader_is_replaced_and_nothing_is_lost() {
    run_scenario("partition_isolated_leader", Fault::Isolate, 41).await;
}

/// A leader paused with SIGSTOP is replaced; writes succeed again within a deadline; resumed
/// with SIGCONT it steps down to follower and catches up; the history has no violation and
/// every key reads back, the same on every replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn paused_leader_is_replaced_and_resumes_as_follower() {
    run_scenario("partition_paused_leader", Fault::Pause, 42).await;
}

/// A follower cut off from both peers for several election timeouts keeps its term (pre-vote:
/// no peer grants it a vote, so it never campaigns) while the others go on serving writes;
/// healed, it rejoins without an election — the leader and the working replicas' term are
/// unchanged — and catches up.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn isolated_follower_rejoins_without_deposing_the_leader() -> Result<()> {
    let _serial = ONE_AT_A_TIME.lock().await;
    let mut tc = common::new_cluster("partition_follower_rejoin")?.with_raft_proxies();
    let (names, leader) = common::start_one_cluster(&mut tc).await?;
    let term = tc.status(&leader).await?.term;
    let follower = names
        .iter()
        .find(|n| **n != leader)
        .context("a follower")?
        .clone();

    tc.isolate_node(&follower);
    let cut = Instant::now();
    let mut written = 0;
    while cut.elapsed() < Duration::from_secs(5) {
        let (code, body) = tc
            .put(&format!("rejoin:{written}"), &json!(written))
            .await?;
        ensure!(
            code == 200,
            "a write failed while a follower was cut off: {code} {body}"
        );
        written += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let isolated = tc.status(&follower).await?;
    ensure!(
        isolated.term == term,
        "the isolated follower raised its term from {term} to {}",
        isolated.term
    );

    tc.heal_network();
    let target = tc.status(&leader).await?.last_applied_index;
    wait_until("the follower catches up", CATCH_UP_DEADLINE, || async {
        tc.status(&follower)
            .await
            .is_ok_and(|s| s.last_applied_index >= target)
    })
    .await?;
    // Long enough for a disruptive election (a higher term on heal) to have shown itself.
    tokio::time::sleep(Duration::from_millis(
        2 * ravel_node::ELECTION_TIMEOUT_MAX_MS,
    ))
    .await;
    for name in &names {
        let st = tc.status(name).await?;
        ensure!(
            st.term == term,
            "{name} is at term {} after the heal, was {term}",
            st.term
        );
    }
    ensure!(
        tc.status(&leader).await?.role == "leader",
        "{leader} no longer leads"
    );
    for i in 0..written {
        let (code, body) = tc.get(&format!("rejoin:{i}")).await?;
        ensure!(
            code == 200 && body["val"] == json!(i),
            "rejoin:{i}: {code} {body}"
        );
    }
    tc.finish();
    Ok(())
}

/// Check-quorum: a leader cut off from both followers, once no majority has acknowledged it for
/// an election timeout, refuses a write sent straight to it with a definite NOT_LEADER (nothing
/// proposed) instead of proposing it and holding it until the write deadline (an unknown
/// outcome); meanwhile the followers elect a new leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cut_off_leader_refuses_writes_once_it_loses_its_majority() -> Result<()> {
    let _serial = ONE_AT_A_TIME.lock().await;
    let mut tc = common::new_cluster("partition_check_quorum")?.with_raft_proxies();
    let (names, leader) = common::start_one_cluster(&mut tc).await?;
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let cluster_id = tc.status(&leader).await?.cluster_id;
    common::sleep_past_first_lease().await;

    tc.isolate_node(&leader);
    tokio::time::sleep(Duration::from_millis(
        ravel_node::ELECTION_TIMEOUT_MAX_MS + 500,
    ))
    .await;
    let key = "check-quorum";
    let mut client = tc.data_client(&leader).await?;
    let started = Instant::now();
    let reply = client
        .put(PutRequest {
            cluster_id,
            partition: ravel_core::partition_of(key.as_bytes(), DEFAULT_PARTITIONS),
            key: key.as_bytes().to_vec(),
            value: b"1".to_vec().into(),
            cas: None,
            forward: false,
        })
        .await?
        .into_inner();
    let took = started.elapsed();
    let kind = reply
        .error
        .as_ref()
        .map(|e| Kind::try_from(e.kind).unwrap_or(Kind::Unspecified));
    eprintln!("the cut-off leader answered {kind:?} after {took:?}");
    ensure!(
        kind == Some(Kind::NotLeader),
        "the cut-off leader answered {:?} after {took:?}, not a definite NOT_LEADER",
        reply.error
    );
    let survivors: Vec<&str> = refs.iter().copied().filter(|n| *n != leader).collect();
    let successor = tc.wait_leader(&survivors).await?;
    ensure!(successor != leader);
    tc.heal_network();
    wait_until(
        "the old leader follows again",
        CATCH_UP_DEADLINE,
        || async { tc.status(&leader).await.is_ok_and(|s| s.role == "follower") },
    )
    .await?;
    tc.finish();
    Ok(())
}

async fn run_scenario(test_name: &str, fault: Fault, seed: u64) {
    let _serial = ONE_AT_A_TIME.lock().await;
    let mut tc = common::new_cluster(test_name)
        .expect("test cluster")
        .with_raft_proxies();
    let config = WorkloadConfig {
        keys: 200,
        key_prefix: "pt-".into(),
        writers: 4,
        readers: 2,
        op_pause: Duration::from_millis(5),
        seed,
        request_timeout: Duration::from_secs(15),
    };
    eprintln!("{test_name}: seed {seed}");
    if let Err(e) = scenario(&mut tc, fault, &config).await {
        // Panicking while `tc` is alive keeps the processes' logs.
        for name in tc.node_names() {
            tc.pause_node(&name, false);
        }
        panic!("{test_name} failed (seed {seed}): {e:#}");
    }
    tc.finish();
}

async fn scenario(tc: &mut TestCluster, fault: Fault, config: &WorkloadConfig) -> Result<()> {
    common::start_clusters(tc, 1, REPLICAS).await?;
    let names = common::members(tc, 1);
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    // Every replica is known to its peers by its proxy's address.
    for name in &names {
        let status = tc.status(name).await?;
        let advertised = tc.node(name).raft_advertise.clone();
        ensure!(
            Some(&status.raft_addr) == advertised.as_ref(),
            "{name} advertises {} instead of its proxy {advertised:?}",
            status.raft_addr
        );
    }

    let workload = Workload::start(&tc.url(""), config)?;
    workload.wait_loaded(Duration::from_secs(60)).await?;
    let old_leader = tc.wait_leader(&refs).await?;
    let old_term = tc.status(&old_leader).await?.term;
    let others: Vec<&str> = refs.iter().copied().filter(|n| *n != old_leader).collect();
    let answers_before = workload.answers().await;

    match fault {
        Fault::Isolate => tc.isolate_node(&old_leader),
        Fault::Pause => tc.pause_node(&old_leader, true),
    }
    let faulted_at = Instant::now();

    // A new leader among the other two, in a later term.
    let new_leader = wait_new_leader(tc, &others, old_term).await?;
    let elected_after = faulted_at.elapsed();
    // Writes through the admin succeed again.
    let mut probe = 0u64;
    let recovered_after = loop {
        probe += 1;
        if let Ok((200, _)) = tc.put("probe", &json!(probe)).await {
            break faulted_at.elapsed();
        }
        if faulted_at.elapsed() > RECOVERY_DEADLINE {
            bail!("no write succeeded within {RECOVERY_DEADLINE:?} of the fault on {old_leader}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    tokio::time::sleep(FAULT_HOLD).await;
    if let Fault::Isolate = fault {
        // Nothing from the new term reached the cut-off leader.
        let cut = tc.status(&old_leader).await?;
        let new = tc.status(&new_leader).await?;
        ensure!(
            cut.term < new.term,
            "the isolated {old_leader} heard of term {} (its own {}): the cut leaks",
            new.term,
            cut.term
        );
    }
    let answers_during = workload.answers().await;

    match fault {
        Fault::Isolate => tc.heal_network(),
        Fault::Pause => tc.pause_node(&old_leader, false),
    }
    let healed_at = Instant::now();
    let target = tc.status(&new_leader).await?.last_applied_index;
    wait_until(
        "the old leader catches up as a follower",
        CATCH_UP_DEADLINE,
        || async {
            tc.status(&old_leader).await.is_ok_and(|s| {
                s.role == "follower" && s.term > old_term && s.last_applied_index >= target
            })
        },
    )
    .await?;
    let caught_up_after = healed_at.elapsed();

    // Liveness after the heal, then stop the load and judge the history.
    let (status, body) = tc.put("after-heal", &json!("ok")).await?;
    ensure!(
        status == 200,
        "a write after the heal failed: {status} {body}"
    );
    let history = workload.history();
    let keys = workload.keys().to_vec();
    let answers = workload.stop().await?;
    let finals = read_finals(&tc.url(""), &keys, 8, 25).await?;
    let report = history.check(&finals);
    eprintln!(
        "fault {fault:?} on {old_leader} (term {old_term}): new leader {new_leader} elected after \
         {elected_after:?}, writes recovered after {recovered_after:?}; old leader caught up \
         {caught_up_after:?} after the heal"
    );
    eprintln!("answers before the fault: {answers_before:?}");
    eprintln!("answers until the heal: {answers_during:?}");
    eprintln!("answers in all: {answers:?}");
    common::ensure_history_proves(&report, finals.len(), keys.len())?;
    same_data_on_every_replica(tc, &refs, &new_leader, &keys).await
}

/// Waits until one of `names` leads in a term after `old_term`; returns its name.
async fn wait_new_leader(tc: &TestCluster, names: &[&str], old_term: u64) -> Result<String> {
    let deadline = Instant::now() + RECOVERY_DEADLINE;
    loop {
        for name in names {
            if let Ok(s) = tc.status(name).await
                && s.role == "leader"
                && s.term > old_term
            {
                return Ok((*name).to_owned());
            }
        }
        if Instant::now() > deadline {
            bail!("no new leader among {names:?} within {RECOVERY_DEADLINE:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every replica holds the same version and value of every key (read locally, `stale`), once
/// all have applied what the leader had.
async fn same_data_on_every_replica(
    tc: &TestCluster,
    names: &[&str],
    leader: &str,
    keys: &[String],
) -> Result<()> {
    let target = tc.status(leader).await?.last_applied_index;
    for name in names {
        wait_until(
            &format!("{name} applies index {target}"),
            CATCH_UP_DEADLINE,
            || async {
                tc.status(name)
                    .await
                    .is_ok_and(|s| s.last_applied_index >= target)
            },
        )
        .await?;
    }
    let cluster_id = tc.status(leader).await?.cluster_id;
    let mut reference: BTreeMap<String, (bool, u64, Vec<u8>)> = BTreeMap::new();
    for (i, name) in names.iter().enumerate() {
        let mut client = tc.data_client(name).await?;
        for key in keys {
            let req = GetRequest {
                cluster_id,
                partition: ravel_core::partition_of(key.as_bytes(), DEFAULT_PARTITIONS),
                key: key.clone().into_bytes(),
                stale: true,
                forward: false,
            };
            let reply = client
                .get(req)
                .await
                .with_context(|| format!("stale read of {key} on {name}"))?
                .into_inner();
            ensure!(
                reply.error.is_none(),
                "{name} refused a local read of {key}: {:?}",
                reply.error
            );
            let here = (reply.found, reply.version, reply.value.to_vec());
            if i == 0 {
                reference.insert(key.clone(), here);
            } else if reference.get(key) != Some(&here) {
                bail!(
                    "{key} differs: {} has {:?}, {name} has {here:?}",
                    names[0],
                    reference.get(key)
                );
            }
        }
    }
    eprintln!("{} keys identical on {} replicas", keys.len(), names.len());
    Ok(())
}

/// Successful answers (writes and reads answered 200) among `answers`.
fn successes(answers: &ravel_testkit::workload::AnswerCounts) -> u64 {
    answers
        .iter()
        .filter(|(what, _)| what.ends_with(" 200"))
        .map(|(_, n)| n)
        .sum()
}

/// Successful operations per second of `workload` over `window`.
async fn rate_over(workload: &Workload, window: Duration) -> f64 {
    let before = successes(&workload.answers().await);
    tokio::time::sleep(window).await;
    let after = successes(&workload.answers().await);
    (after - before) as f64 / window.as_secs_f64()
}

/// Sum of one replica's `ravel_node_forwarded_total` series.
async fn forwarded_by(tc: &TestCluster, name: &str) -> Result<f64> {
    let url = format!("http://{}/metrics", tc.node(name).http_addr);
    let (_, series) = common::scrape(&url).await?;
    Ok(series
        .iter()
        .filter(|(s, _)| s.starts_with("ravel_node_forwarded_total"))
        .map(|(_, v)| v)
        .sum())
}

/// The admin cut off from one cluster's leader (its gRPC link blackholed; the cluster's own
/// Raft links are fine): that cluster keeps serving through a follower, which forwards to the
/// leader, at no less than half its rate before the cut; the other cluster is unaffected; the
/// leader and its term do not change; once the link heals the admin routes to the leader again;
/// and both histories check with every key read back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn admin_cut_off_from_a_leader_serves_through_a_follower() -> Result<()> {
    let _serial = ONE_AT_A_TIME.lock().await;
    let mut tc = common::new_cluster("partition_admin_leader_cut")?.with_grpc_proxies();
    common::start_clusters(&mut tc, 2, REPLICAS).await?;
    let cut_names = common::members(&tc, 1);
    let cut_refs: Vec<&str> = cut_names.iter().map(String::as_str).collect();
    let other_names = common::members(&tc, 2);
    let cut_cluster = tc.status(&cut_names[0]).await?.cluster_id;

    // Keys by owning cluster, from the admin's table.
    let view = tc.cluster_view().await?;
    let partitions = u32::try_from(view["partitions"].as_u64().context("partitions")?)?;
    let owners = view["partition_owners"].as_array().context("owners")?;
    let (mut on_cut, mut on_other) = (Vec::new(), Vec::new());
    for i in 0.. {
        if on_cut.len() >= 60 && on_other.len() >= 60 {
            break;
        }
        let key = format!("cut-{i}");
        let p = ravel_core::partition_of(key.as_bytes(), partitions) as usize;
        if owners[p].as_u64() == Some(cut_cluster) {
            on_cut.push(key);
        } else {
            on_other.push(key);
        }
    }
    on_cut.truncate(60);
    on_other.truncate(60);
    let config = WorkloadConfig {
        writers: 3,
        readers: 2,
        op_pause: Duration::from_millis(2),
        seed: 411,
        request_timeout: Duration::from_secs(15),
        ..WorkloadConfig::default()
    };
    let cut_load = Workload::start_on_keys(&tc.url(""), &config, on_cut)?;
    let other_load = Workload::start_on_keys(&tc.url(""), &config, on_other)?;
    cut_load.wait_loaded(Duration::from_secs(60)).await?;
    other_load.wait_loaded(Duration::from_secs(60)).await?;

    let leader = tc.wait_leader(&cut_refs).await?;
    let term = tc.status(&leader).await?.term;
    let followers: Vec<&str> = cut_refs.iter().copied().filter(|n| *n != leader).collect();
    let window = Duration::from_secs(4);
    let (cut_before, other_before) =
        tokio::join!(rate_over(&cut_load, window), rate_over(&other_load, window));

    tc.admin_link(&leader).blackhole();
    // The whole cut, from its first moment: the admin has to notice it first.
    let cut_window = Duration::from_secs(8);
    let (cut_during, other_during) = tokio::join!(
        rate_over(&cut_load, cut_window),
        rate_over(&other_load, cut_window)
    );
    let mut forwarded = 0.0;
    for f in &followers {
        forwarded += forwarded_by(&tc, f).await?;
    }
    let leader_now = tc.status(&leader).await?;
    eprintln!(
        "successful operations/s on the cut cluster: {cut_before:.0} before, {cut_during:.0} \
         during the cut ({:.0}%); on the other cluster: {other_before:.0} before, \
         {other_during:.0} during ({:.0}%); {forwarded} requests forwarded by followers",
        100.0 * cut_during / cut_before,
        100.0 * other_during / other_before
    );
    ensure!(
        leader_now.role == "leader" && leader_now.term == term,
        "the cut changed the cluster's leadership: {leader} is {} in term {} (was leader in {term})",
        leader_now.role,
        leader_now.term
    );
    ensure!(forwarded > 0.0, "no follower forwarded anything");
    ensure!(
        cut_during >= cut_before / 2.0,
        "the cut cluster served {cut_during:.0}/s during the cut, less than half of \
         {cut_before:.0}/s before"
    );
    ensure!(
        other_during >= other_before / 2.0,
        "the other cluster served {other_during:.0}/s during the cut, less than half of \
         {other_before:.0}/s before"
    );

    // Healed: once the probe hears the leader, requests go to it directly again.
    tc.heal_network();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut last = forwarded;
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let mut now = 0.0;
        for f in &followers {
            now += forwarded_by(&tc, f).await?;
        }
        if now == last {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "followers still forward 20 s after the heal"
        );
        last = now;
    }

    for (name, load, names) in [
        ("cut", cut_load, &cut_names),
        ("other", other_load, &other_names),
    ] {
        let history = load.history();
        let keys = load.keys().to_vec();
        let answers = load.stop().await?;
        let finals = read_finals(&tc.url(""), &keys, 8, 25).await?;
        eprintln!("{name} cluster ({names:?}) answers: {answers:?}");
        common::ensure_history_proves(&history.check(&finals), finals.len(), keys.len())?;
    }
    tc.finish();
    Ok(())
}

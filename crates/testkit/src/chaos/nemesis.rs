//! The nemesis: faults injected into the real processes of a [`TestCluster`] and undone again.
//!
//! Each fault is one [`FaultKind`]. [`Nemesis::inject`] applies it to a target it picks with the
//! run's seeded generator (the current leader of a cluster, a follower, the admin, a minority of
//! replicas) and returns what must be undone; [`Nemesis::heal`] undoes it (restart what was
//! killed, resume what was paused, pass every proxy again, Raft and admin links alike). Membership changes (a cluster added
//! during traffic, a cluster removed with `ravel_node kill`) are faults with nothing to undo.
//! The nemesis knows which replicas exist and which are down; it never judges the history.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::{Result, bail};
use rand::Rng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;

use crate::proxy::Mode;
use crate::{READY_TIMEOUT, TestCluster, wait_until};

/// How long one `ravel_node kill` (of the last replica, which drains its partitions first) may
/// take before the removal counts as failed.
pub const REMOVE_REPLICA_TIMEOUT: Duration = Duration::from_secs(180);

/// One kind of fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum FaultKind {
    /// `kill -9` of a cluster's leader, restarted at the heal.
    KillLeader,
    /// `kill -9` of a follower, restarted at the heal.
    KillFollower,
    /// `kill -9` of the admin, restarted at the heal.
    KillAdmin,
    /// `kill -9` of the admin group's leader (three admins), restarted at the heal.
    KillAdminLeader,
    /// SIGSTOP of a leader (a "zombie" that resumes believing it leads), SIGCONT at the heal.
    PauseLeader,
    /// The leader cut off from every peer, both ways.
    IsolateLeader,
    /// The leader's messages reach its peers, nothing of theirs reaches it.
    LeaderSendOnly,
    /// Its peers' messages reach the leader, nothing of its reaches them.
    LeaderReceiveOnly,
    /// A random minority of a cluster's replicas (with or without the leader) cut off from the
    /// majority, both ways.
    MajorityMinoritySplit,
    /// The admin cut off from a cluster's leader (the admin → leader gRPC link blackholed) while
    /// the cluster itself is healthy: the admin has to reach the leader through a follower.
    AdminLeaderCut,
    /// A follower cut off from every peer while the majority goes on writing: its local state
    /// goes stale, which is what a read served from it would show.
    IsolateFollower,
    /// A new cluster (`-l` plus replicas) started during traffic: partitions migrate to it.
    AddCluster,
    /// Every replica of one cluster removed with `ravel_node kill` (the last one drains the
    /// cluster's partitions first); only when more than one cluster exists.
    RemoveCluster,
}

impl FaultKind {
    /// The stable name used in figures and logs.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::KillLeader => "kill_leader",
            Self::KillFollower => "kill_follower",
            Self::KillAdmin => "kill_admin",
            Self::KillAdminLeader => "kill_admin_leader",
            Self::PauseLeader => "pause_leader",
            Self::IsolateLeader => "isolate_leader",
            Self::LeaderSendOnly => "leader_send_only",
            Self::LeaderReceiveOnly => "leader_receive_only",
            Self::MajorityMinoritySplit => "majority_minority_split",
            Self::AdminLeaderCut => "admin_leader_cut",
            Self::IsolateFollower => "isolate_follower",
            Self::AddCluster => "add_cluster",
            Self::RemoveCluster => "remove_cluster",
        }
    }
}

impl FaultKind {
    /// Whether the fault takes a cluster's leader away, so that another replica should take
    /// over while it lasts.
    #[must_use]
    pub fn takes_leader(self) -> bool {
        matches!(
            self,
            Self::KillLeader
                | Self::PauseLeader
                | Self::IsolateLeader
                | Self::LeaderSendOnly
                | Self::LeaderReceiveOnly
        )
    }
}

/// What an injected fault left to undo.
#[derive(Debug)]
pub enum Active {
    /// Replicas to restart.
    Restart(String),
    RestartAdmin,
    /// A paused replica to resume.
    Resume(String),
    /// Proxies to pass again.
    Network,
    /// Nothing (a membership change).
    Nothing,
}

/// The replicas the run started, by cluster number (`c<n>` names them `c<n>r<i>`), and what is
/// down.
pub struct Nemesis {
    pub clusters: BTreeMap<usize, Vec<String>>,
    /// Replicas per cluster.
    pub replicas: usize,
    down: BTreeSet<String>,
    paused: BTreeSet<String>,
    admin_down: bool,
}

impl Nemesis {
    #[must_use]
    pub fn new(replicas: usize) -> Self {
        Self {
            clusters: BTreeMap::new(),
            replicas,
            down: BTreeSet::new(),
            paused: BTreeSet::new(),
            admin_down: false,
        }
    }

    /// Starts cluster `c<n>` (the next number): its first replica with `-l`, then the others,
    /// each after the previous one registered, and waits until all are voters.
    pub async fn add_cluster(&mut self, tc: &mut TestCluster) -> Result<usize> {
        let number = self.clusters.keys().next_back().map_or(1, |n| n + 1);
        let mut names = Vec::new();
        for i in 1..=self.replicas {
            let name = format!("c{number}r{i}");
            let before = registered_replicas(tc).await?;
            tc.start_node(&name, i == 1)?;
            wait_until(&format!("{name} registered"), READY_TIMEOUT, || async {
                registered_replicas(tc).await.is_ok_and(|n| n > before)
            })
            .await?;
            names.push(name);
        }
        self.clusters.insert(number, names.clone());
        wait_until(
            &format!("every replica of c{number} a voter"),
            READY_TIMEOUT,
            || async {
                for name in &names {
                    match tc.status(name).await {
                        Ok(st) if st.voters.contains(&st.node_id) => {}
                        _ => return false,
                    }
                }
                true
            },
        )
        .await?;
        Ok(number)
    }

    /// Applies `kind`; `Ok(None)` when it does not apply now (no leader known, a single
    /// cluster to remove). An error means the fault itself failed (e.g. a removal timed out).
    pub async fn inject(
        &mut self,
        tc: &mut TestCluster,
        kind: FaultKind,
        rng: &mut StdRng,
    ) -> Result<Option<(Active, String)>> {
        if kind == FaultKind::AddCluster {
            let n = self.add_cluster(tc).await?;
            return Ok(Some((Active::Nothing, format!("cluster c{n} added"))));
        }
        if kind == FaultKind::RemoveCluster {
            return self.remove_cluster(tc, rng).await;
        }
        if kind == FaultKind::KillAdmin {
            tc.kill9_admin();
            self.admin_down = true;
            return Ok(Some((Active::RestartAdmin, "admin".to_owned())));
        }
        if kind == FaultKind::KillAdminLeader {
            let Some(leader) = admin_leader(tc).await else {
                return Ok(None);
            };
            tc.kill9_admin_at(leader);
            if tc.primary_admin() == leader {
                // The harness's own calls (registrations, views) go to another admin meanwhile.
                tc.use_admin((leader + 1) % tc.admin_count());
            }
            self.admin_down = true;
            return Ok(Some((Active::RestartAdmin, format!("admin {leader}"))));
        }
        let clusters: Vec<usize> = self.clusters.keys().copied().collect();
        let Some(&number) = clusters.get(rng.random_range(0..clusters.len().max(1))) else {
            return Ok(None);
        };
        let members = self.clusters[&number].clone();
        let Some(leader) = leader_of(tc, &members).await else {
            return Ok(None);
        };
        let followers: Vec<String> = members.iter().filter(|n| **n != leader).cloned().collect();
        let follower = followers
            .get(rng.random_range(0..followers.len().max(1)))
            .cloned();
        let done = match kind {
            FaultKind::KillLeader => {
                tc.kill9_node(&leader);
                self.down.insert(leader.clone());
                (Active::Restart(leader.clone()), leader)
            }
            FaultKind::KillFollower => {
                let Some(f) = follower else { return Ok(None) };
                tc.kill9_node(&f);
                self.down.insert(f.clone());
                (Active::Restart(f.clone()), f)
            }
            FaultKind::PauseLeader => {
                tc.pause_node(&leader, true);
                self.paused.insert(leader.clone());
                (Active::Resume(leader.clone()), leader)
            }
            FaultKind::IsolateLeader => {
                tc.isolate_node(&leader);
                (Active::Network, leader)
            }
            FaultKind::AdminLeaderCut => {
                tc.admin_link(&leader).blackhole();
                (Active::Network, leader)
            }
            FaultKind::IsolateFollower => {
                let Some(f) = follower else { return Ok(None) };
                tc.isolate_node(&f);
                (Active::Network, f)
            }
            FaultKind::LeaderSendOnly | FaultKind::LeaderReceiveOnly => {
                // On a peer's proxy the leader's connections are the client side; on the
                // leader's proxy the peers' are. "Send only" lets the leader's requests out and
                // holds what comes back, and holds the peers' requests to it.
                let (to_peer, to_leader) = if kind == FaultKind::LeaderSendOnly {
                    (Mode::ClientToUpstreamOnly, Mode::UpstreamToClientOnly)
                } else {
                    (Mode::UpstreamToClientOnly, Mode::ClientToUpstreamOnly)
                };
                for peer in &followers {
                    tc.proxy(peer).set_mode_from(&leader, to_peer);
                    tc.proxy(&leader).set_mode_from(peer, to_leader);
                }
                (Active::Network, leader)
            }
            FaultKind::MajorityMinoritySplit => {
                let mut shuffled = members.clone();
                shuffled.shuffle(rng);
                let minority: BTreeSet<String> =
                    shuffled.into_iter().take((members.len() - 1) / 2).collect();
                if minority.is_empty() {
                    return Ok(None);
                }
                for a in &members {
                    for b in &members {
                        if minority.contains(a) != minority.contains(b) {
                            // Connections `b` opens to `a` carry nothing, either way.
                            tc.proxy(a).set_mode_from(b, Mode::Blackhole);
                        }
                    }
                }
                let with_leader = if minority.contains(&leader) {
                    "with the leader"
                } else {
                    "without the leader"
                };
                (
                    Active::Network,
                    format!("minority {minority:?} {with_leader} ({leader})"),
                )
            }
            // Handled before a leader was looked for.
            FaultKind::KillAdmin
            | FaultKind::KillAdminLeader
            | FaultKind::AddCluster
            | FaultKind::RemoveCluster => {
                return Ok(None);
            }
        };
        Ok(Some(done))
    }

    /// Removes one cluster (not the only one) with `ravel_node kill` of each of its replicas.
    async fn remove_cluster(
        &mut self,
        tc: &mut TestCluster,
        rng: &mut StdRng,
    ) -> Result<Option<(Active, String)>> {
        if self.clusters.len() < 2 {
            return Ok(None);
        }
        let numbers: Vec<usize> = self.clusters.keys().copied().collect();
        let number = numbers[rng.random_range(0..numbers.len())];
        let members = self.clusters[&number].clone();
        // The last replica removed drains the cluster; the others leave its membership first.
        for name in members.iter().rev() {
            let (ok, out) = tc
                .run_node_kill_within(name, &[], REMOVE_REPLICA_TIMEOUT)
                .await?;
            if !ok {
                bail!("ravel_node kill of {name} (cluster c{number}) failed: {out}");
            }
            tc.forget_node(name);
        }
        self.clusters.remove(&number);
        Ok(Some((
            Active::Nothing,
            format!("cluster c{number} removed"),
        )))
    }

    /// Undoes one fault.
    pub async fn heal(&mut self, tc: &mut TestCluster, active: Active) -> Result<()> {
        match active {
            Active::Restart(name) => {
                tc.start_node(&name, false)?;
                self.down.remove(&name);
            }
            Active::RestartAdmin => {
                tc.start_admin().await?;
                self.admin_down = false;
            }
            Active::Resume(name) => {
                tc.pause_node(&name, false);
                self.paused.remove(&name);
            }
            Active::Network => tc.heal_network(),
            Active::Nothing => {}
        }
        Ok(())
    }

    /// Undoes everything: every proxy passes, every paused replica resumes, everything down
    /// restarts.
    pub async fn heal_all(&mut self, tc: &mut TestCluster) -> Result<()> {
        tc.heal_network();
        for name in std::mem::take(&mut self.paused) {
            tc.pause_node(&name, false);
        }
        for name in std::mem::take(&mut self.down) {
            tc.start_node(&name, false)?;
        }
        if self.admin_down {
            tc.start_admin().await?;
            self.admin_down = false;
        }
        Ok(())
    }

    /// The other replicas of `name`'s cluster.
    #[must_use]
    pub fn peers_of(&self, name: &str) -> Vec<String> {
        self.clusters
            .values()
            .find(|members| members.iter().any(|m| m == name))
            .map(|members| members.iter().filter(|m| *m != name).cloned().collect())
            .unwrap_or_default()
    }

    /// Every replica still part of the run.
    #[must_use]
    pub fn all_replicas(&self) -> Vec<String> {
        self.clusters.values().flatten().cloned().collect()
    }
}

/// The replica among `names` that reports itself leader in the highest term, if any answers.
pub async fn leader_of(tc: &TestCluster, names: &[String]) -> Option<String> {
    let mut best: Option<(String, u64)> = None;
    for name in names {
        if let Ok(st) = tc.status(name).await
            && st.role == "leader"
            && best.as_ref().is_none_or(|(_, t)| st.term > *t)
        {
            best = Some((name.clone(), st.term));
        }
    }
    best.map(|(n, _)| n)
}

/// Replicas `/v1/cluster` lists, over every cluster.
async fn registered_replicas(tc: &TestCluster) -> Result<usize> {
    let view = tc.cluster_view().await?;
    Ok(view["clusters"].as_array().map_or(0, |cs| {
        cs.iter()
            .map(|c| c["replicas"].as_array().map_or(0, Vec::len))
            .sum()
    }))
}

/// The index of the admin group's leader, as the admin the harness talks to lists it.
async fn admin_leader(tc: &TestCluster) -> Option<usize> {
    let view = tc.cluster_view().await.ok()?;
    let leader = view["admins"]
        .as_array()?
        .iter()
        .find(|a| a["role"] == "leader")?
        .clone();
    (0..tc.admin_count()).find(|i| leader["grpc_addr"] == tc.admin_addrs(*i).1.as_str())
}

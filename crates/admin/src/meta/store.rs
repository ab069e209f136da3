//! [`MetaStore`], the durable home of the state: the admins' Raft group (openraft on the
//! replicas' WAL, see [`super::raft`]); a single admin is a group of one. A command is
//! acknowledged once it is committed (durable on a majority of the group) and applied here;
//! on an admin that does not lead, it is forwarded to the leader (`forward`).
//!
//! Forming a group: every admin started with the same `--peers` list initializes the group
//! with all of them as voters (openraft allows that with identical memberships); an admin's id
//! is derived from its gRPC address, so each computes the same ids. A restart keeps the
//! membership in the log, whatever `--peers` says; members change with `members add|remove`.
//!
//! Layout of the metadata directory: `raft/raft-wal/` (the log), `raft/meta-snapshot` (the
//! last snapshot), `admin-id` (this admin's id in the group, chosen at its first start). A
//! directory written by an admin from before the Raft group holds the state in sled (`conf`,
//! `db`); it is upgraded in place: that state becomes the group's base entry, and the sled
//! files are left as they were, unused.

use super::duties::{Duties, watch_leadership};
use super::format::{decode, encode};
use super::forward::Forwarder;
use super::raft::{AdminNode, AdminTypes, Applied, MetaEntry, MetaStateMachine, Published};
use super::{MetaCommand, MetaError, MetaOutcome, MetaState};
use openraft::error::{ClientWriteError, InitializeError, RaftError};
use openraft::{Config, Raft, ServerState, SnapshotPolicy};
use ravel_core::limits;
use ravel_proto::v1::AdminStatusReply;
use ravel_storage::{LogStore, WalOptions};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Name of the sled tree an admin from before the Raft group kept its metadata in.
const LEGACY_TREE: &str = "meta";

/// Key of the one record of that tree holding the whole serialized [`MetaState`].
const LEGACY_STATE_KEY: &[u8] = b"state";

/// sled's configuration file: present in a directory that admin wrote.
const LEGACY_SLED_CONF: &str = "conf";

/// The group's Raft directory inside the metadata directory.
const RAFT_DIR: &str = "raft";

/// File holding this admin's id in the group.
const ADMIN_ID_FILE: &str = "admin-id";

/// A WAL segment of the admins' log: metadata entries are small and rare.
const ADMIN_WAL_SEGMENT_BYTES: u64 = 4 * 1024 * 1024;

/// Entries between snapshots of the metadata (each snapshot is the whole state, a few KB).
pub const DEFAULT_SNAPSHOT_EVERY: u64 = 1_000;

/// How long opening waits for a group of one to elect itself and apply its log.
const OPEN_LEADER_WAIT_MS: u64 = 30_000;

/// How long a command waits for the group to have a leader it can be forwarded to.
const FORWARD_BUDGET_MS: u64 = 10_000;

/// Pause between looks for a leader while the group has none.
const NO_LEADER_PAUSE_MS: u64 = 100;

/// How long [`MetaStore::confirm_leading`] waits for a majority of admins to answer.
const LEADERSHIP_CHECK_MS: u64 = 1_000;

/// How to open the metadata.
#[derive(Clone, Debug)]
pub struct MetaOptions {
    /// The partition count of a new store (`--partitions`); fixed afterwards.
    pub partitions: Option<u32>,
    /// This admin's addresses, as the group's membership records them.
    pub node: AdminNode,
    /// The gRPC addresses of every admin of the group, this one's included (`--peers`); empty
    /// or only this admin: a group of one.
    pub peers: Vec<String>,
    /// Join an existing group (`--join`): never form one, wait to be added with
    /// `ravel_admin members add`.
    pub join: bool,
    /// Entries between snapshots.
    pub snapshot_every: u64,
}

impl MetaOptions {
    /// Options for a single admin's store of `partitions` partitions (or the default).
    #[must_use]
    pub fn new(partitions: Option<u32>) -> Self {
        Self {
            partitions,
            node: AdminNode::default(),
            peers: Vec::new(),
            join: false,
            snapshot_every: DEFAULT_SNAPSHOT_EVERY,
        }
    }

    /// The group's first membership: this admin alone, or every peer by its id.
    fn first_members(&self) -> Result<BTreeMap<u64, AdminNode>, MetaError> {
        let own = &self.node.grpc_addr;
        let peers: std::collections::BTreeSet<&String> = self.peers.iter().collect();
        if peers.len() <= 1 && peers.iter().all(|p| *p == own) {
            return Ok(BTreeMap::from([(admin_id_of(own), self.node.clone())]));
        }
        if !peers.contains(own) {
            return Err(MetaError::Peers(format!(
                "--peers must list this admin's own --grpc address {own} (the same list on every admin)"
            )));
        }
        let mut members = BTreeMap::new();
        for addr in peers {
            let node = if addr == own {
                self.node.clone()
            } else {
                AdminNode {
                    grpc_addr: addr.clone(),
                    http_addr: String::new(),
                }
            };
            if members.insert(admin_id_of(addr), node).is_some() {
                return Err(MetaError::Peers(format!(
                    "{addr} gives the same admin id as another --peers address; change a port"
                )));
            }
        }
        Ok(members)
    }
}

/// The durable home of [`MetaState`]. One per admin process.
pub struct MetaStore {
    raft: Raft<AdminTypes>,
    id: u64,
    published: Arc<Published>,
    duties: Duties,
    pub(super) forwarder: Forwarder,
}

/// This admin's id in the group: the one stored in `dir`, or a new one derived from its gRPC
/// address (so that every admin of a group computes the same ids from the same addresses).
fn admin_id(dir: &Path, node: &AdminNode) -> Result<u64, MetaError> {
    match std::fs::read_to_string(dir.join(ADMIN_ID_FILE)) {
        Ok(text) => text
            .trim()
            .parse::<u64>()
            .ok()
            .filter(|id| *id != 0)
            .ok_or_else(|| MetaError::Corrupt(format!("{ADMIN_ID_FILE} holds {text:?}"))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let id = admin_id_of(&node.grpc_addr);
            ravel_storage::write_file_atomically(dir, ADMIN_ID_FILE, id.to_string().as_bytes())?;
            Ok(id)
        }
        Err(e) => Err(e.into()),
    }
}

/// The id an admin serving gRPC on `grpc_addr` takes when it first starts: never 0.
#[must_use]
pub fn admin_id_of(grpc_addr: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64(grpc_addr.as_bytes()).max(1)
}

/// The state an admin from before the Raft group stored in `dir`, if it did. Blocking.
fn load_legacy(dir: &Path) -> Result<Option<MetaState>, MetaError> {
    if !dir.join(LEGACY_SLED_CONF).exists() {
        return Ok(None);
    }
    let db = sled::Config::new().path(dir).open()?;
    let stored = db.open_tree(LEGACY_TREE)?.get(LEGACY_STATE_KEY)?;
    let Some(bytes) = stored else {
        return Ok(None);
    };
    let state = decode(&bytes)?;
    state.validate()?;
    Ok(Some(state))
}

/// What opening found on disk.
struct OnDisk {
    log: LogStore<AdminTypes>,
    /// The last snapshot, or the unbased start (legacy state or a new store).
    applied: Applied,
    /// Whether the start state is an older admin's (it must start as a group of one).
    legacy: bool,
    id: u64,
}

fn open_disk(dir: &Path, options: &MetaOptions) -> Result<OnDisk, MetaError> {
    std::fs::create_dir_all(dir)?;
    let raft_dir = dir.join(RAFT_DIR);
    let wal = WalOptions {
        segment_bytes: ADMIN_WAL_SEGMENT_BYTES,
        ..WalOptions::default()
    };
    let log =
        LogStore::<AdminTypes>::open(&raft_dir, wal).map_err(|e| MetaError::Log(e.to_string()))?;
    let (applied, legacy) = match super::raft::load_snapshot(&raft_dir)? {
        Some(snapshot) => (snapshot, false),
        None => match load_legacy(dir)? {
            Some(legacy) => (Applied::unbased(legacy), true),
            None => {
                let partitions = options.partitions.unwrap_or(limits::DEFAULT_PARTITIONS);
                (Applied::unbased(MetaState::new(partitions)), false)
            }
        },
    };
    let id = admin_id(dir, &options.node)?;
    Ok(OnDisk {
        log,
        applied,
        legacy,
        id,
    })
}

fn raft_config(snapshot_every: u64) -> Result<Config, MetaError> {
    let config = Config {
        cluster_name: "ravel-admins".into(),
        heartbeat_interval: limits::HEARTBEAT_INTERVAL_MS,
        election_timeout_min: limits::ELECTION_TIMEOUT_MIN_MS,
        election_timeout_max: limits::ELECTION_TIMEOUT_MAX_MS,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(snapshot_every),
        max_in_snapshot_log_to_keep: snapshot_every / 2,
        ..Config::default()
    };
    config
        .validate()
        .map_err(|e| MetaError::Raft(format!("configuration: {e}")))
}

/// Forms the group with `members` unless this admin's log already holds a membership.
async fn form_group(
    raft: &Raft<AdminTypes>,
    id: u64,
    members: BTreeMap<u64, AdminNode>,
) -> Result<(), MetaError> {
    if raft.is_initialized().await.map_err(raft_error)? {
        return Ok(());
    }
    let count = members.len();
    match raft.initialize(members).await {
        Ok(()) => {
            tracing::info!(admin = id, admins = count, "formed the admins' group");
            Ok(())
        }
        // Another admin's membership reached this one first.
        Err(RaftError::APIError(InitializeError::NotAllowed(_))) => Ok(()),
        Err(e) => Err(raft_error(e)),
    }
}

/// How a call that needs the admins' leader waits while the group has none that takes it
/// (none known, or the one known does not lead any more): it looks again every
/// [`NO_LEADER_PAUSE_MS`] for at most [`FORWARD_BUDGET_MS`], then gives up with
/// [`MetaError::NoAdminLeader`] (the call certainly did not run).
pub(super) struct LeaderWait {
    began: Instant,
}

impl LeaderWait {
    pub(super) fn start() -> Self {
        Self {
            began: Instant::now(),
        }
    }

    /// Waits before the next look, or says the budget is spent.
    pub(super) async fn pause(&mut self) -> Result<(), MetaError> {
        if self.began.elapsed() >= Duration::from_millis(FORWARD_BUDGET_MS) {
            return Err(MetaError::NoAdminLeader);
        }
        tokio::time::sleep(Duration::from_millis(NO_LEADER_PAUSE_MS)).await;
        Ok(())
    }
}

/// Whether admin `id` is the only voter of the membership its log holds (false while it has
/// none: a joining admin not added yet).
async fn only_voter(raft: &Raft<AdminTypes>, id: u64) -> Result<bool, MetaError> {
    if !raft.is_initialized().await.map_err(raft_error)? {
        return Ok(false);
    }
    let metrics = raft
        .wait(Some(Duration::from_millis(OPEN_LEADER_WAIT_MS)))
        .metrics(
            |m| {
                m.membership_config
                    .membership()
                    .voter_ids()
                    .next()
                    .is_some()
            },
            "the group's membership loaded",
        )
        .await
        .map_err(raft_error)?;
    let voters: Vec<u64> = metrics.membership_config.membership().voter_ids().collect();
    Ok(voters == [id])
}

fn raft_error(e: impl std::fmt::Display) -> MetaError {
    MetaError::Raft(e.to_string())
}

impl MetaStore {
    /// Opens (or creates) the metadata of a single admin in directory `dir`.
    ///
    /// On the first start the partition count is `partitions` or
    /// [`limits::DEFAULT_PARTITIONS`], and is stored at once; later starts must not ask for a
    /// different one.
    pub async fn open(dir: &Path, partitions: Option<u32>) -> Result<Self, MetaError> {
        Self::open_with(dir, MetaOptions::new(partitions)).await
    }

    /// Opens (or creates) the metadata in `dir` and starts this admin's member of the group
    /// (forming the group on the first start). A group of one is led at once: this waits until
    /// this admin leads it and has applied its whole log, and checks the partition count. In a
    /// larger group this returns at once; the state is routable once the group's base is
    /// applied here ([`Self::based`]).
    pub async fn open_with(dir: &Path, options: MetaOptions) -> Result<Self, MetaError> {
        if let Some(given) = options.partitions
            && !(1..=limits::MAX_PARTITIONS).contains(&given)
        {
            return Err(MetaError::InvalidPartitions { given });
        }
        let members = options.first_members()?;
        let OnDisk {
            log,
            applied,
            legacy,
            id,
        } = {
            let (dir, options) = (dir.to_path_buf(), options.clone());
            tokio::task::spawn_blocking(move || open_disk(&dir, &options))
                .await
                .map_err(|e| MetaError::Task(e.to_string()))??
        };
        if (members.len() > 1 || options.join) && legacy {
            return Err(MetaError::Peers(
                "this directory holds an older single admin's metadata: start it once without \
                 --peers to upgrade it, then add admins with `ravel_admin members add`"
                    .into(),
            ));
        }
        if members.len() > 1 && !members.contains_key(&id) {
            return Err(MetaError::Peers(format!(
                "this directory belongs to admin {id}, first started with another --grpc \
                 address than {}; start it with that address",
                options.node.grpc_addr
            )));
        }
        let base = encode(&applied.state)?;
        let sm = MetaStateMachine::durable(applied, &dir.join(RAFT_DIR));
        let published = sm.published();
        let config = Arc::new(raft_config(options.snapshot_every)?);
        let raft = Raft::new(id, config, super::transport::network(), log, sm)
            .await
            .map_err(raft_error)?;
        let peers = members.len();
        let formed = if options.join {
            Ok(())
        } else {
            form_group(&raft, id, members).await
        };
        // Whether this admin is alone is the log's membership, not the flags: a single admin
        // that was given more admins later restarts with its original command line.
        let alone = match formed {
            Ok(()) => only_voter(&raft, id).await,
            Err(e) => Err(e),
        };
        let alone = match alone {
            Ok(true) if peers > 1 => Err(MetaError::Peers(
                "this admin already runs as a group of one; --peers only forms a new group of \
                 fresh admins: start the others with --join and add them with \
                 `ravel_admin members add`"
                    .into(),
            )),
            other => other,
        };
        let alone = match alone {
            Ok(alone) => alone,
            Err(e) => {
                let _ = raft.shutdown().await;
                return Err(e);
            }
        };
        let duties = watch_leadership(raft.clone(), id, Arc::clone(&published), base);
        let store = Self {
            forwarder: Forwarder::default(),
            raft,
            id,
            published,
            duties,
        };
        if alone && let Err(e) = store.start_alone(options.partitions).await {
            store.close().await;
            return Err(e);
        }
        Ok(store)
    }

    /// Waits until this admin leads its group of one and has applied the group's base and its
    /// whole log, then checks the partition count against `partitions`.
    async fn start_alone(&self, partitions: Option<u32>) -> Result<(), MetaError> {
        let id = self.id;
        self.raft
            .wait(Some(Duration::from_millis(OPEN_LEADER_WAIT_MS)))
            .metrics(
                |m| m.current_leader == Some(id),
                "this admin leads its group",
            )
            .await
            .map_err(raft_error)?;
        let mut leading = self.duties.leading();
        tokio::time::timeout(
            Duration::from_millis(OPEN_LEADER_WAIT_MS),
            leading.wait_for(|l| *l),
        )
        .await
        .map_err(|_| MetaError::Raft("the group's base state was not committed in time".into()))?
        .map_err(raft_error)?;
        self.raft.ensure_linearizable().await.map_err(raft_error)?;
        self.check_partitions(partitions)
    }

    /// Refuses a `--partitions` other than the group's.
    pub fn check_partitions(&self, partitions: Option<u32>) -> Result<(), MetaError> {
        let state = self.current();
        match partitions {
            Some(given) if self.based() && given != state.partitions => {
                Err(MetaError::PartitionsFixed {
                    stored: state.partitions,
                    given,
                })
            }
            _ => Ok(()),
        }
    }

    /// Stops the group's Raft (its log is durable already). Call before dropping the store.
    pub async fn close(&self) {
        self.duties.stop();
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(error = %e, "the admins' Raft did not stop cleanly");
        }
    }

    /// This admin's id in the group.
    #[must_use]
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The group's Raft, for the admin's `RaftTransport` service.
    #[must_use]
    pub fn raft(&self) -> &Raft<AdminTypes> {
        &self.raft
    }

    /// The current state; cheap (an Arc clone), never blocks on I/O.
    pub fn current(&self) -> Arc<MetaState> {
        self.published.current()
    }

    /// Whether the group's base state is applied here, so that the state can route.
    #[must_use]
    pub fn based(&self) -> bool {
        self.published.based()
    }

    /// Resolves once the group's base state is applied here.
    pub async fn wait_based(&self) {
        self.published.wait_based().await;
    }

    /// Whether this admin leads the group (and its base is applied): only the leader places
    /// replicas and drives moves.
    #[must_use]
    pub fn is_leader(&self) -> bool {
        *self.duties.leading().borrow()
    }

    /// Whether this admin leads the group now, confirmed by a majority of the admins (a
    /// heartbeat round; at once in a group of one) within [`LEADERSHIP_CHECK_MS`]. Until an
    /// election timeout after that round no other admin can have been elected, so a call sent
    /// right after it cannot overtake a new leader's.
    pub async fn confirm_leading(&self) -> bool {
        if !self.is_leader() {
            return false;
        }
        let checked = tokio::time::timeout(
            Duration::from_millis(LEADERSHIP_CHECK_MS),
            self.raft.ensure_linearizable(),
        )
        .await;
        matches!(checked, Ok(Ok(_)))
    }

    /// A watch of [`Self::is_leader`].
    #[must_use]
    pub fn leading(&self) -> tokio::sync::watch::Receiver<bool> {
        self.duties.leading()
    }

    /// Where this admin stands in the group, as `AdminStatus` answers.
    #[must_use]
    pub fn status(&self, node: &AdminNode) -> AdminStatusReply {
        let m = self.raft.metrics().borrow().clone();
        let role = match m.state {
            ServerState::Leader => "leader",
            ServerState::Follower => "follower",
            ServerState::Candidate => "candidate",
            ServerState::Learner => "learner",
            ServerState::Shutdown => "shutdown",
        };
        let membership = m.membership_config.membership();
        AdminStatusReply {
            admin_id: self.id,
            grpc_addr: node.grpc_addr.clone(),
            http_addr: node.http_addr.clone(),
            role: role.into(),
            leader_id: m.current_leader.unwrap_or(0),
            term: m.current_term,
            last_applied_index: m.last_applied.map_or(0, |l| l.index),
            based: self.based(),
            voters: membership.voter_ids().collect(),
            learners: membership.learner_ids().collect(),
        }
    }

    /// Every member of the group with its addresses as the membership records them (a peer's
    /// HTTP address is learnt from its `AdminStatus`) and whether it votes.
    #[must_use]
    pub fn members(&self) -> Vec<(u64, AdminNode, bool)> {
        let m = self.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership();
        let voters: std::collections::BTreeSet<u64> = membership.voter_ids().collect();
        membership
            .nodes()
            .map(|(id, node)| (*id, node.clone(), voters.contains(id)))
            .collect()
    }

    /// Applies `cmd` through the group and returns once it is committed and applied here (on
    /// an admin that does not lead: forwarded to the leader, and applied there). A refusal
    /// ([`MetaError::Refused`]) changes nothing. On any other error whether the command was
    /// committed is unknown, except for [`MetaError::NoAdminLeader`], which it was not.
    pub async fn execute(&self, cmd: MetaCommand) -> Result<MetaOutcome, MetaError> {
        let mut wait = LeaderWait::start();
        loop {
            match self.execute_here(cmd.clone()).await {
                Err(MetaError::NotLeader {
                    leader: Some(leader),
                    ..
                }) => {
                    if let Some(answer) = self.forwarder.forward(&leader, &cmd).await? {
                        return answer;
                    }
                }
                Err(MetaError::NotLeader { leader: None, .. }) => {}
                other => return other,
            }
            wait.pause().await?;
        }
    }

    /// Applies `cmd` if this admin leads the group; otherwise [`MetaError::NotLeader`] with the
    /// leader it knows of.
    pub async fn execute_here(&self, cmd: MetaCommand) -> Result<MetaOutcome, MetaError> {
        // A command is proposed only after the group's base is applied here, so that it lands
        // after the base in the log (before it, every admin refuses it alike: `NotFormed`).
        if !self.based() {
            if !self.is_raft_leader() {
                return Err(self.not_leader());
            }
            tokio::time::timeout(
                Duration::from_millis(FORWARD_BUDGET_MS),
                self.published.wait_based(),
            )
            .await
            .map_err(|_| MetaError::Refused(super::MetaRefusal::NotFormed))?;
        }
        let written = self.raft.client_write(MetaEntry::Command(cmd)).await;
        match written {
            Ok(response) => match response.data {
                Some(Ok(outcome)) => Ok(outcome),
                Some(Err(refusal)) => Err(MetaError::Refused(refusal)),
                None => Err(MetaError::Raft(
                    "a command was applied without an outcome".into(),
                )),
            },
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(forward))) => {
                Err(MetaError::NotLeader {
                    leader_id: forward.leader_id,
                    leader: forward.leader_node,
                })
            }
            Err(e) => Err(raft_error(e)),
        }
    }

    /// Whether this admin's Raft is the group's leader now (base applied or not).
    fn is_raft_leader(&self) -> bool {
        let m = self.raft.metrics();
        let m = m.borrow();
        m.state == ServerState::Leader && m.current_leader == Some(self.id)
    }

    /// "Not leader", with the leader this admin knows of.
    fn not_leader(&self) -> MetaError {
        let m = self.raft.metrics().borrow().clone();
        let leader = m
            .current_leader
            .and_then(|id| m.membership_config.membership().get_node(&id).cloned());
        MetaError::NotLeader {
            leader_id: m.current_leader,
            leader,
        }
    }

    /// Resolves once the published table's epoch is not `epoch` (at once if it already is not):
    /// a request refused because its partition moved waits here for the switch.
    pub async fn table_changed_from(&self, epoch: u64) {
        self.published.table_changed_from(epoch).await;
    }

    /// Makes sure `has_data` is true and durable before the first write is routed (fast path: an
    /// atomic check; slow path: a command through the group). Returns an error only if the
    /// command failed.
    pub async fn ensure_has_data(&self) -> Result<(), MetaError> {
        if self.published.has_data() {
            return Ok(());
        }
        self.execute(MetaCommand::MarkHasData).await.map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meta::format::STATE_FORMAT_V1;
    use crate::meta::test_support::{adv, register, start};
    use crate::meta::{ClusterRecord, MoveStep, ReplicaRecord, plan_moves};
    use ravel_core::{ClusterId, NodeId, PartitionTable};
    use serde::Serialize;
    use std::collections::BTreeMap;

    /// What `execute` acknowledged is what a reopened store loads, and P is fixed at first start.
    #[tokio::test]
    async fn persistence_round_trip_and_fixed_partitions() {
        let dir = tempfile::tempdir().unwrap();
        let expected = {
            let store = MetaStore::open(dir.path(), Some(16)).await.unwrap();
            store.execute(register(1, true)).await.unwrap();
            store.execute(register(2, false)).await.unwrap();
            store.ensure_has_data().await.unwrap();
            store.execute(register(3, true)).await.unwrap();
            let err = store
                .execute(MetaCommand::RemoveReplica {
                    node_id: 1,
                    force: false,
                })
                .await;
            assert!(err.is_ok(), "cluster 1 has another replica: {err:?}");
            store.close().await;
            (*store.current()).clone()
        };
        assert!(expected.has_data);

        let reopened = MetaStore::open(dir.path(), None).await.unwrap();
        assert_eq!(*reopened.current(), expected);
        // The fast path is primed from the loaded state.
        assert!(reopened.published.has_data());
        reopened.close().await;

        let same = MetaStore::open(dir.path(), Some(16)).await.unwrap();
        assert_eq!(same.current().partitions, 16);
        same.close().await;
        match MetaStore::open(dir.path(), Some(32)).await {
            Err(MetaError::PartitionsFixed {
                stored: 16,
                given: 32,
            }) => {}
            Err(other) => panic!("expected PartitionsFixed, got {other}"),
            Ok(_) => panic!("a different P must be refused"),
        }
    }

    /// A fresh store takes the default P, and out-of-range P is refused before anything is written.
    #[tokio::test]
    async fn default_and_invalid_partitions() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            MetaStore::open(&dir.path().join("a"), Some(0)).await,
            Err(MetaError::InvalidPartitions { given: 0 })
        ));
        assert!(matches!(
            MetaStore::open(&dir.path().join("a"), Some(limits::MAX_PARTITIONS + 1)).await,
            Err(MetaError::InvalidPartitions { .. })
        ));
        assert!(!dir.path().join("a").exists());
        let store = MetaStore::open(&dir.path().join("b"), None).await.unwrap();
        assert_eq!(store.current().partitions, limits::DEFAULT_PARTITIONS);
        assert_eq!(
            store.current().table.owners.len(),
            limits::DEFAULT_PARTITIONS as usize
        );
        store.close().await;
    }

    /// A single admin leads its group of one and confirms it; an admin waiting to join does
    /// not lead, forwards nothing anywhere (no leader known) and is not based; a closed store
    /// leads nothing.
    #[tokio::test]
    async fn leadership_of_a_single_and_a_joining_admin() {
        let dir = tempfile::tempdir().unwrap();
        let alone = MetaStore::open(&dir.path().join("a"), Some(8))
            .await
            .unwrap();
        assert!(alone.is_leader() && alone.based());
        assert!(alone.confirm_leading().await);
        alone.close().await;
        assert!(!alone.is_leader());
        assert!(!alone.confirm_leading().await);

        let options = MetaOptions {
            join: true,
            node: AdminNode {
                grpc_addr: "127.0.0.1:1".into(),
                http_addr: String::new(),
            },
            ..MetaOptions::new(Some(8))
        };
        let joining = MetaStore::open_with(&dir.path().join("b"), options)
            .await
            .unwrap();
        assert!(!joining.is_leader() && !joining.based());
        assert!(!joining.confirm_leading().await);
        let began = std::time::Instant::now();
        let refused = joining.execute(register(1, true)).await;
        assert!(
            matches!(refused, Err(MetaError::NoAdminLeader)),
            "{refused:?}"
        );
        assert!(began.elapsed() >= Duration::from_millis(FORWARD_BUDGET_MS));
        joining.close().await;
    }

    /// `--peers` must name this admin, and an admin whose log says it is alone refuses a
    /// `--peers` list (that would form a second group beside the one it leads).
    #[tokio::test]
    async fn peers_lists_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let node = AdminNode {
            grpc_addr: "127.0.0.1:1".into(),
            http_addr: String::new(),
        };
        let with_peers = |peers: &[&str]| MetaOptions {
            node: node.clone(),
            peers: peers.iter().map(|p| (*p).to_owned()).collect(),
            ..MetaOptions::new(Some(8))
        };
        let err = MetaStore::open_with(dir.path(), with_peers(&["127.0.0.1:2", "127.0.0.1:3"]))
            .await
            .err()
            .unwrap();
        assert!(
            matches!(&err, MetaError::Peers(why) if why.contains("own --grpc")),
            "{err}"
        );

        let alone = MetaStore::open_with(dir.path(), with_peers(&[]))
            .await
            .unwrap();
        alone.close().await;
        let err = MetaStore::open_with(dir.path(), with_peers(&["127.0.0.1:1", "127.0.0.1:2"]))
            .await
            .err()
            .unwrap();
        assert!(
            matches!(&err, MetaError::Peers(why) if why.contains("group of one")),
            "{err}"
        );
        // The identical command line still opens.
        let again = MetaStore::open_with(dir.path(), with_peers(&[]))
            .await
            .unwrap();
        assert!(again.is_leader());
        again.close().await;
    }

    /// With snapshots every few entries (and the log purged below them), a reopened store still
    /// holds exactly what was acknowledged: the snapshot on disk plus the log after it.
    #[tokio::test]
    async fn snapshots_and_the_log_after_them_restore_the_state() {
        let dir = tempfile::tempdir().unwrap();
        let options = MetaOptions {
            snapshot_every: 4,
            ..MetaOptions::new(Some(16))
        };
        let store = MetaStore::open_with(dir.path(), options.clone())
            .await
            .unwrap();
        store.execute(register(1, true)).await.unwrap();
        for token in 2..=30 {
            store
                .execute(register(token, token % 3 == 0))
                .await
                .unwrap();
        }
        let expected = (*store.current()).clone();
        // Snapshots are built in the background: wait for one past the first few entries.
        store
            .raft
            .wait(Some(Duration::from_secs(10)))
            .metrics(|m| m.snapshot.is_some_and(|s| s.index >= 8), "a snapshot")
            .await
            .unwrap();
        store.close().await;
        assert!(dir.path().join(RAFT_DIR).join("meta-snapshot").exists());

        let reopened = MetaStore::open_with(dir.path(), options).await.unwrap();
        assert_eq!(*reopened.current(), expected);
        reopened.close().await;
    }

    /// A directory written by an admin from before the Raft group (the state in sled) opens with
    /// that state, which from then on lives in the group's log: it survives the sled files'
    /// removal.
    #[tokio::test]
    async fn a_sled_directory_of_an_older_admin_upgrades_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let mut old = MetaState::new(16);
        old.apply(register(1, true)).unwrap();
        old.apply(MetaCommand::MarkHasData).unwrap();
        old.apply(register(2, true)).unwrap();
        {
            let db = sled::Config::new().path(dir.path()).open().unwrap();
            let tree = db.open_tree(LEGACY_TREE).unwrap();
            tree.insert(LEGACY_STATE_KEY, encode(&old).unwrap())
                .unwrap();
            db.flush().unwrap();
        }
        let store = MetaStore::open(dir.path(), None).await.unwrap();
        assert_eq!(*store.current(), old);
        let outcome = store.execute(register(3, false)).await.unwrap();
        assert!(matches!(
            outcome,
            MetaOutcome::Registered { node_id: 3, .. }
        ));
        let expected = (*store.current()).clone();
        store.close().await;

        for name in ["conf", "db"] {
            std::fs::remove_file(dir.path().join(name)).unwrap();
        }
        let reopened = MetaStore::open(dir.path(), Some(16)).await.unwrap();
        assert_eq!(*reopened.current(), expected);
        reopened.close().await;
    }

    /// A state with moves in progress and a draining cluster survives a reopen exactly, and a
    /// format-1 record (before migration) is upgraded on load.
    #[tokio::test]
    async fn persistence_round_trip_with_moves() {
        let dir = tempfile::tempdir().unwrap();
        let expected = {
            let store = MetaStore::open(dir.path(), Some(32)).await.unwrap();
            store.execute(register(1, true)).await.unwrap();
            store.ensure_has_data().await.unwrap();
            store.execute(register(2, true)).await.unwrap();
            store.execute(register(3, true)).await.unwrap();
            // A move to cluster 3 keeps it from leaving at once: it drains instead.
            let plan = plan_moves(&store.current());
            let m = plan.iter().find(|m| m.target == 3).copied().unwrap();
            store
                .execute(start(m.partition, m.source, m.target))
                .await
                .unwrap();
            for step in [
                MoveStep::Exporting,
                MoveStep::Precopying,
                MoveStep::Freezing,
            ] {
                store.execute(adv(m.partition, step, 5)).await.unwrap();
            }
            let out = store
                .execute(MetaCommand::RemoveReplica {
                    node_id: 3,
                    force: false,
                })
                .await;
            assert!(matches!(out, Ok(MetaOutcome::Draining { .. })), "{out:?}");
            store.close().await;
            (*store.current()).clone()
        };
        assert_eq!(expected.moves.len(), 1);
        let reopened = MetaStore::open(dir.path(), None).await.unwrap();
        assert_eq!(*reopened.current(), expected);
        reopened.close().await;

        // Format 1 upgrade: the old layout is the new one's prefix of fields.
        #[derive(Serialize)]
        struct V1<'a> {
            partitions: u32,
            table: &'a PartitionTable,
            clusters: &'a BTreeMap<ClusterId, ClusterRecord>,
            replicas: &'a BTreeMap<NodeId, ReplicaRecord>,
            has_data: bool,
            next_node_id: NodeId,
            next_cluster_id: ClusterId,
            tokens: &'a BTreeMap<u64, NodeId>,
            founders: &'a BTreeMap<ClusterId, NodeId>,
        }
        let mut old = MetaState::new(16);
        old.apply(register(1, true)).unwrap();
        old.apply(MetaCommand::MarkHasData).unwrap();
        let mut bytes = vec![STATE_FORMAT_V1];
        bytes.extend(
            postcard::to_stdvec(&V1 {
                partitions: old.partitions,
                table: &old.table,
                clusters: &old.clusters,
                replicas: &old.replicas,
                has_data: old.has_data,
                next_node_id: old.next_node_id,
                next_cluster_id: old.next_cluster_id,
                tokens: &old.tokens,
                founders: &old.founders,
            })
            .unwrap(),
        );
        let upgraded = decode(&bytes).unwrap();
        assert_eq!(upgraded, old);
    }
}

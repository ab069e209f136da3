//! The chaos engine (issue 4): one scenario = a cluster of real processes behind fault-injecting
//! Raft proxies, a concurrent recorded workload ([`workload`]), a seeded nemesis loop (fault,
//! hold, heal, rest; [`nemesis`]), then healing, a liveness write, a read-back of every key,
//! a comparison of the replicas of each cluster ([`verify`]) and the linearizability check
//! ([`crate::linearizability`]). The CI tests (`tests/chaos.rs`) and the soak runner
//! (`ravel_chaos`) both call [`run`]; neither has its own copy of any step.
//!
//! A run that finds anything wrong keeps its test-cluster directory (every process's log) and
//! writes the history there as `history.jsonl`; the [`ChaosReport`] names the offending keys and
//! operations. This module must not decide what a test asserts: it reports, callers judge.

pub mod figures;
pub mod nemesis;
pub mod verify;
pub mod workload;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::TestCluster;
use crate::linearizability::{CheckConfig, Outcome, Recorder};
use nemesis::{FaultKind, Nemesis};
use workload::{Api, Workload, WorkloadConfig};

/// Partitions of the admin in a chaos run: few, so that a cluster addition or removal moves
/// every partition it must within seconds, many times per run.
pub const CHAOS_PARTITIONS: u32 = 64;
/// The mover's retry backoff in a chaos run (the default, 30 s, is long next to a fault's hold).
pub const MOVE_RETRY_BACKOFF_MS: u64 = 2_000;
/// How long after the heal a write must succeed (liveness).
pub const LIVENESS_DEADLINE: Duration = Duration::from_secs(30);
/// How long the read-back of one key may keep failing before the key is reported unreadable.
pub const READ_BACK_DEADLINE: Duration = Duration::from_secs(30);
/// How long migrations still in progress after the heal may take to finish before the replica
/// comparison.
pub const MIGRATIONS_SETTLE_TIMEOUT: Duration = Duration::from_secs(180);
/// Client deadline of one request: above the admin's own 15 s request timeout.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);
/// How often the run asks the replicas who leads, while a fault that took a leader away holds.
const NEW_LEADER_POLL: Duration = Duration::from_millis(25);
/// Problems listed in a report's text (the history file has everything).
const MAX_LISTED: usize = 10;

/// A named set of faults.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scenario {
    /// Every fault below, mixed (the soak's default).
    All,
    /// `kill -9` and restart of leaders and followers.
    Kill,
    /// SIGSTOP / SIGCONT of leaders.
    Pause,
    /// Leader isolation, one-way cuts both ways, majority/minority splits, the admin cut off
    /// from a leader (5 replicas).
    Partition,
    /// `kill -9` and restart of the admin.
    Admin,
    /// Clusters added and removed during traffic, with kills and pauses during the moves.
    Migration,
    /// A follower cut off for long holds while the majority writes: exposes reads served from a
    /// follower's local state (what `RAVEL_FAULT_FOLLOWER_READS=1` breaks on purpose).
    StaleFollower,
    /// Three admins on Raft: `kill -9` of the admin leader (the workload moves to another
    /// admin), mixed with replica leader kills and a cluster added (moves under a changing
    /// admin leader).
    AdminGroup,
}

impl Scenario {
    /// Every scenario, by name.
    pub const ALL: [Scenario; 8] = [
        Scenario::All,
        Scenario::Kill,
        Scenario::Pause,
        Scenario::Partition,
        Scenario::Admin,
        Scenario::Migration,
        Scenario::StaleFollower,
        Scenario::AdminGroup,
    ];

    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::All => "all",
            Self::Kill => "kill",
            Self::Pause => "pause",
            Self::Partition => "partition",
            Self::Admin => "admin",
            Self::Migration => "migration",
            Self::StaleFollower => "stale-follower",
            Self::AdminGroup => "admin-group",
        }
    }

    /// The faults the nemesis draws from.
    #[must_use]
    pub fn faults(self) -> &'static [FaultKind] {
        use FaultKind::*;
        match self {
            Self::All => &[
                KillLeader,
                KillFollower,
                KillAdmin,
                PauseLeader,
                IsolateLeader,
                LeaderSendOnly,
                LeaderReceiveOnly,
                MajorityMinoritySplit,
                AdminLeaderCut,
                IsolateFollower,
                AddCluster,
                RemoveCluster,
            ],
            Self::Kill => &[KillLeader, KillLeader, KillFollower],
            Self::Pause => &[PauseLeader],
            Self::Partition => &[
                IsolateLeader,
                LeaderSendOnly,
                LeaderReceiveOnly,
                MajorityMinoritySplit,
                AdminLeaderCut,
            ],
            Self::Admin => &[KillAdmin],
            Self::Migration => &[
                AddCluster,
                RemoveCluster,
                KillLeader,
                KillFollower,
                KillAdmin,
                PauseLeader,
            ],
            Self::StaleFollower => &[IsolateFollower],
            Self::AdminGroup => &[KillAdminLeader, KillAdminLeader, KillLeader, AddCluster],
        }
    }

    /// Admins in the admin group.
    #[must_use]
    pub fn admins(self) -> usize {
        match self {
            Self::AdminGroup => 3,
            _ => 1,
        }
    }

    /// Replicas per cluster (five where a 2/3 split is wanted).
    #[must_use]
    pub fn replicas(self) -> usize {
        match self {
            Self::Partition => 5,
            _ => 3,
        }
    }

    /// (Shortest, longest) hold of one fault.
    fn hold(self) -> (Duration, Duration) {
        match self {
            // Long enough for the majority to write a lot the cut-off follower never sees.
            Self::StaleFollower => (Duration::from_secs(6), Duration::from_secs(10)),
            _ => (Duration::from_secs(2), Duration::from_secs(6)),
        }
    }
}

impl FromStr for Scenario {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|sc| sc.name() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = Self::ALL.iter().map(|s| s.name()).collect();
                anyhow!("unknown scenario {s:?} (one of {})", names.join(", "))
            })
    }
}

impl fmt::Display for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Everything one run needs.
#[derive(Clone, Debug)]
pub struct ChaosOptions {
    pub scenario: Scenario,
    pub seed: u64,
    /// How long the nemesis loop runs (under traffic); set-up and verification come on top.
    pub duration: Duration,
    pub admin_bin: PathBuf,
    pub node_bin: PathBuf,
    /// Extra environment of the admin process (e.g. a fault-injection switch).
    pub admin_env: Vec<(String, String)>,
    pub workload: WorkloadConfig,
}

impl ChaosOptions {
    /// Options with the default workload: 6 workers on 8 keys at a time, keys rotated every
    /// 15 s.
    #[must_use]
    pub fn new(
        scenario: Scenario,
        seed: u64,
        duration: Duration,
        admin_bin: &Path,
        node_bin: &Path,
    ) -> Self {
        Self {
            scenario,
            seed,
            duration,
            admin_bin: admin_bin.to_path_buf(),
            node_bin: node_bin.to_path_buf(),
            admin_env: Vec::new(),
            workload: WorkloadConfig {
                workers: 6,
                keys: 8,
                generation: Duration::from_secs(15),
                op_pause: Duration::from_millis(5),
                request_timeout: REQUEST_TIMEOUT,
                seed,
            },
        }
    }
}

/// The figures and findings of one run.
#[derive(Clone, Debug, Default)]
pub struct ChaosReport {
    pub scenario: String,
    pub seed: u64,
    /// Wall time of the whole run, set-up and verification included.
    pub wall_time: Duration,
    /// Time under the nemesis.
    pub chaos_time: Duration,
    /// The workload's operations (the final read-back not included).
    pub ops_ok: usize,
    pub ops_failed: usize,
    pub ops_unknown: usize,
    /// Faults injected, by kind.
    pub faults: BTreeMap<String, u64>,
    /// Availability, throughput, first write and longest write pause under each kind of fault.
    pub per_fault: BTreeMap<String, figures::FaultFigures>,
    pub keys_checked: usize,
    /// One text per non-linearizable key (the checker's `Violation` display).
    pub violations: Vec<String>,
    /// Keys the checker could not decide within its budget, or whose record is malformed.
    pub undecided: Vec<String>,
    /// Keys whose final state drops their last acknowledged write.
    pub lost_writes: Vec<String>,
    /// Liveness and convergence failures: no write after the heal, unreadable keys, replicas
    /// that differ, a fault that could not be injected or healed.
    pub problems: Vec<String>,
    /// Where the logs (and on failure `history.jsonl`) are.
    pub logs_dir: PathBuf,
    pub history_file: Option<PathBuf>,
}

impl ChaosReport {
    /// Fraction of the workload's operations that were acknowledged.
    #[must_use]
    pub fn availability(&self) -> f64 {
        let total = self.ops_ok + self.ops_failed + self.ops_unknown;
        if total == 0 {
            0.0
        } else {
            self.ops_ok as f64 / total as f64
        }
    }

    /// Faults injected in all.
    #[must_use]
    pub fn faults_total(&self) -> u64 {
        self.faults.values().sum()
    }

    /// No violation, no lost write, nothing undecided, no liveness or convergence problem.
    #[must_use]
    pub fn passed(&self) -> bool {
        self.violations.is_empty()
            && self.lost_writes.is_empty()
            && self.undecided.is_empty()
            && self.problems.is_empty()
    }
}

impl fmt::Display for ChaosReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "chaos scenario {} seed {}: {} ({:.0?} under faults, {:.0?} in all)",
            self.scenario,
            self.seed,
            if self.passed() { "PASSED" } else { "FAILED" },
            self.chaos_time,
            self.wall_time
        )?;
        writeln!(
            f,
            "  ops: {} ok / {} failed / {} unknown; availability {:.1}%",
            self.ops_ok,
            self.ops_failed,
            self.ops_unknown,
            self.availability() * 100.0
        )?;
        let faults: Vec<String> = self
            .faults
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        writeln!(
            f,
            "  faults injected: {} ({})",
            self.faults_total(),
            faults.join(", ")
        )?;
        for (kind, figures) in &self.per_fault {
            writeln!(f, "  under {kind}: {figures}")?;
        }
        writeln!(
            f,
            "  keys checked: {}; violations: {}; lost writes: {}; undecided: {}; problems: {}",
            self.keys_checked,
            self.violations.len(),
            self.lost_writes.len(),
            self.undecided.len(),
            self.problems.len()
        )?;
        let listed = self
            .violations
            .iter()
            .chain(&self.lost_writes)
            .chain(&self.undecided)
            .chain(&self.problems)
            .take(MAX_LISTED);
        for line in listed {
            writeln!(f, "  - {line}")?;
        }
        write!(f, "  logs: {}", self.logs_dir.display())?;
        if let Some(h) = &self.history_file {
            write!(f, "; history: {}", h.display())?;
        }
        Ok(())
    }
}

/// Runs scenario `name` with `admin_env` added to the admin's environment and returns the
/// report (for tests that assert a deliberately broken build IS caught).
pub async fn run_scenario_with_admin_env(
    name: &str,
    seed: u64,
    duration: Duration,
    admin_bin: &Path,
    node_bin: &Path,
    admin_env: &[(&str, &str)],
) -> Result<ChaosReport> {
    let mut options = ChaosOptions::new(name.parse()?, seed, duration, admin_bin, node_bin);
    options.admin_env = admin_env
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    run(&options).await
}

/// Runs one scenario to the end and reports. An `Err` means the harness itself could not run
/// (binaries missing, the first cluster never became ready); everything the store did wrong is
/// in the report. Needs a multi-threaded tokio runtime (the proxies run on it).
pub async fn run(options: &ChaosOptions) -> Result<ChaosReport> {
    let started = Instant::now();
    let scenario = options.scenario;
    eprintln!(
        "chaos scenario {scenario}: seed {} (replay with --seed {}), {:?} of faults",
        options.seed, options.seed, options.duration
    );
    // The admin's extra environment goes through a wrapper script that `exec`s the admin, so
    // that the harness's kill -9 and restart reach the admin itself.
    let wrapper_dir = tempfile::tempdir().context("creating the admin wrapper's directory")?;
    let admin_bin = if options.admin_env.is_empty() {
        options.admin_bin.clone()
    } else {
        admin_wrapper(wrapper_dir.path(), &options.admin_bin, &options.admin_env)?
    };
    let admin_args = [
        "--partitions".to_owned(),
        CHAOS_PARTITIONS.to_string(),
        "--move-retry-backoff-ms".to_owned(),
        MOVE_RETRY_BACKOFF_MS.to_string(),
    ];
    let admin_args: Vec<&str> = admin_args.iter().map(String::as_str).collect();
    let mut tc = TestCluster::new(
        &format!("chaos-{scenario}-s{}", options.seed),
        path_str(&admin_bin)?,
        path_str(&options.node_bin)?,
    )?
    .with_raft_proxies()
    .with_grpc_proxies()
    .with_admins(scenario.admins())
    .with_admin_args(&admin_args);
    let mut nemesis = Nemesis::new(scenario.replicas());
    tc.start_admin().await?;
    nemesis.add_cluster(&mut tc).await?;
    tc.wait_ready().await?;

    let mut report = ChaosReport {
        scenario: scenario.name().to_owned(),
        seed: options.seed,
        logs_dir: tc.root().to_path_buf(),
        ..ChaosReport::default()
    };
    let recorder = Arc::new(Recorder::<String>::new());
    let workload = Workload::start(&tc.admin_urls(), &options.workload, Arc::clone(&recorder))?;

    // The nemesis loop: rest, fault, hold, heal.
    let mut rng = StdRng::seed_from_u64(options.seed);
    let chaos_started = Instant::now();
    let mut windows: Vec<figures::FaultWindow> = Vec::new();
    let (hold_min, hold_max) = scenario.hold();
    while chaos_started.elapsed() < options.duration {
        tokio::time::sleep(Duration::from_millis(rng.random_range(1_000..3_000))).await;
        let kind = next_fault(
            scenario,
            report.faults_total(),
            nemesis.clusters.len(),
            &mut rng,
        );
        let at = chaos_started.elapsed();
        let injected_at = recorder.now();
        match nemesis.inject(&mut tc, kind, &mut rng).await {
            Ok(Some((active, target))) => {
                eprintln!("chaos {:>6.1?}: {} on {target}", at, kind.name());
                *report.faults.entry(kind.name().to_owned()).or_default() += 1;
                let hold = rng.random_range(hold_min..=hold_max);
                let held_until = tokio::time::Instant::now() + hold;
                let new_leader = if kind.takes_leader() {
                    let peers = nemesis.peers_of(&target);
                    watch_new_leader(&tc, &peers, held_until, &recorder, injected_at).await
                } else {
                    figures::NewLeader::NotWatched
                };
                tokio::time::sleep_until(held_until).await;
                windows.push(figures::FaultWindow {
                    kind: kind.name(),
                    start: injected_at,
                    end: recorder.now(),
                    new_leader,
                });
                if let Err(e) = nemesis.heal(&mut tc, active).await {
                    report
                        .problems
                        .push(format!("healing {} on {target}: {e:#}", kind.name()));
                    break;
                }
            }
            Ok(None) => {}
            Err(e) => {
                report
                    .problems
                    .push(format!("injecting {}: {e:#}", kind.name()));
                break;
            }
        }
    }
    report.chaos_time = chaos_started.elapsed();
    report.per_fault = figures::per_fault(&windows, &recorder.ops());

    // Heal everything, restart anything down, then stop the load.
    if let Err(e) = nemesis.heal_all(&mut tc).await {
        report.problems.push(format!("final heal: {e:#}"));
    }
    workload.stop().await?;
    finish_run(&mut tc, &nemesis, &recorder, options, &mut report).await?;
    report.wall_time = started.elapsed();
    if report.passed() {
        tc.finish();
    } else {
        let path = tc.root().join("history.jsonl");
        verify::write_history(&path, &recorder.ops())?;
        report.history_file = Some(path);
    }
    Ok(report)
}

/// Most clusters a run grows to (two cores host every replica).
const MAX_CLUSTERS: usize = 3;

/// The next fault to inject. The migration scenario makes every third fault a membership change
/// (an addition while there is one cluster, else a removal), so that every run migrates under
/// the faults in between; other scenarios draw from their set, never growing past
/// [`MAX_CLUSTERS`].
/// Polls `peers` until one reports itself leader or `until`; the answer is timed on the
/// recorder's clock from `injected_at`.
async fn watch_new_leader(
    tc: &TestCluster,
    peers: &[String],
    until: tokio::time::Instant,
    recorder: &Recorder<String>,
    injected_at: Duration,
) -> figures::NewLeader {
    while tokio::time::Instant::now() < until {
        for peer in peers {
            if tc.status(peer).await.is_ok_and(|s| s.role == "leader") {
                return figures::NewLeader::After(recorder.now().saturating_sub(injected_at));
            }
        }
        tokio::time::sleep(NEW_LEADER_POLL).await;
    }
    figures::NewLeader::NoneWithinHold
}

fn next_fault(scenario: Scenario, injected: u64, clusters: usize, rng: &mut StdRng) -> FaultKind {
    use FaultKind::{AddCluster, RemoveCluster};
    if scenario == Scenario::Migration && injected.is_multiple_of(3) {
        return if clusters < 2 {
            AddCluster
        } else {
            RemoveCluster
        };
    }
    let faults: Vec<FaultKind> = scenario
        .faults()
        .iter()
        .copied()
        .filter(|f| scenario != Scenario::Migration || !matches!(f, AddCluster | RemoveCluster))
        .collect();
    match faults[rng.random_range(0..faults.len())] {
        AddCluster if clusters >= MAX_CLUSTERS => RemoveCluster,
        kind => kind,
    }
}

/// After the heal: liveness write, read-back of every key, replica comparison, the check.
async fn finish_run(
    tc: &mut TestCluster,
    nemesis: &Nemesis,
    recorder: &Arc<Recorder<String>>,
    options: &ChaosOptions,
    report: &mut ChaosReport,
) -> Result<()> {
    let workload_ops = recorder.ops();
    for op in &workload_ops {
        match op.outcome {
            Outcome::Ok(_) => report.ops_ok += 1,
            Outcome::Fail => report.ops_failed += 1,
            Outcome::Unknown => report.ops_unknown += 1,
        }
    }
    let api = Api::new(
        workload::http_client(options.workload.request_timeout)?,
        &[tc.url("")],
        0,
        Arc::clone(recorder),
    );

    // Liveness: a write succeeds within the deadline.
    let healed_at = Instant::now();
    let mut attempt = 0u64;
    loop {
        attempt += 1;
        let value = format!("liveness-{attempt}");
        if api
            .put(&format!("{}liveness", workload::KEY_PREFIX), &value, None)
            .await
            .is_some()
        {
            eprintln!(
                "liveness: a write succeeded {:?} after the heal",
                healed_at.elapsed()
            );
            break;
        }
        if healed_at.elapsed() > LIVENESS_DEADLINE {
            report.problems.push(format!(
                "liveness: no write succeeded within {LIVENESS_DEADLINE:?} of the heal"
            ));
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Read back every key touched (recorded: these reads are checked like any other).
    let keys: BTreeSet<String> = recorder.ops().into_iter().map(|op| op.key).collect();
    let final_from = recorder.now();
    for key in &keys {
        let deadline = Instant::now() + READ_BACK_DEADLINE;
        while api.get(key).await.is_none() {
            if Instant::now() > deadline {
                report.problems.push(format!(
                    "key {key:?} could not be read back within {READ_BACK_DEADLINE:?}"
                ));
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    // The replicas of each cluster hold the same data, once no migration is in progress.
    if let Err(e) = wait_migrations_idle(tc).await {
        report.problems.push(format!("{e:#}"));
    }
    let partitions = u32::try_from(tc.cluster_view().await?["partitions"].as_u64().unwrap_or(0))
        .context("partition count")?;
    let differences = verify::compare_replicas(tc, &nemesis.clusters, &keys, partitions).await?;
    report.problems.extend(differences);

    // The check.
    let ops = recorder.ops();
    let check = crate::linearizability::check(&ops, &CheckConfig::default());
    eprintln!("{}", check.summary(MAX_LISTED));
    report.keys_checked = check.keys_checked;
    report.violations = check
        .violations
        .iter()
        .map(|v| {
            format!(
                "{v}\n    history of the key (last ops):{}",
                verify::key_history(&ops, &v.key, 30)
            )
        })
        .collect();
    report.undecided = check
        .inconclusive
        .iter()
        .map(|i| {
            format!(
                "key {:?} inconclusive: {} ops, {} steps",
                i.key, i.ops, i.steps
            )
        })
        .chain(
            check
                .malformed
                .iter()
                .map(|m| format!("key {:?} malformed: {}", m.key, m.reason)),
        )
        .collect();
    report.lost_writes = verify::lost_writes(&ops, final_from);
    Ok(())
}

/// Waits until `/v1/cluster` lists no migration in progress.
async fn wait_migrations_idle(tc: &TestCluster) -> Result<()> {
    let deadline = Instant::now() + MIGRATIONS_SETTLE_TIMEOUT;
    loop {
        if let Ok(view) = tc.cluster_view().await
            && view["migrations"].as_array().is_some_and(Vec::is_empty)
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("migrations still in progress {MIGRATIONS_SETTLE_TIMEOUT:?} after the heal");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn path_str(p: &Path) -> Result<&str> {
    p.to_str()
        .ok_or_else(|| anyhow!("{} is not valid UTF-8", p.display()))
}

/// A shell script in `dir` that `exec`s `admin` with `env` added (same pid, so kill -9 works).
fn admin_wrapper(dir: &Path, admin: &Path, env: &[(String, String)]) -> Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let quote = |s: &str| format!("'{}'", s.replace('\'', r"'\''"));
    let mut script = String::from("#!/bin/sh\nexec env");
    for (k, v) in env {
        if k.is_empty() || !k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            bail!("invalid environment variable name {k:?}");
        }
        script.push_str(&format!(" {k}={}", quote(v)));
    }
    script.push_str(&format!(" {} \"$@\"\n", quote(path_str(admin)?)));
    let path = dir.join("ravel_admin");
    std::fs::write(&path, script).with_context(|| format!("writing {}", path.display()))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every scenario parses back from its name, and an unknown name is refused.
    #[test]
    fn scenario_names_round_trip() {
        for s in Scenario::ALL {
            assert_eq!(s.name().parse::<Scenario>().expect("known"), s);
            assert!(!s.faults().is_empty());
        }
        assert!("nope".parse::<Scenario>().is_err());
    }

    /// The admin wrapper runs the binary with the extra environment and the same arguments.
    #[test]
    fn admin_wrapper_adds_environment() {
        let dir = tempfile::tempdir().expect("tempdir");
        let wrapper = admin_wrapper(
            dir.path(),
            Path::new("/bin/sh"),
            &[("RAVEL_X".into(), "it's 1".into())],
        )
        .expect("wrapper");
        let out = std::process::Command::new(&wrapper)
            .args(["-c", "echo \"$RAVEL_X\""])
            .output()
            .expect("run wrapper");
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "it's 1");
        assert!(
            admin_wrapper(
                dir.path(),
                Path::new("/bin/sh"),
                &[("A B".into(), "1".into())]
            )
            .is_err()
        );
    }

    /// Availability is the acknowledged share; a report passes only with nothing found.
    #[test]
    fn report_figures() {
        let mut r = ChaosReport {
            ops_ok: 3,
            ops_failed: 1,
            ..ChaosReport::default()
        };
        assert!((r.availability() - 0.75).abs() < 1e-9);
        assert!(r.passed());
        r.lost_writes.push("k".into());
        assert!(!r.passed());
    }
}

//! Test harness for Ravel-rs end-to-end tests: starts the real `ravel_admin` and `ravel_node`
//! binaries on loopback, waits on readiness by polling (never sleeping for correctness), injects
//! faults (`kill -9`, SIGSTOP/SIGCONT, restart with the same command line) and kills every
//! process it started when dropped. [`browser`] renders pages in headless Chromium.
//!
//! Each [`TestCluster`] lives in its own directory under `target/e2e-logs/`; the directory (with
//! every process's log) is deleted when the test passes and kept when it panics, and its path is
//! printed at the start so a failing run can be read afterwards.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use ravel_proto::v1::control_client::ControlClient;
use ravel_proto::v1::data_client::DataClient;
use ravel_proto::v1::{StatusReply, StatusRequest};
use serde_json::Value;

pub mod browser;
pub mod chaos;
pub mod history;
pub mod linearizability;
pub mod proxy;
pub mod workload;

/// With `RAVEL_KEEP_LOGS=1` a passing test keeps its data and logs too (to study a run).
pub const KEEP_LOGS_ENV: &str = "RAVEL_KEEP_LOGS";

/// How long to wait for a process to become ready before a test gives up.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Poll interval of every `wait_*` helper.
const POLL_INTERVAL: Duration = Duration::from_millis(100);

static CLUSTER_SEQ: AtomicU32 = AtomicU32::new(0);

/// Test ports come from this range, below Linux's default ephemeral range (32768–60999): a port
/// taken from the ephemeral range by binding port 0 and releasing it can be handed to some other
/// socket's outgoing connection before the replica that was meant to get it binds it (seen in CI
/// as a replica failing with "Address already in use" while another test opened many
/// connections).
const TEST_PORTS: std::ops::Range<u16> = 12_000..32_000;

/// The next candidate in [`TEST_PORTS`]; starts at an offset derived from the process id so
/// that test binaries running side by side mostly start far apart.
static NEXT_PORT: AtomicU32 = AtomicU32::new(0);

/// A free loopback port, unique within this process: taken in turn from [`TEST_PORTS`] and
/// checked by binding it (and released, for the process under test to bind).
pub fn free_port() -> u16 {
    let span = u32::from(TEST_PORTS.end - TEST_PORTS.start);
    let _ = NEXT_PORT.compare_exchange(
        0,
        (std::process::id() * 997) % span + 1,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    for _ in 0..span {
        let n = NEXT_PORT.fetch_add(1, Ordering::SeqCst);
        let port = TEST_PORTS.start + u16::try_from(n % span).expect("span fits in u16");
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port in {TEST_PORTS:?}");
}

/// A running (or stopped) process with the command line that restarts it.
struct Proc {
    program: PathBuf,
    args: Vec<String>,
    log: PathBuf,
    child: Option<Child>,
}

impl Proc {
    fn spawn(&mut self) -> Result<()> {
        let log = File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("opening {}", self.log.display()))?;
        let child = Command::new(&self.program)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .env(
                "RUST_LOG",
                std::env::var("RAVEL_TEST_LOG")
                    .unwrap_or_else(|_| "info,openraft=warn,sled=warn,h2=warn".into()),
            )
            .spawn()
            .with_context(|| format!("starting {}", self.program.display()))?;
        self.child = Some(child);
        Ok(())
    }

    fn pid(&self) -> Option<Pid> {
        self.child
            .as_ref()
            .map(|c| Pid::from_raw(i32::try_from(c.id()).expect("pid fits in i32")))
    }

    fn signal(&self, signal: Signal) {
        if let Some(pid) = self.pid() {
            let _ = kill(pid, signal);
        }
    }

    /// `kill -9` and reap.
    fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then wait for a graceful exit (SIGKILL after `grace`). Returns how the
    /// process ended when it exited by itself within `grace`, `None` when it had to be killed
    /// (or was not running).
    fn terminate(&mut self, grace: Duration) -> Option<std::process::ExitStatus> {
        self.signal(Signal::SIGCONT);
        self.signal(Signal::SIGTERM);
        let mut child = self.child.take()?;
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    }

    fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }
}

/// One replica's fixed identity in a test: its directory and addresses, kept across restarts.
#[derive(Clone, Debug)]
pub struct NodeSpec {
    pub name: String,
    pub dir: PathBuf,
    pub grpc_addr: String,
    /// Where the replica's Raft transport listens.
    pub raft_addr: String,
    /// With [`TestCluster::with_raft_proxies`]: the address of the replica's proxy, which it
    /// advertises (`--raft-advertise`) so that every peer reaches it through the proxy.
    pub raft_advertise: Option<String>,
    /// With [`TestCluster::with_grpc_proxies`]: the address of the proxy in front of the
    /// replica's gRPC services, which it advertises (`--grpc-advertise`) so the admin calls it
    /// through the proxy. Tests that call the replica themselves use `grpc_addr`.
    pub grpc_advertise: Option<String>,
    /// The replica's own HTTP endpoint (`--http`: `/livez`, `/readyz`, `/metrics`).
    pub http_addr: String,
    pub leader_flag: bool,
}

/// An admin of a group other than the first.
struct MoreAdmin {
    http_addr: String,
    grpc_addr: String,
    /// Started with `--join` (added later with `members add`) rather than `--peers`.
    join: bool,
    proc: Option<Proc>,
}

impl MoreAdmin {
    fn new(join: bool) -> Self {
        Self {
            http_addr: format!("127.0.0.1:{}", free_port()),
            grpc_addr: format!("127.0.0.1:{}", free_port()),
            join,
            proc: None,
        }
    }
}

/// An admin and a set of replicas started from the real binaries.
pub struct TestCluster {
    root: PathBuf,
    admin_bin: PathBuf,
    node_bin: PathBuf,
    pub http_addr: String,
    pub admin_grpc_addr: String,
    admin: Option<Proc>,
    nodes: BTreeMap<String, (NodeSpec, Proc)>,
    extra_node_args: Vec<String>,
    /// Whether new replicas are put behind a Raft proxy.
    raft_proxies: bool,
    proxies: BTreeMap<String, proxy::Proxy>,
    /// Whether new replicas are put behind a gRPC proxy (admin → replica).
    grpc_proxies: bool,
    admin_links: BTreeMap<String, proxy::Proxy>,
    /// The pid of each running replica, for the proxies' source classifier.
    node_pids: Arc<Mutex<BTreeMap<String, u32>>>,
    extra_admin_args: Vec<String>,
    /// Admins 2, 3, ... of an admin group ([`TestCluster::with_admins`],
    /// [`TestCluster::add_joining_admin`]); admin 1 is `http_addr`, `admin_grpc_addr` and
    /// `admin`.
    more_admins: Vec<MoreAdmin>,
    /// The admin the helpers talk to.
    primary: usize,
    http: reqwest::Client,
    /// Set by [`TestCluster::finish`]: only then are the logs deleted on drop. A test that fails
    /// by panicking or by returning an error keeps them.
    finished: bool,
}

impl TestCluster {
    /// A new, empty test cluster named after the test. Binaries are passed by the test, which
    /// gets them from Cargo (`env!("CARGO_BIN_EXE_ravel_admin")`).
    pub fn new(test_name: &str, admin_bin: &str, node_bin: &str) -> Result<Self> {
        let seq = CLUSTER_SEQ.fetch_add(1, Ordering::SeqCst);
        let target = Path::new(node_bin)
            .ancestors()
            .find(|p| p.file_name().is_some_and(|n| n == "target"))
            .map_or_else(std::env::temp_dir, Path::to_path_buf);
        let root = target
            .join("e2e-logs")
            .join(format!("{test_name}-{}-{seq}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
        eprintln!(
            "test cluster {test_name}: logs and data in {}",
            root.display()
        );
        let http = http_client(Duration::from_secs(30))?;
        Ok(Self {
            root,
            admin_bin: admin_bin.into(),
            node_bin: node_bin.into(),
            http_addr: format!("127.0.0.1:{}", free_port()),
            admin_grpc_addr: format!("127.0.0.1:{}", free_port()),
            admin: None,
            nodes: BTreeMap::new(),
            extra_node_args: Vec::new(),
            raft_proxies: false,
            proxies: BTreeMap::new(),
            grpc_proxies: false,
            admin_links: BTreeMap::new(),
            node_pids: Arc::new(Mutex::new(BTreeMap::new())),
            extra_admin_args: Vec::new(),
            more_admins: Vec::new(),
            primary: 0,
            http,
            finished: false,
        })
    }

    /// Extra flags given to every replica started after this call (e.g. a small snapshot
    /// threshold).
    pub fn with_node_args(mut self, args: &[&str]) -> Self {
        self.extra_node_args = args.iter().map(|s| (*s).to_string()).collect();
        self
    }

    /// Extra flags given to the admin when it is first started (kept on restarts), e.g. a short
    /// `--move-retry-backoff-ms`.
    pub fn with_admin_args(mut self, args: &[&str]) -> Self {
        self.extra_admin_args = args.iter().map(|s| (*s).to_string()).collect();
        self
    }

    /// Puts every replica started after this call behind its own fault-injecting Raft proxy:
    /// the replica listens on its raft port, a [`proxy::Proxy`] listens on another port and
    /// forwards to it, and the replica advertises the proxy's address (`--raft-advertise`). So
    /// every inbound Raft connection of a replica, from every peer, goes through its proxy, and
    /// its outbound ones through the peers' proxies. The proxies name each connection's source
    /// replica (by the process that opened it), so [`proxy::Proxy::set_mode_from`] can cut one
    /// link. Control them with [`TestCluster::proxy`]. Needs a tokio runtime when replicas start.
    pub fn with_raft_proxies(mut self) -> Self {
        self.raft_proxies = true;
        self
    }

    /// Puts every replica started after this call behind its own fault-injecting gRPC proxy:
    /// the replica advertises the proxy's address (`--grpc-advertise`), so the admin's data and
    /// control calls to it pass through the proxy, while its Raft links do not. Cut one with
    /// [`TestCluster::admin_link`]. Needs a tokio runtime when replicas start.
    pub fn with_grpc_proxies(mut self) -> Self {
        self.grpc_proxies = true;
        self
    }

    /// The proxy between the admin and replica `name`'s gRPC services (see
    /// [`TestCluster::with_grpc_proxies`]).
    pub fn admin_link(&self, name: &str) -> &proxy::Proxy {
        self.admin_links
            .get(name)
            .unwrap_or_else(|| panic!("replica {name} has no gRPC proxy"))
    }

    /// The Raft proxy in front of replica `name` (see [`TestCluster::with_raft_proxies`]).
    pub fn proxy(&self, name: &str) -> &proxy::Proxy {
        self.proxies
            .get(name)
            .unwrap_or_else(|| panic!("replica {name} has no Raft proxy"))
    }

    /// Cuts replica `name` off from every peer, both ways: its own proxy forwards nothing (no
    /// peer reaches it) and every other proxy forwards nothing on connections `name` opened
    /// (it reaches no peer). Peers still reach each other. The admin is not cut off: it talks to
    /// replicas on their gRPC ports, which are not proxied.
    pub fn isolate_node(&self, name: &str) {
        for (other, proxy) in &self.proxies {
            if other == name {
                proxy.blackhole();
            } else {
                proxy.set_mode_from(name, proxy::Mode::Blackhole);
            }
        }
    }

    /// Every proxy (Raft and gRPC) back to passing everything, per-source modes forgotten.
    pub fn heal_network(&self) {
        for proxy in self.proxies.values().chain(self.admin_links.values()) {
            proxy.heal();
        }
    }

    /// The source classifier of the Raft proxies: the name of the replica whose process opened
    /// the connection.
    fn replica_classifier(&self) -> proxy::SourceClassifier {
        let pids = Arc::clone(&self.node_pids);
        Arc::new(move |client, server| {
            let known: Vec<(String, u32)> = pids
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .iter()
                .map(|(n, p)| (n.clone(), *p))
                .collect();
            let candidates: Vec<u32> = known.iter().map(|(_, p)| *p).collect();
            let pid = proxy::connecting_pid(client, server, &candidates)?;
            known.into_iter().find(|(_, p)| *p == pid).map(|(n, _)| n)
        })
    }

    fn record_pid(&self, name: &str, pid: Option<u32>) {
        let mut pids = self
            .node_pids
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match pid {
            Some(pid) => _ = pids.insert(name.to_owned(), pid),
            None => _ = pids.remove(name),
        }
    }

    /// Marks the test as passed: its data and logs are deleted when the cluster is dropped.
    pub fn finish(&mut self) {
        self.finished = true;
    }

    /// The directory holding this test's data and logs.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The base URL of the admin the helpers talk to (the first, or the one chosen with
    /// [`TestCluster::use_admin`]), with `path`.
    pub fn url(&self, path: &str) -> String {
        self.admin_url(self.primary, path)
    }

    /// The index of the admin the helpers talk to.
    pub fn primary_admin(&self) -> usize {
        self.primary
    }

    /// Makes admin `i` the one the helpers (`url`, `cluster_view`, `wait_ready`, ...) talk to,
    /// e.g. while another is down.
    pub fn use_admin(&mut self, i: usize) {
        assert!(i < self.admin_count(), "no admin {i}");
        self.primary = i;
    }

    /// Runs `n` admins as one admin group (`--peers`) instead of one; replicas are given all
    /// of them (`-a` with a list). Call before starting anything.
    pub fn with_admins(mut self, n: usize) -> Self {
        self.more_admins = (1..n).map(|_| MoreAdmin::new(false)).collect();
        self
    }

    /// Adds an admin that will start with `--join` (to be added to the running group with
    /// `ravel_admin members add`); returns its index. Replicas started before do not know it.
    pub fn add_joining_admin(&mut self) -> usize {
        self.more_admins.push(MoreAdmin::new(true));
        self.more_admins.len()
    }

    /// How many admins this test runs.
    pub fn admin_count(&self) -> usize {
        1 + self.more_admins.len()
    }

    /// Every admin's gRPC address but the joining ones, comma-separated (the replicas' `-a`,
    /// the admins' `--peers`).
    pub fn admin_grpc_list(&self) -> String {
        std::iter::once(&self.admin_grpc_addr)
            .chain(
                self.more_admins
                    .iter()
                    .filter(|a| !a.join)
                    .map(|a| &a.grpc_addr),
            )
            .cloned()
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Admin `i`'s (0-based) HTTP and gRPC address.
    pub fn admin_addrs(&self, i: usize) -> (String, String) {
        match i {
            0 => (self.http_addr.clone(), self.admin_grpc_addr.clone()),
            _ => {
                let admin = &self.more_admins[i - 1];
                (admin.http_addr.clone(), admin.grpc_addr.clone())
            }
        }
    }

    /// Admin `i`'s base URL with `path`.
    pub fn admin_url(&self, i: usize, path: &str) -> String {
        format!("http://{}{path}", self.admin_addrs(i).0)
    }

    /// Every admin's base URL (`http://host:port`).
    pub fn admin_urls(&self) -> Vec<String> {
        (0..self.admin_count())
            .map(|i| self.admin_url(i, ""))
            .collect()
    }

    fn admin_proc(&mut self, i: usize) -> &mut Option<Proc> {
        match i {
            0 => &mut self.admin,
            _ => &mut self.more_admins[i - 1].proc,
        }
    }

    /// Starts the admin (or restarts it with the same command line) and waits for `/livez`.
    /// With an admin group, starts every admin that is not running.
    pub async fn start_admin(&mut self) -> Result<()> {
        for i in 0..self.admin_count() {
            if !self.admin_proc(i).as_mut().is_some_and(Proc::is_running) {
                self.start_admin_at(i).await?;
            }
        }
        Ok(())
    }

    /// Starts admin `i` (or restarts it with the same command line) and waits for its `/livez`.
    pub async fn start_admin_at(&mut self, i: usize) -> Result<()> {
        if self.admin_proc(i).is_none() {
            let (http_addr, grpc_addr) = self.admin_addrs(i);
            let name = if i == 0 {
                "admin".to_owned()
            } else {
                format!("admin{}", i + 1)
            };
            let mut args = vec![
                "start".into(),
                "--http".into(),
                http_addr,
                "--grpc".into(),
                grpc_addr,
                "--backupPath".into(),
                self.root.join(&name).display().to_string(),
            ];
            if i > 0 && self.more_admins[i - 1].join {
                args.push("--join".into());
            } else if self.admin_grpc_list().contains(',') {
                args.push("--peers".into());
                args.push(self.admin_grpc_list());
            }
            args.extend(self.extra_admin_args.iter().cloned());
            let proc = Proc {
                program: self.admin_bin.clone(),
                args,
                log: self.root.join(format!("{name}.log")),
                child: None,
            };
            *self.admin_proc(i) = Some(proc);
        }
        self.admin_proc(i).as_mut().expect("admin proc").spawn()?;
        let url = self.admin_url(i, "/livez");
        let http = self.http.clone();
        wait_until("admin /livez", READY_TIMEOUT, || {
            let url = url.clone();
            let http = http.clone();
            async move { http.get(&url).send().await.is_ok_and(|r| r.status() == 200) }
        })
        .await
    }

    /// `kill -9` of the admin (the first one of a group).
    pub fn kill9_admin(&mut self) {
        self.kill9_admin_at(0);
    }

    /// `kill -9` of admin `i`.
    pub fn kill9_admin_at(&mut self, i: usize) {
        if let Some(p) = self.admin_proc(i).as_mut() {
            p.kill9();
        }
    }

    /// Graceful stop (SIGTERM) of the admin; its exit status when it exited by itself within
    /// 10 s, `None` when it had to be killed (or was not running).
    pub fn stop_admin(&mut self) -> Option<std::process::ExitStatus> {
        self.admin.as_mut()?.terminate(Duration::from_secs(10))
    }

    /// Starts replica `name` (new: fresh dir and ports; known: the same command line again).
    /// Does not wait: use [`TestCluster::wait_ready`] or the `wait_*` helpers.
    pub fn start_node(&mut self, name: &str, leader: bool) -> Result<()> {
        if !self.nodes.contains_key(name) {
            let raft_addr = format!("127.0.0.1:{}", free_port());
            let raft_advertise = if self.raft_proxies {
                let proxy = proxy::Proxy::start_with_classifier(
                    "127.0.0.1:0",
                    &raft_addr,
                    Some(self.replica_classifier()),
                )
                .with_context(|| format!("starting the Raft proxy of {name}"))?;
                let addr = proxy.listen_addr().to_string();
                self.proxies.insert(name.to_owned(), proxy);
                Some(addr)
            } else {
                None
            };
            let grpc_addr = format!("127.0.0.1:{}", free_port());
            let grpc_advertise = if self.grpc_proxies {
                let proxy = proxy::Proxy::start("127.0.0.1:0", &grpc_addr)
                    .with_context(|| format!("starting the gRPC proxy of {name}"))?;
                let addr = proxy.listen_addr().to_string();
                self.admin_links.insert(name.to_owned(), proxy);
                Some(addr)
            } else {
                None
            };
            let spec = NodeSpec {
                name: name.into(),
                dir: self.root.join(name),
                grpc_addr,
                grpc_advertise,
                raft_addr,
                raft_advertise,
                http_addr: format!("127.0.0.1:{}", free_port()),
                leader_flag: leader,
            };
            let mut args = vec![
                "start".to_string(),
                "-s".into(),
                spec.dir.display().to_string(),
                "-g".into(),
                spec.grpc_addr.clone(),
                "-r".into(),
                spec.raft_addr.clone(),
                "-a".into(),
                self.admin_grpc_list(),
                "--http".into(),
                spec.http_addr.clone(),
            ];
            if let Some(advertise) = &spec.raft_advertise {
                args.push("--raft-advertise".into());
                args.push(advertise.clone());
            }
            if let Some(advertise) = &spec.grpc_advertise {
                args.push("--grpc-advertise".into());
                args.push(advertise.clone());
            }
            if leader {
                args.push("-l".into());
            }
            args.extend(self.extra_node_args.iter().cloned());
            let proc = Proc {
                program: self.node_bin.clone(),
                args,
                log: self.root.join(format!("{name}.log")),
                child: None,
            };
            self.nodes.insert(name.into(), (spec, proc));
        }
        let (_, proc) = self.nodes.get_mut(name).expect("node just inserted");
        if proc.is_running() {
            bail!("node {name} is already running");
        }
        proc.spawn()?;
        let pid = proc.child.as_ref().map(Child::id);
        self.record_pid(name, pid);
        Ok(())
    }

    /// The replica's fixed spec (dir and addresses).
    pub fn node(&self, name: &str) -> &NodeSpec {
        &self.nodes.get(name).expect("known node").0
    }

    /// Everything replica `name` has logged so far.
    pub fn node_log(&self, name: &str) -> String {
        fs::read_to_string(self.root.join(format!("{name}.log"))).unwrap_or_default()
    }

    /// Names of every replica ever started.
    pub fn node_names(&self) -> Vec<String> {
        self.nodes.keys().cloned().collect()
    }

    /// `kill -9` of replica `name`.
    pub fn kill9_node(&mut self, name: &str) {
        if let Some((_, p)) = self.nodes.get_mut(name) {
            p.kill9();
        }
        self.record_pid(name, None);
    }

    /// Graceful stop (SIGTERM) of replica `name`; its exit status when it exited by itself
    /// within 10 s, `None` when it had to be killed (or was not running).
    pub fn stop_node(&mut self, name: &str) -> Option<std::process::ExitStatus> {
        let (_, p) = self.nodes.get_mut(name)?;
        let status = p.terminate(Duration::from_secs(10));
        self.record_pid(name, None);
        status
    }

    /// SIGSTOP / SIGCONT of replica `name`.
    pub fn pause_node(&self, name: &str, paused: bool) {
        if let Some((_, p)) = self.nodes.get(name) {
            p.signal(if paused {
                Signal::SIGSTOP
            } else {
                Signal::SIGCONT
            });
        }
    }

    /// `kill -9` of every process (admin included).
    pub fn kill9_all(&mut self) {
        for i in 0..self.admin_count() {
            self.kill9_admin_at(i);
        }
        for (_, p) in self.nodes.values_mut() {
            p.kill9();
        }
    }

    /// Runs `ravel_node kill -s DIR [extra]` to completion; returns (success, combined output).
    pub fn run_node_kill(&self, name: &str, extra: &[&str]) -> Result<(bool, String)> {
        let dir = self.node(name).dir.display().to_string();
        let out = Command::new(&self.node_bin)
            .args(["kill", "-s", &dir])
            .args(extra)
            .output()
            .context("running ravel_node kill")?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok((out.status.success(), text))
    }

    /// Runs `ravel_node kill -s DIR [extra]` without blocking the runtime, killing it if it has
    /// not finished within `timeout`; returns (success, combined output).
    pub async fn run_node_kill_within(
        &self,
        name: &str,
        extra: &[&str],
        timeout: Duration,
    ) -> Result<(bool, String)> {
        let dir = self.node(name).dir.display().to_string();
        let child = tokio::process::Command::new(&self.node_bin)
            .args(["kill", "-s", &dir])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("starting ravel_node kill")?;
        let out = tokio::time::timeout(timeout, child.wait_with_output())
            .await
            .map_err(|_| anyhow!("ravel_node kill -s {dir} did not finish within {timeout:?}"))?
            .context("running ravel_node kill")?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok((out.status.success(), text))
    }

    /// Forgets a replica whose directory `ravel_node kill` removed (reaping its process).
    pub fn forget_node(&mut self, name: &str) {
        if let Some((_, mut p)) = self.nodes.remove(name) {
            p.kill9();
        }
        self.record_pid(name, None);
        self.proxies.remove(name);
    }

    /// Waits until the admin's `/readyz` answers 200.
    pub async fn wait_ready(&self) -> Result<()> {
        let url = self.url("/readyz");
        let http = self.http.clone();
        wait_until("admin /readyz", READY_TIMEOUT, || {
            let url = url.clone();
            let http = http.clone();
            async move { http.get(&url).send().await.is_ok_and(|r| r.status() == 200) }
        })
        .await
    }

    /// The replica's `Control.Status`.
    pub async fn status(&self, name: &str) -> Result<StatusReply> {
        let addr = format!("http://{}", self.node(name).grpc_addr);
        let mut client = tokio::time::timeout(Duration::from_secs(2), ControlClient::connect(addr))
            .await
            .map_err(|_| anyhow!("connecting to {name} timed out"))??;
        let mut req = tonic::Request::new(StatusRequest {});
        req.set_timeout(Duration::from_secs(2));
        Ok(client.status(req).await?.into_inner())
    }

    /// A data client straight to replica `name`, bypassing the admin.
    pub async fn data_client(&self, name: &str) -> Result<DataClient<tonic::transport::Channel>> {
        let addr = format!("http://{}", self.node(name).grpc_addr);
        Ok(DataClient::connect(addr).await?)
    }

    /// Waits until some replica among `names` reports itself leader; returns its name.
    pub async fn wait_leader(&self, names: &[&str]) -> Result<String> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            for name in names {
                if let Ok(st) = self.status(name).await
                    && st.role == "leader"
                {
                    return Ok((*name).to_string());
                }
            }
            if Instant::now() > deadline {
                bail!("no leader among {names:?} within {READY_TIMEOUT:?}");
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    // ------------------------------------------------------------------ HTTP client helpers

    /// Sends a request to the admin and returns (status, JSON body or `Value::Null`).
    pub async fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(u16, Value)> {
        let mut req = self.http.request(method, self.url(path));
        if let Some(b) = body {
            req = req.body(b);
        }
        let resp = req.send().await?;
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await?;
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
        };
        Ok((status, body))
    }

    /// `POST /put {"key":key,"val":value}`.
    pub async fn put(&self, key: &str, value: &Value) -> Result<(u16, Value)> {
        let body = serde_json::to_vec(&serde_json::json!({"key": key, "val": value}))?;
        self.request(reqwest::Method::POST, "/put", Some(body))
            .await
    }

    /// `POST /get {"key":key}`.
    pub async fn get(&self, key: &str) -> Result<(u16, Value)> {
        let body = serde_json::to_vec(&serde_json::json!({"key": key}))?;
        self.request(reqwest::Method::POST, "/get", Some(body))
            .await
    }

    /// `GET /v1/cluster`.
    pub async fn cluster_view(&self) -> Result<Value> {
        let (status, body) = self
            .request(reqwest::Method::GET, "/v1/cluster", None)
            .await?;
        if status != 200 {
            bail!("/v1/cluster answered {status}: {body}");
        }
        Ok(body)
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        self.kill9_all();
        let keep = std::env::var_os(KEEP_LOGS_ENV).is_some_and(|v| v == "1");
        if self.finished && !std::thread::panicking() && !keep {
            let _ = fs::remove_dir_all(&self.root);
        } else {
            eprintln!("test did not finish: logs kept in {}", self.root.display());
        }
    }
}

/// How long a test client keeps an idle pooled connection: well below the admin's header-read
/// timeout (10 s), which also closes idle keep-alive connections. A client that reused a
/// connection at the instant the server closed it would see a spurious transport error.
pub const CLIENT_POOL_IDLE: Duration = Duration::from_secs(4);

/// The HTTP client every test and workload uses: `request_timeout` per request, a 2 s connect
/// timeout, and pooled connections dropped before the server would close them.
pub fn http_client(request_timeout: Duration) -> Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .timeout(request_timeout)
        .connect_timeout(Duration::from_secs(2))
        .pool_idle_timeout(CLIENT_POOL_IDLE)
        .pool_max_idle_per_host(64)
        .build()?)
}

/// Polls `check` every 100 ms until it returns true or `timeout` passes.
pub async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut check: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if check().await {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

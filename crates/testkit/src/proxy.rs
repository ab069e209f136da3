//! A fault-injecting TCP proxy for the network nemesis of the end-to-end tests.
//!
//! A [`Proxy`] listens on one loopback address and forwards every accepted connection to one
//! upstream address, bytes both ways, on the test's tokio runtime. At run time the test switches
//! what it does ([`Mode`]): pass, blackhole (accept, forward nothing either way, hold the
//! connection open), forward only one way, or delay every chunk; and it can reset every current
//! connection ([`Proxy::drop_connections`]). A mode can also be set for the connections of one
//! *source* only, when the proxy was given a [`SourceClassifier`] that names who opened a
//! connection; that is what cuts one replica off while the others still talk (see
//! [`connecting_pid`] for how the harness tells replicas apart on loopback).
//!
//! A blackholed direction stops reading from its socket once its small buffer is full, so the
//! sender's kernel buffers fill and its writes stall: what a TCP connection does while the network
//! drops its packets. When the mode passes again, the held bytes are delivered (late, as TCP
//! retransmission would deliver them). Every buffer is bounded. This module must not know
//! anything of the protocol it carries.

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinHandle;

/// Largest chunk read from one side before it is forwarded.
pub const CHUNK_BYTES: usize = 16 * 1024;
/// Chunks buffered per direction of one connection (so at most 1 MiB held per direction).
pub const CHUNKS_PER_DIRECTION: usize = 64;
/// Most connections one proxy holds at once; further clients wait in the listen backlog.
pub const MAX_CONNECTIONS: usize = 1024;
/// Deadline of the connection to the upstream made for each accepted client.
pub const UPSTREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// What the proxy does with the bytes of a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Forward both ways at once.
    Pass,
    /// Forward nothing either way; connections are accepted and held open.
    Blackhole,
    /// Forward what the client sends to the upstream, hold what comes back.
    ClientToUpstreamOnly,
    /// Forward what the upstream sends to the client, hold what the client sends.
    UpstreamToClientOnly,
    /// Forward both ways, each chunk no earlier than this long after it was read.
    Delay(Duration),
}

impl Mode {
    fn allows(self, direction: Direction) -> bool {
        match self {
            Mode::Pass | Mode::Delay(_) => true,
            Mode::Blackhole => false,
            Mode::ClientToUpstreamOnly => direction == Direction::Up,
            Mode::UpstreamToClientOnly => direction == Direction::Down,
        }
    }

    fn delay(self) -> Duration {
        match self {
            Mode::Delay(d) => d,
            _ => Duration::ZERO,
        }
    }
}

/// Which way bytes travel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Direction {
    /// Client → upstream.
    Up,
    /// Upstream → client.
    Down,
}

/// Names the source of an accepted connection from (client address, proxy address); `None`
/// when it cannot tell. Called once per connection, on a blocking thread.
pub type SourceClassifier = Arc<dyn Fn(SocketAddr, SocketAddr) -> Option<String> + Send + Sync>;

/// The switches every connection watches.
#[derive(Clone, Debug, Default)]
struct Rules {
    default_mode: Option<Mode>,
    by_source: BTreeMap<String, Mode>,
    /// Bumped by `drop_connections`: a connection born at an older value is reset.
    resets: u64,
    resets_by_source: BTreeMap<String, u64>,
}

impl Rules {
    fn mode_for(&self, source: Option<&str>) -> Mode {
        source
            .and_then(|s| self.by_source.get(s).copied())
            .or(self.default_mode)
            .unwrap_or(Mode::Pass)
    }

    fn reset_epoch(&self, source: Option<&str>) -> (u64, u64) {
        let by_source = source
            .and_then(|s| self.resets_by_source.get(s).copied())
            .unwrap_or(0);
        (self.resets, by_source)
    }
}

/// A running proxy. Dropping it stops accepting and closes every connection it holds.
pub struct Proxy {
    listen_addr: SocketAddr,
    upstream: String,
    rules: watch::Sender<Rules>,
    accept_task: JoinHandle<()>,
}

impl Proxy {
    /// Starts a proxy listening on `listen` (`host:port`; port 0 picks one) that forwards to
    /// `upstream`, in pass mode, with no source classification. Must be called inside a tokio
    /// runtime.
    pub fn start(listen: &str, upstream: &str) -> io::Result<Proxy> {
        Self::start_with_classifier(listen, upstream, None)
    }

    /// Like [`Proxy::start`], naming the source of each connection with `classifier` so that
    /// [`Proxy::set_mode_from`] can target one source.
    pub fn start_with_classifier(
        listen: &str,
        upstream: &str,
        classifier: Option<SourceClassifier>,
    ) -> io::Result<Proxy> {
        let std_listener = std::net::TcpListener::bind(listen)?;
        std_listener.set_nonblocking(true)?;
        let listener = TcpListener::from_std(std_listener)?;
        let listen_addr = listener.local_addr()?;
        let (rules, _) = watch::channel(Rules::default());
        let accept_task = tokio::spawn(accept_loop(
            listener,
            upstream.to_owned(),
            rules.clone(),
            classifier,
        ));
        Ok(Proxy {
            listen_addr,
            upstream: upstream.to_owned(),
            rules,
            accept_task,
        })
    }

    /// The address clients connect to.
    #[must_use]
    pub fn listen_addr(&self) -> SocketAddr {
        self.listen_addr
    }

    /// The address connections are forwarded to.
    #[must_use]
    pub fn upstream(&self) -> &str {
        &self.upstream
    }

    /// Sets the mode of every connection (current and future) that has no per-source mode.
    pub fn set_mode(&self, mode: Mode) {
        self.rules.send_modify(|r| r.default_mode = Some(mode));
    }

    /// The mode of connections without a per-source mode.
    #[must_use]
    pub fn mode(&self) -> Mode {
        self.rules.borrow().mode_for(None)
    }

    /// Sets the mode of the connections whose source is `source` (needs a classifier).
    pub fn set_mode_from(&self, source: &str, mode: Mode) {
        self.rules
            .send_modify(|r| _ = r.by_source.insert(source.to_owned(), mode));
    }

    /// Back to pass for everyone: every per-source mode is forgotten.
    pub fn heal(&self) {
        self.rules.send_modify(|r| {
            r.default_mode = Some(Mode::Pass);
            r.by_source.clear();
        });
    }

    /// Pass both ways.
    pub fn pass(&self) {
        self.set_mode(Mode::Pass);
    }

    /// Forward nothing either way, holding connections open.
    pub fn blackhole(&self) {
        self.set_mode(Mode::Blackhole);
    }

    /// Delay every chunk by `ms` milliseconds, both ways.
    pub fn delay(&self, ms: u64) {
        self.set_mode(Mode::Delay(Duration::from_millis(ms)));
    }

    /// Resets (TCP RST) every connection open now; later connections are not affected.
    pub fn drop_connections(&self) {
        self.rules.send_modify(|r| r.resets += 1);
    }

    /// Resets every connection open now whose source is `source`.
    pub fn drop_connections_from(&self, source: &str) {
        self.rules
            .send_modify(|r| *r.resets_by_source.entry(source.to_owned()).or_default() += 1);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        // Connection tasks see the rules' sender gone and close their sockets.
        self.accept_task.abort();
    }
}

async fn accept_loop(
    listener: TcpListener,
    upstream: String,
    rules: watch::Sender<Rules>,
    classifier: Option<SourceClassifier>,
) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let (client, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(_) => {
                // Out of descriptors or a client that vanished: try again shortly.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let local = listener.local_addr().unwrap_or(peer);
        let upstream = upstream.clone();
        let rules = rules.subscribe();
        let classifier = classifier.clone();
        tokio::spawn(async move {
            let source = match classifier {
                Some(classify) => tokio::task::spawn_blocking(move || classify(peer, local))
                    .await
                    .ok()
                    .flatten(),
                None => None,
            };
            serve_connection(client, &upstream, rules, source).await;
            drop(permit);
        });
    }
}

/// Forwards one connection until both directions end, a reset is asked for, or the proxy is
/// dropped.
async fn serve_connection(
    client: TcpStream,
    upstream: &str,
    mut rules: watch::Receiver<Rules>,
    source: Option<String>,
) {
    let _ = client.set_nodelay(true);
    let upstream =
        match tokio::time::timeout(UPSTREAM_CONNECT_TIMEOUT, TcpStream::connect(upstream)).await {
            Ok(Ok(stream)) => stream,
            // Like a refused connection: the client sees a reset.
            _ => {
                let _ = client.set_zero_linger();
                return;
            }
        };
    let _ = upstream.set_nodelay(true);
    let born = rules.borrow_and_update().reset_epoch(source.as_deref());
    let (mut client_r, mut client_w) = client.into_split();
    let (mut upstream_r, mut upstream_w) = upstream.into_split();
    let reset = {
        let up = pump(
            &mut client_r,
            &mut upstream_w,
            Direction::Up,
            rules.clone(),
            source.as_deref(),
        );
        let down = pump(
            &mut upstream_r,
            &mut client_w,
            Direction::Down,
            rules.clone(),
            source.as_deref(),
        );
        tokio::select! {
            () = async { tokio::join!(up, down); } => false,
            () = reset_requested(&mut rules, source.as_deref(), born) => true,
        }
    };
    if reset {
        for stream in [client_r.reunite(client_w), upstream_r.reunite(upstream_w)]
            .into_iter()
            .flatten()
        {
            let _ = stream.set_zero_linger();
        }
    }
}

/// Resolves when a reset of this connection is asked for or the proxy is gone.
async fn reset_requested(
    rules: &mut watch::Receiver<Rules>,
    source: Option<&str>,
    born: (u64, u64),
) {
    loop {
        if rules.borrow_and_update().reset_epoch(source) != born {
            return;
        }
        if rules.changed().await.is_err() {
            return;
        }
    }
}

/// One direction: a reader filling a bounded queue and a writer draining it when the mode
/// allows, each chunk no earlier than the mode's delay after it was read.
async fn pump(
    from: &mut OwnedReadHalf,
    to: &mut OwnedWriteHalf,
    direction: Direction,
    mut rules: watch::Receiver<Rules>,
    source: Option<&str>,
) {
    let (tx, mut rx) = mpsc::channel::<(Instant, Vec<u8>)>(CHUNKS_PER_DIRECTION);
    let read = async move {
        loop {
            let mut buf = vec![0u8; CHUNK_BYTES];
            match from.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    buf.truncate(n);
                    if tx.send((Instant::now(), buf)).await.is_err() {
                        return;
                    }
                }
            }
        }
    };
    let write = async move {
        while let Some((read_at, chunk)) = rx.recv().await {
            let Some(delay) = wait_allowed(&mut rules, source, direction).await else {
                return;
            };
            tokio::time::sleep_until((read_at + delay).into()).await;
            if to.write_all(&chunk).await.is_err() {
                return;
            }
        }
        // The source half-closed (or failed): pass the end of stream on.
        let _ = to.shutdown().await;
    };
    tokio::join!(read, write);
}

/// Waits until the mode lets `direction` forward; returns the delay to apply, or `None` when
/// the proxy is gone.
async fn wait_allowed(
    rules: &mut watch::Receiver<Rules>,
    source: Option<&str>,
    direction: Direction,
) -> Option<Duration> {
    loop {
        let mode = rules.borrow_and_update().mode_for(source);
        if mode.allows(direction) {
            return Some(mode.delay());
        }
        if rules.changed().await.is_err() {
            return None;
        }
    }
}

/// The process (among `candidates`) that owns the client end of a loopback TCP connection
/// from `client` to `server`, found through `/proc/net/tcp` and `/proc/<pid>/fd` (Linux only;
/// `None` elsewhere or when it cannot tell). All replicas of a test connect from 127.0.0.1, so
/// the source address alone does not say which one opened a connection; the owning process
/// does.
#[must_use]
pub fn connecting_pid(client: SocketAddr, server: SocketAddr, candidates: &[u32]) -> Option<u32> {
    let inode = socket_inode(client, server)?;
    let wanted = format!("socket:[{inode}]");
    candidates.iter().copied().find(|pid| {
        std::fs::read_dir(format!("/proc/{pid}/fd")).is_ok_and(|entries| {
            entries.flatten().any(|entry| {
                std::fs::read_link(entry.path())
                    .is_ok_and(|target| target.as_os_str() == wanted.as_str())
            })
        })
    })
}

/// The inode of the IPv4 socket whose local end is `local` and remote end is `remote`.
fn socket_inode(local: SocketAddr, remote: SocketAddr) -> Option<u64> {
    let (SocketAddr::V4(local), SocketAddr::V4(remote)) = (local, remote) else {
        return None;
    };
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    let encode = |a: std::net::SocketAddrV4| {
        // The kernel prints the address as the host-order integer of its network-order bytes.
        let ip = u32::from_ne_bytes(a.ip().octets());
        format!("{ip:08X}:{:04X}", a.port())
    };
    let (local, remote) = (encode(local), encode(remote));
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        (fields.len() > 9 && fields[1] == local && fields[2] == remote)
            .then(|| fields[9].parse().ok())
            .flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// A loopback echo server; returns its address.
    async fn echo_server() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        addr
    }

    async fn proxied(upstream: SocketAddr) -> Proxy {
        Proxy::start("127.0.0.1:0", &upstream.to_string()).unwrap()
    }

    /// Sends `msg` and waits up to `within` for the whole echo.
    async fn round_trip(s: &mut TcpStream, msg: &[u8], within: Duration) -> io::Result<Vec<u8>> {
        s.write_all(msg).await?;
        let mut got = vec![0u8; msg.len()];
        tokio::time::timeout(within, s.read_exact(&mut got))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no echo"))??;
        Ok(got)
    }

    /// In pass mode bytes go through unchanged both ways, including a large transfer that
    /// exceeds the proxy's buffers (so backpressure, not memory, bounds it).
    #[tokio::test]
    async fn pass_forwards_both_ways() {
        let proxy = proxied(echo_server().await).await;
        let mut s = TcpStream::connect(proxy.listen_addr()).await.unwrap();
        let got = round_trip(&mut s, b"hello", Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(got, b"hello");
        let big: Vec<u8> = (0..4 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
        let (mut r, mut w) = s.into_split();
        let sent = big.clone();
        let writer = tokio::spawn(async move { w.write_all(&sent).await });
        let mut back = vec![0u8; big.len()];
        tokio::time::timeout(Duration::from_secs(20), r.read_exact(&mut back))
            .await
            .unwrap()
            .unwrap();
        writer.await.unwrap().unwrap();
        assert!(back == big, "the 4 MiB echo came back altered");
    }

    /// A blackhole holds new and existing connections open but forwards nothing; passing again
    /// delivers what was held.
    #[tokio::test]
    async fn blackhole_holds_and_heals() {
        let proxy = proxied(echo_server().await).await;
        let mut existing = TcpStream::connect(proxy.listen_addr()).await.unwrap();
        round_trip(&mut existing, b"before", Duration::from_secs(5))
            .await
            .unwrap();
        proxy.blackhole();
        let cut = round_trip(&mut existing, b"during", Duration::from_millis(300)).await;
        assert_eq!(cut.unwrap_err().kind(), io::ErrorKind::TimedOut);
        // A new connection is accepted (connect succeeds) but gets nothing back either.
        let mut fresh = TcpStream::connect(proxy.listen_addr()).await.unwrap();
        let cut = round_trip(&mut fresh, b"new", Duration::from_millis(300)).await;
        assert_eq!(cut.unwrap_err().kind(), io::ErrorKind::TimedOut);
        proxy.pass();
        let mut held = vec![0u8; b"during".len()];
        tokio::time::timeout(Duration::from_secs(5), existing.read_exact(&mut held))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(held, b"during");
        let mut held = vec![0u8; 3];
        tokio::time::timeout(Duration::from_secs(5), fresh.read_exact(&mut held))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(held, b"new");
    }

    /// `drop_connections` resets the connections open now; new ones work.
    #[tokio::test]
    async fn drop_connections_resets_current_ones() {
        let proxy = proxied(echo_server().await).await;
        let mut s = TcpStream::connect(proxy.listen_addr()).await.unwrap();
        round_trip(&mut s, b"x", Duration::from_secs(5))
            .await
            .unwrap();
        proxy.drop_connections();
        let mut buf = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .unwrap();
        assert!(
            matches!(read, Ok(0) | Err(_)),
            "the connection is closed: {read:?}"
        );
        let mut again = TcpStream::connect(proxy.listen_addr()).await.unwrap();
        let got = round_trip(&mut again, b"y", Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(got, b"y");
    }

    /// One-way modes forward one direction only: with client→upstream only, the upstream gets
    /// the bytes (a one-way echo server proves it) but the echo is held.
    #[tokio::test]
    async fn one_way_forwards_one_direction() {
        let received = Arc::new(Mutex::new(Vec::new()));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let upstream = listener.local_addr().unwrap();
        let sink = Arc::clone(&received);
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let sink = Arc::clone(&sink);
                tokio::spawn(async move {
                    let mut buf = [0u8; 64];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 {
                            return;
                        }
                        sink.lock().unwrap().extend_from_slice(&buf[..n]);
                        if s.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        let proxy = proxied(upstream).await;
        proxy.set_mode(Mode::ClientToUpstreamOnly);
        let mut s = TcpStream::connect(proxy.listen_addr()).await.unwrap();
        let cut = round_trip(&mut s, b"up", Duration::from_millis(300)).await;
        assert_eq!(cut.unwrap_err().kind(), io::ErrorKind::TimedOut);
        assert_eq!(*received.lock().unwrap(), b"up", "the upstream got it");

        proxy.set_mode(Mode::UpstreamToClientOnly);
        // The held echo of "up" now arrives; what the client sends now is held.
        let mut echo = [0u8; 2];
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut echo))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&echo, b"up");
        s.write_all(b"down").await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(*received.lock().unwrap(), b"up", "client bytes are held");
    }

    /// Delay mode adds at least the delay to a round trip (once each way).
    #[tokio::test]
    async fn delay_adds_latency() {
        let proxy = proxied(echo_server().await).await;
        proxy.delay(150);
        let mut s = TcpStream::connect(proxy.listen_addr()).await.unwrap();
        let start = Instant::now();
        round_trip(&mut s, b"slow", Duration::from_secs(5))
            .await
            .unwrap();
        let took = start.elapsed();
        assert!(
            took >= Duration::from_millis(300),
            "round trip took {took:?}"
        );
    }

    /// A per-source mode applies only to connections from that source; the classifier's name
    /// comes from the connecting process, found through /proc.
    #[tokio::test]
    async fn per_source_mode_targets_one_source() {
        let me = std::process::id();
        let classifier: SourceClassifier = Arc::new(move |client, server| {
            // Connections from this process are "me" only while the /proc lookup works.
            connecting_pid(client, server, &[me]).map(|_| "me".to_owned())
        });
        let upstream = echo_server().await;
        let proxy =
            Proxy::start_with_classifier("127.0.0.1:0", &upstream.to_string(), Some(classifier))
                .unwrap();
        let mut s = TcpStream::connect(proxy.listen_addr()).await.unwrap();
        round_trip(&mut s, b"a", Duration::from_secs(5))
            .await
            .unwrap();
        proxy.set_mode_from("someone-else", Mode::Blackhole);
        round_trip(&mut s, b"b", Duration::from_secs(5))
            .await
            .unwrap();
        proxy.set_mode_from("me", Mode::Blackhole);
        let cut = round_trip(&mut s, b"c", Duration::from_millis(300)).await;
        assert_eq!(
            cut.unwrap_err().kind(),
            io::ErrorKind::TimedOut,
            "the classifier named this process's connection"
        );
        proxy.heal();
        let mut held = [0u8; 1];
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut held))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&held, b"c");
    }

    /// The /proc lookup finds the process owning the client end, and nobody for an unknown one.
    #[tokio::test]
    async fn connecting_pid_finds_the_owner() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server = listener.local_addr().unwrap();
        let client = TcpStream::connect(server).await.unwrap();
        let (_accepted, peer) = listener.accept().await.unwrap();
        assert_eq!(peer, client.local_addr().unwrap());
        let me = std::process::id();
        assert_eq!(connecting_pid(peer, server, &[1, me]), Some(me));
        let nobody: SocketAddr = "127.0.0.1:1".parse().unwrap();
        assert_eq!(connecting_pid(nobody, server, &[me]), None);
    }
}

"""benchlib: what the benchmark scripts in this directory share (Python 3 stdlib only).

bench/ravel-bench (Ravel-rs against etcd) and bench/ravel-migrate (the cost of a live partition
migration) both import it from the script's own directory:

  - processes: each started in its own process group and stopped on exit, error or signal
    (Processes, install_stop_handlers), and the BenchError / Interrupted exceptions;
  - /proc readers: CPU time of a process and of the machine, resident memory, disk usage, other
    ravel or etcd processes on the machine, a description of the machine;
  - HTTP without proxies (http), wait_until, port checks;
  - tools: finding wrk (and etcd) and installing missing Debian packages, copying the ravel
    binaries into the run directory (or building them), versions;
  - RavelStore: one admin and clusters of 3 replicas on loopback, which can also grow by a
    cluster and shrink by one (ravel_node kill);
  - wrk runs with kv.lua, and pre-loading a key space with them.

Every message goes to standard error prefixed with the script's name (set_prog).
"""

import argparse
import hashlib
import ipaddress
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
LUA = os.path.join(HERE, "kv.lua")
CLK_TCK = os.sysconf("SC_CLK_TCK")
APT_PACKAGES = {"wrk": "wrk", "etcd": "etcd-server", "etcdctl": "etcd-client"}
HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never through a proxy
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
FOREIGN_WARN_CORES = 0.15

_prog = os.path.basename(sys.argv[0]) or "bench"


class BenchError(Exception):
    """A failure with a message meant for the user."""


class Interrupted(Exception):
    """SIGINT, SIGTERM or SIGHUP arrived."""


def set_prog(name):
    """The name log lines start with."""
    global _prog
    _prog = name


def log(msg):
    print(f"[{_prog} {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------ option types

def duration_seconds(text):
    m = re.fullmatch(r"(\d+)([smh]?)", text)
    if not m:
        raise argparse.ArgumentTypeError(f"bad duration {text!r} (use e.g. 20s, 2m)")
    return int(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[m.group(2)]


def positive_int(text):
    n = int(text)
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {n}")
    return n


def loopback_host(text):
    try:
        addr = ipaddress.ip_address(socket.gethostbyname(text))
    except (OSError, ValueError) as e:
        raise argparse.ArgumentTypeError(f"cannot resolve {text!r}: {e}") from e
    if not addr.is_loopback:
        raise argparse.ArgumentTypeError(f"refusing non-loopback address {text} ({addr})")
    return str(addr)


# ------------------------------------------------------------------------------ processes

class Processes:
    """Every process we start, each in its own process group, so that all can be stopped."""

    def __init__(self):
        self.procs = []

    def start(self, name, argv, log_path, env=None):
        # No signal between the fork and the bookkeeping: every started process gets stopped.
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        try:
            with open(log_path, "ab") as out:
                proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, start_new_session=True, env=env,
                                        preexec_fn=unblock_stop_signals)
            proc.bench_name = name
            self.procs.append(proc)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        return proc

    def check_alive(self, procs):
        for p in procs:
            if p.poll() is not None:
                raise BenchError(f"{p.bench_name} (pid {p.pid}) exited with status {p.returncode}")

    def forget(self, proc):
        """proc has exited and been waited for (by us or by proc.wait)."""
        if proc in self.procs:
            self.procs.remove(proc)

    def stop(self, proc, grace=10.0):
        if proc.poll() is None:
            signal_group(proc.pid, signal.SIGTERM)
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                pass
        signal_group(proc.pid, signal.SIGKILL)  # also any child left in the group
        proc.wait()
        self.forget(proc)

    def stop_all(self):
        live = [p for p in self.procs if p.poll() is None]
        for p in live:
            signal_group(p.pid, signal.SIGTERM)
        deadline = time.time() + 10
        for p in live:
            try:
                p.wait(max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                pass
        for p in list(self.procs):
            signal_group(p.pid, signal.SIGKILL)
            p.wait()
        self.procs.clear()


def unblock_stop_signals():
    """In the child before exec: the signal mask is inherited, and ours blocks STOP_SIGNALS."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


def signal_group(pgid, sig):
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def on_signal(signum, _frame):
    raise Interrupted(signal.Signals(signum).name)


def install_stop_handlers():
    """SIGINT, SIGTERM and SIGHUP raise Interrupted in the main thread."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, on_signal)


def ignore_stop_signals():
    """During the final cleanup: let the stopping finish."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


# ------------------------------------------------------------------------------ /proc

def cpu_seconds(pid):
    """utime + stime of the process (all its threads), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # fields 14 and 15 of stat(5)


def machine_busy_seconds():
    """CPU seconds the whole machine spent busy (all CPUs), from /proc/stat."""
    with open("/proc/stat") as f:
        user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, f.readline().split()[1:9])
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


def own_cpu_seconds(children=True):
    """CPU of this script (all its threads) plus, with children, its waited-for children (wrk
    once it has exited)."""
    t = os.times()
    return t.user + t.system + ((t.children_user + t.children_system) if children else 0.0)


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def du_bytes(path):
    """Allocated bytes under path, as du counts them."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_blocks * 512
            except FileNotFoundError:
                pass
    return total


def free_bytes(path):
    """Bytes available to us on the file system holding path (df's Avail)."""
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def foreign_servers(ours):
    """pids of etcd / ravel processes on this machine that we did not start."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) not in ours:
            try:
                with open(f"/proc/{entry}/comm") as f:
                    comm = f.read().strip()
            except OSError:
                continue
            if comm in ("etcd", "ravel_admin", "ravel_node"):
                found.append(f"{comm}[{entry}]")
    return found


def machine_info():
    info = {"cpus": os.cpu_count(), "kernel": platform.release(), "python": platform.python_version()}
    try:
        with open("/proc/cpuinfo") as f:
            models = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        info["cpu_model"] = models[0] if models else "?"
    except OSError:
        info["cpu_model"] = "?"
    return info


# ------------------------------------------------------------------------------ HTTP

def http(method, url, body=None, timeout=5.0):
    """(status, parsed JSON or text); status 0 when the server does not answer."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    try:
        with HTTP.open(req, timeout=timeout) as resp:
            status, raw = resp.status, resp.read()
    except urllib.error.HTTPError as e:
        status, raw = e.code, e.read()
    except (OSError, urllib.error.URLError):
        return 0, None
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode(errors="replace")


def wait_until(what, predicate, timeout, procs, processes, interval=0.2):
    deadline = time.time() + timeout
    while time.time() < deadline:
        processes.check_alive(procs)
        if predicate():
            return
        time.sleep(interval)
    raise BenchError(f"timed out after {timeout:.0f}s waiting for {what}")


def port_free(host, port):
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers do: TIME_WAIT is fine
        try:
            s.bind((host, port))
            return True
        except OSError:
            return False


def check_ports(host, ports):
    taken = [p for p in ports if not port_free(host, p)]
    if taken:
        raise BenchError(f"ports already in use on {host}: {taken}; pick another --base-port")


# ------------------------------------------------------------------------------ tools

def find_tools(wanted, no_install):
    """Absolute paths of the tools in wanted ({tool: executable}, tools named as in
    APT_PACKAGES); installs the missing Debian packages with apt-get unless no_install."""
    missing = [t for t, exe in wanted.items() if not shutil.which(exe)]
    if missing:
        install_packages([APT_PACKAGES[t] for t in missing], no_install)
    paths = {}
    for tool, exe in wanted.items():
        path = shutil.which(exe)
        if not path:
            raise BenchError(f"{tool} not found ({exe}); install Debian package {APT_PACKAGES[tool]}")
        paths[tool] = path
    return paths


def install_packages(packages, forbidden):
    hint = f"install them (apt-get install -y {' '.join(packages)}) or pass --wrk/--etcd/--etcdctl"
    if forbidden:
        raise BenchError(f"missing packages {packages} and --no-install given; {hint}")
    if not shutil.which("apt-get"):
        raise BenchError(f"missing packages {packages} and no apt-get on this machine; {hint}")
    prefix = []
    if os.geteuid() != 0:
        if not shutil.which("sudo"):
            raise BenchError(f"missing packages {packages}; not root and no sudo; {hint}")
        prefix = ["sudo"]
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    log(f"installing {' '.join(packages)} with apt-get")
    for cmd in (["apt-get", "update"], ["apt-get", "install", "-y", *packages]):
        if subprocess.run(prefix + cmd, env=env).returncode != 0:
            raise BenchError(f"{' '.join(prefix + cmd)} failed; {hint}")


def ravel_binaries(bin_dir, run_dir):
    """Copies ravel_admin and ravel_node from bin_dir (None: cargo build --release first) into
    the run directory, so that a rebuild while we run changes nothing, and returns that
    directory."""
    src = bin_dir
    if not src:
        log("building: cargo build --release --locked --bin ravel_admin --bin ravel_node")
        cmd = ["cargo", "build", "--release", "--locked", "--bin", "ravel_admin", "--bin", "ravel_node"]
        if subprocess.run(cmd, cwd=REPO).returncode != 0:
            raise BenchError("cargo build failed")
        src = os.path.join(REPO, "target", "release")
    dst = os.path.join(run_dir, "bin")
    os.makedirs(dst, exist_ok=True)
    for name in ("ravel_admin", "ravel_node"):
        path = os.path.join(src, name)
        if not os.access(path, os.X_OK):
            raise BenchError(f"{path} is not an executable")
        shutil.copy2(path, os.path.join(dst, name))
    return dst


def binary_identity(bin_dir):
    """sha256 and build time of the copied binaries: the git revision alone does not say what
    a --bin-dir build was made from."""
    ids = {}
    for name in ("ravel_admin", "ravel_node"):
        path = os.path.join(bin_dir, name)
        with open(path, "rb") as f:
            digest = hashlib.sha256(f.read()).hexdigest()[:16]
        ids[name] = {"sha256_16": digest,
                     "mtime": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(os.stat(path).st_mtime))}
    return ids


def tool_version(argv):
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout
        return out.strip().splitlines()[0] if out.strip() else "?"
    except (OSError, subprocess.TimeoutExpired):
        return "?"


def git_revision():
    try:
        rev = subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", REPO, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return rev + ("+dirty" if dirty else "") if rev else "?"
    except (OSError, subprocess.TimeoutExpired):
        return "?"


# ------------------------------------------------------------------------------ run directory

def make_run_dir(path, default_parent):
    path = path or os.path.join(default_parent, time.strftime("run-%Y%m%d-%H%M%S"))
    os.makedirs(path, exist_ok=True)
    return os.path.abspath(path)


def write_json(run_dir, results):
    with open(os.path.join(run_dir, "results.json"), "w") as f:
        json.dump(results, f, indent=2, default=str)


# ------------------------------------------------------------------------------ a Ravel-rs store

class RavelStore:
    """One admin and clusters of 3 replicas on loopback. The admin has HTTP base+100 and gRPC
    base+101; the j-th replica (0-based, in start order) has gRPC base+110+10*j and Raft
    base+111+10*j. Replica names are c{cluster}n{1..3}; each logs to RUN_DIR/ravel-NAME.log.

    clusters are started by start(), in the order of deploy/local-cluster.sh (the first replica
    of every cluster, with -l, then the second ones, ...; the admin places each new replica in
    the smallest cluster). plan_cluster() reserves the addresses of one more cluster (so that
    ports() covers it before anything starts), start_cluster() starts it, kill_cluster()
    removes it with ravel_node kill (the last replica drains its partitions first)."""

    name = "ravel"

    def __init__(self, bin_dir, run_dir, data_root, processes, host, base_port, clusters,
                 node_args=(), admin_args=()):
        self.bin_dir, self.run_dir, self.processes = bin_dir, run_dir, processes
        self.host, self.base = host, base_port
        self.node_args, self.admin_args = list(node_args), list(admin_args)
        self.dir = tempfile.mkdtemp(prefix="ravel-", dir=data_root)
        self.http_addr, self.grpc_addr = f"{host}:{base_port + 100}", f"{host}:{base_port + 101}"
        self.initial_clusters = clusters
        self.replicas = []
        for c, i in [(c, i) for i in (1, 2, 3) for c in range(1, clusters + 1)]:
            self._add_spec(c, i)
        self.procs = {}
        self.running_clusters = set()

    def _add_spec(self, c, i):
        j, host, base = len(self.replicas), self.host, self.base
        spec = {"name": f"c{c}n{i}", "cluster": c, "leader_flag": i == 1,
                "grpc": f"{host}:{base + 110 + 10 * j}", "raft": f"{host}:{base + 111 + 10 * j}",
                "data": os.path.join(self.dir, f"c{c}n{i}")}
        self.replicas.append(spec)
        return spec

    def plan_cluster(self):
        """Reserves the addresses of one more cluster; returns its number."""
        c = max(r["cluster"] for r in self.replicas) + 1
        for i in (1, 2, 3):
            self._add_spec(c, i)
        return c

    def ports(self):
        addrs = [self.http_addr, self.grpc_addr] + [r[k] for r in self.replicas for k in ("grpc", "raft")]
        return [int(a.rsplit(":", 1)[1]) for a in addrs]

    def url(self):
        return f"http://{self.http_addr}"

    def start(self):
        argv = [os.path.join(self.bin_dir, "ravel_admin"), "start", "--http", self.http_addr,
                "--grpc", self.grpc_addr, "--backupPath", os.path.join(self.dir, "admin")]
        argv += self.admin_args
        self.procs["admin"] = self.processes.start("ravel admin", argv, os.path.join(self.run_dir, "ravel-admin.log"))
        wait_until("the admin's /livez", lambda: http("GET", self.url() + "/livez")[0] == 200,
                   60, self.procs.values(), self.processes)
        initial = [r for r in self.replicas if r["cluster"] <= self.initial_clusters]
        self._start_replicas(initial, 0)
        self.running_clusters.update(range(1, self.initial_clusters + 1))
        wait_until("/readyz 200 and a leader in every cluster", self.ready, 120,
                   self.procs.values(), self.processes)
        log(f"Ravel-rs up: {self.url()} ({self.initial_clusters} x 3 replicas)")

    def _start_replicas(self, specs, registered):
        for n, r in enumerate(specs, start=registered + 1):
            argv = [os.path.join(self.bin_dir, "ravel_node"), "start", "-s", r["data"], "-g", r["grpc"],
                    "-r", r["raft"], "-a", self.grpc_addr] + (["-l"] if r["leader_flag"] else [])
            argv += self.node_args
            r["started_at"] = time.time()
            self.procs[r["name"]] = self.processes.start(
                f"ravel {r['name']}", argv, os.path.join(self.run_dir, f"ravel-{r['name']}.log"))
            wait_until(f"{n} registered replicas", lambda n=n: self.replica_count() >= n,
                       60, self.procs.values(), self.processes)

    def start_cluster(self, c):
        """Starts the 3 replicas of planned cluster c (the first with -l), each once the one
        before registered. Returns once all three are registered."""
        self._start_replicas([r for r in self.replicas if r["cluster"] == c], self.replica_count())
        self.running_clusters.add(c)

    def members(self, c):
        return [r for r in self.replicas if r["cluster"] == c]

    def kill_replica(self, spec, timeout):
        """ravel_node kill -s DIR of one replica: it leaves its cluster (the last replica of a
        cluster drains it first) and the kill stops it and deletes its directory. Waits for the
        kill command and for the replica process to exit."""
        name = spec["name"]
        argv = [os.path.join(self.bin_dir, "ravel_node"), "kill", "-s", spec["data"]]
        out = os.path.join(self.run_dir, f"ravel-kill-{name}.log")
        kill = self.processes.start(f"ravel_node kill {name}", argv, out)
        replica = self.procs[name]
        others = [p for k, p in self.procs.items() if k != name]
        deadline = time.time() + timeout
        try:
            while kill.poll() is None:
                if time.time() > deadline:
                    raise BenchError(f"ravel_node kill of {name} did not finish within {timeout:.0f}s; see {out}")
                self.processes.check_alive(others)
                time.sleep(0.2)
        finally:
            if kill.poll() is None:
                self.processes.stop(kill, grace=2)
            else:
                self.processes.forget(kill)
        if kill.returncode != 0:
            raise BenchError(f"ravel_node kill of {name} exited with status {kill.returncode}; see {out}")
        try:
            replica.wait(15)
        except subprocess.TimeoutExpired as e:
            raise BenchError(f"replica {name} still runs 15 s after ravel_node kill returned") from e
        self.processes.forget(replica)
        del self.procs[name]

    def cluster(self):
        status, body = http("GET", self.url() + "/v1/cluster")
        return body if status == 200 and isinstance(body, dict) else None

    def replica_count(self):
        view = self.cluster()
        return sum(len(c["replicas"]) for c in view["clusters"]) if view else 0

    def ready(self):
        if http("GET", self.url() + "/readyz")[0] != 200:
            return False
        view = self.cluster()
        if not view or len(view["clusters"]) != len(self.running_clusters):
            return False
        return all(c.get("leader") is not None and len(c["replicas"]) == 3 and
                   all(r.get("healthy") for r in c["replicas"]) for c in view["clusters"])

    def key_count(self):
        view = self.cluster()
        if not view or any(c.get("keys") is None for c in view["clusters"]):
            return None
        return sum(c["keys"] for c in view["clusters"])

    def groups(self):
        """{process label: pid} and {group: [labels]} for CPU accounting."""
        view = self.cluster()
        if not view:
            raise BenchError("GET /v1/cluster failed")
        by_grpc = {r["grpc"]: r["name"] for r in self.replicas}
        leaders = set()
        for c in view["clusters"]:
            for r in c["replicas"]:
                if r["id"] == c.get("leader"):
                    leaders.add(f"ravel {by_grpc.get(r['grpc_addr'], r['grpc_addr'])}")
        pids = {p.bench_name: p.pid for p in self.procs.values()}
        expected = len(self.running_clusters)
        if len(leaders) != expected:
            raise BenchError(f"expected {expected} leaders in /v1/cluster, found {sorted(leaders)}")
        return pids, {"admin": ["ravel admin"], "leader": sorted(leaders),
                      "followers": [k for k in pids if k != "ravel admin" and k not in leaders]}

    def data_dirs(self):
        return [self.dir]


# ------------------------------------------------------------------------------ wrk

def wrk_run(wrk, url, env_vars, threads, conns, seconds, timeout, out_path, processes, watch,
            note="", stop_when=None):
    """One wrk run of kv.lua (configured by env_vars, e.g. BENCH_OP) against url; returns
    kv.lua's BENCH_RESULT dict. watch are server processes that must stay alive. stop_when()
    is polled every 2 s and ends the run early (SIGINT, wrk then reports) once it returns
    True."""
    env = dict(os.environ, **env_vars)
    argv = [wrk, f"-t{threads}", f"-c{conns}", f"-d{seconds}s", "--timeout", f"{timeout}s",
            "--latency", "-s", LUA, url]
    with open(out_path, "w") as f:
        f.write("# " + " ".join(argv) + f"  ({note})\n")
    proc = processes.start("wrk", argv, out_path, env=env)
    deadline = time.time() + seconds + timeout + 30
    try:
        while proc.poll() is None:
            if time.time() > deadline:
                raise BenchError(f"wrk did not finish; see {out_path}")
            processes.check_alive(watch)
            if stop_when is not None and stop_when():
                os.kill(proc.pid, signal.SIGINT)
                stop_when = None
            time.sleep(2.0 if stop_when else 0.2)
    finally:
        if proc.poll() is None:
            processes.stop(proc, grace=2)
        else:
            processes.forget(proc)
    with open(out_path) as f:
        text = f.read()
    m = re.search(r"^BENCH_RESULT (\{.*\})$", text, re.M)
    if not m:
        raise BenchError(f"wrk printed no BENCH_RESULT (exit {proc.returncode}); see {out_path}")
    return json.loads(m.group(1))


def preload(wrk, url, label, system_name, keys, value_size, key_count, out_path, processes, watch,
            timeout, load_timeout, shown_value_size=None):
    """Writes every key of key00000000.. once, in order, with 64 connections (kv.lua's load),
    until key_count() reports all of them; returns figures of the load."""
    log(f"{label}: pre-loading {keys} keys of {shown_value_size or value_size} B")
    start = time.time()
    env = {"BENCH_SYSTEM": system_name, "BENCH_OP": "load", "BENCH_KEYS": str(keys),
           "BENCH_VALUE_SIZE": str(value_size), "BENCH_THREADS": "2"}
    res = wrk_run(wrk, url, env, 2, 64, load_timeout, timeout, out_path, processes, watch,
                  note=f"BENCH_SYSTEM={system_name} BENCH_OP=load",
                  stop_when=lambda: (key_count() or 0) >= keys)
    elapsed = time.time() - start
    count = key_count()
    if count != keys:
        raise BenchError(f"{label} holds {count} keys after loading, expected {keys}")
    log(f"{label}: {count} keys loaded in {elapsed:.0f}s "
        f"({res['requests'] / max(elapsed, 1e-9):.0f} puts/s)")
    return {"seconds": elapsed, "requests": res["requests"], "errors": res["errors"], "key_count": count}

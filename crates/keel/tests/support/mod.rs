//! Test harness: real `keel` and real `etcd` processes on free ports with their own data
//! directories, and `etcdctl` run against either with a bounded wait.
//!
//! Guards against: tests that share ports or directories when run in parallel, tests that hang
//! forever on a server that never came up, and tests that pass vacuously because etcd or etcdctl
//! is not installed (they fail instead, saying how to install them).

#![allow(dead_code)] // Each test binary uses its own part of the harness.

pub mod compare;

use std::fs::File;
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

pub const ETCD: &str = "/usr/bin/etcd";

/// The runtime tests drive async clients with (two workers, like the machines CI runs on).
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Asserts that `members` of `cluster` hold the same data (HashKV, and the revision it covers).
pub fn assert_same_hash_kv(cluster: &Cluster, members: impl IntoIterator<Item = usize>) {
    let hashes: Vec<(u64, i64)> = members
        .into_iter()
        .map(|index| hash_kv(&cluster.endpoint(index)))
        .collect();
    assert!(
        hashes.iter().all(|hash| *hash == hashes[0]),
        "members disagree (HashKV, revision): {hashes:?}"
    );
}

/// `etcdctl endpoint hashkv` of one endpoint: the hash, and the revision it covers.
pub fn hash_kv(endpoint: &str) -> (u64, i64) {
    let output = etcdctl(endpoint, &["endpoint", "hashkv", "-w", "json"]);
    assert_eq!(output.status, Some(0), "{output:?}");
    let parsed: serde_json::Value = serde_json::from_str(output.stdout.trim()).unwrap();
    let entry = &parsed[0]["HashKV"];
    (
        entry["hash"].as_u64().unwrap(),
        entry["header"]["revision"].as_i64().unwrap(),
    )
}
pub const ETCDCTL: &str = "/usr/bin/etcdctl";

/// How long a server may take to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// Hard limit on one etcdctl run, beyond its own `--command-timeout`.
const ETCDCTL_TIMEOUT: Duration = Duration::from_secs(30);

/// Ports are handed out below 32768 (the range above is ephemeral here), from a base derived
/// from the process id so that test binaries running at the same time start far apart.
const PORT_BASE: u16 = 20_000;
const PORT_SPAN: u16 = 8_000;

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let base = PORT_BASE + (std::process::id() % 400) as u16 * 20;
    for _ in 0..PORT_SPAN {
        let offset = NEXT.fetch_add(1, Ordering::Relaxed) % PORT_SPAN;
        let port = PORT_BASE + (base - PORT_BASE + offset) % PORT_SPAN;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {PORT_BASE}..{}", PORT_BASE + PORT_SPAN);
}

/// The whole answer to one HTTP/1.1 `GET` on loopback, or `None` if there was none within a
/// second.
fn http_get(port: u16, path: &str) -> Option<String> {
    use std::io::Read;
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
    stream
        .set_write_timeout(Some(Duration::from_secs(1)))
        .ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).ok()?;
    Some(answer)
}

/// Fails the test (never skips it) when a third-party tool the test compares against is missing.
pub fn require(tool: &str) {
    assert!(
        Path::new(tool).exists(),
        "{tool} is missing: run `apt-get install -y etcd-server etcd-client` (etcd 3.4) to run \
         the compatibility tests"
    );
}

/// A running server process; killed on drop.
struct Process {
    child: Option<Child>,
    log: PathBuf,
    what: &'static str,
}

impl Process {
    fn spawn(what: &'static str, command: Command, log: PathBuf) -> Process {
        let file = File::create(&log).expect("create the server log");
        Process::spawn_logging_to(what, command, log, file)
    }

    fn spawn_logging_to(
        what: &'static str,
        mut command: Command,
        log: PathBuf,
        file: File,
    ) -> Process {
        let child = command
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("clone the log handle"))
            .stderr(file)
            .spawn()
            .unwrap_or_else(|error| panic!("cannot start {what}: {error}"));
        Process {
            child: Some(child),
            log,
            what,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Like `spawn`, but appends to the log instead of truncating it.
    fn spawn_appending(what: &'static str, command: Command, log: PathBuf) -> Process {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("open the server log");
        Process::spawn_logging_to(what, command, log, file)
    }

    /// Waits until `port` accepts connections; panics with the server's log otherwise.
    fn wait_ready(&mut self, port: u16) {
        self.wait_until(&format!("accept connections on port {port}"), || {
            TcpStream::connect(("127.0.0.1", port)).is_ok_and(|stream| {
                // A connect to a port nobody listens on succeeds when the kernel happens to pick
                // that same port as the source (TCP simultaneous open), which can happen on a
                // machine whose ephemeral range covers the test ports.
                stream.local_addr().ok() != stream.peer_addr().ok()
            })
        });
    }

    /// Waits until `GET /health` on `port` answers 200 (etcd's readiness); panics with the
    /// server's log otherwise.
    fn wait_healthy(&mut self, port: u16) {
        self.wait_until(&format!("answer /health on port {port}"), || {
            http_get(port, "/health").is_some_and(|answer| answer.starts_with("HTTP/1.1 200"))
        });
    }

    /// Polls `ready` until it holds; panics with the server's log if the server exits first or
    /// [`START_TIMEOUT`] passes (`what` says what it did not do).
    fn wait_until(&mut self, what: &str, mut ready: impl FnMut() -> bool) {
        let deadline = Instant::now() + START_TIMEOUT;
        while !ready() {
            let child = self.child.as_mut().expect("a running process");
            if let Some(status) = child.try_wait().expect("poll the server") {
                panic!(
                    "{} exited with {status} before serving:\n{}",
                    self.what,
                    self.log()
                );
            }
            if Instant::now() > deadline {
                panic!(
                    "{} did not {what} within {START_TIMEOUT:?}:\n{}",
                    self.what,
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Resident memory of the running process, from /proc, in KiB.
    fn rss_kib(&self) -> u64 {
        let pid = self.child.as_ref().expect("a running process").id();
        let status =
            std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc status");
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|kib| kib.parse().ok())
            .expect("VmRSS in /proc status")
    }

    /// SIGKILL, then reap.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A `keel` member on its own data directory and ports.
pub struct Keel {
    process: Process,
    dir: tempfile::TempDir,
    client_port: u16,
    peer_port: u16,
    extra: Vec<String>,
    /// Environment variables set for the process (on top of this process's).
    environment: Vec<(String, String)>,
}

impl Keel {
    pub fn start() -> Keel {
        Keel::start_with(&[])
    }

    /// Starts with extra flags (e.g. `--max-txn-ops 4`).
    pub fn start_with(extra: &[&str]) -> Keel {
        Keel::start_with_environment(extra, &[])
    }

    /// Starts with extra flags and environment variables (e.g. `OTEL_*`).
    pub fn start_with_environment(extra: &[&str], environment: &[(&str, &str)]) -> Keel {
        let dir = tempfile::tempdir().expect("create a temporary directory");
        let client_port = free_port();
        let peer_port = free_port();
        let extra: Vec<String> = extra.iter().map(|flag| (*flag).to_owned()).collect();
        let environment: Vec<(String, String)> = environment
            .iter()
            .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
            .collect();
        let process = Keel::spawn(dir.path(), client_port, peer_port, &extra, &environment);
        let mut keel = Keel {
            process,
            dir,
            client_port,
            peer_port,
            extra,
            environment,
        };
        keel.process.wait_ready(client_port);
        keel
    }

    fn spawn(
        dir: &Path,
        client_port: u16,
        peer_port: u16,
        extra: &[String],
        environment: &[(String, String)],
    ) -> Process {
        let client = format!("http://127.0.0.1:{client_port}");
        let peer = format!("http://127.0.0.1:{peer_port}");
        let mut command = Command::new(env!("CARGO_BIN_EXE_keel"));
        command
            .args(["--name", "default"])
            .arg("--data-dir")
            .arg(dir.join("data"))
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("default={peer}")])
            .args(extra)
            .envs(environment.iter().map(|(name, value)| (name, value)));
        Process::spawn("keel", command, dir.join("keel.log"))
    }

    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn log(&self) -> String {
        self.process.log()
    }

    /// Resident memory of the server, in KiB.
    pub fn rss_kib(&self) -> u64 {
        self.process.rss_kib()
    }

    /// `kill -9`: no chance to flush or clean up.
    pub fn kill_9(&mut self) {
        self.process.kill();
    }

    /// Starts again on the same data directory, ports and flags (after [`Keel::kill_9`]).
    pub fn restart(&mut self) {
        self.process.kill();
        self.process = Keel::spawn(
            self.dir.path(),
            self.client_port,
            self.peer_port,
            &self.extra,
            &self.environment,
        );
        self.process.wait_ready(self.client_port);
    }
}

/// An etcd member (the reference implementation) on its own data directory and ports.
pub struct Etcd {
    process: Process,
    _dir: tempfile::TempDir,
    client_port: u16,
}

impl Etcd {
    pub fn start() -> Etcd {
        Etcd::start_with(&[])
    }

    pub fn start_with(extra: &[&str]) -> Etcd {
        require(ETCD);
        let dir = tempfile::tempdir().expect("create a temporary directory");
        let client_port = free_port();
        let peer_port = free_port();
        let client = format!("http://127.0.0.1:{client_port}");
        let peer = format!("http://127.0.0.1:{peer_port}");
        let mut command = Command::new(ETCD);
        command
            .args(["--name", "default"])
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("default={peer}")])
            .args(extra);
        let mut process = Process::spawn("etcd", command, dir.path().join("etcd.log"));
        process.wait_ready(client_port);
        // etcd opens its client port before its server has started, and can still fail after
        // that (e.g. when it cannot allocate its WAL); `/health` answers only once it serves.
        process.wait_healthy(client_port);
        Etcd {
            process,
            _dir: dir,
            client_port,
        }
    }

    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    pub fn log(&self) -> String {
        self.process.log()
    }
}

/// What one etcdctl run printed, and how it ended (`None`: killed by a signal).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    pub status: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `etcdctl` against `endpoint` with an empty stdin.
pub fn etcdctl(endpoint: &str, args: &[&str]) -> Output {
    etcdctl_with_stdin(endpoint, args, b"")
}

/// Runs `etcdctl` against `endpoint` feeding it `stdin` (the `txn` format, or a value for `put`).
pub fn etcdctl_with_stdin(endpoint: &str, args: &[&str], stdin: &[u8]) -> Output {
    require(ETCDCTL);
    let dir = tempfile::tempdir().expect("create a temporary directory");
    let paths = ["stdin", "stdout", "stderr"].map(|name| dir.path().join(name));
    File::create(&paths[0])
        .and_then(|mut file| file.write_all(stdin))
        .expect("write etcdctl's stdin");
    // Files rather than pipes: no reader threads, and no deadlock on a large output.
    let mut child = Command::new(ETCDCTL)
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoint}"))
        .args(["--dial-timeout=3s", "--command-timeout=10s"])
        .args(args)
        .stdin(File::open(&paths[0]).expect("open etcdctl's stdin"))
        .stdout(File::create(&paths[1]).expect("create etcdctl's stdout"))
        .stderr(File::create(&paths[2]).expect("create etcdctl's stderr"))
        .spawn()
        .expect("start etcdctl");
    let deadline = Instant::now() + ETCDCTL_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("poll etcdctl") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("etcdctl {args:?} against {endpoint} did not finish in {ETCDCTL_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let read = |path: &Path| {
        String::from_utf8_lossy(&std::fs::read(path).expect("read etcdctl's output")).into_owned()
    };
    Output {
        status: status.code(),
        stdout: read(&paths[1]),
        stderr: read(&paths[2]),
    }
}

/// A cluster of `keel` members on loopback, each with its own data dir and ports.
pub struct Cluster {
    dir: tempfile::TempDir,
    members: Vec<ClusterMember>,
    initial_cluster: String,
    extra: Vec<String>,
}

struct ClusterMember {
    name: String,
    client_port: u16,
    peer_port: u16,
    process: Option<Process>,
    /// For a member that joined a running cluster: its `--initial-cluster`.
    joined_with: Option<String>,
    /// Environment variables set for the member's next starts.
    env: Vec<(String, String)>,
}

impl Cluster {
    /// Starts `size` members with extra flags (e.g. shorter election timeouts).
    pub fn start(size: usize, extra: &[&str]) -> Cluster {
        let dir = tempfile::tempdir().expect("create a temporary directory");
        let members: Vec<ClusterMember> = (0..size)
            .map(|index| ClusterMember {
                name: format!("m{index}"),
                client_port: free_port(),
                peer_port: free_port(),
                process: None,
                joined_with: None,
                env: Vec::new(),
            })
            .collect();
        let initial_cluster = members
            .iter()
            .map(|member| format!("{}=http://127.0.0.1:{}", member.name, member.peer_port))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = Cluster {
            dir,
            members,
            initial_cluster,
            extra: extra.iter().map(|flag| (*flag).to_owned()).collect(),
        };
        for index in 0..size {
            cluster.spawn(index);
        }
        for index in 0..size {
            let port = cluster.members[index].client_port;
            cluster.members[index]
                .process
                .as_mut()
                .unwrap()
                .wait_ready(port);
        }
        cluster
    }

    fn spawn(&mut self, index: usize) {
        let member = &self.members[index];
        let client = format!("http://127.0.0.1:{}", member.client_port);
        let peer = format!("http://127.0.0.1:{}", member.peer_port);
        let data = self.dir.path().join(&member.name);
        let mut command = Command::new(env!("CARGO_BIN_EXE_keel"));
        command
            .args(["--name", &member.name])
            .arg("--data-dir")
            .arg(&data)
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster-token", "keel-test"])
            .args(&self.extra)
            .envs(member.env.iter().map(|(key, value)| (key, value)));
        match &member.joined_with {
            Some(initial_cluster) => command
                .args(["--initial-cluster", initial_cluster])
                .args(["--initial-cluster-state", "existing"]),
            None => command.args(["--initial-cluster", &self.initial_cluster]),
        };
        let log = self.dir.path().join(format!("{}.log", member.name));
        // Append across restarts, so a failing test shows every run of the member.
        let process = Process::spawn_appending("keel", command, log);
        self.members[index].process = Some(process);
    }

    pub fn size(&self) -> usize {
        self.members.len()
    }

    /// Ports for one more member (`m<size>`), not started; returns its index. Add it to the
    /// cluster (`etcdctl member add`) with [`Cluster::peer_url`], then [`Cluster::join`].
    pub fn reserve_member(&mut self) -> usize {
        let index = self.members.len();
        self.members.push(ClusterMember {
            name: format!("m{index}"),
            client_port: free_port(),
            peer_port: free_port(),
            process: None,
            joined_with: None,
            env: Vec::new(),
        });
        index
    }

    /// Starts member `index` with `--initial-cluster-state existing`, listing the running
    /// members and itself, as etcdctl's `member add` says to.
    pub fn join(&mut self, index: usize) {
        let initial_cluster = (0..self.members.len())
            .filter(|other| *other == index || self.is_running(*other))
            .map(|other| format!("{}={}", self.members[other].name, self.peer_url(other)))
            .collect::<Vec<_>>()
            .join(",");
        self.members[index].joined_with = Some(initial_cluster);
        self.spawn(index);
        let port = self.members[index].client_port;
        self.members[index]
            .process
            .as_mut()
            .unwrap()
            .wait_ready(port);
    }

    /// Waits until member `index` exits on its own; returns its exit code.
    pub fn wait_exit(&mut self, index: usize, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        loop {
            let process = self.members[index].process.as_mut().expect("running");
            let child = process.child.as_mut().expect("running");
            if let Some(status) = child.try_wait().expect("poll the member") {
                process.child = None;
                self.members[index].process = None;
                return status.code();
            }
            assert!(
                Instant::now() < deadline,
                "member {index} still runs after {timeout:?}:\n{}",
                self.log(index)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn endpoint(&self, index: usize) -> String {
        format!("127.0.0.1:{}", self.members[index].client_port)
    }

    pub fn peer_url(&self, index: usize) -> String {
        format!("http://127.0.0.1:{}", self.members[index].peer_port)
    }

    pub fn endpoints(&self) -> String {
        (0..self.size())
            .map(|index| self.endpoint(index))
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn is_running(&self, index: usize) -> bool {
        self.members[index].process.is_some()
    }

    pub fn log(&self, index: usize) -> String {
        let path = self
            .dir
            .path()
            .join(format!("{}.log", self.members[index].name));
        std::fs::read_to_string(path).unwrap_or_default()
    }

    pub fn data_dir(&self, index: usize) -> PathBuf {
        self.dir.path().join(&self.members[index].name)
    }

    /// `kill -9` one member.
    pub fn kill_9(&mut self, index: usize) {
        if let Some(mut process) = self.members[index].process.take() {
            process.kill();
        }
    }

    /// Starts a killed member again on its data dir.
    pub fn restart(&mut self, index: usize) {
        self.kill_9(index);
        self.spawn(index);
        let port = self.members[index].client_port;
        self.members[index]
            .process
            .as_mut()
            .unwrap()
            .wait_ready(port);
    }

    /// Sets (`Some`) or clears (`None`) an environment variable for member `index`'s next
    /// starts.
    pub fn set_env(&mut self, index: usize, key: &str, value: Option<&str>) {
        let env = &mut self.members[index].env;
        env.retain(|(existing, _)| existing != key);
        if let Some(value) = value {
            env.push((key.to_owned(), value.to_owned()));
        }
    }

    /// Starts a stopped member without waiting for it to serve (it may be expected to refuse
    /// to start; see [`Cluster::wait_exit`]).
    pub fn spawn_member(&mut self, index: usize) {
        assert!(!self.is_running(index), "member {index} is running");
        self.spawn(index);
    }

    /// The pid of a running member (for SIGSTOP / SIGCONT).
    pub fn pid(&self, index: usize) -> u32 {
        self.members[index]
            .process
            .as_ref()
            .expect("running")
            .child
            .as_ref()
            .expect("running")
            .id()
    }
}

/// A long-running etcdctl (watch, keep-alive) writing to a file; killed on drop.
pub struct Background {
    child: Child,
    output: tempfile::NamedTempFile,
}

impl Background {
    pub fn start(endpoint: &str, args: &[&str], stdin: Option<&[u8]>) -> Background {
        require(ETCDCTL);
        let output = tempfile::NamedTempFile::new().unwrap();
        let mut command = Command::new(ETCDCTL);
        command
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={endpoint}"))
            .args(args)
            .stdout(output.reopen().unwrap())
            .stderr(Stdio::null());
        command.stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        });
        let mut child = command.spawn().unwrap();
        if let Some(bytes) = stdin {
            use std::io::Write;
            child.stdin.as_mut().unwrap().write_all(bytes).unwrap();
        }
        Background { child, output }
    }

    pub fn text(&self) -> String {
        std::fs::read_to_string(self.output.path()).unwrap_or_default()
    }

    /// Waits until the output holds `count` matches of `needle`.
    pub fn wait_for(&self, needle: &str, count: usize) -> String {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let text = self.text();
            if text.matches(needle).count() >= count {
                return text;
            }
            assert!(
                Instant::now() < deadline,
                "waited for {count} x {needle:?}, got:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn kill_9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        self.kill_9();
    }
}

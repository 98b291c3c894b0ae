//! Local clusters for the comparison: etcd or Keel members on loopback, each with its own data
//! directory and ports, started with the same flags; and what /proc says about their processes.
//!
//! Ports come from 30000..32000, clear of the integration tests (20000..28000) and of the
//! ephemeral range above 32768.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use keel_api::etcdserverpb::kv_client::KvClient;
use keel_api::etcdserverpb::maintenance_client::MaintenanceClient;
use keel_api::etcdserverpb::{RangeRequest, StatusRequest};

use crate::workload::connect_one;
use crate::Error;

/// Which server a cluster runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    Etcd,
    Keel,
}

impl Flavor {
    pub fn name(self) -> &'static str {
        match self {
            Flavor::Etcd => "etcd",
            Flavor::Keel => "keel",
        }
    }
}

const PORT_FIRST: u16 = 30_000;
const PORT_END: u16 = 32_000;

/// Hands out ports nobody listens on, from 30000..32000.
#[derive(Debug)]
pub struct Ports {
    next: u16,
}

impl Default for Ports {
    fn default() -> Self {
        Ports::new()
    }
}

impl Ports {
    pub fn new() -> Ports {
        // Start from a place derived from the process id, so two comparisons rarely collide.
        let offset = (std::process::id() % 50) as u16 * 40;
        Ports {
            next: PORT_FIRST + offset,
        }
    }

    pub fn take(&mut self) -> Result<u16, Error> {
        for _ in PORT_FIRST..PORT_END {
            let port = self.next;
            self.next = if self.next + 1 >= PORT_END {
                PORT_FIRST
            } else {
                self.next + 1
            };
            if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
                return Ok(port);
            }
        }
        Err(Error::Cluster(format!(
            "no free port in {PORT_FIRST}..{PORT_END}"
        )))
    }
}

struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    child: Option<Child>,
}

/// A running cluster; its members are killed and its directory removed on drop.
pub struct LocalCluster {
    flavor: Flavor,
    binary: PathBuf,
    dir: tempfile::TempDir,
    members: Vec<Member>,
    initial_cluster: String,
}

/// How long a cluster may take to elect a leader and answer a linearizable read.
const SERVING_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a member may take to exit after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

impl LocalCluster {
    /// Starts `size` members of `flavor` from `binary` and waits until they serve.
    pub async fn start(
        flavor: Flavor,
        binary: &Path,
        size: usize,
        ports: &mut Ports,
    ) -> Result<LocalCluster, Error> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("keel-bench-{}-", flavor.name()))
            .tempdir()
            .map_err(|error| Error::Cluster(format!("temporary directory: {error}")))?;
        let mut members = Vec::with_capacity(size);
        for index in 0..size {
            members.push(Member {
                name: format!("m{index}"),
                client_port: ports.take()?,
                peer_port: ports.take()?,
                child: None,
            });
        }
        let initial_cluster = members
            .iter()
            .map(|member| format!("{}=http://127.0.0.1:{}", member.name, member.peer_port))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = LocalCluster {
            flavor,
            binary: binary.to_owned(),
            dir,
            members,
            initial_cluster,
        };
        cluster.spawn_all()?;
        cluster.wait_serving(SERVING_TIMEOUT, 0).await?;
        Ok(cluster)
    }

    pub fn flavor(&self) -> Flavor {
        self.flavor
    }

    /// Starts every member that is not running (first start, or after `stop`).
    pub fn spawn_all(&mut self) -> Result<(), Error> {
        for index in 0..self.members.len() {
            if self.members[index].child.is_none() {
                let child = self.spawn(index)?;
                self.members[index].child = Some(child);
            }
        }
        Ok(())
    }

    fn spawn(&self, index: usize) -> Result<Child, Error> {
        let member = &self.members[index];
        let client = format!("http://127.0.0.1:{}", member.client_port);
        let peer = format!("http://127.0.0.1:{}", member.peer_port);
        let suffix = match self.flavor {
            Flavor::Etcd => "etcd",
            Flavor::Keel => "keel",
        };
        let data = self.dir.path().join(format!("{}.{suffix}", member.name));
        let log_path = self.dir.path().join(format!("{}.log", member.name));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|error| Error::Cluster(format!("{}: {error}", log_path.display())))?;
        let log_err = log
            .try_clone()
            .map_err(|error| Error::Cluster(format!("{}: {error}", log_path.display())))?;
        let mut command = Command::new(&self.binary);
        // The same flags for both: etcd's defaults, spelled out.
        command
            .args(["--name", &member.name])
            .arg("--data-dir")
            .arg(&data)
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &self.initial_cluster])
            .args(["--initial-cluster-token", "keel-bench"])
            .args(["--initial-cluster-state", "new"])
            .args(["--heartbeat-interval", "100"])
            .args(["--election-timeout", "1000"])
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err);
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("ETCD_") {
                command.env_remove(name);
            }
        }
        command.spawn().map_err(|error| {
            Error::Cluster(format!(
                "cannot start {} ({}): {error}",
                self.flavor.name(),
                self.binary.display()
            ))
        })
    }

    /// Client endpoints, `127.0.0.1:port`, in member order.
    pub fn endpoints(&self) -> Vec<String> {
        self.members
            .iter()
            .map(|member| format!("127.0.0.1:{}", member.client_port))
            .collect()
    }

    /// The endpoints with the current leader's first.
    pub async fn endpoints_leader_first(&self) -> Result<Vec<String>, Error> {
        let mut endpoints = self.endpoints();
        for (index, endpoint) in endpoints.iter().enumerate() {
            let channel = connect_one(endpoint).await?;
            let status = MaintenanceClient::new(channel)
                .status(StatusRequest {})
                .await
                .map_err(|status| Error::Cluster(format!("status of {endpoint}: {status}")))?
                .into_inner();
            let member_id = status.header.map_or(0, |header| header.member_id);
            if member_id != 0 && member_id == status.leader {
                endpoints.swap(0, index);
                return Ok(endpoints);
            }
        }
        Err(Error::Cluster(format!(
            "{}: no member says it leads",
            self.flavor.name()
        )))
    }

    /// Waits until some member answers a linearizable count of all keys with at least
    /// `keys_min` keys; returns how long that took.
    pub async fn wait_serving(&self, timeout: Duration, keys_min: i64) -> Result<Duration, Error> {
        let start = Instant::now();
        let deadline = start + timeout;
        let attempt_timeout = Duration::from_millis(1000);
        loop {
            for endpoint in self.endpoints() {
                let attempt = async {
                    let channel = connect_one(&endpoint).await.ok()?;
                    let response = KvClient::new(channel)
                        .range(RangeRequest {
                            key: vec![0],
                            range_end: vec![0],
                            count_only: true,
                            ..RangeRequest::default()
                        })
                        .await
                        .ok()?;
                    Some(response.into_inner().count)
                };
                if let Ok(Some(count)) = tokio::time::timeout(attempt_timeout, attempt).await {
                    if count >= keys_min {
                        return Ok(start.elapsed());
                    }
                }
            }
            if Instant::now() > deadline {
                return Err(Error::Cluster(format!(
                    "{} did not serve {keys_min} keys within {timeout:?}; logs in {}",
                    self.flavor.name(),
                    self.dir.path().display()
                )));
            }
            self.check_running()?;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn check_running(&self) -> Result<(), Error> {
        for member in &self.members {
            if let Some(child) = &member.child {
                let alive = Path::new(&format!("/proc/{}/stat", child.id())).exists()
                    && !is_zombie(child.id());
                if !alive {
                    let log = std::fs::read_to_string(
                        self.dir.path().join(format!("{}.log", member.name)),
                    )
                    .unwrap_or_default();
                    let tail: String = log
                        .lines()
                        .rev()
                        .take(30)
                        .collect::<Vec<_>>()
                        .into_iter()
                        .rev()
                        .collect::<Vec<_>>()
                        .join("\n");
                    return Err(Error::Cluster(format!(
                        "{} member {} exited:\n{tail}",
                        self.flavor.name(),
                        member.name
                    )));
                }
            }
        }
        Ok(())
    }

    /// Stops every member with SIGTERM (SIGKILL after `STOP_TIMEOUT`) and reaps it.
    pub fn stop(&mut self) {
        for member in &self.members {
            if let Some(child) = &member.child {
                let _ = Command::new("kill")
                    .args(["-TERM", &child.id().to_string()])
                    .status();
            }
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        for member in &mut self.members {
            if let Some(mut child) = member.child.take() {
                loop {
                    if let Ok(Some(_)) = child.try_wait() {
                        break;
                    }
                    if Instant::now() > deadline {
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        }
    }

    fn pids(&self) -> Vec<u32> {
        self.members
            .iter()
            .filter_map(|member| member.child.as_ref().map(Child::id))
            .collect()
    }

    /// Resident memory summed over the running members, in KiB.
    pub fn rss_kib(&self) -> Result<u64, Error> {
        self.check_running()?;
        self.pids().into_iter().map(rss_kib).sum()
    }

    /// User plus system CPU time summed over the running members, in seconds.
    pub fn cpu_seconds(&self) -> Result<f64, Error> {
        self.check_running()?;
        self.pids().into_iter().map(cpu_seconds).sum()
    }

    /// Bytes in the members' data directories.
    pub fn disk_bytes(&self) -> u64 {
        directory_bytes(self.dir.path())
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        for member in &mut self.members {
            if let Some(mut child) = member.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// Latency of `fdatasync` after a 4 KiB append in a file under `dir` (the floor under every
/// durable write), over `samples` appends.
pub fn fsync_latency(dir: &Path, samples: usize) -> Result<crate::LatencySummary, Error> {
    use std::io::Write as _;
    let io = |error: std::io::Error| {
        Error::Cluster(format!("fsync probe in {}: {error}", dir.display()))
    };
    let mut file = tempfile::tempfile_in(dir).map_err(io)?;
    let block = [0u8; 4096];
    let mut latencies = crate::Latencies::new();
    for _ in 0..samples {
        let start = Instant::now();
        file.write_all(&block).map_err(io)?;
        file.sync_data().map_err(io)?;
        latencies.record(start.elapsed());
    }
    Ok(latencies.summary())
}

fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            stat.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(true)
}

/// `VmRSS` of a process, in KiB.
pub fn rss_kib(pid: u32) -> Result<u64, Error> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path)
        .map_err(|error| Error::Cluster(format!("{path}: {error}")))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
        .ok_or_else(|| Error::Cluster(format!("{path}: no VmRSS")))
}

/// `utime + stime` of a process, in seconds.
pub fn cpu_seconds(pid: u32) -> Result<f64, Error> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path)
        .map_err(|error| Error::Cluster(format!("{path}: {error}")))?;
    let ticks = parse_cpu_ticks(&stat).ok_or_else(|| Error::Cluster(format!("{path}: format")))?;
    Ok(ticks as f64 / clock_ticks_per_second())
}

/// utime + stime from a /proc/PID/stat line: fields 14 and 15, counted after the command name
/// (which may hold spaces, so the count starts after its closing parenthesis).
fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let (_, rest) = stat.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state), so field N is at index N - 3.
    let utime: u64 = fields.get(14 - 3)?.parse().ok()?;
    let stime: u64 = fields.get(15 - 3)?.parse().ok()?;
    Some(utime + stime)
}

fn clock_ticks_per_second() -> f64 {
    static TICKS: OnceLock<f64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|output| String::from_utf8(output.stdout).ok())
            .and_then(|text| text.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

fn directory_bytes(path: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(path) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .map(|entry| match entry.file_type() {
            Ok(kind) if kind.is_dir() => directory_bytes(&entry.path()),
            Ok(_) => entry.metadata().map_or(0, |metadata| metadata.len()),
            Err(_) => 0,
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_ticks_from_a_stat_line_with_spaces_in_the_name() {
        let stat = "4242 (etcd (x) y) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 12";
        assert_eq!(parse_cpu_ticks(stat), Some(325));
    }

    #[test]
    fn this_process_has_rss_and_cpu_time() {
        let pid = std::process::id();
        assert!(rss_kib(pid).unwrap() > 0);
        assert!(cpu_seconds(pid).unwrap() >= 0.0);
    }

    #[test]
    fn ports_are_in_the_benchmark_range() {
        let mut ports = Ports::new();
        let port = ports.take().unwrap();
        assert!((PORT_FIRST..PORT_END).contains(&port));
    }
}

//! Durability and refusal to start on bad data, with real `keel` processes and real faults:
//! `kill -9`, torn and corrupted WAL files, foreign data directories.
//!
//! Guards against: an acknowledged write lost in a crash; a crash leaving a member that can't
//! start; corruption served as data; another program's data directory overwritten.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use keel_client::{Client, GetOptions, PutOptions};
use support::{free_port, runtime};

struct Keel {
    child: Option<Child>,
    port: u16,
    log: PathBuf,
}

impl Keel {
    fn start(data_dir: &Path) -> Keel {
        let mut keel = Keel::spawn(data_dir);
        keel.wait_ready();
        keel
    }

    fn spawn(data_dir: &Path) -> Keel {
        let port = free_port();
        let log = data_dir.with_extension(format!("{port}.log"));
        let child = Command::new(env!("CARGO_BIN_EXE_keel"))
            .args(["--data-dir", data_dir.to_str().unwrap()])
            .args(["--listen-client-urls", &format!("http://127.0.0.1:{port}")])
            .args([
                "--advertise-client-urls",
                &format!("http://127.0.0.1:{port}"),
            ])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Keel {
            child: Some(child),
            port,
            log,
        }
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("keel exited with {status}: {}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "keel did not start: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn kill_9(&mut self) {
        let mut child = self.child.take().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// Runs keel on the data dir expecting it to refuse to start; returns its stderr.
    fn refuse(data_dir: &Path) -> String {
        let mut keel = Keel::spawn(data_dir);
        let mut child = keel.child.take().unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                assert!(!status.success(), "keel should have refused to start");
                return keel.log();
            }
            if Instant::now() > deadline {
                child.kill().unwrap();
                panic!("keel started on data it should refuse: {}", keel.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Keel {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn wal_segments(data_dir: &Path) -> Vec<PathBuf> {
    let mut segments: Vec<PathBuf> = std::fs::read_dir(data_dir.join("wal"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|extension| extension == "wal"))
        .collect();
    segments.sort();
    segments
}

/// Where a segment's nonzero bytes end: its preallocated rest is zeros. The last record itself
/// may end in a few zero bytes (the high bytes of a hard state's commit index).
fn records_end(segment: &[u8]) -> usize {
    segment
        .iter()
        .rposition(|&byte| byte != 0)
        .map_or(0, |last| last + 1)
}

async fn put_keys(endpoint: &str, count: usize) {
    let mut client = Client::connect(endpoint).await.unwrap();
    for i in 0..count {
        client
            .put(
                format!("key/{i:05}"),
                format!("value-{i}"),
                PutOptions::new(),
            )
            .await
            .unwrap();
    }
}

async fn count_keys(endpoint: &str) -> i64 {
    let mut client = Client::connect(endpoint).await.unwrap();
    client
        .get("key/", GetOptions::new().with_prefix().with_count_only())
        .await
        .unwrap()
        .count
}

#[test]
fn every_acknowledged_write_survives_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let mut keel = Keel::start(&data_dir);
    let endpoint = keel.endpoint();
    let runtime = runtime();
    // 16 writers for about two seconds; each remembers what was acknowledged.
    let acknowledged: Vec<(String, String)> = runtime.block_on(async {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        let mut writers = Vec::new();
        for writer in 0..16 {
            let endpoint = endpoint.clone();
            writers.push(tokio::spawn(async move {
                let mut client = Client::connect(endpoint).await.unwrap();
                let mut done = Vec::new();
                let mut i = 0;
                while tokio::time::Instant::now() < deadline {
                    let (key, value) = (format!("w{writer}/{i}"), format!("v{i}"));
                    if client
                        .put(key.clone(), value.clone(), PutOptions::new())
                        .await
                        .is_ok()
                    {
                        done.push((key, value));
                    }
                    i += 1;
                }
                done
            }));
        }
        let mut all = Vec::new();
        for writer in writers {
            all.extend(writer.await.unwrap());
        }
        all
    });
    keel.kill_9();
    assert!(
        acknowledged.len() > 100,
        "only {} writes in two seconds",
        acknowledged.len()
    );
    eprintln!("{} writes acknowledged before kill -9", acknowledged.len());

    let keel = Keel::start(&data_dir);
    let endpoint = keel.endpoint();
    runtime.block_on(async {
        let mut client = Client::connect(endpoint).await.unwrap();
        for (key, value) in &acknowledged {
            let found = client.get(key.clone(), GetOptions::new()).await.unwrap();
            assert_eq!(found.kvs.len(), 1, "acknowledged {key} lost");
            assert_eq!(found.kvs[0].value, value.as_bytes());
        }
        let status = client
            .get("w", GetOptions::new().with_prefix().with_count_only())
            .await
            .unwrap();
        // The revision counts every write, acknowledged or not (one may have been in flight).
        assert!(status.header.unwrap().revision > acknowledged.len() as i64);
    });
}

#[test]
fn a_torn_wal_tail_is_cut_and_every_complete_write_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let mut keel = Keel::start(&data_dir);
    let runtime = runtime();
    runtime.block_on(put_keys(&keel.endpoint(), 100));
    keel.kill_9();

    // A crash in the middle of a write: half a record of garbage at the end of the log (the
    // records end where the segment's preallocated zeros begin).
    let last = wal_segments(&data_dir).pop().unwrap();
    let mut bytes = std::fs::read(&last).unwrap();
    // (Past the last nonzero byte: the last record may end in a few zero bytes of a number.)
    let at = records_end(&bytes) + 16;
    let garbage = [0x40, 0, 0, 0, 0xde, 0xad, 0xbe, 0xef, 3, 1, 2];
    if bytes.len() < at + garbage.len() {
        bytes.resize(at + garbage.len(), 0);
    }
    bytes[at..at + garbage.len()].copy_from_slice(&garbage);
    std::fs::write(&last, &bytes).unwrap();

    let keel = Keel::start(&data_dir);
    assert_eq!(
        runtime.block_on(count_keys(&keel.endpoint())),
        100,
        "{}",
        keel.log()
    );
}

#[test]
fn a_corrupt_wal_record_in_the_middle_refuses_to_start_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let mut keel = Keel::start(&data_dir);
    let runtime = runtime();
    runtime.block_on(put_keys(&keel.endpoint(), 200));
    keel.kill_9();

    let last = wal_segments(&data_dir).pop().unwrap();
    let mut bytes = std::fs::read(&last).unwrap();
    let middle = records_end(&bytes) / 2;
    bytes[middle] ^= 0x55;
    std::fs::write(&last, &bytes).unwrap();

    let log = Keel::refuse(&data_dir);
    assert!(
        log.to_lowercase().contains("corrupt"),
        "the error must say the WAL is corrupt: {log}"
    );
    assert_eq!(
        std::fs::read(&last).unwrap(),
        bytes,
        "a corrupt WAL must be left as it was"
    );
}

#[test]
fn a_data_directory_that_is_not_keels_is_refused_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("etcd-data");
    std::fs::create_dir_all(data_dir.join("member/wal")).unwrap();
    std::fs::write(
        data_dir.join("member/wal/0000000000000000-0000000000000000.wal"),
        b"etcd's wal",
    )
    .unwrap();

    let log = Keel::refuse(&data_dir);
    assert!(log.contains("not a Keel data directory"), "{log}");
    let entries: Vec<_> = std::fs::read_dir(&data_dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name())
        .collect();
    assert_eq!(
        entries,
        ["member"],
        "nothing may be written into a foreign data dir"
    );
}

#[test]
fn sigterm_stops_cleanly_and_the_data_is_there_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let mut keel = Keel::start(&data_dir);
    let runtime = runtime();
    runtime.block_on(put_keys(&keel.endpoint(), 10));
    let mut child = keel.child.take().unwrap();
    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let status = child.wait().unwrap();
    assert!(
        status.success(),
        "SIGTERM must exit 0, got {status}: {}",
        keel.log()
    );

    let keel = Keel::start(&data_dir);
    assert_eq!(runtime.block_on(count_keys(&keel.endpoint())), 10);
}

#[test]
fn unknown_flags_are_an_error_as_in_etcd() {
    let output = Command::new(env!("CARGO_BIN_EXE_keel"))
        .arg("--no-such-flag")
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("--no-such-flag"));
    let version = Command::new(env!("CARGO_BIN_EXE_keel"))
        .arg("--version")
        .output()
        .unwrap();
    assert!(version.status.success());
    assert!(String::from_utf8_lossy(&version.stdout).starts_with("keel "));
}

#[test]
fn etcd_environment_variables_configure_keel_like_etcd() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("from-env");
    let port = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_keel"))
        .env("ETCD_NAME", "envname")
        .env("ETCD_DATA_DIR", &data_dir)
        .env(
            "ETCD_LISTEN_CLIENT_URLS",
            format!("http://127.0.0.1:{port}"),
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(child.try_wait().unwrap().is_none(), "keel exited");
        assert!(
            Instant::now() < deadline,
            "keel did not listen on the port from ETCD_LISTEN_CLIENT_URLS"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let marker = std::fs::read_to_string(data_dir.join("KEEL")).unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(marker.contains("name=envname"), "{marker}");
}

//! Members behind the leader's compacted log catch up through a store snapshot: a follower
//! frozen (SIGSTOP) while the log moved on, and a member that joins a cluster whose log no
//! longer starts at the beginning.
//!
//! Guards against: a member that never catches up (waiting for log the leader dropped), one
//! that skips writes (a snapshot without its data), and one that loses the snapshot's state on
//! a crash right after installing it.

mod support;

use std::time::{Duration, Instant};

use keel_client::{Client, GetOptions, PutOptions};
use support::{assert_same_hash_kv, etcdctl, Cluster};

/// Short timeouts; a durable store commit (and log release) every 50 applied entries, keeping
/// only 10 behind it, so a member falls behind the log quickly.
const FLAGS: [&str; 8] = [
    "--heartbeat-interval",
    "50",
    "--election-timeout",
    "500",
    "--snapshot-count",
    "50",
    "--experimental-snapshot-catchup-entries",
    "10",
];

async fn connect(endpoint: &str) -> Client {
    Client::connect(format!("http://{endpoint}")).await.unwrap()
}

/// Retries `args` until it succeeds (between leaders, a member may answer "no leader").
fn etcdctl_until_ok(endpoint: &str, args: &[&str]) -> String {
    let started = Instant::now();
    loop {
        let output = etcdctl(endpoint, args);
        if output.status == Some(0) {
            return output.stdout;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "etcdctl {args:?} kept failing: {output:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A member's revision, from its own state.
async fn local_revision(endpoint: &str) -> Option<i64> {
    let mut client = Client::connect(format!("http://{endpoint}")).await.ok()?;
    let found = client
        .get(
            "\0",
            GetOptions::new()
                .with_from_key()
                .with_count_only()
                .with_serializable(),
        )
        .await
        .ok()?;
    Some(found.header?.revision)
}

/// Waits until every running member of `members` is at `revision`.
async fn wait_for_revision(cluster: &Cluster, members: &[usize], revision: i64) {
    let started = Instant::now();
    for &index in members {
        loop {
            let seen = local_revision(&cluster.endpoint(index)).await;
            if seen == Some(revision) {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "member {index} is at revision {seen:?}, not {revision}:\n{}",
                cluster.log(index)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Waits until member `index` logs that it installed a snapshot from the leader (the store
/// holds it a moment before the line is written).
fn wait_for_installed_snapshot(cluster: &Cluster, index: usize) {
    let started = Instant::now();
    while !cluster
        .log(index)
        .contains("installed a store snapshot from the leader")
    {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "member {index} caught up without a snapshot (was the log compacted far enough?):\n{}",
            cluster.log(index)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

const CRASH_VARIABLE: &str = "KEEL_TEST_CRASH_AFTER_SNAPSHOT_MARKER";

fn find_leader(cluster: &Cluster) -> usize {
    (0..cluster.size())
        .filter(|&index| cluster.is_running(index))
        .find(|&index| {
            let output = etcdctl_until_ok(
                &cluster.endpoint(index),
                &["endpoint", "status", "-w", "json"],
            );
            let parsed: serde_json::Value = serde_json::from_str(output.trim()).unwrap();
            parsed[0]["Status"]["leader"] == parsed[0]["Status"]["header"]["member_id"]
        })
        .expect("a leader")
}

fn signal(cluster: &Cluster, index: usize, signal: &str) {
    assert!(std::process::Command::new("kill")
        .args([signal, &cluster.pid(index).to_string()])
        .status()
        .unwrap()
        .success());
}

/// Keys `write_past_the_log` puts, one entry each. The leader stops sending to a follower that
/// does not answer after 256 messages in flight (one per put here, kept in the stopped
/// follower's socket buffer); what is written after those must reach past the leader's last
/// log release, which comes every 50 applied entries at a phase that depends on the member id:
/// 256 + 2 × 50 + 10 < 400.
const KEYS_WRITTEN: usize = 400;

/// Writes that move the log well past what the leader keeps, with every kind of state a
/// snapshot must carry: keys, deletions, history, a compaction, a lease with keys, auth users.
async fn write_past_the_log(endpoint: &str, round: usize) -> i64 {
    let mut client = connect(endpoint).await;
    let lease = client.lease_grant(600, 0).await.unwrap();
    for i in 0..KEYS_WRITTEN {
        let options = if i % 10 == 0 {
            PutOptions::new().with_lease(lease.id)
        } else {
            PutOptions::new()
        };
        client
            .put(format!("k/{round}/{i:03}"), format!("v{i}"), options)
            .await
            .unwrap();
    }
    client
        .delete(
            format!("k/{round}/{:03}", KEYS_WRITTEN - 1),
            Default::default(),
        )
        .await
        .unwrap();
    let revision = client
        .put(format!("k/{round}/000"), "again", PutOptions::new())
        .await
        .unwrap()
        .header
        .unwrap()
        .revision;
    client.compact(revision - 100, false).await.unwrap();
    revision
}

#[test]
fn a_follower_behind_the_compacted_log_catches_up_through_a_snapshot_and_keeps_it_after_a_crash() {
    for size in [3, 5] {
        follower_catches_up(size);
    }
}

fn follower_catches_up(size: usize) {
    let mut cluster = Cluster::start(size, &FLAGS);
    let runtime = support::runtime();
    for index in 0..size {
        etcdctl_until_ok(&cluster.endpoint(index), &["put", "ready", "1"]);
    }
    etcdctl_until_ok(&cluster.endpoint(0), &["user", "add", "alice:secret"]);
    let leader = find_leader(&cluster);
    let behind = (leader + 1) % size;
    signal(&cluster, behind, "-STOP");
    let revision = runtime.block_on(write_past_the_log(&cluster.endpoint(leader), 0));
    etcdctl_until_ok(&cluster.endpoint(leader), &["user", "add", "bob:secret"]);
    signal(&cluster, behind, "-CONT");

    runtime.block_on(wait_for_revision(
        &cluster,
        &(0..size).collect::<Vec<_>>(),
        revision,
    ));
    wait_for_installed_snapshot(&cluster, behind);
    assert!(cluster.log(leader).contains("sent a store snapshot"));
    let check = |cluster: &Cluster| {
        assert_same_hash_kv(cluster, 0..size);
        // The snapshot carried history, the compaction, leases and auth.
        let endpoint = cluster.endpoint(behind);
        let old = etcdctl(
            &endpoint,
            &[
                "get",
                "k/0/001",
                "--consistency=s",
                "--rev",
                &(revision - 101).to_string(),
            ],
        );
        assert!(
            old.stderr.contains("required revision has been compacted"),
            "{old:?}"
        );
        let history = etcdctl(
            &endpoint,
            &[
                "get",
                "k/0/000",
                "--consistency=s",
                "--rev",
                &(revision - 1).to_string(),
                "--print-value-only",
            ],
        );
        assert_eq!(history.stdout.trim(), "v0", "{history:?}");
        let now = etcdctl(
            &endpoint,
            &["get", "k/0/000", "--consistency=s", "--print-value-only"],
        );
        assert_eq!(now.stdout.trim(), "again");
        let last = format!("k/0/{:03}", KEYS_WRITTEN - 1);
        let deleted = etcdctl(&endpoint, &["get", &last, "--consistency=s"]);
        assert_eq!(deleted.stdout, "");
        let count = etcdctl(
            &endpoint,
            &[
                "get",
                "k/0/",
                "--prefix",
                "--limit",
                "1",
                "--consistency=s",
                "-w",
                "json",
            ],
        );
        let expected = format!("\"count\":{}", KEYS_WRITTEN - 1);
        assert!(count.stdout.contains(&expected), "{count:?}");
        let users = etcdctl_until_ok(&endpoint, &["user", "list"]);
        assert_eq!(
            users.split_whitespace().collect::<Vec<_>>(),
            ["alice", "bob"]
        );
        let leases = etcdctl_until_ok(&endpoint, &["lease", "list"]);
        assert!(leases.contains("found 1 leases"), "{leases}");
    };
    check(&cluster);

    // kill -9 right after: the installed state is durable, and the member goes on from it.
    cluster.kill_9(behind);
    cluster.restart(behind);
    runtime.block_on(wait_for_revision(&cluster, &[behind], revision));
    check(&cluster);
    let next = etcdctl_until_ok(
        &cluster.endpoint(behind),
        &["put", "after", "1", "-w", "json"],
    );
    let parsed: serde_json::Value = serde_json::from_str(next.trim()).unwrap();
    let after = parsed["header"]["revision"].as_i64().unwrap();
    assert_eq!(after, revision + 1);
    runtime.block_on(wait_for_revision(
        &cluster,
        &(0..size).collect::<Vec<_>>(),
        after,
    ));
}

#[test]
fn a_learner_that_joins_after_the_log_was_compacted_gets_a_snapshot_and_can_be_promoted() {
    joins_after_compaction(true);
}

#[test]
fn a_voter_that_joins_after_the_log_was_compacted_gets_a_snapshot() {
    joins_after_compaction(false);
}

fn joins_after_compaction(learner: bool) {
    let mut cluster = Cluster::start(3, &FLAGS);
    let runtime = support::runtime();
    for index in 0..3 {
        etcdctl_until_ok(&cluster.endpoint(index), &["put", "ready", "1"]);
    }
    let revision = runtime.block_on(write_past_the_log(&cluster.endpoint(0), 1));

    let new = cluster.reserve_member();
    let peer_url = cluster.peer_url(new);
    let peer_urls = format!("--peer-urls={peer_url}");
    let mut add = vec!["member", "add", "m3", &peer_urls];
    if learner {
        add.push("--learner");
    }
    etcdctl_until_ok(&cluster.endpoint(0), &add);
    cluster.join(new);
    runtime.block_on(wait_for_revision(&cluster, &[new], revision));
    wait_for_installed_snapshot(&cluster, new);
    let list = etcdctl_until_ok(&cluster.endpoint(0), &["member", "list", "-w", "json"]);
    let parsed: serde_json::Value = serde_json::from_str(list.trim()).unwrap();
    let id = parsed["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|member| member["peerURLs"][0] == peer_url.as_str())
        .and_then(|member| member["ID"].as_u64())
        .expect("the new member is listed");
    if learner {
        etcdctl_until_ok(
            &cluster.endpoint(0),
            &["member", "promote", &format!("{id:x}")],
        );
    }
    let after = runtime.block_on(async {
        connect(&cluster.endpoint(new))
            .await
            .put("through-new", "1", PutOptions::new())
            .await
            .unwrap()
            .header
            .unwrap()
            .revision
    });
    runtime.block_on(wait_for_revision(&cluster, &[0, 1, 2, new], after));
    assert_same_hash_kv(&cluster, 0..4);
}

/// kill -9 at the worst moment of an install (fault injection: the member aborts once the
/// snapshot's WAL marker is durable, before its store holds the snapshot). The next start must
/// install the kept file; a corrupt kept file must stop the member with a clear message.
#[test]
fn a_crash_between_the_snapshot_marker_and_the_store_install_is_repaired_at_start() {
    let mut cluster = Cluster::start(3, &FLAGS);
    let runtime = support::runtime();
    for index in 0..3 {
        etcdctl_until_ok(&cluster.endpoint(index), &["put", "ready", "1"]);
    }
    // Every member gets the fault (restarted one at a time, so a quorum stays up): whichever
    // leads, a follower has it.
    for index in 0..3 {
        cluster.set_env(index, CRASH_VARIABLE, Some("1"));
        cluster.restart(index);
        etcdctl_until_ok(&cluster.endpoint(index), &["put", "ready", "2"]);
    }
    let leader = find_leader(&cluster);
    let behind = (leader + 1) % 3;
    signal(&cluster, behind, "-STOP");
    let revision = runtime.block_on(write_past_the_log(&cluster.endpoint(leader), 2));
    signal(&cluster, behind, "-CONT");
    let code = cluster.wait_exit(behind, Duration::from_secs(30));
    assert_ne!(code, Some(0));
    assert!(cluster
        .log(behind)
        .contains("crashing before installing the snapshot"));
    let snap_dir = cluster.data_dir(behind).join("snap");
    let files: Vec<_> = std::fs::read_dir(&snap_dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    let kept = files[0].clone();
    let good = std::fs::read(&kept).unwrap();

    // A corrupt kept file: the member refuses to start and says why.
    let mut bad = good.clone();
    let middle = bad.len() / 2;
    bad[middle] ^= 0x40;
    std::fs::write(&kept, &bad).unwrap();
    cluster.set_env(behind, CRASH_VARIABLE, None);
    cluster.spawn_member(behind);
    let code = cluster.wait_exit(behind, Duration::from_secs(30));
    assert_ne!(code, Some(0));
    let log = cluster.log(behind);
    assert!(
        log.contains("cannot be installed") && log.contains("checksum mismatch"),
        "{log}"
    );

    // The intact file: installed at start, and the member catches up from there.
    std::fs::write(&kept, &good).unwrap();
    cluster.restart(behind);
    assert!(cluster.log(behind).contains("installed a store snapshot"));
    runtime.block_on(wait_for_revision(&cluster, &[0, 1, 2], revision));
    assert_same_hash_kv(&cluster, 0..3);
    // Installed at start and removed then. The leader may not have heard yet that the member
    // caught up and send the same snapshot again; the member declines it and removes its file
    // too, so wait for that rather than catch the moment in between.
    let left = || std::fs::read_dir(&snap_dir).unwrap().count();
    let deadline = Instant::now() + Duration::from_secs(10);
    while left() > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!kept.exists(), "the installed snapshot file is removed");
    assert_eq!(left(), 0, "no snapshot file is left behind");
}

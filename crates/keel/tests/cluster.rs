//! Replicated clusters of real `keel` processes on loopback: replication, reads from every
//! member, failover after `kill -9` of the leader, a member cut off from its peers, and
//! restarting every member after a crash.
//!
//! Guards against: a write acknowledged without a quorum, a stale linearizable read, a cluster
//! that doesn't elect a new leader, and members that disagree after a crash.

mod support;

use std::time::{Duration, Instant};

use keel_client::{Client, GetOptions, PutOptions};
use support::{Background, Cluster};

/// Short timeouts keep failover tests quick: 50 ms heartbeat, 500 ms election.
const FAST: [&str; 4] = ["--heartbeat-interval", "50", "--election-timeout", "500"];
const ELECTION_TIMEOUT: Duration = Duration::from_millis(500);

async fn connect(endpoint: &str) -> Client {
    Client::connect(format!("http://{endpoint}")).await.unwrap()
}

/// The index of the member every running member agrees leads, once they do.
async fn wait_for_leader(cluster: &Cluster, deadline: Duration) -> usize {
    let started = Instant::now();
    loop {
        let mut ids = Vec::new();
        let mut leaders = Vec::new();
        for index in (0..cluster.size()).filter(|index| cluster.is_running(*index)) {
            let Ok(mut client) =
                Client::connect(format!("http://{}", cluster.endpoint(index))).await
            else {
                continue;
            };
            if let Ok(status) = client.status().await {
                ids.push((index, status.header.unwrap().member_id));
                leaders.push(status.leader);
            }
        }
        let running = (0..cluster.size())
            .filter(|index| cluster.is_running(*index))
            .count();
        if leaders.len() == running
            && leaders[0] != 0
            && leaders.iter().all(|leader| *leader == leaders[0])
        {
            if let Some((index, _)) = ids.iter().find(|(_, id)| *id == leaders[0]) {
                return *index;
            }
        }
        assert!(
            started.elapsed() < deadline,
            "no leader agreed on within {deadline:?}: {leaders:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn revision_of(endpoint: &str) -> i64 {
    let mut client = connect(endpoint).await;
    let found = client
        .get(
            "\0",
            GetOptions::new()
                .with_from_key()
                .with_count_only()
                .with_serializable(),
        )
        .await
        .unwrap();
    found.header.unwrap().revision
}

#[test]
fn a_three_member_cluster_replicates_writes_and_every_member_serves_reads() {
    let cluster = Cluster::start(3, &FAST);
    support::runtime().block_on(async {
        let leader = wait_for_leader(&cluster, Duration::from_secs(10)).await;
        let follower = (leader + 1) % 3;
        // A write sent to a follower reaches the leader and is applied everywhere.
        let mut client = connect(&cluster.endpoint(follower)).await;
        let put = client
            .put("replicated", "yes", PutOptions::new())
            .await
            .unwrap();
        let revision = put.header.unwrap().revision;
        for index in 0..3 {
            let mut client = connect(&cluster.endpoint(index)).await;
            // Linearizable: the write is visible at once on every member.
            let found = client.get("replicated", GetOptions::new()).await.unwrap();
            assert_eq!(
                found.kvs.len(),
                1,
                "member {index} misses an acknowledged write"
            );
            assert_eq!(found.kvs[0].value, b"yes");
            assert!(found.header.unwrap().revision >= revision);
        }
        for i in 0..50 {
            let mut client = connect(&cluster.endpoint(i % 3)).await;
            client
                .put(format!("k{i}"), "v", PutOptions::new())
                .await
                .unwrap();
        }
        // Every member ends at the same revision.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let revisions = [
                revision_of(&cluster.endpoint(0)).await,
                revision_of(&cluster.endpoint(1)).await,
                revision_of(&cluster.endpoint(2)).await,
            ];
            if revisions.iter().all(|revision| *revision == revisions[0]) {
                assert_eq!(revisions[0], revision + 50);
                break;
            }
            assert!(Instant::now() < deadline, "members disagree: {revisions:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
}

#[test]
fn killing_the_leader_elects_another_within_three_election_timeouts_and_writes_go_on() {
    for size in [3, 5] {
        let mut cluster = Cluster::start(size, &FAST);
        let runtime = support::runtime();
        let leader = runtime.block_on(wait_for_leader(&cluster, Duration::from_secs(10)));
        runtime.block_on(async {
            let mut client = connect(&cluster.endpoint((leader + 1) % size)).await;
            client.put("before", "1", PutOptions::new()).await.unwrap();
        });
        cluster.kill_9(leader);
        let killed = Instant::now();
        let new_leader = runtime.block_on(wait_for_leader(&cluster, Duration::from_secs(10)));
        let failover = killed.elapsed();
        eprintln!("{size} members: new leader {failover:?} after kill -9 of the old one");
        assert_ne!(new_leader, leader);
        assert!(
            failover <= ELECTION_TIMEOUT * 3 + Duration::from_millis(500),
            "failover took {failover:?}"
        );
        runtime.block_on(async {
            for index in (0..size).filter(|index| *index != leader) {
                let mut client = connect(&cluster.endpoint(index)).await;
                client
                    .put(format!("after/{index}"), "1", PutOptions::new())
                    .await
                    .unwrap();
            }
        });
        // The old leader comes back as a follower and catches up.
        cluster.restart(leader);
        runtime.block_on(async {
            let mut client = connect(&cluster.endpoint(leader)).await;
            let found = client
                .get("after/", GetOptions::new().with_prefix())
                .await
                .unwrap();
            assert_eq!(
                found.count as usize,
                size - 1,
                "the restarted member caught up"
            );
        });
    }
}

#[test]
fn a_member_cut_off_from_its_peers_acknowledges_no_write_and_serves_no_linearizable_read() {
    for size in [3, 5] {
        cut_off(size);
    }
}

fn cut_off(size: usize) {
    let cluster = Cluster::start(size, &FAST);
    let runtime = support::runtime();
    let leader = runtime.block_on(wait_for_leader(&cluster, Duration::from_secs(10)));
    runtime.block_on(async {
        connect(&cluster.endpoint(leader))
            .await
            .put("seen", "1", PutOptions::new())
            .await
            .unwrap();
    });
    // Freeze the others: the remaining member is alone.
    let alone = leader;
    let others: Vec<usize> = (0..size).filter(|index| *index != alone).collect();
    for index in &others {
        assert!(std::process::Command::new("kill")
            .args(["-STOP", &cluster.pid(*index).to_string()])
            .status()
            .unwrap()
            .success());
    }
    runtime.block_on(async {
        let mut client = connect(&cluster.endpoint(alone)).await;
        let write = tokio::time::timeout(
            Duration::from_secs(20),
            client.put("lost", "1", PutOptions::new()),
        )
        .await
        .unwrap();
        let error = write.expect_err("a write must not be acknowledged without a quorum");
        assert!(
            ["etcdserver: request timed out", "etcdserver: no leader"]
                .contains(&error.to_string().as_str()),
            "unexpected error: {error}"
        );
        let read = tokio::time::timeout(
            Duration::from_secs(20),
            client.get("seen", GetOptions::new()),
        )
        .await
        .unwrap();
        assert!(
            read.is_err(),
            "a linearizable read must fail without a quorum"
        );
        // A serializable read still answers from local state.
        let local = client
            .get("seen", GetOptions::new().with_serializable())
            .await
            .unwrap();
        assert_eq!(local.kvs.len(), 1);
    });
    for index in &others {
        assert!(std::process::Command::new("kill")
            .args(["-CONT", &cluster.pid(*index).to_string()])
            .status()
            .unwrap()
            .success());
    }
    runtime.block_on(async {
        wait_for_leader(&cluster, Duration::from_secs(10)).await;
        let mut client = connect(&cluster.endpoint(alone)).await;
        // Healed: writes and linearizable reads work again. (The write that timed out may or
        // may not have been applied: a timeout promises neither, in etcd as here.)
        client.put("healed", "1", PutOptions::new()).await.unwrap();
        let found = client.get("healed", GetOptions::new()).await.unwrap();
        assert_eq!(found.kvs.len(), 1);
    });
}

#[test]
fn every_acknowledged_write_survives_killing_every_member_and_all_agree_after() {
    for size in [3, 5] {
        kill_all(size);
    }
}

fn kill_all(size: usize) {
    let mut cluster = Cluster::start(size, &FAST);
    let runtime = support::runtime();
    runtime.block_on(wait_for_leader(&cluster, Duration::from_secs(10)));
    let acknowledged: Vec<String> = runtime.block_on(async {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        let mut writers = Vec::new();
        for writer in 0..6 {
            let endpoint = cluster.endpoint(writer % size);
            writers.push(tokio::spawn(async move {
                let mut client = connect(&endpoint).await;
                let mut done = Vec::new();
                let mut i = 0;
                while tokio::time::Instant::now() < deadline {
                    let key = format!("w{writer}/{i}");
                    if client
                        .put(key.clone(), "v", PutOptions::new())
                        .await
                        .is_ok()
                    {
                        done.push(key);
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
    for index in 0..size {
        cluster.kill_9(index);
    }
    eprintln!(
        "{size} members: {} writes acknowledged before every member was killed",
        acknowledged.len()
    );
    assert!(acknowledged.len() > 50);
    for index in 0..size {
        cluster.restart(index);
    }
    runtime.block_on(async {
        wait_for_leader(&cluster, Duration::from_secs(10)).await;
        let mut client = connect(&cluster.endpoint(0)).await;
        for key in &acknowledged {
            let found = client.get(key.clone(), GetOptions::new()).await.unwrap();
            assert_eq!(found.kvs.len(), 1, "acknowledged {key} lost");
        }
        // All members converge on the same revision and the same keys.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let mut revisions = Vec::new();
            for index in 0..size {
                revisions.push(revision_of(&cluster.endpoint(index)).await);
            }
            if revisions.iter().all(|revision| *revision == revisions[0]) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "members disagree after restart: {revisions:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    // ... and the same data, record for record.
    support::assert_same_hash_kv(&cluster, 0..size);
}

#[test]
fn a_registration_outlives_a_leader_failover_and_goes_when_its_service_dies() {
    let mut cluster = Cluster::start(3, &FAST);
    let runtime = support::runtime();
    let leader = runtime.block_on(wait_for_leader(&cluster, Duration::from_secs(10)));
    let keeper_member = (leader + 1) % 3;
    let watcher_member = (leader + 2) % 3;
    // The service registers through a follower and keeps its 5 s lease alive there.
    let keeper_endpoint = cluster.endpoint(keeper_member);
    let granted = support::etcdctl(&keeper_endpoint, &["lease", "grant", "5"]);
    let id = granted
        .stdout
        .split_whitespace()
        .nth(1)
        .expect("lease id")
        .to_string();
    let mut keeper = Background::start(&keeper_endpoint, &["lease", "keep-alive", &id], None);
    keeper.wait_for("keepalived", 1);
    let lease = i64::from_str_radix(&id, 16).unwrap();

    runtime.block_on(async {
        let mut watcher = connect(&cluster.endpoint(watcher_member)).await;
        let mut stream = watcher.watch_stream().await.unwrap();
        stream
            .create(keel_client::proto::WatchCreateRequest {
                key: b"services/api/".to_vec(),
                range_end: b"services/api0".to_vec(),
                ..Default::default()
            })
            .await
            .unwrap();
        assert!(stream.next().await.unwrap().unwrap().created);
        let mut client = connect(&keeper_endpoint).await;
        client.put("services/api/10.0.0.1:8080", "up", PutOptions::new().with_lease(lease)).await.unwrap();
        assert_eq!(stream.next().await.unwrap().unwrap().events[0].r#type, 0, "PUT seen");

        // Kill the leader; the lease must not expire because of the election.
        cluster.kill_9(leader);
        tokio::time::sleep(Duration::from_secs(8)).await;
        let found = client.get("services/api/", GetOptions::new().with_prefix()).await.unwrap();
        assert_eq!(found.count, 1, "the registration survived the failover");

        // Kill the service: its registration goes within TTL + 2 s.
        keeper.kill_9();
        let killed = Instant::now();
        let deleted = tokio::time::timeout(Duration::from_secs(20), stream.next()).await.unwrap().unwrap().unwrap();
        assert_eq!(deleted.events[0].r#type, 1, "DELETE seen");
        let after = killed.elapsed();
        eprintln!("registration deleted {after:?} after its service was killed (3 members, leader killed before)");
        assert!(after <= Duration::from_secs(7), "deleted after {after:?}");
    });
}

#[test]
fn etcdctl_endpoint_status_hashkv_member_list_and_move_leader_work_on_a_cluster() {
    let cluster = Cluster::start(3, &FAST);
    let runtime = support::runtime();
    let leader = runtime.block_on(wait_for_leader(&cluster, Duration::from_secs(10)));
    let endpoints = cluster.endpoints();
    for i in 0..20 {
        let output = support::etcdctl(&cluster.endpoint(i % 3), &["put", &format!("h{i}"), "v"]);
        assert_eq!(output.status, Some(0), "{output:?}");
    }
    support::etcdctl(&cluster.endpoint(0), &["compact", "10"]);
    // Every member reports the same hash of the same data.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let output = support::etcdctl(&endpoints, &["endpoint", "hashkv", "-w", "json"]);
        let value: serde_json::Value = serde_json::from_str(output.stdout.trim()).unwrap();
        let hashes: Vec<u64> = value
            .as_array()
            .unwrap()
            .iter()
            .map(|member| member["HashKV"]["hash"].as_u64().unwrap())
            .collect();
        assert_eq!(hashes.len(), 3);
        if hashes.iter().all(|hash| *hash == hashes[0]) && hashes[0] != 0 {
            break;
        }
        assert!(Instant::now() < deadline, "hashes differ: {hashes:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let status = support::etcdctl(&endpoints, &["endpoint", "status", "-w", "json"]);
    let value: serde_json::Value = serde_json::from_str(status.stdout.trim()).unwrap();
    let leaders: Vec<u64> = value
        .as_array()
        .unwrap()
        .iter()
        .map(|member| member["Status"]["leader"].as_u64().unwrap())
        .collect();
    assert!(
        leaders.iter().all(|id| *id == leaders[0] && *id != 0),
        "{leaders:?}"
    );
    // Every member lists all three with their names and client URLs (published through the log).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let members = support::etcdctl(&cluster.endpoint(0), &["member", "list"]);
        assert_eq!(members.stdout.lines().count(), 3, "{members:?}");
        let complete = (0..3).all(|index| {
            members.stdout.contains(&format!(
                "m{index}, {}, http://{}",
                cluster.peer_url(index),
                cluster.endpoint(index)
            ))
        });
        if complete {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "member list incomplete:\n{}",
            members.stdout
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // Move leadership to another member, through the leader's endpoint.
    let target = (leader + 1) % 3;
    let target_id = runtime.block_on(async {
        let mut client = connect(&cluster.endpoint(target)).await;
        client.status().await.unwrap().header.unwrap().member_id
    });
    let moved = support::etcdctl(&endpoints, &["move-leader", &format!("{target_id:x}")]);
    assert_eq!(moved.status, Some(0), "{moved:?}");
    assert!(moved.stdout.contains("Leadership transferred"), "{moved:?}");
    let new_leader = runtime.block_on(wait_for_leader(&cluster, Duration::from_secs(10)));
    assert_eq!(new_leader, target);
}

#[test]
fn messages_from_a_member_of_another_cluster_are_refused_and_logged() {
    let cluster = Cluster::start(3, &FAST);
    let runtime = support::runtime();
    runtime.block_on(wait_for_leader(&cluster, Duration::from_secs(10)));
    // A member of another cluster (another token) that believes m0 is its peer.
    let dir = tempfile::tempdir().unwrap();
    let client_port = support::free_port();
    let peer_port = support::free_port();
    let own_peer = format!("http://127.0.0.1:{peer_port}");
    let mut intruder = std::process::Command::new(env!("CARGO_BIN_EXE_keel"))
        .args([
            "--name",
            "intruder",
            "--initial-cluster-token",
            "another-cluster",
        ])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .args([
            "--listen-client-urls",
            &format!("http://127.0.0.1:{client_port}"),
        ])
        .args(["--listen-peer-urls", &own_peer])
        .args(["--initial-advertise-peer-urls", &own_peer])
        .args([
            "--initial-cluster",
            &format!("intruder={own_peer},m0={}", cluster.peer_url(0)),
        ])
        .args(FAST)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cluster
        .log(0)
        .contains("refused Raft messages from a member of another cluster")
    {
        assert!(
            Instant::now() < deadline,
            "m0 did not refuse the intruder's messages:\n{}",
            cluster.log(0)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = intruder.kill();
    let _ = intruder.wait();
    // The cluster is unharmed.
    runtime.block_on(async {
        let leader = wait_for_leader(&cluster, Duration::from_secs(10)).await;
        let mut client = connect(&cluster.endpoint(leader)).await;
        client
            .put("still", "fine", PutOptions::new())
            .await
            .unwrap();
        let members = client.get("still", GetOptions::new()).await.unwrap();
        assert_eq!(members.kvs.len(), 1);
    });
}

//! Membership changes with etcdctl against real `keel` processes: a 4th member added as a
//! learner, started with `--initial-cluster-state existing`, promoted; an old member removed;
//! all while a client writes. etcd's errors for the changes it refuses.
//!
//! Guards against: a joining member that can't catch up, a promotion or removal that loses an
//! acknowledged write or leaves members disagreeing, a removed member that keeps running, and
//! membership that isn't the same after a restart.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use keel_client::{Client, GetOptions, PutOptions};
use support::{etcdctl, Cluster, Output};

const FAST: [&str; 4] = ["--heartbeat-interval", "50", "--election-timeout", "500"];

fn member_list(endpoint: &str) -> serde_json::Value {
    let output = etcdctl(endpoint, &["member", "list", "-w", "json"]);
    assert_eq!(output.status, Some(0), "{output:?}");
    serde_json::from_str(output.stdout.trim()).unwrap()
}

/// The id and learner flag of the member with `peer_url`, as `endpoint` lists it.
fn find_member(endpoint: &str, peer_url: &str) -> Option<(u64, bool)> {
    let list = member_list(endpoint);
    list["members"].as_array()?.iter().find_map(|member| {
        let urls = member["peerURLs"].as_array()?;
        urls.iter().any(|url| url == peer_url).then(|| {
            (
                member["ID"].as_u64().unwrap(),
                member["isLearner"].as_bool().unwrap_or(false),
            )
        })
    })
}

/// Runs `args`, again while the member answers that it knows no leader (between elections,
/// under a loaded machine), so an error case checks its own error.
fn etcdctl_settled(endpoint: &str, args: &[&str]) -> Output {
    let started = Instant::now();
    loop {
        let output = etcdctl(endpoint, args);
        let transient = output.stderr.contains("etcdserver: no leader")
            || output.stderr.contains("etcdserver: leader changed");
        if !transient || started.elapsed() > Duration::from_secs(10) {
            return output;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn assert_fails_with(output: &Output, message: &str) {
    assert_ne!(output.status, Some(0), "{output:?}");
    assert!(
        output.stderr.contains(message),
        "expected {message:?}, got {output:?}"
    );
}

/// Retries `args` until it succeeds (the cluster may be between leaders, or a learner not yet
/// in sync).
fn etcdctl_until_ok(endpoint: &str, args: &[&str], deadline: Duration) -> Output {
    let started = Instant::now();
    loop {
        let output = etcdctl(endpoint, args);
        if output.status == Some(0) {
            return output;
        }
        assert!(
            started.elapsed() < deadline,
            "etcdctl {args:?} kept failing: {output:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_learner_joins_is_promoted_and_an_old_member_is_removed_while_writes_go_on() {
    let mut cluster = Cluster::start(3, &FAST);
    let runtime = support::runtime();
    let started = Instant::now();
    // Wait until the founding members have published their names (MemberAdd of a voter needs a
    // quorum of started members, as in etcd).
    // Every member must know the leader before the error cases below, or one of them could
    // answer "no leader" instead of the error under test.
    for index in 0..3 {
        etcdctl_until_ok(
            &cluster.endpoint(index),
            &["put", "ready", "1"],
            Duration::from_secs(10),
        );
    }

    // A client writes through members 0 and 1 (which stay) for the whole test.
    let stop = Arc::new(AtomicBool::new(false));
    let acknowledged = Arc::new(Mutex::new(Vec::new()));
    let writer = {
        let endpoints = [cluster.endpoint(0), cluster.endpoint(1)];
        let stop = Arc::clone(&stop);
        let acknowledged = Arc::clone(&acknowledged);
        runtime.spawn(async move {
            let mut clients = Vec::new();
            for endpoint in &endpoints {
                clients.push(Client::connect(format!("http://{endpoint}")).await.unwrap());
            }
            let mut i = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let key = format!("w/{i}");
                let client = &mut clients[i % 2];
                if client
                    .put(key.clone(), "v", PutOptions::new())
                    .await
                    .is_ok()
                {
                    acknowledged.lock().unwrap().push(key);
                } else {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                i += 1;
            }
        })
    };

    // Add a learner through a member (a follower forwards to the leader).
    let new = cluster.reserve_member();
    let new_peer = cluster.peer_url(new);
    let added = etcdctl_until_ok(
        &cluster.endpoint(1),
        &[
            "member",
            "add",
            "m3",
            "--learner",
            &format!("--peer-urls={new_peer}"),
        ],
        Duration::from_secs(10),
    );
    assert!(added.stdout.contains("added to cluster"), "{added:?}");
    assert!(
        added
            .stdout
            .contains("ETCD_INITIAL_CLUSTER_STATE=\"existing\""),
        "{added:?}"
    );
    let (new_id, is_learner) = find_member(&cluster.endpoint(1), &new_peer).expect("listed");
    assert!(is_learner);
    let new_hex = format!("{new_id:x}");

    // etcd's refusals.
    assert_fails_with(
        &etcdctl_settled(
            &cluster.endpoint(0),
            &[
                "member",
                "add",
                "again",
                "--learner",
                &format!("--peer-urls={new_peer}"),
            ],
        ),
        "etcdserver: Peer URLs already exists",
    );
    assert_fails_with(
        &etcdctl_settled(
            &cluster.endpoint(2),
            &[
                "member",
                "add",
                "second",
                "--learner",
                "--peer-urls=http://127.0.0.1:1",
            ],
        ),
        "etcdserver: too many learner members in cluster",
    );
    assert_fails_with(
        &etcdctl_settled(&cluster.endpoint(0), &["member", "promote", &new_hex]),
        "etcdserver: can only promote a learner member which is in sync with leader",
    );
    let (voter_id, _) = find_member(&cluster.endpoint(0), &cluster.peer_url(0)).unwrap();
    assert_fails_with(
        &etcdctl_settled(
            &cluster.endpoint(1),
            &["member", "promote", &format!("{voter_id:x}")],
        ),
        "etcdserver: can only promote a learner member",
    );
    for command in ["promote", "remove"] {
        assert_fails_with(
            &etcdctl(&cluster.endpoint(0), &["member", command, "1234abcd"]),
            "etcdserver: member not found",
        );
    }
    assert_fails_with(
        &etcdctl_settled(
            &cluster.endpoint(0),
            &[
                "member",
                "update",
                "1234abcd",
                "--peer-urls=http://127.0.0.1:2",
            ],
        ),
        "etcdserver: member not found",
    );
    assert_fails_with(
        &etcdctl_settled(
            &cluster.endpoint(0),
            &[
                "member",
                "update",
                &new_hex,
                &format!("--peer-urls={}", cluster.peer_url(0)),
            ],
        ),
        "etcdserver: Peer URLs already exists",
    );

    // Start it: it learns the cluster from a member and receives the log from the leader.
    cluster.join(new);
    etcdctl_until_ok(
        &cluster.endpoint(0),
        &["member", "promote", &new_hex],
        Duration::from_secs(20),
    );
    // The promotion reaches the new member through the log.
    let deadline = Instant::now() + Duration::from_secs(10);
    while find_member(&cluster.endpoint(new), &new_peer) != Some((new_id, false)) {
        assert!(
            Instant::now() < deadline,
            "the new member never saw its promotion"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Updating its peer URLs to the ones it has is allowed.
    etcdctl_until_ok(
        &cluster.endpoint(new),
        &[
            "member",
            "update",
            &new_hex,
            &format!("--peer-urls={new_peer}"),
        ],
        Duration::from_secs(10),
    );

    // Remove an old member, through another one: it stops by itself.
    let (old_id, _) = find_member(&cluster.endpoint(0), &cluster.peer_url(2)).unwrap();
    let removed = etcdctl_until_ok(
        &cluster.endpoint(0),
        &["member", "remove", &format!("{old_id:x}")],
        Duration::from_secs(10),
    );
    assert!(
        removed.stdout.contains("removed from cluster"),
        "{removed:?}"
    );
    assert_eq!(cluster.wait_exit(2, Duration::from_secs(10)), Some(0));
    assert!(
        cluster.log(2).contains("permanently removed"),
        "{}",
        cluster.log(2)
    );
    // Writes go on after the changes.
    let after_changes = acknowledged.lock().unwrap().len();
    let deadline = Instant::now() + Duration::from_secs(15);
    while acknowledged.lock().unwrap().len() < after_changes + 20 {
        assert!(
            Instant::now() < deadline,
            "writes stopped after the changes"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, Ordering::Relaxed);
    runtime.block_on(writer).unwrap();
    let acknowledged = acknowledged.lock().unwrap().clone();
    eprintln!(
        "{} writes acknowledged during the membership changes ({:?})",
        acknowledged.len(),
        started.elapsed()
    );
    assert!(acknowledged.len() >= 20);

    // Every remaining member lists the same three members, has every acknowledged write, and
    // they agree on the revision and the hash.
    let remaining = [0, 1, new];
    for index in remaining {
        let list = member_list(&cluster.endpoint(index));
        assert_eq!(list["members"].as_array().unwrap().len(), 3, "{list}");
    }
    let endpoints = remaining.map(|index| cluster.endpoint(index)).join(",");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let output = etcdctl(&endpoints, &["endpoint", "hashkv", "-w", "json"]);
        let value: serde_json::Value = serde_json::from_str(output.stdout.trim()).unwrap();
        let hashes: Vec<(u64, i64)> = value
            .as_array()
            .unwrap()
            .iter()
            .map(|member| {
                (
                    member["HashKV"]["hash"].as_u64().unwrap(),
                    member["HashKV"]["header"]["revision"].as_i64().unwrap_or(0),
                )
            })
            .collect();
        if hashes.len() == 3 && hashes.iter().all(|hash| *hash == hashes[0]) {
            break;
        }
        assert!(Instant::now() < deadline, "members disagree: {hashes:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    runtime.block_on(async {
        for index in remaining {
            let mut client = Client::connect(format!("http://{}", cluster.endpoint(index)))
                .await
                .unwrap();
            for key in &acknowledged {
                let found = client
                    .get(key.clone(), GetOptions::new().with_serializable())
                    .await
                    .unwrap();
                assert_eq!(
                    found.kvs.len(),
                    1,
                    "acknowledged {key} missing on member {index}"
                );
            }
        }
    });

    // Membership is durable: after a restart the joined member and a founder list the same.
    cluster.restart(new);
    cluster.restart(0);
    etcdctl_until_ok(
        &cluster.endpoint(new),
        &["put", "after", "restart"],
        Duration::from_secs(10),
    );
    for index in [0, new] {
        let list = member_list(&cluster.endpoint(index));
        let members = list["members"].as_array().unwrap();
        assert_eq!(members.len(), 3, "{list}");
        assert!(members
            .iter()
            .all(|member| member["isLearner"].as_bool() != Some(true)));
    }
}

/// Guards against a member started with `existing` that was never added: it must refuse to
/// start rather than join under a made-up identity.
#[test]
fn joining_without_member_add_is_refused() {
    let mut cluster = Cluster::start(1, &FAST);
    etcdctl_until_ok(
        &cluster.endpoint(0),
        &["put", "k", "v"],
        Duration::from_secs(10),
    );
    let new = cluster.reserve_member();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| cluster.join(new)));
    assert!(result.is_err(), "a member that was never added started");
    assert!(
        cluster.log(new).contains("is not a member of the cluster"),
        "{}",
        cluster.log(new)
    );
}

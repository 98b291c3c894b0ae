//! Watch and Lease through real clients: etcdctl's `watch` and `lease` compared with a real
//! etcd, the Rust client for the guarantees etcd gives (order, no duplicates, a transaction's
//! events together, slow readers), and service discovery end to end with a `kill -9`.
//!
//! Guards against: a watcher that misses, repeats or splits events; a slow client stalling the
//! others; a lease that expires early, late or not at all; output that differs from etcd's.

mod support;

use std::time::{Duration, Instant};

use keel_client::proto::{
    compare, request_op, Compare, PutRequest, RequestOp, TxnRequest, WatchCreateRequest,
};
use keel_client::{Client, GetOptions, PutOptions};
use serde_json::Value;
use support::{etcdctl, Background, Etcd, Keel};

/// etcdctl's JSON watch output with what legitimately differs between servers removed.
fn normalize_watch_json(text: &str) -> Vec<Value> {
    text.lines()
        .filter(|line| line.starts_with('{'))
        .map(|line| {
            let mut value: Value = serde_json::from_str(line).unwrap();
            if let Some(header) = value.get_mut("Header").and_then(Value::as_object_mut) {
                header.remove("cluster_id");
                header.remove("member_id");
                header.remove("raft_term");
            }
            value
        })
        .collect()
}

fn run(endpoint: &str, args: &[&str]) -> String {
    let output = etcdctl(endpoint, args);
    assert_eq!(
        output.status,
        Some(0),
        "etcdctl {args:?}: {}",
        output.stderr
    );
    output.stdout
}

/// The same history on a server: puts, a delete, a transaction with two puts.
fn write_history(endpoint: &str) {
    run(endpoint, &["put", "k/a", "1"]);
    run(endpoint, &["put", "k/b", "1"]);
    run(endpoint, &["put", "k/a", "2"]);
    run(endpoint, &["del", "k/b"]);
    support::etcdctl_with_stdin(endpoint, &["txn"], b"\nput k/c 3\nput k/d 4\n\n\n");
    run(endpoint, &["put", "other", "x"]);
}

#[test]
fn etcdctl_watch_replays_history_and_follows_new_writes_like_etcd() {
    let keel = Keel::start();
    let etcd = Etcd::start();
    let mut outputs = Vec::new();
    for endpoint in [keel.endpoint(), etcd.endpoint()] {
        write_history(&endpoint);
        let watch = Background::start(
            &endpoint,
            &[
                "watch",
                "--prefix",
                "k/",
                "--rev",
                "2",
                "--prev-kv",
                "-w",
                "json",
            ],
            None,
        );
        watch.wait_for("\"Events\"", 1);
        run(&endpoint, &["put", "k/a", "3"]);
        run(&endpoint, &["del", "k/", "--prefix"]);
        run(&endpoint, &["put", "elsewhere", "no event"]);
        run(&endpoint, &["put", "k/z", "last"]);
        let text = watch.wait_for("\"Events\"", 4);
        outputs.push(normalize_watch_json(&text));
    }
    assert_eq!(
        outputs[0], outputs[1],
        "keel's watch output differs from etcd's"
    );
    assert_eq!(outputs[0].len(), 4);
}

#[test]
fn etcdctl_watch_simple_and_interactive_output_matches_etcd() {
    let keel = Keel::start();
    let etcd = Etcd::start();
    let mut outputs = Vec::new();
    for endpoint in [keel.endpoint(), etcd.endpoint()] {
        // One watcher per etcdctl process: two watchers in one process print in whatever order
        // their goroutines run, on etcd as on Keel.
        let plain = Background::start(&endpoint, &["watch", "a", "c"], None);
        let interactive =
            Background::start(&endpoint, &["watch", "-i"], Some(b"watch key --prev-kv\n"));
        // Let both watchers register before the writes.
        std::thread::sleep(Duration::from_millis(1500));
        run(&endpoint, &["put", "key", "v1"]);
        run(&endpoint, &["put", "b", "in range"]);
        run(&endpoint, &["put", "key", "v2"]);
        run(&endpoint, &["del", "key"]);
        plain.wait_for("in range", 1);
        interactive.wait_for("PUT", 2);
        let text = interactive.wait_for("DELETE", 1);
        outputs.push((plain.text(), text));
    }
    assert_eq!(outputs[0], outputs[1]);
}

#[test]
fn a_watch_from_a_compacted_revision_is_cancelled_like_etcd() {
    let keel = Keel::start();
    let etcd = Etcd::start();
    let mut outputs = Vec::new();
    for endpoint in [keel.endpoint(), etcd.endpoint()] {
        write_history(&endpoint);
        run(&endpoint, &["compact", "5"]);
        let output = etcdctl(&endpoint, &["watch", "k/a", "--rev", "3"]);
        outputs.push((output.status, output.stdout, output.stderr));
    }
    assert_eq!(outputs[0], outputs[1]);
    assert!(
        outputs[0]
            .2
            .contains("required revision has been compacted"),
        "{:?}",
        outputs[0]
    );
}

/// Lease ids are chosen by each server; replace them with a placeholder.
fn normalize_lease(text: &str, ids: &[String]) -> String {
    let mut text = text.to_string();
    for id in ids {
        text = text.replace(id.as_str(), "<id>");
    }
    text
}

#[test]
fn etcdctl_lease_commands_behave_like_etcd() {
    let keel = Keel::start();
    let etcd = Etcd::start();
    let mut outputs = Vec::new();
    for endpoint in [keel.endpoint(), etcd.endpoint()] {
        let mut transcript = Vec::new();
        let granted = run(&endpoint, &["lease", "grant", "100"]);
        let id = granted.split_whitespace().nth(1).unwrap().to_string();
        transcript.push(granted);
        transcript.push(run(&endpoint, &["put", "--lease", &id, "lk1", "v"]));
        transcript.push(run(&endpoint, &["put", "--lease", &id, "lk2", "v"]));
        transcript.push(run(&endpoint, &["put", "plain", "v"]));
        let json = run(
            &endpoint,
            &["lease", "timetolive", &id, "--keys", "-w", "json"],
        );
        let value: Value = serde_json::from_str(json.trim()).unwrap();
        // etcd lists a lease's keys in Go map order (random): compare them sorted.
        let mut keys: Vec<String> = value["keys"]
            .as_array()
            .map(|keys| keys.iter().map(|key| key.to_string()).collect())
            .unwrap_or_default();
        keys.sort();
        transcript.push(format!("granted {} keys {keys:?}", value["granted-ttl"]));
        transcript.push(run(&endpoint, &["lease", "list"]));
        transcript.push(run(&endpoint, &["lease", "keep-alive", "--once", &id]));
        transcript.push(
            run(&endpoint, &["get", "--prefix", "lk", "-w", "json"])
                .contains("\"lease\"")
                .to_string(),
        );
        transcript.push(run(&endpoint, &["lease", "revoke", &id]));
        transcript.push(run(&endpoint, &["get", "", "--prefix", "--keys-only"]));
        transcript.push(run(&endpoint, &["lease", "timetolive", &id]));
        for args in [
            &["lease", "revoke", "1234"][..],
            &["lease", "grant", "9000000001"],
            &["put", "--lease", "1234", "k", "v"],
            &["lease", "keep-alive", "--once", "1234"],
        ] {
            let output = etcdctl(&endpoint, args);
            let error = output
                .stderr
                .lines()
                .filter(|line| line.starts_with("Error"))
                .collect::<Vec<_>>()
                .join("\n");
            transcript.push(format!(
                "{args:?} -> {:?} {} {}",
                output.status, output.stdout, error
            ));
        }
        outputs.push(normalize_lease(&transcript.join("\n"), &[id]));
    }
    assert_eq!(outputs[0], outputs[1]);
}

async fn next_events(stream: &mut keel_client::WatchStream) -> Vec<(i64, Vec<u8>)> {
    loop {
        let response = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .expect("a watch response in time")
            .unwrap()
            .expect("the stream is open");
        if !response.events.is_empty() {
            return response
                .events
                .iter()
                .map(|event| {
                    let kv = event.kv.as_ref().unwrap();
                    (kv.mod_revision, kv.key.clone())
                })
                .collect();
        }
    }
}

fn put_op(key: String) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestPut(PutRequest {
            key: key.into_bytes(),
            value: b"v".to_vec(),
            ..Default::default()
        })),
    }
}

#[test]
fn watchers_see_every_event_once_in_order_with_each_transaction_whole() {
    let keel = Keel::start();
    let endpoint = format!("http://{}", keel.endpoint());
    support::runtime().block_on(async {
        let mut client = Client::connect(endpoint.clone()).await.unwrap();
        let mut stream = client.watch_stream().await.unwrap();
        stream
            .create(WatchCreateRequest {
                key: b"t/".to_vec(),
                range_end: b"t0".to_vec(),
                ..Default::default()
            })
            .await
            .unwrap();
        assert!(stream.next().await.unwrap().unwrap().created);

        // Four writers, each committing 50 transactions of three puts.
        let writers: Vec<_> = (0..4)
            .map(|writer| {
                let endpoint = endpoint.clone();
                tokio::spawn(async move {
                    let mut client = Client::connect(endpoint).await.unwrap();
                    for i in 0..50 {
                        let success = (0..3)
                            .map(|j| put_op(format!("t/{writer}/{i}/{j}")))
                            .collect();
                        client
                            .txn(TxnRequest {
                                compare: vec![],
                                success,
                                failure: vec![],
                            })
                            .await
                            .unwrap();
                    }
                })
            })
            .collect();
        let mut seen = Vec::new();
        while seen.len() < 600 {
            let events = next_events(&mut stream).await;
            // Each response carries whole revisions: three events for every revision in it.
            let mut revisions: Vec<i64> = events.iter().map(|(revision, _)| *revision).collect();
            revisions.dedup();
            for revision in &revisions {
                assert_eq!(
                    events.iter().filter(|(r, _)| r == revision).count(),
                    3,
                    "revision {revision} split"
                );
            }
            seen.extend(events);
        }
        for writer in writers {
            writer.await.unwrap();
        }
        assert_eq!(seen.len(), 600, "no event twice");
        assert!(
            seen.windows(2).all(|pair| pair[0].0 <= pair[1].0),
            "events in revision order"
        );
        let mut keys: Vec<_> = seen.iter().map(|(_, key)| key.clone()).collect();
        keys.sort();
        keys.dedup();
        assert_eq!(keys.len(), 600, "every key once");
    });
}

/// Guards against a fan-out that skips, repeats or mixes up watchers when one stream's
/// responses pass its batch (64 KiB) several times in one delivery, or when a watcher in the
/// middle needs its events in fragments: every watcher gets exactly its own events, once.
#[test]
fn many_watchers_on_one_stream_each_get_their_events_once() {
    use std::collections::BTreeMap;
    // Fragments at 16 KiB, so a transaction of two 7 KiB puts with previous values needs two.
    let keel = Keel::start_with(&["--max-request-bytes", "16384"]);
    let endpoint = format!("http://{}", keel.endpoint());
    support::runtime().block_on(async {
        let mut client = Client::connect(endpoint).await.unwrap();
        let big = vec![b'f'; 7 * 1024];
        for key in ["f/0", "f/1"] {
            client
                .put(key, big.clone(), PutOptions::new())
                .await
                .unwrap();
        }
        let mut stream = client.watch_stream().await.unwrap();
        // What each watcher is: 0 plain on "w", 1 on "w" with previous values, 2 on "x",
        // 3 on "f/" in fragments with previous values.
        let kinds: Vec<usize> = (0..300).map(|i| if i == 150 { 3 } else { i % 3 }).collect();
        for kind in &kinds {
            let (key, range_end) = match kind {
                0 | 1 => (b"w".to_vec(), Vec::new()),
                2 => (b"x".to_vec(), Vec::new()),
                _ => (b"f/".to_vec(), b"f0".to_vec()),
            };
            stream
                .create(WatchCreateRequest {
                    key,
                    range_end,
                    prev_kv: matches!(kind, 1 | 3),
                    fragment: *kind == 3,
                    ..Default::default()
                })
                .await
                .unwrap();
        }
        let mut kind_of = BTreeMap::new();
        while kind_of.len() < kinds.len() {
            let response = stream.next().await.unwrap().unwrap();
            assert!(response.created, "{response:?}");
            kind_of.insert(response.watch_id, kinds[kind_of.len()]);
        }

        // Each notification of "w" is ~1.1 KiB: 200 watchers' pass the batch three times.
        let value = vec![b'v'; 1024];
        let w1 = client
            .put("w", value.clone(), PutOptions::new())
            .await
            .unwrap();
        let w2 = client
            .put("w", value.clone(), PutOptions::new())
            .await
            .unwrap();
        let x = client
            .put("x", b"1".to_vec(), PutOptions::new())
            .await
            .unwrap();
        let txn = client
            .txn(TxnRequest {
                compare: vec![],
                success: vec![
                    request_op_put("f/0", big.clone()),
                    request_op_put("f/1", big.clone()),
                ],
                failure: vec![],
            })
            .await
            .unwrap();
        let revision =
            |header: Option<keel_client::proto::ResponseHeader>| header.unwrap().revision;
        let (w1, w2, x, txn) = (
            revision(w1.header),
            revision(w2.header),
            revision(x.header),
            revision(txn.header),
        );

        // Expected per watcher: (revision, key, has previous value), in order.
        let expected = |kind: usize| -> Vec<(i64, Vec<u8>, bool)> {
            match kind {
                0 => vec![(w1, b"w".to_vec(), false), (w2, b"w".to_vec(), false)],
                1 => vec![(w1, b"w".to_vec(), false), (w2, b"w".to_vec(), true)],
                2 => vec![(x, b"x".to_vec(), false)],
                _ => vec![(txn, b"f/0".to_vec(), true), (txn, b"f/1".to_vec(), true)],
            }
        };
        let total: usize = kind_of.values().map(|kind| expected(*kind).len()).sum();
        let mut seen: BTreeMap<i64, Vec<(i64, Vec<u8>, bool)>> = BTreeMap::new();
        let mut fragments = 0;
        let mut received = 0;
        while received < total {
            let response = tokio::time::timeout(Duration::from_secs(10), stream.next())
                .await
                .expect("a watch response in time")
                .unwrap()
                .expect("the stream is open");
            if response.fragment {
                fragments += 1;
            }
            for event in &response.events {
                let kv = event.kv.as_ref().unwrap();
                seen.entry(response.watch_id).or_default().push((
                    kv.mod_revision,
                    kv.key.clone(),
                    event.prev_kv.is_some(),
                ));
                received += 1;
            }
        }
        for (id, kind) in &kind_of {
            assert_eq!(
                seen.get(id).cloned().unwrap_or_default(),
                expected(*kind),
                "watcher {id} (kind {kind})"
            );
        }
        assert!(
            fragments >= 1,
            "the fragmenting watcher got its events in parts"
        );
    });
}

fn request_op_put(key: &str, value: Vec<u8>) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestPut(PutRequest {
            key: key.as_bytes().to_vec(),
            value,
            ..Default::default()
        })),
    }
}

#[test]
fn a_client_that_stops_reading_stalls_no_other_watcher_and_catches_up_later() {
    let keel = Keel::start();
    let endpoint = format!("http://{}", keel.endpoint());
    support::runtime().block_on(async {
        let mut client = Client::connect(endpoint.clone()).await.unwrap();
        let watch = |client: &mut Client| {
            let mut client = client.clone();
            async move {
                let mut stream = client.watch_stream().await.unwrap();
                stream
                    .create(WatchCreateRequest {
                        key: b"s/".to_vec(),
                        range_end: b"s0".to_vec(),
                        ..Default::default()
                    })
                    .await
                    .unwrap();
                assert!(stream.next().await.unwrap().unwrap().created);
                stream
            }
        };
        let mut slow = watch(&mut client).await;
        let mut fast = watch(&mut client).await;
        // 2,000 puts of 1 KiB with nobody reading the slow stream: far more than its queue.
        let value = vec![b'x'; 1024];
        let mut fast_seen = 0;
        for i in 0..2000 {
            client
                .put(format!("s/{i:04}"), value.clone(), PutOptions::new())
                .await
                .unwrap();
            if i % 100 == 99 {
                // The fast watcher keeps up while the slow one doesn't read.
                while fast_seen < i + 1 {
                    fast_seen += next_events(&mut fast).await.len();
                }
            }
        }
        assert_eq!(fast_seen, 2000);
        let mut slow_seen = Vec::new();
        while slow_seen.len() < 2000 {
            slow_seen.extend(next_events(&mut slow).await);
        }
        let keys: Vec<String> = slow_seen
            .iter()
            .map(|(_, key)| String::from_utf8(key.clone()).unwrap())
            .collect();
        let expected: Vec<String> = (0..2000).map(|i| format!("s/{i:04}")).collect();
        assert_eq!(
            keys, expected,
            "the slow watcher gets every event, in order, once"
        );
    });
}

#[test]
fn bad_watch_and_lease_requests_get_etcds_answers() {
    let keel = Keel::start();
    let endpoint = format!("http://{}", keel.endpoint());
    support::runtime().block_on(async {
        let mut client = Client::connect(endpoint).await.unwrap();
        let mut stream = client.watch_stream().await.unwrap();
        // key after range_end: created and cancelled at once.
        stream
            .create(WatchCreateRequest {
                key: b"b".to_vec(),
                range_end: b"a".to_vec(),
                ..Default::default()
            })
            .await
            .unwrap();
        let refused = stream.next().await.unwrap().unwrap();
        assert!(refused.created && refused.canceled, "{refused:?}");
        assert_eq!(refused.cancel_reason, "mvcc: watcher range is empty");
        // A duplicate client-chosen id.
        stream
            .create(WatchCreateRequest {
                key: b"k".to_vec(),
                watch_id: 7,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(stream.next().await.unwrap().unwrap().watch_id, 7);
        stream
            .create(WatchCreateRequest {
                key: b"k".to_vec(),
                watch_id: 7,
                ..Default::default()
            })
            .await
            .unwrap();
        let duplicate = stream.next().await.unwrap().unwrap();
        assert!(duplicate.canceled);
        assert_eq!(
            duplicate.cancel_reason,
            "mvcc: duplicate watch ID provided on the WatchStream"
        );
        // Cancelling an unknown watcher is ignored; the stream still works.
        stream.cancel(99).await.unwrap();
        stream.cancel(7).await.unwrap();
        let cancelled = stream.next().await.unwrap().unwrap();
        assert!(
            cancelled.canceled && cancelled.watch_id == 7,
            "{cancelled:?}"
        );
        stream.request_progress().await.unwrap();
        let progress = stream.next().await.unwrap().unwrap();
        assert_eq!(progress.watch_id, -1);

        let mut keeper = client.lease_keeper().await.unwrap();
        assert_eq!(
            keeper.keep_alive(424242).await.unwrap().ttl,
            0,
            "unknown lease: TTL 0"
        );
        let error = client.lease_grant(9_000_000_001, 0).await.unwrap_err();
        assert_eq!(error.to_string(), "etcdserver: too large lease TTL");
        let granted = client.lease_grant(1, 77).await.unwrap();
        assert_eq!(
            (granted.id, granted.ttl),
            (77, 2),
            "TTL raised to the minimum"
        );
        let error = client.lease_grant(10, 77).await.unwrap_err();
        assert_eq!(error.to_string(), "etcdserver: lease already exists");
        assert_eq!(
            client.lease_time_to_live(5555, false).await.unwrap().ttl,
            -1
        );
        let error = client
            .put("k", "v", PutOptions::new().with_lease(5555))
            .await
            .unwrap_err();
        assert_eq!(error.to_string(), "etcdserver: requested lease not found");
    });
}

#[test]
fn a_registered_service_disappears_within_ttl_after_its_process_is_killed() {
    let mut keel = Keel::start();
    let endpoint = keel.endpoint();
    let runtime = support::runtime();
    // The service: a lease of 5 s, its address under it, and a keep-alive process.
    let granted = run(&endpoint, &["lease", "grant", "5"]);
    let id = granted.split_whitespace().nth(1).unwrap().to_string();
    let mut keeper = Background::start(&endpoint, &["lease", "keep-alive", &id], None);
    keeper.wait_for("keepalived", 1);

    let url = format!("http://{endpoint}");
    let (deleted_after, revision) = runtime.block_on(async {
        let mut client = Client::connect(url).await.unwrap();
        let mut stream = client.watch_stream().await.unwrap();
        stream
            .create(WatchCreateRequest {
                key: b"services/api/".to_vec(),
                range_end: b"services/api0".to_vec(),
                ..Default::default()
            })
            .await
            .unwrap();
        assert!(stream.next().await.unwrap().unwrap().created);
        let lease = i64::from_str_radix(&id, 16).unwrap();
        client
            .put(
                "services/api/10.0.0.1:8080",
                "up",
                PutOptions::new().with_lease(lease),
            )
            .await
            .unwrap();
        let put = stream.next().await.unwrap().unwrap();
        assert_eq!(put.events[0].r#type, 0, "the watcher sees the PUT");
        // Past one TTL with keep-alives running: still registered.
        tokio::time::sleep(Duration::from_secs(6)).await;
        let found = client
            .get("services/api/", GetOptions::new().with_prefix())
            .await
            .unwrap();
        assert_eq!(found.count, 1, "kept alive past its TTL");

        keeper.kill_9();
        let killed = Instant::now();
        let deleted = tokio::time::timeout(Duration::from_secs(20), stream.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(deleted.events[0].r#type, 1, "the watcher sees the DELETE");
        (killed.elapsed(), deleted.header.unwrap().revision)
    });
    eprintln!("registration deleted {deleted_after:?} after the service was killed");
    assert!(
        deleted_after <= Duration::from_secs(7),
        "deleted after {deleted_after:?}, more than TTL + 2 s"
    );
    assert!(revision > 0);

    // Leases survive a restart.
    let granted = run(&endpoint, &["lease", "grant", "600"]);
    let id = granted.split_whitespace().nth(1).unwrap().to_string();
    keel.kill_9();
    keel.restart();
    assert!(run(&endpoint, &["lease", "list"]).contains(&id));
}

#[test]
fn txn_lease_compares_see_the_key_lease() {
    let keel = Keel::start();
    let endpoint = format!("http://{}", keel.endpoint());
    support::runtime().block_on(async {
        let mut client = Client::connect(endpoint).await.unwrap();
        client.lease_grant(60, 500).await.unwrap();
        client
            .put("leased", "v", PutOptions::new().with_lease(500))
            .await
            .unwrap();
        let compare = |lease| Compare {
            result: compare::CompareResult::Equal as i32,
            target: compare::CompareTarget::Lease as i32,
            key: b"leased".to_vec(),
            target_union: Some(compare::TargetUnion::Lease(lease)),
            range_end: vec![],
        };
        let holds = client
            .txn(TxnRequest {
                compare: vec![compare(500)],
                success: vec![],
                failure: vec![],
            })
            .await
            .unwrap();
        assert!(holds.succeeded);
        let other = client
            .txn(TxnRequest {
                compare: vec![compare(501)],
                success: vec![],
                failure: vec![],
            })
            .await
            .unwrap();
        assert!(!other.succeeded);
    });
}

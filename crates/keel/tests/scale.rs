//! Scale: 10,000 watchers over 100 streams and 10,000 leases kept alive, on one member, with no
//! event missed. Slow, so it runs only with `KEEL_SLOW_TESTS=1` (CI sets it); it prints the
//! server's memory for the closing notes.
//!
//! Guards against: per-watcher costs that explode with watcher count, lost events under load,
//! and memory that grows without bound.

mod support;

use std::time::{Duration, Instant};

use keel_client::proto::WatchCreateRequest;
use keel_client::{prefix_end, Client, PutOptions};
use support::Keel;

const STREAMS: usize = 100;
const WATCHERS_PER_STREAM: usize = 100;
const LEASES: usize = 10_000;

fn slow_tests_enabled() -> bool {
    std::env::var("KEEL_SLOW_TESTS").is_ok_and(|value| value == "1")
}

#[test]
fn ten_thousand_watchers_and_ten_thousand_leases_on_one_member() {
    if !slow_tests_enabled() {
        eprintln!("set KEEL_SLOW_TESTS=1 to run the scale test (CI does)");
        return;
    }
    let keel = Keel::start();
    let endpoint = format!("http://{}", keel.endpoint());
    let rss_idle_kib = keel.rss_kib();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let client = Client::connect(endpoint.clone()).await.unwrap();
        // 100 streams, each with 100 single-key watchers and one prefix watcher on its keys.
        let started = Instant::now();
        let mut streams = Vec::new();
        for stream_index in 0..STREAMS {
            let mut stream = client.clone().watch_stream().await.unwrap();
            for watcher in 0..WATCHERS_PER_STREAM {
                let key = format!("scale/{stream_index:03}/{watcher:03}").into_bytes();
                stream.create(WatchCreateRequest { key, ..Default::default() }).await.unwrap();
            }
            let prefix = format!("scale/{stream_index:03}/").into_bytes();
            let range_end = prefix_end(&prefix);
            stream.create(WatchCreateRequest { key: prefix, range_end, ..Default::default() }).await.unwrap();
            for _ in 0..=WATCHERS_PER_STREAM {
                assert!(stream.next().await.unwrap().unwrap().created);
            }
            streams.push(stream);
        }
        eprintln!("{} watchers created in {:?}", STREAMS * (WATCHERS_PER_STREAM + 1), started.elapsed());

        // One put per watched key, from 8 writers.
        let started = Instant::now();
        let writers: Vec<_> = (0..8)
            .map(|writer| {
                let mut client = client.clone();
                tokio::spawn(async move {
                    for index in (writer..STREAMS * WATCHERS_PER_STREAM).step_by(8) {
                        let key = format!("scale/{:03}/{:03}", index / WATCHERS_PER_STREAM, index % WATCHERS_PER_STREAM);
                        client.put(key, "v", PutOptions::new()).await.unwrap();
                    }
                })
            })
            .collect();
        // Every stream must see each of its keys twice: once for its own watcher, once for the
        // prefix watcher. Read all streams concurrently.
        let readers: Vec<_> = streams
            .into_iter()
            .enumerate()
            .map(|(stream_index, mut stream)| {
                tokio::spawn(async move {
                    let mut per_watcher = std::collections::HashMap::<i64, usize>::new();
                    let mut events = 0;
                    while events < 2 * WATCHERS_PER_STREAM {
                        let response = tokio::time::timeout(Duration::from_secs(60), stream.next())
                            .await
                            .unwrap_or_else(|_| panic!("stream {stream_index} stalled after {events} events"))
                            .unwrap()
                            .unwrap();
                        events += response.events.len();
                        *per_watcher.entry(response.watch_id).or_default() += response.events.len();
                    }
                    assert_eq!(events, 2 * WATCHERS_PER_STREAM, "stream {stream_index}: no extra events");
                    assert_eq!(per_watcher.len(), WATCHERS_PER_STREAM + 1);
                    let prefix_watcher = WATCHERS_PER_STREAM as i64;
                    assert_eq!(per_watcher[&prefix_watcher], WATCHERS_PER_STREAM);
                    assert!(per_watcher.iter().all(|(id, count)| *id == prefix_watcher || *count == 1));
                    stream
                })
            })
            .collect();
        for writer in writers {
            writer.await.unwrap();
        }
        let mut streams = Vec::new();
        for reader in readers {
            streams.push(reader.await.unwrap());
        }
        eprintln!("10,000 puts delivered to 10,100 watchers in {:?}", started.elapsed());

        // 10,000 leases, then keep every one alive over 10 streams.
        let started = Instant::now();
        let grants: Vec<_> = (0..10)
            .map(|granter| {
                let mut client = client.clone();
                tokio::spawn(async move {
                    for index in 0..LEASES / 10 {
                        let id = (granter * LEASES / 10 + index + 1) as i64;
                        client.lease_grant(600, id).await.unwrap();
                    }
                })
            })
            .collect();
        for grant in grants {
            grant.await.unwrap();
        }
        let keepers: Vec<_> = (0..10)
            .map(|keeper_index| {
                let mut client = client.clone();
                tokio::spawn(async move {
                    let mut keeper = client.lease_keeper().await.unwrap();
                    for index in 0..LEASES / 10 {
                        let id = (keeper_index * LEASES / 10 + index + 1) as i64;
                        assert_eq!(keeper.keep_alive(id).await.unwrap().ttl, 600, "lease {id} kept alive");
                    }
                })
            })
            .collect();
        for keeper in keepers {
            keeper.await.unwrap();
        }
        assert_eq!(client.clone().lease_leases().await.unwrap().leases.len(), LEASES);
        eprintln!("10,000 leases granted and kept alive in {:?}", started.elapsed());
        let rss_loaded_kib = keel.rss_kib();
        eprintln!(
            "server memory: {} MiB idle, {} MiB with 10,100 watchers, 10,000 keys and 10,000 leases",
            rss_idle_kib / 1024,
            rss_loaded_kib / 1024
        );
        drop(streams);
    });
}

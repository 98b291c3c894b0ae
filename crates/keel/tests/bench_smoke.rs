//! The benchmark tool (`keel-bench`) drives a real Keel and a real etcd through every workload,
//! with small totals: every request succeeds and the counts add up. Timings are never asserted
//! here; they belong in `keel-bench compare` and BENCHMARKS.md.
//!
//! Guards against: a benchmark that silently measures failures (errors counted as fast
//! requests), loops that issue more or fewer requests than asked, and workloads that hang on
//! one server's stream behaviour (grpc-go sends a stream's headers only with its first message).

mod support;

use std::time::Duration;

use keel_bench::{run, run_put, Config, Consistency, Report, Workload};
use support::{Etcd, Keel};

fn config(endpoint: String, total: u64) -> Config {
    Config {
        endpoints: vec![endpoint],
        conns: 2,
        clients: 4,
        total: Some(total),
        duration: Some(Duration::from_secs(60)),
        key_size: 8,
        val_size: 32,
        key_space_size: 50,
        sequential_keys: false,
        request_timeout: Duration::from_secs(10),
    }
}

fn assert_clean(report: &Report, succeeded: u64) {
    assert!(report.errors.is_empty(), "{}", report.to_text());
    assert_eq!(report.succeeded, succeeded, "{}", report.to_text());
    assert_eq!(report.latency.count, succeeded, "{}", report.to_text());
}

/// Every workload, small, against `endpoint`.
fn every_workload(endpoint: &str) {
    support::runtime().block_on(async {
        let report = run_put(&config(endpoint.to_owned(), 200)).await.unwrap();
        assert_clean(&report, 200);
        assert_eq!(report.workload, "put");

        for consistency in [Consistency::Linearizable, Consistency::Serializable] {
            let report = run(
                &Workload::Range { consistency },
                &config(endpoint.to_owned(), 100),
            )
            .await
            .unwrap();
            assert_clean(&report, 100);
        }

        let report = run(
            &Workload::TxnPut { txn_ops: 3 },
            &Config {
                sequential_keys: true,
                ..config(endpoint.to_owned(), 60)
            },
        )
        .await
        .unwrap();
        assert_clean(&report, 60);

        let report = run(&Workload::LeaseKeepalive, &config(endpoint.to_owned(), 80))
            .await
            .unwrap();
        assert_clean(&report, 80);

        // 2 streams × 3 watchers, 10 puts: 60 events.
        let watch = Workload::WatchLatency {
            streams: 2,
            watchers_per_stream: 3,
            put_total: 10,
            put_rate: 200.0,
        };
        let report = run(&watch, &config(endpoint.to_owned(), 10)).await.unwrap();
        assert_clean(&report, 60);
        assert_eq!(report.breakdown["put"].count, 10);
        // One first and one last event per put, the first no later than the last.
        let (first, last) = (
            &report.breakdown["first event"],
            &report.breakdown["last event"],
        );
        assert_eq!((first.count, last.count), (10, 10));
        assert!(first.p50_ms <= last.p50_ms && first.max_ms <= last.max_ms);

        let mixed = Workload::Mixed {
            read_ratio: 0.5,
            consistency: Consistency::Linearizable,
        };
        let report = run(&mixed, &config(endpoint.to_owned(), 120))
            .await
            .unwrap();
        assert_clean(&report, 120);
        assert_eq!(
            report.breakdown["put"].count + report.breakdown["range"].count,
            120
        );
    });
}

#[test]
fn every_workload_runs_cleanly_against_keel() {
    let keel = Keel::start();
    every_workload(&keel.endpoint());
}

#[test]
fn every_workload_runs_cleanly_against_etcd() {
    let etcd = Etcd::start();
    every_workload(&etcd.endpoint());
}

#[test]
fn a_duration_bounds_a_run_without_a_total() {
    let keel = Keel::start();
    let report = support::runtime().block_on(async {
        run_put(&Config {
            total: None,
            duration: Some(Duration::from_millis(300)),
            ..config(keel.endpoint(), 0)
        })
        .await
        .unwrap()
    });
    assert!(report.errors.is_empty(), "{}", report.to_text());
    assert!(report.succeeded > 0, "{}", report.to_text());
}

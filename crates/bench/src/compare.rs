//! The side-by-side comparison: a three-member etcd and a three-member Keel on loopback, each
//! workload run on one then the other, for several rounds (the order alternates by round: Keel
//! first in even rounds, etcd first in odd ones), then medians and Keel/etcd ratios; plus
//! restart-to-serving time and memory with many keys.
//!
//! Before each run both clusters must have gone quiet (see [`QUIET_CPU_SECONDS`]).
//!
//! Ratios are medians of the per-round ratios (each round's Keel number over the same round's
//! etcd number), so drift of a shared machine between rounds cancels out as far as it can.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

use crate::cluster::{Flavor, LocalCluster, Ports};
use crate::config::{Config, Consistency};
use crate::report::{median, Report};
use crate::workload::{run, Workload};
use crate::Error;

/// What `keel-bench compare` was asked to do.
#[derive(Debug, Clone)]
pub struct CompareOptions {
    pub keel: PathBuf,
    pub etcd: PathBuf,
    pub rounds: usize,
    pub quick: bool,
    /// Keys loaded for the restart and memory measurement (0: skip it).
    pub restart_keys: u64,
    /// Restarts measured per system.
    pub restart_rounds: usize,
    /// Only the cases whose names contain one of these (all when empty).
    pub only: Vec<String>,
    pub json_out: Option<PathBuf>,
}

/// Members per cluster.
const CLUSTER_SIZE: usize = 3;
const KEY_SIZE: usize = 8;
const VAL_SIZE: usize = 256;
/// Keys the read and write workloads choose from (all written before the first round).
const KEY_SPACE: u64 = 10_000;
/// Puts per txn when loading keys (etcd's default `--max-txn-ops` is 128).
const LOAD_TXN_OPS: u64 = 128;
/// Before each run both clusters must have gone quiet: less than this much CPU (all members
/// together) over one [`QUIET_WINDOW`], 10 % of one core. Then a run is not measured against
/// the trailing work of the run before it (Go's garbage collector and bbolt's periodic commit
/// after etcd's runs, a durable store commit after Keel's).
const QUIET_CPU_SECONDS: f64 = 0.02;
const QUIET_WINDOW: Duration = Duration::from_millis(200);
/// A cluster that does not go quiet within this long is measured against anyway.
const SETTLE_MAX: Duration = Duration::from_secs(3);

/// One workload as the comparison runs it.
#[derive(Debug, Clone)]
struct Case {
    name: &'static str,
    workload: Workload,
    clients: usize,
    conns: usize,
    total: u64,
    /// Only the leader's endpoint (single-client latency without a forwarding hop).
    leader_only: bool,
}

fn cases(quick: bool) -> Vec<Case> {
    let scale = |full: u64, quick_total: u64| if quick { quick_total } else { full };
    let linearizable = Consistency::Linearizable;
    vec![
        Case {
            name: "put 1 client (leader)",
            workload: Workload::Put,
            clients: 1,
            conns: 1,
            total: scale(2_000, 300),
            leader_only: true,
        },
        Case {
            name: "put 64 clients",
            workload: Workload::Put,
            clients: 64,
            conns: 8,
            total: scale(20_000, 3_000),
            leader_only: false,
        },
        Case {
            name: "range linearizable 64 clients",
            workload: Workload::Range {
                consistency: linearizable,
            },
            clients: 64,
            conns: 8,
            total: scale(20_000, 4_000),
            leader_only: false,
        },
        Case {
            name: "range serializable 64 clients",
            workload: Workload::Range {
                consistency: Consistency::Serializable,
            },
            clients: 64,
            conns: 8,
            total: scale(20_000, 4_000),
            leader_only: false,
        },
        Case {
            name: "txn-put (4 puts) 64 clients",
            workload: Workload::TxnPut { txn_ops: 4 },
            clients: 64,
            conns: 8,
            total: scale(10_000, 1_500),
            leader_only: false,
        },
        Case {
            name: "lease-keepalive 64 clients",
            workload: Workload::LeaseKeepalive,
            clients: 64,
            conns: 8,
            total: scale(20_000, 3_000),
            leader_only: false,
        },
        Case {
            name: "watch 1000 watchers (event latency)",
            workload: Workload::WatchLatency {
                streams: 20,
                watchers_per_stream: 50,
                put_total: scale(100, 30),
                put_rate: 50.0,
            },
            clients: 1,
            conns: 20,
            total: scale(100, 30),
            leader_only: false,
        },
        Case {
            name: "mixed 80% linearizable reads 64 clients",
            workload: Workload::Mixed {
                read_ratio: 0.8,
                consistency: linearizable,
            },
            clients: 64,
            conns: 8,
            total: scale(20_000, 3_000),
            leader_only: false,
        },
    ]
}

/// One run of one case on one system.
#[derive(Debug, Clone, Serialize)]
pub struct RunRecord {
    pub case: String,
    pub system: String,
    pub round: usize,
    pub report: Report,
    /// Server CPU (user + system, all members) during the run.
    pub server_cpu_seconds: f64,
    /// Server RSS (all members) right after the run.
    pub server_rss_kib: u64,
}

impl RunRecord {
    fn cpu_seconds_per_1000(&self) -> f64 {
        let requests = self.report.succeeded + self.report.error_count();
        if requests == 0 {
            return f64::NAN;
        }
        self.server_cpu_seconds * 1000.0 / requests as f64
    }
}

/// The restart and memory measurement for one system.
#[derive(Debug, Clone, Serialize)]
pub struct RestartRecord {
    pub system: String,
    pub keys: u64,
    pub load_seconds: f64,
    pub load_errors: u64,
    pub rss_kib_after_load: u64,
    pub disk_bytes_after_load: u64,
    /// From starting the stopped members until a linearizable count sees every key.
    pub restart_seconds: Vec<f64>,
    /// From SIGTERM to every member until all have exited (killed at `STOP_TIMEOUT`).
    pub stop_seconds: Vec<f64>,
    pub rss_kib_after_restart: Vec<u64>,
}

/// Everything one comparison measured.
#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    pub quick: bool,
    pub rounds: usize,
    pub runs: Vec<RunRecord>,
    pub restarts: Vec<RestartRecord>,
    pub table: String,
}

/// Runs the comparison, prints progress on stderr and returns the results (with the tables in
/// Markdown in `table`).
pub async fn compare(options: &CompareOptions) -> Result<Comparison, Error> {
    let started = std::time::Instant::now();
    // Before anything else, while the disk is quiet: the floor under every durable write.
    let fsync = crate::cluster::fsync_latency(std::env::temp_dir().as_path(), 200)?;
    let mut ports = Ports::new();
    let selected: Vec<Case> = cases(options.quick)
        .into_iter()
        .filter(|case| {
            options.only.is_empty() || options.only.iter().any(|part| case.name.contains(part))
        })
        .collect();
    let mut runs = Vec::new();
    if !selected.is_empty() && options.rounds > 0 {
        eprintln!("starting a {CLUSTER_SIZE}-member etcd and a {CLUSTER_SIZE}-member keel");
        let etcd =
            LocalCluster::start(Flavor::Etcd, &options.etcd, CLUSTER_SIZE, &mut ports).await?;
        let keel =
            LocalCluster::start(Flavor::Keel, &options.keel, CLUSTER_SIZE, &mut ports).await?;
        for cluster in [&etcd, &keel] {
            load(cluster, KEY_SPACE, 8).await?;
        }
        for round in 0..options.rounds {
            for case in &selected {
                let order = if round % 2 == 0 {
                    [&keel, &etcd]
                } else {
                    [&etcd, &keel]
                };
                for cluster in order {
                    for quiet in [&keel, &etcd] {
                        settle(quiet).await?;
                    }
                    let record = run_case(cluster, case, round).await?;
                    eprint!(
                        "[{:>5.1}s] round {round} {:<4} {}",
                        started.elapsed().as_secs_f64(),
                        record.system,
                        record.report.to_text()
                    );
                    runs.push(record);
                }
            }
        }
    }
    let mut restarts = Vec::new();
    let mut restart_failures = Vec::new();
    if options.restart_keys > 0 {
        for (flavor, binary) in [(Flavor::Etcd, &options.etcd), (Flavor::Keel, &options.keel)] {
            // A failure here must not throw away the rounds measured above.
            match measure_restart(
                flavor,
                binary,
                options.restart_keys,
                options.restart_rounds,
                &mut ports,
            )
            .await
            {
                Ok(record) => {
                    eprintln!("[{:>5.1}s] {record:?}", started.elapsed().as_secs_f64());
                    restarts.push(record);
                }
                Err(error) => {
                    eprintln!("{}: restart measurement failed: {error}", flavor.name());
                    restart_failures.push(format!("{}: {error}", flavor.name()));
                }
            }
        }
    }
    let mut table = format!(
        "fsync of a 4 KiB write in {} (200 samples): p50 {:.3} ms, p99 {:.3} ms\n\n",
        std::env::temp_dir().display(),
        fsync.p50_ms,
        fsync.p99_ms
    );
    table.push_str(&tables(&selected, &runs, &restarts));
    for failure in &restart_failures {
        let first_line = failure.lines().next().unwrap_or_default();
        let _ = writeln!(table, "\nrestart measurement failed: {first_line}");
    }
    let comparison = Comparison {
        quick: options.quick,
        rounds: options.rounds,
        runs,
        restarts,
        table,
    };
    if let Some(path) = &options.json_out {
        let json = serde_json::to_string_pretty(&comparison).expect("results serialize");
        std::fs::write(path, json)
            .map_err(|error| Error::Cluster(format!("{}: {error}", path.display())))?;
    }
    Ok(comparison)
}

/// Waits (at most [`SETTLE_MAX`]) until `cluster` uses less than [`QUIET_CPU_SECONDS`] over a
/// [`QUIET_WINDOW`].
async fn settle(cluster: &LocalCluster) -> Result<(), Error> {
    let started = std::time::Instant::now();
    let mut before = cluster.cpu_seconds()?;
    while started.elapsed() < SETTLE_MAX {
        tokio::time::sleep(QUIET_WINDOW).await;
        let now = cluster.cpu_seconds()?;
        if now - before < QUIET_CPU_SECONDS {
            return Ok(());
        }
        before = now;
    }
    eprintln!(
        "{} did not go quiet within {SETTLE_MAX:?}; measuring anyway",
        cluster.flavor().name()
    );
    Ok(())
}

async fn run_case(cluster: &LocalCluster, case: &Case, round: usize) -> Result<RunRecord, Error> {
    let endpoints = cluster.endpoints_leader_first().await?;
    let endpoints = if case.leader_only {
        endpoints[..1].to_vec()
    } else {
        endpoints
    };
    let config = Config {
        endpoints,
        conns: case.conns,
        clients: case.clients,
        total: Some(case.total),
        // A bound on a run that goes badly, far above what any run should take.
        duration: Some(Duration::from_secs(120)),
        key_size: KEY_SIZE,
        val_size: VAL_SIZE,
        key_space_size: KEY_SPACE,
        sequential_keys: false,
        request_timeout: Duration::from_secs(10),
    };
    let cpu_before = cluster.cpu_seconds()?;
    let report = run(&case.workload, &config).await?;
    let cpu_after = cluster.cpu_seconds()?;
    Ok(RunRecord {
        case: case.name.to_owned(),
        system: cluster.flavor().name().to_owned(),
        round,
        report,
        server_cpu_seconds: cpu_after - cpu_before,
        server_rss_kib: cluster.rss_kib()?,
    })
}

/// Writes keys `0..keys` with `VAL_SIZE`-byte values, `LOAD_TXN_OPS` per txn.
async fn load(cluster: &LocalCluster, keys: u64, clients: usize) -> Result<Report, Error> {
    let txn_ops = LOAD_TXN_OPS.min(keys);
    let config = Config {
        endpoints: cluster.endpoints_leader_first().await?,
        conns: clients.min(4),
        clients,
        total: Some(keys.div_ceil(txn_ops)),
        duration: None,
        key_size: KEY_SIZE,
        val_size: VAL_SIZE,
        key_space_size: keys,
        sequential_keys: true,
        request_timeout: Duration::from_secs(30),
    };
    let report = run(&Workload::TxnPut { txn_ops }, &config).await?;
    if report.error_count() > 0 {
        eprintln!(
            "{}: loading {keys} keys: {} txns failed: {:?}",
            cluster.flavor().name(),
            report.error_count(),
            report.errors
        );
    }
    Ok(report)
}

async fn measure_restart(
    flavor: Flavor,
    binary: &std::path::Path,
    keys: u64,
    restart_rounds: usize,
    ports: &mut Ports,
) -> Result<RestartRecord, Error> {
    eprintln!(
        "{}: loading {keys} keys for the restart measurement",
        flavor.name()
    );
    let mut cluster = LocalCluster::start(flavor, binary, CLUSTER_SIZE, ports).await?;
    let report = load(&cluster, keys, 16).await?;
    // Let background commits (etcd's backend batches every 100 ms) settle before measuring.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_kib_after_load = cluster.rss_kib()?;
    let disk_bytes_after_load = cluster.disk_bytes();
    let mut restart_seconds = Vec::new();
    let mut stop_seconds = Vec::new();
    let mut rss_kib_after_restart = Vec::new();
    let keys_min = i64::try_from(keys).unwrap_or(i64::MAX);
    for _ in 0..restart_rounds {
        let stopping = std::time::Instant::now();
        cluster.stop();
        let stopped = stopping.elapsed().as_secs_f64();
        eprintln!("{}: stopped in {stopped:.1} s", flavor.name());
        stop_seconds.push(stopped);
        cluster.spawn_all()?;
        let took = cluster
            .wait_serving(Duration::from_secs(300), keys_min)
            .await?;
        eprintln!(
            "{}: serving {keys} keys {:.2} s after the restart",
            flavor.name(),
            took.as_secs_f64()
        );
        restart_seconds.push(took.as_secs_f64());
        tokio::time::sleep(Duration::from_secs(1)).await;
        rss_kib_after_restart.push(cluster.rss_kib()?);
    }
    // Dropping the cluster kills its members: no need to wait for another clean stop.
    drop(cluster);
    Ok(RestartRecord {
        system: flavor.name().to_owned(),
        keys,
        load_seconds: report.elapsed_seconds,
        load_errors: report.error_count(),
        rss_kib_after_load,
        disk_bytes_after_load,
        restart_seconds,
        stop_seconds,
        rss_kib_after_restart,
    })
}

/// Per case: the median of a metric on each system and the median of the per-round ratios.
struct Medians {
    etcd: Option<f64>,
    keel: Option<f64>,
    ratio: Option<f64>,
}

fn medians(runs: &[RunRecord], case: &str, metric: impl Fn(&RunRecord) -> f64) -> Medians {
    let of = |system: &str| -> BTreeMap<usize, f64> {
        runs.iter()
            .filter(|run| run.case == case && run.system == system)
            .map(|run| (run.round, metric(run)))
            .collect()
    };
    let etcd = of("etcd");
    let keel = of("keel");
    let ratios: Vec<f64> = keel
        .iter()
        .filter_map(|(round, keel)| etcd.get(round).map(|etcd| keel / etcd))
        .collect();
    Medians {
        etcd: median(&etcd.values().copied().collect::<Vec<_>>()),
        keel: median(&keel.values().copied().collect::<Vec<_>>()),
        ratio: median(&ratios),
    }
}

fn number(value: Option<f64>) -> String {
    match value {
        None => "–".to_owned(),
        Some(value) if value.abs() >= 100.0 => format!("{value:.0}"),
        Some(value) if value.abs() >= 10.0 => format!("{value:.1}"),
        Some(value) => format!("{value:.2}"),
    }
}

fn ratio(value: Option<f64>) -> String {
    value.map_or_else(|| "–".to_owned(), |value| format!("{value:.2}×"))
}

/// A target on a ratio: met when the ratio is at least (`higher_is_better`) or at most the goal.
fn verdict(value: Option<f64>, goal: f64, higher_is_better: bool) -> &'static str {
    match value {
        None => "not measured",
        Some(value)
            if (higher_is_better && value >= goal) || (!higher_is_better && value <= goal) =>
        {
            "**met**"
        }
        Some(_) => "not met",
    }
}

/// The comparison's tables in Markdown: throughput and latency; server resources; restart and
/// memory with many keys; and the targets.
fn tables(cases: &[Case], runs: &[RunRecord], restarts: &[RestartRecord]) -> String {
    let mut out = String::new();
    let cases = if runs.is_empty() { &[][..] } else { cases };
    let _ = writeln!(
        out,
        "| workload | etcd req/s | keel req/s | keel/etcd | etcd p50 ms | keel p50 ms | keel/etcd | etcd p99 ms | keel p99 ms | keel/etcd | etcd p99.9 ms | keel p99.9 ms |"
    );
    let _ = writeln!(
        out,
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for case in cases {
        let throughput = medians(runs, case.name, |run| run.report.throughput_per_second);
        let p50 = medians(runs, case.name, |run| run.report.latency.p50_ms);
        let p99 = medians(runs, case.name, |run| run.report.latency.p99_ms);
        let p999 = medians(runs, case.name, |run| run.report.latency.p999_ms);
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            case.name,
            number(throughput.etcd),
            number(throughput.keel),
            ratio(throughput.ratio),
            number(p50.etcd),
            number(p50.keel),
            ratio(p50.ratio),
            number(p99.etcd),
            number(p99.keel),
            ratio(p99.ratio),
            number(p999.etcd),
            number(p999.keel),
        );
    }
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "| workload | etcd CPU s/1k req | keel CPU s/1k req | keel/etcd | etcd RSS MiB | keel RSS MiB | keel/etcd | etcd errors | keel errors |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut errors_where_etcd_has_none = Vec::new();
    for case in cases {
        let cpu = medians(runs, case.name, RunRecord::cpu_seconds_per_1000);
        let rss = medians(runs, case.name, |run| run.server_rss_kib as f64 / 1024.0);
        let errors = |system: &str| -> BTreeMap<String, u64> {
            let mut all = BTreeMap::new();
            for run in runs
                .iter()
                .filter(|run| run.case == case.name && run.system == system)
            {
                for (error, count) in &run.report.errors {
                    *all.entry(error.clone()).or_insert(0) += count;
                }
            }
            all
        };
        let etcd_errors = errors("etcd");
        let keel_errors = errors("keel");
        if etcd_errors.is_empty() && !keel_errors.is_empty() {
            errors_where_etcd_has_none.push(format!("{}: {keel_errors:?}", case.name));
        }
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            case.name,
            number(cpu.etcd),
            number(cpu.keel),
            ratio(cpu.ratio),
            number(rss.etcd),
            number(rss.keel),
            ratio(rss.ratio),
            etcd_errors.values().sum::<u64>(),
            keel_errors.values().sum::<u64>(),
        );
    }
    let restart_of = |system: &str| restarts.iter().find(|record| record.system == system);
    let (etcd_restart, keel_restart) = (restart_of("etcd"), restart_of("keel"));
    let restart_ratio = |field: &dyn Fn(&RestartRecord) -> Option<f64>| -> Option<f64> {
        Some(field(keel_restart?)? / field(etcd_restart?)?)
    };
    let restart_median = |record: &RestartRecord| median(&record.restart_seconds);
    let rss_restart_median = |record: &RestartRecord| {
        median(
            &record
                .rss_kib_after_restart
                .iter()
                .map(|kib| *kib as f64 / 1024.0)
                .collect::<Vec<_>>(),
        )
    };
    let rss_load = |record: &RestartRecord| Some(record.rss_kib_after_load as f64 / 1024.0);
    let load_rate = |record: &RestartRecord| Some(record.keys as f64 / record.load_seconds);
    let disk = |record: &RestartRecord| Some(record.disk_bytes_after_load as f64 / 1_048_576.0);
    let stop_median = |record: &RestartRecord| median(&record.stop_seconds);
    if let Some(record) = etcd_restart.or(keel_restart) {
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "| {} keys of {VAL_SIZE} B | etcd | keel | keel/etcd |",
            record.keys
        );
        let _ = writeln!(out, "|---|---:|---:|---:|");
        type Field<'a> = (&'a str, &'a dyn Fn(&RestartRecord) -> Option<f64>);
        let rows: [Field; 6] = [
            ("load (keys/s, txns of 128 puts)", &load_rate),
            ("RSS after load (MiB, 3 members)", &rss_load),
            ("data on disk (MiB, 3 members, file sizes)", &disk),
            ("SIGTERM to exit (s, median; killed at 10 s)", &stop_median),
            ("restart to serving (s, median)", &restart_median),
            ("RSS after restart (MiB, median)", &rss_restart_median),
        ];
        for (label, field) in rows {
            let _ = writeln!(
                out,
                "| {label} | {} | {} | {} |",
                number(etcd_restart.and_then(field)),
                number(keel_restart.and_then(field)),
                ratio(restart_ratio(field)),
            );
        }
    }
    // The targets.
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "| target (keel/etcd, medians of per-round ratios) | measured | verdict |"
    );
    let _ = writeln!(out, "|---|---:|---|");
    let mut target = |label: &str, value: Option<f64>, goal: f64, higher: bool| {
        let _ = writeln!(
            out,
            "| {label} | {} | {} |",
            ratio(value),
            verdict(value, goal, higher)
        );
    };
    target(
        "put throughput, 64 clients ≥ 2×",
        medians(runs, "put 64 clients", |run| {
            run.report.throughput_per_second
        })
        .ratio,
        2.0,
        true,
    );
    target(
        "put p99, 64 clients ≤ 0.5×",
        medians(runs, "put 64 clients", |run| run.report.latency.p99_ms).ratio,
        0.5,
        false,
    );
    target(
        "put p50, 1 client ≤ 0.5×",
        medians(runs, "put 1 client (leader)", |run| {
            run.report.latency.p50_ms
        })
        .ratio,
        0.5,
        false,
    );
    target(
        "linearizable range throughput ≥ 2×",
        medians(runs, "range linearizable 64 clients", |run| {
            run.report.throughput_per_second
        })
        .ratio,
        2.0,
        true,
    );
    target(
        "serializable range throughput ≥ 2×",
        medians(runs, "range serializable 64 clients", |run| {
            run.report.throughput_per_second
        })
        .ratio,
        2.0,
        true,
    );
    target(
        "watch event p99, 1,000 watchers ≤ 0.5×",
        medians(runs, "watch 1000 watchers (event latency)", |run| {
            run.report.latency.p99_ms
        })
        .ratio,
        0.5,
        false,
    );
    target(
        "RSS with the keys loaded ≤ 0.5×",
        restart_ratio(&rss_restart_median),
        0.5,
        false,
    );
    target(
        "restart to serving with the keys ≤ 0.5×",
        restart_ratio(&restart_median),
        0.5,
        false,
    );
    let _ = writeln!(
        out,
        "| no \"too many requests\" or timeouts where etcd has none | {} | {} |",
        if errors_where_etcd_has_none.is_empty() {
            "none".to_owned()
        } else {
            errors_where_etcd_has_none.join("; ")
        },
        if runs.is_empty() {
            "not measured"
        } else if errors_where_etcd_has_none.is_empty() {
            "**met**"
        } else {
            "not met"
        }
    );
    out
}

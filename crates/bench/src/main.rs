//! `keel-bench`: load an etcd v3 endpoint (Keel or etcd) and report throughput and latency
//! percentiles; or `keel-bench compare` to run etcd and Keel side by side.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use keel_bench::compare::{compare, CompareOptions};
use keel_bench::{run, Config, Consistency, Workload};

#[derive(Parser, Debug)]
#[command(
    name = "keel-bench",
    about = "Benchmark an etcd v3 API endpoint (Keel or etcd)"
)]
struct Cli {
    #[command(flatten)]
    common: Common,
    #[command(subcommand)]
    command: Command,
}

/// The flags every workload shares (etcd `benchmark`'s names); accepted before or after the
/// subcommand.
#[derive(Args, Debug)]
struct Common {
    /// Comma-separated endpoints; connection i goes to endpoint i % count.
    #[arg(
        long,
        global = true,
        value_delimiter = ',',
        default_value = "127.0.0.1:2379"
    )]
    endpoints: Vec<String>,
    /// gRPC connections.
    #[arg(long, global = true, default_value_t = 1)]
    conns: usize,
    /// Concurrent clients, spread over the connections.
    #[arg(long, global = true, default_value_t = 1)]
    clients: usize,
    /// Requests in all (default 10000 unless --duration is given).
    #[arg(long, global = true)]
    total: Option<u64>,
    /// Stop after this many seconds (with --total: whichever comes first).
    #[arg(long, global = true)]
    duration: Option<f64>,
    #[arg(long, global = true, default_value_t = 8)]
    key_size: usize,
    #[arg(long, global = true, default_value_t = 8)]
    val_size: usize,
    /// Keys are chosen from this many.
    #[arg(long, global = true, default_value_t = 1)]
    key_space_size: u64,
    /// Keys in order rather than at random.
    #[arg(long, global = true)]
    sequential_keys: bool,
    /// Seconds before a request counts as a timeout.
    #[arg(long, global = true, default_value_t = 10.0)]
    request_timeout: f64,
    /// Print the report as JSON.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Put keys from the key space.
    Put,
    /// Get single keys from the key space.
    Range {
        /// l (linearizable) or s (serializable).
        #[arg(long, default_value = "l")]
        consistency: String,
    },
    /// Txns of --txn-ops puts on distinct keys.
    TxnPut {
        #[arg(long, default_value_t = 1)]
        txn_ops: u64,
    },
    /// One lease per client, renewed over its own keep-alive stream.
    LeaseKeepalive,
    /// Put → watch event latency, with streams × watchers-per-stream watchers on one key.
    WatchLatency {
        #[arg(long, default_value_t = 10)]
        streams: usize,
        #[arg(long, default_value_t = 10)]
        watchers_per_stream: usize,
        #[arg(long, default_value_t = 100)]
        put_total: u64,
        /// Puts per second.
        #[arg(long, default_value_t = 100.0)]
        put_rate: f64,
    },
    /// Ranges (with probability --read-ratio) and puts.
    Mixed {
        #[arg(long, default_value_t = 0.8)]
        read_ratio: f64,
        #[arg(long, default_value = "l")]
        consistency: String,
    },
    /// Start a 3-member etcd and a 3-member Keel and run every workload on each in turn.
    Compare {
        /// The keel binary (a release build).
        #[arg(long, default_value = "target/release/keel")]
        keel: PathBuf,
        #[arg(long, default_value = "/usr/bin/etcd")]
        etcd: PathBuf,
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Smaller runs: the whole comparison in about two minutes.
        #[arg(long)]
        quick: bool,
        /// Keys (256 B values) for the restart and memory measurement; 0 skips it
        /// [default: 1000000, with --quick 20000].
        #[arg(long)]
        restart_keys: Option<u64>,
        /// Restarts measured per system [default: 2, with --quick 1].
        #[arg(long)]
        restart_rounds: Option<usize>,
        /// Only the workloads whose names contain this (repeatable).
        #[arg(long)]
        only: Vec<String>,
        /// Write every run's report and the tables as JSON here.
        #[arg(long)]
        json_out: Option<PathBuf>,
    },
}

fn config(common: &Common) -> Config {
    let duration = common.duration.map(Duration::from_secs_f64);
    let total = match (common.total, duration) {
        (None, None) => Some(10_000),
        (total, _) => total,
    };
    Config {
        endpoints: common.endpoints.clone(),
        conns: common.conns,
        clients: common.clients,
        total,
        duration,
        key_size: common.key_size,
        val_size: common.val_size,
        key_space_size: common.key_space_size,
        sequential_keys: common.sequential_keys,
        request_timeout: Duration::from_secs_f64(common.request_timeout),
    }
}

fn workload(command: &Command) -> Result<Workload, String> {
    Ok(match command {
        Command::Put => Workload::Put,
        Command::Range { consistency } => Workload::Range {
            consistency: Consistency::parse(consistency)?,
        },
        Command::TxnPut { txn_ops } => Workload::TxnPut { txn_ops: *txn_ops },
        Command::LeaseKeepalive => Workload::LeaseKeepalive,
        Command::WatchLatency {
            streams,
            watchers_per_stream,
            put_total,
            put_rate,
        } => Workload::WatchLatency {
            streams: *streams,
            watchers_per_stream: *watchers_per_stream,
            put_total: *put_total,
            put_rate: *put_rate,
        },
        Command::Mixed {
            read_ratio,
            consistency,
        } => Workload::Mixed {
            read_ratio: *read_ratio,
            consistency: Consistency::parse(consistency)?,
        },
        Command::Compare { .. } => unreachable!("compare is not a single workload"),
    })
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Compare {
        keel,
        etcd,
        rounds,
        quick,
        restart_keys,
        restart_rounds,
        only,
        json_out,
    } = cli.command
    {
        let options = CompareOptions {
            keel,
            etcd,
            rounds,
            quick,
            restart_keys: restart_keys.unwrap_or(if quick { 20_000 } else { 1_000_000 }),
            restart_rounds: restart_rounds.unwrap_or(if quick { 1 } else { 2 }),
            only,
            json_out,
        };
        return match compare(&options).await {
            Ok(comparison) => {
                println!("{}", comparison.table);
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("keel-bench compare: {error}");
                ExitCode::FAILURE
            }
        };
    }
    let workload = match workload(&cli.command) {
        Ok(workload) => workload,
        Err(error) => {
            eprintln!("keel-bench: {error}");
            return ExitCode::from(2);
        }
    };
    match run(&workload, &config(&cli.common)).await {
        Ok(report) => {
            if cli.common.json {
                println!("{}", report.to_json());
            } else {
                print!("{}", report.to_text());
            }
            if report.error_count() > 0 {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(error) => {
            eprintln!("keel-bench: {error}");
            ExitCode::FAILURE
        }
    }
}

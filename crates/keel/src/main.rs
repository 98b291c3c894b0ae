//! `keel`: the server binary. Takes etcd's flags, starts the member, serves the client API until
//! SIGTERM or SIGINT, then stops cleanly.

mod config;
mod metrics;
mod span_queue;
mod telemetry;

use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use keel_server::grpc::{self, GrpcConfig};
use keel_server::watch::WatchConfig;
use keel_server::{Node, NodeConfig};

use crate::config::{listen_addresses, normalize_args, url_list, Flags};
use crate::telemetry::{Telemetry, TracingConfig};

fn main() -> ExitCode {
    let flags = match Flags::try_parse_from(normalize_args(std::env::args())) {
        Ok(flags) => flags,
        Err(error) => {
            // Help and version go to stdout with success; bad flags fail, as in etcd.
            let _ = error.print();
            return if error.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("keel: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let telemetry = match TracingConfig::from_flags(&flags, |name| std::env::var(name).ok())
        .and_then(|config| {
            config
                .map(|config| Telemetry::install(&config, runtime.handle()))
                .transpose()
        }) {
        Ok(telemetry) => telemetry,
        Err(error) => {
            eprintln!("keel: distributed tracing: {error}");
            return ExitCode::FAILURE;
        }
    };
    init_logging(&flags, telemetry.as_ref());
    let result = runtime.block_on(run(flags));
    if let Some(telemetry) = &telemetry {
        telemetry.shutdown();
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = %error, "keel stopped");
            eprintln!("keel: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Logs as JSON lines filtered by `--log-level` (or `KEEL_LOG`); with tracing on, Keel's spans
/// also go to OpenTelemetry, whatever the log level.
fn init_logging(flags: &Flags, telemetry: Option<&Telemetry>) {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    use tracing_subscriber::Layer as _;

    let level = match flags.log_level.as_str() {
        "debug" => "debug",
        "warn" => "warn",
        "error" | "panic" | "fatal" => "error",
        _ => "info",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("KEEL_LOG").unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(format!("{level},h2=warn,tower=warn,hyper=warn"))
    });
    let Some(telemetry) = telemetry else {
        // Tracing off: exactly the subscriber Keel had before tracing existed.
        let builder = tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .with_current_span(false);
        if flags.log_outputs == "stdout" {
            builder.with_writer(std::io::stdout).init();
        } else {
            builder.with_writer(std::io::stderr).init();
        }
        return;
    };
    // The tracing spans are for OpenTelemetry only: the log layer would format every span's
    // fields for nothing.
    let filter = ["grpc", "raft", "kv", "lease", "watch"]
        .iter()
        .filter_map(|target| format!("keel::{target}=warn").parse().ok())
        .fold(filter, tracing_subscriber::EnvFilter::add_directive);
    let writer = if flags.log_outputs == "stdout" {
        tracing_subscriber::fmt::writer::BoxMakeWriter::new(std::io::stdout)
    } else {
        tracing_subscriber::fmt::writer::BoxMakeWriter::new(std::io::stderr)
    };
    let logs = tracing_subscriber::fmt::layer()
        .json()
        .with_current_span(false)
        .with_span_list(false)
        .with_writer(writer)
        .with_filter(filter);
    // Only what Keel's spans say: no source locations, threads, targets, levels or busy/idle
    // timings, each an attribute (and allocations, or clock reads) on every span.
    let spans = tracing_opentelemetry::layer()
        .with_tracer(telemetry.tracer())
        .with_location(false)
        .with_threads(false)
        .with_target(false)
        .with_level(false)
        .with_tracked_inactivity(false)
        // Keel reads a span's context from the span itself; making it OpenTelemetry's current
        // context on every poll of every instrumented future would be work for nothing.
        .with_context_activation(false)
        .with_filter(
            tracing_subscriber::filter::Targets::new().with_target("keel", tracing::Level::INFO),
        );
    tracing_subscriber::registry().with(logs).with(spans).init();
}

async fn run(flags: Flags) -> Result<(), Box<dyn std::error::Error>> {
    flags.check_supported()?;
    let auth_config = flags.auth_config()?;
    let client_addresses = listen_addresses("listen-client-urls", &flags.listen_client_urls)?;
    listen_addresses("listen-peer-urls", &flags.listen_peer_urls)?;
    let join_existing = match flags.initial_cluster_state.as_str() {
        "new" => false,
        "existing" => true,
        other => {
            return Err(format!(
                "--initial-cluster-state {other:?}: expected \"new\" or \"existing\""
            )
            .into())
        }
    };
    let initial_cluster = parse_initial_cluster(&flags.initial_cluster)?;
    let data_dir = flags.data_dir();
    let node_config = NodeConfig {
        name: flags.name.clone(),
        data_dir: data_dir.clone(),
        initial_cluster_token: flags.initial_cluster_token.clone(),
        initial_advertise_peer_urls: url_list(&flags.initial_advertise_peer_urls),
        advertise_client_urls: url_list(&flags.advertise_client_urls),
        snapshot_count: flags.snapshot_count,
        snapshot_catch_up_entries: flags.experimental_snapshot_catchup_entries,
        initial_election_tick_advance: flags.initial_election_tick_advance,
        max_request_bytes: flags.max_request_bytes,
        quota_backend_bytes: flags.quota_backend_bytes,
        election_timeout_ms: flags.election_timeout,
        heartbeat_interval_ms: flags.heartbeat_interval,
        initial_cluster,
        join_existing,
    };
    tracing::info!(version = env!("CARGO_PKG_VERSION"), data_dir = %data_dir.display(), "starting keel");
    let runtime = tokio::runtime::Handle::current();
    let node =
        Arc::new(tokio::task::spawn_blocking(move || Node::start(&node_config, &runtime)).await??);
    let grpc_config = GrpcConfig {
        auth: Arc::new(keel_server::auth::Auth::new(Arc::clone(&node), auth_config)),
        max_request_bytes: flags.max_request_bytes,
        max_txn_ops: flags.max_txn_ops,
        watch: WatchConfig {
            progress_interval: flags
                .experimental_watch_progress_notify_interval
                .max(std::time::Duration::from_millis(10)),
            fragment_bytes_max: flags.max_request_bytes,
        },
    };

    let lease_expiry = tokio::spawn(Arc::clone(&node).expire_leases());
    let publish = tokio::spawn(Arc::clone(&node).publish_attributes());
    let (stop_sender, stop) = tokio::sync::watch::channel(false);
    let mut servers = tokio::task::JoinSet::new();
    if !flags.listen_metrics_urls.is_empty() {
        for address in listen_addresses("listen-metrics-urls", &flags.listen_metrics_urls)? {
            let listener = grpc::bind(address)
                .await
                .map_err(|error| format!("cannot listen on {address}: {error}"))?;
            tracing::info!(%address, "serving metrics");
            let node = Arc::clone(&node);
            let mut stop = stop.clone();
            servers.spawn(async move {
                tokio::select! {
                    () = metrics::serve(node, listener) => {}
                    _ = stop.wait_for(|stopping| *stopping) => {}
                }
                Ok(())
            });
        }
    }
    // Every member serves its peer port, as etcd's does: even a one-member cluster may grow
    // (MemberAdd). A one-member cluster that can't bind it (several started with the default
    // port on one machine) still serves its clients; it only can't grow until restarted with a
    // free --listen-peer-urls.
    {
        let alone = node.is_single_member();
        for address in listen_addresses("listen-peer-urls", &flags.listen_peer_urls)? {
            let listener = match grpc::bind(address).await {
                Ok(listener) => listener,
                Err(error) if alone => {
                    tracing::warn!(%address, %error, "cannot listen for peers; this one-member cluster cannot add members");
                    continue;
                }
                Err(error) => return Err(format!("cannot listen on {address}: {error}").into()),
            };
            tracing::info!(%address, "serving peers");
            let service = node.peer_service();
            let mut stop = stop.clone();
            servers.spawn(async move {
                let shutdown = async move {
                    let _ = stop.wait_for(|stopping| *stopping).await;
                };
                grpc::serve_peers(service, listener, shutdown).await
            });
        }
    }
    for address in client_addresses {
        let listener = grpc::bind(address)
            .await
            .map_err(|error| format!("cannot listen on {address}: {error}"))?;
        tracing::info!(%address, "serving client requests");
        let node = Arc::clone(&node);
        let config = grpc_config.clone();
        let mut stop = stop.clone();
        servers.spawn(async move {
            let shutdown = async move {
                let _ = stop.wait_for(|stopping| *stopping).await;
            };
            grpc::serve(node, &config, listener, shutdown).await
        });
    }

    let reason: Result<(), Box<dyn std::error::Error>> = tokio::select! {
        signal = shutdown_signal() => {
            tracing::info!(signal, "received signal, shutting down");
            Ok(())
        }
        failure = node.failed() => Err(format!("member stopped: {failure}").into()),
        () = node.removed() => {
            tracing::warn!("{}", keel_server::membership::REMOVED_MESSAGE);
            Ok(())
        }
        Some(ended) = servers.join_next() => match ended {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => Err(format!("client server failed: {error}").into()),
            Err(error) => Err(format!("client server panicked: {error}").into()),
        },
    };
    let _ = stop_sender.send(true);
    // Open streams (watches, keep-alives, peers) would hold a graceful shutdown forever: give
    // them a moment to end, then cut them.
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while servers.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::info!(grace = ?SHUTDOWN_GRACE, "closing the connections still open");
        servers.abort_all();
    }
    lease_expiry.abort();
    publish.abort();
    node.stop().await;
    tracing::info!("keel stopped");
    reason
}

/// How long a stopping member waits for open client and peer streams to end.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

async fn shutdown_signal() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut terminate), Ok(mut interrupt)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        std::future::pending::<()>().await;
        unreachable!();
    };
    tokio::select! {
        _ = terminate.recv() => "SIGTERM",
        _ = interrupt.recv() => "SIGINT",
    }
}

/// Reads `--initial-cluster` (`name=url,name=url,...`; a name may repeat for several URLs).
/// Empty means a one-member cluster of this member.
fn parse_initial_cluster(text: &str) -> Result<Vec<(String, Vec<String>)>, String> {
    let mut members: Vec<(String, Vec<String>)> = Vec::new();
    for item in url_list(text) {
        let (name, url) = item
            .split_once('=')
            .ok_or_else(|| format!("--initial-cluster entry {item:?} is not name=url"))?;
        match members.iter_mut().find(|(existing, _)| existing == name) {
            Some((_, urls)) => urls.push(url.to_string()),
            None => members.push((name.to_string(), vec![url.to_string()])),
        }
    }
    Ok(members)
}

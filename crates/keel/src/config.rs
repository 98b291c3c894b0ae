//! The command line: etcd's server flags, with the same names, defaults and `ETCD_*` variables,
//! so an operator can swap the etcd binary for `keel` without touching its command line.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;

use clap::Parser;

/// Flags Keel accepts for compatibility but whose feature it doesn't have; setting one to a
/// non-default value is an error rather than a silent no-op.
#[derive(Parser, Debug, Clone)]
#[command(
    name = "keel",
    version,
    about = "Keel: an etcd-compatible, Raft-replicated key-value store"
)]
pub struct Flags {
    /// Human-readable name for this member.
    #[arg(long, env = "ETCD_NAME", default_value = "default")]
    pub name: String,
    /// Path to the data directory (default: `${name}.keel`).
    #[arg(long, env = "ETCD_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Path to a dedicated WAL directory (not supported: the WAL lives in the data dir).
    #[arg(long, env = "ETCD_WAL_DIR", default_value = "")]
    pub wal_dir: String,
    /// Applied entries between snapshots (durable store commits and log release).
    #[arg(long, env = "ETCD_SNAPSHOT_COUNT", default_value_t = 100_000)]
    pub snapshot_count: u64,
    /// Time (in milliseconds) of a heartbeat interval.
    #[arg(long, env = "ETCD_HEARTBEAT_INTERVAL", default_value_t = 100)]
    pub heartbeat_interval: u64,
    /// Time (in milliseconds) for an election to timeout.
    #[arg(long, env = "ETCD_ELECTION_TIMEOUT", default_value_t = 1000)]
    pub election_timeout: u64,
    /// List of URLs to listen on for peer traffic.
    #[arg(
        long,
        env = "ETCD_LISTEN_PEER_URLS",
        default_value = "http://localhost:2380"
    )]
    pub listen_peer_urls: String,
    /// List of URLs to listen on for client traffic.
    #[arg(
        long,
        env = "ETCD_LISTEN_CLIENT_URLS",
        default_value = "http://localhost:2379"
    )]
    pub listen_client_urls: String,
    /// List of this member's client URLs to advertise to the public.
    #[arg(
        long,
        env = "ETCD_ADVERTISE_CLIENT_URLS",
        default_value = "http://localhost:2379"
    )]
    pub advertise_client_urls: String,
    /// List of this member's peer URLs to advertise to the rest of the cluster.
    #[arg(
        long,
        env = "ETCD_INITIAL_ADVERTISE_PEER_URLS",
        default_value = "http://localhost:2380"
    )]
    pub initial_advertise_peer_urls: String,
    /// Initial cluster configuration for bootstrapping (`name=peer-url,...`).
    #[arg(long, env = "ETCD_INITIAL_CLUSTER", default_value = "")]
    pub initial_cluster: String,
    /// Initial cluster state ('new' or 'existing').
    #[arg(long, env = "ETCD_INITIAL_CLUSTER_STATE", default_value = "new", value_parser = ["new", "existing"])]
    pub initial_cluster_state: String,
    /// Initial cluster token for the cluster during bootstrap.
    #[arg(
        long,
        env = "ETCD_INITIAL_CLUSTER_TOKEN",
        default_value = "etcd-cluster"
    )]
    pub initial_cluster_token: String,
    /// Raise alarms when backend size exceeds the given quota (0 defaults to 2 GiB).
    #[arg(long, env = "ETCD_QUOTA_BACKEND_BYTES", default_value_t = 0)]
    pub quota_backend_bytes: i64,
    /// Maximum client request size in bytes the server will accept.
    #[arg(long, env = "ETCD_MAX_REQUEST_BYTES", default_value_t = 1_572_864)]
    pub max_request_bytes: usize,
    /// Maximum number of operations permitted in a transaction.
    #[arg(long, env = "ETCD_MAX_TXN_OPS", default_value_t = 128)]
    pub max_txn_ops: usize,
    /// Maximum number of snapshot files to retain (0 is unlimited).
    #[arg(long, env = "ETCD_MAX_SNAPSHOTS", default_value_t = 5)]
    pub max_snapshots: u32,
    /// Maximum number of wal files to retain (0 is unlimited).
    #[arg(long, env = "ETCD_MAX_WALS", default_value_t = 5)]
    pub max_wals: u32,
    /// Specify auth token type and options: 'simple' or 'jwt,...'.
    #[arg(long, env = "ETCD_AUTH_TOKEN", default_value = "simple")]
    pub auth_token: String,
    /// Cost of bcrypt hashing for authentication passwords.
    #[arg(long, env = "ETCD_BCRYPT_COST", default_value_t = 10)]
    pub bcrypt_cost: u32,
    /// Time (in seconds) of the simple auth token's TTL.
    #[arg(long, env = "ETCD_AUTH_TOKEN_TTL", default_value_t = 300)]
    pub auth_token_ttl: u64,
    /// Logger: 'zap' (structured, the only one).
    #[arg(long, env = "ETCD_LOGGER", default_value = "zap")]
    pub logger: String,
    /// Log level: debug, info, warn, error, panic, or fatal.
    #[arg(long, env = "ETCD_LOG_LEVEL", default_value = "info",
          value_parser = ["debug", "info", "warn", "error", "panic", "fatal"])]
    pub log_level: String,
    /// Where logs go: 'default' or 'stderr' (stderr), 'stdout'.
    #[arg(long, env = "ETCD_LOG_OUTPUTS", default_value = "default")]
    pub log_outputs: String,
    /// Enable to run an additional Raft election phase.
    #[arg(long, env = "ETCD_PRE_VOTE", default_value_t = true, action = clap::ArgAction::Set)]
    pub pre_vote: bool,
    /// Reject reconfiguration requests that would cause quorum loss.
    #[arg(long, env = "ETCD_STRICT_RECONFIG_CHECK", default_value_t = true, action = clap::ArgAction::Set)]
    pub strict_reconfig_check: bool,
    /// Auto compaction retention (0 disables it).
    #[arg(long, env = "ETCD_AUTO_COMPACTION_RETENTION", default_value = "0")]
    pub auto_compaction_retention: String,
    /// Interpret auto-compaction-retention: 'periodic' or 'revision'.
    #[arg(long, env = "ETCD_AUTO_COMPACTION_MODE", default_value = "periodic")]
    pub auto_compaction_mode: String,
    /// Enable the v2 API (not supported).
    #[arg(long, env = "ETCD_ENABLE_V2", default_value_t = false, action = clap::ArgAction::Set)]
    pub enable_v2: bool,
    /// Enable runtime profiling data via HTTP server (not supported).
    #[arg(long, env = "ETCD_ENABLE_PPROF", default_value_t = false, action = clap::ArgAction::Set)]
    pub enable_pprof: bool,
    /// Path to the client server TLS cert file (TLS is not supported yet).
    #[arg(long, env = "ETCD_CERT_FILE", default_value = "")]
    pub cert_file: String,
    /// Path to the client server TLS key file (TLS is not supported yet).
    #[arg(long, env = "ETCD_KEY_FILE", default_value = "")]
    pub key_file: String,
    /// Path to the peer server TLS cert file (TLS is not supported yet).
    #[arg(long, env = "ETCD_PEER_CERT_FILE", default_value = "")]
    pub peer_cert_file: String,
    /// Path to the peer server TLS key file (TLS is not supported yet).
    #[arg(long, env = "ETCD_PEER_KEY_FILE", default_value = "")]
    pub peer_key_file: String,
    /// Force to create a new one member cluster (not supported yet).
    #[arg(long, env = "ETCD_FORCE_NEW_CLUSTER", default_value_t = false, action = clap::ArgAction::Set)]
    pub force_new_cluster: bool,
    /// List of URLs to listen on for the metrics (`/metrics`) and health (`/health`) endpoints.
    #[arg(long, env = "ETCD_LISTEN_METRICS_URLS", default_value = "")]
    pub listen_metrics_urls: String,
    /// Duration of periodic watch progress notifications (Go duration: 10m, 5s, 500ms).
    #[arg(long, env = "ETCD_EXPERIMENTAL_WATCH_PROGRESS_NOTIFY_INTERVAL", default_value = "10m", value_parser = parse_duration)]
    pub experimental_watch_progress_notify_interval: std::time::Duration,
    /// Whether to fast-forward initial election ticks on boot for faster election.
    #[arg(long, env = "ETCD_INITIAL_ELECTION_TICK_ADVANCE", default_value_t = true, action = clap::ArgAction::Set)]
    pub initial_election_tick_advance: bool,
    /// Number of entries for a slow follower to catch up after compacting the raft storage
    /// entries; a follower further behind is sent a snapshot of the store.
    #[arg(
        long,
        env = "ETCD_EXPERIMENTAL_SNAPSHOT_CATCHUP_ENTRIES",
        default_value_t = 5_000
    )]
    pub experimental_snapshot_catchup_entries: u64,
    /// Enable distributed tracing: OpenTelemetry spans exported over OTLP.
    #[arg(long, env = "ETCD_ENABLE_DISTRIBUTED_TRACING", alias = "experimental-enable-distributed-tracing",
          default_value_t = false, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub enable_distributed_tracing: bool,
    /// Address of the OTLP collector (gRPC: host:port [default: localhost:4317]; with
    /// OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf an http:// URL). Unset, the standard
    /// OTEL_EXPORTER_OTLP_TRACES_ENDPOINT / OTEL_EXPORTER_OTLP_ENDPOINT apply.
    #[arg(
        long,
        env = "ETCD_DISTRIBUTED_TRACING_ADDRESS",
        alias = "experimental-distributed-tracing-address"
    )]
    pub distributed_tracing_address: Option<String>,
    /// Service name of this member's spans (unset: OTEL_SERVICE_NAME, else "etcd", etcd's default).
    #[arg(
        long,
        env = "ETCD_DISTRIBUTED_TRACING_SERVICE_NAME",
        alias = "experimental-distributed-tracing-service-name"
    )]
    pub distributed_tracing_service_name: Option<String>,
    /// Service instance id of this member's spans, unique per member (empty: the member's --name).
    #[arg(
        long,
        env = "ETCD_DISTRIBUTED_TRACING_INSTANCE_ID",
        alias = "experimental-distributed-tracing-instance-id",
        default_value = ""
    )]
    pub distributed_tracing_instance_id: String,
    /// Traces sampled per million requests that start one (0 samples none; at most 1000000).
    #[arg(long, env = "ETCD_DISTRIBUTED_TRACING_SAMPLING_RATE", alias = "experimental-distributed-tracing-sampling-rate",
          default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=1_000_000))]
    pub distributed_tracing_sampling_rate: u32,
    /// Path to a configuration file (not supported: use flags or ETCD_* variables).
    #[arg(long, env = "ETCD_CONFIG_FILE", default_value = "")]
    pub config_file: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid URL {url:?} in --{flag}: {reason}")]
    Url {
        flag: &'static str,
        url: String,
        reason: String,
    },
    #[error("--{0} is not supported by Keel yet")]
    Unsupported(&'static str),
    #[error("--auth-token: {0}")]
    AuthToken(String),
}

/// Parses a comma-separated list of `http://host:port` URLs into socket addresses.
pub fn listen_addresses(flag: &'static str, urls: &str) -> Result<Vec<SocketAddr>, ConfigError> {
    let mut addresses = Vec::new();
    for url in urls.split(',').map(str::trim).filter(|url| !url.is_empty()) {
        let error = |reason: &str| ConfigError::Url {
            flag,
            url: url.to_string(),
            reason: reason.to_string(),
        };
        let rest = if let Some(rest) = url.strip_prefix("http://") {
            rest
        } else if url.starts_with("https://") || url.starts_with("unixs://") {
            return Err(error("TLS is not supported yet"));
        } else {
            return Err(error("URL scheme must be http"));
        };
        let host_port = rest.trim_end_matches('/');
        if host_port.contains('/') {
            return Err(error("URL must not have a path"));
        }
        let resolved: Vec<SocketAddr> = host_port
            .to_socket_addrs()
            .map_err(|resolve| error(&format!("cannot resolve host and port: {resolve}")))?
            .collect();
        // "localhost" resolves to both 127.0.0.1 and ::1; etcd listens on the first.
        let address = resolved
            .iter()
            .find(|address| address.is_ipv4())
            .or(resolved.first())
            .copied()
            .ok_or_else(|| error("host resolves to no address"))?;
        if !addresses.contains(&address) {
            addresses.push(address);
        }
    }
    if addresses.is_empty() {
        return Err(ConfigError::Url {
            flag,
            url: urls.to_string(),
            reason: "no URL given".into(),
        });
    }
    Ok(addresses)
}

/// Parses a Go duration (`1h2m3s`, `500ms`, `10m`), as etcd's duration flags take.
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let mut total = std::time::Duration::ZERO;
    let mut rest = text.trim();
    if rest == "0" {
        return Ok(total);
    }
    if rest.is_empty() {
        return Err("empty duration".into());
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or(format!("missing unit in {text:?}"))?;
        let number: f64 = rest[..digits]
            .parse()
            .map_err(|_| format!("invalid duration {text:?}"))?;
        rest = &rest[digits..];
        let unit_length = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let seconds = match &rest[..unit_length] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            unit => return Err(format!("unknown unit {unit:?} in duration {text:?}")),
        };
        total += std::time::Duration::from_secs_f64(number * seconds);
        rest = &rest[unit_length..];
    }
    Ok(total)
}

pub fn url_list(urls: &str) -> Vec<String> {
    urls.split(',')
        .map(str::trim)
        .filter(|url| !url.is_empty())
        .map(String::from)
        .collect()
}

impl Flags {
    /// Rejects flags set to something Keel can't do yet, so nothing is silently ignored.
    pub fn check_supported(&self) -> Result<(), ConfigError> {
        let unsupported = [
            (!self.wal_dir.is_empty(), "wal-dir"),
            (
                !self.cert_file.is_empty() || !self.key_file.is_empty(),
                "cert-file/key-file",
            ),
            (
                !self.peer_cert_file.is_empty() || !self.peer_key_file.is_empty(),
                "peer-cert-file/peer-key-file",
            ),
            (self.enable_v2, "enable-v2"),
            (self.enable_pprof, "enable-pprof"),
            (self.force_new_cluster, "force-new-cluster"),
            (!self.config_file.is_empty(), "config-file"),
        ];
        match unsupported.iter().find(|(set, _)| *set) {
            Some((_, flag)) => Err(ConfigError::Unsupported(flag)),
            None => Ok(()),
        }
    }

    /// `--auth-token`, `--auth-token-ttl` and `--bcrypt-cost`, with the JWT key files read.
    pub fn auth_config(&self) -> Result<keel_server::auth::AuthConfig, ConfigError> {
        keel_server::auth::AuthConfig::parse(
            &self.auth_token,
            std::time::Duration::from_secs(self.auth_token_ttl),
            self.bcrypt_cost,
            parse_duration,
        )
        .map_err(ConfigError::AuthToken)
    }

    pub fn data_dir(&self) -> PathBuf {
        self.data_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(format!("{}.keel", self.name)))
    }
}

/// etcd's Go flags accept `-name` as well as `--name`; clap wants two dashes. Single-dash long
/// flags are rewritten so existing command lines keep working.
pub fn normalize_args(args: impl IntoIterator<Item = String>) -> Vec<String> {
    args.into_iter()
        .enumerate()
        .map(|(position, arg)| {
            let single_dash_long = arg.len() > 2 && arg.starts_with('-') && !arg.starts_with("--");
            if position > 0 && single_dash_long && arg.as_bytes()[1].is_ascii_alphabetic() {
                format!("-{arg}")
            } else {
                arg
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_dash_long_flags_are_accepted_like_etcd() {
        let args =
            normalize_args(["keel", "-name", "n1", "--data-dir", "x", "-V"].map(String::from));
        assert_eq!(args, ["keel", "--name", "n1", "--data-dir", "x", "-V"]);
        // Short flags stay as they are; parse without the one that prints the version.
        let flags = Flags::try_parse_from(&args[..5]).unwrap();
        assert_eq!(flags.name, "n1");
    }

    #[test]
    fn urls_parse_to_loopback_addresses() {
        let addresses = listen_addresses(
            "listen-client-urls",
            "http://127.0.0.1:2379,http://localhost:2379",
        )
        .unwrap();
        assert_eq!(addresses, ["127.0.0.1:2379".parse::<SocketAddr>().unwrap()]);
        assert!(listen_addresses("listen-client-urls", "https://127.0.0.1:2379").is_err());
        assert!(listen_addresses("listen-client-urls", "127.0.0.1:2379").is_err());
    }

    #[test]
    fn go_durations_parse() {
        assert_eq!(
            parse_duration("10m"),
            Ok(std::time::Duration::from_secs(600))
        );
        assert_eq!(
            parse_duration("1h2m3s"),
            Ok(std::time::Duration::from_secs(3723))
        );
        assert_eq!(
            parse_duration("500ms"),
            Ok(std::time::Duration::from_millis(500))
        );
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("5y").is_err());
    }

    #[test]
    fn auth_token_options_parse_like_etcd() {
        let flags = |token: &str| {
            Flags::try_parse_from(["keel", "--auth-token", token, "--bcrypt-cost", "4"]).unwrap()
        };
        assert!(flags("simple").auth_config().is_ok());
        for bad in [
            "nope",
            "jwt",
            "jwt,sign-method=RS256",
            "jwt,sign-method=XX999,priv-key=/dev/null",
            "jwt,sign-method=HS256,priv-key",
            "jwt,sign-method=HS256,sign-method=HS256",
            "jwt,sign-method=HS256,priv-key=/no/such/file",
            "jwt,sign-method=HS256,priv-key=/dev/null,ttl=5y",
        ] {
            let error = flags(bad).auth_config().unwrap_err().to_string();
            assert!(error.starts_with("--auth-token: "), "{bad}: {error}");
        }
    }

    #[test]
    fn tracing_flags_parse_like_etcd() {
        let flags = Flags::try_parse_from(["keel"]).unwrap();
        assert!(!flags.enable_distributed_tracing);
        assert_eq!(flags.distributed_tracing_sampling_rate, 0);
        let flags = Flags::try_parse_from([
            "keel",
            "--enable-distributed-tracing",
            "--distributed-tracing-sampling-rate",
            "1000000",
            "--distributed-tracing-address",
            "127.0.0.1:4317",
        ])
        .unwrap();
        assert!(flags.enable_distributed_tracing);
        assert_eq!(flags.distributed_tracing_sampling_rate, 1_000_000);
        let flags =
            Flags::try_parse_from(["keel", "--experimental-enable-distributed-tracing=false"])
                .unwrap();
        assert!(!flags.enable_distributed_tracing);
        assert!(
            Flags::try_parse_from(["keel", "--distributed-tracing-sampling-rate", "1000001"])
                .is_err()
        );
    }

    #[test]
    fn unknown_flags_are_errors() {
        assert!(Flags::try_parse_from(["keel", "--no-such-flag"]).is_err());
    }
}

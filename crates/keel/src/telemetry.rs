//! `--enable-distributed-tracing`: builds the OpenTelemetry pipeline that exports Keel's spans
//! (made in `keel_server::telemetry`) over OTLP — gRPC by default, HTTP/protobuf when
//! `OTEL_EXPORTER_OTLP[_TRACES]_PROTOCOL=http/protobuf` — through the bounded span queue
//! (`span_queue.rs`). With tracing off none of this is built and no OpenTelemetry layer is
//! installed.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry::KeyValue;
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use opentelemetry_sdk::Resource;

use crate::config::Flags;
use crate::span_queue::{BoundedSpanProcessor, QueueConfig};

/// etcd's default collector address (OTLP over gRPC).
pub const DEFAULT_ADDRESS: &str = "localhost:4317";
/// etcd's default service name ("Use the same service name for all instances of etcd").
pub const DEFAULT_SERVICE_NAME: &str = "etcd";
const SAMPLES_PER_MILLION_MAX: u32 = 1_000_000;

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("OTLP exporter: {0}")]
    Exporter(#[from] opentelemetry_otlp::ExporterBuildError),
    #[error("{variable}: unsupported OTLP protocol {value:?} (grpc or http/protobuf)")]
    Protocol {
        variable: &'static str,
        value: String,
    },
    #[error("cannot start the span export thread: {0}")]
    Thread(#[from] std::io::Error),
}

/// How spans leave the member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TracingConfig {
    /// The collector's endpoint; None leaves it to the `OTEL_EXPORTER_OTLP_*` variables.
    pub endpoint: Option<String>,
    pub protocol: Protocol,
    /// None leaves it to `OTEL_SERVICE_NAME`.
    pub service_name: Option<String>,
    pub instance_id: String,
    pub member_name: String,
    pub samples_per_million: u32,
    pub queue: QueueConfig,
}

impl TracingConfig {
    /// None when tracing is off. `read` reads the environment (a parameter for tests).
    pub fn from_flags(
        flags: &Flags,
        read: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<TracingConfig>, TelemetryError> {
        if !flags.enable_distributed_tracing {
            return Ok(None);
        }
        let protocol = protocol(&read)?;
        let environment_endpoint = read("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            .or_else(|| read("OTEL_EXPORTER_OTLP_ENDPOINT"))
            .is_some();
        let endpoint = match &flags.distributed_tracing_address {
            Some(address) => Some(endpoint(address, protocol)),
            None if environment_endpoint => None,
            None => Some(endpoint(DEFAULT_ADDRESS, protocol)),
        };
        let service_name = match &flags.distributed_tracing_service_name {
            Some(name) => Some(name.clone()),
            None if read("OTEL_SERVICE_NAME").is_some() => None,
            None => Some(DEFAULT_SERVICE_NAME.to_string()),
        };
        let instance_id = if flags.distributed_tracing_instance_id.is_empty() {
            flags.name.clone()
        } else {
            flags.distributed_tracing_instance_id.clone()
        };
        Ok(Some(TracingConfig {
            endpoint,
            protocol,
            service_name,
            instance_id,
            member_name: flags.name.clone(),
            samples_per_million: flags
                .distributed_tracing_sampling_rate
                .min(SAMPLES_PER_MILLION_MAX),
            queue: QueueConfig::from_env(&read),
        }))
    }

    /// etcd's sampler: none at 0, else parent-based with a trace-id ratio for new traces.
    pub fn sampler(&self) -> Sampler {
        if self.samples_per_million == 0 {
            return Sampler::AlwaysOff;
        }
        Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            f64::from(self.samples_per_million) / f64::from(SAMPLES_PER_MILLION_MAX),
        )))
    }
}

fn protocol(read: &impl Fn(&str) -> Option<String>) -> Result<Protocol, TelemetryError> {
    for variable in [
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
    ] {
        if let Some(value) = read(variable) {
            return match value.trim() {
                "grpc" => Ok(Protocol::Grpc),
                "http/protobuf" => Ok(Protocol::HttpBinary),
                _ => Err(TelemetryError::Protocol { variable, value }),
            };
        }
    }
    Ok(Protocol::Grpc)
}

/// etcd takes `host:port`; OTLP clients want a URL (and HTTP the `/v1/traces` path).
fn endpoint(address: &str, protocol: Protocol) -> String {
    let url = if address.contains("://") {
        address.to_string()
    } else {
        format!("http://{address}")
    };
    match protocol {
        Protocol::HttpBinary if !url.trim_end_matches('/').ends_with("/v1/traces") => {
            format!("{}/v1/traces", url.trim_end_matches('/'))
        }
        _ => url,
    }
}

/// The installed pipeline; [`Telemetry::shutdown`] exports what is queued.
pub struct Telemetry {
    provider: SdkTracerProvider,
}

impl Telemetry {
    /// Builds the exporter and provider (inside `runtime`, which the OTLP clients use), makes
    /// it the global provider, and turns on span making in `keel_server`.
    pub fn install(
        config: &TracingConfig,
        runtime: &tokio::runtime::Handle,
    ) -> Result<Telemetry, TelemetryError> {
        let _entered = runtime.enter();
        let exporter = match config.protocol {
            Protocol::Grpc => {
                let builder = opentelemetry_otlp::SpanExporter::builder().with_tonic();
                match &config.endpoint {
                    Some(endpoint) => builder.with_endpoint(endpoint.clone()).build()?,
                    None => builder.build()?,
                }
            }
            _ => {
                let builder = opentelemetry_otlp::SpanExporter::builder()
                    .with_http()
                    .with_protocol(Protocol::HttpBinary);
                match &config.endpoint {
                    Some(endpoint) => builder.with_endpoint(endpoint.clone()).build()?,
                    None => builder.build()?,
                }
            }
        };
        let processor = BoundedSpanProcessor::start(exporter, config.queue, runtime.clone())?;
        let mut resource = Resource::builder().with_attributes([
            KeyValue::new("service.instance.id", config.instance_id.clone()),
            KeyValue::new("keel.member.name", config.member_name.clone()),
            KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
        ]);
        if let Some(name) = &config.service_name {
            resource = resource.with_service_name(name.clone());
        }
        let provider = SdkTracerProvider::builder()
            .with_sampler(config.sampler())
            .with_resource(resource.build())
            .with_span_processor(processor)
            .build();
        opentelemetry::global::set_tracer_provider(provider.clone());
        keel_server::telemetry::enable();
        Ok(Telemetry { provider })
    }

    /// The `tracing` layer that turns Keel's spans into OpenTelemetry spans.
    pub fn tracer(&self) -> opentelemetry_sdk::trace::SdkTracer {
        self.provider.tracer(keel_server::telemetry::TRACER_NAME)
    }

    /// Exports what is queued (bounded in time: a dead collector doesn't hold the exit).
    pub fn shutdown(&self) {
        if let Err(error) = self
            .provider
            .shutdown_with_timeout(std::time::Duration::from_secs(5))
        {
            tracing::warn!(%error, "could not export the last spans");
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    fn config(args: &[&str], environment: &[(&str, &str)]) -> Option<TracingConfig> {
        let flags = Flags::try_parse_from(args).unwrap();
        TracingConfig::from_flags(&flags, |name| {
            environment
                .iter()
                .find(|(key, _)| *key == name)
                .map(|(_, value)| value.to_string())
        })
        .unwrap()
    }

    #[test]
    fn off_unless_enabled() {
        assert_eq!(config(&["keel"], &[]), None);
    }

    #[test]
    fn etcd_defaults_and_flags_win_over_otel_variables() {
        let defaults = config(&["keel", "--enable-distributed-tracing"], &[]).unwrap();
        assert_eq!(defaults.endpoint.as_deref(), Some("http://localhost:4317"));
        assert_eq!(defaults.service_name.as_deref(), Some("etcd"));
        assert_eq!(defaults.instance_id, "default");
        assert!(matches!(defaults.sampler(), Sampler::AlwaysOff));
        let environment = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317"),
            ("OTEL_SERVICE_NAME", "kv"),
        ];
        let from_environment =
            config(&["keel", "--enable-distributed-tracing"], &environment).unwrap();
        assert_eq!(from_environment.endpoint, None);
        assert_eq!(from_environment.service_name, None);
        let from_flags = config(
            &[
                "keel",
                "--enable-distributed-tracing",
                "--distributed-tracing-address",
                "10.0.0.1:4317",
                "--distributed-tracing-service-name",
                "keel",
                "--distributed-tracing-instance-id",
                "m1",
                "--distributed-tracing-sampling-rate",
                "250000",
            ],
            &environment,
        )
        .unwrap();
        assert_eq!(from_flags.endpoint.as_deref(), Some("http://10.0.0.1:4317"));
        assert_eq!(from_flags.service_name.as_deref(), Some("keel"));
        assert_eq!(from_flags.instance_id, "m1");
        assert!(matches!(from_flags.sampler(), Sampler::ParentBased(_)));
    }

    #[test]
    fn http_protobuf_gets_the_traces_path() {
        let http = config(
            &[
                "keel",
                "--enable-distributed-tracing",
                "--distributed-tracing-address",
                "localhost:4318",
            ],
            &[("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")],
        )
        .unwrap();
        assert_eq!(
            http.endpoint.as_deref(),
            Some("http://localhost:4318/v1/traces")
        );
        let flags = Flags::try_parse_from(["keel", "--enable-distributed-tracing"]).unwrap();
        assert!(TracingConfig::from_flags(&flags, |name| {
            (name == "OTEL_EXPORTER_OTLP_PROTOCOL").then(|| "http/json".to_string())
        })
        .is_err());
    }
}

//! `--listen-metrics-urls`: Prometheus text metrics on `/metrics` and etcd's `/health`, over
//! plain HTTP/1.1 (one request per connection, bounded in size and time).

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use keel_server::Node;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A request head larger than this is refused: metrics requests are tiny.
const REQUEST_BYTES_MAX: usize = 8 * 1024;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// The metrics text: member state, the store, and token failures by cause.
pub fn render(node: &Node) -> String {
    let mut text = String::new();
    let mut gauge = |name: &str, help: &str, value: String| {
        let _ = writeln!(
            text,
            "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
        );
    };
    gauge(
        "keel_server_has_leader",
        "Whether a leader exists (1) or not (0).",
        u8::from(node.leader() != 0).to_string(),
    );
    gauge(
        "keel_server_is_leader",
        "Whether this member is the leader.",
        u8::from(node.is_leader()).to_string(),
    );
    gauge(
        "keel_server_raft_term",
        "The current Raft term.",
        node.term().to_string(),
    );
    gauge(
        "keel_server_raft_index",
        "The last index of the Raft log.",
        node.last_index().to_string(),
    );
    gauge(
        "keel_mvcc_revision",
        "The store's current revision.",
        node.store().revision().to_string(),
    );
    gauge(
        "keel_mvcc_compact_revision",
        "The revision history was compacted at.",
        node.store().compact_revision().to_string(),
    );
    gauge(
        "keel_mvcc_db_size_bytes",
        "Size of the store's database file.",
        node.quota().db_size_bytes().to_string(),
    );
    gauge(
        "keel_lease_count",
        "Leases granted and not yet revoked.",
        node.lessor().ids().len().to_string(),
    );
    let _ = writeln!(
        text,
        "# HELP keel_auth_token_failures_total Tokens refused, by cause (clients see `invalid auth token`).\n# TYPE keel_auth_token_failures_total counter"
    );
    for (cause, count) in keel_server::auth::token_failure_counts() {
        let _ = writeln!(
            text,
            "keel_auth_token_failures_total{{cause=\"{cause}\"}} {count}"
        );
    }
    // Tracing: all zero while --enable-distributed-tracing is off.
    let (exported, dropped_queue_full, dropped_export_failed) = crate::span_queue::counts();
    let _ = writeln!(
        text,
        "# HELP keel_tracing_spans_exported_total Spans the OTLP collector accepted.\n# TYPE keel_tracing_spans_exported_total counter\nkeel_tracing_spans_exported_total {exported}"
    );
    let _ = writeln!(
        text,
        "# HELP keel_tracing_spans_dropped_total Sampled spans never exported: the queue was full, or the export failed.\n# TYPE keel_tracing_spans_dropped_total counter\nkeel_tracing_spans_dropped_total{{reason=\"queue_full\"}} {dropped_queue_full}\nkeel_tracing_spans_dropped_total{{reason=\"export_failed\"}} {dropped_export_failed}"
    );
    text
}

/// Serves `/metrics` and `/health` until the task is dropped.
pub async fn serve(node: Arc<Node>, listener: TcpListener) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            continue;
        };
        let node = Arc::clone(&node);
        tokio::spawn(async move {
            let _ = tokio::time::timeout(REQUEST_TIMEOUT, async {
                let mut head = Vec::new();
                let mut buffer = [0u8; 1024];
                while !head.windows(4).any(|window| window == b"\r\n\r\n") {
                    let read = stream.read(&mut buffer).await?;
                    if read == 0 || head.len() + read > REQUEST_BYTES_MAX {
                        return Ok::<(), std::io::Error>(());
                    }
                    head.extend_from_slice(&buffer[..read]);
                }
                let line = String::from_utf8_lossy(&head);
                let path = line.split_whitespace().nth(1).unwrap_or("/");
                let (status, content_type, body) = match path {
                    "/metrics" => ("200 OK", "text/plain; version=0.0.4", render(&node)),
                    "/health" => {
                        let healthy = node.leader() != 0;
                        let body = format!("{{\"health\":\"{healthy}\"}}");
                        (if healthy { "200 OK" } else { "503 Service Unavailable" }, "application/json", body)
                    }
                    _ => ("404 Not Found", "text/plain", "404 page not found\n".to_string()),
                };
                let response = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                stream.write_all(response.as_bytes()).await?;
                stream.shutdown().await
            })
            .await;
        });
    }
}

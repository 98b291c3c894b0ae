//! The metrics endpoint (`--listen-metrics-urls`): member state, and refused tokens counted by
//! cause, the counterpart of the `keel-auth-failure` trailer.
//!
//! Guards against: token failures that operators can't see, and a health endpoint that lies.

mod support;

use std::io::{Read, Write};
use std::time::Duration;

use keel_api::etcdserverpb::kv_client::KvClient;
use keel_api::etcdserverpb::RangeRequest;
use support::{etcdctl, free_port, Keel};

fn get(port: u16, path: &str) -> String {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}

#[test]
fn metrics_count_refused_tokens_by_cause_and_health_reports_a_leader() {
    let metrics_port = free_port();
    let metrics_url = format!("http://127.0.0.1:{metrics_port}");
    let keel = Keel::start_with(&["--listen-metrics-urls", &metrics_url]);
    let endpoint = keel.endpoint();
    for args in [&["user", "add", "root:rootpw"][..], &["auth", "enable"]] {
        assert_eq!(etcdctl(&endpoint, args).status, Some(0));
    }
    let health = get(metrics_port, "/health");
    assert!(
        health.starts_with("HTTP/1.1 200") && health.contains(r#"{"health":"true"}"#),
        "{health}"
    );

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let status = runtime.block_on(async {
        let mut client = KvClient::connect(format!("http://{endpoint}"))
            .await
            .unwrap();
        let mut request = tonic::Request::new(RangeRequest {
            key: b"k".to_vec(),
            ..Default::default()
        });
        request
            .metadata_mut()
            .insert("token", "not-a-token-keel-issued".parse().unwrap());
        client.range(request).await.unwrap_err()
    });
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
    assert_eq!(status.message(), "etcdserver: invalid auth token");

    let metrics = get(metrics_port, "/metrics");
    assert!(metrics.contains("keel_server_is_leader 1"), "{metrics}");
    let refused: u64 = metrics
        .lines()
        .filter(|line| line.starts_with("keel_auth_token_failures_total{"))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    assert!(refused >= 1, "the refused token is counted:\n{metrics}");
}

//! Authentication through etcdctl, side by side with a real etcd 3.4: users, roles, permissions,
//! `auth enable/disable` and `--user`, with simple tokens and with JWTs (RS256, keys made by
//! `openssl` for the test); each JWT family signing and verifying on Keel; the cause of a
//! refused token in the `keel-auth-failure` trailer; and the auth state surviving `kill -9`.
//!
//! Guards against: a permission check that is missing, too loose or too strict on any KV
//! operation or transaction branch; root rules that differ from etcd's; error messages or exit
//! statuses etcdctl users would see differ; auth state lost on a crash.

mod support;

use std::path::Path;
use std::process::Command;

use serde_json::Value;
use support::compare::{check_against_etcd, Step};
use support::{etcdctl, Etcd, Keel, Output};

fn cmd(line: &str) -> Step {
    Step::new(
        line.split(' ')
            .map(|arg| arg.replace("<empty>", ""))
            .collect(),
    )
}

/// What must be equal on both servers: exit status, stdout with ids and raft terms taken out,
/// stderr without etcdctl's timestamped retry logs.
#[derive(Debug, PartialEq)]
struct Seen {
    status: Option<i32>,
    stdout: String,
    stderr: String,
}

fn erase_ids(value: &mut Value) {
    match value {
        Value::Object(fields) => {
            for (name, field) in fields.iter_mut() {
                match name.as_str() {
                    "cluster_id" | "member_id" | "raft_term" => *field = Value::from(0),
                    _ => erase_ids(field),
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(erase_ids),
        _ => {}
    }
}

fn normalize(output: &Output) -> Seen {
    let stdout = output
        .stdout
        .lines()
        .map(|line| match serde_json::from_str::<Value>(line) {
            Ok(mut value) if value.is_object() => {
                erase_ids(&mut value);
                value.to_string()
            }
            _ => line.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("\n");
    let stderr = output
        .stderr
        .lines()
        .filter(|line| !line.starts_with("{\"level\""))
        .collect::<Vec<_>>()
        .join("\n");
    Seen {
        status: output.status,
        stdout,
        stderr,
    }
}

/// Marks where Keel is killed with SIGKILL and started again; etcd keeps running.
/// Runs `steps` on a fresh etcd and a fresh Keel started with `flags`; fails listing each step
/// whose answers differ, or if a password reached Keel's log.
fn check(flags: &[&str], steps: &[Step]) {
    let raw = |seen: &Seen| format!("{}\n{}", seen.stdout, seen.stderr);
    check_against_etcd(flags, steps, normalize, raw, |keel: &Keel| {
        let log = keel.log();
        // No password (every one in these steps ends in "pw") reaches the log.
        assert!(
            !log.contains("rootpw") && !log.contains("alicepw"),
            "a password was logged"
        );
    });
}

const ROOT: &str = "--user root:rootpw";
const ALICE: &str = "--user alice:alicepw";

#[test]
fn users_and_roles_are_managed_as_in_etcd() {
    check(
        &[],
        &[
            cmd("user add root:rootpw").expect("User root created"),
            cmd("user add root:other").expect("user name already exists"),
            cmd("user add alice:alicepw"),
            cmd("user add bob:bobpw"),
            cmd("user list"),
            cmd("user list -w json").expect("users"),
            cmd("user get alice"),
            cmd("user get nobody").expect("user name not found"),
            cmd("role add r1").expect("Role r1 created"),
            cmd("role add r1").expect("role name already exists"),
            cmd("role add r2"),
            cmd("role list"),
            cmd("role list -w json"),
            cmd("role get r1"),
            cmd("role get nobody").expect("role name not found"),
            cmd("role grant-permission r1 read a").expect("Role r1 updated"),
            cmd("role grant-permission r1 write b d"),
            cmd("role grant-permission r1 readwrite p/ --prefix"),
            cmd("role grant-permission r1 read f --from-key"),
            // Granting the same key again changes its type.
            cmd("role grant-permission r1 readwrite a"),
            cmd("role grant-permission nobody read a").expect("role name not found"),
            cmd("role get r1"),
            cmd("role get r1 -w json").expect("perm"),
            cmd("role revoke-permission r1 zzz").expect("permission is not granted"),
            cmd("role revoke-permission r1 b d"),
            cmd("role revoke-permission r1 p/ --prefix"),
            cmd("role revoke-permission nobody a").expect("role name not found"),
            cmd("role get r1"),
            cmd("user grant-role alice r1").expect("Role r1 is granted to user alice"),
            cmd("user grant-role alice r1"),
            cmd("user grant-role alice r2"),
            cmd("user grant-role alice nope").expect("role name not found"),
            cmd("user grant-role nobody r1").expect("user name not found"),
            // The root role may be granted before it exists, as in etcd.
            cmd("user grant-role bob root"),
            cmd("user get alice --detail"),
            cmd("user get alice -w json"),
            cmd("user revoke-role alice r2"),
            cmd("user revoke-role alice r2").expect("role is not granted"),
            cmd("user passwd alice --interactive=false").stdin("newpw\n"),
            cmd("role delete r1"),
            cmd("role delete r1").expect("role name not found"),
            // Deleting a role takes it from its users.
            cmd("user get alice"),
            cmd("user delete bob").expect("User bob deleted"),
            cmd("user delete bob").expect("user name not found"),
            cmd("user list"),
            cmd("auth disable").expect("Authentication Disabled"),
            // etcdctl adds the root role and grants it to root when the server says it lacks it.
            cmd("auth enable").expect("Authentication Enabled"),
            cmd("user list").expect("user name is empty"),
            cmd("--user root:rootpw auth disable").expect("Authentication Disabled"),
            cmd("role get root"),
            cmd("user revoke-role root root"),
            cmd("role delete root"),
            cmd("user delete root"),
            cmd("auth enable").expect("root user does not exist"),
        ],
    );
}

/// Sets up root, and alice with read-write on prefix `foo` and read on `ro`.
fn enable_auth_steps() -> Vec<Step> {
    vec![
        cmd("user add root:rootpw"),
        cmd("role add root"),
        cmd("user grant-role root root"),
        cmd("user add alice:alicepw"),
        cmd("role add r"),
        cmd("role grant-permission r readwrite foo --prefix"),
        cmd("role grant-permission r read ro"),
        cmd("role grant-permission r write wo"),
        cmd("user grant-role alice r"),
        cmd("put foo1 v1").expect("OK"),
        cmd("put ro v"),
        cmd("put wo v"),
        cmd("put secret s"),
        cmd("auth enable").expect("Authentication Enabled"),
    ]
}

fn as_user(user: &str, line: &str) -> Step {
    cmd(&format!("{user} {line}"))
}

/// Every KV operation and transaction branch checked with a user's permissions.
fn permission_steps() -> Vec<Step> {
    vec![
        cmd("get foo1").expect("user name is empty"),
        cmd("put foo1 x").expect("user name is empty"),
        cmd("--user alice:wrong get foo1").expect("authentication failed"),
        cmd("--user nobody:x get foo1").expect("authentication failed"),
        as_user(ALICE, "get foo1").expect("v1"),
        as_user(ALICE, "get foo --prefix -w json"),
        as_user(ALICE, "get ro"),
        as_user(ALICE, "get secret").expect("permission denied"),
        as_user(ALICE, "get wo").expect("permission denied"),
        as_user(ALICE, "get a z").expect("permission denied"),
        as_user(ALICE, "get <empty> --prefix").expect("permission denied"),
        as_user(ALICE, "put foo2 v2").expect("OK"),
        as_user(ALICE, "put wo v2").expect("OK"),
        as_user(ALICE, "put wo v3 --prev-kv").expect("permission denied"),
        as_user(ALICE, "put ro x").expect("permission denied"),
        as_user(ALICE, "put secret x").expect("permission denied"),
        as_user(ALICE, "del secret").expect("permission denied"),
        as_user(ALICE, "del foo2").expect("1"),
        as_user(ALICE, "del foo --prefix --prev-kv"),
        as_user(ALICE, "put foo1 v1"),
        // Both branches and every compare are checked, whichever branch runs.
        as_user(ALICE, "txn")
            .stdin("value(\"foo1\") = \"v1\"\n\nput foo3 a\n\nget secret\n\n")
            .expect("permission denied"),
        as_user(ALICE, "txn")
            .stdin("value(\"secret\") = \"s\"\n\nput foo3 a\n\n\n")
            .expect("permission denied"),
        as_user(ALICE, "txn")
            .stdin("value(\"foo1\") = \"v1\"\n\nput foo3 a\nget ro\n\nget foo1\n\n")
            .expect("SUCCESS"),
        as_user(ALICE, "txn")
            .stdin("value(\"foo1\") = \"nope\"\n\nput foo4 a\n\nget foo3\n\n")
            .expect("FAILURE"),
        as_user(ALICE, "user list").expect("permission denied"),
        // A user may read their own user and the roles they hold, as in etcd.
        as_user(ALICE, "role get r").expect("KV Read"),
        as_user(ALICE, "user get alice").expect("Roles: r"),
        as_user(ALICE, "role get root").expect("permission denied"),
        as_user(ALICE, "user get root").expect("permission denied"),
        as_user(ALICE, "auth disable").expect("permission denied"),
        as_user(ALICE, "compact 3"),
        as_user(ROOT, "get secret").expect("s"),
        as_user(ROOT, "get <empty> --prefix --keys-only"),
        as_user(ROOT, "user list"),
        as_user(ROOT, "role list"),
        as_user(ROOT, "role get root"),
        as_user(ROOT, "auth enable").expect("Authentication Enabled"),
        as_user(ROOT, "user delete root").expect("invalid auth management"),
        as_user(ROOT, "user revoke-role root root").expect("invalid auth management"),
        as_user(ROOT, "role delete root").expect("invalid auth management"),
        // A new password: the old one fails from now on.
        as_user(ROOT, "user passwd alice --interactive=false").stdin("alicepw2\n"),
        as_user(ALICE, "get foo1").expect("authentication failed"),
        cmd("--user alice:alicepw2 get foo1").expect("v1"),
        // Losing the permission takes effect at once.
        as_user(ROOT, "role revoke-permission r foo --prefix"),
        cmd("--user alice:alicepw2 get foo1").expect("permission denied"),
        as_user(ROOT, "user delete alice"),
        cmd("--user alice:alicepw2 get foo1").expect("authentication failed"),
    ]
}

#[test]
fn permissions_with_simple_tokens_match_etcd() {
    let mut steps = enable_auth_steps();
    steps.extend(permission_steps());
    steps.extend([
        as_user(ROOT, "compact 2"),
        as_user(ROOT, "auth disable").expect("Authentication Disabled"),
        cmd("get secret").expect("s"),
        cmd("user list"),
        cmd("auth enable"),
        cmd("get secret").expect("user name is empty"),
    ]);
    check(&["--bcrypt-cost", "4"], &steps);
}

#[test]
fn auth_state_survives_kill_9() {
    let mut steps = enable_auth_steps();
    steps.extend([
        Step::restart_keel(),
        cmd("get foo1").expect("user name is empty"),
        as_user(ALICE, "get foo1").expect("v1"),
        as_user(ALICE, "get secret").expect("permission denied"),
        as_user(ROOT, "user get alice --detail"),
        as_user(ROOT, "user passwd alice --interactive=false").stdin("alicepw3\n"),
        as_user(ROOT, "auth disable"),
        Step::restart_keel(),
        cmd("get secret").expect("s"),
        cmd("user list"),
        cmd("auth enable"),
        Step::restart_keel(),
        cmd("--user alice:alicepw3 get foo1").expect("v1"),
        as_user(ALICE, "get foo1").expect("authentication failed"),
    ]);
    check(&["--bcrypt-cost", "4"], &steps);
}

/// Key files made by `openssl` for one algorithm family.
struct Keys {
    dir: tempfile::TempDir,
}

impl Keys {
    fn generate(algorithm: &[&str]) -> Keys {
        let dir = tempfile::tempdir().unwrap();
        let private = dir.path().join("private.pem");
        let public = dir.path().join("public.pem");
        openssl(&[&["genpkey"][..], algorithm, &["-out", path(&private)]].concat());
        openssl(&[
            "pkey",
            "-in",
            path(&private),
            "-pubout",
            "-out",
            path(&public),
        ]);
        Keys { dir }
    }

    fn private(&self) -> String {
        path(&self.dir.path().join("private.pem")).to_owned()
    }

    fn public(&self) -> String {
        path(&self.dir.path().join("public.pem")).to_owned()
    }

    fn flag(&self, sign_method: &str) -> String {
        format!(
            "jwt,pub-key={},priv-key={},sign-method={sign_method},ttl=10m",
            self.public(),
            self.private()
        )
    }
}

fn path(path: &Path) -> &str {
    path.to_str().unwrap()
}

fn openssl(args: &[&str]) {
    let output = Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl is installed (apt-get install -y openssl)");
    assert!(output.status.success(), "openssl {args:?}: {output:?}");
}

const RSA: &[&str] = &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"];

#[test]
fn permissions_with_rs256_jwts_match_etcd() {
    let keys = Keys::generate(RSA);
    let flag = keys.flag("RS256");
    let mut steps = enable_auth_steps();
    steps.extend(permission_steps());
    check(&["--auth-token", &flag, "--bcrypt-cost", "4"], &steps);
}

/// Enables auth on `keel` and returns whether root and alice can work with their tokens.
fn works_with_tokens(endpoint: &str) {
    for line in [
        "user add root:rootpw",
        "user grant-role root root",
        "user add alice:alicepw",
        "role add r",
        "role grant-permission r readwrite foo --prefix",
        "user grant-role alice r",
        "auth enable",
    ] {
        let args: Vec<&str> = line.split(' ').collect();
        let output = etcdctl(endpoint, &args);
        assert_eq!(output.status, Some(0), "{line}: {output:?}");
    }
    let put = etcdctl(endpoint, &["--user", "alice:alicepw", "put", "foo", "bar"]);
    assert_eq!(put.stdout, "OK\n", "{put:?}");
    let denied = etcdctl(endpoint, &["--user", "alice:alicepw", "get", "other"]);
    assert!(denied.stderr.contains("permission denied"), "{denied:?}");
    let get = etcdctl(endpoint, &["--user", "root:rootpw", "get", "foo"]);
    assert_eq!(get.stdout, "foo\nbar\n", "{get:?}");
}

#[test]
fn every_jwt_family_signs_and_verifies() {
    let rsa = Keys::generate(RSA);
    let ec256 = Keys::generate(&["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"]);
    let ec384 = Keys::generate(&["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-384"]);
    let ed = Keys::generate(&["-algorithm", "ED25519"]);
    let hmac_dir = tempfile::tempdir().unwrap();
    let secret = hmac_dir.path().join("secret");
    std::fs::write(&secret, b"a shared secret for the test, long enough").unwrap();
    let hmac = |method: &str| format!("jwt,priv-key={},sign-method={method}", path(&secret));
    let configurations = [
        rsa.flag("RS384"),
        rsa.flag("PS256"),
        rsa.flag("PS512"),
        ec256.flag("ES256"),
        ec384.flag("ES384"),
        ed.flag("EdDSA"),
        hmac("HS256"),
        hmac("HS512"),
    ];
    std::thread::scope(|scope| {
        for flag in &configurations {
            scope.spawn(move || {
                let keel = Keel::start_with(&["--auth-token", flag, "--bcrypt-cost", "4"]);
                works_with_tokens(&keel.endpoint());
                assert!(!keel.log().contains("PRIVATE KEY"));
            });
        }
    });
}

#[test]
fn mismatched_or_missing_keys_are_refused_at_start() {
    let one = Keys::generate(RSA);
    let other = Keys::generate(RSA);
    let mismatched = format!(
        "jwt,pub-key={},priv-key={},sign-method=RS256",
        other.public(),
        one.private()
    );
    for flag in [
        mismatched.as_str(),
        "jwt,sign-method=RS256",
        "jwt,pub-key=/nope,sign-method=RS256",
        "bogus",
    ] {
        let dir = tempfile::tempdir().unwrap();
        let output = Command::new(env!("CARGO_BIN_EXE_keel"))
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .args([
                "--listen-client-urls",
                "http://127.0.0.1:0",
                "--auth-token",
                flag,
            ])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{flag}: started");
        assert!(stderr.contains("--auth-token"), "{flag}: {stderr}");
        assert!(!stderr.contains("PRIVATE KEY"), "{flag}: {stderr}");
    }
}

/// Revoking a lease deletes its keys, so it needs write access to each of them (etcd's
/// `checkLeasePuts`); and so does attaching a key to a lease that holds keys one can't write.
fn lease_steps(endpoint: &str) -> Vec<Output> {
    let run = |line: &str| {
        let args: Vec<&str> = line.split(' ').collect();
        etcdctl(endpoint, &args)
    };
    let mut seen = Vec::new();
    for line in [
        "user add root:rootpw",
        "user grant-role root root",
        "user add alice:alicepw",
        "role add r",
        "role grant-permission r readwrite foo --prefix",
        "user grant-role alice r",
        "auth enable",
    ] {
        assert_eq!(run(line).status, Some(0), "{line}");
    }
    let granted = run("--user root:rootpw lease grant 600");
    let lease = granted
        .stdout
        .split(' ')
        .nth(1)
        .expect("lease id")
        .to_owned();
    for line in [
        format!("--user root:rootpw put secret s --lease={lease}"),
        format!("--user alice:alicepw put foo1 v --lease={lease}"),
        format!("--user alice:alicepw lease revoke {lease}"),
        "--user root:rootpw get secret".to_string(),
        format!("--user root:rootpw lease revoke {lease}"),
        "--user root:rootpw get secret".to_string(),
    ] {
        let mut output = run(&line);
        output.stdout = output.stdout.replace(&lease, "<lease>");
        output.stderr = output
            .stderr
            .lines()
            .filter(|line| !line.starts_with("{\"level\""))
            .map(|line| line.replace(&lease, "<lease>") + "\n")
            .collect();
        seen.push(output);
    }
    seen
}

#[test]
fn lease_revocation_needs_write_access_to_the_keys_as_in_etcd() {
    let (etcd, keel) = std::thread::scope(|scope| {
        let etcd = scope.spawn(|| lease_steps(&Etcd::start().endpoint()));
        let keel =
            scope.spawn(|| lease_steps(&Keel::start_with(&["--bcrypt-cost", "4"]).endpoint()));
        (etcd.join().unwrap(), keel.join().unwrap())
    });
    assert!(etcd[2].stderr.contains("permission denied"), "{etcd:?}");
    assert_eq!(etcd, keel);
}

mod wire {
    //! Raw gRPC: the trailer that names why a token was refused, and a verify-only member.

    use keel_api::etcdserverpb::auth_client::AuthClient;
    use keel_api::etcdserverpb::kv_client::KvClient;
    use keel_api::etcdserverpb::{AuthenticateRequest, RangeRequest};
    use tonic::transport::Channel;

    use super::*;

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    async fn channel(endpoint: &str) -> Channel {
        Channel::from_shared(format!("http://{endpoint}"))
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    async fn login(endpoint: &str, user: &str, password: &str) -> Result<String, tonic::Status> {
        let mut auth = AuthClient::new(channel(endpoint).await);
        let response = auth
            .authenticate(AuthenticateRequest {
                name: user.into(),
                password: password.into(),
            })
            .await?;
        Ok(response.into_inner().token)
    }

    /// A range with `token`; returns the status and the failure trailer.
    async fn range(endpoint: &str, token: &str) -> (tonic::Code, String, Option<String>) {
        let mut kv = KvClient::new(channel(endpoint).await);
        let mut request = tonic::Request::new(RangeRequest {
            key: b"foo".to_vec(),
            ..Default::default()
        });
        if let Ok(value) = token.parse() {
            request.metadata_mut().insert("token", value);
        }
        match kv.range(request).await {
            Ok(_) => (tonic::Code::Ok, String::new(), None),
            Err(status) => (
                status.code(),
                status.message().to_owned(),
                status
                    .metadata()
                    .get("keel-auth-failure")
                    .and_then(|value| value.to_str().ok())
                    .map(String::from),
            ),
        }
    }

    /// `token` with the base64 character at `position` changed.
    fn flip(token: &str, position: usize) -> String {
        let mut bytes = token.as_bytes().to_vec();
        bytes[position] = if bytes[position] == b'A' { b'B' } else { b'A' };
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn a_refused_token_is_etcds_error_with_the_cause_in_a_trailer() {
        let keys = Keys::generate(RSA);
        let keel = Keel::start_with(&["--auth-token", &keys.flag("RS256"), "--bcrypt-cost", "4"]);
        let endpoint = keel.endpoint();
        works_with_tokens(&endpoint);
        runtime().block_on(async {
            let token = login(&endpoint, "alice", "alicepw").await.unwrap();
            assert_eq!(range(&endpoint, &token).await.0, tonic::Code::Ok);
            let invalid = "etcdserver: invalid auth token".to_owned();
            let cases = [
                ("garbage".to_owned(), "malformed"),
                (flip(&token, token.len() - 10), "bad_signature"),
                ("x".repeat(9000), "oversized"),
            ];
            for (bad, cause) in cases {
                let seen = range(&endpoint, &bad).await;
                assert_eq!(
                    seen,
                    (
                        tonic::Code::Unauthenticated,
                        invalid.clone(),
                        Some(cause.to_owned())
                    ),
                    "{cause}"
                );
            }
            // Any auth change makes earlier JWTs stale, as etcd's auth revision does.
            let args = ["--user", "root:rootpw", "role", "add", "another"];
            assert_eq!(etcdctl(&endpoint, &args).status, Some(0));
            let seen = range(&endpoint, &token).await;
            assert_eq!(seen.2.as_deref(), Some("stale_auth_revision"), "{seen:?}");
            let wrong = login(&endpoint, "alice", "nope").await.unwrap_err();
            assert_eq!(wrong.code(), tonic::Code::InvalidArgument);
            assert_eq!(
                wrong.message(),
                "etcdserver: authentication failed, invalid user ID or password"
            );
        });
        let log = keel.log();
        assert!(
            log.contains("stale_auth_revision") && log.contains("\"alice\""),
            "{log}"
        );
        assert!(
            !log.contains("alicepw") && !log.contains("nope\""),
            "a password was logged"
        );
    }

    #[test]
    fn a_member_with_only_the_public_key_verifies_but_cannot_sign() {
        let keys = Keys::generate(RSA);
        let signer = Keel::start_with(&["--auth-token", &keys.flag("RS256"), "--bcrypt-cost", "4"]);
        let verify_only_flag = format!("jwt,pub-key={},sign-method=RS256", keys.public());
        let verifier = Keel::start_with(&["--auth-token", &verify_only_flag, "--bcrypt-cost", "4"]);
        // The same changes on both give the same auth revision, as replication will.
        works_with_tokens(&signer.endpoint());
        works_with_tokens_setup_only(&verifier.endpoint());
        runtime().block_on(async {
            let token = login(&signer.endpoint(), "alice", "alicepw").await.unwrap();
            assert_eq!(range(&verifier.endpoint(), &token).await.0, tonic::Code::Ok);
            let refused = login(&verifier.endpoint(), "alice", "alicepw")
                .await
                .unwrap_err();
            assert_eq!(refused.code(), tonic::Code::Unknown);
            assert_eq!(
                refused.message(),
                "auth: token signing attempted with verify-only key"
            );
        });
    }

    #[test]
    fn a_watch_needs_read_access_to_its_range() {
        use keel_api::etcdserverpb::watch_client::WatchClient;
        use keel_api::etcdserverpb::watch_request::RequestUnion;
        use keel_api::etcdserverpb::{WatchCreateRequest, WatchRequest};

        let keel = Keel::start_with(&["--bcrypt-cost", "4"]);
        let endpoint = keel.endpoint();
        works_with_tokens(&endpoint);
        let create = |key: &str, range_end: &str| WatchRequest {
            request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
                key: key.into(),
                range_end: range_end.into(),
                ..Default::default()
            })),
        };
        runtime().block_on(async {
            let token = login(&endpoint, "alice", "alicepw").await.unwrap();
            let mut watch = WatchClient::new(channel(&endpoint).await);
            let requests = vec![create("other", ""), create("foo", "fop"), create("a", "z")];
            let mut request = tonic::Request::new(tokio_stream::iter(requests));
            request
                .metadata_mut()
                .insert("token", token.parse().unwrap());
            let mut responses = watch.watch(request).await.unwrap().into_inner();
            let denied = "rpc error: code = PermissionDenied desc = etcdserver: permission denied";
            let mut seen = Vec::new();
            for _ in 0..3 {
                let response = responses.message().await.unwrap().unwrap();
                seen.push((response.created, response.canceled, response.cancel_reason));
            }
            assert_eq!(
                seen,
                [
                    (true, true, denied.to_owned()),
                    (true, false, String::new()),
                    (true, true, denied.to_owned()),
                ]
            );
            // Without a token: etcd's "user name is empty".
            let mut watch = WatchClient::new(channel(&endpoint).await);
            let request = tonic::Request::new(tokio_stream::iter(vec![create("foo", "")]));
            let mut responses = watch.watch(request).await.unwrap().into_inner();
            let response = responses.message().await.unwrap().unwrap();
            assert_eq!(
                response.cancel_reason,
                "rpc error: code = InvalidArgument desc = etcdserver: user name is empty"
            );
        });
    }

    fn works_with_tokens_setup_only(endpoint: &str) {
        for line in [
            "user add root:rootpw",
            "user grant-role root root",
            "user add alice:alicepw",
            "role add r",
            "role grant-permission r readwrite foo --prefix",
            "user grant-role alice r",
            "auth enable",
        ] {
            let args: Vec<&str> = line.split(' ').collect();
            assert_eq!(etcdctl(endpoint, &args).status, Some(0), "{line}");
        }
    }
}

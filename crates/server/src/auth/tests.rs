//! Token verification against hand-crafted tokens: each kind of bad token is refused with the
//! precise cause, while the status stays etcd's `invalid auth token`.
//!
//! Guards against: a forged, expired, unsigned or algorithm-confused token being accepted; a
//! refusal whose cause is wrong (operators debug logins with it); a cause leaking into the
//! status message, which clients match byte for byte.

use std::time::Duration;

use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use keel_api::authpb::User;
use keel_storage::mvcc::StoredAuth;
use prost::Message;
use serde_json::{json, Value};

use super::*;

const RSA_PRIVATE: &[u8] = include_bytes!("../../testdata/jwt/rsa.pem");
const RSA_PUBLIC: &[u8] = include_bytes!("../../testdata/jwt/rsa.pub.pem");
const OTHER_RSA_PRIVATE: &[u8] = include_bytes!("../../testdata/jwt/other_rsa.pem");
const HMAC_SECRET: &[u8] = b"a secret shared by the members";

/// An auth state at `revision` with users `alice` and `root`.
fn state(revision: u64) -> AuthState {
    let user = |name: &str| {
        let user = User {
            name: name.as_bytes().to_vec(),
            password: b"$2b$04$hash".to_vec(),
            roles: Vec::new(),
            options: None,
        };
        (name.to_owned(), user.encode_to_vec())
    };
    let stored = StoredAuth {
        enabled: true,
        revision,
        users: vec![user("alice"), user("root")],
        roles: Vec::new(),
    };
    AuthState::decode(1, stored).unwrap()
}

fn rs256() -> Tokens {
    let keys = JwtKeys {
        public_pem: Some(RSA_PUBLIC.to_vec()),
        private_pem: Some(RSA_PRIVATE.to_vec()),
    };
    Tokens::Jwt(Box::new(
        JwtTokens::new("RS256", keys, Duration::from_secs(300)).unwrap(),
    ))
}

fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

fn claims(user: &str, revision: u64) -> Value {
    json!({"username": user, "revision": revision, "exp": now() + 300})
}

fn sign(algorithm: Algorithm, key: &EncodingKey, claims: &Value) -> String {
    jsonwebtoken::encode(&Header::new(algorithm), claims, key).unwrap()
}

fn rsa_signed(claims: &Value) -> String {
    sign(
        Algorithm::RS256,
        &EncodingKey::from_rsa_pem(RSA_PRIVATE).unwrap(),
        claims,
    )
}

fn base64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Checks each `(token, expected)` against `tokens` at auth revision 5.
fn check(tokens: &Tokens, cases: &[(&str, String, Result<&str, TokenFailure>)]) {
    let state = state(5);
    for (what, token, expected) in cases {
        let seen = tokens.verify(token, &state).map(|info| info.user);
        assert_eq!(seen, expected.map(String::from), "{what}: {token}");
    }
}

#[test]
fn a_good_token_names_its_user() {
    let tokens = rs256();
    let issued = tokens.assign("alice", b"", 5).unwrap();
    check(
        &tokens,
        &[
            ("issued here", issued, Ok("alice")),
            ("signed by hand", rsa_signed(&claims("root", 5)), Ok("root")),
            // A revision newer than the member's (it has not applied the change yet) passes.
            (
                "newer revision",
                rsa_signed(&claims("alice", 6)),
                Ok("alice"),
            ),
            (
                "Go float revision",
                rsa_signed(&json!({"username": "alice", "revision": 5.0, "exp": now() + 60})),
                Ok("alice"),
            ),
        ],
    );
}

#[test]
fn each_bad_jwt_is_refused_with_its_cause() {
    use TokenFailure::*;
    let tokens = rs256();
    let good = rsa_signed(&claims("alice", 5));
    let (header, rest) = good.split_once('.').unwrap();
    let (payload, signature) = rest.split_once('.').unwrap();
    let mut flipped = signature.as_bytes().to_vec();
    flipped[10] = if flipped[10] == b'A' { b'B' } else { b'A' };
    let flipped = String::from_utf8(flipped).unwrap();
    let none_header = base64url(br#"{"alg":"none","typ":"JWT"}"#);
    let none_upper = base64url(br#"{"alg":"NONE"}"#);
    let payload_json = base64url(claims("root", 5).to_string().as_bytes());
    // The classic confusion: an HMAC token keyed with the RSA public key.
    let hs_with_public_key = sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(RSA_PUBLIC),
        &claims("root", 5),
    );
    let foreign = sign(
        Algorithm::RS256,
        &EncodingKey::from_rsa_pem(OTHER_RSA_PRIVATE).unwrap(),
        &claims("root", 5),
    );
    let ps256 = sign(
        Algorithm::PS256,
        &EncodingKey::from_rsa_pem(RSA_PRIVATE).unwrap(),
        &claims("root", 5),
    );
    check(
        &tokens,
        &[
            ("empty", String::new(), Err(Malformed)),
            ("one part", "abc".into(), Err(Malformed)),
            ("two parts", format!("{header}.{payload}"), Err(Malformed)),
            ("four parts", format!("{good}.x"), Err(Malformed)),
            (
                "header not base64",
                format!("!!.{payload}.{signature}"),
                Err(Malformed),
            ),
            (
                "header not JSON",
                format!("{}.{payload}.{signature}", base64url(b"nope")),
                Err(Malformed),
            ),
            (
                "header without alg",
                format!("{}.{payload}.{signature}", base64url(b"{}")),
                Err(Malformed),
            ),
            (
                "truncated",
                // Cut so the signature's base64 has an impossible length (4n + 1): always
                // malformed, whatever bytes this run's signature holds.
                {
                    let signature = good.rsplit('.').next().unwrap().len();
                    let cut = (signature % 4 + 4 - 1) % 4 + 20;
                    good[..good.len() - cut].to_owned()
                },
                Err(Malformed),
            ),
            ("oversized", "a".repeat(TOKEN_BYTES_MAX + 1), Err(Oversized)),
            (
                "flipped signature",
                format!("{header}.{payload}.{flipped}"),
                Err(BadSignature),
            ),
            (
                "other claims, same signature",
                format!("{header}.{payload_json}.{signature}"),
                Err(BadSignature),
            ),
            ("foreign key", foreign, Err(BadSignature)),
            (
                "alg none",
                format!("{none_header}.{payload_json}."),
                Err(AlgorithmNone),
            ),
            (
                "alg NONE",
                format!("{none_upper}.{payload_json}.{signature}"),
                Err(AlgorithmNone),
            ),
            (
                "HS256 keyed with the RS public key",
                hs_with_public_key,
                Err(AlgorithmMismatch),
            ),
            ("PS256 with the right key", ps256, Err(AlgorithmMismatch)),
            (
                "expired",
                rsa_signed(&json!({"username": "alice", "revision": 5, "exp": now() - 1})),
                Err(Expired),
            ),
            (
                "no exp",
                rsa_signed(&json!({"username": "alice", "revision": 5})),
                Err(MissingClaim),
            ),
            (
                "exp not a number",
                rsa_signed(&json!({"username": "alice", "revision": 5, "exp": "later"})),
                Err(InvalidClaim),
            ),
            (
                "no username",
                rsa_signed(&json!({"revision": 5, "exp": now() + 60})),
                Err(MissingClaim),
            ),
            (
                "username not a string",
                rsa_signed(&json!({"username": 7, "revision": 5, "exp": now() + 60})),
                Err(InvalidClaim),
            ),
            (
                "empty username",
                rsa_signed(&json!({"username": "", "revision": 5, "exp": now() + 60})),
                Err(InvalidClaim),
            ),
            (
                "no revision",
                rsa_signed(&json!({"username": "alice", "exp": now() + 60})),
                Err(MissingClaim),
            ),
            (
                "revision not a number",
                rsa_signed(&json!({"username": "alice", "revision": "5", "exp": now() + 60})),
                Err(InvalidClaim),
            ),
            (
                "negative revision",
                rsa_signed(&json!({"username": "alice", "revision": -5, "exp": now() + 60})),
                Err(InvalidClaim),
            ),
            (
                "fractional revision",
                rsa_signed(&json!({"username": "alice", "revision": 5.5, "exp": now() + 60})),
                Err(InvalidClaim),
            ),
            (
                "stale revision",
                rsa_signed(&claims("alice", 4)),
                Err(StaleRevision),
            ),
            (
                "unknown user",
                rsa_signed(&claims("mallory", 5)),
                Err(UnknownUser),
            ),
        ],
    );
}

#[test]
fn an_hmac_member_refuses_rsa_tokens_and_verifies_its_own() {
    use TokenFailure::*;
    let keys = JwtKeys {
        public_pem: None,
        private_pem: Some(HMAC_SECRET.to_vec()),
    };
    let tokens = Tokens::Jwt(Box::new(
        JwtTokens::new("HS256", keys, Duration::from_secs(60)).unwrap(),
    ));
    let hs384 = sign(
        Algorithm::HS384,
        &EncodingKey::from_secret(HMAC_SECRET),
        &claims("alice", 5),
    );
    let other_secret = sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(b"guessed"),
        &claims("alice", 5),
    );
    check(
        &tokens,
        &[
            ("own", tokens.assign("alice", b"", 5).unwrap(), Ok("alice")),
            (
                "RS256",
                rsa_signed(&claims("alice", 5)),
                Err(AlgorithmMismatch),
            ),
            ("HS384", hs384, Err(AlgorithmMismatch)),
            ("other secret", other_secret, Err(BadSignature)),
        ],
    );
}

#[test]
fn a_member_with_only_the_public_key_verifies_but_cannot_sign() {
    let keys = JwtKeys {
        public_pem: Some(RSA_PUBLIC.to_vec()),
        private_pem: None,
    };
    let tokens = Tokens::Jwt(Box::new(
        JwtTokens::new("RS256", keys, Duration::from_secs(60)).unwrap(),
    ));
    assert_eq!(tokens.assign("alice", b"", 5), Err(AssignError::VerifyOnly));
    check(
        &tokens,
        &[(
            "signed elsewhere",
            rsa_signed(&claims("alice", 5)),
            Ok("alice"),
        )],
    );
}

#[test]
fn keys_that_do_not_match_or_do_not_parse_are_refused() {
    let mismatched = JwtKeys {
        public_pem: Some(RSA_PUBLIC.to_vec()),
        private_pem: Some(OTHER_RSA_PRIVATE.to_vec()),
    };
    let error = JwtTokens::new("RS256", mismatched, Duration::from_secs(60)).unwrap_err();
    assert!(error.contains("don't match"), "{error}");
    let garbage = JwtKeys {
        public_pem: Some(b"not a key".to_vec()),
        private_pem: None,
    };
    assert!(JwtTokens::new("RS256", garbage, Duration::from_secs(60)).is_err());
    assert!(JwtTokens::new("ES512", JwtKeys::default(), Duration::from_secs(60)).is_err());
    assert!(JwtTokens::new("none", JwtKeys::default(), Duration::from_secs(60)).is_err());
    // An error never carries key material.
    let private_only = JwtKeys {
        public_pem: None,
        private_pem: Some(RSA_PRIVATE.to_vec()),
    };
    let error = JwtTokens::new("RS256", private_only, Duration::from_secs(60)).unwrap_err();
    assert!(!error.contains("PRIVATE"), "{error}");
}

#[test]
fn simple_tokens_expire_renew_and_die_with_their_user() {
    use TokenFailure::*;
    let tokens = Tokens::Simple(SimpleTokens::new(Duration::from_millis(300)));
    let state = state(5);
    let hash = state.user("alice").unwrap().password.clone();
    let token = tokens.assign("alice", &hash, 5).unwrap();
    let (prefix, index) = token.split_once('.').unwrap();
    assert_eq!(prefix.len(), 16);
    assert!(prefix.chars().all(|c| c.is_ascii_alphabetic()));
    assert!(index.parse::<u64>().is_ok());
    // Each use renews the TTL.
    for _ in 0..4 {
        std::thread::sleep(Duration::from_millis(120));
        assert_eq!(tokens.verify(&token, &state).unwrap().user, "alice");
    }
    std::thread::sleep(Duration::from_millis(350));
    assert_eq!(tokens.verify(&token, &state), Err(Expired));
    assert_eq!(tokens.verify(&token, &state), Err(UnknownToken));
    assert_eq!(tokens.verify("nope.1", &state), Err(UnknownToken));
    // A new password (or a user deleted and added again) invalidates the user's tokens.
    let token = tokens.assign("alice", b"$2b$04$older", 5).unwrap();
    assert_eq!(tokens.verify(&token, &state), Err(UserChanged));
    let token = tokens.assign("mallory", &hash, 5).unwrap();
    assert_eq!(tokens.verify(&token, &state), Err(UnknownUser));
    let token = tokens.assign("alice", &hash, 5).unwrap();
    tokens.forget_all();
    assert_eq!(tokens.verify(&token, &state), Err(UnknownToken));
}

#[test]
fn a_refusal_is_etcds_status_with_the_cause_in_a_trailer() {
    for &failure in TokenFailure::ALL {
        let status = tonic::Status::from(ServerError::InvalidAuthToken(failure));
        assert_eq!(status.code(), tonic::Code::Unauthenticated);
        assert_eq!(status.message(), "etcdserver: invalid auth token");
        assert_eq!(
            status
                .metadata()
                .get(FAILURE_TRAILER)
                .unwrap()
                .to_str()
                .unwrap(),
            failure.name()
        );
    }
    let before = token_failure_counts();
    TokenFailure::Expired.record();
    let after = token_failure_counts();
    let count = |counts: &[(&str, u64)]| {
        counts
            .iter()
            .find(|(name, _)| *name == "expired")
            .unwrap()
            .1
    };
    assert!(count(&after) > count(&before));
}

#[test]
fn auth_token_options_parse_as_etcd_writes_them() {
    let parse = |text: &str| {
        AuthConfig::parse(text, Duration::from_secs(300), 4, |ttl| match ttl {
            "10m" => Ok(Duration::from_secs(600)),
            other => Err(format!("bad duration {other}")),
        })
    };
    assert!(matches!(parse("simple").unwrap().tokens, Tokens::Simple(_)));
    let dir = tempfile::tempdir().unwrap();
    let private = dir.path().join("private.pem");
    let public = dir.path().join("public.pem");
    std::fs::write(&private, RSA_PRIVATE).unwrap();
    std::fs::write(&public, RSA_PUBLIC).unwrap();
    let jwt = format!(
        "jwt,pub-key={},priv-key={},sign-method=RS256,ttl=10m",
        public.display(),
        private.display()
    );
    assert!(matches!(parse(&jwt).unwrap().tokens, Tokens::Jwt(_)));
    assert_eq!(parse("simple").unwrap().bcrypt_cost, 4);
    // An out-of-range cost falls back to etcd's default.
    let config = AuthConfig::parse("simple", Duration::from_secs(1), 99, |_| Err(String::new()));
    assert_eq!(config.unwrap().bcrypt_cost, BCRYPT_COST_DEFAULT);
    for bad in [
        "",
        "jwt,sign-method",
        "jwt,a=b=c",
        "jwt,ttl=1y,sign-method=RS256",
        "magic",
    ] {
        assert!(parse(bad).is_err(), "{bad}");
    }
}

//! etcd's JWT tokens: claims `username`, `revision` (the auth revision at issue) and `exp`,
//! signed with the member's key (`--auth-token jwt,pub-key=…,priv-key=…,sign-method=…,ttl=…`).
//! A member given only the public key verifies tokens but cannot issue them.
//!
//! Verification refuses, in this order: a token that is not three base64url parts with a JSON
//! header; `alg: none`; another algorithm than the member's (an HS token against an RS key
//! included: the HMAC secret would be the public key); a bad signature; an expired token; a
//! missing or mistyped claim. The algorithm is checked before any key is used.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde_json::Value;

use super::state::AuthInfo;
use super::tokens::{AssignError, TokenFailure};

/// etcd's default JWT lifetime.
pub const JWT_TTL_DEFAULT: Duration = Duration::from_secs(5 * 60);

pub struct JwtTokens {
    algorithm: Algorithm,
    /// `None` on a verify-only member.
    signing: Option<EncodingKey>,
    verifying: DecodingKey,
    validation: Validation,
    ttl: Duration,
}

impl std::fmt::Debug for JwtTokens {
    // Keys stay out of every log.
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("JwtTokens")
            .field("algorithm", &self.algorithm)
            .field("verify_only", &self.signing.is_none())
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

/// The key material of a JWT configuration, as read from its files.
#[derive(Default)]
pub struct JwtKeys {
    pub public_pem: Option<Vec<u8>>,
    pub private_pem: Option<Vec<u8>>,
}

fn algorithm_named(name: &str) -> Result<Algorithm, String> {
    Ok(match name {
        "HS256" => Algorithm::HS256,
        "HS384" => Algorithm::HS384,
        "HS512" => Algorithm::HS512,
        "RS256" => Algorithm::RS256,
        "RS384" => Algorithm::RS384,
        "RS512" => Algorithm::RS512,
        "PS256" => Algorithm::PS256,
        "PS384" => Algorithm::PS384,
        "PS512" => Algorithm::PS512,
        "ES256" => Algorithm::ES256,
        "ES384" => Algorithm::ES384,
        "EdDSA" => Algorithm::EdDSA,
        "ES512" => return Err("sign-method ES512 is not supported by Keel yet".into()),
        other => return Err(format!("invalid auth signature method {other:?}")),
    })
}

fn algorithm_name(algorithm: Algorithm) -> &'static str {
    match algorithm {
        Algorithm::HS256 => "HS256",
        Algorithm::HS384 => "HS384",
        Algorithm::HS512 => "HS512",
        Algorithm::RS256 => "RS256",
        Algorithm::RS384 => "RS384",
        Algorithm::RS512 => "RS512",
        Algorithm::PS256 => "PS256",
        Algorithm::PS384 => "PS384",
        Algorithm::PS512 => "PS512",
        Algorithm::ES256 => "ES256",
        Algorithm::ES384 => "ES384",
        Algorithm::EdDSA => "EdDSA",
    }
}

/// Whether the token's payload (already verified when this is asked) has the claim `name`.
fn payload_has(name: &str, token: &str) -> bool {
    token
        .split('.')
        .nth(1)
        .and_then(|payload| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(payload)
                .ok()
        })
        .and_then(|bytes| serde_json::from_slice::<Value>(&bytes).ok())
        .is_some_and(|claims| claims.get(name).is_some())
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}

impl JwtTokens {
    /// Sets up signing and verification; errors name the problem, never the key.
    pub fn new(sign_method: &str, keys: JwtKeys, ttl: Duration) -> Result<JwtTokens, String> {
        use jsonwebtoken::AlgorithmFamily as Family;
        let algorithm = algorithm_named(sign_method)?;
        let bad = |which: &str, error: jsonwebtoken::errors::Error| {
            format!("the {which} key is not a valid {sign_method} key: {error}")
        };
        let (signing, verifying) = match algorithm.family() {
            // etcd uses the private key file's bytes as the HMAC secret.
            Family::Hmac => {
                let secret = keys
                    .private_pem
                    .ok_or("sign-method HS* needs priv-key (the HMAC secret)")?;
                (
                    Some(EncodingKey::from_secret(&secret)),
                    DecodingKey::from_secret(&secret),
                )
            }
            family => {
                let public = keys.public_pem.ok_or(
                    "pub-key is missing: Keel verifies RS, PS, ES and EdDSA tokens with the \
                     public key (a member with only pub-key verifies but cannot sign)",
                )?;
                let verifying = match family {
                    Family::Rsa => DecodingKey::from_rsa_pem(&public),
                    Family::Ec => DecodingKey::from_ec_pem(&public),
                    _ => DecodingKey::from_ed_pem(&public),
                }
                .map_err(|error| bad("public", error))?;
                let signing = keys
                    .private_pem
                    .map(|private| match family {
                        Family::Rsa => EncodingKey::from_rsa_pem(&private),
                        Family::Ec => EncodingKey::from_ec_pem(&private),
                        _ => EncodingKey::from_ed_pem(&private),
                    })
                    .transpose()
                    .map_err(|error| bad("private", error))?;
                (signing, verifying)
            }
        };
        let mut validation = Validation::new(algorithm);
        validation.leeway = 0;
        validation.validate_exp = true;
        validation.validate_aud = false;
        validation.set_required_spec_claims(&["exp"]);
        let tokens = JwtTokens {
            algorithm,
            signing,
            verifying,
            validation,
            ttl,
        };
        // A signing member must verify its own tokens: refuse a key pair that doesn't match
        // (etcd's ErrKeyMismatch) at start rather than every token later.
        if tokens.signing.is_some() {
            let probe = tokens
                .assign("keel-key-check", 1)
                .map_err(|_| format!("cannot sign with the {sign_method} private key"))?;
            tokens
                .verify(&probe)
                .map_err(|_| "the public and private keys don't match".to_string())?;
        }
        Ok(tokens)
    }

    pub fn verify_only(&self) -> bool {
        self.signing.is_none()
    }

    pub fn assign(&self, user: &str, revision: u64) -> Result<String, AssignError> {
        let signing = self.signing.as_ref().ok_or(AssignError::VerifyOnly)?;
        let claims = serde_json::json!({
            "username": user,
            "revision": revision,
            "exp": now_secs().saturating_add(self.ttl.as_secs()),
        });
        jsonwebtoken::encode(&Header::new(self.algorithm), &claims, signing).map_err(|error| {
            tracing::error!(%error, "could not sign a token");
            AssignError::Signing
        })
    }

    pub fn verify(&self, token: &str) -> Result<AuthInfo, TokenFailure> {
        let header = token.split('.').next().unwrap_or_default();
        if token.split('.').count() != 3 {
            return Err(TokenFailure::Malformed);
        }
        let header: Value = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(header.trim_end_matches('='))
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .ok_or(TokenFailure::Malformed)?;
        let algorithm = header
            .get("alg")
            .and_then(Value::as_str)
            .ok_or(TokenFailure::Malformed)?;
        if algorithm.eq_ignore_ascii_case("none") {
            return Err(TokenFailure::AlgorithmNone);
        }
        if algorithm != algorithm_name(self.algorithm) {
            return Err(TokenFailure::AlgorithmMismatch);
        }
        let decoded = jsonwebtoken::decode::<Value>(token, &self.verifying, &self.validation)
            .map_err(|error| match error.kind() {
                ErrorKind::InvalidSignature => TokenFailure::BadSignature,
                ErrorKind::ExpiredSignature => TokenFailure::Expired,
                // jsonwebtoken reads a mistyped `exp` as a missing one; tell them apart.
                ErrorKind::MissingRequiredClaim(_) if payload_has("exp", token) => {
                    TokenFailure::InvalidClaim
                }
                ErrorKind::MissingRequiredClaim(_) => TokenFailure::MissingClaim,
                ErrorKind::InvalidClaimFormat(_) => TokenFailure::InvalidClaim,
                ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
                    TokenFailure::AlgorithmMismatch
                }
                ErrorKind::InvalidToken
                | ErrorKind::Base64(_)
                | ErrorKind::Json(_)
                | ErrorKind::Utf8(_) => TokenFailure::Malformed,
                _ => TokenFailure::BadSignature,
            })?;
        let claims = decoded.claims;
        let claim = |name: &str| claims.get(name).ok_or(TokenFailure::MissingClaim);
        let user = claim("username")?
            .as_str()
            .filter(|user| !user.is_empty())
            .ok_or(TokenFailure::InvalidClaim)?;
        let revision = claim("revision")?;
        let revision = revision
            .as_u64()
            .or_else(|| {
                // Go's JSON numbers are floats; etcd's tokens may carry `5.0`-style revisions.
                revision
                    .as_f64()
                    .filter(|value| value.fract() == 0.0 && *value >= 1.0 && *value < 2f64.powi(63))
                    .map(|value| value as u64)
            })
            .filter(|revision| *revision >= 1)
            .ok_or(TokenFailure::InvalidClaim)?;
        Ok(AuthInfo {
            user: user.to_owned(),
            revision,
        })
    }
}

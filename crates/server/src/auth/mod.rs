//! Authentication and authorisation, as etcd's auth store: users with bcrypt passwords, roles
//! with key permissions, the root rules, and tokens (`simple` or JWT).
//!
//! ```text
//!  change (UserAdd, RoleGrantPermission, AuthEnable…) ──▶ log entry ──▶ apply.rs ──▶ redb tables
//!                                                                              │
//!  request + `token` metadata ──▶ Auth::check ──▶ tokens (who) ──▶ AuthState (may they?) ◀─┘
//! ```
//!
//! Changes are log entries applied deterministically into the store's auth tables in the entry's
//! own write transaction, so they replicate and survive restarts like keys. Passwords are hashed
//! by the member that proposes the change; the log and the store hold only the hash. Each
//! member reads the tables back into an [`AuthState`] when the store's auth version moves, and
//! checks requests against it. Tokens live in memory: simple tokens on the member that issued
//! them, JWTs anywhere the key is.

pub mod apply;
mod jwt;
pub mod permissions;
mod state;
#[cfg(test)]
mod tests;
mod tokens;

use std::sync::{Arc, RwLock};
use std::time::Duration;

use keel_api::etcdserverpb::request_op::Request as Op;
use keel_api::etcdserverpb::{
    CompactionRequest, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest,
};
use keel_api::EtcdError;

pub use jwt::{JwtKeys, JwtTokens, JWT_TTL_DEFAULT};
pub use permissions::Access;
pub use state::{has_root_role, AuthInfo, AuthState};
pub use tokens::{
    token_failure_counts, AssignError, SimpleTokens, TokenFailure, Tokens, TOKEN_BYTES_MAX,
};

use crate::lease::Lessor;
use crate::{Node, ServerError};

pub const ROOT_USER: &str = "root";
pub const ROOT_ROLE: &str = "root";
/// gRPC metadata that carries the token (etcd's `rpctypes.TokenFieldNameGRPC`).
pub const TOKEN_METADATA: &str = "token";
/// The gateway's header name, which etcd also reads from gRPC metadata.
pub const TOKEN_METADATA_GATEWAY: &str = "authorization";
/// Response trailer naming why a token was refused (a [`TokenFailure`] name).
pub const FAILURE_TRAILER: &str = "keel-auth-failure";
/// bcrypt's bounds, as etcd checks `--bcrypt-cost`.
pub const BCRYPT_COST_MIN: u32 = 4;
pub const BCRYPT_COST_MAX: u32 = 31;
pub const BCRYPT_COST_DEFAULT: u32 = 10;

/// How a member authenticates.
#[derive(Debug)]
pub struct AuthConfig {
    pub tokens: Tokens,
    pub bcrypt_cost: u32,
}

impl AuthConfig {
    /// Parses etcd's `--auth-token` value (`simple`, or `jwt,pub-key=…,priv-key=…,
    /// sign-method=…,ttl=…`) and reads the key files. `simple_ttl` is `--auth-token-ttl`;
    /// `parse_duration` reads Go durations (the JWT `ttl`).
    pub fn parse(
        auth_token: &str,
        simple_ttl: Duration,
        bcrypt_cost: u32,
        parse_duration: impl Fn(&str) -> Result<Duration, String>,
    ) -> Result<AuthConfig, String> {
        let mut parts = auth_token.split(',');
        let kind = parts.next().unwrap_or_default();
        let mut options = std::collections::BTreeMap::new();
        for part in parts {
            let pair: Vec<&str> = part.split('=').collect();
            let [name, value] = pair[..] else {
                return Err(format!(
                    "invalid auth token option {part:?} (want name=value)"
                ));
            };
            if options.insert(name, value).is_some() {
                return Err(format!("auth token option {name:?} is given twice"));
            }
        }
        let tokens = match kind {
            "simple" => Tokens::Simple(SimpleTokens::new(simple_ttl)),
            "jwt" => {
                let ttl = match options.get("ttl") {
                    Some(ttl) if !ttl.is_empty() => {
                        parse_duration(ttl).map_err(|error| format!("invalid jwt ttl: {error}"))?
                    }
                    _ => JWT_TTL_DEFAULT,
                };
                let read = |name: &str| -> Result<Option<Vec<u8>>, String> {
                    match options.get(name) {
                        // An empty file is no key, as in etcd.
                        Some(path) if !path.is_empty() => std::fs::read(path)
                            .map(|bytes| Some(bytes).filter(|bytes| !bytes.is_empty()))
                            .map_err(|error| format!("cannot read {name} {path:?}: {error}")),
                        _ => Ok(None),
                    }
                };
                let keys = JwtKeys {
                    public_pem: read("pub-key")?,
                    private_pem: read("priv-key")?,
                };
                let sign_method = options.get("sign-method").copied().unwrap_or_default();
                let jwt = JwtTokens::new(sign_method, keys, ttl)?;
                if jwt.verify_only() {
                    tracing::warn!("JWT public key only: this member verifies tokens, issues none");
                }
                Tokens::Jwt(Box::new(jwt))
            }
            other => {
                return Err(format!(
                    "unknown auth token type {other:?} (want simple or jwt)"
                ))
            }
        };
        let bcrypt_cost = if (BCRYPT_COST_MIN..=BCRYPT_COST_MAX).contains(&bcrypt_cost) {
            bcrypt_cost
        } else {
            // etcd falls back to the default the same way.
            tracing::warn!(
                given = bcrypt_cost,
                default = BCRYPT_COST_DEFAULT,
                "invalid --bcrypt-cost; using the default"
            );
            BCRYPT_COST_DEFAULT
        };
        Ok(AuthConfig {
            tokens,
            bcrypt_cost,
        })
    }
}

/// A member's authentication: the auth state read from its store, and its tokens.
pub struct Auth {
    node: Arc<Node>,
    state: RwLock<Arc<AuthState>>,
    tokens: Tokens,
    bcrypt_cost: u32,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Auth")
            .field("tokens", &self.tokens)
            .field("bcrypt_cost", &self.bcrypt_cost)
            .finish_non_exhaustive()
    }
}

impl Auth {
    pub fn new(node: Arc<Node>, config: AuthConfig) -> Auth {
        Auth {
            node,
            state: RwLock::new(Arc::new(AuthState::unread())),
            tokens: config.tokens,
            bcrypt_cost: config.bcrypt_cost,
        }
    }

    pub fn bcrypt_cost(&self) -> u32 {
        self.bcrypt_cost
    }

    pub fn tokens(&self) -> &Tokens {
        &self.tokens
    }

    /// The current auth state (read again from the store only when it changed).
    pub fn state(&self) -> Result<Arc<AuthState>, ServerError> {
        let store = self.node.store();
        let version = store.auth_version();
        {
            let cached = self
                .state
                .read()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if cached.version == version {
                return Ok(Arc::clone(&cached));
            }
        }
        let (version, stored) = store.read_auth()?;
        let fresh = Arc::new(AuthState::decode(version, stored)?);
        let mut cached = self
            .state
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if !fresh.enabled && cached.enabled {
            // etcd forgets every simple token when auth is disabled.
            self.tokens.forget_all();
        }
        if cached.version == u64::MAX || cached.version < version {
            *cached = Arc::clone(&fresh);
        }
        Ok(fresh)
    }

    /// Who the request's token names: `None` when auth is disabled or the request has no token
    /// (etcd's `AuthInfoFromCtx`).
    pub fn info(
        &self,
        state: &AuthState,
        metadata: &tonic::metadata::MetadataMap,
    ) -> Result<Option<AuthInfo>, ServerError> {
        if !state.enabled {
            return Ok(None);
        }
        let Some(value) = metadata
            .get(TOKEN_METADATA)
            .or_else(|| metadata.get(TOKEN_METADATA_GATEWAY))
        else {
            return Ok(None);
        };
        let verified = match value.to_str() {
            Ok(token) => self.tokens.verify(token, state),
            Err(_) => Err(TokenFailure::Malformed),
        };
        match verified {
            Ok(info) => Ok(Some(info)),
            Err(failure) => {
                failure.record();
                Err(ServerError::InvalidAuthToken(failure))
            }
        }
    }

    /// Checks a request's token and permissions; returns who sent it.
    pub fn check<T: Permitted>(
        &self,
        request: &tonic::Request<T>,
    ) -> Result<Option<AuthInfo>, ServerError> {
        let state = self.state()?;
        let info = self.info(&state, request.metadata())?;
        request
            .get_ref()
            .permitted(&state, info.as_ref(), self.node.lessor())?;
        Ok(info)
    }

    /// Checks that the request comes from a root user (when auth is enabled).
    pub fn check_admin<T>(
        &self,
        request: &tonic::Request<T>,
    ) -> Result<Option<AuthInfo>, ServerError> {
        let state = self.state()?;
        let info = self.info(&state, request.metadata())?;
        state.check_admin(info.as_ref())?;
        Ok(info)
    }

    /// Like [`Auth::check_admin`], but a non-root user for whom `allowed` holds passes too.
    pub fn check_admin_unless<T>(
        &self,
        request: &tonic::Request<T>,
        allowed: impl FnOnce(&AuthInfo) -> bool,
    ) -> Result<Option<AuthInfo>, ServerError> {
        let state = self.state()?;
        let info = self.info(&state, request.metadata())?;
        match state.check_admin(info.as_ref()) {
            Err(error) if !info.as_ref().is_some_and(allowed) => Err(error.into()),
            _ => Ok(info),
        }
    }

    /// Checks only that a token, when given, is valid (requests etcd lets any user make).
    pub fn check_token<T>(
        &self,
        request: &tonic::Request<T>,
    ) -> Result<Option<AuthInfo>, ServerError> {
        let state = self.state()?;
        self.info(&state, request.metadata())
    }
}

impl Auth {
    /// The check a watch stream makes for each watcher it creates: read access to the range,
    /// with the token the stream was opened with. A refusal is the cancel reason etcd 3.5 sends.
    pub fn watch_permit(
        self: &Arc<Self>,
        metadata: tonic::metadata::MetadataMap,
    ) -> crate::watch::WatchPermit {
        let auth = Arc::clone(self);
        Box::new(move |key: &[u8], range_end: &[u8]| {
            let checked = auth.state().and_then(|state| {
                let info = auth.info(&state, &metadata)?;
                Ok(state.check_keys(info.as_ref(), Access::Read, key, range_end)?)
            });
            checked.map_err(|error| {
                let status = tonic::Status::from(error);
                format!(
                    "rpc error: code = {:?} desc = {}",
                    status.code(),
                    status.message()
                )
            })
        })
    }

    /// Checks the token of a lease request and, for a revoke, write access to the lease's keys
    /// (etcd: revoking deletes them).
    pub fn check_lease<T>(
        &self,
        request: &tonic::Request<T>,
        revoked: Option<i64>,
    ) -> Result<Option<AuthInfo>, ServerError> {
        let state = self.state()?;
        let info = self.info(&state, request.metadata())?;
        if let Some(lease) = revoked {
            lease_keys_writable(&state, info.as_ref(), self.node.lessor(), lease)?;
        }
        Ok(info)
    }

    /// Checks read access to each of `keys` (a time-to-live that lists a lease's keys).
    pub fn check_read_keys<T>(
        &self,
        request: &tonic::Request<T>,
        keys: &[Vec<u8>],
    ) -> Result<(), ServerError> {
        let state = self.state()?;
        let info = self.info(&state, request.metadata())?;
        for key in keys {
            state.check_keys(info.as_ref(), Access::Read, key, &[])?;
        }
        Ok(())
    }
}

/// A request whose permissions etcd checks against its keys.
pub trait Permitted {
    fn permitted(
        &self,
        state: &AuthState,
        info: Option<&AuthInfo>,
        lessor: &Lessor,
    ) -> Result<(), EtcdError>;
}

/// A put attaching a lease needs write access to every key the lease already holds (etcd: the
/// user could not revoke the lease otherwise).
fn lease_keys_writable(
    state: &AuthState,
    info: Option<&AuthInfo>,
    lessor: &Lessor,
    lease: i64,
) -> Result<(), EtcdError> {
    if lease == 0 || !state.enabled {
        return Ok(());
    }
    for key in lessor.keys(lease) {
        state.check_keys(info, Access::Write, &key, &[])?;
    }
    Ok(())
}

impl Permitted for RangeRequest {
    fn permitted(
        &self,
        state: &AuthState,
        info: Option<&AuthInfo>,
        _: &Lessor,
    ) -> Result<(), EtcdError> {
        state.check_keys(info, Access::Read, &self.key, &self.range_end)
    }
}

impl Permitted for PutRequest {
    fn permitted(
        &self,
        state: &AuthState,
        info: Option<&AuthInfo>,
        lessor: &Lessor,
    ) -> Result<(), EtcdError> {
        state.check_keys(info, Access::Write, &self.key, &[])?;
        lease_keys_writable(state, info, lessor, self.lease)?;
        if self.prev_kv {
            state.check_keys(info, Access::Read, &self.key, &[])?;
        }
        Ok(())
    }
}

impl Permitted for DeleteRangeRequest {
    fn permitted(
        &self,
        state: &AuthState,
        info: Option<&AuthInfo>,
        _: &Lessor,
    ) -> Result<(), EtcdError> {
        state.check_keys(info, Access::Write, &self.key, &self.range_end)?;
        if self.prev_kv {
            state.check_keys(info, Access::Read, &self.key, &self.range_end)?;
        }
        Ok(())
    }
}

impl Permitted for TxnRequest {
    /// Every compare needs read access, and every operation of both branches its own access,
    /// whichever branch runs (etcd's `checkTxnAuth`).
    fn permitted(
        &self,
        state: &AuthState,
        info: Option<&AuthInfo>,
        lessor: &Lessor,
    ) -> Result<(), EtcdError> {
        for compare in &self.compare {
            state.check_keys(info, Access::Read, &compare.key, &compare.range_end)?;
        }
        let ops = self.success.iter().chain(&self.failure);
        ops.filter_map(|op: &RequestOp| op.request.as_ref())
            .try_for_each(|op| match op {
                Op::RequestRange(range) => range.permitted(state, info, lessor),
                Op::RequestPut(put) => put.permitted(state, info, lessor),
                Op::RequestDeleteRange(delete) => delete.permitted(state, info, lessor),
                Op::RequestTxn(txn) => txn.permitted(state, info, lessor),
            })
    }
}

impl Permitted for CompactionRequest {
    /// etcd 3.4 lets any authenticated user compact.
    fn permitted(&self, _: &AuthState, _: Option<&AuthInfo>, _: &Lessor) -> Result<(), EtcdError> {
        Ok(())
    }
}

/// Hashes a password for a log entry (bcrypt, `cost`). Slow by design: run it off the async
/// workers.
pub async fn hash_password(password: String, cost: u32) -> Result<String, ServerError> {
    tokio::task::spawn_blocking(move || bcrypt::hash(password, cost))
        .await
        .map_err(|error| ServerError::Fatal(format!("password hashing panicked: {error}")))?
        .map_err(|error| ServerError::Fatal(format!("password hashing failed: {error}")))
}

/// Whether `password` matches a stored bcrypt hash; off the async workers.
pub async fn password_matches(password: String, hash: Vec<u8>) -> bool {
    tokio::task::spawn_blocking(move || {
        std::str::from_utf8(&hash).is_ok_and(|hash| bcrypt::verify(password, hash).unwrap_or(false))
    })
    .await
    .unwrap_or(false)
}

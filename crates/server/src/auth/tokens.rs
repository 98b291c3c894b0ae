//! Auth tokens: etcd's `simple` tokens (random strings this member remembers for a TTL that each
//! use renews) and signed JWTs (see `jwt.rs`), and why a token was refused.
//!
//! Every refusal is etcd's Unauthenticated `invalid auth token` on the wire, because clients
//! re-authenticate on exactly that; the [`TokenFailure`] says why, in a response trailer, the
//! log and a counter. A token itself is never logged.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::jwt::JwtTokens;
use super::state::{AuthInfo, AuthState};

/// Longest token looked at; longer ones are refused unread (etcd's tokens are far shorter).
pub const TOKEN_BYTES_MAX: usize = 8 * 1024;
/// Simple tokens remembered at most; past it the ones closest to expiry are forgotten first.
const SIMPLE_TOKENS_MAX: usize = 1_000_000;

/// Declares [`TokenFailure`] with its names and counters from one list.
macro_rules! token_failures {
    ($($(#[$doc:meta])* $variant:ident => $name:literal,)*) => {
        /// Why a token was refused.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum TokenFailure {
            $($(#[$doc])* $variant,)*
        }

        impl TokenFailure {
            pub const ALL: &'static [TokenFailure] = &[$(TokenFailure::$variant,)*];

            /// The cause as sent in the `keel-auth-failure` trailer and used as a metric label.
            pub const fn name(self) -> &'static str {
                match self {
                    $(TokenFailure::$variant => $name,)*
                }
            }
        }
    };
}

token_failures! {
    /// Not a token of the configured kind: bad shape, bad base64 or JSON, not ASCII.
    Malformed => "malformed",
    /// Longer than [`TOKEN_BYTES_MAX`].
    Oversized => "oversized",
    /// The signature does not verify with this member's key.
    BadSignature => "bad_signature",
    /// Past its expiry (`exp`, or a simple token's TTL).
    Expired => "expired",
    /// Signed with another algorithm than the member's `sign-method` (an HS token against an RS
    /// key included).
    AlgorithmMismatch => "algorithm_mismatch",
    /// Unsigned (`alg: none`).
    AlgorithmNone => "alg_none",
    /// A claim etcd's tokens carry (`username`, `revision`, `exp`) is missing.
    MissingClaim => "missing_claim",
    /// A claim has the wrong type or value.
    InvalidClaim => "invalid_claim",
    /// Issued before the auth store last changed (etcd's auth revision).
    StaleRevision => "stale_auth_revision",
    /// Names a user that does not exist (any more).
    UnknownUser => "unknown_user",
    /// A simple token this member never issued, or has forgotten (expired, auth disabled).
    UnknownToken => "unknown_token",
    /// A simple token of a user whose password changed, or who was deleted and added again.
    UserChanged => "user_changed",
}

/// Refusals by cause since start, in [`TokenFailure::ALL`] order.
static FAILURE_COUNTS: [AtomicU64; 12] = [const { AtomicU64::new(0) }; 12];

impl TokenFailure {
    fn index(self) -> usize {
        TokenFailure::ALL
            .iter()
            .position(|failure| *failure == self)
            .expect("every failure is listed")
    }

    /// Counts and logs a refusal.
    pub fn record(self) {
        FAILURE_COUNTS[self.index()].fetch_add(1, Ordering::Relaxed);
        tracing::warn!(cause = self.name(), "refused an auth token");
    }
}

/// Refused tokens by cause since start (a metric with the cause as label).
pub fn token_failure_counts() -> Vec<(&'static str, u64)> {
    TokenFailure::ALL
        .iter()
        .map(|failure| {
            (
                failure.name(),
                FAILURE_COUNTS[failure.index()].load(Ordering::Relaxed),
            )
        })
        .collect()
}

/// The configured kind of token.
#[derive(Debug)]
pub enum Tokens {
    Simple(SimpleTokens),
    Jwt(Box<JwtTokens>),
}

/// Why a token can't be issued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AssignError {
    /// This member has only the public key (etcd's `ErrVerifyOnly`).
    VerifyOnly,
    /// The signer failed (a broken key).
    Signing,
}

impl Tokens {
    /// Issues a token for `user` (whose stored password hash is `password_hash`) at auth
    /// revision `revision`.
    pub fn assign(
        &self,
        user: &str,
        password_hash: &[u8],
        revision: u64,
    ) -> Result<String, AssignError> {
        match self {
            Tokens::Simple(simple) => Ok(simple.assign(user, password_hash)),
            Tokens::Jwt(jwt) => jwt.assign(user, revision),
        }
    }

    /// Who `token` names, checked against `state`.
    pub fn verify(&self, token: &str, state: &AuthState) -> Result<AuthInfo, TokenFailure> {
        if token.len() > TOKEN_BYTES_MAX {
            return Err(TokenFailure::Oversized);
        }
        let info = match self {
            Tokens::Simple(simple) => simple.verify(token, state)?,
            Tokens::Jwt(jwt) => jwt.verify(token)?,
        };
        // A simple token stands at the current revision; a JWT at the one it was issued at.
        if info.revision < state.revision {
            return Err(TokenFailure::StaleRevision);
        }
        if state.user(&info.user).is_none() {
            return Err(TokenFailure::UnknownUser);
        }
        Ok(info)
    }

    /// Forgets every simple token (auth was disabled).
    pub fn forget_all(&self) {
        if let Tokens::Simple(simple) = self {
            simple.lock().clear();
        }
    }
}

#[derive(Debug)]
struct SimpleToken {
    user: String,
    /// The user's password hash when the token was issued: a changed password, or a user deleted
    /// and added again, invalidates the token (etcd's `invalidateUser`).
    password_hash: Vec<u8>,
    deadline: Instant,
}

/// etcd's simple tokens: 16 random letters, a dot and a counter.
#[derive(Debug)]
pub struct SimpleTokens {
    ttl: Duration,
    tokens: Mutex<HashMap<String, SimpleToken>>,
    issued: AtomicU64,
}

impl SimpleTokens {
    pub fn new(ttl: Duration) -> SimpleTokens {
        SimpleTokens {
            ttl,
            tokens: Mutex::new(HashMap::new()),
            issued: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, SimpleToken>> {
        self.tokens
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn assign(&self, user: &str, password_hash: &[u8]) -> String {
        const LETTERS: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
        let mut random = [0u8; 16];
        getrandom::fill(&mut random).expect("the operating system's random source works");
        let prefix: String = random
            .iter()
            .map(|byte| LETTERS[usize::from(*byte) % LETTERS.len()] as char)
            .collect();
        let index = self.issued.fetch_add(1, Ordering::Relaxed) + 1;
        let token = format!("{prefix}.{index}");
        let now = Instant::now();
        let mut tokens = self.lock();
        if index.is_multiple_of(1024) || tokens.len() >= SIMPLE_TOKENS_MAX {
            tokens.retain(|_, token| token.deadline > now);
        }
        if tokens.len() >= SIMPLE_TOKENS_MAX {
            let mut deadlines: Vec<Instant> = tokens.values().map(|token| token.deadline).collect();
            deadlines.sort_unstable();
            let cutoff = deadlines[deadlines.len() / 10];
            tokens.retain(|_, token| token.deadline > cutoff);
        }
        tokens.insert(
            token.clone(),
            SimpleToken {
                user: user.to_owned(),
                password_hash: password_hash.to_vec(),
                deadline: now + self.ttl,
            },
        );
        token
    }

    fn verify(&self, token: &str, state: &AuthState) -> Result<AuthInfo, TokenFailure> {
        let now = Instant::now();
        let mut tokens = self.lock();
        let Some(found) = tokens.get_mut(token) else {
            return Err(TokenFailure::UnknownToken);
        };
        if found.deadline <= now {
            tokens.remove(token);
            return Err(TokenFailure::Expired);
        }
        match state.user(&found.user) {
            None => {
                tokens.remove(token);
                return Err(TokenFailure::UnknownUser);
            }
            Some(user) if user.password != found.password_hash => {
                tokens.remove(token);
                return Err(TokenFailure::UserChanged);
            }
            Some(_) => {}
        }
        // Each use renews the TTL, as etcd's simple token keeper does.
        found.deadline = now + self.ttl;
        Ok(AuthInfo {
            user: found.user.clone(),
            revision: state.revision,
        })
    }
}

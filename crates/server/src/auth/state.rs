//! The auth state as of one auth store version: decoded users and roles with each user's merged
//! permissions, and etcd's rules for who may do what.

use std::collections::{BTreeMap, HashMap};

use keel_api::authpb::{Role, User};
use keel_api::EtcdError;
use keel_storage::mvcc::StoredAuth;
use prost::Message;

use super::permissions::{Access, UserPermissions};
use super::ROOT_ROLE;
use crate::ServerError;

/// Who a request comes from: the user its token names and the auth revision it was issued at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthInfo {
    pub user: String,
    pub revision: u64,
}

/// A decoded, immutable auth state.
#[derive(Debug, Default)]
pub struct AuthState {
    /// The store's auth version this state was read at.
    pub(super) version: u64,
    pub enabled: bool,
    /// etcd's auth revision: 1 for a store that never changed, as etcd starts it.
    pub revision: u64,
    users: BTreeMap<String, User>,
    roles: BTreeMap<String, Role>,
    permissions: HashMap<String, UserPermissions>,
}

/// The revision a stored auth revision stands for (etcd commits revision 1 on a new store).
pub fn effective_revision(stored: u64) -> u64 {
    stored.max(1)
}

impl AuthState {
    /// A state no store version matches, so the first reader reads the store.
    pub(super) fn unread() -> AuthState {
        AuthState {
            version: u64::MAX,
            ..AuthState::default()
        }
    }

    pub(super) fn decode(version: u64, stored: StoredAuth) -> Result<AuthState, ServerError> {
        let corrupt = |what: &str, name: &str, error: prost::DecodeError| {
            ServerError::Fatal(format!("auth {what} {name:?} does not decode: {error}"))
        };
        let mut users = BTreeMap::new();
        for (name, bytes) in stored.users {
            let user =
                User::decode(bytes.as_slice()).map_err(|error| corrupt("user", &name, error))?;
            users.insert(name, user);
        }
        let mut roles = BTreeMap::new();
        for (name, bytes) in stored.roles {
            let role =
                Role::decode(bytes.as_slice()).map_err(|error| corrupt("role", &name, error))?;
            roles.insert(name, role);
        }
        let permissions = users
            .iter()
            .map(|(name, user)| {
                let granted = user
                    .roles
                    .iter()
                    .filter_map(|role| roles.get(role))
                    .flat_map(|role: &Role| role.key_permission.iter());
                (name.clone(), UserPermissions::merge(granted))
            })
            .collect();
        Ok(AuthState {
            version,
            enabled: stored.enabled,
            revision: effective_revision(stored.revision),
            users,
            roles,
            permissions,
        })
    }

    pub fn user(&self, name: &str) -> Option<&User> {
        self.users.get(name)
    }

    pub fn role(&self, name: &str) -> Option<&Role> {
        self.roles.get(name)
    }

    /// User names in byte order, as etcd lists them.
    pub fn user_names(&self) -> Vec<String> {
        self.users.keys().cloned().collect()
    }

    pub fn role_names(&self) -> Vec<String> {
        self.roles.keys().cloned().collect()
    }

    /// etcd's `IsAdminPermitted`: with auth enabled, only a user holding the root role.
    pub fn check_admin(&self, info: Option<&AuthInfo>) -> Result<(), EtcdError> {
        if !self.enabled {
            return Ok(());
        }
        let info = info
            .filter(|info| !info.user.is_empty())
            .ok_or(EtcdError::UserEmpty)?;
        let user = self.user(&info.user).ok_or(EtcdError::UserNotFound)?;
        if has_root_role(user) {
            Ok(())
        } else {
            Err(EtcdError::PermissionDenied)
        }
    }

    /// etcd's `isOpPermitted`: `access` to the key or to `[key, range_end)`.
    pub fn check_keys(
        &self,
        info: Option<&AuthInfo>,
        access: Access,
        key: &[u8],
        range_end: &[u8],
    ) -> Result<(), EtcdError> {
        if !self.enabled {
            return Ok(());
        }
        let info = info.ok_or(EtcdError::UserEmpty)?;
        let Some(user) = self.user(&info.user) else {
            tracing::warn!(user = %info.user, "permission check for a user that does not exist");
            return Err(EtcdError::PermissionDenied);
        };
        if has_root_role(user) {
            return Ok(());
        }
        let allowed = self
            .permissions
            .get(&info.user)
            .is_some_and(|permissions| permissions.allows(access, key, range_end));
        if allowed {
            Ok(())
        } else {
            Err(EtcdError::PermissionDenied)
        }
    }
}

/// Roles are kept sorted, as etcd keeps them.
pub fn has_root_role(user: &User) -> bool {
    user.roles
        .binary_search_by(|role| role.as_str().cmp(ROOT_ROLE))
        .is_ok()
}

//! Applying auth log entries: etcd's `authStore` changes with its checks, in the order etcd makes
//! them, written in the entry's store transaction. Deterministic: the decision uses only the
//! entry and the stored auth state (never the clock or this member's memory), so every member
//! and every replay reaches the same state.

use keel_api::authpb::{Permission, Role, User, UserAddOptions};
use keel_api::etcdserverpb::{
    AuthDisableResponse, AuthEnableResponse, AuthRoleAddResponse, AuthRoleDeleteResponse,
    AuthRoleGrantPermissionResponse, AuthRoleRevokePermissionResponse, AuthUserAddResponse,
    AuthUserChangePasswordResponse, AuthUserDeleteResponse, AuthUserGrantRoleResponse,
    AuthUserRevokeRoleResponse,
};
use keel_api::EtcdError;
use keel_storage::mvcc::{AuthTable, Store, WriteTxn};
use prost::Message;

use super::state::{effective_revision, has_root_role};
use super::{ROOT_ROLE, ROOT_USER};
use crate::request::AuthRequest;
use crate::ServerError;

/// The answer to an applied auth entry (headers are filled by the gRPC layer).
#[derive(Debug, Clone, PartialEq)]
pub enum AuthResponse {
    Enable(AuthEnableResponse),
    Disable(AuthDisableResponse),
    UserAdd(AuthUserAddResponse),
    UserDelete(AuthUserDeleteResponse),
    UserChangePassword(AuthUserChangePasswordResponse),
    UserGrantRole(AuthUserGrantRoleResponse),
    UserRevokeRole(AuthUserRevokeRoleResponse),
    RoleAdd(AuthRoleAddResponse),
    RoleDelete(AuthRoleDeleteResponse),
    RoleGrantPermission(AuthRoleGrantPermissionResponse),
    RoleRevokePermission(AuthRoleRevokePermissionResponse),
}

/// Applies auth log entry `index`. A refused change writes nothing.
pub fn apply(
    store: &Store,
    index: u64,
    request: &AuthRequest,
) -> Result<AuthResponse, ServerError> {
    let mut txn = Auth {
        txn: store.write(index)?,
    };
    let response = txn.apply(request)?;
    txn.txn.commit(false)?;
    Ok(response)
}

struct Auth<'a> {
    txn: WriteTxn<'a>,
}

type Applied = Result<AuthResponse, ServerError>;

impl Auth<'_> {
    fn apply(&mut self, request: &AuthRequest) -> Applied {
        match request {
            AuthRequest::Enable(_) => self.enable(),
            AuthRequest::Disable(_) => self.disable(),
            AuthRequest::UserAdd(request) => self.user_add(
                &request.name,
                &request.hashed_password,
                request.options.unwrap_or_default(),
            ),
            AuthRequest::UserDelete(request) => self.user_delete(&request.name),
            AuthRequest::UserChangePassword(request) => {
                self.user_change_password(&request.name, &request.hashed_password)
            }
            AuthRequest::UserGrantRole(request) => {
                self.user_grant_role(&request.user, &request.role)
            }
            AuthRequest::UserRevokeRole(request) => {
                self.user_revoke_role(&request.name, &request.role)
            }
            AuthRequest::RoleAdd(request) => self.role_add(&request.name),
            AuthRequest::RoleDelete(request) => self.role_delete(&request.role),
            AuthRequest::RoleGrantPermission(request) => {
                self.role_grant_permission(&request.name, request.perm.as_ref())
            }
            AuthRequest::RoleRevokePermission(request) => {
                self.role_revoke_permission(&request.role, &request.key, &request.range_end)
            }
        }
    }

    fn enabled(&self) -> Result<bool, ServerError> {
        Ok(self.txn.auth_state()?.0)
    }

    /// etcd's `commitRevision`: every change of users and roles moves the auth revision.
    fn commit_revision(&mut self) -> Result<(), ServerError> {
        let (enabled, revision) = self.txn.auth_state()?;
        self.txn
            .set_auth_state(enabled, effective_revision(revision) + 1)?;
        Ok(())
    }

    fn user(&self, name: &str) -> Result<Option<User>, ServerError> {
        self.txn
            .auth_get(AuthTable::Users, name)?
            .map(|bytes| decode(&bytes, "user", name))
            .transpose()
    }

    fn role(&self, name: &str) -> Result<Option<Role>, ServerError> {
        self.txn
            .auth_get(AuthTable::Roles, name)?
            .map(|bytes| decode(&bytes, "role", name))
            .transpose()
    }

    fn put_user(&mut self, user: &User) -> Result<(), ServerError> {
        let name = String::from_utf8_lossy(&user.name).into_owned();
        self.txn
            .auth_put(AuthTable::Users, &name, &user.encode_to_vec())?;
        Ok(())
    }

    fn put_role(&mut self, role: &Role) -> Result<(), ServerError> {
        let name = String::from_utf8_lossy(&role.name).into_owned();
        self.txn
            .auth_put(AuthTable::Roles, &name, &role.encode_to_vec())?;
        Ok(())
    }

    fn enable(&mut self) -> Applied {
        let (enabled, revision) = self.txn.auth_state()?;
        if !enabled {
            let root = self.user(ROOT_USER)?.ok_or(EtcdError::RootUserNotExist)?;
            if !has_root_role(&root) {
                return Err(EtcdError::RootRoleNotExist.into());
            }
            // Enabling keeps the revision, as in etcd.
            self.txn
                .set_auth_state(true, effective_revision(revision))?;
            tracing::info!("enabled authentication");
        }
        Ok(AuthResponse::Enable(AuthEnableResponse::default()))
    }

    fn disable(&mut self) -> Applied {
        let (enabled, revision) = self.txn.auth_state()?;
        if enabled {
            self.txn
                .set_auth_state(false, effective_revision(revision) + 1)?;
            tracing::info!("disabled authentication");
        }
        Ok(AuthResponse::Disable(AuthDisableResponse::default()))
    }

    fn user_add(&mut self, name: &str, hashed_password: &str, options: UserAddOptions) -> Applied {
        if name.is_empty() {
            return Err(EtcdError::UserEmpty.into());
        }
        if self.user(name)?.is_some() {
            return Err(EtcdError::UserAlreadyExists.into());
        }
        let password = if options.no_password {
            Vec::new()
        } else {
            hashed_password.as_bytes().to_vec()
        };
        self.put_user(&User {
            name: name.as_bytes().to_vec(),
            password,
            roles: Vec::new(),
            options: Some(options),
        })?;
        self.commit_revision()?;
        tracing::info!(user = name, "added a user");
        Ok(AuthResponse::UserAdd(AuthUserAddResponse::default()))
    }

    fn user_delete(&mut self, name: &str) -> Applied {
        if self.enabled()? && name == ROOT_USER {
            return Err(EtcdError::InvalidAuthManagement.into());
        }
        if self.user(name)?.is_none() {
            return Err(EtcdError::UserNotFound.into());
        }
        self.txn.auth_remove(AuthTable::Users, name)?;
        self.commit_revision()?;
        tracing::info!(user = name, "deleted a user");
        Ok(AuthResponse::UserDelete(AuthUserDeleteResponse::default()))
    }

    fn user_change_password(&mut self, name: &str, hashed_password: &str) -> Applied {
        let mut user = self.user(name)?.ok_or(EtcdError::UserNotFound)?;
        let no_password = user.options.is_some_and(|options| options.no_password);
        user.password = if no_password {
            Vec::new()
        } else {
            hashed_password.as_bytes().to_vec()
        };
        self.put_user(&user)?;
        self.commit_revision()?;
        tracing::info!(user = name, "changed the password of a user");
        Ok(AuthResponse::UserChangePassword(
            AuthUserChangePasswordResponse::default(),
        ))
    }

    fn user_grant_role(&mut self, name: &str, role: &str) -> Applied {
        let mut user = self.user(name)?.ok_or(EtcdError::UserNotFound)?;
        // The root role may be granted before it is created, as in etcd.
        if role != ROOT_ROLE && self.role(role)?.is_none() {
            return Err(EtcdError::RoleNotFound.into());
        }
        match user.roles.binary_search_by(|held| held.as_str().cmp(role)) {
            Ok(_) => {
                tracing::warn!(user = name, role, "ignored granting a role the user holds");
            }
            Err(position) => {
                user.roles.insert(position, role.to_owned());
                self.put_user(&user)?;
                self.commit_revision()?;
                tracing::info!(user = name, role, "granted a role to a user");
            }
        }
        Ok(AuthResponse::UserGrantRole(
            AuthUserGrantRoleResponse::default(),
        ))
    }

    fn user_revoke_role(&mut self, name: &str, role: &str) -> Applied {
        if self.enabled()? && name == ROOT_USER && role == ROOT_ROLE {
            return Err(EtcdError::InvalidAuthManagement.into());
        }
        let mut user = self.user(name)?.ok_or(EtcdError::UserNotFound)?;
        let before = user.roles.len();
        user.roles.retain(|held| held != role);
        if user.roles.len() == before {
            return Err(EtcdError::RoleNotGranted.into());
        }
        self.put_user(&user)?;
        self.commit_revision()?;
        tracing::info!(user = name, role, "revoked a role from a user");
        Ok(AuthResponse::UserRevokeRole(
            AuthUserRevokeRoleResponse::default(),
        ))
    }

    fn role_add(&mut self, name: &str) -> Applied {
        if name.is_empty() {
            return Err(EtcdError::RoleEmpty.into());
        }
        if self.role(name)?.is_some() {
            return Err(EtcdError::RoleAlreadyExists.into());
        }
        self.put_role(&Role {
            name: name.as_bytes().to_vec(),
            key_permission: Vec::new(),
        })?;
        self.commit_revision()?;
        tracing::info!(role = name, "added a role");
        Ok(AuthResponse::RoleAdd(AuthRoleAddResponse::default()))
    }

    fn role_delete(&mut self, name: &str) -> Applied {
        if self.enabled()? && name == ROOT_ROLE {
            return Err(EtcdError::InvalidAuthManagement.into());
        }
        if self.role(name)?.is_none() {
            return Err(EtcdError::RoleNotFound.into());
        }
        self.txn.auth_remove(AuthTable::Roles, name)?;
        // Users lose the role too.
        for (user_name, bytes) in self.txn.auth_list(AuthTable::Users)? {
            let mut user: User = decode(&bytes, "user", &user_name)?;
            let before = user.roles.len();
            user.roles.retain(|held| held != name);
            if user.roles.len() != before {
                self.put_user(&user)?;
            }
        }
        self.commit_revision()?;
        tracing::info!(role = name, "deleted a role");
        Ok(AuthResponse::RoleDelete(AuthRoleDeleteResponse::default()))
    }

    fn role_grant_permission(&mut self, name: &str, permission: Option<&Permission>) -> Applied {
        let permission = permission.ok_or(EtcdError::PermissionNotGiven)?;
        let mut role = self.role(name)?.ok_or(EtcdError::RoleNotFound)?;
        let existing = role
            .key_permission
            .iter_mut()
            .find(|held| held.key == permission.key && held.range_end == permission.range_end);
        match existing {
            Some(held) => held.perm_type = permission.perm_type,
            None => {
                role.key_permission.push(permission.clone());
                // Stable, by key, as etcd's sort of a sorted list plus one.
                role.key_permission.sort_by(|a, b| a.key.cmp(&b.key));
            }
        }
        self.put_role(&role)?;
        self.commit_revision()?;
        tracing::info!(role = name, "granted a permission to a role");
        Ok(AuthResponse::RoleGrantPermission(
            AuthRoleGrantPermissionResponse::default(),
        ))
    }

    fn role_revoke_permission(&mut self, name: &str, key: &[u8], range_end: &[u8]) -> Applied {
        let mut role = self.role(name)?.ok_or(EtcdError::RoleNotFound)?;
        let before = role.key_permission.len();
        role.key_permission
            .retain(|held| held.key != key || held.range_end != range_end);
        if role.key_permission.len() == before {
            return Err(EtcdError::PermissionNotGranted.into());
        }
        self.put_role(&role)?;
        self.commit_revision()?;
        tracing::info!(role = name, "revoked a permission from a role");
        Ok(AuthResponse::RoleRevokePermission(
            AuthRoleRevokePermissionResponse::default(),
        ))
    }
}

fn decode<T: Message + Default>(bytes: &[u8], what: &str, name: &str) -> Result<T, ServerError> {
    T::decode(bytes)
        .map_err(|error| ServerError::Fatal(format!("stored auth {what} {name:?}: {error}")))
}

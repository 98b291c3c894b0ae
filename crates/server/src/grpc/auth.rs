//! The Auth service: users, roles, permissions, the auth switch and logins, as etcd serves them.
//! Changes go through the log (passwords hashed first, here); reads answer from the member's
//! auth state. With auth enabled, everything but Authenticate needs a root user's token.

use std::sync::Arc;

use keel_api::etcdserverpb::auth_server::Auth as AuthRpc;
use keel_api::etcdserverpb::*;
use keel_api::EtcdError;
use tonic::{Request, Response, Status};

use crate::apply::Response as Applied;
use crate::auth::{hash_password, password_matches, AssignError, Auth};
use crate::request::{AuthRequest, Request as Proposal};
use crate::{Node, ServerError};

/// Times a login is retried when the auth store changes while the password is checked.
const AUTHENTICATE_ATTEMPTS_MAX: usize = 3;

#[derive(Debug, Clone)]
pub struct AuthService {
    node: Arc<Node>,
    auth: Arc<Auth>,
}

impl AuthService {
    pub fn new(node: Arc<Node>, auth: Arc<Auth>) -> AuthService {
        AuthService { node, auth }
    }

    fn header(&self) -> Option<ResponseHeader> {
        Some(self.node.header(0))
    }

    /// Checks that a root user asks, then puts `change` through the log.
    async fn change<T>(&self, request: &Request<T>, change: AuthRequest) -> Result<(), Status> {
        self.auth.check_admin(request)?;
        let applied = self.node.propose(Proposal::Auth(change)).await?;
        debug_assert!(matches!(applied, Applied::Auth(_)));
        Ok(())
    }

    async fn hash(&self, password: &str) -> Result<String, Status> {
        Ok(hash_password(password.to_owned(), self.auth.bcrypt_cost()).await?)
    }
}

#[tonic::async_trait]
impl AuthRpc for AuthService {
    async fn auth_enable(
        &self,
        request: Request<AuthEnableRequest>,
    ) -> Result<Response<AuthEnableResponse>, Status> {
        self.change(&request, AuthRequest::Enable(AuthEnableRequest {}))
            .await?;
        Ok(Response::new(AuthEnableResponse {
            header: self.header(),
        }))
    }

    async fn auth_disable(
        &self,
        request: Request<AuthDisableRequest>,
    ) -> Result<Response<AuthDisableResponse>, Status> {
        self.change(&request, AuthRequest::Disable(AuthDisableRequest {}))
            .await?;
        // etcd forgets every simple token when auth is disabled.
        self.auth.tokens().forget_all();
        Ok(Response::new(AuthDisableResponse {
            header: self.header(),
        }))
    }

    async fn auth_status(
        &self,
        request: Request<AuthStatusRequest>,
    ) -> Result<Response<AuthStatusResponse>, Status> {
        self.auth.check_admin(&request)?;
        let state = self.auth.state()?;
        Ok(Response::new(AuthStatusResponse {
            header: self.header(),
            enabled: state.enabled,
            auth_revision: state.revision,
        }))
    }

    async fn authenticate(
        &self,
        request: Request<AuthenticateRequest>,
    ) -> Result<Response<AuthenticateResponse>, Status> {
        let AuthenticateRequest { name, password } = request.into_inner();
        for _ in 0..AUTHENTICATE_ATTEMPTS_MAX {
            let state = self.auth.state()?;
            if !state.enabled {
                return Err(EtcdError::AuthNotEnabled.into());
            }
            let user = state
                .user(&name)
                .filter(|user| !user.options.is_some_and(|options| options.no_password));
            let Some(user) = user else {
                tracing::warn!(user = %name, "authentication failed: no such user, or a user without password");
                return Err(EtcdError::AuthFailed.into());
            };
            if !password_matches(password.clone(), user.password.clone()).await {
                tracing::warn!(user = %name, "authentication failed: wrong password");
                return Err(EtcdError::AuthFailed.into());
            }
            let token = self
                .auth
                .tokens()
                .assign(&name, &user.password, state.revision)
                .map_err(|error| match error {
                    AssignError::VerifyOnly => ServerError::VerifyOnly,
                    AssignError::Signing => ServerError::Fatal("token signing failed".into()),
                })?;
            // A change while the password was checked may have changed the answer: ask again,
            // as etcd does.
            if self.auth.state()?.revision == state.revision {
                tracing::debug!(user = %name, "authenticated a user");
                return Ok(Response::new(AuthenticateResponse {
                    header: self.header(),
                    token,
                }));
            }
        }
        Err(EtcdError::AuthOldRevision.into())
    }

    async fn user_add(
        &self,
        request: Request<AuthUserAddRequest>,
    ) -> Result<Response<AuthUserAddResponse>, Status> {
        self.auth.check_admin(&request)?;
        let mut add = request.get_ref().clone();
        if !add.options.is_some_and(|options| options.no_password) {
            add.hashed_password = self.hash(&add.password).await?;
        }
        // The password itself never reaches the log.
        add.password.clear();
        self.change(&request, AuthRequest::UserAdd(add)).await?;
        Ok(Response::new(AuthUserAddResponse {
            header: self.header(),
        }))
    }

    async fn user_get(
        &self,
        request: Request<AuthUserGetRequest>,
    ) -> Result<Response<AuthUserGetResponse>, Status> {
        // Users may read themselves (etcd's `authApplierV3.UserGet`).
        let name = &request.get_ref().name;
        self.auth
            .check_admin_unless(&request, |info| info.user == *name)?;
        let state = self.auth.state()?;
        let user = state.user(name).ok_or(EtcdError::UserNotFound)?;
        Ok(Response::new(AuthUserGetResponse {
            header: self.header(),
            roles: user.roles.clone(),
        }))
    }

    async fn user_list(
        &self,
        request: Request<AuthUserListRequest>,
    ) -> Result<Response<AuthUserListResponse>, Status> {
        self.auth.check_admin(&request)?;
        Ok(Response::new(AuthUserListResponse {
            header: self.header(),
            users: self.auth.state()?.user_names(),
        }))
    }

    async fn user_delete(
        &self,
        request: Request<AuthUserDeleteRequest>,
    ) -> Result<Response<AuthUserDeleteResponse>, Status> {
        let delete = request.get_ref().clone();
        self.change(&request, AuthRequest::UserDelete(delete))
            .await?;
        Ok(Response::new(AuthUserDeleteResponse {
            header: self.header(),
        }))
    }

    async fn user_change_password(
        &self,
        request: Request<AuthUserChangePasswordRequest>,
    ) -> Result<Response<AuthUserChangePasswordResponse>, Status> {
        self.auth.check_admin(&request)?;
        let mut change = request.get_ref().clone();
        change.hashed_password = self.hash(&change.password).await?;
        change.password.clear();
        self.change(&request, AuthRequest::UserChangePassword(change))
            .await?;
        Ok(Response::new(AuthUserChangePasswordResponse {
            header: self.header(),
        }))
    }

    async fn user_grant_role(
        &self,
        request: Request<AuthUserGrantRoleRequest>,
    ) -> Result<Response<AuthUserGrantRoleResponse>, Status> {
        let grant = request.get_ref().clone();
        self.change(&request, AuthRequest::UserGrantRole(grant))
            .await?;
        Ok(Response::new(AuthUserGrantRoleResponse {
            header: self.header(),
        }))
    }

    async fn user_revoke_role(
        &self,
        request: Request<AuthUserRevokeRoleRequest>,
    ) -> Result<Response<AuthUserRevokeRoleResponse>, Status> {
        let revoke = request.get_ref().clone();
        self.change(&request, AuthRequest::UserRevokeRole(revoke))
            .await?;
        Ok(Response::new(AuthUserRevokeRoleResponse {
            header: self.header(),
        }))
    }

    async fn role_add(
        &self,
        request: Request<AuthRoleAddRequest>,
    ) -> Result<Response<AuthRoleAddResponse>, Status> {
        let add = request.get_ref().clone();
        self.change(&request, AuthRequest::RoleAdd(add)).await?;
        Ok(Response::new(AuthRoleAddResponse {
            header: self.header(),
        }))
    }

    async fn role_get(
        &self,
        request: Request<AuthRoleGetRequest>,
    ) -> Result<Response<AuthRoleGetResponse>, Status> {
        // Users may read the roles they hold (etcd's `authApplierV3.RoleGet`).
        let name = &request.get_ref().role;
        let state = self.auth.state()?;
        self.auth.check_admin_unless(&request, |info| {
            state
                .user(&info.user)
                .is_some_and(|user| user.roles.iter().any(|role| role == name))
        })?;
        let role = state.role(name).ok_or(EtcdError::RoleNotFound)?;
        // etcd 3.4 lists what the role stores (3.5 shows root as read-write on every key).
        let perm = role.key_permission.clone();
        Ok(Response::new(AuthRoleGetResponse {
            header: self.header(),
            perm,
        }))
    }

    async fn role_list(
        &self,
        request: Request<AuthRoleListRequest>,
    ) -> Result<Response<AuthRoleListResponse>, Status> {
        self.auth.check_admin(&request)?;
        Ok(Response::new(AuthRoleListResponse {
            header: self.header(),
            roles: self.auth.state()?.role_names(),
        }))
    }

    async fn role_delete(
        &self,
        request: Request<AuthRoleDeleteRequest>,
    ) -> Result<Response<AuthRoleDeleteResponse>, Status> {
        let delete = request.get_ref().clone();
        self.change(&request, AuthRequest::RoleDelete(delete))
            .await?;
        Ok(Response::new(AuthRoleDeleteResponse {
            header: self.header(),
        }))
    }

    async fn role_grant_permission(
        &self,
        request: Request<AuthRoleGrantPermissionRequest>,
    ) -> Result<Response<AuthRoleGrantPermissionResponse>, Status> {
        let grant = request.get_ref().clone();
        self.change(&request, AuthRequest::RoleGrantPermission(grant))
            .await?;
        Ok(Response::new(AuthRoleGrantPermissionResponse {
            header: self.header(),
        }))
    }

    async fn role_revoke_permission(
        &self,
        request: Request<AuthRoleRevokePermissionRequest>,
    ) -> Result<Response<AuthRoleRevokePermissionResponse>, Status> {
        let revoke = request.get_ref().clone();
        self.change(&request, AuthRequest::RoleRevokePermission(revoke))
            .await?;
        Ok(Response::new(AuthRoleRevokePermissionResponse {
            header: self.header(),
        }))
    }
}

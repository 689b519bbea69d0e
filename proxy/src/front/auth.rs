//! etcd's Auth API. Changes (users, roles, permissions, enable, disable) are ordered like any
//! write and applied by every bank to its copy of the auth state ([`bftcd_sequencer::auth`]);
//! passwords are hashed here first, so no other bank and no ledger sees one. Authenticate,
//! the reads and the tokens are this bank's own.

use std::sync::Arc;

use bftcd_proto::authpb::Permission;
use bftcd_proto::bftcd::{auth_change::Change, operation::Request as Op, AuthChange};
use bftcd_proto::etcdserverpb::*;
use bftcd_sequencer::auth::{AuthError, ROOT};
use tonic::{Request, Response, Status};

use super::Front;
use crate::apply::OpResponse;
use crate::errors;

pub struct AuthFront(pub Arc<Front>);

/// etcd's default `--bcrypt-cost`.
const BCRYPT_COST: u32 = 10;

/// bcrypt work (tens of milliseconds each) one at a time: a client calling Authenticate in a
/// loop then costs the bank one core at most, not all of them.
static BCRYPT: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(1);

async fn bcrypt_turn() -> Result<tokio::sync::SemaphorePermit<'static>, Status> {
    BCRYPT.acquire().await.map_err(|_| Status::internal("bftcd: bcrypt closed"))
}

async fn hash(password: String) -> Result<String, Status> {
    let _turn = bcrypt_turn().await?;
    tokio::task::spawn_blocking(move || bcrypt::hash(password, BCRYPT_COST))
        .await
        .map_err(|e| Status::internal(format!("bftcd: hashing failed: {e}")))?
        .map_err(|e| Status::internal(format!("bftcd: hashing failed: {e}")))
}

impl AuthFront {
    /// Orders an auth change on behalf of the request's client and waits for every bank's
    /// verdict (the same on all).
    async fn change<T>(&self, request: &Request<T>, change: Change) -> Result<Option<ResponseHeader>, Status> {
        let client = self.0.client_of(request)?;
        match self.0.writes.submit(Op::Auth(AuthChange { change: Some(change) }), client).await? {
            OpResponse::Auth => self.0.current_header().await,
            _ => Err(Status::internal("bftcd: apply engine returned a response of the wrong kind")),
        }
    }

    /// Management reads need the root role once auth is on, except a user's own entry and a
    /// role the user holds (as etcd 3.5).
    fn read_allowed<T>(&self, request: &Request<T>, own_user: Option<&str>, role: Option<&str>) -> Result<(), Status> {
        let user = self.0.auth_user(request)?;
        let rules = self.0.applier.rules();
        let auth = rules.auth();
        match auth.check_admin(user.as_deref()) {
            Ok(()) => Ok(()),
            Err(AuthError::PermissionDenied) => {
                let me = user.as_deref().unwrap_or_default();
                let own = own_user.is_some_and(|u| u == me);
                let holds = role.is_some_and(|r| auth.user(me).is_some_and(|u| u.roles.contains(r)));
                if own || holds {
                    Ok(())
                } else {
                    Err(errors::auth(AuthError::PermissionDenied))
                }
            }
            Err(e) => Err(errors::auth(e)),
        }
    }
}

#[tonic::async_trait]
impl auth_server::Auth for AuthFront {
    async fn auth_enable(&self, request: Request<AuthEnableRequest>) -> Result<Response<AuthEnableResponse>, Status> {
        let header = self.change(&request, Change::Enable(*request.get_ref())).await?;
        Ok(Response::new(AuthEnableResponse { header }))
    }

    async fn auth_disable(&self, request: Request<AuthDisableRequest>) -> Result<Response<AuthDisableResponse>, Status> {
        let header = self.change(&request, Change::Disable(*request.get_ref())).await?;
        Ok(Response::new(AuthDisableResponse { header }))
    }

    async fn auth_status(&self, request: Request<AuthStatusRequest>) -> Result<Response<AuthStatusResponse>, Status> {
        // Admin-only once enabled, as etcd 3.5.
        self.read_allowed(&request, None, None)?;
        self.0.linearize().await?;
        let rules = self.0.applier.rules();
        let header = self.0.current_header().await?;
        Ok(Response::new(AuthStatusResponse { header, enabled: rules.auth().enabled(), auth_revision: rules.auth().revision() }))
    }

    async fn authenticate(&self, request: Request<AuthenticateRequest>) -> Result<Response<AuthenticateResponse>, Status> {
        let r = request.into_inner();
        let rules = self.0.applier.rules();
        let auth = rules.auth();
        if !auth.enabled() {
            return Err(errors::auth_not_enabled());
        }
        let hashed = match auth.user(&r.name) {
            Some(u) if !u.no_password && !u.hashed_password.is_empty() => u.hashed_password.clone(),
            _ => return Err(errors::auth(AuthError::AuthFailed)),
        };
        let password = r.password;
        let _turn = bcrypt_turn().await?;
        let ok = tokio::task::spawn_blocking(move || bcrypt::verify(password, &hashed).unwrap_or(false)).await.unwrap_or(false);
        if !ok {
            return Err(errors::auth(AuthError::AuthFailed));
        }
        let token = self.0.tokens.issue(&r.name);
        let header = self.0.current_header().await?;
        Ok(Response::new(AuthenticateResponse { header, token }))
    }

    async fn user_add(&self, request: Request<AuthUserAddRequest>) -> Result<Response<AuthUserAddResponse>, Status> {
        let mut r = request.get_ref().clone();
        let no_password = r.options.as_ref().is_some_and(|o| o.no_password);
        if !no_password && r.hashed_password.is_empty() {
            r.hashed_password = hash(std::mem::take(&mut r.password)).await?;
        }
        r.password.clear();
        let header = self.change(&request, Change::UserAdd(r)).await?;
        Ok(Response::new(AuthUserAddResponse { header }))
    }

    async fn user_get(&self, request: Request<AuthUserGetRequest>) -> Result<Response<AuthUserGetResponse>, Status> {
        self.0.linearize().await?;
        let name = request.get_ref().name.clone();
        self.read_allowed(&request, Some(&name), None)?;
        let rules = self.0.applier.rules();
        let user = rules.auth().user(&name).ok_or_else(|| errors::auth(AuthError::UserNotFound))?;
        let header = self.0.current_header().await?;
        Ok(Response::new(AuthUserGetResponse { header, roles: user.roles.iter().cloned().collect() }))
    }

    async fn user_list(&self, request: Request<AuthUserListRequest>) -> Result<Response<AuthUserListResponse>, Status> {
        self.0.linearize().await?;
        self.read_allowed(&request, None, None)?;
        let rules = self.0.applier.rules();
        let header = self.0.current_header().await?;
        Ok(Response::new(AuthUserListResponse { header, users: rules.auth().users().map(String::from).collect() }))
    }

    async fn user_delete(&self, request: Request<AuthUserDeleteRequest>) -> Result<Response<AuthUserDeleteResponse>, Status> {
        let name = request.get_ref().name.clone();
        let header = self.change(&request, Change::UserDelete(request.get_ref().clone())).await?;
        self.0.tokens.revoke_user(&name);
        Ok(Response::new(AuthUserDeleteResponse { header }))
    }

    async fn user_change_password(
        &self,
        request: Request<AuthUserChangePasswordRequest>,
    ) -> Result<Response<AuthUserChangePasswordResponse>, Status> {
        let mut r = request.get_ref().clone();
        if r.hashed_password.is_empty() {
            r.hashed_password = hash(std::mem::take(&mut r.password)).await?;
        }
        r.password.clear();
        let name = r.name.clone();
        let header = self.change(&request, Change::UserChangePassword(r)).await?;
        self.0.tokens.revoke_user(&name);
        Ok(Response::new(AuthUserChangePasswordResponse { header }))
    }

    async fn user_grant_role(&self, request: Request<AuthUserGrantRoleRequest>) -> Result<Response<AuthUserGrantRoleResponse>, Status> {
        let header = self.change(&request, Change::UserGrantRole(request.get_ref().clone())).await?;
        Ok(Response::new(AuthUserGrantRoleResponse { header }))
    }

    async fn user_revoke_role(&self, request: Request<AuthUserRevokeRoleRequest>) -> Result<Response<AuthUserRevokeRoleResponse>, Status> {
        let header = self.change(&request, Change::UserRevokeRole(request.get_ref().clone())).await?;
        Ok(Response::new(AuthUserRevokeRoleResponse { header }))
    }

    async fn role_add(&self, request: Request<AuthRoleAddRequest>) -> Result<Response<AuthRoleAddResponse>, Status> {
        let header = self.change(&request, Change::RoleAdd(request.get_ref().clone())).await?;
        Ok(Response::new(AuthRoleAddResponse { header }))
    }

    async fn role_get(&self, request: Request<AuthRoleGetRequest>) -> Result<Response<AuthRoleGetResponse>, Status> {
        self.0.linearize().await?;
        let role = request.get_ref().role.clone();
        self.read_allowed(&request, None, Some(&role))?;
        let rules = self.0.applier.rules();
        let perm: Vec<Permission> = match rules.auth().role(&role) {
            Some(p) => p.to_vec(),
            // The built-in role lists no permissions of its own (it needs none).
            None if role == ROOT => Vec::new(),
            None => return Err(errors::auth(AuthError::RoleNotFound)),
        };
        let header = self.0.current_header().await?;
        Ok(Response::new(AuthRoleGetResponse { header, perm }))
    }

    async fn role_list(&self, request: Request<AuthRoleListRequest>) -> Result<Response<AuthRoleListResponse>, Status> {
        self.0.linearize().await?;
        self.read_allowed(&request, None, None)?;
        let rules = self.0.applier.rules();
        let header = self.0.current_header().await?;
        Ok(Response::new(AuthRoleListResponse { header, roles: rules.auth().roles().map(String::from).collect() }))
    }

    async fn role_delete(&self, request: Request<AuthRoleDeleteRequest>) -> Result<Response<AuthRoleDeleteResponse>, Status> {
        let header = self.change(&request, Change::RoleDelete(request.get_ref().clone())).await?;
        Ok(Response::new(AuthRoleDeleteResponse { header }))
    }

    async fn role_grant_permission(
        &self,
        request: Request<AuthRoleGrantPermissionRequest>,
    ) -> Result<Response<AuthRoleGrantPermissionResponse>, Status> {
        let header = self.change(&request, Change::RoleGrantPermission(request.get_ref().clone())).await?;
        Ok(Response::new(AuthRoleGrantPermissionResponse { header }))
    }

    async fn role_revoke_permission(
        &self,
        request: Request<AuthRoleRevokePermissionRequest>,
    ) -> Result<Response<AuthRoleRevokePermissionResponse>, Status> {
        let header = self.change(&request, Change::RoleRevokePermission(request.get_ref().clone())).await?;
        Ok(Response::new(AuthRoleRevokePermissionResponse { header }))
    }
}

//! Auth: not built yet. AuthStatus tells the truth (disabled); Authenticate gets etcd's own
//! "not enabled" error, which clients handle; everything else says plainly that it is missing.

use bftcd_proto::etcdserverpb::*;
use tonic::{Request, Response, Status};

use crate::errors;

pub struct AuthFront;

fn not_built() -> Status {
    errors::unsupported("etcd authentication is not supported yet; use mutual TLS in front of the sidecar")
}

// async_trait must see every method, so the macro writes the whole impl.
macro_rules! auth_front {
    ($($method:ident($req:ty) -> $resp:ty;)*) => {
        #[tonic::async_trait]
        impl auth_server::Auth for AuthFront {
            async fn auth_status(&self, _: Request<AuthStatusRequest>) -> Result<Response<AuthStatusResponse>, Status> {
                Ok(Response::new(AuthStatusResponse { header: None, enabled: false, auth_revision: 0 }))
            }

            async fn authenticate(&self, _: Request<AuthenticateRequest>) -> Result<Response<AuthenticateResponse>, Status> {
                Err(errors::auth_not_enabled())
            }

            $(async fn $method(&self, _: Request<$req>) -> Result<Response<$resp>, Status> { Err(not_built()) })*
        }
    };
}

auth_front! {
    auth_enable(AuthEnableRequest) -> AuthEnableResponse;
    auth_disable(AuthDisableRequest) -> AuthDisableResponse;
    user_add(AuthUserAddRequest) -> AuthUserAddResponse;
    user_get(AuthUserGetRequest) -> AuthUserGetResponse;
    user_list(AuthUserListRequest) -> AuthUserListResponse;
    user_delete(AuthUserDeleteRequest) -> AuthUserDeleteResponse;
    user_change_password(AuthUserChangePasswordRequest) -> AuthUserChangePasswordResponse;
    user_grant_role(AuthUserGrantRoleRequest) -> AuthUserGrantRoleResponse;
    user_revoke_role(AuthUserRevokeRoleRequest) -> AuthUserRevokeRoleResponse;
    role_add(AuthRoleAddRequest) -> AuthRoleAddResponse;
    role_get(AuthRoleGetRequest) -> AuthRoleGetResponse;
    role_list(AuthRoleListRequest) -> AuthRoleListResponse;
    role_delete(AuthRoleDeleteRequest) -> AuthRoleDeleteResponse;
    role_grant_permission(AuthRoleGrantPermissionRequest) -> AuthRoleGrantPermissionResponse;
    role_revoke_permission(AuthRoleRevokePermissionRequest) -> AuthRoleRevokePermissionResponse;
}

//! Cluster: the members are the banks' sidecars from the genesis, never the hidden etcds.

use std::sync::Arc;

use bftcd_proto::etcdserverpb::{
    cluster_server::Cluster, MemberAddRequest, MemberAddResponse, MemberListRequest, MemberListResponse,
    MemberPromoteRequest, MemberPromoteResponse, MemberRemoveRequest, MemberRemoveResponse, MemberUpdateRequest,
    MemberUpdateResponse,
};
use tonic::{Request, Response, Status};

use super::Front;
use crate::errors;

pub struct ClusterFront(pub Arc<Front>);

fn membership() -> Status {
    errors::unsupported("banks join and leave by unanimous vote of the validators, not through etcd's member API")
}

#[tonic::async_trait]
impl Cluster for ClusterFront {
    async fn member_add(&self, _: Request<MemberAddRequest>) -> Result<Response<MemberAddResponse>, Status> {
        Err(membership())
    }
    async fn member_remove(&self, _: Request<MemberRemoveRequest>) -> Result<Response<MemberRemoveResponse>, Status> {
        Err(membership())
    }
    async fn member_update(&self, _: Request<MemberUpdateRequest>) -> Result<Response<MemberUpdateResponse>, Status> {
        Err(membership())
    }
    async fn member_promote(&self, _: Request<MemberPromoteRequest>) -> Result<Response<MemberPromoteResponse>, Status> {
        Err(membership())
    }

    async fn member_list(&self, _: Request<MemberListRequest>) -> Result<Response<MemberListResponse>, Status> {
        let revision = self
            .0
            .etcd
            .maintenance()
            .status(bftcd_proto::etcdserverpb::StatusRequest {})
            .await
            .ok()
            .and_then(|s| s.into_inner().header);
        Ok(Response::new(MemberListResponse {
            header: self.0.identity.header(revision),
            members: self.0.identity.members.clone(),
        }))
    }
}

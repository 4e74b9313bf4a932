//! `etcdserverpb.Cluster`: membership (etcd-v3-spec.md §4.10). Headers carry no revision.

use tonic::{Request, Response, Status};

use crate::frontend::{LearnerPolicy, Shared, fill_cluster_header};
use crate::node::EtcdNode;
use crate::pb::etcdserverpb::{
    MemberAddRequest, MemberAddResponse, MemberListRequest, MemberListResponse,
    MemberPromoteRequest, MemberPromoteResponse, MemberRemoveRequest, MemberRemoveResponse,
    MemberUpdateRequest, MemberUpdateResponse, cluster_server::Cluster,
};

/// The Cluster service over a node.
pub struct ClusterService<N> {
    /// Shared front-end state.
    pub shared: Shared<N>,
}

#[tonic::async_trait]
impl<N: EtcdNode> Cluster for ClusterService<N> {
    async fn member_add(
        &self,
        req: Request<MemberAddRequest>,
    ) -> Result<Response<MemberAddResponse>, Status> {
        let (caller, state) = self.shared.admit(req.metadata(), LearnerPolicy::Refused)?;
        let mut resp = self
            .shared
            .node
            .member_add(&caller, req.into_inner())
            .await?;
        fill_cluster_header(&mut resp.header, &state);
        Ok(Response::new(resp))
    }

    async fn member_remove(
        &self,
        req: Request<MemberRemoveRequest>,
    ) -> Result<Response<MemberRemoveResponse>, Status> {
        let (caller, state) = self.shared.admit(req.metadata(), LearnerPolicy::Refused)?;
        let mut resp = self
            .shared
            .node
            .member_remove(&caller, req.into_inner().id)
            .await?;
        fill_cluster_header(&mut resp.header, &state);
        Ok(Response::new(resp))
    }

    async fn member_update(
        &self,
        req: Request<MemberUpdateRequest>,
    ) -> Result<Response<MemberUpdateResponse>, Status> {
        let (caller, state) = self.shared.admit(req.metadata(), LearnerPolicy::Refused)?;
        let mut resp = self
            .shared
            .node
            .member_update(&caller, req.into_inner())
            .await?;
        fill_cluster_header(&mut resp.header, &state);
        Ok(Response::new(resp))
    }

    async fn member_list(
        &self,
        req: Request<MemberListRequest>,
    ) -> Result<Response<MemberListResponse>, Status> {
        let (caller, state) = self.shared.admit(req.metadata(), LearnerPolicy::Refused)?;
        let mut resp = self.shared.node.member_list(&caller).await?;
        fill_cluster_header(&mut resp.header, &state);
        resp.members.sort_by_key(|m| m.id);
        Ok(Response::new(resp))
    }

    async fn member_promote(
        &self,
        req: Request<MemberPromoteRequest>,
    ) -> Result<Response<MemberPromoteResponse>, Status> {
        let (caller, state) = self.shared.admit(req.metadata(), LearnerPolicy::Refused)?;
        let mut resp = self
            .shared
            .node
            .member_promote(&caller, req.into_inner().id)
            .await?;
        fill_cluster_header(&mut resp.header, &state);
        Ok(Response::new(resp))
    }
}

//! `etcdserverpb.KV`: Range, Put, DeleteRange, Txn, Compact (etcd-v3-spec.md §4.2–§4.7).

use tonic::{Request, Response, Status};

use crate::frontend::{LearnerPolicy, Shared, fill_header, strip_nested_headers};
use crate::node::EtcdNode;
use crate::pb::etcdserverpb::{
    CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse, PutRequest,
    PutResponse, RangeRequest, RangeResponse, TxnRequest, TxnResponse, kv_server::Kv,
};
use crate::validate::{self, check_request_size, envelope};

/// The KV service over a node.
pub struct KvService<N> {
    /// Shared front-end state.
    pub shared: Shared<N>,
}

#[tonic::async_trait]
impl<N: EtcdNode> Kv for KvService<N> {
    async fn range(&self, req: Request<RangeRequest>) -> Result<Response<RangeResponse>, Status> {
        let r = req.get_ref();
        let learner = if r.serializable {
            LearnerPolicy::Allowed
        } else {
            LearnerPolicy::Refused
        };
        let (caller, state) = self.shared.admit(req.metadata(), learner)?;
        let r = req.into_inner();
        validate::check_range(&r)?;
        let mut resp = self.shared.node.range(&caller, r).await?;
        fill_header(&mut resp.header, &state);
        Ok(Response::new(resp))
    }

    async fn put(&self, req: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        let (caller, state) = self.shared.admit(req.metadata(), LearnerPolicy::Refused)?;
        let r = req.into_inner();
        validate::check_put(&r)?;
        check_request_size(envelope::PUT, &r, self.shared.limits.max_request_bytes)?;
        let mut resp = self.shared.node.put(&caller, r).await?;
        fill_header(&mut resp.header, &state);
        Ok(Response::new(resp))
    }

    async fn delete_range(
        &self,
        req: Request<DeleteRangeRequest>,
    ) -> Result<Response<DeleteRangeResponse>, Status> {
        let (caller, state) = self.shared.admit(req.metadata(), LearnerPolicy::Refused)?;
        let r = req.into_inner();
        validate::check_delete(&r)?;
        check_request_size(
            envelope::DELETE_RANGE,
            &r,
            self.shared.limits.max_request_bytes,
        )?;
        let mut resp = self.shared.node.delete_range(&caller, r).await?;
        fill_header(&mut resp.header, &state);
        Ok(Response::new(resp))
    }

    async fn txn(&self, req: Request<TxnRequest>) -> Result<Response<TxnResponse>, Status> {
        let r = req.get_ref();
        // A read-only txn whose ranges are all serializable is a serializable read.
        let serializable = validate::txn_is_read_only(r)
            && r.success.iter().chain(&r.failure).all(|op| {
                matches!(&op.request, Some(crate::pb::etcdserverpb::request_op::Request::RequestRange(x)) if x.serializable)
            });
        let learner = if serializable {
            LearnerPolicy::Allowed
        } else {
            LearnerPolicy::Refused
        };
        let (caller, state) = self.shared.admit(req.metadata(), learner)?;
        let r = req.into_inner();
        validate::check_txn(&r, self.shared.limits.max_txn_ops)?;
        if !validate::txn_is_read_only(&r) {
            check_request_size(envelope::TXN, &r, self.shared.limits.max_request_bytes)?;
        }
        let mut resp = self.shared.node.txn(&caller, r).await?;
        fill_header(&mut resp.header, &state);
        strip_nested_headers(&mut resp.responses);
        Ok(Response::new(resp))
    }

    async fn compact(
        &self,
        req: Request<CompactionRequest>,
    ) -> Result<Response<CompactionResponse>, Status> {
        let (caller, state) = self.shared.admit(req.metadata(), LearnerPolicy::Refused)?;
        let r = req.into_inner();
        check_request_size(
            envelope::COMPACTION,
            &r,
            self.shared.limits.max_request_bytes,
        )?;
        let mut resp = self.shared.node.compact(&caller, r).await?;
        fill_header(&mut resp.header, &state);
        Ok(Response::new(resp))
    }
}

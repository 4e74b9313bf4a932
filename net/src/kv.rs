//! `etcdserverpb.KV`: Range, Put, DeleteRange, Txn, Compact (etcd-v3-spec.md §4.2–§4.7).
//!
//! The semantics live in the `*_rpc` functions, which both front-end paths call: the tonic
//! [`KvService`] (via `Routes`) and the thin HTTP/2 path of `h2server.rs`. Each takes the
//! request's headers (metadata) and decoded message and returns the message to encode or the
//! status to send.

use tonic::{Request, Response, Status};

use futures_util::future::Either;

use crate::frontend::{
    Frontend, LearnerPolicy, RequestMeta, Shared, fill_header, strip_nested_headers,
};
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

/// KV Range.
///
/// Admission and validation run when this is called; the returned future holds neither the
/// request's metadata nor the admission result it no longer needs. The thin path keeps one
/// such future per in-flight stream, so what it holds is copied and carried per request
/// (`h2server::serve_hot`).
pub fn range_rpc<'a, N: EtcdNode>(
    fe: &'a Frontend<N>,
    meta: RequestMeta,
    r: RangeRequest,
) -> impl Future<Output = Result<RangeResponse, Status>> + Send + 'a {
    let learner = if r.serializable {
        LearnerPolicy::Allowed
    } else {
        LearnerPolicy::Refused
    };
    let admitted = fe.admit_meta(meta, learner).and_then(|a| {
        validate::check_range(&r)?;
        Ok(a)
    });
    match admitted {
        Err(status) => Either::Left(std::future::ready(Err(status))),
        Ok((caller, state)) => Either::Right(async move {
            let mut resp = fe.node.range(&caller, r).await?;
            fill_header(&mut resp.header, &state);
            Ok(resp)
        }),
    }
}

/// KV Put. Admission, validation and the size check run when this is called (see
/// [`range_rpc`]).
pub fn put_rpc<'a, N: EtcdNode>(
    fe: &'a Frontend<N>,
    meta: RequestMeta,
    r: PutRequest,
) -> impl Future<Output = Result<PutResponse, Status>> + Send + 'a {
    let admitted = fe.admit_meta(meta, LearnerPolicy::Refused).and_then(|a| {
        validate::check_put(&r)?;
        check_request_size(envelope::PUT, &r, fe.limits.max_request_bytes)?;
        Ok(a)
    });
    match admitted {
        Err(status) => Either::Left(std::future::ready(Err(status))),
        Ok((caller, state)) => Either::Right(async move {
            let mut resp = fe.node.put(&caller, r).await?;
            fill_header(&mut resp.header, &state);
            Ok(resp)
        }),
    }
}

/// KV DeleteRange.
pub async fn delete_range_rpc<N: EtcdNode>(
    fe: &Frontend<N>,
    meta: RequestMeta,
    r: DeleteRangeRequest,
) -> Result<DeleteRangeResponse, Status> {
    let (caller, state) = fe.admit_meta(meta, LearnerPolicy::Refused)?;
    validate::check_delete(&r)?;
    check_request_size(envelope::DELETE_RANGE, &r, fe.limits.max_request_bytes)?;
    let mut resp = fe.node.delete_range(&caller, r).await?;
    fill_header(&mut resp.header, &state);
    Ok(resp)
}

/// KV Txn.
pub async fn txn_rpc<N: EtcdNode>(
    fe: &Frontend<N>,
    meta: RequestMeta,
    r: TxnRequest,
) -> Result<TxnResponse, Status> {
    // A read-only txn whose ranges are all serializable is a serializable read.
    let serializable = validate::txn_is_read_only(&r)
        && r.success.iter().chain(&r.failure).all(|op| {
            matches!(&op.request, Some(crate::pb::etcdserverpb::request_op::Request::RequestRange(x)) if x.serializable)
        });
    let learner = if serializable {
        LearnerPolicy::Allowed
    } else {
        LearnerPolicy::Refused
    };
    let (caller, state) = fe.admit_meta(meta, learner)?;
    validate::check_txn(&r, fe.limits.max_txn_ops)?;
    if !validate::txn_is_read_only(&r) {
        check_request_size(envelope::TXN, &r, fe.limits.max_request_bytes)?;
    }
    let mut resp = fe.node.txn(&caller, r).await?;
    fill_header(&mut resp.header, &state);
    strip_nested_headers(&mut resp.responses);
    Ok(resp)
}

/// KV Compact.
pub async fn compact_rpc<N: EtcdNode>(
    fe: &Frontend<N>,
    meta: RequestMeta,
    r: CompactionRequest,
) -> Result<CompactionResponse, Status> {
    let (caller, state) = fe.admit_meta(meta, LearnerPolicy::Refused)?;
    check_request_size(envelope::COMPACTION, &r, fe.limits.max_request_bytes)?;
    let mut resp = fe.node.compact(&caller, r).await?;
    fill_header(&mut resp.header, &state);
    Ok(resp)
}

#[tonic::async_trait]
impl<N: EtcdNode> Kv for KvService<N> {
    async fn range(&self, req: Request<RangeRequest>) -> Result<Response<RangeResponse>, Status> {
        let (md, _, r) = req.into_parts();
        range_rpc(&self.shared, RequestMeta::of(md.as_ref()), r)
            .await
            .map(Response::new)
    }

    async fn put(&self, req: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        let (md, _, r) = req.into_parts();
        put_rpc(&self.shared, RequestMeta::of(md.as_ref()), r)
            .await
            .map(Response::new)
    }

    async fn delete_range(
        &self,
        req: Request<DeleteRangeRequest>,
    ) -> Result<Response<DeleteRangeResponse>, Status> {
        let (md, _, r) = req.into_parts();
        delete_range_rpc(&self.shared, RequestMeta::of(md.as_ref()), r)
            .await
            .map(Response::new)
    }

    async fn txn(&self, req: Request<TxnRequest>) -> Result<Response<TxnResponse>, Status> {
        let (md, _, r) = req.into_parts();
        txn_rpc(&self.shared, RequestMeta::of(md.as_ref()), r)
            .await
            .map(Response::new)
    }

    async fn compact(
        &self,
        req: Request<CompactionRequest>,
    ) -> Result<Response<CompactionResponse>, Status> {
        let (md, _, r) = req.into_parts();
        compact_rpc(&self.shared, RequestMeta::of(md.as_ref()), r)
            .await
            .map(Response::new)
    }
}

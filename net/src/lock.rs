//! `v3lockpb.Lock`: a distributed mutex on a lease (etcd-v3-spec.md §4.13).

use bytes::BytesMut;
use tonic::{Request, Response, Status};

use crate::frontend::{LearnerPolicy, Shared, fill_header};
use crate::node::EtcdNode;
use crate::pb::v3lockpb::{
    LockRequest, LockResponse, UnlockRequest, UnlockResponse, lock_server::Lock,
};
use crate::recipe;

/// The Lock service over a node.
pub struct LockService<N> {
    /// Shared front-end state.
    pub shared: Shared<N>,
}

#[tonic::async_trait]
impl<N: EtcdNode> Lock for LockService<N> {
    /// Creates `<name>/<lease hex>` bound to the lease and waits until it is the oldest key under
    /// `<name>/`; the header is that of the creating txn. If the wait fails, the key is deleted.
    async fn lock(&self, req: Request<LockRequest>) -> Result<Response<LockResponse>, Status> {
        let (caller, state) = self.shared.admit(req.metadata(), LearnerPolicy::Refused)?;
        let r = req.into_inner();
        let node = &*self.shared.node;
        let mut prefix = BytesMut::from(r.name.as_ref());
        prefix.extend_from_slice(b"/");
        let key = recipe::owner_key(&r.name, r.lease);
        let (txn, my_rev, _) =
            recipe::create_if_absent(node, &caller, key.clone(), bytes::Bytes::new(), r.lease)
                .await?;
        if let Err(e) = recipe::wait_deletes(node, &caller, &prefix, my_rev - 1).await {
            let _ = recipe::delete(node, &caller, key).await;
            return Err(e.into());
        }
        let mut header = txn.header;
        fill_header(&mut header, &state);
        Ok(Response::new(LockResponse { header, key }))
    }

    async fn unlock(
        &self,
        req: Request<UnlockRequest>,
    ) -> Result<Response<UnlockResponse>, Status> {
        let (caller, state) = self.shared.admit(req.metadata(), LearnerPolicy::Refused)?;
        let mut header = recipe::delete(&*self.shared.node, &caller, req.into_inner().key).await?;
        fill_header(&mut header, &state);
        Ok(Response::new(UnlockResponse { header }))
    }
}

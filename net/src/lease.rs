//! `etcdserverpb.Lease`: grant, revoke, keep-alive stream, time-to-live, list
//! (etcd-v3-spec.md §4.9).

use std::time::Duration;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use crate::errors::EtcdError;
use crate::frontend::{LearnerPolicy, Shared, fill_header, requires_leader};
use crate::node::{BoxStream, Caller, EtcdNode};
use crate::pb::etcdserverpb::{
    LeaseGrantRequest, LeaseGrantResponse, LeaseKeepAliveRequest, LeaseKeepAliveResponse,
    LeaseLeasesRequest, LeaseLeasesResponse, LeaseRevokeRequest, LeaseRevokeResponse,
    LeaseTimeToLiveRequest, LeaseTimeToLiveResponse, lease_server::Lease,
};
use crate::validate::{check_request_size, envelope};
use crate::watch::LEADER_MISSES;

/// Largest TTL a lease may be granted with, in seconds (etcd's `MaxLeaseTTL`).
pub const MAX_LEASE_TTL: i64 = 9_000_000_000;

/// The Lease service over a node.
pub struct LeaseService<N> {
    /// Shared front-end state.
    pub shared: Shared<N>,
}

#[tonic::async_trait]
impl<N: EtcdNode> Lease for LeaseService<N> {
    async fn lease_grant(
        &self,
        req: Request<LeaseGrantRequest>,
    ) -> Result<Response<LeaseGrantResponse>, Status> {
        let (caller, state) = self.shared.admit(req.metadata(), LearnerPolicy::Refused)?;
        let r = req.into_inner();
        check_request_size(
            envelope::LEASE_GRANT,
            &r,
            self.shared.limits.max_request_bytes,
        )?;
        if r.ttl > MAX_LEASE_TTL {
            return Err(EtcdError::LeaseTtlTooLarge.into());
        }
        let mut resp = self.shared.node.lease_grant(&caller, r).await?;
        fill_header(&mut resp.header, &state);
        Ok(Response::new(resp))
    }

    async fn lease_revoke(
        &self,
        req: Request<LeaseRevokeRequest>,
    ) -> Result<Response<LeaseRevokeResponse>, Status> {
        let (caller, state) = self.shared.admit(req.metadata(), LearnerPolicy::Refused)?;
        let r = req.into_inner();
        check_request_size(
            envelope::LEASE_REVOKE,
            &r,
            self.shared.limits.max_request_bytes,
        )?;
        let mut resp = self.shared.node.lease_revoke(&caller, r.id).await?;
        fill_header(&mut resp.header, &state);
        Ok(Response::new(resp))
    }

    type LeaseKeepAliveStream = BoxStream<Result<LeaseKeepAliveResponse, Status>>;

    async fn lease_keep_alive(
        &self,
        req: Request<Streaming<LeaseKeepAliveRequest>>,
    ) -> Result<Response<Self::LeaseKeepAliveStream>, Status> {
        let (caller, _) = self.shared.admit(req.metadata(), LearnerPolicy::Refused)?;
        let require_leader = requires_leader(req.metadata());
        Ok(Response::new(keep_alive(
            self.shared.clone(),
            caller,
            require_leader,
            req.into_inner(),
        )))
    }

    async fn lease_time_to_live(
        &self,
        req: Request<LeaseTimeToLiveRequest>,
    ) -> Result<Response<LeaseTimeToLiveResponse>, Status> {
        let (caller, state) = self.shared.admit(req.metadata(), LearnerPolicy::Refused)?;
        let mut resp = self
            .shared
            .node
            .lease_time_to_live(&caller, req.into_inner())
            .await?;
        fill_header(&mut resp.header, &state);
        Ok(Response::new(resp))
    }

    async fn lease_leases(
        &self,
        req: Request<LeaseLeasesRequest>,
    ) -> Result<Response<LeaseLeasesResponse>, Status> {
        let (caller, state) = self.shared.admit(req.metadata(), LearnerPolicy::Refused)?;
        let mut resp = self.shared.node.lease_leases(&caller).await?;
        fill_header(&mut resp.header, &state);
        Ok(Response::new(resp))
    }
}

/// Serves one keep-alive stream: one response per request; ends OK when the client
/// half-closes (spec §4.8 note), with "no leader" after repeated leader loss when the client
/// asked for `hasleader`, with "server stopped" on shutdown.
pub fn keep_alive<N: EtcdNode>(
    shared: Shared<N>,
    caller: Caller,
    require_leader: bool,
    mut input: impl Stream<Item = Result<LeaseKeepAliveRequest, Status>> + Send + Unpin + 'static,
) -> BoxStream<Result<LeaseKeepAliveResponse, Status>> {
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(async move {
        let mut shutdown = shared.shutdown.clone();
        let mut leader_check =
            tokio::time::interval(shared.election_timeout.max(Duration::from_millis(10)));
        let mut misses = 0;
        let end: Option<Status> = loop {
            tokio::select! {
                req = input.next() => match req {
                    Some(Ok(r)) => {
                        let resp = match shared.node.lease_keep_alive(&caller, r.id).await {
                            Ok(mut resp) => {
                                fill_header(&mut resp.header, &shared.node.state());
                                Ok(resp)
                            }
                            Err(e) => Err(e.into()),
                        };
                        let failed = resp.is_err();
                        if tx.send(resp).await.is_err() || failed {
                            break None;
                        }
                    }
                    None | Some(Err(_)) => break None,
                },
                _ = shutdown.fired() => break Some(EtcdError::Stopped.into()),
                _ = tx.closed() => break None,
                _ = leader_check.tick(), if require_leader => {
                    if shared.node.state().leader == 0 {
                        misses += 1;
                        if misses >= LEADER_MISSES { break Some(EtcdError::NoLeader.into()) }
                    } else {
                        misses = 0;
                    }
                }
            }
        };
        if let Some(status) = end {
            let _ = tx.send(Err(status)).await;
        }
    });
    Box::pin(ReceiverStream::new(rx))
}

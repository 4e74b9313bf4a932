//! `v3electionpb.Election`: leader election on a lease (etcd-v3-spec.md §4.13).

use bytes::{Bytes, BytesMut};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::errors::EtcdError;
use crate::frontend::{LearnerPolicy, Shared, fill_header};
use crate::node::{BoxStream, Caller, EtcdNode, NodeResult, WatchSpec, WatchUpdate};
use crate::pb::etcdserverpb::{
    Compare, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest, compare,
    range_request, request_op,
};
use crate::pb::mvccpb::{KeyValue, event::EventType};
use crate::pb::v3electionpb::{
    CampaignRequest, CampaignResponse, LeaderKey, LeaderRequest, LeaderResponse, ProclaimRequest,
    ProclaimResponse, ResignRequest, ResignResponse, election_server::Election,
};
use crate::recipe;

/// The Election service over a node.
pub struct ElectionService<N> {
    /// Shared front-end state.
    pub shared: Shared<N>,
}

fn with_slash(name: &[u8]) -> Bytes {
    let mut p = BytesMut::from(name);
    p.extend_from_slice(b"/");
    p.freeze()
}

/// A txn guarded by "`key` still has create revision `rev`".
fn guarded(key: &Bytes, rev: i64, op: request_op::Request) -> TxnRequest {
    TxnRequest {
        compare: vec![Compare {
            result: compare::CompareResult::Equal as i32,
            target: compare::CompareTarget::Create as i32,
            key: key.clone(),
            target_union: Some(compare::TargetUnion::CreateRevision(rev)),
            range_end: Bytes::new(),
        }],
        success: vec![RequestOp { request: Some(op) }],
        failure: vec![],
    }
}

/// The current leader's kv: the oldest key under `<name>/`, with the read's header revision.
async fn leader_kv<N: EtcdNode>(
    node: &N,
    caller: &Caller,
    name: &[u8],
) -> NodeResult<(i64, Option<KeyValue>)> {
    let prefix = with_slash(name);
    let resp = node
        .range(
            caller,
            RangeRequest {
                range_end: recipe::prefix_end(&prefix),
                key: prefix,
                limit: 1,
                sort_order: range_request::SortOrder::Ascend as i32,
                sort_target: range_request::SortTarget::Create as i32,
                ..Default::default()
            },
        )
        .await?;
    Ok((
        resp.header.map_or(0, |h| h.revision),
        resp.kvs.into_iter().next(),
    ))
}

#[tonic::async_trait]
impl<N: EtcdNode> Election for ElectionService<N> {
    /// Puts `<name>/<lease hex>` (or takes over an existing one, updating its value) and waits
    /// until every older candidate is gone.
    async fn campaign(
        &self,
        req: Request<CampaignRequest>,
    ) -> Result<Response<CampaignResponse>, Status> {
        let (caller, state) = self.shared.admit(req.metadata(), LearnerPolicy::Refused)?;
        let r = req.into_inner();
        let node = &*self.shared.node;
        let key = recipe::owner_key(&r.name, r.lease);
        let (txn, rev, existing) =
            recipe::create_if_absent(node, &caller, key.clone(), r.value.clone(), r.lease).await?;
        if let Some(kv) = existing
            && kv.value != r.value
        {
            let put = request_op::Request::RequestPut(PutRequest {
                key: key.clone(),
                value: r.value.clone(),
                lease: r.lease,
                ..Default::default()
            });
            let resp = node.txn(&caller, guarded(&key, rev, put)).await?;
            if !resp.succeeded {
                return Err(EtcdError::ElectionNotLeader.into());
            }
        }
        if let Err(e) = recipe::wait_deletes(node, &caller, &with_slash(&r.name), rev - 1).await {
            let _ = recipe::delete(node, &caller, key).await;
            return Err(e.into());
        }
        let mut header = txn.header;
        fill_header(&mut header, &state);
        let leader = LeaderKey {
            name: r.name,
            key,
            rev,
            lease: r.lease,
        };
        Ok(Response::new(CampaignResponse {
            header,
            leader: Some(leader),
        }))
    }

    async fn proclaim(
        &self,
        req: Request<ProclaimRequest>,
    ) -> Result<Response<ProclaimResponse>, Status> {
        let (caller, state) = self.shared.admit(req.metadata(), LearnerPolicy::Refused)?;
        let r = req.into_inner();
        let Some(l) = r.leader else {
            return Err(EtcdError::ElectionNotLeader.into());
        };
        let put = request_op::Request::RequestPut(PutRequest {
            key: l.key.clone(),
            value: r.value,
            lease: l.lease,
            ..Default::default()
        });
        let resp = self
            .shared
            .node
            .txn(&caller, guarded(&l.key, l.rev, put))
            .await?;
        if !resp.succeeded {
            return Err(EtcdError::ElectionNotLeader.into());
        }
        let mut header = resp.header;
        fill_header(&mut header, &state);
        Ok(Response::new(ProclaimResponse { header }))
    }

    async fn leader(
        &self,
        req: Request<LeaderRequest>,
    ) -> Result<Response<LeaderResponse>, Status> {
        let (caller, state) = self.shared.admit(req.metadata(), LearnerPolicy::Refused)?;
        let (revision, kv) = leader_kv(&*self.shared.node, &caller, &req.into_inner().name).await?;
        let Some(kv) = kv else {
            return Err(EtcdError::ElectionNoLeader.into());
        };
        let mut header = Some(crate::pb::etcdserverpb::ResponseHeader {
            revision,
            ..Default::default()
        });
        fill_header(&mut header, &state);
        Ok(Response::new(LeaderResponse {
            header,
            kv: Some(kv),
        }))
    }

    type ObserveStream = BoxStream<Result<LeaderResponse, Status>>;

    /// Streams the leader's kv now and on every change of leader or of the leader's value.
    async fn observe(
        &self,
        req: Request<LeaderRequest>,
    ) -> Result<Response<Self::ObserveStream>, Status> {
        let (caller, _) = self.shared.admit(req.metadata(), LearnerPolicy::Refused)?;
        let name = req.into_inner().name;
        let shared = self.shared.clone();
        let (tx, rx) = mpsc::channel(8);
        tokio::spawn(async move {
            let mut shutdown = shared.shutdown.clone();
            tokio::select! {
                r = observe(&shared, &caller, &name, &tx) => {
                    if let Err(e) = r {
                        let _ = tx.send(Err(e.into())).await;
                    }
                }
                _ = shutdown.fired() => { let _ = tx.send(Err(EtcdError::Stopped.into())).await; }
                _ = tx.closed() => {}
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    /// Deletes the leader key if it still has the leadership's create revision; a stale
    /// leadership is silently fine (spec §4.13).
    async fn resign(
        &self,
        req: Request<ResignRequest>,
    ) -> Result<Response<ResignResponse>, Status> {
        let (caller, state) = self.shared.admit(req.metadata(), LearnerPolicy::Refused)?;
        let Some(l) = req.into_inner().leader else {
            return Err(EtcdError::ElectionNotLeader.into());
        };
        let del = request_op::Request::RequestDeleteRange(DeleteRangeRequest {
            key: l.key.clone(),
            ..Default::default()
        });
        let resp = self
            .shared
            .node
            .txn(&caller, guarded(&l.key, l.rev, del))
            .await?;
        let mut header = resp.header;
        fill_header(&mut header, &state);
        Ok(Response::new(ResignResponse { header }))
    }
}

/// The Observe loop: find the leader (or wait for one), send it, follow its key until deleted.
async fn observe<N: EtcdNode>(
    shared: &Shared<N>,
    caller: &Caller,
    name: &[u8],
    tx: &mpsc::Sender<Result<LeaderResponse, Status>>,
) -> NodeResult<()> {
    let node = &*shared.node;
    let prefix = with_slash(name);
    loop {
        let (revision, kv) = leader_kv(node, caller, name).await?;
        let Some(kv) = kv else {
            // No leader: wait for the first PUT under the prefix, then look again.
            let spec = WatchSpec {
                range_end: recipe::prefix_end(&prefix),
                key: prefix.clone(),
                start_revision: revision + 1,
                prev_kv: false,
                no_put: false,
                no_delete: true,
                progress_notify: false,
            };
            let mut w = node.watch(caller, spec).await?;
            match w.updates.next().await {
                Some(WatchUpdate::Compacted { .. }) => return Err(EtcdError::Compacted),
                Some(_) => continue,
                None => return Err(EtcdError::Stopped),
            }
        };
        let send = |kv: KeyValue, revision: i64| {
            let mut header = Some(crate::pb::etcdserverpb::ResponseHeader {
                revision,
                ..Default::default()
            });
            fill_header(&mut header, &node.state());
            LeaderResponse {
                header,
                kv: Some(kv),
            }
        };
        if tx.send(Ok(send(kv.clone(), revision))).await.is_err() {
            return Ok(());
        }
        let spec = WatchSpec {
            key: kv.key.clone(),
            range_end: Bytes::new(),
            start_revision: kv.mod_revision + 1,
            prev_kv: false,
            no_put: false,
            no_delete: false,
            progress_notify: false,
        };
        let mut w = node.watch(caller, spec).await?;
        'follow: while let Some(update) = w.updates.next().await {
            match update {
                WatchUpdate::Events { revision, events } => {
                    for ev in events {
                        if ev.r#type == EventType::Delete as i32 {
                            break 'follow;
                        }
                        if let Some(kv) = ev.kv
                            && tx.send(Ok(send(kv, revision))).await.is_err()
                        {
                            return Ok(());
                        }
                    }
                }
                WatchUpdate::Compacted { .. } => return Err(EtcdError::Compacted),
                WatchUpdate::Progress { .. } => {}
            }
        }
    }
}

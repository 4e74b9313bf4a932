//! Requests a follower hands to the leader, as etcd does: lease renewals and TimeToLive (only
//! the leader's lessor runs lease clocks, so a renewal on a follower would be lost and its
//! TTL meaningless), MemberPromote (only the leader knows how far a learner got), and with
//! `--strict-reconfig-check` MemberAdd and MemberRemove (only the leader knows which voters it
//! hears from; etcd checks its own peer connections on any member). etcd
//! forwards them over HTTP handlers on the peer URL; ringkv calls the leader's own gRPC API on
//! its published client URL (the `members` bucket, `ClusterMemberAttrSetRequest`).
//!
//! One channel to the current leader is kept (`Inner::leader_channel`) and replaced when the
//! leader or its URL changes. A leader that cannot be reached is answered like etcd's lost
//! leader: `etcdserver: no leader` (clients retry on that code).

use std::time::Duration;

use ringkv_engine::pb::etcdserverpb::{
    LeaseKeepAliveRequest, LeaseKeepAliveResponse, LeaseTimeToLiveRequest, LeaseTimeToLiveResponse,
    MemberAddRequest, MemberAddResponse, MemberPromoteRequest, MemberPromoteResponse,
    MemberRemoveRequest, MemberRemoveResponse,
};
use tonic::transport::{Channel, Endpoint};

use super::RaftBackedNode;
use crate::errors::EtcdError;
use crate::node::NodeResult;
use crate::pb::etcdserverpb::cluster_client::ClusterClient;
use crate::pb::etcdserverpb::lease_client::LeaseClient;

/// How long a forwarded request may take (etcd's request timeout of 5 s).
const FORWARD_TIMEOUT: Duration = Duration::from_secs(5);
const FORWARD_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// The channel to the current leader: (leader ID, its client URL, the channel).
pub(super) type LeaderChannel = parking_lot::Mutex<Option<(u64, String, Channel)>>;

/// Errors the leader may answer a forwarded request with, recognised by their message so that
/// the client gets the same error it would from the leader (anything else: `Internal`).
const FORWARDED: &[EtcdError] = &[
    EtcdError::LeaseNotFound,
    EtcdError::LearnerNotReady,
    EtcdError::MemberBadUrls,
    EtcdError::MemberExist,
    EtcdError::PeerUrlExist,
    EtcdError::TooManyLearners,
    EtcdError::MemberNotFound,
    EtcdError::MemberNotLearner,
    EtcdError::MemberNotEnoughStarted,
    EtcdError::NoLeader,
    EtcdError::NotLeader,
    EtcdError::LeaderChanged,
    EtcdError::Stopped,
    EtcdError::Timeout,
    EtcdError::UnhealthyCluster,
    EtcdError::TooManyRequests,
];

fn from_leader(s: tonic::Status) -> EtcdError {
    if let Some(e) = FORWARDED.iter().find(|e| e.message() == s.message()) {
        return e.clone();
    }
    match s.code() {
        // Connection refused, reset, timed out: the leader is not there (any more).
        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => {
            EtcdError::NoLeader
        }
        _ => EtcdError::Internal(s.message().to_string()),
    }
}

impl RaftBackedNode {
    /// `None` when this member is the leader (serve locally), else a channel to the leader.
    pub(super) fn leader_channel(&self) -> NodeResult<Option<Channel>> {
        let inner = &self.inner;
        let leader = inner.raft().progress().leader();
        if leader == inner.ids.member_id {
            return Ok(None);
        }
        if leader == 0 {
            return Err(EtcdError::NoLeader);
        }
        let url = inner
            .members
            .read()
            .members
            .get(&leader)
            .and_then(|m| m.client_urls.first().cloned())
            // Not published yet: the leader serves no client before it published.
            .ok_or(EtcdError::NoLeader)?;
        let mut cached = inner.leader_channel.lock();
        if let Some((id, u, ch)) = cached.as_ref()
            && *id == leader
            && *u == url
        {
            return Ok(Some(ch.clone()));
        }
        let endpoint = Endpoint::from_shared(url.clone())
            .map_err(|e| EtcdError::Internal(format!("leader client URL {url:?}: {e}")))?
            .connect_timeout(FORWARD_CONNECT_TIMEOUT)
            .timeout(FORWARD_TIMEOUT);
        let ch = match &inner.opts.cluster.forward_tls {
            Some(tls) if crate::tls::is_tls_url(&url) => {
                endpoint.connect_with_connector_lazy(crate::tls::TlsConnector::new(tls.clone()))
            }
            _ => endpoint.connect_lazy(),
        };
        *cached = Some((leader, url, ch.clone()));
        Ok(Some(ch))
    }

    /// Renews lease `id` on the leader: one request on a keep-alive stream of its own.
    pub(super) async fn forward_keep_alive(
        &self,
        ch: Channel,
        id: i64,
    ) -> NodeResult<LeaseKeepAliveResponse> {
        let mut client = LeaseClient::new(ch);
        let mut stream = client
            .lease_keep_alive(tokio_stream::iter([LeaseKeepAliveRequest { id }]))
            .await
            .map_err(from_leader)?
            .into_inner();
        match stream.message().await.map_err(from_leader)? {
            Some(r) => Ok(r),
            None => Err(EtcdError::NoLeader),
        }
    }

    pub(super) async fn forward_time_to_live(
        &self,
        ch: Channel,
        req: LeaseTimeToLiveRequest,
    ) -> NodeResult<LeaseTimeToLiveResponse> {
        Ok(LeaseClient::new(ch)
            .lease_time_to_live(req)
            .await
            .map_err(from_leader)?
            .into_inner())
    }

    pub(super) async fn forward_add(
        &self,
        ch: Channel,
        req: MemberAddRequest,
    ) -> NodeResult<MemberAddResponse> {
        Ok(ClusterClient::new(ch)
            .member_add(req)
            .await
            .map_err(from_leader)?
            .into_inner())
    }

    pub(super) async fn forward_remove(
        &self,
        ch: Channel,
        id: u64,
    ) -> NodeResult<MemberRemoveResponse> {
        Ok(ClusterClient::new(ch)
            .member_remove(MemberRemoveRequest { id })
            .await
            .map_err(from_leader)?
            .into_inner())
    }

    pub(super) async fn forward_promote(
        &self,
        ch: Channel,
        id: u64,
    ) -> NodeResult<MemberPromoteResponse> {
        Ok(ClusterClient::new(ch)
            .member_promote(MemberPromoteRequest { id })
            .await
            .map_err(from_leader)?
            .into_inner())
    }
}

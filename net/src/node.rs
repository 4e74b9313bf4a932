//! The contract between the front end and the node behind it.
//!
//! The front end (this crate) decodes requests, validates what etcd validates in its gRPC layer
//! (see `validate.rs`), enforces metadata rules (`hasleader`), fills response headers per
//! etcd-v3-spec.md §4.1 and maps errors (`errors.rs`). Everything with state — raft, MVCC,
//! leases, watches, alarms, membership — is behind [`EtcdNode`], which the raft-backed node
//! implements.
//!
//! Failure contract for every method: an `Err` means the request had no effect that a client can
//! observe *unless* the error is a timeout ([`EtcdError::Timeout`] and its variants), after which
//! a write may or may not have been applied (as in etcd). Errors are already etcd's errors; the
//! node maps its storage/consensus failures into them (corruption and I/O failures become
//! [`EtcdError::Internal`] with the file and offset named, or [`EtcdError::Corrupt`]).
//!
//! Response headers: the node fills `header.revision` and `header.raft_term` of top-level
//! responses (and `revision` of nested txn responses); the front end fills `cluster_id` and
//! `member_id` and strips what etcd does not send.

use std::future::Future;
use std::pin::Pin;

use tokio_stream::Stream;

use crate::errors::EtcdError;
use crate::pb::etcdserverpb::{
    AlarmMember, AlarmRequest, AlarmResponse, AuthStatusResponse, CompactionRequest,
    CompactionResponse, DeleteRangeRequest, DeleteRangeResponse, HashKvResponse, HashResponse,
    LeaseGrantRequest, LeaseGrantResponse, LeaseKeepAliveResponse, LeaseLeasesResponse,
    LeaseRevokeResponse, LeaseTimeToLiveRequest, LeaseTimeToLiveResponse, MemberAddRequest,
    MemberAddResponse, MemberListResponse, MemberPromoteResponse, MemberRemoveResponse,
    MemberUpdateRequest, MemberUpdateResponse, MoveLeaderResponse, PutRequest, PutResponse,
    RangeRequest, RangeResponse, StatusResponse, TxnRequest, TxnResponse,
};
use crate::pb::mvccpb::Event;

/// Result of a node call.
pub type NodeResult<T> = Result<T, EtcdError>;

/// A boxed stream, as the node hands out for watches and snapshots.
pub type BoxStream<T> = Pin<Box<dyn Stream<Item = T> + Send + 'static>>;

/// Who is asking: the identity the front end established from the `token` metadata (or the
/// gateway's `Authorization` header). The node checks permissions against it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Caller {
    /// The auth token the client sent, if any.
    pub token: Option<String>,
}

/// What a new watcher watches (from `WatchCreateRequest`, after the front end's normalisation:
/// empty key → `\0`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchSpec {
    /// First key.
    pub key: bytes::Bytes,
    /// Range end per spec §4.2 (empty = the single key, `\0` = every key ≥ `key`).
    pub range_end: bytes::Bytes,
    /// 0 = only events after the current revision; otherwise replay from this revision.
    pub start_revision: i64,
    /// Attach the previous kv to events.
    pub prev_kv: bool,
    /// Drop PUT events.
    pub no_put: bool,
    /// Drop DELETE events.
    pub no_delete: bool,
    /// Send progress notifications when idle.
    pub progress_notify: bool,
}

/// What a watcher delivers. The front end adds the watch ID and header fields and sends one
/// `WatchResponse` per update.
#[derive(Debug, Clone, PartialEq)]
pub enum WatchUpdate {
    /// All matching events of one revision (or, during replay, of several revisions), in order.
    /// `revision` becomes `header.revision` (the store's revision at send time).
    Events {
        /// Header revision.
        revision: i64,
        /// The events.
        events: Vec<Event>,
    },
    /// The start revision was compacted: the watcher ends after this update.
    Compacted {
        /// The store's compaction revision.
        compact_revision: i64,
    },
    /// Idle progress notification (only when `progress_notify` was asked for).
    Progress {
        /// Current revision.
        revision: i64,
    },
}

/// A registered watcher: the revision the create response reports and the updates that
/// follow. Dropping `updates` cancels the watcher.
pub struct Watcher {
    /// Current revision when the watcher was registered (the created response's header).
    pub revision: i64,
    /// Updates until the watcher ends (stream end = the watcher was removed by the node).
    pub updates: BoxStream<WatchUpdate>,
}

/// A state summary the front end needs without asking raft: leadership (for `hasleader`),
/// the IDs for headers, and figures for `/metrics` and `/health`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NodeState {
    /// This member's ID.
    pub member_id: u64,
    /// The cluster's ID.
    pub cluster_id: u64,
    /// Current leader's ID, 0 when there is none.
    pub leader: u64,
    /// Current raft term.
    pub raft_term: u64,
    /// Current store revision.
    pub revision: i64,
    /// Active alarms, with the member that raised each.
    pub alarms: Vec<AlarmMember>,
    /// Whether this member is a learner.
    pub is_learner: bool,
}

/// Counters and gauges the node exports on `/metrics` (etcd's names in `metrics.rs`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NodeMetrics {
    /// Times the leader changed, as seen by this member.
    pub leader_changes_seen: u64,
    /// Raft committed index.
    pub proposals_committed: u64,
    /// Raft applied index.
    pub proposals_applied: u64,
    /// Proposals waiting to commit.
    pub proposals_pending: u64,
    /// Proposals that failed.
    pub proposals_failed: u64,
    /// WAL fdatasync latency histogram.
    pub wal_fsync: Histogram,
    /// Backend commit latency histogram.
    pub backend_commit: Histogram,
    /// Proposal stages (raft_backed/stages.rs): propose → apply start (raft, WAL, hand-offs),
    /// ...
    pub proposal_commit: Histogram,
    /// ... apply start → outcome sent to the waiter, ...
    pub proposal_apply: Histogram,
    /// ... outcome sent → the proposing task runs again.
    pub proposal_reply: Histogram,
    /// Backend file size in bytes.
    pub db_total_size: i64,
    /// Bytes of the backend file in use.
    pub db_total_size_in_use: i64,
    /// Backend quota in bytes.
    pub quota_backend_bytes: i64,
    /// The peer transport's counters (empty on a node without peers).
    pub network: NetworkMetrics,
}

/// Counters of the peer transport (net/src/peer), for `/metrics`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NetworkMetrics {
    /// One entry per other member this one has talked to or dialled, by member ID.
    pub peers: Vec<PeerMetrics>,
    /// Raft MsgRequestPreVote messages handed to the transport (a pre-candidate's campaign).
    pub pre_vote_requests_sent: u64,
    /// Raft MsgRequestVote messages handed to the transport (a candidate's campaign: its term
    /// went up).
    pub vote_requests_sent: u64,
}

/// The link to one other member.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PeerMetrics {
    /// The member's ID.
    pub id: u64,
    /// The outgoing message connection to it is up.
    pub connected: bool,
    /// Times an established outgoing connection to it broke.
    pub disconnects: u64,
    /// Dials (connect, TLS or hello) that failed.
    pub dial_failures: u64,
    /// The wait before the next dial, in seconds (0 while connected): grows from 20 ms,
    /// doubling per failed dial, up to 1 s.
    pub redial_backoff_seconds: f64,
    /// Snapshot transfers to it that it acknowledged, and those that failed.
    pub snapshots_sent: u64,
    pub snapshot_send_failures: u64,
    /// Snapshot transfers from it received, made durable and stepped, and those that failed.
    pub snapshots_received: u64,
    pub snapshot_receive_failures: u64,
}

/// A latency histogram with etcd's buckets: upper bounds 0.001 s × 2^k for k = 0..=13 (1 ms …
/// 8.192 s), then +Inf. Invariant: `buckets` are *non-cumulative* counts per bucket, 15 entries,
/// the last for +Inf; `count` is their sum.
#[derive(Debug, Clone, PartialEq)]
pub struct Histogram {
    /// Observations per bucket (not cumulative), last = above 8.192 s.
    pub buckets: [u64; HISTOGRAM_BUCKETS + 1],
    /// Sum of observations in seconds.
    pub sum_seconds: f64,
    /// Number of observations.
    pub count: u64,
}

/// Finite buckets of [`Histogram`].
pub const HISTOGRAM_BUCKETS: usize = 14;

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            buckets: [0; HISTOGRAM_BUCKETS + 1],
            sum_seconds: 0.0,
            count: 0,
        }
    }
}

impl Histogram {
    /// Upper bound in seconds of finite bucket `k`.
    pub fn bound(k: usize) -> f64 {
        0.001 * (1u64 << k) as f64
    }

    /// Records one observation.
    pub fn observe(&mut self, seconds: f64) {
        let k = (0..HISTOGRAM_BUCKETS)
            .find(|&k| seconds <= Self::bound(k))
            .unwrap_or(HISTOGRAM_BUCKETS);
        self.buckets[k] += 1;
        self.sum_seconds += seconds;
        self.count += 1;
    }
}

/// The node behind the front end: one member of a raft group with its MVCC store, leases,
/// watches, alarms and membership. Implemented by the raft-backed node; the front end is generic
/// over it. Requests arrive validated (spec §4.4–§4.6 gRPC-layer checks done).
///
/// Every method is cancel-safe in the sense that dropping the future abandons the *wait*, not
/// the proposal: a write already proposed may still be applied.
pub trait EtcdNode: Send + Sync + 'static {
    /// Leadership, IDs and alarms now. Cheap (no raft round trip); called on every request.
    fn state(&self) -> NodeState;

    /// Figures for `/metrics`.
    fn metrics(&self) -> NodeMetrics;

    /// KV Range (§4.3). Linearizable unless `serializable`.
    fn range(
        &self,
        caller: &Caller,
        req: RangeRequest,
    ) -> impl Future<Output = NodeResult<RangeResponse>> + Send;
    /// KV Put (§4.4).
    fn put(
        &self,
        caller: &Caller,
        req: PutRequest,
    ) -> impl Future<Output = NodeResult<PutResponse>> + Send;
    /// KV DeleteRange (§4.5).
    fn delete_range(
        &self,
        caller: &Caller,
        req: DeleteRangeRequest,
    ) -> impl Future<Output = NodeResult<DeleteRangeResponse>> + Send;
    /// KV Txn (§4.6).
    fn txn(
        &self,
        caller: &Caller,
        req: TxnRequest,
    ) -> impl Future<Output = NodeResult<TxnResponse>> + Send;
    /// KV Compact (§4.7).
    fn compact(
        &self,
        caller: &Caller,
        req: CompactionRequest,
    ) -> impl Future<Output = NodeResult<CompactionResponse>> + Send;

    /// Registers a watcher (§4.8). `Err` only for auth failures (sent as a failed create).
    fn watch(
        &self,
        caller: &Caller,
        spec: WatchSpec,
    ) -> impl Future<Output = NodeResult<Watcher>> + Send;

    /// Lease grant (§4.9); `req.ttl` already raised to the minimum TTL by the node.
    fn lease_grant(
        &self,
        caller: &Caller,
        req: LeaseGrantRequest,
    ) -> impl Future<Output = NodeResult<LeaseGrantResponse>> + Send;
    /// Lease revoke.
    fn lease_revoke(
        &self,
        caller: &Caller,
        id: i64,
    ) -> impl Future<Output = NodeResult<LeaseRevokeResponse>> + Send;
    /// One keep-alive: `TTL` = the full granted TTL, 0 for an unknown or expired lease (not an
    /// error); the header is filled before the renewal.
    fn lease_keep_alive(
        &self,
        caller: &Caller,
        id: i64,
    ) -> impl Future<Output = NodeResult<LeaseKeepAliveResponse>> + Send;
    /// Lease time-to-live (TTL −1 for unknown leases).
    fn lease_time_to_live(
        &self,
        caller: &Caller,
        req: LeaseTimeToLiveRequest,
    ) -> impl Future<Output = NodeResult<LeaseTimeToLiveResponse>> + Send;
    /// All leases.
    fn lease_leases(
        &self,
        caller: &Caller,
    ) -> impl Future<Output = NodeResult<LeaseLeasesResponse>> + Send;

    /// Cluster MemberAdd (§4.10).
    fn member_add(
        &self,
        caller: &Caller,
        req: MemberAddRequest,
    ) -> impl Future<Output = NodeResult<MemberAddResponse>> + Send;
    /// Cluster MemberRemove.
    fn member_remove(
        &self,
        caller: &Caller,
        id: u64,
    ) -> impl Future<Output = NodeResult<MemberRemoveResponse>> + Send;
    /// Cluster MemberUpdate.
    fn member_update(
        &self,
        caller: &Caller,
        req: MemberUpdateRequest,
    ) -> impl Future<Output = NodeResult<MemberUpdateResponse>> + Send;
    /// Cluster MemberList.
    fn member_list(
        &self,
        caller: &Caller,
    ) -> impl Future<Output = NodeResult<MemberListResponse>> + Send;
    /// Cluster MemberPromote.
    fn member_promote(
        &self,
        caller: &Caller,
        id: u64,
    ) -> impl Future<Output = NodeResult<MemberPromoteResponse>> + Send;

    /// Maintenance Alarm (§4.11).
    fn alarm(
        &self,
        caller: &Caller,
        req: AlarmRequest,
    ) -> impl Future<Output = NodeResult<AlarmResponse>> + Send;
    /// Maintenance Status.
    fn status(&self, caller: &Caller) -> impl Future<Output = NodeResult<StatusResponse>> + Send;
    /// Maintenance Defragment (the backend's online compaction).
    fn defragment(&self, caller: &Caller) -> impl Future<Output = NodeResult<()>> + Send;
    /// Maintenance Hash.
    fn hash(&self, caller: &Caller) -> impl Future<Output = NodeResult<HashResponse>> + Send;
    /// Maintenance HashKV.
    fn hash_kv(
        &self,
        caller: &Caller,
        revision: i64,
    ) -> impl Future<Output = NodeResult<HashKvResponse>> + Send;
    /// Maintenance Snapshot: the backend file as chunks (the front end adds remaining_bytes
    /// bookkeeping and the trailing SHA-256 message). The first item is the total size.
    fn snapshot(
        &self,
        caller: &Caller,
    ) -> impl Future<Output = NodeResult<(u64, BoxStream<NodeResult<bytes::Bytes>>)>> + Send;
    /// Maintenance MoveLeader.
    fn move_leader(
        &self,
        caller: &Caller,
        target: u64,
    ) -> impl Future<Output = NodeResult<MoveLeaderResponse>> + Send;

    /// Auth AuthStatus (the only auth RPC served before the auth issue).
    fn auth_status(
        &self,
        caller: &Caller,
    ) -> impl Future<Output = NodeResult<AuthStatusResponse>> + Send;
}

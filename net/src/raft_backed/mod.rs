//! The raft-backed node: what the `ringkv` binary serves. One raft-rs member (a single voter
//! for now) over the WAL, applying to the MVCC store on the backend.
//!
//! ```text
//!  tonic/gateway tasks (tokio)                         engine threads (no tokio)
//!  ───────────────────────────                         ─────────────────────────
//!  write: encode InternalRaftRequest{header.ID}
//!         register waiter ID → oneshot ──propose──►  ringkv-raft (RawNode) ──► ringkv-wal
//!         await (request timeout)                        │ committed entries    (fdatasync)
//!                 ▲                                      ▼
//!                 └──── oneshot ◄── waiter ──────── ringkv-apply: Applier (apply.rs)
//!                                                        │ store.write(): MVCC + lessor + hub
//!  linearizable read: read gate ──► read_index ──► raft ┘ done once applied ≥ read index
//!                     (one round in flight; reads arriving meanwhile share the next)
//!                     then store.read()
//!  serializable read: store.read() at once
//!  watch: hub stream = bounded tokio mpsc (try_send from apply/housekeeping) ──► WatchUpdate
//!                                         ringkv-housekeeping: backend commits when due,
//!                                         watch catch-up, physical compaction steps, lease
//!                                         expiry (proposes LeaseRevoke), auto-compaction
//! ```
//!
//! Sharing: the MVCC store sits behind one `RwLock` (see engine/docs/design.md, "## Node",
//! for the cost and what replaces it). Lock order: `store` before `alarms` before `waiters`;
//! no lock is held across an `.await`.

mod apply;
mod cluster;
mod forward;
mod membership;
mod read_gate;
mod replies;
mod shared_writer;
mod snapshot;
mod stages;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use prost::Message;
use ringkv_engine::ThreadOptions;
use ringkv_engine::pb::etcdserverpb::{
    AlarmMember, AlarmRequest, AlarmResponse, AlarmType, AuthStatusResponse, CompactionRequest,
    CompactionResponse, DeleteRangeRequest, DeleteRangeResponse, HashKvResponse, HashResponse,
    InternalRaftRequest, LeaseCheckpoint, LeaseCheckpointRequest, LeaseGrantRequest,
    LeaseGrantResponse, LeaseKeepAliveResponse, LeaseLeasesResponse, LeaseRevokeRequest,
    LeaseRevokeResponse, LeaseTimeToLiveRequest, LeaseTimeToLiveResponse, MemberAddRequest,
    MemberAddResponse, MemberListResponse, MemberPromoteResponse, MemberRemoveResponse,
    MemberUpdateRequest, MemberUpdateResponse, MoveLeaderResponse, PutRequest, PutResponse,
    RangeRequest, RangeResponse, RequestHeader, ResponseHeader, StatusResponse, TxnRequest,
    TxnResponse, WatchCreateRequest, WatchResponse, alarm_request::AlarmAction,
    watch_create_request::FilterType,
};
use ringkv_engine::{
    FlushStats, HeaderIds, IoKind, LeaseIdGen, MvccStore, NodeConfig, RaftNode, RaftNodeError,
    Record, SinkFull, SnapDir, SnapshotMark, SnapshotPolicy, StreamId, Vfs, Wal, WalDirLock,
    WalMetrics, WalOptions, WatchSink, apply_replay, new_vfs, restore_from_snapshot,
};
use tokio::sync::{mpsc, oneshot};

use self::apply::{Applied, Applier, mvcc_err};
use self::membership::Membership;
use self::read_gate::ReadGate;
use self::shared_writer::NodeBackend;
use self::stages::ProposalStages;
use crate::config::{AutoCompaction, Config, InitialMember};
use crate::errors::EtcdError;
use crate::node::{
    BoxStream, Caller, EtcdNode, Histogram, NodeMetrics, NodeResult, NodeState, WatchSpec,
    WatchUpdate, Watcher,
};
use crate::peer::{PeerConfig, PeerTransport};

/// Commit the backend after this many applied entries (etcd's batch limit) ...
const COMMIT_OPS: u64 = 10_000;
/// ... or when this long has passed since the last commit (etcd's batch interval).
const COMMIT_INTERVAL: Duration = Duration::from_millis(100);
/// Housekeeping period (watch catch-up runs at this rate, like etcd's 10 ms victim retry).
const HOUSEKEEPING_TICK: Duration = Duration::from_millis(10);
/// How often housekeeping times out proposals older than the request timeout.
const WAITER_SWEEP: Duration = Duration::from_millis(50);
/// Lease expiry check period (etcd's lessor checks every 500 ms).
const LEASE_CHECK: Duration = Duration::from_millis(500);
/// Most expired leases revoked per check (etcd's `leaseRevokeRate` per 500 ms is 500).
const LEASE_REVOKE_BATCH: usize = 500;
/// etcd's revision auto-compactor checks every 5 minutes.
const REVISION_COMPACT_CHECK: Duration = Duration::from_secs(300);
/// Capacity of a watcher's hub stream (slack before the watcher becomes a victim).
const WATCH_STREAM_CAPACITY: usize = 1024;
/// Name prefix of temporary backend copies (in `member/snap`) that earlier builds streamed
/// snapshots from; removed at startup. Snapshots now stream from a pinned commit, no file.
const SNAPSHOT_COPY_PREFIX: &str = "db.snapshot.";
/// How long a Snapshot RPC's stream may wait for its client to take the next chunk.
const SNAPSHOT_SEND_TIMEOUT: Duration = Duration::from_secs(30);
/// Snapshot chunk size read from the backend copy.
const SNAPSHOT_READ_CHUNK: usize = 32 * 1024;

/// How the node was opened; derived from [`Config`] by [`NodeOptions::from_config`].
#[derive(Clone)]
pub struct NodeOptions {
    pub data_dir: PathBuf,
    pub name: String,
    pub member_id: u64,
    pub cluster_id: u64,
    pub peer_urls: Vec<String>,
    pub client_urls: Vec<String>,
    pub heartbeat: Duration,
    pub election_timeout: Duration,
    /// `None` = no quota.
    pub quota_backend_bytes: Option<u64>,
    pub auto_compaction: AutoCompaction,
    pub max_request_bytes: usize,
    pub progress_notify_interval: Duration,
    /// Propose lease checkpoints (remaining TTLs) through raft
    /// (`--experimental-enable-lease-checkpoint`); otherwise due checkpoints are dropped.
    pub lease_checkpoint: bool,
    /// I/O implementation: `RINGKV_IO=std` picks plain pread/pwrite; the default is io_uring,
    /// falling back to std when the kernel refuses io_uring.
    pub io: IoKind,
    /// I/O implementation of the WAL alone (`RINGKV_WAL_IO=std|uring`); `None`: as `io`.
    /// Ignored when `vfs` is given. The binary's default is std: the WAL's write + fdatasync
    /// then block the thread that flushes (the raft core when the WAL is idle) instead of
    /// handing the fdatasync to the kernel's io-wq worker, which cost two more context
    /// switches per write at one client (BENCHMARKS.md, "Write latency, session 4").
    pub wal_io: Option<IoKind>,
    /// A file system to use instead of the one `io` names (tests: the fault-injecting VFS).
    pub vfs: Option<Arc<dyn Vfs>>,
    /// Bootstrap and peers; the default is a member alone, without a peer listener.
    pub cluster: ClusterOptions,
    /// `--snapshot-count`: applied entries between raft snapshots (0: none).
    pub snapshot_count: u64,
    /// `--max-snapshots`: snapshot metadata files kept (0: all).
    pub max_snapshots: usize,
    /// `--max-wals`: WAL segments kept even when a snapshot covers them (0: all).
    pub max_wals: usize,
    /// WAL segment size (`RINGKV_WAL_SEGMENT_SIZE`, bytes; tests use small segments to see
    /// purging); `None`: the WAL's default (64 MiB, etcd's).
    pub wal_segment_size: Option<u64>,
    /// Thread placement (`--cpu-layout`) and applying on the raft thread.
    pub threads: ThreadOptions,
}

/// How this member finds and forms its cluster (etcd's `--initial-cluster*` flags).
#[derive(Clone, Debug, Default)]
pub struct ClusterOptions {
    /// The `--initial-cluster` members (empty: this member alone).
    pub initial_members: Vec<InitialMember>,
    /// `--initial-cluster-state existing`: join a running cluster that already added this
    /// member (MemberAdd); its log brings the configuration.
    pub join_existing: bool,
    /// `--listen-peer-urls` addresses.
    pub peer_listen: Vec<std::net::SocketAddr>,
    /// A joining member: the member list (JSON) the cluster answered its query with; seeds
    /// the list instead of `initial_members`.
    pub existing_members: Option<Vec<u8>>,
    /// `--initial-cluster-token` (MemberAdd derives new IDs from the URLs and the time only,
    /// as etcd does; kept for the log line).
    pub token: String,
    /// `--force-new-cluster`: restart as a one-member cluster from this member's data
    /// (`cluster::force_new_cluster`).
    pub force_new_cluster: bool,
    /// `--strict-reconfig-check` (etcd's default: on): MemberAdd, MemberRemove and
    /// MemberPromote refuse changes that would leave too few started or reachable voters.
    /// `false` in `Default` (unit tests); `from_config` takes the flag.
    pub strict_reconfig: bool,
    /// tls: peer TLS (dialing `https://` peer URLs; accepting with it when `peer_listen_tls`).
    pub peer_tls: Option<Arc<crate::tls::SideTls>>,
    pub peer_listen_tls: bool,
    /// tls: the client TLS configuration forwarding dials an `https://` leader client URL with.
    pub forward_tls: Option<Arc<rustls::ClientConfig>>,
}

impl NodeOptions {
    pub fn from_config(c: &Config) -> NodeOptions {
        let io = match std::env::var("RINGKV_IO").as_deref() {
            Ok("std") => IoKind::Std,
            _ => IoKind::Uring,
        };
        NodeOptions {
            data_dir: c.data_dir.clone(),
            name: c.flags.name.clone(),
            member_id: c.member_id,
            cluster_id: c.cluster_id,
            peer_urls: c.peer_urls.clone(),
            client_urls: c.advertise_client_urls.clone(),
            heartbeat: Duration::from_millis(c.flags.heartbeat_interval),
            election_timeout: Duration::from_millis(c.flags.election_timeout),
            quota_backend_bytes: c.quota_backend_bytes,
            auto_compaction: c.auto_compaction,
            max_request_bytes: c.flags.max_request_bytes as usize,
            progress_notify_interval: c.flags.experimental_watch_progress_notify_interval,
            lease_checkpoint: c.flags.experimental_enable_lease_checkpoint,
            io,
            wal_io: match std::env::var("RINGKV_WAL_IO").as_deref() {
                Ok("uring") => Some(IoKind::Uring),
                _ => Some(IoKind::Std),
            },
            vfs: None,
            cluster: ClusterOptions {
                initial_members: c.initial_members.clone(),
                join_existing: c.flags.initial_cluster_state
                    == crate::config::ClusterState::Existing,
                peer_listen: c.peer_addrs.clone(),
                token: c.flags.initial_cluster_token.clone(),
                existing_members: None,
                force_new_cluster: c.flags.force_new_cluster,
                strict_reconfig: c.flags.strict_reconfig_check,
                // tls: filled by `run` once the certificates are loaded.
                ..Default::default()
            },
            snapshot_count: c.flags.snapshot_count,
            max_snapshots: c.flags.max_snapshots as usize,
            max_wals: c.flags.max_wals as usize,
            wal_segment_size: std::env::var("RINGKV_WAL_SEGMENT_SIZE")
                .ok()
                .and_then(|v| v.parse().ok()),
            threads: ThreadOptions::default(),
        }
    }

    /// etcd's request timeout: 5 s plus twice the election timeout.
    fn request_timeout(&self) -> Duration {
        Duration::from_secs(5) + 2 * self.election_timeout
    }
}

/// Why the node could not open.
#[derive(Debug, thiserror::Error)]
#[error("ringkv: {0}")]
pub struct OpenError(String);

impl Inner {
    /// A consistent copy of the backend as a reader of its bytes, and the raft state it holds:
    /// its index (the consistent index), that entry's term, and the configuration applied up
    /// to it. A peer receiving the copy gets these as its snapshot's metadata (like etcd's
    /// merged snapshot), so that a member added after the newest raft snapshot finds itself in
    /// the configuration. Serves the Maintenance.Snapshot RPC and snapshot transfers to peers.
    ///
    /// The store's write lock is held only to commit and pin that commit; the bytes are read
    /// afterwards from the pinned commit while applies, commits and reads go on
    /// (`ringkv_engine::CommittedCopy`: the pinned pages are not reused until the reader is
    /// dropped). So the copy's consistent index is the applied index at the moment of the pin.
    fn copy_backend_at(&self) -> NodeResult<crate::peer::BackendCopy> {
        let mut store = self.store.write();
        let (voters, learners) = {
            // Lock order: `store` before `members`. Both are only changed by the apply thread
            // with the store's write lock held, so they describe the same index.
            self.members.read().conf(None)
        };
        let index = store.consistent_index();
        let term = self.applied_term.load(Ordering::Acquire);
        self.dirty.store(true, Ordering::Release);
        self.commit_locked(&mut store);
        if self.failed.get().is_some() {
            return Err(EtcdError::Internal(self.failure_text()));
        }
        // Under the write lock right after the commit: the newest version is that commit
        // (a background commit cannot start without the read lock, and `commit_all` left
        // side mode, so one that was running commits nothing more).
        let data = store
            .backend()
            .committed_copy()
            .ok_or_else(|| EtcdError::Internal("snapshot: the backend is closed".into()))?;
        drop(store);
        Ok(crate::peer::BackendCopy {
            len: data.len(),
            data: Box::new(self.live_copies.track(data)),
            index,
            term,
            voters,
            learners,
        })
    }
}

/// WAL flush latencies for `/metrics`.
#[derive(Default)]
struct FsyncHistogram(Mutex<Histogram>);

impl WalMetrics for FsyncHistogram {
    fn on_flush(&self, stats: &FlushStats) {
        if stats.ok {
            self.0.lock().observe(stats.sync_duration.as_secs_f64());
        }
    }
}

/// A proposing task waiting for its entry to apply: where to send the outcome (with the time
/// it was sent, for the reply stage) and when it proposed (for the commit stage; stages.rs).
pub(crate) struct Waiter {
    pub(crate) tx: oneshot::Sender<(Result<Applied, EtcdError>, Instant)>,
    pub(crate) proposed: Instant,
    /// The proposing thread's reply queue (replies.rs): apply delivers through it, one wake
    /// per thread and entry. `None`: apply sends to `tx` directly.
    pub(crate) reply: Option<&'static replies::ReplyQueue>,
}

/// The hasher of the `waiters` map: request IDs come from a counter of this process (not from
/// clients), so a multiply by an odd constant spreads them without SipHash's cost (three
/// hashes per put: insert, remove by apply, and the guard's remove when a put is dropped).
#[derive(Clone, Copy, Default)]
pub(crate) struct IdHash;

impl std::hash::BuildHasher for IdHash {
    type Hasher = IdHasher;

    fn build_hasher(&self) -> IdHasher {
        IdHasher(0)
    }
}

/// 2^64 / φ rounded to odd (Knuth's multiplicative hashing).
const FIB: u64 = 0x9E37_79B9_7F4A_7C15;

/// See [`IdHash`]; only `u64` keys are hashed (other writes fold their bytes in, for
/// completeness).
#[derive(Default)]
pub(crate) struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(*b)).wrapping_mul(FIB);
        }
    }

    fn write_u64(&mut self, id: u64) {
        // The multiplier is odd, so distinct IDs keep distinct hashes; sequential IDs vary
        // both the low bits (bucket) and the top 7 bits (hashbrown's tag).
        self.0 = (id ^ self.0).wrapping_mul(FIB);
    }
}

/// The raised alarms, with a flag that says whether there are any: every request reads the
/// alarms (`state()` for its header and `/health`, `nospace()` before a put), and taking the
/// read lock writes the lock's reader count, one cache line that the front-end threads would
/// pass between their cores per request. With no alarm raised (the normal case) a reader
/// loads the flag only.
///
/// Invariant: `any == !list.is_empty()` whenever the write lock is free (set by
/// [`AlarmWrite`]'s drop, before the lock is released).
pub(crate) struct AlarmList {
    list: RwLock<Vec<AlarmMember>>,
    any: AtomicBool,
}

impl AlarmList {
    fn new(list: Vec<AlarmMember>) -> AlarmList {
        AlarmList {
            any: AtomicBool::new(!list.is_empty()),
            list: RwLock::new(list),
        }
    }

    /// Whether any alarm is raised.
    pub(crate) fn any(&self) -> bool {
        self.any.load(Ordering::Acquire)
    }

    /// A copy of the list (empty without locking when no alarm is raised).
    pub(crate) fn snapshot(&self) -> Vec<AlarmMember> {
        if self.any() {
            self.list.read().clone()
        } else {
            Vec::new()
        }
    }

    pub(crate) fn read(&self) -> parking_lot::RwLockReadGuard<'_, Vec<AlarmMember>> {
        self.list.read()
    }

    /// The list for changing; the flag follows when the guard is dropped.
    pub(crate) fn write(&self) -> AlarmWrite<'_> {
        AlarmWrite {
            list: self.list.write(),
            any: &self.any,
        }
    }
}

/// Write access to an [`AlarmList`].
pub(crate) struct AlarmWrite<'a> {
    list: parking_lot::RwLockWriteGuard<'a, Vec<AlarmMember>>,
    any: &'a AtomicBool,
}

impl std::ops::Deref for AlarmWrite<'_> {
    type Target = Vec<AlarmMember>;

    fn deref(&self) -> &Vec<AlarmMember> {
        &self.list
    }
}

impl std::ops::DerefMut for AlarmWrite<'_> {
    fn deref_mut(&mut self) -> &mut Vec<AlarmMember> {
        &mut self.list
    }
}

impl Drop for AlarmWrite<'_> {
    fn drop(&mut self) {
        // Runs before the field's drop releases the lock (the invariant above).
        self.any.store(!self.list.is_empty(), Ordering::Release);
    }
}

/// State shared by the front-end tasks, the apply thread and housekeeping.
pub(crate) struct Inner {
    /// The `LOCK` file of the WAL directory, held until [`RaftBackedNode::close`].
    wal_lock: Mutex<Option<WalDirLock>>,
    /// The MVCC store (with lessor and watch hub). Written by the apply thread and
    /// housekeeping; read by the front end.
    store: RwLock<MvccStore<NodeBackend>>,
    vfs: Arc<dyn Vfs>,
    /// `member/snap`: raft snapshot metadata, the backend file, received backend files.
    snap_dir: SnapDir,
    /// The backend's committed consistent index (what a snapshot may cover).
    durable_index: AtomicU64,
    wal: Arc<Wal>,
    /// Set once right after raft started.
    raft: OnceLock<RaftNode>,
    /// Proposals waiting for their entry to apply, by request ID.
    waiters: Mutex<HashMap<u64, Waiter, IdHash>>,
    /// See [`RejectSink`].
    rejects: &'static RejectSink,
    next_request_id: AtomicU64,
    lease_ids: Mutex<LeaseIdGen>,
    /// Raised alarms (mirrors the backend's `alarm` bucket).
    alarms: AlarmList,
    ids: HeaderIds,
    opts: NodeOptions,
    /// Current store revision (for `state()` without the store lock).
    revision: AtomicI64,
    /// The backend file's size as of the last commit or housekeeping tick, for the quota check
    /// of every write (which then takes no store lock; the file changes size only when the
    /// backend commits).
    file_bytes: AtomicU64,
    /// Writes applied since the last backend commit.
    dirty: AtomicBool,
    last_commit: Mutex<Instant>,
    /// Entries applied since the last backend commit.
    ops_since_commit: AtomicU64,
    /// Raft term of the entry at the store's consistent index (0: not known, e.g. right after
    /// a restart). Set with the consistent index, under the store's write lock.
    applied_term: AtomicU64,
    /// The first fatal failure (storage, WAL, corrupt entry); every request fails after it.
    failed: OnceLock<String>,
    stopping: AtomicBool,
    wal_fsync: Arc<FsyncHistogram>,
    backend_commit: Mutex<Histogram>,
    /// Whether this member's lessor is primary (it is the leader).
    lease_primary: AtomicBool,
    /// The member list (membership.rs); lock order: after `store`, before `waiters`.
    members: RwLock<Membership>,
    /// Raft messages to and from the other members.
    peers: PeerTransport,
    /// This member's removal was applied: it stops itself.
    self_removed: AtomicBool,
    /// This member's name and client URLs were applied from its own publish request.
    attrs_published: AtomicBool,
    last_publish: Mutex<Instant>,
    /// Gathers concurrent linearizable reads into one ReadIndex round.
    read_gate: Arc<ReadGate>,
    /// Time per proposal stage (commit, apply, reply), for `/metrics`.
    stages: ProposalStages,
    /// Where a follower forwards lease renewals and MemberPromote (forward.rs).
    leader_channel: forward::LeaderChannel,
    /// Backend copies being read; an install waits for them (snapshot.rs).
    live_copies: Arc<snapshot::LiveCopies>,
}

impl Inner {
    fn backend_stats(&self) -> Option<ringkv_engine::BackendStats> {
        self.store.read().backend().stats()
    }

    fn nospace(&self) -> bool {
        self.alarms.any()
            && self
                .alarms
                .read()
                .iter()
                .any(|a| a.alarm == AlarmType::Nospace as i32)
    }

    fn fail(&self, why: String) {
        tracing::error!("ringkv node failed: {why}");
        let _ = self.failed.set(why);
    }

    fn failure_text(&self) -> String {
        self.failed.get().cloned().unwrap_or_default()
    }

    fn check_failed(&self) -> NodeResult<()> {
        match self.failed.get() {
            Some(why) => Err(EtcdError::Internal(format!("ringkv: node failed: {why}"))),
            None if self.stopping.load(Ordering::Acquire) => Err(EtcdError::Stopped),
            None => Ok(()),
        }
    }

    fn raft(&self) -> &RaftNode {
        self.raft
            .get()
            .expect("raft started before the node is shared")
    }

    /// Commits the backend (data + consistent index) when `force`, or when writes are pending
    /// and the batch limit or interval was reached. The fdatasyncs run with no store lock held:
    /// apply and reads go on (the background commit of shared_writer.rs). Housekeeping only:
    /// background commits must not overlap, and the apply thread must not wait for one.
    fn commit_if_due(&self, force: bool) {
        let ops = self.ops_since_commit.load(Ordering::Acquire);
        if !self.dirty.load(Ordering::Acquire) {
            return;
        }
        let due =
            force || ops >= COMMIT_OPS || self.last_commit.lock().elapsed() >= COMMIT_INTERVAL;
        if !due || self.failed.get().is_some() {
            return;
        }
        let t = Instant::now();
        let (pending, ci) = {
            // Read lock: apply is excluded while the consistent index is taken (step 1).
            let store = self.store.read();
            let ci = store.consistent_index();
            match store.backend().begin_commit(ci) {
                Ok(Some(p)) => {
                    self.dirty.store(false, Ordering::Release);
                    self.ops_since_commit.store(0, Ordering::Release);
                    (p, ci)
                }
                Ok(None) => return,
                Err(e) => return self.fail(format!("backend commit: {e}")),
            }
        };
        let committed = pending.run();
        let finished = {
            let mut store = self.store.write();
            let r = store.backend_mut().finish_commit();
            self.note_file_bytes(&store);
            r
        };
        self.commit_done(t, ci, committed.and(finished));
    }

    /// Commits data and consistent index at once; the caller holds the store's write lock.
    fn commit_locked(&self, store: &mut MvccStore<NodeBackend>) {
        if self.failed.get().is_some() {
            return;
        }
        let t = Instant::now();
        let ci = store.consistent_index();
        let r = store.backend_mut().commit_all(ci);
        self.note_file_bytes(store);
        if r.is_ok() {
            self.dirty.store(false, Ordering::Release);
            self.ops_since_commit.store(0, Ordering::Release);
        }
        self.commit_done(t, ci, r);
    }

    /// Records a finished commit of the entries up to `index`.
    fn commit_done(&self, started: Instant, index: u64, r: ringkv_engine::StorageResult<()>) {
        match r {
            Ok(()) => {
                // A commit that a snapshot install overtook must not move the index back.
                self.durable_index.fetch_max(index, Ordering::AcqRel);
                self.backend_commit
                    .lock()
                    .observe(started.elapsed().as_secs_f64());
                *self.last_commit.lock() = Instant::now();
            }
            // Fatal: the backend refuses writes after a failed commit; never retried.
            Err(e) => self.fail(format!("backend commit: {e}")),
        }
    }

    /// Refreshes `file_bytes` from the store's backend.
    fn note_file_bytes(&self, store: &MvccStore<NodeBackend>) {
        if let Some(st) = store.backend().stats() {
            self.file_bytes.store(st.file_bytes, Ordering::Release);
        }
    }

    /// Sends `result` to the waiter `id` if it is still waiting.
    fn complete_waiter(&self, id: u64, result: Result<Applied, EtcdError>) {
        let w = self.waiters.lock().remove(&id);
        if let Some(w) = w {
            let _ = w.tx.send((result, Instant::now()));
        }
    }

    /// etcd's request timeout: waiters proposed at least `request_timeout` ago get
    /// `EtcdError::Timeout` (their entries may still apply later, as with etcd). Called by
    /// housekeeping every `WAITER_SWEEP`, so a timeout fires up to that much late.
    fn expire_waiters(&self, now: Instant) {
        let limit = self.opts.request_timeout();
        let expired: Vec<Waiter> = {
            let mut waiters = self.waiters.lock();
            let ids: Vec<u64> = waiters
                .iter()
                .filter(|(_, w)| now.saturating_duration_since(w.proposed) >= limit)
                .map(|(&id, _)| id)
                .collect();
            ids.iter().filter_map(|id| waiters.remove(id)).collect()
        };
        for w in expired {
            let _ = w.tx.send((Err(EtcdError::Timeout), now));
        }
    }

    fn header(&self) -> Option<ResponseHeader> {
        Some(ResponseHeader {
            revision: self.revision.load(Ordering::Acquire),
            raft_term: self.raft().progress().term.load(Ordering::Acquire),
            ..Default::default()
        })
    }

    /// Proposes without waiting (lease expiry, auto-compaction, alarms raised by the node).
    fn propose_detached(&self, mut req: InternalRaftRequest) {
        let id = self.next_request_id.fetch_add(1, Ordering::Relaxed);
        req.header = Some(RequestHeader {
            id,
            ..Default::default()
        });
        self.raft().propose(req.encode_to_vec(), None);
    }
}

fn raft_err(e: RaftNodeError) -> EtcdError {
    match e {
        RaftNodeError::NoLeader | RaftNodeError::ProposalDropped => EtcdError::NoLeader,
        RaftNodeError::Stopped => EtcdError::Stopped,
        RaftNodeError::PersistFailed(why) => {
            EtcdError::Internal(format!("ringkv: WAL failed: {why}"))
        }
        RaftNodeError::Raft(why) => EtcdError::Internal(format!("ringkv: raft: {why}")),
    }
}

/// Removes a waiter when the proposing future is dropped before its entry applied. Disarmed
/// once the outcome arrived: whoever sent it (apply, a rejection, the timeout sweep) removed
/// the waiter already, so the common path takes the `waiters` lock once, not twice.
struct WaiterGuard<'a> {
    inner: &'a Inner,
    id: u64,
    armed: bool,
}

impl Inner {
    /// Registers a waiter under a fresh request ID (the proposal's `header.ID`); dropping the
    /// guard before the outcome arrived removes it again.
    fn register_waiter(
        &self,
        reply: Option<&'static replies::ReplyQueue>,
    ) -> (WaiterGuard<'_>, oneshot::Receiver<replies::Outcome>) {
        let id = self.next_request_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        let proposed = Instant::now();
        self.waiters.lock().insert(
            id,
            Waiter {
                tx,
                proposed,
                reply,
            },
        );
        let guard = WaiterGuard {
            inner: self,
            id,
            armed: true,
        };
        (guard, rx)
    }
}

impl Drop for WaiterGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.inner.waiters.lock().remove(&self.id);
        }
    }
}

/// Awaits a waiter's outcome (sent by apply, a raft rejection or the timeout sweep), then
/// disarms its guard.
async fn await_waiter(
    guard: &mut WaiterGuard<'_>,
    rx: oneshot::Receiver<(Result<Applied, EtcdError>, Instant)>,
) -> Result<Applied, EtcdError> {
    let r = rx.await;
    guard.armed = false;
    let (result, sent) = r.map_err(|_| EtcdError::Stopped)?;
    guard.inner.stages.reply.observe(sent.elapsed());
    result
}

/// The rejection callback of a proposal: raft refused it (no leader, stopped, WAL failed), so
/// its waiter gets raft's error now instead of at the timeout. It reaches the node through
/// the node's [`RejectSink`], so making and dropping one touches no reference count.
fn reject_waiter(inner: &Inner, id: u64) -> Box<dyn FnOnce(RaftNodeError) + Send> {
    let sink = inner.rejects;
    Box::new(move |e| {
        let inner = sink.0.read().upgrade();
        if let Some(inner) = inner {
            inner.complete_waiter(id, Err(raft_err(e)));
        }
    })
}

/// How rejection callbacks find their node: a `Weak` set once the node's `Inner` exists and
/// cleared when it is dropped. A callback holds the `&'static` sink instead of its own `Weak`,
/// whose count (next to the store lock in `Inner`'s allocation) every front-end thread and
/// the raft thread would otherwise write per proposal. Leaked: one per node opened (two
/// words), since callbacks may outlive the node.
pub(crate) struct RejectSink(RwLock<std::sync::Weak<Inner>>);

impl RejectSink {
    fn leak() -> &'static RejectSink {
        Box::leak(Box::new(RejectSink(RwLock::new(std::sync::Weak::new()))))
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Frees the allocation once the last other `Weak` goes (the sink's would keep it).
        *self.rejects.0.write() = std::sync::Weak::new();
    }
}

/// The raft-backed node. Cheap to clone.
#[derive(Clone)]
pub struct RaftBackedNode {
    inner: Arc<Inner>,
    threads: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

fn open_vfs(kind: IoKind) -> Arc<dyn Vfs> {
    match new_vfs(kind) {
        Ok(v) => v,
        Err(e) => {
            tracing::warn!("io_uring unavailable ({e}); using plain pread/pwrite");
            new_vfs(IoKind::Std).expect("the std VFS always opens")
        }
    }
}

fn open_wal(
    vfs: &Arc<dyn Vfs>,
    lock: &WalDirLock,
    metrics: Arc<FsyncHistogram>,
    segment_size: Option<u64>,
    wal_cpu: Option<usize>,
) -> Result<(Wal, ringkv_engine::Replay), OpenError> {
    let defaults = WalOptions::default();
    let opts = WalOptions {
        metrics: Some(metrics),
        wal_cpu,
        segment_size: segment_size.unwrap_or(defaults.segment_size),
        ..defaults
    };
    let dir = lock.dir();
    match Wal::open_locked(vfs.clone(), lock, opts.clone()) {
        Ok(r) => Ok(r),
        // O_DIRECT is refused by some file systems (tmpfs): fall back to buffered segments,
        // which are still made durable by fdatasync.
        Err(e) if !e.is_corruption() && !e.is_caller_mistake() => {
            tracing::warn!("WAL with O_DIRECT failed ({e}); retrying without O_DIRECT");
            Wal::open_locked(
                vfs.clone(),
                lock,
                WalOptions {
                    direct: false,
                    ..opts
                },
            )
            .map_err(|e| OpenError(format!("cannot open the WAL in {}: {e}", dir.display())))
        }
        Err(e) => Err(OpenError(format!(
            "cannot open the WAL in {}: {e}",
            dir.display()
        ))),
    }
}

/// Largest batch raft entry (engine `NodeConfig::batch_bytes`): the proposals that reach the
/// raft core in one turn share an entry up to this size.
const BATCH_BYTES: usize = 64 * 1024;
/// Environment variable overriding [`BATCH_BYTES`] (0: one entry per proposal), for A/B
/// measurements on one binary.
const BATCH_BYTES_ENV: &str = "RINGKV_BATCH_BYTES";

/// The batch entry limit for a WAL with `segment`-byte segments: [`BATCH_BYTES`] (or the
/// environment's), and at most a quarter segment so a batch always fits one WAL record (half
/// a segment; tests run with 16 KiB segments).
fn batch_bytes(segment: u64) -> usize {
    let want = std::env::var(BATCH_BYTES_ENV)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(BATCH_BYTES);
    want.min((segment / 4) as usize)
}

/// `InternalRaftRequest { header: { ID: id }, put }` encoded without building that message (a
/// few KiB of optional fields, built, moved and dropped per put otherwise): the bytes prost
/// writes for it, fields in number order (`put` = 4, `header` = 100; `ID` = 1 is 0 and left
/// out).
fn encode_put(id: u64, put: &PutRequest) -> Vec<u8> {
    use prost::encoding::message;
    let header = RequestHeader {
        id,
        ..Default::default()
    };
    let len = message::encoded_len(4, put) + message::encoded_len(100, &header);
    let mut buf = Vec::with_capacity(len);
    message::encode(4, put, &mut buf);
    message::encode(100, &header, &mut buf);
    buf
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl RaftBackedNode {
    /// Opens (or creates) `<data-dir>/member/{snap/db,wal}`, rebuilds the MVCC store from the
    /// backend, replays the WAL above the backend's consistent index and starts raft, the
    /// apply thread and housekeeping. Returns once the threads run (not once a leader exists:
    /// see [`RaftBackedNode::wait_leader`]).
    pub fn open(mut opts: NodeOptions) -> Result<RaftBackedNode, OpenError> {
        let vfs = opts.vfs.clone().unwrap_or_else(|| open_vfs(opts.io));
        let member = opts.data_dir.join("member");
        let snap_dir = member.join("snap");
        let wal_dir = member.join("wal");
        for d in [&snap_dir, &wal_dir] {
            vfs.create_dir_all(d)
                .map_err(|e| OpenError(format!("cannot create {}: {e}", d.display())))?;
        }
        // Taken before anything in the data directory is opened, so a second process on the
        // same directory fails without touching the backend.
        let wal_lock = Wal::lock_dir(&vfs, &wal_dir)
            .map_err(|e| OpenError(format!("cannot open the WAL in {}: {e}", wal_dir.display())))?;
        let db_path = snap_dir.join("db");
        // Copies left by earlier builds' snapshot streams that a crash interrupted.
        if let Ok(names) = vfs.list_dir(&snap_dir) {
            for n in names {
                if n.to_string_lossy().starts_with(SNAPSHOT_COPY_PREFIX) {
                    let _ = vfs.remove_file(&snap_dir.join(n));
                }
            }
        }
        // The newest valid snapshot metadata; corrupt newer ones are logged (file, offset).
        let snaps = SnapDir::new(vfs.clone(), &snap_dir);
        let (snap, _skipped) = snaps
            .load_newest()
            .map_err(|e| OpenError(format!("cannot read the snapshots: {e}")))?;
        let (mut backend, mut writer) =
            snapshot::open_backend(&vfs, &db_path).map_err(OpenError)?;
        if let Some(m) = &snap {
            let ci = snapshot::consistent_index(&backend).map_err(OpenError)?;
            if ci < m.index {
                // Invariant 1 of snapshot.rs: an install was cut short; finish it.
                let received = snaps.db_path(m.index);
                if !vfs.exists(&received) {
                    return Err(OpenError(format!(
                        "the backend {} is at index {ci}, behind the snapshot at index {} \
                         (term {}), and the received backend file {} is missing",
                        db_path.display(),
                        m.index,
                        m.term,
                        received.display()
                    )));
                }
                tracing::warn!(
                    "installing {}, received before a crash cut its install short",
                    received.display()
                );
                drop(writer);
                drop(backend);
                snapshot::check_received(&vfs, &received, m.index).map_err(OpenError)?;
                snapshot::swap_in(&vfs, &received, &db_path).map_err(OpenError)?;
                (backend, writer) = snapshot::open_backend(&vfs, &db_path).map_err(OpenError)?;
            }
        }
        let durable_index = snapshot::consistent_index(&backend).map_err(OpenError)?;
        let lessor = snapshot::new_lessor(&opts);
        let mut store = MvccStore::open(NodeBackend::new(backend, writer), lessor)
            .map_err(|e| OpenError(format!("cannot open the MVCC store: {e}")))?;
        // A data directory keeps the IDs it was created with (a joined member's come from
        // the cluster, not from the flags).
        if let Some((member_id, cluster_id)) = cluster::stored_ids(&store)? {
            opts.member_id = member_id;
            opts.cluster_id = cluster_id;
        }
        let ids = HeaderIds {
            cluster_id: opts.cluster_id,
            member_id: opts.member_id,
            raft_term: 0,
        };
        store.set_header_ids(ids);
        store
            .hub_mut()
            .set_max_request_bytes(opts.max_request_bytes);
        let applied = store.consistent_index();
        let alarms = snapshot::load_alarms(&store).map_err(OpenError)?;

        let mut membership = Membership::load(store.backend()).map_err(OpenError)?;
        let fresh = membership.members.is_empty();
        if fresh {
            cluster::seed_members(&opts, &mut membership, &mut store)?;
        }
        let wal_fsync = Arc::new(FsyncHistogram::default());
        let wal_vfs = match opts.wal_io {
            Some(kind) if opts.vfs.is_none() && kind != opts.io => open_vfs(kind),
            _ => vfs.clone(),
        };
        let (wal, replay) = open_wal(
            &wal_vfs,
            &wal_lock,
            wal_fsync.clone(),
            opts.wal_segment_size,
            opts.threads.wal_cpu,
        )?;
        if let Some((file, offset)) = &replay.truncated_tail {
            tracing::warn!(
                "WAL: cut a torn tail in {} at offset {offset}",
                file.display()
            );
        }
        let heartbeat_ms = opts.heartbeat.as_millis().max(1);
        let segment = opts
            .wal_segment_size
            .unwrap_or(WalOptions::default().segment_size);
        let mut cfg = NodeConfig {
            tick: opts.heartbeat,
            election_ticks: (opts.election_timeout.as_millis() / heartbeat_ms).max(2) as usize,
            heartbeat_ticks: 1,
            applied,
            threads: opts.threads.clone(),
            batch_bytes: batch_bytes(segment),
            ..NodeConfig::single(opts.member_id)
        };
        apply_replay(&mut cfg, &replay).map_err(OpenError)?;
        restore_from_snapshot(&mut cfg, snap.as_ref()).map_err(|e| {
            OpenError(format!(
                "cannot restore the raft log in {}: {e}",
                wal_dir.display()
            ))
        })?;
        if let Some(m) = &snap
            && replay.snapshot.is_none_or(|s| s.index < m.index)
        {
            // The WAL must know the log restarts after the snapshot (a crash came between the
            // metadata file and the WAL's marker).
            wal.append_wait(vec![Record::Snapshot(SnapshotMark {
                index: m.index,
                term: m.term,
            })])
            .map_err(|e| OpenError(format!("cannot write the WAL snapshot marker: {e}")))?;
        }
        if opts.cluster.force_new_cluster && !fresh {
            cluster::force_new_cluster(&opts, &mut membership, &mut store, &mut cfg)?;
        }
        cfg.snapshots = SnapshotPolicy {
            count: opts.snapshot_count,
            catch_up: snapshot::catch_up_entries(),
            max_snapshots: opts.max_snapshots,
            max_wals: opts.max_wals,
            dir: Some(snaps.clone()),
        };
        // The configuration raft starts from is the applied one (the members bucket); it
        // supersedes the snapshot's, which may be older.
        let joining = opts.cluster.join_existing && applied == 0 && cfg.entries.is_empty();
        let (voters, learners) = membership.conf(joining.then_some(opts.member_id));
        cfg.voters = voters.clone();
        cfg.conf_state = Some(ringkv_engine::RaftConfState::from((voters, learners)));
        // With a snapshot, an installed backend may legitimately be ahead of the log.
        if let Some(last) = cfg.entries.last()
            && last.index < applied
            && cfg.snapshot_index == 0
        {
            return Err(OpenError(format!(
                "the backend's consistent index {applied} is past the WAL's last entry {} \
                 (WAL in {} lost entries the backend applied)",
                last.index,
                wal_dir.display()
            )));
        }
        let revision = store.current_revision();
        let file_bytes = store.backend().stats().map_or(0, |s| s.file_bytes);
        let peers = PeerTransport::new(PeerConfig {
            cluster_id: opts.cluster_id,
            member_id: opts.member_id,
        });
        if let Some(tls) = &opts.cluster.peer_tls {
            peers.set_tls(tls.clone(), opts.cluster.peer_listen_tls);
        }
        let inner = Arc::new(Inner {
            wal_lock: Mutex::new(Some(wal_lock)),
            store: RwLock::new(store),
            vfs: vfs.clone(),
            snap_dir: snaps,
            durable_index: AtomicU64::new(durable_index),
            wal: Arc::new(wal),
            raft: OnceLock::new(),
            waiters: Mutex::new(HashMap::default()),
            rejects: RejectSink::leak(),
            next_request_id: AtomicU64::new(
                ((opts.member_id & 0xffff) << 48) | ((now_ms() & 0xff_ffff_ffff) << 8),
            ),
            lease_ids: Mutex::new(LeaseIdGen::new(opts.member_id, now_ms())),
            alarms: AlarmList::new(alarms),
            ids,
            opts,
            revision: AtomicI64::new(revision),
            file_bytes: AtomicU64::new(file_bytes),
            dirty: AtomicBool::new(false),
            last_commit: Mutex::new(Instant::now()),
            ops_since_commit: AtomicU64::new(0),
            applied_term: AtomicU64::new(0),
            failed: OnceLock::new(),
            stopping: AtomicBool::new(false),
            wal_fsync,
            backend_commit: Mutex::new(Histogram::default()),
            lease_primary: AtomicBool::new(false),
            members: RwLock::new(membership),
            peers,
            self_removed: AtomicBool::new(false),
            attrs_published: AtomicBool::new(false),
            last_publish: Mutex::new(Instant::now() - Duration::from_secs(10)),
            read_gate: Arc::new(ReadGate::default()),
            stages: ProposalStages::default(),
            leader_channel: Default::default(),
            live_copies: Default::default(),
        });
        *inner.rejects.0.write() = Arc::downgrade(&inner);
        let applier = Applier {
            inner: inner.clone(),
            term: 0,
            outcomes: Vec::new(),
            replies: Vec::new(),
            wake: Default::default(),
        };
        let raft = RaftNode::start(cfg, inner.wal.clone(), inner.peers.clone(), applier)
            .map_err(|e| OpenError(format!("cannot start raft: {e}")))?;
        let _ = inner.raft.set(raft.clone());
        cluster::start_peers(&inner, raft)?;
        let hk = {
            let inner = inner.clone();
            std::thread::Builder::new()
                .name("ringkv-housekeeping".into())
                .spawn(move || housekeeping(inner))
                .map_err(|e| OpenError(format!("cannot spawn housekeeping: {e}")))?
        };
        Ok(RaftBackedNode {
            inner,
            threads: Arc::new(Mutex::new(vec![hk])),
        })
    }

    /// Waits until a leader is known, this member's lessor is primary when it leads, and
    /// apply has caught up with the log (one ReadIndex round: a restarted member has then
    /// applied every entry the WAL replayed, so even serializable reads see them).
    pub async fn wait_leader(&self, limit: Duration) -> bool {
        let start = Instant::now();
        while start.elapsed() < limit {
            let leader = self.inner.raft().progress().leader();
            if leader != 0
                && (leader != self.inner.ids.member_id
                    || self.inner.lease_primary.load(Ordering::Acquire))
            {
                let left = limit.saturating_sub(start.elapsed());
                let caught_up = matches!(
                    tokio::time::timeout(left, self.linearize()).await,
                    Ok(Ok(()))
                );
                // Like etcd, serve clients once this member's name and client URLs are
                // published (other members' lists show it "started" from then on).
                while caught_up && start.elapsed() < limit && !self.published() {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                return caught_up;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        false
    }

    /// Whether this member's attributes are applied (or it is not in the list yet).
    fn published(&self) -> bool {
        let me = self.inner.ids.member_id;
        self.inner.attrs_published.load(Ordering::Acquire)
            || !self.inner.members.read().members.contains_key(&me)
    }

    /// Stops raft, commits the backend and closes the WAL. Requests after this fail with
    /// `Stopped`. Returns the first failure the node saw, if any.
    pub fn close(&self) -> Result<(), String> {
        self.inner.stopping.store(true, Ordering::Release);
        for t in std::mem::take(&mut *self.threads.lock()) {
            let _ = t.join();
        }
        self.inner.peers.stop();
        self.inner.raft().shutdown();
        {
            let mut store = self.inner.store.write();
            self.inner.dirty.store(true, Ordering::Release);
            self.inner.commit_locked(&mut store);
        }
        // Waiters of proposals that will never apply now.
        self.inner.waiters.lock().clear();
        let wal = self.inner.wal.close().map_err(|e| e.to_string());
        // The data directory may be opened again (by this process too) from here on.
        drop(self.inner.wal_lock.lock().take());
        match self.inner.failed.get() {
            Some(why) => Err(why.clone()),
            None => wal,
        }
    }

    /// Proposes `req` and waits for its outcome. One oneshot per proposal carries every ending:
    /// apply's result, raft's rejection (`reject_waiter`) and etcd's request timeout, which the
    /// housekeeping sweep sends (`Inner::expire_waiters`), so no timer is armed per request.
    ///
    /// Not an `async fn`: the request is encoded and proposed when this is called, so the
    /// returned future does not hold the `InternalRaftRequest` (a few KiB of optional fields)
    /// that every waiting front-end call would otherwise carry.
    fn propose(
        &self,
        mut req: InternalRaftRequest,
    ) -> impl std::future::Future<Output = NodeResult<Applied>> + Send + '_ {
        self.propose_encoded(move |id| {
            req.header = Some(RequestHeader {
                id,
                ..Default::default()
            });
            req.encode_to_vec()
        })
    }

    /// [`RaftBackedNode::propose`] of a put, encoded without building the
    /// `InternalRaftRequest` ([`encode_put`]).
    fn propose_put(
        &self,
        put: PutRequest,
    ) -> impl std::future::Future<Output = NodeResult<Applied>> + Send + '_ {
        self.propose_encoded(move |id| encode_put(id, &put))
    }

    /// Proposes what `encode` makes of the request ID (an `InternalRaftRequest` with that ID
    /// in its header) and returns the wait for its outcome. The proposal is made now, not
    /// when the future is first polled.
    fn propose_encoded(
        &self,
        encode: impl FnOnce(u64) -> Vec<u8>,
    ) -> impl std::future::Future<Output = NodeResult<Applied>> + Send + '_ {
        let submitted = self.submit(encode);
        async move {
            let (mut guard, rx) = submitted?;
            await_waiter(&mut guard, rx).await
        }
    }

    /// The synchronous half of [`RaftBackedNode::propose_encoded`]: registers the waiter and
    /// proposes.
    fn submit(
        &self,
        encode: impl FnOnce(u64) -> Vec<u8>,
    ) -> NodeResult<(WaiterGuard<'_>, oneshot::Receiver<replies::Outcome>)> {
        let inner = &*self.inner;
        inner.check_failed()?;
        let (guard, rx) = inner.register_waiter(replies::ReplyQueue::current());
        let id = guard.id;
        let data = encode(id);
        // Drives an idle core on this thread (engine `RaftNode::propose_driving`): at low load
        // the waiter is completed before the caller awaits, with no thread hand-off.
        inner
            .raft()
            .propose_driving(data, Some(reject_waiter(inner, id)));
        Ok((guard, rx))
    }

    /// Waits for a linearizable read point (a ReadIndex round gathered by the read gate) and
    /// for apply to reach it.
    async fn linearize(&self) -> NodeResult<()> {
        self.inner.check_failed()?;
        let timeout = self.inner.opts.request_timeout();
        match self
            .inner
            .read_gate
            .wait(self.inner.raft(), timeout)
            .await?
        {
            Err(e) => Err(raft_err(e)),
            Ok(_) => Ok(()),
        }
    }

    /// etcd's quota check before proposing a request that may grow the backend: NOSPACE when
    /// the alarm is raised, or when the backend plus the request would pass the quota (then
    /// the alarm is raised through raft first, as etcd's quota layer does, so a following
    /// `alarm list` sees it).
    async fn check_quota(&self, cost: usize) -> NodeResult<()> {
        if self.inner.nospace() {
            return Err(EtcdError::NoSpace);
        }
        if let Some(quota) = self.inner.opts.quota_backend_bytes {
            let size = self.inner.file_bytes.load(Ordering::Acquire);
            if size + cost as u64 > quota {
                tracing::warn!(size, quota, "backend quota exceeded: raising NOSPACE");
                // Boxed: a rare path, kept out of the size of every put's future.
                Box::pin(self.propose(InternalRaftRequest {
                    alarm: Some(AlarmRequest {
                        action: AlarmAction::Activate as i32,
                        member_id: self.inner.ids.member_id,
                        alarm: AlarmType::Nospace as i32,
                    }),
                    ..Default::default()
                }))
                .await?;
                return Err(EtcdError::NoSpace);
            }
        }
        Ok(())
    }

    /// The node's data directory.
    pub fn data_dir(&self) -> &Path {
        &self.inner.opts.data_dir
    }
}

fn unexpected(what: &str) -> EtcdError {
    EtcdError::Internal(format!("ringkv: unexpected apply result for {what}"))
}

/// Background duties of the node; one thread, no tokio. See the module doc.
fn housekeeping(inner: Arc<Inner>) {
    let mut last_lease_check = Instant::now();
    let mut last_progress = Instant::now();
    let mut last_rev_compact = Instant::now();
    // Periodic auto-compaction: (when, revision) samples; compact to the newest sample older
    // than the retention.
    let mut samples: VecDeque<(Instant, i64)> = VecDeque::new();
    let mut last_sample = Instant::now() - Duration::from_secs(3600);
    let mut last_sweep = Instant::now();
    while !inner.stopping.load(Ordering::Acquire) {
        std::thread::sleep(HOUSEKEEPING_TICK);
        if last_sweep.elapsed() >= WAITER_SWEEP {
            last_sweep = Instant::now();
            inner.expire_waiters(last_sweep);
        }
        if inner.failed.get().is_some() {
            continue;
        }
        let Some(raft) = inner.raft.get() else {
            continue;
        };
        let leader = raft.progress().leader();
        let is_leader = leader == inner.ids.member_id;
        let now = Instant::now();
        {
            let mut store = inner.store.write();
            // Leadership decides whether this member's lessor runs lease clocks.
            let primary = inner.lease_primary.load(Ordering::Acquire);
            if is_leader && !primary {
                store.lease_promote(now, inner.opts.election_timeout);
                inner.lease_primary.store(true, Ordering::Release);
            } else if !is_leader && primary {
                store.lease_demote();
                inner.lease_primary.store(false, Ordering::Release);
            }
            store.watch_sync();
            if store.compaction_pending()
                && let Err(e) = store.compaction_step()
            {
                inner.fail(format!("physical compaction: {e}"));
                continue;
            }
            if now.duration_since(last_progress) >= inner.opts.progress_notify_interval {
                last_progress = now;
                store.watch_progress_tick();
            }
            // Catches size changes made elsewhere (snapshot install, compaction commits).
            inner.note_file_bytes(&store);
        }
        // The fdatasyncs run without the store lock (shared_writer.rs).
        inner.commit_if_due(false);
        inner.publish_attributes_if_needed();
        if !is_leader {
            continue;
        }
        if now.duration_since(last_lease_check) >= LEASE_CHECK {
            last_lease_check = now;
            let (expired, checkpoints) = {
                let mut store = inner.store.write();
                (
                    store.lease_expired(now, LEASE_REVOKE_BATCH),
                    // Drained either way: the lessor schedules one per renewal of a long lease.
                    store.lease_checkpoints_due(now, LEASE_REVOKE_BATCH),
                )
            };
            if inner.opts.lease_checkpoint && !checkpoints.is_empty() {
                inner.propose_detached(InternalRaftRequest {
                    lease_checkpoint: Some(LeaseCheckpointRequest {
                        checkpoints: checkpoints
                            .into_iter()
                            .map(|(id, remaining_ttl)| LeaseCheckpoint { id, remaining_ttl })
                            .collect(),
                    }),
                    ..Default::default()
                });
            }
            for id in expired {
                inner.propose_detached(InternalRaftRequest {
                    lease_revoke: Some(LeaseRevokeRequest { id }),
                    ..Default::default()
                });
            }
        }
        let (rev, compacted) = {
            let s = inner.store.read();
            (s.current_revision(), s.compact_revision())
        };
        let target = match inner.opts.auto_compaction {
            AutoCompaction::Off => None,
            AutoCompaction::Revision(keep) => {
                if now.duration_since(last_rev_compact) >= REVISION_COMPACT_CHECK {
                    last_rev_compact = now;
                    Some(rev - keep as i64)
                } else {
                    None
                }
            }
            AutoCompaction::Periodic(retention) => {
                // etcd samples the revision every retention/10 (at most hourly).
                let every =
                    (retention / 10).clamp(Duration::from_millis(100), Duration::from_secs(3600));
                if now.duration_since(last_sample) >= every {
                    last_sample = now;
                    samples.push_back((now, rev));
                }
                let mut target = None;
                while let Some(&(t, r)) = samples.front() {
                    if now.duration_since(t) >= retention {
                        target = Some(r);
                        samples.pop_front();
                    } else {
                        break;
                    }
                }
                target
            }
        };
        if let Some(t) = target
            && t > compacted.max(0)
            && t <= rev
        {
            tracing::info!(revision = t, "auto-compaction");
            inner.propose_detached(InternalRaftRequest {
                compaction: Some(CompactionRequest {
                    revision: t,
                    physical: false,
                }),
                ..Default::default()
            });
        }
    }
}

/// Turns a hub response into what the front end sends.
fn to_update(resp: WatchResponse) -> Option<WatchUpdate> {
    let revision = resp.header.as_ref().map_or(0, |h| h.revision);
    if resp.compact_revision != 0 {
        return Some(WatchUpdate::Compacted {
            compact_revision: resp.compact_revision,
        });
    }
    if resp.created || resp.canceled {
        return None;
    }
    if resp.events.is_empty() {
        return Some(WatchUpdate::Progress { revision });
    }
    Some(WatchUpdate::Events {
        revision,
        events: resp.events,
    })
}

/// A watcher's hub stream as the hub sees it: a bounded tokio channel that the watcher's
/// front-end task reads. `try_send` never blocks, so the apply thread and housekeeping hand
/// responses straight to the connection's task: no thread per watcher. Responses travel boxed:
/// the channel allocates its slots in blocks of 32 as soon as it exists, and 32 pointers
/// instead of 32 responses keep an idle watcher at a few hundred bytes.
struct TokioSink(mpsc::Sender<Box<WatchResponse>>);

impl WatchSink for TokioSink {
    fn try_send(&self, resp: WatchResponse) -> Result<(), SinkFull> {
        match self.0.try_send(Box::new(resp)) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(r)) => Err(SinkFull::Full(*r)),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(SinkFull::Closed),
        }
    }
}

/// One watcher's updates: the hub stream's responses turned into [`WatchUpdate`]s. Ends after
/// a cancel or compaction response; dropping it (the front end canceled the watcher or the
/// connection ended) closes the hub stream, so the hub stops matching events for it.
struct HubUpdates {
    inner: Arc<Inner>,
    stream: StreamId,
    rx: mpsc::Receiver<Box<WatchResponse>>,
    ended: bool,
}

impl tokio_stream::Stream for HubUpdates {
    type Item = WatchUpdate;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<WatchUpdate>> {
        use std::task::Poll;
        loop {
            if self.ended {
                return Poll::Ready(None);
            }
            match self.rx.poll_recv(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Ready(Some(resp)) => {
                    if resp.canceled && !resp.created || resp.compact_revision != 0 {
                        self.ended = true;
                    }
                    if let Some(u) = to_update(*resp) {
                        return Poll::Ready(Some(u));
                    }
                }
            }
        }
    }
}

impl Drop for HubUpdates {
    fn drop(&mut self) {
        self.inner.store.write().watch_close_stream(self.stream);
    }
}

impl EtcdNode for RaftBackedNode {
    fn state(&self) -> NodeState {
        let p = self.inner.raft().progress();
        NodeState {
            member_id: self.inner.ids.member_id,
            cluster_id: self.inner.ids.cluster_id,
            leader: p.leader(),
            raft_term: p.term.load(Ordering::Acquire),
            revision: self.inner.revision.load(Ordering::Acquire),
            alarms: self.inner.alarms.snapshot(),
            is_learner: p.is_learner.load(Ordering::Acquire),
        }
    }

    fn metrics(&self) -> NodeMetrics {
        let p = self.inner.raft().progress();
        let stats = self.inner.backend_stats();
        let committed = p.commit.load(Ordering::Acquire);
        let applied = p.applied();
        NodeMetrics {
            leader_changes_seen: p.leader_changes.load(Ordering::Acquire),
            proposals_committed: committed,
            proposals_applied: applied,
            proposals_pending: self.inner.waiters.lock().len() as u64,
            proposals_failed: p.proposals_failed.load(Ordering::Acquire),
            wal_fsync: self.inner.wal_fsync.0.lock().clone(),
            backend_commit: self.inner.backend_commit.lock().clone(),
            proposal_commit: self.inner.stages.commit.snapshot(),
            proposal_apply: self.inner.stages.apply.snapshot(),
            proposal_reply: self.inner.stages.reply.snapshot(),
            db_total_size: stats.map_or(0, |s| s.file_bytes as i64),
            db_total_size_in_use: stats.map_or(0, |s| s.live_bytes as i64),
            quota_backend_bytes: self.inner.opts.quota_backend_bytes.unwrap_or(0) as i64,
            network: self.inner.peers.metrics(),
        }
    }

    async fn range(&self, _: &Caller, req: RangeRequest) -> NodeResult<RangeResponse> {
        if !req.serializable {
            // Boxed: the wait (a read round with its timeout) is the largest state of a
            // range, and the front end holds a range's future per in-flight stream.
            Box::pin(self.linearize()).await?;
        } else {
            self.inner.check_failed()?;
        }
        self.inner.store.read().range(&req).map_err(mvcc_err)
    }

    async fn put(&self, _: &Caller, req: PutRequest) -> NodeResult<PutResponse> {
        self.check_quota(req.encoded_len()).await?;
        match self.propose_put(req).await? {
            Applied::Put(r) => Ok(r),
            _ => Err(unexpected("put")),
        }
    }

    async fn delete_range(
        &self,
        _: &Caller,
        req: DeleteRangeRequest,
    ) -> NodeResult<DeleteRangeResponse> {
        match self
            .propose(InternalRaftRequest {
                delete_range: Some(req),
                ..Default::default()
            })
            .await?
        {
            Applied::Delete(r) => Ok(r),
            _ => Err(unexpected("delete")),
        }
    }

    async fn txn(&self, _: &Caller, req: TxnRequest) -> NodeResult<TxnResponse> {
        if ringkv_engine::is_txn_read_only(&req) {
            // etcd serves read-only txns like ranges: linearizable read, no proposal.
            self.linearize().await?;
            let mut store = self.inner.store.write();
            return store.txn(&req).map_err(mvcc_err);
        }
        self.check_quota(req.encoded_len()).await?;
        match self
            .propose(InternalRaftRequest {
                txn: Some(req),
                ..Default::default()
            })
            .await?
        {
            Applied::Txn(r) => Ok(r),
            _ => Err(unexpected("txn")),
        }
    }

    async fn compact(&self, _: &Caller, req: CompactionRequest) -> NodeResult<CompactionResponse> {
        match self
            .propose(InternalRaftRequest {
                compaction: Some(req),
                ..Default::default()
            })
            .await?
        {
            Applied::Compact(r) => Ok(r),
            _ => Err(unexpected("compact")),
        }
    }

    async fn watch(&self, _: &Caller, spec: WatchSpec) -> NodeResult<Watcher> {
        self.inner.check_failed()?;
        let (hub_tx, hub_rx) = mpsc::channel(WATCH_STREAM_CAPACITY);
        let mut filters = Vec::new();
        if spec.no_put {
            filters.push(FilterType::Noput as i32);
        }
        if spec.no_delete {
            filters.push(FilterType::Nodelete as i32);
        }
        let create = WatchCreateRequest {
            key: spec.key.clone(),
            range_end: spec.range_end.clone(),
            start_revision: spec.start_revision,
            progress_notify: spec.progress_notify,
            filters,
            prev_kv: spec.prev_kv,
            watch_id: 0,
            fragment: false,
        };
        let (stream, revision) = {
            let mut store = self.inner.store.write();
            let stream = store.watch_open_stream(TokioSink(hub_tx));
            store.watch_create(stream, &create);
            (stream, store.current_revision())
        };
        Ok(Watcher {
            revision,
            updates: Box::pin(HubUpdates {
                inner: self.inner.clone(),
                stream,
                rx: hub_rx,
                ended: false,
            }),
        })
    }

    async fn lease_grant(
        &self,
        _: &Caller,
        mut req: LeaseGrantRequest,
    ) -> NodeResult<LeaseGrantResponse> {
        self.check_quota(req.encoded_len()).await?;
        if req.id == 0 {
            req.id = self.inner.lease_ids.lock().next();
        }
        match self
            .propose(InternalRaftRequest {
                lease_grant: Some(req),
                ..Default::default()
            })
            .await?
        {
            Applied::LeaseGrant(r) => Ok(r),
            _ => Err(unexpected("lease grant")),
        }
    }

    async fn lease_revoke(&self, _: &Caller, id: i64) -> NodeResult<LeaseRevokeResponse> {
        match self
            .propose(InternalRaftRequest {
                lease_revoke: Some(LeaseRevokeRequest { id }),
                ..Default::default()
            })
            .await?
        {
            Applied::LeaseRevoke(r) => Ok(r),
            _ => Err(unexpected("lease revoke")),
        }
    }

    async fn lease_keep_alive(&self, _: &Caller, id: i64) -> NodeResult<LeaseKeepAliveResponse> {
        self.inner.check_failed()?;
        // Renewal happens on the leader's lessor (not through raft), like etcd; a follower
        // forwards it there.
        if let Some(ch) = self.leader_channel()? {
            return self.forward_keep_alive(ch, id).await;
        }
        self.inner
            .store
            .write()
            .lease_keep_alive(id, Instant::now())
            .map_err(mvcc_err)
    }

    async fn lease_time_to_live(
        &self,
        _: &Caller,
        req: LeaseTimeToLiveRequest,
    ) -> NodeResult<LeaseTimeToLiveResponse> {
        self.inner.check_failed()?;
        // Only the leader's lessor knows the remaining TTL.
        if let Some(ch) = self.leader_channel()? {
            return self.forward_time_to_live(ch, req).await;
        }
        Ok(self
            .inner
            .store
            .read()
            .lease_time_to_live(req.id, req.keys, Instant::now()))
    }

    async fn lease_leases(&self, _: &Caller) -> NodeResult<LeaseLeasesResponse> {
        self.inner.check_failed()?;
        Ok(self.inner.store.read().lease_leases())
    }

    async fn member_add(&self, _: &Caller, req: MemberAddRequest) -> NodeResult<MemberAddResponse> {
        // The strict checks need the leader's view of the voters it hears from; a follower
        // deciding alone would accept what the leader refuses.
        if self.inner.opts.cluster.strict_reconfig
            && let Some(ch) = self.leader_channel()?
        {
            return self.forward_add(ch, req).await;
        }
        self.add_member(req).await
    }

    async fn member_remove(&self, _: &Caller, id: u64) -> NodeResult<MemberRemoveResponse> {
        if self.inner.opts.cluster.strict_reconfig
            && let Some(ch) = self.leader_channel()?
        {
            return self.forward_remove(ch, id).await;
        }
        self.remove_member(id).await
    }

    async fn member_update(
        &self,
        _: &Caller,
        req: MemberUpdateRequest,
    ) -> NodeResult<MemberUpdateResponse> {
        self.update_member(req).await
    }

    async fn member_list(&self, _: &Caller) -> NodeResult<MemberListResponse> {
        Ok(MemberListResponse {
            header: self.inner.header(),
            members: self.inner.members.read().to_pb(),
        })
    }

    async fn member_promote(&self, _: &Caller, id: u64) -> NodeResult<MemberPromoteResponse> {
        // Only the leader knows how far the learner got.
        if let Some(ch) = self.leader_channel()? {
            return self.forward_promote(ch, id).await;
        }
        self.promote_member(id).await
    }

    async fn alarm(&self, _: &Caller, req: AlarmRequest) -> NodeResult<AlarmResponse> {
        let action = AlarmAction::try_from(req.action).unwrap_or(AlarmAction::Get);
        if action == AlarmAction::Get {
            self.inner.check_failed()?;
            let alarms = self.inner.alarms.read();
            return Ok(AlarmResponse {
                header: None,
                alarms: alarms
                    .iter()
                    .filter(|a| req.member_id == 0 || a.member_id == req.member_id)
                    .copied()
                    .collect(),
            });
        }
        match self
            .propose(InternalRaftRequest {
                alarm: Some(req),
                ..Default::default()
            })
            .await?
        {
            Applied::Alarm(r) => Ok(r),
            _ => Err(unexpected("alarm")),
        }
    }

    async fn status(&self, _: &Caller) -> NodeResult<StatusResponse> {
        self.inner.check_failed()?;
        let p = self.inner.raft().progress();
        let stats = self.inner.backend_stats();
        Ok(StatusResponse {
            header: self.inner.header(),
            db_size: stats.map_or(0, |s| s.file_bytes as i64),
            db_size_in_use: stats.map_or(0, |s| s.live_bytes as i64),
            leader: p.leader(),
            raft_index: p.commit.load(Ordering::Acquire),
            raft_term: p.term.load(Ordering::Acquire),
            raft_applied_index: p.applied(),
            is_learner: p.is_learner.load(Ordering::Acquire),
            ..Default::default()
        })
    }

    async fn defragment(&self, _: &Caller) -> NodeResult<()> {
        self.inner.check_failed()?;
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            // Each commit moves a bounded number of pages down and a later one trims the
            // freed tail: commit until the file stops shrinking.
            let mut store = inner.store.write();
            let mut unchanged = 0;
            for _ in 0..512 {
                let before = store.backend().stats();
                inner.dirty.store(true, Ordering::Release);
                inner.commit_locked(&mut store);
                if inner.failed.get().is_some() {
                    return Err(EtcdError::Internal(inner.failure_text()));
                }
                let after = store.backend().stats();
                // Freed pages go pending, then free, then the tail is trimmed: stop only
                // when none of these moved for a few commits.
                let shape = |s: &Option<ringkv_engine::BackendStats>| {
                    s.map(|s| (s.page_count, s.file_bytes, s.free_pages, s.pending_pages))
                };
                if shape(&after) == shape(&before) {
                    unchanged += 1;
                    if unchanged >= 3 {
                        break;
                    }
                } else {
                    unchanged = 0;
                }
            }
            Ok(())
        })
        .await
        .map_err(|e| EtcdError::Internal(format!("defragment: {e}")))?
    }

    async fn hash(&self, _: &Caller) -> NodeResult<HashResponse> {
        self.inner.check_failed()?;
        self.inner.store.read().hash().map_err(mvcc_err)
    }

    async fn hash_kv(&self, _: &Caller, revision: i64) -> NodeResult<HashKvResponse> {
        self.inner.check_failed()?;
        self.inner.store.read().hash_kv(revision).map_err(mvcc_err)
    }

    async fn snapshot(&self, _: &Caller) -> NodeResult<(u64, BoxStream<NodeResult<Bytes>>)> {
        self.inner.check_failed()?;
        let inner = self.inner.clone();
        // A consistent copy: commit and pin that commit under the store lock, then stream
        // the pinned pages while writes go on.
        let copy = tokio::task::spawn_blocking(move || inner.copy_backend_at())
            .await
            .map_err(|e| EtcdError::Internal(format!("snapshot: {e}")))??;
        let size = copy.len;
        let mut data = copy.data;
        let (tx, rx) = mpsc::channel::<NodeResult<Bytes>>(4);
        let rt = tokio::runtime::Handle::current();
        tokio::task::spawn_blocking(move || {
            // The copy pins a commit (its pages are not reused meanwhile): a client that stops
            // reading for SNAPSHOT_SEND_TIMEOUT loses the stream, and the pin goes.
            let send = |item| {
                rt.block_on(tokio::time::timeout(SNAPSHOT_SEND_TIMEOUT, tx.send(item)))
                    .is_ok_and(|r| r.is_ok())
            };
            let mut buf = vec![0u8; SNAPSHOT_READ_CHUNK];
            loop {
                let n = match data.read(&mut buf) {
                    Ok(0) => return,
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        send(Err(EtcdError::Internal(format!("snapshot: {e}"))));
                        return;
                    }
                };
                if !send(Ok(Bytes::copy_from_slice(&buf[..n]))) {
                    return;
                }
            }
        });
        Ok((
            size,
            Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)),
        ))
    }

    async fn move_leader(&self, _: &Caller, target: u64) -> NodeResult<MoveLeaderResponse> {
        self.transfer_leadership(target).await
    }

    async fn auth_status(&self, _: &Caller) -> NodeResult<AuthStatusResponse> {
        Ok(AuthStatusResponse {
            header: self.inner.header(),
            enabled: false,
            auth_revision: 1,
        })
    }
}

//! The raft core thread and the apply thread. See the module doc of `raft_node` for the picture
//! and the invariants.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, unbounded};

use raft::eraftpb::{ConfChange, ConfChangeV2, ConfState, Entry, EntryType, HardState, Snapshot};
use raft::prelude::{Message, MessageType};
use raft::{RawNode, SnapshotStatus, StateRole};

use super::batch::{RequestCounts, batch_len, encode_batch, requests_in};
use super::inbox::{InboxReceiver, InboxSender, InboxWaiter, inbox};
use super::log_store::LogStore;
use super::snap::{SnapDir, SnapshotMeta};
use super::transport::Transport;
use super::{NodeProgress, SharedProgress};

/// Durable storage of the raft log: the WAL, seen from raft.
///
/// Failure leaves the log in an unknown state: the node stops and never retries (an fdatasync
/// error means the kernel may have dropped the data).
pub trait LogSink: Clone + Send + 'static {
    /// Appends `entries` and, when given, `hard_state`. `done` runs once the fdatasync that covers
    /// them returned, with its result. Calls complete in the order they were made.
    fn persist(
        &self,
        entries: Vec<Entry>,
        hard_state: Option<HardState>,
        done: Box<dyn FnOnce(io::Result<()>) + Send>,
    );

    /// Records that a snapshot at (`index`, `term`) exists, in order with `persist` calls made
    /// before and after (the WAL's snapshot marker: entries after it may start at
    /// `index + 1`). `done` runs once it is durable.
    fn persist_snapshot_mark(
        &self,
        index: u64,
        term: u64,
        done: Box<dyn FnOnce(io::Result<()>) + Send>,
    ) {
        let _ = (index, term);
        done(Ok(()))
    }

    /// Drops durable log entries below `index` where that frees space (whole WAL segments),
    /// keeping at least `keep` segments in all (etcd's `--max-wals`; 0: drop nothing). Called
    /// only once a snapshot at or above `index` is durable.
    fn purge_below(&self, index: u64, keep: usize) -> io::Result<()> {
        let _ = (index, keep);
        Ok(())
    }
}

/// What committed entries are applied to (MVCC, leases, membership, …). Runs on the apply thread.
pub trait StateMachine: Send + 'static {
    /// Applies one committed normal entry. `index` strictly increases across calls; entries at or
    /// below the applied index given at startup are never passed again. With
    /// [`NodeConfig::batch_bytes`] set, `data` may be a batch entry carrying several proposals
    /// (`is_batch`, `split_batch`), to be applied in order, each as its own request.
    fn apply(&mut self, index: u64, term: u64, data: &[u8]);

    /// Applies one committed normal entry like [`StateMachine::apply`], but only if that waits
    /// for no lock another thread may hold for long (a store lock taken by a snapshot copy or
    /// a compaction); returns `false`, having applied nothing, otherwise. The raft core of a
    /// member with peers applies small batches through this alone: a core waiting for a lock
    /// sends no heartbeats. The default cannot tell and refuses.
    fn try_apply(&mut self, index: u64, term: u64, data: &[u8]) -> bool {
        let _ = (index, term, data);
        false
    }

    /// Called after a batch of entries was applied; `last_index` is the last one in the batch.
    fn applied_batch(&mut self, last_index: u64) {
        let _ = last_index;
    }

    /// Applies one committed membership change (raft-rs already applied it to its own
    /// configuration). `cc.context` is what the proposer gave [`RaftNode::propose_conf_change`]
    /// (etcd: the member's attributes). Same index rules as [`StateMachine::apply`].
    fn apply_conf_change(&mut self, index: u64, term: u64, cc: &ConfChangeV2) {
        let _ = (index, term, cc);
    }

    /// The highest applied index whose effects are durable (the backend's committed
    /// consistent index). Snapshots are taken at this index; 0 means never.
    fn durable_index(&self) -> u64 {
        0
    }

    /// Replaces the state with the snapshot at `meta.index` received from the leader (the
    /// backend file the peer transport left in place). Returns the new applied index (at least
    /// `meta.index`; entries at or below it are not passed again). An error stops the node.
    fn restore(&mut self, meta: &SnapshotMeta) -> Result<u64, String> {
        Err(format!(
            "this state machine cannot install the snapshot at index {}",
            meta.index
        ))
    }
}

/// When and where raft snapshots are taken (etcd's `--snapshot-count`, `--max-snapshots`).
#[derive(Clone, Debug)]
pub struct SnapshotPolicy {
    /// Take a snapshot once the durable applied index is this far past the last one. 0: never.
    pub count: u64,
    /// Entries kept in the in-memory log below a snapshot, so a slightly lagging follower
    /// catches up from the log instead of a snapshot (etcd's `SnapshotCatchUpEntries`).
    pub catch_up: u64,
    /// `.snap` files kept (0: all).
    pub max_snapshots: usize,
    /// WAL segments kept even when a snapshot covers them (etcd's `--max-wals`; 0: all).
    pub max_wals: usize,
    /// The snapshot directory; `None` disables snapshots.
    pub dir: Option<SnapDir>,
}

impl Default for SnapshotPolicy {
    fn default() -> Self {
        SnapshotPolicy {
            count: 100_000,
            catch_up: 5_000,
            max_snapshots: 5,
            max_wals: 5,
            dir: None,
        }
    }
}

/// Called with the read index (the commit index confirmed by a quorum) once the state machine
/// has applied at least that far, or with an error.
pub type ReadIndexDone = Box<dyn FnOnce(Result<u64, RaftNodeError>) + Send>;

/// Errors a caller of the node sees.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RaftNodeError {
    /// No leader is known, so the request cannot be ordered (etcd: "etcdserver: no leader").
    #[error("no leader")]
    NoLeader,
    /// raft-rs refused the proposal (no leader, or a leadership transfer is in progress).
    #[error("proposal dropped")]
    ProposalDropped,
    /// The node is stopping or stopped.
    #[error("node stopped")]
    Stopped,
    /// The WAL failed; the node stopped itself and refuses everything.
    #[error("log persistence failed: {0}")]
    PersistFailed(String),
    /// raft-rs refused the restored state or a request.
    #[error("raft: {0}")]
    Raft(String),
}

/// How to start a member.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// This member's raft ID (non-zero).
    pub id: u64,
    /// Voters of a new cluster (ignored when `hard_state` shows an existing log).
    pub voters: Vec<u64>,
    /// One tick; etcd's `--heartbeat-interval` (100 ms).
    pub tick: Duration,
    /// `--election-timeout` / `--heartbeat-interval` (etcd defaults: 10 ticks).
    pub election_ticks: usize,
    pub heartbeat_ticks: usize,
    /// The state machine's durable applied index (the backend's consistent index).
    pub applied: u64,
    /// Restored from the WAL: the last HardState, the snapshot the log starts after, the entries
    /// after it, and the membership at that snapshot.
    pub hard_state: HardState,
    pub snapshot_index: u64,
    pub snapshot_term: u64,
    pub conf_state: Option<ConfState>,
    pub entries: Vec<Entry>,
    /// Snapshots and log compaction.
    pub snapshots: SnapshotPolicy,
    /// Where the apply work runs and which CPUs the threads are pinned to.
    pub threads: ThreadOptions,
    /// Proposals that reach the core in one loop turn go into one batch entry of at most this
    /// many bytes (batch.rs; a proposal larger than this goes alone). 0: one entry per
    /// proposal. Must stay below the log sink's largest record (the WAL's: half a segment).
    /// The snapshot trigger and the catch-up compaction count the requests in batch entries.
    pub batch_bytes: usize,
}

/// Thread placement of a member (`--cpu-layout`, and applying on the core thread).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ThreadOptions {
    /// A batch of committed entries with at most this many entries is applied on the raft core
    /// thread itself when the apply thread is idle (nothing queued for it, its state free) and
    /// the member is alone in its cluster (a single voter, no learners; with peers the core
    /// must keep heartbeating while an apply waits for the store): no hand-off to the apply
    /// thread and back. Larger batches, and every batch while the
    /// apply thread has work, go to the apply thread, so apply still overlaps raft and the WAL
    /// under load. 0: always hand off.
    pub inline_apply_max: usize,
    /// A proposer that finds the core thread parked runs the core itself
    /// ([`RaftNode::propose_driving`]) on a member alone in its cluster. `false` (default):
    /// it always wakes the core thread. Off by default: at one client it cut context
    /// switches per put from ~5 to ~3.5 but not the latency (BENCHMARKS.md "Front end,
    /// session 5").
    pub drive: bool,
    /// A peer transport's reader thread that hands in messages while the core thread is
    /// parked runs the core itself ([`RaftNode::step_driving`]), with or without peers: a
    /// follower's append is written, fdatasynced and acknowledged, and an acknowledgement
    /// reaching the leader commits, applies (`try_apply`) and completes its waiter, without a
    /// wake-up of the core thread. Off by default (`--cpu-layout peer-drive=on`): at one
    /// client it cut p50 to ~0.9× and CPU per put to ~0.85×, but at 1000 clients it cost a
    /// third of the throughput (BENCHMARKS.md, cluster6).
    pub peer_drive: bool,
    /// With `peer_drive`: only while this member leads (`--cpu-layout peer-drive=leader`).
    /// The leader's readers then commit, apply and answer an acknowledged write themselves,
    /// while a follower's reader never blocks in a WAL write and fdatasync of its own (which
    /// stops it reading the next appends).
    pub peer_drive_leader_only: bool,
    /// Pin the raft core thread to this CPU.
    pub raft_cpu: Option<usize>,
    /// Pin the apply thread to this CPU.
    pub apply_cpu: Option<usize>,
    /// Pin the WAL's flush thread to this CPU. Not used by the raft node (it does not open
    /// the WAL); whoever opens the WAL passes it on as `WalOptions::wal_cpu`.
    pub wal_cpu: Option<usize>,
}

impl Default for ThreadOptions {
    fn default() -> Self {
        ThreadOptions {
            inline_apply_max: 32,
            drive: false,
            peer_drive: false,
            peer_drive_leader_only: false,
            raft_cpu: None,
            apply_cpu: None,
            wal_cpu: None,
        }
    }
}

impl NodeConfig {
    /// A fresh single-voter member with etcd's default timing.
    pub fn single(id: u64) -> NodeConfig {
        NodeConfig {
            id,
            voters: vec![id],
            tick: Duration::from_millis(100),
            election_ticks: 10,
            heartbeat_ticks: 1,
            applied: 0,
            hard_state: HardState::default(),
            snapshot_index: 0,
            snapshot_term: 0,
            conf_state: None,
            entries: Vec::new(),
            snapshots: SnapshotPolicy::default(),
            threads: ThreadOptions::default(),
            batch_bytes: 0,
        }
    }
}

/// Called when raft refuses a proposal (no leader, stopped, WAL failed).
type RejectFn = Box<dyn FnOnce(RaftNodeError) + Send>;

enum CoreMsg {
    Propose {
        data: Vec<u8>,
        rejected: Option<RejectFn>,
    },
    ReadIndex(ReadIndexDone),
    Persisted {
        number: u64,
        result: io::Result<()>,
    },
    Applied(u64),
    /// A message from a peer.
    Step(Message),
    Unreachable(u64),
    SnapshotStatus {
        to: u64,
        failed: bool,
    },
    ProposeConfChange {
        cc: ConfChangeV2,
        rejected: Option<Box<dyn FnOnce(RaftNodeError) + Send>>,
    },
    TransferLeader(u64),
    PeerProgress(Box<dyn FnOnce(Vec<PeerProgress>) + Send>),
    /// The state machine's durable applied index moved (from the apply thread).
    Durable(u64),
    /// The snapshot thread made a snapshot durable (metadata file and WAL marker).
    SnapshotSaved(SnapshotMeta),
    /// A failure outside the core (snapshot thread, state machine restore): stop.
    Fatal(String),
    /// Tests: a raft message from a (pretend) peer.
    #[cfg(test)]
    TestStep(Message),
    Shutdown,
}

/// A conf change that reached the leader while its previous one is not applied yet. raft-rs
/// would turn it into an empty entry (its "possible unapplied conf change" check) and the
/// proposer would wait for its request timeout; the core holds it instead and hands it to
/// raft-rs once the previous one applied (`Core::release_held_conf`), in arrival order.
enum HeldConf {
    /// Proposed on this member (`RaftNode::propose_conf_change`).
    Local {
        cc: ConfChangeV2,
        rejected: Option<Box<dyn FnOnce(RaftNodeError) + Send>>,
    },
    /// A follower's `MsgPropose` carrying a conf change, forwarded to this leader.
    Forwarded(Message),
}

/// The leader's view of one member's replication, for MemberPromote and status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerProgress {
    pub id: u64,
    /// Highest log index known to be replicated on the member.
    pub matched: u64,
    pub is_learner: bool,
    /// The leader itself, or a member a message came from within the last election timeout.
    pub recent_active: bool,
}

/// What the apply thread receives, in apply order.
enum ApplyMsg {
    Entries(Vec<Entry>),
    /// Install a received snapshot before the entries after it.
    Restore(SnapshotMeta),
}

/// Work for the snapshot thread.
struct SnapJob {
    meta: SnapshotMeta,
    /// WAL entries below this may be purged once the snapshot is durable.
    purge_below: u64,
}

/// Handle to a running member. Cheap to clone; every method is non-blocking.
#[derive(Clone)]
pub struct RaftNode {
    tx: InboxSender<CoreMsg>,
    /// The core, for a proposing thread to drive while the core thread is parked.
    driver: Arc<dyn Drive>,
    progress: SharedProgress,
    threads: Arc<parking_lot::Mutex<Vec<JoinHandle<()>>>>,
}

impl std::fmt::Debug for RaftNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaftNode")
            .field("progress", &self.progress)
            .finish()
    }
}

impl RaftNode {
    /// Starts the raft core and apply threads. Messages to peers leave through `transport`.
    pub fn start<L: LogSink, T: Transport, S: StateMachine>(
        cfg: NodeConfig,
        sink: L,
        transport: T,
        sm: S,
    ) -> Result<RaftNode, RaftNodeError> {
        let (tx, rx) = inbox();
        let (apply_tx, apply_rx) = unbounded::<ApplyMsg>();
        let progress: SharedProgress = Arc::new(NodeProgress::default());
        progress.applied.store(cfg.applied, Ordering::Release);
        let applying = Arc::new(Applying {
            state: parking_lot::Mutex::new(ApplyState {
                durable_sent: sm.durable_index(),
                sm,
                progress: progress.clone(),
                applied: cfg.applied,
                reported: cfg.applied,
            }),
            queued: AtomicUsize::new(0),
        });
        progress
            .snapshot_index
            .store(cfg.snapshot_index, Ordering::Release);
        let mut threads = Vec::new();
        let snap_tx = match &cfg.snapshots.dir {
            Some(dir) if cfg.snapshots.count > 0 => {
                let (snap_tx, snap_rx) = unbounded::<SnapJob>();
                let (dir, sink, tx) = (dir.clone(), sink.clone(), tx.clone());
                let keep = (cfg.snapshots.max_snapshots, cfg.snapshots.max_wals);
                threads.push(
                    std::thread::Builder::new()
                        .name("ringkv-snap".into())
                        .spawn(move || snapshot_loop(dir, keep, sink, snap_rx, tx))
                        .map_err(|e| RaftNodeError::Raft(format!("spawn snapshot thread: {e}")))?,
                );
                Some(snap_tx)
            }
            _ => None,
        };
        progress
            .log_first_index
            .store(cfg.snapshot_index + 1, Ordering::Release);
        let mut core = Core::new(
            &cfg,
            sink,
            Box::new(transport),
            tx.clone(),
            apply_tx,
            applying.clone(),
            progress.clone(),
        )?;
        core.snap_tx = snap_tx;
        let raft_cpu = cfg.threads.raft_cpu;
        let drive = cfg.threads.drive;
        let peer_drive = cfg.threads.peer_drive;
        let peer_drive_leader_only = cfg.threads.peer_drive_leader_only;
        let waiter = rx.waiter();
        let next_tick = Instant::now() + core.tick;
        let driven = Arc::new(Driven {
            runner: parking_lot::Mutex::new(Some(Runner {
                core,
                rx,
                batch: VecDeque::new(),
                next_tick,
                may_drive: false,
                drive,
                may_drive_peer: false,
                peer_drive,
                peer_drive_leader_only,
            })),
            tx: tx.clone(),
        });
        let core_thread = {
            let driven = driven.clone();
            std::thread::Builder::new()
                .name("ringkv-raft".into())
                .spawn(move || {
                    pin_role("ringkv-raft", raft_cpu);
                    driven.run(waiter, next_tick)
                })
                .map_err(|e| RaftNodeError::Raft(format!("spawn raft thread: {e}")))?
        };
        let apply_thread = {
            let tx = tx.clone();
            let apply_cpu = cfg.threads.apply_cpu;
            std::thread::Builder::new()
                .name("ringkv-apply".into())
                .spawn(move || {
                    pin_role("ringkv-apply", apply_cpu);
                    apply_loop(applying, apply_rx, tx)
                })
                .map_err(|e| RaftNodeError::Raft(format!("spawn apply thread: {e}")))?
        };
        threads.push(core_thread);
        threads.push(apply_thread);
        Ok(RaftNode {
            tx,
            driver: driven,
            progress,
            threads: Arc::new(parking_lot::Mutex::new(threads)),
        })
    }

    /// Proposes `data` as a normal entry. Success is seen when the state machine applies it;
    /// `rejected` runs if raft refuses the proposal (no leader) or the node is stopped.
    pub fn propose(&self, data: Vec<u8>, rejected: Option<Box<dyn FnOnce(RaftNodeError) + Send>>) {
        if let Err(CoreMsg::Propose {
            rejected: Some(r), ..
        }) = self.tx.send(CoreMsg::Propose { data, rejected })
        {
            r(RaftNodeError::Stopped);
        }
    }

    /// [`RaftNode::propose`], and when the core thread is parked with nothing queued, runs the
    /// core on the calling thread instead of waking it (`Driven::drive`): on a member alone
    /// in its cluster with an idle WAL, the entry is written, fdatasynced, committed and
    /// applied before this returns, so its waiter is completed on the calling thread. The
    /// call then blocks for the WAL write; callers that must not block use `propose`.
    pub fn propose_driving(
        &self,
        data: Vec<u8>,
        rejected: Option<Box<dyn FnOnce(RaftNodeError) + Send>>,
    ) {
        match self.tx.send_claiming(CoreMsg::Propose { data, rejected }) {
            Ok(true) => self.driver.drive(Driver::Proposer),
            Ok(false) => {}
            Err(CoreMsg::Propose {
                rejected: Some(r), ..
            }) => r(RaftNodeError::Stopped),
            Err(_) => {}
        }
    }

    /// Asks for a linearizable read point. Concurrent calls share one ReadIndex round.
    pub fn read_index(&self, done: ReadIndexDone) {
        if let Err(CoreMsg::ReadIndex(done)) = self.tx.send(CoreMsg::ReadIndex(done)) {
            done(Err(RaftNodeError::Stopped));
        }
    }

    pub fn progress(&self) -> &SharedProgress {
        &self.progress
    }

    /// Hands a message received from a peer to raft. Messages from unknown members and stale
    /// ones are dropped (raft retries what matters).
    pub fn step(&self, msg: Message) {
        let _ = self.tx.send(CoreMsg::Step(msg));
    }

    /// [`RaftNode::step`] for a batch of messages from a peer's reader thread; when the core
    /// thread is parked with nothing queued, runs the core on the calling thread instead of
    /// waking it (`ThreadOptions::peer_drive`): a follower's WAL write and fdatasync of an
    /// append, its acknowledgement, and on the leader the commit, apply and reply that an
    /// acknowledgement completes, all happen before this returns. The caller must hold no lock
    /// the core may need (it runs the transport's `send` and `try_apply`).
    pub fn step_driving(&self, msgs: Vec<Message>) {
        if msgs.is_empty() {
            return;
        }
        let msgs = msgs.into_iter().map(CoreMsg::Step).collect();
        if let Ok(true) = self.tx.send_all_claiming(msgs) {
            self.driver.drive(Driver::PeerReader);
        }
    }

    /// Tells raft that the last message to `id` could not be delivered (it then probes instead
    /// of streaming appends to that member).
    pub fn report_unreachable(&self, id: u64) {
        let _ = self.tx.send(CoreMsg::Unreachable(id));
    }

    /// Tells raft how sending a snapshot to `to` ended (`failed`: raft sends it again later).
    pub fn report_snapshot(&self, to: u64, failed: bool) {
        let _ = self.tx.send(CoreMsg::SnapshotStatus { to, failed });
    }

    /// Proposes a membership change. Success is seen when the state machine's
    /// [`StateMachine::apply_conf_change`] runs with it; `rejected` as for [`RaftNode::propose`].
    pub fn propose_conf_change(
        &self,
        cc: ConfChangeV2,
        rejected: Option<Box<dyn FnOnce(RaftNodeError) + Send>>,
    ) {
        if let Err(CoreMsg::ProposeConfChange {
            rejected: Some(r), ..
        }) = self.tx.send(CoreMsg::ProposeConfChange { cc, rejected })
        {
            r(RaftNodeError::Stopped);
        }
    }

    /// Asks the leader to hand leadership to `to` (etcd's MoveLeader); watch
    /// [`NodeProgress::leader`] for the outcome.
    pub fn transfer_leader(&self, to: u64) {
        let _ = self.tx.send(CoreMsg::TransferLeader(to));
    }

    /// The leader's replication progress of every member; an empty list on a follower.
    pub fn peer_progress(&self, done: Box<dyn FnOnce(Vec<PeerProgress>) + Send>) {
        if let Err(CoreMsg::PeerProgress(done)) = self.tx.send(CoreMsg::PeerProgress(done)) {
            done(Vec::new());
        }
    }

    /// Stops both threads after the core finishes its current iteration. In-flight proposals may
    /// or may not be applied; what was persisted is replayed on restart.
    pub fn shutdown(&self) {
        let _ = self.tx.send(CoreMsg::Shutdown);
        let threads: Vec<JoinHandle<()>> = std::mem::take(&mut *self.threads.lock());
        for t in threads {
            let _ = t.join();
        }
    }
}

/// A ready handed to raft-rs with `advance_append_async`, waiting for its persistence.
struct InFlight {
    number: u64,
    /// `false` for readies that had nothing to persist; they complete with the one before them.
    needs_persist: bool,
    done: bool,
    /// A follower's messages that may only leave once this ready is durable.
    persisted_msgs: Vec<Message>,
}

struct Core<L: LogSink> {
    raw: RawNode<LogStore>,
    sink: L,
    transport: Box<dyn Transport>,
    /// Ticks since start; read rounds remember when they were sent.
    ticks: u64,
    /// A read round unanswered for this many ticks is sent again (the leader it went to may
    /// have lost leadership and dropped it).
    read_retry_ticks: u64,
    tx: InboxSender<CoreMsg>,
    apply_tx: Sender<ApplyMsg>,
    /// The apply side, for applying small batches on this thread (see [`Applying`]).
    applying: Arc<dyn ApplyHere>,
    inline_apply_max: usize,
    progress: SharedProgress,
    tick: Duration,
    in_flight: VecDeque<InFlight>,
    /// HardState changes not yet persisted (commit-only changes ride with the next batch).
    pending_hs: Option<HardState>,
    /// Read requests gathered during the current loop iteration.
    read_batch: Vec<ReadIndexDone>,
    /// ReadIndex rounds sent to raft-rs, keyed by the context id: (tick sent, waiters).
    read_rounds: HashMap<u64, (u64, Vec<ReadIndexDone>)>,
    next_read_ctx: u64,
    /// Reads whose index is known, waiting for apply to reach it.
    read_waiting: BTreeMap<u64, Vec<ReadIndexDone>>,
    /// Reads that arrived before the leader committed an entry in its term (raft-rs drops those).
    read_deferred: Vec<ReadIndexDone>,
    applied: u64,
    failed: Option<String>,
    /// Snapshot policy, and the snapshot thread's queue (`None`: snapshots off).
    snapshots: SnapshotPolicy,
    snap_tx: Option<Sender<SnapJob>>,
    /// A snapshot job is with the snapshot thread.
    snap_in_progress: bool,
    /// Index of the newest snapshot. A new snapshot purges the WAL below this one (the one
    /// before it), so a corrupt newest `.snap` still has an older one to fall back to.
    last_snapshot: u64,
    /// The state machine's durable applied index, as last reported.
    durable: u64,
    /// Membership after each applied conf change, (entry index, ConfState), oldest first; the
    /// first element is the membership at the log's start. A snapshot at index I records the
    /// last one at or below I.
    conf_history: Vec<(u64, ConfState)>,
    /// Conf changes waiting for the previous one to apply, oldest first (`HeldConf`).
    held_conf: VecDeque<HeldConf>,
    /// `NodeConfig::batch_bytes`.
    batch_bytes: usize,
    /// Proposals of the current loop turn, proposed together when the turn's messages are
    /// handled (`flush_proposals`); empty between turns.
    proposals: Vec<(Vec<u8>, Option<RejectFn>)>,
    /// Requests per committed entry: the snapshot trigger and the catch-up compaction count
    /// requests, not (batch) entries.
    requests: RequestCounts,
    /// (peer, `ticks` when a message from it last arrived), for `PeerProgress::recent_active`.
    /// Not raft-rs's own flag: that one is cleared for everyone at each election timeout and
    /// set again by the next response (so it reads "inactive" for a heartbeat after every
    /// reset), and it starts "active" for a member just added that never answered.
    heard: Vec<(u64, u64)>,
}

/// Most turns a proposing thread runs before it hands what is still queued to the core
/// thread. One put on an idle single member takes three (propose + WAL write; persisted →
/// commit → apply; applied index); more would let a front-end thread keep driving other
/// threads' proposals while its own connections wait.
const MAX_DRIVEN_TURNS: usize = 4;

/// The core with its inbox, run by whoever holds the lock: the core thread, or a proposing
/// thread that claimed the inbox (`inbox.rs` module doc, [`RaftNode::propose_driving`]).
struct Runner<L: LogSink> {
    core: Core<L>,
    rx: InboxReceiver<CoreMsg>,
    /// Messages taken from the inbox, being handled.
    batch: VecDeque<CoreMsg>,
    /// When the next raft tick is due.
    next_tick: Instant,
    /// A proposing thread may run turns: the member is alone in its cluster and has not
    /// failed. With peers only the core thread runs (it must keep heartbeats regular; a
    /// front-end thread blocked elsewhere would not).
    may_drive: bool,
    /// `ThreadOptions::drive`.
    drive: bool,
    /// A peer reader may run turns (`ThreadOptions::peer_drive`, and the core has not failed).
    may_drive_peer: bool,
    /// `ThreadOptions::peer_drive`.
    peer_drive: bool,
    /// `ThreadOptions::peer_drive_leader_only`.
    peer_drive_leader_only: bool,
}

impl<L: LogSink> Runner<L> {
    /// One turn of the core: handles everything queued (and whatever arrives meanwhile: all
    /// proposals of the turn go into one Ready), ticks when due, starts a read round, handles
    /// the Ready. Returns `false` on shutdown (reads waiting then fail with `Stopped`).
    fn turn(&mut self) -> bool {
        self.rx.try_recv_all(&mut self.batch);
        while !self.batch.is_empty() {
            for msg in self.batch.drain(..) {
                if !self.core.handle(msg) {
                    self.core.reject_proposals(RaftNodeError::Stopped);
                    self.core.fail_all_reads(RaftNodeError::Stopped);
                    return false;
                }
            }
            self.rx.try_recv_all(&mut self.batch);
        }
        self.core.flush_proposals();
        if !self.core.held_conf.is_empty() {
            self.core.release_held_conf();
        }
        if Instant::now() >= self.next_tick {
            self.core.raw.tick();
            self.core.ticks += 1;
            self.core.retry_stale_read_rounds();
            let tx = &self.core.tx;
            self.core.applying.report_durable_here(&mut |m| {
                let _ = tx.send(m);
            });
            self.next_tick += self.core.tick;
        }
        self.core.start_read_round();
        self.core.on_ready();
        self.core.publish_progress();
        self.may_drive =
            self.drive && self.core.failed.is_none() && self.core.alone_in_the_cluster();
        self.may_drive_peer = self.peer_drive
            && self.core.failed.is_none()
            && (!self.peer_drive_leader_only || self.core.raw.raft.state == StateRole::Leader);
        true
    }
}

/// The shared home of the [`Runner`]: `None` once the core stopped (dropping the runner drops
/// the inbox's receiver, so later sends fail and their callers see `Stopped`).
struct Driven<L: LogSink> {
    runner: parking_lot::Mutex<Option<Runner<L>>>,
    tx: InboxSender<CoreMsg>,
}

/// Who asks to drive the core: a proposing (front-end) thread, or a peer transport's reader.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Driver {
    Proposer,
    PeerReader,
}

/// A [`Driven`] core with its log sink type erased, for [`RaftNode`].
trait Drive: Send + Sync {
    /// Runs the core on the calling thread when `who` may (`Runner::may_drive`,
    /// `Runner::may_drive_peer`), else wakes the core thread; the caller holds the inbox's
    /// claim, which this gives back.
    fn drive(&self, who: Driver);
}

impl<L: LogSink> Driven<L> {
    /// The core thread: parks until something is queued (and not claimed by a driving
    /// thread) or a tick is due, then runs a turn.
    fn run(&self, waiter: InboxWaiter<CoreMsg>, mut next_tick: Instant) {
        // The first turn runs at once: a single voter's campaign at start is in the Ready.
        let mut first = true;
        loop {
            if !std::mem::take(&mut first) {
                waiter.wait(next_tick);
            }
            let mut runner = self.runner.lock();
            let Some(r) = runner.as_mut() else { return };
            if !r.turn() {
                *runner = None;
                return;
            }
            next_tick = r.next_tick;
        }
    }
}

impl<L: LogSink> Drive for Driven<L> {
    fn drive(&self, who: Driver) {
        let mut turns = 0;
        loop {
            {
                let mut runner = self.runner.lock();
                let allowed = |r: &Runner<L>| match who {
                    Driver::Proposer => r.may_drive,
                    Driver::PeerReader => r.may_drive_peer,
                };
                match runner.as_mut() {
                    Some(r) if allowed(r) => {
                        if !r.turn() {
                            // Dropping the runner closes the inbox, which wakes the core
                            // thread to exit.
                            *runner = None;
                        }
                        turns += 1;
                    }
                    _ => {
                        drop(runner);
                        self.tx.release(true);
                        return;
                    }
                }
            }
            if self.tx.release(turns >= MAX_DRIVEN_TURNS) {
                return;
            }
        }
    }
}

fn to_raft_err(e: raft::Error) -> RaftNodeError {
    RaftNodeError::Raft(e.to_string())
}

impl<L: LogSink> Core<L> {
    fn new(
        cfg: &NodeConfig,
        sink: L,
        transport: Box<dyn Transport>,
        tx: InboxSender<CoreMsg>,
        apply_tx: Sender<ApplyMsg>,
        applying: Arc<dyn ApplyHere>,
        progress: SharedProgress,
    ) -> Result<Self, RaftNodeError> {
        let storage = LogStore::new();
        let existing = cfg.hard_state.term > 0 || !cfg.entries.is_empty() || cfg.snapshot_index > 0;
        let mut raft_applied = cfg.applied;
        {
            let mut w = storage.wl();
            if existing {
                let conf = cfg
                    .conf_state
                    .clone()
                    .unwrap_or_else(|| ConfState::from((cfg.voters.clone(), vec![])));
                if cfg.snapshot_index > 0 {
                    drop(w);
                    let mut snap = Snapshot::default();
                    snap.mut_metadata().index = cfg.snapshot_index;
                    snap.mut_metadata().term = cfg.snapshot_term;
                    *snap.mut_metadata().mut_conf_state() = conf;
                    storage.apply_snapshot(snap).map_err(to_raft_err)?;
                    w = storage.wl();
                } else {
                    w.set_conf_state(conf);
                }
                // Entries the snapshot covers are not part of the log any more.
                let entries: Vec<Entry> = cfg
                    .entries
                    .iter()
                    .filter(|e| e.index > cfg.snapshot_index)
                    .cloned()
                    .collect();
                w.append(&entries).map_err(to_raft_err)?;
                let mut hs = cfg.hard_state.clone();
                // Invariant 3: anything applied was committed.
                let last = entries.last().map_or(cfg.snapshot_index, |e| e.index);
                hs.commit = hs.commit.max(cfg.applied).min(last).max(cfg.snapshot_index);
                // An installed backend may be ahead of the log (the leader's file was newer
                // than the snapshot's index): raft-rs learns about it as entries arrive.
                raft_applied = raft_applied.min(hs.commit);
                w.set_hardstate(hs);
            } else {
                w.set_conf_state(
                    cfg.conf_state
                        .clone()
                        .unwrap_or_else(|| ConfState::from((cfg.voters.clone(), vec![]))),
                );
                // A new member starts as a follower in term 1, as etcd's does (etcd bootstraps
                // its membership as term-1 entries), so a fresh cluster's first leader holds
                // term 2 and response headers carry etcd's raft_term.
                w.set_hardstate(HardState {
                    term: 1,
                    ..Default::default()
                });
            }
        }
        let initial_conf = raft::Storage::initial_state(&storage)
            .map_err(to_raft_err)?
            .conf_state;
        let raft_cfg = raft::Config {
            id: cfg.id,
            election_tick: cfg.election_ticks,
            heartbeat_tick: cfg.heartbeat_ticks,
            applied: raft_applied,
            pre_vote: true,
            check_quorum: true,
            max_size_per_msg: 1 << 20,
            max_inflight_msgs: 256,
            ..Default::default()
        };
        raft_cfg.validate().map_err(to_raft_err)?;
        let logger = slog::Logger::root(TracingDrain, slog::o!("raft_id" => cfg.id));
        let mut raw = RawNode::new(&raft_cfg, storage, &logger).map_err(to_raft_err)?;
        {
            let conf = raw.raft.prs().conf();
            progress
                .is_learner
                .store(conf.learners().contains(&cfg.id), Ordering::Release);
        }
        // A single voter needs nobody's vote: skip the election timeout (etcd does the same).
        if raw.raft.prs().conf().voters().ids().iter().eq([cfg.id]) {
            raw.campaign().map_err(to_raft_err)?;
        }
        Ok(Core {
            raw,
            sink,
            transport,
            ticks: 0,
            read_retry_ticks: cfg.election_ticks as u64,
            tx,
            apply_tx,
            applying,
            inline_apply_max: cfg.threads.inline_apply_max,
            progress,
            tick: cfg.tick,
            in_flight: VecDeque::new(),
            pending_hs: None,
            read_batch: Vec::new(),
            read_rounds: HashMap::new(),
            next_read_ctx: 1,
            read_waiting: BTreeMap::new(),
            read_deferred: Vec::new(),
            applied: cfg.applied,
            failed: None,
            snapshots: cfg.snapshots.clone(),
            snap_tx: None,
            snap_in_progress: false,
            last_snapshot: cfg.snapshot_index,
            durable: cfg.applied,
            conf_history: vec![(cfg.snapshot_index, initial_conf)],
            held_conf: VecDeque::new(),
            batch_bytes: cfg.batch_bytes,
            proposals: Vec::new(),
            requests: RequestCounts::default(),
            heard: Vec::new(),
        })
    }

    /// Returns `false` on shutdown.
    fn handle(&mut self, msg: CoreMsg) -> bool {
        if matches!(
            msg,
            CoreMsg::ProposeConfChange { .. } | CoreMsg::TransferLeader(_)
        ) {
            // Proposals gathered before a conf change or a leadership transfer go first, in
            // arrival order.
            self.flush_proposals();
        }
        match msg {
            CoreMsg::Propose { data, rejected } => {
                if self.batch_bytes > 0 && self.failed.is_none() {
                    self.proposals.push((data, rejected));
                } else if let Err(e) = self.propose_data(data, 1)
                    && let Some(r) = rejected
                {
                    r(e);
                }
            }
            CoreMsg::ReadIndex(done) => match &self.failed {
                Some(why) => done(Err(RaftNodeError::PersistFailed(why.clone()))),
                None => self.read_batch.push(done),
            },
            CoreMsg::Persisted { number, result } => self.on_persisted(number, result),
            CoreMsg::Applied(index) => {
                self.applied = self.applied.max(index);
                // After a snapshot install the state machine may be ahead of the log raft-rs
                // has (the leader's backend was newer than the snapshot's index): raft-rs only
                // hears about indexes it has committed and persisted.
                let log = &self.raw.raft.raft_log;
                let to = index.min(log.committed).min(log.persisted);
                if to > log.applied {
                    self.raw.advance_apply_to(to);
                }
                self.release_reads();
            }
            CoreMsg::Durable(index) => self.maybe_snapshot(index),
            CoreMsg::SnapshotSaved(meta) => self.snapshot_saved(meta),
            CoreMsg::Fatal(why) => self.fail(why),
            #[cfg(test)]
            CoreMsg::TestStep(m) => {
                if let Err(e) = self.raw.step(m) {
                    tracing::warn!(error = %e, "test step refused");
                }
            }
            CoreMsg::Shutdown => return false,
            other => self.handle_peer_msg(other),
        }
        true
    }

    /// How many proposals an entry's data carries. Without batching every entry is one: the
    /// data is then the proposer's own bytes, which may start with the batch marker.
    fn requests_of(&self, data: &[u8]) -> u64 {
        if self.batch_bytes == 0 {
            1
        } else {
            requests_in(data)
        }
    }

    /// Proposes `data` (carrying `requests` proposals) as one normal entry.
    fn propose_data(&mut self, data: Vec<u8>, requests: u64) -> Result<(), RaftNodeError> {
        if let Some(why) = &self.failed {
            return Err(RaftNodeError::PersistFailed(why.clone()));
        }
        self.raw.propose(vec![], data).map_err(|e| {
            self.progress
                .proposals_failed
                .fetch_add(requests, Ordering::Relaxed);
            match e {
                raft::Error::ProposalDropped if self.raw.raft.leader_id == 0 => {
                    RaftNodeError::NoLeader
                }
                raft::Error::ProposalDropped => RaftNodeError::ProposalDropped,
                other => to_raft_err(other),
            }
        })
    }

    /// Proposes the turn's gathered proposals, in arrival order: runs of them in batch entries
    /// of at most `batch_bytes` (batch.rs), a run of one as a plain entry. A refused entry's
    /// proposers all hear raft's error.
    fn flush_proposals(&mut self) {
        if self.proposals.is_empty() {
            return;
        }
        let mut all = std::mem::take(&mut self.proposals);
        let mut start = 0;
        while start < all.len() {
            let mut end = start + 1;
            let mut len = batch_len([all[start].0.len()]);
            while end < all.len() {
                let more = batch_len([all[end].0.len()]) - batch_len([]);
                if len + more > self.batch_bytes {
                    break;
                }
                len += more;
                end += 1;
            }
            let run = &mut all[start..end];
            let (data, n) = if run.len() == 1 {
                (std::mem::take(&mut run[0].0), 1)
            } else {
                (
                    encode_batch(run.iter().map(|(d, _)| d.as_slice())),
                    run.len() as u64,
                )
            };
            if let Err(e) = self.propose_data(data, n) {
                for (_, r) in run.iter_mut() {
                    if let Some(r) = r.take() {
                        r(e.clone());
                    }
                }
            }
            start = end;
        }
        all.clear();
        // The vector's capacity serves the next turn.
        self.proposals = all;
    }

    /// Refuses the gathered proposals that were not proposed yet (the core is stopping).
    fn reject_proposals(&mut self, e: RaftNodeError) {
        for (_, r) in self.proposals.drain(..) {
            if let Some(r) = r {
                r(e.clone());
            }
        }
    }

    /// Messages of the cluster: peer traffic, membership, leadership transfer.
    fn handle_peer_msg(&mut self, msg: CoreMsg) {
        match msg {
            CoreMsg::Step(m) => {
                if self.failed.is_some() {
                    return;
                }
                match self.heard.iter_mut().find(|(id, _)| *id == m.from) {
                    Some(h) => h.1 = self.ticks,
                    None => self.heard.push((m.from, self.ticks)),
                }
                if m.get_msg_type() == MessageType::MsgPropose
                    && m.entries.iter().any(is_conf_change)
                    && self.must_hold_conf_change()
                {
                    self.held_conf.push_back(HeldConf::Forwarded(m));
                    return;
                }
                if let Err(e) = self.raw.step(m) {
                    tracing::debug!(error = %e, "raft message dropped");
                }
            }
            CoreMsg::Unreachable(id) => self.raw.report_unreachable(id),
            CoreMsg::SnapshotStatus { to, failed } => {
                let status = if failed {
                    SnapshotStatus::Failure
                } else {
                    SnapshotStatus::Finish
                };
                self.raw.report_snapshot(to, status);
            }
            CoreMsg::ProposeConfChange { cc, rejected } => {
                if self.failed.is_none() && self.must_hold_conf_change() {
                    self.held_conf.push_back(HeldConf::Local { cc, rejected });
                } else {
                    self.propose_conf_change(cc, rejected);
                }
            }
            CoreMsg::TransferLeader(to) => self.raw.transfer_leader(to),
            CoreMsg::PeerProgress(done) => {
                let mut out = Vec::new();
                if self.raw.raft.state == StateRole::Leader {
                    let conf = self.raw.raft.prs().conf();
                    let learners = conf.learners().clone();
                    let me = self.raw.raft.id;
                    let election_ticks = self.raw.raft.election_timeout() as u64;
                    for (id, pr) in self.raw.raft.prs().iter() {
                        let heard = self.heard.iter().any(|&(from, at)| {
                            from == *id && self.ticks.saturating_sub(at) <= election_ticks
                        });
                        out.push(PeerProgress {
                            id: *id,
                            matched: pr.matched,
                            is_learner: learners.contains(id),
                            recent_active: *id == me || heard,
                        });
                    }
                    out.sort_by_key(|p| p.id);
                }
                done(out);
            }
            CoreMsg::Propose { .. }
            | CoreMsg::ReadIndex(_)
            | CoreMsg::Persisted { .. }
            | CoreMsg::Applied(_)
            | CoreMsg::Durable(_)
            | CoreMsg::SnapshotSaved(_)
            | CoreMsg::Fatal(_)
            | CoreMsg::Shutdown => unreachable!("handled by handle()"),
            #[cfg(test)]
            CoreMsg::TestStep(_) => unreachable!("handled by handle()"),
        }
    }

    /// Sends again the read rounds that waited longer than an election timeout (a forwarded
    /// MsgReadIndex is lost when the leader changes or drops it).
    fn retry_stale_read_rounds(&mut self) {
        let now = self.ticks;
        let limit = self.read_retry_ticks;
        let stale: Vec<u64> = self
            .read_rounds
            .iter()
            .filter(|(_, (sent, _))| now.saturating_sub(*sent) > limit)
            .map(|(ctx, _)| *ctx)
            .collect();
        for ctx in stale {
            if let Some((_, waiters)) = self.read_rounds.remove(&ctx) {
                self.read_deferred.extend(waiters);
            }
        }
    }

    fn start_read_round(&mut self) {
        if self.read_batch.is_empty() && self.read_deferred.is_empty() {
            return;
        }
        if self.raw.raft.leader_id == 0 {
            let batch: Vec<_> = self
                .read_batch
                .drain(..)
                .chain(self.read_deferred.drain(..))
                .collect();
            for done in batch {
                done(Err(RaftNodeError::NoLeader));
            }
            return;
        }
        // raft-rs drops a ReadIndex on a leader that has not committed in its term: hold it.
        if self.raw.raft.state == StateRole::Leader && !self.raw.raft.commit_to_current_term() {
            self.read_deferred.append(&mut self.read_batch);
            return;
        }
        let mut batch = std::mem::take(&mut self.read_deferred);
        batch.append(&mut self.read_batch);
        let ctx = self.next_read_ctx;
        self.next_read_ctx += 1;
        self.read_rounds.insert(ctx, (self.ticks, batch));
        self.raw.read_index(ctx.to_le_bytes().to_vec());
    }

    fn release_reads(&mut self) {
        let later = self.read_waiting.split_off(&(self.applied + 1));
        let ready = std::mem::replace(&mut self.read_waiting, later);
        for (index, waiters) in ready {
            for done in waiters {
                done(Ok(index));
            }
        }
    }

    fn fail_all_reads(&mut self, err: RaftNodeError) {
        let rounds = self.read_rounds.drain().flat_map(|(_, (_, v))| v);
        let waiting = std::mem::take(&mut self.read_waiting)
            .into_values()
            .flatten();
        let queued = self
            .read_batch
            .drain(..)
            .chain(self.read_deferred.drain(..));
        for done in rounds.chain(waiting).chain(queued).collect::<Vec<_>>() {
            done(Err(err.clone()));
        }
    }

    fn on_ready(&mut self) {
        if self.failed.is_some() || !self.raw.has_ready() {
            return;
        }
        let mut rd = self.raw.ready();
        // Invariant 4: the leader's messages leave now, before its own write. Exception: a
        // Ready with committed entries and nothing new to persist or replicate (on the leader,
        // the acknowledgement that committed a write: the messages are the commit index for
        // the followers and heartbeats) applies first, so an inline apply answers the client
        // without waiting for the sends and without the followers' readers, woken by them,
        // taking the CPU meanwhile. Those messages then leave at the end of this call.
        let mut msgs = rd.take_messages();
        let apply_first = !rd.committed_entries().is_empty()
            && rd.entries().is_empty()
            && rd.snapshot().is_empty()
            && msgs
                .iter()
                .all(|m| m.entries.is_empty() && m.get_msg_type() != MessageType::MsgSnapshot);
        if !msgs.is_empty() && !apply_first {
            self.transport.send(std::mem::take(&mut msgs));
        }
        for rs in rd.take_read_states() {
            let ctx = rs
                .request_ctx
                .get(..8)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_le_bytes);
            if let Some((_, waiters)) = ctx.and_then(|c| self.read_rounds.remove(&c)) {
                self.read_waiting
                    .entry(rs.index)
                    .or_default()
                    .extend(waiters);
            }
        }
        self.release_reads();
        let mut snapshot_mark = None;
        if !rd.snapshot().is_empty() {
            match self.install_snapshot(rd.snapshot().clone()) {
                Ok(mark) => snapshot_mark = Some(mark),
                Err(why) => {
                    self.fail(why);
                    return;
                }
            }
        }
        self.send_committed(rd.take_committed_entries());
        if !msgs.is_empty() {
            self.transport.send(msgs);
        }
        let entries = rd.take_entries();
        if let Some(hs) = rd.hs() {
            self.pending_hs = Some(hs.clone());
        }
        let number = rd.number();
        let must_persist = !entries.is_empty() || rd.must_sync() || snapshot_mark.is_some();
        let persisted_msgs = rd.take_persisted_messages();
        if !entries.is_empty() {
            // Invariant 2: readable by raft-rs before advance.
            let appended = self.raw.mut_store().wl().append(&entries);
            if let Err(e) = appended {
                self.fail(format!("append to in-memory log: {e}"));
                return;
            }
        }
        if let Some(hs) = &self.pending_hs {
            self.raw.mut_store().wl().set_hardstate(hs.clone());
        }
        self.raw.advance_append_async(rd);
        self.in_flight.push_back(InFlight {
            number,
            needs_persist: must_persist,
            done: false,
            persisted_msgs,
        });
        if must_persist {
            let tx = self.tx.clone();
            let hs = self.pending_hs.take();
            let more = !entries.is_empty() || hs.is_some();
            if let Some((index, term)) = snapshot_mark {
                // The marker goes before the entries after the snapshot; the persist call
                // after it completes later (invariant 1), so it alone reports success.
                let tx = tx.clone();
                self.sink.persist_snapshot_mark(
                    index,
                    term,
                    Box::new(move |result| {
                        if result.is_err() || !more {
                            let _ = tx.send(CoreMsg::Persisted { number, result });
                        }
                    }),
                );
            }
            if more || snapshot_mark.is_none() {
                self.sink.persist(
                    entries,
                    hs,
                    Box::new(move |result| {
                        let _ = tx.send(CoreMsg::Persisted { number, result });
                    }),
                );
            }
        } else {
            self.complete_persisted_prefix();
        }
    }

    fn on_persisted(&mut self, number: u64, result: io::Result<()>) {
        if let Err(e) = result {
            self.fail(format!("WAL persist of ready {number}: {e}"));
            return;
        }
        for f in self.in_flight.iter_mut() {
            if f.number <= number {
                f.done = true;
            }
        }
        self.complete_persisted_prefix();
    }

    /// Pops every ready whose persistence is complete (readies without data complete with the
    /// one before them) and tells raft-rs up to where the log is durable.
    fn complete_persisted_prefix(&mut self) {
        let mut last = None;
        while let Some(front) = self.in_flight.front() {
            if front.needs_persist && !front.done {
                break;
            }
            let f = self.in_flight.pop_front().expect("front exists");
            // Invariant 4: follower messages (votes, append acks) leave only now.
            if !f.persisted_msgs.is_empty() {
                self.transport.send(f.persisted_msgs);
            }
            last = Some(f.number);
        }
        if let Some(number) = last {
            self.raw.on_persist_ready(number);
            // Persistence may have advanced the commit index: deliver what became committed.
            if self.raw.has_ready() {
                self.on_ready();
            }
        }
    }

    /// A conf change must wait: this member leads and raft-rs has not seen its previous conf
    /// change applied (or others wait already, which go first).
    fn must_hold_conf_change(&self) -> bool {
        !self.held_conf.is_empty()
            || (self.raw.raft.state == StateRole::Leader && self.raw.raft.has_pending_conf())
    }

    /// Hands held conf changes to raft-rs, oldest first, while the previous one is applied
    /// (each accepted one makes the next wait again). A member that no longer leads releases
    /// them all: raft-rs forwards them to the new leader or refuses them (no leader).
    fn release_held_conf(&mut self) {
        while self.raw.raft.state != StateRole::Leader || !self.raw.raft.has_pending_conf() {
            match self.held_conf.pop_front() {
                None => return,
                Some(HeldConf::Local { cc, rejected }) => self.propose_conf_change(cc, rejected),
                Some(HeldConf::Forwarded(m)) => {
                    if self.failed.is_none()
                        && let Err(e) = self.raw.step(m)
                    {
                        tracing::debug!(error = %e, "forwarded conf change dropped");
                    }
                }
            }
        }
    }

    fn propose_conf_change(
        &mut self,
        cc: ConfChangeV2,
        rejected: Option<Box<dyn FnOnce(RaftNodeError) + Send>>,
    ) {
        let refused = match &self.failed {
            Some(why) => Some(RaftNodeError::PersistFailed(why.clone())),
            None => match self.raw.propose_conf_change(vec![], cc) {
                Ok(()) => None,
                Err(raft::Error::ProposalDropped) if self.raw.raft.leader_id == 0 => {
                    Some(RaftNodeError::NoLeader)
                }
                Err(raft::Error::ProposalDropped) => Some(RaftNodeError::ProposalDropped),
                Err(e) => Some(to_raft_err(e)),
            },
        };
        if let (Some(e), Some(r)) = (refused, rejected) {
            r(e);
        }
    }

    fn send_committed(&mut self, entries: Vec<Entry>) {
        if entries.is_empty() {
            return;
        }
        for e in &entries {
            match e.get_entry_type() {
                EntryType::EntryConfChange | EntryType::EntryConfChangeV2 => {
                    // Entries at or below the applied index were applied before a restart; the
                    // configuration raft-rs started from already holds them.
                    if e.index <= self.applied {
                        continue;
                    }
                    if let Some(cc) = decode_conf_change(e) {
                        // Before the new configuration exists in raft: a read that still sees
                        // this member as the sole voter began before another voter could lead
                        // (`NodeProgress::local_read_index`). `publish_progress` sets it again.
                        self.progress.sole_leader_commit.store(0, Ordering::Release);
                        let result = self.raw.apply_conf_change(&cc);
                        self.conf_changed(e.index, result);
                    }
                }
                EntryType::EntryNormal => {}
            }
        }
        // A lone leader's read index follows its commit index before apply gets the entries,
        // so a read that begins now waits for them (only this thread writes the value).
        let sole = self.progress.sole_leader_commit.load(Ordering::Relaxed);
        if sole != 0 {
            let last = entries.last().map_or(sole, |e| e.index);
            self.progress
                .sole_leader_commit
                .store(sole.max(last), Ordering::Release);
        }
        let mut n = 0;
        for e in &entries {
            let r = self.requests_of(&e.data);
            self.requests.record(e.index, r);
            if !e.data.is_empty() {
                n += r;
            }
        }
        self.progress
            .proposals_committed
            .fetch_add(n, Ordering::Relaxed);
        if let Err(why) = self.dispatch_apply(ApplyMsg::Entries(entries)) {
            self.fail(why);
        }
    }

    /// Applies a small batch here when the apply thread is idle, else queues `msg` for it.
    /// What applying here reports (applied index, durable index) goes through this thread's
    /// own channel and is handled on the next loop turn, as if the apply thread had sent it.
    fn dispatch_apply(&mut self, msg: ApplyMsg) -> Result<(), String> {
        let msg = match msg {
            ApplyMsg::Entries(batch)
                if batch.len() <= self.inline_apply_max
                    && batch.iter().map(|e| self.requests_of(&e.data)).sum::<u64>()
                        <= self.inline_apply_max as u64 =>
            {
                let tx = &self.tx;
                let peers = !self.alone_in_the_cluster();
                match self.applying.try_apply_here(batch, peers, &mut |m| {
                    let _ = tx.send(m);
                }) {
                    Ok(()) => return Ok(()),
                    Err(batch) => ApplyMsg::Entries(batch),
                }
            }
            other => other,
        };
        self.applying.queued().fetch_add(1, Ordering::AcqRel);
        self.apply_tx
            .send(msg)
            .map_err(|_| "apply thread exited".to_string())
    }

    /// This member is the only voter and there are no learners. Only then may the core apply
    /// with [`StateMachine::apply`]: applying can wait for the store lock (a snapshot copy, a
    /// compaction batch), and with peers a core stuck there sends no heartbeats, so followers
    /// would start elections. With peers the core applies only through
    /// [`StateMachine::try_apply`], which never waits.
    fn alone_in_the_cluster(&self) -> bool {
        let conf = self.raw.raft.prs().conf();
        let id = self.raw.raft.id;
        conf.learners().is_empty() && conf.voters().ids().iter().eq([id])
    }

    fn conf_changed(&mut self, index: u64, result: raft::Result<ConfState>) {
        match result {
            Ok(cs) => {
                let id = self.raw.raft.id;
                self.progress
                    .is_learner
                    .store(cs.learners.contains(&id), Ordering::Release);
                self.progress.removed.store(
                    !cs.learners.contains(&id) && !cs.voters.contains(&id),
                    Ordering::Release,
                );
                self.conf_history.push((index, cs.clone()));
                self.raw.mut_store().wl().set_conf_state(cs)
            }
            Err(e) => tracing::warn!(error = %e, "conf change refused"),
        }
    }

    /// Starts a snapshot at the durable applied index `durable` when `--snapshot-count`
    /// requests were applied since the last one (etcd: `appliedi - snapi > SnapshotCount`,
    /// one request per entry there; here batch entries count their requests).
    fn maybe_snapshot(&mut self, durable: u64) {
        self.durable = self.durable.max(durable);
        let durable = self.durable;
        let Some(snap_tx) = &self.snap_tx else { return };
        if self.failed.is_some()
            || self.snap_in_progress
            || self.requests.at(durable) - self.requests.at(self.last_snapshot)
                < self.snapshots.count as i64
        {
            return;
        }
        // The entry at `durable` is in the log: nothing above the last snapshot is compacted.
        let term = match raft::Storage::term(self.raw.store(), durable) {
            Ok(t) => t,
            Err(e) => {
                // After an install the backend may be ahead of the log; try again later.
                tracing::debug!(index = durable, error = %e, "no term for a snapshot yet");
                return;
            }
        };
        let conf_state = self
            .conf_history
            .iter()
            .rev()
            .find(|(i, _)| *i <= durable)
            .map(|(_, cs)| cs.clone())
            .unwrap_or_default();
        let job = SnapJob {
            meta: SnapshotMeta {
                index: durable,
                term,
                conf_state,
            },
            purge_below: self.last_snapshot,
        };
        if snap_tx.send(job).is_ok() {
            self.snap_in_progress = true;
        }
    }

    /// The snapshot thread made `meta` durable: raft-rs may now hand it out, and the in-memory
    /// log keeps only the catch-up entries below it.
    fn snapshot_saved(&mut self, meta: SnapshotMeta) {
        self.snap_in_progress = false;
        if meta.index <= self.last_snapshot {
            // An installed snapshot overtook this one.
            return;
        }
        self.last_snapshot = meta.index;
        let keep_from = self
            .conf_history
            .iter()
            .rposition(|(i, _)| *i <= meta.index);
        if let Some(k) = keep_from {
            self.conf_history.drain(..k);
        }
        self.progress
            .snapshot_index
            .store(meta.index, Ordering::Release);
        let index = meta.index;
        self.raw.store().set_snapshot(meta);
        // The entries below the snapshot holding `catch_up` requests stay (whole entries);
        // never past what was applied: raft-rs may still need unapplied entries.
        let first_kept = self
            .requests
            .first_kept(index.saturating_sub(1), self.snapshots.catch_up)
            .min(self.raw.raft.raft_log.applied)
            .max(1);
        let first = self.raw.store().compact(first_kept);
        self.requests.prune_below(first);
        self.progress
            .log_first_index
            .store(first, Ordering::Release);
        tracing::info!(
            snapshot_index = index,
            first_log_index = first,
            "raft snapshot saved, in-memory log compacted"
        );
        // Applies that went on meanwhile may already call for the next one.
        self.maybe_snapshot(self.durable);
    }

    /// A received snapshot (the follower was too far behind the leader's log): its metadata
    /// file first, then the in-memory log, then the state machine in apply order. Returns the
    /// WAL marker to persist with this ready.
    fn install_snapshot(&mut self, snap: Snapshot) -> Result<(u64, u64), String> {
        let md = snap.get_metadata();
        let meta = SnapshotMeta {
            index: md.index,
            term: md.term,
            conf_state: md.get_conf_state().clone(),
        };
        tracing::info!(
            index = meta.index,
            term = meta.term,
            "installing a snapshot received from the leader"
        );
        if let Some(dir) = &self.snapshots.dir {
            // Durable before the backend is swapped: a restart that finds this file and an
            // older backend installs `{index}.snap.db` itself.
            dir.save(&meta)
                .map_err(|e| format!("snapshot install at {}: {e}", meta.index))?;
        }
        self.raw
            .store()
            .apply_snapshot(snap)
            .map_err(|e| format!("snapshot install at {}: {e}", meta.index))?;
        self.conf_history = vec![(meta.index, meta.conf_state.clone())];
        self.last_snapshot = meta.index;
        self.progress
            .snapshot_index
            .store(meta.index, Ordering::Release);
        let mark = (meta.index, meta.term);
        self.dispatch_apply(ApplyMsg::Restore(meta))?;
        Ok(mark)
    }

    fn fail(&mut self, why: String) {
        tracing::error!(reason = %why, "raft node stopped accepting requests");
        self.failed = Some(why.clone());
        self.fail_all_reads(RaftNodeError::PersistFailed(why));
    }

    fn publish_progress(&self) {
        let r = &self.raw.raft;
        let p = &self.progress;
        let old_leader = p.leader.swap(r.leader_id, Ordering::AcqRel);
        if old_leader != r.leader_id && r.leader_id != 0 {
            p.leader_changes.fetch_add(1, Ordering::Relaxed);
        }
        p.term.store(r.term, Ordering::Release);
        p.commit.store(r.raft_log.committed, Ordering::Release);
        let committed = r.raft_log.committed;
        let sole_leader = self.failed.is_none()
            && r.state == StateRole::Leader
            && r.prs().conf().voters().ids().iter().eq([r.id])
            && r.raft_log.term(committed).is_ok_and(|t| t == r.term);
        p.sole_leader_commit
            .store(if sole_leader { committed } else { 0 }, Ordering::Release);
    }
}

/// The state machine and what the apply side remembers, shared by the apply thread and the
/// raft core (which applies small batches itself when the apply thread is idle).
///
/// Ordering argument (batches must be applied in the order the core produced them): only the
/// core hands out batches, and it applies one itself only when `queued` is 0 and it holds
/// `state`. The apply thread decrements `queued` after applying a batch, still holding
/// `state`; so `queued == 0` seen by the core means every batch handed to the thread before is
/// applied, and holding `state` means the thread is not in the middle of one. When either
/// check fails the core queues the batch behind the others (`queued += 1` before the send).
struct Applying<S> {
    state: parking_lot::Mutex<ApplyState<S>>,
    /// Batches sent to the apply thread and not yet applied.
    queued: AtomicUsize,
}

struct ApplyState<S> {
    sm: S,
    progress: SharedProgress,
    applied: u64,
    /// Highest index reported to the core (entries an installed backend already holds count).
    reported: u64,
    durable_sent: u64,
}

impl<S: StateMachine> ApplyState<S> {
    /// Applies one message; what the core must hear goes to `core`. Returns `false` when the
    /// node must stop (a snapshot could not be installed).
    fn handle(&mut self, msg: ApplyMsg, core: &mut dyn FnMut(CoreMsg)) -> bool {
        match msg {
            ApplyMsg::Restore(meta) => match self.sm.restore(&meta) {
                Ok(new_applied) => {
                    self.applied = new_applied.max(meta.index);
                    self.progress.applied.store(self.applied, Ordering::Release);
                    self.reported = self.applied;
                    core(CoreMsg::Applied(self.applied));
                }
                Err(why) => {
                    core(CoreMsg::Fatal(format!(
                        "installing the snapshot at index {}: {why}",
                        meta.index
                    )));
                    return false;
                }
            },
            ApplyMsg::Entries(batch) => {
                let before = self.applied;
                for e in &batch {
                    if e.index <= self.applied {
                        continue;
                    }
                    match e.get_entry_type() {
                        EntryType::EntryNormal if !e.data.is_empty() => {
                            self.sm.apply(e.index, e.term, &e.data)
                        }
                        EntryType::EntryNormal => {}
                        EntryType::EntryConfChange | EntryType::EntryConfChangeV2 => {
                            if let Some(cc) = decode_conf_change(e) {
                                self.sm.apply_conf_change(e.index, e.term, &cc);
                            }
                        }
                    }
                    self.applied = e.index;
                }
                let seen = batch.last().map_or(0, |e| e.index);
                self.entries_done(before, seen, core);
            }
        }
        self.report_durable(core);
        true
    }

    /// The raft core's apply on a member with peers: applies `batch` through
    /// [`StateMachine::try_apply`] up to the first entry it refuses or the first membership
    /// change, and gives back the rest of the batch (from that entry on) for the apply thread.
    fn try_entries(
        &mut self,
        batch: Vec<Entry>,
        core: &mut dyn FnMut(CoreMsg),
    ) -> Result<(), Vec<Entry>> {
        let before = self.applied;
        let mut stop = None;
        for (i, e) in batch.iter().enumerate() {
            if e.index <= self.applied {
                continue;
            }
            let done = match e.get_entry_type() {
                EntryType::EntryNormal if !e.data.is_empty() => {
                    self.sm.try_apply(e.index, e.term, &e.data)
                }
                EntryType::EntryNormal => true,
                EntryType::EntryConfChange | EntryType::EntryConfChangeV2 => false,
            };
            if !done {
                stop = Some(i);
                break;
            }
            self.applied = e.index;
        }
        let seen = match stop {
            Some(0) => 0,
            Some(i) => batch[i - 1].index,
            None => batch.last().map_or(0, |e| e.index),
        };
        self.entries_done(before, seen, core);
        self.report_durable(core);
        match stop {
            Some(i) => Err(batch.into_iter().skip(i).collect()),
            None => Ok(()),
        }
    }

    /// After entries up to `seen` were applied or skipped (`before`: the applied index
    /// before them).
    fn entries_done(&mut self, before: u64, seen: u64, core: &mut dyn FnMut(CoreMsg)) {
        if self.applied > before {
            self.sm.applied_batch(self.applied);
            self.progress.applied.store(self.applied, Ordering::Release);
        }
        // Entries skipped because an installed backend already holds them still move
        // raft-rs's applied index (the core caps it at what raft-rs committed).
        if self.applied > before || seen > self.reported {
            self.reported = self.reported.max(seen);
            core(CoreMsg::Applied(self.applied));
        }
    }

    fn report_durable(&mut self, core: &mut dyn FnMut(CoreMsg)) {
        let durable = self.sm.durable_index();
        if durable > self.durable_sent {
            self.durable_sent = durable;
            core(CoreMsg::Durable(durable));
        }
    }
}

/// The core's view of [`Applying`] (the core is not generic over the state machine).
trait ApplyHere: Send + Sync {
    /// Applies `batch` on the calling thread if the apply thread is idle; gives it back if not.
    /// With `peers`, only through [`StateMachine::try_apply`]: what it refuses is given back.
    fn try_apply_here(
        &self,
        batch: Vec<Entry>,
        peers: bool,
        core: &mut dyn FnMut(CoreMsg),
    ) -> Result<(), Vec<Entry>>;
    fn queued(&self) -> &AtomicUsize;
    /// Reports the state machine's durable index if it moved since the last report and the
    /// apply side is idle. The backend commits on its own schedule, often after the last
    /// apply; without this an idle member would not snapshot until the next write.
    fn report_durable_here(&self, core: &mut dyn FnMut(CoreMsg));
}

impl<S: StateMachine> ApplyHere for Applying<S> {
    fn try_apply_here(
        &self,
        batch: Vec<Entry>,
        peers: bool,
        core: &mut dyn FnMut(CoreMsg),
    ) -> Result<(), Vec<Entry>> {
        // Both checks, in this order: see the ordering argument on `Applying`.
        if self.queued.load(Ordering::Acquire) != 0 {
            return Err(batch);
        }
        let Some(mut st) = self.state.try_lock() else {
            return Err(batch);
        };
        if peers {
            // The rest goes to the apply thread behind nothing: `queued` is 0.
            return st.try_entries(batch, core);
        }
        // Only a restore can ask to stop, and restores always go to the apply thread.
        st.handle(ApplyMsg::Entries(batch), core);
        Ok(())
    }

    fn queued(&self) -> &AtomicUsize {
        &self.queued
    }

    fn report_durable_here(&self, core: &mut dyn FnMut(CoreMsg)) {
        // A busy apply thread reports after its batch.
        if self.queued.load(Ordering::Acquire) != 0 {
            return;
        }
        if let Some(mut st) = self.state.try_lock() {
            st.report_durable(core);
        }
    }
}

/// Pins the calling thread (a role of `--cpu-layout`) to `cpu`; a refusal is logged, not fatal.
fn pin_role(role: &str, cpu: Option<usize>) {
    if let Some(cpu) = cpu
        && let Err(e) = crate::io::pin_current_thread(cpu)
    {
        tracing::warn!(role, cpu, error = %e, "cannot pin the thread; it runs unpinned");
    }
}

fn apply_loop<S: StateMachine>(
    applying: Arc<Applying<S>>,
    rx: Receiver<ApplyMsg>,
    core: InboxSender<CoreMsg>,
) {
    for msg in rx {
        let mut st = applying.state.lock();
        let mut gone = false;
        let go_on = st.handle(msg, &mut |m| gone |= core.send(m).is_err());
        // Still under `state`: see the ordering argument on `Applying`.
        applying.queued.fetch_sub(1, Ordering::AcqRel);
        if !go_on || gone {
            return;
        }
    }
}

/// The membership change an entry carries, as a V2 change (v1 entries converted).
fn is_conf_change(e: &Entry) -> bool {
    matches!(
        e.get_entry_type(),
        EntryType::EntryConfChange | EntryType::EntryConfChangeV2
    )
}

fn decode_conf_change(e: &Entry) -> Option<ConfChangeV2> {
    match e.get_entry_type() {
        EntryType::EntryConfChange => {
            let mut cc = ConfChange::default();
            protobuf::Message::merge_from_bytes(&mut cc, &e.data).ok()?;
            let mut single = raft::eraftpb::ConfChangeSingle::default();
            single.set_change_type(cc.get_change_type());
            single.node_id = cc.node_id;
            let mut v2 = ConfChangeV2::default();
            v2.mut_changes().push(single);
            v2.context = cc.context;
            Some(v2)
        }
        EntryType::EntryConfChangeV2 => {
            let mut cc = ConfChangeV2::default();
            protobuf::Message::merge_from_bytes(&mut cc, &e.data).ok()?;
            Some(cc)
        }
        EntryType::EntryNormal => None,
    }
}

/// The snapshot thread: makes each snapshot durable (metadata file, then the WAL marker), tells
/// the core, then purges the WAL and old metadata files. Any failure stops the node (an
/// fdatasync error is never retried).
fn snapshot_loop<L: LogSink>(
    dir: SnapDir,
    (keep_snaps, keep_wals): (usize, usize),
    sink: L,
    rx: Receiver<SnapJob>,
    core: InboxSender<CoreMsg>,
) {
    for job in rx {
        let index = job.meta.index;
        let saved = (|| -> Result<(), String> {
            dir.save(&job.meta).map_err(|e| e.to_string())?;
            let (tx, rx) = crossbeam_channel::bounded(1);
            sink.persist_snapshot_mark(
                index,
                job.meta.term,
                Box::new(move |r| {
                    let _ = tx.send(r);
                }),
            );
            rx.recv()
                .map_err(|_| "the WAL dropped the snapshot marker".to_string())?
                .map_err(|e| format!("WAL snapshot marker: {e}"))
        })();
        if let Err(why) = saved {
            let _ = core.send(CoreMsg::Fatal(format!("snapshot at index {index}: {why}")));
            return;
        }
        let _ = core.send(CoreMsg::SnapshotSaved(job.meta));
        let cleaned = (|| -> Result<(), String> {
            if job.purge_below > 0 {
                sink.purge_below(job.purge_below, keep_wals)
                    .map_err(|e| format!("WAL purge below {}: {e}", job.purge_below))?;
            }
            dir.prune(keep_snaps).map_err(|e| e.to_string())?;
            Ok(())
        })();
        if let Err(why) = cleaned {
            let _ = core.send(CoreMsg::Fatal(format!(
                "after snapshot at index {index}: {why}"
            )));
            return;
        }
    }
}

/// Forwards raft-rs's slog records to `tracing`.
struct TracingDrain;

impl slog::Drain for TracingDrain {
    type Ok = ();
    type Err = slog::Never;

    fn log(&self, record: &slog::Record<'_>, _: &slog::OwnedKVList) -> Result<(), slog::Never> {
        match record.level() {
            slog::Level::Critical | slog::Level::Error => {
                tracing::error!(target: "raft", "{}", record.msg())
            }
            slog::Level::Warning => tracing::warn!(target: "raft", "{}", record.msg()),
            slog::Level::Info => tracing::info!(target: "raft", "{}", record.msg()),
            slog::Level::Debug | slog::Level::Trace => {
                tracing::debug!(target: "raft", "{}", record.msg())
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::transport::NoPeers;
    use super::*;
    use parking_lot::Mutex;
    use std::sync::atomic::AtomicU64;
    use std::sync::mpsc;

    /// Persists into memory, completing each call on a separate thread in call order, like the
    /// WAL thread does. Can be told to fail.
    #[derive(Clone, Default)]
    struct MemSink {
        log: Arc<Mutex<Vec<Entry>>>,
        hs: Arc<Mutex<HardState>>,
        fail: Arc<std::sync::atomic::AtomicBool>,
        calls: Arc<std::sync::atomic::AtomicU64>,
        marks: Arc<Mutex<Vec<(u64, u64)>>>,
        purged: Arc<Mutex<Vec<u64>>>,
    }

    impl LogSink for MemSink {
        fn persist(
            &self,
            entries: Vec<Entry>,
            hard_state: Option<HardState>,
            done: Box<dyn FnOnce(io::Result<()>) + Send>,
        ) {
            self.calls.fetch_add(1, Ordering::Relaxed);
            if self.fail.load(Ordering::Relaxed) {
                done(Err(io::Error::from_raw_os_error(libc::EIO)));
                return;
            }
            let mut log = self.log.lock();
            if let Some(first) = entries.first() {
                log.retain(|e| e.index < first.index);
            }
            log.extend(entries);
            if let Some(hs) = hard_state {
                *self.hs.lock() = hs;
            }
            done(Ok(()));
        }

        fn persist_snapshot_mark(
            &self,
            index: u64,
            term: u64,
            done: Box<dyn FnOnce(io::Result<()>) + Send>,
        ) {
            self.marks.lock().push((index, term));
            done(Ok(()))
        }

        fn purge_below(&self, index: u64, _keep: usize) -> io::Result<()> {
            self.purged.lock().push(index);
            self.log.lock().retain(|e| e.index >= index);
            Ok(())
        }
    }

    /// Applies into a channel; everything applied counts as durable at once. `restore` records
    /// the snapshot and answers `restore_to` (a backend newer than the snapshot).
    struct DurableSm {
        tx: mpsc::Sender<(u64, Vec<u8>)>,
        applied: u64,
        restore_to: u64,
        restored: Arc<Mutex<Vec<SnapshotMeta>>>,
        /// The durable index is `min(applied, durable_cap)`: a backend that commits later.
        durable_cap: Arc<AtomicU64>,
    }

    impl StateMachine for DurableSm {
        fn apply(&mut self, index: u64, _term: u64, data: &[u8]) {
            self.applied = index;
            let _ = self.tx.send((index, data.to_vec()));
        }

        fn durable_index(&self) -> u64 {
            self.applied.min(self.durable_cap.load(Ordering::Acquire))
        }

        fn restore(&mut self, meta: &SnapshotMeta) -> Result<u64, String> {
            self.restored.lock().push(meta.clone());
            self.applied = self.restore_to.max(meta.index);
            Ok(self.applied)
        }
    }

    fn durable_sm(tx: mpsc::Sender<(u64, Vec<u8>)>) -> DurableSm {
        DurableSm {
            tx,
            applied: 0,
            restore_to: 0,
            restored: Arc::default(),
            durable_cap: Arc::new(AtomicU64::new(u64::MAX)),
        }
    }

    fn with_snapshots(cfg: NodeConfig, dir: &std::path::Path, count: u64) -> NodeConfig {
        NodeConfig {
            snapshots: SnapshotPolicy {
                count,
                catch_up: 5,
                max_snapshots: 3,
                max_wals: 1,
                dir: Some(SnapDir::new(Arc::new(crate::StdVfs::new()), dir)),
            },
            ..cfg
        }
    }

    /// Waits (bounded) for `cond`; panics with `what` if it never holds.
    fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !cond() {
            assert!(
                std::time::Instant::now() < deadline,
                "never happened: {what}"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    struct Recorder(mpsc::Sender<(u64, Vec<u8>)>);

    impl StateMachine for Recorder {
        fn apply(&mut self, index: u64, _term: u64, data: &[u8]) {
            let _ = self.0.send((index, data.to_vec()));
        }
    }

    fn fast(id: u64) -> NodeConfig {
        NodeConfig {
            tick: Duration::from_millis(10),
            ..NodeConfig::single(id)
        }
    }

    fn recv(rx: &mpsc::Receiver<(u64, Vec<u8>)>) -> (u64, Vec<u8>) {
        rx.recv_timeout(Duration::from_secs(10))
            .expect("entry applied within 10 s")
    }

    #[test]
    fn single_member_applies_proposals_in_order_and_serves_read_index() {
        let sink = MemSink::default();
        let (tx, rx) = mpsc::channel();
        let node = RaftNode::start(fast(1), sink.clone(), NoPeers, Recorder(tx)).unwrap();
        for i in 0..100u32 {
            node.propose(i.to_le_bytes().to_vec(), None);
        }
        let mut last_index = 0;
        for i in 0..100u32 {
            let (index, data) = recv(&rx);
            assert_eq!(data, i.to_le_bytes());
            assert!(index > last_index);
            last_index = index;
        }
        let (rtx, rrx) = mpsc::channel();
        for _ in 0..3 {
            let rtx = rtx.clone();
            node.read_index(Box::new(move |r| {
                let _ = rtx.send(r);
            }));
        }
        for _ in 0..3 {
            let idx = rrx.recv_timeout(Duration::from_secs(10)).unwrap().unwrap();
            assert!(
                idx >= last_index,
                "read index {idx} below applied {last_index}"
            );
            assert!(node.progress().applied() >= idx);
        }
        assert_eq!(node.progress().leader(), 1);
        // Every applied entry is in the durable log: nothing was applied before it was persisted.
        let logged: Vec<u64> = sink.log.lock().iter().map(|e| e.index).collect();
        assert!(logged.contains(&last_index));
        assert!(sink.hs.lock().term >= 1);
        node.shutdown();
    }

    #[test]
    fn restart_replays_the_persisted_log_above_the_applied_index() {
        let sink = MemSink::default();
        let (tx, rx) = mpsc::channel();
        let node = RaftNode::start(fast(1), sink.clone(), NoPeers, Recorder(tx)).unwrap();
        for i in 0..10u8 {
            node.propose(vec![i], None);
        }
        let applied: Vec<(u64, Vec<u8>)> = (0..10).map(|_| recv(&rx)).collect();
        node.shutdown();
        // Pretend the state machine made the first 4 durable; the rest must be applied again.
        let durable_applied = applied[3].0;
        let entries = sink.log.lock().clone();
        let cfg = NodeConfig {
            applied: durable_applied,
            hard_state: sink.hs.lock().clone(),
            entries,
            ..fast(1)
        };
        let (tx, rx) = mpsc::channel();
        let node = RaftNode::start(cfg, sink.clone(), NoPeers, Recorder(tx)).unwrap();
        for want in &applied[4..] {
            assert_eq!(&recv(&rx), want);
        }
        node.propose(b"after restart".to_vec(), None);
        let (index, data) = recv(&rx);
        assert_eq!(data, b"after restart");
        assert!(index > applied[9].0);
        node.shutdown();
    }

    #[test]
    fn persist_failure_stops_the_node() {
        let sink = MemSink::default();
        let (tx, rx) = mpsc::channel();
        let node = RaftNode::start(fast(1), sink.clone(), NoPeers, Recorder(tx)).unwrap();
        node.propose(b"ok".to_vec(), None);
        assert_eq!(recv(&rx).1, b"ok");
        sink.fail.store(true, Ordering::Relaxed);
        node.propose(b"lost".to_vec(), None);
        // The failed ready is never applied, and later proposals are refused.
        assert!(rx.recv_timeout(Duration::from_millis(300)).is_err());
        let (etx, erx) = mpsc::channel();
        node.propose(
            b"refused".to_vec(),
            Some(Box::new(move |e| {
                let _ = etx.send(e);
            })),
        );
        let err = erx.recv_timeout(Duration::from_secs(10)).unwrap();
        assert!(matches!(err, RaftNodeError::PersistFailed(_)), "{err:?}");
        node.shutdown();
    }

    #[test]
    fn snapshots_every_count_compact_the_log_purge_and_keep_max_files() {
        let dir = tempfile::tempdir().unwrap();
        let sink = MemSink::default();
        let (tx, rx) = mpsc::channel();
        let cfg = with_snapshots(fast(1), dir.path(), 10);
        let node = RaftNode::start(cfg, sink.clone(), NoPeers, durable_sm(tx)).unwrap();
        for i in 0..100u32 {
            node.propose(i.to_le_bytes().to_vec(), None);
            // One at a time, so every applied batch is a chance to snapshot.
            recv(&rx);
        }
        let applied = node.progress().applied();
        wait_for("a snapshot within 10 of the applied index", || {
            node.progress().snapshot_index.load(Ordering::Acquire) + 10 > applied
        });
        // Shutdown lets the snapshot thread finish its job (file, marker, purge, prune).
        node.shutdown();
        let marks = sink.marks.lock().clone();
        // At least `count` apart (more while the snapshot thread was busy with the last one).
        assert!(marks.len() >= 2, "{marks:?}");
        for w in marks.windows(2) {
            assert!(w[1].0 >= w[0].0 + 10, "{marks:?}");
        }
        assert!(marks.last().unwrap().0 + 10 > applied, "{marks:?}");
        // The newest `max_snapshots` files are kept, the WAL had a marker for each.
        let sd = SnapDir::new(Arc::new(crate::StdVfs::new()), dir.path());
        let files: Vec<(u64, u64)> = sd
            .list()
            .unwrap()
            .iter()
            .map(|f| (f.index, f.term))
            .collect();
        assert_eq!(files, marks[marks.len().saturating_sub(3)..], "{marks:?}");
        let newest = sd.load(sd.list().unwrap().last().unwrap()).unwrap();
        assert_eq!(newest.conf_state.voters, vec![1]);
        // Each snapshot purged the WAL below the one before it.
        let purged = sink.purged.lock().clone();
        let want: Vec<u64> = marks[..marks.len() - 1].iter().map(|m| m.0).collect();
        assert_eq!(purged, want);
        assert!(sink.log.lock().first().unwrap().index >= want[want.len() - 1]);
        // The in-memory log kept only the catch-up entries below a snapshot.
        let first = node.progress().log_first_index.load(Ordering::Acquire);
        assert!(
            marks.iter().any(|m| m.0 - 5 == first),
            "first {first}, {marks:?}"
        );
    }

    #[test]
    fn restart_from_snapshot_replays_only_the_tail() {
        let dir = tempfile::tempdir().unwrap();
        let sink = MemSink::default();
        let (tx, rx) = mpsc::channel();
        let node = RaftNode::start(
            with_snapshots(fast(1), dir.path(), 10),
            sink.clone(),
            NoPeers,
            durable_sm(tx),
        )
        .unwrap();
        let mut all = Vec::new();
        for i in 0..45u32 {
            node.propose(i.to_le_bytes().to_vec(), None);
            all.push(recv(&rx));
        }
        wait_for("a snapshot", || {
            node.progress().snapshot_index.load(Ordering::Acquire) >= 30
        });
        // A tail of at least one entry after the newest snapshot, and too few requests since
        // the last snapshot for another one. Snapshots start at the durable index once 10
        // requests were applied since the previous one, so where the last one fell is timing;
        // a snapshot still in progress only lowers the count since it.
        loop {
            let snapped = node.progress().snapshot_index.load(Ordering::Acquire);
            let since = all.iter().filter(|(i, _)| *i > snapped).count();
            let room = 10usize.saturating_sub(since + 1);
            let tail = if room == 0 { 1 } else { room.min(5) };
            for i in 0..tail as u32 {
                node.propose(i.to_le_bytes().to_vec(), None);
                all.push(recv(&rx));
            }
            if room > 0 {
                break;
            }
        }
        node.shutdown();
        drop(node);
        let sd = SnapDir::new(Arc::new(crate::StdVfs::new()), dir.path());
        let (snap, skipped) = sd.load_newest().unwrap();
        assert!(skipped.is_empty());
        let snap = snap.unwrap();
        let mut cfg = NodeConfig {
            hard_state: sink.hs.lock().clone(),
            entries: sink.log.lock().clone(),
            applied: snap.index,
            ..with_snapshots(fast(1), dir.path(), 10)
        };
        crate::raft_node::restore_from_snapshot(&mut cfg, Some(&snap)).unwrap();
        assert_eq!(cfg.entries.first().unwrap().index, snap.index + 1);
        let (tx, rx) = mpsc::channel();
        let mut sm = durable_sm(tx);
        sm.applied = snap.index;
        let node = RaftNode::start(cfg, sink.clone(), NoPeers, sm).unwrap();
        for want in all.iter().filter(|(i, _)| *i > snap.index) {
            assert_eq!(&recv(&rx), want);
        }
        node.propose(b"after".to_vec(), None);
        let (index, data) = recv(&rx);
        assert_eq!(data, b"after");
        assert!(index > all.last().unwrap().0);
        node.shutdown();
    }

    #[test]
    fn an_idle_member_snapshots_once_its_backend_commits_after_the_last_apply() {
        let dir = tempfile::tempdir().unwrap();
        let (tx, rx) = mpsc::channel();
        let sm = durable_sm(tx);
        let cap = sm.durable_cap.clone();
        cap.store(0, Ordering::Release);
        let node = RaftNode::start(
            with_snapshots(fast(1), dir.path(), 10),
            MemSink::default(),
            NoPeers,
            sm,
        )
        .unwrap();
        let mut last = 0;
        for i in 0..15u32 {
            node.propose(i.to_le_bytes().to_vec(), None);
            last = recv(&rx).0;
        }
        // Nothing was durable while the entries were applied: no snapshot yet.
        assert_eq!(node.progress().snapshot_index.load(Ordering::Acquire), 0);
        // The backend commits with no apply after it, and no more writes come.
        cap.store(u64::MAX, Ordering::Release);
        wait_for("a snapshot at the last applied index", || {
            node.progress().snapshot_index.load(Ordering::Acquire) == last
        });
        node.shutdown();
    }

    #[test]
    fn a_received_snapshot_is_installed_in_apply_order() {
        use raft::eraftpb::MessageType;
        let dir = tempfile::tempdir().unwrap();
        let sink = MemSink::default();
        let (tx, rx) = mpsc::channel();
        let mut sm = durable_sm(tx);
        // The leader's backend file was at index 60 when it was copied.
        sm.restore_to = 60;
        let restored = sm.restored.clone();
        let cfg = NodeConfig {
            voters: vec![1, 2],
            election_ticks: 1000,
            ..with_snapshots(fast(2), dir.path(), 1000)
        };
        let node = RaftNode::start(cfg, sink.clone(), NoPeers, sm).unwrap();
        let mut snap_msg = Message::default();
        snap_msg.set_msg_type(MessageType::MsgSnapshot);
        snap_msg.from = 1;
        snap_msg.to = 2;
        snap_msg.term = 5;
        let md = snap_msg.mut_snapshot().mut_metadata();
        md.index = 50;
        md.term = 5;
        md.set_conf_state(ConfState::from((vec![1, 2], vec![])));
        assert!(node.tx.send(CoreMsg::TestStep(snap_msg)).is_ok());
        // Entries 51..=70 from the leader, all committed.
        let mut app = Message::default();
        app.set_msg_type(MessageType::MsgAppend);
        app.from = 1;
        app.to = 2;
        app.term = 5;
        app.index = 50;
        app.log_term = 5;
        app.commit = 70;
        app.entries = (51..=70u64)
            .map(|i| Entry {
                index: i,
                term: 5,
                data: i.to_le_bytes().to_vec().into(),
                ..Default::default()
            })
            .collect();
        assert!(node.tx.send(CoreMsg::TestStep(app)).is_ok());
        // Entries the installed backend holds (<= 60) are not applied again.
        for want in 61..=70u64 {
            let (index, data) = recv(&rx);
            assert_eq!(index, want);
            assert_eq!(data, want.to_le_bytes());
        }
        assert_eq!(restored.lock().len(), 1);
        assert_eq!(restored.lock()[0].index, 50);
        assert_eq!(node.progress().snapshot_index.load(Ordering::Acquire), 50);
        node.shutdown();
        // Durable: the metadata file, and the WAL marker before entry 51.
        let sd = SnapDir::new(Arc::new(crate::StdVfs::new()), dir.path());
        let snap = sd.load_newest().unwrap().0.unwrap();
        assert_eq!((snap.index, snap.term), (50, 5));
        assert_eq!(snap.conf_state.voters, vec![1, 2]);
        assert_eq!(sink.marks.lock().as_slice(), &[(50, 5)]);
        let logged: Vec<u64> = sink.log.lock().iter().map(|e| e.index).collect();
        assert_eq!(logged, (51..=70).collect::<Vec<_>>());
    }

    /// Persists into memory and completes every call before returning, on the caller's thread,
    /// like the WAL when it is idle (`Wal::append_inline`).
    #[derive(Clone, Default)]
    struct InlineSink {
        log: Arc<Mutex<Vec<Entry>>>,
    }

    impl LogSink for InlineSink {
        fn persist(
            &self,
            entries: Vec<Entry>,
            _hard_state: Option<HardState>,
            done: Box<dyn FnOnce(io::Result<()>) + Send>,
        ) {
            self.log.lock().extend(entries);
            done(Ok(()));
        }
    }

    /// A single member whose core never ticks during the test: a message left in the inbox
    /// with nobody to take it would wait for the tick and fail the test's 10 s bounds.
    fn untimed() -> NodeConfig {
        NodeConfig {
            tick: Duration::from_secs(3600),
            threads: ThreadOptions {
                drive: true,
                ..ThreadOptions::default()
            },
            ..NodeConfig::single(1)
        }
    }

    #[test]
    fn a_proposal_to_an_idle_member_runs_and_applies_on_the_proposing_thread() {
        let (tx, rx) = mpsc::channel();
        let sink = InlineSink::default();
        let node = RaftNode::start(untimed(), sink.clone(), NoPeers, ThreadRecorder(tx)).unwrap();
        wait_for("leader", || node.progress().leader() == 1);
        let me = std::thread::current().name().unwrap_or("").to_string();
        let mut driven = 0;
        for i in 0..20u8 {
            // Let the core thread finish the last turn and park.
            std::thread::sleep(Duration::from_millis(10));
            node.propose_driving(vec![i], None);
            // Applied before propose_driving returned, here, when the core was parked.
            let (_, data, thread) = match rx.try_recv() {
                Ok(v) => v,
                Err(_) => recv_t(&rx),
            };
            assert_eq!(data, vec![i]);
            if thread == me {
                driven += 1;
            }
        }
        assert!(driven > 0, "no proposal ran on the proposing thread");
        // Every applied entry is in the log: the driven turns kept persist-before-apply.
        wait_for("20 entries logged", || sink.log.lock().len() >= 21);
        node.shutdown();
    }

    #[test]
    fn driving_and_plain_proposals_from_many_threads_are_all_applied_in_each_senders_order() {
        let (tx, rx) = mpsc::channel();
        let node =
            RaftNode::start(untimed(), InlineSink::default(), NoPeers, Recorder(tx)).unwrap();
        wait_for("leader", || node.progress().leader() == 1);
        const PER: u32 = 300;
        let senders: Vec<_> = (0..4u32)
            .map(|s| {
                let node = node.clone();
                std::thread::spawn(move || {
                    for i in 0..PER {
                        let data = [s.to_le_bytes(), i.to_le_bytes()].concat();
                        if s == 0 {
                            node.propose(data, None);
                        } else {
                            node.propose_driving(data, None);
                        }
                        if i % 50 == 0 {
                            std::thread::sleep(Duration::from_millis(2));
                        }
                    }
                })
            })
            .collect();
        let mut next = [0u32; 4];
        let mut last = 0;
        for _ in 0..4 * PER {
            let (index, data) = recv(&rx);
            assert!(index > last, "index {index} after {last}");
            last = index;
            let s = u32::from_le_bytes(data[..4].try_into().unwrap()) as usize;
            let i = u32::from_le_bytes(data[4..].try_into().unwrap());
            assert_eq!(i, next[s], "sender {s} out of order");
            next[s] += 1;
        }
        for t in senders {
            t.join().unwrap();
        }
        assert_eq!(next, [PER; 4]);
        // Reads still complete after driven turns (the core thread is woken for them).
        let (rtx, rrx) = mpsc::channel();
        node.read_index(Box::new(move |r| {
            let _ = rtx.send(r);
        }));
        let idx = rrx.recv_timeout(Duration::from_secs(10)).unwrap().unwrap();
        assert!(idx >= last);
        node.shutdown();
        // After shutdown a driving proposal is refused, not lost.
        let (etx, erx) = mpsc::channel();
        node.propose_driving(
            vec![1],
            Some(Box::new(move |e| {
                let _ = etx.send(e);
            })),
        );
        assert!(matches!(
            erx.recv_timeout(Duration::from_secs(10)),
            Ok(RaftNodeError::Stopped)
        ));
    }

    /// Records the thread each entry was applied on; entry `slow` takes 100 ms.
    struct ThreadRecorder(mpsc::Sender<(u64, Vec<u8>, String)>);

    impl StateMachine for ThreadRecorder {
        fn apply(&mut self, index: u64, _term: u64, data: &[u8]) {
            let name = std::thread::current().name().unwrap_or("").to_string();
            let _ = self.0.send((index, data.to_vec(), name));
            if data == b"slow" {
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }

    fn recv_t(rx: &mpsc::Receiver<(u64, Vec<u8>, String)>) -> (u64, Vec<u8>, String) {
        rx.recv_timeout(Duration::from_secs(10))
            .expect("entry applied within 10 s")
    }

    #[test]
    fn small_batches_apply_on_the_raft_thread_large_ones_and_queued_ones_on_the_apply_thread() {
        let cfg = NodeConfig {
            threads: ThreadOptions {
                inline_apply_max: 4,
                ..ThreadOptions::default()
            },
            ..fast(1)
        };
        let (tx, rx) = mpsc::channel();
        let node = RaftNode::start(cfg, MemSink::default(), NoPeers, ThreadRecorder(tx)).unwrap();
        let mut last = 0;
        let mut next = |rx: &mpsc::Receiver<_>| {
            let (index, data, thread) = recv_t(rx);
            assert!(index > last, "index {index} applied after {last}");
            last = index;
            (data, thread)
        };
        // On an idle node a single entry is applied by the raft thread itself.
        let mut inline = false;
        for i in 0..20u8 {
            node.propose(vec![i], None);
            if next(&rx).1 == "ringkv-raft" {
                inline = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(inline, "no single entry was applied on the raft thread");
        // While `slow` is being applied (on either thread), 20 proposals pile up: they are
        // committed as one batch larger than 4, or queue behind `slow` on the apply thread.
        node.propose(b"slow".to_vec(), None);
        assert_eq!(next(&rx).0, b"slow");
        for i in 0..20u8 {
            node.propose(vec![b'b', i], None);
        }
        for i in 0..20u8 {
            let (data, thread) = next(&rx);
            assert_eq!(data, vec![b'b', i]);
            assert_eq!(thread, "ringkv-apply", "entry b{i}");
        }
        node.shutdown();
    }

    #[test]
    fn inline_apply_off_applies_everything_on_the_apply_thread() {
        let cfg = NodeConfig {
            threads: ThreadOptions {
                inline_apply_max: 0,
                ..ThreadOptions::default()
            },
            ..fast(1)
        };
        let (tx, rx) = mpsc::channel();
        let node = RaftNode::start(cfg, MemSink::default(), NoPeers, ThreadRecorder(tx)).unwrap();
        for i in 0..10u8 {
            node.propose(vec![i], None);
            let (_, data, thread) = recv_t(&rx);
            assert_eq!(data, vec![i]);
            assert_eq!(thread, "ringkv-apply");
            std::thread::sleep(Duration::from_millis(5));
        }
        node.shutdown();
    }

    type PersistDone = Box<dyn FnOnce(io::Result<()>) + Send>;

    /// Holds every persist completion until the test releases it.
    #[derive(Clone, Default)]
    struct GateSink {
        held: Arc<Mutex<Vec<PersistDone>>>,
    }

    impl LogSink for GateSink {
        fn persist(
            &self,
            _entries: Vec<Entry>,
            _hard_state: Option<HardState>,
            done: Box<dyn FnOnce(io::Result<()>) + Send>,
        ) {
            self.held.lock().push(done);
        }
    }

    impl GateSink {
        fn release(&self) {
            let held: Vec<_> = std::mem::take(&mut *self.held.lock());
            for done in held {
                done(Ok(()));
            }
        }
    }

    #[test]
    fn nothing_is_applied_inline_before_its_persist_completes() {
        let sink = GateSink::default();
        let (tx, rx) = mpsc::channel();
        let node = RaftNode::start(fast(1), sink.clone(), NoPeers, ThreadRecorder(tx)).unwrap();
        // Let the election and the leader's empty entry through.
        wait_for("leader", || {
            sink.release();
            node.progress().leader() == 1 && node.progress().applied() >= 1
        });
        node.propose(b"held".to_vec(), None);
        wait_for("the proposal reaches the sink", || {
            !sink.held.lock().is_empty()
        });
        std::thread::sleep(Duration::from_millis(100));
        assert!(
            rx.try_recv().is_err(),
            "applied while its persist was still pending"
        );
        sink.release();
        let (_, data, thread) = recv_t(&rx);
        assert_eq!(data, b"held");
        // The completion ran on this test thread; the raft thread applied it (it was idle).
        assert_eq!(thread, "ringkv-raft");
        node.shutdown();
    }

    /// A sink whose persist blocks the calling thread (the core: the WAL is written inline)
    /// while the gate is shut, so proposals sent meanwhile queue for the core's next turn.
    #[derive(Clone, Default)]
    struct BlockingSink {
        inner: MemSink,
        shut: Arc<(Mutex<bool>, parking_lot::Condvar)>,
        blocked: Arc<std::sync::atomic::AtomicU64>,
    }

    impl LogSink for BlockingSink {
        fn persist(
            &self,
            entries: Vec<Entry>,
            hard_state: Option<HardState>,
            done: Box<dyn FnOnce(io::Result<()>) + Send>,
        ) {
            let (shut, cv) = &*self.shut;
            let mut g = shut.lock();
            if *g {
                self.blocked.fetch_add(1, Ordering::AcqRel);
                while *g {
                    cv.wait(&mut g);
                }
            }
            drop(g);
            self.inner.persist(entries, hard_state, done);
        }

        fn persist_snapshot_mark(
            &self,
            index: u64,
            term: u64,
            done: Box<dyn FnOnce(io::Result<()>) + Send>,
        ) {
            self.inner.persist_snapshot_mark(index, term, done);
        }

        fn purge_below(&self, index: u64, keep: usize) -> io::Result<()> {
            self.inner.purge_below(index, keep)
        }
    }

    impl BlockingSink {
        fn set_shut(&self, shut: bool) {
            *self.shut.0.lock() = shut;
            self.shut.1.notify_all();
        }

        /// Shuts the gate, proposes `first` (the core blocks in its persist), proposes `rest`
        /// while it is blocked, and opens the gate: `rest` arrive in one core turn.
        fn propose_during_a_blocked_turn(&self, node: &RaftNode, first: Vec<u8>, rest: &[Vec<u8>]) {
            let before = self.blocked.load(Ordering::Acquire);
            self.set_shut(true);
            node.propose(first, None);
            wait_for("the core blocks in persist", || {
                self.blocked.load(Ordering::Acquire) > before
            });
            for d in rest {
                node.propose(d.clone(), None);
            }
            self.set_shut(false);
        }
    }

    /// Applies into a channel, splitting batch entries: (index, request) per request.
    struct SplittingSm {
        tx: mpsc::Sender<(u64, Vec<u8>, u64)>,
        applied: u64,
    }

    impl StateMachine for SplittingSm {
        fn apply(&mut self, index: u64, _term: u64, data: &[u8]) {
            self.applied = index;
            if crate::raft_node::is_batch(data) {
                let parts = crate::raft_node::split_batch(data).unwrap();
                let n = parts.len() as u64;
                for p in parts {
                    let _ = self.tx.send((index, p.to_vec(), n));
                }
            } else {
                let _ = self.tx.send((index, data.to_vec(), 1));
            }
        }

        fn durable_index(&self) -> u64 {
            self.applied
        }
    }

    fn batching(batch_bytes: usize) -> NodeConfig {
        NodeConfig {
            batch_bytes,
            ..fast(1)
        }
    }

    #[test]
    fn proposals_of_one_turn_share_a_batch_entry_in_arrival_order() {
        let sink = BlockingSink::default();
        let (tx, rx) = mpsc::channel();
        let sm = SplittingSm { tx, applied: 0 };
        let node = RaftNode::start(batching(1 << 16), sink.clone(), NoPeers, sm).unwrap();
        wait_for("leader", || node.progress().leader() == 1);
        let rest: Vec<Vec<u8>> = (1..=20u8).map(|i| vec![0x0a, i]).collect();
        sink.propose_during_a_blocked_turn(&node, vec![0x0a, 0], &rest);
        let recv3 = || {
            rx.recv_timeout(Duration::from_secs(10))
                .expect("applied within 10 s")
        };
        let (first_index, data, n) = recv3();
        assert_eq!(
            (data, n),
            (vec![0x0a, 0], 1),
            "a lone proposal stays a plain entry"
        );
        let mut batch_index = None;
        for want in &rest {
            let (index, data, n) = recv3();
            assert_eq!(&data, want);
            assert_eq!(n, 20, "all twenty in one entry");
            assert!(index > first_index);
            assert_eq!(*batch_index.get_or_insert(index), index);
        }
        // The log holds one entry for the twenty, marked as a batch.
        let logged = sink.inner.log.lock().clone();
        let e = logged
            .iter()
            .find(|e| Some(e.index) == batch_index)
            .unwrap();
        assert!(crate::raft_node::is_batch(&e.data));
        assert_eq!(crate::raft_node::requests_in(&e.data), 20);
        // Committed-proposal counts count requests.
        wait_for("commit counted", || {
            node.progress().proposals_committed.load(Ordering::Acquire) >= 21
        });
        node.shutdown();
    }

    #[test]
    fn batches_close_at_batch_bytes_and_a_larger_proposal_goes_alone() {
        let sink = BlockingSink::default();
        let (tx, rx) = mpsc::channel();
        let sm = SplittingSm { tx, applied: 0 };
        // Header 6 + 3 × (4 + 10) = 48: three 10-byte proposals per batch.
        let node = RaftNode::start(batching(50), sink.clone(), NoPeers, sm).unwrap();
        wait_for("leader", || node.progress().leader() == 1);
        let mut rest: Vec<Vec<u8>> = (1..=7u8).map(|i| vec![i; 10]).collect();
        rest.insert(4, vec![0xee; 100]);
        sink.propose_during_a_blocked_turn(&node, vec![0x0a], &rest);
        let mut got = Vec::new();
        for _ in 0..=rest.len() {
            got.push(
                rx.recv_timeout(Duration::from_secs(10))
                    .expect("applied within 10 s"),
            );
        }
        let data: Vec<&Vec<u8>> = got[1..].iter().map(|(_, d, _)| d).collect();
        assert_eq!(data, rest.iter().collect::<Vec<_>>(), "arrival order");
        let sizes: Vec<u64> = got[1..].iter().map(|(_, _, n)| *n).collect();
        // [1,2,3] [4] (the next is too large to join) [big] [5,6,7]
        assert_eq!(sizes, [3, 3, 3, 1, 1, 3, 3, 3]);
        let indexes: Vec<u64> = got[1..].iter().map(|(i, _, _)| *i).collect();
        assert!(indexes.windows(2).all(|w| w[0] <= w[1]), "{indexes:?}");
        node.shutdown();
    }

    #[test]
    fn a_batch_entry_counts_its_requests_toward_the_snapshot_count_and_catch_up() {
        let dir = tempfile::tempdir().unwrap();
        let sink = BlockingSink::default();
        let (tx, rx) = mpsc::channel();
        let sm = SplittingSm { tx, applied: 0 };
        // Snapshot every 10 requests, keep 5 requests below it.
        let cfg = with_snapshots(batching(1 << 16), dir.path(), 10);
        let node = RaftNode::start(cfg, sink.clone(), NoPeers, sm).unwrap();
        wait_for("leader", || node.progress().leader() == 1);
        let rest: Vec<Vec<u8>> = (0..12u8).map(|i| vec![0x0a, i]).collect();
        let mut last = 0;
        // Entries: 1 the leader's empty one, 2 a lone proposal, 3 a batch of 12.
        sink.propose_during_a_blocked_turn(&node, vec![0x0a], &rest);
        for _ in 0..13 {
            last = rx.recv_timeout(Duration::from_secs(10)).unwrap().0;
        }
        // Counting entries, no snapshot would be due before index 10.
        assert_eq!(last, 3);
        wait_for("a snapshot at the first batch entry", || {
            node.progress().snapshot_index.load(Ordering::Acquire) == 3
        });
        // Entries: 4 a lone proposal, 5 a batch of 12: 13 requests after the snapshot.
        sink.propose_during_a_blocked_turn(&node, vec![0x0a], &rest);
        for _ in 0..13 {
            last = rx.recv_timeout(Duration::from_secs(10)).unwrap().0;
        }
        assert_eq!(last, 5);
        wait_for("a snapshot at the second batch entry", || {
            node.progress().snapshot_index.load(Ordering::Acquire) == 5
        });
        // 5 requests kept below index 5: entry 4 (1) and entry 3 (12). Counting entries, the
        // log would keep down to index 1.
        wait_for("the log compacted to index 3", || {
            node.progress().log_first_index.load(Ordering::Acquire) == 3
        });
        node.shutdown();
        let marks: Vec<u64> = sink.inner.marks.lock().iter().map(|m| m.0).collect();
        assert_eq!(marks, [3, 5]);
    }
}

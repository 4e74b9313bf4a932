//! The raft core thread and the apply thread. See the module doc of `raft_node` for the picture
//! and the invariants.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, unbounded};
use raft::eraftpb::{ConfChange, ConfChangeV2, ConfState, Entry, EntryType, HardState, Snapshot};
use raft::prelude::Message;
use raft::storage::MemStorage;
use raft::{RawNode, SnapshotStatus, StateRole};

use super::transport::Transport;
use super::{NodeProgress, SharedProgress};

/// Durable storage of the raft log: the WAL, seen from raft.
///
/// Failure leaves the log in an unknown state: the node stops and never retries (an fdatasync
/// error means the kernel may have dropped the data).
pub trait LogSink: Send + 'static {
    /// Appends `entries` and, when given, `hard_state`. `done` runs once the fdatasync that covers
    /// them returned, with its result. Calls complete in the order they were made.
    fn persist(
        &self,
        entries: Vec<Entry>,
        hard_state: Option<HardState>,
        done: Box<dyn FnOnce(io::Result<()>) + Send>,
    );
}

/// What committed entries are applied to (MVCC, leases, membership, …). Runs on the apply thread.
pub trait StateMachine: Send + 'static {
    /// Applies one committed normal entry. `index` strictly increases across calls; entries at or
    /// below the applied index given at startup are never passed again.
    fn apply(&mut self, index: u64, term: u64, data: &[u8]);

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
        }
    }
}

enum CoreMsg {
    Propose {
        data: Vec<u8>,
        rejected: Option<Box<dyn FnOnce(RaftNodeError) + Send>>,
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
    Shutdown,
}

/// The leader's view of one member's replication, for MemberPromote and status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerProgress {
    pub id: u64,
    /// Highest log index known to be replicated on the member.
    pub matched: u64,
    pub is_learner: bool,
    /// The leader heard from the member within the last election timeout.
    pub recent_active: bool,
}

/// Handle to a running member. Cheap to clone; every method is non-blocking.
#[derive(Clone)]
pub struct RaftNode {
    tx: Sender<CoreMsg>,
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
        let (tx, rx) = unbounded();
        let (apply_tx, apply_rx) = unbounded::<Vec<Entry>>();
        let progress: SharedProgress = Arc::new(NodeProgress::default());
        progress.applied.store(cfg.applied, Ordering::Release);
        let core = Core::new(
            &cfg,
            sink,
            Box::new(transport),
            tx.clone(),
            apply_tx,
            progress.clone(),
        )?;
        let core_thread = std::thread::Builder::new()
            .name("ringkv-raft".into())
            .spawn(move || core.run(rx))
            .map_err(|e| RaftNodeError::Raft(format!("spawn raft thread: {e}")))?;
        let apply_thread = {
            let tx = tx.clone();
            let progress = progress.clone();
            let applied = cfg.applied;
            std::thread::Builder::new()
                .name("ringkv-apply".into())
                .spawn(move || apply_loop(sm, apply_rx, tx, progress, applied))
                .map_err(|e| RaftNodeError::Raft(format!("spawn apply thread: {e}")))?
        };
        Ok(RaftNode {
            tx,
            progress,
            threads: Arc::new(parking_lot::Mutex::new(vec![core_thread, apply_thread])),
        })
    }

    /// Proposes `data` as a normal entry. Success is seen when the state machine applies it;
    /// `rejected` runs if raft refuses the proposal (no leader) or the node is stopped.
    pub fn propose(&self, data: Vec<u8>, rejected: Option<Box<dyn FnOnce(RaftNodeError) + Send>>) {
        if let Err(crossbeam_channel::SendError(CoreMsg::Propose {
            rejected: Some(r), ..
        })) = self.tx.send(CoreMsg::Propose { data, rejected })
        {
            r(RaftNodeError::Stopped);
        }
    }

    /// Asks for a linearizable read point. Concurrent calls share one ReadIndex round.
    pub fn read_index(&self, done: ReadIndexDone) {
        if let Err(crossbeam_channel::SendError(CoreMsg::ReadIndex(done))) =
            self.tx.send(CoreMsg::ReadIndex(done))
        {
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
        if let Err(crossbeam_channel::SendError(CoreMsg::ProposeConfChange {
            rejected: Some(r),
            ..
        })) = self.tx.send(CoreMsg::ProposeConfChange { cc, rejected })
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
        if let Err(crossbeam_channel::SendError(CoreMsg::PeerProgress(done))) =
            self.tx.send(CoreMsg::PeerProgress(done))
        {
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
    raw: RawNode<MemStorage>,
    sink: L,
    transport: Box<dyn Transport>,
    /// Ticks since start; read rounds remember when they were sent.
    ticks: u64,
    /// A read round unanswered for this many ticks is sent again (the leader it went to may
    /// have lost leadership and dropped it).
    read_retry_ticks: u64,
    tx: Sender<CoreMsg>,
    apply_tx: Sender<Vec<Entry>>,
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
}

fn to_raft_err(e: raft::Error) -> RaftNodeError {
    RaftNodeError::Raft(e.to_string())
}

impl<L: LogSink> Core<L> {
    fn new(
        cfg: &NodeConfig,
        sink: L,
        transport: Box<dyn Transport>,
        tx: Sender<CoreMsg>,
        apply_tx: Sender<Vec<Entry>>,
        progress: SharedProgress,
    ) -> Result<Self, RaftNodeError> {
        let storage = MemStorage::new();
        let existing = cfg.hard_state.term > 0 || !cfg.entries.is_empty() || cfg.snapshot_index > 0;
        {
            let mut w = storage.wl();
            if existing {
                let conf = cfg
                    .conf_state
                    .clone()
                    .unwrap_or_else(|| ConfState::from((cfg.voters.clone(), vec![])));
                if cfg.snapshot_index > 0 {
                    let mut snap = Snapshot::default();
                    snap.mut_metadata().index = cfg.snapshot_index;
                    snap.mut_metadata().term = cfg.snapshot_term;
                    *snap.mut_metadata().mut_conf_state() = conf;
                    w.apply_snapshot(snap).map_err(to_raft_err)?;
                } else {
                    w.set_conf_state(conf);
                }
                w.append(&cfg.entries).map_err(to_raft_err)?;
                let mut hs = cfg.hard_state.clone();
                // Invariant 3: anything applied was committed.
                let last = cfg.entries.last().map_or(cfg.snapshot_index, |e| e.index);
                hs.commit = hs.commit.max(cfg.applied).min(last);
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
        let raft_cfg = raft::Config {
            id: cfg.id,
            election_tick: cfg.election_ticks,
            heartbeat_tick: cfg.heartbeat_ticks,
            applied: cfg.applied,
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
        })
    }

    fn run(mut self, rx: Receiver<CoreMsg>) {
        let mut next_tick = Instant::now() + self.tick;
        loop {
            let wait = next_tick.saturating_duration_since(Instant::now());
            let first = match rx.recv_timeout(wait) {
                Ok(m) => Some(m),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => return,
            };
            // Drain everything queued: all proposals of this round go into one Ready.
            for msg in first.into_iter().chain(rx.try_iter()) {
                if !self.handle(msg) {
                    self.fail_all_reads(RaftNodeError::Stopped);
                    return;
                }
            }
            if Instant::now() >= next_tick {
                self.raw.tick();
                self.ticks += 1;
                self.retry_stale_read_rounds();
                next_tick += self.tick;
            }
            self.start_read_round();
            self.on_ready();
            self.publish_progress();
        }
    }

    /// Returns `false` on shutdown.
    fn handle(&mut self, msg: CoreMsg) -> bool {
        match msg {
            CoreMsg::Propose { data, rejected } => {
                if let Some(why) = &self.failed {
                    if let Some(r) = rejected {
                        r(RaftNodeError::PersistFailed(why.clone()));
                    }
                } else if let Err(e) = self.raw.propose(vec![], data) {
                    self.progress
                        .proposals_failed
                        .fetch_add(1, Ordering::Relaxed);
                    if let Some(r) = rejected {
                        r(match e {
                            raft::Error::ProposalDropped if self.raw.raft.leader_id == 0 => {
                                RaftNodeError::NoLeader
                            }
                            raft::Error::ProposalDropped => RaftNodeError::ProposalDropped,
                            other => to_raft_err(other),
                        });
                    }
                }
            }
            CoreMsg::ReadIndex(done) => match &self.failed {
                Some(why) => done(Err(RaftNodeError::PersistFailed(why.clone()))),
                None => self.read_batch.push(done),
            },
            CoreMsg::Persisted { number, result } => self.on_persisted(number, result),
            CoreMsg::Applied(index) => {
                self.applied = index;
                self.raw.advance_apply_to(index);
                self.release_reads();
            }
            CoreMsg::Shutdown => return false,
            other => self.handle_peer_msg(other),
        }
        true
    }

    /// Messages of the cluster: peer traffic, membership, leadership transfer.
    fn handle_peer_msg(&mut self, msg: CoreMsg) {
        match msg {
            CoreMsg::Step(m) => {
                if self.failed.is_some() {
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
            CoreMsg::TransferLeader(to) => self.raw.transfer_leader(to),
            CoreMsg::PeerProgress(done) => {
                let mut out = Vec::new();
                if self.raw.raft.state == StateRole::Leader {
                    let conf = self.raw.raft.prs().conf();
                    let learners = conf.learners().clone();
                    for (id, pr) in self.raw.raft.prs().iter() {
                        out.push(PeerProgress {
                            id: *id,
                            matched: pr.matched,
                            is_learner: learners.contains(id),
                            recent_active: pr.recent_active,
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
            | CoreMsg::Shutdown => unreachable!("handled by handle()"),
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
        // Invariant 4: the leader's messages leave now.
        let msgs = rd.take_messages();
        if !msgs.is_empty() {
            self.transport.send(msgs);
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
        if !rd.snapshot().is_empty() {
            // Snapshot installation arrives with peers (the cluster issue); a single member never
            // receives one.
            self.fail(format!(
                "snapshot install at index {} is not supported yet",
                rd.snapshot().get_metadata().index
            ));
            return;
        }
        self.send_committed(rd.take_committed_entries());
        let entries = rd.take_entries();
        if let Some(hs) = rd.hs() {
            self.pending_hs = Some(hs.clone());
        }
        let number = rd.number();
        let must_persist = !entries.is_empty() || rd.must_sync();
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
            self.sink.persist(
                entries,
                hs,
                Box::new(move |result| {
                    let _ = tx.send(CoreMsg::Persisted { number, result });
                }),
            );
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
                        let result = self.raw.apply_conf_change(&cc);
                        self.conf_changed(result);
                    }
                }
                EntryType::EntryNormal => {}
            }
        }
        let n = entries.iter().filter(|e| !e.data.is_empty()).count() as u64;
        self.progress
            .proposals_committed
            .fetch_add(n, Ordering::Relaxed);
        if self.apply_tx.send(entries).is_err() {
            self.fail("apply thread exited".to_string());
        }
    }

    fn conf_changed(&mut self, result: raft::Result<ConfState>) {
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
                self.raw.mut_store().wl().set_conf_state(cs)
            }
            Err(e) => tracing::warn!(error = %e, "conf change refused"),
        }
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
    }
}

fn apply_loop<S: StateMachine>(
    mut sm: S,
    rx: Receiver<Vec<Entry>>,
    core: Sender<CoreMsg>,
    progress: SharedProgress,
    mut applied: u64,
) {
    for batch in rx {
        let mut last = applied;
        for e in &batch {
            if e.index <= applied {
                continue;
            }
            match e.get_entry_type() {
                EntryType::EntryNormal if !e.data.is_empty() => sm.apply(e.index, e.term, &e.data),
                EntryType::EntryNormal => {}
                EntryType::EntryConfChange | EntryType::EntryConfChangeV2 => {
                    if let Some(cc) = decode_conf_change(e) {
                        sm.apply_conf_change(e.index, e.term, &cc);
                    }
                }
            }
            last = e.index;
        }
        if last > applied {
            applied = last;
            sm.applied_batch(applied);
            progress.applied.store(applied, Ordering::Release);
            if core.send(CoreMsg::Applied(applied)).is_err() {
                return;
            }
        }
    }
}

/// The membership change an entry carries, as a V2 change (v1 entries converted).
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
    use std::sync::mpsc;

    /// Persists into memory, completing each call on a separate thread in call order, like the
    /// WAL thread does. Can be told to fail.
    #[derive(Clone, Default)]
    struct MemSink {
        log: Arc<Mutex<Vec<Entry>>>,
        hs: Arc<Mutex<HardState>>,
        fail: Arc<std::sync::atomic::AtomicBool>,
        calls: Arc<std::sync::atomic::AtomicU64>,
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
}

//! The raft glue: one raft-rs `RawNode` driven by a dedicated raft core thread, persisting through
//! a [`LogSink`] (the WAL) and handing committed entries to a [`StateMachine`] on an apply thread.
//!
//! ```text
//!  propose / read_index ──► raft core thread ──► LogSink::persist (WAL group commit, async)
//!                             ▲   │  committed entries                │ done(number)
//!        applied index ───────┘   ▼                                   │
//!                           apply thread ──► StateMachine::apply       │
//!                             ▲──────────────────────────────────────────┘ (back to the core)
//! ```
//!
//! Invariants the core relies on:
//! 1. Readies are persisted in order: the sink completes `persist` calls in the order they were
//!    made (the WAL's flushes are sequential), so a completion for ready N means every ready
//!    before N is durable too (raft-rs `on_persist_ready` has the same meaning).
//! 2. Entries are in the in-memory raft log (raft-rs reads them through `Storage`) before
//!    `advance_append_async` is called, and before they are durable.
//! 3. A HardState whose only change is the commit index is not worth an fdatasync of its own: it
//!    rides along with the next persisted batch. On restart, `commit` is raised to the state
//!    machine's applied index (anything applied was committed), so raft-rs never sees
//!    `applied > commit`.
//! 4. The leader's messages go out before its own entries are durable (Raft thesis §10.2.1);
//!    a follower's messages wait for persistence (`persisted_messages`). A Ready that only
//!    commits (nothing to persist, no entries or snapshot in its messages) hands its committed
//!    entries to apply first and sends its messages (commit index, heartbeats) after.
//! 5. Committed entries are applied in log order, by the apply thread or — on a member alone
//!    in its cluster, for small batches while the apply thread is idle — by the core itself
//!    (`Applying` in core.rs argues the order; design.md "Inline apply").

mod batch;
#[cfg(test)]
mod cluster_tests;
mod core;
mod inbox;
mod log_store;
mod snap;
mod transport;
mod wal_sink;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

pub use self::batch::{
    BATCH_MARKER, BatchError, BatchIter, encode_batch, is_batch, requests_in, split_batch,
};
pub use self::core::{
    LogSink, NodeConfig, PeerProgress, RaftNode, RaftNodeError, ReadIndexDone, SnapshotPolicy,
    StateMachine, ThreadOptions,
};
pub use raft::eraftpb::{
    ConfChangeSingle, ConfChangeTransition, ConfChangeType, ConfChangeV2, ConfState, Entry,
    EntryType, HardState, Message, MessageType,
};
pub use snap::{
    SNAP_FORMAT_V1, SnapDir, SnapError, SnapFile, SnapshotMeta, decode_snap, encode_snap,
};
pub use transport::{NoPeers, Transport};
pub use wal_sink::{apply_replay, restore_from_snapshot};

/// Progress counters shared with readers (Maintenance Status, metrics) without a channel hop.
#[derive(Debug, Default)]
pub struct NodeProgress {
    pub term: AtomicU64,
    pub leader: AtomicU64,
    pub commit: AtomicU64,
    pub applied: AtomicU64,
    pub leader_changes: AtomicU64,
    pub proposals_committed: AtomicU64,
    pub proposals_failed: AtomicU64,
    /// This member is a learner in the applied configuration.
    pub is_learner: AtomicBool,
    /// This member is in neither voters nor learners of the applied configuration: it was
    /// removed and should stop.
    pub removed: AtomicBool,
    /// Index of the newest raft snapshot (taken or installed).
    pub snapshot_index: AtomicU64,
    /// First index of the in-memory raft log (moves up when the log is compacted).
    pub log_first_index: AtomicU64,
    /// Nonzero only while this member is the leader and the only voter, its log is healthy and
    /// it has committed an entry of its own term; the value is then its commit index, which a
    /// linearizable read may take as its read index without a ReadIndex round (see
    /// [`NodeProgress::local_read_index`]). 0 otherwise.
    pub sole_leader_commit: AtomicU64,
}

impl NodeProgress {
    pub fn applied(&self) -> u64 {
        self.applied.load(Ordering::Acquire)
    }

    pub fn leader(&self) -> u64 {
        self.leader.load(Ordering::Acquire)
    }

    /// A read index for a linearizable read that needs no ReadIndex round: `Some` when this
    /// member is the only voter and leads (so no other member can have acknowledged a write)
    /// and apply has reached the commit index it had once it committed in its term (so every
    /// write acknowledged by an earlier leader is applied here). Reading the current store
    /// after this returns `Some` then sees every write acknowledged before the call: writes
    /// are acknowledged only after they are applied.
    ///
    /// The core clears [`NodeProgress::sole_leader_commit`] before a configuration change
    /// takes effect in raft, so a `Some` seen here means no other voter existed when the read
    /// began. `None` means: take the ReadIndex round.
    pub fn local_read_index(&self) -> Option<u64> {
        let commit = self.sole_leader_commit.load(Ordering::Acquire);
        (commit != 0 && self.applied() >= commit).then_some(commit)
    }
}

pub type SharedProgress = Arc<NodeProgress>;

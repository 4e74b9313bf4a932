//! raft-rs's view of the log: raft-rs's `MemStorage` (the in-memory log cache) plus what it
//! does not know about snapshots taken outside it.
//!
//! Two answers differ from `MemStorage`'s:
//! - `snapshot()` returns the metadata of the newest snapshot taken (index, term, ConfState)
//!   with empty data: the backend file travels separately (the peer transport streams it).
//!   `MemStorage` would make one up at its commit index.
//! - `term(i)` also answers for the entry just below the first one kept after a compaction
//!   (raft-rs matches the entry before the first one it sends), which `MemStorage` forgets.

use std::sync::Arc;

use parking_lot::RwLock;
use raft::eraftpb::{Entry, Snapshot};
use raft::storage::{MemStorage, MemStorageCore};
use raft::{GetEntriesContext, RaftState, Storage, StorageError};

use super::snap::SnapshotMeta;

#[derive(Default)]
struct Extra {
    /// The newest snapshot taken or installed (index 0: none yet).
    snapshot: SnapshotMeta,
    /// (index, term) of the entry just below the first entry kept after the last compaction.
    compacted: (u64, u64),
}

#[derive(Clone, Default)]
pub(crate) struct LogStore {
    mem: MemStorage,
    extra: Arc<RwLock<Extra>>,
}

impl LogStore {
    pub(crate) fn new() -> LogStore {
        LogStore::default()
    }

    /// The `MemStorage` core, for appends, HardState and ConfState updates.
    pub(crate) fn wl(&self) -> std::sync::RwLockWriteGuard<'_, MemStorageCore> {
        self.mem.wl()
    }

    /// Installs a snapshot (restart or received): the log restarts after it.
    pub(crate) fn apply_snapshot(&self, snap: Snapshot) -> raft::Result<()> {
        let meta = SnapshotMeta {
            index: snap.get_metadata().index,
            term: snap.get_metadata().term,
            conf_state: snap.get_metadata().get_conf_state().clone(),
        };
        self.mem.wl().apply_snapshot(snap)?;
        let mut x = self.extra.write();
        x.compacted = (meta.index, meta.term);
        x.snapshot = meta;
        Ok(())
    }

    /// Records a snapshot taken of the state machine (the log is kept).
    pub(crate) fn set_snapshot(&self, meta: SnapshotMeta) {
        self.extra.write().snapshot = meta;
    }

    /// Drops entries below `first_kept`, remembering the term of the one before it. Never
    /// drops the last entry. Returns the new first index. Only the raft core thread calls
    /// this (it is the only writer of the log), so nothing changes between the reads and the
    /// compaction.
    pub(crate) fn compact(&self, first_kept: u64) -> u64 {
        let first = self.mem.first_index().unwrap_or(1);
        let last = self.mem.last_index().unwrap_or(0);
        let first_kept = first_kept.min(last);
        if first_kept <= first {
            return first;
        }
        let below = first_kept - 1;
        let Ok(term) = self.mem.term(below) else {
            return first;
        };
        // In range: first < first_kept <= last.
        if self.mem.wl().compact(first_kept).is_err() {
            return first;
        }
        self.extra.write().compacted = (below, term);
        first_kept
    }
}

impl Storage for LogStore {
    fn initial_state(&self) -> raft::Result<RaftState> {
        self.mem.initial_state()
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        self.mem.entries(low, high, max_size, context)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        let (ci, ct) = self.extra.read().compacted;
        if idx == ci && ci != 0 {
            return Ok(ct);
        }
        self.mem.term(idx)
    }

    fn first_index(&self) -> raft::Result<u64> {
        self.mem.first_index()
    }

    fn last_index(&self) -> raft::Result<u64> {
        self.mem.last_index()
    }

    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        let meta = self.extra.read().snapshot.clone();
        if meta.index == 0 || meta.index < request_index {
            return Err(raft::Error::Store(
                StorageError::SnapshotTemporarilyUnavailable,
            ));
        }
        let mut snap = Snapshot::default();
        let m = snap.mut_metadata();
        m.index = meta.index;
        m.term = meta.term;
        m.set_conf_state(meta.conf_state);
        Ok(snap)
    }
}

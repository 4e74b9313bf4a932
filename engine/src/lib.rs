//! ringkv's storage engine.
//!
//! Layers, bottom up: [`io`](crate::Vfs) (the one seam every file operation goes through), the
//! WAL, the copy-on-write B+tree backend, MVCC with leases and watches, and the raft glue. Modules
//! are private; the public API is the `pub use` list below. Tests and benches reach internals
//! through the `internals` feature.

mod backend;
mod io;
mod lease;
mod mvcc;
pub mod pb;
mod raft_node;
mod storage;
mod wal;

pub use backend::CommittedCopy;
pub use backend::{
    Backend, BackendError, BackendOptions, BackendStats, BatchWriter, CheckReport, FORMAT_V1,
    FORMAT_VERSION, IncompleteCommit, MAX_PAGE_SIZE, MIN_PAGE_SIZE, PageError, Snapshot,
    decode_page, max_key_len,
};
pub use io::FileLock;
pub use io::WriteSync;
pub use io::{AlignedBuf, DIRECT_ALIGN, File, IoKind, OpenOptions, StdVfs, Vfs, align_up, new_vfs};
#[cfg(any(test, feature = "internals"))]
pub use io::{CrashMode, Fault, FaultVfs, SECTOR};
pub use io::{UringVfs, pin_current_thread};
pub use lease::{
    DEFAULT_CHECKPOINT_INTERVAL, EXPIRED_RETRY_INTERVAL, Lease, LeaseIdGen, LeaseRecord, Lessor,
    MAX_LEASE_TTL, MIN_LEASE_TTL, TimeToLive,
};
pub use mvcc::{
    BadRevKey, CANCEL_REASON_DUPLICATE_ID, CANCEL_REASON_EMPTY_RANGE, DEFAULT_COMPACTION_BATCH,
    Found, Generation, HeaderIds, IntervalEnd, IntervalIndex, KeyIndex, MARKED_REV_BYTES_LEN,
    MAX_REVS_PER_SYNC_RESPONSE, MAX_REVS_PER_SYNC_SCAN, MAX_WATCHERS_PER_SYNC,
    META_CONSISTENT_INDEX, META_FINISHED_COMPACT, META_SCHEDULED_COMPACT, MvccError, MvccResult,
    MvccStore, REV_BYTES_LEN, RevKey, Revision, SinkFull, StreamId, TreeIndex, WatchHub,
    WatchHubStats, WatchSink, is_txn_read_only, range_end,
};
#[cfg(any(test, feature = "internals"))]
pub use mvcc::{MemSnapshot, MemStorage};
pub use raft_node::{
    ConfChangeSingle, ConfChangeTransition, ConfChangeType, ConfChangeV2, Message as RaftMessage,
    MessageType as RaftMessageType, NoPeers, PeerProgress, Transport,
};
pub use raft_node::{
    ConfState as RaftConfState, Entry as RaftEntry, EntryType as RaftEntryType,
    HardState as RaftHardState, LogSink, NodeConfig, NodeProgress, RaftNode, RaftNodeError,
    ReadIndexDone, SharedProgress, StateMachine, apply_replay,
};
pub use raft_node::{
    SNAP_FORMAT_V1, SnapDir, SnapError, SnapFile, SnapshotMeta, SnapshotPolicy, decode_snap,
    encode_snap, restore_from_snapshot,
};
// lat: thread placement of a member (inline apply, --cpu-layout pinning).
pub use raft_node::ThreadOptions;
// put2: batch raft entries (several proposals in one entry).
pub use raft_node::{
    BATCH_MARKER, BatchError, BatchIter, encode_batch, is_batch, requests_in, split_batch,
};
pub use storage::{BatchWrite, Bucket, KvRead, StorageError, StorageResult};
#[cfg(feature = "internals")]
pub use wal::internals as wal_internals;
pub use wal::{
    AppendInfo, FlushStats, HardState, LogEntry, Record, Replay, SnapshotMark, Wal, WalError,
    WalMetrics, WalOptions,
};
pub use wal::{AppendTicket, LOCK_FILE as WAL_LOCK_FILE, WalDirLock};
// wal6: a callback defers a wake-up to the end of its flush's delivery.
pub use wal::after_delivery as wal_after_delivery;
// ringkv-util: read-only inspection of a WAL directory.
pub use wal::{SegmentReport as WalSegmentReport, WalInspection, inspect as inspect_wal};

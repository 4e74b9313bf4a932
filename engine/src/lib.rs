//! ringkv's storage engine.
//!
//! Layers, bottom up: [`io`](crate::Vfs) (the one seam every file operation goes through), the
//! WAL, the copy-on-write B+tree backend, MVCC with leases and watches, and the raft glue. Modules
//! are private; the public API is the `pub use` list below. Tests and benches reach internals
//! through the `internals` feature.

mod io;
pub mod pb;
mod storage;
mod wal;

pub use io::{AlignedBuf, DIRECT_ALIGN, File, IoKind, OpenOptions, StdVfs, Vfs, align_up, new_vfs};
#[cfg(any(test, feature = "internals"))]
pub use io::{CrashMode, Fault, FaultVfs, SECTOR};
pub use io::{UringVfs, pin_current_thread};
pub use storage::{BatchWrite, Bucket, KvRead, StorageError, StorageResult};
#[cfg(feature = "internals")]
pub use wal::internals as wal_internals;
pub use wal::{
    AppendInfo, FlushStats, HardState, LogEntry, Record, Replay, SnapshotMark, Wal, WalError,
    WalMetrics, WalOptions,
};

//! MVCC: etcd's key-value model (revisions, the key index, compaction), the lessor glue and
//! the watch hub, over the storage contract (`crate::storage`).
//!
//! Reading order: `revision` (backend keys) → `key_index` (generations, compaction) → `store`
//! (Range/Put/DeleteRange/Txn/Compact/Hash, leases) → `watch` (the hub) → `watch_index`
//! (the interval index behind it).

mod error;
mod key_index;
#[cfg(any(test, feature = "internals"))]
mod mem_storage;
mod revision;
mod store;
#[cfg(test)]
mod store_tests;
mod watch;
mod watch_index;
#[cfg(test)]
mod watch_tests;

pub use error::{MvccError, MvccResult};
pub use key_index::{Found, Generation, KeyIndex, TreeIndex};
#[cfg(any(test, feature = "internals"))]
pub use mem_storage::{MemSnapshot, MemStorage};
pub use revision::{BadRevKey, MARKED_REV_BYTES_LEN, REV_BYTES_LEN, RevKey, Revision};
pub use store::{
    DEFAULT_COMPACTION_BATCH, HeaderIds, META_CONSISTENT_INDEX, META_FINISHED_COMPACT,
    META_SCHEDULED_COMPACT, MvccStore, is_txn_read_only, range_end,
};
pub use watch::{
    CANCEL_REASON_DUPLICATE_ID, CANCEL_REASON_EMPTY_RANGE, MAX_REVS_PER_SYNC_RESPONSE,
    MAX_REVS_PER_SYNC_SCAN, MAX_WATCHERS_PER_SYNC, SinkFull, StreamId, WatchHub, WatchHubStats,
    WatchSink,
};
pub use watch_index::{End as IntervalEnd, IntervalIndex};

//! The backend: an mmap'd copy-on-write B+tree file with a read buffer (etcd's bbolt + read
//! buffer). Layout: `engine/docs/format.md`, "Backend file"; design and commit protocol:
//! `engine/docs/design.md`, "Backend".
//!
//! - [`Backend::open`] opens or creates the file.
//! - [`Backend::snapshot`] returns a [`Snapshot`] (`KvRead`): the last commit plus the writes
//!   applied since, as of that moment. Any thread, any number, never blocked by a commit.
//! - [`Backend::batch`] hands out the single [`BatchWriter`] (`BatchWrite`), which commits every
//!   `batch_ops` writes or `batch_interval`, or on [`BatchWrite::commit`](crate::BatchWrite).
//! - [`Backend::check`] runs the consistency checker; [`Backend::stats`] reports live vs
//!   allocated bytes.

mod buffer;
mod check;
mod copy;
mod db;
mod delta;
mod freelist;
mod meta;
mod mmap;
mod page;
mod tree;

#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::time::Duration;

pub use check::CheckReport;
pub use copy::CommittedCopy;
pub use db::{Backend, BackendStats, BatchWriter, IncompleteCommit, Snapshot};
pub use meta::{FORMAT_V1, FORMAT_VERSION};
pub use page::{MAX_PAGE_SIZE, MIN_PAGE_SIZE, PageError, decode_any as decode_page, max_key_len};

use crate::storage::StorageError;

/// Tuning of a backend; `Default` is etcd's batching (10,000 ops / 100 ms) on 4 KiB pages.
#[derive(Clone, Debug)]
pub struct BackendOptions {
    /// Page size for a new file (power of two, 4 KiB..=64 KiB); an existing file keeps its own.
    pub page_size: usize,
    /// Commit after this many buffered writes.
    pub batch_ops: usize,
    /// Commit when a write arrives this long after the last commit (measured on the coarse
    /// monotonic clock, so up to one timer tick, 1-4 ms, later), and on
    /// [`BatchWriter::commit_if_due`].
    pub batch_interval: Duration,
    /// Serve reads from a memory map when the file has a raw fd; else through `read_at`.
    pub mmap: bool,
    /// Online compaction reads at most this many tree nodes per commit (bounding the extra
    /// work a commit does), resuming where the previous commit stopped.
    pub compact_visits: usize,
    /// A large commit writes groups of finished pages while it builds the rest and starts their
    /// writeback (tree.rs, `EARLY_RUN`), to overlap the device with its CPU. Off by default: on
    /// the measured disk it made 10,000-key appends 1.3-1.7x slower (BENCHMARKS.md, session 8
    /// "Backend"); `false` writes every page in step 2.
    pub early_writes: bool,
    /// The delta log (delta.rs, format v3): a commit of many random keys writes them as one
    /// sorted delta run instead of rewriting a leaf per key, and folds a bounded part of the
    /// log into the tree. Off by default until a quiet A/B shows it wins (BENCHMARKS.md,
    /// session 9 "delta9"). A file that has delta runs is read correctly either way; with the
    /// option off its next commit folds the whole log (and writes a v2 meta again).
    pub delta_log: bool,
    /// Most entries the delta log holds on disk (its runs' entries, superseded ones included).
    pub delta_max_entries: u64,
    /// Most delta runs the log holds (bounds the chain open walks).
    pub delta_max_runs: usize,
    /// A bucket's writes go to the delta log when they arrived out of key order and number at
    /// least this many (fewer touch few leaves: the tree path writes them as one small run).
    pub delta_min_batch: usize,
}

impl Default for BackendOptions {
    fn default() -> Self {
        BackendOptions {
            page_size: 4096,
            batch_ops: 10_000,
            batch_interval: Duration::from_millis(100),
            mmap: true,
            compact_visits: 4096,
            early_writes: false,
            delta_log: false,
            delta_max_entries: 320_000,
            delta_max_runs: 1024,
            delta_min_batch: 32,
        }
    }
}

/// Backend errors: corruption (where and why), I/O failure, caller mistakes, and the refusal
/// that follows a failed write or commit.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("corrupt backend file {}: page {page} (offset {offset}): {reason}", file.display())]
    Corrupt {
        file: PathBuf,
        page: u64,
        offset: u64,
        reason: String,
    },
    #[error("I/O error on {} during {op}: {source}", file.display())]
    Io {
        file: PathBuf,
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// The caller asked for something the backend does not do (bad option, key too long, ...).
    #[error("invalid request: {0}")]
    Invalid(String),
    /// An earlier write or commit failed; the backend refuses further writes until reopened.
    #[error("backend refuses writes after an earlier failure: {0}")]
    Failed(String),
}

impl From<BackendError> for StorageError {
    fn from(e: BackendError) -> Self {
        match e {
            BackendError::Corrupt {
                file,
                offset,
                page,
                reason,
            } => StorageError::Corrupt {
                file: file.display().to_string(),
                offset,
                reason: format!("page {page}: {reason}"),
            },
            BackendError::Io { source, .. } => StorageError::Io(source),
            e @ BackendError::Invalid(_) => StorageError::Failed(e.to_string()),
            BackendError::Failed(why) => StorageError::Failed(why),
        }
    }
}

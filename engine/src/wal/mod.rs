//! The write-ahead log: raft entries, hard states, snapshot markers and metadata, made durable
//! by group commit with a rotating leader (the appender that finds the WAL idle flushes).
//!
//! Layout on disk: segments `{seq:016x}-{index:016x}.wal` in one directory, each
//! [`WalOptions::segment_size`] bytes, preallocated and zero-filled ahead of need by a
//! background thread. Byte format and crash cases: the WAL section of `engine/docs/format.md`;
//! threads and group commit: the WAL section of `engine/docs/design.md`.
//!
//! # Contract
//! - [`Wal::append`] returns without doing I/O; its callback runs after the fdatasync that
//!   covers every record of the append returned (`Ok`), or with the error that prevented it,
//!   on the thread that performed that flush (the flush thread or a waiting appender).
//!   [`Wal::append_inline`] is the same, except that when no flush is in flight the caller
//!   performs it, and runs the callbacks of that flush (its own included) before returning.
//!   [`Wal::enqueue`] / [`AppendTicket::wait`] (and [`Wal::append_wait`]) block the caller,
//!   which may perform the flush itself. Callbacks must not wait for another append (that
//!   panics); an `append_inline` from a callback is queued like an `append`. A callback that
//!   panics does so on the delivering thread, after the other outcomes of its flush were
//!   delivered; the WAL keeps working. A callback may defer an action with [`after_delivery`]:
//!   it runs on the same thread once every callback of that flush ran (one wake-up of another
//!   thread per flush instead of one per append).
//! - Appends are written in the order they were queued (per thread; across threads in the
//!   order they reached the queue), each append's records contiguously; callbacks run and
//!   tickets complete in that order.
//! - A directory is used by one `Wal` at a time: `open` takes an exclusive `flock` on the
//!   `LOCK` file in it and fails with [`WalError::Locked`] when another holder (another
//!   process, or another `Wal` of this one) has it; `close` releases it.
//! - A failed write or fdatasync is fatal: every append of that flush gets the error, every
//!   later append gets [`WalError::Failed`]. Records of a failed flush may or may not be on disk
//!   after a restart; records acknowledged `Ok` are.
//! - An append the WAL must refuse (an entry index that leaves a gap, a record larger than a
//!   segment) fails alone with [`WalError::InvalidAppend`]; nothing of it is written and the WAL
//!   stays usable.
//! - Entry indexes: an entry may repeat or go below earlier indexes (a new leader overwriting
//!   an uncommitted suffix: replay keeps the newest), but never skip ahead past the next index;
//!   a snapshot marker moves the next index to after the snapshot.

mod alloc;
mod commit;
mod format;
mod replay;
mod trace;
mod writer;

#[cfg(test)]
mod tests;

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;

use crate::io::{FileLock, Vfs};

pub use commit::{AppendTicket, after_delivery};
pub use replay::{SegmentReport, WalInspection, inspect};

/// One raft log entry as the WAL stores it (the raft glue converts raft-rs's `Entry`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogEntry {
    pub index: u64,
    pub term: u64,
    /// raft-rs `EntryType` as a number: 0 normal, 1 conf change, 2 conf change v2.
    pub entry_type: u8,
    pub data: Bytes,
}

/// raft's HardState: the vote and commit index that must survive a restart.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HardState {
    pub term: u64,
    pub vote: u64,
    pub commit: u64,
}

/// Marks that a snapshot at (index, term) exists; replay starts after a marker.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SnapshotMark {
    pub index: u64,
    pub term: u64,
}

/// One WAL record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    Entry(LogEntry),
    HardState(HardState),
    Snapshot(SnapshotMark),
    /// Opaque node metadata (member and cluster ids); the newest one is replayed and carried
    /// into every new segment.
    Metadata(Bytes),
}

/// What one append's covering flush did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppendInfo {
    /// Records written by the flush that made this append durable (all appends in it).
    pub flush_records: usize,
    /// Appends acknowledged by that flush.
    pub flush_appends: usize,
    /// Bytes the flush wrote, including the rewritten tail block and padding.
    pub flush_bytes: u64,
    /// Segment holding the end of this append, and the offset just after its last record.
    pub segment_seq: u64,
    pub end_offset: u64,
}

/// Statistics of one flush, given to [`WalMetrics::on_flush`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlushStats {
    pub records: usize,
    pub appends: usize,
    pub bytes: u64,
    /// Time spent in write + fdatasync (all writes of the flush, including a segment switch).
    pub sync_duration: Duration,
    /// Longest and summed time the flush's appends waited in the queue before it started.
    pub max_queue_wait: Duration,
    pub total_queue_wait: Duration,
    /// Whether the flush succeeded.
    pub ok: bool,
}

/// Metrics hook. Called by the thread that performed the flush (the flush thread or an appender
/// leading it), before the flush's appends learn their outcome: it must be quick.
pub trait WalMetrics: Send + Sync {
    fn on_flush(&self, stats: &FlushStats);
}

/// Settings for [`Wal::open`].
#[derive(Clone)]
pub struct WalOptions {
    /// Bytes per segment; a multiple of 4096, at least 16 KiB. Default 64 MiB.
    pub segment_size: u64,
    /// Open segments with O_DIRECT (needs a file system that supports it). Default true.
    pub direct: bool,
    /// Replay starts after this snapshot marker; (0, 0) replays everything. When the index is
    /// not 0 the WAL must hold a marker with this index and term.
    pub replay_from: SnapshotMark,
    /// Pin the flush thread to this CPU.
    pub wal_cpu: Option<usize>,
    /// Queued appends (not yet taken by a flush) before appending blocks. Default 65536.
    pub queue_capacity: usize,
    /// A waiting appender ([`AppendTicket::wait`]) polls for its outcome this long before it
    /// parks. Non-zero trades CPU for the wake-up latency of a follower; it never delays a
    /// flush. Default 0 (on 2 vCPUs the spinning thread competes with the flushing one).
    pub idle_spin: Duration,
    /// New segments are zero-filled ahead of need while the WAL's recent flushes average below
    /// this many bytes; above it they are only preallocated. Zero-filled files make small
    /// flushes ~2× faster (no extent conversion at fdatasync) but cost a second write of every
    /// byte. `u64::MAX`: always zero-fill; 0: never. Default `u64::MAX`: skipping the zeros
    /// at 64 writers × 64 KiB did not raise throughput (BENCHMARKS.md, "zero-fill"), whose
    /// limit is one 2 MiB write+fdatasync at a time.
    pub zero_fill_below: u64,
    /// How a leader orders a flushed batch's wake-ups and the next batch. `true`: it wakes
    /// every parked waiter of the batch itself, one after the other, and only then takes the
    /// next batch, so the appenders woken first are back in the queue and join it (the wake
    /// loop is the gathering window: as long as the batch is big, no timer; one appender never
    /// waits); `wake_gather` is then not used. `false`: see `wake_gather`; without it, the
    /// leader takes and starts the next batch first and wakes the previous batch's waiters as
    /// a tree while that I/O runs: the device never idles for wake-ups, but a batch can hold
    /// only the appenders that were not in the one before (at most half of N closed-loop
    /// writers). Default `false`: `true` won ~2× under heavy load (load average 11–34) but
    /// lost 7–10 % on the quiet machine (BENCHMARKS.md, "Session 7 end"); `wake_gather`
    /// fills batches better (63–64 of 64 writers per fdatasync instead of 36–45).
    pub wake_before_next: bool,
    /// How a leader in the overlapped order (`wake_before_next: false`) wakes a flushed
    /// batch's waiters. `true`: it stores outcomes up to the first parked waiter, hands that
    /// waiter (the relay head) the rest and unparks it, and the head stores them and starts
    /// their wake-up tree: one wake-up on the leader between two flushes, which with std I/O
    /// is time the device idles. `false`: the leader stores every outcome and starts the tree
    /// itself (sessions 3–7). Default `false`: on a quiet machine the relay head was 0.88–0.97×
    /// the throughput of `false` at 64 writers in four same-process A/Bs (BENCHMARKS.md, session 8
    /// end).
    pub relay_wake: bool,
    /// With `wake_before_next: false`: how a leader handles a flushed batch that holds waiting
    /// appenders ([`Wal::enqueue`]). `true`: it delivers it at once, stores every outcome,
    /// wakes the parked waiters as a tree (each woken waiter wakes two more) and parks until
    /// every one of them has taken its outcome; only then does it take the queue, so the next
    /// batch holds the appenders it woke (63–64 of 64 closed-loop writers per fdatasync). No
    /// timer: it waits for threads it woke to run; a waiter that was not parked is not waited
    /// for; batches of callbacks only (the raft core's) and the last batch of a leader whose
    /// role ends (`append_inline`, the `LEAD_BATCHES` bound) are not gathered and stay
    /// overlapped. `false`: every batch is overlapped (sessions 3–8). Default `false`: at 64
    /// writers gathering won 1.0–4.0× under load (load average 7–13) but lost ~0.8× at load
    /// 4–7 in same-process A/Bs (BENCHMARKS.md, session 9 "wal"); the quiet machine decides.
    pub wake_gather: bool,
    /// How a leader in the overlapped order (`wake_before_next: false, relay_wake: false`)
    /// starts a flushed batch's wake-up tree. `true`: it stores every outcome and unparks one
    /// waiter, the first parked one; the tree holds the parked waiters only, and each woken
    /// waiter unparks two more. With std I/O this runs between two flushes while every other
    /// appender is parked: one wake-up lands on the idle vCPU, where a second one would often
    /// preempt the leader before its write. `false`: the leader unparks the first two waiters
    /// of a tree of all the batch's waiters (sessions 3–8).
    pub wake_one: bool,
    pub metrics: Option<Arc<dyn WalMetrics>>,
}

impl Default for WalOptions {
    fn default() -> Self {
        WalOptions {
            segment_size: 64 << 20,
            direct: true,
            replay_from: SnapshotMark::default(),
            wal_cpu: None,
            queue_capacity: 1 << 16,
            idle_spin: Duration::ZERO,
            zero_fill_below: u64::MAX,
            wake_before_next: false,
            relay_wake: false,
            wake_gather: false,
            wake_one: false,
            metrics: None,
        }
    }
}

impl fmt::Debug for WalOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WalOptions")
            .field("segment_size", &self.segment_size)
            .field("direct", &self.direct)
            .field("replay_from", &self.replay_from)
            .field("wal_cpu", &self.wal_cpu)
            .field("queue_capacity", &self.queue_capacity)
            .field("idle_spin", &self.idle_spin)
            .field("zero_fill_below", &self.zero_fill_below)
            .field("wake_before_next", &self.wake_before_next)
            .field("relay_wake", &self.relay_wake)
            .field("wake_gather", &self.wake_gather)
            .field("wake_one", &self.wake_one)
            .field("metrics", &self.metrics.is_some())
            .finish()
    }
}

/// What [`Wal::open`] read back.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Replay {
    /// Entries after `replay_from.index`, contiguous, overwrites applied (newest wins).
    pub entries: Vec<LogEntry>,
    /// The newest HardState in the WAL.
    pub hard_state: Option<HardState>,
    /// The newest metadata record in the WAL.
    pub metadata: Option<Bytes>,
    /// The newest snapshot marker read (at or after `replay_from`).
    pub snapshot: Option<SnapshotMark>,
    /// Where a torn tail was cut off: file and offset (also logged).
    pub truncated_tail: Option<(PathBuf, u64)>,
}

/// WAL errors: corruption, I/O failure and caller mistakes are separate variants.
#[derive(Clone, Debug, thiserror::Error)]
pub enum WalError {
    /// An I/O operation failed (`op` names it). Fatal for appends.
    #[error("WAL I/O error: {op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: Arc<io::Error>,
    },
    /// Bytes on disk are not a valid WAL at `path`, `offset`.
    #[error("WAL corrupt: {} at offset {offset}: {reason}", path.display())]
    Corrupt {
        path: PathBuf,
        offset: u64,
        reason: String,
    },
    /// A segment sequence number is missing between two present segments.
    #[error("WAL segment {expected:016x} missing: the next segment after {} is absent", after.display())]
    MissingSegment { after: PathBuf, expected: u64 },
    /// `replay_from` names a snapshot the WAL has no marker for.
    #[error("WAL has no snapshot marker for index {index} (term {term})")]
    SnapshotNotFound { index: u64, term: u64 },
    /// The WAL's marker at `replay_from.index` has another term.
    #[error("WAL snapshot marker at index {index} has term {found}, expected {expected}")]
    SnapshotMismatch {
        index: u64,
        expected: u64,
        found: u64,
    },
    /// Another `Wal` (in this or another process) has the directory open.
    #[error(
        "WAL directory {} is in use: {} is locked by another process (or another open WAL); fileutil: file already locked",
        dir.display(),
        lock.display()
    )]
    Locked { dir: PathBuf, lock: PathBuf },
    /// The caller asked for something the WAL must refuse; nothing was written.
    #[error("invalid WAL append: {0}")]
    InvalidAppend(String),
    #[error("invalid WAL options: {0}")]
    InvalidOptions(String),
    /// An earlier write or fdatasync failed; the WAL refuses appends until reopened.
    #[error("WAL refuses appends after an earlier failure: {0}")]
    Failed(Arc<WalError>),
    #[error("WAL is closed")]
    Closed,
}

impl WalError {
    pub(crate) fn io(op: &'static str, path: &Path, source: io::Error) -> WalError {
        WalError::Io {
            op,
            path: path.to_path_buf(),
            source: Arc::new(source),
        }
    }

    /// Corrupt data on disk (including a missing segment or snapshot marker).
    pub fn is_corruption(&self) -> bool {
        matches!(
            self,
            WalError::Corrupt { .. }
                | WalError::MissingSegment { .. }
                | WalError::SnapshotNotFound { .. }
                | WalError::SnapshotMismatch { .. }
        )
    }

    /// A mistake of the caller; the WAL is unaffected.
    pub fn is_caller_mistake(&self) -> bool {
        matches!(
            self,
            WalError::InvalidAppend(_)
                | WalError::InvalidOptions(_)
                | WalError::Closed
                | WalError::Locked { .. }
        )
    }
}

type Done = Box<dyn FnOnce(Result<AppendInfo, WalError>) + Send>;

/// Name of the lock file in the WAL directory.
pub const LOCK_FILE: &str = "LOCK";

/// A segment on disk, as listed in [`Shared::segments`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SegmentInfo {
    pub seq: u64,
    pub first_index: u64,
    pub path: PathBuf,
}

/// State shared by the handle, the group-commit core and the writer.
pub(crate) struct Shared {
    pub vfs: Arc<dyn Vfs>,
    pub dir: PathBuf,
    /// Segments on disk, oldest first. The writer pushes at a segment switch;
    /// `purge_below` removes from the front. Never empty.
    pub segments: Mutex<Vec<SegmentInfo>>,
    /// Set once, by the first failed write or fdatasync.
    pub failure: OnceLock<Arc<WalError>>,
}

/// The write-ahead log. `Send + Sync`: share it (e.g. in an `Arc`) between appenders.
pub struct Wal {
    shared: Arc<Shared>,
    core: Arc<commit::Core>,
    closed: AtomicBool,
    thread: Mutex<Option<JoinHandle<()>>>,
    /// The directory lock when `open` took it; released by `close`.
    lock: Mutex<Option<WalDirLock>>,
}

/// The exclusive lock of a WAL directory ([`Wal::lock_dir`]); released when dropped.
pub struct WalDirLock {
    dir: PathBuf,
    _lock: FileLock,
}

impl WalDirLock {
    /// The locked WAL directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl fmt::Debug for WalDirLock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WalDirLock")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for Wal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Wal")
            .field("dir", &self.shared.dir)
            .finish_non_exhaustive()
    }
}

impl Wal {
    /// Opens (or creates) the WAL in `dir`, replays it from `opts.replay_from`, cuts a torn
    /// tail of the last segment, and starts the flush and allocator threads. Fails with
    /// [`WalError::Locked`] if another `Wal` has `dir` open.
    pub fn open(
        vfs: Arc<dyn Vfs>,
        dir: &Path,
        opts: WalOptions,
    ) -> Result<(Wal, Replay), WalError> {
        Self::check_options(&opts)?;
        let lock = Self::lock_dir(&vfs, dir)?;
        Self::open_inner(vfs, dir, opts, Some(lock))
    }

    /// Takes the exclusive lock of WAL directory `dir` (creating it if missing), for a caller
    /// that must exclude other processes before it touches anything else of its data
    /// directory; then [`Wal::open_locked`]. Fails with [`WalError::Locked`] if it is held.
    pub fn lock_dir(vfs: &Arc<dyn Vfs>, dir: &Path) -> Result<WalDirLock, WalError> {
        vfs.create_dir_all(dir)
            .map_err(|e| WalError::io("create directory", dir, e))?;
        let lock_path = dir.join(LOCK_FILE);
        match vfs.lock_file(&lock_path) {
            Ok(lock) => Ok(WalDirLock {
                dir: dir.to_path_buf(),
                _lock: lock,
            }),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Err(WalError::Locked {
                dir: dir.to_path_buf(),
                lock: lock_path,
            }),
            Err(e) => Err(WalError::io("lock", &lock_path, e)),
        }
    }

    /// [`Wal::open`] in a directory the caller locked with [`Wal::lock_dir`]. The caller keeps
    /// the lock for as long as the `Wal` is open (it may open it again after a failed open).
    pub fn open_locked(
        vfs: Arc<dyn Vfs>,
        lock: &WalDirLock,
        opts: WalOptions,
    ) -> Result<(Wal, Replay), WalError> {
        Self::check_options(&opts)?;
        Self::open_inner(vfs, &lock.dir, opts, None)
    }

    fn check_options(opts: &WalOptions) -> Result<(), WalError> {
        if !opts
            .segment_size
            .is_multiple_of(crate::io::DIRECT_ALIGN as u64)
            || opts.segment_size < 16 * 1024
        {
            return Err(WalError::InvalidOptions(format!(
                "segment_size {} must be a multiple of 4096 and at least 16 KiB",
                opts.segment_size
            )));
        }
        if opts.queue_capacity == 0 {
            return Err(WalError::InvalidOptions(
                "queue_capacity must be > 0".into(),
            ));
        }
        Ok(())
    }

    fn open_inner(
        vfs: Arc<dyn Vfs>,
        dir: &Path,
        opts: WalOptions,
        lock: Option<WalDirLock>,
    ) -> Result<(Wal, Replay), WalError> {
        let opened = replay::open(&vfs, dir, &opts)?;
        let shared = Arc::new(Shared {
            vfs: vfs.clone(),
            dir: dir.to_path_buf(),
            segments: Mutex::new(opened.segments.clone()),
            failure: OnceLock::new(),
        });
        let writer = writer::Writer::new(shared.clone(), &opts, opened.tail)?;
        let core = Arc::new(commit::Core::new(shared.clone(), writer, &opts));
        let cpu = opts.wal_cpu;
        let core2 = core.clone();
        let thread = std::thread::Builder::new()
            .name("ringkv-wal".into())
            .spawn(move || {
                if let Some(cpu) = cpu
                    && let Err(e) = crate::io::pin_current_thread(cpu)
                {
                    tracing::warn!("could not pin the WAL flush thread to CPU {cpu}: {e}");
                }
                core2.run_flush_thread()
            })
            .map_err(|e| WalError::io("spawn WAL thread", dir, e))?;
        Ok((
            Wal {
                shared,
                core,
                closed: AtomicBool::new(false),
                thread: Mutex::new(Some(thread)),
                lock: Mutex::new(lock),
            },
            opened.replay,
        ))
    }

    /// Queues `records` and returns without doing I/O; `done` runs once they are durable (or
    /// failed), on the thread that flushed them. Blocks only while the queue is full.
    pub fn append(
        &self,
        records: Vec<Record>,
        done: impl FnOnce(Result<AppendInfo, WalError>) + Send + 'static,
    ) {
        if self.closed.load(Ordering::Acquire) {
            return done(Err(WalError::Closed));
        }
        self.core.append_callback(records, Box::new(done), false);
    }

    /// Like [`Wal::append`], but when no flush is in flight the calling thread performs it
    /// (write + fdatasync) and runs that flush's callbacks, `done` included, before returning;
    /// otherwise it queues and returns at once. For a single appender that must not block on
    /// others' flushes but wants no thread hand-off when the WAL is idle (the raft core). The
    /// caller must hold no lock that a callback of another append could need.
    pub fn append_inline(
        &self,
        records: Vec<Record>,
        done: impl FnOnce(Result<AppendInfo, WalError>) + Send + 'static,
    ) {
        if self.closed.load(Ordering::Acquire) {
            return done(Err(WalError::Closed));
        }
        self.core.append_callback(records, Box::new(done), true);
    }

    /// Queues `records` and returns a ticket to wait for their durability with. Queue order is
    /// write order: enqueue under a lock to order appends across threads, wait outside it.
    pub fn enqueue(&self, records: Vec<Record>) -> AppendTicket {
        self.core.enqueue(records)
    }

    /// Appends and waits for the outcome. If no flush is in flight, the calling thread
    /// performs it (no thread hand-off); otherwise it waits and may lead the next one.
    pub fn append_wait(&self, records: Vec<Record>) -> Result<AppendInfo, WalError> {
        self.enqueue(records).wait()
    }

    /// Removes segments whose every entry is below `index` (never the newest segment), oldest
    /// first, then syncs the directory. Returns how many were removed. A crash part-way leaves
    /// a contiguous run of segments.
    pub fn purge_below(&self, index: u64) -> Result<usize, WalError> {
        let mut segs = self.shared.segments.lock().expect("segment list lock");
        // Segment i holds only entries below segments[i + 1].first_index.
        let mut n = 0;
        while n + 1 < segs.len() && segs[n + 1].first_index <= index {
            n += 1;
        }
        for seg in segs.iter().take(n) {
            self.shared
                .vfs
                .remove_file(&seg.path)
                .map_err(|e| WalError::io("remove segment", &seg.path, e))?;
        }
        segs.drain(..n);
        drop(segs);
        if n > 0 {
            self.shared
                .vfs
                .sync_dir(&self.shared.dir)
                .map_err(|e| WalError::io("sync directory", &self.shared.dir, e))?;
        }
        Ok(n)
    }

    /// Paths of the segments on disk, oldest first.
    pub fn segment_paths(&self) -> Vec<PathBuf> {
        let segs = self.shared.segments.lock().expect("segment list lock");
        segs.iter().map(|s| s.path.clone()).collect()
    }

    /// Flushes every append queued before this call, stops the threads, and returns the
    /// WAL's failure if it had one. Later appends fail with [`WalError::Closed`]. Idempotent.
    pub fn close(&self) -> Result<(), WalError> {
        self.closed.store(true, Ordering::Release);
        let handle = self.thread.lock().expect("thread handle lock").take();
        if let Some(handle) = handle {
            self.core.close();
            let joined = handle.join();
            self.lock.lock().expect("lock file handle lock").take();
            if joined.is_err() {
                return Err(WalError::io(
                    "join WAL flush thread",
                    &self.shared.dir,
                    io::Error::other("the WAL flush thread panicked"),
                ));
            }
        }
        match self.shared.failure.get() {
            Some(cause) => Err(WalError::Failed(cause.clone())),
            None => Ok(()),
        }
    }
}

impl Drop for Wal {
    fn drop(&mut self) {
        let _ = self.close();
    }
}

/// Internals for benches and the tests crate (`internals` feature).
#[cfg(feature = "internals")]
pub mod internals {
    pub use super::format::{Decoded, crc_seed, decode_record, encode_record, encoded_len};
}

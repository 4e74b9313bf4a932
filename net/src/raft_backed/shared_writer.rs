//! The backend as the node's MVCC store sees it: reads through fresh backend snapshots, writes
//! through the single `BatchWriter`, and a batched commit that runs its two fdatasyncs while
//! apply goes on.
//!
//! The background commit ([`NodeBackend::begin_commit`] → `BatchWriter::commit` →
//! [`NodeBackend::finish_commit`]):
//! 1. Under the store's *read* lock (apply excluded): lock the writer, put the consistent index
//!    into it, and switch to *side mode*. The writer now holds exactly the writes of the entries
//!    up to that index.
//! 2. With no store lock: commit the writer (pages, fdatasync, meta, fdatasync). Apply runs
//!    meanwhile; in side mode its writes go to `side`, an in-memory overlay, not to the writer.
//!    Readers see the overlay on top of backend snapshots (which a commit never blocks), so
//!    they see every applied write throughout.
//! 3. Under the store's *write* lock: move the overlay into the writer (in write order, so the
//!    newest value of each key wins) and leave side mode.
//!
//! Why this is sound:
//! - Invariant 1 of apply.rs (every durable state is "entries up to the consistent index, none
//!   after") holds because the writer is locked, and its consistent index written, while apply
//!   is excluded, and nothing but the committing thread touches the writer until step 3.
//! - A synchronous commit (`BatchWrite::commit`, [`NodeBackend::commit_all`]) runs under the
//!   store's write lock: it waits for the writer (a background commit's fdatasyncs), moves the
//!   overlay in first, leaves side mode, then writes the current consistent index and
//!   commits. A background commit it overtook skips its step 2 (it checks side mode under the
//!   writer's lock) and finds an empty overlay in step 3. Background commits run one at a
//!   time (housekeeping).
//! - Lock order: store before writer; the committing thread holds the writer without the store
//!   lock only in step 2 and takes the store lock in step 3 after releasing the writer, so no
//!   cycle exists.
//! - Writes (`put`/`delete`) take `&mut self`, i.e. the store's write lock; reads `&self`, the
//!   read lock: `side` needs no lock of its own.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::Mutex;
use ringkv_engine::{
    Backend, BackendStats, BatchWrite, BatchWriter, Bucket, KvRead, META_CONSISTENT_INDEX,
    StorageError, StorageResult,
};

/// See the module doc.
pub(crate) struct NodeBackend {
    /// `None` only while a received snapshot is being installed (the old file is closed, the
    /// new one not yet open); the store is write-locked for that whole time.
    parts: Option<Parts>,
    /// Side mode: a background commit is between its steps 1 and 3; writes go to `side`.
    /// Set only under the store's read lock (step 1), cleared only under its write lock
    /// (`drain_side`), so apply (write lock) sees it stable.
    side_mode: Arc<AtomicBool>,
    /// Writes made in side mode: newest value per key, `None` = deleted.
    side: BTreeMap<(Bucket, Vec<u8>), Option<Vec<u8>>>,
}

struct Parts {
    backend: Backend,
    writer: Arc<Mutex<BatchWriter>>,
}

fn closed() -> StorageError {
    StorageError::Failed("the backend is closed for a snapshot install".into())
}

/// A background commit between steps 1 and 3 (module doc); holds the writer.
pub(crate) struct PendingCommit {
    writer: Arc<Mutex<BatchWriter>>,
    side_mode: Arc<AtomicBool>,
}

impl PendingCommit {
    /// Step 2: commits the writer. Call without holding the store lock. Does nothing when a
    /// synchronous commit ran since step 1 (it left side mode after committing everything,
    /// and the writer may now hold writes beyond this commit's consistent index).
    pub(crate) fn run(self) -> StorageResult<()> {
        let mut w = self.writer.lock();
        if !self.side_mode.load(Ordering::Acquire) {
            return Ok(());
        }
        w.commit()
    }
}

impl NodeBackend {
    pub(crate) fn new(backend: Backend, writer: BatchWriter) -> Self {
        NodeBackend {
            parts: Some(Parts {
                backend,
                writer: Arc::new(Mutex::new(writer)),
            }),
            side_mode: Arc::new(AtomicBool::new(false)),
            side: BTreeMap::new(),
        }
    }

    fn parts(&self) -> StorageResult<&Parts> {
        self.parts.as_ref().ok_or_else(closed)
    }

    fn writer(&self) -> StorageResult<&Arc<Mutex<BatchWriter>>> {
        Ok(&self.parts()?.writer)
    }

    /// Drops the file handle and the writer (so the file can be replaced and reopened). Waits
    /// for a background commit's fdatasyncs (they hold the writer), so the old file is quiet.
    /// Call with the store write-locked; writes not yet committed are dropped (an install
    /// replaces the whole state).
    pub(crate) fn close(&mut self) {
        if let Some(p) = self.parts.take() {
            drop(p.writer.lock());
        }
        self.side.clear();
    }

    /// `None` only after a failed snapshot install (the node has failed then).
    pub(crate) fn stats(&self) -> Option<BackendStats> {
        self.parts.as_ref().map(|p| p.backend.stats())
    }

    /// A reader of the last commit as a whole backend file (`None` while closed for an
    /// install). Call with the store locked right after a commit to copy exactly that commit.
    pub(crate) fn committed_copy(&self) -> Option<ringkv_engine::CommittedCopy> {
        self.parts
            .as_ref()
            .map(|p| p.backend.snapshot().committed_copy())
    }

    /// Step 1 (module doc): call with the store read-locked. Writes the consistent index into
    /// the writer and enters side mode. `None` when a background commit is already running.
    ///
    /// The writer's lock is taken and released here and taken again by [`PendingCommit::run`];
    /// in between only a synchronous commit can write to it (apply is in side mode), and that
    /// leaves side mode, which `run` checks under the writer's lock.
    pub(crate) fn begin_commit(
        &self,
        consistent_index: u64,
    ) -> StorageResult<Option<PendingCommit>> {
        if self.side_mode.load(Ordering::Acquire) {
            return Ok(None);
        }
        let writer = self.writer()?.clone();
        writer.lock().put(
            Bucket::Meta,
            META_CONSISTENT_INDEX,
            &consistent_index.to_be_bytes(),
        )?;
        self.side_mode.store(true, Ordering::Release);
        Ok(Some(PendingCommit {
            writer,
            side_mode: self.side_mode.clone(),
        }))
    }

    /// Step 3 (module doc): call with the store write-locked, after [`PendingCommit::run`].
    pub(crate) fn finish_commit(&mut self) -> StorageResult<()> {
        self.drain_side()
    }

    /// A synchronous commit of everything applied, with `consistent_index`; call with the
    /// store write-locked (waits for a running background commit's fdatasyncs).
    /// Same bytes as `MvccStore::commit`: the index as 8 big-endian bytes (etcd's encoding).
    pub(crate) fn commit_all(&mut self, consistent_index: u64) -> StorageResult<()> {
        self.drain_side()?;
        let mut w = self.writer()?.lock();
        w.put(
            Bucket::Meta,
            META_CONSISTENT_INDEX,
            &consistent_index.to_be_bytes(),
        )?;
        w.commit()
    }

    /// Moves the overlay into the writer (waiting for it) and leaves side mode.
    fn drain_side(&mut self) -> StorageResult<()> {
        let mut w = self.parts.as_ref().ok_or_else(closed)?.writer.lock();
        self.side_mode.store(false, Ordering::Release);
        // Key order, not write order: the map keeps only the newest value per key, and the
        // writer's buffer is keyed too, so order does not change the result.
        for ((bucket, key), value) in std::mem::take(&mut self.side) {
            match value {
                Some(v) => w.put(bucket, &key, &v)?,
                None => w.delete(bucket, &key)?,
            }
        }
        Ok(())
    }

    #[cfg(test)]
    pub(crate) fn side_len(&self) -> usize {
        self.side.len()
    }
}

impl KvRead for NodeBackend {
    fn get(&self, bucket: Bucket, key: &[u8]) -> StorageResult<Option<Vec<u8>>> {
        if !self.side.is_empty()
            && let Some(v) = self.side.get(&(bucket, key.to_vec()))
        {
            return Ok(v.clone());
        }
        self.parts()?.backend.snapshot().get(bucket, key)
    }

    fn scan(
        &self,
        bucket: Bucket,
        start: &[u8],
        end: &[u8],
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> StorageResult<()> {
        let snap = self.parts()?.backend.snapshot();
        if self.side.is_empty() {
            return snap.scan(bucket, start, end, visit);
        }
        // The overlay's entries in [start, end), merged into the snapshot's scan; an overlay
        // entry replaces (or, when `None`, hides) the snapshot's value of the same key.
        let lo = (bucket, start.to_vec());
        let side: Vec<(&[u8], Option<&[u8]>)> = self
            .side
            .range(lo..)
            .take_while(|((b, k), _)| *b == bucket && (end.is_empty() || k.as_slice() < end))
            .map(|((_, k), v)| (k.as_slice(), v.as_deref()))
            .collect();
        let mut i = 0;
        let mut stopped = false;
        snap.scan(bucket, start, end, &mut |k, v| {
            while i < side.len() && side[i].0 < k {
                if let Some(sv) = side[i].1
                    && !visit(side[i].0, sv)
                {
                    stopped = true;
                    return false;
                }
                i += 1;
            }
            let go_on = if i < side.len() && side[i].0 == k {
                let r = side[i].1.is_none_or(|sv| visit(k, sv));
                i += 1;
                r
            } else {
                visit(k, v)
            };
            stopped = !go_on;
            go_on
        })?;
        if !stopped {
            for (k, v) in &side[i..] {
                if let Some(v) = v
                    && !visit(k, v)
                {
                    break;
                }
            }
        }
        Ok(())
    }
}

impl BatchWrite for NodeBackend {
    fn put(&mut self, bucket: Bucket, key: &[u8], value: &[u8]) -> StorageResult<()> {
        if self.side_mode.load(Ordering::Acquire) {
            self.side
                .insert((bucket, key.to_vec()), Some(value.to_vec()));
            return Ok(());
        }
        self.writer()?.lock().put(bucket, key, value)
    }

    fn delete(&mut self, bucket: Bucket, key: &[u8]) -> StorageResult<()> {
        if self.side_mode.load(Ordering::Acquire) {
            self.side.insert((bucket, key.to_vec()), None);
            return Ok(());
        }
        self.writer()?.lock().delete(bucket, key)
    }

    fn commit(&mut self) -> StorageResult<()> {
        self.drain_side()?;
        self.writer()?.lock().commit()
    }
}

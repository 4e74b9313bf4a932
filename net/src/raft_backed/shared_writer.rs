//! The backend as the node's MVCC store sees it: reads through fresh backend snapshots, writes
//! through the single `BatchWriter` behind a mutex, so a commit can run while the store is
//! only *read*-locked — front-end reads go on during the two fdatasyncs of a commit.
//!
//! Why this is sound:
//! 1. Writes (`BatchWrite::put/delete/commit`) take `&mut self`, i.e. the store's write lock;
//!    they reach the writer through `Mutex::get_mut`, no locking.
//! 2. [`NodeBackend::commit_shared`] runs under the store's read lock: apply (which needs the
//!    write lock) cannot run, so the consistent index it writes covers exactly the applied
//!    writes. Readers holding the read lock read through `Backend::snapshot`, which a commit
//!    never blocks (the backend's contract), and which sees the same logical contents before
//!    and after the commit (storage.rs guarantee 1).

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
}

struct Parts {
    backend: Backend,
    writer: Mutex<BatchWriter>,
}

fn closed() -> StorageError {
    StorageError::Failed("the backend is closed for a snapshot install".into())
}

impl NodeBackend {
    pub(crate) fn new(backend: Backend, writer: BatchWriter) -> Self {
        NodeBackend {
            parts: Some(Parts {
                backend,
                writer: Mutex::new(writer),
            }),
        }
    }

    fn parts(&self) -> StorageResult<&Parts> {
        self.parts.as_ref().ok_or_else(closed)
    }

    /// Drops the file handle and the writer (so the file can be replaced and reopened).
    pub(crate) fn close(&mut self) {
        self.parts = None;
    }

    /// `None` only after a failed snapshot install (the node has failed then).
    pub(crate) fn stats(&self) -> Option<BackendStats> {
        self.parts.as_ref().map(|p| p.backend.stats())
    }

    pub(crate) fn path(&self) -> Option<std::path::PathBuf> {
        self.parts.as_ref().map(|p| p.backend.path().to_path_buf())
    }

    /// Writes the consistent index and commits, with the store only read-locked (invariant 2).
    /// Same bytes as `MvccStore::commit`: the index as 8 big-endian bytes (etcd's encoding).
    pub(crate) fn commit_shared(&self, consistent_index: u64) -> StorageResult<()> {
        let mut w = self.parts()?.writer.lock();
        w.put(
            Bucket::Meta,
            META_CONSISTENT_INDEX,
            &consistent_index.to_be_bytes(),
        )?;
        w.commit()
    }
}

impl KvRead for NodeBackend {
    fn get(&self, bucket: Bucket, key: &[u8]) -> StorageResult<Option<Vec<u8>>> {
        self.parts()?.backend.snapshot().get(bucket, key)
    }

    fn scan(
        &self,
        bucket: Bucket,
        start: &[u8],
        end: &[u8],
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> StorageResult<()> {
        self.parts()?
            .backend
            .snapshot()
            .scan(bucket, start, end, visit)
    }
}

impl BatchWrite for NodeBackend {
    fn put(&mut self, bucket: Bucket, key: &[u8], value: &[u8]) -> StorageResult<()> {
        self.parts
            .as_mut()
            .ok_or_else(closed)?
            .writer
            .get_mut()
            .put(bucket, key, value)
    }

    fn delete(&mut self, bucket: Bucket, key: &[u8]) -> StorageResult<()> {
        self.parts
            .as_mut()
            .ok_or_else(closed)?
            .writer
            .get_mut()
            .delete(bucket, key)
    }

    fn commit(&mut self) -> StorageResult<()> {
        self.parts
            .as_mut()
            .ok_or_else(closed)?
            .writer
            .get_mut()
            .commit()
    }
}

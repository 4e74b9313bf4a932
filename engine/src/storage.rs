//! The contract between MVCC (above) and the backend (below).
//!
//! MVCC sees the backend as named buckets of sorted byte keys, read through snapshots and written
//! through one batch writer. This is etcd's `backend.ReadTx`/`BatchTx` split, made into traits so
//! MVCC can be tested against an in-memory model and run on the real B+tree.
//!
//! Guarantees every implementation gives:
//! 1. **Read-your-applied-writes.** Once a `BatchWrite` call returns, every snapshot taken after
//!    that point sees the write, whether or not it has been committed to disk yet (the read buffer).
//! 2. **Snapshots are stable.** A `KvRead` snapshot sees exactly the state at the moment it was
//!    taken, however long it is held and whatever is written or committed meanwhile.
//! 3. **Commits are atomic.** After a crash, the store reopens in the state of some
//!    `commit()` that returned `Ok` (or of the commit in flight, if its meta page became durable),
//!    never a mix. Writes applied after the last such commit are lost; the WAL replays them.
//! 4. **Errors.** A read error means corruption (named file, page, reason) or an I/O failure; a
//!    write or commit error leaves the store refusing further writes (fatal, not retriable).

use std::fmt;

/// A named, independent key space. MVCC's buckets follow etcd's names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Bucket {
    /// `key`: revision (17 bytes, big-endian) → mvccpb.KeyValue.
    Key,
    /// `meta`: consistent index, term, scheduled/finished compact revision.
    Meta,
    /// `lease`: lease ID (8 bytes big-endian) → lease record.
    Lease,
    /// `members`, `members_removed`, `cluster`: membership.
    Members,
    MembersRemoved,
    Cluster,
    /// `alarm`: raised alarms.
    Alarm,
    /// `auth`, `authUsers`, `authRoles`.
    Auth,
    AuthUsers,
    AuthRoles,
}

impl Bucket {
    pub const ALL: [Bucket; 10] = [
        Bucket::Key,
        Bucket::Meta,
        Bucket::Lease,
        Bucket::Members,
        Bucket::MembersRemoved,
        Bucket::Cluster,
        Bucket::Alarm,
        Bucket::Auth,
        Bucket::AuthUsers,
        Bucket::AuthRoles,
    ];

    /// The bucket's name as etcd spells it (also the name stored in the backend file).
    pub fn name(self) -> &'static [u8] {
        match self {
            Bucket::Key => b"key",
            Bucket::Meta => b"meta",
            Bucket::Lease => b"lease",
            Bucket::Members => b"members",
            Bucket::MembersRemoved => b"members_removed",
            Bucket::Cluster => b"cluster",
            Bucket::Alarm => b"alarm",
            Bucket::Auth => b"auth",
            Bucket::AuthUsers => b"authUsers",
            Bucket::AuthRoles => b"authRoles",
        }
    }
}

/// Errors from the storage contract. The backend keeps its own richer enum and converts.
#[derive(Debug)]
pub enum StorageError {
    /// On-disk data failed a check: where it is and what was wrong.
    Corrupt {
        file: String,
        offset: u64,
        reason: String,
    },
    /// The operating system failed an operation; the store is now read-only.
    Io(std::io::Error),
    /// The store refused a write because an earlier write or commit failed.
    Failed(String),
}

impl fmt::Display for StorageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StorageError::Corrupt {
                file,
                offset,
                reason,
            } => {
                write!(f, "corrupt data in {file} at offset {offset}: {reason}")
            }
            StorageError::Io(e) => write!(f, "I/O error: {e}"),
            StorageError::Failed(why) => write!(f, "storage refuses writes after failure: {why}"),
        }
    }
}

impl std::error::Error for StorageError {}

impl From<std::io::Error> for StorageError {
    fn from(e: std::io::Error) -> Self {
        StorageError::Io(e)
    }
}

pub type StorageResult<T> = Result<T, StorageError>;

/// A consistent read view (a snapshot). Cheap to take; hold it no longer than needed, since it
/// keeps freed pages from being reused.
pub trait KvRead {
    fn get(&self, bucket: Bucket, key: &[u8]) -> StorageResult<Option<Vec<u8>>>;

    /// Visits keys in `[start, end)` in ascending order (`end` empty = no upper bound) until
    /// `visit` returns `false`.
    fn scan(
        &self,
        bucket: Bucket,
        start: &[u8],
        end: &[u8],
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> StorageResult<()>;
}

/// The single writer. Writes are visible to new snapshots as soon as the call returns
/// (guarantee 1) and become durable at the next `commit`.
pub trait BatchWrite: KvRead {
    fn put(&mut self, bucket: Bucket, key: &[u8], value: &[u8]) -> StorageResult<()>;
    fn delete(&mut self, bucket: Bucket, key: &[u8]) -> StorageResult<()>;
    /// Makes every write so far durable and atomic (guarantee 3).
    fn commit(&mut self) -> StorageResult<()>;
}

//! MVCC's error enum: caller-visible etcd errors (one variant per etcd error string; the net
//! layer's table maps them to gRPC codes and messages), corruption, and storage failure.

use std::fmt;

use crate::storage::StorageError;

/// Errors of MVCC, lease and watch operations.
///
/// The `Err*` variants are etcd's apply-time errors (caller mistakes or races): the operation
/// changed nothing. `Corrupt` means stored data failed to decode (the store must stop serving);
/// `Storage` is a backend failure (fatal: the backend refuses further writes).
#[derive(Debug)]
pub enum MvccError {
    /// `etcdserver: mvcc: required revision has been compacted`
    ErrCompacted,
    /// `etcdserver: mvcc: required revision is a future revision`
    ErrFutureRev,
    /// `etcdserver: key not found` (ignore_value / ignore_lease on a missing key)
    ErrKeyNotFound,
    /// `etcdserver: requested lease not found`
    ErrLeaseNotFound,
    /// `etcdserver: lease already exists`
    ErrLeaseExists,
    /// `etcdserver: too large lease TTL`
    ErrLeaseTtlTooLarge,
    /// Lease renewal on a lessor that is not the primary (the front end forwards keepalives
    /// to the leader); etcd's `lease.ErrNotPrimary`.
    ErrNotPrimary,
    /// Stored data did not decode: which bucket/key and why.
    Corrupt { what: String },
    /// The backend failed (fatal).
    Storage(StorageError),
}

impl MvccError {
    /// etcd's exact message for the caller-visible variants (what clients match on).
    pub fn etcd_message(&self) -> Option<&'static str> {
        Some(match self {
            MvccError::ErrCompacted => "etcdserver: mvcc: required revision has been compacted",
            MvccError::ErrFutureRev => "etcdserver: mvcc: required revision is a future revision",
            MvccError::ErrKeyNotFound => "etcdserver: key not found",
            MvccError::ErrLeaseNotFound => "etcdserver: requested lease not found",
            MvccError::ErrLeaseExists => "etcdserver: lease already exists",
            MvccError::ErrLeaseTtlTooLarge => "etcdserver: too large lease TTL",
            MvccError::ErrNotPrimary => "not a primary lessor",
            MvccError::Corrupt { .. } | MvccError::Storage(_) => return None,
        })
    }
}

impl fmt::Display for MvccError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MvccError::Corrupt { what } => write!(f, "mvcc: corrupt data: {what}"),
            MvccError::Storage(e) => write!(f, "mvcc: backend failure: {e}"),
            other => f.write_str(other.etcd_message().unwrap_or("mvcc error")),
        }
    }
}

impl std::error::Error for MvccError {}

impl From<StorageError> for MvccError {
    fn from(e: StorageError) -> Self {
        MvccError::Storage(e)
    }
}

pub type MvccResult<T> = Result<T, MvccError>;

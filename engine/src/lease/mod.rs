//! Leases: TTL-bound handles that keys attach to. The lessor keeps the leases, which keys hang
//! on which lease, and expiry/checkpoint schedules. It never deletes keys itself: revocation
//! (client revoke or expiry) goes through the MVCC write path (`MvccStore::lease_revoke`) so
//! every member applies the same deletes at the same revision.

mod id_gen;
mod lessor;

pub use id_gen::LeaseIdGen;
pub use lessor::{
    DEFAULT_CHECKPOINT_INTERVAL, EXPIRED_RETRY_INTERVAL, Lease, LeaseRecord, Lessor, MAX_LEASE_TTL,
    MIN_LEASE_TTL, TimeToLive,
};

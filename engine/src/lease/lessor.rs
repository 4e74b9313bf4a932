//! The lessor: leases, their attached keys, and the expiry and checkpoint schedules.
//!
//! Time is injected: every method that depends on time takes `now`, so tests never sleep.
//! Only the primary (the raft leader's lessor) runs expiry clocks; on other members every lease
//! is "forever" until `promote`. Expiry does not delete anything here: `expired` reports IDs,
//! and the caller proposes a revoke through consensus (etcd's design, so followers agree).
//!
//! Invariants:
//! 1. `key_lease[k] == id` iff `leases[id].keys` contains `k`.
//! 2. Heap entries may be stale (lazy deletion): an entry counts only if its time equals the
//!    lease's current expiry (expiry heap) or the lease still exists (checkpoint heap).

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, HashMap};
use std::time::{Duration, Instant};

use crate::mvcc::MvccError;

/// The largest TTL a client may ask for (etcd's `MaxLeaseTTL`), in seconds.
pub const MAX_LEASE_TTL: i64 = 9_000_000_000;
/// The smallest granted TTL in seconds: ceil(1.5 × election timeout) with etcd's defaults.
/// The grant path raises smaller TTLs (0 and negatives included) to it.
pub const MIN_LEASE_TTL: i64 = 2;
/// How often the primary checkpoints the remaining TTL of long leases (etcd: 5 minutes).
pub const DEFAULT_CHECKPOINT_INTERVAL: Duration = Duration::from_secs(300);
/// An expired lease is reported again after this long if its revoke has not been applied.
pub const EXPIRED_RETRY_INTERVAL: Duration = Duration::from_secs(3);

/// The `lease` bucket value: etcd's `leasepb.Lease`.
#[derive(Clone, PartialEq, Eq, ::prost::Message)]
pub struct LeaseRecord {
    #[prost(int64, tag = "1")]
    pub id: i64,
    #[prost(int64, tag = "2")]
    pub ttl: i64,
    #[prost(int64, tag = "3")]
    pub remaining_ttl: i64,
}

/// One lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    pub id: i64,
    /// Granted TTL in seconds (after raising to the minimum).
    pub ttl: i64,
    /// Remaining TTL recorded by the last checkpoint (0 = none); used when the lease's clock is
    /// restarted on a new primary instead of the full TTL.
    pub remaining_ttl: i64,
    /// When the lease expires; `None` = never (not primary).
    pub expiry: Option<Instant>,
    /// Attached keys, sorted (revoke deletes them in this order).
    pub keys: BTreeSet<Vec<u8>>,
}

impl Lease {
    /// The persisted form.
    pub fn record(&self) -> LeaseRecord {
        LeaseRecord {
            id: self.id,
            ttl: self.ttl,
            remaining_ttl: self.remaining_ttl,
        }
    }

    fn refresh(&mut self, now: Instant, extend: Duration) {
        let secs = if self.remaining_ttl > 0 {
            self.remaining_ttl
        } else {
            self.ttl
        };
        self.expiry = Some(now + extend + Duration::from_secs(secs.max(0) as u64));
    }
}

/// What `TimeToLive` reports for an existing lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TimeToLive {
    /// Remaining whole seconds (truncated); `i64::MAX / 1e9`-ish when not primary (forever).
    pub ttl: i64,
    pub granted_ttl: i64,
    pub keys: Vec<Vec<u8>>,
}

/// The lessor. See the module doc.
#[derive(Debug)]
pub struct Lessor {
    leases: HashMap<i64, Lease>,
    key_lease: HashMap<Vec<u8>, i64>,
    expiry_heap: BinaryHeap<Reverse<(Instant, i64)>>,
    checkpoint_heap: BinaryHeap<Reverse<(Instant, i64)>>,
    min_ttl: i64,
    checkpoint_interval: Duration,
    primary: bool,
}

impl Default for Lessor {
    fn default() -> Self {
        Lessor::new(MIN_LEASE_TTL, DEFAULT_CHECKPOINT_INTERVAL)
    }
}

impl Lessor {
    pub fn new(min_ttl: i64, checkpoint_interval: Duration) -> Self {
        Lessor {
            leases: HashMap::new(),
            key_lease: HashMap::new(),
            expiry_heap: BinaryHeap::new(),
            checkpoint_heap: BinaryHeap::new(),
            min_ttl,
            checkpoint_interval,
            primary: false,
        }
    }

    pub fn is_primary(&self) -> bool {
        self.primary
    }

    pub fn min_ttl(&self) -> i64 {
        self.min_ttl
    }

    fn schedule(&mut self, id: i64, now: Instant) {
        let Some(l) = self.leases.get(&id) else {
            return;
        };
        if let Some(t) = l.expiry {
            self.expiry_heap.push(Reverse((t, id)));
        }
        if self.primary && Duration::from_secs(l.ttl.max(0) as u64) > self.checkpoint_interval {
            self.checkpoint_heap
                .push(Reverse((now + self.checkpoint_interval, id)));
        }
    }

    /// Creates a lease (`id` ≠ 0; the front end picks IDs for requests with ID 0). Returns the
    /// lease as granted (TTL raised to the minimum). Changes nothing on error.
    pub fn grant(&mut self, id: i64, ttl: i64, now: Instant) -> Result<&Lease, MvccError> {
        if id == 0 {
            return Err(MvccError::ErrLeaseNotFound);
        }
        if ttl > MAX_LEASE_TTL {
            return Err(MvccError::ErrLeaseTtlTooLarge);
        }
        if self.leases.contains_key(&id) {
            return Err(MvccError::ErrLeaseExists);
        }
        let mut l = Lease {
            id,
            ttl: ttl.max(self.min_ttl),
            remaining_ttl: 0,
            expiry: None,
            keys: BTreeSet::new(),
        };
        if self.primary {
            l.refresh(now, Duration::ZERO);
        }
        self.leases.insert(id, l);
        self.schedule(id, now);
        Ok(&self.leases[&id])
    }

    /// Removes a lease and its key attachments; returns it (its keys sorted).
    pub fn remove(&mut self, id: i64) -> Option<Lease> {
        let l = self.leases.remove(&id)?;
        for k in &l.keys {
            self.key_lease.remove(k);
        }
        Some(l)
    }

    /// Restarts a lease's clock (keepalive). Only the primary renews; an expired lease (its
    /// revoke pending) is not found. Returns the granted TTL.
    pub fn renew(&mut self, id: i64, now: Instant) -> Result<i64, MvccError> {
        if !self.primary {
            return Err(MvccError::ErrNotPrimary);
        }
        let l = self
            .leases
            .get_mut(&id)
            .ok_or(MvccError::ErrLeaseNotFound)?;
        if l.expiry.is_some_and(|t| t <= now) {
            return Err(MvccError::ErrLeaseNotFound);
        }
        l.remaining_ttl = 0;
        l.refresh(now, Duration::ZERO);
        let ttl = l.ttl;
        self.schedule(id, now);
        Ok(ttl)
    }

    pub fn lookup(&self, id: i64) -> Option<&Lease> {
        self.leases.get(&id)
    }

    /// The lease a key is attached to (0 = none).
    pub fn lease_of(&self, key: &[u8]) -> i64 {
        // No hashing of the key when no key has a lease (the common case of a put).
        if self.key_lease.is_empty() {
            return 0;
        }
        self.key_lease.get(key).copied().unwrap_or(0)
    }

    pub fn attach(&mut self, id: i64, key: &[u8]) -> Result<(), MvccError> {
        let l = self
            .leases
            .get_mut(&id)
            .ok_or(MvccError::ErrLeaseNotFound)?;
        l.keys.insert(key.to_vec());
        self.key_lease.insert(key.to_vec(), id);
        Ok(())
    }

    pub fn detach(&mut self, id: i64, key: &[u8]) -> Result<(), MvccError> {
        let l = self
            .leases
            .get_mut(&id)
            .ok_or(MvccError::ErrLeaseNotFound)?;
        l.keys.remove(key);
        self.key_lease.remove(key);
        Ok(())
    }

    /// TimeToLive of a lease, `None` if unknown.
    pub fn time_to_live(&self, id: i64, now: Instant, with_keys: bool) -> Option<TimeToLive> {
        let l = self.leases.get(&id)?;
        let ttl = match l.expiry {
            // Go's time.Duration(MaxInt64).Seconds(), truncated.
            None => i64::MAX / 1_000_000_000,
            Some(t) => t.saturating_duration_since(now).as_secs() as i64,
        };
        Some(TimeToLive {
            ttl,
            granted_ttl: l.ttl,
            keys: if with_keys {
                l.keys.iter().cloned().collect()
            } else {
                Vec::new()
            },
        })
    }

    /// All lease IDs, soonest expiry first (ties and non-primary leases by ID).
    pub fn leases(&self) -> Vec<i64> {
        let mut v: Vec<(Option<Instant>, i64)> =
            self.leases.values().map(|l| (l.expiry, l.id)).collect();
        v.sort_by(|a, b| match (a.0, b.0) {
            (Some(x), Some(y)) => x.cmp(&y).then(a.1.cmp(&b.1)),
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (None, None) => a.1.cmp(&b.1),
        });
        v.into_iter().map(|(_, id)| id).collect()
    }

    /// Up to `limit` leases that have expired by `now`, for the caller to revoke through
    /// consensus. A reported lease is reported again after `EXPIRED_RETRY_INTERVAL` if it still
    /// exists (the revoke was lost, e.g. in a leader change).
    pub fn expired(&mut self, now: Instant, limit: usize) -> Vec<i64> {
        let mut out = Vec::new();
        while out.len() < limit {
            let Some(&Reverse((t, id))) = self.expiry_heap.peek() else {
                break;
            };
            if t > now {
                break;
            }
            self.expiry_heap.pop();
            let Some(l) = self.leases.get_mut(&id) else {
                continue;
            };
            let Some(exp) = l.expiry else { continue };
            if exp > now {
                // Stale entry of a renewed lease; its current expiry has its own entry.
                continue;
            }
            if t < exp {
                // Stale entry from before a renewal; the newer entry reports the lease.
                continue;
            }
            out.push(id);
            let retry = now + EXPIRED_RETRY_INTERVAL;
            self.expiry_heap.push(Reverse((retry, id)));
        }
        out
    }

    /// Records a checkpoint (applied through consensus on every member).
    pub fn checkpoint(&mut self, id: i64, remaining_ttl: i64) -> Option<&Lease> {
        let l = self.leases.get_mut(&id)?;
        l.remaining_ttl = remaining_ttl;
        Some(l)
    }

    /// Checkpoints the primary should propose now: `(id, remaining seconds)`, at most `limit`.
    pub fn checkpoints_due(&mut self, now: Instant, limit: usize) -> Vec<(i64, i64)> {
        let mut out = Vec::new();
        if !self.primary {
            return out;
        }
        while out.len() < limit {
            let Some(&Reverse((t, id))) = self.checkpoint_heap.peek() else {
                break;
            };
            if t > now {
                break;
            }
            self.checkpoint_heap.pop();
            let Some(l) = self.leases.get(&id) else {
                continue;
            };
            let Some(exp) = l.expiry else { continue };
            let remaining = exp.saturating_duration_since(now);
            if remaining.is_zero() {
                continue;
            }
            let secs = remaining.as_secs() as i64 + i64::from(remaining.subsec_nanos() > 0);
            out.push((id, secs));
            if remaining > self.checkpoint_interval {
                self.checkpoint_heap
                    .push(Reverse((now + self.checkpoint_interval, id)));
            }
        }
        out
    }

    /// Becomes primary: every lease's clock starts at `now + extend` plus its remaining (or full)
    /// TTL.
    pub fn promote(&mut self, now: Instant, extend: Duration) {
        self.primary = true;
        self.expiry_heap.clear();
        self.checkpoint_heap.clear();
        let ids: Vec<i64> = self.leases.keys().copied().collect();
        for id in ids {
            if let Some(l) = self.leases.get_mut(&id) {
                l.refresh(now, extend);
            }
            self.schedule(id, now);
        }
    }

    /// Stops being primary: leases never expire locally until the next promote.
    pub fn demote(&mut self) {
        self.primary = false;
        for l in self.leases.values_mut() {
            l.expiry = None;
        }
        self.expiry_heap.clear();
        self.checkpoint_heap.clear();
    }

    /// Re-creates a lease from its record on open (TTL raised to the minimum, clock stopped).
    pub fn restore(&mut self, rec: &LeaseRecord) {
        self.leases.insert(
            rec.id,
            Lease {
                id: rec.id,
                ttl: rec.ttl.max(self.min_ttl),
                remaining_ttl: rec.remaining_ttl,
                expiry: None,
                keys: BTreeSet::new(),
            },
        );
    }

    pub fn len(&self) -> usize {
        self.leases.len()
    }

    pub fn is_empty(&self) -> bool {
        self.leases.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn primary(now: Instant) -> Lessor {
        let mut l = Lessor::default();
        l.promote(now, Duration::ZERO);
        l
    }

    #[test]
    fn grant_raises_small_ttls_and_refuses_bad_ones() {
        let t0 = Instant::now();
        let mut l = primary(t0);
        assert_eq!(l.grant(1, 1, t0).unwrap().ttl, 2);
        assert_eq!(l.grant(2, 0, t0).unwrap().ttl, 2);
        assert_eq!(l.grant(3, -5, t0).unwrap().ttl, 2);
        assert_eq!(l.grant(4, 30, t0).unwrap().ttl, 30);
        assert!(matches!(l.grant(4, 30, t0), Err(MvccError::ErrLeaseExists)));
        assert!(matches!(
            l.grant(5, MAX_LEASE_TTL + 1, t0),
            Err(MvccError::ErrLeaseTtlTooLarge)
        ));
        assert!(
            l.grant(-7, 10, t0).is_ok(),
            "negative client IDs are used as given"
        );
        assert_eq!(l.len(), 5);
    }

    #[test]
    fn expiry_renewal_and_retry() {
        let t0 = Instant::now();
        let mut l = primary(t0);
        l.grant(1, 10, t0).unwrap();
        l.grant(2, 20, t0).unwrap();
        assert!(l.expired(t0 + Duration::from_secs(9), 10).is_empty());
        assert_eq!(l.renew(1, t0 + Duration::from_secs(9)).unwrap(), 10);
        assert!(l.expired(t0 + Duration::from_secs(18), 10).is_empty());
        assert_eq!(l.expired(t0 + Duration::from_secs(19), 10), vec![1]);
        // Not reported again until the retry interval passed.
        assert!(l.expired(t0 + Duration::from_secs(19), 10).is_empty());
        assert!(matches!(
            l.renew(1, t0 + Duration::from_secs(19)),
            Err(MvccError::ErrLeaseNotFound)
        ));
        assert_eq!(l.expired(t0 + Duration::from_secs(22), 10), vec![2, 1]);
        l.remove(1);
        assert_eq!(l.expired(t0 + Duration::from_secs(30), 10), vec![2]);
    }

    #[test]
    fn ttl_and_keys() {
        let t0 = Instant::now();
        let mut l = primary(t0);
        l.grant(9, 30, t0).unwrap();
        l.attach(9, b"b").unwrap();
        l.attach(9, b"a").unwrap();
        assert_eq!(l.lease_of(b"a"), 9);
        let ttl = l
            .time_to_live(9, t0 + Duration::from_millis(1500), true)
            .unwrap();
        assert_eq!(ttl.ttl, 28, "remaining seconds are truncated");
        assert_eq!(ttl.granted_ttl, 30);
        assert_eq!(ttl.keys, vec![b"a".to_vec(), b"b".to_vec()]);
        l.detach(9, b"a").unwrap();
        assert_eq!(l.lease_of(b"a"), 0);
        assert!(l.time_to_live(8, t0, false).is_none());
        let gone = l.remove(9).unwrap();
        assert_eq!(gone.keys.len(), 1);
        assert_eq!(l.lease_of(b"b"), 0);
    }

    #[test]
    fn followers_do_not_expire_and_promote_uses_checkpoints() {
        let t0 = Instant::now();
        let mut l = Lessor::default();
        l.grant(1, 600, t0).unwrap();
        assert!(l.expired(t0 + Duration::from_secs(10_000), 10).is_empty());
        assert!(matches!(l.renew(1, t0), Err(MvccError::ErrNotPrimary)));
        l.checkpoint(1, 100).unwrap();
        l.promote(t0, Duration::ZERO);
        assert!(l.expired(t0 + Duration::from_secs(99), 10).is_empty());
        assert_eq!(l.expired(t0 + Duration::from_secs(100), 10), vec![1]);
    }

    #[test]
    fn long_leases_are_checkpointed() {
        let t0 = Instant::now();
        let mut l = Lessor::new(2, Duration::from_secs(60));
        l.promote(t0, Duration::ZERO);
        l.grant(1, 600, t0).unwrap();
        l.grant(2, 30, t0).unwrap();
        assert!(
            l.checkpoints_due(t0 + Duration::from_secs(59), 10)
                .is_empty()
        );
        assert_eq!(
            l.checkpoints_due(t0 + Duration::from_secs(60), 10),
            vec![(1, 540)]
        );
        assert_eq!(
            l.checkpoints_due(t0 + Duration::from_secs(120), 10),
            vec![(1, 480)]
        );
    }
}

//! The read buffer: writes applied since the last commit, visible to snapshots before they are
//! on disk (storage.rs guarantee 1).
//!
//! One `Buffer` ("generation") exists per commit interval. The writer appends to the current
//! generation; a commit writes its final contents into the tree and starts a new, empty one.
//! A snapshot holds its generation and the sequence number it saw, so it sees exactly the
//! writes with `seq <= its seq` (guarantee 2), even after the writer moved on or committed.
//!
//! Each key keeps a short list of versions `(seq, value)`. A new write replaces the newest
//! version in place when no snapshot has seen it (its seq is above `pinned`), so a key written
//! 10,000 times between commits with no reader in between keeps one version.
//!
//! Lock: one `RwLock` per generation, held for one map operation (never across a callback or a
//! tree read). Readers of frozen generations (after a commit) never contend with the writer.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::RwLock;

use crate::storage::Bucket;

pub(crate) type Bytes = Arc<[u8]>;

/// A buffered value: `None` is a delete.
pub(crate) type Slot = Option<Bytes>;

#[derive(Default)]
struct Inner {
    /// Sequence number of the newest write.
    seq: u64,
    /// Highest seq any snapshot has taken; versions above it are unseen. Raised under the read
    /// lock (many snapshots at once), read by the writer under the write lock, so a snapshot's
    /// pin and a write's in-place replacement never interleave.
    pinned: AtomicU64,
    maps: [BTreeMap<Bytes, Vec<(u64, Slot)>>; Bucket::ALL.len()],
    /// Per bucket: the key of the newest write, and whether some write of this generation came
    /// after a write of a greater key (the puts did not arrive in key order).
    /// (A copy, so that the write path allocates nothing for it once the buffer has grown.)
    arrival: [(Vec<u8>, bool); Bucket::ALL.len()],
}

/// One bucket's buffered writes as a commit applies them.
pub(crate) struct Latest {
    pub bucket: Bucket,
    /// The writes arrived in ascending key order (equal keys count as ascending): appends and
    /// loads of sorted data do, random puts do not. The tree's fill rule depends on it.
    pub arrived_sorted: bool,
    /// The newest state of every written key, in key order.
    pub entries: Vec<(Bytes, Slot)>,
}

#[derive(Default)]
pub(crate) struct Buffer {
    inner: RwLock<Inner>,
}

pub(crate) fn bucket_index(b: Bucket) -> usize {
    match b {
        Bucket::Key => 0,
        Bucket::Meta => 1,
        Bucket::Lease => 2,
        Bucket::Members => 3,
        Bucket::MembersRemoved => 4,
        Bucket::Cluster => 5,
        Bucket::Alarm => 6,
        Bucket::Auth => 7,
        Bucket::AuthUsers => 8,
        Bucket::AuthRoles => 9,
    }
}

fn visible(versions: &[(u64, Slot)], seq: u64) -> Option<&Slot> {
    versions
        .iter()
        .rev()
        .find(|(s, _)| *s <= seq)
        .map(|(_, v)| v)
}

impl Buffer {
    /// Pins and returns the current sequence number for a new snapshot.
    pub(crate) fn pin(&self) -> u64 {
        let g = self.inner.read();
        g.pinned.fetch_max(g.seq, Ordering::Relaxed);
        g.seq
    }

    pub(crate) fn write(&self, b: Bucket, key: &[u8], val: Slot) {
        let mut g = self.inner.write();
        g.seq += 1;
        let (seq, pinned) = (g.seq, g.pinned.load(Ordering::Relaxed));
        let i = bucket_index(b);
        let g = &mut *g;
        let (newest, unordered) = &mut g.arrival[i];
        // The first write of a generation compares with the empty key, which sorts first.
        *unordered |= key < newest.as_slice();
        newest.clear();
        newest.extend_from_slice(key);
        let map = &mut g.maps[i];
        match map.get_mut(key) {
            Some(versions) => {
                let last = versions.last_mut().expect("versions are never empty");
                if last.0 > pinned {
                    *last = (seq, val);
                } else {
                    versions.push((seq, val));
                }
            }
            None => {
                map.insert(Arc::from(key), vec![(seq, val)]);
            }
        }
    }

    /// The buffered state of `key` at `seq`: `None` if not buffered, `Some(None)` if deleted.
    pub(crate) fn get(&self, b: Bucket, key: &[u8], seq: u64) -> Option<Slot> {
        let g = self.inner.read();
        g.maps[bucket_index(b)]
            .get(key)
            .and_then(|v| visible(v, seq))
            .cloned()
    }

    /// Buffered entries in `[start, end)` at `seq`, in key order.
    pub(crate) fn range(
        &self,
        b: Bucket,
        start: &[u8],
        end: &[u8],
        seq: u64,
    ) -> Vec<(Bytes, Slot)> {
        if !end.is_empty() && start >= end {
            return Vec::new();
        }
        let g = self.inner.read();
        let hi = if end.is_empty() {
            Bound::Unbounded
        } else {
            Bound::Excluded(end)
        };
        g.maps[bucket_index(b)]
            .range::<[u8], _>((Bound::Included(start), hi))
            .filter_map(|(k, v)| visible(v, seq).map(|s| (k.clone(), s.clone())))
            .collect()
    }

    /// The newest state of every buffered key, per bucket, in key order (for the commit).
    pub(crate) fn latest(&self) -> Vec<Latest> {
        let g = self.inner.read();
        Bucket::ALL
            .iter()
            .map(|&b| {
                let m = &g.maps[bucket_index(b)];
                Latest {
                    bucket: b,
                    arrived_sorted: !g.arrival[bucket_index(b)].1,
                    entries: m
                        .iter()
                        .map(|(k, v)| (k.clone(), v.last().expect("non-empty").1.clone()))
                        .collect(),
                }
            })
            .filter(|l| !l.entries.is_empty())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_follow_snapshots() {
        let b = Buffer::default();
        b.write(Bucket::Key, b"a", Some(Arc::from(&b"1"[..])));
        b.write(Bucket::Key, b"a", Some(Arc::from(&b"2"[..])));
        let s = b.pin();
        b.write(Bucket::Key, b"a", None);
        b.write(Bucket::Key, b"b", Some(Arc::from(&b"3"[..])));
        assert_eq!(
            b.get(Bucket::Key, b"a", s),
            Some(Some(Arc::from(&b"2"[..])))
        );
        assert_eq!(b.get(Bucket::Key, b"b", s), None);
        let now = b.pin();
        assert_eq!(b.get(Bucket::Key, b"a", now), Some(None));
        assert_eq!(b.range(Bucket::Key, b"", b"", s).len(), 1);
        assert_eq!(b.range(Bucket::Key, b"", b"", now).len(), 2);
        assert_eq!(b.get(Bucket::Meta, b"a", now), None);
    }

    #[test]
    fn arrival_order_is_tracked_per_bucket() {
        let v = || Some(Arc::from(&b"v"[..]));
        let sorted = |b: &Buffer, bucket| {
            b.latest()
                .into_iter()
                .find(|l| l.bucket == bucket)
                .map(|l| l.arrived_sorted)
        };
        let b = Buffer::default();
        b.write(Bucket::Key, b"a", v());
        b.write(Bucket::Key, b"a", None);
        b.write(Bucket::Key, b"b", v());
        b.write(Bucket::Meta, b"z", v());
        b.write(Bucket::Lease, b"m", v());
        b.write(Bucket::Lease, b"c", v());
        assert_eq!(sorted(&b, Bucket::Key), Some(true));
        assert_eq!(sorted(&b, Bucket::Meta), Some(true));
        assert_eq!(sorted(&b, Bucket::Lease), Some(false));
        b.write(Bucket::Key, b"ab", v());
        assert_eq!(sorted(&b, Bucket::Key), Some(false));
        // Returning to order later does not undo it.
        b.write(Bucket::Key, b"c", v());
        assert_eq!(sorted(&b, Bucket::Key), Some(false));
        assert_eq!(sorted(&b, Bucket::Alarm), None);
    }
}

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
use smallvec::{SmallVec, smallvec};

use crate::storage::Bucket;

pub(crate) type Bytes = Arc<[u8]>;

/// A buffered value: `None` is a delete.
pub(crate) type Slot = Option<Bytes>;

/// A key's versions, oldest first, never empty. Almost every key has one (it is replaced in
/// place while no snapshot has seen it), kept inline.
type Versions = SmallVec<[(u64, Slot); 1]>;

/// One bucket's buffered keys, in two sorted parts with no key in both:
/// - `tail`: keys that arrived above every key buffered before them, in arrival (= key) order.
///   An append of ascending keys (etcd's revisions, a sorted load) only ever pushes here: no
///   search, no tree node to split.
/// - `map`: every other key.
///
/// Invariant: when `tail` is not empty, its last key is the greatest buffered key (every key of
/// `map` sorts below it), since a key joins `tail` only when it is above every buffered key.
/// Example: writes `c, d, a, e, b` leave `tail = [c, d, e]`, `map = {a, b}`; a read of `e`
/// binary-searches `tail`; a scan merges the two parts: `a, b, c, d, e`.
#[derive(Default)]
struct Keys {
    map: BTreeMap<Bytes, Versions>,
    tail: Vec<(Bytes, Versions)>,
}

impl Keys {
    /// The greatest buffered key.
    fn max(&self) -> Option<&[u8]> {
        match self.tail.last() {
            Some((k, _)) => Some(k),
            None => self.map.last_key_value().map(|(k, _)| &**k),
        }
    }

    fn tail_index(&self, key: &[u8]) -> Result<usize, usize> {
        self.tail.binary_search_by(|(k, _)| (**k).cmp(key))
    }

    fn get(&self, key: &[u8]) -> Option<&Versions> {
        match self.tail_index(key) {
            Ok(i) => Some(&self.tail[i].1),
            Err(_) => self.map.get(key),
        }
    }

    fn get_mut(&mut self, key: &[u8]) -> Option<&mut Versions> {
        match self.tail_index(key) {
            Ok(i) => Some(&mut self.tail[i].1),
            Err(_) => self.map.get_mut(key),
        }
    }

    /// Entries with keys in `[start, end)` (`end` empty = unbounded), in key order: the two
    /// parts merged.
    fn range<'a>(
        &'a self,
        start: &[u8],
        end: &[u8],
    ) -> impl Iterator<Item = (&'a Bytes, &'a Versions)> + 'a {
        let hi = if end.is_empty() {
            Bound::Unbounded
        } else {
            Bound::Excluded(end)
        };
        let from = self.tail.partition_point(|(k, _)| **k < *start);
        let to = if end.is_empty() {
            self.tail.len()
        } else {
            self.tail.partition_point(|(k, _)| **k < *end)
        };
        let to = to.max(from);
        let map = self.map.range::<[u8], _>((Bound::Included(start), hi));
        let tail = self.tail[from..to].iter().map(|(k, v)| (k, v));
        Merge {
            a: map.peekable(),
            b: tail.peekable(),
        }
    }
}

/// Two ascending iterators of distinct keys merged into one ascending iterator.
struct Merge<A: Iterator, B: Iterator> {
    a: std::iter::Peekable<A>,
    b: std::iter::Peekable<B>,
}

impl<'a, A, B> Iterator for Merge<A, B>
where
    A: Iterator<Item = (&'a Bytes, &'a Versions)>,
    B: Iterator<Item = (&'a Bytes, &'a Versions)>,
{
    type Item = (&'a Bytes, &'a Versions);

    fn next(&mut self) -> Option<Self::Item> {
        match (self.a.peek(), self.b.peek()) {
            (Some((ka, _)), Some((kb, _))) if ka < kb => self.a.next(),
            (Some(_), Some(_)) | (None, _) => self.b.next(),
            (Some(_), None) => self.a.next(),
        }
    }
}

#[derive(Default)]
struct Inner {
    /// Sequence number of the newest write.
    seq: u64,
    /// Highest seq any snapshot has taken; versions above it are unseen. Raised under the read
    /// lock (many snapshots at once), read by the writer under the write lock, so a snapshot's
    /// pin and a write's in-place replacement never interleave.
    pinned: AtomicU64,
    keys: [Keys; Bucket::ALL.len()],
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

/// Most tail entries per bucket a successor generation reserves room for (a bound on the memory
/// an idle writer keeps: 64Ki entries of ~48 bytes).
const MAX_TAIL_RESERVE: usize = 1 << 16;

impl Buffer {
    /// An empty generation to follow this one: each bucket's append tail has room for as many
    /// keys as this generation appended there (at most [`MAX_TAIL_RESERVE`]), so that a steady
    /// stream of appends (etcd's revisions, one batch after another) pushes without regrowing
    /// and copying the tail at each doubling.
    pub(crate) fn successor(&self) -> Buffer {
        let next = Buffer::default();
        {
            let g = self.inner.read();
            let mut n = next.inner.write();
            for (to, from) in n.keys.iter_mut().zip(&g.keys) {
                to.tail.reserve_exact(from.tail.len().min(MAX_TAIL_RESERVE));
            }
        }
        next
    }

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
        let keys = &mut g.keys[i];
        // An append above every buffered key: no search (`Keys` invariant).
        if keys.max().is_none_or(|m| key > m) {
            keys.tail.push((Arc::from(key), smallvec![(seq, val)]));
            return;
        }
        match keys.get_mut(key) {
            Some(versions) => {
                let last = versions.last_mut().expect("versions are never empty");
                if last.0 > pinned {
                    *last = (seq, val);
                } else {
                    versions.push((seq, val));
                }
            }
            None => {
                keys.map.insert(Arc::from(key), smallvec![(seq, val)]);
            }
        }
    }

    /// The buffered state of `key` at `seq`: `None` if not buffered, `Some(None)` if deleted.
    pub(crate) fn get(&self, b: Bucket, key: &[u8], seq: u64) -> Option<Slot> {
        let g = self.inner.read();
        g.keys[bucket_index(b)]
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
        g.keys[bucket_index(b)]
            .range(start, end)
            .filter_map(|(k, v)| visible(v, seq).map(|s| (k.clone(), s.clone())))
            .collect()
    }

    /// The newest state of every buffered key, per bucket, in key order (for the commit).
    pub(crate) fn latest(&self) -> Vec<Latest> {
        let g = self.inner.read();
        Bucket::ALL
            .iter()
            .map(|&b| {
                let keys = &g.keys[bucket_index(b)];
                let mut entries = Vec::with_capacity(keys.map.len() + keys.tail.len());
                entries.extend(
                    keys.range(b"", b"")
                        .map(|(k, v)| (k.clone(), v.last().expect("non-empty").1.clone())),
                );
                Latest {
                    bucket: b,
                    arrived_sorted: !g.arrival[bucket_index(b)].1,
                    entries,
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

    /// Random writes in runs of ascending keys (which take the append path) and random keys
    /// (which go to the map, or update a key of either part), with snapshots pinned along the
    /// way: every get, range and `latest` agrees with a model of versions per snapshot.
    #[test]
    fn appends_and_random_writes_read_like_a_model() {
        use rand::{Rng, SeedableRng, rngs::StdRng};
        for seed in 0..20u64 {
            let mut rng = StdRng::seed_from_u64(seed);
            let b = Buffer::default();
            let mut model: BTreeMap<Vec<u8>, Slot> = BTreeMap::new();
            let mut snaps: Vec<(u64, BTreeMap<Vec<u8>, Slot>)> = Vec::new();
            let mut next_append = 100u32;
            for n in 0..400u32 {
                let key: Vec<u8> = if rng.random_bool(0.5) {
                    next_append += rng.random_range(1..4);
                    format!("k{next_append:05}").into_bytes()
                } else {
                    format!("k{:05}", rng.random_range(90..next_append + 5)).into_bytes()
                };
                let val: Slot = if rng.random_bool(0.2) {
                    None
                } else {
                    Some(Arc::from(n.to_le_bytes().as_slice()))
                };
                b.write(Bucket::Key, &key, val.clone());
                model.insert(key, val);
                if rng.random_bool(0.05) {
                    snaps.push((b.pin(), model.clone()));
                }
            }
            snaps.push((b.pin(), model.clone()));
            for (seq, m) in &snaps {
                for k in 85..next_append + 8 {
                    let key = format!("k{k:05}").into_bytes();
                    assert_eq!(
                        b.get(Bucket::Key, &key, *seq),
                        m.get(&key).cloned(),
                        "seed {seed}"
                    );
                }
                for _ in 0..20 {
                    let lo = format!("k{:05}", rng.random_range(85..next_append + 8)).into_bytes();
                    let hi = if rng.random_bool(0.2) {
                        Vec::new()
                    } else {
                        format!("k{:05}", rng.random_range(85..next_append + 8)).into_bytes()
                    };
                    let got: Vec<(Vec<u8>, Slot)> = b
                        .range(Bucket::Key, &lo, &hi, *seq)
                        .into_iter()
                        .map(|(k, v)| (k.to_vec(), v))
                        .collect();
                    let want: Vec<(Vec<u8>, Slot)> = m
                        .iter()
                        .filter(|(k, _)| **k >= lo && (hi.is_empty() || **k < hi))
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect();
                    assert_eq!(got, want, "seed {seed} range {lo:?}..{hi:?}");
                }
            }
            let latest = b.latest();
            assert_eq!(latest.len(), 1);
            let got: Vec<(Vec<u8>, Slot)> = latest[0]
                .entries
                .iter()
                .map(|(k, v)| (k.to_vec(), v.clone()))
                .collect();
            let want: Vec<(Vec<u8>, Slot)> = model.into_iter().collect();
            assert_eq!(got, want, "seed {seed}");
        }
    }

    #[test]
    fn successor_reserves_the_tail_and_starts_empty() {
        let b = Buffer::default();
        for k in 0..100u32 {
            b.write(Bucket::Key, &k.to_be_bytes(), None);
        }
        b.write(Bucket::Lease, b"x", None);
        let s = b.pin();
        let next = b.successor();
        assert!(next.latest().is_empty());
        assert_eq!(next.get(Bucket::Key, &7u32.to_be_bytes(), s), None);
        {
            let g = next.inner.read();
            assert!(g.keys[bucket_index(Bucket::Key)].tail.capacity() >= 100);
            assert!(g.keys[bucket_index(Bucket::Lease)].tail.capacity() >= 1);
            assert_eq!(g.keys[bucket_index(Bucket::Meta)].tail.capacity(), 0);
        }
        // The old generation is unchanged.
        assert_eq!(b.latest()[0].entries.len(), 100);
    }

    #[test]
    fn ascending_writes_take_the_append_path() {
        let b = Buffer::default();
        for k in [b"b", b"c", b"a", b"d", b"c"] {
            b.write(Bucket::Key, k, None);
        }
        let g = b.inner.read();
        let keys = &g.keys[bucket_index(Bucket::Key)];
        let tail: Vec<&[u8]> = keys.tail.iter().map(|(k, _)| &**k).collect();
        assert_eq!(tail, [&b"b"[..], b"c", b"d"]);
        assert_eq!(keys.map.len(), 1);
    }
}

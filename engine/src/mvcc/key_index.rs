//! The in-memory index: user key → the revisions at which it changed, grouped in generations.
//!
//! A key's life between its creation and its deletion is one *generation*: the list of the
//! revisions of its puts, closed by the revision of the delete (the tombstone). After a delete a
//! new, empty generation is opened; a later put fills it. The index answers "which revision holds
//! key K as of store revision R" without touching the backend, and compaction decides which
//! backend entries may be removed.
//!
//! Worked example (the one etcd documents). Key `foo` is put at 1.0, 2.0, deleted at 3.0, put at
//! 4.0 and 5.0, deleted at 6.0:
//!
//! ```text
//! generations:
//!     {empty}
//!     {4.0, 5.0, 6.0(t)}
//!     {1.0, 2.0, 3.0(t)}
//! ```
//!
//! Compaction at revision R keeps, per key, the largest revision ≤ R (the value a read at R must
//! still find) and everything above R; it drops whole generations whose tombstone is ≤ R, and a
//! kept revision that is itself a tombstone is dropped too (the key did not exist at R):
//!
//! ```text
//! compact(2): {empty} {4.0, 5.0, 6.0(t)} {2.0, 3.0(t)}     keep {2.0}
//! compact(4): {empty} {4.0, 5.0, 6.0(t)}                  keep {4.0}
//! compact(5): {empty} {5.0, 6.0(t)}                       keep {5.0}
//! compact(6): {empty}                                     keep {} → the key leaves the index
//! ```
//!
//! Invariants relied on by the store:
//! 1. Revisions inside a key index strictly increase across all generations (`put`/`tombstone`
//!    are called in revision order; a violation panics: it would be an apply-order bug).
//! 2. The last generation is the open one; every earlier generation is non-empty and ends with
//!    its tombstone.
//! 3. A key index with only one, empty generation is removed from the tree.

use std::collections::{BTreeSet, HashMap, HashSet};

use smallvec::SmallVec;
use std::ops::Bound;

use super::revision::Revision;

/// One life of a key: its puts and (unless it is the last, open generation) its tombstone.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Generation {
    /// Number of puts in this generation (its last revision's `version`).
    pub ver: i64,
    /// The revision that created the key in this generation.
    pub created: Revision,
    pub revs: Vec<Revision>,
}

impl Generation {
    fn is_empty(&self) -> bool {
        self.revs.is_empty()
    }

    /// Index of the newest revision for which `skip` is false, scanning from the newest.
    fn walk_back(&self, mut skip: impl FnMut(Revision) -> bool) -> Option<usize> {
        (0..self.revs.len()).rev().find(|&i| !skip(self.revs[i]))
    }
}

/// What a lookup at a revision found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Found {
    /// The revision of the change that produced the value visible at the asked revision.
    pub modified: Revision,
    pub created: Revision,
    pub version: i64,
}

/// The index of one user key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyIndex {
    /// The newest revision recorded (put or tombstone).
    pub modified: Revision,
    pub generations: Generations,
}

/// A key's generations, the first held inline: most keys live in one generation, so the
/// lookup of a put reaches its revisions with one pointer hop less, and a new key costs one
/// allocation less.
pub type Generations = SmallVec<[Generation; 1]>;

impl Default for KeyIndex {
    fn default() -> Self {
        KeyIndex {
            modified: Revision::default(),
            generations: smallvec::smallvec![Generation::default()],
        }
    }
}

impl KeyIndex {
    /// Records a put at `rev`.
    pub fn put(&mut self, rev: Revision) {
        assert!(
            rev > self.modified,
            "key index: put at {rev} not after last modification {}",
            self.modified
        );
        if self.generations.is_empty() {
            self.generations.push(Generation::default());
        }
        let g = self.generations.last_mut().expect("one generation");
        if g.revs.is_empty() {
            g.created = rev;
            // Most keys hold one revision between compactions: no spare capacity up front.
            g.revs.reserve_exact(1);
        }
        g.revs.push(rev);
        g.ver += 1;
        self.modified = rev;
    }

    /// Rebuild helper: the key's only known state is one put at `modified` with `version`,
    /// created at `created` (older revisions were compacted away).
    pub fn restore(created: Revision, modified: Revision, version: i64) -> Self {
        KeyIndex {
            modified,
            generations: smallvec::smallvec![Generation {
                ver: version,
                created,
                revs: vec![modified],
            }],
        }
    }

    /// Records a delete at `rev`: closes the open generation. Returns false (and changes
    /// nothing) when the key is not alive.
    pub fn tombstone(&mut self, rev: Revision) -> bool {
        if self.generations.last().is_none_or(Generation::is_empty) {
            return false;
        }
        self.put(rev);
        self.generations.push(Generation::default());
        true
    }

    /// True when the key has no recorded revision at all.
    pub fn is_empty(&self) -> bool {
        self.generations.len() == 1 && self.generations[0].is_empty()
    }

    /// The generation holding the key's state at `at`, if the key was alive then.
    fn find_generation(&self, at: i64) -> Option<&Generation> {
        let last = self.generations.len().checked_sub(1)?;
        for (i, g) in self.generations.iter().enumerate().rev() {
            if g.is_empty() {
                continue;
            }
            // A closed generation whose tombstone is at or before `at`: the key was deleted.
            if i != last && g.revs[g.revs.len() - 1].main <= at {
                return None;
            }
            if g.revs[0].main <= at {
                return Some(g);
            }
        }
        None
    }

    /// The key's state as of store revision `at`, or `None` if it did not exist then.
    pub fn get(&self, at: i64) -> Option<Found> {
        let g = self.find_generation(at)?;
        let n = g.walk_back(|r| r.main > at)?;
        Some(Found {
            modified: g.revs[n],
            created: g.created,
            version: g.ver - (g.revs.len() - n - 1) as i64,
        })
    }

    /// Every revision with `main >= since`, keeping only the last change of each main revision.
    pub fn since(&self, since: i64) -> Vec<Revision> {
        let since = Revision::new(since, 0);
        let mut gi = self.generations.len() - 1;
        while gi > 0 {
            let g = &self.generations[gi];
            if !g.is_empty() && since > g.created {
                break;
            }
            gi -= 1;
        }
        let mut out: Vec<Revision> = Vec::new();
        for g in &self.generations[gi..] {
            for &r in &g.revs {
                if since > r {
                    continue;
                }
                match out.last_mut() {
                    Some(last) if last.main == r.main => *last = r,
                    _ => out.push(r),
                }
            }
        }
        out
    }

    /// Finds the generation and position compaction at `at` starts from; records the kept
    /// revision (the newest ≤ `at` in that generation) in `keep`.
    fn compaction_point(&self, at: i64, keep: &mut HashSet<Revision>) -> (usize, Option<usize>) {
        let mut gi = 0;
        // Skip generations wholly at or below `at` (their tombstone is ≤ at), but never the last.
        while gi < self.generations.len() - 1 {
            let g = &self.generations[gi];
            if g.revs[g.revs.len() - 1].main > at {
                break;
            }
            gi += 1;
        }
        let g = &self.generations[gi];
        let idx = g.walk_back(|r| r.main > at);
        if let Some(i) = idx {
            keep.insert(g.revs[i]);
        }
        (gi, idx)
    }

    /// Drops every revision compaction at `at` makes unreachable; adds the revisions that must
    /// stay in the backend to `keep`. The caller removes the key when `is_empty()` afterwards.
    pub fn compact(&mut self, at: i64, keep: &mut HashSet<Revision>) {
        assert!(!self.is_empty(), "key index: compacting an empty key index");
        let (mut gi, idx) = self.compaction_point(at, keep);
        let last = self.generations.len() - 1;
        let g = &mut self.generations[gi];
        if !g.is_empty() {
            if let Some(i) = idx {
                g.revs.drain(..i);
            }
            // Only the tombstone of a closed generation is left: the key was dead at `at`.
            if g.revs.len() == 1 && gi != last {
                keep.remove(&g.revs[0]);
                gi += 1;
            }
        }
        self.generations.drain(..gi);
    }

    /// Adds to `keep` what `compact(at)` would keep, without changing anything (for HashKV).
    pub fn keep(&self, at: i64, keep: &mut HashSet<Revision>) {
        if self.is_empty() {
            return;
        }
        let (gi, idx) = self.compaction_point(at, keep);
        let g = &self.generations[gi];
        if !g.is_empty()
            && let Some(i) = idx
            && i == g.revs.len() - 1
            && gi != self.generations.len() - 1
        {
            keep.remove(&g.revs[i]);
        }
    }
}

/// Keys up to this many bytes are stored inside the index's B-tree nodes; longer ones on the
/// heap. A lookup compares the probe with a few keys per node: inline keys are read from the
/// node itself instead of one pointer chase (a cache miss in a large index) per comparison,
/// which was ~30 % of a put's apply time with 100k 8-byte keys (BENCHMARKS.md, put2).
const INLINE_KEY_BYTES: usize = 24;

/// A key of the index; compares, hashes and borrows as its bytes (`[u8]`), like `Vec<u8>`.
type IndexKey = SmallVec<[u8; INLINE_KEY_BYTES]>;

/// All keys' indexes: found by hash, visited in key order. A range end of `None` means a single
/// key, `Some(&[])` means "no upper bound" (etcd's `\0` range end after translation).
///
/// Invariant: `order` holds exactly the keys of `keys`. A put or a point read is one hash
/// lookup (an ordered tree of 100k keys costs a cache miss per level); only range visits and
/// the first put of a key touch `order`.
#[derive(Clone, Debug, Default)]
pub struct TreeIndex {
    keys: HashMap<IndexKey, KeyIndex>,
    order: BTreeSet<IndexKey>,
}

impl TreeIndex {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn put(&mut self, key: &[u8], rev: Revision) {
        match self.keys.get_mut(key) {
            Some(ki) => ki.put(rev),
            None => self.insert_new(key, rev),
        }
    }

    /// Records the first put of `key`, which the caller found absent (no second lookup, as
    /// [`TreeIndex::put`] makes).
    pub fn insert_new(&mut self, key: &[u8], rev: Revision) {
        let mut ki = KeyIndex::default();
        ki.put(rev);
        let key = IndexKey::from_slice(key);
        self.order.insert(key.clone());
        let old = self.keys.insert(key, ki);
        debug_assert!(old.is_none(), "insert_new of a key the index holds");
    }

    /// Records a delete; false when the key is not alive (nothing changed).
    pub fn tombstone(&mut self, key: &[u8], rev: Revision) -> bool {
        self.keys.get_mut(key).is_some_and(|ki| ki.tombstone(rev))
    }

    pub fn get(&self, key: &[u8], at: i64) -> Option<Found> {
        self.keys.get(key)?.get(at)
    }

    pub fn key_index(&self, key: &[u8]) -> Option<&KeyIndex> {
        self.keys.get(key)
    }

    /// Inserts a key index built during rebuild (replacing nothing: the key must be new).
    pub fn insert_restored(&mut self, key: Vec<u8>, ki: KeyIndex) {
        let key = IndexKey::from_vec(key);
        self.order.insert(key.clone());
        let old = self.keys.insert(key, ki);
        assert!(old.is_none(), "rebuild inserted a key twice");
    }

    pub fn key_index_mut(&mut self, key: &[u8]) -> Option<&mut KeyIndex> {
        self.keys.get_mut(key)
    }

    /// Visits the key indexes of `[key, end)` (see the type doc for `end`) in key order until
    /// `visit` returns false.
    pub fn visit(
        &self,
        key: &[u8],
        end: Option<&[u8]>,
        mut visit: impl FnMut(&[u8], &KeyIndex) -> bool,
    ) {
        match end {
            None => {
                if let Some(ki) = self.keys.get(key) {
                    visit(key, ki);
                }
            }
            Some(end) => {
                if !end.is_empty() && end <= key {
                    return;
                }
                let upper = if end.is_empty() {
                    Bound::Unbounded
                } else {
                    Bound::Excluded(end)
                };
                for k in self.order.range::<[u8], _>((Bound::Included(key), upper)) {
                    let ki = self.keys.get(k).expect("`order` holds the keys of `keys`");
                    if !visit(k, ki) {
                        break;
                    }
                }
            }
        }
    }

    /// The live keys of the range at `at` with the revision holding each, in key order, and
    /// the total number of them. At most `limit` pairs are returned (0 = all); the total is
    /// always complete.
    pub fn revisions(
        &self,
        key: &[u8],
        end: Option<&[u8]>,
        at: i64,
        limit: usize,
    ) -> (Vec<(Vec<u8>, Found)>, usize) {
        let mut out = Vec::new();
        let mut total = 0;
        self.visit(key, end, |k, ki| {
            if let Some(f) = ki.get(at) {
                if limit == 0 || out.len() < limit {
                    out.push((k.to_vec(), f));
                }
                total += 1;
            }
            true
        });
        (out, total)
    }

    /// Like `revisions`, without copying the keys (the values carry them).
    pub fn found(
        &self,
        key: &[u8],
        end: Option<&[u8]>,
        at: i64,
        limit: usize,
    ) -> (Vec<Found>, usize) {
        let mut out = Vec::new();
        let mut total = 0;
        self.visit(key, end, |_, ki| {
            if let Some(f) = ki.get(at) {
                if limit == 0 || out.len() < limit {
                    out.push(f);
                }
                total += 1;
            }
            true
        });
        (out, total)
    }

    /// Rebuild step: records one `key` bucket entry (in revision order). A put of a key not
    /// in the index starts it from the entry's `created`/`version` (older history may have
    /// been compacted away); a tombstone of an unknown key is ignored.
    pub fn restore_entry(
        &mut self,
        key: Vec<u8>,
        rev: Revision,
        tombstone: bool,
        created: i64,
        version: i64,
    ) {
        use std::collections::hash_map::Entry;
        match self.keys.entry(IndexKey::from_vec(key)) {
            Entry::Occupied(mut e) => {
                if tombstone {
                    e.get_mut().tombstone(rev);
                } else {
                    e.get_mut().put(rev);
                }
            }
            Entry::Vacant(e) => {
                if !tombstone {
                    self.order.insert(e.key().clone());
                    e.insert(KeyIndex::restore(Revision::new(created, 0), rev, version));
                }
            }
        }
    }

    /// Counts the live keys of the range at `at`.
    pub fn count(&self, key: &[u8], end: Option<&[u8]>, at: i64) -> usize {
        let mut n = 0;
        self.visit(key, end, |_, ki| {
            if ki.get(at).is_some() {
                n += 1;
            }
            true
        });
        n
    }

    /// Compacts every key at `at`; returns the revisions that must stay in the backend.
    pub fn compact(&mut self, at: i64) -> HashSet<Revision> {
        let mut keep = HashSet::new();
        let mut gone = Vec::new();
        self.keys.retain(|k, ki| {
            ki.compact(at, &mut keep);
            if ki.is_empty() {
                gone.push(k.clone());
            }
            !ki.is_empty()
        });
        for k in &gone {
            self.order.remove(k);
        }
        keep
    }

    /// What `compact(at)` would keep, without compacting.
    pub fn keep(&self, at: i64) -> HashSet<Revision> {
        let mut keep = HashSet::new();
        for ki in self.keys.values() {
            ki.keep(at, &mut keep);
        }
        keep
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(main: i64) -> Revision {
        Revision::new(main, 0)
    }

    fn generation(ver: i64, created: i64, revs: &[i64]) -> Generation {
        Generation {
            ver,
            created: r(created),
            revs: revs.iter().map(|&m| r(m)).collect(),
        }
    }

    /// etcd's test key: put 2, put 4, tombstone 6, put 8, put 10, tombstone 12, put 14,
    /// put 14.1, tombstone 16.
    ///
    /// ```text
    /// {empty}
    /// {14.0, 14.1, 16.0(t)}
    /// {8.0, 10.0, 12.0(t)}
    /// {2.0, 4.0, 6.0(t)}
    /// ```
    fn sample() -> KeyIndex {
        let mut ki = KeyIndex::default();
        ki.put(r(2));
        ki.put(r(4));
        assert!(ki.tombstone(r(6)));
        ki.put(r(8));
        ki.put(r(10));
        assert!(ki.tombstone(r(12)));
        ki.put(r(14));
        ki.put(Revision::new(14, 1));
        assert!(ki.tombstone(r(16)));
        ki
    }

    #[test]
    fn get_follows_generations() {
        let ki = sample();
        type Want = Option<(Revision, i64, i64)>;
        let cases: &[(i64, Want)] = &[
            (17, None),
            (16, None),
            (15, Some((Revision::new(14, 1), 14, 2))),
            (14, Some((Revision::new(14, 1), 14, 2))),
            (13, None),
            (12, None),
            (11, Some((r(10), 8, 2))),
            (10, Some((r(10), 8, 2))),
            (9, Some((r(8), 8, 1))),
            (8, Some((r(8), 8, 1))),
            (7, None),
            (6, None),
            (5, Some((r(4), 2, 2))),
            (4, Some((r(4), 2, 2))),
            (3, Some((r(2), 2, 1))),
            (2, Some((r(2), 2, 1))),
            (1, None),
            (0, None),
        ];
        for &(at, want) in cases {
            let got = ki.get(at).map(|f| (f.modified, f.created.main, f.version));
            assert_eq!(got, want, "get({at})");
        }
    }

    #[test]
    fn since_keeps_last_change_per_main_revision() {
        let ki = sample();
        let all = vec![
            r(2),
            r(4),
            r(6),
            r(8),
            r(10),
            r(12),
            Revision::new(14, 1),
            r(16),
        ];
        let cases: &[(i64, &[Revision])] = &[
            (0, &all),
            (1, &all),
            (2, &all),
            (3, &all[1..]),
            (4, &all[1..]),
            (5, &all[2..]),
            (6, &all[2..]),
            (7, &all[3..]),
            (12, &all[5..]),
            (13, &all[6..]),
            (14, &all[6..]),
            (15, &all[7..]),
            (16, &all[7..]),
            (17, &[]),
        ];
        for &(since, want) in cases {
            assert_eq!(ki.since(since), want, "since({since})");
        }
    }

    #[test]
    fn tombstone_of_dead_key_is_refused() {
        let mut ki = KeyIndex::default();
        assert!(!ki.tombstone(r(1)));
        ki.put(r(2));
        assert!(ki.tombstone(r(3)));
        assert!(!ki.tombstone(r(4)));
        assert_eq!(ki.modified, r(3));
    }

    #[test]
    #[should_panic(expected = "not after last modification")]
    fn put_out_of_order_panics() {
        let mut ki = KeyIndex::default();
        ki.put(r(5));
        ki.put(r(4));
    }

    /// etcd's compaction table for the sample key, step by step on one key index (compaction
    /// is cumulative) and checked against `keep` on a fresh copy.
    #[test]
    fn compaction_follows_etcds_table() {
        type Case = (i64, Vec<Generation>, Vec<Revision>);
        let g3 = |revs: &[i64]| -> Generation {
            let mut g = generation(3, 14, &[]);
            g.revs = revs
                .iter()
                .map(|&m| if m == 141 { Revision::new(14, 1) } else { r(m) })
                .collect();
            g
        };
        let empty = Generation::default();
        let cases: Vec<Case> = vec![
            (
                1,
                vec![
                    generation(3, 2, &[2, 4, 6]),
                    generation(3, 8, &[8, 10, 12]),
                    g3(&[14, 141, 16]),
                    empty.clone(),
                ],
                vec![],
            ),
            (
                2,
                vec![
                    generation(3, 2, &[2, 4, 6]),
                    generation(3, 8, &[8, 10, 12]),
                    g3(&[14, 141, 16]),
                    empty.clone(),
                ],
                vec![r(2)],
            ),
            (
                3,
                vec![
                    generation(3, 2, &[2, 4, 6]),
                    generation(3, 8, &[8, 10, 12]),
                    g3(&[14, 141, 16]),
                    empty.clone(),
                ],
                vec![r(2)],
            ),
            (
                4,
                vec![
                    generation(3, 2, &[4, 6]),
                    generation(3, 8, &[8, 10, 12]),
                    g3(&[14, 141, 16]),
                    empty.clone(),
                ],
                vec![r(4)],
            ),
            (
                5,
                vec![
                    generation(3, 2, &[4, 6]),
                    generation(3, 8, &[8, 10, 12]),
                    g3(&[14, 141, 16]),
                    empty.clone(),
                ],
                vec![r(4)],
            ),
            (
                6,
                vec![
                    generation(3, 8, &[8, 10, 12]),
                    g3(&[14, 141, 16]),
                    empty.clone(),
                ],
                vec![],
            ),
            (
                7,
                vec![
                    generation(3, 8, &[8, 10, 12]),
                    g3(&[14, 141, 16]),
                    empty.clone(),
                ],
                vec![],
            ),
            (
                8,
                vec![
                    generation(3, 8, &[8, 10, 12]),
                    g3(&[14, 141, 16]),
                    empty.clone(),
                ],
                vec![r(8)],
            ),
            (
                10,
                vec![
                    generation(3, 8, &[10, 12]),
                    g3(&[14, 141, 16]),
                    empty.clone(),
                ],
                vec![r(10)],
            ),
            (12, vec![g3(&[14, 141, 16]), empty.clone()], vec![]),
            (13, vec![g3(&[14, 141, 16]), empty.clone()], vec![]),
            (
                14,
                vec![g3(&[141, 16]), empty.clone()],
                vec![Revision::new(14, 1)],
            ),
            (
                15,
                vec![g3(&[141, 16]), empty.clone()],
                vec![Revision::new(14, 1)],
            ),
            (16, vec![empty.clone()], vec![]),
            (17, vec![empty.clone()], vec![]),
        ];
        let mut ki = sample();
        for (at, want_gens, want_keep) in cases {
            let mut keep_only = HashSet::new();
            sample().keep(at, &mut keep_only);
            let want_keep: HashSet<Revision> = want_keep.into_iter().collect();
            assert_eq!(keep_only, want_keep, "keep({at})");
            // Cumulative compaction; an emptied key index leaves the tree and is not compacted.
            if !ki.is_empty() {
                let mut keep = HashSet::new();
                ki.compact(at, &mut keep);
                assert_eq!(
                    ki.generations.as_slice(),
                    want_gens,
                    "compact({at}) generations"
                );
                assert_eq!(keep, want_keep, "compact({at}) keep");
            }
            // A fresh key index compacted once at `at` must reach the same state.
            let mut fresh = sample();
            let mut keep2 = HashSet::new();
            fresh.compact(at, &mut keep2);
            assert_eq!(
                fresh.generations.as_slice(),
                want_gens,
                "one-shot compact({at})"
            );
        }
    }

    #[test]
    fn compaction_of_deleted_key_empties_it() {
        let mut t = TreeIndex::new();
        t.put(b"a", r(2));
        assert!(t.tombstone(b"a", r(3)));
        t.put(b"b", r(4));
        let keep = t.compact(3);
        assert!(t.key_index(b"a").is_none(), "dead key leaves the index");
        assert!(keep.is_empty());
        let keep = t.compact(4);
        assert_eq!(keep, HashSet::from([r(4)]));
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn tree_ranges_and_counts() {
        let mut t = TreeIndex::new();
        for (i, k) in [b"a", b"b", b"c", b"d"].iter().enumerate() {
            t.put(*k, r(i as i64 + 2));
        }
        assert!(t.tombstone(b"b", r(6)));
        let keys = |v: Vec<(Vec<u8>, Found)>| v.into_iter().map(|(k, _)| k).collect::<Vec<_>>();
        let (v, n) = t.revisions(b"a", Some(b""), 6, 0);
        assert_eq!(
            (keys(v), n),
            (vec![b"a".to_vec(), b"c".to_vec(), b"d".to_vec()], 3)
        );
        let (v, n) = t.revisions(b"a", Some(b""), 5, 2);
        assert_eq!((keys(v), n), (vec![b"a".to_vec(), b"b".to_vec()], 4));
        let (v, n) = t.revisions(b"b", Some(b"d"), 6, 0);
        assert_eq!((keys(v), n), (vec![b"c".to_vec()], 1));
        let (v, n) = t.revisions(b"d", Some(b"b"), 6, 0);
        assert_eq!((v.len(), n), (0, 0));
        let (v, n) = t.revisions(b"c", None, 6, 0);
        assert_eq!((keys(v), n), (vec![b"c".to_vec()], 1));
        assert_eq!(t.count(b"a", Some(b""), 1), 0);
    }
}

//! An interval index for range watchers: which intervals `[start, end)` contain a key.
//!
//! A treap (randomized balanced search tree) ordered by `(start, id)`, each node carrying the
//! largest `end` in its subtree. A stabbing query for key `k` skips every subtree whose largest
//! end is ≤ `k` and every right subtree of a node starting after `k`, so it costs
//! O(log n + matches) expected, independent of how many watchers do not match.
//!
//! Worked example: intervals a=[b,d) id 1, b=[a,c) id 2, c=[c,∞) id 3. Ordered by start:
//! `[a,c)#2 < [b,d)#1 < [c,∞)#3`; whatever the shape, each node's `max_end` covers its
//! subtree (the root's is ∞). Query `k = "c"`: `[a,c)` fails (end c ≤ c), `[b,d)` matches,
//! `[c,∞)` matches → ids {1, 3}. Query `"0"`: every start is > "0", so only the leftmost
//! path is visited and nothing matches.

use std::cmp::Ordering;

/// An interval end: a key (exclusive) or "no upper bound".
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum End {
    // Variant order matters: every finite end sorts below `Inf`.
    Key(Vec<u8>),
    Inf,
}

impl End {
    fn above(&self, k: &[u8]) -> bool {
        match self {
            End::Key(e) => e.as_slice() > k,
            End::Inf => true,
        }
    }
}

#[derive(Debug)]
struct Node {
    start: Vec<u8>,
    end: End,
    id: u64,
    prio: u64,
    max_end: End,
    left: Option<Box<Node>>,
    right: Option<Box<Node>>,
}

impl Node {
    fn key_cmp(&self, start: &[u8], id: u64) -> Ordering {
        (self.start.as_slice(), self.id).cmp(&(start, id))
    }

    fn update(&mut self) {
        let mut m = self.end.clone();
        for c in [&self.left, &self.right].into_iter().flatten() {
            if c.max_end > m {
                m = c.max_end.clone();
            }
        }
        self.max_end = m;
    }
}

type Link = Option<Box<Node>>;

/// Splits into (keys < (start, id), keys ≥ (start, id)).
fn split(t: Link, start: &[u8], id: u64) -> (Link, Link) {
    match t {
        None => (None, None),
        Some(mut n) => {
            if n.key_cmp(start, id) == Ordering::Less {
                let (l, r) = split(n.right.take(), start, id);
                n.right = l;
                n.update();
                (Some(n), r)
            } else {
                let (l, r) = split(n.left.take(), start, id);
                n.left = r;
                n.update();
                (l, Some(n))
            }
        }
    }
}

/// Joins two treaps where every key of `a` is below every key of `b`.
fn merge(a: Link, b: Link) -> Link {
    match (a, b) {
        (None, b) => b,
        (a, None) => a,
        (Some(mut a), Some(mut b)) => {
            if a.prio > b.prio {
                a.right = merge(a.right.take(), Some(b));
                a.update();
                Some(a)
            } else {
                b.left = merge(Some(a), b.left.take());
                b.update();
                Some(b)
            }
        }
    }
}

fn stab(t: &Link, k: &[u8], out: &mut Vec<u64>) {
    let Some(n) = t else { return };
    if !n.max_end.above(k) {
        return;
    }
    stab(&n.left, k, out);
    if n.start.as_slice() <= k {
        if n.end.above(k) {
            out.push(n.id);
        }
        stab(&n.right, k, out);
    }
}

/// Intervals `[start, end)` with unique `u64` ids; see the module doc.
#[derive(Debug, Default)]
pub struct IntervalIndex {
    root: Link,
    len: usize,
    rng: u64,
}

impl IntervalIndex {
    pub fn new() -> Self {
        IntervalIndex {
            root: None,
            len: 0,
            rng: 0x9e37_79b9_7f4a_7c15,
        }
    }

    fn next_prio(&mut self) -> u64 {
        // xorshift64*: priorities only need to be well spread, not secret.
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Adds `[start, end)` under `id` (ids must be unique in the index).
    pub fn insert(&mut self, start: &[u8], end: End, id: u64) {
        let prio = self.next_prio();
        let node = Box::new(Node {
            start: start.to_vec(),
            max_end: end.clone(),
            end,
            id,
            prio,
            left: None,
            right: None,
        });
        let (l, r) = split(self.root.take(), start, id);
        self.root = merge(merge(l, Some(node)), r);
        self.len += 1;
    }

    /// Removes the interval inserted with `start` and `id`; returns whether it was there.
    pub fn remove(&mut self, start: &[u8], id: u64) -> bool {
        let (l, r) = split(self.root.take(), start, id);
        let (mid, r) = match id.checked_add(1) {
            Some(next) => split(r, start, next),
            None => (r, None),
        };
        let found = mid.is_some();
        self.root = merge(l, r);
        if found {
            self.len -= 1;
        }
        found
    }

    /// Appends the ids of every interval containing `k` to `out`.
    pub fn stab(&self, k: &[u8], out: &mut Vec<u64>) {
        stab(&self.root, k, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worked_example() {
        let mut ix = IntervalIndex::new();
        ix.insert(b"b", End::Key(b"d".to_vec()), 1);
        ix.insert(b"a", End::Key(b"c".to_vec()), 2);
        ix.insert(b"c", End::Inf, 3);
        let q = |ix: &IntervalIndex, k: &[u8]| {
            let mut v = Vec::new();
            ix.stab(k, &mut v);
            v.sort();
            v
        };
        assert_eq!(q(&ix, b"c"), vec![1, 3]);
        assert_eq!(q(&ix, b"0"), Vec::<u64>::new());
        assert_eq!(q(&ix, b"b"), vec![1, 2]);
        assert_eq!(q(&ix, b"zzz"), vec![3]);
        assert!(ix.remove(b"b", 1));
        assert!(!ix.remove(b"b", 1));
        assert_eq!(q(&ix, b"c"), vec![3]);
        assert_eq!(ix.len(), 2);
    }

    /// Against a linear scan on random intervals, with removals.
    #[test]
    fn matches_linear_scan() {
        let mut ix = IntervalIndex::new();
        let mut all: Vec<(Vec<u8>, End, u64)> = Vec::new();
        let mut seed = 12345u64;
        let mut rnd = |n: u64| {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) % n
        };
        for id in 0..2000u64 {
            let a = rnd(200) as u8;
            let end = if rnd(10) == 0 {
                End::Inf
            } else {
                End::Key(vec![a.saturating_add(1 + rnd(30) as u8)])
            };
            ix.insert(&[a], end.clone(), id);
            all.push((vec![a], end, id));
            if rnd(3) == 0 {
                let victim = rnd(all.len() as u64) as usize;
                let (s, _, vid) = all.swap_remove(victim);
                assert!(ix.remove(&s, vid));
            }
        }
        assert_eq!(ix.len(), all.len());
        for k in 0..=255u8 {
            let mut got = Vec::new();
            ix.stab(&[k], &mut got);
            got.sort();
            let mut want: Vec<u64> = all
                .iter()
                .filter(|(s, e, _)| s.as_slice() <= [k].as_slice() && e.above(&[k]))
                .map(|(_, _, id)| *id)
                .collect();
            want.sort();
            assert_eq!(got, want, "key {k}");
        }
    }
}

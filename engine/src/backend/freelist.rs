//! Free page tracking.
//!
//! Invariants (relied on by mmap.rs's soundness argument and by the meta fallback on open):
//! 1. A page in `free` is reachable from no live snapshot and from neither meta on disk.
//! 2. A page freed by transaction T (it was reachable from meta T-1, not from meta T) sits in
//!    `pending[T]` until [`Freelist::release`] is called with an oldest pinned txid >= T. The
//!    writer always pins the txid *before* the latest commit as well (the other meta slot), so a
//!    page freed by T is reused by T+2 at the earliest and meta T-1 stays intact on disk: when the
//!    newest meta is damaged, open falls back to the older one and finds its pages unchanged.
//! 3. Pending entries are persisted with their txid, so the rule holds across restarts.

use std::collections::{BTreeMap, BTreeSet};

/// Free pages as runs `(first id, pages)`.
pub(crate) type FreeRuns = Vec<(u64, u64)>;

/// The free set is kept as maximal runs of contiguous pages, so that a commit can take its pages
/// as one contiguous extent (`take_extent`) and write them with one large write: on a disk bound
/// by the number of write requests, 1,000 scattered 4 KiB pages cost several times one
/// contiguous 4 MiB write (BENCHMARKS.md, "Backend: contiguous commits").
///
/// Example: free pages {3, 4, 6, 7, 8} are the runs `3 -> 2` and `6 -> 3`, indexed by length as
/// `(2, 3)` and `(3, 6)`. Freeing page 5 joins them into `3 -> 6`; `take_extent(4, ..)` then
/// returns `(3, 4)` and leaves the run `7 -> 2`.
#[derive(Clone, Debug, Default)]
pub(crate) struct Freelist {
    /// Free runs, first page -> length. Invariant: runs neither overlap nor touch (a run never
    /// ends where the next one starts: adjacent runs are merged on insert).
    runs: BTreeMap<u64, u64>,
    /// Every run as `(length, first page)`: best-fit lookup by length.
    by_len: BTreeSet<(u64, u64)>,
    /// Pages in `runs`.
    free_count: u64,
    pending: BTreeMap<u64, Vec<u64>>,
}

impl Freelist {
    /// Builds the free set from persisted parts. A page listed twice is counted once (the
    /// checker reports such a file; allocation must not hand the page out twice).
    pub(crate) fn from_parts(free: Vec<u64>, pending: Vec<(u64, u64)>) -> Freelist {
        let mut fl = Freelist::default();
        let mut free = free;
        free.sort_unstable();
        free.dedup();
        let mut i = 0;
        while i < free.len() {
            let mut j = i + 1;
            while j < free.len() && free[j] == free[j - 1] + 1 {
                j += 1;
            }
            fl.insert_run(free[i], (j - i) as u64);
            i = j;
        }
        for (id, txid) in pending {
            fl.pending.entry(txid).or_default().push(id);
        }
        fl
    }

    /// Free runs `(first id, pages)` (ascending, disjoint, never adjacent) and pending
    /// `(id, freed_by)` entries, for persisting.
    pub(crate) fn to_parts(&self) -> (FreeRuns, Vec<(u64, u64)>) {
        let free = self
            .runs
            .iter()
            .map(|(&start, &len)| (start, len))
            .collect();
        let pending = self
            .pending
            .iter()
            .flat_map(|(&t, ids)| ids.iter().map(move |&id| (id, t)))
            .collect();
        (free, pending)
    }

    pub(crate) fn free_len(&self) -> usize {
        self.free_count as usize
    }

    pub(crate) fn pending_len(&self) -> usize {
        self.pending.values().map(Vec::len).sum()
    }

    /// Length of the longest free run (0 if none).
    pub(crate) fn longest(&self) -> u64 {
        self.by_len.last().map_or(0, |&(len, _)| len)
    }

    fn remove_run(&mut self, start: u64) -> u64 {
        let len = self.runs.remove(&start).expect("run present");
        self.by_len.remove(&(len, start));
        self.free_count -= len;
        len
    }

    /// Adds the free pages `[start, start + n)`, merging with the runs on either side. The pages
    /// must not be free already.
    fn insert_run(&mut self, mut start: u64, mut n: u64) {
        if n == 0 {
            return;
        }
        if let Some((&prev, &plen)) = self.runs.range(..start).next_back() {
            debug_assert!(prev + plen <= start, "page {start} freed twice");
            if prev + plen == start {
                self.remove_run(prev);
                start = prev;
                n += plen;
            }
        }
        if let Some((&next, _)) = self.runs.range(start + n..).next()
            && next == start + n
        {
            n += self.remove_run(next);
        }
        debug_assert!(
            self.runs.range(start..start + n).next().is_none(),
            "pages [{start}, {}) overlap a free run",
            start + n
        );
        self.runs.insert(start, n);
        self.by_len.insert((n, start));
        self.free_count += n;
    }

    /// Takes `n` pages from the front of the run at `start`.
    fn take_front(&mut self, start: u64, n: u64) {
        let len = self.remove_run(start);
        debug_assert!(len >= n);
        if len > n {
            self.runs.insert(start + n, len - n);
            self.by_len.insert((len - n, start + n));
            self.free_count += len - n;
        }
    }

    /// The first page of the lowest run of at least `min` pages.
    pub(crate) fn first_run(&self, min: u64) -> Option<u64> {
        if self.longest() < min {
            return None;
        }
        self.runs
            .iter()
            .find(|&(_, &len)| len >= min)
            .map(|(&start, _)| start)
    }

    /// Takes the whole lowest run of at least `min` pages (online compaction fills the bottom
    /// of the file); returns `(first page, length)`, `None` if there is no such run.
    pub(crate) fn take_low(&mut self, min: u64) -> Option<(u64, u64)> {
        let start = self.first_run(min)?;
        let len = self.runs[&start];
        self.take_front(start, len);
        Some((start, len))
    }

    /// An extent for a commit's new pages: `want` pages from the shortest run that holds them
    /// (best fit, so long runs stay long), else the whole longest run if it has at least
    /// `min` pages; `None` if neither exists (the caller extends the file). Returns
    /// `(first page, length)`.
    pub(crate) fn take_extent(&mut self, want: u64, min: u64) -> Option<(u64, u64)> {
        let (len, start) = match self.by_len.range((want, 0)..).next() {
            Some(&(_, start)) => (want, start),
            None => {
                let &(len, start) = self.by_len.last()?;
                if len < min.max(1) {
                    return None;
                }
                (len, start)
            }
        };
        self.take_front(start, len);
        Some((start, len))
    }

    /// Returns pages that no snapshot or meta can reach (allocated and dropped by the running
    /// transaction, or the unused end of its extent) to the free set at once.
    pub(crate) fn free_now(&mut self, start: u64, n: u64) {
        self.insert_run(start, n);
    }

    /// Pages reachable from the last committed meta, dropped by transaction `txid`.
    pub(crate) fn free_pending(&mut self, txid: u64, start: u64, n: u64) {
        self.pending
            .entry(txid)
            .or_default()
            .extend(start..start + n);
    }

    /// Moves pages freed by transactions `<= oldest` into the free set. `oldest` is the smallest
    /// txid any live snapshot or the older meta on disk pins (invariant 2).
    pub(crate) fn release(&mut self, oldest: u64) {
        let keep = self.pending.split_off(&(oldest + 1));
        let mut ids: Vec<u64> = std::mem::replace(&mut self.pending, keep)
            .into_values()
            .flatten()
            .collect();
        ids.sort_unstable();
        let mut i = 0;
        while i < ids.len() {
            let mut j = i + 1;
            while j < ids.len() && ids[j] == ids[j - 1] + 1 {
                j += 1;
            }
            self.insert_run(ids[i], (j - i) as u64);
            i = j;
        }
    }

    /// Drops free pages at the end of the file; returns the new page count.
    pub(crate) fn trim_tail(&mut self, page_count: u64) -> u64 {
        match self.runs.last_key_value() {
            Some((&start, &len)) if start + len == page_count && start >= 2 => {
                self.remove_run(start);
                start
            }
            _ => page_count,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runs(fl: &Freelist) -> Vec<(u64, u64)> {
        assert_eq!(fl.runs.len(), fl.by_len.len());
        for (&start, &len) in &fl.runs {
            assert!(fl.by_len.contains(&(len, start)));
        }
        assert_eq!(fl.runs.values().sum::<u64>(), fl.free_count);
        fl.runs.iter().map(|(&s, &l)| (s, l)).collect()
    }

    #[test]
    fn runs_release_and_trim() {
        let mut fl = Freelist::from_parts(vec![3, 4, 6, 7, 8], vec![(10, 5)]);
        assert_eq!(runs(&fl), vec![(3, 2), (6, 3)]);
        assert_eq!(fl.first_run(3), Some(6));
        assert_eq!(fl.take_low(3), Some((6, 3)));
        assert_eq!(fl.take_low(3), None);
        assert_eq!(fl.take_low(1), Some((3, 2)));
        fl.free_now(3, 1);
        fl.free_pending(6, 11, 2);
        fl.release(5);
        assert_eq!(
            fl.to_parts(),
            (vec![(3, 1), (10, 1)], vec![(11, 6), (12, 6)])
        );
        fl.release(6);
        assert_eq!(fl.pending_len(), 0);
        assert_eq!(runs(&fl), vec![(3, 1), (10, 3)]);
        assert_eq!(fl.trim_tail(13), 10);
        assert_eq!(fl.to_parts().0, vec![(3, 1)]);
        assert_eq!(fl.trim_tail(10), 10);
    }

    #[test]
    fn adjacent_frees_merge_into_one_run() {
        let mut fl = Freelist::default();
        fl.free_now(10, 2);
        fl.free_now(14, 2);
        assert_eq!(runs(&fl), vec![(10, 2), (14, 2)]);
        fl.free_now(12, 2);
        assert_eq!(runs(&fl), vec![(10, 6)]);
        fl.free_pending(3, 9, 1);
        fl.free_pending(3, 16, 1);
        fl.release(3);
        assert_eq!(runs(&fl), vec![(9, 8)]);
        assert_eq!(fl.free_len(), 8);
        // Unsorted, duplicated persisted ids still give maximal, disjoint runs.
        let fl = Freelist::from_parts(vec![7, 5, 6, 6, 9], vec![]);
        assert_eq!(runs(&fl), vec![(5, 3), (9, 1)]);
        assert_eq!(fl.free_len(), 4);
    }

    #[test]
    fn extents_are_best_fit_then_longest_then_none() {
        let mut fl = Freelist::default();
        fl.free_now(2, 4); // run of 4
        fl.free_now(10, 20); // run of 20
        fl.free_now(40, 8); // run of 8
        assert_eq!(fl.longest(), 20);
        // Best fit: the run of 8 holds 6 pages; the long run stays whole.
        assert_eq!(fl.take_extent(6, 16), Some((40, 6)));
        assert_eq!(runs(&fl), vec![(2, 4), (10, 20), (46, 2)]);
        // Nothing holds 100: the longest run, if it reaches `min`.
        assert_eq!(fl.take_extent(100, 16), Some((10, 20)));
        assert_eq!(fl.take_extent(100, 16), None);
        assert_eq!(runs(&fl), vec![(2, 4), (46, 2)]);
        assert_eq!(fl.take_extent(100, 4), Some((2, 4)));
        assert_eq!(fl.free_len(), 2);
    }
}

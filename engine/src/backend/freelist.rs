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

#[derive(Clone, Debug, Default)]
pub(crate) struct Freelist {
    free: BTreeSet<u64>,
    pending: BTreeMap<u64, Vec<u64>>,
}

impl Freelist {
    pub(crate) fn from_parts(free: Vec<u64>, pending: Vec<(u64, u64)>) -> Freelist {
        let mut fl = Freelist {
            free: free.into_iter().collect(),
            pending: BTreeMap::new(),
        };
        for (id, txid) in pending {
            fl.pending.entry(txid).or_default().push(id);
        }
        fl
    }

    /// Free ids (sorted) and pending `(id, freed_by)` entries, for persisting.
    pub(crate) fn to_parts(&self) -> (Vec<u64>, Vec<(u64, u64)>) {
        let free = self.free.iter().copied().collect();
        let pending = self
            .pending
            .iter()
            .flat_map(|(&t, ids)| ids.iter().map(move |&id| (id, t)))
            .collect();
        (free, pending)
    }

    pub(crate) fn free_len(&self) -> usize {
        self.free.len()
    }

    pub(crate) fn pending_len(&self) -> usize {
        self.pending.values().map(Vec::len).sum()
    }

    /// The lowest free page id.
    pub(crate) fn first_free(&self) -> Option<u64> {
        self.free.first().copied()
    }

    /// Takes `n` contiguous free pages; `None` if there is no such run.
    pub(crate) fn allocate(&mut self, n: u64) -> Option<u64> {
        let start = if n == 1 {
            *self.free.first()?
        } else {
            let mut run_start = 0;
            let mut run_len = 0;
            let mut found = None;
            for &id in &self.free {
                if run_len > 0 && id == run_start + run_len {
                    run_len += 1;
                } else {
                    run_start = id;
                    run_len = 1;
                }
                if run_len == n {
                    found = Some(run_start);
                    break;
                }
            }
            found?
        };
        for id in start..start + n {
            self.free.remove(&id);
        }
        Some(start)
    }

    /// Returns pages that no snapshot or meta can reach (allocated and dropped by the running
    /// transaction) to the free set at once.
    pub(crate) fn free_now(&mut self, start: u64, n: u64) {
        self.free.extend(start..start + n);
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
        for (_, ids) in std::mem::replace(&mut self.pending, keep) {
            self.free.extend(ids);
        }
    }

    /// Drops free pages at the end of the file; returns the new page count.
    pub(crate) fn trim_tail(&mut self, mut page_count: u64) -> u64 {
        while page_count > 2 && self.free.remove(&(page_count - 1)) {
            page_count -= 1;
        }
        page_count
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_release_and_trim() {
        let mut fl = Freelist::from_parts(vec![3, 4, 6, 7, 8], vec![(10, 5)]);
        assert_eq!(fl.allocate(3), Some(6));
        assert_eq!(fl.allocate(3), None);
        assert_eq!(fl.allocate(1), Some(3));
        fl.free_pending(6, 11, 2);
        fl.release(5);
        assert_eq!(fl.to_parts(), (vec![4, 10], vec![(11, 6), (12, 6)]));
        fl.release(6);
        assert_eq!(fl.pending_len(), 0);
        assert_eq!(fl.trim_tail(13), 10);
        assert_eq!(fl.to_parts().0, vec![4]);
    }
}

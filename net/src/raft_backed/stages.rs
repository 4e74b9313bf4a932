//! Where a proposal's time goes, in three consecutive stages that add up to what the proposing
//! task waited (without the gRPC layer around it):
//!
//! ```text
//!  front-end task        raft core / WAL            apply thread              front-end task
//!  propose ─────────────────────────────────────► apply starts ─────────► waiter sent ─────► task runs
//!          └──────────── commit ─────────────────┘└──────── apply ───────┘└──── reply ──────┘
//!   (hand-off to raft, Ready, WAL group commit      (MVCC, lessor, hub,     (oneshot wake-up of
//!    + fdatasync, persist callback, hand-off         waiter lookup)          the task)
//!    to apply, earlier entries' apply)
//! ```
//!
//! Exported on `/metrics` as `ringkv_proposal_{commit,apply,reply}_duration_seconds` (etcd's
//! buckets; `_sum / _count` is the mean). Recorded with atomics: the apply thread and the
//! front-end tasks never share a lock for it.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use crate::node::{HISTOGRAM_BUCKETS, Histogram};
use crate::shard::{Padded, SHARDS, thread_shard};

/// A [`Histogram`] that many threads record into without a lock, sharded by thread
/// (`shard.rs`): the front-end threads observe every put's reply stage, and a shared copy
/// would move between their cores on every observation.
#[derive(Default)]
pub(crate) struct AtomicHistogram {
    shards: [Padded<Counts>; SHARDS],
}

/// One shard of an [`AtomicHistogram`].
struct Counts {
    buckets: [AtomicU64; HISTOGRAM_BUCKETS + 1],
    sum_nanos: AtomicU64,
}

impl Default for Counts {
    fn default() -> Self {
        Counts {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_nanos: AtomicU64::new(0),
        }
    }
}

impl AtomicHistogram {
    pub(crate) fn observe(&self, d: Duration) {
        self.observe_n(d, 1);
    }

    /// `n` observations of `d` at once.
    pub(crate) fn observe_n(&self, d: Duration, n: u64) {
        if n == 0 {
            return;
        }
        let seconds = d.as_secs_f64();
        let k = (0..HISTOGRAM_BUCKETS)
            .find(|&k| seconds <= Histogram::bound(k))
            .unwrap_or(HISTOGRAM_BUCKETS);
        let mine = &self.shards[thread_shard()].0;
        mine.buckets[k].fetch_add(n, Relaxed);
        let nanos = d.as_nanos().min(u64::MAX as u128) as u64;
        mine.sum_nanos.fetch_add(nanos.saturating_mul(n), Relaxed);
    }

    /// A copy; concurrent observations may be half in it (counts are read one by one).
    pub(crate) fn snapshot(&self) -> Histogram {
        let mut h = Histogram::default();
        let mut nanos = 0u64;
        for shard in &self.shards {
            for (b, a) in h.buckets.iter_mut().zip(&shard.0.buckets) {
                *b += a.load(Relaxed);
            }
            nanos = nanos.wrapping_add(shard.0.sum_nanos.load(Relaxed));
        }
        h.sum_seconds = nanos as f64 / 1e9;
        h.count = h.buckets.iter().sum();
        h
    }
}

/// The three stages of a proposal (module doc).
#[derive(Default)]
pub(crate) struct ProposalStages {
    pub(crate) commit: AtomicHistogram,
    pub(crate) apply: AtomicHistogram,
    pub(crate) reply: AtomicHistogram,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_counts_buckets_sum_and_count() {
        let h = AtomicHistogram::default();
        h.observe(Duration::from_micros(300));
        h.observe(Duration::from_micros(700));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(20));
        let s = h.snapshot();
        assert_eq!(s.count, 4);
        assert_eq!(s.buckets[0], 2, "≤ 1 ms");
        assert_eq!(s.buckets[2], 1, "≤ 4 ms");
        assert_eq!(s.buckets[HISTOGRAM_BUCKETS], 1, "+Inf");
        assert!((s.sum_seconds - 20.004).abs() < 1e-9, "{}", s.sum_seconds);
    }

    #[test]
    fn observations_from_many_threads_add_up() {
        let h = AtomicHistogram::default();
        std::thread::scope(|s| {
            for _ in 0..2 * crate::shard::SHARDS {
                s.spawn(|| {
                    for _ in 0..100 {
                        h.observe(Duration::from_micros(500));
                    }
                });
            }
        });
        let s = h.snapshot();
        assert_eq!(s.count, 200 * crate::shard::SHARDS as u64);
        assert_eq!(s.buckets[0], s.count);
        assert!((s.sum_seconds - 0.0005 * s.count as f64).abs() < 1e-9);
    }

    #[test]
    fn observe_n_counts_n_observations() {
        let h = AtomicHistogram::default();
        h.observe_n(Duration::from_micros(500), 3);
        h.observe_n(Duration::from_millis(3), 0);
        let s = h.snapshot();
        assert_eq!(s.count, 3);
        assert_eq!(s.buckets[0], 3);
        assert!((s.sum_seconds - 0.0015).abs() < 1e-9, "{}", s.sum_seconds);
    }
}

//! Per-thread shards for counters that every front-end thread bumps per request.
//!
//! A counter shared by all threads is one cache line that moves between cores on every
//! increment when two threads serve requests at the same rate. Counters that are only summed
//! when read (metrics) keep [`SHARDS`] copies instead; a thread always bumps the copy of its
//! [`thread_shard`], so threads with different shards never write the same line. Readers add
//! the copies up (a sum read while increments happen may miss the newest ones, as any
//! relaxed counter read may).

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

/// Copies kept of each sharded counter: at least the front-end threads of a 2–4 core layout.
pub(crate) const SHARDS: usize = 4;

static NEXT: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// Threads get shards round-robin in the order they first bump a counter.
    static SHARD: usize = NEXT.fetch_add(1, Relaxed) % SHARDS;
}

/// The calling thread's shard, below [`SHARDS`].
pub(crate) fn thread_shard() -> usize {
    SHARD.with(|s| *s)
}

/// A value alone on its cache lines (128 bytes: two lines, since adjacent-line prefetch pairs
/// them on x86).
#[repr(align(128))]
#[derive(Default)]
pub(crate) struct Padded<T>(pub(crate) T);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_keeps_its_shard() {
        let here = thread_shard();
        assert!(here < SHARDS);
        assert_eq!(thread_shard(), here);
        let other = std::thread::spawn(|| (thread_shard(), thread_shard()))
            .join()
            .unwrap();
        assert!(other.0 < SHARDS);
        assert_eq!(other.0, other.1);
        assert_eq!(std::mem::align_of::<Padded<u8>>(), 128);
    }
}

//! An opt-in timeline of the group-commit cycle, for finding where the device sits idle between
//! two fdatasyncs: with `RINGKV_WAL_TRACE=<path>` in the environment when a WAL opens, every
//! flush records when its batch was taken, when its write+fdatasync started and returned, when
//! its outcomes were delivered and when its first and last waiting appender got back to run;
//! `close` writes one CSV row per flush to `<path>` (the newest [`SLOTS`] flushes).
//!
//! Off (the default), the only cost is a branch on an `Option` per flush and per wake-up.
//!
//! Times are nanoseconds since the trace's creation. A flush's row is written by its leader,
//! its delivery fields by the thread that delivers it, the wake-up fields by its waiters
//! (`fetch_min` / `fetch_max`), so every field is an atomic and no lock is taken.

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// Flushes kept (a ring indexed by batch number); older ones are overwritten.
pub(crate) const SLOTS: usize = 1 << 16;

/// Environment variable naming the CSV file to write at close.
pub(crate) const TRACE_ENV: &str = "RINGKV_WAL_TRACE";

/// The fields of one flush, in CSV column order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Field {
    /// Batch taken from the queue.
    Take,
    /// Earliest and latest enqueue time of the batch's appends.
    FirstEnqueued,
    LastEnqueued,
    /// Appends in the batch (a count, not a time).
    Appends,
    /// Write+fdatasync started (submitted, or for deferred I/O the synchronous call begun).
    IoStart,
    /// The leader began waiting for it (for deferred I/O, std's, the I/O itself starts here).
    Wait,
    /// Write+fdatasync returned to the leader.
    IoDone,
    /// Delivery of this batch's outcomes began and ended (parked waiters woken: chain heads).
    DeliverStart,
    DeliverEnd,
    /// First and last waiting appender of the batch back in user space with its outcome.
    WokenFirst,
    WokenLast,
}

const FIELDS: usize = 11;

const NAMES: [&str; FIELDS] = [
    "take",
    "first_enqueued",
    "last_enqueued",
    "appends",
    "io_start",
    "wait",
    "io_done",
    "deliver_start",
    "deliver_end",
    "woken_first",
    "woken_last",
];

pub(crate) struct Trace {
    path: PathBuf,
    epoch: Instant,
    slots: Vec<[AtomicU64; FIELDS]>,
}

impl Trace {
    /// A trace if `RINGKV_WAL_TRACE` is set.
    pub(crate) fn from_env() -> Option<Trace> {
        let path = std::env::var_os(TRACE_ENV)?;
        let slots = (0..SLOTS)
            .map(|_| std::array::from_fn(|_| AtomicU64::new(0)))
            .collect();
        Some(Trace {
            path: path.into(),
            epoch: Instant::now(),
            slots,
        })
    }

    fn ns(&self, t: Instant) -> u64 {
        // +1 so that 0 means "not recorded".
        t.saturating_duration_since(self.epoch).as_nanos() as u64 + 1
    }

    fn slot(&self, batch: u64) -> &[AtomicU64; FIELDS] {
        &self.slots[(batch as usize) % SLOTS]
    }

    /// Starts the row of `batch` (clearing what an older flush left in its slot).
    pub(crate) fn begin(&self, batch: u64, take: Instant, first: Instant, last: Instant, n: usize) {
        let s = self.slot(batch);
        for f in s.iter() {
            f.store(0, Ordering::Relaxed);
        }
        s[Field::WokenFirst as usize].store(u64::MAX, Ordering::Relaxed);
        s[Field::Take as usize].store(self.ns(take), Ordering::Relaxed);
        s[Field::FirstEnqueued as usize].store(self.ns(first), Ordering::Relaxed);
        s[Field::LastEnqueued as usize].store(self.ns(last), Ordering::Relaxed);
        s[Field::Appends as usize].store(n as u64, Ordering::Relaxed);
    }

    /// Records `field` of `batch` as now.
    pub(crate) fn mark(&self, batch: u64, field: Field) {
        self.mark_at(batch, field, Instant::now());
    }

    pub(crate) fn mark_at(&self, batch: u64, field: Field, t: Instant) {
        self.slot(batch)[field as usize].store(self.ns(t), Ordering::Relaxed);
    }

    /// A waiter of `batch` got back to run with its outcome.
    pub(crate) fn woken(&self, batch: u64) {
        let t = self.ns(Instant::now());
        let s = self.slot(batch);
        s[Field::WokenFirst as usize].fetch_min(t, Ordering::Relaxed);
        s[Field::WokenLast as usize].fetch_max(t, Ordering::Relaxed);
    }

    /// Writes the rows of batches `[0, batches)` still in the ring, oldest first.
    pub(crate) fn write(&self, batches: u64) {
        let from = batches.saturating_sub(SLOTS as u64);
        let mut out = String::from("batch");
        for n in NAMES {
            out.push(',');
            out.push_str(n);
        }
        out.push('\n');
        for b in from..batches {
            out.push_str(&b.to_string());
            for (i, f) in self.slot(b).iter().enumerate() {
                let v = f.load(Ordering::Relaxed);
                let v = if i == Field::WokenFirst as usize && v == u64::MAX {
                    0
                } else {
                    v
                };
                out.push(',');
                out.push_str(&v.to_string());
            }
            out.push('\n');
        }
        let res = std::fs::File::create(&self.path).and_then(|mut f| f.write_all(out.as_bytes()));
        if let Err(e) = res {
            tracing::warn!("cannot write the WAL trace to {}: {e}", self.path.display());
        }
    }
}

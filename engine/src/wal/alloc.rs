//! The segment allocator: a background thread that keeps one zero-filled, synced segment file
//! ready, so a segment switch (by whichever thread leads the flush) never waits for allocation or zeroing.
//!
//! Steps for each file (crash cases in format.md, "Segment preparation"):
//! 1. create `{k:016x}.wal.alloc`, `fallocate` the full segment size;
//! 2. write zeros over all of it (so later writes land in already-written extents and their
//!    fdatasync carries no extent-conversion metadata) and fdatasync — unless configured to
//!    skip it once the WAL's recent flushes are large (see [`ZeroFill`]): the file is then only
//!    fallocated (unwritten extents read as zeros, which is all replay needs);
//! 3. rename it to `{k:016x}.wal.ready` and hand it over; wait until the writer takes it,
//!    then start the next one.
//!
//! Both suffixes are deleted at open, so no step needs a directory sync: the directory entry
//! that matters is the final segment name, which the writer syncs at installation.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, bounded};

use super::format::{ALLOC_SUFFIX, READY_SUFFIX};
use crate::io::{AlignedBuf, File, OpenOptions, Vfs};

/// A zero-filled, synced file under a `.wal.ready` name, not yet installed as a segment.
pub(crate) struct ReadySegment {
    pub path: PathBuf,
    pub file: Arc<dyn File>,
}

/// Handle to the allocator thread; dropping it stops the thread and waits for it.
pub(crate) struct Allocator {
    rx: Option<Receiver<io::Result<ReadySegment>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// Bytes of zeros written per call while filling a segment.
const ZERO_CHUNK: usize = 1 << 20;

/// When to write zeros over a new segment: the writer feeds it the size of each flush, the
/// allocator asks it before preparing each file.
pub(crate) struct ZeroFill {
    /// Zero-fill while the average flush is below this many bytes (`u64::MAX`: always).
    below: u64,
    /// Exponentially weighted average of flush sizes in bytes (weight 1/8 per flush).
    avg: AtomicU64,
}

impl ZeroFill {
    pub(crate) fn new(below: u64) -> ZeroFill {
        ZeroFill {
            below,
            avg: AtomicU64::new(0),
        }
    }

    /// Records one flush of `bytes` (called by the flushing thread only).
    pub(crate) fn on_flush(&self, bytes: u64) {
        let avg = self.avg.load(Ordering::Relaxed);
        let next = avg - avg / 8 + bytes / 8;
        self.avg.store(next, Ordering::Relaxed);
    }

    fn wanted(&self) -> bool {
        self.avg.load(Ordering::Relaxed) < self.below
    }
}

impl Allocator {
    pub(crate) fn start(
        vfs: Arc<dyn Vfs>,
        dir: PathBuf,
        segment_size: u64,
        direct: bool,
        zero_fill: Arc<ZeroFill>,
    ) -> io::Result<Allocator> {
        // Rendezvous channel: one file is handed over only when the writer asks, and the
        // next is prepared right after, so exactly one spare exists ahead of need.
        let (tx, rx) = bounded(0);
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let thread = std::thread::Builder::new()
            .name("ringkv-wal-alloc".into())
            .spawn(move || {
                for k in 0u64.. {
                    let zeros = zero_fill.wanted();
                    let ready = prepare(&*vfs, &dir, k, segment_size, direct, zeros, &stop2);
                    let failed = ready.is_err();
                    if let Err(e) = &ready
                        && !stop2.load(Ordering::Acquire)
                    {
                        // The WAL fails at its next segment switch; say why now.
                        tracing::error!("WAL segment allocator in {}: {e}", dir.display());
                    }
                    if let Err(e) = tx.send(ready) {
                        // The WAL is closing: delete the spare we made.
                        if let Ok(r) = e.into_inner() {
                            let _ = vfs.remove_file(&r.path);
                        }
                        return;
                    }
                    if failed || stop2.load(Ordering::Acquire) {
                        return;
                    }
                }
            })?;
        Ok(Allocator {
            rx: Some(rx),
            stop,
            thread: Some(thread),
        })
    }

    /// The next ready file; blocks while it is still being prepared.
    pub(crate) fn take(&self) -> io::Result<ReadySegment> {
        let rx = self
            .rx
            .as_ref()
            .expect("allocator receiver lives until drop");
        rx.recv()
            .unwrap_or_else(|_| Err(io::Error::other("segment allocator stopped after an error")))
    }
}

impl Drop for Allocator {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        drop(self.rx.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn prepare(
    vfs: &dyn Vfs,
    dir: &Path,
    k: u64,
    size: u64,
    direct: bool,
    zeros: bool,
    stop: &AtomicBool,
) -> io::Result<ReadySegment> {
    let alloc = dir.join(format!("{k:016x}{ALLOC_SUFFIX}"));
    let ready = dir.join(format!("{k:016x}{READY_SUFFIX}"));
    let file = vfs.open(
        &alloc,
        OpenOptions::read_write().create(true).direct(direct),
    )?;
    file.set_len(0)?;
    file.allocate(0, size)?;
    let chunk = AlignedBuf::zeroed(if zeros { ZERO_CHUNK } else { 0 });
    let mut off = if zeros { 0 } else { size };
    while off < size {
        if stop.load(Ordering::Acquire) {
            drop(file);
            let _ = vfs.remove_file(&alloc);
            return Err(io::Error::other("WAL closing"));
        }
        let n = (size - off).min(ZERO_CHUNK as u64) as usize;
        file.write_at(&chunk[..n], off)?;
        off += n as u64;
    }
    file.sync_data()?;
    vfs.rename(&alloc, &ready)?;
    Ok(ReadySegment { path: ready, file })
}

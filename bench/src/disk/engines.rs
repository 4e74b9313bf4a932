//! The engines `disk wal` drives, behind one small interface: per-writer append functions and a
//! count of the fdatasyncs issued.

use std::io;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use ringkv_engine::{AlignedBuf, File, align_up};

use super::{AppendFn, RAW_FILE_BYTES, WalOpts, io_error_kind, io_name, open_vfs, prezeroed_file};

/// What `disk wal` can measure.
///
/// - `Ringkv`: ringkv's group-commit WAL (`Wal::append_wait` from every writer thread); the
///   sync count comes from a counting wrapper around the I/O seam, so it includes the
///   fdatasyncs of segment pre-allocation.
/// - `RaftEngine`: TiKV's raft-engine 0.4 with its defaults (format v2, log recycling on,
///   128 MiB files, no prefill), `Engine::write(batch, sync = true)`. Each writer is its own
///   raft group (region id = writer + 1) and appends one `LogBatch::put` of the record per
///   write; raft-engine's write group batches concurrent writers into one fdatasync, as
///   ours does. Its syncs are read from its `raft_engine_sync_log_duration_seconds`
///   histogram. It does its own buffered I/O, so `--io` does not apply to it.
/// - `Raw`: no WAL and no batching: each writer writes its record padded to a 4 KiB multiple
///   (O_DIRECT, at the next free block of one pre-zeroed file shared by all writers) and
///   fdatasyncs, through the I/O seam. With one writer this is the device's floor that the
///   WAL is held against; with N writers it shows what the device does with N independent
///   fdatasyncs (records_per_sync is 1 by construction).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Engine {
    Ringkv,
    RaftEngine,
    Raw,
}

impl Engine {
    pub fn name(self) -> &'static str {
        match self {
            Engine::Ringkv => "ringkv",
            Engine::RaftEngine => "raft-engine",
            Engine::Raw => "raw",
        }
    }
}

/// An opened engine, ready to hand out writers.
pub trait Target: Sync {
    /// The append function of writer `w` (each writer thread calls only its own).
    fn writer(&self, w: usize) -> Result<AppendFn<'_>, String>;
    /// fdatasyncs issued so far.
    fn syncs(&self) -> u64;
    fn io_name(&self) -> String;
    fn close(self: Box<Self>) -> Result<(), String>;
}

pub fn open(engine: Engine, opts: &WalOpts, dir: &Path) -> Result<Box<dyn Target>, String> {
    match engine {
        Engine::Raw => Ok(Box::new(RawTarget::open(opts, dir)?)),
        Engine::RaftEngine => Ok(Box::new(RaftEngineTarget::open(opts, dir)?)),
        Engine::Ringkv => Err(
            "ringkv's WAL is not part of this build yet (it lands with branch `wal`); \
             use --compare or --engines raw,raft-engine"
                .to_owned(),
        ),
    }
}

/// The payload of record `seq` of writer `w`: `len` bytes, distinct per record.
pub fn payload(w: usize, seq: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    fill_payload(&mut v, w, seq);
    v
}

/// Fills `buf` with a pattern of writer `w`'s record `seq` (not compressible to nothing, and
/// never the all-zero block of a pre-zeroed file).
fn fill_payload(buf: &mut [u8], w: usize, seq: u64) {
    let tag = (seq.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ ((w as u64) << 48)).to_le_bytes();
    for (i, b) in buf.iter_mut().enumerate() {
        *b = match tag[i % 8] ^ (i as u8) {
            0 => 0xA5,
            x => x,
        };
    }
}

struct RawTarget {
    file: Arc<dyn File>,
    io: String,
    block: u64,
    slots: u64,
    next: AtomicU64,
    syncs: AtomicU64,
    record_size: usize,
}

impl RawTarget {
    fn open(opts: &WalOpts, dir: &Path) -> Result<Self, String> {
        let vfs = open_vfs(opts.io)?;
        let block = align_up(opts.record_size.max(1));
        let bytes = RAW_FILE_BYTES.max(block * 4 * u64::from(opts.writers.max(1)));
        let path = dir.join("raw.dat");
        let file = prezeroed_file(&*vfs, &path, bytes)
            .map_err(|e| format!("{}: cannot prepare file: {e}", path.display()))?;
        Ok(RawTarget {
            file,
            io: io_name(opts.io).to_owned(),
            block,
            slots: align_up(bytes) / block,
            next: AtomicU64::new(0),
            syncs: AtomicU64::new(0),
            record_size: opts.record_size as usize,
        })
    }
}

impl Target for RawTarget {
    fn writer(&self, w: usize) -> Result<AppendFn<'_>, String> {
        let mut buf = AlignedBuf::zeroed(self.block as usize);
        Ok(Box::new(move |seq| {
            fill_payload(&mut buf[..self.record_size], w, seq);
            let off = (self.next.fetch_add(1, Ordering::Relaxed) % self.slots) * self.block;
            let res = self.file.write_at_and_sync(&buf, off);
            self.syncs.fetch_add(1, Ordering::Relaxed);
            res.map_err(|e: io::Error| io_error_kind(&e))
        }))
    }

    fn syncs(&self) -> u64 {
        self.syncs.load(Ordering::Relaxed)
    }

    fn io_name(&self) -> String {
        self.io.clone()
    }

    fn close(self: Box<Self>) -> Result<(), String> {
        Ok(())
    }
}

/// Name of raft-engine's fdatasync-duration histogram (one sample per fdatasync).
const RAFT_ENGINE_SYNC_METRIC: &str = "raft_engine_sync_log_duration_seconds";

struct RaftEngineTarget {
    engine: raft_engine::Engine,
    record_size: usize,
}

impl RaftEngineTarget {
    fn open(opts: &WalOpts, dir: &Path) -> Result<Self, String> {
        let cfg = raft_engine::Config {
            dir: dir.join("raft-engine").to_string_lossy().into_owned(),
            ..Default::default()
        };
        let engine = raft_engine::Engine::open(cfg)
            .map_err(|e| format!("raft-engine: cannot open in {}: {e}", dir.display()))?;
        Ok(RaftEngineTarget {
            engine,
            record_size: opts.record_size as usize,
        })
    }
}

/// fdatasyncs raft-engine has issued in this process (all engines).
pub fn raft_engine_syncs() -> u64 {
    prometheus::gather()
        .iter()
        .filter(|mf| mf.get_name() == RAFT_ENGINE_SYNC_METRIC)
        .flat_map(|mf| mf.get_metric())
        .map(|m| m.get_histogram().get_sample_count())
        .sum()
}

impl Target for RaftEngineTarget {
    fn writer(&self, w: usize) -> Result<AppendFn<'_>, String> {
        let region = w as u64 + 1;
        Ok(Box::new(move |seq| {
            let mut batch = raft_engine::LogBatch::default();
            batch
                .put(
                    region,
                    seq.to_be_bytes().to_vec(),
                    payload(w, seq, self.record_size),
                )
                .map_err(|e| format!("raft-engine put: {e}"))?;
            self.engine
                .write(&mut batch, true)
                .map(|_| ())
                .map_err(|e| format!("raft-engine write: {e}"))
        }))
    }

    fn syncs(&self) -> u64 {
        raft_engine_syncs()
    }

    fn io_name(&self) -> String {
        "own".to_owned()
    }

    fn close(self: Box<Self>) -> Result<(), String> {
        drop(self.engine);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use ringkv_engine::IoKind;

    use super::super::run_wal;
    use super::*;

    fn opts(dir: &Path, writers: u32, record_size: u64) -> WalOpts {
        WalOpts {
            dir: dir.to_owned(),
            io: IoKind::Std,
            writers,
            record_size,
            duration: Duration::from_millis(200),
        }
    }

    #[test]
    fn payloads_differ_and_are_never_zero() {
        let a = payload(0, 1, 64);
        let b = payload(0, 2, 64);
        let c = payload(1, 1, 64);
        assert_ne!(a, b);
        assert_ne!(a, c);
        assert!(a.iter().all(|&x| x != 0));
    }

    #[test]
    fn raw_engine_one_sync_per_record() {
        let dir = tempfile::tempdir().unwrap();
        let r = run_wal(Engine::Raw, &opts(dir.path(), 3, 256)).unwrap();
        assert_eq!(r.engine, "raw");
        assert_eq!(r.writers, 3);
        assert!(r.total > 0);
        assert_eq!(r.errors, 0);
        assert_eq!(r.syncs, r.total);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn raft_engine_writes_and_counts_syncs() {
        let dir = tempfile::tempdir().unwrap();
        let r = run_wal(Engine::RaftEngine, &opts(dir.path(), 4, 256)).unwrap();
        assert_eq!(r.engine, "raft-engine");
        assert!(r.total > 0, "{r:?}");
        assert_eq!(r.errors, 0);
        assert!(r.syncs > 0, "{r:?}");
        // A sync covers at least one record; a few syncs may belong to writes still in flight
        // when the clock stopped.
        assert!(r.syncs <= r.total + 4, "{r:?}");
    }
}

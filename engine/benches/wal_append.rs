//! One writer's durable-append latency, the WAL against the device floor, in the same run:
//! - `raw`: one 4 KiB O_DIRECT write + fdatasync (`write_at_and_sync`) into a pre-zeroed file,
//!   on the calling thread;
//! - `wal`: `Wal::append_wait` of one 256-byte entry (with one writer the WAL is idle, so the
//!   calling thread encodes it and issues the same kind of write + fdatasync itself).
//!
//! Rounds alternate raw and WAL for each I/O implementation; each round prints p50/p99 (µs) and
//! the WAL/raw ratio of p50s; the last line gives the median ratio over rounds.
//!
//! Run: `cargo bench -p ringkv-engine --bench wal_append [-- ROUNDS OPS]` (default 5 rounds of
//! 2000 appends; set `RINGKV_BENCH_DIR` to measure another file system than the temp dir's, and
//! `RINGKV_WAL_IDLE_SPIN_US` to set `WalOptions::idle_spin`).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ringkv_engine::{
    AlignedBuf, LogEntry, OpenOptions, Record, StdVfs, UringVfs, Vfs, Wal, WalOptions,
};

const RAW_FILE: u64 = 16 << 20;

fn percentiles(mut v: Vec<Duration>) -> (u128, u128) {
    v.sort();
    (
        v[v.len() / 2].as_micros(),
        v[v.len() * 99 / 100].as_micros(),
    )
}

fn raw_round(vfs: &dyn Vfs, dir: &std::path::Path, ops: usize) -> (u128, u128) {
    let path = dir.join("raw");
    let f = vfs
        .open(&path, OpenOptions::read_write().create(true).direct(true))
        .unwrap();
    f.allocate(0, RAW_FILE).unwrap();
    let zeros = AlignedBuf::zeroed(1 << 20);
    for off in (0..RAW_FILE).step_by(1 << 20) {
        f.write_at(&zeros, off).unwrap();
    }
    f.sync_data().unwrap();
    let mut block = AlignedBuf::zeroed(4096);
    block.fill(0x5a);
    let lat = (0..ops)
        .map(|i| {
            let t = Instant::now();
            f.write_at_and_sync(&block, (i as u64 * 4096) % RAW_FILE)
                .unwrap();
            t.elapsed()
        })
        .collect();
    drop(f);
    vfs.remove_file(&path).unwrap();
    percentiles(lat)
}

fn wal_round(vfs: &Arc<dyn Vfs>, dir: &std::path::Path, ops: usize) -> (u128, u128) {
    let wal_dir = dir.join("wal");
    let spin_us = std::env::var("RINGKV_WAL_IDLE_SPIN_US")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let opts = WalOptions {
        segment_size: 16 << 20,
        idle_spin: Duration::from_micros(spin_us),
        ..WalOptions::default()
    };
    let (wal, _) = Wal::open(vfs.clone(), &wal_dir, opts).unwrap();
    // Let the allocator finish the spare segment so it does not share the device with us.
    std::thread::sleep(Duration::from_millis(300));
    let data = Bytes::from(vec![0x5au8; 256]);
    let lat = (1..=ops as u64)
        .map(|index| {
            let rec = Record::Entry(LogEntry {
                index,
                term: 1,
                entry_type: 0,
                data: data.clone(),
            });
            let t = Instant::now();
            wal.append_wait(vec![rec]).unwrap();
            t.elapsed()
        })
        .collect();
    wal.close().unwrap();
    for p in wal.segment_paths() {
        vfs.remove_file(&p).unwrap();
    }
    percentiles(lat)
}

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let rounds = args.first().copied().unwrap_or(5);
    let ops = args.get(1).copied().unwrap_or(2000);
    let tmp = match std::env::var_os("RINGKV_BENCH_DIR") {
        Some(d) => tempfile::tempdir_in(PathBuf::from(d)),
        None => tempfile::tempdir(),
    }
    .expect("bench directory");
    let vfses: [(&str, Arc<dyn Vfs>); 2] = [
        ("uring", Arc::new(UringVfs::new().expect("io_uring"))),
        ("std", Arc::new(StdVfs::new())),
    ];
    for (name, vfs) in &vfses {
        let mut ratios = Vec::new();
        for round in 0..rounds {
            let raw = raw_round(&**vfs, tmp.path(), ops);
            let wal = wal_round(vfs, tmp.path(), ops);
            let ratio = wal.0 as f64 / raw.0 as f64;
            ratios.push(ratio);
            println!(
                "{name} round {round}: raw p50 {} p99 {} us | wal p50 {} p99 {} us | p50 ratio {ratio:.2}",
                raw.0, raw.1, wal.0, wal.1
            );
        }
        ratios.sort_by(f64::total_cmp);
        println!(
            "{name}: median p50 ratio wal/raw over {rounds} rounds: {:.2}",
            ratios[ratios.len() / 2]
        );
    }
}

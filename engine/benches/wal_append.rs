//! One writer's durable-append latency: the WAL (`append_wait` of one 256-byte entry, through the
//! WAL thread) against the raw device floor (one 4 KiB O_DIRECT write + fdatasync into a
//! pre-zeroed file, on the calling thread), for both I/O implementations, in the same run.
//!
//! Run: `cargo bench -p ringkv-engine --features internals --bench wal_append`
//! (set `RINGKV_BENCH_DIR` to measure another file system than the temp dir's).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use ringkv_engine::{
    AlignedBuf, LogEntry, OpenOptions, Record, StdVfs, UringVfs, Vfs, Wal, WalOptions,
};

const RAW_FILE: u64 = 64 << 20;

fn bench_dir() -> tempfile::TempDir {
    match std::env::var_os("RINGKV_BENCH_DIR") {
        Some(d) => tempfile::tempdir_in(PathBuf::from(d)),
        None => tempfile::tempdir(),
    }
    .expect("bench directory")
}

fn one_writer(c: &mut Criterion) {
    let mut g = c.benchmark_group("wal_append/1_writer");
    g.warm_up_time(Duration::from_secs(2));
    let vfses: [(&str, Arc<dyn Vfs>); 2] = [
        ("uring", Arc::new(UringVfs::new().expect("io_uring"))),
        ("std", Arc::new(StdVfs::new())),
    ];
    for (name, vfs) in vfses {
        let tmp = bench_dir();
        // The raw floor: 4 KiB O_DIRECT write + fdatasync at successive offsets.
        let raw = vfs
            .open(
                &tmp.path().join("raw"),
                OpenOptions::read_write().create(true).direct(true),
            )
            .unwrap();
        raw.allocate(0, RAW_FILE).unwrap();
        let zeros = AlignedBuf::zeroed(1 << 20);
        for off in (0..RAW_FILE).step_by(1 << 20) {
            raw.write_at(&zeros, off).unwrap();
        }
        raw.sync_data().unwrap();
        let mut block = AlignedBuf::zeroed(4096);
        block.fill(0x5a);
        let mut off = 0;
        g.bench_function(format!("raw_4k_write_fdatasync/{name}"), |b| {
            b.iter(|| {
                raw.write_at_and_sync(&block, off).unwrap();
                off = (off + 4096) % RAW_FILE;
            })
        });

        let (wal, _) =
            Wal::open(vfs.clone(), &tmp.path().join("wal"), WalOptions::default()).unwrap();
        let data = Bytes::from(vec![0x5au8; 256]);
        let mut index = 0;
        g.bench_function(format!("wal_append_wait_256B/{name}"), |b| {
            b.iter(|| {
                index += 1;
                wal.append_wait(vec![Record::Entry(LogEntry {
                    index,
                    term: 1,
                    entry_type: 0,
                    data: data.clone(),
                })])
                .unwrap()
            })
        });
        wal.close().unwrap();
    }
    g.finish();
}

criterion_group!(benches, one_writer);
criterion_main!(benches);

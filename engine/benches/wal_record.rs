//! Micro-benchmarks of the WAL record frame: encoding, decoding and CRC32C.
//!
//! Run: `cargo bench -p ringkv-engine --features internals --bench wal_record`

use std::hint::black_box;

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use ringkv_engine::wal_internals::{Decoded, crc_seed, decode_record, encode_record, encoded_len};
use ringkv_engine::{HardState, LogEntry, Record};

const SIZES: [usize; 4] = [64, 256, 4096, 65536];

fn entry(size: usize) -> Record {
    Record::Entry(LogEntry {
        index: 1_000_000,
        term: 7,
        entry_type: 0,
        data: Bytes::from(vec![0x5a; size]),
    })
}

fn encode(c: &mut Criterion) {
    let mut g = c.benchmark_group("wal_record/encode");
    let seed = crc_seed(3);
    for size in SIZES {
        let rec = entry(size);
        let mut buf = vec![0u8; encoded_len(&rec)];
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_with_input(BenchmarkId::from_parameter(size), &rec, |b, rec| {
            b.iter(|| encode_record(black_box(&mut buf), black_box(rec), 9, seed))
        });
    }
    let hs = Record::HardState(HardState {
        term: 7,
        vote: 1,
        commit: 999_999,
    });
    let mut buf = vec![0u8; encoded_len(&hs)];
    g.throughput(Throughput::Elements(1));
    g.bench_function("hard_state", |b| {
        b.iter(|| encode_record(black_box(&mut buf), black_box(&hs), 9, seed))
    });
    g.finish();
}

fn decode(c: &mut Criterion) {
    let mut g = c.benchmark_group("wal_record/decode");
    let seed = crc_seed(3);
    for size in SIZES {
        let rec = entry(size);
        let mut buf = vec![0u8; encoded_len(&rec)];
        encode_record(&mut buf, &rec, 9, seed);
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_with_input(BenchmarkId::from_parameter(size), &buf, |b, buf| {
            b.iter(|| {
                let d = decode_record(black_box(buf), 0, seed);
                assert!(matches!(d, Decoded::Record { .. }));
                d
            })
        });
    }
    g.finish();
}

fn crc(c: &mut Criterion) {
    let mut g = c.benchmark_group("wal_record/crc32c");
    for size in SIZES {
        let data = vec![0xa5u8; size];
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_with_input(BenchmarkId::from_parameter(size), &data, |b, data| {
            b.iter(|| crc32c::crc32c(black_box(data)))
        });
    }
    g.finish();
}

criterion_group!(benches, encode, decode, crc);
criterion_main!(benches);

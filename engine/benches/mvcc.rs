//! MVCC micro-benchmarks (in-process, in-memory backend, like etcd's `benchmark mvcc put`):
//! put / range / txn per op, key-index memory per key, index rebuild on open, and watch
//! fan-out with 10k and 100k watchers.
//!
//! Run: `CARGO_TARGET_DIR=/work/target-shared cargo bench -p ringkv-engine --features internals
//! --bench mvcc` (add `RINGKV_BENCH_1M=1` for the 1M-key rebuild). The memory figure is printed,
//! not timed.

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use ringkv_engine::pb::etcdserverpb as pb;
use ringkv_engine::pb::etcdserverpb::{compare, request_op::Request};
use ringkv_engine::{Lessor, MemStorage, MvccStore, Revision, TreeIndex};

/// Counts live heap bytes, for the index-memory figure.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: forwards to the system allocator unchanged; only counts sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as isize, Ordering::Relaxed);
        // SAFETY: same layout contract as the caller's.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as isize, Ordering::Relaxed);
        // SAFETY: `p` was allocated by `System.alloc` with `l`.
        unsafe { System.dealloc(p, l) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

type Store = MvccStore<MemStorage>;

fn key(i: u64) -> Bytes {
    Bytes::from(format!("key/{i:012}"))
}

fn store_with(n: u64) -> Store {
    let mut s = MvccStore::open(MemStorage::new(), Lessor::default()).unwrap();
    for i in 0..n {
        s.put(&pb::PutRequest {
            key: key(i),
            value: Bytes::from_static(&[b'v'; 64]),
            ..Default::default()
        })
        .unwrap();
    }
    s
}

fn kv_ops(c: &mut Criterion) {
    let n = 100_000u64;
    let mut s = store_with(n);
    let value = Bytes::from_static(&[b'x'; 64]);
    let mut g = c.benchmark_group("mvcc");
    g.measurement_time(Duration::from_secs(3));
    let mut i = 0u64;
    g.bench_function("put_64B_existing_key_100k", |b| {
        b.iter(|| {
            i = (i + 7919) % n;
            s.put(&pb::PutRequest {
                key: key(i),
                value: value.clone(),
                ..Default::default()
            })
            .unwrap()
        })
    });
    // Peers measured in the same run: the in-memory backend alone, so MVCC's own cost shows
    // as a ratio.
    let mut be = s.backend().clone();
    let raw = Bytes::from_static(&[b'x'; 96]);
    let mut r = 1_000_000i64;
    g.bench_function("peer_backend_put_100k", |b| {
        b.iter(|| {
            r += 1;
            ringkv_engine::BatchWrite::put(
                &mut be,
                ringkv_engine::Bucket::Key,
                &Revision::new(r, 0).to_key(false),
                &raw,
            )
            .unwrap()
        })
    });
    g.bench_function("peer_backend_get_100k", |b| {
        b.iter(|| {
            i = (i + 7919) % n;
            black_box(
                ringkv_engine::KvRead::get(
                    &be,
                    ringkv_engine::Bucket::Key,
                    &Revision::new(i as i64 + 2, 0).to_key(false),
                )
                .unwrap(),
            )
        })
    });
    g.bench_function("range_1_key_100k", |b| {
        b.iter(|| {
            i = (i + 7919) % n;
            black_box(
                s.range(&pb::RangeRequest {
                    key: key(i),
                    ..Default::default()
                })
                .unwrap(),
            )
        })
    });
    g.bench_function("range_10_keys_100k", |b| {
        b.iter(|| {
            i = (i + 7919) % (n - 10);
            black_box(
                s.range(&pb::RangeRequest {
                    key: key(i),
                    range_end: key(i + 10),
                    ..Default::default()
                })
                .unwrap(),
            )
        })
    });
    g.bench_function("txn_cmp_put_100k", |b| {
        b.iter(|| {
            i = (i + 7919) % n;
            s.txn(&pb::TxnRequest {
                compare: vec![pb::Compare {
                    key: key(i),
                    target: compare::CompareTarget::Version as i32,
                    result: compare::CompareResult::Greater as i32,
                    target_union: Some(compare::TargetUnion::Version(0)),
                    ..Default::default()
                }],
                success: vec![pb::RequestOp {
                    request: Some(Request::RequestPut(pb::PutRequest {
                        key: key(i),
                        value: value.clone(),
                        ..Default::default()
                    })),
                }],
                failure: vec![],
            })
            .unwrap()
        })
    });
    g.finish();
}

fn index_memory(_c: &mut Criterion) {
    for n in [100_000u64, 1_000_000] {
        let keys: Vec<Vec<u8>> = (0..n).map(|i| key(i).to_vec()).collect();
        let before = LIVE.load(Ordering::Relaxed);
        let mut t = TreeIndex::new();
        for (i, k) in keys.iter().enumerate() {
            t.put(k, Revision::new(i as i64 + 2, 0));
        }
        let after = LIVE.load(Ordering::Relaxed);
        let per_key = (after - before) as f64 / n as f64;
        println!(
            "mvcc/index_memory: {n} keys (16-byte keys, 1 revision each): {per_key:.1} bytes/key \
             (key bytes included)"
        );
        black_box(&t);
    }
}

fn rebuild(c: &mut Criterion) {
    let mut g = c.benchmark_group("mvcc_rebuild");
    g.sample_size(10);
    let mut sizes = vec![100_000u64];
    if std::env::var("RINGKV_BENCH_1M").is_ok() {
        sizes.push(1_000_000);
    }
    for n in sizes {
        let backend = store_with(n).backend().clone();
        g.bench_with_input(BenchmarkId::from_parameter(n), &backend, |b, be| {
            b.iter(|| MvccStore::open(be.clone(), Lessor::default()).unwrap())
        });
    }
    g.finish();
}

fn watch_fanout(c: &mut Criterion) {
    let mut g = c.benchmark_group("mvcc_watch");
    g.measurement_time(Duration::from_secs(3));
    for n in [10_000u64, 100_000] {
        // n watchers on n distinct keys (half single keys, half 1-key ranges); each put
        // matches one of them: the cost must not grow with n.
        let mut s = store_with(0);
        let (tx, rx) = crossbeam_channel::bounded(1 << 20);
        let st = s.watch_open_stream(tx);
        for i in 0..n {
            let range_end = if i % 2 == 0 { Bytes::new() } else { key(i + 1) };
            s.watch_create(
                st,
                &pb::WatchCreateRequest {
                    key: key(i),
                    range_end,
                    ..Default::default()
                },
            );
        }
        rx.try_iter().for_each(drop);
        let mut i = 0u64;
        g.bench_with_input(BenchmarkId::new("put_one_match", n), &n, |b, &n| {
            b.iter(|| {
                i = (i + 7919) % n;
                s.put(&pb::PutRequest {
                    key: key(i),
                    value: Bytes::from_static(b"v"),
                    ..Default::default()
                })
                .unwrap();
                black_box(rx.try_recv().unwrap())
            })
        });
    }
    for n in [10_000u64, 100_000] {
        // n watchers on one prefix, each on its own small stream: every put fans out to all.
        let mut s = store_with(0);
        let mut rxs = Vec::new();
        for _ in 0..n {
            let (tx, rx) = crossbeam_channel::bounded(4);
            let st = s.watch_open_stream(tx);
            s.watch_create(
                st,
                &pb::WatchCreateRequest {
                    key: Bytes::from_static(b"key/"),
                    range_end: Bytes::from_static(b"key0"),
                    ..Default::default()
                },
            );
            rx.try_recv().unwrap();
            rxs.push(rx);
        }
        g.sample_size(10);
        g.bench_with_input(BenchmarkId::new("put_fan_out_all", n), &n, |b, _| {
            b.iter(|| {
                s.put(&pb::PutRequest {
                    key: key(1),
                    value: Bytes::from_static(b"v"),
                    ..Default::default()
                })
                .unwrap();
                for rx in &rxs {
                    black_box(rx.try_recv().unwrap());
                }
            })
        });
    }
    g.finish();
}

criterion_group!(benches, kv_ops, index_memory, rebuild, watch_fanout);
criterion_main!(benches);

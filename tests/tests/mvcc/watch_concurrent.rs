//! Watch guarantees under concurrent writes (spec §4.8): a writer thread, a sync thread and
//! slow consumer threads share the store; every watcher must see every change of its range
//! from its start revision, in revision order, without gaps or duplicates, with each
//! revision's events in one response; a compacted watcher is canceled and resumes from the
//! revision after the last one it saw.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use bytes::Bytes;
use crossbeam_channel::{Receiver, bounded};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use ringkv_engine::pb::etcdserverpb as pb;
use ringkv_engine::pb::mvccpb::event::EventType;
use ringkv_engine::{Lessor, MemStorage, MvccStore};
use ringkv_tests::{Op, OpGen};

type Store = MvccStore<MemStorage>;

const WRITES: usize = 1500;
const STREAMS: usize = 4;
const WATCHERS_PER_STREAM: usize = 10;

#[derive(Clone, Debug)]
struct Spec {
    key: Bytes,
    end: Bytes,
    start: i64,
}

fn contains(s: &Spec, k: &[u8]) -> bool {
    match s.end.as_ref() {
        [] => k == s.key.as_ref(),
        [0] => k >= s.key.as_ref(),
        e => k >= s.key.as_ref() && k < e,
    }
}

type Change = (i32, Bytes);

/// The changes of every revision, from the state before and after it (each key changes at
/// most once per revision in a valid txn).
fn history(store: &Store) -> BTreeMap<i64, BTreeSet<Change>> {
    let state_at = |rev: i64| -> BTreeMap<Bytes, i64> {
        let r = store
            .range(&pb::RangeRequest {
                key: Bytes::from_static(b"\0"),
                range_end: Bytes::from_static(b"\0"),
                revision: rev,
                ..Default::default()
            })
            .expect("range");
        r.kvs
            .into_iter()
            .map(|kv| (kv.key, kv.mod_revision))
            .collect()
    };
    let mut out = BTreeMap::new();
    let mut before = state_at(1);
    for rev in 2..=store.current_revision() {
        let after = state_at(rev);
        let mut set = BTreeSet::new();
        for (k, m) in &after {
            if *m == rev {
                set.insert((EventType::Put as i32, k.clone()));
            }
        }
        for k in before.keys() {
            if !after.contains_key(k) {
                set.insert((EventType::Delete as i32, k.clone()));
            }
        }
        out.insert(rev, set);
        before = after;
    }
    out
}

fn consume(rx: Receiver<pb::WatchResponse>, seed: u64) -> Vec<pb::WatchResponse> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut out = Vec::new();
    while let Ok(r) = rx.recv() {
        out.push(r);
        if rng.random_bool(0.05) {
            thread::sleep(Duration::from_micros(rng.random_range(100..2000)));
        }
    }
    out
}

#[test]
fn ordered_gapless_atomic_under_concurrent_writes() {
    let store = Arc::new(Mutex::new(
        MvccStore::open(MemStorage::new(), Lessor::default()).expect("open"),
    ));
    let mut generator = OpGen::new(77);
    // Some history before the watchers, so past start revisions catch up.
    {
        let mut s = store.lock().unwrap();
        for _ in 0..100 {
            let op = generator.next_op();
            if let Op::Put(p) = op {
                let _ = s.put(&p);
            }
        }
    }
    let mut rng = StdRng::seed_from_u64(5);
    let keys = ["a", "a/1", "b", "c", "c/x", "d", "g"];
    let mut specs: Vec<Vec<Spec>> = Vec::new();
    let mut consumers = Vec::new();
    let mut stream_ids = Vec::new();
    {
        let mut s = store.lock().unwrap();
        let cur = s.current_revision();
        for si in 0..STREAMS {
            // Small channels: slow consumers turn watchers into victims.
            let (tx, rx) = bounded(2 + si);
            let st = s.watch_open_stream(tx);
            let mut v = Vec::new();
            for _ in 0..WATCHERS_PER_STREAM {
                let k = keys[rng.random_range(0..keys.len())];
                let end = match rng.random_range(0..3) {
                    0 => Bytes::new(),
                    1 => Bytes::from_static(b"\0"),
                    _ => Bytes::copy_from_slice(keys[rng.random_range(0..keys.len())].as_bytes()),
                };
                let end =
                    if !end.is_empty() && end.as_ref() != b"\0" && end.as_ref() <= k.as_bytes() {
                        Bytes::from_static(b"\0")
                    } else {
                        end
                    };
                let start = if rng.random_bool(0.5) {
                    rng.random_range(1..=cur)
                } else {
                    0
                };
                let spec = Spec {
                    key: Bytes::copy_from_slice(k.as_bytes()),
                    end,
                    start: if start == 0 { cur + 1 } else { start },
                };
                s.watch_create(
                    st,
                    &pb::WatchCreateRequest {
                        key: spec.key.clone(),
                        range_end: spec.end.clone(),
                        start_revision: start,
                        ..Default::default()
                    },
                );
                v.push(spec);
            }
            specs.push(v);
            stream_ids.push(st);
            consumers.push(thread::spawn(move || consume(rx, si as u64)));
        }
    }
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let syncer = {
        let (store, done) = (store.clone(), done.clone());
        thread::spawn(move || {
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                store.lock().unwrap().watch_sync();
                thread::sleep(Duration::from_micros(500));
            }
        })
    };
    let writer = {
        let store = store.clone();
        thread::spawn(move || {
            let mut written = 0;
            while written < WRITES {
                let op = generator.next_op();
                let mut s = store.lock().unwrap();
                match op {
                    Op::Put(p) if p.lease == 0 => {
                        let _ = s.put(&p);
                    }
                    Op::Delete(d) => {
                        let _ = s.delete_range(&d);
                    }
                    Op::Txn(t) => {
                        let _ = s.txn(&t);
                    }
                    _ => continue,
                }
                written += 1;
            }
        })
    };
    writer.join().unwrap();
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    syncer.join().unwrap();
    // Drain: sync until nothing is behind, then close the streams (ends the consumers).
    for _ in 0..100_000 {
        if !store.lock().unwrap().watch_sync() {
            break;
        }
        thread::sleep(Duration::from_micros(200));
    }
    let stats = store.lock().unwrap().hub().stats();
    assert_eq!(
        (stats.unsynced, stats.victims),
        (0, 0),
        "everyone caught up"
    );
    assert!(stats.victimized_total > 0, "slow consumers made victims");
    for st in &stream_ids {
        store.lock().unwrap().watch_close_stream(*st);
    }
    let hist = history(&store.lock().unwrap());
    let results: Vec<Vec<pb::WatchResponse>> =
        consumers.into_iter().map(|c| c.join().unwrap()).collect();

    for (si, resps) in results.iter().enumerate() {
        for (wi, spec) in specs[si].iter().enumerate() {
            let mine: Vec<&pb::WatchResponse> = resps
                .iter()
                .filter(|r| r.watch_id == wi as i64 && !r.created)
                .collect();
            // Atomicity: no revision is split across responses.
            let mut seen_revs = BTreeSet::new();
            let mut got: BTreeMap<i64, BTreeSet<Change>> = BTreeMap::new();
            let mut last = 0;
            for r in &mine {
                let revs: BTreeSet<i64> = r
                    .events
                    .iter()
                    .map(|e| e.kv.as_ref().unwrap().mod_revision)
                    .collect();
                for rev in &revs {
                    assert!(seen_revs.insert(*rev), "revision {rev} split or duplicated");
                }
                for e in &r.events {
                    let kv = e.kv.as_ref().unwrap();
                    assert!(kv.mod_revision >= last, "events out of order");
                    last = kv.mod_revision;
                    let fresh = got
                        .entry(kv.mod_revision)
                        .or_default()
                        .insert((e.r#type, kv.key.clone()));
                    assert!(fresh, "duplicate event");
                }
            }
            let want: BTreeMap<i64, BTreeSet<Change>> = hist
                .range(spec.start..)
                .map(|(rev, set)| {
                    let s: BTreeSet<Change> = set
                        .iter()
                        .filter(|(_, k)| contains(spec, k))
                        .cloned()
                        .collect();
                    (*rev, s)
                })
                .filter(|(_, s)| !s.is_empty())
                .collect();
            assert_eq!(got, want, "stream {si} watcher {wi} {spec:?}");
        }
    }

    // Resume after compaction: a watcher behind the compaction is canceled with the compact
    // revision; re-watching from the revision after the last one it saw delivers the rest.
    let mut s = store.lock().unwrap();
    let cur = s.current_revision();
    let (tx, rx) = bounded(1000);
    let st = s.watch_open_stream(tx);
    let create = |start| pb::WatchCreateRequest {
        key: Bytes::from_static(b"\0"),
        range_end: Bytes::from_static(b"\0"),
        start_revision: start,
        ..Default::default()
    };
    s.watch_create(st, &create(cur - 20));
    s.compact(cur - 10).unwrap();
    while s.watch_sync() {}
    let got: Vec<pb::WatchResponse> = rx.try_iter().collect();
    let cancel = got.iter().find(|r| r.canceled).expect("compaction cancel");
    assert_eq!(cancel.compact_revision, cur - 10);
    s.watch_create(st, &create(cur - 5));
    while s.watch_sync() {}
    let revs: BTreeSet<i64> = rx
        .try_iter()
        .flat_map(|r| r.events)
        .map(|e| e.kv.unwrap().mod_revision)
        .collect();
    let want: BTreeSet<i64> = hist
        .range(cur - 5..)
        .filter(|(_, s)| !s.is_empty())
        .map(|(r, _)| *r)
        .collect();
    assert_eq!(revs, want);
}

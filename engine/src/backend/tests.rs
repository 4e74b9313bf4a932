//! Backend tests that reach internals: the model-based randomized test, overflow values,
//! corruption detection, the meta fallback, online shrink, and remap under concurrent readers.
//! The crash test through the fault-injecting VFS is in `crash_tests` below.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;
use crate::io::{OpenOptions, StdVfs, Vfs};
use crate::storage::{BatchWrite, Bucket, KvRead, StorageError};

type Model = BTreeMap<(Bucket, Vec<u8>), Vec<u8>>;

const BUCKETS: [Bucket; 3] = [Bucket::Key, Bucket::Meta, Bucket::Lease];

fn opts(mmap: bool) -> BackendOptions {
    opts_with(mmap, false)
}

/// `opts`, with the delta log on (`delta`) at small bounds, so that commits of a few random
/// keys use it and nearly every one of them folds.
fn opts_with(mmap: bool, delta: bool) -> BackendOptions {
    BackendOptions {
        delta_log: delta,
        delta_min_batch: 2,
        delta_max_entries: 200,
        delta_max_runs: 5,
        // Commit only when the test says so (or at the op limit, which it also models).
        batch_ops: 1_000_000,
        batch_interval: Duration::from_secs(3600),
        mmap,
        // Small, so that compaction stops and resumes from its cursor within the tests.
        compact_visits: 4,
        ..BackendOptions::default()
    }
}

fn std_vfs() -> Arc<dyn Vfs> {
    Arc::new(StdVfs::new())
}

fn db_path(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("member/snap/db")
}

/// Everything `snap` sees, per bucket, through scans.
fn dump(snap: &dyn KvRead) -> Model {
    let mut out = Model::new();
    for b in BUCKETS {
        snap.scan(b, b"", b"", &mut |k, v| {
            out.insert((b, k.to_vec()), v.to_vec());
            true
        })
        .unwrap();
    }
    out
}

/// Checks `snap` against `model`: full scans, point gets, and a bounded scan with early stop.
fn verify(snap: &dyn KvRead, model: &Model, rng: &mut StdRng) {
    assert_eq!(dump(snap), *model);
    for _ in 0..20 {
        let b = BUCKETS[rng.random_range(0..BUCKETS.len())];
        let k = key(rng.random_range(0..400u32));
        assert_eq!(
            snap.get(b, &k).unwrap(),
            model.get(&(b, k.clone())).cloned(),
            "get {b:?} {k:?}"
        );
        let end = key(rng.random_range(0..400u32));
        let limit = rng.random_range(1..30usize);
        let mut got = Vec::new();
        snap.scan(b, &k, &end, &mut |k, v| {
            got.push((k.to_vec(), v.to_vec()));
            got.len() < limit
        })
        .unwrap();
        if k < end {
            let want: Vec<_> = model
                .range((b, k.clone())..(b, end.clone()))
                .take(limit)
                .map(|((_, k), v)| (k.clone(), v.clone()))
                .collect();
            assert_eq!(got, want, "scan {b:?} [{k:?}, {end:?}) limit {limit}");
        } else {
            assert!(got.is_empty(), "scan with start >= end returned keys");
        }
    }
}

fn key(i: u32) -> Vec<u8> {
    // Variable-length keys sharing prefixes, so separators and ordering are exercised.
    let mut k = format!("k{:05}", i * 7919 % 100_000).into_bytes();
    k.extend(std::iter::repeat_n(b'x', (i % 13) as usize));
    k
}

fn value(rng: &mut StdRng) -> Vec<u8> {
    let len = match rng.random_range(0..100) {
        0..3 => rng.random_range(2000..20_000), // overflow runs of 1..5 pages
        3..10 => 0,
        _ => rng.random_range(1..300),
    };
    let b: u8 = rng.random();
    (0..len).map(|i| b.wrapping_add(i as u8)).collect()
}

fn assert_checked(w: &BatchWriter) -> CheckReport {
    let r = w.check();
    assert!(r.is_ok(), "checker: {:?}", r.problems);
    r
}

/// Random puts, deletes, scans, commits and reopen-without-commit (the rollback: writes after
/// the last commit are gone) against a `BTreeMap` model, with reader threads holding old
/// snapshots and re-checking them while the writer moves on. The checker runs after every commit.
fn model_test(seed: u64, mmap: bool, steps: usize) {
    model_test_with(seed, mmap, false, steps)
}

fn model_test_with(seed: u64, mmap: bool, delta: bool, steps: usize) {
    let opts = |mmap| opts_with(mmap, delta);
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(&dir);
    let mut rng = StdRng::seed_from_u64(seed);
    let mut backend = Backend::open(std_vfs(), &path, opts(mmap)).unwrap();
    let mut w = backend.batch().unwrap();
    let mut model = Model::new();
    let mut committed = Model::new();
    let mut most_delta_runs = 0;
    let stop = Arc::new(AtomicBool::new(false));
    // Snapshots handed to readers carry the backend instance's generation; before a reopen the
    // writer bumps it and waits until readers dropped every older snapshot (one process must not
    // keep snapshots of a closed instance while another instance writes the file).
    let generation = Arc::new(AtomicUsize::new(0));
    let outstanding = Arc::new(AtomicUsize::new(0));
    let (tx, rx) = crossbeam_channel::bounded::<(usize, Snapshot, Model)>(4);
    let readers: Vec<_> = (0..2)
        .map(|i| {
            let rx = rx.clone();
            let stop = stop.clone();
            let generation = generation.clone();
            let outstanding = outstanding.clone();
            std::thread::spawn(move || {
                let mut rng = StdRng::seed_from_u64(seed ^ (i + 100));
                let mut held: Vec<(usize, Snapshot, Model)> = Vec::new();
                let mut checks = 0;
                loop {
                    match rx.recv_timeout(Duration::from_millis(1)) {
                        Ok(s) => held.push(s),
                        Err(crossbeam_channel::RecvTimeoutError::Disconnected)
                            if held.is_empty() =>
                        {
                            break;
                        }
                        Err(_) => {}
                    }
                    let now = generation.load(Ordering::SeqCst);
                    let before = held.len();
                    held.retain(|(g, _, _)| *g == now);
                    outstanding.fetch_sub(before - held.len(), Ordering::SeqCst);
                    if let Some(idx) = (!held.is_empty()).then(|| rng.random_range(0..held.len())) {
                        let (_, snap, m) = &held[idx];
                        verify(snap, m, &mut rng);
                        checks += 1;
                        if held.len() > 3 || stop.load(Ordering::Relaxed) || rng.random_bool(0.2) {
                            held.swap_remove(idx);
                            outstanding.fetch_sub(1, Ordering::SeqCst);
                        }
                    }
                }
                checks
            })
        })
        .collect();
    for step in 0..steps {
        match rng.random_range(0..100) {
            0..55 => {
                let b = BUCKETS[rng.random_range(0..BUCKETS.len())];
                let k = key(rng.random_range(0..400));
                let v = value(&mut rng);
                w.put(b, &k, &v).unwrap();
                model.insert((b, k), v);
            }
            55..80 => {
                let b = BUCKETS[rng.random_range(0..BUCKETS.len())];
                let k = key(rng.random_range(0..400));
                w.delete(b, &k).unwrap();
                model.remove(&(b, k));
            }
            80..86 => verify(&backend.snapshot(), &model, &mut rng),
            86..88 => {
                // Delete a whole range, so leaves and branches empty out and merge.
                let b = BUCKETS[rng.random_range(0..BUCKETS.len())];
                let lo = key(rng.random_range(0..400));
                let doomed: Vec<_> = model
                    .range((b, lo.clone())..)
                    .take(60)
                    .filter(|((bb, _), _)| *bb == b)
                    .map(|((_, k), _)| k.clone())
                    .collect();
                for k in doomed {
                    w.delete(b, &k).unwrap();
                    model.remove(&(b, k));
                }
            }
            88..96 => {
                w.commit().unwrap();
                committed = model.clone();
                let r = assert_checked(&w);
                most_delta_runs = most_delta_runs.max(r.delta_runs);
            }
            96..98 => {
                outstanding.fetch_add(1, Ordering::SeqCst);
                if tx
                    .try_send((
                        generation.load(Ordering::SeqCst),
                        backend.snapshot(),
                        model.clone(),
                    ))
                    .is_err()
                {
                    outstanding.fetch_sub(1, Ordering::SeqCst);
                }
            }
            _ => {
                // Rollback: reopen without committing; the uncommitted writes are gone.
                generation.fetch_add(1, Ordering::SeqCst);
                while outstanding.load(Ordering::SeqCst) != 0 {
                    if readers.iter().any(|r| r.is_finished()) {
                        // A reader died (a failed check): surface its panic instead of waiting.
                        for r in readers {
                            r.join().unwrap();
                        }
                        unreachable!("a reader thread ended early without panicking");
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
                drop(w);
                drop(backend);
                backend = Backend::open(std_vfs(), &path, opts(mmap)).unwrap();
                w = backend.batch().unwrap();
                model = committed.clone();
                assert_checked(&w);
                verify(&backend.snapshot(), &model, &mut rng);
            }
        }
        if step % 500 == 0 {
            verify(&w, &model, &mut rng);
        }
    }
    w.commit().unwrap();
    assert_checked(&w);
    stop.store(true, Ordering::Relaxed);
    drop(tx);
    let checks: usize = readers.into_iter().map(|r| r.join().unwrap()).sum();
    assert!(checks > 0, "reader threads checked no snapshot");
    drop(w);
    drop(backend);
    let backend = Backend::open(std_vfs(), &path, opts(mmap)).unwrap();
    assert_eq!(dump(&backend.snapshot()), model);
    assert!(backend.check().is_ok());
    if delta {
        // The log was used and stayed within its bound of runs.
        assert!(
            (1..=5).contains(&most_delta_runs),
            "most delta runs {most_delta_runs}"
        );
    } else {
        assert_eq!(most_delta_runs, 0);
    }
}

#[test]
fn model_randomized_mmap() {
    for seed in 0..3 {
        model_test(seed, true, 3000);
    }
}

#[test]
fn model_randomized_read_at() {
    model_test(7, false, 2500);
}

/// The model test with the delta log on at small bounds: most commits write a delta run and
/// fold, reopens rebuild the log from its chain, and the checker walks it after every commit.
#[test]
fn model_randomized_delta_log() {
    for seed in 0..2 {
        model_test_with(seed + 40, seed == 0, true, 3000);
    }
}

#[test]
fn batch_commits_every_n_ops_and_persists() {
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(&dir);
    let backend = Backend::open(
        std_vfs(),
        &path,
        BackendOptions {
            batch_ops: 100,
            batch_interval: Duration::from_secs(3600),
            ..BackendOptions::default()
        },
    )
    .unwrap();
    let mut w = backend.batch().unwrap();
    assert!(matches!(backend.batch(), Err(BackendError::Invalid(_))));
    let t0 = backend.stats().txid;
    for i in 0..250u32 {
        w.put(Bucket::Key, &i.to_be_bytes(), b"v").unwrap();
        // Guarantee 1: visible to a new snapshot at once, committed or not.
        assert_eq!(
            backend
                .snapshot()
                .get(Bucket::Key, &i.to_be_bytes())
                .unwrap()
                .unwrap(),
            b"v"
        );
    }
    assert_eq!(
        backend.stats().txid,
        t0 + 2,
        "two automatic commits after 100 and 200 ops"
    );
    drop(w);
    drop(backend);
    let backend = Backend::open(std_vfs(), &path, BackendOptions::default()).unwrap();
    let mut n = 0;
    backend
        .snapshot()
        .scan(Bucket::Key, b"", b"", &mut |_, _| {
            n += 1;
            true
        })
        .unwrap();
    assert_eq!(
        n, 200,
        "the 50 writes after the last automatic commit were not committed"
    );
}

#[test]
fn batch_interval_commits_on_write_and_when_due() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::open(
        std_vfs(),
        &db_path(&dir),
        BackendOptions {
            batch_ops: 1_000_000,
            batch_interval: Duration::from_millis(500),
            ..BackendOptions::default()
        },
    )
    .unwrap();
    let mut w = backend.batch().unwrap();
    let t0 = backend.stats().txid;
    assert!(
        !w.commit_if_due().unwrap(),
        "nothing buffered, nothing to commit"
    );
    w.put(Bucket::Key, b"a", b"1").unwrap();
    std::thread::sleep(Duration::from_millis(600));
    assert!(w.commit_if_due().unwrap());
    assert_eq!(backend.stats().txid, t0 + 1);
    assert!(!w.commit_if_due().unwrap(), "just committed");
    std::thread::sleep(Duration::from_millis(600));
    // A write arriving after the interval commits everything buffered, itself included.
    w.put(Bucket::Key, b"b", b"2").unwrap();
    assert_eq!(backend.stats().txid, t0 + 2);
    assert_checked(&w);
}

#[test]
fn invalid_keys_and_options_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let bad = BackendOptions {
        page_size: 5000,
        ..BackendOptions::default()
    };
    assert!(matches!(
        Backend::open(std_vfs(), &db_path(&dir), bad),
        Err(BackendError::Invalid(_))
    ));
    let backend = Backend::open(std_vfs(), &db_path(&dir), BackendOptions::default()).unwrap();
    let again = Backend::open(
        std_vfs(),
        &dir.path().join("member/snap/../snap/db"),
        BackendOptions::default(),
    );
    assert!(matches!(again, Err(BackendError::Invalid(m)) if m.contains("already open")));
    let mut w = backend.batch().unwrap();
    assert!(w.put(Bucket::Key, b"", b"v").is_err());
    assert!(
        w.put(Bucket::Key, &vec![b'k'; max_key_len(4096) + 1], b"v")
            .is_err()
    );
    w.put(Bucket::Key, &vec![b'k'; max_key_len(4096)], b"v")
        .unwrap();
    w.commit().unwrap();
    assert_checked(&w);
}

#[test]
fn two_mib_values_round_trip_through_overflow_runs() {
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(&dir);
    let backend = Backend::open(std_vfs(), &path, opts(true)).unwrap();
    let mut w = backend.batch().unwrap();
    let big: Vec<u8> = (0..2 << 20).map(|i: u32| (i % 251) as u8).collect();
    w.put(Bucket::Key, b"big", &big).unwrap();
    w.put(Bucket::Key, b"small", b"s").unwrap();
    w.commit().unwrap();
    assert_checked(&w);
    let snap = backend.snapshot();
    assert_eq!(
        snap.get_ref(Bucket::Key, b"big").unwrap().unwrap().as_ref(),
        &big[..]
    );
    let before = backend.stats();
    assert!(before.live_bytes >= 2 << 20);
    w.delete(Bucket::Key, b"big").unwrap();
    w.commit().unwrap();
    // The old snapshot still reads the value: its pages are pending, not reused.
    assert_eq!(snap.get(Bucket::Key, b"big").unwrap().unwrap(), big);
    drop(snap);
    // Online compaction moves the pages above the freed run down; a later commit trims the tail.
    for i in 0..6u8 {
        w.put(Bucket::Key, b"x", &[i]).unwrap();
        w.commit().unwrap();
        assert_checked(&w);
    }
    let after = backend.stats();
    assert!(after.live_bytes < 64 << 10, "{after:?}");
    assert!(
        after.file_bytes < before.file_bytes,
        "freed tail was given back: {before:?} -> {after:?}"
    );
    drop(w);
    drop(backend);
    let backend = Backend::open(std_vfs(), &path, opts(false)).unwrap();
    assert_eq!(
        backend.snapshot().get(Bucket::Key, b"x").unwrap().unwrap(),
        [5]
    );
    assert!(backend.check().is_ok());
}

/// Writes 3 commits of data and returns the path; commit 3 changes `k0050`.
fn three_commits(dir: &tempfile::TempDir) -> PathBuf {
    let path = db_path(dir);
    let backend = Backend::open(std_vfs(), &path, opts(true)).unwrap();
    let mut w = backend.batch().unwrap();
    for round in 0..3u8 {
        for i in 0..(if round == 2 { 1 } else { 300 }) {
            let k = format!("k{:04}", i + if round == 2 { 50 } else { 0 });
            w.put(Bucket::Key, k.as_bytes(), &[round; 100]).unwrap();
        }
        w.commit().unwrap();
        assert_checked(&w);
    }
    path
}

fn flip(path: &Path, offset: u64) {
    let f = StdVfs::new().open(path, OpenOptions::read_write()).unwrap();
    let mut b = [0u8];
    f.read_exact_at(&mut b, offset).unwrap();
    b[0] ^= 0x10;
    f.write_at(&b, offset).unwrap();
    f.sync_data().unwrap();
}

#[test]
fn flipped_bit_in_a_page_is_detected_with_page_and_reason() {
    let dir = tempfile::tempdir().unwrap();
    let path = three_commits(&dir);
    let backend = Backend::open(std_vfs(), &path, opts(true)).unwrap();
    // Find the leaf that holds k0100 (the last key in the first commit's data is far from k0050).
    let snap = backend.snapshot();
    let root = snap.version.root(b"key");
    let mut id = root;
    loop {
        let page = snap.version.map.page(id, None).unwrap();
        let v = page::NodeView::new(&page);
        if v.is_leaf() {
            break;
        }
        id = v.child(v.child_index(b"k0100"));
    }
    drop(snap);
    drop(backend);
    flip(&path, id * 4096 + 2000);
    for mmap in [true, false] {
        let backend = Backend::open(std_vfs(), &path, opts(mmap)).unwrap();
        let err = backend
            .snapshot()
            .get_ref(Bucket::Key, b"k0100")
            .unwrap_err();
        assert_checksum_failure(&err, id);
        let se: StorageError = err.into();
        assert!(se.to_string().contains(&format!("page {id}")), "{se}");
        let report = backend.check();
        assert!(
            report
                .problems
                .iter()
                .any(|p| p.page == id && p.reason.contains("checksum")),
            "{:?}",
            report.problems
        );
    }
}

#[test]
fn damaged_newest_meta_falls_back_to_the_older_one() {
    let dir = tempfile::tempdir().unwrap();
    let path = three_commits(&dir);
    let backend = Backend::open(std_vfs(), &path, opts(true)).unwrap();
    let newest = backend.stats().txid;
    assert_eq!(
        backend
            .snapshot()
            .get(Bucket::Key, b"k0050")
            .unwrap()
            .unwrap(),
        vec![2; 100]
    );
    drop(backend);
    flip(&path, (newest % 2) * 4096 + 20);
    let backend = Backend::open(std_vfs(), &path, opts(true)).unwrap();
    assert_eq!(backend.stats().txid, newest - 1);
    // The previous commit's state, intact (its pages were not reused by the newest commit).
    assert_eq!(
        backend
            .snapshot()
            .get(Bucket::Key, b"k0050")
            .unwrap()
            .unwrap(),
        vec![1; 100]
    );
    let report = backend.check();
    assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
    assert_eq!(report.problems[0].page, newest % 2);
    assert!(
        report.problems[0].reason.contains("meta checksum"),
        "{:?}",
        report.problems
    );
    // Writing on from the fallback works and overwrites the damaged slot.
    let mut w = backend.batch().unwrap();
    w.put(Bucket::Key, b"k0050", &[9; 100]).unwrap();
    w.commit().unwrap();
    w.put(Bucket::Key, b"k0051", &[9; 100]).unwrap();
    w.commit().unwrap();
    assert_checked(&w);
    // Both metas damaged: a clear error naming the problem.
    drop(w);
    drop(backend);
    flip(&path, 20);
    flip(&path, 4096 + 20);
    let err = Backend::open(std_vfs(), &path, opts(true))
        .err()
        .expect("must fail");
    assert!(
        err.to_string().contains("both meta pages are invalid"),
        "{err}"
    );
}

#[test]
fn remap_under_concurrent_readers() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::open(std_vfs(), &db_path(&dir), opts(true)).unwrap();
    let mut w = backend.batch().unwrap();
    for i in 0..200u32 {
        w.put(Bucket::Key, &i.to_be_bytes(), &[7; 200]).unwrap();
    }
    w.commit().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let backend = backend.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut reads = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let snap = backend.snapshot();
                    assert!(snap.version.map.is_mmap());
                    // Hold a borrowed slice across the writer's growth and remaps.
                    let v = snap
                        .get_ref(Bucket::Key, &5u32.to_be_bytes())
                        .unwrap()
                        .unwrap();
                    let mut n = 0u32;
                    snap.scan_with(Bucket::Key, b"", b"", &mut |k, val| {
                        assert_eq!(val.len(), 200);
                        assert!(
                            val.iter().all(|&b| b == val[0]),
                            "torn value under key {k:?}"
                        );
                        n += 1;
                        true
                    })
                    .unwrap();
                    assert!(n >= 200);
                    assert_eq!(v.len(), 200);
                    reads += 1;
                }
                reads
            })
        })
        .collect();
    let mut maps = std::collections::HashSet::new();
    for round in 0..40u32 {
        for i in 0..150u32 {
            w.put(
                Bucket::Key,
                &(1000 + round * 150 + i).to_be_bytes(),
                &[round as u8; 200],
            )
            .unwrap();
            w.put(Bucket::Key, &(i % 200).to_be_bytes(), &[round as u8; 200])
                .unwrap();
        }
        w.commit().unwrap();
        maps.insert(Arc::as_ptr(&backend.snapshot().version.map) as usize);
    }
    stop.store(true, Ordering::Relaxed);
    let reads: u64 = readers.into_iter().map(|r| r.join().unwrap()).sum();
    assert!(reads > 0);
    assert!(
        maps.len() > 3,
        "the file grew and was remapped several times ({} maps)",
        maps.len()
    );
    assert_checked(&w);
}

#[test]
fn online_compaction_shrinks_the_file_while_readers_run() {
    let dir = tempfile::tempdir().unwrap();
    // A small walk budget: compaction takes many commits and resumes from its cursor.
    let backend = Backend::open(
        std_vfs(),
        &db_path(&dir),
        BackendOptions {
            compact_visits: 10,
            ..opts(true)
        },
    )
    .unwrap();
    let mut w = backend.batch().unwrap();
    let val = |i: u32| vec![(i % 251) as u8; 300];
    for i in 0..4000u32 {
        w.put(Bucket::Key, &i.to_be_bytes(), &val(i)).unwrap();
    }
    w.commit().unwrap();
    let full = backend.stats();
    // Keep every 10th key, spread over the whole file.
    for i in (0..4000u32).filter(|i| i % 10 != 0) {
        w.delete(Bucket::Key, &i.to_be_bytes()).unwrap();
    }
    w.commit().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let backend = backend.clone();
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut rounds = 0;
            while !stop.load(Ordering::Relaxed) {
                let snap = backend.snapshot();
                let mut n = 0;
                snap.scan_with(Bucket::Key, b"", b"", &mut |k, v| {
                    let i = u32::from_be_bytes(k.try_into().unwrap());
                    assert_eq!(i % 10, 0);
                    assert_eq!(v, &val(i)[..]);
                    n += 1;
                    true
                })
                .unwrap();
                assert_eq!(n, 400);
                rounds += 1;
            }
            rounds
        })
    };
    let mut sizes = Vec::new();
    for round in 0..60u32 {
        // Small commits, as a running cluster makes; each moves pages down and trims the tail.
        w.put(Bucket::Meta, b"round", &round.to_le_bytes()).unwrap();
        w.commit().unwrap();
        assert_checked(&w);
        sizes.push(backend.stats().file_bytes);
    }
    stop.store(true, Ordering::Relaxed);
    assert!(reader.join().unwrap() > 0);
    let end = backend.stats();
    // The file shrinks below half while the reader runs. It may grow back by a quarter later:
    // the reader's snapshots keep freed pages pending, so a commit can need pages past the
    // trimmed end (growth and shrink thresholds keep that from oscillating).
    // (The peak is the file after the delete commit, which could not reuse the pages the
    // deletes freed; the allocator leaves holes under 16 pages unfilled until half the file is
    // free, so the end state keeps some slack.)
    let smallest = *sizes.iter().min().unwrap();
    let peak = *sizes.iter().max().unwrap();
    assert!(
        smallest * 2 < peak && end.file_bytes * 4 < full.file_bytes * 3,
        "file did not shrink enough: {full:?} -> {end:?} (sizes {sizes:?})"
    );
    assert!(end.live_bytes * 2 > end.file_bytes / 2, "{end:?}");
}

mod crash_tests {
    //! Crash at every mutating I/O operation in turn (power cut, torn last write, random subset
    //! of unsynced sectors) and after single failed operations: reopening must yield exactly the
    //! last commit that returned success, or the one in flight if its meta became durable.

    use super::*;
    use crate::io::{CrashMode, Fault, FaultVfs};

    /// One commit's writes: `(bucket, key, Some(value) | None = delete)`.
    pub(super) type Batch = Vec<(Bucket, Vec<u8>, Option<Vec<u8>>)>;

    /// A deterministic workload of `commits` batches; returns the model after each commit.
    pub(super) fn batches(seed: u64, commits: usize) -> Vec<Batch> {
        let mut rng = StdRng::seed_from_u64(seed);
        (0..commits)
            .map(|c| {
                let n = if c % 5 == 4 {
                    300
                } else {
                    rng.random_range(1..60)
                };
                (0..n)
                    .map(|_| {
                        let b = BUCKETS[rng.random_range(0..2)];
                        let k = key(rng.random_range(0..300));
                        let v = (!rng.random_bool(0.25)).then(|| value(&mut rng));
                        (b, k, v)
                    })
                    .collect()
            })
            .collect()
    }

    pub(super) struct Outcome {
        /// Model after the last commit that returned Ok.
        pub committed: Model,
        /// Model of the commit that failed, if one did.
        pub in_flight: Option<Model>,
    }

    pub(super) fn run(vfs: &Arc<dyn Vfs>, path: &Path, work: &[Batch]) -> Outcome {
        run_with(vfs, path, work, opts(true))
    }

    fn run_with(vfs: &Arc<dyn Vfs>, path: &Path, work: &[Batch], o: BackendOptions) -> Outcome {
        let mut committed = Model::new();
        let backend = match Backend::open(vfs.clone(), path, o) {
            Ok(b) => b,
            Err(_) => {
                return Outcome {
                    committed,
                    in_flight: None,
                };
            }
        };
        let mut w = backend.batch().unwrap();
        for batch in work {
            let mut next = committed.clone();
            for (b, k, v) in batch {
                match v {
                    Some(v) => {
                        w.put(*b, k, v).unwrap();
                        next.insert((*b, k.clone()), v.clone());
                    }
                    None => {
                        w.delete(*b, k).unwrap();
                        next.remove(&(*b, k.clone()));
                    }
                }
            }
            if w.commit().is_err() {
                // The writer is poisoned: later writes are refused.
                assert!(w.put(Bucket::Key, b"after", b"failure").is_err());
                return Outcome {
                    committed,
                    in_flight: Some(next),
                };
            }
            committed = next;
        }
        Outcome {
            committed,
            in_flight: None,
        }
    }

    fn reopen_and_judge(image: FaultVfs, path: &Path, out: &Outcome, what: &str) {
        reopen_and_judge_with(image, path, out, what, opts(true))
    }

    fn reopen_and_judge_with(
        image: FaultVfs,
        path: &Path,
        out: &Outcome,
        what: &str,
        o: BackendOptions,
    ) {
        let vfs: Arc<dyn Vfs> = Arc::new(image);
        let backend =
            Backend::open(vfs, path, o).unwrap_or_else(|e| panic!("{what}: reopen failed: {e}"));
        let got = dump(&backend.snapshot());
        let ok = got == out.committed || out.in_flight.as_ref() == Some(&got);
        assert!(
            ok,
            "{what}: reopened state is neither the last commit nor the one in flight"
        );
        let report = backend.check();
        assert!(report.is_ok(), "{what}: checker: {:?}", report.problems);
        // The reopened store takes writes again.
        let mut w = backend.batch().unwrap();
        w.put(Bucket::Key, b"again", b"1").unwrap();
        w.commit().unwrap();
        assert!(w.check().is_ok(), "{what}: checker after a new commit");
    }

    #[test]
    fn crash_at_every_operation() {
        let path = PathBuf::from("/data/member/snap/db");
        let work = batches(11, 14);
        let clean = FaultVfs::new();
        let clean_dyn: Arc<dyn Vfs> = Arc::new(clean.clone());
        let out = run(&clean_dyn, &path, &work);
        assert!(out.in_flight.is_none());
        let total = clean.ops();
        assert!(
            total > 40,
            "workload too small to be interesting ({total} ops)"
        );
        power_cut_at_every_op(&path, &work, total, opts(true));
    }

    /// Runs `work` once per I/O operation `n < total` with a power cut at `n`, and judges the
    /// reopened image of each crash mode (lost unsynced writes, a torn last write, random sectors).
    fn power_cut_at_every_op(path: &Path, work: &[Batch], total: u64, o: BackendOptions) {
        for n in 0..total {
            let vfs = FaultVfs::new();
            vfs.fail_at(n, Fault::PowerCut);
            let dynv: Arc<dyn Vfs> = Arc::new(vfs.clone());
            let out = run_with(&dynv, path, work, o.clone());
            for (i, mode) in [
                CrashMode::LoseUnsynced,
                CrashMode::TornLastWrite {
                    keep: 512 * (n as usize % 9),
                },
                CrashMode::RandomSectors { seed: n },
            ]
            .into_iter()
            .enumerate()
            {
                reopen_and_judge_with(
                    vfs.crash_image(mode),
                    path,
                    &out,
                    &format!("power cut at op {n}, mode {i} {mode:?}"),
                    o.clone(),
                );
            }
        }
    }

    /// The crash test's workload with the delta log on (small bounds: commits of 2+ random keys
    /// write delta runs, most commits fold and free runs): every acknowledged commit is present
    /// after a crash at any operation, never a mix, with the log rebuilt from its chain.
    #[test]
    fn crash_at_every_operation_with_the_delta_log() {
        let path = PathBuf::from("/data/member/snap/db");
        let work = batches(12, 14);
        let clean = FaultVfs::new();
        let clean_dyn: Arc<dyn Vfs> = Arc::new(clean.clone());
        let o = opts_with(true, true);
        let out = run_with(&clean_dyn, &path, &work, o.clone());
        assert!(out.in_flight.is_none());
        let backend = Backend::open(clean_dyn, &path, o.clone()).unwrap();
        let report = backend.check();
        assert!(report.is_ok() && report.delta_runs > 0, "{report:?}");
        drop(backend);
        let total = clean.ops();
        power_cut_at_every_op(&path, &work, total, o);
    }

    /// A workload whose last commit appends 4,000 sorted keys into pages freed inside the file,
    /// so that the tree writer writes groups of leaves before step 2 (tree.rs `EARLY_RUN`).
    fn early_write_batches() -> Vec<Batch> {
        let rev = |i: u32| format!("r{i:08}").into_bytes();
        let puts = |r: std::ops::Range<u32>| -> Batch {
            r.map(|i| (Bucket::Key, rev(i), Some(vec![(i % 251) as u8; 150])))
                .collect()
        };
        vec![
            puts(0..4000),
            (0..4000).map(|i| (Bucket::Key, rev(i), None)).collect(),
            puts(9000..9001),
            puts(9001..9002),
            puts(5000..9000),
        ]
    }

    /// Runs `work` on a fresh fault VFS with early writes on or off; returns the I/O count.
    fn ops_with_early_writes(work: &[Batch], early: bool) -> u64 {
        let vfs = FaultVfs::new();
        let path = PathBuf::from("/data/member/snap/db");
        let opts = BackendOptions {
            early_writes: early,
            ..opts(true)
        };
        let backend = Backend::open(Arc::new(vfs.clone()), &path, opts).unwrap();
        let mut w = backend.batch().unwrap();
        for batch in work {
            for (b, k, v) in batch {
                match v {
                    Some(v) => w.put(*b, k, v).unwrap(),
                    None => w.delete(*b, k).unwrap(),
                }
            }
            w.commit().unwrap();
        }
        assert_checked(&w);
        vfs.ops()
    }

    /// Early writes happen (more write operations than without), and a crash at any operation
    /// of a workload with them (among them the early writes) reopens to the last commit or the
    /// one in flight.
    #[test]
    fn crash_at_every_operation_with_early_writes() {
        let path = PathBuf::from("/data/member/snap/db");
        let work = early_write_batches();
        let (with, without) = (
            ops_with_early_writes(&work, true),
            ops_with_early_writes(&work, false),
        );
        assert!(
            with > without,
            "no early writes: {with} operations with, {without} without"
        );
        let early = || BackendOptions {
            early_writes: true,
            ..opts(true)
        };
        let clean = FaultVfs::new();
        let out = run_with(
            &(Arc::new(clean.clone()) as Arc<dyn Vfs>),
            &path,
            &work,
            early(),
        );
        assert!(out.in_flight.is_none());
        let total = clean.ops();
        assert_eq!(total, with, "the same operations as the counted run");
        power_cut_at_every_op(&path, &work, total, early());
    }

    /// Crashes while online compaction moves pages down and the file shrinks.
    #[test]
    fn crash_during_compaction_and_shrink() {
        let path = PathBuf::from("/data/member/snap/db");
        let mut work: Vec<Batch> = vec![
            (0..600u32)
                .map(|i| (Bucket::Key, key(i), Some(vec![(i % 200) as u8; 200])))
                .collect(),
            (0..600u32)
                .filter(|i| i % 16 != 0)
                .map(|i| (Bucket::Key, key(i), None))
                .collect(),
        ];
        for round in 0..12u8 {
            work.push(vec![(
                Bucket::Meta,
                b"round".to_vec(),
                Some(vec![round; 8]),
            )]);
        }
        let clean = FaultVfs::new();
        let clean_dyn: Arc<dyn Vfs> = Arc::new(clean.clone());
        let out = run(&clean_dyn, &path, &work);
        assert!(out.in_flight.is_none());
        // The values alone took 120,000 bytes; a shrunk file keeps an eighth of slack.
        let peak = 600 * 200 * 9 / 8;
        let end = clean.written_contents(&path).unwrap().len();
        assert!(
            end < peak,
            "the workload must shrink the file (end {end} bytes)"
        );
        for n in 0..clean.ops() {
            let vfs = FaultVfs::new();
            vfs.fail_at(n, Fault::PowerCut);
            let out = run(&(Arc::new(vfs.clone()) as Arc<dyn Vfs>), &path, &work);
            for mode in [
                CrashMode::LoseUnsynced,
                CrashMode::RandomSectors { seed: n },
            ] {
                reopen_and_judge(
                    vfs.crash_image(mode),
                    &path,
                    &out,
                    &format!("power cut at op {n}, {mode:?}"),
                );
            }
        }
    }

    #[test]
    fn failed_operation_poisons_the_writer_and_loses_nothing_committed() {
        let path = PathBuf::from("/data/member/snap/db");
        let work = batches(12, 10);
        let clean = FaultVfs::new();
        let _ = run(&(Arc::new(clean.clone()) as Arc<dyn Vfs>), &path, &work);
        for n in 0..clean.ops() {
            for fault in [Fault::Eio, Fault::ShortWrite, Fault::Enospc] {
                let vfs = FaultVfs::new();
                vfs.fail_at(n, fault);
                let out = run(&(Arc::new(vfs.clone()) as Arc<dyn Vfs>), &path, &work);
                let what = format!("{fault:?} at op {n}");
                reopen_and_judge(vfs.crash_image(CrashMode::LoseUnsynced), &path, &out, &what);
                reopen_and_judge(
                    vfs.crash_image(CrashMode::RandomSectors { seed: n }),
                    &path,
                    &out,
                    &what,
                );
            }
        }
    }

    /// Commit T+1 fails after its pages are durable (the meta write fails), and meta T is then
    /// found damaged: open falls back to meta T-1, whose pages T+1 must not have reused.
    #[test]
    fn interrupted_commit_then_damaged_meta_falls_back_to_intact_older_commit() {
        let path = PathBuf::from("/data/member/snap/db");
        let work = batches(13, 8);
        let clean = FaultVfs::new();
        let _ = run(&(Arc::new(clean.clone()) as Arc<dyn Vfs>), &path, &work);
        // The last commit's operations end with: write meta, fdatasync.
        let meta_write = clean.ops() - 2;
        let vfs = FaultVfs::new();
        vfs.fail_at(meta_write, Fault::Eio);
        let out = run(&(Arc::new(vfs.clone()) as Arc<dyn Vfs>), &path, &work);
        assert!(out.in_flight.is_some(), "the last commit must have failed");
        let image = vfs.crash_image(CrashMode::LoseUnsynced);
        let newest = {
            let b = Backend::open(Arc::new(image.clone()), &path, opts(true)).unwrap();
            assert_eq!(dump(&b.snapshot()), out.committed);
            b.stats().txid
        };
        assert!(image.corrupt(&path, (newest % 2) * 4096 + 20, &[0xff]));
        let backend = Backend::open(Arc::new(image), &path, opts(true)).unwrap();
        assert_eq!(backend.stats().txid, newest - 1);
        let mut before = Model::new();
        for batch in &work[..work.len() - 2] {
            for (b, k, v) in batch {
                match v {
                    Some(v) => before.insert((*b, k.clone()), v.clone()),
                    None => before.remove(&(*b, k.clone())),
                };
            }
        }
        assert_eq!(dump(&backend.snapshot()), before);
        let report = backend.check();
        assert_eq!(
            report.problems.len(),
            1,
            "only the damaged meta: {:?}",
            report.problems
        );
    }
}

/// The one-fsync commit (format v2): the meta and the pages of commit T are written before one
/// fdatasync, so a power cut may leave any subset of them durable. These tests build exactly
/// those images — the in-flight meta fully durable with a chosen subset of the commit's sectors —
/// which random crash images almost never produce (a meta page is 8 sectors).
mod one_fsync_tests {
    use super::crash_tests::{Batch, Outcome, batches, run};
    use super::*;
    use crate::io::{CrashMode, Fault, FaultVfs};
    use rand::seq::SliceRandom;

    const PS: usize = 4096;

    /// Runs `work` with a power cut at the very last operation (the commit's fdatasync) and
    /// returns the file system, the outcome, and the durable and written images of the file.
    fn cut_at_last_sync(path: &Path, work: &[Batch]) -> (FaultVfs, Outcome, Vec<u8>, Vec<u8>) {
        let clean = FaultVfs::new();
        let _ = run(&(Arc::new(clean.clone()) as Arc<dyn Vfs>), path, work);
        let vfs = FaultVfs::new();
        vfs.fail_at(clean.ops() - 1, Fault::PowerCut);
        let out = run(&(Arc::new(vfs.clone()) as Arc<dyn Vfs>), path, work);
        assert!(out.in_flight.is_some(), "the last commit must be in flight");
        let durable = vfs.durable_contents(path).unwrap();
        let written = vfs.written_contents(path).unwrap();
        (vfs, out, durable, written)
    }

    /// Sectors (512 B) where the written image differs from the durable one, outside the metas.
    fn changed_sectors(durable: &[u8], written: &[u8]) -> Vec<usize> {
        (2 * PS / 512..written.len().div_ceil(512))
            .filter(|&s| {
                let r = s * 512..((s + 1) * 512).min(written.len());
                durable.get(r.clone()) != Some(&written[r])
            })
            .collect()
    }

    /// Opens `image` and returns (txid, contents), checking the file afterwards.
    fn open_image(image: FaultVfs, path: &Path, what: &str) -> (u64, Model) {
        let b = Backend::open(Arc::new(image), path, opts(true))
            .unwrap_or_else(|e| panic!("{what}: reopen failed: {e}"));
        let report = b.check();
        assert!(report.is_ok(), "{what}: checker: {:?}", report.problems);
        (b.stats().txid, dump(&b.snapshot()))
    }

    /// The in-flight meta is durable but none, or all but one, of its pages: open falls back
    /// to the last successful commit, replaces the incomplete meta, and a second open agrees.
    /// With every page durable, the in-flight commit is complete and is opened.
    #[test]
    fn durable_meta_without_all_its_pages_falls_back_to_the_last_commit() {
        let path = PathBuf::from("/data/member/snap/db");
        let work = batches(21, 10);
        let (vfs, out, durable, written) = cut_at_last_sync(&path, &work);
        let in_flight = out.in_flight.clone().unwrap();
        let (last_txid, _) = open_image(vfs.crash_image(CrashMode::LoseUnsynced), &path, "base");
        let slot = ((last_txid + 1) % 2) as usize * PS;
        let meta = &written[slot..slot + PS];
        assert_ne!(
            meta,
            &durable[slot..slot + PS],
            "the in-flight meta was written"
        );
        let changed = changed_sectors(&durable, &written);
        assert!(changed.len() > 8, "the commit wrote pages ({changed:?})");
        // A page that still holds a valid run from an earlier commit (same id, good checksum):
        // only the written list's checksums tell it apart from the new run.
        let stale = changed
            .iter()
            .map(|s| s * 512 / PS)
            .find(|&p| {
                durable.len() >= (p + 1) * PS
                    && page::validate_run(&durable[p * PS..(p + 1) * PS], p as u64, PS, None)
                        .is_ok()
            })
            .expect("the commit overwrote a page that held a valid run");
        /// Which of the commit's sectors (by sector number) reach the disk.
        type Keep = Box<dyn Fn(usize) -> bool>;
        let cases: [(&str, Keep); 3] = [
            ("meta only", Box::new(|_| false)),
            (
                "meta and all pages but a stale one",
                Box::new(move |s| s * 512 / PS != stale),
            ),
            ("meta and every page", Box::new(|_| true)),
        ];
        for (what, keep) in cases {
            let image = vfs.crash_image(CrashMode::LoseUnsynced);
            if written.len() > durable.len() {
                assert!(image.corrupt(&path, durable.len() as u64, &written[durable.len()..]));
            }
            for &s in &changed {
                let r = s * 512..((s + 1) * 512).min(written.len());
                let bytes = if keep(s) {
                    &written[r.clone()]
                } else {
                    &durable[r.clone()]
                };
                assert!(image.corrupt(&path, r.start as u64, bytes));
            }
            assert!(image.corrupt(&path, slot as u64, meta));
            let all = what == "meta and every page";
            let (txid, got) = open_image(image.clone(), &path, what);
            if all {
                assert_eq!((txid, &got), (last_txid + 1, &in_flight), "{what}");
            } else {
                assert_eq!((txid, &got), (last_txid, &out.committed), "{what}");
                // The incomplete meta was replaced by a copy of the older state.
                let on_disk = image.written_contents(&path).unwrap();
                let m = meta::Meta::decode(&on_disk[slot..slot + PS]).unwrap();
                assert_eq!(m.txid, last_txid - 1, "{what}: replaced meta");
                // Reopening agrees, and writing on works.
                let (again, got2) = open_image(image.clone(), &path, what);
                assert_eq!((again, got2), (last_txid, out.committed.clone()), "{what}");
                let b = Backend::open(Arc::new(image), &path, opts(true)).unwrap();
                let mut w = b.batch().unwrap();
                w.put(Bucket::Key, b"next", b"1").unwrap();
                w.commit().unwrap();
                assert_checked(&w);
            }
        }
    }

    /// Random subsets of the in-flight commit's sectors, with its meta durable: open yields the
    /// in-flight state only when every sector that matters arrived, else the last commit; never
    /// a mix, never an error. Also with the meta's sectors partly durable (a torn meta).
    #[test]
    fn random_subsets_of_a_commit_with_its_meta_durable() {
        let path = PathBuf::from("/data/member/snap/db");
        for seed in 0..6u64 {
            let work = batches(100 + seed, 6);
            let (vfs, out, durable, written) = cut_at_last_sync(&path, &work);
            let in_flight = out.in_flight.clone().unwrap();
            let changed = changed_sectors(&durable, &written);
            let mut rng = StdRng::seed_from_u64(seed);
            let mut saw = [0usize; 2];
            for round in 0..40 {
                let image = vfs.crash_image(CrashMode::LoseUnsynced);
                if written.len() > durable.len() {
                    assert!(image.corrupt(&path, durable.len() as u64, &written[durable.len()..]));
                }
                // Keep each sector with a probability that varies per round, so both "nearly
                // all" and "few" subsets occur.
                let p = (round % 10) as f64 / 9.0;
                let mut sectors = changed.clone();
                sectors.shuffle(&mut rng);
                for &s in &sectors {
                    if !rng.random_bool(p) {
                        let r = s * 512..((s + 1) * 512).min(written.len());
                        assert!(image.corrupt(&path, r.start as u64, &durable[r]));
                    } else {
                        let r = s * 512..((s + 1) * 512).min(written.len());
                        assert!(image.corrupt(&path, r.start as u64, &written[r]));
                    }
                }
                // The meta: whole (most rounds) or torn at a random sector.
                let committed_txid = {
                    let b = Backend::open(
                        Arc::new(vfs.crash_image(CrashMode::LoseUnsynced)),
                        &path,
                        opts(true),
                    )
                    .unwrap();
                    b.stats().txid
                };
                let slot = ((committed_txid + 1) % 2) as usize * PS;
                let meta_sectors = if round % 4 == 3 {
                    rng.random_range(0..8)
                } else {
                    8
                };
                assert!(image.corrupt(
                    &path,
                    slot as u64,
                    &written[slot..slot + meta_sectors * 512]
                ));
                let what = format!("seed {seed} round {round}");
                let (_, got) = open_image(image, &path, &what);
                if got == in_flight {
                    saw[1] += 1;
                } else {
                    assert_eq!(got, out.committed, "{what}: neither commit");
                    saw[0] += 1;
                }
            }
            assert!(
                saw[0] > 0 && saw[1] > 0,
                "seed {seed}: both outcomes occur ({saw:?})"
            );
        }
    }
}

/// The contents of `engine/testdata/backend-v1.db`, a file written by format version 1.
fn fixture_v1(w: &mut BatchWriter) {
    for i in 0..50u32 {
        w.put(
            Bucket::Key,
            format!("fixture-{i:03}").as_bytes(),
            format!("v{i}").repeat(20).as_bytes(),
        )
        .unwrap();
    }
    w.put(Bucket::Key, b"fixture-big", &vec![0x5a; 10_000])
        .unwrap();
    w.commit().unwrap();
    w.put(Bucket::Meta, b"consistent_index", &42u64.to_le_bytes())
        .unwrap();
    w.delete(Bucket::Key, b"fixture-007").unwrap();
    w.commit().unwrap();
}

/// STYLE.md item 4: a file written by format version 1 (`fixture_v1`, committed as
/// `engine/testdata/backend-v1.db`) still opens, checks clean and reads back. When the format
/// changes, keep this file and add one for the new version.
#[test]
fn opens_a_file_written_by_format_v1() {
    opens_fixture(
        include_bytes!("../../testdata/backend-v1.db"),
        meta::FORMAT_V1,
    );
}

/// The same contents written by format version 2 (`engine/testdata/backend-v2.db`).
#[test]
fn opens_a_file_written_by_format_v2() {
    opens_fixture(
        include_bytes!("../../testdata/backend-v2.db"),
        meta::FORMAT_V2,
    );
}

fn opens_fixture(bytes: &[u8], version: u32) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    std::fs::write(&path, bytes).unwrap();
    let (newest, _, _) = db::read_metas(
        &*StdVfs::new()
            .open(&path, OpenOptions::read_write())
            .unwrap(),
        bytes.len() as u64,
    )
    .unwrap();
    assert_eq!(newest.version, version, "fixture's newest meta version");
    let backend = Backend::open(std_vfs(), &path, BackendOptions::default()).unwrap();
    assert!(backend.check().is_ok(), "{:?}", backend.check().problems);
    let expected = {
        let dir2 = tempfile::tempdir().unwrap();
        let b = Backend::open(
            std_vfs(),
            &dir2.path().join("db"),
            BackendOptions::default(),
        )
        .unwrap();
        let mut w = b.batch().unwrap();
        fixture_v1(&mut w);
        drop(w);
        dump(&b.snapshot())
    };
    assert_eq!(expected.len(), 51);
    assert_eq!(dump(&backend.snapshot()), expected);
    let mut w = backend.batch().unwrap();
    w.put(Bucket::Key, b"new", b"write").unwrap();
    w.commit().unwrap();
    assert_checked(&w);
}

/// MVCC (issue 4) on the real backend, differentially against MVCC on the in-memory storage:
/// the same puts, deletes and compaction give the same ranges, and the backend's state survives
/// a reopen (MVCC rebuilds its index from the `key` bucket).
#[test]
fn mvcc_on_the_backend_matches_mvcc_on_memory_storage() {
    use crate::lease::Lessor;
    use crate::mvcc::{MemStorage, MvccStore};
    use crate::pb::etcdserverpb as pb;
    use bytes::Bytes;

    fn apply<B: BatchWrite>(s: &mut MvccStore<B>, rng: &mut StdRng, step: u32) {
        let k = Bytes::from(format!("key/{:03}", rng.random_range(0..120)));
        if rng.random_bool(0.8) {
            let value = Bytes::from(vec![b'v'; rng.random_range(0..3000)]);
            s.put(&pb::PutRequest {
                key: k,
                value,
                ..Default::default()
            })
            .unwrap();
        } else {
            s.delete_range(&pb::DeleteRangeRequest {
                key: k,
                range_end: Bytes::from_static(b"key/05"),
                ..Default::default()
            })
            .unwrap();
        }
        if step % 97 == 96 {
            let rev = s.current_revision() - 20;
            s.compact(rev).unwrap();
            s.finish_compaction().unwrap();
        }
        if step % 50 == 49 {
            s.commit().unwrap();
        }
    }
    fn all<B: BatchWrite>(s: &MvccStore<B>) -> pb::RangeResponse {
        let mut r = s
            .range(&pb::RangeRequest {
                key: Bytes::from_static(b"\0"),
                range_end: Bytes::from_static(b"\0"),
                ..Default::default()
            })
            .unwrap();
        r.header = None;
        r
    }

    let dir = tempfile::tempdir().unwrap();
    let path = db_path(&dir);
    let backend = Backend::open(std_vfs(), &path, opts(true)).unwrap();
    let mut real = MvccStore::open(backend.batch().unwrap(), Lessor::default()).unwrap();
    let mut mem = MvccStore::open(MemStorage::new(), Lessor::default()).unwrap();
    let (mut r1, mut r2) = (StdRng::seed_from_u64(5), StdRng::seed_from_u64(5));
    for step in 0..600 {
        apply(&mut real, &mut r1, step);
        apply(&mut mem, &mut r2, step);
    }
    real.commit().unwrap();
    assert_eq!(all(&real), all(&mem));
    assert_eq!(real.current_revision(), mem.current_revision());
    assert_checked(real.backend());
    let (rev, compacted) = (real.current_revision(), real.compact_revision());
    let before = all(&real);
    drop(real);
    drop(backend);
    let backend = Backend::open(std_vfs(), &path, opts(false)).unwrap();
    let reopened = MvccStore::open(backend.batch().unwrap(), Lessor::default()).unwrap();
    assert_eq!(reopened.current_revision(), rev);
    assert_eq!(reopened.compact_revision(), compacted);
    assert_eq!(all(&reopened), before);
}

mod extent_tests {
    //! The extent allocator: a commit's pages are contiguous and reach the file in few writes;
    //! pages a commit frees are reused only once no snapshot and neither meta can reach them.

    use super::*;
    use crate::io::FaultVfs;

    fn val(i: u32, round: u32) -> Vec<u8> {
        format!("value {i} of round {round} ")
            .repeat(4)
            .into_bytes()
    }

    /// A backend on a fault-injecting VFS (which counts I/O operations).
    fn counted_backend() -> (FaultVfs, PathBuf, Backend) {
        let fault = FaultVfs::new();
        let vfs: Arc<dyn Vfs> = Arc::new(fault.clone());
        let path = PathBuf::from("/data/member/snap/db");
        let backend = Backend::open(vfs, &path, opts(false)).unwrap();
        (fault, path, backend)
    }

    /// Puts key `i` (value of `round`) into the batch and the model.
    fn put_both(w: &mut BatchWriter, model: &mut Model, i: u32, round: u32) {
        w.put(Bucket::Key, &key(i), &val(i, round)).unwrap();
        model.insert((Bucket::Key, key(i)), val(i, round));
    }

    /// Checks the tree, closes it, reopens the file and finds `model` in it.
    fn check_and_reopen(
        w: BatchWriter,
        backend: Backend,
        fault: FaultVfs,
        path: &Path,
        model: &Model,
    ) {
        assert_checked(&w);
        assert_eq!(&dump(&w), model);
        drop(w);
        drop(backend);
        let backend = Backend::open(Arc::new(fault), path, opts(false)).unwrap();
        assert_eq!(&dump(&backend.snapshot()), model);
    }

    #[test]
    fn a_commit_reaches_the_file_in_few_writes() {
        let (fault, path, backend) = counted_backend();
        let mut w = backend.batch().unwrap();
        let mut model = Model::new();
        for i in 0..4000u32 {
            put_both(&mut w, &mut model, i, 0);
        }
        w.commit().unwrap();
        let mut rng = StdRng::seed_from_u64(5);
        for round in 1..=12u32 {
            let before = fault.ops();
            let pages_before = w.stats();
            // 300 scattered keys: ~300 leaves and their branches are rewritten.
            for _ in 0..300 {
                let i = rng.random_range(0..4000u32);
                put_both(&mut w, &mut model, i, round);
            }
            w.commit().unwrap();
            let ops = fault.ops() - before;
            // ~220 pages per commit: writes of a few extents + the meta + the fdatasync, plus an
            // extend and its fdatasync when the file grows (4 to 10 operations measured).
            // Scattered pages would take one write each (over a hundred).
            assert!(
                ops <= 12,
                "round {round}: {ops} I/O operations for one commit ({pages_before:?} -> {:?})",
                w.stats()
            );
            assert_checked(&w);
        }
        check_and_reopen(w, backend, fault, &path, &model);
    }

    /// Single-key commits on a packed tree (every insert splits a leaf, the free set is single
    /// scattered pages): each commit's runs are adjacent pages, so it reaches the file as one
    /// write of its runs, the meta and the fdatasync (plus, now and then, zeros ahead of the
    /// tail and a growth of the file), not one write per page of the root-to-leaf path.
    #[test]
    fn single_key_commits_write_their_pages_as_one_run() {
        let (fault, path, backend) = counted_backend();
        let mut w = backend.batch().unwrap();
        let mut model = Model::new();
        for i in (0..40_000u32).step_by(2) {
            put_both(&mut w, &mut model, i, 0);
        }
        w.commit().unwrap();
        let mut rng = StdRng::seed_from_u64(17);
        let commits = 100u64;
        let mut ops = Vec::new();
        for round in 0..=commits as u32 {
            let before = fault.ops();
            // Odd keys are new: each lands in a full leaf and splits it.
            let i = rng.random_range(0..20_000u32) * 2 + 1;
            put_both(&mut w, &mut model, i, round);
            w.commit().unwrap();
            // The first commit follows the load (a large commit), so it is not sized as small.
            if round > 0 {
                ops.push(fault.ops() - before);
            }
        }
        // Per commit: the runs (root-to-leaf path of 3 levels with the split leaf, catalog leaf,
        // freelist run: 5 to 7 pages), the meta, the fdatasync = 3 operations; one write per
        // page would be 7 to 9. Zeros ahead (one write every ~30 commits) and growth (extend +
        // fdatasync, a few times) add the rest.
        let total: u64 = ops.iter().sum();
        assert!(
            total <= commits * 3 + 30,
            "{total} I/O operations for {commits} single-key commits: {ops:?}"
        );
        assert!(ops.iter().all(|&n| n <= 6), "{ops:?}");
        check_and_reopen(w, backend, fault, &path, &model);
    }

    /// The form of the newest commit's freelist run: (flags byte, bitmap words).
    fn newest_freelist_form(path: &Path) -> (u8, u64) {
        let file = StdVfs::new().open(path, OpenOptions::read_only()).unwrap();
        let len = file.size().unwrap();
        let (meta, _, _) = db::read_metas(&*file, len).unwrap();
        let mut head = vec![0u8; page::BITMAP_OFFSET];
        file.read_exact_at(&mut head, meta.freelist * meta.page_size as u64)
            .unwrap();
        (
            head[page::FLAGS_OFFSET],
            page::get_u64(&head, page::BITMAP_WORDS_OFFSET),
        )
    }

    /// A large, scattered free set (random rewrites free single leaves all over the file) is
    /// persisted as a bitmap, a fraction of the size of the id list, and reopens to the same
    /// state; a file whose free set is small keeps the id list (both forms open).
    #[test]
    fn a_scattered_free_set_is_persisted_as_a_bitmap() {
        let dir = tempfile::tempdir().unwrap();
        let path = db_path(&dir);
        let backend = Backend::open(std_vfs(), &path, opts(true)).unwrap();
        let mut w = backend.batch().unwrap();
        let mut model = Model::new();
        for i in 0..30_000u32 {
            w.put(Bucket::Key, &key(i), &val(i, 0)).unwrap();
            model.insert((Bucket::Key, key(i)), val(i, 0));
        }
        w.commit().unwrap();
        let (flags, _) = newest_freelist_form(&path);
        assert_eq!(
            flags,
            page::FREELIST_FLAG_WRITTEN,
            "a fresh file's free set is a list"
        );
        let mut rng = StdRng::seed_from_u64(11);
        for round in 1..=30u32 {
            for _ in 0..300 {
                let i = rng.random_range(0..30_000u32);
                w.put(Bucket::Key, &key(i), &val(i, round)).unwrap();
                model.insert((Bucket::Key, key(i)), val(i, round));
            }
            w.commit().unwrap();
        }
        assert_checked(&w);
        let stats = w.stats();
        let (flags, words) = newest_freelist_form(&path);
        assert_eq!(
            flags,
            page::FREELIST_FLAG_WRITTEN | page::FREELIST_FLAG_BITMAP,
            "{stats:?}"
        );
        // The bitmap spans at most the file: 8 bytes per 64 pages, against 8 per free page.
        assert!(
            stats.free_pages >= 1000 && words <= stats.page_count.div_ceil(64),
            "{words} bitmap words ({stats:?})"
        );
        drop(w);
        drop(backend);
        let backend = Backend::open(std_vfs(), &path, opts(true)).unwrap();
        assert!(backend.check().is_ok(), "{:?}", backend.check().problems);
        assert_eq!(dump(&backend.snapshot()), model);
        assert_eq!(backend.stats().free_pages, stats.free_pages);
    }

    #[test]
    fn freed_pages_wait_for_the_readers_that_can_reach_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = db_path(&dir);
        // read_at, not the map: a reused page would be read back from the file and fail its
        // page id or checksum, or show the wrong data.
        let backend = Backend::open(std_vfs(), &path, opts(false)).unwrap();
        let mut w = backend.batch().unwrap();
        let rewrite = |w: &mut BatchWriter, round: u32| {
            for i in 0..1500u32 {
                w.put(Bucket::Key, &key(i), &val(i, round)).unwrap();
            }
            w.commit().unwrap();
        };
        rewrite(&mut w, 0);
        let old = backend.snapshot();
        let old_model = dump(&old);
        let start = w.stats().page_count;
        // Every commit rewrites the whole tree and frees every page of the one before; none of
        // the pages the snapshot reads may be reused while it lives.
        for round in 1..=6 {
            rewrite(&mut w, round);
            assert_eq!(dump(&old), old_model, "round {round}");
            assert_checked(&w);
        }
        let held = w.stats().page_count;
        assert!(
            held >= start * 6,
            "the file did not grow while a snapshot held the old pages: {start} -> {held}"
        );
        drop(old);
        // Released now: the next commits reuse the freed extents instead of growing the file.
        for round in 7..=14 {
            rewrite(&mut w, round);
            assert_checked(&w);
        }
        let after = w.stats();
        assert!(
            after.page_count <= held,
            "freed pages were not reused: {held} pages while held, {after:?} after"
        );
        let want: Model = (0..1500u32)
            .map(|i| ((Bucket::Key, key(i)), val(i, 14)))
            .collect();
        assert_eq!(dump(&w), want);
    }
}

mod fill_tests {
    //! The fill rule (tree.rs, `TreeWriter::write_nodes`): puts that arrive in key order fill
    //! pages fully, puts that arrive out of order leave room in the leaves they split.

    use super::*;

    /// 24-byte keys of the same length, so page counts depend on the order only.
    fn k(i: u32) -> Vec<u8> {
        format!("key-{:020}", u64::from(i) * 1_000).into_bytes()
    }

    const V: [u8; 150] = [0x5a; 150];

    /// Pages a fresh backend holds after the keys `order` names were put in that order (one
    /// commit, then a small one).
    fn load(order: &[u32]) -> (tempfile::TempDir, Backend, u64) {
        let dir = tempfile::tempdir().unwrap();
        let backend = Backend::open(std_vfs(), &db_path(&dir), opts(true)).unwrap();
        let mut w = backend.batch().unwrap();
        for &i in order {
            w.put(Bucket::Key, &k(i), &V).unwrap();
        }
        w.commit().unwrap();
        // A second, small commit: the load's freelist run lists every run it wrote (2 pages),
        // this one's takes 1, as will those of the commits the test compares.
        w.put(Bucket::Meta, b"m", b"1").unwrap();
        w.commit().unwrap();
        assert_checked(&w);
        drop(w);
        let pages = live_pages(&backend);
        (dir, backend, pages)
    }

    fn live_pages(b: &Backend) -> u64 {
        let s = b.stats();
        s.live_bytes / s.page_size
    }

    fn shuffled(n: u32, seed: u64) -> Vec<u32> {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut v: Vec<u32> = (0..n).collect();
        for i in (1..v.len()).rev() {
            v.swap(i, rng.random_range(0..=i));
        }
        v
    }

    #[test]
    fn sorted_puts_fill_leaves_and_random_puts_leave_room() {
        // 4,000 entries of 12 + 24 + 150 bytes: 21 per 4 KiB leaf when full, 16 at 70 %.
        let n = 4000;
        let (_d1, sorted, dense) = load(&(0..n).collect::<Vec<_>>());
        let (_d2, random, spread) = load(&shuffled(n, 1));
        // Leaves: 191 full ones (4000 / 21) vs 250 (4000 / 16); plus 2 branches, the root,
        // the catalog leaf and the freelist run.
        assert!(
            (191..=200).contains(&dense),
            "sorted load: {dense} pages, expected ~196"
        );
        assert!(
            (250..=260).contains(&spread),
            "random-order load: {spread} pages, expected ~255"
        );
        assert_eq!(dump(&sorted.snapshot()), dump(&random.snapshot()));

        // A random insert into the spread tree lands in a leaf with room: the commit rewrites
        // one leaf and the path above it, no split. In the dense tree the leaf splits.
        for (b, pages) in [(&random, spread), (&sorted, dense)] {
            let mut w = b.batch().unwrap();
            w.put(Bucket::Key, b"key-00000000000001234567", &V).unwrap();
            w.commit().unwrap();
            assert_checked(&w);
            drop(w);
            let grew = live_pages(b) as i64 - pages as i64;
            let expect = if pages == spread { 0 } else { 1 };
            assert_eq!(
                grew,
                expect,
                "live pages {pages} -> {} ({:?})",
                live_pages(b),
                b.stats()
            );
        }

        // Appends at the right edge, in key order, fill their pages fully even on the spread
        // tree: 2,100 more entries take 100 full leaves (and one more branch at most).
        let mut w = random.batch().unwrap();
        for i in n..n + 2100 {
            w.put(Bucket::Key, &k(i), &V).unwrap();
        }
        w.commit().unwrap();
        assert_checked(&w);
        drop(w);
        let added = live_pages(&random) - spread;
        assert!(
            (100..=102).contains(&added),
            "2,100 appended entries took {added} pages"
        );
    }
}

mod delta_log {
    //! The delta log across reopens: a long chain, a tighter bound applied at the next commit,
    //! and a damaged run named with its page and reason.

    use super::*;

    fn delta_opts(max_runs: usize) -> BackendOptions {
        BackendOptions {
            delta_log: true,
            delta_min_batch: 8,
            delta_max_entries: 1_000_000,
            delta_max_runs: max_runs,
            ..opts(true)
        }
    }

    /// 2,000 keys loaded in order, then `commits` commits of 40 random puts and deletes.
    fn write_chain(path: &Path, commits: usize, model: &mut Model) {
        let backend = Backend::open(std_vfs(), path, delta_opts(1000)).unwrap();
        let mut w = backend.batch().unwrap();
        for i in 0..2000u32 {
            let k = format!("d{i:06}").into_bytes();
            w.put(Bucket::Key, &k, &[7; 150]).unwrap();
            model.insert((Bucket::Key, k), vec![7; 150]);
        }
        w.commit().unwrap();
        let mut rng = StdRng::seed_from_u64(5);
        for c in 0..commits {
            for _ in 0..40 {
                let k = format!("d{:06}", rng.random_range(0..2500u32)).into_bytes();
                if rng.random_bool(0.2) {
                    w.delete(Bucket::Key, &k).unwrap();
                    model.remove(&(Bucket::Key, k));
                } else {
                    let v = vec![c as u8; 150];
                    w.put(Bucket::Key, &k, &v).unwrap();
                    model.insert((Bucket::Key, k), v);
                }
            }
            w.commit().unwrap();
        }
        let r = assert_checked(&w);
        assert_eq!(
            r.delta_runs, commits as u64,
            "one run per commit, none folded"
        );
    }

    #[test]
    fn reopen_rebuilds_a_long_chain_and_a_tighter_bound_folds_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = db_path(&dir);
        let mut model = Model::new();
        write_chain(&path, 120, &mut model);
        let mut rng = StdRng::seed_from_u64(9);
        for mmap in [true, false] {
            let backend = Backend::open(std_vfs(), &path, opts_with(mmap, true)).unwrap();
            verify_key_bucket(&backend.snapshot(), &model, &mut rng);
            assert_eq!(backend.check().delta_runs, 120);
        }
        // Reopened with at most 10 runs: the next delta commit frees the oldest 111.
        let backend = Backend::open(std_vfs(), &path, delta_opts(10)).unwrap();
        let old = backend.snapshot();
        let mut w = backend.batch().unwrap();
        for i in 0..20u32 {
            let k = format!("d{:06}", i * 97 % 2500).into_bytes();
            w.put(Bucket::Key, &k, b"new").unwrap();
        }
        let before = model.clone();
        for i in 0..20u32 {
            model.insert(
                (Bucket::Key, format!("d{:06}", i * 97 % 2500).into_bytes()),
                b"new".to_vec(),
            );
        }
        w.commit().unwrap();
        let r = assert_checked(&w);
        assert_eq!(r.delta_runs, 10, "{r:?}");
        // The snapshot taken before still sees its own commit's log.
        verify_key_bucket(&old, &before, &mut rng);
        verify_key_bucket(&backend.snapshot(), &model, &mut rng);
        drop((old, w, backend));
        // With the option off, the next commit folds the whole log and writes a v2 meta.
        let backend = Backend::open(std_vfs(), &path, opts(true)).unwrap();
        let mut w = backend.batch().unwrap();
        w.put(Bucket::Meta, b"m", b"1").unwrap();
        w.commit().unwrap();
        let r = assert_checked(&w);
        assert_eq!(r.delta_runs, 0);
        assert_eq!(
            backend.snapshot().version.meta.version,
            meta::FORMAT_VERSION
        );
        verify_key_bucket(&backend.snapshot(), &model, &mut rng);
        drop((w, backend));
        let backend = Backend::open(std_vfs(), &path, opts(true)).unwrap();
        verify_key_bucket(&backend.snapshot(), &model, &mut rng);
    }

    fn verify_key_bucket(snap: &Snapshot, model: &Model, rng: &mut StdRng) {
        let mut got = Model::new();
        snap.scan(Bucket::Key, b"", b"", &mut |k, v| {
            got.insert((Bucket::Key, k.to_vec()), v.to_vec());
            true
        })
        .unwrap();
        let want: Model = model
            .iter()
            .filter(|((b, _), _)| *b == Bucket::Key)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        assert_eq!(got, want);
        for _ in 0..200 {
            let k = format!("d{:06}", rng.random_range(0..2600u32)).into_bytes();
            assert_eq!(
                snap.get(Bucket::Key, &k).unwrap(),
                want.get(&(Bucket::Key, k.clone())).cloned()
            );
            let end = format!("d{:06}", rng.random_range(0..2600u32)).into_bytes();
            let mut n = 0;
            let mut got = Vec::new();
            snap.scan(Bucket::Key, &k, &end, &mut |k, v| {
                got.push((k.to_vec(), v.to_vec()));
                n += 1;
                n < 10
            })
            .unwrap();
            let exp: Vec<_> = if k < end {
                want.range((Bucket::Key, k.clone())..(Bucket::Key, end))
                    .take(10)
                    .map(|((_, k), v)| (k.clone(), v.clone()))
                    .collect()
            } else {
                Vec::new()
            };
            assert_eq!(got, exp);
        }
    }

    #[test]
    fn a_damaged_delta_run_is_named_with_page_and_reason() {
        let dir = tempfile::tempdir().unwrap();
        let path = db_path(&dir);
        let mut model = Model::new();
        write_chain(&path, 6, &mut model);
        let backend = Backend::open(std_vfs(), &path, opts(true)).unwrap();
        let v = backend.snapshot().version.clone();
        let chain = delta::read_chain(&v.map, v.meta.delta_head, v.meta.page_count, 4096).unwrap();
        assert_eq!(chain.len(), 6);
        // A run written by an older commit (the newest commit's own run would make open fall
        // back to the commit before, crash case 2).
        let (id, _) = chain[3];
        drop(v);
        drop(backend);
        flip(&path, id * 4096 + 300);
        for mmap in [true, false] {
            let err = match Backend::open(std_vfs(), &path, opts_with(mmap, true)) {
                Err(e) => e,
                Ok(_) => panic!("a damaged delta run was not detected"),
            };
            assert_checksum_failure(&err, id);
        }
    }
}

/// `err` reports a checksum failure of page `id` (4 KiB pages), naming page and offset.
fn assert_checksum_failure(err: &BackendError, id: u64) {
    match err {
        BackendError::Corrupt {
            page,
            offset,
            reason,
            ..
        } => {
            assert_eq!((*page, *offset), (id, id * 4096), "{err}");
            assert!(reason.contains("checksum"), "{reason}");
        }
        e => panic!("expected corruption, got {e}"),
    }
}

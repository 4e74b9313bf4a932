//! WAL behaviour tests: round trips, reopen, purge, torn tails, corruption, group commit,
//! fdatasync failure and power cuts.

use std::ffi::OsString;
use std::io;
use std::os::fd::RawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use bytes::Bytes;
use crossbeam_channel::unbounded;
use rand::{Rng, SeedableRng, rngs::StdRng};

use super::format::encoded_len;
use super::*;
use crate::io::{CrashMode, Fault, FaultVfs, File, IoKind, OpenOptions, StdVfs, UringVfs, Vfs};

const SEG: u64 = 16 * 1024;

fn opts() -> WalOptions {
    WalOptions {
        segment_size: SEG,
        ..WalOptions::default()
    }
}

fn real_vfses() -> Vec<Arc<dyn Vfs>> {
    vec![
        Arc::new(StdVfs::new()),
        Arc::new(UringVfs::new().expect("io_uring must be available where the tests run")),
    ]
}

fn payload(index: u64) -> Bytes {
    // Varying lengths so records straddle blocks and segment ends at many positions.
    let len = (index * 37 % 600) as usize;
    Bytes::from(format!("entry-{index}:{}", "x".repeat(len)))
}

fn entry(index: u64, term: u64) -> Record {
    Record::Entry(LogEntry {
        index,
        term,
        entry_type: (index % 3) as u8,
        data: payload(index),
    })
}

fn log_entry(index: u64, term: u64) -> LogEntry {
    match entry(index, term) {
        Record::Entry(e) => e,
        _ => unreachable!(),
    }
}

fn indexes(replay: &Replay) -> Vec<u64> {
    replay.entries.iter().map(|e| e.index).collect()
}

fn open(vfs: &Arc<dyn Vfs>, dir: &Path) -> (Wal, Replay) {
    Wal::open(vfs.clone(), dir, opts()).unwrap()
}

/// Every order of a leader's wake-ups and next batch, as `(wake_before_next, relay_wake,
/// wake_gather, wake_one)`: wake first with the leader waking all, gathering, and
/// the overlapped order with each way of waking a batch's waiters (relay head, the leader
/// unparks the tree's first two, the leader unparks one).
const LEAD_ORDERS: [(bool, bool, bool, bool); 5] = [
    (true, false, false, false),
    (false, false, true, false),
    (false, true, false, false),
    (false, false, false, false),
    (false, false, false, true),
];

/// [`open`] with the given `(wake_before_next, relay_wake, wake_gather, wake_one)`.
fn open_ordered(vfs: &Arc<dyn Vfs>, dir: &Path, order: (bool, bool, bool, bool)) -> (Wal, Replay) {
    let (wake_before_next, relay_wake, wake_gather, wake_one) = order;
    let o = WalOptions {
        wake_before_next,
        relay_wake,
        wake_gather,
        wake_one,
        ..opts()
    };
    Wal::open(vfs.clone(), dir, o).unwrap()
}

#[test]
fn every_record_type_round_trips_through_reopen() {
    let fault: Arc<dyn Vfs> = Arc::new(FaultVfs::new());
    let mut vfses = real_vfses();
    vfses.push(fault);
    for vfs in vfses {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("member/wal");
        let (wal, replay) = open(&vfs, &dir);
        assert_eq!(
            replay,
            Replay::default(),
            "{:?}: new WAL is empty",
            vfs.kind()
        );
        let hs = HardState {
            term: 2,
            vote: 1,
            commit: 2,
        };
        let info = wal
            .append_wait(vec![
                Record::Metadata(Bytes::from_static(b"node-1")),
                entry(1, 1),
                entry(2, 2),
                Record::HardState(hs),
            ])
            .unwrap();
        assert_eq!(info.flush_records, 4);
        wal.append_wait(vec![Record::Snapshot(SnapshotMark { index: 1, term: 1 })])
            .unwrap();
        wal.close().unwrap();
        assert_eq!(
            wal.append_wait(vec![entry(3, 2)]).unwrap_err().to_string(),
            "WAL is closed"
        );
        drop(wal);

        let (wal, replay) = open(&vfs, &dir);
        assert_eq!(replay.entries, vec![log_entry(1, 1), log_entry(2, 2)]);
        assert_eq!(replay.hard_state, Some(hs));
        assert_eq!(replay.metadata, Some(Bytes::from_static(b"node-1")));
        assert_eq!(replay.snapshot, Some(SnapshotMark { index: 1, term: 1 }));
        assert_eq!(replay.truncated_tail, None);
        assert_eq!(wal.segment_paths().len(), 1);
        wal.close().unwrap();
    }
}

#[test]
fn idle_spin_and_pinning_keep_appends_working() {
    let tmp = tempfile::tempdir().unwrap();
    let vfs: Arc<dyn Vfs> = Arc::new(UringVfs::new().unwrap());
    let o = WalOptions {
        idle_spin: Duration::from_micros(50),
        wal_cpu: Some(0),
        ..opts()
    };
    let (wal, _) = Wal::open(vfs.clone(), tmp.path(), o).unwrap();
    for i in 1..=20 {
        wal.append_wait(vec![entry(i, 1)]).unwrap();
    }
    wal.close().unwrap();
    let (wal, replay) = open(&vfs, tmp.path());
    assert_eq!(indexes(&replay), (1..=20).collect::<Vec<_>>());
    wal.close().unwrap();
}

#[test]
fn appends_continue_after_reopen_across_many_segments() {
    for vfs in real_vfses() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let mut next = 1;
        for round in 0..3 {
            let (wal, replay) = open(&vfs, dir);
            assert_eq!(
                indexes(&replay),
                (1..next).collect::<Vec<_>>(),
                "round {round}"
            );
            for e in &replay.entries {
                assert_eq!(e, &log_entry(e.index, 1));
            }
            assert_eq!(
                replay.hard_state.map(|h| h.commit),
                (next > 1).then(|| next - 1)
            );
            // Some appends alone, some in groups, so segment switches fall everywhere.
            while next < 60 * (round + 1) {
                let n = 1 + next % 4;
                let mut recs: Vec<Record> = (next..next + n).map(|i| entry(i, 1)).collect();
                recs.push(Record::HardState(HardState {
                    term: 1,
                    vote: 1,
                    commit: next + n - 1,
                }));
                wal.append_wait(recs).unwrap();
                next += n;
            }
            wal.close().unwrap();
        }
        let (wal, replay) = open(&vfs, dir);
        assert_eq!(indexes(&replay), (1..next).collect::<Vec<_>>());
        let paths = wal.segment_paths();
        assert!(
            paths.len() >= 3,
            "{:?}: only {} segments",
            vfs.kind(),
            paths.len()
        );
        // Names carry consecutive sequence numbers; the first index of each segment is one
        // past the last entry of the one before.
        let mut prev_last = 0;
        for (i, p) in paths.iter().enumerate() {
            let name = p.file_name().unwrap().to_str().unwrap();
            let (seq, first) = format::parse_segment_name(name).unwrap();
            assert_eq!(seq, i as u64);
            if i > 0 {
                assert_eq!(first, prev_last + 1);
            }
            let data = std::fs::read(p).unwrap();
            assert_eq!(data.len() as u64, SEG, "segments are preallocated");
            let mut pos = format::SEGMENT_HEADER_LEN;
            while let format::Decoded::Record { record, len, .. } =
                format::decode_record(&data, pos, format::crc_seed(seq))
            {
                if let Record::Entry(e) = record {
                    prev_last = e.index;
                }
                pos += len;
            }
        }
        wal.close().unwrap();
        // No leftover allocator files after close (the lock file stays, unlocked).
        let names: Vec<OsString> = vfs.list_dir(dir).unwrap();
        assert!(
            names
                .iter()
                .all(|n| n.to_str().unwrap().ends_with(".wal") || n == LOCK_FILE),
            "{names:?}"
        );
    }
}

#[test]
fn overwritten_entries_replay_newest_and_gaps_are_refused() {
    let vfs: Arc<dyn Vfs> = Arc::new(FaultVfs::new());
    let dir = Path::new("/wal");
    let (wal, _) = open(&vfs, dir);
    wal.append_wait((1..=10).map(|i| entry(i, 1)).collect())
        .unwrap();
    // A new leader overwrites from index 6.
    wal.append_wait(vec![entry(6, 2), entry(7, 2)]).unwrap();
    // Index 9 would leave a gap after 7: refused alone, the WAL stays usable.
    let err = wal.append_wait(vec![entry(9, 2)]).unwrap_err();
    assert!(err.is_caller_mistake(), "{err}");
    assert!(err.to_string().contains("gap"), "{err}");
    let huge = Record::Metadata(Bytes::from(vec![1u8; SEG as usize]));
    let err = wal.append_wait(vec![huge]).unwrap_err();
    assert!(matches!(err, WalError::InvalidAppend(_)), "{err}");
    wal.append_wait(vec![entry(8, 2)]).unwrap();
    wal.close().unwrap();

    let (wal, replay) = open(&vfs, dir);
    let expect: Vec<LogEntry> = (1..=5)
        .map(|i| log_entry(i, 1))
        .chain((6..=8).map(|i| log_entry(i, 2)))
        .collect();
    assert_eq!(replay.entries, expect);
    // A snapshot marker moves the next index past it (a snapshot was installed).
    wal.append_wait(vec![
        Record::Snapshot(SnapshotMark { index: 50, term: 3 }),
        entry(51, 3),
    ])
    .unwrap();
    wal.close().unwrap();
    let (wal, replay) = open(&vfs, dir);
    assert_eq!(replay.entries, vec![log_entry(51, 3)]);
    wal.close().unwrap();
}

#[test]
fn replay_starts_after_the_given_snapshot_marker() {
    let vfs: Arc<dyn Vfs> = Arc::new(FaultVfs::new());
    let dir = Path::new("/wal");
    let (wal, _) = open(&vfs, dir);
    for i in 1..=40 {
        wal.append_wait(vec![entry(i, 1)]).unwrap();
        if i == 30 {
            wal.append_wait(vec![Record::Snapshot(SnapshotMark { index: 30, term: 1 })])
                .unwrap();
        }
    }
    wal.close().unwrap();
    let with = |index, term| {
        Wal::open(
            vfs.clone(),
            dir,
            WalOptions {
                replay_from: SnapshotMark { index, term },
                ..opts()
            },
        )
    };
    let (wal, replay) = with(30, 1).unwrap();
    assert_eq!(indexes(&replay), (31..=40).collect::<Vec<_>>());
    assert_eq!(replay.snapshot, Some(SnapshotMark { index: 30, term: 1 }));
    wal.close().unwrap();
    assert!(matches!(
        with(30, 2).unwrap_err(),
        WalError::SnapshotMismatch {
            index: 30,
            expected: 2,
            found: 1
        }
    ));
    let err = with(31, 1).unwrap_err();
    assert!(
        matches!(err, WalError::SnapshotNotFound { index: 31, .. }),
        "{err}"
    );
    assert!(err.is_corruption());
}

#[test]
fn purge_removes_only_segments_wholly_below_the_index() {
    let vfs: Arc<dyn Vfs> = Arc::new(FaultVfs::new());
    let dir = Path::new("/wal");
    let (wal, _) = open(&vfs, dir);
    for i in 1..=250 {
        wal.append_wait(vec![entry(i, 1)]).unwrap();
    }
    let before = wal.segment_paths();
    assert!(before.len() >= 4);
    let firsts: Vec<u64> = before
        .iter()
        .map(|p| {
            format::parse_segment_name(p.file_name().unwrap().to_str().unwrap())
                .unwrap()
                .1
        })
        .collect();
    // Purging below the second segment's first index removes exactly the first segment.
    assert_eq!(wal.purge_below(firsts[1] - 1).unwrap(), 0);
    assert_eq!(wal.purge_below(firsts[1]).unwrap(), 1);
    // Purging below everything keeps the newest segment.
    let removed = wal.purge_below(u64::MAX).unwrap();
    assert_eq!(removed, before.len() - 2);
    let after = wal.segment_paths();
    assert_eq!(after, vec![before.last().unwrap().clone()]);
    for p in &before[..before.len() - 1] {
        assert!(!vfs.exists(p));
    }
    wal.append_wait(vec![entry(251, 1)]).unwrap();
    wal.close().unwrap();
    let (wal, replay) = open(&vfs, dir);
    let last_first = *firsts.last().unwrap();
    assert_eq!(indexes(&replay), (last_first..=251).collect::<Vec<_>>());
    wal.close().unwrap();
}

/// The segment files of a WAL directory on a `FaultVfs`, as a reopenable copy.
fn copy(vfs: &FaultVfs) -> FaultVfs {
    vfs.crash_image(CrashMode::LoseUnsynced)
}

#[test]
fn torn_tail_at_every_byte_of_the_last_record_is_cut_off() {
    let base = FaultVfs::new();
    let base_dyn: Arc<dyn Vfs> = Arc::new(base.clone());
    let dir = Path::new("/wal");
    let (wal, _) = open(&base_dyn, dir);
    let n = 70; // enough for two segments
    let mut end = 0;
    for i in 1..=n {
        end = wal.append_wait(vec![entry(i, 1)]).unwrap().end_offset;
    }
    let last_path = wal.segment_paths().last().unwrap().clone();
    assert!(wal.segment_paths().len() >= 2);
    wal.close().unwrap();
    let start = end - encoded_len(&entry(n, 1)) as u64;

    let mut rng = StdRng::seed_from_u64(7);
    for cut in start..end {
        for variant in ["cut", "zeroed", "garbage"] {
            let img = copy(&base);
            let f = img.open(&last_path, OpenOptions::read_write()).unwrap();
            match variant {
                "cut" => f.set_len(cut).unwrap(),
                "zeroed" => f.write_at(&vec![0u8; (end - cut) as usize], cut).unwrap(),
                _ => {
                    let junk: Vec<u8> = (cut..end).map(|_| rng.random()).collect();
                    f.write_at(&junk, cut).unwrap();
                }
            }
            f.sync_data().unwrap();
            let img: Arc<dyn Vfs> = Arc::new(img);
            let (wal, replay) = Wal::open(img.clone(), dir, opts())
                .unwrap_or_else(|e| panic!("{variant} at {cut}: {e}"));
            assert_eq!(
                indexes(&replay),
                (1..n).collect::<Vec<_>>(),
                "{variant} at {cut}"
            );
            if variant != "cut" && cut > start && replay.truncated_tail.is_none() {
                // Only junk made of zeros needs no cutting.
                assert_eq!(variant, "zeroed");
            }
            // Appending over the cut works and survives the next open.
            wal.append_wait(vec![entry(n, 2)]).unwrap();
            wal.close().unwrap();
            let (wal, replay) = Wal::open(img, dir, opts()).unwrap();
            assert_eq!(replay.entries.last(), Some(&log_entry(n, 2)));
            assert_eq!(replay.entries.len() as u64, n);
            wal.close().unwrap();
        }
    }
}

/// A WAL on real files with `n` single-entry appends; returns the segment paths and the
/// (segment, offset) of each entry.
fn real_wal(dir: &Path, n: u64) -> (Vec<PathBuf>, Vec<(usize, u64)>) {
    let vfs: Arc<dyn Vfs> = Arc::new(StdVfs::new());
    let (wal, _) = open(&vfs, dir);
    let mut at = Vec::new();
    for i in 1..=n {
        let info = wal.append_wait(vec![entry(i, 1)]).unwrap();
        let len = encoded_len(&entry(i, 1)) as u64;
        at.push((info.segment_seq as usize, info.end_offset - len));
    }
    let paths = wal.segment_paths();
    wal.close().unwrap();
    (paths, at)
}

fn flip_bit(path: &Path, offset: u64, bit: u8) {
    let mut data = std::fs::read(path).unwrap();
    data[offset as usize] ^= 1 << bit;
    std::fs::write(path, data).unwrap();
}

#[test]
fn bit_flips_in_non_tail_records_fail_open_naming_the_file() {
    let mut rng = StdRng::seed_from_u64(11);
    for case in 0..12 {
        let tmp = tempfile::tempdir().unwrap();
        let (paths, at) = real_wal(tmp.path(), 80);
        assert!(paths.len() >= 2);
        // Any record but the very last (the tail), in any segment.
        let victim = rng.random_range(0..at.len() - 1);
        let (seg, off) = at[victim];
        let len = encoded_len(&entry(victim as u64 + 1, 1)) as u64;
        let byte = off + rng.random_range(0..len);
        flip_bit(&paths[seg], byte, rng.random_range(0..8));
        let vfs: Arc<dyn Vfs> = Arc::new(StdVfs::new());
        let err = Wal::open(vfs, tmp.path(), opts()).unwrap_err();
        assert!(err.is_corruption(), "case {case}: {err}");
        match &err {
            WalError::Corrupt { path, offset, .. } => {
                assert_eq!(path, &paths[seg], "case {case}: {err}");
                assert_eq!(*offset, off, "case {case}: {err}");
            }
            other => panic!("case {case}: {other}"),
        }
        let name = paths[seg].file_name().unwrap().to_str().unwrap();
        assert!(err.to_string().contains(name), "{err}");
    }
}

#[test]
fn damaged_headers_and_missing_segments_fail_open() {
    let tmp = tempfile::tempdir().unwrap();
    let (paths, _) = real_wal(tmp.path(), 160);
    assert!(paths.len() >= 3);
    let vfs: Arc<dyn Vfs> = Arc::new(StdVfs::new());

    flip_bit(&paths[2], format::SEQ_OFFSET as u64, 0);
    let err = Wal::open(vfs.clone(), tmp.path(), opts()).unwrap_err();
    assert!(
        matches!(&err, WalError::Corrupt { path, offset: 0, .. } if path == &paths[2]),
        "{err}"
    );
    flip_bit(&paths[2], format::SEQ_OFFSET as u64, 0);

    std::fs::remove_file(&paths[1]).unwrap();
    let err = Wal::open(vfs.clone(), tmp.path(), opts()).unwrap_err();
    assert!(
        matches!(&err, WalError::MissingSegment { after, expected: 1 } if after == &paths[0]),
        "{err}"
    );
    // Removing the oldest segments (a purge) leaves a valid WAL.
    std::fs::remove_file(&paths[0]).unwrap();
    let (wal, replay) = Wal::open(vfs, tmp.path(), opts()).unwrap();
    assert_eq!(replay.entries.last().map(|e| e.index), Some(160));
    wal.close().unwrap();
}

/// Wraps a `Vfs`: `write_at_and_sync` (the WAL's flush) can be held at a gate, and from a given
/// call on fails with EIO after the write landed (an fdatasync error).
struct TestVfs {
    inner: Arc<dyn Vfs>,
    ctl: Arc<Ctl>,
}

#[derive(Default)]
struct Ctl {
    closed: Mutex<bool>,
    /// Calls let through the closed gate before it holds again.
    passes: AtomicUsize,
    cv: Condvar,
    waiting: AtomicUsize,
    calls: AtomicUsize,
    fail_from: AtomicUsize,
    /// Name of the thread of each `write_at_and_sync` (unnamed: its id).
    flushers: Mutex<Vec<String>>,
    /// Largest single `read_at`.
    max_read: AtomicUsize,
    /// Bytes written by plain `write_at` (the allocator's zero-fill; flushes use
    /// `write_at_and_sync`).
    plain_written: AtomicUsize,
}

impl Ctl {
    fn new() -> Arc<Ctl> {
        let ctl = Ctl::default();
        ctl.fail_from.store(usize::MAX, Ordering::SeqCst);
        Arc::new(ctl)
    }

    fn close_gate(&self) {
        *self.closed.lock().unwrap() = true;
    }

    /// Lets one flush held at the closed gate (or the next to arrive) through.
    fn pass_one(&self) {
        let _closed = self.closed.lock().unwrap();
        self.passes.fetch_add(1, Ordering::SeqCst);
        self.cv.notify_all();
    }

    fn open_gate(&self) {
        *self.closed.lock().unwrap() = false;
        self.cv.notify_all();
    }

    /// Waits (polling) until a flush is held at the gate.
    fn wait_for_blocked_flush(&self) {
        while self.waiting.load(Ordering::SeqCst) == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

struct TestFile {
    inner: Arc<dyn File>,
    ctl: Arc<Ctl>,
}

impl File for TestFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.ctl.max_read.fetch_max(buf.len(), Ordering::SeqCst);
        self.inner.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.ctl
            .plain_written
            .fetch_add(buf.len(), Ordering::SeqCst);
        self.inner.write_at(buf, offset)
    }
    fn write_at_and_sync(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        {
            let mut closed = self.ctl.closed.lock().unwrap();
            self.ctl.waiting.fetch_add(1, Ordering::SeqCst);
            while *closed && self.ctl.passes.load(Ordering::SeqCst) == 0 {
                closed = self.ctl.cv.wait(closed).unwrap();
            }
            if *closed {
                self.ctl.passes.fetch_sub(1, Ordering::SeqCst);
            }
            self.ctl.waiting.fetch_sub(1, Ordering::SeqCst);
        }
        let me = std::thread::current();
        let name = me
            .name()
            .map_or_else(|| format!("{:?}", me.id()), str::to_owned);
        self.ctl.flushers.lock().unwrap().push(name);
        let call = self.ctl.calls.fetch_add(1, Ordering::SeqCst);
        if call >= self.ctl.fail_from.load(Ordering::SeqCst) {
            self.inner.write_at(buf, offset)?;
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        self.inner.write_at_and_sync(buf, offset)
    }
    fn sync_data(&self) -> io::Result<()> {
        self.inner.sync_data()
    }
    fn allocate(&self, offset: u64, len: u64) -> io::Result<()> {
        self.inner.allocate(offset, len)
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.inner.set_len(len)
    }
    fn size(&self) -> io::Result<u64> {
        self.inner.size()
    }
    fn raw_fd(&self) -> Option<RawFd> {
        self.inner.raw_fd()
    }
}

impl Vfs for TestVfs {
    fn kind(&self) -> IoKind {
        self.inner.kind()
    }
    fn open(&self, path: &Path, opts: OpenOptions) -> io::Result<Arc<dyn File>> {
        Ok(Arc::new(TestFile {
            inner: self.inner.open(path, opts)?,
            ctl: self.ctl.clone(),
        }))
    }
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        self.inner.create_dir_all(path)
    }
    fn list_dir(&self, path: &Path) -> io::Result<Vec<OsString>> {
        self.inner.list_dir(path)
    }
    fn exists(&self, path: &Path) -> bool {
        self.inner.exists(path)
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        self.inner.remove_file(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.inner.rename(from, to)
    }
    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        self.inner.sync_dir(path)
    }
    fn lock_file(&self, path: &Path) -> io::Result<crate::io::FileLock> {
        self.inner.lock_file(path)
    }
}

#[derive(Default)]
struct RecordingMetrics(Mutex<Vec<FlushStats>>);

impl WalMetrics for RecordingMetrics {
    fn on_flush(&self, stats: &FlushStats) {
        self.0.lock().unwrap().push(stats.clone());
    }
}

type Outcome = (u64, Result<AppendInfo, WalError>);

fn append_async(wal: &Wal, id: u64, recs: Vec<Record>, tx: &crossbeam_channel::Sender<Outcome>) {
    let tx = tx.clone();
    wal.append(recs, move |r| {
        let _ = tx.send((id, r));
    });
}

#[test]
fn appends_queued_during_a_flush_share_the_next_fdatasync() {
    for inner in real_vfses() {
        let tmp = tempfile::tempdir().unwrap();
        let ctl = Ctl::new();
        let vfs: Arc<dyn Vfs> = Arc::new(TestVfs {
            inner,
            ctl: ctl.clone(),
        });
        let metrics = Arc::new(RecordingMetrics::default());
        let o = WalOptions {
            metrics: Some(metrics.clone()),
            ..opts()
        };
        let (wal, _) = Wal::open(vfs.clone(), tmp.path(), o.clone()).unwrap();
        metrics.0.lock().unwrap().clear();
        let (tx, rx) = unbounded();
        ctl.close_gate();
        append_async(&wal, 1, vec![entry(1, 1)], &tx);
        ctl.wait_for_blocked_flush();
        // Ten appends of two records arrive while the first flush is in flight.
        for k in 0..10u64 {
            let i = 2 + 2 * k;
            append_async(&wal, i, vec![entry(i, 1), entry(i + 1, 1)], &tx);
        }
        assert!(
            rx.try_recv().is_err(),
            "nothing is acknowledged before its fdatasync"
        );
        ctl.open_gate();
        let mut got: Vec<Outcome> = (0..11).map(|_| rx.recv().unwrap()).collect();
        got.sort_by_key(|(id, _)| *id);
        let first = got[0].1.as_ref().unwrap();
        assert_eq!((first.flush_appends, first.flush_records), (1, 1));
        for (id, r) in &got[1..] {
            let info = r.as_ref().unwrap();
            assert_eq!(
                (info.flush_appends, info.flush_records),
                (10, 20),
                "append {id}"
            );
        }
        let flushes = metrics.0.lock().unwrap().clone();
        let per_flush: Vec<(usize, usize, bool)> = flushes
            .iter()
            .map(|f| (f.appends, f.records, f.ok))
            .collect();
        assert_eq!(per_flush, vec![(1, 1, true), (10, 20, true)]);
        assert!(flushes.iter().all(|f| f.bytes > 0 && f.bytes % 4096 == 0));
        assert!(flushes[1].max_queue_wait > Duration::ZERO);
        wal.close().unwrap();
        let (wal, replay) = Wal::open(vfs, tmp.path(), opts()).unwrap();
        assert_eq!(indexes(&replay), (1..=21).collect::<Vec<_>>());
        wal.close().unwrap();
    }
}

#[test]
fn fdatasync_eio_fails_every_waiter_and_refuses_later_appends() {
    let tmp = tempfile::tempdir().unwrap();
    let ctl = Ctl::new();
    let vfs: Arc<dyn Vfs> = Arc::new(TestVfs {
        inner: Arc::new(StdVfs::new()),
        ctl: ctl.clone(),
    });
    let (wal, _) = Wal::open(vfs.clone(), tmp.path(), opts()).unwrap();
    wal.append_wait(vec![entry(1, 1)]).unwrap();
    let (tx, rx) = unbounded();
    ctl.close_gate();
    append_async(&wal, 2, vec![entry(2, 1)], &tx);
    ctl.wait_for_blocked_flush();
    for i in 3..=6 {
        append_async(&wal, i, vec![entry(i, 1)], &tx);
    }
    // The held flush succeeds; the next one (appends 3..=6 together) fails its fdatasync.
    ctl.fail_from
        .store(ctl.calls.load(Ordering::SeqCst) + 1, Ordering::SeqCst);
    ctl.open_gate();
    let mut got: Vec<Outcome> = (0..5).map(|_| rx.recv().unwrap()).collect();
    got.sort_by_key(|(id, _)| *id);
    assert!(got[0].1.is_ok());
    for (id, r) in &got[1..] {
        let err = r.as_ref().unwrap_err();
        assert!(matches!(err, WalError::Io { .. }), "append {id}: {err}");
        assert!(err.to_string().contains("os error 5"), "append {id}: {err}");
    }
    let calls = ctl.calls.load(Ordering::SeqCst);
    // Later appends are refused without touching the disk: the fdatasync is never retried.
    for i in 7..10 {
        let err = wal.append_wait(vec![entry(i, 1)]).unwrap_err();
        assert!(matches!(err, WalError::Failed(_)), "{err}");
        assert!(err.to_string().contains("os error 5"), "{err}");
    }
    assert_eq!(ctl.calls.load(Ordering::SeqCst), calls);
    assert!(matches!(wal.close(), Err(WalError::Failed(_))));
    drop(wal);
    // What was acknowledged is there after a restart.
    let (wal, replay) = Wal::open(Arc::new(StdVfs::new()), tmp.path(), opts()).unwrap();
    assert!(indexes(&replay).starts_with(&[1, 2]));
    wal.close().unwrap();
}

/// Power-cut property test: concurrent appenders, a power cut at a random operation (of the
/// flushing thread or the allocator), a crash image of one of three kinds, reopen. Every
/// acknowledged entry must be there; entries are contiguous from 1 (nothing after a hole) and
/// carry the data written for their index.
#[test]
fn power_cut_at_a_random_operation_keeps_every_acknowledged_record() {
    let cases = 150;
    for case in 0..cases {
        let seed = 0x5eed_0000 + case;
        let mut rng = StdRng::seed_from_u64(seed);
        let fault = FaultVfs::new();
        let vfs: Arc<dyn Vfs> = Arc::new(fault.clone());
        let dir = Path::new("/data/member/wal");
        let (wal, _) = open(&vfs, dir);
        let cut_after = rng.random_range(0..300);
        fault.fail_at(fault.ops() + cut_after, Fault::PowerCut);
        let wal = Arc::new(wal);
        // Index assignment and enqueueing happen under one lock, so queue order = index order.
        let next = Arc::new(Mutex::new(1u64));
        let acked = Arc::new(Mutex::new(Vec::new()));
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let (wal, next, acked) = (wal.clone(), next.clone(), acked.clone());
                let mut rng = StdRng::seed_from_u64(seed * 8 + t);
                std::thread::spawn(move || {
                    for _ in 0..40 {
                        let n = rng.random_range(1..=3);
                        let (tx, rx) = crossbeam_channel::bounded(1);
                        let last = {
                            let mut next = next.lock().unwrap();
                            let first = *next;
                            *next += n;
                            let recs = (first..first + n).map(|i| entry(i, 1)).collect();
                            wal.append(recs, move |r| {
                                let _ = tx.send(r);
                            });
                            first + n - 1
                        };
                        match rx.recv().unwrap() {
                            Ok(_) => acked.lock().unwrap().push(last),
                            Err(_) => return,
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let _ = wal.close();
        let mode = match rng.random_range(0..3) {
            0 => CrashMode::LoseUnsynced,
            1 => CrashMode::TornLastWrite {
                keep: rng.random_range(0..8192),
            },
            _ => CrashMode::RandomSectors { seed },
        };
        let image: Arc<dyn Vfs> = Arc::new(fault.crash_image(mode));
        let (wal2, replay) = Wal::open(image.clone(), dir, opts())
            .unwrap_or_else(|e| panic!("case {case} ({mode:?}, cut after {cut_after}): {e}"));
        let max_acked = acked.lock().unwrap().iter().copied().max().unwrap_or(0);
        let got = indexes(&replay);
        let want: Vec<u64> = (1..=got.len() as u64).collect();
        assert_eq!(got, want, "case {case}: entries must be contiguous from 1");
        assert!(
            got.len() as u64 >= max_acked,
            "case {case} ({mode:?}): acknowledged up to {max_acked}, replayed {}",
            got.len()
        );
        for e in &replay.entries {
            assert_eq!(e, &log_entry(e.index, 1), "case {case}");
        }
        // The reopened WAL accepts appends after what it replayed.
        let n = got.len() as u64 + 1;
        wal2.append_wait(vec![entry(n, 2)]).unwrap();
        wal2.close().unwrap();
        let (wal3, replay) = Wal::open(image, dir, opts()).unwrap();
        assert_eq!(replay.entries.last(), Some(&log_entry(n, 2)), "case {case}");
        wal3.close().unwrap();
    }
}

/// A segment written by format version 1 (header, then: metadata, entry 1, HardState in flush
/// 1; entry 2 and a snapshot marker in flush 2). Every later version must still open it.
const V1_SEGMENT_HEX: [&str; 7] = [
    "72696e676b76574c010000000000000000000000000000000000000000000000",
    "838a420200000000b72340630800000004000000010000006d656d6265723d31",
    "9745062315000000010000000100000001000000000000000100000000000000",
    "01636f6e660000006b2e7a191800000002000000010000000100000000000000",
    "010000000000000001000000000000002f9199e4180000000100000002000000",
    "020000000000000001000000000000000070757420613d6238614ee110000000",
    "030000000200000001000000000000000100000000000000",
];

#[test]
fn a_version_1_segment_still_opens() {
    let hex: String = V1_SEGMENT_HEX.concat();
    let mut data: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect();
    assert_eq!(data[..8], format::SEGMENT_MAGIC);
    assert_eq!(
        format::get_u32(&data, format::VERSION_OFFSET),
        format::FORMAT_V1
    );
    data.resize(SEG as usize, 0);
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join(format::segment_name(0, 0)), &data).unwrap();
    let vfs: Arc<dyn Vfs> = Arc::new(StdVfs::new());
    let (wal, replay) = open(&vfs, tmp.path());
    assert_eq!(
        replay,
        Replay {
            entries: vec![
                LogEntry {
                    index: 1,
                    term: 1,
                    entry_type: 1,
                    data: Bytes::from_static(b"conf"),
                },
                LogEntry {
                    index: 2,
                    term: 1,
                    entry_type: 0,
                    data: Bytes::from_static(b"put a=b"),
                },
            ],
            hard_state: Some(HardState {
                term: 1,
                vote: 1,
                commit: 1,
            }),
            metadata: Some(Bytes::from_static(b"member=1")),
            snapshot: Some(SnapshotMark { index: 1, term: 1 }),
            truncated_tail: None,
        }
    );
    // Appending continues after the old records.
    wal.append_wait(vec![entry(3, 1)]).unwrap();
    wal.close().unwrap();
    let (wal, replay) = open(&vfs, tmp.path());
    assert_eq!(indexes(&replay), vec![1, 2, 3]);
    wal.close().unwrap();
}

/// The worked example of `replay.rs`: damage in the newest segment is a torn tail when only
/// frames of the last flush (or the one after it) follow, and corruption when a later flush does.
#[test]
fn damage_in_the_newest_segment_is_torn_only_within_the_last_flushes() {
    let base = FaultVfs::new();
    let base_dyn: Arc<dyn Vfs> = Arc::new(base.clone());
    let dir = Path::new("/wal");
    let (wal, _) = open(&base_dyn, dir);
    // r1, r2, r3 in flushes of their own, then r4, r5, r6 in one flush.
    let mut at = Vec::new();
    for i in 1..=3 {
        let info = wal.append_wait(vec![entry(i, 1)]).unwrap();
        at.push(info.end_offset - encoded_len(&entry(i, 1)) as u64);
    }
    let info = wal
        .append_wait(vec![entry(4, 1), entry(5, 1), entry(6, 1)])
        .unwrap();
    assert_eq!(info.flush_records, 3);
    let mut off = info.end_offset;
    let mut tail_at = vec![0; 3];
    for i in (4..=6).rev() {
        off -= encoded_len(&entry(i, 1)) as u64;
        tail_at[i as usize - 4] = off;
    }
    at.extend(tail_at);
    let path = wal.segment_paths()[0].clone();
    wal.close().unwrap();

    let damage = |victim: usize| {
        let img = copy(&base);
        // A byte inside the payload of record `victim` (1-based).
        img.corrupt(&path, at[victim - 1] + 20, &[0xee]);
        let img: Arc<dyn Vfs> = Arc::new(img);
        Wal::open(img, dir, opts())
    };
    // r5 damaged: r6 belongs to the same (last) flush → torn; r1..r4 kept.
    let (w, replay) = damage(5).unwrap();
    assert_eq!(indexes(&replay), vec![1, 2, 3, 4]);
    assert_eq!(replay.truncated_tail, Some((path.clone(), at[4])));
    w.close().unwrap();
    // r4 damaged: r5, r6 are of the flush after r3's → torn; r1..r3 kept.
    let (w, replay) = damage(4).unwrap();
    assert_eq!(indexes(&replay), vec![1, 2, 3]);
    w.close().unwrap();
    // r3 damaged: r4..r6 come from a flush two after r2's → r3 was acknowledged: corruption.
    let err = damage(3).unwrap_err();
    assert!(
        matches!(&err, WalError::Corrupt { path: p, offset, .. } if p == &path && *offset == at[2]),
        "{err}"
    );
    // r2 damaged: likewise.
    assert!(damage(2).unwrap_err().is_corruption());
}

/// After an fdatasync error the WAL never syncs that flush again (no retry, no later flush), so
/// on the fault implementation a power cut leaves exactly the acknowledged appends.
#[test]
fn after_an_fdatasync_eio_a_power_cut_keeps_exactly_the_acknowledged_appends() {
    let fault = FaultVfs::new();
    let ctl = Ctl::new();
    let vfs: Arc<dyn Vfs> = Arc::new(TestVfs {
        inner: Arc::new(fault.clone()),
        ctl: ctl.clone(),
    });
    let dir = Path::new("/wal");
    let (wal, _) = Wal::open(vfs, dir, opts()).unwrap();
    for i in 1..=5 {
        wal.append_wait(vec![entry(i, 1)]).unwrap();
    }
    ctl.fail_from
        .store(ctl.calls.load(Ordering::SeqCst), Ordering::SeqCst);
    let err = wal.append_wait(vec![entry(6, 1), entry(7, 1)]).unwrap_err();
    assert!(matches!(err, WalError::Io { .. }), "{err}");
    let _ = wal.close();
    let image: Arc<dyn Vfs> = Arc::new(fault.crash_image(CrashMode::LoseUnsynced));
    let (wal, replay) = Wal::open(image, dir, opts()).unwrap();
    assert_eq!(indexes(&replay), vec![1, 2, 3, 4, 5]);
    wal.close().unwrap();
}

// ---- Group commit with a rotating leader (commit.rs) ----

/// With `ctl`'s gate closed: a "leader" thread appends entry 1 and waits; returns once its
/// flush is blocked at the gate (later appends queue behind it).
fn lead_a_blocked_flush(
    wal: &Arc<Wal>,
    ctl: &Ctl,
) -> std::thread::JoinHandle<Result<AppendInfo, WalError>> {
    let wal = wal.clone();
    let leader = std::thread::Builder::new()
        .name("leader".into())
        .spawn(move || wal.append_wait(vec![entry(1, 1)]))
        .unwrap();
    ctl.wait_for_blocked_flush();
    leader
}

fn gated(inner: Arc<dyn Vfs>) -> (Arc<dyn Vfs>, Arc<Ctl>) {
    let ctl = Ctl::new();
    let vfs: Arc<dyn Vfs> = Arc::new(TestVfs {
        inner,
        ctl: ctl.clone(),
    });
    (vfs, ctl)
}

fn last_flusher(ctl: &Ctl) -> String {
    ctl.flushers.lock().unwrap().last().cloned().unwrap()
}

fn this_thread() -> String {
    let me = std::thread::current();
    me.name()
        .map_or_else(|| format!("{:?}", me.id()), str::to_owned)
}

#[test]
fn an_idle_wal_is_flushed_by_the_appending_thread() {
    let tmp = tempfile::tempdir().unwrap();
    let (vfs, ctl) = gated(Arc::new(StdVfs::new()));
    let (wal, _) = Wal::open(vfs, tmp.path(), opts()).unwrap();
    let calls = ctl.calls.load(Ordering::SeqCst);
    // append_wait: the caller writes and fdatasyncs (no hand-off).
    wal.append_wait(vec![entry(1, 1)]).unwrap();
    assert_eq!(last_flusher(&ctl), this_thread());
    // append_inline: the caller flushes and runs the callback before returning.
    let (tx, rx) = unbounded();
    append_inline(&wal, 2, vec![entry(2, 1)], &tx);
    let (id, r) = rx
        .try_recv()
        .expect("callback ran before append_inline returned");
    assert_eq!(id, 2);
    r.unwrap();
    assert_eq!(last_flusher(&ctl), this_thread());
    // append: never does I/O on the caller; the flush thread does it.
    append_async(&wal, 3, vec![entry(3, 1)], &tx);
    rx.recv().unwrap().1.unwrap();
    assert_eq!(last_flusher(&ctl), "ringkv-wal");
    assert_eq!(ctl.calls.load(Ordering::SeqCst), calls + 3);
    wal.close().unwrap();
}

fn append_inline(wal: &Wal, id: u64, recs: Vec<Record>, tx: &crossbeam_channel::Sender<Outcome>) {
    let tx = tx.clone();
    wal.append_inline(recs, move |r| {
        let _ = tx.send((id, r));
    });
}

/// A leader's flush is held at the gate; appends queued meanwhile (waiting tickets on their own
/// threads, a callback append, an inline append) form the next batch, which the leader performs
/// right after its own (it keeps leading while appends wait).
#[test]
fn appends_queued_behind_a_leader_form_one_batch_the_leader_flushes_next() {
    let tmp = tempfile::tempdir().unwrap();
    let (vfs, ctl) = gated(Arc::new(StdVfs::new()));
    let metrics = Arc::new(RecordingMetrics::default());
    let o = WalOptions {
        metrics: Some(metrics.clone()),
        ..opts()
    };
    let (wal, _) = Wal::open(vfs.clone(), tmp.path(), o).unwrap();
    let wal = Arc::new(wal);
    metrics.0.lock().unwrap().clear();
    ctl.close_gate();
    let leader = lead_a_blocked_flush(&wal, &ctl);
    let (tx, rx) = unbounded();
    let mut followers = Vec::new();
    for i in 2..=7u64 {
        let ticket = wal.enqueue(vec![entry(i, 1)]);
        followers.push(
            std::thread::Builder::new()
                .name(format!("follower-{i}"))
                .spawn(move || ticket.wait())
                .unwrap(),
        );
    }
    append_async(&wal, 8, vec![entry(8, 1)], &tx);
    // A flush is in flight: the inline append queues and returns without its callback.
    append_inline(&wal, 9, vec![entry(9, 1)], &tx);
    assert!(
        rx.try_recv().is_err(),
        "nothing acknowledged before its fdatasync"
    );
    ctl.open_gate();
    let first = leader.join().unwrap().unwrap();
    assert_eq!((first.flush_appends, first.flush_records), (1, 1));
    for f in followers {
        let info = f.join().unwrap().unwrap();
        assert_eq!((info.flush_appends, info.flush_records), (8, 8));
    }
    let mut got: Vec<Outcome> = (0..2).map(|_| rx.recv().unwrap()).collect();
    got.sort_by_key(|(id, _)| *id);
    for (_, r) in got {
        assert_eq!(r.unwrap().flush_appends, 8);
    }
    let flushers = ctl.flushers.lock().unwrap().clone();
    assert_eq!(flushers[flushers.len() - 2..], ["leader", "leader"]);
    let per_flush: Vec<(usize, usize)> = metrics
        .0
        .lock()
        .unwrap()
        .iter()
        .map(|f| (f.appends, f.records))
        .collect();
    assert_eq!(per_flush, vec![(1, 1), (8, 8)]);
    wal.close().unwrap();
    let (wal, replay) = Wal::open(vfs, tmp.path(), opts()).unwrap();
    assert_eq!(indexes(&replay), (1..=9).collect::<Vec<_>>());
    wal.close().unwrap();
}

/// A waiting appender that leads flushes at most `LEAD_BATCHES` batches, then passes
/// leadership to the flush thread, which keeps flushing; every append is acknowledged.
#[test]
fn a_waiting_leader_hands_over_to_the_flush_thread_after_its_batch_bound() {
    let tmp = tempfile::tempdir().unwrap();
    let (vfs, ctl) = gated(Arc::new(StdVfs::new()));
    let (wal, _) = Wal::open(vfs.clone(), tmp.path(), opts()).unwrap();
    let wal = Arc::new(wal);
    let before = ctl.flushers.lock().unwrap().len();
    let calls = ctl.calls.load(Ordering::SeqCst);
    // Waits until `k` flushes passed the gate and the next one is held there.
    let held_after = |k: usize| {
        while ctl.calls.load(Ordering::SeqCst) != calls + k
            || ctl.waiting.load(Ordering::SeqCst) == 0
        {
            std::thread::sleep(Duration::from_millis(1));
        }
    };
    ctl.close_gate();
    let leader = {
        let wal = wal.clone();
        std::thread::Builder::new()
            .name("leader".into())
            .spawn(move || wal.append_wait(vec![entry(1, 1)]))
            .unwrap()
    };
    let (tx, rx) = unbounded();
    let n = commit::LEAD_BATCHES as u64 + 2;
    for i in 2..=n {
        // One append per flush: queue it while the previous flush is held, then let that
        // flush through.
        held_after(i as usize - 2);
        append_async(&wal, i, vec![entry(i, 1)], &tx);
        ctl.pass_one();
    }
    ctl.open_gate();
    leader.join().unwrap().unwrap();
    let mut ids: Vec<u64> = (2..=n).map(|_| rx.recv().unwrap().0).collect();
    ids.sort_unstable();
    assert_eq!(ids, (2..=n).collect::<Vec<_>>());
    let flushers = ctl.flushers.lock().unwrap()[before..].to_vec();
    let mut expected = vec!["leader"; commit::LEAD_BATCHES];
    expected.extend(["ringkv-wal", "ringkv-wal"]);
    assert_eq!(flushers, expected);
    wal.close().unwrap();
    let (wal, replay) = Wal::open(vfs, tmp.path(), opts()).unwrap();
    assert_eq!(indexes(&replay), (1..=n).collect::<Vec<_>>());
    wal.close().unwrap();
}

/// A leader delivers batch `b`'s outcomes while batch `b + 1`'s write+fdatasync is in flight:
/// the first callback runs while the second flush is held at the gate, and the second only
/// after that flush returned. Both flushes run on the flush thread, one after the other.
#[test]
fn a_batch_is_acknowledged_while_the_next_flush_is_in_flight_and_not_before_its_own() {
    let tmp = tempfile::tempdir().unwrap();
    let (vfs, ctl) = gated(Arc::new(StdVfs::new()));
    let metrics = Arc::new(RecordingMetrics::default());
    let o = WalOptions {
        metrics: Some(metrics.clone()),
        ..opts()
    };
    let (wal, _) = Wal::open(vfs.clone(), tmp.path(), o).unwrap();
    metrics.0.lock().unwrap().clear();
    let (tx, rx) = unbounded();
    ctl.close_gate();
    // The WAL is idle: the flush thread leads and its flush is held.
    append_async(&wal, 1, vec![entry(1, 1)], &tx);
    ctl.wait_for_blocked_flush();
    append_async(&wal, 2, vec![entry(2, 1), entry(3, 1)], &tx);
    assert!(
        rx.try_recv().is_err(),
        "nothing acknowledged before its fdatasync"
    );
    ctl.pass_one();
    // Flush 1 returns; the leader starts flush 2 (held) and meanwhile acknowledges flush 1.
    let (id, r) = rx.recv().unwrap();
    assert_eq!(id, 1);
    assert_eq!(r.unwrap().flush_records, 1);
    ctl.wait_for_blocked_flush();
    assert!(
        rx.try_recv().is_err(),
        "the second append is acknowledged only after its own fdatasync"
    );
    ctl.open_gate();
    let (id, r) = rx.recv().unwrap();
    assert_eq!(id, 2);
    assert_eq!(r.unwrap().flush_records, 2);
    let flushers = ctl.flushers.lock().unwrap().clone();
    assert_eq!(flushers[flushers.len() - 2..], ["ringkv-wal", "ringkv-wal"]);
    let per_flush: Vec<usize> = metrics
        .0
        .lock()
        .unwrap()
        .iter()
        .map(|f| f.records)
        .collect();
    assert_eq!(per_flush, vec![1, 2]);
    wal.close().unwrap();
    let (wal, replay) = Wal::open(vfs, tmp.path(), opts()).unwrap();
    assert_eq!(indexes(&replay), vec![1, 2, 3]);
    wal.close().unwrap();
}

/// Three outcomes of a failed fdatasync under a rotating leader: the failing flush's appends get
/// the I/O error wherever they wait, appends queued behind it get `Failed` without any I/O,
/// and nothing is retried.
fn fail_under_leader(fail_leaders_flush: bool) {
    let tmp = tempfile::tempdir().unwrap();
    let (vfs, ctl) = gated(Arc::new(StdVfs::new()));
    let (wal, _) = Wal::open(vfs.clone(), tmp.path(), opts()).unwrap();
    let wal = Arc::new(wal);
    wal.append_wait(vec![entry(1, 1)]).unwrap();
    ctl.close_gate();
    let leader = {
        let wal = wal.clone();
        std::thread::spawn(move || wal.append_wait(vec![entry(2, 1)]))
    };
    ctl.wait_for_blocked_flush();
    let (tx, rx) = unbounded();
    let mut followers = Vec::new();
    for i in 3..=6u64 {
        let ticket = wal.enqueue(vec![entry(i, 1)]);
        followers.push(std::thread::spawn(move || ticket.wait()));
    }
    append_async(&wal, 7, vec![entry(7, 1)], &tx);
    // The held flush is counted once it passes the gate: it is call number `calls`.
    let calls = ctl.calls.load(Ordering::SeqCst);
    let fail_from = if fail_leaders_flush { calls } else { calls + 1 };
    ctl.fail_from.store(fail_from, Ordering::SeqCst);
    ctl.open_gate();
    let lead = leader.join().unwrap();
    let mut rest: Vec<Result<AppendInfo, WalError>> =
        followers.into_iter().map(|f| f.join().unwrap()).collect();
    rest.push(rx.recv().unwrap().1);
    if fail_leaders_flush {
        let err = lead.unwrap_err();
        assert!(err.to_string().contains("os error 5"), "{err}");
        for r in &rest {
            let err = r.as_ref().unwrap_err();
            assert!(matches!(err, WalError::Failed(_)), "{err}");
        }
        // The queued appends were refused without I/O.
        assert_eq!(ctl.calls.load(Ordering::SeqCst), calls + 1);
    } else {
        lead.unwrap();
        for r in &rest {
            let err = r.as_ref().unwrap_err();
            assert!(matches!(err, WalError::Io { .. }), "{err}");
            assert!(err.to_string().contains("os error 5"), "{err}");
        }
        assert_eq!(ctl.calls.load(Ordering::SeqCst), calls + 2);
    }
    let calls = ctl.calls.load(Ordering::SeqCst);
    let err = wal.append_wait(vec![entry(8, 1)]).unwrap_err();
    assert!(matches!(err, WalError::Failed(_)), "{err}");
    append_inline(&wal, 9, vec![entry(9, 1)], &tx);
    let err = rx.try_recv().unwrap().1.unwrap_err();
    assert!(matches!(err, WalError::Failed(_)), "{err}");
    assert_eq!(
        ctl.calls.load(Ordering::SeqCst),
        calls,
        "the fdatasync is never retried"
    );
    assert!(matches!(wal.close(), Err(WalError::Failed(_))));
    drop(wal);
    let (wal, replay) = Wal::open(Arc::new(StdVfs::new()), tmp.path(), opts()).unwrap();
    let want: &[u64] = if fail_leaders_flush { &[1] } else { &[1, 2] };
    assert!(indexes(&replay).starts_with(want), "{:?}", indexes(&replay));
    wal.close().unwrap();
}

#[test]
fn a_failed_fdatasync_of_a_follower_led_flush_fails_its_appends_and_refuses_later_ones() {
    fail_under_leader(false);
}

#[test]
fn a_failed_fdatasync_of_the_leader_fails_everything_queued_behind_it_without_io() {
    fail_under_leader(true);
}

/// How a thread of the concurrency tests appends.
#[derive(Clone, Copy, Debug)]
enum Mode {
    Wait,
    Callback,
    Inline,
}

/// Runs `threads` appenders, each `per_thread` appends of 1–3 entries in a mode chosen per
/// append; indexes are assigned and queued under one lock. Returns the acknowledged last
/// indexes and the order in which callbacks ran. An append that fails stops its thread.
fn concurrent_appends(
    wal: &Arc<Wal>,
    threads: u64,
    per_thread: usize,
    seed: u64,
) -> (Vec<u64>, Vec<u64>) {
    let next = Arc::new(Mutex::new(1u64));
    let acked = Arc::new(Mutex::new(Vec::new()));
    let callback_order = Arc::new(Mutex::new(Vec::new()));
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let (wal, next, acked, order) = (
                wal.clone(),
                next.clone(),
                acked.clone(),
                callback_order.clone(),
            );
            let mut rng = StdRng::seed_from_u64(seed * 64 + t);
            std::thread::spawn(move || {
                for _ in 0..per_thread {
                    let n = rng.random_range(1..=3u64);
                    let mode = [Mode::Wait, Mode::Callback, Mode::Inline][rng.random_range(0..3)];
                    let mut next = next.lock().unwrap();
                    let first = *next;
                    *next += n;
                    let last = first + n - 1;
                    let recs = (first..=last).map(|i| entry(i, 1)).collect();
                    let result = match mode {
                        Mode::Wait => {
                            let ticket = wal.enqueue(recs);
                            drop(next);
                            ticket.wait()
                        }
                        Mode::Callback | Mode::Inline => {
                            let (tx, rx) = crossbeam_channel::bounded(1);
                            let order = order.clone();
                            let done = move |r: Result<AppendInfo, WalError>| {
                                if r.is_ok() {
                                    order.lock().unwrap().push(last);
                                }
                                let _ = tx.send(r);
                            };
                            if matches!(mode, Mode::Callback) {
                                wal.append(recs, done);
                                drop(next);
                            } else {
                                // Inline may flush here: the index lock must not be held, so
                                // take it back only for queue order (appended under it).
                                wal.append_inline(recs, done);
                                drop(next);
                            }
                            rx.recv().unwrap()
                        }
                    };
                    match result {
                        Ok(_) => acked.lock().unwrap().push(last),
                        Err(_) => return,
                    }
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    let order = callback_order.lock().unwrap().clone();
    (acked, order)
}

#[test]
fn many_threads_in_every_mode_all_replayed_and_callbacks_in_order() {
    for (vfs, order) in real_vfses()
        .into_iter()
        .flat_map(|v| LEAD_ORDERS.map(|o| (v.clone(), o)))
    {
        let tmp = tempfile::tempdir().unwrap();
        let (wal, _) = open_ordered(&vfs, tmp.path(), order);
        let wal = Arc::new(wal);
        let (acked, order) = concurrent_appends(&wal, 8, 40, 7);
        assert_eq!(acked.len(), 8 * 40);
        let mut sorted = order.clone();
        sorted.sort_unstable();
        assert_eq!(order, sorted, "callbacks run in append order");
        let max = acked.iter().copied().max().unwrap();
        wal.close().unwrap();
        let (wal, replay) = open(&vfs, tmp.path());
        assert_eq!(indexes(&replay), (1..=max).collect::<Vec<_>>());
        for e in &replay.entries {
            assert_eq!(e, &log_entry(e.index, 1));
        }
        wal.close().unwrap();
    }
}

/// Many threads in a closed loop of `append_wait`, so that batches hold parked waiters behind
/// spinning or leading ones: in every lead order each append gets its own outcome (the end
/// positions, ordered by index, strictly increase), none is left parked (the test would
/// hang), and every entry is replayed.
#[test]
fn closed_loop_waiters_each_get_their_own_outcome_in_every_lead_order() {
    for (vfs, order) in real_vfses()
        .into_iter()
        .flat_map(|v| LEAD_ORDERS.map(|o| (v.clone(), o)))
    {
        let tmp = tempfile::tempdir().unwrap();
        let (wal, _) = open_ordered(&vfs, tmp.path(), order);
        let next = Mutex::new(1u64);
        let ends = Mutex::new(Vec::new());
        let (threads, per_thread) = (24u64, 25u64);
        std::thread::scope(|s| {
            for _ in 0..threads {
                s.spawn(|| {
                    for _ in 0..per_thread {
                        let (index, ticket) = {
                            let mut n = next.lock().unwrap();
                            let index = *n;
                            *n += 1;
                            (index, wal.enqueue(vec![entry(index, 1)]))
                        };
                        let info = ticket.wait().unwrap();
                        let end = (info.segment_seq, info.end_offset);
                        ends.lock().unwrap().push((index, end));
                    }
                });
            }
        });
        let mut ends = ends.into_inner().unwrap();
        ends.sort_unstable();
        assert_eq!(ends.len() as u64, threads * per_thread);
        for w in ends.windows(2) {
            assert!(
                w[0].1 < w[1].1,
                "order {order:?}: {:?} then {:?}",
                w[0],
                w[1]
            );
        }
        wal.close().unwrap();
        let (wal, replay) = open(&vfs, tmp.path());
        assert_eq!(
            indexes(&replay),
            (1..=threads * per_thread).collect::<Vec<_>>(),
            "order {order:?}"
        );
        wal.close().unwrap();
    }
}

/// Power-cut property test for the rotating leader: appenders in all three modes, every lead
/// order of [`LEAD_ORDERS`] (each seed runs with each), a power cut at a random operation, reopen from a crash
/// image: every acknowledged entry is there, contiguous from 1.
#[test]
fn power_cut_under_rotating_leaders_keeps_every_acknowledged_record() {
    for case in 0..120u64 {
        let seed = 0x1ead_0000 + case / LEAD_ORDERS.len() as u64;
        let order = LEAD_ORDERS[case as usize % LEAD_ORDERS.len()];
        let mut rng = StdRng::seed_from_u64(seed);
        let fault = FaultVfs::new();
        let vfs: Arc<dyn Vfs> = Arc::new(fault.clone());
        let dir = Path::new("/data/member/wal");
        let (wal, _) = open_ordered(&vfs, dir, order);
        let cut_after = rng.random_range(0..300);
        fault.fail_at(fault.ops() + cut_after, Fault::PowerCut);
        let wal = Arc::new(wal);
        let (acked, _) = concurrent_appends(&wal, 6, 30, seed);
        let _ = wal.close();
        let mode = match rng.random_range(0..3) {
            0 => CrashMode::LoseUnsynced,
            1 => CrashMode::TornLastWrite {
                keep: rng.random_range(0..8192),
            },
            _ => CrashMode::RandomSectors { seed },
        };
        let image: Arc<dyn Vfs> = Arc::new(fault.crash_image(mode));
        let (wal2, replay) = Wal::open(image, dir, opts())
            .unwrap_or_else(|e| panic!("case {case} ({mode:?}, cut after {cut_after}): {e}"));
        let max_acked = acked.iter().copied().max().unwrap_or(0);
        let got = indexes(&replay);
        assert_eq!(
            got,
            (1..=got.len() as u64).collect::<Vec<_>>(),
            "case {case}"
        );
        assert!(
            got.len() as u64 >= max_acked,
            "case {case} ({mode:?}): acknowledged up to {max_acked}, replayed {}",
            got.len()
        );
        for e in &replay.entries {
            assert_eq!(e, &log_entry(e.index, 1), "case {case}");
        }
        wal2.close().unwrap();
    }
}

/// A gathering leader (`wake_gather`) waits only for waiters that were parked when their
/// outcome was stored: a ticket whose owner holds it without waiting is flushed with the
/// others and does not stall them (the closed-loop appenders would hang behind it otherwise),
/// and its `wait` later returns its own outcome.
#[test]
fn a_gathering_leader_waits_only_for_parked_waiters() {
    for vfs in real_vfses() {
        let tmp = tempfile::tempdir().unwrap();
        let (wal, _) = open_ordered(&vfs, tmp.path(), (false, false, true, false));
        let next = Mutex::new(1u64);
        let (threads, per_thread) = (8u64, 30u64);
        let mut held = None;
        let acked = std::thread::scope(|s| {
            let handles: Vec<_> = (0..threads)
                .map(|_| {
                    s.spawn(|| {
                        (0..per_thread)
                            .map(|_| {
                                let ticket = {
                                    let mut n = next.lock().unwrap();
                                    let index = *n;
                                    *n += 1;
                                    wal.enqueue(vec![entry(index, 1)])
                                };
                                ticket.wait().unwrap().flush_appends
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            // Queued among the others' appends, while leaders gather.
            while *next.lock().unwrap() < 40 {
                std::thread::yield_now();
            }
            held = Some({
                let mut n = next.lock().unwrap();
                let index = *n;
                *n += 1;
                wal.enqueue(vec![entry(index, 1)])
            });
            handles
                .into_iter()
                .flat_map(|h| h.join().unwrap())
                .collect::<Vec<_>>()
        });
        assert_eq!(acked.len() as u64, threads * per_thread);
        assert!(acked.iter().all(|&n| n >= 1));
        let info = held.unwrap().wait().unwrap();
        assert!(info.end_offset > 0);
        wal.close().unwrap();
        let (wal, replay) = open(&vfs, tmp.path());
        assert_eq!(
            indexes(&replay),
            (1..=1 + threads * per_thread).collect::<Vec<_>>()
        );
        wal.close().unwrap();
    }
}

#[test]
fn a_second_open_of_the_same_directory_fails_naming_the_lock_even_under_lock_dir() {
    let tmp = tempfile::tempdir().unwrap();
    let fault: Arc<dyn Vfs> = Arc::new(FaultVfs::new());
    let cases: Vec<(Arc<dyn Vfs>, PathBuf)> = vec![
        (Arc::new(StdVfs::new()), tmp.path().join("wal")),
        (
            Arc::new(UringVfs::new().unwrap()),
            tmp.path().join("wal-uring"),
        ),
        (fault, PathBuf::from("/data/wal")),
    ];
    for (vfs, dir) in cases {
        let (wal, _) = open(&vfs, &dir);
        wal.append_wait(vec![entry(1, 1)]).unwrap();
        let err = Wal::open(vfs.clone(), &dir, opts()).unwrap_err();
        assert!(matches!(err, WalError::Locked { .. }), "{err}");
        assert!(err.is_caller_mistake());
        let msg = err.to_string();
        assert!(
            msg.contains(&dir.join(LOCK_FILE).display().to_string())
                && msg.contains("file already locked"),
            "{msg}"
        );
        // The refused open changed nothing: the first WAL keeps working.
        wal.append_wait(vec![entry(2, 1)]).unwrap();
        wal.close().unwrap();
        let (wal, replay) = open(&vfs, &dir);
        assert_eq!(indexes(&replay), vec![1, 2]);
        drop(wal);
        // Dropping without close releases the lock too.
        let (wal, _) = open(&vfs, &dir);
        wal.close().unwrap();
        // A caller may take the lock first (before touching the rest of its data directory):
        // it then excludes every other opener, and opens the WAL under it, even twice.
        let lock = Wal::lock_dir(&vfs, &dir).unwrap();
        let err = Wal::open(vfs.clone(), &dir, opts()).unwrap_err();
        assert!(matches!(err, WalError::Locked { .. }), "{err}");
        assert!(matches!(
            Wal::lock_dir(&vfs, &dir),
            Err(WalError::Locked { .. })
        ));
        let (wal, replay) = Wal::open_locked(vfs.clone(), &lock, opts()).unwrap();
        assert_eq!(indexes(&replay), vec![1, 2]);
        wal.close().unwrap();
        let (wal, _) = Wal::open_locked(vfs.clone(), &lock, opts()).unwrap();
        wal.close().unwrap();
        drop(lock);
        let (wal, _) = open(&vfs, &dir);
        wal.close().unwrap();
    }
}

/// Replay streams a segment through a window (1 MiB, or one frame if larger) instead of
/// reading it whole: 4 MiB segments with records straddling many window refills, one record
/// larger than the window, and a torn tail far into the segment, all replay exactly.
#[test]
fn replay_streams_large_segments_in_bounded_reads() {
    const BIG_SEG: u64 = 4 << 20;
    let fault = FaultVfs::new();
    let (vfs, ctl) = gated(Arc::new(fault.clone()));
    let dir = Path::new("/data/wal");
    let o = || WalOptions {
        segment_size: BIG_SEG,
        ..WalOptions::default()
    };
    let (wal, _) = Wal::open(vfs.clone(), dir, o()).unwrap();
    let big = |i: u64| Bytes::from(vec![(i % 251) as u8; 1_500_000]);
    let mut want = Vec::new();
    let mut i = 1u64;
    // Records of 1–5 KiB and one of 1.5 MB (entry 1000), until the newest of at least two
    // segments holds more than 1.3 MB.
    let mut done = false;
    while !done {
        let data = if i == 1000 {
            big(i)
        } else {
            Bytes::from(vec![(i % 251) as u8; 1000 + (i as usize * 97) % 4000])
        };
        let e = LogEntry {
            index: i,
            term: 1,
            entry_type: 0,
            data,
        };
        want.push(e.clone());
        let info = wal.append_wait(vec![Record::Entry(e)]).unwrap();
        done = info.segment_seq >= 1 && info.end_offset > 1_300_000;
        i += 1;
    }
    let paths = wal.segment_paths();
    assert!(paths.len() >= 2, "{paths:?}");
    wal.close().unwrap();
    ctl.max_read.store(0, Ordering::SeqCst);
    let (wal, replay) = Wal::open(vfs.clone(), dir, o()).unwrap();
    assert_eq!(replay.entries, want);
    let max_read = ctl.max_read.load(Ordering::SeqCst);
    assert!(
        max_read <= 1_600_000,
        "replay read {max_read} bytes at once; segments are {BIG_SEG}"
    );
    wal.close().unwrap();
    // Tear the newest segment's last record: replay cuts it and keeps the rest.
    let last = paths.last().unwrap();
    let written = fault.written_contents(last).unwrap();
    let end = written.iter().rposition(|&b| b != 0).unwrap() as u64;
    assert!(
        end > 1 << 20,
        "the tear is past the first window: {end} in {paths:?}"
    );
    fault.corrupt(last, end - 10, &[0xff; 4]);
    let (wal, replay) = Wal::open(vfs, dir, o()).unwrap();
    assert_eq!(replay.entries[..], want[..want.len() - 1]);
    assert!(replay.truncated_tail.is_some());
    wal.close().unwrap();
}

/// A callback that appends again with `append_inline` (as a raft core's persist callback could)
/// does not deadlock on the delivery it runs in: its append goes to the flush thread.
#[test]
fn an_inline_append_from_a_callback_is_handed_to_the_flush_thread() {
    let tmp = tempfile::tempdir().unwrap();
    let (vfs, ctl) = gated(Arc::new(StdVfs::new()));
    let (wal, _) = Wal::open(vfs, tmp.path(), opts()).unwrap();
    let wal = Arc::new(wal);
    let (tx, rx) = unbounded();
    let (wal2, tx2) = (wal.clone(), tx.clone());
    wal.append_inline(vec![entry(1, 1)], move |r| {
        r.unwrap();
        append_inline(&wal2, 2, vec![entry(2, 1)], &tx2);
        let _ = tx2.send((
            1,
            Ok(AppendInfo {
                flush_records: 0,
                flush_appends: 0,
                flush_bytes: 0,
                segment_seq: 0,
                end_offset: 0,
            }),
        ));
    });
    let mut got: Vec<Outcome> = (0..2).map(|_| rx.recv().unwrap()).collect();
    got.sort_by_key(|(id, _)| *id);
    assert_eq!(got[1].0, 2);
    assert_eq!(got[1].1.as_ref().unwrap().flush_appends, 1);
    assert_eq!(last_flusher(&ctl), "ringkv-wal");
    wal.close().unwrap();
}

/// New segments are zero-filled while flushes are small and only preallocated once they are
/// large (`zero_fill_below`); either way they replay exactly, on real file systems too
/// (unwritten extents read as zeros).
#[test]
fn zero_fill_of_new_segments_follows_the_flush_size() {
    // (zero_fill_below, entries per append, payload bytes per entry, whether every segment
    // is zero-filled)
    let cases = [
        (u64::MAX, 1, 1000, true),
        (0, 1, 1000, false),
        (12 << 10, 1, 1000, true),
        (12 << 10, 2, 7000, false),
    ];
    for inner in real_vfses() {
        for (below, per_append, size, filled) in cases {
            // The average flush size needs several flushes to pass the threshold; with 16 KiB
            // segments that is several segments.
            let segments: usize = if filled || below == 0 { 12 } else { 24 };
            let tmp = tempfile::tempdir().unwrap();
            let (vfs, ctl) = gated(inner.clone());
            let o = || WalOptions {
                zero_fill_below: below,
                ..opts()
            };
            let (wal, _) = Wal::open(vfs.clone(), tmp.path(), o()).unwrap();
            let mut want = Vec::new();
            let mut i = 1;
            while wal.segment_paths().len() < segments {
                let mut recs = Vec::new();
                for _ in 0..per_append {
                    let e = LogEntry {
                        index: i,
                        term: 1,
                        entry_type: 0,
                        data: Bytes::from(vec![i as u8; size]),
                    };
                    want.push(e.clone());
                    recs.push(Record::Entry(e));
                    i += 1;
                }
                wal.append_wait(recs).unwrap();
            }
            wal.close().unwrap();
            let zeroed = ctl.plain_written.load(Ordering::SeqCst) as u64;
            let case = format!("below {below}, {per_append} × {size} B: {zeroed} B zero-filled");
            assert_eq!(zeroed % SEG, 0, "{case}");
            if filled {
                assert!(zeroed >= segments as u64 * SEG, "{case}");
            } else if below == 0 {
                assert_eq!(zeroed, 0, "{case}");
            } else {
                assert!(zeroed <= segments as u64 / 2 * SEG, "{case}");
            }
            let (wal, replay) = Wal::open(vfs, tmp.path(), o()).unwrap();
            assert_eq!(replay.entries, want, "{case}");
            wal.close().unwrap();
        }
    }
}

/// A panicking callback (a caller bug) costs its own thread, not the WAL: later appends are
/// still delivered in order and `close` returns.
#[test]
fn a_panicking_callback_does_not_stall_later_appends_or_close() {
    let tmp = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(Arc::new(StdVfs::new()), tmp.path(), opts()).unwrap();
    let wal = Arc::new(wal);
    let w = wal.clone();
    let panicked = std::thread::spawn(move || {
        w.append_inline(vec![entry(1, 1)], |r| {
            r.unwrap();
            panic!("callback bug");
        });
    })
    .join();
    assert!(
        panicked.is_err(),
        "the callback ran, and panicked, on the appending thread"
    );
    wal.append_wait(vec![entry(2, 1)]).unwrap();
    wal.close().unwrap();
    let (wal, replay) = open(&(Arc::new(StdVfs::new()) as Arc<dyn Vfs>), tmp.path());
    assert_eq!(indexes(&replay), vec![1, 2]);
    wal.close().unwrap();
}

/// A full queue of tickets nobody waits on yet (their owner is the blocked appender itself) is
/// drained by the flush thread instead of deadlocking.
#[test]
fn a_full_queue_of_unwaited_tickets_is_drained_by_the_flush_thread() {
    let tmp = tempfile::tempdir().unwrap();
    let o = WalOptions {
        queue_capacity: 4,
        ..opts()
    };
    let (wal, _) = Wal::open(Arc::new(StdVfs::new()), tmp.path(), o).unwrap();
    let tickets: Vec<AppendTicket> = (1..=12).map(|i| wal.enqueue(vec![entry(i, 1)])).collect();
    for t in tickets {
        t.wait().unwrap();
    }
    wal.close().unwrap();
    let (wal, replay) = open(&(Arc::new(StdVfs::new()) as Arc<dyn Vfs>), tmp.path());
    assert_eq!(indexes(&replay), (1..=12).collect::<Vec<_>>());
    wal.close().unwrap();
}

/// The writer's staging buffer is not cleared after a flush, only padded before the next one:
/// a large flush followed by a small one must leave zeros (not the large record's bytes) after
/// the small one's records on disk. Stale bytes there would make the next open cut a "torn
/// tail".
#[test]
fn a_small_flush_after_a_large_one_pads_with_zeros() {
    for vfs in real_vfses() {
        let tmp = tempfile::tempdir().unwrap();
        let (wal, _) = open(&vfs, tmp.path());
        let big = |index: u64, fill: u8| {
            Record::Entry(LogEntry {
                index,
                term: 1,
                entry_type: 0,
                data: Bytes::from(vec![fill; 3000]),
            })
        };
        wal.append_wait(vec![big(1, 0xEE)]).unwrap();
        wal.append_wait(vec![entry(2, 1)]).unwrap();
        wal.append_wait(vec![big(3, 0xDD), big(4, 0xCC)]).unwrap();
        wal.append_wait(vec![entry(5, 1)]).unwrap();
        wal.close().unwrap();
        let (wal, replay) = open(&vfs, tmp.path());
        assert_eq!(indexes(&replay), vec![1, 2, 3, 4, 5]);
        assert_eq!(replay.truncated_tail, None);
        assert_eq!(wal.segment_paths().len(), 1);
        wal.close().unwrap();
    }
}

/// Actions deferred with `after_delivery` by the callbacks of one flush run on the delivering
/// thread once every callback of that flush ran, in order (one hand-off per flush is then
/// possible); outside a delivery they run at once; a panicking action does not cost the other
/// actions or later appends anything, and its panic continues on the delivering thread.
#[test]
fn actions_deferred_by_callbacks_run_after_the_whole_flush_was_delivered() {
    let tmp = tempfile::tempdir().unwrap();
    let (vfs, ctl) = gated(Arc::new(StdVfs::new()));
    let (wal, _) = Wal::open(vfs, tmp.path(), opts()).unwrap();
    let wal = Arc::new(wal);
    let now = Arc::new(Mutex::new(false));
    let n2 = now.clone();
    after_delivery(move || *n2.lock().unwrap() = true);
    assert!(
        *now.lock().unwrap(),
        "outside a delivery the action runs at once"
    );
    ctl.close_gate();
    let leader = lead_a_blocked_flush(&wal, &ctl);
    let log = Arc::new(Mutex::new(Vec::<String>::new()));
    for i in 2..=4u64 {
        let log = log.clone();
        wal.append(vec![entry(i, 1)], move |r| {
            assert_eq!(r.unwrap().flush_appends, 3);
            log.lock().unwrap().push(format!("callback {i}"));
            let log = log.clone();
            after_delivery(move || {
                log.lock().unwrap().push(format!("action {i}"));
                assert_ne!(i, 3, "deferred action panics");
            });
        });
    }
    assert!(log.lock().unwrap().is_empty());
    ctl.open_gate();
    // The leader flushes [2, 3, 4] next and delivers it: the panic of action 3 ends up there.
    assert!(
        leader.join().is_err(),
        "the action's panic reached the deliverer"
    );
    assert_eq!(
        *log.lock().unwrap(),
        [
            "callback 2",
            "callback 3",
            "callback 4",
            "action 2",
            "action 3",
            "action 4"
        ]
    );
    wal.append_wait(vec![entry(5, 1)]).unwrap();
    wal.close().unwrap();
}

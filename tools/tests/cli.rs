//! `ringkv-util` against data directories written with the engine's own WAL, backend and
//! snapshot code, healthy and damaged.

use std::fs::OpenOptions as FsOpen;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;

use bytes::Bytes;
use ringkv_engine::{
    Backend, BackendOptions, BatchWrite, Bucket, HardState, LogEntry, RaftConfState, Record,
    SnapDir, SnapshotMeta, StdVfs, Vfs, Wal, WalOptions,
};

const ENTRIES: u64 = 200;
const KEYS: u64 = 2000;

fn vfs() -> Arc<dyn Vfs> {
    Arc::new(StdVfs::new())
}

fn wal_dir(root: &Path) -> PathBuf {
    root.join("member/wal")
}

fn db_path(root: &Path) -> PathBuf {
    root.join("member/snap/db")
}

fn wal_opts() -> WalOptions {
    WalOptions {
        segment_size: 64 << 10,
        direct: false,
        ..WalOptions::default()
    }
}

/// A stopped member's data directory: WAL entries 1..=200 over several segments, a snapshot at
/// 100, a backend at consistent index `ci` holding `KEYS` revisions.
fn data_dir(ci: u64) -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(vfs(), &wal_dir(root.path()), wal_opts()).unwrap();
    for index in 1..=ENTRIES {
        let entry = Record::Entry(LogEntry {
            index,
            term: 1,
            entry_type: 0,
            data: Bytes::from(vec![index as u8; 1000]),
        });
        let hs = Record::HardState(HardState {
            term: 1,
            vote: 1,
            commit: index,
        });
        wal.append_wait(vec![entry, hs]).unwrap();
    }
    wal.close().unwrap();

    let snap = SnapDir::new(vfs(), &root.path().join("member/snap"));
    std::fs::create_dir_all(snap.dir()).unwrap();
    let conf_state = RaftConfState {
        voters: vec![1],
        ..Default::default()
    };
    snap.save(&SnapshotMeta {
        index: 100,
        term: 1,
        conf_state,
    })
    .unwrap();

    let backend = Backend::open(vfs(), &db_path(root.path()), BackendOptions::default()).unwrap();
    let mut batch = backend.batch().unwrap();
    for rev in 2..KEYS + 2 {
        let mut key = rev.to_be_bytes().to_vec();
        key.push(b'_');
        key.extend_from_slice(&0u64.to_be_bytes());
        batch.put(Bucket::Key, &key, &[7u8; 100]).unwrap();
    }
    batch
        .put(Bucket::Meta, b"consistent_index", &ci.to_be_bytes())
        .unwrap();
    batch.commit().unwrap();
    // A second, small commit: most pages now belong to the first one.
    batch
        .put(Bucket::Meta, b"scheduledCompactRev", &[0; 17])
        .unwrap();
    batch.commit().unwrap();
    drop(batch);
    drop(backend);
    root
}

fn util(args: &[&str], root: &Path) -> (Output, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ringkv-util"))
        .args(args)
        .arg(root)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out, text)
}

fn flip(path: &Path, offset: u64) {
    let f = FsOpen::new().read(true).write(true).open(path).unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, offset).unwrap();
    f.write_all_at(&[b[0] ^ 0x10], offset).unwrap();
}

fn read_file(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap()
}

/// The WAL segments, oldest first.
fn segments(root: &Path) -> Vec<PathBuf> {
    let mut segs: Vec<PathBuf> = std::fs::read_dir(wal_dir(root))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "wal"))
        .collect();
    segs.sort();
    segs
}

#[test]
fn a_healthy_data_dir_checks_ok_with_its_positions() {
    let root = data_dir(150);
    let (out, text) = util(&["check"], root.path());
    assert!(out.status.success(), "{text}");
    assert!(text.contains("wal entries: 1..=200"), "{text}");
    assert!(
        text.contains("wal hard state: term=1 vote=1 commit=200"),
        "{text}"
    );
    assert!(text.contains(" index=100 term=1 voters=[1]"), "{text}");
    assert!(text.contains("backend consistent index: 150"), "{text}");
    assert!(text.contains("mvcc revision: 2001 compacted: 0"), "{text}");
    assert!(text.contains("key=2000"), "{text}");
    assert!(text.contains("result: ok"), "{text}");
    assert!(segments(root.path()).len() > 2, "several segments expected");
}

#[test]
fn wal_dump_prints_every_record_in_order() {
    let root = data_dir(150);
    let (out, text) = util(&["wal", "dump"], root.path());
    assert!(out.status.success(), "{text}");
    let entries: Vec<&str> = text.lines().filter(|l| l.contains(" entry ")).collect();
    assert_eq!(entries.len() as u64, ENTRIES, "{text}");
    assert!(entries[0].contains("entry index=1 term=1 type=normal bytes=1000"));
    assert!(entries[199].contains("entry index=200 term=1"));
    let hard_states = text.lines().filter(|l| l.contains(" hard-state ")).count();
    assert!(hard_states as u64 >= ENTRIES, "{text}");
}

#[test]
fn a_damaged_wal_record_is_named_by_file_and_offset_and_left_as_it_is() {
    let root = data_dir(150);
    let first = segments(root.path())[0].clone();
    let (_, dump) = util(&["wal", "dump"], root.path());
    // The offset of the first entry of the oldest segment, from the dump.
    let name = first.file_name().unwrap().to_str().unwrap().to_owned();
    let line = dump
        .lines()
        .find(|l| l.starts_with(&name) && l.contains(" entry index=2 "))
        .unwrap_or_else(|| panic!("{dump}"));
    let offset: u64 = line.split(' ').nth(1).unwrap().parse().unwrap();
    flip(&first, offset + 40);
    let before = read_file(&first);

    let (out, text) = util(&["check"], root.path());
    assert_eq!(out.status.code(), Some(1), "{text}");
    let want = format!(
        "problem: WAL corrupt: {} at offset {offset}",
        first.display()
    );
    assert!(text.contains(&want), "want {want:?} in\n{text}");
    assert!(text.contains("result: 1 problem(s)"), "{text}");
    assert_eq!(read_file(&first), before, "check must not change the WAL");

    let (out, text) = util(&["wal", "dump"], root.path());
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains(&want), "{text}");
}

#[test]
fn a_torn_tail_is_reported_but_not_cut() {
    let root = data_dir(150);
    let newest = segments(root.path()).pop().unwrap();
    let (_, dump) = util(&["check"], root.path());
    let name = newest.file_name().unwrap().to_str().unwrap().to_owned();
    let end: u64 = dump
        .lines()
        .find(|l| l.trim_start().starts_with(&name))
        .and_then(|l| l.split(" end=").nth(1))
        .and_then(|s| s.split(' ').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{dump}"));
    let f = FsOpen::new().write(true).open(&newest).unwrap();
    f.write_all_at(&[0xab; 100], end + 8).unwrap();
    drop(f);
    let before = read_file(&newest);

    let (out, text) = util(&["check"], root.path());
    assert!(
        out.status.success(),
        "a torn tail is not corruption: {text}"
    );
    assert!(
        text.contains(&format!("torn tail: 108 bytes after offset {end}")),
        "{text}"
    );
    assert_eq!(read_file(&newest), before, "check must not cut the tail");
}

/// Flips a byte in the middle of each page from page 2 on until `seen` says the engine noticed;
/// returns that page (the flip stays).
fn damage_first_page(db: &Path, seen: impl Fn() -> bool) -> (u64, u64) {
    let stats = Backend::open_read_only(vfs(), db).unwrap().0.stats();
    for page in 2..stats.page_count {
        let offset = page * stats.page_size + stats.page_size / 2;
        flip(db, offset);
        if seen() {
            return (page, stats.page_size);
        }
        flip(db, offset);
    }
    panic!("no page's damage was seen: {stats:?}");
}

#[test]
fn a_damaged_backend_page_is_named_and_left_as_it_is() {
    let root = data_dir(150);
    let db = db_path(root.path());
    // A page of the first commit: only the checker reads it.
    let (page, ps) = damage_first_page(&db, || {
        let (b, incomplete) = Backend::open_read_only(vfs(), &db).unwrap();
        incomplete.is_none() && !b.check().is_ok()
    });
    let before = read_file(&db);
    let (out, text) = util(&["check"], root.path());
    assert_eq!(out.status.code(), Some(1), "{text}");
    let want = format!(
        "corrupt backend file {}: page {page} (offset {})",
        db.display(),
        page * ps
    );
    assert!(text.contains(&want), "want {want:?} in\n{text}");
    assert_eq!(read_file(&db), before, "check must not write the backend");
}

#[test]
fn a_damaged_page_of_the_newest_commit_reads_the_older_one_without_writing() {
    let root = data_dir(150);
    let db = db_path(root.path());
    let (page, ps) = damage_first_page(&db, || {
        Backend::open_read_only(vfs(), &db).unwrap().1.is_some()
    });
    let before = read_file(&db);
    let (out, text) = util(&["check"], root.path());
    // The older commit holds the same consistent index and the WAL covers everything after it.
    assert!(out.status.success(), "{text}");
    let want = format!(
        "newest commit txid=3 did not fully reach the disk (page {page}, offset {}",
        page * ps
    );
    assert!(text.contains(&want), "want {want:?} in\n{text}");
    assert!(text.contains("reading txid=2 as a start would"), "{text}");
    assert!(text.contains("backend consistent index: 150"), "{text}");
    assert_eq!(
        read_file(&db),
        before,
        "the incomplete meta must not be replaced"
    );
}

#[test]
fn a_backend_behind_the_wal_start_is_a_problem() {
    let root = data_dir(10);
    let (wal, _) = Wal::open(vfs(), &wal_dir(root.path()), wal_opts()).unwrap();
    assert!(wal.purge_below(100).unwrap() > 0);
    wal.close().unwrap();
    let (out, text) = util(&["check"], root.path());
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("the backend is at index 10 but the WAL's entries start at"),
        "{text}"
    );
    assert!(
        text.contains(
            "the newest snapshot covers index 100 but the backend's consistent index is 10"
        ),
        "{text}"
    );
}

#[test]
fn a_missing_backend_is_a_problem_and_is_not_created() {
    let root = data_dir(150);
    std::fs::remove_file(db_path(root.path())).unwrap();
    let (out, text) = util(&["check"], root.path());
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("db: missing"), "{text}");
    let (out, text) = util(&["backend", "stat"], root.path());
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        !db_path(root.path()).exists(),
        "stat must not create the file"
    );
}

#[test]
fn backend_stat_prints_pages_keys_and_position() {
    let root = data_dir(150);
    let (out, text) = util(&["backend", "stat"], root.path());
    assert!(out.status.success(), "{text}");
    assert!(text.contains("backend: txid="), "{text}");
    assert!(text.contains("key=2000 meta=2"), "{text}");
    assert!(text.contains("mvcc revision: 2001"), "{text}");
}

#[test]
fn a_data_dir_in_use_is_refused() {
    let root = data_dir(150);
    let _lock = Wal::lock_dir(&vfs(), &wal_dir(root.path())).unwrap();
    for args in [&["check"][..], &["wal", "dump"], &["backend", "stat"]] {
        let (out, text) = util(args, root.path());
        assert_eq!(out.status.code(), Some(1), "{text}");
        assert!(
            text.contains("is in use: a running member holds its lock"),
            "{text}"
        );
    }
}

#[test]
fn a_directory_without_a_wal_is_not_a_data_dir() {
    let root = tempfile::tempdir().unwrap();
    let (out, text) = util(&["check"], root.path());
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("is not a ringkv data directory"), "{text}");
    assert!(!wal_dir(root.path()).exists(), "nothing may be created");
}

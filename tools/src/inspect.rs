//! The inspection commands. Each takes the WAL directory's lock first, so that a running node
//! (which holds it) is never inspected mid-write, and prints to `out`; `Ok(false)` means it
//! found a problem, which it has printed.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ringkv_engine::{
    Backend, BackendError, Bucket, CheckReport, IncompleteCommit, KvRead, Record, SnapDir,
    SnapError, StdVfs, Vfs, Wal, WalDirLock, WalError, WalInspection, inspect_wal,
};

/// Where the files live under `--data-dir` (engine/docs/format.md, "Data directory").
const WAL_DIR: &str = "member/wal";
const SNAP_DIR: &str = "member/snap";
const BACKEND_FILE: &str = "member/snap/db";

/// `meta` bucket keys (format.md, "MVCC buckets").
const CONSISTENT_INDEX: &[u8] = b"consistent_index";
const FINISHED_COMPACT: &[u8] = b"finishedCompactRev";

#[derive(Debug, thiserror::Error)]
pub enum UtilError {
    #[error("{} is not a ringkv data directory (no {WAL_DIR} in it)", .0.display())]
    NotADataDir(PathBuf),
    #[error(
        "{} is in use: a running member holds its lock {} (stop it first)",
        dir.display(),
        lock.display()
    )]
    InUse { dir: PathBuf, lock: PathBuf },
    #[error(transparent)]
    Wal(WalError),
    #[error(transparent)]
    Backend(BackendError),
    #[error(transparent)]
    Snap(SnapError),
    #[error("writing the output: {0}")]
    Output(#[from] io::Error),
}

struct DataDir {
    vfs: Arc<dyn Vfs>,
    root: PathBuf,
    _lock: WalDirLock,
}

impl DataDir {
    /// Locks `root`'s WAL directory. The lock is the node's own: a running member holds it.
    fn lock(root: &Path) -> Result<DataDir, UtilError> {
        let vfs: Arc<dyn Vfs> = Arc::new(StdVfs::new());
        let wal = root.join(WAL_DIR);
        if !wal.is_dir() {
            return Err(UtilError::NotADataDir(root.to_path_buf()));
        }
        let lock = Wal::lock_dir(&vfs, &wal).map_err(|e| match e {
            WalError::Locked { dir, lock } => UtilError::InUse { dir, lock },
            e => UtilError::Wal(e),
        })?;
        Ok(DataDir {
            vfs,
            root: root.to_path_buf(),
            _lock: lock,
        })
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }
}

/// The backend's MVCC position, read from its `meta` and `key` buckets.
struct MvccPosition {
    /// The newest commit, when it did not fully reach the disk (the state read is the older).
    incomplete: Option<IncompleteCommit>,
    consistent_index: Option<u64>,
    /// Largest main revision in the `key` bucket (0 if empty), and the finished compaction.
    revision: u64,
    compacted: u64,
    report: CheckReport,
    /// Reads of the position that failed (a damaged page the checker names too).
    read_errors: Vec<String>,
}

fn read_backend(dir: &DataDir) -> Result<(Backend, MvccPosition), UtilError> {
    let (backend, incomplete) = Backend::open_read_only(dir.vfs.clone(), &dir.path(BACKEND_FILE))
        .map_err(UtilError::Backend)?;
    let report = backend.check();
    let snap = backend.snapshot();
    let mut read_errors = Vec::new();
    let mut meta_u64 = |key: &[u8]| match snap.get(Bucket::Meta, key) {
        Ok(None) => None,
        Ok(Some(v)) => match <[u8; 8]>::try_from(&v[..]) {
            Ok(b) => Some(u64::from_be_bytes(b)),
            Err(_) => {
                read_errors.push(format!(
                    "meta bucket: {} is {} bytes, not 8",
                    String::from_utf8_lossy(key),
                    v.len()
                ));
                None
            }
        },
        Err(e) => {
            read_errors.push(e.to_string());
            None
        }
    };
    let consistent_index = meta_u64(CONSISTENT_INDEX);
    let compacted = meta_u64(FINISHED_COMPACT).unwrap_or(0);
    let mut revision = 0;
    let scanned = snap.scan(Bucket::Key, &[], &[], &mut |k, _| {
        if let Some(main) = k.get(..8) {
            revision = revision.max(u64::from_be_bytes(main.try_into().expect("8 bytes")));
        }
        true
    });
    if let Err(e) = scanned {
        read_errors.push(e.to_string());
    }
    Ok((
        backend,
        MvccPosition {
            incomplete,
            consistent_index,
            revision: revision.max(compacted),
            compacted,
            report,
            read_errors,
        },
    ))
}

fn bucket_name(name: &[u8]) -> String {
    String::from_utf8_lossy(name).into_owned()
}

fn describe(rec: &Record) -> String {
    match rec {
        Record::Entry(e) => format!(
            "entry index={} term={} type={} bytes={}",
            e.index,
            e.term,
            match e.entry_type {
                0 => "normal",
                1 => "conf-change",
                2 => "conf-change-v2",
                _ => "unknown",
            },
            e.data.len()
        ),
        Record::HardState(h) => {
            format!(
                "hard-state term={} vote={} commit={}",
                h.term, h.vote, h.commit
            )
        }
        Record::Snapshot(s) => format!("snapshot index={} term={}", s.index, s.term),
        Record::Metadata(m) => format!("metadata bytes={}", m.len()),
    }
}

fn file_name(p: &Path) -> String {
    p.file_name().map_or_else(
        || p.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

/// `ringkv-util check`.
pub fn check(root: &Path, out: &mut dyn Write) -> Result<bool, UtilError> {
    let dir = DataDir::lock(root)?;
    let mut problems: Vec<String> = Vec::new();
    writeln!(out, "data dir: {} (not in use)", root.display())?;

    // Snapshot metadata: every file must load; the node uses the newest that does.
    let snap_dir = SnapDir::new(dir.vfs.clone(), &dir.path(SNAP_DIR));
    let snaps = snap_dir.list_read_only().map_err(UtilError::Snap)?;
    let mut newest = None;
    for f in &snaps {
        match snap_dir.load(f) {
            Ok(meta) => {
                writeln!(
                    out,
                    "snapshot: {} index={} term={} voters={:?} learners={:?}",
                    file_name(&f.path),
                    meta.index,
                    meta.term,
                    meta.conf_state.voters,
                    meta.conf_state.learners
                )?;
                newest = Some(meta.index);
            }
            Err(e) => problems.push(e.to_string()),
        }
    }
    if snaps.is_empty() {
        writeln!(out, "snapshot: none")?;
    }

    // The WAL, replayed with the node's checks.
    let wal = match inspect_wal(&*dir.vfs, &dir.path(WAL_DIR), &mut |_, _, _| {}) {
        Ok(w) => {
            print_wal_summary(&w, out)?;
            Some(w)
        }
        Err(e) => {
            problems.push(e.to_string());
            None
        }
    };

    // The backend, with the full checker.
    let backend_path = dir.path(BACKEND_FILE);
    let position = if !backend_path.exists() {
        problems.push(format!("{}: missing", backend_path.display()));
        None
    } else {
        match read_backend(&dir) {
            Ok((backend, pos)) => {
                print_backend(&backend, &pos, out)?;
                let ps = backend.stats().page_size;
                if pos.report.is_ok() {
                    problems.extend(pos.read_errors.iter().cloned());
                }
                for p in &pos.report.problems {
                    problems.push(format!(
                        "corrupt backend file {}: page {} (offset {}): {}",
                        backend_path.display(),
                        p.page,
                        p.page * ps,
                        p.reason
                    ));
                }
                Some(pos)
            }
            Err(e) => {
                problems.push(e.to_string());
                None
            }
        }
    };

    // The rules that tie the three together (format.md, "Raft snapshot metadata", "Rules").
    if let Some(ci) = position.as_ref().and_then(|p| p.consistent_index) {
        if let Some(s) = newest
            && s > ci
        {
            let pending = snap_dir.db_path(s);
            if pending.exists() {
                writeln!(
                    out,
                    "note: snapshot {s} is being installed from {} (the next start finishes it)",
                    file_name(&pending)
                )?;
            } else {
                problems.push(format!(
                    "the newest snapshot covers index {s} but the backend's consistent index is {ci}, and no {} holds it",
                    file_name(&pending)
                ));
            }
        }
        if let Some((first, last)) = wal.as_ref().and_then(|w| w.entries)
            && last > ci
            && first > ci + 1
        {
            problems.push(format!(
                "the backend is at index {ci} but the WAL's entries start at {first}: entries {}..={} are missing",
                ci + 1,
                first - 1
            ));
        }
    }

    for p in &problems {
        writeln!(out, "problem: {p}")?;
    }
    if problems.is_empty() {
        writeln!(out, "result: ok")?;
    } else {
        writeln!(out, "result: {} problem(s)", problems.len())?;
    }
    Ok(problems.is_empty())
}

fn print_wal_summary(w: &WalInspection, out: &mut dyn Write) -> Result<(), UtilError> {
    let records: u64 = w.segments.iter().map(|s| s.records).sum();
    writeln!(
        out,
        "wal: {} segment(s), {records} record(s)",
        w.segments.len()
    )?;
    for s in &w.segments {
        writeln!(
            out,
            "  {} records={} end={} size={}",
            file_name(&s.path),
            s.records,
            s.end,
            s.size
        )?;
        if s.torn_bytes > 0 {
            writeln!(
                out,
                "  torn tail: {} bytes after offset {} (the next start cuts them)",
                s.torn_bytes, s.end
            )?;
        }
    }
    match w.entries {
        Some((a, b)) => writeln!(out, "wal entries: {a}..={b}")?,
        None => writeln!(out, "wal entries: none")?,
    }
    if let Some(h) = w.hard_state {
        writeln!(
            out,
            "wal hard state: term={} vote={} commit={}",
            h.term, h.vote, h.commit
        )?;
    }
    if let Some(s) = w.snapshot {
        writeln!(
            out,
            "wal snapshot marker: index={} term={}",
            s.index, s.term
        )?;
    }
    for l in &w.leftovers {
        writeln!(
            out,
            "  leftover {} (the next start deletes it)",
            file_name(l)
        )?;
    }
    Ok(())
}

fn print_backend(b: &Backend, pos: &MvccPosition, out: &mut dyn Write) -> Result<(), UtilError> {
    let s = b.stats();
    if let Some(c) = &pos.incomplete {
        // A crash between a commit's writes and its fdatasync looks the same as damage to a
        // page of that commit: the node opens the older meta and replays the WAL from there.
        writeln!(
            out,
            "backend: newest commit txid={} did not fully reach the disk (page {}, offset {}: {}); \
             reading txid={} as a start would, and replaying the WAL from its consistent index",
            c.txid,
            c.page,
            c.page * s.page_size,
            c.reason,
            c.opened_txid
        )?;
    }
    writeln!(
        out,
        "backend: txid={} page_size={} pages={} free={} pending={} live_bytes={} file_bytes={}",
        s.txid,
        s.page_size,
        s.page_count,
        s.free_pages,
        s.pending_pages,
        s.live_bytes,
        s.file_bytes
    )?;
    let mut keys: Vec<String> = pos
        .report
        .keys
        .iter()
        .map(|(name, n)| format!("{}={n}", bucket_name(name)))
        .collect();
    keys.sort();
    writeln!(out, "backend keys: {}", keys.join(" "))?;
    match pos.consistent_index {
        Some(ci) => writeln!(out, "backend consistent index: {ci}")?,
        None => writeln!(out, "backend consistent index: none")?,
    }
    writeln!(
        out,
        "mvcc revision: {} compacted: {}",
        pos.revision, pos.compacted
    )?;
    Ok(())
}

/// `ringkv-util wal dump`.
pub fn wal_dump(root: &Path, out: &mut dyn Write) -> Result<bool, UtilError> {
    let dir = DataDir::lock(root)?;
    let mut failed: Option<io::Error> = None;
    let result = inspect_wal(&*dir.vfs, &dir.path(WAL_DIR), &mut |seg, pos, rec| {
        if failed.is_none()
            && let Err(e) = writeln!(out, "{} {pos} {}", file_name(seg), describe(rec))
        {
            failed = Some(e);
        }
    });
    if let Some(e) = failed {
        return Err(UtilError::Output(e));
    }
    match result {
        Ok(w) => {
            print_wal_summary(&w, out)?;
            Ok(true)
        }
        Err(e) => {
            writeln!(out, "problem: {e}")?;
            Ok(false)
        }
    }
}

/// `ringkv-util backend stat`.
pub fn backend_stat(root: &Path, out: &mut dyn Write) -> Result<bool, UtilError> {
    let dir = DataDir::lock(root)?;
    let (backend, pos) = read_backend(&dir)?;
    print_backend(&backend, &pos, out)?;
    for p in &pos.report.problems {
        writeln!(out, "problem: page {}: {}", p.page, p.reason)?;
    }
    if pos.report.is_ok() {
        for e in &pos.read_errors {
            writeln!(out, "problem: {e}")?;
        }
    }
    Ok(pos.report.is_ok() && pos.read_errors.is_empty())
}

//! The fault-injecting implementation of the I/O seam, for tests.
//!
//! Files live in memory. Each file keeps two images:
//! - **written**: what reads return (the page cache's view);
//! - **durable**: what a power cut would leave, i.e. the state as of the last successful
//!   `sync_data` of that file, plus nothing else.
//!
//! Between syncs, every mutation (write, set_len, allocate) is also queued as *pending*; a
//! successful `sync_data` applies the queue to the durable image (cost proportional to the bytes
//! written since the previous sync, not to the file size). Directory entries follow the same rule:
//! creating, removing or renaming a file changes the live namespace at once and the durable
//! namespace only at `sync_dir` of the parent. Directories themselves are treated as durable as
//! soon as they are created (ringkv creates its directory tree once, before any data).
//!
//! Every mutating call counts as one *operation* (`write_at_and_sync` is two: the write, then the
//! sync, so a crash can fall between them). [`FaultVfs::fail_at`] makes operation N fail; with
//! [`Fault::PowerCut`] that operation and every later one fail with `EIO` and change nothing, so the
//! code under test stops where a machine losing power would. [`FaultVfs::crash_image`] then builds a
//! fresh `FaultVfs` holding what survived, according to a [`CrashMode`].
//!
//! A failed `sync_data` behaves like Linux's: the pending writes are dropped from the durable path
//! (their pages are marked clean) while reads still return them, so a later sync that "succeeds"
//! has made nothing durable. This is the trap that makes fsync errors fatal.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::io;
use std::os::fd::RawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;

use super::{File, IoKind, OpenOptions, Vfs, check_direct};

/// Sector size used when a crash keeps part of an unsynced write.
pub const SECTOR: usize = 512;

/// What operation N does when [`FaultVfs::fail_at`] selects it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// This one operation fails with `EIO`; later operations work.
    Eio,
    /// This one operation fails with `ENOSPC`; later operations work.
    Enospc,
    /// A write lands only its first half (rounded down to a sector) and fails with `EIO`; any
    /// other operation fails with `EIO`.
    ShortWrite,
    /// This operation and every later one fail with `EIO` and change nothing.
    PowerCut,
}

/// Which unsynced mutations a crash image keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrashMode {
    /// Only durable state survives.
    LoseUnsynced,
    /// Durable state, plus the first `keep` bytes (rounded down to a sector) of the very last
    /// unsynced write in the whole file system: a torn final write.
    TornLastWrite { keep: usize },
    /// Durable state, plus a random subset of unsynced sectors and length changes, applied in
    /// order (a disk may persist any subset of what it was given before the cut).
    RandomSectors { seed: u64 },
}

#[derive(Clone, Debug)]
enum Pending {
    Write {
        seq: u64,
        offset: u64,
        data: Vec<u8>,
    },
    SetLen {
        len: u64,
    },
}

#[derive(Clone, Debug, Default)]
struct Inode {
    written: Vec<u8>,
    durable: Vec<u8>,
    pending: Vec<Pending>,
}

#[derive(Default)]
struct State {
    inodes: HashMap<u64, Inode>,
    next_inode: u64,
    /// Live namespace: path → inode.
    live: BTreeMap<PathBuf, u64>,
    /// Durable namespace: path → inode, as of the last `sync_dir` of each parent.
    durable: BTreeMap<PathBuf, u64>,
    dirs: std::collections::BTreeSet<PathBuf>,
    ops: u64,
    next_seq: u64,
    plan: Option<(u64, Fault)>,
    powered_off: bool,
    /// Paths locked with `lock_file` (not files: a lock is process state, not disk state, so
    /// it counts as no operation and no crash image has it).
    locks: std::collections::BTreeSet<PathBuf>,
}

/// A held [`Vfs::lock_file`] of a [`FaultVfs`].
struct FaultLock {
    state: Arc<Mutex<State>>,
    path: PathBuf,
}

impl Drop for FaultLock {
    fn drop(&mut self) {
        self.state.lock().locks.remove(&self.path);
    }
}

enum Gate {
    Proceed,
    Fail(io::Error),
    ShortWrite,
}

impl State {
    /// Counts one mutating operation and says whether it may proceed.
    fn gate(&mut self) -> Gate {
        if self.powered_off {
            return Gate::Fail(eio());
        }
        let n = self.ops;
        self.ops += 1;
        match self.plan {
            Some((at, fault)) if at == n => match fault {
                Fault::Eio => Gate::Fail(eio()),
                Fault::Enospc => Gate::Fail(io::Error::from_raw_os_error(libc::ENOSPC)),
                Fault::ShortWrite => Gate::ShortWrite,
                Fault::PowerCut => {
                    self.powered_off = true;
                    Gate::Fail(eio())
                }
            },
            _ => Gate::Proceed,
        }
    }

    fn seq(&mut self) -> u64 {
        self.next_seq += 1;
        self.next_seq
    }

    fn write(&mut self, ino: u64, offset: u64, data: &[u8]) {
        let seq = self.seq();
        let inode = self.inodes.get_mut(&ino).expect("open file has an inode");
        apply_write(&mut inode.written, offset, data);
        inode.pending.push(Pending::Write {
            seq,
            offset,
            data: data.to_vec(),
        });
    }

    fn set_len(&mut self, ino: u64, len: u64) {
        let inode = self.inodes.get_mut(&ino).expect("open file has an inode");
        inode.written.resize(to_usize(len), 0);
        inode.pending.push(Pending::SetLen { len });
    }
}

fn eio() -> io::Error {
    io::Error::from_raw_os_error(libc::EIO)
}

fn to_usize(n: u64) -> usize {
    usize::try_from(n).expect("in-memory file offset fits in usize")
}

fn apply_write(image: &mut Vec<u8>, offset: u64, data: &[u8]) {
    let start = to_usize(offset);
    let end = start + data.len();
    if image.len() < end {
        image.resize(end, 0);
    }
    image[start..end].copy_from_slice(data);
}

fn apply_pending(image: &mut Vec<u8>, p: &Pending) {
    match p {
        Pending::Write { offset, data, .. } => apply_write(image, *offset, data),
        Pending::SetLen { len, .. } => image.resize(to_usize(*len), 0),
    }
}

/// An in-memory file system with fault injection and crash images. Cheap to clone (shared state).
#[derive(Clone, Default)]
pub struct FaultVfs {
    state: Arc<Mutex<State>>,
}

impl std::fmt::Debug for FaultVfs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.state.lock();
        f.debug_struct("FaultVfs")
            .field("files", &s.live.len())
            .field("ops", &s.ops)
            .finish()
    }
}

impl FaultVfs {
    pub fn new() -> Self {
        FaultVfs::default()
    }

    /// Number of mutating operations performed so far (the N of the next one).
    pub fn ops(&self) -> u64 {
        self.state.lock().ops
    }

    /// Makes operation number `op` (0-based, counting from the creation of this file system)
    /// fail with `fault`. Replaces any earlier plan.
    pub fn fail_at(&self, op: u64, fault: Fault) {
        self.state.lock().plan = Some((op, fault));
    }

    /// Cancels a planned fault that has not fired (a fired power cut stays in effect).
    pub fn clear_fault(&self) {
        self.state.lock().plan = None;
    }

    /// Cuts the power now: every later operation fails with `EIO`.
    pub fn power_cut(&self) {
        self.state.lock().powered_off = true;
    }

    pub fn is_powered_off(&self) -> bool {
        self.state.lock().powered_off
    }

    /// What reads of `path` return now, if it exists.
    pub fn written_contents(&self, path: &Path) -> Option<Vec<u8>> {
        let s = self.state.lock();
        s.live.get(path).map(|ino| s.inodes[ino].written.clone())
    }

    /// What `path` would hold after a power cut that keeps nothing unsynced.
    pub fn durable_contents(&self, path: &Path) -> Option<Vec<u8>> {
        let s = self.state.lock();
        s.durable.get(path).map(|ino| s.inodes[ino].durable.clone())
    }

    /// Overwrites bytes of `path` in both images, bypassing fault accounting: for corruption tests
    /// (bit flips, zeroed tails). Returns `false` if the file does not exist.
    pub fn corrupt(&self, path: &Path, offset: u64, bytes: &[u8]) -> bool {
        let mut s = self.state.lock();
        let Some(&ino) = s.live.get(path) else {
            return false;
        };
        let inode = s.inodes.get_mut(&ino).expect("live path has an inode");
        apply_write(&mut inode.written, offset, bytes);
        apply_write(&mut inode.durable, offset, bytes);
        true
    }

    /// Builds the file system a power cut would leave now, per `mode`. The result has fresh
    /// counters, no planned fault, and power on; `self` is unchanged.
    pub fn crash_image(&self, mode: CrashMode) -> FaultVfs {
        let s = self.state.lock();
        let last_seq = s
            .inodes
            .values()
            .flat_map(|i| i.pending.iter())
            .filter_map(|p| match p {
                Pending::Write { seq, .. } => Some(*seq),
                Pending::SetLen { .. } => None,
            })
            .max();
        let mut rng = match mode {
            CrashMode::RandomSectors { seed } => SplitMix(seed),
            _ => SplitMix(0),
        };
        let mut out = State {
            dirs: s.dirs.clone(),
            ..State::default()
        };
        for (path, ino) in &s.durable {
            let inode = &s.inodes[ino];
            let mut image = inode.durable.clone();
            for p in &inode.pending {
                match (mode, p) {
                    (CrashMode::LoseUnsynced, _) => {}
                    (CrashMode::TornLastWrite { keep }, Pending::Write { seq, offset, data }) => {
                        if Some(*seq) == last_seq {
                            let keep = (keep.min(data.len()) / SECTOR) * SECTOR;
                            apply_write(&mut image, *offset, &data[..keep]);
                        }
                    }
                    (CrashMode::TornLastWrite { .. }, Pending::SetLen { .. }) => {}
                    (CrashMode::RandomSectors { .. }, Pending::Write { offset, data, .. }) => {
                        for (i, chunk) in data.chunks(SECTOR).enumerate() {
                            if rng.next() & 1 == 1 {
                                apply_write(&mut image, offset + (i * SECTOR) as u64, chunk);
                            }
                        }
                    }
                    (CrashMode::RandomSectors { .. }, Pending::SetLen { .. }) => {
                        if rng.next() & 1 == 1 {
                            apply_pending(&mut image, p);
                        }
                    }
                }
            }
            let new_ino = out.next_inode;
            out.next_inode += 1;
            out.inodes.insert(
                new_ino,
                Inode {
                    written: image.clone(),
                    durable: image,
                    pending: vec![],
                },
            );
            out.live.insert(path.clone(), new_ino);
            out.durable.insert(path.clone(), new_ino);
        }
        FaultVfs {
            state: Arc::new(Mutex::new(out)),
        }
    }
}

/// A tiny deterministic generator, so crash images are reproducible from a seed.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

struct FaultFile {
    state: Arc<Mutex<State>>,
    ino: u64,
    write: bool,
    direct: bool,
}

impl FaultFile {
    fn check_writable(&self) -> io::Result<()> {
        if self.write {
            Ok(())
        } else {
            Err(io::Error::from_raw_os_error(libc::EBADF))
        }
    }
}

impl File for FaultFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        if self.direct {
            check_direct(buf.as_ptr(), buf.len(), offset)?;
        }
        let s = self.state.lock();
        let image = &s.inodes[&self.ino].written;
        let start = to_usize(offset).min(image.len());
        let n = buf.len().min(image.len() - start);
        buf[..n].copy_from_slice(&image[start..start + n]);
        Ok(n)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.check_writable()?;
        if self.direct {
            check_direct(buf.as_ptr(), buf.len(), offset)?;
        }
        let mut s = self.state.lock();
        match s.gate() {
            Gate::Proceed => {
                s.write(self.ino, offset, buf);
                Ok(())
            }
            Gate::ShortWrite => {
                let landed = (buf.len() / 2 / SECTOR) * SECTOR;
                s.write(self.ino, offset, &buf[..landed]);
                Err(eio())
            }
            Gate::Fail(e) => Err(e),
        }
    }

    fn sync_data(&self) -> io::Result<()> {
        let mut s = self.state.lock();
        let gate = s.gate();
        let inode = s.inodes.get_mut(&self.ino).expect("open file has an inode");
        match gate {
            Gate::Proceed => {
                for p in std::mem::take(&mut inode.pending) {
                    apply_pending(&mut inode.durable, &p);
                }
                Ok(())
            }
            Gate::Fail(e) => {
                if !s.powered_off {
                    // Linux marks the pages clean after a writeback error: dropped, not retried.
                    s.inodes.get_mut(&self.ino).expect("inode").pending.clear();
                }
                Err(e)
            }
            Gate::ShortWrite => {
                inode.pending.clear();
                Err(eio())
            }
        }
    }

    fn allocate(&self, offset: u64, len: u64) -> io::Result<()> {
        self.check_writable()?;
        let mut s = self.state.lock();
        match s.gate() {
            Gate::Proceed => {
                let cur = s.inodes[&self.ino].written.len() as u64;
                if offset + len > cur {
                    s.set_len(self.ino, offset + len);
                }
                Ok(())
            }
            Gate::Fail(e) => Err(e),
            Gate::ShortWrite => Err(eio()),
        }
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.check_writable()?;
        let mut s = self.state.lock();
        match s.gate() {
            Gate::Proceed => {
                s.set_len(self.ino, len);
                Ok(())
            }
            Gate::Fail(e) => Err(e),
            Gate::ShortWrite => Err(eio()),
        }
    }

    fn size(&self) -> io::Result<u64> {
        Ok(self.state.lock().inodes[&self.ino].written.len() as u64)
    }

    fn raw_fd(&self) -> Option<RawFd> {
        None
    }
}

fn not_found(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("{}: no such file", path.display()),
    )
}

impl Vfs for FaultVfs {
    fn kind(&self) -> IoKind {
        IoKind::Fault
    }

    fn open(&self, path: &Path, opts: OpenOptions) -> io::Result<Arc<dyn File>> {
        let mut s = self.state.lock();
        let parent = path.parent().unwrap_or(Path::new(""));
        let existing = s.live.get(path).copied();
        let ino = match existing {
            Some(_) if opts.create_new => {
                return Err(io::Error::from_raw_os_error(libc::EEXIST));
            }
            Some(ino) => ino,
            None if opts.create || opts.create_new => {
                if !parent.as_os_str().is_empty() && !s.dirs.contains(parent) {
                    return Err(not_found(parent));
                }
                match s.gate() {
                    Gate::Proceed => {}
                    Gate::Fail(e) => return Err(e),
                    Gate::ShortWrite => return Err(eio()),
                }
                let ino = s.next_inode;
                s.next_inode += 1;
                s.inodes.insert(ino, Inode::default());
                s.live.insert(path.to_path_buf(), ino);
                ino
            }
            None => return Err(not_found(path)),
        };
        Ok(Arc::new(FaultFile {
            state: self.state.clone(),
            ino,
            write: opts.write || opts.create_new,
            direct: opts.direct,
        }))
    }

    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        let mut s = self.state.lock();
        if s.powered_off {
            return Err(eio());
        }
        for dir in path.ancestors() {
            if !dir.as_os_str().is_empty() {
                s.dirs.insert(dir.to_path_buf());
            }
        }
        Ok(())
    }

    fn list_dir(&self, path: &Path) -> io::Result<Vec<OsString>> {
        let s = self.state.lock();
        if !s.dirs.contains(path) {
            return Err(not_found(path));
        }
        let files = s.live.keys().filter(|p| p.parent() == Some(path));
        let dirs = s.dirs.iter().filter(|p| p.parent() == Some(path));
        Ok(files
            .chain(dirs)
            .filter_map(|p| p.file_name().map(|n| n.to_os_string()))
            .collect())
    }

    fn exists(&self, path: &Path) -> bool {
        let s = self.state.lock();
        s.live.contains_key(path) || s.dirs.contains(path)
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let mut s = self.state.lock();
        if !s.live.contains_key(path) {
            return Err(not_found(path));
        }
        match s.gate() {
            Gate::Proceed => {
                s.live.remove(path);
                Ok(())
            }
            Gate::Fail(e) => Err(e),
            Gate::ShortWrite => Err(eio()),
        }
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut s = self.state.lock();
        let Some(&ino) = s.live.get(from) else {
            return Err(not_found(from));
        };
        match s.gate() {
            Gate::Proceed => {
                s.live.remove(from);
                s.live.insert(to.to_path_buf(), ino);
                Ok(())
            }
            Gate::Fail(e) => Err(e),
            Gate::ShortWrite => Err(eio()),
        }
    }

    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        let mut s = self.state.lock();
        if !s.dirs.contains(path) {
            return Err(not_found(path));
        }
        match s.gate() {
            Gate::Proceed => {}
            Gate::Fail(e) => return Err(e),
            Gate::ShortWrite => return Err(eio()),
        }
        let in_dir = |p: &PathBuf| p.parent() == Some(path);
        s.durable.retain(|p, _| !in_dir(p));
        let live: Vec<(PathBuf, u64)> = s
            .live
            .iter()
            .filter(|(p, _)| in_dir(p))
            .map(|(p, i)| (p.clone(), *i))
            .collect();
        s.durable.extend(live);
        Ok(())
    }

    fn lock_file(&self, path: &Path) -> io::Result<super::FileLock> {
        let mut s = self.state.lock();
        if s.powered_off {
            return Err(eio());
        }
        if !s.locks.insert(path.to_path_buf()) {
            return Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                format!("{} is locked", path.display()),
            ));
        }
        Ok(super::FileLock::new(FaultLock {
            state: self.state.clone(),
            path: path.to_path_buf(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::{AlignedBuf, DIRECT_ALIGN};

    fn setup() -> (FaultVfs, PathBuf, Arc<dyn File>) {
        let vfs = FaultVfs::new();
        let dir = PathBuf::from("/d");
        vfs.create_dir_all(&dir).unwrap();
        let path = dir.join("f");
        let f = vfs
            .open(&path, OpenOptions::read_write().create(true))
            .unwrap();
        vfs.sync_dir(&dir).unwrap();
        (vfs, path, f)
    }

    #[test]
    fn unsynced_writes_are_lost_and_synced_ones_survive() {
        let (vfs, path, f) = setup();
        f.write_at(b"durable", 0).unwrap();
        f.sync_data().unwrap();
        f.write_at(b"LOST", 0).unwrap();
        assert_eq!(vfs.written_contents(&path).unwrap(), b"LOSTble");
        let after = vfs.crash_image(CrashMode::LoseUnsynced);
        assert_eq!(after.written_contents(&path).unwrap(), b"durable");
    }

    #[test]
    fn file_not_in_synced_directory_vanishes() {
        let (vfs, _, _) = setup();
        let other = PathBuf::from("/d/g");
        let g = vfs
            .open(&other, OpenOptions::read_write().create(true))
            .unwrap();
        g.write_at(b"x", 0).unwrap();
        g.sync_data().unwrap();
        assert!(
            vfs.crash_image(CrashMode::LoseUnsynced)
                .written_contents(&other)
                .is_none()
        );
        vfs.sync_dir(Path::new("/d")).unwrap();
        assert_eq!(
            vfs.crash_image(CrashMode::LoseUnsynced)
                .written_contents(&other)
                .unwrap(),
            b"x"
        );
    }

    #[test]
    fn rename_is_durable_only_after_sync_dir() {
        let (vfs, path, f) = setup();
        f.write_at(b"data", 0).unwrap();
        f.sync_data().unwrap();
        let to = PathBuf::from("/d/renamed");
        vfs.rename(&path, &to).unwrap();
        let img = vfs.crash_image(CrashMode::LoseUnsynced);
        assert!(img.exists(&path) && !img.exists(&to));
        vfs.sync_dir(Path::new("/d")).unwrap();
        let img = vfs.crash_image(CrashMode::LoseUnsynced);
        assert!(!img.exists(&path) && img.exists(&to));
    }

    #[test]
    fn torn_last_write_keeps_a_sector_prefix() {
        let (vfs, path, f) = setup();
        f.write_at(&[1u8; 2048], 0).unwrap();
        let img = vfs.crash_image(CrashMode::TornLastWrite { keep: 1000 });
        let got = img.written_contents(&path).unwrap();
        assert_eq!(got.len(), 512);
        assert!(got.iter().all(|&b| b == 1));
    }

    #[test]
    fn random_sectors_is_deterministic_per_seed_and_a_subset() {
        let (vfs, path, f) = setup();
        let data: Vec<u8> = (0..8192u32).map(|i| (i / 512) as u8 + 1).collect();
        f.write_at(&data, 0).unwrap();
        let a = vfs
            .crash_image(CrashMode::RandomSectors { seed: 7 })
            .written_contents(&path);
        let b = vfs
            .crash_image(CrashMode::RandomSectors { seed: 7 })
            .written_contents(&path);
        assert_eq!(a, b);
        let a = a.unwrap();
        for (i, chunk) in a.chunks(SECTOR).enumerate() {
            assert!(chunk.iter().all(|&x| x == 0) || chunk.iter().all(|&x| x == i as u8 + 1));
        }
    }

    #[test]
    fn nth_operation_fails_then_power_cut_stops_everything() {
        let (vfs, path, f) = setup();
        let n = vfs.ops();
        vfs.fail_at(n + 1, Fault::Eio);
        f.write_at(b"a", 0).unwrap();
        assert_eq!(
            f.write_at(b"b", 1).unwrap_err().raw_os_error(),
            Some(libc::EIO)
        );
        f.write_at(b"c", 2).unwrap();
        vfs.fail_at(vfs.ops(), Fault::PowerCut);
        assert!(f.sync_data().is_err());
        assert!(f.write_at(b"d", 3).is_err());
        assert!(vfs.is_powered_off());
        assert_eq!(vfs.written_contents(&path).unwrap(), b"a\0c");
        assert_eq!(
            vfs.crash_image(CrashMode::LoseUnsynced)
                .written_contents(&path)
                .unwrap(),
            b""
        );
    }

    #[test]
    fn failed_sync_drops_pending_writes_from_the_durable_path() {
        let (vfs, path, f) = setup();
        f.write_at(b"first", 0).unwrap();
        vfs.fail_at(vfs.ops(), Fault::Eio);
        assert!(f.sync_data().is_err());
        // The retry "succeeds" but nothing it covers was written: why fsync errors are fatal.
        f.sync_data().unwrap();
        assert_eq!(vfs.written_contents(&path).unwrap(), b"first");
        assert_eq!(vfs.durable_contents(&path).unwrap(), b"");
    }

    #[test]
    fn short_write_lands_a_prefix_and_fails() {
        let (vfs, path, f) = setup();
        vfs.fail_at(vfs.ops(), Fault::ShortWrite);
        assert!(f.write_at(&[9u8; 4096], 0).is_err());
        assert_eq!(vfs.written_contents(&path).unwrap().len(), 2048);
    }

    #[test]
    fn direct_files_check_alignment() {
        let vfs = FaultVfs::new();
        vfs.create_dir_all(Path::new("/d")).unwrap();
        let f = vfs
            .open(
                Path::new("/d/x"),
                OpenOptions::read_write().create(true).direct(true),
            )
            .unwrap();
        let buf = AlignedBuf::zeroed(DIRECT_ALIGN);
        f.write_at(&buf, 4096).unwrap();
        assert_eq!(
            f.write_at(&buf[..10], 0).unwrap_err().raw_os_error(),
            Some(libc::EINVAL)
        );
        assert_eq!(f.size().unwrap(), 8192);
    }

    #[test]
    fn create_new_refuses_existing_and_open_missing_is_not_found() {
        let (vfs, path, _) = setup();
        let err = vfs
            .open(&path, OpenOptions::read_write().create_new(true))
            .err()
            .unwrap();
        assert_eq!(err.raw_os_error(), Some(libc::EEXIST));
        let err = vfs
            .open(Path::new("/d/missing"), OpenOptions::read_only())
            .err()
            .unwrap();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
    }
}

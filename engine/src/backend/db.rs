//! The backend handle, snapshots, and the batch writer with its commit protocol.
//!
//! State shared between threads: `current`, one `Arc<View>` = (newest committed `Version`, the
//! read buffer generation on top of it). A snapshot clones it under a mutex held for two
//! reference-count increments. The writer replaces it at each commit. Lock order: `writer`
//! before `current` before a buffer's lock; no lock is held across I/O except `writer` (by
//! whoever holds the write role).
//!
//! Commit protocol, one fdatasync (numbered crash cases in format.md, "Backend file / Commit
//! protocol"):
//! 1. if the file must grow: extend it and `fdatasync` (the new length is durable before any
//!    meta can point past the old end; growth is by a quarter, so this is rare);
//! 2. write every new run (all at ids free in both on-disk metas and in every live snapshot),
//!    the freelist run last, which lists every other run with its checksum; a small commit that
//!    reaches past every page written so far also writes zeros over the next free pages at the
//!    file's tail (`ZERO_AHEAD_PAGES`; reachable from nothing, so a crash cannot care); with
//!    `BackendOptions::early_writes` a large commit writes groups of its leaves while it builds
//!    the rest (tree.rs `EARLY_RUN`) and this step writes the others;
//!    with the delta log (delta.rs), the commit's delta run is one of these runs, listed like
//!    the others;
//! 3. write the meta page of slot `txid % 2`; it holds the freelist run's checksum;
//! 4. `fdatasync`.
//!
//! Then publish the new version to new snapshots. Open verifies the newest meta's commit (every
//! listed run present with its listed checksum, `verify_commit`) and falls back to the other
//! meta when it is incomplete: steps 2 and 3 may reach the disk in any order and partly.

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::buffer::{Buffer, Bytes, Latest, Slot, bucket_index};
use super::check::{self, CheckReport};
use super::delta::{self, DeltaIndex, DeltaLog, Limits};
use super::freelist::Freelist;
use super::meta::{FORMAT_V1, FORMAT_V3, FORMAT_VERSION, Meta};
use super::mmap::Mapping;
use super::page::{
    CHECKSUM_OFFSET, MAX_PAGE_SIZE, MIN_PAGE_SIZE, PageError, PageType, Written, decode_freelist,
    decode_written, encode_freelist, freelist_bitmap_body, freelist_body, freelist_encoded_body,
    get_u32, header_overflow, max_key_len, run_pages,
};
use super::tree::{self, Arena, MAX_EXTENT, Op, Recent, TreeWriter, Walk};
use super::{BackendError, BackendOptions};
use crate::io::{File, OpenOptions, Vfs};
use crate::storage::{BatchWrite, Bucket, KvRead, StorageResult};

/// Most pages one commit moves for online compaction (4 MiB of 4 KiB pages).
const COMPACT_BUDGET: usize = 1024;

/// Pages of zeros a small commit writes past its last page when that page lies above every page
/// written so far (`WriterState::written_end`). The file grows with `fallocate`, which leaves
/// its new blocks *unwritten*: the first write to such a block makes ext4 (and other extent
/// filesystems) convert the extent at writeback, a metadata change that turns the commit's
/// fdatasync into a journal commit as well (two or three device round trips instead of one;
/// session 6 strace: a 1-key commit on a full tree took 1-2 new tail pages every commit, since
/// each insert split a leaf). Zeroing ahead pays that conversion once per this many tail pages.
/// Large commits do not zero ahead: their writes are mostly at the tail already, and zeros
/// would double their bytes.
const ZERO_AHEAD_PAGES: u64 = 256;

/// One committed state, pinned by every snapshot that reads it.
pub(crate) struct Version {
    pub meta: Meta,
    pub map: Arc<Mapping>,
    /// Bucket name -> tree root (0 = empty), read from the catalog at commit/open.
    pub roots: Vec<(Vec<u8>, u64)>,
    /// The roots of `Bucket::ALL`, by `bucket_index`: the read path's lookup.
    pub by_bucket: [u64; Bucket::ALL.len()],
    pub free_pages: u64,
    pub pending_pages: u64,
    pub file_len: u64,
}

impl Version {
    pub(crate) fn root(&self, name: &[u8]) -> u64 {
        self.roots
            .iter()
            .find(|(n, _)| n == name)
            .map_or(0, |(_, r)| *r)
    }
}

fn by_bucket(roots: &[(Vec<u8>, u64)]) -> [u64; Bucket::ALL.len()] {
    let mut out = [0; Bucket::ALL.len()];
    for b in Bucket::ALL {
        out[bucket_index(b)] = roots
            .iter()
            .find(|(n, _)| n == b.name())
            .map_or(0, |(_, r)| *r);
    }
    out
}

struct View {
    version: Arc<Version>,
    buf: Arc<Buffer>,
}

/// Files open in this process (see `register`). Two `Backend`s on one file would each believe
/// they own the free pages (mmap.rs, fact 4), so the second open is refused.
static OPEN_FILES: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// Registers `path` as open; `None` if it already is. Paths of the in-memory fault VFS are not
/// registered (each instance is its own namespace). The directory is canonicalised so that two
/// spellings of one path collide.
fn register(vfs: &dyn Vfs, path: &Path) -> Result<Registration, BackendError> {
    if vfs.kind() == crate::io::IoKind::Fault {
        return Ok(Registration(None));
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    let key = match (std::fs::canonicalize(dir), path.file_name()) {
        (Ok(d), Some(name)) => d.join(name),
        _ => path.to_path_buf(),
    };
    let mut open = OPEN_FILES.lock();
    if open.contains(&key) {
        return Err(BackendError::Invalid(format!(
            "{} is already open in this process",
            path.display()
        )));
    }
    open.push(key.clone());
    Ok(Registration(Some(key)))
}

pub(crate) struct Shared {
    /// Our entry in `OPEN_FILES`, removed on drop.
    _registered: Registration,
    pub path: PathBuf,
    pub file: Arc<dyn File>,
    opts: BackendOptions,
    current: Mutex<Arc<View>>,
    /// The delta log as readers see it (delta.rs), versioned by txid.
    pub(crate) delta: DeltaIndex,
    /// The write role: `None` while a `BatchWriter` holds it.
    writer: Mutex<Option<WriterState>>,
}

/// An entry in `OPEN_FILES`, removed when dropped.
struct Registration(Option<PathBuf>);

impl Drop for Registration {
    fn drop(&mut self) {
        if let Some(key) = &self.0 {
            OPEN_FILES.lock().retain(|p| p != key);
        }
    }
}

impl Shared {
    pub(crate) fn corrupt(&self, e: PageError, page_size: u64) -> BackendError {
        BackendError::Corrupt {
            file: self.path.clone(),
            offset: e.page.saturating_mul(page_size),
            page: e.page,
            reason: e.reason,
        }
    }

    fn io(&self, op: &'static str, source: std::io::Error) -> BackendError {
        BackendError::Io {
            file: self.path.clone(),
            op,
            source,
        }
    }
}

struct WriterState {
    freelist: Freelist,
    /// Where online compaction resumes: (index into the version's roots, key).
    compact_cursor: (usize, Vec<u8>),
    /// Versions published so far that may still be pinned; pruned at each commit.
    live: Vec<(u64, Weak<Version>)>,
    failed: Option<String>,
    last_commit: Instant,
    /// `last_commit` on the coarse clock ([`coarse_now`]), for the check on every write.
    last_commit_coarse: Duration,
    ops_since_commit: usize,
    file_len: u64,
    /// Pages the last commit wrote: the size of the next commit's first extent.
    last_pages: u64,
    /// Pages below this id have been written since the file was opened or last grown, as far
    /// as the writer knows (`ZERO_AHEAD_PAGES`).
    written_end: u64,
    /// Runs of the last commit the next one reads from memory (tree.rs, [`Recent`]).
    recent: Recent,
    /// The zeros step 2 writes ahead of a small commit, kept between commits.
    batch: Vec<u8>,
    /// The published view (`Shared::current`), so that a write takes no lock for it. Only the
    /// commit replaces `current`, and it holds this state, so the two stay equal.
    view: Arc<View>,
    /// The writer's side of the delta log (delta.rs).
    delta: DeltaLog,
}

/// An open backend file. Cheap to share (`Clone` clones a handle).
#[derive(Clone)]
pub struct Backend {
    shared: Arc<Shared>,
}

/// Space accounting ("actual DB usage"): `live_bytes` is what the data needs, `file_bytes` what
/// the file takes on disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackendStats {
    pub txid: u64,
    pub page_size: u64,
    /// Pages `[0, page_count)` are in use or free; the file may be longer (preallocated).
    pub page_count: u64,
    pub free_pages: u64,
    /// Freed, but a snapshot or the older meta may still read them.
    pub pending_pages: u64,
    pub live_bytes: u64,
    pub file_bytes: u64,
}

/// The newest commit of a file opened by [`Backend::open_read_only`] did not fully reach the
/// disk (a crash mid-commit, or damage to one of its pages): `opened_txid` is the state opened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IncompleteCommit {
    pub txid: u64,
    /// The first page of that commit found missing or damaged, and why.
    pub page: u64,
    pub reason: String,
    pub opened_txid: u64,
}

fn bad_opts(opts: &BackendOptions) -> Option<String> {
    let ps = opts.page_size;
    if !ps.is_power_of_two() || !(MIN_PAGE_SIZE..=MAX_PAGE_SIZE).contains(&ps) {
        return Some(format!(
            "page size {ps} is not a power of two in [{MIN_PAGE_SIZE}, {MAX_PAGE_SIZE}]"
        ));
    }
    if opts.batch_ops == 0 {
        return Some("batch_ops must be at least 1".into());
    }
    if opts.delta_max_entries == 0 || opts.delta_max_runs == 0 {
        return Some("delta_max_entries and delta_max_runs must be at least 1".into());
    }
    None
}

impl Backend {
    /// Opens the backend file at `path`, creating it (and its directory) if missing. Creation
    /// writes both metas to `path.tmp`, syncs it, renames it into place and syncs the directory,
    /// so a crash leaves either no file or a complete empty one.
    pub fn open(
        vfs: Arc<dyn Vfs>,
        path: &Path,
        opts: BackendOptions,
    ) -> Result<Backend, BackendError> {
        Self::open_mode(vfs, path, opts, false).map(|(b, _)| b)
    }

    /// Opens an existing file for inspection (`ringkv-util`), writing nothing: a missing file
    /// is an error, not created, and when the newest commit is incomplete it is reported (the
    /// state opened is the older meta's, as [`Backend::open`] would open) instead of replaced.
    /// The file is opened read-only, so a commit through this handle fails with an I/O error.
    pub fn open_read_only(
        vfs: Arc<dyn Vfs>,
        path: &Path,
    ) -> Result<(Backend, Option<IncompleteCommit>), BackendError> {
        Self::open_mode(vfs, path, BackendOptions::default(), true)
    }

    fn open_mode(
        vfs: Arc<dyn Vfs>,
        path: &Path,
        opts: BackendOptions,
        read_only: bool,
    ) -> Result<(Backend, Option<IncompleteCommit>), BackendError> {
        if let Some(why) = bad_opts(&opts) {
            return Err(BackendError::Invalid(why));
        }
        let io = |op: &'static str| {
            let file = path.to_path_buf();
            move |source| BackendError::Io { file, op, source }
        };
        if !vfs.exists(path) {
            if read_only {
                return Err(io("open")(std::io::ErrorKind::NotFound.into()));
            }
            create(&*vfs, path, opts.page_size).map_err(io("create"))?;
        }
        let registered = register(&*vfs, path)?;
        let mode = if read_only {
            OpenOptions::read_only()
        } else {
            OpenOptions::read_write()
        };
        let file = vfs.open(path, mode).map_err(io("open"))?;
        let file_len = file.size().map_err(io("stat"))?;
        let shared_path = path.to_path_buf();
        let (newest, older, _) =
            read_metas(&*file, file_len).map_err(|e| BackendError::Corrupt {
                file: shared_path.clone(),
                page: e.page,
                offset: 0,
                reason: e.reason,
            })?;
        let ps = newest.page_size as u64;
        let meta_err = |e: PageError| BackendError::Corrupt {
            file: shared_path.clone(),
            page: e.page,
            offset: e.page.saturating_mul(ps),
            reason: e.reason,
        };
        let map_len = file_len / ps * ps;
        let new_map = || Mapping::new(&file, map_len, ps as usize, opts.mmap).map_err(io("mmap"));
        // The newest meta counts only if its whole commit reached the disk (one-fsync commit,
        // format.md crash case 2); else the older meta, whose commit completed before the newest
        // one started writing, is the state to open.
        let mut map = Arc::new(new_map()?);
        let mut meta = newest;
        let mut incomplete = None;
        if let Err(torn) = verify_commit(&map, &newest) {
            let Some(older) = older else {
                return Err(meta_err(PageError {
                    page: torn.page,
                    reason: format!(
                        "newest commit (txid {}) is incomplete and the other meta is invalid: {}",
                        newest.txid, torn.reason
                    ),
                }));
            };
            map = Arc::new(new_map()?);
            verify_commit(&map, &older).map_err(|e| {
                meta_err(PageError {
                    page: e.page,
                    reason: format!(
                        "both commits are incomplete: txid {}: {}; txid {}: {}",
                        newest.txid, torn.reason, older.txid, e.reason
                    ),
                })
            })?;
            if read_only {
                incomplete = Some(IncompleteCommit {
                    txid: newest.txid,
                    page: torn.page,
                    reason: torn.reason.clone(),
                    opened_txid: older.txid,
                });
            } else {
                tracing::warn!(
                    file = %path.display(),
                    "backend: newest commit (txid {}) did not fully reach the disk ({}); opening txid {} and replacing the incomplete meta",
                    newest.txid,
                    torn,
                    older.txid
                );
            }
            // The incomplete meta is replaced, so that later writes can never complete the
            // abandoned commit, by a copy of the older meta under the txid before it: the same
            // state, so falling back to it (if the older meta is ever damaged) is safe, and its
            // txid keeps the slot's parity (format.md, crash case 2).
            let copy = Meta {
                txid: older.txid.saturating_sub(1),
                ..older
            };
            if !read_only {
                file.write_at(&copy.encode(), (newest.txid % 2) * ps)
                    .map_err(io("replace incomplete meta"))?;
                file.sync_data().map_err(io("fdatasync replaced meta"))?;
            }
            meta = older;
        }
        let corrupt = |e: PageError| BackendError::Corrupt {
            file: shared_path.clone(),
            offset: e.page.saturating_mul(ps),
            page: e.page,
            reason: e.reason,
        };
        let freelist = if meta.freelist == 0 {
            Freelist::default()
        } else {
            let run = map
                .page(meta.freelist, Some(PageType::Freelist))
                .map_err(corrupt)?;
            let (free, pending) = decode_freelist(&run);
            if let Some(bad) = free
                .iter()
                .chain(pending.iter().map(|(p, _)| p))
                .find(|&&p| p < 2 || p >= meta.page_count)
            {
                return Err(corrupt(PageError {
                    page: meta.freelist,
                    reason: format!("freelist names page {bad} outside [2, {})", meta.page_count),
                }));
            }
            Freelist::from_parts(free, pending)
        };
        let roots = read_catalog(&map, meta.catalog).map_err(corrupt)?;
        let delta_index = DeltaIndex::default();
        let delta_log = DeltaLog::load(
            &map,
            meta.delta_head,
            meta.page_count,
            ps as usize,
            &delta_index,
        )
        .map_err(corrupt)?;
        let version = Arc::new(Version {
            meta,
            map,
            by_bucket: by_bucket(&roots),
            roots,
            free_pages: freelist.free_len() as u64,
            pending_pages: freelist.pending_len() as u64,
            file_len,
        });
        let state = WriterState {
            freelist,
            compact_cursor: (0, Vec::new()),
            live: vec![(meta.txid, Arc::downgrade(&version))],
            failed: None,
            last_commit: Instant::now(),
            last_commit_coarse: coarse_now(),
            ops_since_commit: 0,
            file_len,
            last_pages: 0,
            written_end: meta.page_count,
            recent: Recent::new(),
            batch: Vec::new(),
            view: Arc::new(View {
                version,
                buf: Arc::new(Buffer::default()),
            }),
            delta: delta_log,
        };
        let shared = Arc::new(Shared {
            _registered: registered,
            path: path.to_path_buf(),
            file,
            opts,
            current: Mutex::new(state.view.clone()),
            delta: delta_index,
            writer: Mutex::new(Some(state)),
        });
        Ok((Backend { shared }, incomplete))
    }

    /// A consistent view: the last commit plus every write applied before this call.
    pub fn snapshot(&self) -> Snapshot {
        let view = self.shared.current.lock().clone();
        let seq = view.buf.pin();
        Snapshot {
            version: view.version.clone(),
            buf: view.buf.clone(),
            seq,
            shared: self.shared.clone(),
        }
    }

    /// Takes the single write role. Fails with `Invalid` while another `BatchWriter` is alive;
    /// dropping the writer returns the role (uncommitted writes stay buffered).
    pub fn batch(&self) -> Result<BatchWriter, BackendError> {
        let state =
            self.shared.writer.lock().take().ok_or_else(|| {
                BackendError::Invalid("the batch writer is already in use".into())
            })?;
        Ok(BatchWriter {
            shared: self.shared.clone(),
            state: Some(state),
        })
    }

    /// Checks the newest committed state (see [`CheckReport`]). Checks the other meta page too
    /// unless a `BatchWriter` is alive (it might be writing that page).
    pub fn check(&self) -> CheckReport {
        let guard = self.shared.writer.lock();
        let version = self.shared.current.lock().version.clone();
        check::check(&self.shared, &version, guard.is_some())
    }

    pub fn stats(&self) -> BackendStats {
        stats(&self.shared.current.lock().version)
    }

    pub fn path(&self) -> &Path {
        &self.shared.path
    }
}

fn stats(v: &Version) -> BackendStats {
    let ps = v.meta.page_size as u64;
    let unused = 2 + v.free_pages + v.pending_pages;
    BackendStats {
        txid: v.meta.txid,
        page_size: ps,
        page_count: v.meta.page_count,
        free_pages: v.free_pages,
        pending_pages: v.pending_pages,
        live_bytes: v.meta.page_count.saturating_sub(unused) * ps,
        file_bytes: v.file_len,
    }
}

fn create(vfs: &dyn Vfs, path: &Path, page_size: usize) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    // Directories this call creates: each new entry is durable once its parent is synced.
    let created: Vec<&Path> = dir
        .ancestors()
        .take_while(|d| !d.as_os_str().is_empty() && !vfs.exists(d))
        .collect();
    vfs.create_dir_all(dir)?;
    for d in created.iter().rev() {
        if let Some(parent) = d.parent().filter(|p| !p.as_os_str().is_empty()) {
            vfs.sync_dir(parent)?;
        }
    }
    let tmp = path.with_extension("tmp");
    if vfs.exists(&tmp) {
        vfs.remove_file(&tmp)?;
    }
    let f = vfs.open(&tmp, OpenOptions::read_write().create(true))?;
    let mut both = Vec::with_capacity(2 * page_size);
    for txid in 0..2 {
        both.extend(
            Meta {
                page_size: page_size as u32,
                txid,
                catalog: 0,
                freelist: 0,
                page_count: 2,
                version: FORMAT_VERSION,
                freelist_checksum: 0,
                delta_head: 0,
            }
            .encode(),
        );
    }
    f.write_at(&both, 0)?;
    f.sync_data()?;
    drop(f);
    vfs.rename(&tmp, path)?;
    vfs.sync_dir(dir)
}

/// Checks that the commit that wrote `meta` is complete on disk: its freelist run carries the
/// checksum the meta names, and every run the freelist run lists is there with the checksum it
/// lists (and passes the page checks). v1 metas (two-fsync commits) and the empty file's metas
/// have nothing to verify. Any failure means the commit is incomplete.
pub(crate) fn verify_commit(map: &Mapping, meta: &Meta) -> Result<(), PageError> {
    if meta.version == FORMAT_V1 || meta.freelist == 0 {
        return Ok(());
    }
    let ps = meta.page_size as usize;
    let fl = map.page(meta.freelist, Some(PageType::Freelist))?;
    let stored = get_u32(&fl, CHECKSUM_OFFSET);
    if stored != meta.freelist_checksum {
        return Err(PageError {
            page: meta.freelist,
            reason: format!(
                "freelist run has checksum {stored:#010x}, meta txid {} wrote {:#010x}",
                meta.txid, meta.freelist_checksum
            ),
        });
    }
    for w in decode_written(&fl) {
        if w.id < 2 || w.id >= meta.page_count {
            return Err(PageError {
                page: meta.freelist,
                reason: format!(
                    "written list names page {} outside [2, {})",
                    w.id, meta.page_count
                ),
            });
        }
        let run = map.page(w.id, None)?;
        let sum = get_u32(&run, CHECKSUM_OFFSET);
        if sum != w.checksum || run.len() != w.pages as usize * ps {
            return Err(PageError {
                page: w.id,
                reason: format!(
                    "run of {} pages with checksum {sum:#010x}, commit txid {} wrote {} pages with {:#010x}",
                    run.len() / ps,
                    meta.txid,
                    w.pages,
                    w.checksum
                ),
            });
        }
    }
    Ok(())
}

/// Reads both metas; returns the valid one with the highest txid, the other one if it is valid
/// too, and the other's problem if not. Page 1 is found from page 0's page size, or by trying
/// every supported size when page 0 is damaged.
pub(crate) fn read_metas(
    file: &dyn File,
    file_len: u64,
) -> Result<(Meta, Option<Meta>, Option<PageError>), PageError> {
    let read = |at: u64| -> Vec<u8> {
        let mut b = vec![0u8; MIN_PAGE_SIZE];
        let n = file.read_at(&mut b, at).unwrap_or(0);
        b.truncate(n);
        b
    };
    let m0 = Meta::decode(&read(0));
    let m1 = match &m0 {
        Ok(m) => Meta::decode(&read(m.page_size as u64)),
        Err(_) => {
            let mut found = Err("no valid meta at any supported page size".to_string());
            let mut ps = MIN_PAGE_SIZE as u64;
            while ps <= MAX_PAGE_SIZE as u64 && ps < file_len {
                if let Ok(m) = Meta::decode(&read(ps))
                    && m.page_size as u64 == ps
                {
                    found = Ok(m);
                    break;
                }
                ps *= 2;
            }
            found
        }
    };
    let err = |page, reason: String| PageError { page, reason };
    match (m0, m1) {
        (Ok(a), Ok(b)) if a.page_size != b.page_size => Err(err(
            1,
            format!(
                "meta pages disagree on the page size ({} vs {})",
                a.page_size, b.page_size
            ),
        )),
        (Ok(a), Ok(b)) if a.txid >= b.txid => Ok((a, Some(b), None)),
        (Ok(a), Ok(b)) => Ok((b, Some(a), None)),
        (Ok(a), Err(e)) => Ok((a, None, Some(err(1, e)))),
        (Err(e), Ok(b)) => Ok((b, None, Some(err(0, e)))),
        (Err(a), Err(b)) => Err(err(
            0,
            format!("both meta pages are invalid: page 0: {a}; page 1: {b}"),
        )),
    }
}

/// Bucket name -> root page, from the catalog tree.
fn read_catalog(map: &Mapping, catalog: u64) -> Result<Vec<(Vec<u8>, u64)>, PageError> {
    let mut roots = Vec::new();
    let mut bad = None;
    tree::scan(
        map,
        catalog,
        b"",
        b"",
        &mut |k, v| match <[u8; 8]>::try_from(v) {
            Ok(b) => {
                roots.push((k.to_vec(), u64::from_le_bytes(b)));
                true
            }
            Err(_) => {
                bad = Some(v.len());
                false
            }
        },
    )?;
    if let Some(len) = bad {
        return Err(PageError {
            page: catalog,
            reason: format!("catalog entry holds {len} bytes, expected an 8-byte root page id"),
        });
    }
    Ok(roots)
}

/// A consistent read view. Holds the committed version it started from (its pages cannot be
/// reused while it lives) and its point in the read buffer. Send + Sync; share or move freely.
pub struct Snapshot {
    pub(crate) version: Arc<Version>,
    buf: Arc<Buffer>,
    seq: u64,
    pub(crate) shared: Arc<Shared>,
}

impl Snapshot {
    /// The txid of the committed state under this snapshot.
    pub fn txid(&self) -> u64 {
        self.version.meta.txid
    }

    /// Like [`KvRead::get`], but without copying when the value is in the memory map: the
    /// returned slice borrows the snapshot and cannot outlive it.
    pub fn get_ref(
        &self,
        bucket: Bucket,
        key: &[u8],
    ) -> Result<Option<Cow<'_, [u8]>>, BackendError> {
        // Sequence numbers start at 1: a snapshot pinned at 0 sees no buffered write, so it skips
        // the buffer's lock.
        if self.seq > 0
            && let Some(slot) = self.buf.get(bucket, key, self.seq)
        {
            return Ok(slot.map(|v| Cow::Owned(v.to_vec())));
        }
        // The delta log answers before the tree (delta.rs, invariant 1).
        if let Some(slot) = self
            .shared
            .delta
            .get(bucket_index(bucket), key, self.version.meta.txid)
        {
            return Ok(slot.map(|v| Cow::Owned(v.to_vec())));
        }
        let root = self.version.by_bucket[bucket_index(bucket)];
        tree::get(&self.version.map, root, key)
            .map_err(|e| self.shared.corrupt(e, self.version.meta.page_size as u64))
    }

    /// Like [`KvRead::scan`], with the backend's error type.
    pub fn scan_with(
        &self,
        bucket: Bucket,
        start: &[u8],
        end: &[u8],
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), BackendError> {
        let buffered = if self.seq > 0 {
            self.buf.range(bucket, start, end, self.seq)
        } else {
            Vec::new()
        };
        // The delta log's entries lie under the buffer's (delta.rs, invariant 1). They are
        // fetched a chunk at a time (16 entries, doubling up to 512), each chunk scanned as one
        // segment of the range: the lock is not held across the visitor, and a short scan
        // copies little. Without a log the whole range is one segment.
        let mut chunk = 16;
        let b = bucket_index(bucket);
        let txid = self.version.meta.txid;
        let mut seg_start = start.to_vec();
        loop {
            let (logged, next_start) = self
                .shared
                .delta
                .range_chunk(b, &seg_start, end, txid, chunk);
            chunk = (chunk * 2).min(512);
            let seg_end = next_start.as_deref().unwrap_or(end);
            let from = buffered.partition_point(|(k, _)| **k < *seg_start);
            let to = if seg_end.is_empty() {
                buffered.len()
            } else {
                buffered.partition_point(|(k, _)| **k < *seg_end)
            };
            let over = if logged.is_empty() {
                Cow::Borrowed(&buffered[from..to.max(from)])
            } else {
                Cow::Owned(overlay(buffered[from..to.max(from)].to_vec(), logged))
            };
            if !self.scan_segment(b, &over, &seg_start, seg_end, visit)? {
                return Ok(());
            }
            match next_start {
                Some(next) => seg_start = next,
                None => return Ok(()),
            }
        }
    }

    /// Scans the tree over `[start, end)` with `over` (sorted entries in that range: buffered
    /// and logged writes) on top; false if the visitor stopped.
    fn scan_segment(
        &self,
        b: usize,
        over: &[(Bytes, Slot)],
        start: &[u8],
        end: &[u8],
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<bool, BackendError> {
        let buffered = over;
        let root = self.version.by_bucket[b];
        let mut next = 0;
        let mut stopped = false;
        // Emits buffered entries that sort before `key` (all, if None); false = visitor stopped.
        let drain = |upto: Option<&[u8]>,
                     next: &mut usize,
                     visit: &mut dyn FnMut(&[u8], &[u8]) -> bool|
         -> bool {
            while let Some((k, v)) = buffered.get(*next) {
                if upto.is_some_and(|u| &**k >= u) {
                    break;
                }
                *next += 1;
                if let Some(v) = v
                    && !visit(k, v)
                {
                    return false;
                }
            }
            true
        };
        tree::scan(&self.version.map, root, start, end, &mut |k, v| {
            if !drain(Some(k), &mut next, visit) {
                stopped = true;
                return false;
            }
            let cont = match buffered.get(next) {
                Some((bk, slot)) if &**bk == k => {
                    next += 1;
                    slot.as_ref().is_none_or(|bv| visit(k, bv))
                }
                _ => visit(k, v),
            };
            stopped = !cont;
            cont
        })
        .map_err(|e| self.shared.corrupt(e, self.version.meta.page_size as u64))?;
        if !stopped {
            stopped = !drain(None, &mut next, visit);
        }
        Ok(!stopped)
    }
}

/// Two sorted entry lists merged into one; `top` wins where both hold a key.
fn overlay(top: Vec<(Bytes, Slot)>, under: Vec<(Bytes, Slot)>) -> Vec<(Bytes, Slot)> {
    let mut out = Vec::with_capacity(top.len() + under.len());
    let mut under = under.into_iter().peekable();
    for (k, v) in top {
        while let Some((uk, _)) = under.peek() {
            match (**uk).cmp(&*k) {
                std::cmp::Ordering::Less => out.push(under.next().expect("peeked")),
                std::cmp::Ordering::Equal => {
                    under.next();
                }
                std::cmp::Ordering::Greater => break,
            }
        }
        out.push((k, v));
    }
    out.extend(under);
    out
}

impl KvRead for Snapshot {
    fn get(&self, bucket: Bucket, key: &[u8]) -> StorageResult<Option<Vec<u8>>> {
        Ok(self.get_ref(bucket, key)?.map(Cow::into_owned))
    }

    fn scan(
        &self,
        bucket: Bucket,
        start: &[u8],
        end: &[u8],
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> StorageResult<()> {
        Ok(self.scan_with(bucket, start, end, visit)?)
    }
}

/// The single writer (see [`Backend::batch`]). Its reads see its own writes (it reads like a
/// snapshot taken at the time of the read).
pub struct BatchWriter {
    shared: Arc<Shared>,
    /// Always `Some` until drop.
    state: Option<WriterState>,
}

impl Drop for BatchWriter {
    fn drop(&mut self) {
        *self.shared.writer.lock() = self.state.take();
    }
}

impl BatchWriter {
    fn state(&mut self) -> &mut WriterState {
        self.state
            .as_mut()
            .expect("writer state present until drop")
    }

    fn snapshot(&self) -> Snapshot {
        Backend {
            shared: self.shared.clone(),
        }
        .snapshot()
    }

    fn write(&mut self, bucket: Bucket, key: &[u8], val: Slot) -> Result<(), BackendError> {
        if let Some(why) = &self.state().failed {
            return Err(BackendError::Failed(why.clone()));
        }
        let view = &self.state().view;
        let max = max_key_len(view.version.meta.page_size as usize);
        if key.is_empty() || key.len() > max {
            return Err(BackendError::Invalid(format!(
                "key length {} outside [1, {max}]",
                key.len()
            )));
        }
        if val.as_ref().is_some_and(|v| v.len() > u32::MAX as usize) {
            return Err(BackendError::Invalid("value longer than 4 GiB".into()));
        }
        view.buf.write(bucket, key, val);
        let opts = &self.shared.opts;
        let (limit, interval) = (opts.batch_ops, opts.batch_interval);
        let st = self.state();
        st.ops_since_commit += 1;
        if st.ops_since_commit >= limit
            || coarse_now().saturating_sub(st.last_commit_coarse) >= interval
        {
            self.commit_now()?;
        }
        Ok(())
    }

    /// Commits if the batch interval has passed since the last commit and writes are buffered.
    /// The apply loop calls this when idle. Returns whether it committed.
    pub fn commit_if_due(&mut self) -> Result<bool, BackendError> {
        let interval = self.shared.opts.batch_interval;
        let st = self.state();
        if st.ops_since_commit > 0 && st.last_commit.elapsed() >= interval {
            self.commit_now()?;
            return Ok(true);
        }
        Ok(false)
    }

    /// Runs the checker on the newest commit, including the other meta page.
    pub fn check(&self) -> CheckReport {
        let version = self.shared.current.lock().version.clone();
        check::check(&self.shared, &version, true)
    }

    pub fn stats(&self) -> BackendStats {
        stats(&self.shared.current.lock().version)
    }

    /// Commits every buffered write (guarantee 3 of storage.rs). On error the writer refuses all
    /// further writes: the outcome on disk is either commit, and the caller must reopen.
    pub fn commit_now(&mut self) -> Result<(), BackendError> {
        if let Some(why) = &self.state().failed {
            return Err(BackendError::Failed(why.clone()));
        }
        let shared = self.shared.clone();
        let st = self.state();
        let view = st.view.clone();
        st.ops_since_commit = 0;
        st.last_commit = Instant::now();
        st.last_commit_coarse = coarse_now();
        let latest = view.buf.latest();
        if latest.is_empty() {
            return Ok(());
        }
        match commit(&shared, st, &view.version, &latest) {
            Ok(()) => Ok(()),
            Err(e) => {
                st.failed = Some(e.to_string());
                Err(e)
            }
        }
    }
}

/// `CLOCK_MONOTONIC_COARSE`: the monotonic clock as of the last timer tick (1-4 ms steps). Every
/// write checks the batch interval; this clock costs a few ns where `Instant::now` (reading the
/// time stamp counter in this VM) cost ~20 ns, 5 % of a revision append's CPU (BENCHMARKS.md,
/// "rev9"). A write may thus commit up to one tick after the interval ends.
fn coarse_now() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec to the valid pointer it is given; the clock id
    // exists on every Linux since 2.6.32 (on failure `ts` stays zero and no commit is early).
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    Duration::new(
        ts.tv_sec.max(0) as u64,
        ts.tv_nsec.clamp(0, 999_999_999) as u32,
    )
}

/// Writes the buffered state `latest` on top of `base` as transaction `base.txid + 1` and
/// publishes it.
fn commit(
    shared: &Shared,
    st: &mut WriterState,
    base: &Arc<Version>,
    latest: &[Latest],
) -> Result<(), BackendError> {
    let meta = base.meta;
    let ps = meta.page_size as u64;
    let txid = meta.txid + 1;
    let corrupt = |e: PageError| shared.corrupt(e, ps);

    // Pages freed by transaction t are reusable once every pinned txid is >= t. The older meta on
    // disk, meta.txid - 1, counts as pinned until this commit's meta replaces it (freelist.rs).
    st.live.retain(|(_, w)| w.strong_count() > 0);
    let oldest = st
        .live
        .iter()
        .map(|(t, _)| *t)
        .min()
        .unwrap_or(meta.txid)
        .min(meta.txid.saturating_sub(1));
    st.freelist.release(oldest);

    // The delta log's part of the commit (delta.rs), planned before any page is built. With the
    // option off and an empty log (the default) nothing is planned and the commit is as before.
    // The whole log is folded when online compaction is due (it runs only on an empty log, so
    // it never moves delta runs) or when the option is off but the file still has delta runs.
    let planned = if shared.opts.delta_log || !st.delta.is_empty() {
        let free = st.freelist.free_len() as u64;
        let compact_due = free >= 16 && free * 8 >= meta.page_count * 5;
        let fold_all = !st.delta.is_empty() && (compact_due || !shared.opts.delta_log);
        let input: Vec<_> = latest
            .iter()
            .map(|l| {
                (
                    bucket_index(l.bucket),
                    &l.entries[..],
                    l.arrived_sorted,
                    base.root(l.bucket.name()) != 0,
                )
            })
            .collect();
        let limits = Limits {
            max_entries: shared.opts.delta_max_entries,
            max_runs: shared.opts.delta_max_runs,
            min_batch: shared.opts.delta_min_batch,
        };
        let (map, by) = (&base.map, &base.by_bucket);
        Some(
            st.delta
                .plan(
                    &input,
                    shared.opts.delta_log,
                    fold_all,
                    limits,
                    &mut |b, key| tree::leaf_bounds(map, by[b], key),
                )
                .map_err(corrupt)?,
        )
    } else {
        None
    };

    let arena = Arena::default();
    let mut w = TreeWriter::new(
        &base.map,
        &arena,
        &st.recent,
        ps as usize,
        txid,
        &mut st.freelist,
        meta.page_count,
        st.last_pages,
    );
    if shared.opts.early_writes {
        w.write_early(&*shared.file, st.file_len / ps);
    }
    if meta.freelist != 0 {
        let n = header_overflow(
            &w.read(meta.freelist, Some(PageType::Freelist))
                .map_err(corrupt)?,
        ) as u64
            + 1;
        w.free(meta.freelist, n);
    }
    let mut roots = base.roots.clone();
    let mut catalog_ops: Vec<(Vec<u8>, [u8; 8])> = Vec::new();
    for bucket in Bucket::ALL {
        let b = bucket_index(bucket);
        let found = latest.iter().find(|l| l.bucket == bucket);
        let arrived_sorted = found.is_none_or(|l| l.arrived_sorted);
        let ops: Vec<Op<'_>> = match &planned {
            None => match found {
                None => continue,
                Some(l) => l
                    .entries
                    .iter()
                    .map(|(k, v)| Op {
                        key: k,
                        val: v.as_deref(),
                    })
                    .collect(),
            },
            Some((plan, tree)) => {
                let ops = merge_ops(&tree[b], &plan.fold[b]);
                if ops.is_empty() {
                    continue;
                }
                ops
            }
        };
        let name = bucket.name();
        let old = base.root(name);
        w.spread_leaves = !arrived_sorted;
        let new = w.apply(old, &ops).map_err(corrupt)?;
        w.spread_leaves = false;
        let known = roots.iter_mut().find(|(n, _)| n == name);
        if new != old || known.is_none() {
            catalog_ops.push((name.to_vec(), new.to_le_bytes()));
            match known {
                Some((_, r)) => *r = new,
                None => roots.push((name.to_vec(), new)),
            }
        }
    }
    // The delta log: free the folded runs (pending, like any page the older meta reaches) and
    // write the new delta run, listed in the written list like every run of the commit.
    let mut delta_head = st.delta.head();
    let mut new_run = None;
    if let Some((plan, _)) = &planned {
        for &(id, pages) in &plan.freed {
            w.free(id, pages);
        }
        if plan.freed.len() == st.delta.runs() {
            delta_head = 0;
        }
        if !plan.log_new.is_empty() {
            let pages = delta::run_pages_for(&plan.log_new, ps as usize);
            let id = w.alloc(pages);
            let run = delta::encode_run(
                &plan.log_new,
                id,
                st.delta.head_after_frees(plan),
                txid,
                st.delta.floor_after(plan, txid),
                ps as usize,
            );
            w.dirty.insert(id, run);
            new_run = Some((id, pages));
            delta_head = id;
        }
    }
    // Online compaction: when a quarter of the file is free, move up to `COMPACT_BUDGET` pages
    // from the top of the file to free pages below, reading at most `compact_visits` nodes per
    // commit and resuming where the previous commit stopped; the vacated tail is released like
    // any freed page and trimmed from the file by a later commit.
    // The extent's reserved pages count as free: nothing uses them yet.
    let free = w.freelist.free_len() as u64 + w.extent_len();
    if free >= 16 && free * 8 >= w.page_count * 5 && !roots.is_empty() && delta_head == 0 {
        let limit = w.page_count - free;
        let mut budget = COMPACT_BUDGET;
        let (first, from) = std::mem::take(&mut st.compact_cursor);
        let first = first % roots.len();
        let mut walk = Walk {
            visits: shared.opts.compact_visits.max(1),
            from,
            stopped_at: None,
        };
        for j in 0..roots.len() {
            let b = (first + j) % roots.len();
            if j > 0 {
                walk.from.clear();
            }
            let (name, root) = &mut roots[b];
            let new = w
                .relocate(*root, limit, &mut budget, &mut walk)
                .map_err(corrupt)?;
            if new != *root {
                *root = new;
                catalog_ops.retain(|(n, _)| n != name);
                catalog_ops.push((name.clone(), new.to_le_bytes()));
            }
            if let Some(key) = walk.stopped_at.take() {
                st.compact_cursor = (b, key);
                break;
            }
        }
    }
    catalog_ops.sort();
    let ops: Vec<Op<'_>> = catalog_ops
        .into_iter()
        .map(|(k, v)| Op {
            key: arena.keep(k),
            val: Some(arena.keep(v.to_vec())),
        })
        .collect();
    let mut catalog = w.apply(meta.catalog, &ops).map_err(corrupt)?;
    let free = w.freelist.free_len() as u64 + w.extent_len();
    if free >= 16 && free * 8 >= w.page_count * 5 {
        catalog = w
            .relocate(
                catalog,
                w.page_count - free,
                &mut 64,
                &mut Walk {
                    visits: usize::MAX,
                    from: Vec::new(),
                    stopped_at: None,
                },
            )
            .map_err(corrupt)?;
    }

    // The written list: every run of this commit but the freelist run itself, with the checksum
    // its header holds.
    let written: Vec<Written> = w
        .dirty
        .iter()
        .map(|(&id, run)| Written {
            id,
            checksum: get_u32(run, CHECKSUM_OFFSET),
            pages: (run.len() as u64 / ps) as u32,
        })
        .collect();
    // `body` is an upper bound: the free set may still gain the rest of the extent, and
    // allocating the freelist run otherwise only shrinks it (a refill that takes new pages at
    // the end of the file leaves its rest at the tail, which `trim_tail` removes again).
    // The bitmap form spans at most the free ids below the final `page_count`, which the
    // allocation below raises by at most `max(its pages, MAX_EXTENT)` (`TreeWriter::refill`).
    let list_body = freelist_body(
        w.freelist.free_len() + w.extent_len() as usize,
        w.freelist.pending_len(),
        written.len(),
    );
    let span = w.page_count + run_pages(ps as usize, list_body).max(MAX_EXTENT);
    let body = list_body.min(freelist_bitmap_body(
        span,
        w.freelist.pending_len(),
        written.len(),
    ));
    let fl_pages = run_pages(ps as usize, body);
    let fl_id = w.alloc(fl_pages);
    w.release_extent();
    w.page_count = w.freelist.trim_tail(w.page_count);
    let (free, pending) = w.freelist.to_parts();
    if run_pages(
        ps as usize,
        freelist_encoded_body(&free, pending.len(), written.len()),
    ) > fl_pages
    {
        return Err(BackendError::Failed(format!(
            "internal error: the freelist run of txid {txid} outgrew its {fl_pages} pages"
        )));
    }
    let fl_run = encode_freelist(&free, &pending, &written, fl_id, fl_pages, ps as usize);
    let new_meta = Meta {
        page_size: meta.page_size,
        txid,
        catalog,
        freelist: fl_id,
        page_count: w.page_count,
        version: if delta_head != 0 {
            FORMAT_V3
        } else {
            FORMAT_VERSION
        },
        freelist_checksum: get_u32(&fl_run, CHECKSUM_OFFSET),
        delta_head,
    };
    w.dirty.insert(fl_id, fl_run);
    let dirty = std::mem::take(&mut w.dirty);
    // Runs the tree writer wrote ahead (tree.rs, `EARLY_RUN`): step 2 skips them.
    let early = w.finish_early().map_err(|e| shared.io("write pages", e))?;
    drop(w);
    drop(arena);
    st.last_pages = dirty.values().map(|r| r.len() as u64 / ps).sum();
    // The end of the highest run this commit writes.
    let top = dirty
        .iter()
        .next_back()
        .map_or(0, |(&id, run)| id + run.len() as u64 / ps);

    // Step 1: grow the file, durably, before any meta can point past the old end; map the new
    // length for the new version; old versions keep the old mapping.
    let need = new_meta.page_count * ps;
    let mut map = base.map.clone();
    if need > st.file_len {
        // Grow by a quarter (at least 16 pages, at most 1 GiB): well under the shrink threshold
        // below, so a file never oscillates between growing and shrinking.
        let grow = (st.file_len / 4).clamp(16 * ps, 1 << 30);
        let new_len = need.max(st.file_len + grow).div_ceil(ps) * ps;
        shared
            .file
            .allocate(st.file_len, new_len - st.file_len)
            .map_err(|e| shared.io("grow", e))?;
        shared
            .file
            .sync_data()
            .map_err(|e| shared.io("fdatasync grown file", e))?;
        st.file_len = new_len;
    }
    if need > map.len() {
        let m = Mapping::new(&shared.file, st.file_len, ps as usize, shared.opts.mmap)
            .map_err(|e| shared.io("mmap", e))?;
        m.inherit_verified(&map);
        map = Arc::new(m);
    }
    for &id in dirty.keys() {
        map.forget_verified(id);
    }
    // Zeros ahead of a small commit's new tail pages (`ZERO_AHEAD_PAGES`): only pages at or past
    // the new `page_count`, which neither meta nor any snapshot reaches (free pages are
    // unreachable from both metas, freelist.rs invariant 1), and inside the file.
    let mut zeros = 0..0;
    if top > st.written_end {
        if st.last_pages < tree::MIN_EXTENT {
            let start = top.max(new_meta.page_count);
            zeros = start..(start + ZERO_AHEAD_PAGES).min(st.file_len / ps).max(start);
        }
        st.written_end = top.max(zeros.end);
    }

    // Step 2: runs, coalesced into writes of adjacent ids (of at most ~4 MiB), each one
    // vectored write of the runs' own buffers (no copy into one buffer first).
    let mut pieces: Vec<&[u8]> = Vec::new();
    let (mut batch_at, mut batch_len) = (0, 0u64);
    for (id, run) in dirty.iter().filter(|(id, _)| !early.contains(id)) {
        let at = id * ps;
        if batch_len > 0 && (at != batch_at + batch_len || batch_len >= 4 << 20) {
            shared
                .file
                .write_vectored_at(&pieces, batch_at)
                .map_err(|e| shared.io("write pages", e))?;
            pieces.clear();
            batch_len = 0;
        }
        if batch_len == 0 {
            batch_at = at;
        }
        pieces.push(run);
        batch_len += run.len() as u64;
    }
    if batch_len > 0 {
        shared
            .file
            .write_vectored_at(&pieces, batch_at)
            .map_err(|e| shared.io("write pages", e))?;
    }
    drop(pieces);
    let mut batch = std::mem::take(&mut st.batch);
    if !zeros.is_empty() {
        batch.clear();
        batch.resize(((zeros.end - zeros.start) * ps) as usize, 0);
        shared
            .file
            .write_at(&batch, zeros.start * ps)
            .map_err(|e| shared.io("zero pages ahead", e))?;
    }
    st.batch = batch;
    // Steps 3 and 4: the meta, then the one fdatasync that makes the whole commit durable.
    shared
        .file
        .write_at(&new_meta.encode(), (txid % 2) * ps)
        .map_err(|e| shared.io("write meta", e))?;
    shared
        .file
        .sync_data()
        .map_err(|e| shared.io("fdatasync commit", e))?;

    // Durable: the log's new state becomes the writer's, and readers of this txid see it.
    if let Some((plan, _)) = planned {
        st.delta.apply(plan, txid, new_run, &shared.delta, oldest);
    }
    let mut version = Arc::new(Version {
        meta: new_meta,
        map,
        by_bucket: by_bucket(&roots),
        roots,
        free_pages: st.freelist.free_len() as u64,
        pending_pages: st.freelist.pending_len() as u64,
        file_len: st.file_len,
    });
    st.live.push((txid, Arc::downgrade(&version)));
    st.recent = keep_recent(dirty);
    let buf = Arc::new(st.view.buf.successor());
    st.view = Arc::new(View {
        version: version.clone(),
        buf: buf.clone(),
    });
    *shared.current.lock() = st.view.clone();

    // Online shrink: give back a free tail of at least half the file, keeping an eighth of
    // `need` as slack so the next commits (compaction's among them, whose freelist run lists
    // every page they moved) do not grow the file straight back. Pages past `need` are
    // reachable from no live version (they are free and released), so no slice points there;
    // the new version gets a mapping of the new length. No oscillation: a file of `need` N is
    // cut only when it is >= 2N, to 1.125N, and grows only past that, by a quarter.
    if st.file_len - need >= (st.file_len / 2).max(16 * ps) {
        let keep = (need + need / 8).div_ceil(ps) * ps;
        shared
            .file
            .set_len(keep)
            .map_err(|e| shared.io("shrink", e))?;
        st.file_len = keep;
        st.written_end = st.written_end.min(keep / ps);
        let m = Mapping::new(&shared.file, keep, ps as usize, shared.opts.mmap)
            .map_err(|e| shared.io("mmap", e))?;
        m.inherit_verified(&version.map);
        version = Arc::new(Version {
            map: Arc::new(m),
            roots: version.roots.clone(),
            file_len: keep,
            ..*version
        });
        st.live.push((txid, Arc::downgrade(&version)));
        st.view = Arc::new(View { version, buf });
        *shared.current.lock() = st.view.clone();
    }
    Ok(())
}

/// The tree ops of one bucket: its tree-path writes and the delta log's folded values, merged in
/// key order; where both hold a key (a fold-all commit), the write wins.
fn merge_ops<'a>(
    tree: &'a [(Bytes, Slot)],
    fold: &'a std::collections::BTreeMap<Bytes, Slot>,
) -> Vec<Op<'a>> {
    let op = |(k, v): (&'a Bytes, &'a Slot)| Op {
        key: k,
        val: v.as_deref(),
    };
    let mut out = Vec::with_capacity(tree.len() + fold.len());
    let mut fold = fold.iter().peekable();
    for (k, v) in tree {
        while let Some((fk, _)) = fold.peek() {
            match (***fk).cmp(&**k) {
                std::cmp::Ordering::Less => out.push(op(fold.next().expect("peeked"))),
                std::cmp::Ordering::Equal => {
                    fold.next();
                }
                std::cmp::Ordering::Greater => break,
            }
        }
        out.push(op((k, v)));
    }
    out.extend(fold.map(op));
    out
}

/// A commit of at most this many runs keeps all of them for the next commit, a larger one only
/// its branch pages and freelist run (a bulk load's leaves would be hundreds of MiB).
const RECENT_ALL_RUNS: usize = 256;

/// The runs of a commit the next commit keeps in memory (tree.rs, [`Recent`]).
fn keep_recent(dirty: std::collections::BTreeMap<u64, Vec<u8>>) -> Recent {
    let all = dirty.len() <= RECENT_ALL_RUNS;
    dirty
        .into_iter()
        .filter(|(_, run)| {
            all || matches!(
                super::page::page_type(run),
                PageType::Branch | PageType::Freelist
            )
        })
        .collect()
}

impl KvRead for BatchWriter {
    fn get(&self, bucket: Bucket, key: &[u8]) -> StorageResult<Option<Vec<u8>>> {
        self.snapshot().get(bucket, key)
    }

    fn scan(
        &self,
        bucket: Bucket,
        start: &[u8],
        end: &[u8],
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> StorageResult<()> {
        self.snapshot().scan(bucket, start, end, visit)
    }
}

impl BatchWrite for BatchWriter {
    fn put(&mut self, bucket: Bucket, key: &[u8], value: &[u8]) -> StorageResult<()> {
        Ok(self.write(bucket, key, Some(Arc::from(value)))?)
    }

    fn delete(&mut self, bucket: Bucket, key: &[u8]) -> StorageResult<()> {
        Ok(self.write(bucket, key, None)?)
    }

    fn commit(&mut self) -> StorageResult<()> {
        Ok(self.commit_now()?)
    }
}

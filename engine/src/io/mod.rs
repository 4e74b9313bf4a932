//! The I/O seam: every file operation ringkv performs goes through [`Vfs`] and [`File`].
//!
//! Three implementations share the contract below:
//! - `UringVfs`: io_uring (the `io-uring` crate). Each thread that does I/O owns its ring, so the
//!   thread that leads a WAL flush submits its own write→fdatasync chain without a channel hop,
//!   and can start it ([`File::start_write_and_sync`]) and do other work before waiting.
//! - [`StdVfs`]: `pread`/`pwrite`/`fdatasync` through std, for machines without io_uring.
//! - `FaultVfs`: in memory, for tests. It keeps a "written" and a "durable" image of every file,
//!   can fail the Nth operation, and can produce the image a power cut would leave.
//!
//! # Contract (all implementations)
//! - `write_at` writes the whole buffer or returns an error. After an error, the bytes in the
//!   target range are unspecified (a prefix may have landed). Nothing written is durable until a
//!   later `sync_data` on the same file returned `Ok`.
//! - `sync_data` error is fatal for the caller's file: the kernel may have dropped the dirty pages
//!   and cleared the error, so a retry that "succeeds" proves nothing. Callers never retry it.
//! - A created, removed or renamed directory entry is durable only after `sync_dir` of its parent
//!   returned `Ok`.
//! - With [`OpenOptions::direct`], buffers, offsets and lengths of `read_at`/`write_at` must be
//!   multiples of [`DIRECT_ALIGN`] and buffers must start at such an address; violating this is
//!   a caller bug reported as `EINVAL` (the fault implementation checks it too, so tests catch it).
//! - `read_at` may return fewer bytes than asked only at end of file.

#[cfg(test)]
mod conformance;
#[cfg(any(test, feature = "internals"))]
mod fault;
mod std_io;
mod uring;

use std::ffi::OsString;
use std::io;
use std::os::fd::RawFd;
use std::path::Path;
use std::sync::Arc;

#[cfg(any(test, feature = "internals"))]
pub use fault::{CrashMode, Fault, FaultVfs, SECTOR};
pub use std_io::StdVfs;
pub use uring::{UringVfs, pin_current_thread};

/// Alignment required for O_DIRECT buffers, offsets and lengths (the logical block size we
/// assume for every device; 4 KiB also matches the page size of the backend).
pub const DIRECT_ALIGN: usize = 4096;

/// Which implementation a [`Vfs`] is; printed at startup and in benchmark output.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoKind {
    Uring,
    Std,
    Fault,
}

/// How to open a file. Build with [`OpenOptions::read_write`] or [`OpenOptions::read_only`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpenOptions {
    pub write: bool,
    /// Create the file if it does not exist.
    pub create: bool,
    /// Fail if the file exists (implies `create`).
    pub create_new: bool,
    /// Bypass the page cache (O_DIRECT); see the alignment rule in the module docs.
    pub direct: bool,
}

impl OpenOptions {
    pub fn read_only() -> Self {
        OpenOptions {
            write: false,
            create: false,
            create_new: false,
            direct: false,
        }
    }

    pub fn read_write() -> Self {
        OpenOptions {
            write: true,
            create: false,
            create_new: false,
            direct: false,
        }
    }

    pub fn create(mut self, yes: bool) -> Self {
        self.create = yes;
        self
    }

    pub fn create_new(mut self, yes: bool) -> Self {
        self.create_new = yes;
        self
    }

    pub fn direct(mut self, yes: bool) -> Self {
        self.direct = yes;
        self
    }
}

/// One open file. Shared between threads behind an `Arc`; positional I/O only.
pub trait File: Send + Sync {
    /// Reads up to `buf.len()` bytes at `offset`; short only at end of file.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize>;

    /// Reads exactly `buf.len()` bytes at `offset`, or fails with `UnexpectedEof`.
    fn read_exact_at(&self, mut buf: &mut [u8], mut offset: u64) -> io::Result<()> {
        while !buf.is_empty() {
            let n = self.read_at(buf, offset)?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "read past end of file",
                ));
            }
            buf = &mut buf[n..];
            offset += n as u64;
        }
        Ok(())
    }

    /// Writes all of `buf` at `offset`. Not durable until [`File::sync_data`].
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;

    /// Writes all of `buf` at `offset`, then `fdatasync`s; `Ok` means the write is durable.
    /// io_uring submits both as one linked chain (one syscall, one completion wait).
    fn write_at_and_sync(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.write_at(buf, offset)?;
        self.sync_data()
    }

    /// [`File::write_at_and_sync`] in two steps: this call, then [`WriteSync::wait`], which
    /// returns the outcome; the caller may work in between. io_uring submits the write and the
    /// fdatasync here, so they are in flight meanwhile; the default does all the I/O in `wait`.
    /// `buf` stays borrowed until the handle is waited for or dropped (dropping waits too; a
    /// dropped deferred handle does no I/O). The handle belongs to the calling thread.
    fn start_write_and_sync<'a>(&'a self, buf: &'a [u8], offset: u64) -> WriteSync<'a> {
        WriteSync::deferred(move || self.write_at_and_sync(buf, offset))
    }

    /// Writes the concatenation of `bufs` at `offset`, like one [`File::write_at`] of it, without
    /// the caller copying the pieces together first (`pwritev` where the file has a descriptor
    /// and is not `O_DIRECT`). Not durable until [`File::sync_data`]. The default concatenates
    /// and makes one `write_at`, so a fault-injecting file sees one write operation either way.
    fn write_vectored_at(&self, bufs: &[&[u8]], offset: u64) -> io::Result<()> {
        self.write_at(&bufs.concat(), offset)
    }

    /// `fdatasync`. An error is fatal for the file; never retry (see module docs).
    fn sync_data(&self) -> io::Result<()>;

    /// Asks the kernel to start writing back the dirty pages of `[offset, offset+len)` now
    /// (`sync_file_range(SYNC_FILE_RANGE_WRITE)`) and returns without waiting: a hint that lets
    /// the device work while the caller computes. Makes nothing durable; only
    /// [`File::sync_data`] does. The default (in-memory files) does nothing.
    fn start_writeback(&self, offset: u64, len: u64) -> io::Result<()> {
        let _ = (offset, len);
        Ok(())
    }

    /// Reserves blocks for `[offset, offset+len)` (fallocate mode 0); extends the length.
    fn allocate(&self, offset: u64, len: u64) -> io::Result<()>;

    /// Truncates or extends (with zeros) to `len` bytes.
    fn set_len(&self, len: u64) -> io::Result<()>;

    /// Current length in bytes.
    fn size(&self) -> io::Result<u64>;

    /// The OS file descriptor, for read-only memory mapping. `None` for in-memory files, whose
    /// readers must go through [`File::read_at`].
    fn raw_fd(&self) -> Option<RawFd>;
}

/// A write+fdatasync started by [`File::start_write_and_sync`].
#[must_use = "the outcome of a write+fdatasync must be checked"]
pub struct WriteSync<'a> {
    state: WriteSyncState<'a>,
    /// The io_uring handle must be waited for on the thread whose ring it was submitted to.
    _not_send: std::marker::PhantomData<*const ()>,
}

enum WriteSyncState<'a> {
    Done(io::Result<()>),
    Deferred(Box<dyn FnOnce() -> io::Result<()> + 'a>),
    Uring(uring::InFlight<'a>),
}

impl<'a> WriteSync<'a> {
    /// A handle for an operation that already completed with `result`.
    pub fn done(result: io::Result<()>) -> WriteSync<'a> {
        WriteSync {
            state: WriteSyncState::Done(result),
            _not_send: std::marker::PhantomData,
        }
    }

    /// A handle whose `wait` runs `op`.
    pub fn deferred(op: impl FnOnce() -> io::Result<()> + 'a) -> WriteSync<'a> {
        WriteSync {
            state: WriteSyncState::Deferred(Box::new(op)),
            _not_send: std::marker::PhantomData,
        }
    }

    fn uring(op: uring::InFlight<'a>) -> WriteSync<'a> {
        WriteSync {
            state: WriteSyncState::Uring(op),
            _not_send: std::marker::PhantomData,
        }
    }

    /// Waits for the write and the fdatasync; `Ok` means the write is durable (same contract
    /// as [`File::write_at_and_sync`]).
    pub fn wait(self) -> io::Result<()> {
        match self.state {
            WriteSyncState::Done(r) => r,
            WriteSyncState::Deferred(op) => op(),
            WriteSyncState::Uring(op) => op.wait(),
        }
    }
}

impl std::fmt::Debug for WriteSync<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match &self.state {
            WriteSyncState::Done(_) => "done",
            WriteSyncState::Deferred(_) => "deferred",
            WriteSyncState::Uring(_) => "in flight",
        };
        f.debug_struct("WriteSync").field("state", &state).finish()
    }
}

/// A file system: opens files and changes directory entries.
pub trait Vfs: Send + Sync + 'static {
    fn kind(&self) -> IoKind;

    fn open(&self, path: &Path, opts: OpenOptions) -> io::Result<Arc<dyn File>>;

    /// Creates `path` and missing parents. Not durable until `sync_dir` of each parent.
    fn create_dir_all(&self, path: &Path) -> io::Result<()>;

    /// Names (not paths) of the entries of a directory, in no particular order.
    fn list_dir(&self, path: &Path) -> io::Result<Vec<OsString>>;

    fn exists(&self, path: &Path) -> bool;

    fn remove_file(&self, path: &Path) -> io::Result<()>;

    /// Atomically replaces `to` with `from`.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;

    /// Makes the entries of directory `path` durable (fsync on the directory).
    fn sync_dir(&self, path: &Path) -> io::Result<()>;

    /// Takes an exclusive lock on `path` (created if missing) without waiting, held until the
    /// returned value is dropped or the process exits. Fails with `ErrorKind::WouldBlock` if
    /// another holder has it: another process, or another `lock_file` of this one (real files
    /// use `flock`, which is per open file description).
    fn lock_file(&self, path: &Path) -> io::Result<FileLock>;
}

/// An exclusive lock taken with [`Vfs::lock_file`]; released when dropped.
pub struct FileLock {
    _held: Box<dyn Send + Sync>,
}

impl FileLock {
    pub(crate) fn new(held: impl Send + Sync + 'static) -> FileLock {
        FileLock {
            _held: Box::new(held),
        }
    }
}

impl std::fmt::Debug for FileLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileLock").finish_non_exhaustive()
    }
}

/// Picks the implementation named by `kind` (`Fault` is built by tests directly).
pub fn new_vfs(kind: IoKind) -> io::Result<Arc<dyn Vfs>> {
    match kind {
        IoKind::Std => Ok(Arc::new(StdVfs::new())),
        IoKind::Uring => Ok(Arc::new(UringVfs::new()?)),
        IoKind::Fault => Err(io::Error::new(
            io::ErrorKind::Unsupported,
            format!("I/O implementation {kind:?} is not available through new_vfs"),
        )),
    }
}

/// Rounds `n` up to a multiple of [`DIRECT_ALIGN`].
pub fn align_up(n: u64) -> u64 {
    n.div_ceil(DIRECT_ALIGN as u64) * DIRECT_ALIGN as u64
}

/// `EINVAL` unless `buf`, `len` and `offset` satisfy the O_DIRECT alignment rule.
pub(crate) fn check_direct(ptr: *const u8, len: usize, offset: u64) -> io::Result<()> {
    let align = DIRECT_ALIGN;
    if !(ptr as usize).is_multiple_of(align)
        || !len.is_multiple_of(align)
        || !offset.is_multiple_of(align as u64)
    {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    Ok(())
}

/// A heap buffer aligned to [`DIRECT_ALIGN`], for O_DIRECT I/O.
pub struct AlignedBuf {
    ptr: std::ptr::NonNull<u8>,
    len: usize,
}

// SAFETY: AlignedBuf owns its allocation exclusively, like a Vec<u8>.
unsafe impl Send for AlignedBuf {}
// SAFETY: shared access only hands out `&[u8]`, like a Vec<u8>.
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    /// A zeroed buffer of `len` bytes, rounded up to a multiple of [`DIRECT_ALIGN`].
    pub fn zeroed(len: usize) -> Self {
        let len = (align_up(len as u64) as usize).max(DIRECT_ALIGN);
        let layout = Self::layout(len);
        // SAFETY: layout has non-zero size (len >= DIRECT_ALIGN).
        let raw = unsafe { std::alloc::alloc_zeroed(layout) };
        let Some(ptr) = std::ptr::NonNull::new(raw) else {
            std::alloc::handle_alloc_error(layout)
        };
        AlignedBuf { ptr, len }
    }

    fn layout(len: usize) -> std::alloc::Layout {
        std::alloc::Layout::from_size_align(len, DIRECT_ALIGN).expect("aligned buffer layout")
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl std::ops::Deref for AlignedBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: ptr is a live allocation of len initialised (zeroed) bytes owned by self.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl std::ops::DerefMut for AlignedBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in Deref, and &mut self guarantees exclusive access.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: ptr was allocated in `zeroed` with exactly this layout and is freed once.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), Self::layout(self.len)) }
    }
}

impl std::fmt::Debug for AlignedBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlignedBuf")
            .field("len", &self.len)
            .finish()
    }
}

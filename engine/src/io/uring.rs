//! The io_uring implementation of the I/O seam.
//!
//! Every thread that does I/O owns one ring, created lazily on its first operation and closed
//! when the thread exits (a `thread_local!`). Whichever thread leads a WAL flush therefore
//! submits its own write→fdatasync chain with no channel hop and no lock; other threads (the
//! segment allocator, the backend) get rings of their own. Each operation pushes its SQEs, submits them in one
//! `io_uring_enter`, and reaps all of their completions before returning, so a ring is empty
//! between operations and operations are synchronous for their caller.
//!
//! `write_at_and_sync` is one linked chain: `WRITE` with `IOSQE_IO_LINK`, then
//! `FSYNC(DATASYNC)`. A short write breaks the link (the fsync completes with `-ECANCELED`); we
//! then finish the write with plain writes and issue a separate fdatasync. An fdatasync error is
//! returned as is and never retried (see the contract in `io/mod.rs`).
//!
//! `start_write_and_sync` submits the same chain and returns without waiting
//! ([`InFlight`]); the WAL leader delivers the previous flush's outcomes meanwhile. Its entries
//! carry user data with [`STARTED`] set; a synchronous operation on the same thread (a callback
//! doing I/O during that delivery) that reaps their completions keeps them in this thread's
//! `STASH` for [`InFlight::wait`].
//!
//! Registered files and buffers are not used: with one fdatasync per flush the per-SQE fd
//! lookup and page pinning they save are far below the device's flush latency.
//!
//! Opening, sizing and directory operations are rare and go through plain syscalls, as in the
//! std implementation.

use std::cell::{Cell, RefCell};
use std::ffi::OsString;
use std::fs;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::path::Path;
use std::sync::Arc;

use io_uring::{IoUring, opcode, squeue, types};

use super::std_io::{StdFile, dirs};
use super::{File, IoKind, OpenOptions, Vfs, WriteSync, check_direct};

/// Submission queue size of each thread's ring. Every operation needs at most two SQEs and
/// reaps them before returning.
const RING_ENTRIES: u32 = 8;

/// Largest length passed in one read/write SQE (the SQE length field is 32 bits).
const MAX_IO_LEN: usize = 1 << 30;

/// User-data bit of the entries of a started (asynchronous) operation: bit 63 set, the
/// operation's number in bits 1..63, bit 0 = 0 for the write and 1 for the fdatasync.
/// Synchronous operations use their position (< 2) as user data, so the two never collide.
const STARTED: u64 = 1 << 63;

thread_local! {
    /// This thread's ring; `None` until the first operation on this thread.
    static RING: RefCell<Option<IoUring>> = const { RefCell::new(None) };
    /// Completions of started operations (user data, result) reaped by another call.
    static STASH: RefCell<Vec<(u64, i32)>> = const { RefCell::new(Vec::new()) };
    /// Started operations of this thread not yet waited for, and the next one's number.
    static STARTED_OPS: Cell<(usize, u64)> = const { Cell::new((0, 0)) };
}

fn started_in_flight() -> usize {
    STARTED_OPS.with(|c| c.get().0)
}

fn new_ring() -> io::Result<IoUring> {
    // Single issuer + cooperative task running: only this thread submits, and completion work
    // runs at this thread's next kernel entry or exit (no inter-processor interrupt). Not
    // *deferred* task running: that would also defer the start of a linked fdatasync until
    // the thread waits, so a started write+fdatasync ([`InFlight`]) would not progress while
    // the WAL leader delivers the previous batch. Kernels older than 6.0 reject the flags;
    // fall back to a plain ring there.
    IoUring::builder()
        .setup_single_issuer()
        .setup_coop_taskrun()
        .build(RING_ENTRIES)
        .or_else(|_| IoUring::new(RING_ENTRIES))
}

/// Submits `entries` on this thread's ring (created on first use) and waits for all of their
/// completions; returns each entry's result (`cqe.res`: a count, or a negated errno).
///
/// # Safety
/// Every buffer an entry points to must stay valid (and, for reads, not be accessed otherwise)
/// until this function returns; it returns only after the kernel completed every entry, or
/// before it accepted any.
unsafe fn submit<const N: usize>(entries: [squeue::Entry; N]) -> io::Result<[i32; N]> {
    RING.with(|cell| {
        // No ring operation calls back into another one, so the borrow is never held twice.
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            *slot = Some(new_ring()?);
        }
        let ring = slot.as_mut().expect("ring was just created");
        // SAFETY: forwarded from this function's contract.
        match unsafe { run(ring, entries) } {
            Ok(results) => Ok(results),
            Err(RunError::NothingSubmitted(e)) => {
                // The submission queue still holds our entries; never submit them later.
                if started_in_flight() > 0 {
                    // Dropping the ring would abandon a started operation whose buffer the
                    // kernel may still read; keeping it would submit our stale entries later.
                    eprintln!(
                        "ringkv: io_uring_enter failed ({e}) with a started write in flight; aborting"
                    );
                    std::process::abort();
                }
                *slot = None;
                Err(e)
            }
        }
    })
}

enum RunError {
    /// `io_uring_enter` failed before the kernel took any entry: nothing is in flight.
    NothingSubmitted(io::Error),
}

fn is_retry(errno: i32) -> bool {
    errno == libc::EINTR || errno == libc::EAGAIN || errno == libc::EBUSY
}

/// Pushes `entries` (their `user_data` must be their position), submits and reaps them all.
///
/// Invariant relied on: on entry the ring holds no entry of another synchronous call (every
/// call reaps all it submitted); entries of started operations may be in flight, and their
/// completions are stashed for [`InFlight::wait`].
///
/// # Safety
/// As for [`submit`].
unsafe fn run<const N: usize>(
    ring: &mut IoUring,
    entries: [squeue::Entry; N],
) -> Result<[i32; N], RunError> {
    let mut results = [0i32; N];
    {
        let mut sq = ring.submission();
        // SAFETY: the caller keeps the buffers valid until every completion is reaped below.
        unsafe { sq.push_multiple(&entries) }.map_err(|_| {
            RunError::NothingSubmitted(io::Error::other("io_uring submission queue full"))
        })?;
    }
    let mut reaped = 0;
    while reaped < N {
        if let Err(e) = ring.submit_and_wait(N - reaped) {
            let errno = e.raw_os_error().unwrap_or(0);
            if !is_retry(errno) {
                if reaped == 0 && ring.submission().len() == N {
                    return Err(RunError::NothingSubmitted(e));
                }
                // Entries are in flight and reference the caller's buffers; returning would
                // let those be freed under the kernel. There is no safe way out.
                eprintln!("ringkv: io_uring_enter failed with I/O in flight: {e}; aborting");
                std::process::abort();
            }
        }
        for cqe in ring.completion() {
            if cqe.user_data() & STARTED != 0 {
                STASH.with(|s| s.borrow_mut().push((cqe.user_data(), cqe.result())));
                continue;
            }
            let slot = cqe.user_data() as usize;
            assert!(slot < N, "completion for an entry this call did not submit");
            results[slot] = cqe.result();
            reaped += 1;
        }
    }
    Ok(results)
}

/// Checks that io_uring works on this machine: creates this thread's ring and runs a NOP.
pub fn probe() -> io::Result<()> {
    let nop = opcode::Nop::new().build().user_data(0);
    // SAFETY: a NOP references no memory.
    let result = unsafe { submit([nop]) }.and_then(|[res]| {
        if res < 0 {
            return Err(io::Error::from_raw_os_error(-res));
        }
        Ok(())
    });
    result.map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("io_uring is unavailable ({e}); choose the std I/O implementation instead"),
        )
    })
}

/// Pins the calling thread to CPU `cpu` (`sched_setaffinity`). Used for the WAL flush thread.
pub fn pin_current_thread(cpu: usize) -> io::Result<()> {
    // SAFETY: cpu_set_t is a plain bit array for which all-zero is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    if cpu >= 8 * std::mem::size_of::<libc::cpu_set_t>() {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    // SAFETY: `cpu` was checked to be inside the set's bit array just above.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: pid 0 is the calling thread; `set` is a valid cpu_set_t of the size we pass.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// io_uring-backed file I/O. Cheap to share; each thread lazily gets its own ring.
#[derive(Debug, Default)]
pub struct UringVfs {
    _private: (),
}

impl UringVfs {
    /// Fails with a clear error when io_uring is not usable here (old kernel, seccomp,
    /// `kernel.io_uring_disabled`).
    pub fn new() -> io::Result<Self> {
        probe()?;
        Ok(UringVfs { _private: () })
    }
}

struct UringFile {
    /// Owns the descriptor; opened with the same flags as the std implementation.
    inner: StdFile,
    direct: bool,
}

impl UringFile {
    fn fd(&self) -> types::Fd {
        types::Fd(self.inner.fd())
    }

    fn write_sqe(&self, buf: &[u8], offset: u64) -> squeue::Entry {
        let len = buf.len().min(MAX_IO_LEN) as u32;
        opcode::Write::new(self.fd(), buf.as_ptr(), len)
            .offset(offset)
            .build()
    }

    fn fsync_sqe(&self) -> squeue::Entry {
        opcode::Fsync::new(self.fd())
            .flags(types::FsyncFlags::DATASYNC)
            .build()
    }

    /// Writes `buf` at `offset` with plain (unlinked) write SQEs until all of it landed.
    fn write_all(&self, mut buf: &[u8], mut offset: u64) -> io::Result<()> {
        while !buf.is_empty() {
            let sqe = self.write_sqe(buf, offset).user_data(0);
            // SAFETY: `buf` is borrowed for the whole call and `run` returns only after the
            // write completed.
            let [res] = unsafe { submit([sqe]) }?;
            let Some(n) = check_res(res)? else { continue };
            if n == 0 {
                return Err(io::Error::new(io::ErrorKind::WriteZero, "write returned 0"));
            }
            buf = &buf[n..];
            offset += n as u64;
        }
        Ok(())
    }
}

/// A completion's result as a byte count; `None` for an error worth retrying (EINTR, EAGAIN).
fn check_res(res: i32) -> io::Result<Option<usize>> {
    if res >= 0 {
        Ok(Some(res as usize))
    } else if is_retry(-res) {
        Ok(None)
    } else {
        Err(io::Error::from_raw_os_error(-res))
    }
}

impl File for UringFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        if self.direct {
            check_direct(buf.as_ptr(), buf.len(), offset)?;
        }
        let mut done = 0;
        while done < buf.len() {
            let rest = &mut buf[done..];
            let len = rest.len().min(MAX_IO_LEN) as u32;
            let sqe = opcode::Read::new(self.fd(), rest.as_mut_ptr(), len)
                .offset(offset + done as u64)
                .build()
                .user_data(0);
            // SAFETY: `buf` is exclusively borrowed for the whole call and `run` returns only
            // after the read completed.
            let [res] = unsafe { submit([sqe]) }?;
            match check_res(res)? {
                Some(0) => break,
                Some(n) => done += n,
                None => {}
            }
        }
        Ok(done)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        if self.direct {
            check_direct(buf.as_ptr(), buf.len(), offset)?;
        }
        self.write_all(buf, offset)
    }

    fn write_at_and_sync(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        if self.direct {
            check_direct(buf.as_ptr(), buf.len(), offset)?;
        }
        if buf.len() > MAX_IO_LEN {
            self.write_all(buf, offset)?;
            return self.sync_data();
        }
        let write = self
            .write_sqe(buf, offset)
            .flags(squeue::Flags::IO_LINK)
            .user_data(0);
        let sync = self.fsync_sqe().user_data(1);
        // SAFETY: `buf` is borrowed for the whole call and `run` returns only after both
        // entries completed.
        let [w, s] = unsafe { submit([write, sync]) }?;
        let written = check_res(w)?.unwrap_or(0);
        if written == buf.len() {
            // The write completed in full, so the fsync ran: its result is final.
            if s < 0 {
                return Err(io::Error::from_raw_os_error(-s));
            }
            return Ok(());
        }
        // Short write: the linked fsync was cancelled (or, if it ran, did not cover the rest).
        self.write_all(&buf[written..], offset + written as u64)?;
        self.sync_data()
    }

    fn start_write_and_sync<'a>(&'a self, buf: &'a [u8], offset: u64) -> WriteSync<'a> {
        if self.direct
            && let Err(e) = check_direct(buf.as_ptr(), buf.len(), offset)
        {
            return WriteSync::done(Err(e));
        }
        if buf.len() > MAX_IO_LEN {
            return WriteSync::done(self.write_at_and_sync(buf, offset));
        }
        match InFlight::start(self, buf, offset) {
            Ok(op) => WriteSync::uring(op),
            Err(e) => WriteSync::done(Err(e)),
        }
    }

    fn sync_data(&self) -> io::Result<()> {
        let sqe = self.fsync_sqe().user_data(0);
        // SAFETY: an fsync references no memory.
        let [res] = unsafe { submit([sqe]) }?;
        if res < 0 {
            return Err(io::Error::from_raw_os_error(-res));
        }
        Ok(())
    }

    fn allocate(&self, offset: u64, len: u64) -> io::Result<()> {
        loop {
            let sqe = opcode::Fallocate::new(self.fd(), len)
                .offset(offset)
                .build()
                .user_data(0);
            // SAFETY: fallocate references no memory.
            let [res] = unsafe { submit([sqe]) }?;
            if res >= 0 {
                return Ok(());
            }
            if -res != libc::EINTR {
                return Err(io::Error::from_raw_os_error(-res));
            }
        }
    }

    fn start_writeback(&self, offset: u64, len: u64) -> io::Result<()> {
        super::std_io::start_writeback(self.inner.fd().as_raw_fd(), offset, len)
    }

    fn write_vectored_at(&self, bufs: &[&[u8]], offset: u64) -> io::Result<()> {
        if self.direct {
            return self.write_at(&bufs.concat(), offset);
        }
        super::std_io::pwritev_all(self.inner.fd().as_raw_fd(), bufs, offset)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.inner.set_len(len)
    }

    fn size(&self) -> io::Result<u64> {
        self.inner.size()
    }

    fn raw_fd(&self) -> Option<RawFd> {
        Some(self.inner.fd().as_raw_fd())
    }
}

/// A write→fdatasync chain submitted on this thread's ring and not yet reaped.
///
/// Invariant relied on: while it exists, `buf` is borrowed (the kernel reads it until the
/// write completes), and its two completions are either still in the ring or in `STASH`.
/// Dropping it waits for them. (If it were leaked with `mem::forget`, the kernel would still
/// only read `buf`; the file's content, not this process's memory, would be at stake.)
pub(crate) struct InFlight<'a> {
    file: &'a UringFile,
    buf: &'a [u8],
    offset: u64,
    /// User data of the write; the fdatasync's is `tag | 1`.
    tag: u64,
    /// Completion results (write, fdatasync) once reaped.
    results: [Option<i32>; 2],
}

impl<'a> InFlight<'a> {
    fn start(file: &'a UringFile, buf: &'a [u8], offset: u64) -> io::Result<InFlight<'a>> {
        let number = STARTED_OPS.with(|c| c.get().1);
        let tag = STARTED | (number << 1);
        let write = file
            .write_sqe(buf, offset)
            .flags(squeue::Flags::IO_LINK)
            .user_data(tag);
        let sync = file.fsync_sqe().user_data(tag | 1);
        RING.with(|cell| {
            let mut slot = cell.borrow_mut();
            if slot.is_none() {
                *slot = Some(new_ring()?);
            }
            let ring = slot.as_mut().expect("ring was just created");
            {
                let mut sq = ring.submission();
                // SAFETY: `buf` stays borrowed by the returned `InFlight`, which reaps both
                // completions before it is gone (in `wait` or `Drop`).
                unsafe { sq.push_multiple(&[write, sync]) }
                    .map_err(|_| io::Error::other("io_uring submission queue full"))?;
            }
            loop {
                match ring.submit() {
                    Ok(_) => break,
                    Err(e) if is_retry(e.raw_os_error().unwrap_or(0)) => {}
                    Err(e) => {
                        if ring.submission().is_empty() {
                            // Submitted after all (the error came later): wait as usual.
                            break;
                        }
                        if started_in_flight() > 0 {
                            eprintln!(
                                "ringkv: io_uring_enter failed ({e}) with a started write in flight; aborting"
                            );
                            std::process::abort();
                        }
                        // Nothing was taken by the kernel; never submit these entries later.
                        *slot = None;
                        return Err(e);
                    }
                }
            }
            STARTED_OPS.with(|c| {
                let (n, next) = c.get();
                c.set((n + 1, next.wrapping_add(1) % (STARTED >> 1)));
            });
            Ok(InFlight {
                file,
                buf,
                offset,
                tag,
                results: [None, None],
            })
        })
    }

    /// Takes this operation's completions from the stash; true once both are known.
    fn take_stashed(&mut self) -> bool {
        STASH.with(|s| {
            s.borrow_mut().retain(|&(data, res)| {
                if data & !1 == self.tag {
                    self.results[(data & 1) as usize] = Some(res);
                    false
                } else {
                    true
                }
            })
        });
        self.results.iter().all(Option::is_some)
    }

    /// Reaps both completions (blocking), stashing those of other started operations.
    fn reap(&mut self) {
        while !self.take_stashed() {
            RING.with(|cell| {
                let mut slot = cell.borrow_mut();
                let ring = slot
                    .as_mut()
                    .expect("the ring of a started operation exists until it is reaped");
                // Wait for all that is missing at once: one wake-up for the chain.
                let missing = self.results.iter().filter(|r| r.is_none()).count();
                if let Err(e) = ring.submit_and_wait(missing)
                    && !is_retry(e.raw_os_error().unwrap_or(0))
                {
                    eprintln!("ringkv: io_uring_enter failed with I/O in flight: {e}; aborting");
                    std::process::abort();
                }
                for cqe in ring.completion() {
                    assert!(
                        cqe.user_data() & STARTED != 0,
                        "completion of a synchronous entry outside its call"
                    );
                    STASH.with(|s| s.borrow_mut().push((cqe.user_data(), cqe.result())));
                }
            });
        }
        STARTED_OPS.with(|c| {
            let (n, next) = c.get();
            c.set((n - 1, next));
        });
    }

    pub(crate) fn wait(mut self) -> io::Result<()> {
        self.reap();
        let [w, s] = self.results.map(|r| r.expect("reaped"));
        let (file, buf, offset) = (self.file, self.buf, self.offset);
        // Reaped: nothing left for `Drop`.
        std::mem::forget(self);
        let written = check_res(w)?.unwrap_or(0);
        if written == buf.len() {
            // The write completed in full, so the fsync ran: its result is final.
            if s < 0 {
                return Err(io::Error::from_raw_os_error(-s));
            }
            return Ok(());
        }
        // Short write: the linked fsync was cancelled (or, if it ran, did not cover the rest).
        file.write_all(&buf[written..], offset + written as u64)?;
        file.sync_data()
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.reap();
    }
}

impl Vfs for UringVfs {
    fn kind(&self) -> IoKind {
        IoKind::Uring
    }

    fn open(&self, path: &Path, opts: OpenOptions) -> io::Result<Arc<dyn File>> {
        Ok(Arc::new(UringFile {
            inner: StdFile::open(path, opts)?,
            direct: opts.direct,
        }))
    }

    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        dirs::create_dir_all(path)
    }

    fn list_dir(&self, path: &Path) -> io::Result<Vec<OsString>> {
        dirs::list_dir(path)
    }

    fn exists(&self, path: &Path) -> bool {
        path.exists()
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        fs::remove_file(path)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(from, to)
    }

    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        dirs::sync_dir(path)
    }

    fn lock_file(&self, path: &Path) -> io::Result<super::FileLock> {
        dirs::lock_file(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::AlignedBuf;

    #[test]
    fn uring_passes_the_shared_behaviour_suite() {
        let vfs = UringVfs::new().expect("io_uring must be available where the tests run");
        let dir = tempfile::tempdir().unwrap();
        crate::io::conformance::run_all(&vfs, dir.path());
    }

    #[test]
    fn each_thread_gets_its_own_ring() {
        let vfs = Arc::new(UringVfs::new().unwrap());
        let dir = tempfile::tempdir().unwrap();
        let f = vfs
            .open(
                &dir.path().join("f"),
                OpenOptions::read_write().create(true),
            )
            .unwrap();
        f.allocate(0, 8 * 4096).unwrap();
        let threads: Vec<_> = (0..4u8)
            .map(|i| {
                let f = f.clone();
                std::thread::spawn(move || {
                    let buf = vec![i + 1; 4096];
                    for _ in 0..20 {
                        f.write_at_and_sync(&buf, u64::from(i) * 4096).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        for i in 0..4u8 {
            let mut back = vec![0; 4096];
            f.read_exact_at(&mut back, u64::from(i) * 4096).unwrap();
            assert!(back.iter().all(|&b| b == i + 1));
        }
    }

    /// Env var that makes the test below run its body (in a child process).
    const SHORT_WRITE_CHILD: &str = "RINGKV_URING_SHORT_WRITE_DIR";
    const SHORT_WRITE_TEST: &str =
        "io::uring::tests::a_real_short_write_breaks_the_link_and_is_never_reported_durable";

    /// A real short write from the kernel: with `RLIMIT_FSIZE` at 4 KiB, an 8 KiB write at
    /// offset 0 writes 4 KiB and reports it, which cancels the linked fdatasync (-ECANCELED);
    /// the code must then write the rest itself, which fails with EFBIG, and report that error,
    /// never success or the cancellation. The rlimit is per process, so the body runs in a
    /// child process (this test binary, filtered to this test) and the parent checks it ran.
    #[test]
    fn a_real_short_write_breaks_the_link_and_is_never_reported_durable() {
        let Some(dir) = std::env::var_os(SHORT_WRITE_CHILD) else {
            let dir = tempfile::tempdir().unwrap();
            let out = std::process::Command::new(std::env::current_exe().unwrap())
                .args([
                    SHORT_WRITE_TEST,
                    "--exact",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env(SHORT_WRITE_CHILD, dir.path())
                .output()
                .unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(
                out.status.success() && stdout.contains("short write checked"),
                "child failed: {}\n{stdout}\n{stderr}",
                out.status
            );
            return;
        };
        let path = Path::new(&dir).join("f");
        let vfs = UringVfs::new().unwrap();
        let f = vfs
            .open(&path, OpenOptions::read_write().create(true))
            .unwrap();
        // SAFETY: SIG_IGN for SIGXFSZ (sent on a write past the limit) installs no handler code.
        unsafe { libc::signal(libc::SIGXFSZ, libc::SIG_IGN) };
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: `lim` is a valid rlimit to fill.
        assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_FSIZE, &mut lim) }, 0);
        let saved = lim;
        lim.rlim_cur = 4096;
        // SAFETY: `lim` is a valid rlimit; lowering the soft limit needs no privilege.
        assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_FSIZE, &lim) }, 0);
        let buf = vec![7u8; 8192];
        let err = f.write_at_and_sync(&buf, 0).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EFBIG), "{err}");
        // The short part landed; nothing beyond the limit.
        assert_eq!(f.size().unwrap(), 4096);
        let mut back = vec![0u8; 4096];
        f.read_exact_at(&mut back, 0).unwrap();
        assert!(back.iter().all(|&b| b == 7));
        // SAFETY: restores the limits read above.
        assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_FSIZE, &saved) }, 0);
        f.write_at_and_sync(&buf, 0).unwrap();
        assert_eq!(f.size().unwrap(), 8192);
        println!("short write checked");
    }

    /// A started write+fdatasync stays in flight while other I/O runs on the same thread (whose
    /// calls reap and stash its completions); `wait` then reports it, and the data is there.
    /// A handle dropped without `wait` is reaped too: later operations are unaffected.
    #[test]
    fn started_writes_complete_across_other_io_on_the_same_thread() {
        let vfs = UringVfs::new().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let f = vfs
            .open(
                &dir.path().join("f"),
                OpenOptions::read_write().create(true).direct(true),
            )
            .unwrap();
        f.allocate(0, 16 * 4096).unwrap();
        let mut a = AlignedBuf::zeroed(2 * 4096);
        a.fill(0xA1);
        let mut b = AlignedBuf::zeroed(4096);
        b.fill(0xB2);
        for round in 0..20u64 {
            let off = (round % 4) * 3 * 4096;
            let started = f.start_write_and_sync(&a, off);
            // Synchronous I/O on this thread while the chain is in flight.
            f.write_at_and_sync(&b, off + 2 * 4096).unwrap();
            let mut back = AlignedBuf::zeroed(4096);
            f.read_exact_at(&mut back, off + 2 * 4096).unwrap();
            assert!(back.iter().all(|&x| x == 0xB2));
            started.wait().unwrap();
            let mut back = AlignedBuf::zeroed(2 * 4096);
            f.read_exact_at(&mut back, off).unwrap();
            assert!(back.iter().all(|&x| x == 0xA1), "round {round}");
        }
        drop(f.start_write_and_sync(&b, 15 * 4096));
        assert_eq!(STARTED_OPS.with(|c| c.get().0), 0);
        assert!(STASH.with(|s| s.borrow().is_empty()));
        let mut back = AlignedBuf::zeroed(4096);
        f.read_exact_at(&mut back, 15 * 4096).unwrap();
        assert!(back.iter().all(|&x| x == 0xB2));
        // A misaligned start is refused like a misaligned write, before any I/O.
        let err = f.start_write_and_sync(&b[..512], 0).wait().unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EINVAL));
    }

    #[test]
    fn pinning_to_an_existing_cpu_works_and_to_a_huge_one_fails() {
        std::thread::spawn(|| {
            pin_current_thread(0).unwrap();
            assert!(pin_current_thread(1 << 20).is_err());
        })
        .join()
        .unwrap();
    }
}

//! The std implementation of the I/O seam: `pread`/`pwrite`/`fdatasync` through `std::fs`.

use std::ffi::OsString;
use std::fs;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::sync::Arc;

use super::{File, IoKind, OpenOptions, Vfs, check_direct};

/// Plain blocking file I/O; works wherever Linux files do.
#[derive(Debug, Default)]
pub struct StdVfs {
    _private: (),
}

impl StdVfs {
    pub fn new() -> Self {
        StdVfs { _private: () }
    }
}

pub(crate) struct StdFile {
    file: fs::File,
    direct: bool,
}

impl StdFile {
    pub(crate) fn open(path: &Path, opts: OpenOptions) -> io::Result<StdFile> {
        let mut o = fs::OpenOptions::new();
        o.read(true)
            .write(opts.write)
            .create(opts.create && opts.write);
        if opts.create_new {
            o.write(true).create_new(true);
        }
        if opts.direct {
            o.custom_flags(libc::O_DIRECT);
        }
        let file = o.open(path)?;
        Ok(StdFile {
            file,
            direct: opts.direct,
        })
    }

    pub(crate) fn fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

impl File for StdFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        if self.direct {
            check_direct(buf.as_ptr(), buf.len(), offset)?;
        }
        let mut done = 0;
        while done < buf.len() {
            match self.file.read_at(&mut buf[done..], offset + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(done)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        if self.direct {
            check_direct(buf.as_ptr(), buf.len(), offset)?;
        }
        self.file.write_all_at(buf, offset)
    }

    fn write_vectored_at(&self, bufs: &[&[u8]], offset: u64) -> io::Result<()> {
        if self.direct {
            return self.write_at(&bufs.concat(), offset);
        }
        pwritev_all(self.fd(), bufs, offset)
    }

    fn sync_data(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn start_writeback(&self, offset: u64, len: u64) -> io::Result<()> {
        start_writeback(self.fd(), offset, len)
    }

    fn allocate(&self, offset: u64, len: u64) -> io::Result<()> {
        fallocate(self.fd(), offset, len)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.file.set_len(len)
    }

    fn size(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }

    fn raw_fd(&self) -> Option<RawFd> {
        Some(self.fd())
    }
}

/// `sync_file_range(fd, offset, len, SYNC_FILE_RANGE_WRITE)`, retried on EINTR: starts the
/// writeback of the range's dirty pages without waiting for it.
pub(crate) fn start_writeback(fd: RawFd, offset: u64, len: u64) -> io::Result<()> {
    let (Ok(off), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
        return Err(io::Error::from_raw_os_error(libc::EFBIG));
    };
    loop {
        // SAFETY: sync_file_range takes plain integers; an invalid fd yields EBADF, not UB.
        let rc = unsafe { libc::sync_file_range(fd, off, len, libc::SYNC_FILE_RANGE_WRITE) };
        if rc == 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// Most slices one `pwritev` takes (Linux's `IOV_MAX`).
const IOV_MAX: usize = 1024;

/// Writes the concatenation of `bufs` at `offset` with `pwritev`, [`IOV_MAX`] slices at a
/// time, continuing after short writes and retrying on EINTR.
pub(crate) fn pwritev_all(fd: RawFd, bufs: &[&[u8]], mut offset: u64) -> io::Result<()> {
    // Index of the first slice not fully written, and how much of it is.
    let (mut i, mut skip) = (0, 0);
    while i < bufs.len() {
        let iov: Vec<libc::iovec> = bufs[i..]
            .iter()
            .take(IOV_MAX)
            .enumerate()
            .map(|(j, b)| {
                let b = if j == 0 { &b[skip..] } else { b };
                libc::iovec {
                    iov_base: b.as_ptr() as *mut libc::c_void,
                    iov_len: b.len(),
                }
            })
            .collect();
        let Ok(off) = i64::try_from(offset) else {
            return Err(io::Error::from_raw_os_error(libc::EFBIG));
        };
        // SAFETY: every iovec points into a slice of `bufs`, borrowed for this call, with its
        // exact length; pwritev only reads them. An invalid fd yields EBADF, not UB.
        let rc = unsafe { libc::pwritev(fd, iov.as_ptr(), iov.len() as libc::c_int, off) };
        if rc < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        if rc == 0 {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "pwritev wrote nothing",
            ));
        }
        let mut n = rc as usize;
        offset += n as u64;
        while n > 0 {
            let left = bufs[i].len() - skip;
            if n >= left {
                n -= left;
                (i, skip) = (i + 1, 0);
            } else {
                skip += n;
                n = 0;
            }
        }
        // Skip empty slices so that the loop ends.
        while i < bufs.len() && bufs[i].len() == skip {
            (i, skip) = (i + 1, 0);
        }
    }
    Ok(())
}

/// `fallocate(fd, 0, offset, len)`, retried on EINTR.
pub(crate) fn fallocate(fd: RawFd, offset: u64, len: u64) -> io::Result<()> {
    let (Ok(off), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
        return Err(io::Error::from_raw_os_error(libc::EFBIG));
    };
    loop {
        // SAFETY: fallocate takes plain integers; an invalid fd yields EBADF, not UB.
        let rc = unsafe { libc::fallocate(fd, 0, off, len) };
        if rc == 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// Shared by the std and io_uring implementations: directory operations are rare and
/// synchronous in both.
pub(crate) mod dirs {
    use super::*;
    use std::os::fd::AsRawFd;

    /// `flock(LOCK_EX | LOCK_NB)` on `path`, created if missing; the open file holds the lock.
    pub(crate) fn lock_file(path: &Path) -> io::Result<crate::io::FileLock> {
        let file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        loop {
            // SAFETY: flock takes a descriptor we own (alive for the call) and plain flags.
            let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
            if rc == 0 {
                return Ok(crate::io::FileLock::new(file));
            }
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(err);
            }
        }
    }

    pub(crate) fn create_dir_all(path: &Path) -> io::Result<()> {
        fs::create_dir_all(path)
    }

    pub(crate) fn list_dir(path: &Path) -> io::Result<Vec<OsString>> {
        fs::read_dir(path)?
            .map(|e| e.map(|e| e.file_name()))
            .collect()
    }

    pub(crate) fn sync_dir(path: &Path) -> io::Result<()> {
        fs::File::open(path)?.sync_all()
    }
}

impl Vfs for StdVfs {
    fn kind(&self) -> IoKind {
        IoKind::Std
    }

    fn open(&self, path: &Path, opts: OpenOptions) -> io::Result<Arc<dyn File>> {
        Ok(Arc::new(StdFile::open(path, opts)?))
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
    use crate::io::{AlignedBuf, DIRECT_ALIGN};

    #[test]
    fn std_passes_the_shared_behaviour_suite() {
        let dir = tempfile::tempdir().unwrap();
        crate::io::conformance::run_all(&StdVfs::new(), dir.path());
    }

    #[test]
    fn direct_write_read_round_trip_and_alignment_check() {
        let dir = tempfile::tempdir().unwrap();
        let vfs = StdVfs::new();
        let path = dir.path().join("f");
        let f = vfs
            .open(&path, OpenOptions::read_write().create(true).direct(true))
            .unwrap();
        f.allocate(0, 1 << 20).unwrap();
        assert_eq!(f.size().unwrap(), 1 << 20);
        let mut buf = AlignedBuf::zeroed(DIRECT_ALIGN);
        buf[..5].copy_from_slice(b"hello");
        f.write_at_and_sync(&buf, 8192).unwrap();
        let mut back = AlignedBuf::zeroed(DIRECT_ALIGN);
        assert_eq!(f.read_at(&mut back, 8192).unwrap(), DIRECT_ALIGN);
        assert_eq!(&back[..5], b"hello");
        let err = f.write_at(&buf[..100], 0).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EINVAL));
        vfs.sync_dir(dir.path()).unwrap();
        assert_eq!(vfs.list_dir(dir.path()).unwrap(), vec![OsString::from("f")]);
    }
}

//! Read access to committed pages: a read-only memory map of the backend file, or, for files
//! without a raw fd (the in-memory fault-injecting VFS), positional reads through the I/O seam.
//!
//! # Soundness of the map
//!
//! A `&[u8]` into a `MAP_SHARED` mapping is only sound if the bytes cannot change while the
//! slice lives and the memory stays mapped. We rely on these facts, each upheld where named:
//!
//! 1. **Nothing writes a page a reader can reach.** A reader holds a [`Mapping`] only through a
//!    `Version` (db.rs), which pins one committed meta. Slices borrow from the `Version` (the
//!    lifetime `'a` of [`Mapping::page`] is the borrow of the snapshot), so they cannot outlive
//!    it. The writer writes only (a) pages it allocated from the freelist or past the end of the
//!    file, and (b) the meta page of the *other* slot. (a): a page is allocatable only when no
//!    live `Version` can reach it — pages freed by transaction T stay pending until every live
//!    version has txid >= T (freelist.rs, `Freelist::release`), and live versions are tracked
//!    by `Weak` counts (db.rs). (b): readers never read meta pages through the map; the meta is
//!    copied into the `Version` when it is created.
//! 2. **The memory stays mapped.** The `memmap2::Mmap` is owned by this `Mapping`, which lives in
//!    an `Arc` held by every `Version` that uses it. Growing the file creates a *new* mapping;
//!    the old one is unmapped only when its last `Version` (hence its last reader) is gone.
//! 3. **No access past end of file (SIGBUS).** A mapping is created with the file length at that
//!    moment, and the file only grows while mappings exist, except for shrinking by online
//!    compaction, which only truncates pages that are free and released (fact 1 again: no live
//!    version reaches them, so no slice into them exists or can be made).
//! 4. **No other process writes the file.** The backend assumes exclusive use of its file (like
//!    bbolt and LMDB without locking); a concurrent external writer voids facts 1–3.
//!
//! Every page read checks the page id and type; the CRC32C of a run is verified the first time a
//! mapping serves it and remembered in a bitmap. The writer clears a page's bit before writing
//! it ([`Mapping::forget_verified`]), so a reused page is verified again.

use std::borrow::Cow;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::page::{
    CHECKSUM_OFFSET, HEADER_LEN, ID_OFFSET, PageError, PageType, TYPE_OFFSET, get_u64,
    header_overflow, validate_run,
};
use crate::io::File;

enum Source {
    Map {
        map: memmap2::Mmap,
        /// Bit `id` set: the run starting at page `id` passed `validate_run` in this mapping.
        verified: Box<[AtomicU64]>,
    },
    Read {
        file: Arc<dyn File>,
    },
}

/// A read-only view of the file's first `len` bytes. See the module doc for why slices into it
/// are sound.
pub(crate) struct Mapping {
    src: Source,
    page_size: usize,
    len: u64,
}

impl Mapping {
    /// Maps the first `len` bytes of `file` (a multiple of `page_size`), through mmap when the file
    /// has a raw fd and `use_mmap` is set, else through `read_at`.
    pub(crate) fn new(
        file: &Arc<dyn File>,
        len: u64,
        page_size: usize,
        use_mmap: bool,
    ) -> io::Result<Mapping> {
        let src = match file.raw_fd() {
            Some(fd) if use_mmap => {
                // SAFETY: the mapping is read-only and private to this process's readers; the
                // bytes it exposes never change while a slice into them lives and the file is
                // never truncated below a reachable page (module doc, facts 1–4).
                let map = unsafe { memmap2::MmapOptions::new().len(len as usize).map(fd)? };
                let pages = (len / page_size as u64) as usize;
                let verified = (0..pages.div_ceil(64)).map(|_| AtomicU64::new(0)).collect();
                Source::Map { map, verified }
            }
            _ => Source::Read { file: file.clone() },
        };
        Ok(Mapping {
            src,
            page_size,
            len,
        })
    }

    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    #[cfg(test)]
    pub(crate) fn is_mmap(&self) -> bool {
        matches!(self.src, Source::Map { .. })
    }

    /// Carries verification bits over from the previous mapping of the same file (only for
    /// pages the writer has not written since; it clears bits before writing).
    pub(crate) fn inherit_verified(&self, old: &Mapping) {
        if let (Source::Map { verified: new, .. }, Source::Map { verified: old, .. }) =
            (&self.src, &old.src)
        {
            for (n, o) in new.iter().zip(old.iter()) {
                n.store(o.load(Ordering::Relaxed), Ordering::Relaxed);
            }
        }
    }

    /// Forgets that the run at `id` was verified; called by the writer before it writes page `id`.
    /// Ordering: the write is published to readers through the lock that publishes the new
    /// version, which orders this store before any reader's later load.
    pub(crate) fn forget_verified(&self, id: u64) {
        if let Source::Map { verified, .. } = &self.src
            && let Some(w) = verified.get((id / 64) as usize)
        {
            w.fetch_and(!(1u64 << (id % 64)), Ordering::Relaxed);
        }
    }

    /// The run starting at page `id`, checked (see module doc). The slice lives as long as the
    /// borrow of this mapping, which is at most the life of the snapshot that holds it.
    pub(crate) fn page(
        &self,
        id: u64,
        expect: Option<PageType>,
    ) -> Result<Cow<'_, [u8]>, PageError> {
        let ps = self.page_size as u64;
        let start = id
            .checked_mul(ps)
            .filter(|s| s + ps <= self.len && id >= 2)
            .ok_or_else(|| PageError {
                page: id,
                reason: format!("page id out of range (mapped {} pages)", self.len / ps),
            })?;
        match &self.src {
            Source::Map { map, verified } => {
                let first = &map[start as usize..(start + ps) as usize];
                let end = start + (header_overflow(first) as u64 + 1) * ps;
                if end > self.len {
                    return Err(PageError {
                        page: id,
                        reason: format!(
                            "run of {} pages runs past the mapped end",
                            header_overflow(first) + 1
                        ),
                    });
                }
                let run = &map[start as usize..end as usize];
                let (word, bit) = ((id / 64) as usize, 1u64 << (id % 64));
                if verified[word].load(Ordering::Relaxed) & bit != 0 {
                    check_id_type(run, id, expect)?;
                } else {
                    validate_run(run, id, self.page_size, expect)?;
                    verified[word].fetch_or(bit, Ordering::Relaxed);
                }
                Ok(Cow::Borrowed(run))
            }
            Source::Read { file } => {
                let mut run = vec![0u8; self.page_size];
                read(file, &mut run, start, id)?;
                let pages = header_overflow(&run) as u64 + 1;
                if start + pages * ps > self.len {
                    return Err(PageError {
                        page: id,
                        reason: format!("run of {pages} pages runs past the end of the file"),
                    });
                }
                if pages > 1 {
                    run.resize((pages * ps) as usize, 0);
                    read(file, &mut run[self.page_size..], start + ps, id)?;
                }
                validate_run(&run, id, self.page_size, expect)?;
                Ok(Cow::Owned(run))
            }
        }
    }
}

fn read(file: &Arc<dyn File>, buf: &mut [u8], at: u64, id: u64) -> Result<(), PageError> {
    file.read_exact_at(buf, at).map_err(|e| PageError {
        page: id,
        reason: format!("read failed: {e}"),
    })
}

/// The per-read check for an already verified run: id and type only.
fn check_id_type(run: &[u8], id: u64, expect: Option<PageType>) -> Result<(), PageError> {
    debug_assert!(run.len() >= HEADER_LEN && CHECKSUM_OFFSET < TYPE_OFFSET);
    let on_page = get_u64(run, ID_OFFSET);
    if on_page != id {
        return Err(PageError {
            page: id,
            reason: format!("page id mismatch: page says {on_page}"),
        });
    }
    if let Some(expect) = expect
        && run[TYPE_OFFSET] != expect as u8
    {
        return Err(PageError {
            page: id,
            reason: format!("page type {}, expected {expect:?}", run[TYPE_OFFSET]),
        });
    }
    Ok(())
}

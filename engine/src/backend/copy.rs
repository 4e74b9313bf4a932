//! A byte copy of one committed state of the backend file, read while writers go on (what
//! bbolt's `Tx.WriteTo` does): Maintenance.Snapshot and raft snapshot transfers stream it
//! without holding any lock for the copy's duration.
//!
//! The copy is the file `[0, page_count × page_size)` of the pinned commit `T`, except that both
//! meta slots hold `T`'s meta (so the copy opens at `T`, never at a newer or older commit).
//!
//! Invariants relied on:
//! 1. Every page reachable from `T` (catalog, trees, overflow runs, the freelist run, and so
//!    every run `T`'s freelist run lists) stays unchanged while the `Version` of `T` is alive:
//!    the writer reuses a page freed by transaction `F` only once every live version is at
//!    least `F` (`Freelist::release`), and a page reachable from `T` can only be freed by a
//!    transaction after `T`. The copy holds a [`Snapshot`], hence the version.
//! 2. Pages free in `T` may be rewritten by later commits while they are read: their bytes in
//!    the copy are unspecified (possibly torn), which is harmless because `T`'s freelist lists
//!    them as free and nothing reads a free page. They are read with `File::read_at`, never
//!    through the memory map (mmap.rs: the map is only read where no write can happen).
//! 3. Pages of `T` past the file's current end (a truncation cannot reach them, see 1) would
//!    read short; such bytes (only free ones) are copied as zeros.
//!
//! Worked example, 4 KiB pages: `T` = txid 7 with page_count 6 (pages 2..5: catalog 2, leaf 3,
//! freelist run 4, free page 5). The copy starts. Commit 8 rewrites leaf 3 into page 5 and
//! frees 3 and 4 as pending[8]; 3 and 4 keep their bytes while the copy lives (release needs
//! the oldest live txid ≥ 8, and the copy pins 7). The copy emits meta(7) twice (bytes
//! 0..8192), then pages 2..5 read from the file: page 5 may hold commit 8's leaf or a torn mix,
//! and is free in meta(7)'s freelist. Opening the copy finds txid 7 in both slots and sees
//! exactly the state of commit 7.

use std::io::{self, Read};

use super::db::Snapshot;

/// A reader of the copy of one committed state (see the module doc). Holds the snapshot, so
/// the committed pages it reads stay put until it is dropped.
pub struct CommittedCopy {
    snap: Snapshot,
    /// Both meta pages: the pinned commit's meta, twice.
    metas: Vec<u8>,
    len: u64,
    pos: u64,
}

impl Snapshot {
    /// A reader of the committed state under this snapshot as a complete backend file (writes
    /// buffered since that commit are not in it). Writers keep running while it is read; see
    /// the module doc of `copy.rs` for why the bytes are consistent.
    pub fn committed_copy(self) -> CommittedCopy {
        let meta = self.version.meta;
        let mut metas = meta.encode();
        metas.extend_from_slice(&meta.encode());
        CommittedCopy {
            len: meta.page_count * meta.page_size as u64,
            metas,
            snap: self,
            pos: 0,
        }
    }
}

impl CommittedCopy {
    /// Length of the copy in bytes (page count × page size of the pinned commit).
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The txid of the pinned commit.
    pub fn txid(&self) -> u64 {
        self.snap.txid()
    }
}

impl Read for CommittedCopy {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.len - self.pos;
        if left == 0 || buf.is_empty() {
            return Ok(0);
        }
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let metas_len = self.metas.len() as u64;
        let n = if self.pos < metas_len {
            let from = self.pos as usize;
            let n = want.min(self.metas.len() - from);
            buf[..n].copy_from_slice(&self.metas[from..from + n]);
            n
        } else {
            let out = &mut buf[..want];
            let file = &self.snap.shared.file;
            let mut got = 0;
            while got < out.len() {
                let n = file
                    .read_at(&mut out[got..], self.pos + got as u64)
                    .map_err(|e| {
                        io::Error::new(
                            e.kind(),
                            format!(
                                "{}: read at offset {}: {e}",
                                self.snap.shared.path.display(),
                                self.pos + got as u64
                            ),
                        )
                    })?;
                if n == 0 {
                    // Invariant 3: only free pages lie past the current end.
                    out[got..].fill(0);
                    got = out.len();
                } else {
                    got += n;
                }
            }
            got
        };
        self.pos += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::io::Read;
    use std::sync::Arc;

    use crate::backend::{Backend, BackendOptions};
    use crate::io::{OpenOptions, StdVfs, Vfs};
    use crate::storage::{BatchWrite, Bucket, KvRead};

    fn opts() -> BackendOptions {
        BackendOptions {
            batch_ops: usize::MAX,
            batch_interval: std::time::Duration::from_secs(3600),
            ..Default::default()
        }
    }

    fn value(round: u32, i: u32) -> Vec<u8> {
        // Some values span overflow runs, so freed runs of several pages get reused.
        let len = if i.is_multiple_of(17) {
            9000
        } else {
            100 + (i % 50) as usize
        };
        let mut v = format!("r{round}-k{i}-").into_bytes();
        v.resize(len, b'a' + (round % 26) as u8);
        v
    }

    fn dump(b: &Backend) -> BTreeMap<Vec<u8>, Vec<u8>> {
        let mut out = BTreeMap::new();
        b.snapshot()
            .scan(Bucket::Key, b"", b"", &mut |k, v| {
                out.insert(k.to_vec(), v.to_vec());
                true
            })
            .expect("scan");
        out
    }

    /// The copy, read in pieces while later commits rewrite, free and reuse pages (and online
    /// compaction moves them), opens as exactly the pinned commit and passes the checker.
    #[test]
    fn a_copy_read_while_commits_continue_is_the_pinned_commit() {
        let dir = tempfile::tempdir().expect("tempdir");
        let vfs: Arc<dyn Vfs> = Arc::new(StdVfs::new());
        let src = dir.path().join("db");
        let b = Backend::open(vfs.clone(), &src, opts()).expect("open");
        let mut w = b.batch().expect("writer");
        for i in 0..3000 {
            w.put(Bucket::Key, format!("k{i:05}").as_bytes(), &value(0, i))
                .expect("put");
        }
        w.commit().expect("commit");
        let expected = dump(&b);
        let pinned = b.snapshot();
        let txid = pinned.txid();
        // A write buffered after the commit is not part of the copy.
        w.put(Bucket::Key, b"late", b"x").expect("put");
        let mut copy = b.snapshot().committed_copy();
        assert_eq!(copy.txid(), txid);
        drop(pinned);
        let mut bytes = Vec::new();
        let mut chunk = vec![0u8; 64 * 1024];
        let mut round = 1;
        loop {
            let n = copy.read(&mut chunk).expect("read");
            if n == 0 {
                break;
            }
            bytes.extend_from_slice(&chunk[..n]);
            // Between chunks: rewrite a third of the keys, delete some, commit.
            for i in (round % 3..3000).step_by(3) {
                if i % 7 == 0 {
                    w.delete(Bucket::Key, format!("k{i:05}").as_bytes())
                        .expect("delete");
                } else {
                    w.put(Bucket::Key, format!("k{i:05}").as_bytes(), &value(round, i))
                        .expect("put");
                }
            }
            w.commit().expect("commit");
            round += 1;
        }
        assert!(round > 3, "the copy was read across several commits");
        assert_eq!(bytes.len() as u64, copy.len());
        drop(copy);
        assert_ne!(dump(&b), expected, "the source moved on");
        drop(w);
        drop(b);

        let dst = dir.path().join("copy");
        let f = vfs
            .open(&dst, OpenOptions::read_write().create(true))
            .expect("create copy");
        f.write_at(&bytes, 0).expect("write copy");
        f.sync_data().expect("sync");
        drop(f);
        let c = Backend::open(vfs.clone(), &dst, opts()).expect("open the copy");
        assert_eq!(c.stats().txid, txid);
        let report = c.check();
        assert!(report.is_ok(), "{report:?}");
        assert_eq!(dump(&c), expected);
        // The copy is a working backend: it commits on top of the pinned state.
        let mut cw = c.batch().expect("writer");
        cw.put(Bucket::Key, b"after", b"y").expect("put");
        cw.commit().expect("commit");
        assert_eq!(
            cw.get(Bucket::Key, b"after").expect("get").as_deref(),
            Some(&b"y"[..])
        );
    }
}

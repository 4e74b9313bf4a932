//! Raft snapshot metadata files: `member/snap/{term:016x}-{index:016x}.snap`.
//!
//! A snapshot of ringkv's state machine is the backend file itself (its consistent index says
//! how far it got); the `.snap` file records what raft needs to start its log after it: the
//! index and term of the last entry the snapshot covers and the membership (`ConfState`) at
//! that index. Byte format: "Raft snapshot metadata" in `engine/docs/format.md`.
//!
//! Writing: `{name}.tmp` is written and fdatasynced, renamed to `{name}`, and the directory is
//! synced, so a crash leaves either no file, a whole file, or a `.tmp` (deleted on listing).
//! A `.snap` that fails its checks is skipped on load and named (file, offset): the newest
//! *valid* one wins.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use raft::eraftpb::ConfState;

use crate::io::{OpenOptions, Vfs};

/// Raft's metadata of one snapshot.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SnapshotMeta {
    /// Index of the last entry the snapshot covers.
    pub index: u64,
    /// Term of that entry.
    pub term: u64,
    /// Membership at `index`.
    pub conf_state: ConfState,
}

/// Errors of the snapshot directory: I/O failures and corrupt files are separate.
#[derive(Debug, thiserror::Error)]
pub enum SnapError {
    #[error("snapshot I/O error: {op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The file at `path` is not a valid snapshot metadata file; `offset` is where the check
    /// failed.
    #[error("snapshot file corrupt: {} at offset {offset}: {reason}", path.display())]
    Corrupt {
        path: PathBuf,
        offset: u64,
        reason: String,
    },
}

impl SnapError {
    fn io(op: &'static str, path: &Path, source: io::Error) -> SnapError {
        SnapError::Io {
            op,
            path: path.to_path_buf(),
            source,
        }
    }
}

/// `ringkvSP`: ringkv snapshot (metadata).
const MAGIC: [u8; 8] = *b"ringkvSP";
/// The only version: this layout, CRC32C over everything before the trailing checksum.
pub const SNAP_FORMAT_V1: u32 = 1;
const SUFFIX: &str = ".snap";
const TMP_SUFFIX: &str = ".snap.tmp";
/// A received backend file (written by the peer transport, installed by `restore`).
const DB_SUFFIX: &str = ".snap.db";

// Byte offsets of the fixed part, chained (format.md, "Raft snapshot metadata").
const MAGIC_AT: usize = 0;
const VERSION_AT: usize = MAGIC_AT + MAGIC.len();
const BODY_LEN_AT: usize = VERSION_AT + 4;
const INDEX_AT: usize = BODY_LEN_AT + 4;
const TERM_AT: usize = INDEX_AT + 8;
const BODY_AT: usize = TERM_AT + 8;
const CRC_LEN: usize = 4;
/// No ConfState of a sane cluster comes near this; a larger length is corruption.
const MAX_BODY: usize = 1 << 20;

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

// Format: { magic [8] | version u32 | body_len u32 | index u64 | term u64 | ConfState protobuf [body_len] | crc32c u32 }
pub fn encode_snap(meta: &SnapshotMeta) -> Vec<u8> {
    let body = protobuf::Message::write_to_bytes(&meta.conf_state)
        .expect("encoding a ConfState into a Vec cannot fail");
    let mut out = Vec::with_capacity(BODY_AT + body.len() + CRC_LEN);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&SNAP_FORMAT_V1.to_le_bytes());
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&meta.index.to_le_bytes());
    out.extend_from_slice(&meta.term.to_le_bytes());
    out.extend_from_slice(&body);
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// Decodes a `.snap` file's bytes; the error is (offset, reason).
pub fn decode_snap(b: &[u8]) -> Result<SnapshotMeta, (u64, String)> {
    if b.len() < BODY_AT + CRC_LEN {
        return Err((
            b.len() as u64,
            format!(
                "file is {} bytes, shorter than the {} byte minimum",
                b.len(),
                BODY_AT + CRC_LEN
            ),
        ));
    }
    if b[MAGIC_AT..VERSION_AT] != MAGIC {
        return Err((MAGIC_AT as u64, "bad magic".into()));
    }
    let version = u32_at(b, VERSION_AT);
    if version != SNAP_FORMAT_V1 {
        return Err((VERSION_AT as u64, format!("unknown version {version}")));
    }
    let body_len = u32_at(b, BODY_LEN_AT) as usize;
    if body_len > MAX_BODY || BODY_AT + body_len + CRC_LEN != b.len() {
        return Err((
            BODY_LEN_AT as u64,
            format!(
                "body length {body_len} does not match the file size {}",
                b.len()
            ),
        ));
    }
    let crc_at = BODY_AT + body_len;
    let want = u32_at(b, crc_at);
    let got = crc32c::crc32c(&b[..crc_at]);
    if want != got {
        return Err((
            crc_at as u64,
            format!("checksum mismatch: stored {want:08x}, computed {got:08x}"),
        ));
    }
    let conf_state: ConfState = protobuf::Message::parse_from_bytes(&b[BODY_AT..crc_at])
        .map_err(|e| (BODY_AT as u64, format!("ConfState does not decode: {e}")))?;
    Ok(SnapshotMeta {
        index: u64_at(b, INDEX_AT),
        term: u64_at(b, TERM_AT),
        conf_state,
    })
}

/// `{term:016x}-{index:016x}.snap` → (term, index).
fn parse_name(name: &str) -> Option<(u64, u64)> {
    let stem = name.strip_suffix(SUFFIX)?;
    let (t, i) = stem.split_once('-')?;
    if t.len() != 16 || i.len() != 16 {
        return None;
    }
    Some((
        u64::from_str_radix(t, 16).ok()?,
        u64::from_str_radix(i, 16).ok()?,
    ))
}

/// A `.snap` file found in the directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapFile {
    pub term: u64,
    pub index: u64,
    pub path: PathBuf,
}

/// The snapshot directory (`member/snap`).
#[derive(Clone)]
pub struct SnapDir {
    vfs: Arc<dyn Vfs>,
    dir: PathBuf,
}

impl fmt::Debug for SnapDir {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SnapDir").field("dir", &self.dir).finish()
    }
}

impl SnapDir {
    pub fn new(vfs: Arc<dyn Vfs>, dir: &Path) -> SnapDir {
        SnapDir {
            vfs,
            dir: dir.to_path_buf(),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where the peer transport leaves a received backend file for the snapshot at `index`.
    pub fn db_path(&self, index: u64) -> PathBuf {
        self.dir.join(format!("{index:016x}{DB_SUFFIX}"))
    }

    fn path_of(&self, term: u64, index: u64) -> PathBuf {
        self.dir.join(format!("{term:016x}-{index:016x}{SUFFIX}"))
    }

    /// Writes the metadata file durably (tmp, fdatasync, rename, directory sync).
    pub fn save(&self, meta: &SnapshotMeta) -> Result<PathBuf, SnapError> {
        let path = self.path_of(meta.term, meta.index);
        let tmp = self.dir.join(format!(
            "{:016x}-{:016x}{TMP_SUFFIX}",
            meta.term, meta.index
        ));
        let bytes = encode_snap(meta);
        let file = self
            .vfs
            .open(&tmp, OpenOptions::read_write().create(true))
            .map_err(|e| SnapError::io("create", &tmp, e))?;
        file.set_len(0)
            .map_err(|e| SnapError::io("truncate", &tmp, e))?;
        file.write_at_and_sync(&bytes, 0)
            .map_err(|e| SnapError::io("write and sync", &tmp, e))?;
        drop(file);
        self.vfs
            .rename(&tmp, &path)
            .map_err(|e| SnapError::io("rename", &tmp, e))?;
        self.vfs
            .sync_dir(&self.dir)
            .map_err(|e| SnapError::io("sync directory", &self.dir, e))?;
        Ok(path)
    }

    /// The `.snap` files, oldest (lowest index) first. Leftover `.tmp` files are removed.
    pub fn list(&self) -> Result<Vec<SnapFile>, SnapError> {
        self.scan(true)
    }

    /// [`SnapDir::list`] without removing anything (offline inspection).
    pub fn list_read_only(&self) -> Result<Vec<SnapFile>, SnapError> {
        self.scan(false)
    }

    fn scan(&self, remove_tmp: bool) -> Result<Vec<SnapFile>, SnapError> {
        let names = match self.vfs.list_dir(&self.dir) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(SnapError::io("list directory", &self.dir, e)),
        };
        let mut files = Vec::new();
        for name in names {
            let Some(name) = name.to_str() else { continue };
            if let Some((term, index)) = parse_name(name) {
                files.push(SnapFile {
                    term,
                    index,
                    path: self.dir.join(name),
                });
            } else if remove_tmp && name.ends_with(TMP_SUFFIX) {
                let p = self.dir.join(name);
                self.vfs
                    .remove_file(&p)
                    .map_err(|e| SnapError::io("remove leftover", &p, e))?;
            }
        }
        files.sort_by_key(|f| (f.index, f.term));
        Ok(files)
    }

    /// Reads and checks one file; its name must agree with its contents.
    pub fn load(&self, f: &SnapFile) -> Result<SnapshotMeta, SnapError> {
        let file = self
            .vfs
            .open(&f.path, OpenOptions::read_only())
            .map_err(|e| SnapError::io("open", &f.path, e))?;
        let size = file.size().map_err(|e| SnapError::io("stat", &f.path, e))?;
        if size as usize > BODY_AT + MAX_BODY + CRC_LEN {
            return Err(SnapError::Corrupt {
                path: f.path.clone(),
                offset: 0,
                reason: format!("file is {size} bytes, too large for snapshot metadata"),
            });
        }
        let mut b = vec![0u8; size as usize];
        file.read_exact_at(&mut b, 0)
            .map_err(|e| SnapError::io("read", &f.path, e))?;
        let meta = decode_snap(&b).map_err(|(offset, reason)| SnapError::Corrupt {
            path: f.path.clone(),
            offset,
            reason,
        })?;
        if (meta.term, meta.index) != (f.term, f.index) {
            return Err(SnapError::Corrupt {
                path: f.path.clone(),
                offset: INDEX_AT as u64,
                reason: format!(
                    "contents say term {} index {}, the name says term {} index {}",
                    meta.term, meta.index, f.term, f.index
                ),
            });
        }
        Ok(meta)
    }

    /// The newest valid snapshot, and the corrupt files skipped on the way (each logged).
    /// I/O errors are returned, not skipped.
    pub fn load_newest(&self) -> Result<(Option<SnapshotMeta>, Vec<SnapError>), SnapError> {
        let mut skipped = Vec::new();
        for f in self.list()?.iter().rev() {
            match self.load(f) {
                Ok(meta) => return Ok((Some(meta), skipped)),
                Err(e @ SnapError::Corrupt { .. }) => {
                    tracing::error!("{e}; falling back to an older snapshot");
                    skipped.push(e);
                }
                Err(e) => return Err(e),
            }
        }
        Ok((None, skipped))
    }

    /// Removes the oldest `.snap` files so at most `keep` remain (0 keeps all), and received
    /// backend files (`.snap.db`) at or below the newest snapshot (installed or superseded).
    pub fn prune(&self, keep: usize) -> Result<usize, SnapError> {
        let files = self.list()?;
        let mut removed = 0;
        if keep > 0 && files.len() > keep {
            for f in &files[..files.len() - keep] {
                self.vfs
                    .remove_file(&f.path)
                    .map_err(|e| SnapError::io("remove", &f.path, e))?;
                removed += 1;
            }
        }
        if let Some(newest) = files.last()
            && let Ok(names) = self.vfs.list_dir(&self.dir)
        {
            for name in names {
                let Some(name) = name.to_str() else { continue };
                let Some(stem) = name.strip_suffix(DB_SUFFIX) else {
                    continue;
                };
                if stem.len() == 16
                    && let Ok(index) = u64::from_str_radix(stem, 16)
                    && index < newest.index
                {
                    let p = self.dir.join(name);
                    self.vfs
                        .remove_file(&p)
                        .map_err(|e| SnapError::io("remove", &p, e))?;
                    removed += 1;
                }
            }
        }
        if removed > 0 {
            self.vfs
                .sync_dir(&self.dir)
                .map_err(|e| SnapError::io("sync directory", &self.dir, e))?;
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::StdVfs;

    fn meta(index: u64, term: u64) -> SnapshotMeta {
        SnapshotMeta {
            index,
            term,
            conf_state: ConfState::from((vec![1, 2, 3], vec![4])),
        }
    }

    #[test]
    fn layout_offsets_match_the_format_doc() {
        assert_eq!(
            (VERSION_AT, BODY_LEN_AT, INDEX_AT, TERM_AT, BODY_AT),
            (8, 12, 16, 24, 32)
        );
        let m = meta(0x0102, 7);
        let b = encode_snap(&m);
        assert_eq!(&b[..8], b"ringkvSP");
        assert_eq!(u64_at(&b, 16), 0x0102);
        assert_eq!(u64_at(&b, 24), 7);
        let body_len = u32_at(&b, 12) as usize;
        assert_eq!(b.len(), 32 + body_len + 4);
        assert_eq!(decode_snap(&b).unwrap(), m);
    }

    #[test]
    fn worked_example_of_the_format_doc() {
        let m = SnapshotMeta {
            index: 100,
            term: 2,
            conf_state: ConfState::from((vec![1], vec![])),
        };
        let b = encode_snap(&m);
        let mut want = b"ringkvSP".to_vec();
        want.extend_from_slice(&[1, 0, 0, 0, 2, 0, 0, 0]);
        want.extend_from_slice(&100u64.to_le_bytes());
        want.extend_from_slice(&2u64.to_le_bytes());
        want.extend_from_slice(&[0x08, 0x01]);
        assert_eq!(&b[..b.len() - 4], want.as_slice());
        assert_eq!(b[b.len() - 4..], crc32c::crc32c(&want).to_le_bytes());
    }

    #[test]
    fn every_flipped_byte_is_detected_with_its_offset() {
        let b = encode_snap(&meta(99, 3));
        for i in 0..b.len() {
            let mut c = b.clone();
            c[i] ^= 0x40;
            let (offset, _) = decode_snap(&c).expect_err("flip must be detected");
            assert!(offset as usize <= c.len(), "offset {offset} for byte {i}");
        }
        assert!(decode_snap(&b[..b.len() - 1]).is_err());
    }

    #[test]
    fn save_list_load_and_prune() {
        let dir = tempfile::tempdir().unwrap();
        let sd = SnapDir::new(Arc::new(StdVfs::new()), dir.path());
        for i in 1..=4u64 {
            sd.save(&meta(i * 100, i)).unwrap();
        }
        std::fs::write(
            dir.path()
                .join("0000000000000001-0000000000000500.snap.tmp"),
            b"x",
        )
        .unwrap();
        std::fs::write(sd.db_path(100), b"old db").unwrap();
        let files = sd.list().unwrap();
        assert_eq!(
            files.iter().map(|f| f.index).collect::<Vec<_>>(),
            [100, 200, 300, 400]
        );
        assert!(
            !dir.path()
                .join("0000000000000001-0000000000000500.snap.tmp")
                .exists()
        );
        assert_eq!(sd.load_newest().unwrap().0, Some(meta(400, 4)));
        assert_eq!(sd.prune(2).unwrap(), 3);
        let files = sd.list().unwrap();
        assert_eq!(
            files.iter().map(|f| f.index).collect::<Vec<_>>(),
            [300, 400]
        );
        assert!(!sd.db_path(100).exists());
    }

    #[test]
    fn corrupt_newest_falls_back_and_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let sd = SnapDir::new(Arc::new(StdVfs::new()), dir.path());
        sd.save(&meta(100, 2)).unwrap();
        let newest = sd.save(&meta(200, 2)).unwrap();
        let mut b = std::fs::read(&newest).unwrap();
        b[20] ^= 1; // inside the index field: the checksum catches it
        std::fs::write(&newest, &b).unwrap();
        let (m, skipped) = sd.load_newest().unwrap();
        assert_eq!(m, Some(meta(100, 2)));
        assert_eq!(skipped.len(), 1);
        let text = skipped[0].to_string();
        assert!(text.contains(&newest.display().to_string()), "{text}");
        assert!(text.contains("offset"), "{text}");
        // A file whose name disagrees with its contents is corrupt too.
        std::fs::rename(
            dir.path().join("0000000000000002-0000000000000064.snap"),
            dir.path().join("0000000000000002-0000000000000065.snap"),
        )
        .unwrap();
        let (m, skipped) = sd.load_newest().unwrap();
        assert_eq!(m, None);
        assert_eq!(skipped.len(), 2);
    }
}

//! Opening a WAL directory: list and check the segments, replay their records, and decide
//! what to do with the bytes after the last valid record of the newest segment.
//!
//! # The end of the newest segment
//! Records are read until the first position X that does not hold a valid record. In any but
//! the newest segment, X must hold a zero frame header (the segment was complete and synced
//! before the next one was created); anything else is corruption. In the newest segment, X
//! may be the start of a torn flush: the last write before a crash landed only in part. Every
//! frame names the flush that wrote it, and flushes are sequential (the next starts only after
//! the previous one's fdatasync returned), so a torn flush can only be the last one, `f` (the
//! flush of the last valid record) or `f + 1`. The rest of the segment is therefore searched
//! for valid frames: one from any other flush proves that X was written before a later
//! successful flush, i.e. was acknowledged, and is reported as corruption; otherwise the bytes
//! from X on are a torn tail, zeroed (durably) and logged with file and offset.
//!
//! Worked example (flush ids in brackets, `~` a damaged record):
//! ```text
//! r1[4] r2[5] r3[5] ~r4 r5[6] 0 0 …   r5 belongs to flush 6 = f + 1: torn tail, keep r1..r3
//! r1[4] ~r2 r3[5] r4[6] r5[7] 0 …     r4 belongs to flush 6 > f + 1 (f = 4): corruption at r2
//! ```

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::format::{
    ALLOC_SUFFIX, Decoded, LEN_OFFSET, READY_SUFFIX, RECORD_ALIGN, RECORD_HEADER_LEN,
    SEGMENT_HEADER_LEN, crc_seed, decode_header, decode_record, get_u32, parse_segment_name,
};
use super::{HardState, Record, Replay, SegmentInfo, SnapshotMark, WalError, WalOptions};
use crate::io::{AlignedBuf, DIRECT_ALIGN, File, OpenOptions, Vfs, align_up};
use bytes::Bytes;

/// Where appending continues after open.
pub(crate) struct Tail {
    pub seg: SegmentInfo,
    /// The segment, open for writing (O_DIRECT if configured).
    pub file: Arc<dyn File>,
    /// Bytes the segment may hold.
    pub capacity: u64,
    /// File offset of the block holding the end of the records, and the bytes from there to
    /// that end (the partially filled tail block, rewritten by the next flush).
    pub block_start: u64,
    pub tail: Vec<u8>,
    pub next_flush: u32,
    pub next_index: u64,
    pub hard_state: Option<HardState>,
    pub metadata: Option<Bytes>,
}

pub(crate) struct Opened {
    pub segments: Vec<SegmentInfo>,
    /// `None` for a new (empty) WAL: the writer creates the first segment.
    pub tail: Option<Tail>,
    pub replay: Replay,
}

/// Applies records in WAL order; the entry-index rule is the one `append` enforces.
pub(crate) struct Replayer {
    from: SnapshotMark,
    found_marker: bool,
    /// The largest index the next entry may have.
    pub next_index: u64,
    pub replay: Replay,
}

impl Replayer {
    pub(crate) fn new(from: SnapshotMark, first_index: u64) -> Self {
        Replayer {
            from,
            found_marker: false,
            next_index: first_index.max(1),
            replay: Replay::default(),
        }
    }

    fn apply(&mut self, rec: Record, path: &Path, offset: u64) -> Result<(), WalError> {
        match rec {
            Record::Entry(e) => {
                if e.index == 0 || e.index > self.next_index {
                    return Err(WalError::Corrupt {
                        path: path.to_path_buf(),
                        offset,
                        reason: format!(
                            "entry index {} leaves a gap (next index is at most {})",
                            e.index, self.next_index
                        ),
                    });
                }
                self.next_index = e.index + 1;
                if e.index > self.from.index {
                    let entries = &mut self.replay.entries;
                    // Entries are contiguous and ascending: keep those below the new one.
                    let keep = entries.partition_point(|x| x.index < e.index);
                    entries.truncate(keep);
                    if entries.last().is_some_and(|l| l.index + 1 != e.index) {
                        // A snapshot marker moved past the entries we had.
                        entries.clear();
                    }
                    entries.push(e);
                }
            }
            Record::HardState(h) => self.replay.hard_state = Some(h),
            Record::Metadata(m) => self.replay.metadata = Some(m),
            Record::Snapshot(s) => {
                self.next_index = self.next_index.max(s.index + 1);
                if self.from.index != 0 && s.index == self.from.index {
                    if s.term != self.from.term {
                        return Err(WalError::SnapshotMismatch {
                            index: s.index,
                            expected: self.from.term,
                            found: s.term,
                        });
                    }
                    self.found_marker = true;
                }
                if s.index >= self.from.index {
                    self.replay.snapshot = Some(s);
                }
            }
        }
        Ok(())
    }

    fn finish(self) -> Result<Replay, WalError> {
        if self.from.index != 0 && !self.found_marker {
            return Err(WalError::SnapshotNotFound {
                index: self.from.index,
                term: self.from.term,
            });
        }
        Ok(self.replay)
    }
}

/// Lists `dir`: the segments sorted by sequence (checked for gaps); leftover allocator files
/// are deleted when `remove_leftovers` (opening for writing), else left alone (inspection).
pub(crate) fn list_segments(
    vfs: &dyn Vfs,
    dir: &Path,
    remove_leftovers: bool,
) -> Result<Vec<SegmentInfo>, WalError> {
    let names = vfs
        .list_dir(dir)
        .map_err(|e| WalError::io("list directory", dir, e))?;
    let mut segs = Vec::new();
    let mut removed = false;
    for name in names {
        let Some(name) = name.to_str() else { continue };
        if let Some((seq, first_index)) = parse_segment_name(name) {
            segs.push(SegmentInfo {
                seq,
                first_index,
                path: dir.join(name),
            });
        } else if remove_leftovers && (name.ends_with(ALLOC_SUFFIX) || name.ends_with(READY_SUFFIX))
        {
            let path = dir.join(name);
            vfs.remove_file(&path)
                .map_err(|e| WalError::io("remove leftover segment file", &path, e))?;
            removed = true;
        }
    }
    if removed {
        vfs.sync_dir(dir)
            .map_err(|e| WalError::io("sync directory", dir, e))?;
    }
    segs.sort_by_key(|s| s.seq);
    for w in segs.windows(2) {
        if w[1].seq == w[0].seq {
            return Err(WalError::Corrupt {
                path: w[1].path.clone(),
                offset: 0,
                reason: format!("two segments with sequence {:016x}", w[0].seq),
            });
        }
        if w[1].seq != w[0].seq + 1 {
            return Err(WalError::MissingSegment {
                after: w[0].path.clone(),
                expected: w[0].seq + 1,
            });
        }
    }
    Ok(segs)
}

/// Bytes read per refill of a [`Window`] (more when one frame is larger).
const WINDOW_CHUNK: usize = 1 << 20;

/// A segment read through a window that only moves forward: replay holds one chunk (or one
/// frame, if larger) of a segment in memory, never the whole segment.
///
/// Invariant relied on by [`Window::frame`]: the slice handed to `decode_record` either holds
/// the whole frame at `pos` or ends exactly at the end of the file, so `decode_record` sees
/// "end of data" only where the file really ends.
struct Window {
    file: Arc<dyn File>,
    path: std::path::PathBuf,
    size: u64,
    /// File offset of `buf[0]`.
    base: u64,
    buf: Vec<u8>,
}

impl Window {
    fn open(vfs: &dyn Vfs, path: &Path) -> Result<Window, WalError> {
        let file = vfs
            .open(path, OpenOptions::read_only())
            .map_err(|e| WalError::io("open segment", path, e))?;
        let size = file
            .size()
            .map_err(|e| WalError::io("stat segment", path, e))?;
        Ok(Window {
            file,
            path: path.to_path_buf(),
            size,
            base: 0,
            buf: Vec::new(),
        })
    }

    /// Makes `[pos, pos + len)`, cut at the end of the file, readable; returns the buffer and
    /// the index of `pos` in it. Refills read forward from `pos`.
    fn view(&mut self, pos: u64, len: usize) -> Result<(&[u8], usize), WalError> {
        let pos = pos.min(self.size);
        let end = pos.saturating_add(len as u64).min(self.size);
        let have = self.base + self.buf.len() as u64;
        if pos < self.base || end > have {
            let avail = (self.size - pos) as usize;
            let want = ((end - pos) as usize).max(WINDOW_CHUNK).min(avail);
            self.buf.clear();
            self.buf.resize(want, 0);
            self.file
                .read_exact_at(&mut self.buf, pos)
                .map_err(|e| WalError::io("read segment", &self.path, e))?;
            self.base = pos;
        }
        Ok((&self.buf, (pos - self.base) as usize))
    }

    /// Decodes the frame at `pos` (see the invariant above).
    fn frame(&mut self, pos: u64, seed: u32) -> Result<Decoded, WalError> {
        let (buf, i) = self.view(pos, RECORD_HEADER_LEN)?;
        let len = match buf.get(i..i + RECORD_HEADER_LEN) {
            Some(head) => get_u32(head, LEN_OFFSET) as usize,
            None => 0,
        };
        let framed = (RECORD_HEADER_LEN + len).next_multiple_of(RECORD_ALIGN);
        let (buf, i) = self.view(pos, framed)?;
        Ok(decode_record(buf, i, seed))
    }

    /// Offset just after the last non-zero byte of the file (0 if it is all zeros), read
    /// backwards in chunks.
    fn nonzero_end(&mut self) -> Result<u64, WalError> {
        let mut end = self.size;
        let mut chunk = vec![0u8; WINDOW_CHUNK];
        while end > 0 {
            let start = end.saturating_sub(WINDOW_CHUNK as u64);
            let part = &mut chunk[..(end - start) as usize];
            self.file
                .read_exact_at(part, start)
                .map_err(|e| WalError::io("read segment", &self.path, e))?;
            if let Some(p) = part.iter().rposition(|&b| b != 0) {
                return Ok(start + p as u64 + 1);
            }
            end = start;
        }
        Ok(0)
    }
}

/// Where the records of one segment ended.
struct SegmentEnd {
    /// Offset of the first byte after the last valid record.
    end: u64,
    /// Flush id of the last valid record (or of the header if there is none).
    last_flush: u32,
    /// The segment's size in bytes.
    size: u64,
    /// Newest segment only: offset just after its last non-zero byte.
    nonzero_end: u64,
}

/// Reads one segment's records into `replayer`, showing each (with its offset) to `observe`
/// first.
fn scan_segment(
    vfs: &dyn Vfs,
    seg: &SegmentInfo,
    is_last: bool,
    replayer: &mut Replayer,
    observe: &mut dyn FnMut(u64, &Record),
) -> Result<SegmentEnd, WalError> {
    let corrupt = |offset: u64, reason: String| WalError::Corrupt {
        path: seg.path.clone(),
        offset,
        reason,
    };
    let mut w = Window::open(vfs, &seg.path)?;
    let header = {
        let (buf, _) = w.view(0, SEGMENT_HEADER_LEN)?;
        decode_header(buf).map_err(|r| corrupt(0, r))?
    };
    if (header.seq, header.first_index) != (seg.seq, seg.first_index) {
        return Err(corrupt(
            0,
            format!(
                "header says segment {:016x} first index {}, the name says {:016x} and {}",
                header.seq, header.first_index, seg.seq, seg.first_index
            ),
        ));
    }
    let seed = crc_seed(seg.seq);
    let mut pos = SEGMENT_HEADER_LEN as u64;
    let mut last_flush = header.flush;
    let why = loop {
        match w.frame(pos, seed)? {
            Decoded::Record { record, flush, len } => {
                observe(pos, &record);
                replayer.apply(record, &seg.path, pos)?;
                last_flush = flush;
                pos += len as u64;
            }
            Decoded::End => break None,
            Decoded::Invalid(reason) => break Some(reason),
        }
    };
    if !is_last {
        if let Some(reason) = why {
            return Err(corrupt(pos, reason));
        }
        return Ok(SegmentEnd {
            end: pos,
            last_flush,
            size: w.size,
            nonzero_end: 0,
        });
    }
    // The newest segment: bytes after `pos` are a torn tail unless a later flush follows.
    let garbage_end = w.nonzero_end()?;
    let mut probe = pos + RECORD_ALIGN as u64;
    while probe < garbage_end {
        if let Decoded::Record { flush, .. } = w.frame(probe, seed)?
            && flush != last_flush
            && flush != last_flush.wrapping_add(1)
        {
            return Err(corrupt(
                pos,
                format!(
                    "{} before a valid record of a later flush at offset {probe}",
                    why.unwrap_or_else(|| "records end".into())
                ),
            ));
        }
        probe += RECORD_ALIGN as u64;
    }
    Ok(SegmentEnd {
        end: pos,
        last_flush,
        size: w.size,
        nonzero_end: garbage_end,
    })
}

/// Lists, checks and replays the WAL in `dir` (created if missing); prepares the tail.
pub(crate) fn open(vfs: &Arc<dyn Vfs>, dir: &Path, opts: &WalOptions) -> Result<Opened, WalError> {
    vfs.create_dir_all(dir)
        .map_err(|e| WalError::io("create directory", dir, e))?;
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        vfs.sync_dir(parent)
            .map_err(|e| WalError::io("sync directory", parent, e))?;
    }
    let segments = list_segments(&**vfs, dir, true)?;
    let from = opts.replay_from;
    let Some(last) = segments.last() else {
        if from.index != 0 {
            return Err(WalError::SnapshotNotFound {
                index: from.index,
                term: from.term,
            });
        }
        return Ok(Opened {
            segments,
            tail: None,
            replay: Replay::default(),
        });
    };
    let last = last.clone();
    // Entries after `from.index` start in the newest segment whose first index is at most it.
    let start = segments
        .iter()
        .rposition(|s| s.first_index <= from.index)
        .unwrap_or(0);
    let mut replayer = Replayer::new(from, segments[start].first_index);
    let mut end = None;
    for seg in &segments[start..] {
        let is_last = seg.seq == last.seq;
        end = Some(scan_segment(
            &**vfs,
            seg,
            is_last,
            &mut replayer,
            &mut |_, _| {},
        )?);
    }
    let end = end.expect("at least the newest segment was scanned");
    let next_index = replayer.next_index;
    let mut replay = replayer.finish()?;

    let file = vfs
        .open(&last.path, OpenOptions::read_write().direct(opts.direct))
        .map_err(|e| WalError::io("open segment", &last.path, e))?;
    let size = end.size;
    let capacity = size.max(opts.segment_size);
    if size < capacity {
        file.allocate(0, capacity)
            .map_err(|e| WalError::io("allocate segment", &last.path, e))?;
    }
    let block_start = end.end & !(DIRECT_ALIGN as u64 - 1);
    let mut tail = vec![0u8; (end.end - block_start) as usize];
    {
        let reader = vfs
            .open(&last.path, OpenOptions::read_only())
            .map_err(|e| WalError::io("open segment", &last.path, e))?;
        reader
            .read_exact_at(&mut tail, block_start)
            .map_err(|e| WalError::io("read segment", &last.path, e))?;
    }
    let garbage_end = end.nonzero_end;
    if garbage_end > end.end {
        tracing::warn!(
            "WAL: cutting a torn tail of {}: {} bytes after offset {}",
            last.path.display(),
            garbage_end - end.end,
            end.end
        );
        // Zero from the end of the records to the last non-zero byte, keeping the records of
        // the tail block, and make it durable before anything new is written after them.
        let len = align_up(garbage_end) - block_start;
        let mut buf = AlignedBuf::zeroed(len as usize);
        buf[..tail.len()].copy_from_slice(&tail);
        file.write_at_and_sync(&buf[..len as usize], block_start)
            .map_err(|e| WalError::io("zero torn tail", &last.path, e))?;
        replay.truncated_tail = Some((last.path.clone(), end.end));
    }
    Ok(Opened {
        tail: Some(Tail {
            seg: last,
            file,
            capacity,
            block_start,
            tail,
            next_flush: end.last_flush.wrapping_add(1),
            next_index,
            hard_state: replay.hard_state,
            metadata: replay.metadata.clone(),
        }),
        segments,
        replay,
    })
}

/// What [`inspect`] found in one segment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentReport {
    pub path: PathBuf,
    pub seq: u64,
    /// The first entry index the segment's name (and header) promise.
    pub first_index: u64,
    /// Records read, and the offset just after the last of them.
    pub records: u64,
    pub end: u64,
    /// The file's size (segments are preallocated, so this is their capacity).
    pub size: u64,
    /// Newest segment only: non-zero bytes after the records, which the next open cuts as a
    /// torn tail (`end .. end + torn_bytes`).
    pub torn_bytes: u64,
}

/// What [`inspect`] found in a whole WAL directory.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WalInspection {
    pub segments: Vec<SegmentReport>,
    /// Leftover files of the segment allocator (`*.wal.alloc`, `*.wal.ready`); the next open
    /// deletes them.
    pub leftovers: Vec<PathBuf>,
    /// The range of entry indexes the replay would hand to raft (newest wins on overwrites),
    /// or `None` when no entry is above the newest snapshot marker.
    pub entries: Option<(u64, u64)>,
    pub hard_state: Option<HardState>,
    pub snapshot: Option<SnapshotMark>,
}

/// Reads the WAL in `dir` the way [`Wal::open`](super::Wal::open) replays it, with the same
/// checks (a corrupt record, a missing segment or an index gap is the same error, naming file
/// and offset), but writes nothing: no leftover is deleted and a torn tail is only reported.
/// `observe` sees every record with its segment and offset, in WAL order. For offline tools:
/// the caller must make sure no node is appending meanwhile (hold the directory's lock).
pub fn inspect(
    vfs: &dyn Vfs,
    dir: &Path,
    observe: &mut dyn FnMut(&Path, u64, &Record),
) -> Result<WalInspection, WalError> {
    let segments = list_segments(vfs, dir, false)?;
    let leftovers = vfs
        .list_dir(dir)
        .map_err(|e| WalError::io("list directory", dir, e))?
        .into_iter()
        .filter_map(|n| n.to_str().map(str::to_owned))
        .filter(|n| n.ends_with(ALLOC_SUFFIX) || n.ends_with(READY_SUFFIX))
        .map(|n| dir.join(n))
        .collect();
    let mut out = WalInspection {
        leftovers,
        ..WalInspection::default()
    };
    let first = segments.first().map_or(1, |s| s.first_index);
    let mut replayer = Replayer::new(SnapshotMark::default(), first);
    for (i, seg) in segments.iter().enumerate() {
        let mut records = 0u64;
        let end = scan_segment(
            vfs,
            seg,
            i + 1 == segments.len(),
            &mut replayer,
            &mut |pos, rec| {
                records += 1;
                observe(&seg.path, pos, rec);
            },
        )?;
        out.segments.push(SegmentReport {
            path: seg.path.clone(),
            seq: seg.seq,
            first_index: seg.first_index,
            records,
            end: end.end,
            size: end.size,
            torn_bytes: end.nonzero_end.saturating_sub(end.end),
        });
    }
    let replay = replayer.finish()?;
    out.entries = replay
        .entries
        .first()
        .zip(replay.entries.last())
        .map(|(a, b)| (a.index, b.index));
    out.hard_state = replay.hard_state;
    out.snapshot = replay.snapshot;
    Ok(out)
}

//! The segment writer: what one flush does. Who flushes, and when, is `commit.rs`.
//!
//! A flush encodes its batch after the bytes of the current tail block, writes from the tail
//! block's start to the next 4 KiB boundary and fdatasyncs (one linked io_uring chain with
//! `UringVfs`), then returns each append's outcome for the leader to deliver.
//!
//! Invariants relied on:
//! - `buf[..fill]` holds the segment's bytes from `block_start` to the end of the records;
//!   `buf[fill..]` is scratch: [`Writer::pad`] zeroes `[fill, next 4 KiB boundary)` (the
//!   padding of the write) just before each write, so a flush touches each byte it writes
//!   once when encoding and never clears the rest of a large batch afterwards.
//! - `buf[..durable]` is on disk and synced; only `fill > durable` needs a write.
//! - Records of one flush all carry `flush_id`; it increases by one per physical write (see
//!   the torn-tail rule in `replay.rs`).
//! - Segment switch: write the new segment's header block, fdatasync, rename to its final name,
//!   sync the directory, and only then put records after it (crash cases in format.md).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::alloc::{Allocator, ZeroFill};
use super::commit::{Outcome, Pending};
use super::format::{
    SEGMENT_HEADER_LEN, SegmentHeader, crc_seed, encode_header, encode_record, encoded_len,
    segment_name,
};
use super::replay::Tail;
use super::{
    AppendInfo, FlushStats, HardState, Record, SegmentInfo, Shared, WalError, WalMetrics,
    WalOptions,
};
use crate::io::{AlignedBuf, DIRECT_ALIGN, File, WriteSync, align_up};

pub(crate) struct Writer {
    shared: Arc<Shared>,
    metrics: Option<Arc<dyn WalMetrics>>,
    allocator: Allocator,
    zero_fill: Arc<ZeroFill>,
    segment_size: u64,
    /// Largest encoded record accepted: header + carried records + it must fit a segment.
    max_record: usize,
    seg: SegmentInfo,
    file: Arc<dyn File>,
    capacity: u64,
    seed: u32,
    block_start: u64,
    buf: AlignedBuf,
    fill: usize,
    durable: usize,
    flush_id: u32,
    next_index: u64,
    hard_state: Option<HardState>,
    metadata: Option<Bytes>,
    /// Time spent in write + fdatasync since the current flush started.
    sync_time: Duration,
}

impl Writer {
    pub(crate) fn new(
        shared: Arc<Shared>,
        opts: &WalOptions,
        tail: Option<Tail>,
    ) -> Result<Writer, WalError> {
        let zero_fill = Arc::new(ZeroFill::new(opts.zero_fill_below));
        let allocator = Allocator::start(
            shared.vfs.clone(),
            shared.dir.clone(),
            opts.segment_size,
            opts.direct,
            zero_fill.clone(),
        )
        .map_err(|e| WalError::io("start segment allocator", &shared.dir, e))?;
        // Header, a HardState and a metadata record of at most `max_record` must fit.
        let max_record = (opts.segment_size as usize - SEGMENT_HEADER_LEN - 64) / 2;
        let max_record = max_record.min(u32::MAX as usize);
        let mut w = match tail {
            Some(t) => {
                let mut buf = AlignedBuf::zeroed((1 << 20).max(t.tail.len() * 2));
                buf[..t.tail.len()].copy_from_slice(&t.tail);
                Writer {
                    metrics: opts.metrics.clone(),
                    allocator,
                    zero_fill: zero_fill.clone(),
                    segment_size: opts.segment_size,
                    max_record,
                    seed: crc_seed(t.seg.seq),
                    seg: t.seg,
                    file: t.file,
                    capacity: t.capacity,
                    block_start: t.block_start,
                    fill: t.tail.len(),
                    durable: t.tail.len(),
                    buf,
                    flush_id: t.next_flush,
                    next_index: t.next_index,
                    hard_state: t.hard_state,
                    metadata: t.metadata,
                    sync_time: Duration::ZERO,
                    shared,
                }
            }
            None => {
                // A new WAL: segment 0, first index 0.
                let ready = allocator
                    .take()
                    .map_err(|e| WalError::io("prepare segment", &shared.dir, e))?;
                let mut w = Writer {
                    metrics: opts.metrics.clone(),
                    allocator,
                    zero_fill: zero_fill.clone(),
                    segment_size: opts.segment_size,
                    max_record,
                    seed: 0,
                    seg: SegmentInfo {
                        seq: 0,
                        first_index: 0,
                        path: ready.path.clone(),
                    },
                    file: ready.file.clone(),
                    capacity: opts.segment_size,
                    block_start: 0,
                    fill: 0,
                    durable: 0,
                    buf: AlignedBuf::zeroed(1 << 20),
                    flush_id: 0,
                    next_index: 1,
                    hard_state: None,
                    metadata: None,
                    sync_time: Duration::ZERO,
                    shared,
                };
                w.install(ready, 0, 0)?;
                w
            }
        };
        w.durable = w.fill;
        Ok(w)
    }

    fn pos(&self) -> u64 {
        self.block_start + self.fill as u64
    }

    /// Checks an append against the entry-index rule and the size limit, without changing
    /// anything.
    fn validate(&self, records: &[Record]) -> Result<(), String> {
        let mut next = self.next_index;
        for rec in records {
            let len = encoded_len(rec);
            if len > self.max_record {
                return Err(format!(
                    "a record of {len} bytes exceeds the limit of {} bytes for {}-byte segments",
                    self.max_record, self.segment_size
                ));
            }
            match rec {
                Record::Entry(e) => {
                    if e.index == 0 || e.index > next {
                        return Err(format!(
                            "entry index {} would leave a gap (next index is at most {next})",
                            e.index
                        ));
                    }
                    next = e.index + 1;
                }
                Record::Snapshot(s) => next = next.max(s.index + 1),
                Record::HardState(_) | Record::Metadata(_) => {}
            }
        }
        Ok(())
    }

    /// Encodes `rec` at the end of the buffer (growing it if needed) with the current flush id.
    fn push_record(&mut self, rec: &Record) {
        let need = self.fill + encoded_len(rec);
        if need > self.buf.len() {
            let mut bigger = AlignedBuf::zeroed((need * 2).max(self.buf.len() * 2));
            bigger[..self.fill].copy_from_slice(&self.buf[..self.fill]);
            self.buf = bigger;
        }
        self.fill += encode_record(&mut self.buf[self.fill..], rec, self.flush_id, self.seed);
        match rec {
            Record::Entry(e) => self.next_index = e.index + 1,
            Record::Snapshot(s) => self.next_index = self.next_index.max(s.index + 1),
            Record::HardState(h) => self.hard_state = Some(*h),
            Record::Metadata(m) => self.metadata = Some(m.clone()),
        }
    }

    /// Writes the buffer from the tail block's start and fdatasyncs; keeps the new tail block.
    /// Returns the bytes written (0 if nothing was pending).
    fn write_pending(&mut self) -> Result<u64, WalError> {
        self.pad();
        let started = Instant::now();
        let res = self.start_pending().map(WriteSync::wait);
        self.finish_pending(started, res)
    }

    /// Zeroes the bytes after the records up to the next 4 KiB boundary: the padding of the
    /// next write (see the buffer invariant in the module doc).
    fn pad(&mut self) {
        let len = align_up(self.fill as u64) as usize;
        self.buf[self.fill..len].fill(0);
    }

    /// Starts the write+fdatasync of what is pending (padded by [`Writer::pad`]) (`None` if nothing is); the buffer stays
    /// borrowed until the returned handle is waited for.
    fn start_pending(&self) -> Option<WriteSync<'_>> {
        if self.fill == self.durable {
            return None;
        }
        let len = align_up(self.fill as u64) as usize;
        Some(
            self.file
                .start_write_and_sync(&self.buf[..len], self.block_start),
        )
    }

    /// Completes [`Writer::start_pending`] (begun at `started`) with its outcome `res`.
    fn finish_pending(
        &mut self,
        started: Instant,
        res: Option<std::io::Result<()>>,
    ) -> Result<u64, WalError> {
        let Some(res) = res else { return Ok(0) };
        self.sync_time += started.elapsed();
        let len = align_up(self.fill as u64) as usize;
        res.map_err(|e| WalError::io("write+fdatasync segment", &self.seg.path, e))?;
        self.flush_id = self.flush_id.wrapping_add(1);
        // Keep the partially filled last block at the front of the buffer.
        let end = self.pos();
        let new_start = end & !(DIRECT_ALIGN as u64 - 1);
        let shift = (new_start - self.block_start) as usize;
        self.buf.copy_within(shift..self.fill, 0);
        let new_fill = self.fill - shift;
        self.block_start = new_start;
        self.fill = new_fill;
        self.durable = new_fill;
        Ok(len as u64)
    }

    /// Makes `ready` segment `seq` starting at `first_index`: header block with the carried
    /// HardState and metadata, fdatasync, rename, directory sync.
    fn install(
        &mut self,
        ready: super::alloc::ReadySegment,
        seq: u64,
        first_index: u64,
    ) -> Result<u64, WalError> {
        let path = self.shared.dir.join(segment_name(seq, first_index));
        let used = self.fill.max(SEGMENT_HEADER_LEN);
        self.buf[..used].fill(0);
        self.seg = SegmentInfo {
            seq,
            first_index,
            path: ready.path.clone(),
        };
        self.file = ready.file;
        self.capacity = self.segment_size;
        self.seed = crc_seed(seq);
        self.block_start = 0;
        self.fill = SEGMENT_HEADER_LEN;
        self.durable = 0;
        let header = SegmentHeader {
            seq,
            first_index,
            flush: self.flush_id,
        };
        encode_header(&mut self.buf[..SEGMENT_HEADER_LEN], &header);
        if let Some(m) = self.metadata.clone() {
            self.push_record(&Record::Metadata(m));
        }
        if let Some(h) = self.hard_state {
            self.push_record(&Record::HardState(h));
        }
        let written = self.write_pending()?;
        let vfs = &self.shared.vfs;
        vfs.rename(&ready.path, &path)
            .map_err(|e| WalError::io("rename new segment", &ready.path, e))?;
        vfs.sync_dir(&self.shared.dir)
            .map_err(|e| WalError::io("sync directory", &self.shared.dir, e))?;
        self.seg.path = path;
        self.shared
            .segments
            .lock()
            .expect("segment list lock")
            .push(self.seg.clone());
        Ok(written)
    }

    /// Flushes what is pending in the current segment and switches to the next one.
    fn switch_segment(&mut self) -> Result<u64, WalError> {
        let mut written = self.write_pending()?;
        let ready = self
            .allocator
            .take()
            .map_err(|e| WalError::io("prepare segment", &self.shared.dir, e))?;
        written += self.install(ready, self.seg.seq + 1, self.next_index)?;
        Ok(written)
    }

    /// Encodes one batch after the tail block's bytes (performing any segment switch it needs,
    /// synchronously); the batch's own write is then [`Writer::start`]ed and
    /// [`Writer::finish`]ed.
    pub(crate) fn prepare(&mut self, batch: Vec<Pending>) -> Prepared {
        let started = Instant::now();
        self.sync_time = Duration::ZERO;
        let mut max_wait = Duration::ZERO;
        let mut total_wait = Duration::ZERO;
        for p in &batch {
            let wait = started.saturating_duration_since(p.enqueued);
            max_wait = max_wait.max(wait);
            total_wait += wait;
        }
        let mut prepared = Prepared {
            out: Vec::with_capacity(batch.len()),
            acks: Vec::with_capacity(batch.len()),
            records: 0,
            bytes: 0,
            result: Ok(()),
            rest: Vec::new(),
            max_wait,
            total_wait,
        };
        if let Some(cause) = self.shared.failure.get() {
            for p in batch {
                prepared
                    .out
                    .push((p.reply, Err(WalError::Failed(cause.clone()))));
            }
            prepared.result = Err(WalError::Failed(cause.clone()));
            return prepared;
        }
        let mut rest = batch.into_iter();
        for p in rest.by_ref() {
            if let Err(reason) = self.validate(&p.records) {
                prepared
                    .out
                    .push((p.reply, Err(WalError::InvalidAppend(reason))));
                continue;
            }
            for rec in &p.records {
                if self.pos() + encoded_len(rec) as u64 > self.capacity {
                    match self.switch_segment() {
                        Ok(n) => prepared.bytes += n,
                        Err(e) => {
                            prepared.result = Err(e);
                            break;
                        }
                    }
                }
                self.push_record(rec);
            }
            prepared.records += p.records.len();
            prepared
                .acks
                .push((prepared.out.len(), self.seg.seq, self.pos()));
            // Placeholder, replaced in `finish` once the flush's result is known.
            prepared.out.push((p.reply, Err(WalError::Closed)));
            if prepared.result.is_err() {
                break;
            }
        }
        prepared.rest = rest.collect();
        self.pad();
        prepared
    }

    /// Starts the write+fdatasync of a prepared batch (`None` if there is nothing to write or
    /// preparing failed). The writer stays borrowed until the handle is waited for.
    ///
    /// Without `overlap` (the caller has nothing to do meanwhile) the I/O is deferred to the
    /// handle's `wait` and done as one synchronous call, which saves io_uring a second
    /// `io_uring_enter` and its wake-up per flush.
    pub(crate) fn start(&self, prepared: &Prepared, overlap: bool) -> Option<WriteSync<'_>> {
        if prepared.result.is_err() {
            return None;
        }
        if overlap {
            return self.start_pending();
        }
        if self.fill == self.durable {
            return None;
        }
        let len = align_up(self.fill as u64) as usize;
        let (buf, offset) = (&self.buf[..len], self.block_start);
        Some(WriteSync::deferred(move || {
            self.file.write_at_and_sync(buf, offset)
        }))
    }

    /// Completes a prepared batch with the outcome of its [`Writer::start`] (called at
    /// `io_started`): returns each append's outcome, in batch order, for the caller to deliver.
    pub(crate) fn finish(
        &mut self,
        prepared: Prepared,
        io_started: Instant,
        res: Option<std::io::Result<()>>,
    ) -> Vec<Outcome> {
        let Prepared {
            mut out,
            acks,
            records,
            mut bytes,
            mut result,
            rest,
            max_wait,
            total_wait,
        } = prepared;
        if matches!(result, Err(WalError::Failed(_))) && acks.is_empty() {
            // The WAL had failed before this batch: every outcome is already the error.
            return out;
        }
        if result.is_ok() {
            match self.finish_pending(io_started, res) {
                Ok(n) => bytes += n,
                Err(e) => result = Err(e),
            }
        }
        let sync_duration = self.sync_time;
        let appends = acks.len();
        self.zero_fill.on_flush(bytes);
        if let Some(m) = &self.metrics {
            m.on_flush(&FlushStats {
                records,
                appends,
                bytes,
                sync_duration,
                max_queue_wait: max_wait,
                total_queue_wait: total_wait,
                ok: result.is_ok(),
            });
        }
        match result {
            Ok(()) => {
                for (i, segment_seq, end_offset) in acks {
                    out[i].1 = Ok(AppendInfo {
                        flush_records: records,
                        flush_appends: appends,
                        flush_bytes: bytes,
                        segment_seq,
                        end_offset,
                    });
                }
            }
            Err(e) => {
                // Fatal: never retried (the kernel may have dropped the dirty pages).
                tracing::error!("WAL failed, refusing further appends: {e}");
                let cause = Arc::new(e.clone());
                let _ = self.shared.failure.set(cause.clone());
                for (i, _, _) in acks {
                    out[i].1 = Err(e.clone());
                }
                for p in rest {
                    out.push((p.reply, Err(WalError::Failed(cause.clone()))));
                }
            }
        }
        out
    }
}

/// A batch encoded by [`Writer::prepare`], waiting for its write.
pub(crate) struct Prepared {
    /// One outcome per append, in batch order; accepted ones hold placeholders until `finish`.
    out: Vec<Outcome>,
    /// Accepted appends: position in `out`, segment and end offset of their last record.
    acks: Vec<(usize, u64, u64)>,
    records: usize,
    /// Bytes written so far (segment switches).
    bytes: u64,
    /// A segment switch failed, or the WAL had failed before.
    result: Result<(), WalError>,
    /// Appends not looked at because a segment switch failed.
    rest: Vec<Pending>,
    max_wait: Duration,
    total_wait: Duration,
}

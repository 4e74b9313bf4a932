//! The segment writer: places each flush in the segment. Who flushes, and when, is `commit.rs`.
//!
//! A flush ("flight" while its write+fdatasync is in flight) is prepared under the writer lock
//! ([`Writer::prepare`]): its records are encoded into a buffer of its own, it gets the next
//! flush id and its place in the file. The leader then releases the lock, runs the
//! write+fdatasync ([`Prepared::start`]) and completes it ([`Prepared::finish`]) without the
//! writer, so up to `depth` flights of several leaders can be in flight at once.
//!
//! Where a flight goes:
//! - **No flight in flight**: it starts at the block holding the end of the records and
//!   rewrites that block's records (identical bytes) followed by the new ones ("contiguous").
//! - **Another flight in flight**: it starts at the next 4 KiB boundary; the rest of the last
//!   block of the flight before it stays as that flight wrote it (zero padding). So no block
//!   that a flight in flight writes is ever written by another flight.
//!
//! Worked example (depth 2, records r1..r4, blocks of 4 KiB, `|` a block boundary):
//! ```text
//! flight 7 = [r1 r2], nothing in flight     → writes block 0: r1 r2 0 0 … |
//! flight 8 = [r3], 7 still in flight        → writes block 1: r3 0 0 …    |
//! 7 and 8 complete; flight 9 = [r4]         → rewrites block 1: r3 r4 0 … |
//! ```
//!
//! Invariants relied on:
//! 1. Flush ids increase by one per physical write in file order (flights and the header
//!    write of a segment switch), because they are assigned under the writer lock in the
//!    order the writes are placed.
//! 2. Window: flight `g` is started only after every flight up to `g - depth` completed
//!    ([`Flights::wait`]), where `depth` is the smaller of the configured depth and the
//!    current segment's header depth. Replay relies on it: a valid frame of flush `g` proves
//!    flushes up to `g - depth` durable (`replay.rs`).
//! 3. A segment switch happens only with no flight in flight, so every segment but the newest
//!    is complete on disk before the next one gets records.
//! 4. `tail[..pos % 4096]` holds the bytes of the block containing `pos` before `pos` (what a
//!    contiguous flight rewrites).
//! 5. A thread that waits inside `prepare` (window or switch) first runs `before_wait`, which
//!    delivers the undelivered batch of its leader: the flights it waits for may belong to
//!    leaders whose delivery waits for that batch (`commit.rs`, invariant 3).
//! 6. The first frame of a flight placed at a fresh block carries the gap: the number of zero
//!    bytes between the end of the records before it and its block boundary. Every other
//!    frame carries 0. Replay continues across a gap only where that number matches the
//!    zeros it saw, which tells a pipelined gap apart from lost sectors of a torn write
//!    (`replay.rs`, `Window::flush_gap`).

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::alloc::{Allocator, ReadySegment, ZeroFill};
use super::commit::{Outcome, Pending};
use super::format::{
    SEGMENT_HEADER_LEN, SegmentHeader, crc_seed, encode_frame, encode_header, encoded_len,
    segment_name,
};
use super::replay::Tail;
use super::{
    AppendInfo, FlushStats, HardState, Record, SegmentInfo, Shared, WalError, WalMetrics,
    WalOptions,
};
use crate::io::{AlignedBuf, DIRECT_ALIGN, File, WriteSync, align_up};

/// Initial size of a flight buffer (grown for larger batches, kept in the pool).
const FLIGHT_BUF: usize = 1 << 20;

/// Buffers kept for reuse by later flights.
const POOL_MAX: usize = 8;

/// The flights in flight, shared by the writer (which registers them under its lock) and the
/// leaders (which complete them without it).
pub(crate) struct Flights {
    state: Mutex<FlightState>,
    cv: Condvar,
}

#[derive(Default)]
struct FlightState {
    /// Flush ids of registered flights not known to be complete, oldest first, each with
    /// whether it completed (a later one may complete before an earlier one).
    live: VecDeque<(u32, bool)>,
    /// Buffers of completed flights, for reuse.
    pool: Vec<AlignedBuf>,
}

impl Flights {
    fn new() -> Flights {
        Flights {
            state: Mutex::new(FlightState::default()),
            cv: Condvar::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FlightState> {
        self.state.lock().expect("WAL flights lock")
    }

    /// True if flight `id` may start with `depth` (invariant 2): every flight up to
    /// `id - depth` completed.
    fn window_open(state: &FlightState, id: u32, depth: u32) -> bool {
        match state.live.front() {
            None => true,
            Some(&(oldest, _)) => id.wrapping_sub(oldest) < depth,
        }
    }

    /// Blocks until `ready` holds; runs `before_wait` once first if it does not.
    fn wait(&self, ready: impl Fn(&FlightState) -> bool, before_wait: &mut dyn FnMut()) {
        if ready(&self.lock()) {
            return;
        }
        before_wait();
        let mut s = self.lock();
        while !ready(&s) {
            s = self.cv.wait(s).expect("WAL flights lock");
        }
    }

    fn is_empty(&self) -> bool {
        self.lock().live.is_empty()
    }

    fn register(&self, id: u32) {
        self.lock().live.push_back((id, false));
    }

    /// Marks flight `id` complete and keeps its buffer for reuse.
    fn complete(&self, id: u32, buf: AlignedBuf) {
        let mut s = self.lock();
        if let Some(e) = s.live.iter_mut().find(|e| e.0 == id) {
            e.1 = true;
        }
        while s.live.front().is_some_and(|e| e.1) {
            s.live.pop_front();
        }
        if s.pool.len() < POOL_MAX {
            s.pool.push(buf);
        }
        drop(s);
        self.cv.notify_all();
    }

    fn take_buf(&self) -> AlignedBuf {
        self.lock()
            .pool
            .pop()
            .unwrap_or_else(|| AlignedBuf::zeroed(FLIGHT_BUF))
    }
}

/// Bytes being encoded for one write: `buf[..fill]` is the content from file offset `offset`.
struct Encoded {
    buf: AlignedBuf,
    offset: u64,
    fill: usize,
    /// Bytes at the front that an earlier, completed write already put there (a rewritten
    /// tail block): a write is needed only if `fill > kept`.
    kept: usize,
    /// The gap field of the next frame pushed: the zeros before `offset` when this write was
    /// placed at a fresh block (invariant 6); 0 once a frame carries it.
    gap: u16,
}

impl Encoded {
    fn pos(&self) -> u64 {
        self.offset + self.fill as u64
    }

    /// Encodes `rec` at the end (growing the buffer if needed).
    fn push(&mut self, rec: &Record, flush: u32, seed: u32) {
        let need = self.fill + encoded_len(rec);
        if need > self.buf.len() {
            let mut bigger = AlignedBuf::zeroed((need * 2).max(self.buf.len() * 2));
            bigger[..self.fill].copy_from_slice(&self.buf[..self.fill]);
            self.buf = bigger;
        }
        self.fill += encode_frame(&mut self.buf[self.fill..], rec, flush, self.gap, seed);
        self.gap = 0;
    }

    /// Zeroes `[fill, next 4 KiB boundary)` and returns the write length.
    fn pad(&mut self) -> usize {
        let len = align_up(self.fill as u64) as usize;
        self.buf[self.fill..len].fill(0);
        len
    }
}

pub(crate) struct Writer {
    shared: Arc<Shared>,
    metrics: Option<Arc<dyn WalMetrics>>,
    allocator: Allocator,
    zero_fill: Arc<ZeroFill>,
    flights: Arc<Flights>,
    segment_size: u64,
    /// Largest encoded record accepted: header + carried records + it must fit a segment.
    max_record: usize,
    /// Configured pipeline depth (written into new segment headers).
    want_depth: u32,
    /// Depth used for the current segment: min(configured, its header's).
    depth: u32,
    seg: SegmentInfo,
    file: Arc<dyn File>,
    capacity: u64,
    seed: u32,
    /// End of the records in the current segment (including registered flights).
    pos: u64,
    /// Invariant 4.
    tail: AlignedBuf,
    flush_id: u32,
    next_index: u64,
    hard_state: Option<HardState>,
    metadata: Option<Bytes>,
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
        let want_depth = opts.pipeline_depth as u32;
        let (seg, file, capacity, depth, flush_id, next_index, ready) = match &tail {
            Some(t) => (
                t.seg.clone(),
                t.file.clone(),
                t.capacity,
                t.depth,
                t.next_flush,
                t.next_index,
                None,
            ),
            None => {
                // A new WAL: segment 0, first index 0.
                let ready = allocator
                    .take()
                    .map_err(|e| WalError::io("prepare segment", &shared.dir, e))?;
                let seg = SegmentInfo {
                    seq: 0,
                    first_index: 0,
                    path: ready.path.clone(),
                };
                let file = ready.file.clone();
                (seg, file, opts.segment_size, want_depth, 0, 1, Some(ready))
            }
        };
        let mut w = Writer {
            shared,
            metrics: opts.metrics.clone(),
            allocator,
            zero_fill,
            flights: Arc::new(Flights::new()),
            segment_size: opts.segment_size,
            max_record,
            want_depth,
            depth: depth.min(want_depth),
            seed: crc_seed(seg.seq),
            seg,
            file,
            capacity,
            pos: 0,
            tail: AlignedBuf::zeroed(DIRECT_ALIGN),
            flush_id,
            next_index,
            hard_state: None,
            metadata: None,
        };
        match (tail, ready) {
            (Some(t), _) => {
                w.pos = t.block_start + t.tail.len() as u64;
                w.tail[..t.tail.len()].copy_from_slice(&t.tail);
                w.hard_state = t.hard_state;
                w.metadata = t.metadata;
            }
            (None, Some(ready)) => {
                w.install(ready, 0, 0)?;
            }
            (None, None) => unreachable!("a new WAL takes a ready segment above"),
        }
        Ok(w)
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

    /// Encodes `rec` into `enc` with the current flush id and tracks what it changes.
    fn push_record(&mut self, enc: &mut Encoded, rec: &Record) {
        enc.push(rec, self.flush_id, self.seed);
        match rec {
            Record::Entry(e) => self.next_index = e.index + 1,
            Record::Snapshot(s) => self.next_index = self.next_index.max(s.index + 1),
            Record::HardState(h) => self.hard_state = Some(*h),
            Record::Metadata(m) => self.metadata = Some(m.clone()),
        }
    }

    /// Starts encoding the next write where it belongs (see the module doc).
    fn begin(&self, buf: AlignedBuf) -> Encoded {
        let mut enc = Encoded {
            buf,
            offset: 0,
            fill: 0,
            kept: 0,
            gap: 0,
        };
        if self.flights.is_empty() {
            let block = self.pos & !(DIRECT_ALIGN as u64 - 1);
            let kept = (self.pos - block) as usize;
            enc.buf[..kept].copy_from_slice(&self.tail[..kept]);
            enc.offset = block;
            enc.fill = kept;
            enc.kept = kept;
        } else {
            enc.offset = align_up(self.pos);
            enc.gap = (enc.offset - self.pos) as u16;
        }
        enc
    }

    /// Accounts a write of `enc` as placed: the next flush id, the new end and tail block.
    fn placed(&mut self, enc: &Encoded) {
        self.flush_id = self.flush_id.wrapping_add(1);
        self.pos = enc.pos();
        let block = self.pos & !(DIRECT_ALIGN as u64 - 1);
        let from = (block - enc.offset) as usize;
        let n = enc.fill - from;
        self.tail[..n].copy_from_slice(&enc.buf[from..enc.fill]);
    }

    /// Writes `enc` and fdatasyncs, synchronously (segment switches only: no flight is in
    /// flight). Returns the bytes written.
    fn write_now(&mut self, enc: &mut Encoded) -> Result<u64, WalError> {
        if enc.fill == enc.kept {
            return Ok(0);
        }
        let len = enc.pad();
        self.file
            .write_at_and_sync(&enc.buf[..len], enc.offset)
            .map_err(|e| WalError::io("write+fdatasync segment", &self.seg.path, e))?;
        self.placed(enc);
        Ok(len as u64)
    }

    /// Makes `ready` segment `seq` starting at `first_index`: header block with the carried
    /// HardState and metadata, fdatasync, rename, directory sync.
    fn install(
        &mut self,
        ready: ReadySegment,
        seq: u64,
        first_index: u64,
    ) -> Result<u64, WalError> {
        debug_assert!(self.flights.is_empty(), "invariant 3");
        let path = self.shared.dir.join(segment_name(seq, first_index));
        self.seg = SegmentInfo {
            seq,
            first_index,
            path: ready.path.clone(),
        };
        self.file = ready.file;
        self.capacity = self.segment_size;
        self.seed = crc_seed(seq);
        self.depth = self.want_depth;
        let mut enc = Encoded {
            buf: AlignedBuf::zeroed(DIRECT_ALIGN),
            offset: 0,
            fill: SEGMENT_HEADER_LEN,
            kept: 0,
            gap: 0,
        };
        let header = SegmentHeader {
            seq,
            first_index,
            flush: self.flush_id,
            depth: self.want_depth,
        };
        encode_header(&mut enc.buf[..SEGMENT_HEADER_LEN], &header);
        if let Some(m) = self.metadata.clone() {
            self.push_record(&mut enc, &Record::Metadata(m));
        }
        if let Some(h) = self.hard_state {
            self.push_record(&mut enc, &Record::HardState(h));
        }
        let written = self.write_now(&mut enc)?;
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

    /// Writes what `enc` holds of the current segment and switches to the next one; `enc`
    /// then continues after the new segment's header block.
    fn switch_segment(
        &mut self,
        enc: &mut Encoded,
        before_wait: &mut dyn FnMut(),
    ) -> Result<u64, WalError> {
        // Invariant 3.
        self.flights.wait(|s| s.live.is_empty(), before_wait);
        let mut written = self.write_now(enc)?;
        let ready = self
            .allocator
            .take()
            .map_err(|e| WalError::io("prepare segment", &self.shared.dir, e))?;
        written += self.install(ready, self.seg.seq + 1, self.next_index)?;
        let buf = std::mem::replace(&mut enc.buf, AlignedBuf::zeroed(DIRECT_ALIGN));
        *enc = self.begin(buf);
        Ok(written)
    }

    /// Encodes one batch into a flight of its own (performing any segment switch it needs,
    /// synchronously) and registers the flight; the caller then [`Prepared::start`]s and
    /// [`Prepared::finish`]es it without the writer. `before_wait` runs before this thread
    /// waits for other flights (invariant 5).
    pub(crate) fn prepare(
        &mut self,
        batch: Vec<Pending>,
        before_wait: &mut dyn FnMut(),
    ) -> Prepared {
        let started = Instant::now();
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
            sync_time: Duration::ZERO,
            flight: None,
            seg_path: self.seg.path.clone(),
            shared: self.shared.clone(),
            flights: self.flights.clone(),
            metrics: self.metrics.clone(),
            zero_fill: self.zero_fill.clone(),
        };
        // Invariant 2; checked before the failure so that a flight started after a failed
        // one completed sees the failure.
        let (id, depth) = (self.flush_id, self.depth);
        self.flights
            .wait(|s| Flights::window_open(s, id, depth), before_wait);
        if let Some(cause) = self.shared.failure.get() {
            for p in batch {
                prepared
                    .out
                    .push((p.reply, Err(WalError::Failed(cause.clone()))));
            }
            prepared.result = Err(WalError::Failed(cause.clone()));
            return prepared;
        }
        let mut enc = self.begin(self.flights.take_buf());
        let mut rest = batch.into_iter();
        for p in rest.by_ref() {
            if let Err(reason) = self.validate(&p.records) {
                prepared
                    .out
                    .push((p.reply, Err(WalError::InvalidAppend(reason))));
                continue;
            }
            for rec in &p.records {
                if enc.pos() + encoded_len(rec) as u64 > self.capacity {
                    let sync_started = Instant::now();
                    let switched = self.switch_segment(&mut enc, before_wait);
                    prepared.sync_time += sync_started.elapsed();
                    match switched {
                        Ok(n) => prepared.bytes += n,
                        Err(e) => {
                            prepared.result = Err(e);
                            break;
                        }
                    }
                }
                self.push_record(&mut enc, rec);
            }
            prepared.records += p.records.len();
            prepared
                .acks
                .push((prepared.out.len(), self.seg.seq, enc.pos()));
            // Placeholder, replaced in `finish` once the flight's result is known.
            prepared.out.push((p.reply, Err(WalError::Closed)));
            if prepared.result.is_err() {
                break;
            }
        }
        prepared.rest = rest.collect();
        prepared.seg_path = self.seg.path.clone();
        if prepared.result.is_ok() && enc.fill > enc.kept {
            let len = enc.pad();
            let id = self.flush_id;
            self.flights.register(id);
            self.placed(&enc);
            prepared.flight = Some(Flight {
                id,
                len,
                offset: enc.offset,
                file: self.file.clone(),
                buf: enc.buf,
            });
        } else {
            self.flights.complete_unused(enc.buf);
        }
        prepared
    }
}

impl Flights {
    /// Returns an unused buffer to the pool.
    fn complete_unused(&self, buf: AlignedBuf) {
        let mut s = self.lock();
        if s.pool.len() < POOL_MAX {
            s.pool.push(buf);
        }
    }
}

/// One registered write+fdatasync: its bytes and place.
struct Flight {
    id: u32,
    buf: AlignedBuf,
    len: usize,
    offset: u64,
    file: Arc<dyn File>,
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
    /// Time spent in synchronous writes (segment switches) while preparing.
    sync_time: Duration,
    /// The write to start; `None` if nothing new is to be written or preparing failed.
    flight: Option<Flight>,
    seg_path: std::path::PathBuf,
    shared: Arc<Shared>,
    flights: Arc<Flights>,
    metrics: Option<Arc<dyn WalMetrics>>,
    zero_fill: Arc<ZeroFill>,
}

impl Prepared {
    /// A batch refused as a whole with `err` (the WAL is closed).
    pub(crate) fn refused(batch: Vec<Pending>, err: impl Fn() -> WalError) -> Vec<Outcome> {
        batch.into_iter().map(|p| (p.reply, Err(err()))).collect()
    }

    /// Starts the flight's write+fdatasync (`None` if there is nothing to write). The batch
    /// stays borrowed until the handle is waited for.
    ///
    /// Without `overlap` (the caller has nothing to do meanwhile) the I/O is deferred to the
    /// handle's `wait` and done as one synchronous call, which saves io_uring a second
    /// `io_uring_enter` and its wake-up per flush.
    pub(crate) fn start(&self, overlap: bool) -> Option<WriteSync<'_>> {
        let f = self.flight.as_ref()?;
        let buf = &f.buf[..f.len];
        if overlap {
            return Some(f.file.start_write_and_sync(buf, f.offset));
        }
        let (file, offset) = (&f.file, f.offset);
        Some(WriteSync::deferred(move || {
            file.write_at_and_sync(buf, offset)
        }))
    }

    /// Completes the flight with the outcome `res` of its [`Prepared::start`] (called at
    /// `io_started`): returns each append's outcome, in batch order, for the caller to
    /// deliver.
    /// The flag is true if this flight's write or fdatasync failed.
    pub(crate) fn finish(
        self,
        io_started: Instant,
        res: Option<std::io::Result<()>>,
    ) -> (Vec<Outcome>, bool) {
        let Prepared {
            mut out,
            acks,
            records,
            mut bytes,
            mut result,
            rest,
            max_wait,
            total_wait,
            mut sync_time,
            flight,
            seg_path,
            shared,
            flights,
            metrics,
            zero_fill,
        } = self;
        if matches!(result, Err(WalError::Failed(_))) && acks.is_empty() {
            // The WAL had failed before this batch: every outcome is already the error.
            return (out, false);
        }
        if let Some(f) = flight {
            sync_time += io_started.elapsed();
            match res.unwrap_or(Ok(())) {
                Ok(()) => bytes += f.len as u64,
                Err(e) => {
                    let e = WalError::io("write+fdatasync segment", &seg_path, e);
                    // Set before the flight counts as complete (see `prepare`).
                    let _ = shared.failure.set(Arc::new(e.clone()));
                    result = Err(e);
                }
            }
            flights.complete(f.id, f.buf);
        }
        let appends = acks.len();
        let failed = result.is_err();
        zero_fill.on_flush(bytes);
        if let Some(m) = &metrics {
            m.on_flush(&FlushStats {
                records,
                appends,
                bytes,
                sync_duration: sync_time,
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
                let cause = match shared.failure.get() {
                    Some(c) => c.clone(),
                    None => {
                        let c = Arc::new(e.clone());
                        let _ = shared.failure.set(c.clone());
                        c
                    }
                };
                for (i, _, _) in acks {
                    out[i].1 = Err(e.clone());
                }
                for p in rest {
                    out.push((p.reply, Err(WalError::Failed(cause.clone()))));
                }
            }
        }
        (out, failed)
    }
}

//! The engines `disk wal` drives, behind one small interface: per-writer append functions and a
//! count of the fdatasyncs issued.

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

use bytes::Bytes;
use ringkv_engine::{
    AlignedBuf, File, FlushStats, LogEntry, Record, Wal, WalMetrics, WalOptions, align_up,
    wal_after_delivery,
};

use super::{AppendFn, RAW_FILE_BYTES, WalOpts, io_error_kind, io_name, open_vfs, prezeroed_file};

/// What `disk wal` can measure.
///
/// - `Ringkv`: ringkv's group-commit WAL with its defaults (64 MiB pre-zeroed segments,
///   O_DIRECT) on the `--io` implementation. Each writer appends one raft entry of the record's
///   size and waits for its acknowledgement. Entry indexes are taken and the append queued
///   under one mutex, so the log is contiguous as a raft leader's would be; the wait for
///   durability happens outside it. Syncs are the WAL's flushes (one write + fdatasync chain
///   each), counted by its metrics hook.
/// - `RaftEngine`: TiKV's raft-engine 0.4 with its defaults (format v2, log recycling on,
///   128 MiB files, no prefill), `Engine::write(batch, sync = true)`. Each writer is its own
///   raft group (region id = writer + 1) and appends one `LogBatch::put` of the record per
///   write; raft-engine's write group batches concurrent writers into one fdatasync, as
///   ours does. Its syncs are read from its `raft_engine_sync_log_duration_seconds`
///   histogram. It does its own buffered I/O, so `--io` does not apply to it.
/// - `Raw`: no WAL and no batching: each writer writes its record padded to a 4 KiB multiple
///   (O_DIRECT, at the next free block of one pre-zeroed file shared by all writers) and
///   fdatasyncs, through the I/O seam. With one writer this is the device's floor that the
///   WAL is held against; with N writers it shows what the device does with N independent
///   fdatasyncs (records_per_sync is 1 by construction).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Engine {
    /// `tasks` runs the appenders as async tasks (`--appenders tasks`, or engine
    /// `ringkv-tasks`): both modes can be A/B'd in one process, alternating with `--rounds`.
    /// With tasks, `each_wakes` completes every append's future from its own callback (engine
    /// `ringkv-tasks`: a wake-up of the runtime thread per append, as in session 5); without it
    /// (`ringkv-tasks-batch`) the callbacks of one flush collect their outcomes and hand them to
    /// the runtime thread in one message at the end of the flush's delivery
    /// (`wal_after_delivery`): one wake-up per flush.
    Ringkv {
        tasks: bool,
        each_wakes: bool,
    },
    /// ringkv's WAL in threads mode with `wake_before_next: true` (the leader wakes every
    /// waiter of a flushed batch itself, then takes the next batch; session 7). Engine
    /// `ringkv-wake-first`.
    RingkvWakeFirst,
    /// ringkv's WAL with `wake_gather: false` (the overlapped order, the default, named for
    /// A/Bs: the next batch is taken as an fdatasync returns, the previous one woken
    /// while it is in flight). Engine `ringkv-overlap`.
    RingkvOverlap,
    /// ringkv's WAL in the overlapped order with `relay_wake: true` (the leader hands a flushed batch's outcomes to the
    /// batch's first parked waiter, which stores them and starts the wake-up tree; by default the
    /// leader does both itself), to A/B the two in one process. Engine `ringkv-relay`.
    RingkvRelay,
    /// ringkv's WAL with `wake_gather: true` (the leader wakes a
    /// flushed batch's parked waiters as a tree and waits until they have all run before it
    /// takes the next batch; session 9). Engine `ringkv-gather`.
    RingkvGather,
    /// ringkv's WAL in the overlapped order with `wake_one: true` (the leader unparks one waiter of a flushed batch,
    /// which starts the wake-up tree). Engine `ringkv-one`.
    RingkvOne,
    RaftEngine,
    Raw,
    /// Not a log: the floor of any group commit whose appenders are blocked threads. Each
    /// append pushes its writer onto a queue and parks; one flusher thread takes the whole
    /// queue, runs the "device" (nothing with `sync: false`; one 4 KiB O_DIRECT write +
    /// fdatasync through `--io` with `sync: true`), then unparks every writer of the batch in
    /// queue order. Per append that is one mutex push, one park and one unpark: the least a
    /// synchronous appender can cost, with no encoding, CRC or outcome bookkeeping. Engines
    /// `handoff` and `handoff-sync`.
    Handoff {
        sync: bool,
    },
}

/// ringkv's WAL with the run's options.
pub const RINGKV: Engine = Engine::Ringkv {
    tasks: false,
    each_wakes: false,
};

impl Engine {
    /// `ringkv`, `ringkv-tasks`, `raft-engine` or `raw`.
    pub fn name(self) -> &'static str {
        match self {
            Engine::Ringkv { tasks: false, .. } => "ringkv",
            Engine::Ringkv {
                tasks: true,
                each_wakes: true,
            } => "ringkv-tasks",
            Engine::Ringkv {
                tasks: true,
                each_wakes: false,
            } => "ringkv-tasks-batch",
            Engine::RingkvWakeFirst => "ringkv-wake-first",
            Engine::RingkvOverlap => "ringkv-overlap",
            Engine::RingkvRelay => "ringkv-relay",
            Engine::RingkvGather => "ringkv-gather",
            Engine::RingkvOne => "ringkv-one",
            Engine::RaftEngine => "raft-engine",
            Engine::Raw => "raw",
            Engine::Handoff { sync: false } => "handoff",
            Engine::Handoff { sync: true } => "handoff-sync",
        }
    }

    /// The inverse of [`Engine::name`].
    pub fn parse(s: &str) -> Result<Engine, String> {
        match s {
            "ringkv" => Ok(RINGKV),
            "ringkv-tasks" => Ok(Engine::Ringkv {
                tasks: true,
                each_wakes: true,
            }),
            "ringkv-tasks-batch" => Ok(Engine::Ringkv {
                tasks: true,
                each_wakes: false,
            }),
            "raft-engine" => Ok(Engine::RaftEngine),
            "raw" => Ok(Engine::Raw),
            "ringkv-wake-first" => Ok(Engine::RingkvWakeFirst),
            "ringkv-overlap" => Ok(Engine::RingkvOverlap),
            "ringkv-relay" => Ok(Engine::RingkvRelay),
            "ringkv-gather" => Ok(Engine::RingkvGather),
            "ringkv-one" => Ok(Engine::RingkvOne),
            "handoff" => Ok(Engine::Handoff { sync: false }),
            "handoff-sync" => Ok(Engine::Handoff { sync: true }),
            _ => Err(format!(
                "unknown engine {s:?}: expected ringkv, ringkv-tasks, ringkv-tasks-batch, ringkv-wake-first, ringkv-overlap, ringkv-relay, ringkv-gather, ringkv-one, raft-engine, raw, handoff or handoff-sync"
            )),
        }
    }
}

/// The outcome of an append started by [`Target::start_append`].
pub type AppendDone = tokio::sync::oneshot::Receiver<Result<(), String>>;

/// An append's outcome on its way to the task awaiting it.
type Completion = (
    tokio::sync::oneshot::Sender<Result<(), String>>,
    Result<(), String>,
);

/// Outcomes handed from the WAL's delivering thread to the appender tasks' runtime thread, a
/// flush's worth at a time: the delivering thread appends and notifies once per flush; the
/// runtime's [`Target::completion_driver`] completes the tasks' futures on its own thread,
/// where a wake-up is a queue push, not a syscall.
#[derive(Default)]
struct Handoff {
    ready: Mutex<Vec<Completion>>,
    notify: tokio::sync::Notify,
}

thread_local! {
    /// Outcomes of the flush this thread is delivering, collected by the callbacks of
    /// `ringkv-tasks` and handed over at the end of the delivery.
    static DELIVERED: RefCell<Vec<Completion>> = const { RefCell::new(Vec::new()) };
}

/// An opened engine, ready to hand out writers.
pub trait Target: Sync {
    /// The append function of writer `w` (each writer thread calls only its own).
    fn writer(&self, w: usize) -> Result<AppendFn<'_>, String>;
    /// Starts appending record `seq` of writer `w` without blocking (`--appenders tasks`); the
    /// receiver completes once it is durable. `None` for engines without a callback API.
    fn start_append(&self, _w: usize, _seq: u64) -> Option<AppendDone> {
        None
    }
    /// A future that completes handed-over appends on the runtime thread (see [`Handoff`]); it
    /// never ends, the caller drops it. `None` where outcomes arrive otherwise.
    fn completion_driver(&self) -> Option<Pin<Box<dyn Future<Output = ()> + '_>>> {
        None
    }
    /// fdatasyncs issued so far.
    fn syncs(&self) -> u64;
    fn io_name(&self) -> String;
    fn close(self: Box<Self>) -> Result<(), String>;
}

pub fn open(engine: Engine, opts: &WalOpts, dir: &Path) -> Result<Box<dyn Target>, String> {
    match engine {
        Engine::Raw => Ok(Box::new(RawTarget::open(opts, dir)?)),
        Engine::RaftEngine => Ok(Box::new(RaftEngineTarget::open(opts, dir)?)),
        Engine::Handoff { sync } => Ok(Box::new(HandoffTarget::open(opts, dir, sync)?)),
        Engine::Ringkv { each_wakes, .. } => {
            Ok(Box::new(RingkvTarget::open(opts, dir, each_wakes, |_| {})?))
        }
        Engine::RingkvWakeFirst => Ok(Box::new(RingkvTarget::open(opts, dir, false, |o| {
            o.wake_before_next = true;
        })?)),
        Engine::RingkvOverlap => Ok(Box::new(RingkvTarget::open(opts, dir, false, |o| {
            o.wake_gather = false;
        })?)),
        Engine::RingkvRelay => Ok(Box::new(RingkvTarget::open(opts, dir, false, |o| {
            o.wake_gather = false;
            o.relay_wake = true;
        })?)),
        Engine::RingkvGather => Ok(Box::new(RingkvTarget::open(opts, dir, false, |o| {
            o.wake_before_next = false;
            o.wake_gather = true;
        })?)),
        Engine::RingkvOne => Ok(Box::new(RingkvTarget::open(opts, dir, false, |o| {
            o.wake_gather = false;
            o.wake_one = true;
        })?)),
    }
}

/// The payload of record `seq` of writer `w`: `len` bytes, distinct per record.
pub fn payload(w: usize, seq: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    fill_payload(&mut v, w, seq);
    v
}

/// Fills `buf` with a pattern of writer `w`'s record `seq` (not compressible to nothing, and
/// never the all-zero block of a pre-zeroed file).
fn fill_payload(buf: &mut [u8], w: usize, seq: u64) {
    let tag = (seq.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ ((w as u64) << 48)).to_le_bytes();
    for (i, b) in buf.iter_mut().enumerate() {
        *b = match tag[i % 8] ^ (i as u8) {
            0 => 0xA5,
            x => x,
        };
    }
}

struct RawTarget {
    file: Arc<dyn File>,
    io: String,
    block: u64,
    slots: u64,
    next: AtomicU64,
    syncs: AtomicU64,
    record_size: usize,
}

impl RawTarget {
    fn open(opts: &WalOpts, dir: &Path) -> Result<Self, String> {
        let vfs = open_vfs(opts.io)?;
        let block = align_up(opts.record_size.max(1));
        let bytes = RAW_FILE_BYTES.max(block * 4 * u64::from(opts.writers.max(1)));
        let path = dir.join("raw.dat");
        let file = prezeroed_file(&*vfs, &path, bytes)
            .map_err(|e| format!("{}: cannot prepare file: {e}", path.display()))?;
        Ok(RawTarget {
            file,
            io: io_name(opts.io).to_owned(),
            block,
            slots: align_up(bytes) / block,
            next: AtomicU64::new(0),
            syncs: AtomicU64::new(0),
            record_size: opts.record_size as usize,
        })
    }
}

impl Target for RawTarget {
    fn writer(&self, w: usize) -> Result<AppendFn<'_>, String> {
        let mut buf = AlignedBuf::zeroed(self.block as usize);
        Ok(Box::new(move |seq| {
            fill_payload(&mut buf[..self.record_size], w, seq);
            let off = (self.next.fetch_add(1, Ordering::Relaxed) % self.slots) * self.block;
            let res = self.file.write_at_and_sync(&buf, off);
            self.syncs.fetch_add(1, Ordering::Relaxed);
            res.map_err(|e: io::Error| io_error_kind(&e))
        }))
    }

    fn syncs(&self) -> u64 {
        self.syncs.load(Ordering::Relaxed)
    }

    fn io_name(&self) -> String {
        self.io.clone()
    }

    fn close(self: Box<Self>) -> Result<(), String> {
        Ok(())
    }
}

/// One writer of [`Engine::Handoff`]: the thread to unpark, and whether its append is done.
struct HandoffSlot {
    done: AtomicBool,
    thread: std::thread::Thread,
}

#[derive(Default)]
struct HandoffQueue {
    items: Vec<Arc<HandoffSlot>>,
    /// The flusher waits on the condition variable (set by it, cleared by the push that
    /// notifies it): pushes onto a non-empty queue cost no syscall.
    idle: bool,
    stop: bool,
}

#[derive(Default)]
struct HandoffState {
    queue: Mutex<HandoffQueue>,
    wake: Condvar,
    syncs: AtomicU64,
}

struct HandoffTarget {
    state: Arc<HandoffState>,
    flusher: Option<std::thread::JoinHandle<()>>,
    io: String,
    record_size: usize,
}

impl HandoffTarget {
    fn open(opts: &WalOpts, dir: &Path, sync: bool) -> Result<Self, String> {
        let device = if sync {
            let vfs = open_vfs(opts.io)?;
            let path = dir.join("handoff.dat");
            let file = prezeroed_file(&*vfs, &path, RAW_FILE_BYTES)
                .map_err(|e| format!("{}: cannot prepare file: {e}", path.display()))?;
            Some(file)
        } else {
            None
        };
        let state = Arc::new(HandoffState::default());
        let st = state.clone();
        let flusher = std::thread::Builder::new()
            .name("handoff-flusher".to_owned())
            .spawn(move || Self::flush_loop(&st, device))
            .map_err(|e| format!("cannot spawn the handoff flusher: {e}"))?;
        Ok(HandoffTarget {
            state,
            flusher: Some(flusher),
            io: if sync { io_name(opts.io) } else { "none" }.to_owned(),
            record_size: opts.record_size as usize,
        })
    }

    /// Takes the whole queue, runs the device, unparks the batch; until stopped with an empty
    /// queue.
    /// With `RINGKV_WAL_TRACE` set, prints the medians of its flush timeline at the end
    /// ([`HandoffTimeline`]), to compare with the WAL's trace.
    fn flush_loop(st: &HandoffState, device: Option<Arc<dyn File>>) {
        let block = AlignedBuf::zeroed(4096);
        let blocks = RAW_FILE_BYTES / 4096;
        let mut batch = Vec::new();
        let mut timeline = std::env::var_os("RINGKV_WAL_TRACE").map(|_| HandoffTimeline::default());
        let mut last_woken = None;
        loop {
            {
                let mut q = st.queue.lock().expect("handoff queue lock");
                while q.items.is_empty() && !q.stop {
                    q.idle = true;
                    q = st.wake.wait(q).expect("handoff queue lock");
                    last_woken = None;
                }
                if q.items.is_empty() {
                    if let Some(t) = &timeline {
                        t.print();
                    }
                    return;
                }
                std::mem::swap(&mut batch, &mut q.items);
            }
            let io_start = Instant::now();
            if let Some(file) = &device {
                let off = (st.syncs.load(Ordering::Relaxed) % blocks) * 4096;
                // An fdatasync error is fatal, and this floor has no way to hand it to the
                // parked writers: end the run.
                if let Err(e) = file.write_at_and_sync(&block, off) {
                    eprintln!("disk wal: handoff-sync: write+fdatasync failed: {e}");
                    std::process::exit(1);
                }
            }
            st.syncs.fetch_add(1, Ordering::Relaxed);
            let io_done = Instant::now();
            let appends = batch.len();
            for slot in batch.drain(..) {
                slot.done.store(true, Ordering::Release);
                slot.thread.unpark();
            }
            let woken = Instant::now();
            if let Some(t) = &mut timeline {
                t.push(appends, last_woken, io_start, io_done, woken);
            }
            last_woken = Some(woken);
        }
    }
}

/// The flush timeline of [`Engine::Handoff`] (per flush: appends, the previous flush's wake
/// loop end → this I/O start, the I/O, the wake loop), in µs.
#[derive(Default)]
struct HandoffTimeline {
    appends: Vec<f64>,
    gap: Vec<f64>,
    device: Vec<f64>,
    wake: Vec<f64>,
}

impl HandoffTimeline {
    fn push(
        &mut self,
        appends: usize,
        last_woken: Option<Instant>,
        io_start: Instant,
        io_done: Instant,
        woken: Instant,
    ) {
        if self.appends.len() >= 1 << 20 {
            return;
        }
        let us = |a: Instant, b: Instant| b.duration_since(a).as_secs_f64() * 1e6;
        self.appends.push(appends as f64);
        if let Some(w) = last_woken {
            self.gap.push(us(w, io_start));
        }
        self.device.push(us(io_start, io_done));
        self.wake.push(us(io_done, woken));
    }

    fn print(&self) {
        let median = |v: &[f64]| {
            let mut v = v.to_vec();
            v.sort_by(f64::total_cmp);
            v.get(v.len() / 2).copied().unwrap_or(0.0)
        };
        eprintln!(
            "handoff timeline: {} flushes; medians: appends {:.1}, device (write+fdatasync) {:.1} us, \
             wake loop {:.1} us, wake loop end -> next I/O {:.1} us",
            self.appends.len(),
            median(&self.appends),
            median(&self.device),
            median(&self.wake),
            median(&self.gap)
        );
    }
}

impl Target for HandoffTarget {
    fn writer(&self, w: usize) -> Result<AppendFn<'_>, String> {
        // Made on the writer thread at its first append (`writer` runs on the spawning thread).
        let mut slot: Option<Arc<HandoffSlot>> = None;
        Ok(Box::new(move |seq| {
            let slot = slot.get_or_insert_with(|| {
                Arc::new(HandoffSlot {
                    done: AtomicBool::new(false),
                    thread: std::thread::current(),
                })
            });
            // The same per-append payload allocation as the other engines' writers.
            let data = payload(w, seq, self.record_size);
            slot.done.store(false, Ordering::Relaxed);
            {
                let mut q = self.state.queue.lock().expect("handoff queue lock");
                q.items.push(slot.clone());
                if q.idle {
                    q.idle = false;
                    self.state.wake.notify_one();
                }
            }
            while !slot.done.load(Ordering::Acquire) {
                std::thread::park();
            }
            drop(data);
            Ok(())
        }))
    }

    fn syncs(&self) -> u64 {
        self.state.syncs.load(Ordering::Relaxed)
    }

    fn io_name(&self) -> String {
        self.io.clone()
    }

    fn close(mut self: Box<Self>) -> Result<(), String> {
        self.state.queue.lock().expect("handoff queue lock").stop = true;
        self.state.wake.notify_one();
        match self.flusher.take().map(std::thread::JoinHandle::join) {
            Some(Err(_)) => Err("the handoff flusher panicked".to_owned()),
            _ => Ok(()),
        }
    }
}

/// Counts the WAL's flushes.
#[derive(Default)]
struct FlushCounter {
    flushes: AtomicU64,
}

impl WalMetrics for FlushCounter {
    fn on_flush(&self, _stats: &FlushStats) {
        self.flushes.fetch_add(1, Ordering::Relaxed);
    }
}

struct RingkvTarget {
    wal: Wal,
    io: String,
    flushes: Arc<FlushCounter>,
    /// The last entry index handed out. Held while an append is queued, so queue order is
    /// index order.
    last_index: Mutex<u64>,
    record_size: usize,
    /// Complete each task's future from its own callback (`ringkv-tasks-each`).
    each_wakes: bool,
    handoff: Arc<Handoff>,
}

impl RingkvTarget {
    /// `data` as the entry at the next index; `last` is the held index lock.
    fn next_record(last: &mut u64, data: Bytes) -> Record {
        *last += 1;
        Record::Entry(LogEntry {
            index: *last,
            term: 1,
            entry_type: 0,
            data,
        })
    }

    /// `tweak` changes the WAL options of the engine variant (`wake_before_next`, ...).
    fn open(
        opts: &WalOpts,
        dir: &Path,
        each_wakes: bool,
        tweak: fn(&mut WalOptions),
    ) -> Result<Self, String> {
        let vfs = open_vfs(opts.io)?;
        let flushes = Arc::new(FlushCounter::default());
        let mut wal_opts = WalOptions {
            metrics: Some(flushes.clone()),
            idle_spin: opts.wal_idle_spin,
            zero_fill_below: opts
                .wal_zero_fill_below
                .unwrap_or(WalOptions::default().zero_fill_below),
            ..WalOptions::default()
        };
        tweak(&mut wal_opts);
        let wal_dir = dir.join("wal");
        let (wal, replay) = Wal::open(vfs, &wal_dir, wal_opts)
            .map_err(|e| format!("ringkv WAL: cannot open {}: {e}", wal_dir.display()))?;
        let last = replay.entries.last().map_or(0, |e| e.index);
        Ok(RingkvTarget {
            wal,
            io: io_name(opts.io).to_owned(),
            flushes,
            last_index: Mutex::new(last),
            record_size: opts.record_size as usize,
            each_wakes,
            handoff: Arc::default(),
        })
    }
}

impl Target for RingkvTarget {
    fn writer(&self, w: usize) -> Result<AppendFn<'_>, String> {
        Ok(Box::new(move |seq| {
            let data = Bytes::from(payload(w, seq, self.record_size));
            let ticket = {
                let mut last = self.last_index.lock().expect("index lock");
                self.wal.enqueue(vec![Self::next_record(&mut last, data)])
            };
            // Outside the index lock: this thread may now perform the flush itself.
            match ticket.wait() {
                Ok(_info) => Ok(()),
                Err(e) => Err(format!("WAL: {e}")),
            }
        }))
    }

    fn start_append(&self, w: usize, seq: u64) -> Option<AppendDone> {
        let data = Bytes::from(payload(w, seq, self.record_size));
        let (tx, rx) = tokio::sync::oneshot::channel();
        // Indexes are taken and the append queued under one lock, as in `writer`; the
        // callback runs on the thread that flushed the append.
        let mut last = self.last_index.lock().expect("index lock");
        let record = Self::next_record(&mut last, data);
        if self.each_wakes {
            self.wal.append(vec![record], move |r| {
                let _ = tx.send(r.map(|_| ()).map_err(|e| format!("WAL: {e}")));
            });
            return Some(rx);
        }
        let handoff = self.handoff.clone();
        self.wal.append(vec![record], move |r| {
            let r = r.map(|_| ()).map_err(|e| format!("WAL: {e}"));
            let first = DELIVERED.with(|d| {
                let mut d = d.borrow_mut();
                d.push((tx, r));
                d.len() == 1
            });
            if first {
                wal_after_delivery(move || {
                    let batch = DELIVERED.with(|d| std::mem::take(&mut *d.borrow_mut()));
                    handoff.ready.lock().expect("handoff lock").extend(batch);
                    handoff.notify.notify_one();
                });
            }
        });
        Some(rx)
    }

    fn completion_driver(&self) -> Option<Pin<Box<dyn Future<Output = ()> + '_>>> {
        if self.each_wakes {
            return None;
        }
        Some(Box::pin(async move {
            let mut batch = Vec::new();
            loop {
                self.handoff.notify.notified().await;
                std::mem::swap(
                    &mut batch,
                    &mut *self.handoff.ready.lock().expect("handoff lock"),
                );
                for (tx, r) in batch.drain(..) {
                    let _ = tx.send(r);
                }
            }
        }))
    }

    fn syncs(&self) -> u64 {
        self.flushes.flushes.load(Ordering::Relaxed)
    }

    fn io_name(&self) -> String {
        self.io.clone()
    }

    fn close(self: Box<Self>) -> Result<(), String> {
        self.wal
            .close()
            .map_err(|e| format!("ringkv WAL: close failed: {e}"))
    }
}

/// Name of raft-engine's fdatasync-duration histogram (one sample per fdatasync).
const RAFT_ENGINE_SYNC_METRIC: &str = "raft_engine_sync_log_duration_seconds";

struct RaftEngineTarget {
    engine: raft_engine::Engine,
    record_size: usize,
}

impl RaftEngineTarget {
    fn open(opts: &WalOpts, dir: &Path) -> Result<Self, String> {
        let cfg = raft_engine::Config {
            dir: dir.join("raft-engine").to_string_lossy().into_owned(),
            ..Default::default()
        };
        let engine = raft_engine::Engine::open(cfg)
            .map_err(|e| format!("raft-engine: cannot open in {}: {e}", dir.display()))?;
        Ok(RaftEngineTarget {
            engine,
            record_size: opts.record_size as usize,
        })
    }
}

/// fdatasyncs raft-engine has issued in this process (all engines).
pub fn raft_engine_syncs() -> u64 {
    prometheus::gather()
        .iter()
        .filter(|mf| mf.get_name() == RAFT_ENGINE_SYNC_METRIC)
        .flat_map(|mf| mf.get_metric())
        .map(|m| m.get_histogram().get_sample_count())
        .sum()
}

impl Target for RaftEngineTarget {
    fn writer(&self, w: usize) -> Result<AppendFn<'_>, String> {
        let region = w as u64 + 1;
        Ok(Box::new(move |seq| {
            let mut batch = raft_engine::LogBatch::default();
            batch
                .put(
                    region,
                    seq.to_be_bytes().to_vec(),
                    payload(w, seq, self.record_size),
                )
                .map_err(|e| format!("raft-engine put: {e}"))?;
            self.engine
                .write(&mut batch, true)
                .map(|_| ())
                .map_err(|e| format!("raft-engine write: {e}"))
        }))
    }

    fn syncs(&self) -> u64 {
        raft_engine_syncs()
    }

    fn io_name(&self) -> String {
        "own".to_owned()
    }

    fn close(self: Box<Self>) -> Result<(), String> {
        drop(self.engine);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use ringkv_engine::IoKind;

    use super::super::run_wal;
    use super::*;

    fn opts(dir: &Path, writers: u32, record_size: u64) -> WalOpts {
        WalOpts {
            dir: dir.to_owned(),
            io: IoKind::Std,
            writers,
            record_size,
            warmup: Duration::from_millis(50),
            duration: Duration::from_millis(200),
            wal_idle_spin: Duration::ZERO,
            wal_zero_fill_below: None,
            appenders: super::super::Appenders::Threads,
        }
    }

    #[test]
    fn payloads_differ_and_are_never_zero() {
        let a = payload(0, 1, 64);
        let b = payload(0, 2, 64);
        let c = payload(1, 1, 64);
        assert_ne!(a, b);
        assert_ne!(a, c);
        assert!(a.iter().all(|&x| x != 0));
    }

    #[test]
    fn raw_engine_one_sync_per_record() {
        let dir = tempfile::tempdir().unwrap();
        let r = run_wal(Engine::Raw, &opts(dir.path(), 3, 256)).unwrap();
        assert_eq!(r.engine, "raw");
        assert_eq!(r.writers, 3);
        assert!(r.total > 0);
        assert_eq!(r.errors, 0);
        assert_eq!(r.syncs, r.total);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn ringkv_wal_batches_concurrent_writers() {
        let dir = tempfile::tempdir().unwrap();
        let r = run_wal(RINGKV, &opts(dir.path(), 8, 256)).unwrap();
        assert_eq!(r.engine, "ringkv");
        assert!(r.total > 0, "{r:?}");
        assert_eq!(r.errors, 0);
        assert!(r.syncs > 0 && r.syncs <= r.total, "{r:?}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn ringkv_tasks_mode_batches_concurrent_tasks_and_others_keep_threads() {
        let dir = tempfile::tempdir().unwrap();
        let o = WalOpts {
            appenders: super::super::Appenders::Tasks,
            ..opts(dir.path(), 16, 256)
        };
        let rs = super::super::run_wal_interleaved(&[RINGKV, Engine::Raw], &o, 1).unwrap();
        assert_eq!(rs[0].engine, "ringkv-tasks");
        assert_eq!(rs[1].engine, "raw");
        let r = &rs[0];
        assert!(r.total > 0 && r.errors == 0, "{r:?}");
        // 16 tasks wait on one thread, so nothing but the WAL can batch them: with one
        // fdatasync per append the tasks would not be concurrent.
        assert!(r.syncs > 0 && r.syncs < r.total, "{r:?}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        assert!(super::super::parse_appenders("fibers").is_err());
    }

    /// The batch hand-off (`ringkv-tasks-batch`) completes every task: a lost hand-off would
    /// leave a task waiting forever and the slice would not end.
    #[test]
    fn ringkv_tasks_batch_completes_every_append_through_one_hand_off_per_flush() {
        let dir = tempfile::tempdir().unwrap();
        let batch = Engine::parse("ringkv-tasks-batch").unwrap();
        let rs =
            super::super::run_wal_interleaved(&[batch], &opts(dir.path(), 16, 256), 2).unwrap();
        let r = &rs[0];
        assert_eq!(r.engine, "ringkv-tasks-batch");
        assert!(r.total > 0 && r.errors == 0, "{r:?}");
        assert!(r.syncs > 0 && r.syncs < r.total, "{r:?}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn engine_names_round_trip() {
        for name in [
            "ringkv",
            "ringkv-tasks",
            "ringkv-tasks-batch",
            "ringkv-wake-first",
            "ringkv-overlap",
            "ringkv-relay",
            "ringkv-gather",
            "ringkv-one",
            "raft-engine",
            "raw",
            "handoff",
            "handoff-sync",
        ] {
            assert_eq!(Engine::parse(name).unwrap().name(), name);
        }
        for bad in ["ringkv-d2", "ringkv2", "etcd", "tasks"] {
            assert!(Engine::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn interleaved_rounds_report_each_engine_once() {
        let dir = tempfile::tempdir().unwrap();
        let rs =
            super::super::run_wal_interleaved(&[Engine::Raw, RINGKV], &opts(dir.path(), 2, 100), 4)
                .unwrap();
        assert_eq!(rs.len(), 2);
        assert_eq!(
            (rs[0].engine.as_str(), rs[1].engine.as_str()),
            ("raw", "ringkv")
        );
        for r in &rs {
            assert!(r.total > 0 && r.errors == 0, "{r:?}");
            // Four slices of 50 ms each.
            assert!(r.duration_s >= 0.2, "{r:?}");
        }
        assert_eq!(
            rs[0].syncs, rs[0].total,
            "raw: one sync per record over all slices"
        );
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    /// The hand-off floor completes every append (a lost unpark would hang the slice), each
    /// flush covering at least one, and leaves nothing behind.
    #[test]
    fn handoff_floor_batches_and_completes_every_append() {
        for name in ["handoff", "handoff-sync"] {
            let dir = tempfile::tempdir().unwrap();
            let e = Engine::parse(name).unwrap();
            let rs = super::super::run_wal_interleaved(&[e], &opts(dir.path(), 8, 256), 2).unwrap();
            let r = &rs[0];
            assert_eq!(r.engine, name);
            assert!(r.total > 0 && r.errors == 0, "{r:?}");
            assert!(r.syncs > 0 && r.syncs <= r.total, "{r:?}");
            assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        }
    }

    #[test]
    fn raft_engine_writes_and_counts_syncs() {
        let dir = tempfile::tempdir().unwrap();
        let r = run_wal(Engine::RaftEngine, &opts(dir.path(), 4, 256)).unwrap();
        assert_eq!(r.engine, "raft-engine");
        assert!(r.total > 0, "{r:?}");
        assert_eq!(r.errors, 0);
        assert!(r.syncs > 0, "{r:?}");
        // A sync covers at least one record; a few syncs may belong to writes still in flight
        // when the clock stopped.
        assert!(r.syncs <= r.total + 4, "{r:?}");
    }
}

//! Group commit with a rotating leader: the appender that finds no flush in flight performs the
//! flush itself, on its own thread and io_uring; appends that arrive meanwhile queue up, and
//! the leader keeps flushing them, one batch (the whole queue) per write+fdatasync, for as long
//! as appends are waiting and its role allows; then it passes leadership on or lets the WAL go
//! idle.
//!
//! Why: with a dedicated WAL thread every append of an idle WAL paid two thread hand-offs
//! (appender → WAL thread → appender), each the wake-up of a sleeping thread, measured at ~60 µs
//! on a ~130 µs write+fdatasync (BENCHMARKS.md). Here an uncontended `append_wait` runs
//! write+fdatasync on the calling thread and returns: no hand-off at all. Under load, a leader
//! that passed leadership on after every batch paid one wake-up of the next leader between
//! two flushes, about half of each flush cycle at 64 writers; so a leader now flushes the next
//! batch itself, and delivers the previous batch's outcomes (waking its waiters, running its
//! callbacks) while the next batch's write+fdatasync is in flight
//! ([`crate::io::File::start_write_and_sync`]).
//!
//! # Orders of wake-ups and the next batch
//! - **Gathering** (`wake_gather: true`, in [`Core::lead`]; off by default): a flushed batch that
//!   holds waiting appenders is delivered right after its fdatasync: every outcome stored, the
//!   parked waiters woken as a tree ([`WakeChain`]), and the leader parks until each of them
//!   has taken its outcome ([`WakeChain::gathered`]); then it takes the queue, which holds the
//!   appenders it woke. The device idles while the batch wakes, a window as long as the batch
//!   and no timer: at 64 writers on 2 vCPUs, 63–64 appends per fdatasync, and the least CPU
//!   per append; it won under load, lost to the overlapped order at load 4–7 (BENCHMARKS.md,
//!   session 9). Batches of callbacks only (the raft core's) stay in the overlapped order below.
//! - **Wake first** (`wake_before_next: true`, [`Core::lead_wake_first`], session 7): per
//!   batch, take the whole queue, write+fdatasync it, deliver its outcomes and unpark every
//!   parked waiter of it on the leader's thread, then look at the queue again: the woken
//!   appenders lag the leader's loop, ~36–45 appends per fdatasync at 64 writers; 7–10 %
//!   below the overlapped order on the quiet machine of session 7 (BENCHMARKS.md).
//! - **Overlapped** (the default, [`Core::lead`]'s own loop; for waiters only with
//!   `wake_gather: false`): the
//!   next batch is taken as soon as an fdatasync returns and the previous batch is delivered
//!   while it is in flight (std I/O: just before its write, as the write blocks); its waiters
//!   are woken as a tree ([`WakeChain`]) that the leader starts (two wake-ups, or one with
//!   `wake_one`), or with `relay_wake` the batch's first parked waiter, the relay head
//!   ([`Core::deliver`]), so that the leader pays one wake-up per flush. The device never
//!   waits for more than that, but a batch can only hold appenders that were not in the
//!   previous one: at most half of N closed-loop writers per fdatasync.
//!
//! # Roles ([`Lead`])
//! - **Leader**: the one thread that holds the writer. Per batch (overlapped order): take the
//!   whole queue, encode it, start its write+fdatasync, deliver the previous batch's outcomes,
//!   wait for the I/O. When it stops leading it passes leadership on ([`Core::hand_off`])
//!   before delivering its last batch, so the next fdatasync can start while it wakes up to a
//!   few dozen waiters. (Wake-first order: it delivers each batch before looking at the queue,
//!   and passes leadership on after its last delivery.)
//!   - an `append_inline` caller leads one batch (it must not wait for others' flushes);
//!   - a waiting appender leads at most [`LEAD_BATCHES`] batches, then hands a non-empty queue
//!     to the flush thread (bounding how long its own caller is held back);
//!   - the flush thread and `close` lead while appends keep coming.
//! - **Follower**: a waiting appender ([`AppendTicket::wait`]) that found a flush in flight.
//!   It parks until its outcome is delivered or it is made leader.
//! - **Flush thread** (`ringkv-wal`): leads when handed leadership: for callback appends
//!   ([`Wal::append`]) that arrived during a flush when no parked waiter is queued, and after a
//!   waiting leader reached its bound. It keeps callback appenders (the raft core) from ever
//!   waiting for a flush of others. At sustained load it ends up leading continuously.
//!
//! # Invariants relied on
//! 1. `Queue::flushing` is true from the moment a thread becomes leader until its successor is
//!    chosen or it sets it false in `hand_off`; so at most one thread runs the writer at a
//!    time (the writer mutex is then never contended; it exists to give the leader `&mut`).
//! 2. Batches are numbered when taken from the queue (`next_batch`), in queue order; the
//!    outcomes of batch `b` are delivered only after those of every batch before it
//!    (`delivered` gate). Hence callbacks run in append order, as the `Wal::append` contract
//!    says, even though two leaders may deliver at the same time.
//! 3. Batch `b + 1`'s write is started only after batch `b`'s fdatasync returned (a leader
//!    waits for its I/O before taking the next batch, and passes leadership on only after
//!    it), so an `Ok` outcome of batch `b + 1` implies batch `b` is durable, and the on-disk
//!    rules of `replay.rs` (one flush in flight at a time) hold. Only the *delivery* of batch
//!    `b` overlaps batch `b + 1`'s I/O, never the acknowledgement of `b + 1`.
//! 4. A waiter parks only after checking, under its slot lock, that neither an outcome nor
//!    leadership was given to it; both are given under the same lock, and the giver unparks the
//!    thread recorded there. Lock order: queue, then a waiter's slot.
//! 5. Every queued append is eventually flushed: a leader that stops with the queue non-empty
//!    hands leadership to a parked waiter or to the flush thread, or — if the queue holds only
//!    tickets whose owners have not started waiting — clears `flushing`, and each such owner
//!    leads when it waits (a dropped ticket waits in `Drop`).
//!
//! # Worked example, overlapped order (three threads A, B, C calling `append_wait`, one raft
//! core `R` calling `append_inline`; in the wake-first order A delivers batch 0 right after its
//! fdatasync, then takes batch 1, and delivers batch 1 before `hand_off`)
//! ```text
//! A: queue [a], flushing=false → A leads: batch 0 = [a], write+fdatasync
//! B: queue [b], flushing=true  → B parks
//! R: queue [b r], flushing=true → returns (its callback will run later)
//! C: queue [b r c]             → C parks
//! A: fdatasync returns; queue non-empty, 1 < LEAD_BATCHES → A goes on:
//!    batch 1 = [b r c], starts its write+fdatasync; delivers batch 0 (a's own outcome)
//! A: batch 1's fdatasync returns; queue empty → hand_off: flushing=false; delivers batch 1
//!    (b's outcome, r's callback, wakes B and C); returns
//! ```

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::Thread;
use std::time::{Duration, Instant};

use super::trace::{Field, Trace};
use super::writer::Writer;
use super::{AppendInfo, Done, Record, Shared, WalError, WalOptions};
use crate::io::WriteSync;

thread_local! {
    /// True while this thread runs outcome callbacks. A callback that appended inline or waited
    /// would wait for the delivery gate it is itself holding: inline appends from a callback go
    /// to the flush thread instead, and waiting from one panics with a clear message.
    static DELIVERING: Cell<bool> = const { Cell::new(false) };
    /// Actions callbacks of the batch being delivered deferred with [`after_delivery`].
    static AFTER_DELIVERY: RefCell<Vec<Box<dyn FnOnce()>>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` on this thread once every callback of the flush being delivered has run; outside a
/// callback, at once. For a callback that wakes another thread: deferring the wake-up lets one
/// wake-up cover a whole flush's appends (collect the outcomes, and register one action that
/// hands them over together), instead of a wake-up per append whose receiver runs and sleeps
/// again before the next callback. Same rules as callbacks: quick, never waits for an append.
pub fn after_delivery(f: impl FnOnce() + 'static) {
    if DELIVERING.with(Cell::get) {
        AFTER_DELIVERY.with(|v| v.borrow_mut().push(Box::new(f)));
    } else {
        f();
    }
}

/// How many batches a waiting appender that leads flushes at most before it passes leadership
/// to the flush thread: bounds the delay its own caller sees beyond its append's flush (about
/// 1 ms with a 130 µs write+fdatasync). A count, not a time, so that tests can check it.
pub(crate) const LEAD_BATCHES: usize = 8;

/// How long a leader keeps leading while appends are waiting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Lead {
    /// One batch: an `append_inline` caller, which must not wait for others' flushes.
    Once,
    /// At most [`LEAD_BATCHES`] batches: an appender waiting for its own append.
    Bounded,
    /// While appends keep coming: the flush thread, and `close`.
    Unbounded,
}

impl Lead {
    /// Whether a leader that flushed `batches` batches takes another one (appends waiting).
    fn leads_again(self, batches: usize) -> bool {
        match self {
            Lead::Once => false,
            Lead::Bounded => batches < LEAD_BATCHES,
            Lead::Unbounded => true,
        }
    }
}

/// The outcomes of a batch that found the WAL closed.
fn closed(batch: Vec<Pending>) -> Vec<Outcome> {
    batch
        .into_iter()
        .map(|p| (p.reply, Err(WalError::Closed)))
        .collect()
}

/// How an append learns its outcome.
pub(crate) enum Reply {
    /// Run on the delivering leader's thread.
    Callback(Done),
    /// Stored in the waiter's slot; its thread is woken.
    Waiter(Arc<Waiter>),
}

/// One queued append.
pub(crate) struct Pending {
    pub records: Vec<Record>,
    pub reply: Reply,
    pub enqueued: Instant,
}

/// An append's outcome, paired with how to deliver it.
pub(crate) type Outcome = (Reply, Result<AppendInfo, WalError>);

/// A waiting appender's outcome, not stored in its slot yet.
type WaiterOutcome = (Arc<Waiter>, Result<AppendInfo, WalError>);

/// The rendezvous of one waiting appender with the leaders.
pub(crate) struct Waiter {
    /// True while the owner is parked waiting and its append is still queued; written under the
    /// queue lock (invariant 4). Leaders pick the next leader among parked waiters.
    parked: AtomicBool,
    /// Set with the slot's outcome or leadership; lets a spinning owner poll without the lock.
    ready: AtomicBool,
    slot: Mutex<Slot>,
}

#[derive(Default)]
struct Slot {
    outcome: Option<Result<AppendInfo, WalError>>,
    /// This waiter was made leader and must lead once.
    lead: bool,
    /// The parked owner, to unpark.
    thread: Option<Thread>,
    /// The wake-up chain of the batch that delivered `outcome`, which the owner helps.
    chain: Option<Arc<WakeChain>>,
    /// Outcomes of later waiters of the same batch, which the owner delivers (it is the
    /// batch's relay head, see [`Core::deliver`]) before it returns.
    relay: Vec<WaiterOutcome>,
    /// Number of the batch that delivered `outcome` (for the trace).
    batch: u64,
}

/// Who stores a delivered batch's waiter outcomes and wakes the parked waiters
/// ([`Core::deliver`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Wake {
    /// The first parked waiter does, after the delivering thread unparked it.
    Relay,
    /// The delivering thread stores them and unparks the first of a wake-up tree.
    Tree,
    /// The delivering thread stores them and unparks the first of a wake-up tree of the parked
    /// ones only.
    One,
    /// The delivering thread stores them and unparks them all.
    All,
}

/// How many waiters of a chain each woken waiter wakes in turn before it returns.
const WAKE_FANOUT: usize = 2;

type Panic = Box<dyn Any + Send>;

/// Wakes the waiters of one delivered batch, every outcome already stored: either all by one
/// thread ([`WakeChain::finish`], the wake-first order) or as a tree, where each waiter that
/// returns with the chain in its slot claims the next [`WAKE_FANOUT`] waiters and unparks
/// those that are parked; the wake-up syscalls (several µs each on a VM) are spread over the
/// woken threads instead of all running on one.
///
/// Invariants relied on: every outcome of the chain is stored (with the chain, in the same
/// slot lock) before the first claim, so a claimed waiter cannot park again; and every waiter
/// of a tree chain returns with the chain and claims [`WAKE_FANOUT`] (≥ 1) more, whether it
/// was unparked, woke spuriously or never parked; so the claims reach every index and no
/// parked waiter is left asleep, with no `finish` by anyone.
///
/// Example with 6 waiters w0..w5 and fan-out 2: the relay head claims w0, w1; w0 wakes and
/// claims w2, w3; w1 claims w4, w5; later claims find nothing left.
pub(crate) struct WakeChain {
    waiters: Vec<Arc<Waiter>>,
    /// Index of the next waiter to claim (claimed with `fetch_add`).
    next: AtomicUsize,
    /// Members that have returned with their outcome (counted for a gathering leader only).
    returned: AtomicUsize,
    /// The leader waiting in [`WakeChain::gathered`] for every member to have returned; the
    /// member that returns last unparks it. `None`: nobody waits, nothing is counted.
    gatherer: Option<Thread>,
}

impl WakeChain {
    /// Unparks the next `n` waiters of the chain not claimed yet, where parked.
    fn wake(&self, n: usize) {
        for _ in 0..n {
            let i = self.next.fetch_add(1, Ordering::Relaxed);
            let Some(w) = self.waiters.get(i) else { return };
            let thread = w.slot().thread.take();
            if let Some(t) = thread {
                t.unpark();
            }
        }
    }

    /// Unparks every waiter of the chain not claimed yet.
    fn finish(&self) {
        while self.next.load(Ordering::Relaxed) < self.waiters.len() {
            self.wake(1);
        }
    }

    /// A member of the chain returns with its outcome, after its claims: counts it for the
    /// gatherer, and unparks the gatherer if it is the last.
    fn returned(&self) {
        if let Some(g) = &self.gatherer
            && self.returned.fetch_add(1, Ordering::AcqRel) + 1 == self.waiters.len()
        {
            g.unpark();
        }
    }

    /// The gatherer (the thread that made the chain) parks until every member has returned
    /// with its outcome. Bounded, and no timer: every member was parked in
    /// [`AppendTicket::wait`] when its outcome was stored, so once the tree unparked it (the
    /// claims reach every member, [`WakeChain`]'s invariant) it only has to be scheduled to
    /// take its outcome and return.
    fn gathered(&self) {
        while self.returned.load(Ordering::Acquire) < self.waiters.len() {
            // A stale unpark token only costs one more round of the loop.
            std::thread::park();
        }
    }
}

/// Stores the outcomes of `outcomes` (waiters of batch `batch`) in their slots and returns the
/// wake-up tree of the waiters that are parked, not started yet (`None` when no waiter was
/// parked); `gatherer` may wait for its members ([`WakeChain::gathered`]).
///
/// Two passes, so that a member's outcome and the chain are stored under one slot lock
/// ([`WakeChain`]'s invariant) while only parked waiters are members: the first pass stores
/// the outcome of each waiter that is not parked (its owner is running and sees it before it
/// would park, invariant 4) and sets the parked ones aside; the second stores theirs with the
/// chain. A member cannot leave [`AppendTicket::wait`] between the passes: it has no outcome
/// yet, and its append is no longer queued, so nobody makes it leader.
///
/// Example: batch [a b c d] where b and d are parked: a and c get their outcome in the first
/// pass; the chain is [b d]; once started, its first claim unparks both (fan-out 2), each
/// returns and counts itself, and d, returning last, unparks the gatherer if there is one.
fn gather_waiters(
    outcomes: Vec<WaiterOutcome>,
    batch: u64,
    gatherer: Option<Thread>,
) -> Option<Arc<WakeChain>> {
    let mut parked = Vec::new();
    for (w, result) in outcomes {
        let mut slot = w.slot();
        if slot.thread.is_some() {
            drop(slot);
            parked.push((w, result));
            continue;
        }
        slot.outcome = Some(result);
        slot.batch = batch;
        w.ready.store(true, Ordering::Release);
    }
    if parked.is_empty() {
        return None;
    }
    let chain = Arc::new(WakeChain {
        waiters: parked.iter().map(|(w, _)| w.clone()).collect(),
        next: AtomicUsize::new(0),
        returned: AtomicUsize::new(0),
        gatherer,
    });
    for (w, result) in parked {
        let mut slot = w.slot();
        slot.outcome = Some(result);
        slot.batch = batch;
        slot.chain = Some(chain.clone());
        w.ready.store(true, Ordering::Release);
    }
    Some(chain)
}

/// Stores the outcomes of `outcomes` (waiters of batch `batch`) in their slots, then wakes
/// them: as a tree from this thread (`tree`), or all from this thread. No waiter is unparked
/// before every outcome is stored ([`WakeChain`]'s invariant).
fn wake_waiters(outcomes: Vec<WaiterOutcome>, batch: u64, tree: bool) {
    if outcomes.is_empty() {
        return;
    }
    let chain = Arc::new(WakeChain {
        waiters: outcomes.iter().map(|(w, _)| w.clone()).collect(),
        next: AtomicUsize::new(0),
        returned: AtomicUsize::new(0),
        gatherer: None,
    });
    for (w, result) in outcomes {
        let mut slot = w.slot();
        slot.outcome = Some(result);
        slot.batch = batch;
        if tree {
            slot.chain = Some(chain.clone());
        }
        w.ready.store(true, Ordering::Release);
    }
    if tree {
        chain.wake(WAKE_FANOUT);
    } else {
        chain.finish();
    }
}

impl Waiter {
    fn new() -> Arc<Waiter> {
        Arc::new(Waiter {
            parked: AtomicBool::new(false),
            ready: AtomicBool::new(false),
            slot: Mutex::new(Slot::default()),
        })
    }

    fn slot(&self) -> MutexGuard<'_, Slot> {
        self.slot.lock().expect("waiter slot lock")
    }

    fn give(&self, f: impl FnOnce(&mut Slot)) {
        let mut slot = self.slot();
        f(&mut slot);
        self.ready.store(true, Ordering::Release);
        let thread = slot.thread.take();
        drop(slot);
        if let Some(t) = thread {
            t.unpark();
        }
    }
}

#[derive(Default)]
struct Queue {
    items: Vec<Pending>,
    /// A leader exists (invariant 1).
    flushing: bool,
    /// Leadership was handed to the flush thread.
    thread_lead: bool,
    /// `close` started: no new appends.
    closed: bool,
    /// The flush thread must exit (set by `close` once the queue drained).
    stop_thread: bool,
    /// Number of the next batch taken (invariant 2).
    next_batch: u64,
    /// Appenders blocked because `items` reached the capacity.
    blocked: usize,
}

/// The group-commit state shared by the `Wal` handle, appenders and the flush thread.
pub(crate) struct Core {
    pub shared: Arc<Shared>,
    queue: Mutex<Queue>,
    /// Signals `close` (leader gone) and blocked appenders (space in the queue).
    queue_cv: Condvar,
    /// Signals the flush thread (leadership, stop). Separate from `queue_cv` so that a flush
    /// that leaves the WAL idle wakes no thread.
    thread_cv: Condvar,
    /// The segment writer; `None` after close. Locked only by the leader (invariant 1).
    writer: Mutex<Option<Writer>>,
    /// Batches whose outcomes are delivered (invariant 2).
    delivered: Mutex<Gate>,
    delivered_cv: Condvar,
    capacity: usize,
    idle_spin: Duration,
    /// [`crate::WalOptions::wake_before_next`]: lead with [`Core::lead_wake_first`].
    wake_before_next: bool,
    /// [`crate::WalOptions::relay_wake`].
    relay_wake: bool,
    /// [`crate::WalOptions::wake_gather`].
    wake_gather: bool,
    /// [`crate::WalOptions::wake_one`].
    wake_one: bool,
    /// The opt-in flush timeline (`RINGKV_WAL_TRACE`).
    trace: Option<Trace>,
}

impl Core {
    pub(crate) fn new(shared: Arc<Shared>, writer: Writer, opts: &WalOptions) -> Core {
        Core {
            shared,
            queue: Mutex::new(Queue::default()),
            queue_cv: Condvar::new(),
            thread_cv: Condvar::new(),
            writer: Mutex::new(Some(writer)),
            delivered: Mutex::new(Gate::default()),
            delivered_cv: Condvar::new(),
            capacity: opts.queue_capacity,
            idle_spin: opts.idle_spin,
            wake_before_next: opts.wake_before_next,
            relay_wake: opts.relay_wake,
            wake_gather: opts.wake_gather,
            wake_one: opts.wake_one,
            trace: Trace::from_env(),
        }
    }

    fn queue(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().expect("WAL queue lock")
    }

    /// Queues an append, or returns it with the reason it is refused. Blocks while the queue is
    /// full. Returns the queue guard so the caller can decide about leadership atomically.
    fn push(&self, p: Pending) -> Result<MutexGuard<'_, Queue>, (Pending, WalError)> {
        let mut q = self.queue();
        loop {
            if q.closed {
                return Err((p, WalError::Closed));
            }
            if let Some(cause) = self.shared.failure.get() {
                return Err((p, WalError::Failed(cause.clone())));
            }
            if q.items.len() < self.capacity {
                break;
            }
            if !q.flushing {
                // The queue may hold only tickets whose owners have not started waiting (one
                // of them may be this thread): let the flush thread drain it (invariant 5).
                q.flushing = true;
                q.thread_lead = true;
                self.thread_cv.notify_one();
            }
            q.blocked += 1;
            q = self.queue_cv.wait(q).expect("WAL queue lock");
            q.blocked -= 1;
        }
        q.items.push(p);
        Ok(q)
    }

    /// Queues a callback append. With `inline`, a caller that finds no flush in flight leads
    /// (flushes on this thread, runs the callbacks of that flush) before returning; otherwise
    /// an idle WAL hands the flush to the flush thread.
    pub(crate) fn append_callback(&self, records: Vec<Record>, done: Done, inline: bool) {
        let p = Pending {
            records,
            reply: Reply::Callback(done),
            enqueued: Instant::now(),
        };
        match self.push(p) {
            Err((p, e)) => deliver_one(p.reply, Err(e)),
            Ok(mut q) => {
                if q.flushing {
                    return;
                }
                q.flushing = true;
                if inline && !DELIVERING.with(Cell::get) {
                    drop(q);
                    self.lead(Lead::Once);
                } else {
                    q.thread_lead = true;
                    drop(q);
                    self.thread_cv.notify_one();
                }
            }
        }
    }

    /// Queues a waiting append; the ticket's `wait` returns its outcome.
    pub(crate) fn enqueue(self: &Arc<Self>, records: Vec<Record>) -> AppendTicket {
        let waiter = Waiter::new();
        let p = Pending {
            records,
            reply: Reply::Waiter(waiter.clone()),
            enqueued: Instant::now(),
        };
        if let Err((_, e)) = self.push(p) {
            waiter.give(|s| s.outcome = Some(Err(e)));
        }
        AppendTicket {
            core: self.clone(),
            waiter,
            waited: false,
        }
    }

    /// Waits for `waiter`'s outcome, leading whenever it is this thread's turn.
    fn wait(&self, waiter: &Waiter) -> Result<AppendInfo, WalError> {
        assert!(
            !DELIVERING.with(Cell::get),
            "a WAL append callback must not wait for another append (it would deadlock)"
        );
        let mut spin_from = Some(Instant::now());
        loop {
            {
                let mut slot = waiter.slot();
                if let Some(r) = slot.outcome.take() {
                    let chain = slot.chain.take();
                    let relay = std::mem::take(&mut slot.relay);
                    let batch = slot.batch;
                    drop(slot);
                    if let Some(t) = &self.trace {
                        t.woken(batch);
                    }
                    // This waiter is its batch's relay head (`Core::deliver`).
                    wake_waiters(relay, batch, true);
                    if let Some(chain) = chain {
                        chain.wake(WAKE_FANOUT);
                        chain.returned();
                    }
                    return r;
                }
                if slot.lead {
                    slot.lead = false;
                    waiter.ready.store(false, Ordering::Relaxed);
                    drop(slot);
                    self.lead(Lead::Bounded);
                    continue;
                }
            }
            if let Some(start) = spin_from.take()
                && !self.idle_spin.is_zero()
            {
                while !waiter.ready.load(Ordering::Acquire) && start.elapsed() < self.idle_spin {
                    std::hint::spin_loop();
                }
                continue;
            }
            {
                let mut q = self.queue();
                if !q.flushing {
                    q.flushing = true;
                    drop(q);
                    self.lead(Lead::Bounded);
                    continue;
                }
                let mut slot = waiter.slot();
                if slot.outcome.is_some() || slot.lead {
                    continue;
                }
                slot.thread = Some(std::thread::current());
                waiter.parked.store(true, Ordering::Relaxed);
            }
            // Unpark may come before park; std's park token makes that return at once.
            std::thread::park();
        }
    }

    /// Leads (invariant 1: the caller made itself or was made leader): flushes batches while
    /// appends are waiting, as `mode` allows, then passes leadership on and delivers the last
    /// batch's outcomes. With `wake_gather` a flushed batch that holds waiting
    /// appenders is delivered right after its fdatasync, its parked waiters woken as a tree and
    /// waited for ([`WakeChain::gathered`]), before the next batch is taken; batches of
    /// callbacks only, and the last batch of a leader whose role ends, are overlapped as
    /// follows.
    ///
    /// Gathering, worked example: 64 closed-loop writers, a batch of 64 returns, all 64 parked;
    /// the tree wakes them on both vCPUs (~3.4 µs per waiter here) while this thread is parked;
    /// each re-appends, and the 64th to take its outcome unparks this thread, which finds 63–64
    /// appends queued and flushes them. One writer: nothing parked, nothing waited for. With `wake_before_next` this is [`Core::lead_wake_first`]; what
    /// follows describes the overlapped order. While batch `b + 1`'s write+fdatasync is in flight, the outcomes of
    /// batch `b` are delivered on this thread, so at sustained load the next flush starts
    /// right after the previous one completes, with no thread wake-up in between.
    pub(crate) fn lead(&self, mode: Lead) {
        if self.wake_before_next {
            return self.lead_wake_first(mode);
        }
        let mut batches = 0;
        // Outcomes of the last flushed batch, not yet delivered, and its number.
        let mut undelivered: Option<(u64, Vec<Outcome>)> = None;
        let mut panic = None;
        let mut writer = self.writer.lock().expect("WAL writer lock");
        // The next batch, when the check for more appends already took it (one lock round).
        let mut next = None;
        loop {
            let (batch, number) = match next.take() {
                Some(taken) => taken,
                None => self.take_batch(),
            };
            self.trace_begin(number, &batch);
            let outcomes = match writer.as_mut() {
                _ if batch.is_empty() => Vec::new(),
                Some(w) => {
                    let prepared = w.prepare(batch);
                    let io_started = Instant::now();
                    let io = w.start(&prepared, undelivered.is_some());
                    if let Some(t) = &self.trace {
                        t.mark(number, Field::IoStart);
                    }
                    // With std I/O this runs before the write starts: the device idles for
                    // it, which is why delivery hands the waiters to a relay head.
                    if let Some((n, o)) = undelivered.take() {
                        panic = panic.or(self.deliver(n, o, self.overlapped_wake()));
                    }
                    if let Some(t) = &self.trace {
                        t.mark(number, Field::Wait);
                    }
                    let res = io.map(WriteSync::wait);
                    if let Some(t) = &self.trace {
                        t.mark(number, Field::IoDone);
                    }
                    w.finish(prepared, io_started, res)
                }
                None => closed(batch),
            };
            if let Some((n, o)) = undelivered.take() {
                panic = panic.or(self.deliver(n, o, self.overlapped_wake()));
            }
            undelivered = Some((number, outcomes));
            batches += 1;
            // Gathering (`wake_gather`): a batch with waiting appenders is delivered at once,
            // its parked waiters woken and waited for, and only then is the next batch taken,
            // which so holds them; a batch of callbacks only stays overlapped.
            if self.wake_gather
                && mode.leads_again(batches)
                && let Some((n, o)) = undelivered
                    .take_if(|(_, o)| o.iter().any(|(r, _)| matches!(r, Reply::Waiter(_))))
            {
                let (p, chain) = self.deliver_gathering(n, o);
                panic = panic.or(p);
                if let Some(chain) = chain {
                    chain.gathered();
                }
            }
            let more = {
                let mut q = self.queue();
                let more = !q.items.is_empty() && mode.leads_again(batches);
                if more {
                    next = Some(self.take_locked(&mut q));
                }
                more
            };
            if !more {
                break;
            }
        }
        drop(writer);
        self.hand_off(mode == Lead::Bounded && batches >= LEAD_BATCHES);
        if let Some((n, o)) = undelivered.take() {
            panic = panic.or(self.deliver(n, o, self.overlapped_wake()));
        }
        if let Some(payload) = panic {
            std::panic::resume_unwind(payload);
        }
    }

    /// Leads with [`crate::WalOptions::wake_before_next`]: per batch, take the whole queue,
    /// write+fdatasync it, deliver its outcomes and wake every parked waiter of it on this
    /// thread, one after the other; only then look at the queue again. No I/O overlaps the
    /// wake-ups, so the waiters woken first have re-appended by the time the loop ends and
    /// join the next batch instead of the one after it.
    ///
    /// Worked example, 64 closed-loop writers, 4 waiters woken per 10 µs: a batch of 40
    /// returns; waking its 40 waiters takes ~100 µs, in which ~36 of them append again; the
    /// next batch holds those plus the ~24 that arrived during the I/O: ~60 appends per
    /// fdatasync instead of the ≤ 32 of the overlapped order, for one device idle of ~100 µs
    /// per cycle. With one writer there is nothing to wake and nothing is waited for.
    ///
    /// Invariants 1–5 hold as in [`Core::lead`]: one batch at a time (3), delivered in order
    /// (2, trivially: this leader delivers each batch before taking the next), leadership
    /// passed on by [`Core::hand_off`] when it stops (5).
    fn lead_wake_first(&self, mode: Lead) {
        let mut batches = 0;
        let mut panic = None;
        let mut writer = self.writer.lock().expect("WAL writer lock");
        let mut next = None;
        loop {
            let (batch, number) = match next.take() {
                Some(taken) => taken,
                None => self.take_batch(),
            };
            self.trace_begin(number, &batch);
            let outcomes = match writer.as_mut() {
                _ if batch.is_empty() => Vec::new(),
                Some(w) => {
                    let prepared = w.prepare(batch);
                    let io_started = Instant::now();
                    let io = w.start(&prepared, false);
                    if let Some(t) = &self.trace {
                        t.mark(number, Field::IoStart);
                        t.mark(number, Field::Wait);
                    }
                    let res = io.map(WriteSync::wait);
                    if let Some(t) = &self.trace {
                        t.mark(number, Field::IoDone);
                    }
                    w.finish(prepared, io_started, res)
                }
                None => closed(batch),
            };
            panic = panic.or(self.deliver(number, outcomes, Wake::All));
            batches += 1;
            let mut q = self.queue();
            let more = !q.items.is_empty() && mode.leads_again(batches);
            if !more {
                break;
            }
            next = Some(self.take_locked(&mut q));
        }
        drop(writer);
        self.hand_off(mode == Lead::Bounded && batches >= LEAD_BATCHES);
        if let Some(payload) = panic {
            std::panic::resume_unwind(payload);
        }
    }

    /// Starts the trace's row of batch `number` (`RINGKV_WAL_TRACE`), if tracing.
    fn trace_begin(&self, number: u64, batch: &[Pending]) {
        if let Some(t) = &self.trace {
            let now = Instant::now();
            let first = batch.iter().map(|p| p.enqueued).min().unwrap_or(now);
            let last = batch.iter().map(|p| p.enqueued).max().unwrap_or(now);
            t.begin(number, now, first, last, batch.len());
        }
    }

    /// Takes the whole queue as the next batch and numbers it (invariant 2).
    fn take_batch(&self) -> (Vec<Pending>, u64) {
        self.take_locked(&mut self.queue())
    }

    /// [`Core::take_batch`] with the queue locked.
    fn take_locked(&self, q: &mut Queue) -> (Vec<Pending>, u64) {
        let batch = std::mem::take(&mut q.items);
        let number = q.next_batch;
        q.next_batch += 1;
        if q.blocked > 0 {
            self.queue_cv.notify_all();
        }
        (batch, number)
    }

    /// Chooses the next leader, or clears `flushing` (invariant 5). With `to_thread`, a
    /// non-empty queue goes to the flush thread (which leads for as long as appends keep
    /// coming) rather than to a parked waiter.
    fn hand_off(&self, to_thread: bool) {
        let mut q = self.queue();
        let parked = if to_thread {
            None
        } else {
            q.items.iter().find_map(|p| match &p.reply {
                Reply::Waiter(w) if w.parked.load(Ordering::Relaxed) => Some(w.clone()),
                _ => None,
            })
        };
        if let Some(w) = parked {
            w.parked.store(false, Ordering::Relaxed);
            drop(q);
            w.give(|s| s.lead = true);
            return;
        }
        let to_thread = !q.items.is_empty()
            && (to_thread
                || q.items
                    .iter()
                    .any(|p| matches!(p.reply, Reply::Callback(_))));
        if to_thread {
            q.thread_lead = true;
        } else {
            q.flushing = false;
        }
        let wake_others = q.closed || q.blocked > 0;
        drop(q);
        if to_thread {
            self.thread_cv.notify_one();
        }
        if wake_others {
            self.queue_cv.notify_all();
        }
    }

    /// Delivers a batch's outcomes: callbacks once every earlier batch's are (invariant 2),
    /// here, in order, then the actions they deferred ([`after_delivery`]); then the waiters.
    /// Returns the payload of the first callback that panicked, for the caller to resume once
    /// it has passed leadership on.
    ///
    /// Waiters, with [`Wake::Relay`] (the overlapped order, where this runs between two flushes): this
    /// thread stores outcomes in order until it meets a parked waiter, the batch's relay head,
    /// hands it the outcomes of every later waiter and unparks it: one wake-up and a few slot
    /// locks here, whatever the batch size; the head stores the rest and starts their wake-up
    /// tree ([`wake_waiters`]) on its own thread. Waiters before the head were not parked and
    /// see their outcome when they look. With [`Wake::Tree`] this thread stores every outcome
    /// and starts the tree; with [`Wake::All`] (wake first) it stores and wakes them all.
    /// Waiters' outcomes carry no order (the gate orders callbacks; the
    /// durability of a batch before the next holds by invariant 3).
    ///
    /// Example, batch [a b c d e] where a's owner is still spinning and b's is parked: a's
    /// outcome is stored; b gets its own and [c d e]'s, and is unparked; b stores c, d, e's
    /// outcomes with the chain [c d e] and unparks c and d where parked; c claims e.
    #[must_use]
    fn deliver(&self, number: u64, outcomes: Vec<Outcome>, wake: Wake) -> Option<Panic> {
        let (panic, waiters) = self.run_callbacks(number, outcomes);
        if wake == Wake::Relay {
            let mut rest = waiters.into_iter();
            while let Some((w, result)) = rest.next() {
                let mut slot = w.slot();
                slot.outcome = Some(result);
                slot.batch = number;
                w.ready.store(true, Ordering::Release);
                if let Some(t) = slot.thread.take() {
                    slot.relay = rest.collect();
                    drop(slot);
                    t.unpark();
                    break;
                }
            }
        } else {
            if wake == Wake::One {
                // One wake-up: when the leader is the only thread running (every appender
                // parked), it lands on the idle vCPU instead of preempting the leader before
                // its write.
                if let Some(chain) = gather_waiters(waiters, number, None) {
                    chain.wake(1);
                }
            } else {
                wake_waiters(waiters, number, wake == Wake::Tree);
            }
        }
        if let Some(t) = &self.trace {
            t.mark(number, Field::DeliverEnd);
        }
        panic
    }

    /// The first part of [`Core::deliver`]: once every earlier batch is delivered (invariant
    /// 2), runs the batch's callbacks in order and the actions they deferred, then opens the
    /// gate for the next batch. Returns the first panic of a callback and the batch's waiters
    /// with their outcomes, not yet stored.
    fn run_callbacks(
        &self,
        number: u64,
        outcomes: Vec<Outcome>,
    ) -> (Option<Panic>, Vec<WaiterOutcome>) {
        self.wait_delivered(number);
        if let Some(t) = &self.trace {
            t.mark(number, Field::DeliverStart);
        }
        // Opens the gate for the next batch even if a callback panics, so later batches and
        // `close` do not wait forever behind it.
        let gate = GateGuard { core: self, number };
        DELIVERING.with(|f| f.set(true));
        // A panicking callback (a caller bug) must not cost the other appends of the batch
        // their outcome: deliver them all, then let the first panic continue on this thread.
        let mut panic = None;
        let mut waiters = Vec::new();
        for (reply, result) in outcomes {
            match reply {
                Reply::Waiter(w) => waiters.push((w, result)),
                Reply::Callback(done) => {
                    let delivered =
                        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| done(result)));
                    if let Err(payload) = delivered {
                        panic.get_or_insert(payload);
                    }
                }
            }
        }
        // Deferred actions may defer more; run until none is left.
        while let Some(actions) = AFTER_DELIVERY
            .with(|v| Some(std::mem::take(&mut *v.borrow_mut())).filter(|a| !a.is_empty()))
        {
            for f in actions {
                if let Err(payload) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
                    panic.get_or_insert(payload);
                }
            }
        }
        drop(gate);
        (panic, waiters)
    }

    /// [`Core::deliver`] for a leader that gathers ([`crate::WalOptions::wake_gather`]):
    /// callbacks as there; every waiter's outcome stored, and the waiters that were parked
    /// woken as a tree ([`gather_waiters`]). Returns the tree, which [`WakeChain::gathered`]
    /// waits on, when it has members.
    #[must_use]
    fn deliver_gathering(
        &self,
        number: u64,
        outcomes: Vec<Outcome>,
    ) -> (Option<Panic>, Option<Arc<WakeChain>>) {
        let (panic, waiters) = self.run_callbacks(number, outcomes);
        let chain = gather_waiters(waiters, number, Some(std::thread::current()));
        if let Some(c) = &chain {
            c.wake(WAKE_FANOUT);
        }
        if let Some(t) = &self.trace {
            t.mark(number, Field::DeliverEnd);
        }
        (panic, chain)
    }

    /// Waits until every batch before `number` is delivered.
    fn wait_delivered(&self, number: u64) {
        let mut d = self.delivered.lock().expect("WAL delivery lock");
        while d.next != number {
            d.waiting += 1;
            d = self.delivered_cv.wait(d).expect("WAL delivery lock");
            d.waiting -= 1;
        }
    }

    /// How the overlapped order wakes a delivered batch's waiters.
    fn overlapped_wake(&self) -> Wake {
        if self.relay_wake {
            Wake::Relay
        } else if self.wake_one {
            Wake::One
        } else {
            Wake::Tree
        }
    }

    /// The flush thread: leads whenever handed leadership, until `close` stops it.
    pub(crate) fn run_flush_thread(&self) {
        loop {
            let mut q = self.queue();
            while !q.thread_lead && !q.stop_thread {
                q = self.thread_cv.wait(q).expect("WAL queue lock");
            }
            if !q.thread_lead {
                return;
            }
            q.thread_lead = false;
            drop(q);
            self.lead(Lead::Unbounded);
        }
    }

    /// Refuses new appends, flushes every queued one, stops the flush thread (the caller joins
    /// it) and drops the writer (stopping the segment allocator).
    pub(crate) fn close(&self) {
        let mut q = self.queue();
        q.closed = true;
        self.queue_cv.notify_all();
        loop {
            if !q.flushing {
                if q.items.is_empty() {
                    break;
                }
                q.flushing = true;
                drop(q);
                self.lead(Lead::Unbounded);
                q = self.queue();
                continue;
            }
            q = self.queue_cv.wait(q).expect("WAL queue lock");
        }
        q.stop_thread = true;
        drop(q);
        self.thread_cv.notify_one();
        // Every batch was delivered by its leader before it returned or handed off... except
        // possibly the last leader's delivery, which is still running: wait for it.
        let last = self.queue().next_batch;
        self.wait_delivered(last);
        self.writer.lock().expect("WAL writer lock").take();
        if let Some(t) = &self.trace {
            t.write(last);
        }
    }
}

/// The delivery gate (invariant 2).
#[derive(Default)]
struct Gate {
    /// Number of the next batch to deliver: every batch before it is delivered.
    next: u64,
    /// Threads waiting on `delivered_cv` for the gate to move.
    waiting: usize,
}

/// Marks batch `number` delivered when dropped (invariant 2).
struct GateGuard<'a> {
    core: &'a Core,
    number: u64,
}

impl Drop for GateGuard<'_> {
    fn drop(&mut self) {
        DELIVERING.with(|f| f.set(false));
        let mut d = match self.core.delivered.lock() {
            Ok(d) => d,
            Err(poisoned) => poisoned.into_inner(),
        };
        d.next = self.number + 1;
        // A notification is a syscall even with no thread waiting: only when one is.
        let waiting = d.waiting > 0;
        drop(d);
        if waiting {
            self.core.delivered_cv.notify_all();
        }
    }
}

fn deliver_one(reply: Reply, result: Result<AppendInfo, WalError>) {
    match reply {
        Reply::Callback(done) => done(result),
        Reply::Waiter(w) => w.give(|s| s.outcome = Some(result)),
    }
}

/// A queued append whose outcome [`AppendTicket::wait`] returns; made by `Wal::enqueue`.
///
/// Appends are written in the order they were queued, so a caller that needs an order across
/// threads (raft entry indexes) enqueues under its own lock and waits outside it. Dropping a
/// ticket without waiting waits (the append may have to be flushed by its own thread).
pub struct AppendTicket {
    core: Arc<Core>,
    waiter: Arc<Waiter>,
    waited: bool,
}

impl AppendTicket {
    /// Blocks until the append is durable (`Ok`) or failed. The calling thread may perform the
    /// flush of this and other queued appends itself.
    pub fn wait(mut self) -> Result<AppendInfo, WalError> {
        self.waited = true;
        self.core.wait(&self.waiter)
    }
}

impl Drop for AppendTicket {
    fn drop(&mut self) {
        if !self.waited {
            let _ = self.core.wait(&self.waiter);
        }
    }
}

impl std::fmt::Debug for AppendTicket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppendTicket")
            .field("waited", &self.waited)
            .finish_non_exhaustive()
    }
}

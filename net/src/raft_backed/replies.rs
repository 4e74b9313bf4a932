//! Outcomes of proposals delivered to the proposing front-end threads with one wake-up per
//! thread per applied entry, instead of one per proposal.
//!
//! Waking a tokio task from a thread outside its runtime pushes it on the runtime's shared
//! queue and wakes the runtime's I/O driver: an `eventfd` write (a system call) per woken task.
//! Under load the apply side completes hundreds of waiters per batch entry, spread over a few
//! front-end runtimes. Instead, each front-end thread that proposes gets a [`ReplyQueue`] and
//! a dispatcher task on its runtime; apply appends the outcomes to the proposers' queues and
//! notifies each queue once; the dispatcher completes the oneshots on its own thread, where a
//! wake is a push on the local run queue. An outcome alone for its queue in an entry (one
//! client) is sent directly: one remote wake either way, without the dispatcher's hop.
//!
//! ```text
//!  apply (one entry, n outcomes)        front-end thread i
//!  ───────────────────────────          ──────────────────
//!  queue_i.push(tx, outcome) × k   ──►  dispatcher: take all, tx.send(outcome) × k
//!  queue_i.notify (one wake)             (local wakes of the connection tasks)
//! ```
//!
//! Invariants:
//! 1. No outcome is lost: `closed` is set, under the queue's lock, by the dispatcher's guard
//!    when the dispatcher task is dropped (its runtime shuts down), and the guard then sends
//!    what is queued directly; a pusher checks `closed` under the same lock and sends directly
//!    once it is set.
//! 2. Queues live for the rest of the process (leaked, one per proposing thread and runtime),
//!    so a waiter refers to its queue without a reference count shared between the front end
//!    and apply threads.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use parking_lot::Mutex;
use tokio::sync::{Notify, oneshot};

use super::apply::Applied;
use crate::errors::EtcdError;

/// What a waiter receives: the outcome and when it was sent (for the reply stage).
pub(crate) type Outcome = (Result<Applied, EtcdError>, Instant);

type Item = (oneshot::Sender<Outcome>, Outcome);

/// One front-end thread's incoming outcomes (module doc).
pub(crate) struct ReplyQueue {
    items: Mutex<Vec<Item>>,
    /// The dispatcher is gone (invariant 1); set under `items`' lock.
    closed: AtomicBool,
    notify: Notify,
}

thread_local! {
    static QUEUE: Cell<Option<&'static ReplyQueue>> = const { Cell::new(None) };
}

impl ReplyQueue {
    /// The calling thread's queue; made on first use, with its dispatcher spawned on the
    /// current tokio runtime. `None` outside a runtime (the outcome is then sent directly).
    pub(crate) fn current() -> Option<&'static ReplyQueue> {
        QUEUE.with(|q| {
            if let Some(x) = q.get()
                && !x.closed.load(Ordering::Acquire)
            {
                return Some(x);
            }
            let handle = tokio::runtime::Handle::try_current().ok()?;
            // Invariant 2: never freed.
            let x: &'static ReplyQueue = Box::leak(Box::new(ReplyQueue {
                items: Mutex::new(Vec::new()),
                closed: AtomicBool::new(false),
                notify: Notify::new(),
            }));
            handle.spawn(dispatch(x));
            q.set(Some(x));
            Some(x)
        })
    }

    /// Queues `outcome` for `tx`; the caller calls [`ReplyQueue::wake`] after its last push.
    /// Sends directly when the dispatcher is gone.
    pub(crate) fn push(&self, tx: oneshot::Sender<Outcome>, outcome: Outcome) {
        let mut items = self.items.lock();
        if self.closed.load(Ordering::Acquire) {
            drop(items);
            let _ = tx.send(outcome);
            return;
        }
        items.push((tx, outcome));
    }

    /// Wakes the dispatcher (one wake however many pushes preceded it).
    pub(crate) fn wake(&self) {
        self.notify.notify_one();
    }
}

/// Sets `closed` and sends what is left when the dispatcher task is dropped (invariant 1).
struct CloseOnDrop(&'static ReplyQueue);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        let left = {
            let mut items = self.0.items.lock();
            self.0.closed.store(true, Ordering::Release);
            std::mem::take(&mut *items)
        };
        for (tx, outcome) in left {
            let _ = tx.send(outcome);
        }
    }
}

/// The dispatcher task of a queue: completes the queued oneshots on this runtime. The guard
/// is made before the task first runs, so dropping a never-polled task closes the queue too.
fn dispatch(q: &'static ReplyQueue) -> impl std::future::Future<Output = ()> + Send + 'static {
    let close = CloseOnDrop(q);
    async move {
        let _close = close;
        let mut batch = Vec::new();
        loop {
            q.notify.notified().await;
            std::mem::swap(&mut *q.items.lock(), &mut batch);
            for (tx, outcome) in batch.drain(..) {
                let _ = tx.send(outcome);
            }
        }
    }
}

/// The queues of one entry's outcomes, with how many outcomes each gets. An outcome that is
/// alone for its queue is sent directly (one remote wake either way, and no dispatcher hop);
/// queues with several are pushed to and woken once.
#[derive(Default)]
pub(crate) struct ToWake(Vec<(&'static ReplyQueue, usize)>);

impl ToWake {
    /// Counts one outcome for `q`.
    pub(crate) fn count(&mut self, q: &'static ReplyQueue) {
        match self.0.iter_mut().find(|(x, _)| std::ptr::eq(*x, q)) {
            Some((_, n)) => *n += 1,
            None => self.0.push((q, 1)),
        }
    }

    /// Whether outcomes for `q` go through the queue (it gets more than one).
    pub(crate) fn through_queue(&self, q: &'static ReplyQueue) -> bool {
        self.0.iter().any(|(x, n)| std::ptr::eq(*x, q) && *n > 1)
    }

    /// Wakes every queue that was pushed to, and forgets the counts.
    pub(crate) fn wake_all(&mut self) {
        for (q, n) in self.0.drain(..) {
            if n > 1 {
                q.wake();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome() -> Outcome {
        (Ok(Applied::Nothing), Instant::now())
    }

    #[tokio::test(flavor = "current_thread")]
    async fn outcomes_pushed_from_another_thread_arrive_with_one_wake() {
        let q = ReplyQueue::current().expect("inside a runtime");
        assert!(
            std::ptr::eq(q, ReplyQueue::current().unwrap()),
            "one per thread"
        );
        let (txs, rxs): (Vec<_>, Vec<_>) = (0..50).map(|_| oneshot::channel()).unzip();
        std::thread::spawn(move || {
            let mut wake = ToWake::default();
            for _ in &txs {
                wake.count(q);
            }
            assert!(wake.through_queue(q));
            for tx in txs {
                q.push(tx, outcome());
            }
            wake.wake_all();
        })
        .join()
        .unwrap();
        for rx in rxs {
            let (r, _) = rx.await.expect("delivered");
            assert!(matches!(r, Ok(Applied::Nothing)));
        }
    }

    #[test]
    fn a_queue_whose_runtime_ended_sends_directly_and_the_thread_gets_a_new_one() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let q = rt.block_on(async { ReplyQueue::current().unwrap() });
        // Queued while the runtime is not running: delivered when the dispatcher is dropped.
        let (tx1, mut rx1) = oneshot::channel();
        q.push(tx1, outcome());
        drop(rt);
        assert!(rx1.try_recv().is_ok(), "left-over outcome sent at close");
        // After the dispatcher is gone, pushes are sent at once.
        let (tx2, mut rx2) = oneshot::channel();
        q.push(tx2, outcome());
        assert!(rx2.try_recv().is_ok());
        // A new runtime on this thread gets a new queue.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let q2 = rt.block_on(async { ReplyQueue::current().unwrap() });
        assert!(!std::ptr::eq(q, q2));
    }
}

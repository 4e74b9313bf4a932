//! The raft core's inbox: many senders, one receiver that takes everything queued at once and,
//! when nothing is queued, parks on a futex at once.
//!
//! Why not a crossbeam channel: its blocking receive spins and then calls `sched_yield` a few
//! times before it parks. On a VM with 2 vCPUs shared by every thread of the node, each of
//! those yields is a trip through the scheduler that competes with the threads doing the
//! work (the front-end worker that will send the next proposal, the WAL's I/O); at one client
//! the core waits for every request, so it paid them on every put (BENCHMARKS.md, "Write
//! latency ... session 4"). Here a receiver with nothing to do parks immediately, and a
//! sender wakes it (one futex wake) only when it is parked.
//!
//! Driving the core from the sender's thread ([`InboxSender::send_claiming`]): a sender that
//! finds the receiver parked and nobody else driving may *claim* the queue instead of waking
//! the receiver; it then runs the core's turn on its own thread (`core.rs`, `Runner`) and
//! gives the claim back with [`InboxSender::release`]. Worked example, one client's put on
//! an idle single member:
//! 1. core thread parked (`parked`), queue empty, no claim;
//! 2. the front-end thread sends `Propose` with `send_claiming`: queued, `claimed` set,
//!    no wake; it locks the core and runs a turn (WAL write + fdatasync inline);
//! 3. the WAL's completion sends `Persisted` with `send`: `claimed`, so queued without a wake;
//!    the driver's next turn takes it, the entry commits and applies, the waiter completes;
//! 4. `release` finds the queue empty and drops the claim; the core thread slept throughout.
//!
//! Invariants:
//! - Messages from one sender arrive in the order it sent them (one FIFO queue under a lock).
//! - After the receiver is dropped every `send` fails and gives the message back; messages
//!   still queued then are dropped (outside the lock: dropping one may send again).
//! - While `claimed`, nobody wakes the receiver for new messages: the claimant takes them.
//!   It gives the claim back only under the lock with the queue empty, or by waking the
//!   receiver; so a message queued during a claim is never left with nobody to take it.
//! - The receiver stays parked while the queue is claimed (until its deadline).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use parking_lot::{Condvar, Mutex};

struct State<T> {
    queue: VecDeque<T>,
    /// The receiver is parked (or about to park) on `ready`.
    parked: bool,
    /// The receiver was dropped.
    closed: bool,
    /// A sender's thread is taking the queue instead of the receiver (module doc).
    claimed: bool,
}

struct Shared<T> {
    state: Mutex<State<T>>,
    ready: Condvar,
}

/// The sending half; cheap to clone.
pub(crate) struct InboxSender<T> {
    shared: Arc<Shared<T>>,
}

impl<T> Clone for InboxSender<T> {
    fn clone(&self) -> Self {
        InboxSender {
            shared: self.shared.clone(),
        }
    }
}

/// The receiving half (one per inbox).
pub(crate) struct InboxReceiver<T> {
    shared: Arc<Shared<T>>,
}

/// A new inbox.
pub(crate) fn inbox<T>() -> (InboxSender<T>, InboxReceiver<T>) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            queue: VecDeque::new(),
            parked: false,
            closed: false,
            claimed: false,
        }),
        ready: Condvar::new(),
    });
    (
        InboxSender {
            shared: shared.clone(),
        },
        InboxReceiver { shared },
    )
}

impl<T> InboxSender<T> {
    /// Queues `msg`; wakes the receiver if it is parked (and nobody has claimed the queue).
    /// Gives `msg` back when the receiver is gone.
    pub(crate) fn send(&self, msg: T) -> Result<(), T> {
        let mut st = self.shared.state.lock();
        if st.closed {
            return Err(msg);
        }
        st.queue.push_back(msg);
        let wake = st.parked && !st.claimed;
        if wake {
            st.parked = false;
        }
        drop(st);
        if wake {
            self.shared.ready.notify_one();
        }
        Ok(())
    }

    /// Queues `msg`. Returns `Ok(true)` when the receiver was parked and unclaimed: the
    /// caller now holds the claim, the receiver was not woken, and the caller must take the
    /// queue itself and then [`release`](Self::release). `Ok(false)`: as [`send`](Self::send).
    pub(crate) fn send_claiming(&self, msg: T) -> Result<bool, T> {
        let mut st = self.shared.state.lock();
        if st.closed {
            return Err(msg);
        }
        st.queue.push_back(msg);
        if st.parked && !st.claimed {
            st.claimed = true;
            return Ok(true);
        }
        drop(st);
        // Not parked: the receiver is awake and looks at the queue before parking. Claimed:
        // the claimant takes it.
        Ok(false)
    }

    /// [`send_claiming`](Self::send_claiming) for several messages at once, queued together
    /// in order. Gives them back when the receiver is gone.
    pub(crate) fn send_all_claiming(&self, msgs: Vec<T>) -> Result<bool, Vec<T>> {
        let mut st = self.shared.state.lock();
        if st.closed {
            return Err(msgs);
        }
        st.queue.extend(msgs);
        if st.parked && !st.claimed {
            st.claimed = true;
            return Ok(true);
        }
        Ok(false)
    }

    /// Gives the claim back if the queue is empty (returns `true`). With `hand_over`, gives it
    /// back in any case, waking the receiver for what is queued (returns `true`). Otherwise
    /// keeps the claim and returns `false`: the claimant takes the queue again.
    pub(crate) fn release(&self, hand_over: bool) -> bool {
        let mut st = self.shared.state.lock();
        debug_assert!(st.claimed);
        if st.queue.is_empty() {
            st.claimed = false;
            return true;
        }
        if !hand_over {
            return false;
        }
        st.claimed = false;
        let wake = st.parked;
        st.parked = false;
        drop(st);
        if wake {
            self.shared.ready.notify_one();
        }
        true
    }
}

impl<T> InboxReceiver<T> {
    /// Moves everything queued into `out` (which must be empty), parking until something is
    /// queued or `deadline` passes. `out` is left empty on a timeout.
    #[cfg(test)]
    pub(crate) fn recv_all(&self, out: &mut VecDeque<T>, deadline: Instant) {
        debug_assert!(out.is_empty());
        let mut st = self.shared.state.lock();
        while st.queue.is_empty() {
            st.parked = true;
            if self.shared.ready.wait_until(&mut st, deadline).timed_out() {
                st.parked = false;
                if st.queue.is_empty() {
                    return;
                }
            }
        }
        st.parked = false;
        std::mem::swap(&mut st.queue, out);
    }

    /// A handle that parks like the receiver ([`InboxWaiter::wait`]) without owning it.
    pub(crate) fn waiter(&self) -> InboxWaiter<T> {
        InboxWaiter {
            shared: self.shared.clone(),
        }
    }

    /// Moves everything queued into `out` without waiting.
    pub(crate) fn try_recv_all(&self, out: &mut VecDeque<T>) {
        let mut st = self.shared.state.lock();
        if out.is_empty() {
            std::mem::swap(&mut st.queue, out);
        } else {
            out.extend(st.queue.drain(..));
        }
    }
}

/// Parks the receiving thread while the receiver itself sits elsewhere (behind the core's
/// lock, so that a claiming sender can take the queue).
pub(crate) struct InboxWaiter<T> {
    shared: Arc<Shared<T>>,
}

impl<T> InboxWaiter<T> {
    /// Parks until something is queued and unclaimed, the receiver is dropped, or `deadline`
    /// passes. Takes nothing from the queue.
    pub(crate) fn wait(&self, deadline: Instant) {
        let mut st = self.shared.state.lock();
        while (st.queue.is_empty() || st.claimed) && !st.closed {
            st.parked = true;
            if self.shared.ready.wait_until(&mut st, deadline).timed_out() {
                break;
            }
        }
        st.parked = false;
    }
}

impl<T> Drop for InboxReceiver<T> {
    fn drop(&mut self) {
        let left = {
            let mut st = self.shared.state.lock();
            st.closed = true;
            std::mem::take(&mut st.queue)
        };
        // A waiter parked on the queue learns that it is gone.
        self.shared.ready.notify_all();
        drop(left);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn keeps_each_senders_order_across_threads_and_wakes_a_parked_receiver() {
        let (tx, rx) = inbox::<(u32, u32)>();
        let senders: Vec<_> = (0..4)
            .map(|s| {
                let tx = tx.clone();
                std::thread::spawn(move || {
                    for i in 0..5000 {
                        tx.send((s, i)).expect("receiver alive");
                        if i % 1000 == 0 {
                            // Let the receiver park now and then, so wake-ups are exercised.
                            std::thread::sleep(Duration::from_millis(1));
                        }
                    }
                })
            })
            .collect();
        let mut next = [0u32; 4];
        let mut got = VecDeque::new();
        let mut total = 0;
        while total < 4 * 5000 {
            // A generous deadline: a lost wake-up shows as this loop never finishing.
            rx.recv_all(&mut got, Instant::now() + Duration::from_secs(30));
            assert!(!got.is_empty(), "timed out with {total} of 20000 received");
            for (s, i) in got.drain(..) {
                assert_eq!(i, next[s as usize], "sender {s} out of order");
                next[s as usize] += 1;
                total += 1;
            }
        }
        for s in senders {
            s.join().expect("sender");
        }
        assert_eq!(next, [5000; 4]);
    }

    #[test]
    fn times_out_empty_and_refuses_sends_after_the_receiver_is_gone() {
        let (tx, rx) = inbox::<u8>();
        let mut got = VecDeque::new();
        rx.recv_all(&mut got, Instant::now() + Duration::from_millis(5));
        assert!(got.is_empty());
        tx.send(7).expect("alive");
        rx.try_recv_all(&mut got);
        assert_eq!(got, [7]);
        drop(rx);
        assert_eq!(tx.send(8), Err(8));
    }

    #[test]
    fn a_claim_takes_the_place_of_waking_the_parked_receiver_and_hands_leftovers_over() {
        let (tx, rx) = inbox::<u8>();
        let waiter = rx.waiter();
        // Nobody parked: no claim.
        assert_eq!(tx.send_claiming(1), Ok(false));
        let mut got = VecDeque::new();
        rx.try_recv_all(&mut got);
        assert_eq!(got, [1]);
        got.clear();
        let parked = std::thread::spawn(move || {
            waiter.wait(Instant::now() + Duration::from_secs(3600));
            waiter
        });
        // Wait until the waiter has parked, then claim instead of waking it.
        let claimed = loop {
            match tx.send_claiming(2) {
                Ok(true) => break true,
                Ok(false) => {
                    rx.try_recv_all(&mut got);
                    got.clear();
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(_) => unreachable!("receiver alive"),
            }
        };
        assert!(claimed);
        // While claimed, neither another claim nor a plain send wakes the waiter.
        assert_eq!(tx.send_claiming(3), Ok(false));
        tx.send(4).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        assert!(!parked.is_finished(), "the waiter was woken during a claim");
        rx.try_recv_all(&mut got);
        assert_eq!(got, [2, 3, 4]);
        tx.send(5).unwrap();
        // Something queued: the claim stays unless handed over, which wakes the waiter.
        assert!(!tx.release(false));
        assert!(!parked.is_finished());
        assert!(tx.release(true));
        let waiter = parked.join().unwrap();
        got.clear();
        rx.try_recv_all(&mut got);
        assert_eq!(got, [5]);
        // Dropping the receiver wakes a parked waiter at once.
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            waiter.wait(Instant::now() + Duration::from_secs(3600));
            let _ = done_tx.send(());
        });
        std::thread::sleep(Duration::from_millis(20));
        drop(rx);
        // Bounded so that a missing wake-up fails instead of hanging.
        done_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("the waiter woke when the receiver was dropped");
        assert_eq!(tx.send_claiming(6), Err(6));
    }
}

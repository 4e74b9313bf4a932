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
//! Invariants:
//! - Messages from one sender arrive in the order it sent them (one FIFO queue under a lock).
//! - After the receiver is dropped every `send` fails and gives the message back; messages
//!   still queued then are dropped (outside the lock: dropping one may send again).

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
    /// Queues `msg`; wakes the receiver if it is parked. Gives `msg` back when the receiver
    /// is gone.
    pub(crate) fn send(&self, msg: T) -> Result<(), T> {
        let mut st = self.shared.state.lock();
        if st.closed {
            return Err(msg);
        }
        st.queue.push_back(msg);
        let wake = st.parked;
        st.parked = false;
        drop(st);
        if wake {
            self.shared.ready.notify_one();
        }
        Ok(())
    }
}

impl<T> InboxReceiver<T> {
    /// Moves everything queued into `out` (which must be empty), parking until something is
    /// queued or `deadline` passes. `out` is left empty on a timeout.
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

impl<T> Drop for InboxReceiver<T> {
    fn drop(&mut self) {
        let left = {
            let mut st = self.shared.state.lock();
            st.closed = true;
            std::mem::take(&mut st.queue)
        };
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
}

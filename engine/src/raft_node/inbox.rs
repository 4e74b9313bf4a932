//! The raft core's inbox: an unbounded multi-producer, single-consumer queue whose receiver
//! blocks on a condition variable at once when the queue is empty.
//!
//! Why not a crossbeam channel: its blocking receive first spins and then calls
//! `sched_yield` several times before it parks (`Backoff::snooze`). The core waits once per
//! request at low load, so that was ~4 `sched_yield`s per put (`strace -c`, BENCHMARKS.md
//! "Write latency"), and on a loaded 2-vCPU machine a yield hands the CPU to another process
//! for up to a time slice. Here a sender takes a mutex, pushes, and signals the condition
//! variable only when the receiver sleeps on it.
//!
//! The error types are crossbeam's, so callers match on them as before.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{RecvTimeoutError, SendError};
use parking_lot::{Condvar, Mutex};

struct State<T> {
    queue: VecDeque<T>,
    /// The receiver is blocked on `ready` (senders must signal).
    sleeping: bool,
    senders: usize,
    receiver_gone: bool,
}

struct Shared<T> {
    state: Mutex<State<T>>,
    ready: Condvar,
}

/// Creates an inbox.
pub(super) fn inbox<T>() -> (InboxTx<T>, InboxRx<T>) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            queue: VecDeque::new(),
            sleeping: false,
            senders: 1,
            receiver_gone: false,
        }),
        ready: Condvar::new(),
    });
    (InboxTx(shared.clone()), InboxRx(shared))
}

/// The sending side; cheap to clone.
pub(super) struct InboxTx<T>(Arc<Shared<T>>);

impl<T> InboxTx<T> {
    /// Queues `msg`; gives it back if the receiver is gone.
    pub(super) fn send(&self, msg: T) -> Result<(), SendError<T>> {
        let mut st = self.0.state.lock();
        if st.receiver_gone {
            return Err(SendError(msg));
        }
        st.queue.push_back(msg);
        let wake = st.sleeping;
        drop(st);
        if wake {
            self.0.ready.notify_one();
        }
        Ok(())
    }
}

impl<T> Clone for InboxTx<T> {
    fn clone(&self) -> Self {
        self.0.state.lock().senders += 1;
        InboxTx(self.0.clone())
    }
}

impl<T> Drop for InboxTx<T> {
    fn drop(&mut self) {
        let mut st = self.0.state.lock();
        st.senders -= 1;
        let wake = st.senders == 0 && st.sleeping;
        drop(st);
        if wake {
            self.0.ready.notify_one();
        }
    }
}

/// The receiving side (one owner).
pub(super) struct InboxRx<T>(Arc<Shared<T>>);

impl<T> InboxRx<T> {
    /// Waits up to `timeout` for a message. `Disconnected` once every sender is gone and the
    /// queue is empty.
    pub(super) fn recv_timeout(&self, timeout: Duration) -> Result<T, RecvTimeoutError> {
        let deadline = Instant::now() + timeout;
        let mut st = self.0.state.lock();
        loop {
            if let Some(m) = st.queue.pop_front() {
                return Ok(m);
            }
            if st.senders == 0 {
                return Err(RecvTimeoutError::Disconnected);
            }
            st.sleeping = true;
            let timed_out = self.0.ready.wait_until(&mut st, deadline).timed_out();
            st.sleeping = false;
            if timed_out && st.queue.is_empty() {
                return Err(RecvTimeoutError::Timeout);
            }
        }
    }

    /// Takes one queued message without waiting.
    pub(super) fn try_recv(&self) -> Option<T> {
        self.0.state.lock().queue.pop_front()
    }

    /// Takes queued messages without waiting, including ones queued while iterating.
    pub(super) fn try_iter(&self) -> impl Iterator<Item = T> + '_ {
        std::iter::from_fn(|| self.try_recv())
    }
}

impl<T> Drop for InboxRx<T> {
    fn drop(&mut self) {
        let queued = {
            let mut st = self.0.state.lock();
            st.receiver_gone = true;
            std::mem::take(&mut st.queue)
        };
        // Dropped outside the lock: a message's drop may send to this inbox (and fail).
        drop(queued);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_arrive_in_order_from_many_senders_and_wake_a_sleeping_receiver() {
        let (tx, rx) = inbox::<(u32, u32)>();
        let handles: Vec<_> = (0..4)
            .map(|t| {
                let tx = tx.clone();
                std::thread::spawn(move || {
                    for i in 0..1000 {
                        tx.send((t, i)).unwrap();
                        if i % 100 == 0 {
                            std::thread::sleep(Duration::from_millis(1));
                        }
                    }
                })
            })
            .collect();
        let mut next = [0u32; 4];
        for _ in 0..4000 {
            let (t, i) = rx.recv_timeout(Duration::from_secs(10)).unwrap();
            assert_eq!(next[t as usize], i, "sender {t} out of order");
            next[t as usize] += 1;
        }
        for h in handles {
            h.join().unwrap();
        }
        assert!(rx.try_recv().is_none());
        assert_eq!(
            rx.recv_timeout(Duration::from_millis(10)),
            Err(RecvTimeoutError::Timeout)
        );
        drop(tx);
        assert_eq!(
            rx.recv_timeout(Duration::from_secs(10)),
            Err(RecvTimeoutError::Disconnected)
        );
    }

    #[test]
    fn the_last_sender_leaving_wakes_the_receiver_and_sends_fail_once_it_is_gone() {
        let (tx, rx) = inbox::<u8>();
        let waiter = std::thread::spawn(move || {
            let first = rx.recv_timeout(Duration::from_secs(30));
            let second = rx.recv_timeout(Duration::from_secs(30));
            (first, second)
        });
        std::thread::sleep(Duration::from_millis(20));
        tx.send(7).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        drop(tx);
        let (first, second) = waiter.join().unwrap();
        assert_eq!(first, Ok(7));
        assert_eq!(second, Err(RecvTimeoutError::Disconnected));

        let (tx, rx) = inbox::<u8>();
        drop(rx);
        assert_eq!(tx.send(8), Err(SendError(8)));
    }
}

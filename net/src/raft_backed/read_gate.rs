//! Linearizable reads gathered at the front end: at most one ReadIndex round is in flight, and
//! every read that arrives meanwhile joins the *next* round (etcd's `linearizableReadLoop`
//! does the same). The raft thread then sees one request and runs one callback per round,
//! not per read; each read costs its task a mutex turn and a wake-up.
//!
//! Why a read may not join the round already in flight: that round's read index was fixed
//! before the read arrived, so a write acknowledged between the two would be missed. The
//! next round starts after the read arrived, so its index covers every write acknowledged
//! before the read began; that is the linearizability argument of ReadIndex (spec §3.1).
//!
//! Worked example: read A arrives to an idle gate: it opens round 1 and starts it at once
//! (a started round is no longer open). B arrives while round 1 is in flight: it opens round
//! 2, which waits. C arrives and joins the open round 2. Round 1 completes: A is released, and
//! the completing callback starts round 2 (B and C). Round 2 completes: B and C are released;
//! no round is open, so the gate goes idle and the next read starts a round at once.
//!
//! A round raft never answers (a leader that lost its quorum drops pending ReadIndex
//! requests) must not stall the gate: a read that times out abandons an in-flight round older
//! than the timeout and starts the open one; the abandoned round's late callback, if any, then
//! changes nothing.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use ringkv_engine::{RaftNode, RaftNodeError};
use tokio::sync::Notify;

use crate::errors::EtcdError;
use crate::node::NodeResult;

/// One ReadIndex round and the reads waiting on it.
struct Round {
    /// Set once, by the raft thread's callback, before `done` is notified.
    result: OnceLock<Result<u64, RaftNodeError>>,
    done: Notify,
}

impl Round {
    fn new() -> Arc<Round> {
        Arc::new(Round {
            result: OnceLock::new(),
            done: Notify::new(),
        })
    }
}

#[derive(Default)]
struct GateState {
    /// The round in flight at raft, and when it was sent.
    in_flight: Option<(Arc<Round>, Instant)>,
    /// The round that new reads join; started when the one in flight completes.
    open: Option<Arc<Round>>,
}

/// See the module doc. Shared by every front-end task of one node.
#[derive(Default)]
pub(crate) struct ReadGate {
    state: Mutex<GateState>,
    /// Rounds sent to raft so far.
    rounds: AtomicU64,
    /// Reads that took a local read index instead of a round.
    local: AtomicU64,
}

impl ReadGate {
    /// Waits until a ReadIndex round that started after this call was answered and applied
    /// (raft's callback runs only once apply reached the read index). Returns the read
    /// index, or raft's error; `EtcdError::Timeout` after `timeout`.
    pub(crate) async fn wait(
        self: &Arc<Self>,
        raft: &RaftNode,
        timeout: Duration,
    ) -> NodeResult<Result<u64, RaftNodeError>> {
        // The only voter and leader, applied up to its commit index: no round to wait for.
        if let Some(index) = raft.progress().local_read_index() {
            self.local.fetch_add(1, Ordering::Relaxed);
            return Ok(Ok(index));
        }
        let (round, start) = {
            let mut g = self.state.lock();
            let round = g.open.get_or_insert_with(Round::new).clone();
            let start = g.in_flight.is_none();
            if start {
                g.open = None;
                g.in_flight = Some((round.clone(), Instant::now()));
            }
            (round, start)
        };
        // Registered before the result is checked, so a completion in between is not lost.
        let notified = round.done.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if start {
            self.send(raft, round.clone());
        }
        if let Some(r) = round.result.get() {
            return Ok(r.clone());
        }
        match tokio::time::timeout(timeout, notified).await {
            Err(_) => {
                self.unstick(raft, timeout);
                Err(EtcdError::Timeout)
            }
            Ok(()) => Ok(round
                .result
                .get()
                .cloned()
                .expect("the result is set before waiters are notified")),
        }
    }

    /// ReadIndex rounds sent to raft so far.
    #[cfg(test)]
    pub(crate) fn rounds(&self) -> u64 {
        self.rounds.load(Ordering::Relaxed)
    }

    /// Reads served with a local read index (the only voter, leading) instead of a round.
    #[cfg(test)]
    pub(crate) fn local_reads(&self) -> u64 {
        self.local.load(Ordering::Relaxed)
    }

    /// Sends `round` (already recorded as in flight) to raft; its completion releases its
    /// reads and sends the open round.
    fn send(self: &Arc<Self>, raft: &RaftNode, round: Arc<Round>) {
        self.rounds.fetch_add(1, Ordering::Relaxed);
        let gate = self.clone();
        let raft2 = raft.clone();
        raft.read_index(Box::new(move |r| {
            let _ = round.result.set(r);
            round.done.notify_waiters();
            let next = {
                let mut g = gate.state.lock();
                match &g.in_flight {
                    // Abandoned by `unstick`: whatever is in flight now is not ours to follow.
                    Some((f, _)) if !Arc::ptr_eq(f, &round) => None,
                    _ => {
                        let next = g.open.take();
                        g.in_flight = next.clone().map(|n| (n, Instant::now()));
                        next
                    }
                }
            };
            if let Some(next) = next {
                gate.send(&raft2, next);
            }
        }));
    }

    /// After a read timed out: abandons the in-flight round if raft has not answered it
    /// within `timeout`, and sends the open round instead.
    fn unstick(self: &Arc<Self>, raft: &RaftNode, timeout: Duration) {
        let next = {
            let mut g = self.state.lock();
            match &g.in_flight {
                Some((_, sent)) if sent.elapsed() >= timeout => {
                    let next = g.open.take();
                    g.in_flight = next.clone().map(|n| (n, Instant::now()));
                    next
                }
                _ => None,
            }
        };
        if let Some(next) = next {
            self.send(raft, next);
        }
    }
}

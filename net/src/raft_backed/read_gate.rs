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

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

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

#[derive(Default)]
struct GateState {
    /// A round is in flight at raft.
    running: bool,
    /// The round that new reads join; started when the running one completes.
    open: Option<Arc<Round>>,
}

/// See the module doc. Shared by every front-end task of one node.
#[derive(Default)]
pub(crate) struct ReadGate {
    state: Mutex<GateState>,
    /// Rounds sent to raft so far.
    rounds: AtomicU64,
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
        let (round, start) = {
            let mut g = self.state.lock();
            let round = g
                .open
                .get_or_insert_with(|| {
                    Arc::new(Round {
                        result: OnceLock::new(),
                        done: Notify::new(),
                    })
                })
                .clone();
            let start = !g.running;
            if start {
                g.running = true;
                g.open = None;
            }
            (round, start)
        };
        // Registered before the result is checked, so a completion in between is not lost.
        let notified = round.done.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if start {
            self.start(raft.clone(), round.clone());
        }
        if let Some(r) = round.result.get() {
            return Ok(r.clone());
        }
        match tokio::time::timeout(timeout, notified).await {
            Err(_) => Err(EtcdError::Timeout),
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

    /// Sends `round` to raft; its completion releases its reads and starts the open round.
    fn start(self: &Arc<Self>, raft: RaftNode, round: Arc<Round>) {
        self.rounds.fetch_add(1, Ordering::Relaxed);
        let gate = self.clone();
        let raft2 = raft.clone();
        raft.read_index(Box::new(move |r| {
            let _ = round.result.set(r);
            round.done.notify_waiters();
            let next = {
                let mut g = gate.state.lock();
                let next = g.open.take();
                g.running = next.is_some();
                next
            };
            if let Some(next) = next {
                gate.start(raft2, next);
            }
        }));
    }
}

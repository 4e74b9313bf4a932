//! The apply side of the node: the [`StateMachine`] raft's apply thread drives. Each committed
//! entry is an etcd `InternalRaftRequest` (field numbers as etcd's, so the size limit counts
//! the same bytes); its `header.ID` names the waiter on the proposing side.
//!
//! Invariants relied on here:
//! 1. The consistent index is set to the entry's index *before* the entry's writes, under the
//!    same store lock, and the backend never commits on its own (its batch limits are off):
//!    every commit (`MvccStore::commit`) writes data and consistent index together, so after a
//!    crash the WAL is replayed from exactly the first entry whose writes are not durable.
//! 2. An entry is applied at most once per process: raft hands every index once, and replay
//!    after a restart starts above the durable consistent index.
//! 3. Apply errors that are etcd errors (compacted, lease not found, NOSPACE, ...) change
//!    nothing and go back to the waiter; storage failures are fatal: the node records the
//!    failure and refuses every later request (never retries a failed fdatasync).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use prost::Message;
use ringkv_engine::pb::etcdserverpb::{
    AlarmMember, AlarmRequest, AlarmResponse, AlarmType, CompactionResponse, DeleteRangeResponse,
    InternalRaftRequest, LeaseGrantResponse, LeaseRevokeResponse, PutRequest, PutResponse,
    TxnResponse, alarm_request::AlarmAction,
};
use ringkv_engine::{BatchWrite, Bucket, HeaderIds, MvccError, MvccStore, StateMachine};

use super::Inner;
use super::shared_writer::NodeBackend;
use crate::errors::EtcdError;

/// The outcome of one applied request, handed to its waiter.
#[derive(Debug)]
pub(crate) enum Applied {
    Put(PutResponse),
    Delete(DeleteRangeResponse),
    Txn(TxnResponse),
    Compact(CompactionResponse),
    LeaseGrant(LeaseGrantResponse),
    LeaseRevoke(LeaseRevokeResponse),
    Alarm(AlarmResponse),
    /// A membership change: the member list after it.
    Members(Vec<ringkv_engine::pb::etcdserverpb::Member>),
    /// Requests without a response body (lease checkpoints, unknown requests).
    Nothing,
}

/// Maps MVCC's errors to etcd's. Corruption and storage failures become `Internal` with the
/// engine's text (which names the file and offset).
pub(crate) fn mvcc_err(e: MvccError) -> EtcdError {
    match e {
        MvccError::ErrCompacted => EtcdError::Compacted,
        MvccError::ErrFutureRev => EtcdError::FutureRev,
        MvccError::ErrKeyNotFound => EtcdError::KeyNotFound,
        MvccError::ErrLeaseNotFound => EtcdError::LeaseNotFound,
        MvccError::ErrLeaseExists => EtcdError::LeaseExist,
        MvccError::ErrLeaseTtlTooLarge => EtcdError::LeaseTtlTooLarge,
        MvccError::ErrNotPrimary => EtcdError::NotLeader,
        e @ (MvccError::Corrupt { .. } | MvccError::Storage(_)) => {
            EtcdError::Internal(e.to_string())
        }
    }
}

fn is_fatal(e: &MvccError) -> bool {
    matches!(e, MvccError::Corrupt { .. } | MvccError::Storage(_))
}

/// Backend key of a raised alarm: the `AlarmMember` message itself (etcd's layout; the value
/// is empty).
pub(crate) fn alarm_key(a: &AlarmMember) -> Vec<u8> {
    a.encode_to_vec()
}

/// The parts of an `InternalRaftRequest` (same field numbers) that apply reads of a request
/// carrying a put: `apply_request` looks at nothing else once `put` is set. Decoding these
/// alone skips building and dropping the whole message (a few KiB of optional fields) per put.
#[derive(Clone, PartialEq, prost::Message)]
struct PutOnly {
    #[prost(uint64, tag = "1")]
    id: u64,
    #[prost(message, optional, tag = "4")]
    put: Option<PutRequest>,
    #[prost(message, optional, tag = "100")]
    header: Option<ringkv_engine::pb::etcdserverpb::RequestHeader>,
}

/// The state machine on raft's apply thread.
pub(crate) struct Applier {
    pub(crate) inner: Arc<Inner>,
    /// Term last written into the store's header ids.
    pub(crate) term: u64,
    /// Outcomes of the entry being applied, by request ID (empty between entries).
    pub(crate) outcomes: Vec<(u64, Result<Applied, EtcdError>)>,
    /// Waiters of the entry being applied with their outcomes (empty between entries).
    pub(crate) replies: Vec<(super::Waiter, Result<Applied, EtcdError>)>,
    /// Reply queues to wake once the entry's outcomes are queued (replies.rs).
    pub(crate) wake: super::replies::ToWake,
}

impl Applier {
    fn apply_request(
        &self,
        store: &mut MvccStore<NodeBackend>,
        req: &InternalRaftRequest,
    ) -> Result<Applied, MvccErrorOr> {
        if let Some(p) = &req.put {
            return self.apply_put(store, p);
        }
        let nospace = self.inner.nospace();
        if let Some(d) = &req.delete_range {
            return Ok(Applied::Delete(store.delete_range(d)?));
        }
        if let Some(t) = &req.txn {
            if nospace && !ringkv_engine::is_txn_read_only(t) {
                return Err(MvccErrorOr::Etcd(EtcdError::NoSpace));
            }
            return Ok(Applied::Txn(store.txn(t)?));
        }
        if let Some(c) = &req.compaction {
            let resp = store.compact(c.revision)?;
            if c.physical {
                store.finish_compaction()?;
            }
            return Ok(Applied::Compact(resp));
        }
        if let Some(g) = &req.lease_grant {
            if nospace {
                return Err(MvccErrorOr::Etcd(EtcdError::NoSpace));
            }
            return Ok(Applied::LeaseGrant(store.lease_grant(
                g.id,
                g.ttl,
                Instant::now(),
            )?));
        }
        if let Some(r) = &req.lease_revoke {
            return Ok(Applied::LeaseRevoke(store.lease_revoke(r.id)?));
        }
        if let Some(c) = &req.lease_checkpoint {
            for cp in &c.checkpoints {
                store.lease_checkpoint(cp.id, cp.remaining_ttl)?;
            }
            return Ok(Applied::Nothing);
        }
        if let Some(a) = &req.alarm {
            return self.apply_alarm(store, a);
        }
        if let Some(m) = &req.cluster_member_attr_set {
            return self.apply_member_attributes(store, m);
        }
        Ok(Applied::Nothing)
    }

    /// A put: refused while NOSPACE is raised (etcd's apply-time quota check).
    fn apply_put(
        &self,
        store: &mut MvccStore<NodeBackend>,
        p: &PutRequest,
    ) -> Result<Applied, MvccErrorOr> {
        if self.inner.nospace() {
            return Err(MvccErrorOr::Etcd(EtcdError::NoSpace));
        }
        Ok(Applied::Put(store.put(p)?))
    }

    fn apply_alarm(
        &self,
        store: &mut MvccStore<NodeBackend>,
        a: &AlarmRequest,
    ) -> Result<Applied, MvccErrorOr> {
        let member = AlarmMember {
            member_id: if a.member_id == 0 {
                self.inner.ids.member_id
            } else {
                a.member_id
            },
            alarm: a.alarm,
        };
        let mut alarms = self.inner.alarms.write();
        let action = AlarmAction::try_from(a.action).unwrap_or(AlarmAction::Get);
        let changed = match action {
            AlarmAction::Activate if a.alarm != AlarmType::None as i32 => {
                if alarms.contains(&member) {
                    vec![]
                } else {
                    store
                        .backend_mut()
                        .put(Bucket::Alarm, &alarm_key(&member), b"")
                        .map_err(MvccError::from)?;
                    alarms.push(member);
                    vec![member]
                }
            }
            AlarmAction::Deactivate => {
                if alarms.contains(&member) {
                    store
                        .backend_mut()
                        .delete(Bucket::Alarm, &alarm_key(&member))
                        .map_err(MvccError::from)?;
                    alarms.retain(|x| *x != member);
                    vec![member]
                } else {
                    vec![]
                }
            }
            _ => alarms.clone(),
        };
        Ok(Applied::Alarm(AlarmResponse {
            header: None,
            alarms: changed,
        }))
    }
}

/// An apply error: MVCC's, or an etcd error decided by the node (NOSPACE).
#[derive(Debug)]
pub(crate) enum MvccErrorOr {
    Mvcc(MvccError),
    Etcd(EtcdError),
}

impl From<MvccError> for MvccErrorOr {
    fn from(e: MvccError) -> Self {
        MvccErrorOr::Mvcc(e)
    }
}

impl Applier {
    /// Marks `store` as holding the entry at `index` of `term`: invariant 1 (the index goes with
    /// the writes of this entry), the term a snapshot transfer reports, and the raft term of
    /// response headers.
    pub(super) fn enter_entry(
        &mut self,
        store: &mut MvccStore<NodeBackend>,
        index: u64,
        term: u64,
    ) {
        store.set_consistent_index(index);
        self.inner.applied_term.store(term, Ordering::Release);
        if term != self.term {
            self.term = term;
            store.set_header_ids(HeaderIds {
                cluster_id: self.inner.ids.cluster_id,
                member_id: self.inner.ids.member_id,
                raft_term: term,
            });
        }
    }
}

impl StateMachine for Applier {
    fn apply(&mut self, index: u64, term: u64, data: &[u8]) {
        let inner = self.inner.clone();
        self.apply_locked(inner.store.write(), index, term, data);
    }

    fn try_apply(&mut self, index: u64, term: u64, data: &[u8]) -> bool {
        let inner = self.inner.clone();
        let Some(store) = inner.store.try_write() else {
            return false;
        };
        self.apply_locked(store, index, term, data);
        true
    }

    fn apply_conf_change(&mut self, index: u64, term: u64, cc: &ringkv_engine::ConfChangeV2) {
        self.apply_member_change(index, term, cc);
    }

    fn durable_index(&self) -> u64 {
        self.inner.durable_index.load(Ordering::Acquire)
    }

    fn restore(&mut self, meta: &ringkv_engine::SnapshotMeta) -> Result<u64, String> {
        let r = self.inner.restore_snapshot(meta);
        match &r {
            // The next entry writes its term into the new store's header ids.
            Ok(ci) => {
                self.term = 0;
                // The term of the file's index is known only when it is the snapshot's.
                let term = if *ci == meta.index { meta.term } else { 0 };
                self.inner.applied_term.store(term, Ordering::Release);
            }
            Err(why) => self.inner.fail(format!("snapshot install: {why}")),
        }
        r
    }
}

impl Applier {
    /// [`StateMachine::apply`] with the store's write lock already taken. A batch entry (engine
    /// `split_batch`: the proposals of one raft core turn) applies its requests in order under
    /// this one lock, each as its own request with its own revision, response and error; the
    /// waiters are then completed under one `waiters` lock.
    fn apply_locked(
        &mut self,
        mut store: parking_lot::RwLockWriteGuard<'_, MvccStore<NodeBackend>>,
        index: u64,
        term: u64,
        data: &[u8],
    ) {
        let started = Instant::now();
        let inner = self.inner.clone();
        self.enter_entry(&mut store, index, term);
        if data.is_empty() {
            // The empty entry a new leader appends: nothing to apply.
            return;
        }
        let mut outcomes = std::mem::take(&mut self.outcomes);
        let mut applied = 0u64;
        if ringkv_engine::is_batch(data) {
            match ringkv_engine::split_batch(data) {
                Ok(parts) => {
                    let n = parts.len();
                    for (i, part) in parts.enumerate() {
                        applied += 1;
                        if !self.apply_one(&mut store, index, term, part, (i, n), &mut outcomes) {
                            break;
                        }
                    }
                }
                Err(e) => inner.fail(format!("raft entry {index} (term {term}): {e}")),
            }
        } else {
            applied = 1;
            self.apply_one(&mut store, index, term, data, (0, 1), &mut outcomes);
        }
        inner
            .revision
            .store(store.current_revision(), Ordering::Release);
        inner.dirty.store(true, Ordering::Release);
        inner.ops_since_commit.fetch_add(applied, Ordering::AcqRel);
        drop(store);
        // One `waiters` lock round per entry; the deliveries after it, with one wake per
        // proposing thread (replies.rs). The vectors are kept for the next entry: no
        // allocation per batch.
        let mut replies = std::mem::take(&mut self.replies);
        {
            let mut waiters = inner.waiters.lock();
            for (id, result) in outcomes.drain(..) {
                if let Some(w) = waiters.remove(&id) {
                    replies.push((w, result));
                }
            }
        }
        self.outcomes = outcomes;
        for q in replies.iter().filter_map(|(w, _)| w.reply) {
            self.wake.count(q);
        }
        let sent = Instant::now();
        let apply = sent.saturating_duration_since(started);
        inner.stages.apply.observe_n(apply, replies.len() as u64);
        for (w, result) in replies.drain(..) {
            inner
                .stages
                .commit
                .observe(started.saturating_duration_since(w.proposed));
            match w.reply.filter(|q| self.wake.through_queue(q)) {
                Some(q) => q.push(w.tx, (result, sent)),
                None => {
                    let _ = w.tx.send((result, sent));
                }
            }
        }
        self.wake.wake_all();
        self.replies = replies;
    }

    /// Decodes and applies request `at.0` of the `at.1` in the entry at `index`, pushing its
    /// outcome by request ID. Returns `false` when the request does not decode: the node
    /// fails, the requests before it in the entry get the failure instead of their outcome
    /// (nothing is committed once the node failed, so their writes never become durable and a
    /// restart stops at the same entry), and the rest of the entry is not applied.
    fn apply_one(
        &self,
        store: &mut MvccStore<NodeBackend>,
        index: u64,
        term: u64,
        part: &[u8],
        at: (usize, usize),
        outcomes: &mut Vec<(u64, Result<Applied, EtcdError>)>,
    ) -> bool {
        let inner = &self.inner;
        // A put decodes into `PutOnly` (all that apply reads of it); anything else whole.
        if let Ok(PutOnly {
            id,
            put: Some(p),
            header,
        }) = PutOnly::decode(part)
        {
            let result = self.outcome(store, index, |a, s| a.apply_put(s, &p));
            outcomes.push((header.map_or(id, |h| h.id), result));
            return true;
        }
        let req = match InternalRaftRequest::decode(part) {
            Ok(r) => r,
            Err(e) => {
                let (i, n) = at;
                let which = if n > 1 {
                    format!(", request {i} of {n}")
                } else {
                    String::new()
                };
                inner.fail(format!(
                    "raft entry {index} (term {term}){which} is not an InternalRaftRequest: {e}"
                ));
                let failed = inner.failure_text();
                for (_, r) in outcomes.iter_mut() {
                    *r = Err(EtcdError::Internal(failed.clone()));
                }
                return false;
            }
        };
        let result = self.outcome(store, index, |a, s| a.apply_request(s, &req));
        outcomes.push((req.header.as_ref().map_or(req.id, |h| h.id), result));
        true
    }

    /// Runs `apply` unless the node failed; etcd errors go to the waiter, storage failures
    /// also stop the node (invariant 3).
    fn outcome(
        &self,
        store: &mut MvccStore<NodeBackend>,
        index: u64,
        apply: impl FnOnce(&Self, &mut MvccStore<NodeBackend>) -> Result<Applied, MvccErrorOr>,
    ) -> Result<Applied, EtcdError> {
        let inner = &self.inner;
        if inner.failed.get().is_some() {
            return Err(EtcdError::Internal(inner.failure_text()));
        }
        match apply(self, store) {
            Ok(a) => Ok(a),
            Err(MvccErrorOr::Etcd(e)) => Err(e),
            Err(MvccErrorOr::Mvcc(e)) => {
                if is_fatal(&e) {
                    inner.fail(format!("applying raft entry {index}: {e}"));
                }
                Err(mvcc_err(e))
            }
        }
    }
}

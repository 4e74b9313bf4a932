//! The MVCC store: etcd's key-value semantics over the storage contract.
//!
//! Every change is written to the `key` bucket under its revision (`revision.rs`), with the
//! full `mvccpb.KeyValue` as value (a delete writes `{key}` under the revision with the
//! tombstone mark). The in-memory `TreeIndex` maps user keys to those revisions. The store is
//! the apply core's: writes take `&mut self` (one writer), reads `&self`.
//!
//! Revision rules (spec §4.1): one write request = one main revision, its changes numbered by
//! sub revision; a request that changes nothing does not bump the revision; reads report the
//! current revision in their header even when reading history.
//!
//! Durability (spec §11, etcd 3.5.0–3.5.2's corruption): `commit()` writes the consistent index
//! (the last applied raft index, set with `set_consistent_index`) into the `meta` bucket of the
//! same backend batch as the data it covers, then commits. Nothing else commits, except
//! `compact()` and the physical compaction batches (through `commit()`, so with the index too).
//! The apply loop calls `set_consistent_index(i)` *before* applying entry `i` and never commits
//! in the middle of an entry; then every commit holds whole entries up to the index it names.
//! After a crash the store reopens at some commit; its consistent index says from where the WAL
//! must be replayed (a replayed Compact just answers ErrCompacted, as in etcd).
//!
//! Threads: the store is owned by the apply core. Readers on other threads need the store
//! behind a lock (`RwLock`: ranges share, writes exclude) or a channel to the apply core.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use bytes::Bytes;
use prost::Message;

use super::error::{MvccError, MvccResult};
use super::key_index::TreeIndex;
use super::revision::{RevKey, Revision};
use super::watch::{ReadCtx, StreamId, WatchHub, WatchSink};
use crate::lease::{LeaseRecord, Lessor};
use crate::pb::etcdserverpb::{
    self as pb, compare::CompareResult, compare::CompareTarget, compare::TargetUnion,
    range_request::SortOrder, range_request::SortTarget, request_op::Request,
    response_op::Response,
};
use crate::pb::mvccpb::{self, event::EventType};
use crate::storage::{BatchWrite, Bucket};

/// `meta` key of the consistent index: 8 bytes, big-endian (etcd's encoding; not a sort key,
/// kept big-endian so the bucket is byte-identical to etcd's).
pub const META_CONSISTENT_INDEX: &[u8] = b"consistent_index";
/// `meta` key of the compaction revision scheduled (encoded as a revision key `{rev, 0}`).
pub const META_SCHEDULED_COMPACT: &[u8] = b"scheduledCompactRev";
/// `meta` key of the last compaction whose backend removal finished.
pub const META_FINISHED_COMPACT: &[u8] = b"finishedCompactRev";
/// How many `key` bucket entries one physical compaction batch examines (etcd's default).
pub const DEFAULT_COMPACTION_BATCH: usize = 1000;

/// The translation of a request's `range_end` (spec §4.2): `None` = the single key,
/// `Some(&[])` = no upper bound (`"\0"`), otherwise the exclusive end.
pub fn range_end(range_end: &[u8]) -> Option<&[u8]> {
    match range_end {
        [] => None,
        [0] => Some(&[]),
        end => Some(end),
    }
}

/// Identity fields filled into top-level response headers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HeaderIds {
    pub cluster_id: u64,
    pub member_id: u64,
    pub raft_term: u64,
}

/// A physical compaction in progress (removal of unreachable revisions in bounded batches).
#[derive(Debug)]
struct CompactionJob {
    at: i64,
    keep: HashSet<Revision>,
    next: Vec<u8>,
}

/// A write (or read-only) transaction in progress: the changes so far.
#[derive(Debug)]
struct TxnState {
    begin_rev: i64,
    changes: Vec<mvccpb::KeyValue>,
}

impl TxnState {
    /// The revision reads inside the txn see: the txn's own revision once it changed something.
    fn read_rev(&self) -> i64 {
        self.begin_rev + i64::from(!self.changes.is_empty())
    }
}

/// Which branch each txn in a request takes, decided on the state before the request
/// (etcd evaluates all compares, nested ones included, before executing anything).
#[derive(Debug)]
struct TxnPath {
    succeeded: bool,
    /// Paths of the nested txns of the chosen branch, in op order.
    nested: Vec<TxnPath>,
}

/// The MVCC store with its lessor and watch hub.
pub struct MvccStore<B: BatchWrite> {
    backend: B,
    index: TreeIndex,
    /// The newest revision (1 on a fresh store: the first write produces 2).
    current_rev: i64,
    /// The compaction revision; -1 before the first compaction (etcd's value).
    compact_rev: i64,
    consistent_index: u64,
    lessor: Lessor,
    hub: WatchHub,
    ids: HeaderIds,
    compaction: Option<CompactionJob>,
    compaction_batch: usize,
    /// Reused per write: the encoding of the `KeyValue` being stored (the backend copies it).
    encode_buf: Vec<u8>,
    /// Reused per txn: the `changes` vector of the last txn, emptied (kept when no watcher
    /// took the changes).
    spare_changes: Vec<mvccpb::KeyValue>,
}

impl<B: BatchWrite> std::fmt::Debug for MvccStore<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MvccStore")
            .field("current_rev", &self.current_rev)
            .field("compact_rev", &self.compact_rev)
            .field("keys", &self.index.len())
            .finish()
    }
}

/// The fields of a stored `mvccpb.KeyValue` the index rebuild needs (field numbers as in
/// `KeyValue`; the value, field 5, is skipped by the decoder).
#[derive(Clone, PartialEq, ::prost::Message)]
struct KvMeta {
    #[prost(bytes = "vec", tag = "1")]
    key: Vec<u8>,
    #[prost(int64, tag = "2")]
    create_revision: i64,
    #[prost(int64, tag = "4")]
    version: i64,
    #[prost(int64, tag = "6")]
    lease: i64,
}

fn corrupt(what: impl Into<String>) -> MvccError {
    MvccError::Corrupt { what: what.into() }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn cmp_i64(a: i64, b: i64) -> std::cmp::Ordering {
    a.cmp(&b)
}

impl<B: BatchWrite> MvccStore<B> {
    /// Opens the store on `backend`: restores compaction state, leases, the key index
    /// (rebuilt from the `key` bucket) and key–lease attachments, and finishes a compaction
    /// that was scheduled but not finished.
    pub fn open(backend: B, lessor: Lessor) -> MvccResult<Self> {
        let mut s = MvccStore {
            backend,
            index: TreeIndex::new(),
            current_rev: 1,
            compact_rev: -1,
            consistent_index: 0,
            lessor,
            hub: WatchHub::new(),
            ids: HeaderIds::default(),
            compaction: None,
            compaction_batch: DEFAULT_COMPACTION_BATCH,
            encode_buf: Vec::new(),
            spare_changes: Vec::new(),
        };
        s.restore()?;
        Ok(s)
    }

    fn meta_rev(&self, key: &[u8]) -> MvccResult<Option<i64>> {
        match self.backend.get(Bucket::Meta, key)? {
            None => Ok(None),
            Some(v) => RevKey::decode(&v).map(|rk| Some(rk.rev.main)).map_err(|e| {
                corrupt(format!(
                    "bucket meta, key {}: {}",
                    String::from_utf8_lossy(key),
                    e.0
                ))
            }),
        }
    }

    fn restore(&mut self) -> MvccResult<()> {
        if let Some(v) = self.backend.get(Bucket::Meta, META_CONSISTENT_INDEX)? {
            let b: [u8; 8] = v.as_slice().try_into().map_err(|_| {
                corrupt(format!(
                    "bucket meta, key consistent_index: {} bytes, expected 8",
                    v.len()
                ))
            })?;
            self.consistent_index = u64::from_be_bytes(b);
        }
        if let Some(r) = self.meta_rev(META_FINISHED_COMPACT)? {
            self.compact_rev = r;
        }
        let scheduled = self.meta_rev(META_SCHEDULED_COMPACT)?;

        // Leases first, so restored keys can attach.
        let mut err = None;
        let mut records = Vec::new();
        self.backend.scan(Bucket::Lease, b"", b"", &mut |k, v| {
            match LeaseRecord::decode(v) {
                Ok(r) => records.push(r),
                Err(e) => {
                    err = Some(corrupt(format!(
                        "bucket lease, key {}: not a lease record: {e}",
                        hex(k)
                    )));
                    return false;
                }
            }
            true
        })?;
        if let Some(e) = err {
            return Err(e);
        }
        for r in &records {
            self.lessor.restore(r);
        }

        let mut key_lease: std::collections::HashMap<Vec<u8>, i64> = Default::default();
        let mut current = 1i64;
        let index = &mut self.index;
        let mut err = None;
        self.backend.scan(Bucket::Key, b"", b"", &mut |k, v| {
            let step = (|| -> MvccResult<()> {
                let rk = RevKey::decode(k)
                    .map_err(|e| corrupt(format!("bucket key, entry {}: {}", hex(k), e.0)))?;
                // Only the fields the index needs; the value is skipped, not copied.
                let kv = KvMeta::decode(v).map_err(|e| {
                    corrupt(format!(
                        "bucket key, entry {}: value is not a KeyValue: {e}",
                        hex(k)
                    ))
                })?;
                current = rk.rev.main;
                if rk.tombstone || kv.lease == 0 {
                    key_lease.remove(&kv.key);
                } else {
                    key_lease.insert(kv.key.clone(), kv.lease);
                }
                index.restore_entry(kv.key, rk.rev, rk.tombstone, kv.create_revision, kv.version);
                Ok(())
            })();
            match step {
                Ok(()) => true,
                Err(e) => {
                    err = Some(e);
                    false
                }
            }
        })?;
        if let Some(e) = err {
            return Err(e);
        }
        self.current_rev = current.max(self.compact_rev);
        for (key, id) in key_lease {
            if self.lessor.attach(id, &key).is_err() {
                tracing::warn!(lease = id, "restored key attached to a missing lease");
            }
        }
        // A compaction scheduled but not finished before a crash is resumed (etcd skips a
        // scheduled revision 0, and so do we).
        if let Some(scheduled) = scheduled
            && scheduled > self.compact_rev
            && scheduled != 0
        {
            self.compact_rev = scheduled;
            let keep = self.index.compact(scheduled);
            self.compaction = Some(CompactionJob {
                at: scheduled,
                keep,
                next: Vec::new(),
            });
            self.finish_compaction()?;
        }
        Ok(())
    }

    /// Sets the identity fields of top-level response headers (and watch responses).
    pub fn set_header_ids(&mut self, ids: HeaderIds) {
        self.ids = ids;
        self.hub.set_header_ids(ids);
    }

    /// Records the raft index of the entry being applied; written at the next commit.
    pub fn set_consistent_index(&mut self, index: u64) {
        self.consistent_index = index;
    }

    /// The consistent index as last set (or restored on open).
    pub fn consistent_index(&self) -> u64 {
        self.consistent_index
    }

    /// Makes every applied write durable together with the consistent index covering it.
    pub fn commit(&mut self) -> MvccResult<()> {
        // Format: { "consistent_index": u64 BE }
        self.backend.put(
            Bucket::Meta,
            META_CONSISTENT_INDEX,
            &self.consistent_index.to_be_bytes(),
        )?;
        self.backend.commit()?;
        Ok(())
    }

    pub fn current_revision(&self) -> i64 {
        self.current_rev
    }

    /// The compaction revision (-1 before the first compaction).
    pub fn compact_revision(&self) -> i64 {
        self.compact_rev
    }

    pub fn backend(&self) -> &B {
        &self.backend
    }

    pub fn backend_mut(&mut self) -> &mut B {
        &mut self.backend
    }

    pub fn index(&self) -> &TreeIndex {
        &self.index
    }

    pub fn lessor(&self) -> &Lessor {
        &self.lessor
    }

    pub fn hub(&self) -> &WatchHub {
        &self.hub
    }

    pub fn hub_mut(&mut self) -> &mut WatchHub {
        &mut self.hub
    }

    /// Sets how many entries a physical compaction batch examines.
    pub fn set_compaction_batch(&mut self, n: usize) {
        self.compaction_batch = n.max(1);
    }

    fn header(&self, revision: i64) -> pb::ResponseHeader {
        pb::ResponseHeader {
            cluster_id: self.ids.cluster_id,
            member_id: self.ids.member_id,
            revision,
            raft_term: self.ids.raft_term,
        }
    }

    fn nested_header(revision: i64) -> Option<pb::ResponseHeader> {
        Some(pb::ResponseHeader {
            revision,
            ..Default::default()
        })
    }

    /// Reads the kv stored under `rev` (a put revision).
    fn read_kv(&self, rev: Revision) -> MvccResult<mvccpb::KeyValue> {
        let k = rev.to_key_array();
        match self.backend.get(Bucket::Key, &k)? {
            // Decoding from `Bytes` lets key and value share the buffer instead of copying.
            Some(v) => mvccpb::KeyValue::decode(Bytes::from(v)).map_err(|e| {
                corrupt(format!(
                    "bucket key, entry {}: value is not a KeyValue: {e}",
                    hex(&k)
                ))
            }),
            None => Err(corrupt(format!(
                "bucket key: index names revision {rev} but the backend has no entry {}",
                hex(&k)
            ))),
        }
    }

    /// etcd's `rangeKeys`: the live kvs of the range at `at_rev` (≤0 = `cur_rev`), at most
    /// `limit` (0 = all) of them, and the total count. `count_only` reads no values.
    fn range_keys(
        &self,
        key: &[u8],
        end: Option<&[u8]>,
        cur_rev: i64,
        at_rev: i64,
        limit: usize,
        count_only: bool,
    ) -> MvccResult<(Vec<mvccpb::KeyValue>, usize)> {
        if at_rev > cur_rev {
            return Err(MvccError::ErrFutureRev);
        }
        let rev = if at_rev <= 0 { cur_rev } else { at_rev };
        if rev < self.compact_rev {
            return Err(MvccError::ErrCompacted);
        }
        if count_only {
            return Ok((Vec::new(), self.index.count(key, end, rev)));
        }
        let (found, total) = self.index.found(key, end, rev, limit);
        let mut kvs = Vec::with_capacity(found.len());
        for f in found {
            kvs.push(self.read_kv(f.modified)?);
        }
        Ok((kvs, total))
    }

    /// Range as applied inside a (possibly read-only) txn at `cur_rev`; the header carries only
    /// the revision.
    fn apply_range(&self, r: &pb::RangeRequest, cur_rev: i64) -> MvccResult<pb::RangeResponse> {
        let needs_all = r.sort_order != SortOrder::None as i32
            || r.min_mod_revision != 0
            || r.max_mod_revision != 0
            || r.min_create_revision != 0
            || r.max_create_revision != 0;
        // One extra kv tells whether there are more.
        let limit = if needs_all || r.limit <= 0 {
            0
        } else {
            r.limit as usize + 1
        };
        let (mut kvs, count) = self.range_keys(
            &r.key,
            range_end(&r.range_end),
            cur_rev,
            r.revision,
            limit,
            r.count_only,
        )?;
        if r.max_mod_revision != 0 {
            kvs.retain(|kv| kv.mod_revision <= r.max_mod_revision);
        }
        if r.min_mod_revision != 0 {
            kvs.retain(|kv| kv.mod_revision >= r.min_mod_revision);
        }
        if r.max_create_revision != 0 {
            kvs.retain(|kv| kv.create_revision <= r.max_create_revision);
        }
        if r.min_create_revision != 0 {
            kvs.retain(|kv| kv.create_revision >= r.min_create_revision);
        }
        let mut order = SortOrder::try_from(r.sort_order).unwrap_or(SortOrder::None);
        let target = SortTarget::try_from(r.sort_target).unwrap_or(SortTarget::Key);
        if target != SortTarget::Key && order == SortOrder::None {
            order = SortOrder::Ascend;
        }
        if order != SortOrder::None {
            // Stable, like Go's insertion sort for the short slices where ties are observable.
            let cmp = |a: &mvccpb::KeyValue, b: &mvccpb::KeyValue| match target {
                SortTarget::Key => a.key.cmp(&b.key),
                SortTarget::Version => cmp_i64(a.version, b.version),
                SortTarget::Create => cmp_i64(a.create_revision, b.create_revision),
                SortTarget::Mod => cmp_i64(a.mod_revision, b.mod_revision),
                SortTarget::Value => a.value.cmp(&b.value),
            };
            if order == SortOrder::Descend {
                kvs.sort_by(|a, b| cmp(b, a));
            } else {
                kvs.sort_by(cmp);
            }
        }
        let mut more = false;
        if r.limit > 0 && kvs.len() > r.limit as usize {
            kvs.truncate(r.limit as usize);
            more = true;
        }
        if r.keys_only {
            for kv in &mut kvs {
                kv.value.clear();
            }
        }
        Ok(pb::RangeResponse {
            header: Self::nested_header(cur_rev),
            kvs,
            more,
            count: count as i64,
        })
    }

    /// Range (spec §4.3). Reads the applied state; the header carries the current revision.
    pub fn range(&self, r: &pb::RangeRequest) -> MvccResult<pb::RangeResponse> {
        let mut resp = self.apply_range(r, self.current_rev)?;
        resp.header = Some(self.header(self.current_rev));
        Ok(resp)
    }

    fn begin(&mut self) -> TxnState {
        TxnState {
            begin_rev: self.current_rev,
            changes: std::mem::take(&mut self.spare_changes),
        }
    }

    /// Keeps a finished txn's `changes` vector (emptied) for the next txn.
    fn recycle(&mut self, mut changes: Vec<mvccpb::KeyValue>) {
        changes.clear();
        self.spare_changes = changes;
    }

    /// Ends a txn: publishes its changes as the new revision and notifies watchers.
    fn end(&mut self, txn: TxnState) -> i64 {
        if txn.changes.is_empty() {
            self.recycle(txn.changes);
            return txn.begin_rev;
        }
        let rev = txn.begin_rev + 1;
        self.current_rev = rev;
        if !self.hub.has_watchers() {
            self.recycle(txn.changes);
            return rev;
        }
        let events: Vec<mvccpb::Event> = txn
            .changes
            .into_iter()
            .map(|mut kv| {
                if kv.create_revision == 0 {
                    kv.mod_revision = rev;
                    mvccpb::Event {
                        r#type: EventType::Delete as i32,
                        kv: Some(kv),
                        prev_kv: None,
                    }
                } else {
                    mvccpb::Event {
                        r#type: EventType::Put as i32,
                        kv: Some(kv),
                        prev_kv: None,
                    }
                }
            })
            .collect();
        let ctx = ReadCtx {
            index: &self.index,
            backend: &self.backend,
            current_rev: rev,
            compact_rev: self.compact_rev,
            doomed: self.compaction.as_ref().map(|j| (j.at, &j.keep)),
        };
        self.hub.notify(rev, &events, &ctx);
        rev
    }

    /// Writes one put into the txn; returns the txn's revision.
    fn txn_put(
        &mut self,
        txn: &mut TxnState,
        key: &[u8],
        value: Bytes,
        lease: i64,
    ) -> MvccResult<i64> {
        let rev = txn.begin_rev + 1;
        // One index lookup serves the read of the key's state and the put below.
        let mut ki = self.index.key_index_mut(key);
        let (created, version, old_lease) = match ki.as_ref().and_then(|k| k.get(rev)) {
            Some(f) => (f.created.main, f.version, self.lessor.lease_of(key)),
            None => (rev, 0, 0),
        };
        let idx_rev = Revision::new(rev, txn.changes.len() as i64);
        // Format: { key: revision key (17 bytes), value: mvccpb.KeyValue protobuf }
        let kv = mvccpb::KeyValue {
            key: Bytes::copy_from_slice(key),
            create_revision: created,
            mod_revision: rev,
            version: version + 1,
            value,
            lease,
        };
        let mut buf = std::mem::take(&mut self.encode_buf);
        buf.clear();
        kv.encode_raw(&mut buf);
        let stored = self.backend.put(Bucket::Key, &idx_rev.to_key(false), &buf);
        self.encode_buf = buf;
        stored?;
        match ki.take() {
            Some(k) => k.put(idx_rev),
            // Absent: `key_index_mut` found nothing above.
            None => self.index.insert_new(key, idx_rev),
        }
        txn.changes.push(kv);
        if old_lease != 0 {
            // The lease may be gone already (revoked in this txn); nothing to detach then.
            let _ = self.lessor.detach(old_lease, key);
        }
        if lease != 0 {
            self.lessor.attach(lease, key)?;
        }
        Ok(rev)
    }

    /// Deletes one live key in the txn.
    fn txn_delete(&mut self, txn: &mut TxnState, key: &[u8]) -> MvccResult<()> {
        let idx_rev = Revision::new(txn.begin_rev + 1, txn.changes.len() as i64);
        // Format: { key: revision key + 't' (18 bytes), value: mvccpb.KeyValue { key } }
        let kv = mvccpb::KeyValue {
            key: Bytes::copy_from_slice(key),
            ..Default::default()
        };
        self.backend
            .put(Bucket::Key, &idx_rev.to_key(true), &kv.encode_to_vec())?;
        let was_alive = self.index.tombstone(key, idx_rev);
        assert!(was_alive, "delete of a key the index does not hold alive");
        txn.changes.push(kv);
        let lease = self.lessor.lease_of(key);
        if lease != 0 {
            let _ = self.lessor.detach(lease, key);
        }
        Ok(())
    }

    /// Deletes the live keys of a range; returns (deleted, revision for the response).
    fn txn_delete_range(
        &mut self,
        txn: &mut TxnState,
        key: &[u8],
        end: Option<&[u8]>,
    ) -> MvccResult<(i64, i64)> {
        let (pairs, _) = self.index.revisions(key, end, txn.read_rev(), 0);
        for (k, _) in &pairs {
            self.txn_delete(txn, k)?;
        }
        let n = pairs.len() as i64;
        if n != 0 || !txn.changes.is_empty() {
            Ok((n, txn.begin_rev + 1))
        } else {
            Ok((0, txn.begin_rev))
        }
    }

    fn apply_put(&mut self, txn: &mut TxnState, p: &pb::PutRequest) -> MvccResult<pb::PutResponse> {
        let mut prev = None;
        if p.ignore_value || p.ignore_lease || p.prev_kv {
            let (kvs, _) = self.range_keys(&p.key, None, txn.read_rev(), 0, 0, false)?;
            prev = kvs.into_iter().next();
        }
        if (p.ignore_value || p.ignore_lease) && prev.is_none() {
            return Err(MvccError::ErrKeyNotFound);
        }
        let value = match (&prev, p.ignore_value) {
            (Some(kv), true) => kv.value.clone(),
            _ => p.value.clone(),
        };
        let lease = match (&prev, p.ignore_lease) {
            (Some(kv), true) => kv.lease,
            _ => p.lease,
        };
        let rev = self.txn_put(txn, &p.key, value, lease)?;
        Ok(pb::PutResponse {
            header: Self::nested_header(rev),
            prev_kv: if p.prev_kv { prev } else { None },
        })
    }

    fn apply_delete(
        &mut self,
        txn: &mut TxnState,
        d: &pb::DeleteRangeRequest,
    ) -> MvccResult<pb::DeleteRangeResponse> {
        let end = range_end(&d.range_end);
        let mut prev_kvs = Vec::new();
        if d.prev_kv {
            prev_kvs = self.range_keys(&d.key, end, txn.read_rev(), 0, 0, false)?.0;
        }
        let (deleted, rev) = self.txn_delete_range(txn, &d.key, end)?;
        Ok(pb::DeleteRangeResponse {
            header: Self::nested_header(rev),
            deleted,
            prev_kvs,
        })
    }

    /// Put (spec §4.4). Request validation (empty key, value/lease given with ignore_*) is the
    /// front end's; this applies the apply-time checks: unknown lease, missing key for ignore_*.
    pub fn put(&mut self, p: &pb::PutRequest) -> MvccResult<pb::PutResponse> {
        if p.lease != 0 && self.lessor.lookup(p.lease).is_none() {
            return Err(MvccError::ErrLeaseNotFound);
        }
        if (p.ignore_value || p.ignore_lease) && self.index.get(&p.key, self.current_rev).is_none()
        {
            return Err(MvccError::ErrKeyNotFound);
        }
        let mut txn = self.begin();
        let mut resp = self.apply_put(&mut txn, p)?;
        let rev = self.end(txn);
        resp.header = Some(self.header(rev));
        Ok(resp)
    }

    /// DeleteRange (spec §4.5).
    pub fn delete_range(
        &mut self,
        d: &pb::DeleteRangeRequest,
    ) -> MvccResult<pb::DeleteRangeResponse> {
        let mut txn = self.begin();
        let mut resp = self.apply_delete(&mut txn, d)?;
        let rev = self.end(txn);
        resp.header = Some(self.header(rev));
        Ok(resp)
    }

    fn compare(&self, c: &pb::Compare, rev: i64) -> bool {
        let Ok((kvs, _)) = self.range_keys(&c.key, range_end(&c.range_end), rev, 0, 0, false)
        else {
            return false;
        };
        let target = CompareTarget::try_from(c.target).unwrap_or(CompareTarget::Version);
        if kvs.is_empty() {
            if target == CompareTarget::Value {
                // A missing key has no value to compare.
                return false;
            }
            return compare_kv(c, target, &mvccpb::KeyValue::default());
        }
        kvs.iter().all(|kv| compare_kv(c, target, kv))
    }

    fn txn_path(&self, rt: &pb::TxnRequest, rev: i64) -> TxnPath {
        let succeeded = rt.compare.iter().all(|c| self.compare(c, rev));
        let ops = if succeeded { &rt.success } else { &rt.failure };
        let nested = ops
            .iter()
            .filter_map(|op| match &op.request {
                Some(Request::RequestTxn(t)) => Some(self.txn_path(t, rev)),
                _ => None,
            })
            .collect();
        TxnPath { succeeded, nested }
    }

    /// Visits the non-txn ops of the chosen branches, outer ops in order, nested txns in place.
    fn check_ops(
        &self,
        rt: &pb::TxnRequest,
        path: &TxnPath,
        check: &dyn Fn(&Self, &Request) -> MvccResult<()>,
    ) -> MvccResult<()> {
        let ops = if path.succeeded {
            &rt.success
        } else {
            &rt.failure
        };
        let mut nested = path.nested.iter();
        for op in ops {
            match &op.request {
                Some(Request::RequestTxn(t)) => {
                    let p = nested.next().expect("path has one entry per nested txn");
                    self.check_ops(t, p, check)?;
                }
                Some(r) => check(self, r)?,
                None => {}
            }
        }
        Ok(())
    }

    fn check_put(&self, r: &Request) -> MvccResult<()> {
        let Request::RequestPut(p) = r else {
            return Ok(());
        };
        if (p.ignore_value || p.ignore_lease) && self.index.get(&p.key, self.current_rev).is_none()
        {
            return Err(MvccError::ErrKeyNotFound);
        }
        if p.lease != 0 && self.lessor.lookup(p.lease).is_none() {
            return Err(MvccError::ErrLeaseNotFound);
        }
        Ok(())
    }

    fn check_range(&self, r: &Request) -> MvccResult<()> {
        let Request::RequestRange(g) = r else {
            return Ok(());
        };
        if g.revision == 0 {
            return Ok(());
        }
        if g.revision > self.current_rev {
            return Err(MvccError::ErrFutureRev);
        }
        if g.revision < self.compact_rev {
            return Err(MvccError::ErrCompacted);
        }
        Ok(())
    }

    fn apply_txn_ops(
        &mut self,
        txn: &mut TxnState,
        rt: &pb::TxnRequest,
        path: &TxnPath,
    ) -> MvccResult<pb::TxnResponse> {
        let ops = if path.succeeded {
            &rt.success
        } else {
            &rt.failure
        };
        let mut nested = path.nested.iter();
        let mut responses = Vec::with_capacity(ops.len());
        for op in ops {
            let response = match &op.request {
                Some(Request::RequestRange(r)) => Some(Response::ResponseRange(
                    self.apply_range(r, txn.read_rev())?,
                )),
                Some(Request::RequestPut(p)) => {
                    Some(Response::ResponsePut(self.apply_put(txn, p)?))
                }
                Some(Request::RequestDeleteRange(d)) => {
                    Some(Response::ResponseDeleteRange(self.apply_delete(txn, d)?))
                }
                Some(Request::RequestTxn(t)) => {
                    let p = nested.next().expect("path has one entry per nested txn");
                    Some(Response::ResponseTxn(self.apply_txn_ops(txn, t, p)?))
                }
                None => None,
            };
            responses.push(pb::ResponseOp { response });
        }
        Ok(pb::TxnResponse {
            // Nested txn responses carry an empty header (etcd never fills it).
            header: Some(pb::ResponseHeader::default()),
            succeeded: path.succeeded,
            responses,
        })
    }

    /// Txn (spec §4.6). Compares (nested ones too) and the apply-time checks see the state
    /// before the txn; ops see the writes of earlier ops. One revision for all changes. An
    /// error from the checks aborts the txn with nothing changed. Validation (op limits,
    /// duplicate keys, empty keys) is the front end's.
    pub fn txn(&mut self, rt: &pb::TxnRequest) -> MvccResult<pb::TxnResponse> {
        let path = self.txn_path(rt, self.current_rev);
        if !is_txn_read_only(rt) {
            self.check_ops(rt, &path, &Self::check_put)?;
        }
        self.check_ops(rt, &path, &Self::check_range)?;
        let mut txn = self.begin();
        let mut resp = self.apply_txn_ops(&mut txn, rt, &path)?;
        let rev = self.end(txn);
        resp.header = Some(self.header(rev));
        Ok(resp)
    }

    /// Compact (spec §4.7): compacts the index at once and schedules the backend removal, done
    /// in batches by `compaction_step` (or all at once by `finish_compaction`, for
    /// `physical=true`). The scheduled revision is persisted first, so a crash mid-way resumes
    /// the removal on open.
    pub fn compact(&mut self, rev: i64) -> MvccResult<pb::CompactionResponse> {
        if rev <= self.compact_rev {
            return Err(MvccError::ErrCompacted);
        }
        if rev > self.current_rev {
            return Err(MvccError::ErrFutureRev);
        }
        // Removal of an earlier compaction finishes first (etcd runs them in FIFO order).
        self.finish_compaction()?;
        self.compact_rev = rev;
        self.backend.put(
            Bucket::Meta,
            META_SCHEDULED_COMPACT,
            &Revision::new(rev, 0).to_key(false),
        )?;
        self.commit()?;
        let keep = self.index.compact(rev);
        self.compaction = Some(CompactionJob {
            at: rev,
            keep,
            next: Vec::new(),
        });
        Ok(pb::CompactionResponse {
            header: Some(self.header(self.current_rev)),
        })
    }

    /// True while a compaction's backend removal is unfinished.
    pub fn compaction_pending(&self) -> bool {
        self.compaction.is_some()
    }

    /// Removes one batch of unreachable revisions and commits; returns true when the
    /// compaction finished (then `finishedCompactRev` is written).
    pub fn compaction_step(&mut self) -> MvccResult<bool> {
        let Some(job) = self.compaction.as_mut() else {
            return Ok(true);
        };
        let end = Revision::main_bound(job.at + 1);
        let mut keys = Vec::with_capacity(self.compaction_batch);
        let batch = self.compaction_batch;
        self.backend
            .scan(Bucket::Key, &job.next, &end, &mut |k, _| {
                keys.push(k.to_vec());
                keys.len() < batch
            })?;
        let mut last = None;
        for k in &keys {
            let rk = RevKey::decode(k)
                .map_err(|e| corrupt(format!("bucket key, entry {}: {}", hex(k), e.0)))?;
            if !job.keep.contains(&rk.rev) {
                self.backend.delete(Bucket::Key, k)?;
            }
            last = Some(rk.rev);
        }
        if keys.len() < batch {
            let at = job.at;
            self.compaction = None;
            self.backend.put(
                Bucket::Meta,
                META_FINISHED_COMPACT,
                &Revision::new(at, 0).to_key(false),
            )?;
            self.commit()?;
            return Ok(true);
        }
        let last = last.expect("a full batch has a last key");
        job.next = Revision::new(last.main, last.sub + 1).to_key(false);
        self.commit()?;
        Ok(false)
    }

    /// Runs the pending compaction's removal to the end.
    pub fn finish_compaction(&mut self) -> MvccResult<()> {
        while !self.compaction_step()? {}
        Ok(())
    }

    /// etcd's Hash: CRC-32C over every bucket (sorted by name): the name, then each key and
    /// value, skipping `meta/consistent_index`. Returns (hash, current revision).
    pub fn hash(&self) -> MvccResult<pb::HashResponse> {
        let mut buckets = Bucket::ALL;
        buckets.sort_by_key(|b| b.name());
        let mut crc = 0u32;
        for b in buckets {
            crc = crc32c::crc32c_append(crc, b.name());
            self.backend.scan(b, b"", b"", &mut |k, v| {
                if !(b == Bucket::Meta && k == META_CONSISTENT_INDEX) {
                    crc = crc32c::crc32c_append(crc, k);
                    crc = crc32c::crc32c_append(crc, v);
                }
                true
            })?;
        }
        Ok(pb::HashResponse {
            header: Some(self.header(self.current_rev)),
            hash: crc,
        })
    }

    /// etcd's HashKV (spec §4.11): CRC-32C of `"key"` then every `key` bucket entry with
    /// revision ≤ `rev`, skipping entries at or below the compaction revision that compaction
    /// at `rev` would remove.
    pub fn hash_kv(&self, rev: i64) -> MvccResult<pb::HashKvResponse> {
        let compact = self.compact_rev;
        if rev > 0 && rev <= compact {
            return Err(MvccError::ErrCompacted);
        }
        if rev > 0 && rev > self.current_rev {
            return Err(MvccError::ErrFutureRev);
        }
        let rev = if rev == 0 { self.current_rev } else { rev };
        let keep = self.index.keep(rev);
        let upper = Revision::new(rev + 1, 0);
        let lower = Revision::new(compact + 1, 0);
        let mut crc = crc32c::crc32c_append(0, Bucket::Key.name());
        let mut err = None;
        self.backend.scan(Bucket::Key, b"", b"", &mut |k, v| {
            let kr = match RevKey::decode(k) {
                Ok(rk) => rk.rev,
                Err(e) => {
                    err = Some(corrupt(format!("bucket key, entry {}: {}", hex(k), e.0)));
                    return false;
                }
            };
            if kr >= upper {
                return false;
            }
            if kr < lower && !keep.is_empty() && !keep.contains(&kr) {
                return true;
            }
            crc = crc32c::crc32c_append(crc, k);
            crc = crc32c::crc32c_append(crc, v);
            true
        })?;
        if let Some(e) = err {
            return Err(e);
        }
        Ok(pb::HashKvResponse {
            header: Some(self.header(self.current_rev)),
            hash: crc,
            compact_revision: compact,
        })
    }

    // Format: { key: lease ID i64 BE (8 bytes), value: leasepb.Lease { ID=1, TTL=2, RemainingTTL=3 } }
    fn persist_lease(&mut self, rec: &LeaseRecord) -> MvccResult<()> {
        // Big-endian lease ID: etcd's key layout for the lease bucket.
        self.backend
            .put(Bucket::Lease, &rec.id.to_be_bytes(), &rec.encode_to_vec())?;
        Ok(())
    }

    /// LeaseGrant (spec §4.9) with the ID already chosen (≠ 0; see `LeaseIdGen`).
    pub fn lease_grant(
        &mut self,
        id: i64,
        ttl: i64,
        now: Instant,
    ) -> MvccResult<pb::LeaseGrantResponse> {
        let l = self.lessor.grant(id, ttl, now)?;
        let (rec, ttl) = (l.record(), l.ttl);
        self.persist_lease(&rec)?;
        Ok(pb::LeaseGrantResponse {
            header: Some(self.header(self.current_rev)),
            id,
            ttl,
            error: String::new(),
        })
    }

    /// LeaseRevoke (and expiry): deletes every attached key in one revision, then the lease.
    pub fn lease_revoke(&mut self, id: i64) -> MvccResult<pb::LeaseRevokeResponse> {
        let keys: Vec<Vec<u8>> = match self.lessor.lookup(id) {
            Some(l) => l.keys.iter().cloned().collect(),
            None => return Err(MvccError::ErrLeaseNotFound),
        };
        let mut txn = self.begin();
        for k in &keys {
            self.txn_delete_range(&mut txn, k, None)?;
        }
        self.lessor.remove(id);
        self.backend.delete(Bucket::Lease, &id.to_be_bytes())?;
        self.end(txn);
        Ok(pb::LeaseRevokeResponse {
            header: Some(self.header(self.current_rev)),
        })
    }

    /// Applies a lease checkpoint (remaining TTL) and persists it.
    pub fn lease_checkpoint(&mut self, id: i64, remaining_ttl: i64) -> MvccResult<()> {
        if let Some(l) = self.lessor.checkpoint(id, remaining_ttl) {
            let rec = l.record();
            self.persist_lease(&rec)?;
        }
        Ok(())
    }

    /// LeaseKeepAlive: renews on the primary. Unknown or expired lease → TTL 0 (not an error).
    pub fn lease_keep_alive(
        &mut self,
        id: i64,
        now: Instant,
    ) -> MvccResult<pb::LeaseKeepAliveResponse> {
        let header = Some(self.header(self.current_rev));
        let ttl = match self.lessor.renew(id, now) {
            Ok(ttl) => ttl,
            Err(MvccError::ErrLeaseNotFound) => 0,
            Err(e) => return Err(e),
        };
        Ok(pb::LeaseKeepAliveResponse { header, id, ttl })
    }

    /// LeaseTimeToLive: unknown lease → TTL -1 (not an error).
    pub fn lease_time_to_live(
        &self,
        id: i64,
        keys: bool,
        now: Instant,
    ) -> pb::LeaseTimeToLiveResponse {
        let header = Some(self.header(self.current_rev));
        match self.lessor.time_to_live(id, now, keys) {
            Some(t) => pb::LeaseTimeToLiveResponse {
                header,
                id,
                ttl: t.ttl,
                granted_ttl: t.granted_ttl,
                keys: t.keys.into_iter().map(Bytes::from).collect(),
            },
            None => pb::LeaseTimeToLiveResponse {
                header,
                id,
                ttl: -1,
                granted_ttl: 0,
                keys: Vec::new(),
            },
        }
    }

    /// LeaseLeases.
    pub fn lease_leases(&self) -> pb::LeaseLeasesResponse {
        pb::LeaseLeasesResponse {
            header: Some(self.header(self.current_rev)),
            leases: self
                .lessor
                .leases()
                .into_iter()
                .map(|id| pb::LeaseStatus { id })
                .collect(),
        }
    }

    /// Expired leases to revoke through consensus (primary only).
    pub fn lease_expired(&mut self, now: Instant, limit: usize) -> Vec<i64> {
        self.lessor.expired(now, limit)
    }

    /// Checkpoints to propose (primary only).
    pub fn lease_checkpoints_due(&mut self, now: Instant, limit: usize) -> Vec<(i64, i64)> {
        self.lessor.checkpoints_due(now, limit)
    }

    /// Opens a watch stream whose responses go to `sink` (see `WatchHub`).
    pub fn watch_open_stream(&mut self, sink: impl WatchSink) -> StreamId {
        self.hub.open_stream(sink)
    }

    /// Closes a watch stream and drops its watchers.
    pub fn watch_close_stream(&mut self, stream: StreamId) {
        self.hub.close_stream(stream);
    }

    /// WatchCreateRequest on a stream (spec §4.8). Past start revisions are served by
    /// `watch_sync`.
    pub fn watch_create(&mut self, stream: StreamId, req: &pb::WatchCreateRequest) {
        let ctx = ReadCtx {
            index: &self.index,
            backend: &self.backend,
            current_rev: self.current_rev,
            compact_rev: self.compact_rev,
            doomed: self.compaction.as_ref().map(|j| (j.at, &j.keep)),
        };
        self.hub.create(stream, req, &ctx);
    }

    /// WatchCancelRequest on a stream.
    pub fn watch_cancel(&mut self, stream: StreamId, watch_id: i64) {
        self.hub.cancel(stream, watch_id, self.current_rev);
    }

    /// WatchProgressRequest on a stream.
    pub fn watch_progress_request(&mut self, stream: StreamId) {
        self.hub.progress_request(stream, self.current_rev);
    }

    /// The progress-notify interval elapsed.
    pub fn watch_progress_tick(&mut self) {
        self.hub.progress_tick(self.current_rev);
    }

    /// Catch-up of unsynced watchers and retry of victims (etcd runs these every 100 ms and
    /// 10 ms); returns true while work remains.
    pub fn watch_sync(&mut self) -> bool {
        let ctx = ReadCtx {
            index: &self.index,
            backend: &self.backend,
            current_rev: self.current_rev,
            compact_rev: self.compact_rev,
            doomed: self.compaction.as_ref().map(|j| (j.at, &j.keep)),
        };
        self.hub.sync(&ctx)
    }

    pub fn lease_promote(&mut self, now: Instant, extend: Duration) {
        self.lessor.promote(now, extend);
    }

    pub fn lease_demote(&mut self) {
        self.lessor.demote();
    }
}

fn compare_kv(c: &pb::Compare, target: CompareTarget, kv: &mvccpb::KeyValue) -> bool {
    use std::cmp::Ordering;
    let ord: Ordering = match target {
        CompareTarget::Value => {
            let v: &[u8] = match &c.target_union {
                Some(TargetUnion::Value(v)) => v,
                _ => &[],
            };
            kv.value.as_ref().cmp(v)
        }
        CompareTarget::Create => {
            let r = match c.target_union {
                Some(TargetUnion::CreateRevision(r)) => r,
                _ => 0,
            };
            kv.create_revision.cmp(&r)
        }
        CompareTarget::Mod => {
            let r = match c.target_union {
                Some(TargetUnion::ModRevision(r)) => r,
                _ => 0,
            };
            kv.mod_revision.cmp(&r)
        }
        CompareTarget::Version => {
            let r = match c.target_union {
                Some(TargetUnion::Version(r)) => r,
                _ => 0,
            };
            kv.version.cmp(&r)
        }
        CompareTarget::Lease => {
            let r = match c.target_union {
                Some(TargetUnion::Lease(r)) => r,
                _ => 0,
            };
            kv.lease.cmp(&r)
        }
    };
    match CompareResult::try_from(c.result) {
        Ok(CompareResult::Equal) => ord == Ordering::Equal,
        Ok(CompareResult::NotEqual) => ord != Ordering::Equal,
        Ok(CompareResult::Greater) => ord == Ordering::Greater,
        Ok(CompareResult::Less) => ord == Ordering::Less,
        Err(_) => true,
    }
}

/// True when no op of either branch (nested txns included) writes.
pub fn is_txn_read_only(rt: &pb::TxnRequest) -> bool {
    rt.success
        .iter()
        .chain(&rt.failure)
        .all(|op| match &op.request {
            Some(Request::RequestPut(_)) | Some(Request::RequestDeleteRange(_)) => false,
            Some(Request::RequestTxn(t)) => is_txn_read_only(t),
            _ => true,
        })
}

//! Random etcd KV and lease operations for the model-based and differential tests.
//!
//! Requests are always valid for the front end's checks (non-empty keys, no value with
//! `ignore_value`, no duplicate keys in a txn branch, few ops), so every difference in outcome
//! comes from apply-time semantics, the part MVCC owns. The key space is small (10 keys) so
//! ranges, compares and deletes often overlap, and no range returns more than 12 kvs (Go's
//! sort is stable below 13 elements, which makes sort ties comparable with etcd).

use std::collections::BTreeSet;
use std::time::Instant;

use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;

use ringkv_engine::pb::etcdserverpb::{self as pb, compare::TargetUnion, request_op::Request};
use ringkv_engine::{BatchWrite, MvccError, MvccStore};

use crate::json::{error_json, message_json};

const KEYS: &[&str] = &["a", "a/1", "a/2", "b", "c", "c/x", "d", "e", "f", "g"];
const VALUES: &[&str] = &["", "v1", "v2", "x", "yy", "zzz"];
/// Lease IDs the generator uses (explicit, so both sides agree).
const LEASES: &[i64] = &[0, 0, 0, 101, 102, 103];

/// One operation.
#[derive(Clone, Debug)]
pub enum Op {
    Range(pb::RangeRequest),
    Put(pb::PutRequest),
    Delete(pb::DeleteRangeRequest),
    Txn(pb::TxnRequest),
    Compact(pb::CompactionRequest),
    LeaseGrant(pb::LeaseGrantRequest),
    LeaseRevoke(pb::LeaseRevokeRequest),
    LeaseTimeToLive(pb::LeaseTimeToLiveRequest),
    LeaseKeepAlive(pb::LeaseKeepAliveRequest),
    LeaseLeases(pb::LeaseLeasesRequest),
}

/// The generator. The test keeps `rev` and `compact` up to date so revisions hit interesting
/// places (just below/at/above the compaction and the current revision).
#[derive(Debug)]
pub struct OpGen {
    rng: StdRng,
    pub rev: i64,
    pub compact: i64,
}

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

impl OpGen {
    pub fn new(seed: u64) -> Self {
        OpGen {
            rng: StdRng::seed_from_u64(seed),
            rev: 1,
            compact: 0,
        }
    }

    fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[self.rng.random_range(0..xs.len())]
    }

    fn key(&mut self) -> &'static str {
        self.pick(KEYS)
    }

    /// (key, range_end) following spec §4.2's conventions.
    fn key_range(&mut self) -> (Bytes, Bytes) {
        let k = self.key();
        match self.rng.random_range(0..10) {
            0..=3 => (b(k), Bytes::new()),
            4 | 5 => {
                let mut end = k.as_bytes().to_vec();
                *end.last_mut().expect("non-empty") += 1;
                (b(k), Bytes::from(end))
            }
            6 => (b(k), Bytes::from_static(b"\0")),
            7 => (Bytes::from_static(b"\0"), Bytes::from_static(b"\0")),
            _ => (b(k), b(self.key())),
        }
    }

    fn revision(&mut self) -> i64 {
        if self.rng.random_bool(0.7) {
            0
        } else {
            let lo = (self.compact - 1).max(1);
            self.rng.random_range(lo..=self.rev + 1)
        }
    }

    fn small_rev(&mut self) -> i64 {
        if self.rng.random_bool(0.6) {
            0
        } else {
            self.rng.random_range(1..=self.rev + 1)
        }
    }

    pub fn range(&mut self) -> pb::RangeRequest {
        let (key, range_end) = self.key_range();
        let mut r = pb::RangeRequest {
            key,
            range_end,
            revision: self.revision(),
            ..Default::default()
        };
        if self.rng.random_bool(0.3) {
            r.limit = self.rng.random_range(1..4);
        }
        if self.rng.random_bool(0.3) {
            r.sort_order = self.rng.random_range(0..3);
            r.sort_target = self.rng.random_range(0..5);
        }
        r.keys_only = self.rng.random_bool(0.15);
        r.count_only = self.rng.random_bool(0.1);
        // Served locally without a ReadIndex round; on one member it reads the same data.
        r.serializable = self.rng.random_bool(0.1);
        if self.rng.random_bool(0.15) {
            r.min_mod_revision = self.small_rev();
            r.max_mod_revision = self.small_rev();
            r.min_create_revision = self.small_rev();
            r.max_create_revision = self.small_rev();
        }
        r
    }

    fn put(&mut self) -> pb::PutRequest {
        let mut p = pb::PutRequest {
            key: b(self.key()),
            value: b(self.pick(VALUES)),
            lease: self.pick(LEASES),
            prev_kv: self.rng.random_bool(0.4),
            ..Default::default()
        };
        if self.rng.random_bool(0.1) {
            p.ignore_value = true;
            p.value = Bytes::new();
        }
        if self.rng.random_bool(0.1) {
            p.ignore_lease = true;
            p.lease = 0;
        }
        p
    }

    fn delete(&mut self) -> pb::DeleteRangeRequest {
        let (key, range_end) = self.key_range();
        pb::DeleteRangeRequest {
            key,
            range_end,
            prev_kv: self.rng.random_bool(0.5),
        }
    }

    fn compare(&mut self) -> pb::Compare {
        let (key, range_end) = if self.rng.random_bool(0.8) {
            (b(self.key()), Bytes::new())
        } else {
            self.key_range()
        };
        let target = self.rng.random_range(0..5);
        let n = self.rng.random_range(0..=self.rev.max(1) + 1);
        // Usually the matching operand; sometimes another union member (operand 0).
        let union = match (target, self.rng.random_bool(0.9)) {
            (0, true) => TargetUnion::Version(self.rng.random_range(0..4)),
            (1, true) => TargetUnion::CreateRevision(n),
            (2, true) => TargetUnion::ModRevision(n),
            (3, true) => TargetUnion::Value(b(self.pick(VALUES))),
            (4, true) => TargetUnion::Lease(self.pick(LEASES)),
            _ => TargetUnion::Version(1),
        };
        pb::Compare {
            result: self.rng.random_range(0..4),
            target,
            key,
            range_end,
            target_union: Some(union),
        }
    }

    fn ops(&mut self, depth: u32) -> Vec<pb::RequestOp> {
        let n = self.rng.random_range(0..4);
        (0..n)
            .map(|_| {
                let r = match self.rng.random_range(0..10) {
                    0..=2 => Request::RequestRange(self.range()),
                    3..=6 => Request::RequestPut(self.put()),
                    7 | 8 => Request::RequestDeleteRange(self.delete()),
                    _ if depth > 0 => Request::RequestTxn(self.txn_once(depth - 1)),
                    _ => Request::RequestRange(self.range()),
                };
                pb::RequestOp { request: Some(r) }
            })
            .collect()
    }

    fn txn_once(&mut self, depth: u32) -> pb::TxnRequest {
        let n = self.rng.random_range(0..3);
        pb::TxnRequest {
            compare: (0..n).map(|_| self.compare()).collect(),
            success: self.ops(depth),
            failure: self.ops(depth),
        }
    }

    /// A txn valid for the front end's duplicate-key rule.
    pub fn txn(&mut self) -> pb::TxnRequest {
        loop {
            let t = self.txn_once(1);
            if txn_is_valid(&t) {
                return t;
            }
        }
    }

    pub fn next_op(&mut self) -> Op {
        match self.rng.random_range(0..100) {
            0..=29 => Op::Range(self.range()),
            30..=54 => Op::Put(self.put()),
            55..=64 => Op::Delete(self.delete()),
            65..=86 => Op::Txn(self.txn()),
            87..=89 => {
                let lo = (self.compact - 1).max(0);
                Op::Compact(pb::CompactionRequest {
                    revision: self.rng.random_range(lo..=self.rev + 1),
                    physical: self.rng.random_bool(0.5),
                })
            }
            90..=94 => Op::LeaseGrant(pb::LeaseGrantRequest {
                ttl: 1000,
                id: self.pick(&LEASES[3..]),
            }),
            95 | 96 => Op::LeaseRevoke(pb::LeaseRevokeRequest {
                id: self.pick(&LEASES[3..]),
            }),
            97 => Op::LeaseTimeToLive(pb::LeaseTimeToLiveRequest {
                id: self.pick(&LEASES[3..]),
                keys: true,
            }),
            98 => Op::LeaseKeepAlive(pb::LeaseKeepAliveRequest {
                id: self.pick(&LEASES[3..]),
            }),
            _ => Op::LeaseLeases(pb::LeaseLeasesRequest {}),
        }
    }
}

fn in_range(k: &[u8], key: &[u8], end: &[u8]) -> bool {
    match end {
        [] => k == key,
        [0] => k >= key,
        e => k >= key && k < e,
    }
}

/// Puts and deletes of a branch, nested txns' branches included.
fn collect(ops: &[pb::RequestOp], puts: &mut Vec<Bytes>, dels: &mut Vec<(Bytes, Bytes)>) {
    for op in ops {
        match &op.request {
            Some(Request::RequestPut(p)) => puts.push(p.key.clone()),
            Some(Request::RequestDeleteRange(d)) => dels.push((d.key.clone(), d.range_end.clone())),
            Some(Request::RequestTxn(t)) => {
                collect(&t.success, puts, dels);
                collect(&t.failure, puts, dels);
            }
            _ => {}
        }
    }
}

/// A conservative form of etcd's duplicate-key rule (spec §4.6): within each branch (nested
/// branches included) no key is put twice and no put key lies in a deleted range.
pub fn txn_is_valid(t: &pb::TxnRequest) -> bool {
    [&t.success, &t.failure].into_iter().all(|branch| {
        let (mut puts, mut dels) = (Vec::new(), Vec::new());
        collect(branch, &mut puts, &mut dels);
        let unique: BTreeSet<&Bytes> = puts.iter().collect();
        unique.len() == puts.len()
            && puts
                .iter()
                .all(|k| !dels.iter().any(|(s, e)| in_range(k, s, e)))
    })
}

fn err_json(e: &MvccError) -> Value {
    let code = match e {
        MvccError::ErrCompacted | MvccError::ErrFutureRev | MvccError::ErrLeaseTtlTooLarge => 11,
        MvccError::ErrKeyNotFound => 3,
        MvccError::ErrLeaseNotFound => 5,
        MvccError::ErrLeaseExists => 9,
        other => panic!("unexpected store failure: {other}"),
    };
    error_json(e.etcd_message().expect("etcd error"), code)
}

/// The gateway path and JSON body of an op.
pub fn op_request_json(op: &Op) -> (&'static str, Value) {
    match op {
        Op::Range(r) => ("/v3/kv/range", message_json("etcdserverpb.RangeRequest", r)),
        Op::Put(r) => ("/v3/kv/put", message_json("etcdserverpb.PutRequest", r)),
        Op::Delete(r) => (
            "/v3/kv/deleterange",
            message_json("etcdserverpb.DeleteRangeRequest", r),
        ),
        Op::Txn(r) => ("/v3/kv/txn", message_json("etcdserverpb.TxnRequest", r)),
        Op::Compact(r) => (
            "/v3/kv/compaction",
            message_json("etcdserverpb.CompactionRequest", r),
        ),
        Op::LeaseGrant(r) => (
            "/v3/lease/grant",
            message_json("etcdserverpb.LeaseGrantRequest", r),
        ),
        Op::LeaseRevoke(r) => (
            "/v3/lease/revoke",
            message_json("etcdserverpb.LeaseRevokeRequest", r),
        ),
        Op::LeaseTimeToLive(r) => (
            "/v3/lease/timetolive",
            message_json("etcdserverpb.LeaseTimeToLiveRequest", r),
        ),
        Op::LeaseKeepAlive(r) => (
            "/v3/lease/keepalive",
            message_json("etcdserverpb.LeaseKeepAliveRequest", r),
        ),
        Op::LeaseLeases(r) => (
            "/v3/lease/leases",
            message_json("etcdserverpb.LeaseLeasesRequest", r),
        ),
    }
}

/// Applies `op` to the store; returns the response (or error) as gateway JSON.
pub fn apply_to_store<B: BatchWrite>(s: &mut MvccStore<B>, op: &Op, now: Instant) -> Value {
    let res = match op {
        Op::Range(r) => s
            .range(r)
            .map(|x| message_json("etcdserverpb.RangeResponse", &x)),
        Op::Put(r) => s
            .put(r)
            .map(|x| message_json("etcdserverpb.PutResponse", &x)),
        Op::Delete(r) => s
            .delete_range(r)
            .map(|x| message_json("etcdserverpb.DeleteRangeResponse", &x)),
        Op::Txn(r) => s
            .txn(r)
            .map(|x| message_json("etcdserverpb.TxnResponse", &x)),
        Op::Compact(r) => s.compact(r.revision).and_then(|x| {
            if r.physical {
                s.finish_compaction()?;
            }
            Ok(message_json("etcdserverpb.CompactionResponse", &x))
        }),
        Op::LeaseGrant(r) => s
            .lease_grant(r.id, r.ttl, now)
            .map(|x| message_json("etcdserverpb.LeaseGrantResponse", &x)),
        Op::LeaseRevoke(r) => s
            .lease_revoke(r.id)
            .map(|x| message_json("etcdserverpb.LeaseRevokeResponse", &x)),
        Op::LeaseTimeToLive(r) => Ok(message_json(
            "etcdserverpb.LeaseTimeToLiveResponse",
            &s.lease_time_to_live(r.id, r.keys, now),
        )),
        // The gateway streams keepalive results: one `{"result": ...}` line per request.
        Op::LeaseKeepAlive(r) => s.lease_keep_alive(r.id, now).map(|x| {
            serde_json::json!({ "result": message_json("etcdserverpb.LeaseKeepAliveResponse", &x) })
        }),
        Op::LeaseLeases(_) => Ok(message_json(
            "etcdserverpb.LeaseLeasesResponse",
            &s.lease_leases(),
        )),
    };
    res.unwrap_or_else(|e| err_json(&e))
}

/// The catch-up watches both differential tests open after the random sequence (spec §4.8):
/// from the compaction revision (history), with NODELETE and NOPUT filters, and — when there is
/// history below it — from below the compaction revision (canceled with `compact_revision`).
pub fn catch_up_watches(compact: i64) -> Vec<pb::WatchCreateRequest> {
    let mut reqs = vec![
        pb::WatchCreateRequest {
            key: "a".into(),
            range_end: "\0".into(),
            start_revision: compact.max(1),
            watch_id: 1,
            ..Default::default()
        },
        pb::WatchCreateRequest {
            key: "b".into(),
            range_end: "f".into(),
            start_revision: compact + 1,
            watch_id: 3,
            prev_kv: true,
            filters: vec![pb::watch_create_request::FilterType::Nodelete as i32],
            ..Default::default()
        },
        pb::WatchCreateRequest {
            key: "c".into(),
            start_revision: compact + 2,
            watch_id: 4,
            prev_kv: true,
            filters: vec![pb::watch_create_request::FilterType::Noput as i32],
            ..Default::default()
        },
    ];
    if compact > 2 {
        reqs.push(pb::WatchCreateRequest {
            key: "\0".into(),
            range_end: "\0".into(),
            start_revision: compact - 1,
            watch_id: 2,
            ..Default::default()
        });
    }
    reqs
}

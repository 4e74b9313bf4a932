//! The request checks etcd performs in its gRPC layer, before a request reaches the server
//! (etcd-v3-spec.md §4.4–§4.6, §5, §11 pitfall 10), in etcd's order so the first failing check
//! reports the same error etcd would.

use bytes::Bytes;
use prost::Message;

use crate::errors::EtcdError;
use crate::pb::etcdserverpb::{
    DeleteRangeRequest, PutRequest, RangeRequest, RequestHeader, RequestOp, TxnRequest,
    request_op::Request,
};

/// Limits from the flags (spec §10).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// `--max-txn-ops`: most operations per txn branch (and per compare list).
    pub max_txn_ops: usize,
    /// `--max-request-bytes`: largest marshalled raft request.
    pub max_request_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_txn_ops: 128,
            max_request_bytes: 1_572_864,
        }
    }
}

/// Range: the key must be set.
pub fn check_range(r: &RangeRequest) -> Result<(), EtcdError> {
    if r.key.is_empty() {
        return Err(EtcdError::EmptyKey);
    }
    Ok(())
}

/// Put: key set; `ignore_value` excludes a value; `ignore_lease` excludes a lease (§4.4).
pub fn check_put(r: &PutRequest) -> Result<(), EtcdError> {
    if r.key.is_empty() {
        return Err(EtcdError::EmptyKey);
    }
    if r.ignore_value && !r.value.is_empty() {
        return Err(EtcdError::ValueProvided);
    }
    if r.ignore_lease && r.lease != 0 {
        return Err(EtcdError::LeaseProvided);
    }
    Ok(())
}

/// DeleteRange: the key must be set.
pub fn check_delete(r: &DeleteRangeRequest) -> Result<(), EtcdError> {
    if r.key.is_empty() {
        return Err(EtcdError::EmptyKey);
    }
    Ok(())
}

/// Txn (§4.6): operation counts, compares, every op (recursively), then duplicate keys in
/// `success` and in `failure`.
pub fn check_txn(r: &TxnRequest, max_txn_ops: usize) -> Result<(), EtcdError> {
    check_txn_shape(r, max_txn_ops as i64)?;
    check_intervals(&r.success)?;
    check_intervals(&r.failure)?;
    Ok(())
}

/// Counts and per-op checks. A nested txn gets the budget left after its parent's largest list
/// (etcd's rule; the budget may go negative, which rejects any non-empty nested txn).
fn check_txn_shape(r: &TxnRequest, budget: i64) -> Result<(), EtcdError> {
    let ops = r.compare.len().max(r.success.len()).max(r.failure.len()) as i64;
    if ops > budget {
        return Err(EtcdError::TooManyOps);
    }
    if r.compare.iter().any(|c| c.key.is_empty()) {
        return Err(EtcdError::EmptyKey);
    }
    for op in r.success.iter().chain(&r.failure) {
        check_op(op, budget - ops)?;
    }
    Ok(())
}

fn check_op(op: &RequestOp, budget: i64) -> Result<(), EtcdError> {
    match &op.request {
        Some(Request::RequestRange(r)) => check_range(r),
        Some(Request::RequestPut(r)) => check_put(r),
        Some(Request::RequestDeleteRange(r)) => check_delete(r),
        Some(Request::RequestTxn(t)) => check_txn_shape(t, budget),
        None => Err(EtcdError::KeyNotFound),
    }
}

/// A delete's key interval as etcd's gRPC layer sees it: `[key, range_end)` compared as plain
/// byte strings, or the single `key` when `range_end` is empty. Note that a `\0` range end
/// (meaning "to the end" in the store) is *not* special here, so a from-key delete overlaps no
/// put in this check — etcd 3.4 behaves the same way and clients depend on what etcd accepts.
#[derive(Debug, Clone)]
struct DelInterval {
    key: Bytes,
    end: Option<Bytes>,
}

impl DelInterval {
    fn contains(&self, k: &[u8]) -> bool {
        match &self.end {
            None => self.key.as_ref() == k,
            Some(end) => self.key.as_ref() <= k && k < end.as_ref(),
        }
    }
}

/// The puts and deletes of one branch list, for the parent's overlap check.
struct Writes {
    puts: std::collections::HashSet<Bytes>,
    dels: Vec<DelInterval>,
}

/// Rejects a list of ops in which a key is put twice, or put inside a deleted interval,
/// counting the writes of nested txns (either branch of a nested txn may run, so a key put in
/// both branches of one nested txn is fine).
///
/// Worked example: `[put a, txn{success:[put b], failure:[put b]}, del [b, c)]` → the nested
/// txn contributes puts {b} (its two `put b` are exclusive), the level's deletes are {[b, c)},
/// and `b ∈ [b, c)` → DuplicateKey. `[put a, del [b, c)]` is fine.
fn check_intervals(ops: &[RequestOp]) -> Result<Writes, EtcdError> {
    let mut dels: Vec<DelInterval> = ops
        .iter()
        .filter_map(|op| match &op.request {
            Some(Request::RequestDeleteRange(d)) => Some(DelInterval {
                key: d.key.clone(),
                end: (!d.range_end.is_empty()).then(|| d.range_end.clone()),
            }),
            _ => None,
        })
        .collect();
    // `dels` grows with each nested txn's deletes, as in etcd: later siblings see them.
    let overlaps = |k: &[u8], dels: &[DelInterval]| dels.iter().any(|d| d.contains(k));

    let mut puts = std::collections::HashSet::new();
    for op in ops {
        let Some(Request::RequestTxn(t)) = &op.request else {
            continue;
        };
        let then = check_intervals(&t.success)?;
        let els = check_intervals(&t.failure)?;
        for k in &then.puts {
            if puts.contains(k) || overlaps(k, &dels) {
                return Err(EtcdError::DuplicateKey);
            }
            puts.insert(k.clone());
        }
        for k in &els.puts {
            if (puts.contains(k) && !then.puts.contains(k)) || overlaps(k, &dels) {
                return Err(EtcdError::DuplicateKey);
            }
            puts.insert(k.clone());
        }
        dels.extend(then.dels);
        dels.extend(els.dels);
    }
    for op in ops {
        let Some(Request::RequestPut(p)) = &op.request else {
            continue;
        };
        if puts.contains(&p.key) || dels.iter().any(|d| d.contains(&p.key)) {
            return Err(EtcdError::DuplicateKey);
        }
        puts.insert(p.key.clone());
    }
    Ok(Writes { puts, dels })
}

/// A txn that only reads (every op of both lists is a Range) is served without consensus and
/// is not subject to the request-size limit (etcd's rule; a nested txn counts as a write).
pub fn txn_is_read_only(r: &TxnRequest) -> bool {
    r.success
        .iter()
        .chain(&r.failure)
        .all(|op| matches!(op.request, Some(Request::RequestRange(_))))
}

/// Field numbers of the requests inside `InternalRaftRequest` (raft_internal.proto); the
/// `envelope_tags_match_proto` test checks them against the generated message.
pub mod envelope {
    /// `put`.
    pub const PUT: u32 = 4;
    /// `delete_range`.
    pub const DELETE_RANGE: u32 = 5;
    /// `txn`.
    pub const TXN: u32 = 6;
    /// `compaction`.
    pub const COMPACTION: u32 = 7;
    /// `lease_grant`.
    pub const LEASE_GRANT: u32 = 8;
    /// `lease_revoke`.
    pub const LEASE_REVOKE: u32 = 9;
    /// `alarm`.
    pub const ALARM: u32 = 10;
    /// `header`.
    pub const HEADER: u32 = 100;
}

/// Size of the raft envelope etcd would marshal for `msg` in envelope field `tag`: the request
/// plus a header whose ID is taken at its widest (10-byte varint), since the real ID is assigned
/// later; etcd's IDs carry member bits in the top 16 bits and are as wide in practice.
pub fn envelope_len<M: Message>(tag: u32, msg: &M) -> usize {
    let header = RequestHeader {
        id: u64::MAX,
        ..Default::default()
    };
    prost::encoding::message::encoded_len(envelope::HEADER, &header)
        + prost::encoding::message::encoded_len(tag, msg)
}

/// Rejects a request whose raft envelope exceeds `--max-request-bytes` (spec §11 pitfall 10).
pub fn check_request_size<M: Message>(
    tag: u32,
    msg: &M,
    max_request_bytes: usize,
) -> Result<(), EtcdError> {
    if envelope_len(tag, msg) > max_request_bytes {
        return Err(EtcdError::RequestTooLarge);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::etcdserverpb::Compare;

    fn put(k: &str) -> RequestOp {
        RequestOp {
            request: Some(Request::RequestPut(PutRequest {
                key: Bytes::copy_from_slice(k.as_bytes()),
                ..Default::default()
            })),
        }
    }
    fn del(k: &str, end: &str) -> RequestOp {
        RequestOp {
            request: Some(Request::RequestDeleteRange(DeleteRangeRequest {
                key: Bytes::copy_from_slice(k.as_bytes()),
                range_end: Bytes::copy_from_slice(end.as_bytes()),
                prev_kv: false,
            })),
        }
    }
    fn get(k: &str) -> RequestOp {
        RequestOp {
            request: Some(Request::RequestRange(RangeRequest {
                key: Bytes::copy_from_slice(k.as_bytes()),
                ..Default::default()
            })),
        }
    }
    fn txn(success: Vec<RequestOp>, failure: Vec<RequestOp>) -> TxnRequest {
        TxnRequest {
            compare: vec![],
            success,
            failure,
        }
    }
    fn nested(t: TxnRequest) -> RequestOp {
        RequestOp {
            request: Some(Request::RequestTxn(t)),
        }
    }

    #[test]
    fn empty_keys_are_rejected_everywhere() {
        assert_eq!(
            check_range(&RangeRequest::default()),
            Err(EtcdError::EmptyKey)
        );
        assert_eq!(check_put(&PutRequest::default()), Err(EtcdError::EmptyKey));
        assert_eq!(
            check_delete(&DeleteRangeRequest::default()),
            Err(EtcdError::EmptyKey)
        );
        let t = TxnRequest {
            compare: vec![Compare::default()],
            ..Default::default()
        };
        assert_eq!(check_txn(&t, 128), Err(EtcdError::EmptyKey));
        assert_eq!(
            check_txn(&txn(vec![get("")], vec![]), 128),
            Err(EtcdError::EmptyKey)
        );
    }

    /// Spec §4.4: checks in etcd's order.
    #[test]
    fn put_flags() {
        let mut p = PutRequest {
            key: "k".into(),
            value: "v".into(),
            ignore_value: true,
            ..Default::default()
        };
        assert_eq!(check_put(&p), Err(EtcdError::ValueProvided));
        p.value = Bytes::new();
        assert_eq!(check_put(&p), Ok(()));
        p.ignore_lease = true;
        p.lease = 5;
        assert_eq!(check_put(&p), Err(EtcdError::LeaseProvided));
        // empty value is fine
        assert_eq!(
            check_put(&PutRequest {
                key: "k".into(),
                ..Default::default()
            }),
            Ok(())
        );
    }

    /// Spec §4.6: 128 puts OK, 129 rejected; nested txns use the remaining budget.
    #[test]
    fn txn_op_limits() {
        let ops = |n: usize| (0..n).map(|i| put(&format!("k{i}"))).collect::<Vec<_>>();
        assert_eq!(check_txn(&txn(ops(128), vec![]), 128), Ok(()));
        assert_eq!(
            check_txn(&txn(ops(129), vec![]), 128),
            Err(EtcdError::TooManyOps)
        );
        assert_eq!(
            check_txn(&txn(vec![], ops(129)), 128),
            Err(EtcdError::TooManyOps)
        );
        let cmp = TxnRequest {
            compare: (0..129)
                .map(|_| Compare {
                    key: "a".into(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        assert_eq!(check_txn(&cmp, 128), Err(EtcdError::TooManyOps));
        // parent uses 100 of 128 → a nested txn may have 28.
        let mut outer = ops(99);
        outer.push(nested(txn(
            ops(28).into_iter().map(|_| get("x")).collect(),
            vec![],
        )));
        assert_eq!(check_txn(&txn(outer.clone(), vec![]), 128), Ok(()));
        outer.pop();
        outer.push(nested(txn((0..29).map(|_| get("x")).collect(), vec![])));
        assert_eq!(
            check_txn(&txn(outer, vec![]), 128),
            Err(EtcdError::TooManyOps)
        );
    }

    #[test]
    fn empty_request_op_is_key_not_found() {
        let t = txn(vec![RequestOp { request: None }], vec![]);
        assert_eq!(check_txn(&t, 128), Err(EtcdError::KeyNotFound));
    }

    /// Spec §4.6 duplicate-key rules.
    #[test]
    fn duplicate_keys() {
        let dup = Err(EtcdError::DuplicateKey);
        assert_eq!(check_txn(&txn(vec![put("a"), put("a")], vec![]), 128), dup);
        assert_eq!(
            check_txn(&txn(vec![put("b"), del("a", "c")], vec![]), 128),
            dup
        );
        assert_eq!(
            check_txn(&txn(vec![del("a", ""), put("a")], vec![]), 128),
            dup
        );
        // overlapping deletes are fine; the same put in success and failure is fine
        assert_eq!(
            check_txn(&txn(vec![del("a", "c"), del("b", "d")], vec![]), 128),
            Ok(())
        );
        assert_eq!(check_txn(&txn(vec![put("a")], vec![put("a")]), 128), Ok(()));
        // put outside the delete interval
        assert_eq!(
            check_txn(&txn(vec![put("c"), del("a", "c")], vec![]), 128),
            Ok(())
        );
        // nested: a put in a nested txn inside a delete of the parent level
        let inner = nested(txn(vec![put("b")], vec![put("b")]));
        assert_eq!(
            check_txn(&txn(vec![inner.clone(), del("a", "z")], vec![]), 128),
            dup
        );
        assert_eq!(check_txn(&txn(vec![inner.clone()], vec![]), 128), Ok(()));
        // nested put duplicating a parent put
        assert_eq!(
            check_txn(&txn(vec![inner.clone(), put("b")], vec![]), 128),
            dup
        );
        // a nested delete covers a parent put
        let inner_del = nested(txn(vec![del("a", "c")], vec![]));
        assert_eq!(check_txn(&txn(vec![inner_del, put("b")], vec![]), 128), dup);
        // two nested txns putting the same key
        assert_eq!(
            check_txn(&txn(vec![inner.clone(), inner], vec![]), 128),
            dup
        );
        // a from-key ("\0") delete does not overlap in etcd's check
        assert_eq!(
            check_txn(&txn(vec![del("a", "\0"), put("b")], vec![]), 128),
            Ok(())
        );
    }

    #[test]
    fn read_only_txns() {
        assert!(txn_is_read_only(&txn(vec![get("a")], vec![get("b")])));
        assert!(txn_is_read_only(&txn(vec![], vec![])));
        assert!(!txn_is_read_only(&txn(vec![get("a")], vec![put("b")])));
        assert!(!txn_is_read_only(&txn(
            vec![nested(txn(vec![], vec![]))],
            vec![]
        )));
    }

    #[test]
    fn envelope_tags_match_proto() {
        use crate::pb::etcdserverpb::*;
        let header = Some(RequestHeader {
            id: u64::MAX,
            ..Default::default()
        });
        let put = PutRequest {
            key: "k".into(),
            ..Default::default()
        };
        let e = InternalRaftRequest {
            header: header.clone(),
            put: Some(put.clone()),
            ..Default::default()
        };
        assert_eq!(e.encoded_len(), envelope_len(envelope::PUT, &put));
        let d = DeleteRangeRequest {
            key: "k".into(),
            ..Default::default()
        };
        let e = InternalRaftRequest {
            header: header.clone(),
            delete_range: Some(d.clone()),
            ..Default::default()
        };
        assert_eq!(e.encode_to_vec(), {
            let mut v = Vec::new();
            prost::encoding::message::encode(envelope::DELETE_RANGE, &d, &mut v);
            prost::encoding::message::encode(envelope::HEADER, header.as_ref().unwrap(), &mut v);
            v
        });
        let t = txn(vec![put_op_for_test()], vec![]);
        let e = InternalRaftRequest {
            header: header.clone(),
            txn: Some(t.clone()),
            ..Default::default()
        };
        assert_eq!(e.encoded_len(), envelope_len(envelope::TXN, &t));
        let c = CompactionRequest {
            revision: 5,
            physical: true,
        };
        let e = InternalRaftRequest {
            header: header.clone(),
            compaction: Some(c),
            ..Default::default()
        };
        assert_eq!(e.encoded_len(), envelope_len(envelope::COMPACTION, &c));
        let g = LeaseGrantRequest { ttl: 5, id: 1 };
        let e = InternalRaftRequest {
            header: header.clone(),
            lease_grant: Some(g),
            ..Default::default()
        };
        assert_eq!(e.encoded_len(), envelope_len(envelope::LEASE_GRANT, &g));
        let rv = LeaseRevokeRequest { id: 1 };
        let e = InternalRaftRequest {
            header: header.clone(),
            lease_revoke: Some(rv),
            ..Default::default()
        };
        assert_eq!(e.encoded_len(), envelope_len(envelope::LEASE_REVOKE, &rv));
        let a = AlarmRequest {
            action: 1,
            member_id: 1,
            alarm: 1,
        };
        let e = InternalRaftRequest {
            header,
            alarm: Some(a),
            ..Default::default()
        };
        assert_eq!(e.encoded_len(), envelope_len(envelope::ALARM, &a));
    }

    fn put_op_for_test() -> RequestOp {
        put("k")
    }

    /// Spec §11 pitfall 10: a value a few dozen bytes under the limit is already too large.
    #[test]
    fn request_size_counts_the_envelope() {
        let limit = 1_572_864;
        let make = |n: usize| PutRequest {
            key: "foo".into(),
            value: vec![b'x'; n].into(),
            ..Default::default()
        };
        let check = |p: PutRequest| check_request_size(envelope::PUT, &p, limit);
        assert_eq!(check(make(limit - 100)), Ok(()));
        assert_eq!(check(make(limit - 10)), Err(EtcdError::RequestTooLarge));
        assert_eq!(check(make(limit)), Err(EtcdError::RequestTooLarge));
    }
}

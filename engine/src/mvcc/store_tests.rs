//! Unit tests of the store; each cites the spec section it checks.

use std::time::{Duration, Instant};

use bytes::Bytes;

use super::MvccError;
use super::mem_storage::MemStorage;
use super::store::MvccStore;
use crate::lease::Lessor;
use crate::pb::etcdserverpb::{
    self as pb, compare::CompareResult, compare::CompareTarget, compare::TargetUnion,
    range_request::SortOrder, range_request::SortTarget, request_op::Request,
    response_op::Response,
};
use crate::storage::{BatchWrite, Bucket, KvRead};

type Store = MvccStore<MemStorage>;

fn store() -> Store {
    MvccStore::open(MemStorage::new(), Lessor::default()).unwrap()
}

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

fn put(s: &mut Store, k: &str, v: &str) -> i64 {
    s.put(&pb::PutRequest {
        key: b(k),
        value: b(v),
        ..Default::default()
    })
    .unwrap()
    .header
    .unwrap()
    .revision
}

fn del(s: &mut Store, k: &str, end: &str) -> i64 {
    s.delete_range(&pb::DeleteRangeRequest {
        key: b(k),
        range_end: b(end),
        ..Default::default()
    })
    .unwrap()
    .deleted
}

fn rng(key: &str, end: &str) -> pb::RangeRequest {
    pb::RangeRequest {
        key: b(key),
        range_end: b(end),
        ..Default::default()
    }
}

fn keys(r: &pb::RangeResponse) -> Vec<String> {
    r.kvs
        .iter()
        .map(|kv| String::from_utf8(kv.key.to_vec()).unwrap())
        .collect()
}

/// §4.1: fresh store at revision 1; every write bumps by one; version and create_revision.
#[test]
fn revisions_versions_and_recreation() {
    let mut s = store();
    assert_eq!(s.current_revision(), 1);
    assert_eq!(put(&mut s, "a", "1"), 2);
    assert_eq!(put(&mut s, "a", "1"), 3);
    let r = s.range(&rng("a", "")).unwrap();
    let kv = &r.kvs[0];
    assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (2, 3, 2));
    assert_eq!(r.header.unwrap().revision, 3);
    assert_eq!(del(&mut s, "a", ""), 1);
    assert_eq!(s.current_revision(), 4);
    assert_eq!(del(&mut s, "a", ""), 0, "deleting nothing");
    assert_eq!(
        s.current_revision(),
        4,
        "no bump when nothing changed (§4.5)"
    );
    assert_eq!(put(&mut s, "a", "2"), 5);
    let kv = &s.range(&rng("a", "")).unwrap().kvs[0];
    assert_eq!((kv.create_revision, kv.version), (5, 1));
}

/// §4.2 and §4.3: range ends, limit/more/count, keys_only, count_only, history, errors.
#[test]
fn range_options() {
    let mut s = store();
    for k in ["a", "ab", "b", "c", "d"] {
        put(&mut s, k, k);
    }
    // rev 6
    assert_eq!(keys(&s.range(&rng("a", "b")).unwrap()), ["a", "ab"]);
    assert_eq!(keys(&s.range(&rng("b", "\0")).unwrap()), ["b", "c", "d"]);
    assert_eq!(s.range(&rng("\0", "\0")).unwrap().kvs.len(), 5);
    assert!(s.range(&rng("c", "a")).unwrap().kvs.is_empty());
    let r = s.range(&rng("zz", "")).unwrap();
    assert_eq!((r.kvs.len(), r.count, r.more), (0, 0, false));

    let mut q = rng("a", "\0");
    q.limit = 2;
    let r = s.range(&q).unwrap();
    assert_eq!(
        (keys(&r), r.count, r.more),
        (vec!["a".into(), "ab".into()], 5, true)
    );
    q.limit = 5;
    assert!(!s.range(&q).unwrap().more);
    q.limit = 0;
    q.keys_only = true;
    assert!(
        s.range(&q)
            .unwrap()
            .kvs
            .iter()
            .all(|kv| kv.value.is_empty())
    );
    q.keys_only = false;
    q.count_only = true;
    let r = s.range(&q).unwrap();
    assert_eq!((r.kvs.len(), r.count), (0, 5));

    // History: at rev 3 only a and ab existed; the header still says 6.
    let mut q = rng("a", "\0");
    q.revision = 3;
    let r = s.range(&q).unwrap();
    assert_eq!(keys(&r), ["a", "ab"]);
    assert_eq!(r.header.unwrap().revision, 6);
    q.revision = 7;
    assert!(matches!(s.range(&q), Err(MvccError::ErrFutureRev)));
    s.compact(4).unwrap();
    q.revision = 3;
    assert!(matches!(s.range(&q), Err(MvccError::ErrCompacted)));
    q.revision = 4;
    assert_eq!(
        keys(&s.range(&q).unwrap()),
        ["a", "ab", "b"],
        "== compact rev is allowed"
    );
}

/// §4.3: sorting (ASCEND forced for non-key targets), filters prune kvs but not count.
#[test]
fn range_sort_and_filters() {
    let mut s = store();
    put(&mut s, "k1", "z"); // 2
    put(&mut s, "k2", "y"); // 3
    put(&mut s, "k3", "x"); // 4
    put(&mut s, "k1", "w"); // 5
    let mut q = rng("k", "l");
    q.sort_target = SortTarget::Value as i32;
    assert_eq!(keys(&s.range(&q).unwrap()), ["k1", "k3", "k2"]);
    q.sort_order = SortOrder::Descend as i32;
    q.sort_target = SortTarget::Mod as i32;
    assert_eq!(keys(&s.range(&q).unwrap()), ["k1", "k3", "k2"]);
    q.sort_target = SortTarget::Create as i32;
    q.limit = 1;
    let r = s.range(&q).unwrap();
    assert_eq!(
        (keys(&r), r.more, r.count),
        (vec!["k3".to_string()], true, 3)
    );
    q.sort_order = SortOrder::Descend as i32;
    q.sort_target = SortTarget::Key as i32;
    q.limit = 0;
    assert_eq!(keys(&s.range(&q).unwrap()), ["k3", "k2", "k1"]);
    // Version ties keep key order (stable).
    let mut q = rng("k", "l");
    q.sort_target = SortTarget::Version as i32;
    assert_eq!(keys(&s.range(&q).unwrap()), ["k2", "k3", "k1"]);

    let mut q = rng("k", "l");
    q.min_mod_revision = 3;
    q.max_mod_revision = 4;
    let r = s.range(&q).unwrap();
    assert_eq!((keys(&r), r.count), (vec!["k2".into(), "k3".into()], 3));
    let mut q = rng("k", "l");
    q.max_create_revision = 2;
    assert_eq!(keys(&s.range(&q).unwrap()), ["k1"]);
    let mut q = rng("k", "l");
    q.min_create_revision = 3;
    q.limit = 1;
    let r = s.range(&q).unwrap();
    assert_eq!((keys(&r), r.more), (vec!["k2".into()], true));
}

/// §4.4: prev_kv, ignore_value, ignore_lease, lease errors.
#[test]
fn put_options_and_errors() {
    let mut s = store();
    let now = Instant::now();
    s.lease_promote(now, Duration::ZERO);
    let mut p = pb::PutRequest {
        key: b("k"),
        value: b("v1"),
        prev_kv: true,
        ..Default::default()
    };
    assert!(s.put(&p).unwrap().prev_kv.is_none());
    p.value = b("v2");
    assert_eq!(s.put(&p).unwrap().prev_kv.unwrap().value, b("v1"));
    let missing = pb::PutRequest {
        key: b("nope"),
        ignore_value: true,
        ..Default::default()
    };
    assert!(matches!(s.put(&missing), Err(MvccError::ErrKeyNotFound)));
    let bad_lease = pb::PutRequest {
        key: b("k"),
        lease: 77,
        ..Default::default()
    };
    assert!(matches!(
        s.put(&bad_lease),
        Err(MvccError::ErrLeaseNotFound)
    ));
    assert_eq!(s.current_revision(), 3, "failed puts change nothing");

    s.lease_grant(77, 30, now).unwrap();
    s.put(&pb::PutRequest {
        key: b("k"),
        value: b("v3"),
        lease: 77,
        ..Default::default()
    })
    .unwrap();
    s.put(&pb::PutRequest {
        key: b("k"),
        ignore_value: true,
        ignore_lease: true,
        ..Default::default()
    })
    .unwrap();
    let kv = &s.range(&rng("k", "")).unwrap().kvs[0];
    assert_eq!((kv.value.clone(), kv.lease, kv.version), (b("v3"), 77, 4));
    // A put without lease detaches.
    put(&mut s, "k", "v4");
    assert_eq!(s.range(&rng("k", "")).unwrap().kvs[0].lease, 0);
    assert!(s.lessor().lookup(77).unwrap().keys.is_empty());
}

fn cmp(key: &str, target: CompareTarget, result: CompareResult, u: TargetUnion) -> pb::Compare {
    pb::Compare {
        key: b(key),
        target: target as i32,
        result: result as i32,
        target_union: Some(u),
        ..Default::default()
    }
}

fn op_put(k: &str, v: &str) -> pb::RequestOp {
    pb::RequestOp {
        request: Some(Request::RequestPut(pb::PutRequest {
            key: b(k),
            value: b(v),
            ..Default::default()
        })),
    }
}

fn op_range(k: &str) -> pb::RequestOp {
    pb::RequestOp {
        request: Some(Request::RequestRange(rng(k, ""))),
    }
}

/// §4.6: compares, one revision per txn, later ops see earlier writes, nested headers.
#[test]
fn txn_semantics() {
    let mut s = store();
    // Empty txn: succeeded, no bump.
    let r = s.txn(&pb::TxnRequest::default()).unwrap();
    assert!(r.succeeded && r.responses.is_empty());
    assert_eq!(r.header.unwrap().revision, 1);

    let create_if_absent = pb::TxnRequest {
        compare: vec![cmp(
            "foo",
            CompareTarget::Create,
            CompareResult::Equal,
            TargetUnion::CreateRevision(0),
        )],
        success: vec![op_put("foo", "1"), op_range("foo"), op_put("bar", "2")],
        failure: vec![op_range("foo")],
    };
    let r = s.txn(&create_if_absent).unwrap();
    assert!(r.succeeded);
    assert_eq!(r.header.unwrap().revision, 2);
    let Some(Response::ResponseRange(rr)) = &r.responses[1].response else {
        panic!("range response expected")
    };
    assert_eq!(rr.kvs[0].value, b("1"), "later ops see earlier writes");
    assert_eq!(
        rr.header.unwrap(),
        pb::ResponseHeader {
            revision: 2,
            ..Default::default()
        },
        "nested headers carry only the revision"
    );
    // Both puts share main revision 2 with sub revisions 0 and 1.
    assert!(
        s.backend()
            .get(Bucket::Key, &super::Revision::new(2, 1).to_key(false))
            .unwrap()
            .is_some()
    );
    let r = s.txn(&create_if_absent).unwrap();
    assert!(!r.succeeded);
    assert_eq!(r.header.unwrap().revision, 2, "read-only branch: no bump");

    // VALUE compare on a missing key is false; other targets compare with zero.
    let t = pb::TxnRequest {
        compare: vec![cmp(
            "missing",
            CompareTarget::Value,
            CompareResult::Equal,
            TargetUnion::Value(Bytes::new()),
        )],
        ..Default::default()
    };
    assert!(!s.txn(&t).unwrap().succeeded);
    let t = pb::TxnRequest {
        compare: vec![cmp(
            "missing",
            CompareTarget::Version,
            CompareResult::Equal,
            TargetUnion::Version(0),
        )],
        ..Default::default()
    };
    assert!(s.txn(&t).unwrap().succeeded);
    // Range compare: every key in [a, z) must satisfy.
    let mut c = cmp(
        "a",
        CompareTarget::Mod,
        CompareResult::Greater,
        TargetUnion::ModRevision(1),
    );
    c.range_end = b("z");
    let t = pb::TxnRequest {
        compare: vec![c.clone()],
        ..Default::default()
    };
    assert!(s.txn(&t).unwrap().succeeded);
    c.result = CompareResult::Less as i32;
    let t = pb::TxnRequest {
        compare: vec![c],
        ..Default::default()
    };
    assert!(!s.txn(&t).unwrap().succeeded);

    // Nested txn: its compare sees the state before the outer txn; its header is empty.
    let nested = pb::TxnRequest {
        compare: vec![],
        success: vec![
            op_put("n1", "x"),
            pb::RequestOp {
                request: Some(Request::RequestTxn(pb::TxnRequest {
                    compare: vec![cmp(
                        "n1",
                        CompareTarget::Version,
                        CompareResult::Equal,
                        TargetUnion::Version(0),
                    )],
                    success: vec![op_put("n2", "y")],
                    failure: vec![],
                })),
            },
        ],
        failure: vec![],
    };
    let r = s.txn(&nested).unwrap();
    assert_eq!(r.header.unwrap().revision, 3);
    let Some(Response::ResponseTxn(inner)) = &r.responses[1].response else {
        panic!("txn response expected")
    };
    assert!(
        inner.succeeded,
        "nested compare evaluated before the outer put"
    );
    assert_eq!(inner.header.unwrap(), pb::ResponseHeader::default());
    assert_eq!(s.range(&rng("n2", "")).unwrap().kvs[0].mod_revision, 3);

    // A failing check aborts the whole txn with nothing changed.
    let bad = pb::TxnRequest {
        success: vec![
            op_put("x", "1"),
            pb::RequestOp {
                request: Some(Request::RequestPut(pb::PutRequest {
                    key: b("y"),
                    lease: 5,
                    ..Default::default()
                })),
            },
        ],
        ..Default::default()
    };
    assert!(matches!(s.txn(&bad), Err(MvccError::ErrLeaseNotFound)));
    assert_eq!(s.current_revision(), 3);
    assert!(s.range(&rng("x", "")).unwrap().kvs.is_empty());
    let mut future = rng("x", "");
    future.revision = 4;
    let t = pb::TxnRequest {
        success: vec![pb::RequestOp {
            request: Some(Request::RequestRange(future)),
        }],
        ..Default::default()
    };
    assert!(matches!(s.txn(&t), Err(MvccError::ErrFutureRev)));
}

/// §4.7: compact errors, physical removal in batches, restart mid-compaction.
#[test]
fn compaction_and_restart() {
    let mut s = store();
    for i in 0..50 {
        put(&mut s, &format!("k{}", i % 5), &i.to_string());
    }
    del(&mut s, "k0", "");
    // rev 52
    assert!(matches!(s.compact(53), Err(MvccError::ErrFutureRev)));
    s.set_compaction_batch(7);
    s.compact(40).unwrap();
    assert!(matches!(s.compact(40), Err(MvccError::ErrCompacted)));
    assert!(matches!(s.compact(39), Err(MvccError::ErrCompacted)));
    assert!(s.compaction_pending());
    let hash_during = s.hash_kv(45).unwrap().hash;
    // Crash before the removal finished: reopen resumes it.
    let mut backend = s.backend().clone();
    assert!(!s.compaction_step().unwrap());
    s.finish_compaction().unwrap();
    assert_eq!(
        s.hash_kv(45).unwrap().hash,
        hash_during,
        "HashKV stable across removal"
    );
    // Entries kept: the newest ≤ 40 of each live key, everything above 40.
    let n = s.backend().len(Bucket::Key);
    assert_eq!(n, 5 + 12, "5 kept + revisions 41..=52");
    backend.crash();
    let mut reopened = MvccStore::open(backend, Lessor::default()).unwrap();
    assert_eq!(reopened.compact_revision(), 40);
    assert!(!reopened.compaction_pending());
    assert_eq!(reopened.backend().len(Bucket::Key), n);
    assert_eq!(reopened.current_revision(), 52);
    let mut q = rng("k", "l");
    q.revision = 40;
    let r = reopened.range(&q).unwrap();
    assert_eq!(keys(&r), ["k0", "k1", "k2", "k3", "k4"]);
    assert!(reopened.compact(41).is_ok());
}

/// Restart: the index rebuilt from the backend answers like the original (current and
/// history), leases are restored with their keys, the consistent index survives.
#[test]
fn reopen_rebuilds_index_leases_and_consistent_index() {
    let mut s = store();
    let now = Instant::now();
    s.lease_grant(9, 100, now).unwrap();
    put(&mut s, "a", "1");
    s.put(&pb::PutRequest {
        key: b("l"),
        value: b("x"),
        lease: 9,
        ..Default::default()
    })
    .unwrap();
    put(&mut s, "a", "2");
    del(&mut s, "a", "");
    put(&mut s, "a", "3");
    s.set_consistent_index(42);
    s.commit().unwrap();
    put(&mut s, "lost", "uncommitted");
    let mut backend = s.backend().clone();
    backend.crash();
    let r = MvccStore::open(backend, Lessor::default()).unwrap();
    assert_eq!(r.consistent_index(), 42);
    assert_eq!(r.current_revision(), 6);
    for rev in 1..=6 {
        let mut q = rng("\0", "\0");
        q.revision = rev;
        assert_eq!(r.range(&q).unwrap(), {
            let mut x = s.range(&q).unwrap();
            x.header = Some(pb::ResponseHeader {
                revision: 6,
                ..Default::default()
            });
            x
        });
    }
    assert_eq!(r.lessor().lookup(9).unwrap().keys.len(), 1);
    assert_eq!(r.lessor().lease_of(b"l"), 9);
    assert!(r.range(&rng("lost", "")).unwrap().kvs.is_empty());
}

/// §4.9: revoke deletes attached keys in one revision; unknown lease errors.
#[test]
fn lease_revoke_deletes_keys_in_one_revision() {
    let mut s = store();
    let now = Instant::now();
    s.lease_promote(now, Duration::ZERO);
    assert_eq!(s.lease_grant(1, 1, now).unwrap().ttl, 2);
    assert!(matches!(
        s.lease_grant(1, 5, now),
        Err(MvccError::ErrLeaseExists)
    ));
    for k in ["x", "y", "z"] {
        s.put(&pb::PutRequest {
            key: b(k),
            lease: 1,
            ..Default::default()
        })
        .unwrap();
    }
    assert_eq!(s.current_revision(), 4);
    let ttl = s.lease_time_to_live(1, true, now);
    assert_eq!(ttl.keys, vec![b("x"), b("y"), b("z")]);
    assert_eq!(s.lease_expired(now + Duration::from_secs(2), 10), vec![1]);
    let r = s.lease_revoke(1).unwrap();
    assert_eq!(r.header.unwrap().revision, 5);
    assert!(s.range(&rng("\0", "\0")).unwrap().kvs.is_empty());
    assert!(matches!(
        s.lease_revoke(1),
        Err(MvccError::ErrLeaseNotFound)
    ));
    assert_eq!(s.lease_time_to_live(1, false, now).ttl, -1);
    assert_eq!(s.lease_keep_alive(1, now).unwrap().ttl, 0);
    assert!(s.backend().len(Bucket::Lease) == 0);
    // Revoking a lease without keys does not bump.
    s.lease_grant(2, 10, now).unwrap();
    s.lease_revoke(2).unwrap();
    assert_eq!(s.current_revision(), 5);
}

/// The consistent index is written in the same commit as the data.
#[test]
fn consistent_index_commits_with_data() {
    let mut s = store();
    s.set_consistent_index(7);
    put(&mut s, "a", "1");
    s.commit().unwrap();
    let snap = s.backend().snapshot();
    assert_eq!(
        snap.get(Bucket::Meta, super::META_CONSISTENT_INDEX)
            .unwrap(),
        Some(7u64.to_be_bytes().to_vec())
    );
    let _ = s.backend_mut().commit();
}

/// §4.11: HashKV is etcd's, bit for bit. The expected value is what etcd 3.4.23 reported
/// (`etcdctl endpoint hashkv`) after a single `put foo bar` on a fresh member.
#[test]
fn hash_kv_matches_etcd() {
    let mut s = store();
    put(&mut s, "foo", "bar");
    let h = s.hash_kv(0).unwrap();
    assert_eq!((h.hash, h.compact_revision), (3_305_255_506, -1));
    assert_eq!(s.hash_kv(2).unwrap().hash, 3_305_255_506);
    assert!(matches!(s.hash_kv(3), Err(MvccError::ErrFutureRev)));
    put(&mut s, "foo", "baz");
    s.compact(2).unwrap();
    assert!(
        matches!(s.hash_kv(2), Err(MvccError::ErrCompacted)),
        "== compact rev fails here"
    );
}

/// Hash covers every bucket but not the consistent index.
#[test]
fn hash_ignores_consistent_index() {
    let mut s = store();
    put(&mut s, "a", "1");
    s.set_consistent_index(1);
    s.commit().unwrap();
    let h1 = s.hash().unwrap().hash;
    s.set_consistent_index(99);
    s.commit().unwrap();
    assert_eq!(s.hash().unwrap().hash, h1);
    put(&mut s, "a", "2");
    assert_ne!(s.hash().unwrap().hash, h1);
}

/// Lease checkpoints persist the remaining TTL; after a restart the new primary's clock uses it.
#[test]
fn lease_checkpoint_survives_restart() {
    let mut s = store();
    let now = Instant::now();
    s.lease_promote(now, Duration::ZERO);
    s.lease_grant(5, 600, now).unwrap();
    s.lease_checkpoint(5, 100).unwrap();
    s.commit().unwrap();
    let mut r = MvccStore::open(s.backend().clone(), Lessor::default()).unwrap();
    assert_eq!(r.lessor().lookup(5).unwrap().remaining_ttl, 100);
    r.lease_promote(now, Duration::ZERO);
    assert!(
        r.lease_expired(now + Duration::from_secs(99), 10)
            .is_empty()
    );
    assert_eq!(r.lease_expired(now + Duration::from_secs(100), 10), vec![5]);
}

/// Corrupt stored data is detected on open and named (bucket, key), not silently skipped.
#[test]
fn corrupt_entries_are_reported_on_open() {
    let mut s = store();
    put(&mut s, "a", "1");
    let mut be = s.backend().clone();
    be.put(Bucket::Key, b"short-key", b"x").unwrap();
    let err = MvccStore::open(be, Lessor::default()).unwrap_err();
    assert!(matches!(err, MvccError::Corrupt { .. }));
    assert!(
        err.to_string()
            .contains("bucket key, entry 73686f72742d6b6579"),
        "{err}"
    );

    let mut be = s.backend().clone();
    be.put(
        Bucket::Key,
        &super::Revision::new(2, 0).to_key(false),
        b"\xff\xff",
    )
    .unwrap();
    let err = MvccStore::open(be, Lessor::default()).unwrap_err();
    assert!(err.to_string().contains("not a KeyValue"), "{err}");

    let mut be = s.backend().clone();
    be.put(Bucket::Meta, super::META_CONSISTENT_INDEX, b"123")
        .unwrap();
    let err = MvccStore::open(be, Lessor::default()).unwrap_err();
    assert!(err.to_string().contains("consistent_index"), "{err}");

    let mut be = s.backend().clone();
    be.put(Bucket::Lease, &1i64.to_be_bytes(), b"\xff").unwrap();
    let err = MvccStore::open(be, Lessor::default()).unwrap_err();
    assert!(err.to_string().contains("bucket lease"), "{err}");
}

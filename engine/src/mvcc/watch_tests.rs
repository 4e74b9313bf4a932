//! Watch hub tests (spec §4.8).

use bytes::Bytes;
use crossbeam_channel::{Receiver, bounded};

use super::mem_storage::MemStorage;
use super::store::MvccStore;
use crate::lease::Lessor;
use crate::pb::etcdserverpb::{self as pb, watch_create_request::FilterType};
use crate::pb::mvccpb::{Event, event::EventType};

type Store = MvccStore<MemStorage>;

fn store() -> Store {
    MvccStore::open(MemStorage::new(), Lessor::default()).unwrap()
}

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

fn put(s: &mut Store, k: &str, v: &str) {
    s.put(&pb::PutRequest {
        key: b(k),
        value: b(v),
        ..Default::default()
    })
    .unwrap();
}

fn del(s: &mut Store, k: &str) {
    s.delete_range(&pb::DeleteRangeRequest {
        key: b(k),
        ..Default::default()
    })
    .unwrap();
}

fn watch(key: &str, end: &str, start: i64) -> pb::WatchCreateRequest {
    pb::WatchCreateRequest {
        key: b(key),
        range_end: b(end),
        start_revision: start,
        ..Default::default()
    }
}

fn drain(rx: &Receiver<pb::WatchResponse>) -> Vec<pb::WatchResponse> {
    rx.try_iter().collect()
}

fn ev_summary(e: &Event) -> (i32, String, i64) {
    let kv = e.kv.as_ref().unwrap();
    (
        e.r#type,
        String::from_utf8(kv.key.to_vec()).unwrap(),
        kv.mod_revision,
    )
}

#[test]
fn create_live_events_and_delete_shape() {
    let mut s = store();
    let (tx, rx) = bounded(64);
    let st = s.watch_open_stream(tx);
    s.watch_create(st, &watch("a", "c", 0));
    s.watch_create(st, &watch("b", "", 0));
    let created = drain(&rx);
    assert_eq!(created.len(), 2);
    assert!(created.iter().all(|r| r.created && !r.canceled));
    assert_eq!(
        (created[0].watch_id, created[1].watch_id),
        (0, 1),
        "auto IDs from 0"
    );
    assert_eq!(created[0].header.unwrap().revision, 1);

    put(&mut s, "b", "1");
    let got = drain(&rx);
    assert_eq!(got.len(), 2, "both watchers match b");
    for r in &got {
        assert_eq!(r.header.unwrap().revision, 2);
        assert_eq!(r.events.len(), 1);
    }
    del(&mut s, "b");
    let got = drain(&rx);
    let e = &got[0].events[0];
    assert_eq!(e.r#type, EventType::Delete as i32);
    let kv = e.kv.as_ref().unwrap();
    assert_eq!((kv.key.clone(), kv.mod_revision), (b("b"), 3));
    assert_eq!((kv.create_revision, kv.version, kv.lease), (0, 0, 0));
    assert!(kv.value.is_empty());
    put(&mut s, "z", "1");
    assert!(drain(&rx).is_empty(), "no watcher on z");
}

#[test]
fn txn_events_in_one_response() {
    let mut s = store();
    let (tx, rx) = bounded(64);
    let st = s.watch_open_stream(tx);
    put(&mut s, "a", "0");
    put(&mut s, "b", "0");
    s.watch_create(st, &watch("\0", "\0", 0));
    drain(&rx);
    use pb::request_op::Request;
    let op = |r| pb::RequestOp { request: Some(r) };
    s.txn(&pb::TxnRequest {
        success: vec![
            op(Request::RequestPut(pb::PutRequest {
                key: b("c"),
                ..Default::default()
            })),
            op(Request::RequestDeleteRange(pb::DeleteRangeRequest {
                key: b("a"),
                range_end: b("c"),
                ..Default::default()
            })),
        ],
        ..Default::default()
    })
    .unwrap();
    let got = drain(&rx);
    assert_eq!(got.len(), 1);
    let evs: Vec<_> = got[0].events.iter().map(ev_summary).collect();
    assert_eq!(
        evs,
        vec![
            (EventType::Put as i32, "c".into(), 4),
            (EventType::Delete as i32, "a".into(), 4),
            (EventType::Delete as i32, "b".into(), 4),
        ]
    );
}

#[test]
fn prev_kv_and_filters() {
    let mut s = store();
    let (tx, rx) = bounded(64);
    let st = s.watch_open_stream(tx);
    let mut w = watch("k", "", 0);
    w.prev_kv = true;
    s.watch_create(st, &w);
    let mut w = watch("k", "", 0);
    w.filters = vec![FilterType::Noput as i32];
    s.watch_create(st, &w);
    drain(&rx);
    put(&mut s, "k", "1");
    put(&mut s, "k", "2");
    del(&mut s, "k");
    let got = drain(&rx);
    let w0: Vec<_> = got.iter().filter(|r| r.watch_id == 0).collect();
    let w1: Vec<_> = got.iter().filter(|r| r.watch_id == 1).collect();
    assert_eq!(w0.len(), 3);
    assert!(w0[0].events[0].prev_kv.is_none(), "creation has no prev_kv");
    assert_eq!(w0[1].events[0].prev_kv.as_ref().unwrap().value, b("1"));
    assert_eq!(w0[2].events[0].prev_kv.as_ref().unwrap().value, b("2"));
    assert_eq!(w1.len(), 1, "NOPUT: only the delete, no empty responses");
    assert_eq!(w1[0].events[0].r#type, EventType::Delete as i32);
}

#[test]
fn past_start_catches_up_then_goes_live() {
    let mut s = store();
    for i in 0..10 {
        put(&mut s, "k", &i.to_string()); // revs 2..=11
    }
    let (tx, rx) = bounded(64);
    let st = s.watch_open_stream(tx);
    s.watch_create(st, &watch("k", "", 5));
    let created = drain(&rx);
    assert!(created[0].created);
    put(&mut s, "k", "live"); // rev 12: the watcher is unsynced, not notified live
    assert!(drain(&rx).is_empty());
    assert!(!s.watch_sync());
    let got = drain(&rx);
    assert_eq!(got.len(), 1, "history batched into one response");
    let revs: Vec<i64> = got[0].events.iter().map(|e| ev_summary(e).2).collect();
    assert_eq!(revs, (5..=12).collect::<Vec<_>>());
    assert_eq!(got[0].header.unwrap().revision, 12);
    put(&mut s, "k", "after"); // 13, live now
    let got = drain(&rx);
    assert_eq!(got[0].events[0].kv.as_ref().unwrap().mod_revision, 13);
}

#[test]
fn future_start_waits() {
    let mut s = store();
    let (tx, rx) = bounded(64);
    let st = s.watch_open_stream(tx);
    s.watch_create(st, &watch("k", "", 4));
    drain(&rx);
    put(&mut s, "k", "2");
    put(&mut s, "k", "3");
    assert!(drain(&rx).is_empty());
    put(&mut s, "k", "4");
    let got = drain(&rx);
    assert_eq!(got[0].events[0].kv.as_ref().unwrap().mod_revision, 4);
}

#[test]
fn compacted_start_is_canceled_with_compact_revision() {
    let mut s = store();
    for i in 0..5 {
        put(&mut s, "k", &i.to_string());
    }
    s.compact(4).unwrap();
    let (tx, rx) = bounded(64);
    let st = s.watch_open_stream(tx);
    s.watch_create(st, &watch("k", "", 3));
    s.watch_create(st, &watch("k", "", 4));
    s.watch_sync();
    let got = drain(&rx);
    assert!(got[0].created && got[0].watch_id == 0);
    assert!(got[1].created && got[1].watch_id == 1);
    let cancel = got.iter().find(|r| r.canceled).unwrap();
    assert_eq!(cancel.watch_id, 0);
    assert_eq!(cancel.compact_revision, 4);
    assert_eq!(cancel.header.unwrap().revision, 0);
    assert!(cancel.cancel_reason.is_empty());
    let w1: Vec<_> = got
        .iter()
        .filter(|r| r.watch_id == 1 && !r.created)
        .collect();
    assert_eq!(
        w1[0].events.len(),
        3,
        "start == compact revision is allowed"
    );
}

#[test]
fn create_failures_cancel_and_progress() {
    let mut s = store();
    let (tx, rx) = bounded(64);
    let st = s.watch_open_stream(tx);
    let mut w = watch("a", "", 0);
    w.watch_id = 7;
    s.watch_create(st, &w);
    s.watch_create(st, &w);
    s.watch_create(st, &watch("b", "a", 0));
    s.watch_create(st, &watch("c", "", 0));
    s.watch_progress_request(st);
    s.watch_cancel(st, 7);
    s.watch_cancel(st, 99);
    let got = drain(&rx);
    assert_eq!(got.len(), 6, "no response for an unknown cancel");
    assert_eq!(got[0].watch_id, 7);
    assert_eq!(
        (got[1].watch_id, got[1].created, got[1].canceled),
        (-1, true, true)
    );
    assert_eq!(got[1].cancel_reason, super::CANCEL_REASON_DUPLICATE_ID);
    assert_eq!(got[2].cancel_reason, super::CANCEL_REASON_EMPTY_RANGE);
    assert_eq!(got[3].watch_id, 0);
    assert_eq!((got[4].watch_id, got[4].created), (-1, false));
    assert_eq!((got[5].watch_id, got[5].canceled), (7, true));
    put(&mut s, "a", "x");
    assert!(drain(&rx).is_empty(), "canceled watcher gets nothing");
}

#[test]
fn progress_notify_only_when_quiet() {
    let mut s = store();
    let (tx, rx) = bounded(64);
    let st = s.watch_open_stream(tx);
    let mut w = watch("a", "", 0);
    w.progress_notify = true;
    s.watch_create(st, &w);
    drain(&rx);
    s.watch_progress_tick();
    let got = drain(&rx);
    assert_eq!(got.len(), 1);
    assert!(got[0].events.is_empty() && got[0].watch_id == 0);
    put(&mut s, "a", "1");
    drain(&rx);
    s.watch_progress_tick();
    assert!(
        drain(&rx).is_empty(),
        "events since the last tick: no notify"
    );
    s.watch_progress_tick();
    assert_eq!(drain(&rx).len(), 1);
}

#[test]
fn slow_watcher_becomes_victim_without_blocking_and_loses_nothing() {
    let mut s = store();
    let (tx, rx) = bounded(2);
    let st = s.watch_open_stream(tx);
    s.watch_create(st, &watch("k", "", 0));
    assert_eq!(drain(&rx).len(), 1);
    for i in 0..50 {
        put(&mut s, "k", &i.to_string()); // never blocks
    }
    assert_eq!(s.hub().stats().victims, 1);
    let mut revs = Vec::new();
    for _ in 0..100 {
        for r in drain(&rx) {
            revs.extend(r.events.iter().map(|e| ev_summary(e).2));
        }
        if !s.watch_sync() && rx.is_empty() {
            break;
        }
    }
    assert_eq!(
        revs,
        (2..=51).collect::<Vec<_>>(),
        "in order, no gaps, no duplicates"
    );
    assert_eq!(s.hub().stats().synced, 1);
}

#[test]
fn fragments_split_large_responses() {
    let mut s = store();
    s.hub_mut().set_max_request_bytes(0);
    let (tx, rx) = bounded(64);
    let st = s.watch_open_stream(tx);
    let mut w = watch("\0", "\0", 2);
    w.fragment = true;
    let big = "x".repeat(200 * 1024);
    for k in ["a", "b", "c", "d"] {
        put(&mut s, k, &big);
    }
    s.watch_create(st, &w);
    s.watch_sync();
    let got: Vec<_> = drain(&rx).into_iter().filter(|r| !r.created).collect();
    assert!(got.len() >= 2);
    assert!(got[..got.len() - 1].iter().all(|r| r.fragment));
    assert!(!got.last().unwrap().fragment);
    assert_eq!(got.iter().map(|r| r.events.len()).sum::<usize>(), 4);
}

#[test]
fn lease_expiry_revokes_through_the_write_path_with_delete_events() {
    use std::time::{Duration, Instant};
    let mut s = store();
    let t0 = Instant::now();
    s.lease_promote(t0, Duration::ZERO);
    s.lease_grant(42, 5, t0).unwrap();
    for k in ["x", "y"] {
        s.put(&pb::PutRequest {
            key: b(k),
            lease: 42,
            ..Default::default()
        })
        .unwrap();
    }
    let (tx, rx) = bounded(64);
    let st = s.watch_open_stream(tx);
    s.watch_create(st, &watch("\0", "\0", 0));
    drain(&rx);
    assert!(s.lease_expired(t0 + Duration::from_secs(4), 10).is_empty());
    for id in s.lease_expired(t0 + Duration::from_secs(5), 10) {
        s.lease_revoke(id).unwrap();
    }
    let got = drain(&rx);
    assert_eq!(got.len(), 1, "one revision, one response");
    let evs: Vec<_> = got[0].events.iter().map(ev_summary).collect();
    assert_eq!(
        evs,
        vec![
            (EventType::Delete as i32, "x".into(), 4),
            (EventType::Delete as i32, "y".into(), 4),
        ]
    );
    assert!(s.lessor().lookup(42).is_none());
}

#[test]
fn far_behind_watcher_catches_up_in_bounded_steps() {
    let mut s = store();
    let n = 2 * super::MAX_REVS_PER_SYNC_SCAN as usize + 500;
    for i in 0..n {
        put(&mut s, if i % 3 == 0 { "k" } else { "other" }, "v");
    }
    let (tx, rx) = bounded(1 << 16);
    let st = s.watch_open_stream(tx);
    s.watch_create(st, &watch("k", "", 2));
    drain(&rx);
    let mut rounds = 0;
    while s.watch_sync() {
        rounds += 1;
        assert!(rounds < 100);
    }
    assert!(rounds >= 2, "more than one bounded scan");
    put(&mut s, "k", "live");
    let mut revs = Vec::new();
    for r in drain(&rx) {
        let rs: Vec<i64> = r.events.iter().map(|e| ev_summary(e).2).collect();
        let distinct: std::collections::BTreeSet<_> = rs.iter().collect();
        assert!(distinct.len() <= super::MAX_REVS_PER_SYNC_RESPONSE);
        revs.extend(rs);
    }
    let want: Vec<i64> = (0..n)
        .filter(|i| i % 3 == 0)
        .map(|i| i as i64 + 2)
        .chain([n as i64 + 2])
        .collect();
    assert_eq!(revs, want);
}

//! Differential test against real etcd 3.4 over gRPC (issue 4, spec §4, §7): the same random
//! sequence of puts, deletes, txns, ranges with every option, compactions, lease
//! grant/revoke/keep-alive/TimeToLive/Leases, watch streams and HashKV goes through the same
//! tonic client code to a real etcd and to a real `ringkv` node (the binary, raft-backed). Every
//! response compares field by field as gateway JSON: headers' revision and raft_term included,
//! cluster and member IDs normalised; errors compare as (gRPC code, message).
//!
//! Fails (never skips) when `etcd` is missing.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use ringkv_net::pb::etcdserverpb as pb;
use ringkv_net::pb::etcdserverpb::{
    kv_client::KvClient, lease_client::LeaseClient, maintenance_client::MaintenanceClient,
    watch_client::WatchClient,
};
use ringkv_tests::{EtcdProcess, Op, OpGen, RingkvProcess, message_json};

const OPS: usize = 2000;
/// Longest wait for a stream (watch, keep-alive) to deliver what the test expects from it.
const WATCH_WAIT: Duration = Duration::from_secs(10);

/// One server's clients (the same code drives etcd and ringkv).
struct Side {
    kv: KvClient<Channel>,
    lease: LeaseClient<Channel>,
    watch: WatchClient<Channel>,
    maint: MaintenanceClient<Channel>,
}

impl Side {
    async fn connect(port: u16) -> Side {
        let ch = Channel::from_shared(format!("http://127.0.0.1:{port}"))
            .expect("uri")
            .connect()
            .await
            .unwrap_or_else(|e| panic!("gRPC connect to port {port}: {e}"));
        Side {
            kv: KvClient::new(ch.clone()),
            lease: LeaseClient::new(ch.clone()),
            watch: WatchClient::new(ch.clone()),
            maint: MaintenanceClient::new(ch),
        }
    }

    /// Sends `op`; returns the response as gateway JSON, or `{"code", "message"}` on error.
    async fn apply(&mut self, op: &Op) -> Value {
        fn j<M: prost::Message>(name: &str, r: Result<tonic::Response<M>, tonic::Status>) -> Value {
            match r {
                Ok(r) => message_json(name, r.get_ref()),
                Err(s) => json!({ "code": s.code() as i32, "message": s.message() }),
            }
        }
        match op {
            Op::Range(r) => j("etcdserverpb.RangeResponse", self.kv.range(r.clone()).await),
            Op::Put(r) => j("etcdserverpb.PutResponse", self.kv.put(r.clone()).await),
            Op::Delete(r) => j(
                "etcdserverpb.DeleteRangeResponse",
                self.kv.delete_range(r.clone()).await,
            ),
            Op::Txn(r) => j("etcdserverpb.TxnResponse", self.kv.txn(r.clone()).await),
            Op::Compact(r) => j("etcdserverpb.CompactionResponse", self.kv.compact(*r).await),
            Op::LeaseGrant(r) => j(
                "etcdserverpb.LeaseGrantResponse",
                self.lease.lease_grant(*r).await,
            ),
            Op::LeaseRevoke(r) => j(
                "etcdserverpb.LeaseRevokeResponse",
                self.lease.lease_revoke(*r).await,
            ),
            Op::LeaseTimeToLive(r) => j(
                "etcdserverpb.LeaseTimeToLiveResponse",
                self.lease.lease_time_to_live(*r).await,
            ),
            Op::LeaseLeases(r) => j(
                "etcdserverpb.LeaseLeasesResponse",
                self.lease.lease_leases(*r).await,
            ),
            Op::LeaseKeepAlive(r) => {
                let stream = tokio_stream::iter(vec![*r]);
                match self.lease.lease_keep_alive(stream).await {
                    Err(s) => json!({ "code": s.code() as i32, "message": s.message() }),
                    Ok(resp) => {
                        let mut s = resp.into_inner();
                        match tokio::time::timeout(WATCH_WAIT, s.next()).await {
                            Ok(Some(Ok(m))) => {
                                message_json("etcdserverpb.LeaseKeepAliveResponse", &m)
                            }
                            Ok(Some(Err(s))) => {
                                json!({ "code": s.code() as i32, "message": s.message() })
                            }
                            Ok(None) => json!("keep-alive stream ended without a response"),
                            Err(_) => json!("keep-alive response timed out"),
                        }
                    }
                }
            }
        }
    }

    /// Opens a watch stream and sends `reqs` on it (the send side stays open).
    async fn watch(&mut self, reqs: &[pb::WatchCreateRequest]) -> WatchStream {
        let (tx, rx) = mpsc::channel(16);
        for r in reqs {
            let req = pb::WatchRequest {
                request_union: Some(pb::watch_request::RequestUnion::CreateRequest(r.clone())),
            };
            tx.send(req).await.expect("queue watch request");
        }
        let resp = self
            .watch
            .watch(ReceiverStream::new(rx))
            .await
            .expect("open watch stream");
        WatchStream {
            _tx: tx,
            rx: resp.into_inner(),
        }
    }
}

struct WatchStream {
    _tx: mpsc::Sender<pb::WatchRequest>,
    rx: tonic::Streaming<pb::WatchResponse>,
}

impl WatchStream {
    /// Reads responses (as normalised JSON) until `done` holds or `WATCH_WAIT` passes.
    async fn read(&mut self, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let mut out = Vec::new();
        let deadline = tokio::time::Instant::now() + WATCH_WAIT;
        while !done(&out) {
            match tokio::time::timeout_at(deadline, self.rx.next()).await {
                Ok(Some(Ok(m))) => {
                    let mut v = message_json("etcdserverpb.WatchResponse", &m);
                    normalise(&mut v, None);
                    out.push(v);
                }
                Ok(Some(Err(s))) => panic!("watch stream failed: {s}"),
                Ok(None) | Err(_) => break,
            }
        }
        out
    }
}

/// Replaces header cluster/member IDs by `"*"` (presence still compares; raft_term compares
/// as is: a fresh single member leads in term 2 on both). The remaining TTL of TimeToLive
/// depends on two clocks; lease keys come in Go map order on etcd's side.
fn normalise(v: &mut Value, op: Option<&Op>) {
    fn ids(v: &mut Value) {
        match v {
            Value::Object(map) => {
                for (k, child) in map.iter_mut() {
                    if k == "header"
                        && let Value::Object(h) = child
                    {
                        for f in ["cluster_id", "member_id"] {
                            if let Some(x) = h.get_mut(f) {
                                *x = json!("*");
                            }
                        }
                    }
                    ids(child);
                }
            }
            Value::Array(items) => items.iter_mut().for_each(ids),
            _ => {}
        }
    }
    ids(v);
    if matches!(op, Some(Op::LeaseTimeToLive(_)))
        && let Some(t) = v.get_mut("TTL")
        && t != "-1"
    {
        *t = json!("*");
    }
    if let Some(Value::Array(keys)) = v.get_mut("keys") {
        keys.sort_by_key(|k| k.to_string());
    }
}

fn header_rev(v: &Value) -> Option<i64> {
    v["header"]["revision"].as_str()?.parse().ok()
}

fn last_event_rev(v: &[Value]) -> i64 {
    v.iter()
        .filter_map(|x| x["events"].as_array())
        .flatten()
        .filter_map(|e| e["kv"]["mod_revision"].as_str()?.parse().ok())
        .max()
        .unwrap_or(0)
}

fn by_watch_id(v: &[Value]) -> BTreeMap<String, Vec<Value>> {
    let mut m = BTreeMap::<String, Vec<Value>>::new();
    for x in v {
        let id = x["watch_id"].as_str().unwrap_or("0").to_string();
        m.entry(id).or_default().push(x.clone());
    }
    m
}

/// Per watch ID: the responses without events, and all events in order.
fn unbatched(v: &[Value]) -> BTreeMap<String, (Vec<Value>, Vec<Value>)> {
    by_watch_id(v)
        .into_iter()
        .map(|(id, rs)| {
            let (with, without): (Vec<Value>, Vec<Value>) =
                rs.into_iter().partition(|r| r.get("events").is_some());
            let events = with
                .iter()
                .filter_map(|r| r["events"].as_array())
                .flatten()
                .cloned()
                .collect();
            (id, (without, events))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_ops_match_etcd_over_grpc() {
    let etcd_proc = EtcdProcess::start();
    let node = RingkvProcess::start(&[]);
    let mut etcd = Side::connect(etcd_proc.client_port).await;
    let mut ours = Side::connect(node.client_port).await;

    // A live watch on every key with prev_kv, on both sides.
    let all = [pb::WatchCreateRequest {
        key: "\0".into(),
        range_end: "\0".into(),
        prev_kv: true,
        ..Default::default()
    }];
    let mut etcd_live = etcd.watch(&all).await;
    let mut our_live = ours.watch(&all).await;
    let want = etcd_live.read(|v| !v.is_empty()).await;
    let got = our_live.read(|v| !v.is_empty()).await;
    assert_eq!(got, want, "watch created response");

    let seed = std::env::var("DIFF_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_0004u64);
    let mut generator = OpGen::new(seed);
    for i in 0..OPS {
        let op = generator.next_op();
        let mut want = etcd.apply(&op).await;
        let mut got = ours.apply(&op).await;
        normalise(&mut want, Some(&op));
        normalise(&mut got, Some(&op));
        assert_eq!(
            got, want,
            "op #{i} (seed {seed:#x}) differs from etcd\nrequest {op:?}"
        );
        if std::env::var("DIFF_TRACE").is_ok() {
            println!("{i} {op:?}\n  => {got}");
        }
        if let Some(r) = header_rev(&got) {
            generator.rev = r;
        }
        if let Op::Compact(c) = &op
            && got.get("code").is_none()
        {
            generator.compact = c.revision;
        }
    }

    // The live stream: every revision's events in one response, in the same order.
    let final_rev = generator.rev;
    let want = etcd_live.read(|v| last_event_rev(v) >= final_rev).await;
    let got = our_live.read(|v| last_event_rev(v) >= final_rev).await;
    assert_eq!(
        last_event_rev(&want),
        final_rev,
        "etcd's live watch reached the final revision"
    );
    assert_eq!(got.len(), want.len(), "number of live watch responses");
    for (i, (a, b)) in got.iter().zip(&want).enumerate() {
        assert_eq!(a, b, "live watch response #{i}");
    }

    // Catch-up streams: from the compaction revision (history), with filters, and from below
    // it (canceled with compact_revision).
    let compact = generator.compact;
    let reqs = ringkv_tests::catch_up_watches(compact);
    let mut want_stream = etcd.watch(&reqs).await;
    let mut got_stream = ours.watch(&reqs).await;
    // Markers after the history: put `c` (seen by watches 1 and 3), then delete it (1 and 4).
    // Each watch delivers in revision order, so a stream is complete once every watch shows
    // its marker (and the compacted watch 2 its cancellation).
    for op in [
        Op::Put(pb::PutRequest {
            key: "c".into(),
            value: "end".into(),
            ..Default::default()
        }),
        Op::Delete(pb::DeleteRangeRequest {
            key: "c".into(),
            ..Default::default()
        }),
    ] {
        let mut want = etcd.apply(&op).await;
        let mut got = ours.apply(&op).await;
        normalise(&mut want, Some(&op));
        normalise(&mut got, Some(&op));
        assert_eq!(got, want, "marker {op:?}");
    }
    let complete = |v: &[Value]| {
        let m = by_watch_id(v);
        let last = |id: &str| m.get(id).map_or(0, |x| last_event_rev(x));
        let canceled = m
            .get("2")
            .is_some_and(|x| x.iter().any(|r| r["canceled"] == json!(true)));
        last("1") > final_rev + 1
            && last("3") > final_rev
            && last("4") > final_rev + 1
            && (compact <= 2 || canceled)
    };
    let want = want_stream.read(complete).await;
    let got = got_stream.read(complete).await;
    // How a catch-up is cut into responses (and so their header revisions) depends on when
    // the writes raced the catch-up, in etcd too: compare each watch's responses without
    // events exactly, and its events concatenated in order.
    assert_eq!(
        unbatched(&got),
        unbatched(&want),
        "catch-up and compacted watch streams"
    );

    // HashKV (spec §4.11): the key bucket must be byte-identical.
    for rev in [0, (compact + 1 + final_rev) / 2] {
        if rev != 0 && rev <= compact {
            continue;
        }
        let req = pb::HashKvRequest { revision: rev };
        let mut want = message_json(
            "etcdserverpb.HashKVResponse",
            etcd.maint
                .hash_kv(req)
                .await
                .expect("etcd hashkv")
                .get_ref(),
        );
        let mut got = message_json(
            "etcdserverpb.HashKVResponse",
            ours.maint
                .hash_kv(req)
                .await
                .expect("ringkv hashkv")
                .get_ref(),
        );
        normalise(&mut want, None);
        normalise(&mut got, None);
        assert_eq!(got, want, "HashKV at revision {rev}");
    }
}

//! Differential test against real etcd 3.4 (spec §4, §7): the same random sequence of
//! puts, deletes, txns, ranges with every option, compactions, lease grants/revokes and
//! TimeToLive goes to etcd's HTTP/JSON gateway and to an in-process `MvccStore`; every response
//! must be identical field by field (headers' revision included; cluster/member IDs and term
//! normalised), and so must the watch streams.
//!
//! Fails (never skips) when `etcd` is missing.

use std::time::{Duration, Instant};

use crossbeam_channel::bounded;
use serde_json::{Value, json};

use ringkv_engine::pb::etcdserverpb as pb;
use ringkv_engine::{HeaderIds, Lessor, MemStorage, MvccStore};
use ringkv_tests::{
    EtcdProcess, Op, OpGen, WatchStreamReader, apply_to_store, message_json, normalise_headers,
    op_request_json,
};

const OPS: usize = 1200;

fn normalise(v: &mut Value, op: &Op) {
    normalise_headers(v);
    // Remaining TTL depends on two clocks; its presence still compares.
    if matches!(op, Op::LeaseTimeToLive(_))
        && let Some(t) = v.get_mut("TTL")
        && t != "-1"
    {
        *t = json!("*");
    }
    // etcd lists a lease's keys in Go map order (unspecified); compare them as a set.
    if let Some(Value::Array(keys)) = v.get_mut("keys") {
        keys.sort_by_key(|k| k.to_string());
    }
}

/// Reads etcd's watch lines until `done` says the stream is complete or 10 s pass.
fn read_watch(r: &WatchStreamReader, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut out = Vec::new();
    while !done(&out) && Instant::now() < deadline {
        if let Ok(line) = r.lines.recv_timeout(Duration::from_millis(100)) {
            let mut v: Value = serde_json::from_str(&line).expect("watch line is JSON");
            normalise_headers(&mut v);
            out.push(v);
        }
    }
    out
}

fn wrap(resps: Vec<pb::WatchResponse>) -> Vec<Value> {
    resps
        .into_iter()
        .map(|r| {
            let mut v = json!({ "result": message_json("etcdserverpb.WatchResponse", &r) });
            normalise_headers(&mut v);
            v
        })
        .collect()
}

fn last_event_rev(v: &[Value]) -> i64 {
    v.iter()
        .filter_map(|x| x["result"]["events"].as_array())
        .flatten()
        .filter_map(|e| e["kv"]["mod_revision"].as_str()?.parse().ok())
        .max()
        .unwrap_or(0)
}

fn by_watch_id(v: &[Value]) -> std::collections::BTreeMap<String, Vec<Value>> {
    let mut m = std::collections::BTreeMap::<String, Vec<Value>>::new();
    for x in v {
        let id = x["result"]["watch_id"].as_str().unwrap_or("0").to_string();
        m.entry(id).or_default().push(x.clone());
    }
    m
}

#[test]
fn random_ops_match_etcd() {
    let etcd = EtcdProcess::start();
    let mut store = MvccStore::open(MemStorage::new(), Lessor::default()).expect("open");
    store.set_header_ids(HeaderIds {
        cluster_id: 1,
        member_id: 2,
        raft_term: 3,
    });
    store.lease_promote(Instant::now(), Duration::ZERO);

    // A live watch on every key with prev_kv, on both sides.
    let create = pb::WatchCreateRequest {
        key: "\0".into(),
        range_end: "\0".into(),
        prev_kv: true,
        ..Default::default()
    };
    let create_json = json!({ "create_request":
        message_json("etcdserverpb.WatchCreateRequest", &create) });
    let etcd_watch =
        WatchStreamReader::open(etcd.client_port, &create_json.to_string()).expect("watch");
    let first = read_watch(&etcd_watch, |v| !v.is_empty());
    let (tx, rx) = bounded(100_000);
    let st = store.watch_open_stream(tx);
    store.watch_create(st, &create);
    assert_eq!(
        wrap(rx.try_iter().collect()),
        first,
        "watch created response"
    );

    let seed = std::env::var("DIFF_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_0004u64);
    let mut generator = OpGen::new(seed);
    for i in 0..OPS {
        let op = generator.next_op();
        let (path, body) = op_request_json(&op);
        let resp = etcd.post(path, &body.to_string());
        let mut want: Value = serde_json::from_str(&resp.body)
            .unwrap_or_else(|e| panic!("etcd answered non-JSON ({e}): {}", resp.body));
        assert_eq!(
            resp.status == 200,
            want.get("error").is_none(),
            "status {} for {}",
            resp.status,
            resp.body
        );
        let mut got = apply_to_store(&mut store, &op, Instant::now());
        normalise(&mut want, &op);
        normalise(&mut got, &op);
        assert_eq!(
            got, want,
            "op #{i} (seed {seed:#x}) differs from etcd\nrequest {path} {body}"
        );
        if std::env::var("DIFF_TRACE").is_ok() {
            println!("{i} {path} {body}\n  => {got}");
        }
        generator.rev = store.current_revision();
        generator.compact = store.compact_revision();
        store.watch_sync();
    }

    // The live stream: every revision's events in one response, in the same order.
    let final_rev = store.current_revision();
    let ours = wrap(rx.try_iter().collect());
    let theirs = read_watch(&etcd_watch, |v| last_event_rev(v) >= final_rev);
    assert_eq!(ours.len(), theirs.len(), "number of live watch responses");
    for (i, (a, b)) in ours.iter().zip(&theirs).enumerate() {
        assert_eq!(a, b, "live watch response #{i}");
    }

    // Catch-up streams: from the compaction revision (history), and from below it (canceled).
    let compact = store.compact_revision();
    let reqs = ringkv_tests::catch_up_watches(compact);
    let body: Vec<String> = reqs
        .iter()
        .map(|r| {
            json!({ "create_request": message_json("etcdserverpb.WatchCreateRequest", r) })
                .to_string()
        })
        .collect();
    let (tx, rx) = bounded(100_000);
    let st = store.watch_open_stream(tx);
    for r in &reqs {
        store.watch_create(st, r);
    }
    while store.watch_sync() {}
    let ours = by_watch_id(&wrap(rx.try_iter().collect()));
    let want_n: usize = ours.values().map(Vec::len).sum();
    let r = WatchStreamReader::open(etcd.client_port, &body.join("\n")).expect("watch");
    let theirs = by_watch_id(&read_watch(&r, |v| v.len() >= want_n));
    assert_eq!(ours, theirs, "catch-up and compacted watch streams");

    // HashKV (spec §4.11) through etcdctl: the key bucket must be byte-identical. etcd
    // removes compacted revisions in the background right after each compaction (done by
    // now); when no revision is kept below the compaction revision, HashKV hashes whatever is
    // still in the bucket, so the store must finish its removal too.
    store.finish_compaction().expect("finish compaction");
    let cur = store.current_revision();
    for rev in [0, (compact + 1 + cur) / 2] {
        if rev != 0 && rev <= compact {
            continue;
        }
        let out = std::process::Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .args([
                "--endpoints",
                &format!("127.0.0.1:{}", etcd.client_port),
                "endpoint",
                "hashkv",
                "--rev",
                &rev.to_string(),
                "-w",
                "json",
            ])
            .output()
            .expect("etcdctl (apt-get install etcd-client; tests/run.sh installs it)");
        assert!(out.status.success(), "etcdctl hashkv: {out:?}");
        let v: Value = serde_json::from_slice(&out.stdout).expect("etcdctl json");
        let want = &v[0]["HashKV"];
        let got = store.hash_kv(rev).expect("hash_kv");
        assert_eq!(
            (
                json!(got.hash),
                json!(got.compact_revision),
                json!(got.header.unwrap().revision)
            ),
            (
                want["hash"].clone(),
                want["compact_revision"].clone(),
                want["header"]["revision"].clone()
            ),
            "HashKV at revision {rev}"
        );
    }
}

//! The same scenarios through the Rust `etcd-client` crate (a third-party tonic client built
//! from etcd's own protos): KV with options, txn, leases with keep-alive, watch with prev_kv,
//! compaction errors, maintenance, the Lock and Election services, and bad input with etcd's
//! gRPC codes and messages.

use etcd_client::{
    Client, CompactionOptions, Compare, CompareOp, DeleteOptions, GetOptions, LeaseGrantOptions,
    LeaseTimeToLiveOptions, PutOptions, Txn, TxnOp, WatchOptions,
};
use ringkv_tests::RingkvProcess;
use tonic::Code;

fn status_of(e: etcd_client::Error) -> (Code, String) {
    match e {
        etcd_client::Error::GRpcStatus(s) => (s.code(), s.message().to_string()),
        other => panic!("expected a gRPC status, got {other:?}"),
    }
}

async fn connect(node: &RingkvProcess) -> Client {
    Client::connect([format!("http://{}", node.endpoint())], None)
        .await
        .expect("connect")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_txn_lease_watch_and_maintenance_through_etcd_client() {
    let node = RingkvProcess::start(&[]);
    let mut c = connect(&node).await;

    let r = c.put("a", "1", None).await.expect("put");
    let first_rev = r.header().expect("header").revision();
    assert_eq!(first_rev, 2);
    let r = c
        .put("a", "2", Some(PutOptions::new().with_prev_key()))
        .await
        .expect("put prev");
    assert_eq!(r.prev_key().expect("prev").value(), b"1");
    c.put("a/b", "3", None).await.expect("put");
    c.put("b", "4", None).await.expect("put");
    let r = c
        .get("a", Some(GetOptions::new().with_prefix()))
        .await
        .expect("get prefix");
    assert_eq!(r.count(), 2);
    let keys: Vec<&[u8]> = r.kvs().iter().map(|kv| kv.key()).collect();
    assert_eq!(keys, vec![&b"a"[..], b"a/b"]);
    let r = c
        .get("a", Some(GetOptions::new().with_revision(first_rev)))
        .await
        .expect("get at revision");
    assert_eq!(r.kvs()[0].value(), b"1");
    let r = c
        .get(
            "",
            Some(
                GetOptions::new()
                    .with_all_keys()
                    .with_serializable()
                    .with_limit(1),
            ),
        )
        .await
        .expect("serializable get");
    assert_eq!((r.kvs().len(), r.count(), r.more()), (1, 3, true));

    // Txn: the compare decides the branch; the response revision is the txn's.
    let txn = Txn::new()
        .when([Compare::value("a", CompareOp::Equal, "2")])
        .and_then([TxnOp::put("t", "yes", None), TxnOp::get("a", None)])
        .or_else([TxnOp::put("t", "no", None)]);
    let r = c.txn(txn.clone()).await.expect("txn");
    assert!(r.succeeded());
    let t_rev = r.header().expect("header").revision();
    let r = c.get("t", None).await.expect("get t");
    assert_eq!(r.kvs()[0].value(), b"yes");
    assert_eq!(r.kvs()[0].mod_revision(), t_rev);
    c.put("a", "changed", None).await.expect("put");
    assert!(!c.txn(txn).await.expect("txn").succeeded());

    // Watch from the current revision with prev_kv; then write.
    let rev_now = c
        .get("x", None)
        .await
        .expect("get")
        .header()
        .expect("h")
        .revision();
    let mut stream = c
        .watch(
            "w",
            Some(
                WatchOptions::new()
                    .with_prefix()
                    .with_prev_key()
                    .with_start_revision(rev_now + 1),
            ),
        )
        .await
        .expect("watch");
    c.put("w1", "v1", None).await.expect("put");
    c.put("w1", "v2", None).await.expect("put");
    c.delete("w1", None).await.expect("delete");
    let mut events = Vec::new();
    while events.len() < 3 {
        let resp = tokio::time::timeout(std::time::Duration::from_secs(20), stream.message())
            .await
            .expect("watch event within 20 s")
            .expect("watch stream")
            .expect("not closed");
        for e in resp.events() {
            let kv = e.kv().expect("kv");
            events.push((
                format!("{:?}", e.event_type()),
                String::from_utf8_lossy(kv.value()).to_string(),
                e.prev_kv()
                    .map(|p| String::from_utf8_lossy(p.value()).to_string()),
            ));
        }
    }
    assert_eq!(
        events,
        vec![
            ("Put".to_string(), "v1".to_string(), None),
            ("Put".to_string(), "v2".to_string(), Some("v1".to_string())),
            ("Delete".to_string(), String::new(), Some("v2".to_string())),
        ]
    );

    // Leases: grant with an ID, attach, keep alive, time-to-live with keys, revoke.
    let id = 0x1234_5678;
    let g = c
        .lease_grant(60, Some(LeaseGrantOptions::new().with_id(id)))
        .await
        .expect("grant");
    assert_eq!((g.id(), g.ttl()), (id, 60));
    c.put("leased", "v", Some(PutOptions::new().with_lease(id)))
        .await
        .expect("put with lease");
    let (mut keeper, mut ka) = c.lease_keep_alive(id).await.expect("keep alive");
    keeper.keep_alive().await.expect("send keep-alive");
    let k = ka
        .message()
        .await
        .expect("keep-alive response")
        .expect("open");
    assert_eq!((k.id(), k.ttl()), (id, 60));
    let t = c
        .lease_time_to_live(id, Some(LeaseTimeToLiveOptions::new().with_keys()))
        .await
        .expect("ttl");
    assert_eq!(t.granted_ttl(), 60);
    assert_eq!(t.keys(), &[b"leased".to_vec()]);
    assert!(t.ttl() > 0 && t.ttl() <= 60);
    c.lease_revoke(id).await.expect("revoke");
    assert!(c.get("leased", None).await.expect("get").kvs().is_empty());
    let (code, msg) = status_of(c.lease_revoke(id).await.expect_err("revoked twice"));
    assert_eq!(
        (code, msg.as_str()),
        (Code::NotFound, "etcdserver: requested lease not found")
    );

    // Compaction and its errors.
    let cur = c
        .get("x", None)
        .await
        .expect("get")
        .header()
        .expect("h")
        .revision();
    c.compact(cur - 2, Some(CompactionOptions::new().with_physical()))
        .await
        .expect("compact");
    let (code, msg) = status_of(
        c.get("a", Some(GetOptions::new().with_revision(2)))
            .await
            .expect_err("compacted"),
    );
    assert_eq!(
        (code, msg.as_str()),
        (
            Code::OutOfRange,
            "etcdserver: mvcc: required revision has been compacted"
        )
    );
    let (code, msg) = status_of(
        c.get("a", Some(GetOptions::new().with_revision(cur + 100)))
            .await
            .expect_err("future"),
    );
    assert_eq!(
        (code, msg.as_str()),
        (
            Code::OutOfRange,
            "etcdserver: mvcc: required revision is a future revision"
        )
    );

    // Maintenance and cluster.
    let s = c.status().await.expect("status");
    let member = s.header().expect("header").member_id();
    assert_eq!(s.leader(), member);
    assert!(s.raft_index() >= s.raft_applied_index() && s.raft_applied_index() > 0);
    assert!(s.db_size() > 0);
    let ml = c.member_list().await.expect("member list");
    assert_eq!(ml.members().len(), 1);
    assert_eq!(ml.members()[0].id(), member);
    let h1 = c.hash_kv(0).await.expect("hashkv").hash();
    assert_eq!(c.hash_kv(0).await.expect("hashkv").hash(), h1);
    c.defragment().await.expect("defrag");
    let mut snap = c.snapshot().await.expect("snapshot");
    let mut total = 0usize;
    while let Some(m) = snap.message().await.expect("snapshot chunk") {
        total += m.blob().len();
    }
    assert!(total > 32, "snapshot bytes plus the SHA-256 trailer");

    // Bad input: etcd's codes and messages.
    let (code, msg) = status_of(c.put("", "v", None).await.expect_err("empty key"));
    assert_eq!(
        (code, msg.as_str()),
        (Code::InvalidArgument, "etcdserver: key is not provided")
    );
    let (code, msg) = status_of(
        c.put("k", "v", Some(PutOptions::new().with_lease(999)))
            .await
            .expect_err("unknown lease"),
    );
    assert_eq!(
        (code, msg.as_str()),
        (Code::NotFound, "etcdserver: requested lease not found")
    );
    let ops: Vec<TxnOp> = (0..129)
        .map(|i| TxnOp::put(format!("k{i}"), "v", None))
        .collect();
    let (code, msg) = status_of(c.txn(Txn::new().and_then(ops)).await.expect_err("129 ops"));
    assert_eq!(
        (code, msg.as_str()),
        (
            Code::InvalidArgument,
            "etcdserver: too many operations in txn request"
        )
    );
    let dup = Txn::new().and_then([TxnOp::put("d", "1", None), TxnOp::put("d", "2", None)]);
    let (code, msg) = status_of(c.txn(dup).await.expect_err("duplicate"));
    assert_eq!(
        (code, msg.as_str()),
        (
            Code::InvalidArgument,
            "etcdserver: duplicate key given in txn request"
        )
    );
    let big = vec![b'x'; 2 * 1024 * 1024];
    let (code, _) = status_of(c.put("big", big, None).await.expect_err("oversize"));
    assert!(
        code == Code::InvalidArgument || code == Code::ResourceExhausted,
        "{code:?}"
    );
    // Still serving.
    let r = c
        .delete("b", Some(DeleteOptions::new().with_prev_key()))
        .await
        .expect("delete");
    assert_eq!(r.deleted(), 1);
    assert_eq!(r.prev_kvs()[0].value(), b"4");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_and_election_services() {
    let node = RingkvProcess::start(&[]);
    let mut c = connect(&node).await;
    let lease = c.lease_grant(30, None).await.expect("grant").id();
    let l = c
        .lock(
            "mylock",
            Some(etcd_client::LockOptions::new().with_lease(lease)),
        )
        .await
        .expect("lock");
    let key = l.key().to_vec();
    assert!(key.starts_with(b"mylock/"));
    assert_eq!(
        c.get(key.clone(), None).await.expect("get").kvs()[0].lease(),
        lease
    );
    c.unlock(key.clone()).await.expect("unlock");
    assert!(c.get(key, None).await.expect("get").kvs().is_empty());

    let r = c
        .campaign("myelection", "candidate", lease)
        .await
        .expect("campaign");
    let leader = r.leader().expect("leader key");
    assert!(leader.key().starts_with(b"myelection/"));
    let got = c.leader("myelection").await.expect("leader");
    assert_eq!(got.kv().expect("kv").value(), b"candidate");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundreds_of_watchers_on_one_stream_all_deliver() {
    // More watchers than tokio's default blocking-pool cap (512).
    const N: usize = 600;
    let node = RingkvProcess::start(&[]);
    let mut c = connect(&node).await;
    let mut stream = c.watch("w0", None).await.expect("watch");
    for i in 1..N {
        stream
            .watch(format!("w{i}"), None)
            .await
            .expect("add watcher");
    }
    // Every created response arrives before the events.
    let mut created = 0;
    while created < N {
        let r = stream.message().await.expect("stream").expect("open");
        assert!(r.created(), "{r:?}");
        created += 1;
    }
    c.put(format!("w{}", N - 1), "last", None)
        .await
        .expect("put");
    c.put("w0", "first", None).await.expect("put");
    let mut got = Vec::new();
    while got.len() < 2 {
        let r = tokio::time::timeout(std::time::Duration::from_secs(20), stream.message())
            .await
            .expect("events within 20 s")
            .expect("stream")
            .expect("open");
        for e in r.events() {
            got.push(String::from_utf8_lossy(e.kv().expect("kv").value()).to_string());
        }
    }
    assert_eq!(got, vec!["last".to_string(), "first".to_string()]);
}

//! In-process tests of the node over the fault-injecting VFS: every write the node
//! acknowledged survives a power cut (WAL replay from the backend's consistent index, spec
//! §11's double-apply impossible), whatever unsynced sectors the disk kept.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ringkv_engine::pb::etcdserverpb::{PutRequest, RangeRequest};
use ringkv_engine::{CrashMode, FaultVfs, IoKind, Vfs};

use super::{NodeOptions, RaftBackedNode};
use crate::config::AutoCompaction;
use crate::node::{Caller, EtcdNode};

fn opts(vfs: Arc<dyn Vfs>) -> NodeOptions {
    NodeOptions {
        data_dir: PathBuf::from("/data/n1"),
        name: "n1".into(),
        member_id: 0x2e1259d415f2a040,
        cluster_id: 0x48276a8f75b6a87,
        peer_urls: vec!["http://127.0.0.1:23800".into()],
        client_urls: vec!["http://127.0.0.1:23790".into()],
        heartbeat: Duration::from_millis(10),
        election_timeout: Duration::from_millis(100),
        quota_backend_bytes: None,
        auto_compaction: AutoCompaction::Off,
        max_request_bytes: 1_572_864,
        progress_notify_interval: Duration::from_secs(600),
        lease_checkpoint: false,
        io: IoKind::Std,
        vfs: Some(vfs),
    }
}

async fn open(vfs: Arc<dyn Vfs>) -> RaftBackedNode {
    let node = RaftBackedNode::open(opts(vfs)).expect("open node");
    assert!(node.wait_leader(Duration::from_secs(20)).await, "leader");
    node
}

/// Every key with its (value, create, mod, version), read serializably.
async fn dump(node: &RaftBackedNode) -> (i64, Vec<(Bytes, Bytes, i64, i64, i64)>) {
    let r = node
        .range(
            &Caller::default(),
            RangeRequest {
                key: Bytes::from_static(b"\0"),
                range_end: Bytes::from_static(b"\0"),
                serializable: true,
                ..Default::default()
            },
        )
        .await
        .expect("range");
    let rev = r.header.as_ref().expect("header").revision;
    let kvs = r
        .kvs
        .into_iter()
        .map(|kv| {
            (
                kv.key,
                kv.value,
                kv.create_revision,
                kv.mod_revision,
                kv.version,
            )
        })
        .collect();
    (rev, kvs)
}

async fn write_and_cut(vfs: &FaultVfs, n: usize) -> (i64, Vec<(Bytes, Bytes, i64, i64, i64)>) {
    let node = open(Arc::new(vfs.clone())).await;
    for i in 0..n {
        // Overwrites: a replayed put applied twice would bump version and revision.
        let req = PutRequest {
            key: Bytes::from(format!("k{}", i % 7)),
            value: Bytes::from(format!("v{i}")),
            ..Default::default()
        };
        node.put(&Caller::default(), req).await.expect("put");
    }
    let acked = dump(&node).await;
    vfs.power_cut();
    // The cut makes the final commit fail: the node reports it.
    assert!(node.close().is_err());
    acked
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn power_cut_keeps_every_acknowledged_write_exactly_once() {
    let vfs = FaultVfs::new();
    let acked = write_and_cut(&vfs, 120).await;
    assert_eq!(acked.0, 121);
    for mode in [
        CrashMode::LoseUnsynced,
        CrashMode::RandomSectors { seed: 1 },
        CrashMode::RandomSectors { seed: 7 },
    ] {
        let image = vfs.crash_image(mode);
        let node = open(Arc::new(image.clone())).await;
        assert_eq!(dump(&node).await, acked, "{mode:?}");
        // And it goes on from the same revision.
        let r = node
            .put(
                &Caller::default(),
                PutRequest {
                    key: Bytes::from_static(b"after"),
                    value: Bytes::from_static(b"x"),
                    ..Default::default()
                },
            )
            .await
            .expect("put after restart");
        assert_eq!(r.header.expect("header").revision, acked.0 + 1);
        node.close().expect("clean close");
    }
}

/// Linearizable reads racing writes: every read sees at least every write acknowledged
/// before it started, each reader's revisions never go back, and concurrent reads share
/// ReadIndex rounds (read_gate.rs) instead of sending one each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn linearizable_reads_racing_writes_see_every_acknowledged_write() {
    use std::sync::atomic::{AtomicI64, Ordering};

    let node = open(Arc::new(FaultVfs::new())).await;
    // The newest revision acknowledged, and per writer the newest value acknowledged.
    let acked = Arc::new(AtomicI64::new(1));
    let values: Arc<[AtomicI64; 3]> = Arc::new(std::array::from_fn(|_| AtomicI64::new(-1)));
    let put = |node: RaftBackedNode,
               acked: Arc<AtomicI64>,
               values: Arc<[AtomicI64; 3]>,
               w: usize| async move {
        for i in 0..40 {
            let r = node
                .put(
                    &Caller::default(),
                    PutRequest {
                        key: Bytes::from(format!("k{w}")),
                        value: Bytes::from(format!("{i}")),
                        ..Default::default()
                    },
                )
                .await
                .expect("put");
            acked.fetch_max(r.header.expect("header").revision, Ordering::AcqRel);
            values[w].store(i, Ordering::Release);
        }
    };
    let read = |node: RaftBackedNode, acked: Arc<AtomicI64>, values: Arc<[AtomicI64; 3]>| async move {
        let mut last = 0;
        for _ in 0..60 {
            let floor = acked.load(Ordering::Acquire);
            let value_floor: Vec<i64> = values.iter().map(|v| v.load(Ordering::Acquire)).collect();
            let r = node
                .range(
                    &Caller::default(),
                    RangeRequest {
                        key: Bytes::from_static(b"k"),
                        range_end: Bytes::from_static(b"l"),
                        ..Default::default()
                    },
                )
                .await
                .expect("linearizable range");
            let rev = r.header.expect("header").revision;
            assert!(
                rev >= floor,
                "read at {rev} missed a write acknowledged at {floor}"
            );
            assert!(rev >= last, "reader went back from {last} to {rev}");
            for kv in &r.kvs {
                assert!(kv.mod_revision <= rev);
            }
            // The values themselves (read from the backend, through the overlay while a
            // background commit runs) are at least the acknowledged ones.
            for (w, min) in value_floor.iter().enumerate() {
                let key = format!("k{w}");
                let got = r
                    .kvs
                    .iter()
                    .find(|kv| kv.key.as_ref() == key.as_bytes())
                    .map(|kv| {
                        std::str::from_utf8(&kv.value)
                            .expect("utf8")
                            .parse::<i64>()
                            .expect("number")
                    });
                assert!(
                    got.unwrap_or(-1) >= *min,
                    "read at {rev} saw {key} = {got:?}, acknowledged {min}"
                );
            }
            last = rev;
        }
    };
    let mut tasks = Vec::new();
    for w in 0..3 {
        tasks.push(tokio::spawn(put(
            node.clone(),
            acked.clone(),
            values.clone(),
            w,
        )));
    }
    for _ in 0..4 {
        tasks.push(tokio::spawn(read(
            node.clone(),
            acked.clone(),
            values.clone(),
        )));
    }
    for t in tasks {
        t.await.expect("task");
    }
    let final_rev = dump(&node).await.0;
    assert_eq!(final_rev, 1 + 3 * 40);
    // Every acknowledged put went through the three timed stages once (stages.rs).
    let m = node.metrics();
    for (stage, h) in [
        ("commit", &m.proposal_commit),
        ("apply", &m.proposal_apply),
        ("reply", &m.proposal_reply),
    ] {
        assert_eq!(h.count, 3 * 40, "{stage} observations");
    }
    assert!(m.proposal_commit.sum_seconds > 0.0);

    // 200 reads polled together: the first starts a round, the others join the next ones.
    let before = node.inner.read_gate.rounds();
    let caller = Caller::default();
    let reads = (0..200).map(|_| {
        node.range(
            &caller,
            RangeRequest {
                key: Bytes::from_static(b"k0"),
                ..Default::default()
            },
        )
    });
    for r in futures_util::future::join_all(reads).await {
        assert_eq!(r.expect("range").kvs.len(), 1);
    }
    let rounds = node.inner.read_gate.rounds() - before;
    assert!(
        (1..50).contains(&rounds),
        "200 concurrent reads took {rounds} ReadIndex rounds"
    );
    node.close().expect("clean close");
}

/// The background commit of shared_writer.rs: writes made while it runs are visible through
/// the overlay (get and every shape of scan), are not part of that commit, and land in the
/// writer afterwards; a synchronous commit overtaking it makes its step 2 a no-op.
#[test]
fn background_commit_keeps_later_writes_visible_and_out_of_the_commit() {
    use ringkv_engine::{
        Backend, BackendOptions, BatchWrite, Bucket, KvRead, META_CONSISTENT_INDEX,
    };

    use super::shared_writer::NodeBackend;

    let vfs: Arc<dyn Vfs> = Arc::new(FaultVfs::new());
    vfs.create_dir_all(std::path::Path::new("/d")).expect("dir");
    let backend = Backend::open(
        vfs,
        std::path::Path::new("/d/db"),
        BackendOptions {
            batch_ops: usize::MAX,
            batch_interval: Duration::MAX,
            ..BackendOptions::default()
        },
    )
    .expect("open backend");
    let mut nb = NodeBackend::new(backend.clone(), backend.batch().expect("writer"));
    let k = Bucket::Key;
    let all = |nb: &NodeBackend, start: &[u8], end: &[u8], limit: usize| {
        let mut out = Vec::new();
        nb.scan(k, start, end, &mut |key, v| {
            out.push((key.to_vec(), v.to_vec()));
            out.len() < limit
        })
        .expect("scan");
        out
    };
    let kv = |k: &str, v: &str| (k.as_bytes().to_vec(), v.as_bytes().to_vec());
    for (key, v) in [("a", "1"), ("b", "2"), ("d", "4")] {
        nb.put(k, key.as_bytes(), v.as_bytes()).expect("put");
    }
    nb.put(Bucket::Meta, b"other", b"m").expect("put meta");

    let pending = nb
        .begin_commit(5)
        .expect("begin")
        .expect("no commit running");
    assert!(
        nb.begin_commit(6).expect("begin").is_none(),
        "one at a time"
    );
    nb.put(k, b"c", b"3").expect("put");
    nb.delete(k, b"b").expect("delete");
    nb.put(k, b"a", b"10").expect("put");
    nb.put(k, b"e", b"5").expect("put");
    assert_eq!(nb.side_len(), 4);
    assert_eq!(nb.get(k, b"a").expect("get"), Some(b"10".to_vec()));
    assert_eq!(nb.get(k, b"b").expect("get"), None);
    assert_eq!(nb.get(k, b"d").expect("get"), Some(b"4".to_vec()));
    let merged = vec![kv("a", "10"), kv("c", "3"), kv("d", "4"), kv("e", "5")];
    assert_eq!(all(&nb, b"", b"", usize::MAX), merged);
    assert_eq!(all(&nb, b"", b"", 2), merged[..2].to_vec(), "early stop");
    assert_eq!(all(&nb, b"b", b"d", usize::MAX), vec![kv("c", "3")]);
    assert_eq!(all(&nb, b"d", b"", usize::MAX), merged[2..].to_vec());
    assert_eq!(
        nb.get(Bucket::Meta, b"other").expect("get"),
        Some(b"m".to_vec())
    );

    let txid = backend.stats().txid;
    pending.run().expect("commit");
    assert_eq!(backend.stats().txid, txid + 1);
    // The commit holds exactly the writes before step 1, with consistent index 5.
    let snap = backend.snapshot();
    assert_eq!(snap.get(k, b"a").expect("get"), Some(b"1".to_vec()));
    assert_eq!(snap.get(k, b"b").expect("get"), Some(b"2".to_vec()));
    assert_eq!(snap.get(k, b"c").expect("get"), None);
    assert_eq!(
        snap.get(Bucket::Meta, META_CONSISTENT_INDEX).expect("get"),
        Some(5u64.to_be_bytes().to_vec())
    );
    drop(snap);
    nb.finish_commit().expect("finish");
    assert_eq!(nb.side_len(), 0);
    assert_eq!(all(&nb, b"", b"", usize::MAX), merged);
    assert_eq!(
        backend.snapshot().get(k, b"a").expect("get"),
        Some(b"10".to_vec())
    );

    // A synchronous commit overtakes a background one: it commits everything (overlay
    // included) and the background step 2 then commits nothing.
    let pending = nb
        .begin_commit(7)
        .expect("begin")
        .expect("no commit running");
    nb.put(k, b"f", b"6").expect("put");
    nb.commit_all(8).expect("sync commit");
    assert_eq!(nb.side_len(), 0);
    nb.put(k, b"g", b"7")
        .expect("put after the sync commit goes to the writer");
    assert_eq!(nb.side_len(), 0);
    let txid = backend.stats().txid;
    pending.run().expect("overtaken commit");
    assert_eq!(
        backend.stats().txid,
        txid,
        "the overtaken commit must not commit"
    );
    nb.finish_commit().expect("finish");
    let snap = backend.snapshot();
    assert_eq!(snap.get(k, b"f").expect("get"), Some(b"6".to_vec()));
    assert_eq!(
        snap.get(Bucket::Meta, META_CONSISTENT_INDEX).expect("get"),
        Some(8u64.to_be_bytes().to_vec())
    );
}

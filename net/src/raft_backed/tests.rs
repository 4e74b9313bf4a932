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
        cluster: Default::default(),
        snapshot_count: 100_000,
        max_snapshots: 5,
        max_wals: 5,
        wal_segment_size: None,
        wal_io: None,
        threads: Default::default(),
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
    // A write after the cut cannot be made durable: it fails, the node fails with it (its WAL
    // refuses further appends) and reports it at close. (Whether the close's own backend
    // commit has anything left to write depends on whether the periodic commit ran since the
    // last put, i.e. on timing: the failed write is what makes the outcome deterministic.)
    let req = PutRequest {
        key: Bytes::from_static(b"after-the-cut"),
        value: Bytes::from_static(b"lost"),
        ..Default::default()
    };
    let lost = node.put(&Caller::default(), req).await;
    assert!(
        lost.is_err(),
        "a put after the power cut succeeded: {lost:?}"
    );
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

fn snap_opts(vfs: Arc<dyn Vfs>, dir: &str) -> NodeOptions {
    NodeOptions {
        data_dir: PathBuf::from(dir),
        snapshot_count: 20,
        max_snapshots: 3,
        max_wals: 2,
        wal_segment_size: Some(16 * 1024),
        ..opts(vfs)
    }
}

async fn put(node: &RaftBackedNode, key: String, value: String) -> i64 {
    let r = node
        .put(
            &Caller::default(),
            PutRequest {
                key: Bytes::from(key),
                value: Bytes::from(value),
                ..Default::default()
            },
        )
        .await
        .expect("put");
    r.header.expect("header").revision
}

fn names(vfs: &dyn Vfs, dir: &str) -> Vec<String> {
    let mut v: Vec<String> = vfs
        .list_dir(std::path::Path::new(dir))
        .unwrap()
        .into_iter()
        .map(|n| n.to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn copy_file(vfs: &dyn Vfs, from: &std::path::Path, to: &std::path::Path) {
    use ringkv_engine::OpenOptions;
    let src = vfs.open(from, OpenOptions::read_only()).unwrap();
    let mut buf = vec![0u8; src.size().unwrap() as usize];
    src.read_exact_at(&mut buf, 0).unwrap();
    let dst = vfs
        .open(to, OpenOptions::read_write().create(true))
        .unwrap();
    dst.write_at_and_sync(&buf, 0).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_purge_the_wal_and_a_power_cut_restarts_from_them() {
    let vfs = FaultVfs::new();
    let node = RaftBackedNode::open(snap_opts(Arc::new(vfs.clone()), "/data/s")).unwrap();
    assert!(node.wait_leader(Duration::from_secs(20)).await);
    let pad = "x".repeat(120);
    for i in 0..400 {
        put(&node, format!("k{}", i % 13), format!("{i}{pad}")).await;
        if i % 100 == 99 {
            // Let a backend commit happen (every 100 ms): snapshots follow durable progress.
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
    }
    let acked = dump(&node).await;
    let snaps: Vec<String> = names(&vfs, "/data/s/member/snap")
        .into_iter()
        .filter(|n| n.ends_with(".snap"))
        .collect();
    assert!(!snaps.is_empty() && snaps.len() <= 3, "{snaps:?}");
    // 400 entries of ~200 bytes fill ~5 segments of 16 KiB: the old ones go (the purge runs
    // on the snapshot thread, after the snapshot is durable).
    let segments = || -> Vec<String> {
        names(&vfs, "/data/s/member/wal")
            .into_iter()
            .filter(|n| n.ends_with(".wal"))
            .collect()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while segments()[0].starts_with("0000000000000000-") && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let wal = segments();
    assert!(
        !wal.iter().any(|n| n.starts_with("0000000000000000-")),
        "segment 0 was never purged: {wal:?} {snaps:?}"
    );
    assert!(wal.len() <= 4, "{wal:?}");
    vfs.power_cut();
    let _ = node.close();
    for mode in [
        CrashMode::LoseUnsynced,
        CrashMode::RandomSectors { seed: 3 },
    ] {
        let image = vfs.crash_image(mode);
        let node = RaftBackedNode::open(snap_opts(Arc::new(image.clone()), "/data/s"))
            .unwrap_or_else(|e| panic!("{mode:?}: {e}"));
        assert!(node.wait_leader(Duration::from_secs(20)).await);
        assert_eq!(dump(&node).await, acked, "{mode:?}");
        assert_eq!(put(&node, "after".into(), "y".into()).await, acked.0 + 1);
        node.close().expect("clean close");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_after_the_snapshot_file_before_its_wal_marker() {
    let vfs = FaultVfs::new();
    let node = RaftBackedNode::open(snap_opts(Arc::new(vfs.clone()), "/data/m")).unwrap();
    assert!(node.wait_leader(Duration::from_secs(20)).await);
    for i in 0..10 {
        put(&node, format!("k{i}"), "v".into()).await;
    }
    node.close().unwrap();
    // After a clean close the backend holds every entry; the last one has the current term.
    let (index, term) = {
        let node = RaftBackedNode::open(snap_opts(Arc::new(vfs.clone()), "/data/m")).unwrap();
        assert!(node.wait_leader(Duration::from_secs(20)).await);
        put(&node, "last".into(), "v".into()).await;
        let term = node
            .inner
            .raft()
            .progress()
            .term
            .load(std::sync::atomic::Ordering::Acquire);
        node.close().unwrap();
        let b = ringkv_engine::Backend::open(
            Arc::new(vfs.clone()),
            std::path::Path::new("/data/m/member/snap/db"),
            super::snapshot::backend_options(),
        )
        .unwrap();
        (super::snapshot::consistent_index(&b).unwrap(), term)
    };
    let before = {
        let node = RaftBackedNode::open(snap_opts(Arc::new(vfs.clone()), "/data/m")).unwrap();
        assert!(node.wait_leader(Duration::from_secs(20)).await);
        let d = dump(&node).await;
        node.close().unwrap();
        d
    };
    // What the snapshot thread leaves when a crash follows the metadata file: no WAL marker,
    // no purge.
    ringkv_engine::SnapDir::new(
        Arc::new(vfs.clone()),
        std::path::Path::new("/data/m/member/snap"),
    )
    .save(&ringkv_engine::SnapshotMeta {
        index,
        term,
        conf_state: ringkv_engine::RaftConfState::from((vec![0x2e1259d415f2a040], vec![])),
    })
    .unwrap();
    vfs.power_cut();
    let image = vfs.crash_image(CrashMode::LoseUnsynced);
    for _ in 0..2 {
        // Twice: the first open writes the marker, the second replays with it.
        let node = RaftBackedNode::open(snap_opts(Arc::new(image.clone()), "/data/m")).unwrap();
        assert!(node.wait_leader(Duration::from_secs(20)).await);
        let mut now = dump(&node).await;
        now.1.retain(|kv| kv.0 != "again");
        assert_eq!(now.1, before.1);
        put(&node, "again".into(), "v".into()).await;
        node.close().unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_received_backend_file_is_checked_and_installed() {
    let vfs = FaultVfs::new();
    let dyn_vfs: Arc<dyn Vfs> = Arc::new(vfs.clone());
    // The "leader": some history, then closed so its file is consistent.
    let leader = RaftBackedNode::open(snap_opts(dyn_vfs.clone(), "/data/a")).unwrap();
    assert!(leader.wait_leader(Duration::from_secs(20)).await);
    for i in 0..30 {
        put(&leader, format!("k{}", i % 4), format!("leader{i}")).await;
    }
    let want = dump(&leader).await;
    leader.close().unwrap();
    let a_db = std::path::Path::new("/data/a/member/snap/db");
    let index = {
        let b =
            ringkv_engine::Backend::open(dyn_vfs.clone(), a_db, super::snapshot::backend_options())
                .unwrap();
        super::snapshot::consistent_index(&b).unwrap()
    };
    let meta = ringkv_engine::SnapshotMeta {
        index,
        term: 2,
        conf_state: ringkv_engine::RaftConfState::from((vec![0x2e1259d415f2a040], vec![])),
    };
    // The "follower" has a history of its own, which the snapshot replaces.
    let follower = RaftBackedNode::open(snap_opts(dyn_vfs.clone(), "/data/b")).unwrap();
    assert!(follower.wait_leader(Duration::from_secs(20)).await);
    for i in 0..5 {
        put(&follower, format!("mine{i}"), "f".into()).await;
    }
    let own = dump(&follower).await;
    let received = follower.inner.snap_dir.db_path(index);
    // A damaged file is refused, named, and changes nothing.
    copy_file(&vfs, a_db, &received);
    {
        use ringkv_engine::OpenOptions;
        let f = vfs.open(&received, OpenOptions::read_write()).unwrap();
        let size = f.size().unwrap();
        let mut page = vec![0u8; 4096];
        // Damage every page after the metas: whichever holds the tree is hit.
        let mut off = 8192;
        while off + 4096 <= size {
            f.read_exact_at(&mut page, off).unwrap();
            page[100] ^= 0xff;
            f.write_at_and_sync(&page, off).unwrap();
            off += 4096;
        }
    }
    let err = follower.inner.restore_snapshot(&meta).unwrap_err();
    assert!(err.contains(&received.display().to_string()), "{err}");
    assert!(err.contains("offset") || err.contains("corrupt"), "{err}");
    assert_eq!(dump(&follower).await, own);
    // A watcher open across the install sees the leader's events after the revision it had
    // reached (etcd: synced watchers catch up from the restored store).
    let mut watcher = follower
        .watch(
            &Caller::default(),
            crate::node::WatchSpec {
                key: Bytes::from_static(b"k"),
                range_end: Bytes::from_static(b"l"),
                start_revision: 0,
                prev_kv: false,
                no_put: false,
                no_delete: false,
                progress_notify: false,
            },
        )
        .await
        .expect("watch");
    // The intact file is installed: the leader's keys and revisions, nothing of the follower's.
    copy_file(&vfs, a_db, &received);
    assert_eq!(follower.inner.restore_snapshot(&meta).unwrap(), index);
    assert_eq!(dump(&follower).await, want);
    {
        use tokio_stream::StreamExt;
        let mut seen = Vec::new();
        while seen.len() < (want.0 - own.0) as usize {
            let u = tokio::time::timeout(Duration::from_secs(10), watcher.updates.next())
                .await
                .expect("watch events within 10 s")
                .expect("watch open");
            if let crate::node::WatchUpdate::Events { events, .. } = u {
                seen.extend(events.into_iter().map(|e| e.kv.expect("kv").mod_revision));
            }
        }
        let want_revs: Vec<i64> = (own.0 + 1..=want.0).collect();
        assert_eq!(seen, want_revs);
    }
    assert!(
        !vfs.exists(&received),
        "the received file was renamed into place"
    );
    follower.close().unwrap();

    // A restart that finds the metadata file and a backend behind it installs the received
    // file itself (a crash cut the install short).
    let c_snap = std::path::Path::new("/data/c/member/snap");
    vfs.create_dir_all(c_snap).unwrap();
    copy_file(&vfs, a_db, &c_snap.join(format!("{index:016x}.snap.db")));
    ringkv_engine::SnapDir::new(dyn_vfs.clone(), std::path::Path::new("/data/c/member/snap"))
        .save(&meta)
        .unwrap();
    let node = RaftBackedNode::open(snap_opts(dyn_vfs.clone(), "/data/c")).unwrap();
    assert!(node.wait_leader(Duration::from_secs(20)).await);
    assert_eq!(dump(&node).await, want);
    assert_eq!(put(&node, "new".into(), "v".into()).await, want.0 + 1);
    node.close().unwrap();
    let node = RaftBackedNode::open(snap_opts(dyn_vfs, "/data/c")).unwrap();
    assert!(node.wait_leader(Duration::from_secs(20)).await);
    assert_eq!(dump(&node).await.0, want.0 + 1);
    node.close().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn power_cut_in_the_middle_of_snapshots_and_purges_keeps_acknowledged_writes() {
    let vfs = FaultVfs::new();
    let node = RaftBackedNode::open(snap_opts(Arc::new(vfs.clone()), "/data/p")).unwrap();
    assert!(node.wait_leader(Duration::from_secs(20)).await);
    let pad = "z".repeat(150);
    // 4 writers; the power goes while they (and the snapshot thread) are busy.
    let mut writers = tokio::task::JoinSet::new();
    for w in 0..4 {
        let node = node.clone();
        let pad = pad.clone();
        writers.spawn(async move {
            let mut acked = Vec::new();
            // Until the power goes (bounded).
            for j in 0..5000 {
                let key = format!("w{w}-{j:04}");
                let r = node
                    .put(
                        &Caller::default(),
                        PutRequest {
                            key: Bytes::from(key.clone()),
                            value: Bytes::from(format!("{j}{pad}")),
                            ..Default::default()
                        },
                    )
                    .await;
                match r {
                    Ok(r) => acked.push((key, r.header.expect("header").revision)),
                    Err(_) => break,
                }
            }
            acked
        });
    }
    // Cut once a few snapshots have been taken and the WAL was purged.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while (node
        .inner
        .raft()
        .progress()
        .snapshot_index
        .load(std::sync::atomic::Ordering::Acquire)
        < 300
        || names(&vfs, "/data/p/member/wal")[0].starts_with("0000000000000000-"))
        && std::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert!(
        !names(&vfs, "/data/p/member/wal")[0].starts_with("0000000000000000-"),
        "no purge before the cut"
    );
    vfs.power_cut();
    let mut acked = Vec::new();
    while let Some(r) = writers.join_next().await {
        acked.extend(r.expect("writer"));
    }
    let _ = node.close();
    assert!(
        acked.len() > 300,
        "only {} writes before the cut",
        acked.len()
    );
    for mode in [
        CrashMode::LoseUnsynced,
        CrashMode::RandomSectors { seed: 11 },
    ] {
        let image = vfs.crash_image(mode);
        let node = RaftBackedNode::open(snap_opts(Arc::new(image), "/data/p"))
            .unwrap_or_else(|e| panic!("{mode:?}: {e}"));
        assert!(node.wait_leader(Duration::from_secs(20)).await);
        let (_, kvs) = dump(&node).await;
        let have: std::collections::HashMap<Bytes, i64> =
            kvs.into_iter().map(|kv| (kv.0, kv.3)).collect();
        for (key, rev) in &acked {
            assert_eq!(
                have.get(key.as_bytes()),
                Some(rev),
                "{mode:?}: acknowledged {key} at revision {rev}"
            );
        }
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

    node.close().expect("clean close");
}

/// One ReadIndex round per batch of concurrent reads (read_gate.rs), checked without depending
/// on how fast rounds complete: apply is held up (the test holds the store's write lock while
/// a put is committed), so the first read's round cannot complete and every other read
/// arrives while it is pending. Those must all share one further round: 2 rounds for 200
/// reads. A gate that sent a round per read (or joined reads to the round in flight, which
/// would also break linearizability) would show 200 (or 1).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_arriving_while_a_round_is_pending_share_one_round() {
    use std::sync::atomic::Ordering;

    let node = open(Arc::new(FaultVfs::new())).await;
    let caller = Caller::default();
    node.put(
        &caller,
        PutRequest {
            key: Bytes::from_static(b"k0"),
            value: Bytes::from_static(b"v0"),
            ..Default::default()
        },
    )
    .await
    .expect("put");
    // A thread holds the store's write lock until told to let go: apply of the next put waits.
    let (holder, release_tx) = hold_store_lock(&node);
    let committed = || {
        node.inner
            .raft()
            .progress()
            .proposals_committed
            .load(Ordering::Acquire)
    };
    let before_put = committed();
    let put = tokio::spawn({
        let node = node.clone();
        async move {
            node.put(
                &Caller::default(),
                PutRequest {
                    key: Bytes::from_static(b"k0"),
                    value: Bytes::from_static(b"v1"),
                    ..Default::default()
                },
            )
            .await
        }
    });
    // The put is committed (durable in the WAL) and its apply is waiting for the lock; the
    // read index of any round started from now on covers it.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while committed() == before_put {
        assert!(
            std::time::Instant::now() < deadline,
            "the put was never committed"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let rounds_before = node.inner.read_gate.rounds();
    let reads = (0..200).map(|_| {
        node.range(
            &caller,
            RangeRequest {
                key: Bytes::from_static(b"k0"),
                ..Default::default()
            },
        )
    });
    let mut all = Box::pin(futures_util::future::join_all(reads));
    // One poll registers every read with the gate (nothing before the gate awaits).
    std::future::poll_fn(|cx| {
        assert!(
            all.as_mut().poll(cx).is_pending(),
            "reads done before apply"
        );
        std::task::Poll::Ready(())
    })
    .await;
    release_tx.send(()).expect("holder waits");
    holder.join().expect("lock holder");
    for r in all.await {
        let r = r.expect("range");
        // Linearizable: every read sees the put that was committed before it started.
        assert_eq!(r.kvs[0].value.as_ref(), b"v1");
    }
    put.await.expect("task").expect("put");
    let rounds = node.inner.read_gate.rounds() - rounds_before;
    assert_eq!(
        rounds, 2,
        "200 reads, all arriving while the first one's round was pending"
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

/// Every pair in `bucket` of the backend `b` reads.
fn bucket_pairs(
    b: &dyn ringkv_engine::KvRead,
    bucket: ringkv_engine::Bucket,
) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut out = Vec::new();
    b.scan(bucket, b"", b"", &mut |k, v| {
        out.push((k.to_vec(), v.to_vec()));
        true
    })
    .expect("scan");
    out
}

/// The backend copy behind snapshot transfers and Maintenance.Snapshot is read from a pinned
/// commit while the node keeps applying and committing: writes are acknowledged (and
/// committed to the backend, reusing freed pages) while the copy is half read, and the
/// finished copy is exactly the pinned state, its consistent index the one raft is told.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_complete_while_a_backend_copy_is_read_and_the_copy_is_consistent() {
    use std::io::Read;

    use ringkv_engine::{
        Backend, BackendOptions, Bucket, KvRead, META_CONSISTENT_INDEX, OpenOptions,
    };

    let vfs = FaultVfs::new();
    let node = RaftBackedNode::open(snap_opts(Arc::new(vfs.clone()), "/data/c")).unwrap();
    assert!(node.wait_leader(Duration::from_secs(20)).await);
    let pad = "v".repeat(300);
    for i in 0..600 {
        put(&node, format!("k{:04}", i % 300), format!("{i}{pad}")).await;
    }
    let mut copy = node.inner.copy_backend_at().expect("copy");
    let copy_index = copy.index;
    assert_eq!(
        copy.term,
        node.inner
            .applied_term
            .load(std::sync::atomic::Ordering::Acquire)
    );
    // Nothing writes between the pin and this read: the state the copy must hold.
    let (pinned_keys, pinned_meta) = {
        let store = node.inner.store.read();
        (
            bucket_pairs(store.backend(), Bucket::Key),
            bucket_pairs(store.backend(), Bucket::Meta),
        )
    };
    let mut bytes = Vec::new();
    let mut chunk = vec![0u8; 16 * 1024];
    let mut acked = 0;
    loop {
        let n = copy.data.read(&mut chunk).expect("read the copy");
        if n == 0 {
            break;
        }
        bytes.extend_from_slice(&chunk[..n]);
        // While the copy is being read: overwrite a batch of keys and commit the backend
        // (pages the pinned commit reads are freed by these commits).
        for i in 0..40 {
            put(
                &node,
                format!("k{:04}", (acked + i) % 300),
                format!("new{acked}{pad}"),
            )
            .await;
        }
        acked += 40;
        let mut store = node.inner.store.write();
        node.inner.commit_locked(&mut store);
    }
    assert!(
        acked >= 200,
        "only {acked} writes were acknowledged during the copy"
    );
    assert_eq!(bytes.len() as u64, copy.len);
    drop(copy);

    let path = std::path::Path::new("/data/c/copied-db");
    let f = vfs
        .open(path, OpenOptions::read_write().create(true))
        .unwrap();
    f.write_at_and_sync(&bytes, 0).unwrap();
    drop(f);
    let c = Backend::open(
        Arc::new(vfs.clone()),
        path,
        BackendOptions {
            mmap: false,
            ..Default::default()
        },
    )
    .expect("open the copy");
    let report = c.check();
    assert!(report.is_ok(), "{report:?}");
    let snap = c.snapshot();
    let ci = snap
        .get(Bucket::Meta, META_CONSISTENT_INDEX)
        .unwrap()
        .expect("consistent index");
    let ci = u64::from_be_bytes(ci.as_slice().try_into().unwrap());
    assert_eq!(ci, copy_index, "raft is told the index the copy holds");
    assert!(
        node.inner.store.read().consistent_index() > ci,
        "the node moved on"
    );
    assert_eq!(bucket_pairs(&snap, Bucket::Key), pinned_keys);
    assert_eq!(bucket_pairs(&snap, Bucket::Meta), pinned_meta);
    node.close().expect("clean close");
}

/// A lone member (the only voter, leading) takes its read index from its own commit index
/// instead of a ReadIndex round (`NodeProgress::local_read_index`), and the reads still see
/// every acknowledged write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_member_serves_linearizable_reads_without_a_round() {
    let node = open(Arc::new(FaultVfs::new())).await;
    let caller = Caller::default();
    let gate = &node.inner.read_gate;
    for i in 0..20 {
        let value = Bytes::from(format!("v{i}"));
        let put = node
            .put(
                &caller,
                PutRequest {
                    key: Bytes::from_static(b"k"),
                    value: value.clone(),
                    ..Default::default()
                },
            )
            .await
            .expect("put");
        let r = node
            .range(
                &caller,
                RangeRequest {
                    key: Bytes::from_static(b"k"),
                    ..Default::default()
                },
            )
            .await
            .expect("linearizable range");
        assert_eq!(r.kvs[0].value, value);
        assert!(r.header.unwrap().revision >= put.header.unwrap().revision);
    }
    // A read right after its put may find apply's progress not yet published (the waiter is
    // completed inside apply, before `progress.applied` moves) and take a round. Once apply has
    // caught up and no write is in flight, every read is local.
    let range = || {
        node.range(
            &caller,
            RangeRequest {
                key: Bytes::from_static(b"k"),
                ..Default::default()
            },
        )
    };
    range().await.expect("linearizable range");
    let (local_before, rounds_before) = (gate.local_reads(), gate.rounds());
    for _ in 0..20 {
        let r = range().await.expect("linearizable range");
        assert_eq!(r.kvs[0].value, Bytes::from_static(b"v19"));
    }
    assert_eq!(gate.rounds() - rounds_before, 0);
    assert_eq!(gate.local_reads() - local_before, 20);
    node.close().expect("clean close");
}

/// Batch entries (engine batch.rs): puts that reach the raft core in one turn go into one raft
/// entry, and each still gets its own revision (in arrival order) and its own outcome; one
/// that fails (unknown lease) fails alone. Deterministic: the core is held inside the inline
/// apply of an earlier put (the test holds the store's write lock), so every put of the batch
/// is queued before the core's next turn takes them all. After a power cut the entry replays
/// to the same state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn puts_reaching_the_core_in_one_turn_share_one_entry_and_keep_their_own_outcomes() {
    use std::sync::atomic::Ordering;

    let vfs = FaultVfs::new();
    let node = open(Arc::new(vfs.clone())).await;
    let caller = Caller::default();
    let first = put(&node, "k0".into(), "v0".into()).await;
    // The commit index is published at the end of the core's turn, which may come after the
    // put's reply: wait until it stands still at the applied index before reading it.
    let progress = node.inner.raft().progress().clone();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (c, a) = (progress.commit.load(Ordering::Acquire), progress.applied());
        tokio::time::sleep(Duration::from_millis(30)).await;
        if c == a && c == progress.commit.load(Ordering::Acquire) && a == progress.applied() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "commit index never settled"
        );
    }
    let (holder, release_tx) = hold_store_lock(&node);
    let commit_index = || progress.commit.load(Ordering::Acquire);
    let committed = || progress.proposals_committed.load(Ordering::Acquire);
    let before = commit_index();
    let before_requests = committed();
    let blocker = tokio::spawn({
        let node = node.clone();
        async move { put(&node, "k0".into(), "v1".into()).await }
    });
    // Committed (counted before it is applied; the commit index is published only after the
    // core's turn): the core is now applying it inline, waiting for the store lock.
    while committed() == before_requests {
        assert!(std::time::Instant::now() < deadline, "never committed");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let puts = (0..20).map(|i| {
        node.put(
            &caller,
            PutRequest {
                key: Bytes::from(format!("b{i}")),
                value: Bytes::from(format!("x{i}")),
                // Request 7 names a lease that does not exist.
                lease: if i == 7 { 0x1234 } else { 0 },
                ..Default::default()
            },
        )
    });
    let mut all = Box::pin(futures_util::future::join_all(puts));
    // One poll proposes every put, in order (each sends its proposal before it awaits).
    std::future::poll_fn(|cx| {
        assert!(all.as_mut().poll(cx).is_pending(), "puts done early");
        std::task::Poll::Ready(())
    })
    .await;
    release_tx.send(()).expect("holder waits");
    holder.join().expect("lock holder");
    assert_eq!(blocker.await.expect("task"), first + 1);
    let results = all.await;
    // The commit index is published at the end of the core's turn, maybe after the replies.
    while commit_index() - before < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "commit index not published"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        commit_index() - before,
        2,
        "the blocked put's entry and one batch entry"
    );
    assert_eq!(
        committed() - before_requests,
        21,
        "requests are counted one by one"
    );
    let mut expected = first + 2;
    for (i, r) in results.into_iter().enumerate() {
        if i == 7 {
            assert_eq!(
                r.expect_err("unknown lease"),
                crate::errors::EtcdError::LeaseNotFound
            );
            continue;
        }
        let rev = r.expect("put").header.expect("header").revision;
        assert_eq!(rev, expected, "put {i}: revisions in arrival order");
        expected += 1;
    }
    let acked = dump(&node).await;
    assert_eq!(acked.0, first + 20, "19 puts of the batch applied");
    assert!(!acked.1.iter().any(|kv| kv.0.as_ref() == b"b7"));
    vfs.power_cut();
    let _ = node.close();
    let image = vfs.crash_image(CrashMode::LoseUnsynced);
    let node = open(Arc::new(image)).await;
    assert_eq!(dump(&node).await, acked, "replayed to the same state");
    node.close().expect("clean close");
}

/// `encode_put` writes exactly the bytes of the `InternalRaftRequest` it stands for.
#[test]
fn encode_put_matches_the_internal_raft_request_encoding() {
    use prost::Message;
    use ringkv_engine::pb::etcdserverpb::{InternalRaftRequest, RequestHeader};
    let puts = [
        PutRequest::default(),
        PutRequest {
            key: Bytes::from_static(b"k"),
            value: Bytes::from(vec![7u8; 300]),
            lease: 0x1234_5678,
            prev_kv: true,
            ignore_value: false,
            ignore_lease: true,
        },
    ];
    for (id, put) in [(0u64, &puts[0]), (u64::MAX, &puts[1]), (42, &puts[1])] {
        let want = InternalRaftRequest {
            header: Some(RequestHeader {
                id,
                ..Default::default()
            }),
            put: Some(put.clone()),
            ..Default::default()
        }
        .encode_to_vec();
        assert_eq!(super::encode_put(id, put), want, "id {id}");
    }
}

/// The future a front-end call holds while its put waits stays small: it carries neither
/// the request message nor an `InternalRaftRequest` (a few KiB, moved with the future).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_put_holds_a_small_future() {
    let node = open(Arc::new(FaultVfs::new())).await;
    let caller = Caller::default();
    let internal = std::mem::size_of::<ringkv_engine::pb::etcdserverpb::InternalRaftRequest>();
    let fut = node.put(&caller, PutRequest::default());
    let size = std::mem::size_of_val(&fut);
    assert!(
        size < internal / 2 && size < 1024,
        "put future {size} bytes, InternalRaftRequest {internal}"
    );
    drop(fut);
    node.close().expect("clean close");
}

/// Starts a thread that takes the store's write lock and holds it until the returned sender
/// sends (or is dropped); returns once the lock is held, so the next apply waits.
fn hold_store_lock(
    node: &RaftBackedNode,
) -> (std::thread::JoinHandle<()>, std::sync::mpsc::Sender<()>) {
    let (locked_tx, locked_rx) = std::sync::mpsc::channel();
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let inner = node.inner.clone();
    let holder = std::thread::spawn(move || {
        let guard = inner.store.write();
        locked_tx.send(()).expect("test waits");
        let _ = release_rx.recv();
        drop(guard);
    });
    locked_rx.recv().expect("lock holder");
    (holder, release_tx)
}

#[test]
fn the_alarm_flag_follows_the_list() {
    use super::AlarmList;
    use ringkv_engine::pb::etcdserverpb::AlarmMember;
    let a = AlarmMember {
        member_id: 7,
        alarm: 1,
    };
    let list = AlarmList::new(Vec::new());
    assert!(!list.any());
    assert!(list.snapshot().is_empty());
    list.write().push(a);
    assert!(list.any());
    assert_eq!(list.snapshot(), vec![a]);
    list.write().clear();
    assert!(!list.any());
    assert!(list.snapshot().is_empty());
    *list.write() = vec![a, a];
    assert!(list.any());
    assert_eq!(list.read().len(), 2);
    assert!(AlarmList::new(vec![a]).any(), "a list opened with alarms");
}

#[test]
fn ids_hash_to_distinct_buckets_and_tags() {
    use std::hash::BuildHasher;
    let h = super::IdHash;
    let base = 0x0001_0000_0000_0000u64;
    let hashes: Vec<u64> = (0..1024).map(|i| h.hash_one(base + i)).collect();
    let mut low: Vec<u64> = hashes.iter().map(|x| x & 1023).collect();
    low.sort_unstable();
    low.dedup();
    assert_eq!(low.len(), 1024, "sequential IDs fill 1024 buckets");
    let tags: std::collections::HashSet<u64> = hashes.iter().map(|x| x >> 57).collect();
    assert!(tags.len() > 64, "top 7 bits vary: {}", tags.len());
}

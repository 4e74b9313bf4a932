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

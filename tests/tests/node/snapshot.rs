//! Raft snapshots (issue 6): with `--snapshot-count 100`, 2000 writes leave a few `.snap`
//! files and a purged WAL; a restart after SIGTERM and after kill -9 starts from the newest
//! snapshot and brings back every key with the same revisions.

use etcd_client::{Client, GetOptions};
use ringkv_tests::RingkvProcess;

/// (key, value, create, mod, version) of every key, and the header revision.
async fn dump(c: &mut Client) -> (i64, Vec<(Vec<u8>, Vec<u8>, i64, i64, i64)>) {
    let r = c
        .get("", Some(GetOptions::new().with_all_keys()))
        .await
        .expect("get all");
    let rev = r.header().expect("header").revision();
    let kvs = r
        .kvs()
        .iter()
        .map(|kv| {
            (
                kv.key().to_vec(),
                kv.value().to_vec(),
                kv.create_revision(),
                kv.mod_revision(),
                kv.version(),
            )
        })
        .collect();
    (rev, kvs)
}

async fn connect(node: &RingkvProcess) -> Client {
    Client::connect([format!("http://{}", node.endpoint())], None)
        .await
        .expect("connect")
}

fn files(dir: &std::path::Path, suffix: &str) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .expect("read dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(suffix))
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_count_100_purges_the_wal_and_restarts_from_the_snapshot() {
    let tmp = tempfile::tempdir().expect("tmp");
    let data = tmp.path().join("d");
    // 64 KiB segments (etcd's 64 MiB would hold the whole test): ~350 puts per segment.
    let mut node = RingkvProcess::start_in_env(
        &data,
        &["--snapshot-count", "100", "--max-wals", "2"],
        &[("RINGKV_WAL_SEGMENT_SIZE", "65536")],
    );
    let mut c = connect(&node).await;
    let pad = "p".repeat(100);
    // 20 writers of 100 puts each: group commit keeps this quick on a loaded machine.
    let mut writers = tokio::task::JoinSet::new();
    for w in 0..20 {
        let mut c = c.clone();
        let pad = pad.clone();
        writers.spawn(async move {
            for j in 0..100 {
                let i = w * 100 + j;
                c.put(format!("k{:03}", i % 300), format!("v{i}{pad}"), None)
                    .await
                    .expect("put");
            }
        });
    }
    while let Some(r) = writers.join_next().await {
        r.expect("writer");
    }
    assert_eq!(dump(&mut c).await.0, 2001);
    let snap_dir = data.join("member/snap");
    let wal_dir = data.join("member/wal");
    // Snapshots are taken and old ones purged asynchronously (a new file is written before the
    // oldest is removed): wait (bounded) for the purge to catch up.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let snaps = files(&snap_dir, ".snap");
        if (1..=5).contains(&snaps.len()) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "--max-snapshots 5 (default) keeps 1..=5 files: {snaps:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // A purge follows a durable snapshot, and a snapshot is due only after writes and a
    // backend commit (every 100 ms): how far it got depends on the machine's speed. Keep
    // writing a little until the old segments are gone (bounded).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    let purged = |wal: &[String]| !wal[0].starts_with("0000000000000000-") && wal.len() <= 4;
    let mut extra = 0;
    while !purged(&files(&wal_dir, ".wal")) && std::time::Instant::now() < deadline {
        c.put(format!("filler{}", extra % 10), "f", None)
            .await
            .expect("put");
        extra += 1;
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // ~2000 * 190 bytes were logged (6 segments' worth); segment 0 is purged and only the
    // tail is kept (--max-wals 2, plus the segments above the previous snapshot).
    let wal = files(&wal_dir, ".wal");
    assert!(purged(&wal), "segments not purged: {wal:?}");
    let before = dump(&mut c).await;
    assert_eq!(before.0, 2001 + extra);

    node.stop();
    node.restart();
    let mut c = connect(&node).await;
    assert_eq!(dump(&mut c).await, before, "after SIGTERM");
    let r = c.put("after-term", "x", None).await.expect("put");
    assert_eq!(r.header().expect("header").revision(), before.0 + 1);
    let before = dump(&mut c).await;

    node.kill9();
    node.restart();
    let mut c = connect(&node).await;
    assert_eq!(dump(&mut c).await, before, "after kill -9");
    let r = c.put("after-kill", "x", None).await.expect("put");
    assert_eq!(r.header().expect("header").revision(), before.0 + 1);
    let log = node.log();
    assert!(!log.contains("corrupt"), "{log}");
}

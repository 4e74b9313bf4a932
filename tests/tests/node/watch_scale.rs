//! Many watchers on one connection (issue 5: "100k watchers must be possible"): watchers are
//! registrations on the node's watch hub, fed by the apply thread through bounded channels
//! that the connection's tasks read, so they cost no thread each.

use etcd_client::{Client, EventType, WatchOptions, WatchResponse};
use ringkv_tests::RingkvProcess;
use tokio_stream::StreamExt;

/// Threads of a process, from `/proc/<pid>/status`.
fn threads_of(pid: u32) -> usize {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("Threads: line")
}

const WATCHERS: usize = 10_000;

/// Watchers 100, 200, ... watch `own/<id>`; all others the prefix `w/`.
fn own_key(id: usize) -> bool {
    id != 0 && id.is_multiple_of(100)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_watchers_on_one_stream_get_every_event_without_a_thread_each() {
    let node = RingkvProcess::start(&[]);
    let mut c = Client::connect([format!("http://{}", node.endpoint())], None)
        .await
        .expect("connect");
    let threads_before = threads_of(node.pid());

    // One gRPC watch stream; watcher i (auto ID i) watches the prefix "w/", except every
    // 100th, which watches a key of its own. Requests are sent from a task while this one
    // reads the created responses (flow control would stall a sender nobody reads).
    let (mut sender, mut stream) = c
        .watch("w/", Some(WatchOptions::new().with_prefix()))
        .await
        .expect("first watch")
        .split();
    let adder = tokio::spawn(async move {
        for i in 1..WATCHERS {
            if own_key(i) {
                sender.watch(format!("own/{i}"), None).await
            } else {
                sender
                    .watch("w/", Some(WatchOptions::new().with_prefix()))
                    .await
            }
            .expect("add watcher");
        }
        sender
    });
    let mut created = 0;
    while created < WATCHERS {
        let r: WatchResponse = stream
            .next()
            .await
            .expect("stream open")
            .expect("created response");
        assert!(r.created(), "expected only created responses, got {r:?}");
        assert!(!r.canceled());
        assert_eq!(r.watch_id(), created as i64);
        created += 1;
    }
    let mut sender = adder.await.expect("adder task");
    let prefix_watchers = WATCHERS - (WATCHERS - 1) / 100;

    // Watchers must not cost threads: allow the runtime's own variation only.
    let threads_during = threads_of(node.pid());
    assert!(
        threads_during < threads_before + 64,
        "{WATCHERS} watchers grew the server from {threads_before} to {threads_during} threads"
    );

    let put = c.put("w/a", "1", None).await.expect("put");
    let rev = put.header().expect("header").revision();
    c.put("own/500", "mine", None).await.expect("put own");
    c.put("own/501", "nobody", None)
        .await
        .expect("put unwatched");

    let mut seen = vec![0u32; WATCHERS];
    let mut got = 0;
    while got < prefix_watchers + 1 {
        let r = stream.next().await.expect("stream open").expect("response");
        for ev in r.events() {
            assert_eq!(ev.event_type(), EventType::Put);
            let kv = ev.kv().expect("kv");
            let id = r.watch_id() as usize;
            if kv.key() == b"w/a" {
                assert_eq!(kv.mod_revision(), rev);
                assert!(!own_key(id), "watcher {id} got an event outside its key");
            } else {
                assert_eq!((id, kv.key()), (500, &b"own/500"[..]));
                assert_eq!(kv.value(), b"mine");
            }
            seen[id] += 1;
            got += 1;
        }
    }
    for (id, n) in seen.iter().enumerate() {
        let want = u32::from(!own_key(id) || id == 500);
        assert_eq!(*n, want, "watcher {id} saw {n} events");
    }

    // Canceling half of them stops their events; the rest keep receiving.
    let canceler = tokio::spawn(async move {
        for id in (1..WATCHERS).step_by(2) {
            sender.cancel(id as i64).await.expect("cancel");
        }
        sender
    });
    let mut canceled = 0;
    while canceled < WATCHERS / 2 {
        let r = stream.next().await.expect("stream open").expect("response");
        assert!(r.canceled(), "expected cancel responses first, got {r:?}");
        assert_eq!(r.watch_id() % 2, 1);
        canceled += 1;
    }
    let _sender = canceler.await.expect("canceler task");
    let rev2 = c
        .put("w/b", "2", None)
        .await
        .expect("put")
        .header()
        .expect("header")
        .revision();
    let remaining = (0..WATCHERS).step_by(2).filter(|&i| !own_key(i)).count();
    let mut got = 0;
    while got < remaining {
        let r = stream.next().await.expect("stream open").expect("response");
        let id = r.watch_id() as usize;
        assert_eq!(id % 2, 0, "canceled watcher {id} still got events");
        for ev in r.events() {
            assert_eq!(ev.kv().expect("kv").mod_revision(), rev2);
            got += 1;
        }
    }
}

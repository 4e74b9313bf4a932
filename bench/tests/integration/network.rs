//! Network subcommands against a real etcd and a real ringkv node: one test body per
//! subcommand, run once for each system (modules `etcd` and `ringkv` below).

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use ringkv_bench::{Cluster, EtcdClient, start_cluster, start_cluster_with_args};
use ringkv_engine::pb::etcdserverpb::RangeRequest;

use crate::util::{bench_fails, bench_json, check_load_report, f, u};
use ringkv_tests::ringkv_binary as ringkv_bin;

/// The server a shared test body runs against.
#[derive(Debug, Clone, Copy)]
enum System {
    /// `$ETCD_BIN`, else `etcd` on the PATH.
    Etcd,
    /// The `ringkv` binary of this workspace, with fast raft timing.
    Ringkv,
}

fn etcd_bin() -> String {
    std::env::var("ETCD_BIN").unwrap_or_else(|_| "etcd".to_owned())
}

/// A fresh single-member cluster of `sys`; fails loudly when the binary is missing.
fn start(sys: System) -> Cluster {
    start_members(sys, 1)
}

/// A fresh cluster of `members` members of `sys`.
fn start_members(sys: System, members: u32) -> Cluster {
    let (bin, cluster) = start_with_bin(sys, members);
    // Every member really runs the binary meant (the launcher takes any path).
    let meant = std::fs::canonicalize(&bin).expect("canonical path of the binary");
    for m in &cluster.members {
        let exe = std::fs::read_link(format!("/proc/{}/exe", m.pid()))
            .expect("read /proc/<pid>/exe of the member");
        assert_eq!(
            exe,
            meant,
            "{sys:?} member {} runs {}",
            m.name,
            exe.display()
        );
    }
    cluster
}

fn start_with_bin(sys: System, members: u32) -> (PathBuf, Cluster) {
    let bin = match sys {
        System::Etcd => which(&etcd_bin()),
        System::Ringkv => ringkv_bin(),
    };
    let cluster = match sys {
        System::Etcd => {
            start_cluster(&bin, members, None).unwrap_or_else(|e| panic!("cannot start etcd: {e}"))
        }
        // 10 ms heartbeats and a 100 ms election timeout: the member leads within a fraction
        // of a second instead of after the default 1 s timeout.
        System::Ringkv => start_cluster_with_args(
            &bin,
            members,
            None,
            &["--heartbeat-interval=10", "--election-timeout=100"],
        )
        .unwrap_or_else(|e| panic!("cannot start ringkv: {e}")),
    };
    (bin, cluster)
}

/// `name` itself when it has a `/`, else its first match on `$PATH` (as `Command` looks it up).
fn which(name: &str) -> PathBuf {
    if name.contains('/') {
        return PathBuf::from(name);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{name} not found on PATH (Debian: apt-get install etcd-server)"))
}

/// Each shared body as one `#[test]` per system.
macro_rules! for_each_system {
    ($($body:ident),* $(,)?) => {
        mod etcd {
            $(#[test]
            fn $body() {
                super::$body(super::System::Etcd);
            })*
        }
        mod ringkv {
            $(#[test]
            fn $body() {
                super::$body(super::System::Ringkv);
            })*
        }
    };
}

for_each_system!(
    put_writes_the_key_space,
    put_open_loop_for_a_duration_sends_rate_times_duration,
    put_with_compaction_and_server_cpu,
    range_linearizable_and_serializable,
    txn_put_one_revision_per_transaction,
    mixed_reads_and_writes,
    lease_keepalive_round_trips,
    watch_every_watcher_gets_every_event,
    watch_latency_events,
);

fn ep(c: &Cluster) -> String {
    format!("--endpoints={}", c.endpoints())
}

/// (number of keys, current revision) of the cluster.
fn keys_and_revision(c: &Cluster) -> (i64, i64) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut client =
            EtcdClient::connect(&c.members[0].client_addr, Duration::from_secs(2), None)
                .await
                .unwrap();
        // [\0, \0) is every key.
        let r = client
            .range(&RangeRequest {
                key: Bytes::from_static(b"\0"),
                range_end: Bytes::from_static(b"\0"),
                count_only: true,
                ..Default::default()
            })
            .await
            .unwrap();
        (r.count, r.header.unwrap().revision)
    })
}

fn put_writes_the_key_space(sys: System) {
    let c = start(sys);
    let v = bench_json(&[
        &ep(&c),
        "--clients=8",
        "--conns=2",
        "put",
        "--total=300",
        "--key-space-size=50",
        "--sequential-keys",
        "--val-size=16",
    ]);
    assert_eq!(v.len(), 1);
    check_load_report(&v[0], "put", 300);
    assert_eq!(u(&v[0], "clients"), 8);
    assert_eq!(u(&v[0], "conns"), 2);
    // 50 distinct keys; a fresh etcd is at revision 1, each put adds one.
    assert_eq!(keys_and_revision(&c), (50, 301));
}

fn put_open_loop_for_a_duration_sends_rate_times_duration(sys: System) {
    let c = start(sys);
    let v = bench_json(&[
        &ep(&c),
        "--duration=1s",
        "--clients=4",
        "--sample",
        "put",
        "--rate=200",
        "--key-space-size=1000",
    ]);
    // Requests i with i/200 s < 1 s: exactly 200.
    check_load_report(&v[0], "put", 200);
    assert!(f(&v[0], "duration_s") >= 0.99, "{}", v[0]);
    let samples = v[0]["samples"].as_array().expect("--sample series");
    let ops: u64 = samples.iter().map(|s| u(s, "ops")).sum();
    assert_eq!(ops, 200);
    assert_eq!(keys_and_revision(&c).1, 201);
}

fn put_with_compaction_and_server_cpu(sys: System) {
    let c = start(sys);
    let pid = c.members[0].pid().to_string();
    let v = bench_json(&[
        &ep(&c),
        "--server-pid",
        &pid,
        "--duration=1500ms",
        "put",
        "--rate=400",
        "--compact-interval=300ms",
        "--compact-index-delta=10",
    ]);
    check_load_report(&v[0], "put", 600);
    assert!(f(&v[0], "server_cpu_us_per_op") > 0.0, "{}", v[0]);
    assert!(u(&v[0], "server_peak_rss_bytes") > 1 << 20, "{}", v[0]);
    // Compaction happened: old revisions are gone.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let err = rt.block_on(async {
        let mut client = EtcdClient::connect(&c.endpoints(), Duration::from_secs(2), None)
            .await
            .unwrap();
        client
            .range(&RangeRequest {
                key: Bytes::from_static(b"\0"),
                revision: 2,
                ..Default::default()
            })
            .await
            .unwrap_err()
    });
    assert!(err.message().contains("compacted"), "{err}");
}

fn range_linearizable_and_serializable(sys: System) {
    let c = start(sys);
    bench_json(&[&ep(&c), "put", "--total=10", "--key-size=3"]);
    for consistency in ["l", "s"] {
        let v = bench_json(&[
            &ep(&c),
            "--clients=4",
            "range",
            "foo",
            "fop",
            "--total=200",
            &format!("--consistency={consistency}"),
        ]);
        check_load_report(&v[0], "range", 200);
    }
    // Reads change nothing.
    assert_eq!(keys_and_revision(&c).1, 11);
}

fn txn_put_one_revision_per_transaction(sys: System) {
    let c = start(sys);
    let v = bench_json(&[
        &ep(&c),
        "--clients=4",
        "txn-put",
        "--total=100",
        "--txn-ops=3",
        "--key-space-size=30",
    ]);
    check_load_report(&v[0], "txn-put", 100);
    let (keys, rev) = keys_and_revision(&c);
    assert_eq!(rev, 101);
    assert!((3..=30).contains(&keys), "{keys} keys");
}

fn mixed_reads_and_writes(sys: System) {
    let c = start(sys);
    let v = bench_json(&[
        &ep(&c),
        "--clients=8",
        "mixed",
        "--total=400",
        "--read-ratio=0.5",
        "--key-space-size=100",
        "--consistency=s",
    ]);
    check_load_report(&v[0], "mixed", 400);
    // About half are puts (binomial, 400 trials: 100..300 fails with p < 1e-20).
    let puts = keys_and_revision(&c).1 - 1;
    assert!((100..300).contains(&puts), "{puts} puts");
}

fn lease_keepalive_round_trips(sys: System) {
    let c = start(sys);
    let v = bench_json(&[&ep(&c), "--clients=4", "lease-keepalive", "--total=500"]);
    check_load_report(&v[0], "lease-keepalive", 500);
}

fn watch_every_watcher_gets_every_event(sys: System) {
    let c = start(sys);
    let v = bench_json(&[
        &ep(&c),
        "--conns=2",
        "watch",
        "--streams=4",
        "--watch-per-stream=5",
        "--watched-key-total=2",
        "--put-total=50",
    ]);
    assert_eq!(v.len(), 2);
    // 20 watchers, 10 per key; 25 puts per key: 10 × 25 × 2 events.
    check_load_report(&v[0], "watch-create", 20);
    check_load_report(&v[1], "watch", 500);
    assert_eq!(keys_and_revision(&c), (2, 51));
}

fn watch_latency_events(sys: System) {
    let c = start(sys);
    let v = bench_json(&[
        &ep(&c),
        "watch-latency",
        "--streams=2",
        "--watchers-per-stream=3",
        "--put-total=40",
        "--put-rate=400",
        "--prevkv",
    ]);
    check_load_report(&v[0], "watch-latency-create", 6);
    check_load_report(&v[1], "watch-latency", 240);
}

#[test]
fn unreachable_endpoint_is_a_clear_error() {
    let e = bench_fails(&[
        "--endpoints=127.0.0.1:1",
        "--dial-timeout=500ms",
        "put",
        "--total=1",
    ]);
    assert!(e.contains("cannot connect to http://127.0.0.1:1"), "{e}");
}

#[test]
fn compare_writes_markdown_and_plots() {
    let out = tempfile::tempdir().unwrap();
    let bin = std::env::var("ETCD_BIN").unwrap_or_else(|_| "/usr/bin/etcd".to_owned());
    let v = bench_json(&[
        "compare",
        &format!("--etcd-bin={bin}"),
        "--workloads=put-1,range-s-1000",
        "--repeat=2",
        "--run-seconds=0.5",
        &format!("--out={}", out.path().display()),
    ]);
    // One JSON line per run: 2 workloads × 2 repetitions × 1 system.
    assert_eq!(v.len(), 4);
    for r in &v {
        assert_eq!(r["system"], "etcd");
        assert_eq!(u(r, "errors"), 0, "{r}");
        assert!(u(r, "total") > 0, "{r}");
        assert!(f(r, "server_cpu_us_per_op") > 0.0, "{r}");
    }
    let md = std::fs::read_to_string(out.path().join("report.md")).unwrap();
    assert!(md.contains("## put-1 (1 clients, 1 conns)"), "{md}");
    assert!(md.contains("| ops/s |"), "{md}");
    assert!(md.contains("Errors (all runs): etcd: 0."), "{md}");
    for svg in ["throughput.svg", "cdf-put-1.svg", "cdf-range-s-1000.svg"] {
        let text = std::fs::read_to_string(out.path().join(svg)).unwrap();
        assert!(text.starts_with("<svg"), "{svg}");
        assert!(text.contains("etcd"), "{svg} has no legend");
    }
    let runs: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.path().join("runs.json")).unwrap())
            .unwrap();
    assert_eq!(runs.as_array().unwrap().len(), 4);
}

/// A load aimed at a 3-member cluster's leader (`--target-leader`), and every member applies it.
fn three_members_with_target_leader_on(system: System) {
    let c = start_members(system, 3);
    let v = bench_json(&[
        &ep(&c),
        "--target-leader",
        "--conns=3",
        "--clients=6",
        "put",
        "--total=150",
        "--key-space-size=10",
    ]);
    check_load_report(&v[0], "put", 150);
    assert_eq!(keys_and_revision(&c).1, 151);
}

#[test]
fn three_members_with_target_leader() {
    three_members_with_target_leader_on(System::Etcd);
}

/// The same against a 3-member ringkv cluster from the launcher's `--initial-cluster`.
#[test]
fn ringkv_three_members_with_target_leader() {
    three_members_with_target_leader_on(System::Ringkv);
}

#[test]
fn compare_etcd_with_ringkv_tiny_run() {
    let out = tempfile::tempdir().unwrap();
    let v = bench_json(&[
        "compare",
        &format!("--etcd-bin={}", etcd_bin()),
        &format!("--ringkv-bin={}", ringkv_bin().display()),
        "--workloads=put-1",
        "--repeat=1",
        "--run-seconds=0.5",
        &format!("--out={}", out.path().display()),
    ]);
    // One JSON line per run: 1 workload × 1 repetition × 2 systems.
    assert_eq!(v.len(), 2, "{v:?}");
    let mut systems: Vec<&str> = v.iter().map(|r| r["system"].as_str().unwrap()).collect();
    systems.sort_unstable();
    assert_eq!(systems, ["etcd", "ringkv"]);
    for r in &v {
        assert_eq!(u(r, "errors"), 0, "{r}");
        assert!(u(r, "total") > 0, "{r}");
        assert!(f(r, "server_cpu_us_per_op") > 0.0, "{r}");
    }
    let md = std::fs::read_to_string(out.path().join("report.md")).unwrap();
    assert!(
        md.contains("Errors (all runs): etcd: 0, ringkv: 0."),
        "{md}"
    );
    let plot = std::fs::read_to_string(out.path().join("cdf-put-1.svg")).unwrap();
    assert!(plot.contains("ringkv"), "no ringkv legend in the CDF plot");
}

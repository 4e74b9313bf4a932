//! The disk profiler on a temporary directory.

use crate::util::{bench_fails, bench_json, f, u};

fn check_disk_row(v: &serde_json::Value, engine: &str, writers: u64, record_size: u64) {
    assert_eq!(v["engine"], engine, "{v}");
    assert_eq!(u(v, "writers"), writers, "{v}");
    assert_eq!(u(v, "record_size"), record_size, "{v}");
    assert_eq!(u(v, "errors"), 0, "{v}");
    assert!(u(v, "total") > 0, "{v}");
    assert!(f(v, "ops_per_sec") > 0.0, "{v}");
    let (p50, p99, p999) = (f(v, "p50_us"), f(v, "p99_us"), f(v, "p999_us"));
    assert!(p50 > 0.0 && p50 <= p99 && p99 <= p999, "{v}");
    // Every acknowledged record was covered by a sync, so there are at most as many syncs as
    // records (plus the few a WAL spends on segment preparation).
    assert!(u(v, "syncs") >= 1, "{v}");
    assert!(f(v, "records_per_sync") > 0.5, "{v}");
}

#[test]
fn fsync_json_per_size_on_both_io_implementations() {
    for io in ["std", "uring"] {
        let dir = tempfile::tempdir().unwrap();
        let d = format!("--dir={}", dir.path().display());
        let v = bench_json(&[
            "disk",
            "fsync",
            &d,
            &format!("--io={io}"),
            "--seconds=0.3",
            "--sizes=4K,64K",
            "--file-size=4M",
        ]);
        assert_eq!(v.len(), 2);
        check_disk_row(&v[0], "raw", 1, 4096);
        check_disk_row(&v[1], "raw", 1, 65536);
        for r in &v {
            assert_eq!(r["io"], io);
            assert_eq!(f(r, "records_per_sync"), 1.0, "{r}");
        }
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            0,
            "cleaned up"
        );
    }
}

#[test]
fn wal_compare_runs_all_three_engines() {
    let dir = tempfile::tempdir().unwrap();
    let d = format!("--dir={}", dir.path().display());
    let v = bench_json(&[
        "disk",
        "wal",
        &d,
        "--io=uring",
        "--compare",
        "--writers=8",
        "--record-size=256",
        "--seconds=0.5",
        "--warmup=0.2",
    ]);
    assert_eq!(v.len(), 3);
    check_disk_row(&v[0], "ringkv", 8, 256);
    check_disk_row(&v[1], "raft-engine", 8, 256);
    check_disk_row(&v[2], "raw", 8, 256);
    assert_eq!(f(&v[2], "records_per_sync"), 1.0);
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "cleaned up"
    );
}

#[test]
fn wal_sweep_writes_table_rows_and_heat_map() {
    let dir = tempfile::tempdir().unwrap();
    let d = format!("--dir={}", dir.path().display());
    let svg = dir.path().join("sweep.svg");
    let v = bench_json(&[
        "disk",
        "wal",
        &d,
        "--io=std",
        "--sweep",
        "--sweep-writers=1,4",
        "--sweep-sizes=64,4K",
        "--seconds=0.2",
        "--warmup=0.1",
        &format!("--svg={}", svg.display()),
    ]);
    // 2 writer counts × 2 sizes × (ringkv, raw).
    assert_eq!(v.len(), 8);
    let cells: Vec<(String, u64, u64)> = v
        .iter()
        .map(|r| {
            (
                r["engine"].as_str().unwrap().to_owned(),
                u(r, "writers"),
                u(r, "record_size"),
            )
        })
        .collect();
    assert_eq!(cells[0], ("ringkv".to_owned(), 1, 64));
    assert_eq!(cells[1], ("raw".to_owned(), 1, 64));
    assert_eq!(cells[7], ("raw".to_owned(), 4, 4096));
    for r in &v {
        assert_eq!(u(r, "errors"), 0, "{r}");
    }
    let text = std::fs::read_to_string(&svg).unwrap();
    assert!(text.contains("ringkv: ops/s") && text.contains("raw: ops/s"));
}

#[test]
fn bad_disk_arguments_are_clear_errors() {
    let e = bench_fails(&["disk", "wal", "--io=posix"]);
    assert!(e.contains("expected uring or std"), "{e}");
    let e = bench_fails(&["disk", "wal", "--engines=rocksdb", "--seconds=0.1"]);
    assert!(e.contains("unknown engine"), "{e}");
    let e = bench_fails(&["disk", "fsync", "--sizes=4Q"]);
    assert!(e.contains("invalid size unit"), "{e}");
}

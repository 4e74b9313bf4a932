//! Smoke test of `ringkv-bench engine btree` on a small key count, through the binary: every
//! engine runs every phase and finds every key it loaded (the benchmark errors otherwise), and
//! `--json` prints one object per engine and phase. Timing is not asserted.

use std::process::Command;

/// Every phase `engine btree` reports, in the order it runs them.
const PHASES: [&str; 7] = [
    "bulk-load",
    "get-1t",
    "get-2t",
    "range-10",
    "commit-1",
    "commit-1000",
    "revision-append",
];

#[test]
fn all_engines_run_all_phases() {
    let results = run_btree(&[]);
    for engine in ["ringkv", "lmdb", "redb"] {
        for phase in PHASES {
            let r = results
                .iter()
                .find(|r| r["engine"] == engine && r["phase"] == phase)
                .unwrap_or_else(|| panic!("{engine} {phase} missing"));
            assert!(r["ops_per_sec"].as_f64().unwrap() > 0.0, "{r}");
            assert!(r["ns_per_op"].as_f64().unwrap() > 0.0, "{r}");
        }
    }
    assert_eq!(results.len(), 3 * PHASES.len());
}

/// Runs `engine btree --compare` on 3,000 keys with `extra` arguments; returns the JSON
/// results. The run must succeed and remove its temporary data directories.
fn run_btree(extra: &[&str]) -> Vec<serde_json::Value> {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ringkv-bench"))
        .args(["--json", "engine", "btree", "--keys", "3000", "--compare"])
        .args(extra)
        .arg("--dir")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// `--load-order` reaches every engine: each reports the pages of its tree after the load and
/// after commit-1000, and a load in key order leaves ringkv and LMDB with fuller pages (fewer of
/// them) than the same keys put in random order (both split a page in the middle when a key lands
/// inside it, and pack pages when keys arrive in order).
#[test]
fn load_order_changes_how_full_the_pages_are() {
    let phases = "bulk-load,commit-1000";
    let pages = |results: &[serde_json::Value], engine: &str, phase: &str| -> u64 {
        let r = results
            .iter()
            .find(|r| r["engine"] == engine && r["phase"] == phase)
            .unwrap_or_else(|| panic!("{engine} {phase} missing"));
        r["tree_pages"]
            .as_u64()
            .unwrap_or_else(|| panic!("no tree_pages: {r}"))
    };
    let sorted = run_btree(&["--load-order", "sorted", "--phases", phases]);
    let random = run_btree(&["--load-order", "random", "--phases", phases]);
    for results in [&sorted, &random] {
        assert_eq!(results.len(), 3 * 2);
        for engine in ["ringkv", "lmdb", "redb"] {
            for phase in ["bulk-load", "commit-1000"] {
                assert!(pages(results, engine, phase) > 0);
            }
            // commit-1000 adds 4,000 keys to the 3,000.
            assert!(pages(results, engine, "commit-1000") > pages(results, engine, "bulk-load"));
        }
    }
    for engine in ["ringkv", "lmdb"] {
        let (s, r) = (
            pages(&sorted, engine, "bulk-load"),
            pages(&random, engine, "bulk-load"),
        );
        // 3,000 entries of ~186 bytes: ~143 full 4 KiB pages; random order ~70 % full.
        assert!(
            s * 6 <= r * 5,
            "{engine}: {s} pages after a sorted load, {r} after a random-order one"
        );
    }
}

/// `--interleave` runs the commit phases of all engines in slices: every engine reports every
/// commit phase, with the keys of the whole phase (the slices add up to the sequential run's
/// count), after the other phases of every engine.
#[test]
fn interleaved_commit_phases_report_every_engine_with_all_keys() {
    let sequential = run_btree(&[]);
    let interleaved = run_btree(&["--interleave"]);
    assert_eq!(interleaved.len(), sequential.len());
    for engine in ["ringkv", "lmdb", "redb"] {
        for phase in ["commit-1", "commit-1000", "revision-append"] {
            assert_eq!(
                ops(&interleaved, engine, phase),
                ops(&sequential, engine, phase),
                "{engine} {phase}"
            );
        }
    }
    // The first commit phase of any engine comes after the last read phase of every engine.
    let first_commit = interleaved
        .iter()
        .position(|r| r["phase"] == "commit-1")
        .unwrap();
    let last_read = interleaved
        .iter()
        .rposition(|r| r["phase"] == "range-10")
        .unwrap();
    assert!(last_read < first_commit, "{interleaved:?}");
}

/// `--append-commits` sets the revision-append phase's commit count (10,000 keys each) for every
/// engine, plain and interleaved (where 3 commits are cut into 10 slices of 0 or 1).
#[test]
fn append_commits_sets_the_revision_append_length() {
    for extra in [&[][..], &["--interleave"][..]] {
        let mut args = vec!["--phases", "revision-append", "--append-commits", "3"];
        args.extend_from_slice(extra);
        let results = run_btree(&args);
        assert_eq!(results.len(), 3, "{results:?}");
        for r in &results {
            assert_eq!(r["phase"], "revision-append");
            assert_eq!(r["ops"].as_u64(), Some(30_000), "{r}");
        }
    }
}

/// `--delta-too` adds engine `ringkv-delta` (the backend's delta log on) to every phase, with
/// the same operation counts as `ringkv`; `--delta-warm` fills its log first, so its gets find
/// every key through log and tree (the bench fails a run whose gets miss a key).
#[test]
fn delta_too_reports_ringkv_delta_on_every_phase() {
    let results = run_btree(&["--delta-too", "--delta-warm", "5"]);
    for phase in PHASES {
        assert_eq!(
            ops(&results, "ringkv-delta", phase),
            ops(&results, "ringkv", phase),
            "{phase}"
        );
    }
    assert_eq!(results.len(), 4 * PHASES.len());
}

/// The `ops` count `engine` reported for `phase`.
fn ops(results: &[serde_json::Value], engine: &str, phase: &str) -> u64 {
    results
        .iter()
        .find(|r| r["engine"] == engine && r["phase"] == phase)
        .unwrap_or_else(|| panic!("{engine} {phase} missing"))["ops"]
        .as_u64()
        .unwrap()
}

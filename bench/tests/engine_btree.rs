//! Smoke test of `ringkv-bench engine btree` on a small key count: every engine runs every phase
//! and finds every key it loaded (the benchmark errors otherwise). Timing is not asserted.

#[path = "../src/engine_btree.rs"]
mod engine_btree;

#[test]
fn all_engines_run_all_phases() {
    let dir = tempfile::tempdir().unwrap();
    let opts = engine_btree::BtreeOptions {
        keys: 3_000,
        compare: true,
        json: true,
    };
    let results = engine_btree::run(&opts, dir.path()).unwrap();
    let phases = [
        "bulk-load",
        "get-1t",
        "get-2t",
        "range-10",
        "commit-1",
        "commit-1000",
        "revision-append",
    ];
    for engine in ["ringkv", "lmdb", "redb"] {
        for phase in phases {
            let r = results
                .iter()
                .find(|r| r.engine == engine && r.phase == phase)
                .unwrap_or_else(|| panic!("{engine} {phase} missing"));
            assert!(r.ops > 0 && r.ops_per_sec > 0.0, "{r:?}");
        }
    }
    assert_eq!(results.len(), 3 * phases.len());
}

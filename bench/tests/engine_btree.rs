//! Smoke test of `ringkv-bench engine btree` on a small key count, through the binary: every
//! engine runs every phase and finds every key it loaded (the benchmark errors otherwise), and
//! `--json` prints one object per engine and phase. Timing is not asserted.

use std::process::Command;

#[test]
fn all_engines_run_all_phases() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ringkv-bench"))
        .args([
            "--json",
            "engine",
            "btree",
            "--keys",
            "3000",
            "--compare",
            "--dir",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let results: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
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
                .find(|r| r["engine"] == engine && r["phase"] == phase)
                .unwrap_or_else(|| panic!("{engine} {phase} missing"));
            assert!(r["ops_per_sec"].as_f64().unwrap() > 0.0, "{r}");
            assert!(r["ns_per_op"].as_f64().unwrap() > 0.0, "{r}");
        }
    }
    assert_eq!(results.len(), 3 * phases.len());
    // The temporary data directories are removed after the run.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

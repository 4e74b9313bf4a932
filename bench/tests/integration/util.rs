//! Running the binary and reading its JSON lines.

use std::process::Command;

use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_ringkv-bench");

/// Runs `ringkv-bench ARGS --json`, requires success, returns one JSON value per stdout line.
pub fn bench_json(args: &[&str]) -> Vec<Value> {
    let out = Command::new(BIN)
        .args(args)
        .arg("--json")
        .output()
        .expect("run ringkv-bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "ringkv-bench {args:?} failed ({}):\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l:?}")))
        .collect()
}

/// Runs `ringkv-bench ARGS`, requires failure, returns stderr.
pub fn bench_fails(args: &[&str]) -> String {
    let out = Command::new(BIN)
        .args(args)
        .output()
        .expect("run ringkv-bench");
    assert!(
        !out.status.success(),
        "ringkv-bench {args:?} should have failed; stdout:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

pub fn u(v: &Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} is not an unsigned integer in {v}"))
}

pub fn f(v: &Value, key: &str) -> f64 {
    v[key]
        .as_f64()
        .unwrap_or_else(|| panic!("{key} is not a number in {v}"))
}

/// The fields every network report has, with sane values: no errors, `total` operations,
/// ordered percentiles.
pub fn check_load_report(v: &Value, workload: &str, total: u64) {
    assert_eq!(v["workload"], workload, "{v}");
    assert_eq!(u(v, "errors"), 0, "errors in {v}");
    assert_eq!(u(v, "total"), total, "count in {v}");
    for key in ["clients", "conns"] {
        assert!(u(v, key) >= 1, "{key} in {v}");
    }
    let (p50, p90, p99, p999, max) = (
        f(v, "p50_us"),
        f(v, "p90_us"),
        f(v, "p99_us"),
        f(v, "p999_us"),
        f(v, "max_us"),
    );
    assert!(p50 > 0.0, "{v}");
    assert!(
        p50 <= p90 && p90 <= p99 && p99 <= p999 && p999 <= max * 1.001,
        "percentiles out of order in {v}"
    );
    assert!(f(v, "ops_per_sec") > 0.0, "{v}");
    assert!(f(v, "client_cpu_us_per_op") > 0.0, "{v}");
}

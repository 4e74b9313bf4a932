//! The `ringkv` binary's command line: etcd's flag names, `RINGKV_*` environment variables, clear
//! errors, and the honest "not built yet" answer until the node exists.

use std::process::Command;

fn ringkv(args: &[&str], env: &[(&str, &str)]) -> (i32, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ringkv"));
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run ringkv");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn no_flags_parse_and_report_not_built() {
    let (code, text) = ringkv(&[], &[]);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("not built yet"), "{text}");
    assert!(text.contains("default.ringkv"), "{text}");
}

#[test]
fn environment_variables_are_read() {
    let (code, text) = ringkv(&[], &[("RINGKV_ELECTION_TIMEOUT", "400")]);
    assert_eq!(code, 1);
    assert!(text.contains("--election-timeout[400ms]"), "{text}");
    let (_, text) = ringkv(
        &[],
        &[
            ("RINGKV_NAME", "n1"),
            (
                "RINGKV_INITIAL_ADVERTISE_PEER_URLS",
                "http://127.0.0.1:23800",
            ),
        ],
    );
    assert!(text.contains("member 2e1259d415f2a040"), "{text}");
    assert!(text.contains("cluster 48276a8f75b6a87"), "{text}");
    assert!(text.contains("n1.ringkv"), "{text}");
}

#[test]
fn help_lists_etcd_flag_names() {
    let (code, text) = ringkv(&["--help"], &[]);
    assert_eq!(code, 0);
    for flag in [
        "--name",
        "--data-dir",
        "--listen-client-urls",
        "--advertise-client-urls",
        "--listen-peer-urls",
        "--initial-advertise-peer-urls",
        "--initial-cluster",
        "--initial-cluster-state",
        "--initial-cluster-token",
        "--snapshot-count",
        "--heartbeat-interval",
        "--election-timeout",
        "--quota-backend-bytes",
        "--auto-compaction-mode",
        "--auto-compaction-retention",
        "--max-request-bytes",
        "--max-txn-ops",
        "--force-new-cluster",
        "--cert-file",
        "--cpu-layout",
    ] {
        assert!(text.contains(flag), "missing {flag} in --help");
    }
    let (code, text) = ringkv(&["--bogus"], &[]);
    assert_ne!(code, 0);
    assert!(text.contains("--bogus"), "{text}");
}

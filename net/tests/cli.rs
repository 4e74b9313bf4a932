//! The `ringkv` binary's command line: etcd's flag names, `RINGKV_*` environment variables,
//! clear errors, and a node that starts from the environment alone.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

/// Runs `ringkv` with `args` in a fresh temporary directory (so a node that starts by mistake
/// does not leave a data dir behind) and returns its exit code and output. These calls are all
/// expected to exit on their own; one still running after 20 s is killed and reported.
fn ringkv(args: &[&str], env: &[(&str, &str)]) -> (i32, String) {
    let cwd = tempfile::tempdir().expect("temp dir");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ringkv"));
    cmd.args(args)
        .current_dir(cwd.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("run ringkv");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while child.try_wait().expect("wait for ringkv").is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("collect ringkv output");
            panic!(
                "ringkv {args:?} was still running after 20 s (expected it to exit):\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("collect ringkv output");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn unsupported_flag_values_are_refused() {
    let (code, text) = ringkv(&["--enable-v2"], &[]);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("v2 keys API is not supported"), "{text}");
    let (code, text) = ringkv(&["--cpu-layout", "raft=4096"], &[]);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("CPU 4096 does not exist"), "{text}");
    let (code, text) = ringkv(&["--cpu-layout", "fastest"], &[]);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("is not role=value"), "{text}");
}

#[test]
fn environment_variables_are_read() {
    let (code, text) = ringkv(&[], &[("RINGKV_ELECTION_TIMEOUT", "400")]);
    assert_eq!(code, 1);
    assert!(text.contains("--election-timeout[400ms]"), "{text}");

    // A node configured only through the environment: its IDs follow etcd's derivation from
    // the name, peer URLs and token, and its data dir defaults to ${name}.ringkv.
    let cwd = tempfile::tempdir().expect("tmp");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_ringkv"))
        .current_dir(cwd.path())
        .env("RINGKV_NAME", "n1")
        .env(
            "RINGKV_INITIAL_ADVERTISE_PEER_URLS",
            "http://127.0.0.1:23800",
        )
        .env(
            "RINGKV_LISTEN_CLIENT_URLS",
            format!("http://127.0.0.1:{port}"),
        )
        .env("RINGKV_LOG", "info")
        .env("NO_COLOR", "1")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn ringkv");
    let stderr = child.stderr.take().expect("stderr");
    let mut opened = None;
    for line in BufReader::new(stderr).lines() {
        let line = line.expect("log line");
        if line.contains("ringkv node opened") {
            opened = Some(line);
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let text = opened.expect("the node logs its identity when it opens");
    assert!(text.contains("2e1259d415f2a040"), "{text}");
    assert!(text.contains("48276a8f75b6a87"), "{text}");
    assert!(cwd.path().join("n1.ringkv/member/wal").is_dir());
    assert!(cwd.path().join("n1.ringkv/member/snap/db").is_file());
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

//! Two nodes on one data directory: the second must refuse to start, clearly, and the first
//! keeps serving (the WAL directory's `LOCK` file, issue 2).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ringkv_tests::{RingkvProcess, free_port, ringkv_binary};

#[test]
fn a_second_node_on_the_same_data_dir_fails_naming_the_lock() {
    let node = RingkvProcess::start(&[]);
    node.ctl(&["put", "k", "v1"]);
    let client = format!("http://127.0.0.1:{}", free_port());
    let peer = format!("http://127.0.0.1:{}", free_port());
    let mut second = Command::new(ringkv_binary())
        .arg("--data-dir")
        .arg(&node.data_dir)
        .args(["--listen-client-urls", &client])
        .args(["--advertise-client-urls", &client])
        .args(["--listen-peer-urls", &peer])
        .args(["--initial-advertise-peer-urls", &peer])
        .env("RINGKV_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the second ringkv");
    let start = Instant::now();
    let status = loop {
        if let Some(status) = second.try_wait().expect("wait for the second ringkv") {
            break status;
        }
        if start.elapsed() > Duration::from_secs(30) {
            let _ = second.kill();
            panic!("the second ringkv on the same data dir is still running after 30 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = second
        .wait_with_output()
        .expect("stderr of the second ringkv");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!status.success(), "the second node must fail: {stderr}");
    assert!(
        stderr.contains("file already locked") && stderr.contains("LOCK"),
        "the error names the lock: {stderr}"
    );
    // The first node was not disturbed.
    node.ctl(&["put", "k", "v2"]);
    assert_eq!(node.ctl(&["get", "k", "--print-value-only"]), "v2\n");
}

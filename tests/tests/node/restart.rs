//! Restart (issue 5): write, stop (SIGTERM, and kill -9), start again on the same data dir,
//! read everything back with the same revisions; the node goes on from there.

use ringkv_tests::RingkvProcess;

fn snapshot(node: &RingkvProcess) -> String {
    // -w json carries every revision field and the header revision.
    let out = node.ctl(&["get", "", "--prefix", "-w", "json"]);
    // The term may change across a restart; everything else must not.
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    serde_json::json!({ "kvs": v["kvs"], "count": v["count"], "rev": v["header"]["revision"] })
        .to_string()
}

fn write_some(node: &RingkvProcess, round: u32) {
    for i in 0..20 {
        node.ctl(&["put", &format!("k{i:02}"), &format!("v{round}-{i}")]);
    }
    node.ctl(&["del", "k05"]);
    let lease = node.ctl(&["lease", "grant", "600"]);
    let id = lease
        .split_whitespace()
        .nth(1)
        .expect("lease id")
        .to_string();
    node.ctl(&[
        "put",
        &format!("leased{round}"),
        "x",
        &format!("--lease={id}"),
    ]);
}

#[test]
fn sigterm_then_restart_keeps_data_and_revisions() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut node = RingkvProcess::start_in(&dir.path().join("d"), &[]);
    write_some(&node, 1);
    node.ctl(&["compaction", "5"]);
    let before = snapshot(&node);
    let leases = node.ctl(&["lease", "list"]);
    // An open watch stream and a keep-alive stream do not hold the shutdown up.
    let mut watch = std::process::Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={}", node.endpoint()))
        .args(["watch", "k", "--prefix"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("etcdctl watch");
    std::thread::sleep(std::time::Duration::from_millis(300));
    node.stop();
    let _ = watch.kill();
    let _ = watch.wait();
    node.restart();
    assert_eq!(snapshot(&node), before);
    assert_eq!(node.ctl(&["lease", "list"]), leases);
    // Compaction survived too.
    let err = node.ctl_err(&["get", "k01", "--rev=3"]);
    assert!(
        err.contains("required revision has been compacted"),
        "{err}"
    );
    // And the node continues at the next revision.
    node.ctl(&["put", "after", "1"]);
    let v: serde_json::Value =
        serde_json::from_str(&node.ctl(&["get", "after", "-w", "json"])).expect("json");
    let before_v: serde_json::Value = serde_json::from_str(&before).expect("json");
    let rev_before: i64 = before_v["rev"].as_i64().expect("rev");
    assert_eq!(v["kvs"][0]["mod_revision"].as_i64(), Some(rev_before + 1));
}

#[test]
fn kill9_then_restart_keeps_every_acknowledged_write() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut node = RingkvProcess::start_in(&dir.path().join("d"), &[]);
    write_some(&node, 1);
    let before = snapshot(&node);
    // No graceful shutdown: the backend may not have committed the last writes; the WAL
    // replays them from the backend's consistent index.
    node.kill9();
    node.restart();
    assert_eq!(snapshot(&node), before);
    write_some(&node, 2);
    let before2 = snapshot(&node);
    node.kill9();
    node.restart();
    assert_eq!(snapshot(&node), before2);
}

fn ringkv_util(args: &[&str], data_dir: &std::path::Path) -> (Option<i32>, String) {
    let out = std::process::Command::new(ringkv_tests::ringkv_util_binary())
        .args(args)
        .arg(data_dir)
        .output()
        .expect("run ringkv-util");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}

#[test]
fn ringkv_util_checks_a_killed_members_data_dir_without_changing_it() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut node = RingkvProcess::start_in(&dir.path().join("d"), &[]);
    write_some(&node, 1);
    let before = snapshot(&node);
    let rev: serde_json::Value = serde_json::from_str(&before).expect("json");
    let rev = rev["rev"].as_i64().expect("rev");

    // A running member holds the WAL lock: the tool refuses.
    let (code, text) = ringkv_util(&["check"], &node.data_dir);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("is in use"), "{text}");

    node.kill9();
    let (code, text) = ringkv_util(&["check"], &node.data_dir);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("result: ok"), "{text}");
    // The backend may not have committed the last writes before kill -9; the WAL holds the
    // rest, and its entries reach at least as far as the revisions written.
    let last_entry: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("wal entries: "))
        .and_then(|r| r.split("..=").nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no WAL entries in\n{text}"));
    assert!(last_entry as i64 >= rev - 1, "{text}");
    let (code, dump) = ringkv_util(&["wal", "dump"], &node.data_dir);
    assert_eq!(code, Some(0), "{dump}");
    assert!(dump.contains(" entry index=1 "), "{dump}");
    assert!(dump.contains(" hard-state term="), "{dump}");

    // After a clean stop the backend holds every write: its revision is the node's.
    node.restart();
    assert_eq!(snapshot(&node), before);
    node.stop();
    let (code, text) = ringkv_util(&["backend", "stat"], &node.data_dir);
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains(&format!("mvcc revision: {rev} ")),
        "want revision {rev} in\n{text}"
    );
    node.restart();
    assert_eq!(snapshot(&node), before);
}

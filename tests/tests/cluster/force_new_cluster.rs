//! `--force-new-cluster` (spec §10 flags; issue 6, "Membership"): a survivor of a cluster that
//! lost its quorum restarts as a one-member cluster from its own data, keeping every key,
//! revision, its member ID and the cluster ID; the other members are removed for good.

use std::time::{Duration, Instant};

use ringkv_tests::{RingkvCluster, TRANSIENT, etcdctl_retrying};

/// etcdctl that must succeed, sent again after an error of a leader change (every put here
/// writes a fixed value; the revisions compared are read after the last put).
fn ctl(endpoint: &str, args: &[&str]) -> String {
    let out = etcdctl_retrying(endpoint, args, TRANSIENT);
    assert!(
        out.status.success(),
        "etcdctl {args:?} at {endpoint}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Member IDs (hex) in `member list` of `endpoint`.
fn member_ids(endpoint: &str) -> Vec<String> {
    ctl(endpoint, &["member", "list"])
        .lines()
        .filter_map(|l| l.split(',').next())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

fn keys(endpoint: &str) -> Vec<String> {
    ctl(endpoint, &["get", "f/", "--prefix", "--keys-only"])
        .lines()
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect()
}

#[test]
fn a_survivor_restarts_alone_with_its_data_and_the_others_are_removed() {
    let mut c = RingkvCluster::start(3);
    let leader = c.leader();
    let ep0 = c.members[0].endpoint();
    for i in 0..20 {
        ctl(
            &c.members[leader].endpoint(),
            &["put", &format!("f/{i:02}"), "v"],
        );
    }
    // Member 0 has applied everything (a linearizable read there), then the cluster dies.
    assert_eq!(keys(&ep0).len(), 20);
    let (id0, _, _) = c.status(0).expect("status");
    let rev = ctl(&ep0, &["get", "f/19", "-w", "json"]);
    for m in &mut c.members {
        m.stop();
    }

    c.members[0].add_args(&["--force-new-cluster"]);
    c.members[0].relaunch();
    c.members[0].wait_ready();
    assert_eq!(member_ids(&ep0), vec![format!("{id0:x}")]);
    assert_eq!(keys(&ep0).len(), 20);
    // The same revisions as before.
    let json = |s: &str| -> serde_json::Value { serde_json::from_str(s).unwrap() };
    assert_eq!(
        json(&ctl(&ep0, &["get", "f/19", "-w", "json"]))["kvs"],
        json(&rev)["kvs"]
    );
    ctl(&ep0, &["put", "f/20", "after"]);

    // Without the flag it stays a one-member cluster with all its data.
    c.members[0].stop();
    c.members[0].remove_arg("--force-new-cluster");
    c.members[0].relaunch();
    c.members[0].wait_ready();
    assert_eq!(member_ids(&ep0), vec![format!("{id0:x}")]);
    assert_eq!(keys(&ep0).len(), 21);

    // An old member coming back is refused as removed and stops itself.
    c.members[1].relaunch();
    let start = Instant::now();
    while c.members[1].running() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the removed member kept running"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        c.members[1].log().contains("removed"),
        "{}",
        c.members[1].log()
    );
}

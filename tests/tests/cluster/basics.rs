//! Replication and what an operator sees: writes on any member, linearizable reads on every
//! member, `member list` and `endpoint status --cluster` tables, whole-cluster restart.

use ringkv_tests::{NOT_APPLIED, RingkvCluster, TRANSIENT, etcdctl_retrying};
use serde_json::Value;

/// etcdctl that must succeed, sent again after an error of a leader change. The tests count
/// revisions: a put is sent again only when it was not applied.
fn ctl(endpoint: &str, args: &[&str]) -> String {
    let retry = if args[0] == "put" {
        NOT_APPLIED
    } else {
        TRANSIENT
    };
    let out = etcdctl_retrying(endpoint, args, retry);
    assert!(
        out.status.success(),
        "etcdctl {args:?} at {endpoint} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

fn json(endpoint: &str, args: &[&str]) -> Value {
    serde_json::from_str(&ctl(endpoint, args)).expect("etcdctl json")
}

/// (member ID, name, peer URLs, client URLs) of every member, as `member list -w json` says.
fn members(endpoint: &str) -> Vec<(u64, String, Vec<String>, Vec<String>)> {
    let v = json(endpoint, &["member", "list", "-w", "json"]);
    let strings = |x: &Value| -> Vec<String> {
        x.as_array()
            .map(|a| a.iter().map(|s| s.as_str().unwrap().to_string()).collect())
            .unwrap_or_default()
    };
    v["members"]
        .as_array()
        .expect("members")
        .iter()
        .map(|m| {
            (
                m["ID"].as_u64().unwrap(),
                m["name"].as_str().unwrap_or("").to_string(),
                strings(&m["peerURLs"]),
                strings(&m["clientURLs"]),
            )
        })
        .collect()
}

#[test]
fn writes_on_any_member_are_read_linearizably_on_every_member() {
    let mut c = RingkvCluster::start(3);
    for (i, m) in c.members.iter().enumerate() {
        ctl(&m.endpoint(), &["put", &format!("k{i}"), &format!("v{i}")]);
    }
    for m in &c.members {
        for i in 0..3 {
            let got = ctl(
                &m.endpoint(),
                &["get", &format!("k{i}"), "--print-value-only"],
            );
            assert_eq!(got.trim(), format!("v{i}"), "member {}", m.endpoint());
        }
    }
    // The revision of the 3 puts on every member, and one leader all agree on.
    for m in &c.members {
        let v = json(&m.endpoint(), &["get", "k2", "-w", "json"]);
        assert_eq!(v["header"]["revision"].as_i64(), Some(4));
    }
    let leader = c.leader();
    assert!(c.status(leader).is_some_and(|s| s.0 == s.1));
}

#[test]
fn member_list_and_endpoint_status_show_the_real_cluster() {
    let c = RingkvCluster::start(3);
    // Client URLs are published through raft: every member learns every other's. Wait
    // until they arrived (the publish is applied right after the first election).
    let want: Vec<(String, String, String)> = c
        .members
        .iter()
        .zip(&c.names)
        .map(|(m, n)| {
            (
                n.clone(),
                format!("http://127.0.0.1:{}", m.peer_port),
                format!("http://{}", m.endpoint()),
            )
        })
        .collect();
    for m in &c.members {
        let start = std::time::Instant::now();
        loop {
            let mut got: Vec<(String, String, String)> = members(&m.endpoint())
                .into_iter()
                .map(|(_, n, p, cl)| (n, p.join(","), cl.join(",")))
                .collect();
            got.sort();
            if got == want {
                break;
            }
            assert!(
                start.elapsed() < std::time::Duration::from_secs(10),
                "member list at {}: {got:?}, want {want:?}",
                m.endpoint()
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
    // Member IDs are etcd's: SHA-1 of the peer URL and the token.
    let ids: Vec<u64> = members(&c.members[0].endpoint())
        .iter()
        .map(|m| m.0)
        .collect();
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(ids, sorted, "members sorted by ID (spec §4.10)");
    for m in &c.members {
        let url = format!("http://127.0.0.1:{}", m.peer_port);
        let id = ringkv_net::member_id(&[url], ringkv_tests::TEST_CLUSTER_TOKEN, None);
        assert!(ids.contains(&id), "{id:x} not in {ids:x?}");
    }

    let table = ctl(&c.members[1].endpoint(), &["member", "list", "-w", "table"]);
    let rows: Vec<&str> = table.lines().filter(|l| l.starts_with("| ")).collect();
    assert_eq!(
        rows[0].split('|').map(str::trim).collect::<Vec<_>>(),
        [
            "",
            "ID",
            "STATUS",
            "NAME",
            "PEER ADDRS",
            "CLIENT ADDRS",
            "IS LEARNER",
            ""
        ]
    );
    assert_eq!(rows.len(), 4, "{table}");
    for r in &rows[1..] {
        let cells: Vec<&str> = r.split('|').map(str::trim).collect();
        assert_eq!(cells[2], "started", "{table}");
        assert_eq!(cells[6], "false", "{table}");
    }

    let status = ctl(
        &c.members[2].endpoint(),
        &["endpoint", "status", "--cluster", "-w", "table"],
    );
    let rows: Vec<Vec<String>> = status
        .lines()
        .filter(|l| l.starts_with("| "))
        .map(|l| l.split('|').map(|c| c.trim().to_string()).collect())
        .collect();
    assert_eq!(
        rows[0],
        [
            "",
            "ENDPOINT",
            "ID",
            "VERSION",
            "DB SIZE",
            "IS LEADER",
            "IS LEARNER",
            "RAFT TERM",
            "RAFT INDEX",
            "RAFT APPLIED INDEX",
            "ERRORS",
            ""
        ]
    );
    assert_eq!(rows.len(), 4, "{status}");
    assert_eq!(
        rows[1..].iter().filter(|r| r[5] == "true").count(),
        1,
        "exactly one leader: {status}"
    );
    let terms: Vec<&String> = rows[1..].iter().map(|r| &r[7]).collect();
    assert!(terms.iter().all(|t| *t == terms[0]), "{status}");
    for r in &rows[1..] {
        assert_eq!(r[6], "false");
        assert!(r[1].starts_with("http://127.0.0.1:"), "{status}");
    }
}

#[test]
fn restarting_the_whole_cluster_keeps_data_revisions_and_member_ids() {
    let mut c = RingkvCluster::start(3);
    for i in 0..9 {
        ctl(
            &c.members[i % 3].endpoint(),
            &["put", &format!("key{i:02}"), &format!("value{i}")],
        );
    }
    let before = json(
        &c.members[0].endpoint(),
        &["get", "key", "--prefix", "-w", "json"],
    );
    let ids_before: Vec<u64> = members(&c.members[0].endpoint())
        .iter()
        .map(|m| m.0)
        .collect();
    for m in &mut c.members {
        m.stop();
    }
    for m in &mut c.members {
        m.relaunch();
    }
    c.wait_ready();
    for m in &c.members {
        let after = json(&m.endpoint(), &["get", "key", "--prefix", "-w", "json"]);
        assert_eq!(after["kvs"], before["kvs"], "member {}", m.endpoint());
        assert_eq!(after["count"], before["count"]);
        assert_eq!(after["header"]["revision"], before["header"]["revision"]);
        let ids: Vec<u64> = members(&m.endpoint()).iter().map(|m| m.0).collect();
        assert_eq!(ids, ids_before);
    }
    // And the restarted cluster takes writes.
    ctl(&c.members[1].endpoint(), &["put", "after", "restart"]);
    let v = json(&c.members[2].endpoint(), &["get", "after", "-w", "json"]);
    assert_eq!(
        v["header"]["revision"].as_i64(),
        before["header"]["revision"].as_i64().map(|r| r + 1)
    );
}

//! Leader loss: kill -9 the leader under continuous writes; every acknowledged write survives
//! on the others and on the old leader once it rejoins.

use std::collections::BTreeSet;

use ringkv_tests::{RingkvCluster, TRANSIENT, etcdctl_at, etcdctl_retrying};

/// Puts `key` through all endpoints (etcdctl fails over); true when acknowledged.
fn put(endpoints: &str, key: &str) -> bool {
    etcdctl_at(endpoints, &["--command-timeout=3s", "put", key, "v"], None)
        .status
        .success()
}

fn keys_on(endpoint: &str) -> BTreeSet<String> {
    let out = etcdctl_retrying(
        endpoint,
        &["get", "w/", "--prefix", "--keys-only"],
        TRANSIENT,
    );
    assert!(
        out.status.success(),
        "linearizable get at {endpoint}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect()
}

#[test]
fn killing_the_leader_under_writes_loses_no_acknowledged_write() {
    let mut c = RingkvCluster::start(3);
    let endpoints = c.endpoints();
    let old = c.leader();
    let (old_id, _, old_term) = c.status(old).unwrap();
    let mut acked = BTreeSet::new();
    let writer = {
        let endpoints = endpoints.clone();
        std::thread::spawn(move || {
            let mut acked = Vec::new();
            for i in 0..40 {
                let key = format!("w/{i:03}");
                if put(&endpoints, &key) {
                    acked.push(key);
                }
            }
            acked
        })
    };
    // Kill the leader while the writer runs.
    std::thread::sleep(std::time::Duration::from_millis(400));
    c.members[old].kill9();
    acked.extend(writer.join().unwrap());
    assert!(
        acked.len() >= 20,
        "too few writes acknowledged: {}",
        acked.len()
    );

    let new = c.leader();
    assert_ne!(new, old);
    let (new_leader_id, new_leader, new_term) = c.status(new).unwrap();
    assert_eq!(new_leader, new_leader_id);
    assert_ne!(new_leader, old_id);
    assert!(new_term > old_term);
    // Writes resume (sent again while etcd's errors of a leader change come back).
    let out = etcdctl_retrying(&endpoints, &["put", "w/after", "v"], TRANSIENT);
    assert!(
        out.status.success(),
        "put after the failover: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    acked.insert("w/after".to_string());
    for (i, m) in c.members.iter().enumerate() {
        if i == old {
            continue;
        }
        let have = keys_on(&m.endpoint());
        let missing: Vec<&String> = acked.difference(&have).collect();
        assert!(
            missing.is_empty(),
            "member {i} lost acknowledged writes {missing:?}"
        );
    }
    c.members[old].relaunch();
    c.members[old].wait_ready();
    let have = keys_on(&c.members[old].endpoint());
    let missing: Vec<&String> = acked.difference(&have).collect();
    assert!(missing.is_empty(), "rejoined old leader misses {missing:?}");
    // All three hold the same keys (unacknowledged writes may or may not have committed, but
    // the same way everywhere).
    let reference = keys_on(&c.members[0].endpoint());
    for m in &c.members[1..] {
        assert_eq!(keys_on(&m.endpoint()), reference);
    }
}

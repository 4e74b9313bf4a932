//! Network partitions through the harness's peer proxies (issue 6, "Partition"; raft §6.2 with
//! check-quorum, spec §6): an isolated leader cannot commit or serve linearizable reads, the
//! majority elects a new leader and serves writes, and after healing every member converges to
//! the same revision and the same hash.

use std::time::{Duration, Instant};

use ringkv_tests::{RingkvCluster, etcdctl_at};
use serde_json::Value;

/// etcdctl against one member, with a command timeout longer than the server's request timeout
/// (5 s + 2 election timeouts) so the server's own error comes back.
fn ctl(endpoint: &str, args: &[&str]) -> (bool, String) {
    let mut all = vec!["--command-timeout=15s"];
    all.extend_from_slice(args);
    let out = etcdctl_at(endpoint, &all, None);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// (leader ID, revision) member `endpoint` reports (serializable Status).
fn status(endpoint: &str) -> Option<(u64, i64)> {
    let (ok, out) = ctl(endpoint, &["endpoint", "status", "-w", "json"]);
    if !ok {
        return None;
    }
    let v: Value = serde_json::from_str(&out).ok()?;
    let s = &v[0]["Status"];
    Some((
        s["leader"].as_u64().unwrap_or(0),
        s["header"]["revision"].as_i64()?,
    ))
}

/// (revision, hash) of `etcdctl endpoint hashkv` on one member.
fn hashkv(endpoint: &str) -> Option<(i64, u64)> {
    let (ok, out) = ctl(endpoint, &["endpoint", "hashkv", "-w", "json"]);
    if !ok {
        return None;
    }
    let v: Value = serde_json::from_str(&out).ok()?;
    let h = &v[0]["HashKV"];
    Some((h["header"]["revision"].as_i64()?, h["hash"].as_u64()?))
}

/// Waits (up to 30 s) until `cond` holds.
fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{what}: not within 30 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Check-quorum (etcd's `--pre-vote`/check-quorum, raft §6.2) and the partition rules: a
/// leader cut off from the majority steps down by itself, cannot commit or serve a
/// linearizable read, and converges with the others after healing.
#[test]
fn an_isolated_leader_steps_down_cannot_commit_and_rejoins_after_healing() {
    let mut c = RingkvCluster::start_proxied(3, &[], &[]);
    let old = c.leader();
    let ids: Vec<u64> = (0..3).map(|i| c.status(i).expect("status").0).collect();
    let ep: Vec<String> = c.members.iter().map(|m| m.endpoint()).collect();
    for i in 0..20 {
        assert!(ctl(&ep[i % 3], &["put", &format!("p/{i:02}"), "before"]).0);
    }

    c.partition.isolate(ids[old], &ids);
    let majority: Vec<usize> = (0..3).filter(|i| *i != old).collect();
    // The majority elects a leader among itself.
    let mut new_leader = 0;
    wait_for("a new leader in the majority", || {
        let l: Vec<u64> = majority
            .iter()
            .map(|i| status(&ep[*i]).map_or(0, |s| s.0))
            .collect();
        new_leader = l[0];
        l[0] != 0 && l[0] != ids[old] && l.iter().all(|x| *x == l[0])
    });
    assert!(majority.iter().any(|i| ids[*i] == new_leader));
    // Check-quorum: the old leader hears from no quorum for an election timeout and steps
    // down by itself (it cannot learn of the new leader: nothing reaches it). Without
    // check-quorum it would go on calling itself leader for as long as the partition lasts.
    wait_for("the isolated leader to step down", || {
        status(&ep[old]).is_some_and(|(leader, _)| leader != ids[old])
    });
    // ... and serves writes and linearizable reads.
    // On 2 loaded vCPUs the new leader can lose a check-quorum round and step down for an
    // election; a write that meets that gets "no leader" / "leader changed" (etcd too) and is
    // sent again. Rewriting the same key and value leaves the expected key set unchanged.
    for i in 0..10 {
        let mut last = String::new();
        wait_for(&format!("write q/{i:02} on the majority"), || {
            let (ok, out) = ctl(
                &ep[majority[i % 2]],
                &["put", &format!("q/{i:02}"), "during"],
            );
            assert!(
                ok || out.contains("etcdserver: no leader")
                    || out.contains("etcdserver: leader changed")
                    || out.contains("etcdserver: request timed out"),
                "write on the majority: {out}"
            );
            last = out;
            ok
        });
        assert!(last.contains("OK"), "{last}");
    }
    let (ok, out) = ctl(&ep[majority[0]], &["get", "q/", "--prefix", "--keys-only"]);
    assert!(
        ok && out.lines().filter(|l| !l.is_empty()).count() == 10,
        "{out}"
    );

    // The isolated old leader can neither commit a write nor serve a linearizable read; both
    // fail with etcd's errors (in parallel: each waits for the server's request timeout).
    let old_ep = ep[old].clone();
    let write = std::thread::spawn({
        let old_ep = old_ep.clone();
        move || ctl(&old_ep, &["put", "isolated", "x"])
    });
    let read = ctl(&old_ep, &["get", "p/00"]);
    let write = write.join().unwrap();
    for (what, (ok, out)) in [("write", write), ("linearizable read", read)] {
        assert!(!ok, "the isolated member served a {what}: {out}");
        assert!(
            out.contains("etcdserver: request timed out")
                || out.contains("etcdserver: no leader")
                || out.contains("etcdserver: leader changed"),
            "{what} on the isolated member: {out}"
        );
    }
    // A serializable read still answers, from its stale state.
    let (ok, out) = ctl(&old_ep, &["get", "q/00", "--consistency=s"]);
    assert!(ok, "{out}");
    assert!(!out.contains("during"), "{out}");

    c.partition.heal();
    // Everyone agrees on one leader again, and on the revision and the hash.
    wait_for("one leader after healing", || {
        let l: Vec<u64> = (0..3).map(|i| status(&ep[i]).map_or(0, |s| s.0)).collect();
        l[0] != 0 && l.iter().all(|x| *x == l[0])
    });
    wait_for("a write through the healed member", || {
        ctl(&ep[old], &["put", "after", "heal"]).0
    });
    let mut hashes = Vec::new();
    wait_for("the same revision and hash on every member", || {
        hashes = (0..3).map(|i| hashkv(&ep[i])).collect();
        hashes[0].is_some() && hashes.iter().all(|h| *h == hashes[0])
    });
    let (ok, out) = ctl(&ep[old], &["get", "q/", "--prefix", "--keys-only"]);
    assert!(
        ok && out.lines().filter(|l| !l.is_empty()).count() == 10,
        "{out}"
    );
}

/// Pre-vote (raft thesis §9.6; etcd's `--pre-vote`, on): a follower cut off from the others
/// campaigns only as a pre-candidate, which does not raise its term; when the link heals it
/// rejoins under the same leader in the same term instead of deposing it.
#[test]
fn a_partitioned_follower_keeps_its_term_and_rejoins_without_deposing_the_leader() {
    // Slower timing than the other cluster tests: the leader must not lose a check-quorum
    // round to a loaded machine while this test watches its term.
    let timing = ["--heartbeat-interval", "20", "--election-timeout", "400"];
    let mut c = RingkvCluster::start_proxied(3, &timing, &[]);
    let leader = c.leader();
    let ids: Vec<u64> = (0..3).map(|i| c.status(i).expect("status").0).collect();
    let f = (leader + 1) % 3;
    let (_, _, term) = c.status(f).expect("status of the follower");
    let (_, _, leader_term) = c.status(leader).expect("status of the leader");
    assert_eq!(term, leader_term);
    let pre_votes = |c: &RingkvCluster| {
        c.members[f]
            .metric("ringkv_raft_vote_requests_sent_total{type=\"pre_vote\"}")
            .expect("pre-vote counter on /metrics")
    };
    let votes = |c: &RingkvCluster| {
        c.members[f]
            .metric("ringkv_raft_vote_requests_sent_total{type=\"vote\"}")
            .expect("vote counter on /metrics")
    };
    let (pre_before, votes_before) = (pre_votes(&c), votes(&c));

    c.partition.isolate(ids[f], &ids);
    // Three campaigns (each asks both other members) go unanswered ...
    wait_for("three pre-vote campaigns of the isolated follower", || {
        pre_votes(&c) >= pre_before + 6.0
    });
    // ... and none of them raised its term or made it a candidate.
    let (_, _, isolated_term) = c.status(f).expect("status of the isolated follower");
    assert_eq!(
        isolated_term, term,
        "the isolated follower's term moved: it campaigned without pre-vote"
    );
    assert_eq!(
        votes(&c),
        votes_before,
        "the isolated follower became a candidate"
    );

    c.partition.heal();
    wait_for("the follower to rejoin under the old leader", || {
        c.status(f).is_some_and(|s| s.1 == ids[leader])
    });
    // The leader kept its leadership and its term.
    let (_, seen_leader, now_term) = c.status(leader).expect("status of the leader");
    assert_eq!(
        seen_leader, ids[leader],
        "the rejoining follower deposed the leader"
    );
    assert_eq!(now_term, term, "the rejoin raised the cluster's term");
    assert_eq!(c.status(f).expect("status").2, term);
}

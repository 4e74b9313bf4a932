//! Leases across a leader change (issue 6, "Leases"; spec §4.10 and etcd's lessor Promote):
//! renewals and TimeToLive sent to a follower reach the leader's lessor, a new leader extends
//! every lease (remaining TTL + election timeout) so a lease kept alive through the change does
//! not expire, and the new leader expires it once the renewals stop.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use ringkv_tests::{NOT_APPLIED, RingkvCluster, TRANSIENT, etcdctl_retrying};

/// etcdctl, sent again after an error of a leader change (reads, renewals and a put of a fixed
/// value: each leaves the same state when applied twice).
fn ctl(endpoints: &str, args: &[&str]) -> (bool, String) {
    let out = etcdctl_retrying(endpoints, args, TRANSIENT);
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn key_exists(endpoint: &str) -> Option<bool> {
    let (ok, out) = ctl(endpoint, &["get", "leased", "--keys-only"]);
    ok.then(|| out.lines().any(|l| l == "leased"))
}

#[test]
fn a_lease_kept_alive_through_followers_survives_a_leader_kill_and_expires_after() {
    let mut c = RingkvCluster::start(3);
    let old = c.leader();
    let followers: Vec<usize> = (0..3).filter(|i| *i != old).collect();
    let ep: Vec<String> = c.members.iter().map(|m| m.endpoint()).collect();
    let f0 = ep[followers[0]].clone();
    let both = format!("{},{}", ep[followers[0]], ep[followers[1]]);

    let out = etcdctl_retrying(&f0, &["lease", "grant", "3"], NOT_APPLIED);
    let (ok, out) = (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned()
            + String::from_utf8_lossy(&out.stderr).as_ref(),
    );
    assert!(ok, "{out}");
    // "lease 694d7a1c5f1b0a0d granted with TTL(3s)"
    let id = out.split_whitespace().nth(1).expect("lease id").to_string();
    let (ok, out) = ctl(&f0, &["put", "leased", "v", &format!("--lease={id}")]);
    assert!(ok, "{out}");

    // A client renews every 500 ms through the followers only (never the leader's endpoint).
    let stop = Arc::new(AtomicBool::new(false));
    let renewed = Arc::new(AtomicUsize::new(0));
    let keeper = std::thread::spawn({
        let (stop, renewed, both, id) = (stop.clone(), renewed.clone(), both.clone(), id.clone());
        move || {
            while !stop.load(Ordering::Acquire) {
                let (ok, out) = ctl(&both, &["lease", "keep-alive", "--once", &id]);
                if ok && out.contains("keepalived with TTL(3)") {
                    renewed.fetch_add(1, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(500));
            }
        }
    });
    // TimeToLive on a follower is the leader's: a remaining TTL within the granted one.
    let (ok, out) = ctl(&f0, &["lease", "timetolive", &id]);
    assert!(ok, "{out}");
    let remaining: i64 = out
        .split("remaining(")
        .nth(1)
        .and_then(|r| r.split('s').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no remaining TTL in {out:?}"));
    assert!((0..=3).contains(&remaining), "{out}");

    // Longer than the TTL with renewals only through followers: the leader's lessor got them.
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(
        key_exists(&f0),
        Some(true),
        "the lease expired while renewed"
    );
    c.members[old].kill9();
    let new = c.leader();
    assert_ne!(new, old);
    // Longer than the TTL again after the leader change, renewals still going.
    let before = renewed.load(Ordering::Relaxed);
    std::thread::sleep(Duration::from_secs(4));
    assert!(
        renewed.load(Ordering::Relaxed) > before,
        "no renewal succeeded after the leader change"
    );
    assert_eq!(
        key_exists(&ep[new]),
        Some(true),
        "the lease expired on the new leader while renewed"
    );

    // Renewals stop: the new leader expires the lease (followers never do on their own).
    stop.store(true, Ordering::Release);
    keeper.join().unwrap();
    let start = Instant::now();
    while key_exists(&ep[new]) != Some(false) {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the lease never expired on the new leader"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    for i in followers {
        assert_eq!(key_exists(&ep[i]), Some(false));
    }
}

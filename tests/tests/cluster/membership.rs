//! Membership through etcdctl (spec §4.10): add a learner, start it with
//! `--initial-cluster-state existing`, let it catch up, promote it, remove a member (which
//! stops itself), and etcd's errors on the way.

use std::time::{Duration, Instant};

use ringkv_tests::{
    CLUSTER_TIMING, NOT_APPLIED, RingkvCluster, RingkvProcess, TEST_CLUSTER_TOKEN, TRANSIENT,
    etcdctl_at, etcdctl_retrying, free_port,
};

/// etcdctl that must succeed, sent again after an error of a leader change: any such error
/// for reads and puts of fixed values, only "no leader" (nothing proposed) for membership
/// changes, which must not be applied twice.
fn ctl(endpoint: &str, args: &[&str]) -> String {
    let retry = if args[0] == "member" && args[1] != "list" {
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

fn ctl_err(endpoint: &str, args: &[&str]) -> String {
    let out = etcdctl_at(endpoint, args, None);
    assert!(!out.status.success(), "etcdctl {args:?} should fail");
    String::from_utf8(out.stderr).expect("utf-8")
}

/// Adds an (unstarted) learner named `l` with peer URL `url`; returns its hex ID.
fn add_unstarted_learner(endpoint: &str, url: &str) -> String {
    let added = ctl(
        endpoint,
        &[
            "member",
            "add",
            "l",
            "--learner",
            &format!("--peer-urls={url}"),
        ],
    );
    added
        .split_whitespace()
        .nth(1)
        .expect("Member <id> added")
        .to_string()
}

/// `member list` lines: (hex ID, status, name, is learner).
fn member_lines(endpoint: &str) -> Vec<(String, String, String, String)> {
    ctl(endpoint, &["member", "list"])
        .lines()
        .map(|l| {
            let c: Vec<&str> = l.split(", ").collect();
            (
                c[0].to_string(),
                c[1].to_string(),
                c[2].to_string(),
                c[5].to_string(),
            )
        })
        .collect()
}

#[test]
fn a_learner_joins_catches_up_is_promoted_and_a_removed_member_stops() {
    let mut c = RingkvCluster::start(3);
    let leader = c.leader();
    let ep = c.members[leader].endpoint();
    // MemberPromote sent to a follower is forwarded to the leader (etcd does the same): only
    // the leader knows the learner's progress.
    let follower_ep = c.members[(leader + 1) % 3].endpoint();
    for i in 0..10 {
        ctl(&ep, &["put", &format!("pre/{i:02}"), "x"]);
    }
    let (client, peer) = (free_port(), free_port());
    let peer_url = format!("http://127.0.0.1:{peer}");
    let added = ctl(
        &ep,
        &[
            "member",
            "add",
            "m3",
            "--learner",
            &format!("--peer-urls={peer_url}"),
        ],
    );
    let id = added
        .split_whitespace()
        .nth(1)
        .expect("Member <id> added")
        .to_string();
    // etcd's errors: the same peer URL again; promoting a voter; a second learner.
    assert!(
        ctl_err(
            &ep,
            &["member", "add", "x", &format!("--peer-urls={peer_url}")]
        )
        .contains("Peer URLs already exists")
    );
    let voter = member_lines(&ep)
        .into_iter()
        .find(|m| m.3 == "false")
        .unwrap()
        .0;
    assert!(
        ctl_err(&follower_ep, &["member", "promote", &voter])
            .contains("can only promote a learner member")
    );
    assert!(
        ctl_err(
            &ep,
            &[
                "member",
                "add",
                "y",
                "--learner",
                "--peer-urls=http://127.0.0.1:1"
            ]
        )
        .contains("too many learner members in cluster")
    );
    let unstarted = member_lines(&ep).into_iter().find(|m| m.0 == id).unwrap();
    assert_eq!(
        (unstarted.1.as_str(), unstarted.3.as_str()),
        ("unstarted", "true")
    );

    let initial = c
        .members
        .iter()
        .zip(&c.names)
        .map(|(m, n)| format!("{n}=http://127.0.0.1:{}", m.peer_port))
        .chain([format!("m3={peer_url}")])
        .collect::<Vec<_>>()
        .join(",");
    let dir = tempfile::tempdir().unwrap();
    let extra: Vec<String> = [
        "--name",
        "m3",
        "--initial-cluster",
        &initial,
        "--initial-cluster-state",
        "existing",
        "--initial-cluster-token",
        TEST_CLUSTER_TOKEN,
    ]
    .iter()
    .chain(&CLUSTER_TIMING)
    .map(|s| s.to_string())
    .collect();
    let mut learner = RingkvProcess::launch(&dir.path().join("data"), client, peer, &extra);
    learner.wait_ready();
    // A learner serves serializable reads of everything replicated, and refuses the rest.
    let start = Instant::now();
    loop {
        let out = ctl(
            &learner.endpoint(),
            &["get", "pre/", "--prefix", "--keys-only", "--consistency=s"],
        );
        if out.lines().filter(|l| !l.is_empty()).count() == 10 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "learner has {out}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(ctl_err(&learner.endpoint(), &["put", "k", "v"]).contains("not supported for learner"));
    let st = ctl(&learner.endpoint(), &["endpoint", "status", "-w", "table"]);
    let row: Vec<&str> = st
        .lines()
        .filter(|l| l.starts_with("| 127."))
        .flat_map(|l| l.split('|').map(str::trim))
        .collect();
    assert_eq!((row[5], row[6]), ("false", "true"), "learner flag: {st}");

    ctl(&follower_ep, &["member", "promote", &id]);
    let promoted = member_lines(&ep).into_iter().find(|m| m.0 == id).unwrap();
    assert_eq!(
        (
            promoted.1.as_str(),
            promoted.2.as_str(),
            promoted.3.as_str()
        ),
        ("started", "m3", "false")
    );
    // The promoted member takes writes.
    ctl(&learner.endpoint(), &["put", "from/m3", "x"]);

    // Remove a follower: it stops itself; the other three go on.
    let victim = (0..3).find(|&i| i != leader).unwrap();
    let (victim_id, ..) = c.status(victim).unwrap();
    ctl(&ep, &["member", "remove", &format!("{victim_id:x}")]);
    let start = Instant::now();
    while c.members[victim].running() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "removed member still running; log: {}",
            c.members[victim].log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        ctl_err(&ep, &["member", "remove", &format!("{victim_id:x}")]).contains("member not found")
    );
    ctl(&ep, &["put", "after/removal", "x"]);
    assert_eq!(
        ctl(
            &learner.endpoint(),
            &["get", "after/removal", "--print-value-only"]
        )
        .trim(),
        "x"
    );
    assert_eq!(member_lines(&learner.endpoint()).len(), 3);
}

/// raft-rs turns a conf change proposed while the leader has not yet seen the previous one
/// applied into an empty entry, which would leave its proposer waiting for the request timeout.
/// Changes sent back to back, to the leader and to a follower, by etcdctl and by a client that
/// sends the next one the moment the previous answer arrives, must each take effect: a
/// dropped one fails here with "request timed out".
#[test]
fn back_to_back_member_changes_all_take_effect() {
    let mut c = RingkvCluster::start(3);
    let leader = c.leader();
    let endpoints = [
        c.members[leader].endpoint(),
        c.members[(leader + 1) % 3].endpoint(),
    ];
    let ids_of = |ep: &str| -> Vec<String> {
        let mut v: Vec<String> = member_lines(ep).into_iter().map(|m| m.0).collect();
        v.sort();
        v
    };
    let before = ids_of(&endpoints[0]);
    assert_eq!(before.len(), 3);

    for ep in &endpoints {
        // Learner added, then removed at once.
        let url = format!("http://127.0.0.1:{}", free_port());
        let id = add_unstarted_learner(ep, &url);
        let id = id.as_str();
        ctl(ep, &["member", "remove", id]);
        // A learner and a voter (neither ever started) added back to back, then both removed
        // back to back. (A second voter add would be refused while the first is unreachable:
        // etcd's "unhealthy cluster", tested below.)
        let (u1, u2) = (
            format!("http://127.0.0.1:{}", free_port()),
            format!("http://127.0.0.1:{}", free_port()),
        );
        let a1 = ctl(
            ep,
            &[
                "member",
                "add",
                "l1",
                "--learner",
                &format!("--peer-urls={u1}"),
            ],
        );
        let a2 = ctl(ep, &["member", "add", "v2", &format!("--peer-urls={u2}")]);
        let (id1, id2) = (
            a1.split_whitespace().nth(1).expect("Member <id> added"),
            a2.split_whitespace().nth(1).expect("Member <id> added"),
        );
        let five = ids_of(ep);
        assert!(
            five.len() == 5 && five.iter().any(|m| m == id1) && five.iter().any(|m| m == id2),
            "{five:?}"
        );
        ctl(ep, &["member", "remove", id2]);
        ctl(ep, &["member", "remove", id1]);
        assert_eq!(ids_of(ep), before);
    }

    // A client that sends the next change as soon as the previous answer arrives.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        for ep in &endpoints {
            let mut client = etcd_client::Client::connect([format!("http://{ep}")], None)
                .await
                .expect("connect");
            for round in 0..5 {
                let url = format!("http://127.0.0.1:{}", free_port());
                let added = client
                    .member_add(
                        [url],
                        Some(etcd_client::MemberAddOptions::new().with_is_learner()),
                    )
                    .await
                    .unwrap_or_else(|e| panic!("round {round} at {ep}: member add: {e}"));
                let id = added.member().expect("added member").id();
                assert!(added.member_list().iter().any(|m| m.id() == id));
                let removed = client
                    .member_remove(id)
                    .await
                    .unwrap_or_else(|e| panic!("round {round} at {ep}: member remove: {e}"));
                assert!(removed.members().iter().all(|m| m.id() != id));
                assert_eq!(removed.members().len(), 3);
            }
        }
    });
    for ep in &endpoints {
        assert_eq!(ids_of(ep), before);
    }
}

/// etcd 3.5's checks around reconfiguration (`--strict-reconfig-check`, on by default) and the
/// other membership RPCs: MemberUpdate keeps a learner a learner (etcd 3.4 turned it into a
/// voter); MoveLeader hands leadership over; with a voter down, removing another voter is
/// refused ("unhealthy cluster"), as is adding any member, while removing the downed one is
/// allowed; adding a voter that would leave too few started voters is refused.
#[test]
fn member_update_move_leader_and_etcds_reconfiguration_checks() {
    let mut c = RingkvCluster::start(3);
    let all = c.endpoints();
    let leader = c.leader();
    let ep = c.members[leader].endpoint();
    let ids: Vec<u64> = (0..3).map(|i| c.status(i).expect("status").0).collect();

    // MemberUpdate of an (unstarted) learner: new peer URL, still a learner.
    let url = format!("http://127.0.0.1:{}", free_port());
    let id = add_unstarted_learner(&ep, &url);
    let id = id.as_str();
    let moved = format!("http://127.0.0.1:{}", free_port());
    ctl(
        &ep,
        &["member", "update", id, &format!("--peer-urls={moved}")],
    );
    let table = ctl(&ep, &["member", "list", "-w", "table"]);
    let row: Vec<&str> = table
        .lines()
        .find(|l| l.contains(id))
        .unwrap_or_else(|| panic!("{id} not in {table}"))
        .split('|')
        .map(str::trim)
        .collect();
    assert_eq!((row[4], row[6]), (moved.as_str(), "true"), "{table}");
    // A learner that never started has nothing of the log: etcd refuses to promote it.
    let err = ctl_err(&ep, &["member", "promote", id]);
    assert!(
        err.contains("etcdserver: can only promote a learner member which is in sync with leader"),
        "{err}"
    );
    ctl(&ep, &["member", "remove", id]);

    // MoveLeader to a follower (etcdctl finds the leader among the endpoints).
    let target = (leader + 1) % 3;
    let out = ctl(&all, &["move-leader", &format!("{:x}", ids[target])]);
    assert!(out.contains("Leadership transferred"), "{out}");
    assert_eq!(c.leader(), target);
    assert!(
        ctl_err(&c.members[target].endpoint(), &["move-leader", "1"])
            .contains("bad leader transferee"),
    );
    let leader = target;
    let ep = c.members[leader].endpoint();

    // Three started voters: adding a fourth voter that never starts is allowed (3 started
    // voters are a quorum of 4); adding any member after it is not, as the leader cannot
    // reach every voter ("unhealthy cluster"); removing the unstarted one is allowed.
    let url = format!("http://127.0.0.1:{}", free_port());
    let added = ctl(&ep, &["member", "add", "v", &format!("--peer-urls={url}")]);
    let unstarted = added.split_whitespace().nth(1).expect("Member <id> added");
    let err = ctl_err(
        &ep,
        &[
            "member",
            "add",
            "w",
            &format!("--peer-urls=http://127.0.0.1:{}", free_port()),
        ],
    );
    assert!(err.contains("etcdserver: unhealthy cluster"), "{err}");
    ctl(&ep, &["member", "remove", unstarted]);

    // One follower down: removing the other follower would leave the leader alone of two.
    let down = (leader + 1) % 3;
    let other = (leader + 2) % 3;
    c.members[down].stop();
    // The leader counts a voter active while it heard from it within an election timeout, so
    // it refuses only once that passed, after a time no test can bound on a loaded machine.
    // Adding a learner shows it (a learner added before then is removed again); removing
    // the other voter cannot be used to wait: allowed, it would break the cluster.
    let start = Instant::now();
    loop {
        let url = format!("--peer-urls=http://127.0.0.1:{}", free_port());
        let out = etcdctl_at(&ep, &["member", "add", "x", "--learner", &url], None);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(err.contains("etcdserver: unhealthy cluster"), "{err}");
            break;
        }
        let early = text.split_whitespace().nth(1).expect("Member <id> added");
        ctl(&ep, &["member", "remove", early]);
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the leader still counts the stopped member active after 30 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let err = ctl_err(&ep, &["member", "remove", &format!("{:x}", ids[other])]);
    assert!(err.contains("etcdserver: unhealthy cluster"), "{err}");
    // A follower answers as the leader (it hands the request over; deciding alone, it would
    // remove itself and leave the leader without a quorum).
    let err = ctl_err(
        &c.members[other].endpoint(),
        &["member", "remove", &format!("{:x}", ids[other])],
    );
    assert!(err.contains("etcdserver: unhealthy cluster"), "{err}");
    // The member that is down is no part of the active quorum: removing it is fine.
    ctl(&ep, &["member", "remove", &format!("{:x}", ids[down])]);
    assert_eq!(member_lines(&ep).len(), 2);
    ctl(&ep, &["put", "after", "removal"]);
    assert_eq!(
        ctl(
            &c.members[other].endpoint(),
            &["get", "after", "--print-value-only"]
        )
        .trim(),
        "removal"
    );
}

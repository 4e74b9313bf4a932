//! Peer TLS (and client TLS) in a 3-member cluster: https peer URLs with
//! `--peer-client-cert-auth`, a leader elected and writes replicated, follower requests
//! forwarded to the leader's https client URL; a member whose certificate comes from another
//! CA is refused by its peers and never joins.

use std::path::Path;
use std::time::{Duration, Instant};

use ringkv_tests::{TEST_CLUSTER_TOKEN, TestPki, TlsMember, free_port};
use serde_json::Value;

/// Starts three members with https peer and client URLs; member `i` uses `certs(i)` as
/// (peer cert, peer key, peer CA).
fn start(
    pki: &TestPki,
    dir: &Path,
    certs: impl Fn(usize) -> (String, String, String),
) -> Vec<TlsMember> {
    let ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
    let initial = ports
        .iter()
        .enumerate()
        .map(|(i, (_, p))| format!("m{i}=https://127.0.0.1:{p}"))
        .collect::<Vec<_>>()
        .join(",");
    ports
        .iter()
        .enumerate()
        .map(|(i, (client, peer))| {
            let (cert, key, ca) = certs(i);
            let flags = vec![
                format!("--name=m{i}"),
                format!("--initial-cluster={initial}"),
                format!("--initial-cluster-token={TEST_CLUSTER_TOKEN}"),
                format!("--listen-client-urls=https://127.0.0.1:{client}"),
                format!("--advertise-client-urls=https://127.0.0.1:{client}"),
                format!("--listen-peer-urls=https://127.0.0.1:{peer}"),
                format!("--initial-advertise-peer-urls=https://127.0.0.1:{peer}"),
                format!("--cert-file={}", pki.server_cert.display()),
                format!("--key-file={}", pki.server_key.display()),
                format!("--trusted-ca-file={}", pki.ca.display()),
                "--client-cert-auth".into(),
                format!("--peer-cert-file={cert}"),
                format!("--peer-key-file={key}"),
                format!("--peer-trusted-ca-file={ca}"),
                "--peer-client-cert-auth".into(),
            ];
            TlsMember::launch(
                &dir.join(format!("m{i}")).join("data"),
                *client,
                *peer,
                &flags,
            )
        })
        .collect()
}

fn good_certs(pki: &TestPki) -> impl Fn(usize) -> (String, String, String) + '_ {
    |_| {
        (
            pki.server_cert.display().to_string(),
            pki.server_key.display().to_string(),
            pki.ca.display().to_string(),
        )
    }
}

#[test]
fn a_cluster_with_peer_tls_elects_replicates_and_forwards() {
    let pki = TestPki::new();
    let tmp = tempfile::tempdir().unwrap();
    let mut members = start(&pki, tmp.path(), good_certs(&pki));
    for m in &mut members {
        m.wait_healthy(&pki.curl_flags());
    }
    let tls = pki.etcdctl_flags();
    // Every member names the same leader.
    let status = |m: &TlsMember| -> (u64, u64) {
        let v: Value =
            serde_json::from_str(&m.ctl(&tls, &["endpoint", "status", "-w", "json"])).unwrap();
        (
            v[0]["Status"]["header"]["member_id"].as_u64().unwrap(),
            v[0]["Status"]["leader"].as_u64().unwrap_or(0),
        )
    };
    // (Each member was healthy, so each knew a leader; they agree once the election settled.)
    let start = Instant::now();
    let (leaders, leader) = loop {
        let leaders: Vec<(u64, u64)> = members.iter().map(status).collect();
        let leader = leaders[0].1;
        if leader != 0 && leaders.iter().all(|s| s.1 == leader) {
            break (leaders, leader);
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no agreed leader within 30 s: {leaders:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let li = leaders
        .iter()
        .position(|s| s.0 == leader)
        .expect("leader is a member");
    let f = (li + 1) % 3;

    // A write on a follower, linearizable reads on every member.
    assert_eq!(
        members[f]
            .ctl(&tls, &["put", "tls-key", "replicated"])
            .trim(),
        "OK"
    );
    for m in &members {
        assert_eq!(
            m.ctl(&tls, &["get", "tls-key", "--print-value-only"]),
            "replicated\n"
        );
    }
    // The member list shows https peer and client URLs.
    let list = members[0].ctl(&tls, &["member", "list"]);
    assert_eq!(list.lines().count(), 3, "{list}");
    for (i, m) in members.iter().enumerate() {
        let line = list
            .lines()
            .find(|l| l.contains(&format!(", m{i}, ")))
            .unwrap_or_else(|| panic!("m{i} missing in {list}"));
        assert!(
            line.contains(&format!(
                "https://127.0.0.1:{}, https://127.0.0.1:{}",
                m.peer_port, m.client_port
            )),
            "{line}"
        );
    }
    // Lease renewals on a follower are forwarded to the leader's https client URL.
    let out = members[f].ctl(&tls, &["lease", "grant", "30"]);
    let id = out.split_whitespace().nth(1).expect("lease id").to_string();
    let out = members[f].ctl(&tls, &["lease", "keep-alive", "--once", &id]);
    assert!(out.contains("keepalived with TTL(30)"), "{out}");
    let out = members[f].ctl(&tls, &["lease", "timetolive", &id]);
    assert!(out.contains("granted with TTL(30s)"), "{out}");
}

/// A member with a peer certificate from another CA (and trusting only that CA): the others
/// refuse its connections during the TLS handshake and it refuses theirs, so it never learns
/// of a leader while the two others serve.
#[test]
fn a_member_with_a_certificate_from_another_ca_cannot_join() {
    let pki = TestPki::new();
    let tmp = tempfile::tempdir().unwrap();
    let mut members = start(&pki, tmp.path(), |i| {
        if i == 2 {
            (
                pki.other_cert.display().to_string(),
                pki.other_key.display().to_string(),
                pki.other_ca.display().to_string(),
            )
        } else {
            good_certs(&pki)(i)
        }
    });
    members[0].wait_healthy(&pki.curl_flags());
    members[1].wait_healthy(&pki.curl_flags());
    let tls = pki.etcdctl_flags();
    assert_eq!(members[0].ctl(&tls, &["put", "k", "v"]).trim(), "OK");
    // Wait until the good members logged a refused handshake from the bad one.
    let start = Instant::now();
    while !members[0].log().contains("refused a peer connection")
        && !members[1].log().contains("refused a peer connection")
    {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no refusal logged: {}",
            members[0].log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let logs = format!("{}{}", members[0].log(), members[1].log());
    assert!(
        // Which side fails first is a race: a good member refusing the bad member's
        // certificate (UnknownIssuer), or the bad member refusing a good member's, which the
        // good member then logs as the alert it received (UnknownCA).
        logs.contains("TLS handshake")
            && (logs.contains("UnknownIssuer") || logs.contains("UnknownCA"))
            || logs.contains("invalid peer certificate"),
        "{logs}"
    );
    // The bad member has no leader: it does not serve clients (it waits for a leader first).
    assert!(!members[2].healthy(&pki.curl_flags()));
}

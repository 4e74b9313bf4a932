//! The etcdctl suite (spec §6): every supported command against ringkv. The KV, txn, lease,
//! watch and compaction commands run as one script against ringkv *and* a real etcd 3.4; the
//! outputs must be identical after normalising endpoints, lease IDs and timings. Commands whose
//! output carries server-specific figures (status, member list, hashkv, snapshot, defrag,
//! alarm, lock, elect) are checked against etcdctl's formats with the IDs we compute.

use std::collections::HashMap;
use std::io::{BufRead, Read};
use std::process::{Command, Stdio};
use std::time::Duration;

use ringkv_tests::{EtcdProcess, RingkvProcess, etcdctl_at};

/// One etcdctl invocation; `{L1}`, `{L2}` are replaced by lease IDs captured from earlier
/// `lease grant` output of the same server.
struct Step {
    args: &'static [&'static str],
    stdin: Option<&'static str>,
}

const fn step(args: &'static [&'static str]) -> Step {
    Step { args, stdin: None }
}

const TXN_INPUT: &str =
    "value(\"a\") = \"1\"\nmod(\"a\") > \"0\"\n\nput a 2\nget a\n\nput b 3\nget b\n\n";

const SCRIPT: &[Step] = &[
    step(&["put", "foo", "bar"]),
    step(&["put", "foo", "baz", "--prev-kv"]),
    step(&["get", "foo"]),
    step(&["get", "foo", "--rev=2"]),
    step(&["put", "foo2", "v2"]),
    step(&["put", "foo3", "v3"]),
    step(&["put", "goo", "g"]),
    step(&["get", "foo", "--prefix"]),
    step(&["get", "foo", "--prefix", "--keys-only"]),
    step(&["get", "foo", "--prefix", "--print-value-only"]),
    step(&[
        "get",
        "foo",
        "--prefix",
        "--limit",
        "1",
        "--sort-by=MODIFY",
        "--order=DESCEND",
    ]),
    step(&[
        "get",
        "foo",
        "--prefix",
        "--sort-by=VALUE",
        "--order=ASCEND",
    ]),
    step(&["get", "--from-key", "foo2"]),
    step(&["get", "", "--prefix", "--consistency=s"]),
    step(&["get", "nothing"]),
    step(&["del", "foo3", "--prev-kv"]),
    step(&["del", "foo", "--prefix"]),
    step(&["del", "foo"]),
    step(&["get", "foo", "--rev=4"]),
    step(&["put", "a", "1"]),
    Step {
        args: &["txn", "-i"],
        stdin: Some(TXN_INPUT),
    },
    Step {
        args: &["txn", "-i"],
        stdin: Some(TXN_INPUT),
    },
    step(&["lease", "grant", "100"]),
    step(&["put", "lk", "lv", "--lease={L1}"]),
    step(&["put", "lk2", "lv", "--lease={L1}"]),
    step(&["lease", "timetolive", "{L1}", "--keys"]),
    step(&["lease", "list"]),
    step(&["lease", "keep-alive", "--once", "{L1}"]),
    step(&["put", "lk", "new", "--ignore-lease"]),
    step(&["put", "lk", "--ignore-value"]),
    step(&["get", "lk"]),
    step(&["lease", "revoke", "{L1}"]),
    step(&["get", "lk", "--prefix"]),
    step(&["lease", "timetolive", "{L1}"]),
    step(&["lease", "revoke", "{L1}"]),
    step(&["lease", "grant", "100"]),
    step(&["lease", "timetolive", "{L2}", "--keys"]),
    step(&["put", "x", "y", "--lease=1234abcd"]),
    step(&["put", "missing", "--ignore-value"]),
    // A watch replaying history with previous values (run for a moment, then killed).
    step(&["watch", "", "--prefix", "--rev", "2", "--prev-kv"]),
    step(&["watch", "lk", "--rev", "10"]),
    step(&["compaction", "5"]),
    step(&["watch", "foo", "--rev", "2"]),
    step(&["get", "foo", "--rev=3"]),
    step(&["get", "foo", "--rev=1000"]),
    step(&["compaction", "4"]),
    step(&["compaction", "--physical", "9"]),
    step(&["get", "", "--prefix"]),
    step(&["alarm", "list"]),
];

/// Keeps the lines a user compares: stdout, and the `Error:` line of stderr (the rest of
/// stderr is clientv3's timestamped retry logging).
fn normalise(endpoint: &str, leases: &HashMap<String, String>, out: &str) -> String {
    let mut s = out.replace(endpoint, "EP");
    for (hex, name) in leases {
        s = s.replace(hex.as_str(), name);
    }
    s.lines()
        .map(|l| {
            // "remaining(99s)" depends on two clocks.
            if let Some(i) = l.find("remaining(") {
                let end = l[i..].find(')').map_or(l.len(), |e| i + e);
                format!("{}remaining(N){}", &l[..i], &l[end + 1..])
            } else if let Some(i) = l.find("took = ") {
                format!("{}took = T", &l[..i])
            } else {
                l.to_string()
            }
        })
        .map(|l| {
            // etcd lists a lease's keys in Go map order: compare them as a set.
            if let Some(i) = l.find("attached keys([") {
                let start = i + "attached keys([".len();
                let end = l[start..].find("])").map_or(l.len(), |e| start + e);
                let mut keys: Vec<&str> = l[start..end].split(' ').collect();
                keys.sort_unstable();
                format!("{}{}{}", &l[..start], keys.join(" "), &l[end..])
            } else {
                l
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn run_script(endpoint: &str) -> Vec<String> {
    let mut leases: HashMap<String, String> = HashMap::new();
    let mut by_name: HashMap<String, String> = HashMap::new();
    let mut outputs = Vec::new();
    for st in SCRIPT {
        let args: Vec<String> = st
            .args
            .iter()
            .map(|a| {
                let mut a = a.to_string();
                for (name, hex) in &by_name {
                    a = a.replace(&format!("{{{name}}}"), hex);
                }
                a
            })
            .collect();
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let (stdout, stderr, code) = if argv[0] == "watch" {
            let (o, e) = watch_for(endpoint, &argv[1..]);
            (o, e, 0)
        } else {
            let out = etcdctl_at(endpoint, &argv, st.stdin);
            (
                String::from_utf8_lossy(&out.stdout).to_string(),
                String::from_utf8_lossy(&out.stderr).to_string(),
                out.status.code().unwrap_or(-1),
            )
        };
        if argv[..2] == ["lease", "grant"]
            && let Some(hex) = stdout.split_whitespace().nth(1)
        {
            let name = format!("L{}", by_name.len() + 1);
            by_name.insert(name.clone(), hex.to_string());
            leases.insert(hex.to_string(), name);
        }
        let errors: Vec<&str> = stderr
            .lines()
            .filter(|l| l.starts_with("Error") || l.starts_with("watch was canceled"))
            .collect();
        outputs.push(format!(
            "$ etcdctl {}\n{}\n{}\nexit {}",
            st.args.join(" "),
            normalise(endpoint, &leases, &stdout),
            errors.join("\n"),
            code
        ));
    }
    outputs
}

/// Runs `etcdctl watch <args>` until it has been quiet for a while (or exited) and returns
/// what it printed (stdout, stderr). Waits up to 10 s for the first line, then stops after
/// 700 ms without output: the watches here replay a fixed revision range, so no output is
/// missed by a slow start.
fn watch_for(endpoint: &str, args: &[&str]) -> (String, String) {
    let mut child = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoint}"))
        .arg("watch")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn etcdctl watch");
    let out = collect_lines(
        child.stdout.take().expect("stdout"),
        Duration::from_secs(10),
    );
    let _ = child.kill();
    let mut err = String::new();
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut err)
        .expect("read watch errors");
    let _ = child.wait();
    (out, err)
}

/// Reads lines from `r` on a helper thread: up to `first` for the first line, then until
/// 700 ms pass without a new one, or the stream ends.
fn collect_lines(r: impl Read + Send + 'static, first: Duration) -> String {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(r).lines() {
            let Ok(l) = line else { break };
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    let mut out = String::new();
    let mut wait = first;
    while let Ok(line) = rx.recv_timeout(wait) {
        out.push_str(&line);
        out.push('\n');
        wait = Duration::from_millis(700);
    }
    out
}

#[test]
fn kv_txn_lease_watch_compaction_output_matches_etcd() {
    let etcd = EtcdProcess::start();
    let node = RingkvProcess::start(&[]);
    let want = run_script(&format!("127.0.0.1:{}", etcd.client_port));
    let got = run_script(&node.endpoint());
    assert_eq!(want.len(), got.len());
    let mut diffs = Vec::new();
    for (w, g) in want.iter().zip(&got) {
        if w != g {
            diffs.push(format!("--- etcd:\n{w}\n--- ringkv:\n{g}\n"));
        }
    }
    assert!(
        diffs.is_empty(),
        "{} differences:\n{}",
        diffs.len(),
        diffs.join("\n")
    );
    // The script is not vacuous: it saw data, errors and watch events.
    let all = got.join("\n");
    assert!(all.contains("SUCCESS") && all.contains("FAILURE"));
    assert!(all.contains("required revision has been compacted"));
    assert!(all.contains("PUT\nfoo\nbar\nfoo\nbaz"), "{all}");
}

#[test]
fn member_list_and_endpoint_commands_report_this_member() {
    let node = RingkvProcess::start(&["--name", "n1"]);
    let ep = node.endpoint();
    let peer = format!("http://127.0.0.1:{}", node.peer_port);
    let list = node.ctl(&["member", "list"]);
    let fields: Vec<&str> = list.trim().split(", ").collect();
    assert_eq!(fields.len(), 6, "{list}");
    let id = fields[0];
    assert_eq!(
        &fields[1..],
        &[
            "started",
            "n1",
            peer.as_str(),
            &format!("http://{ep}"),
            "false"
        ]
    );
    // etcd's member ID: sha1 of the sorted peer URLs and the cluster token (spec).
    let want_id = ringkv_net::member_id(std::slice::from_ref(&peer), "etcd-cluster", None);
    assert_eq!(id, format!("{want_id:x}"));

    let status = node.ctl(&["endpoint", "status"]);
    // "<ep>, <id>, <version>, <db size>, <is leader>, <is learner>, <term>, <index>, <applied>, <errors>"
    let f: Vec<&str> = status
        .trim()
        .split(", ")
        .map(|x| x.trim_end_matches(','))
        .collect();
    assert_eq!(f[0], ep);
    assert_eq!(f[1], id);
    assert_eq!(f[4], "true", "is leader: {status}");
    assert_eq!(f[5], "false", "is learner: {status}");
    let index: u64 = f[7].parse().expect("raft index");
    let applied: u64 = f[8].parse().expect("applied index");
    assert!(index >= 1 && applied == index, "{status}");

    node.ctl(&["put", "k", "v"]);
    let status2 = node.ctl(&["endpoint", "status", "-w", "json"]);
    assert!(
        status2.contains(&format!("\"leader\":{want_id}")),
        "{status2}"
    );

    // etcdctl 3.4 prints the health line on stderr.
    let out = node.etcdctl(&["endpoint", "health"]);
    assert!(out.status.success());
    let health = String::from_utf8_lossy(&out.stderr);
    assert!(
        health.starts_with(&format!("{ep} is healthy: successfully committed proposal")),
        "{health}"
    );
    let hash1 = node.ctl(&["endpoint", "hashkv"]);
    let hash2 = node.ctl(&["endpoint", "hashkv"]);
    assert_eq!(hash1, hash2, "hashkv is stable without writes");
    assert!(hash1.starts_with(&format!("{ep}, ")), "{hash1}");
    node.ctl(&["put", "k", "v2"]);
    assert_ne!(
        node.ctl(&["endpoint", "hashkv"]),
        hash1,
        "a write changes hashkv"
    );
    assert_eq!(node.ctl(&["alarm", "list"]), "");
    assert_eq!(
        node.ctl(&["defrag"]),
        format!("Finished defragmenting etcd member[{ep}]\n")
    );
    assert_eq!(node.ctl(&["get", "k", "--print-value-only"]), "v2\n");
}

#[test]
fn snapshot_save_writes_the_backend_with_a_verified_checksum() {
    let node = RingkvProcess::start(&[]);
    for i in 0..50 {
        node.ctl(&["put", &format!("key{i:03}"), &"x".repeat(1000)]);
    }
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("snap.db");
    let out = node.etcdctl(&["snapshot", "save", path.to_str().expect("utf-8")]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("Snapshot saved at {}\n", path.display())
    );
    // etcdctl verified the trailing SHA-256 and stripped it: what remains is a backend file
    // holding every key.
    let bytes = std::fs::read(&path).expect("snapshot file");
    assert!(bytes.len() > 50_000, "{} bytes", bytes.len());
    let hay = String::from_utf8_lossy(&bytes);
    for i in [0, 25, 49] {
        assert!(
            hay.contains(&format!("key{i:03}")),
            "key{i:03} in the snapshot"
        );
    }
    // The node keeps serving writes afterwards.
    node.ctl(&["put", "after", "snapshot"]);
}

#[test]
fn watch_prints_live_events_with_prev_kv() {
    let node = RingkvProcess::start(&[]);
    node.ctl(&["put", "w/a", "1"]);
    let v: serde_json::Value =
        serde_json::from_str(&node.ctl(&["get", "w/a", "-w", "json"])).expect("json");
    let next = v["header"]["revision"].as_i64().expect("revision") + 1;
    // Starting at the next revision, whatever etcdctl's start-up time, the watch sees exactly
    // the writes below, whether they arrive live or are caught up.
    let mut child = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={}", node.endpoint()))
        .args([
            "watch",
            "w/",
            "--prefix",
            "--prev-kv",
            "--rev",
            &next.to_string(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("etcdctl watch");
    node.ctl(&["put", "w/a", "2"]);
    node.ctl(&["del", "w/a"]);
    node.ctl(&["put", "other", "x"]);
    let out = collect_lines(
        child.stdout.take().expect("stdout"),
        Duration::from_secs(10),
    );
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(out, "PUT\nw/a\n1\nw/a\n2\nDELETE\nw/a\n2\nw/a\n\n");
}

#[test]
fn lock_and_elect_work_through_etcdctl() {
    let node = RingkvProcess::start(&[]);
    // lock with a command: runs it while holding the lock, then releases.
    let out = node.ctl(&["lock", "mylock", "echo", "locked"]);
    assert_eq!(out, "locked\n");
    // The lock key is gone after the command.
    assert_eq!(node.ctl(&["get", "mylock", "--prefix", "--keys-only"]), "");

    // elect: campaign, print the leader key, hold until killed.
    let mut child = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={}", node.endpoint()))
        .args(["elect", "myelection", "candidate1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("etcdctl elect");
    // etcdctl prints the leader key and value once its campaign has won; read its own output
    // (the key showing up in the store is earlier than that), bounded by a timeout.
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)) {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut out = String::new();
    while !out.contains("candidate1") {
        match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(line) => {
                out.push_str(&line);
                out.push('\n');
            }
            Err(e) => panic!("etcdctl elect printed {out:?}, then: {e}"),
        }
    }
    let leader = node.ctl(&["get", "myelection", "--prefix", "--print-value-only"]);
    assert_eq!(leader, "candidate1\n");
    let _ = child.kill();
    let _ = child.wait();
    assert!(out.starts_with("myelection/"), "{out}");
    assert!(out.contains("candidate1"), "{out}");
}

#[test]
fn expired_lease_deletes_its_keys_and_keep_alive_holds_it() {
    let node = RingkvProcess::start(&[]);
    let grant = |ttl: &str| -> String {
        let out = node.ctl(&["lease", "grant", ttl]);
        out.split_whitespace().nth(1).expect("lease id").to_string()
    };
    let short = grant("2");
    let kept = grant("2");
    node.ctl(&["put", "short", "x", &format!("--lease={short}")]);
    node.ctl(&["put", "kept", "y", &format!("--lease={kept}")]);
    // Streaming keep-alive (one request per TTL/3) keeps `kept` alive.
    let mut ka = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={}", node.endpoint()))
        .args(["lease", "keep-alive", &kept])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("etcdctl lease keep-alive");
    // The leader's expiry timer revokes `short` through raft; wait for it (bounded).
    let mut gone = false;
    for _ in 0..200 {
        if node.ctl(&["get", "short"]).is_empty() {
            gone = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(gone, "the expired lease's key is deleted");
    assert!(
        node.ctl(&["lease", "timetolive", &short])
            .contains("already expired")
    );
    // Well past `kept`'s TTL, it still stands thanks to the keep-alives.
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(node.ctl(&["get", "kept", "--print-value-only"]), "y\n");
    let _ = ka.kill();
    let mut out = String::new();
    ka.stdout
        .take()
        .expect("stdout")
        .read_to_string(&mut out)
        .expect("read");
    let _ = ka.wait();
    assert!(
        out.contains(&format!("lease {kept} keepalived with TTL(2)")),
        "{out}"
    );
}

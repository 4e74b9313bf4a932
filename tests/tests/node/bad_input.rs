//! Bad input (spec §5): each request gets etcd's error and the node keeps serving.

use ringkv_tests::{RingkvProcess, http_post};

fn assert_serving(node: &RingkvProcess) {
    node.ctl(&["put", "alive", "yes"]);
    assert_eq!(node.ctl(&["get", "alive", "--print-value-only"]), "yes\n");
}

#[test]
fn etcd_errors_for_bad_requests() {
    let node = RingkvProcess::start(&[]);
    let p = node.client_port;
    let err = |body: &str, path: &str| -> (u16, String) {
        let r = http_post(p, path, body).expect("post");
        let v: serde_json::Value = serde_json::from_str(&r.body).expect("json");
        (
            r.status,
            v["error"].as_str().unwrap_or_default().to_string(),
        )
    };
    // Empty key.
    assert_eq!(
        err(r#"{"key":"","value":"dg=="}"#, "/v3/kv/put"),
        (400, "etcdserver: key is not provided".into())
    );
    // Unknown lease.
    assert_eq!(
        err(
            r#"{"key":"aw==","value":"dg==","lease":"12345"}"#,
            "/v3/kv/put"
        ),
        (404, "etcdserver: requested lease not found".into())
    );
    // 129 operations in one txn.
    let ops: Vec<String> = (0..129)
        .map(|i| {
            format!(
                r#"{{"request_put":{{"key":"{}","value":"dg=="}}}}"#,
                b64(&format!("k{i}"))
            )
        })
        .collect();
    assert_eq!(
        err(
            &format!(r#"{{"success":[{}]}}"#, ops.join(",")),
            "/v3/kv/txn"
        ),
        (400, "etcdserver: too many operations in txn request".into())
    );
    // Duplicate keys written in one txn.
    assert_eq!(
        err(
            r#"{"success":[{"request_put":{"key":"aw==","value":"dg=="}},{"request_put":{"key":"aw==","value":"dg=="}}]}"#,
            "/v3/kv/txn"
        ),
        (400, "etcdserver: duplicate key given in txn request".into())
    );
    // Oversize request (value above 1.5 MiB).
    let big = "A".repeat(2 * 1024 * 1024);
    let (status, msg) = err(
        &format!(r#"{{"key":"aw==","value":"{big}"}}"#),
        "/v3/kv/put",
    );
    assert_eq!(
        (status, msg.as_str()),
        (400, "etcdserver: request is too large")
    );
    // Malformed JSON.
    let r = http_post(p, "/v3/kv/put", "{not json").expect("post");
    assert_eq!(r.status, 400, "{}", r.body);
    assert_serving(&node);

    // Compacted and future revisions through etcdctl (gRPC).
    for i in 0..5 {
        node.ctl(&["put", "c", &i.to_string()]);
    }
    node.ctl(&["compaction", "4"]);
    let e = node.ctl_err(&["get", "c", "--rev=2"]);
    assert!(
        e.contains("etcdserver: mvcc: required revision has been compacted"),
        "{e}"
    );
    let e = node.ctl_err(&["get", "c", "--rev=100"]);
    assert!(
        e.contains("etcdserver: mvcc: required revision is a future revision"),
        "{e}"
    );
    let e = node.ctl_err(&["compaction", "3"]);
    assert!(e.contains("required revision has been compacted"), "{e}");
    assert_serving(&node);
}

#[test]
fn quota_raises_nospace_and_disarm_restores_writes() {
    let node = RingkvProcess::start(&["--quota-backend-bytes", "300000"]);
    let value = "v".repeat(20_000);
    let mut refused = None;
    for i in 0..200 {
        let out = node.etcdctl(&["put", &format!("k{i}"), &value]);
        if !out.status.success() {
            refused = Some(String::from_utf8_lossy(&out.stderr).to_string());
            break;
        }
    }
    let e = refused.expect("the quota refuses writes at some point");
    assert!(
        e.contains("etcdserver: mvcc: database space exceeded"),
        "{e}"
    );
    let alarms = node.ctl(&["alarm", "list"]);
    assert!(alarms.contains("alarm:NOSPACE"), "{alarms}");
    // Reads and deletes still work while the alarm is raised.
    node.ctl(&["get", "k0", "--keys-only"]);
    node.ctl(&["del", "k", "--prefix"]);
    let e = node.ctl_err(&["put", "small", "x"]);
    assert!(e.contains("database space exceeded"), "{e}");
    // Compact + defrag + disarm: writes are accepted again.
    let rev: serde_json::Value =
        serde_json::from_str(&node.ctl(&["get", "x", "-w", "json"])).expect("json");
    let rev = rev["header"]["revision"].as_i64().expect("revision");
    node.ctl(&["compaction", "--physical", &rev.to_string()]);
    node.ctl(&["defrag"]);
    let out = node.ctl(&["alarm", "disarm"]);
    assert!(out.contains("alarm:NOSPACE"), "{out}");
    assert_eq!(node.ctl(&["alarm", "list"]), "");
    node.ctl(&["put", "small", "x"]);
}

fn b64(s: &str) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let b = s.as_bytes();
    let mut out = String::new();
    for c in b.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[test]
fn garbage_on_the_client_port_does_not_hurt_the_node() {
    use std::io::{Read, Write};
    let node = RingkvProcess::start(&[]);
    let inputs: [&[u8]; 3] = [
        // An HTTP/2 preface followed by a frame header announcing a huge, malformed frame.
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\xff\xff\xff\x01\x00\x00\x00\x00\x01garbage",
        // Not HTTP at all.
        b"\x00\x01\x02\x03 hello \r\n\r\n",
        // A truncated HTTP/1.1 request.
        b"POST /v3/kv/put HTTP/1.1\r\nContent-Length: 100\r\n\r\n{\"key\":",
    ];
    for input in inputs {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", node.client_port)).expect("connect");
        s.set_read_timeout(Some(std::time::Duration::from_secs(2)))
            .expect("timeout");
        s.write_all(input).expect("write");
        let _ = s.shutdown(std::net::Shutdown::Write);
        let mut sink = Vec::new();
        let _ = s.read_to_end(&mut sink);
    }
    assert_serving(&node);
}

#[test]
fn periodic_auto_compaction_compacts_old_revisions() {
    let node = RingkvProcess::start(&[
        "--auto-compaction-mode",
        "periodic",
        "--auto-compaction-retention",
        "1s",
    ]);
    for i in 0..5 {
        node.ctl(&["put", "ac", &i.to_string()]);
    }
    // Revisions older than the retention are compacted by the leader's auto-compactor: wait
    // (bounded) until revision 2 is gone, writing meanwhile so newer samples exist.
    let mut compacted = false;
    for i in 0..300 {
        let out = node.etcdctl(&["get", "ac", "--rev=2"]);
        if !out.status.success() {
            let e = String::from_utf8_lossy(&out.stderr);
            assert!(e.contains("required revision has been compacted"), "{e}");
            compacted = true;
            break;
        }
        node.ctl(&["put", "ac", &format!("later{i}")]);
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(compacted, "auto-compaction never ran");
    // The current value is untouched.
    assert!(
        node.ctl(&["get", "ac", "--print-value-only"])
            .starts_with("later")
    );
}

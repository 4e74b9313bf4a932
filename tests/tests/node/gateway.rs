//! HTTP/1.1 against the client port (spec §7, §8): the JSON gateway, /health, /version,
//! /metrics — what `curl` sends, byte for byte.

use ringkv_tests::{RingkvProcess, http_get, http_post};
use serde_json::Value;

fn json(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

#[test]
fn gateway_put_range_txn_delete_and_lease() {
    let node = RingkvProcess::start(&[]);
    let p = node.client_port;
    // key "foo" = Zm9v, value "bar" = YmFy
    let r = http_post(p, "/v3/kv/put", r#"{"key":"Zm9v","value":"YmFy"}"#).expect("put");
    assert_eq!(r.status, 200, "{}", r.body);
    let v = json(&r.body);
    assert_eq!(v["header"]["revision"], "2");
    let r = http_post(p, "/v3/kv/range", r#"{"key":"Zm9v"}"#).expect("range");
    let v = json(&r.body);
    assert_eq!(v["count"], "1");
    assert_eq!(v["kvs"][0]["value"], "YmFy");
    assert_eq!(v["kvs"][0]["mod_revision"], "2");
    assert_eq!(v["kvs"][0]["create_revision"], "2");
    assert_eq!(v["kvs"][0]["version"], "1");

    let txn = r#"{"compare":[{"key":"Zm9v","result":"EQUAL","target":"VALUE","value":"YmFy"}],
        "success":[{"request_put":{"key":"Zm9v","value":"YmF6"}}]}"#;
    let v = json(&http_post(p, "/v3/kv/txn", txn).expect("txn").body);
    assert_eq!(v["succeeded"], true);
    assert_eq!(v["header"]["revision"], "3");

    let v = json(
        &http_post(p, "/v3/lease/grant", r#"{"TTL":"30"}"#)
            .expect("grant")
            .body,
    );
    assert_eq!(v["TTL"], "30");
    let id = v["ID"].as_str().expect("lease ID as string").to_string();
    let v = json(
        &http_post(p, "/v3/lease/timetolive", &format!(r#"{{"ID":"{id}"}}"#))
            .expect("ttl")
            .body,
    );
    assert_eq!(v["grantedTTL"], "30");

    let v = json(
        &http_post(p, "/v3/kv/deleterange", r#"{"key":"Zm9v","prev_kv":true}"#)
            .expect("delete")
            .body,
    );
    assert_eq!(v["deleted"], "1");
    assert_eq!(v["prev_kvs"][0]["value"], "YmF6");

    // Compacted and future revisions are etcd's errors with HTTP codes.
    let r = http_post(p, "/v3/kv/range", r#"{"key":"Zm9v","revision":"99"}"#).expect("range");
    assert_eq!(r.status, 400, "{}", r.body);
    let v = json(&r.body);
    assert_eq!(
        v["error"],
        "etcdserver: mvcc: required revision is a future revision"
    );
    assert_eq!(v["code"], 11);
}

#[test]
fn health_version_and_metrics() {
    let node = RingkvProcess::start(&[]);
    let p = node.client_port;
    let h = http_get(p, "/health").expect("health");
    assert_eq!(h.status, 200);
    assert_eq!(json(&h.body)["health"], "true");
    let v = json(&http_get(p, "/version").expect("version").body);
    assert!(
        v["etcdserver"]
            .as_str()
            .is_some_and(|s| s.starts_with("3.")),
        "{v}"
    );
    assert!(v["etcdcluster"].as_str().is_some(), "{v}");

    for i in 0..5 {
        http_post(
            p,
            "/v3/kv/put",
            &format!(r#"{{"key":"a{i}","value":"dg=="}}"#),
        )
        .expect("put");
    }
    // The in-use figure counts committed pages: wait for the backend's batch commit.
    let mut m = http_get(p, "/metrics").expect("metrics");
    for _ in 0..200 {
        if !m
            .body
            .contains("etcd_mvcc_db_total_size_in_use_in_bytes 0\n")
        {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(25));
        m = http_get(p, "/metrics").expect("metrics");
    }
    assert_eq!(m.status, 200);
    let value = |name: &str| -> f64 {
        m.body
            .lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("metric {name} missing:\n{}", m.body))
    };
    assert_eq!(value("etcd_server_has_leader"), 1.0);
    assert!(value("etcd_server_proposals_committed_total") >= 6.0);
    assert!(value("etcd_server_proposals_applied_total") >= 6.0);
    assert_eq!(value("etcd_server_proposals_pending"), 0.0);
    assert!(value("etcd_disk_wal_fsync_duration_seconds_count") >= 1.0);
    assert!(value("etcd_mvcc_db_total_size_in_bytes") > 0.0);
    assert!(value("etcd_mvcc_db_total_size_in_use_in_bytes") > 0.0);
    assert!(m.body.contains("grpc_server_handled_total"), "{}", m.body);
}

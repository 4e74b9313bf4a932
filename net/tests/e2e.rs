//! Front-end tests over a real listener: real tonic clients (HTTP/2), etcdctl 3.4 and raw
//! HTTP/1.1 requests, curl-style, against one port, served by the in-memory TEST FIXTURE node
//! (`support/fixture.rs`). They cite the spec section they check.

mod support;

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_stream::StreamExt;
use tonic::Code;
use tonic::transport::Channel;

use ringkv_net::pb::etcdserverpb::{
    kv_client::KvClient, lease_client::LeaseClient, maintenance_client::MaintenanceClient,
    watch_client::WatchClient, *,
};
use ringkv_net::pb::health::{HealthCheckRequest, health_client::HealthClient};
use ringkv_net::pb::v3lockpb::{LockRequest, UnlockRequest, lock_client::LockClient};
use ringkv_net::{ClientServer, ServerOptions, ShutdownTrigger};
use support::fixture::{CLUSTER_ID, MEMBER_ID, MemNode, snapshot_bytes};

struct Harness {
    addr: std::net::SocketAddr,
    node: Arc<MemNode>,
    trigger: ShutdownTrigger,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
}

async fn start() -> Harness {
    let node = Arc::new(MemNode::default());
    let (trigger, shutdown) = ShutdownTrigger::new();
    let options = ServerOptions {
        election_timeout: Duration::from_millis(50),
        ..Default::default()
    };
    let server = ClientServer::new(node.clone(), options, shutdown);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let guard = trigger.guard();
    let server = tokio::spawn(server.serve(listener, guard));
    Harness {
        addr,
        node,
        trigger,
        server,
    }
}

async fn channel(h: &Harness) -> Channel {
    Channel::from_shared(format!("http://{}", h.addr))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// A raw HTTP/1.1 exchange, as curl would do it: returns (status, headers, body).
async fn http(h: &Harness, method: &str, path: &str, body: &str) -> (u16, String, String) {
    http_at(h.addr, method, path, body).await
}

/// [`http`] against any address.
async fn http_at(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    body: &str,
) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut raw))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8(raw).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let status: u16 = head.split(' ').nth(1).unwrap().parse().unwrap();
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    (status, head.to_ascii_lowercase(), body)
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    loop {
        let (size, rest) = s.split_once("\r\n").unwrap();
        let n = usize::from_str_radix(size.trim(), 16).unwrap();
        if n == 0 {
            return out;
        }
        out.push_str(&rest[..n]);
        s = &rest[n + 2..];
    }
}

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body:?}"))
}

fn put(k: &str, v: &str) -> PutRequest {
    PutRequest {
        key: Bytes::copy_from_slice(k.as_bytes()),
        value: Bytes::copy_from_slice(v.as_bytes()),
        ..Default::default()
    }
}

/// Spec §1: one port serves gRPC and HTTP/1.1; §4.1 headers; §7 JSON shapes; §8 endpoints.
#[tokio::test]
async fn grpc_and_http_on_one_port() {
    let h = start().await;
    let mut kv = KvClient::new(channel(&h).await);
    let resp = kv.put(put("foo", "bar")).await.unwrap().into_inner();
    assert_eq!(
        resp.header,
        Some(ResponseHeader {
            cluster_id: CLUSTER_ID,
            member_id: MEMBER_ID,
            revision: 2,
            raft_term: 2
        })
    );

    let (status, head, body) = http(&h, "POST", "/v3/kv/range", r#"{"key":"Zm9v"}"#).await;
    assert_eq!(status, 200);
    assert!(head.contains("content-type: application/json"), "{head}");
    assert!(head.contains("access-control-allow-origin: *"), "{head}");
    let v = json(&body);
    assert_eq!(v["header"]["cluster_id"], "324952591200643719");
    assert_eq!(v["header"]["member_id"], "3319814642761637952");
    assert_eq!(v["header"]["revision"], "2");
    assert_eq!(
        v["kvs"][0],
        serde_json::json!({"key":"Zm9v","create_revision":"2","mod_revision":"2","version":"1","value":"YmFy"})
    );
    assert_eq!(v["count"], "1");

    // /v3beta is rewritten to /v3; /v3alpha is unknown in 3.4.
    let (status, _, body) = http(
        &h,
        "POST",
        "/v3beta/kv/put",
        r#"{"key":"Zm9v","value":"YmF6","prev_kv":true}"#,
    )
    .await;
    assert_eq!(status, 200);
    // Exact text of spec §7's transcript shape (field-number order, int64 as strings).
    assert_eq!(
        body,
        r#"{"header":{"cluster_id":"324952591200643719","member_id":"3319814642761637952","revision":"3","raft_term":"2"},"prev_kv":{"key":"Zm9v","create_revision":"2","mod_revision":"2","version":"1","value":"YmFy"}}"#
    );
    assert_eq!(http(&h, "POST", "/v3alpha/kv/range", "{}").await.0, 404);
    assert_eq!(
        http(&h, "POST", "/v3/maintenance/hashkv", "{}").await.0,
        404
    );
    assert_eq!(http(&h, "GET", "/v3/kv/range", "").await.0, 405);

    let (status, head, body) = http(&h, "GET", "/version", "").await;
    assert_eq!(status, 200);
    assert!(head.contains("application/json"));
    assert_eq!(
        json(&body),
        serde_json::json!({"etcdserver":"3.4.23","etcdcluster":"3.4.0"})
    );

    let (status, _, body) = http(&h, "GET", "/health", "").await;
    assert_eq!((status, body.as_str()), (200, r#"{"health":"true"}"#));
    assert_eq!(http(&h, "POST", "/health", "").await.0, 405);

    let (status, _, body) = http(&h, "GET", "/metrics", "").await;
    assert_eq!(status, 200);
    assert!(body.contains("etcd_server_has_leader 1\n"));
    assert!(body.contains(
        "grpc_server_handled_total{grpc_code=\"OK\",grpc_method=\"Put\",grpc_service=\"etcdserverpb.KV\",grpc_type=\"unary\"} 1\n"
    ), "{body}");
    assert!(body.contains(
        "grpc_server_started_total{grpc_method=\"Put\",grpc_service=\"etcdserverpb.KV\",grpc_type=\"unary\"} 1\n"
    ));
    assert_eq!(http(&h, "GET", "/nope", "").await.0, 404);
    let (status, head, _) = http(&h, "OPTIONS", "/v3/kv/range", "").await;
    assert_eq!(status, 200);
    assert!(
        head.contains("access-control-allow-methods: post, get, options, put, delete"),
        "{head}"
    );

    let mut health = HealthClient::new(channel(&h).await);
    let r = health
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.status, 1);
    let e = health
        .check(HealthCheckRequest {
            service: "x".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
}

/// Spec §5 bad input: each gives etcd's error and the server keeps serving.
#[tokio::test]
async fn bad_input_gets_etcd_errors() {
    let h = start().await;
    let mut kv = KvClient::new(channel(&h).await);
    let e = kv.put(put("", "v")).await.unwrap_err();
    assert_eq!(
        (e.code(), e.message()),
        (Code::InvalidArgument, "etcdserver: key is not provided")
    );
    let e = kv.range(RangeRequest::default()).await.unwrap_err();
    assert_eq!(e.message(), "etcdserver: key is not provided");

    let ops = |n: usize| {
        (0..n)
            .map(|i| RequestOp {
                request: Some(request_op::Request::RequestPut(put(&format!("k{i}"), "v"))),
            })
            .collect::<Vec<_>>()
    };
    let ok = kv
        .txn(TxnRequest {
            success: ops(128),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(ok.succeeded);
    // Nested responses carry only the revision (§4.1).
    let Some(response_op::Response::ResponsePut(p)) = &ok.responses[0].response else {
        panic!()
    };
    assert_eq!(
        p.header,
        Some(ResponseHeader {
            revision: ok.header.unwrap().revision,
            ..Default::default()
        })
    );
    let e = kv
        .txn(TxnRequest {
            success: ops(129),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), e.message()),
        (
            Code::InvalidArgument,
            "etcdserver: too many operations in txn request"
        )
    );
    let mut dup = ops(2);
    dup.push(ops(1).remove(0));
    let e = kv
        .txn(TxnRequest {
            success: dup,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        e.message(),
        "etcdserver: duplicate key given in txn request"
    );

    // Unknown lease: the node's error passes through the table.
    let e = kv
        .put(PutRequest {
            lease: 99,
            ..put("a", "b")
        })
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), e.message()),
        (Code::NotFound, "etcdserver: requested lease not found")
    );
    // Future revision.
    let e = kv
        .range(RangeRequest {
            key: "a".into(),
            revision: 1000,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), e.message()),
        (
            Code::OutOfRange,
            "etcdserver: mvcc: required revision is a future revision"
        )
    );

    // Request size: over max-request-bytes after the envelope → "request is too large";
    // over the gRPC receive limit → grpc-go's ResourceExhausted text (spec §1, §11.10).
    let big = |n: usize| PutRequest {
        key: "big".into(),
        value: vec![b'x'; n].into(),
        ..Default::default()
    };
    let e = kv.put(big(1_572_864 - 10)).await.unwrap_err();
    assert_eq!(
        (e.code(), e.message()),
        (Code::InvalidArgument, "etcdserver: request is too large")
    );
    assert!(kv.put(big(1_572_864 - 100)).await.is_ok());
    let e = kv.put(big(3 * 1024 * 1024)).await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted);
    assert!(
        e.message()
            .starts_with("grpc: received message larger than max ("),
        "{}",
        e.message()
    );
    assert!(e.message().ends_with(" vs. 2097152)"), "{}", e.message());

    // Gateway: malformed JSON, error JSON shape, HTTP status per code (§7).
    let (status, _, body) = http(&h, "POST", "/v3/kv/range", "{not json").await;
    assert_eq!(status, 400);
    assert_eq!(json(&body)["code"], 3);
    let (status, _, body) = http(&h, "POST", "/v3/kv/range", "{}").await;
    assert_eq!(status, 400);
    // Exact text: field order as grpc-gateway writes it.
    assert_eq!(
        body,
        r#"{"error":"etcdserver: key is not provided","message":"etcdserver: key is not provided","code":3}"#
    );
    let (status, _, body) =
        http(&h, "POST", "/v3/lease/grant", r#"{"TTL":"30","ID":"1000"}"#).await;
    assert_eq!(
        (status, json(&body)["ID"].clone()),
        (200, serde_json::json!("1000"))
    );
    let (status, _, body) = http(&h, "POST", "/v3/lease/grant", r#"{"TTL":30,"ID":1000}"#).await;
    assert_eq!(
        (status, json(&body)["code"].clone()),
        (412, serde_json::json!(9))
    );
    let (status, _, body) = http(
        &h,
        "POST",
        "/v3/maintenance/transfer-leadership",
        r#"{"targetID":"1"}"#,
    )
    .await;
    assert_eq!(
        (status, json(&body)["message"].clone()),
        (412, serde_json::json!("etcdserver: bad leader transferee"))
    );
    let (status, _, body) = http(&h, "POST", "/v3/auth/user/add", r#"{"name":"u"}"#).await;
    assert_eq!(
        (status, json(&body)["code"].clone()),
        (501, serde_json::json!(12))
    );

    // Still serving, and the handled counter saw the errors.
    assert!(kv.put(put("after", "ok")).await.is_ok());
    let (_, _, metrics) = http(&h, "GET", "/metrics", "").await;
    assert!(metrics.contains(
        "grpc_server_handled_total{grpc_code=\"ResourceExhausted\",grpc_method=\"Put\",grpc_service=\"etcdserverpb.KV\",grpc_type=\"unary\"} 1\n"
    ), "{metrics}");
}

/// Spec §1 `hasleader`; §4.11 Status errors; §8 /health without a leader and with alarms.
#[tokio::test]
async fn leader_loss_and_alarms() {
    let h = start().await;
    let mut kv = KvClient::new(channel(&h).await);
    h.node.leader.store(0, Relaxed);
    let mut req = tonic::Request::new(RangeRequest {
        key: "a".into(),
        ..Default::default()
    });
    req.metadata_mut()
        .insert("hasleader", "true".parse().unwrap());
    let e = kv.range(req).await.unwrap_err();
    assert_eq!(
        (e.code(), e.message()),
        (Code::Unavailable, "etcdserver: no leader")
    );
    // Without the metadata the request is served.
    assert!(
        kv.range(RangeRequest {
            key: "a".into(),
            serializable: true,
            ..Default::default()
        })
        .await
        .is_ok()
    );
    let mut mt = MaintenanceClient::new(channel(&h).await);
    let s = mt.status(StatusRequest {}).await.unwrap().into_inner();
    assert_eq!(s.errors, vec!["etcdserver: no leader".to_string()]);
    assert_eq!(s.version, "3.4.23");
    let (status, head, body) = http(&h, "GET", "/health", "").await;
    assert_eq!((status, body.as_str()), (503, "{\"health\":\"false\"}\n"));
    assert!(head.contains("text/plain"));

    // A watch stream with hasleader ends with "no leader" after 3 missed checks.
    let mut w = WatchClient::new(channel(&h).await);
    let create = WatchRequest {
        request_union: Some(watch_request::RequestUnion::CreateRequest(
            WatchCreateRequest {
                key: "a".into(),
                ..Default::default()
            },
        )),
    };
    let mut req =
        tonic::Request::new(tokio_stream::iter(vec![create]).chain(tokio_stream::pending()));
    req.metadata_mut()
        .insert("hasleader", "true".parse().unwrap());
    let e = w.watch(req).await.unwrap_err();
    assert_eq!(e.message(), "etcdserver: no leader");

    h.node.leader.store(MEMBER_ID, Relaxed);
    let alarm = AlarmRequest {
        action: 1,
        member_id: MEMBER_ID,
        alarm: AlarmType::Nospace as i32,
    };
    let r = mt.alarm(alarm).await.unwrap().into_inner();
    assert_eq!(r.header, None); // §4.1: no header on Alarm
    let e = kv.put(put("a", "b")).await.unwrap_err();
    assert_eq!(
        (e.code(), e.message()),
        (
            Code::ResourceExhausted,
            "etcdserver: mvcc: database space exceeded"
        )
    );
    let s = mt.status(StatusRequest {}).await.unwrap().into_inner();
    assert_eq!(
        s.errors,
        vec![format!("memberID:{MEMBER_ID} alarm:NOSPACE ")]
    );
    assert_eq!(http(&h, "GET", "/health", "").await.0, 503);
    assert_eq!(http(&h, "GET", "/health?exclude=NOSPACE", "").await.0, 200);
    let (status, _, body) =
        http(&h, "POST", "/v3/kv/put", r#"{"key":"Zm9v","value":"YmFy"}"#).await;
    assert_eq!(
        (status, json(&body)["code"].clone()),
        (429, serde_json::json!(8))
    );
    let d = mt
        .defragment(DefragmentRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(d.header, None);
}

fn create(key: &str, id: i64) -> WatchRequest {
    WatchRequest {
        request_union: Some(watch_request::RequestUnion::CreateRequest(
            WatchCreateRequest {
                key: Bytes::copy_from_slice(key.as_bytes()),
                watch_id: id,
                ..Default::default()
            },
        )),
    }
}

/// Spec §4.8 and §11.3: IDs from 0, failures, progress, cancel, events in order.
#[tokio::test]
async fn watch_stream_protocol() {
    let h = start().await;
    let mut w = WatchClient::new(channel(&h).await);
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let mut out = w
        .watch(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let mut next = async || {
        tokio::time::timeout(Duration::from_secs(10), out.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap()
    };

    tx.send(create("a", 0)).await.unwrap();
    let r = next().await;
    assert!(r.created && r.watch_id == 0 && !r.canceled);
    assert_eq!(r.header.unwrap().member_id, MEMBER_ID);
    tx.send(create("b", 7)).await.unwrap();
    assert_eq!(next().await.watch_id, 7);
    tx.send(create("c", 7)).await.unwrap();
    let r = next().await;
    assert_eq!((r.watch_id, r.created, r.canceled), (-1, true, true));
    assert_eq!(
        r.cancel_reason,
        "mvcc: duplicate watch ID provided on the WatchStream"
    );
    let bad_range = WatchRequest {
        request_union: Some(watch_request::RequestUnion::CreateRequest(
            WatchCreateRequest {
                key: "b".into(),
                range_end: "a".into(),
                ..Default::default()
            },
        )),
    };
    tx.send(bad_range).await.unwrap();
    assert_eq!(next().await.cancel_reason, "mvcc: watcher range is empty");
    tx.send(create("d", 0)).await.unwrap();
    assert_eq!(next().await.watch_id, 1);

    let mut kv = KvClient::new(channel(&h).await);
    kv.put(put("a", "1")).await.unwrap();
    let r = next().await;
    assert_eq!(r.watch_id, 0);
    assert_eq!(r.events.len(), 1);
    assert_eq!(r.events[0].kv.as_ref().unwrap().value.as_ref(), b"1");
    assert_eq!(r.header.unwrap().revision, 2);

    tx.send(WatchRequest {
        request_union: Some(watch_request::RequestUnion::ProgressRequest(
            WatchProgressRequest {},
        )),
    })
    .await
    .unwrap();
    let r = next().await;
    assert_eq!((r.watch_id, r.header.unwrap().revision), (-1, 2));
    tx.send(WatchRequest {
        request_union: Some(watch_request::RequestUnion::CancelRequest(
            WatchCancelRequest { watch_id: 99 },
        )),
    })
    .await
    .unwrap();
    tx.send(WatchRequest {
        request_union: Some(watch_request::RequestUnion::CancelRequest(
            WatchCancelRequest { watch_id: 7 },
        )),
    })
    .await
    .unwrap();
    let r = next().await; // no reply for 99
    assert_eq!((r.watch_id, r.canceled), (7, true));
    // Half-close does not end the watch.
    drop(tx);
    kv.put(put("d", "x")).await.unwrap();
    let r = next().await;
    assert_eq!(r.watch_id, 1);

    // Compaction cancel: header revision 0, compact_revision set (§4.8).
    kv.compact(CompactionRequest {
        revision: 3,
        physical: false,
    })
    .await
    .unwrap();
    let (tx2, rx2) = tokio::sync::mpsc::channel(4);
    let mut out2 = w
        .watch(tokio_stream::wrappers::ReceiverStream::new(rx2))
        .await
        .unwrap()
        .into_inner();
    let old = WatchCreateRequest {
        key: "a".into(),
        start_revision: 2,
        ..Default::default()
    };
    tx2.send(WatchRequest {
        request_union: Some(watch_request::RequestUnion::CreateRequest(old)),
    })
    .await
    .unwrap();
    let created = tokio::time::timeout(Duration::from_secs(10), out2.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(created.created);
    let c = tokio::time::timeout(Duration::from_secs(10), out2.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        (c.canceled, c.compact_revision, c.header.unwrap().revision),
        (true, 3, 0)
    );
    assert!(c.cancel_reason.is_empty());
}

/// Spec §7: a gateway watch keeps streaming after the request body ended.
#[tokio::test]
async fn gateway_watch_streams() {
    let h = start().await;
    let mut s = TcpStream::connect(h.addr).await.unwrap();
    let body = r#"{"create_request":{"key":"d2s=","range_end":"d2w="}}"#;
    let req = format!(
        "POST /v3/watch HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let mut read_until = async |s: &mut TcpStream, needle: &str| {
        while !String::from_utf8_lossy(&buf).contains(needle) {
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut chunk))
                .await
                .unwrap()
                .unwrap();
            assert!(
                n > 0,
                "connection closed: {}",
                String::from_utf8_lossy(&buf)
            );
            buf.extend_from_slice(&chunk[..n]);
        }
        String::from_utf8_lossy(&buf).to_string()
    };
    let text = read_until(&mut s, "\"created\":true").await;
    assert!(text.contains(r#"{"result":{"header":{"#), "{text}");
    let mut kv = KvClient::new(channel(&h).await);
    kv.put(put("wk1", "a")).await.unwrap();
    let text = read_until(&mut s, "d2sx").await;
    assert!(text.contains(r#""events":[{"kv":{"key":"d2sx","create_revision":"2","mod_revision":"2","version":"1","value":"YQ=="}}]"#), "{text}");
}

/// Spec §4.9 keep-alive stream (gRPC and gateway) and §4.11 snapshot stream.
#[tokio::test]
async fn lease_keep_alive_and_snapshot_streams() {
    let h = start().await;
    let mut lease = LeaseClient::new(channel(&h).await);
    let g = lease
        .lease_grant(LeaseGrantRequest { ttl: 1, id: 0 })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(g.ttl, 2);
    let reqs = vec![
        LeaseKeepAliveRequest { id: g.id },
        LeaseKeepAliveRequest { id: 12345 },
    ];
    let resps: Vec<LeaseKeepAliveResponse> = lease
        .lease_keep_alive(tokio_stream::iter(reqs))
        .await
        .unwrap()
        .into_inner()
        .map(|r| r.unwrap())
        .collect()
        .await;
    assert_eq!(resps.len(), 2); // the stream ends OK on half-close
    assert_eq!((resps[0].id, resps[0].ttl), (g.id, 2));
    assert_eq!(resps[1].ttl, 0);
    let big = LeaseGrantRequest {
        ttl: 9_000_000_001,
        id: 0,
    };
    assert_eq!(
        lease.lease_grant(big).await.unwrap_err().message(),
        "etcdserver: too large lease TTL"
    );

    let (status, _, body) = http(&h, "POST", "/v3/lease/keepalive", r#"{"ID":"12345"}"#).await;
    assert_eq!(status, 200);
    assert_eq!(json(body.trim())["result"]["ID"], "12345");
    assert!(json(body.trim())["result"].get("TTL").is_none());

    let mut mt = MaintenanceClient::new(channel(&h).await);
    let msgs: Vec<SnapshotResponse> = mt
        .snapshot(SnapshotRequest {})
        .await
        .unwrap()
        .into_inner()
        .map(|r| r.unwrap())
        .collect()
        .await;
    let data = snapshot_bytes();
    let body: Vec<u8> = msgs[..msgs.len() - 1]
        .iter()
        .flat_map(|m| m.blob.to_vec())
        .collect();
    assert_eq!(body, data);
    use sha2::Digest;
    assert_eq!(
        msgs.last().unwrap().blob.as_ref(),
        sha2::Sha256::digest(&data).as_slice()
    );
    assert_eq!(msgs[0].remaining_bytes, data.len() as u64 - 32 * 1024);
}

/// Spec §4.13: a second Lock on the same name waits until the first is unlocked.
#[tokio::test]
async fn v3lock_waits_for_the_holder() {
    let h = start().await;
    let mut lease = LeaseClient::new(channel(&h).await);
    let l1 = lease
        .lease_grant(LeaseGrantRequest { ttl: 60, id: 0 })
        .await
        .unwrap()
        .into_inner()
        .id;
    let l2 = lease
        .lease_grant(LeaseGrantRequest { ttl: 60, id: 0 })
        .await
        .unwrap()
        .into_inner()
        .id;
    let mut lock = LockClient::new(channel(&h).await);
    let first = lock
        .lock(LockRequest {
            name: "mylock".into(),
            lease: l1,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.key, Bytes::from(format!("mylock/{l1:x}")));
    let mut lock2 = lock.clone();
    let second = tokio::spawn(async move {
        lock2
            .lock(LockRequest {
                name: "mylock".into(),
                lease: l2,
            })
            .await
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!second.is_finished(), "second lock must wait for the first");
    lock.unlock(UnlockRequest { key: first.key }).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(10), second)
        .await
        .unwrap()
        .unwrap()
        .unwrap()
        .into_inner();
    assert_eq!(got.key, Bytes::from(format!("mylock/{l2:x}")));
    let (status, _, body) = http(&h, "POST", "/v3/election/leader", r#"{"name":"bm9uZQ=="}"#).await;
    assert_eq!(
        (status, json(&body)["error"].clone()),
        (500, serde_json::json!("election: no leader"))
    );
}

/// Graceful shutdown: in-flight streams end with "server stopped", the listener stops
/// accepting, and the drain completes within its bound.
#[tokio::test]
async fn graceful_shutdown_drains() {
    let h = start().await;
    let mut w = WatchClient::new(channel(&h).await);
    let mut out = w
        .watch(tokio_stream::iter(vec![create("a", 0)]).chain(tokio_stream::pending()))
        .await
        .unwrap()
        .into_inner();
    assert!(
        tokio::time::timeout(Duration::from_secs(10), out.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap()
            .created
    );
    let addr = h.addr;
    assert!(
        h.trigger.drain(Duration::from_secs(10)).await,
        "connections drained"
    );
    let end = tokio::time::timeout(Duration::from_secs(10), out.next())
        .await
        .unwrap();
    assert!(
        matches!(&end, Some(Err(s)) if s.message() == "etcdserver: server stopped")
            || end.is_none(),
        "{end:?}"
    );
    h.server.await.unwrap().unwrap();
    assert!(TcpStream::connect(addr).await.is_err(), "listener closed");
}

/// Runs etcdctl 3.4 (installed by tests/run.sh from Debian's `etcd-client`) against `h`.
fn etcdctl(h: &Harness, args: &[&str], stdin: &str) -> (bool, String) {
    use std::io::Write;
    let endpoint = format!("--endpoints=http://{}", h.addr);
    let mut child = std::process::Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(&endpoint)
        .arg("--command-timeout=5s")
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("etcdctl 3.4 must be installed (tests/run.sh installs Debian's etcd-client)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// The real etcdctl 3.4 drives the front end (spec §6): wire format, headers, errors and the
/// snapshot digest as a real client parses them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_speaks_to_the_front_end() {
    let h = Arc::new(start().await);
    let run = |args: &'static [&'static str], stdin: &'static str| {
        let h = h.clone();
        tokio::task::spawn_blocking(move || etcdctl(&h, args, stdin))
    };
    assert_eq!(
        run(&["put", "foo", "bar"], "").await.unwrap(),
        (true, "OK\n".into())
    );
    assert_eq!(
        run(&["get", "foo"], "").await.unwrap(),
        (true, "foo\nbar\n".into())
    );
    let (ok, text) = run(&["get", "foo", "-w", "json"], "").await.unwrap();
    assert!(ok, "{text}");
    let v = json(&text);
    assert_eq!(v["header"]["member_id"], serde_json::json!(MEMBER_ID));
    assert_eq!(v["count"], 1);
    let (ok, text) = run(&["put", "", "v"], "").await.unwrap();
    assert!(!ok);
    assert!(text.contains("etcdserver: key is not provided"), "{text}");
    let (ok, text) = run(
        &["txn"],
        "value(\"foo\") = \"bar\"\n\nput foo baz\nget foo\n\n\n",
    )
    .await
    .unwrap();
    assert!(ok, "{text}");
    assert_eq!(text, "SUCCESS\n\nOK\n\nfoo\nbaz\n");
    assert_eq!(
        run(&["del", "foo"], "").await.unwrap(),
        (true, "1\n".into())
    );
    let (ok, text) = run(&["lease", "grant", "60"], "").await.unwrap();
    assert!(
        ok && text.starts_with("lease ") && text.ends_with(" granted with TTL(60s)\n"),
        "{text}"
    );
    let (ok, text) = run(&["lease", "keep-alive", "--once", "123"], "")
        .await
        .unwrap();
    assert!(!ok || text.contains("expired or revoked"), "{text}");
    let (ok, text) = run(&["member", "list"], "").await.unwrap();
    assert!(ok, "{text}");
    assert_eq!(
        text,
        "2e1259d415f2a040, started, default, http://127.0.0.1:23800, http://127.0.0.1:23790, false\n"
    );
    let (ok, text) = run(&["endpoint", "status"], "").await.unwrap();
    assert!(ok, "{text}");
    assert!(
        text.contains(", 2e1259d415f2a040, 3.4.23, 70 kB, true, false, 2, "),
        "{text}"
    );
    let (ok, text) = run(&["endpoint", "health"], "").await.unwrap();
    assert!(ok && text.contains("is healthy"), "{text}");
    assert_eq!(
        run(&["alarm", "list"], "").await.unwrap(),
        (true, String::new())
    );
    let (ok, text) = run(&["defrag"], "").await.unwrap();
    assert!(
        ok && text.contains("Finished defragmenting etcd member"),
        "{text}"
    );
    let dir = std::env::temp_dir().join(format!("ringkv-net-snap-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("snap.db");
    let h2 = h.clone();
    let p = path.to_str().unwrap().to_string();
    let (ok, text) =
        tokio::task::spawn_blocking(move || etcdctl(&h2, &["snapshot", "save", &p], ""))
            .await
            .unwrap();
    assert!(ok, "{text}");
    let file = std::fs::read(&path).unwrap();
    let data = snapshot_bytes();
    assert_eq!(file.len(), data.len() + 32); // etcdctl keeps the trailing SHA-256 (spec §4.11)
    assert_eq!(&file[..data.len()], &data[..]);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// etcdctl's watch (spec §6: Watch with `hasleader`, one create request) prints the events the
/// front end streams.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_watch_prints_events() {
    use std::io::BufRead;
    let h = start().await;
    let mut child = KillOnDrop(
        std::process::Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints=http://{}", h.addr))
            .args(["watch", "wk", "--prefix"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("etcdctl 3.4 must be installed (tests/run.sh installs Debian's etcd-client)"),
    );
    let stdout = child.0.stdout.take().unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            if tx.send(line.unwrap()).is_err() {
                break;
            }
        }
    });
    let mut kv = KvClient::new(channel(&h).await);
    // The watch is registered once etcdctl's create request arrived; until then puts are missed,
    // so keep putting until the first event shows up.
    let mut attempts = 0;
    let first = loop {
        kv.put(put("wk1", "a")).await.unwrap();
        if let Ok(Some(line)) = tokio::time::timeout(Duration::from_millis(200), rx.recv()).await {
            break line;
        }
        attempts += 1;
        assert!(attempts < 100, "etcdctl watch printed nothing in 20 s");
        assert!(
            child.0.try_wait().unwrap().is_none(),
            "etcdctl watch exited early"
        );
    };
    assert_eq!(first, "PUT");
    assert_eq!(rx.recv().await.unwrap(), "wk1");
    assert_eq!(rx.recv().await.unwrap(), "a");
    kv.delete_range(DeleteRangeRequest {
        key: "wk1".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let mut lines = Vec::new();
    while lines.len() < 2 {
        let line = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .unwrap()
            .unwrap();
        // Skip further PUT events from the registration loop until the DELETE.
        if lines.is_empty() && line != "DELETE" {
            continue;
        }
        lines.push(line);
    }
    assert_eq!(lines, vec!["DELETE".to_string(), "wk1".to_string()]);
}

/// Kills a child process when dropped, also when a test panics.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `serve_clients_until` binds every `--listen-client-urls` address from the flags, serves,
/// and drains when told to stop.
#[tokio::test]
async fn serve_clients_from_flags() {
    use clap::Parser;
    // Ports below Linux's ephemeral range (32768+), which every other test binds from, chosen
    // by process ID so parallel test processes do not collide.
    let port = 20_000 + (std::process::id() % 6_000) as u16 * 2;
    let mport = port + 1;
    let url = format!("--listen-client-urls=http://127.0.0.1:{port}");
    let murl = format!("--listen-metrics-urls=http://127.0.0.1:{mport}");
    let config = ringkv_net::Flags::try_parse_from(["ringkv", url.as_str(), murl.as_str()])
        .unwrap()
        .resolve()
        .unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let node = Arc::new(MemNode::default());
    let server = tokio::spawn(async move {
        ringkv_net::serve_clients_until(&config, node, async {
            let _ = stop_rx.await;
        })
        .await
    });
    let endpoint = format!("http://127.0.0.1:{port}");
    let mut attempts = 0;
    let channel = loop {
        assert!(
            !server.is_finished(),
            "serve_clients_until ended early: {:?}",
            server.await
        );
        if let Ok(c) = Channel::from_shared(endpoint.clone())
            .unwrap()
            .connect()
            .await
        {
            break c;
        }
        attempts += 1;
        assert!(attempts < 500, "server did not come up in 10 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let mut kv = KvClient::new(channel);
    assert_eq!(
        kv.put(put("k", "v"))
            .await
            .unwrap()
            .into_inner()
            .header
            .unwrap()
            .revision,
        2
    );
    // The metrics listener serves /metrics and /health only.
    let maddr: std::net::SocketAddr = ([127, 0, 0, 1], mport).into();
    let (status, _, body) = http_at(maddr, "GET", "/metrics", "").await;
    assert_eq!(status, 200);
    assert!(
        body.contains("grpc_server_handled_total{grpc_code=\"OK\",grpc_method=\"Put\""),
        "{body}"
    );
    assert_eq!(http_at(maddr, "GET", "/health", "").await.0, 200);
    assert_eq!(http_at(maddr, "POST", "/v3/kv/range", "{}").await.0, 404);
    stop_tx.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(15), server)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(TcpStream::connect(("127.0.0.1", port)).await.is_err());
}

/// Spec §4.13: Campaign, Leader, Proclaim, Observe and Resign over the v3election service.
#[tokio::test]
async fn v3election_round_trip() {
    use ringkv_net::pb::v3electionpb::{
        CampaignRequest, LeaderRequest, ProclaimRequest, ResignRequest,
        election_client::ElectionClient,
    };
    let h = start().await;
    let mut lease = LeaseClient::new(channel(&h).await);
    let l1 = lease
        .lease_grant(LeaseGrantRequest { ttl: 60, id: 0 })
        .await
        .unwrap()
        .into_inner()
        .id;
    let mut el = ElectionClient::new(channel(&h).await);
    let c = el
        .campaign(CampaignRequest {
            name: "e".into(),
            lease: l1,
            value: "v1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let leader = c.leader.unwrap();
    assert_eq!(leader.key, Bytes::from(format!("e/{l1:x}")));
    assert_eq!(leader.rev, c.header.unwrap().revision);
    let mut observe = el
        .observe(LeaderRequest { name: "e".into() })
        .await
        .unwrap()
        .into_inner();
    let first = tokio::time::timeout(Duration::from_secs(10), observe.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(first.kv.unwrap().value.as_ref(), b"v1");
    el.proclaim(ProclaimRequest {
        leader: Some(leader.clone()),
        value: "v2".into(),
    })
    .await
    .unwrap();
    let next = tokio::time::timeout(Duration::from_secs(10), observe.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(next.kv.unwrap().value.as_ref(), b"v2");
    let l = el
        .leader(LeaderRequest { name: "e".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(l.kv.unwrap().value.as_ref(), b"v2");
    // A stale leadership cannot proclaim; resigning it is silently fine.
    let stale = ringkv_net::pb::v3electionpb::LeaderKey {
        rev: leader.rev + 100,
        ..leader.clone()
    };
    let e = el
        .proclaim(ProclaimRequest {
            leader: Some(stale.clone()),
            value: "x".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), e.message()),
        (Code::Unknown, "election: not leader")
    );
    el.resign(ResignRequest {
        leader: Some(stale),
    })
    .await
    .unwrap();
    assert!(el.leader(LeaderRequest { name: "e".into() }).await.is_ok());
    el.resign(ResignRequest {
        leader: Some(leader),
    })
    .await
    .unwrap();
    let e = el
        .leader(LeaderRequest { name: "e".into() })
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), e.message()),
        (Code::Unknown, "election: no leader")
    );
}

//! The HTTP/JSON gateway (etcd-v3-spec.md §7): `POST /v3/<service>/<method>` with a JSON body,
//! answered by the same service code the gRPC clients reach (validation, headers and errors are
//! therefore identical), with the JSON mapping of `json.rs`.

use std::future::Future;

use bytes::Bytes;
use http::{HeaderMap, Response, StatusCode};
use prost::{Message, Name};
use tokio_stream::{Stream, StreamExt};
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::{Code, Status};

use crate::errors::{EtcdError, http_status};
use crate::frontend::{MD_TOKEN, Shared};
use crate::json;
use crate::node::EtcdNode;
use crate::pb::etcdserverpb::{
    auth_server::Auth, cluster_server::Cluster, kv_server::Kv, lease_server::Lease,
    maintenance_server::Maintenance,
};
use crate::pb::v3electionpb::election_server::Election;
use crate::pb::v3lockpb::lock_server::Lock;
use crate::{
    auth::AuthService, cluster::ClusterService, election::ElectionService, kv::KvService,
    lease::LeaseService, lock::LockService, maintenance::MaintenanceService, watch,
};

/// The body type of every HTTP response.
pub type Body = tonic::body::Body;

/// A complete JSON response.
pub fn json_response(status: StatusCode, json: String) -> Response<Body> {
    let mut resp = Response::new(Body::new(http_body_util::Full::new(Bytes::from(json))));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    resp
}

/// A gateway error: `{"error": msg, "message": msg, "code": n}` with the HTTP status of the
/// gRPC code (spec §7).
pub fn error_response(status: &Status) -> Response<Body> {
    let body = serde_json::json!({
        "error": status.message(),
        "message": status.message(),
        "code": status.code() as i32,
    });
    json_response(http_status(status.code()), body.to_string())
}

/// Metadata a gateway request carries to the services: `Authorization` becomes `token`.
fn metadata(headers: &HeaderMap) -> MetadataMap {
    let mut md = MetadataMap::new();
    if let Some(token) = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        && let Ok(v) = MetadataValue::try_from(token)
    {
        md.insert(MD_TOKEN, v);
    }
    md
}

fn bad_json(e: String) -> Status {
    Status::new(Code::InvalidArgument, e)
}

/// Decodes the body, checks the receive limit, calls `f`, encodes the answer.
async fn unary<Req, Resp, F, Fut>(
    md: MetadataMap,
    body: &[u8],
    limit: usize,
    f: F,
) -> Response<Body>
where
    Req: Message + Name + Default,
    Resp: Message + Name,
    F: FnOnce(tonic::Request<Req>) -> Fut,
    Fut: Future<Output = Result<tonic::Response<Resp>, Status>>,
{
    let req: Req = match json::from_body(body) {
        Ok(r) => r,
        Err(e) => return error_response(&bad_json(e)),
    };
    let len = req.encoded_len();
    if len > limit {
        return error_response(&EtcdError::MessageTooLarge { found: len, limit }.to_status());
    }
    let mut request = tonic::Request::new(req);
    *request.metadata_mut() = md;
    match f(request).await {
        Ok(resp) => {
            let mut r = json_response(StatusCode::OK, json::to_string(resp.get_ref()));
            r.headers_mut().insert(
                "grpc-metadata-content-type",
                http::HeaderValue::from_static("application/grpc"),
            );
            r
        }
        Err(status) => error_response(&status),
    }
}

/// A streaming answer: one `{"result": msg}` line per message; an error ends the body with
/// `{"error": {...}}` (grpc-gateway's stream error shape).
fn stream_response<M: Message + Name + 'static>(
    stream: impl Stream<Item = Result<M, Status>> + Send + 'static,
) -> Response<Body> {
    let lines = stream.map(|item| {
        let line = match item {
            Ok(m) => serde_json::json!({ "result": json::to_value(&m) }),
            Err(s) => serde_json::json!({ "error": {
                "grpc_code": s.code() as i32,
                "http_code": http_status(s.code()).as_u16(),
                "message": s.message(),
                "http_status": http_status(s.code()).canonical_reason().unwrap_or(""),
            }}),
        };
        Ok::<_, std::convert::Infallible>(http_body::Frame::data(Bytes::from(format!("{line}\n"))))
    });
    let mut resp = Response::new(Body::new(http_body_util::StreamBody::new(lines)));
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    resp.headers_mut().insert(
        "grpc-metadata-content-type",
        http::HeaderValue::from_static("application/grpc"),
    );
    resp
}

/// Parses a client-streaming body into requests.
fn stream_requests<M: Message + Name + Default>(body: &[u8]) -> Result<Vec<M>, Status> {
    json::values(body)
        .map_err(bad_json)?
        .into_iter()
        .map(|v| json::from_value(v).map_err(bad_json))
        .collect()
}

/// Serves one gateway request. `path` is already rewritten from `/v3beta/` to `/v3/`.
pub async fn handle<N: EtcdNode>(
    shared: Shared<N>,
    path: &str,
    headers: &HeaderMap,
    body: Bytes,
) -> Response<Body> {
    let md = metadata(headers);
    let limit = shared.limits.max_request_bytes + crate::config::GRPC_RECV_OVERHEAD;
    let b = body.as_ref();
    let kv = KvService {
        shared: shared.clone(),
    };
    let lease = LeaseService {
        shared: shared.clone(),
    };
    let cluster = ClusterService {
        shared: shared.clone(),
    };
    let mt = MaintenanceService {
        shared: shared.clone(),
    };
    let auth = AuthService {
        shared: shared.clone(),
    };
    let election = ElectionService {
        shared: shared.clone(),
    };
    let lock = LockService {
        shared: shared.clone(),
    };
    match path {
        "/v3/kv/range" => unary(md, b, limit, |r| kv.range(r)).await,
        "/v3/kv/put" => unary(md, b, limit, |r| kv.put(r)).await,
        "/v3/kv/deleterange" => unary(md, b, limit, |r| kv.delete_range(r)).await,
        "/v3/kv/txn" => unary(md, b, limit, |r| kv.txn(r)).await,
        "/v3/kv/compaction" => unary(md, b, limit, |r| kv.compact(r)).await,
        "/v3/lease/grant" => unary(md, b, limit, |r| lease.lease_grant(r)).await,
        "/v3/lease/revoke" | "/v3/kv/lease/revoke" => {
            unary(md, b, limit, |r| lease.lease_revoke(r)).await
        }
        "/v3/lease/timetolive" | "/v3/kv/lease/timetolive" => {
            unary(md, b, limit, |r| lease.lease_time_to_live(r)).await
        }
        "/v3/lease/leases" | "/v3/kv/lease/leases" => {
            unary(md, b, limit, |r| lease.lease_leases(r)).await
        }
        "/v3/cluster/member/add" => unary(md, b, limit, |r| cluster.member_add(r)).await,
        "/v3/cluster/member/remove" => unary(md, b, limit, |r| cluster.member_remove(r)).await,
        "/v3/cluster/member/update" => unary(md, b, limit, |r| cluster.member_update(r)).await,
        "/v3/cluster/member/list" => unary(md, b, limit, |r| cluster.member_list(r)).await,
        "/v3/cluster/member/promote" => unary(md, b, limit, |r| cluster.member_promote(r)).await,
        "/v3/maintenance/alarm" => unary(md, b, limit, |r| mt.alarm(r)).await,
        "/v3/maintenance/status" => unary(md, b, limit, |r| mt.status(r)).await,
        "/v3/maintenance/defragment" => unary(md, b, limit, |r| mt.defragment(r)).await,
        // 3.4 registers Hash and HashKV on the same path and Hash wins (spec §2, §11.7).
        "/v3/maintenance/hash" => unary(md, b, limit, |r| mt.hash(r)).await,
        "/v3/maintenance/transfer-leadership" => unary(md, b, limit, |r| mt.move_leader(r)).await,
        "/v3/auth/enable" => unary(md, b, limit, |r| auth.auth_enable(r)).await,
        "/v3/auth/disable" => unary(md, b, limit, |r| auth.auth_disable(r)).await,
        "/v3/auth/authenticate" => unary(md, b, limit, |r| auth.authenticate(r)).await,
        "/v3/auth/user/add" => unary(md, b, limit, |r| auth.user_add(r)).await,
        "/v3/auth/user/get" => unary(md, b, limit, |r| auth.user_get(r)).await,
        "/v3/auth/user/list" => unary(md, b, limit, |r| auth.user_list(r)).await,
        "/v3/auth/user/delete" => unary(md, b, limit, |r| auth.user_delete(r)).await,
        "/v3/auth/user/changepw" => unary(md, b, limit, |r| auth.user_change_password(r)).await,
        "/v3/auth/user/grant" => unary(md, b, limit, |r| auth.user_grant_role(r)).await,
        "/v3/auth/user/revoke" => unary(md, b, limit, |r| auth.user_revoke_role(r)).await,
        "/v3/auth/role/add" => unary(md, b, limit, |r| auth.role_add(r)).await,
        "/v3/auth/role/get" => unary(md, b, limit, |r| auth.role_get(r)).await,
        "/v3/auth/role/list" => unary(md, b, limit, |r| auth.role_list(r)).await,
        "/v3/auth/role/delete" => unary(md, b, limit, |r| auth.role_delete(r)).await,
        "/v3/auth/role/grant" => unary(md, b, limit, |r| auth.role_grant_permission(r)).await,
        "/v3/auth/role/revoke" => unary(md, b, limit, |r| auth.role_revoke_permission(r)).await,
        "/v3/election/campaign" => unary(md, b, limit, |r| election.campaign(r)).await,
        "/v3/election/proclaim" => unary(md, b, limit, |r| election.proclaim(r)).await,
        "/v3/election/leader" => unary(md, b, limit, |r| election.leader(r)).await,
        "/v3/election/resign" => unary(md, b, limit, |r| election.resign(r)).await,
        "/v3/lock/lock" => unary(md, b, limit, |r| lock.lock(r)).await,
        "/v3/lock/unlock" => unary(md, b, limit, |r| lock.unlock(r)).await,
        "/v3/watch" => {
            let reqs = match stream_requests(b) {
                Ok(r) => r,
                Err(s) => return error_response(&s),
            };
            let (caller, _) = match shared.admit(&md, crate::frontend::LearnerPolicy::Refused) {
                Ok(v) => v,
                Err(s) => return error_response(&s),
            };
            // The request body has ended, but the watch goes on (spec §4.8).
            let input = tokio_stream::iter(reqs.into_iter().map(Ok)).chain(tokio_stream::pending());
            stream_response(watch::serve(shared.clone(), caller, false, Box::pin(input)))
        }
        "/v3/lease/keepalive" => {
            let reqs = match stream_requests(b) {
                Ok(r) => r,
                Err(s) => return error_response(&s),
            };
            let (caller, _) = match shared.admit(&md, crate::frontend::LearnerPolicy::Refused) {
                Ok(v) => v,
                Err(s) => return error_response(&s),
            };
            let input = tokio_stream::iter(reqs.into_iter().map(Ok));
            stream_response(crate::lease::keep_alive(
                shared.clone(),
                caller,
                false,
                Box::pin(input),
            ))
        }
        "/v3/maintenance/snapshot" => {
            let req = match json::from_body(b) {
                Ok(r) => r,
                Err(e) => return error_response(&bad_json(e)),
            };
            let mut request = tonic::Request::new(req);
            *request.metadata_mut() = md;
            match mt.snapshot(request).await {
                Ok(resp) => stream_response(resp.into_inner()),
                Err(s) => error_response(&s),
            }
        }
        "/v3/election/observe" => {
            let req = match json::from_body(b) {
                Ok(r) => r,
                Err(e) => return error_response(&bad_json(e)),
            };
            let mut request = tonic::Request::new(req);
            *request.metadata_mut() = md;
            match election.observe(request).await {
                Ok(resp) => stream_response(resp.into_inner()),
                Err(s) => error_response(&s),
            }
        }
        _ => plain_error(StatusCode::NOT_FOUND),
    }
}

/// grpc-gateway's answer for unknown `/v3/` paths and wrong methods: the status text as
/// `text/plain` (e.g. `Not Found`, `Method Not Allowed`).
pub fn plain_error(status: StatusCode) -> Response<Body> {
    let text = format!("{}\n", status.canonical_reason().unwrap_or(""));
    let mut resp = Response::new(Body::new(http_body_util::Full::new(Bytes::from(text))));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// Go's `http.NotFound`.
pub fn not_found() -> Response<Body> {
    let mut resp = Response::new(Body::new(http_body_util::Full::new(Bytes::from_static(
        b"404 page not found\n",
    ))));
    *resp.status_mut() = StatusCode::NOT_FOUND;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

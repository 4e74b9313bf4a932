//! The HTTP/1.1 side of the client port (etcd-v3-spec.md §7, §8): CORS, `/health`,
//! `/version`, `/metrics`, and the gateway under `/v3/` (with `/v3beta/` rewritten to `/v3/`).

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;

use crate::errors::EtcdError;
use crate::frontend::Shared;
use crate::gateway::{self, Body, plain_error};
use crate::metrics::{self, CLUSTER_VERSION, SERVER_VERSION};
use crate::node::{Caller, EtcdNode};
use crate::pb::etcdserverpb::{AlarmType, RangeRequest};

/// How long `/health`'s consensus read may take (etcd: 1 s).
pub const HEALTH_READ_TIMEOUT: Duration = Duration::from_secs(1);

fn text(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Response<Body> {
    let mut resp = Response::new(Body::new(http_body_util::Full::new(body.into())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    resp
}

/// Adds the CORS headers etcd puts on every HTTP response (spec §7).
fn cors(mut resp: Response<Body>) -> Response<Body> {
    let h = resp.headers_mut();
    h.insert(
        "access-control-allow-methods",
        http::HeaderValue::from_static("POST, GET, OPTIONS, PUT, DELETE"),
    );
    h.insert(
        "access-control-allow-origin",
        http::HeaderValue::from_static("*"),
    );
    h.insert(
        "access-control-allow-headers",
        http::HeaderValue::from_static("accept, content-type, authorization"),
    );
    resp
}

/// Serves one HTTP request (any version, not gRPC).
pub async fn handle<N: EtcdNode, B>(shared: Shared<N>, req: Request<B>) -> Response<Body>
where
    B: http_body::Body<Data = Bytes> + Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    cors(route(shared, req).await)
}

/// Serves one request on a `--listen-metrics-urls` listener: only `/metrics` and `/health`.
pub async fn handle_metrics_only<N: EtcdNode, B>(
    shared: Shared<N>,
    req: Request<B>,
) -> Response<Body>
where
    B: http_body::Body<Data = Bytes> + Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    match req.uri().path() {
        "/metrics" | "/health" => route(shared, req).await,
        _ => gateway::not_found(),
    }
}

async fn route<N: EtcdNode, B>(shared: Shared<N>, req: Request<B>) -> Response<Body>
where
    B: http_body::Body<Data = Bytes> + Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    if req.method() == Method::OPTIONS {
        return text(StatusCode::OK, "text/plain; charset=utf-8", Bytes::new());
    }
    let path = req.uri().path().to_string();
    match path.as_str() {
        "/health" => {
            if req.method() != Method::GET {
                return method_not_allowed();
            }
            let excluded = excluded_alarms(req.uri().query().unwrap_or(""));
            health(&shared, &excluded).await
        }
        "/version" => {
            if req.method() != Method::GET && req.method() != Method::HEAD {
                return method_not_allowed();
            }
            let body =
                serde_json::json!({"etcdserver": SERVER_VERSION, "etcdcluster": CLUSTER_VERSION});
            text(StatusCode::OK, "application/json", body.to_string())
        }
        "/metrics" => {
            let body = metrics::render(
                &shared.node.state(),
                &shared.node.metrics(),
                &shared.metrics,
            );
            text(
                StatusCode::OK,
                "text/plain; version=0.0.4; charset=utf-8",
                body,
            )
        }
        p if p.starts_with("/v3/") || p.starts_with("/v3beta/") => {
            if req.method() != Method::POST {
                return plain_error(StatusCode::METHOD_NOT_ALLOWED);
            }
            let path = match p.strip_prefix("/v3beta/") {
                Some(rest) => format!("/v3/{rest}"),
                None => p.to_string(),
            };
            let headers = req.headers().clone();
            let limit = body_limit(shared.limits.max_request_bytes);
            let body = match http_body_util::Limited::new(req.into_body(), limit)
                .collect()
                .await
            {
                Ok(b) => b.to_bytes(),
                Err(e) => {
                    let status = tonic::Status::new(
                        tonic::Code::InvalidArgument,
                        format!("reading request body: {e}"),
                    );
                    return gateway::error_response(&status);
                }
            };
            gateway::handle(shared, &path, &headers, body).await
        }
        _ => gateway::not_found(),
    }
}

/// Largest gateway body read: JSON with base64 values is about 4/3 of the message, plus slack.
fn body_limit(max_request_bytes: usize) -> usize {
    (max_request_bytes + crate::config::GRPC_RECV_OVERHEAD) * 2
}

fn method_not_allowed() -> Response<Body> {
    let mut resp = text(
        StatusCode::METHOD_NOT_ALLOWED,
        "text/plain; charset=utf-8",
        "Method Not Allowed\n",
    );
    resp.headers_mut()
        .insert(http::header::ALLOW, http::HeaderValue::from_static("GET"));
    resp
}

/// Alarm types named in `?exclude=NAME` (repeatable).
fn excluded_alarms(query: &str) -> Vec<i32> {
    query
        .split('&')
        .filter_map(|kv| kv.strip_prefix("exclude="))
        .filter_map(AlarmType::from_str_name)
        .map(|a| a as i32)
        .collect()
}

/// `/health` (spec §8): unhealthy when an alarm (not excluded) is active, when there is no
/// leader, or when a consensus read fails within 1 s. 200 body has no newline, 503 body has
/// one (Go's `http.Error`); both are `text/plain`.
async fn health<N: EtcdNode>(shared: &Shared<N>, excluded: &[i32]) -> Response<Body> {
    let state = shared.node.state();
    let alarm = state.alarms.iter().any(|a| !excluded.contains(&a.alarm));
    let healthy = !alarm && state.leader != 0 && {
        let read = RangeRequest {
            key: Bytes::from_static(b"health"),
            ..Default::default()
        };
        match tokio::time::timeout(
            HEALTH_READ_TIMEOUT,
            shared.node.range(&Caller::default(), read),
        )
        .await
        {
            Ok(Ok(_)) | Ok(Err(EtcdError::PermissionDenied)) => true,
            Ok(Err(_)) | Err(_) => false,
        }
    };
    if healthy {
        shared.metrics.health_success.fetch_add(1, Relaxed);
        text(
            StatusCode::OK,
            "text/plain; charset=utf-8",
            r#"{"health":"true"}"#,
        )
    } else {
        shared.metrics.health_failures.fetch_add(1, Relaxed);
        text(
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain; charset=utf-8",
            "{\"health\":\"false\"}\n",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exclude_query() {
        assert_eq!(
            excluded_alarms("exclude=NOSPACE"),
            vec![AlarmType::Nospace as i32]
        );
        assert_eq!(
            excluded_alarms("a=b&exclude=CORRUPT&exclude=BOGUS"),
            vec![AlarmType::Corrupt as i32]
        );
        assert!(excluded_alarms("").is_empty());
    }
}

//! The client listener: one TCP port serving gRPC and HTTP/1.1 (etcd-v3-spec.md §1).
//!
//! Connection sniffing (etcd uses cmux): the first bytes are read; the HTTP/2 prior-knowledge
//! preface (`PRI * HTTP/2.0...`) selects HTTP/2, served on the `h2` crate with a thin path for
//! the hot KV RPCs (`h2server.rs`), anything else HTTP/1.1 on hyper. Requests are then routed: HTTP/2 with `content-type: application/grpc*` → the gRPC services;
//! everything else → the HTTP mux (gateway, /health, /version, /metrics). This is also etcd's
//! rule on TLS listeners.
//!
//! Shutdown: see `shutdown.rs` (broadcast, drain, bounded). Each connection task holds a
//! `DrainGuard`; on the broadcast it closes gracefully (HTTP/2 GOAWAY, HTTP/1 close after the
//! in-flight response) and finishes when in-flight requests have.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tonic::service::Routes;
use tower::ServiceExt;

use crate::auth::AuthService;
use crate::cluster::ClusterService;
use crate::election::ElectionService;
use crate::errors::{rewrite_tonic_status, unknown_path};
use crate::frontend::{Frontend, Shared};
use crate::gateway::Body;
use crate::health::HealthService;
use crate::kv::KvService;
use crate::lease::LeaseService;
use crate::lock::LockService;
use crate::maintenance::MaintenanceService;
use crate::metrics::GrpcMetrics;
use crate::node::EtcdNode;
use crate::pb::etcdserverpb::{
    auth_server::AuthServer, cluster_server::ClusterServer, kv_server::KvServer,
    lease_server::LeaseServer, maintenance_server::MaintenanceServer, watch_server::WatchServer,
};
use crate::pb::health::health_server::HealthServer;
use crate::pb::v3electionpb::election_server::ElectionServer;
use crate::pb::v3lockpb::lock_server::LockServer;
use crate::runtimes::Spawner;
use crate::shutdown::{DrainGuard, Shutdown};
use crate::validate::Limits;
use crate::watch::WatchService;

/// The registered gRPC services (grpc-go words unknown paths differently for these).
const SERVICES: [&str; 9] = [
    "etcdserverpb.KV",
    "etcdserverpb.Watch",
    "etcdserverpb.Lease",
    "etcdserverpb.Cluster",
    "etcdserverpb.Maintenance",
    "etcdserverpb.Auth",
    "v3electionpb.Election",
    "v3lockpb.Lock",
    "grpc.health.v1.Health",
];

/// Most client connections served at once; further accepts wait for a slot.
pub const MAX_CONNECTIONS: usize = 16 * 1024;

/// Listener settings from the flags.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// Request limits.
    pub limits: Limits,
    /// gRPC receive limit (max-request-bytes + 512 KiB).
    pub grpc_max_recv_bytes: usize,
    /// HTTP/2 max concurrent streams per connection.
    pub max_concurrent_streams: u32,
    /// Server-to-client ping interval.
    pub keepalive_interval: Duration,
    /// Ping answer timeout.
    pub keepalive_timeout: Duration,
    /// Election timeout (stream leader checks).
    pub election_timeout: Duration,
    /// Serve KV Range/Put/DeleteRange/Txn/Compact on HTTP/2 connections on the thin path
    /// (`h2server.rs`) instead of tonic's. Off only to compare the two paths in tests.
    pub thin_kv: bool,
    /// Where accepted client connections run: `Some` hands each to the next front-end runtime
    /// (`runtimes.rs`, the `ringkv` binary); `None` spawns it on the accepting runtime.
    pub runtimes: Option<Spawner>,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            limits: Limits::default(),
            grpc_max_recv_bytes: 2 * 1024 * 1024,
            max_concurrent_streams: u32::MAX,
            keepalive_interval: Duration::from_secs(7200),
            keepalive_timeout: Duration::from_secs(20),
            election_timeout: Duration::from_secs(1),
            thin_kv: true,
            runtimes: None,
        }
    }
}

/// One client listener's request handling: the gRPC routes and the HTTP mux over one node.
pub struct ClientServer<N> {
    /// Front-end state shared by every service.
    shared: Shared<N>,
    /// The tonic services (cloned per request; cheap).
    routes: Routes,
    /// Connection-level settings.
    options: ServerOptions,
}

impl<N: EtcdNode> ClientServer<N> {
    /// Builds the services over `node`.
    pub fn new(node: Arc<N>, options: ServerOptions, shutdown: Shutdown) -> Arc<Self> {
        let shared = Arc::new(Frontend {
            node,
            limits: options.limits,
            metrics: Arc::new(GrpcMetrics::default()),
            shutdown,
            election_timeout: options.election_timeout,
        });
        let max = options.grpc_max_recv_bytes;
        let s = || shared.clone();
        let routes =
            Routes::new(KvServer::new(KvService { shared: s() }).max_decoding_message_size(max))
                .add_service(
                    WatchServer::new(WatchService { shared: s() }).max_decoding_message_size(max),
                )
                .add_service(
                    LeaseServer::new(LeaseService { shared: s() }).max_decoding_message_size(max),
                )
                .add_service(
                    ClusterServer::new(ClusterService { shared: s() })
                        .max_decoding_message_size(max),
                )
                .add_service(
                    MaintenanceServer::new(MaintenanceService { shared: s() })
                        .max_decoding_message_size(max),
                )
                .add_service(
                    AuthServer::new(AuthService { shared: s() }).max_decoding_message_size(max),
                )
                .add_service(
                    ElectionServer::new(ElectionService { shared: s() })
                        .max_decoding_message_size(max),
                )
                .add_service(
                    LockServer::new(LockService { shared: s() }).max_decoding_message_size(max),
                )
                .add_service(
                    HealthServer::new(HealthService { shared: s() }).max_decoding_message_size(max),
                )
                .prepare();
        Arc::new(ClientServer {
            shared,
            routes,
            options,
        })
    }

    /// Connection-level settings.
    pub(crate) fn options(&self) -> &ServerOptions {
        &self.options
    }

    /// Front-end state shared by every service.
    pub(crate) fn frontend(&self) -> &Frontend<N> {
        &self.shared
    }

    /// The gRPC counters (for tests and the metrics endpoint).
    pub fn grpc_metrics(&self) -> &GrpcMetrics {
        &self.shared.metrics
    }

    /// Accepts connections until shutdown; each connection runs in its own task holding a
    /// clone of `guard`.
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        guard: DrainGuard,
    ) -> std::io::Result<()> {
        self.serve_with(listener, guard, None).await
    }

    /// [`ClientServer::serve`] on an https listener when `tls` is given: every connection is
    /// a TLS handshake (bounded by `tls::HANDSHAKE_TIMEOUT`), then served like a plain one.
    pub async fn serve_with(
        self: Arc<Self>,
        listener: TcpListener,
        guard: DrainGuard,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> std::io::Result<()> {
        let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
        let mut shutdown = self.shared.shutdown.clone();
        let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        loop {
            let permit = tokio::select! {
                p = slots.clone().acquire_owned() => p.expect("semaphore never closed"),
                _ = shutdown.fired() => return Ok(()),
            };
            let (stream, peer) = tokio::select! {
                r = listener.accept() => match r {
                    Ok(v) => v,
                    // Per-connection accept failures (e.g. EMFILE, reset before accept) do
                    // not stop the listener.
                    Err(e) => {
                        tracing::warn!("accept on client listener: {e}");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                },
                _ = shutdown.fired() => return Ok(()),
            };
            let _ = stream.set_nodelay(true);
            let this = self.clone();
            let guard = guard.clone();
            let acceptor = acceptor.clone();
            let Some(runtimes) = &self.options.runtimes else {
                tokio::spawn(this.accepted(stream, peer, acceptor, permit, guard));
                continue;
            };
            // The socket moves to the chosen runtime's reactor: deregistered here, registered
            // again by `from_std` on the target thread.
            let stream = match stream.into_std() {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!("client connection {peer}: cannot hand off: {e}");
                    continue;
                }
            };
            runtimes.spawn(async move {
                match tokio::net::TcpStream::from_std(stream) {
                    Ok(stream) => this.accepted(stream, peer, acceptor, permit, guard).await,
                    Err(e) => tracing::warn!("client connection {peer}: cannot register: {e}"),
                }
            });
        }
    }

    /// Serves one accepted connection (after the TLS handshake on https listeners), then
    /// releases its connection slot and drain guard.
    async fn accepted(
        self: Arc<Self>,
        stream: tokio::net::TcpStream,
        peer: SocketAddr,
        acceptor: Option<tokio_rustls::TlsAcceptor>,
        permit: tokio::sync::OwnedSemaphorePermit,
        guard: DrainGuard,
    ) {
        match acceptor {
            None => self.serve_connection(stream, peer).await,
            Some(acceptor) => {
                let accepted =
                    tokio::time::timeout(crate::tls::HANDSHAKE_TIMEOUT, acceptor.accept(stream))
                        .await;
                match accepted {
                    Ok(Ok(tls)) => self.serve_connection(tls, peer).await,
                    Ok(Err(e)) => tracing::info!("client TLS handshake from {peer} failed: {e}"),
                    Err(_) => tracing::info!("client TLS handshake from {peer} timed out"),
                }
            }
        }
        drop(permit);
        drop(guard);
    }

    /// Serves `/metrics` and `/health` only (a `--listen-metrics-urls` listener), HTTP/1.1 and
    /// HTTP/2, until shutdown.
    pub async fn serve_metrics(
        self: Arc<Self>,
        listener: TcpListener,
        guard: DrainGuard,
    ) -> std::io::Result<()> {
        let mut shutdown = self.shared.shutdown.clone();
        loop {
            let (stream, peer) = tokio::select! {
                r = listener.accept() => match r {
                    Ok(v) => v,
                    Err(e) => {
                        tracing::warn!("accept on metrics listener: {e}");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                },
                _ = shutdown.fired() => return Ok(()),
            };
            let shared = self.shared.clone();
            let guard = guard.clone();
            let mut shutdown = self.shared.shutdown.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let shared = shared.clone();
                    async move {
                        Ok::<_, Infallible>(crate::http::handle_metrics_only(shared, req).await)
                    }
                });
                let builder = auto::Builder::new(TokioExecutor::new());
                let conn = builder.serve_connection(TokioIo::new(stream), service);
                tokio::pin!(conn);
                tokio::select! {
                    r = conn.as_mut() => {
                        if let Err(e) = r {
                            tracing::debug!("metrics connection {peer}: {e}");
                        }
                        return;
                    }
                    _ = shutdown.fired() => conn.as_mut().graceful_shutdown(),
                }
                let _ = conn.await;
                drop(guard);
            });
        }
    }

    async fn serve_connection<IO>(self: Arc<Self>, mut stream: IO, peer: SocketAddr)
    where
        IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let mut shutdown = self.shared.shutdown.clone();
        let sniffed = tokio::select! {
            r = crate::h2server::sniff_http2(&mut stream) => r,
            _ = shutdown.fired() => return,
        };
        let (http2, prefix) = match sniffed {
            Ok(v) => v,
            Err(e) => {
                tracing::debug!("client connection {peer}: {e}");
                return;
            }
        };
        let io = crate::h2server::Rewind::new(prefix, stream);
        if http2 {
            // See h2fix.rs: grpc-go clients may send a URL as :authority, which h2 would reject.
            let io = crate::h2fix::AuthorityFix::new(io);
            return crate::h2server::serve_connection(self, io, peer).await;
        }
        let this = self.clone();
        let service = hyper::service::service_fn(move |req: Request<Incoming>| {
            let this = this.clone();
            async move { Ok::<_, Infallible>(this.route(req).await) }
        });
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .serve_connection(TokioIo::new(io), service)
            .with_upgrades();
        tokio::pin!(conn);
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!("client connection {peer}: {e}");
                }
                return;
            }
            _ = shutdown.fired() => conn.as_mut().graceful_shutdown(),
        }
        if let Err(e) = conn.await {
            tracing::debug!("client connection {peer} during shutdown: {e}");
        }
    }

    /// Routes one request to gRPC (the thin KV path if enabled, else tonic) or to the HTTP mux.
    pub(crate) async fn route<B>(self: &Arc<Self>, req: Request<B>) -> Response<Body>
    where
        B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let grpc = req.version() == http::Version::HTTP_2
            && req
                .headers()
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|ct| ct.starts_with("application/grpc"));
        if grpc {
            self.grpc(req).await
        } else {
            crate::http::handle(self.shared.clone(), req).await
        }
    }

    /// Calls the tonic routes, counting the RPC and rewriting tonic's own statuses into
    /// grpc-go's (see `errors::rewrite_tonic_status`).
    async fn grpc<B>(&self, req: Request<B>) -> Response<Body>
    where
        B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let metrics = self.shared.metrics.clone();
        let path = req.uri().path().to_string();
        let method = metrics.method(&path);
        if let Some(m) = method {
            metrics.started(m);
        }
        let resp = match self.routes.clone().oneshot(req.map(Body::new)).await {
            Ok(r) => r,
            Err(never) => match never {},
        };
        // Trailers-only responses (errors before any message) carry the status in headers.
        if let Some(status) = tonic::Status::from_header_map(resp.headers()) {
            let status = match rewrite_tonic_status(status.code(), status.message()) {
                Some(e) => e.to_status(),
                None if method.is_none() && status.code() == tonic::Code::Unimplemented => {
                    unknown_path(&path, &SERVICES).to_status()
                }
                None => status,
            };
            if let Some(m) = method {
                metrics.handled(m, status.code() as i32);
            }
            if status.code() != tonic::Code::Ok {
                return status.into_http();
            }
            return resp;
        }
        let Some(m) = method else { return resp };
        resp.map(move |body| {
            Body::new(body.map_frame(move |frame| {
                if let Some(trailers) = frame.trailers_ref() {
                    let code = trailers
                        .get("grpc-status")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|s| s.parse::<i32>().ok())
                        .unwrap_or(2);
                    metrics.handled(m, code);
                }
                frame
            }))
        })
    }
}

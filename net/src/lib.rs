//! ringkv's network layer: the etcd v3 gRPC services, the HTTP/JSON gateway and (later) the
//! peer transport. The `ringkv` binary (src/main.rs) calls [`run`].
//!
//! # Reading the source
//!
//! - `pb.rs` — the protocol: the engine's messages plus generated tonic stubs.
//! - `node.rs` — [`EtcdNode`], the contract with the raft-backed node behind the front end.
//! - `server.rs` — the client listener: one port, gRPC and HTTP/1.1 (connection sniffing),
//!   graceful shutdown (`shutdown.rs`).
//! - `frontend.rs` — what every RPC passes through: `hasleader`/`token` metadata, learner rule,
//!   response headers (spec §4.1); `validate.rs` — etcd's gRPC-layer request checks.
//! - One file per service: `kv.rs`, `watch.rs`, `lease.rs`, `cluster.rs`, `maintenance.rs`,
//!   `auth.rs`, `election.rs` and `lock.rs` (recipes in `recipe.rs`), `health.rs`.
//! - `errors.rs` — the one table from errors to etcd's gRPC codes and messages.
//! - `http.rs`, `gateway.rs`, `json.rs` — the HTTP side: /health, /version, /metrics
//!   (`metrics.rs`), and the JSON gateway.
//! - `config.rs` — flags (etcd's names, `RINGKV_*` environment), member and cluster IDs.

mod auth;
mod cluster;
mod config;
mod election;
mod errors;
mod frontend;
mod gateway;
mod h2fix;
mod health;
mod http;
mod json;
mod kv;
mod lease;
mod lock;
mod maintenance;
mod metrics;
mod node;
pub mod pb;
mod recipe;
mod server;
mod shutdown;
mod validate;
mod watch;

use std::sync::Arc;

use clap::Parser;

pub use config::{
    AutoCompaction, ClusterState, CompactionMode, Config, ConfigError, Flags, InitialMember,
    cluster_id, member_id, parse_go_duration,
};
pub use errors::{EtcdError, http_status};
pub use metrics::{CLUSTER_VERSION, SERVER_VERSION};
pub use node::{
    BoxStream, Caller, EtcdNode, HISTOGRAM_BUCKETS, Histogram, NodeMetrics, NodeResult, NodeState,
    WatchSpec, WatchUpdate, Watcher,
};
pub use server::{ClientServer, MAX_CONNECTIONS, ServerOptions};
pub use shutdown::{DRAIN_TIMEOUT, DrainGuard, Shutdown, ShutdownTrigger, signal};
pub use validate::Limits;

/// Runs the node: parses the flags (and `RINGKV_*` environment), validates them, and — once
/// the raft-backed node exists — serves it. Until then it returns a clear error after the
/// flags were checked: the front end must not pretend to be a node.
pub fn run() -> Result<(), String> {
    let config = Flags::parse().resolve().map_err(|e| e.to_string())?;
    Err(format!(
        "ringkv: the node is not built yet (issue 5): flags are valid (member {:x}, cluster {:x}, \
         data dir {}), but there is no raft/WAL/MVCC node to serve yet",
        config.member_id,
        config.cluster_id,
        config.data_dir.display()
    ))
}

/// Listener options derived from the configuration.
pub fn server_options(config: &Config) -> ServerOptions {
    ServerOptions {
        limits: Limits {
            max_txn_ops: config.flags.max_txn_ops as usize,
            max_request_bytes: config.flags.max_request_bytes as usize,
        },
        grpc_max_recv_bytes: config.grpc_max_recv_bytes,
        max_concurrent_streams: config.flags.max_concurrent_streams,
        keepalive_interval: config.flags.grpc_keepalive_interval,
        keepalive_timeout: config.flags.grpc_keepalive_timeout,
        election_timeout: std::time::Duration::from_millis(config.flags.election_timeout),
    }
}

/// Serves `node` to clients on every `--listen-client-urls` address until SIGTERM/SIGINT,
/// then drains (bounded by [`DRAIN_TIMEOUT`]). For the node's `main` once it exists; must run
/// inside a tokio runtime. Returns after the drain; the caller then closes WAL and backend.
pub async fn serve_clients<N: EtcdNode>(config: &Config, node: Arc<N>) -> std::io::Result<()> {
    serve_clients_until(config, node, async {
        if let Err(e) = signal().await {
            tracing::error!("cannot install SIGTERM/SIGINT handlers: {e}");
            std::future::pending::<()>().await;
        }
    })
    .await
}

/// [`serve_clients`] with an explicit stop condition instead of the signals.
pub async fn serve_clients_until<N: EtcdNode>(
    config: &Config,
    node: Arc<N>,
    stop: impl std::future::Future<Output = ()>,
) -> std::io::Result<()> {
    let (trigger, shutdown) = ShutdownTrigger::new();
    let server = ClientServer::new(node, server_options(config), shutdown);
    let mut tasks = Vec::new();
    for addr in &config.client_addrs {
        let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("ringkv: cannot listen on {addr} for clients: {e}"),
            )
        })?;
        tasks.push(tokio::spawn(
            server.clone().serve(listener, trigger.guard()),
        ));
    }
    stop.await;
    tracing::info!("shutting down: draining client connections");
    if !trigger.drain(DRAIN_TIMEOUT).await {
        tracing::warn!("client connections still open after {DRAIN_TIMEOUT:?}; dropping them");
    }
    for t in tasks {
        match t.await {
            Ok(r) => r?,
            Err(e) => return Err(std::io::Error::other(e)),
        }
    }
    Ok(())
}

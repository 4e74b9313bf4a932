//! ringkv's network layer: the etcd v3 gRPC services, the HTTP/JSON gateway and the peer
//! transport (`peer/`). The `ringkv` binary (src/main.rs) calls [`run`].
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
//! - `runtimes.rs` — the front end's thread-per-core runtimes (one current-thread tokio
//!   runtime per front-end core; connections handed out round-robin); `cpu_layout.rs` —
//!   `--cpu-layout`.

mod auth;
mod cluster;
mod config;
mod cpu_layout;
mod election;
mod errors;
mod frontend;
mod gateway;
mod h2fix;
mod h2server;
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
mod peer;
mod raft_backed;
mod recipe;
mod runtimes;
mod server;
mod shard;
mod shutdown;
mod tls;
mod validate;
mod watch;

use std::sync::Arc;
use std::time::Duration;

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
// peer transport counters on /metrics (cluster6)
pub use node::{NetworkMetrics, PeerMetrics};
pub use peer::{
    BackendCopy, MemberListFn, PeerConfig, PeerTransport, SnapshotFiles, query_cluster,
};
pub use raft_backed::{ClusterOptions, NodeOptions, OpenError, RaftBackedNode};
pub use server::{ClientServer, MAX_CONNECTIONS, ServerOptions};
pub use shutdown::{DRAIN_TIMEOUT, DrainGuard, Shutdown, ShutdownTrigger, signal};
pub use validate::Limits;
// tls: client and peer TLS
pub use tls::{PeerStream, Side, SideTls, TlsSpec};
// lat: --cpu-layout
pub use cpu_layout::{CpuLayout, restrict_current_thread};
// front: thread-per-core front end
pub use runtimes::{FrontRuntimes, Spawner};

/// Runs the node: parses the flags (and `RINGKV_*` environment), validates them, opens the
/// raft-backed node in the data directory, serves clients until SIGTERM/SIGINT, drains, then
/// stops raft and closes the backend and WAL.
pub fn run() -> Result<(), String> {
    let mut config = Flags::parse().resolve().map_err(|e| e.to_string())?;
    let ncpus = std::thread::available_parallelism().map_or(1, usize::from);
    let layout = CpuLayout::parse(&config.flags.cpu_layout, ncpus)?;
    let filter = tracing_subscriber::EnvFilter::try_from_env("RINGKV_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&config.flags.log_level));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
    // The main thread's runtime runs the accept loops, the signal handlers and the leader
    // wait; client connections run on the front-end runtimes (`runtimes.rs`).
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("ringkv: cannot start the runtime: {e}"))?;
    let front = FrontRuntimes::start(layout.workers(), layout.front.as_deref())
        .map_err(|e| format!("ringkv: cannot start the front-end runtimes: {e}"))?;
    // Certificates are read (or made, under auto-TLS) before anything else is opened: a bad
    // file stops the start with a message naming it.
    let client_tls = tls::load(&config.client_tls, &config.data_dir)?;
    let peer_tls = tls::load(&config.peer_tls, &config.data_dir)?;
    let mut existing_members = None;
    if config.flags.initial_cluster_state == ClusterState::Existing
        && !config.data_dir.join("member").join("wal").exists()
    {
        existing_members = Some(join_existing(&mut config, peer_tls.as_deref())?);
    }
    let mut opts = NodeOptions::from_config(&config);
    opts.cluster.peer_listen_tls = config.peer_listen_tls;
    opts.cluster.peer_tls = peer_tls;
    opts.cluster.forward_tls = client_tls.map(|t| t.client.clone());
    opts.threads = layout.threads.clone();
    opts.cluster.existing_members = existing_members;
    let node = RaftBackedNode::open(opts).map_err(|e| e.to_string())?;
    tracing::info!(
        member = format!("{:x}", config.member_id),
        cluster = format!("{:x}", config.cluster_id),
        data_dir = %config.data_dir.display(),
        "ringkv node opened"
    );
    let served = runtime.block_on(async {
        let removed = {
            let node = node.clone();
            async move {
                while !node.removed() {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                tracing::warn!("the member has been permanently removed from the cluster; exiting");
            }
        };
        // A removed member finds no leader (its peers refuse it): it learns of its removal
        // while waiting, and stops instead of serving.
        let mut removed = Box::pin(removed);
        tokio::select! {
            found = node.wait_leader(Duration::from_secs(60)) => {
                if !found {
                    tracing::warn!("no leader after 60 s; serving anyway");
                }
            }
            _ = &mut removed => return Ok::<(), std::io::Error>(()),
        }
        let stop = async move {
            tokio::select! {
                r = signal() => {
                    if let Err(e) = r {
                        tracing::error!("cannot install SIGTERM/SIGINT handlers: {e}");
                        std::future::pending::<()>().await;
                    }
                }
                _ = removed => {}
            }
        };
        serve_clients_on(&config, Arc::new(node.clone()), stop, Some(front.spawner())).await
    });
    // Snapshot streams run on the blocking pools; they end once their receivers are gone,
    // which dropping the tasks guarantees. Bounded all the same.
    front.shutdown();
    runtime.shutdown_timeout(Duration::from_secs(5));
    let closed = node.close();
    served.map_err(|e| e.to_string())?;
    closed.map_err(|e| format!("ringkv: stopped after a failure: {e}"))?;
    tracing::info!("ringkv stopped cleanly");
    Ok(())
}

/// A fresh member joining a running cluster (`--initial-cluster-state existing`) takes its
/// member ID (given by MemberAdd) and the cluster ID from the other members, found by its
/// peer URLs in their member list, as etcd does. Returns that member list (JSON).
fn join_existing(config: &mut Config, tls: Option<&SideTls>) -> Result<Vec<u8>, String> {
    let mut last = String::from("no other member in --initial-cluster");
    for m in &config.initial_members {
        if m.peer_urls == config.peer_urls {
            continue;
        }
        let (cluster_id, list) = match query_cluster(&m.peer_urls, tls) {
            Ok(r) => r,
            Err(e) => {
                last = format!("member {:?}: {e}", m.name);
                continue;
            }
        };
        let members: serde_json::Value = serde_json::from_slice(&list)
            .map_err(|e| format!("member {:?} sent a bad member list: {e}", m.name))?;
        let me = members.as_array().into_iter().flatten().find(|v| {
            let mut urls: Vec<String> = v["peerURLs"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|u| u.as_str().map(String::from))
                .collect();
            urls.sort();
            urls == config.peer_urls
        });
        let Some(id) = me.and_then(|v| v["id"].as_u64()) else {
            return Err(format!(
                "ringkv: cluster {cluster_id:x} has no member with peer URLs {:?}; add this \
                 member first (etcdctl member add)",
                config.peer_urls
            ));
        };
        tracing::info!(
            member = format!("{id:x}"),
            cluster = format!("{cluster_id:x}"),
            "joining an existing cluster"
        );
        config.member_id = id;
        config.cluster_id = cluster_id;
        return Ok(list);
    }
    Err(format!(
        "ringkv: cannot reach any member of the existing cluster ({last})"
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
        thin_kv: true,
        runtimes: None,
    }
}

/// Serves `node` to clients on every `--listen-client-urls` address (and `/metrics`, `/health`
/// on every `--listen-metrics-urls` address) until SIGTERM/SIGINT,
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
    serve_clients_on(config, node, stop, None).await
}

/// [`serve_clients_until`] with the client connections handed round-robin to `runtimes`
/// (the front-end runtimes) instead of spawned on the calling runtime.
pub async fn serve_clients_on<N: EtcdNode>(
    config: &Config,
    node: Arc<N>,
    stop: impl std::future::Future<Output = ()>,
    runtimes: Option<Spawner>,
) -> std::io::Result<()> {
    let (trigger, shutdown) = ShutdownTrigger::new();
    let mut options = server_options(config);
    options.runtimes = runtimes;
    let server = ClientServer::new(node, options, shutdown);
    let mut tasks = Vec::new();
    let client_tls = tls::load(&config.client_tls, &config.data_dir).map_err(|e| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("ringkv: {e}"))
    })?;
    for (i, addr) in config.client_addrs.iter().enumerate() {
        let tls = match config.client_addr_tls.get(i) {
            Some(true) => client_tls.as_ref().map(|t| t.server.clone()),
            _ => None,
        };
        let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("ringkv: cannot listen on {addr} for clients: {e}"),
            )
        })?;
        tasks.push(tokio::spawn(server.clone().serve_with(
            listener,
            trigger.guard(),
            tls,
        )));
    }
    for addr in &config.metrics_addrs {
        let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("ringkv: cannot listen on {addr} for metrics: {e}"),
            )
        })?;
        tasks.push(tokio::spawn(
            server.clone().serve_metrics(listener, trigger.guard()),
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

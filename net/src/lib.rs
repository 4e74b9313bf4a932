//! ringkv's network layer: the etcd v3 gRPC services, the HTTP/JSON gateway and the peer
//! transport. The `ringkv` binary (src/main.rs) parses flags and calls [`run`].

mod auth;
mod cluster;
mod config;
#[cfg(test)]
mod e2e_tests;
mod election;
mod gateway;
mod errors;
mod frontend;
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
#[cfg(test)]
mod test_node;
mod validate;
mod watch;

pub use config::{Config, ConfigError, Flags};
pub use errors::EtcdError;
pub use node::{
    BoxStream, Caller, EtcdNode, Histogram, NodeMetrics, NodeResult, NodeState, WatchSpec,
    WatchUpdate, Watcher,
};

/// Runs the node. The gRPC front end is not built yet (issue 5).
pub fn run() -> Result<(), String> {
    Err("ringkv: the node is not built yet; see issue 5 (the engine is in engine/)".to_string())
}

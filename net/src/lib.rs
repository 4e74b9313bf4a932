//! ringkv's network layer: the etcd v3 gRPC services, the HTTP/JSON gateway and the peer
//! transport. The `ringkv` binary (src/main.rs) parses flags and calls [`run`].

/// Runs the node. The gRPC front end is not built yet (issue 5).
pub fn run() -> Result<(), String> {
    Err("ringkv: the node is not built yet; see issue 5 (the engine is in engine/)".to_string())
}

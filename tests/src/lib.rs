//! ringkv's test harness: helpers shared by the system tests in `tests/tests/`.
//!
//! - `etcd`: runs a real etcd (Debian's `etcd-server`) on free loopback ports with a temp data
//!   dir, and talks to its HTTP/JSON gateway (spec §7).
//! - `json`: renders our protobuf messages as the gateway's JSON, so ringkv's and etcd's
//!   responses compare field by field.
//! - `ringkv`: runs the real `ringkv` binary (free ports, temp data dir, killed on drop), with
//!   `etcdctl` and HTTP/1.1 helpers.
//! - `cluster`: a cluster of real `ringkv` processes bootstrapped from `--initial-cluster`.
//! - `proxy`: a proxy in front of each member's peer port that can cut links (partitions).
//! - `tls`: a test PKI made with rcgen, members started with https URLs, curl.
//! - `mvcc_gen`: random etcd KV/lease operations and their execution against an `MvccStore`.

mod cluster;
mod etcd;
mod json;
mod mvcc_gen;
mod proxy;
mod ringkv;
mod tls;

pub use cluster::{CLUSTER_TIMING, RingkvCluster, TEST_CLUSTER_TOKEN};
pub use etcd::{EtcdProcess, HttpResponse, WatchStreamReader, free_port, http_post};
pub use json::{error_json, message_json, normalise_headers};
pub use mvcc_gen::{Op, OpGen, apply_to_store, catch_up_watches, op_request_json, txn_is_valid};
pub use proxy::{Partition, PeerProxy};
pub use ringkv::{
    NOT_APPLIED, RingkvProcess, TRANSIENT, etcdctl_at, etcdctl_retrying, http_get, ringkv_binary,
    ringkv_util_binary,
};
pub use tls::{TestPki, TlsMember, curl};

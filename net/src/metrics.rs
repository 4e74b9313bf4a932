//! `/metrics`: Prometheus text exposition with etcd's metric names (etcd-v3-spec.md §8, issue 5
//! list). gRPC counters are kept here, per method and code, pre-initialised to 0 for every
//! method and code like go-grpc-prometheus; node figures come from [`EtcdNode::metrics`].

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::node::{
    HISTOGRAM_BUCKETS, Histogram, NetworkMetrics, NodeMetrics, NodeState, PeerMetrics,
};

#[cfg(doc)]
use crate::node::EtcdNode;

/// etcd's server version string, reported by Status, `/version` and `/metrics`.
pub const SERVER_VERSION: &str = "3.4.23";
/// etcd's cluster version string for `/version`.
pub const CLUSTER_VERSION: &str = "3.4.0";

/// Every served method: (service, method, grpc_type).
pub const METHODS: &[(&str, &str, &str)] = &[
    ("etcdserverpb.KV", "Range", "unary"),
    ("etcdserverpb.KV", "Put", "unary"),
    ("etcdserverpb.KV", "DeleteRange", "unary"),
    ("etcdserverpb.KV", "Txn", "unary"),
    ("etcdserverpb.KV", "Compact", "unary"),
    ("etcdserverpb.Watch", "Watch", "bidi_stream"),
    ("etcdserverpb.Lease", "LeaseGrant", "unary"),
    ("etcdserverpb.Lease", "LeaseRevoke", "unary"),
    ("etcdserverpb.Lease", "LeaseKeepAlive", "bidi_stream"),
    ("etcdserverpb.Lease", "LeaseTimeToLive", "unary"),
    ("etcdserverpb.Lease", "LeaseLeases", "unary"),
    ("etcdserverpb.Cluster", "MemberAdd", "unary"),
    ("etcdserverpb.Cluster", "MemberRemove", "unary"),
    ("etcdserverpb.Cluster", "MemberUpdate", "unary"),
    ("etcdserverpb.Cluster", "MemberList", "unary"),
    ("etcdserverpb.Cluster", "MemberPromote", "unary"),
    ("etcdserverpb.Maintenance", "Alarm", "unary"),
    ("etcdserverpb.Maintenance", "Status", "unary"),
    ("etcdserverpb.Maintenance", "Defragment", "unary"),
    ("etcdserverpb.Maintenance", "Hash", "unary"),
    ("etcdserverpb.Maintenance", "HashKV", "unary"),
    ("etcdserverpb.Maintenance", "Snapshot", "server_stream"),
    ("etcdserverpb.Maintenance", "MoveLeader", "unary"),
    ("etcdserverpb.Auth", "AuthEnable", "unary"),
    ("etcdserverpb.Auth", "AuthDisable", "unary"),
    ("etcdserverpb.Auth", "AuthStatus", "unary"),
    ("etcdserverpb.Auth", "Authenticate", "unary"),
    ("etcdserverpb.Auth", "UserAdd", "unary"),
    ("etcdserverpb.Auth", "UserGet", "unary"),
    ("etcdserverpb.Auth", "UserList", "unary"),
    ("etcdserverpb.Auth", "UserDelete", "unary"),
    ("etcdserverpb.Auth", "UserChangePassword", "unary"),
    ("etcdserverpb.Auth", "UserGrantRole", "unary"),
    ("etcdserverpb.Auth", "UserRevokeRole", "unary"),
    ("etcdserverpb.Auth", "RoleAdd", "unary"),
    ("etcdserverpb.Auth", "RoleGet", "unary"),
    ("etcdserverpb.Auth", "RoleList", "unary"),
    ("etcdserverpb.Auth", "RoleDelete", "unary"),
    ("etcdserverpb.Auth", "RoleGrantPermission", "unary"),
    ("etcdserverpb.Auth", "RoleRevokePermission", "unary"),
    ("v3electionpb.Election", "Campaign", "unary"),
    ("v3electionpb.Election", "Proclaim", "unary"),
    ("v3electionpb.Election", "Leader", "unary"),
    ("v3electionpb.Election", "Observe", "server_stream"),
    ("v3electionpb.Election", "Resign", "unary"),
    ("v3lockpb.Lock", "Lock", "unary"),
    ("v3lockpb.Lock", "Unlock", "unary"),
    ("grpc.health.v1.Health", "Check", "unary"),
    ("grpc.health.v1.Health", "Watch", "server_stream"),
];

/// gRPC status code names as go-grpc-prometheus prints them, indexed by code number.
const CODE_NAMES: [&str; 17] = [
    "OK",
    "Canceled",
    "Unknown",
    "InvalidArgument",
    "DeadlineExceeded",
    "NotFound",
    "AlreadyExists",
    "PermissionDenied",
    "ResourceExhausted",
    "FailedPrecondition",
    "Aborted",
    "OutOfRange",
    "Unimplemented",
    "Internal",
    "Unavailable",
    "DataLoss",
    "Unauthenticated",
];

/// Per-method gRPC counters, lock-free, sharded by thread (`shard.rs`): shard `s` of method
/// `m` is entry `s * METHODS.len() + m`.
pub struct GrpcMetrics {
    index: HashMap<String, usize>,
    started: Vec<AtomicU64>,
    handled: Vec<[AtomicU64; 17]>,
    /// `/health` outcomes.
    pub health_success: AtomicU64,
    /// `/health` failures.
    pub health_failures: AtomicU64,
}

impl Default for GrpcMetrics {
    fn default() -> Self {
        let index = METHODS
            .iter()
            .enumerate()
            .map(|(i, (s, m, _))| (format!("/{s}/{m}"), i))
            .collect();
        let n = METHODS.len() * crate::shard::SHARDS;
        GrpcMetrics {
            index,
            started: (0..n).map(|_| AtomicU64::new(0)).collect(),
            handled: (0..n)
                .map(|_| std::array::from_fn(|_| AtomicU64::new(0)))
                .collect(),
            health_success: AtomicU64::new(0),
            health_failures: AtomicU64::new(0),
        }
    }
}

impl GrpcMetrics {
    /// Index of a gRPC path (`/etcdserverpb.KV/Range`), if it is a served method.
    pub fn method(&self, path: &str) -> Option<usize> {
        self.index.get(path).copied()
    }

    /// An RPC started.
    pub fn started(&self, m: usize) {
        self.started[Self::mine(m)].fetch_add(1, Relaxed);
    }

    /// An RPC finished with gRPC code `code`.
    pub fn handled(&self, m: usize, code: i32) {
        let c = usize::try_from(code).ok().filter(|c| *c < 17).unwrap_or(2);
        self.handled[Self::mine(m)][c].fetch_add(1, Relaxed);
    }

    /// The calling thread's entry of method `m`.
    fn mine(m: usize) -> usize {
        crate::shard::thread_shard() * METHODS.len() + m
    }

    /// The entries of method `m`, one per shard.
    fn shards_of(m: usize) -> impl Iterator<Item = usize> {
        (0..crate::shard::SHARDS).map(move |s| s * METHODS.len() + m)
    }

    /// Count of started RPCs of method `m`.
    pub fn started_count(&self, m: usize) -> u64 {
        Self::shards_of(m)
            .map(|i| self.started[i].load(Relaxed))
            .sum()
    }

    /// Count of handled RPCs of method `m` with code `code` (for tests and health).
    pub fn handled_count(&self, m: usize, code: usize) -> u64 {
        Self::shards_of(m)
            .map(|i| self.handled[i][code].load(Relaxed))
            .sum()
    }
}

/// Renders the whole exposition.
pub fn render(state: &NodeState, node: &NodeMetrics, grpc: &GrpcMetrics) -> String {
    let mut out = String::with_capacity(64 * 1024);
    let gauge = |out: &mut String, name: &str, help: &str, v: f64| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
    };
    let counter = |out: &mut String, name: &str, help: &str, v: u64| {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
        );
    };
    gauge(
        &mut out,
        "etcd_server_has_leader",
        "Whether or not a leader exists. 1 is existence, 0 is not.",
        f64::from(u8::from(state.leader != 0)),
    );
    gauge(
        &mut out,
        "etcd_server_is_leader",
        "Whether or not this member is a leader. 1 if is, 0 otherwise.",
        f64::from(u8::from(
            state.leader != 0 && state.leader == state.member_id,
        )),
    );
    gauge(
        &mut out,
        "etcd_server_is_learner",
        "Whether or not this member is a learner. 1 if is, 0 otherwise.",
        f64::from(u8::from(state.is_learner)),
    );
    counter(
        &mut out,
        "etcd_server_leader_changes_seen_total",
        "The number of leader changes seen.",
        node.leader_changes_seen,
    );
    gauge(
        &mut out,
        "etcd_server_proposals_committed_total",
        "The total number of consensus proposals committed.",
        node.proposals_committed as f64,
    );
    gauge(
        &mut out,
        "etcd_server_proposals_applied_total",
        "The total number of consensus proposals applied.",
        node.proposals_applied as f64,
    );
    gauge(
        &mut out,
        "etcd_server_proposals_pending",
        "The current number of pending proposals to commit.",
        node.proposals_pending as f64,
    );
    counter(
        &mut out,
        "etcd_server_proposals_failed_total",
        "The total number of failed proposals seen.",
        node.proposals_failed,
    );
    gauge(
        &mut out,
        "etcd_server_quota_backend_bytes",
        "Current backend storage quota size in bytes.",
        node.quota_backend_bytes as f64,
    );
    let _ = writeln!(
        out,
        "# HELP etcd_server_version Which version is running. 1 for 'server_version' label with current version.\n# TYPE etcd_server_version gauge\netcd_server_version{{server_version=\"{SERVER_VERSION}\"}} 1"
    );
    let _ = writeln!(
        out,
        "# HELP etcd_cluster_version Which version is running. 1 for 'cluster_version' label with current cluster version\n# TYPE etcd_cluster_version gauge\netcd_cluster_version{{cluster_version=\"3.4\"}} 1"
    );
    let _ = writeln!(
        out,
        "# HELP etcd_server_id Server or member ID in hexadecimal format. 1 for 'server_id' label with current ID.\n# TYPE etcd_server_id gauge\netcd_server_id{{server_id=\"{:x}\"}} 1",
        state.member_id
    );
    counter(
        &mut out,
        "etcd_server_health_success",
        "The total number of successful health checks",
        grpc.health_success.load(Relaxed),
    );
    counter(
        &mut out,
        "etcd_server_health_failures",
        "The total number of failed health checks",
        grpc.health_failures.load(Relaxed),
    );
    histogram(
        &mut out,
        "etcd_disk_wal_fsync_duration_seconds",
        "The latency distributions of fsync called by WAL.",
        &node.wal_fsync,
    );
    histogram(
        &mut out,
        "etcd_disk_backend_commit_duration_seconds",
        "The latency distributions of commit called by backend.",
        &node.backend_commit,
    );
    histogram(
        &mut out,
        "ringkv_proposal_commit_duration_seconds",
        "Time from proposing a request to the start of its apply (raft, WAL group commit, thread hand-offs).",
        &node.proposal_commit,
    );
    histogram(
        &mut out,
        "ringkv_proposal_apply_duration_seconds",
        "Time applying a proposed request until its outcome is sent to the proposer.",
        &node.proposal_apply,
    );
    histogram(
        &mut out,
        "ringkv_proposal_reply_duration_seconds",
        "Time from sending an applied request's outcome until the proposing task runs again.",
        &node.proposal_reply,
    );
    gauge(
        &mut out,
        "etcd_mvcc_db_total_size_in_bytes",
        "Total size of the underlying database physically allocated in bytes.",
        node.db_total_size as f64,
    );
    gauge(
        &mut out,
        "etcd_mvcc_db_total_size_in_use_in_bytes",
        "Total size of the underlying database logically in use in bytes.",
        node.db_total_size_in_use as f64,
    );
    gauge(
        &mut out,
        "etcd_debugging_mvcc_current_revision",
        "The current revision of store.",
        state.revision as f64,
    );
    network(&mut out, state.member_id, &node.network);

    let name = "grpc_server_started_total";
    let _ = writeln!(
        out,
        "# HELP {name} Total number of RPCs started on the server.\n# TYPE {name} counter"
    );
    for (i, (s, m, t)) in METHODS.iter().enumerate() {
        let _ = writeln!(
            out,
            "{name}{{grpc_method=\"{m}\",grpc_service=\"{s}\",grpc_type=\"{t}\"}} {}",
            grpc.started_count(i)
        );
    }
    let _ = writeln!(
        out,
        "# HELP grpc_server_handled_total Total number of RPCs completed on the server, regardless of success or failure.\n# TYPE grpc_server_handled_total counter"
    );
    for (i, (s, m, t)) in METHODS.iter().enumerate() {
        for (c, code) in CODE_NAMES.iter().enumerate() {
            let _ = writeln!(
                out,
                "grpc_server_handled_total{{grpc_code=\"{code}\",grpc_method=\"{m}\",grpc_service=\"{s}\",grpc_type=\"{t}\"}} {}",
                grpc.handled_count(i, c)
            );
        }
    }
    out
}

/// The peer transport's series: etcd's `etcd_network_*` names and labels (member IDs in hex)
/// where etcd has one, `ringkv_*` for what etcd does not export (dial backoff, vote requests).
fn network(out: &mut String, local: u64, n: &NetworkMetrics) {
    let series =
        |out: &mut String, name: &str, kind: &str, help: &str, rows: Vec<(String, f64)>| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (labels, v) in rows {
                let _ = writeln!(out, "{name}{{{labels}}} {v}");
            }
        };
    let per_peer = |label: &str, f: &dyn Fn(&PeerMetrics) -> f64| -> Vec<(String, f64)> {
        n.peers
            .iter()
            .map(|p| (format!("{label}=\"{:x}\"", p.id), f(p)))
            .collect()
    };
    let pair = |f: &dyn Fn(&PeerMetrics) -> f64| -> Vec<(String, f64)> {
        n.peers
            .iter()
            .map(|p| (format!("Local=\"{local:x}\",Remote=\"{:x}\"", p.id), f(p)))
            .collect()
    };
    series(
        out,
        "etcd_network_active_peers",
        "gauge",
        "The current number of active peer connections.",
        pair(&|p| f64::from(u8::from(p.connected))),
    );
    series(
        out,
        "etcd_network_disconnected_peers_total",
        "counter",
        "The total number of disconnected peers.",
        pair(&|p| p.disconnects as f64),
    );
    series(
        out,
        "ringkv_network_peer_dial_failures_total",
        "counter",
        "Failed dials (connect, TLS or hello) of a peer's message connection.",
        per_peer("To", &|p| p.dial_failures as f64),
    );
    series(
        out,
        "ringkv_network_peer_redial_backoff_seconds",
        "gauge",
        "Wait before the next dial of a peer that is down (20 ms doubling per failure, at most 1 s; 0 while connected).",
        per_peer("To", &|p| p.redial_backoff_seconds),
    );
    series(
        out,
        "etcd_network_snapshot_send_success",
        "counter",
        "Total number of successful snapshot sends",
        per_peer("To", &|p| p.snapshots_sent as f64),
    );
    series(
        out,
        "etcd_network_snapshot_send_failures",
        "counter",
        "Total number of snapshot send failures",
        per_peer("To", &|p| p.snapshot_send_failures as f64),
    );
    series(
        out,
        "etcd_network_snapshot_receive_success",
        "counter",
        "Total number of successful snapshot receives",
        per_peer("From", &|p| p.snapshots_received as f64),
    );
    series(
        out,
        "etcd_network_snapshot_receive_failures",
        "counter",
        "Total number of snapshot receive failures",
        per_peer("From", &|p| p.snapshot_receive_failures as f64),
    );
    series(
        out,
        "ringkv_raft_vote_requests_sent_total",
        "counter",
        "Raft vote requests sent to peers: type pre_vote (a pre-candidate, term unchanged) or vote (a candidate in a new term).",
        vec![
            (
                "type=\"pre_vote\"".to_string(),
                n.pre_vote_requests_sent as f64,
            ),
            ("type=\"vote\"".to_string(), n.vote_requests_sent as f64),
        ],
    );
}

fn histogram(out: &mut String, name: &str, help: &str, h: &Histogram) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
    let mut cumulative = 0;
    for k in 0..HISTOGRAM_BUCKETS {
        cumulative += h.buckets[k];
        let _ = writeln!(
            out,
            "{name}_bucket{{le=\"{}\"}} {cumulative}",
            Histogram::bound(k)
        );
    }
    cumulative += h.buckets[HISTOGRAM_BUCKETS];
    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
    let _ = writeln!(out, "{name}_sum {}", h.sum_seconds);
    let _ = writeln!(out, "{name}_count {}", h.count);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_has_the_issue_5_metrics() {
        let state = NodeState {
            member_id: 0x2e1259d415f2a040,
            leader: 0x2e1259d415f2a040,
            revision: 5,
            ..Default::default()
        };
        let mut node = NodeMetrics {
            proposals_committed: 12,
            db_total_size: 20480,
            ..Default::default()
        };
        node.wal_fsync.observe(0.0015);
        node.wal_fsync.observe(10.0);
        let grpc = GrpcMetrics::default();
        let m = grpc.method("/etcdserverpb.KV/Range").unwrap();
        grpc.started(m);
        grpc.handled(m, 0);

        let text = render(&state, &node, &grpc);
        for needle in [
            "etcd_server_has_leader 1\n",
            "etcd_server_is_leader 1\n",
            "etcd_server_leader_changes_seen_total 0\n",
            "etcd_server_proposals_committed_total 12\n",
            "etcd_server_proposals_applied_total 0\n",
            "etcd_server_proposals_pending 0\n",
            "etcd_server_proposals_failed_total 0\n",
            "etcd_disk_wal_fsync_duration_seconds_bucket{le=\"0.001\"} 0\n",
            "etcd_disk_wal_fsync_duration_seconds_bucket{le=\"0.002\"} 1\n",
            "etcd_disk_wal_fsync_duration_seconds_bucket{le=\"8.192\"} 1\n",
            "etcd_disk_wal_fsync_duration_seconds_bucket{le=\"+Inf\"} 2\n",
            "etcd_disk_wal_fsync_duration_seconds_count 2\n",
            "etcd_disk_backend_commit_duration_seconds_count 0\n",
            "ringkv_proposal_commit_duration_seconds_count 0\n",
            "ringkv_proposal_apply_duration_seconds_count 0\n",
            "ringkv_proposal_reply_duration_seconds_count 0\n",
            "etcd_mvcc_db_total_size_in_bytes 20480\n",
            "etcd_mvcc_db_total_size_in_use_in_bytes 0\n",
            "etcd_server_id{server_id=\"2e1259d415f2a040\"} 1\n",
            "grpc_server_started_total{grpc_method=\"Range\",grpc_service=\"etcdserverpb.KV\",grpc_type=\"unary\"} 1\n",
            "grpc_server_handled_total{grpc_code=\"OK\",grpc_method=\"Range\",grpc_service=\"etcdserverpb.KV\",grpc_type=\"unary\"} 1\n",
            "grpc_server_handled_total{grpc_code=\"Unavailable\",grpc_method=\"Watch\",grpc_service=\"etcdserverpb.Watch\",grpc_type=\"bidi_stream\"} 0\n",
        ] {
            assert!(text.contains(needle), "missing {needle:?}");
        }
    }

    #[test]
    fn network_series_carry_etcd_labels_per_peer() {
        let state = NodeState {
            member_id: 0xa1,
            ..Default::default()
        };
        let node = NodeMetrics {
            network: NetworkMetrics {
                peers: vec![
                    PeerMetrics {
                        id: 0xb2,
                        connected: true,
                        snapshots_received: 2,
                        ..Default::default()
                    },
                    PeerMetrics {
                        id: 0xc3,
                        dial_failures: 7,
                        redial_backoff_seconds: 1.0,
                        snapshots_sent: 1,
                        ..Default::default()
                    },
                ],
                pre_vote_requests_sent: 4,
                vote_requests_sent: 1,
            },
            ..Default::default()
        };
        let text = render(&state, &node, &GrpcMetrics::default());
        for needle in [
            "etcd_network_active_peers{Local=\"a1\",Remote=\"b2\"} 1\n",
            "etcd_network_active_peers{Local=\"a1\",Remote=\"c3\"} 0\n",
            "ringkv_network_peer_dial_failures_total{To=\"c3\"} 7\n",
            "ringkv_network_peer_redial_backoff_seconds{To=\"c3\"} 1\n",
            "etcd_network_snapshot_send_success{To=\"c3\"} 1\n",
            "etcd_network_snapshot_receive_success{From=\"b2\"} 2\n",
            "ringkv_raft_vote_requests_sent_total{type=\"pre_vote\"} 4\n",
            "ringkv_raft_vote_requests_sent_total{type=\"vote\"} 1\n",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
        }
    }

    #[test]
    fn grpc_counts_from_many_threads_add_up() {
        let grpc = GrpcMetrics::default();
        let m = grpc.method("/etcdserverpb.KV/Put").unwrap();
        std::thread::scope(|s| {
            for _ in 0..2 * crate::shard::SHARDS {
                s.spawn(|| {
                    grpc.started(m);
                    grpc.handled(m, 0);
                    grpc.handled(m, 14);
                });
            }
        });
        let n = 2 * crate::shard::SHARDS as u64;
        assert_eq!(grpc.started_count(m), n);
        assert_eq!(grpc.handled_count(m, 0), n);
        assert_eq!(grpc.handled_count(m, 14), n);
        assert_eq!(grpc.handled_count(m, 2), 0);
        let text = render(&NodeState::default(), &NodeMetrics::default(), &grpc);
        let line = format!(
            "grpc_server_started_total{{grpc_method=\"Put\",grpc_service=\"etcdserverpb.KV\",grpc_type=\"unary\"}} {n}\n"
        );
        assert!(text.contains(&line), "{text}");
    }
}

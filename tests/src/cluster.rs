//! A cluster of real `ringkv` processes on loopback ports, bootstrapped like an etcd cluster
//! (`--initial-cluster`, state `new`, a token), with etcd's default raft timing ([`CLUSTER_TIMING`]).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::Value;

use std::sync::Arc;

use crate::etcd::free_port;
use crate::proxy::{Partition, PeerProxy};
use crate::ringkv::{RingkvProcess, etcdctl_at};

/// `--initial-cluster-token` of test clusters.
pub const TEST_CLUSTER_TOKEN: &str = "ringkv-test-cluster";

/// Raft timing of test cluster members unless a test sets its own: etcd's defaults (100 ms
/// heartbeats, 1 s election timeout). With check-quorum a leader steps down when it hears from
/// no quorum for an election timeout; on 2 vCPUs shared with compiles and benchmarks a member
/// is often descheduled for more than the 100 ms a single member's tests use, and spurious
/// elections would turn writes into "leader changed" errors at random.
pub const CLUSTER_TIMING: [&str; 4] = ["--heartbeat-interval", "100", "--election-timeout", "1000"];

/// A running cluster; members are killed on drop, the data dirs removed.
pub struct RingkvCluster {
    pub members: Vec<RingkvProcess>,
    pub names: Vec<String>,
    /// Peer proxies, one per member, when started with [`RingkvCluster::start_proxied`].
    pub proxies: Vec<PeerProxy>,
    /// The links the proxies cut (empty without proxies).
    pub partition: Arc<Partition>,
    _tmp: tempfile::TempDir,
}

impl RingkvCluster {
    /// Starts `n` members and waits until every one is healthy.
    pub fn start(n: usize) -> RingkvCluster {
        RingkvCluster::start_with(n, &[], &[])
    }

    /// [`RingkvCluster::start`] with extra flags and environment variables for every member.
    pub fn start_with(n: usize, flags: &[&str], env: &[(&str, &str)]) -> RingkvCluster {
        RingkvCluster::start_inner(n, flags, env, false)
    }

    /// [`RingkvCluster::start_with`] with every member's peer traffic through a proxy
    /// (`proxy.rs`): each member advertises its proxy's port; `partition` cuts links.
    pub fn start_proxied(n: usize, flags: &[&str], env: &[(&str, &str)]) -> RingkvCluster {
        RingkvCluster::start_inner(n, flags, env, true)
    }

    fn start_inner(n: usize, flags: &[&str], env: &[(&str, &str)], proxied: bool) -> RingkvCluster {
        let tmp = tempfile::Builder::new()
            .prefix("ringkv-cluster-")
            .tempdir()
            .expect("temp dir");
        let ports: Vec<(u16, u16)> = (0..n).map(|_| (free_port(), free_port())).collect();
        let partition = Arc::new(Partition::default());
        let proxies: Vec<PeerProxy> = if proxied {
            ports
                .iter()
                .map(|(_, peer)| {
                    PeerProxy::start(free_port(), *peer, partition.clone()).expect("peer proxy")
                })
                .collect()
        } else {
            Vec::new()
        };
        // The peer port each member advertises: its proxy's, if any.
        let advertised: Vec<u16> = (0..n)
            .map(|i| proxies.get(i).map_or(ports[i].1, |p| p.listen_port))
            .collect();
        let names: Vec<String> = (0..n).map(|i| format!("m{i}")).collect();
        let custom_timing = flags
            .iter()
            .any(|a| a.starts_with("--heartbeat-interval") || a.starts_with("--election-timeout"));
        let timing: &[&str] = if custom_timing { &[] } else { &CLUSTER_TIMING };
        let initial = names
            .iter()
            .zip(&advertised)
            .map(|(name, peer)| format!("{name}=http://127.0.0.1:{peer}"))
            .collect::<Vec<_>>()
            .join(",");
        let members: Vec<RingkvProcess> = names
            .iter()
            .zip(ports.iter().zip(&advertised))
            .map(|(name, ((client, peer), advertised))| {
                let extra: Vec<String> = [
                    "--name",
                    name,
                    "--initial-cluster",
                    &initial,
                    "--initial-cluster-state",
                    "new",
                    "--initial-cluster-token",
                    TEST_CLUSTER_TOKEN,
                ]
                .iter()
                .chain(timing)
                .chain(flags)
                .map(|s| s.to_string())
                .collect();
                let dir = data_dir(&tmp, name);
                if proxied {
                    RingkvProcess::launch_proxied(&dir, *client, *peer, *advertised, &extra, env)
                } else {
                    RingkvProcess::launch_env(&dir, *client, *peer, &extra, env)
                }
            })
            .collect();
        let mut c = RingkvCluster {
            members,
            names,
            proxies,
            partition,
            _tmp: tmp,
        };
        c.wait_ready();
        c
    }

    /// Waits until every running member is healthy.
    pub fn wait_ready(&mut self) {
        for m in &mut self.members {
            if m.running() {
                m.wait_ready();
            }
        }
    }

    /// Client endpoints of all members, comma-separated (etcdctl `--endpoints`).
    pub fn endpoints(&self) -> String {
        self.members
            .iter()
            .map(RingkvProcess::endpoint)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// `etcdctl endpoint status -w json` of member `i`: (member ID, leader ID, raft term).
    pub fn status(&self, i: usize) -> Option<(u64, u64, u64)> {
        let out = etcdctl_at(
            &self.members[i].endpoint(),
            &["endpoint", "status", "-w", "json"],
            None,
        );
        if !out.status.success() {
            return None;
        }
        let v: Value = serde_json::from_slice(&out.stdout).ok()?;
        let s = &v[0]["Status"];
        Some((
            s["header"]["member_id"].as_u64()?,
            // etcdctl leaves out a zero leader (no leader right now).
            s["leader"].as_u64().unwrap_or(0),
            s["raftTerm"].as_u64()?,
        ))
    }

    /// Index of the member every running member names as leader; waits up to 30 s.
    pub fn leader(&mut self) -> usize {
        let start = Instant::now();
        loop {
            let mut ids = Vec::new();
            let mut leaders = Vec::new();
            for i in 0..self.members.len() {
                if !self.members[i].running() {
                    ids.push(None);
                    continue;
                }
                let s = self.status(i);
                ids.push(s.map(|s| s.0));
                leaders.push(s.map(|s| s.1));
            }
            if let Some(Some(l)) = leaders.first()
                && *l != 0
                && leaders.iter().all(|x| *x == Some(*l))
                && let Some(i) = ids.iter().position(|id| *id == Some(*l))
            {
                return i;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "no agreed leader within 30 s: {leaders:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn data_dir(tmp: &tempfile::TempDir, name: &str) -> PathBuf {
    tmp.path().join(name).join("data")
}

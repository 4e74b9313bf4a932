//! System tests of ringkv clusters: three real `ringkv` processes on loopback ports,
//! bootstrapped from `--initial-cluster`, driven by etcdctl 3.4 (spec §4.10, §6; issue 6).

mod basics;
mod failover;
mod force_new_cluster;
mod leases;
mod membership;
mod partition;
mod snapshot_transfer;
mod tls;

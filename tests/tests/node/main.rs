//! System tests of the `ringkv` binary: real processes on loopback ports, driven by etcdctl
//! 3.4 (Debian `etcd-client`), raw HTTP/1.1 and a real etcd 3.4 for differential checks.
//! Fails (never skips) when `etcdctl` or `etcd` is missing: tests/run.sh installs both.

mod bad_input;
mod etcdctl;
mod gateway;
mod restart;
mod rust_client;
mod snapshot;
mod tls;
mod wal_lock;
mod watch_scale;

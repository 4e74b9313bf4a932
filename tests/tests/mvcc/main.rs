//! MVCC system tests: differential against real etcd, model-based, and watch guarantees under
//! concurrent writes.

mod etcd_diff;
mod etcd_diff_grpc;
mod model;
mod real_backend;
mod watch_concurrent;

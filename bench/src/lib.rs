//! ringkv-bench: load generator for any etcd-compatible endpoint (etcd `benchmark`'s
//! subcommands and flags), side-by-side comparison of etcd and ringkv, and the disk / WAL
//! profiler.
//!
//! The binary (`src/main.rs`) only parses the command line and calls [`run`]. Modules are
//! private; the list below is the crate's API, used by the binary and the tests.

mod cli;
mod compare;
mod cpu;
mod disk;
mod engine_btree;
mod hist;
mod load;
mod report;
mod run;
mod server;

pub use cli::{Cli, Command, Consistency, DiskCommand, EngineCommand, parse_duration, parse_size};
pub use cpu::{CpuMeter, CpuUsed, peak_rss_bytes, process_cpu, self_cpu};
pub use disk::{
    Engine, FsyncOpts, WalOpts, run_fsync, run_wal, run_wal_interleaved, write_heatmap_svg,
};
pub use engine_btree::{BtreeOptions, LoadOrder, PhaseResult, run as run_engine_btree};
pub use hist::Recorder;
pub use load::{EtcdClient, Plan, WatchPlan, make_key};
pub use report::{DiskReport, LoadReport, Table, disk_table};
pub use run::run;
pub use server::{Cluster, Member, start_cluster, start_cluster_with_args};

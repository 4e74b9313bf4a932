//! Integration tests of the `ringkv-bench` binary: every network subcommand against a real
//! etcd and against a real ringkv node built from this workspace (each started per test on free
//! 127.0.0.1 ports, killed on drop), and the disk profiler on a temporary directory. Each checks
//! the JSON output: errors = 0 and the counts the command line implies, plus what the server
//! stored where the workload determines it.

mod disk;
mod network;
mod tls;
mod util;

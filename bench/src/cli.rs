//! Command-line interface. Subcommand and flag names follow etcd's `benchmark` tool
//! (tools/benchmark in etcd-io/etcd) so scripts carry over; additions are `mixed`,
//! `--duration`, `--json`, `--server-pid`, `compare` and `disk`.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "ringkv-bench",
    version,
    about = "Benchmark any etcd-compatible endpoint, compare etcd with ringkv, and profile the disk/WAL"
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

/// Flags every network workload shares (etcd benchmark's global flags, plus ours).
#[derive(Debug, Clone, Args)]
pub struct Global {
    /// gRPC endpoints, comma separated (host:port or http://host:port).
    #[arg(
        long,
        global = true,
        value_delimiter = ',',
        default_value = "127.0.0.1:2379"
    )]
    pub endpoints: Vec<String>,
    /// Total number of gRPC connections (HTTP/2 channels).
    #[arg(long, global = true, default_value_t = 1)]
    pub conns: u32,
    /// Total number of concurrent clients (requests in flight), spread over the connections.
    #[arg(long, global = true, default_value_t = 1)]
    pub clients: u32,
    /// Send all requests to the leader (looks it up through Maintenance.Status).
    #[arg(long, global = true)]
    pub target_leader: bool,
    /// Send all requests to members that are not the leader (Maintenance.Status of each).
    /// In `compare` it applies to the range workloads only (puts still go to the leader with
    /// --target-leader).
    #[arg(long, global = true, conflicts_with = "target_leader")]
    pub target_followers: bool,
    /// Run for this long instead of a --total count (e.g. 10s, 500ms, 2m).
    #[arg(long, global = true, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Print one JSON object (per result) instead of the text summary.
    #[arg(long, global = true)]
    pub json: bool,
    /// Also report a per-second series.
    #[arg(long, global = true)]
    pub sample: bool,
    /// Measure this process's CPU (/proc/<pid>/stat) and peak RSS as the server's.
    #[arg(long, global = true)]
    pub server_pid: Option<u32>,
    /// Timeout for establishing a connection.
    #[arg(long, global = true, value_parser = parse_duration, default_value = "2s")]
    pub dial_timeout: Duration,
    /// Trusted CA bundle (PEM) for TLS; any TLS flag turns TLS on for endpoints without a
    /// scheme. Without it, https:// endpoints are checked against the system bundle.
    #[arg(long, global = true)]
    pub cacert: Option<PathBuf>,
    /// Client certificate (PEM), for servers that require client certificates.
    #[arg(long, global = true)]
    pub cert: Option<PathBuf>,
    /// Client key (PEM) of --cert.
    #[arg(long = "key", global = true)]
    pub key_file: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Benchmark Put.
    Put(PutArgs),
    /// Benchmark Range over KEY or [KEY, END).
    Range(RangeArgs),
    /// Benchmark Txn with --txn-ops puts per transaction.
    TxnPut(TxnPutArgs),
    /// A read/write mix: ranges with probability --read-ratio, puts otherwise.
    Mixed(MixedArgs),
    /// Benchmark watch: open many watchers, then put keys they watch and count notifications.
    Watch(WatchArgs),
    /// Latency from a put's response to the watch event it causes.
    WatchLatency(WatchLatencyArgs),
    /// Benchmark LeaseKeepAlive round trips.
    LeaseKeepalive(LeaseKeepaliveArgs),
    /// Start etcd and ringkv side by side, run workloads on both, write a Markdown + SVG report.
    Compare(CompareArgs),
    /// Disk profiler: raw fdatasync loop and WAL group commit.
    #[command(subcommand)]
    Disk(DiskCommand),
    /// Storage engine micro-benchmarks, in-process.
    #[command(subcommand)]
    Engine(EngineCommand),
}

#[derive(Debug, Subcommand)]
pub enum EngineCommand {
    /// ringkv's B+tree backend, side by side with LMDB (heed) and redb with --compare: bulk load,
    /// point gets (1 and 2 threads), 10-key range scans, durable commits of 1 and 1,000 keys,
    /// and sequential revision-key appends.
    Btree(BtreeArgs),
}

#[derive(Debug, Clone, Args)]
pub struct BtreeArgs {
    /// Keys in the bulk load (24-byte keys, 150-byte values).
    #[arg(long, default_value_t = 1_000_000)]
    pub keys: usize,
    /// Also run LMDB and redb in the same run.
    #[arg(long)]
    pub compare: bool,
    /// Directory on the device to measure (a temporary subdirectory is used and removed).
    #[arg(long, default_value = ".")]
    pub dir: PathBuf,
    /// Run only these phases (comma-separated names, e.g. `commit-1,commit-1000`); the bulk
    /// load always runs (the other phases need its keys) but is reported only if listed.
    #[arg(long, value_delimiter = ',')]
    pub phases: Vec<String>,
    /// Order of the bulk load's puts, the same for every engine: `random` (as generated) or
    /// `sorted` (ascending keys). It decides how full each engine leaves its pages.
    #[arg(long, value_enum, default_value_t = crate::engine_btree::LoadOrder::Random)]
    pub load_order: crate::engine_btree::LoadOrder,
    /// Run the durable commit phases of all engines interleaved, in ten slices each, the
    /// engines' order rotating per slice, so that a minute of a busy shared disk weighs on every
    /// engine alike (the reported figure of each engine is the sum over its slices).
    #[arg(long)]
    pub interleave: bool,
    /// Also run ringkv with early page writes on, as engine `ringkv-early` (the A/B of
    /// `BackendOptions::early_writes` in one run; best with `--interleave`).
    #[arg(long)]
    pub early_too: bool,
    /// Commits of 10,000 revision keys in the `revision-append` phase (default: keys / 100,000,
    /// 1 to 100): more commits give a steadier per-key figure without a larger bulk load.
    #[arg(long)]
    pub append_commits: Option<usize>,
    /// Also run ringkv with the delta log on, as engine `ringkv-delta` (the A/B of
    /// `BackendOptions::delta_log` in one run).
    #[arg(long)]
    pub delta_too: bool,
    /// With --delta-too: commits of 1,000 random updates `ringkv-delta` makes, untimed, right
    /// after its bulk load, so that its gets probe a full delta log and its commit-1000 runs in
    /// the log's steady state (320 fills the default bound of 320,000 entries).
    #[arg(long, default_value_t = 0)]
    pub delta_warm: usize,
}

/// How many operations a run does: a count, or (with global --duration) a time.
#[derive(Debug, Clone, Args)]
pub struct TotalArgs {
    /// Total number of requests (ignored with --duration).
    #[arg(long, default_value_t = 10000)]
    pub total: u64,
    /// Requests per second in total, 0 = as fast as possible (closed loop). With a rate, each
    /// request has an intended start time and its latency is measured from it (open loop, no
    /// coordinated omission).
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
}

#[derive(Debug, Clone, Args)]
pub struct KeyArgs {
    /// Key size in bytes.
    #[arg(long, default_value_t = 8)]
    pub key_size: usize,
    /// Value size in bytes.
    #[arg(long, default_value_t = 8)]
    pub val_size: usize,
    /// Number of distinct keys written.
    #[arg(long, default_value_t = 1)]
    pub key_space_size: u64,
    /// Write keys in order 0, 1, 2, … instead of at random within the key space.
    #[arg(long)]
    pub sequential_keys: bool,
}

#[derive(Debug, Clone, Args)]
pub struct PutArgs {
    #[command(flatten)]
    pub total: TotalArgs,
    #[command(flatten)]
    pub keys: KeyArgs,
    /// Compact the keyspace every this long (0 = never), keeping --compact-index-delta revisions.
    #[arg(long, value_parser = parse_duration, default_value = "0s")]
    pub compact_interval: Duration,
    /// Revisions kept behind the current one when compacting.
    #[arg(long, default_value_t = 1000)]
    pub compact_index_delta: i64,
}

#[derive(Debug, Clone, Args)]
pub struct RangeArgs {
    /// The key (or start of the range).
    pub key: String,
    /// End of the range (exclusive).
    pub end: Option<String>,
    #[command(flatten)]
    pub total: TotalArgs,
    /// l (linearizable) or s (serializable).
    #[arg(long, default_value = "l", value_parser = parse_consistency)]
    pub consistency: Consistency,
    /// Maximum number of keys returned per request (0 = no limit).
    #[arg(long, default_value_t = 0)]
    pub limit: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Consistency {
    Linearizable,
    Serializable,
}

#[derive(Debug, Clone, Args)]
pub struct TxnPutArgs {
    #[command(flatten)]
    pub total: TotalArgs,
    #[command(flatten)]
    pub keys: KeyArgs,
    /// Puts per transaction.
    #[arg(long, default_value_t = 1)]
    pub txn_ops: u32,
}

#[derive(Debug, Clone, Args)]
pub struct MixedArgs {
    #[command(flatten)]
    pub total: TotalArgs,
    #[command(flatten)]
    pub keys: KeyArgs,
    /// Fraction of operations that are ranges (reads of one key of the key space).
    #[arg(long, default_value_t = 0.95)]
    pub read_ratio: f64,
    /// Consistency of the reads: l or s.
    #[arg(long, default_value = "l", value_parser = parse_consistency)]
    pub consistency: Consistency,
}

#[derive(Debug, Clone, Args)]
pub struct WatchArgs {
    /// Number of watch streams (spread over the connections).
    #[arg(long, default_value_t = 10)]
    pub streams: u32,
    /// Watchers per stream.
    #[arg(long, default_value_t = 10)]
    pub watch_per_stream: u32,
    /// Distinct keys watched (watchers are spread over them).
    #[arg(long, default_value_t = 1)]
    pub watched_key_total: u32,
    /// Puts to the watched keys once every watcher is created.
    #[arg(long, default_value_t = 1000)]
    pub put_total: u64,
    /// Put rate (0 = as fast as possible).
    #[arg(long, default_value_t = 0.0)]
    pub put_rate: f64,
    #[arg(long, default_value_t = 32)]
    pub key_size: usize,
    #[arg(long, default_value_t = 8)]
    pub val_size: usize,
}

#[derive(Debug, Clone, Args)]
pub struct WatchLatencyArgs {
    /// Puts to the watched key.
    #[arg(long, default_value_t = 1000)]
    pub put_total: u64,
    /// Put rate per second (0 = one put at a time, as fast as possible).
    #[arg(long, default_value_t = 100.0)]
    pub put_rate: f64,
    #[arg(long, default_value_t = 10)]
    pub streams: u32,
    #[arg(long, default_value_t = 10)]
    pub watchers_per_stream: u32,
    /// Ask for the previous key-value in each event.
    #[arg(long)]
    pub prevkv: bool,
    #[arg(long, default_value_t = 32)]
    pub key_size: usize,
    #[arg(long, default_value_t = 8)]
    pub val_size: usize,
}

#[derive(Debug, Clone, Args)]
pub struct LeaseKeepaliveArgs {
    #[command(flatten)]
    pub total: TotalArgs,
}

#[derive(Debug, Clone, Args)]
pub struct CompareArgs {
    /// The etcd binary to run.
    #[arg(long)]
    pub etcd_bin: PathBuf,
    /// The ringkv binary to run (without it, only etcd is measured).
    #[arg(long)]
    pub ringkv_bin: Option<PathBuf>,
    /// Name of the --etcd-bin system in the report.
    #[arg(long, default_value = "etcd")]
    pub etcd_label: String,
    /// Name of the --ringkv-bin system in the report (e.g. to compare two etcd versions).
    #[arg(long, default_value = "ringkv")]
    pub ringkv_label: String,
    /// Cluster size: 1 or 3 members (3 runs every member on this machine).
    #[arg(long, default_value_t = 1)]
    pub members: u32,
    /// Comma-separated workloads: put-1, put-1000, range-l-1000, range-s-1000, txn-put,
    /// mixed-95 (default: all).
    #[arg(long, value_delimiter = ',')]
    pub workloads: Vec<String>,
    /// Runs of each workload on each system (alternating); medians are reported.
    #[arg(long, default_value_t = 3)]
    pub repeat: u32,
    /// Seconds per run.
    #[arg(long, default_value_t = 5.0)]
    pub run_seconds: f64,
    /// Report directory (report.md and SVG plots).
    #[arg(long, default_value = "bench/reports/latest")]
    pub out: PathBuf,
}

#[derive(Debug, Subcommand)]
pub enum DiskCommand {
    /// O_DIRECT write + fdatasync loop into a pre-zeroed file at each --sizes.
    Fsync(FsyncArgs),
    /// N concurrent appenders, each appending and waiting for durability, in a loop.
    Wal(WalArgs),
}

#[derive(Debug, Clone, Args)]
pub struct DiskCommon {
    /// Directory on the device to measure (a temporary subdirectory is used and removed).
    #[arg(long, default_value = ".")]
    pub dir: PathBuf,
    /// I/O implementation of the engine's I/O seam: uring or std.
    #[arg(long, default_value = "uring")]
    pub io: String,
}

#[derive(Debug, Clone, Args)]
pub struct FsyncArgs {
    #[command(flatten)]
    pub common: DiskCommon,
    /// Write sizes, comma separated (suffixes K, M; rounded up to 4 KiB).
    #[arg(long, value_delimiter = ',', value_parser = parse_size, default_value = "4K,64K,256K,1M")]
    pub sizes: Vec<u64>,
    /// Seconds per size.
    #[arg(long, default_value_t = 3.0)]
    pub seconds: f64,
    /// Size of the pre-zeroed file that the writes wrap around in.
    #[arg(long, value_parser = parse_size, default_value = "64M")]
    pub file_size: u64,
    /// Loops run at once, each on its own file; latencies are merged (3: a 3-member cluster's
    /// syncs on one disk).
    #[arg(long, default_value_t = 1)]
    pub parallel: usize,
}

#[derive(Debug, Clone, Args)]
pub struct WalArgs {
    #[command(flatten)]
    pub common: DiskCommon,
    /// Concurrent appenders.
    #[arg(long, default_value_t = 1)]
    pub writers: u32,
    /// Payload bytes per record (suffixes K, M).
    #[arg(long, value_parser = parse_size, default_value = "256")]
    pub record_size: u64,
    /// Seconds per engine (per cell with --sweep).
    #[arg(long, default_value_t = 5.0)]
    pub seconds: f64,
    /// ringkv WAL option `idle_spin` in µs: a waiting appender polls for its outcome this long
    /// before it sleeps (trades CPU for the wake-up latency of appenders that wait behind a
    /// flush).
    #[arg(long, default_value_t = 0)]
    pub wal_idle_spin_us: u64,
    /// ringkv WAL option `zero_fill_below` in KiB: new segments are zero-filled only while the
    /// average flush is below this size (default: the WAL's default, always; `max` = always
    /// zero-fill, 0 = never).
    #[arg(long)]
    pub wal_zero_fill_below_kib: Option<String>,
    /// How ringkv's appenders wait: `threads` (one OS thread per writer, blocking; every engine
    /// runs this way, and it is the mode compared with raft-engine, whose API is synchronous)
    /// or `tasks` (--writers async tasks on one thread awaiting callback appends, as an async
    /// front end would; ringkv only, reported as engine `ringkv-tasks`).
    #[arg(long, default_value = "threads")]
    pub appenders: String,
    /// With several engines: split --seconds into this many slices per engine, run in turn
    /// (A, B, C, A, B, C, …) so that noise hits every engine alike. Caveat: an engine's
    /// background work (ringkv's segment pre-zeroing) then runs during the others' slices,
    /// which flatters it and penalises them when segments fill within a slice; 1 (default)
    /// runs each engine once, in order. With more than one, each round's ops/s per engine and
    /// the medians over rounds (ops/s, ratio to the first engine) go to stderr.
    #[arg(long, default_value_t = 1)]
    pub rounds: u32,
    /// Unmeasured seconds of appending before each engine's first measured period.
    #[arg(long, default_value_t = 1.0)]
    pub warmup: f64,
    /// Also run raft-engine and the raw loop, in the same run.
    #[arg(long)]
    pub compare: bool,
    /// Engines to run, comma separated: ringkv, raft-engine, raw (overrides --compare).
    /// `ringkv-tasks` is ringkv with async appenders (see --appenders), e.g.
    /// `ringkv,ringkv-tasks,raft-engine,raw` with `--rounds` to A/B the modes in one process;
    /// `ringkv-tasks-batch` hands a flush's outcomes to the tasks' thread in one message (one
    /// wake-up per flush) instead of completing each task from its own callback.
    /// `ringkv-wake-first` is ringkv with `wake_before_next: true` (the leader wakes every waiter
    /// of a flushed batch itself before it takes the next batch). `ringkv-overlap` is ringkv with
    /// `wake_gather: false` (the next batch is taken as an fdatasync returns; the default,
    /// named). `ringkv-relay` is `ringkv-overlap` with
    /// `relay_wake: true` (the batch's first parked waiter, not the leader, stores a flushed
    /// batch's outcomes and starts its wake-ups). `ringkv-gather` is ringkv with
    /// `wake_gather: true` (the leader wakes a flushed batch's parked
    /// waiters as a tree and waits until they all ran before it takes the next batch).
    /// `ringkv-one` is `ringkv-overlap` with `wake_one: true` (the leader unparks one
    /// waiter of a flushed batch). `handoff` (no I/O) and `handoff-sync` (one 4 KiB
    /// write+fdatasync per batch) are floors, not logs: blocked writers handed off in batches
    /// by one flusher thread.
    #[arg(long, value_delimiter = ',')]
    pub engines: Vec<String>,
    /// Every writer count × record size of --sweep-writers/--sweep-sizes (default writers
    /// 1,2,4,…,256 × sizes 64 B…64 KiB); a table and an SVG heat map.
    #[arg(long)]
    pub sweep: bool,
    /// Writer counts of --sweep.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "1,2,4,8,16,32,64,128,256"
    )]
    pub sweep_writers: Vec<u32>,
    /// Record sizes of --sweep.
    #[arg(long, value_delimiter = ',', value_parser = parse_size, default_value = "64,256,1K,4K,16K,64K")]
    pub sweep_sizes: Vec<u64>,
    /// Where --sweep writes its heat map.
    #[arg(long, default_value = "wal-sweep.svg")]
    pub svg: PathBuf,
}

/// `10s`, `500ms`, `2m`, `1.5s`, `100us`; a bare number is seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let v: f64 = num
        .parse()
        .map_err(|_| format!("invalid duration {s:?}: expected e.g. 10s, 500ms, 2m"))?;
    let secs = match unit {
        "" | "s" => v,
        "ms" => v / 1e3,
        "us" | "µs" => v / 1e6,
        "m" => v * 60.0,
        "h" => v * 3600.0,
        _ => return Err(format!("invalid duration unit {unit:?} in {s:?}")),
    };
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!("invalid duration {s:?}"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// `4096`, `4K`, `64KiB`, `1M`, `2G` (binary units).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("invalid size {s:?}: expected e.g. 256, 4K, 1M"))?;
    let mul: u64 = match unit.to_ascii_uppercase().as_str() {
        "" | "B" => 1,
        "K" | "KB" | "KIB" => 1 << 10,
        "M" | "MB" | "MIB" => 1 << 20,
        "G" | "GB" | "GIB" => 1 << 30,
        _ => return Err(format!("invalid size unit {unit:?} in {s:?}")),
    };
    n.checked_mul(mul)
        .ok_or_else(|| format!("size {s:?} is too large"))
}

pub fn parse_consistency(s: &str) -> Result<Consistency, String> {
    match s {
        "l" | "L" | "linearizable" => Ok(Consistency::Linearizable),
        "s" | "S" | "serializable" => Ok(Consistency::Serializable),
        _ => Err(format!(
            "invalid consistency {s:?}: expected l (linearizable) or s (serializable)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn etcd_style_put_command_line() {
        let cli = Cli::try_parse_from([
            "ringkv-bench",
            "--endpoints=127.0.0.1:2379,127.0.0.1:22379",
            "--conns=100",
            "--clients=1000",
            "put",
            "--key-size=8",
            "--sequential-keys",
            "--total=100000",
            "--val-size=256",
            "--rate=5000",
        ])
        .unwrap();
        assert_eq!(cli.global.endpoints.len(), 2);
        assert_eq!(cli.global.conns, 100);
        assert_eq!(cli.global.clients, 1000);
        let Command::Put(p) = cli.command else {
            panic!("not put")
        };
        assert_eq!(p.total.total, 100000);
        assert_eq!(p.total.rate, 5000.0);
        assert_eq!(p.keys.val_size, 256);
        assert!(p.keys.sequential_keys);
    }

    #[test]
    fn global_flags_after_the_subcommand() {
        let cli = Cli::try_parse_from([
            "ringkv-bench",
            "range",
            "foo",
            "fop",
            "--consistency=s",
            "--json",
            "--duration=2s",
            "--clients=4",
        ])
        .unwrap();
        assert!(cli.global.json);
        assert_eq!(cli.global.duration, Some(Duration::from_secs(2)));
        assert_eq!(cli.global.clients, 4);
        let Command::Range(r) = cli.command else {
            panic!("not range")
        };
        assert_eq!(r.key, "foo");
        assert_eq!(r.end.as_deref(), Some("fop"));
        assert_eq!(r.consistency, Consistency::Serializable);
    }

    #[test]
    fn disk_wal_flags() {
        let cli = Cli::try_parse_from([
            "ringkv-bench",
            "disk",
            "wal",
            "--writers",
            "64",
            "--record-size",
            "256",
            "--seconds",
            "1",
            "--compare",
            "--json",
        ])
        .unwrap();
        let Command::Disk(DiskCommand::Wal(w)) = cli.command else {
            panic!("not disk wal")
        };
        assert_eq!(w.writers, 64);
        assert_eq!(w.record_size, 256);
        assert!(w.compare);
        assert!(cli.global.json);
    }

    #[test]
    fn bad_values_are_clear_errors() {
        let e = Cli::try_parse_from(["ringkv-bench", "range", "k", "--consistency=x"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("expected l (linearizable)"), "{e}");
        let e = Cli::try_parse_from(["ringkv-bench", "put", "--duration=5parsecs"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("invalid duration unit"), "{e}");
    }

    #[test]
    fn durations_and_sizes() {
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("1.5").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("s").is_err());
        assert_eq!(parse_size("4K").unwrap(), 4096);
        assert_eq!(parse_size("64KiB").unwrap(), 65536);
        assert_eq!(parse_size("1M").unwrap(), 1 << 20);
        assert_eq!(parse_size("256").unwrap(), 256);
        assert!(parse_size("4X").is_err());
        assert!(parse_size("99999999999999999999G").is_err());
    }
}

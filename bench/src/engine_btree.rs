//! `ringkv-bench engine btree`: the same phases on ringkv's backend, LMDB (through `heed`) and
//! `redb`, side by side in one run, so figures compare as ratios on the same noisy machine.
//!
//! Phases (N = `keys`, default 1M; 24-byte random keys, 150-byte values):
//! - `bulk-load`: N keys in one transaction (one durable commit), put in random order or in key
//!   order (`--load-order`, the same for every engine). The order decides how full each engine
//!   leaves its pages: LMDB and redb split a page in the middle when a key lands inside it (random
//!   order builds ~70 % full pages) and keep the old page full when it lands at its end (key
//!   order builds ~100 % full pages); ringkv sorts a transaction's writes, and fills pages to
//!   ~70 % when the puts arrived out of key order, fully when they arrived in order;
//! - `get-1t`, `get-2t`: random point gets of loaded keys from 1 and 2 threads (one read
//!   transaction per thread);
//! - `range-10`: random range scans returning 10 keys;
//! - `commit-1`: durable commits of a single random key (N/100 of them, 10 to 1,000);
//! - `commit-1000`: durable commits of 1,000 random keys each (`ops_per_sec` counts keys);
//! - `revision-append`: sequential 17-byte revision keys (8-byte big-endian main, `_`, 8-byte
//!   big-endian sub: etcd's layout) with 256-byte values, committed every 10,000 keys (N/100,000
//!   commits, 1 to 100, or `--append-commits`).
//!
//! Every commit is durable (fdatasync) in every engine: ringkv commits explicitly, LMDB runs with
//! its default sync flags, redb with its default `Durability::Immediate`.
//!
//! By default each engine runs all its phases before the next engine starts. With
//! `--interleave` the commit phases run after every engine's other phases, cut into ten slices
//! each, the engines taking turns per slice (the first engine rotates), so that minutes when the
//! shared disk is busy weigh on every engine alike; an engine's figure is the sum of its slices.
//!
//! The `bulk-load` and `commit-1000` results also carry `tree_pages`: the pages of the tree
//! after the phase (LMDB: branch + leaf + overflow pages of the database; redb: branch + leaf
//! pages of the table; ringkv: pages neither free nor pending, i.e. also the bucket catalog and
//! the freelist run, 2-3 pages more), the measure of how full the load left the pages.

use std::ops::Bound;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use heed::types::Bytes;
use redb::{ReadableDatabase, TableDefinition};
use ringkv_engine::{Backend, BackendOptions, BatchWrite, Bucket, StdVfs};

/// One measured phase of one engine.
#[derive(Clone, Debug, serde::Serialize)]
pub struct PhaseResult {
    pub engine: &'static str,
    pub phase: &'static str,
    pub ops: u64,
    pub secs: f64,
    pub ops_per_sec: f64,
    pub ns_per_op: f64,
    /// Pages of the tree after the phase (`bulk-load` and `commit-1000` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tree_pages: Option<u64>,
}

/// The order of the bulk load's puts (the keys are the same).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LoadOrder {
    /// The order they were generated in (random).
    #[default]
    Random,
    /// Ascending key order.
    Sorted,
}

/// What to run.
#[derive(Clone, Debug)]
pub struct BtreeOptions {
    pub keys: usize,
    /// Also run LMDB and redb (else ringkv only).
    pub compare: bool,
    /// Print one JSON object per engine and phase instead of a table.
    pub json: bool,
    /// Run only these phases (empty = all); `bulk-load` always runs but is reported only if
    /// listed. An unknown name is an error.
    pub phases: Vec<String>,
    /// The order of the bulk load's puts, for every engine.
    pub load_order: LoadOrder,
    /// Run the commit phases of all engines interleaved in slices (`--interleave`).
    pub interleave: bool,
    /// Also run ringkv with `BackendOptions::early_writes` on, as engine `ringkv-early`
    /// (`--early-too`): the A/B of that option in one run.
    pub early_too: bool,
    /// Commits of the `revision-append` phase (`--append-commits`); `None`: N/100,000,
    /// clamped to 1..=100.
    pub append_commits: Option<usize>,
    /// Also run ringkv with `BackendOptions::delta_log` on, as engine `ringkv-delta`
    /// (`--delta-too`).
    pub delta_too: bool,
    /// Commits of 1,000 updates `ringkv-delta` makes, untimed, after its bulk load
    /// (`--delta-warm`, see `Engine::warm_commits`).
    pub delta_warm: usize,
}

impl Default for BtreeOptions {
    fn default() -> Self {
        BtreeOptions {
            keys: 1_000_000,
            compare: false,
            json: false,
            phases: Vec::new(),
            load_order: LoadOrder::Random,
            interleave: false,
            early_too: false,
            append_commits: None,
            delta_too: false,
            delta_warm: 0,
        }
    }
}

/// Runs every phase for each engine in a fresh directory under `dir`, prints the results
/// (table or JSON lines) and returns them.
pub fn run(
    opts: &BtreeOptions,
    dir: &Path,
) -> Result<Vec<PhaseResult>, Box<dyn std::error::Error>> {
    if let Some(bad) = opts.phases.iter().find(|p| !PHASES.contains(&p.as_str())) {
        return Err(format!("unknown phase {bad:?}; phases: {}", PHASES.join(", ")).into());
    }
    let mut w = Workload::new(opts.keys, opts.load_order);
    w.append_commits = opts.append_commits;
    let mut engines: Vec<Box<dyn Engine>> = vec![Box::new(Ringkv::open(
        &dir.join("ringkv"),
        "ringkv",
        false,
    )?)];
    if opts.delta_too {
        engines.push(Box::new(Ringkv::open_delta(
            &dir.join("ringkv-delta"),
            opts.delta_warm,
        )?));
    }
    if opts.early_too {
        engines.push(Box::new(Ringkv::open(
            &dir.join("ringkv-early"),
            "ringkv-early",
            true,
        )?));
    }
    if opts.compare {
        engines.push(Box::new(Lmdb::open(&dir.join("lmdb"))?));
        engines.push(Box::new(Redb::open(&dir.join("redb"))?));
    }
    let mut out = Vec::new();
    let listed = |p: &str| opts.phases.is_empty() || opts.phases.iter().any(|q| q == p);
    // Interleaved: every engine runs its other phases first, then the commit phases together.
    let apart = |p: &str| listed(p) && !(opts.interleave && COMMIT_PHASES.contains(&p));
    let mut keys: Vec<CommitKeys> = engines.iter().map(|_| CommitKeys::new()).collect();
    for (e, keys) in engines.iter_mut().zip(&mut keys) {
        for r in run_engine(e.as_mut(), &w, &apart, keys)? {
            print_result(&r, opts.json)?;
            out.push(r);
        }
    }
    if opts.interleave {
        for phase in COMMIT_PHASES.into_iter().filter(|p| listed(p)) {
            for r in run_interleaved(&mut engines, &w, phase, &mut keys)? {
                print_result(&r, opts.json)?;
                out.push(r);
            }
        }
    }
    Ok(out)
}

fn print_result(r: &PhaseResult, json: bool) -> Result<(), BoxErr> {
    if json {
        println!("{}", serde_json::to_string(r)?);
    } else {
        let pages = r
            .tree_pages
            .map_or(String::new(), |p| format!(" {p:>9} tree pages"));
        println!(
            "{:<7} {:<16} {:>12.0} ops/s {:>10.0} ns/op{pages}",
            r.engine, r.phase, r.ops_per_sec, r.ns_per_op
        );
    }
    Ok(())
}

/// The phases of durable commits, in the order they run.
const COMMIT_PHASES: [&str; 3] = ["commit-1", "commit-1000", "revision-append"];

/// Slices each commit phase is cut into by `--interleave`.
const SLICES: usize = 10;

/// One engine's key generators of the commit phases: separate per phase, so that a phase's keys
/// do not depend on which phases ran, and the same for every engine.
struct CommitKeys {
    one: Mix,
    thousand: Mix,
}

impl CommitKeys {
    fn new() -> Self {
        CommitKeys {
            one: Mix(7),
            thousand: Mix(8),
        }
    }
}

/// Commits a commit phase makes with the workload's `n` loaded keys.
fn commit_count(phase: &str, w: &Workload) -> usize {
    let n = w.keys.len();
    match phase {
        "commit-1" => (n / 100).clamp(10, 1000),
        "commit-1000" => 100.min(n / 1000 + 1),
        _ => w
            .append_commits
            .unwrap_or((n / 10).clamp(10_000, 1_000_000) / 10_000),
    }
}

/// Runs the commits numbered `commits` of `phase`; returns the keys they wrote.
fn run_commits(
    e: &mut dyn Engine,
    w: &Workload,
    phase: &str,
    commits: std::ops::Range<usize>,
    keys: &mut CommitKeys,
) -> Result<u64, BoxErr> {
    let count = commits.len() as u64;
    match phase {
        "commit-1" => {
            for _ in commits {
                e.commit(&mut std::iter::once((keys.one.key(), w.value.clone())))?;
            }
            Ok(count)
        }
        "commit-1000" => {
            for _ in commits {
                e.commit(&mut (0..1000).map(|_| (keys.thousand.key(), w.value.clone())))?;
            }
            Ok(count * 1000)
        }
        _ => {
            let value = vec![0xcd; 256];
            for batch in commits {
                let first = batch as u64 * 10_000 + 1;
                e.commit(&mut (0..10_000).map(|i| (revision(first + i, 0), value.clone())))?;
            }
            Ok(count * 10_000)
        }
    }
}

/// Runs `phase` on every engine in `SLICES` slices of its commits, slice by slice, the engines'
/// order rotating by one each slice; an engine's result is the sum of its slices.
fn run_interleaved(
    engines: &mut [Box<dyn Engine>],
    w: &Workload,
    phase: &'static str,
    keys: &mut [CommitKeys],
) -> Result<Vec<PhaseResult>, BoxErr> {
    let count = commit_count(phase, w);
    let mut spent = vec![(std::time::Duration::ZERO, 0u64); engines.len()];
    for s in 0..SLICES {
        let commits = s * count / SLICES..(s + 1) * count / SLICES;
        for j in 0..engines.len() {
            let i = (s + j) % engines.len();
            let t = Instant::now();
            let ops = run_commits(engines[i].as_mut(), w, phase, commits.clone(), &mut keys[i])?;
            spent[i].0 += t.elapsed();
            spent[i].1 += ops;
        }
    }
    let mut out = Vec::new();
    for (e, (time, ops)) in engines.iter().zip(spent) {
        let secs = time.as_secs_f64();
        out.push(PhaseResult {
            engine: e.name(),
            phase,
            ops,
            secs,
            ops_per_sec: ops as f64 / secs,
            ns_per_op: secs * 1e9 / ops.max(1) as f64,
            tree_pages: if phase == "commit-1000" {
                Some(e.tree_pages()?)
            } else {
                None
            },
        });
    }
    Ok(out)
}

type BoxErr = Box<dyn std::error::Error>;

/// The three engines behind one interface: only what the phases need.
trait Engine {
    fn name(&self) -> &'static str;
    /// Writes `pairs` in one durable transaction.
    fn commit(&mut self, pairs: &mut dyn Iterator<Item = (Vec<u8>, Vec<u8>)>)
    -> Result<(), BoxErr>;
    /// Looks up every key of `keys` on `threads` threads (split evenly); returns hits.
    fn gets(&self, keys: &[Vec<u8>], threads: usize) -> Result<u64, BoxErr>;
    /// For each start key, reads the next 10 keys; returns keys read.
    fn ranges(&self, starts: &[Vec<u8>]) -> Result<u64, BoxErr>;
    /// Pages of the tree as of the last commit (see the module doc, `tree_pages`).
    fn tree_pages(&self) -> Result<u64, BoxErr>;
    /// Untimed commits of 1,000 random loaded keys (updates) this engine makes right after the
    /// bulk load (`ringkv-delta` with `--delta-warm N`: fills the delta log, so that the get
    /// phases probe a full log and commit-1000 runs in the log's steady state).
    fn warm_commits(&self) -> usize {
        0
    }
}

/// Keys and values, generated once so every engine gets the same.
struct Workload {
    keys: Vec<Vec<u8>>,
    /// The bulk load's put order: indexes into `keys`.
    load: Vec<u32>,
    value: Vec<u8>,
    get_order: Vec<Vec<u8>>,
    /// `BtreeOptions::append_commits`.
    append_commits: Option<usize>,
}

/// SplitMix64: a deterministic generator, so runs are repeatable without extra dependencies.
struct Mix(u64);

impl Mix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn key(&mut self) -> Vec<u8> {
        let mut k = Vec::with_capacity(24);
        for _ in 0..3 {
            k.extend_from_slice(&self.next().to_le_bytes());
        }
        k
    }
}

impl Workload {
    fn new(n: usize, order: LoadOrder) -> Workload {
        let mut rng = Mix(42);
        let keys: Vec<Vec<u8>> = (0..n).map(|_| rng.key()).collect();
        let mut load: Vec<u32> = (0..n as u32).collect();
        if order == LoadOrder::Sorted {
            load.sort_unstable_by(|&a, &b| keys[a as usize].cmp(&keys[b as usize]));
        }
        let get_order = (0..n.min(1_000_000))
            .map(|_| keys[(rng.next() % n as u64) as usize].clone())
            .collect();
        Workload {
            keys,
            load,
            value: vec![0xab; 150],
            get_order,
            append_commits: None,
        }
    }
}

fn result(engine: &'static str, phase: &'static str, ops: u64, start: Instant) -> PhaseResult {
    let secs = start.elapsed().as_secs_f64();
    PhaseResult {
        engine,
        phase,
        ops,
        secs,
        ops_per_sec: ops as f64 / secs,
        ns_per_op: secs * 1e9 / ops.max(1) as f64,
        tree_pages: None,
    }
}

/// A 17-byte etcd revision key. Big-endian so that byte order is numeric order.
fn revision(main: u64, sub: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(17);
    k.extend_from_slice(&main.to_be_bytes());
    k.push(b'_');
    k.extend_from_slice(&sub.to_be_bytes());
    k
}

/// Every phase, in the order they run.
const PHASES: [&str; 7] = [
    "bulk-load",
    "get-1t",
    "get-2t",
    "range-10",
    "commit-1",
    "commit-1000",
    "revision-append",
];

/// Runs the phases `wanted` accepts, in order (`bulk-load` always, reported only if wanted).
fn run_engine(
    e: &mut dyn Engine,
    w: &Workload,
    wanted: &dyn Fn(&str) -> bool,
    keys: &mut CommitKeys,
) -> Result<Vec<PhaseResult>, BoxErr> {
    let name = e.name();
    let n = w.keys.len();
    let mut out = Vec::new();

    let t = Instant::now();
    e.commit(
        &mut w
            .load
            .iter()
            .map(|&i| (w.keys[i as usize].clone(), w.value.clone())),
    )?;
    if wanted("bulk-load") {
        let mut r = result(name, "bulk-load", n as u64, t);
        r.tree_pages = Some(e.tree_pages()?);
        out.push(r);
    }
    let mut warm = Mix(9);
    for _ in 0..e.warm_commits() {
        e.commit(&mut (0..1000).map(|_| {
            let k = &w.keys[(warm.next() % n as u64) as usize];
            (k.clone(), w.value.clone())
        }))?;
    }

    for (threads, phase) in [(1, "get-1t"), (2, "get-2t")] {
        if !wanted(phase) {
            continue;
        }
        let t = Instant::now();
        let hits = e.gets(&w.get_order, threads)?;
        if hits != w.get_order.len() as u64 {
            return Err(format!(
                "{name}: {hits} of {} gets found their key",
                w.get_order.len()
            )
            .into());
        }
        out.push(result(name, phase, hits, t));
    }

    if wanted("range-10") {
        let starts = &w.get_order[..(n / 10).clamp(1, 100_000).min(w.get_order.len())];
        let t = Instant::now();
        e.ranges(starts)?;
        out.push(result(name, "range-10", starts.len() as u64, t));
    }

    for phase in COMMIT_PHASES.into_iter().filter(|p| wanted(p)) {
        let t = Instant::now();
        let ops = run_commits(e, w, phase, 0..commit_count(phase, w), keys)?;
        let mut r = result(name, phase, ops, t);
        if phase == "commit-1000" {
            r.tree_pages = Some(e.tree_pages()?);
        }
        out.push(r);
    }
    Ok(out)
}

/// Splits `keys` over `threads` scoped threads running `f` on each chunk; sums the results.
fn split<F>(keys: &[Vec<u8>], threads: usize, f: F) -> Result<u64, BoxErr>
where
    F: Fn(&[Vec<u8>]) -> Result<u64, String> + Sync,
{
    let chunk = keys.len().div_ceil(threads).max(1);
    let results: Vec<Result<u64, String>> = std::thread::scope(|s| {
        let handles: Vec<_> = keys.chunks(chunk).map(|c| s.spawn(|| f(c))).collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("bench thread"))
            .collect()
    });
    let mut sum = 0;
    for r in results {
        sum += r?;
    }
    Ok(sum)
}

struct Ringkv {
    backend: Backend,
    name: &'static str,
    /// See [`Engine::warm_commits`].
    warm: usize,
}

impl Ringkv {
    fn open(dir: &Path, name: &'static str, early_writes: bool) -> Result<Ringkv, BoxErr> {
        let opts = BackendOptions {
            batch_ops: usize::MAX,
            batch_interval: std::time::Duration::from_secs(3600),
            early_writes,
            ..BackendOptions::default()
        };
        let backend = Backend::open(Arc::new(StdVfs::new()), &dir.join("member/snap/db"), opts)?;
        Ok(Ringkv {
            backend,
            name,
            warm: 0,
        })
    }
}

impl Ringkv {
    /// Engine `ringkv-delta`: `BackendOptions::delta_log` on, otherwise as `ringkv`.
    fn open_delta(dir: &Path, warm: usize) -> Result<Ringkv, BoxErr> {
        let opts = BackendOptions {
            batch_ops: usize::MAX,
            batch_interval: std::time::Duration::from_secs(3600),
            delta_log: true,
            ..BackendOptions::default()
        };
        let backend = Backend::open(Arc::new(StdVfs::new()), &dir.join("member/snap/db"), opts)?;
        Ok(Ringkv {
            backend,
            name: "ringkv-delta",
            warm,
        })
    }
}

impl Engine for Ringkv {
    fn name(&self) -> &'static str {
        self.name
    }

    fn commit(
        &mut self,
        pairs: &mut dyn Iterator<Item = (Vec<u8>, Vec<u8>)>,
    ) -> Result<(), BoxErr> {
        let mut w = self.backend.batch()?;
        for (k, v) in pairs {
            w.put(Bucket::Key, &k, &v)?;
        }
        w.commit()?;
        Ok(())
    }

    fn gets(&self, keys: &[Vec<u8>], threads: usize) -> Result<u64, BoxErr> {
        split(keys, threads, |chunk| {
            let snap = self.backend.snapshot();
            let mut hits = 0;
            for k in chunk {
                if let Some(v) = snap.get_ref(Bucket::Key, k).map_err(|e| e.to_string())? {
                    hits += u64::from(!v.is_empty());
                }
            }
            Ok(hits)
        })
    }

    fn ranges(&self, starts: &[Vec<u8>]) -> Result<u64, BoxErr> {
        let snap = self.backend.snapshot();
        let mut n = 0;
        for s in starts {
            let mut left = 10;
            snap.scan_with(Bucket::Key, s, b"", &mut |_, _| {
                left -= 1;
                left > 0
            })?;
            n += 10 - left;
        }
        Ok(n)
    }

    fn warm_commits(&self) -> usize {
        self.warm
    }

    fn tree_pages(&self) -> Result<u64, BoxErr> {
        // From the space accounting, not a walk: a walk would warm ringkv's map for the gets.
        let s = self.backend.stats();
        Ok(s.live_bytes / s.page_size)
    }
}

struct Lmdb {
    env: heed::Env,
    db: heed::Database<Bytes, Bytes>,
}

impl Lmdb {
    fn open(dir: &Path) -> Result<Lmdb, BoxErr> {
        std::fs::create_dir_all(dir)?;
        // SAFETY: heed requires that the environment is not opened twice in one process and
        // that no other process changes it; the directory is fresh and private to this run.
        let env = unsafe { heed::EnvOpenOptions::new().map_size(64 << 30).open(dir)? };
        let mut wtxn = env.write_txn()?;
        let db = env.create_database::<Bytes, Bytes>(&mut wtxn, None)?;
        wtxn.commit()?;
        Ok(Lmdb { env, db })
    }
}

impl Engine for Lmdb {
    fn name(&self) -> &'static str {
        "lmdb"
    }

    fn commit(
        &mut self,
        pairs: &mut dyn Iterator<Item = (Vec<u8>, Vec<u8>)>,
    ) -> Result<(), BoxErr> {
        let mut wtxn = self.env.write_txn()?;
        for (k, v) in pairs {
            self.db.put(&mut wtxn, &k, &v)?;
        }
        wtxn.commit()?;
        Ok(())
    }

    fn gets(&self, keys: &[Vec<u8>], threads: usize) -> Result<u64, BoxErr> {
        split(keys, threads, |chunk| {
            let rtxn = self.env.read_txn().map_err(|e| e.to_string())?;
            let mut hits = 0;
            for k in chunk {
                if let Some(v) = self.db.get(&rtxn, k).map_err(|e| e.to_string())? {
                    hits += u64::from(!v.is_empty());
                }
            }
            Ok(hits)
        })
    }

    fn ranges(&self, starts: &[Vec<u8>]) -> Result<u64, BoxErr> {
        let rtxn = self.env.read_txn()?;
        let mut n = 0;
        for s in starts {
            for kv in self
                .db
                .range(&rtxn, &(Bound::Included(s.as_slice()), Bound::Unbounded))?
                .take(10)
            {
                kv?;
                n += 1;
            }
        }
        Ok(n)
    }

    fn tree_pages(&self) -> Result<u64, BoxErr> {
        let rtxn = self.env.read_txn()?;
        let s = self.db.stat(&rtxn)?;
        Ok((s.branch_pages + s.leaf_pages + s.overflow_pages) as u64)
    }
}

const TABLE: TableDefinition<&[u8], &[u8]> = TableDefinition::new("key");

struct Redb {
    db: redb::Database,
}

impl Redb {
    fn open(dir: &Path) -> Result<Redb, BoxErr> {
        std::fs::create_dir_all(dir)?;
        Ok(Redb {
            db: redb::Database::create(dir.join("db.redb"))?,
        })
    }
}

impl Engine for Redb {
    fn name(&self) -> &'static str {
        "redb"
    }

    fn commit(
        &mut self,
        pairs: &mut dyn Iterator<Item = (Vec<u8>, Vec<u8>)>,
    ) -> Result<(), BoxErr> {
        let tx = self.db.begin_write()?;
        {
            let mut t = tx.open_table(TABLE)?;
            for (k, v) in pairs {
                t.insert(k.as_slice(), v.as_slice())?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn gets(&self, keys: &[Vec<u8>], threads: usize) -> Result<u64, BoxErr> {
        split(keys, threads, |chunk| {
            let tx = self.db.begin_read().map_err(|e| e.to_string())?;
            let t = tx.open_table(TABLE).map_err(|e| e.to_string())?;
            let mut hits = 0;
            for k in chunk {
                if let Some(v) = t.get(k.as_slice()).map_err(|e| e.to_string())? {
                    hits += u64::from(!v.value().is_empty());
                }
            }
            Ok(hits)
        })
    }

    fn ranges(&self, starts: &[Vec<u8>]) -> Result<u64, BoxErr> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(TABLE)?;
        let mut n = 0;
        for s in starts {
            for kv in t.range(s.as_slice()..)?.take(10) {
                kv?;
                n += 1;
            }
        }
        Ok(n)
    }

    fn tree_pages(&self) -> Result<u64, BoxErr> {
        use redb::ReadableTableMetadata;
        let tx = self.db.begin_read()?;
        let s = tx.open_table(TABLE)?.stats()?;
        Ok(s.branch_pages() + s.leaf_pages())
    }
}

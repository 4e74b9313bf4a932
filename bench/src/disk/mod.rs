//! `ringkv-bench disk`: the fsync / WAL-batching profiler.
//!
//! - `disk fsync`: the raw device. One thread writes `size` bytes (O_DIRECT, 4 KiB-aligned)
//!   at the next offset of a pre-zeroed, preallocated file and `fdatasync`s it, in a loop, for
//!   each size asked (default 4 KiB, 64 KiB, 256 KiB, 1 MiB). Writes wrap around the file, so
//!   every write overwrites allocated, already-written blocks: no block allocation and no
//!   file-size change reach the journal, which is exactly the WAL's steady state.
//!   `--parallel N` runs N such loops at once, each on its own file, and merges their latencies
//!   (the syncs of N members on one disk).
//! - `disk wal`: N writer threads, each appending one record of B bytes and waiting for it to be
//!   durable, in a loop, for S seconds; on ringkv's WAL and, with `--compare`, in the same run on
//!   TiKV's raft-engine and on the raw loop (see [`Engine`] for what each one does).
//! - `disk wal --sweep`: writers 1, 2, 4, …, 256 × record sizes 64 B … 64 KiB, a table and an
//!   SVG heat map.
//!
//! Every engine writes under its own fresh temporary directory inside `--dir`, removed at the
//! end; point `--dir` at the file system you want to measure.

mod engines;
mod heatmap;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use ringkv_engine::{AlignedBuf, File, IoKind, OpenOptions, Vfs, align_up, new_vfs};

use crate::cpu::self_cpu;
use crate::hist::Recorder;
use crate::report::DiskReport;

pub use engines::{Engine, RINGKV};
pub use heatmap::write_heatmap_svg;

/// Size of the pre-zeroed file of `disk wal`'s raw engine unless a run needs more. Writes wrap
/// around in it; its size does not matter once every block was written.
pub const RAW_FILE_BYTES: u64 = 16 << 20;

/// Parses `--io`.
pub fn parse_io(s: &str) -> Result<IoKind, String> {
    match s {
        "uring" | "io_uring" => Ok(IoKind::Uring),
        "std" => Ok(IoKind::Std),
        _ => Err(format!("unknown --io {s:?}: expected uring or std")),
    }
}

pub fn io_name(kind: IoKind) -> &'static str {
    match kind {
        IoKind::Uring => "uring",
        IoKind::Std => "std",
        IoKind::Fault => "fault",
    }
}

/// Opens the I/O implementation named by `kind`, with a message that names the flag on error.
pub fn open_vfs(kind: IoKind) -> Result<Arc<dyn Vfs>, String> {
    new_vfs(kind).map_err(|e| {
        format!(
            "--io {}: cannot use this I/O implementation here: {e} (try --io std)",
            io_name(kind)
        )
    })
}

/// A fresh temporary directory inside `parent` (created if missing), removed on drop.
pub fn scratch_dir(parent: &Path, what: &str) -> Result<tempfile::TempDir, String> {
    std::fs::create_dir_all(parent)
        .map_err(|e| format!("cannot create --dir {}: {e}", parent.display()))?;
    tempfile::Builder::new()
        .prefix(&format!("ringkv-bench-{what}-"))
        .tempdir_in(parent)
        .map_err(|e| format!("cannot create a directory in {}: {e}", parent.display()))
}

/// Creates `path` as an O_DIRECT file of `len` bytes (a multiple of 4 KiB) that is allocated
/// AND written with zeros, then made durable: later overwrites change no metadata.
pub fn prezeroed_file(vfs: &dyn Vfs, path: &Path, len: u64) -> io::Result<Arc<dyn File>> {
    let len = align_up(len);
    let f = vfs.open(
        path,
        OpenOptions::read_write().create_new(true).direct(true),
    )?;
    f.allocate(0, len)?;
    let chunk = AlignedBuf::zeroed(1 << 20);
    let mut off = 0;
    while off < len {
        let n = (len - off).min(chunk.len() as u64) as usize;
        f.write_at(&chunk[..n], off)?;
        off += n as u64;
    }
    f.sync_data()?;
    if let Some(dir) = path.parent() {
        vfs.sync_dir(dir)?;
    }
    Ok(f)
}

/// Options of one `disk fsync` run.
#[derive(Clone, Debug)]
pub struct FsyncOpts {
    pub dir: PathBuf,
    pub io: IoKind,
    /// Write sizes; each is rounded up to a multiple of 4 KiB.
    pub sizes: Vec<u64>,
    pub duration: Duration,
    /// Size of the pre-zeroed file the writes wrap around in.
    pub file_bytes: u64,
    /// Loops run at once, each on its own file (1 = the device alone).
    pub parallel: usize,
}

/// `disk fsync`: the write + fdatasync loop at each size; one report per size. With
/// `parallel` > 1, that many loops run at once, each on a file of its own, and the report
/// merges their latencies (`writers` = the number of loops).
pub fn run_fsync(opts: &FsyncOpts) -> Result<Vec<DiskReport>, String> {
    let vfs = open_vfs(opts.io)?;
    let scratch = scratch_dir(&opts.dir, "fsync")?;
    let loops = opts.parallel.max(1);
    let mut out = Vec::new();
    for (i, &size) in opts.sizes.iter().enumerate() {
        let size = align_up(size.max(1));
        let file_bytes = opts.file_bytes.max(size * 16);
        let mut files = Vec::with_capacity(loops);
        for j in 0..loops {
            let path = scratch.path().join(format!("raw-{i}-{j}.dat"));
            let f = prezeroed_file(&*vfs, &path, file_bytes)
                .map_err(|e| format!("{}: cannot prepare file: {e}", path.display()))?;
            files.push((path, f));
        }
        let cpu0 = self_cpu();
        let start = Instant::now();
        let deadline = start + opts.duration;
        let results: Vec<(Recorder, u64)> = std::thread::scope(|sc| {
            let handles: Vec<_> = files
                .iter()
                .map(|(path, f)| {
                    sc.spawn(move || fsync_loop(&**f, path, size, file_bytes, deadline))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("fsync loop panicked"))
                .collect()
        });
        let elapsed = start.elapsed();
        let cpu = self_cpu().saturating_sub(cpu0);
        let mut rec = Recorder::new(None);
        let mut syncs = 0;
        for (r, n) in &results {
            rec.merge(r);
            syncs += n;
        }
        for (path, f) in files {
            drop(f);
            let _ = std::fs::remove_file(&path);
        }
        out.push(DiskReport::new(
            "raw",
            io_name(opts.io),
            loops as u32,
            size,
            &rec,
            elapsed,
            syncs,
            cpu,
        ));
    }
    Ok(out)
}

/// One `disk fsync` loop: `size`-byte writes, each followed by an fdatasync, wrapping around
/// in `f` until `deadline` (at least once). Returns the latencies and the number of syncs.
fn fsync_loop(
    f: &dyn File,
    path: &Path,
    size: u64,
    file_bytes: u64,
    deadline: Instant,
) -> (Recorder, u64) {
    let mut buf = AlignedBuf::zeroed(size as usize);
    buf.iter_mut().enumerate().for_each(|(i, b)| *b = i as u8);
    let slots = align_up(file_bytes) / size;
    let mut rec = Recorder::new(None);
    let mut syncs = 0u64;
    let mut n = 0u64;
    loop {
        let t = Instant::now();
        // At least one write per loop, however late the thread started.
        if n > 0 && t >= deadline {
            break;
        }
        let off = (n % slots) * size;
        match f.write_at_and_sync(&buf, off) {
            Ok(()) => rec.record(t.elapsed(), Instant::now()),
            Err(e) => {
                // An fdatasync error is fatal for the file: report it and stop, no retry.
                rec.error(&io_error_kind(&e));
                eprintln!("disk fsync: {} at offset {off}: {e}", path.display());
                syncs += 1;
                break;
            }
        }
        syncs += 1;
        n += 1;
    }
    (rec, syncs)
}

/// A short, stable name for an I/O error (the errno name when there is one).
pub fn io_error_kind(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::EIO) => "EIO".into(),
        Some(libc::ENOSPC) => "ENOSPC".into(),
        Some(libc::EINVAL) => "EINVAL".into(),
        Some(code) => format!("errno {code}"),
        None => format!("{:?}", e.kind()),
    }
}

/// How `disk wal`'s ringkv appenders wait for durability (`--appenders`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Appenders {
    /// One OS thread per writer, blocked in `AppendTicket::wait` (may lead flushes itself).
    /// Every engine runs this way; raft-engine's API is synchronous, so this is the mode
    /// compared with it.
    Threads,
    /// `--writers` async tasks on one thread, each queueing its append with a callback
    /// (`Wal::append`) and awaiting it, as an async front end would: the WAL's flush thread
    /// leads every flush. ringkv only (reported as engine `ringkv-tasks`, also selectable
    /// per engine in `--engines`); the other engines of the run still use threads.
    Tasks,
}

/// Parses `--appenders`.
pub fn parse_appenders(s: &str) -> Result<Appenders, String> {
    match s {
        "threads" => Ok(Appenders::Threads),
        "tasks" => Ok(Appenders::Tasks),
        _ => Err(format!(
            "unknown --appenders {s:?}: expected threads or tasks"
        )),
    }
}

/// Options of one `disk wal` cell (one engine, one writer count, one record size).
#[derive(Clone, Debug)]
pub struct WalOpts {
    pub dir: PathBuf,
    pub io: IoKind,
    pub writers: u32,
    pub record_size: u64,
    /// Writers run this long before the measured period starts (segment pre-allocation at
    /// open, first-write effects), unmeasured.
    pub warmup: Duration,
    pub duration: Duration,
    /// `WalOptions::idle_spin` of the ringkv engine.
    pub wal_idle_spin: Duration,
    /// `WalOptions::zero_fill_below` of the ringkv engine (`None`: the WAL's default).
    pub wal_zero_fill_below: Option<u64>,
    /// How ringkv's appenders wait.
    pub appenders: Appenders,
}

/// One writer's append function: appends record number `seq` of this writer and returns once
/// it is durable.
pub type AppendFn<'a> = Box<dyn FnMut(u64) -> Result<(), String> + Send + 'a>;

/// Runs `engine` with `opts.writers` concurrent writers for `opts.warmup` (not measured), then
/// for `opts.duration`. An append counts if it started inside the measured period.
pub fn run_wal(engine: Engine, opts: &WalOpts) -> Result<DiskReport, String> {
    let mut reports = run_wal_interleaved(&[engine], opts, 1)?;
    Ok(reports.remove(0))
}

/// What one measured slice of one engine produced.
struct Slice {
    rec: Recorder,
    elapsed: Duration,
    cpu: Duration,
    syncs: u64,
}

/// Runs every engine of `engines` for `opts.duration` in total, in `rounds` alternating slices
/// (engine A, B, C, A, B, C, …), so that a noisy neighbour or a slow minute of the device hits
/// all of them alike. All engines stay open for the whole run, each in its own directory; each
/// warms up (unmeasured) before its first slice. One report per engine, in `engines` order.
///
/// With more than one round, background work an engine starts during its slice (ringkv's WAL
/// pre-zeroes its next segment on another thread) continues into the other engines' slices:
/// it costs them and is hidden from its owner. Comparisons of sustained throughput must use
/// one round, or slices long enough to hold many segment switches.
pub fn run_wal_interleaved(
    engines: &[Engine],
    opts: &WalOpts,
    rounds: u32,
) -> Result<Vec<DiskReport>, String> {
    let rounds = rounds.max(1);
    let mut open = Vec::new();
    let engines: Vec<Engine> = engines.iter().map(|&e| effective(e, opts)).collect();
    let engines = &engines[..];
    for &engine in engines {
        let scratch = scratch_dir(&opts.dir, engine.name())?;
        let target = engines::open(engine, opts, scratch.path())?;
        open.push((engine, scratch, target));
    }
    let slice_len = opts.duration / rounds;
    let mut totals: Vec<Option<Slice>> = engines.iter().map(|_| None).collect();
    // ops/s of each engine in each round, for the per-round figures on stderr.
    let mut per_round: Vec<Vec<f64>> = engines.iter().map(|_| Vec::new()).collect();
    for round in 0..rounds {
        for (i, (_, _, target)) in open.iter().enumerate() {
            let warmup = if round == 0 {
                opts.warmup
            } else {
                Duration::ZERO
            };
            let s = if tasks_mode(open[i].0) {
                run_slice_tasks(&**target, opts.writers, warmup, slice_len)?
            } else {
                run_slice(&**target, opts.writers, warmup, slice_len)?
            };
            per_round[i].push(s.rec.count() as f64 / s.elapsed.as_secs_f64().max(1e-9));
            match &mut totals[i] {
                None => totals[i] = Some(s),
                Some(t) => {
                    t.rec.merge(&s.rec);
                    t.elapsed += s.elapsed;
                    t.cpu += s.cpu;
                    t.syncs += s.syncs;
                }
            }
        }
    }
    if rounds > 1 {
        print_rounds(engines, &per_round);
    }
    let mut reports = Vec::new();
    for ((engine, scratch, target), total) in open.into_iter().zip(totals) {
        let t = total.expect("every engine ran at least one slice");
        if let Some((kind, _)) = t.rec.errors().iter().next() {
            eprintln!(
                "disk wal: {} stopped on error {kind} ({} errors)",
                engine.name(),
                t.rec.error_total()
            );
        }
        reports.push(DiskReport::new(
            engine.name(),
            &target.io_name(),
            opts.writers.max(1),
            opts.record_size,
            &t.rec,
            t.elapsed,
            t.syncs,
            t.cpu,
        ));
        target.close()?;
        drop(scratch);
    }
    Ok(reports)
}

/// Prints (to stderr, so `--json` output stays one object per engine) each round's ops/s per
/// engine, and the medians over rounds of each engine's ops/s and of its ratio to the first
/// engine in the same round: a slowdown of the device during a few slices then shifts every
/// engine of those rounds alike and leaves the median ratio alone.
fn print_rounds(engines: &[Engine], per_round: &[Vec<f64>]) {
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        let n = v.len();
        if n == 0 {
            0.0
        } else if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        }
    };
    for (i, engine) in engines.iter().enumerate() {
        let rounds: Vec<String> = per_round[i].iter().map(|o| format!("{o:.0}")).collect();
        let ratios: Vec<f64> = per_round[i]
            .iter()
            .zip(&per_round[0])
            .map(|(o, first)| o / first.max(1e-9))
            .collect();
        eprintln!(
            "disk wal rounds: {:<12} ops/s per round [{}], median {:.0}, median ratio to {} {:.2}",
            engine.name(),
            rounds.join(", "),
            median(per_round[i].clone()),
            engines[0].name(),
            median(ratios),
        );
    }
}

/// `engine` as it runs with `opts`: `--appenders tasks` makes threads-mode ringkv `ringkv-tasks`.
fn effective(engine: Engine, opts: &WalOpts) -> Engine {
    match engine {
        Engine::Ringkv {
            tasks: false,
            each_wakes: _,
        } if opts.appenders == Appenders::Tasks => Engine::Ringkv {
            tasks: true,
            each_wakes: true,
        },
        other => other,
    }
}

/// Whether `engine` runs with async tasks.
fn tasks_mode(engine: Engine) -> bool {
    matches!(engine, Engine::Ringkv { tasks: true, .. })
}

/// One slice with `writers` async tasks on this thread (current-thread tokio runtime), each
/// starting an append ([`engines::Target::start_append`]) and awaiting its outcome in a loop;
/// the same phases as [`run_slice`].
fn run_slice_tasks(
    target: &dyn engines::Target,
    writers: u32,
    warmup: Duration,
    duration: Duration,
) -> Result<Slice, String> {
    use std::cell::Cell;
    let writers = writers.max(1) as usize;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .map_err(|e| format!("cannot start the appender tasks' runtime: {e}"))?;
    let warm = Cell::new(false);
    let stop = Cell::new(false);
    let quiet = tokio::sync::Barrier::new(writers + 1);
    let measure = tokio::sync::Barrier::new(writers + 1);
    let append = |w: usize, seq: u64| async move {
        let done = target
            .start_append(w, seq)
            .ok_or_else(|| "this engine has no task mode".to_owned())?;
        done.await
            .map_err(|_| "the append's callback was dropped".to_owned())?
    };
    let tasks = (0..writers).map(|w| {
        let (warm, stop, quiet, measure) = (&warm, &stop, &quiet, &measure);
        async move {
            let mut rec = Recorder::new(None);
            let mut seq = 0u64;
            let mut failed = false;
            while !warm.get() && !failed {
                if let Err(e) = append(w, seq).await {
                    rec.error(&e);
                    failed = true;
                }
                seq += 1;
            }
            quiet.wait().await;
            measure.wait().await;
            while !stop.get() && !failed {
                let t = Instant::now();
                match append(w, seq).await {
                    Ok(()) => rec.record(t.elapsed(), Instant::now()),
                    Err(e) => {
                        rec.error(&e);
                        failed = true;
                    }
                }
                seq += 1;
            }
            rec
        }
    });
    let control = async {
        tokio::time::sleep(warmup).await;
        warm.set(true);
        quiet.wait().await;
        let syncs0 = target.syncs();
        let cpu0 = self_cpu();
        let start = Instant::now();
        measure.wait().await;
        tokio::time::sleep(duration).await;
        stop.set(true);
        (syncs0, cpu0, start)
    };
    let run = futures_util::future::join(futures_util::future::join_all(tasks), control);
    let (recs, (syncs0, cpu0, start)) = match target.completion_driver() {
        None => rt.block_on(run),
        Some(driver) => rt.block_on(async {
            let run = std::pin::pin!(run);
            match futures_util::future::select(run, driver).await {
                futures_util::future::Either::Left((out, _)) => out,
                futures_util::future::Either::Right(((), _)) => {
                    unreachable!("the completion driver never ends")
                }
            }
        }),
    };
    let mut rec = Recorder::new(None);
    for r in &recs {
        rec.merge(r);
    }
    Ok(Slice {
        rec,
        elapsed: start.elapsed(),
        cpu: self_cpu().saturating_sub(cpu0),
        syncs: target.syncs().saturating_sub(syncs0),
    })
}

/// One slice: `writers` threads append unmeasured for `warmup`, then measured for `duration`.
fn run_slice(
    target: &dyn engines::Target,
    writers: u32,
    warmup: Duration,
    duration: Duration,
) -> Result<Slice, String> {
    let writers = writers.max(1) as usize;
    // Phases: all start together (`go`), append unmeasured until `warm` is set, all stop
    // between two appends (`quiet`: nothing in flight while the counters are read), all start
    // the measured period together (`measure`), and run until `stop`. Every append of the
    // measured period starts after the counters were read and is waited for at the end, so
    // `syncs` and the recorded appends cover exactly the same appends.
    let stop = AtomicBool::new(false);
    let warm = AtomicBool::new(false);
    let go = Barrier::new(writers + 1);
    let quiet = Barrier::new(writers + 1);
    let measure = Barrier::new(writers + 1);
    std::thread::scope(|s| -> Result<Slice, String> {
        let mut handles = Vec::with_capacity(writers);
        for w in 0..writers {
            let mut append = target.writer(w)?;
            let (go, quiet, measure) = (&go, &quiet, &measure);
            let (stop, warm) = (&stop, &warm);
            let h = std::thread::Builder::new()
                .name(format!("bench-writer-{w}"))
                .spawn_scoped(s, move || {
                    let mut rec = Recorder::new(None);
                    let mut seq = 0u64;
                    go.wait();
                    let mut failed = false;
                    while !warm.load(Ordering::Relaxed) && !failed {
                        if let Err(e) = append(seq) {
                            rec.error(&e);
                            failed = true;
                        }
                        seq += 1;
                    }
                    quiet.wait();
                    measure.wait();
                    while !stop.load(Ordering::Relaxed) && !failed {
                        let t = Instant::now();
                        match append(seq) {
                            Ok(()) => rec.record(t.elapsed(), Instant::now()),
                            Err(e) => {
                                rec.error(&e);
                                // Every engine's durability errors are fatal: stop this writer.
                                failed = true;
                            }
                        }
                        seq += 1;
                    }
                    rec
                })
                .map_err(|e| format!("cannot spawn writer thread {w}: {e}"))?;
            handles.push(h);
        }
        go.wait();
        std::thread::sleep(warmup);
        warm.store(true, Ordering::Relaxed);
        quiet.wait();
        let syncs0 = target.syncs();
        let cpu0 = self_cpu();
        let start = Instant::now();
        measure.wait();
        std::thread::sleep(duration);
        stop.store(true, Ordering::Relaxed);
        let mut rec = Recorder::new(None);
        for h in handles {
            let r = h
                .join()
                .map_err(|_| "a writer thread panicked".to_owned())?;
            rec.merge(&r);
        }
        Ok(Slice {
            rec,
            elapsed: start.elapsed(),
            cpu: self_cpu().saturating_sub(cpu0),
            syncs: target.syncs().saturating_sub(syncs0),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_flag_parsing() {
        assert_eq!(parse_io("std").unwrap(), IoKind::Std);
        assert_eq!(parse_io("uring").unwrap(), IoKind::Uring);
        assert!(parse_io("posix").unwrap_err().contains("uring or std"));
    }

    #[test]
    fn prezeroed_file_is_allocated_and_zero() {
        let dir = tempfile::tempdir().unwrap();
        let vfs = open_vfs(IoKind::Std).unwrap();
        let path = dir.path().join("z");
        let f = prezeroed_file(&*vfs, &path, 3 * 4096 + 1).unwrap();
        assert_eq!(f.size().unwrap(), 4 * 4096);
        let meta = std::fs::metadata(&path).unwrap();
        use std::os::unix::fs::MetadataExt;
        assert!(meta.blocks() * 512 >= 4 * 4096, "blocks {}", meta.blocks());
        let bytes = std::fs::read(&path).unwrap();
        assert!(bytes.iter().all(|&b| b == 0));
        // create_new: preparing over an existing file is refused, nothing is lost.
        assert!(prezeroed_file(&*vfs, &path, 4096).is_err());
    }

    #[test]
    fn fsync_loop_writes_and_syncs() {
        let dir = tempfile::tempdir().unwrap();
        let reports = run_fsync(&FsyncOpts {
            dir: dir.path().to_owned(),
            io: IoKind::Std,
            sizes: vec![4096, 5000],
            duration: Duration::from_millis(100),
            file_bytes: 1 << 20,
            parallel: 1,
        })
        .unwrap();
        assert_eq!(reports.len(), 2);
        assert_eq!(reports[0].record_size, 4096);
        assert_eq!(reports[1].record_size, 8192, "sizes round up to 4 KiB");
        for r in &reports {
            assert!(r.total > 0, "{r:?}");
            assert_eq!(r.errors, 0);
            assert_eq!(r.syncs, r.total, "one fdatasync per write");
            assert_eq!(r.records_per_sync, 1.0);
            assert!(r.p50_us > 0.0 && r.p50_us <= r.p99_us && r.p99_us <= r.p999_us);
        }
        // The scratch directory is gone.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn parallel_loops_each_write_and_sync_and_their_latencies_merge() {
        let dir = tempfile::tempdir().unwrap();
        let reports = run_fsync(&FsyncOpts {
            dir: dir.path().to_owned(),
            io: IoKind::Std,
            sizes: vec![4096],
            duration: Duration::from_millis(100),
            file_bytes: 1 << 20,
            parallel: 3,
        })
        .unwrap();
        assert_eq!(reports.len(), 1);
        let r = &reports[0];
        assert_eq!(r.writers, 3, "{r:?}");
        assert_eq!(r.errors, 0);
        // Every loop writes at least once, however late it started.
        assert!(r.total >= 3, "{r:?}");
        assert_eq!(r.syncs, r.total, "one fdatasync per write in every loop");
        assert!(r.p50_us > 0.0 && r.p50_us <= r.p99_us);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}

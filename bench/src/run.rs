//! Dispatch of the parsed command line, and printing of results.

use std::io::Write as _;
use std::time::Duration;

use std::cell::Cell;

use crate::cli::{
    BtreeArgs, Cli, Command, Consistency, DiskCommand, EngineCommand, FsyncArgs, Global, TotalArgs,
    WalArgs,
};
use crate::cpu::{CpuMeter, max_peak_rss_bytes};
use crate::disk::{self, Engine, FsyncOpts, RINGKV, WalOpts, parse_io, write_heatmap_svg};
use crate::load::{
    self, KeyGen, LeaseKeepalive, Mixed, Plan, Put, RangeLoad, TxnPut, WatchPlan, run_compactor,
    run_watch, run_workload,
};
use crate::report::{DiskReport, LoadReport, disk_table};

/// Runs one command line to completion; the error is the message for the user.
pub fn run(cli: Cli) -> Result<(), String> {
    match cli.command {
        Command::Disk(DiskCommand::Fsync(a)) => disk_fsync(&cli.global, &a),
        Command::Disk(DiskCommand::Wal(a)) => disk_wal(&cli.global, &a),
        Command::Compare(a) => crate::compare::run_compare(&cli.global, &a),
        Command::Engine(EngineCommand::Btree(a)) => engine_btree(&cli.global, &a),
        cmd => network(&cli.global, cmd),
    }
}

fn engine_btree(g: &Global, a: &BtreeArgs) -> Result<(), String> {
    let dir = tempfile::Builder::new()
        .prefix("ringkv-bench-btree-")
        .tempdir_in(&a.dir)
        .map_err(|e| format!("temporary directory in {}: {e}", a.dir.display()))?;
    let opts = crate::engine_btree::BtreeOptions {
        keys: a.keys,
        compare: a.compare,
        json: g.json,
        phases: a.phases.clone(),
        load_order: a.load_order,
        interleave: a.interleave,
        early_too: a.early_too,
        append_commits: a.append_commits,
        delta_too: a.delta_too,
        delta_warm: a.delta_warm,
    };
    crate::engine_btree::run(&opts, dir.path())
        .map(|_| ())
        .map_err(|e| e.to_string())
}

fn plan(g: &Global, t: &TotalArgs) -> Result<Plan, String> {
    Plan::new(t.total, g.duration, t.rate)
}

/// Runs one network workload command and prints its report(s).
fn network(g: &Global, cmd: Command) -> Result<(), String> {
    let rt = load::runtime()?;
    let reports = rt.block_on(async {
        let conns = load::connect(g).await?;
        let pids: Vec<u32> = g.server_pid.into_iter().collect();
        let reports: Vec<LoadReport> = match cmd {
            Command::Put(a) => {
                let w = Put {
                    keys: KeyGen::new(&a.keys)?,
                    value: load::value(a.keys.val_size),
                    last_rev: Cell::new(0),
                };
                let running = Cell::new(true);
                let work = async {
                    let r = run_workload("put", &w, g, plan(g, &a.total)?, &conns, &pids).await;
                    running.set(false);
                    r.map(|(report, _)| report)
                };
                if a.compact_interval.is_zero() {
                    vec![work.await?]
                } else {
                    let compactor = run_compactor(
                        conns[0].clone(),
                        &w.last_rev,
                        a.compact_interval,
                        a.compact_index_delta,
                        &running,
                    );
                    let (r, compactions) = tokio::join!(work, compactor);
                    if !g.json {
                        eprintln!("compactions: {compactions}");
                    }
                    vec![r?]
                }
            }
            Command::Range(a) => {
                let w = RangeLoad::new(&a.key, a.end.as_deref(), a.consistency, a.limit);
                vec![
                    run_workload("range", &w, g, plan(g, &a.total)?, &conns, &pids)
                        .await?
                        .0,
                ]
            }
            Command::TxnPut(a) => {
                let w = TxnPut::new(
                    KeyGen::new(&a.keys)?,
                    load::value(a.keys.val_size),
                    a.txn_ops,
                )?;
                vec![
                    run_workload("txn-put", &w, g, plan(g, &a.total)?, &conns, &pids)
                        .await?
                        .0,
                ]
            }
            Command::Mixed(a) => {
                if !(0.0..=1.0).contains(&a.read_ratio) {
                    return Err(format!(
                        "--read-ratio must be between 0 and 1, got {}",
                        a.read_ratio
                    ));
                }
                let w = Mixed {
                    keys: KeyGen::new(&a.keys)?,
                    value: load::value(a.keys.val_size),
                    read_ratio: a.read_ratio,
                    serializable: a.consistency == Consistency::Serializable,
                };
                vec![
                    run_workload("mixed", &w, g, plan(g, &a.total)?, &conns, &pids)
                        .await?
                        .0,
                ]
            }
            Command::LeaseKeepalive(a) => {
                vec![
                    run_workload(
                        "lease-keepalive",
                        &LeaseKeepalive,
                        g,
                        plan(g, &a.total)?,
                        &conns,
                        &pids,
                    )
                    .await?
                    .0,
                ]
            }
            Command::Watch(a) => {
                let p = WatchPlan {
                    streams: a.streams,
                    watchers_per_stream: a.watch_per_stream,
                    keys: a.watched_key_total,
                    put_total: a.put_total,
                    put_rate: a.put_rate,
                    prev_kv: false,
                    key_size: a.key_size,
                    val_size: a.val_size,
                };
                watch_reports("watch", &p, g, &conns).await?
            }
            Command::WatchLatency(a) => {
                let p = WatchPlan {
                    streams: a.streams,
                    watchers_per_stream: a.watchers_per_stream,
                    keys: 1,
                    put_total: a.put_total,
                    put_rate: a.put_rate,
                    prev_kv: a.prevkv,
                    key_size: a.key_size,
                    val_size: a.val_size,
                };
                watch_reports("watch-latency", &p, g, &conns).await?
            }
            Command::Disk(_) | Command::Compare(_) | Command::Engine(_) => {
                unreachable!("dispatched before the network commands")
            }
        };
        Ok::<_, String>(reports)
    })?;
    for r in &reports {
        if g.json {
            print_json(r)?;
        } else {
            print!("{}", r.to_text());
        }
    }
    Ok(())
}

/// Two reports: watcher creation (`<name>-create`, one op per watcher) and event delivery
/// (`<name>`, one op per event received).
async fn watch_reports(
    name: &str,
    p: &WatchPlan,
    g: &Global,
    conns: &[load::EtcdClient],
) -> Result<Vec<LoadReport>, String> {
    let sample_start = g.sample.then(std::time::Instant::now);
    let pids: Vec<u32> = g.server_pid.into_iter().collect();
    let mut meter = None;
    let out = run_watch(p, conns, sample_start, || {
        meter = Some(CpuMeter::start(&pids));
    })
    .await?;
    let meter = meter
        .expect("run_watch calls on_events_start")
        .map_err(|e| format!("--server-pid: {e}"))?;
    let cpu = meter.stop().map_err(|e| format!("--server-pid: {e}"))?;
    let rss = max_peak_rss_bytes(&pids).map_err(|e| format!("--server-pid: {e}"))?;
    let streams = p.streams;
    let create = LoadReport::new(
        &format!("{name}-create"),
        streams,
        conns.len() as u32,
        &out.create,
        out.create_elapsed,
        crate::cpu::CpuUsed {
            client: out.create_cpu,
            server: None,
        },
        None,
        false,
    );
    let events = LoadReport::new(
        name,
        streams,
        conns.len() as u32,
        &out.events,
        out.events_elapsed,
        cpu,
        rss,
        g.sample,
    );
    Ok(vec![create, events])
}

fn seconds(s: f64, flag: &str) -> Result<Duration, String> {
    if !s.is_finite() || s <= 0.0 {
        return Err(format!(
            "{flag} must be a positive number of seconds, got {s}"
        ));
    }
    Ok(Duration::from_secs_f64(s))
}

/// Prints one JSON object on its own line, flushed (so a reader sees it at once).
fn print_json<T: serde::Serialize>(v: &T) -> Result<(), String> {
    let line = serde_json::to_string(v).map_err(|e| format!("cannot encode JSON: {e}"))?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")
        .and_then(|()| out.flush())
        .map_err(|e| format!("cannot write to stdout: {e}"))
}

fn disk_fsync(g: &Global, a: &FsyncArgs) -> Result<(), String> {
    let opts = FsyncOpts {
        dir: a.common.dir.clone(),
        io: parse_io(&a.common.io)?,
        sizes: a.sizes.clone(),
        duration: seconds(a.seconds, "--seconds")?,
        file_bytes: a.file_size,
        parallel: a.parallel,
    };
    if opts.parallel == 0 {
        return Err("--parallel must be at least 1".to_owned());
    }
    if opts.sizes.is_empty() {
        return Err("--sizes needs at least one size".to_owned());
    }
    let rows = disk::run_fsync(&opts)?;
    if g.json {
        rows.iter().try_for_each(print_json)
    } else {
        print!("{}", disk_table(&rows));
        Ok(())
    }
}

/// The engines `disk wal` runs, from `--engines` or `--compare`.
pub fn wal_engines(a: &WalArgs) -> Result<Vec<Engine>, String> {
    if !a.engines.is_empty() {
        return a
            .engines
            .iter()
            .map(|e| Engine::parse(e).map_err(|m| format!("--engines: {m}")))
            .collect();
    }
    Ok(match (a.compare, a.sweep) {
        (true, _) => vec![RINGKV, Engine::RaftEngine, Engine::Raw],
        (false, true) => vec![RINGKV, Engine::Raw],
        (false, false) => vec![RINGKV],
    })
}

fn disk_wal(g: &Global, a: &WalArgs) -> Result<(), String> {
    let engines = wal_engines(a)?;
    let io = parse_io(&a.common.io)?;
    let duration = seconds(a.seconds, "--seconds")?;
    if !a.warmup.is_finite() || a.warmup < 0.0 {
        return Err(format!("--warmup must be ≥ 0 seconds, got {}", a.warmup));
    }
    let warmup = Duration::from_secs_f64(a.warmup);
    if a.writers == 0 {
        return Err("--writers must be at least 1".to_owned());
    }
    if a.record_size == 0 {
        return Err("--record-size must be at least 1 byte".to_owned());
    }
    let cells: Vec<(u32, u64)> = if a.sweep {
        if a.sweep_writers.contains(&0) || a.sweep_sizes.contains(&0) {
            return Err("--sweep-writers and --sweep-sizes must be ≥ 1".to_owned());
        }
        a.sweep_writers
            .iter()
            .flat_map(|&w| a.sweep_sizes.iter().map(move |&s| (w, s)))
            .collect()
    } else {
        vec![(a.writers, a.record_size)]
    };
    let mut rows: Vec<DiskReport> = Vec::new();
    for (i, &(writers, record_size)) in cells.iter().enumerate() {
        if a.sweep && !g.json {
            eprintln!(
                "[{}/{}] writers={writers} record_size={record_size}",
                i + 1,
                cells.len()
            );
        }
        let opts = WalOpts {
            dir: a.common.dir.clone(),
            io,
            writers,
            record_size,
            warmup,
            duration,
            wal_idle_spin: Duration::from_micros(a.wal_idle_spin_us),
            wal_zero_fill_below: match a.wal_zero_fill_below_kib.as_deref() {
                None => None,
                Some("max") => Some(u64::MAX),
                Some(k) => Some(
                    k.parse::<u64>()
                        .map_err(|e| format!("--wal-zero-fill-below-kib {k:?}: {e}"))?
                        .saturating_mul(1024),
                ),
            },
            appenders: disk::parse_appenders(&a.appenders)?,
        };
        for r in disk::run_wal_interleaved(&engines, &opts, a.rounds)? {
            if g.json {
                print_json(&r)?;
            }
            rows.push(r);
        }
    }
    if !g.json {
        print!("{}", disk_table(&rows));
    }
    if a.sweep {
        write_heatmap_svg(&a.svg, &rows)?;
        if !g.json {
            println!("heat map: {}", a.svg.display());
        }
    }
    Ok(())
}

//! Dispatch of the parsed command line, and printing of results.

use std::io::Write as _;
use std::time::Duration;

use crate::cli::{Cli, Command, DiskCommand, FsyncArgs, Global, WalArgs};
use crate::disk::{
    self, Engine, FsyncOpts, SWEEP_RECORD_SIZES, SWEEP_WRITERS, WalOpts, parse_io,
    write_heatmap_svg,
};
use crate::report::{DiskReport, disk_table};

/// Runs one command line to completion; the error is the message for the user.
pub fn run(cli: Cli) -> Result<(), String> {
    match cli.command {
        Command::Disk(DiskCommand::Fsync(a)) => disk_fsync(&cli.global, &a),
        Command::Disk(DiskCommand::Wal(a)) => disk_wal(&cli.global, &a),
        _ => Err("network workloads are not part of this build yet".to_owned()),
    }
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
    };
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
            .map(|e| match e.as_str() {
                "ringkv" => Ok(Engine::Ringkv),
                "raft-engine" => Ok(Engine::RaftEngine),
                "raw" => Ok(Engine::Raw),
                _ => Err(format!(
                    "unknown engine {e:?} in --engines: expected ringkv, raft-engine or raw"
                )),
            })
            .collect();
    }
    Ok(match (a.compare, a.sweep) {
        (true, _) => vec![Engine::Ringkv, Engine::RaftEngine, Engine::Raw],
        (false, true) => vec![Engine::Ringkv, Engine::Raw],
        (false, false) => vec![Engine::Ringkv],
    })
}

fn disk_wal(g: &Global, a: &WalArgs) -> Result<(), String> {
    let engines = wal_engines(a)?;
    let io = parse_io(&a.common.io)?;
    let duration = seconds(a.seconds, "--seconds")?;
    if a.writers == 0 {
        return Err("--writers must be at least 1".to_owned());
    }
    if a.record_size == 0 {
        return Err("--record-size must be at least 1 byte".to_owned());
    }
    let cells: Vec<(u32, u64)> = if a.sweep {
        SWEEP_WRITERS
            .iter()
            .flat_map(|&w| SWEEP_RECORD_SIZES.iter().map(move |&s| (w, s)))
            .collect()
    } else {
        vec![(a.writers, a.record_size)]
    };
    let mut rows: Vec<DiskReport> = Vec::new();
    for (i, &(writers, record_size)) in cells.iter().enumerate() {
        for &engine in &engines {
            if a.sweep && !g.json {
                eprintln!(
                    "[{}/{}] {} writers={writers} record_size={record_size}",
                    i + 1,
                    cells.len(),
                    engine.name()
                );
            }
            let opts = WalOpts {
                dir: a.common.dir.clone(),
                io,
                writers,
                record_size,
                duration,
            };
            let r = disk::run_wal(engine, &opts)?;
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

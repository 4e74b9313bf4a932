//! `ringkv-util`: offline inspection of a ringkv data directory (the node must be stopped).
//!
//! - `check DIR`: reads everything the node would read at start (snapshot metadata, the WAL, the
//!   backend file), with the node's own checks, and the rules that tie them together; writes
//!   nothing except what opening the backend writes after a crash (see `inspect::backend`).
//!   Exit status 0 when healthy, 1 when anything is wrong; each problem names its file and
//!   offset (or page).
//! - `wal dump DIR`: one line per WAL record, in replay order.
//! - `backend stat DIR`: the backend's pages, buckets and MVCC position.
//!
//! Repair is not offered: a torn WAL tail and an interrupted backend commit are already repaired
//! by the node at start; anything else is corruption the operator must see, not have removed.

mod inspect;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "ringkv-util",
    version,
    about = "Offline inspection of a ringkv data directory"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Checks snapshots, WAL and backend of a stopped member's data directory.
    Check {
        /// The member's `--data-dir`.
        data_dir: PathBuf,
    },
    /// WAL tools.
    Wal {
        #[command(subcommand)]
        command: WalCommand,
    },
    /// Backend (B+tree file) tools.
    Backend {
        #[command(subcommand)]
        command: BackendCommand,
    },
}

#[derive(Subcommand)]
enum WalCommand {
    /// Prints every record: segment, offset, kind and its fields.
    Dump {
        /// The member's `--data-dir`.
        data_dir: PathBuf,
    },
}

#[derive(Subcommand)]
enum BackendCommand {
    /// Prints the backend's pages, key counts per bucket and MVCC position.
    Stat {
        /// The member's `--data-dir`.
        data_dir: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let out = &mut std::io::stdout().lock();
    let result = match cli.command {
        Command::Check { data_dir } => inspect::check(&data_dir, out),
        Command::Wal {
            command: WalCommand::Dump { data_dir },
        } => inspect::wal_dump(&data_dir, out),
        Command::Backend {
            command: BackendCommand::Stat { data_dir },
        } => inspect::backend_stat(&data_dir, out),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("ringkv-util: {e}");
            ExitCode::from(1)
        }
    }
}

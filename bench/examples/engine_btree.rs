//! Runs the backend benchmark until `ringkv-bench engine btree` wires it in:
//! `cargo run --release -p ringkv-bench --example engine_btree -- [--keys N] [--compare] [--json]`
//! Data goes to a temporary directory under `$TMPDIR` (default /tmp), removed at exit.

#[path = "../src/engine_btree.rs"]
mod engine_btree;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut opts = engine_btree::BtreeOptions::default();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--keys" => opts.keys = args.next().ok_or("--keys needs a number")?.parse()?,
            "--compare" => opts.compare = true,
            "--json" => opts.json = true,
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    let dir = tempfile::tempdir()?;
    engine_btree::run(&opts, dir.path())?;
    Ok(())
}

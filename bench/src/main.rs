use clap::Parser;

/// The node's allocator (net/src/main.rs), so that `engine btree` measures the backend as the
/// node runs it: under glibc's malloc a 1-key commit after the 1M-key bulk load spent most of
/// its CPU in `malloc_consolidate` (BENCHMARKS.md, "Backend: bitmap freelist").
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[path = "../../net/src/keep_memory.rs"]
mod keep_memory;

use keep_memory::allocator_keep_memory;

fn main() {
    allocator_keep_memory();
    let cli = ringkv_bench::Cli::parse();
    if let Err(e) = ringkv_bench::run(cli) {
        eprintln!("ringkv-bench: {e}");
        std::process::exit(1);
    }
}

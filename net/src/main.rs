/// The process allocator. glibc's malloc cost ~20% of the front end's CPU under 1000 clients
/// (its arena locks and chunk consolidation, in `perf`); BENCHMARKS.md "front" has the
/// measurement.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod keep_memory;

use keep_memory::allocator_keep_memory;

fn main() {
    allocator_keep_memory();
    if let Err(e) = ringkv_net::run() {
        eprintln!("{e}");
        std::process::exit(1);
    }
}

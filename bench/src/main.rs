use clap::Parser;

/// The node's allocator (net/src/main.rs), so that `engine btree` measures the backend as the
/// node runs it: under glibc's malloc a 1-key commit after the 1M-key bulk load spent most of
/// its CPU in `malloc_consolidate` (BENCHMARKS.md, "Backend: bitmap freelist").
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` in mimalloc v3's `mi_option_t` (the same index as net/src/main.rs;
/// the test below checks it by its v3 default, 1000 ms).
const MI_OPTION_PURGE_DELAY: std::ffi::c_int = 15;

unsafe extern "C" {
    fn mi_option_set(option: std::ffi::c_int, value: std::ffi::c_long);
    #[cfg(test)]
    fn mi_option_get(option: std::ffi::c_int) -> std::ffi::c_long;
}

/// Turns mimalloc's purging off, as the node does (net/src/main.rs). With purging on, memory an
/// engine freed more than the purge delay ago is returned to the kernel and its next commit
/// faults it in again as zeroed 2 MiB huge pages: under `engine btree --interleave` that cost
/// ringkv's 10,000-key revision append ~11-13 ms of `clear_page_erms` per commit (its
/// allocations are freed and made again every commit, while the other engines' slices let the
/// delay run out), which the node never pays (BENCHMARKS.md, "rev9").
fn allocator_keep_memory() {
    // SAFETY: mi_option_set only stores the value in mimalloc's option table (an atomic
    // store); the index is a valid option of the linked mimalloc (checked by the test).
    unsafe { mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
}

fn main() {
    allocator_keep_memory();
    let cli = ringkv_bench::Cli::parse();
    if let Err(e) = ringkv_bench::run(cli) {
        eprintln!("ringkv-bench: {e}");
        std::process::exit(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn purge_delay_index_names_the_purge_delay_option() {
        // SAFETY: reads mimalloc's option table.
        let before = unsafe { mi_option_get(MI_OPTION_PURGE_DELAY) };
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
            assert_eq!(before, 1000, "mimalloc v3's default purge delay is 1000 ms");
        }
        allocator_keep_memory();
        // SAFETY: as above.
        assert_eq!(unsafe { mi_option_get(MI_OPTION_PURGE_DELAY) }, -1);
    }
}

//! mimalloc with purging off, shared by the two binaries that run the backend: `ringkv`
//! (net/src/main.rs) and `ringkv-bench` (bench/src/main.rs includes this file by path, so that
//! `engine btree` measures the backend under the node's allocator settings).
//!
//! With purging on, memory freed more than the purge delay ago is returned to the kernel and
//! faulted in again, zeroed, as 2 MiB transparent huge pages. Under 1000 clients writing, that
//! zeroing (`clear_page_erms`) was 13 % of the server's samples (BENCHMARKS.md "put", session 4);
//! under `engine btree --interleave` it cost each 10,000-key revision append ~11–13 ms
//! (BENCHMARKS.md, "rev9"). The cost: the resident set does not shrink after a peak.

/// `mi_option_purge_delay` in mimalloc v3's `mi_option_t` (include/mimalloc.h of the copy
/// libmimalloc-sys 0.1.49 builds; its `v2` feature, which numbers options differently, is off).
/// The test below checks the index by its v3 default (1000 ms).
const MI_OPTION_PURGE_DELAY: std::ffi::c_int = 15;

unsafe extern "C" {
    fn mi_option_set(option: std::ffi::c_int, value: std::ffi::c_long);
    #[cfg(test)]
    fn mi_option_get(option: std::ffi::c_int) -> std::ffi::c_long;
}

/// Turns mimalloc's purging off: freed memory stays mapped and is reused.
pub(crate) fn allocator_keep_memory() {
    // SAFETY: mi_option_set only stores the value in mimalloc's option table (an atomic
    // store); the index is a valid option of the linked mimalloc (checked by the test).
    unsafe { mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
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

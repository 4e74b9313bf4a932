//! Fuzzes the backend's page decoder: arbitrary bytes, read as the run of page 7 with a page
//! size chosen by the first byte, must be rejected with a `PageError` or decoded without a panic.
//! Run: `cd engine/fuzz && cargo +nightly fuzz run page_decoder -- -max_total_time=60`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&sel, bytes)) = data.split_first() else {
        return;
    };
    let page_size = ringkv_engine::MIN_PAGE_SIZE << (sel % 5);
    let _ = ringkv_engine::decode_page(bytes, 7, page_size);
    // Pad to whole pages and fix up id, run length and checksum (layout: engine/docs/format.md,
    // "Run header"), so the structural checks behind the checksum are reached too.
    let mut run = bytes.to_vec();
    let pages = bytes.len().div_ceil(page_size).max(1);
    run.resize(pages * page_size, 0);
    run[8..16].copy_from_slice(&7u64.to_le_bytes());
    run[16..20].copy_from_slice(&(pages as u32 - 1).to_le_bytes());
    let sum = crc32c::crc32c(&run[4..]);
    run[0..4].copy_from_slice(&sum.to_le_bytes());
    let _ = ringkv_engine::decode_page(&run, 7, page_size);
});

//! The two meta pages (pages 0 and 1). Commit `txid` writes its meta to page `txid % 2`; open
//! uses the valid meta with the highest txid whose commit verifies (db.rs, `verify_commit`).
//! Layout in `engine/docs/format.md`, "Backend file".

use super::page::{MAX_PAGE_SIZE, MIN_PAGE_SIZE, get_u32, get_u64, put_u32, put_u64};

/// `RINGKVDB`: identifies a backend file.
pub(crate) const MAGIC: [u8; 8] = *b"RINGKVDB";

/// Format version 1: the first version (page header with per-run CRC32C, overflow runs, freelist
/// with pending entries tagged by the txid that freed them).
pub const FORMAT_V1: u32 = 1;
/// Format version 2: the one-fsync commit. The meta gains `freelist_checksum` (the CRC32C the
/// freelist run must carry) and the freelist run lists every run the commit wrote with its
/// checksum, so open can tell a complete commit from a torn one. Pages are unchanged.
pub(crate) const FORMAT_V2: u32 = 2;
/// The version this build writes. It reads v1 and v2 metas (a v1 file gains v2 metas as it is
/// written; both slots may differ in version).
pub const FORMAT_VERSION: u32 = FORMAT_V2;
/// Format version 3 (issue 3, session 9, `BackendOptions::delta_log`): the v2 meta plus
/// `delta_head`, the newest delta run (delta.rs). Written only while the delta log holds runs,
/// so a file whose log is empty keeps v2 metas. The v2 checksum stays where it was and covers
/// the v2 fields, so a build that reads only v1 and v2 verifies it and then refuses the file
/// with "unsupported format version 3"; a second checksum covers the whole v3 meta.
pub(crate) const FORMAT_V3: u32 = 3;

pub(crate) const MAGIC_OFFSET: usize = 0;
pub(crate) const VERSION_OFFSET: usize = MAGIC_OFFSET + MAGIC.len();
pub(crate) const PAGE_SIZE_OFFSET: usize = VERSION_OFFSET + size_of::<u32>();
pub(crate) const TXID_OFFSET: usize = PAGE_SIZE_OFFSET + size_of::<u32>();
pub(crate) const CATALOG_OFFSET: usize = TXID_OFFSET + size_of::<u64>();
pub(crate) const FREELIST_OFFSET: usize = CATALOG_OFFSET + size_of::<u64>();
pub(crate) const PAGE_COUNT_OFFSET: usize = FREELIST_OFFSET + size_of::<u64>();
/// v1 only: the checksum follows `page_count`.
pub(crate) const V1_META_CHECKSUM_OFFSET: usize = PAGE_COUNT_OFFSET + size_of::<u64>();
/// v2: the freelist run's expected checksum follows `page_count`, then the meta checksum.
pub(crate) const FREELIST_CHECKSUM_OFFSET: usize = PAGE_COUNT_OFFSET + size_of::<u64>();
pub(crate) const META_CHECKSUM_OFFSET: usize = FREELIST_CHECKSUM_OFFSET + size_of::<u32>();
pub(crate) const META_LEN: usize = META_CHECKSUM_OFFSET + size_of::<u32>();
/// v3: `delta_head` follows the v2 checksum, then the checksum of everything before it.
pub(crate) const DELTA_HEAD_OFFSET: usize = META_LEN;
pub(crate) const V3_CHECKSUM_OFFSET: usize = DELTA_HEAD_OFFSET + size_of::<u64>();
pub(crate) const V3_META_LEN: usize = V3_CHECKSUM_OFFSET + size_of::<u32>();

/// One committed state: everything a reader needs to find the data of transaction `txid`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Meta {
    pub page_size: u32,
    pub txid: u64,
    /// Root page of the bucket catalog tree (bucket name -> root page id), 0 = no buckets.
    pub catalog: u64,
    /// First page of the freelist run, 0 = none.
    pub freelist: u64,
    /// Pages in use or free: ids `[0, page_count)`. The file is at least this long.
    pub page_count: u64,
    /// The version this meta was written with (`FORMAT_V1`, `FORMAT_V2` or `FORMAT_V3`).
    pub version: u32,
    /// v2: the CRC32C stored in the header of the freelist run at `freelist` (0 for v1 metas).
    /// The run lists every run this commit wrote with its checksum (format.md, "Commit").
    pub freelist_checksum: u32,
    /// v3: first page of the newest delta run (delta.rs), 0 = the delta log is empty (and the
    /// meta is written as v2).
    pub delta_head: u64,
}

impl Meta {
    /// Encodes into a full page in the layout of `self.version` (commits write v2; a v1 meta is
    /// written only as the copy of one, see db.rs `Backend::open`).
    // Format: { magic [8] | version u32 | page_size u32 | txid u64 | catalog u64 | freelist u64 |
    //   page_count u64 | freelist_checksum u32 (v2, v3) | checksum u32 (CRC32C of the
    //   preceding bytes) | delta_head u64 (v3) | v3_checksum u32 (v3: CRC32C of the preceding
    //   bytes) | zero padding }
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut page = vec![0u8; self.page_size as usize];
        page[MAGIC_OFFSET..VERSION_OFFSET].copy_from_slice(&MAGIC);
        put_u32(&mut page, VERSION_OFFSET, self.version);
        put_u32(&mut page, PAGE_SIZE_OFFSET, self.page_size);
        put_u64(&mut page, TXID_OFFSET, self.txid);
        put_u64(&mut page, CATALOG_OFFSET, self.catalog);
        put_u64(&mut page, FREELIST_OFFSET, self.freelist);
        put_u64(&mut page, PAGE_COUNT_OFFSET, self.page_count);
        let sum_at = if self.version == FORMAT_V1 {
            V1_META_CHECKSUM_OFFSET
        } else {
            put_u32(&mut page, FREELIST_CHECKSUM_OFFSET, self.freelist_checksum);
            META_CHECKSUM_OFFSET
        };
        let sum = crc32c::crc32c(&page[..sum_at]);
        put_u32(&mut page, sum_at, sum);
        if self.version == FORMAT_V3 {
            put_u64(&mut page, DELTA_HEAD_OFFSET, self.delta_head);
            let sum = crc32c::crc32c(&page[..V3_CHECKSUM_OFFSET]);
            put_u32(&mut page, V3_CHECKSUM_OFFSET, sum);
        }
        page
    }

    /// Decodes and checks a meta page; the error says what was wrong.
    pub(crate) fn decode(b: &[u8]) -> Result<Meta, String> {
        if b.len() < META_LEN {
            return Err(format!("meta page truncated to {} bytes", b.len()));
        }
        if b[MAGIC_OFFSET..VERSION_OFFSET] != MAGIC {
            return Err("bad magic (not a ringkv backend file)".into());
        }
        // The version is read before the checksum is verified (its position decides where the
        // checksum is); a damaged version byte fails the checksum at either position.
        let version = get_u32(b, VERSION_OFFSET);
        let sum_at = match version {
            FORMAT_V1 => V1_META_CHECKSUM_OFFSET,
            _ => META_CHECKSUM_OFFSET,
        };
        let stored = get_u32(b, sum_at);
        let actual = crc32c::crc32c(&b[..sum_at]);
        if stored != actual {
            return Err(format!(
                "meta checksum mismatch: stored {stored:#010x}, computed {actual:#010x}"
            ));
        }
        if !(FORMAT_V1..=FORMAT_V3).contains(&version) {
            return Err(format!(
                "unsupported format version {version} (this build reads {FORMAT_V1} to {FORMAT_V3})"
            ));
        }
        let mut delta_head = 0;
        if version == FORMAT_V3 {
            if b.len() < V3_META_LEN {
                return Err(format!("v3 meta page truncated to {} bytes", b.len()));
            }
            let stored = get_u32(b, V3_CHECKSUM_OFFSET);
            let actual = crc32c::crc32c(&b[..V3_CHECKSUM_OFFSET]);
            if stored != actual {
                return Err(format!(
                    "v3 meta checksum mismatch: stored {stored:#010x}, computed {actual:#010x}"
                ));
            }
            delta_head = get_u64(b, DELTA_HEAD_OFFSET);
        }
        let page_size = get_u32(b, PAGE_SIZE_OFFSET);
        if !(MIN_PAGE_SIZE..=MAX_PAGE_SIZE).contains(&(page_size as usize))
            || !page_size.is_power_of_two()
        {
            return Err(format!("unsupported page size {page_size}"));
        }
        let m = Meta {
            page_size,
            txid: get_u64(b, TXID_OFFSET),
            catalog: get_u64(b, CATALOG_OFFSET),
            freelist: get_u64(b, FREELIST_OFFSET),
            page_count: get_u64(b, PAGE_COUNT_OFFSET),
            version,
            freelist_checksum: if version == FORMAT_V1 {
                0
            } else {
                get_u32(b, FREELIST_CHECKSUM_OFFSET)
            },
            delta_head,
        };
        if m.page_count < 2 {
            return Err(format!(
                "page count {} leaves no room for the meta pages",
                m.page_count
            ));
        }
        // Every v2 commit writes a freelist run (it lists the commit's pages); only the metas of
        // a new, empty file have none.
        if version != FORMAT_V1 && m.freelist == 0 && (m.catalog != 0 || m.page_count != 2) {
            return Err("v2 meta of a non-empty file without a freelist run".into());
        }
        if version == FORMAT_V3 && (m.delta_head == 0 || m.freelist == 0) {
            return Err("v3 meta without a delta run or freelist run".into());
        }
        for (what, id) in [
            ("catalog", m.catalog),
            ("freelist", m.freelist),
            ("delta head", m.delta_head),
        ] {
            if id == 1 || (id != 0 && id >= m.page_count) {
                return Err(format!("{what} page {id} outside [2, {})", m.page_count));
            }
        }
        Ok(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meta_round_trip_and_damage() {
        let m = Meta {
            page_size: 4096,
            txid: 42,
            catalog: 7,
            freelist: 9,
            page_count: 12,
            version: FORMAT_V2,
            freelist_checksum: 0xdead_beef,
            delta_head: 0,
        };
        let page = m.encode();
        assert_eq!(META_LEN, 56);
        assert_eq!(Meta::decode(&page).unwrap(), m);
        let mut bad = page.clone();
        bad[TXID_OFFSET] ^= 4;
        assert!(Meta::decode(&bad).unwrap_err().contains("checksum"));
        let mut bad = page.clone();
        bad[0] = b'X';
        assert!(Meta::decode(&bad).unwrap_err().contains("magic"));
        let mut bad = page;
        bad[FREELIST_CHECKSUM_OFFSET] ^= 1;
        assert!(Meta::decode(&bad).unwrap_err().contains("checksum"));
    }

    #[test]
    fn v3_meta_round_trips_and_v2_readers_refuse_it_by_version() {
        let m = Meta {
            page_size: 4096,
            txid: 43,
            catalog: 7,
            freelist: 9,
            page_count: 12,
            version: FORMAT_V3,
            freelist_checksum: 0xdead_beef,
            delta_head: 11,
        };
        let page = m.encode();
        assert_eq!(V3_META_LEN, 68);
        assert_eq!(Meta::decode(&page).unwrap(), m);
        // A v2 reader checks the checksum at META_CHECKSUM_OFFSET (valid here), then the version.
        let v2_sum = crc32c::crc32c(&page[..META_CHECKSUM_OFFSET]);
        assert_eq!(get_u32(&page, META_CHECKSUM_OFFSET), v2_sum);
        let mut bad = page.clone();
        bad[DELTA_HEAD_OFFSET] ^= 1;
        assert!(Meta::decode(&bad).unwrap_err().contains("v3 meta checksum"));
        let mut bad = page;
        put_u32(&mut bad, VERSION_OFFSET, 4);
        let sum = crc32c::crc32c(&bad[..META_CHECKSUM_OFFSET]);
        put_u32(&mut bad, META_CHECKSUM_OFFSET, sum);
        assert!(
            Meta::decode(&bad)
                .unwrap_err()
                .contains("unsupported format version 4")
        );
    }

    #[test]
    fn v1_meta_still_decodes() {
        // A v1 meta: the checksum directly after page_count.
        let mut page = vec![0u8; 4096];
        page[..8].copy_from_slice(&MAGIC);
        put_u32(&mut page, VERSION_OFFSET, FORMAT_V1);
        put_u32(&mut page, PAGE_SIZE_OFFSET, 4096);
        put_u64(&mut page, TXID_OFFSET, 5);
        put_u64(&mut page, CATALOG_OFFSET, 3);
        put_u64(&mut page, FREELIST_OFFSET, 0);
        put_u64(&mut page, PAGE_COUNT_OFFSET, 4);
        let sum = crc32c::crc32c(&page[..V1_META_CHECKSUM_OFFSET]);
        put_u32(&mut page, V1_META_CHECKSUM_OFFSET, sum);
        let m = Meta::decode(&page).unwrap();
        assert_eq!(
            (m.version, m.txid, m.catalog, m.freelist_checksum),
            (FORMAT_V1, 5, 3, 0)
        );
        assert_eq!(m.encode(), page, "a v1 meta re-encodes byte for byte");
    }
}

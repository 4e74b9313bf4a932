//! Page layouts of the backend file: the common page header, branch and leaf nodes, overflow
//! runs and freelist runs. The prose and byte diagrams are in `engine/docs/format.md`, section
//! "Backend file"; the constants below are the same layout, built by chaining.
//!
//! A *run* is one page or several contiguous pages written and checksummed as a unit: page `id`
//! plus `overflow` continuation pages. Nodes always fit one page; overflow values and the
//! freelist may span several.
//!
//! Every page read goes through [`validate_run`] once (checksum, id, type, and the structure of
//! the node: element table and data inside the run, keys strictly ascending); after that the
//! accessors of [`NodeView`] index without further checks, because validation established
//! every bound they rely on.

use std::cmp::Ordering;
use std::fmt;

/// Integers in pages are little-endian fixed width (STYLE.md item 3); no sort order is needed on
/// disk, keys are compared as byte strings.
pub(crate) fn get_u16(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes([b[off], b[off + 1]])
}
pub(crate) fn get_u32(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().expect("4 bytes"))
}
pub(crate) fn get_u64(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().expect("8 bytes"))
}
pub(crate) fn put_u16(b: &mut [u8], off: usize, v: u16) {
    b[off..off + 2].copy_from_slice(&v.to_le_bytes());
}
pub(crate) fn put_u32(b: &mut [u8], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_le_bytes());
}
pub(crate) fn put_u64(b: &mut [u8], off: usize, v: u64) {
    b[off..off + 8].copy_from_slice(&v.to_le_bytes());
}

// Page header, at the start of every non-meta run.
pub(crate) const CHECKSUM_OFFSET: usize = 0;
pub(crate) const TYPE_OFFSET: usize = CHECKSUM_OFFSET + size_of::<u32>();
pub(crate) const FLAGS_OFFSET: usize = TYPE_OFFSET + size_of::<u8>();
pub(crate) const COUNT_OFFSET: usize = FLAGS_OFFSET + size_of::<u8>();
pub(crate) const ID_OFFSET: usize = COUNT_OFFSET + size_of::<u16>();
pub(crate) const OVERFLOW_OFFSET: usize = ID_OFFSET + size_of::<u64>();
pub(crate) const RESERVED_OFFSET: usize = OVERFLOW_OFFSET + size_of::<u32>();
pub(crate) const HEADER_LEN: usize = RESERVED_OFFSET + size_of::<u32>();

// Leaf element, `count` of them right after the header.
pub(crate) const LEAF_FLAGS_OFFSET: usize = 0;
pub(crate) const LEAF_RESERVED_OFFSET: usize = LEAF_FLAGS_OFFSET + size_of::<u8>();
pub(crate) const LEAF_KEY_LEN_OFFSET: usize = LEAF_RESERVED_OFFSET + size_of::<u8>();
pub(crate) const LEAF_VAL_LEN_OFFSET: usize = LEAF_KEY_LEN_OFFSET + size_of::<u16>();
pub(crate) const LEAF_DATA_OFFSET: usize = LEAF_VAL_LEN_OFFSET + size_of::<u32>();
pub(crate) const LEAF_ELEM_LEN: usize = LEAF_DATA_OFFSET + size_of::<u32>();
/// Leaf element flag: the value lives in an overflow run; the data holds its page id.
pub(crate) const LEAF_FLAG_OVERFLOW: u8 = 1;

// Branch element, `count` of them right after the header.
pub(crate) const BRANCH_KEY_LEN_OFFSET: usize = 0;
pub(crate) const BRANCH_RESERVED_OFFSET: usize = BRANCH_KEY_LEN_OFFSET + size_of::<u16>();
pub(crate) const BRANCH_DATA_OFFSET: usize = BRANCH_RESERVED_OFFSET + size_of::<u16>();
pub(crate) const BRANCH_CHILD_OFFSET: usize = BRANCH_DATA_OFFSET + size_of::<u32>();
pub(crate) const BRANCH_ELEM_LEN: usize = BRANCH_CHILD_OFFSET + size_of::<u64>();

// Freelist run body, right after the header.
pub(crate) const FREE_COUNT_OFFSET: usize = HEADER_LEN;
pub(crate) const PENDING_COUNT_OFFSET: usize = FREE_COUNT_OFFSET + size_of::<u64>();
pub(crate) const FREE_IDS_OFFSET: usize = PENDING_COUNT_OFFSET + size_of::<u64>();
/// A pending freelist entry: `{ page id u64, freed by txid u64 }`.
pub(crate) const PENDING_ENTRY_LEN: usize = 2 * size_of::<u64>();
/// Freelist run flag (format v2): a written list follows the pending entries:
/// `written_count u64`, then `written_count` entries `{ page id u64, checksum u32, pages u32 }`.
pub(crate) const FREELIST_FLAG_WRITTEN: u8 = 1;
/// Freelist run flag (issue 3, session 4): the free pages are a bitmap instead of a list of ids.
/// In place of the ids: `bitmap_start u64`, `bitmap_words u64`, then `bitmap_words` u64 words;
/// bit `b` (least significant first) of word `w` set = page `bitmap_start + 64w + b` is free.
/// The encoder picks whichever of the two forms is smaller.
pub(crate) const FREELIST_FLAG_BITMAP: u8 = 2;
pub(crate) const BITMAP_START_OFFSET: usize = FREE_IDS_OFFSET;
pub(crate) const BITMAP_WORDS_OFFSET: usize = BITMAP_START_OFFSET + size_of::<u64>();
pub(crate) const BITMAP_OFFSET: usize = BITMAP_WORDS_OFFSET + size_of::<u64>();
pub(crate) const WRITTEN_COUNT_LEN: usize = size_of::<u64>();
pub(crate) const WRITTEN_ID_OFFSET: usize = 0;
pub(crate) const WRITTEN_CHECKSUM_OFFSET: usize = WRITTEN_ID_OFFSET + size_of::<u64>();
pub(crate) const WRITTEN_PAGES_OFFSET: usize = WRITTEN_CHECKSUM_OFFSET + size_of::<u32>();
pub(crate) const WRITTEN_ENTRY_LEN: usize = WRITTEN_PAGES_OFFSET + size_of::<u32>();

/// One run written by a commit, as listed in its freelist run (format v2): where, how long, and
/// the checksum its header must hold when the commit is complete on disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Written {
    pub id: u64,
    pub checksum: u32,
    pub pages: u32,
}

/// Smallest and largest supported page sizes (powers of two). Offsets inside a page are u32 and
/// element counts u16; 64 KiB pages hold at most ~5,000 leaf elements, well under u16::MAX.
pub const MIN_PAGE_SIZE: usize = 4096;
pub const MAX_PAGE_SIZE: usize = 65536;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PageType {
    Branch = 1,
    Leaf = 2,
    Overflow = 3,
    Freelist = 4,
    /// A delta run of the delta log (delta.rs; format v3).
    Delta = 5,
}

impl PageType {
    fn from_u8(v: u8) -> Option<PageType> {
        match v {
            1 => Some(PageType::Branch),
            2 => Some(PageType::Leaf),
            3 => Some(PageType::Overflow),
            4 => Some(PageType::Freelist),
            5 => Some(PageType::Delta),
            _ => None,
        }
    }
}

/// What was wrong with a page; the backend adds the file name and offset.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PageError {
    pub page: u64,
    pub reason: String,
}

impl fmt::Display for PageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "page {}: {}", self.page, self.reason)
    }
}

fn err(page: u64, reason: impl Into<String>) -> PageError {
    PageError {
        page,
        reason: reason.into(),
    }
}

/// The largest key the backend accepts for a page size. Keeps at least four branch elements per
/// page, so a split always has two non-empty halves.
pub fn max_key_len(page_size: usize) -> usize {
    page_size / 4 - BRANCH_ELEM_LEN
}

/// Largest leaf element (element header + key + inline value) stored inline; larger values go
/// to an overflow run. At most half a page, so a leaf always holds two elements.
pub(crate) fn max_inline_elem(page_size: usize) -> usize {
    (page_size - HEADER_LEN) / 2
}

/// Number of pages of a run whose body (after the header) is `body` bytes.
pub(crate) fn run_pages(page_size: usize, body: usize) -> u64 {
    (HEADER_LEN + body).div_ceil(page_size) as u64
}

/// CRC32C of a run: every byte after the checksum field.
pub(crate) fn run_checksum(run: &[u8]) -> u32 {
    crc32c::crc32c(&run[TYPE_OFFSET..])
}

/// Reads `(type, count, id, overflow)` from a header without checking anything.
pub(crate) fn header_overflow(page: &[u8]) -> u32 {
    get_u32(page, OVERFLOW_OFFSET)
}

/// Checks a run read from page `id`: length, checksum, id, type, and (for nodes and freelists)
/// that the structure lies inside the run. Never panics, whatever the bytes (fuzzed).
pub fn validate_run(
    run: &[u8],
    id: u64,
    page_size: usize,
    expect: Option<PageType>,
) -> Result<(), PageError> {
    if run.len() < page_size || !run.len().is_multiple_of(page_size) || page_size < HEADER_LEN {
        return Err(err(
            id,
            format!(
                "run length {} is not a positive multiple of the page size {page_size}",
                run.len()
            ),
        ));
    }
    let overflow = get_u32(run, OVERFLOW_OFFSET) as usize;
    if (overflow + 1) * page_size != run.len() {
        return Err(err(
            id,
            format!(
                "header says {} continuation pages, run has {}",
                overflow,
                run.len() / page_size - 1
            ),
        ));
    }
    let stored = get_u32(run, CHECKSUM_OFFSET);
    let actual = run_checksum(run);
    if stored != actual {
        return Err(err(
            id,
            format!("checksum mismatch: stored {stored:#010x}, computed {actual:#010x}"),
        ));
    }
    let on_page = get_u64(run, ID_OFFSET);
    if on_page != id {
        return Err(err(id, format!("page id mismatch: page says {on_page}")));
    }
    let Some(ty) = PageType::from_u8(run[TYPE_OFFSET]) else {
        return Err(err(id, format!("unknown page type {}", run[TYPE_OFFSET])));
    };
    if let Some(want) = expect
        && want != ty
    {
        return Err(err(id, format!("page type {ty:?}, expected {want:?}")));
    }
    let count = get_u16(run, COUNT_OFFSET) as usize;
    match ty {
        PageType::Branch | PageType::Leaf => {
            if overflow != 0 {
                return Err(err(id, "node page with continuation pages"));
            }
            if count == 0 {
                return Err(err(id, "node with no elements"));
            }
            let view = NodeView {
                page: run,
                ty,
                count,
            };
            let elem = if ty == PageType::Leaf {
                LEAF_ELEM_LEN
            } else {
                BRANCH_ELEM_LEN
            };
            let table_end = HEADER_LEN + count * elem;
            if table_end > run.len() {
                return Err(err(id, format!("{count} elements do not fit the page")));
            }
            let mut prev: Option<&[u8]> = None;
            for i in 0..count {
                let e = HEADER_LEN + i * elem;
                let (data_off, data_len) = if ty == PageType::Leaf {
                    let key_len = get_u16(run, e + LEAF_KEY_LEN_OFFSET) as usize;
                    let val_len = get_u32(run, e + LEAF_VAL_LEN_OFFSET) as usize;
                    let flags = run[e + LEAF_FLAGS_OFFSET];
                    let stored = match flags {
                        0 => val_len,
                        LEAF_FLAG_OVERFLOW => size_of::<u64>(),
                        f => return Err(err(id, format!("element {i}: unknown flags {f:#x}"))),
                    };
                    (
                        get_u32(run, e + LEAF_DATA_OFFSET) as usize,
                        key_len + stored,
                    )
                } else {
                    let key_len = get_u16(run, e + BRANCH_KEY_LEN_OFFSET) as usize;
                    (get_u32(run, e + BRANCH_DATA_OFFSET) as usize, key_len)
                };
                if data_off < table_end
                    || data_off
                        .checked_add(data_len)
                        .is_none_or(|end| end > run.len())
                {
                    return Err(err(
                        id,
                        format!("element {i}: data at {data_off}+{data_len} outside the page"),
                    ));
                }
                let key = view.key(i);
                if let Some(p) = prev
                    && p >= key
                {
                    return Err(err(id, format!("element {i}: keys not strictly ascending")));
                }
                prev = Some(key);
                if ty == PageType::Branch && view.child(i) < 2 {
                    return Err(err(
                        id,
                        format!(
                            "element {i}: child page id {} is a meta page",
                            view.child(i)
                        ),
                    ));
                }
            }
        }
        PageType::Overflow => {}
        PageType::Freelist => {
            if run.len() < FREE_IDS_OFFSET {
                return Err(err(id, "freelist header does not fit"));
            }
            let flags = run[FLAGS_OFFSET];
            if flags & !(FREELIST_FLAG_WRITTEN | FREELIST_FLAG_BITMAP) != 0 {
                return Err(err(
                    id,
                    format!("freelist run with unknown flags {flags:#x}"),
                ));
            }
            let free = get_u64(run, FREE_COUNT_OFFSET);
            let pending = get_u64(run, PENDING_COUNT_OFFSET);
            let free_end = if flags & FREELIST_FLAG_BITMAP != 0 {
                if run.len() < BITMAP_OFFSET {
                    return Err(err(id, "freelist bitmap header does not fit"));
                }
                let start = get_u64(run, BITMAP_START_OFFSET);
                let words = get_u64(run, BITMAP_WORDS_OFFSET);
                let end = words
                    .checked_mul(8)
                    .and_then(|n| n.checked_add(BITMAP_OFFSET as u64))
                    .filter(|&e| e <= run.len() as u64);
                let Some(end) = end else {
                    return Err(err(
                        id,
                        format!("freelist bitmap of {words} words does not fit its run"),
                    ));
                };
                if words
                    .checked_mul(64)
                    .and_then(|b| start.checked_add(b))
                    .is_none()
                {
                    return Err(err(id, "freelist bitmap runs past the largest page id"));
                }
                let set: u64 = run[BITMAP_OFFSET..end as usize]
                    .chunks_exact(8)
                    .map(|w| u64::from_le_bytes(w.try_into().expect("8 bytes")).count_ones() as u64)
                    .sum();
                if set != free {
                    return Err(err(
                        id,
                        format!("freelist bitmap has {set} pages set, its count says {free}"),
                    ));
                }
                Some(end)
            } else {
                free.checked_mul(8)
                    .and_then(|n| n.checked_add(FREE_IDS_OFFSET as u64))
            };
            let need = free_end.and_then(|a| {
                pending
                    .checked_mul(PENDING_ENTRY_LEN as u64)
                    .and_then(|b| a.checked_add(b))
            });
            if need.is_none_or(|n| n > run.len() as u64) {
                return Err(err(
                    id,
                    format!(
                        "freelist of {free} free and {pending} pending ids does not fit its run"
                    ),
                ));
            }
            if flags & FREELIST_FLAG_WRITTEN != 0 {
                let at = need.expect("checked above");
                let fits = at
                    .checked_add(WRITTEN_COUNT_LEN as u64)
                    .filter(|&e| e <= run.len() as u64)
                    .and_then(|e| {
                        get_u64(run, at as usize)
                            .checked_mul(WRITTEN_ENTRY_LEN as u64)
                            .and_then(|n| n.checked_add(e))
                    })
                    .is_some_and(|end| end <= run.len() as u64);
                if !fits {
                    return Err(err(id, "freelist's written list does not fit its run"));
                }
            }
        }
        PageType::Delta => super::delta::validate_body(run).map_err(|why| err(id, why))?,
    }
    Ok(())
}

/// Type of a validated run.
pub(crate) fn page_type(run: &[u8]) -> PageType {
    PageType::from_u8(run[TYPE_OFFSET]).expect("validated page type")
}

/// A leaf value as stored: inline bytes or a reference to an overflow run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum StoredVal<'a> {
    Inline(&'a [u8]),
    Overflow { page: u64, len: u32 },
}

/// Read access to a validated branch or leaf page.
#[derive(Clone, Copy)]
pub(crate) struct NodeView<'a> {
    page: &'a [u8],
    ty: PageType,
    count: usize,
}

impl<'a> NodeView<'a> {
    /// `page` must have passed [`validate_run`] as a branch or leaf.
    pub(crate) fn new(page: &'a [u8]) -> NodeView<'a> {
        let ty = page_type(page);
        debug_assert!(matches!(ty, PageType::Branch | PageType::Leaf));
        NodeView {
            page,
            ty,
            count: get_u16(page, COUNT_OFFSET) as usize,
        }
    }

    pub(crate) fn is_leaf(&self) -> bool {
        self.ty == PageType::Leaf
    }

    pub(crate) fn len(&self) -> usize {
        self.count
    }

    fn elem(&self, i: usize) -> usize {
        HEADER_LEN
            + i * if self.is_leaf() {
                LEAF_ELEM_LEN
            } else {
                BRANCH_ELEM_LEN
            }
    }

    pub(crate) fn key(&self, i: usize) -> &'a [u8] {
        let e = self.elem(i);
        let (len, off) = if self.is_leaf() {
            (
                get_u16(self.page, e + LEAF_KEY_LEN_OFFSET),
                get_u32(self.page, e + LEAF_DATA_OFFSET),
            )
        } else {
            (
                get_u16(self.page, e + BRANCH_KEY_LEN_OFFSET),
                get_u32(self.page, e + BRANCH_DATA_OFFSET),
            )
        };
        &self.page[off as usize..off as usize + len as usize]
    }

    pub(crate) fn child(&self, i: usize) -> u64 {
        debug_assert!(!self.is_leaf());
        get_u64(self.page, self.elem(i) + BRANCH_CHILD_OFFSET)
    }

    pub(crate) fn value(&self, i: usize) -> StoredVal<'a> {
        debug_assert!(self.is_leaf());
        let e = self.elem(i);
        let key_len = get_u16(self.page, e + LEAF_KEY_LEN_OFFSET) as usize;
        let val_len = get_u32(self.page, e + LEAF_VAL_LEN_OFFSET);
        let off = get_u32(self.page, e + LEAF_DATA_OFFSET) as usize + key_len;
        if self.page[e + LEAF_FLAGS_OFFSET] & LEAF_FLAG_OVERFLOW != 0 {
            StoredVal::Overflow {
                page: get_u64(self.page, off),
                len: val_len,
            }
        } else {
            StoredVal::Inline(&self.page[off..off + val_len as usize])
        }
    }

    /// Index of the first key `>= key` (binary search).
    pub(crate) fn lower_bound(&self, key: &[u8]) -> usize {
        self.search(key).0
    }

    /// Index of the first key `>= key`, and whether that key equals `key`. The search key's
    /// first 8 bytes are loaded once; most probes are decided by one integer compare of them
    /// (see `prefix`), the rest by the full byte comparison.
    pub(crate) fn search(&self, key: &[u8]) -> (usize, bool) {
        let want = prefix(key);
        let (mut lo, mut hi) = (0, self.count);
        let mut found = false;
        while lo < hi {
            let mid = (lo + hi) / 2;
            let k = self.key(mid);
            let ord = match prefix(k).cmp(&want) {
                Ordering::Equal => k.cmp(key),
                o => o,
            };
            match ord {
                Ordering::Less => lo = mid + 1,
                Ordering::Equal => {
                    found = true;
                    hi = mid;
                }
                Ordering::Greater => hi = mid,
            }
        }
        (lo, found)
    }

    /// For a branch: the child whose subtree may hold `key` (the last element with key <= `key`,
    /// or the first element when `key` sorts before every element).
    pub(crate) fn child_index(&self, key: &[u8]) -> usize {
        match self.search(key) {
            (i, true) => i,
            (i, false) => i.saturating_sub(1),
        }
    }
}

/// The first 8 bytes of `k` (zero-padded) as a big-endian integer: big-endian so that comparing
/// the integers orders like comparing the bytes. Equal prefixes decide nothing (a short key and
/// its zero-padded extension share one); unequal ones decide the byte order of the keys.
#[inline]
fn prefix(k: &[u8]) -> u64 {
    match k.first_chunk::<8>() {
        Some(b) => u64::from_be_bytes(*b),
        None => {
            let mut b = [0u8; 8];
            b[..k.len()].copy_from_slice(k);
            u64::from_be_bytes(b)
        }
    }
}

/// A leaf value on the write path. Its bytes are borrowed (from a committed page, the read
/// buffer or the transaction's arena), so rewriting a node copies no key or value until it is
/// encoded into the new page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Val<'a> {
    Inline(&'a [u8]),
    Overflow { page: u64, len: u32 },
}

/// A node element on the write path: a leaf entry or a branch pointer `key -> child`, borrowing
/// its bytes like [`Val`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Elem<'a> {
    Leaf { key: &'a [u8], val: Val<'a> },
    Branch { key: &'a [u8], child: u64 },
}

impl<'a> Elem<'a> {
    pub(crate) fn key(&self) -> &'a [u8] {
        match *self {
            Elem::Leaf { key, .. } | Elem::Branch { key, .. } => key,
        }
    }

    /// Bytes this element takes in a page (element header + data).
    pub(crate) fn size(&self) -> usize {
        match self {
            Elem::Leaf {
                key,
                val: Val::Inline(v),
            } => LEAF_ELEM_LEN + key.len() + v.len(),
            Elem::Leaf { key, .. } => LEAF_ELEM_LEN + key.len() + size_of::<u64>(),
            Elem::Branch { key, .. } => BRANCH_ELEM_LEN + key.len(),
        }
    }
}

/// Decodes every element of a validated node page; the elements borrow from `page`.
pub(crate) fn decode_node(page: &[u8]) -> Vec<Elem<'_>> {
    let mut out = Vec::new();
    decode_node_into(page, &mut out);
    out
}

/// Appends every element of a validated node page to `out`.
pub(crate) fn decode_node_into<'a>(page: &'a [u8], out: &mut Vec<Elem<'a>>) {
    let v = NodeView::new(page);
    out.reserve(v.len());
    if v.is_leaf() {
        out.extend((0..v.len()).map(|i| Elem::Leaf {
            key: v.key(i),
            val: match v.value(i) {
                StoredVal::Inline(b) => Val::Inline(b),
                StoredVal::Overflow { page, len } => Val::Overflow { page, len },
            },
        }));
    } else {
        out.extend((0..v.len()).map(|i| Elem::Branch {
            key: v.key(i),
            child: v.child(i),
        }));
    }
}

/// Fills the header of `run` (flags 0) and its checksum (last, over everything else).
pub(crate) fn seal_run(run: &mut [u8], id: u64, ty: PageType, count: u16, page_size: usize) {
    seal_run_flags(run, id, ty, 0, count, page_size)
}

/// Fills the header of `run` and its checksum (last, over everything else).
// Format: { checksum u32 | type u8 | flags u8 | count u16 | id u64 | overflow u32 | reserved u32 }
pub(crate) fn seal_run_flags(
    run: &mut [u8],
    id: u64,
    ty: PageType,
    flags: u8,
    count: u16,
    page_size: usize,
) {
    run[TYPE_OFFSET] = ty as u8;
    run[FLAGS_OFFSET] = flags;
    put_u16(run, COUNT_OFFSET, count);
    put_u64(run, ID_OFFSET, id);
    put_u32(run, OVERFLOW_OFFSET, (run.len() / page_size - 1) as u32);
    put_u32(run, RESERVED_OFFSET, 0);
    let sum = run_checksum(run);
    put_u32(run, CHECKSUM_OFFSET, sum);
}

/// Encodes a node (all leaf or all branch elements) into one page. The caller split `elems` so
/// that they fit: `HEADER_LEN + sum(size) <= page_size`.
// Format: { header | elements[count] (leaf: flags u8, reserved u8, key_len u16, val_len u32,
//   data_off u32; branch: key_len u16, reserved u16, data_off u32, child u64) | data... }
pub(crate) fn encode_node(elems: &[Elem], id: u64, page_size: usize) -> Vec<u8> {
    let leaf = matches!(elems[0], Elem::Leaf { .. });
    let elem_len = if leaf { LEAF_ELEM_LEN } else { BRANCH_ELEM_LEN };
    // Header and element table zeroed, data appended after it, then the free tail zeroed: each
    // byte is written once (no zeroing of the whole page first).
    let mut page = Vec::with_capacity(page_size);
    page.resize(HEADER_LEN + elems.len() * elem_len, 0);
    for (i, el) in elems.iter().enumerate() {
        let e = HEADER_LEN + i * elem_len;
        let data = page.len();
        match *el {
            Elem::Leaf { key, val } => {
                put_u16(&mut page, e + LEAF_KEY_LEN_OFFSET, key.len() as u16);
                put_u32(&mut page, e + LEAF_DATA_OFFSET, data as u32);
                page.extend_from_slice(key);
                match val {
                    Val::Inline(v) => {
                        put_u32(&mut page, e + LEAF_VAL_LEN_OFFSET, v.len() as u32);
                        page.extend_from_slice(v);
                    }
                    Val::Overflow { page: p, len } => {
                        page[e + LEAF_FLAGS_OFFSET] = LEAF_FLAG_OVERFLOW;
                        put_u32(&mut page, e + LEAF_VAL_LEN_OFFSET, len);
                        page.extend_from_slice(&p.to_le_bytes());
                    }
                }
            }
            Elem::Branch { key, child } => {
                assert!(!leaf, "mixed leaf and branch elements");
                put_u16(&mut page, e + BRANCH_KEY_LEN_OFFSET, key.len() as u16);
                put_u32(&mut page, e + BRANCH_DATA_OFFSET, data as u32);
                put_u64(&mut page, e + BRANCH_CHILD_OFFSET, child);
                page.extend_from_slice(key);
            }
        }
    }
    assert!(page.len() <= page_size, "node elements overflow the page");
    page.resize(page_size, 0);
    let ty = if leaf {
        PageType::Leaf
    } else {
        PageType::Branch
    };
    seal_run(&mut page, id, ty, elems.len() as u16, page_size);
    page
}

/// Encodes an overflow run holding `value`.
// Format: { header | value bytes | zero padding to the run end }
pub(crate) fn encode_overflow(value: &[u8], id: u64, page_size: usize) -> Vec<u8> {
    let pages = run_pages(page_size, value.len()) as usize;
    let mut run = vec![0u8; pages * page_size];
    run[HEADER_LEN..HEADER_LEN + value.len()].copy_from_slice(value);
    seal_run(&mut run, id, PageType::Overflow, 0, page_size);
    run
}

/// Body bytes of a freelist run with `free` ids, `pending` entries and `written` entries, free
/// pages as a list of ids (an upper bound for either form: the encoder takes the smaller).
pub(crate) fn freelist_body(free: usize, pending: usize, written: usize) -> usize {
    FREE_IDS_OFFSET - HEADER_LEN
        + free * size_of::<u64>()
        + pending * PENDING_ENTRY_LEN
        + WRITTEN_COUNT_LEN
        + written * WRITTEN_ENTRY_LEN
}

/// Body bytes of a freelist run whose free pages are a bitmap spanning `span` page ids.
pub(crate) fn freelist_bitmap_body(span: u64, pending: usize, written: usize) -> usize {
    BITMAP_OFFSET - HEADER_LEN
        + span.div_ceil(64) as usize * size_of::<u64>()
        + pending * PENDING_ENTRY_LEN
        + WRITTEN_COUNT_LEN
        + written * WRITTEN_ENTRY_LEN
}

/// Body bytes `encode_freelist` uses for these parts: the smaller of the two forms. `free` is
/// the free pages as runs `(first id, pages)`, ascending and disjoint.
pub(crate) fn freelist_encoded_body(free: &[(u64, u64)], pending: usize, written: usize) -> usize {
    let count: u64 = free.iter().map(|&(_, n)| n).sum();
    let list = freelist_body(count as usize, pending, written);
    match (free.first(), free.last()) {
        (Some(&(lo, _)), Some(&(s, n))) => {
            list.min(freelist_bitmap_body(s + n - lo, pending, written))
        }
        _ => list,
    }
}

/// Sets bits `[from, to)` of a little-endian bitmap (bit `i` = bit `i % 8` of byte `i / 8`),
/// whole bytes at a time where it can.
fn set_bits(bits: &mut [u8], from: u64, to: u64) {
    let (mut i, to) = (from as usize, to as usize);
    while i < to && !i.is_multiple_of(8) {
        bits[i / 8] |= 1 << (i % 8);
        i += 1;
    }
    if i + 8 <= to {
        bits[i / 8..to / 8].fill(0xff);
        i = to / 8 * 8;
    }
    while i < to {
        bits[i / 8] |= 1 << (i % 8);
        i += 1;
    }
}

/// Encodes the freelist and the commit's written list into a run of exactly `pages` pages
/// (which must hold `freelist_encoded_body`), flagged `FREELIST_FLAG_WRITTEN`, and
/// `FREELIST_FLAG_BITMAP` when the bitmap is the smaller form. `free` is the free pages as runs
/// `(first id, pages)`, ascending and disjoint.
// Format (list): { header (flags 1) | free_count u64 | pending_count u64 |
//   free ids u64[free_count] | pending { id u64, freed_by_txid u64 }[pending_count] |
//   written_count u64 | written { id u64, checksum u32, pages u32 }[written_count] }
// Format (bitmap): { header (flags 3) | free_count u64 | pending_count u64 | bitmap_start u64 |
//   bitmap_words u64 | words u64[bitmap_words] | pending ... | written_count u64 | written ... }
pub(crate) fn encode_freelist(
    free: &[(u64, u64)],
    pending: &[(u64, u64)],
    written: &[Written],
    id: u64,
    pages: u64,
    page_size: usize,
) -> Vec<u8> {
    let mut run = vec![0u8; pages as usize * page_size];
    let count: u64 = free.iter().map(|&(_, n)| n).sum();
    put_u64(&mut run, FREE_COUNT_OFFSET, count);
    put_u64(&mut run, PENDING_COUNT_OFFSET, pending.len() as u64);
    let list = freelist_body(count as usize, pending.len(), written.len());
    let mut flags = FREELIST_FLAG_WRITTEN;
    let mut off = FREE_IDS_OFFSET;
    match (free.first(), free.last()) {
        (Some(&(lo, _)), Some(&(s, n)))
            if freelist_bitmap_body(s + n - lo, pending.len(), written.len()) < list =>
        {
            flags |= FREELIST_FLAG_BITMAP;
            let words = (s + n - lo).div_ceil(64);
            put_u64(&mut run, BITMAP_START_OFFSET, lo);
            put_u64(&mut run, BITMAP_WORDS_OFFSET, words);
            let end = BITMAP_OFFSET + words as usize * size_of::<u64>();
            for &(s, n) in free {
                set_bits(&mut run[BITMAP_OFFSET..end], s - lo, s + n - lo);
            }
            off = end;
        }
        _ => {
            for &(s, n) in free {
                for f in s..s + n {
                    put_u64(&mut run, off, f);
                    off += 8;
                }
            }
        }
    }
    for &(p, t) in pending {
        put_u64(&mut run, off, p);
        put_u64(&mut run, off + 8, t);
        off += PENDING_ENTRY_LEN;
    }
    put_u64(&mut run, off, written.len() as u64);
    off += WRITTEN_COUNT_LEN;
    for w in written {
        put_u64(&mut run, off + WRITTEN_ID_OFFSET, w.id);
        put_u32(&mut run, off + WRITTEN_CHECKSUM_OFFSET, w.checksum);
        put_u32(&mut run, off + WRITTEN_PAGES_OFFSET, w.pages);
        off += WRITTEN_ENTRY_LEN;
    }
    seal_run_flags(&mut run, id, PageType::Freelist, flags, 0, page_size);
    run
}

/// Offset of the pending entries of a validated freelist run (right after the free pages).
fn pending_offset(run: &[u8]) -> usize {
    if run[FLAGS_OFFSET] & FREELIST_FLAG_BITMAP != 0 {
        BITMAP_OFFSET + get_u64(run, BITMAP_WORDS_OFFSET) as usize * size_of::<u64>()
    } else {
        FREE_IDS_OFFSET + get_u64(run, FREE_COUNT_OFFSET) as usize * size_of::<u64>()
    }
}

/// The written list of a validated freelist run (empty for a v1 run, which has none).
pub(crate) fn decode_written(run: &[u8]) -> Vec<Written> {
    if run[FLAGS_OFFSET] & FREELIST_FLAG_WRITTEN == 0 {
        return Vec::new();
    }
    let pending = get_u64(run, PENDING_COUNT_OFFSET) as usize;
    let mut off = pending_offset(run) + pending * PENDING_ENTRY_LEN;
    let n = get_u64(run, off) as usize;
    off += WRITTEN_COUNT_LEN;
    (0..n)
        .map(|i| {
            let e = off + i * WRITTEN_ENTRY_LEN;
            Written {
                id: get_u64(run, e + WRITTEN_ID_OFFSET),
                checksum: get_u32(run, e + WRITTEN_CHECKSUM_OFFSET),
                pages: get_u32(run, e + WRITTEN_PAGES_OFFSET),
            }
        })
        .collect()
}

/// Free ids (ascending when the run was written by this code) and pending `(id, freed_by)`
/// entries of a validated freelist run.
pub(crate) fn decode_freelist(run: &[u8]) -> (Vec<u64>, Vec<(u64, u64)>) {
    let free = get_u64(run, FREE_COUNT_OFFSET) as usize;
    let pending = get_u64(run, PENDING_COUNT_OFFSET) as usize;
    let mut f = Vec::with_capacity(free);
    if run[FLAGS_OFFSET] & FREELIST_FLAG_BITMAP != 0 {
        let start = get_u64(run, BITMAP_START_OFFSET);
        let words = get_u64(run, BITMAP_WORDS_OFFSET) as usize;
        for w in 0..words {
            let mut bits = get_u64(run, BITMAP_OFFSET + w * size_of::<u64>());
            while bits != 0 {
                let b = bits.trailing_zeros() as u64;
                f.push(start + 64 * w as u64 + b);
                bits &= bits - 1;
            }
        }
    } else {
        for i in 0..free {
            f.push(get_u64(run, FREE_IDS_OFFSET + i * size_of::<u64>()));
        }
    }
    let off = pending_offset(run);
    let p = (0..pending)
        .map(|i| {
            let e = off + i * PENDING_ENTRY_LEN;
            (get_u64(run, e), get_u64(run, e + 8))
        })
        .collect();
    (f, p)
}

/// Decodes arbitrary bytes as a run of page `id` and touches every part of it, the way a
/// reader would. The fuzz target and the decoder proptest call this; it must never panic.
pub fn decode_any(bytes: &[u8], id: u64, page_size: usize) -> Result<usize, PageError> {
    validate_run(bytes, id, page_size, None)?;
    Ok(match page_type(bytes) {
        PageType::Branch | PageType::Leaf => {
            let v = NodeView::new(bytes);
            let elems = decode_node(bytes);
            let _ = v.lower_bound(b"m");
            elems.iter().map(Elem::size).sum()
        }
        PageType::Freelist => {
            let (f, p) = decode_freelist(bytes);
            f.len() + p.len() + decode_written(bytes).len()
        }
        PageType::Overflow => bytes.len(),
        PageType::Delta => super::delta::decode_run(bytes)
            .entries
            .iter()
            .map(|e| e.key.len() + e.val.map_or(0, <[u8]>::len))
            .sum(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const PS: usize = 4096;

    fn leaf<'a>(keys: &[&'a [u8]]) -> Vec<Elem<'a>> {
        keys.iter()
            .map(|k| Elem::Leaf {
                key: k,
                val: Val::Inline(k.repeat(2).leak()),
            })
            .collect()
    }

    /// Each id as a run of one page (adjacent ids are not merged: the encoder takes any
    /// ascending disjoint runs).
    fn ids_as_runs(ids: &[u64]) -> Vec<(u64, u64)> {
        ids.iter().map(|&id| (id, 1)).collect()
    }

    #[test]
    fn bitmap_of_runs_matches_bit_by_bit() {
        // Runs that start and end inside bytes, span whole bytes, and touch each other.
        let runs = [
            (100u64, 3u64),
            (103, 1),
            (110, 30),
            (150, 8),
            (158, 1),
            (300, 64),
        ];
        let ids: Vec<u64> = runs.iter().flat_map(|&(s, n)| s..s + n).collect();
        let body = freelist_encoded_body(&runs, 0, 0);
        assert_eq!(body, freelist_bitmap_body(364 - 100, 0, 0));
        let run = encode_freelist(&runs, &[], &[], 20, run_pages(PS, body), PS);
        assert_eq!(
            run[FLAGS_OFFSET] & FREELIST_FLAG_BITMAP,
            FREELIST_FLAG_BITMAP
        );
        validate_run(&run, 20, PS, Some(PageType::Freelist)).unwrap();
        assert_eq!(decode_freelist(&run).0, ids);
        let one_by_one = encode_freelist(&ids_as_runs(&ids), &[], &[], 20, 1, PS);
        assert_eq!(run, one_by_one);
    }

    #[test]
    fn layout_constants_chain() {
        assert_eq!(HEADER_LEN, 24);
        assert_eq!(LEAF_ELEM_LEN, 12);
        assert_eq!(BRANCH_ELEM_LEN, 16);
        assert_eq!(FREE_IDS_OFFSET, 40);
    }

    #[test]
    fn node_round_trip_and_search() {
        let elems = leaf(&[b"a", b"c", b"e"]);
        let page = encode_node(&elems, 7, PS);
        validate_run(&page, 7, PS, Some(PageType::Leaf)).unwrap();
        assert_eq!(decode_node(&page), elems);
        let v = NodeView::new(&page);
        assert_eq!(v.lower_bound(b"b"), 1);
        assert_eq!(v.lower_bound(b"f"), 3);
        assert_eq!(v.search(b"c"), (1, true));
        assert_eq!(v.search(b"c\0"), (2, false));
        assert_eq!(v.search(b""), (0, false));
        assert_eq!(v.value(2), StoredVal::Inline(b"ee"));
        let br = vec![
            Elem::Branch {
                key: b"a",
                child: 5,
            },
            Elem::Branch {
                key: b"m",
                child: 9,
            },
        ];
        let page = encode_node(&br, 3, PS);
        validate_run(&page, 3, PS, Some(PageType::Branch)).unwrap();
        let v = NodeView::new(&page);
        assert_eq!(v.child(v.child_index(b"0")), 5);
        assert_eq!(v.child(v.child_index(b"m")), 9);
        assert_eq!(v.child(v.child_index(b"z")), 9);
        assert_eq!(v.child(v.child_index(b"l")), 5);
    }

    #[test]
    fn wrong_id_type_and_flipped_bit_are_named() {
        let page = encode_node(&leaf(&[b"k"]), 7, PS);
        let e = validate_run(&page, 8, PS, None).unwrap_err();
        assert!(e.reason.contains("page id mismatch"), "{e}");
        let e = validate_run(&page, 7, PS, Some(PageType::Branch)).unwrap_err();
        assert!(e.reason.contains("expected Branch"), "{e}");
        for bit in [0usize, 40, 8 * 100, 8 * 4095 + 7] {
            let mut bad = page.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            let e = validate_run(&bad, 7, PS, None).unwrap_err();
            assert_eq!(e.page, 7);
            assert!(e.reason.contains("checksum"), "{e}");
        }
    }

    #[test]
    fn overflow_and_freelist_runs() {
        let value = vec![0xabu8; 3 * PS];
        let run = encode_overflow(&value, 10, PS);
        assert_eq!(run.len(), 4 * PS);
        validate_run(&run, 10, PS, Some(PageType::Overflow)).unwrap();
        let free = [4u64, 5, 9];
        let pending = [(12u64, 3u64)];
        let written = [Written {
            id: 30,
            checksum: 0x1234_5678,
            pages: 2,
        }];
        let pages = run_pages(PS, freelist_body(3, 1, 1));
        let run = encode_freelist(&ids_as_runs(&free), &pending, &written, 20, pages, PS);
        validate_run(&run, 20, PS, Some(PageType::Freelist)).unwrap();
        assert_eq!(decode_freelist(&run), (free.to_vec(), pending.to_vec()));
        assert_eq!(decode_written(&run), written.to_vec());
        assert_eq!(WRITTEN_ENTRY_LEN, 16);
        // A written count that runs past the run is refused, not read.
        let mut bad = run.clone();
        put_u64(
            &mut bad,
            FREE_IDS_OFFSET + 3 * 8 + PENDING_ENTRY_LEN,
            1 << 40,
        );
        reseal(&mut bad);
        let e = validate_run(&bad, 20, PS, None).unwrap_err();
        assert!(e.reason.contains("written list"), "{e}");
    }

    #[test]
    fn freelist_bitmap_form_round_trips_and_is_validated() {
        // 300 free pages among 600 (every other one): the bitmap (10 words) is far smaller
        // than 300 ids; 3 free pages far apart stay a list.
        let free: Vec<u64> = (0..300).map(|i| 100 + 2 * i).collect();
        let pending = [(7u64, 3u64), (9, 4)];
        let written = [Written {
            id: 30,
            checksum: 0xdead_beef,
            pages: 1,
        }];
        let body = freelist_encoded_body(&ids_as_runs(&free), 2, 1);
        assert_eq!(body, freelist_bitmap_body(599, 2, 1));
        assert!(body < freelist_body(300, 2, 1));
        let pages = run_pages(PS, body);
        assert_eq!(pages, 1);
        let run = encode_freelist(&ids_as_runs(&free), &pending, &written, 20, pages, PS);
        assert_eq!(
            run[FLAGS_OFFSET],
            FREELIST_FLAG_WRITTEN | FREELIST_FLAG_BITMAP
        );
        validate_run(&run, 20, PS, Some(PageType::Freelist)).unwrap();
        assert_eq!(decode_freelist(&run), (free.clone(), pending.to_vec()));
        assert_eq!(decode_written(&run), written.to_vec());
        assert_eq!(decode_any(&run, 20, PS).unwrap(), 300 + 2 + 1);

        let sparse = [5u64, 1 << 20, 1 << 40];
        let body = freelist_encoded_body(&ids_as_runs(&sparse), 0, 0);
        assert_eq!(body, freelist_body(3, 0, 0));
        let run = encode_freelist(&ids_as_runs(&sparse), &[], &[], 20, run_pages(PS, body), PS);
        assert_eq!(run[FLAGS_OFFSET], FREELIST_FLAG_WRITTEN);
        assert_eq!(decode_freelist(&run).0, sparse.to_vec());

        // A count that disagrees with the bits set, a bitmap longer than its run and an
        // unknown flag are refused with a reason, not read.
        let bitmap = encode_freelist(&ids_as_runs(&free), &pending, &written, 20, 1, PS);
        let mut bad = bitmap.clone();
        put_u64(&mut bad, FREE_COUNT_OFFSET, 299);
        reseal(&mut bad);
        let e = validate_run(&bad, 20, PS, None).unwrap_err();
        assert!(e.reason.contains("bitmap has 300 pages set"), "{e}");
        let mut bad = bitmap.clone();
        put_u64(&mut bad, BITMAP_WORDS_OFFSET, 1 << 60);
        reseal(&mut bad);
        let e = validate_run(&bad, 20, PS, None).unwrap_err();
        assert!(e.reason.contains("does not fit"), "{e}");
        let mut bad = bitmap.clone();
        put_u64(&mut bad, BITMAP_START_OFFSET, u64::MAX - 10);
        reseal(&mut bad);
        let e = validate_run(&bad, 20, PS, None).unwrap_err();
        assert!(e.reason.contains("largest page id"), "{e}");
        let mut bad = bitmap;
        bad[FLAGS_OFFSET] |= 4;
        reseal(&mut bad);
        let e = validate_run(&bad, 20, PS, None).unwrap_err();
        assert!(e.reason.contains("unknown flags 0x7"), "{e}");
    }

    fn reseal(bytes: &mut [u8]) {
        if bytes.len() >= HEADER_LEN {
            let s = run_checksum(bytes);
            put_u32(bytes, CHECKSUM_OFFSET, s);
        }
    }

    proptest! {
        // The prefix-first binary search agrees with a linear scan in byte order, including
        // short keys, keys that are prefixes of others and keys with zero bytes.
        #[test]
        fn search_matches_byte_order(keys in proptest::collection::btree_set(proptest::collection::vec(0u8..3, 1..12), 1..60),
                                     probe in proptest::collection::vec(0u8..3, 0..12)) {
            let elems: Vec<Elem> = keys.iter().map(|k| Elem::Leaf { key: k.as_slice(), val: Val::Inline(b"") }).collect();
            let page = encode_node(&elems, 7, PS);
            let v = NodeView::new(&page);
            let want = keys.iter().position(|k| k.as_slice() >= probe.as_slice()).unwrap_or(keys.len());
            let exact = keys.contains(&probe);
            prop_assert_eq!(v.search(&probe), (want, exact));
        }

        // The decoder never panics on arbitrary bytes, including bytes with a valid checksum,
        // id and run length (so the structural checks, not the checksum, are what is tested).
        #[test]
        fn decoder_never_panics(mut bytes in proptest::collection::vec(any::<u8>(), 0..2 * PS),
                                ty in 0u8..6, count in any::<u16>(), pages in 1usize..3) {
            let _ = decode_any(&bytes, 7, PS);
            bytes.resize(pages * PS, 0);
            bytes[TYPE_OFFSET] = ty;
            put_u16(&mut bytes, COUNT_OFFSET, count % 400);
            put_u64(&mut bytes, ID_OFFSET, 7);
            put_u32(&mut bytes, OVERFLOW_OFFSET, pages as u32 - 1);
            reseal(&mut bytes);
            let _ = decode_any(&bytes, 7, PS);
        }

        // Valid nodes survive encode/decode and mutate-then-reseal never panics.
        #[test]
        fn node_mutations_never_panic(keys in proptest::collection::btree_set(proptest::collection::vec(any::<u8>(), 1..20), 1..50),
                                      flips in proptest::collection::vec((0usize..PS, any::<u8>()), 1..8)) {
            let elems: Vec<Elem> = keys.iter().map(|k| Elem::Leaf { key: k.as_slice(), val: Val::Inline(k.as_slice()) }).collect();
            let mut page = encode_node(&elems, 7, PS);
            prop_assert_eq!(decode_node(&page), elems);
            for (at, x) in flips {
                page[at] ^= x;
            }
            reseal(&mut page);
            let _ = decode_any(&page, 7, PS);
        }
    }
}

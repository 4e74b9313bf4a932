//! The B+tree: lookups and scans over committed pages, and the copy-on-write update that turns a
//! sorted batch of puts and deletes into new pages.
//!
//! Invariants of every committed tree (checked by check.rs):
//! 1. All leaves are at the same depth; the root of an empty tree is page 0 ("none").
//! 2. In a branch, element i's key equals the smallest key of child i's subtree, and keys are
//!    strictly ascending; so child i holds exactly the keys in `[key_i, key_{i+1})`.
//! 3. No node is empty; a root branch has at least two children.
//!
//! # Worked example of an update
//!
//! Tree (page size small enough that a leaf holds 3 entries):
//! ```text
//!            branch 5: [a -> 3, m -> 4]
//!   leaf 3: [a, c, e]          leaf 4: [m, q]
//! ```
//! Batch `put b, put d, delete q` (sorted). At branch 5, ops are split by separator `m`: `b, d`
//! go to child 3, `delete q` to child 4. Leaf 3 is merged with its ops into `[a, b, c, d, e]`,
//! which is too big and is written as two new pages, say 6 `[a, b, c]` and 7 `[d, e]`; page 3 is
//! freed (pending: a snapshot may still read it). Leaf 4 becomes `[m]` on new page 8, which is
//! under a quarter full, so it is merged with its left neighbour 7 into page 9 `[d, e, m]` (7 was
//! written by this transaction, so it is free again at once). Branch 5 becomes
//! `[a -> 6, d -> 9]` on a new page 10, the new root. Pages 3, 4, 5 become reusable once no
//! snapshot older than this commit remains.

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::ops::Range;

use super::freelist::Freelist;
use super::mmap::Mapping;
use super::page::{
    Elem, HEADER_LEN, LEAF_ELEM_LEN, NodeView, PageError, PageType, StoredVal, Val, decode_node,
    encode_node, encode_overflow, max_inline_elem, page_type, run_pages,
};
use crate::io::File;

/// Deeper than any real tree (a 4 KiB-page tree of depth 16 holds far more than 2^64 keys);
/// a cycle in a corrupt file hits this instead of looping forever.
const MAX_DEPTH: usize = 32;

fn too_deep(id: u64) -> PageError {
    PageError {
        page: id,
        reason: format!("tree deeper than {MAX_DEPTH} levels (cycle?)"),
    }
}

/// Reads a node (branch or leaf) page.
fn node<'a>(m: &'a Mapping, id: u64) -> Result<Cow<'a, [u8]>, PageError> {
    let p = m.page(id, None)?;
    match page_type(&p) {
        PageType::Branch | PageType::Leaf => Ok(p),
        t => Err(PageError {
            page: id,
            reason: format!("page type {t:?}, expected a branch or leaf"),
        }),
    }
}

/// Resolves a stored leaf value (reading its overflow run if needed).
fn value<'a>(m: &'a Mapping, v: StoredVal<'_>) -> Result<Cow<'a, [u8]>, PageError> {
    match v {
        StoredVal::Inline(b) => Ok(Cow::Owned(b.to_vec())),
        StoredVal::Overflow { page, len } => {
            let run = m.page(page, Some(PageType::Overflow))?;
            let end = HEADER_LEN + len as usize;
            if end > run.len() {
                return Err(PageError {
                    page,
                    reason: format!("value of {len} bytes does not fit its overflow run"),
                });
            }
            Ok(match run {
                Cow::Borrowed(b) => Cow::Borrowed(&b[HEADER_LEN..end]),
                Cow::Owned(mut b) => {
                    b.truncate(end);
                    b.drain(..HEADER_LEN);
                    Cow::Owned(b)
                }
            })
        }
    }
}

/// One step of a lookup inside a node.
enum Step<'p> {
    Found(StoredVal<'p>),
    Missing,
    Child(u64),
}

fn step<'p>(v: NodeView<'p>, key: &[u8]) -> Step<'p> {
    if v.is_leaf() {
        match v.search(key) {
            (i, true) => Step::Found(v.value(i)),
            _ => Step::Missing,
        }
    } else {
        Step::Child(v.child(v.child_index(key)))
    }
}

/// Looks `key` up in the tree at `root` (0 = empty). With a memory map the value is borrowed
/// from the map for as long as the mapping is borrowed.
pub(crate) fn get<'a>(
    m: &'a Mapping,
    root: u64,
    key: &[u8],
) -> Result<Option<Cow<'a, [u8]>>, PageError> {
    if root == 0 {
        return Ok(None);
    }
    let mut id = root;
    for _ in 0..MAX_DEPTH {
        let found = match node(m, id)? {
            Cow::Borrowed(p) => match step(NodeView::new(p), key) {
                Step::Found(StoredVal::Inline(b)) => Some(Cow::Borrowed(b)),
                Step::Found(sv) => Some(value(m, sv)?),
                Step::Missing => return Ok(None),
                Step::Child(c) => {
                    id = c;
                    None
                }
            },
            Cow::Owned(p) => match step(NodeView::new(&p), key) {
                Step::Found(sv) => Some(value(m, sv)?),
                Step::Missing => return Ok(None),
                Step::Child(c) => {
                    id = c;
                    None
                }
            },
        };
        if found.is_some() {
            return Ok(found);
        }
    }
    Err(too_deep(root))
}

/// Visits keys in `[start, end)` (`end` empty = unbounded) in order until `visit` returns false.
/// Returns false if the visitor stopped the scan.
pub(crate) fn scan(
    m: &Mapping,
    root: u64,
    start: &[u8],
    end: &[u8],
    visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
) -> Result<bool, PageError> {
    if root == 0 {
        return Ok(true);
    }
    scan_node(m, root, start, end, visit, 0)
}

fn scan_node(
    m: &Mapping,
    id: u64,
    start: &[u8],
    end: &[u8],
    visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    depth: usize,
) -> Result<bool, PageError> {
    if depth >= MAX_DEPTH {
        return Err(too_deep(id));
    }
    let page = node(m, id)?;
    let v = NodeView::new(&page);
    if v.is_leaf() {
        for i in v.lower_bound(start)..v.len() {
            let k = v.key(i);
            if !end.is_empty() && k >= end {
                return Ok(false);
            }
            let cont = match v.value(i) {
                StoredVal::Inline(b) => visit(k, b),
                sv => visit(k, &value(m, sv)?),
            };
            if !cont {
                return Ok(false);
            }
        }
        return Ok(true);
    }
    for i in v.child_index(start)..v.len() {
        if !end.is_empty() && v.key(i) >= end {
            return Ok(false);
        }
        if !scan_node(m, v.child(i), start, end, visit, depth + 1)? {
            return Ok(false);
        }
    }
    Ok(true)
}

/// The key range `[lo, hi)` (`hi` empty = unbounded) of the leaf of the tree at `root` that
/// holds `key` or would hold it: child `i` of a branch covers `[key_i, key_{i+1})`, child 0
/// from its parent's `lo`. An empty tree is one unbounded range. (The delta log folds every
/// logged key of one leaf at once, delta.rs.)
pub(crate) fn leaf_bounds(
    m: &Mapping,
    root: u64,
    key: &[u8],
) -> Result<(Vec<u8>, Vec<u8>), PageError> {
    let (mut lo, mut hi) = (Vec::new(), Vec::new());
    let mut id = root;
    if root == 0 {
        return Ok((lo, hi));
    }
    for _ in 0..MAX_DEPTH {
        let page = node(m, id)?;
        let v = NodeView::new(&page);
        if v.is_leaf() {
            return Ok((lo, hi));
        }
        let i = v.child_index(key);
        if i > 0 {
            lo = v.key(i).to_vec();
        }
        if i + 1 < v.len() {
            hi = v.key(i + 1).to_vec();
        }
        id = v.child(i);
    }
    Err(too_deep(root))
}

/// How far online compaction may walk in one commit, and where it resumes.
pub(crate) struct Walk {
    /// Nodes this commit may still read.
    pub visits: usize,
    /// Subtrees wholly before this key were walked by earlier commits.
    pub from: Vec<u8>,
    /// Set when `visits` ran out: the key the next commit resumes from.
    pub stopped_at: Option<Vec<u8>>,
}

/// One put (`Some`) or delete (`None`), as handed to [`TreeWriter::apply`] in key order. The
/// bytes are borrowed from the read buffer for the whole transaction; a new element borrows
/// them too and they are copied once, into the new page.
#[derive(Clone, Copy)]
pub(crate) struct Op<'a> {
    pub key: &'a [u8],
    pub val: Option<&'a [u8]>,
}

/// Byte buffers kept alive for one write transaction, so that elements can borrow from pages
/// that are not in the memory map (pages read through `read_at`, copies of this transaction's
/// own pages, catalog entries built during the commit). Append-only: nothing is removed or
/// changed until the arena is dropped.
#[derive(Default)]
pub(crate) struct Arena {
    bufs: RefCell<Vec<Box<[u8]>>>,
}

impl Arena {
    /// Keeps `bytes` until the arena is dropped and lends them for as long as the arena is.
    pub(crate) fn keep(&self, bytes: Vec<u8>) -> &[u8] {
        let boxed = bytes.into_boxed_slice();
        let ptr: *const [u8] = &*boxed;
        self.bufs.borrow_mut().push(boxed);
        // SAFETY: `ptr` points into the heap allocation of `boxed`, which moving the box into
        // `bufs` does not move. `bufs` is append-only (no method removes, replaces or mutates a
        // buffer), so the allocation is freed only when the arena is dropped, and the returned
        // borrow of `self` ends before that.
        unsafe { &*ptr }
    }
}

/// Runs written by the previous commit that the next one will likely read again (the branch
/// pages near the root, the freelist run, and all pages of a small commit), by first page id.
/// They hold exactly the bytes on disk, so the writer reads them from here: no page fault on
/// the fresh file pages and no checksum verification of its own output. Only the writer uses
/// them, and only for the commit right after the one that wrote them: every page in it is
/// reachable from that commit's meta, and a page reachable from the base of a transaction is
/// never rewritten during it (it is freed as pending, not reused).
pub(crate) type Recent = HashMap<u64, Vec<u8>>;

/// The state of one write transaction: pages written so far (not yet on disk) and the page
/// allocator.
pub(crate) struct TreeWriter<'m> {
    pub map: &'m Mapping,
    /// Pages read through `read_at`, copies of pages of this transaction, catalog entries.
    pub arena: &'m Arena,
    /// The previous commit's runs (see [`Recent`]).
    recent: &'m Recent,
    pub page_size: usize,
    /// The transaction being built; pages it frees that the last meta reaches are pending under it.
    pub txid: u64,
    pub freelist: &'m mut Freelist,
    pub page_count: u64,
    /// Runs written by this transaction, by first page id.
    pub dirty: BTreeMap<u64, Vec<u8>>,
    /// Dirty nodes under a quarter full: candidates for merging with a neighbour.
    small: HashSet<u64>,
    /// The ops being applied arrived out of key order (random puts): leaves that must split are
    /// split to [`SPREAD_FILL_PERCENT`] (see [`TreeWriter::write_nodes`]). Set per bucket by the
    /// commit.
    pub spread_leaves: bool,
    /// Pages reserved for this transaction and not handed out yet: [`TreeWriter::alloc`] takes
    /// pages from its front, so the transaction's runs land side by side and go to disk in few
    /// large writes. Invariant: these pages are in neither the free set nor `dirty`, and lie in
    /// `[2, page_count)`; [`TreeWriter::release_extent`] returns them to the free set.
    extent: Range<u64>,
    /// Pages the next extent asks for (doubles with each refill of one transaction).
    extent_hint: u64,
    /// The previous commit wrote `1..MIN_EXTENT` pages: this one is expected to be about as
    /// small, and asks for one free run of that many pages plus [`SMALL_SLACK`] (best fit,
    /// else new pages at the file's tail) rather than the usual `MIN_EXTENT`, so that all its
    /// runs are adjacent pages: one write request instead of one per page (on the measured
    /// disk each scattered page of a commit added a device round trip to its fdatasync,
    /// BENCHMARKS.md "Backend: one write request per small commit"). Once half the file is
    /// free (`half_free`) it fills holes of any length like every other commit.
    small_commit: bool,
    /// Online compaction is moving pages: allocate from `low` instead.
    compacting: bool,
    /// Pages reserved for online compaction (same invariant as `extent`): the lowest free run
    /// of at least `MIN_EXTENT` pages, so that moved pages are written side by side too.
    low: Range<u64>,
    /// No free run was left for `low`.
    low_exhausted: bool,
    /// Where finished pages go before the commit's step 2 (see [`EARLY_RUN`]); `None`: all
    /// pages are written in step 2.
    early: Option<Early<'m>>,
}

/// Pages written ahead of step 2 by one transaction (see [`EARLY_RUN`]).
struct Early<'m> {
    file: &'m dyn File,
    /// Pages `[0, file_pages)` lie inside the file: only those are written early, so that the
    /// file's length changes only in step 1 of the commit.
    file_pages: u64,
    /// Dirty runs whose current bytes are in the file already. Invariant: a subset of the
    /// keys of `dirty` (a freed run leaves both; ids are never re-inserted with other bytes
    /// without being freed first).
    written: HashSet<u64>,
    staging: Vec<u8>,
    error: Option<std::io::Error>,
}

/// With `BackendOptions::early_writes` (off by default: measured slower on this project's disk),
/// a node write that has produced this many adjacent new pages writes them to the file at once
/// and starts their writeback, so that the device transfers them while the rest of the commit
/// is built (a 10,000-key revision append writes ~730 leaves in one node write). Writing early
/// is safe for the same reason step 2 is: every page of the transaction is free in both metas
/// and in every live snapshot, so until the new meta is durable nothing reads them; a page freed
/// again later in the transaction is simply rewritten if it is reused.
pub(crate) const EARLY_RUN: u64 = 64;

/// How full [`TreeWriter::write_nodes`] makes the leaves of an overflowing leaf node when the
/// batch's puts arrived out of key order: about the fill that random inserts give a B+tree in
/// the long run (ln 2 ≈ 69 %, Yao 1978), so that a batch of random puts leaves the tree the same
/// random puts one at a time would, and the next random inserts land in leaves with room.
pub(crate) const SPREAD_FILL_PERCENT: usize = 70;

/// Smallest free run a transaction takes as an extent when no run holds all it asks for:
/// shorter holes are left to online compaction (runs of 16 pages already cost about as much per
/// byte as one large write on the measured disk, BENCHMARKS.md).
pub(crate) const MIN_EXTENT: u64 = 16;
/// Largest extent one refill asks for (32 MiB of 4 KiB pages).
pub(crate) const MAX_EXTENT: u64 = 8192;
/// Pages a small commit's extent asks for beyond what the previous commit wrote: a 1-key
/// commit whose leaf splits, or whose freelist run grows by a page, still fits one run.
pub(crate) const SMALL_SLACK: u64 = 2;

impl<'m> TreeWriter<'m> {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        map: &'m Mapping,
        arena: &'m Arena,
        recent: &'m Recent,
        page_size: usize,
        txid: u64,
        freelist: &'m mut Freelist,
        page_count: u64,
        extent_hint: u64,
    ) -> Self {
        TreeWriter {
            map,
            arena,
            recent,
            page_size,
            txid,
            freelist,
            page_count,
            dirty: BTreeMap::new(),
            small: HashSet::new(),
            spread_leaves: false,
            extent: 0..0,
            small_commit: (1..MIN_EXTENT).contains(&extent_hint),
            extent_hint: if (1..MIN_EXTENT).contains(&extent_hint) {
                extent_hint + SMALL_SLACK
            } else {
                extent_hint.clamp(MIN_EXTENT, MAX_EXTENT)
            },
            compacting: false,
            low: 0..0,
            low_exhausted: false,
            early: None,
        }
    }

    /// From now on, runs of [`EARLY_RUN`] adjacent new pages below `file_pages` are written to
    /// `file` as soon as they are built (and their writeback started).
    pub(crate) fn write_early(&mut self, file: &'m dyn File, file_pages: u64) {
        self.early = Some(Early {
            file,
            file_pages,
            written: HashSet::new(),
            staging: Vec::new(),
            error: None,
        });
    }

    /// The dirty runs already in the file, or the first error of an early write.
    pub(crate) fn finish_early(&mut self) -> std::io::Result<HashSet<u64>> {
        match self.early.take() {
            None => Ok(HashSet::new()),
            Some(Early { error: Some(e), .. }) => Err(e),
            Some(e) => Ok(e.written),
        }
    }

    /// Writes the dirty pages `first..first + n` (each a one-page run) to the file.
    fn flush_early(&mut self, first: u64, n: u64) {
        let Some(e) = self.early.as_mut() else {
            return;
        };
        if e.error.is_some() || first + n > e.file_pages {
            return;
        }
        e.staging.clear();
        for id in first..first + n {
            match self.dirty.get(&id) {
                Some(page) if page.len() == self.page_size => e.staging.extend_from_slice(page),
                _ => return,
            }
        }
        let at = first * self.page_size as u64;
        let done = e
            .file
            .write_at(&e.staging, at)
            .and_then(|()| e.file.start_writeback(at, e.staging.len() as u64));
        match done {
            Ok(()) => e.written.extend(first..first + n),
            Err(err) => e.error = Some(err),
        }
    }

    pub(crate) fn read(
        &self,
        id: u64,
        expect: Option<PageType>,
    ) -> Result<Cow<'_, [u8]>, PageError> {
        if let Some(p) = self.dirty.get(&id).or_else(|| self.recent.get(&id)) {
            return Ok(Cow::Borrowed(p));
        }
        self.map.page(id, expect)
    }

    /// A node's elements, borrowing from the map, `recent` or the arena for the whole
    /// transaction. A page this transaction wrote is copied into the arena first (it is about
    /// to be freed and may be reused while its elements are still in use).
    fn read_node(&self, id: u64) -> Result<Vec<Elem<'m>>, PageError> {
        let (recent, map, arena) = (self.recent, self.map, self.arena);
        let page: &'m [u8] = match self.dirty.get(&id) {
            Some(p) => arena.keep(p.clone()),
            None => match recent.get(&id) {
                Some(p) => p,
                None => match map.page(id, None)? {
                    Cow::Borrowed(p) => p,
                    Cow::Owned(p) => arena.keep(p),
                },
            },
        };
        match page_type(page) {
            PageType::Branch | PageType::Leaf => Ok(decode_node(page)),
            t => Err(PageError {
                page: id,
                reason: format!("page type {t:?}, expected a branch or leaf"),
            }),
        }
    }

    /// Allocates a run of `n` pages from the transaction's extent (refilled as needed), so that
    /// consecutive allocations are adjacent pages; while compacting, the lowest free pages.
    pub(crate) fn alloc(&mut self, n: u64) -> u64 {
        if self.compacting {
            if self.low.end - self.low.start < n {
                let rest = std::mem::replace(&mut self.low, 0..0);
                self.freelist.free_now(rest.start, rest.end - rest.start);
                let min = if self.half_free() {
                    n
                } else {
                    n.max(MIN_EXTENT)
                };
                if let Some((start, len)) = self.freelist.take_low(min) {
                    self.low = start..start + len;
                }
            }
            if self.low.end - self.low.start >= n {
                let id = self.low.start;
                self.low.start += n;
                return id;
            }
            let id = self.page_count;
            self.page_count += n;
            return id;
        }
        if self.extent.end - self.extent.start < n {
            self.refill(n);
        }
        let id = self.extent.start;
        self.extent.start += n;
        id
    }

    /// Pages still reserved in the extent.
    pub(crate) fn extent_len(&self) -> u64 {
        (self.extent.end - self.extent.start) + (self.low.end - self.low.start)
    }

    /// Replaces the extent by one of at least `n` pages: the best-fitting free run of
    /// `extent_hint` pages, else the longest free run of at least `max(n, MIN_EXTENT)` pages
    /// (a small commit: of `extent_hint` pages, see `small_commit`), else new pages at the end
    /// of the file (continuing the old extent when it ends there). Once half of the file is
    /// free (`half_free`), the longest run of any length is taken before the file grows: space
    /// is then worth more than write size.
    fn refill(&mut self, n: u64) {
        let want = n.max(self.extent_hint);
        self.extent_hint = (want * 2).min(MAX_EXTENT);
        let min = if self.half_free() {
            n
        } else if self.small_commit {
            want
        } else {
            n.max(MIN_EXTENT)
        };
        let longest = self.freelist.longest();
        if self.extent.end == self.page_count && longest < want && longest < min {
            self.page_count += want;
            self.extent.end = self.page_count;
            return;
        }
        let rest = std::mem::replace(&mut self.extent, 0..0);
        self.freelist.free_now(rest.start, rest.end - rest.start);
        self.extent = match self.freelist.take_extent(want, min) {
            Some((start, len)) => start..start + len,
            None => {
                let start = self.page_count;
                self.page_count += want;
                start..start + want
            }
        };
    }

    /// At least half of the file is free or reserved: new pages and compaction then fill holes
    /// of any length rather than grow the file (space amplification stays under 2x).
    fn half_free(&self) -> bool {
        (self.freelist.free_len() as u64 + self.extent_len()) * 2 >= self.page_count
    }

    /// Returns the unused rest of the extents to the free set (nothing references them).
    pub(crate) fn release_extent(&mut self) {
        for rest in [
            std::mem::replace(&mut self.extent, 0..0),
            std::mem::replace(&mut self.low, 0..0),
        ] {
            self.freelist.free_now(rest.start, rest.end - rest.start);
        }
    }

    /// Frees the run at `id` of `n` pages.
    pub(crate) fn free(&mut self, id: u64, n: u64) {
        self.small.remove(&id);
        if self.dirty.remove(&id).is_some() {
            if let Some(e) = self.early.as_mut() {
                e.written.remove(&id);
            }
            self.freelist.free_now(id, n);
        } else {
            self.freelist.free_pending(self.txid, id, n);
        }
    }

    fn free_val(&mut self, v: Val<'_>) {
        if let Val::Overflow { page, len } = v {
            self.free(page, run_pages(self.page_size, len as usize));
        }
    }

    fn new_leaf_elem(&mut self, key: &'m [u8], val: &'m [u8]) -> Elem<'m> {
        let val = if LEAF_ELEM_LEN + key.len() + val.len() > max_inline_elem(self.page_size) {
            let n = run_pages(self.page_size, val.len());
            let id = self.alloc(n);
            self.dirty
                .insert(id, encode_overflow(val, id, self.page_size));
            Val::Overflow {
                page: id,
                len: val.len() as u32,
            }
        } else {
            Val::Inline(val)
        };
        Elem::Leaf { key, val }
    }

    /// Applies sorted, distinct-key `ops` to the tree at `root`; returns the new root (0 = empty).
    pub(crate) fn apply(&mut self, root: u64, ops: &[Op<'m>]) -> Result<u64, PageError> {
        if ops.is_empty() {
            return Ok(root);
        }
        let mut out = if root == 0 {
            let elems = self.merge_leaf(Vec::new(), ops);
            self.write_nodes(elems)
        } else {
            self.apply_node(root, ops, 0)?
        };
        while out.len() > 1 {
            out = self.write_nodes(out);
        }
        let mut root = out.first().map_or(0, |e| match e {
            Elem::Branch { child, .. } => *child,
            Elem::Leaf { .. } => unreachable!("write_nodes returns branch elements"),
        });
        // A root branch with one child is replaced by the child (invariant 3).
        while root != 0 {
            let elems = self.read_node(root)?;
            match elems.as_slice() {
                [Elem::Branch { child, .. }] => {
                    self.free(root, 1);
                    root = *child;
                }
                _ => break,
            }
        }
        Ok(root)
    }

    fn merge_leaf(&mut self, old: Vec<Elem<'m>>, ops: &[Op<'m>]) -> Vec<Elem<'m>> {
        let mut out = Vec::with_capacity(old.len() + ops.len());
        let mut old = old.into_iter().peekable();
        let mut ops = ops.iter().peekable();
        loop {
            match (old.peek(), ops.peek()) {
                (Some(e), Some(op)) if e.key() < op.key => out.push(old.next().expect("peeked")),
                (Some(e), Some(op)) if e.key() == op.key => {
                    if let Some(Elem::Leaf { val, .. }) = old.next() {
                        self.free_val(val);
                    }
                    let op = ops.next().expect("peeked");
                    if let Some(v) = op.val {
                        out.push(self.new_leaf_elem(op.key, v));
                    }
                }
                (_, Some(_)) => {
                    let op = ops.next().expect("peeked");
                    if let Some(v) = op.val {
                        out.push(self.new_leaf_elem(op.key, v));
                    }
                }
                (Some(_), None) => out.push(old.next().expect("peeked")),
                (None, None) => break,
            }
        }
        out
    }

    /// Rewrites node `id` with `ops` applied; returns the branch elements that replace it in its
    /// parent (none if it became empty, several if it split).
    fn apply_node(
        &mut self,
        id: u64,
        ops: &[Op<'m>],
        depth: usize,
    ) -> Result<Vec<Elem<'m>>, PageError> {
        if depth >= MAX_DEPTH {
            return Err(too_deep(id));
        }
        let elems = self.read_node(id)?;
        self.free(id, 1);
        if matches!(elems[0], Elem::Leaf { .. }) {
            let merged = self.merge_leaf(elems, ops);
            return Ok(self.write_nodes(merged));
        }
        let mut children = Vec::with_capacity(elems.len() + 2);
        let mut rest = ops;
        for (i, e) in elems.iter().enumerate() {
            let n = match elems.get(i + 1) {
                Some(next) => rest.partition_point(|op| op.key < next.key()),
                None => rest.len(),
            };
            let (mine, after) = rest.split_at(n);
            rest = after;
            if mine.is_empty() {
                children.push(*e);
            } else if let Elem::Branch { child, .. } = *e {
                children.extend(self.apply_node(child, mine, depth + 1)?);
            }
        }
        self.rebalance(&mut children)?;
        Ok(self.write_nodes(children))
    }

    /// Merges each small dirty child with a neighbour.
    fn rebalance(&mut self, children: &mut Vec<Elem<'m>>) -> Result<(), PageError> {
        let mut i = 0;
        while i < children.len() && children.len() > 1 {
            let Elem::Branch { child, .. } = children[i] else {
                unreachable!("branch elements")
            };
            if !self.small.contains(&child) {
                i += 1;
                continue;
            }
            let left = if i + 1 < children.len() { i } else { i - 1 };
            let (Elem::Branch { child: a, .. }, Elem::Branch { child: b, .. }) =
                (&children[left], &children[left + 1])
            else {
                unreachable!("branch elements")
            };
            let (a, b) = (*a, *b);
            let mut elems = self.read_node(a)?;
            elems.extend(self.read_node(b)?);
            self.free(a, 1);
            self.free(b, 1);
            let merged = self.write_nodes(elems);
            let n = merged.len();
            let still_small = match merged.as_slice() {
                [Elem::Branch { child, .. }] => self.small.contains(child),
                _ => false,
            };
            children.splice(left..left + 2, merged);
            // A merged node that is still small absorbs its next neighbour too (each merge
            // removes one child, so this ends).
            i = if still_small { left } else { left + n };
        }
        Ok(())
    }

    /// Writes `elems` (sorted, one kind) as one or more pages of near-equal fill; returns the
    /// branch elements pointing at them.
    ///
    /// Fill rule: elements that fit one page stay one page (an update or an insert into a leaf
    /// with room never splits it). Elements that do not fit are cut into the fewest pages that
    /// hold them, of equal fill, so a leaf that overflows by one insert becomes two half-full
    /// leaves and a batch appended at the right edge of the tree (etcd's revisions, a load in
    /// key order) fills its pages fully. Leaves of a batch whose puts arrived out of key order
    /// (`spread_leaves`) are cut into pages of [`SPREAD_FILL_PERCENT`] instead, the fill random
    /// inserts converge to. Example, 4 KiB pages (4,072 bytes for elements), 186-byte entries
    /// (21 fit a page), 1,000 entries into an empty tree (186,000 bytes): arrived sorted, 46
    /// pages are asked for (target 4,044 bytes each), and since 21 entries (3,906 bytes) fill a
    /// page, that is 48 pages of 21 entries (the last of 13); out of order, 186,000 / 2,850 ->
    /// 66 pages (target 2,819 bytes), cut after 16 entries (2,976 bytes): 63 pages of 16 (the
    /// last of 8), each with room for 5 more before it splits. Branches are always cut into the
    /// fewest pages: a branch grows only when a child splits.
    fn write_nodes(&mut self, elems: Vec<Elem<'m>>) -> Vec<Elem<'m>> {
        if elems.is_empty() {
            return Vec::new();
        }
        let cap = self.page_size - HEADER_LEN;
        let total: usize = elems.iter().map(Elem::size).sum();
        let mut pages = total.div_ceil(cap);
        if pages > 1 && self.spread_leaves && matches!(elems[0], Elem::Leaf { .. }) {
            pages = pages.max(total.div_ceil(cap * SPREAD_FILL_PERCENT / 100));
        }
        let target = total.div_ceil(pages);
        let mut out = Vec::with_capacity(pages);
        let (mut start, mut size) = (0, 0);
        // The adjacent pages written by this call and not yet written early.
        let (mut run_first, mut run_len) = (0, 0);
        for i in 0..elems.len() {
            size += elems[i].size();
            let cut = match elems.get(i + 1) {
                None => true,
                Some(next) => size + next.size() > cap || size >= target,
            };
            if cut {
                let id = self.alloc(1);
                let group = &elems[start..=i];
                let page = encode_node(group, id, self.page_size);
                self.dirty.insert(id, page);
                if run_len > 0 && id == run_first + run_len {
                    run_len += 1;
                } else {
                    (run_first, run_len) = (id, 1);
                }
                if run_len == EARLY_RUN {
                    self.flush_early(run_first, run_len);
                    run_len = 0;
                }
                if HEADER_LEN + size < self.page_size / 4 {
                    self.small.insert(id);
                }
                out.push(Elem::Branch {
                    key: group[0].key(),
                    child: id,
                });
                start = i + 1;
                size = 0;
            }
        }
        out
    }

    /// Online compaction: moves every node and overflow run of the tree at `root` that lies at or
    /// above page `limit` to the lowest free pages (rewriting the path above it, copy-on-write
    /// like any update), relocating at most `budget` pages and reading at most `walk.visits`
    /// nodes, skipping subtrees wholly before `walk.from`. Returns the new root.
    pub(crate) fn relocate(
        &mut self,
        root: u64,
        limit: u64,
        budget: &mut usize,
        walk: &mut Walk,
    ) -> Result<u64, PageError> {
        if root == 0 {
            return Ok(0);
        }
        let from = walk.from.clone();
        let was = std::mem::replace(&mut self.compacting, true);
        let moved = self.relocate_node(root, &from, limit, budget, walk, 0);
        self.compacting = was;
        Ok(moved?.unwrap_or(root))
    }

    /// Whether compaction may move another page: budget left and room below `limit` in the
    /// compaction's extent, refilled with the lowest free run of at least `MIN_EXTENT` pages
    /// (moving pages into shorter holes would scatter the commit's writes), or of any length
    /// once half the file is free.
    fn can_move(&mut self, limit: u64, budget: usize) -> bool {
        if budget == 0 {
            return false;
        }
        if self.low.start == self.low.end && !self.low_exhausted {
            let min = if self.half_free() { 1 } else { MIN_EXTENT };
            match self.freelist.take_low(min) {
                Some((start, len)) => self.low = start..start + len,
                // Pages compaction frees are pending (the last meta reaches them), so hardly a
                // new run appears before the commit ends: stop looking.
                None => self.low_exhausted = true,
            }
        }
        self.low.start < self.low.end && self.low.start < limit
    }

    /// `lo` is the smallest key node `id` may hold (where a later commit resumes if the walk
    /// stops here).
    fn relocate_node(
        &mut self,
        id: u64,
        lo: &[u8],
        limit: u64,
        budget: &mut usize,
        walk: &mut Walk,
        depth: usize,
    ) -> Result<Option<u64>, PageError> {
        if depth >= MAX_DEPTH {
            return Err(too_deep(id));
        }
        if !self.can_move(limit, *budget) || walk.stopped_at.is_some() {
            return Ok(None);
        }
        if walk.visits == 0 {
            walk.stopped_at = Some(lo.max(walk.from.as_slice()).to_vec());
            return Ok(None);
        }
        walk.visits -= 1;
        let mut elems = self.read_node(id)?;
        let seps: Vec<&[u8]> = elems.iter().map(|e| e.key()).collect();
        let mut changed = false;
        for (i, e) in elems.iter_mut().enumerate() {
            match e {
                Elem::Branch { key, child } => {
                    // Subtrees wholly before the cursor were handled by earlier commits.
                    if seps
                        .get(i + 1)
                        .is_some_and(|next| *next <= walk.from.as_slice())
                    {
                        continue;
                    }
                    if let Some(new) =
                        self.relocate_node(*child, key, limit, budget, walk, depth + 1)?
                    {
                        *child = new;
                        changed = true;
                    }
                    if walk.stopped_at.is_some() {
                        break;
                    }
                }
                Elem::Leaf {
                    val: Val::Overflow { page, len },
                    ..
                } if *page >= limit && self.can_move(limit, *budget) => {
                    let n = run_pages(self.page_size, *len as usize);
                    let run = self.read(*page, Some(PageType::Overflow))?;
                    let value = run[HEADER_LEN..HEADER_LEN + *len as usize].to_vec();
                    drop(run);
                    self.free(*page, n);
                    let new = self.alloc(n);
                    self.dirty
                        .insert(new, encode_overflow(&value, new, self.page_size));
                    *page = new;
                    *budget = budget.saturating_sub(n as usize);
                    changed = true;
                }
                Elem::Leaf { .. } => {}
            }
        }
        if !changed && id < limit {
            return Ok(None);
        }
        self.free(id, 1);
        let new = self.alloc(1);
        self.dirty
            .insert(new, encode_node(&elems, new, self.page_size));
        *budget = budget.saturating_sub(1);
        Ok(Some(new))
    }
}

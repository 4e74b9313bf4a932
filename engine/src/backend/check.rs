//! The consistency checker: used by the tests after every commit and by `ringkv-util`.
//!
//! For one committed version it verifies: both meta pages (the other one only when no commit can
//! be writing it); every page in `[2, page_count)` is reachable exactly once (catalog, bucket
//! trees, overflow runs, freelist run) or listed exactly once as free or pending; every run's
//! checksum, id and type; keys strictly ascending within and across nodes; each branch key equal
//! to the smallest key of its child; all leaves of a tree at one depth; no root branch with a
//! single child; the delta log's chain (format v3, delta.rs); for a format-v2 commit, every run its freelist run lists is on disk with the
//! listed checksum. Pages are read through `read_at`, never the memory map, so every checksum is
//! computed afresh.

use std::borrow::Cow;

use super::db::{Shared, Version, read_metas, verify_commit};
use super::meta::Meta;
use super::mmap::Mapping;
use super::page::{
    Elem, HEADER_LEN, PageError, PageType, Val, decode_freelist, decode_node, header_overflow,
    page_type, run_pages,
};

/// What the checker found. `problems` is empty for a healthy file; each names a page and reason.
#[derive(Clone, Debug, Default)]
pub struct CheckReport {
    pub txid: u64,
    pub page_count: u64,
    pub reachable_pages: u64,
    pub free_pages: u64,
    pub pending_pages: u64,
    /// Runs of the delta log (0 without one).
    pub delta_runs: u64,
    /// Keys per bucket name.
    pub keys: Vec<(Vec<u8>, u64)>,
    pub problems: Vec<PageError>,
}

impl CheckReport {
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }
}

struct Walker<'a> {
    map: &'a Mapping,
    page_size: usize,
    page_count: u64,
    seen: Vec<bool>,
    report: CheckReport,
}

impl<'a> Walker<'a> {
    fn problem(&mut self, page: u64, reason: impl Into<String>) {
        self.report.problems.push(PageError {
            page,
            reason: reason.into(),
        });
    }

    /// Marks `n` pages from `id` as used by `what`; false if any was out of range or seen.
    fn mark(&mut self, id: u64, n: u64, what: &str) -> bool {
        let mut ok = true;
        for p in id..id.saturating_add(n) {
            if p < 2 || p >= self.page_count {
                self.problem(p, format!("{what}: page outside [2, {})", self.page_count));
                return false;
            }
            if std::mem::replace(&mut self.seen[p as usize], true) {
                self.problem(p, format!("{what}: page reached twice"));
                ok = false;
            }
        }
        ok
    }

    fn read(&mut self, id: u64, ty: Option<PageType>) -> Option<Cow<'a, [u8]>> {
        let map = self.map;
        match map.page(id, ty) {
            Ok(p) => Some(p),
            Err(e) => {
                self.report.problems.push(e);
                None
            }
        }
    }

    /// Walks the tree at `root`; returns the number of keys and calls `leaf_val` for each value.
    fn tree(
        &mut self,
        root: u64,
        what: &str,
        mut leaf_val: impl FnMut(&mut Self, &[u8], &Val<'_>),
    ) -> u64 {
        if root == 0 {
            return 0;
        }
        let mut keys = 0;
        let mut leaf_depth = None;
        self.node(
            root,
            what,
            None,
            None,
            0,
            &mut leaf_depth,
            &mut keys,
            &mut leaf_val,
            true,
        );
        keys
    }

    /// Checks node `id` whose keys must lie in `[lo, hi)`; returns its smallest key.
    #[allow(clippy::too_many_arguments)]
    fn node(
        &mut self,
        id: u64,
        what: &str,
        lo: Option<&[u8]>,
        hi: Option<&[u8]>,
        depth: usize,
        leaf_depth: &mut Option<usize>,
        keys: &mut u64,
        leaf_val: &mut dyn FnMut(&mut Self, &[u8], &Val<'_>),
        is_root: bool,
    ) -> Option<Vec<u8>> {
        if depth > 32 || !self.mark(id, 1, what) {
            return None;
        }
        let page = self.read(id, None)?;
        let elems = match page_type(&page) {
            PageType::Branch | PageType::Leaf => decode_node(&page),
            t => {
                let why = format!("{what}: page type {t:?} in a tree");
                self.problem(id, why);
                return None;
            }
        };
        let first = elems.first().map(|e| e.key().to_vec());
        if let Some(lo) = lo
            && elems.first().is_some_and(|e| e.key() < lo)
        {
            self.problem(id, format!("{what}: key sorts before its branch separator"));
        }
        if let Some(hi) = hi
            && elems.last().is_some_and(|e| e.key() >= hi)
        {
            self.problem(id, format!("{what}: key not below the next separator"));
        }
        match &elems[0] {
            Elem::Leaf { .. } => {
                match *leaf_depth {
                    None => *leaf_depth = Some(depth),
                    Some(d) if d != depth => {
                        self.problem(id, format!("{what}: leaf at depth {depth}, others at {d}"))
                    }
                    Some(_) => {}
                }
                for e in &elems {
                    if let Elem::Leaf { key, val } = e {
                        *keys += 1;
                        leaf_val(self, key, val);
                    }
                }
            }
            Elem::Branch { .. } => {
                if is_root && elems.len() == 1 {
                    self.problem(id, format!("{what}: root branch with a single child"));
                }
                for (i, e) in elems.iter().enumerate() {
                    let Elem::Branch { key, child } = e else {
                        self.problem(id, format!("{what}: mixed element kinds"));
                        return first;
                    };
                    let next = elems.get(i + 1).map(|n| n.key());
                    let child_first = self.node(
                        *child,
                        what,
                        Some(key),
                        next.or(hi),
                        depth + 1,
                        leaf_depth,
                        keys,
                        leaf_val,
                        false,
                    );
                    if child_first.as_deref().is_some_and(|c| c != &key[..]) {
                        self.problem(
                            id,
                            format!("{what}: separator of child {child} is not its smallest key"),
                        );
                    }
                }
            }
        }
        first
    }

    fn overflow(&mut self, page: u64, len: u32, what: &str) {
        let n = run_pages(self.page_size, len as usize);
        if !self.mark(page, n, what) {
            return;
        }
        if let Some(run) = self.read(page, Some(PageType::Overflow)) {
            let have = header_overflow(&run) as u64 + 1;
            if have != n || HEADER_LEN + len as usize > run.len() {
                self.problem(
                    page,
                    format!("{what}: overflow run of {have} pages for a {len}-byte value"),
                );
            }
        }
    }
}

pub(crate) fn check(shared: &Shared, version: &Version, quiescent: bool) -> CheckReport {
    let meta = version.meta;
    let ps = meta.page_size as usize;
    let file_len = shared.file.size().unwrap_or(0);
    let mut report = CheckReport {
        txid: meta.txid,
        page_count: meta.page_count,
        ..CheckReport::default()
    };
    // Metas, only when no commit can be writing one: the meta this version came from must still
    // be on disk byte for byte, and the other one must be valid.
    if quiescent {
        let mut page = vec![0u8; ps];
        let slot = meta.txid % 2;
        match shared.file.read_exact_at(&mut page, slot * ps as u64) {
            Ok(()) => match Meta::decode(&page) {
                Ok(m) if m == meta => {}
                Ok(m) => report.problems.push(PageError {
                    page: slot,
                    reason: format!(
                        "meta on disk is txid {}, the version is txid {}",
                        m.txid, meta.txid
                    ),
                }),
                Err(reason) => report.problems.push(PageError { page: slot, reason }),
            },
            Err(e) => report.problems.push(PageError {
                page: slot,
                reason: format!("read failed: {e}"),
            }),
        }
        if let Ok((_, _, Some(bad))) = read_metas(&*shared.file, file_len) {
            report.problems.push(bad);
        }
    }
    if meta.page_count.saturating_mul(ps as u64) > file_len.max(version.file_len) {
        report.problems.push(PageError {
            page: meta.page_count - 1,
            reason: format!(
                "page count {} runs past the end of the file ({file_len} bytes)",
                meta.page_count
            ),
        });
        return report;
    }
    let map = match Mapping::new(&shared.file, file_len / ps as u64 * ps as u64, ps, false) {
        Ok(m) => m,
        Err(e) => {
            report.problems.push(PageError {
                page: 0,
                reason: format!("cannot read the file: {e}"),
            });
            return report;
        }
    };
    let mut w = Walker {
        map: &map,
        page_size: ps,
        page_count: meta.page_count,
        seen: vec![false; meta.page_count as usize],
        report,
    };
    let mut buckets = Vec::new();
    w.tree(meta.catalog, "catalog", |w, key, val| match val {
        Val::Inline(v) if v.len() == 8 => buckets.push((
            key.to_vec(),
            u64::from_le_bytes(v[..].try_into().expect("8 bytes")),
        )),
        _ => w.problem(meta.catalog, "catalog: entry is not an 8-byte root page id"),
    });
    for (name, root) in buckets {
        let what = format!("bucket {}", String::from_utf8_lossy(&name));
        let keys = w.tree(root, &what, |w, _, val| {
            if let Val::Overflow { page, len } = *val {
                w.overflow(page, len, &what);
            }
        });
        w.report.keys.push((name, keys));
    }
    // The delta log (format v3): every run of the chain valid (checksum, entries sorted and
    // inside the run), in txid order down to the head's floor, and reached once.
    match super::delta::read_chain(&map, meta.delta_head, meta.page_count, ps) {
        Ok(runs) => {
            w.report.delta_runs = runs.len() as u64;
            for (id, pages) in runs {
                w.mark(id, pages, "delta run");
            }
        }
        Err(e) => w.report.problems.push(e),
    }
    if meta.freelist != 0
        && let Some(run) = w.read(meta.freelist, Some(PageType::Freelist))
    {
        let n = header_overflow(&run) as u64 + 1;
        let (free, pending) = decode_freelist(&run);
        if w.mark(meta.freelist, n, "freelist run") {
            w.report.free_pages = free.len() as u64;
            w.report.pending_pages = pending.len() as u64;
            for p in free {
                w.mark(p, 1, "free page");
            }
            for (p, t) in pending {
                if t > meta.txid {
                    w.problem(p, format!("pending page freed by future txid {t}"));
                }
                w.mark(p, 1, "pending page");
            }
        }
    }
    // The commit's written list (format v2): every listed run present with its listed checksum.
    if let Err(e) = verify_commit(&map, &meta) {
        w.problem(
            e.page,
            format!("commit txid {} incomplete: {}", meta.txid, e.reason),
        );
    }
    let mut reachable = 0;
    for p in 2..meta.page_count {
        if !w.seen[p as usize] {
            w.problem(p, "page neither reachable nor free (leaked)");
        }
    }
    reachable += w.seen.iter().filter(|s| **s).count() as u64;
    w.report.reachable_pages = reachable - w.report.free_pages - w.report.pending_pages;
    w.report
}

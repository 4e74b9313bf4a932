//! The delta log (`BackendOptions::delta_log`, format v3): an LSM level 0 over the B+tree.
//!
//! A commit of many random keys would rewrite one 4 KiB leaf (and the path above it) for each
//! ~190-byte entry. With the delta log such a commit instead writes its sorted entries as one
//! *delta run* (page type 5), and *folds* a bounded part of the log into the tree: the log
//! never holds more than `delta_max_entries` entries nor `delta_max_runs` runs on disk.
//!
//! # Structure
//!
//! - On disk: a chain of delta runs, newest first. The meta's `delta_head` names the newest;
//!   each run names the previous one (`prev`), the txid that wrote it, and the *floor*: the
//!   txid of the oldest run of the log as of that commit. The chain is walked from the head
//!   until the run whose txid is the head's floor; pages behind it were freed (and may be
//!   reused), so the walk never reads them.
//! - Runs are freed oldest first (FIFO), which is what keeps the floor rule valid.
//! - The writer keeps, per key in the log, the txid of the run holding its newest entry, its
//!   newest value, and whether that value has been *folded* (written into the tree too).
//! - Readers use [`DeltaIndex`]: per key, versions `(txid, state)` where the state is a put, a
//!   delete, or "absent" (the tree answers). A snapshot at txid `t` uses the newest version with
//!   txid <= `t`, so it sees exactly its commit's log (versions older than every live snapshot
//!   are dropped, like the read buffer's).
//!
//! # Invariants
//!
//! 1. For a key in the log, the newest log entry is its committed state; the tree holds either
//!    an older state or (once folded) the same one. So a read consults the log before the tree.
//! 2. While a key is in the log, every write of it goes to the log (never to the tree alone),
//!    so invariant 1 holds at reopen too, where every key of the chain counts as not folded.
//! 3. A key leaves the log only when the run holding its newest entry is freed, and that
//!    commit folds its newest value into the tree if it was not folded yet.
//!
//! # Folding (the bound)
//!
//! A commit that writes a delta run frees the oldest runs while the log would otherwise exceed
//! its bounds. For each key whose newest entry is in a freed run and is not folded yet, it finds
//! the key's leaf (`tree::leaf_bounds`) and folds *every* unfolded key of the log in that leaf,
//! so each rewritten leaf takes all the log's entries for it at once. Worked example: a
//! 1M-key tree of ~65k leaves, 1,000 random keys per commit, a log of 320 runs: by the time a
//! run is oldest, most of its keys were folded along with their neighbours by earlier commits;
//! in steady state a commit folds ~270 leaves holding ~3.7 unfolded entries each, instead of
//! rewriting ~1,000 leaves.
//!
//! When online compaction is due, or the option is off while the log holds runs, the commit
//! folds the whole log and writes its own keys into the tree (`fold_all`): compaction never has
//! to move delta runs, because it only runs while the log is empty.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::ops::Bound;
use std::sync::atomic::{AtomicUsize, Ordering};

use parking_lot::RwLock;
use smallvec::{SmallVec, smallvec};

use super::buffer::{Bytes, Slot};
use super::mmap::Mapping;
use super::page::{
    HEADER_LEN, PageError, PageType, get_u16, get_u32, get_u64, put_u16, put_u32, put_u64,
    run_pages, seal_run,
};
use crate::storage::Bucket;

const BUCKETS: usize = Bucket::ALL.len();

// Delta run body, right after the page header (`count` in the header is 0: a run may hold more
// entries than a u16 counts).
pub(crate) const DELTA_PREV_OFFSET: usize = HEADER_LEN;
pub(crate) const DELTA_TXID_OFFSET: usize = DELTA_PREV_OFFSET + size_of::<u64>();
pub(crate) const DELTA_FLOOR_OFFSET: usize = DELTA_TXID_OFFSET + size_of::<u64>();
pub(crate) const DELTA_COUNT_OFFSET: usize = DELTA_FLOOR_OFFSET + size_of::<u64>();
pub(crate) const DELTA_RESERVED_OFFSET: usize = DELTA_COUNT_OFFSET + size_of::<u32>();
pub(crate) const DELTA_ENTRIES_OFFSET: usize = DELTA_RESERVED_OFFSET + size_of::<u32>();

// Delta entry, `count` of them back to back from `DELTA_ENTRIES_OFFSET`.
pub(crate) const ENTRY_BUCKET_OFFSET: usize = 0;
pub(crate) const ENTRY_OP_OFFSET: usize = ENTRY_BUCKET_OFFSET + size_of::<u8>();
pub(crate) const ENTRY_KEY_LEN_OFFSET: usize = ENTRY_OP_OFFSET + size_of::<u8>();
pub(crate) const ENTRY_VAL_LEN_OFFSET: usize = ENTRY_KEY_LEN_OFFSET + size_of::<u16>();
pub(crate) const ENTRY_DATA_OFFSET: usize = ENTRY_VAL_LEN_OFFSET + size_of::<u32>();

/// Entry op: put (`val_len` value bytes follow the key).
pub(crate) const OP_PUT: u8 = 1;
/// Entry op: delete (`val_len` is 0).
pub(crate) const OP_DELETE: u8 = 2;

/// Bounds of the log and the batch size that uses it; `BackendOptions::delta_max_entries`,
/// `delta_max_runs`, `delta_min_batch`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    pub max_entries: u64,
    pub max_runs: usize,
    pub min_batch: usize,
}

/// One decoded delta entry, borrowing the run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Entry<'a> {
    pub bucket: u8,
    pub key: &'a [u8],
    /// `None`: a delete.
    pub val: Option<&'a [u8]>,
}

/// A decoded delta run.
pub(crate) struct Run<'a> {
    pub prev: u64,
    pub txid: u64,
    pub floor: u64,
    pub entries: Vec<Entry<'a>>,
}

/// Body bytes of a delta run holding `entries` (bucket index, key, slot).
fn body_len(entries: &[(usize, Bytes, Slot)]) -> usize {
    DELTA_ENTRIES_OFFSET - HEADER_LEN
        + entries
            .iter()
            .map(|(_, k, v)| ENTRY_DATA_OFFSET + k.len() + v.as_ref().map_or(0, |v| v.len()))
            .sum::<usize>()
}

/// Pages of the delta run holding `entries`.
pub(crate) fn run_pages_for(entries: &[(usize, Bytes, Slot)], page_size: usize) -> u64 {
    run_pages(page_size, body_len(entries))
}

/// Encodes a delta run at page `id`. `entries` are sorted by (bucket, key), keys distinct.
// Format: { header (type 5, count 0) | prev u64 | txid u64 | floor u64 | count u32 |
//   reserved u32 | entries[count] { bucket u8 | op u8 | key_len u16 | val_len u32 | key |
//   value } | zero padding to the run end }
pub(crate) fn encode_run(
    entries: &[(usize, Bytes, Slot)],
    id: u64,
    prev: u64,
    txid: u64,
    floor: u64,
    page_size: usize,
) -> Vec<u8> {
    let pages = run_pages(page_size, body_len(entries)) as usize;
    let mut run = Vec::with_capacity(pages * page_size);
    run.resize(DELTA_ENTRIES_OFFSET, 0);
    put_u64(&mut run, DELTA_PREV_OFFSET, prev);
    put_u64(&mut run, DELTA_TXID_OFFSET, txid);
    put_u64(&mut run, DELTA_FLOOR_OFFSET, floor);
    put_u32(&mut run, DELTA_COUNT_OFFSET, entries.len() as u32);
    for (b, k, v) in entries {
        let at = run.len();
        run.resize(at + ENTRY_DATA_OFFSET, 0);
        run[at + ENTRY_BUCKET_OFFSET] = *b as u8;
        run[at + ENTRY_OP_OFFSET] = if v.is_some() { OP_PUT } else { OP_DELETE };
        put_u16(&mut run, at + ENTRY_KEY_LEN_OFFSET, k.len() as u16);
        let vlen = v.as_ref().map_or(0, |v| v.len());
        put_u32(&mut run, at + ENTRY_VAL_LEN_OFFSET, vlen as u32);
        run.extend_from_slice(k);
        if let Some(v) = v {
            run.extend_from_slice(v);
        }
    }
    run.resize(pages * page_size, 0);
    seal_run(&mut run, id, PageType::Delta, 0, page_size);
    run
}

/// Checks the body of a delta run whose header passed `validate_run`: every entry inside the
/// run, known bucket and op, non-empty key, a delete without value bytes, entries strictly
/// ascending by (bucket, key), txid above its floor... Never panics, whatever the bytes.
pub(crate) fn validate_body(run: &[u8]) -> Result<(), String> {
    if run.len() < DELTA_ENTRIES_OFFSET {
        return Err("delta run header does not fit".into());
    }
    let txid = get_u64(run, DELTA_TXID_OFFSET);
    let floor = get_u64(run, DELTA_FLOOR_OFFSET);
    if floor > txid || txid == 0 {
        return Err(format!("delta run of txid {txid} with floor {floor}"));
    }
    let count = get_u32(run, DELTA_COUNT_OFFSET) as usize;
    let mut at = DELTA_ENTRIES_OFFSET;
    let mut prev: Option<(u8, &[u8])> = None;
    for i in 0..count {
        if at + ENTRY_DATA_OFFSET > run.len() {
            return Err(format!("delta entry {i} at {at} outside the run"));
        }
        let bucket = run[at + ENTRY_BUCKET_OFFSET];
        let op = run[at + ENTRY_OP_OFFSET];
        let klen = get_u16(run, at + ENTRY_KEY_LEN_OFFSET) as usize;
        let vlen = get_u32(run, at + ENTRY_VAL_LEN_OFFSET) as usize;
        if bucket as usize >= BUCKETS {
            return Err(format!("delta entry {i}: unknown bucket {bucket}"));
        }
        if op != OP_PUT && (op != OP_DELETE || vlen != 0) {
            return Err(format!(
                "delta entry {i}: bad op {op} with {vlen} value bytes"
            ));
        }
        let data = at + ENTRY_DATA_OFFSET;
        let end = data.checked_add(klen).and_then(|e| e.checked_add(vlen));
        if klen == 0 || end.is_none_or(|e| e > run.len()) {
            return Err(format!(
                "delta entry {i}: key of {klen} and value of {vlen} bytes outside the run"
            ));
        }
        let key = &run[data..data + klen];
        if prev.is_some_and(|p| p >= (bucket, key)) {
            return Err(format!("delta entry {i}: entries not strictly ascending"));
        }
        prev = Some((bucket, key));
        at = end.expect("checked above");
    }
    Ok(())
}

/// Decodes a delta run that passed `validate_run`.
pub(crate) fn decode_run(run: &[u8]) -> Run<'_> {
    let count = get_u32(run, DELTA_COUNT_OFFSET) as usize;
    let mut entries = Vec::with_capacity(count);
    let mut at = DELTA_ENTRIES_OFFSET;
    for _ in 0..count {
        let klen = get_u16(run, at + ENTRY_KEY_LEN_OFFSET) as usize;
        let vlen = get_u32(run, at + ENTRY_VAL_LEN_OFFSET) as usize;
        let data = at + ENTRY_DATA_OFFSET;
        entries.push(Entry {
            bucket: run[at + ENTRY_BUCKET_OFFSET],
            key: &run[data..data + klen],
            val: (run[at + ENTRY_OP_OFFSET] == OP_PUT)
                .then(|| &run[data + klen..data + klen + vlen]),
        });
        at = data + klen + vlen;
    }
    Run {
        prev: get_u64(run, DELTA_PREV_OFFSET),
        txid: get_u64(run, DELTA_TXID_OFFSET),
        floor: get_u64(run, DELTA_FLOOR_OFFSET),
        entries,
    }
}

/// The runs of the chain at `head` (0 = empty log), newest first, as `(id, pages)`, each read
/// and validated through `map`; the error names the run and what is wrong with the chain.
pub(crate) fn read_chain(
    map: &Mapping,
    head: u64,
    page_count: u64,
    page_size: usize,
) -> Result<Vec<(u64, u64)>, PageError> {
    let mut out = Vec::new();
    if head == 0 {
        return Ok(out);
    }
    let mut id = head;
    let mut floor = None;
    let mut last_txid = u64::MAX;
    loop {
        if id < 2 || id >= page_count || out.len() as u64 >= page_count {
            return Err(PageError {
                page: id,
                reason: format!("delta chain reaches page {id} outside [2, {page_count})"),
            });
        }
        let run = map.page(id, Some(PageType::Delta))?;
        let r = decode_run(&run);
        let floor = *floor.get_or_insert(r.floor);
        if r.txid >= last_txid || r.txid < floor {
            return Err(PageError {
                page: id,
                reason: format!(
                    "delta run of txid {} out of order in the chain (previous txid {last_txid}, floor {floor})",
                    r.txid
                ),
            });
        }
        last_txid = r.txid;
        out.push((id, (run.len() / page_size) as u64));
        if r.txid == floor {
            return Ok(out);
        }
        if r.prev == 0 {
            return Err(PageError {
                page: id,
                reason: format!(
                    "delta chain ends at txid {} above its floor {floor}",
                    r.txid
                ),
            });
        }
        id = r.prev;
    }
}

/// A key as the ordered maps of the log hold it: keys of up to 32 bytes (etcd's revision keys,
/// most user keys) lie inside the map's nodes, so a search compares them without following a
/// pointer per step (with `Bytes` keys every comparison was a likely cache miss).
type IKey = SmallVec<[u8; 32]>;

/// A key's states for readers, oldest first, never empty: `(txid, None)` = not in the log from
/// `txid` on (the tree answers), `(txid, Some(slot))` = the log's state from `txid` on.
type Versions = SmallVec<[(u64, Option<Slot>); 1]>;

/// One bucket of the readers' index: versions by key twice, in a hash map for gets (one probe,
/// not a search whose every step dereferences a key) and in key order for scans (no probe per
/// scanned key). Invariant: the two maps hold the same keys with equal versions.
#[derive(Default)]
struct IndexBucket {
    versions: HashMap<Bytes, Versions>,
    order: BTreeMap<IKey, (Bytes, Versions)>,
}

impl IndexBucket {
    fn insert(&mut self, k: &Bytes, v: Versions) {
        self.versions.insert(k.clone(), v.clone());
        self.order.insert(IKey::from_slice(k), (k.clone(), v));
    }

    fn remove(&mut self, k: &Bytes) {
        self.versions.remove(k);
        self.order.remove(&**k);
    }
}

/// The readers' view of the log, shared by every snapshot (see the module doc).
#[derive(Default)]
pub(crate) struct DeltaIndex {
    /// Keys held (all versions); 0 lets a read skip the lock.
    len: AtomicUsize,
    maps: RwLock<[IndexBucket; BUCKETS]>,
}

fn at_txid(v: &Versions, txid: u64) -> Option<&Slot> {
    v.iter()
        .rev()
        .find(|(t, _)| *t <= txid)
        .and_then(|(_, s)| s.as_ref())
}

impl DeltaIndex {
    /// The log's state of `key` at `txid`: `None` = ask the tree, `Some(None)` = deleted.
    pub(crate) fn get(&self, b: usize, key: &[u8], txid: u64) -> Option<Slot> {
        if self.len.load(Ordering::Acquire) == 0 {
            return None;
        }
        let g = self.maps.read();
        g[b].versions
            .get(key)
            .and_then(|v| at_txid(v, txid))
            .cloned()
    }

    /// The first `limit` of the log's entries in `[start, end)` (`end` empty = unbounded) at
    /// `txid`, in key order, and where the rest of the range starts if `limit` were reached
    /// (the smallest key above the last one returned).
    pub(crate) fn range_chunk(
        &self,
        b: usize,
        start: &[u8],
        end: &[u8],
        txid: u64,
        limit: usize,
    ) -> (Vec<(Bytes, Slot)>, Option<Vec<u8>>) {
        if self.len.load(Ordering::Acquire) == 0 || (!end.is_empty() && start >= end) {
            return (Vec::new(), None);
        }
        let hi = if end.is_empty() {
            Bound::Unbounded
        } else {
            Bound::Excluded(end)
        };
        let g = self.maps.read();
        let g = &g[b];
        let out: Vec<(Bytes, Slot)> = g
            .order
            .range::<[u8], _>((Bound::Included(start), hi))
            .filter_map(|(_, (k, v))| at_txid(v, txid).map(|s| (k.clone(), s.clone())))
            .take(limit)
            .collect();
        let next = (out.len() == limit)
            .then(|| {
                let mut k = out.last().expect("limit > 0").0.to_vec();
                k.push(0);
                k
            })
            .filter(|k| end.is_empty() || k.as_slice() < end);
        (out, next)
    }
}

/// A run of the log, as the writer tracks it.
struct RunInfo {
    id: u64,
    pages: u64,
    txid: u64,
    /// The keys it holds, (bucket, key), in its order.
    keys: Vec<(usize, Bytes)>,
}

/// The writer's state of one key in the log.
struct KeyState {
    key: Bytes,
    /// Txid of the run holding its newest entry.
    txid: u64,
    val: Slot,
    /// `val` is in the tree too.
    folded: bool,
}

/// The writer's side of the log: its runs and keys (not shared; see the module doc).
#[derive(Default)]
pub(crate) struct DeltaLog {
    /// Oldest first.
    runs: VecDeque<RunInfo>,
    keys: [BTreeMap<IKey, KeyState>; BUCKETS],
    /// Entries of all runs on disk (superseded ones included).
    entries: u64,
    /// Keys whose reader versions may be pruned once no snapshot older than the txid remains.
    gc: VecDeque<(u64, usize, Bytes)>,
}

/// One bucket's writes as [`DeltaLog::plan`] takes them: bucket index, sorted entries, whether
/// they arrived sorted, whether the bucket's tree is non-empty.
pub(crate) type PlanInput<'e> = (usize, &'e [(Bytes, Slot)], bool, bool);

/// The key range `[lo, hi)` (`hi` empty = unbounded) of the leaf holding a key of a bucket.
pub(crate) type LeafBounds<'b> =
    dyn FnMut(usize, &[u8]) -> Result<(Vec<u8>, Vec<u8>), PageError> + 'b;

/// Per bucket index, the entries a commit writes to the tree.
pub(crate) type TreeEntries = Vec<Vec<(Bytes, Slot)>>;

/// What one commit does with the log, planned before its pages are built and applied to the
/// writer's state only once the commit is durable ([`DeltaLog::apply`]).
#[derive(Default)]
pub(crate) struct Plan {
    /// Entries of the new delta run, sorted by (bucket, key).
    pub log_new: Vec<(usize, Bytes, Slot)>,
    /// Per bucket: the log's values to write into the tree, sorted.
    pub fold: Vec<BTreeMap<Bytes, Slot>>,
    /// The oldest runs this commit frees, as `(id, pages)`.
    pub freed: Vec<(u64, u64)>,
    /// The whole log is folded and the commit's own keys go to the tree.
    pub fold_all: bool,
}

impl Plan {
    fn new() -> Plan {
        Plan {
            fold: (0..BUCKETS).map(|_| BTreeMap::new()).collect(),
            ..Plan::default()
        }
    }
}

impl DeltaLog {
    pub(crate) fn is_empty(&self) -> bool {
        self.runs.is_empty()
    }

    /// First page of the newest run, 0 = none.
    pub(crate) fn head(&self) -> u64 {
        self.runs.back().map_or(0, |r| r.id)
    }

    pub(crate) fn runs(&self) -> usize {
        self.runs.len()
    }

    /// Rebuilds the log from the chain at `head` (open), filling `index` at txid 0.
    pub(crate) fn load(
        map: &Mapping,
        head: u64,
        page_count: u64,
        page_size: usize,
        index: &DeltaIndex,
    ) -> Result<DeltaLog, PageError> {
        let mut log = DeltaLog::default();
        for (id, pages) in read_chain(map, head, page_count, page_size)?
            .into_iter()
            .rev()
        {
            let run = map.page(id, Some(PageType::Delta))?;
            let r = decode_run(&run);
            let mut keys = Vec::with_capacity(r.entries.len());
            for e in &r.entries {
                let b = e.bucket as usize;
                let k: Bytes = e.key.into();
                let val: Slot = e.val.map(Bytes::from);
                log.keys[b].insert(
                    IKey::from_slice(&k),
                    KeyState {
                        key: k.clone(),
                        txid: r.txid,
                        val,
                        folded: false,
                    },
                );
                keys.push((b, k));
            }
            log.entries += keys.len() as u64;
            log.runs.push_back(RunInfo {
                id,
                pages,
                txid: r.txid,
                keys,
            });
        }
        let mut g = index.maps.write();
        let mut n = 0;
        for (b, keys) in log.keys.iter().enumerate() {
            for st in keys.values() {
                g[b].insert(&st.key, smallvec![(0, Some(st.val.clone()))]);
                n += 1;
            }
        }
        index.len.store(n, Ordering::Release);
        Ok(log)
    }

    /// Plans a commit. `latest[b]` are bucket `b`'s writes `(sorted entries, arrived_sorted,
    /// tree not empty)`; returns the plan and, per bucket, the entries for the tree path.
    /// `fold_all` empties the log. `bounds(b, key)` gives the key range `[lo, hi)` (`hi` empty
    /// = unbounded) of the leaf that holds `key` in bucket `b`'s committed tree.
    pub(crate) fn plan<'e>(
        &self,
        latest: &[PlanInput<'e>],
        enabled: bool,
        fold_all: bool,
        limits: Limits,
        bounds: &mut LeafBounds<'_>,
    ) -> Result<(Plan, TreeEntries), PageError> {
        let mut plan = Plan::new();
        let mut tree: Vec<Vec<(Bytes, Slot)>> = vec![Vec::new(); BUCKETS];
        if fold_all {
            plan.fold_all = true;
            for &(b, entries, _, _) in latest {
                tree[b] = entries.to_vec();
            }
            for (b, keys) in self.keys.iter().enumerate() {
                for st in keys.values().filter(|st| !st.folded) {
                    plan.fold[b].insert(st.key.clone(), st.val.clone());
                }
            }
            plan.freed = self.runs.iter().map(|r| (r.id, r.pages)).collect();
            return Ok((plan, tree));
        }
        for &(b, entries, arrived_sorted, tree_not_empty) in latest {
            // Which writes hit keys in the log, by walking the sorted writes and the log's keys
            // together: a seek only where the log has a key at or below the next write (an
            // append above the log's keys takes none).
            let logged = &self.keys[b];
            let seek = |k: &[u8]| {
                logged
                    .range::<[u8], _>((Bound::Included(k), Bound::Unbounded))
                    .next()
                    .map(|(_, st)| st.key.clone())
            };
            let mut next_logged = entries.first().and_then(|(k, _)| seek(k));
            // A batch above a quarter of the log's bound goes to the tree whole (but for keys
            // already in the log): it touches most leaves anyway.
            let all = enabled
                && !arrived_sorted
                && tree_not_empty
                && entries.len() >= limits.min_batch
                && entries.len() as u64 <= limits.max_entries / 4;
            for (k, v) in entries {
                if next_logged.as_ref().is_some_and(|n| **n < **k) {
                    next_logged = seek(k);
                }
                let in_log = next_logged.as_ref().is_some_and(|n| **n == **k);
                if all || in_log {
                    plan.log_new.push((b, k.clone(), v.clone()));
                } else {
                    tree[b].push((k.clone(), v.clone()));
                }
            }
        }
        if plan.log_new.is_empty() {
            // No new run: the chain and its floor stay as they are, so nothing is freed.
            return Ok((plan, tree));
        }
        let is_new = |b: usize, k: &[u8]| {
            plan.log_new
                .binary_search_by(|(nb, nk, _)| (*nb, &**nk).cmp(&(b, k)))
                .is_ok()
        };
        let mut fold: Vec<BTreeMap<Bytes, Slot>> = (0..BUCKETS).map(|_| BTreeMap::new()).collect();
        let mut entries = self.entries + plan.log_new.len() as u64;
        let mut runs = self.runs.len() + 1;
        let mut freed = Vec::new();
        for run in &self.runs {
            if entries <= limits.max_entries && runs <= limits.max_runs {
                break;
            }
            for (b, k) in &run.keys {
                let (b, k) = (*b, k);
                let Some(st) = self.keys[b].get(&**k) else {
                    continue;
                };
                if st.txid != run.txid || st.folded || fold[b].contains_key(k) || is_new(b, k) {
                    continue;
                }
                // Fold every unfolded key of the log in this key's leaf.
                let (lo, hi) = bounds(b, k)?;
                let upper = if hi.is_empty() {
                    Bound::Unbounded
                } else {
                    Bound::Excluded(hi.as_slice())
                };
                for (ok, ost) in
                    self.keys[b].range::<[u8], _>((Bound::Included(lo.as_slice()), upper))
                {
                    if !ost.folded && !is_new(b, ok) {
                        fold[b].insert(ost.key.clone(), ost.val.clone());
                    }
                }
                // The leaf bounds come from the tree; the key itself is folded whatever they say.
                fold[b].insert(k.clone(), st.val.clone());
            }
            entries -= run.keys.len() as u64;
            runs -= 1;
            freed.push((run.id, run.pages));
        }
        plan.fold = fold;
        plan.freed = freed;
        Ok((plan, tree))
    }

    /// The floor of the new run of `plan`, written by `txid`: the oldest run left after the
    /// commit frees its runs.
    pub(crate) fn floor_after(&self, plan: &Plan, txid: u64) -> u64 {
        self.runs.get(plan.freed.len()).map_or(txid, |r| r.txid)
    }

    /// The newest run left after `plan` (its id), 0 = none; the new run's `prev`.
    pub(crate) fn head_after_frees(&self, plan: &Plan) -> u64 {
        if plan.freed.len() >= self.runs.len() {
            0
        } else {
            self.head()
        }
    }

    /// Applies a durable commit `txid` of `plan` (its new run at `new_run` = `(id, pages)`) to
    /// the writer's state and to `index`, and prunes reader versions older than `oldest` (every
    /// live snapshot is at least at `oldest`).
    pub(crate) fn apply(
        &mut self,
        plan: Plan,
        txid: u64,
        new_run: Option<(u64, u64)>,
        index: &DeltaIndex,
        oldest: u64,
    ) {
        let mut g = index.maps.write();
        let push = |g: &mut [IndexBucket; BUCKETS],
                    gc: &mut VecDeque<(u64, usize, Bytes)>,
                    b: usize,
                    k: &Bytes,
                    s: Option<Slot>| {
            match g[b].versions.get_mut(k) {
                Some(v) => {
                    v.push((txid, s.clone()));
                    if let Some(o) = g[b].order.get_mut(&**k) {
                        o.1.push((txid, s));
                    }
                    gc.push_back((txid, b, k.clone()));
                }
                None => {
                    g[b].insert(k, smallvec![(txid, s)]);
                    index.len.fetch_add(1, Ordering::Relaxed);
                }
            }
        };
        for (b, keys) in plan.fold.iter().enumerate() {
            for k in keys.keys() {
                if let Some(st) = self.keys[b].get_mut(&**k) {
                    st.folded = true;
                }
            }
        }
        for _ in 0..plan.freed.len() {
            let run = self.runs.pop_front().expect("planned runs exist");
            self.entries -= run.keys.len() as u64;
            for (b, k) in run.keys {
                if self.keys[b].get(&*k).is_some_and(|st| st.txid == run.txid) {
                    self.keys[b].remove(&*k);
                    push(&mut g, &mut self.gc, b, &k, None);
                }
            }
        }
        if plan.fold_all {
            // Keys of runs freed above are gone; a fold-all frees every run.
            debug_assert!(self.keys.iter().all(BTreeMap::is_empty));
        }
        if let Some((id, pages)) = new_run {
            let mut keys = Vec::with_capacity(plan.log_new.len());
            for (b, k, v) in plan.log_new {
                self.keys[b].insert(
                    IKey::from_slice(&k),
                    KeyState {
                        key: k.clone(),
                        txid,
                        val: v.clone(),
                        folded: false,
                    },
                );
                push(&mut g, &mut self.gc, b, &k, Some(v));
                keys.push((b, k));
            }
            self.entries += keys.len() as u64;
            self.runs.push_back(RunInfo {
                id,
                pages,
                txid,
                keys,
            });
        }
        // Prune: a snapshot at txid >= oldest never needs a version followed by one at or below
        // `oldest`; a key whose only version left is "absent" is dropped.
        while self.gc.front().is_some_and(|(t, _, _)| *t <= oldest) {
            let (_, b, k) = self.gc.pop_front().expect("front exists");
            let Some(v) = g[b].versions.get_mut(&k) else {
                continue;
            };
            let keep = v.iter().rposition(|(t, _)| *t <= oldest).unwrap_or(0);
            v.drain(..keep);
            if v.len() == 1 && v[0].1.is_none() {
                g[b].remove(&k);
                index.len.fetch_sub(1, Ordering::Relaxed);
            } else if let Some(o) = g[b].order.get_mut(&*k) {
                o.1.drain(..keep);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::page::{decode_any, validate_run};

    const PS: usize = 4096;

    fn entries(n: usize) -> Vec<(usize, Bytes, Slot)> {
        (0..n)
            .map(|i| {
                let k: Bytes = format!("key{i:05}").into_bytes().into();
                let v: Slot = (i % 3 != 0).then(|| Bytes::from(vec![i as u8; 150]));
                ((i % 2, k), v)
            })
            .collect::<BTreeMap<_, _>>()
            .into_iter()
            .map(|((b, k), v)| (b, k, v))
            .collect()
    }

    #[test]
    fn layout_constants_chain() {
        assert_eq!(DELTA_ENTRIES_OFFSET, HEADER_LEN + 32);
        assert_eq!(ENTRY_DATA_OFFSET, 8);
    }

    #[test]
    fn run_round_trips_over_several_pages() {
        let es = entries(100);
        let run = encode_run(&es, 9, 5, 12, 3, PS);
        assert_eq!(run.len() % PS, 0);
        assert!(run.len() > PS, "100 entries of ~160 bytes span pages");
        validate_run(&run, 9, PS, Some(PageType::Delta)).unwrap();
        let r = decode_run(&run);
        assert_eq!((r.prev, r.txid, r.floor), (5, 12, 3));
        let back: Vec<(usize, Bytes, Slot)> = r
            .entries
            .iter()
            .map(|e| (e.bucket as usize, e.key.into(), e.val.map(Bytes::from)))
            .collect();
        assert_eq!(back, es);
        assert!(decode_any(&run, 9, PS).is_ok());
    }

    fn reseal(run: &mut [u8]) {
        let sum = crate::backend::page::run_checksum(run);
        put_u32(run, 0, sum);
    }

    #[test]
    fn damaged_runs_are_refused_with_a_reason() {
        let es = entries(10);
        let run = encode_run(&es, 9, 0, 12, 12, PS);
        let mut bad = run.clone();
        bad[DELTA_ENTRIES_OFFSET + 20] ^= 1;
        let e = validate_run(&bad, 9, PS, None).unwrap_err();
        assert_eq!(e.page, 9);
        assert!(e.reason.contains("checksum"), "{}", e.reason);
        // Structural damage behind a valid checksum.
        let mut bad = run.clone();
        bad[DELTA_ENTRIES_OFFSET + ENTRY_BUCKET_OFFSET] = 200;
        reseal(&mut bad);
        let e = validate_run(&bad, 9, PS, None).unwrap_err();
        assert!(e.reason.contains("unknown bucket"), "{}", e.reason);
        let mut bad = run.clone();
        put_u32(&mut bad, DELTA_COUNT_OFFSET, 100_000);
        reseal(&mut bad);
        let e = validate_run(&bad, 9, PS, None).unwrap_err();
        assert!(e.reason.contains("delta entry 10"), "{}", e.reason);
        let mut bad = run;
        put_u64(&mut bad, DELTA_FLOOR_OFFSET, 13);
        reseal(&mut bad);
        let e = validate_run(&bad, 9, PS, None).unwrap_err();
        assert!(e.reason.contains("floor"), "{}", e.reason);
    }

    proptest::proptest! {
        #[test]
        fn delta_decoder_never_panics(mut bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), DELTA_ENTRIES_OFFSET..2 * PS),
                                      count in 0u32..64) {
            bytes.resize(PS * bytes.len().div_ceil(PS), 0);
            bytes[crate::backend::page::TYPE_OFFSET] = PageType::Delta as u8;
            put_u64(&mut bytes, crate::backend::page::ID_OFFSET, 7);
            let overflow = (bytes.len() / PS - 1) as u32;
            put_u32(&mut bytes, crate::backend::page::OVERFLOW_OFFSET, overflow);
            put_u32(&mut bytes, DELTA_COUNT_OFFSET, count);
            reseal(&mut bytes);
            let _ = decode_any(&bytes, 7, PS);
        }
    }
}

//! Batch entries: several proposals that reached the raft core in one loop turn, carried by one
//! raft entry (format.md, "Batch raft entries"). raft-rs, the WAL and the peers then handle one
//! entry instead of one per proposal; the state machine applies the proposals in order, each
//! as its own request.
//!
//! A batch entry's data starts with [`BATCH_MARKER`] (0x00). A single proposal is never
//! wrapped: its data is the proposer's bytes as given, and the node's proposals (protobuf
//! `InternalRaftRequest`s) never start with 0x00 (a protobuf field tag is at least 0x08), so
//! entries written before batches existed replay unchanged.
//!
//! Worked example: proposals `a` = `[0x0a, 0x01]` and `b` = `[0x12]` in one turn become
//!
//! ```text
//!  00 | 01 | 02 00 00 00 | 02 00 00 00 | 0a 01 | 01 00 00 00 | 12
//!  marker version count     len a         a      len b         b
//! ```
//!
//! and [`split_batch`] of those 17 bytes yields `[0x0a, 0x01]`, then `[0x12]`;
//! [`requests_in`] says 2 (the snapshot trigger counts requests, not entries).

use std::fmt;

/// First byte of a batch entry.
pub const BATCH_MARKER: u8 = 0x00;
/// Version 1: the layout below (session 6).
pub const BATCH_VERSION_1: u8 = 1;

const MARKER_OFFSET: usize = 0;
const VERSION_OFFSET: usize = MARKER_OFFSET + size_of::<u8>();
const COUNT_OFFSET: usize = VERSION_OFFSET + size_of::<u8>();
/// Length of a batch entry's header; the requests follow.
pub const BATCH_HEADER_LEN: usize = COUNT_OFFSET + size_of::<u32>();
/// Bytes before each request: its length.
pub const BATCH_LEN_PREFIX: usize = size_of::<u32>();

/// A batch entry whose bytes do not follow the layout (a bug or a damaged peer message: the
/// WAL's checksums catch damage on disk). `offset` is where in the entry's data it fails.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchError {
    pub offset: usize,
    pub what: &'static str,
}

impl fmt::Display for BatchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "batch entry at byte {}: {}", self.offset, self.what)
    }
}

impl std::error::Error for BatchError {}

/// Whether `data` is a batch entry (else it is one proposal, or empty).
pub fn is_batch(data: &[u8]) -> bool {
    data.first() == Some(&BATCH_MARKER)
}

/// How many proposals the entry carries: the batch's count, 1 for any other entry (an empty
/// entry counts as one, like etcd counts entries).
pub fn requests_in(data: &[u8]) -> u64 {
    if !is_batch(data) {
        return 1;
    }
    data.get(COUNT_OFFSET..BATCH_HEADER_LEN).map_or(1, |b| {
        u32::from_le_bytes(b.try_into().expect("4 bytes")).max(1) as u64
    })
}

/// The encoded size of a batch of proposals of these lengths.
pub fn batch_len(lens: impl IntoIterator<Item = usize>) -> usize {
    BATCH_HEADER_LEN
        + lens
            .into_iter()
            .map(|l| BATCH_LEN_PREFIX + l)
            .sum::<usize>()
}

/// Encodes `parts` as one batch entry. Each part must be shorter than 4 GiB (raft entries are
/// far smaller: the node's requests are at most `--max-request-bytes`).
pub fn encode_batch<'a>(parts: impl IntoIterator<Item = &'a [u8]> + Clone) -> Vec<u8> {
    let len = batch_len(parts.clone().into_iter().map(<[u8]>::len));
    let mut out = Vec::with_capacity(len);
    let mut count: u32 = 0;
    // Format: { marker 0x00: u8, version: u8, count: u32 LE, count × { len: u32 LE, bytes } }
    out.push(BATCH_MARKER);
    out.push(BATCH_VERSION_1);
    out.extend_from_slice(&0u32.to_le_bytes());
    for p in parts {
        let l = u32::try_from(p.len()).expect("a proposal is smaller than 4 GiB");
        out.extend_from_slice(&l.to_le_bytes());
        out.extend_from_slice(p);
        count += 1;
    }
    out[COUNT_OFFSET..BATCH_HEADER_LEN].copy_from_slice(&count.to_le_bytes());
    out
}

/// The proposals of a batch entry, in order. Checks the whole layout first (marker, version,
/// every length within the data, nothing after the last request, the count), so a caller sees
/// either every request or an error before any.
pub fn split_batch(data: &[u8]) -> Result<BatchIter<'_>, BatchError> {
    let err = |offset, what| Err(BatchError { offset, what });
    if data.len() < BATCH_HEADER_LEN {
        return err(0, "shorter than the batch header");
    }
    if data[MARKER_OFFSET] != BATCH_MARKER {
        return err(MARKER_OFFSET, "not a batch entry (first byte is not 0x00)");
    }
    if data[VERSION_OFFSET] != BATCH_VERSION_1 {
        return err(VERSION_OFFSET, "unknown batch version");
    }
    let count = u32::from_le_bytes(
        data[COUNT_OFFSET..BATCH_HEADER_LEN]
            .try_into()
            .expect("4 bytes"),
    );
    let mut at = BATCH_HEADER_LEN;
    let mut seen: u32 = 0;
    while at < data.len() {
        let Some(l) = data.get(at..at + BATCH_LEN_PREFIX) else {
            return err(at, "request length cut short");
        };
        let l = u32::from_le_bytes(l.try_into().expect("4 bytes")) as usize;
        let end = at + BATCH_LEN_PREFIX + l;
        if end > data.len() {
            return err(at, "request runs past the end of the entry");
        }
        at = end;
        seen += 1;
    }
    if seen != count {
        return err(COUNT_OFFSET, "count does not match the requests present");
    }
    Ok(BatchIter {
        rest: &data[BATCH_HEADER_LEN..],
        left: count,
    })
}

/// Iterator over a checked batch's requests ([`split_batch`]).
#[derive(Debug, Clone)]
pub struct BatchIter<'a> {
    rest: &'a [u8],
    left: u32,
}

impl<'a> Iterator for BatchIter<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        if self.left == 0 {
            return None;
        }
        // Lengths were checked by `split_batch`.
        let (l, rest) = self.rest.split_at(BATCH_LEN_PREFIX);
        let l = u32::from_le_bytes(l.try_into().expect("4 bytes")) as usize;
        let (req, rest) = rest.split_at(l);
        self.rest = rest;
        self.left -= 1;
        Some(req)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left as usize, Some(self.left as usize))
    }
}

impl ExactSizeIterator for BatchIter<'_> {}

/// Requests per committed log index, for the snapshot trigger and the catch-up compaction,
/// which count requests (etcd's `--snapshot-count` counts its entries, one request each): with
/// batch entries, counting entries would let the WAL and the in-memory log grow by up to a
/// batch per counted entry.
///
/// `at(i)` is the number of requests in the entries up to index `i`, relative to an arbitrary
/// origin (only differences mean anything). Entries never recorded (before a restart, inside
/// an installed snapshot, below the first recorded) count one request each. Holds one
/// `(index, at(index))` pair per recorded entry from the oldest the in-memory log keeps on.
///
/// Example: entries 5 (1 request), 6 (a batch of 3) and 7 (1) recorded after a restart give
/// `[(5, 5), (6, 8), (7, 9)]` (below 5 one per entry: `at(4)` = 4); `at(7) - at(4)` = 5
/// requests after index 4; `first_kept(7, 2)` = 6 (entry 7 alone holds 1 request, 6..=7 hold 4).
#[derive(Debug, Default)]
pub(crate) struct RequestCounts {
    entries: std::collections::VecDeque<(u64, i64)>,
    /// `at` of the entry before the oldest kept one, once entries were pruned.
    pruned: Option<(u64, i64)>,
}

impl RequestCounts {
    /// Records the committed entry `index` carrying `n` requests. Indexes must increase; one
    /// at or below the last recorded is ignored (raft-rs hands each committed entry once).
    pub(crate) fn record(&mut self, index: u64, n: u64) {
        if self.entries.back().is_some_and(|&(i, _)| index <= i) {
            return;
        }
        let before = self.at(index.saturating_sub(1));
        self.entries.push_back((index, before + n as i64));
    }

    /// Requests in the entries up to `index` (module doc: relative).
    pub(crate) fn at(&self, index: u64) -> i64 {
        let k = self.entries.partition_point(|&(i, _)| i <= index);
        let (i, c) = match k {
            0 => match self.pruned {
                Some((pi, pc)) if pi <= index => (pi, pc),
                // Below everything known: one request per entry.
                Some((pi, pc)) => return pc - (pi - index) as i64,
                None => return index as i64,
            },
            k => self.entries[k - 1],
        };
        c + (index - i) as i64
    }

    /// The first index to keep so that the entries from it up to `index` hold at least `keep`
    /// requests (all entries down to index 1 when fewer exist).
    pub(crate) fn first_kept(&self, index: u64, keep: u64) -> u64 {
        let target = self.at(index) - keep as i64;
        // The last index j with at(j) <= target; keeping j + 1..=index holds ≥ keep requests.
        let k = self
            .entries
            .partition_point(|&(i, c)| i <= index && c <= target);
        let j = match k {
            0 => {
                // Below the recorded entries, one request per entry.
                let first = self.entries.front().map_or(index + 1, |&(f, _)| f);
                let below = self.at(first - 1);
                if below <= target {
                    first - 1
                } else {
                    (first - 1).saturating_sub((below - target) as u64)
                }
            }
            k => self.entries[k - 1].0,
        };
        (j + 1).max(1)
    }

    /// Forgets entries below `index` (the in-memory log was compacted to start there).
    pub(crate) fn prune_below(&mut self, index: u64) {
        while let Some(&front) = self.entries.front() {
            if front.0 >= index {
                break;
            }
            self.pruned = Some(front);
            self.entries.pop_front();
        }
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_worked_example_encodes_and_splits_back() {
        let a: &[u8] = &[0x0a, 0x01];
        let b: &[u8] = &[0x12];
        let e = encode_batch([a, b]);
        assert_eq!(
            e,
            [0, 1, 2, 0, 0, 0, 2, 0, 0, 0, 0x0a, 0x01, 1, 0, 0, 0, 0x12]
        );
        assert_eq!(e.len(), batch_len([2, 1]));
        assert!(is_batch(&e));
        assert_eq!(requests_in(&e), 2);
        let parts: Vec<&[u8]> = split_batch(&e).unwrap().collect();
        assert_eq!(parts, [a, b]);
    }

    #[test]
    fn plain_and_empty_entries_are_one_request_and_not_batches() {
        assert!(!is_batch(&[0x0a, 0x00]));
        assert!(!is_batch(&[]));
        assert_eq!(requests_in(&[0x0a, 0x00]), 1);
        assert_eq!(requests_in(&[]), 1);
    }

    #[test]
    fn empty_requests_inside_a_batch_survive() {
        let e = encode_batch([&[][..], &[7u8][..], &[][..]]);
        let parts: Vec<&[u8]> = split_batch(&e).unwrap().collect();
        assert_eq!(parts, [&[][..], &[7u8][..], &[][..]]);
    }

    #[test]
    fn damaged_batches_are_refused_with_the_offset() {
        let e = encode_batch([&[1u8, 2, 3][..], &[4u8][..]]);
        // Cut inside the second request's length prefix.
        let cut = &e[..BATCH_HEADER_LEN + 4 + 3 + 2];
        assert_eq!(
            split_batch(cut).unwrap_err(),
            BatchError {
                offset: BATCH_HEADER_LEN + 7,
                what: "request length cut short"
            }
        );
        // Cut inside the second request.
        let mut long = e.clone();
        long[BATCH_HEADER_LEN + 7] = 9;
        assert_eq!(split_batch(&long).unwrap_err().offset, BATCH_HEADER_LEN + 7);
        // Count says 3, two present.
        let mut count = e.clone();
        count[COUNT_OFFSET] = 3;
        assert_eq!(split_batch(&count).unwrap_err().offset, COUNT_OFFSET);
        let mut version = e.clone();
        version[VERSION_OFFSET] = 2;
        assert_eq!(split_batch(&version).unwrap_err().offset, VERSION_OFFSET);
        assert_eq!(split_batch(&e[..3]).unwrap_err().offset, 0);
        assert!(split_batch(&[0x0a, 1, 2, 3, 4, 5]).is_err());
    }

    #[test]
    fn request_counts_follow_the_worked_example() {
        let mut c = RequestCounts::default();
        c.record(5, 1);
        c.record(6, 3);
        c.record(7, 1);
        assert_eq!(c.at(4), 4);
        assert_eq!(c.at(7) - c.at(4), 5);
        assert_eq!(c.at(6) - c.at(5), 3);
        assert_eq!(c.first_kept(7, 1), 7);
        assert_eq!(c.first_kept(7, 2), 6);
        assert_eq!(c.first_kept(7, 4), 6);
        assert_eq!(c.first_kept(7, 5), 5);
        // Below the recorded entries one request per entry: 2 more requests → index 3.
        assert_eq!(c.first_kept(7, 7), 3);
        assert_eq!(c.first_kept(7, 100), 1);
        // Beyond the last recorded entry, one per entry too.
        assert_eq!(c.at(9) - c.at(7), 2);
    }

    #[test]
    fn request_counts_without_batches_count_entries() {
        let mut c = RequestCounts::default();
        for i in 1..=50 {
            c.record(i, 1);
        }
        assert_eq!(c.at(50) - c.at(20), 30);
        assert_eq!(c.first_kept(50, 10), 41);
        c.prune_below(41);
        assert_eq!(c.len(), 10);
        assert_eq!(
            c.at(50) - c.at(20),
            30,
            "pruned entries still count one each"
        );
        assert_eq!(c.first_kept(50, 10), 41);
        assert_eq!(c.first_kept(50, 20), 31);
    }

    #[test]
    fn request_counts_survive_pruning_everything_and_gaps() {
        let mut c = RequestCounts::default();
        c.record(1, 10);
        c.record(2, 10);
        c.prune_below(100);
        assert_eq!(c.len(), 0);
        // What was pruned is gone; from there on one request per entry.
        assert_eq!(c.at(5) - c.at(2), 3);
        // A gap (an installed snapshot) counts one per entry.
        c.record(10, 5);
        assert_eq!(c.at(10) - c.at(2), 7 + 5);
        assert_eq!(c.first_kept(10, 5), 10);
        assert_eq!(c.first_kept(10, 6), 9);
        // Stale records are ignored.
        c.record(10, 100);
        c.record(3, 100);
        assert_eq!(c.at(10) - c.at(2), 12);
    }
}

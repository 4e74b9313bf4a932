//! The WAL's bytes: segment names, the segment header and the record frame.
//!
//! The prose and the byte diagrams are the WAL section of `engine/docs/format.md`; the constants
//! below are the same layout, and the tests at the bottom check that they agree with it.
//! Every integer is little-endian and fixed width.

use bytes::Bytes;

use super::{HardState, LogEntry, Record, SnapshotMark};

/// Alignment of every record's start, in bytes.
pub(crate) const RECORD_ALIGN: usize = 8;

// ---- segment header, at offset 0 of every segment file ----

/// "ringkvWL": identifies a ringkv WAL segment.
pub(crate) const SEGMENT_MAGIC: [u8; 8] = *b"ringkvWL";
/// Version 1: the first format (this header, 16-byte record frames seeded with the segment
/// sequence number, flush ids in every frame).
pub(crate) const FORMAT_V1: u32 = 1;
pub(crate) const FORMAT_VERSION: u32 = FORMAT_V1;

pub(crate) const MAGIC_OFFSET: usize = 0;
pub(crate) const VERSION_OFFSET: usize = MAGIC_OFFSET + SEGMENT_MAGIC.len();
pub(crate) const HEADER_FLUSH_OFFSET: usize = VERSION_OFFSET + size_of::<u32>();
pub(crate) const SEQ_OFFSET: usize = HEADER_FLUSH_OFFSET + size_of::<u32>();
pub(crate) const FIRST_INDEX_OFFSET: usize = SEQ_OFFSET + size_of::<u64>();
pub(crate) const HEADER_CRC_OFFSET: usize = FIRST_INDEX_OFFSET + size_of::<u64>();
pub(crate) const HEADER_RESERVED_OFFSET: usize = HEADER_CRC_OFFSET + size_of::<u32>();
/// Records start here.
pub(crate) const SEGMENT_HEADER_LEN: usize = HEADER_RESERVED_OFFSET + size_of::<u32>();

/// A decoded segment header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SegmentHeader {
    pub seq: u64,
    pub first_index: u64,
    /// Flush id of the write that created the segment (its header and carried-over records).
    pub flush: u32,
}

// Format: { magic [8] | version u32 | flush u32 | seq u64 | first_index u64 | crc u32 | 0 u32 }
pub(crate) fn encode_header(out: &mut [u8], h: &SegmentHeader) {
    let out = &mut out[..SEGMENT_HEADER_LEN];
    out[MAGIC_OFFSET..VERSION_OFFSET].copy_from_slice(&SEGMENT_MAGIC);
    put_u32(out, VERSION_OFFSET, FORMAT_VERSION);
    put_u32(out, HEADER_FLUSH_OFFSET, h.flush);
    put_u64(out, SEQ_OFFSET, h.seq);
    put_u64(out, FIRST_INDEX_OFFSET, h.first_index);
    let crc = crc32c::crc32c(&out[..HEADER_CRC_OFFSET]);
    put_u32(out, HEADER_CRC_OFFSET, crc);
    put_u32(out, HEADER_RESERVED_OFFSET, 0);
}

/// Decodes and checks a segment header; the error says what is wrong.
pub(crate) fn decode_header(data: &[u8]) -> Result<SegmentHeader, String> {
    if data.len() < SEGMENT_HEADER_LEN {
        return Err(format!(
            "file is {} bytes, shorter than the {SEGMENT_HEADER_LEN}-byte segment header",
            data.len()
        ));
    }
    if data[MAGIC_OFFSET..VERSION_OFFSET] != SEGMENT_MAGIC {
        return Err("bad magic: not a ringkv WAL segment".into());
    }
    let crc = get_u32(data, HEADER_CRC_OFFSET);
    if crc != crc32c::crc32c(&data[..HEADER_CRC_OFFSET]) {
        return Err("segment header checksum mismatch".into());
    }
    let version = get_u32(data, VERSION_OFFSET);
    if version != FORMAT_V1 {
        return Err(format!("unsupported WAL format version {version}"));
    }
    Ok(SegmentHeader {
        seq: get_u64(data, SEQ_OFFSET),
        first_index: get_u64(data, FIRST_INDEX_OFFSET),
        flush: get_u32(data, HEADER_FLUSH_OFFSET),
    })
}

// ---- record frame ----

pub(crate) const CRC_OFFSET: usize = 0;
pub(crate) const LEN_OFFSET: usize = CRC_OFFSET + size_of::<u32>();
pub(crate) const KIND_OFFSET: usize = LEN_OFFSET + size_of::<u32>();
pub(crate) const RESERVED_OFFSET: usize = KIND_OFFSET + size_of::<u8>();
pub(crate) const FLUSH_OFFSET: usize = RESERVED_OFFSET + 3;
pub(crate) const PAYLOAD_OFFSET: usize = FLUSH_OFFSET + size_of::<u32>();
pub(crate) const RECORD_HEADER_LEN: usize = PAYLOAD_OFFSET;

/// Record kinds. 0 is never written: a zero frame header marks the end of the records.
pub(crate) const KIND_ENTRY: u8 = 1;
pub(crate) const KIND_HARD_STATE: u8 = 2;
pub(crate) const KIND_SNAPSHOT: u8 = 3;
pub(crate) const KIND_METADATA: u8 = 4;

// Entry payload.
pub(crate) const ENTRY_INDEX_OFFSET: usize = 0;
pub(crate) const ENTRY_TERM_OFFSET: usize = ENTRY_INDEX_OFFSET + size_of::<u64>();
pub(crate) const ENTRY_TYPE_OFFSET: usize = ENTRY_TERM_OFFSET + size_of::<u64>();
pub(crate) const ENTRY_DATA_OFFSET: usize = ENTRY_TYPE_OFFSET + size_of::<u8>();

// HardState payload.
pub(crate) const HS_TERM_OFFSET: usize = 0;
pub(crate) const HS_VOTE_OFFSET: usize = HS_TERM_OFFSET + size_of::<u64>();
pub(crate) const HS_COMMIT_OFFSET: usize = HS_VOTE_OFFSET + size_of::<u64>();
pub(crate) const HS_LEN: usize = HS_COMMIT_OFFSET + size_of::<u64>();

// Snapshot marker payload.
pub(crate) const SNAP_INDEX_OFFSET: usize = 0;
pub(crate) const SNAP_TERM_OFFSET: usize = SNAP_INDEX_OFFSET + size_of::<u64>();
pub(crate) const SNAP_LEN: usize = SNAP_TERM_OFFSET + size_of::<u64>();

fn payload_len(rec: &Record) -> usize {
    match rec {
        Record::Entry(e) => ENTRY_DATA_OFFSET + e.data.len(),
        Record::HardState(_) => HS_LEN,
        Record::Snapshot(_) => SNAP_LEN,
        Record::Metadata(m) => m.len(),
    }
}

/// Bytes a record occupies in a segment: frame header, payload, zero padding to 8.
pub fn encoded_len(rec: &Record) -> usize {
    (RECORD_HEADER_LEN + payload_len(rec)).next_multiple_of(RECORD_ALIGN)
}

/// The CRC seed of segment `seq`: a frame copied into another segment does not verify there.
pub fn crc_seed(seq: u64) -> u32 {
    crc32c::crc32c(&seq.to_le_bytes())
}

// Format: { crc u32 | len u32 | kind u8 | 0 [3] | flush u32 | payload [len] | 0 pad to 8 }
/// Encodes `rec` at the start of `out` (which must hold [`encoded_len`] bytes and be zeroed in
/// the padding) as part of flush `flush` of the segment whose CRC seed is `seed`. Returns the
/// bytes used. Records longer than `u32::MAX` are rejected by the caller.
pub fn encode_record(out: &mut [u8], rec: &Record, flush: u32, seed: u32) -> usize {
    let len = payload_len(rec);
    let total = encoded_len(rec);
    let frame = &mut out[..total];
    let payload = &mut frame[PAYLOAD_OFFSET..PAYLOAD_OFFSET + len];
    let kind = match rec {
        Record::Entry(e) => {
            put_u64(payload, ENTRY_INDEX_OFFSET, e.index);
            put_u64(payload, ENTRY_TERM_OFFSET, e.term);
            payload[ENTRY_TYPE_OFFSET] = e.entry_type;
            payload[ENTRY_DATA_OFFSET..].copy_from_slice(&e.data);
            KIND_ENTRY
        }
        Record::HardState(h) => {
            put_u64(payload, HS_TERM_OFFSET, h.term);
            put_u64(payload, HS_VOTE_OFFSET, h.vote);
            put_u64(payload, HS_COMMIT_OFFSET, h.commit);
            KIND_HARD_STATE
        }
        Record::Snapshot(s) => {
            put_u64(payload, SNAP_INDEX_OFFSET, s.index);
            put_u64(payload, SNAP_TERM_OFFSET, s.term);
            KIND_SNAPSHOT
        }
        Record::Metadata(m) => {
            payload.copy_from_slice(m);
            KIND_METADATA
        }
    };
    put_u32(frame, LEN_OFFSET, len as u32);
    frame[KIND_OFFSET] = kind;
    frame[RESERVED_OFFSET..FLUSH_OFFSET].fill(0);
    put_u32(frame, FLUSH_OFFSET, flush);
    frame[PAYLOAD_OFFSET + len..].fill(0);
    let crc = crc32c::crc32c_append(seed, &frame[LEN_OFFSET..PAYLOAD_OFFSET + len]);
    put_u32(frame, CRC_OFFSET, crc);
    total
}

/// What [`decode_record`] found at a position.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    /// A valid record of flush `flush`, occupying `len` bytes.
    Record {
        record: Record,
        flush: u32,
        len: usize,
    },
    /// A zero frame header, or the end of the data: no more records here.
    End,
    /// Bytes that are not a valid record (torn write or corruption); the reason says why.
    Invalid(String),
}

/// Decodes the record at `data[pos..]` of the segment whose CRC seed is `seed`.
pub fn decode_record(data: &[u8], pos: usize, seed: u32) -> Decoded {
    let Some(rest) = data.get(pos..).filter(|r| !r.is_empty()) else {
        return Decoded::End;
    };
    if rest.len() < RECORD_HEADER_LEN {
        return if rest.iter().all(|&b| b == 0) {
            Decoded::End
        } else {
            Decoded::Invalid("frame header cut short by the end of the file".into())
        };
    }
    let head = &rest[..RECORD_HEADER_LEN];
    if head.iter().all(|&b| b == 0) {
        return Decoded::End;
    }
    let len = get_u32(head, LEN_OFFSET) as usize;
    let kind = head[KIND_OFFSET];
    if !(KIND_ENTRY..=KIND_METADATA).contains(&kind) {
        return Decoded::Invalid(format!("unknown record kind {kind}"));
    }
    if head[RESERVED_OFFSET..FLUSH_OFFSET] != [0, 0, 0] {
        return Decoded::Invalid("reserved frame bytes are not zero".into());
    }
    let Some(payload) = rest.get(PAYLOAD_OFFSET..PAYLOAD_OFFSET + len) else {
        return Decoded::Invalid(format!(
            "payload length {len} runs past the end of the file"
        ));
    };
    let crc = crc32c::crc32c_append(seed, &rest[LEN_OFFSET..PAYLOAD_OFFSET + len]);
    if crc != get_u32(head, CRC_OFFSET) {
        return Decoded::Invalid("record checksum mismatch".into());
    }
    // Padding is outside the checksum; it must be zero so that every byte of a frame is
    // checked. The end of the data may cut it (a file cut at the record's end).
    let framed = (RECORD_HEADER_LEN + len).next_multiple_of(RECORD_ALIGN);
    let padding = &rest[PAYLOAD_OFFSET + len..framed.min(rest.len())];
    if padding.iter().any(|&b| b != 0) {
        return Decoded::Invalid("record padding is not zero".into());
    }
    let record = match kind {
        KIND_ENTRY if len >= ENTRY_DATA_OFFSET => Record::Entry(LogEntry {
            index: get_u64(payload, ENTRY_INDEX_OFFSET),
            term: get_u64(payload, ENTRY_TERM_OFFSET),
            entry_type: payload[ENTRY_TYPE_OFFSET],
            data: Bytes::copy_from_slice(&payload[ENTRY_DATA_OFFSET..]),
        }),
        KIND_HARD_STATE if len == HS_LEN => Record::HardState(HardState {
            term: get_u64(payload, HS_TERM_OFFSET),
            vote: get_u64(payload, HS_VOTE_OFFSET),
            commit: get_u64(payload, HS_COMMIT_OFFSET),
        }),
        KIND_SNAPSHOT if len == SNAP_LEN => Record::Snapshot(SnapshotMark {
            index: get_u64(payload, SNAP_INDEX_OFFSET),
            term: get_u64(payload, SNAP_TERM_OFFSET),
        }),
        KIND_METADATA => Record::Metadata(Bytes::copy_from_slice(payload)),
        _ => return Decoded::Invalid(format!("kind {kind} with a payload of {len} bytes")),
    };
    Decoded::Record {
        record,
        flush: get_u32(head, FLUSH_OFFSET),
        len: framed,
    }
}

/// `{seq:016x}-{index:016x}.wal`: the name of segment `seq` whose first entry index is `index`.
pub(crate) fn segment_name(seq: u64, first_index: u64) -> String {
    format!("{seq:016x}-{first_index:016x}.wal")
}

/// The inverse of [`segment_name`]; `None` for any other name.
pub(crate) fn parse_segment_name(name: &str) -> Option<(u64, u64)> {
    let stem = name.strip_suffix(".wal")?;
    let (seq, index) = stem.split_once('-')?;
    if seq.len() != 16 || index.len() != 16 {
        return None;
    }
    Some((
        u64::from_str_radix(seq, 16).ok()?,
        u64::from_str_radix(index, 16).ok()?,
    ))
}

/// Suffix of a segment file being zero-filled by the allocator (deleted at open).
pub(crate) const ALLOC_SUFFIX: &str = ".wal.alloc";
/// Suffix of a zero-filled, synced segment file not yet installed (deleted at open).
pub(crate) const READY_SUFFIX: &str = ".wal.ready";

fn put_u32(out: &mut [u8], at: usize, v: u32) {
    out[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn put_u64(out: &mut [u8], at: usize, v: u64) {
    out[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

pub(crate) fn get_u32(data: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(data[at..at + 4].try_into().expect("4 bytes"))
}

pub(crate) fn get_u64(data: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(data[at..at + 8].try_into().expect("8 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples() -> Vec<Record> {
        vec![
            Record::Entry(LogEntry {
                index: 7,
                term: 3,
                entry_type: 1,
                data: Bytes::from_static(b"put k v"),
            }),
            Record::Entry(LogEntry {
                index: 8,
                term: 3,
                entry_type: 0,
                data: Bytes::new(),
            }),
            Record::HardState(HardState {
                term: 3,
                vote: 2,
                commit: 7,
            }),
            Record::Snapshot(SnapshotMark { index: 5, term: 2 }),
            Record::Metadata(Bytes::from_static(b"cluster-id=1")),
            Record::Metadata(Bytes::new()),
        ]
    }

    #[test]
    fn layout_constants_match_format_md() {
        // engine/docs/format.md, "WAL": header 40 bytes, frame header 16 bytes.
        assert_eq!(VERSION_OFFSET, 8);
        assert_eq!(HEADER_FLUSH_OFFSET, 12);
        assert_eq!(SEQ_OFFSET, 16);
        assert_eq!(FIRST_INDEX_OFFSET, 24);
        assert_eq!(HEADER_CRC_OFFSET, 32);
        assert_eq!(SEGMENT_HEADER_LEN, 40);
        assert_eq!((LEN_OFFSET, KIND_OFFSET, RESERVED_OFFSET), (4, 8, 9));
        assert_eq!((FLUSH_OFFSET, PAYLOAD_OFFSET), (12, 16));
        assert_eq!((ENTRY_TYPE_OFFSET, ENTRY_DATA_OFFSET), (16, 17));
        assert_eq!((HS_LEN, SNAP_LEN), (24, 16));
        assert!(SEGMENT_HEADER_LEN.is_multiple_of(RECORD_ALIGN));
    }

    #[test]
    fn every_record_kind_round_trips() {
        let seed = crc_seed(9);
        for rec in samples() {
            let mut buf = vec![0u8; encoded_len(&rec)];
            let n = encode_record(&mut buf, &rec, 42, seed);
            assert_eq!(n, buf.len());
            assert!(n.is_multiple_of(RECORD_ALIGN));
            assert_eq!(
                decode_record(&buf, 0, seed),
                Decoded::Record {
                    record: rec.clone(),
                    flush: 42,
                    len: n
                }
            );
            // Another segment's seed rejects the frame.
            assert!(matches!(
                decode_record(&buf, 0, crc_seed(10)),
                Decoded::Invalid(_)
            ));
        }
    }

    #[test]
    fn known_bytes_of_a_hard_state_frame() {
        let rec = Record::HardState(HardState {
            term: 1,
            vote: 2,
            commit: 3,
        });
        let mut buf = vec![0u8; encoded_len(&rec)];
        encode_record(&mut buf, &rec, 5, crc_seed(0));
        assert_eq!(buf.len(), 40);
        assert_eq!(&buf[4..16], &[24, 0, 0, 0, 2, 0, 0, 0, 5, 0, 0, 0]);
        assert_eq!(&buf[16..24], &1u64.to_le_bytes());
        assert_eq!(&buf[32..40], &3u64.to_le_bytes());
    }

    #[test]
    fn every_single_bit_flip_is_detected() {
        let seed = crc_seed(1);
        for rec in samples() {
            let mut buf = vec![0u8; encoded_len(&rec)];
            encode_record(&mut buf, &rec, 1, seed);
            for bit in 0..buf.len() * 8 {
                let mut bad = buf.clone();
                bad[bit / 8] ^= 1 << (bit % 8);
                assert!(
                    !matches!(decode_record(&bad, 0, seed), Decoded::Record { .. }),
                    "flip of bit {bit} in {rec:?} went unnoticed"
                );
            }
        }
    }

    #[test]
    fn zeros_and_short_tails_end_the_records() {
        assert_eq!(decode_record(&[0u8; 64], 0, 0), Decoded::End);
        assert_eq!(decode_record(&[0u8; 64], 64, 0), Decoded::End);
        assert_eq!(decode_record(&[0u8; 5], 0, 0), Decoded::End);
        assert!(matches!(
            decode_record(&[1u8; 5], 0, 0),
            Decoded::Invalid(_)
        ));
    }

    #[test]
    fn header_round_trip_and_damage() {
        let h = SegmentHeader {
            seq: 3,
            first_index: 77,
            flush: 9,
        };
        let mut buf = [0u8; SEGMENT_HEADER_LEN];
        encode_header(&mut buf, &h);
        assert_eq!(decode_header(&buf), Ok(h));
        let mut bad = buf;
        bad[SEQ_OFFSET] ^= 1;
        assert!(decode_header(&bad).unwrap_err().contains("checksum"));
        assert!(decode_header(&buf[..10]).is_err());
        assert!(decode_header(&[0u8; 64]).unwrap_err().contains("magic"));
    }

    #[test]
    fn segment_names() {
        let name = segment_name(1, 0x2a);
        assert_eq!(name, "0000000000000001-000000000000002a.wal");
        assert_eq!(parse_segment_name(&name), Some((1, 0x2a)));
        assert_eq!(parse_segment_name("1-2.wal"), None);
        assert_eq!(parse_segment_name("0000000000000001.wal.ready"), None);
    }
}

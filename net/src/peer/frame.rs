//! The bytes of the peer protocol (engine/docs/design.md, "## Peer transport", has the byte
//! diagrams). Every integer is little-endian fixed width; there is no sort order to keep.

use std::io::{self, Read, Write};

/// First bytes of a message connection: "RKVP" and the protocol version.
pub(crate) const MAGIC: [u8; 4] = *b"RKVP";
/// First bytes of a snapshot connection (one MsgSnapshot and the backend file it carries).
pub(crate) const MAGIC_SNAPSHOT: [u8; 4] = *b"RKVS";
/// Version 1: hello, reply, batch frames, snapshot chunk and end records as below.
pub(crate) const VERSION_1: u16 = 1;

// Hello, sent by the connecting member.
pub(crate) const HELLO_MAGIC_OFFSET: usize = 0;
pub(crate) const HELLO_VERSION_OFFSET: usize = HELLO_MAGIC_OFFSET + MAGIC.len();
pub(crate) const HELLO_CLUSTER_OFFSET: usize = HELLO_VERSION_OFFSET + size_of::<u16>();
pub(crate) const HELLO_FROM_OFFSET: usize = HELLO_CLUSTER_OFFSET + size_of::<u64>();
pub(crate) const HELLO_TO_OFFSET: usize = HELLO_FROM_OFFSET + size_of::<u64>();
pub(crate) const HELLO_CRC_OFFSET: usize = HELLO_TO_OFFSET + size_of::<u64>();
pub(crate) const HELLO_LEN: usize = HELLO_CRC_OFFSET + size_of::<u32>();

// Reply, sent by the accepting member.
pub(crate) const REPLY_STATUS_OFFSET: usize = 0;
pub(crate) const REPLY_CLUSTER_OFFSET: usize = REPLY_STATUS_OFFSET + size_of::<u8>();
pub(crate) const REPLY_CRC_OFFSET: usize = REPLY_CLUSTER_OFFSET + size_of::<u64>();
pub(crate) const REPLY_LEN: usize = REPLY_CRC_OFFSET + size_of::<u32>();

// Frame header; the payload follows.
pub(crate) const FRAME_LEN_OFFSET: usize = 0;
pub(crate) const FRAME_CRC_OFFSET: usize = FRAME_LEN_OFFSET + size_of::<u32>();
pub(crate) const FRAME_HEADER_LEN: usize = FRAME_CRC_OFFSET + size_of::<u32>();

/// Largest frame payload accepted; a larger length is corruption (or not our protocol).
pub(crate) const MAX_FRAME: usize = 64 << 20;

// Snapshot records (after the MsgSnapshot frame of a snapshot connection). A chunk and the end
// record have headers of the same length; the kind byte tells them apart.
pub(crate) const SNAP_KIND_OFFSET: usize = 0;
// Chunk: `len` bytes of the file at `file_offset` follow the header.
pub(crate) const CHUNK_LEN_OFFSET: usize = SNAP_KIND_OFFSET + size_of::<u8>();
pub(crate) const CHUNK_FILE_OFFSET_OFFSET: usize = CHUNK_LEN_OFFSET + size_of::<u32>();
pub(crate) const CHUNK_CRC_OFFSET: usize = CHUNK_FILE_OFFSET_OFFSET + size_of::<u64>();
pub(crate) const SNAP_RECORD_LEN: usize = CHUNK_CRC_OFFSET + size_of::<u32>();
// End: the whole file's length and checksum.
pub(crate) const END_FILE_LEN_OFFSET: usize = SNAP_KIND_OFFSET + size_of::<u8>();
pub(crate) const END_FILE_CRC_OFFSET: usize = END_FILE_LEN_OFFSET + size_of::<u64>();
pub(crate) const END_CRC_OFFSET: usize = END_FILE_CRC_OFFSET + size_of::<u32>();
const _: () = assert!(END_CRC_OFFSET + size_of::<u32>() == SNAP_RECORD_LEN);
/// Kind byte of a chunk record.
pub(crate) const SNAP_KIND_CHUNK: u8 = 1;
/// Kind byte of the end record.
pub(crate) const SNAP_KIND_END: u8 = 2;
/// File bytes per chunk the sender writes.
pub(crate) const SNAP_CHUNK: usize = 64 * 1024;
/// Largest chunk accepted; a larger length is corruption.
pub(crate) const MAX_SNAP_CHUNK: usize = 4 << 20;

/// What a connection carries, told by the hello's magic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StreamKind {
    /// Batches of raft messages, for as long as the connection lives.
    Messages,
    /// One MsgSnapshot, then the backend file in chunks; the receiver acknowledges with a
    /// reply once the file is durable and the message stepped.
    Snapshot,
}

/// Why an accepting member refused a connection (the reply's status byte).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Status {
    Ok = 0,
    /// The sender belongs to another cluster.
    ClusterMismatch = 1,
    /// The hello names another member as its target (a stale address).
    WrongMember = 2,
    /// The sender was removed from the cluster.
    Removed = 3,
}

impl Status {
    fn from_byte(b: u8) -> Option<Status> {
        Some(match b {
            0 => Status::Ok,
            1 => Status::ClusterMismatch,
            2 => Status::WrongMember,
            3 => Status::Removed,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Hello {
    pub kind: StreamKind,
    pub cluster_id: u64,
    pub from: u64,
    pub to: u64,
}

fn bad(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

fn le_u64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

fn le_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

// Format: { magic "RKVP"|"RKVS" | version u16 | cluster_id u64 | from u64 | to u64 | crc32c u32 }
pub(crate) fn encode_hello(h: &Hello) -> [u8; HELLO_LEN] {
    let mut b = [0u8; HELLO_LEN];
    let magic = match h.kind {
        StreamKind::Messages => MAGIC,
        StreamKind::Snapshot => MAGIC_SNAPSHOT,
    };
    b[HELLO_MAGIC_OFFSET..HELLO_VERSION_OFFSET].copy_from_slice(&magic);
    b[HELLO_VERSION_OFFSET..HELLO_CLUSTER_OFFSET].copy_from_slice(&VERSION_1.to_le_bytes());
    b[HELLO_CLUSTER_OFFSET..HELLO_FROM_OFFSET].copy_from_slice(&h.cluster_id.to_le_bytes());
    b[HELLO_FROM_OFFSET..HELLO_TO_OFFSET].copy_from_slice(&h.from.to_le_bytes());
    b[HELLO_TO_OFFSET..HELLO_CRC_OFFSET].copy_from_slice(&h.to.to_le_bytes());
    let crc = crc32c::crc32c(&b[..HELLO_CRC_OFFSET]);
    b[HELLO_CRC_OFFSET..].copy_from_slice(&crc.to_le_bytes());
    b
}

pub(crate) fn decode_hello(b: &[u8; HELLO_LEN]) -> io::Result<Hello> {
    let kind = match &b[HELLO_MAGIC_OFFSET..HELLO_VERSION_OFFSET] {
        m if m == MAGIC => StreamKind::Messages,
        m if m == MAGIC_SNAPSHOT => StreamKind::Snapshot,
        _ => {
            return Err(bad(format!(
                "not a ringkv peer connection (first bytes {:02x?})",
                &b[..HELLO_VERSION_OFFSET]
            )));
        }
    };
    let crc = crc32c::crc32c(&b[..HELLO_CRC_OFFSET]);
    if crc != le_u32(b, HELLO_CRC_OFFSET) {
        return Err(bad(format!(
            "hello checksum mismatch at offset {HELLO_CRC_OFFSET}"
        )));
    }
    let version = u16::from_le_bytes([b[HELLO_VERSION_OFFSET], b[HELLO_VERSION_OFFSET + 1]]);
    if version != VERSION_1 {
        return Err(bad(format!(
            "peer protocol version {version} is not supported (1 is)"
        )));
    }
    Ok(Hello {
        kind,
        cluster_id: le_u64(b, HELLO_CLUSTER_OFFSET),
        from: le_u64(b, HELLO_FROM_OFFSET),
        to: le_u64(b, HELLO_TO_OFFSET),
    })
}

// Format: { status u8 | cluster_id u64 | crc32c u32 }
pub(crate) fn encode_reply(status: Status, cluster_id: u64) -> [u8; REPLY_LEN] {
    let mut b = [0u8; REPLY_LEN];
    b[REPLY_STATUS_OFFSET] = status as u8;
    b[REPLY_CLUSTER_OFFSET..REPLY_CRC_OFFSET].copy_from_slice(&cluster_id.to_le_bytes());
    let crc = crc32c::crc32c(&b[..REPLY_CRC_OFFSET]);
    b[REPLY_CRC_OFFSET..].copy_from_slice(&crc.to_le_bytes());
    b
}

pub(crate) fn decode_reply(b: &[u8; REPLY_LEN]) -> io::Result<(Status, u64)> {
    if crc32c::crc32c(&b[..REPLY_CRC_OFFSET]) != le_u32(b, REPLY_CRC_OFFSET) {
        return Err(bad(format!(
            "reply checksum mismatch at offset {REPLY_CRC_OFFSET}"
        )));
    }
    let status = Status::from_byte(b[REPLY_STATUS_OFFSET])
        .ok_or_else(|| bad(format!("unknown reply status {}", b[REPLY_STATUS_OFFSET])))?;
    Ok((status, le_u64(b, REPLY_CLUSTER_OFFSET)))
}

/// Appends one frame carrying `messages` (each already encoded) to `out`.
// Format: { len u32 | crc32c(payload) u32 | payload: { count u32 | count × { len u32 | bytes } } }
pub(crate) fn encode_frame(messages: &[Vec<u8>], out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0u8; FRAME_HEADER_LEN]);
    out.extend_from_slice(&(messages.len() as u32).to_le_bytes());
    for m in messages {
        out.extend_from_slice(&(m.len() as u32).to_le_bytes());
        out.extend_from_slice(m);
    }
    let payload_len = (out.len() - start - FRAME_HEADER_LEN) as u32;
    let crc = crc32c::crc32c(&out[start + FRAME_HEADER_LEN..]);
    out[start + FRAME_LEN_OFFSET..start + FRAME_CRC_OFFSET]
        .copy_from_slice(&payload_len.to_le_bytes());
    out[start + FRAME_CRC_OFFSET..start + FRAME_HEADER_LEN].copy_from_slice(&crc.to_le_bytes());
}

/// Reads one frame and returns its messages. `offset` is the stream offset of the frame
/// (for the error text); it is advanced past the frame. `Ok(None)` at a clean end of stream.
pub(crate) fn read_frame(r: &mut impl Read, offset: &mut u64) -> io::Result<Option<Vec<Vec<u8>>>> {
    let mut header = [0u8; FRAME_HEADER_LEN];
    match r.read_exact(&mut header[..1]) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    r.read_exact(&mut header[1..])?;
    let len = le_u32(&header, FRAME_LEN_OFFSET) as usize;
    if len > MAX_FRAME {
        return Err(bad(format!(
            "frame at stream offset {offset} claims {len} bytes (limit {MAX_FRAME})"
        )));
    }
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload)?;
    if crc32c::crc32c(&payload) != le_u32(&header, FRAME_CRC_OFFSET) {
        return Err(bad(format!(
            "frame at stream offset {offset}: checksum mismatch over {len} payload bytes"
        )));
    }
    let messages = split_payload(&payload).map_err(|at| {
        bad(format!(
            "frame at stream offset {offset}: malformed payload at byte {at}"
        ))
    })?;
    *offset += (FRAME_HEADER_LEN + len) as u64;
    Ok(Some(messages))
}

/// Whether `buf` (bytes read ahead of the next frame) holds that whole frame, so reading it
/// cannot wait for the network. A header claiming more than [`MAX_FRAME`] counts as whole:
/// `read_frame` fails on it without reading further.
pub(crate) fn holds_whole_frame(buf: &[u8]) -> bool {
    if buf.len() < FRAME_HEADER_LEN {
        return false;
    }
    let len = le_u32(buf, FRAME_LEN_OFFSET) as usize;
    len > MAX_FRAME || buf.len() >= FRAME_HEADER_LEN + len
}

/// The messages of a payload, or the payload offset where it stops making sense.
fn split_payload(p: &[u8]) -> Result<Vec<Vec<u8>>, usize> {
    if p.len() < 4 {
        return Err(0);
    }
    let count = le_u32(p, 0) as usize;
    let mut at = 4;
    let mut out = Vec::with_capacity(count.min(4096));
    for _ in 0..count {
        if p.len() < at + 4 {
            return Err(at);
        }
        let len = le_u32(p, at) as usize;
        if p.len() - (at + 4) < len {
            return Err(at);
        }
        out.push(p[at + 4..at + 4 + len].to_vec());
        at += 4 + len;
    }
    if at != p.len() {
        return Err(at);
    }
    Ok(out)
}

// Format: { kind 1 u8 | len u32 | file_offset u64 | crc32c(header[..13] ++ data) u32 } data
fn encode_chunk_header(file_offset: u64, data: &[u8]) -> [u8; SNAP_RECORD_LEN] {
    let mut b = [0u8; SNAP_RECORD_LEN];
    b[SNAP_KIND_OFFSET] = SNAP_KIND_CHUNK;
    b[CHUNK_LEN_OFFSET..CHUNK_FILE_OFFSET_OFFSET]
        .copy_from_slice(&(data.len() as u32).to_le_bytes());
    b[CHUNK_FILE_OFFSET_OFFSET..CHUNK_CRC_OFFSET].copy_from_slice(&file_offset.to_le_bytes());
    let crc = crc32c::crc32c_append(crc32c::crc32c(&b[..CHUNK_CRC_OFFSET]), data);
    b[CHUNK_CRC_OFFSET..].copy_from_slice(&crc.to_le_bytes());
    b
}

// Format: { kind 2 u8 | file_len u64 | file_crc32c u32 | crc32c(record[..13]) u32 }
fn encode_end(file_len: u64, file_crc: u32) -> [u8; SNAP_RECORD_LEN] {
    let mut b = [0u8; SNAP_RECORD_LEN];
    b[SNAP_KIND_OFFSET] = SNAP_KIND_END;
    b[END_FILE_LEN_OFFSET..END_FILE_CRC_OFFSET].copy_from_slice(&file_len.to_le_bytes());
    b[END_FILE_CRC_OFFSET..END_CRC_OFFSET].copy_from_slice(&file_crc.to_le_bytes());
    let crc = crc32c::crc32c(&b[..END_CRC_OFFSET]);
    b[END_CRC_OFFSET..].copy_from_slice(&crc.to_le_bytes());
    b
}

/// Streams all of `file` to `w` as chunk records and the end record. Holds one chunk in
/// memory. Returns the file's length.
pub(crate) fn write_snapshot_file(file: &mut impl Read, w: &mut impl Write) -> io::Result<u64> {
    let mut buf = vec![0u8; SNAP_CHUNK];
    let mut at = 0u64;
    let mut file_crc = 0u32;
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        let data = &buf[..n];
        w.write_all(&encode_chunk_header(at, data))?;
        w.write_all(data)?;
        file_crc = crc32c::crc32c_append(file_crc, data);
        at += n as u64;
    }
    w.write_all(&encode_end(at, file_crc))?;
    Ok(at)
}

/// Reads the chunk records and the end record of a snapshot connection from `r` and writes
/// the file's bytes to `out` in order. `offset` is the stream offset of the first record (for
/// the error text) and is advanced. Returns the file's length once the end record's length and
/// whole-file checksum match what arrived. Any mismatch (a record's checksum, a chunk out of
/// place, the file's checksum, an unknown kind) is an `InvalidData` error naming the stream
/// offset of the record; what was written to `out` must then be thrown away.
pub(crate) fn read_snapshot_file(
    r: &mut impl Read,
    offset: &mut u64,
    out: &mut impl Write,
) -> io::Result<u64> {
    let mut header = [0u8; SNAP_RECORD_LEN];
    let mut buf = Vec::new();
    let mut file_len = 0u64;
    let mut file_crc = 0u32;
    loop {
        let at = *offset;
        r.read_exact(&mut header)?;
        match header[SNAP_KIND_OFFSET] {
            SNAP_KIND_CHUNK => {
                let len = le_u32(&header, CHUNK_LEN_OFFSET) as usize;
                if len > MAX_SNAP_CHUNK {
                    return Err(bad(format!(
                        "snapshot chunk at stream offset {at} claims {len} bytes (limit \
                         {MAX_SNAP_CHUNK})"
                    )));
                }
                buf.resize(len, 0);
                r.read_exact(&mut buf)?;
                let crc = crc32c::crc32c_append(crc32c::crc32c(&header[..CHUNK_CRC_OFFSET]), &buf);
                if crc != le_u32(&header, CHUNK_CRC_OFFSET) {
                    return Err(bad(format!(
                        "snapshot chunk at stream offset {at}: checksum mismatch over {len} bytes"
                    )));
                }
                let chunk_at = le_u64(&header, CHUNK_FILE_OFFSET_OFFSET);
                if chunk_at != file_len {
                    return Err(bad(format!(
                        "snapshot chunk at stream offset {at} is for file offset {chunk_at}, \
                         expected {file_len}"
                    )));
                }
                out.write_all(&buf)?;
                file_crc = crc32c::crc32c_append(file_crc, &buf);
                file_len += len as u64;
                *offset += (SNAP_RECORD_LEN + len) as u64;
            }
            SNAP_KIND_END => {
                if crc32c::crc32c(&header[..END_CRC_OFFSET]) != le_u32(&header, END_CRC_OFFSET) {
                    return Err(bad(format!(
                        "snapshot end record at stream offset {at}: checksum mismatch"
                    )));
                }
                let want_len = le_u64(&header, END_FILE_LEN_OFFSET);
                let want_crc = le_u32(&header, END_FILE_CRC_OFFSET);
                if want_len != file_len {
                    return Err(bad(format!(
                        "snapshot end record at stream offset {at}: file length {want_len}, \
                         {file_len} bytes arrived"
                    )));
                }
                if want_crc != file_crc {
                    return Err(bad(format!(
                        "snapshot end record at stream offset {at}: file checksum {want_crc:08x}, \
                         the {file_len} bytes that arrived have {file_crc:08x}"
                    )));
                }
                *offset += SNAP_RECORD_LEN as u64;
                return Ok(file_len);
            }
            k => {
                return Err(bad(format!(
                    "snapshot record at stream offset {at} has unknown kind {k}"
                )));
            }
        }
    }
}

/// Writes all of `buf` (a helper so callers read as protocol steps).
pub(crate) fn write_all(w: &mut impl Write, buf: &[u8]) -> io::Result<()> {
    w.write_all(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hello_and_reply_round_trip_and_corruption_is_named() {
        let h = Hello {
            kind: StreamKind::Messages,
            cluster_id: 0xdead_beef,
            from: 7,
            to: 9,
        };
        let mut b = encode_hello(&h);
        assert_eq!(decode_hello(&b).unwrap(), h);
        b[HELLO_FROM_OFFSET] ^= 1;
        let e = decode_hello(&b).unwrap_err().to_string();
        assert!(e.contains("checksum mismatch at offset 30"), "{e}");
        let mut other = encode_hello(&h);
        other[0] = b'X';
        assert!(
            decode_hello(&other)
                .unwrap_err()
                .to_string()
                .contains("not a ringkv peer")
        );

        let r = encode_reply(Status::Removed, 42);
        assert_eq!(decode_reply(&r).unwrap(), (Status::Removed, 42));
        let mut r = encode_reply(Status::Ok, 42);
        r[REPLY_CLUSTER_OFFSET] ^= 0xff;
        assert!(decode_reply(&r).is_err());
    }

    #[test]
    fn a_buffer_holds_a_whole_frame_only_with_its_last_payload_byte() {
        let mut buf = Vec::new();
        encode_frame(&[vec![9u8; 100]], &mut buf);
        assert!(holds_whole_frame(&buf));
        assert!(!holds_whole_frame(&buf[..buf.len() - 1]));
        assert!(!holds_whole_frame(&buf[..FRAME_HEADER_LEN - 1]));
        assert!(!holds_whole_frame(&[]));
        // An oversized length is "whole": reading it fails at once instead of waiting.
        let mut huge = vec![0u8; FRAME_HEADER_LEN];
        huge[FRAME_LEN_OFFSET..FRAME_LEN_OFFSET + 4]
            .copy_from_slice(&((MAX_FRAME + 1) as u32).to_le_bytes());
        assert!(holds_whole_frame(&huge));
    }

    #[test]
    fn frames_round_trip_and_a_flipped_bit_names_the_frame_offset() {
        let batch1 = vec![b"one".to_vec(), Vec::new(), vec![7u8; 1000]];
        let batch2 = vec![b"two".to_vec()];
        let mut buf = Vec::new();
        encode_frame(&batch1, &mut buf);
        let second_at = buf.len() as u64;
        encode_frame(&batch2, &mut buf);
        let mut off = 0;
        let mut r = &buf[..];
        assert_eq!(read_frame(&mut r, &mut off).unwrap().unwrap(), batch1);
        assert_eq!(off, second_at);
        assert_eq!(read_frame(&mut r, &mut off).unwrap().unwrap(), batch2);
        assert!(read_frame(&mut r, &mut off).unwrap().is_none());

        let mut bad = buf.clone();
        let last = bad.len() - 1;
        bad[last] ^= 0x10;
        let mut off = 0;
        let mut r = &bad[..];
        read_frame(&mut r, &mut off).unwrap();
        let e = read_frame(&mut r, &mut off).unwrap_err().to_string();
        assert!(
            e.contains(&format!(
                "frame at stream offset {second_at}: checksum mismatch"
            )),
            "{e}"
        );
        // A truncated frame is an error, not a clean end.
        let mut r = &buf[..buf.len() - 2];
        let mut off = 0;
        read_frame(&mut r, &mut off).unwrap();
        assert!(read_frame(&mut r, &mut off).is_err());
    }

    #[test]
    fn a_snapshot_hello_is_told_apart_by_its_magic() {
        let h = Hello {
            kind: StreamKind::Snapshot,
            cluster_id: 1,
            from: 2,
            to: 3,
        };
        let b = encode_hello(&h);
        assert_eq!(&b[..4], b"RKVS");
        assert_eq!(decode_hello(&b).unwrap(), h);
    }

    /// A file of `len` bytes that is not all one value (so a moved byte changes checksums).
    fn file_bytes(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    fn stream_of(file: &[u8]) -> Vec<u8> {
        let mut stream = Vec::new();
        let n = write_snapshot_file(&mut &file[..], &mut stream).unwrap();
        assert_eq!(n, file.len() as u64);
        stream
    }

    fn receive(stream: &[u8]) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        let mut off = 100;
        let n = read_snapshot_file(&mut &stream[..], &mut off, &mut out)?;
        assert_eq!(n, out.len() as u64);
        assert_eq!(off, 100 + stream.len() as u64);
        Ok(out)
    }

    #[test]
    fn snapshot_files_round_trip_in_chunks() {
        for len in [0, 1, SNAP_CHUNK - 1, SNAP_CHUNK, 3 * SNAP_CHUNK + 17] {
            let file = file_bytes(len);
            let stream = stream_of(&file);
            let chunks = len.div_ceil(SNAP_CHUNK);
            assert_eq!(
                stream.len(),
                len + (chunks + 1) * SNAP_RECORD_LEN,
                "{len}-byte file"
            );
            assert_eq!(receive(&stream).unwrap(), file);
        }
    }

    #[test]
    fn snapshot_corruption_is_detected_and_names_the_record() {
        let file = file_bytes(2 * SNAP_CHUNK + 5);
        let stream = stream_of(&file);
        let second = SNAP_RECORD_LEN + SNAP_CHUNK;
        let end = 2 * (SNAP_RECORD_LEN + SNAP_CHUNK) + SNAP_RECORD_LEN + 5;
        // Stream offsets in messages count from 100 (the caller's offset of the first record).
        let err = |s: &[u8]| receive(s).unwrap_err().to_string();

        let mut s = stream.clone();
        s[second + SNAP_RECORD_LEN + 10] ^= 0x04;
        let e = err(&s);
        assert!(
            e.contains(&format!(
                "snapshot chunk at stream offset {}: checksum mismatch",
                100 + second
            )),
            "{e}"
        );

        let mut s = stream.clone();
        s[second + CHUNK_FILE_OFFSET_OFFSET] ^= 0x01;
        assert!(err(&s).contains("checksum mismatch"), "{}", err(&s));

        let mut s = stream.clone();
        s[end + END_FILE_LEN_OFFSET] ^= 0x01;
        let e = err(&s);
        assert!(
            e.contains(&format!("end record at stream offset {}", 100 + end)),
            "{e}"
        );

        let mut s = stream.clone();
        s[second] = 9;
        let e = err(&s);
        assert!(e.contains("unknown kind 9"), "{e}");

        // A chunk dropped on the way: the next one is out of place.
        let mut s = stream[..SNAP_RECORD_LEN + SNAP_CHUNK].to_vec();
        s.extend_from_slice(&stream[..SNAP_RECORD_LEN + SNAP_CHUNK]);
        s.extend_from_slice(&stream[second..]);
        let e = err(&s);
        assert!(e.contains("is for file offset 0, expected 65536"), "{e}");

        // Consistent records whose bytes are not the file the end record describes.
        let mut s = stream.clone();
        let other = stream_of(&file_bytes(5));
        s.truncate(end);
        let mut forged = encode_end(2 * SNAP_CHUNK as u64 + 5, 0xabcd);
        s.append(&mut forged.to_vec());
        let e = err(&s);
        assert!(e.contains("file checksum 0000abcd"), "{e}");
        forged = encode_end(7, 0);
        let mut s = other[..other.len() - SNAP_RECORD_LEN].to_vec();
        s.extend_from_slice(&forged);
        assert!(err(&s).contains("file length 7, 5 bytes arrived"));

        // Cut short: an I/O error, not a clean end.
        let e = receive(&stream[..stream.len() - 3]).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);

        // An oversized chunk length is refused before allocating.
        let mut s = stream.clone();
        s[CHUNK_LEN_OFFSET..CHUNK_FILE_OFFSET_OFFSET]
            .copy_from_slice(&(MAX_SNAP_CHUNK as u32 + 1).to_le_bytes());
        assert!(err(&s).contains("limit"));
    }

    #[test]
    fn an_oversized_length_is_refused_before_allocating() {
        let mut b = [0u8; FRAME_HEADER_LEN];
        b[..4].copy_from_slice(&(MAX_FRAME as u32 + 1).to_le_bytes());
        let mut off = 0;
        let e = read_frame(&mut &b[..], &mut off).unwrap_err().to_string();
        assert!(e.contains("limit"), "{e}");
    }
}

//! The bytes of the peer protocol (engine/docs/design.md, "## Peer transport", has the byte
//! diagrams). Every integer is little-endian fixed width; there is no sort order to keep.

use std::io::{self, Read, Write};

/// First bytes of a connection: "RKVP" and the protocol version.
pub(crate) const MAGIC: [u8; 4] = *b"RKVP";
/// Version 1: hello, reply, batch frames as below.
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

// Format: { magic "RKVP" | version u16 | cluster_id u64 | from u64 | to u64 | crc32c u32 }
pub(crate) fn encode_hello(h: &Hello) -> [u8; HELLO_LEN] {
    let mut b = [0u8; HELLO_LEN];
    b[HELLO_MAGIC_OFFSET..HELLO_VERSION_OFFSET].copy_from_slice(&MAGIC);
    b[HELLO_VERSION_OFFSET..HELLO_CLUSTER_OFFSET].copy_from_slice(&VERSION_1.to_le_bytes());
    b[HELLO_CLUSTER_OFFSET..HELLO_FROM_OFFSET].copy_from_slice(&h.cluster_id.to_le_bytes());
    b[HELLO_FROM_OFFSET..HELLO_TO_OFFSET].copy_from_slice(&h.from.to_le_bytes());
    b[HELLO_TO_OFFSET..HELLO_CRC_OFFSET].copy_from_slice(&h.to.to_le_bytes());
    let crc = crc32c::crc32c(&b[..HELLO_CRC_OFFSET]);
    b[HELLO_CRC_OFFSET..].copy_from_slice(&crc.to_le_bytes());
    b
}

pub(crate) fn decode_hello(b: &[u8; HELLO_LEN]) -> io::Result<Hello> {
    if b[HELLO_MAGIC_OFFSET..HELLO_VERSION_OFFSET] != MAGIC {
        return Err(bad(format!(
            "not a ringkv peer connection (first bytes {:02x?})",
            &b[..HELLO_VERSION_OFFSET]
        )));
    }
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
    fn an_oversized_length_is_refused_before_allocating() {
        let mut b = [0u8; FRAME_HEADER_LEN];
        b[..4].copy_from_slice(&(MAX_FRAME as u32 + 1).to_le_bytes());
        let mut off = 0;
        let e = read_frame(&mut &b[..], &mut off).unwrap_err().to_string();
        assert!(e.contains("limit"), "{e}");
    }
}

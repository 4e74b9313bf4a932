//! Inbound HTTP/2 fix-up for grpc-go clients that send a URL as `:authority`.
//!
//! etcd 3.4's clientv3 dials single endpoints (Status, Defragment, HashKV, MoveLeader: `etcdctl
//! endpoint status`, `defrag`, ...) as `passthrough:///http://host:port`, so grpc-go sends
//! `:authority: http://host:port`. grpc-go's server (etcd) accepts that; the `h2` crate resets
//! the stream with PROTOCOL_ERROR ("malformed authority"). This adapter sits between the socket
//! and hyper on the read side and rewrites such values in HEADERS blocks before `h2` parses
//! them. Writes pass through untouched; HTTP/1 connections pass through untouched.
//!
//! HPACK state must stay identical on both sides of the rewrite: the client's encoder and h2's
//! decoder each keep a dynamic table, and a block may reference entries inserted by earlier
//! blocks. So the rewrite keeps every representation as it was and only replaces the *value
//! string* of an `:authority` field with one of the **same decoded length** (dynamic-table entry
//! sizes are name length + value length + 32, RFC 7541 §4.1, so the tables evict identically).
//! The new value is `host:` + zeros + `port`, e.g. `http://127.0.0.1:2379` (21 bytes) →
//! `127.0.0.1:00000002379` (21 bytes), a valid authority for the same host and port. Later
//! blocks that reference the entry then see the fixed value, since h2's table holds it.
//!
//! Blocks without a URL authority are forwarded byte for byte. If a block cannot be parsed, the
//! original bytes are forwarded and the connection is left alone from then on (h2 reports the
//! error it would have reported anyway).
//!
//! Cost: a client sends its authority as a literal in its first request (the dynamic table starts
//! empty) and keeps it for the connection, so once the first `:authority` seen is already valid
//! the connection switches to pass-through, reading straight into hyper's buffer. Only
//! connections that do send a URL keep paying for HPACK parsing.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, BufMut, BytesMut};
use tokio::io::{AsyncRead, ReadBuf};

/// The HTTP/2 client connection preface (RFC 9113 §3.4).
pub(crate) const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Frame header size.
const FRAME_HEADER: usize = 9;
/// Largest frame payload we emit (the HTTP/2 minimum SETTINGS_MAX_FRAME_SIZE, which hyper keeps).
const MAX_EMIT_PAYLOAD: usize = 16_384;
/// Frame types (RFC 9113 §6).
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
/// Frame flags.
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// HPACK's initial dynamic table size (RFC 7541 §4.2; HTTP/2 SETTINGS_HEADER_TABLE_SIZE default).
const INITIAL_TABLE_SIZE: usize = 4096;

/// Names of the HPACK static table, index 1..=61 (RFC 7541 Appendix A). Only names are needed:
/// a literal that indexes a name inserts (that name, a literal value).
const STATIC_NAMES: [&str; 61] = [
    ":authority",
    ":method",
    ":method",
    ":path",
    ":path",
    ":scheme",
    ":scheme",
    ":status",
    ":status",
    ":status",
    ":status",
    ":status",
    ":status",
    ":status",
    "accept-charset",
    "accept-encoding",
    "accept-language",
    "accept-ranges",
    "accept",
    "access-control-allow-origin",
    "age",
    "allow",
    "authorization",
    "cache-control",
    "content-disposition",
    "content-encoding",
    "content-language",
    "content-length",
    "content-location",
    "content-range",
    "content-type",
    "cookie",
    "date",
    "etag",
    "expect",
    "expires",
    "from",
    "host",
    "if-match",
    "if-modified-since",
    "if-none-match",
    "if-range",
    "if-unmodified-since",
    "last-modified",
    "link",
    "location",
    "max-forwards",
    "proxy-authenticate",
    "proxy-authorization",
    "range",
    "referer",
    "refresh",
    "retry-after",
    "server",
    "set-cookie",
    "strict-transport-security",
    "transfer-encoding",
    "user-agent",
    "vary",
    "via",
    "www-authenticate",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Deciding between HTTP/2 (preface) and anything else.
    Sniff,
    /// HTTP/2 frames, header blocks inspected.
    Frames,
    /// Bytes forwarded as they come.
    Passthrough,
}

/// The decoder side of the client's HPACK dynamic table (names and values, decoded).
#[derive(Debug)]
struct Table {
    entries: VecDeque<(Vec<u8>, Vec<u8>)>,
    size: usize,
    max: usize,
}

impl Table {
    fn new() -> Table {
        Table {
            entries: VecDeque::new(),
            size: 0,
            max: INITIAL_TABLE_SIZE,
        }
    }

    fn evict_to(&mut self, max: usize) {
        while self.size > max {
            let (n, v) = self.entries.pop_back().expect("size > 0 implies an entry");
            self.size -= n.len() + v.len() + 32;
        }
    }

    fn insert(&mut self, name: Vec<u8>, value: Vec<u8>) {
        let size = name.len() + value.len() + 32;
        self.evict_to(self.max.saturating_sub(size));
        if size <= self.max {
            self.size += size;
            self.entries.push_front((name, value));
        }
    }

    /// Name of table index `i` (1-based: static 1..=61, then dynamic, newest first).
    fn name(&self, i: usize) -> Option<Vec<u8>> {
        match i {
            0 => None,
            1..=61 => Some(STATIC_NAMES[i - 1].as_bytes().to_vec()),
            _ => self.entries.get(i - 62).map(|(n, _)| n.clone()),
        }
    }
}

/// A malformed header block.
#[derive(Debug)]
struct Malformed;

/// Decodes an HPACK integer with an `n`-bit prefix starting at `buf[*pos]` (RFC 7541 §5.1).
fn integer(buf: &[u8], pos: &mut usize, n: u32) -> Result<usize, Malformed> {
    let mask = (1u16 << n) as u8 - 1;
    let first = *buf.get(*pos).ok_or(Malformed)? & mask;
    *pos += 1;
    if first < mask {
        return Ok(first as usize);
    }
    let mut value = mask as usize;
    let mut shift = 0;
    loop {
        let b = *buf.get(*pos).ok_or(Malformed)?;
        *pos += 1;
        value = value
            .checked_add(((b & 0x7f) as usize).checked_shl(shift).ok_or(Malformed)?)
            .ok_or(Malformed)?;
        if b & 0x80 == 0 {
            return Ok(value);
        }
        shift += 7;
        if shift > 28 {
            return Err(Malformed);
        }
    }
}

/// Decodes an HPACK string literal at `buf[*pos]` (RFC 7541 §5.2).
fn string(buf: &[u8], pos: &mut usize) -> Result<Vec<u8>, Malformed> {
    let huffman = *buf.get(*pos).ok_or(Malformed)? & 0x80 != 0;
    let len = integer(buf, pos, 7)?;
    let raw = buf.get(*pos..*pos + len).ok_or(Malformed)?;
    *pos += len;
    if huffman {
        hpack::huffman::HuffmanDecoder::new()
            .decode(raw)
            .map_err(|_| Malformed)
    } else {
        Ok(raw.to_vec())
    }
}

/// Encodes an integer with an `n`-bit prefix; `first` holds the representation's flag bits.
fn put_integer(out: &mut Vec<u8>, first: u8, n: u32, mut value: usize) {
    let mask = (1usize << n) - 1;
    if value < mask {
        out.push(first | value as u8);
        return;
    }
    out.push(first | mask as u8);
    value -= mask;
    while value >= 128 {
        out.push((value % 128) as u8 | 0x80);
        value /= 128;
    }
    out.push(value as u8);
}

/// The same-length valid replacement for a URL-shaped authority, if it needs one.
pub fn fixed_authority(value: &[u8]) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(value).ok()?;
    if http::uri::Authority::try_from(text).is_ok() {
        return None;
    }
    let rest = text.split_once("://")?.1.trim_end_matches('/');
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) if !h.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) && !p.is_empty() => {
            (h, p)
        }
        _ => (rest, ""),
    };
    let zeros = text.len().checked_sub(host.len() + 1 + port.len())?;
    let fixed = format!("{host}:{}{port}", "0".repeat(zeros));
    (fixed.len() == text.len() && http::uri::Authority::try_from(fixed.as_str()).is_ok())
        .then(|| fixed.into_bytes())
}

/// What a header block held, for the caller's pass-through decision.
#[derive(Debug, Default, PartialEq, Eq)]
struct BlockReport {
    /// The block had an `:authority` field.
    saw_authority: bool,
    /// Some `:authority` value was rewritten (then the rewritten block is returned).
    rewritten: Option<Vec<u8>>,
}

/// Walks a header block, updating `table`; reports whether an `:authority` was present and
/// returns a rewritten block if a value needed fixing.
fn fix_block(block: &[u8], table: &mut Table) -> Result<BlockReport, Malformed> {
    let mut out = Vec::with_capacity(block.len() + 16);
    let mut changed = false;
    let mut saw_authority = false;
    let mut pos = 0;
    while pos < block.len() {
        let start = pos;
        let b = block[pos];
        if b & 0x80 != 0 {
            // Indexed header field: no table change.
            let i = integer(block, &mut pos, 7)?;
            let name = table.name(i).ok_or(Malformed)?;
            saw_authority |= name == b":authority";
            out.extend_from_slice(&block[start..pos]);
            continue;
        }
        if b & 0xe0 == 0x20 {
            // Dynamic table size update.
            let max = integer(block, &mut pos, 5)?;
            table.max = max;
            table.evict_to(max);
            out.extend_from_slice(&block[start..pos]);
            continue;
        }
        let (indexing, prefix) = if b & 0xc0 == 0x40 {
            (true, 6)
        } else {
            (false, 4)
        };
        let index = integer(block, &mut pos, prefix)?;
        let name = if index == 0 {
            string(block, &mut pos)?
        } else {
            table.name(index).ok_or(Malformed)?
        };
        let name_end = pos;
        let value = string(block, &mut pos)?;
        let replacement = if name == b":authority" {
            fixed_authority(&value)
        } else {
            None
        };
        match replacement {
            Some(new) => {
                changed = true;
                out.extend_from_slice(&block[start..name_end]);
                put_integer(&mut out, 0x00, 7, new.len());
                out.extend_from_slice(&new);
                if indexing {
                    table.insert(name, new);
                }
            }
            None => {
                out.extend_from_slice(&block[start..pos]);
                if indexing {
                    table.insert(name, value);
                }
            }
        }
    }
    Ok(BlockReport {
        saw_authority,
        rewritten: changed.then_some(out),
    })
}

/// A header block being collected across HEADERS and CONTINUATION frames.
#[derive(Debug)]
struct PendingBlock {
    stream_id: u32,
    end_stream: bool,
    priority: Option<[u8; 5]>,
    fragment: Vec<u8>,
    raw_frames: Vec<u8>,
}

/// Wraps a client connection's byte stream; see the module doc.
#[derive(Debug)]
pub struct AuthorityFix<IO> {
    io: IO,
    mode: Mode,
    inbuf: BytesMut,
    out: BytesMut,
    table: Table,
    pending: Option<PendingBlock>,
    eof: bool,
    /// Some block on this connection needed a rewrite (then every block is inspected).
    rewrote: bool,
}

impl<IO> AuthorityFix<IO> {
    /// Wraps `io`.
    pub fn new(io: IO) -> Self {
        AuthorityFix {
            io,
            mode: Mode::Sniff,
            inbuf: BytesMut::with_capacity(16 * 1024),
            out: BytesMut::new(),
            table: Table::new(),
            pending: None,
            eof: false,
            rewrote: false,
        }
    }

    /// Moves what can be decided from `inbuf` to `out`.
    fn process(&mut self) {
        loop {
            match self.mode {
                Mode::Passthrough => {
                    let all = self.inbuf.split();
                    self.out.unsplit(all);
                    return;
                }
                Mode::Sniff => {
                    let n = self.inbuf.len().min(PREFACE.len());
                    if self.inbuf[..n] != PREFACE[..n] {
                        self.mode = Mode::Passthrough;
                    } else if n == PREFACE.len() {
                        let p = self.inbuf.split_to(n);
                        self.out.unsplit(p);
                        self.mode = Mode::Frames;
                    } else if self.eof {
                        self.mode = Mode::Passthrough;
                    } else {
                        return;
                    }
                }
                Mode::Frames => {
                    if self.inbuf.len() < FRAME_HEADER {
                        return;
                    }
                    let len = u32::from_be_bytes([0, self.inbuf[0], self.inbuf[1], self.inbuf[2]])
                        as usize;
                    if self.inbuf.len() < FRAME_HEADER + len {
                        return;
                    }
                    let frame = self.inbuf.split_to(FRAME_HEADER + len);
                    self.frame(frame);
                }
            }
        }
    }

    fn give_up(&mut self) {
        if let Some(p) = self.pending.take() {
            self.out.extend_from_slice(&p.raw_frames);
        }
        self.mode = Mode::Passthrough;
    }

    fn frame(&mut self, frame: BytesMut) {
        let kind = frame[3];
        let flags = frame[4];
        let stream_id = u32::from_be_bytes([frame[5] & 0x7f, frame[6], frame[7], frame[8]]);
        let payload = &frame[FRAME_HEADER..];
        match (kind, self.pending.is_some()) {
            (HEADERS, false) => {
                let mut body = payload;
                let mut pad = 0;
                if flags & PADDED != 0 {
                    let Some((&p, rest)) = body.split_first() else {
                        return self.raw(frame);
                    };
                    pad = p as usize;
                    body = rest;
                }
                let mut priority = None;
                if flags & PRIORITY != 0 {
                    if body.len() < 5 {
                        return self.raw(frame);
                    }
                    let mut p = [0u8; 5];
                    p.copy_from_slice(&body[..5]);
                    priority = Some(p);
                    body = &body[5..];
                }
                let Some(fragment) = body.len().checked_sub(pad).map(|n| &body[..n]) else {
                    return self.raw(frame);
                };
                self.pending = Some(PendingBlock {
                    stream_id,
                    end_stream: flags & END_STREAM != 0,
                    priority,
                    fragment: fragment.to_vec(),
                    raw_frames: frame.to_vec(),
                });
                if flags & END_HEADERS != 0 {
                    self.finish_block();
                }
            }
            (CONTINUATION, true) => {
                let p = self.pending.as_mut().expect("pending");
                if p.stream_id != stream_id {
                    return self.give_up_with(frame);
                }
                p.fragment.extend_from_slice(payload);
                p.raw_frames.extend_from_slice(&frame);
                if flags & END_HEADERS != 0 {
                    self.finish_block();
                }
            }
            (_, true) => self.give_up_with(frame),
            (_, false) => self.raw(frame),
        }
    }

    fn raw(&mut self, frame: BytesMut) {
        self.out.unsplit(frame);
    }

    fn give_up_with(&mut self, frame: BytesMut) {
        self.give_up();
        self.out.unsplit(frame);
    }

    fn finish_block(&mut self) {
        let p = self.pending.take().expect("pending");
        match fix_block(&p.fragment, &mut self.table) {
            Ok(BlockReport {
                rewritten: Some(block),
                ..
            }) => {
                self.rewrote = true;
                self.emit_block(&p, &block);
            }
            Ok(BlockReport {
                saw_authority,
                rewritten: None,
            }) => {
                self.out.extend_from_slice(&p.raw_frames);
                if saw_authority && !self.rewrote {
                    // This client sends a valid authority: nothing to fix on this connection.
                    self.mode = Mode::Passthrough;
                }
            }
            Err(Malformed) => {
                self.out.extend_from_slice(&p.raw_frames);
                self.mode = Mode::Passthrough;
            }
        }
    }

    /// Writes `block` as one HEADERS frame plus CONTINUATION frames as needed.
    fn emit_block(&mut self, p: &PendingBlock, block: &[u8]) {
        let prio_len = if p.priority.is_some() { 5 } else { 0 };
        let first_len = block.len().min(MAX_EMIT_PAYLOAD - prio_len);
        let (first, mut rest) = block.split_at(first_len);
        let mut flags = if p.end_stream { END_STREAM } else { 0 };
        if p.priority.is_some() {
            flags |= PRIORITY;
        }
        if rest.is_empty() {
            flags |= END_HEADERS;
        }
        self.frame_header(prio_len + first.len(), HEADERS, flags, p.stream_id);
        if let Some(prio) = p.priority {
            self.out.extend_from_slice(&prio);
        }
        self.out.extend_from_slice(first);
        while !rest.is_empty() {
            let n = rest.len().min(MAX_EMIT_PAYLOAD);
            let (chunk, tail) = rest.split_at(n);
            rest = tail;
            let flags = if rest.is_empty() { END_HEADERS } else { 0 };
            self.frame_header(chunk.len(), CONTINUATION, flags, p.stream_id);
            self.out.extend_from_slice(chunk);
        }
    }

    /// Format: { length: u24 BE, type: u8, flags: u8, stream id: u32 BE (R bit clear) } —
    /// big-endian because HTTP/2 (RFC 9113 §4.1) says so.
    fn frame_header(&mut self, len: usize, kind: u8, flags: u8, stream_id: u32) {
        let l = (len as u32).to_be_bytes();
        self.out.put_slice(&l[1..]);
        self.out.put_u8(kind);
        self.out.put_u8(flags);
        self.out.put_u32(stream_id);
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for AuthorityFix<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.mode == Mode::Passthrough && this.out.is_empty() && this.inbuf.is_empty() {
                // Fast path: nothing buffered, nothing to inspect.
                return Pin::new(&mut this.io).poll_read(cx, buf);
            }
            if !this.out.is_empty() {
                let n = this.out.len().min(buf.remaining());
                buf.put_slice(&this.out[..n]);
                this.out.advance(n);
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                // Whatever could not be parsed goes out as it is; h2 judges it.
                if let Some(p) = this.pending.take() {
                    this.out.extend_from_slice(&p.raw_frames);
                }
                let rest = this.inbuf.split();
                this.out.unsplit(rest);
                if this.out.is_empty() {
                    return Poll::Ready(Ok(()));
                }
                continue;
            }
            this.inbuf.reserve(16 * 1024);
            let before = this.inbuf.len();
            let n = {
                let dst = this.inbuf.spare_capacity_mut();
                let mut rb = ReadBuf::uninit(dst);
                ready!(Pin::new(&mut this.io).poll_read(cx, &mut rb))?;
                rb.filled().len()
            };
            // SAFETY: `poll_read` initialised the first `n` bytes of the spare capacity
            // (ReadBuf's contract), so the length may grow by `n`.
            unsafe { this.inbuf.set_len(before + n) };
            if n == 0 {
                this.eof = true;
            }
            this.process();
        }
    }
}

/// Implements `AsyncWrite` for `$ty<IO>` by passing every call to its `io` field: for adapters
/// that only act on the read side (this one, and `h2server::Rewind`).
macro_rules! write_through {
    ($ty:ident) => {
        impl<IO: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for $ty<IO> {
            fn poll_write(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                buf: &[u8],
            ) -> std::task::Poll<std::io::Result<usize>> {
                std::pin::Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
            }

            fn poll_write_vectored(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                bufs: &[std::io::IoSlice<'_>],
            ) -> std::task::Poll<std::io::Result<usize>> {
                std::pin::Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
            }

            fn is_write_vectored(&self) -> bool {
                self.io.is_write_vectored()
            }

            fn poll_flush(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::pin::Pin::new(&mut self.get_mut().io).poll_flush(cx)
            }

            fn poll_shutdown(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::pin::Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
            }
        }
    };
}
pub(crate) use write_through;

write_through!(AuthorityFix);

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[test]
    fn authority_replacement_keeps_length() {
        let f = fixed_authority(b"http://127.0.0.1:2379").unwrap();
        assert_eq!(f, b"127.0.0.1:00000002379");
        assert_eq!(fixed_authority(b"127.0.0.1:2379"), None);
        let f = fixed_authority(b"https://example.com").unwrap();
        assert_eq!(f.len(), "https://example.com".len());
        assert!(f.starts_with(b"example.com:"));
        assert_eq!(
            fixed_authority(b"http://[::1]:2379").unwrap(),
            b"[::1]:00000002379"
        );
    }

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut v = (payload.len() as u32).to_be_bytes()[1..].to_vec();
        v.push(kind);
        v.push(flags);
        v.extend_from_slice(&stream.to_be_bytes());
        v.extend_from_slice(payload);
        v
    }

    /// Parses frames back and decodes every header block with an independent HPACK decoder.
    fn decode_all(bytes: &[u8]) -> Vec<Vec<(Vec<u8>, Vec<u8>)>> {
        assert!(bytes.starts_with(PREFACE));
        let mut pos = PREFACE.len();
        let mut decoder = hpack::Decoder::new();
        let mut blocks = Vec::new();
        let mut block = Vec::new();
        while pos < bytes.len() {
            let len = u32::from_be_bytes([0, bytes[pos], bytes[pos + 1], bytes[pos + 2]]) as usize;
            let kind = bytes[pos + 3];
            let flags = bytes[pos + 4];
            let payload = &bytes[pos + 9..pos + 9 + len];
            pos += 9 + len;
            if kind == HEADERS || kind == CONTINUATION {
                let skip = if kind == HEADERS && flags & PRIORITY != 0 {
                    5
                } else {
                    0
                };
                block.extend_from_slice(&payload[skip..]);
                if flags & END_HEADERS != 0 {
                    blocks.push(decoder.decode(&block).unwrap());
                    block.clear();
                }
            }
        }
        blocks
    }

    async fn run(input: Vec<u8>) -> Vec<u8> {
        let mut fix = AuthorityFix::new(std::io::Cursor::new(input));
        let mut out = Vec::new();
        fix.read_to_end(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn rewrites_url_authority_and_keeps_tables_in_step() {
        let mut enc = hpack::Encoder::new();
        let h1: Vec<(&[u8], &[u8])> = vec![
            (b":method", b"POST"),
            (b":scheme", b"http"),
            (b":path", b"/etcdserverpb.Maintenance/Status"),
            (b":authority", b"http://127.0.0.1:2379"),
            (b"content-type", b"application/grpc"),
        ];
        let b1 = enc.encode(h1.clone());
        let b2 = enc.encode(h1.clone()); // references the dynamic table
        let mut input = PREFACE.to_vec();
        input.extend(frame(0x4, 0, 0, &[])); // SETTINGS passes through
        input.extend(frame(HEADERS, END_HEADERS, 1, &b1));
        input.extend(frame(0x0, END_STREAM, 1, &[0, 0, 0, 0, 0]));
        // second block split over HEADERS + CONTINUATION, with PADDED and PRIORITY flags
        let (x, y) = b2.split_at(b2.len() / 2);
        let mut p = vec![3u8];
        p.extend_from_slice(&[0, 0, 0, 0, 16]);
        p.extend_from_slice(x);
        p.extend_from_slice(&[0, 0, 0]);
        input.extend(frame(HEADERS, PADDED | PRIORITY | END_STREAM, 3, &p));
        input.extend(frame(CONTINUATION, END_HEADERS, 3, y));
        let out = run(input).await;
        let blocks = decode_all(&out);
        assert_eq!(blocks.len(), 2);
        for b in &blocks {
            let auth = b.iter().find(|(n, _)| n == b":authority").unwrap();
            assert_eq!(auth.1, b"127.0.0.1:00000002379");
            assert!(
                b.iter()
                    .any(|(n, v)| n == b":path" && v == b"/etcdserverpb.Maintenance/Status")
            );
            assert_eq!(b.len(), 5);
        }
    }

    #[tokio::test]
    async fn valid_blocks_and_http1_pass_through_unchanged() {
        let mut enc = hpack::Encoder::new();
        let b = enc.encode(vec![
            (&b":authority"[..], &b"127.0.0.1:2379"[..]),
            (b":path", b"/x"),
        ]);
        let mut input = PREFACE.to_vec();
        input.extend(frame(HEADERS, END_HEADERS, 1, &b));
        assert_eq!(run(input.clone()).await, input);
        let http1 = b"POST /v3/kv/range HTTP/1.1\r\nHost: x\r\n\r\n".to_vec();
        assert_eq!(run(http1.clone()).await, http1);
        let garbage =
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x02\x01\x04\x00\x00\x00\x01\xff\xff"
                .to_vec();
        assert_eq!(run(garbage.clone()).await, garbage);
    }
}

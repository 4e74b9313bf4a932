//! A minimal HTTP/2 client for unary gRPC calls, built for a small CPU cost per request.
//!
//! One connection is one driver task that owns the socket; callers share its state behind one
//! mutex (every caller runs on the same thread, so the lock is never contended). A call writes
//! its HEADERS and DATA frames straight into the connection's write buffer: the request message
//! is encoded in place, and after the first request the header block is six index bytes
//! (HPACK, see `hpack.rs`). The driver writes the whole buffer — every request queued in one
//! scheduler pass — with one write, and parses every frame one read brought in, waking the
//! callers whose responses completed.
//!
//! What it implements of RFC 9113: the connection preface and SETTINGS exchange (the server's
//! SETTINGS_MAX_CONCURRENT_STREAMS, INITIAL_WINDOW_SIZE, MAX_FRAME_SIZE and HEADER_TABLE_SIZE
//! are obeyed; calls beyond the stream limit wait in a queue), flow control both ways
//! (WINDOW_UPDATE when half of a receive window is used; request bodies wait for send window),
//! PING acks, CONTINUATION, padding, RST_STREAM and GOAWAY (the affected calls fail with the
//! gRPC code the gRPC spec maps them to, so the load generator counts them by kind). Server
//! push is refused in our SETTINGS.
//!
//! Frame layout (RFC 9113 §4.1; HTTP/2 is big-endian throughout):
//!
//! ```text
//! +-----------------------------------------------+
//! |                 Length (24)                   |
//! +---------------+---------------+---------------+
//! |   Type (8)    |   Flags (8)   |
//! +-+-------------+---------------+-------------------------------+
//! |R|                 Stream Identifier (31)                      |
//! +=+=============================================================+
//! |                   Frame Payload (Length bytes)                ...
//! ```

use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Poll, Waker};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::{Code, Status};

use super::hpack::{Decoder, Encoder, Field};

/// The client connection preface (RFC 9113 §3.4).
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

// Frame header fields, chained.
const LEN_AT: usize = 0;
const TYPE_AT: usize = LEN_AT + 3;
const FLAGS_AT: usize = TYPE_AT + 1;
const STREAM_AT: usize = FLAGS_AT + 1;
pub const FRAME_HEADER_LEN: usize = STREAM_AT + 4;

pub const DATA: u8 = 0;
pub const HEADERS: u8 = 1;
pub const RST_STREAM: u8 = 3;
pub const SETTINGS: u8 = 4;
pub const PUSH_PROMISE: u8 = 5;
pub const PING: u8 = 6;
pub const GOAWAY: u8 = 7;
pub const WINDOW_UPDATE: u8 = 8;
pub const CONTINUATION: u8 = 9;

pub const END_STREAM: u8 = 0x1;
pub const ACK: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;
pub const PADDED: u8 = 0x8;
pub const PRIORITY: u8 = 0x20;

// SETTINGS identifiers.
const HEADER_TABLE_SIZE: u16 = 1;
const ENABLE_PUSH: u16 = 2;
const MAX_CONCURRENT_STREAMS: u16 = 3;
const INITIAL_WINDOW_SIZE: u16 = 4;
const MAX_FRAME_SIZE: u16 = 5;

/// Error code CANCEL (RST_STREAM of a call whose caller went away).
const CANCEL: u32 = 0x8;

/// Our receive windows: a stream's and the connection's. A WINDOW_UPDATE goes out when half
/// is used, so large responses never wait for a round trip.
const STREAM_WINDOW: u32 = 4 << 20;
const CONNECTION_WINDOW: u32 = 64 << 20;
/// The default (and minimum) SETTINGS_MAX_FRAME_SIZE; we do not ask for larger frames.
const DEFAULT_MAX_FRAME: usize = 16_384;
/// The RFC's initial window for both directions until SETTINGS say otherwise.
const DEFAULT_WINDOW: i64 = 65_535;
const MAX_WINDOW: i64 = (1 << 31) - 1;
/// Largest response message accepted (ranges can be large).
const MAX_MESSAGE: usize = 256 << 20;
/// Bytes of the gRPC message prefix: compressed flag (1) + length (4).
const PREFIX_LEN: usize = 5;

/// A parsed frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHead {
    pub len: usize,
    pub ty: u8,
    pub flags: u8,
    pub stream: u32,
}

impl FrameHead {
    pub fn parse(b: &[u8]) -> FrameHead {
        FrameHead {
            len: (usize::from(b[LEN_AT]) << 16)
                | (usize::from(b[LEN_AT + 1]) << 8)
                | usize::from(b[LEN_AT + 2]),
            ty: b[TYPE_AT],
            flags: b[FLAGS_AT],
            stream: u32::from_be_bytes([
                b[STREAM_AT],
                b[STREAM_AT + 1],
                b[STREAM_AT + 2],
                b[STREAM_AT + 3],
            ]) & 0x7fff_ffff,
        }
    }
}

/// Appends a frame header.
// Format: { length: u24 big-endian, type: u8, flags: u8, stream: u32 big-endian (R bit 0) }
pub fn put_frame_head(out: &mut Vec<u8>, len: usize, ty: u8, flags: u8, stream: u32) {
    debug_assert!(len < 1 << 24);
    out.extend_from_slice(&(len as u32).to_be_bytes()[1..]);
    out.push(ty);
    out.push(flags);
    out.extend_from_slice(&stream.to_be_bytes());
}

/// Our SETTINGS: no push, our stream window; the header table stays at the default 4096.
// Format: { (id: u16 big-endian, value: u32 big-endian) * 2 }
fn put_our_settings(out: &mut Vec<u8>) {
    put_frame_head(out, 12, SETTINGS, 0, 0);
    out.extend_from_slice(&ENABLE_PUSH.to_be_bytes());
    out.extend_from_slice(&0u32.to_be_bytes());
    out.extend_from_slice(&INITIAL_WINDOW_SIZE.to_be_bytes());
    out.extend_from_slice(&STREAM_WINDOW.to_be_bytes());
}

// Format: { increment: u32 big-endian (R bit 0) }
fn put_window_update(out: &mut Vec<u8>, stream: u32, inc: u32) {
    put_frame_head(out, 4, WINDOW_UPDATE, 0, stream);
    out.extend_from_slice(&inc.to_be_bytes());
}

// Format: { error code: u32 big-endian }
fn put_rst(out: &mut Vec<u8>, stream: u32, code: u32) {
    put_frame_head(out, 4, RST_STREAM, 0, stream);
    out.extend_from_slice(&code.to_be_bytes());
}

/// The gRPC code a stream reset maps to (gRPC's PROTOCOL-HTTP2 spec).
fn rst_code(code: u32) -> Code {
    match code {
        0x7 => Code::Unavailable,       // REFUSED_STREAM
        0x8 => Code::Cancelled,         // CANCEL
        0xb => Code::ResourceExhausted, // ENHANCE_YOUR_CALM
        0xc => Code::PermissionDenied,  // INADEQUATE_SECURITY
        _ => Code::Internal,
    }
}

/// The gRPC code of a non-200 HTTP status without grpc-status (gRPC's HTTP mapping).
fn http_code(status: u16) -> Code {
    match status {
        400 => Code::Internal,
        401 => Code::Unauthenticated,
        403 => Code::PermissionDenied,
        404 => Code::Unimplemented,
        429 | 502 | 503 | 504 => Code::Unavailable,
        _ => Code::Unknown,
    }
}

/// `%XX` decoding of `grpc-message`; anything that is not a valid escape stays as it is.
pub fn percent_decode(s: &[u8]) -> String {
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'%'
            && i + 2 < s.len()
            && let (Some(h), Some(l)) = (hex(s[i + 1]), hex(s[i + 2]))
        {
            out.push(h << 4 | l);
            i += 3;
            continue;
        }
        out.push(s[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// One call's state in the connection.
#[derive(Debug, Default)]
struct Call {
    path: &'static str,
    /// Request bytes (prefixed message) not sent yet.
    body: Bytes,
    /// 0 until the HEADERS went out.
    stream: u32,
    send_window: i64,
    recv_unacked: u32,
    /// The response head arrived.
    head: bool,
    /// Response body bytes (gRPC-framed messages).
    resp: Vec<u8>,
    outcome: Option<Result<Bytes, Status>>,
    waker: Option<Waker>,
    in_use: bool,
}

/// The server's settings as they apply to us.
#[derive(Debug)]
struct Peer {
    max_concurrent: u32,
    initial_window: i64,
    max_frame: usize,
}

/// A HEADERS block being continued by CONTINUATION frames.
#[derive(Debug)]
struct Continued {
    stream: u32,
    end_stream: bool,
    block: Vec<u8>,
}

/// What the response headers said.
#[derive(Debug, Default)]
struct Head {
    status: Option<u16>,
    grpc_status: Option<i32>,
    grpc_message: Option<String>,
}

/// Everything about one connection; callers and the driver lock it in turn.
#[derive(Debug)]
pub struct State {
    /// Bytes to write; `wbuf[wpos..]` is unwritten.
    wbuf: Vec<u8>,
    wpos: usize,
    driver: Option<Waker>,
    /// The driver was woken and has not run since (avoids a wake per request).
    driver_woken: bool,
    calls: Vec<Call>,
    free: Vec<usize>,
    by_stream: HashMap<u32, usize>,
    /// Calls waiting for a stream slot, in order.
    waiting: VecDeque<usize>,
    /// Open calls with request bytes waiting for send window, in order.
    blocked: VecDeque<usize>,
    next_stream: u32,
    open: u32,
    peer: Peer,
    send_window: i64,
    recv_unacked: u32,
    encoder: Encoder,
    decoder: Decoder,
    /// Header block per method path, valid while the encoder's epoch is unchanged.
    blocks: Vec<(&'static str, u64, Vec<u8>)>,
    scheme: &'static str,
    authority: String,
    continued: Option<Continued>,
    /// Once set, every new call fails with this status.
    dead: Option<Status>,
    /// Last stream id the server's GOAWAY lets finish.
    goaway: Option<u32>,
    /// Whether the server's first SETTINGS arrived.
    settled: bool,
    /// `Conn::start` waiting for that.
    settle_waker: Option<Waker>,
}

/// A connection-level protocol violation by the server (the connection is given up).
#[derive(Debug)]
struct ConnError(String);

impl State {
    pub fn new(scheme: &'static str, authority: &str) -> Self {
        let mut wbuf = Vec::with_capacity(64 << 10);
        wbuf.extend_from_slice(PREFACE);
        put_our_settings(&mut wbuf);
        put_window_update(&mut wbuf, 0, CONNECTION_WINDOW - DEFAULT_WINDOW as u32);
        State {
            wbuf,
            wpos: 0,
            driver: None,
            driver_woken: false,
            calls: Vec::new(),
            free: Vec::new(),
            by_stream: HashMap::new(),
            waiting: VecDeque::new(),
            blocked: VecDeque::new(),
            next_stream: 1,
            open: 0,
            peer: Peer {
                max_concurrent: u32::MAX,
                initial_window: DEFAULT_WINDOW,
                max_frame: DEFAULT_MAX_FRAME,
            },
            send_window: DEFAULT_WINDOW,
            recv_unacked: 0,
            encoder: Encoder::default(),
            decoder: Decoder::new(4096),
            blocks: Vec::new(),
            scheme,
            authority: authority.to_owned(),
            continued: None,
            dead: None,
            goaway: None,
            settled: false,
            settle_waker: None,
        }
    }

    fn wake_driver(&mut self) {
        if !self.driver_woken
            && let Some(w) = &self.driver
        {
            self.driver_woken = true;
            w.wake_by_ref();
        }
    }

    /// Starts a call of `path` with `msg`; returns its slot.
    pub fn start<M: prost::Message>(&mut self, path: &'static str, msg: &M) -> usize {
        let slot = match self.free.pop() {
            Some(s) => s,
            None => {
                self.calls.push(Call::default());
                self.calls.len() - 1
            }
        };
        let c = &mut self.calls[slot];
        c.path = path;
        c.in_use = true;
        if let Some(s) = &self.dead {
            c.outcome = Some(Err(s.clone()));
            return slot;
        }
        let len = msg.encoded_len();
        let body_len = PREFIX_LEN + len;
        let fast = self.waiting.is_empty()
            && self.can_open()
            && (body_len as i64) <= self.send_window.min(self.peer.initial_window)
            && body_len <= self.peer.max_frame;
        if fast {
            // The usual case: HEADERS and the whole body in one DATA frame, encoded in place.
            let stream = self.open_stream(slot);
            put_frame_head(&mut self.wbuf, body_len, DATA, END_STREAM, stream);
            self.wbuf.push(0);
            self.wbuf.extend_from_slice(&(len as u32).to_be_bytes());
            msg.encode(&mut self.wbuf)
                .expect("a Vec grows to hold any message");
            self.send_window -= body_len as i64;
            self.calls[slot].send_window -= body_len as i64;
        } else {
            let mut body = Vec::with_capacity(body_len);
            body.push(0);
            body.extend_from_slice(&(len as u32).to_be_bytes());
            msg.encode(&mut body)
                .expect("a Vec grows to hold any message");
            self.calls[slot].body = Bytes::from(body);
            self.waiting.push_back(slot);
            self.open_waiting();
        }
        self.wake_driver();
        slot
    }

    fn can_open(&self) -> bool {
        self.goaway.is_none() && self.dead.is_none() && self.open < self.peer.max_concurrent
    }

    /// Writes the HEADERS of call `slot` on a new stream; returns the stream id.
    fn open_stream(&mut self, slot: usize) -> u32 {
        let stream = self.next_stream;
        self.next_stream += 2;
        if self.next_stream > 0x7fff_ffff {
            // No ids left: later calls fail; this one still runs.
            self.dead = Some(Status::unavailable("HTTP/2 stream ids exhausted"));
        }
        self.open += 1;
        self.by_stream.insert(stream, slot);
        let path = self.calls[slot].path;
        let epoch = self.encoder.epoch();
        let i = match self.blocks.iter().position(|(p, _, _)| *p == path) {
            Some(i) if self.blocks[i].1 == epoch => i,
            found => {
                let mut block = Vec::new();
                let fields = [
                    Field {
                        static_name: 2,
                        name: ":method",
                        value: "POST",
                    },
                    Field {
                        static_name: 6,
                        name: ":scheme",
                        value: self.scheme,
                    },
                    Field {
                        static_name: 4,
                        name: ":path",
                        value: path,
                    },
                    Field {
                        static_name: 1,
                        name: ":authority",
                        value: &self.authority,
                    },
                    Field {
                        static_name: 31,
                        name: "content-type",
                        value: "application/grpc",
                    },
                    Field {
                        static_name: 0,
                        name: "te",
                        value: "trailers",
                    },
                ];
                self.encoder.encode(&fields, &mut block);
                // A block that inserted entries is only valid once; the next one refers.
                let epoch = self.encoder.epoch();
                match found {
                    Some(i) => {
                        self.blocks[i] = (path, epoch, block);
                        i
                    }
                    None => {
                        self.blocks.push((path, epoch, block));
                        self.blocks.len() - 1
                    }
                }
            }
        };
        let block = &self.blocks[i].2;
        let fresh = self.blocks[i].1 != epoch;
        put_frame_head(&mut self.wbuf, block.len(), HEADERS, END_HEADERS, stream);
        self.wbuf.extend_from_slice(block);
        if fresh {
            // This block changed the table; do not reuse it.
            self.blocks[i].1 = u64::MAX;
        }
        let c = &mut self.calls[slot];
        c.stream = stream;
        c.send_window = self.peer.initial_window;
        stream
    }

    /// Opens waiting calls while streams are available, and sends blocked bodies.
    fn open_waiting(&mut self) {
        while self.can_open() {
            let Some(slot) = self.waiting.pop_front() else {
                break;
            };
            self.open_stream(slot);
            self.blocked.push_back(slot);
        }
        self.send_blocked();
    }

    /// Sends as much of the blocked request bodies as the send windows allow, in order.
    fn send_blocked(&mut self) {
        while let Some(&slot) = self.blocked.front() {
            let c = &mut self.calls[slot];
            // A call ended (or a reused slot) has nothing left: a body is never empty.
            if c.stream == 0 || c.outcome.is_some() || c.body.is_empty() {
                self.blocked.pop_front();
                continue;
            }
            let n = (c.body.len() as i64)
                .min(c.send_window)
                .min(self.send_window)
                .min(self.peer.max_frame as i64)
                .max(0) as usize;
            if n == 0 {
                break;
            }
            let chunk = c.body.split_to(n);
            let last = c.body.is_empty();
            c.send_window -= n as i64;
            let stream = c.stream;
            self.send_window -= n as i64;
            put_frame_head(
                &mut self.wbuf,
                n,
                DATA,
                if last { END_STREAM } else { 0 },
                stream,
            );
            self.wbuf.extend_from_slice(&chunk);
            if last {
                self.blocked.pop_front();
            }
        }
    }

    /// The outcome of call `slot` if it ended (freeing the slot), else registers `waker`.
    pub fn poll_call(&mut self, slot: usize, waker: &Waker) -> Option<Result<Bytes, Status>> {
        let c = &mut self.calls[slot];
        if let Some(o) = c.outcome.take() {
            self.release(slot);
            return Some(o);
        }
        match &c.waker {
            Some(w) if w.will_wake(waker) => {}
            _ => c.waker = Some(waker.clone()),
        }
        None
    }

    /// The caller of `slot` went away before its outcome.
    pub fn abandon(&mut self, slot: usize) {
        let c = &mut self.calls[slot];
        if c.outcome.is_some() || c.stream == 0 {
            self.waiting.retain(|&s| s != slot);
            self.release(slot);
            return;
        }
        let stream = c.stream;
        put_rst(&mut self.wbuf, stream, CANCEL);
        self.finish(slot, Err(Status::cancelled("caller went away")));
        self.release(slot);
        self.wake_driver();
    }

    fn release(&mut self, slot: usize) {
        self.calls[slot] = Call::default();
        self.free.push(slot);
    }

    /// Ends call `slot` with `outcome` and wakes its caller.
    fn finish(&mut self, slot: usize, outcome: Result<Bytes, Status>) {
        let c = &mut self.calls[slot];
        if c.outcome.is_some() || !c.in_use {
            return;
        }
        if c.stream != 0 {
            self.by_stream.remove(&c.stream);
            self.open -= 1;
            if !c.body.is_empty() {
                // The server ended the call before taking the whole request.
                put_rst(&mut self.wbuf, c.stream, CANCEL);
            }
        }
        c.body = Bytes::new();
        c.resp = Vec::new();
        c.outcome = Some(outcome);
        if let Some(w) = c.waker.take() {
            w.wake();
        }
    }

    /// Ends call `slot` with `status` before the server ended it (unless `ended`): the stream
    /// is reset so the server stops sending on it.
    fn reset(&mut self, slot: usize, ended: bool, status: Status) {
        let stream = self.calls[slot].stream;
        if !ended && stream != 0 {
            put_rst(&mut self.wbuf, stream, CANCEL);
        }
        self.finish(slot, Err(status));
        self.open_waiting();
    }

    /// Fails every call and every later one with `status`.
    pub fn fail_all(&mut self, status: Status) {
        if self.dead.is_none() {
            self.dead = Some(status.clone());
        }
        let slots: Vec<usize> = (0..self.calls.len())
            .filter(|&s| self.calls[s].in_use && self.calls[s].outcome.is_none())
            .collect();
        for s in slots {
            self.finish(s, Err(status.clone()));
        }
        self.waiting.clear();
        self.blocked.clear();
        if let Some(w) = self.settle_waker.take() {
            w.wake();
        }
    }

    /// Processes every whole frame at the start of `buf`; returns how many bytes that was.
    pub fn on_bytes(&mut self, buf: &[u8]) -> usize {
        let mut pos = 0;
        while buf.len() - pos >= FRAME_HEADER_LEN {
            let h = FrameHead::parse(&buf[pos..]);
            if h.len > DEFAULT_MAX_FRAME {
                self.fail_all(Status::internal(format!(
                    "HTTP/2: frame of {} bytes exceeds our SETTINGS_MAX_FRAME_SIZE",
                    h.len
                )));
                return buf.len();
            }
            if buf.len() - pos < FRAME_HEADER_LEN + h.len {
                break;
            }
            let payload = &buf[pos + FRAME_HEADER_LEN..pos + FRAME_HEADER_LEN + h.len];
            pos += FRAME_HEADER_LEN + h.len;
            if let Err(ConnError(e)) = self.on_frame(h, payload) {
                self.fail_all(Status::internal(format!("HTTP/2 protocol error: {e}")));
                return buf.len();
            }
        }
        if !self.wbuf[self.wpos..].is_empty() {
            self.wake_driver();
        }
        pos
    }

    fn on_frame(&mut self, h: FrameHead, p: &[u8]) -> Result<(), ConnError> {
        if self.continued.is_some() && h.ty != CONTINUATION {
            return Err(ConnError("expected CONTINUATION".into()));
        }
        match h.ty {
            DATA => self.on_data(h, p),
            HEADERS => {
                let p = strip_padding(h, p)?;
                let p = if h.flags & PRIORITY != 0 {
                    p.get(5..)
                        .ok_or_else(|| ConnError("short HEADERS priority".into()))?
                } else {
                    p
                };
                if h.stream == 0 {
                    return Err(ConnError("HEADERS on stream 0".into()));
                }
                let end_stream = h.flags & END_STREAM != 0;
                if h.flags & END_HEADERS != 0 {
                    self.on_block(h.stream, end_stream, p)
                } else {
                    self.continued = Some(Continued {
                        stream: h.stream,
                        end_stream,
                        block: p.to_vec(),
                    });
                    Ok(())
                }
            }
            CONTINUATION => {
                let mut c = self
                    .continued
                    .take()
                    .ok_or_else(|| ConnError("CONTINUATION without HEADERS".into()))?;
                if c.stream != h.stream {
                    return Err(ConnError("CONTINUATION on another stream".into()));
                }
                c.block.extend_from_slice(p);
                if h.flags & END_HEADERS != 0 {
                    self.on_block(c.stream, c.end_stream, &c.block)
                } else {
                    self.continued = Some(c);
                    Ok(())
                }
            }
            RST_STREAM => {
                let code = be32(p)?;
                if let Some(&slot) = self.by_stream.get(&h.stream) {
                    let status = Status::new(
                        rst_code(code),
                        format!("stream reset by the server (HTTP/2 error code {code:#x})"),
                    );
                    self.finish(slot, Err(status));
                    self.open_waiting();
                }
                Ok(())
            }
            SETTINGS => self.on_settings(h, p),
            PUSH_PROMISE => Err(ConnError("PUSH_PROMISE although push is disabled".into())),
            PING => {
                if p.len() != 8 {
                    return Err(ConnError("PING payload is not 8 bytes".into()));
                }
                if h.flags & ACK == 0 {
                    put_frame_head(&mut self.wbuf, 8, PING, ACK, 0);
                    self.wbuf.extend_from_slice(p);
                }
                Ok(())
            }
            GOAWAY => {
                let last = be32(p)? & 0x7fff_ffff;
                let code = be32(p.get(4..).unwrap_or_default())?;
                let debug = String::from_utf8_lossy(p.get(8..).unwrap_or_default());
                self.goaway = Some(last);
                let status = Status::unavailable(format!(
                    "server sent GOAWAY (HTTP/2 error code {code:#x}, last stream {last}): {debug}"
                ));
                let gone: Vec<usize> = self
                    .by_stream
                    .iter()
                    .filter(|&(&s, _)| s > last)
                    .map(|(_, &slot)| slot)
                    .collect();
                for slot in gone {
                    self.finish(slot, Err(status.clone()));
                }
                for slot in std::mem::take(&mut self.waiting) {
                    self.finish(slot, Err(status.clone()));
                }
                if self.dead.is_none() {
                    self.dead = Some(status);
                }
                Ok(())
            }
            WINDOW_UPDATE => {
                let inc = i64::from(be32(p)? & 0x7fff_ffff);
                if h.stream == 0 {
                    if inc == 0 {
                        return Err(ConnError("WINDOW_UPDATE of 0".into()));
                    }
                    self.send_window += inc;
                    if self.send_window > MAX_WINDOW {
                        return Err(ConnError("connection send window overflow".into()));
                    }
                } else if let Some(&slot) = self.by_stream.get(&h.stream) {
                    self.calls[slot].send_window += inc;
                }
                self.send_blocked();
                Ok(())
            }
            _ => Ok(()), // PRIORITY and unknown frame types are ignored.
        }
    }

    fn on_data(&mut self, h: FrameHead, p: &[u8]) -> Result<(), ConnError> {
        if h.stream == 0 {
            return Err(ConnError("DATA on stream 0".into()));
        }
        // Flow control counts the whole payload, padding included.
        self.recv_unacked += h.len as u32;
        if self.recv_unacked >= CONNECTION_WINDOW / 2 {
            put_window_update(&mut self.wbuf, 0, self.recv_unacked);
            self.recv_unacked = 0;
        }
        let data = strip_padding(h, p)?;
        let Some(&slot) = self.by_stream.get(&h.stream) else {
            return Ok(()); // A call we cancelled.
        };
        let end = h.flags & END_STREAM != 0;
        let c = &mut self.calls[slot];
        if !c.head {
            self.reset(
                slot,
                end,
                Status::internal("DATA before the response headers"),
            );
            return Ok(());
        }
        if c.resp.len() + data.len() > MAX_MESSAGE + PREFIX_LEN {
            let s = Status::resource_exhausted(format!("response exceeds {MAX_MESSAGE} bytes"));
            self.reset(slot, end, s);
            return Ok(());
        }
        c.resp.extend_from_slice(data);
        c.recv_unacked += h.len as u32;
        if !end && c.recv_unacked >= STREAM_WINDOW / 2 {
            let (stream, inc) = (c.stream, c.recv_unacked);
            c.recv_unacked = 0;
            put_window_update(&mut self.wbuf, stream, inc);
        }
        if end {
            self.finish(
                slot,
                Err(Status::internal(
                    "response ended without grpc-status trailers",
                )),
            );
            self.open_waiting();
        }
        Ok(())
    }

    fn on_block(&mut self, stream: u32, end_stream: bool, block: &[u8]) -> Result<(), ConnError> {
        let mut head = Head::default();
        // Every block is decoded, even of a call we no longer track: it updates the table.
        self.decoder
            .decode(block, |n, v| match n {
                b":status" => {
                    head.status = std::str::from_utf8(v).ok().and_then(|s| s.parse().ok())
                }
                b"grpc-status" => {
                    head.grpc_status = Some(
                        std::str::from_utf8(v)
                            .ok()
                            .and_then(|s| s.parse().ok())
                            .unwrap_or(2),
                    )
                }
                b"grpc-message" => head.grpc_message = Some(percent_decode(v)),
                _ => {}
            })
            .map_err(|e| ConnError(e.to_string()))?;
        let Some(&slot) = self.by_stream.get(&stream) else {
            return Ok(());
        };
        let c = &mut self.calls[slot];
        let outcome = if !c.head {
            c.head = true;
            match head.status {
                Some(200) => {}
                Some(s) if head.grpc_status.is_none() => {
                    let status = Status::new(http_code(s), format!("HTTP status {s}"));
                    self.reset(slot, end_stream, status);
                    return Ok(());
                }
                Some(_) => {}
                None => {
                    let status = Status::internal("response headers without :status");
                    self.reset(slot, end_stream, status);
                    return Ok(());
                }
            }
            if !end_stream {
                return Ok(());
            }
            // Trailers-only: the status is in the head.
            match head.grpc_status {
                Some(0) => Err(Status::internal("unary call returned no message")),
                Some(code) => Err(Status::new(
                    Code::from_i32(code),
                    head.grpc_message.unwrap_or_default(),
                )),
                None => Err(Status::internal("response ended without grpc-status")),
            }
        } else {
            if !end_stream {
                return Err(ConnError("trailers without END_STREAM".into()));
            }
            match head.grpc_status {
                Some(0) => unary_message(std::mem::take(&mut c.resp)),
                Some(code) => Err(Status::new(
                    Code::from_i32(code),
                    head.grpc_message.unwrap_or_default(),
                )),
                None => Err(Status::internal("trailers without grpc-status")),
            }
        };
        self.finish(slot, outcome);
        self.open_waiting();
        Ok(())
    }

    fn on_settings(&mut self, h: FrameHead, p: &[u8]) -> Result<(), ConnError> {
        if h.flags & ACK != 0 {
            return Ok(());
        }
        if h.stream != 0 || !p.len().is_multiple_of(6) {
            return Err(ConnError("malformed SETTINGS".into()));
        }
        for e in p.chunks_exact(6) {
            let id = u16::from_be_bytes([e[0], e[1]]);
            let v = u32::from_be_bytes([e[2], e[3], e[4], e[5]]);
            match id {
                HEADER_TABLE_SIZE => self.encoder.set_peer_max(v as usize),
                MAX_CONCURRENT_STREAMS => self.peer.max_concurrent = v,
                INITIAL_WINDOW_SIZE => {
                    if i64::from(v) > MAX_WINDOW {
                        return Err(ConnError("SETTINGS_INITIAL_WINDOW_SIZE too large".into()));
                    }
                    let delta = i64::from(v) - self.peer.initial_window;
                    self.peer.initial_window = i64::from(v);
                    for &slot in self.by_stream.values() {
                        self.calls[slot].send_window += delta;
                    }
                }
                MAX_FRAME_SIZE => {
                    if !(16_384..=16_777_215).contains(&v) {
                        return Err(ConnError("SETTINGS_MAX_FRAME_SIZE out of range".into()));
                    }
                    self.peer.max_frame = v as usize;
                }
                _ => {}
            }
        }
        self.settled = true;
        if let Some(w) = self.settle_waker.take() {
            w.wake();
        }
        put_frame_head(&mut self.wbuf, 0, SETTINGS, ACK, 0);
        self.open_waiting();
        Ok(())
    }

    /// Bytes waiting to be written.
    pub fn pending_write(&self) -> &[u8] {
        &self.wbuf[self.wpos..]
    }

    fn wrote(&mut self, n: usize) {
        self.wpos += n;
        if self.wpos == self.wbuf.len() {
            self.wbuf.clear();
            self.wpos = 0;
        }
    }
}

/// The one message of a unary response body.
fn unary_message(resp: Vec<u8>) -> Result<Bytes, Status> {
    if resp.len() < PREFIX_LEN {
        return Err(Status::internal("unary call returned no message"));
    }
    if resp[0] != 0 {
        return Err(Status::internal(
            "compressed gRPC message (no compression was negotiated)",
        ));
    }
    let len = u32::from_be_bytes([resp[1], resp[2], resp[3], resp[4]]) as usize;
    if resp.len() != PREFIX_LEN + len {
        return Err(Status::internal(format!(
            "unary response body of {} bytes does not hold exactly one message of {len}",
            resp.len()
        )));
    }
    let mut b = Bytes::from(resp);
    let _ = b.split_to(PREFIX_LEN);
    Ok(b)
}

fn be32(p: &[u8]) -> Result<u32, ConnError> {
    p.get(..4)
        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or_else(|| ConnError("frame too short".into()))
}

/// The payload without its padding, if the frame is PADDED.
// Format: { pad_len: u8, data: [u8; len - 1 - pad_len], padding: [u8; pad_len] }
fn strip_padding(h: FrameHead, p: &[u8]) -> Result<&[u8], ConnError> {
    if h.flags & PADDED == 0 {
        return Ok(p);
    }
    let pad = usize::from(
        *p.first()
            .ok_or_else(|| ConnError("empty padded frame".into()))?,
    );
    if pad + 1 > p.len() {
        return Err(ConnError("padding longer than the frame".into()));
    }
    Ok(&p[1..p.len() - pad])
}

/// A handle on one connection; clones share it.
#[derive(Clone, Debug)]
pub struct Conn {
    state: Arc<Mutex<State>>,
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    // A panic while holding the lock leaves no half-done invariant we rely on afterwards.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Frees the call's slot if the caller's future is dropped before the outcome.
struct CallGuard<'a> {
    conn: &'a Conn,
    slot: usize,
    done: bool,
}

impl Drop for CallGuard<'_> {
    fn drop(&mut self) {
        if !self.done {
            lock(&self.conn.state).abandon(self.slot);
        }
    }
}

impl Conn {
    /// Starts the driver of `io` (a fresh TCP or TLS stream) and waits for the server's
    /// SETTINGS.
    pub async fn start<IO>(io: IO, scheme: &'static str, authority: &str) -> Result<Self, String>
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let conn = Conn {
            state: Arc::new(Mutex::new(State::new(scheme, authority))),
        };
        let driver = conn.clone();
        tokio::spawn(async move { driver.drive(io).await });
        // The first SETTINGS tell the stream limit and windows before any call is made.
        std::future::poll_fn(|cx| {
            let mut st = lock(&conn.state);
            if let Some(s) = &st.dead {
                return Poll::Ready(Err(format!("HTTP/2 connection failed: {}", s.message())));
            }
            if st.settled {
                return Poll::Ready(Ok(()));
            }
            st.settle_waker = Some(cx.waker().clone());
            Poll::Pending
        })
        .await?;
        Ok(conn)
    }

    /// One unary call: `path` with `req`; returns the response message's bytes.
    pub async fn unary<M: prost::Message>(
        &self,
        path: &'static str,
        req: &M,
    ) -> Result<Bytes, Status> {
        let slot = lock(&self.state).start(path, req);
        let mut guard = CallGuard {
            conn: self,
            slot,
            done: false,
        };
        let out = std::future::poll_fn(|cx| match lock(&self.state).poll_call(slot, cx.waker()) {
            Some(o) => Poll::Ready(o),
            None => Poll::Pending,
        })
        .await;
        guard.done = true;
        out
    }

    /// The driver: writes what callers queued, reads and dispatches frames, until the
    /// connection fails or the server closes it.
    async fn drive<IO: AsyncRead + AsyncWrite + Unpin>(self, mut io: IO) {
        let mut rbuf = vec![0u8; 256 << 10];
        let mut rlen = 0usize;
        std::future::poll_fn(|cx| {
            let mut st = lock(&self.state);
            match &st.driver {
                Some(w) if w.will_wake(cx.waker()) => {}
                _ => st.driver = Some(cx.waker().clone()),
            }
            st.driver_woken = false;
            loop {
                let mut blocked_write = false;
                while !st.pending_write().is_empty() {
                    match Pin::new(&mut io).poll_write(cx, st.pending_write()) {
                        Poll::Ready(Ok(0)) => {
                            st.fail_all(Status::unavailable("connection closed while writing"));
                            return Poll::Ready(());
                        }
                        Poll::Ready(Ok(n)) => st.wrote(n),
                        Poll::Ready(Err(e)) => {
                            st.fail_all(Status::unavailable(format!("write: {e}")));
                            return Poll::Ready(());
                        }
                        Poll::Pending => {
                            blocked_write = true;
                            break;
                        }
                    }
                }
                if !blocked_write && let Poll::Ready(Err(e)) = Pin::new(&mut io).poll_flush(cx) {
                    st.fail_all(Status::unavailable(format!("flush: {e}")));
                    return Poll::Ready(());
                }
                let mut rb = ReadBuf::new(&mut rbuf[rlen..]);
                match Pin::new(&mut io).poll_read(cx, &mut rb) {
                    Poll::Ready(Ok(())) => {
                        let n = rb.filled().len();
                        if n == 0 {
                            st.fail_all(Status::unavailable("connection closed by the server"));
                            return Poll::Ready(());
                        }
                        rlen += n;
                        let used = st.on_bytes(&rbuf[..rlen]);
                        rbuf.copy_within(used..rlen, 0);
                        rlen -= used;
                        if st.dead.is_some()
                            && st.by_stream.is_empty()
                            && st.pending_write().is_empty()
                        {
                            return Poll::Ready(());
                        }
                    }
                    Poll::Ready(Err(e)) => {
                        st.fail_all(Status::unavailable(format!("read: {e}")));
                        return Poll::Ready(());
                    }
                    Poll::Pending => {
                        if blocked_write || st.pending_write().is_empty() {
                            return Poll::Pending;
                        }
                    }
                }
            }
        })
        .await;
    }
}

#[cfg(test)]
mod tests {
    use prost::Message as _;
    use ringkv_engine::pb::etcdserverpb::{PutRequest, PutResponse, ResponseHeader};

    use super::super::hpack::{encode_int, huffman_encode};
    use super::*;

    const PUT: &str = "/etcdserverpb.KV/Put";

    fn frame(ty: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        put_frame_head(&mut out, payload.len(), ty, flags, stream);
        out.extend_from_slice(payload);
        out
    }

    fn settings(entries: &[(u16, u32)]) -> Vec<u8> {
        let mut p = Vec::new();
        for &(id, v) in entries {
            p.extend_from_slice(&id.to_be_bytes());
            p.extend_from_slice(&v.to_be_bytes());
        }
        frame(SETTINGS, 0, 0, &p)
    }

    /// Takes what the client wrote, as frames (the preface skipped).
    fn written(st: &mut State) -> Vec<(FrameHead, Vec<u8>)> {
        let mut b = st.pending_write().to_vec();
        st.wrote(b.len());
        if b.starts_with(PREFACE) {
            b.drain(..PREFACE.len());
        }
        let mut out = Vec::new();
        let mut pos = 0;
        while pos < b.len() {
            let h = FrameHead::parse(&b[pos..]);
            out.push((h, b[pos + 9..pos + 9 + h.len].to_vec()));
            pos += 9 + h.len;
        }
        out
    }

    /// A connection that got the server's SETTINGS (with `entries`), output drained.
    fn settled(entries: &[(u16, u32)]) -> State {
        let mut st = State::new("http", "127.0.0.1:2379");
        let s = settings(entries);
        assert_eq!(st.on_bytes(&s), s.len());
        assert!(st.settled);
        let out = written(&mut st);
        assert_eq!(out[0].0.ty, SETTINGS);
        assert_eq!(
            out.last().unwrap().0,
            FrameHead {
                len: 0,
                ty: SETTINGS,
                flags: ACK,
                stream: 0
            }
        );
        st
    }

    fn put_req() -> PutRequest {
        PutRequest {
            key: Bytes::from_static(b"key"),
            value: Bytes::from_static(b"value"),
            ..Default::default()
        }
    }

    fn put_resp(rev: i64) -> Vec<u8> {
        let m = PutResponse {
            header: Some(ResponseHeader {
                revision: rev,
                ..Default::default()
            }),
            prev_kv: None,
        };
        let mut b = vec![0];
        b.extend_from_slice(&(m.encoded_len() as u32).to_be_bytes());
        m.encode(&mut b).unwrap();
        b
    }

    /// A server's whole response on `stream`: head (`:status 200` indexed, content-type as a
    /// literal with indexing), the message, trailers (`grpc-status: 0` with a literal name,
    /// Huffman value, indexed).
    fn response(stream: u32, msg: &[u8]) -> Vec<u8> {
        let mut head = vec![0x88, 0x5f];
        encode_int(&mut head, 0, 7, "application/grpc".len());
        head.extend_from_slice(b"application/grpc");
        let mut trailers = vec![0x40];
        encode_int(&mut trailers, 0, 7, "grpc-status".len());
        trailers.extend_from_slice(b"grpc-status");
        let mut v = Vec::new();
        huffman_encode(b"0", &mut v);
        encode_int(&mut trailers, 0x80, 7, v.len());
        trailers.extend_from_slice(&v);
        [
            frame(HEADERS, END_HEADERS, stream, &head),
            frame(DATA, 0, stream, msg),
            frame(HEADERS, END_HEADERS | END_STREAM, stream, &trailers),
        ]
        .concat()
    }

    fn outcome(st: &mut State, slot: usize) -> Option<Result<Bytes, Status>> {
        st.poll_call(slot, Waker::noop())
    }

    #[test]
    fn a_call_sends_headers_and_body_then_indexes() {
        let mut st = settled(&[]);
        let slot = st.start(PUT, &put_req());
        let out = written(&mut st);
        assert_eq!(out.len(), 2);
        let (h, block) = &out[0];
        assert_eq!((h.ty, h.flags, h.stream), (HEADERS, END_HEADERS, 1));
        let mut d = Decoder::new(4096);
        let mut fields = Vec::new();
        d.decode(block, |n, v| fields.push((n.to_vec(), v.to_vec())))
            .unwrap();
        let want: [(&[u8], &[u8]); 6] = [
            (b":method", b"POST"),
            (b":scheme", b"http"),
            (b":path", PUT.as_bytes()),
            (b":authority", b"127.0.0.1:2379"),
            (b"content-type", b"application/grpc"),
            (b"te", b"trailers"),
        ];
        assert_eq!(
            fields,
            want.iter()
                .map(|(n, v)| (n.to_vec(), v.to_vec()))
                .collect::<Vec<_>>()
        );
        let (h, body) = &out[1];
        assert_eq!((h.ty, h.flags, h.stream), (DATA, END_STREAM, 1));
        assert_eq!(body[0], 0);
        assert_eq!(
            PutRequest::decode(&body[5..]).unwrap(),
            put_req(),
            "the message follows its 5-byte prefix"
        );
        // The second request's block only refers to the table: one byte per field.
        let slot2 = st.start(PUT, &put_req());
        let out = written(&mut st);
        assert_eq!(out[0].0.stream, 3);
        assert_eq!(out[0].1.len(), 6);
        fields.clear();
        d.decode(&out[0].1, |n, v| fields.push((n.to_vec(), v.to_vec())))
            .unwrap();
        assert_eq!(fields[2].1, PUT.as_bytes());
        assert!(outcome(&mut st, slot).is_none());
        assert!(outcome(&mut st, slot2).is_none());
    }

    #[test]
    fn a_response_split_anywhere_completes_the_call() {
        let msg = put_resp(42);
        // Two responses: the second one's head uses the table entries the first one added.
        let wire = [response(1, &msg), response(3, &msg)].concat();
        for cut in 0..=wire.len() {
            let mut st = settled(&[]);
            let a = st.start(PUT, &put_req());
            let b = st.start(PUT, &put_req());
            let mut buf = wire[..cut].to_vec();
            let used = st.on_bytes(&buf);
            buf.drain(..used);
            buf.extend_from_slice(&wire[cut..]);
            assert_eq!(st.on_bytes(&buf), buf.len(), "cut at {cut}");
            for slot in [a, b] {
                let got = outcome(&mut st, slot).expect("call ended").unwrap();
                assert_eq!(
                    PutResponse::decode(got).unwrap().header.unwrap().revision,
                    42
                );
            }
            assert!(st.by_stream.is_empty());
            assert_eq!(st.open, 0);
        }
    }

    #[test]
    fn trailers_only_errors_keep_code_and_message() {
        let mut st = settled(&[]);
        let slot = st.start(PUT, &put_req());
        let mut block = vec![0x88, 0x40];
        encode_int(&mut block, 0, 7, 11);
        block.extend_from_slice(b"grpc-status");
        encode_int(&mut block, 0, 7, 1);
        block.extend_from_slice(b"9");
        let msg = b"etcdserver: mvcc%3A required revision has been compacted";
        block.push(0x00);
        encode_int(&mut block, 0, 7, 12);
        block.extend_from_slice(b"grpc-message");
        encode_int(&mut block, 0, 7, msg.len());
        block.extend_from_slice(msg);
        st.on_bytes(&frame(HEADERS, END_HEADERS | END_STREAM, 1, &block));
        let e = outcome(&mut st, slot).unwrap().unwrap_err();
        assert_eq!(e.code(), Code::FailedPrecondition);
        assert_eq!(
            e.message(),
            "etcdserver: mvcc: required revision has been compacted"
        );
    }

    #[test]
    fn rst_stream_and_goaway_fail_calls_by_kind() {
        let mut st = settled(&[]);
        let a = st.start(PUT, &put_req());
        let b = st.start(PUT, &put_req());
        let c = st.start(PUT, &put_req());
        written(&mut st);
        // Stream 1 refused: Unavailable; the others are untouched.
        st.on_bytes(&frame(RST_STREAM, 0, 1, &7u32.to_be_bytes()));
        let e = outcome(&mut st, a).unwrap().unwrap_err();
        assert_eq!(super::super::status_kind(&e), "Unavailable");
        assert!(outcome(&mut st, b).is_none());
        // GOAWAY letting stream 3 finish: stream 5 and every later call fail.
        let mut p = 3u32.to_be_bytes().to_vec();
        p.extend_from_slice(&0u32.to_be_bytes());
        p.extend_from_slice(b"shutting down");
        st.on_bytes(&frame(GOAWAY, 0, 0, &p));
        let e = outcome(&mut st, c).unwrap().unwrap_err();
        assert_eq!(e.code(), Code::Unavailable);
        assert!(e.message().contains("shutting down"), "{e}");
        assert!(outcome(&mut st, b).is_none());
        let d = st.start(PUT, &put_req());
        assert_eq!(
            outcome(&mut st, d).unwrap().unwrap_err().code(),
            Code::Unavailable
        );
        st.on_bytes(&response(3, &put_resp(7)));
        assert!(outcome(&mut st, b).unwrap().is_ok());
        // Other reset codes map like gRPC does.
        assert_eq!(rst_code(0x8), Code::Cancelled);
        assert_eq!(rst_code(0xb), Code::ResourceExhausted);
        assert_eq!(rst_code(0x2), Code::Internal);
    }

    #[test]
    fn an_http_error_without_grpc_status_maps_and_resets() {
        let mut st = settled(&[]);
        let slot = st.start(PUT, &put_req());
        written(&mut st);
        // `:status 503` as a literal with the static name :status (index 8).
        st.on_bytes(&frame(
            HEADERS,
            END_HEADERS,
            1,
            &[0x08, 3, b'5', b'0', b'3'],
        ));
        let e = outcome(&mut st, slot).unwrap().unwrap_err();
        assert_eq!(e.code(), Code::Unavailable);
        let out = written(&mut st);
        assert_eq!((out[0].0.ty, out[0].0.stream), (RST_STREAM, 1));
        assert_eq!(http_code(404), Code::Unimplemented);
        assert_eq!(http_code(418), Code::Unknown);
    }

    #[test]
    fn stream_limit_queues_calls() {
        let mut st = settled(&[(MAX_CONCURRENT_STREAMS, 1)]);
        let a = st.start(PUT, &put_req());
        let b = st.start(PUT, &put_req());
        let out = written(&mut st);
        assert_eq!(out.len(), 2, "only the first call went out");
        st.on_bytes(&response(1, &put_resp(1)));
        assert!(outcome(&mut st, a).unwrap().is_ok());
        let out = written(&mut st);
        assert_eq!(
            out.iter()
                .map(|(h, _)| (h.ty, h.stream))
                .collect::<Vec<_>>(),
            [(HEADERS, 3), (DATA, 3)]
        );
        st.on_bytes(&response(3, &put_resp(2)));
        assert!(outcome(&mut st, b).unwrap().is_ok());
    }

    #[test]
    fn request_bodies_wait_for_send_window() {
        // A stream window of 10 bytes: the 5 + 12 byte body goes out as 10 + 7.
        let mut st = settled(&[(INITIAL_WINDOW_SIZE, 10)]);
        let slot = st.start(PUT, &put_req());
        let out = written(&mut st);
        assert_eq!(
            out.iter()
                .map(|(h, _)| (h.ty, h.flags, h.len))
                .collect::<Vec<_>>(),
            [(HEADERS, END_HEADERS, out[0].0.len), (DATA, 0, 10)]
        );
        st.on_bytes(&frame(WINDOW_UPDATE, 0, 1, &100u32.to_be_bytes()));
        let out = written(&mut st);
        assert_eq!(
            out.iter()
                .map(|(h, _)| (h.ty, h.flags, h.len))
                .collect::<Vec<_>>(),
            [(DATA, END_STREAM, 7)]
        );
        st.on_bytes(&response(1, &put_resp(1)));
        assert!(outcome(&mut st, slot).unwrap().is_ok());
    }

    #[test]
    fn pings_are_acked_and_receive_windows_refilled() {
        let mut st = settled(&[]);
        st.on_bytes(&frame(PING, 0, 0, b"12345678"));
        let out = written(&mut st);
        assert_eq!(
            out,
            [(
                FrameHead {
                    len: 8,
                    ty: PING,
                    flags: ACK,
                    stream: 0
                },
                b"12345678".to_vec()
            )]
        );
        // DATA on an unknown (cancelled) stream still counts against the connection window.
        let chunk = vec![0u8; DEFAULT_MAX_FRAME];
        let n = (CONNECTION_WINDOW / 2) as usize / DEFAULT_MAX_FRAME;
        for _ in 0..n {
            st.on_bytes(&frame(DATA, 0, 99, &chunk));
        }
        let out = written(&mut st);
        assert_eq!(out.len(), 1);
        assert_eq!((out[0].0.ty, out[0].0.stream), (WINDOW_UPDATE, 0));
        assert_eq!(be32(&out[0].1).unwrap(), CONNECTION_WINDOW / 2);
    }

    #[test]
    fn protocol_errors_fail_everything() {
        let mut st = settled(&[]);
        let a = st.start(PUT, &put_req());
        st.on_bytes(&frame(SETTINGS, 0, 0, &[0, 1, 2]));
        assert_eq!(
            outcome(&mut st, a).unwrap().unwrap_err().code(),
            Code::Internal
        );
        let b = st.start(PUT, &put_req());
        assert!(outcome(&mut st, b).unwrap().is_err());
    }

    #[test]
    fn caller_going_away_resets_the_stream() {
        let mut st = settled(&[]);
        let a = st.start(PUT, &put_req());
        written(&mut st);
        st.abandon(a);
        let out = written(&mut st);
        assert_eq!((out[0].0.ty, out[0].0.stream), (RST_STREAM, 1));
        // A late response for it is ignored, and the slot is reused.
        assert_eq!(
            st.on_bytes(&response(1, &put_resp(1))),
            response(1, &put_resp(1)).len()
        );
        let b = st.start(PUT, &put_req());
        assert_eq!(a, b);
        assert!(outcome(&mut st, b).is_none());
    }
}

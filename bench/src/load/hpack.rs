//! HPACK (RFC 7541), the HTTP/2 header compression, as far as a gRPC client needs it: a full
//! decoder (static and dynamic table, Huffman, table size updates) for the server's response
//! headers and trailers, and a request encoder whose header blocks shrink to a few index bytes
//! once the first request has put the constant fields into the server's dynamic table.
//!
//! Header block representations (first byte of each field, RFC 7541 §6):
//!
//! ```text
//! 1xxxxxxx              indexed field, index in a 7-bit prefix integer
//! 01xxxxxx              literal with incremental indexing, name index in 6 bits (0 = literal name)
//! 001xxxxx              dynamic table size update, new size in 5 bits
//! 0001xxxx              literal never indexed, name index in 4 bits
//! 0000xxxx              literal without indexing, name index in 4 bits
//! string literal:       H bit (Huffman) + length in a 7-bit prefix integer, then the bytes
//! ```
//!
//! Indices 1–61 are the static table, 62 and up the dynamic table, newest entry first.
//! Worked example: after inserting `te: trailers` and then `:authority: h:1`, index 62 is
//! `:authority: h:1` and 63 is `te: trailers`; inserting one more entry moves both up by one.

use std::collections::VecDeque;
use std::sync::OnceLock;

/// A malformed header block (the connection cannot continue: the decoder's table is unknown).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HpackError(pub &'static str);

impl std::fmt::Display for HpackError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HPACK: {}", self.0)
    }
}

/// Bytes an entry counts against a table's size: name + value + 32 (RFC 7541 §4.1).
const ENTRY_OVERHEAD: usize = 32;

/// The static table (RFC 7541 Appendix A); index i is `STATIC[i - 1]`.
const STATIC: [(&str, &str); 61] = [
    (":authority", ""),
    (":method", "GET"),
    (":method", "POST"),
    (":path", "/"),
    (":path", "/index.html"),
    (":scheme", "http"),
    (":scheme", "https"),
    (":status", "200"),
    (":status", "204"),
    (":status", "206"),
    (":status", "304"),
    (":status", "400"),
    (":status", "404"),
    (":status", "500"),
    ("accept-charset", ""),
    ("accept-encoding", "gzip, deflate"),
    ("accept-language", ""),
    ("accept-ranges", ""),
    ("accept", ""),
    ("access-control-allow-origin", ""),
    ("age", ""),
    ("allow", ""),
    ("authorization", ""),
    ("cache-control", ""),
    ("content-disposition", ""),
    ("content-encoding", ""),
    ("content-language", ""),
    ("content-length", ""),
    ("content-location", ""),
    ("content-range", ""),
    ("content-type", ""),
    ("cookie", ""),
    ("date", ""),
    ("etag", ""),
    ("expect", ""),
    ("expires", ""),
    ("from", ""),
    ("host", ""),
    ("if-match", ""),
    ("if-modified-since", ""),
    ("if-none-match", ""),
    ("if-range", ""),
    ("if-unmodified-since", ""),
    ("last-modified", ""),
    ("link", ""),
    ("location", ""),
    ("max-forwards", ""),
    ("proxy-authenticate", ""),
    ("proxy-authorization", ""),
    ("range", ""),
    ("referer", ""),
    ("refresh", ""),
    ("retry-after", ""),
    ("server", ""),
    ("set-cookie", ""),
    ("strict-transport-security", ""),
    ("transfer-encoding", ""),
    ("user-agent", ""),
    ("vary", ""),
    ("via", ""),
    ("www-authenticate", ""),
];

/// Huffman code length in bits of each symbol 0..=255, then EOS (RFC 7541 Appendix B).
///
/// The code is canonical: within one length, codes are consecutive in symbol order, and the
/// first code of length L+1 is (last code of length L + 1) << 1. So the lengths alone define
/// every code: the ten 5-bit symbols `0 1 2 a c e i o s t` are 00000..01001, and the first
/// 6-bit symbol (space) is (9 + 1) << 1 = 010100.
const CODE_LENGTHS: [u8; 257] = [
    13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 30, 28,
    28, 28, 28, 28, 28, 28, 28, 28, 6, 10, 10, 12, 13, 6, 8, 11, 10, 10, 8, 11, 8, 6, 6, 6, 5, 5,
    5, 6, 6, 6, 6, 6, 6, 6, 7, 8, 15, 6, 12, 10, 13, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7,
    7, 7, 7, 7, 7, 7, 7, 7, 8, 7, 8, 13, 19, 13, 14, 6, 15, 5, 6, 5, 6, 5, 6, 6, 6, 5, 7, 7, 6, 6,
    6, 5, 6, 7, 6, 5, 5, 6, 7, 7, 7, 7, 7, 15, 11, 14, 13, 28, 20, 22, 20, 20, 22, 22, 22, 23, 22,
    23, 23, 23, 23, 23, 24, 23, 24, 24, 22, 23, 24, 23, 23, 23, 23, 21, 22, 23, 22, 23, 23, 24, 22,
    21, 20, 22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23, 21, 21, 22, 21, 23, 22, 23, 23, 20,
    22, 22, 22, 23, 22, 22, 23, 26, 26, 20, 19, 22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25, 19,
    21, 26, 27, 27, 26, 27, 24, 21, 21, 26, 26, 28, 27, 27, 27, 20, 24, 20, 21, 22, 21, 21, 23, 22,
    22, 25, 25, 24, 24, 26, 23, 26, 27, 26, 26, 27, 27, 27, 27, 27, 28, 27, 27, 27, 27, 27, 26, 30,
];
const EOS: u16 = 256;
const MAX_CODE_LEN: usize = 30;

/// The canonical Huffman code laid out for decoding one length at a time.
struct Huffman {
    /// Code of each symbol (right-aligned in `CODE_LENGTHS[sym]` bits).
    codes: [u32; 257],
    /// Per length: the first code, how many codes, and where they start in `by_code`.
    first: [u32; MAX_CODE_LEN + 1],
    count: [u32; MAX_CODE_LEN + 1],
    start: [u16; MAX_CODE_LEN + 1],
    /// Symbols sorted by (length, symbol), i.e. by code.
    by_code: [u16; 257],
}

fn huffman() -> &'static Huffman {
    static H: OnceLock<Huffman> = OnceLock::new();
    H.get_or_init(|| {
        let mut h = Huffman {
            codes: [0; 257],
            first: [0; MAX_CODE_LEN + 1],
            count: [0; MAX_CODE_LEN + 1],
            start: [0; MAX_CODE_LEN + 1],
            by_code: [0; 257],
        };
        let mut n = 0usize;
        let mut code = 0u32;
        for len in 1..=MAX_CODE_LEN {
            h.first[len] = code;
            h.start[len] = n as u16;
            for sym in 0..257u16 {
                if CODE_LENGTHS[sym as usize] as usize == len {
                    h.codes[sym as usize] = code;
                    h.by_code[n] = sym;
                    n += 1;
                    code += 1;
                }
            }
            h.count[len] = n as u32 - u32::from(h.start[len]);
            code <<= 1;
        }
        h
    })
}

/// Appends the Huffman encoding of `s` to `out` (padded with the EOS prefix, all ones). Only
/// the tests need it: requests are sent without Huffman.
#[cfg(test)]
pub fn huffman_encode(s: &[u8], out: &mut Vec<u8>) {
    let h = huffman();
    let (mut acc, mut bits) = (0u64, 0u32);
    for &b in s {
        let len = u32::from(CODE_LENGTHS[b as usize]);
        acc = (acc << len) | u64::from(h.codes[b as usize]);
        bits += len;
        while bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    if bits > 0 {
        let pad = 8 - bits;
        out.push(((acc << pad) | ((1 << pad) - 1)) as u8);
    }
}

/// Appends the decoding of the Huffman string `s` to `out`.
pub fn huffman_decode(s: &[u8], out: &mut Vec<u8>) -> Result<(), HpackError> {
    let h = huffman();
    let (mut code, mut len) = (0u32, 0usize);
    for &byte in s {
        for shift in (0..8).rev() {
            code = (code << 1) | u32::from((byte >> shift) & 1);
            len += 1;
            let idx = code.wrapping_sub(h.first[len]);
            if code >= h.first[len] && idx < h.count[len] {
                let sym = h.by_code[h.start[len] as usize + idx as usize];
                if sym == EOS {
                    return Err(HpackError("EOS symbol inside a Huffman string"));
                }
                out.push(sym as u8);
                code = 0;
                len = 0;
            } else if len == MAX_CODE_LEN {
                return Err(HpackError("invalid Huffman code"));
            }
        }
    }
    // The padding is a prefix of EOS (all ones) shorter than a byte.
    if len > 7 || code != (1u32 << len) - 1 {
        return Err(HpackError("bad Huffman padding"));
    }
    Ok(())
}

/// Appends an integer with an `n`-bit prefix; `flags` are the first byte's bits above it.
pub fn encode_int(out: &mut Vec<u8>, flags: u8, n: u32, mut v: usize) {
    let max = (1usize << n) - 1;
    if v < max {
        out.push(flags | v as u8);
        return;
    }
    out.push(flags | max as u8);
    v -= max;
    while v >= 128 {
        out.push((v & 0x7f) as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Reads an integer with an `n`-bit prefix at `*pos`, advancing it.
pub fn decode_int(b: &[u8], pos: &mut usize, n: u32) -> Result<usize, HpackError> {
    let max = (1usize << n) - 1;
    let first = *b.get(*pos).ok_or(HpackError("truncated integer"))?;
    *pos += 1;
    let mut v = usize::from(first) & max;
    if v < max {
        return Ok(v);
    }
    let mut shift = 0;
    loop {
        let c = *b.get(*pos).ok_or(HpackError("truncated integer"))?;
        *pos += 1;
        // 28 bits of continuation are far beyond any valid length or index here.
        if shift > 28 {
            return Err(HpackError("integer too large"));
        }
        v += usize::from(c & 0x7f) << shift;
        shift += 7;
        if c & 0x80 == 0 {
            return Ok(v);
        }
    }
}

/// Reads a string literal at `*pos` into `out` (cleared first).
fn decode_string(b: &[u8], pos: &mut usize, out: &mut Vec<u8>) -> Result<(), HpackError> {
    out.clear();
    let huff = b.get(*pos).ok_or(HpackError("truncated string"))? & 0x80 != 0;
    let len = decode_int(b, pos, 7)?;
    let s = b
        .get(*pos..*pos + len)
        .ok_or(HpackError("string runs past the header block"))?;
    *pos += len;
    if huff {
        huffman_decode(s, out)
    } else {
        out.extend_from_slice(s);
        Ok(())
    }
}

/// The dynamic table: newest entry at the front.
#[derive(Debug, Default)]
struct DynTable {
    entries: VecDeque<(Vec<u8>, Vec<u8>)>,
    size: usize,
    max: usize,
}

impl DynTable {
    fn evict_to(&mut self, max: usize) {
        while self.size > max {
            let (n, v) = self.entries.pop_back().expect("size > 0 means entries");
            self.size -= n.len() + v.len() + ENTRY_OVERHEAD;
        }
    }

    /// Adds an entry, evicting the oldest ones to make room; an entry larger than the whole
    /// table empties it and is not added (RFC 7541 §4.4).
    fn insert(&mut self, name: Vec<u8>, value: Vec<u8>) {
        let size = name.len() + value.len() + ENTRY_OVERHEAD;
        if size > self.max {
            self.evict_to(0);
            return;
        }
        self.evict_to(self.max - size);
        self.size += size;
        self.entries.push_front((name, value));
    }
}

/// Decodes the header blocks of one connection (they share the dynamic table, so every block
/// must go through here in the order received).
#[derive(Debug)]
pub struct Decoder {
    table: DynTable,
    /// Our SETTINGS_HEADER_TABLE_SIZE: the largest size a table size update may ask for.
    limit: usize,
    name: Vec<u8>,
    value: Vec<u8>,
}

impl Decoder {
    pub fn new(limit: usize) -> Self {
        Decoder {
            table: DynTable {
                max: limit,
                ..DynTable::default()
            },
            limit,
            name: Vec::new(),
            value: Vec::new(),
        }
    }

    /// Decodes `block`, calling `f(name, value)` for each field in order.
    pub fn decode(
        &mut self,
        block: &[u8],
        mut f: impl FnMut(&[u8], &[u8]),
    ) -> Result<(), HpackError> {
        let mut pos = 0;
        let mut fields = 0;
        while pos < block.len() {
            let b = block[pos];
            if b & 0x80 != 0 {
                let i = decode_int(block, &mut pos, 7)?;
                let (n, v) = self.get(i)?;
                f(n, v);
            } else if b & 0xe0 == 0x20 {
                if fields > 0 {
                    return Err(HpackError("table size update after a header field"));
                }
                let size = decode_int(block, &mut pos, 5)?;
                if size > self.limit {
                    return Err(HpackError(
                        "table size update above SETTINGS_HEADER_TABLE_SIZE",
                    ));
                }
                self.table.max = size;
                self.table.evict_to(size);
                continue;
            } else {
                // Literal: with incremental indexing (6-bit prefix) or without / never indexed
                // (4-bit prefix).
                let indexing = b & 0xc0 == 0x40;
                let i = decode_int(block, &mut pos, if indexing { 6 } else { 4 })?;
                let mut name = std::mem::take(&mut self.name);
                if i == 0 {
                    decode_string(block, &mut pos, &mut name)?;
                } else {
                    name.clear();
                    name.extend_from_slice(self.get(i)?.0);
                }
                let mut value = std::mem::take(&mut self.value);
                decode_string(block, &mut pos, &mut value)?;
                f(&name, &value);
                if indexing {
                    self.table.insert(name.clone(), value.clone());
                }
                self.name = name;
                self.value = value;
            }
            fields += 1;
        }
        Ok(())
    }

    fn get(&self, i: usize) -> Result<(&[u8], &[u8]), HpackError> {
        match i {
            0 => Err(HpackError("index 0")),
            1..=61 => {
                let (n, v) = STATIC[i - 1];
                Ok((n.as_bytes(), v.as_bytes()))
            }
            _ => self
                .table
                .entries
                .get(i - 62)
                .map(|(n, v)| (&n[..], &v[..]))
                .ok_or(HpackError("index beyond the dynamic table")),
        }
    }
}

/// Encodes request header blocks for one connection. Every field that is not in the static
/// table is sent once as a literal with incremental indexing and then as a one-byte index, as
/// long as all of them fit the peer's table; it never evicts, so an index stays valid until
/// another entry is added (which only shifts it, see the module example).
#[derive(Debug)]
pub struct Encoder {
    /// Entries we added, oldest first.
    inserted: Vec<(&'static str, String)>,
    used: usize,
    /// Our table's maximum size as the peer's decoder knows it: the default 4096 until the
    /// peer's SETTINGS lower it.
    max: usize,
    /// A table size update to send at the start of the next block.
    size_update: Option<usize>,
    /// Changes whenever a block encoded now would differ from one encoded before.
    epoch: u64,
}

/// A header field of a request: a static-table name index (0 = none) and the name and value.
#[derive(Clone, Copy, Debug)]
pub struct Field<'a> {
    pub static_name: usize,
    pub name: &'static str,
    pub value: &'a str,
}

impl Default for Encoder {
    fn default() -> Self {
        Encoder {
            inserted: Vec::new(),
            used: 0,
            max: 4096,
            size_update: None,
            epoch: 0,
        }
    }
}

impl Encoder {
    /// The peer's SETTINGS_HEADER_TABLE_SIZE is `max`. A smaller table than ours is announced
    /// with a size update at the start of the next block (RFC 7541 §4.2), and our oldest
    /// entries are dropped as the peer's decoder evicts them; a larger one is not used.
    pub fn set_peer_max(&mut self, max: usize) {
        if max >= self.max {
            return;
        }
        self.epoch += 1;
        self.max = max;
        self.size_update = Some(self.size_update.map_or(max, |s| s.min(max)));
        let mut evict = 0;
        while self.used > max {
            let (n, v) = &self.inserted[evict];
            self.used -= n.len() + v.len() + ENTRY_OVERHEAD;
            evict += 1;
        }
        self.inserted.drain(..evict);
    }

    /// A block encoded now can be sent again as long as this does not change.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Appends the block for `fields` to `out`.
    pub fn encode(&mut self, fields: &[Field<'_>], out: &mut Vec<u8>) {
        if let Some(s) = self.size_update.take() {
            self.epoch += 1;
            encode_int(out, 0x20, 5, s);
        }
        for f in fields {
            if let Some(i) = STATIC
                .iter()
                .position(|&(n, v)| n == f.name && v == f.value && !v.is_empty())
            {
                encode_int(out, 0x80, 7, i + 1);
                continue;
            }
            if let Some(pos) = self
                .inserted
                .iter()
                .position(|(n, v)| *n == f.name && v == f.value)
            {
                encode_int(out, 0x80, 7, 62 + self.inserted.len() - 1 - pos);
                continue;
            }
            let size = f.name.len() + f.value.len() + ENTRY_OVERHEAD;
            let indexing = self.used + size <= self.max;
            let (flags, bits) = if indexing { (0x40, 6) } else { (0x00, 4) };
            encode_int(out, flags, bits, f.static_name);
            if f.static_name == 0 {
                encode_int(out, 0, 7, f.name.len());
                out.extend_from_slice(f.name.as_bytes());
            }
            encode_int(out, 0, 7, f.value.len());
            out.extend_from_slice(f.value.as_bytes());
            if indexing {
                self.epoch += 1;
                self.used += size;
                self.inserted.push((f.name, f.value.to_owned()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    fn decode_all(d: &mut Decoder, block: &[u8]) -> Vec<(String, String)> {
        let mut out = Vec::new();
        d.decode(block, |n, v| {
            out.push((
                String::from_utf8(n.to_vec()).unwrap(),
                String::from_utf8(v.to_vec()).unwrap(),
            ))
        })
        .unwrap();
        out
    }

    fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
        p.iter()
            .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn integers_rfc_c1() {
        // C.1.1: 10 in a 5-bit prefix; C.1.2: 1337 in a 5-bit prefix; C.1.3: 42 in 8 bits.
        let mut out = Vec::new();
        encode_int(&mut out, 0, 5, 10);
        assert_eq!(out, [0x0a]);
        out.clear();
        encode_int(&mut out, 0, 5, 1337);
        assert_eq!(out, [0x1f, 0x9a, 0x0a]);
        let mut pos = 0;
        assert_eq!(decode_int(&out, &mut pos, 5).unwrap(), 1337);
        assert_eq!(pos, 3);
        out.clear();
        encode_int(&mut out, 0, 8, 42);
        assert_eq!(out, [42]);
        for v in [0, 14, 15, 16, 127, 128, 255, 16384, 1 << 24] {
            for n in [4, 5, 6, 7, 8] {
                out.clear();
                encode_int(&mut out, 0, n, v);
                let mut pos = 0;
                assert_eq!(decode_int(&out, &mut pos, n).unwrap(), v, "v={v} n={n}");
                assert_eq!(pos, out.len());
            }
        }
        let mut pos = 0;
        assert!(decode_int(&[0x1f, 0x9a], &mut pos, 5).is_err());
    }

    #[test]
    fn huffman_vectors_rfc_c4_c6() {
        for (text, code) in [
            ("www.example.com", "f1e3 c2e5 f23a 6ba0 ab90 f4ff"),
            ("no-cache", "a8eb 1064 9cbf"),
            ("custom-key", "25a8 49e9 5ba9 7d7f"),
            ("custom-value", "25a8 49e9 5bb8 e8b4 bf"),
            ("302", "6402"),
            ("private", "aec3 771a 4b"),
            (
                "Mon, 21 Oct 2013 20:13:21 GMT",
                "d07a be94 1054 d444 a820 0595 040b 8166 e082 a62d 1bff",
            ),
            (
                "https://www.example.com",
                "9d29 ad17 1863 c78f 0b97 c8e9 ae82 ae43 d3",
            ),
        ] {
            let code = hex(code);
            let mut enc = Vec::new();
            huffman_encode(text.as_bytes(), &mut enc);
            assert_eq!(enc, code, "{text}");
            let mut dec = Vec::new();
            huffman_decode(&code, &mut dec).unwrap();
            assert_eq!(dec, text.as_bytes());
        }
        // Every byte value round-trips.
        let all: Vec<u8> = (0..=255).collect();
        let mut enc = Vec::new();
        huffman_encode(&all, &mut enc);
        let mut dec = Vec::new();
        huffman_decode(&enc, &mut dec).unwrap();
        assert_eq!(dec, all);
    }

    #[test]
    fn huffman_rejects_bad_padding_and_eos() {
        let mut out = Vec::new();
        // '0' is 00000; padding with zeros instead of ones.
        assert!(huffman_decode(&[0b0000_0000], &mut out).is_err());
        // A whole byte of padding is too long.
        assert!(huffman_decode(&[0b0000_0111, 0xff], &mut out).is_err());
        // EOS (30 ones) encoded explicitly.
        assert!(huffman_decode(&[0xff, 0xff, 0xff, 0xff], &mut out).is_err());
    }

    #[test]
    fn requests_without_huffman_rfc_c3() {
        let mut d = Decoder::new(4096);
        let r1 = decode_all(
            &mut d,
            &hex("8286 8441 0f77 7777 2e65 7861 6d70 6c65 2e63 6f6d"),
        );
        assert_eq!(
            r1,
            pairs(&[
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "/"),
                (":authority", "www.example.com")
            ])
        );
        assert_eq!(d.table.size, 57);
        let r2 = decode_all(&mut d, &hex("8286 84be 5808 6e6f 2d63 6163 6865"));
        assert_eq!(r2[3], (":authority".into(), "www.example.com".into()));
        assert_eq!(r2[4], ("cache-control".into(), "no-cache".into()));
        assert_eq!(d.table.size, 110);
        let r3 = decode_all(
            &mut d,
            &hex("8287 85bf 400a 6375 7374 6f6d 2d6b 6579 0c63 7573 746f 6d2d 7661 6c75 65"),
        );
        assert_eq!(r3[1], (":scheme".into(), "https".into()));
        assert_eq!(r3[2], (":path".into(), "/index.html".into()));
        assert_eq!(r3[3], (":authority".into(), "www.example.com".into()));
        assert_eq!(r3[4], ("custom-key".into(), "custom-value".into()));
        assert_eq!(d.table.size, 164);
    }

    #[test]
    fn responses_with_huffman_and_eviction_rfc_c6() {
        // Table of 256 bytes: the third response evicts the oldest entries.
        let mut d = Decoder::new(256);
        let r1 = decode_all(
            &mut d,
            &hex(
                "4882 6402 5885 aec3 771a 4b61 96d0 7abe 9410 54d4 44a8 2005 9504 0b81 66e0 82a6 \
                 2d1b ff6e 919d 29ad 1718 63c7 8f0b 97c8 e9ae 82ae 43d3",
            ),
        );
        assert_eq!(
            r1,
            pairs(&[
                (":status", "302"),
                ("cache-control", "private"),
                ("date", "Mon, 21 Oct 2013 20:13:21 GMT"),
                ("location", "https://www.example.com"),
            ])
        );
        assert_eq!(d.table.size, 222);
        let r2 = decode_all(&mut d, &hex("4883 640e ff c1c0 bf"));
        assert_eq!(r2[0], (":status".into(), "307".into()));
        assert_eq!(r2[3], ("location".into(), "https://www.example.com".into()));
        assert_eq!(d.table.size, 222);
        let r3 = decode_all(
            &mut d,
            &hex(
                "88c1 6196 d07a be94 1054 d444 a820 0595 040b 8166 e084 a62d 1bff c05a 839b d9ab \
                 77ad 94e7 821d d7f2 e6c7 b335 dfdf cd5b 3960 d5af 2708 7f36 72c1 ab27 0fb5 291f \
                 9587 3160 65c0 03ed 4ee5 b106 3d50 07",
            ),
        );
        assert_eq!(r3[0], (":status".into(), "200".into()));
        assert_eq!(
            r3[2],
            ("date".into(), "Mon, 21 Oct 2013 20:13:22 GMT".into())
        );
        assert_eq!(r3[4], ("content-encoding".into(), "gzip".into()));
        assert_eq!(
            r3[5],
            (
                "set-cookie".into(),
                "foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1".into()
            )
        );
        assert_eq!(d.table.size, 215);
        assert_eq!(d.table.entries.len(), 3);
    }

    #[test]
    fn size_updates_are_checked() {
        let mut d = Decoder::new(100);
        // Update to 0 then an indexed static field: fine.
        assert_eq!(decode_all(&mut d, &[0x20, 0x88]).len(), 1);
        // Above our limit.
        assert!(d.decode(&[0x3f, 0x70], |_, _| {}).is_err());
        // After a field.
        assert!(d.decode(&[0x88, 0x20], |_, _| {}).is_err());
        // A dynamic index that does not exist.
        assert!(d.decode(&[0xbe], |_, _| {}).is_err());
    }

    #[test]
    fn encoder_indexes_then_refers() {
        let fields = |path: &'static str| {
            [
                Field {
                    static_name: 0,
                    name: ":method",
                    value: "POST",
                },
                Field {
                    static_name: 4,
                    name: ":path",
                    value: path,
                },
                Field {
                    static_name: 0,
                    name: "te",
                    value: "trailers",
                },
            ]
        };
        let mut e = Encoder::default();
        let mut d = Decoder::new(4096);
        let mut b1 = Vec::new();
        e.encode(&fields("/a.B/Put"), &mut b1);
        let mut b2 = Vec::new();
        e.encode(&fields("/a.B/Put"), &mut b2);
        // :method POST (static 3), :path (62+1), te (62).
        assert_eq!(b2, [0x83, 0xbf, 0xbe]);
        let mut b3 = Vec::new();
        e.encode(&fields("/a.B/Range"), &mut b3);
        let mut b4 = Vec::new();
        e.encode(&fields("/a.B/Put"), &mut b4);
        assert_eq!(b4, [0x83, 0xc0, 0xbf]);
        for (b, path) in [
            (&b1, "/a.B/Put"),
            (&b2, "/a.B/Put"),
            (&b3, "/a.B/Range"),
            (&b4, "/a.B/Put"),
        ] {
            assert_eq!(
                decode_all(&mut d, b),
                pairs(&[(":method", "POST"), (":path", path), ("te", "trailers")])
            );
        }
        // The peer shrinks its table: a size update, then everything is literal (nothing fits).
        e.set_peer_max(10);
        let mut b5 = Vec::new();
        e.encode(&fields("/a.B/Put"), &mut b5);
        assert_eq!(b5[0], 0x20 | 10);
        assert_eq!(
            decode_all(&mut d, &b5),
            pairs(&[
                (":method", "POST"),
                (":path", "/a.B/Put"),
                ("te", "trailers")
            ])
        );
        assert_eq!(d.table.size, 0);
        let mut b6 = Vec::new();
        e.encode(&fields("/a.B/Put"), &mut b6);
        assert_ne!(b6[0] & 0xe0, 0x20, "the size update is sent once");
        assert_eq!(decode_all(&mut d, &b6).len(), 3);
    }

    #[test]
    fn a_smaller_peer_table_evicts_our_oldest_entries() {
        let te = Field {
            static_name: 0,
            name: "te",
            value: "trailers",
        };
        let path = Field {
            static_name: 4,
            name: ":path",
            value: "/p",
        };
        let mut e = Encoder::default();
        let mut d = Decoder::new(4096);
        let mut b = Vec::new();
        e.encode(&[te, path], &mut b);
        decode_all(&mut d, &b);
        // Room for the newer entry (:path /p, 39 bytes) only.
        e.set_peer_max(40);
        b.clear();
        e.encode(&[te, path], &mut b);
        assert_eq!(b[0], 0x20 | 31);
        assert_eq!(b[1], 40 - 31);
        assert_eq!(b[b.len() - 1], 0xbe, ":path is still index 62");
        assert_eq!(
            decode_all(&mut d, &b),
            pairs(&[("te", "trailers"), (":path", "/p")])
        );
        assert_eq!(d.table.entries.len(), 1);
    }
}

//! Revisions and their encoding as backend keys of the `key` bucket.
//!
//! A revision is `{main, sub}`: `main` is the store revision a write request produced, `sub` the
//! position of the change inside that request (0 for the first put/delete of a txn, 1 for the
//! next, ...). Revisions order by `main`, then `sub`.

use std::fmt;

/// Length of an encoded revision without the tombstone marker.
pub const REV_BYTES_LEN: usize = MAIN_LEN + SEP_LEN + SUB_LEN;
/// Length of an encoded revision carrying the tombstone marker.
pub const MARKED_REV_BYTES_LEN: usize = REV_BYTES_LEN + MARK_LEN;
/// The byte between `main` and `sub` (etcd's layout; makes keys readable in dumps).
pub const REV_SEPARATOR: u8 = b'_';
/// The byte appended after a revision whose change deleted the key.
pub const TOMBSTONE_MARK: u8 = b't';

const MAIN_LEN: usize = size_of::<u64>();
const SEP_LEN: usize = 1;
const SUB_LEN: usize = size_of::<u64>();
const MARK_LEN: usize = 1;
const MAIN_OFFSET: usize = 0;
const SEP_OFFSET: usize = MAIN_OFFSET + MAIN_LEN;
const SUB_OFFSET: usize = SEP_OFFSET + SEP_LEN;
const MARK_OFFSET: usize = SUB_OFFSET + SUB_LEN;

/// One change's position in history.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Revision {
    /// The store revision (one per write request).
    pub main: i64,
    /// The change's index inside its write request.
    pub sub: i64,
}

impl Revision {
    pub const fn new(main: i64, sub: i64) -> Self {
        Revision { main, sub }
    }

    /// Encodes the revision as a `key` bucket key.
    // Format: { main: u64 BE, '_', sub: u64 BE } (+ 't' when `tombstone`)
    pub fn to_key(self, tombstone: bool) -> Vec<u8> {
        let mut out = Vec::with_capacity(MARKED_REV_BYTES_LEN);
        // Big-endian: the backend sorts keys bytewise and history must sort by revision.
        out.extend_from_slice(&(self.main as u64).to_be_bytes());
        out.push(REV_SEPARATOR);
        // Big-endian for the same reason: sub revisions of one main revision sort in order.
        out.extend_from_slice(&(self.sub as u64).to_be_bytes());
        if tombstone {
            out.push(TOMBSTONE_MARK);
        }
        out
    }

    /// `to_key(false)` without allocating.
    // Format: { main: u64 BE, '_', sub: u64 BE }
    pub fn to_key_array(self) -> [u8; REV_BYTES_LEN] {
        let mut out = [0u8; REV_BYTES_LEN];
        // Big-endian: bytewise order of keys must be revision order.
        out[MAIN_OFFSET..SEP_OFFSET].copy_from_slice(&(self.main as u64).to_be_bytes());
        out[SEP_OFFSET] = REV_SEPARATOR;
        out[SUB_OFFSET..MARK_OFFSET].copy_from_slice(&(self.sub as u64).to_be_bytes());
        out
    }

    /// The smallest key of main revision `main` (`{main, 0}`, unmarked): a scan bound.
    pub fn main_bound(main: i64) -> Vec<u8> {
        Revision::new(main, 0).to_key(false)
    }
}

impl fmt::Display for Revision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}_{}", self.main, self.sub)
    }
}

/// A decoded `key` bucket key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RevKey {
    pub rev: Revision,
    /// The change deleted the key.
    pub tombstone: bool,
}

/// Why a `key` bucket key did not decode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadRevKey(pub String);

impl RevKey {
    /// Decodes a `key` bucket key. Accepts exactly 17 bytes, or 18 ending in the tombstone mark.
    pub fn decode(key: &[u8]) -> Result<RevKey, BadRevKey> {
        let tombstone = match key.len() {
            REV_BYTES_LEN => false,
            MARKED_REV_BYTES_LEN if key[MARK_OFFSET] == TOMBSTONE_MARK => true,
            MARKED_REV_BYTES_LEN => {
                return Err(BadRevKey(format!(
                    "revision key has marker byte {:#04x}, expected 't'",
                    key[MARK_OFFSET]
                )));
            }
            n => {
                return Err(BadRevKey(format!(
                    "revision key is {n} bytes, expected {REV_BYTES_LEN} or {MARKED_REV_BYTES_LEN}"
                )));
            }
        };
        if key[SEP_OFFSET] != REV_SEPARATOR {
            return Err(BadRevKey(format!(
                "revision key has separator {:#04x}, expected '_'",
                key[SEP_OFFSET]
            )));
        }
        let main = u64::from_be_bytes(key[MAIN_OFFSET..SEP_OFFSET].try_into().expect("8 bytes"));
        let sub = u64::from_be_bytes(key[SUB_OFFSET..MARK_OFFSET].try_into().expect("8 bytes"));
        Ok(RevKey {
            rev: Revision::new(main as i64, sub as i64),
            tombstone,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoding_is_etcds_layout() {
        let k = Revision::new(5, 2).to_key(false);
        assert_eq!(k, b"\0\0\0\0\0\0\0\x05_\0\0\0\0\0\0\0\x02".to_vec());
        assert_eq!(Revision::new(5, 2).to_key_array().to_vec(), k);
        let t = Revision::new(5, 2).to_key(true);
        assert_eq!(t.len(), 18);
        assert_eq!(t[17], b't');
        assert_eq!(
            RevKey::decode(&t).unwrap(),
            RevKey {
                rev: Revision::new(5, 2),
                tombstone: true
            }
        );
        assert!(!RevKey::decode(&k).unwrap().tombstone);
    }

    #[test]
    fn byte_order_is_revision_order() {
        let revs = [
            Revision::new(1, 0),
            Revision::new(1, 1),
            Revision::new(1, 256),
            Revision::new(2, 0),
            Revision::new(256, 0),
            Revision::new(1 << 40, 3),
        ];
        for w in revs.windows(2) {
            assert!(w[0] < w[1]);
            assert!(w[0].to_key(true) < w[1].to_key(false));
            assert!(w[0].to_key(false) < w[1].to_key(false));
        }
    }

    #[test]
    fn bad_keys_are_rejected() {
        assert!(RevKey::decode(b"short").is_err());
        let mut k = Revision::new(1, 1).to_key(true);
        k[17] = b'x';
        assert!(RevKey::decode(&k).is_err());
        let mut k = Revision::new(1, 1).to_key(false);
        k[8] = b'-';
        assert!(RevKey::decode(&k).is_err());
    }
}

//! Server-chosen lease IDs.
//!
//! etcd builds request and lease IDs from the member ID and a clock: the top 16 bits are the
//! low 16 bits of the member ID, the next 40 bits the start time in milliseconds, the low 8 bits
//! a counter (carrying into the time bits), and lease IDs clear the sign bit so they are
//! positive. The ID is chosen before the grant is proposed, so every member applies the same ID.

/// Generates unique positive lease IDs for one member.
#[derive(Debug)]
pub struct LeaseIdGen {
    prefix: u64,
    suffix: u64,
}

const TS_LEN: u32 = 5 * 8;
const CNT_LEN: u32 = 8;
const SUFFIX_LEN: u32 = TS_LEN + CNT_LEN;

impl LeaseIdGen {
    /// `now_ms` is the wall clock in milliseconds since the Unix epoch at member start.
    pub fn new(member_id: u64, now_ms: u64) -> Self {
        let prefix = (member_id & 0xffff) << SUFFIX_LEN;
        let unix_ms = now_ms & ((1 << TS_LEN) - 1);
        LeaseIdGen {
            prefix,
            suffix: unix_ms << CNT_LEN,
        }
    }

    /// The next ID (positive, never 0).
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> i64 {
        loop {
            self.suffix = (self.suffix + 1) & ((1 << SUFFIX_LEN) - 1);
            let id = ((self.prefix | self.suffix) & ((1 << 63) - 1)) as i64;
            if id != 0 {
                return id;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_positive_and_carry_the_member() {
        let mut g = LeaseIdGen::new(0x2e12_59d4_15f2_a040, 1_700_000_000_000);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..1000 {
            let id = g.next();
            assert!(id > 0);
            assert_eq!((id as u64) >> SUFFIX_LEN, 0xa040 & 0x7fff);
            assert!(seen.insert(id));
        }
    }
}

//! An in-memory implementation of the storage contract for tests and benches: one `BTreeMap`
//! per bucket, a committed copy to simulate crashes, and cheap snapshots.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Arc;

use crate::storage::{BatchWrite, Bucket, KvRead, StorageResult};

type Map = BTreeMap<Vec<u8>, Vec<u8>>;

/// The in-memory backend. `crash()` returns it to the state of the last `commit()`.
#[derive(Clone, Debug, Default)]
pub struct MemStorage {
    live: BTreeMap<Bucket, Map>,
    committed: Arc<BTreeMap<Bucket, Map>>,
    commits: u64,
}

/// A stable view of a `MemStorage` (a copy of its maps).
#[derive(Clone, Debug)]
pub struct MemSnapshot {
    maps: Arc<BTreeMap<Bucket, Map>>,
}

fn scan_map(
    map: Option<&Map>,
    start: &[u8],
    end: &[u8],
    visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
) {
    let Some(map) = map else { return };
    let upper = if end.is_empty() {
        Bound::Unbounded
    } else if end <= start {
        return;
    } else {
        Bound::Excluded(end)
    };
    for (k, v) in map.range::<[u8], _>((Bound::Included(start), upper)) {
        if !visit(k, v) {
            break;
        }
    }
}

impl MemStorage {
    pub fn new() -> Self {
        Self::default()
    }

    /// A stable snapshot of everything written so far.
    pub fn snapshot(&self) -> MemSnapshot {
        MemSnapshot {
            maps: Arc::new(self.live.clone()),
        }
    }

    /// Forgets every write after the last commit, as a crash would.
    pub fn crash(&mut self) {
        self.live = (*self.committed).clone();
    }

    /// How many commits happened.
    pub fn commits(&self) -> u64 {
        self.commits
    }

    /// Number of entries in `bucket` (applied state).
    pub fn len(&self, bucket: Bucket) -> usize {
        self.live.get(&bucket).map_or(0, BTreeMap::len)
    }

    pub fn is_empty(&self) -> bool {
        self.live.values().all(BTreeMap::is_empty)
    }
}

impl KvRead for MemStorage {
    fn get(&self, bucket: Bucket, key: &[u8]) -> StorageResult<Option<Vec<u8>>> {
        Ok(self.live.get(&bucket).and_then(|m| m.get(key)).cloned())
    }

    fn scan(
        &self,
        bucket: Bucket,
        start: &[u8],
        end: &[u8],
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> StorageResult<()> {
        scan_map(self.live.get(&bucket), start, end, visit);
        Ok(())
    }
}

impl KvRead for MemSnapshot {
    fn get(&self, bucket: Bucket, key: &[u8]) -> StorageResult<Option<Vec<u8>>> {
        Ok(self.maps.get(&bucket).and_then(|m| m.get(key)).cloned())
    }

    fn scan(
        &self,
        bucket: Bucket,
        start: &[u8],
        end: &[u8],
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> StorageResult<()> {
        scan_map(self.maps.get(&bucket), start, end, visit);
        Ok(())
    }
}

impl BatchWrite for MemStorage {
    fn put(&mut self, bucket: Bucket, key: &[u8], value: &[u8]) -> StorageResult<()> {
        self.live
            .entry(bucket)
            .or_default()
            .insert(key.to_vec(), value.to_vec());
        Ok(())
    }

    fn delete(&mut self, bucket: Bucket, key: &[u8]) -> StorageResult<()> {
        if let Some(m) = self.live.get_mut(&bucket) {
            m.remove(key);
        }
        Ok(())
    }

    fn commit(&mut self) -> StorageResult<()> {
        self.committed = Arc::new(self.live.clone());
        self.commits += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshots_are_stable_and_crash_drops_uncommitted() {
        let mut s = MemStorage::new();
        s.put(Bucket::Key, b"a", b"1").unwrap();
        s.commit().unwrap();
        let snap = s.snapshot();
        s.put(Bucket::Key, b"b", b"2").unwrap();
        assert_eq!(snap.get(Bucket::Key, b"b").unwrap(), None);
        assert_eq!(s.get(Bucket::Key, b"b").unwrap(), Some(b"2".to_vec()));
        let mut seen = Vec::new();
        s.scan(Bucket::Key, b"", b"", &mut |k, _| {
            seen.push(k.to_vec());
            true
        })
        .unwrap();
        assert_eq!(seen, vec![b"a".to_vec(), b"b".to_vec()]);
        s.crash();
        assert_eq!(s.get(Bucket::Key, b"b").unwrap(), None);
        assert_eq!(s.get(Bucket::Key, b"a").unwrap(), Some(b"1".to_vec()));
    }
}

//! The WAL as raft's [`LogSink`], and the WAL replay turned into a [`NodeConfig`].

use std::io;
use std::sync::Arc;

use raft::eraftpb::{Entry, EntryType, HardState};

use super::snap::SnapshotMeta;
use super::{LogSink, NodeConfig};
use crate::wal::{self, LogEntry, Record, Replay, SnapshotMark, Wal};

/// raft-rs entry type ↔ the WAL's number for it (format.md: 0 normal, 1 conf change, 2 v2).
fn entry_type_code(t: EntryType) -> u8 {
    match t {
        EntryType::EntryNormal => 0,
        EntryType::EntryConfChange => 1,
        EntryType::EntryConfChangeV2 => 2,
    }
}

fn entry_type_from_code(code: u8) -> Option<EntryType> {
    match code {
        0 => Some(EntryType::EntryNormal),
        1 => Some(EntryType::EntryConfChange),
        2 => Some(EntryType::EntryConfChangeV2),
        _ => None,
    }
}

impl LogSink for Arc<Wal> {
    fn persist(
        &self,
        entries: Vec<Entry>,
        hard_state: Option<HardState>,
        done: Box<dyn FnOnce(io::Result<()>) + Send>,
    ) {
        let mut records = Vec::with_capacity(entries.len() + 1);
        for e in entries {
            records.push(Record::Entry(LogEntry {
                index: e.index,
                term: e.term,
                entry_type: entry_type_code(e.get_entry_type()),
                data: e.data,
            }));
        }
        // After the entries: on replay, the HardState read last wins and never names a commit
        // index past entries that are not in the log.
        if let Some(hs) = hard_state {
            records.push(Record::HardState(wal::HardState {
                term: hs.term,
                vote: hs.vote,
                commit: hs.commit,
            }));
        }
        // When the WAL is idle the raft core thread writes and fdatasyncs this batch itself and
        // `done` runs before `append_inline` returns (no thread hand-off); when a flush is in
        // flight it queues and returns. `done` only sends to the core's unbounded channel, so
        // running it on the core thread cannot deadlock.
        self.append_inline(records, move |r| {
            done(r.map(|_| ()).map_err(io::Error::other))
        });
    }

    fn persist_snapshot_mark(
        &self,
        index: u64,
        term: u64,
        done: Box<dyn FnOnce(io::Result<()>) + Send>,
    ) {
        self.append(
            vec![Record::Snapshot(SnapshotMark { index, term })],
            move |r| done(r.map(|_| ()).map_err(io::Error::other)),
        );
    }

    fn purge_below(&self, index: u64, keep: usize) -> io::Result<()> {
        if keep == 0 {
            return Ok(());
        }
        // First indexes of the segments, oldest first (names: `{seq:016x}-{index:016x}.wal`).
        let firsts: Vec<u64> = self
            .segment_paths()
            .iter()
            .filter_map(|p| {
                let name = p.file_name()?.to_str()?;
                let idx = name.strip_suffix(".wal")?.split_once('-')?.1;
                u64::from_str_radix(idx, 16).ok()
            })
            .collect();
        // Segment i holds only entries below firsts[i + 1]: those below `index` may go, but
        // no more than leaves `keep` segments.
        let covered = (0..firsts.len().saturating_sub(1))
            .take_while(|&i| firsts[i + 1] <= index)
            .count();
        let remove = covered.min(firsts.len().saturating_sub(keep));
        if remove == 0 {
            return Ok(());
        }
        let n = Wal::purge_below(self, firsts[remove]).map_err(io::Error::other)?;
        if n > 0 {
            tracing::info!(removed = n, below = index, "WAL segments purged");
        }
        Ok(())
    }
}

/// Starts the restored log after `snap`, the newest valid snapshot metadata file (`None`: no
/// snapshot, the log must start at index 1). Entries at or below the snapshot are dropped; the
/// rest must follow it without a gap, or the error names the missing range.
pub fn restore_from_snapshot(
    cfg: &mut NodeConfig,
    snap: Option<&SnapshotMeta>,
) -> Result<(), String> {
    match snap {
        Some(m) => {
            cfg.snapshot_index = m.index;
            cfg.snapshot_term = m.term;
            cfg.conf_state = Some(m.conf_state.clone());
        }
        None => {
            cfg.snapshot_index = 0;
            cfg.snapshot_term = 0;
        }
    }
    let at = cfg.snapshot_index;
    cfg.entries.retain(|e| e.index > at);
    if let Some(first) = cfg.entries.first()
        && first.index != at + 1
    {
        return Err(format!(
            "the WAL's entries start at index {} but the newest usable snapshot is at index {at}: \
             entries {}..={} are missing (purged below a snapshot whose metadata file is gone \
             or corrupt?)",
            first.index,
            at + 1,
            first.index - 1
        ));
    }
    Ok(())
}

/// Fills `cfg`'s restored state from a WAL replay. Fails on an entry type this build does not
/// know (a newer format), naming the index.
pub fn apply_replay(cfg: &mut NodeConfig, replay: &Replay) -> Result<(), String> {
    if let Some(hs) = replay.hard_state {
        cfg.hard_state = HardState {
            term: hs.term,
            vote: hs.vote,
            commit: hs.commit,
            ..Default::default()
        };
    }
    if let Some(snap) = replay.snapshot {
        cfg.snapshot_index = snap.index;
        cfg.snapshot_term = snap.term;
    }
    cfg.entries = replay
        .entries
        .iter()
        .map(|e| {
            let t = entry_type_from_code(e.entry_type).ok_or_else(|| {
                format!(
                    "WAL entry {} has unknown entry type {}",
                    e.index, e.entry_type
                )
            })?;
            let mut out = Entry {
                index: e.index,
                term: e.term,
                ..Default::default()
            };
            out.set_entry_type(t);
            out.data = e.data.clone();
            Ok(out)
        })
        .collect::<Result<_, String>>()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::FaultVfs;
    use crate::raft_node::{RaftNode, StateMachine};
    use crate::wal::WalOptions;
    use crate::{StdVfs, Vfs};
    use std::path::Path;
    use std::sync::mpsc;
    use std::time::Duration;

    struct Recorder(mpsc::Sender<(u64, Vec<u8>)>);

    impl StateMachine for Recorder {
        fn apply(&mut self, index: u64, _term: u64, data: &[u8]) {
            let _ = self.0.send((index, data.to_vec()));
        }
    }

    fn open(
        vfs: Arc<dyn Vfs>,
        dir: &Path,
        applied: u64,
    ) -> (RaftNode, mpsc::Receiver<(u64, Vec<u8>)>) {
        let opts = WalOptions {
            segment_size: 1 << 20,
            direct: false,
            ..WalOptions::default()
        };
        let (wal, replay) = Wal::open(vfs, dir, opts).unwrap();
        let mut cfg = NodeConfig {
            tick: Duration::from_millis(10),
            applied,
            ..NodeConfig::single(7)
        };
        apply_replay(&mut cfg, &replay).unwrap();
        let (tx, rx) = mpsc::channel();
        (
            RaftNode::start(cfg, Arc::new(wal), crate::raft_node::NoPeers, Recorder(tx)).unwrap(),
            rx,
        )
    }

    fn recv(rx: &mpsc::Receiver<(u64, Vec<u8>)>) -> (u64, Vec<u8>) {
        rx.recv_timeout(Duration::from_secs(10))
            .expect("applied within 10 s")
    }

    #[test]
    fn raft_over_the_wal_survives_restart_with_the_same_indexes() {
        let dir = tempfile::tempdir().unwrap();
        let vfs: Arc<dyn Vfs> = Arc::new(StdVfs::new());
        let (node, rx) = open(vfs.clone(), dir.path(), 0);
        for i in 0..50u8 {
            node.propose(vec![i], None);
        }
        let first: Vec<_> = (0..50).map(|_| recv(&rx)).collect();
        node.shutdown();
        drop(node);
        // Nothing was made durable by a state machine: every entry is applied again, identically.
        let (node, rx) = open(vfs, dir.path(), 0);
        let again: Vec<_> = (0..50).map(|_| recv(&rx)).collect();
        assert_eq!(first, again);
        node.propose(b"x".to_vec(), None);
        assert!(recv(&rx).0 > first[49].0);
        node.shutdown();
    }

    #[test]
    fn power_cut_keeps_every_applied_entry() {
        // An entry is applied only after the fdatasync covering it: after a power cut, all
        // applied entries come back.
        let vfs = FaultVfs::new();
        let dir = Path::new("/data/wal");
        let (node, rx) = open(Arc::new(vfs.clone()), dir, 0);
        for i in 0..30u8 {
            node.propose(vec![i], None);
        }
        let applied: Vec<_> = (0..30).map(|_| recv(&rx)).collect();
        vfs.power_cut();
        node.shutdown();
        drop(node);
        let image = vfs.crash_image(crate::io::CrashMode::LoseUnsynced);
        let (node, rx) = open(Arc::new(image), dir, 0);
        let replayed: Vec<_> = (0..30).map(|_| recv(&rx)).collect();
        assert_eq!(applied, replayed);
        node.shutdown();
    }

    #[test]
    fn purge_keeps_max_wals_segments_and_never_above_the_index() {
        let dir = tempfile::tempdir().unwrap();
        let opts = WalOptions {
            segment_size: 16 * 1024,
            direct: false,
            ..WalOptions::default()
        };
        let (wal, _) = Wal::open(Arc::new(StdVfs::new()), dir.path(), opts).unwrap();
        let wal = Arc::new(wal);
        for i in 1..=80u64 {
            wal.append_wait(vec![Record::Entry(LogEntry {
                index: i,
                term: 1,
                entry_type: 0,
                data: vec![7u8; 1000].into(),
            })])
            .unwrap();
        }
        let count = || wal.segment_paths().len();
        let total = count();
        assert!(total >= 5, "{total} segments");
        // --max-wals 0: keep everything.
        LogSink::purge_below(&wal, 80, 0).unwrap();
        assert_eq!(count(), total);
        // Only segments wholly below index 20 may go (about one of them).
        LogSink::purge_below(&wal, 20, 1).unwrap();
        let after_20 = count();
        assert!(
            after_20 < total && after_20 >= total - 2,
            "{total} -> {after_20}"
        );
        // Everything is covered, but 3 segments are kept.
        LogSink::purge_below(&wal, 80, 3).unwrap();
        assert_eq!(count(), 3);
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".wal"))
            .collect();
        assert_eq!(names.len(), 3, "{names:?}");
    }
}

//! The node's side of raft snapshots: opening the backend consistently with the newest
//! snapshot at startup, and installing a backend file received from the leader.
//!
//! A snapshot is the backend file; its metadata (`{term}-{index}.snap`) is written by the raft
//! glue. Invariants relied on here:
//! 1. A snapshot's index is at most the backend's durable consistent index when it is taken
//!    (the raft core snapshots at the index the last backend commit covered). So at startup a
//!    backend *behind* the newest snapshot means a received snapshot whose install was cut by
//!    a crash: its file `{index}.snap.db` is still there (it is renamed over `db` only after
//!    the metadata file is durable) and is installed before anything else opens.
//! 2. An install holds the store's write lock from closing the old backend to publishing the
//!    new store, so nobody sees a closed backend unless the install failed (then the node has
//!    failed and refuses every request).

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use prost::Message;
use ringkv_engine::pb::etcdserverpb::AlarmMember;
use ringkv_engine::{
    Backend, BackendOptions, BatchWriter, Bucket, KvRead, Lessor, META_CONSISTENT_INDEX, MvccStore,
    SnapshotMeta, Vfs,
};

use super::shared_writer::NodeBackend;
use super::{Inner, NodeOptions};

/// Entries kept in the in-memory raft log below a snapshot (etcd's `SnapshotCatchUpEntries`).
pub(crate) const SNAPSHOT_CATCH_UP_ENTRIES: u64 = 5_000;
/// Environment variable overriding [`SNAPSHOT_CATCH_UP_ENTRIES`], for tests only: a small
/// value makes a briefly stopped follower need a snapshot transfer to catch up.
pub(crate) const SNAPSHOT_CATCH_UP_ENV: &str = "RINGKV_SNAPSHOT_CATCH_UP";

/// The catch-up entries this node keeps: [`SNAPSHOT_CATCH_UP_ENV`] if set to a number, else
/// [`SNAPSHOT_CATCH_UP_ENTRIES`].
pub(crate) fn catch_up_entries() -> u64 {
    std::env::var(SNAPSHOT_CATCH_UP_ENV)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(SNAPSHOT_CATCH_UP_ENTRIES)
}

pub(crate) fn backend_options() -> BackendOptions {
    BackendOptions {
        // Invariant 1 of apply.rs: only the node commits (data + consistent index).
        batch_ops: usize::MAX,
        batch_interval: Duration::MAX,
        ..BackendOptions::default()
    }
}

pub(crate) fn open_backend(
    vfs: &Arc<dyn Vfs>,
    path: &Path,
) -> Result<(Backend, BatchWriter), String> {
    let backend = Backend::open(vfs.clone(), path, backend_options())
        .map_err(|e| format!("cannot open the backend: {e}"))?;
    let writer = backend
        .batch()
        .map_err(|e| format!("cannot open the backend: {e}"))?;
    Ok((backend, writer))
}

/// etcd's minimum lease TTL: 1.5 election timeouts, rounded up to seconds.
pub(crate) fn new_lessor(opts: &NodeOptions) -> Lessor {
    let min_ttl = ((opts.election_timeout.as_millis() as u64 * 3 / 2).div_ceil(1000)) as i64;
    Lessor::new(
        min_ttl.max(ringkv_engine::MIN_LEASE_TTL),
        ringkv_engine::DEFAULT_CHECKPOINT_INTERVAL,
    )
}

/// The committed consistent index of a backend file (0 for a new file).
pub(crate) fn consistent_index(backend: &Backend) -> Result<u64, String> {
    let v = backend
        .snapshot()
        .get(Bucket::Meta, META_CONSISTENT_INDEX)
        .map_err(|e| {
            format!(
                "reading the consistent index of {}: {e}",
                backend.path().display()
            )
        })?;
    match v {
        None => Ok(0),
        Some(b) => {
            let b: [u8; 8] = b.as_slice().try_into().map_err(|_| {
                format!(
                    "{}: consistent index is {} bytes, not 8",
                    backend.path().display(),
                    b.len()
                )
            })?;
            Ok(u64::from_be_bytes(b))
        }
    }
}

/// Checks a received backend file before it replaces ours: it opens, the consistency checker
/// finds no problem (named by file and offset), and its consistent index is at least the
/// snapshot's. Returns that index. The file is closed again.
pub(crate) fn check_received(
    vfs: &Arc<dyn Vfs>,
    path: &Path,
    snapshot_index: u64,
) -> Result<u64, String> {
    let backend = Backend::open(vfs.clone(), path, backend_options())
        .map_err(|e| format!("received snapshot {}: {e}", path.display()))?;
    let report = backend.check();
    if let Some(p) = report.problems.first() {
        let page_size = backend.stats().page_size;
        return Err(format!(
            "received snapshot {} is corrupt at offset {} (page {}): {} ({} problem(s))",
            path.display(),
            p.page.saturating_mul(page_size),
            p.page,
            p.reason,
            report.problems.len()
        ));
    }
    let ci = consistent_index(&backend)?;
    if ci < snapshot_index {
        return Err(format!(
            "received snapshot {} has consistent index {ci}, below the snapshot's index \
             {snapshot_index}",
            path.display()
        ));
    }
    Ok(ci)
}

/// Renames `src` over `dst` and syncs the directory: the swap is atomic and durable.
pub(crate) fn swap_in(vfs: &Arc<dyn Vfs>, src: &Path, dst: &Path) -> Result<(), String> {
    vfs.rename(src, dst)
        .map_err(|e| format!("renaming {} over {}: {e}", src.display(), dst.display()))?;
    let dir = dst.parent().unwrap_or(Path::new("."));
    vfs.sync_dir(dir)
        .map_err(|e| format!("syncing directory {}: {e}", dir.display()))
}

/// Reads the raised alarms from the backend's `alarm` bucket.
pub(crate) fn load_alarms(store: &MvccStore<NodeBackend>) -> Result<Vec<AlarmMember>, String> {
    let mut alarms = Vec::new();
    store
        .backend()
        .scan(Bucket::Alarm, b"", b"", &mut |k, _| {
            if let Ok(a) = AlarmMember::decode(k) {
                alarms.push(a);
            }
            true
        })
        .map_err(|e| format!("cannot read alarms: {e}"))?;
    Ok(alarms)
}

/// The backend copies being read (Maintenance.Snapshot streams, snapshot transfers to peers).
/// Each pins a commit of the open backend file, and with it the file's registration as open in
/// this process: an install must not reopen `db` before the last one is gone. An install bumps
/// `epoch`, which makes every older copy's next read fail, and waits for them to be dropped.
#[derive(Default)]
pub(crate) struct LiveCopies {
    count: parking_lot::Mutex<usize>,
    gone: parking_lot::Condvar,
    epoch: std::sync::atomic::AtomicU64,
}

/// How long an install waits for the copies of the old backend to end: their readers notice
/// at their next chunk, or when their client or peer times out (30 s for both).
const COPIES_END_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(40);

impl LiveCopies {
    /// Tracks `data` as a copy of the current backend.
    pub(crate) fn track(self: &Arc<Self>, data: ringkv_engine::CommittedCopy) -> TrackedCopy {
        *self.count.lock() += 1;
        TrackedCopy {
            data,
            epoch: self.epoch.load(Ordering::Acquire),
            live: self.clone(),
        }
    }

    /// Ends every copy of the current backend; true once none is left (false after
    /// [`COPIES_END_TIMEOUT`]).
    fn end_all(&self) -> bool {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        let deadline = std::time::Instant::now() + COPIES_END_TIMEOUT;
        let mut count = self.count.lock();
        while *count > 0 {
            if self.gone.wait_until(&mut count, deadline).timed_out() {
                return *count == 0;
            }
        }
        true
    }
}

/// A backend copy that fails its reads once an install replaced the backend it copies.
pub(crate) struct TrackedCopy {
    data: ringkv_engine::CommittedCopy,
    epoch: u64,
    live: Arc<LiveCopies>,
}

impl std::io::Read for TrackedCopy {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.live.epoch.load(Ordering::Acquire) != self.epoch {
            return Err(std::io::Error::other(
                "the backend was replaced by a snapshot install while it was being copied",
            ));
        }
        self.data.read(buf)
    }
}

impl Drop for TrackedCopy {
    fn drop(&mut self) {
        let mut count = self.live.count.lock();
        *count -= 1;
        self.live.gone.notify_all();
    }
}

impl Inner {
    /// Installs the backend file received for the snapshot `meta` (the raft apply thread
    /// calls this in apply order). Returns the new applied index: the file's consistent index.
    pub(crate) fn restore_snapshot(&self, meta: &SnapshotMeta) -> Result<u64, String> {
        let received = self.snap_dir.db_path(meta.index);
        // Checked before the store is locked: reads go on meanwhile.
        let ci = check_received(&self.vfs, &received, meta.index)?;
        let db_path = self.snap_dir.dir().join("db");
        let mut store = self.store.write();
        // Invariant 2: from here until the new store is in place, the lock is held.
        if !self.live_copies.end_all() {
            return Err(format!(
                "a copy of the backend (snapshot stream) is still being read after {} s; \
                 cannot replace the backend",
                COPIES_END_TIMEOUT.as_secs()
            ));
        }
        store.backend_mut().close();
        swap_in(&self.vfs, &received, &db_path)?;
        let (backend, writer) = open_backend(&self.vfs, &db_path)?;
        let mut fresh = MvccStore::open(NodeBackend::new(backend, writer), new_lessor(&self.opts))
            .map_err(|e| format!("cannot open the MVCC store of the installed snapshot: {e}"))?;
        // Watchers stay registered and catch up from the new store (housekeeping's next
        // `watch_sync`), from the revision each expects next.
        std::mem::swap(fresh.hub_mut(), store.hub_mut());
        fresh.hub_mut().resync_all();
        fresh.set_header_ids(self.ids);
        // The leader's file carries the leader's own IDs: this data directory keeps its own.
        ringkv_engine::BatchWrite::put(
            fresh.backend_mut(),
            ringkv_engine::Bucket::Cluster,
            super::cluster::IDS_KEY,
            &super::cluster::encode_ids(self.ids.member_id, self.ids.cluster_id),
        )
        .and_then(|()| {
            let ci = fresh.consistent_index();
            fresh.backend_mut().commit_all(ci)
        })
        .map_err(|e| format!("cannot record this member's IDs in the installed backend: {e}"))?;
        let members = super::membership::Membership::load(fresh.backend())
            .map_err(|e| format!("installed snapshot: {e}"))?;
        let alarms = load_alarms(&fresh)?;
        *store = fresh;
        *self.alarms.write() = alarms;
        // Lock order: `store` before `members`.
        *self.members.write() = members;
        self.revision
            .store(store.current_revision(), Ordering::Release);
        self.dirty.store(false, Ordering::Release);
        self.ops_since_commit.store(0, Ordering::Release);
        self.durable_index.store(ci, Ordering::Release);
        // A follower installs snapshots; its lessor is not primary (housekeeping promotes it
        // again should it lead).
        self.lease_primary.store(false, Ordering::Release);
        // Logged before readers can see the installed keys.
        tracing::info!(
            index = meta.index,
            consistent_index = ci,
            "installed the snapshot received from the leader"
        );
        drop(store);
        Ok(ci)
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::path::Path;
    use std::sync::Arc;

    use ringkv_engine::{Backend, BackendOptions, FaultVfs, Vfs};

    use super::LiveCopies;

    /// An install ends the copies of the backend it replaces (their next read fails) and waits
    /// until they are dropped; copies made afterwards read normally.
    #[test]
    fn an_install_ends_the_copies_of_the_old_backend_and_waits_for_them() {
        let vfs: Arc<dyn Vfs> = Arc::new(FaultVfs::new());
        let b = Backend::open(vfs, Path::new("/d/db"), BackendOptions::default()).unwrap();
        let live = Arc::new(LiveCopies::default());
        let mut copy = live.track(b.snapshot().committed_copy());
        let mut buf = [0u8; 100];
        assert!(copy.read(&mut buf).unwrap() > 0);
        let ender = {
            let live = live.clone();
            std::thread::spawn(move || live.end_all())
        };
        // The reader learns of the install at its next read after it began.
        let err = loop {
            match copy.read(&mut buf) {
                Err(e) => break e,
                Ok(n) => {
                    assert!(n <= buf.len());
                    std::thread::yield_now();
                }
            }
        };
        assert!(
            err.to_string().contains("replaced by a snapshot install"),
            "{err}"
        );
        assert!(!ender.is_finished() || *live.count.lock() == 0);
        drop(copy);
        assert!(ender.join().unwrap(), "the install saw the copy end");
        let mut again = live.track(b.snapshot().committed_copy());
        assert!(again.read(&mut buf).unwrap() > 0);
    }
}

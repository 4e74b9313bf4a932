//! The watch hub: watchers on keys and ranges, fed by the store's writes and by catch-up reads
//! of the backend (spec §4.8).
//!
//! Watchers live in one of three groups (etcd's design):
//! - **synced**: caught up; live events of each write are matched against them through a
//!   hash map (single keys) and an interval index (ranges), never a scan of all watchers;
//! - **unsynced**: behind (started in the past, or resumed after being slow); `sync` reads
//!   their missing history from the backend, at most `MAX_WATCHERS_PER_SYNC` watchers and
//!   `MAX_REVS_PER_SYNC_RESPONSE` revisions per response at a time;
//! - **victims**: a response could not be queued (the stream's channel was full). The write path
//!   never blocks on a slow client: the undelivered response is kept and retried by `sync`,
//!   and the watcher then catches up from the backend.
//!
//! Per watcher, responses are delivered in revision order with no gaps or duplicates:
//! `next_rev` is the smallest revision not yet delivered, and every path that sends events
//! advances it past them. Events of one revision (one txn) always travel in one response.
//!
//! Streams: each stream has its own watch IDs (auto IDs count up from 0) and one bounded
//! channel. Control responses (created, canceled, progress) are never dropped: if the
//! channel is full they wait in the stream's backlog, and no event is sent to the stream
//! before the backlog drained, which keeps "created before events" and request order.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};

use crossbeam_channel::TrySendError;
use prost::Message;

use super::key_index::TreeIndex;
use super::revision::{RevKey, Revision};
use super::store::HeaderIds;
use super::watch_index::{End, IntervalIndex};
use crate::pb::etcdserverpb::{self as pb, watch_create_request::FilterType};
use crate::pb::mvccpb::{self, event::EventType};
use crate::storage::{Bucket, KvRead};

/// Cancel reason for a create with a watch ID already used on the stream.
pub const CANCEL_REASON_DUPLICATE_ID: &str = "mvcc: duplicate watch ID provided on the WatchStream";
/// Cancel reason for a create whose `key >= range_end`.
pub const CANCEL_REASON_EMPTY_RANGE: &str = "mvcc: watcher range is empty";
/// Most unsynced watchers one `sync` call serves (etcd's `maxWatchersPerSync`).
pub const MAX_WATCHERS_PER_SYNC: usize = 512;
/// Most distinct revisions in one catch-up response (etcd's `watchBatchMaxRevs`).
pub const MAX_REVS_PER_SYNC_RESPONSE: usize = 1000;
/// Most main revisions one `sync` call reads from the backend.
pub const MAX_REVS_PER_SYNC_SCAN: i64 = 10_000;
/// Default `max-request-bytes`; fragmenting starts at this plus 512 KiB.
pub const DEFAULT_MAX_REQUEST_BYTES: usize = 1536 * 1024;

/// Identifies a watch stream in the hub.
pub type StreamId = u64;

/// Why a [`WatchSink`] did not take a response.
#[derive(Debug)]
pub enum SinkFull {
    /// The sink is at capacity: the response comes back and is retried later.
    Full(pb::WatchResponse),
    /// The receiving side is gone: the response is dropped (the stream's owner closes it).
    Closed,
}

/// Where a stream's responses go: a bounded, non-blocking queue. The hub calls `try_send`
/// with the store locked, so it must never block or call back into the store. Its capacity
/// is the slack a slow client gets before its watchers become victims.
///
/// Implemented for `crossbeam_channel::Sender` (threads) and by the node for its async
/// front end (a tokio channel read by the connection's task: no thread per watcher).
pub trait WatchSink: Send + Sync + 'static {
    fn try_send(&self, resp: pb::WatchResponse) -> Result<(), SinkFull>;
}

impl WatchSink for crossbeam_channel::Sender<pb::WatchResponse> {
    fn try_send(&self, resp: pb::WatchResponse) -> Result<(), SinkFull> {
        match crossbeam_channel::Sender::try_send(self, resp) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(r)) => Err(SinkFull::Full(r)),
            Err(TrySendError::Disconnected(_)) => Err(SinkFull::Closed),
        }
    }
}
type WatcherKey = u64;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Group {
    Synced,
    Unsynced,
    Victim,
}

#[derive(Debug)]
struct Watcher {
    stream: StreamId,
    watch_id: i64,
    key: Vec<u8>,
    /// `None` = the single key; `Some(End::Inf)` = every key ≥ `key`.
    end: Option<End>,
    /// Smallest revision not yet delivered.
    next_rev: i64,
    prev_kv: bool,
    no_put: bool,
    no_delete: bool,
    fragment: bool,
    group: Group,
    /// A victim's undelivered responses (in order) and the `next_rev` they lead to.
    pending: Option<(Vec<pb::WatchResponse>, i64)>,
}

impl Watcher {
    fn contains(&self, k: &[u8]) -> bool {
        match &self.end {
            None => k == self.key.as_slice(),
            Some(end) => {
                k >= self.key.as_slice()
                    && match end {
                        End::Key(e) => k < e.as_slice(),
                        End::Inf => true,
                    }
            }
        }
    }
}

struct Stream {
    sink: Box<dyn WatchSink>,
    backlog: VecDeque<pb::WatchResponse>,
    next_watch_id: i64,
    watchers: HashMap<i64, WatcherKey>,
    /// Progress-notify watchers: true = no events sent since the last tick.
    progress: HashMap<i64, bool>,
}

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stream")
            .field("backlog", &self.backlog.len())
            .field("next_watch_id", &self.next_watch_id)
            .field("watchers", &self.watchers)
            .finish_non_exhaustive()
    }
}

impl Stream {
    /// Queues a control response (never dropped; see the module doc).
    fn send_control(&mut self, resp: pb::WatchResponse) {
        if self.backlog.is_empty() {
            match self.sink.try_send(resp) {
                Ok(()) | Err(SinkFull::Closed) => {}
                Err(SinkFull::Full(r)) => self.backlog.push_back(r),
            }
        } else {
            self.backlog.push_back(resp);
        }
    }

    /// Moves backlog into the channel; true when the backlog is empty.
    fn flush(&mut self) -> bool {
        while let Some(r) = self.backlog.pop_front() {
            match self.sink.try_send(r) {
                Ok(()) | Err(SinkFull::Closed) => {}
                Err(SinkFull::Full(r)) => {
                    self.backlog.push_front(r);
                    return false;
                }
            }
        }
        true
    }

    /// Queues event responses in order until the channel is full; returns the ones that did
    /// not fit. Nothing is queued while control responses wait in the backlog.
    fn try_send_all(
        &mut self,
        resps: Vec<pb::WatchResponse>,
    ) -> Result<(), Vec<pb::WatchResponse>> {
        if !self.backlog.is_empty() {
            return Err(resps);
        }
        let mut it = resps.into_iter();
        while let Some(r) = it.next() {
            match self.sink.try_send(r) {
                Ok(()) | Err(SinkFull::Closed) => {}
                Err(SinkFull::Full(r)) => {
                    let mut rest = vec![r];
                    rest.extend(it);
                    return Err(rest);
                }
            }
        }
        Ok(())
    }
}

/// What the store lends the hub to read history and previous values.
pub(crate) struct ReadCtx<'a> {
    pub index: &'a TreeIndex,
    pub backend: &'a dyn KvRead,
    pub current_rev: i64,
    pub compact_rev: i64,
    /// A compaction whose backend removal is unfinished: `(at, keep)`. Entries at or below
    /// `at` that are not kept are already gone for readers.
    pub doomed: Option<(i64, &'a HashSet<Revision>)>,
}

impl ReadCtx<'_> {
    /// The kv of `key` as of `rev`, if readable (not compacted) and alive.
    fn kv_at(&self, key: &[u8], rev: i64) -> Option<mvccpb::KeyValue> {
        if rev < self.compact_rev || rev <= 0 {
            return None;
        }
        let found = self.index.get(key, rev)?;
        let v = self
            .backend
            .get(Bucket::Key, &found.modified.to_key(false))
            .ok()??;
        mvccpb::KeyValue::decode(v.as_slice()).ok()
    }
}

/// Counters for tests, benches and metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WatchHubStats {
    pub synced: usize,
    pub unsynced: usize,
    pub victims: usize,
    pub streams: usize,
    /// How many times a watcher was moved aside because its stream was full.
    pub victimized_total: u64,
}

/// The hub. Owned by the store; see the module doc.
#[derive(Debug)]
pub struct WatchHub {
    watchers: HashMap<WatcherKey, Watcher>,
    streams: HashMap<StreamId, Stream>,
    next_key: u64,
    next_stream: u64,
    synced_keys: HashMap<Vec<u8>, HashSet<WatcherKey>>,
    synced_ranges: IntervalIndex,
    unsynced: BTreeSet<WatcherKey>,
    victims: BTreeSet<WatcherKey>,
    ids: HeaderIds,
    max_request_bytes: usize,
    victimized_total: u64,
}

impl Default for WatchHub {
    fn default() -> Self {
        Self::new()
    }
}

fn is_create(ev: &mvccpb::Event) -> bool {
    ev.r#type == EventType::Put as i32
        && ev
            .kv
            .as_ref()
            .is_some_and(|kv| kv.create_revision == kv.mod_revision)
}

fn ev_key(ev: &mvccpb::Event) -> &[u8] {
    ev.kv.as_ref().map_or(&[], |kv| kv.key.as_ref())
}

fn ev_rev(ev: &mvccpb::Event) -> i64 {
    ev.kv.as_ref().map_or(0, |kv| kv.mod_revision)
}

impl WatchHub {
    pub fn new() -> Self {
        WatchHub {
            watchers: HashMap::new(),
            streams: HashMap::new(),
            next_key: 0,
            next_stream: 0,
            synced_keys: HashMap::new(),
            synced_ranges: IntervalIndex::new(),
            unsynced: BTreeSet::new(),
            victims: BTreeSet::new(),
            ids: HeaderIds::default(),
            max_request_bytes: DEFAULT_MAX_REQUEST_BYTES,
            victimized_total: 0,
        }
    }

    pub fn set_header_ids(&mut self, ids: HeaderIds) {
        self.ids = ids;
    }

    pub fn set_max_request_bytes(&mut self, n: usize) {
        self.max_request_bytes = n;
    }

    fn header(&self, revision: i64) -> Option<pb::ResponseHeader> {
        Some(pb::ResponseHeader {
            cluster_id: self.ids.cluster_id,
            member_id: self.ids.member_id,
            revision,
            raft_term: self.ids.raft_term,
        })
    }

    pub fn stats(&self) -> WatchHubStats {
        WatchHubStats {
            synced: self.watchers.len() - self.unsynced.len() - self.victims.len(),
            unsynced: self.unsynced.len(),
            victims: self.victims.len(),
            streams: self.streams.len(),
            victimized_total: self.victimized_total,
        }
    }

    /// Opens a stream whose responses go to `sink` (bounded; the capacity is the slack a slow
    /// client gets before its watchers become victims).
    pub fn open_stream(&mut self, sink: impl WatchSink) -> StreamId {
        let id = self.next_stream;
        self.next_stream += 1;
        self.streams.insert(
            id,
            Stream {
                sink: Box::new(sink),
                backlog: VecDeque::new(),
                next_watch_id: 0,
                watchers: HashMap::new(),
                progress: HashMap::new(),
            },
        );
        id
    }

    /// Closes a stream and removes its watchers.
    pub fn close_stream(&mut self, stream: StreamId) {
        if let Some(s) = self.streams.remove(&stream) {
            for (_, key) in s.watchers {
                self.remove_watcher(key);
            }
        }
    }

    /// After the store's contents were replaced under the hub (a raft snapshot install): every
    /// synced watcher catches up from the new store, from the revision it expects next (etcd's
    /// `watchableStore.Restore` does the same). The next `sync` delivers the events.
    pub fn resync_all(&mut self) {
        let synced: Vec<WatcherKey> = self
            .watchers
            .iter()
            .filter(|(_, w)| w.group == Group::Synced)
            .map(|(k, _)| *k)
            .collect();
        for k in synced {
            self.remove_synced(k);
            self.watchers.get_mut(&k).expect("watcher").group = Group::Unsynced;
            self.unsynced.insert(k);
        }
    }

    fn add_synced(&mut self, key: WatcherKey) {
        let w = &self.watchers[&key];
        match &w.end {
            None => {
                self.synced_keys
                    .entry(w.key.clone())
                    .or_default()
                    .insert(key);
            }
            Some(end) => self.synced_ranges.insert(&w.key, end.clone(), key),
        }
        self.watchers.get_mut(&key).expect("watcher").group = Group::Synced;
    }

    fn remove_synced(&mut self, key: WatcherKey) {
        let w = &self.watchers[&key];
        match &w.end {
            None => {
                if let Some(set) = self.synced_keys.get_mut(&w.key) {
                    set.remove(&key);
                    if set.is_empty() {
                        self.synced_keys.remove(&w.key);
                    }
                }
            }
            Some(_) => {
                self.synced_ranges.remove(&w.key, key);
            }
        }
    }

    fn remove_watcher(&mut self, key: WatcherKey) -> Option<Watcher> {
        let group = self.watchers.get(&key)?.group;
        match group {
            Group::Synced => self.remove_synced(key),
            Group::Unsynced => {
                self.unsynced.remove(&key);
            }
            Group::Victim => {
                self.victims.remove(&key);
            }
        }
        self.watchers.remove(&key)
    }

    /// WatchCreateRequest: answers `created` (or the created+canceled failure) on the stream
    /// and registers the watcher.
    pub(crate) fn create(&mut self, stream: StreamId, req: &pb::WatchCreateRequest, ctx: &ReadCtx) {
        let header = self.header(ctx.current_rev);
        let Some(s) = self.streams.get_mut(&stream) else {
            return;
        };
        let key = if req.key.is_empty() {
            vec![0]
        } else {
            req.key.to_vec()
        };
        let end = match req.range_end.as_ref() {
            [] => None,
            [0] => Some(End::Inf),
            e => Some(End::Key(e.to_vec())),
        };
        let fail = |s: &mut Stream, reason: &str| {
            s.send_control(pb::WatchResponse {
                header,
                watch_id: -1,
                created: true,
                canceled: true,
                cancel_reason: reason.to_string(),
                ..Default::default()
            });
        };
        if let Some(End::Key(e)) = &end
            && key.as_slice() >= e.as_slice()
        {
            fail(s, CANCEL_REASON_EMPTY_RANGE);
            return;
        }
        let watch_id = if req.watch_id == 0 {
            while s.watchers.contains_key(&s.next_watch_id) {
                s.next_watch_id += 1;
            }
            s.next_watch_id += 1;
            s.next_watch_id - 1
        } else if s.watchers.contains_key(&req.watch_id) {
            fail(s, CANCEL_REASON_DUPLICATE_ID);
            return;
        } else {
            req.watch_id
        };
        let start = if req.start_revision == 0 {
            ctx.current_rev + 1
        } else {
            req.start_revision
        };
        let wkey = self.next_key;
        self.next_key += 1;
        s.watchers.insert(watch_id, wkey);
        if req.progress_notify {
            s.progress.insert(watch_id, true);
        }
        s.send_control(pb::WatchResponse {
            header,
            watch_id,
            created: true,
            ..Default::default()
        });
        let synced = start > ctx.current_rev;
        let filters = |f: FilterType| req.filters.contains(&(f as i32));
        self.watchers.insert(
            wkey,
            Watcher {
                stream,
                watch_id,
                key,
                end,
                // A future start waits for its revision; a past one catches up from it.
                next_rev: if synced {
                    start.max(ctx.current_rev + 1)
                } else {
                    start
                },
                prev_kv: req.prev_kv,
                no_put: filters(FilterType::Noput),
                no_delete: filters(FilterType::Nodelete),
                fragment: req.fragment,
                group: Group::Unsynced,
                pending: None,
            },
        );
        if synced {
            self.add_synced(wkey);
        } else {
            self.unsynced.insert(wkey);
        }
    }

    /// WatchCancelRequest: known ID → `canceled` response; unknown → nothing (etcd).
    pub(crate) fn cancel(&mut self, stream: StreamId, watch_id: i64, current_rev: i64) {
        let header = self.header(current_rev);
        let Some(key) = self
            .streams
            .get_mut(&stream)
            .and_then(|s| s.watchers.remove(&watch_id))
        else {
            return;
        };
        self.remove_watcher(key);
        if let Some(s) = self.streams.get_mut(&stream) {
            s.progress.remove(&watch_id);
            s.send_control(pb::WatchResponse {
                header,
                watch_id,
                canceled: true,
                ..Default::default()
            });
        }
    }

    /// WatchProgressRequest: `{header(current), watch_id: -1}` at once.
    pub(crate) fn progress_request(&mut self, stream: StreamId, current_rev: i64) {
        let header = self.header(current_rev);
        if let Some(s) = self.streams.get_mut(&stream) {
            s.send_control(pb::WatchResponse {
                header,
                watch_id: -1,
                ..Default::default()
            });
        }
    }

    /// The progress-notify tick: every synced progress watcher that received no events since
    /// the last tick gets `{header(current), watch_id}`.
    pub(crate) fn progress_tick(&mut self, current_rev: i64) {
        let header = self.header(current_rev);
        let mut due = Vec::new();
        for (&sid, s) in &mut self.streams {
            for (&wid, quiet) in &mut s.progress {
                if *quiet {
                    due.push((sid, wid));
                }
                *quiet = true;
            }
        }
        for (sid, wid) in due {
            let synced = self.streams[&sid]
                .watchers
                .get(&wid)
                .is_some_and(|k| self.watchers[k].group == Group::Synced);
            if synced {
                let s = self.streams.get_mut(&sid).expect("stream");
                let resp = pb::WatchResponse {
                    header,
                    watch_id: wid,
                    ..Default::default()
                };
                let _ = s.try_send_all(vec![resp]);
            }
        }
    }

    /// Builds the responses for a watcher from events of one or more revisions: filters,
    /// prev_kv, fragmenting. Empty when everything was filtered out.
    fn build(
        &self,
        w: &Watcher,
        events: Vec<mvccpb::Event>,
        header_rev: i64,
        ctx: &ReadCtx,
    ) -> Vec<pb::WatchResponse> {
        let mut evs: Vec<mvccpb::Event> = events
            .into_iter()
            .filter(|e| {
                let put = e.r#type == EventType::Put as i32;
                !(put && w.no_put || !put && w.no_delete)
            })
            .collect();
        if evs.is_empty() {
            return Vec::new();
        }
        if w.prev_kv {
            for e in &mut evs {
                if !is_create(e) {
                    e.prev_kv = ctx.kv_at(ev_key(e), ev_rev(e) - 1);
                }
            }
        }
        let resp = pb::WatchResponse {
            header: self.header(header_rev),
            watch_id: w.watch_id,
            events: evs,
            ..Default::default()
        };
        let limit = self.max_request_bytes + 512 * 1024;
        if !w.fragment || resp.events.len() < 2 || resp.encoded_len() < limit {
            return vec![resp];
        }
        // Split into fragments each below the limit (at least one event each); all but the
        // last carry `fragment: true`.
        let mut out = Vec::new();
        let mut cur = pb::WatchResponse {
            header: resp.header,
            watch_id: resp.watch_id,
            ..Default::default()
        };
        for e in resp.events {
            let size = e.encoded_len() + 8;
            if !cur.events.is_empty() && cur.encoded_len() + size >= limit {
                let mut full = std::mem::replace(
                    &mut cur,
                    pb::WatchResponse {
                        header: resp.header,
                        watch_id: resp.watch_id,
                        ..Default::default()
                    },
                );
                full.fragment = true;
                out.push(full);
            }
            cur.events.push(e);
        }
        out.push(cur);
        out
    }

    /// Delivers one revision's events (a whole txn) to the synced watchers. Called by the store
    /// after every write; never blocks.
    /// Whether any watcher exists (writers skip building events when none does).
    pub(crate) fn has_watchers(&self) -> bool {
        !self.watchers.is_empty()
    }

    pub(crate) fn notify(&mut self, rev: i64, events: &[mvccpb::Event], ctx: &ReadCtx) {
        if self.watchers.is_empty() {
            return;
        }
        // Which events each watcher takes, as indexes into `events` (no copies yet).
        let mut per_watcher: HashMap<WatcherKey, Vec<usize>> = HashMap::new();
        let mut hits = Vec::new();
        for (i, ev) in events.iter().enumerate() {
            hits.clear();
            let k = ev_key(ev);
            if let Some(set) = self.synced_keys.get(k) {
                hits.extend(set.iter().copied());
            }
            self.synced_ranges.stab(k, &mut hits);
            for &wk in &hits {
                if ev_rev(ev) >= self.watchers[&wk].next_rev {
                    per_watcher.entry(wk).or_default().push(i);
                }
            }
        }
        // Watchers that take every event and share options get one built response, cloned
        // (keys and values are shared `Bytes`): the common fan-out case costs a clone and a
        // send per watcher.
        let mut shared: HashMap<(bool, bool, bool, bool), Vec<pb::WatchResponse>> = HashMap::new();
        for (wk, idx) in per_watcher {
            let w = &self.watchers[&wk];
            let resps = if idx.len() == events.len() {
                let opts = (w.no_put, w.no_delete, w.prev_kv, w.fragment);
                let template = shared
                    .entry(opts)
                    .or_insert_with(|| self.build(w, events.to_vec(), rev, ctx));
                let mut resps = template.clone();
                for r in &mut resps {
                    r.watch_id = w.watch_id;
                }
                resps
            } else {
                let evs = idx.into_iter().map(|i| events[i].clone()).collect();
                self.build(w, evs, rev, ctx)
            };
            self.deliver(wk, resps, rev + 1);
        }
    }

    /// Sends a watcher's responses; on success its `next_rev` becomes `next`. Whatever does
    /// not fit makes the watcher a victim holding the rest (its group sets are updated).
    fn deliver(&mut self, wk: WatcherKey, resps: Vec<pb::WatchResponse>, next: i64) -> bool {
        let w = self.watchers.get_mut(&wk).expect("watcher");
        let (sid, wid) = (w.stream, w.watch_id);
        if resps.is_empty() {
            w.next_rev = next;
            return true;
        }
        let s = self.streams.get_mut(&sid).expect("stream of watcher");
        let result = s.try_send_all(resps);
        if let Some(q) = s.progress.get_mut(&wid) {
            *q = false;
        }
        match result {
            Ok(()) => {
                self.watchers.get_mut(&wk).expect("watcher").next_rev = next;
                true
            }
            Err(rest) => {
                match self.watchers[&wk].group {
                    Group::Synced => self.remove_synced(wk),
                    Group::Unsynced => {
                        self.unsynced.remove(&wk);
                    }
                    Group::Victim => {}
                }
                let w = self.watchers.get_mut(&wk).expect("watcher");
                w.group = Group::Victim;
                w.pending = Some((rest, next));
                if self.victims.insert(wk) {
                    self.victimized_total += 1;
                }
                false
            }
        }
    }

    /// Background work: flushes stream backlogs, retries victims, and catches up unsynced
    /// watchers from the backend (bounded per call). Returns true if work remains.
    pub(crate) fn sync(&mut self, ctx: &ReadCtx) -> bool {
        for s in self.streams.values_mut() {
            s.flush();
        }
        self.retry_victims(ctx);
        self.sync_unsynced(ctx);
        !self.unsynced.is_empty() || !self.victims.is_empty()
    }

    fn retry_victims(&mut self, ctx: &ReadCtx) {
        let victims: Vec<WatcherKey> = self.victims.iter().copied().collect();
        for wk in victims {
            let w = self.watchers.get_mut(&wk).expect("victim");
            let sid = w.stream;
            if let Some((resps, next)) = w.pending.take() {
                let s = self.streams.get_mut(&sid).expect("stream");
                match s.try_send_all(resps) {
                    Ok(()) => self.watchers.get_mut(&wk).expect("w").next_rev = next,
                    Err(rest) => {
                        self.watchers.get_mut(&wk).expect("w").pending = Some((rest, next));
                        continue;
                    }
                }
            }
            self.victims.remove(&wk);
            if self.watchers[&wk].next_rev <= ctx.current_rev {
                self.watchers.get_mut(&wk).expect("w").group = Group::Unsynced;
                self.unsynced.insert(wk);
            } else {
                self.add_synced(wk);
            }
        }
    }

    fn sync_unsynced(&mut self, ctx: &ReadCtx) {
        let batch: Vec<WatcherKey> = self
            .unsynced
            .iter()
            .copied()
            .filter(|wk| {
                self.streams
                    .get(&self.watchers[wk].stream)
                    .is_some_and(|s| s.backlog.is_empty())
            })
            .take(MAX_WATCHERS_PER_SYNC)
            .collect();
        if batch.is_empty() {
            return;
        }
        // Compacted watchers are canceled with the compact revision (header revision 0).
        let mut live = Vec::new();
        for wk in batch {
            let w = &self.watchers[&wk];
            if w.next_rev < ctx.compact_rev {
                let (sid, wid) = (w.stream, w.watch_id);
                self.remove_watcher(wk);
                if let Some(s) = self.streams.get_mut(&sid) {
                    s.watchers.remove(&wid);
                    s.progress.remove(&wid);
                    s.send_control(pb::WatchResponse {
                        header: Some(pb::ResponseHeader {
                            cluster_id: self.ids.cluster_id,
                            member_id: self.ids.member_id,
                            revision: 0,
                            raft_term: self.ids.raft_term,
                        }),
                        watch_id: wid,
                        canceled: true,
                        compact_revision: ctx.compact_rev,
                        ..Default::default()
                    });
                }
            } else {
                live.push(wk);
            }
        }
        if live.is_empty() {
            return;
        }
        let min_rev = live
            .iter()
            .map(|wk| self.watchers[wk].next_rev)
            .min()
            .expect("non-empty");
        // Read history [min_rev, scan_end) once for the whole batch; bounded so a watcher far
        // behind costs a bounded amount of work per call instead of a scan of all history.
        let scan_end = min_rev
            .max(1)
            .saturating_add(MAX_REVS_PER_SYNC_SCAN)
            .min(ctx.current_rev + 1);
        let mut history: Vec<mvccpb::Event> = Vec::new();
        let start = Revision::main_bound(min_rev.max(1));
        let end = Revision::main_bound(scan_end);
        let _ = ctx.backend.scan(Bucket::Key, &start, &end, &mut |k, v| {
            let (Ok(rk), Ok(mut kv)) = (RevKey::decode(k), mvccpb::KeyValue::decode(v)) else {
                return true;
            };
            if let Some((at, keep)) = ctx.doomed
                && rk.rev.main <= at
                && !keep.contains(&rk.rev)
            {
                return true;
            }
            let ty = if rk.tombstone {
                kv.mod_revision = rk.rev.main;
                EventType::Delete
            } else {
                EventType::Put
            };
            history.push(mvccpb::Event {
                r#type: ty as i32,
                kv: Some(kv),
                prev_kv: None,
            });
            true
        });
        for wk in live {
            let w = &self.watchers[&wk];
            if w.next_rev >= scan_end {
                // Nothing of its history was read this round.
                continue;
            }
            let mut evs = Vec::new();
            let mut revs = 0usize;
            let mut last_rev = 0i64;
            let mut more_rev = 0i64;
            for ev in &history {
                let r = ev_rev(ev);
                if r < w.next_rev || !w.contains(ev_key(ev)) {
                    continue;
                }
                if r != last_rev {
                    if revs >= MAX_REVS_PER_SYNC_RESPONSE {
                        more_rev = r;
                        break;
                    }
                    revs += 1;
                    last_rev = r;
                }
                evs.push(ev.clone());
            }
            let next = if more_rev != 0 { more_rev } else { scan_end };
            let resps = self.build(w, evs, ctx.current_rev, ctx);
            // On failure `deliver` made it a victim; on success it is caught up to `next`, and
            // synced once that is past the current revision.
            if self.deliver(wk, resps, next) && next > ctx.current_rev {
                self.unsynced.remove(&wk);
                self.add_synced(wk);
            }
        }
    }
}

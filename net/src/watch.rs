//! `etcdserverpb.Watch`: one bidirectional stream multiplexing many watchers
//! (etcd-v3-spec.md §4.8).
//!
//! The stream's session task owns the watch-ID table and the only sender of responses, so
//! responses leave in the order the session produced them: a watcher's created response is
//! queued before its forwarder task starts, hence before any of its events.
//!
//! Worked example (one stream): `create{key:a}` → ID 0, `{created, watch_id:0}`;
//! `create{key:b, watch_id:7}` → `{created, watch_id:7}`; `create{key:c, watch_id:7}` →
//! `{created, canceled, watch_id:-1, cancel_reason:"mvcc: duplicate watch ID ..."}`;
//! `create{key:d}` → ID 1 (the next auto ID, skipping IDs in use); `cancel{7}` →
//! `{canceled, watch_id:7}`; `cancel{99}` → nothing; `progress{}` → `{watch_id:-1}`.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use crate::config::GRPC_RECV_OVERHEAD;
use crate::errors::{EtcdError, cancel_reason};
use crate::frontend::{LearnerPolicy, Shared, fill_header, requires_leader};
use crate::node::{BoxStream, Caller, EtcdNode, WatchSpec, WatchUpdate};
use crate::pb::etcdserverpb::{
    ResponseHeader, WatchCreateRequest, WatchRequest, WatchResponse,
    watch_create_request::FilterType, watch_request::RequestUnion, watch_server::Watch,
};

/// Responses queued per stream before the session waits for the client to read.
const STREAM_BUFFER: usize = 128;
/// Leader checks a stream with `hasleader` may miss before it is canceled (etcd: 3).
pub const LEADER_MISSES: u32 = 3;

/// The Watch service over a node.
pub struct WatchService<N> {
    /// Shared front-end state.
    pub shared: Shared<N>,
}

#[tonic::async_trait]
impl<N: EtcdNode> Watch for WatchService<N> {
    type WatchStream = BoxStream<Result<WatchResponse, Status>>;

    async fn watch(
        &self,
        req: Request<Streaming<WatchRequest>>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let (caller, _) = self.shared.admit(req.metadata(), LearnerPolicy::Refused)?;
        let require_leader = requires_leader(req.metadata());
        Ok(Response::new(serve(
            self.shared.clone(),
            caller,
            require_leader,
            req.into_inner(),
        )))
    }
}

/// Serves one watch stream: `input` are the client's requests (from gRPC or the gateway).
pub fn serve<N: EtcdNode>(
    shared: Shared<N>,
    caller: Caller,
    require_leader: bool,
    input: impl Stream<Item = Result<WatchRequest, Status>> + Send + Unpin + 'static,
) -> BoxStream<Result<WatchResponse, Status>> {
    let (tx, rx) = mpsc::channel(STREAM_BUFFER);
    tokio::spawn(Session::new(shared, caller, tx).run(input, require_leader));
    Box::pin(ReceiverStream::new(rx))
}

/// One watch stream's state; lives in its own task.
struct Session<N> {
    /// Shared front-end state.
    shared: Shared<N>,
    /// Identity for the node's permission checks.
    caller: Caller,
    /// The response stream (the session and its forwarders are the only senders).
    tx: mpsc::Sender<Result<WatchResponse, Status>>,
    /// Active watchers by ID: a generation number (unique per session) and the forwarder task.
    watchers: HashMap<i64, (u64, JoinHandle<()>)>,
    /// Generation of the next watcher, so a stale "ended" report cannot remove a reused ID.
    next_gen: u64,
    /// Next candidate for an automatically assigned ID (etcd's `nextID`: starts at 0, skips
    /// IDs in use, never goes back).
    next_id: i64,
    /// Forwarders report watchers the node ended (compaction) here, as (ID, generation).
    ended_tx: mpsc::UnboundedSender<(i64, u64)>,
    ended_rx: mpsc::UnboundedReceiver<(i64, u64)>,
}

impl<N: EtcdNode> Session<N> {
    fn new(
        shared: Shared<N>,
        caller: Caller,
        tx: mpsc::Sender<Result<WatchResponse, Status>>,
    ) -> Self {
        let (ended_tx, ended_rx) = mpsc::unbounded_channel();
        Session {
            shared,
            caller,
            tx,
            watchers: HashMap::new(),
            next_gen: 0,
            next_id: 0,
            ended_tx,
            ended_rx,
        }
    }

    async fn run(
        mut self,
        mut input: impl Stream<Item = Result<WatchRequest, Status>> + Send + Unpin + 'static,
        require_leader: bool,
    ) {
        let mut shutdown = self.shared.shutdown.clone();
        let mut leader_check =
            tokio::time::interval(self.shared.election_timeout.max(Duration::from_millis(10)));
        let mut misses = 0u32;
        let mut input_open = true;
        let end: Option<Status> = loop {
            tokio::select! {
                req = input.next(), if input_open => match req {
                    Some(Ok(req)) => if !self.handle(req).await { break None },
                    // Client half-close does not end the watch (spec §4.8).
                    None => input_open = false,
                    Some(Err(_)) => break None,
                },
                Some((id, generation)) = self.ended_rx.recv() => {
                    if self.watchers.get(&id).is_some_and(|(g, _)| *g == generation) {
                        self.watchers.remove(&id);
                    }
                }
                _ = shutdown.fired() => break Some(EtcdError::Stopped.into()),
                _ = self.tx.closed() => break None,
                _ = leader_check.tick(), if require_leader => {
                    if self.shared.node.state().leader == 0 {
                        misses += 1;
                        if misses >= LEADER_MISSES { break Some(EtcdError::NoLeader.into()) }
                    } else {
                        misses = 0;
                    }
                }
            }
        };
        for (_, (_, task)) in self.watchers.drain() {
            task.abort();
        }
        if let Some(status) = end {
            let _ = self.tx.send(Err(status)).await;
        }
    }

    /// Handles one request; false when the client went away.
    async fn handle(&mut self, req: WatchRequest) -> bool {
        match req.request_union {
            Some(RequestUnion::CreateRequest(c)) => self.create(c).await,
            Some(RequestUnion::CancelRequest(c)) => {
                let Some((_, task)) = self.watchers.remove(&c.watch_id) else {
                    return true;
                };
                task.abort();
                let resp = WatchResponse {
                    watch_id: c.watch_id,
                    canceled: true,
                    ..self.current()
                };
                self.tx.send(Ok(resp)).await.is_ok()
            }
            Some(RequestUnion::ProgressRequest(_)) => {
                let resp = WatchResponse {
                    watch_id: -1,
                    ..self.current()
                };
                self.tx.send(Ok(resp)).await.is_ok()
            }
            None => true,
        }
    }

    /// An empty response with a header at the current revision.
    fn current(&self) -> WatchResponse {
        let state = self.shared.node.state();
        let mut header = None;
        fill_header(&mut header, &state);
        WatchResponse {
            header,
            ..Default::default()
        }
    }

    fn failed_create(&self, reason: String) -> WatchResponse {
        WatchResponse {
            watch_id: -1,
            created: true,
            canceled: true,
            cancel_reason: reason,
            ..self.current()
        }
    }

    async fn create(&mut self, c: WatchCreateRequest) -> bool {
        let (spec, id) = match self.prepare(&c) {
            Ok(v) => v,
            Err(reason) => {
                return self
                    .tx
                    .send(Ok(self.failed_create(reason.to_string())))
                    .await
                    .is_ok();
            }
        };
        let watcher = match self.shared.node.watch(&self.caller, spec).await {
            Ok(w) => w,
            Err(e) => {
                return self
                    .tx
                    .send(Ok(self.failed_create(e.message().into_owned())))
                    .await
                    .is_ok();
            }
        };
        if id >= self.next_id && c.watch_id == 0 {
            self.next_id = id + 1;
        }
        let state = self.shared.node.state();
        let mut header = Some(ResponseHeader {
            revision: watcher.revision,
            ..Default::default()
        });
        fill_header(&mut header, &state);
        let created = WatchResponse {
            header,
            watch_id: id,
            created: true,
            ..Default::default()
        };
        if self.tx.send(Ok(created)).await.is_err() {
            return false;
        }
        let generation = self.next_gen;
        self.next_gen += 1;
        let ended = self.ended_tx.clone();
        let fragment_at = c
            .fragment
            .then_some(self.shared.limits.max_request_bytes + GRPC_RECV_OVERHEAD);
        let task = tokio::spawn(forward(
            self.shared.clone(),
            id,
            fragment_at,
            watcher.updates,
            self.tx.clone(),
            move || {
                let _ = ended.send((id, generation));
            },
        ));
        self.watchers.insert(id, (generation, task));
        true
    }

    /// Normalises a create request (spec §4.8) and picks its ID.
    fn prepare(&mut self, c: &WatchCreateRequest) -> Result<(WatchSpec, i64), &'static str> {
        let key = if c.key.is_empty() {
            Bytes::from_static(b"\0")
        } else {
            c.key.clone()
        };
        let range_end = c.range_end.clone();
        let from_key = range_end.as_ref() == b"\0";
        if !range_end.is_empty() && !from_key && key >= range_end {
            return Err(cancel_reason::EMPTY_RANGE);
        }
        let id = if c.watch_id != 0 {
            if self.watchers.contains_key(&c.watch_id) {
                return Err(cancel_reason::DUPLICATE_WATCH_ID);
            }
            c.watch_id
        } else {
            while self.watchers.contains_key(&self.next_id) {
                self.next_id += 1;
            }
            self.next_id
        };
        let spec = WatchSpec {
            key,
            range_end,
            start_revision: c.start_revision,
            prev_kv: c.prev_kv,
            no_put: c.filters.contains(&(FilterType::Noput as i32)),
            no_delete: c.filters.contains(&(FilterType::Nodelete as i32)),
            progress_notify: c.progress_notify,
        };
        Ok((spec, id))
    }
}

/// Moves one watcher's updates into the stream as responses.
async fn forward<N: EtcdNode>(
    shared: Shared<N>,
    id: i64,
    fragment_at: Option<usize>,
    mut updates: BoxStream<WatchUpdate>,
    tx: mpsc::Sender<Result<WatchResponse, Status>>,
    on_end: impl FnOnce() + Send + 'static,
) {
    while let Some(update) = updates.next().await {
        let state = shared.node.state();
        let (revision, resp) = match update {
            WatchUpdate::Events { revision, events } => (
                revision,
                WatchResponse {
                    watch_id: id,
                    events,
                    ..Default::default()
                },
            ),
            WatchUpdate::Progress { revision } => (
                revision,
                WatchResponse {
                    watch_id: id,
                    ..Default::default()
                },
            ),
            WatchUpdate::Compacted { compact_revision } => {
                // Header revision 0, then the watcher is gone (spec §4.8).
                (
                    0,
                    WatchResponse {
                        watch_id: id,
                        canceled: true,
                        compact_revision,
                        ..Default::default()
                    },
                )
            }
        };
        let last = resp.canceled;
        let mut header = Some(ResponseHeader {
            revision,
            ..Default::default()
        });
        fill_header(&mut header, &state);
        let resp = WatchResponse { header, ..resp };
        let parts = match fragment_at {
            Some(limit) => fragment(resp, limit),
            None => vec![resp],
        };
        for part in parts {
            if tx.send(Ok(part)).await.is_err() {
                return;
            }
        }
        if last {
            break;
        }
    }
    on_end();
}

/// Splits a response for a watcher created with `fragment: true` (spec §4.8): a response of
/// `limit` bytes or more with at least two events becomes several responses, each as large as
/// possible below `limit` (but at least one event), all but the last marked `fragment`.
pub fn fragment(resp: WatchResponse, limit: usize) -> Vec<WatchResponse> {
    use prost::Message;
    if resp.events.len() < 2 || resp.encoded_len() < limit {
        return vec![resp];
    }
    let mut events = resp.events.clone().into_iter().peekable();
    let template = WatchResponse {
        events: Vec::new(),
        fragment: true,
        ..resp
    };
    let mut parts = Vec::new();
    while events.peek().is_some() {
        let mut cur = template.clone();
        while let Some(ev) = events.peek() {
            cur.events.push(ev.clone());
            if cur.events.len() > 1 && cur.encoded_len() >= limit {
                cur.events.pop();
                break;
            }
            events.next();
        }
        if events.peek().is_none() {
            cur.fragment = false;
        }
        parts.push(cur);
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::mvccpb::{Event, KeyValue};

    fn ev(n: usize) -> Event {
        Event {
            kv: Some(KeyValue {
                key: "k".into(),
                value: vec![b'v'; n].into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn fragments_split_large_responses() {
        let resp = WatchResponse {
            watch_id: 3,
            events: (0..10).map(|_| ev(100)).collect(),
            ..Default::default()
        };
        assert_eq!(fragment(resp.clone(), 1 << 20), vec![resp.clone()]);
        let parts = fragment(resp.clone(), 350);
        assert!(parts.len() > 1);
        assert!(parts[..parts.len() - 1].iter().all(|p| p.fragment));
        assert!(!parts.last().unwrap().fragment);
        let all: Vec<Event> = parts.iter().flat_map(|p| p.events.clone()).collect();
        assert_eq!(all, resp.events);
        assert!(parts.iter().all(|p| p.watch_id == 3));
        // a single huge event is sent whole
        let one = WatchResponse {
            events: vec![ev(1000)],
            ..Default::default()
        };
        assert_eq!(fragment(one.clone(), 10), vec![one]);
    }
}

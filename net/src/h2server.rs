//! The HTTP/2 side of the client listener on the `h2` crate, with a thin path for the hot KV
//! RPCs (DESIGN.md "The front end's cost").
//!
//! A connection whose first bytes are the HTTP/2 preface is served here; anything else goes to
//! hyper's HTTP/1.1 server (`server.rs`). Every stream is one of:
//!
//! - **Thin path**: `/etcdserverpb.KV/{Range,Put,DeleteRange,Txn,Compact}` with a gRPC content
//!   type and no `grpc-encoding`. The body's 5-byte gRPC prefix and protobuf message are
//!   decoded straight from the received `Bytes` (keys and values stay slices of the read
//!   buffer), the same `kv::*_rpc` function the tonic service uses runs, and the response is
//!   encoded once and sent as HEADERS + DATA + trailers (`grpc-status: 0`), or as a
//!   trailers-only response built by `tonic::Status::into_http` on error, so statuses are
//!   byte-identical with the tonic path's. These streams run inside the connection's task
//!   (no task spawn per request).
//! - **Fallback**: every other stream (Watch, Lease, Maintenance, Auth, Cluster, Election, Lock,
//!   health, compressed requests, HTTP over HTTP/2) goes to `ClientServer::route` in its own
//!   task: the request body is an `http_body::Body` over h2's `RecvStream`, and the response
//!   body is streamed back with flow control and trailers.
//!
//! Writes are coalesced (`Coalesce`): h2 flushes its write buffer after every DATA frame larger
//! than its chaining threshold, i.e. once per response; the adapter below keeps those bytes and
//! writes them in the connection task's next poll, so the responses produced in one poll of the
//! task leave in one `write`.
//!
//! Kept from the hyper path: the `:authority` fix-up (`h2fix.rs`), max concurrent streams,
//! keepalive pings with a timeout, hyper's window/frame/header-list settings, the gRPC receive
//! limit with grpc-go's error, graceful shutdown (GOAWAY, in-flight streams finish), and the
//! `grpc_server_handled_total` counters.

use std::future::{Future, poll_fn};
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::task::{Context, Poll, ready};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use h2::server::SendResponse;
use h2::{RecvStream, SendStream};
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body::Frame;
use http_body_util::BodyExt;
use prost::Message;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::Status;

use crate::errors::{EtcdError, rewrite_tonic_status};
use crate::frontend::RequestMeta;
use crate::gateway::Body;
use crate::kv;
use crate::node::EtcdNode;
use crate::server::ClientServer;

/// hyper's HTTP/2 server defaults, kept so clients see the same SETTINGS as before.
const STREAM_WINDOW: u32 = 1024 * 1024;
const CONN_WINDOW: u32 = 1024 * 1024;
const MAX_FRAME_SIZE: u32 = 16 * 1024;
const MAX_HEADER_LIST_SIZE: u32 = 16 * 1024;
const MAX_SEND_BUFFER: usize = 400 * 1024;
const MAX_LOCAL_ERROR_RESETS: usize = 1024;

/// The gRPC message prefix: { compressed flag: u8, length: u32 BE } (gRPC over HTTP/2 spec;
/// big-endian because the wire format says so).
const PREFIX_LEN: usize = 5;
const PREFIX_FLAG: usize = 0;
const PREFIX_LENGTH: usize = PREFIX_FLAG + 1;

/// tonic's messages for the framing errors the thin path detects itself (tonic 0.14
/// `codec/decode.rs`, `server/grpc.rs`), so both paths answer alike.
const MSG_COMPRESSED_NO_ENCODING: &str =
    "protocol error: received message with compressed-flag but no grpc-encoding was specified";
const MSG_UNEXPECTED_EOF: &str = "Unexpected EOF decoding stream.";
const MSG_MISSING: &str = "Missing request message.";

/// The response headers of a successful thin-path call: `content-type: application/grpc`,
/// then (trailers) `grpc-status: 0`. Names are built at compile time, not parsed per response.
const GRPC_CONTENT_TYPE: &str = "application/grpc";
const GRPC_STATUS: http::HeaderName = http::HeaderName::from_static("grpc-status");
/// A request's compression header (looked up by a prebuilt name: no parse per request).
const GRPC_ENCODING: http::HeaderName = http::HeaderName::from_static("grpc-encoding");

/// The KV methods served on the thin path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HotMethod {
    /// `/etcdserverpb.KV/Range`
    Range,
    /// `/etcdserverpb.KV/Put`
    Put,
    /// `/etcdserverpb.KV/DeleteRange`
    DeleteRange,
    /// `/etcdserverpb.KV/Txn`
    Txn,
    /// `/etcdserverpb.KV/Compact`
    Compact,
}

impl HotMethod {
    /// Every thin-path method, in the order of [`HotMethod::slot`].
    const ALL: [HotMethod; 5] = [
        HotMethod::Range,
        HotMethod::Put,
        HotMethod::DeleteRange,
        HotMethod::Txn,
        HotMethod::Compact,
    ];

    /// The method's gRPC path.
    fn path(self) -> &'static str {
        match self {
            HotMethod::Range => "/etcdserverpb.KV/Range",
            HotMethod::Put => "/etcdserverpb.KV/Put",
            HotMethod::DeleteRange => "/etcdserverpb.KV/DeleteRange",
            HotMethod::Txn => "/etcdserverpb.KV/Txn",
            HotMethod::Compact => "/etcdserverpb.KV/Compact",
        }
    }

    /// The method's position in [`HotMethod::ALL`].
    fn slot(self) -> usize {
        self as usize
    }

    /// The thin-path method of a request, if it qualifies (see the module doc).
    pub fn of<B>(req: &Request<B>) -> Option<HotMethod> {
        let m = match req.uri().path() {
            "/etcdserverpb.KV/Range" => HotMethod::Range,
            "/etcdserverpb.KV/Put" => HotMethod::Put,
            "/etcdserverpb.KV/DeleteRange" => HotMethod::DeleteRange,
            "/etcdserverpb.KV/Txn" => HotMethod::Txn,
            "/etcdserverpb.KV/Compact" => HotMethod::Compact,
            _ => return None,
        };
        let grpc = req
            .headers()
            .get(http::header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
        // Compressed requests take tonic's path, which answers them as it always did.
        (grpc && !req.headers().contains_key(GRPC_ENCODING)).then_some(m)
    }
}

/// Serves one HTTP/2 connection until it closes (or shutdown drains it).
pub async fn serve_connection<N, IO>(
    server: Arc<ClientServer<N>>,
    io: IO,
    peer: std::net::SocketAddr,
) where
    N: EtcdNode,
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let polls = TaskPolls::default();
    Counted {
        polls: polls.clone(),
        inner: Box::pin(serve_counted(server, io, peer, polls)),
    }
    .await
}

/// [`serve_connection`] inside a task whose polls are counted (for [`Coalesce`]).
async fn serve_counted<N, IO>(
    server: Arc<ClientServer<N>>,
    io: IO,
    peer: std::net::SocketAddr,
    polls: TaskPolls,
) where
    N: EtcdNode,
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let options = server.options();
    let mut builder = h2::server::Builder::new();
    builder
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONN_WINDOW)
        .max_frame_size(MAX_FRAME_SIZE)
        .max_header_list_size(MAX_HEADER_LIST_SIZE)
        .max_send_buffer_size(MAX_SEND_BUFFER)
        .max_local_error_reset_streams(Some(MAX_LOCAL_ERROR_RESETS))
        .max_concurrent_streams(options.max_concurrent_streams);
    let mut shutdown = server.frontend().shutdown.clone();
    let handshake = builder.handshake::<_, Bytes>(Coalesce::new(io, polls));
    let mut conn = tokio::select! {
        r = handshake => match r {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!("client connection {peer}: HTTP/2 handshake: {e}");
                return;
            }
        },
        _ = shutdown.fired() => return,
    };
    let thin = options.thin_kv;
    let interval = options.keepalive_interval;
    // A zero interval turns server pings off (as hyper's `None`).
    let mut pings = conn.ping_pong().filter(|_| !interval.is_zero());
    let timeout = options.keepalive_timeout;
    let keepalive = tokio::time::sleep(interval);
    tokio::pin!(keepalive);
    let mut awaiting_pong = false;
    let mut draining = false;
    // One shutdown wait for the connection's life, not one per turn of the loop: a fresh
    // `fired()` registers with (and a dropped one leaves) the shutdown channel's waiter list,
    // which every connection of every front-end thread shares; the loop turns about twice
    // per request.
    let fired = shutdown.fired();
    tokio::pin!(fired);
    // The thin streams borrow the connection's `server` (no reference count touched per
    // stream: the count is shared by every front-end thread) and find their metric slots here.
    let hot = HotContext {
        server: &server,
        metrics: HotMethod::ALL.map(|m| server.frontend().metrics.method(m.path())),
    };
    // The thin streams' futures, held unboxed in the set's own task allocations.
    let mut inflight = FuturesUnordered::new();
    loop {
        tokio::select! {
            biased;
            r = conn.accept() => match r {
                Some(Ok((req, respond))) => {
                    if let Some(m) = HotMethod::of(&req).filter(|_| thin) {
                        // Only the admission metadata and the body go into the stream's
                        // future (its size is copied and held per stream; see `serve_hot`).
                        let (parts, body) = req.into_parts();
                        let meta = RequestMeta::of(&parts.headers);
                        drop(parts);
                        inflight.push(serve_hot(&hot, m, meta, body, respond));
                    } else {
                        let server = server.clone();
                        let mut respond = respond;
                        tokio::spawn(async move {
                            // A stream reset by the client cancels its handler (as hyper did).
                            let resp = tokio::select! {
                                r = server.route(req.map(RecvBody::new)) => r,
                                _ = poll_fn(|cx| respond.poll_reset(cx)) => return,
                            };
                            send_streamed(respond, resp).await;
                        });
                    }
                }
                Some(Err(e)) => {
                    tracing::debug!("client connection {peer}: {e}");
                    break;
                }
                None => break,
            },
            () = poll_fn(|cx| drain_finished(&mut inflight, cx)), if !inflight.is_empty() => {}
            () = &mut fired, if !draining => {
                draining = true;
                conn.graceful_shutdown();
            }
            r = poll_fn(|cx| match pings.as_mut() {
                Some(p) => p.poll_pong(cx),
                None => Poll::Pending,
            }), if awaiting_pong => {
                if r.is_err() {
                    break;
                }
                awaiting_pong = false;
                keepalive.as_mut().reset(tokio::time::Instant::now() + interval);
            }
            _ = keepalive.as_mut(), if pings.is_some() => {
                if awaiting_pong {
                    tracing::debug!("client connection {peer}: keepalive ping not answered in {timeout:?}");
                    break;
                }
                match pings.as_mut().map(|p| p.send_ping(h2::Ping::opaque())) {
                    Some(Ok(())) => {
                        awaiting_pong = true;
                        keepalive.as_mut().reset(tokio::time::Instant::now() + timeout);
                    }
                    _ => keepalive.as_mut().reset(tokio::time::Instant::now() + interval),
                }
            }
        }
    }
}

/// Polls the in-flight thin streams until none is ready: `Ready` once at least one finished,
/// `Pending` (woken by the next to finish) when none did. Every `accept` is a full poll of the
/// h2 connection (its frame reads, stream bookkeeping and write-out), so the replies that one
/// wake-up brings (an applied batch completes many streams of a connection at once) are all
/// taken in one go and go out with one connection poll, not one connection poll each.
fn drain_finished<F: Future<Output = ()>>(
    set: &mut FuturesUnordered<F>,
    cx: &mut Context<'_>,
) -> Poll<()> {
    let mut finished = false;
    while let Poll::Ready(Some(())) = set.poll_next_unpin(cx) {
        finished = true;
    }
    if finished {
        Poll::Ready(())
    } else {
        Poll::Pending
    }
}

/// What the thin streams of one connection share.
struct HotContext<'a, N> {
    server: &'a ClientServer<N>,
    /// `grpc_server_handled_total` slots by [`HotMethod::slot`].
    metrics: [Option<usize>; 5],
}

/// The thin path for one stream (module doc).
///
/// The future is as large as its largest state, and every stream's is copied into its own
/// `FuturesUnordered` task and held (1000 clients on 100 connections: ~1000 of them live),
/// so its size is CPU per request. So the headers are not held (only the [`RequestMeta`]
/// taken from them), Put and Range, the hot ones, are awaited in place with futures that
/// hold no metadata, and DeleteRange, Txn and Compact, whose futures are the largest (a
/// whole request held across the proposal), are boxed, one allocation each. The reply side
/// is [`HotStream`], a plain struct: an `async` block around the call would keep a slot for
/// the call future it captured besides the one `select!` moves it into.
fn serve_hot<'a, N: EtcdNode>(
    hot: &'a HotContext<'a, N>,
    method: HotMethod,
    meta: RequestMeta,
    body: RecvStream,
    respond: SendResponse<Bytes>,
) -> HotStream<'a, N, impl Future<Output = Result<Bytes, Status>> + 'a> {
    let server = hot.server;
    let fe = server.frontend();
    let metric = hot.metrics[method.slot()];
    if let Some(m) = metric {
        fe.metrics.started(m);
    }
    let limit = server.options().grpc_max_recv_bytes;
    let call = async move {
        let msg = read_unary(body, limit).await?;
        match method {
            HotMethod::Range => encode(&kv::range_rpc(fe, meta, decode(msg)?).await?),
            HotMethod::Put => encode(&kv::put_rpc(fe, meta, decode(msg)?).await?),
            HotMethod::DeleteRange => {
                encode(&Box::pin(kv::delete_range_rpc(fe, meta, decode(msg)?)).await?)
            }
            HotMethod::Txn => encode(&Box::pin(kv::txn_rpc(fe, meta, decode(msg)?)).await?),
            HotMethod::Compact => encode(&Box::pin(kv::compact_rpc(fe, meta, decode(msg)?)).await?),
        }
    };
    HotStream {
        call,
        respond,
        fe,
        metric,
    }
}

pin_project_lite::pin_project! {
    /// One thin stream: its call, then the reply (see [`serve_hot`]).
    struct HotStream<'a, N, F> {
        #[pin]
        call: F,
        respond: SendResponse<Bytes>,
        fe: &'a crate::frontend::Frontend<N>,
        // The `grpc_server_handled_total` slot of the method.
        metric: Option<usize>,
    }
}

impl<N: EtcdNode, F: Future<Output = Result<Bytes, Status>>> Future for HotStream<'_, N, F> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.project();
        // A stream reset by the client cancels the call (as hyper did): the call is dropped
        // with this future, and it is not counted as handled, like the tonic path's. The
        // call is polled first: the reset is looked at (a lock of h2's stream store) only
        // while the call is pending.
        let result = match this.call.poll(cx) {
            Poll::Ready(r) => r,
            Poll::Pending => {
                return match this.respond.poll_reset(cx) {
                    Poll::Ready(_) => Poll::Ready(()),
                    Poll::Pending => Poll::Pending,
                };
            }
        };
        let code = match result {
            Ok(frame) => {
                let mut head = Response::new(());
                head.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    HeaderValue::from_static(GRPC_CONTENT_TYPE),
                );
                if let Ok(mut send) = this.respond.send_response(head, false) {
                    let mut trailers = HeaderMap::with_capacity(1);
                    trailers.insert(GRPC_STATUS, HeaderValue::from_static("0"));
                    let _ = send.send_data(frame, false);
                    let _ = send.send_trailers(trailers);
                }
                0
            }
            Err(status) => {
                let code = status.code() as i32;
                let (head, ()) = status.into_http::<()>().into_parts();
                let _ = this
                    .respond
                    .send_response(Response::from_parts(head, ()), true);
                code
            }
        };
        if let Some(m) = *this.metric {
            this.fe.metrics.handled(m, code);
        }
        Poll::Ready(())
    }
}

/// Reads a unary request body: exactly one length-prefixed message, as tonic's unary handler
/// reads it (limit checked on the prefix, before the message is buffered; the body is read to
/// its end). A message that arrives in one DATA frame is returned as a slice of that frame.
async fn read_unary(mut body: RecvStream, limit: usize) -> Result<Bytes, Status> {
    // The body so far: one chunk as received (zero-copy) or, from the second chunk on, joined.
    let mut single: Option<Bytes> = None;
    let mut joined = BytesMut::new();
    let mut message: Option<Bytes> = None;
    while let Some(chunk) = body.data().await {
        let chunk = chunk.map_err(|e| Status::from_error(Box::new(e)))?;
        let _ = body.flow_control().release_capacity(chunk.len());
        if message.is_some() || chunk.is_empty() {
            continue;
        }
        if single.is_none() && joined.is_empty() {
            single = Some(chunk);
        } else {
            if let Some(s) = single.take() {
                joined.extend_from_slice(&s);
            }
            joined.extend_from_slice(&chunk);
        }
        let view: &[u8] = single.as_deref().unwrap_or(&joined);
        if view.len() < PREFIX_LEN {
            continue;
        }
        let len = u32::from_be_bytes(
            view[PREFIX_LENGTH..PREFIX_LENGTH + 4]
                .try_into()
                .expect("4 bytes"),
        ) as usize;
        match view[PREFIX_FLAG] {
            0 => {}
            1 => return Err(Status::internal(MSG_COMPRESSED_NO_ENCODING)),
            f => {
                return Err(Status::internal(format!(
                    "protocol error: received message with invalid compression flag: {f} (valid flags are 0 and 1), while sending request"
                )));
            }
        }
        if len > limit {
            return Err(EtcdError::MessageTooLarge { found: len, limit }.to_status());
        }
        if view.len() < PREFIX_LEN + len {
            joined.reserve(PREFIX_LEN + len - view.len());
            continue;
        }
        let whole = match single.take() {
            Some(s) => s,
            None => joined.split().freeze(),
        };
        message = Some(whole.slice(PREFIX_LEN..PREFIX_LEN + len));
    }
    match message {
        Some(m) => Ok(m),
        None if single.is_none() && joined.is_empty() => Err(Status::internal(MSG_MISSING)),
        None => Err(Status::internal(MSG_UNEXPECTED_EOF)),
    }
}

/// Decodes a request message; errors read like the tonic path's (after its rewrite).
fn decode<M: Message + Default>(msg: Bytes) -> Result<M, Status> {
    M::decode(msg).map_err(|e| {
        let text = e.to_string();
        rewrite_tonic_status(tonic::Code::Internal, &text)
            .map(|e| e.to_status())
            .unwrap_or_else(|| Status::internal(text))
    })
}

/// Format: { flag 0: u8, length: u32 BE, message } — one gRPC message, uncompressed.
fn encode<M: Message>(msg: &M) -> Result<Bytes, Status> {
    let len = msg.encoded_len();
    let mut buf = BytesMut::with_capacity(PREFIX_LEN + len);
    buf.put_u8(0);
    buf.put_u32(len as u32);
    msg.encode(&mut buf)
        .expect("BytesMut grows to the encoded length");
    Ok(buf.freeze())
}

/// A fallback response, streamed with flow control: HEADERS, DATA as the peer's window allows,
/// then trailers (or an empty END_STREAM DATA frame). Stops when the client resets the stream.
async fn send_streamed(mut respond: SendResponse<Bytes>, resp: Response<Body>) {
    let (parts, mut body) = resp.into_parts();
    let head = Response::from_parts(parts, ());
    if http_body::Body::is_end_stream(&body) {
        let _ = respond.send_response(head, true);
        return;
    }
    let Ok(mut send) = respond.send_response(head, false) else {
        return;
    };
    loop {
        let frame = tokio::select! {
            f = body.frame() => f,
            _ = poll_fn(|cx| send.poll_reset(cx)) => return,
        };
        let frame = match frame {
            None => {
                let _ = send.send_data(Bytes::new(), true);
                return;
            }
            Some(Err(e)) => {
                tracing::debug!("gRPC response body failed: {e}");
                send.send_reset(h2::Reason::INTERNAL_ERROR);
                return;
            }
            Some(Ok(f)) => f,
        };
        match frame.into_data() {
            Ok(data) => {
                if send_flow_controlled(&mut send, data).await.is_err() {
                    return;
                }
            }
            Err(frame) => {
                if let Ok(trailers) = frame.into_trailers() {
                    let _ = send.send_trailers(trailers);
                    return;
                }
            }
        }
    }
}

/// Sends `data` as the stream's send window allows.
async fn send_flow_controlled(send: &mut SendStream<Bytes>, mut data: Bytes) -> Result<(), ()> {
    while !data.is_empty() {
        send.reserve_capacity(data.len());
        let n = match poll_fn(|cx| send.poll_capacity(cx)).await {
            Some(Ok(n)) => n,
            _ => return Err(()),
        };
        if n == 0 {
            continue;
        }
        let chunk = data.split_to(n.min(data.len()));
        send.send_data(chunk, false).map_err(|_| ())?;
    }
    Ok(())
}

/// h2's request body as an `http_body::Body` (received bytes are released to the peer's window
/// as they are handed on).
pub struct RecvBody {
    inner: RecvStream,
    data_done: bool,
}

impl RecvBody {
    /// Wraps a request body.
    pub fn new(inner: RecvStream) -> RecvBody {
        RecvBody {
            inner,
            data_done: false,
        }
    }
}

impl http_body::Body for RecvBody {
    type Data = Bytes;
    type Error = h2::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, h2::Error>>> {
        let this = &mut *self;
        if !this.data_done {
            match ready!(this.inner.poll_data(cx)) {
                Some(Ok(b)) => {
                    let _ = this.inner.flow_control().release_capacity(b.len());
                    return Poll::Ready(Some(Ok(Frame::data(b))));
                }
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                None => this.data_done = true,
            }
        }
        match ready!(this.inner.poll_trailers(cx)) {
            Ok(Some(t)) => Poll::Ready(Some(Ok(Frame::trailers(t)))),
            Ok(None) => Poll::Ready(None),
            Err(e) => Poll::Ready(Some(Err(e))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
}

/// Counts the polls of the task that owns a connection: [`Coalesce`] writes its buffer at
/// most once per poll of that task.
#[derive(Clone, Default)]
pub struct TaskPolls(Arc<AtomicU64>);

impl TaskPolls {
    fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }

    /// Counts one poll.
    pub fn bump(&self) {
        self.0.fetch_add(1, Relaxed);
    }
}

/// A future that counts its polls in a [`TaskPolls`].
struct Counted<F> {
    polls: TaskPolls,
    inner: Pin<Box<F>>,
}

impl<F: Future> Future for Counted<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        self.polls.bump();
        self.inner.as_mut().poll(cx)
    }
}

/// Most bytes [`Coalesce`] holds before a write goes out at once.
const COALESCE_LIMIT: usize = 64 * 1024;

/// Write coalescing for h2 (module doc). `poll_flush` does not write: it marks the buffer due
/// and wakes the task; the first `poll_read` in a *later* poll of the task (h2 reads the socket
/// on every poll of the connection, and the connection's `select!` polls it at least once per
/// task poll) or `poll_shutdown` writes it out. So every response produced in one task poll —
/// each `accept` of a new stream polls h2 again within the same task poll — leaves in one
/// `write`. Writes bigger than the limit go straight on.
///
/// Worked example: one task poll reads 10 requests (one `read`), accepts them one by one and
/// completes them; h2 writes each response into the buffer and "flushes" (deferred) after each.
/// The task's self-wake polls it again; the first `poll_read` then writes the 10 responses in one
/// `write`.
///
/// Invariant: bytes accepted by `poll_write` are written before any byte of a later call, and
/// a flush that returned `Ready` is followed by a wake-up of the task that owns the connection,
/// so buffered bytes never wait for the peer.
pub struct Coalesce<IO> {
    io: IO,
    buf: Vec<u8>,
    /// Bytes of `buf` already written.
    pos: usize,
    /// A flush was requested since the buffer was last written out.
    flush_due: bool,
    /// The owning task's polls, and the poll in which the due flush was requested.
    polls: TaskPolls,
    flush_poll: u64,
}

impl<IO> Coalesce<IO> {
    /// Wraps `io`, owned by the task whose polls `polls` counts.
    pub fn new(io: IO, polls: TaskPolls) -> Coalesce<IO> {
        Coalesce {
            io,
            buf: Vec::with_capacity(16 * 1024),
            pos: 0,
            flush_due: false,
            polls,
            flush_poll: 0,
        }
    }
}

impl<IO: AsyncWrite + Unpin> Coalesce<IO> {
    /// Writes the buffer out.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.pos < self.buf.len() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.buf[self.pos..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.pos += n;
        }
        self.buf.clear();
        self.pos = 0;
        Poll::Ready(Ok(()))
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncRead for Coalesce<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.flush_due && this.polls.get() != this.flush_poll {
            match this.poll_drain(cx) {
                Poll::Ready(Ok(())) => this.flush_due = false,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                // The socket's write readiness wakes the task; reading goes on meanwhile.
                Poll::Pending => {}
            }
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Coalesce<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.buf.len() + data.len() > COALESCE_LIMIT {
            ready!(this.poll_drain(cx))?;
            if data.len() > COALESCE_LIMIT {
                return Pin::new(&mut this.io).poll_write(cx, data);
            }
        }
        this.buf.extend_from_slice(data);
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.pos < this.buf.len() {
            if !this.flush_due {
                this.flush_due = true;
                this.flush_poll = this.polls.get();
                cx.waker().wake_by_ref();
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

/// A stream whose first bytes were already read (while sniffing the protocol): they are read
/// again first.
pub struct Rewind<IO> {
    prefix: Bytes,
    io: IO,
}

impl<IO> Rewind<IO> {
    /// `prefix` is returned by reads before `io`'s bytes.
    pub fn new(prefix: Bytes, io: IO) -> Rewind<IO> {
        Rewind { prefix, io }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Rewind<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix[..n]);
            this.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

crate::h2fix::write_through!(Rewind);

/// Reads until the bytes decide the protocol: `true` if they start with the HTTP/2 preface.
/// Returns the bytes read (to be replayed with [`Rewind`]).
pub async fn sniff_http2<IO: AsyncRead + Unpin>(io: &mut IO) -> io::Result<(bool, Bytes)> {
    use tokio::io::AsyncReadExt;
    let preface = crate::h2fix::PREFACE;
    let mut buf = BytesMut::with_capacity(4096);
    loop {
        let n = buf.len().min(preface.len());
        if buf[..n] != preface[..n] {
            return Ok((false, buf.freeze()));
        }
        if n == preface.len() {
            return Ok((true, buf.freeze()));
        }
        if io.read_buf(&mut buf).await? == 0 {
            return Ok((false, buf.freeze()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn sniff_and_rewind_replay_the_bytes() {
        let input = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\nrest".to_vec();
        let mut r = std::io::Cursor::new(input.clone());
        let (h2, prefix) = sniff_http2(&mut r).await.unwrap();
        assert!(h2);
        let mut all = Vec::new();
        Rewind::new(prefix, r).read_to_end(&mut all).await.unwrap();
        assert_eq!(all, input);
        let mut r = std::io::Cursor::new(b"GET / HTTP/1.1\r\n".to_vec());
        let (h2, prefix) = sniff_http2(&mut r).await.unwrap();
        assert!(!h2);
        assert_eq!(&prefix[..], b"GET / HTTP/1.1\r\n");
        let mut r = std::io::Cursor::new(b"PRI".to_vec());
        assert!(!sniff_http2(&mut r).await.unwrap().0, "EOF mid-preface");
    }

    #[tokio::test]
    async fn coalesce_holds_writes_until_the_next_read() {
        let (a, mut b) = tokio::io::duplex(1 << 20);
        let polls = TaskPolls::default();
        let mut c = Coalesce::new(a, polls.clone());
        c.write_all(b"one").await.unwrap();
        c.write_all(b"two").await.unwrap();
        c.flush().await.unwrap();
        // A read in the same task poll does not write the buffer out.
        b.write_all(b"xy").await.unwrap();
        let mut one = [0u8; 1];
        c.read_exact(&mut one).await.unwrap();
        let mut probe = [0u8; 16];
        let r = tokio::time::timeout(std::time::Duration::from_millis(20), b.read(&mut probe));
        assert!(r.await.is_err(), "bytes went out before the deferred flush");
        // The first read of a later poll writes it out first.
        polls.bump();
        c.read_exact(&mut one).await.unwrap();
        let mut got = [0u8; 6];
        b.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"onetwo");
        // Shutdown writes what is left.
        c.write_all(b"end").await.unwrap();
        c.shutdown().await.unwrap();
        let mut rest = Vec::new();
        b.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b"end");
    }

    #[test]
    fn drain_finished_takes_every_ready_stream_in_one_poll() {
        use std::sync::atomic::AtomicUsize;
        let done = AtomicUsize::new(0);
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let mut set = FuturesUnordered::new();
        let finish = |n: usize| {
            let done = &done;
            async move {
                done.fetch_add(n, Relaxed);
            }
        };
        let waiting = async {
            let _ = rx.await;
            done.fetch_add(100, Relaxed);
        };
        set.push(futures_util::future::Either::Left(waiting));
        for n in [1, 2, 3] {
            set.push(futures_util::future::Either::Right(finish(n)));
        }
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        assert_eq!(drain_finished(&mut set, &mut cx), Poll::Ready(()));
        assert_eq!(
            done.load(Relaxed),
            6,
            "all three ready streams ran in one poll"
        );
        assert_eq!(set.len(), 1);
        assert_eq!(drain_finished(&mut set, &mut cx), Poll::Pending);
        tx.send(()).unwrap();
        assert_eq!(drain_finished(&mut set, &mut cx), Poll::Ready(()));
        assert_eq!(done.load(Relaxed), 106);
        assert!(set.is_empty());
    }

    #[test]
    fn hot_method_slots_follow_all() {
        for (i, m) in HotMethod::ALL.into_iter().enumerate() {
            assert_eq!(m.slot(), i);
            let req = Request::builder()
                .uri(m.path())
                .header(http::header::CONTENT_TYPE, "application/grpc")
                .body(())
                .unwrap();
            assert_eq!(HotMethod::of(&req), Some(m));
        }
    }

    #[test]
    fn encode_prefixes_the_message() {
        let m = crate::pb::etcdserverpb::PutResponse::default();
        assert_eq!(&encode(&m).unwrap()[..], &[0, 0, 0, 0, 0]);
        let m = crate::pb::etcdserverpb::RangeRequest {
            key: Bytes::from_static(b"k"),
            ..Default::default()
        };
        let e = encode(&m).unwrap();
        assert_eq!(&e[..5], &[0, 0, 0, 0, 3]);
        assert_eq!(
            crate::pb::etcdserverpb::RangeRequest::decode(&e[5..]).unwrap(),
            m
        );
    }
}

#[cfg(test)]
mod size_tests {
    use super::*;
    use crate::raft_backed::RaftBackedNode;
    use tonic::metadata::MetadataMap;

    /// The size of the future `f` would return, without calling it.
    fn size_of_ret<F>(_: impl FnOnce() -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// A thin stream's future is copied into its `FuturesUnordered` task and held while the
    /// call waits (~1000 of them at 1000 clients), so its size is CPU per request: it must
    /// not hold the request's headers or a linearizable read's wait, nor keep a second slot
    /// for its call. 1,552 bytes in session 8; 792 since (dev profile).
    #[test]
    #[allow(unreachable_code, clippy::diverging_sub_expression)]
    fn a_thin_stream_future_stays_small() {
        let serve = size_of_ret(|| {
            serve_hot::<RaftBackedNode>(
                unreachable!(),
                HotMethod::Put,
                unreachable!(),
                unreachable!(),
                unreachable!(),
            )
        });
        let put = size_of_ret(|| {
            kv::put_rpc::<RaftBackedNode>(unreachable!(), unreachable!(), unreachable!())
        });
        let range = size_of_ret(|| {
            kv::range_rpc::<RaftBackedNode>(unreachable!(), unreachable!(), unreachable!())
        });
        let md = std::mem::size_of::<MetadataMap>();
        assert!(
            serve <= 900,
            "serve_hot future {serve} bytes (put_rpc {put}, range_rpc {range})"
        );
        assert!(
            put <= 600 && range <= 600,
            "put_rpc {put} bytes, range_rpc {range} bytes (metadata {md})"
        );
    }
}

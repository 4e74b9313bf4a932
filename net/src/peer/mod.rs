//! The peer transport: raft messages between members over the peer URLs (design.md,
//! "## Peer transport", has the protocol and the byte diagrams; `frame.rs` the bytes).
//!
//! ```text
//!  raft core ──send(msgs)──► per-peer bounded queue ──► sender thread ──TCP──► listener
//!     ▲  (try_send; full → report_unreachable)          (one connection,        │ reader thread
//!     │                                                  batches all queued,     │ per connection
//!     └───────────────────────── RaftNode::step ◄──────── reconnect + backoff)  ◄┘
//! ```
//!
//! The fast path skips the queue: when nothing waits in it and the connection is free, the
//! raft core writes the frame itself with one non-blocking `send(2)` (no thread wake-up per
//! message); if the socket would block, the messages go to the queue as before.
//!
//! Threads, not tokio: each peer has one sender thread owning its outgoing connection, and
//! every accepted connection one reader thread. A connection carries one direction only, so
//! two members talking hold two connections (one each way), like etcd's stream pairs.
//!
//! Invariants:
//! 1. `send` never blocks the raft core: queues are bounded and a full queue drops the message
//!    and reports the member unreachable (raft-rs then probes; nothing is lost that raft
//!    does not resend).
//! 2. Every connection starts with a hello naming cluster, sender and target; the accepting
//!    side refuses another cluster's member, a hello for another member and a removed member,
//!    with a log line naming both IDs, before reading any raft message.
//! 3. A frame whose checksum fails closes the connection (and names the stream offset); the
//!    sender reconnects and raft resends.
//! 4. A MsgSnapshot never waits in a peer's message connection: it goes to that peer's
//!    snapshot thread, which streams a backend copy on a connection of its own and reports
//!    `report_snapshot` exactly once per message it took (Finish only after the receiver
//!    acknowledged; the receiver acknowledges only after the file is durable under
//!    `{index:016x}.snap.db` and the message stepped). A duplicate arriving while one runs is
//!    dropped without a report: the running one reports. The message's metadata is replaced
//!    by the copy's index, that entry's term and the configuration applied up to it (when the
//!    node knows the term), as etcd does: the file is newer than the raft snapshot.
//! 5. Frames to a peer leave in the order of the `send` calls that made them, whether the raft
//!    core wrote them itself or the sender thread did: the core writes only when the peer's
//!    `backlog` (items queued for the sender thread and not yet written) is 0, checked while
//!    holding the peer's `Link`; the sender thread lowers `backlog` only while holding it,
//!    after its write. A frame the core could write only in part leaves its tail in
//!    `Link::pending`, counted in `backlog`, and nothing else is written before that tail.

mod frame;

use std::collections::{HashMap, HashSet};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError, bounded};
use parking_lot::{Mutex, RwLock};
use ringkv_engine::{
    File, OpenOptions, RaftConfState, RaftMessage, RaftMessageType, RaftNode, Transport, Vfs,
};

use self::frame::{Hello, Status, StreamKind};
use crate::node::{NetworkMetrics, PeerMetrics};
use crate::tls::{PeerStream, SideTls, is_tls_url};

/// Messages queued per peer before `send` starts dropping (raft-rs keeps at most 256
/// appends in flight per follower, plus heartbeats and votes).
const QUEUE_PER_PEER: usize = 4096;
/// Most bytes of messages put into one frame.
const MAX_BATCH_BYTES: usize = 4 << 20;
/// Most messages a reader thread gathers from frames it has already read before handing them
/// to raft.
const MAX_STEPPED_AT_ONCE: usize = 1024;
/// Reconnect backoff: first wait and cap.
const BACKOFF_MIN: Duration = Duration::from_millis(20);
const BACKOFF_MAX: Duration = Duration::from_secs(1);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a hello or its reply may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one write of a message connection may stall before the sender gives the
/// connection up and redials (etcd's rafthttp uses 5 s too): a peer that stops reading must
/// not wedge the sender thread, and with it every message queued for that peer.
const PEER_WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one read or write of a snapshot connection may stall (the receiver's
/// acknowledgement waits for an fsync and a rename).
const SNAPSHOT_IO_TIMEOUT: Duration = Duration::from_secs(30);

/// What the transport needs to know about this member.
#[derive(Clone, Debug)]
pub struct PeerConfig {
    pub cluster_id: u64,
    pub member_id: u64,
}

/// A consistent copy of a member's backend file and the raft state it holds.
pub struct BackendCopy {
    /// The copy's bytes (read while the transfer streams them; dropped when it ends).
    pub data: Box<dyn Read + Send>,
    /// How many bytes `data` yields.
    pub len: u64,
    /// Its consistent index: the last entry applied into it.
    pub index: u64,
    /// The term of that entry; 0 when not known (the MsgSnapshot's metadata is then sent
    /// unchanged).
    pub term: u64,
    /// The configuration applied up to `index`.
    pub voters: Vec<u64>,
    pub learners: Vec<u64>,
}

/// The files a snapshot transfer reads and writes, supplied by the node.
pub struct SnapshotFiles {
    /// Makes a consistent copy of this member's backend file (committed up to the applied
    /// index, so its consistent index is at least any snapshot's).
    pub copy_backend: Box<dyn Fn() -> io::Result<BackendCopy> + Send + Sync>,
    /// Where the backend file received for a snapshot at `index` goes
    /// (`member/snap/{index:016x}.snap.db`, where the node's restore looks for it).
    pub received_path: Box<dyn Fn(u64) -> io::Result<PathBuf> + Send + Sync>,
    /// The file system received files are written through (the node's).
    pub vfs: Arc<dyn Vfs>,
}

/// Counters of the link to one peer and of the snapshots exchanged with it (`/metrics`,
/// [`PeerTransport::metrics`]).
#[derive(Default)]
struct LinkStats {
    connected: AtomicBool,
    disconnects: AtomicU64,
    dial_failures: AtomicU64,
    /// The wait before the next dial, in ms; 0 while connected.
    backoff_ms: AtomicU64,
    snapshots_sent: AtomicU64,
    snapshot_send_failures: AtomicU64,
    snapshots_received: AtomicU64,
    snapshot_receive_failures: AtomicU64,
}

impl LinkStats {
    fn read(&self, id: u64) -> PeerMetrics {
        let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
        PeerMetrics {
            id,
            connected: self.connected.load(Ordering::Acquire),
            disconnects: n(&self.disconnects),
            dial_failures: n(&self.dial_failures),
            redial_backoff_seconds: n(&self.backoff_ms) as f64 / 1000.0,
            snapshots_sent: n(&self.snapshots_sent),
            snapshot_send_failures: n(&self.snapshot_send_failures),
            snapshots_received: n(&self.snapshots_received),
            snapshot_receive_failures: n(&self.snapshot_receive_failures),
        }
    }
}

struct PeerSender {
    tx: Sender<Outgoing>,
    link: Arc<Mutex<Link>>,
    /// Items put into `tx` and not yet written (or dropped) by the sender thread. The core
    /// writes to the socket itself only when this is 0, so frames keep the order of `send`
    /// calls (invariant 5).
    backlog: Arc<AtomicUsize>,
    urls: Arc<RwLock<Vec<String>>>,
    stop: Arc<AtomicBool>,
}

/// What the raft core hands a peer's sender thread.
enum Outgoing {
    Msg(RaftMessage),
    /// The core wrote the head of a frame itself and left the tail in [`Link::pending`]:
    /// the sender writes it before anything else.
    Flush,
}

/// A peer's outgoing message connection, shared by its sender thread and the raft core.
/// Whoever holds the lock may write to `stream`; the sender thread holds it across its
/// (blocking, timed-out) writes, so a core finding it taken queues instead of waiting.
#[derive(Default)]
struct Link {
    /// The connection once the sender thread connected it; `None` while down.
    stream: Option<PeerStream>,
    /// The tail of a frame the core began and could not finish without blocking; the
    /// connection carries nothing else until it is written.
    pending: Vec<u8>,
}

impl PeerSender {
    /// Writes `msgs` (all for this peer) on the raft core's own thread, without blocking and
    /// without a thread hand-off: only when nothing is queued for the sender thread, the
    /// connection is up and free, and no snapshot is among them. A frame the socket takes only
    /// in part has its tail handed to the sender thread ([`Outgoing::Flush`]). Gives the
    /// messages back when they must be queued instead.
    fn try_write_direct(&self, msgs: Vec<RaftMessage>) -> Result<(), Vec<RaftMessage>> {
        if self.backlog.load(Ordering::Acquire) != 0
            || msgs
                .iter()
                .any(|m| m.get_msg_type() == RaftMessageType::MsgSnapshot)
        {
            return Err(msgs);
        }
        let Some(mut link) = self.link.try_lock() else {
            return Err(msgs);
        };
        // Checked again under the lock: the sender thread lowers `backlog` only while
        // holding it, after its write.
        if self.backlog.load(Ordering::Acquire) != 0 || !link.pending.is_empty() {
            return Err(msgs);
        }
        // A TLS connection cannot take a partial non-blocking write of its records: it is
        // written by the sender thread only.
        let Some(stream) = link.stream.as_ref().and_then(PeerStream::plain_tcp) else {
            return Err(msgs);
        };
        let Ok(buf) = encode_batch_frame(&msgs) else {
            return Err(msgs);
        };
        match send_nonblocking(stream, &buf) {
            Ok(n) if n == buf.len() => Ok(()),
            Ok(n) if n > 0 => {
                link.pending = buf[n..].to_vec();
                self.backlog.fetch_add(1, Ordering::AcqRel);
                drop(link);
                if self.tx.try_send(Outgoing::Flush).is_err() {
                    // The sender thread is gone (the peer was removed): nobody writes again.
                    self.backlog.fetch_sub(1, Ordering::AcqRel);
                }
                Ok(())
            }
            Ok(_) => Err(msgs),
            Err(e)
                if e.kind() == io::ErrorKind::WouldBlock
                    || e.kind() == io::ErrorKind::Interrupted =>
            {
                Err(msgs)
            }
            Err(e) => {
                // Hand the connection back to the sender thread broken: its next write
                // finds no stream and it redials (the queued messages then wake it).
                tracing::debug!("write to peer failed on the raft thread: {e}");
                let _ = stream.shutdown(Shutdown::Both);
                link.stream = None;
                Err(msgs)
            }
        }
    }
}

/// Encodes `msgs` as one frame; refuses (the sender thread then splits them) when they hold
/// more than [`MAX_BATCH_BYTES`].
fn encode_batch_frame(msgs: &[RaftMessage]) -> io::Result<Vec<u8>> {
    let mut batch = Vec::with_capacity(msgs.len());
    let mut bytes = 0;
    for m in msgs {
        let b = protobuf::Message::write_to_bytes(m)
            .map_err(|e| io::Error::other(format!("encode raft message: {e}")))?;
        bytes += b.len();
        if bytes > MAX_BATCH_BYTES {
            return Err(io::Error::other("too large for one frame"));
        }
        batch.push(b);
    }
    let mut buf = Vec::with_capacity(batch.iter().map(|b| b.len() + 4).sum::<usize>() + 16);
    frame::encode_frame(&batch, &mut buf);
    Ok(buf)
}

/// One `send(2)` that never blocks (`MSG_DONTWAIT`, for this call only: the sender thread
/// keeps using the socket in blocking mode) and raises no SIGPIPE.
fn send_nonblocking(s: &TcpStream, buf: &[u8]) -> io::Result<usize> {
    use std::os::fd::AsRawFd;
    // SAFETY: `buf` is valid for reads of `buf.len()` bytes for the whole call, and the fd
    // is open: `s` owns it and is borrowed for the call.
    let n = unsafe {
        libc::send(
            s.as_raw_fd(),
            buf.as_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

struct Shared {
    cfg: PeerConfig,
    /// [`PEER_WRITE_TIMEOUT`] (shorter in tests).
    write_timeout: Duration,
    /// Set once raft started (the transport exists before the node it reports to).
    raft: OnceLock<RaftNode>,
    peers: Mutex<HashMap<u64, PeerSender>>,
    /// Members removed from the cluster: their connections are refused.
    removed: RwLock<HashSet<u64>>,
    /// A peer told us we were removed.
    self_removed: AtomicBool,
    stopping: AtomicBool,
    /// Accepted message connections by a serial number, shut down on stop so their reader
    /// threads end. A reader thread removes (and shuts down) its own entry when it ends for
    /// any reason (`Accepted`), so a connection closed for a bad frame is really closed.
    accepted: Mutex<HashMap<u64, PeerStream>>,
    next_accepted: std::sync::atomic::AtomicU64,
    /// Answers a cluster query: the member list as JSON (membership.rs records).
    member_list: RwLock<Option<MemberListFn>>,
    /// Source and destination of snapshot transfers (none: snapshots are reported failed).
    snapshot_files: RwLock<Option<Arc<SnapshotFiles>>>,
    /// Peer TLS (tls.rs): dials `https://` peer URLs; accepts with it when `listen_tls`.
    tls: OnceLock<Arc<SideTls>>,
    listen_tls: AtomicBool,
    /// Per-peer counters, by member ID (kept after a peer is removed).
    stats: Mutex<HashMap<u64, Arc<LinkStats>>>,
    /// Vote requests handed to `send`, by kind (a pre-candidate sends MsgRequestPreVote and
    /// keeps its term; a candidate sends MsgRequestVote in a new term).
    pre_vote_requests: AtomicU64,
    vote_requests: AtomicU64,
}

/// Produces the member list a cluster query is answered with.
pub type MemberListFn = Box<dyn Fn() -> Vec<u8> + Send + Sync>;

/// The peer transport. Cheap to clone.
#[derive(Clone)]
pub struct PeerTransport {
    shared: Arc<Shared>,
}

impl PeerTransport {
    pub fn new(cfg: PeerConfig) -> PeerTransport {
        PeerTransport::with_write_timeout(cfg, PEER_WRITE_TIMEOUT)
    }

    fn with_write_timeout(cfg: PeerConfig, write_timeout: Duration) -> PeerTransport {
        PeerTransport {
            shared: Arc::new(Shared {
                cfg,
                write_timeout,
                raft: OnceLock::new(),
                peers: Mutex::new(HashMap::new()),
                removed: RwLock::new(HashSet::new()),
                self_removed: AtomicBool::new(false),
                stopping: AtomicBool::new(false),
                accepted: Mutex::new(HashMap::new()),
                next_accepted: std::sync::atomic::AtomicU64::new(0),
                member_list: RwLock::new(None),
                snapshot_files: RwLock::new(None),
                tls: OnceLock::new(),
                listen_tls: AtomicBool::new(false),
                stats: Mutex::new(HashMap::new()),
                pre_vote_requests: AtomicU64::new(0),
                vote_requests: AtomicU64::new(0),
            }),
        }
    }

    /// Connects the transport to the raft node it delivers to and reports to.
    pub fn set_raft(&self, raft: RaftNode) {
        let _ = self.shared.raft.set(raft);
    }

    /// Starts (or re-points) the sender for member `id` at `urls`.
    pub fn set_peer(&self, id: u64, urls: Vec<String>) {
        if id == self.shared.cfg.member_id {
            return;
        }
        let mut peers = self.shared.peers.lock();
        if let Some(p) = peers.get(&id) {
            *p.urls.write() = urls;
            return;
        }
        let (tx, rx) = bounded(QUEUE_PER_PEER);
        let urls = Arc::new(RwLock::new(urls));
        let stop = Arc::new(AtomicBool::new(false));
        let link = Arc::new(Mutex::new(Link::default()));
        let backlog = Arc::new(AtomicUsize::new(0));
        let worker = SenderWorker {
            shared: self.shared.clone(),
            to: id,
            urls: urls.clone(),
            stop: stop.clone(),
            rx,
            link: link.clone(),
            backlog: backlog.clone(),
            snapshot_busy: Arc::new(AtomicBool::new(false)),
            stats: self.shared.stats(id),
        };
        let spawned = std::thread::Builder::new()
            .name(format!("ringkv-peer-{id:x}"))
            .spawn(move || worker.run());
        if let Err(e) = spawned {
            tracing::error!("cannot start the sender thread for member {id:x}: {e}");
            return;
        }
        peers.insert(
            id,
            PeerSender {
                tx,
                link,
                backlog,
                urls,
                stop,
            },
        );
    }

    /// Stops talking to member `id` and refuses its connections from now on.
    pub fn remove_peer(&self, id: u64) {
        self.shared.removed.write().insert(id);
        if let Some(p) = self.shared.peers.lock().remove(&id) {
            p.stop.store(true, Ordering::Release);
        }
    }

    /// Sets what a cluster query (a member joining with `--initial-cluster-state existing`)
    /// is answered with.
    pub fn set_member_list(&self, f: MemberListFn) {
        *self.shared.member_list.write() = Some(f);
    }

    /// Sets where snapshot transfers read this member's backend and write received ones.
    pub fn set_snapshot_files(&self, files: SnapshotFiles) {
        *self.shared.snapshot_files.write() = Some(Arc::new(files));
    }

    /// Sets the peer TLS configuration (before [`PeerTransport::listen`]): `https://` peer
    /// URLs are dialed with it, and with `listen` every accepted connection must be TLS.
    pub fn set_tls(&self, tls: Arc<SideTls>, listen: bool) {
        let _ = self.shared.tls.set(tls);
        self.shared.listen_tls.store(listen, Ordering::Release);
    }

    /// The transport's counters, peers sorted by member ID.
    pub fn metrics(&self) -> NetworkMetrics {
        let mut peers: Vec<PeerMetrics> = self
            .shared
            .stats
            .lock()
            .iter()
            .map(|(id, s)| s.read(*id))
            .collect();
        peers.sort_by_key(|p| p.id);
        NetworkMetrics {
            peers,
            pre_vote_requests_sent: self.shared.pre_vote_requests.load(Ordering::Relaxed),
            vote_requests_sent: self.shared.vote_requests.load(Ordering::Relaxed),
        }
    }

    /// Whether a peer refused us because this member was removed from the cluster.
    pub fn self_removed(&self) -> bool {
        self.shared.self_removed.load(Ordering::Acquire)
    }

    /// Binds `addr` and serves incoming peer connections on a thread. Returns the bound
    /// address (port 0 picks one).
    pub fn listen(&self, addr: SocketAddr) -> io::Result<SocketAddr> {
        let listener = TcpListener::bind(addr)?;
        let local = listener.local_addr()?;
        listener.set_nonblocking(true)?;
        let shared = self.shared.clone();
        std::thread::Builder::new()
            .name("ringkv-peer-accept".into())
            .spawn(move || accept_loop(shared, listener))?;
        Ok(local)
    }

    /// Stops every sender and closes every accepted connection.
    pub fn stop(&self) {
        self.shared.stopping.store(true, Ordering::Release);
        for (_, p) in self.shared.peers.lock().drain() {
            p.stop.store(true, Ordering::Release);
        }
        for (_, s) in self.shared.accepted.lock().drain() {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

impl Shared {
    /// The counters of member `id`, created on first use.
    fn stats(&self, id: u64) -> Arc<LinkStats> {
        self.stats.lock().entry(id).or_default().clone()
    }

    fn report_unreachable(&self, to: u64, snapshot: bool) {
        if let Some(raft) = self.raft.get() {
            raft.report_unreachable(to);
            if snapshot {
                raft.report_snapshot(to, true);
            }
        }
    }
}

impl Transport for PeerTransport {
    fn send(&self, msgs: Vec<RaftMessage>) {
        // Per peer, in the order given (a Ready holds a few peers' messages).
        let mut by_peer: Vec<(u64, Vec<RaftMessage>)> = Vec::new();
        for m in msgs {
            match m.get_msg_type() {
                RaftMessageType::MsgRequestPreVote => {
                    self.shared
                        .pre_vote_requests
                        .fetch_add(1, Ordering::Relaxed);
                }
                RaftMessageType::MsgRequestVote => {
                    self.shared.vote_requests.fetch_add(1, Ordering::Relaxed);
                }
                _ => {}
            }
            match by_peer.iter_mut().find(|(to, _)| *to == m.to) {
                Some((_, v)) => v.push(m),
                None => by_peer.push((m.to, vec![m])),
            }
        }
        let peers = self.shared.peers.lock();
        for (to, msgs) in by_peer {
            let Some(p) = peers.get(&to) else {
                tracing::debug!("raft message to unknown member {to:x} dropped");
                continue;
            };
            let Err(msgs) = p.try_write_direct(msgs) else {
                continue;
            };
            for m in msgs {
                let snapshot = m.get_msg_type() == RaftMessageType::MsgSnapshot;
                p.backlog.fetch_add(1, Ordering::AcqRel);
                match p.tx.try_send(Outgoing::Msg(m)) {
                    Ok(()) => {}
                    Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                        p.backlog.fetch_sub(1, Ordering::AcqRel);
                        self.shared.report_unreachable(to, snapshot);
                    }
                }
            }
        }
    }
}

fn peer_addr(url: &str) -> Option<SocketAddr> {
    let hostport = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .unwrap_or(url);
    let hostport = hostport.split('/').next()?;
    hostport.to_socket_addrs().ok()?.next()
}

struct SenderWorker {
    shared: Arc<Shared>,
    to: u64,
    urls: Arc<RwLock<Vec<String>>>,
    stop: Arc<AtomicBool>,
    rx: Receiver<Outgoing>,
    link: Arc<Mutex<Link>>,
    backlog: Arc<AtomicUsize>,
    /// A snapshot transfer to this peer is under way (raft-rs sends one at a time; a
    /// duplicate meanwhile is dropped, the running one reports).
    snapshot_busy: Arc<AtomicBool>,
    stats: Arc<LinkStats>,
}

impl SenderWorker {
    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Acquire) || self.shared.stopping.load(Ordering::Acquire)
    }

    fn run(self) {
        let mut backoff = BACKOFF_MIN;
        let mut logged_down = false;
        while !self.stopped() {
            match self.connect() {
                Ok(stream) => {
                    if logged_down {
                        tracing::info!("peer {:x} is reachable again", self.to);
                    }
                    logged_down = false;
                    backoff = BACKOFF_MIN;
                    self.stats.backoff_ms.store(0, Ordering::Relaxed);
                    // Release: a reader that sees `connected` sees the reset wait.
                    self.stats.connected.store(true, Ordering::Release);
                    let ended = self.stream(stream);
                    self.stats.connected.store(false, Ordering::Release);
                    if let Err(e) = ended {
                        self.stats.disconnects.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!("connection to peer {:x} ended: {e}", self.to);
                        self.shared.report_unreachable(self.to, false);
                    }
                }
                Err(e) => {
                    if !logged_down {
                        tracing::warn!("cannot reach peer {:x}: {e}", self.to);
                        logged_down = true;
                    }
                    // What queued meanwhile would be stale by the time we connect: drop it
                    // and let raft know (it resends after a probe).
                    let mut snapshot = false;
                    let mut any = false;
                    for m in self.rx.try_iter() {
                        self.backlog.fetch_sub(1, Ordering::AcqRel);
                        if let Outgoing::Msg(m) = m {
                            any = true;
                            snapshot |= m.get_msg_type() == RaftMessageType::MsgSnapshot;
                        }
                    }
                    if any {
                        self.shared.report_unreachable(self.to, snapshot);
                    }
                    // Bounded exponential backoff: 20 ms, 40 ms, … doubling per failed dial,
                    // at most 1 s between dials of a member that stays down.
                    self.stats.dial_failures.fetch_add(1, Ordering::Relaxed);
                    self.stats
                        .backoff_ms
                        .store(backoff.as_millis() as u64, Ordering::Relaxed);
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
        let mut link = self.link.lock();
        if let Some(s) = link.stream.take() {
            let _ = s.shutdown(Shutdown::Both);
        }
        link.pending.clear();
    }

    fn connect(&self) -> io::Result<PeerStream> {
        dial(&self.shared, self.to, &self.urls, StreamKind::Messages)
    }

    /// Publishes the connection to the raft core ([`Link`]) and sends batches until it fails
    /// or the worker stops.
    fn stream(&self, s: PeerStream) -> io::Result<()> {
        s.set_write_timeout(Some(self.shared.write_timeout))?;
        {
            let mut link = self.link.lock();
            // A tail left for an earlier connection belongs to a frame that connection
            // never finished; it means nothing on this one.
            link.pending.clear();
            link.stream = Some(s.try_clone()?);
        }
        let r = self.send_batches();
        if r.is_err() || self.stopped() {
            let mut link = self.link.lock();
            link.stream = None;
            link.pending.clear();
            let _ = s.shutdown(Shutdown::Both);
        }
        r
    }

    fn send_batches(&self) -> io::Result<()> {
        let mut buf = Vec::with_capacity(64 * 1024);
        let mut batch: Vec<Vec<u8>> = Vec::new();
        loop {
            if self.stopped() {
                return Ok(());
            }
            let first = match self.rx.recv_timeout(Duration::from_millis(100)) {
                Ok(m) => m,
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => return Ok(()),
            };
            batch.clear();
            let mut bytes = 0;
            let mut taken = 0;
            let mut snapshots = Vec::new();
            let mut encoded = Ok(());
            for item in std::iter::once(first).chain(self.rx.try_iter()) {
                taken += 1;
                let Outgoing::Msg(m) = item else {
                    continue;
                };
                if m.get_msg_type() == RaftMessageType::MsgSnapshot {
                    snapshots.push(m);
                    continue;
                }
                match protobuf::Message::write_to_bytes(&m) {
                    Ok(b) => {
                        bytes += b.len();
                        batch.push(b);
                    }
                    Err(e) => {
                        encoded = Err(io::Error::other(format!("encode raft message: {e}")));
                        break;
                    }
                }
                if bytes >= MAX_BATCH_BYTES {
                    break;
                }
            }
            for snap in snapshots {
                // The backend file travels on a connection of its own: this one keeps
                // carrying heartbeats and appends meanwhile.
                self.start_snapshot(snap);
            }
            buf.clear();
            if !batch.is_empty() {
                frame::encode_frame(&batch, &mut buf);
            }
            // Invariant 5: the backlog drops only under the link's lock, after the write.
            let mut link = self.link.lock();
            let written = encoded.and_then(|()| {
                let s = link
                    .stream
                    .as_ref()
                    .ok_or_else(|| io::Error::other("the connection broke on the raft thread"))?;
                let mut w: &PeerStream = s;
                if !link.pending.is_empty() {
                    w.write_all(&link.pending)?;
                }
                if !buf.is_empty() {
                    w.write_all(&buf)?;
                }
                // Pushes out TLS records still buffered (nothing for plain TCP).
                w.flush()
            });
            link.pending.clear();
            self.backlog.fetch_sub(taken, Ordering::AcqRel);
            drop(link);
            written?;
        }
    }

    /// Sends `msg` (a MsgSnapshot) with a copy of the backend on a connection of its own, on a
    /// thread of its own, and reports the outcome to raft.
    fn start_snapshot(&self, msg: RaftMessage) {
        let index = msg.get_snapshot().get_metadata().index;
        if self.snapshot_busy.swap(true, Ordering::AcqRel) {
            tracing::debug!(
                "snapshot at index {index} for member {:x}: one is already being sent",
                self.to
            );
            return;
        }
        let shared = self.shared.clone();
        let urls = self.urls.clone();
        let busy = self.snapshot_busy.clone();
        let stats = self.stats.clone();
        let to = self.to;
        let spawned = std::thread::Builder::new()
            .name(format!("ringkv-snap-{to:x}"))
            .spawn(move || {
                let result = send_snapshot(&shared, to, &urls, msg);
                busy.store(false, Ordering::Release);
                match result {
                    Ok(len) => {
                        stats.snapshots_sent.fetch_add(1, Ordering::Relaxed);
                        tracing::info!(
                            "sent the snapshot at index {index} ({len} bytes) to member {to:x}"
                        );
                        if let Some(raft) = shared.raft.get() {
                            raft.report_snapshot(to, false);
                        }
                    }
                    Err(e) => {
                        stats.snapshot_send_failures.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(
                            "sending the snapshot at index {index} to member {to:x} failed: {e}"
                        );
                        shared.report_unreachable(to, true);
                    }
                }
            });
        if let Err(e) = spawned {
            self.snapshot_busy.store(false, Ordering::Release);
            tracing::warn!(
                "cannot start a snapshot sender for member {:x}: {e}",
                self.to
            );
            self.shared.report_unreachable(self.to, true);
        }
    }
}

/// One snapshot transfer: copy the backend, connect, send the MsgSnapshot frame and the file's
/// chunks, wait for the receiver's acknowledgement. Returns the file's length.
fn send_snapshot(
    shared: &Shared,
    to: u64,
    urls: &RwLock<Vec<String>>,
    msg: RaftMessage,
) -> io::Result<u64> {
    let files = shared
        .snapshot_files
        .read()
        .clone()
        .ok_or_else(|| io::Error::other("this member cannot send snapshots"))?;
    // Connect before copying: a copy commits and pins the backend under the store's write
    // lock, and raft-rs asks again after every failure, so a member that is down must cost a
    // refused dial, not a backend copy, per attempt.
    let mut s = dial(shared, to, urls, StreamKind::Snapshot)?;
    let mut at = (files.copy_backend)()?;
    let mut msg = msg;
    let meta = msg.mut_snapshot().mut_metadata();
    if at.term != 0 && at.index >= meta.index {
        // Invariant 4 of this module: the metadata says what the file holds (newer than the
        // raft snapshot, and with the current configuration: a member added since the raft
        // snapshot was taken refuses a snapshot whose configuration lacks it).
        meta.index = at.index;
        meta.term = at.term;
        meta.set_conf_state(RaftConfState::from((
            std::mem::take(&mut at.voters),
            std::mem::take(&mut at.learners),
        )));
    }
    s.set_read_timeout(Some(SNAPSHOT_IO_TIMEOUT))?;
    s.set_write_timeout(Some(SNAPSHOT_IO_TIMEOUT))?;
    let mut w =
        BufWriter::with_capacity(frame::SNAP_CHUNK + frame::SNAP_RECORD_LEN, s.try_clone()?);
    let encoded = protobuf::Message::write_to_bytes(&msg)
        .map_err(|e| io::Error::other(format!("encode raft message: {e}")))?;
    let mut buf = Vec::new();
    frame::encode_frame(&[encoded], &mut buf);
    w.write_all(&buf)?;
    let len = frame::write_snapshot_file(&mut at.data, &mut w)
        .map_err(|e| io::Error::new(e.kind(), format!("streaming the backend copy: {e}")))?;

    w.flush()?;
    let mut reply = [0u8; frame::REPLY_LEN];
    s.read_exact(&mut reply).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("no acknowledgement from the receiver: {e}"),
        )
    })?;
    match frame::decode_reply(&reply)? {
        (Status::Ok, _) => Ok(len),
        (status, _) => Err(io::Error::other(format!(
            "the receiver refused it ({status:?})"
        ))),
    }
}

/// Connects to one of `urls` of member `to` and says hello for a `kind` connection.
fn dial(
    shared: &Shared,
    to: u64,
    urls: &RwLock<Vec<String>>,
    kind: StreamKind,
) -> io::Result<PeerStream> {
    let urls = urls.read().clone();
    let mut last = io::Error::new(io::ErrorKind::NotFound, "no peer URL");
    for url in &urls {
        let Some(addr) = peer_addr(url) else {
            last = io::Error::new(io::ErrorKind::InvalidInput, format!("bad peer URL {url:?}"));
            continue;
        };
        let connected = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)
            .and_then(|tcp| wrap_dialed(shared.tls.get().map(|t| &**t), tcp, url));
        match connected {
            Ok(s) => return handshake(shared, to, kind, s, url),
            Err(e) => last = io::Error::new(e.kind(), format!("{url}: {e}")),
        }
    }
    Err(last)
}

/// A dialed connection to `url`: TLS when the URL says `https://` (tls.rs), else plain; the
/// TLS handshake completes here, bounded by [`HANDSHAKE_TIMEOUT`].
fn wrap_dialed(tls: Option<&SideTls>, tcp: TcpStream, url: &str) -> io::Result<PeerStream> {
    if !is_tls_url(url) {
        return Ok(PeerStream::plain(tcp));
    }
    let Some(tls) = tls else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "an https peer URL needs --peer-cert-file/--peer-key-file or --peer-auto-tls",
        ));
    };
    tcp.set_nodelay(true)?;
    tcp.set_read_timeout(Some(HANDSHAKE_TIMEOUT))?;
    tcp.set_write_timeout(Some(HANDSHAKE_TIMEOUT))?;
    let s = PeerStream::client(tcp, &tls.client, url)?;
    s.handshake()?;
    Ok(s)
}

fn handshake(
    shared: &Shared,
    to: u64,
    kind: StreamKind,
    mut s: PeerStream,
    url: &str,
) -> io::Result<PeerStream> {
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(HANDSHAKE_TIMEOUT))?;
    s.set_write_timeout(Some(HANDSHAKE_TIMEOUT))?;
    let cfg = &shared.cfg;
    frame::write_all(
        &mut s,
        &frame::encode_hello(&Hello {
            kind,
            cluster_id: cfg.cluster_id,
            from: cfg.member_id,
            to,
        }),
    )?;
    let mut reply = [0u8; frame::REPLY_LEN];
    s.read_exact(&mut reply)?;
    let (status, their_cluster) = frame::decode_reply(&reply)?;
    let refused = |why: String| Err(io::Error::new(io::ErrorKind::PermissionDenied, why));
    match status {
        Status::Ok => {
            s.set_read_timeout(None)?;
            s.set_write_timeout(None)?;
            Ok(s)
        }
        Status::ClusterMismatch => {
            tracing::error!(
                "peer {:x} at {url} refused us: it belongs to cluster {their_cluster:x}, \
                 we to cluster {:x}",
                to,
                cfg.cluster_id
            );
            refused("cluster ID mismatch".into())
        }
        Status::WrongMember => refused(format!("{url} is not member {:x} (stale peer URL?)", to)),
        Status::Removed => {
            tracing::error!(
                "peer {:x} refused us: member {:x} was removed from the cluster",
                to,
                cfg.member_id
            );
            shared.self_removed.store(true, Ordering::Release);
            refused("this member was removed from the cluster".into())
        }
    }
}

fn accept_loop(shared: Arc<Shared>, listener: TcpListener) {
    while !shared.stopping.load(Ordering::Acquire) {
        match listener.accept() {
            Ok((s, from)) => {
                let shared = shared.clone();
                let spawned = std::thread::Builder::new()
                    .name("ringkv-peer-recv".into())
                    .spawn(move || {
                        if let Err(e) = serve_connection(&shared, s) {
                            tracing::debug!("peer connection from {from} ended: {e}");
                        }
                    });
                if let Err(e) = spawned {
                    tracing::warn!("cannot serve peer connection from {from}: {e}");
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => {
                tracing::warn!("peer accept: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

fn serve_connection(shared: &Shared, tcp: TcpStream) -> io::Result<()> {
    tcp.set_nonblocking(false)?;
    tcp.set_nodelay(true)?;
    tcp.set_read_timeout(Some(HANDSHAKE_TIMEOUT))?;
    let mut s = match shared.tls.get() {
        Some(tls) if shared.listen_tls.load(Ordering::Acquire) => {
            let from = tcp.peer_addr()?;
            tcp.set_write_timeout(Some(HANDSHAKE_TIMEOUT))?;
            let s = PeerStream::server(tcp, &tls.server)?;
            if let Err(e) = s.handshake() {
                tracing::warn!("refused a peer connection from {from}: {e}");
                return Err(e);
            }
            s.set_write_timeout(None)?;
            s
        }
        _ => PeerStream::plain(tcp),
    };
    let mut hello = [0u8; frame::HELLO_LEN];
    s.read_exact(&mut hello)?;
    let h = frame::decode_hello(&hello)?;
    let cfg = &shared.cfg;
    if h.from == 0 && h.to == 0 {
        return answer_cluster_query(shared, s);
    }
    let status = if h.cluster_id != cfg.cluster_id {
        tracing::error!(
            "refused a peer connection from member {:x}: it belongs to cluster {:x}, this \
             member ({:x}) to cluster {:x}",
            h.from,
            h.cluster_id,
            cfg.member_id,
            cfg.cluster_id
        );
        Status::ClusterMismatch
    } else if h.to != cfg.member_id {
        tracing::warn!(
            "refused a peer connection from member {:x}: it is for member {:x}, this is {:x}",
            h.from,
            h.to,
            cfg.member_id
        );
        Status::WrongMember
    } else if shared.removed.read().contains(&h.from) {
        tracing::warn!(
            "refused a peer connection from member {:x}: it was removed from the cluster",
            h.from
        );
        Status::Removed
    } else {
        Status::Ok
    };
    s.write_all(&frame::encode_reply(status, cfg.cluster_id))?;
    if status != Status::Ok {
        return Ok(());
    }
    if h.kind == StreamKind::Snapshot {
        // Not kept in `accepted` (whose clones would hold the socket open): a transfer ends
        // by itself, at the latest when a read stalls for SNAPSHOT_IO_TIMEOUT.
        let closer = s.try_clone()?;
        let stats = shared.stats(h.from);
        let r = receive_snapshot(shared, s, h.from).inspect_err(|e| {
            stats
                .snapshot_receive_failures
                .fetch_add(1, Ordering::Relaxed);
            tracing::error!("receiving a snapshot from member {:x}: {e}", h.from);
        });
        if r.is_ok() {
            stats.snapshots_received.fetch_add(1, Ordering::Relaxed);
        }
        let _ = closer.shutdown(Shutdown::Both);
        return r;
    }
    let serial = shared.next_accepted.fetch_add(1, Ordering::Relaxed);
    shared.accepted.lock().insert(serial, s.try_clone()?);
    let _registered = Accepted { shared, serial };
    s.set_read_timeout(None)?;
    let mut r = BufReader::with_capacity(64 * 1024, s);
    let mut offset = frame::HELLO_LEN as u64;
    // Messages read but not yet handed to raft (the frames still buffered join them).
    let mut stepped: Vec<RaftMessage> = Vec::new();
    loop {
        if shared.stopping.load(Ordering::Acquire) || shared.removed.read().contains(&h.from) {
            return Ok(());
        }
        let batch = match frame::read_frame(&mut r, &mut offset) {
            Ok(Some(b)) => b,
            Ok(None) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                tracing::error!("peer connection from member {:x}: {e}; closing it", h.from);
                return Err(e);
            }
            Err(e) => return Err(e),
        };
        let Some(raft) = shared.raft.get() else {
            continue;
        };
        for bytes in batch {
            match protobuf::Message::parse_from_bytes(&bytes) {
                Ok(m) => {
                    let m: RaftMessage = m;
                    if m.from != h.from {
                        tracing::warn!(
                            "peer {:x} sent a message from {:x}; dropped",
                            h.from,
                            m.from
                        );
                        continue;
                    }
                    stepped.push(m);
                }
                Err(e) => {
                    tracing::error!(
                        "peer connection from member {:x}: undecodable raft message near stream offset {offset}: {e}; closing it",
                        h.from
                    );
                    return Err(io::Error::new(io::ErrorKind::InvalidData, e.to_string()));
                }
            }
        }
        // Whole frames already read join these messages in one step (bounded); otherwise
        // they go to raft now, and this thread runs the core itself if it is parked (no
        // wake-up of the core thread on the critical path of a write; `step_driving`).
        if !frame::holds_whole_frame(r.buffer()) || stepped.len() >= MAX_STEPPED_AT_ONCE {
            raft.step_driving(std::mem::take(&mut stepped));
        }
    }
}

/// An accepted message connection's entry in `Shared::accepted`; dropping it (the reader
/// thread ends) removes the entry and shuts the socket down, so no clone keeps it open.
struct Accepted<'a> {
    shared: &'a Shared,
    serial: u64,
}

impl Drop for Accepted<'_> {
    fn drop(&mut self) {
        if let Some(s) = self.shared.accepted.lock().remove(&self.serial) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

/// Receives one snapshot on an accepted snapshot connection ([`receive_snapshot_file`]); only
/// once the file is durable is the message stepped into raft (whose restore installs that
/// file) and the sender acknowledged. On any failure the connection is closed without
/// acknowledgement (the sender reports the snapshot failed).
fn receive_snapshot(shared: &Shared, s: PeerStream, from: u64) -> io::Result<()> {
    s.set_read_timeout(Some(SNAPSHOT_IO_TIMEOUT))?;
    s.set_write_timeout(Some(SNAPSHOT_IO_TIMEOUT))?;
    let Some(files) = shared.snapshot_files.read().clone() else {
        return Err(io::Error::other("this member cannot receive snapshots yet"));
    };
    let mut r =
        BufReader::with_capacity(frame::SNAP_CHUNK + frame::SNAP_RECORD_LEN, s.try_clone()?);
    let (m, dst, len) = receive_snapshot_file(&files, &mut r, from)?;
    let index = m.get_snapshot().get_metadata().index;
    let Some(raft) = shared.raft.get() else {
        let _ = files.vfs.remove_file(&dst);
        return Err(io::Error::other(
            "this member's raft node is not running yet; snapshot dropped",
        ));
    };
    tracing::info!(
        "received the snapshot at index {index} ({len} bytes) from member {from:x} into {}",
        dst.display()
    );
    raft.step(m);
    (&s).write_all(&frame::encode_reply(Status::Ok, shared.cfg.cluster_id))
}

/// Reads the MsgSnapshot frame and the backend file that follows it from `r` (a snapshot
/// connection after its hello), writes the file through the node's Vfs to
/// `{index}.snap.db.tmp`, fsyncs it, renames it to `{index}.snap.db` and fsyncs the directory.
/// Returns the message, the file's path and length. On any failure (a damaged record, an I/O
/// error, a failed fsync: never retried) neither name is left behind, and the caller must not
/// step the message.
fn receive_snapshot_file(
    files: &SnapshotFiles,
    r: &mut impl Read,
    from: u64,
) -> io::Result<(RaftMessage, PathBuf, u64)> {
    let invalid = |what: String| io::Error::new(io::ErrorKind::InvalidData, what);
    let mut offset = frame::HELLO_LEN as u64;
    let mut batch = frame::read_frame(r, &mut offset)?
        .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "no snapshot message"))?;
    if batch.len() != 1 {
        return Err(invalid(format!(
            "the first frame of a snapshot connection holds {} messages, not 1",
            batch.len()
        )));
    }
    let m: RaftMessage = protobuf::Message::parse_from_bytes(&batch.remove(0))
        .map_err(|e| invalid(format!("undecodable snapshot message: {e}")))?;
    if m.get_msg_type() != RaftMessageType::MsgSnapshot || m.from != from {
        return Err(invalid(format!(
            "a snapshot connection carried {:?} from {:x}",
            m.get_msg_type(),
            m.from
        )));
    }
    let index = m.get_snapshot().get_metadata().index;
    let dst = (files.received_path)(index)?;
    let mut tmp = dst.clone().into_os_string();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let vfs = &*files.vfs;
    let named =
        |e: io::Error, path: &Path| io::Error::new(e.kind(), format!("{}: {e}", path.display()));
    let mut renamed = false;
    let written = (|| -> io::Result<u64> {
        if vfs.exists(&tmp) {
            vfs.remove_file(&tmp).map_err(|e| named(e, &tmp))?;
        }
        let file = vfs
            .open(&tmp, OpenOptions::read_write().create_new(true))
            .map_err(|e| named(e, &tmp))?;
        let mut w = BufWriter::with_capacity(
            frame::SNAP_CHUNK,
            VfsWriter {
                file: &*file,
                at: 0,
            },
        );
        let len = frame::read_snapshot_file(r, &mut offset, &mut w)?;
        w.flush().map_err(|e| named(e, &tmp))?;
        drop(w);
        // A failed fsync leaves the file's contents unknown: it is thrown away, never used.
        file.sync_data()
            .map_err(|e| named(io::Error::new(e.kind(), format!("fdatasync: {e}")), &tmp))?;
        drop(file);
        vfs.rename(&tmp, &dst).map_err(|e| named(e, &dst))?;
        renamed = true;
        let dir = dst.parent().unwrap_or(Path::new("."));
        vfs.sync_dir(dir).map_err(|e| named(e, dir))?;
        Ok(len)
    })();
    match written {
        Ok(len) => Ok((m, dst, len)),
        Err(e) => {
            let _ = vfs.remove_file(&tmp);
            if renamed {
                // The directory entry may or may not be durable: the file is not used.
                let _ = vfs.remove_file(&dst);
            }
            Err(io::Error::new(
                e.kind(),
                format!("snapshot at index {index}: {e}"),
            ))
        }
    }
}

/// Sequential writes to a Vfs file (the receiver's `Write` for [`frame::read_snapshot_file`]).
struct VfsWriter<'a> {
    file: &'a dyn File,
    at: u64,
}

impl Write for VfsWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.file.write_at(buf, self.at)?;
        self.at += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A cluster query (hello with sender and target 0): the reply carries the cluster ID, then
/// one frame holds the member list.
fn answer_cluster_query(shared: &Shared, mut s: PeerStream) -> io::Result<()> {
    let list = match &*shared.member_list.read() {
        Some(f) => f(),
        None => return Ok(()),
    };
    s.write_all(&frame::encode_reply(Status::Ok, shared.cfg.cluster_id))?;
    let mut buf = Vec::new();
    frame::encode_frame(&[list], &mut buf);
    s.write_all(&buf)
}

/// Asks the member at one of `urls` for its cluster ID and member list (JSON), as a member
/// joining an existing cluster does before it starts (`https://` URLs over `tls`).
pub fn query_cluster(urls: &[String], tls: Option<&SideTls>) -> io::Result<(u64, Vec<u8>)> {
    let mut last = io::Error::new(io::ErrorKind::NotFound, "no peer URL");
    for url in urls {
        let Some(addr) = peer_addr(url) else {
            continue;
        };
        let attempt = (|| -> io::Result<(u64, Vec<u8>)> {
            let tcp = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)?;
            let mut s = wrap_dialed(tls, tcp, url)?;
            s.set_read_timeout(Some(HANDSHAKE_TIMEOUT))?;
            s.write_all(&frame::encode_hello(&Hello {
                kind: StreamKind::Messages,
                cluster_id: 0,
                from: 0,
                to: 0,
            }))?;
            let mut reply = [0u8; frame::REPLY_LEN];
            s.read_exact(&mut reply)?;
            let (_, cluster_id) = frame::decode_reply(&reply)?;
            let mut offset = frame::REPLY_LEN as u64;
            let mut msgs = frame::read_frame(&mut s, &mut offset)?
                .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "no member list"))?;
            let list = msgs.pop().ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidData, "empty member list frame")
            })?;
            Ok((cluster_id, list))
        })();
        match attempt {
            Ok(r) => return Ok(r),
            Err(e) => last = io::Error::new(e.kind(), format!("{url}: {e}")),
        }
    }
    Err(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A MsgAppend from member 11 to member 10 at `index`, carrying one entry of `len` bytes
    /// of `byte`.
    fn append_11_to_10(index: u64, byte: u8, len: usize) -> RaftMessage {
        let mut m = RaftMessage::default();
        m.set_msg_type(RaftMessageType::MsgAppend);
        m.from = 11;
        m.to = 10;
        m.index = index;
        let mut e = ringkv_engine::RaftEntry::default();
        e.set_data(vec![byte; len].into());
        m.mut_entries().push(e);
        m
    }

    /// A snapshot connection whose file arrives damaged: nothing is acknowledged, nothing is
    /// left under the received name, the temporary file is removed.
    #[test]
    fn a_damaged_snapshot_stream_leaves_no_file_and_no_acknowledgement() {
        let dir = tempfile::tempdir().unwrap();
        let ours = PeerTransport::new(PeerConfig {
            cluster_id: 1,
            member_id: 10,
        });
        let received = dir.path().to_path_buf();
        ours.set_snapshot_files(SnapshotFiles {
            copy_backend: Box::new(|| Err(io::Error::other("not in this test"))),
            received_path: Box::new(
                move |index| Ok(received.join(format!("{index:016x}.snap.db"))),
            ),
            vfs: Arc::new(ringkv_engine::StdVfs::new()),
        });
        let addr = ours.listen("127.0.0.1:0".parse().unwrap()).unwrap();
        let mut s = say_hello(addr, StreamKind::Snapshot);
        let mut msg = RaftMessage::default();
        msg.set_msg_type(RaftMessageType::MsgSnapshot);
        msg.from = 11;
        msg.to = 10;
        msg.mut_snapshot().mut_metadata().index = 0x42;
        let mut out = Vec::new();
        frame::encode_frame(
            &[protobuf::Message::write_to_bytes(&msg).unwrap()],
            &mut out,
        );
        let file: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let at = out.len();
        frame::write_snapshot_file(&mut &file[..], &mut out).unwrap();
        // One bit of the second chunk's data.
        out[at + 2 * frame::SNAP_RECORD_LEN + frame::SNAP_CHUNK + 3] ^= 0x20;
        s.write_all(&out).unwrap();
        // The receiver closes the connection without a reply.
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
        assert!(rest.is_empty(), "acknowledged a damaged snapshot");
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(left.is_empty(), "{left:?}");
        ours.stop();
    }

    /// A peer that is down is dialled again at growing intervals, bounded: the wait doubles
    /// from 20 ms per failed dial up to 1 s and stays there; once the peer listens, a dial
    /// connects and the wait is reset. Observed through the counters, not the clock.
    #[test]
    fn a_peer_that_is_down_is_redialled_with_a_bounded_exponential_backoff() {
        // A port nobody listens on (bound, then closed).
        let port = {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let ours = PeerTransport::new(PeerConfig {
            cluster_id: 1,
            member_id: 10,
        });
        ours.set_peer(11, vec![format!("http://127.0.0.1:{port}")]);
        let peer = |t: &PeerTransport| {
            t.metrics()
                .peers
                .into_iter()
                .find(|p| p.id == 11)
                .unwrap_or_default()
        };
        let steps_ms = [20.0, 40.0, 80.0, 160.0, 320.0, 640.0, 1000.0];
        let mut seen: Vec<f64> = Vec::new();
        let at_cap = loop {
            let p = peer(&ours);
            assert!(!p.connected, "connected to a closed port");
            let wait_ms = (p.redial_backoff_seconds * 1000.0).round();
            if wait_ms > 0.0 && seen.last() != Some(&wait_ms) {
                assert!(
                    steps_ms.contains(&wait_ms),
                    "a wait of {wait_ms} ms is not on the doubling schedule (seen {seen:?})"
                );
                assert!(
                    seen.last().is_none_or(|l| *l < wait_ms),
                    "the wait shrank while the peer stayed down: {seen:?} then {wait_ms}"
                );
                seen.push(wait_ms);
            }
            if wait_ms == 1000.0 {
                break p.dial_failures;
            }
            std::thread::sleep(Duration::from_millis(2));
        };
        // The cap is reached on the 7th failed dial (20 ms doubled 6 times passes 1 s); one
        // more may have happened before the counters were read.
        assert!(
            (7..=8).contains(&at_cap),
            "{at_cap} failed dials when the wait reached 1 s (waits seen: {seen:?})"
        );
        // Bounded: further failures keep the wait at 1 s.
        loop {
            let p = peer(&ours);
            assert_eq!(p.redial_backoff_seconds, 1.0, "past the cap: {p:?}");
            if p.dial_failures > at_cap {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        // The peer comes up: the next dial connects and the wait is reset.
        let theirs = PeerTransport::new(PeerConfig {
            cluster_id: 1,
            member_id: 11,
        });
        theirs
            .listen(SocketAddr::from(([127, 0, 0, 1], port)))
            .unwrap();
        loop {
            let p = peer(&ours);
            if p.connected {
                assert_eq!(p.redial_backoff_seconds, 0.0, "{p:?}");
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        ours.stop();
        theirs.stop();
    }

    #[test]
    fn peer_urls_resolve() {
        assert_eq!(
            peer_addr("http://127.0.0.1:2380"),
            Some("127.0.0.1:2380".parse().unwrap())
        );
        assert_eq!(
            peer_addr("http://127.0.0.1:2380/"),
            peer_addr("127.0.0.1:2380")
        );
        assert_eq!(peer_addr("http://"), None);
    }

    #[test]
    fn a_member_of_another_cluster_is_refused_and_nothing_reaches_raft() {
        let ours = PeerTransport::new(PeerConfig {
            cluster_id: 1,
            member_id: 10,
        });
        let addr = ours.listen("127.0.0.1:0".parse().unwrap()).unwrap();
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(&frame::encode_hello(&Hello {
            kind: StreamKind::Messages,
            cluster_id: 2,
            from: 11,
            to: 10,
        }))
        .unwrap();
        let mut reply = [0u8; frame::REPLY_LEN];
        s.read_exact(&mut reply).unwrap();
        assert_eq!(
            frame::decode_reply(&reply).unwrap(),
            (Status::ClusterMismatch, 1)
        );
        // The connection is closed after the refusal.
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
        assert!(rest.is_empty());

        ours.remove_peer(12);
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(&frame::encode_hello(&Hello {
            kind: StreamKind::Messages,
            cluster_id: 1,
            from: 12,
            to: 10,
        }))
        .unwrap();
        s.read_exact(&mut reply).unwrap();
        assert_eq!(frame::decode_reply(&reply).unwrap().0, Status::Removed);

        ours.set_member_list(Box::new(|| b"[{\"id\":10}]".to_vec()));
        let url = format!("http://{addr}");
        let (cluster, list) = query_cluster(&["http://127.0.0.1:1".into(), url], None).unwrap();
        assert_eq!(cluster, 1);
        assert_eq!(list, b"[{\"id\":10}]");
        ours.stop();
    }

    /// Opens a `kind` connection from member 11 to `addr` (member 10, cluster 1) and checks the
    /// hello is accepted.
    fn say_hello(addr: SocketAddr, kind: StreamKind) -> TcpStream {
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(&frame::encode_hello(&Hello {
            kind,
            cluster_id: 1,
            from: 11,
            to: 10,
        }))
        .unwrap();
        let mut reply = [0u8; frame::REPLY_LEN];
        s.read_exact(&mut reply).unwrap();
        assert_eq!(frame::decode_reply(&reply).unwrap(), (Status::Ok, 1));
        s
    }

    /// Invariant 3: a frame with a bad checksum closes the message connection (no clone kept
    /// for shutdown holds it open), and the member accepts the sender's next connection.
    #[test]
    fn a_corrupt_frame_closes_the_connection_and_the_member_keeps_serving() {
        let ours = PeerTransport::new(PeerConfig {
            cluster_id: 1,
            member_id: 10,
        });
        let addr = ours.listen("127.0.0.1:0".parse().unwrap()).unwrap();
        let mut s = say_hello(addr, StreamKind::Messages);
        let mut msg = RaftMessage::default();
        msg.set_msg_type(RaftMessageType::MsgHeartbeat);
        msg.from = 11;
        msg.to = 10;
        let mut out = Vec::new();
        frame::encode_frame(
            &[protobuf::Message::write_to_bytes(&msg).unwrap()],
            &mut out,
        );
        let good = out.len();
        frame::encode_frame(
            &[protobuf::Message::write_to_bytes(&msg).unwrap()],
            &mut out,
        );
        // One bit of the second frame's payload.
        let last = out.len() - 1;
        out[last] ^= 0x01;
        assert!(last > good);
        s.write_all(&out).unwrap();
        // The receiver closes the connection: end of stream, not a read that times out.
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut rest = Vec::new();
        let end = s.read_to_end(&mut rest);
        assert!(end.is_ok(), "the connection stayed open: {end:?}");
        assert!(rest.is_empty());
        assert!(ours.shared.accepted.lock().is_empty());
        // The member keeps serving: a new connection is accepted and kept.
        let _again = say_hello(addr, StreamKind::Messages);
        ours.stop();
    }

    /// A peer that accepts the connection and then stops reading: the sender's write times out
    /// and it redials instead of blocking forever.
    #[test]
    fn a_peer_that_stops_reading_does_not_wedge_the_sender() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let ours = PeerTransport::with_write_timeout(
            PeerConfig {
                cluster_id: 1,
                member_id: 11,
            },
            Duration::from_millis(300),
        );
        ours.set_peer(10, vec![format!("http://{addr}")]);
        let accept_one = || {
            let (mut s, _) = listener.accept().unwrap();
            s.set_nonblocking(false).unwrap();
            let mut hello = [0u8; frame::HELLO_LEN];
            s.read_exact(&mut hello).unwrap();
            let h = frame::decode_hello(&hello).unwrap();
            assert_eq!((h.from, h.to), (11, 10));
            s.write_all(&frame::encode_reply(Status::Ok, 1)).unwrap();
            s
        };
        let first = accept_one();
        // 48 MiB of appends: far more than the socket buffers hold, and nobody reads them.
        let msgs: Vec<RaftMessage> = (0..48).map(|i| append_11_to_10(i, 7, 1 << 20)).collect();
        ours.send(msgs);
        // The sender gives the stalled connection up and connects again.
        listener.set_nonblocking(true).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        let mut redialled = false;
        while !redialled && std::time::Instant::now() < deadline {
            match listener.accept() {
                Ok((s, _)) => {
                    drop(s);
                    redialled = true;
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
        ours.stop();
        drop(first);
        assert!(redialled, "the sender never redialled");
    }

    #[test]
    fn frames_keep_their_order_whether_the_core_or_the_sender_thread_writes_them() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let ours = PeerTransport::new(PeerConfig {
            cluster_id: 1,
            member_id: 11,
        });
        ours.set_peer(10, vec![format!("http://{addr}")]);
        let (mut s, _) = listener.accept().unwrap();
        let mut hello = [0u8; frame::HELLO_LEN];
        s.read_exact(&mut hello).unwrap();
        s.write_all(&frame::encode_reply(Status::Ok, 1)).unwrap();
        let connected = || {
            let peers = ours.shared.peers.lock();
            peers[&10].link.lock().stream.is_some()
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !connected() {
            assert!(
                std::time::Instant::now() < deadline,
                "the sender never connected"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        // A slow reader: the socket fills, so some frames are written by the core, some in
        // part by the core and finished by the sender thread, some by the sender thread.
        const N: u64 = 600;
        let reader = std::thread::spawn(move || {
            let mut r = BufReader::new(s);
            let mut offset = frame::HELLO_LEN as u64;
            let mut got = Vec::new();
            while (got.len() as u64) < N {
                let batch = frame::read_frame(&mut r, &mut offset).unwrap().unwrap();
                for b in batch {
                    let m: RaftMessage = protobuf::Message::parse_from_bytes(&b).unwrap();
                    got.push(m.index);
                }
                if got.len() % 50 == 0 {
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
            got
        });
        for chunk in (0..N).collect::<Vec<_>>().chunks(3) {
            let msgs = chunk
                .iter()
                .map(|&i| append_11_to_10(i, 1, 64 << 10))
                .collect();
            ours.send(msgs);
        }
        let got = reader.join().unwrap();
        ours.stop();
        assert_eq!(got, (0..N).collect::<Vec<_>>());
    }

    /// A snapshot stream as the sender writes it after the hello: the MsgSnapshot frame for
    /// `index` from member 11, then `file` in chunks and the end record.
    fn snapshot_stream(index: u64, file: &[u8]) -> Vec<u8> {
        let mut msg = RaftMessage::default();
        msg.set_msg_type(RaftMessageType::MsgSnapshot);
        msg.from = 11;
        msg.to = 10;
        msg.mut_snapshot().mut_metadata().index = index;
        let mut out = Vec::new();
        frame::encode_frame(
            &[protobuf::Message::write_to_bytes(&msg).unwrap()],
            &mut out,
        );
        frame::write_snapshot_file(&mut &file[..], &mut out).unwrap();
        out
    }

    /// The receiver writes through the node's Vfs. Every one of its file operations failing in
    /// turn (a write, the fdatasync, the rename, the directory sync) leaves neither the
    /// temporary nor the final name behind and returns an error, so the message is never
    /// stepped; without a fault the file arrives durable under its final name.
    #[test]
    fn a_failed_write_or_fsync_while_receiving_leaves_no_snapshot_file() {
        use ringkv_engine::{Fault, FaultVfs};

        let file: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let stream = snapshot_stream(0x42, &file);
        let files = |vfs: &FaultVfs| SnapshotFiles {
            copy_backend: Box::new(|| Err(io::Error::other("not in this test"))),
            received_path: Box::new(|index| {
                Ok(PathBuf::from(format!("/snap/{index:016x}.snap.db")))
            }),
            vfs: Arc::new(vfs.clone()),
        };
        let dst = Path::new("/snap/0000000000000042.snap.db");
        let tmp = Path::new("/snap/0000000000000042.snap.db.tmp");

        let clean = FaultVfs::new();
        clean.create_dir_all(Path::new("/snap")).unwrap();
        let first = clean.ops();
        let (m, path, len) =
            receive_snapshot_file(&files(&clean), &mut &stream[..], 11).expect("receive");
        let ops = clean.ops() - first;
        assert_eq!((path.as_path(), len), (dst, file.len() as u64));
        assert_eq!(m.get_snapshot().get_metadata().index, 0x42);
        assert_eq!(clean.durable_contents(dst).as_deref(), Some(&file[..]));
        assert!(!clean.exists(tmp));
        assert!(
            ops >= 4,
            "open/write/fsync/rename/dir sync: {ops} operations"
        );

        for op in 0..ops {
            let vfs = FaultVfs::new();
            vfs.create_dir_all(Path::new("/snap")).unwrap();
            vfs.fail_at(vfs.ops() + op, Fault::Eio);
            let r = receive_snapshot_file(&files(&vfs), &mut &stream[..], 11);
            let e = r
                .map(|(_, p, _)| p)
                .expect_err("a failed operation must fail the receive");
            assert!(e.to_string().contains("snapshot at index 66"), "{e}");
            assert!(
                !vfs.exists(dst),
                "operation {op} failing left {}",
                dst.display()
            );
            assert!(
                !vfs.exists(tmp),
                "operation {op} failing left {}",
                tmp.display()
            );
        }
    }
}

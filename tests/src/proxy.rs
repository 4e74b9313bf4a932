//! A user-space proxy in front of each member's peer port, so tests can partition a cluster.
//!
//! Every member advertises its proxy's port as its peer URL and listens on a port of its own
//! behind it. The proxy reads the hello that opens each peer connection (design.md, "Peer
//! transport": bytes 14..22 = sender member ID, 22..30 = target member ID, little-endian) to
//! learn which link (sender → target) the connection carries, then copies bytes both ways
//! while that link is up. [`Partition`] is shared by all proxies of a cluster: cutting a link
//! shuts its open connections down and closes new ones right after their hello, until healed.
//! Cluster queries (sender and target 0) always pass.

use std::collections::HashSet;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Offset of the sender's member ID in the hello.
const HELLO_FROM_OFFSET: usize = 14;
/// Offset of the target's member ID in the hello.
const HELLO_TO_OFFSET: usize = HELLO_FROM_OFFSET + 8;
/// Length of the hello.
const HELLO_LEN: usize = HELLO_TO_OFFSET + 8 + 4;

/// Which links between members are cut; shared by the proxies of one cluster.
#[derive(Default)]
pub struct Partition {
    /// Cut links as (sender, target) member IDs.
    cut: Mutex<HashSet<(u64, u64)>>,
    /// Open proxied connections: (sender, target, the two sockets).
    open: Mutex<Vec<(u64, u64, TcpStream, TcpStream)>>,
}

impl Partition {
    /// Cuts both directions between `a` and every member of `others`, and shuts down the
    /// connections those links have open.
    pub fn isolate(&self, a: u64, others: &[u64]) {
        // Lock order: `open` before `cut` (proxy_connection); `cut` is released here first.
        let cut = {
            let mut cut = self.cut.lock().unwrap();
            for &b in others.iter().filter(|b| **b != a) {
                cut.insert((a, b));
                cut.insert((b, a));
            }
            cut.clone()
        };
        self.open.lock().unwrap().retain(|(from, to, x, y)| {
            if cut.contains(&(*from, *to)) {
                let _ = x.shutdown(Shutdown::Both);
                let _ = y.shutdown(Shutdown::Both);
                false
            } else {
                true
            }
        });
    }

    /// Restores every link.
    pub fn heal(&self) {
        self.cut.lock().unwrap().clear();
    }

    fn is_cut(&self, from: u64, to: u64) -> bool {
        self.cut.lock().unwrap().contains(&(from, to))
    }
}

/// One proxy: accepts on `listen_port` and forwards to `127.0.0.1:target_port`. Stops (and
/// closes its listener) when dropped; open connections end with the member behind them.
pub struct PeerProxy {
    pub listen_port: u16,
    stop: Arc<AtomicBool>,
}

impl PeerProxy {
    pub fn start(
        listen_port: u16,
        target_port: u16,
        partition: Arc<Partition>,
    ) -> io::Result<PeerProxy> {
        let listener = TcpListener::bind(("127.0.0.1", listen_port))?;
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        std::thread::Builder::new()
            .name(format!("peer-proxy-{listen_port}"))
            .spawn(move || {
                while !stopped.load(Ordering::Acquire) {
                    match listener.accept() {
                        Ok((s, _)) => {
                            let partition = partition.clone();
                            std::thread::spawn(move || {
                                let _ = proxy_connection(s, target_port, &partition);
                            });
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(5)),
                    }
                }
            })?;
        Ok(PeerProxy { listen_port, stop })
    }
}

impl Drop for PeerProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
    }
}

fn proxy_connection(client: TcpStream, target_port: u16, partition: &Partition) -> io::Result<()> {
    client.set_nonblocking(false)?;
    client.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut hello = [0u8; HELLO_LEN];
    (&client).read_exact(&mut hello)?;
    client.set_read_timeout(None)?;
    let id = |at: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&hello[at..at + 8]);
        u64::from_le_bytes(b)
    };
    let (from, to) = (id(HELLO_FROM_OFFSET), id(HELLO_TO_OFFSET));
    if partition.is_cut(from, to) {
        let _ = client.shutdown(Shutdown::Both);
        return Ok(());
    }
    let upstream = TcpStream::connect(("127.0.0.1", target_port))?;
    upstream.set_nodelay(true)?;
    client.set_nodelay(true)?;
    (&upstream).write_all(&hello)?;
    {
        let mut open = partition.open.lock().unwrap();
        // Checked again under the lock `isolate` takes: a cut that raced the connect is seen.
        if partition.is_cut(from, to) {
            let _ = client.shutdown(Shutdown::Both);
            let _ = upstream.shutdown(Shutdown::Both);
            return Ok(());
        }
        open.push((from, to, client.try_clone()?, upstream.try_clone()?));
    }
    let (c2, u2) = (client.try_clone()?, upstream.try_clone()?);
    let back = std::thread::spawn(move || pump(u2, c2));
    pump(client, upstream);
    let _ = back.join();
    Ok(())
}

/// Copies `from` to `to` until either side ends, then shuts both down.
fn pump(mut from: TcpStream, mut to: TcpStream) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}

//! Loopback TCP round trip of a raft append and its acknowledgement, the floor of one peer round
//! trip on this machine: a client thread writes a REQ-byte message, an echo thread reads it whole
//! and answers ACK bytes, the client reads them whole; blocking sockets with TCP_NODELAY, so each
//! side sleeps in the kernel and is woken by the other, like the peer transport's threads.
//!
//! build: rustc -O bench/scripts/tcp-rtt.rs -o /tmp/tcp-rtt
//! usage: /tmp/tcp-rtt [REQ bytes, default 360] [ACK bytes, default 48] [seconds, default 3] [GAP µs, default 0]
//! With GAP > 0 the client sleeps that long between round trips, so both threads (and, when
//! nothing else runs, the vCPUs) are idle when a message arrives, as in a 1-client put where
//! every member waits ~100 µs for its fdatasync; GAP 0 is back-to-back (both sides stay hot).
//! Prints the round trips, p50/p90/p99 in µs. No dependencies.
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

fn arg(i: usize, default: u64) -> u64 {
    std::env::args()
        .nth(i)
        .map(|s| s.parse().expect("a number"))
        .unwrap_or(default)
}

fn main() {
    let req = arg(1, 360) as usize;
    let ack = arg(2, 48) as usize;
    let secs = arg(3, 3);
    let gap = Duration::from_micros(arg(4, 0));
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let echo = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().expect("accept");
        s.set_nodelay(true).expect("nodelay");
        let mut inb = vec![0u8; req];
        let out = vec![7u8; ack];
        while s.read_exact(&mut inb).is_ok() {
            if s.write_all(&out).is_err() {
                break;
            }
        }
    });
    let mut c = TcpStream::connect(addr).expect("connect");
    c.set_nodelay(true).expect("nodelay");
    let out = vec![9u8; req];
    let mut inb = vec![0u8; ack];
    let mut lat = Vec::new();
    let end = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < end {
        if !gap.is_zero() {
            std::thread::sleep(gap);
        }
        let t = Instant::now();
        c.write_all(&out).expect("write");
        c.read_exact(&mut inb).expect("read");
        lat.push(t.elapsed().as_nanos() as u64);
    }
    drop(c);
    echo.join().expect("echo thread");
    lat.sort_unstable();
    let q = |p: f64| lat[((lat.len() - 1) as f64 * p) as usize] as f64 / 1000.0;
    println!(
        "tcp loopback {req} B -> {ack} B, gap {gap:?}: {} round trips, p50 {:.1} µs, p90 {:.1} µs, p99 {:.1} µs",
        lat.len(),
        q(0.5),
        q(0.9),
        q(0.99)
    );
}

//! Front-end cost: what the gRPC layer (tonic + hyper + ringkv's checks, headers and error
//! mapping) costs per request, measured against the in-memory TEST FIXTURE node (so no raft,
//! WAL or backend cost is included), with etcd 3.4 measured in the same run by the same client
//! as the peer. Run:
//!
//! ```text
//! CARGO_TARGET_DIR=/work/target-shared cargo bench -p ringkv-net --bench frontend -- [--ops N] [--etcd PATH]
//! ```
//!
//! The ringkv server runs on one dedicated thread (a current-thread tokio runtime), so its CPU
//! time is that thread's (CLOCK_THREAD_CPUTIME_ID, read on the thread). etcd's is its process
//! CPU time from /proc/<pid>/stat. Client: tonic, on the main thread.

#[path = "../tests/support/fixture.rs"]
#[allow(dead_code)]
mod fixture;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ringkv_net::pb::etcdserverpb::kv_client::KvClient;
use ringkv_net::pb::etcdserverpb::{PutRequest, RangeRequest};
use ringkv_net::{ClientServer, ServerOptions, ShutdownTrigger};
use tonic::transport::Channel;

/// CPU time of the calling thread, in nanoseconds.
fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_THREAD_CPUTIME_ID is always supported
    // on Linux.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime");
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// CPU time (user + system) of process `pid`, in nanoseconds (10 ms resolution).
fn process_cpu_ns(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc/pid/stat");
    let after_comm = &stat[stat.rfind(')').expect("comm") + 2..];
    let fields: Vec<&str> = after_comm.split(' ').collect();
    // Fields 14 and 15 of stat (utime, stime) are 11 and 12 after the comm field.
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    ticks * 1_000_000_000 / hz
}

/// How to read the server's CPU time.
enum Cpu {
    /// A thread of this process, read by running a task on the server's runtime.
    Thread(tokio::runtime::Handle),
    /// Another process.
    Process(u32),
}

impl Cpu {
    async fn now(&self) -> u64 {
        match self {
            Cpu::Thread(h) => h.spawn(async { thread_cpu_ns() }).await.unwrap(),
            Cpu::Process(pid) => process_cpu_ns(*pid),
        }
    }
}

struct Figures {
    p50_us: f64,
    ops_per_s: f64,
    cpu_us_per_op: f64,
}

async fn one_client(endpoint: &str, cpu: &Cpu, ops: usize, range: bool) -> Figures {
    let mut kv = KvClient::new(
        Channel::from_shared(endpoint.to_string())
            .unwrap()
            .connect()
            .await
            .unwrap(),
    );
    let value = Bytes::from(vec![b'v'; 256]);
    let mut lat = Vec::with_capacity(ops);
    let cpu0 = cpu.now().await;
    let t0 = Instant::now();
    for i in 0..ops {
        let key = Bytes::from(format!("key{:06}", i % 1000));
        let t = Instant::now();
        if range {
            kv.range(RangeRequest {
                key,
                serializable: true,
                ..Default::default()
            })
            .await
            .unwrap();
        } else {
            kv.put(PutRequest {
                key,
                value: value.clone(),
                ..Default::default()
            })
            .await
            .unwrap();
        }
        lat.push(t.elapsed());
    }
    let wall = t0.elapsed();
    let cpu1 = cpu.now().await;
    lat.sort();
    Figures {
        p50_us: lat[lat.len() / 2].as_secs_f64() * 1e6,
        ops_per_s: ops as f64 / wall.as_secs_f64(),
        cpu_us_per_op: (cpu1 - cpu0) as f64 / 1e3 / ops as f64,
    }
}

/// `conns` connections × `per_conn` concurrent clients each, `ops` requests in total.
async fn many_clients(
    endpoint: &str,
    cpu: &Cpu,
    conns: usize,
    per_conn: usize,
    ops: usize,
    range: bool,
) -> Figures {
    let mut channels = Vec::new();
    for _ in 0..conns {
        channels.push(
            Channel::from_shared(endpoint.to_string())
                .unwrap()
                .connect()
                .await
                .unwrap(),
        );
    }
    let clients = conns * per_conn;
    let each = ops / clients;
    let cpu0 = cpu.now().await;
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let mut kv = KvClient::new(channels[c % conns].clone());
        tasks.push(tokio::spawn(async move {
            let value = Bytes::from(vec![b'v'; 256]);
            let mut lat = Vec::with_capacity(each);
            for i in 0..each {
                let key = Bytes::from(format!("key{:06}", (c * each + i) % 1000));
                let t = Instant::now();
                if range {
                    kv.range(RangeRequest {
                        key,
                        serializable: true,
                        ..Default::default()
                    })
                    .await
                    .unwrap();
                } else {
                    kv.put(PutRequest {
                        key,
                        value: value.clone(),
                        ..Default::default()
                    })
                    .await
                    .unwrap();
                }
                lat.push(t.elapsed());
            }
            lat
        }));
    }
    let mut lat: Vec<Duration> = Vec::new();
    for t in tasks {
        lat.extend(t.await.unwrap());
    }
    let wall = t0.elapsed();
    let cpu1 = cpu.now().await;
    lat.sort();
    let done = lat.len();
    Figures {
        p50_us: lat[done / 2].as_secs_f64() * 1e6,
        ops_per_s: done as f64 / wall.as_secs_f64(),
        cpu_us_per_op: (cpu1 - cpu0) as f64 / 1e3 / done as f64,
    }
}

async fn suite(name: &str, endpoint: &str, cpu: &Cpu, ops: usize) {
    let rows = [
        ("put, 1 client", one_client(endpoint, cpu, ops, false).await),
        (
            "range serializable, 1 client",
            one_client(endpoint, cpu, ops, true).await,
        ),
        (
            "put, 1000 clients / 100 conns",
            many_clients(endpoint, cpu, 100, 10, ops * 2, false).await,
        ),
        (
            "range serializable, 1000 clients / 100 conns",
            many_clients(endpoint, cpu, 100, 10, ops * 2, true).await,
        ),
    ];
    for (what, f) in rows {
        println!(
            "{name:<28} {what:<46} p50 {:>8.1} µs   {:>9.0} ops/s   server CPU {:>6.2} µs/op",
            f.p50_us, f.ops_per_s, f.cpu_us_per_op
        );
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let ops: usize = arg("--ops").map_or(20_000, |s| s.parse().expect("--ops N"));
    let etcd = arg("--etcd").unwrap_or_else(|| "etcd".to_string());

    // ringkv front end on its own thread.
    let (handle_tx, handle_rx) = std::sync::mpsc::channel();
    let port = free_port();
    let (trigger, shutdown) = ShutdownTrigger::new();
    let guard = trigger.guard();
    let server_thread = std::thread::Builder::new().name("ringkv-server".into());
    server_thread
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let node = Arc::new(fixture::MemNode::default());
                let server = ClientServer::new(node, ServerOptions::default(), shutdown);
                let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
                    .await
                    .unwrap();
                handle_tx.send(tokio::runtime::Handle::current()).unwrap();
                server.serve(listener, guard).await.unwrap();
            });
        })
        .expect("spawn the server thread");
    let server_handle = handle_rx.recv().unwrap();

    let client = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    client.block_on(async {
        println!(
            "ops per scenario: {ops} (1 client), {} (1000 clients)",
            ops * 2
        );
        suite(
            "ringkv front end + fixture",
            &format!("http://127.0.0.1:{port}"),
            &Cpu::Thread(server_handle),
            ops,
        )
        .await;

        let dir = std::env::temp_dir().join(format!("ringkv-bench-etcd-{}", std::process::id()));
        let (cport, pport) = (free_port(), free_port());
        let child = std::process::Command::new(&etcd)
            .args([
                "--data-dir",
                dir.to_str().unwrap(),
                "--listen-client-urls",
                &format!("http://127.0.0.1:{cport}"),
                "--advertise-client-urls",
                &format!("http://127.0.0.1:{cport}"),
                "--listen-peer-urls",
                &format!("http://127.0.0.1:{pport}"),
                "--initial-advertise-peer-urls",
                &format!("http://127.0.0.1:{pport}"),
                "--initial-cluster",
                &format!("default=http://127.0.0.1:{pport}"),
                "--log-level",
                "error",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn();
        let Ok(mut child) = child else {
            println!("etcd peer: `{etcd}` not found, skipped (install Debian's etcd-server)");
            return;
        };
        let endpoint = format!("http://127.0.0.1:{cport}");
        for _ in 0..100 {
            if let Ok(c) = Channel::from_shared(endpoint.clone())
                .unwrap()
                .connect()
                .await
            {
                let mut kv = KvClient::new(c);
                if kv
                    .range(RangeRequest {
                        key: "x".into(),
                        ..Default::default()
                    })
                    .await
                    .is_ok()
                {
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        suite(
            "etcd 3.4 (peer, durable)",
            &endpoint,
            &Cpu::Process(child.id()),
            ops,
        )
        .await;
        let _ = child.kill();
        let _ = child.wait();
        let _ = std::fs::remove_dir_all(&dir);
    });
    trigger.fire();
}

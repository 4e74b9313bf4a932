//! A real etcd for differential tests, and a minimal blocking HTTP/1.1 client for its gateway.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A free TCP port on 127.0.0.1 (bound, read, released).
///
/// Ports come from below the kernel's ephemeral range (32768–60999 here): a port the kernel
/// handed out for `:0` is free again the moment the probe closes, and the next outgoing
/// connection (a client, a peer dial) may take it before the server binds it. Below the range
/// only another test's `free_port` can pick the same port; each process starts at a different
/// place (pid, clock) and never hands out a port twice.
pub fn free_port() -> u16 {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicU64, Ordering};
    const LOW: u64 = 15_000;
    const SPAN: u64 = 32_768 - LOW;
    static NEXT: AtomicU64 = AtomicU64::new(0);
    static GIVEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    static SEED: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let seed = *SEED.get_or_init(|| {
        u64::from(std::process::id()).wrapping_mul(2_654_435_761)
            ^ std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| u64::from(d.subsec_nanos()))
    });
    for _ in 0..SPAN {
        // 7_919 is prime and does not divide SPAN: successive picks walk the whole span.
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (LOW + (seed.wrapping_add(n.wrapping_mul(7_919))) % SPAN) as u16;
        let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
        if given.contains(&port) {
            continue;
        }
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            given.push(port);
            return port;
        }
    }
    panic!("no free port in 127.0.0.1:{LOW}..32768");
}

/// One HTTP response.
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub body: String,
}

fn read_head(r: &mut impl BufRead) -> std::io::Result<(u16, bool, Option<usize>)> {
    let mut line = String::new();
    r.read_line(&mut line)?;
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line {line:?}")))?;
    let mut chunked = false;
    let mut len = None;
    loop {
        line.clear();
        r.read_line(&mut line)?;
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        let lower = l.to_ascii_lowercase();
        if lower.starts_with("transfer-encoding:") && lower.contains("chunked") {
            chunked = true;
        }
        if let Some(v) = lower.strip_prefix("content-length:") {
            len = v.trim().parse().ok();
        }
    }
    Ok((status, chunked, len))
}

fn read_chunk(r: &mut impl BufRead) -> std::io::Result<Option<Vec<u8>>> {
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Ok(None);
    }
    let n = usize::from_str_radix(line.trim(), 16)
        .map_err(|_| std::io::Error::other(format!("bad chunk size {line:?}")))?;
    if n == 0 {
        return Ok(None);
    }
    let mut buf = vec![0; n + 2];
    r.read_exact(&mut buf)?;
    buf.truncate(n);
    Ok(Some(buf))
}

/// POSTs `body` to `http://127.0.0.1:{port}{path}` and reads the whole response.
pub fn http_post(port: u16, path: &str, body: &str) -> std::io::Result<HttpResponse> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(20)))?;
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut r = BufReader::new(s);
    let (status, chunked, len) = read_head(&mut r)?;
    let mut out = Vec::new();
    if chunked {
        while let Some(c) = read_chunk(&mut r)? {
            out.extend(c);
        }
    } else if let Some(n) = len {
        out.resize(n, 0);
        r.read_exact(&mut out)?;
    } else {
        r.read_to_end(&mut out)?;
    }
    Ok(HttpResponse {
        status,
        body: String::from_utf8_lossy(&out).into_owned(),
    })
}

/// A streaming gateway call (`/v3/watch`): every JSON line of the response arrives on a channel.
#[derive(Debug)]
pub struct WatchStreamReader {
    pub lines: mpsc::Receiver<String>,
    _conn: TcpStream,
}

impl WatchStreamReader {
    /// Opens `/v3/watch` with the given request lines (newline-separated JSON objects).
    pub fn open(port: u16, body: &str) -> std::io::Result<Self> {
        let mut s = TcpStream::connect(("127.0.0.1", port))?;
        write!(
            s,
            "POST /v3/watch HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )?;
        let conn = s.try_clone()?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut r = BufReader::new(s);
            let Ok((_, chunked, _)) = read_head(&mut r) else {
                return;
            };
            let mut pending = Vec::new();
            loop {
                let data = if chunked {
                    match read_chunk(&mut r) {
                        Ok(Some(c)) => c,
                        _ => return,
                    }
                } else {
                    let mut buf = vec![0; 4096];
                    match r.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf[..n].to_vec(),
                    }
                };
                pending.extend(data);
                while let Some(i) = pending.iter().position(|&c| c == b'\n') {
                    let line: Vec<u8> = pending.drain(..=i).collect();
                    let text = String::from_utf8_lossy(&line).trim().to_string();
                    if !text.is_empty() && tx.send(text).is_err() {
                        return;
                    }
                }
            }
        });
        Ok(WatchStreamReader {
            lines: rx,
            _conn: conn,
        })
    }
}

impl Drop for WatchStreamReader {
    fn drop(&mut self) {
        let _ = self._conn.shutdown(std::net::Shutdown::Both);
    }
}

/// A running etcd, killed (and its data dir removed) on drop.
#[derive(Debug)]
pub struct EtcdProcess {
    child: Child,
    pub client_port: u16,
    dir: PathBuf,
}

impl EtcdProcess {
    /// Starts `etcd` from PATH. Panics (never skips) if it is missing or does not come up:
    /// `tests/run.sh` installs Debian's `etcd-server`.
    pub fn start() -> EtcdProcess {
        let client_port = free_port();
        let peer_port = free_port();
        // tmpfs when available: etcd fsyncs every write.
        let base = if std::path::Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        let dir = base.join(format!("ringkv-etcd-{}-{client_port}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create etcd data dir");
        let client = format!("http://127.0.0.1:{client_port}");
        let peer = format!("http://127.0.0.1:{peer_port}");
        let child = Command::new("etcd")
            .args([
                "--name",
                "diff",
                "--data-dir",
                dir.join("data").to_str().expect("utf-8 path"),
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
                "--initial-cluster",
                &format!("diff={peer}"),
                "--log-level",
                "error",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start `etcd` ({e}): the differential test needs etcd 3.4 \
                     (apt-get install etcd-server; tests/run.sh installs it)"
                )
            });
        let mut p = EtcdProcess {
            child,
            client_port,
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = http_post(client_port, "/v3/kv/range", r#"{"key":"cmVhZHk="}"#)
                && r.status == 200
            {
                return p;
            }
            if let Ok(Some(status)) = p.child.try_wait() {
                panic!("etcd exited during startup: {status}");
            }
            assert!(
                Instant::now() < deadline,
                "etcd did not become ready in 30 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// POSTs a JSON body to the gateway.
    pub fn post(&self, path: &str, body: &str) -> HttpResponse {
        http_post(self.client_port, path, body)
            .unwrap_or_else(|e| panic!("etcd gateway {path} failed: {e}"))
    }
}

impl Drop for EtcdProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

//! A real `ringkv` process for system tests: free loopback ports, a temp data dir (or a given
//! one, to test restarts), killed on drop; plus `etcdctl` and raw HTTP/1.1 helpers.
//!
//! The binary is built once per test process with `cargo build -p ringkv-net --bin ringkv`
//! (the same profile and target directory as the running test), because cargo builds another
//! package's binaries for its own integration tests only.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::etcd::{HttpResponse, free_port};

/// Path of the `ringkv` binary, built on first use.
/// `<target>/<profile>` of this test binary (it lives in `<target>/<profile>/deps`).
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    exe.parent()
        .and_then(Path::parent)
        .expect("test binary lives in <target>/<profile>/deps")
        .to_path_buf()
}

/// The `ringkv-util` binary, built together with `ringkv` by [`ringkv_binary`].
pub fn ringkv_util_binary() -> PathBuf {
    ringkv_binary();
    let bin = profile_dir().join("ringkv-util");
    assert!(bin.exists(), "{} missing after build", bin.display());
    bin
}

pub fn ringkv_binary() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let profile_dir = profile_dir();
        let target_dir = profile_dir.parent().expect("target dir").to_path_buf();
        let profile = profile_dir
            .file_name()
            .and_then(|s| s.to_str())
            .expect("profile name")
            .to_string();
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
        let mut cmd = Command::new(cargo);
        // Cargo gives this test process its own package's CARGO_MANIFEST_DIR, CARGO_PKG_NAME,
        // ...; build scripts (ring's) list such variables with `rerun-if-env-changed`, and cargo
        // compares them against its own environment. Passed on, they would make this build
        // rerun those scripts and recompile everything above them (minutes on a loaded
        // machine, inside a test's clock), and the next plain `cargo build` recompile it all
        // again. So the build sees the environment of a shell, as tests/run.sh's does.
        for (name, _) in std::env::vars_os() {
            let name = name.to_string_lossy();
            if (name.starts_with("CARGO_") && name != "CARGO_HOME") || name == "OUT_DIR" {
                cmd.env_remove(name.as_ref());
            }
        }
        cmd.args(["build", "--quiet", "-p", "ringkv-net", "--bin", "ringkv"])
            .args(["-p", "ringkv-tools", "--bin", "ringkv-util"])
            .arg("--manifest-path")
            .arg(&manifest)
            .env("CARGO_TARGET_DIR", &target_dir);
        match profile.as_str() {
            "debug" => {}
            "release" => {
                cmd.arg("--release");
            }
            other => {
                cmd.args(["--profile", other]);
            }
        }
        let status = cmd.status().expect("run cargo build for the ringkv binary");
        assert!(status.success(), "cargo build of the ringkv binary failed");
        let bin = profile_dir.join("ringkv");
        assert!(bin.exists(), "{} missing after build", bin.display());
        // A private hard link: another build into the same target directory (a shared
        // CARGO_TARGET_DIR) replaces `ringkv` with a new file and must not swap the binary under
        // a running test; the link keeps the old inode. Named by size and mtime, so test
        // processes share one link per build; links of older builds are removed.
        let meta = std::fs::metadata(&bin).expect("stat ringkv");
        let mtime = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos());
        let dir = profile_dir.join("ringkv-under-test");
        std::fs::create_dir_all(&dir).expect("create the under-test dir");
        let name = format!("ringkv-{}-{mtime}", meta.len());
        let private = dir.join(&name);
        if !private.exists() {
            let tmp = dir.join(format!("{name}.tmp{}", std::process::id()));
            let _ = std::fs::remove_file(&tmp);
            if std::fs::hard_link(&bin, &tmp).is_err() {
                std::fs::copy(&bin, &tmp).expect("copy the ringkv binary");
            }
            std::fs::rename(&tmp, &private).expect("rename the ringkv link");
        }
        // Links to builds more than an hour older than this one are stale: remove them (a test
        // still running one keeps its inode; tmp files belong to concurrent writers).
        let stale = meta
            .modified()
            .ok()
            .and_then(|t| t.checked_sub(Duration::from_secs(3600)));
        if let (Some(stale), Ok(entries)) = (stale, std::fs::read_dir(&dir)) {
            for e in entries.flatten() {
                let old = e.file_name();
                let is_tmp = old.to_string_lossy().contains(".tmp");
                let built = e.metadata().and_then(|m| m.modified());
                if !is_tmp && built.is_ok_and(|t| t < stale) {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        private
    })
    .clone()
}

/// A running `ringkv` node.
pub struct RingkvProcess {
    child: Option<Child>,
    pub client_port: u16,
    pub peer_port: u16,
    /// The peer port advertised to the cluster when it differs from `peer_port` (a proxy in
    /// front of it: `proxy.rs`).
    advertise_peer_port: Option<u16>,
    pub data_dir: PathBuf,
    extra: Vec<String>,
    /// Extra environment variables for the process.
    env: Vec<(String, String)>,
    /// Keeps a temp data dir alive (None when the caller owns the directory).
    _tmp: Option<tempfile::TempDir>,
}

fn tmp_base() -> PathBuf {
    std::env::temp_dir()
}

impl RingkvProcess {
    /// Starts a single member with a fresh temp data dir and fast raft timing.
    pub fn start(extra: &[&str]) -> RingkvProcess {
        let tmp = tempfile::Builder::new()
            .prefix("ringkv-test-")
            .tempdir_in(tmp_base())
            .expect("temp dir");
        let dir = tmp.path().join("data");
        let mut p = RingkvProcess::start_in(&dir, extra);
        p._tmp = Some(tmp);
        p
    }

    /// Starts a member on `data_dir` (kept after drop).
    pub fn start_in(data_dir: &Path, extra: &[&str]) -> RingkvProcess {
        RingkvProcess::start_in_env(data_dir, extra, &[])
    }

    /// [`RingkvProcess::start_in`] with extra environment variables (kept across restarts).
    pub fn start_in_env(data_dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> RingkvProcess {
        let mut p = RingkvProcess {
            child: None,
            client_port: free_port(),
            peer_port: free_port(),
            advertise_peer_port: None,
            data_dir: data_dir.to_path_buf(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            _tmp: None,
        };
        p.spawn();
        p
    }

    /// Starts a member on `data_dir` with the given ports without waiting for it to be
    /// healthy (a cluster member is healthy only once a quorum runs); see
    /// [`RingkvProcess::wait_ready`].
    pub fn launch(
        data_dir: &Path,
        client_port: u16,
        peer_port: u16,
        extra: &[String],
    ) -> RingkvProcess {
        let mut p = RingkvProcess {
            child: None,
            client_port,
            peer_port,
            advertise_peer_port: None,
            data_dir: data_dir.to_path_buf(),
            extra: extra.to_vec(),
            env: Vec::new(),
            _tmp: None,
        };
        p.spawn_process();
        p
    }

    /// [`RingkvProcess::launch`] with extra environment variables (kept across relaunches).
    pub fn launch_env(
        data_dir: &Path,
        client_port: u16,
        peer_port: u16,
        extra: &[String],
        env: &[(&str, &str)],
    ) -> RingkvProcess {
        Self::spawn_new(data_dir, client_port, peer_port, None, extra, env)
    }

    /// [`RingkvProcess::launch_env`] for a member behind a peer proxy: it listens for peers on
    /// `peer_port` and advertises `advertise_peer_port` (the proxy's).
    pub fn launch_proxied(
        data_dir: &Path,
        client_port: u16,
        peer_port: u16,
        advertise_peer_port: u16,
        extra: &[String],
        env: &[(&str, &str)],
    ) -> RingkvProcess {
        let advertise = Some(advertise_peer_port);
        Self::spawn_new(data_dir, client_port, peer_port, advertise, extra, env)
    }

    fn spawn_new(
        data_dir: &Path,
        client_port: u16,
        peer_port: u16,
        advertise_peer_port: Option<u16>,
        extra: &[String],
        env: &[(&str, &str)],
    ) -> RingkvProcess {
        let mut p = RingkvProcess {
            child: None,
            client_port,
            peer_port,
            advertise_peer_port,
            data_dir: data_dir.to_path_buf(),
            extra: extra.to_vec(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            _tmp: None,
        };
        p.spawn_process();
        p
    }

    /// Adds flags for the next start (`relaunch`, `restart`).
    pub fn add_args(&mut self, args: &[&str]) {
        self.extra.extend(args.iter().map(|s| s.to_string()));
    }

    /// Drops every occurrence of flag `arg` for the next start.
    pub fn remove_arg(&mut self, arg: &str) {
        self.extra.retain(|a| a != arg);
    }

    /// Starts the node again on the same data dir and ports, without waiting for health.
    pub fn relaunch(&mut self) {
        assert!(self.child.is_none(), "stop or kill first");
        self.spawn_process();
    }

    /// Whether the process is running (not killed, not exited).
    pub fn running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    fn spawn(&mut self) {
        self.spawn_process();
        self.wait_ready();
    }

    fn spawn_process(&mut self) {
        let client = format!("http://127.0.0.1:{}", self.client_port);
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let advertised_peer = format!(
            "http://127.0.0.1:{}",
            self.advertise_peer_port.unwrap_or(self.peer_port)
        );
        let log = self.data_dir.with_extension("log");
        std::fs::create_dir_all(self.data_dir.parent().expect("parent")).expect("mkdir");
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("log file");
        let child = Command::new(ringkv_binary())
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &advertised_peer])
            .args(self.default_timing())
            .args(&self.extra)
            .env("RINGKV_LOG", "warn")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::null())
            .stderr(Stdio::from(log_file))
            .spawn()
            .expect("spawn ringkv");
        self.child = Some(child);
    }

    /// Fast raft timing (10 ms heartbeats, 100 ms election timeout) unless the caller's flags
    /// set the timing themselves. A single member campaigns at once and has no peer to lose;
    /// cluster members get [`crate::CLUSTER_TIMING`] from their launcher.
    fn default_timing(&self) -> &'static [&'static str] {
        let custom = self
            .extra
            .iter()
            .any(|a| a.starts_with("--heartbeat-interval") || a.starts_with("--election-timeout"));
        if custom {
            &[]
        } else {
            &["--heartbeat-interval", "10", "--election-timeout", "100"]
        }
    }

    /// Waits until `/health` says true (a leader is known and the node serves).
    pub fn wait_ready(&mut self) {
        let start = Instant::now();
        loop {
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                panic!(
                    "ringkv exited during startup ({status}); log: {}",
                    self.log()
                );
            }
            if let Ok(r) = http_get(self.client_port, "/health")
                && r.status == 200
                && r.body.contains("\"true\"")
            {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "ringkv not healthy within 30 s; log: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The value of one series of the member's `/metrics` (`name{labels}` exactly as
    /// exposed), or `None` when the member does not answer or has no such series.
    pub fn metric(&self, series: &str) -> Option<f64> {
        let r = http_get(self.client_port, "/metrics").ok()?;
        r.body.lines().find_map(|l| {
            l.strip_prefix(series)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
    }

    /// The sum of every series of metric `name` (all label sets) on the member's `/metrics`;
    /// `None` when the member does not answer.
    pub fn metric_sum(&self, name: &str) -> Option<f64> {
        let r = http_get(self.client_port, "/metrics").ok()?;
        let sum = r
            .body
            .lines()
            .filter_map(|l| {
                let rest = l.strip_prefix(name)?;
                let value = match rest.strip_prefix('{') {
                    Some(labelled) => labelled.split_once("} ")?.1,
                    None => rest.strip_prefix(' ')?,
                };
                value.trim().parse::<f64>().ok()
            })
            .sum();
        Some(sum)
    }

    /// The node's stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.data_dir.with_extension("log")).unwrap_or_default()
    }

    /// `127.0.0.1:<client port>`.
    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Sends SIGTERM and waits for a clean exit (status 0).
    pub fn stop(&mut self) {
        let mut child = self.child.take().expect("running");
        let rc = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .expect("kill -TERM");
        assert!(rc.success());
        let start = Instant::now();
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                assert!(
                    status.success(),
                    "ringkv exited with {status} after SIGTERM; log: {}",
                    self.log()
                );
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "ringkv did not exit within 20 s of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGKILL: no shutdown code runs.
    pub fn kill9(&mut self) {
        let mut child = self.child.take().expect("running");
        child.kill().expect("kill -9");
        let _ = child.wait();
    }

    /// Starts the node again on the same data dir and ports.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "stop or kill first");
        self.spawn();
    }

    /// Runs `etcdctl` (v3 API) against this node.
    pub fn etcdctl(&self, args: &[&str]) -> Output {
        self.etcdctl_stdin(args, None)
    }

    /// Runs `etcdctl` with `stdin` as its input.
    pub fn etcdctl_stdin(&self, args: &[&str], stdin: Option<&str>) -> Output {
        etcdctl_at(&self.endpoint(), args, stdin)
    }

    /// `etcdctl` that must succeed; returns stdout.
    pub fn ctl(&self, args: &[&str]) -> String {
        let out = self.etcdctl(args);
        assert!(
            out.status.success(),
            "etcdctl {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8(out.stdout).expect("utf-8 output")
    }

    /// `etcdctl` that must fail; returns stderr.
    pub fn ctl_err(&self, args: &[&str]) -> String {
        let out = self.etcdctl(args);
        assert!(
            !out.status.success(),
            "etcdctl {args:?} should fail but printed {}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8(out.stderr).expect("utf-8 output")
    }
}

impl Drop for RingkvProcess {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A plain HTTP/1.1 GET; the body is read to the end (`Connection: close`).
pub fn http_get(port: u16, path: &str) -> std::io::Result<HttpResponse> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(20)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )?;
    let mut r = BufReader::new(s);
    let mut status_line = String::new();
    r.read_line(&mut status_line)?;
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let mut chunked = false;
    loop {
        let mut line = String::new();
        r.read_line(&mut line)?;
        if line.trim().is_empty() {
            break;
        }
        let l = line.to_ascii_lowercase();
        if l.starts_with("transfer-encoding:") && l.contains("chunked") {
            chunked = true;
        }
    }
    let mut body = String::new();
    if chunked {
        loop {
            let mut size = String::new();
            r.read_line(&mut size)?;
            let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            if n == 0 {
                break;
            }
            let mut chunk = vec![0u8; n + 2];
            r.read_exact(&mut chunk)?;
            body.push_str(&String::from_utf8_lossy(&chunk[..n]));
        }
    } else {
        r.read_to_string(&mut body)?;
    }
    Ok(HttpResponse { status, body })
}

/// etcd's errors for a request that was not proposed because no member led at that moment
/// (an election under way): sending it again cannot apply it twice.
pub const NOT_APPLIED: &[&str] = &["etcdserver: no leader"];

/// The errors etcd documents as transient (the clientv3 docs: the client may retry): no
/// leader, a leader change while the request waited, a request that timed out (with or
/// without "possibly due to previous leader failure"). After the last two the request may or
/// may not have been applied: retry with them only a request that leaves the same state when
/// applied twice (a read, a put of a fixed value).
pub const TRANSIENT: &[&str] = &[
    "etcdserver: no leader",
    "etcdserver: leader changed",
    "etcdserver: request timed out",
];

/// [`etcdctl_at`], sent again while it fails with one of the `retry` errors (a leader change
/// on a loaded machine), for up to 30 s; returns the last output.
pub fn etcdctl_retrying(endpoint: &str, args: &[&str], retry: &[&str]) -> Output {
    let start = Instant::now();
    loop {
        let out = etcdctl_at(endpoint, args, None);
        let stderr = String::from_utf8_lossy(&out.stderr);
        if out.status.success()
            || !retry.iter().any(|e| stderr.contains(e))
            || start.elapsed() > Duration::from_secs(30)
        {
            return out;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Runs `etcdctl` (v3 API) against `endpoint` with optional standard input.
pub fn etcdctl_at(endpoint: &str, args: &[&str], stdin: Option<&str>) -> Output {
    let mut cmd = Command::new("etcdctl");
    cmd.env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoint}"))
        .args(["--command-timeout=20s", "--dial-timeout=10s"])
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .expect("spawn etcdctl (Debian package etcd-client; tests/run.sh installs it)");
    if let Some(input) = stdin {
        let mut si = child.stdin.take().expect("stdin");
        si.write_all(input.as_bytes()).expect("write stdin");
    }
    child.wait_with_output().expect("etcdctl output")
}

//! TLS fixtures for system tests: a test PKI made with rcgen at test time (a CA, a server
//! certificate for 127.0.0.1/localhost usable as client certificate too, a client
//! certificate, and a second CA with a certificate of its own), and `ringkv` members started
//! with https URLs (the plain harness in `ringkv.rs` speaks http only).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::etcd::free_port;
use crate::ringkv::{etcdctl_at, ringkv_binary};

/// Certificate and key files (PEM) in a temp directory.
pub struct TestPki {
    pub ca: PathBuf,
    /// Signed by `ca`; SANs 127.0.0.1 and localhost; server and client use.
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    /// Signed by `ca`; client use only; CN `test-client`.
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    /// A CA nothing else trusts.
    pub other_ca: PathBuf,
    /// Signed by `other_ca`; SANs 127.0.0.1 and localhost; server and client use.
    pub other_cert: PathBuf,
    pub other_key: PathBuf,
    _dir: tempfile::TempDir,
}

fn ca(name: &str) -> (rcgen::Certificate, rcgen::KeyPair) {
    let key = rcgen::KeyPair::generate().expect("CA key");
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    p.distinguished_name.push(rcgen::DnType::CommonName, name);
    p.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    let cert = p.self_signed(&key).expect("self-sign the CA");
    (cert, key)
}

fn leaf(
    cn: &str,
    sans: &[&str],
    usages: Vec<rcgen::ExtendedKeyUsagePurpose>,
    issuer: &(rcgen::Certificate, rcgen::KeyPair),
) -> (String, String) {
    let key = rcgen::KeyPair::generate().expect("leaf key");
    let mut p =
        rcgen::CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .expect("leaf params");
    p.distinguished_name.push(rcgen::DnType::CommonName, cn);
    p.extended_key_usages = usages;
    let cert = p
        .signed_by(&key, &issuer.0, &issuer.1)
        .expect("sign a leaf");
    (cert.pem(), key.serialize_pem())
}

impl TestPki {
    pub fn new() -> TestPki {
        use rcgen::ExtendedKeyUsagePurpose::{ClientAuth, ServerAuth};
        let dir = tempfile::Builder::new()
            .prefix("ringkv-pki-")
            .tempdir()
            .expect("temp dir");
        let write = |name: &str, pem: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, pem).expect("write a PEM file");
            p
        };
        let main = ca("ringkv test CA");
        let other = ca("another CA");
        let hosts = ["127.0.0.1", "localhost"];
        let (sc, sk) = leaf("test-server", &hosts, vec![ServerAuth, ClientAuth], &main);
        let (cc, ck) = leaf("test-client", &[], vec![ClientAuth], &main);
        let (oc, ok) = leaf("other-server", &hosts, vec![ServerAuth, ClientAuth], &other);
        TestPki {
            ca: write("ca.pem", &main.0.pem()),
            server_cert: write("server.pem", &sc),
            server_key: write("server-key.pem", &sk),
            client_cert: write("client.pem", &cc),
            client_key: write("client-key.pem", &ck),
            other_ca: write("other-ca.pem", &other.0.pem()),
            other_cert: write("other.pem", &oc),
            other_key: write("other-key.pem", &ok),
            _dir: dir,
        }
    }

    /// etcdctl's flags for a client with the client certificate.
    pub fn etcdctl_flags(&self) -> Vec<String> {
        vec![
            format!("--cacert={}", self.ca.display()),
            format!("--cert={}", self.client_cert.display()),
            format!("--key={}", self.client_key.display()),
        ]
    }

    /// curl's flags for a client with the client certificate.
    pub fn curl_flags(&self) -> Vec<String> {
        vec![
            "--cacert".into(),
            self.ca.display().to_string(),
            "--cert".into(),
            self.client_cert.display().to_string(),
            "--key".into(),
            self.client_key.display().to_string(),
        ]
    }
}

impl Default for TestPki {
    fn default() -> Self {
        TestPki::new()
    }
}

/// Runs curl (`-sS`, 10 s limit) with `args`.
pub fn curl(args: &[String]) -> Output {
    Command::new("curl")
        .args(["-sS", "--max-time", "10"])
        .args(args)
        .output()
        .expect("run curl")
}

/// A `ringkv` process started with exactly the given flags (plus a data dir and fast raft
/// timing); killed on drop.
pub struct TlsMember {
    child: Option<Child>,
    pub client_port: u16,
    pub peer_port: u16,
    pub data_dir: PathBuf,
    log: PathBuf,
}

impl TlsMember {
    /// Starts `ringkv` on `data_dir` with `flags`, without waiting.
    pub fn launch(data_dir: &Path, client_port: u16, peer_port: u16, flags: &[String]) -> Self {
        std::fs::create_dir_all(data_dir.parent().expect("parent")).expect("mkdir");
        let log = data_dir.with_extension("log");
        let log_file = std::fs::File::create(&log).expect("log file");
        let child = Command::new(ringkv_binary())
            .arg("--data-dir")
            .arg(data_dir)
            // A lone member campaigns at once whatever the timing; members of a cluster need
            // timing a loaded machine does not turn into spurious elections.
            .args(crate::cluster::CLUSTER_TIMING)
            .args(flags)
            .env("RINGKV_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::from(log_file))
            .spawn()
            .expect("spawn ringkv");
        TlsMember {
            child: Some(child),
            client_port,
            peer_port,
            data_dir: data_dir.to_path_buf(),
            log,
        }
    }

    /// A single member with https client URLs and `flags` (TLS flags) on fresh ports.
    pub fn single(dir: &Path, flags: &[String]) -> Self {
        let (client, peer) = (free_port(), free_port());
        let mut all = vec![
            format!("--listen-client-urls=https://127.0.0.1:{client}"),
            format!("--advertise-client-urls=https://127.0.0.1:{client}"),
            format!("--listen-peer-urls=http://127.0.0.1:{peer}"),
            format!("--initial-advertise-peer-urls=http://127.0.0.1:{peer}"),
        ];
        all.extend_from_slice(flags);
        TlsMember::launch(&dir.join("data"), client, peer, &all)
    }

    /// `https://127.0.0.1:<client port>`.
    pub fn endpoint(&self) -> String {
        format!("https://127.0.0.1:{}", self.client_port)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits (up to 30 s) until `/health` over TLS, with `curl_flags`, says true.
    pub fn wait_healthy(&mut self, curl_flags: &[String]) {
        let start = Instant::now();
        loop {
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                panic!("ringkv exited ({status}); log: {}", self.log());
            }
            if self.healthy(curl_flags) {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "ringkv not healthy over TLS within 30 s; log: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Whether `/health` over TLS answers true now.
    pub fn healthy(&self, curl_flags: &[String]) -> bool {
        let mut args = curl_flags.to_vec();
        args.push(format!("{}/health", self.endpoint()));
        let out = curl(&args);
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("\"true\"")
    }

    /// Waits for the process to exit by itself (up to 30 s); returns whether it succeeded.
    pub fn wait_exit(&mut self) -> bool {
        let mut c = self.child.take().expect("running");
        let start = Instant::now();
        loop {
            if let Some(status) = c.try_wait().expect("wait") {
                return status.success();
            }
            if start.elapsed() > Duration::from_secs(30) {
                let _ = c.kill();
                panic!("ringkv did not exit; log: {}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// etcdctl against this member with `tls` flags (e.g. [`TestPki::etcdctl_flags`]).
    pub fn etcdctl(&self, tls: &[String], args: &[&str]) -> Output {
        let mut all: Vec<&str> = tls.iter().map(String::as_str).collect();
        all.extend_from_slice(args);
        etcdctl_at(&self.endpoint(), &all, None)
    }

    /// [`TlsMember::etcdctl`] that must succeed, sent again while it meets one of etcd's
    /// [`TRANSIENT`](crate::TRANSIENT) errors of a leader change (the tests send only reads,
    /// puts of fixed values and lease requests whose repetition they do not count); returns
    /// stdout.
    pub fn ctl(&self, tls: &[String], args: &[&str]) -> String {
        let mut all: Vec<&str> = tls.iter().map(String::as_str).collect();
        all.extend_from_slice(args);
        let out = crate::ringkv::etcdctl_retrying(&self.endpoint(), &all, crate::ringkv::TRANSIENT);
        assert!(
            out.status.success(),
            "etcdctl {args:?} failed: {}\n{}\nlog: {}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout),
            self.log()
        );
        String::from_utf8(out.stdout).expect("utf-8")
    }
}

impl Drop for TlsMember {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

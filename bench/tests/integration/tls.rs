//! TLS flags against a real etcd serving https with client-certificate authentication.
//! Certificates are made here (a CA, a server certificate for 127.0.0.1, a client certificate,
//! and an unrelated second CA), written to a temp dir.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair};
use ringkv_tests::free_port;

use crate::util::{BIN, bench_fails, check_load_report, u};

struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

fn make_ca(name: &str) -> Ca {
    let mut p = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name.push(DnType::CommonName, name);
    let key = KeyPair::generate().expect("CA key");
    let cert = p.self_signed(&key).expect("self-sign the CA");
    Ca { cert, key }
}

/// A leaf certificate signed by `ca`; returns (cert PEM, key PEM).
fn make_leaf(ca: &Ca, sans: &[&str], usage: ExtendedKeyUsagePurpose) -> (String, String) {
    let mut p = CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .expect("leaf params");
    p.distinguished_name.push(DnType::CommonName, sans[0]);
    p.extended_key_usages = vec![usage];
    let key = KeyPair::generate().expect("leaf key");
    let cert = p.signed_by(&key, &ca.cert, &ca.key).expect("sign leaf");
    (cert.pem(), key.serialize_pem())
}

fn write(dir: &Path, name: &str, pem: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, pem).expect("write PEM");
    p
}

/// etcd serving https on 127.0.0.1 and requiring client certificates; killed on drop.
struct TlsEtcd {
    child: Child,
    port: u16,
}

impl Drop for TlsEtcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_tls_etcd(dir: &Path, cert: &Path, key: &Path, ca: &Path) -> TlsEtcd {
    let port = free_port();
    let peer = format!("http://127.0.0.1:{}", free_port());
    let client = format!("https://127.0.0.1:{port}");
    let etcd = std::env::var("ETCD_BIN").unwrap_or_else(|_| "etcd".to_owned());
    let child = Command::new(&etcd)
        .args(["--name", "tls", "--log-level", "error"])
        .arg("--data-dir")
        .arg(dir.join("data"))
        .args(["--listen-client-urls", &client])
        .args(["--advertise-client-urls", &client])
        .args(["--listen-peer-urls", &peer])
        .args(["--initial-advertise-peer-urls", &peer])
        .args(["--initial-cluster", &format!("tls={peer}")])
        .arg("--cert-file")
        .arg(cert)
        .arg("--key-file")
        .arg(key)
        .arg("--trusted-ca-file")
        .arg(ca)
        .arg("--client-cert-auth")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot start {etcd} ({e}): tests/run.sh installs Debian's etcd-server")
        });
    TlsEtcd { child, port }
}

#[test]
fn put_over_tls_with_a_client_certificate_and_a_wrong_ca_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = make_ca("ringkv test CA");
    let other = make_ca("some other CA");
    let (server_pem, server_key) = make_leaf(
        &ca,
        &["127.0.0.1", "localhost"],
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    let (client_pem, client_key) =
        make_leaf(&ca, &["bench-client"], ExtendedKeyUsagePurpose::ClientAuth);
    let ca_pem = write(dir.path(), "ca.pem", &ca.cert.pem());
    let other_pem = write(dir.path(), "other-ca.pem", &other.cert.pem());
    let server_crt = write(dir.path(), "server.pem", &server_pem);
    let server_key = write(dir.path(), "server-key.pem", &server_key);
    let client_crt = write(dir.path(), "client.pem", &client_pem);
    let client_key = write(dir.path(), "client-key.pem", &client_key);

    let mut etcd = start_tls_etcd(dir.path(), &server_crt, &server_key, &ca_pem);
    let ep = format!("127.0.0.1:{}", etcd.port);
    let tls_args = |ca: &Path| -> Vec<String> {
        vec![
            "--endpoints".into(),
            ep.clone(),
            "--cacert".into(),
            ca.display().to_string(),
            "--cert".into(),
            client_crt.display().to_string(),
            "--key".into(),
            client_key.display().to_string(),
            "--dial-timeout".into(),
            "1s".into(),
        ]
    };

    // Until etcd listens and has a leader, a put fails; retry within a bound.
    let deadline = Instant::now() + Duration::from_secs(30);
    let report = loop {
        let mut args = tls_args(&ca_pem);
        args.extend(
            [
                "put",
                "--total",
                "200",
                "--clients",
                "4",
                "--conns",
                "2",
                "--json",
            ]
            .map(String::from),
        );
        let out = Command::new(BIN)
            .args(&args)
            .output()
            .expect("run ringkv-bench");
        if out.status.success() {
            let line = String::from_utf8_lossy(&out.stdout)
                .lines()
                .next()
                .map(str::to_owned);
            let v: serde_json::Value =
                serde_json::from_str(&line.expect("one JSON line")).expect("JSON report");
            if u(&v, "errors") == 0 {
                break v;
            }
        }
        if let Ok(Some(status)) = etcd.child.try_wait() {
            panic!("etcd exited: {status}");
        }
        assert!(
            Instant::now() < deadline,
            "put over TLS never succeeded; last stderr:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    check_load_report(&report, "put", 200);
    assert_eq!(u(&report, "clients"), 4);

    // The server's certificate is not signed by this CA: the handshake fails, and says so.
    let mut args = tls_args(&other_pem);
    args.extend(["put", "--total", "10"].map(String::from));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let err = bench_fails(&refs);
    assert!(err.contains("TLS handshake"), "{err}");

    // A file that is not PEM is named in the error.
    let mut args = tls_args(&client_key);
    args.extend(["put", "--total", "10"].map(String::from));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let err = bench_fails(&refs);
    assert!(
        err.contains("--cacert") && err.contains("client-key.pem"),
        "{err}"
    );

    // --cert without --key is refused before connecting.
    let err = bench_fails(&[
        "--endpoints",
        &ep,
        "--cert",
        client_crt.to_str().unwrap(),
        "put",
        "--total",
        "1",
    ]);
    assert!(err.contains("--cert needs --key"), "{err}");
}

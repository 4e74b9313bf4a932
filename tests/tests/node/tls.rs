//! Client TLS: etcdctl and curl against a member serving https client URLs (certificates made
//! with rcgen at test time), client-certificate refusal compared with a real etcd 3.4,
//! `--auto-tls`, and bad certificate files.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ringkv_tests::{TestPki, TlsMember, curl, free_port};
use serde_json::Value;

fn member_with_client_auth(pki: &TestPki, dir: &std::path::Path) -> TlsMember {
    let mut m = TlsMember::single(
        dir,
        &[
            format!("--cert-file={}", pki.server_cert.display()),
            format!("--key-file={}", pki.server_key.display()),
            format!("--trusted-ca-file={}", pki.ca.display()),
            "--client-cert-auth".into(),
        ],
    );
    m.wait_healthy(&pki.curl_flags());
    m
}

/// Runs `etcdctl watch` with `args` until its output holds `want` lines; returns them.
fn watch_lines(m: &TlsMember, tls: &[String], args: &[&str], want: usize) -> Vec<String> {
    let mut child = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={}", m.endpoint()))
        .args(tls)
        .arg("watch")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn etcdctl watch");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let mut lines = Vec::new();
    let start = Instant::now();
    while lines.len() < want && start.elapsed() < Duration::from_secs(20) {
        if let Ok(l) = rx.recv_timeout(Duration::from_millis(100)) {
            lines.push(l);
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    lines
}

#[test]
fn etcdctl_and_curl_over_tls_with_client_certificates() {
    let pki = TestPki::new();
    let tmp = tempfile::tempdir().unwrap();
    let m = member_with_client_auth(&pki, tmp.path());
    let tls = pki.etcdctl_flags();

    assert_eq!(m.ctl(&tls, &["put", "k1", "v1"]).trim(), "OK");
    assert_eq!(m.ctl(&tls, &["put", "k2", "v2"]).trim(), "OK");
    assert_eq!(m.ctl(&tls, &["get", "k", "--prefix"]), "k1\nv1\nk2\nv2\n");
    let lines = watch_lines(&m, &tls, &["k1", "--rev=1"], 3);
    assert_eq!(lines, vec!["PUT", "k1", "v1"]);

    // member list and endpoint status show the https client URL.
    let list = m.ctl(&tls, &["member", "list"]);
    assert!(
        list.contains(&format!(", {}", m.endpoint())),
        "member list: {list}"
    );
    let status: Value =
        serde_json::from_str(&m.ctl(&tls, &["endpoint", "status", "-w", "json"])).unwrap();
    assert_eq!(status[0]["Endpoint"], m.endpoint());
    assert!(status[0]["Status"]["leader"].as_u64().unwrap() != 0);

    // curl with the CA and a client certificate: /health, /version, /metrics, the gateway.
    let get = |path: &str| {
        let mut args = pki.curl_flags();
        args.push(format!("{}{path}", m.endpoint()));
        let out = curl(&args);
        assert!(out.status.success(), "curl {path}: {out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    assert_eq!(get("/health"), r#"{"health":"true"}"#);
    let version: Value = serde_json::from_str(&get("/version")).unwrap();
    assert_eq!(version["etcdserver"], "3.4.23");
    assert!(get("/metrics").contains("etcd_server_has_leader 1"));
    let mut args = pki.curl_flags();
    args.extend([
        "-X".into(),
        "POST".into(),
        "-d".into(),
        r#"{"key":"azE="}"#.into(),
        format!("{}/v3/kv/range", m.endpoint()),
    ]);
    let out = curl(&args);
    let range: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(range["kvs"][0]["value"], "djE=", "{range}");
    // HTTP/2 over TLS (ALPN h2) for a request that is not gRPC goes to the HTTP mux too.
    let mut args = pki.curl_flags();
    args.extend(["--http2".into(), format!("{}/version", m.endpoint())]);
    let out = curl(&args);
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("etcdcluster"));

    // Plain HTTP on the TLS port is not served.
    let out = curl(&[format!("http://127.0.0.1:{}/health", m.client_port)]);
    assert!(!String::from_utf8_lossy(&out.stdout).contains("true"));
}

/// etcdctl and curl without a client certificate under `--client-cert-auth`: refused during
/// the handshake, and etcdctl says what it says against etcd 3.4 with the same certificates.
#[test]
fn a_client_without_a_certificate_is_refused_like_etcd() {
    let pki = TestPki::new();
    let tmp = tempfile::tempdir().unwrap();
    let m = member_with_client_auth(&pki, tmp.path());
    let ca_only = [format!("--cacert={}", pki.ca.display())];
    let short = ["--dial-timeout=1s", "--command-timeout=2s"];
    let refused = |endpoint: &str| {
        let mut args: Vec<&str> = ca_only.iter().map(String::as_str).collect();
        args.extend(short);
        args.extend(["get", "k"]);
        let out = ringkv_tests::etcdctl_at(endpoint, &args, None);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        err.lines().last().unwrap_or_default().trim().to_string()
    };
    let ours = refused(&m.endpoint());
    assert_eq!(ours, "Error: context deadline exceeded");
    let out = curl(&[
        "--cacert".into(),
        pki.ca.display().to_string(),
        format!("{}/health", m.endpoint()),
    ]);
    assert!(!out.status.success(), "curl without a certificate: {out:?}");
    // A certificate from another CA is refused as well.
    let mut args = vec![
        format!("--cacert={}", pki.ca.display()),
        format!("--cert={}", pki.other_cert.display()),
        format!("--key={}", pki.other_key.display()),
    ];
    args.extend(short.iter().map(|s| s.to_string()));
    args.extend(["get".into(), "k".into()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = ringkv_tests::etcdctl_at(&m.endpoint(), &args, None);
    assert!(!out.status.success());
    assert!(m.log().contains("client TLS handshake"), "{}", m.log());

    // The same with etcd 3.4.
    let (client, peer) = (free_port(), free_port());
    let edir = tmp.path().join("etcd");
    let mut etcd = Command::new("etcd")
        .arg(format!("--data-dir={}", edir.display()))
        .arg(format!("--listen-client-urls=https://127.0.0.1:{client}"))
        .arg(format!(
            "--advertise-client-urls=https://127.0.0.1:{client}"
        ))
        .arg(format!("--listen-peer-urls=http://127.0.0.1:{peer}"))
        .arg(format!(
            "--initial-advertise-peer-urls=http://127.0.0.1:{peer}"
        ))
        .arg(format!("--initial-cluster=default=http://127.0.0.1:{peer}"))
        .arg(format!("--cert-file={}", pki.server_cert.display()))
        .arg(format!("--key-file={}", pki.server_key.display()))
        .arg(format!("--trusted-ca-file={}", pki.ca.display()))
        .arg("--client-cert-auth")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn etcd (Debian etcd-server; tests/run.sh installs it)");
    let endpoint = format!("https://127.0.0.1:{client}");
    let start = Instant::now();
    loop {
        let mut args = pki.curl_flags();
        args.push(format!("{endpoint}/health"));
        if String::from_utf8_lossy(&curl(&args).stdout).contains("true") {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "etcd not healthy"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let theirs = refused(&endpoint);
    let _ = etcd.kill();
    let _ = etcd.wait();
    assert_eq!(ours, theirs);
}

/// `--auto-tls`: a self-signed certificate in `<data-dir>/fixtures/client`, reused on restart;
/// etcdctl with `--insecure-skip-tls-verify` works, verification against a CA does not.
#[test]
fn auto_tls_serves_a_self_signed_certificate() {
    let tmp = tempfile::tempdir().unwrap();
    let insecure = vec![
        "--insecure-skip-tls-verify".to_string(),
        "--insecure-transport=false".to_string(),
    ];
    let mut m = TlsMember::single(tmp.path(), &["--auto-tls".into()]);
    m.wait_healthy(&["-k".into()]);
    assert_eq!(m.ctl(&insecure, &["put", "a", "1"]).trim(), "OK");
    assert_eq!(m.ctl(&insecure, &["get", "a", "--print-value-only"]), "1\n");
    let cert = m.data_dir.join("fixtures/client/cert.pem");
    let key = m.data_dir.join("fixtures/client/key.pem");
    let pem = std::fs::read_to_string(&cert).unwrap();
    assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"), "{pem}");
    assert!(key.exists());
    // The generated certificate verifies as itself for 127.0.0.1.
    let out = curl(&[
        "--cacert".into(),
        cert.display().to_string(),
        format!("{}/health", m.endpoint()),
    ]);
    assert!(out.status.success(), "{out:?}");
    // Without skipping verification etcdctl refuses the unknown issuer.
    let out = m.etcdctl(
        &["--dial-timeout=1s".into(), "--command-timeout=2s".into()],
        &["get", "a"],
    );
    assert!(!out.status.success());
}

/// Bad certificate files stop the start with a message naming the flag and the file.
#[test]
fn bad_certificate_files_are_named() {
    let pki = TestPki::new();
    let tmp = tempfile::tempdir().unwrap();
    let garbage = tmp.path().join("garbage.pem");
    std::fs::write(&garbage, "not a certificate\n").unwrap();
    let missing = tmp.path().join("missing.pem");
    let cases: Vec<(Vec<String>, String)> = vec![
        (
            vec![
                format!("--cert-file={}", missing.display()),
                format!("--key-file={}", pki.server_key.display()),
            ],
            format!("--cert-file {}: No such file", missing.display()),
        ),
        (
            vec![
                format!("--cert-file={}", garbage.display()),
                format!("--key-file={}", pki.server_key.display()),
            ],
            format!(
                "--cert-file {}: no PEM CERTIFICATE block",
                garbage.display()
            ),
        ),
        (
            vec![
                format!("--cert-file={}", pki.server_cert.display()),
                format!("--key-file={}", garbage.display()),
            ],
            format!("--key-file {}:", garbage.display()),
        ),
        (
            vec![
                format!("--cert-file={}", pki.server_cert.display()),
                format!("--key-file={}", pki.other_key.display()),
            ],
            "the key does not fit the certificate".to_string(),
        ),
        (
            vec![
                format!("--cert-file={}", pki.server_cert.display()),
                format!("--key-file={}", pki.server_key.display()),
                format!("--trusted-ca-file={}", garbage.display()),
                "--client-cert-auth".into(),
            ],
            format!("--trusted-ca-file {}:", garbage.display()),
        ),
    ];
    for (i, (flags, want)) in cases.into_iter().enumerate() {
        let dir = tmp.path().join(format!("case{i}"));
        let mut m = TlsMember::single(&dir, &flags);
        assert!(!m.wait_exit(), "case {i} started");
        let log = m.log();
        assert!(log.contains(&want), "case {i}: want {want:?} in {log}");
    }
}

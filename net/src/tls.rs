//! TLS on the client and peer URLs (etcd's `--cert-file` … `--peer-auto-tls`; design.md "TLS").
//!
//! rustls with the ring provider. Per side (client, peer) the flags become a [`TlsSpec`]; at
//! start [`load`] reads the files (every problem names the flag and the file) or, under
//! `--auto-tls`/`--peer-auto-tls` without a certificate, makes a self-signed one in
//! `<data-dir>/fixtures/{client,peer}/{cert,key}.pem` (kept and reused across restarts, like
//! etcd). A side's [`SideTls`] holds the server configuration its listeners accept with and the
//! client configuration this member dials with (peer connections, forwarding to the leader's
//! client URL).
//!
//! - Client listeners: ALPN `h2` and `http/1.1`. The connection is then sniffed exactly like a
//!   plain one (server.rs): the HTTP/2 preface goes to the h2 server, where `content-type:
//!   application/grpc` selects gRPC and anything else the HTTP mux; HTTP/1.x goes to the mux.
//! - `--client-cert-auth` (`--peer-client-cert-auth`): a certificate chaining to
//!   `--trusted-ca-file` is required; `--client-crl-file` revokes; `--cipher-suites` limits
//!   the TLS 1.2 suites (TLS 1.3 suites are always on, as in Go).
//! - Dialing: the server is verified against the side's trusted CA file with the URL's host
//!   as the name (an IP address against the IP SANs); without a CA file the system bundle is
//!   used, and under auto-TLS the server certificate is not verified (etcd: self-signed
//!   certificates skip verification). The side's certificate is offered as client certificate.
//!
//! The peer transport is blocking (threads): [`PeerStream`] is a TCP stream that may carry a
//! rustls connection, with `TcpStream`'s cloning, timeout and shutdown methods.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{
    CertificateDer, CertificateRevocationListDer, PrivateKeyDer, ServerName, UnixTime,
};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};

/// The CA bundle trusted when dialing without a trusted CA file (Debian's).
const SYSTEM_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";
/// How long a client connection's TLS handshake may take before it is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Which flags a [`TlsSpec`] came from (for messages and the auto-TLS directory).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Side {
    /// `--cert-file`, `--key-file`, `--trusted-ca-file`, `--client-cert-auth`, `--auto-tls`.
    #[default]
    Client,
    /// The `--peer-*` flags.
    Peer,
}

impl Side {
    fn prefix(self) -> &'static str {
        match self {
            Side::Client => "",
            Side::Peer => "peer-",
        }
    }

    fn fixtures(self) -> &'static str {
        match self {
            Side::Client => "client",
            Side::Peer => "peer",
        }
    }
}

/// What the flags ask of one side; empty when the side is plain TCP.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsSpec {
    pub side: Side,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub trusted_ca_file: Option<PathBuf>,
    pub client_cert_auth: bool,
    pub auto_tls: bool,
    /// Client side only: `--client-crl-file`.
    pub crl_file: Option<PathBuf>,
    /// `--cipher-suites`, Go's names (TLS 1.2 suites).
    pub cipher_suites: Vec<String>,
    /// Hosts of this side's listen URLs (SANs of an auto-TLS certificate).
    pub hosts: Vec<String>,
}

impl TlsSpec {
    /// Whether this side has a certificate (given or generated).
    pub fn enabled(&self) -> bool {
        self.cert_file.is_some() || self.auto_tls
    }

    fn flag(&self, name: &str) -> String {
        format!("--{}{name}", self.side.prefix())
    }

    /// Checks the combination of flags (no file is read).
    pub fn check(&self) -> Result<(), String> {
        match (&self.cert_file, &self.key_file) {
            (Some(_), None) => {
                return Err(format!(
                    "{} needs {}",
                    self.flag("cert-file"),
                    self.flag("key-file")
                ));
            }
            (None, Some(_)) => {
                return Err(format!(
                    "{} needs {}",
                    self.flag("key-file"),
                    self.flag("cert-file")
                ));
            }
            _ => {}
        }
        if self.client_cert_auth && self.trusted_ca_file.is_none() {
            return Err(format!(
                "{} needs {} (the CA client certificates are verified against)",
                self.flag("client-cert-auth"),
                self.flag("trusted-ca-file")
            ));
        }
        if self.crl_file.is_some() && !self.client_cert_auth {
            return Err("--client-crl-file needs --client-cert-auth".into());
        }
        cipher_suites(&self.cipher_suites)?;
        Ok(())
    }
}

/// One side's loaded TLS: what its listeners accept with and what this member dials with.
pub struct SideTls {
    pub server: Arc<ServerConfig>,
    pub client: Arc<ClientConfig>,
}

impl std::fmt::Debug for SideTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SideTls")
    }
}

fn read_certs(path: &Path, flag: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("{flag} {}: {}", path.display(), pem_error(e)))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{flag} {}: {}", path.display(), pem_error(e)))?;
    if certs.is_empty() {
        return Err(format!(
            "{flag} {}: no PEM CERTIFICATE block in the file",
            path.display()
        ));
    }
    Ok(certs)
}

fn read_key(path: &Path, flag: &str) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_file(path)
        .map_err(|e| format!("{flag} {}: {}", path.display(), pem_error(e)))
}

fn pem_error(e: rustls::pki_types::pem::Error) -> String {
    match e {
        rustls::pki_types::pem::Error::Io(e) => e.to_string(),
        rustls::pki_types::pem::Error::NoItemsFound => "no PEM block of the expected kind".into(),
        other => format!("not a valid PEM file ({other:?})"),
    }
}

fn provider(suites: &[String]) -> Result<Arc<CryptoProvider>, String> {
    let mut p = rustls::crypto::ring::default_provider();
    if let Some(tls12) = cipher_suites(suites)? {
        p.cipher_suites
            .retain(|s| s.version() == &rustls::version::TLS13 || tls12.contains(&s.suite()));
    }
    Ok(Arc::new(p))
}

/// Go's names of `--cipher-suites` → rustls suites; `None` when the flag is empty.
fn cipher_suites(names: &[String]) -> Result<Option<Vec<rustls::CipherSuite>>, String> {
    if names.is_empty() {
        return Ok(None);
    }
    let mut out = Vec::new();
    for name in names {
        // Go also accepts the ChaCha suites without the `_SHA256` tail.
        let full = if name.ends_with("CHACHA20_POLY1305") {
            format!("{name}_SHA256")
        } else {
            name.clone()
        };
        let found = rustls::crypto::ring::ALL_CIPHER_SUITES
            .iter()
            .map(|s| s.suite())
            .find(|s| format!("{s:?}") == full);
        match found {
            Some(s) if !name.starts_with("TLS_AES") && !name.starts_with("TLS_CHACHA") => {
                out.push(s)
            }
            _ => {
                return Err(format!(
                    "--cipher-suites: unexpected TLS cipher suite {name:?} (ringkv knows the \
                     TLS 1.2 ECDHE suites with AES-GCM and ChaCha20-Poly1305)"
                ));
            }
        }
    }
    Ok(Some(out))
}

/// Loads (or, under auto-TLS, makes) one side's certificates.
pub fn load(spec: &TlsSpec, data_dir: &Path) -> Result<Option<Arc<SideTls>>, String> {
    if !spec.enabled() {
        return Ok(None);
    }
    spec.check()?;
    let (chain, key) = match (&spec.cert_file, &spec.key_file) {
        (Some(c), Some(k)) => (
            read_certs(c, &spec.flag("cert-file"))?,
            read_key(k, &spec.flag("key-file"))?,
        ),
        _ => self_cert(spec, &data_dir.join("fixtures").join(spec.side.fixtures()))?,
    };
    let provider = provider(&spec.cipher_suites)?;
    let roots = match &spec.trusted_ca_file {
        Some(ca) => {
            let flag = spec.flag("trusted-ca-file");
            let mut roots = RootCertStore::empty();
            for c in read_certs(ca, &flag)? {
                roots
                    .add(c)
                    .map_err(|e| format!("{flag} {}: {e}", ca.display()))?;
            }
            Some(Arc::new(roots))
        }
        None => None,
    };
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?;
    let builder = match (&roots, spec.client_cert_auth) {
        (Some(roots), true) => {
            let mut v =
                WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone());
            if let Some(crl) = &spec.crl_file {
                let crls: Vec<CertificateRevocationListDer<'static>> =
                    CertificateRevocationListDer::pem_file_iter(crl)
                        .and_then(|it| it.collect::<Result<_, _>>())
                        .map_err(|e| {
                            format!("--client-crl-file {}: {}", crl.display(), pem_error(e))
                        })?;
                if crls.is_empty() {
                    return Err(format!(
                        "--client-crl-file {}: no PEM X509 CRL block in the file",
                        crl.display()
                    ));
                }
                v = v.with_crls(crls);
            }
            let v = v
                .build()
                .map_err(|e| format!("{}: {e}", spec.flag("trusted-ca-file")))?;
            builder.with_client_cert_verifier(v)
        }
        _ => builder.with_no_client_auth(),
    };
    let key_flag = spec.flag("key-file");
    let mut server = builder
        .with_single_cert(chain.clone(), key.clone_key())
        .map_err(|e| {
            format!(
                "{} / {key_flag}: the key does not fit the certificate or is unusable: {e}",
                spec.flag("cert-file")
            )
        })?;
    server.alpn_protocols = match spec.side {
        Side::Client => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
        Side::Peer => Vec::new(),
    };

    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?;
    let builder = if spec.auto_tls && spec.cert_file.is_none() {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoServerVerification(provider)))
    } else {
        let roots = match roots {
            Some(r) => r,
            None => {
                let mut r = RootCertStore::empty();
                if let Ok(certs) = read_certs(Path::new(SYSTEM_BUNDLE), "system CA bundle") {
                    r.add_parsable_certificates(certs);
                }
                Arc::new(r)
            }
        };
        builder.with_root_certificates(roots)
    };
    let mut client = builder
        .with_client_auth_cert(chain, key)
        .map_err(|e| format!("{}: {e}", spec.flag("cert-file")))?;
    if spec.side == Side::Client {
        client.alpn_protocols = vec![b"h2".to_vec()];
    }
    Ok(Some(Arc::new(SideTls {
        server: Arc::new(server),
        client: Arc::new(client),
    })))
}

/// The self-signed certificate of auto-TLS in `dir` (`cert.pem`, `key.pem`): reused when both
/// files exist, else made (ECDSA P-256, SANs = the listen hosts and localhost, valid a year).
fn self_cert(
    spec: &TlsSpec,
    dir: &Path,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), String> {
    let cert_path = dir.join("cert.pem");
    let key_path = dir.join("key.pem");
    let flag = spec.flag("auto-tls");
    if cert_path.exists() && key_path.exists() {
        return Ok((read_certs(&cert_path, &flag)?, read_key(&key_path, &flag)?));
    }
    let mut hosts = spec.hosts.clone();
    hosts.push("localhost".into());
    hosts.sort();
    hosts.dedup();
    let mut params = rcgen::CertificateParams::new(hosts)
        .map_err(|e| format!("{flag}: certificate names: {e}"))?;
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, "ringkv autogenerated cert");
    params.not_before = rcgen::date_time_ymd(2000, 1, 1);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let year_after = 1970 + (now / 31_556_952) as i32 + 1;
    params.not_after = rcgen::date_time_ymd(year_after, 12, 31);
    params.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let key = rcgen::KeyPair::generate().map_err(|e| format!("{flag}: key generation: {e}"))?;
    let cert = params
        .self_signed(&key)
        .map_err(|e| format!("{flag}: self-signing: {e}"))?;
    let named = |p: &Path, e: io::Error| format!("{flag}: {}: {e}", p.display());
    std::fs::create_dir_all(dir).map_err(|e| named(dir, e))?;
    write_private(&key_path, key.serialize_pem().as_bytes()).map_err(|e| named(&key_path, e))?;
    std::fs::write(&cert_path, cert.pem()).map_err(|e| named(&cert_path, e))?;
    Ok((
        vec![cert.der().clone()],
        PrivateKeyDer::try_from(key.serialize_der())
            .map_err(|e| format!("{flag}: generated key: {e}"))?,
    ))
}

fn write_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)
}

/// Accepts any server certificate (signatures are still checked): dialing a member whose
/// certificate was made by auto-TLS, which nothing can verify.
#[derive(Debug)]
struct NoServerVerification(Arc<CryptoProvider>);

impl ServerCertVerifier for NoServerVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The host of `scheme://host:port[/...]` as a TLS server name (IP or DNS name).
pub fn server_name(url: &str) -> io::Result<ServerName<'static>> {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let hostport = rest.split('/').next().unwrap_or(rest);
    let host = match hostport.rsplit_once(':') {
        Some((h, _)) => h,
        None => hostport,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(host.to_owned()).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{url}: not a host name or IP for TLS: {e}"),
        )
    })
}

/// Whether `url` says `https://` (or `unixs://`).
pub fn is_tls_url(url: &str) -> bool {
    url.starts_with("https://") || url.starts_with("unixs://")
}

/// Either side of a blocking rustls connection.
enum Conn {
    Client(rustls::ClientConnection),
    Server(rustls::ServerConnection),
}

/// A peer connection: TCP, possibly carrying TLS. Clones share the socket and the TLS state.
///
/// Invariant (relied on by the lock): at most one clone does I/O at a time — the peer
/// transport's threads read or write a connection from one thread; other clones only set
/// timeouts or shut the socket down, which never takes the TLS lock.
pub struct PeerStream {
    tcp: TcpStream,
    tls: Option<Arc<Mutex<Conn>>>,
}

impl PeerStream {
    /// A plain TCP connection.
    pub fn plain(tcp: TcpStream) -> PeerStream {
        PeerStream { tcp, tls: None }
    }

    /// The TCP socket when the connection carries no TLS (bytes written to it go out as they
    /// are); `None` for TLS.
    pub fn plain_tcp(&self) -> Option<&TcpStream> {
        match self.tls {
            None => Some(&self.tcp),
            Some(_) => None,
        }
    }

    /// The dialing side of a TLS connection to `url` (handshake on first I/O or
    /// [`PeerStream::handshake`]).
    pub fn client(tcp: TcpStream, config: &Arc<ClientConfig>, url: &str) -> io::Result<Self> {
        let conn = rustls::ClientConnection::new(config.clone(), server_name(url)?)
            .map_err(io::Error::other)?;
        Ok(PeerStream {
            tcp,
            tls: Some(Arc::new(Mutex::new(Conn::Client(conn)))),
        })
    }

    /// The accepting side of a TLS connection.
    pub fn server(tcp: TcpStream, config: &Arc<ServerConfig>) -> io::Result<Self> {
        let conn = rustls::ServerConnection::new(config.clone()).map_err(io::Error::other)?;
        Ok(PeerStream {
            tcp,
            tls: Some(Arc::new(Mutex::new(Conn::Server(conn)))),
        })
    }

    /// Completes the TLS handshake (nothing for plain TCP); bounded by the socket's timeouts.
    pub fn handshake(&self) -> io::Result<()> {
        let Some(tls) = &self.tls else { return Ok(()) };
        let mut conn = tls.lock();
        let mut sock = &self.tcp;
        let r = match &mut *conn {
            Conn::Client(c) => c.complete_io(&mut sock).map(|_| ()),
            Conn::Server(c) => {
                let r = c.complete_io(&mut sock).map(|_| ());
                // A server's complete_io returns once it read the client's Finished; the
                // session tickets it queued meanwhile go out now.
                r.and_then(|()| {
                    while c.wants_write() {
                        c.write_tls(&mut sock)?;
                    }
                    Ok(())
                })
            }
        };
        r.map_err(|e| io::Error::new(e.kind(), format!("TLS handshake: {e}")))
    }

    pub fn try_clone(&self) -> io::Result<PeerStream> {
        Ok(PeerStream {
            tcp: self.tcp.try_clone()?,
            tls: self.tls.clone(),
        })
    }

    /// Shuts the socket down (sending TLS close_notify first when no other clone is doing I/O).
    pub fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        if let Some(tls) = &self.tls
            && let Some(mut conn) = tls.try_lock()
        {
            let mut sock = &self.tcp;
            let _ = self.tcp.set_write_timeout(Some(Duration::from_millis(100)));
            match &mut *conn {
                Conn::Client(c) => {
                    c.send_close_notify();
                    let _ = c.write_tls(&mut sock);
                }
                Conn::Server(c) => {
                    c.send_close_notify();
                    let _ = c.write_tls(&mut sock);
                }
            }
        }
        self.tcp.shutdown(how)
    }

    pub fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        self.tcp.set_read_timeout(t)
    }

    pub fn set_write_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        self.tcp.set_write_timeout(t)
    }

    pub fn set_nodelay(&self, on: bool) -> io::Result<()> {
        self.tcp.set_nodelay(on)
    }

    pub fn set_nonblocking(&self, on: bool) -> io::Result<()> {
        self.tcp.set_nonblocking(on)
    }
}

impl Read for &PeerStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut sock = &self.tcp;
        let Some(tls) = &self.tls else {
            return sock.read(buf);
        };
        let mut conn = tls.lock();
        let r = match &mut *conn {
            Conn::Client(c) => rustls::Stream::new(c, &mut sock).read(buf),
            Conn::Server(c) => rustls::Stream::new(c, &mut sock).read(buf),
        };
        match r {
            // The other side closed the TCP connection without close_notify: end of stream
            // for the frame reader (a torn frame is still caught by its length and checksum).
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(0),
            r => r,
        }
    }
}

impl Write for &PeerStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut sock = &self.tcp;
        let Some(tls) = &self.tls else {
            return sock.write(buf);
        };
        let mut conn = tls.lock();
        match &mut *conn {
            Conn::Client(c) => rustls::Stream::new(c, &mut sock).write(buf),
            Conn::Server(c) => rustls::Stream::new(c, &mut sock).write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        let mut sock = &self.tcp;
        let Some(tls) = &self.tls else {
            return sock.flush();
        };
        let mut conn = tls.lock();
        match &mut *conn {
            Conn::Client(c) => rustls::Stream::new(c, &mut sock).flush(),
            Conn::Server(c) => rustls::Stream::new(c, &mut sock).flush(),
        }
    }
}

impl Read for PeerStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        (&*self).read(buf)
    }
}

impl Write for PeerStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        (&*self).write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        (&*self).flush()
    }
}

/// Dials `https://` URIs for a tonic channel (forwarding to the leader's client URL): TCP,
/// then a TLS handshake with ALPN `h2`, the URI's host being the verified name.
#[derive(Clone)]
pub struct TlsConnector {
    config: Arc<ClientConfig>,
}

impl TlsConnector {
    pub fn new(config: Arc<ClientConfig>) -> TlsConnector {
        TlsConnector { config }
    }
}

type TlsIo = hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;

impl tower::Service<http::Uri> for TlsConnector {
    type Response = TlsIo;
    type Error = io::Error;
    type Future = std::pin::Pin<Box<dyn Future<Output = io::Result<TlsIo>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut std::task::Context<'_>) -> std::task::Poll<io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let config = self.config.clone();
        Box::pin(async move {
            let bad = || io::Error::new(io::ErrorKind::InvalidInput, format!("bad URI {uri}"));
            let host = uri.host().ok_or_else(bad)?;
            let host = host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned();
            let port = uri.port_u16().unwrap_or(443);
            let tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
            tcp.set_nodelay(true)?;
            let name = ServerName::try_from(host.clone())
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("{host}: {e}")))?;
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await?;
            Ok(hyper_util::rt::TokioIo::new(tls))
        })
    }
}

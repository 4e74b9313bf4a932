//! TLS for the load client, with etcd `benchmark`'s flags: `--cacert` (trusted CA bundle, PEM),
//! `--cert` and `--key` (a client certificate for servers started with `--client-cert-auth`).
//!
//! TLS is used when any of those flags is given or an endpoint says `https://`; an endpoint
//! without a scheme then gets `https://`, as etcd's client does. Without `--cacert`, the
//! system bundle (`/etc/ssl/certs/ca-certificates.crt`, Debian's) is trusted. ALPN offers only
//! `h2`: gRPC needs HTTP/2.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::ClientConfig;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// The CA bundle used when `--cacert` is not given.
const SYSTEM_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// What the TLS flags asked for.
#[derive(Clone, Debug, Default)]
pub struct TlsFlags {
    pub cacert: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

impl TlsFlags {
    pub fn any(&self) -> bool {
        self.cacert.is_some() || self.cert.is_some() || self.key.is_some()
    }
}

/// A ready client configuration; cheap to clone.
#[derive(Clone)]
pub struct Tls {
    connector: TlsConnector,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tls")
    }
}

fn read_certs(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("{what} {}: {e}", path.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{what} {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{what} {}: no PEM CERTIFICATE block in the file",
            path.display()
        ));
    }
    Ok(certs)
}

impl Tls {
    /// Builds the configuration; every problem with a file names the file.
    pub fn new(flags: &TlsFlags) -> Result<Tls, String> {
        let mut roots = rustls::RootCertStore::empty();
        let (bundle, what) = match &flags.cacert {
            Some(p) => (p.as_path(), "--cacert"),
            None => (
                Path::new(SYSTEM_BUNDLE),
                "system CA bundle (no --cacert given)",
            ),
        };
        for cert in read_certs(bundle, what)? {
            roots
                .add(cert)
                .map_err(|e| format!("{what} {}: {e}", bundle.display()))?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS setup: {e}"))?
            .with_root_certificates(roots);
        let mut config = match (&flags.cert, &flags.key) {
            (Some(cert), Some(key)) => {
                let chain = read_certs(cert, "--cert")?;
                let key_der = PrivateKeyDer::from_pem_file(key)
                    .map_err(|e| format!("--key {}: {e}", key.display()))?;
                builder
                    .with_client_auth_cert(chain, key_der)
                    .map_err(|e| format!("--cert/--key: {e}"))?
            }
            (None, None) => builder.with_no_client_auth(),
            (Some(_), None) => return Err("--cert needs --key".to_owned()),
            (None, Some(_)) => return Err("--key needs --cert".to_owned()),
        };
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Tls {
            connector: TlsConnector::from(Arc::new(config)),
        })
    }

    /// TLS handshake on `tcp` for `authority` (`host:port`; the host is checked against the
    /// server's certificate, an IP address against its IP SANs).
    pub async fn handshake(
        &self,
        tcp: TcpStream,
        authority: &str,
    ) -> Result<TlsStream<TcpStream>, String> {
        let host = match authority.rsplit_once(':') {
            Some((h, _)) => h.trim_start_matches('[').trim_end_matches(']'),
            None => authority,
        };
        let name = ServerName::try_from(host.to_owned())
            .map_err(|e| format!("{authority}: not a host name or IP for TLS: {e}"))?;
        let stream = self
            .connector
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS handshake with {authority}: {e}"))?;
        let alpn = stream.get_ref().1.alpn_protocol();
        if alpn.is_some_and(|p| p != b"h2") {
            return Err(format!(
                "TLS handshake with {authority}: server chose ALPN {:?}, gRPC needs h2",
                String::from_utf8_lossy(alpn.unwrap_or_default())
            ));
        }
        Ok(stream)
    }
}

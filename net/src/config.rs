//! `ringkv`'s command line: etcd 3.4's flag names and defaults (etcd-v3-spec.md §10), each also
//! read from a `RINGKV_<UPPER_SNAKE>` environment variable (etcd reads `ETCD_<...>`), plus the
//! member and cluster IDs etcd derives from them (§4.10).
//!
//! With no flags: a single member named `default`, clients on `http://localhost:2379`, peers on
//! `http://localhost:2380` (`localhost` binds 127.0.0.1), data in `./default.ringkv`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgAction, Parser, ValueEnum};
use sha1::{Digest, Sha1};

use crate::tls::{Side, TlsSpec};

/// A configuration mistake, reported before anything is opened or bound.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("ringkv: invalid configuration: {0}")]
pub struct ConfigError(pub String);

fn bad(msg: impl Into<String>) -> ConfigError {
    ConfigError(msg.into())
}

/// Whether this member starts a new cluster or joins an existing one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ClusterState {
    /// Bootstrap a new cluster from `--initial-cluster`.
    New,
    /// Join a running cluster.
    Existing,
}

/// How `--auto-compaction-retention` is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CompactionMode {
    /// Retention is a duration (a bare number means hours).
    Periodic,
    /// Retention is a number of revisions.
    Revision,
}

/// Flags, in etcd's names. Flags ringkv accepts for compatibility but does not act on yet are
/// refused by [`Flags::resolve`] when set to anything but their default.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "ringkv",
    version,
    about = "ringkv: an etcd v3 compatible key-value node"
)]
pub struct Flags {
    /// Human-readable name for this member.
    #[arg(long, env = "RINGKV_NAME", default_value = "default")]
    pub name: String,
    /// Path to the data directory [default: ${name}.ringkv].
    #[arg(long, env = "RINGKV_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Path to the dedicated WAL directory.
    #[arg(long, env = "RINGKV_WAL_DIR", default_value = "")]
    pub wal_dir: String,
    /// Comma-separated URLs to listen on for client traffic.
    #[arg(
        long,
        env = "RINGKV_LISTEN_CLIENT_URLS",
        default_value = "http://localhost:2379"
    )]
    pub listen_client_urls: String,
    /// Comma-separated client URLs advertised to the rest of the cluster.
    #[arg(
        long,
        env = "RINGKV_ADVERTISE_CLIENT_URLS",
        default_value = "http://localhost:2379"
    )]
    pub advertise_client_urls: String,
    /// Comma-separated URLs to listen on for peer traffic.
    #[arg(
        long,
        env = "RINGKV_LISTEN_PEER_URLS",
        default_value = "http://localhost:2380"
    )]
    pub listen_peer_urls: String,
    /// Comma-separated peer URLs advertised to the rest of the cluster.
    #[arg(
        long,
        env = "RINGKV_INITIAL_ADVERTISE_PEER_URLS",
        default_value = "http://localhost:2380"
    )]
    pub initial_advertise_peer_urls: String,
    /// Initial cluster configuration, `name=url,...` [default: ${name}=${initial-advertise-peer-urls}].
    #[arg(long, env = "RINGKV_INITIAL_CLUSTER")]
    pub initial_cluster: Option<String>,
    /// Initial cluster state.
    #[arg(
        long,
        env = "RINGKV_INITIAL_CLUSTER_STATE",
        value_enum,
        default_value = "new"
    )]
    pub initial_cluster_state: ClusterState,
    /// Initial cluster token; feeds the member and cluster IDs.
    #[arg(
        long,
        env = "RINGKV_INITIAL_CLUSTER_TOKEN",
        default_value = "etcd-cluster"
    )]
    pub initial_cluster_token: String,
    /// Committed entries between raft snapshots.
    #[arg(long, env = "RINGKV_SNAPSHOT_COUNT", default_value_t = 100_000)]
    pub snapshot_count: u64,
    /// Heartbeat interval in milliseconds.
    #[arg(long, env = "RINGKV_HEARTBEAT_INTERVAL", default_value_t = 100)]
    pub heartbeat_interval: u64,
    /// Election timeout in milliseconds.
    #[arg(long, env = "RINGKV_ELECTION_TIMEOUT", default_value_t = 1000)]
    pub election_timeout: u64,
    /// Backend size that raises the NOSPACE alarm; 0 = 2 GiB, negative disables the quota.
    #[arg(
        long,
        env = "RINGKV_QUOTA_BACKEND_BYTES",
        default_value_t = 0,
        allow_negative_numbers = true
    )]
    pub quota_backend_bytes: i64,
    /// Auto compaction mode.
    #[arg(
        long,
        env = "RINGKV_AUTO_COMPACTION_MODE",
        value_enum,
        default_value = "periodic"
    )]
    pub auto_compaction_mode: CompactionMode,
    /// Auto compaction retention (periodic: duration, bare number = hours; revision: count); 0 = off.
    #[arg(long, env = "RINGKV_AUTO_COMPACTION_RETENTION", default_value = "0")]
    pub auto_compaction_retention: String,
    /// Largest client request (marshalled raft request) in bytes.
    #[arg(long, env = "RINGKV_MAX_REQUEST_BYTES", default_value_t = 1_572_864)]
    pub max_request_bytes: u32,
    /// Most operations in one txn branch.
    #[arg(long, env = "RINGKV_MAX_TXN_OPS", default_value_t = 128)]
    pub max_txn_ops: u32,
    /// Most concurrent HTTP/2 streams per client connection.
    #[arg(long, env = "RINGKV_MAX_CONCURRENT_STREAMS", default_value_t = u32::MAX)]
    pub max_concurrent_streams: u32,
    /// Minimum interval a client should wait before pinging the server.
    #[arg(long, env = "RINGKV_GRPC_KEEPALIVE_MIN_TIME", default_value = "5s", value_parser = parse_go_duration)]
    pub grpc_keepalive_min_time: Duration,
    /// Interval of server-to-client pings.
    #[arg(long, env = "RINGKV_GRPC_KEEPALIVE_INTERVAL", default_value = "2h", value_parser = parse_go_duration)]
    pub grpc_keepalive_interval: Duration,
    /// How long to wait for a ping answer before closing the connection.
    #[arg(long, env = "RINGKV_GRPC_KEEPALIVE_TIMEOUT", default_value = "20s", value_parser = parse_go_duration)]
    pub grpc_keepalive_timeout: Duration,
    /// Restart as a one-member cluster keeping the data.
    #[arg(long, env = "RINGKV_FORCE_NEW_CLUSTER", action = ArgAction::Set, num_args = 0..=1, default_value = "false", default_missing_value = "true")]
    pub force_new_cluster: bool,
    /// Reject reconfigurations that could cause quorum loss.
    #[arg(long, env = "RINGKV_STRICT_RECONFIG_CHECK", action = ArgAction::Set, num_args = 0..=1, default_value = "true", default_missing_value = "true")]
    pub strict_reconfig_check: bool,
    /// Serve the v2 keys API (not supported by ringkv).
    #[arg(long, env = "RINGKV_ENABLE_V2", action = ArgAction::Set, num_args = 0..=1, default_value = "false", default_missing_value = "true")]
    pub enable_v2: bool,
    /// Serve the HTTP/JSON gateway on the client port.
    #[arg(long, env = "RINGKV_ENABLE_GRPC_GATEWAY", action = ArgAction::Set, num_args = 0..=1, default_value = "true", default_missing_value = "true", hide = true)]
    pub enable_grpc_gateway: bool,
    /// Client TLS certificate (PEM); https client URLs are served with it.
    #[arg(long, env = "RINGKV_CERT_FILE", default_value = "")]
    pub cert_file: String,
    /// Client TLS private key (PEM).
    #[arg(long, env = "RINGKV_KEY_FILE", default_value = "")]
    pub key_file: String,
    /// Require client certificates verified against --trusted-ca-file.
    #[arg(long, env = "RINGKV_CLIENT_CERT_AUTH", action = ArgAction::Set, num_args = 0..=1, default_value = "false", default_missing_value = "true")]
    pub client_cert_auth: bool,
    /// CA bundle (PEM) client certificates are verified against.
    #[arg(long, env = "RINGKV_TRUSTED_CA_FILE", default_value = "")]
    pub trusted_ca_file: String,
    /// Client TLS with a self-signed certificate made in <data-dir>/fixtures/client.
    #[arg(long, env = "RINGKV_AUTO_TLS", action = ArgAction::Set, num_args = 0..=1, default_value = "false", default_missing_value = "true")]
    pub auto_tls: bool,
    /// Peer TLS certificate (PEM), also offered when dialing peers.
    #[arg(long, env = "RINGKV_PEER_CERT_FILE", default_value = "")]
    pub peer_cert_file: String,
    /// Peer TLS private key (PEM).
    #[arg(long, env = "RINGKV_PEER_KEY_FILE", default_value = "")]
    pub peer_key_file: String,
    /// Require peer certificates verified against --peer-trusted-ca-file.
    #[arg(long, env = "RINGKV_PEER_CLIENT_CERT_AUTH", action = ArgAction::Set, num_args = 0..=1, default_value = "false", default_missing_value = "true")]
    pub peer_client_cert_auth: bool,
    /// CA bundle (PEM) peer certificates are verified against.
    #[arg(long, env = "RINGKV_PEER_TRUSTED_CA_FILE", default_value = "")]
    pub peer_trusted_ca_file: String,
    /// Peer TLS with a self-signed certificate made in <data-dir>/fixtures/peer.
    #[arg(long, env = "RINGKV_PEER_AUTO_TLS", action = ArgAction::Set, num_args = 0..=1, default_value = "false", default_missing_value = "true")]
    pub peer_auto_tls: bool,
    /// Revoked client certificates (PEM X509 CRL).
    #[arg(long, env = "RINGKV_CLIENT_CRL_FILE", default_value = "")]
    pub client_crl_file: String,
    /// Comma-separated TLS 1.2 cipher suites (Go's names); TLS 1.3 suites stay on.
    #[arg(long, env = "RINGKV_CIPHER_SUITES", default_value = "")]
    pub cipher_suites: String,
    /// Allowed client certificate host name (not supported yet).
    #[arg(long, env = "RINGKV_CLIENT_CERT_ALLOWED_HOSTNAME", default_value = "")]
    pub client_cert_allowed_hostname: String,
    /// Auth token provider: `simple` or `jwt,...`.
    #[arg(long, env = "RINGKV_AUTH_TOKEN", default_value = "simple")]
    pub auth_token: String,
    /// Simple token lifetime in seconds.
    #[arg(long, env = "RINGKV_AUTH_TOKEN_TTL", default_value_t = 300)]
    pub auth_token_ttl: u64,
    /// bcrypt cost for passwords.
    #[arg(long, env = "RINGKV_BCRYPT_COST", default_value_t = 10)]
    pub bcrypt_cost: u32,
    /// CORS origins.
    #[arg(long, env = "RINGKV_CORS", default_value = "*")]
    pub cors: String,
    /// Accepted Host headers on plain HTTP.
    #[arg(long, env = "RINGKV_HOST_WHITELIST", default_value = "*")]
    pub host_whitelist: String,
    /// Extra URLs serving /metrics and /health.
    #[arg(long, env = "RINGKV_LISTEN_METRICS_URLS", default_value = "")]
    pub listen_metrics_urls: String,
    /// `basic` or `extensive`.
    #[arg(long, env = "RINGKV_METRICS", default_value = "basic")]
    pub metrics: String,
    /// Logger (accepted for compatibility; ringkv logs through `tracing`).
    #[arg(long, env = "RINGKV_LOGGER", default_value = "capnslog")]
    pub logger: String,
    /// Log level.
    #[arg(long, env = "RINGKV_LOG_LEVEL", default_value = "info")]
    pub log_level: String,
    /// Log outputs.
    #[arg(long, env = "RINGKV_LOG_OUTPUTS", default_value = "default")]
    pub log_outputs: String,
    /// Snapshot files to retain (0 = unlimited).
    #[arg(long, env = "RINGKV_MAX_SNAPSHOTS", default_value_t = 5)]
    pub max_snapshots: u32,
    /// WAL files to retain (0 = unlimited).
    #[arg(long, env = "RINGKV_MAX_WALS", default_value_t = 5)]
    pub max_wals: u32,
    /// Interval of watch progress notifications.
    #[arg(long, env = "RINGKV_EXPERIMENTAL_WATCH_PROGRESS_NOTIFY_INTERVAL", default_value = "10m", value_parser = parse_go_duration)]
    pub experimental_watch_progress_notify_interval: Duration,
    /// Persist remaining lease TTLs through raft checkpoints.
    #[arg(long, env = "RINGKV_EXPERIMENTAL_ENABLE_LEASE_CHECKPOINT", action = ArgAction::Set, num_args = 0..=1, default_value = "false", default_missing_value = "true")]
    pub experimental_enable_lease_checkpoint: bool,
    /// ringkv only: which cores the raft, WAL, apply and front-end roles are pinned to
    /// (`auto` = derived from the available cores; see engine/docs/design.md).
    #[arg(long, env = "RINGKV_CPU_LAYOUT", default_value = "auto")]
    pub cpu_layout: String,
}

/// One member of the initial cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitialMember {
    /// Member name from `--initial-cluster`.
    pub name: String,
    /// Its peer URLs, sorted.
    pub peer_urls: Vec<String>,
    /// ID derived like etcd's (see [`member_id`]).
    pub id: u64,
}

/// Auto-compaction policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AutoCompaction {
    /// Disabled (retention 0).
    Off,
    /// Keep this much history (periodic mode).
    Periodic(Duration),
    /// Keep this many revisions (revision mode).
    Revision(u64),
}

/// The validated configuration a node starts from.
#[derive(Debug, Clone)]
pub struct Config {
    /// The flags as given (after defaults and environment).
    pub flags: Flags,
    /// Data directory (`${name}.ringkv` unless given).
    pub data_dir: PathBuf,
    /// Addresses to serve clients on.
    pub client_addrs: Vec<SocketAddr>,
    /// Client URLs shown in `Member.clientURLs`.
    pub advertise_client_urls: Vec<String>,
    /// Addresses to serve peers on.
    pub peer_addrs: Vec<SocketAddr>,
    /// Extra addresses serving only `/metrics` and `/health` (`--listen-metrics-urls`).
    pub metrics_addrs: Vec<SocketAddr>,
    /// This member's advertised peer URLs, sorted.
    pub peer_urls: Vec<String>,
    /// The members of `--initial-cluster`, sorted by ID.
    pub initial_members: Vec<InitialMember>,
    /// This member's ID.
    pub member_id: u64,
    /// The cluster ID of a new cluster bootstrapped from `initial_members`.
    pub cluster_id: u64,
    /// Backend quota in bytes; `None` = disabled.
    pub quota_backend_bytes: Option<u64>,
    /// Auto-compaction policy.
    pub auto_compaction: AutoCompaction,
    /// gRPC receive limit: max-request-bytes + 512 KiB (grpc-go's limit in etcd).
    pub grpc_max_recv_bytes: usize,
    /// Client TLS flags (tls.rs); used by the https entries of `client_addrs`.
    pub client_tls: TlsSpec,
    /// Peer TLS flags (tls.rs).
    pub peer_tls: TlsSpec,
    /// Per entry of `client_addrs`: whether its URL is https (served with TLS).
    pub client_addr_tls: Vec<bool>,
    /// Whether the peer listen URLs are https (all or none).
    pub peer_listen_tls: bool,
}

/// etcd's default quota when `--quota-backend-bytes` is 0.
pub const DEFAULT_QUOTA_BYTES: u64 = 2 * 1024 * 1024 * 1024;
/// etcd's largest accepted election timeout, in milliseconds.
pub const MAX_ELECTION_TIMEOUT_MS: u64 = 50_000;
/// Slack grpc-go's receive limit has above max-request-bytes in etcd.
pub const GRPC_RECV_OVERHEAD: usize = 512 * 1024;

impl Flags {
    /// Checks the flags and derives the configuration.
    pub fn resolve(self) -> Result<Config, ConfigError> {
        let f = self;
        if f.name.is_empty() {
            return Err(bad("--name must not be empty"));
        }
        if f.heartbeat_interval == 0 {
            return Err(bad("--heartbeat-interval must be > 0"));
        }
        if f.election_timeout < 5 * f.heartbeat_interval {
            return Err(bad(format!(
                "--election-timeout[{}ms] should be at least as 5 times as --heartbeat-interval[{}ms]",
                f.election_timeout, f.heartbeat_interval
            )));
        }
        if f.election_timeout > MAX_ELECTION_TIMEOUT_MS {
            return Err(bad(format!(
                "--election-timeout[{}ms] is too long, and should be set less than {MAX_ELECTION_TIMEOUT_MS}ms",
                f.election_timeout
            )));
        }
        if f.enable_v2 {
            return Err(bad(
                "--enable-v2: the v2 keys API is not supported by ringkv",
            ));
        }
        if !f.client_cert_allowed_hostname.is_empty() {
            return Err(bad(
                "--client-cert-allowed-hostname: not supported by ringkv yet",
            ));
        }
        if f.max_request_bytes == 0 {
            return Err(bad("--max-request-bytes must be > 0"));
        }
        if f.max_txn_ops == 0 {
            return Err(bad("--max-txn-ops must be > 0"));
        }
        if !matches!(f.metrics.as_str(), "basic" | "extensive") {
            return Err(bad(format!(
                "--metrics: unknown mode {:?} (basic|extensive)",
                f.metrics
            )));
        }

        let client_addrs = parse_listen_urls("--listen-client-urls", &f.listen_client_urls)?;
        let peer_addrs = parse_listen_urls("--listen-peer-urls", &f.listen_peer_urls)?;
        let metrics_addrs = if f.listen_metrics_urls.trim().is_empty() {
            Vec::new()
        } else {
            parse_listen_urls("--listen-metrics-urls", &f.listen_metrics_urls)?
        };
        let advertise_client_urls =
            split_urls("--advertise-client-urls", &f.advertise_client_urls)?;
        let mut peer_urls = split_urls(
            "--initial-advertise-peer-urls",
            &f.initial_advertise_peer_urls,
        )?;
        peer_urls.sort();

        let client_tls = TlsSpec {
            side: Side::Client,
            cert_file: non_empty(&f.cert_file),
            key_file: non_empty(&f.key_file),
            trusted_ca_file: non_empty(&f.trusted_ca_file),
            client_cert_auth: f.client_cert_auth,
            auto_tls: f.auto_tls,
            crl_file: non_empty(&f.client_crl_file),
            cipher_suites: split_list(&f.cipher_suites),
            hosts: url_hosts(&f.listen_client_urls),
        };
        let peer_tls = TlsSpec {
            side: Side::Peer,
            cert_file: non_empty(&f.peer_cert_file),
            key_file: non_empty(&f.peer_key_file),
            trusted_ca_file: non_empty(&f.peer_trusted_ca_file),
            client_cert_auth: f.peer_client_cert_auth,
            auto_tls: f.peer_auto_tls,
            crl_file: None,
            cipher_suites: split_list(&f.cipher_suites),
            hosts: url_hosts(&f.listen_peer_urls),
        };
        client_tls.check().map_err(bad)?;
        peer_tls.check().map_err(bad)?;
        let client_addr_tls: Vec<bool> = split_urls("--listen-client-urls", &f.listen_client_urls)?
            .iter()
            .map(|u| crate::tls::is_tls_url(u))
            .collect();
        if client_addr_tls.contains(&true) && !client_tls.enabled() {
            return Err(bad(format!(
                "--listen-client-urls {:?}: an https URL needs --cert-file and --key-file, or --auto-tls",
                f.listen_client_urls
            )));
        }
        let peer_listen_tls: Vec<bool> = split_urls("--listen-peer-urls", &f.listen_peer_urls)?
            .iter()
            .map(|u| crate::tls::is_tls_url(u))
            .collect();
        let peer_listen_tls = match (
            peer_listen_tls.contains(&true),
            peer_listen_tls.contains(&false),
        ) {
            (true, true) => {
                return Err(bad(format!(
                    "--listen-peer-urls {:?}: mixing http and https peer URLs is not supported",
                    f.listen_peer_urls
                )));
            }
            (tls, _) => tls,
        };
        if peer_listen_tls && !peer_tls.enabled() {
            return Err(bad(format!(
                "--listen-peer-urls {:?}: an https URL needs --peer-cert-file and --peer-key-file, or --peer-auto-tls",
                f.listen_peer_urls
            )));
        }
        if peer_urls.iter().any(|u| crate::tls::is_tls_url(u)) && !peer_tls.enabled() {
            return Err(bad(format!(
                "--initial-advertise-peer-urls {:?}: an https URL needs --peer-cert-file and --peer-key-file, or --peer-auto-tls",
                f.initial_advertise_peer_urls
            )));
        }

        let initial_cluster = f
            .initial_cluster
            .clone()
            .unwrap_or_else(|| format!("{}={}", f.name, peer_urls.join(&format!(",{}=", f.name))));
        let by_name = parse_initial_cluster(&initial_cluster)?;
        let Some(own_urls) = by_name.get(&f.name) else {
            return Err(bad(format!(
                "--initial-cluster {initial_cluster:?} has no entry for --name {:?}",
                f.name
            )));
        };
        if f.initial_cluster_state == ClusterState::New && *own_urls != peer_urls {
            return Err(bad(format!(
                "--initial-cluster has {:?}={:?} but --initial-advertise-peer-urls is {:?}",
                f.name, own_urls, peer_urls
            )));
        }
        let mut initial_members: Vec<InitialMember> = by_name
            .iter()
            .map(|(name, urls)| InitialMember {
                name: name.clone(),
                peer_urls: urls.clone(),
                id: member_id(urls, &f.initial_cluster_token, None),
            })
            .collect();
        initial_members.sort_by_key(|m| m.id);
        for pair in initial_members.windows(2) {
            if pair[0].id == pair[1].id {
                return Err(bad(format!(
                    "--initial-cluster: members {:?} and {:?} have the same peer URLs",
                    pair[0].name, pair[1].name
                )));
            }
        }
        let member_id = member_id(own_urls, &f.initial_cluster_token, None);
        let ids: Vec<u64> = initial_members.iter().map(|m| m.id).collect();
        let cluster_id = cluster_id(&ids);

        let quota_backend_bytes = match f.quota_backend_bytes {
            q if q < 0 => None,
            0 => Some(DEFAULT_QUOTA_BYTES),
            q => Some(q as u64),
        };
        let auto_compaction =
            parse_retention(f.auto_compaction_mode, &f.auto_compaction_retention)?;
        let data_dir = f
            .data_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(format!("{}.ringkv", f.name)));
        let grpc_max_recv_bytes = f.max_request_bytes as usize + GRPC_RECV_OVERHEAD;
        Ok(Config {
            data_dir,
            client_addrs,
            advertise_client_urls,
            peer_addrs,
            metrics_addrs,
            peer_urls,
            initial_members,
            member_id,
            cluster_id,
            quota_backend_bytes,
            auto_compaction,
            grpc_max_recv_bytes,
            client_tls,
            peer_tls,
            client_addr_tls,
            peer_listen_tls,
            flags: f,
        })
    }
}

impl Config {
    /// Request timeout: 5 s + 2 × election timeout (etcd's `ReqTimeout`).
    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs(5) + Duration::from_millis(2 * self.flags.election_timeout)
    }
}

/// Member ID as etcd computes it: the first 8 bytes, big-endian, of SHA-1 over the member's
/// sorted peer URLs concatenated, then the cluster token, then (for members added at runtime)
/// the decimal Unix seconds of the add. Big-endian because that is how etcd reads the digest.
pub fn member_id(peer_urls: &[String], token: &str, added_unix_secs: Option<u64>) -> u64 {
    let mut urls: Vec<&str> = peer_urls.iter().map(String::as_str).collect();
    urls.sort_unstable();
    let mut h = Sha1::new();
    for u in urls {
        h.update(u.as_bytes());
    }
    h.update(token.as_bytes());
    if let Some(secs) = added_unix_secs {
        h.update(secs.to_string().as_bytes());
    }
    first_u64_be(&h.finalize())
}

/// Cluster ID as etcd computes it: the first 8 bytes, big-endian, of SHA-1 over the sorted
/// member IDs, each as 8 big-endian bytes (etcd's encoding of the IDs).
pub fn cluster_id(member_ids: &[u64]) -> u64 {
    let mut ids = member_ids.to_vec();
    ids.sort_unstable();
    let mut h = Sha1::new();
    for id in ids {
        h.update(id.to_be_bytes());
    }
    first_u64_be(&h.finalize())
}

fn first_u64_be(digest: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(b)
}

fn split_urls(flag: &str, list: &str) -> Result<Vec<String>, ConfigError> {
    let urls: Vec<String> = list
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    if urls.is_empty() {
        return Err(bad(format!("{flag}: no URL given")));
    }
    for u in &urls {
        url_host_port(flag, u)?;
    }
    Ok(urls)
}

/// Splits `scheme://host:port[/]` into its parts; `http` and `https` are served.
fn url_host_port<'a>(flag: &str, url: &'a str) -> Result<(&'a str, u16), ConfigError> {
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(bad(format!(
            "{flag}: {url:?} is not a URL (want http://host:port)"
        )));
    };
    match scheme {
        "http" | "https" => {}
        _ => {
            return Err(bad(format!(
                "{flag}: {url:?}: unsupported scheme {scheme:?}"
            )));
        }
    }
    let hostport = rest.strip_suffix('/').unwrap_or(rest);
    let Some((host, port)) = hostport.rsplit_once(':') else {
        return Err(bad(format!("{flag}: {url:?} has no port")));
    };
    let port: u16 = port
        .parse()
        .map_err(|_| bad(format!("{flag}: {url:?} has a bad port")))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(bad(format!("{flag}: {url:?} has no host")));
    }
    Ok((host, port))
}

fn non_empty(s: &str) -> Option<PathBuf> {
    (!s.trim().is_empty()).then(|| PathBuf::from(s.trim()))
}

fn split_list(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|x| !x.is_empty())
        .map(str::to_string)
        .collect()
}

/// The hosts of a URL list (the SANs of an auto-TLS certificate); bad URLs are reported by
/// the listen URL parsing.
fn url_hosts(list: &str) -> Vec<String> {
    split_list(list)
        .iter()
        .filter_map(|u| url_host_port("", u).ok().map(|(h, _)| h.to_string()))
        .collect()
}

fn parse_listen_urls(flag: &str, list: &str) -> Result<Vec<SocketAddr>, ConfigError> {
    let mut addrs = Vec::new();
    for url in split_urls(flag, list)? {
        let (host, port) = url_host_port(flag, &url)?;
        // etcd binds `localhost` to the loopback address; pin it to IPv4 like a fresh etcd.
        let host = if host == "localhost" {
            "127.0.0.1"
        } else {
            host
        };
        let ip: std::net::IpAddr = host.parse().map_err(|_| {
            bad(format!(
                "{flag}: {url:?}: listen URLs need an IP address or localhost"
            ))
        })?;
        addrs.push(SocketAddr::new(ip, port));
    }
    Ok(addrs)
}

/// Parses `name=url,name=url,...` into name → sorted URLs.
pub fn parse_initial_cluster(s: &str) -> Result<BTreeMap<String, Vec<String>>, ConfigError> {
    let mut map: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for entry in s.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let Some((name, url)) = entry.split_once('=') else {
            return Err(bad(format!("--initial-cluster: {entry:?} is not name=url")));
        };
        url_host_port("--initial-cluster", url)?;
        map.entry(name.to_string())
            .or_default()
            .push(url.to_string());
    }
    if map.is_empty() {
        return Err(bad("--initial-cluster is empty"));
    }
    for urls in map.values_mut() {
        urls.sort();
    }
    Ok(map)
}

fn parse_retention(mode: CompactionMode, s: &str) -> Result<AutoCompaction, ConfigError> {
    let s = s.trim();
    let off = s.is_empty() || s == "0";
    match mode {
        _ if off => Ok(AutoCompaction::Off),
        CompactionMode::Revision => s.parse::<u64>().map(AutoCompaction::Revision).map_err(|_| {
            bad(format!(
                "--auto-compaction-retention {s:?}: revision mode needs a revision count"
            ))
        }),
        CompactionMode::Periodic => {
            if let Ok(hours) = s.parse::<u64>() {
                return Ok(AutoCompaction::Periodic(Duration::from_secs(hours * 3600)));
            }
            parse_go_duration(s)
                .map(AutoCompaction::Periodic)
                .map_err(|e| bad(format!("--auto-compaction-retention {s:?}: {e}")))
        }
    }
}

/// Parses a Go duration (`300ms`, `5s`, `2h`, `1h30m`, `1.5h`). Units: ns, us, µs, ms, s, m, h.
pub fn parse_go_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    if s.is_empty() {
        return Err("empty duration".into());
    }
    let mut total = 0f64;
    let mut rest = s;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_len == 0 {
            return Err(format!("invalid duration {s:?}"));
        }
        let value: f64 = rest[..num_len]
            .parse()
            .map_err(|_| format!("invalid duration {s:?}"))?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let nanos_per_unit = match &rest[..unit_len] {
            "ns" => 1.0,
            "us" | "µs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            "" => return Err(format!("missing unit in duration {s:?}")),
            u => return Err(format!("unknown unit {u:?} in duration {s:?}")),
        };
        rest = &rest[unit_len..];
        total += value * nanos_per_unit;
    }
    Ok(Duration::from_nanos(total as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, ConfigError> {
        let mut argv = vec!["ringkv"];
        argv.extend_from_slice(args);
        Flags::try_parse_from(argv)
            .map_err(|e| ConfigError(e.to_string()))?
            .resolve()
    }

    /// Spec §4.10: verified against etcd 3.4.23.
    #[test]
    fn member_and_cluster_id_match_etcd() {
        let urls = vec!["http://127.0.0.1:23800".to_string()];
        let m = member_id(&urls, "etcd-cluster", None);
        assert_eq!(format!("{m:x}"), "2e1259d415f2a040");
        assert_eq!(m, 3319814642761637952); // the gateway transcript's member_id (§7)
        let c = cluster_id(&[m]);
        assert_eq!(format!("{c:x}"), "48276a8f75b6a87");
        assert_eq!(c, 324952591200643719);
    }

    #[test]
    fn member_id_sorts_urls_and_uses_token() {
        let a = member_id(&["http://b:1".into(), "http://a:1".into()], "t", None);
        let b = member_id(&["http://a:1".into(), "http://b:1".into()], "t", None);
        assert_eq!(a, b);
        assert_ne!(
            a,
            member_id(&["http://a:1".into(), "http://b:1".into()], "u", None)
        );
        assert_ne!(
            a,
            member_id(&["http://a:1".into(), "http://b:1".into()], "t", Some(1))
        );
        assert_eq!(cluster_id(&[1, 2]), cluster_id(&[2, 1]));
    }

    #[test]
    fn no_flags_is_a_single_member_on_loopback() {
        let c = parse(&[]).unwrap();
        assert_eq!(c.flags.name, "default");
        assert_eq!(c.data_dir, PathBuf::from("default.ringkv"));
        assert_eq!(
            c.client_addrs,
            vec!["127.0.0.1:2379".parse::<SocketAddr>().unwrap()]
        );
        assert_eq!(
            c.peer_addrs,
            vec!["127.0.0.1:2380".parse::<SocketAddr>().unwrap()]
        );
        assert_eq!(c.initial_members.len(), 1);
        assert_eq!(c.initial_members[0].name, "default");
        assert_eq!(
            c.member_id,
            member_id(&["http://localhost:2380".into()], "etcd-cluster", None)
        );
        assert_eq!(c.cluster_id, cluster_id(&[c.member_id]));
        assert_eq!(c.flags.max_request_bytes, 1_572_864);
        assert_eq!(c.grpc_max_recv_bytes, 2_097_152);
        assert_eq!(c.flags.max_txn_ops, 128);
        assert_eq!(c.flags.snapshot_count, 100_000);
        assert_eq!(c.flags.heartbeat_interval, 100);
        assert_eq!(c.flags.election_timeout, 1000);
        assert_eq!(c.quota_backend_bytes, Some(DEFAULT_QUOTA_BYTES));
        assert_eq!(c.auto_compaction, AutoCompaction::Off);
        assert_eq!(c.flags.grpc_keepalive_min_time, Duration::from_secs(5));
        assert_eq!(c.flags.grpc_keepalive_interval, Duration::from_secs(7200));
        assert_eq!(c.flags.grpc_keepalive_timeout, Duration::from_secs(20));
        assert!(c.flags.strict_reconfig_check);
        assert!(!c.flags.force_new_cluster);
        assert_eq!(c.request_timeout(), Duration::from_secs(7));
    }

    #[test]
    fn name_drives_data_dir_and_initial_cluster() {
        let c = parse(&[
            "--name",
            "n1",
            "--initial-advertise-peer-urls",
            "http://127.0.0.1:23800",
            "--listen-client-urls=http://127.0.0.1:23790",
        ])
        .unwrap();
        assert_eq!(c.data_dir, PathBuf::from("n1.ringkv"));
        assert_eq!(format!("{:x}", c.member_id), "2e1259d415f2a040");
        assert_eq!(format!("{:x}", c.cluster_id), "48276a8f75b6a87");
        assert_eq!(
            c.client_addrs,
            vec!["127.0.0.1:23790".parse::<SocketAddr>().unwrap()]
        );
    }

    #[test]
    fn three_member_initial_cluster() {
        let c = parse(&[
            "--name=b",
            "--initial-advertise-peer-urls=http://127.0.0.2:2380",
            "--initial-cluster=a=http://127.0.0.1:2380,b=http://127.0.0.2:2380,c=http://127.0.0.3:2380",
            "--initial-cluster-token=tok",
        ])
        .unwrap();
        assert_eq!(c.initial_members.len(), 3);
        assert!(c.initial_members.windows(2).all(|w| w[0].id < w[1].id));
        let ids: Vec<u64> = c.initial_members.iter().map(|m| m.id).collect();
        assert_eq!(c.cluster_id, cluster_id(&ids));
        assert_eq!(
            c.member_id,
            member_id(&["http://127.0.0.2:2380".into()], "tok", None)
        );
    }

    #[test]
    fn bad_flags_get_clear_errors() {
        let e = parse(&["--election-timeout=400"]).unwrap_err();
        assert!(e.0.contains("--election-timeout"), "{e}");
        assert!(
            parse(&["--election-timeout=60000"])
                .unwrap_err()
                .0
                .contains("too long")
        );
        assert!(
            parse(&["--cert-file=x.pem"])
                .unwrap_err()
                .0
                .contains("--cert-file needs --key-file")
        );
        assert!(
            parse(&["--listen-client-urls=https://127.0.0.1:1"])
                .unwrap_err()
                .0
                .contains("an https URL needs --cert-file and --key-file, or --auto-tls")
        );
        assert!(
            parse(&["--client-cert-auth", "--auto-tls"])
                .unwrap_err()
                .0
                .contains("--client-cert-auth needs --trusted-ca-file")
        );
        assert!(
            parse(&["--auto-tls", "--cipher-suites=TLS_RSA_WITH_RC4_128_SHA"])
                .unwrap_err()
                .0
                .contains("unexpected TLS cipher suite")
        );
        assert!(
            parse(&[
                "--peer-auto-tls",
                "--listen-peer-urls=https://127.0.0.1:1,http://127.0.0.1:2"
            ])
            .unwrap_err()
            .0
            .contains("mixing http and https")
        );
        let c = parse(&[
            "--auto-tls",
            "--listen-client-urls=https://127.0.0.1:1,http://127.0.0.1:2",
            "--cipher-suites=TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305",
        ])
        .unwrap();
        assert_eq!(c.client_addr_tls, vec![true, false]);
        assert!(c.client_tls.enabled() && !c.peer_tls.enabled());
        assert_eq!(c.client_tls.hosts, vec!["127.0.0.1", "127.0.0.1"]);
        assert!(
            parse(&["--listen-client-urls=foo"])
                .unwrap_err()
                .0
                .contains("not a URL")
        );
        assert!(
            parse(&["--initial-cluster=x=http://a:1"])
                .unwrap_err()
                .0
                .contains("no entry")
        );
        assert!(parse(&["--auto-compaction-retention=abc"]).is_err());
        assert!(parse(&["--enable-v2"]).unwrap_err().0.contains("v2"));
        assert!(parse(&["--no-such-flag"]).is_err());
    }

    #[test]
    fn metrics_urls() {
        assert!(parse(&[]).unwrap().metrics_addrs.is_empty());
        let c = parse(&["--listen-metrics-urls=http://127.0.0.1:2381"]).unwrap();
        assert_eq!(
            c.metrics_addrs,
            vec!["127.0.0.1:2381".parse::<SocketAddr>().unwrap()]
        );
    }

    #[test]
    fn retention_and_quota() {
        let c = parse(&["--auto-compaction-retention=1"]).unwrap();
        assert_eq!(
            c.auto_compaction,
            AutoCompaction::Periodic(Duration::from_secs(3600))
        );
        let c = parse(&["--auto-compaction-retention=30m"]).unwrap();
        assert_eq!(
            c.auto_compaction,
            AutoCompaction::Periodic(Duration::from_secs(1800))
        );
        let c = parse(&[
            "--auto-compaction-mode=revision",
            "--auto-compaction-retention=1000",
        ])
        .unwrap();
        assert_eq!(c.auto_compaction, AutoCompaction::Revision(1000));
        assert_eq!(
            parse(&["--quota-backend-bytes=-1"])
                .unwrap()
                .quota_backend_bytes,
            None
        );
        assert_eq!(
            parse(&["--quota-backend-bytes=1024"])
                .unwrap()
                .quota_backend_bytes,
            Some(1024)
        );
        let c = parse(&["--force-new-cluster", "--strict-reconfig-check=false"]).unwrap();
        assert!(c.flags.force_new_cluster && !c.flags.strict_reconfig_check);
    }

    #[test]
    fn go_durations() {
        assert_eq!(
            parse_go_duration("100ms").unwrap(),
            Duration::from_millis(100)
        );
        assert_eq!(
            parse_go_duration("1h30m").unwrap(),
            Duration::from_secs(5400)
        );
        assert_eq!(
            parse_go_duration("1.5s").unwrap(),
            Duration::from_millis(1500)
        );
        assert!(parse_go_duration("5").is_err());
        assert!(parse_go_duration("5x").is_err());
    }
}

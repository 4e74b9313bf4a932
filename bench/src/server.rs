//! Starting a fresh etcd-compatible cluster for a test or for `compare`: etcd and ringkv take
//! the same flags (ringkv uses etcd's flag names), so one launcher serves both.
//!
//! Every member listens on 127.0.0.1 ports picked free by the OS, keeps its data in a fresh
//! temporary directory, and logs to `<member>.log` there. Dropping the [`Cluster`] kills the
//! members and removes the directory.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::load::EtcdClient;

/// How long members get to elect a leader and answer Status.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// One running member.
#[derive(Debug)]
pub struct Member {
    pub name: String,
    /// `127.0.0.1:port` of the client listener.
    pub client_addr: String,
    pub log: PathBuf,
    child: Child,
}

impl Member {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

/// A running cluster; killed on drop.
#[derive(Debug)]
pub struct Cluster {
    pub members: Vec<Member>,
    dir: tempfile::TempDir,
}

impl Cluster {
    /// The client endpoints, comma separated (for `--endpoints`).
    pub fn endpoints(&self) -> String {
        self.members
            .iter()
            .map(|m| m.client_addr.clone())
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The last `n` lines of every member's log (for error messages).
    pub fn log_tails(&self, n: usize) -> String {
        let mut out = String::new();
        for m in &self.members {
            let text = std::fs::read_to_string(&m.log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            out.push_str(&format!("--- {} ({})\n", m.name, m.log.display()));
            for l in &lines[lines.len().saturating_sub(n)..] {
                out.push_str(l);
                out.push('\n');
            }
        }
        out
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for m in &mut self.members {
            let _ = m.child.kill();
            let _ = m.child.wait();
        }
    }
}

/// A port on 127.0.0.1 that was free a moment ago.
fn free_port() -> Result<u16, String> {
    let l =
        TcpListener::bind("127.0.0.1:0").map_err(|e| format!("cannot find a free port: {e}"))?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(|e| format!("cannot find a free port: {e}"))
}

/// Times a cluster start is tried: a port found free can be taken by another process before
/// the member binds it, and then that member exits at once.
const START_ATTEMPTS: u32 = 3;

/// Starts `members` members of `bin` (etcd or ringkv) and waits until they answer Status with a
/// leader. `parent` is where the temporary data directory goes (the system temp dir if `None`).
/// A start that fails after the binary ran is retried on new ports and a new directory.
pub fn start_cluster(bin: &Path, members: u32, parent: Option<&Path>) -> Result<Cluster, String> {
    start_cluster_with_args(bin, members, parent, &[])
}

/// [`start_cluster`] with `extra` flags appended to every member's command line (after the
/// launcher's own flags), e.g. faster raft timing for tests.
pub fn start_cluster_with_args(
    bin: &Path,
    members: u32,
    parent: Option<&Path>,
    extra: &[&str],
) -> Result<Cluster, String> {
    let mut last = String::new();
    for _ in 0..START_ATTEMPTS {
        match start_once(bin, members, parent, extra) {
            Ok(c) => return Ok(c),
            Err(StartError::Fatal(e)) => return Err(e),
            Err(StartError::Retry(e)) => last = e,
        }
    }
    Err(format!("{last}\n(gave up after {START_ATTEMPTS} attempts)"))
}

enum StartError {
    /// Retrying cannot help (no binary, no directory).
    Fatal(String),
    /// A member exited or did not get ready.
    Retry(String),
}

fn start_once(
    bin: &Path,
    members: u32,
    parent: Option<&Path>,
    extra: &[&str],
) -> Result<Cluster, StartError> {
    let fatal = StartError::Fatal;
    if members == 0 {
        return Err(fatal("a cluster needs at least one member".to_owned()));
    }
    let dir = match parent {
        Some(p) => tempfile::Builder::new()
            .prefix("ringkv-bench-cluster-")
            .tempdir_in(p),
        None => tempfile::Builder::new()
            .prefix("ringkv-bench-cluster-")
            .tempdir(),
    }
    .map_err(|e| fatal(format!("cannot create a data directory: {e}")))?;
    let mut ports = Vec::new();
    for _ in 0..members {
        ports.push((free_port().map_err(fatal)?, free_port().map_err(fatal)?));
    }
    let initial: Vec<String> = ports
        .iter()
        .enumerate()
        .map(|(i, (_, peer))| format!("m{i}=http://127.0.0.1:{peer}"))
        .collect();
    let initial = initial.join(",");
    let mut cluster = Cluster {
        members: Vec::new(),
        dir,
    };
    for (i, (client, peer)) in ports.iter().enumerate() {
        let name = format!("m{i}");
        let log = cluster.dir.path().join(format!("{name}.log"));
        let log_file = std::fs::File::create(&log)
            .map_err(|e| fatal(format!("cannot create {}: {e}", log.display())))?;
        let log_err = log_file
            .try_clone()
            .map_err(|e| fatal(format!("cannot open {}: {e}", log.display())))?;
        let client_url = format!("http://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let child = Command::new(bin)
            .arg(format!("--name={name}"))
            .arg(format!(
                "--data-dir={}",
                cluster.dir.path().join(&name).display()
            ))
            .arg(format!("--listen-client-urls={client_url}"))
            .arg(format!("--advertise-client-urls={client_url}"))
            .arg(format!("--listen-peer-urls={peer_url}"))
            .arg(format!("--initial-advertise-peer-urls={peer_url}"))
            .arg(format!("--initial-cluster={initial}"))
            .arg("--initial-cluster-state=new")
            .arg("--initial-cluster-token=ringkv-bench")
            .args(extra)
            .stdin(Stdio::null())
            .stdout(log_file)
            .stderr(log_err)
            .spawn()
            .map_err(|e| {
                fatal(format!(
                    "cannot start {}: {e}{}",
                    bin.display(),
                    if e.kind() == std::io::ErrorKind::NotFound {
                        " (not installed? Debian: apt-get install etcd-server; tests/run.sh does)"
                    } else {
                        ""
                    }
                ))
            })?;
        cluster.members.push(Member {
            name,
            client_addr: format!("127.0.0.1:{client}"),
            log,
            child,
        });
    }
    wait_ready(&mut cluster).map_err(StartError::Retry)?;
    Ok(cluster)
}

/// Waits until every member answers Status and knows a leader.
fn wait_ready(cluster: &mut Cluster) -> Result<(), String> {
    let rt = crate::load::runtime()?;
    let deadline = Instant::now() + READY_TIMEOUT;
    for i in 0..cluster.members.len() {
        loop {
            if let Ok(Some(status)) = cluster.members[i].child.try_wait() {
                return Err(format!(
                    "member {} exited with {status} before it was ready:\n{}",
                    cluster.members[i].name,
                    cluster.log_tails(20)
                ));
            }
            let addr = cluster.members[i].client_addr.clone();
            let ready = rt.block_on(async {
                let mut c = EtcdClient::connect(&addr, Duration::from_secs(1), None)
                    .await
                    .ok()?;
                let s = c.status().await.ok()?;
                (s.leader != 0).then_some(())
            });
            if ready.is_some() {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "member {} not ready after {READY_TIMEOUT:?}:\n{}",
                    cluster.members[i].name,
                    cluster.log_tails(20)
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_binary_is_a_clear_error_without_retries() {
        let e = start_cluster(Path::new("/nonexistent/etcd"), 1, None).unwrap_err();
        assert!(e.contains("cannot start /nonexistent/etcd"), "{e}");
        assert!(e.contains("apt-get install etcd-server"), "{e}");
        assert!(!e.contains("attempts"), "not retried: {e}");
    }

    #[test]
    fn a_member_that_exits_is_retried_then_reported_with_its_log() {
        // `false` exits at once with status 1, whatever its arguments.
        let e = start_cluster(Path::new("/bin/false"), 1, None).unwrap_err();
        assert!(e.contains("exited with exit status: 1"), "{e}");
        assert!(e.contains("gave up after 3 attempts"), "{e}");
        assert!(e.contains("--- m0"), "log tail named: {e}");
    }

    #[test]
    fn zero_members_is_refused() {
        assert!(start_cluster(Path::new("etcd"), 0, None).is_err());
    }
}

//! Network load generation against any etcd-compatible endpoint.
//!
//! # Execution model
//! All clients of a run are futures on ONE thread (a current-thread tokio runtime): the tool
//! never takes more than one core from the server it measures (on this 2-core machine that
//! matters more than anything), no lock or atomic is needed on the request path, and the CPU
//! per request stays a few microseconds. `--clients` concurrent clients share `--conns` HTTP/2
//! connections round-robin; the connections go round-robin to the `--endpoints` (or only to the
//! leader with `--target-leader`).
//!
//! # Closed and open loop
//! Without `--rate`, each client sends its next request when the previous one returned, and a
//! latency is measured from the send (closed loop). With `--rate R`, request number `i` (over
//! all clients) has the intended start time `start + i / R`; a client waits for that time,
//! and the latency is measured from the intended start, not from when the client got around to
//! sending it. So when the server stalls, the requests that should have been sent meanwhile
//! show the stall in their latency instead of silently not being sent (no coordinated
//! omission). If the clients cannot keep up with the rate, latencies grow without bound —
//! that is the honest answer; add `--clients`.

mod client;
mod hpack;
mod tls;
mod watch;
mod wire;
mod workloads;

use std::cell::{Cell, RefCell};
use std::io::IsTerminal as _;
use std::time::Duration;

use futures_util::StreamExt as _;
use futures_util::stream::FuturesUnordered;
use rand::SeedableRng as _;
use rand::rngs::SmallRng;
use tokio::time::Instant;

use crate::cli::Global;
use crate::cpu::{CpuMeter, max_peak_rss_bytes};
use crate::hist::Recorder;
use crate::report::LoadReport;

pub use client::{EtcdClient, status_kind};
pub use tls::{Tls, TlsFlags};
pub use watch::{WatchPlan, run_watch};
pub use workloads::{
    KeyGen, LeaseKeepalive, Mixed, Put, RangeLoad, TxnPut, make_key, run_compactor, value,
};

/// How long a run goes: a count of operations, or a time, and the pacing.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Plan {
    /// Stop after this many operations (started), unless `duration` is set.
    pub total: u64,
    /// Stop starting operations after this long (overrides `total`).
    pub duration: Option<Duration>,
    /// Operations per second over all clients; 0 = closed loop.
    pub rate: f64,
}

impl Plan {
    pub fn new(total: u64, duration: Option<Duration>, rate: f64) -> Result<Self, String> {
        if !rate.is_finite() || rate < 0.0 {
            return Err(format!("--rate must be ≥ 0, got {rate}"));
        }
        if duration.is_none() && total == 0 {
            return Err("--total must be at least 1 (or give --duration)".to_owned());
        }
        Ok(Plan {
            total,
            duration,
            rate,
        })
    }

    /// The intended start of operation `i` relative to the run's start, with `--rate`.
    pub fn intended_offset(&self, i: u64) -> Option<Duration> {
        (self.rate > 0.0).then(|| Duration::from_secs_f64(i as f64 / self.rate))
    }

    /// Whether operation `i`, intended to start at `offset` after the start, is in the run.
    pub fn admits(&self, i: u64, offset: Duration) -> bool {
        match self.duration {
            Some(d) => offset < d,
            None => i < self.total,
        }
    }
}

/// One kind of request, issued by many clients.
///
/// `State` is what each client keeps between its requests (a stream, a lease id); `op` runs
/// operation number `i` (numbered over all clients) and returns when it completed.
// The futures never leave the run's single thread (see the module docs), so they need no
// `Send` bound and `async fn` is the right shape here.
#[allow(async_fn_in_trait)]
pub trait Workload {
    type State;
    /// Prepares client number `c` (called once per client, before the clock starts).
    async fn init(&self, client: &mut EtcdClient, c: u32) -> Result<Self::State, String>;
    async fn op(
        &self,
        client: &mut EtcdClient,
        state: &mut Self::State,
        i: u64,
        rng: &mut SmallRng,
    ) -> Result<(), tonic::Status>;
}

/// Opens `--conns` connections (round-robin over the endpoints, or only to the leader with
/// `--target-leader`).
pub async fn connect(g: &Global) -> Result<Vec<EtcdClient>, String> {
    if g.endpoints.is_empty() {
        return Err("--endpoints is empty".to_owned());
    }
    let tls = tls_of(g)?;
    let tls = tls.as_ref();
    let mut endpoints = g.endpoints.clone();
    if g.target_leader || g.target_followers {
        endpoints = leader_endpoints(&endpoints, g.dial_timeout, tls, g.target_followers).await?;
    }
    let mut conns = Vec::new();
    for i in 0..g.conns.max(1) as usize {
        let ep = &endpoints[i % endpoints.len()];
        conns.push(EtcdClient::connect(ep, g.dial_timeout, tls).await?);
    }
    Ok(conns)
}

/// The TLS configuration the flags and endpoints ask for, if any.
pub fn tls_of(g: &Global) -> Result<Option<Tls>, String> {
    let flags = TlsFlags {
        cacert: g.cacert.clone(),
        cert: g.cert.clone(),
        key: g.key_file.clone(),
    };
    let https = g.endpoints.iter().any(|e| e.starts_with("https://"));
    if flags.any() || https {
        Tls::new(&flags).map(Some)
    } else {
        Ok(None)
    }
}

/// The endpoints whose member is the current leader (Maintenance.Status of each), or with
/// `followers` those whose member is not.
async fn leader_endpoints(
    endpoints: &[String],
    dial: Duration,
    tls: Option<&Tls>,
    followers: bool,
) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for ep in endpoints {
        let mut c = EtcdClient::connect(ep, dial, tls).await?;
        let s = c
            .status()
            .await
            .map_err(|e| format!("--target-leader: Status on {ep} failed: {e}"))?;
        let me = s.header.map(|h| h.member_id).unwrap_or(0);
        if me != 0 && s.leader != 0 && (me == s.leader) != followers {
            out.push(ep.clone());
        }
    }
    if out.is_empty() {
        return Err(if followers {
            format!("--target-followers: no follower among the endpoints {endpoints:?}")
        } else {
            format!("--target-leader: no leader among the endpoints {endpoints:?}")
        });
    }
    Ok(out)
}

/// A progress bar on stderr, shown only on a terminal, without --json, and only once a run has
/// lasted a second.
pub struct Progress {
    enabled: bool,
    bar: Option<indicatif::ProgressBar>,
    len: Option<u64>,
}

impl Progress {
    pub fn new(g: &Global, len: Option<u64>) -> Self {
        Progress {
            enabled: !g.json && std::io::stderr().is_terminal(),
            bar: None,
            len,
        }
    }

    /// Shows `done` operations at `elapsed` into the run.
    pub fn update(&mut self, done: u64, elapsed: Duration) {
        if !self.enabled || elapsed < Duration::from_secs(1) {
            return;
        }
        let len = self.len;
        let bar = self.bar.get_or_insert_with(|| {
            let (bar, template) = match len {
                Some(n) => (
                    indicatif::ProgressBar::new(n),
                    "{elapsed_precise} {bar:50} {pos}/{len} ops",
                ),
                None => (
                    indicatif::ProgressBar::new_spinner(),
                    "{elapsed_precise} {spinner} {pos} ops",
                ),
            };
            if let Ok(style) = indicatif::ProgressStyle::with_template(template) {
                bar.set_style(style);
            }
            // The bar appears a second into the run; its clock shows the run's time.
            bar.with_elapsed(elapsed)
        });
        bar.set_position(done);
    }

    pub fn finish(&mut self) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
    }
}

/// Runs `w` with `clients` clients over `conns` according to `plan`; returns the merged
/// recorder and the run's wall time (from the first intended start to the last completion).
pub async fn drive<W: Workload>(
    w: &W,
    conns: &[EtcdClient],
    clients: u32,
    plan: Plan,
    sample: bool,
    progress: &mut Progress,
) -> Result<(Recorder, Duration), String> {
    let clients = clients.max(1);
    let mut prepared = Vec::with_capacity(clients as usize);
    for c in 0..clients {
        let mut client = conns[c as usize % conns.len()].clone();
        let state = w.init(&mut client, c).await?;
        prepared.push((client, state));
    }
    let next = Cell::new(0u64);
    let done = Cell::new(0u64);
    let running = Cell::new(clients);
    let start = Instant::now();
    let std_start = std::time::Instant::now();
    // One recorder for all clients (they share this thread): a histogram is ~300 KiB, so one
    // per client cost more CPU to create and merge than a short run's requests.
    let rec = RefCell::new(Recorder::new(sample.then_some(std_start)));
    let mut tasks: FuturesUnordered<_> = prepared
        .into_iter()
        .enumerate()
        .map(|(c, (mut client, mut state))| {
            let (next, done, running, rec) = (&next, &done, &running, &rec);
            async move {
                let mut rng = SmallRng::seed_from_u64(0x5EED ^ c as u64);
                loop {
                    let i = next.get();
                    let offset = plan.intended_offset(i).unwrap_or_else(|| start.elapsed());
                    if !plan.admits(i, offset) {
                        break;
                    }
                    next.set(i + 1);
                    let begin = if plan.rate > 0.0 {
                        let at = start + offset;
                        tokio::time::sleep_until(at).await;
                        at
                    } else {
                        Instant::now()
                    };
                    let res = w.op(&mut client, &mut state, i, &mut rng).await;
                    let end = Instant::now();
                    match res {
                        Ok(()) => rec.borrow_mut().record(end - begin, end.into_std()),
                        Err(s) => rec.borrow_mut().error(&status_kind(&s)),
                    }
                    done.set(done.get() + 1);
                }
                running.set(running.get() - 1);
            }
        })
        .collect();
    let ticker = async {
        while running.get() > 0 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            progress.update(done.get(), start.elapsed());
        }
    };
    let collect = async {
        while tasks.next().await.is_some() {}
        start.elapsed()
    };
    let (elapsed, ()) = tokio::join!(collect, ticker);
    drop(tasks);
    let all = rec.into_inner();
    progress.finish();
    Ok((all, elapsed))
}

/// Builds the single-threaded runtime every network command runs on.
pub fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))
}

/// Runs `w` under `plan` on `conns` and builds its report: CPU of this tool and, when
/// `server_pids` is not empty, of those server processes (summed) and their peak RSS (max).
/// Also returns the run's merged recorder (for plots).
pub async fn run_workload<W: Workload>(
    name: &str,
    w: &W,
    g: &Global,
    plan: Plan,
    conns: &[EtcdClient],
    server_pids: &[u32],
) -> Result<(LoadReport, Recorder), String> {
    let len = if plan.duration.is_some() {
        None
    } else {
        Some(plan.total)
    };
    let mut progress = Progress::new(g, len);
    let pid_err = |e: std::io::Error| format!("server process {server_pids:?}: {e}");
    let meter = CpuMeter::start(server_pids).map_err(pid_err)?;
    let (rec, elapsed) = drive(w, conns, g.clients, plan, g.sample, &mut progress).await?;
    let cpu = meter.stop().map_err(pid_err)?;
    let rss = max_peak_rss_bytes(server_pids).map_err(pid_err)?;
    let report = LoadReport::new(
        name,
        g.clients.max(1),
        conns.len() as u32,
        &rec,
        elapsed,
        cpu,
        rss,
        g.sample,
    );
    Ok((report, rec))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_by_total() {
        let p = Plan::new(3, None, 0.0).unwrap();
        assert!(p.admits(2, Duration::from_secs(100)));
        assert!(!p.admits(3, Duration::ZERO));
        assert_eq!(p.intended_offset(5), None);
    }

    #[test]
    fn plan_by_duration_and_rate() {
        let p = Plan::new(0, Some(Duration::from_secs(2)), 100.0).unwrap();
        assert_eq!(p.intended_offset(150), Some(Duration::from_millis(1500)));
        assert!(p.admits(199, p.intended_offset(199).unwrap()));
        assert!(!p.admits(200, p.intended_offset(200).unwrap()));
    }

    #[test]
    fn plan_rejects_nonsense() {
        assert!(Plan::new(0, None, 0.0).is_err());
        assert!(Plan::new(10, None, -1.0).is_err());
        assert!(Plan::new(10, None, f64::NAN).is_err());
    }
}

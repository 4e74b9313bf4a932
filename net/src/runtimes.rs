//! The front end's runtimes: one current-thread tokio runtime per front-end core
//! (thread-per-core, engine/docs/design.md "Front end runtimes").
//!
//! Each runtime runs on its own thread (`ringkv-front-<i>`), pinned to one CPU when
//! `--cpu-layout` names front-end CPUs. The client listeners' accept loops run elsewhere (the
//! main thread's runtime) and hand every accepted connection to the next runtime in turn
//! ([`Spawner`]); the connection's task, and every task it spawns (fallback gRPC streams,
//! watch sessions, lease keep-alive streams), then stays on that runtime's thread.
//!
//! Why not one multi-thread runtime: tokio's work-stealing scheduler keeps one worker
//! "searching" whenever a task is woken, so at one client each wake of the connection task (the
//! request from epoll, the reply from the raft core) also woke the idle second worker, which
//! found nothing and parked again — two context switches per wake for nothing. A current-thread
//! runtime has no other worker to wake.
//!
//! Contracts kept from the multi-thread runtime:
//! - `spawn_blocking` works (each runtime has its own blocking pool, `ringkv-blocking`
//!   threads, restricted to the front-end CPU set); `block_in_place` must not be used.
//! - `Handle::block_on` from a blocking-pool thread (snapshot streaming) works because the
//!   runtime's own thread is inside `Runtime::block_on` until [`FrontRuntimes::shutdown`].
//! - Shutdown: [`FrontRuntimes::shutdown`] is called after the client drain; each thread leaves
//!   `block_on`, then its runtime drops the tasks left (bounded, like the old runtime's
//!   `shutdown_timeout`) and the thread is joined.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::sync::oneshot;

use crate::cpu_layout::restrict_current_thread;

/// How long a stopping runtime waits for its blocking-pool tasks (snapshot streams end once
/// their receivers are gone, which dropping the tasks guarantees).
const BLOCKING_SHUTDOWN: Duration = Duration::from_secs(5);

/// Hands futures to the front-end runtimes round-robin. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Spawner {
    /// One handle per runtime; never empty.
    handles: Arc<[Handle]>,
    /// The runtime the next spawn goes to (modulo `handles.len()`).
    next: Arc<AtomicUsize>,
}

impl Spawner {
    /// Spawns `fut` on the next runtime in turn.
    pub fn spawn<F>(&self, fut: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let i = self.next.fetch_add(1, Relaxed) % self.handles.len();
        drop(self.handles[i].spawn(fut));
    }

    /// Number of runtimes.
    pub fn len(&self) -> usize {
        self.handles.len()
    }

    /// Always false: there is at least one runtime.
    pub fn is_empty(&self) -> bool {
        self.handles.is_empty()
    }
}

/// The running front-end runtimes and their threads.
#[derive(Debug)]
pub struct FrontRuntimes {
    /// Spawns onto the runtimes.
    spawner: Spawner,
    /// Per runtime: its thread, and the sender whose drop (or send) makes the thread leave
    /// `block_on` and shut its runtime down.
    threads: Vec<(std::thread::JoinHandle<()>, oneshot::Sender<()>)>,
}

impl FrontRuntimes {
    /// Starts `workers` (≥ 1) current-thread runtimes. With `cpus`, runtime `i`'s thread is
    /// pinned to `cpus[i % cpus.len()]` and the blocking pools are restricted to `cpus`.
    pub fn start(workers: usize, cpus: Option<&[usize]>) -> std::io::Result<FrontRuntimes> {
        let workers = workers.max(1);
        let cpus: Option<Arc<[usize]>> = cpus.filter(|c| !c.is_empty()).map(Arc::from);
        let mut handles = Vec::with_capacity(workers);
        let mut threads = Vec::with_capacity(workers);
        for i in 0..workers {
            let pool_cpus = cpus.clone();
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .thread_name("ringkv-blocking")
                // Current-thread runtimes call this for their blocking-pool threads only.
                .on_thread_start(move || {
                    if let Some(cpus) = &pool_cpus
                        && let Err(e) = restrict_current_thread(cpus)
                    {
                        tracing::warn!(?cpus, error = %e, "cannot restrict a blocking thread");
                    }
                })
                .build()?;
            handles.push(runtime.handle().clone());
            let cpu = cpus.as_ref().map(|c| c[i % c.len()]);
            let (stop_tx, stop_rx) = oneshot::channel::<()>();
            let thread = std::thread::Builder::new()
                .name(format!("ringkv-front-{i}"))
                .spawn(move || {
                    if let Some(cpu) = cpu
                        && let Err(e) = restrict_current_thread(&[cpu])
                    {
                        tracing::warn!(cpu, error = %e, "cannot pin a front-end thread");
                    }
                    // Either a send or the sender's drop ends the wait.
                    runtime.block_on(async move {
                        let _ = stop_rx.await;
                    });
                    runtime.shutdown_timeout(BLOCKING_SHUTDOWN);
                })?;
            threads.push((thread, stop_tx));
        }
        Ok(FrontRuntimes {
            spawner: Spawner {
                handles: handles.into(),
                next: Arc::new(AtomicUsize::new(0)),
            },
            threads,
        })
    }

    /// A spawner over these runtimes.
    pub fn spawner(&self) -> Spawner {
        self.spawner.clone()
    }

    /// Stops every runtime (tasks still on them are dropped) and joins the threads.
    pub fn shutdown(self) {
        // Signal every runtime first so they stop in parallel, then join.
        let (threads, stops): (Vec<_>, Vec<_>) = self.threads.into_iter().unzip();
        drop(stops);
        for thread in threads {
            if thread.join().is_err() {
                tracing::error!("a front-end runtime thread panicked");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    /// Names of the threads `n` spawned tasks ran on.
    fn threads_of(spawner: &Spawner, n: usize) -> Vec<String> {
        let (tx, rx) = std::sync::mpsc::channel();
        for _ in 0..n {
            let tx = tx.clone();
            spawner.spawn(async move {
                let name = std::thread::current().name().unwrap_or("").to_string();
                tx.send(name).unwrap();
            });
        }
        (0..n).map(|_| rx.recv().unwrap()).collect()
    }

    #[test]
    fn spawns_go_round_robin_over_one_thread_per_runtime() {
        let rts = FrontRuntimes::start(3, None).unwrap();
        let spawner = rts.spawner();
        assert_eq!(spawner.len(), 3);
        let names = threads_of(&spawner, 6);
        let distinct: BTreeSet<_> = names.iter().cloned().collect();
        let expected: BTreeSet<_> = (0..3).map(|i| format!("ringkv-front-{i}")).collect();
        assert_eq!(distinct, expected, "{names:?}");
        for i in 0..3 {
            let on_i = names
                .iter()
                .filter(|n| **n == format!("ringkv-front-{i}"))
                .count();
            assert_eq!(on_i, 2, "{names:?}");
        }
        rts.shutdown();
    }

    #[test]
    fn timers_io_and_the_blocking_pool_work_on_a_front_runtime() {
        let rts = FrontRuntimes::start(2, Some(&[0])).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        rts.spawner().spawn(async move {
            tokio::time::sleep(Duration::from_millis(1)).await;
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let connect = tokio::net::TcpStream::connect(addr);
            let (accepted, connected) = tokio::join!(listener.accept(), connect);
            assert!(accepted.is_ok() && connected.is_ok());
            let pool =
                tokio::task::spawn_blocking(|| std::thread::current().name().map(String::from))
                    .await
                    .unwrap();
            tx.send(pool).unwrap();
        });
        let pool = rx.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(pool.as_deref(), Some("ringkv-blocking"));
        rts.shutdown();
    }

    #[test]
    fn shutdown_drops_pending_tasks_and_joins() {
        let rts = FrontRuntimes::start(2, None).unwrap();
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        for _ in 0..4 {
            let tx = tx.clone();
            rts.spawner().spawn(async move {
                let _keep = tx;
                std::future::pending::<()>().await;
            });
        }
        drop(tx);
        rts.shutdown();
        // Every sender was owned by a task; dropping the tasks closed the channel.
        assert!(rx.recv().is_err());
    }
}

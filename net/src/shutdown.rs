//! Server shutdown, designed as broadcast → drain → bounded wait (STYLE.md item 14).
//!
//! 1. **Broadcast**: [`ShutdownTrigger::fire`] (on SIGTERM/SIGINT) flips a watch channel that
//!    every accept loop, connection and long-lived stream holds a [`Shutdown`] receiver of.
//! 2. **Drain**: accept loops stop accepting; HTTP/2 connections send GOAWAY and let in-flight
//!    requests finish; watch/keep-alive/observe streams end. Each connection task holds a
//!    [`DrainGuard`]; the server waits until every guard is dropped.
//! 3. **Bounded**: the drain wait is capped (`DRAIN_TIMEOUT`); connections still open after it
//!    are dropped.

use tokio::sync::{mpsc, watch};

/// How long shutdown waits for in-flight requests before dropping connections.
pub const DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Receiving side of the shutdown broadcast. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Shutdown {
    rx: watch::Receiver<bool>,
}

/// Sending side of the shutdown broadcast.
#[derive(Debug)]
pub struct ShutdownTrigger {
    tx: watch::Sender<bool>,
    drain_tx: Option<mpsc::Sender<()>>,
    drain_rx: mpsc::Receiver<()>,
}

/// Held by every connection task; shutdown waits until all are dropped.
#[derive(Debug, Clone)]
pub struct DrainGuard {
    _tx: mpsc::Sender<()>,
}

impl ShutdownTrigger {
    /// A trigger and its first receiver.
    pub fn new() -> (ShutdownTrigger, Shutdown) {
        let (tx, rx) = watch::channel(false);
        let (drain_tx, drain_rx) = mpsc::channel(1);
        (
            ShutdownTrigger {
                tx,
                drain_tx: Some(drain_tx),
                drain_rx,
            },
            Shutdown { rx },
        )
    }

    /// A guard for one more task to drain.
    pub fn guard(&self) -> DrainGuard {
        DrainGuard {
            _tx: self.drain_tx.clone().expect("guard() after drain()"),
        }
    }

    /// Broadcasts shutdown.
    pub fn fire(&self) {
        let _ = self.tx.send(true);
    }

    /// Broadcasts shutdown and waits (at most `limit`) until every guard is dropped. Returns
    /// whether everything drained in time.
    pub async fn drain(mut self, limit: std::time::Duration) -> bool {
        self.fire();
        self.drain_tx = None;
        tokio::time::timeout(limit, self.drain_rx.recv())
            .await
            .is_ok()
    }
}

impl Shutdown {
    /// Whether shutdown has been broadcast.
    pub fn is_fired(&self) -> bool {
        *self.rx.borrow()
    }

    /// Completes when shutdown is broadcast (at once if it already was).
    pub async fn fired(&mut self) {
        let _ = self.rx.wait_for(|v| *v).await;
    }
}

/// Completes on SIGTERM or SIGINT.
pub async fn signal() -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn drain_waits_for_guards_and_is_bounded() {
        let (trigger, shutdown) = ShutdownTrigger::new();
        let guard = trigger.guard();
        let mut s = shutdown.clone();
        let task = tokio::spawn(async move {
            s.fired().await;
            drop(guard);
        });
        assert!(!shutdown.is_fired());
        assert!(trigger.drain(Duration::from_secs(5)).await);
        assert!(shutdown.is_fired());
        task.await.unwrap();

        let (trigger, _shutdown) = ShutdownTrigger::new();
        let stuck = trigger.guard();
        assert!(!trigger.drain(Duration::from_millis(50)).await);
        drop(stuck);
    }
}

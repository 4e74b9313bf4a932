//! `watch` and `watch-latency`: many watchers on a few keys, then puts to those keys, and the
//! time from each put's start to each watcher receiving its event.
//!
//! Watcher `g` (numbered over all streams) watches key `g % keys`; put `i` writes key
//! `i % keys` with a value that starts with `i` (8 bytes, big-endian, so the receiver can find
//! the put's start time whatever order events and put responses arrive in). Each stream knows
//! how many events its watchers must receive; events that have not arrived after
//! [`EVENT_IDLE_TIMEOUT`] without any progress are counted as `MissingEvent` errors.

use std::cell::RefCell;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt as _;
use futures_util::stream::FuturesUnordered;
use ringkv_engine::pb::etcdserverpb::{WatchCreateRequest, WatchRequest, watch_request};
use tokio::time::Instant;

use super::{EtcdClient, make_key, status_kind};
use crate::hist::Recorder;

/// How long a stream waits for its next event before counting the rest as missing.
pub const EVENT_IDLE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone, Debug)]
pub struct WatchPlan {
    pub streams: u32,
    pub watchers_per_stream: u32,
    /// Distinct keys watched (and written).
    pub keys: u32,
    pub put_total: u64,
    /// Puts per second; 0 = one after another as fast as possible.
    pub put_rate: f64,
    pub prev_kv: bool,
    pub key_size: usize,
    pub val_size: usize,
}

impl WatchPlan {
    pub fn validate(&self) -> Result<(), String> {
        if self.streams == 0 || self.watchers_per_stream == 0 {
            return Err("--streams and the watchers per stream must be at least 1".to_owned());
        }
        if self.keys == 0 {
            return Err("--watched-key-total must be at least 1".to_owned());
        }
        if !self.put_rate.is_finite() || self.put_rate < 0.0 {
            return Err(format!("--put-rate must be ≥ 0, got {}", self.put_rate));
        }
        Ok(())
    }

    /// Puts that go to key `k`.
    pub fn puts_on_key(&self, k: u32) -> u64 {
        let keys = u64::from(self.keys);
        self.put_total / keys + u64::from(u64::from(k) < self.put_total % keys)
    }

    /// Events the watchers of stream `s` must receive.
    pub fn expected_on_stream(&self, s: u32) -> u64 {
        (0..self.watchers_per_stream)
            .map(|j| self.puts_on_key((s * self.watchers_per_stream + j) % self.keys))
            .sum()
    }

    pub fn expected_total(&self) -> u64 {
        (0..self.streams).map(|s| self.expected_on_stream(s)).sum()
    }

    fn key(&self, k: u32) -> Bytes {
        // A prefix of its own keeps these keys apart from the other workloads' keys.
        let mut v = b"__watch/".to_vec();
        v.extend_from_slice(&make_key(u64::from(k), self.key_size.saturating_sub(8)));
        Bytes::from(v)
    }
}

/// What a watch run measured.
#[derive(Debug)]
pub struct WatchOutcome {
    /// One latency per watcher: from sending the create request to the `created` response.
    pub create: Recorder,
    pub create_elapsed: Duration,
    /// This process's CPU during watcher creation.
    pub create_cpu: Duration,
    /// One latency per event received: from the put's (intended) start to the event's arrival;
    /// put failures and missing events are its errors.
    pub events: Recorder,
    pub events_elapsed: Duration,
}

/// Runs `plan` over `conns` (streams round-robin over the connections; puts on the first).
/// `on_events_start` is called when every watcher exists and the puts are about to begin (to
/// start CPU meters for the event phase).
pub async fn run_watch(
    plan: &WatchPlan,
    conns: &[EtcdClient],
    sample_start: Option<std::time::Instant>,
    on_events_start: impl FnOnce(),
) -> Result<WatchOutcome, String> {
    plan.validate()?;
    // Phase 1: open the streams and create every watcher.
    let create_start = Instant::now();
    let create_cpu0 = crate::cpu::self_cpu();
    let mut opened = FuturesUnordered::new();
    for s in 0..plan.streams {
        let mut client = conns[s as usize % conns.len()].clone();
        opened.push(async move {
            let create = |g: u32| WatchRequest {
                request_union: Some(watch_request::RequestUnion::CreateRequest(
                    WatchCreateRequest {
                        key: plan.key(g % plan.keys),
                        prev_kv: plan.prev_kv,
                        ..Default::default()
                    },
                )),
            };
            let first = s * plan.watchers_per_stream;
            // The first create request opens the stream (see `EtcdClient::watch`).
            let mut t = Instant::now();
            let (mut tx, mut rx) = client
                .watch(&create(first))
                .await
                .map_err(|e| format!("stream {s}: cannot open Watch: {e}"))?;
            let mut rec = Recorder::new(None);
            for g in first..first + plan.watchers_per_stream {
                if g != first {
                    t = Instant::now();
                    tx.send(&create(g))
                        .map_err(|e| format!("stream {s}: Watch stream: {e}"))?;
                }
                loop {
                    match rx.message().await {
                        Ok(Some(r)) if r.created => break,
                        Ok(Some(r)) if r.canceled => {
                            return Err(format!(
                                "stream {s}: watcher {g} canceled: {}",
                                r.cancel_reason
                            ));
                        }
                        Ok(Some(_)) => continue,
                        Ok(None) => return Err(format!("stream {s}: Watch stream ended")),
                        Err(e) => return Err(format!("stream {s}: {e}")),
                    }
                }
                let now = Instant::now();
                rec.record(now - t, now.into_std());
            }
            Ok::<_, String>((s, tx, rx, rec))
        });
    }
    let mut streams = Vec::new();
    let mut create = Recorder::new(None);
    while let Some(r) = opened.next().await {
        let (s, tx, rx, rec) = r?;
        create.merge(&rec);
        streams.push((s, tx, rx));
    }
    let create_elapsed = create_start.elapsed();
    let create_cpu = crate::cpu::self_cpu().saturating_sub(create_cpu0);

    // Phase 2: puts, and every stream receiving its events.
    let starts: RefCell<Vec<Option<Instant>>> = RefCell::new(vec![None; plan.put_total as usize]);
    let put_errors: RefCell<Recorder> = RefCell::new(Recorder::new(None));
    on_events_start();
    let start = Instant::now();
    let mut putter = conns[0].clone();
    let puts = async {
        for i in 0..plan.put_total {
            let at = if plan.put_rate > 0.0 {
                let at = start + Duration::from_secs_f64(i as f64 / plan.put_rate);
                tokio::time::sleep_until(at).await;
                at
            } else {
                Instant::now()
            };
            starts.borrow_mut()[i as usize] = Some(at);
            let mut v = i.to_be_bytes().to_vec();
            v.resize(plan.val_size.max(8), b'v');
            let key = plan.key((i % u64::from(plan.keys)) as u32);
            if let Err(e) = putter.put(key, Bytes::from(v)).await {
                put_errors
                    .borrow_mut()
                    .error(&format!("Put{}", status_kind(&e)));
            }
        }
    };
    let receivers: FuturesUnordered<_> = streams
        .into_iter()
        .map(|(s, tx, mut rx)| {
            let starts = &starts;
            async move {
                let mut rec = Recorder::new(sample_start);
                let want = plan.expected_on_stream(s);
                let mut got = 0u64;
                while got < want {
                    match tokio::time::timeout(EVENT_IDLE_TIMEOUT, rx.message()).await {
                        Ok(Ok(Some(resp))) => {
                            let now = Instant::now();
                            for ev in resp.events {
                                let Some(kv) = ev.kv else { continue };
                                let Some(idx) = kv.value.get(..8) else {
                                    continue;
                                };
                                let idx = u64::from_be_bytes(idx.try_into().expect("8 bytes"));
                                let started = starts.borrow().get(idx as usize).copied().flatten();
                                match started {
                                    Some(t) => rec.record(now - t, now.into_std()),
                                    None => rec.error("UnexpectedEvent"),
                                }
                                got += 1;
                            }
                        }
                        Ok(Ok(None)) => {
                            rec.error("StreamEnded");
                            break;
                        }
                        Ok(Err(e)) => {
                            rec.error(&status_kind(&e));
                            break;
                        }
                        Err(_) => break,
                    }
                }
                for _ in got.min(want)..want {
                    rec.error("MissingEvent");
                }
                drop(tx);
                rec
            }
        })
        .collect();
    let collect = receivers.fold(Recorder::new(sample_start), |mut all, rec| {
        all.merge(&rec);
        async move { all }
    });
    let ((), mut events) = tokio::join!(puts, collect);
    let events_elapsed = start.elapsed();
    events.merge(&put_errors.borrow());
    Ok(WatchOutcome {
        create,
        create_elapsed,
        create_cpu,
        events,
        events_elapsed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(streams: u32, wps: u32, keys: u32, puts: u64) -> WatchPlan {
        WatchPlan {
            streams,
            watchers_per_stream: wps,
            keys,
            put_total: puts,
            put_rate: 0.0,
            prev_kv: false,
            key_size: 32,
            val_size: 8,
        }
    }

    #[test]
    fn one_key_every_watcher_sees_every_put() {
        let p = plan(10, 10, 1, 1000);
        assert_eq!(p.expected_on_stream(3), 10 * 1000);
        assert_eq!(p.expected_total(), 100 * 1000);
    }

    #[test]
    fn keys_split_puts_and_watchers() {
        // 3 keys, 10 puts: keys 0,1,2 get 4,3,3 puts. 2 streams × 2 watchers: watchers 0..4
        // watch keys 0,1,2,0 → stream 0 expects 4+3, stream 1 expects 3+4.
        let p = plan(2, 2, 3, 10);
        assert_eq!(
            (p.puts_on_key(0), p.puts_on_key(1), p.puts_on_key(2)),
            (4, 3, 3)
        );
        assert_eq!(p.expected_on_stream(0), 7);
        assert_eq!(p.expected_on_stream(1), 7);
        assert_eq!(p.expected_total(), 14);
    }

    #[test]
    fn watch_keys_are_distinct_and_prefixed() {
        let p = plan(1, 1, 2, 1);
        assert_ne!(p.key(0), p.key(1));
        assert!(p.key(0).starts_with(b"__watch/"));
        assert_eq!(p.key(0).len(), 32);
    }

    #[test]
    fn validation() {
        assert!(plan(0, 1, 1, 1).validate().is_err());
        assert!(plan(1, 1, 0, 1).validate().is_err());
        assert!(plan(1, 1, 1, 0).validate().is_ok());
    }
}

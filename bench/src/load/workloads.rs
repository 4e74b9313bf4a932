//! The request workloads: `put`, `range`, `txn-put`, `mixed`, `lease-keepalive`.

use std::cell::Cell;
use std::time::Duration;

use bytes::Bytes;
use rand::Rng as _;
use rand::rngs::SmallRng;
use ringkv_engine::pb::etcdserverpb::{
    LeaseKeepAliveRequest, LeaseKeepAliveResponse, PutRequest, RangeRequest, RequestOp, TxnRequest,
    request_op,
};
use tonic::Status;

use super::client::{GrpcSender, GrpcStream};
use super::{EtcdClient, Workload};
use crate::cli::{Consistency, KeyArgs};

/// Key `n` of a key space, `size` bytes: `n` as a zigzag varint at the start, zeros after (the
/// layout etcd's benchmark uses, so both tools write the same keys). A key never gets shorter
/// than the varint.
pub fn make_key(n: u64, size: usize) -> Bytes {
    let mut v = Vec::with_capacity(size.max(10));
    // Zigzag of a non-negative i64 is 2n.
    let mut z = n << 1;
    loop {
        let b = (z & 0x7f) as u8;
        z >>= 7;
        if z == 0 {
            v.push(b);
            break;
        }
        v.push(b | 0x80);
    }
    if v.len() < size {
        v.resize(size, 0);
    }
    Bytes::from(v)
}

/// Which key an operation touches.
#[derive(Clone, Debug)]
pub struct KeyGen {
    pub size: usize,
    pub space: u64,
    pub sequential: bool,
}

impl KeyGen {
    pub fn new(a: &KeyArgs) -> Result<Self, String> {
        if a.key_space_size == 0 {
            return Err("--key-space-size must be at least 1".to_owned());
        }
        Ok(KeyGen {
            size: a.key_size,
            space: a.key_space_size,
            sequential: a.sequential_keys,
        })
    }

    /// The key number of operation `i`.
    pub fn index(&self, i: u64, rng: &mut SmallRng) -> u64 {
        if self.sequential {
            i % self.space
        } else {
            rng.random_range(0..self.space)
        }
    }

    pub fn key(&self, i: u64, rng: &mut SmallRng) -> Bytes {
        make_key(self.index(i, rng), self.size)
    }
}

/// The value every write uses: `size` bytes of a fixed printable pattern.
pub fn value(size: usize) -> Bytes {
    Bytes::from(
        (0..size)
            .map(|i| b'a' + (i % 26) as u8)
            .collect::<Vec<u8>>(),
    )
}

/// `put`: one Put per operation.
pub struct Put {
    pub keys: KeyGen,
    pub value: Bytes,
    /// Highest revision any put returned (for the compactor).
    pub last_rev: Cell<i64>,
}

impl Workload for Put {
    type State = ();

    async fn init(&self, _: &mut EtcdClient, _: u32) -> Result<(), String> {
        Ok(())
    }

    async fn op(
        &self,
        client: &mut EtcdClient,
        _: &mut (),
        i: u64,
        rng: &mut SmallRng,
    ) -> Result<(), Status> {
        let resp = client
            .put(self.keys.key(i, rng), self.value.clone())
            .await?;
        if let Some(h) = resp.header {
            self.last_rev.set(self.last_rev.get().max(h.revision));
        }
        Ok(())
    }
}

/// Compacts every `interval` to `last_rev - delta` until `running` turns false (`put
/// --compact-interval`). Failures are printed, not counted as put errors.
pub async fn run_compactor(
    mut client: EtcdClient,
    last_rev: &Cell<i64>,
    interval: Duration,
    delta: i64,
    running: &Cell<bool>,
) -> u64 {
    let mut compactions = 0;
    let mut compacted = 0i64;
    let tick = Duration::from_millis(50).min(interval);
    let mut next = tokio::time::Instant::now() + interval;
    while running.get() {
        tokio::time::sleep(tick).await;
        if tokio::time::Instant::now() < next {
            continue;
        }
        next += interval;
        let rev = last_rev.get() - delta;
        if rev <= compacted {
            continue;
        }
        match client.compact(rev).await {
            Ok(_) => {
                compacted = rev;
                compactions += 1;
            }
            Err(e) => eprintln!("compaction to revision {rev} failed: {e}"),
        }
    }
    compactions
}

/// `range`: one Range per operation, always the same request.
pub struct RangeLoad {
    pub req: RangeRequest,
}

impl RangeLoad {
    pub fn new(key: &str, end: Option<&str>, consistency: Consistency, limit: i64) -> Self {
        RangeLoad {
            req: RangeRequest {
                key: Bytes::copy_from_slice(key.as_bytes()),
                range_end: end
                    .map(|e| Bytes::copy_from_slice(e.as_bytes()))
                    .unwrap_or_default(),
                limit,
                serializable: consistency == Consistency::Serializable,
                ..Default::default()
            },
        }
    }
}

impl Workload for RangeLoad {
    type State = ();

    async fn init(&self, _: &mut EtcdClient, _: u32) -> Result<(), String> {
        Ok(())
    }

    async fn op(
        &self,
        client: &mut EtcdClient,
        _: &mut (),
        _: u64,
        _: &mut SmallRng,
    ) -> Result<(), Status> {
        client.range(&self.req).await.map(|_| ())
    }
}

/// `txn-put`: one Txn of `ops` puts on distinct keys per operation.
pub struct TxnPut {
    pub keys: KeyGen,
    pub value: Bytes,
    pub ops: u32,
}

impl TxnPut {
    pub fn new(keys: KeyGen, value: Bytes, ops: u32) -> Result<Self, String> {
        if ops == 0 {
            return Err("--txn-ops must be at least 1".to_owned());
        }
        if u64::from(ops) > keys.space {
            return Err(format!(
                "--txn-ops {ops} needs at least as many keys: raise --key-space-size (now {}); \
                 a transaction may not put the same key twice",
                keys.space
            ));
        }
        Ok(TxnPut { keys, value, ops })
    }
}

impl Workload for TxnPut {
    type State = ();

    async fn init(&self, _: &mut EtcdClient, _: u32) -> Result<(), String> {
        Ok(())
    }

    async fn op(
        &self,
        client: &mut EtcdClient,
        _: &mut (),
        i: u64,
        rng: &mut SmallRng,
    ) -> Result<(), Status> {
        let base = self.keys.index(i, rng);
        let success = (0..u64::from(self.ops))
            .map(|j| RequestOp {
                request: Some(request_op::Request::RequestPut(PutRequest {
                    key: make_key((base + j) % self.keys.space, self.keys.size),
                    value: self.value.clone(),
                    ..Default::default()
                })),
            })
            .collect();
        let req = TxnRequest {
            compare: Vec::new(),
            success,
            failure: Vec::new(),
        };
        client.txn(&req).await.map(|_| ())
    }
}

/// `mixed`: a Range of one key with probability `read_ratio`, else a Put of one key.
pub struct Mixed {
    pub keys: KeyGen,
    pub value: Bytes,
    pub read_ratio: f64,
    pub serializable: bool,
}

impl Workload for Mixed {
    type State = ();

    async fn init(&self, _: &mut EtcdClient, _: u32) -> Result<(), String> {
        Ok(())
    }

    async fn op(
        &self,
        client: &mut EtcdClient,
        _: &mut (),
        i: u64,
        rng: &mut SmallRng,
    ) -> Result<(), Status> {
        let key = self.keys.key(i, rng);
        if rng.random::<f64>() < self.read_ratio {
            let req = RangeRequest {
                key,
                serializable: self.serializable,
                ..Default::default()
            };
            client.range(&req).await.map(|_| ())
        } else {
            client.put(key, self.value.clone()).await.map(|_| ())
        }
    }
}

/// `lease-keepalive`: each client grants one lease and then does KeepAlive round trips on its
/// own stream; one round trip is one operation.
pub struct LeaseKeepalive;

/// A client's lease and its keep-alive stream.
pub struct KeepaliveState {
    lease: i64,
    tx: GrpcSender<LeaseKeepAliveRequest>,
    rx: GrpcStream<LeaseKeepAliveResponse>,
}

/// TTL of the benchmark's leases (long enough to outlive any run).
const LEASE_TTL_S: i64 = 600;

impl Workload for LeaseKeepalive {
    type State = KeepaliveState;

    async fn init(&self, client: &mut EtcdClient, c: u32) -> Result<KeepaliveState, String> {
        let g = client
            .lease_grant(LEASE_TTL_S)
            .await
            .map_err(|e| format!("client {c}: LeaseGrant failed: {e}"))?;
        let (tx, mut rx) = client
            .lease_keep_alive(&LeaseKeepAliveRequest { id: g.id })
            .await
            .map_err(|e| format!("client {c}: LeaseKeepAlive stream failed: {e}"))?;
        // The answer to the request that opened the stream.
        match rx.message().await {
            Ok(Some(r)) if r.ttl > 0 => {}
            other => return Err(format!("client {c}: first keep-alive failed: {other:?}")),
        }
        Ok(KeepaliveState {
            lease: g.id,
            tx,
            rx,
        })
    }

    async fn op(
        &self,
        _: &mut EtcdClient,
        s: &mut KeepaliveState,
        _: u64,
        _: &mut SmallRng,
    ) -> Result<(), Status> {
        s.tx.send(&LeaseKeepAliveRequest { id: s.lease })?;
        match s.rx.message().await? {
            Some(r) if r.ttl > 0 => Ok(()),
            Some(_) => Err(Status::not_found("lease expired")),
            None => Err(Status::unavailable("keep-alive stream ended")),
        }
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng as _;

    use super::*;

    #[test]
    fn keys_are_zigzag_varints_padded() {
        assert_eq!(&make_key(0, 4)[..], &[0, 0, 0, 0]);
        assert_eq!(&make_key(1, 4)[..], &[2, 0, 0, 0]);
        assert_eq!(&make_key(64, 4)[..], &[0x80, 0x01, 0, 0]);
        // Too small a size still yields the whole varint.
        assert_eq!(make_key(1 << 40, 1).len(), 6);
    }

    #[test]
    fn sequential_and_random_indices_stay_in_space() {
        let mut rng = SmallRng::seed_from_u64(1);
        let seq = KeyGen {
            size: 8,
            space: 3,
            sequential: true,
        };
        let got: Vec<u64> = (0..5).map(|i| seq.index(i, &mut rng)).collect();
        assert_eq!(got, [0, 1, 2, 0, 1]);
        let rnd = KeyGen {
            sequential: false,
            ..seq
        };
        assert!((0..1000).all(|i| rnd.index(i, &mut rng) < 3));
    }

    #[test]
    fn txn_needs_enough_keys() {
        let keys = KeyGen {
            size: 8,
            space: 2,
            sequential: false,
        };
        let e = TxnPut::new(keys.clone(), value(8), 3).err().unwrap();
        assert!(e.contains("--key-space-size"), "{e}");
        assert!(TxnPut::new(keys.clone(), value(8), 0).is_err());
        assert!(TxnPut::new(keys, value(8), 2).is_ok());
    }

    #[test]
    fn value_has_the_size() {
        assert_eq!(value(0).len(), 0);
        assert_eq!(&value(3)[..], b"abc");
    }

    #[test]
    fn range_request_consistency() {
        let r = RangeLoad::new("a", Some("b"), Consistency::Serializable, 5);
        assert!(r.req.serializable);
        assert_eq!(&r.req.range_end[..], b"b");
        assert_eq!(r.req.limit, 5);
        let l = RangeLoad::new("a", None, Consistency::Linearizable, 0);
        assert!(!l.req.serializable);
        assert!(l.req.range_end.is_empty());
    }
}

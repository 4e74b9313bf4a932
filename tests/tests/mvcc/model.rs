//! Model-based randomized test: the store against a deliberately simple model of etcd's
//! semantics (spec §4.1–§4.7, §4.9) that keeps a full copy of the key space for every
//! revision. Every response must match; every few hundred ops the store is committed and
//! reopened from its backend (index rebuild, lease restore) and must go on matching.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::Value;

use ringkv_engine::pb::etcdserverpb::{
    self as pb, compare::CompareResult, compare::CompareTarget, compare::TargetUnion,
    range_request::SortOrder, range_request::SortTarget, request_op::Request,
    response_op::Response,
};
use ringkv_engine::pb::mvccpb::KeyValue;
use ringkv_engine::{BatchWrite, Lessor, MemStorage, MvccStore};
use ringkv_tests::{Op, OpGen, apply_to_store, error_json, message_json};

type State = BTreeMap<Bytes, KeyValue>;

#[derive(Debug)]
enum Fail {
    Compacted,
    Future,
    KeyNotFound,
    LeaseNotFound,
    LeaseExists,
}

impl Fail {
    fn json(&self) -> Value {
        let (m, c) = match self {
            Fail::Compacted => ("etcdserver: mvcc: required revision has been compacted", 11),
            Fail::Future => (
                "etcdserver: mvcc: required revision is a future revision",
                11,
            ),
            Fail::KeyNotFound => ("etcdserver: key not found", 3),
            Fail::LeaseNotFound => ("etcdserver: requested lease not found", 5),
            Fail::LeaseExists => ("etcdserver: lease already exists", 9),
        };
        error_json(m, c)
    }
}

/// The model: the full state after every revision (index = revision; 0 unused).
struct Model {
    history: Vec<State>,
    compact: i64,
    leases: BTreeMap<i64, i64>,
}

fn in_range(k: &[u8], key: &[u8], end: &[u8]) -> bool {
    match end {
        [] => k == key,
        [0] => k >= key,
        e => k >= key && k < e,
    }
}

fn hdr(rev: i64) -> Option<pb::ResponseHeader> {
    Some(pb::ResponseHeader {
        revision: rev,
        ..Default::default()
    })
}

/// A write in progress on a working copy.
struct Work {
    begin: i64,
    state: State,
    changed: bool,
}

impl Work {
    fn read_rev(&self) -> i64 {
        self.begin + i64::from(self.changed)
    }
}

impl Model {
    fn new() -> Self {
        Model {
            history: vec![State::new(), State::new()],
            compact: -1,
            leases: BTreeMap::new(),
        }
    }

    fn rev(&self) -> i64 {
        self.history.len() as i64 - 1
    }

    fn cur(&self) -> &State {
        self.history.last().expect("history")
    }

    fn range_in(
        &self,
        st: &State,
        r: &pb::RangeRequest,
        hrev: i64,
    ) -> Result<pb::RangeResponse, Fail> {
        let state = if r.revision > 0 {
            if r.revision > hrev {
                return Err(Fail::Future);
            }
            if r.revision < self.compact {
                return Err(Fail::Compacted);
            }
            if r.revision <= self.rev() {
                &self.history[r.revision as usize]
            } else {
                st
            }
        } else {
            st
        };
        let mut kvs: Vec<KeyValue> = state
            .iter()
            .filter(|(k, _)| in_range(k, &r.key, &r.range_end))
            .map(|(_, kv)| kv.clone())
            .collect();
        let count = kvs.len() as i64;
        if r.count_only {
            kvs.clear();
        }
        // etcd quirk: without an explicit sort order or filters, only `limit + 1` kvs (in key
        // order) are fetched before the implied ascending sort by a non-key target.
        let filtered = r.min_mod_revision != 0
            || r.max_mod_revision != 0
            || r.min_create_revision != 0
            || r.max_create_revision != 0;
        if r.sort_order == SortOrder::None as i32 && !filtered && r.limit > 0 {
            kvs.truncate(r.limit as usize + 1);
        }
        kvs.retain(|kv| {
            (r.max_mod_revision == 0 || kv.mod_revision <= r.max_mod_revision)
                && (r.min_mod_revision == 0 || kv.mod_revision >= r.min_mod_revision)
                && (r.max_create_revision == 0 || kv.create_revision <= r.max_create_revision)
                && (r.min_create_revision == 0 || kv.create_revision >= r.min_create_revision)
        });
        let target = SortTarget::try_from(r.sort_target).unwrap();
        let mut order = SortOrder::try_from(r.sort_order).unwrap();
        if order == SortOrder::None && target != SortTarget::Key {
            order = SortOrder::Ascend;
        }
        let key_of = |kv: &KeyValue| -> (Vec<u8>, i64) {
            match target {
                SortTarget::Key => (kv.key.to_vec(), 0),
                SortTarget::Version => (vec![], kv.version),
                SortTarget::Create => (vec![], kv.create_revision),
                SortTarget::Mod => (vec![], kv.mod_revision),
                SortTarget::Value => (kv.value.to_vec(), 0),
            }
        };
        match order {
            SortOrder::Ascend => kvs.sort_by_key(key_of),
            SortOrder::Descend => kvs.sort_by_key(|kv| std::cmp::Reverse(key_of(kv))),
            SortOrder::None => {}
        }
        let mut more = false;
        if r.limit > 0 && kvs.len() > r.limit as usize {
            kvs.truncate(r.limit as usize);
            more = true;
        }
        if r.keys_only {
            kvs.iter_mut().for_each(|kv| kv.value = Bytes::new());
        }
        Ok(pb::RangeResponse {
            header: hdr(hrev),
            kvs,
            more,
            count,
        })
    }

    fn check_put(&self, p: &pb::PutRequest) -> Result<(), Fail> {
        if (p.ignore_value || p.ignore_lease) && !self.cur().contains_key(&p.key) {
            return Err(Fail::KeyNotFound);
        }
        if p.lease != 0 && !self.leases.contains_key(&p.lease) {
            return Err(Fail::LeaseNotFound);
        }
        Ok(())
    }

    fn put_in(&self, w: &mut Work, p: &pb::PutRequest) -> Result<pb::PutResponse, Fail> {
        let prev = w.state.get(&p.key).cloned();
        if (p.ignore_value || p.ignore_lease) && prev.is_none() {
            return Err(Fail::KeyNotFound);
        }
        let rev = w.begin + 1;
        let kv = KeyValue {
            key: p.key.clone(),
            create_revision: prev.as_ref().map_or(rev, |kv| kv.create_revision),
            mod_revision: rev,
            version: prev.as_ref().map_or(0, |kv| kv.version) + 1,
            value: match (&prev, p.ignore_value) {
                (Some(kv), true) => kv.value.clone(),
                _ => p.value.clone(),
            },
            lease: match (&prev, p.ignore_lease) {
                (Some(kv), true) => kv.lease,
                _ => p.lease,
            },
        };
        w.state.insert(p.key.clone(), kv);
        w.changed = true;
        Ok(pb::PutResponse {
            header: hdr(rev),
            prev_kv: if p.prev_kv { prev } else { None },
        })
    }

    fn delete_in(&self, w: &mut Work, d: &pb::DeleteRangeRequest) -> pb::DeleteRangeResponse {
        let gone: Vec<Bytes> = w
            .state
            .keys()
            .filter(|k| in_range(k, &d.key, &d.range_end))
            .cloned()
            .collect();
        let prev_kvs = if d.prev_kv {
            gone.iter().map(|k| w.state[k].clone()).collect()
        } else {
            vec![]
        };
        for k in &gone {
            w.state.remove(k);
        }
        if !gone.is_empty() {
            w.changed = true;
        }
        pb::DeleteRangeResponse {
            header: hdr(if w.changed { w.begin + 1 } else { w.begin }),
            deleted: gone.len() as i64,
            prev_kvs,
        }
    }

    fn compare(&self, c: &pb::Compare) -> bool {
        let kvs: Vec<&KeyValue> = self
            .cur()
            .iter()
            .filter(|(k, _)| in_range(k, &c.key, &c.range_end))
            .map(|(_, v)| v)
            .collect();
        let target = CompareTarget::try_from(c.target).unwrap();
        let zero = KeyValue::default();
        let list: Vec<&KeyValue> = if kvs.is_empty() {
            if target == CompareTarget::Value {
                return false;
            }
            vec![&zero]
        } else {
            kvs
        };
        list.into_iter().all(|kv| {
            let ord = match (target, &c.target_union) {
                (CompareTarget::Value, Some(TargetUnion::Value(v))) => {
                    kv.value.as_ref().cmp(v.as_ref())
                }
                (CompareTarget::Value, _) => kv.value.as_ref().cmp(&[][..]),
                (CompareTarget::Version, Some(TargetUnion::Version(x))) => kv.version.cmp(x),
                (CompareTarget::Create, Some(TargetUnion::CreateRevision(x))) => {
                    kv.create_revision.cmp(x)
                }
                (CompareTarget::Mod, Some(TargetUnion::ModRevision(x))) => kv.mod_revision.cmp(x),
                (CompareTarget::Lease, Some(TargetUnion::Lease(x))) => kv.lease.cmp(x),
                (CompareTarget::Version, _) => kv.version.cmp(&0),
                (CompareTarget::Create, _) => kv.create_revision.cmp(&0),
                (CompareTarget::Mod, _) => kv.mod_revision.cmp(&0),
                (CompareTarget::Lease, _) => kv.lease.cmp(&0),
            };
            match CompareResult::try_from(c.result).unwrap() {
                CompareResult::Equal => ord.is_eq(),
                CompareResult::NotEqual => ord.is_ne(),
                CompareResult::Greater => ord.is_gt(),
                CompareResult::Less => ord.is_lt(),
            }
        })
    }

    fn branch<'a>(&self, t: &'a pb::TxnRequest) -> (bool, &'a [pb::RequestOp]) {
        let ok = t.compare.iter().all(|c| self.compare(c));
        (ok, if ok { &t.success } else { &t.failure })
    }

    /// Visits the chosen ops (nested chosen branches included, decided on the pre-state).
    fn visit_chosen<'a>(&self, t: &'a pb::TxnRequest, f: &mut dyn FnMut(&'a Request)) {
        let (_, ops) = self.branch(t);
        for op in ops {
            match &op.request {
                Some(Request::RequestTxn(n)) => self.visit_chosen(n, f),
                Some(r) => f(r),
                None => {}
            }
        }
    }

    fn txn_in(&self, w: &mut Work, t: &pb::TxnRequest) -> pb::TxnResponse {
        let (ok, ops) = self.branch(t);
        let mut responses = vec![];
        for op in ops {
            let r = match op.request.as_ref().unwrap() {
                Request::RequestRange(r) => {
                    let mut st = w.state.clone();
                    if r.revision > 0 && r.revision <= self.rev() {
                        st = self.history[r.revision as usize].clone();
                    }
                    Response::ResponseRange(self.range_in(&st, r, w.read_rev()).unwrap())
                }
                Request::RequestPut(p) => Response::ResponsePut(self.put_in(w, p).unwrap()),
                Request::RequestDeleteRange(d) => {
                    Response::ResponseDeleteRange(self.delete_in(w, d))
                }
                Request::RequestTxn(n) => Response::ResponseTxn(self.txn_in(w, n)),
            };
            responses.push(pb::ResponseOp { response: Some(r) });
        }
        pb::TxnResponse {
            header: Some(pb::ResponseHeader::default()),
            succeeded: ok,
            responses,
        }
    }

    fn begin(&self) -> Work {
        Work {
            begin: self.rev(),
            state: self.cur().clone(),
            changed: false,
        }
    }

    fn end(&mut self, w: Work) -> i64 {
        if w.changed {
            self.history.push(w.state);
        }
        self.rev()
    }

    fn top(&self, h: &mut Option<pb::ResponseHeader>, rev: i64) {
        *h = Some(pb::ResponseHeader {
            cluster_id: 1,
            member_id: 2,
            revision: rev,
            raft_term: 3,
        });
    }

    fn apply(&mut self, op: &Op) -> Value {
        match self.apply_inner(op) {
            Ok(v) => v,
            Err(f) => f.json(),
        }
    }

    fn apply_inner(&mut self, op: &Op) -> Result<Value, Fail> {
        Ok(match op {
            Op::Range(r) => {
                let mut resp = self.range_in(self.cur(), r, self.rev())?;
                self.top(&mut resp.header, self.rev());
                message_json("etcdserverpb.RangeResponse", &resp)
            }
            Op::Put(p) => {
                if p.lease != 0 && !self.leases.contains_key(&p.lease) {
                    return Err(Fail::LeaseNotFound);
                }
                let mut w = self.begin();
                let mut resp = self.put_in(&mut w, p)?;
                let rev = self.end(w);
                self.top(&mut resp.header, rev);
                message_json("etcdserverpb.PutResponse", &resp)
            }
            Op::Delete(d) => {
                let mut w = self.begin();
                let mut resp = self.delete_in(&mut w, d);
                let rev = self.end(w);
                self.top(&mut resp.header, rev);
                message_json("etcdserverpb.DeleteRangeResponse", &resp)
            }
            Op::Txn(t) => {
                let mut puts = vec![];
                let mut ranges = vec![];
                self.visit_chosen(t, &mut |r| match r {
                    Request::RequestPut(p) => puts.push(p),
                    Request::RequestRange(g) => ranges.push(g),
                    _ => {}
                });
                let writes = {
                    fn w(ops: &[pb::RequestOp]) -> bool {
                        ops.iter().any(|o| match &o.request {
                            Some(Request::RequestPut(_)) | Some(Request::RequestDeleteRange(_)) => {
                                true
                            }
                            Some(Request::RequestTxn(t)) => w(&t.success) || w(&t.failure),
                            _ => false,
                        })
                    }
                    w(&t.success) || w(&t.failure)
                };
                if writes {
                    for p in puts {
                        self.check_put(p)?;
                    }
                }
                for g in ranges {
                    if g.revision > self.rev() {
                        return Err(Fail::Future);
                    }
                    if g.revision > 0 && g.revision < self.compact {
                        return Err(Fail::Compacted);
                    }
                }
                let mut w = self.begin();
                let mut resp = self.txn_in(&mut w, t);
                let rev = self.end(w);
                self.top(&mut resp.header, rev);
                message_json("etcdserverpb.TxnResponse", &resp)
            }
            Op::Compact(c) => {
                if c.revision <= self.compact {
                    return Err(Fail::Compacted);
                }
                if c.revision > self.rev() {
                    return Err(Fail::Future);
                }
                self.compact = c.revision;
                let mut resp = pb::CompactionResponse::default();
                self.top(&mut resp.header, self.rev());
                message_json("etcdserverpb.CompactionResponse", &resp)
            }
            Op::LeaseGrant(g) => {
                if self.leases.contains_key(&g.id) {
                    return Err(Fail::LeaseExists);
                }
                self.leases.insert(g.id, g.ttl.max(2));
                let mut resp = pb::LeaseGrantResponse {
                    id: g.id,
                    ttl: g.ttl.max(2),
                    ..Default::default()
                };
                self.top(&mut resp.header, self.rev());
                message_json("etcdserverpb.LeaseGrantResponse", &resp)
            }
            Op::LeaseRevoke(r) => {
                if self.leases.remove(&r.id).is_none() {
                    return Err(Fail::LeaseNotFound);
                }
                let mut w = self.begin();
                let doomed: Vec<Bytes> = w
                    .state
                    .iter()
                    .filter(|(_, kv)| kv.lease == r.id)
                    .map(|(k, _)| k.clone())
                    .collect();
                for k in doomed {
                    w.state.remove(&k);
                    w.changed = true;
                }
                let rev = self.end(w);
                let mut resp = pb::LeaseRevokeResponse::default();
                self.top(&mut resp.header, rev);
                message_json("etcdserverpb.LeaseRevokeResponse", &resp)
            }
            Op::LeaseTimeToLive(t) => {
                let mut resp = match self.leases.get(&t.id) {
                    None => pb::LeaseTimeToLiveResponse {
                        id: t.id,
                        ttl: -1,
                        ..Default::default()
                    },
                    Some(&ttl) => pb::LeaseTimeToLiveResponse {
                        id: t.id,
                        ttl,
                        granted_ttl: ttl,
                        keys: self
                            .cur()
                            .values()
                            .filter(|kv| kv.lease == t.id)
                            .map(|kv| kv.key.clone())
                            .collect::<BTreeSet<_>>()
                            .into_iter()
                            .collect(),
                        ..Default::default()
                    },
                };
                self.top(&mut resp.header, self.rev());
                message_json("etcdserverpb.LeaseTimeToLiveResponse", &resp)
            }
            Op::LeaseKeepAlive(k) => {
                let mut resp = pb::LeaseKeepAliveResponse {
                    id: k.id,
                    ttl: self.leases.get(&k.id).copied().unwrap_or(0),
                    ..Default::default()
                };
                self.top(&mut resp.header, self.rev());
                serde_json::json!({
                    "result": message_json("etcdserverpb.LeaseKeepAliveResponse", &resp)
                })
            }
            Op::LeaseLeases(_) => {
                // Frozen clock: every expiry is equal; ties are listed by ID.
                let mut resp = pb::LeaseLeasesResponse {
                    leases: self
                        .leases
                        .keys()
                        .map(|&id| pb::LeaseStatus { id })
                        .collect(),
                    ..Default::default()
                };
                self.top(&mut resp.header, self.rev());
                message_json("etcdserverpb.LeaseLeasesResponse", &resp)
            }
        })
    }
}

/// Runs `ops` random operations against the store and the model. `reopen(None)` opens a fresh
/// store; `reopen(Some(store))` commits, closes and reopens it from its backend.
pub(crate) fn run_model<B: BatchWrite>(
    seed: u64,
    ops: usize,
    mut reopen: impl FnMut(Option<MvccStore<B>>) -> MvccStore<B>,
) {
    let now = Instant::now();
    let prepare = |mut s: MvccStore<B>| {
        s.set_header_ids(ringkv_engine::HeaderIds {
            cluster_id: 1,
            member_id: 2,
            raft_term: 3,
        });
        // Frozen clock: TimeToLive reports the full TTL, like the model.
        s.lease_promote(now, Duration::ZERO);
        s
    };
    let mut store = prepare(reopen(None));
    let mut model = Model::new();
    let mut generator = OpGen::new(seed);
    for i in 0..ops {
        let op = generator.next_op();
        let got = apply_to_store(&mut store, &op, now);
        let want = model.apply(&op);
        assert_eq!(
            got, want,
            "op #{i} (seed {seed}) differs from the model: {op:?}"
        );
        generator.rev = store.current_revision();
        generator.compact = store.compact_revision();
        if i % 400 == 399 {
            store = prepare(reopen(Some(store)));
        } else if i % 50 == 0 {
            store.finish_compaction().expect("compaction");
        }
    }
}

#[test]
fn store_matches_model() {
    for seed in 1..=4 {
        run_model(seed, 1500, |old: Option<MvccStore<MemStorage>>| {
            let backend = match old {
                None => MemStorage::new(),
                Some(mut s) => {
                    s.commit().expect("commit");
                    let mut b = s.backend().clone();
                    b.crash();
                    b
                }
            };
            MvccStore::open(backend, Lessor::default()).expect("open")
        });
    }
}

//! TEST FIXTURE ONLY — never what the `ringkv` binary runs (it lives under `net/tests/` and is
//! compiled only into test and bench targets). A small in-memory stand-in for the raft-backed node, so the front end's
//! tests can drive real gRPC and HTTP clients against a real listener. It keeps only the
//! current key space plus an event history; it has no persistence, consensus or historical
//! reads, and its semantics are just deep enough for the front-end tests.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use bytes::Bytes;
use tokio::sync::broadcast;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::BroadcastStream;

use ringkv_net::pb::etcdserverpb::*;
use ringkv_net::pb::mvccpb::{Event, KeyValue, event::EventType};
use ringkv_net::{
    BoxStream, Caller, EtcdError, EtcdNode, NodeMetrics, NodeResult, NodeState, WatchSpec,
    WatchUpdate, Watcher,
};

/// Revisions of event history kept for watch replay.
const HISTORY: usize = 10_000;

/// Fixture member ID (etcd's ID for peer http://127.0.0.1:23800, token etcd-cluster).
pub const MEMBER_ID: u64 = 0x2e1259d415f2a040;
/// Fixture cluster ID.
pub const CLUSTER_ID: u64 = 0x48276a8f75b6a87;

/// Fixture snapshot contents: 71 680 deterministic bytes (a multiple of 512, as etcdctl expects
/// of a backend file before its trailing SHA-256).
pub fn snapshot_bytes() -> Vec<u8> {
    (0..71_680u32).map(|i| (i % 251) as u8).collect()
}

struct Store {
    rev: i64,
    compact_rev: i64,
    kvs: BTreeMap<Bytes, KeyValue>,
    history: Vec<(i64, Vec<Event>)>,
    leases: BTreeMap<i64, (i64, Vec<Bytes>)>,
    next_lease: i64,
    alarms: Vec<AlarmMember>,
}

/// The in-memory fixture node.
pub struct MemNode {
    store: Mutex<Store>,
    events: broadcast::Sender<(i64, Vec<Event>)>,
    /// Leader ID reported by `state()`; tests set 0 to simulate leader loss.
    pub leader: AtomicU64,
}

impl Default for MemNode {
    fn default() -> Self {
        MemNode {
            store: Mutex::new(Store {
                rev: 1,
                compact_rev: 0,
                kvs: BTreeMap::new(),
                history: Vec::new(),
                leases: BTreeMap::new(),
                next_lease: 0x2040a1fcec899555,
                alarms: Vec::new(),
            }),
            events: broadcast::channel(1024).0,
            leader: AtomicU64::new(MEMBER_ID),
        }
    }
}

fn in_range(key: &[u8], start: &[u8], end: &[u8]) -> bool {
    if end.is_empty() {
        return key == start;
    }
    if end == b"\0" {
        return key >= start;
    }
    key >= start && key < end
}

fn header(rev: i64) -> Option<ResponseHeader> {
    Some(ResponseHeader {
        revision: rev,
        raft_term: 2,
        ..Default::default()
    })
}

impl Store {
    fn select(&self, key: &[u8], end: &[u8]) -> Vec<KeyValue> {
        use std::ops::Bound::{Excluded, Included, Unbounded};
        if end.is_empty() {
            return self.kvs.get(key).cloned().into_iter().collect();
        }
        let from_key = end == b"\0";
        if !from_key && key >= end {
            return Vec::new();
        }
        let upper = if from_key {
            Unbounded
        } else {
            Excluded(Bytes::copy_from_slice(end))
        };
        let range = (Included(Bytes::copy_from_slice(key)), upper);
        self.kvs.range(range).map(|(_, kv)| kv.clone()).collect()
    }

    fn range(&self, r: &RangeRequest) -> Result<RangeResponse, EtcdError> {
        if r.revision > self.rev {
            return Err(EtcdError::FutureRev);
        }
        if r.revision > 0 && r.revision < self.compact_rev {
            return Err(EtcdError::Compacted);
        }
        let mut kvs = self.select(&r.key, &r.range_end);
        let count = kvs.len() as i64;
        kvs.retain(|kv| r.max_create_revision == 0 || kv.create_revision <= r.max_create_revision);
        if r.sort_target == range_request::SortTarget::Create as i32 {
            kvs.sort_by_key(|kv| kv.create_revision);
        }
        if r.sort_order == range_request::SortOrder::Descend as i32 {
            kvs.reverse();
        }
        let more = r.limit > 0 && kvs.len() as i64 > r.limit;
        if r.limit > 0 {
            kvs.truncate(r.limit as usize);
        }
        if r.keys_only {
            kvs.iter_mut().for_each(|kv| kv.value = Bytes::new());
        }
        if r.count_only {
            kvs.clear();
        }
        Ok(RangeResponse {
            header: header(self.rev),
            kvs,
            more,
            count,
        })
    }

    fn put(
        &mut self,
        p: &PutRequest,
        rev: i64,
        events: &mut Vec<Event>,
    ) -> Result<PutResponse, EtcdError> {
        if p.lease != 0 && !self.leases.contains_key(&p.lease) {
            return Err(EtcdError::LeaseNotFound);
        }
        let prev = self.kvs.get(&p.key).cloned();
        if (p.ignore_value || p.ignore_lease) && prev.is_none() {
            return Err(EtcdError::KeyNotFound);
        }
        let kv = KeyValue {
            key: p.key.clone(),
            create_revision: prev.as_ref().map_or(rev, |k| k.create_revision),
            mod_revision: rev,
            version: prev.as_ref().map_or(1, |k| k.version + 1),
            value: if p.ignore_value {
                prev.as_ref().map(|k| k.value.clone()).unwrap_or_default()
            } else {
                p.value.clone()
            },
            lease: if p.ignore_lease {
                prev.as_ref().map_or(0, |k| k.lease)
            } else {
                p.lease
            },
        };
        if kv.lease != 0 {
            self.leases
                .get_mut(&kv.lease)
                .expect("checked")
                .1
                .push(kv.key.clone());
        }
        self.kvs.insert(kv.key.clone(), kv.clone());
        events.push(Event {
            r#type: EventType::Put as i32,
            kv: Some(kv),
            prev_kv: None,
        });
        Ok(PutResponse {
            header: header(rev),
            prev_kv: if p.prev_kv { prev } else { None },
        })
    }

    fn delete(
        &mut self,
        d: &DeleteRangeRequest,
        rev: i64,
        events: &mut Vec<Event>,
    ) -> DeleteRangeResponse {
        let gone = self.select(&d.key, &d.range_end);
        for kv in &gone {
            self.kvs.remove(&kv.key);
            let tomb = KeyValue {
                key: kv.key.clone(),
                mod_revision: rev,
                ..Default::default()
            };
            events.push(Event {
                r#type: EventType::Delete as i32,
                kv: Some(tomb),
                prev_kv: None,
            });
        }
        DeleteRangeResponse {
            header: header(rev),
            deleted: gone.len() as i64,
            prev_kvs: if d.prev_kv { gone } else { vec![] },
        }
    }

    fn compare(&self, c: &Compare) -> bool {
        let kvs = self.select(&c.key, &c.range_end);
        let target = c.target;
        if kvs.is_empty() {
            if target == compare::CompareTarget::Value as i32 {
                return false;
            }
            return self.compare_one(c, &KeyValue::default());
        }
        kvs.iter().all(|kv| self.compare_one(c, kv))
    }

    fn compare_one(&self, c: &Compare, kv: &KeyValue) -> bool {
        use compare::{CompareResult as R, CompareTarget as T, TargetUnion as U};
        let ord = match (T::try_from(c.target), &c.target_union) {
            (Ok(T::Version), Some(U::Version(v))) => kv.version.cmp(v),
            (Ok(T::Create), Some(U::CreateRevision(v))) => kv.create_revision.cmp(v),
            (Ok(T::Mod), Some(U::ModRevision(v))) => kv.mod_revision.cmp(v),
            (Ok(T::Lease), Some(U::Lease(v))) => kv.lease.cmp(v),
            (Ok(T::Value), Some(U::Value(v))) => kv.value.as_ref().cmp(v.as_ref()),
            _ => kv.version.cmp(&0),
        };
        match R::try_from(c.result) {
            Ok(R::Equal) => ord.is_eq(),
            Ok(R::Greater) => ord.is_gt(),
            Ok(R::Less) => ord.is_lt(),
            Ok(R::NotEqual) => ord.is_ne(),
            Err(_) => false,
        }
    }

    fn txn(
        &mut self,
        t: &TxnRequest,
        rev: i64,
        events: &mut Vec<Event>,
    ) -> Result<TxnResponse, EtcdError> {
        let ok = t.compare.iter().all(|c| self.compare(c));
        let ops = if ok { &t.success } else { &t.failure };
        let mut responses = Vec::new();
        for op in ops {
            let response = match &op.request {
                Some(request_op::Request::RequestRange(r)) => {
                    response_op::Response::ResponseRange(self.range(r)?)
                }
                Some(request_op::Request::RequestPut(p)) => {
                    response_op::Response::ResponsePut(self.put(p, rev, events)?)
                }
                Some(request_op::Request::RequestDeleteRange(d)) => {
                    response_op::Response::ResponseDeleteRange(self.delete(d, rev, events))
                }
                Some(request_op::Request::RequestTxn(t)) => {
                    response_op::Response::ResponseTxn(self.txn(t, rev, events)?)
                }
                None => return Err(EtcdError::KeyNotFound),
            };
            responses.push(ResponseOp {
                response: Some(response),
            });
        }
        Ok(TxnResponse {
            header: header(rev),
            succeeded: ok,
            responses,
        })
    }
}

impl MemNode {
    /// Runs a write: `f` gets the next revision; the revision is bumped (and events published)
    /// only if `f` produced events. A failed write leaves the store as it was (with `rollback`
    /// the store is copied first, for writes that may fail after changing it: txns).
    fn write<T>(
        &self,
        rollback: bool,
        f: impl FnOnce(&mut Store, i64, &mut Vec<Event>) -> Result<T, EtcdError>,
    ) -> Result<(T, i64), EtcdError> {
        let mut s = self.store.lock().unwrap();
        if s.alarms
            .iter()
            .any(|a| a.alarm == AlarmType::Nospace as i32)
        {
            return Err(EtcdError::NoSpace);
        }
        let saved = rollback.then(|| (s.kvs.clone(), s.leases.clone()));
        let next = s.rev + 1;
        let mut events = Vec::new();
        match f(&mut s, next, &mut events) {
            Ok(v) => {
                if events.is_empty() {
                    let rev = s.rev;
                    return Ok((v, rev));
                }
                s.rev = next;
                s.history.push((next, events.clone()));
                if s.history.len() > HISTORY {
                    let excess = s.history.len() - HISTORY;
                    s.history.drain(..excess);
                }
                let _ = self.events.send((next, events));
                Ok((v, next))
            }
            Err(e) => {
                if let Some(saved) = saved {
                    (s.kvs, s.leases) = saved;
                }
                Err(e)
            }
        }
    }

    fn rev(&self) -> i64 {
        self.store.lock().unwrap().rev
    }
}

fn set_rev(h: &mut Option<ResponseHeader>, rev: i64) {
    *h = header(rev);
}

impl EtcdNode for MemNode {
    fn state(&self) -> NodeState {
        let s = self.store.lock().unwrap();
        NodeState {
            member_id: MEMBER_ID,
            cluster_id: CLUSTER_ID,
            leader: self.leader.load(Relaxed),
            raft_term: 2,
            revision: s.rev,
            alarms: s.alarms.clone(),
            is_learner: false,
        }
    }

    fn metrics(&self) -> NodeMetrics {
        let rev = self.rev();
        NodeMetrics {
            proposals_committed: rev as u64,
            proposals_applied: rev as u64,
            db_total_size: 70_000,
            ..Default::default()
        }
    }

    async fn range(&self, _: &Caller, req: RangeRequest) -> NodeResult<RangeResponse> {
        self.store.lock().unwrap().range(&req)
    }

    async fn put(&self, _: &Caller, req: PutRequest) -> NodeResult<PutResponse> {
        let (mut resp, rev) = self.write(false, |s, rev, ev| s.put(&req, rev, ev))?;
        set_rev(&mut resp.header, rev);
        Ok(resp)
    }

    async fn delete_range(
        &self,
        _: &Caller,
        req: DeleteRangeRequest,
    ) -> NodeResult<DeleteRangeResponse> {
        let (mut resp, rev) = self.write(false, |s, rev, ev| Ok(s.delete(&req, rev, ev)))?;
        set_rev(&mut resp.header, rev);
        Ok(resp)
    }

    async fn txn(&self, _: &Caller, req: TxnRequest) -> NodeResult<TxnResponse> {
        let (mut resp, rev) = self.write(true, |s, rev, ev| s.txn(&req, rev, ev))?;
        set_rev(&mut resp.header, rev);
        Ok(resp)
    }

    async fn compact(&self, _: &Caller, req: CompactionRequest) -> NodeResult<CompactionResponse> {
        let mut s = self.store.lock().unwrap();
        if req.revision <= s.compact_rev {
            return Err(EtcdError::Compacted);
        }
        if req.revision > s.rev {
            return Err(EtcdError::FutureRev);
        }
        s.compact_rev = req.revision;
        let keep = req.revision;
        s.history.retain(|(r, _)| *r >= keep);
        Ok(CompactionResponse {
            header: header(s.rev),
        })
    }

    async fn watch(&self, _: &Caller, spec: WatchSpec) -> NodeResult<Watcher> {
        let s = self.store.lock().unwrap();
        let live = BroadcastStream::new(self.events.subscribe());
        let rev = s.rev;
        if spec.start_revision > 0 && spec.start_revision < s.compact_rev {
            let compact_revision = s.compact_rev;
            let updates = tokio_stream::iter([WatchUpdate::Compacted { compact_revision }]);
            return Ok(Watcher {
                revision: rev,
                updates: Box::pin(updates),
            });
        }
        let replay: Vec<(i64, Vec<Event>)> = if spec.start_revision > 0 {
            s.history
                .iter()
                .filter(|(r, _)| *r >= spec.start_revision)
                .cloned()
                .collect()
        } else {
            Vec::new()
        };
        drop(s);
        let spec2 = spec.clone();
        let keep = move |(r, events): (i64, Vec<Event>)| {
            let events: Vec<Event> = events
                .into_iter()
                .filter(|e| {
                    let kv = e.kv.as_ref().expect("fixture events carry kvs");
                    let put = e.r#type == EventType::Put as i32;
                    in_range(&kv.key, &spec2.key, &spec2.range_end)
                        && !(put && spec2.no_put)
                        && (put || !spec2.no_delete)
                })
                .collect();
            (!events.is_empty()).then_some(WatchUpdate::Events {
                revision: r,
                events,
            })
        };
        let keep2 = keep.clone();
        let replayed_to = replay.last().map_or(rev, |(r, _)| *r).max(rev);
        let updates = tokio_stream::iter(replay).filter_map(keep).chain(
            live.filter_map(move |item| item.ok().filter(|(r, _)| *r > replayed_to))
                .filter_map(keep2),
        );
        Ok(Watcher {
            revision: rev,
            updates: Box::pin(updates),
        })
    }

    async fn lease_grant(
        &self,
        _: &Caller,
        req: LeaseGrantRequest,
    ) -> NodeResult<LeaseGrantResponse> {
        let mut s = self.store.lock().unwrap();
        if s.alarms
            .iter()
            .any(|a| a.alarm == AlarmType::Nospace as i32)
        {
            return Err(EtcdError::NoSpace);
        }
        let id = if req.id == 0 {
            s.next_lease += 1;
            s.next_lease
        } else {
            req.id
        };
        if s.leases.contains_key(&id) {
            return Err(EtcdError::LeaseExist);
        }
        let ttl = req.ttl.max(2);
        s.leases.insert(id, (ttl, Vec::new()));
        Ok(LeaseGrantResponse {
            header: header(s.rev),
            id,
            ttl,
            error: String::new(),
        })
    }

    async fn lease_revoke(&self, _: &Caller, id: i64) -> NodeResult<LeaseRevokeResponse> {
        let keys = {
            let s = self.store.lock().unwrap();
            s.leases
                .get(&id)
                .map(|l| l.1.clone())
                .ok_or(EtcdError::LeaseNotFound)?
        };
        let (_, rev) = self.write(false, |s, rev, ev| {
            s.leases.remove(&id);
            for k in keys {
                if s.kvs.get(&k).is_some_and(|kv| kv.lease == id) {
                    s.delete(
                        &DeleteRangeRequest {
                            key: k,
                            ..Default::default()
                        },
                        rev,
                        ev,
                    );
                }
            }
            Ok(())
        })?;
        Ok(LeaseRevokeResponse {
            header: header(rev),
        })
    }

    async fn lease_keep_alive(&self, _: &Caller, id: i64) -> NodeResult<LeaseKeepAliveResponse> {
        let s = self.store.lock().unwrap();
        let ttl = s.leases.get(&id).map_or(0, |l| l.0);
        Ok(LeaseKeepAliveResponse {
            header: header(s.rev),
            id,
            ttl,
        })
    }

    async fn lease_time_to_live(
        &self,
        _: &Caller,
        req: LeaseTimeToLiveRequest,
    ) -> NodeResult<LeaseTimeToLiveResponse> {
        let s = self.store.lock().unwrap();
        let Some((ttl, keys)) = s.leases.get(&req.id) else {
            return Ok(LeaseTimeToLiveResponse {
                header: header(s.rev),
                id: req.id,
                ttl: -1,
                ..Default::default()
            });
        };
        Ok(LeaseTimeToLiveResponse {
            header: header(s.rev),
            id: req.id,
            ttl: *ttl,
            granted_ttl: *ttl,
            keys: if req.keys { keys.clone() } else { vec![] },
        })
    }

    async fn lease_leases(&self, _: &Caller) -> NodeResult<LeaseLeasesResponse> {
        let s = self.store.lock().unwrap();
        let leases = s.leases.keys().map(|id| LeaseStatus { id: *id }).collect();
        Ok(LeaseLeasesResponse {
            header: header(s.rev),
            leases,
        })
    }

    async fn member_add(&self, _: &Caller, _: MemberAddRequest) -> NodeResult<MemberAddResponse> {
        Err(EtcdError::UnhealthyCluster)
    }

    async fn member_remove(&self, _: &Caller, id: u64) -> NodeResult<MemberRemoveResponse> {
        let _ = id;
        Err(EtcdError::MemberNotFound)
    }

    async fn member_update(
        &self,
        _: &Caller,
        _: MemberUpdateRequest,
    ) -> NodeResult<MemberUpdateResponse> {
        Err(EtcdError::MemberNotFound)
    }

    async fn member_list(&self, _: &Caller) -> NodeResult<MemberListResponse> {
        let member = Member {
            id: MEMBER_ID,
            name: "default".into(),
            peer_ur_ls: vec!["http://127.0.0.1:23800".into()],
            client_ur_ls: vec!["http://127.0.0.1:23790".into()],
            is_learner: false,
        };
        Ok(MemberListResponse {
            header: header(self.rev()),
            members: vec![member],
        })
    }

    async fn member_promote(&self, _: &Caller, _: u64) -> NodeResult<MemberPromoteResponse> {
        Err(EtcdError::MemberNotLearner)
    }

    async fn alarm(&self, _: &Caller, req: AlarmRequest) -> NodeResult<AlarmResponse> {
        let mut s = self.store.lock().unwrap();
        let member = AlarmMember {
            member_id: if req.member_id == 0 {
                MEMBER_ID
            } else {
                req.member_id
            },
            alarm: req.alarm,
        };
        match alarm_request::AlarmAction::try_from(req.action) {
            Ok(alarm_request::AlarmAction::Activate) => {
                if !s.alarms.contains(&member) {
                    s.alarms.push(member);
                }
                Ok(AlarmResponse {
                    header: None,
                    alarms: vec![member],
                })
            }
            Ok(alarm_request::AlarmAction::Deactivate) => {
                let had = s.alarms.contains(&member);
                s.alarms.retain(|a| *a != member);
                Ok(AlarmResponse {
                    header: None,
                    alarms: if had { vec![member] } else { vec![] },
                })
            }
            _ => Ok(AlarmResponse {
                header: None,
                alarms: s.alarms.clone(),
            }),
        }
    }

    async fn status(&self, _: &Caller) -> NodeResult<StatusResponse> {
        let rev = self.rev();
        Ok(StatusResponse {
            header: header(rev),
            db_size: 70_000,
            db_size_in_use: 40_000,
            leader: self.leader.load(Relaxed),
            raft_index: rev as u64 + 3,
            raft_term: 2,
            raft_applied_index: rev as u64 + 3,
            ..Default::default()
        })
    }

    async fn defragment(&self, _: &Caller) -> NodeResult<()> {
        Ok(())
    }

    async fn hash(&self, _: &Caller) -> NodeResult<HashResponse> {
        let data = snapshot_bytes();
        Ok(HashResponse {
            header: header(self.rev()),
            hash: crc32c::crc32c(&data),
        })
    }

    async fn hash_kv(&self, _: &Caller, revision: i64) -> NodeResult<HashKvResponse> {
        let s = self.store.lock().unwrap();
        if revision > s.rev {
            return Err(EtcdError::FutureRev);
        }
        if revision != 0 && revision <= s.compact_rev {
            return Err(EtcdError::Compacted);
        }
        let mut digest = 0u32;
        for kv in s.kvs.values() {
            digest = crc32c::crc32c_append(digest, &kv.key);
            digest = crc32c::crc32c_append(digest, &kv.value);
        }
        Ok(HashKvResponse {
            header: header(s.rev),
            hash: digest,
            compact_revision: s.compact_rev,
        })
    }

    async fn snapshot(&self, _: &Caller) -> NodeResult<(u64, BoxStream<NodeResult<Bytes>>)> {
        let data = snapshot_bytes();
        let len = data.len() as u64;
        let chunks: Vec<NodeResult<Bytes>> = data
            .chunks(10_000)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        Ok((len, Box::pin(tokio_stream::iter(chunks))))
    }

    async fn move_leader(&self, _: &Caller, target: u64) -> NodeResult<MoveLeaderResponse> {
        if target != MEMBER_ID {
            return Err(EtcdError::BadLeaderTransferee);
        }
        Ok(MoveLeaderResponse {
            header: header(self.rev()),
        })
    }

    async fn auth_status(&self, _: &Caller) -> NodeResult<AuthStatusResponse> {
        Ok(AuthStatusResponse {
            header: header(self.rev()),
            enabled: false,
            auth_revision: 1,
        })
    }
}

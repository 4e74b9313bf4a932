//! The member list, as etcd keeps it: in the backend's `members` and `members_removed`
//! buckets, changed only by applied raft entries (conf changes, and the attribute request a
//! member proposes to publish its name and client URLs), so every member holds the same list
//! and a restart reads it back with the data it goes with.
//!
//! Backend layout (etcd's): `members`: key = member ID in lower-case hex without padding,
//! value = JSON `{"id":…,"peerURLs":[…],"name":"…","clientURLs":[…],"isLearner":bool}`
//! (`isLearner` only when true); `members_removed`: key = the ID in hex, value `removed`.
//!
//! The conf change context (in the WAL, inside `ConfChangeV2.context`) is the same member JSON
//! plus `"requestID"`, the proposer's waiter.
//!
//! Invariants:
//! 1. The list changes under the store's write lock with the consistent index of the entry
//!    that changed it, so backend commits carry list and index together (apply.rs invariant 1).
//! 2. raft-rs's configuration at startup is derived from this list (voters = members that are
//!    not learners), which is the configuration after the last applied entry: entries above it
//!    are replayed and change both again.

use std::collections::{BTreeMap, BTreeSet};

use ringkv_engine::pb::etcdserverpb::Member;
use ringkv_engine::{BatchWrite, Bucket, KvRead, StorageError};
use serde_json::{Value, json};

/// One member's record.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub(crate) struct MemberInfo {
    pub id: u64,
    /// Empty until the member started and published it.
    pub name: String,
    pub peer_urls: Vec<String>,
    pub client_urls: Vec<String>,
    pub is_learner: bool,
}

impl MemberInfo {
    pub(crate) fn to_json(&self) -> Value {
        let mut v = json!({
            "id": self.id,
            "peerURLs": self.peer_urls,
            "name": self.name,
            "clientURLs": self.client_urls,
        });
        if self.is_learner {
            v["isLearner"] = json!(true);
        }
        v
    }

    pub(crate) fn from_json(v: &Value) -> Option<MemberInfo> {
        let strings = |k: &str| -> Vec<String> {
            v.get(k)
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|s| s.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default()
        };
        Some(MemberInfo {
            id: v.get("id")?.as_u64()?,
            name: v
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            peer_urls: strings("peerURLs"),
            client_urls: strings("clientURLs"),
            is_learner: v.get("isLearner").and_then(Value::as_bool).unwrap_or(false),
        })
    }

    pub(crate) fn to_pb(&self) -> Member {
        Member {
            id: self.id,
            name: self.name.clone(),
            peer_ur_ls: self.peer_urls.clone(),
            client_ur_ls: self.client_urls.clone(),
            is_learner: self.is_learner,
        }
    }
}

/// Encodes a conf change context: the member and the proposer's request ID.
pub(crate) fn encode_context(m: &MemberInfo, request_id: u64) -> Vec<u8> {
    let mut v = m.to_json();
    v["requestID"] = json!(request_id);
    v.to_string().into_bytes()
}

/// Decodes a conf change context; `None` for an empty or foreign one.
pub(crate) fn decode_context(b: &[u8]) -> Option<(MemberInfo, u64)> {
    let v: Value = serde_json::from_slice(b).ok()?;
    let m = MemberInfo::from_json(&v)?;
    let id = v.get("requestID").and_then(Value::as_u64).unwrap_or(0);
    Some((m, id))
}

fn key(id: u64) -> Vec<u8> {
    format!("{id:x}").into_bytes()
}

/// The member list and the removed IDs.
#[derive(Clone, Debug, Default)]
pub(crate) struct Membership {
    pub members: BTreeMap<u64, MemberInfo>,
    pub removed: BTreeSet<u64>,
}

impl Membership {
    /// The member `id`, or etcd's "member not found".
    pub(crate) fn member(&self, id: u64) -> Result<MemberInfo, crate::errors::EtcdError> {
        self.members
            .get(&id)
            .cloned()
            .ok_or(crate::errors::EtcdError::MemberNotFound)
    }

    /// Reads both buckets. A record that is not member JSON is corruption, named by key.
    pub(crate) fn load(r: &impl KvRead) -> Result<Membership, String> {
        let mut m = Membership::default();
        let mut bad = None;
        r.scan(
            Bucket::Members,
            b"",
            b"",
            &mut |k, v| match serde_json::from_slice::<Value>(v)
                .ok()
                .and_then(|v| MemberInfo::from_json(&v))
            {
                Some(info) => {
                    m.members.insert(info.id, info);
                    true
                }
                None => {
                    bad = Some(String::from_utf8_lossy(k).into_owned());
                    false
                }
            },
        )
        .map_err(|e| format!("cannot read the members bucket: {e}"))?;
        if let Some(k) = bad {
            return Err(format!(
                "members bucket: the record of key {k:?} is not a member (corrupt backend)"
            ));
        }
        r.scan(Bucket::MembersRemoved, b"", b"", &mut |k, _| {
            if let Some(id) = std::str::from_utf8(k)
                .ok()
                .and_then(|s| u64::from_str_radix(s, 16).ok())
            {
                m.removed.insert(id);
            }
            true
        })
        .map_err(|e| format!("cannot read the members_removed bucket: {e}"))?;
        Ok(m)
    }

    /// Writes `m`'s record (insert or replace).
    pub(crate) fn put(
        &mut self,
        w: &mut impl BatchWrite,
        m: MemberInfo,
    ) -> Result<(), StorageError> {
        w.put(
            Bucket::Members,
            &key(m.id),
            m.to_json().to_string().as_bytes(),
        )?;
        self.members.insert(m.id, m);
        Ok(())
    }

    /// Removes member `id` for good.
    pub(crate) fn remove(&mut self, w: &mut impl BatchWrite, id: u64) -> Result<(), StorageError> {
        w.delete(Bucket::Members, &key(id))?;
        w.put(Bucket::MembersRemoved, &key(id), b"removed")?;
        self.members.remove(&id);
        self.removed.insert(id);
        Ok(())
    }

    /// raft's configuration: (voters, learners), leaving out `except`.
    pub(crate) fn conf(&self, except: Option<u64>) -> (Vec<u64>, Vec<u64>) {
        let mut voters = Vec::new();
        let mut learners = Vec::new();
        for m in self.members.values() {
            if Some(m.id) == except {
                continue;
            }
            if m.is_learner {
                learners.push(m.id);
            } else {
                voters.push(m.id);
            }
        }
        (voters, learners)
    }

    /// The member whose peer URLs include one of `urls`, other than `except`.
    pub(crate) fn url_owner(&self, urls: &[String], except: u64) -> Option<u64> {
        self.members
            .values()
            .find(|m| m.id != except && m.peer_urls.iter().any(|u| urls.contains(u)))
            .map(|m| m.id)
    }

    pub(crate) fn to_pb(&self) -> Vec<Member> {
        self.members.values().map(MemberInfo::to_pb).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_json_and_context_round_trip() {
        let m = MemberInfo {
            id: 0x8e9e05c52164694d,
            name: "infra1".into(),
            peer_urls: vec!["http://127.0.0.1:2380".into()],
            client_urls: vec!["http://127.0.0.1:2379".into()],
            is_learner: true,
        };
        assert_eq!(MemberInfo::from_json(&m.to_json()), Some(m.clone()));
        let ctx = encode_context(&m, 77);
        assert_eq!(decode_context(&ctx), Some((m.clone(), 77)));
        assert_eq!(decode_context(b""), None);
        let voter = MemberInfo {
            is_learner: false,
            ..m
        };
        assert!(voter.to_json().get("isLearner").is_none());
    }
}

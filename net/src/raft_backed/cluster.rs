//! The cluster side of the node: bootstrap of the member list, the peer transport's life,
//! membership RPCs (spec §4.10) and applying membership changes.
//!
//! Membership changes travel as raft `ConfChangeV2` entries with a single change, whose
//! context is the member JSON (membership.rs). MemberUpdate has no raft change type of its
//! own: it re-adds the member in its current role (a no-op for raft-rs) with the new peer URLs
//! in the context, so a learner stays a learner (etcd 3.4 turned it into a voter).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ringkv_engine::pb::etcdserverpb::{
    ClusterMemberAttrSetRequest, InternalRaftRequest, Member, MemberAddRequest, MemberAddResponse,
    MemberAttributes, MemberPromoteResponse, MemberRemoveResponse, MemberUpdateRequest,
    MemberUpdateResponse, MoveLeaderResponse,
};
use ringkv_engine::{
    ConfChangeSingle, ConfChangeType, ConfChangeV2, MvccError, MvccStore, PeerProgress, RaftNode,
};
use tokio::sync::oneshot;

use super::apply::{Applied, Applier, MvccErrorOr};
use super::membership::{MemberInfo, Membership, decode_context, encode_context};
use super::shared_writer::NodeBackend;
use super::{Inner, NodeOptions, OpenError, RaftBackedNode, await_waiter, reject_waiter};
use crate::config::member_id;
use crate::errors::EtcdError;
use crate::node::NodeResult;
use crate::peer::SnapshotFiles;

/// Key in the `cluster` bucket of this member's IDs (format.md, "Membership buckets").
pub(super) const IDS_KEY: &[u8] = b"ringkv_ids";
pub(super) const IDS_MEMBER_OFFSET: usize = 0;
pub(super) const IDS_CLUSTER_OFFSET: usize = IDS_MEMBER_OFFSET + size_of::<u64>();
pub(super) const IDS_LEN: usize = IDS_CLUSTER_OFFSET + size_of::<u64>();

// Format: { member_id u64 | cluster_id u64 }
pub(super) fn encode_ids(member_id: u64, cluster_id: u64) -> [u8; IDS_LEN] {
    let mut b = [0u8; IDS_LEN];
    b[IDS_MEMBER_OFFSET..IDS_CLUSTER_OFFSET].copy_from_slice(&member_id.to_le_bytes());
    b[IDS_CLUSTER_OFFSET..].copy_from_slice(&cluster_id.to_le_bytes());
    b
}

/// The IDs this data directory was created with, if recorded. Wrong length is corruption.
pub(super) fn stored_ids(store: &MvccStore<NodeBackend>) -> Result<Option<(u64, u64)>, OpenError> {
    use ringkv_engine::KvRead;
    let v = store
        .backend()
        .get(ringkv_engine::Bucket::Cluster, IDS_KEY)
        .map_err(|e| OpenError(format!("cannot read the member IDs: {e}")))?;
    match v {
        None => Ok(None),
        Some(b) if b.len() == IDS_LEN => Ok(Some((
            u64::from_le_bytes(
                b[IDS_MEMBER_OFFSET..IDS_CLUSTER_OFFSET]
                    .try_into()
                    .expect("8"),
            ),
            u64::from_le_bytes(b[IDS_CLUSTER_OFFSET..].try_into().expect("8")),
        ))),
        Some(b) => Err(OpenError(format!(
            "backend: cluster bucket key {:?} holds {} bytes, not {IDS_LEN} (corrupt backend)",
            String::from_utf8_lossy(IDS_KEY),
            b.len()
        ))),
    }
}

/// etcd's `readyPercent`: a learner may be promoted once its log matches 90% of the leader's.
const LEARNER_READY_PERCENT: f64 = 0.9;
/// etcd's `maxLearners`.
const MAX_LEARNERS: usize = 1;

/// Fills an empty member list from `--initial-cluster` (etcd bootstraps the same list) and
/// commits it. A member joining an existing cluster leaves itself out: its own addition
/// arrives through the log.
pub(super) fn seed_members(
    opts: &NodeOptions,
    membership: &mut Membership,
    store: &mut MvccStore<NodeBackend>,
) -> Result<(), OpenError> {
    let mut records = Vec::new();
    if let Some(json) = &opts.cluster.existing_members {
        let list: Vec<serde_json::Value> = serde_json::from_slice(json)
            .map_err(|e| OpenError(format!("the cluster's member list is not JSON: {e}")))?;
        records.extend(
            list.iter()
                .filter_map(MemberInfo::from_json)
                .filter(|m| m.id != opts.member_id),
        );
    } else if opts.cluster.initial_members.is_empty() {
        records.push(own_record(opts));
    }
    let initial = match opts.cluster.existing_members {
        Some(_) => &[][..],
        None => &opts.cluster.initial_members[..],
    };
    for m in initial {
        if m.id == opts.member_id {
            if !opts.cluster.join_existing {
                records.push(own_record(opts));
            }
            continue;
        }
        records.push(MemberInfo {
            id: m.id,
            name: m.name.clone(),
            peer_urls: m.peer_urls.clone(),
            client_urls: Vec::new(),
            is_learner: false,
        });
    }
    let err = |e: ringkv_engine::StorageError| {
        OpenError(format!("cannot write the initial member list: {e}"))
    };
    for r in records {
        membership.put(store.backend_mut(), r).map_err(err)?;
    }
    ringkv_engine::BatchWrite::put(
        store.backend_mut(),
        ringkv_engine::Bucket::Cluster,
        IDS_KEY,
        &encode_ids(opts.member_id, opts.cluster_id),
    )
    .map_err(err)?;
    let ci = store.consistent_index();
    store.backend_mut().commit_all(ci).map_err(err)
}

/// `--force-new-cluster` (etcd's): this member restarts as the only voter of its cluster,
/// keeping its data, cluster ID and member ID. Like etcd, it keeps the log up to the WAL's
/// commit index (and what the backend applied), drops the entries after it (never known to be
/// committed), and removes every other member for good (they are refused as removed, and stop,
/// should they come back). The changed member list is committed to the backend before raft
/// starts; a learner becomes a voter.
///
/// Refused when a committed entry not yet applied is a membership change: applying it after
/// the new configuration would bring a removed member back. Starting the member once without
/// the flag applies it.
pub(super) fn force_new_cluster(
    opts: &NodeOptions,
    membership: &mut Membership,
    store: &mut MvccStore<NodeBackend>,
    cfg: &mut ringkv_engine::NodeConfig,
) -> Result<(), OpenError> {
    let applied = store.consistent_index();
    let commit = cfg.hard_state.commit.max(applied);
    let before = cfg.entries.len();
    cfg.entries.retain(|e| e.index <= commit);
    if let Some(e) = cfg.entries.iter().find(|e| {
        e.index > applied
            && matches!(
                e.get_entry_type(),
                ringkv_engine::RaftEntryType::EntryConfChange
                    | ringkv_engine::RaftEntryType::EntryConfChangeV2
            )
    }) {
        return Err(OpenError(format!(
            "--force-new-cluster: the committed entry {} is a membership change not applied yet              (applied up to {applied}); start the member once without the flag, then retry",
            e.index
        )));
    }
    cfg.hard_state.commit = commit;
    let mut own = membership
        .members
        .get(&opts.member_id)
        .cloned()
        .ok_or_else(|| {
            OpenError(format!(
                "--force-new-cluster: member {:x} is not in its own member list",
                opts.member_id
            ))
        })?;
    let err = |e: ringkv_engine::StorageError| {
        OpenError(format!(
            "--force-new-cluster: cannot write the member list: {e}"
        ))
    };
    let others: Vec<u64> = membership
        .members
        .keys()
        .copied()
        .filter(|id| *id != opts.member_id)
        .collect();
    for id in &others {
        membership.remove(store.backend_mut(), *id).map_err(err)?;
    }
    if own.is_learner {
        own.is_learner = false;
        membership.put(store.backend_mut(), own).map_err(err)?;
    }
    store.backend_mut().commit_all(applied).map_err(err)?;
    tracing::warn!(
        "--force-new-cluster: member {:x} now forms cluster {:x} alone; removed members {:x?}; \
         dropped {} log entries after the commit index {commit}",
        opts.member_id,
        opts.cluster_id,
        others,
        before - cfg.entries.len()
    );
    Ok(())
}

fn own_record(opts: &NodeOptions) -> MemberInfo {
    MemberInfo {
        id: opts.member_id,
        name: opts.name.clone(),
        peer_urls: opts.peer_urls.clone(),
        client_urls: opts.client_urls.clone(),
        is_learner: false,
    }
}

/// Points the transport at every other member and starts the peer listeners. A member alone
/// whose peer port is taken goes on without it (it has nobody to hear from yet).
pub(super) fn start_peers(inner: &Arc<Inner>, raft: RaftNode) -> Result<(), OpenError> {
    inner.peers.set_raft(raft);
    let weak = Arc::downgrade(inner);
    inner.peers.set_member_list(Box::new(move || {
        let list: Vec<serde_json::Value> = weak
            .upgrade()
            .map(|i| {
                i.members
                    .read()
                    .members
                    .values()
                    .map(MemberInfo::to_json)
                    .collect()
            })
            .unwrap_or_default();
        serde_json::Value::Array(list).to_string().into_bytes()
    }));
    let source = Arc::downgrade(inner);
    let target = Arc::downgrade(inner);
    inner.peers.set_snapshot_files(SnapshotFiles {
        copy_backend: Box::new(move || {
            let inner = source
                .upgrade()
                .ok_or_else(|| std::io::Error::other("the node is closed"))?;
            inner
                .copy_backend_at()
                .map_err(|e| std::io::Error::other(e.to_string()))
        }),
        received_path: Box::new(move |index| {
            target
                .upgrade()
                .map(|inner| inner.snap_dir.db_path(index))
                .ok_or_else(|| std::io::Error::other("the node is closed"))
        }),
        vfs: inner.vfs.clone(),
    });
    let members = inner.members.read().clone();
    for id in &members.removed {
        inner.peers.remove_peer(*id);
    }
    for m in members.members.values() {
        inner.peers.set_peer(m.id, m.peer_urls.clone());
    }
    let alone = members.members.len() <= 1 && !inner.opts.cluster.join_existing;
    for addr in &inner.opts.cluster.peer_listen {
        match inner.peers.listen(*addr) {
            Ok(bound) => tracing::info!("serving peers on {bound}"),
            Err(e) if alone => {
                tracing::warn!("cannot listen for peers on {addr}: {e}; a single member goes on")
            }
            Err(e) => {
                return Err(OpenError(format!("cannot listen for peers on {addr}: {e}")));
            }
        }
    }
    Ok(())
}

fn single_change(kind: ConfChangeType, id: u64, context: Vec<u8>) -> ConfChangeV2 {
    let mut s = ConfChangeSingle::default();
    s.set_change_type(kind);
    s.node_id = id;
    let mut cc = ConfChangeV2::default();
    cc.mut_changes().push(s);
    cc.context = context.into();
    cc
}

fn quorum(n: usize) -> usize {
    n / 2 + 1
}

impl RaftBackedNode {
    /// Whether this member was removed from the cluster (it should stop).
    pub fn removed(&self) -> bool {
        self.inner.self_removed.load(Ordering::Acquire) || self.inner.peers.self_removed()
    }

    /// Proposes a conf change and waits until it applied here; returns the member list then.
    async fn propose_member_change(
        &self,
        kind: ConfChangeType,
        member: MemberInfo,
    ) -> NodeResult<Vec<Member>> {
        let inner = &*self.inner;
        inner.check_failed()?;
        let (mut guard, rx) = inner.register_waiter(None);
        let id = guard.id;
        inner.raft().propose_conf_change(
            single_change(kind, member.id, encode_context(&member, id)),
            Some(reject_waiter(inner, id)),
        );
        let applied = await_waiter(&mut guard, rx).await?;
        match applied {
            Applied::Members(list) => Ok(list),
            _ => Err(EtcdError::Internal(
                "ringkv: unexpected apply result for a member change".into(),
            )),
        }
    }

    /// The leader's replication progress; empty on a follower.
    async fn peer_progress(&self) -> Vec<PeerProgress> {
        let (tx, rx) = oneshot::channel();
        self.inner.raft().peer_progress(Box::new(move |p| {
            let _ = tx.send(p);
        }));
        rx.await.unwrap_or_default()
    }

    /// etcd 3.5's strict reconfiguration check (`--strict-reconfig-check`, on by default) for a
    /// change after which the voters are `voters_after`, `extra_started` of them started but
    /// not yet voters (a learner being promoted): the started voters must form a quorum of
    /// them. As etcd, growing a one-member cluster to two is allowed (restoring a cluster from
    /// one member's data).
    fn check_started_quorum(&self, voters_after: usize, extra_started: usize) -> NodeResult<()> {
        if !self.inner.opts.cluster.strict_reconfig {
            return Ok(());
        }
        let members = self.inner.members.read();
        let started = extra_started
            + members
                .members
                .values()
                .filter(|m| !m.is_learner && !m.name.is_empty())
                .count();
        if started == 1 && voters_after == 2 {
            return Ok(());
        }
        if started < quorum(voters_after) {
            return Err(EtcdError::MemberNotEnoughStarted);
        }
        Ok(())
    }

    /// etcd 3.5's strict check before any MemberAdd: this member must have heard from every
    /// other voter lately ("unhealthy cluster" otherwise). Only the leader tracks that (raft's
    /// `recent_active`, reset every election timeout): a follower hands MemberAdd and
    /// MemberRemove to the leader (`forward.rs`), and skips the check only when it has no
    /// leader to ask.
    async fn check_voters_connected(&self) -> NodeResult<()> {
        if !self.inner.opts.cluster.strict_reconfig {
            return Ok(());
        }
        let progress = self.peer_progress().await;
        let me = self.inner.ids.member_id;
        if progress
            .iter()
            .any(|p| !p.is_learner && p.id != me && !p.recent_active)
        {
            return Err(EtcdError::UnhealthyCluster);
        }
        Ok(())
    }

    pub(super) async fn add_member(&self, req: MemberAddRequest) -> NodeResult<MemberAddResponse> {
        let urls = req.peer_ur_ls.clone();
        if urls.is_empty() || urls.iter().any(|u| !valid_peer_url(u)) {
            return Err(EtcdError::MemberBadUrls);
        }
        // The checks below read this member's applied membership; etcd validates at apply, in
        // log order. Catching up with the commit index first makes a change another member
        // already answered visible here (a learner removed there no longer counts).
        self.linearize().await?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let member = MemberInfo {
            id: member_id(&urls, "", Some(now)),
            name: String::new(),
            peer_urls: urls.clone(),
            client_urls: Vec::new(),
            is_learner: req.is_learner,
        };
        {
            let members = self.inner.members.read();
            if members.url_owner(&urls, 0).is_some() {
                return Err(EtcdError::PeerUrlExist);
            }
            if members.members.contains_key(&member.id) || members.removed.contains(&member.id) {
                return Err(EtcdError::MemberExist);
            }
            let learners = members.members.values().filter(|m| m.is_learner).count();
            if req.is_learner && learners >= MAX_LEARNERS {
                return Err(EtcdError::TooManyLearners);
            }
        }
        if !req.is_learner {
            let voters = self.inner.members.read().conf(None).0.len();
            self.check_started_quorum(voters + 1, 0)?;
        }
        self.check_voters_connected().await?;
        let kind = if req.is_learner {
            ConfChangeType::AddLearnerNode
        } else {
            ConfChangeType::AddNode
        };
        let members = self.propose_member_change(kind, member.clone()).await?;
        Ok(MemberAddResponse {
            header: self.inner.header(),
            member: Some(member.to_pb()),
            members,
        })
    }

    pub(super) async fn remove_member(&self, id: u64) -> NodeResult<MemberRemoveResponse> {
        // As in `add_member`: the checks read the applied membership.
        self.linearize().await?;
        let member = self.inner.members.read().member(id)?;
        if !member.is_learner && self.inner.opts.cluster.strict_reconfig {
            // etcd 3.5's strict check: the started voters left must form a quorum of the new
            // configuration ...
            let voters_after = self.inner.members.read().conf(Some(id)).0.len();
            let started_after = self
                .inner
                .members
                .read()
                .members
                .values()
                .filter(|m| m.id != id && !m.is_learner && !m.name.is_empty())
                .count();
            if started_after < quorum(voters_after) {
                return Err(EtcdError::MemberNotEnoughStarted);
            }
            // ... and so must the voters left that the leader hears from (a member that is
            // down is removed freely: it is no part of the active quorum).
            let progress = self.peer_progress().await;
            if !progress.is_empty() {
                let voters_after: Vec<&PeerProgress> = progress
                    .iter()
                    .filter(|p| !p.is_learner && p.id != id)
                    .collect();
                let active = voters_after.iter().filter(|p| p.recent_active).count();
                if active < quorum(voters_after.len()) {
                    return Err(EtcdError::UnhealthyCluster);
                }
            }
        }
        let members = self
            .propose_member_change(ConfChangeType::RemoveNode, member)
            .await?;
        Ok(MemberRemoveResponse {
            header: self.inner.header(),
            members,
        })
    }

    pub(super) async fn update_member(
        &self,
        req: MemberUpdateRequest,
    ) -> NodeResult<MemberUpdateResponse> {
        if req.peer_ur_ls.is_empty() || req.peer_ur_ls.iter().any(|u| !valid_peer_url(u)) {
            return Err(EtcdError::MemberBadUrls);
        }
        let mut member = {
            let members = self.inner.members.read();
            let m = members.member(req.id)?;
            if members.url_owner(&req.peer_ur_ls, req.id).is_some() {
                return Err(EtcdError::PeerUrlExist);
            }
            m
        };
        member.peer_urls = req.peer_ur_ls;
        let kind = if member.is_learner {
            ConfChangeType::AddLearnerNode
        } else {
            ConfChangeType::AddNode
        };
        let members = self.propose_member_change(kind, member).await?;
        Ok(MemberUpdateResponse {
            header: self.inner.header(),
            members,
        })
    }

    pub(super) async fn promote_member(&self, id: u64) -> NodeResult<MemberPromoteResponse> {
        let mut member = self.inner.members.read().member(id)?;
        if !member.is_learner {
            return Err(EtcdError::MemberNotLearner);
        }
        let progress = self.peer_progress().await;
        if progress.is_empty() {
            // Only the leader knows how far the learner got (etcd forwards the request to it).
            return Err(EtcdError::LearnerNotReady);
        }
        let leader_match = progress
            .iter()
            .find(|p| p.id == self.inner.ids.member_id)
            .map_or(0, |p| p.matched);
        let learner_match = progress
            .iter()
            .find(|p| p.id == id)
            .map_or(0, |p| p.matched);
        if (learner_match as f64) < leader_match as f64 * LEARNER_READY_PERCENT {
            return Err(EtcdError::LearnerNotReady);
        }
        let voters = self.inner.members.read().conf(None).0.len();
        // The learner counts as started (etcd's IsReadyToPromoteMember): it has caught up.
        self.check_started_quorum(voters + 1, 1)?;
        member.is_learner = false;
        let members = self
            .propose_member_change(ConfChangeType::AddNode, member)
            .await?;
        Ok(MemberPromoteResponse {
            header: self.inner.header(),
            members,
        })
    }

    pub(super) async fn transfer_leadership(&self, target: u64) -> NodeResult<MoveLeaderResponse> {
        let me = self.inner.ids.member_id;
        let leader = self.inner.raft().progress().leader();
        if leader != me {
            return Err(EtcdError::NotLeader);
        }
        let is_voter = self
            .inner
            .members
            .read()
            .members
            .get(&target)
            .is_some_and(|m| !m.is_learner);
        if !is_voter {
            return Err(EtcdError::BadLeaderTransferee);
        }
        if target != me {
            self.inner.raft().transfer_leader(target);
            let deadline = tokio::time::Instant::now() + self.inner.opts.request_timeout();
            while self.inner.raft().progress().leader() != target {
                if tokio::time::Instant::now() >= deadline {
                    return Err(EtcdError::TimeoutDueToLeaderFail);
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        Ok(MoveLeaderResponse {
            header: self.inner.header(),
        })
    }
}

fn valid_peer_url(u: &str) -> bool {
    let Some(rest) = u
        .strip_prefix("http://")
        .or_else(|| u.strip_prefix("https://"))
    else {
        return false;
    };
    let hostport = rest.trim_end_matches('/');
    match hostport.rsplit_once(':') {
        Some((host, port)) => !host.is_empty() && port.parse::<u16>().is_ok(),
        None => false,
    }
}

impl Inner {
    /// Proposes this member's name and client URLs once a leader is known, until the record
    /// applied matches (etcd's `publish`). Called from housekeeping.
    pub(super) fn publish_attributes_if_needed(&self) {
        let me = self.ids.member_id;
        let stale = match self.members.read().members.get(&me) {
            Some(m) => m.name != self.opts.name || m.client_urls != self.opts.client_urls,
            None => false,
        };
        let published = self.attrs_published.load(Ordering::Acquire);
        if published && !stale {
            return;
        }
        let mut last = self.last_publish.lock();
        if last.elapsed() < Duration::from_secs(1) {
            return;
        }
        *last = std::time::Instant::now();
        drop(last);
        if self.raft().progress().leader() == 0 || !self.members.read().members.contains_key(&me) {
            return;
        }
        self.propose_detached(InternalRaftRequest {
            cluster_member_attr_set: Some(ClusterMemberAttrSetRequest {
                member_id: me,
                member_attributes: Some(MemberAttributes {
                    name: self.opts.name.clone(),
                    client_urls: self.opts.client_urls.clone(),
                }),
            }),
            ..Default::default()
        });
    }
}

impl Applier {
    /// Applies a committed membership change: the member list (and its backend buckets), the
    /// peer transport, and this member's own removal.
    pub(super) fn apply_member_change(&mut self, index: u64, term: u64, cc: &ConfChangeV2) {
        let inner = self.inner.clone();
        let context = decode_context(&cc.context);
        let mut store = inner.store.write();
        self.enter_entry(&mut store, index, term);
        let mut members = inner.members.write();
        let mut result = Ok(());
        for change in &cc.changes {
            let id = change.node_id;
            result = match change.get_change_type() {
                ConfChangeType::AddNode | ConfChangeType::AddLearnerNode => {
                    let learner = change.get_change_type() == ConfChangeType::AddLearnerNode;
                    let mut m = members.members.get(&id).cloned().unwrap_or(MemberInfo {
                        id,
                        ..Default::default()
                    });
                    if let Some((ctx, _)) = context.as_ref().filter(|(c, _)| c.id == id) {
                        m.peer_urls = ctx.peer_urls.clone();
                        if m.name.is_empty() {
                            m.name = ctx.name.clone();
                        }
                    }
                    m.is_learner = learner;
                    let urls = m.peer_urls.clone();
                    let r = members.put(store.backend_mut(), m);
                    inner.peers.set_peer(id, urls);
                    r
                }
                ConfChangeType::RemoveNode => {
                    let r = members.remove(store.backend_mut(), id);
                    inner.peers.remove_peer(id);
                    if id == inner.ids.member_id {
                        tracing::warn!("this member was removed from the cluster; stopping");
                        inner.self_removed.store(true, Ordering::Release);
                    }
                    r
                }
            };
            if result.is_err() {
                break;
            }
        }
        let list = members.to_pb();
        drop(members);
        inner.dirty.store(true, Ordering::Release);
        inner.ops_since_commit.fetch_add(1, Ordering::AcqRel);
        drop(store);
        let outcome = match result {
            Ok(()) => Ok(Applied::Members(list)),
            Err(e) => {
                inner.fail(format!("applying membership change {index}: {e}"));
                Err(EtcdError::Internal(format!("ringkv: {e}")))
            }
        };
        if let Some((_, request_id)) = context
            && let Some(w) = inner.waiters.lock().remove(&request_id)
        {
            let _ = w.tx.send((outcome, Instant::now()));
        }
    }

    /// Applies a member's published name and client URLs.
    pub(super) fn apply_member_attributes(
        &self,
        store: &mut MvccStore<NodeBackend>,
        req: &ClusterMemberAttrSetRequest,
    ) -> Result<Applied, MvccErrorOr> {
        let mut members = self.inner.members.write();
        let Some(mut m) = members.members.get(&req.member_id).cloned() else {
            // A member removed meanwhile: nothing to update (etcd ignores it too).
            return Ok(Applied::Nothing);
        };
        let attrs = req.member_attributes.clone().unwrap_or_default();
        m.name = attrs.name;
        m.client_urls = attrs.client_urls;
        members
            .put(store.backend_mut(), m)
            .map_err(MvccError::from)?;
        if req.member_id == self.inner.ids.member_id {
            self.inner.attrs_published.store(true, Ordering::Release);
        }
        Ok(Applied::Nothing)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn peer_urls_are_checked_like_etcd() {
        assert!(valid_peer_url("http://127.0.0.1:2380"));
        assert!(valid_peer_url("https://node-1:2380/"));
        assert!(!valid_peer_url("127.0.0.1:2380"));
        assert!(!valid_peer_url("http://127.0.0.1"));
        assert!(!valid_peer_url("http://:2380"));
        assert!(!valid_peer_url("http://h:99999"));
    }

    #[test]
    fn the_attribute_request_uses_etcds_field_number() {
        let req = ClusterMemberAttrSetRequest {
            member_id: 1,
            member_attributes: Some(MemberAttributes {
                name: "a".into(),
                client_urls: vec![],
            }),
        };
        // Tag of field 1301, wire type 2, is a 2-byte varint: 1301 << 3 | 2 = 10410.
        let bytes = InternalRaftRequest {
            cluster_member_attr_set: Some(req.clone()),
            ..Default::default()
        }
        .encode_to_vec();
        assert_eq!(&bytes[..2], &[0xaa, 0x51]);
    }
}

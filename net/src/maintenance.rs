//! `etcdserverpb.Maintenance`: alarms, status, defragment, hashes, snapshot, move-leader
//! (etcd-v3-spec.md §4.11). Alarm, Defragment and Snapshot responses carry no header (§4.1).

use bytes::{Bytes, BytesMut};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::errors::EtcdError;
use crate::frontend::{LearnerPolicy, Shared, fill_header};
use crate::metrics::SERVER_VERSION;
use crate::node::{BoxStream, EtcdNode, NodeResult};
use crate::pb::etcdserverpb::{
    AlarmMember, AlarmRequest, AlarmResponse, AlarmType, DefragmentRequest, DefragmentResponse,
    HashKvRequest, HashKvResponse, HashRequest, HashResponse, MoveLeaderRequest,
    MoveLeaderResponse, SnapshotRequest, SnapshotResponse, StatusRequest, StatusResponse,
    maintenance_server::Maintenance,
};
use crate::validate::{check_request_size, envelope};

/// Largest snapshot chunk (etcd's send buffer).
pub const SNAPSHOT_CHUNK: usize = 32 * 1024;

/// The Maintenance service over a node.
pub struct MaintenanceService<N> {
    /// Shared front-end state.
    pub shared: Shared<N>,
}

/// An alarm as Status `errors` lists it: protobuf text format of `AlarmMember`, with etcd's
/// trailing space (spec §4.11).
pub fn alarm_text(a: &AlarmMember) -> String {
    let name = AlarmType::try_from(a.alarm)
        .map_or_else(|_| a.alarm.to_string(), |t| t.as_str_name().to_string());
    let mut s = String::new();
    if a.member_id != 0 {
        s.push_str(&format!("memberID:{} ", a.member_id));
    }
    if a.alarm != 0 {
        s.push_str(&format!("alarm:{name} "));
    }
    s
}

#[tonic::async_trait]
impl<N: EtcdNode> Maintenance for MaintenanceService<N> {
    async fn alarm(&self, req: Request<AlarmRequest>) -> Result<Response<AlarmResponse>, Status> {
        let (caller, _) = self.shared.admit(req.metadata(), LearnerPolicy::Refused)?;
        let r = req.into_inner();
        check_request_size(envelope::ALARM, &r, self.shared.limits.max_request_bytes)?;
        let mut resp = self.shared.node.alarm(&caller, r).await?;
        resp.header = None;
        Ok(Response::new(resp))
    }

    async fn status(
        &self,
        req: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        let (caller, state) = self.shared.admit(req.metadata(), LearnerPolicy::Allowed)?;
        let mut resp = self.shared.node.status(&caller).await?;
        fill_header(&mut resp.header, &state);
        resp.version = SERVER_VERSION.to_string();
        resp.errors.clear();
        if resp.leader == 0 {
            resp.errors.push(EtcdError::NoLeader.message().into_owned());
        }
        resp.errors.extend(state.alarms.iter().map(alarm_text));
        Ok(Response::new(resp))
    }

    async fn defragment(
        &self,
        req: Request<DefragmentRequest>,
    ) -> Result<Response<DefragmentResponse>, Status> {
        let (caller, _) = self.shared.admit(req.metadata(), LearnerPolicy::Refused)?;
        self.shared.node.defragment(&caller).await?;
        Ok(Response::new(DefragmentResponse { header: None }))
    }

    async fn hash(&self, req: Request<HashRequest>) -> Result<Response<HashResponse>, Status> {
        let (caller, state) = self.shared.admit(req.metadata(), LearnerPolicy::Refused)?;
        let mut resp = self.shared.node.hash(&caller).await?;
        fill_header(&mut resp.header, &state);
        Ok(Response::new(resp))
    }

    async fn hash_kv(
        &self,
        req: Request<HashKvRequest>,
    ) -> Result<Response<HashKvResponse>, Status> {
        let (caller, state) = self.shared.admit(req.metadata(), LearnerPolicy::Refused)?;
        let mut resp = self
            .shared
            .node
            .hash_kv(&caller, req.into_inner().revision)
            .await?;
        fill_header(&mut resp.header, &state);
        Ok(Response::new(resp))
    }

    type SnapshotStream = BoxStream<Result<SnapshotResponse, Status>>;

    async fn snapshot(
        &self,
        req: Request<SnapshotRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        let (caller, _) = self.shared.admit(req.metadata(), LearnerPolicy::Refused)?;
        let (size, chunks) = self.shared.node.snapshot(&caller).await?;
        Ok(Response::new(snapshot_stream(size, chunks)))
    }

    async fn move_leader(
        &self,
        req: Request<MoveLeaderRequest>,
    ) -> Result<Response<MoveLeaderResponse>, Status> {
        let (caller, state) = self.shared.admit(req.metadata(), LearnerPolicy::Refused)?;
        let mut resp = self
            .shared
            .node
            .move_leader(&caller, req.into_inner().target_id)
            .await?;
        fill_header(&mut resp.header, &state);
        Ok(Response::new(resp))
    }
}

/// Re-chunks the backend file into ≤ 32 KiB messages with `remaining_bytes` = bytes left after
/// this chunk, then appends the SHA-256 of everything sent (spec §4.11). A file shorter or
/// longer than announced fails the stream instead of producing a snapshot that would not verify.
pub fn snapshot_stream(
    size: u64,
    mut chunks: BoxStream<NodeResult<Bytes>>,
) -> BoxStream<Result<SnapshotResponse, Status>> {
    let (tx, rx) = mpsc::channel(4);
    tokio::spawn(async move {
        let mut sha = Sha256::new();
        let mut sent: u64 = 0;
        let mut pending = BytesMut::new();
        let mut source_done = false;
        loop {
            while pending.len() < SNAPSHOT_CHUNK && !source_done {
                match chunks.next().await {
                    Some(Ok(b)) => pending.extend_from_slice(&b),
                    Some(Err(e)) => {
                        let _ = tx.send(Err(e.into())).await;
                        return;
                    }
                    None => source_done = true,
                }
            }
            if pending.is_empty() {
                break;
            }
            let blob = pending.split_to(pending.len().min(SNAPSHOT_CHUNK)).freeze();
            sent += blob.len() as u64;
            if sent > size {
                let msg = format!("snapshot: backend file grew past its announced size {size}");
                let _ = tx.send(Err(EtcdError::Internal(msg).into())).await;
                return;
            }
            sha.update(&blob);
            let msg = SnapshotResponse {
                header: None,
                remaining_bytes: size - sent,
                blob,
            };
            if tx.send(Ok(msg)).await.is_err() {
                return;
            }
        }
        if sent != size {
            let msg = format!("snapshot: backend file ended at {sent} of {size} bytes");
            let _ = tx.send(Err(EtcdError::Internal(msg).into())).await;
            return;
        }
        let digest = Bytes::copy_from_slice(&sha.finalize());
        let _ = tx
            .send(Ok(SnapshotResponse {
                header: None,
                remaining_bytes: 0,
                blob: digest,
            }))
            .await;
    });
    Box::pin(ReceiverStream::new(rx))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alarm_text_matches_etcd() {
        let a = AlarmMember {
            member_id: 3319814642761637952,
            alarm: AlarmType::Nospace as i32,
        };
        assert_eq!(
            alarm_text(&a),
            "memberID:3319814642761637952 alarm:NOSPACE "
        );
    }

    #[tokio::test]
    async fn snapshot_chunks_and_digest() {
        let data: Vec<u8> = (0..70_000u32).map(|i| (i % 251) as u8).collect();
        let parts: Vec<NodeResult<Bytes>> = data
            .chunks(10_000)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        let stream = snapshot_stream(data.len() as u64, Box::pin(tokio_stream::iter(parts)));
        let msgs: Vec<SnapshotResponse> = stream.map(|r| r.unwrap()).collect().await;
        assert_eq!(msgs.len(), 4); // 32768 + 32768 + 4464, then the digest
        assert_eq!(msgs[0].remaining_bytes, 70_000 - 32_768);
        assert_eq!(msgs[1].remaining_bytes, 70_000 - 65_536);
        assert_eq!(msgs[2].remaining_bytes, 0);
        assert!(msgs.iter().all(|m| m.header.is_none()));
        let body: Vec<u8> = msgs[..3].iter().flat_map(|m| m.blob.to_vec()).collect();
        assert_eq!(body, data);
        assert_eq!(msgs[3].blob.as_ref(), Sha256::digest(&data).as_slice());
    }

    #[tokio::test]
    async fn short_snapshot_fails() {
        let parts: Vec<NodeResult<Bytes>> = vec![Ok(Bytes::from_static(b"abc"))];
        let stream = snapshot_stream(10, Box::pin(tokio_stream::iter(parts)));
        let msgs: Vec<_> = stream.collect().await;
        assert!(msgs.last().unwrap().is_err());
    }
}

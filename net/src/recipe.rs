//! Client-side concurrency recipes run inside the server for the v3lock and v3election
//! services (etcd-v3-spec.md §4.13): ordinary KV/watch calls on the node, exactly what etcd's
//! `concurrency` package does for its Mutex and Election.
//!
//! Ownership rule: among the keys under `<prefix>/`, the one with the lowest create revision
//! holds the lock/leadership. A waiter with create revision `r` waits until every key under the
//! prefix with create revision < `r` is deleted.

use bytes::{Bytes, BytesMut};
use tokio_stream::StreamExt;

use crate::errors::EtcdError;
use crate::node::{Caller, EtcdNode, NodeResult, WatchSpec, WatchUpdate};
use crate::pb::etcdserverpb::{
    Compare, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, ResponseHeader, TxnRequest,
    TxnResponse, compare, range_request, request_op, response_op,
};
use crate::pb::mvccpb::{KeyValue, event::EventType};

/// `<name>/<lease as lowercase hex>`: the key a lease holder owns under `name`.
pub fn owner_key(name: &[u8], lease: i64) -> Bytes {
    let mut k = BytesMut::from(name);
    k.extend_from_slice(format!("/{lease:x}").as_bytes());
    k.freeze()
}

/// The prefix range end for `prefix` (spec §4.2): last byte incremented after dropping
/// trailing 0xff bytes; `\0` if every byte is 0xff.
pub fn prefix_end(prefix: &[u8]) -> Bytes {
    let mut end = prefix.to_vec();
    while let Some(&last) = end.last() {
        if last < 0xff {
            *end.last_mut().expect("non-empty") += 1;
            return end.into();
        }
        end.pop();
    }
    Bytes::from_static(b"\0")
}

fn op(r: request_op::Request) -> RequestOp {
    RequestOp { request: Some(r) }
}

/// Creates `key` with `value` and `lease` unless it exists. Returns the txn response and the
/// key's create revision (the new one, or the existing key's) and the existing kv if any.
pub async fn create_if_absent<N: EtcdNode>(
    node: &N,
    caller: &Caller,
    key: Bytes,
    value: Bytes,
    lease: i64,
) -> NodeResult<(TxnResponse, i64, Option<KeyValue>)> {
    let txn = TxnRequest {
        compare: vec![Compare {
            result: compare::CompareResult::Equal as i32,
            target: compare::CompareTarget::Create as i32,
            key: key.clone(),
            target_union: Some(compare::TargetUnion::CreateRevision(0)),
            range_end: Bytes::new(),
        }],
        success: vec![op(request_op::Request::RequestPut(PutRequest {
            key: key.clone(),
            value,
            lease,
            ..Default::default()
        }))],
        failure: vec![op(request_op::Request::RequestRange(RangeRequest {
            key,
            ..Default::default()
        }))],
    };
    let resp = node.txn(caller, txn).await?;
    let revision = resp.header.as_ref().map_or(0, |h| h.revision);
    if resp.succeeded {
        return Ok((resp, revision, None));
    }
    let existing = resp.responses.first().and_then(|r| match &r.response {
        Some(response_op::Response::ResponseRange(rr)) => rr.kvs.first().cloned(),
        _ => None,
    });
    let Some(kv) = existing else {
        // The key vanished between compare and range: impossible inside one txn.
        return Err(EtcdError::Internal(
            "recipe: txn failed but the key is absent".into(),
        ));
    };
    Ok((resp, kv.create_revision, Some(kv)))
}

/// Waits until no key under `prefix` has a create revision ≤ `max_create_revision`
/// (etcd's `waitDeletes`): repeatedly find the newest such key and wait for its deletion.
pub async fn wait_deletes<N: EtcdNode>(
    node: &N,
    caller: &Caller,
    prefix: &[u8],
    max_create_revision: i64,
) -> NodeResult<()> {
    loop {
        let resp = node
            .range(
                caller,
                RangeRequest {
                    key: Bytes::copy_from_slice(prefix),
                    range_end: prefix_end(prefix),
                    limit: 1,
                    sort_order: range_request::SortOrder::Descend as i32,
                    sort_target: range_request::SortTarget::Create as i32,
                    max_create_revision,
                    ..Default::default()
                },
            )
            .await?;
        let Some(kv) = resp.kvs.into_iter().next() else {
            return Ok(());
        };
        let rev = resp.header.map_or(0, |h| h.revision);
        wait_delete(node, caller, kv.key, rev).await?;
    }
}

/// Waits for a DELETE of `key` at or after revision `from`.
async fn wait_delete<N: EtcdNode>(
    node: &N,
    caller: &Caller,
    key: Bytes,
    from: i64,
) -> NodeResult<()> {
    let spec = WatchSpec {
        key,
        range_end: Bytes::new(),
        start_revision: from,
        prev_kv: false,
        no_put: true,
        no_delete: false,
        progress_notify: false,
    };
    let mut w = node.watch(caller, spec).await?;
    while let Some(update) = w.updates.next().await {
        match update {
            WatchUpdate::Events { events, .. } => {
                if events.iter().any(|e| e.r#type == EventType::Delete as i32) {
                    return Ok(());
                }
            }
            WatchUpdate::Compacted { .. } => return Err(EtcdError::Compacted),
            WatchUpdate::Progress { .. } => {}
        }
    }
    Err(EtcdError::Stopped)
}

/// Deletes `key`, returning the response header.
pub async fn delete<N: EtcdNode>(
    node: &N,
    caller: &Caller,
    key: Bytes,
) -> NodeResult<Option<ResponseHeader>> {
    let resp = node
        .delete_range(
            caller,
            DeleteRangeRequest {
                key,
                ..Default::default()
            },
        )
        .await?;
    Ok(resp.header)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_prefixes() {
        assert_eq!(
            owner_key(b"mylock", 0x2040a1fcec899555).as_ref(),
            b"mylock/2040a1fcec899555"
        );
        assert_eq!(prefix_end(b"aa").as_ref(), b"ab");
        assert_eq!(prefix_end(b"a\xff").as_ref(), b"b");
        assert_eq!(prefix_end(b"\xff\xff").as_ref(), b"\0");
        assert_eq!(prefix_end(b"/app/").as_ref(), b"/app0");
    }
}

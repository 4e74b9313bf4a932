//! The etcd v3 protocol messages, generated from `engine/proto/` by `build.rs`.
//!
//! These are the wire types of etcd's client API (etcd-v3-spec.md §3); MVCC, leases and the raft
//! envelope work on them directly, so a request decoded by the front end reaches the store
//! without a conversion layer. Every protobuf `bytes` field is a [`bytes::Bytes`].
//!
//! Field names follow prost's snake_case rendering of the proto names (`TTL` → `ttl`,
//! `grantedTTL` → `granted_ttl`, `peerURLs` → `peer_ur_ls`); the proto names themselves, which the
//! JSON gateway uses, live in [`FILE_DESCRIPTOR_SET`].

/// Encoded `google.protobuf.FileDescriptorSet` of every file in `engine/proto/` (with source
/// info), for reflection-based codecs such as the gateway's JSON mapping.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/ringkv_descriptor.bin"));

/// Generated code is not held to the workspace's hand-written-code lints.
macro_rules! generated {
    ($file:literal) => {
        include!(concat!(env!("OUT_DIR"), "/", $file));
    };
}

/// Package `etcdserverpb`: the KV, Watch, Lease, Cluster, Maintenance and Auth messages, and the
/// internal raft request envelope.
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod etcdserverpb {
    generated!("etcdserverpb.rs");
}

/// Package `mvccpb`: `KeyValue` and `Event`.
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod mvccpb {
    generated!("mvccpb.rs");
}

/// Package `authpb`: users, roles and permissions.
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod authpb {
    generated!("authpb.rs");
}

/// Package `v3electionpb`: the server-side election recipe's messages.
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod v3electionpb {
    generated!("v3electionpb.rs");
}

/// Package `v3lockpb`: the server-side lock recipe's messages.
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod v3lockpb {
    generated!("v3lockpb.rs");
}

/// Package `grpc.health.v1`: the standard gRPC health-checking messages.
pub mod grpc {
    /// `grpc.health`.
    pub mod health {
        /// `grpc.health.v1`.
        #[allow(clippy::all, clippy::pedantic, missing_docs)]
        pub mod v1 {
            generated!("grpc.health.v1.rs");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::etcdserverpb::{
        Compare, PutRequest, RangeRequest, RequestOp, TxnRequest, compare, request_op,
    };
    use super::mvccpb::{Event, KeyValue, event::EventType};
    use prost::Message;

    /// Hand-encoded bytes pin the field numbers and wire types of §3.2 (a renumbered field would
    /// decode to a different message and fail here).
    #[test]
    fn put_request_field_numbers_match_spec() {
        let req = PutRequest {
            key: "foo".into(),
            value: "bar".into(),
            lease: 7,
            prev_kv: true,
            ignore_value: false,
            ignore_lease: true,
        };
        let bytes = req.encode_to_vec();
        // key=1 (LEN), value=2 (LEN), lease=3 (VARINT), prev_kv=4 (VARINT), ignore_lease=6.
        let expected: &[u8] = &[
            0x0a, 3, b'f', b'o', b'o', 0x12, 3, b'b', b'a', b'r', 0x18, 7, 0x20, 1, 0x30, 1,
        ];
        assert_eq!(bytes, expected);
        assert_eq!(PutRequest::decode(expected).unwrap(), req);
    }

    #[test]
    fn txn_with_oneofs_round_trips() {
        let txn = TxnRequest {
            compare: vec![Compare {
                result: compare::CompareResult::Greater as i32,
                target: compare::CompareTarget::Mod as i32,
                key: "k1".into(),
                range_end: "k2".into(),
                target_union: Some(compare::TargetUnion::ModRevision(5)),
            }],
            success: vec![RequestOp {
                request: Some(request_op::Request::RequestPut(PutRequest {
                    key: "k".into(),
                    value: "v".into(),
                    ..Default::default()
                })),
            }],
            failure: vec![RequestOp {
                request: Some(request_op::Request::RequestRange(RangeRequest {
                    key: "k".into(),
                    serializable: true,
                    ..Default::default()
                })),
            }],
        };
        let bytes = txn.encode_to_vec();
        assert_eq!(TxnRequest::decode(bytes.as_slice()).unwrap(), txn);
        // Compare.range_end is field 64: tag (64 << 3 | 2) = 0x202 = varint [0x82, 0x04].
        let cmp = txn.compare[0].encode_to_vec();
        assert!(cmp.windows(3).any(|w| w == [0x82, 0x04, 2]), "{cmp:?}");
    }

    #[test]
    fn event_enum_values_match_spec() {
        assert_eq!(EventType::Put as i32, 0);
        assert_eq!(EventType::Delete as i32, 1);
        let ev = Event {
            r#type: EventType::Delete as i32,
            kv: Some(KeyValue {
                key: "a".into(),
                mod_revision: 9,
                ..Default::default()
            }),
            prev_kv: None,
        };
        assert_eq!(Event::decode(ev.encode_to_vec().as_slice()).unwrap(), ev);
    }
}

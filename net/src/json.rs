//! The gateway's JSON mapping (grpc-gateway v1 with `OrigName: true`, etcd-v3-spec.md §7):
//! proto field names as written (`create_revision`, `TTL`, `peerURLs`), bytes as standard
//! base64, 64-bit integers emitted as strings and accepted as strings or numbers, enums emitted
//! as names and accepted as names or numbers, zero values omitted, unknown fields ignored.
//!
//! Implemented by reflection over the descriptors compiled with the messages
//! ([`crate::pb::FILE_DESCRIPTOR_SET`]): a message goes to protobuf bytes and through a
//! `DynamicMessage`. The gateway is not the hot path; gRPC clients never pay for this.

use std::sync::OnceLock;

use prost::{Message, Name};
use prost_reflect::{DescriptorPool, DeserializeOptions, DynamicMessage, SerializeOptions};

fn pool() -> &'static DescriptorPool {
    static POOL: OnceLock<DescriptorPool> = OnceLock::new();
    POOL.get_or_init(|| {
        DescriptorPool::decode(crate::pb::FILE_DESCRIPTOR_SET)
            .expect("the descriptor set compiled by engine/build.rs decodes")
    })
}

fn descriptor<M: Name>() -> prost_reflect::MessageDescriptor {
    pool()
        .get_message_by_name(&M::full_name())
        .expect("every generated message is in the compiled descriptor set")
}

/// Decodes one JSON value into a message. The error text explains what was wrong.
pub fn from_value<M: Message + Name + Default>(value: serde_json::Value) -> Result<M, String> {
    let options = DeserializeOptions::new().deny_unknown_fields(false);
    let dynamic = DynamicMessage::deserialize_with_options(descriptor::<M>(), value, &options)
        .map_err(|e| e.to_string())?;
    M::decode(dynamic.encode_to_vec().as_slice()).map_err(|e| e.to_string())
}

/// Decodes a request body: empty = the empty message (spec §7).
pub fn from_body<M: Message + Name + Default>(body: &[u8]) -> Result<M, String> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(M::default());
    }
    let value: serde_json::Value = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    from_value(value)
}

/// Splits a body holding several JSON values (newline-separated or just concatenated), as the
/// gateway accepts for client-streaming RPCs.
pub fn values(body: &[u8]) -> Result<Vec<serde_json::Value>, String> {
    serde_json::Deserializer::from_slice(body)
        .into_iter::<serde_json::Value>()
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())
}

/// Encodes a message as the gateway does.
pub fn to_value<M: Message + Name>(msg: &M) -> serde_json::Value {
    let dynamic = DynamicMessage::decode(descriptor::<M>(), msg.encode_to_vec().as_slice())
        .expect("a message re-decodes with its own descriptor");
    let options = SerializeOptions::new()
        .use_proto_field_name(true)
        .stringify_64_bit_integers(true)
        .skip_default_fields(true)
        .use_enum_numbers(false);
    dynamic
        .serialize_with_options(serde_json::value::Serializer, &options)
        .expect("serialising to a JSON value cannot fail")
}

/// Encodes a message to a JSON string.
pub fn to_string<M: Message + Name>(msg: &M) -> String {
    to_value(msg).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::etcdserverpb::*;
    use crate::pb::mvccpb::{Event, KeyValue, event::EventType};
    use serde_json::json;

    fn header(rev: i64) -> Option<ResponseHeader> {
        Some(ResponseHeader {
            cluster_id: 324952591200643719,
            member_id: 3319814642761637952,
            revision: rev,
            raft_term: 35,
        })
    }

    /// Spec §7 transcript: `put` request and response.
    #[test]
    fn put_round_trip_matches_transcript() {
        let req: PutRequest = from_body(br#"{"key":"Zm9v","value":"YmFy"}"#).unwrap();
        assert_eq!(req.key.as_ref(), b"foo");
        assert_eq!(req.value.as_ref(), b"bar");
        let resp = PutResponse {
            header: header(8092),
            prev_kv: None,
        };
        assert_eq!(
            to_value(&resp),
            json!({"header":{"cluster_id":"324952591200643719","member_id":"3319814642761637952","revision":"8092","raft_term":"35"}})
        );
    }

    #[test]
    fn range_response_omits_zero_values() {
        let resp = RangeResponse {
            header: header(8093),
            kvs: vec![KeyValue {
                key: "foo".into(),
                create_revision: 8092,
                mod_revision: 8093,
                version: 2,
                value: "baz".into(),
                lease: 0,
            }],
            more: false,
            count: 1,
        };
        assert_eq!(
            to_value(&resp)["kvs"],
            json!([{"key":"Zm9v","create_revision":"8092","mod_revision":"8093","version":"2","value":"YmF6"}])
        );
        assert_eq!(to_value(&resp)["count"], json!("1"));
        assert!(to_value(&resp).get("more").is_none());
    }

    /// int64 accepted as strings or numbers; enums as names or numbers; oneofs by member name.
    #[test]
    fn txn_request_from_json() {
        let body = br#"{"compare":[{"target":"CREATE","key":"Zm9v","result":"EQUAL","create_revision":"0"}],
            "success":[{"request_put":{"key":"Zm9v","value":"MQ=="}},{"request_range":{"key":"Zm9v"}}],
            "failure":[{"request_range":{"key":"Zm9v","limit":2}}]}"#;
        let t: TxnRequest = from_body(body).unwrap();
        assert_eq!(t.compare[0].target, compare::CompareTarget::Create as i32);
        assert_eq!(
            t.compare[0].target_union,
            Some(compare::TargetUnion::CreateRevision(0))
        );
        assert!(
            matches!(&t.success[0].request, Some(request_op::Request::RequestPut(p)) if p.value.as_ref() == b"1")
        );
        assert!(
            matches!(&t.failure[0].request, Some(request_op::Request::RequestRange(r)) if r.limit == 2)
        );
        let g: LeaseGrantRequest = from_body(br#"{"TTL":30,"ID":"1000"}"#).unwrap();
        assert_eq!((g.ttl, g.id), (30, 1000));
        let a: AlarmRequest = from_body(br#"{"action":1,"alarm":"NOSPACE"}"#).unwrap();
        assert_eq!((a.action, a.alarm), (1, AlarmType::Nospace as i32));
    }

    #[test]
    fn odd_field_names_and_enums_out() {
        let t = LeaseTimeToLiveResponse {
            header: None,
            id: 1000,
            ttl: 29,
            granted_ttl: 30,
            keys: vec!["lk".into()],
        };
        assert_eq!(
            to_value(&t),
            json!({"ID":"1000","TTL":"29","grantedTTL":"30","keys":["bGs="]})
        );
        let a = AlarmResponse {
            header: None,
            alarms: vec![AlarmMember {
                member_id: 3319814642761637952,
                alarm: AlarmType::Nospace as i32,
            }],
        };
        assert_eq!(
            to_value(&a),
            json!({"alarms":[{"memberID":"3319814642761637952","alarm":"NOSPACE"}]})
        );
        let ev = WatchResponse {
            header: None,
            watch_id: -1,
            events: vec![Event {
                r#type: EventType::Delete as i32,
                kv: Some(KeyValue {
                    key: "wk1".into(),
                    mod_revision: 8101,
                    ..Default::default()
                }),
                prev_kv: None,
            }],
            ..Default::default()
        };
        assert_eq!(
            to_value(&ev),
            json!({"watch_id":"-1","events":[{"type":"DELETE","kv":{"key":"d2sx","mod_revision":"8101"}}]})
        );
        let h = HashResponse {
            header: None,
            hash: 1612723873,
        };
        assert_eq!(to_value(&h), json!({"hash":1612723873}));
        let m = MemberListResponse {
            header: None,
            members: vec![Member {
                id: 1,
                name: "default".into(),
                peer_ur_ls: vec!["http://127.0.0.1:23800".into()],
                client_ur_ls: vec![],
                is_learner: false,
            }],
        };
        assert_eq!(
            to_value(&m),
            json!({"members":[{"ID":"1","name":"default","peerURLs":["http://127.0.0.1:23800"]}]})
        );
    }

    #[test]
    fn empty_body_unknown_fields_and_errors() {
        let r: RangeRequest = from_body(b"").unwrap();
        assert_eq!(r, RangeRequest::default());
        let r: RangeRequest = from_body(br#"{"key":"Zm9v","nonsense":1}"#).unwrap();
        assert_eq!(r.key.as_ref(), b"foo");
        assert!(from_body::<RangeRequest>(b"{not json").is_err());
        assert!(from_body::<RangeRequest>(br#"{"key":12}"#).is_err());
        let vs = values(b"{\"create_request\":{\"key\":\"YQ==\"}}\n{\"progress_request\":{}}\n")
            .unwrap();
        assert_eq!(vs.len(), 2);
        let w: WatchRequest = from_value(vs[1].clone()).unwrap();
        assert!(matches!(
            w.request_union,
            Some(watch_request::RequestUnion::ProgressRequest(_))
        ));
    }
}

//! Our protobuf messages as the etcd gateway renders them (proto3 JSON with the proto field
//! names, 64-bit integers as strings, bytes as base64, defaults omitted; spec §7).

use std::sync::OnceLock;

use prost_reflect::{DescriptorPool, DynamicMessage, SerializeOptions};
use serde_json::Value;

fn pool() -> &'static DescriptorPool {
    static POOL: OnceLock<DescriptorPool> = OnceLock::new();
    POOL.get_or_init(|| {
        DescriptorPool::decode(ringkv_engine::pb::FILE_DESCRIPTOR_SET).expect("descriptor set")
    })
}

/// Renders `m` (whose protobuf full name is `full_name`, e.g. `etcdserverpb.RangeResponse`)
/// as gateway JSON.
pub fn message_json<M: prost::Message>(full_name: &str, m: &M) -> Value {
    let desc = pool()
        .get_message_by_name(full_name)
        .unwrap_or_else(|| panic!("unknown message {full_name}"));
    let dm = DynamicMessage::decode(desc, m.encode_to_vec().as_slice()).expect("re-decode");
    let opts = SerializeOptions::new()
        .use_proto_field_name(true)
        .stringify_64_bit_integers(true)
        .skip_default_fields(true);
    dm.serialize_with_options(serde_json::value::Serializer, &opts)
        .expect("serialize")
}

/// The gateway's error body (3.4 carries both `error` and `message`).
pub fn error_json(message: &str, code: u32) -> Value {
    serde_json::json!({ "error": message, "message": message, "code": code })
}

/// Replaces the values of `cluster_id`, `member_id` and `raft_term` in every `header` with
/// `"*"` (presence still compares), so two clusters' responses compare.
pub fn normalise_headers(v: &mut Value) {
    match v {
        Value::Object(map) => {
            for (k, child) in map.iter_mut() {
                if k == "header"
                    && let Value::Object(h) = child
                {
                    for f in ["cluster_id", "member_id", "raft_term"] {
                        if let Some(x) = h.get_mut(f) {
                            *x = Value::String("*".into());
                        }
                    }
                }
                normalise_headers(child);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(normalise_headers),
        _ => {}
    }
}

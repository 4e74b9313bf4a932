//! The subset of etcd's protobuf messages MVCC works on, declared with prost's derive exactly as
//! prost-build would generate them from etcd's `rpc.proto` / `kv.proto` (same field numbers,
//! names, oneofs and enums), so switching to the generated `crate::pb` is a path change.
#![allow(clippy::all, missing_docs)]

pub mod mvccpb {
    #[derive(Clone, PartialEq, Eq, Hash, ::prost::Message)]
    pub struct KeyValue {
        #[prost(bytes = "vec", tag = "1")]
        pub key: Vec<u8>,
        #[prost(int64, tag = "2")]
        pub create_revision: i64,
        #[prost(int64, tag = "3")]
        pub mod_revision: i64,
        #[prost(int64, tag = "4")]
        pub version: i64,
        #[prost(bytes = "vec", tag = "5")]
        pub value: Vec<u8>,
        #[prost(int64, tag = "6")]
        pub lease: i64,
    }

    #[derive(Clone, PartialEq, ::prost::Message)]
    pub struct Event {
        #[prost(enumeration = "event::EventType", tag = "1")]
        pub r#type: i32,
        #[prost(message, optional, tag = "2")]
        pub kv: Option<KeyValue>,
        #[prost(message, optional, tag = "3")]
        pub prev_kv: Option<KeyValue>,
    }

    pub mod event {
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, ::prost::Enumeration)]
        #[repr(i32)]
        pub enum EventType {
            Put = 0,
            Delete = 1,
        }
    }
}

pub mod etcdserverpb {
    use super::mvccpb;

    #[derive(Clone, Copy, PartialEq, Eq, ::prost::Message)]
    pub struct ResponseHeader {
        #[prost(uint64, tag = "1")]
        pub cluster_id: u64,
        #[prost(uint64, tag = "2")]
        pub member_id: u64,
        #[prost(int64, tag = "3")]
        pub revision: i64,
        #[prost(uint64, tag = "4")]
        pub raft_term: u64,
    }

    #[derive(Clone, PartialEq, ::prost::Message)]
    pub struct RangeRequest {
        #[prost(bytes = "vec", tag = "1")]
        pub key: Vec<u8>,
        #[prost(bytes = "vec", tag = "2")]
        pub range_end: Vec<u8>,
        #[prost(int64, tag = "3")]
        pub limit: i64,
        #[prost(int64, tag = "4")]
        pub revision: i64,
        #[prost(enumeration = "range_request::SortOrder", tag = "5")]
        pub sort_order: i32,
        #[prost(enumeration = "range_request::SortTarget", tag = "6")]
        pub sort_target: i32,
        #[prost(bool, tag = "7")]
        pub serializable: bool,
        #[prost(bool, tag = "8")]
        pub keys_only: bool,
        #[prost(bool, tag = "9")]
        pub count_only: bool,
        #[prost(int64, tag = "10")]
        pub min_mod_revision: i64,
        #[prost(int64, tag = "11")]
        pub max_mod_revision: i64,
        #[prost(int64, tag = "12")]
        pub min_create_revision: i64,
        #[prost(int64, tag = "13")]
        pub max_create_revision: i64,
    }

    pub mod range_request {
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, ::prost::Enumeration)]
        #[repr(i32)]
        pub enum SortOrder {
            None = 0,
            Ascend = 1,
            Descend = 2,
        }
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, ::prost::Enumeration)]
        #[repr(i32)]
        pub enum SortTarget {
            Key = 0,
            Version = 1,
            Create = 2,
            Mod = 3,
            Value = 4,
        }
    }

    #[derive(Clone, PartialEq, ::prost::Message)]
    pub struct RangeResponse {
        #[prost(message, optional, tag = "1")]
        pub header: Option<ResponseHeader>,
        #[prost(message, repeated, tag = "2")]
        pub kvs: Vec<mvccpb::KeyValue>,
        #[prost(bool, tag = "3")]
        pub more: bool,
        #[prost(int64, tag = "4")]
        pub count: i64,
    }

    #[derive(Clone, PartialEq, ::prost::Message)]
    pub struct PutRequest {
        #[prost(bytes = "vec", tag = "1")]
        pub key: Vec<u8>,
        #[prost(bytes = "vec", tag = "2")]
        pub value: Vec<u8>,
        #[prost(int64, tag = "3")]
        pub lease: i64,
        #[prost(bool, tag = "4")]
        pub prev_kv: bool,
        #[prost(bool, tag = "5")]
        pub ignore_value: bool,
        #[prost(bool, tag = "6")]
        pub ignore_lease: bool,
    }

    #[derive(Clone, PartialEq, ::prost::Message)]
    pub struct PutResponse {
        #[prost(message, optional, tag = "1")]
        pub header: Option<ResponseHeader>,
        #[prost(message, optional, tag = "2")]
        pub prev_kv: Option<mvccpb::KeyValue>,
    }

    #[derive(Clone, PartialEq, ::prost::Message)]
    pub struct DeleteRangeRequest {
        #[prost(bytes = "vec", tag = "1")]
        pub key: Vec<u8>,
        #[prost(bytes = "vec", tag = "2")]
        pub range_end: Vec<u8>,
        #[prost(bool, tag = "3")]
        pub prev_kv: bool,
    }

    #[derive(Clone, PartialEq, ::prost::Message)]
    pub struct DeleteRangeResponse {
        #[prost(message, optional, tag = "1")]
        pub header: Option<ResponseHeader>,
        #[prost(int64, tag = "2")]
        pub deleted: i64,
        #[prost(message, repeated, tag = "3")]
        pub prev_kvs: Vec<mvccpb::KeyValue>,
    }

    #[derive(Clone, PartialEq, ::prost::Message)]
    pub struct RequestOp {
        #[prost(oneof = "request_op::Request", tags = "1, 2, 3, 4")]
        pub request: Option<request_op::Request>,
    }

    pub mod request_op {
        #[derive(Clone, PartialEq, ::prost::Oneof)]
        pub enum Request {
            #[prost(message, tag = "1")]
            RequestRange(super::RangeRequest),
            #[prost(message, tag = "2")]
            RequestPut(super::PutRequest),
            #[prost(message, tag = "3")]
            RequestDeleteRange(super::DeleteRangeRequest),
            #[prost(message, tag = "4")]
            RequestTxn(super::TxnRequest),
        }
    }

    #[derive(Clone, PartialEq, ::prost::Message)]
    pub struct ResponseOp {
        #[prost(oneof = "response_op::Response", tags = "1, 2, 3, 4")]
        pub response: Option<response_op::Response>,
    }

    pub mod response_op {
        #[derive(Clone, PartialEq, ::prost::Oneof)]
        pub enum Response {
            #[prost(message, tag = "1")]
            ResponseRange(super::RangeResponse),
            #[prost(message, tag = "2")]
            ResponsePut(super::PutResponse),
            #[prost(message, tag = "3")]
            ResponseDeleteRange(super::DeleteRangeResponse),
            #[prost(message, tag = "4")]
            ResponseTxn(super::TxnResponse),
        }
    }

    #[derive(Clone, PartialEq, ::prost::Message)]
    pub struct Compare {
        #[prost(enumeration = "compare::CompareResult", tag = "1")]
        pub result: i32,
        #[prost(enumeration = "compare::CompareTarget", tag = "2")]
        pub target: i32,
        #[prost(bytes = "vec", tag = "3")]
        pub key: Vec<u8>,
        #[prost(bytes = "vec", tag = "64")]
        pub range_end: Vec<u8>,
        #[prost(oneof = "compare::TargetUnion", tags = "4, 5, 6, 7, 8")]
        pub target_union: Option<compare::TargetUnion>,
    }

    pub mod compare {
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, ::prost::Enumeration)]
        #[repr(i32)]
        pub enum CompareResult {
            Equal = 0,
            Greater = 1,
            Less = 2,
            NotEqual = 3,
        }
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, ::prost::Enumeration)]
        #[repr(i32)]
        pub enum CompareTarget {
            Version = 0,
            Create = 1,
            Mod = 2,
            Value = 3,
            Lease = 4,
        }
        #[derive(Clone, PartialEq, ::prost::Oneof)]
        pub enum TargetUnion {
            #[prost(int64, tag = "4")]
            Version(i64),
            #[prost(int64, tag = "5")]
            CreateRevision(i64),
            #[prost(int64, tag = "6")]
            ModRevision(i64),
            #[prost(bytes, tag = "7")]
            Value(Vec<u8>),
            #[prost(int64, tag = "8")]
            Lease(i64),
        }
    }

    #[derive(Clone, PartialEq, ::prost::Message)]
    pub struct TxnRequest {
        #[prost(message, repeated, tag = "1")]
        pub compare: Vec<Compare>,
        #[prost(message, repeated, tag = "2")]
        pub success: Vec<RequestOp>,
        #[prost(message, repeated, tag = "3")]
        pub failure: Vec<RequestOp>,
    }

    #[derive(Clone, PartialEq, ::prost::Message)]
    pub struct TxnResponse {
        #[prost(message, optional, tag = "1")]
        pub header: Option<ResponseHeader>,
        #[prost(bool, tag = "2")]
        pub succeeded: bool,
        #[prost(message, repeated, tag = "3")]
        pub responses: Vec<ResponseOp>,
    }

    #[derive(Clone, PartialEq, ::prost::Message)]
    pub struct CompactionRequest {
        #[prost(int64, tag = "1")]
        pub revision: i64,
        #[prost(bool, tag = "2")]
        pub physical: bool,
    }

    #[derive(Clone, PartialEq, ::prost::Message)]
    pub struct CompactionResponse {
        #[prost(message, optional, tag = "1")]
        pub header: Option<ResponseHeader>,
    }

    #[derive(Clone, PartialEq, ::prost::Message)]
    pub struct HashResponse {
        #[prost(message, optional, tag = "1")]
        pub header: Option<ResponseHeader>,
        #[prost(uint32, tag = "2")]
        pub hash: u32,
    }

    #[derive(Clone, PartialEq, ::prost::Message)]
    pub struct HashKvResponse {
        #[prost(message, optional, tag = "1")]
        pub header: Option<ResponseHeader>,
        #[prost(uint32, tag = "2")]
        pub hash: u32,
        #[prost(int64, tag = "3")]
        pub compact_revision: i64,
    }

    #[derive(Clone, PartialEq, ::prost::Message)]
    pub struct LeaseGrantRequest {
        #[prost(int64, tag = "1")]
        pub ttl: i64,
        #[prost(int64, tag = "2")]
        pub id: i64,
    }

    #[derive(Clone, PartialEq, ::prost::Message)]
    pub struct LeaseGrantResponse {
        #[prost(message, optional, tag = "1")]
        pub header: Option<ResponseHeader>,
        #[prost(int64, tag = "2")]
        pub id: i64,
        #[prost(int64, tag = "3")]
        pub ttl: i64,
        #[prost(string, tag = "4")]
        pub error: String,
    }

    #[derive(Clone, PartialEq, ::prost::Message)]
    pub struct LeaseRevokeResponse {
        #[prost(message, optional, tag = "1")]
        pub header: Option<ResponseHeader>,
    }

    #[derive(Clone, PartialEq, ::prost::Message)]
    pub struct LeaseKeepAliveResponse {
        #[prost(message, optional, tag = "1")]
        pub header: Option<ResponseHeader>,
        #[prost(int64, tag = "2")]
        pub id: i64,
        #[prost(int64, tag = "3")]
        pub ttl: i64,
    }

    #[derive(Clone, PartialEq, ::prost::Message)]
    pub struct LeaseTimeToLiveResponse {
        #[prost(message, optional, tag = "1")]
        pub header: Option<ResponseHeader>,
        #[prost(int64, tag = "2")]
        pub id: i64,
        #[prost(int64, tag = "3")]
        pub ttl: i64,
        #[prost(int64, tag = "4")]
        pub granted_ttl: i64,
        #[prost(bytes = "vec", repeated, tag = "5")]
        pub keys: Vec<Vec<u8>>,
    }

    #[derive(Clone, PartialEq, ::prost::Message)]
    pub struct LeaseStatus {
        #[prost(int64, tag = "1")]
        pub id: i64,
    }

    #[derive(Clone, PartialEq, ::prost::Message)]
    pub struct LeaseLeasesResponse {
        #[prost(message, optional, tag = "1")]
        pub header: Option<ResponseHeader>,
        #[prost(message, repeated, tag = "2")]
        pub leases: Vec<LeaseStatus>,
    }

    #[derive(Clone, PartialEq, ::prost::Message)]
    pub struct WatchCreateRequest {
        #[prost(bytes = "vec", tag = "1")]
        pub key: Vec<u8>,
        #[prost(bytes = "vec", tag = "2")]
        pub range_end: Vec<u8>,
        #[prost(int64, tag = "3")]
        pub start_revision: i64,
        #[prost(bool, tag = "4")]
        pub progress_notify: bool,
        #[prost(enumeration = "watch_create_request::FilterType", repeated, tag = "5")]
        pub filters: Vec<i32>,
        #[prost(bool, tag = "6")]
        pub prev_kv: bool,
        #[prost(int64, tag = "7")]
        pub watch_id: i64,
        #[prost(bool, tag = "8")]
        pub fragment: bool,
    }

    pub mod watch_create_request {
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, ::prost::Enumeration)]
        #[repr(i32)]
        pub enum FilterType {
            Noput = 0,
            Nodelete = 1,
        }
    }

    #[derive(Clone, PartialEq, ::prost::Message)]
    pub struct WatchResponse {
        #[prost(message, optional, tag = "1")]
        pub header: Option<ResponseHeader>,
        #[prost(int64, tag = "2")]
        pub watch_id: i64,
        #[prost(bool, tag = "3")]
        pub created: bool,
        #[prost(bool, tag = "4")]
        pub canceled: bool,
        #[prost(int64, tag = "5")]
        pub compact_revision: i64,
        #[prost(string, tag = "6")]
        pub cancel_reason: String,
        #[prost(bool, tag = "7")]
        pub fragment: bool,
        #[prost(message, repeated, tag = "11")]
        pub events: Vec<mvccpb::Event>,
    }
}

//! State shared by every service of one client listener, and the checks every RPC passes
//! before it reaches the node: metadata (`hasleader`, `token`), learner restrictions, and the
//! response-header rules of etcd-v3-spec.md §4.1.

use std::sync::Arc;

use tonic::Status;
use tonic::metadata::MetadataMap;

use crate::errors::EtcdError;
use crate::metrics::GrpcMetrics;
use crate::node::{Caller, EtcdNode, NodeState};
use crate::pb::etcdserverpb::{ResponseHeader, ResponseOp, response_op::Response};
use crate::shutdown::Shutdown;
use crate::validate::Limits;

/// Metadata key: fail at once with "no leader" when the member has none (spec §1).
pub const MD_REQUIRE_LEADER: &str = "hasleader";
/// Metadata key: the auth token from `Authenticate`.
pub const MD_TOKEN: &str = "token";
/// The two keys as prebuilt header names: a lookup with a `&str` parses the name each time.
const REQUIRE_LEADER_NAME: http::HeaderName = http::HeaderName::from_static(MD_REQUIRE_LEADER);
const TOKEN_NAME: http::HeaderName = http::HeaderName::from_static(MD_TOKEN);

/// What every service of a listener shares.
pub struct Frontend<N> {
    /// The node every request goes to.
    pub node: Arc<N>,
    /// Request limits from the flags.
    pub limits: Limits,
    /// gRPC counters for `/metrics`.
    pub metrics: Arc<GrpcMetrics>,
    /// Fires when the server shuts down; long-lived streams end on it.
    pub shutdown: Shutdown,
    /// Election timeout, the period of the stream leader checks.
    pub election_timeout: std::time::Duration,
}

/// Whether an RPC may run on a learner (spec §4.10: only Status and serializable Range).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LearnerPolicy {
    /// Served by learners too.
    Allowed,
    /// Refused on learners with "rpc not supported for learner".
    Refused,
}

/// What admission reads of a request's metadata, taken out of its headers (so a caller can
/// drop the headers before it waits; the thin path holds this per in-flight stream).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestMeta {
    /// `hasleader: true` was sent.
    pub require_leader: bool,
    /// The `token` value, if any (and valid ASCII).
    pub token: Option<String>,
}

impl RequestMeta {
    /// The admission metadata of a request's headers.
    pub fn of(headers: &http::HeaderMap) -> RequestMeta {
        RequestMeta {
            require_leader: headers
                .get(REQUIRE_LEADER_NAME)
                .and_then(|v| v.to_str().ok())
                == Some("true"),
            token: headers
                .get(TOKEN_NAME)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
        }
    }
}

impl<N: EtcdNode> Frontend<N> {
    /// Admits a request: enforces `hasleader` and the learner policy and extracts the caller.
    pub fn admit(
        &self,
        md: &MetadataMap,
        learner: LearnerPolicy,
    ) -> Result<(Caller, NodeState), Status> {
        self.admit_meta(RequestMeta::of(md.as_ref()), learner)
    }

    /// [`Frontend::admit`] with the metadata already taken out of the headers.
    pub fn admit_meta(
        &self,
        meta: RequestMeta,
        learner: LearnerPolicy,
    ) -> Result<(Caller, NodeState), Status> {
        let state = self.node.state();
        if meta.require_leader && state.leader == 0 {
            return Err(EtcdError::NoLeader.into());
        }
        if state.is_learner && learner == LearnerPolicy::Refused {
            return Err(EtcdError::NotSupportedForLearner.into());
        }
        Ok((Caller { token: meta.token }, state))
    }
}

/// Whether the request carries `hasleader: true`.
pub fn requires_leader(md: &MetadataMap) -> bool {
    md.as_ref()
        .get(REQUIRE_LEADER_NAME)
        .and_then(|v| v.to_str().ok())
        == Some("true")
}

/// Fills a top-level response header: the node's revision and term, this member's IDs
/// (spec §4.1). A node that left the header empty gets the current revision and term.
pub fn fill_header(header: &mut Option<ResponseHeader>, state: &NodeState) {
    let h = header.get_or_insert_with(|| ResponseHeader {
        revision: state.revision,
        raft_term: state.raft_term,
        ..Default::default()
    });
    h.cluster_id = state.cluster_id;
    h.member_id = state.member_id;
    if h.raft_term == 0 {
        h.raft_term = state.raft_term;
    }
}

/// Header of a Cluster RPC response: IDs and term, no revision (spec §4.1).
pub fn fill_cluster_header(header: &mut Option<ResponseHeader>, state: &NodeState) {
    fill_header(header, state);
    if let Some(h) = header {
        h.revision = 0;
    }
}

/// Nested txn responses carry only `revision` (spec §4.1, §11 pitfall 1), at every depth.
pub fn strip_nested_headers(responses: &mut [ResponseOp]) {
    for r in responses {
        let header = match &mut r.response {
            Some(Response::ResponseRange(x)) => &mut x.header,
            Some(Response::ResponsePut(x)) => &mut x.header,
            Some(Response::ResponseDeleteRange(x)) => &mut x.header,
            Some(Response::ResponseTxn(x)) => {
                strip_nested_headers(&mut x.responses);
                &mut x.header
            }
            None => continue,
        };
        let revision = header.as_ref().map_or(0, |h| h.revision);
        *header = Some(ResponseHeader {
            revision,
            ..Default::default()
        });
    }
}

/// Shared handle type used by the services.
pub type Shared<N> = Arc<Frontend<N>>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::etcdserverpb::{PutResponse, RangeResponse, TxnResponse};

    fn state() -> NodeState {
        NodeState {
            member_id: 7,
            cluster_id: 9,
            leader: 7,
            raft_term: 3,
            revision: 42,
            ..Default::default()
        }
    }

    #[test]
    fn top_level_headers_get_ids() {
        let mut h = Some(ResponseHeader {
            revision: 5,
            raft_term: 2,
            ..Default::default()
        });
        fill_header(&mut h, &state());
        assert_eq!(
            h,
            Some(ResponseHeader {
                cluster_id: 9,
                member_id: 7,
                revision: 5,
                raft_term: 2
            })
        );
        let mut none = None;
        fill_header(&mut none, &state());
        assert_eq!(
            none,
            Some(ResponseHeader {
                cluster_id: 9,
                member_id: 7,
                revision: 42,
                raft_term: 3
            })
        );
        let mut c = Some(ResponseHeader {
            revision: 5,
            ..Default::default()
        });
        fill_cluster_header(&mut c, &state());
        assert_eq!(
            c,
            Some(ResponseHeader {
                cluster_id: 9,
                member_id: 7,
                revision: 0,
                raft_term: 3
            })
        );
    }

    #[test]
    fn nested_headers_keep_only_revision() {
        let full = ResponseHeader {
            cluster_id: 1,
            member_id: 2,
            revision: 8,
            raft_term: 4,
        };
        let mut ops = vec![
            ResponseOp {
                response: Some(Response::ResponsePut(PutResponse {
                    header: Some(full),
                    prev_kv: None,
                })),
            },
            ResponseOp {
                response: Some(Response::ResponseTxn(TxnResponse {
                    header: Some(full),
                    succeeded: true,
                    responses: vec![ResponseOp {
                        response: Some(Response::ResponseRange(RangeResponse {
                            header: Some(full),
                            ..Default::default()
                        })),
                    }],
                })),
            },
        ];
        strip_nested_headers(&mut ops);
        let only_rev = Some(ResponseHeader {
            revision: 8,
            ..Default::default()
        });
        let Some(Response::ResponsePut(p)) = &ops[0].response else {
            panic!()
        };
        assert_eq!(p.header, only_rev);
        let Some(Response::ResponseTxn(t)) = &ops[1].response else {
            panic!()
        };
        assert_eq!(t.header, only_rev);
        let Some(Response::ResponseRange(r)) = &t.responses[0].response else {
            panic!()
        };
        assert_eq!(r.header, only_rev);
    }

    #[test]
    fn hasleader_metadata() {
        let mut md = MetadataMap::new();
        assert!(!requires_leader(&md));
        md.insert(MD_REQUIRE_LEADER, "true".parse().unwrap());
        assert!(requires_leader(&md));
    }
}

//! The one table from ringkv's API-level errors to etcd's gRPC status codes and exact messages
//! (etcd-v3-spec.md §5), and from gRPC codes to the gateway's HTTP statuses (§7).
//!
//! clientv3 maps known message strings back to typed errors and etcdctl prints them, so every
//! message here must match etcd 3.4.23 byte for byte, including the `etcdserver: ` prefix and
//! etcd's mixed spellings. Nothing else in ringkv builds a `tonic::Status` from a string.

use tonic::{Code, Status};

/// An error as a client sees it. The node (raft, MVCC, leases, auth) reports its failures as one
/// of these; the front end's own validation produces them too.
///
/// Caller mistakes (invalid argument, not found, ...), transient conditions (no leader, timeout:
/// clientv3 retries those on `Unavailable`) and server faults ([`EtcdError::Corrupt`],
/// [`EtcdError::Internal`]) stay distinct variants.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.message())]
pub enum EtcdError {
    /// Empty key in a KV request or a txn compare.
    EmptyKey,
    /// `ignore_value`/`ignore_lease` on a missing key; an empty `RequestOp`.
    KeyNotFound,
    /// `ignore_value` together with a value.
    ValueProvided,
    /// `ignore_lease` together with a lease.
    LeaseProvided,
    /// More than max-txn-ops operations in one branch of a txn.
    TooManyOps,
    /// Two puts of a key, or a put inside a delete range, in one txn branch.
    DuplicateKey,
    /// Revision below the compaction revision.
    Compacted,
    /// Revision above the current revision.
    FutureRev,
    /// NOSPACE alarm raised: writes refused.
    NoSpace,
    /// Unknown lease in Revoke or Put.
    LeaseNotFound,
    /// Grant with an ID in use.
    LeaseExist,
    /// Grant with TTL above 9e9 s.
    LeaseTtlTooLarge,
    /// The watch stream was canceled by the server.
    WatchCanceled,
    /// MemberAdd with an ID in use.
    MemberExist,
    /// MemberAdd/Update with peer URLs in use.
    PeerUrlExist,
    /// Reconfiguration would leave too few started members.
    MemberNotEnoughStarted,
    /// MemberAdd/Update with unparsable URLs.
    MemberBadUrls,
    /// Unknown member ID.
    MemberNotFound,
    /// MemberPromote of a voter.
    MemberNotLearner,
    /// MemberPromote of a learner that lags the leader.
    LearnerNotReady,
    /// More than one learner.
    TooManyLearners,
    /// The marshalled raft request exceeds max-request-bytes.
    RequestTooLarge,
    /// The committed index runs too far ahead of the applied index.
    TooManyRequests,
    /// AuthEnable without user `root`.
    RootUserNotExist,
    /// AuthEnable while `root` lacks role `root`.
    RootRoleNotExist,
    /// UserAdd of an existing user.
    UserAlreadyExist,
    /// Empty user name; also: no token while auth is enabled.
    UserEmpty,
    /// Unknown user.
    UserNotFound,
    /// RoleAdd of an existing role.
    RoleAlreadyExist,
    /// Unknown role.
    RoleNotFound,
    /// Empty role name.
    RoleEmpty,
    /// Authenticate with bad credentials.
    AuthFailed,
    /// The user lacks the permission.
    PermissionDenied,
    /// UserRevokeRole of a role the user does not have.
    RoleNotGranted,
    /// RoleRevokePermission of a permission the role does not have.
    PermissionNotGranted,
    /// Auth operation that needs auth enabled.
    AuthNotEnabled,
    /// Stale or unknown token.
    InvalidAuthToken,
    /// Invalid auth management request (e.g. revoking root's root role).
    InvalidAuthMgmt,
    /// The request was authorized against an outdated auth store.
    AuthOldRevision,
    /// The member has no leader (`hasleader` metadata, stream leader loss).
    NoLeader,
    /// MoveLeader sent to a follower.
    NotLeader,
    /// The leader changed while the request was in flight.
    LeaderChanged,
    /// The cluster version does not support the request.
    NotCapable,
    /// The server is shutting down.
    Stopped,
    /// A proposal or ReadIndex did not complete within the request timeout.
    Timeout,
    /// Timeout, probably because the previous leader failed.
    TimeoutDueToLeaderFail,
    /// Timeout, probably because the connection to the leader was lost.
    TimeoutDueToConnectionLost,
    /// Timeout waiting for the applied index to catch up (lease operations).
    TimeoutWaitAppliedIndex,
    /// Strict reconfiguration check refused a membership change.
    UnhealthyCluster,
    /// CORRUPT alarm raised.
    Corrupt,
    /// The RPC is not served by a learner.
    NotSupportedForLearner,
    /// MoveLeader to an unknown or non-voting member.
    BadLeaderTransferee,
    /// Election `Leader` on an election with no leader.
    ElectionNoLeader,
    /// Election `Proclaim` by a candidate that is not the leader.
    ElectionNotLeader,
    /// A gRPC message above the receive limit (`found` bytes, `limit` bytes).
    MessageTooLarge {
        /// Size of the rejected message.
        found: usize,
        /// The receive limit (max-request-bytes + 512 KiB).
        limit: usize,
    },
    /// A request message that is not valid protobuf for its type (grpc-go's wording; the
    /// decoder's detail differs from Go's).
    Unmarshal(String),
    /// An RPC ringkv does not serve (yet).
    Unimplemented(&'static str),
    /// grpc.health.v1 Check for a service other than `""`.
    HealthUnknownService,
    /// A gRPC path naming a service the server does not register (grpc-go's wording).
    UnknownService(String),
    /// A gRPC path naming an unknown method of a registered service (grpc-go's wording).
    UnknownMethod {
        /// Method name.
        method: String,
        /// Fully qualified service name.
        service: String,
    },
    /// A server-side failure with no etcd equivalent (code Unknown, the text as given). Storage
    /// corruption and I/O failures that reach a client end up here, named by the engine.
    Internal(String),
}

impl EtcdError {
    /// etcd's gRPC code and exact message for this error (spec §5).
    pub fn code(&self) -> Code {
        use EtcdError::*;
        match self {
            EmptyKey | KeyNotFound | ValueProvided | LeaseProvided | TooManyOps | DuplicateKey
            | MemberBadUrls | RequestTooLarge | UserEmpty | RoleEmpty | AuthFailed
            | InvalidAuthMgmt | AuthOldRevision => Code::InvalidArgument,
            Compacted | FutureRev | LeaseTtlTooLarge => Code::OutOfRange,
            NoSpace | TooManyRequests | MessageTooLarge { .. } => Code::ResourceExhausted,
            LeaseNotFound | MemberNotFound | HealthUnknownService => Code::NotFound,
            LeaseExist
            | MemberExist
            | PeerUrlExist
            | MemberNotEnoughStarted
            | MemberNotLearner
            | LearnerNotReady
            | TooManyLearners
            | RootUserNotExist
            | RootRoleNotExist
            | UserAlreadyExist
            | UserNotFound
            | RoleAlreadyExist
            | RoleNotFound
            | RoleNotGranted
            | PermissionNotGranted
            | AuthNotEnabled
            | NotLeader
            | BadLeaderTransferee => Code::FailedPrecondition,
            WatchCanceled => Code::Cancelled,
            PermissionDenied => Code::PermissionDenied,
            InvalidAuthToken => Code::Unauthenticated,
            NoLeader
            | LeaderChanged
            | NotCapable
            | Stopped
            | Timeout
            | TimeoutDueToLeaderFail
            | TimeoutDueToConnectionLost
            | TimeoutWaitAppliedIndex
            | UnhealthyCluster
            | NotSupportedForLearner => Code::Unavailable,
            Corrupt => Code::DataLoss,
            Unmarshal(_) => Code::Internal,
            Unimplemented(_) | UnknownService(_) | UnknownMethod { .. } => Code::Unimplemented,
            ElectionNoLeader | ElectionNotLeader | Internal(_) => Code::Unknown,
        }
    }

    /// The exact message etcd 3.4.23 sends for this error.
    pub fn message(&self) -> std::borrow::Cow<'static, str> {
        use EtcdError::*;
        let s: &'static str = match self {
            EmptyKey => "etcdserver: key is not provided",
            KeyNotFound => "etcdserver: key not found",
            ValueProvided => "etcdserver: value is provided",
            LeaseProvided => "etcdserver: lease is provided",
            TooManyOps => "etcdserver: too many operations in txn request",
            DuplicateKey => "etcdserver: duplicate key given in txn request",
            Compacted => "etcdserver: mvcc: required revision has been compacted",
            FutureRev => "etcdserver: mvcc: required revision is a future revision",
            NoSpace => "etcdserver: mvcc: database space exceeded",
            LeaseNotFound => "etcdserver: requested lease not found",
            LeaseExist => "etcdserver: lease already exists",
            LeaseTtlTooLarge => "etcdserver: too large lease TTL",
            WatchCanceled => "etcdserver: watch canceled",
            MemberExist => "etcdserver: member ID already exist",
            PeerUrlExist => "etcdserver: Peer URLs already exists",
            MemberNotEnoughStarted => {
                "etcdserver: re-configuration failed due to not enough started members"
            }
            MemberBadUrls => "etcdserver: given member URLs are invalid",
            MemberNotFound => "etcdserver: member not found",
            MemberNotLearner => "etcdserver: can only promote a learner member",
            LearnerNotReady => {
                "etcdserver: can only promote a learner member which is in sync with leader"
            }
            TooManyLearners => "etcdserver: too many learner members in cluster",
            RequestTooLarge => "etcdserver: request is too large",
            TooManyRequests => "etcdserver: too many requests",
            RootUserNotExist => "etcdserver: root user does not exist",
            RootRoleNotExist => "etcdserver: root user does not have root role",
            UserAlreadyExist => "etcdserver: user name already exists",
            UserEmpty => "etcdserver: user name is empty",
            UserNotFound => "etcdserver: user name not found",
            RoleAlreadyExist => "etcdserver: role name already exists",
            RoleNotFound => "etcdserver: role name not found",
            RoleEmpty => "etcdserver: role name is empty",
            AuthFailed => "etcdserver: authentication failed, invalid user ID or password",
            PermissionDenied => "etcdserver: permission denied",
            RoleNotGranted => "etcdserver: role is not granted to the user",
            PermissionNotGranted => "etcdserver: permission is not granted to the role",
            AuthNotEnabled => "etcdserver: authentication is not enabled",
            InvalidAuthToken => "etcdserver: invalid auth token",
            InvalidAuthMgmt => "etcdserver: invalid auth management",
            AuthOldRevision => "etcdserver: revision of auth store is old",
            NoLeader => "etcdserver: no leader",
            NotLeader => "etcdserver: not leader",
            LeaderChanged => "etcdserver: leader changed",
            NotCapable => "etcdserver: not capable",
            Stopped => "etcdserver: server stopped",
            Timeout => "etcdserver: request timed out",
            TimeoutDueToLeaderFail => {
                "etcdserver: request timed out, possibly due to previous leader failure"
            }
            TimeoutDueToConnectionLost => {
                "etcdserver: request timed out, possibly due to connection lost"
            }
            TimeoutWaitAppliedIndex => {
                "etcdserver: request timed out, waiting for the applied index took too long"
            }
            UnhealthyCluster => "etcdserver: unhealthy cluster",
            Corrupt => "etcdserver: corrupt cluster",
            NotSupportedForLearner => "etcdserver: rpc not supported for learner",
            BadLeaderTransferee => "etcdserver: bad leader transferee",
            ElectionNoLeader => "election: no leader",
            ElectionNotLeader => "election: not leader",
            HealthUnknownService => "unknown service",
            MessageTooLarge { found, limit } => {
                return format!("grpc: received message larger than max ({found} vs. {limit})")
                    .into();
            }
            Unimplemented(method) => {
                return format!("ringkv: {method} is not implemented yet").into();
            }
            Internal(text) => return text.clone().into(),
            Unmarshal(detail) => {
                return format!("grpc: error unmarshalling request: {detail}").into();
            }
            UnknownService(service) => return format!("unknown service {service}").into(),
            UnknownMethod { method, service } => {
                return format!("unknown method {method} for service {service}").into();
            }
        };
        s.into()
    }

    /// The gRPC status a client receives.
    pub fn to_status(&self) -> Status {
        Status::new(self.code(), self.message())
    }
}

impl From<EtcdError> for Status {
    fn from(e: EtcdError) -> Status {
        e.to_status()
    }
}

/// Watch `cancel_reason` strings (sent in a response, not as a status; spec §4.8).
pub mod cancel_reason {
    /// A create request named a watch ID already in use on the stream.
    pub const DUPLICATE_WATCH_ID: &str = "mvcc: duplicate watch ID provided on the WatchStream";
    /// A create request with `key >= range_end`.
    pub const EMPTY_RANGE: &str = "mvcc: watcher range is empty";
}

/// HTTP status of a gateway error response for gRPC `code` (grpc-gateway v1 mapping, spec §7).
pub fn http_status(code: Code) -> http::StatusCode {
    use http::StatusCode as H;
    match code {
        Code::Ok => H::OK,
        Code::Cancelled => H::REQUEST_TIMEOUT,
        Code::Unknown => H::INTERNAL_SERVER_ERROR,
        Code::InvalidArgument => H::BAD_REQUEST,
        Code::DeadlineExceeded => H::GATEWAY_TIMEOUT,
        Code::NotFound => H::NOT_FOUND,
        Code::AlreadyExists => H::CONFLICT,
        Code::PermissionDenied => H::FORBIDDEN,
        Code::Unauthenticated => H::UNAUTHORIZED,
        Code::ResourceExhausted => H::TOO_MANY_REQUESTS,
        Code::FailedPrecondition => H::PRECONDITION_FAILED,
        Code::Aborted => H::CONFLICT,
        Code::OutOfRange => H::BAD_REQUEST,
        Code::Unimplemented => H::NOT_IMPLEMENTED,
        Code::Internal => H::INTERNAL_SERVER_ERROR,
        Code::Unavailable => H::SERVICE_UNAVAILABLE,
        Code::DataLoss => H::INTERNAL_SERVER_ERROR,
    }
}

/// tonic's own text for a message over the decoding limit; [`rewrite_tonic_status`] turns it
/// into grpc-go's wording, which etcd clients see.
const TONIC_TOO_LARGE_PREFIX: &str = "Error, decoded message length too large: found ";

/// The status grpc-go gives a call to a path no registered service serves: `path` is
/// `/package.Service/Method`; `known_services` are the registered services.
pub fn unknown_path(path: &str, known_services: &[&str]) -> EtcdError {
    let trimmed = path.strip_prefix('/').unwrap_or(path);
    let (service, method) = trimmed.split_once('/').unwrap_or((trimmed, ""));
    if known_services.contains(&service) {
        EtcdError::UnknownMethod {
            method: method.to_string(),
            service: service.to_string(),
        }
    } else {
        EtcdError::UnknownService(service.to_string())
    }
}

/// prost's text for a request that does not decode (tonic sends it as `Internal`).
const TONIC_DECODE_PREFIX: &str = "failed to decode Protobuf message: ";

/// Rewrites statuses that tonic produces by itself into etcd's (grpc-go's) code and message;
/// other statuses are returned unchanged. Returns `None` when no rewrite applies.
pub fn rewrite_tonic_status(code: Code, message: &str) -> Option<EtcdError> {
    if code == Code::Internal {
        let detail = message.strip_prefix(TONIC_DECODE_PREFIX)?;
        return Some(EtcdError::Unmarshal(detail.to_string()));
    }
    if code != Code::OutOfRange {
        return None;
    }
    // "Error, decoded message length too large: found {found} bytes, the limit is: {limit} bytes"
    let rest = message.strip_prefix(TONIC_TOO_LARGE_PREFIX)?;
    let (found, rest) = rest.split_once(" bytes, the limit is: ")?;
    let limit = rest.strip_suffix(" bytes")?;
    Some(EtcdError::MessageTooLarge {
        found: found.parse().ok()?,
        limit: limit.parse().ok()?,
    })
}

#[cfg(test)]
mod tests {
    use super::EtcdError::*;
    use super::*;

    /// Every row of spec §5, as (error, code number, exact message).
    #[test]
    fn table_matches_spec_section_5() {
        let rows: &[(EtcdError, i32, &str)] = &[
            (EmptyKey, 3, "etcdserver: key is not provided"),
            (KeyNotFound, 3, "etcdserver: key not found"),
            (ValueProvided, 3, "etcdserver: value is provided"),
            (LeaseProvided, 3, "etcdserver: lease is provided"),
            (
                TooManyOps,
                3,
                "etcdserver: too many operations in txn request",
            ),
            (
                DuplicateKey,
                3,
                "etcdserver: duplicate key given in txn request",
            ),
            (
                Compacted,
                11,
                "etcdserver: mvcc: required revision has been compacted",
            ),
            (
                FutureRev,
                11,
                "etcdserver: mvcc: required revision is a future revision",
            ),
            (NoSpace, 8, "etcdserver: mvcc: database space exceeded"),
            (LeaseNotFound, 5, "etcdserver: requested lease not found"),
            (LeaseExist, 9, "etcdserver: lease already exists"),
            (LeaseTtlTooLarge, 11, "etcdserver: too large lease TTL"),
            (WatchCanceled, 1, "etcdserver: watch canceled"),
            (MemberExist, 9, "etcdserver: member ID already exist"),
            (PeerUrlExist, 9, "etcdserver: Peer URLs already exists"),
            (
                MemberNotEnoughStarted,
                9,
                "etcdserver: re-configuration failed due to not enough started members",
            ),
            (
                MemberBadUrls,
                3,
                "etcdserver: given member URLs are invalid",
            ),
            (MemberNotFound, 5, "etcdserver: member not found"),
            (
                MemberNotLearner,
                9,
                "etcdserver: can only promote a learner member",
            ),
            (
                LearnerNotReady,
                9,
                "etcdserver: can only promote a learner member which is in sync with leader",
            ),
            (
                TooManyLearners,
                9,
                "etcdserver: too many learner members in cluster",
            ),
            (RequestTooLarge, 3, "etcdserver: request is too large"),
            (TooManyRequests, 8, "etcdserver: too many requests"),
            (RootUserNotExist, 9, "etcdserver: root user does not exist"),
            (
                RootRoleNotExist,
                9,
                "etcdserver: root user does not have root role",
            ),
            (UserAlreadyExist, 9, "etcdserver: user name already exists"),
            (UserNotFound, 9, "etcdserver: user name not found"),
            (UserEmpty, 3, "etcdserver: user name is empty"),
            (RoleAlreadyExist, 9, "etcdserver: role name already exists"),
            (RoleNotFound, 9, "etcdserver: role name not found"),
            (RoleEmpty, 3, "etcdserver: role name is empty"),
            (
                AuthFailed,
                3,
                "etcdserver: authentication failed, invalid user ID or password",
            ),
            (PermissionDenied, 7, "etcdserver: permission denied"),
            (
                RoleNotGranted,
                9,
                "etcdserver: role is not granted to the user",
            ),
            (
                PermissionNotGranted,
                9,
                "etcdserver: permission is not granted to the role",
            ),
            (
                AuthNotEnabled,
                9,
                "etcdserver: authentication is not enabled",
            ),
            (InvalidAuthToken, 16, "etcdserver: invalid auth token"),
            (InvalidAuthMgmt, 3, "etcdserver: invalid auth management"),
            (
                AuthOldRevision,
                3,
                "etcdserver: revision of auth store is old",
            ),
            (NoLeader, 14, "etcdserver: no leader"),
            (NotLeader, 9, "etcdserver: not leader"),
            (LeaderChanged, 14, "etcdserver: leader changed"),
            (NotCapable, 14, "etcdserver: not capable"),
            (Stopped, 14, "etcdserver: server stopped"),
            (Timeout, 14, "etcdserver: request timed out"),
            (
                TimeoutDueToLeaderFail,
                14,
                "etcdserver: request timed out, possibly due to previous leader failure",
            ),
            (
                TimeoutDueToConnectionLost,
                14,
                "etcdserver: request timed out, possibly due to connection lost",
            ),
            (
                TimeoutWaitAppliedIndex,
                14,
                "etcdserver: request timed out, waiting for the applied index took too long",
            ),
            (UnhealthyCluster, 14, "etcdserver: unhealthy cluster"),
            (Corrupt, 15, "etcdserver: corrupt cluster"),
            (
                NotSupportedForLearner,
                14,
                "etcdserver: rpc not supported for learner",
            ),
            (BadLeaderTransferee, 9, "etcdserver: bad leader transferee"),
            (ElectionNoLeader, 2, "election: no leader"),
            (ElectionNotLeader, 2, "election: not leader"),
            (
                MessageTooLarge {
                    found: 3000000,
                    limit: 2097152,
                },
                8,
                "grpc: received message larger than max (3000000 vs. 2097152)",
            ),
            (
                Internal("context deadline exceeded".into()),
                2,
                "context deadline exceeded",
            ),
        ];
        for (err, code, msg) in rows {
            let status = err.to_status();
            assert_eq!(status.code() as i32, *code, "{err:?}");
            assert_eq!(status.message(), *msg, "{err:?}");
            assert_eq!(err.to_string(), *msg);
        }
    }

    #[test]
    fn gateway_http_statuses_match_spec_section_7() {
        let rows = [
            (Code::Ok, 200),
            (Code::Cancelled, 408),
            (Code::Unknown, 500),
            (Code::InvalidArgument, 400),
            (Code::DeadlineExceeded, 504),
            (Code::NotFound, 404),
            (Code::AlreadyExists, 409),
            (Code::PermissionDenied, 403),
            (Code::Unauthenticated, 401),
            (Code::ResourceExhausted, 429),
            (Code::FailedPrecondition, 412),
            (Code::Aborted, 409),
            (Code::OutOfRange, 400),
            (Code::Unimplemented, 501),
            (Code::Internal, 500),
            (Code::Unavailable, 503),
            (Code::DataLoss, 500),
        ];
        for (code, http) in rows {
            assert_eq!(http_status(code).as_u16(), http, "{code:?}");
        }
    }

    #[test]
    fn tonic_size_error_becomes_grpc_go_wording() {
        let msg = "Error, decoded message length too large: found 3145767 bytes, the limit is: 2097152 bytes";
        let e = rewrite_tonic_status(Code::OutOfRange, msg).unwrap();
        assert_eq!(e.code(), Code::ResourceExhausted);
        assert_eq!(
            e.message(),
            "grpc: received message larger than max (3145767 vs. 2097152)"
        );
        assert_eq!(
            rewrite_tonic_status(Code::OutOfRange, "something else"),
            None
        );
        assert_eq!(rewrite_tonic_status(Code::Unknown, msg), None);
    }
}

//! The errors Keel reports to clients, with etcd's exact gRPC codes and
//! messages.
//!
//! etcd's clients recognise server errors by their message text (Go
//! `clientv3` looks every status message up in a table, and other clients
//! compare strings such as `etcdserver: invalid auth token` to decide when to
//! re-authenticate), so each message here is byte for byte the one etcd
//! sends, and each code is the one etcd pairs it with. The gRPC layer turns
//! every client-visible failure into a status through this one table.
//!
//! Source: etcd's `api/v3rpc/rpctypes/error.go`. Where etcd 3.5 and 3.6
//! disagree we follow 3.6 and later, which moved three errors from
//! `Unavailable` to `FailedPrecondition` so that clients stop retrying
//! requests that cannot succeed on a retry (see [`EtcdError::NotCapable`],
//! [`EtcdError::NotSupportedForLearner`] and
//! [`EtcdError::ClusterVersionUnavailable`]).

use std::fmt;

use tonic::Code;

/// Declares [`EtcdError`] and its table from one list, so that the variant,
/// its code and its message can never drift apart.
macro_rules! etcd_errors {
    ($(
        $(#[$attribute:meta])*
        $variant:ident => $code:ident, $message:literal;
    )*) => {
        /// An error etcd defines for its clients. See the [module docs](self).
        ///
        /// Each variant's doc names etcd's Go variable (`ErrGRPC…`) for
        /// cross-reference.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[non_exhaustive]
        pub enum EtcdError {
            $(
                $(#[$attribute])*
                $variant,
            )*
        }

        impl EtcdError {
            /// Every error, in declaration order.
            pub const ALL: &'static [EtcdError] = &[$(EtcdError::$variant,)*];

            /// The gRPC status code etcd sends with this error.
            #[must_use]
            pub const fn code(self) -> Code {
                match self {
                    $(EtcdError::$variant => Code::$code,)*
                }
            }

            /// The status message etcd sends, always starting `etcdserver: `.
            #[must_use]
            pub const fn message(self) -> &'static str {
                match self {
                    $(EtcdError::$variant => $message,)*
                }
            }
        }
    };
}

etcd_errors! {
    // Request checks and the key-value store.

    /// `ErrGRPCEmptyKey`: a request names no key.
    EmptyKey => InvalidArgument, "etcdserver: key is not provided";
    /// `ErrGRPCKeyNotFound`: a put with `ignore_value` or `ignore_lease` on a
    /// key that does not exist.
    KeyNotFound => InvalidArgument, "etcdserver: key not found";
    /// `ErrGRPCValueProvided`: a put sets both `ignore_value` and a value.
    ValueProvided => InvalidArgument, "etcdserver: value is provided";
    /// `ErrGRPCLeaseProvided`: a put sets both `ignore_lease` and a lease.
    LeaseProvided => InvalidArgument, "etcdserver: lease is provided";
    /// `ErrGRPCTooManyOps`: a transaction has more operations than
    /// `--max-txn-ops` allows.
    TooManyOperations => InvalidArgument, "etcdserver: too many operations in txn request";
    /// `ErrGRPCDuplicateKey`: a transaction writes the same key twice.
    DuplicateKey => InvalidArgument, "etcdserver: duplicate key given in txn request";
    /// `ErrGRPCInvalidClientAPIVersion` (etcd 3.6): the client's API version
    /// metadata is not valid.
    InvalidClientApiVersion => InvalidArgument, "etcdserver: invalid client api version";
    /// `ErrGRPCInvalidSortOption` (etcd 3.6): a range names an unknown sort
    /// order or target.
    InvalidSortOption => InvalidArgument, "etcdserver: invalid sort option";
    /// `ErrGRPCCompacted`: the requested revision was compacted away.
    Compacted => OutOfRange, "etcdserver: mvcc: required revision has been compacted";
    /// `ErrGRPCFutureRev`: the requested revision is newer than the store.
    FutureRevision => OutOfRange, "etcdserver: mvcc: required revision is a future revision";
    /// `ErrGRPCNoSpace`: the storage quota is used up (the NOSPACE alarm is
    /// raised) and writes are refused.
    NoSpace => ResourceExhausted, "etcdserver: mvcc: database space exceeded";

    // Leases and watches.

    /// `ErrGRPCLeaseNotFound`: no lease has the given id.
    LeaseNotFound => NotFound, "etcdserver: requested lease not found";
    /// `ErrGRPCLeaseExist`: a grant asks for an id already in use.
    LeaseExists => FailedPrecondition, "etcdserver: lease already exists";
    /// `ErrGRPCLeaseTTLTooLarge`: a grant asks for a TTL above the maximum.
    LeaseTtlTooLarge => OutOfRange, "etcdserver: too large lease TTL";
    /// `ErrGRPCWatchCanceled`: the watch stream was cancelled.
    WatchCanceled => Cancelled, "etcdserver: watch canceled";

    // Cluster membership.

    /// `ErrGRPCMemberExist`: a member with that id is already in the cluster.
    MemberExists => FailedPrecondition, "etcdserver: member ID already exist";
    /// `ErrGRPCPeerURLExist`: another member already uses that peer URL.
    PeerUrlExists => FailedPrecondition, "etcdserver: Peer URLs already exists";
    /// `ErrGRPCMemberNotEnoughStarted`: the change would leave too few
    /// started members for a quorum.
    MemberNotEnoughStarted => FailedPrecondition,
        "etcdserver: re-configuration failed due to not enough started members";
    /// `ErrGRPCMemberBadURLs`: the given peer URLs do not parse.
    MemberBadUrls => InvalidArgument, "etcdserver: given member URLs are invalid";
    /// `ErrGRPCMemberNotFound`: no member has the given id.
    MemberNotFound => NotFound, "etcdserver: member not found";
    /// `ErrGRPCMemberNotLearner`: promote was asked of a voting member.
    MemberNotLearner => FailedPrecondition, "etcdserver: can only promote a learner member";
    /// `ErrGRPCLearnerNotReady`: the learner's log is not yet close enough to
    /// the leader's to promote it.
    LearnerNotReady => FailedPrecondition,
        "etcdserver: can only promote a learner member which is in sync with leader";
    /// `ErrGRPCTooManyLearners`: the cluster already has the maximum number of
    /// learners.
    TooManyLearners => FailedPrecondition, "etcdserver: too many learner members in cluster";
    /// `ErrGRPCClusterIDMismatch`: the request came from a member of another
    /// cluster.
    ClusterIdMismatch => FailedPrecondition, "etcdserver: cluster ID mismatch";

    // Limits.

    /// `ErrGRPCRequestTooLarge`: the request exceeds `--max-request-bytes`.
    RequestTooLarge => InvalidArgument, "etcdserver: request is too large";
    /// `ErrGRPCRequestTooManyRequests`: too many proposals are waiting to be
    /// applied.
    TooManyRequests => ResourceExhausted, "etcdserver: too many requests";

    // Authentication and authorisation.

    /// `ErrGRPCRootUserNotExist`: auth cannot be enabled without a `root` user.
    RootUserNotExist => FailedPrecondition, "etcdserver: root user does not exist";
    /// `ErrGRPCRootRoleNotExist`: auth cannot be enabled while `root` lacks
    /// the `root` role.
    RootRoleNotExist => FailedPrecondition, "etcdserver: root user does not have root role";
    /// `ErrGRPCUserAlreadyExist`.
    UserAlreadyExists => FailedPrecondition, "etcdserver: user name already exists";
    /// `ErrGRPCUserEmpty`.
    UserEmpty => InvalidArgument, "etcdserver: user name is empty";
    /// `ErrGRPCUserNotFound`.
    UserNotFound => FailedPrecondition, "etcdserver: user name not found";
    /// `ErrGRPCRoleAlreadyExist`.
    RoleAlreadyExists => FailedPrecondition, "etcdserver: role name already exists";
    /// `ErrGRPCRoleNotFound`.
    RoleNotFound => FailedPrecondition, "etcdserver: role name not found";
    /// `ErrGRPCRoleEmpty`.
    RoleEmpty => InvalidArgument, "etcdserver: role name is empty";
    /// `ErrGRPCAuthFailed`: wrong user name or password.
    AuthFailed => InvalidArgument, "etcdserver: authentication failed, invalid user ID or password";
    /// `ErrGRPCPermissionNotGiven`: a grant request carries no permission.
    PermissionNotGiven => InvalidArgument, "etcdserver: permission not given";
    /// `ErrGRPCPermissionDenied`: the user may not do this.
    PermissionDenied => PermissionDenied, "etcdserver: permission denied";
    /// `ErrGRPCRoleNotGranted`: revoking a role the user does not have.
    RoleNotGranted => FailedPrecondition, "etcdserver: role is not granted to the user";
    /// `ErrGRPCPermissionNotGranted`: revoking a permission the role does not
    /// have.
    PermissionNotGranted => FailedPrecondition, "etcdserver: permission is not granted to the role";
    /// `ErrGRPCAuthNotEnabled`.
    AuthNotEnabled => FailedPrecondition, "etcdserver: authentication is not enabled";
    /// `ErrGRPCInvalidAuthToken`: the token is unknown, expired or malformed.
    /// Clients re-authenticate on exactly this error.
    InvalidAuthToken => Unauthenticated, "etcdserver: invalid auth token";
    /// `ErrGRPCInvalidAuthMgmt`: an auth change that would lock out root, such
    /// as revoking the `root` role from `root` while auth is enabled.
    InvalidAuthManagement => InvalidArgument, "etcdserver: invalid auth management";
    /// `ErrGRPCAuthOldRevision`: the auth store changed after the request was
    /// checked; clients retry.
    AuthOldRevision => InvalidArgument, "etcdserver: revision of auth store is old";

    // Leadership, availability and health.

    /// `ErrGRPCNoLeader`: the member does not know a leader.
    NoLeader => Unavailable, "etcdserver: no leader";
    /// `ErrGRPCNotLeader`: the request must be served by the leader.
    NotLeader => FailedPrecondition, "etcdserver: not leader";
    /// `ErrGRPCLeaderChanged`: leadership changed while the request was in
    /// flight.
    LeaderChanged => Unavailable, "etcdserver: leader changed";
    /// `ErrGRPCNotCapable`: the cluster version does not support the request.
    /// `Unavailable` in etcd 3.5.
    NotCapable => FailedPrecondition, "etcdserver: not capable";
    /// `ErrGRPCStopped`: the server is shutting down.
    Stopped => Unavailable, "etcdserver: server stopped";
    /// `ErrGRPCTimeout`: the proposal was not applied in time.
    Timeout => Unavailable, "etcdserver: request timed out";
    /// `ErrGRPCTimeoutDueToLeaderFail`.
    TimeoutDueToLeaderFail => Unavailable,
        "etcdserver: request timed out, possibly due to previous leader failure";
    /// `ErrGRPCTimeoutDueToConnectionLost`.
    TimeoutDueToConnectionLost => Unavailable,
        "etcdserver: request timed out, possibly due to connection lost";
    /// `ErrGRPCTimeoutWaitAppliedIndex`: a linearizable read waited too long
    /// for the member to apply up to the read index.
    TimeoutWaitAppliedIndex => Unavailable,
        "etcdserver: request timed out, waiting for the applied index took too long";
    /// `ErrGRPCUnhealthy`: the member refuses to change membership while the
    /// cluster is unhealthy.
    Unhealthy => Unavailable, "etcdserver: unhealthy cluster";
    /// `ErrGRPCCorrupt`: the CORRUPT alarm is raised.
    Corrupt => DataLoss, "etcdserver: corrupt cluster";
    /// `ErrGRPCNotSupportedForLearner`: learners serve only serializable reads
    /// and status. `Unavailable` in etcd 3.5.
    NotSupportedForLearner => FailedPrecondition, "etcdserver: rpc not supported for learner";
    /// `ErrGRPCBadLeaderTransferee`: the move-leader target cannot lead.
    BadLeaderTransferee => FailedPrecondition, "etcdserver: bad leader transferee";

    // Downgrades.

    /// `ErrGRPCClusterVersionUnavailable`. `Unavailable` in etcd 3.5.
    ClusterVersionUnavailable => FailedPrecondition,
        "etcdserver: cluster version not found during downgrade";
    /// `ErrGRPCWrongDowngradeVersionFormat`.
    WrongDowngradeVersionFormat => InvalidArgument,
        "etcdserver: wrong downgrade target version format";
    /// `ErrGRPCInvalidDowngradeTargetVersion`.
    InvalidDowngradeTargetVersion => InvalidArgument,
        "etcdserver: invalid downgrade target version";
    /// `ErrGRPCDowngradeInProcess`.
    DowngradeInProcess => FailedPrecondition, "etcdserver: cluster has a downgrade job in progress";
    /// `ErrGRPCNoInflightDowngrade`.
    NoInflightDowngrade => FailedPrecondition, "etcdserver: no inflight downgrade job";

    // Request lifetime.

    /// `ErrGRPCCanceled`: the client cancelled the request.
    Canceled => Cancelled, "etcdserver: request canceled";
    /// `ErrGRPCDeadlineExceeded`: the request's deadline passed.
    DeadlineExceeded => DeadlineExceeded, "etcdserver: context deadline exceeded";
}

impl EtcdError {
    /// The error whose message is `message`, as etcd's clients identify
    /// errors. `None` for any other text.
    #[must_use]
    pub fn from_message(message: &str) -> Option<Self> {
        Self::ALL
            .iter()
            .copied()
            .find(|error| error.message() == message)
    }

    /// The error a status carries, if its code and message are both one of
    /// ours.
    #[must_use]
    pub fn from_status(status: &tonic::Status) -> Option<Self> {
        Self::from_message(status.message()).filter(|error| error.code() == status.code())
    }
}

impl fmt::Display for EtcdError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.message())
    }
}

impl std::error::Error for EtcdError {}

impl From<EtcdError> for tonic::Status {
    fn from(error: EtcdError) -> Self {
        tonic::Status::new(error.code(), error.message())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    const PREFIX: &str = "etcdserver: ";

    // Guards against a typo in the table: clients match on the text, so a
    // message without etcd's prefix would never be recognised.
    #[test]
    fn every_message_has_the_etcdserver_prefix() {
        for error in EtcdError::ALL {
            assert!(
                error.message().starts_with(PREFIX),
                "{error:?}: {:?}",
                error.message()
            );
            assert!(error.message().len() > PREFIX.len(), "{error:?}");
            assert_eq!(error.to_string(), error.message());
        }
    }

    // Guards against two variants sharing a message, which would make the
    // reverse lookup ambiguous for clients.
    #[test]
    fn messages_are_unique() {
        let mut seen = HashSet::new();
        for error in EtcdError::ALL {
            assert!(seen.insert(error.message()), "duplicate: {error:?}");
        }
    }

    // Guards the conversion the gRPC layer relies on: the status must carry
    // exactly the table's code and message, and a client must be able to
    // read the error back from it.
    #[test]
    fn every_error_round_trips_through_a_status() {
        for &error in EtcdError::ALL {
            let status = tonic::Status::from(error);
            assert_eq!(status.code(), error.code(), "{error:?}");
            assert_eq!(status.message(), error.message(), "{error:?}");
            assert_eq!(EtcdError::from_status(&status), Some(error));
            assert_eq!(EtcdError::from_message(error.message()), Some(error));
        }
    }

    #[test]
    fn a_status_with_the_wrong_code_is_not_recognised() {
        let status = tonic::Status::new(Code::Internal, EtcdError::NoLeader.message());
        assert_eq!(EtcdError::from_status(&status), None);
        assert_eq!(EtcdError::from_message("etcdserver: nonsense"), None);
    }

    // Spot checks against the pairs recorded in shared/ETCD_FACTS.md, so a
    // wrong code in the table cannot hide behind the round-trip test above.
    #[test]
    fn known_pairs_match_etcd() {
        let expected = [
            (Code::InvalidArgument, "etcdserver: key is not provided"),
            (Code::InvalidArgument, "etcdserver: value is provided"),
            (Code::InvalidArgument, "etcdserver: lease is provided"),
            (
                Code::InvalidArgument,
                "etcdserver: too many operations in txn request",
            ),
            (
                Code::InvalidArgument,
                "etcdserver: duplicate key given in txn request",
            ),
            (Code::InvalidArgument, "etcdserver: request is too large"),
            (
                Code::OutOfRange,
                "etcdserver: mvcc: required revision has been compacted",
            ),
            (
                Code::OutOfRange,
                "etcdserver: mvcc: required revision is a future revision",
            ),
            (Code::NotFound, "etcdserver: requested lease not found"),
            (Code::FailedPrecondition, "etcdserver: lease already exists"),
            (Code::Unavailable, "etcdserver: no leader"),
            (Code::Unavailable, "etcdserver: leader changed"),
            (Code::Unavailable, "etcdserver: request timed out"),
            (
                Code::ResourceExhausted,
                "etcdserver: mvcc: database space exceeded",
            ),
            (Code::ResourceExhausted, "etcdserver: too many requests"),
            (
                Code::FailedPrecondition,
                "etcdserver: member ID already exist",
            ),
            (
                Code::FailedPrecondition,
                "etcdserver: Peer URLs already exists",
            ),
            (Code::NotFound, "etcdserver: member not found"),
            (
                Code::FailedPrecondition,
                "etcdserver: re-configuration failed due to not enough started members",
            ),
            (
                Code::FailedPrecondition,
                "etcdserver: can only promote a learner member which is in sync with leader",
            ),
            (
                Code::FailedPrecondition,
                "etcdserver: too many learner members in cluster",
            ),
            (
                Code::InvalidArgument,
                "etcdserver: authentication failed, invalid user ID or password",
            ),
            (Code::PermissionDenied, "etcdserver: permission denied"),
            (Code::Unauthenticated, "etcdserver: invalid auth token"),
            (Code::InvalidArgument, "etcdserver: user name is empty"),
            (
                Code::FailedPrecondition,
                "etcdserver: authentication is not enabled",
            ),
            (
                Code::FailedPrecondition,
                "etcdserver: root user does not exist",
            ),
            (
                Code::FailedPrecondition,
                "etcdserver: root user does not have root role",
            ),
            (
                Code::FailedPrecondition,
                "etcdserver: user name already exists",
            ),
            (Code::FailedPrecondition, "etcdserver: user name not found"),
            (
                Code::InvalidArgument,
                "etcdserver: revision of auth store is old",
            ),
        ];
        for (code, message) in expected {
            let error = EtcdError::from_message(message)
                .unwrap_or_else(|| panic!("missing from the table: {message:?}"));
            assert_eq!(error.code(), code, "{message:?}");
        }
    }
}

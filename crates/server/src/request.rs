//! What a log entry carries: one client write, encoded for the WAL and for replication.
//!
//! Layout: kind (u8), request id (u64 little-endian), then the request's protobuf encoding. The
//! id lets the member that proposed an entry find the caller waiting for it once the entry is
//! applied, wherever it lands in the log.
//!
//! A traced entry (distributed tracing on, the proposer's span sampled) has the kind's top bit
//! ([`KIND_TRACED`]) set and the proposer's span identity ([`EntryTrace`], 25 bytes) between
//! the id and the protobuf, so every member's spans for it join the proposer's trace. An
//! untraced entry is byte for byte what it was before tracing existed.

use keel_api::etcdserverpb::{
    AuthDisableRequest, AuthEnableRequest, AuthRoleAddRequest, AuthRoleDeleteRequest,
    AuthRoleGrantPermissionRequest, AuthRoleRevokePermissionRequest, AuthUserAddRequest,
    AuthUserChangePasswordRequest, AuthUserDeleteRequest, AuthUserGrantRoleRequest,
    AuthUserRevokeRoleRequest, CompactionRequest, DeleteRangeRequest, LeaseGrantRequest,
    LeaseRevokeRequest, Member, PutRequest, TxnRequest,
};
use prost::Message;

use crate::telemetry::EntryTrace;

/// A request that changes the state machine, so goes through the log.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    Put(PutRequest),
    DeleteRange(DeleteRangeRequest),
    Txn(TxnRequest),
    Compaction(CompactionRequest),
    LeaseGrant(LeaseGrantRequest),
    LeaseRevoke(LeaseRevokeRequest),
    /// A change of the auth store (users, roles, permissions, the auth switch).
    Auth(AuthRequest),
    /// What a member publishes about itself once it runs (name, client URLs), as etcd does.
    MemberAttributes(Member),
    /// MemberUpdate: new peer URLs (`id`, `peer_ur_ls`) for a member. Not a Raft membership
    /// change (the configuration's ids stay), so an ordinary entry.
    MemberUpdate(Member),
}

/// Declares [`AuthRequest`] and its log entry kinds from one list, so a kind can't be forgotten
/// in one of the three places that name it.
macro_rules! auth_requests {
    ($($variant:ident($message:ty) = $kind:literal,)*) => {
        /// A change of the auth store. Passwords in it are bcrypt hashes computed by the member
        /// that proposed it (`hashed_password`), never the password itself.
        #[derive(Debug, Clone, PartialEq)]
        pub enum AuthRequest {
            $($variant($message),)*
        }

        impl AuthRequest {
            fn encoded_len(&self) -> usize {
                match self {
                    $(AuthRequest::$variant(request) => request.encoded_len(),)*
                }
            }

            fn kind(&self) -> u8 {
                match self {
                    $(AuthRequest::$variant(_) => $kind,)*
                }
            }

            fn encode(&self, bytes: &mut Vec<u8>) -> Result<(), prost::EncodeError> {
                match self {
                    $(AuthRequest::$variant(request) => request.encode(bytes),)*
                }
            }

            fn decode(kind: u8, body: &[u8]) -> Option<Result<AuthRequest, prost::DecodeError>> {
                match kind {
                    $($kind => Some(<$message>::decode(body).map(AuthRequest::$variant)),)*
                    _ => None,
                }
            }
        }
    };
}

auth_requests! {
    Enable(AuthEnableRequest) = 7,
    Disable(AuthDisableRequest) = 8,
    UserAdd(AuthUserAddRequest) = 9,
    UserDelete(AuthUserDeleteRequest) = 10,
    UserChangePassword(AuthUserChangePasswordRequest) = 11,
    UserGrantRole(AuthUserGrantRoleRequest) = 12,
    UserRevokeRole(AuthUserRevokeRoleRequest) = 13,
    RoleAdd(AuthRoleAddRequest) = 14,
    RoleDelete(AuthRoleDeleteRequest) = 15,
    RoleGrantPermission(AuthRoleGrantPermissionRequest) = 16,
    RoleRevokePermission(AuthRoleRevokePermissionRequest) = 17,
}

const KIND_PUT: u8 = 1;
const KIND_DELETE_RANGE: u8 = 2;
const KIND_TXN: u8 = 3;
const KIND_COMPACTION: u8 = 4;
const KIND_LEASE_GRANT: u8 = 5;
const KIND_LEASE_REVOKE: u8 = 6;
/// Kinds 7 to 17 are the auth requests (see `AuthRequest`).
const KIND_MEMBER_ATTRIBUTES: u8 = 18;
const KIND_MEMBER_UPDATE: u8 = 19;
const HEADER_BYTES: usize = 9;
/// Set on the kind byte of an entry that carries the proposer's trace context after its id.
/// Kinds themselves stay below it.
pub const KIND_TRACED: u8 = 0x80;

/// An entry that doesn't decode: the log is corrupt or was written by a newer Keel.
#[derive(Debug, thiserror::Error)]
#[error("log entry does not decode: {0}")]
pub struct DecodeError(String);

impl Request {
    /// Size of the request's protobuf encoding (what etcd compares to `--max-request-bytes`).
    pub fn encoded_len(&self) -> usize {
        match self {
            Request::Put(request) => request.encoded_len(),
            Request::DeleteRange(request) => request.encoded_len(),
            Request::Txn(request) => request.encoded_len(),
            Request::Compaction(request) => request.encoded_len(),
            Request::LeaseGrant(request) => request.encoded_len(),
            Request::LeaseRevoke(request) => request.encoded_len(),
            Request::Auth(request) => request.encoded_len(),
            Request::MemberAttributes(member) | Request::MemberUpdate(member) => {
                member.encoded_len()
            }
        }
    }

    pub fn encode(&self, id: u64) -> Vec<u8> {
        self.encode_traced(id, None)
    }

    /// The entry for this request, carrying `trace` (the proposer's span) when given.
    pub fn encode_traced(&self, id: u64, trace: Option<&EntryTrace>) -> Vec<u8> {
        let trace_bytes = trace.map_or(0, |_| EntryTrace::ENCODED_BYTES);
        let mut bytes = Vec::with_capacity(HEADER_BYTES + trace_bytes + self.encoded_len());
        let kind = match self {
            Request::Put(_) => KIND_PUT,
            Request::DeleteRange(_) => KIND_DELETE_RANGE,
            Request::Txn(_) => KIND_TXN,
            Request::Compaction(_) => KIND_COMPACTION,
            Request::LeaseGrant(_) => KIND_LEASE_GRANT,
            Request::LeaseRevoke(_) => KIND_LEASE_REVOKE,
            Request::Auth(request) => request.kind(),
            Request::MemberAttributes(_) => KIND_MEMBER_ATTRIBUTES,
            Request::MemberUpdate(_) => KIND_MEMBER_UPDATE,
        };
        debug_assert!(kind < KIND_TRACED);
        bytes.push(if trace.is_some() {
            kind | KIND_TRACED
        } else {
            kind
        });
        bytes.extend_from_slice(&id.to_le_bytes());
        if let Some(trace) = trace {
            trace.encode(&mut bytes);
        }
        let encoded = match self {
            Request::Put(request) => request.encode(&mut bytes),
            Request::DeleteRange(request) => request.encode(&mut bytes),
            Request::Txn(request) => request.encode(&mut bytes),
            Request::Compaction(request) => request.encode(&mut bytes),
            Request::LeaseGrant(request) => request.encode(&mut bytes),
            Request::LeaseRevoke(request) => request.encode(&mut bytes),
            Request::Auth(request) => request.encode(&mut bytes),
            Request::MemberAttributes(member) | Request::MemberUpdate(member) => {
                member.encode(&mut bytes)
            }
        };
        encoded.expect("a Vec grows as needed");
        bytes
    }

    /// The trace context a traced entry carries; a cheap look at the header (no protobuf
    /// decoding), for the replica thread's spans.
    pub fn entry_trace(bytes: &[u8]) -> Option<EntryTrace> {
        if bytes.first()? & KIND_TRACED == 0 {
            return None;
        }
        EntryTrace::decode(bytes.get(HEADER_BYTES..)?)
    }

    /// Returns the request and the id it was proposed with.
    pub fn decode(bytes: &[u8]) -> Result<(u64, Request), DecodeError> {
        Request::decode_traced(bytes).map(|(id, _, request)| (id, request))
    }

    /// Returns the id, the trace context (if the entry carries one) and the request.
    pub fn decode_traced(bytes: &[u8]) -> Result<(u64, Option<EntryTrace>, Request), DecodeError> {
        if bytes.len() < HEADER_BYTES {
            return Err(DecodeError(format!(
                "{} bytes is shorter than the header",
                bytes.len()
            )));
        }
        let id = u64::from_le_bytes(bytes[1..HEADER_BYTES].try_into().expect("8 bytes"));
        let traced = bytes[0] & KIND_TRACED != 0;
        let (trace, body) = if traced {
            let trace = EntryTrace::decode(&bytes[HEADER_BYTES..]).ok_or_else(|| {
                DecodeError(format!(
                    "{} bytes is shorter than a traced entry's header",
                    bytes.len()
                ))
            })?;
            (
                Some(trace),
                &bytes[HEADER_BYTES + EntryTrace::ENCODED_BYTES..],
            )
        } else {
            (None, &bytes[HEADER_BYTES..])
        };
        let error = |error: prost::DecodeError| DecodeError(error.to_string());
        let request = match bytes[0] & !KIND_TRACED {
            KIND_PUT => Request::Put(PutRequest::decode(body).map_err(error)?),
            KIND_DELETE_RANGE => {
                Request::DeleteRange(DeleteRangeRequest::decode(body).map_err(error)?)
            }
            KIND_TXN => Request::Txn(TxnRequest::decode(body).map_err(error)?),
            KIND_COMPACTION => Request::Compaction(CompactionRequest::decode(body).map_err(error)?),
            KIND_LEASE_GRANT => {
                Request::LeaseGrant(LeaseGrantRequest::decode(body).map_err(error)?)
            }
            KIND_LEASE_REVOKE => {
                Request::LeaseRevoke(LeaseRevokeRequest::decode(body).map_err(error)?)
            }
            KIND_MEMBER_ATTRIBUTES => {
                Request::MemberAttributes(Member::decode(body).map_err(error)?)
            }
            KIND_MEMBER_UPDATE => Request::MemberUpdate(Member::decode(body).map_err(error)?),
            other => match AuthRequest::decode(other, body) {
                Some(request) => Request::Auth(request.map_err(error)?),
                None => return Err(DecodeError(format!("unknown kind {other}"))),
            },
        };
        Ok((id, trace, request))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_round_trips_with_its_id() {
        let requests = [
            Request::Put(PutRequest {
                key: b"k".to_vec(),
                value: b"v".to_vec(),
                ..Default::default()
            }),
            Request::DeleteRange(DeleteRangeRequest {
                key: b"a".to_vec(),
                range_end: b"z".to_vec(),
                ..Default::default()
            }),
            Request::Txn(TxnRequest::default()),
            Request::Compaction(CompactionRequest {
                revision: 7,
                physical: true,
            }),
            Request::Auth(AuthRequest::Enable(AuthEnableRequest {})),
            Request::MemberUpdate(Member {
                id: 3,
                peer_ur_ls: vec!["http://a:1".into()],
                ..Default::default()
            }),
            Request::Auth(AuthRequest::UserAdd(AuthUserAddRequest {
                name: "u".into(),
                hashed_password: "$2b$04$hash".into(),
                ..Default::default()
            })),
            Request::Auth(AuthRequest::RoleRevokePermission(
                AuthRoleRevokePermissionRequest {
                    role: "r".into(),
                    key: b"k".to_vec(),
                    range_end: b"l".to_vec(),
                },
            )),
        ];
        for (id, request) in requests.into_iter().enumerate() {
            let bytes = request.encode(id as u64 + 40);
            assert_eq!(Request::decode(&bytes).unwrap(), (id as u64 + 40, request));
        }
    }

    #[test]
    fn traced_entries_round_trip_and_untraced_ones_cost_nothing() {
        let request = Request::Put(PutRequest {
            key: b"k".to_vec(),
            value: b"v".to_vec(),
            ..Default::default()
        });
        let trace = EntryTrace {
            trace_id: [0xab; 16],
            span_id: [0xcd; 8],
            flags: 1,
        };
        let plain = request.encode(5);
        let traced = request.encode_traced(5, Some(&trace));
        assert_eq!(request.encode_traced(5, None), plain);
        assert_eq!(traced.len(), plain.len() + EntryTrace::ENCODED_BYTES);
        assert_eq!(traced[0], plain[0] | KIND_TRACED);
        assert_eq!(Request::entry_trace(&plain), None);
        assert_eq!(Request::entry_trace(&traced), Some(trace));
        assert_eq!(
            Request::decode_traced(&traced).unwrap(),
            (5, Some(trace), request.clone())
        );
        assert_eq!(Request::decode(&traced).unwrap(), (5, request.clone()));
        assert_eq!(Request::decode_traced(&plain).unwrap(), (5, None, request));
        // A traced kind whose trace context is cut short.
        assert!(Request::decode(&traced[..HEADER_BYTES + 10]).is_err());
        assert_eq!(Request::entry_trace(&traced[..HEADER_BYTES + 10]), None);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for bytes in [
            &b""[..],
            b"\x01",
            // A kind no version of Keel writes.
            b"\x7f\0\0\0\0\0\0\0\0",
            b"\x01\0\0\0\0\0\0\0\0\xff\xff",
        ] {
            assert!(Request::decode(bytes).is_err(), "{bytes:?}");
        }
    }

    /// A cheap fuzz: random bytes, and valid entries with random bytes flipped, never panic.
    #[test]
    fn random_and_damaged_entries_never_panic() {
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let valid = Request::Txn(TxnRequest {
            compare: vec![Default::default()],
            success: vec![Default::default()],
            failure: vec![],
        })
        .encode(9);
        let traced = Request::Put(PutRequest::default()).encode_traced(
            9,
            Some(&EntryTrace {
                trace_id: [1; 16],
                span_id: [2; 8],
                flags: 1,
            }),
        );
        for _ in 0..20_000 {
            let length = (next() % 64) as usize;
            let random: Vec<u8> = (0..length).map(|_| next() as u8).collect();
            let _ = Request::decode(&random);
            let _ = Request::entry_trace(&random);
            for valid in [&valid, &traced] {
                let mut damaged = valid.clone();
                let position = (next() as usize) % damaged.len();
                damaged[position] ^= (next() as u8) | 1;
                let _ = Request::decode(&damaged);
                let _ = Request::entry_trace(&damaged);
            }
        }
    }
}

//! Applying log entries to the MVCC store, with etcd's semantics for Put, DeleteRange, Txn and
//! Compaction. Also serves read-only transactions, which etcd runs outside the log.
//!
//! Applying is deterministic: the same entries applied to the same state give the same state and
//! the same responses, on every member and on every replay after a crash. Every check that can
//! fail a request runs before its first change, so a failed request changes nothing.

use keel_api::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use keel_api::etcdserverpb::request_op::Request as Op;
use keel_api::etcdserverpb::response_op::Response as OpResponse;
use keel_api::etcdserverpb::{
    CompactionResponse, Compare, DeleteRangeRequest, DeleteRangeResponse, LeaseGrantRequest,
    LeaseGrantResponse, LeaseRevokeRequest, LeaseRevokeResponse, PutRequest, PutResponse,
    RangeResponse, ResponseHeader, ResponseOp, TxnRequest, TxnResponse,
};
use keel_api::mvccpb::KeyValue;
use keel_api::EtcdError;
use keel_storage::mvcc::{
    MvccError, RangeEnd, RangeOptions, RangeResult, ReadTxn, ReadView, Store, StoredLease, WriteTxn,
};

use crate::data_dir::MemberInfo;
use crate::lease::{Lessor, LEASE_TTL_SECS_MAX};
use crate::membership::{check_update, MemberRecord, Membership};
use crate::range::range;
use crate::request::Request;
use crate::ServerError;

/// The answer to an applied request. Headers carry only the revision.
#[derive(Debug, Clone, PartialEq)]
pub enum Response {
    Put(PutResponse),
    DeleteRange(DeleteRangeResponse),
    Txn(TxnResponse),
    Compaction(CompactionResponse),
    LeaseGrant(LeaseGrantResponse),
    LeaseRevoke(LeaseRevokeResponse),
    MemberAttributes,
    /// A membership change (Raft's, or a MemberUpdate) was applied.
    MemberChange,
    Auth(crate::auth::apply::AuthResponse),
}

/// Whether `request` can share a redb transaction with its neighbours in the log
/// ([`apply_in`]): requests on keys and leases. The others (membership, auth, compaction)
/// read the store on their own or change it outside a write transaction.
pub fn batchable(request: &Request) -> bool {
    matches!(
        request,
        Request::Put(_)
            | Request::DeleteRange(_)
            | Request::Txn(_)
            | Request::LeaseGrant(_)
            | Request::LeaseRevoke(_)
    )
}

/// Applies a [`batchable`] request inside `txn`, which the caller has moved to the request's
/// log entry. A failed request changed nothing (every check runs before the first change).
pub fn apply_in(
    txn: &mut WriteTxn<'_>,
    lessor: &Lessor,
    request: &Request,
) -> Result<Response, ServerError> {
    let mut applying = Applying { txn, lessor };
    match request {
        Request::Put(request) => {
            if request.lease != 0 && !lessor.exists(request.lease) {
                return Err(EtcdError::LeaseNotFound.into());
            }
            put(&mut applying, request).map(Response::Put)
        }
        Request::DeleteRange(request) => {
            delete_range(&mut applying, request).map(Response::DeleteRange)
        }
        Request::Txn(request) => run_txn(&mut applying, request).map(Response::Txn),
        Request::LeaseGrant(grant) => lease_grant(applying.txn, lessor, grant),
        Request::LeaseRevoke(revoke) => lease_revoke(applying.txn, lessor, revoke),
        other => unreachable!("not batchable: {other:?}"),
    }
}

/// Applies log entry `index` holding `request` in a transaction of its own.
/// `founding_members` are the cluster's first members (membership requests are checked against
/// them and the store's changes).
pub fn apply(
    store: &Store,
    lessor: &Lessor,
    founding_members: &[MemberInfo],
    index: u64,
    request: &Request,
) -> Result<Response, ServerError> {
    let result = match request {
        request if batchable(request) => {
            let mut txn = store.write(index)?;
            match apply_in(&mut txn, lessor, request) {
                Ok(response) => {
                    txn.commit(false)?;
                    Ok(response)
                }
                Err(error) => Err(error),
            }
        }
        Request::MemberAttributes(member)
            if Membership::load(founding_members, store)?.is_removed(member.id) =>
        {
            // A removed member's late publication changes nothing, as in etcd.
            store.skip(index);
            Ok(Response::MemberAttributes)
        }
        Request::MemberAttributes(member) => {
            let mut txn = store.write(index)?;
            txn.put_member_attributes(member.id, &prost::Message::encode_to_vec(member))?;
            txn.commit(false)?;
            Ok(Response::MemberAttributes)
        }
        Request::MemberUpdate(update) => {
            let membership = Membership::load(founding_members, store)?;
            check_update(&membership, update.id, &update.peer_ur_ls)?;
            let record = MemberRecord {
                id: update.id,
                peer_urls: update.peer_ur_ls.clone(),
                is_learner: membership
                    .get(update.id)
                    .is_some_and(|member| member.is_learner),
            };
            let mut txn = store.write(index)?;
            txn.put_member_raft(update.id, &record.encode())?;
            txn.commit(false)?;
            Ok(Response::MemberChange)
        }
        Request::Auth(auth) => crate::auth::apply::apply(store, index, auth).map(Response::Auth),
        Request::Compaction(compaction) => match store.compact(compaction.revision, index) {
            Ok(()) => Ok(Response::Compaction(CompactionResponse {
                header: Some(header(store.revision())),
            })),
            Err(error) => Err(error.into()),
        },
        Request::Put(_)
        | Request::DeleteRange(_)
        | Request::Txn(_)
        | Request::LeaseGrant(_)
        | Request::LeaseRevoke(_) => unreachable!("batchable requests are matched above"),
    };
    if result.is_err() {
        // A failed request changed nothing, but its entry is applied all the same.
        store.skip(index);
    }
    result
}

fn header(revision: i64) -> ResponseHeader {
    ResponseHeader {
        revision,
        ..ResponseHeader::default()
    }
}

fn lease_grant(
    txn: &mut WriteTxn<'_>,
    lessor: &Lessor,
    request: &LeaseGrantRequest,
) -> Result<Response, ServerError> {
    if request.ttl > LEASE_TTL_SECS_MAX {
        return Err(EtcdError::LeaseTtlTooLarge.into());
    }
    if lessor.exists(request.id) {
        return Err(EtcdError::LeaseExists.into());
    }
    let ttl_secs = lessor.effective_ttl_secs(request.ttl);
    txn.grant_lease(StoredLease {
        id: request.id,
        ttl_secs,
    })?;
    lessor.granted(request.id, ttl_secs);
    Ok(Response::LeaseGrant(LeaseGrantResponse {
        header: Some(header(txn.read_revision())),
        id: request.id,
        ttl: ttl_secs,
        error: String::new(),
    }))
}

/// Revokes a lease: every key that still holds it is deleted, all in one revision.
fn lease_revoke(
    txn: &mut WriteTxn<'_>,
    lessor: &Lessor,
    request: &LeaseRevokeRequest,
) -> Result<Response, ServerError> {
    if !lessor.exists(request.id) {
        return Err(EtcdError::LeaseNotFound.into());
    }
    for key in lessor.keys(request.id) {
        let found = txn.range(&key, RangeEnd::Single, &RangeOptions::default())?;
        if found.kvs.first().is_some_and(|kv| kv.lease == request.id) {
            txn.delete_range(&key, RangeEnd::Single)?;
        }
    }
    txn.revoke_lease(request.id)?;
    lessor.revoked(request.id);
    Ok(Response::LeaseRevoke(LeaseRevokeResponse {
        header: Some(header(txn.read_revision())),
    }))
}

/// What a transaction does to the store beyond reading it.
trait Write: ReadView {
    fn put(&mut self, key: &[u8], value: Vec<u8>, lease: i64) -> Result<i64, MvccError>;
    fn delete_range(&mut self, key: &[u8], end: RangeEnd<'_>) -> Result<(i64, i64), MvccError>;
    fn lease_exists(&self, lease: i64) -> bool;
}

/// A write transaction applying a log entry, with the leases its puts attach keys to.
struct Applying<'t, 'a> {
    txn: &'t mut WriteTxn<'a>,
    lessor: &'t Lessor,
}

impl ReadView for Applying<'_, '_> {
    fn range(
        &self,
        key: &[u8],
        end: RangeEnd<'_>,
        options: &RangeOptions,
    ) -> Result<RangeResult, MvccError> {
        self.txn.range(key, end, options)
    }

    fn revision(&self) -> i64 {
        self.txn.revision()
    }

    fn compact_revision(&self) -> i64 {
        self.txn.compact_revision()
    }
}

impl Write for Applying<'_, '_> {
    fn put(&mut self, key: &[u8], value: Vec<u8>, lease: i64) -> Result<i64, MvccError> {
        let revision = self.txn.put(key, value, lease)?;
        if lease != 0 {
            self.lessor.attach(lease, key);
        }
        Ok(revision)
    }

    fn delete_range(&mut self, key: &[u8], end: RangeEnd<'_>) -> Result<(i64, i64), MvccError> {
        self.txn.delete_range(key, end)
    }

    fn lease_exists(&self, lease: i64) -> bool {
        self.lessor.exists(lease)
    }
}

/// A read-only transaction's view: it has no writes by construction.
struct ReadOnly<'a>(ReadTxn<'a>);

impl ReadView for ReadOnly<'_> {
    fn range(
        &self,
        key: &[u8],
        end: RangeEnd<'_>,
        options: &RangeOptions,
    ) -> Result<RangeResult, MvccError> {
        self.0.range(key, end, options)
    }

    fn revision(&self) -> i64 {
        self.0.revision()
    }

    fn compact_revision(&self) -> i64 {
        self.0.compact_revision()
    }
}

impl Write for ReadOnly<'_> {
    fn put(&mut self, _: &[u8], _: Vec<u8>, _: i64) -> Result<i64, MvccError> {
        unreachable!("a read-only transaction has no put")
    }

    fn delete_range(&mut self, _: &[u8], _: RangeEnd<'_>) -> Result<(i64, i64), MvccError> {
        unreachable!("a read-only transaction has no delete")
    }

    fn lease_exists(&self, _: i64) -> bool {
        unreachable!("a read-only transaction has no put to check a lease for")
    }
}

fn put(txn: &mut impl Write, request: &PutRequest) -> Result<PutResponse, ServerError> {
    let needs_previous = request.ignore_value || request.ignore_lease || request.prev_kv;
    let previous: Option<KeyValue> = if needs_previous {
        txn.range(&request.key, RangeEnd::Single, &RangeOptions::default())?
            .kvs
            .into_iter()
            .next()
    } else {
        None
    };
    let mut value = request.value.clone();
    let mut lease = request.lease;
    if request.ignore_value || request.ignore_lease {
        let Some(previous) = &previous else {
            return Err(EtcdError::KeyNotFound.into());
        };
        if request.ignore_value {
            value = previous.value.clone();
        }
        if request.ignore_lease {
            lease = previous.lease;
        }
    }
    let revision = txn.put(&request.key, value, lease)?;
    Ok(PutResponse {
        header: Some(header(revision)),
        prev_kv: previous.filter(|_| request.prev_kv),
    })
}

fn delete_range(
    txn: &mut impl Write,
    request: &DeleteRangeRequest,
) -> Result<DeleteRangeResponse, ServerError> {
    let end = RangeEnd::from_request(&request.range_end);
    let prev_kvs = if request.prev_kv {
        txn.range(&request.key, end, &RangeOptions::default())?.kvs
    } else {
        Vec::new()
    };
    let (deleted, revision) = txn.delete_range(&request.key, end)?;
    Ok(DeleteRangeResponse {
        header: Some(header(revision)),
        deleted,
        prev_kvs,
    })
}

/// True when no branch that could run writes anything (etcd then serves it without the log).
pub fn is_read_only(request: &TxnRequest) -> bool {
    request
        .success
        .iter()
        .chain(&request.failure)
        .all(|op| match &op.request {
            Some(Op::RequestRange(_)) | None => true,
            Some(Op::RequestPut(_)) | Some(Op::RequestDeleteRange(_)) => false,
            Some(Op::RequestTxn(nested)) => is_read_only(nested),
        })
}

/// True when every range in the transaction asks for a serializable read (etcd then skips the
/// linearizability check).
pub fn is_serializable(request: &TxnRequest) -> bool {
    request
        .success
        .iter()
        .chain(&request.failure)
        .all(|op| match &op.request {
            Some(Op::RequestRange(range)) => range.serializable,
            Some(Op::RequestTxn(nested)) => is_serializable(nested),
            _ => true,
        })
}

/// Serves a read-only transaction from the current state.
pub fn read_only_txn(store: &Store, request: &TxnRequest) -> Result<TxnResponse, ServerError> {
    debug_assert!(is_read_only(request));
    let mut view = ReadOnly(store.read()?);
    run_txn(&mut view, request)
}

/// etcd's order: evaluate every compare on the path (nested ones too) against the state before
/// the transaction, check every request on the path, then execute.
fn run_txn(txn: &mut impl Write, request: &TxnRequest) -> Result<TxnResponse, ServerError> {
    let mut path = Vec::new();
    compare_to_path(txn, request, &mut path);
    // etcd checks every put on the path first, then every range, so when both would fail the
    // put's error is the one reported.
    check_path(txn, request, &path, &mut 0, Check::Puts)?;
    check_path(txn, request, &path, &mut 0, Check::Ranges)?;
    let mut response = execute(txn, request, &path, &mut 0)?;
    let header = response.header.get_or_insert_with(ResponseHeader::default);
    header.revision = txn.revision();
    Ok(response)
}

/// The branch each transaction on the path takes, outer first, depth first.
fn compare_to_path(view: &impl ReadView, request: &TxnRequest, path: &mut Vec<bool>) {
    let succeeded = request
        .compare
        .iter()
        .all(|compare| compare_holds(view, compare));
    path.push(succeeded);
    for op in branch(request, succeeded) {
        if let Some(Op::RequestTxn(nested)) = &op.request {
            compare_to_path(view, nested, path);
        }
    }
}

fn branch(request: &TxnRequest, succeeded: bool) -> &[keel_api::etcdserverpb::RequestOp] {
    if succeeded {
        &request.success
    } else {
        &request.failure
    }
}

fn compare_holds(view: &impl ReadView, compare: &Compare) -> bool {
    let Ok(result) = view.range(
        &compare.key,
        RangeEnd::from_request(&compare.range_end),
        &RangeOptions::default(),
    ) else {
        return false;
    };
    // An unknown target compares as equal, as in etcd's `compareKV`.
    let target = CompareTarget::try_from(compare.target).ok();
    if result.kvs.is_empty() {
        // A missing key has no value to compare (gRPC can't tell nil from empty), so value
        // compares on it fail; the other targets compare against zero.
        return target != Some(CompareTarget::Value)
            && compare_kv(compare, target, &KeyValue::default());
    }
    result.kvs.iter().all(|kv| compare_kv(compare, target, kv))
}

fn compare_kv(compare: &Compare, target: Option<CompareTarget>, kv: &KeyValue) -> bool {
    let number = |wanted: Option<i64>, actual: i64| actual.cmp(&wanted.unwrap_or(0));
    let union = compare.target_union.as_ref();
    let Some(target) = target else {
        return compare_result(compare, std::cmp::Ordering::Equal);
    };
    let ordering = match target {
        CompareTarget::Value => {
            let wanted: &[u8] = match union {
                Some(TargetUnion::Value(value)) => value,
                _ => &[],
            };
            kv.value.as_slice().cmp(wanted)
        }
        CompareTarget::Version => number(
            match union {
                Some(TargetUnion::Version(version)) => Some(*version),
                _ => None,
            },
            kv.version,
        ),
        CompareTarget::Create => number(
            match union {
                Some(TargetUnion::CreateRevision(revision)) => Some(*revision),
                _ => None,
            },
            kv.create_revision,
        ),
        CompareTarget::Mod => number(
            match union {
                Some(TargetUnion::ModRevision(revision)) => Some(*revision),
                _ => None,
            },
            kv.mod_revision,
        ),
        CompareTarget::Lease => number(
            match union {
                Some(TargetUnion::Lease(lease)) => Some(*lease),
                _ => None,
            },
            kv.lease,
        ),
    };
    compare_result(compare, ordering)
}

fn compare_result(compare: &Compare, ordering: std::cmp::Ordering) -> bool {
    match CompareResult::try_from(compare.result) {
        Ok(CompareResult::Equal) => ordering.is_eq(),
        Ok(CompareResult::NotEqual) => ordering.is_ne(),
        Ok(CompareResult::Greater) => ordering.is_gt(),
        Ok(CompareResult::Less) => ordering.is_lt(),
        Err(_) => true,
    }
}

/// Which of etcd's two passes over a transaction's path (`checkPut`, then `checkRange`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Check {
    Puts,
    Ranges,
}

/// etcd's checks before a transaction changes anything: a put that needs the previous key finds
/// it, a put's lease exists (pass `Puts`), and a range's revision is readable (pass `Ranges`).
fn check_path(
    view: &impl Write,
    request: &TxnRequest,
    path: &[bool],
    position: &mut usize,
    check: Check,
) -> Result<(), ServerError> {
    let succeeded = path[*position];
    *position += 1;
    for op in branch(request, succeeded) {
        match &op.request {
            Some(Op::RequestTxn(nested)) => check_path(view, nested, path, position, check)?,
            Some(Op::RequestPut(put)) if check == Check::Puts => {
                if put.ignore_value || put.ignore_lease {
                    let found = view.range(&put.key, RangeEnd::Single, &RangeOptions::default())?;
                    if found.kvs.is_empty() {
                        return Err(EtcdError::KeyNotFound.into());
                    }
                }
                if put.lease != 0 && !view.lease_exists(put.lease) {
                    return Err(EtcdError::LeaseNotFound.into());
                }
            }
            Some(Op::RequestRange(range)) if check == Check::Ranges => {
                if range.revision > view.revision() {
                    return Err(EtcdError::FutureRevision.into());
                }
                if range.revision != 0 && range.revision < view.compact_revision() {
                    return Err(EtcdError::Compacted.into());
                }
            }
            Some(_) | None => {}
        }
    }
    Ok(())
}

fn execute(
    txn: &mut impl Write,
    request: &TxnRequest,
    path: &[bool],
    position: &mut usize,
) -> Result<TxnResponse, ServerError> {
    let succeeded = path[*position];
    *position += 1;
    let mut responses = Vec::new();
    for op in branch(request, succeeded) {
        let response = match &op.request {
            Some(Op::RequestRange(request)) => {
                Some(OpResponse::ResponseRange(range(txn, request)?))
            }
            Some(Op::RequestPut(request)) => Some(OpResponse::ResponsePut(put(txn, request)?)),
            Some(Op::RequestDeleteRange(request)) => {
                Some(OpResponse::ResponseDeleteRange(delete_range(txn, request)?))
            }
            Some(Op::RequestTxn(nested)) => {
                let mut response = execute(txn, nested, path, position)?;
                response.header = Some(ResponseHeader::default());
                Some(OpResponse::ResponseTxn(response))
            }
            None => None,
        };
        responses.push(ResponseOp { response });
    }
    Ok(TxnResponse {
        header: Some(ResponseHeader::default()),
        succeeded,
        responses,
    })
}

#[allow(dead_code)]
fn _assert_range_response_is_used(_: RangeResponse) {}

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
    CompactionResponse, Compare, DeleteRangeRequest, DeleteRangeResponse, PutRequest, PutResponse,
    RangeResponse, ResponseHeader, ResponseOp, TxnRequest, TxnResponse,
};
use keel_api::mvccpb::KeyValue;
use keel_api::EtcdError;
use keel_storage::mvcc::{
    MvccError, RangeEnd, RangeOptions, RangeResult, ReadTxn, ReadView, Store, WriteTxn,
};

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
}

/// Answers whether a lease exists. Until leases exist (issue 4), none does.
pub fn lease_exists(_lease: i64) -> bool {
    false
}

/// Applies log entry `index` holding `request`.
pub fn apply(store: &Store, index: u64, request: &Request) -> Result<Response, ServerError> {
    let result = match request {
        Request::Put(put) => apply_put(store, index, put),
        Request::DeleteRange(delete) => {
            let mut txn = store.write(index)?;
            let response = delete_range(&mut txn, delete)?;
            txn.commit(false)?;
            Ok(Response::DeleteRange(response))
        }
        Request::Txn(request) => {
            let mut txn = store.write(index)?;
            let response = apply_txn(&mut txn, request)?;
            txn.commit(false)?;
            Ok(Response::Txn(response))
        }
        Request::Compaction(compaction) => match store.compact(compaction.revision, index) {
            Ok(()) => Ok(Response::Compaction(CompactionResponse {
                header: Some(header(store.revision())),
            })),
            Err(error) => Err(error.into()),
        },
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

fn apply_put(store: &Store, index: u64, request: &PutRequest) -> Result<Response, ServerError> {
    if request.lease != 0 && !lease_exists(request.lease) {
        return Err(EtcdError::LeaseNotFound.into());
    }
    let mut txn = store.write(index)?;
    let response = put(&mut txn, request)?;
    txn.commit(false)?;
    Ok(Response::Put(response))
}

/// What a transaction does to the store beyond reading it.
trait Write: ReadView {
    fn put(&mut self, key: &[u8], value: Vec<u8>, lease: i64) -> Result<i64, MvccError>;
    fn delete_range(&mut self, key: &[u8], end: RangeEnd<'_>) -> Result<(i64, i64), MvccError>;
}

impl Write for WriteTxn<'_> {
    fn put(&mut self, key: &[u8], value: Vec<u8>, lease: i64) -> Result<i64, MvccError> {
        WriteTxn::put(self, key, value, lease)
    }

    fn delete_range(&mut self, key: &[u8], end: RangeEnd<'_>) -> Result<(i64, i64), MvccError> {
        WriteTxn::delete_range(self, key, end)
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

/// Serves a read-only transaction from the current state.
pub fn read_only_txn(store: &Store, request: &TxnRequest) -> Result<TxnResponse, ServerError> {
    debug_assert!(is_read_only(request));
    let mut view = ReadOnly(store.read()?);
    run_txn(&mut view, request)
}

fn apply_txn(txn: &mut WriteTxn<'_>, request: &TxnRequest) -> Result<TxnResponse, ServerError> {
    run_txn(txn, request)
}

/// etcd's order: evaluate every compare on the path (nested ones too) against the state before
/// the transaction, check every request on the path, then execute.
fn run_txn(txn: &mut impl Write, request: &TxnRequest) -> Result<TxnResponse, ServerError> {
    let mut path = Vec::new();
    compare_to_path(txn, request, &mut path);
    check_path(txn, request, &path, &mut 0)?;
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
    let target = CompareTarget::try_from(compare.target).unwrap_or(CompareTarget::Version);
    if result.kvs.is_empty() {
        // A missing key has no value to compare (gRPC can't tell nil from empty), so value
        // compares on it fail; the other targets compare against zero.
        return target != CompareTarget::Value && compare_kv(compare, target, &KeyValue::default());
    }
    result.kvs.iter().all(|kv| compare_kv(compare, target, kv))
}

fn compare_kv(compare: &Compare, target: CompareTarget, kv: &KeyValue) -> bool {
    let number = |wanted: Option<i64>, actual: i64| actual.cmp(&wanted.unwrap_or(0));
    let union = compare.target_union.as_ref();
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
    match CompareResult::try_from(compare.result) {
        Ok(CompareResult::Equal) => ordering.is_eq(),
        Ok(CompareResult::NotEqual) => ordering.is_ne(),
        Ok(CompareResult::Greater) => ordering.is_gt(),
        Ok(CompareResult::Less) => ordering.is_lt(),
        Err(_) => true,
    }
}

/// etcd's checks before a transaction changes anything: a put that needs the previous key finds
/// it, a put's lease exists, and a range's revision is readable.
fn check_path(
    view: &impl ReadView,
    request: &TxnRequest,
    path: &[bool],
    position: &mut usize,
) -> Result<(), ServerError> {
    let succeeded = path[*position];
    *position += 1;
    for op in branch(request, succeeded) {
        match &op.request {
            Some(Op::RequestTxn(nested)) => check_path(view, nested, path, position)?,
            Some(Op::RequestPut(put)) => {
                if put.ignore_value || put.ignore_lease {
                    let found = view.range(&put.key, RangeEnd::Single, &RangeOptions::default())?;
                    if found.kvs.is_empty() {
                        return Err(EtcdError::KeyNotFound.into());
                    }
                }
                if put.lease != 0 && !lease_exists(put.lease) {
                    return Err(EtcdError::LeaseNotFound.into());
                }
            }
            Some(Op::RequestRange(range)) => {
                if range.revision > view.revision() {
                    return Err(EtcdError::FutureRevision.into());
                }
                if range.revision != 0 && range.revision < view.compact_revision() {
                    return Err(EtcdError::Compacted.into());
                }
            }
            Some(Op::RequestDeleteRange(_)) | None => {}
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

//! etcd's checks of a request before it is served or proposed (etcd's `v3rpc/key.go`).

use std::collections::HashSet;

use keel_api::etcdserverpb::range_request::{SortOrder, SortTarget};
use keel_api::etcdserverpb::request_op::Request as Op;
use keel_api::etcdserverpb::{DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest};
use keel_api::EtcdError;

pub fn check_range(request: &RangeRequest) -> Result<(), EtcdError> {
    if request.key.is_empty() {
        return Err(EtcdError::EmptyKey);
    }
    if SortOrder::try_from(request.sort_order).is_err()
        || SortTarget::try_from(request.sort_target).is_err()
    {
        return Err(EtcdError::InvalidSortOption);
    }
    Ok(())
}

pub fn check_put(request: &PutRequest) -> Result<(), EtcdError> {
    if request.key.is_empty() {
        return Err(EtcdError::EmptyKey);
    }
    if request.ignore_value && !request.value.is_empty() {
        return Err(EtcdError::ValueProvided);
    }
    if request.ignore_lease && request.lease != 0 {
        return Err(EtcdError::LeaseProvided);
    }
    Ok(())
}

pub fn check_delete(request: &DeleteRangeRequest) -> Result<(), EtcdError> {
    if request.key.is_empty() {
        return Err(EtcdError::EmptyKey);
    }
    Ok(())
}

/// Checks a transaction: its size against `max_txn_ops`, every operation, and that no key is
/// written twice (a put and an overlapping delete count as twice) on any path it can take.
pub fn check_txn(request: &TxnRequest, max_txn_ops: usize) -> Result<(), EtcdError> {
    check_txn_ops(request, max_txn_ops)?;
    check_intervals(&request.success)?;
    check_intervals(&request.failure)?;
    Ok(())
}

fn check_txn_ops(request: &TxnRequest, max_txn_ops: usize) -> Result<(), EtcdError> {
    let ops = request
        .compare
        .len()
        .max(request.success.len())
        .max(request.failure.len());
    if ops > max_txn_ops {
        return Err(EtcdError::TooManyOperations);
    }
    if request.compare.iter().any(|compare| compare.key.is_empty()) {
        return Err(EtcdError::EmptyKey);
    }
    // Nested transactions share the budget left by this level, as in etcd.
    let budget = max_txn_ops - ops;
    for op in request.success.iter().chain(&request.failure) {
        match &op.request {
            Some(Op::RequestRange(range)) => check_range(range)?,
            Some(Op::RequestPut(put)) => check_put(put)?,
            Some(Op::RequestDeleteRange(delete)) => check_delete(delete)?,
            Some(Op::RequestTxn(nested)) => check_txn_ops(nested, budget)?,
            // etcd answers an empty operation this way.
            None => return Err(EtcdError::KeyNotFound),
        }
    }
    Ok(())
}

/// A deleted interval `[start, end)`; `end` empty means unbounded (etcd's affine intervals).
struct Interval {
    start: Vec<u8>,
    end: Vec<u8>,
}

impl Interval {
    fn contains(&self, key: &[u8]) -> bool {
        self.start.as_slice() <= key && (self.end.is_empty() || key < self.end.as_slice())
    }
}

fn point(key: &[u8]) -> Interval {
    let mut end = key.to_vec();
    end.push(0);
    Interval {
        start: key.to_vec(),
        end,
    }
}

/// etcd's `checkIntervals`: returns the keys put and the intervals deleted on this level and
/// below, or `DuplicateKey` when they overlap on one path.
fn check_intervals(ops: &[RequestOp]) -> Result<(HashSet<Vec<u8>>, Vec<Interval>), EtcdError> {
    let mut deletes: Vec<Interval> = ops
        .iter()
        .filter_map(|op| match &op.request {
            Some(Op::RequestDeleteRange(delete)) if delete.range_end.is_empty() => {
                Some(point(&delete.key))
            }
            Some(Op::RequestDeleteRange(delete)) => Some(Interval {
                start: delete.key.clone(),
                end: delete.range_end.clone(),
            }),
            _ => None,
        })
        .collect();
    let deleted =
        |deletes: &[Interval], key: &[u8]| deletes.iter().any(|interval| interval.contains(key));

    let mut puts: HashSet<Vec<u8>> = HashSet::new();
    for op in ops {
        let Some(Op::RequestTxn(nested)) = &op.request else {
            continue;
        };
        let (puts_then, deletes_then) = check_intervals(&nested.success)?;
        let (puts_else, deletes_else) = check_intervals(&nested.failure)?;
        for key in &puts_then {
            if puts.contains(key) || deleted(&deletes, key) {
                return Err(EtcdError::DuplicateKey);
            }
        }
        puts.extend(puts_then.iter().cloned());
        for key in puts_else {
            // The two branches exclude each other, so a key in both is fine.
            if (puts.contains(&key) && !puts_then.contains(&key)) || deleted(&deletes, &key) {
                return Err(EtcdError::DuplicateKey);
            }
            puts.insert(key);
        }
        deletes.extend(deletes_then);
        deletes.extend(deletes_else);
    }
    for op in ops {
        let Some(Op::RequestPut(put)) = &op.request else {
            continue;
        };
        if puts.contains(&put.key) || deleted(&deletes, &put.key) {
            return Err(EtcdError::DuplicateKey);
        }
        puts.insert(put.key.clone());
    }
    Ok((puts, deletes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key: &str) -> RequestOp {
        RequestOp {
            request: Some(Op::RequestPut(PutRequest {
                key: key.into(),
                ..Default::default()
            })),
        }
    }

    fn delete(key: &str, end: &str) -> RequestOp {
        RequestOp {
            request: Some(Op::RequestDeleteRange(DeleteRangeRequest {
                key: key.into(),
                range_end: end.into(),
                ..Default::default()
            })),
        }
    }

    fn txn(success: Vec<RequestOp>, failure: Vec<RequestOp>) -> TxnRequest {
        TxnRequest {
            compare: vec![],
            success,
            failure,
        }
    }

    fn nested(success: Vec<RequestOp>, failure: Vec<RequestOp>) -> RequestOp {
        RequestOp {
            request: Some(Op::RequestTxn(txn(success, failure))),
        }
    }

    #[test]
    fn duplicate_writes_on_one_path_are_refused_as_etcd_refuses_them() {
        let cases: Vec<(&str, TxnRequest, Result<(), EtcdError>)> = vec![
            (
                "two puts",
                txn(vec![put("a"), put("a")], vec![]),
                Err(EtcdError::DuplicateKey),
            ),
            (
                "put and delete of it",
                txn(vec![put("a"), delete("a", "")], vec![]),
                Err(EtcdError::DuplicateKey),
            ),
            (
                "put inside a deleted range",
                txn(vec![delete("a", "c"), put("b")], vec![]),
                Err(EtcdError::DuplicateKey),
            ),
            (
                "put after a deleted range",
                txn(vec![delete("a", "c"), put("c")], vec![]),
                Ok(()),
            ),
            (
                "same key in both branches",
                txn(vec![put("a")], vec![put("a")]),
                Ok(()),
            ),
            (
                "nested put of an outer put",
                txn(vec![put("a"), nested(vec![put("a")], vec![])], vec![]),
                Err(EtcdError::DuplicateKey),
            ),
            (
                "nested then and else",
                txn(vec![nested(vec![put("a")], vec![put("a")])], vec![]),
                Ok(()),
            ),
            (
                "outer delete covers nested put",
                txn(
                    vec![delete("a", ""), nested(vec![put("a")], vec![])],
                    vec![],
                ),
                Err(EtcdError::DuplicateKey),
            ),
        ];
        for (name, request, expected) in cases {
            assert_eq!(check_txn(&request, 128), expected, "{name}");
        }
    }

    #[test]
    fn too_many_operations_counts_the_largest_list() {
        let ops: Vec<RequestOp> = (0..129).map(|i| put(&format!("k{i}"))).collect();
        assert_eq!(
            check_txn(&txn(ops.clone(), vec![]), 128),
            Err(EtcdError::TooManyOperations)
        );
        assert_eq!(check_txn(&txn(ops[..128].to_vec(), vec![]), 128), Ok(()));
    }

    #[test]
    fn requests_without_a_key_or_with_conflicting_flags_are_refused() {
        assert_eq!(check_put(&PutRequest::default()), Err(EtcdError::EmptyKey));
        let value = PutRequest {
            key: "k".into(),
            value: "v".into(),
            ignore_value: true,
            ..Default::default()
        };
        assert_eq!(check_put(&value), Err(EtcdError::ValueProvided));
        let lease = PutRequest {
            key: "k".into(),
            lease: 5,
            ignore_lease: true,
            ..Default::default()
        };
        assert_eq!(check_put(&lease), Err(EtcdError::LeaseProvided));
        assert_eq!(
            check_range(&RangeRequest::default()),
            Err(EtcdError::EmptyKey)
        );
        assert_eq!(
            check_delete(&DeleteRangeRequest::default()),
            Err(EtcdError::EmptyKey)
        );
        let empty_op = txn(vec![RequestOp { request: None }], vec![]);
        assert_eq!(check_txn(&empty_op, 128), Err(EtcdError::KeyNotFound));
    }
}

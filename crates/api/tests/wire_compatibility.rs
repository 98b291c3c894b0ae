//! Guards the wire contract with etcd's clients: a field renumbered or a
//! service renamed in `proto/` would still compile, and would silently
//! corrupt or drop data exchanged with `etcdctl` and Go `clientv3`.
//!
//! The expected bytes are written out by hand from etcd's field numbers
//! (etcd `api/etcdserverpb/rpc.proto`, `api/mvccpb/kv.proto`), never
//! produced by our own encoder.

use keel_api::authpb::{permission, Permission};
use keel_api::etcdserverpb::{
    compare, range_request, request_op, response_op, watch_create_request, watch_request, Compare,
    DeleteRangeRequest, PutRequest, PutResponse, RangeRequest, RangeResponse, RequestOp,
    ResponseHeader, ResponseOp, TxnRequest, TxnResponse, WatchCancelRequest, WatchCreateRequest,
    WatchProgressRequest, WatchRequest, WatchResponse,
};
use keel_api::mvccpb::{event, Event, KeyValue};
use prost::Message;

/// Asserts that `message` encodes to exactly `expected` and that `expected`
/// decodes back to `message`.
fn check<M: Message + Default + PartialEq + std::fmt::Debug>(message: &M, expected: &[u8]) {
    assert_eq!(message.encode_to_vec(), expected, "encoding of {message:?}");
    assert_eq!(&M::decode(expected).expect("decodes"), message);
}

/// Asserts that `message` survives an encode and decode unchanged.
fn round_trip<M: Message + Default + PartialEq + std::fmt::Debug>(message: &M) {
    let bytes = message.encode_to_vec();
    assert_eq!(&M::decode(bytes.as_slice()).expect("decodes"), message);
}

#[test]
fn put_request_field_numbers() {
    let put = PutRequest {
        key: b"a".to_vec(),
        value: b"b".to_vec(),
        lease: 5,
        prev_kv: true,
        ignore_value: true,
        ignore_lease: true,
    };
    #[rustfmt::skip]
    let expected = [
        0x0a, 1, b'a', // 1: key
        0x12, 1, b'b', // 2: value
        0x18, 5,       // 3: lease
        0x20, 1,       // 4: prev_kv
        0x28, 1,       // 5: ignore_value
        0x30, 1,       // 6: ignore_lease
    ];
    check(&put, &expected);
}

#[test]
fn range_request_field_numbers() {
    let range = RangeRequest {
        key: b"k".to_vec(),
        range_end: b"l".to_vec(),
        limit: 3,
        revision: 4,
        sort_order: range_request::SortOrder::Descend as i32,
        sort_target: range_request::SortTarget::Mod as i32,
        serializable: true,
        keys_only: true,
        count_only: true,
        min_mod_revision: 10,
        max_mod_revision: 11,
        min_create_revision: 12,
        max_create_revision: 13,
    };
    #[rustfmt::skip]
    let expected = [
        0x0a, 1, b'k', // 1: key
        0x12, 1, b'l', // 2: range_end
        0x18, 3,       // 3: limit
        0x20, 4,       // 4: revision
        0x28, 2,       // 5: sort_order = DESCEND
        0x30, 3,       // 6: sort_target = MOD
        0x38, 1,       // 7: serializable
        0x40, 1,       // 8: keys_only
        0x48, 1,       // 9: count_only
        0x50, 10,      // 10: min_mod_revision
        0x58, 11,      // 11: max_mod_revision
        0x60, 12,      // 12: min_create_revision
        0x68, 13,      // 13: max_create_revision
    ];
    check(&range, &expected);
}

#[test]
fn key_value_and_event_field_numbers() {
    let kv = KeyValue {
        key: b"k".to_vec(),
        create_revision: 2,
        mod_revision: 3,
        version: 4,
        value: b"v".to_vec(),
        lease: 6,
    };
    #[rustfmt::skip]
    let kv_bytes = [
        0x0a, 1, b'k', // 1: key
        0x10, 2,       // 2: create_revision
        0x18, 3,       // 3: mod_revision
        0x20, 4,       // 4: version
        0x2a, 1, b'v', // 5: value
        0x30, 6,       // 6: lease
    ];
    check(&kv, &kv_bytes);

    let event = Event {
        r#type: event::EventType::Delete as i32,
        kv: Some(KeyValue {
            key: b"k".to_vec(),
            ..KeyValue::default()
        }),
        prev_kv: None,
    };
    #[rustfmt::skip]
    let event_bytes = [
        0x08, 1,                   // 1: type = DELETE
        0x12, 3, 0x0a, 1, b'k',    // 2: kv { key }
    ];
    check(&event, &event_bytes);
}

#[test]
fn compare_lease_target_and_range_end_field_numbers() {
    let compare = Compare {
        result: compare::CompareResult::NotEqual as i32,
        target: compare::CompareTarget::Lease as i32,
        key: b"k".to_vec(),
        range_end: b"z".to_vec(),
        target_union: Some(compare::TargetUnion::Lease(7)),
    };
    #[rustfmt::skip]
    let expected = [
        0x08, 3,             // 1: result = NOT_EQUAL
        0x10, 4,             // 2: target = LEASE
        0x1a, 1, b'k',       // 3: key
        0x40, 7,             // 8: target_union.lease
        0x82, 0x04, 1, b'z', // 64: range_end (tag 64 << 3 | 2 = 514)
    ];
    check(&compare, &expected);

    // The other target_union variants, fields 4 to 7.
    for (target, tag) in [
        (compare::TargetUnion::Version(1), 0x20),
        (compare::TargetUnion::CreateRevision(1), 0x28),
        (compare::TargetUnion::ModRevision(1), 0x30),
    ] {
        let compare = Compare {
            target_union: Some(target),
            ..Compare::default()
        };
        check(&compare, &[tag, 1]);
    }
    let compare = Compare {
        target_union: Some(compare::TargetUnion::Value(b"v".to_vec())),
        ..Compare::default()
    };
    check(&compare, &[0x3a, 1, b'v']);
}

#[test]
fn txn_request_field_numbers() {
    let txn = TxnRequest {
        compare: vec![Compare::default()],
        success: vec![RequestOp {
            request: Some(request_op::Request::RequestPut(PutRequest {
                key: b"a".to_vec(),
                ..PutRequest::default()
            })),
        }],
        failure: vec![RequestOp {
            request: Some(request_op::Request::RequestTxn(TxnRequest::default())),
        }],
    };
    #[rustfmt::skip]
    let expected = [
        0x0a, 0,                          // 1: compare (all defaults)
        0x12, 5, 0x12, 3, 0x0a, 1, b'a',  // 2: success { 2: request_put { key } }
        0x1a, 2, 0x22, 0,                 // 3: failure { 4: request_txn {} }
    ];
    check(&txn, &expected);
}

#[test]
fn watch_field_numbers() {
    let create = WatchRequest {
        request_union: Some(watch_request::RequestUnion::CreateRequest(
            WatchCreateRequest {
                key: b"k".to_vec(),
                start_revision: 3,
                filters: vec![watch_create_request::FilterType::Nodelete as i32],
                watch_id: 7,
                fragment: true,
                ..WatchCreateRequest::default()
            },
        )),
    };
    #[rustfmt::skip]
    let expected = [
        0x0a, 12,         // 1: create_request
        0x0a, 1, b'k',    //   1: key
        0x18, 3,          //   3: start_revision
        0x2a, 1, 1,       //   5: filters, packed = [NODELETE]
        0x38, 7,          //   7: watch_id
        0x40, 1,          //   8: fragment
    ];
    check(&create, &expected);

    let cancel = WatchRequest {
        request_union: Some(watch_request::RequestUnion::CancelRequest(
            WatchCancelRequest { watch_id: 9 },
        )),
    };
    check(&cancel, &[0x12, 2, 0x08, 9]);

    let progress = WatchRequest {
        request_union: Some(watch_request::RequestUnion::ProgressRequest(
            WatchProgressRequest {},
        )),
    };
    check(&progress, &[0x1a, 0]);

    let response = WatchResponse {
        watch_id: 2,
        fragment: true,
        events: vec![Event::default()],
        ..WatchResponse::default()
    };
    #[rustfmt::skip]
    let expected = [
        0x10, 2,    // 2: watch_id
        0x38, 1,    // 7: fragment
        0x5a, 0,    // 11: events
    ];
    check(&response, &expected);
}

#[test]
fn permission_field_numbers() {
    let permission = Permission {
        perm_type: permission::Type::Readwrite as i32,
        key: b"a".to_vec(),
        range_end: b"b".to_vec(),
    };
    check(&permission, &[0x08, 2, 0x12, 1, b'a', 0x1a, 1, b'b']);
}

#[test]
fn requests_round_trip() {
    round_trip(&RangeRequest {
        key: b"/registry/".to_vec(),
        range_end: b"/registry0".to_vec(),
        limit: 500,
        revision: 1_234_567,
        sort_order: range_request::SortOrder::Ascend as i32,
        sort_target: range_request::SortTarget::Create as i32,
        serializable: true,
        max_create_revision: -1,
        ..RangeRequest::default()
    });
    round_trip(&PutRequest {
        key: vec![0, 0xff, 0x80],
        value: vec![7; 4096],
        lease: i64::MAX,
        prev_kv: true,
        ..PutRequest::default()
    });
    round_trip(&TxnRequest {
        compare: vec![
            Compare {
                result: compare::CompareResult::Equal as i32,
                target: compare::CompareTarget::Mod as i32,
                key: b"lock".to_vec(),
                target_union: Some(compare::TargetUnion::ModRevision(0)),
                range_end: Vec::new(),
            },
            Compare {
                result: compare::CompareResult::Greater as i32,
                target: compare::CompareTarget::Value as i32,
                key: b"a".to_vec(),
                target_union: Some(compare::TargetUnion::Value(b"x".to_vec())),
                range_end: b"b".to_vec(),
            },
        ],
        success: vec![
            RequestOp {
                request: Some(request_op::Request::RequestPut(PutRequest {
                    key: b"lock".to_vec(),
                    value: b"me".to_vec(),
                    lease: 42,
                    ..PutRequest::default()
                })),
            },
            RequestOp {
                request: Some(request_op::Request::RequestTxn(TxnRequest {
                    compare: Vec::new(),
                    success: vec![RequestOp {
                        request: Some(request_op::Request::RequestDeleteRange(
                            DeleteRangeRequest {
                                key: b"old".to_vec(),
                                range_end: vec![0],
                                prev_kv: true,
                            },
                        )),
                    }],
                    failure: Vec::new(),
                })),
            },
        ],
        failure: vec![RequestOp {
            request: Some(request_op::Request::RequestRange(RangeRequest {
                key: b"lock".to_vec(),
                ..RangeRequest::default()
            })),
        }],
    });
    round_trip(&WatchRequest {
        request_union: Some(watch_request::RequestUnion::CreateRequest(
            WatchCreateRequest {
                key: b"/".to_vec(),
                range_end: b"0".to_vec(),
                start_revision: 100,
                progress_notify: true,
                filters: vec![
                    watch_create_request::FilterType::Noput as i32,
                    watch_create_request::FilterType::Nodelete as i32,
                ],
                prev_kv: true,
                watch_id: -1,
                fragment: false,
            },
        )),
    });
}

#[test]
fn responses_round_trip() {
    let header = Some(ResponseHeader {
        cluster_id: u64::MAX,
        member_id: 1,
        revision: 99,
        raft_term: 3,
    });
    let kv = KeyValue {
        key: b"k".to_vec(),
        create_revision: 1,
        mod_revision: 99,
        version: 5,
        value: b"v".to_vec(),
        lease: 0,
    };
    round_trip(&TxnResponse {
        header,
        succeeded: true,
        responses: vec![
            ResponseOp {
                response: Some(response_op::Response::ResponsePut(PutResponse {
                    header,
                    prev_kv: Some(kv.clone()),
                })),
            },
            ResponseOp {
                response: Some(response_op::Response::ResponseRange(RangeResponse {
                    header,
                    kvs: vec![kv.clone(), kv.clone()],
                    more: true,
                    count: 7,
                })),
            },
        ],
    });
    round_trip(&WatchResponse {
        header,
        watch_id: 3,
        created: false,
        canceled: true,
        compact_revision: 50,
        cancel_reason: "etcdserver: mvcc: required revision has been compacted".to_owned(),
        fragment: false,
        events: vec![Event {
            r#type: event::EventType::Put as i32,
            kv: Some(kv.clone()),
            prev_kv: Some(kv),
        }],
    });
}

/// The gRPC paths clients call are `/<package>.<Service>/<Method>`.
#[test]
fn service_names_match_etcd() {
    use keel_api::{etcdserverpb, v3electionpb, v3lockpb};
    let names = [
        (etcdserverpb::kv_server::SERVICE_NAME, "etcdserverpb.KV"),
        (
            etcdserverpb::watch_server::SERVICE_NAME,
            "etcdserverpb.Watch",
        ),
        (
            etcdserverpb::lease_server::SERVICE_NAME,
            "etcdserverpb.Lease",
        ),
        (
            etcdserverpb::cluster_server::SERVICE_NAME,
            "etcdserverpb.Cluster",
        ),
        (
            etcdserverpb::maintenance_server::SERVICE_NAME,
            "etcdserverpb.Maintenance",
        ),
        (etcdserverpb::auth_server::SERVICE_NAME, "etcdserverpb.Auth"),
        (
            v3electionpb::election_server::SERVICE_NAME,
            "v3electionpb.Election",
        ),
        (v3lockpb::lock_server::SERVICE_NAME, "v3lockpb.Lock"),
    ];
    for (actual, expected) in names {
        assert_eq!(actual, expected);
    }
}

//! Keel answers KV requests that etcdctl 3.4 cannot send exactly as etcd does: count-only
//! ranges, revision filters, ranged and lease compares, nested transactions, empty operations.
//! Each scenario sends the same gRPC requests to a fresh Keel and a fresh etcd and compares the
//! answers with the cluster and member ids and the raft term taken out.
//!
//! Guards against: differences in the parts of the KV API only programs (not etcdctl 3.4) reach.

mod support;

use keel_api::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use keel_api::etcdserverpb::kv_client::KvClient;
use keel_api::etcdserverpb::range_request::{SortOrder, SortTarget};
use keel_api::etcdserverpb::request_op::Request as Op;
use keel_api::etcdserverpb::{
    CompactionRequest, Compare, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp,
    ResponseHeader, TxnRequest,
};
use support::{Etcd, Keel};
use tonic::transport::Channel;

/// One request.
#[derive(Debug, Clone)]
enum Call {
    Put(PutRequest),
    Range(RangeRequest),
    Delete(DeleteRangeRequest),
    Txn(TxnRequest),
    Compact(CompactionRequest),
}

fn put(key: &str, value: &str) -> Call {
    Call::Put(put_request(key, value))
}

fn put_request(key: &str, value: &str) -> PutRequest {
    PutRequest {
        key: key.into(),
        value: value.into(),
        ..PutRequest::default()
    }
}

/// A range over `[key, end)`; an empty `end` is the key alone.
fn range(key: &str, end: &str) -> RangeRequest {
    RangeRequest {
        key: key.into(),
        range_end: end.into(),
        ..RangeRequest::default()
    }
}

fn compare(key: &str, end: &str, target: CompareTarget, result: CompareResult) -> Compare {
    let target_union = match target {
        CompareTarget::Value => TargetUnion::Value(Vec::new()),
        CompareTarget::Version => TargetUnion::Version(0),
        CompareTarget::Create => TargetUnion::CreateRevision(0),
        CompareTarget::Mod => TargetUnion::ModRevision(0),
        CompareTarget::Lease => TargetUnion::Lease(0),
    };
    Compare {
        key: key.into(),
        range_end: end.into(),
        target: target as i32,
        result: result as i32,
        target_union: Some(target_union),
    }
}

fn with(mut compare: Compare, union: TargetUnion) -> Compare {
    compare.target_union = Some(union);
    compare
}

fn op(request: Op) -> RequestOp {
    RequestOp {
        request: Some(request),
    }
}

fn get_op(key: &str, end: &str) -> RequestOp {
    op(Op::RequestRange(range(key, end)))
}

fn put_op(key: &str, value: &str) -> RequestOp {
    op(Op::RequestPut(put_request(key, value)))
}

fn txn(compare: Vec<Compare>, success: Vec<RequestOp>, failure: Vec<RequestOp>) -> TxnRequest {
    TxnRequest {
        compare,
        success,
        failure,
    }
}

/// The answer with what differs between any two clusters taken out.
fn scrub(header: &mut Option<ResponseHeader>) {
    if let Some(header) = header {
        header.cluster_id = 0;
        header.member_id = 0;
        header.raft_term = 0;
    }
}

async fn answer(client: &mut KvClient<Channel>, call: &Call) -> String {
    let status = |status: tonic::Status| format!("{:?}: {}", status.code(), status.message());
    match call.clone() {
        Call::Put(request) => match client.put(request).await {
            Ok(response) => {
                let mut response = response.into_inner();
                scrub(&mut response.header);
                format!("{response:?}")
            }
            Err(error) => status(error),
        },
        Call::Range(request) => match client.range(request).await {
            Ok(response) => {
                let mut response = response.into_inner();
                scrub(&mut response.header);
                format!("{response:?}")
            }
            Err(error) => status(error),
        },
        Call::Delete(request) => match client.delete_range(request).await {
            Ok(response) => {
                let mut response = response.into_inner();
                scrub(&mut response.header);
                format!("{response:?}")
            }
            Err(error) => status(error),
        },
        Call::Txn(request) => match client.txn(request).await {
            Ok(response) => {
                let mut response = response.into_inner();
                scrub(&mut response.header);
                format!("{response:?}")
            }
            Err(error) => status(error),
        },
        Call::Compact(request) => match client.compact(request).await {
            Ok(response) => {
                let mut response = response.into_inner();
                scrub(&mut response.header);
                format!("{response:?}")
            }
            Err(error) => status(error),
        },
    }
}

/// The answers to `calls`, in order; `Err` if the server could not be reached.
fn run_all(endpoint: &str, calls: &[Call]) -> Result<Vec<String>, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let mut client = KvClient::connect(format!("http://{endpoint}"))
            .await
            .map_err(|error| format!("connect to {endpoint}: {error:?}"))?;
        let mut answers = Vec::new();
        for call in calls {
            answers.push(answer(&mut client, call).await);
        }
        Ok(answers)
    })
}

/// Sends `calls` to a fresh etcd and a fresh Keel; fails listing every call answered
/// differently.
fn check(calls: &[Call]) {
    let (etcd_answers, keel_answers) = std::thread::scope(|scope| {
        let etcd = scope.spawn(|| {
            let etcd = Etcd::start();
            run_all(&etcd.endpoint(), calls)
                .unwrap_or_else(|error| panic!("{error}\netcd's log:\n{}", etcd.log()))
        });
        let keel = scope.spawn(|| {
            let keel = Keel::start();
            run_all(&keel.endpoint(), calls)
                .unwrap_or_else(|error| panic!("{error}\nkeel's log:\n{}", keel.log()))
        });
        (
            etcd.join().expect("etcd side"),
            keel.join().expect("keel side"),
        )
    });
    let mut report = String::new();
    for ((call, etcd), keel) in calls.iter().zip(&etcd_answers).zip(&keel_answers) {
        if etcd != keel {
            report.push_str(&format!("\n{call:?}\n  etcd: {etcd}\n  keel: {keel}\n"));
        }
    }
    assert!(report.is_empty(), "Keel differs from etcd:{report}");
}

/// Revisions 2..=9: a (created 2, modified 9, version 3), b (3, 7, 2), c (4, 4, 1),
/// d (6, 6, 1), e (8, 8, 1).
fn history() -> Vec<Call> {
    [
        ("a", "1"),
        ("b", "2"),
        ("c", "3"),
        ("a", "11"),
        ("d", "4"),
        ("b", "22"),
        ("e", "5"),
        ("a", "111"),
    ]
    .iter()
    .map(|(key, value)| put(key, value))
    .collect()
}

#[test]
fn count_only_and_revision_filters_match_etcd() {
    let all = || range("a", "z");
    let mut calls = history();
    calls.extend(
        [
            RangeRequest {
                count_only: true,
                ..all()
            },
            RangeRequest {
                count_only: true,
                limit: 2,
                ..all()
            },
            RangeRequest {
                count_only: true,
                keys_only: true,
                ..all()
            },
            RangeRequest {
                count_only: true,
                revision: 5,
                ..all()
            },
            RangeRequest {
                count_only: true,
                min_mod_revision: 5,
                ..all()
            },
            RangeRequest {
                min_mod_revision: 5,
                ..all()
            },
            RangeRequest {
                max_mod_revision: 6,
                ..all()
            },
            RangeRequest {
                min_create_revision: 4,
                max_create_revision: 6,
                ..all()
            },
            RangeRequest {
                min_mod_revision: 5,
                limit: 1,
                ..all()
            },
            RangeRequest {
                min_mod_revision: 5,
                limit: 2,
                keys_only: true,
                ..all()
            },
            RangeRequest {
                max_mod_revision: 8,
                sort_order: SortOrder::Descend as i32,
                sort_target: SortTarget::Version as i32,
                limit: 2,
                ..all()
            },
            RangeRequest {
                min_mod_revision: 100,
                ..all()
            },
            RangeRequest {
                max_create_revision: 4,
                revision: 6,
                ..all()
            },
            RangeRequest {
                sort_target: SortTarget::Value as i32,
                ..all()
            },
            RangeRequest {
                sort_target: SortTarget::Mod as i32,
                limit: 2,
                ..all()
            },
            RangeRequest {
                sort_order: SortOrder::Descend as i32,
                limit: 2,
                ..all()
            },
            RangeRequest {
                sort_order: SortOrder::Ascend as i32,
                limit: 2,
                ..all()
            },
            RangeRequest { limit: -5, ..all() },
            range("\0", "\0"),
            range("c", "\0"),
            range("c", "a"),
            range("c", "c"),
            range("", "z"),
            RangeRequest {
                revision: 1,
                count_only: true,
                ..all()
            },
        ]
        .into_iter()
        .map(Call::Range),
    );
    check(&calls);
}

#[test]
fn ranged_lease_and_odd_compares_match_etcd() {
    use CompareResult::{Equal, Greater, Less, NotEqual};
    use CompareTarget::{Create, Lease, Mod, Value, Version};
    let mut calls = history();
    let compares = [
        vec![compare("a", "z", Version, Greater)],
        vec![with(
            compare("a", "c", Value, Equal),
            TargetUnion::Value("1".into()),
        )],
        vec![with(
            compare("a", "z", Value, Less),
            TargetUnion::Value("6".into()),
        )],
        vec![compare("x", "z", Create, Equal)],
        vec![compare("x", "z", Value, Equal)],
        vec![compare("x", "z", Value, NotEqual)],
        vec![with(
            compare("a", "\0", Mod, Less),
            TargetUnion::ModRevision(10),
        )],
        vec![compare("a", "", Lease, Equal)],
        vec![compare("a", "", Lease, Greater)],
        vec![compare("missing", "", Lease, Equal)],
        // A target union of another kind than the target compares against zero.
        vec![with(
            compare("a", "", Version, Equal),
            TargetUnion::ModRevision(9),
        )],
        vec![with(
            compare("a", "", Version, Greater),
            TargetUnion::ModRevision(9),
        )],
        vec![with(
            compare("a", "", Value, Equal),
            TargetUnion::Version(3),
        )],
        vec![Compare {
            target_union: None,
            ..compare("a", "", Create, Greater)
        }],
        // Unknown target and result values (etcd compares equal, and holds).
        vec![Compare {
            target: 9,
            ..compare("a", "", Create, Equal)
        }],
        vec![Compare {
            target: 9,
            ..compare("a", "", Create, Greater)
        }],
        vec![Compare {
            result: 9,
            ..compare("a", "", Create, Less)
        }],
        vec![compare("", "", Create, Equal)],
    ];
    for compare in compares {
        calls.push(Call::Txn(txn(
            compare,
            vec![get_op("a", "")],
            vec![get_op("b", "")],
        )));
    }
    check(&calls);
}

#[test]
fn nested_transactions_and_malformed_operations_match_etcd() {
    use CompareResult::Equal;
    use CompareTarget::Value;
    let value_a = |value: &str| {
        with(
            compare("a", "", Value, Equal),
            TargetUnion::Value(value.into()),
        )
    };
    let nested = |request: TxnRequest| op(Op::RequestTxn(request));
    let mut calls = history();
    calls.extend([
        Call::Txn(txn(
            vec![],
            vec![
                nested(txn(
                    vec![value_a("111")],
                    vec![put_op("n1", "x")],
                    vec![put_op("n2", "x")],
                )),
                get_op("a", ""),
            ],
            vec![],
        )),
        Call::Txn(txn(
            vec![value_a("nope")],
            vec![],
            vec![
                nested(txn(
                    vec![value_a("111")],
                    vec![get_op("n", "o"), put_op("n3", "y")],
                    vec![],
                )),
                nested(txn(vec![], vec![get_op("n3", "")], vec![])),
            ],
        )),
        // Read-only nested transactions are served without a write.
        Call::Txn(txn(
            vec![],
            vec![nested(txn(vec![], vec![get_op("a", "z")], vec![]))],
            vec![],
        )),
        // Duplicate writes across levels.
        Call::Txn(txn(
            vec![],
            vec![
                put_op("a", "1"),
                nested(txn(vec![], vec![put_op("a", "2")], vec![])),
            ],
            vec![],
        )),
        Call::Txn(txn(
            vec![],
            vec![nested(txn(
                vec![],
                vec![put_op("a", "2")],
                vec![put_op("a", "3")],
            ))],
            vec![],
        )),
        Call::Txn(txn(
            vec![],
            vec![
                op(Op::RequestDeleteRange(DeleteRangeRequest {
                    key: "a".into(),
                    range_end: "c".into(),
                    ..DeleteRangeRequest::default()
                })),
                nested(txn(vec![], vec![put_op("b", "2")], vec![])),
            ],
            vec![],
        )),
        // The nested budget is what the outer level leaves of --max-txn-ops (128).
        Call::Txn(txn(
            vec![],
            vec![nested(txn(
                vec![],
                (0..128).map(|i| put_op(&format!("m{i}"), "v")).collect(),
                vec![],
            ))],
            vec![],
        )),
        Call::Txn(txn(
            vec![],
            vec![nested(txn(
                vec![],
                (0..127).map(|i| put_op(&format!("m{i}"), "v")).collect(),
                vec![],
            ))],
            vec![],
        )),
        // Malformed operations.
        Call::Txn(txn(vec![], vec![RequestOp { request: None }], vec![])),
        Call::Txn(txn(vec![], vec![], vec![RequestOp { request: None }])),
        Call::Txn(txn(vec![], vec![get_op("", "")], vec![])),
        Call::Txn(txn(
            vec![],
            vec![op(Op::RequestPut(PutRequest {
                ignore_value: true,
                ..put_request("a", "v")
            }))],
            vec![],
        )),
        Call::Put(PutRequest {
            ignore_value: true,
            ..put_request("a", "v")
        }),
        Call::Put(PutRequest {
            ignore_lease: true,
            lease: 5,
            ..put_request("a", "v")
        }),
        Call::Put(PutRequest {
            ignore_lease: true,
            ignore_value: true,
            prev_kv: true,
            ..put_request("a", "")
        }),
        Call::Delete(DeleteRangeRequest {
            key: "c".into(),
            range_end: "a".into(),
            prev_kv: true,
        }),
        Call::Delete(DeleteRangeRequest {
            key: "m".into(),
            range_end: "\0".into(),
            prev_kv: true,
        }),
        Call::Compact(CompactionRequest {
            revision: 5,
            physical: true,
        }),
        Call::Compact(CompactionRequest {
            revision: 0,
            physical: false,
        }),
        Call::Compact(CompactionRequest {
            revision: -1,
            physical: false,
        }),
        Call::Range(RangeRequest {
            revision: 4,
            ..range("a", "z")
        }),
        Call::Range(RangeRequest {
            revision: 5,
            ..range("a", "z")
        }),
    ]);
    check(&calls);
}

#[test]
fn negative_and_zero_revisions_match_etcd_before_and_after_compaction() {
    let at = |revision: i64| {
        Call::Range(RangeRequest {
            revision,
            ..range("a", "z")
        })
    };
    let in_txn = |revision: i64| {
        Call::Txn(txn(
            vec![],
            vec![op(Op::RequestRange(RangeRequest {
                revision,
                ..range("a", "z")
            }))],
            vec![],
        ))
    };
    let compact = |revision: i64| {
        Call::Compact(CompactionRequest {
            revision,
            physical: false,
        })
    };
    let mut calls = vec![at(-1), in_txn(-1), in_txn(0), in_txn(1), compact(-1)];
    calls.extend(history());
    calls.extend([
        in_txn(-1),
        compact(0),
        in_txn(-1),
        at(-1),
        compact(0),
        compact(-1),
        compact(4),
        in_txn(-1),
        in_txn(3),
        in_txn(4),
        at(-1),
        at(3),
        compact(-1),
    ]);
    check(&calls);
}

#[test]
fn sorting_hundreds_of_tied_keys_matches_etcd() {
    // Go's sort.Sort is unstable; each pattern below drives it down a different path (pivot
    // choice, equal partitions, pattern breaking, the already-sorted shortcut).
    type Pattern = fn(u64) -> u64;
    let patterns: [(&str, Pattern); 6] = [
        ("random", |i| (i * 2_654_435_761) % 7),
        ("ascending", |i| i / 3),
        ("descending", |i| 1_000 - i / 5),
        ("organ", |i| if i < 150 { i / 4 } else { (300 - i) / 4 }),
        ("sawtooth", |i| i % 13),
        ("mostly-equal", |i| u64::from(i % 61 == 0)),
    ];
    let mut calls = Vec::new();
    for (name, pattern) in patterns {
        for i in 0..300_u64 {
            // Keys in an order unrelated to the values, so ties show the sort's own order.
            let key = format!("{name}/{:03}", (i * 37) % 300);
            calls.push(put(&key, &format!("{:04}", pattern(i))));
        }
        for target in [SortTarget::Value, SortTarget::Create, SortTarget::Mod] {
            for order in [SortOrder::Ascend, SortOrder::Descend] {
                calls.push(Call::Range(RangeRequest {
                    sort_order: order as i32,
                    sort_target: target as i32,
                    keys_only: true,
                    ..range(&format!("{name}/"), &format!("{name}0"))
                }));
            }
        }
    }
    // Versions: a few keys written again, so most tie on version 1.
    for i in 0..40_u64 {
        calls.push(put(&format!("random/{:03}", (i * 7) % 300), "again"));
    }
    for order in [SortOrder::Ascend, SortOrder::Descend] {
        for target in [SortTarget::Version, SortTarget::Value] {
            calls.push(Call::Range(RangeRequest {
                sort_order: order as i32,
                sort_target: target as i32,
                keys_only: true,
                limit: 100,
                ..range("random/", "random0")
            }));
        }
    }
    check(&calls);
}

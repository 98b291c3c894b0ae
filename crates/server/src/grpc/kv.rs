//! The KV service: check the request, call the node, map the error, fill the header.

use std::sync::Arc;

use keel_api::etcdserverpb::kv_server::Kv;
use keel_api::etcdserverpb::{
    CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse, PutRequest,
    PutResponse, RangeRequest, RangeResponse, TxnRequest, TxnResponse,
};
use tonic::{Request, Response, Status};

use crate::apply::{self, Response as Applied};
use crate::auth::Auth;
use crate::request::Request as Proposal;
use crate::telemetry::{self, record};
use crate::{range, validate, Node};

#[derive(Debug, Clone)]
pub struct KvService {
    node: Arc<Node>,
    max_txn_ops: usize,
    auth: Arc<Auth>,
}

impl KvService {
    pub fn new(node: Arc<Node>, max_txn_ops: usize, auth: Arc<Auth>) -> KvService {
        KvService {
            node,
            max_txn_ops,
            auth,
        }
    }

    fn respond<T>(
        &self,
        mut response: T,
        header: impl FnOnce(&mut T) -> &mut Option<keel_api::etcdserverpb::ResponseHeader>,
    ) -> Result<Response<T>, Status> {
        let slot = header(&mut response);
        let revision = slot.map_or(0, |header| header.revision);
        // The last step of every KV request: the header (revision, term) for the answer.
        let filled = if telemetry::enabled() {
            tracing::info_span!(target: "keel::kv", "respond")
                .in_scope(|| self.node.header(revision))
        } else {
            self.node.header(revision)
        };
        // On the request's server span, not the respond span.
        record("etcd.revision", filled.revision);
        record("raft.term", filled.raft_term as i64);
        *slot = Some(filled);
        Ok(Response::new(response))
    }
}

/// Key bytes shown on a span: enough to recognise a key, without copying a large one.
const SPAN_KEY_BYTES_MAX: usize = 256;

/// The key range of a request on the current span (keys are shown lossily as UTF-8, cut at
/// [`SPAN_KEY_BYTES_MAX`]).
fn record_range(key: &[u8], range_end: &[u8]) {
    if telemetry::enabled() {
        let shown = |bytes: &[u8]| {
            String::from_utf8_lossy(&bytes[..bytes.len().min(SPAN_KEY_BYTES_MAX)]).into_owned()
        };
        record("etcd.key", shown(key));
        if !range_end.is_empty() {
            record("etcd.range_end", shown(range_end));
        }
    }
}

/// Every answer to a proposal is of the kind proposed; anything else is a broken invariant.
fn expect<T>(applied: Applied, pick: impl FnOnce(Applied) -> Option<T>) -> T {
    pick(applied).expect("a proposal is answered with a response of its own kind")
}

#[tonic::async_trait]
impl Kv for KvService {
    async fn range(
        &self,
        request: Request<RangeRequest>,
    ) -> Result<Response<RangeResponse>, Status> {
        validate::check_range(request.get_ref())?;
        self.auth.check(&request)?;
        let request = request.into_inner();
        record_range(&request.key, &request.range_end);
        record("etcd.serializable", request.serializable);
        if !request.serializable {
            self.node.read_barrier().await?;
        }
        let span = if telemetry::enabled() {
            tracing::info_span!(target: "keel::kv", "range", etcd.limit = request.limit)
        } else {
            tracing::Span::none()
        };
        let response = span.in_scope(|| range::range(self.node.store(), &request))?;
        record("etcd.count", response.count);
        record("etcd.kvs", response.kvs.len() as i64);
        self.respond(response, |response| &mut response.header)
    }

    async fn put(&self, request: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        validate::check_put(request.get_ref())?;
        self.auth.check(&request)?;
        let request = request.into_inner();
        record_range(&request.key, &[]);
        record("etcd.value_bytes", request.value.len() as i64);
        if request.lease != 0 {
            record("etcd.lease", request.lease);
        }
        let applied = self.node.propose(Proposal::Put(request)).await?;
        let response = expect(applied, |applied| match applied {
            Applied::Put(response) => Some(response),
            _ => None,
        });
        self.respond(response, |response| &mut response.header)
    }

    async fn delete_range(
        &self,
        request: Request<DeleteRangeRequest>,
    ) -> Result<Response<DeleteRangeResponse>, Status> {
        validate::check_delete(request.get_ref())?;
        self.auth.check(&request)?;
        let request = request.into_inner();
        record_range(&request.key, &request.range_end);
        let applied = self.node.propose(Proposal::DeleteRange(request)).await?;
        let response = expect(applied, |applied| match applied {
            Applied::DeleteRange(response) => Some(response),
            _ => None,
        });
        record("etcd.deleted", response.deleted);
        self.respond(response, |response| &mut response.header)
    }

    async fn txn(&self, request: Request<TxnRequest>) -> Result<Response<TxnResponse>, Status> {
        validate::check_txn(request.get_ref(), self.max_txn_ops)?;
        self.auth.check(&request)?;
        let request = request.into_inner();
        record("etcd.txn.compares", request.compare.len() as i64);
        record("etcd.txn.success_ops", request.success.len() as i64);
        record("etcd.txn.failure_ops", request.failure.len() as i64);
        let response = if apply::is_read_only(&request) {
            // etcd serves read-only transactions without the log, as it serves ranges:
            // linearizable unless every range in it is serializable.
            if !apply::is_serializable(&request) {
                self.node.read_barrier().await?;
            }
            apply::read_only_txn(self.node.store(), &request)?
        } else {
            let applied = self.node.propose(Proposal::Txn(request)).await?;
            expect(applied, |applied| match applied {
                Applied::Txn(response) => Some(response),
                _ => None,
            })
        };
        record("etcd.txn.succeeded", response.succeeded);
        self.respond(response, |response| &mut response.header)
    }

    async fn compact(
        &self,
        request: Request<CompactionRequest>,
    ) -> Result<Response<CompactionResponse>, Status> {
        self.auth.check(&request)?;
        let applied = self
            .node
            .propose(Proposal::Compaction(request.into_inner()))
            .await?;
        let response = expect(applied, |applied| match applied {
            Applied::Compaction(response) => Some(response),
            _ => None,
        });
        self.respond(response, |response| &mut response.header)
    }
}

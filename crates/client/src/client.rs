//! The client: one connection, typed calls on the KV and Maintenance services.

use keel_api::etcdserverpb::kv_client::KvClient;
use keel_api::etcdserverpb::lease_client::LeaseClient;
use keel_api::etcdserverpb::maintenance_client::MaintenanceClient;
use keel_api::etcdserverpb::watch_client::WatchClient;
use keel_api::etcdserverpb::watch_request::RequestUnion;
use keel_api::etcdserverpb::{
    CompactionRequest, CompactionResponse, DeleteRangeResponse, LeaseGrantRequest,
    LeaseGrantResponse, LeaseKeepAliveRequest, LeaseKeepAliveResponse, LeaseLeasesRequest,
    LeaseLeasesResponse, LeaseRevokeRequest, LeaseRevokeResponse, LeaseTimeToLiveRequest,
    LeaseTimeToLiveResponse, PutResponse, RangeResponse, StatusRequest, StatusResponse, TxnRequest,
    TxnResponse, WatchCancelRequest, WatchCreateRequest, WatchProgressRequest, WatchRequest,
    WatchResponse,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic::Streaming;

use crate::trace_context::TraceContextInterceptor;
use crate::{DeleteOptions, Error, GetOptions, PutOptions};

/// The connection with the caller's trace context added to every request.
type Traced = InterceptedService<Channel, TraceContextInterceptor>;

/// A connection to one Keel (or etcd) member. Cloning is cheap and shares the connection.
#[derive(Debug, Clone)]
pub struct Client {
    kv: KvClient<Traced>,
    maintenance: MaintenanceClient<Traced>,
    watch: WatchClient<Traced>,
    lease: LeaseClient<Traced>,
}

/// Requests a stream may have queued for the server before the caller waits.
const STREAM_REQUESTS_QUEUED_MAX: usize = 64;

/// One Watch stream: create and cancel watchers on it, and read their responses.
#[derive(Debug)]
pub struct WatchStream {
    requests: mpsc::Sender<WatchRequest>,
    responses: Streaming<WatchResponse>,
}

impl WatchStream {
    /// Asks for a new watcher on this stream; its `created` response arrives with the others.
    pub async fn create(&self, request: WatchCreateRequest) -> Result<(), Error> {
        self.send(RequestUnion::CreateRequest(request)).await
    }

    pub async fn cancel(&self, watch_id: i64) -> Result<(), Error> {
        self.send(RequestUnion::CancelRequest(WatchCancelRequest { watch_id }))
            .await
    }

    pub async fn request_progress(&self) -> Result<(), Error> {
        self.send(RequestUnion::ProgressRequest(WatchProgressRequest {}))
            .await
    }

    async fn send(&self, request: RequestUnion) -> Result<(), Error> {
        let request = WatchRequest {
            request_union: Some(request),
        };
        self.requests
            .send(request)
            .await
            .map_err(|_| Error::Status(tonic::Status::cancelled("watch stream closed")))
    }

    /// The next response, or None when the server ended the stream.
    pub async fn next(&mut self) -> Result<Option<WatchResponse>, Error> {
        Ok(self.responses.message().await?)
    }
}

/// One LeaseKeepAlive stream.
#[derive(Debug)]
pub struct LeaseKeeper {
    requests: mpsc::Sender<LeaseKeepAliveRequest>,
    responses: Streaming<LeaseKeepAliveResponse>,
}

impl LeaseKeeper {
    /// Renews lease `id` and waits for the answer (TTL 0: the lease is gone).
    pub async fn keep_alive(&mut self, id: i64) -> Result<LeaseKeepAliveResponse, Error> {
        self.requests
            .send(LeaseKeepAliveRequest { id })
            .await
            .map_err(|_| Error::Status(tonic::Status::cancelled("keep-alive stream closed")))?;
        self.responses
            .message()
            .await?
            .ok_or_else(|| Error::Status(tonic::Status::cancelled("keep-alive stream ended")))
    }
}

/// Replies can be large (a range over many keys); etcd's Go client accepts any size too.
const RESPONSE_BYTES_MAX: usize = usize::MAX;

impl Client {
    /// Connects to `endpoint` (`http://host:port`, or `host:port`).
    pub async fn connect(endpoint: impl Into<String>) -> Result<Client, Error> {
        let mut endpoint = endpoint.into();
        if !endpoint.contains("://") {
            endpoint = format!("http://{endpoint}");
        }
        let connect_error = |source| Error::Connect {
            endpoint: endpoint.clone(),
            source,
        };
        let channel = Endpoint::from_shared(endpoint.clone())
            .map_err(connect_error)?
            .connect_timeout(std::time::Duration::from_secs(5))
            .connect()
            .await
            .map_err(connect_error)?;
        Ok(Client::from_channel(channel))
    }

    /// Uses an existing channel (a load-balanced one, say).
    pub fn from_channel(channel: Channel) -> Client {
        let traced = InterceptedService::new(channel, TraceContextInterceptor);
        Client {
            kv: KvClient::new(traced.clone()).max_decoding_message_size(RESPONSE_BYTES_MAX),
            maintenance: MaintenanceClient::new(traced.clone()),
            watch: WatchClient::new(traced.clone()).max_decoding_message_size(RESPONSE_BYTES_MAX),
            lease: LeaseClient::new(traced),
        }
    }

    pub async fn get(
        &mut self,
        key: impl Into<Vec<u8>>,
        options: GetOptions,
    ) -> Result<RangeResponse, Error> {
        Ok(self.kv.range(options.into_request(key)).await?.into_inner())
    }

    pub async fn put(
        &mut self,
        key: impl Into<Vec<u8>>,
        value: impl Into<Vec<u8>>,
        options: PutOptions,
    ) -> Result<PutResponse, Error> {
        Ok(self
            .kv
            .put(options.into_request(key, value))
            .await?
            .into_inner())
    }

    pub async fn delete(
        &mut self,
        key: impl Into<Vec<u8>>,
        options: DeleteOptions,
    ) -> Result<DeleteRangeResponse, Error> {
        Ok(self
            .kv
            .delete_range(options.into_request(key))
            .await?
            .into_inner())
    }

    /// Runs a transaction; build it with the message types of `keel_api::etcdserverpb`.
    pub async fn txn(&mut self, request: TxnRequest) -> Result<TxnResponse, Error> {
        Ok(self.kv.txn(request).await?.into_inner())
    }

    /// Compacts history before `revision`; with `physical`, returns once it is removed from disk.
    pub async fn compact(
        &mut self,
        revision: i64,
        physical: bool,
    ) -> Result<CompactionResponse, Error> {
        Ok(self
            .kv
            .compact(CompactionRequest { revision, physical })
            .await?
            .into_inner())
    }

    pub async fn status(&mut self) -> Result<StatusResponse, Error> {
        Ok(self
            .maintenance
            .status(StatusRequest {})
            .await?
            .into_inner())
    }

    /// Opens a Watch stream (watchers are created on it with [`WatchStream::create`]).
    pub async fn watch_stream(&mut self) -> Result<WatchStream, Error> {
        let (requests, receiver) = mpsc::channel(STREAM_REQUESTS_QUEUED_MAX);
        let responses = self
            .watch
            .watch(ReceiverStream::new(receiver))
            .await?
            .into_inner();
        Ok(WatchStream {
            requests,
            responses,
        })
    }

    /// Grants a lease of `ttl_secs` (`id` 0: the server picks one).
    pub async fn lease_grant(
        &mut self,
        ttl_secs: i64,
        id: i64,
    ) -> Result<LeaseGrantResponse, Error> {
        Ok(self
            .lease
            .lease_grant(LeaseGrantRequest { ttl: ttl_secs, id })
            .await?
            .into_inner())
    }

    pub async fn lease_revoke(&mut self, id: i64) -> Result<LeaseRevokeResponse, Error> {
        Ok(self
            .lease
            .lease_revoke(LeaseRevokeRequest { id })
            .await?
            .into_inner())
    }

    pub async fn lease_time_to_live(
        &mut self,
        id: i64,
        keys: bool,
    ) -> Result<LeaseTimeToLiveResponse, Error> {
        Ok(self
            .lease
            .lease_time_to_live(LeaseTimeToLiveRequest { id, keys })
            .await?
            .into_inner())
    }

    pub async fn lease_leases(&mut self) -> Result<LeaseLeasesResponse, Error> {
        Ok(self
            .lease
            .lease_leases(LeaseLeasesRequest {})
            .await?
            .into_inner())
    }

    /// Opens a LeaseKeepAlive stream.
    pub async fn lease_keeper(&mut self) -> Result<LeaseKeeper, Error> {
        let (requests, receiver) = mpsc::channel(STREAM_REQUESTS_QUEUED_MAX);
        let responses = self
            .lease
            .lease_keep_alive(ReceiverStream::new(receiver))
            .await?
            .into_inner();
        Ok(LeaseKeeper {
            requests,
            responses,
        })
    }
}

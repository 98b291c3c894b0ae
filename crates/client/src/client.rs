//! The client: one connection, typed calls on the KV and Maintenance services.

use keel_api::etcdserverpb::kv_client::KvClient;
use keel_api::etcdserverpb::maintenance_client::MaintenanceClient;
use keel_api::etcdserverpb::{
    CompactionRequest, CompactionResponse, DeleteRangeResponse, PutResponse, RangeResponse,
    StatusRequest, StatusResponse, TxnRequest, TxnResponse,
};
use tonic::transport::{Channel, Endpoint};

use crate::{DeleteOptions, Error, GetOptions, PutOptions};

/// A connection to one Keel (or etcd) member. Cloning is cheap and shares the connection.
#[derive(Debug, Clone)]
pub struct Client {
    kv: KvClient<Channel>,
    maintenance: MaintenanceClient<Channel>,
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
        Client {
            kv: KvClient::new(channel.clone()).max_decoding_message_size(RESPONSE_BYTES_MAX),
            maintenance: MaintenanceClient::new(channel),
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
}

//! Services a later issue builds. Every RPC is served, and answers `UNIMPLEMENTED` with a
//! message naming it and the issue that will implement it, so a client learns exactly what is
//! missing instead of getting a transport error.

use std::pin::Pin;

use futures::Stream;
use keel_api::v3electionpb::election_server::Election;
use keel_api::v3electionpb::{
    CampaignRequest, CampaignResponse, LeaderRequest, LeaderResponse, ProclaimRequest,
    ProclaimResponse, ResignRequest, ResignResponse,
};
use keel_api::v3lockpb::lock_server::Lock;
use keel_api::v3lockpb::{LockRequest, LockResponse, UnlockRequest, UnlockResponse};
use tonic::{Request, Response, Status};

pub type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// The status for an RPC that isn't built yet.
pub fn not_yet(rpc: &str, issue: u32) -> Status {
    Status::unimplemented(format!(
        "keel: {rpc} is not implemented yet (issue #{issue})"
    ))
}

/// Serves Election and Lock until their issues land.
#[derive(Debug, Clone, Copy, Default)]
pub struct NotYet;

macro_rules! not_yet_service {
    ($trait:ident, $service:literal, $issue:literal,
     streams { $($stream:ident = $item:ty;)* }
     unary { $($method:ident : $request:ty => $response:ty;)* }
     streaming { $($smethod:ident : $srequest:ty => $sresponse:ty;)* }) => {
        #[tonic::async_trait]
        impl $trait for NotYet {
            $(type $stream = BoxStream<$item>;)*
            $(async fn $method(&self, _: Request<$request>) -> Result<Response<$response>, Status> {
                Err(not_yet(concat!($service, ".", stringify!($method)), $issue))
            })*
            $(async fn $smethod(&self, _: Request<$srequest>) -> Result<Response<$sresponse>, Status> {
                Err(not_yet(concat!($service, ".", stringify!($smethod)), $issue))
            })*
        }
    };
}

// Election and Lock are built on leases and watches, so they follow issue 4.
not_yet_service!(Election, "Election", 4,
    streams { ObserveStream = LeaderResponse; }
    unary {
        campaign: CampaignRequest => CampaignResponse;
        proclaim: ProclaimRequest => ProclaimResponse;
        leader: LeaderRequest => LeaderResponse;
        resign: ResignRequest => ResignResponse;
    }
    streaming { observe: LeaderRequest => Self::ObserveStream; }
);

not_yet_service!(Lock, "Lock", 4,
    streams {}
    unary {
        lock: LockRequest => LockResponse;
        unlock: UnlockRequest => UnlockResponse;
    }
    streaming {}
);

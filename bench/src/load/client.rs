//! A thin etcd v3 gRPC client: the messages of `ringkv_engine::pb`, tonic's generic client
//! and the method paths of etcd's services. It calls exactly the RPCs the workloads need and
//! nothing else, so the tool's own CPU per request stays small.

use std::time::Duration;

use bytes::Bytes;
use ringkv_engine::pb::etcdserverpb::{
    CompactionRequest, CompactionResponse, LeaseGrantRequest, LeaseGrantResponse,
    LeaseKeepAliveRequest, LeaseKeepAliveResponse, PutRequest, PutResponse, RangeRequest,
    RangeResponse, StatusRequest, StatusResponse, TxnRequest, TxnResponse, WatchRequest,
    WatchResponse,
};
use tokio::sync::mpsc;
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Status, Streaming};

/// One gRPC connection (an HTTP/2 channel). Clones share the connection.
#[derive(Clone, Debug)]
pub struct EtcdClient {
    grpc: tonic::client::Grpc<Channel>,
    /// The endpoint this connection goes to, for messages.
    endpoint: String,
}

/// `host:port` → `http://host:port`; an explicit scheme is kept.
pub fn endpoint_uri(ep: &str) -> String {
    if ep.contains("://") {
        ep.to_owned()
    } else {
        format!("http://{ep}")
    }
}

impl EtcdClient {
    /// Opens one connection to `endpoint`.
    pub async fn connect(endpoint: &str, dial_timeout: Duration) -> Result<Self, String> {
        let uri = endpoint_uri(endpoint);
        let ep = Endpoint::from_shared(uri.clone())
            .map_err(|e| format!("invalid endpoint {endpoint:?}: {e}"))?
            .connect_timeout(dial_timeout)
            .tcp_nodelay(true);
        let channel = ep
            .connect()
            .await
            .map_err(|e| format!("cannot connect to {uri}: {e}"))?;
        Ok(EtcdClient {
            grpc: tonic::client::Grpc::new(channel),
            endpoint: endpoint.to_owned(),
        })
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    async fn unary<Req, Resp>(&mut self, path: &'static str, req: Req) -> Result<Resp, Status>
    where
        Req: prost::Message + Send + Sync + 'static,
        Resp: prost::Message + Default + Send + Sync + 'static,
    {
        self.grpc
            .ready()
            .await
            .map_err(|e| Status::unavailable(format!("connection not ready: {e}")))?;
        let codec = tonic_prost::ProstCodec::<Req, Resp>::default();
        let resp = self
            .grpc
            .unary(Request::new(req), PathAndQuery::from_static(path), codec)
            .await?;
        Ok(resp.into_inner())
    }

    /// Opens a bidirectional stream whose first request is `first`; later requests are sent
    /// through the returned sender.
    ///
    /// The first request goes out with the call because etcd (grpc-go) sends the response
    /// headers, which the call waits for, only with its first response.
    async fn bidi<Req, Resp>(
        &mut self,
        path: &'static str,
        first: Req,
    ) -> Result<(mpsc::Sender<Req>, Streaming<Resp>), Status>
    where
        Req: prost::Message + Send + Sync + 'static,
        Resp: prost::Message + Default + Send + Sync + 'static,
    {
        self.grpc
            .ready()
            .await
            .map_err(|e| Status::unavailable(format!("connection not ready: {e}")))?;
        let (tx, rx) = mpsc::channel::<Req>(1024);
        tx.try_send(first)
            .expect("a new channel with capacity has room for one request");
        let codec = tonic_prost::ProstCodec::<Req, Resp>::default();
        let resp = self
            .grpc
            .streaming(
                Request::new(tokio_stream::wrappers::ReceiverStream::new(rx)),
                PathAndQuery::from_static(path),
                codec,
            )
            .await?;
        Ok((tx, resp.into_inner()))
    }

    pub async fn put(&mut self, key: Bytes, value: Bytes) -> Result<PutResponse, Status> {
        let req = PutRequest {
            key,
            value,
            ..Default::default()
        };
        self.unary("/etcdserverpb.KV/Put", req).await
    }

    pub async fn range(&mut self, req: RangeRequest) -> Result<RangeResponse, Status> {
        self.unary("/etcdserverpb.KV/Range", req).await
    }

    pub async fn txn(&mut self, req: TxnRequest) -> Result<TxnResponse, Status> {
        self.unary("/etcdserverpb.KV/Txn", req).await
    }

    pub async fn compact(&mut self, revision: i64) -> Result<CompactionResponse, Status> {
        let req = CompactionRequest {
            revision,
            physical: false,
        };
        self.unary("/etcdserverpb.KV/Compact", req).await
    }

    pub async fn lease_grant(&mut self, ttl: i64) -> Result<LeaseGrantResponse, Status> {
        let req = LeaseGrantRequest { ttl, id: 0 };
        self.unary("/etcdserverpb.Lease/LeaseGrant", req).await
    }

    /// Opens a LeaseKeepAlive stream, sending `first` on it.
    pub async fn lease_keep_alive(
        &mut self,
        first: LeaseKeepAliveRequest,
    ) -> Result<
        (
            mpsc::Sender<LeaseKeepAliveRequest>,
            Streaming<LeaseKeepAliveResponse>,
        ),
        Status,
    > {
        self.bidi("/etcdserverpb.Lease/LeaseKeepAlive", first).await
    }

    /// Opens a Watch stream, sending `first` on it.
    pub async fn watch(
        &mut self,
        first: WatchRequest,
    ) -> Result<(mpsc::Sender<WatchRequest>, Streaming<WatchResponse>), Status> {
        self.bidi("/etcdserverpb.Watch/Watch", first).await
    }

    pub async fn status(&mut self) -> Result<StatusResponse, Status> {
        self.unary("/etcdserverpb.Maintenance/Status", StatusRequest {})
            .await
    }
}

/// A short, stable name for a failed request: the gRPC code, e.g. `Unavailable`.
pub fn status_kind(s: &Status) -> String {
    format!("{:?}", s.code())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_get_a_scheme() {
        assert_eq!(endpoint_uri("127.0.0.1:2379"), "http://127.0.0.1:2379");
        assert_eq!(endpoint_uri("https://h:1"), "https://h:1");
    }

    #[test]
    fn status_kinds_are_code_names() {
        assert_eq!(status_kind(&Status::unavailable("x")), "Unavailable");
        assert_eq!(
            status_kind(&Status::resource_exhausted("x")),
            "ResourceExhausted"
        );
    }
}

//! `grpc.health.v1.Health`: etcd registers the standard health service with service `""`
//! reporting SERVING (etcd-v3-spec.md §1); any other service name is unknown.

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::errors::EtcdError;
use crate::frontend::Shared;
use crate::node::{BoxStream, EtcdNode};
use crate::pb::health::{
    HealthCheckRequest, HealthCheckResponse, health_check_response::ServingStatus,
    health_server::Health,
};

/// The health service.
pub struct HealthService<N> {
    /// Shared front-end state (for the shutdown signal).
    pub shared: Shared<N>,
}

#[tonic::async_trait]
impl<N: EtcdNode> Health for HealthService<N> {
    async fn check(
        &self,
        req: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        if !req.get_ref().service.is_empty() {
            return Err(EtcdError::HealthUnknownService.into());
        }
        Ok(Response::new(HealthCheckResponse {
            status: ServingStatus::Serving as i32,
        }))
    }

    type WatchStream = BoxStream<Result<HealthCheckResponse, Status>>;

    /// Sends the status once, then holds the stream open until shutdown (the status of service
    /// `""` never changes while the server runs).
    async fn watch(
        &self,
        req: Request<HealthCheckRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let status = if req.get_ref().service.is_empty() {
            ServingStatus::Serving
        } else {
            ServingStatus::ServiceUnknown
        };
        let (tx, rx) = mpsc::channel(1);
        let mut shutdown = self.shared.shutdown.clone();
        tokio::spawn(async move {
            if tx
                .send(Ok(HealthCheckResponse {
                    status: status as i32,
                }))
                .await
                .is_err()
            {
                return;
            }
            tokio::select! {
                _ = shutdown.fired() => {
                    let _ = tx.send(Err(EtcdError::Stopped.into())).await;
                }
                _ = tx.closed() => {}
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

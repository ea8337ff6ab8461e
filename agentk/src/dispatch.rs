//! Serving the streams kas opens: one task per stream, dispatched on the request head's service
//! (`k8s-api`, `service-proxy`, `cache`), with one log line per request.
//!
//! An unknown service is answered with 404 and a Kubernetes `Status` body (reason `NotFound`), not
//! with a RESET: kas can pass a readable answer on to its client.

use std::sync::Arc;

use protocol::proto::RequestHead;
use protocol::service;
use runtime_tokio::{Connection, Stream};
use tokio::time::Instant;
use tracing::Instrument;

use crate::body::RequestBody;
use crate::cache::CacheHandle;
use crate::forward::{Exchange, Outcome};
use crate::informer::ServiceInformer;
use crate::service_pool::ServicePool;
use crate::service_proxy::Clients;
use crate::upstream::{ApiClient, HttpService};
use crate::{cache_service, k8s_api, service_proxy};

/// What serving a stream needs.
#[derive(Clone)]
pub struct Services {
    /// The Kubernetes API server, with agentk's credentials.
    pub api: Arc<ApiClient>,
    /// The same for upgraded `k8s-api` streams (hyper-util's client).
    pub kube: HttpService,
    /// Keep-alive HTTP/1.1 connections to in-cluster services.
    pub pool: Arc<ServicePool>,
    /// The Services the service proxy resolves (watched, not read per request).
    pub services: ServiceInformer,
    /// The informer cache, if it runs.
    pub cache: Option<CacheHandle>,
}

/// Accepts streams on `conn` until it is over, each served on its own task.
pub async fn serve_connection(conn: Connection, services: Arc<Services>) {
    // Bounded by the connection: `accept_stream` returns `None` once it is over.
    while let Some((head, stream)) = conn.accept_stream().await {
        let span = tracing::info_span!(
            "stream",
            stream = stream.id().0,
            service = %head.service,
            method = %head.method,
            path = %head.path,
        );
        // Boxed: the stream's future (the upstream exchange's whole state, kilobytes) is then
        // moved as a pointer while tokio spawns it and when the task ends, not copied 3-4 times.
        tokio::spawn(Box::pin(serve_stream(services.clone(), head, stream)).instrument(span));
    }
}

/// Serves one stream and logs how it ended.
pub async fn serve_stream(services: Arc<Services>, head: RequestHead, stream: Stream) {
    let started = Instant::now();
    let (recv, send) = stream.split();
    let outcome = match head.service.as_str() {
        service::K8S_API => {
            let clients = k8s_api::ApiClients {
                api: &services.api,
                upgrades: &services.kube,
            };
            k8s_api::serve(clients, &head, recv, send).await
        }
        service::SERVICE_PROXY => {
            let clients = Clients {
                services: &services.services,
                pool: &services.pool,
            };
            service_proxy::serve(clients, &head, recv, send).await
        }
        service::CACHE => cache_service::serve(services.cache.as_ref(), &head, recv, send).await,
        other => {
            let (_, reset) = RequestBody::from_tunnel(recv);
            let mut ex = Exchange::new(send, reset, 0);
            ex.answer_status(
                404,
                "NotFound",
                &format!("agentk does not serve {other:?}"),
                None,
            )
            .await
        }
    };
    let duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    match outcome {
        Outcome::Done { status } => tracing::info!(status, duration_ms, "request served"),
        Outcome::Truncated { status, reason } => {
            tracing::warn!(status, duration_ms, %reason, "response body cut short")
        }
        Outcome::Cancelled { status, error } => {
            tracing::info!(?status, duration_ms, %error, "request cancelled by kas")
        }
        Outcome::Upgraded {
            to_upstream,
            to_kas,
            error: None,
        } => tracing::info!(to_upstream, to_kas, duration_ms, "upgraded session ended"),
        Outcome::Upgraded { error: Some(e), .. } => {
            tracing::info!(duration_ms, error = %e, "upgraded session failed")
        }
    }
}

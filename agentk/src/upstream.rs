//! The HTTP clients agentk forwards requests with.
//!
//! - The Kubernetes API client: kube's own middleware from its configuration (base URI, credentials,
//!   impersonation headers; `kube::client::ConfigExt`) over hyper-util's pooled client with kube's
//!   rustls connector. kube's `Client::send` takes only buffered request bodies, so agentk builds the
//!   same stack itself with a streaming body type.
//!
//! It is boxed as [`HttpService`]. In-cluster services are reached on keep-alive connections of
//! [`crate::service_pool`] instead.

use std::error::Error as StdError;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use kube::client::ConfigExt;
use tower::ServiceBuilder;
use tower::util::BoxCloneSyncService;

use crate::body::RequestBody;
use crate::config::KubeSource;
use crate::error::Error;

/// The error every upstream call reports.
pub type BoxError = Box<dyn StdError + Send + Sync>;

/// An HTTP client as a cloneable, shareable tower service with a streaming request body.
pub type HttpService = BoxCloneSyncService<Request<RequestBody>, Response<Incoming>, BoxError>;

/// Connect timeout for the API server when kube sets none.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an idle pooled upstream connection is kept.
const POOL_IDLE: Duration = Duration::from_secs(90);

/// Loads kube's client configuration.
pub async fn load_kube_config(source: &KubeSource) -> Result<kube::Config, Error> {
    match source {
        KubeSource::Kubeconfig { path, context } => {
            let kubeconfig = kube::config::Kubeconfig::read_from(path)
                .map_err(|e| Error::kube("reading the kubeconfig", e))?;
            let options = kube::config::KubeConfigOptions {
                context: context.clone(),
                ..Default::default()
            };
            kube::Config::from_custom_kubeconfig(kubeconfig, &options)
                .await
                .map_err(|e| Error::kube("loading the kubeconfig", e))
        }
        KubeSource::InCluster => {
            kube::Config::incluster().map_err(|e| Error::kube("in-cluster configuration", e))
        }
        KubeSource::Infer => kube::Config::infer()
            .await
            .map_err(|e| Error::kube("inferring the configuration", e)),
    }
}

/// The Kubernetes API client with agentk's own credentials.
pub fn kube_service(config: &kube::Config) -> Result<HttpService, Error> {
    if let Some(proxy) = &config.proxy_url {
        tracing::warn!(%proxy, "the kubeconfig names a proxy; agentk connects to the API server directly");
    }
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(config.connect_timeout.unwrap_or(CONNECT_TIMEOUT)));
    let https = config
        .rustls_https_connector_with_connector(http)
        .map_err(|e| Error::kube("TLS to the API server", e))?;
    let client = Client::builder(TokioExecutor::new())
        .pool_idle_timeout(POOL_IDLE)
        .build::<_, RequestBody>(https);
    let auth = config
        .auth_layer()
        .map_err(|e| Error::kube("credentials", e))?;
    let extra_headers = config
        .extra_headers_layer()
        .map_err(|e| Error::kube("impersonation headers", e))?;
    let service = ServiceBuilder::new()
        .layer(config.base_uri_layer())
        .option_layer(auth)
        .layer(extra_headers)
        .map_err(BoxError::from)
        .service(client);
    Ok(BoxCloneSyncService::new(service))
}

/// A short kind for the `x-tunnel-error` header and the full message of an upstream failure.
pub fn classify(error: &(dyn StdError + 'static)) -> (&'static str, String) {
    let mut kind = "upstream";
    let mut message = error.to_string();
    let mut source: Option<&(dyn StdError + 'static)> = Some(error);
    let mut depth = 0;
    while let Some(e) = source {
        if e.is::<rustls::Error>() {
            kind = "tls";
        } else if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::TimedOut {
                kind = "timeout";
            } else if kind == "upstream" {
                kind = "connect";
            }
        } else if let Some(h) = e.downcast_ref::<hyper_util::client::legacy::Error>()
            && h.is_connect()
            && kind == "upstream"
        {
            kind = "connect";
        }
        if depth > 0 {
            let text = e.to_string();
            if !message.contains(&text) {
                message.push_str(": ");
                message.push_str(&text);
            }
        }
        depth += 1;
        if depth > 16 {
            break;
        }
        source = e.source();
    }
    (kind, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_timeouts_and_connect_errors() {
        let timeout = std::io::Error::new(std::io::ErrorKind::TimedOut, "slow");
        assert_eq!(classify(&timeout).0, "timeout");
        let refused = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        assert_eq!(classify(&refused).0, "connect");
        let tls = rustls::Error::General("bad cert".into());
        assert_eq!(classify(&tls).0, "tls");
        let other = std::fmt::Error;
        assert_eq!(classify(&other).0, "upstream");
    }
}

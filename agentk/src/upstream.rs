//! The HTTP clients agentk reaches the Kubernetes API server with.
//!
//! - [`ApiClient`], for `k8s-api` requests: agentk's own keep-alive HTTP/1.1 connections to the API
//!   server ([`crate::service_pool`] over [`ApiConnector`]: TCP, then TLS with kube's rustls
//!   configuration: its CA, client certificate, `tls-server-name`), each driven by the stream's own
//!   task, no connection or pool task and no channel hop between them. Each request gets what
//!   kube's middleware gives a kube client's (`kube::client::ConfigExt`): the server URL's path
//!   prefix, `Host`, `Authorization` from kube's auth layer (a static token or basic credentials,
//!   or a token kube refreshes: a token file re-read when due, an exec plugin, OAuth/OIDC), and the
//!   configured extra and impersonation headers. The auth and header layers are kube's own,
//!   applied to the request before it is sent ([`ApiClient::prepare`]), so what a credential is
//!   and when it is refreshed stays kube's decision.
//! - [`kube_service`], for upgraded `k8s-api` streams only (`kubectl exec`, `port-forward`;
//!   [`crate::upgrade`], which takes the connection over after `101` with `hyper::upgrade`): the
//!   same middleware over hyper-util's pooled client with kube's rustls connector, boxed as
//!   [`HttpService`]. kube's `Client::send` takes only buffered request bodies, so agentk builds
//!   that stack itself with a streaming body type.

use std::error::Error as StdError;
use std::sync::Arc;
use std::time::Duration;

use http::header::{HOST, HeaderValue};
use http::uri::PathAndQuery;
use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use kube::client::ConfigExt;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_util::either::Either;
use tower::util::BoxCloneSyncService;
use tower::{ServiceBuilder, ServiceExt};

use crate::body::RequestBody;
use crate::config::KubeSource;
use crate::error::Error;
use crate::forward::{Exchange, Guarded, Outcome};
use crate::service_pool::{self, Connect, ServicePool, connect_tcp};

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

/// The Kubernetes API client with agentk's own credentials as a tower service over hyper-util's
/// pooled client: for upgraded streams only ([`crate::upgrade`]); other requests go through
/// [`ApiClient`].
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
    let middleware = kube_middleware(config)?;
    let service = ServiceBuilder::new()
        .layer(config.base_uri_layer())
        .service_fn(move |request: Request<RequestBody>| {
            let (middleware, client) = (middleware.clone(), client.clone());
            async move {
                let prepared = middleware.oneshot(request).await?.into_body();
                client.request(prepared).await.map_err(BoxError::from)
            }
        });
    Ok(BoxCloneSyncService::new(service))
}

/// What kube's middleware does to a request before it is sent: `Authorization` and the extra
/// (impersonation) headers. The inner service hands the request back (as a response's body).
type Middleware =
    BoxCloneSyncService<Request<RequestBody>, Response<Request<RequestBody>>, BoxError>;

/// kube's auth and extra-headers layers for `config`, built once here for both clients (kube's
/// layer types cannot be named, so they are boxed as [`Middleware`]).
fn kube_middleware(config: &kube::Config) -> Result<Middleware, Error> {
    let auth = config
        .auth_layer()
        .map_err(|e| Error::kube("credentials", e))?;
    let extra_headers = config
        .extra_headers_layer()
        .map_err(|e| Error::kube("impersonation headers", e))?;
    let middleware = ServiceBuilder::new()
        .option_layer(auth)
        .layer(extra_headers)
        .map_err(BoxError::from)
        // tower-http's layer wants a response: the request travels back as its body.
        .service_fn(|request: Request<RequestBody>| async move {
            Ok::<_, BoxError>(Response::new(request))
        });
    Ok(BoxCloneSyncService::new(middleware))
}

/// The Kubernetes API server client for `k8s-api` requests: keep-alive HTTP/1.1 connections
/// driven by the stream's task, kube's credentials; see the module documentation.
pub struct ApiClient {
    pool: ServicePool<ApiConnector>,
    /// `host:port` of the API server, the pool's one authority.
    authority: String,
    /// The `Host` header: the server URL's host, and its port unless the scheme's default.
    host: HeaderValue,
    /// The server URL's path without its trailing `/` (empty for most servers), put before every
    /// request's path as kube's base-URI layer does.
    base_path: String,
    middleware: Middleware,
}

impl ApiClient {
    /// The client for the API server of kube's `config`.
    pub fn new(config: &kube::Config) -> Result<ApiClient, Error> {
        let url = &config.cluster_url;
        let bad =
            |what: &str| Error::kube("the API server URL", std::io::Error::other(what.to_owned()));
        let tls = match url.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(bad("its scheme is neither https nor http")),
        };
        let host = url.host().ok_or_else(|| bad("it names no host"))?;
        let port = url.port_u16().unwrap_or(if tls { 443 } else { 80 });
        let authority = format!("{host}:{port}");
        let default_port = url
            .port_u16()
            .is_none_or(|p| p == if tls { 443 } else { 80 });
        let host_header = if default_port {
            HeaderValue::from_str(host)
        } else {
            HeaderValue::from_str(&authority)
        }
        .map_err(|_| bad("its host is not a valid Host header"))?;
        let tls = if tls {
            let rustls = config
                .rustls_client_config()
                .map_err(|e| Error::kube("TLS to the API server", e))?;
            let name = match &config.tls_server_name {
                Some(name) => name.as_str(),
                None => host
                    .strip_prefix('[')
                    .and_then(|h| h.strip_suffix(']'))
                    .unwrap_or(host),
            };
            let name = ServerName::try_from(name.to_owned())
                .map_err(|e| Error::kube("the API server's TLS name", e))?;
            Some((tokio_rustls::TlsConnector::from(Arc::new(rustls)), name))
        } else {
            None
        };
        let connector = ApiConnector {
            tls,
            timeout: config.connect_timeout.unwrap_or(CONNECT_TIMEOUT),
        };
        let middleware = kube_middleware(config)?;
        let base_path = url
            .path_and_query()
            .map(|p| p.path().trim_end_matches('/').to_owned())
            .unwrap_or_default();
        Ok(ApiClient {
            pool: ServicePool::new(connector),
            authority,
            host: host_header,
            base_path,
            middleware,
        })
    }

    /// `request` (origin-form URI, as [`crate::k8s_api::api_request`] makes it) as it goes to the
    /// API server: the server URL's path prefix, `Host`, and kube's credentials and extra headers.
    /// `Err`: kube could not produce the credentials (a token file unreadable, an exec plugin
    /// failing).
    pub async fn prepare(
        &self,
        mut request: Request<RequestBody>,
    ) -> Result<Request<RequestBody>, BoxError> {
        if !self.base_path.is_empty() {
            let path = request
                .uri()
                .path_and_query()
                .map_or("/", PathAndQuery::as_str);
            *request.uri_mut() = Uri::try_from(format!("{}{path}", self.base_path))?;
        }
        request.headers_mut().insert(HOST, self.host.clone());
        let prepared = self.middleware.clone().oneshot(request).await?;
        Ok(prepared.into_body())
    }

    /// Sends `request` to the API server on a pooled connection (or a new one) and streams the
    /// answer back on the exchange ([`service_pool::forward`]).
    pub async fn forward(&self, request: Request<RequestBody>, ex: &mut Exchange) -> Outcome {
        let request = match ex.guard(self.prepare(request)).await {
            Guarded::Done(Ok(r)) => r,
            Guarded::Done(Err(e)) => {
                return service_pool::upstream_failed(classify(e.as_ref()), ex).await;
            }
            Guarded::Cancelled(error) => {
                return Outcome::Cancelled {
                    status: None,
                    error,
                };
            }
            Guarded::TimedOut => return ex.answer_timeout().await,
        };
        service_pool::forward(&self.pool, &self.authority, request, ex).await
    }

    /// Idle connections kept to the API server (tests).
    pub fn idle_count(&self) -> usize {
        self.pool.idle_count(&self.authority)
    }
}

/// Connections to the API server: TCP (`TCP_NODELAY`, kube's connect timeout), then TLS with
/// kube's rustls configuration for an `https` server (ALPN as kube's connector: none, HTTP/1.1).
pub struct ApiConnector {
    /// kube's TLS configuration and the name the certificate must carry; `None`: plain HTTP.
    tls: Option<(tokio_rustls::TlsConnector, ServerName<'static>)>,
    timeout: Duration,
}

impl Connect for ApiConnector {
    type Io = TokioIo<ApiStream>;

    async fn connect(&self, authority: &str) -> Result<Self::Io, BoxError> {
        let tcp = connect_tcp(authority, self.timeout).await?;
        let stream = match &self.tls {
            None => Either::Left(tcp),
            Some((tls, name)) => {
                let handshake = tls.connect(name.clone(), tcp);
                let tls = tokio::time::timeout(self.timeout, handshake)
                    .await
                    .map_err(|_| {
                        std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            format!("the TLS handshake with {authority} timed out"),
                        )
                    })??;
                Either::Right(Box::new(tls))
            }
        };
        Ok(TokioIo::new(stream))
    }
}

/// A connection to the API server: plain TCP (`Left`) or TLS (`Right`). tokio-util's `Either` forwards
/// every `AsyncRead`/`AsyncWrite` method, vectored writes included, so hyper's writes stay vectored.
pub type ApiStream = Either<TcpStream, Box<tokio_rustls::client::TlsStream<TcpStream>>>;

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
            if io
                .get_ref()
                .is_some_and(|inner| inner.is::<rustls::Error>())
            {
                // tokio-rustls reports a failed handshake as an `io::Error` around rustls' error,
                // which `source()` skips.
                kind = "tls";
            } else if io.kind() == std::io::ErrorKind::TimedOut {
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
        let handshake = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
        );
        assert_eq!(classify(&handshake).0, "tls");
    }
}

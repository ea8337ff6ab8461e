//! The demo cluster's fake Prometheus: a tiny Prometheus-shaped HTTP server standing in for an
//! in-cluster service, and the Service `monitoring/prometheus` (port `web`) that points at it (its
//! cluster IP is the server's loopback address in the simulation). `kas-demo` starts one per cluster;
//! `sim-apiserver --prometheus NAME` (and so `simulator apiserver`) serves the same, so the commands
//! in the demo's `manual-commands.sh` reproduce the demo.
//!
//! `GET /api/v1/query` answers an instant vector with one `up` sample labelled `cluster=NAME` whose
//! timestamp is the server's uptime in seconds; any other path answers
//! `{"status":"success","data":"prometheus of NAME"}`.

use std::net::SocketAddr;
use std::sync::Arc;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

use crate::Store;

/// Starts the fake Prometheus on `listen` (port 0: any) as tasks of the current tokio runtime;
/// answers carry the label `cluster = cluster`. Returns the bound address.
pub async fn start(listen: SocketAddr, cluster: String) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    let started = std::time::Instant::now();
    let cluster = Arc::new(cluster);
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let cluster = cluster.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let body = answer(req.uri().path(), &cluster, started.elapsed().as_secs());
                    async move {
                        let mut resp = hyper::Response::new(Full::new(Bytes::from(body)));
                        resp.headers_mut().insert(
                            hyper::header::CONTENT_TYPE,
                            hyper::header::HeaderValue::from_static("application/json"),
                        );
                        Ok::<_, std::convert::Infallible>(resp)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    Ok(addr)
}

/// The JSON body for `path`.
fn answer(path: &str, cluster: &str, uptime: u64) -> String {
    let body = if path == "/api/v1/query" {
        serde_json::json!({
            "status": "success",
            "data": {"resultType": "vector", "result": [
                {"metric": {"__name__": "up", "job": "kubernetes-nodes", "cluster": cluster},
                 "value": [uptime, "1"]}
            ]}
        })
    } else {
        serde_json::json!({"status": "success", "data": format!("prometheus of {cluster}")})
    };
    body.to_string()
}

/// Creates the namespace `monitoring` and the Service `monitoring/prometheus` (port `web`) pointing
/// at `addr`. Failures are logged (the cluster works without it).
pub fn add_service(store: &Store, addr: SocketAddr) {
    if let Err(e) = store.add_namespace("monitoring") {
        tracing::warn!(error = %e, "could not create the monitoring namespace");
    }
    let svc = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "prometheus", "namespace": "monitoring", "labels": {"app": "prometheus"}},
        "spec": {
            "clusterIP": addr.ip().to_string(),
            "ports": [{"name": "web", "port": addr.port(), "protocol": "TCP"}],
            "selector": {"app": "prometheus"}
        }
    });
    if let Err(e) = store.apply(svc, "prometheus", true) {
        tracing::warn!(error = %e, "could not create the prometheus service");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_carry_the_cluster_label() {
        let v: serde_json::Value =
            serde_json::from_str(&answer("/api/v1/query", "cluster-2", 7)).expect("json");
        assert_eq!(v["data"]["result"][0]["metric"]["cluster"], "cluster-2");
        assert_eq!(v["data"]["result"][0]["value"][0], 7);
        let v: serde_json::Value = serde_json::from_str(&answer("/", "c", 0)).expect("json");
        assert_eq!(v["data"], "prometheus of c");
    }
}

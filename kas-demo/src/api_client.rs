//! A blocking HTTPS client for kas's API that trusts only the demo CA: used by `kas-demo webhook`, and
//! by tests and benchmarks reading `GET /api/v1/…`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiClientError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: not a PEM certificate: {reason}", path.display())]
    Ca { path: PathBuf, reason: String },
    #[error("{method} {url}: {reason}")]
    Http {
        method: &'static str,
        url: String,
        reason: String,
    },
}

/// kas's API at `base` (`https://127.0.0.1:8080`).
#[derive(Debug, Clone)]
pub struct ApiClient {
    base: String,
    agent: ureq::Agent,
}

/// Reads a file, naming it in the error.
pub(crate) fn read_file(path: &Path) -> Result<Vec<u8>, ApiClientError> {
    std::fs::read(path).map_err(|source| ApiClientError::Read {
        path: path.to_owned(),
        source,
    })
}

impl ApiClient {
    /// Trusts only the CA in `ca_file`; every call is bounded by `timeout`. 4xx/5xx are answers.
    pub fn new(base: &str, ca_file: &Path, timeout: Duration) -> Result<Self, ApiClientError> {
        use ureq::tls::{Certificate, RootCerts, TlsConfig};
        let ca_pem = read_file(ca_file)?;
        let ca = Certificate::from_pem(&ca_pem).map_err(|e| ApiClientError::Ca {
            path: ca_file.to_owned(),
            reason: e.to_string(),
        })?;
        let tls = TlsConfig::builder()
            .root_certs(RootCerts::Specific(Arc::new(vec![ca.to_owned()])))
            .build();
        let agent = ureq::Agent::config_builder()
            .tls_config(tls)
            .http_status_as_error(false)
            .timeout_global(Some(timeout))
            .build()
            .new_agent();
        Ok(ApiClient {
            base: base.trim_end_matches('/').to_owned(),
            agent,
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// `GET base+path`: status and body (at most 16 MiB).
    pub fn get(&self, path: &str) -> Result<(u16, String), ApiClientError> {
        let url = self.url(path);
        let resp = self.agent.get(&url).call();
        answer("GET", url, resp)
    }

    /// `GET base+path` with extra headers: status and body (at most 16 MiB).
    pub fn get_with(
        &self,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<(u16, String), ApiClientError> {
        let url = self.url(path);
        let mut req = self.agent.get(&url);
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        answer("GET", url, req.call())
    }

    /// `GET base+path` with extra headers, for a response that streams (a watch): calls `opened`
    /// once the head arrived, then reads the body until it ends or the client's timeout.
    pub fn stream_with(
        &self,
        path: &str,
        headers: &[(&str, &str)],
        opened: impl FnOnce(),
    ) -> Result<u16, ApiClientError> {
        use std::io::Read as _;
        let url = self.url(path);
        let mut req = self.agent.get(&url);
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        let mut resp = req.call().map_err(|e| ApiClientError::Http {
            method: "GET",
            url: url.clone(),
            reason: e.to_string(),
        })?;
        opened();
        let mut reader = resp.body_mut().as_reader();
        let mut buf = [0u8; 4096];
        // Bounded by the client's global timeout.
        while matches!(reader.read(&mut buf), Ok(n) if n > 0) {}
        Ok(resp.status().as_u16())
    }

    /// `GET base+path` as JSON (`Null` for a body that is not JSON).
    pub fn get_json(&self, path: &str) -> Result<(u16, serde_json::Value), ApiClientError> {
        let (status, body) = self.get(path)?;
        Ok((
            status,
            serde_json::from_str(&body).unwrap_or(serde_json::Value::Null),
        ))
    }

    /// `POST base+path` with a JSON body and extra headers.
    pub fn post_json(
        &self,
        path: &str,
        headers: &[(&str, &str)],
        body: &serde_json::Value,
    ) -> Result<(u16, String), ApiClientError> {
        let url = self.url(path);
        let mut req = self
            .agent
            .post(&url)
            .header("Content-Type", "application/json");
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        let resp = req.send(body.to_string().as_bytes());
        answer("POST", url, resp)
    }
}

fn answer(
    method: &'static str,
    url: String,
    resp: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
) -> Result<(u16, String), ApiClientError> {
    let mut resp = resp.map_err(|e| ApiClientError::Http {
        method,
        url: url.clone(),
        reason: e.to_string(),
    })?;
    let status = resp.status().as_u16();
    let body = resp
        .body_mut()
        .with_config()
        .limit(16 * 1024 * 1024)
        .read_to_string()
        .map_err(|e| ApiClientError::Http {
            method,
            url,
            reason: e.to_string(),
        })?;
    Ok((status, body))
}

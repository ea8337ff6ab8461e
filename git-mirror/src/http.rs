//! Smart HTTP for gix over ureq (blocking, rustls): an implementation of gix-transport's
//! [`Http`](gix::protocol::transport::client::blocking_io::http::Http) trait.
//!
//! Why not gix's own HTTP backends: the reqwest backend brings tokio into kas (forbidden), and the curl
//! backend needs libcurl. ureq is already kas's HTTP client (with rustls and ring).
//!
//! - `GET` runs at once. `POST`'s body is collected in memory (fetch requests are small: wants, haves
//!   and capabilities; pushes are not supported) and sent when gix starts reading the response, which it
//!   only does after it has dropped the body writer.
//! - Statuses: 401 becomes `PermissionDenied` carrying `AuthenticationRequired` (as the trait requires),
//!   others an I/O error; the status is also recorded in the fetch's [`Budget`] for classification.
//! - Redirects are not followed (credentials must not be sent elsewhere); every request carries the
//!   `Authorization` header of the remote, if any, and a timeout of the fetch's remaining time; response
//!   bodies are charged to the fetch's byte budget.

use std::io::{self, BufRead, BufReader, Cursor, Read, Write};
use std::sync::{Arc, Mutex};

use gix::protocol::transport::client::AuthenticationRequired;
use gix::protocol::transport::client::blocking_io::http::{
    GetResponse, Http, PostBodyDataKind, PostResponse,
};

use crate::auth::Secret;
use crate::budget::{Budget, BudgetReader, Trip};

/// The largest request body gix may write (a fetch request with many `have` lines stays far below).
const MAX_POST_BODY: usize = 8 * 1024 * 1024;

type BodyStream = BufReader<BudgetReader<ureq::BodyReader<'static>>>;

/// One fetch's HTTP client: a shared ureq agent plus this fetch's credentials and budget.
pub(crate) struct UreqHttp {
    agent: ureq::Agent,
    authorization: Option<Secret>,
    budget: Arc<Budget>,
}

impl UreqHttp {
    pub(crate) fn new(
        agent: ureq::Agent,
        authorization: Option<Secret>,
        budget: Arc<Budget>,
    ) -> Self {
        UreqHttp {
            agent,
            authorization,
            budget,
        }
    }

    fn headers(
        &self,
        gix_headers: impl IntoIterator<Item = impl AsRef<str>>,
    ) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for h in gix_headers {
            if let Some((name, value)) = h.as_ref().split_once(':') {
                // gix never sends credentials (the URL has none); only our header authenticates.
                if name.trim().eq_ignore_ascii_case("authorization") {
                    continue;
                }
                out.push((name.trim().to_owned(), value.trim().to_owned()));
            }
        }
        if let Some(a) = &self.authorization {
            out.push(("Authorization".to_owned(), a.expose().to_owned()));
        }
        out
    }
}

/// Sends one request (a POST when there is a body) and turns the answer into header lines and a body stream, or an I/O error that
/// gix understands.
fn exchange(
    agent: &ureq::Agent,
    budget: &Arc<Budget>,
    url: &str,
    headers: &[(String, String)],
    body: Option<&[u8]>,
) -> io::Result<(Vec<u8>, BodyStream)> {
    let timeout = budget.remaining()?;
    let result = match body {
        None => {
            let mut req = agent.get(url);
            for (k, v) in headers {
                req = req.header(k, v);
            }
            req.config().timeout_global(Some(timeout)).build().call()
        }
        Some(bytes) => {
            let mut req = agent.post(url);
            for (k, v) in headers {
                req = req.header(k, v);
            }
            req.config()
                .timeout_global(Some(timeout))
                .build()
                .send(bytes)
        }
    };
    let response = match result {
        Ok(r) => r,
        Err(e) => return Err(classify_ureq(budget, e)),
    };
    let status = response.status().as_u16();
    if status == 401 {
        budget.record(Trip::HttpStatus(status));
        let www_authenticate = response
            .headers()
            .get_all("www-authenticate")
            .iter()
            .map(|v| v.as_bytes().into())
            .collect();
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            AuthenticationRequired { www_authenticate },
        ));
    }
    if !(200..300).contains(&status) {
        budget.record(Trip::HttpStatus(status));
        let kind = match status {
            403 => io::ErrorKind::PermissionDenied,
            404 => io::ErrorKind::NotFound,
            _ => io::ErrorKind::Other,
        };
        return Err(io::Error::new(kind, format!("HTTP status {status}")));
    }
    let mut head = Vec::new();
    for (name, value) in response.headers() {
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.push(b'\n');
    }
    let body = response.into_body().into_reader();
    Ok((
        head,
        BufReader::with_capacity(64 * 1024, BudgetReader::new(body, budget.clone())),
    ))
}

fn classify_ureq(budget: &Budget, e: ureq::Error) -> io::Error {
    match e {
        ureq::Error::Timeout(_) => {
            budget.record(Trip::Deadline);
            io::Error::new(io::ErrorKind::TimedOut, "the fetch timeout elapsed")
        }
        ureq::Error::Io(io) if io.kind() == io::ErrorKind::FileTooLarge => io,
        other => {
            let detail = other.to_string();
            budget.record(Trip::Connect(detail.clone()));
            io::Error::new(io::ErrorKind::ConnectionRefused, detail)
        }
    }
}

/// Header lines of a response, or the error to report when gix reads them (this is how the trait
/// expects a 401 to surface).
pub(crate) enum Headers {
    Ready(Cursor<Vec<u8>>),
    Failed(Option<io::Error>),
    Deferred(Arc<Mutex<PostState>>, Option<Cursor<Vec<u8>>>),
}

impl Read for Headers {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = {
            let available = self.fill_buf()?;
            let n = available.len().min(buf.len());
            buf[..n].copy_from_slice(&available[..n]);
            n
        };
        self.consume(n);
        Ok(n)
    }
}

impl BufRead for Headers {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        match self {
            Headers::Ready(c) => c.fill_buf(),
            Headers::Failed(e) => Err(e
                .take()
                .unwrap_or_else(|| io::Error::other("the HTTP request failed"))),
            Headers::Deferred(state, cursor) => {
                if cursor.is_none() {
                    let head = lock(state).send_and_take_head()?;
                    *cursor = Some(Cursor::new(head));
                }
                match cursor {
                    Some(c) => c.fill_buf(),
                    None => Ok(&[]),
                }
            }
        }
    }

    fn consume(&mut self, amt: usize) {
        match self {
            Headers::Ready(c) => c.consume(amt),
            Headers::Deferred(_, Some(c)) => c.consume(amt),
            _ => {}
        }
    }
}

/// A response body, possibly of a POST not sent yet.
pub(crate) enum Body {
    Ready(Box<BodyStream>),
    Empty,
    Deferred(Arc<Mutex<PostState>>),
}

impl Body {
    fn stream(&mut self) -> io::Result<Option<&mut BodyStream>> {
        if let Body::Deferred(state) = self {
            let taken = lock(state).send_and_take_body()?;
            *self = match taken {
                Some(b) => Body::Ready(Box::new(b)),
                None => Body::Empty,
            };
        }
        Ok(match self {
            Body::Ready(b) => Some(b),
            _ => None,
        })
    }
}

impl Read for Body {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.stream()? {
            Some(s) => s.read(buf),
            None => Ok(0),
        }
    }
}

impl BufRead for Body {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        match self.stream()? {
            Some(s) => s.fill_buf(),
            None => Ok(&[]),
        }
    }

    fn consume(&mut self, amt: usize) {
        if let Body::Ready(s) = self {
            s.consume(amt);
        }
    }
}

/// A POST whose body is being written by gix; it is sent on the first read of its response.
pub(crate) struct PostState {
    agent: ureq::Agent,
    budget: Arc<Budget>,
    url: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    sent: bool,
    error: Option<io::Error>,
    head: Option<Vec<u8>>,
    response: Option<BodyStream>,
}

fn lock(state: &Arc<Mutex<PostState>>) -> std::sync::MutexGuard<'_, PostState> {
    state.lock().unwrap_or_else(|p| p.into_inner())
}

impl PostState {
    fn send(&mut self) {
        if self.sent {
            return;
        }
        self.sent = true;
        let body = std::mem::take(&mut self.body);
        match exchange(
            &self.agent,
            &self.budget,
            &self.url,
            &self.headers,
            Some(&body),
        ) {
            Ok((head, stream)) => {
                self.head = Some(head);
                self.response = Some(stream);
            }
            Err(e) => self.error = Some(e),
        }
    }

    fn send_and_take_head(&mut self) -> io::Result<Vec<u8>> {
        self.send();
        if let Some(e) = self.error.take() {
            return Err(e);
        }
        Ok(self.head.take().unwrap_or_default())
    }

    fn send_and_take_body(&mut self) -> io::Result<Option<BodyStream>> {
        self.send();
        if let Some(e) = self.error.take() {
            return Err(e);
        }
        Ok(self.response.take())
    }
}

/// Collects the POST body.
pub(crate) struct PostBody(Arc<Mutex<PostState>>);

impl Write for PostBody {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut state = lock(&self.0);
        if state.sent {
            return Err(io::Error::other("the request was already sent"));
        }
        if state.body.len() + buf.len() > MAX_POST_BODY {
            return Err(io::Error::new(
                io::ErrorKind::FileTooLarge,
                "the fetch request body is too large",
            ));
        }
        state.body.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Http for UreqHttp {
    type Headers = Headers;
    type ResponseBody = Body;
    type PostBody = PostBody;

    fn get(
        &mut self,
        url: &str,
        _base_url: &str,
        headers: impl IntoIterator<Item = impl AsRef<str>>,
    ) -> gix::error::Result<GetResponse<Self::Headers, Self::ResponseBody>> {
        let headers = self.headers(headers);
        Ok(
            match exchange(&self.agent, &self.budget, url, &headers, None) {
                Ok((head, body)) => GetResponse {
                    headers: Headers::Ready(Cursor::new(head)),
                    body: Body::Ready(Box::new(body)),
                },
                Err(e) => GetResponse {
                    headers: Headers::Failed(Some(e)),
                    body: Body::Empty,
                },
            },
        )
    }

    fn post(
        &mut self,
        url: &str,
        _base_url: &str,
        headers: impl IntoIterator<Item = impl AsRef<str>>,
        _body: PostBodyDataKind,
    ) -> gix::error::Result<PostResponse<Self::Headers, Self::ResponseBody, Self::PostBody>> {
        let state = Arc::new(Mutex::new(PostState {
            agent: self.agent.clone(),
            budget: self.budget.clone(),
            url: url.to_owned(),
            headers: self.headers(headers),
            body: Vec::new(),
            sent: false,
            error: None,
            head: None,
            response: None,
        }));
        Ok(PostResponse {
            post_body: PostBody(state.clone()),
            headers: Headers::Deferred(state.clone(), None),
            body: Body::Deferred(state),
        })
    }

    fn configure(&mut self, _config: &dyn std::any::Any) -> gix::error::Result {
        // Configuration comes from the Remote and the MirrorSet, never from git-config.
        Ok(())
    }
}

/// Builds the shared agent for one trust configuration.
pub(crate) fn agent(roots: Option<ureq::tls::RootCerts>, user_agent: &str) -> ureq::Agent {
    let mut tls = ureq::tls::TlsConfig::builder();
    if let Some(roots) = roots {
        tls = tls.root_certs(roots);
    }
    let config = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .user_agent(user_agent)
        .tls_config(tls.build())
        .max_idle_connections(64)
        .max_idle_connections_per_host(8)
        .build();
    ureq::Agent::new_with_config(config)
}

/// The CA certificates in a PEM file.
pub(crate) fn read_roots(path: &std::path::Path) -> Result<ureq::tls::RootCerts, String> {
    let pem = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut certs = Vec::new();
    for item in ureq::tls::parse_pem(&pem) {
        match item {
            Ok(ureq::tls::PemItem::Certificate(c)) => certs.push(c),
            Ok(_) => {}
            Err(e) => return Err(format!("{}: {e}", path.display())),
        }
    }
    if certs.is_empty() {
        return Err(format!("{}: no certificate found", path.display()));
    }
    Ok(ureq::tls::RootCerts::new_with_certs(&certs))
}

//! A minimal HTTP/1.1 client (the API clients of the kas suite) and request reader (the fake API
//! server of the agentk suite): `Content-Length` and chunked bodies, nothing more.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// Largest body either side reads.
const MAX_BODY: usize = 64 * 1024 * 1024;
/// Largest head (request or status line plus headers).
const MAX_HEAD: usize = 64 * 1024;

/// A parsed request or response head.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Head {
    /// Request: method, target, version. Response: version, status, reason.
    pub start: Vec<String>,
    pub headers: Vec<(String, String)>,
}

impl Head {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn chunked(&self) -> bool {
        self.header("transfer-encoding")
            .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
    }

    fn content_length(&self) -> Option<usize> {
        self.header("content-length")
            .and_then(|v| v.trim().parse().ok())
    }
}

fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// Reads a head; `None` at a clean end of stream before the first octet.
pub fn read_head<R: BufRead>(r: &mut R) -> io::Result<Option<Head>> {
    let mut head = Head::default();
    let mut total = 0;
    let mut first = true;
    // Bounded by MAX_HEAD.
    loop {
        let mut line = String::new();
        let n = r.read_line(&mut line)?;
        if n == 0 {
            return if first {
                Ok(None)
            } else {
                Err(invalid("end of stream inside a head"))
            };
        }
        total += n;
        if total > MAX_HEAD {
            return Err(invalid("head too large"));
        }
        let line = line.trim_end_matches(['\r', '\n']);
        if first {
            if line.is_empty() {
                continue; // tolerate a stray CRLF between messages
            }
            head.start = line.splitn(3, ' ').map(str::to_owned).collect();
            first = false;
        } else if line.is_empty() {
            return Ok(Some(head));
        } else if let Some((name, value)) = line.split_once(':') {
            head.headers
                .push((name.trim().to_owned(), value.trim().to_owned()));
        } else {
            return Err(invalid(format!("bad header line {line:?}")));
        }
    }
}

/// Reads a body framed by `head`; `until_eof` for responses without length or chunking.
pub fn read_body<R: BufRead>(r: &mut R, head: &Head, until_eof: bool) -> io::Result<Vec<u8>> {
    let mut body = Vec::new();
    if head.chunked() {
        // Bounded by MAX_BODY.
        loop {
            let mut line = String::new();
            if r.read_line(&mut line)? == 0 {
                return Err(invalid("end of stream inside a chunked body"));
            }
            let size_text = line.trim().split(';').next().unwrap_or_default();
            let size = usize::from_str_radix(size_text, 16)
                .map_err(|_| invalid(format!("bad chunk size {size_text:?}")))?;
            if size == 0 {
                // trailers, then the final CRLF
                loop {
                    let mut t = String::new();
                    if r.read_line(&mut t)? == 0 || t.trim().is_empty() {
                        return Ok(body);
                    }
                }
            }
            if body.len().saturating_add(size) > MAX_BODY {
                return Err(invalid("body too large"));
            }
            let start = body.len();
            body.resize(start + size, 0);
            r.read_exact(&mut body[start..])?;
            let mut crlf = [0u8; 2];
            r.read_exact(&mut crlf)?;
        }
    } else if let Some(len) = head.content_length() {
        if len > MAX_BODY {
            return Err(invalid("body too large"));
        }
        body.resize(len, 0);
        r.read_exact(&mut body)?;
        Ok(body)
    } else if until_eof {
        r.take(MAX_BODY as u64).read_to_end(&mut body)?;
        Ok(body)
    } else {
        Ok(body)
    }
}

/// A response as the client saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub head: Head,
    pub body: Vec<u8>,
}

impl Response {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Writes a request (with `Connection: close` and a `Content-Length` if there is a body).
pub fn write_request(
    stream: &mut TcpStream,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> io::Result<()> {
    let mut head =
        format!("{method} {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n");
    for (n, v) in headers {
        head.push_str(&format!("{n}: {v}\r\n"));
    }
    if let Some(b) = body {
        head.push_str(&format!("Content-Length: {}\r\n", b.len()));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    if let Some(b) = body {
        stream.write_all(b)?;
    }
    stream.flush()
}

/// Reads a response head from a client stream.
pub fn read_response_head<R: BufRead>(r: &mut R) -> io::Result<(u16, Head)> {
    let head = read_head(r)?.ok_or_else(|| invalid("the server closed without answering"))?;
    let status = head
        .start
        .get(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| invalid(format!("bad status line {:?}", head.start)))?;
    Ok((status, head))
}

/// One request on a fresh connection, the whole response read. `timeout` bounds every read and write.
pub fn request(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
    timeout: Duration,
) -> io::Result<Response> {
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    write_request(&mut stream, method, target, headers, body)?;
    let mut r = BufReader::new(stream);
    let (status, head) = read_response_head(&mut r)?;
    let body = if method == "HEAD" || status == 204 || status == 304 {
        Vec::new()
    } else {
        read_body(&mut r, &head, true)?
    };
    Ok(Response { status, head, body })
}

/// A request as the fake API server read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    pub target: String,
    pub head: Head,
    pub body: Vec<u8>,
}

impl Request {
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or_default()
    }

    pub fn query(&self, name: &str) -> Option<&str> {
        let q = self.target.split_once('?')?.1;
        q.split('&')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v)
    }
}

/// Reads the next request of a server connection; `None` when the client closed it.
pub fn read_request<R: BufRead>(r: &mut R) -> io::Result<Option<Request>> {
    let Some(head) = read_head(r)? else {
        return Ok(None);
    };
    let method = head.start.first().cloned().unwrap_or_default();
    let target = head.start.get(1).cloned().unwrap_or_default();
    let body = read_body(r, &head, false)?;
    Ok(Some(Request {
        method,
        target,
        head,
        body,
    }))
}

/// Writes a response with a `Content-Length`.
pub fn write_response(
    w: &mut impl Write,
    status: u16,
    content_type: &str,
    body: &[u8],
) -> io::Result<()> {
    let reason = match status {
        200 => "OK",
        201 => "Created",
        404 => "Not Found",
        _ => "Status",
    };
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    w.write_all(head.as_bytes())?;
    w.write_all(body)?;
    w.flush()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn chunked_and_sized_bodies() {
        let raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n";
        let mut r = BufReader::new(&raw[..]);
        let (status, head) = read_response_head(&mut r).unwrap();
        assert_eq!(status, 200);
        assert_eq!(read_body(&mut r, &head, true).unwrap(), b"abcde");

        let raw =
            b"POST /x?a=1&b=2 HTTP/1.1\r\nContent-Length: 4\r\n\r\nbodyGET / HTTP/1.1\r\n\r\n";
        let mut r = BufReader::new(&raw[..]);
        let req = read_request(&mut r).unwrap().unwrap();
        assert_eq!((req.path(), req.query("b")), ("/x", Some("2")));
        assert_eq!(req.body, b"body");
        assert_eq!(read_request(&mut r).unwrap().unwrap().method, "GET");
        assert!(read_request(&mut r).unwrap().is_none());
    }

    #[test]
    fn truncated_input_is_an_error() {
        let raw = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc";
        let mut r = BufReader::new(&raw[..]);
        let (_, head) = read_response_head(&mut r).unwrap();
        assert!(read_body(&mut r, &head, true).is_err());
        let mut r = BufReader::new(&b"GET / HTTP/1.1\r\nbad\r\n\r\n"[..]);
        assert!(read_request(&mut r).is_err());
    }
}

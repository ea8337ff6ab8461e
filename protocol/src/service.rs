//! Names and conventions of the services carried over tunnel streams (PROTOCOL.md, "Services").
//!
//! The tunnel itself is service-agnostic: a REQUEST names a `service` and a `method`, and the receiving
//! application dispatches on them. These are the services agentk and kas speak; other implementations
//! must use the same names and head conventions to interoperate.

/// kas → agentk: an HTTP request for the cluster's Kubernetes API. `method` is the HTTP method, `path`
/// the path and query; headers are HTTP headers (hop-by-hop ones removed, no credentials: agentk uses its
/// own). The response head carries the HTTP status and headers; the body streams both ways.
pub const K8S_API: &str = "k8s-api";

/// kas → agentk: an HTTP request for an in-cluster service. `path` is
/// `/{namespace}/{service}:{port}/{rest}`; otherwise as [`K8S_API`].
pub const SERVICE_PROXY: &str = "service-proxy";

/// kas → agentk: a query answered from agentk's informer cache (`method` "LIST" or "GET", `path`
/// `/{kind}?namespace=..&labelSelector=..` or `/{kind}/{namespace}/{name}`), JSON response.
pub const CACHE: &str = "cache";

/// agentk → kas: a long-lived stream of view updates (protobuf, length-delimited) in the body; kas
/// answers with acknowledgements and resync requests on the response body.
pub const VIEWS: &str = "views";

/// agentk → kas: a long-lived stream of object-change events (length-delimited protobuf).
pub const EVENTS: &str = "events";

/// Status code carried in a TRAILER when the receiving side failed after the response head.
pub mod status {
    pub const OK: u32 = 0;
    pub const CANCELLED: u32 = 1;
    pub const UNKNOWN: u32 = 2;
    pub const DEADLINE_EXCEEDED: u32 = 4;
    pub const NOT_FOUND: u32 = 5;
    pub const INTERNAL: u32 = 13;
    pub const UNAVAILABLE: u32 = 14;
}

/// HTTP headers that describe one hop and must not be forwarded through the tunnel (RFC 9110 §7.6.1),
/// plus credentials, which never cross the tunnel.
pub const NOT_FORWARDED: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "authorization",
];

/// Whether an HTTP header may cross the tunnel.
pub fn is_forwarded(name: &str) -> bool {
    !NOT_FORWARDED.iter().any(|h| h.eq_ignore_ascii_case(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_and_credentials_are_dropped() {
        assert!(!is_forwarded("Authorization"));
        assert!(!is_forwarded("transfer-encoding"));
        assert!(is_forwarded("accept"));
        assert!(is_forwarded("content-type"));
    }
}

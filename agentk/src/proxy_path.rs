//! The service-proxy path `/{namespace}/{service}:{port}/{rest}?query`, and resolving a Service
//! object's cluster IP and port from it.

use std::net::IpAddr;

// Namespaces, Service names and port names must be DNS-1123 labels: anything else could smuggle
// path segments into the API request, so it is refused.
use agent_config::names::is_dns_label;

use crate::head::BadRequest;

/// A Service port as the path names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortRef {
    Number(u16),
    Name(String),
}

/// A parsed service-proxy path; the namespace and Service name borrow from the path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyTarget<'a> {
    pub namespace: &'a str,
    pub service: &'a str,
    pub port: PortRef,
    /// `/{rest}?query`, at least `/`.
    pub path_and_query: String,
}

/// Parses `/{namespace}/{service}:{port}/{rest}?query`.
pub fn parse(path: &str) -> Result<ProxyTarget<'_>, BadRequest> {
    let bad = |why: &str| {
        BadRequest(format!(
            "service-proxy path {path:?}: {why} (expected /{{namespace}}/{{service}}:{{port}}/{{path}})"
        ))
    };
    let rest = path
        .strip_prefix('/')
        .ok_or_else(|| bad("must start with '/'"))?;
    let (namespace, rest) =
        split_once(rest, |b| b == b'/').ok_or_else(|| bad("missing service"))?;
    let split = rest
        .bytes()
        .position(|b| b == b'/' || b == b'?')
        .unwrap_or(rest.len());
    let (service_port, tail) = rest.split_at(split);
    let (service, port) = split_once(service_port, |b| b == b':')
        .ok_or_else(|| bad("missing :port after the service name"))?;
    if !is_dns_label(namespace) {
        return Err(bad("invalid namespace"));
    }
    if !is_dns_label(service) {
        return Err(bad("invalid service name"));
    }
    let port = if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) {
        match port.parse::<u16>() {
            Ok(n) if n > 0 => PortRef::Number(n),
            _ => return Err(bad("port out of range")),
        }
    } else if is_dns_label(port) {
        PortRef::Name(port.to_owned())
    } else {
        return Err(bad("invalid port"));
    };
    let path_and_query = if tail.starts_with('?') || tail.is_empty() {
        format!("/{tail}")
    } else {
        tail.to_owned()
    };
    Ok(ProxyTarget {
        namespace,
        service,
        port,
        path_and_query,
    })
}

/// `s` before and after its first ASCII byte that `is` picks: `str::split_once` as a plain loop,
/// cheaper on a short path than `str`'s searcher (an ASCII byte is never inside a multi-byte
/// character, so both halves are whole `str`s).
fn split_once(s: &str, is: impl Fn(u8) -> bool) -> Option<(&str, &str)> {
    let i = s.bytes().position(|b| b.is_ascii() && is(b))?;
    Some((&s[..i], &s[i + 1..]))
}

/// Why a Service cannot be proxied to.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    #[error("the service object is not valid JSON of a Service")]
    Malformed,
    #[error("the service has no cluster IP (headless or ExternalName)")]
    NoClusterIp,
    #[error("the service has no port {0}")]
    NoSuchPort(String),
}

/// The `host:port` authority to send the request to, from the Service object's `spec.clusterIP`
/// and `spec.ports` (the port by number or by name).
pub fn resolve(service: &serde_json::Value, port: &PortRef) -> Result<String, ResolveError> {
    let spec = service.get("spec").ok_or(ResolveError::Malformed)?;
    let ip = spec
        .get("clusterIP")
        .and_then(|v| v.as_str())
        .filter(|ip| !ip.is_empty() && *ip != "None")
        .ok_or(ResolveError::NoClusterIp)?;
    let parsed: IpAddr = ip.parse().map_err(|_| ResolveError::NoClusterIp)?;
    let ports = spec
        .get("ports")
        .and_then(|p| p.as_array())
        .map(Vec::as_slice)
        .unwrap_or_default();
    let port_of = |p: &serde_json::Value| {
        p.get("port")
            .and_then(|n| n.as_u64())
            .and_then(|n| u16::try_from(n).ok())
    };
    let number = match port {
        PortRef::Number(n) => ports
            .iter()
            .filter_map(port_of)
            .find(|p| p == n)
            .ok_or_else(|| ResolveError::NoSuchPort(n.to_string()))?,
        PortRef::Name(name) => ports
            .iter()
            .find(|p| p.get("name").and_then(|n| n.as_str()) == Some(name.as_str()))
            .and_then(port_of)
            .ok_or_else(|| ResolveError::NoSuchPort(name.clone()))?,
    };
    Ok(match parsed {
        // An IPv4 address that parses is already in its one textual form (no leading zeros, four
        // decimal octets): used as written, without the formatting machinery (every request).
        IpAddr::V4(_) => {
            let mut authority = String::with_capacity(ip.len() + 6);
            authority.push_str(ip);
            authority.push(':');
            authority.push_str(itoa::Buffer::new().format(number));
            authority
        }
        IpAddr::V6(v6) => format!("[{v6}]:{number}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn target<'a>(ns: &'a str, svc: &'a str, port: PortRef, pq: &str) -> ProxyTarget<'a> {
        ProxyTarget {
            namespace: ns,
            service: svc,
            port,
            path_and_query: pq.into(),
        }
    }

    #[test]
    fn parses_paths() {
        assert_eq!(
            parse("/monitoring/prometheus:9090/api/v1/query?query=up").expect("ok"),
            target(
                "monitoring",
                "prometheus",
                PortRef::Number(9090),
                "/api/v1/query?query=up"
            )
        );
        assert_eq!(
            parse("/default/web:http").expect("ok"),
            target("default", "web", PortRef::Name("http".into()), "/")
        );
        assert_eq!(
            parse("/default/web:80?x=1").expect("ok"),
            target("default", "web", PortRef::Number(80), "/?x=1")
        );
        assert_eq!(
            parse("/default/web:80/").expect("ok"),
            target("default", "web", PortRef::Number(80), "/")
        );
    }

    #[test]
    fn rejects_bad_paths() {
        for p in [
            "",
            "default/web:80/",
            "/default",
            "/default/web/x",
            "/default/web:/x",
            "/default/web:0/x",
            "/default/web:70000/x",
            "/default/web:Http/x",
            "/Default/web:80/x",
            "/../web:80/x",
            "/default/we%2Fb:80/x",
            "/default/:80/x",
        ] {
            assert!(parse(p).is_err(), "{p:?} should be rejected");
        }
    }

    fn svc(ip: &str) -> serde_json::Value {
        json!({"spec": {"clusterIP": ip, "ports": [
            {"name": "http", "port": 80, "targetPort": 8080},
            {"name": "metrics", "port": 9090}
        ]}})
    }

    #[test]
    fn resolves_by_number_and_name() {
        assert_eq!(
            resolve(&svc("10.0.0.7"), &PortRef::Number(80)),
            Ok("10.0.0.7:80".into())
        );
        assert_eq!(
            resolve(&svc("10.0.0.7"), &PortRef::Name("metrics".into())),
            Ok("10.0.0.7:9090".into())
        );
        assert_eq!(
            resolve(&svc("fd00::7"), &PortRef::Number(9090)),
            Ok("[fd00::7]:9090".into())
        );
    }

    #[test]
    fn refuses_unresolvable_services() {
        assert_eq!(
            resolve(&svc("None"), &PortRef::Number(80)),
            Err(ResolveError::NoClusterIp)
        );
        assert_eq!(
            resolve(&svc(""), &PortRef::Number(80)),
            Err(ResolveError::NoClusterIp)
        );
        assert_eq!(
            resolve(&svc("10.0.0.7"), &PortRef::Number(81)),
            Err(ResolveError::NoSuchPort("81".into()))
        );
        assert_eq!(
            resolve(&svc("10.0.0.7"), &PortRef::Name("grpc".into())),
            Err(ResolveError::NoSuchPort("grpc".into()))
        );
        assert_eq!(
            resolve(&json!({}), &PortRef::Number(80)),
            Err(ResolveError::Malformed)
        );
        // Only the one textual form of an IPv4 address is used as written; others are refused.
        for odd in [
            "10.0.0.07",
            "10.0.7",
            " 10.0.0.7",
            "10.0.0.7 ",
            "0x0a.0.0.7",
        ] {
            assert_eq!(
                resolve(&svc(odd), &PortRef::Number(80)),
                Err(ResolveError::NoClusterIp),
                "{odd:?}"
            );
        }
    }

    proptest! {
        #[test]
        fn valid_paths_parse_to_their_parts(
            ns in "[a-z][a-z0-9]{0,10}",
            svc in "[a-z][a-z0-9-]{0,10}[a-z0-9]",
            port in 1u16..,
            rest in "(/[a-zA-Z0-9._~-]{0,8}){0,3}",
            query in prop::option::of("[a-z0-9=&]{0,12}"),
        ) {
            let q = query.as_ref().map(|q| format!("?{q}")).unwrap_or_default();
            let path = format!("/{ns}/{svc}:{port}{rest}{q}");
            let t = parse(&path).expect("valid");
            prop_assert_eq!(t.namespace, ns);
            prop_assert_eq!(t.service, svc);
            prop_assert_eq!(t.port, PortRef::Number(port));
            let rest = if rest.is_empty() { "/".to_owned() } else { rest };
            prop_assert_eq!(t.path_and_query, format!("{rest}{q}"));
        }

        #[test]
        fn splits_as_str_does(s in "\\PC{0,40}", pick in 0usize..3) {
            let byte = [b'/', b':', b'?'][pick];
            prop_assert_eq!(split_once(&s, |b| b == byte), s.split_once(char::from(byte)));
        }

        #[test]
        fn parse_never_panics(path in "\\PC{0,40}") {
            let _ = parse(&path);
        }
    }
}

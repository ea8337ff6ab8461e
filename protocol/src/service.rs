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

/// agentk → kas: one long-lived stream per manifest project of agentk's configuration (`method`
/// "WATCH", headers `gitops-project` and `gitops-commit`); kas sends the project's object set for
/// each new commit and status messages, agentk sends its sync reports (length-delimited protobuf,
/// SERVICES.md §9; messages in the `gitops` crate's `wire` module).
pub const GITOPS: &str = "gitops";

/// agentk → kas: a long-lived stream on which kas sends agentk's configuration whenever the commit
/// and the content change (SERVICES.md §8). Method [`CONFIG_METHOD`], path `/`, the agent's last
/// applied commit in [`CONFIG_COMMIT_HEADER`] (and its content fingerprint in
/// [`CONFIG_FINGERPRINT_HEADER`]); kas's body is length-delimited JSON `ConfigUpdate` messages.
pub const CONFIG: &str = "config";

/// The one method of [`CONFIG`] streams (version 1).
pub const CONFIG_METHOD: &str = "WATCH";

/// Request header of a [`CONFIG`] stream: the commit id of the configuration agentk applied last
/// (40 or 64 lowercase hex digits); absent when it applied none.
pub const CONFIG_COMMIT_HEADER: &str = "x-config-commit";

/// Request header of a [`CONFIG`] stream: the content fingerprint (64 lowercase hex digits) of the
/// configuration agentk applied last; optional.
pub const CONFIG_FINGERPRINT_HEADER: &str = "x-config-fingerprint";

/// What a [`CONFIG`] request head says the agent has.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConfigHead {
    /// The commit of its configuration, if any.
    pub commit: Option<String>,
    /// The content fingerprint of its configuration, if given.
    pub fingerprint: Option<String>,
}

/// Why a [`CONFIG`] request head is refused (the opener's fault).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigHeadError {
    /// The method is not [`CONFIG_METHOD`] (the method as received, at most 64 characters).
    #[error("config stream with method {0:?}")]
    BadMethod(String),
    /// A header value is malformed or repeated.
    #[error("bad {0} header")]
    BadHeader(&'static str),
}

/// Whether `s` is a Git object id: 40 (SHA-1) or 64 (SHA-256) lowercase hex digits.
pub fn is_commit_id(s: &str) -> bool {
    (s.len() == 40 || s.len() == 64) && is_lower_hex(s)
}

fn is_lower_hex(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The request head agentk opens a [`CONFIG`] stream with.
pub fn config_request_head(have: &ConfigHead) -> crate::proto::RequestHead {
    let header = |name: &str, value: &str| crate::proto::Header {
        name: name.into(),
        value: bytes::Bytes::copy_from_slice(value.as_bytes()),
    };
    let mut headers = Vec::new();
    if let Some(c) = &have.commit {
        headers.push(header(CONFIG_COMMIT_HEADER, c));
    }
    if let Some(f) = &have.fingerprint {
        headers.push(header(CONFIG_FINGERPRINT_HEADER, f));
    }
    crate::proto::RequestHead {
        service: CONFIG.into(),
        method: CONFIG_METHOD.into(),
        path: "/".into(),
        headers,
        timeout_ms: 0,
        impersonation: None,
    }
}

/// Reads a [`CONFIG`] request head (kas). Other headers are ignored; an empty value is absent.
pub fn parse_config_head(head: &crate::proto::RequestHead) -> Result<ConfigHead, ConfigHeadError> {
    if head.method != CONFIG_METHOD {
        return Err(ConfigHeadError::BadMethod(
            head.method.chars().take(64).collect(),
        ));
    }
    let mut out = ConfigHead::default();
    for h in &head.headers {
        let (slot, name, valid): (_, _, fn(&str) -> bool) =
            if h.name.eq_ignore_ascii_case(CONFIG_COMMIT_HEADER) {
                (&mut out.commit, CONFIG_COMMIT_HEADER, is_commit_id)
            } else if h.name.eq_ignore_ascii_case(CONFIG_FINGERPRINT_HEADER) {
                (&mut out.fingerprint, CONFIG_FINGERPRINT_HEADER, |s| {
                    s.len() == 64 && is_lower_hex(s)
                })
            } else {
                continue;
            };
        if h.value.is_empty() {
            continue;
        }
        let value = std::str::from_utf8(&h.value).map_err(|_| ConfigHeadError::BadHeader(name))?;
        if slot.is_some() || !valid(value) {
            return Err(ConfigHeadError::BadHeader(name));
        }
        *slot = Some(value.to_owned());
    }
    Ok(out)
}

/// Status code carried in a TRAILER when the receiving side failed after the response head.
pub mod status {
    /// Success.
    pub const OK: u32 = 0;
    /// The operation was cancelled (the stream is no longer needed).
    pub const CANCELLED: u32 = 1;
    /// An error without a better code.
    pub const UNKNOWN: u32 = 2;
    /// The request's `timeout_ms` passed after the response head.
    pub const DEADLINE_EXCEEDED: u32 = 4;
    /// What the request named does not exist.
    pub const NOT_FOUND: u32 = 5;
    /// The receiving side failed.
    pub const INTERNAL: u32 = 13;
    /// The upstream went away mid-body.
    pub const UNAVAILABLE: u32 = 14;
}

/// Why an HTTP header does not cross the tunnel ([`HeaderRule`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotForwarded {
    /// Describes one hop of the connection (RFC 9110 §7.6.1): `Connection`, `Keep-Alive`, `TE`,
    /// `Transfer-Encoding`, `Upgrade`, ... and `Host` (each hop has its own).
    HopByHop,
    /// Authenticates the client to kas, or is a browser credential for kas's origin:
    /// `Authorization`, `Proxy-Authorization`, `Cookie`, `Set-Cookie`. The upstream gets agentk's own
    /// credentials; a user's cookies for kas's site (a GitLab session, say) never reach the cluster.
    Credential,
    /// Asks the Kubernetes API server to act as another identity: `Impersonate-User`,
    /// `Impersonate-Group`, `Impersonate-Uid`, `Impersonate-Extra-*`. agentk sends requests with its
    /// own, usually powerful, credentials, so a client choosing the identity would choose its own
    /// privileges (Rancher's GHSA-gvh9-xgrq-r8hw). Only kas decides whom a request acts as, and it does
    /// so through the request head's own fields, never a header.
    Impersonation,
    /// Asserts an identity that an authenticating front proxy established: `X-Remote-User`,
    /// `X-Remote-Group`, `X-Remote-Extra-*` (the API server's request-header authentication),
    /// `X-Forwarded-User`, `X-Forwarded-Groups`, `X-Forwarded-Email`, `X-Forwarded-Preferred-Username`,
    /// `X-Forwarded-Access-Token` and `X-Auth-Request-*` (oauth2-proxy and the like). Services behind
    /// such a proxy trust these headers; no client may set them.
    IdentityAssertion,
    /// Named in this head's `Connection` header: hop-by-hop by declaration (RFC 9110 §7.6.1).
    ConnectionOption,
}

/// Headers that describe one hop (RFC 9110 §7.6.1, plus the obsolete `Proxy-Connection`), and `Host`.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
];

/// Credentials for kas or its origin.
const CREDENTIALS: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
];

/// Exact names of front-proxy identity assertions.
const IDENTITY_ASSERTIONS: &[&str] = &[
    "x-forwarded-user",
    "x-forwarded-groups",
    "x-forwarded-email",
    "x-forwarded-preferred-username",
    "x-forwarded-access-token",
];

/// Name prefixes of front-proxy identity assertions.
const IDENTITY_ASSERTION_PREFIXES: &[&str] = &["x-remote-", "x-auth-request-"];

/// The prefix of every Kubernetes impersonation header.
const IMPERSONATION_PREFIX: &str = "impersonate-";

/// At most this many options of a `Connection` header are honoured (each one is compared with every
/// header name; a head has at most a few).
const MAX_CONNECTION_OPTIONS: usize = 64;

fn has_prefix_ignore_case(name: &str, prefix: &str) -> bool {
    name.len() >= prefix.len()
        && name.as_bytes()[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
}

/// Why `name` never crosses the tunnel, whatever the rest of the head says; `None` if it may.
pub fn classify_header(name: &str) -> Option<NotForwarded> {
    let is = |list: &[&str]| list.iter().any(|h| h.eq_ignore_ascii_case(name));
    if is(HOP_BY_HOP) {
        Some(NotForwarded::HopByHop)
    } else if is(CREDENTIALS) {
        Some(NotForwarded::Credential)
    } else if has_prefix_ignore_case(name, IMPERSONATION_PREFIX) {
        Some(NotForwarded::Impersonation)
    } else if is(IDENTITY_ASSERTIONS)
        || IDENTITY_ASSERTION_PREFIXES
            .iter()
            .any(|p| has_prefix_ignore_case(name, p))
    {
        Some(NotForwarded::IdentityAssertion)
    } else {
        None
    }
}

/// Whether an HTTP header may cross the tunnel by its name alone. A head's `Connection` header can
/// make more headers hop-by-hop: use [`HeaderRule`] for a whole head.
pub fn is_forwarded(name: &str) -> bool {
    classify_header(name).is_none()
}

/// The one rule deciding which headers of an HTTP head cross the tunnel, in both directions: kas
/// applies it to a client's request before it enters the tunnel and to an agent's response before it
/// reaches the client; agentk applies it again to every head it receives from kas before the upstream
/// sees it and to every upstream response (defence in depth: agentk never trusts a head for this).
///
/// A header is dropped when [`classify_header`] names a reason, or when the head's `Connection`
/// header lists it ([`NotForwarded::ConnectionOption`]).
#[derive(Debug, Clone, Default)]
pub struct HeaderRule {
    /// The options listed in the head's `Connection` headers, lower-case.
    connection_options: Vec<String>,
    /// The head is one of an upgrade ([`HeaderRule::for_upgrade_head`]): `Upgrade` crosses.
    upgrade: bool,
}

/// The header naming the protocol an upgrade switches to (RFC 9110 §7.8).
pub const UPGRADE_HEADER: &str = "upgrade";

/// Whether an HTTP/1.1 head asks to switch protocols (RFC 9110 §7.8): a `Connection` header lists the
/// `upgrade` option and an `Upgrade` header names at least one protocol. Over the tunnel the
/// convention is simpler (SERVICES.md §3.1): a `k8s-api` head is an upgrade when it carries an
/// `Upgrade` header ([`is_upgrade_tunnel_head`]); `Connection` never crosses, each hop writes its own.
pub fn requests_upgrade<'a>(headers: impl IntoIterator<Item = (&'a str, &'a [u8])>) -> bool {
    let mut connection_upgrade = false;
    let mut upgrade = false;
    for (name, value) in headers {
        if name.eq_ignore_ascii_case("connection") {
            connection_upgrade |= value
                .split(|b| *b == b',')
                .any(|o| o.trim_ascii().eq_ignore_ascii_case(b"upgrade"));
        } else if name.eq_ignore_ascii_case(UPGRADE_HEADER) {
            upgrade |= !value.trim_ascii().is_empty();
        }
    }
    connection_upgrade && upgrade
}

/// Whether a tunnel head (request or `101` response) is one of an upgrade: it carries a non-empty
/// `Upgrade` header (kas forwards it only for upgrade requests, [`HeaderRule::for_upgrade_head`]).
pub fn is_upgrade_tunnel_head<'a>(headers: impl IntoIterator<Item = (&'a str, &'a [u8])>) -> bool {
    headers.into_iter().any(|(name, value)| {
        name.eq_ignore_ascii_case(UPGRADE_HEADER) && !value.trim_ascii().is_empty()
    })
}

impl HeaderRule {
    /// The rule for one head, given every header of it (`Connection` may appear several times).
    pub fn for_head<'a>(headers: impl IntoIterator<Item = (&'a str, &'a [u8])>) -> HeaderRule {
        let mut connection_options = Vec::new();
        for (name, value) in headers {
            if !name.eq_ignore_ascii_case("connection") {
                continue;
            }
            // A list of tokens separated by commas and optional whitespace (RFC 9110 §5.6.1).
            for option in value.split(|b| *b == b',') {
                let option = option.trim_ascii();
                if option.is_empty() || connection_options.len() >= MAX_CONNECTION_OPTIONS {
                    continue;
                }
                if let Ok(text) = std::str::from_utf8(option) {
                    connection_options.push(text.to_ascii_lowercase());
                }
            }
        }
        HeaderRule {
            connection_options,
            upgrade: false,
        }
    }

    /// The rule for the head of an upgrade (a request that [`requests_upgrade`], its tunnel head, or
    /// the `101` answer to it): as [`HeaderRule::for_head`], except that `Upgrade` crosses even though
    /// it is hop-by-hop and the `Connection` header names it. `Connection` itself still never crosses
    /// (each hop writes `Connection: Upgrade`), and credentials, `Impersonate-*` and identity
    /// assertions are dropped exactly as in any other head; `Sec-WebSocket-*` and
    /// `X-Stream-Protocol-Version` cross as ordinary end-to-end headers.
    pub fn for_upgrade_head<'a>(
        headers: impl IntoIterator<Item = (&'a str, &'a [u8])>,
    ) -> HeaderRule {
        HeaderRule {
            upgrade: true,
            ..HeaderRule::for_head(headers)
        }
    }

    /// Whether this is the rule of an upgrade head.
    pub fn is_upgrade(&self) -> bool {
        self.upgrade
    }

    /// Why `name` is not forwarded in this head; `None` if it is.
    pub fn verdict(&self, name: &str) -> Option<NotForwarded> {
        if self.upgrade && name.eq_ignore_ascii_case(UPGRADE_HEADER) {
            return None;
        }
        classify_header(name).or_else(|| {
            self.connection_options
                .iter()
                .any(|o| o.eq_ignore_ascii_case(name))
                .then_some(NotForwarded::ConnectionOption)
        })
    }

    /// Whether `name` crosses the tunnel in this head.
    pub fn forwards(&self, name: &str) -> bool {
        self.verdict(name).is_none()
    }
}

/// Tunnel headers from the `(name, value)` pairs that `keep` keeps (by name), in order. The values
/// are copied into one buffer they all share: building the head allocates once for every value
/// together (not once per value), and encoding it, which clones each value, allocates nothing more
/// (a clone of a value copied on its own allocates). `pairs` is called twice, first only to size
/// that buffer; `keep` runs once per pair (its answers for the first 128 pairs are remembered
/// between the walks, a later pair is asked again).
pub fn pack_headers<'a, I>(
    pairs: impl Fn() -> I,
    keep: impl Fn(&str) -> bool,
) -> Vec<crate::proto::Header>
where
    I: Iterator<Item = (&'a str, &'a [u8])>,
{
    let mut kept = 0u128;
    let (mut count, mut len) = (0, 0);
    for (i, (name, v)) in pairs().enumerate() {
        if keep(name) {
            if i < 128 {
                kept |= 1 << i;
            }
            count += 1;
            len += v.len();
        }
    }
    let mut buf = bytes::BytesMut::with_capacity(len);
    let mut headers = Vec::with_capacity(count);
    for (i, (name, v)) in pairs().enumerate() {
        let keeps = if i < 128 {
            kept & (1 << i) != 0
        } else {
            keep(name)
        };
        if !keeps {
            continue;
        }
        buf.extend_from_slice(v);
        headers.push(crate::proto::Header {
            name: name.to_owned(),
            // The octets just written, sharing `buf`'s allocation.
            value: buf.split().freeze(),
        });
    }
    headers
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn packed_headers_keep_names_values_and_order() {
        let pairs = [
            ("content-type", &b"text/plain"[..]),
            ("x-empty", &b""[..]),
            ("x-multi", &b"1"[..]),
            ("x-multi", &b"2"[..]),
        ];
        let headers = pack_headers(|| pairs.iter().copied(), |_| true);
        let got: Vec<(&str, &[u8])> = headers
            .iter()
            .map(|h| (h.name.as_str(), h.value.as_ref()))
            .collect();
        assert_eq!(got, pairs);
        // One buffer: each value starts where the one before it ends.
        for w in headers.windows(2) {
            let end = w[0].value.as_ptr().wrapping_add(w[0].value.len());
            assert_eq!(end, w[1].value.as_ptr(), "{} then {}", w[0].name, w[1].name);
        }
        assert!(pack_headers(std::iter::empty, |_| true).is_empty());
        // `keep` decides, once per pair, also past the first 128 pairs.
        let names: Vec<String> = (0..300).map(|i| format!("x-h{i}")).collect();
        let asked = std::cell::Cell::new(0);
        let headers = pack_headers(
            || names.iter().map(|n| (n.as_str(), n.as_bytes())),
            |n| {
                asked.set(asked.get() + 1);
                n.ends_with('7')
            },
        );
        let want: Vec<&str> = names
            .iter()
            .map(String::as_str)
            .filter(|n| n.ends_with('7'))
            .collect();
        let got: Vec<&str> = headers.iter().map(|h| h.name.as_str()).collect();
        assert_eq!(got, want);
        assert!(
            headers
                .iter()
                .all(|h| h.value.as_ref() == h.name.as_bytes())
        );
        assert_eq!(asked.get(), 300 + (300 - 128));
    }

    #[test]
    fn hop_by_hop_and_credentials_are_dropped() {
        assert!(!is_forwarded("Authorization"));
        assert!(!is_forwarded("transfer-encoding"));
        assert!(is_forwarded("accept"));
        assert!(is_forwarded("content-type"));
    }

    #[test]
    fn impersonation_credentials_and_identity_assertions_are_dropped_in_any_case() {
        for (name, why) in [
            ("Impersonate-User", NotForwarded::Impersonation),
            ("impersonate-group", NotForwarded::Impersonation),
            ("IMPERSONATE-UID", NotForwarded::Impersonation),
            ("Impersonate-Extra-Scopes", NotForwarded::Impersonation),
            (
                "impersonate-extra-acme.com%2Fproject",
                NotForwarded::Impersonation,
            ),
            ("Cookie", NotForwarded::Credential),
            ("Set-Cookie", NotForwarded::Credential),
            ("Proxy-Authorization", NotForwarded::Credential),
            ("X-Remote-User", NotForwarded::IdentityAssertion),
            ("x-remote-group", NotForwarded::IdentityAssertion),
            ("X-Remote-Extra-Scopes", NotForwarded::IdentityAssertion),
            ("X-Forwarded-User", NotForwarded::IdentityAssertion),
            ("X-Forwarded-Groups", NotForwarded::IdentityAssertion),
            ("x-forwarded-access-token", NotForwarded::IdentityAssertion),
            ("X-Auth-Request-Email", NotForwarded::IdentityAssertion),
            ("Host", NotForwarded::HopByHop),
            ("Upgrade", NotForwarded::HopByHop),
        ] {
            assert_eq!(classify_header(name), Some(why), "{name}");
        }
        // Look-alikes that carry nothing of the sort pass.
        for name in [
            "x-forwarded-for",
            "x-forwarded-proto",
            "impersonate",
            "x-remote",
            "accept-encoding",
            "user-agent",
        ] {
            assert_eq!(classify_header(name), None, "{name}");
        }
    }

    #[test]
    fn headers_named_in_connection_are_hop_by_hop() {
        let headers: [(&str, &[u8]); 4] = [
            ("Connection", b"keep-alive, X-Secret-Hop"),
            ("connection", b" x-other ,,"),
            ("X-Secret-Hop", b"1"),
            ("Accept", b"*/*"),
        ];
        let rule = HeaderRule::for_head(headers);
        assert_eq!(
            rule.verdict("x-secret-hop"),
            Some(NotForwarded::ConnectionOption)
        );
        assert_eq!(
            rule.verdict("X-OTHER"),
            Some(NotForwarded::ConnectionOption)
        );
        assert_eq!(rule.verdict("Connection"), Some(NotForwarded::HopByHop));
        assert!(rule.forwards("accept"));
        // Without a Connection header only the fixed rule applies.
        assert!(HeaderRule::default().forwards("x-secret-hop"));
    }

    #[test]
    fn config_heads_round_trip_and_bad_values_are_refused() {
        let have = ConfigHead {
            commit: Some("a".repeat(40)),
            fingerprint: Some("0".repeat(64)),
        };
        let head = config_request_head(&have);
        assert_eq!(head.service, CONFIG);
        assert_eq!(parse_config_head(&head), Ok(have));
        assert_eq!(
            parse_config_head(&config_request_head(&ConfigHead::default())),
            Ok(ConfigHead::default())
        );
        let mut bad = head.clone();
        bad.method = "SYNC".into();
        assert!(matches!(
            parse_config_head(&bad),
            Err(ConfigHeadError::BadMethod(_))
        ));
        for value in ["A".repeat(40), "g".repeat(40), "a".repeat(41), "x".into()] {
            let mut bad = head.clone();
            bad.headers[0].value = bytes::Bytes::from(value.clone());
            assert_eq!(
                parse_config_head(&bad),
                Err(ConfigHeadError::BadHeader(CONFIG_COMMIT_HEADER)),
                "{value}"
            );
        }
        let mut twice = head.clone();
        twice.headers.push(twice.headers[0].clone());
        assert!(parse_config_head(&twice).is_err());
        assert!(is_commit_id(&"b".repeat(64)));
    }

    #[test]
    fn upgrade_heads_keep_upgrade_and_nothing_else_that_is_forbidden() {
        let headers: [(&str, &[u8]); 8] = [
            ("Connection", b"Upgrade"),
            ("Upgrade", b"websocket"),
            ("Sec-WebSocket-Key", b"abc"),
            ("Sec-WebSocket-Protocol", b"v5.channel.k8s.io"),
            ("X-Stream-Protocol-Version", b"v4.channel.k8s.io"),
            ("Authorization", b"Bearer secret"),
            ("Impersonate-User", b"admin"),
            ("Keep-Alive", b"timeout=5"),
        ];
        assert!(requests_upgrade(headers));
        let rule = HeaderRule::for_upgrade_head(headers);
        assert!(rule.is_upgrade());
        let kept: Vec<&str> = headers
            .iter()
            .map(|(n, _)| *n)
            .filter(|n| rule.forwards(n))
            .collect();
        assert_eq!(
            kept,
            [
                "Upgrade",
                "Sec-WebSocket-Key",
                "Sec-WebSocket-Protocol",
                "X-Stream-Protocol-Version"
            ]
        );
        // The ordinary rule drops Upgrade.
        assert!(!HeaderRule::for_head(headers).forwards("upgrade"));
        assert!(is_upgrade_tunnel_head([("upgrade", &b"SPDY/3.1"[..])]));
        assert!(!is_upgrade_tunnel_head([("upgrade", &b" "[..])]));
        // Both parts are needed.
        assert!(!requests_upgrade([("Upgrade", &b"websocket"[..])]));
        assert!(!requests_upgrade([("Connection", &b"upgrade"[..])]));
        assert!(requests_upgrade([
            ("connection", &b"keep-alive, UPGRADE"[..]),
            ("upgrade", &b"SPDY/3.1"[..])
        ]));
    }

    proptest! {
        /// The upgrade rule differs from the ordinary one only in `Upgrade`.
        #[test]
        fn upgrade_rule_only_adds_upgrade(
            name in "[A-Za-z][A-Za-z0-9-]{0,20}",
            options in prop::collection::vec("[A-Za-z0-9-]{1,12}", 0..4),
        ) {
            let joined = options.join(", ");
            let plain = HeaderRule::for_head([("Connection", joined.as_bytes())]);
            let upgrade = HeaderRule::for_upgrade_head([("Connection", joined.as_bytes())]);
            if name.eq_ignore_ascii_case("upgrade") {
                prop_assert!(upgrade.forwards(&name));
            } else {
                prop_assert_eq!(plain.forwards(&name), upgrade.forwards(&name));
            }
        }

        /// The rule is a superset of the name-only rule, and never forwards an impersonation header
        /// whatever its case or suffix.
        #[test]
        fn rule_never_forwards_what_the_name_rule_drops(
            name in "[A-Za-z][A-Za-z0-9-]{0,20}",
            suffix in "[A-Za-z0-9-]{0,12}",
            options in prop::collection::vec("[A-Za-z0-9-]{1,12}", 0..4),
        ) {
            let joined = options.join(", ");
            let rule = HeaderRule::for_head([("Connection", joined.as_bytes())]);
            if !is_forwarded(&name) {
                prop_assert!(!rule.forwards(&name));
            }
            for o in &options {
                prop_assert!(!rule.forwards(o));
            }
            let imp = format!("iMpErSoNaTe-{suffix}");
            prop_assert!(!rule.forwards(&imp));
        }
    }
}

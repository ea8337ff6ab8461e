//! The `cache` service: kas's queries for cached objects, answered from agentk's informer store,
//! never from the API server (protocol/SERVICES.md §5).
//!
//! - `LIST /{kind}?namespace=NS&labelSelector=SEL` → 200 with a Kubernetes `List`
//!   ([`Store::list_json`]), in (namespace, name) order;
//! - `GET /{kind}/{namespace}/{name}` (namespace `-` or `_` for cluster-scoped objects) → 200 with
//!   the object.
//!
//! `kind` is anything [`Store::find_kind`] resolves: `pods`, `Pod`, `v1/Pod`, `apps/v1/Deployment`
//! (so a LIST path may have up to three segments and a GET path's kind is everything before the
//! last two). Errors are Kubernetes `Status` answers: 404 for an unknown kind or object, 400 for a
//! bad path, query or selector (or an ambiguous kind), 405 for another method, 503 while the kind
//! has not completed its first list. The query parameters are form-encoded (`+` is a space).
//!
//! Parsing ([`parse`]) and answering ([`answer`]) are pure; [`serve`] connects them to a stream and
//! to the cache task, which runs [`answer`] on its store.

use bytes::Bytes;
use percent_encoding::percent_decode_str;
use protocol::cache::{KindLookupError, LabelSelector, Store};
use protocol::proto::{RequestHead, ResponseHead};
use runtime_tokio::{RecvStream, SendStream};

use crate::body::RequestBody;
use crate::cache::CacheHandle;
use crate::forward::{Exchange, Guarded, Outcome};
use crate::head::headers_to_tunnel;

/// A query for cached objects.
#[derive(Debug, Clone, PartialEq)]
pub enum CacheQuery {
    /// Objects of a kind, optionally in one namespace, matching a label selector.
    List {
        kind: String,
        namespace: Option<String>,
        selector: LabelSelector,
    },
    /// One object; `namespace` is `""` for cluster-scoped objects.
    Get {
        kind: String,
        namespace: String,
        name: String,
    },
}

impl CacheQuery {
    /// The kind as the request named it.
    pub fn kind(&self) -> &str {
        match self {
            CacheQuery::List { kind, .. } | CacheQuery::Get { kind, .. } => kind,
        }
    }
}

/// What the cache answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheAnswer {
    /// 200 with this JSON body.
    Json(Bytes),
    /// An error, answered as a Kubernetes `Status`.
    Status {
        code: u16,
        reason: &'static str,
        message: String,
    },
}

fn status(code: u16, reason: &'static str, message: impl Into<String>) -> CacheAnswer {
    CacheAnswer::Status {
        code,
        reason,
        message: message.into(),
    }
}

/// Decodes one form-encoded path segment or query component.
fn decode(text: &str) -> Result<String, CacheAnswer> {
    let spaced = text.replace('+', " ");
    percent_decode_str(&spaced)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| status(400, "BadRequest", format!("{text:?} is not UTF-8")))
}

/// Parses a `cache` request head into a query; an `Err` is the answer to send instead.
pub fn parse(head: &RequestHead) -> Result<CacheQuery, CacheAnswer> {
    let (path, query) = head.path.split_once('?').unwrap_or((&head.path, ""));
    let Some(path) = path.strip_prefix('/') else {
        return Err(status(
            400,
            "BadRequest",
            format!("path must start with '/': {:?}", head.path),
        ));
    };
    let segments = path.split('/').map(decode).collect::<Result<Vec<_>, _>>()?;
    if segments.iter().any(String::is_empty) {
        return Err(status(
            400,
            "BadRequest",
            format!("empty segment in {:?}", head.path),
        ));
    }
    match head.method.as_str() {
        "LIST" => {
            if segments.len() > 3 {
                return Err(status(
                    400,
                    "BadRequest",
                    format!("LIST path is /{{kind}}, got {:?}", head.path),
                ));
            }
            let mut namespace = None;
            let mut selector = LabelSelector::everything();
            for pair in query.split('&').filter(|p| !p.is_empty()) {
                let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
                match decode(key)?.as_str() {
                    "namespace" => {
                        namespace = Some(decode(value)?).filter(|ns| !ns.is_empty());
                    }
                    "labelSelector" => {
                        selector = LabelSelector::parse(&decode(value)?)
                            .map_err(|e| status(400, "BadRequest", e.to_string()))?;
                    }
                    // Like the API server, ignore parameters this service does not know.
                    _ => {}
                }
            }
            Ok(CacheQuery::List {
                kind: segments.join("/"),
                namespace,
                selector,
            })
        }
        "GET" => {
            if segments.len() < 3 || segments.len() > 5 {
                return Err(status(
                    400,
                    "BadRequest",
                    format!(
                        "GET path is /{{kind}}/{{namespace}}/{{name}}, got {:?}",
                        head.path
                    ),
                ));
            }
            let n = segments.len();
            let namespace = match segments[n - 2].as_str() {
                "-" | "_" => String::new(),
                ns => ns.to_owned(),
            };
            Ok(CacheQuery::Get {
                kind: segments[..n - 2].join("/"),
                namespace,
                name: segments[n - 1].clone(),
            })
        }
        other => Err(status(
            405,
            "MethodNotAllowed",
            format!("the cache service answers LIST and GET, not {other:?}"),
        )),
    }
}

/// Answers `query` from `store`.
pub fn answer(store: &Store, query: &CacheQuery) -> CacheAnswer {
    let kind = match store.find_kind(query.kind()) {
        Ok(k) => k,
        Err(e @ KindLookupError::Unknown(_)) => {
            return status(
                404,
                "NotFound",
                format!("the cache holds no such kind: {e}"),
            );
        }
        Err(e @ KindLookupError::Ambiguous { .. }) => {
            return status(400, "BadRequest", e.to_string());
        }
    };
    if !store.is_synced(&kind) {
        return status(
            503,
            "ServiceUnavailable",
            format!("{kind} is not synced yet (its first list has not completed)"),
        );
    }
    let json = match query {
        CacheQuery::List {
            namespace,
            selector,
            ..
        } => serde_json::to_vec(&store.list_json(&kind, namespace.as_deref(), selector)),
        CacheQuery::Get {
            namespace, name, ..
        } => match store.get(&kind, namespace, name) {
            Some(object) => serde_json::to_vec(object),
            None => {
                let at = if namespace.is_empty() {
                    name.clone()
                } else {
                    format!("{namespace}/{name}")
                };
                return status(404, "NotFound", format!("{kind} {at} is not in the cache"));
            }
        },
    };
    match json {
        Ok(body) => CacheAnswer::Json(Bytes::from(body)),
        Err(e) => status(500, "InternalError", e.to_string()),
    }
}

/// Serves one `cache` stream. `cache` is `None` when agentk runs without an informer cache.
pub async fn serve(
    cache: Option<&CacheHandle>,
    head: &RequestHead,
    recv: RecvStream,
    send: SendStream,
) -> Outcome {
    let (_, reset) = RequestBody::from_tunnel(recv);
    let mut ex = Exchange::new(send, reset, head.timeout_ms);
    let Some(cache) = cache else {
        return ex
            .answer_status(
                404,
                "NotFound",
                "agentk runs without an informer cache (no kinds to watch)",
                None,
            )
            .await;
    };
    let answer = match parse(head) {
        Err(a) => a,
        Ok(query) => match ex.guard(cache.query(query)).await {
            Guarded::Done(Some(a)) => a,
            Guarded::Done(None) => status(503, "ServiceUnavailable", "the cache is not running"),
            Guarded::Cancelled(error) => {
                return Outcome::Cancelled {
                    status: None,
                    error,
                };
            }
            Guarded::TimedOut => return ex.answer_timeout().await,
        },
    };
    match answer {
        CacheAnswer::Json(body) => {
            let mut headers = http::HeaderMap::new();
            headers.insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/json"),
            );
            let head = ResponseHead {
                status: 200,
                headers: headers_to_tunnel(&headers),
            };
            ex.answer(head, body).await
        }
        CacheAnswer::Status {
            code,
            reason,
            message,
        } => ex.answer_status(code, reason, &message, None).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::cache::{ResourceKind, WatchEvent};
    use serde_json::{Value, json};

    fn head(method: &str, path: &str) -> RequestHead {
        RequestHead {
            service: "cache".into(),
            method: method.into(),
            path: path.into(),
            headers: vec![],
            timeout_ms: 0,
            impersonation: None,
        }
    }

    fn code(a: &CacheAnswer) -> u16 {
        match a {
            CacheAnswer::Json(_) => 200,
            CacheAnswer::Status { code, .. } => *code,
        }
    }

    fn pod(ns: &str, name: &str, app: &str) -> Value {
        json!({"apiVersion": "v1", "kind": "Pod",
               "metadata": {"namespace": ns, "name": name, "uid": format!("u-{ns}-{name}"),
                            "resourceVersion": "5", "labels": {"app": app}}})
    }

    fn store() -> Store {
        let mut s = Store::new();
        let pods = ResourceKind::pod();
        s.apply(&pods, WatchEvent::Init, &mut ()).expect("init");
        for (ns, name, app) in [("a", "p1", "web"), ("a", "p2", "db"), ("b", "p3", "web")] {
            s.apply(&pods, WatchEvent::InitApply(pod(ns, name, app)), &mut ())
                .expect("apply");
        }
        s.apply(&pods, WatchEvent::InitDone, &mut ()).expect("done");
        let node = json!({"apiVersion": "v1", "kind": "Node",
                          "metadata": {"name": "n1", "uid": "n1", "resourceVersion": "3"}});
        s.apply(&ResourceKind::node(), WatchEvent::Init, &mut ())
            .expect("init");
        s.apply(&ResourceKind::node(), WatchEvent::InitApply(node), &mut ())
            .expect("apply");
        s.apply(&ResourceKind::node(), WatchEvent::InitDone, &mut ())
            .expect("done");
        // Deployments: listing, not synced yet.
        s.apply(&ResourceKind::deployment(), WatchEvent::Init, &mut ())
            .expect("init");
        s
    }

    fn names(a: &CacheAnswer) -> Vec<String> {
        let CacheAnswer::Json(body) = a else {
            panic!("not a JSON answer: {a:?}");
        };
        let v: Value = serde_json::from_slice(body).expect("json");
        assert_eq!(v["kind"], "List");
        v["items"]
            .as_array()
            .expect("items")
            .iter()
            .map(|i| {
                i["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned()
            })
            .collect()
    }

    #[test]
    fn parses_lists_and_gets() {
        assert_eq!(
            parse(&head(
                "LIST",
                "/pods?namespace=a&labelSelector=app+in+%28web%2Cdb%29&x=1"
            )),
            Ok(CacheQuery::List {
                kind: "pods".into(),
                namespace: Some("a".into()),
                selector: LabelSelector::parse("app in (web,db)").expect("selector"),
            })
        );
        assert_eq!(
            parse(&head("LIST", "/apps/v1/Deployment")),
            Ok(CacheQuery::List {
                kind: "apps/v1/Deployment".into(),
                namespace: None,
                selector: LabelSelector::everything(),
            })
        );
        assert_eq!(
            parse(&head("GET", "/apps/v1/Deployment/default/web")),
            Ok(CacheQuery::Get {
                kind: "apps/v1/Deployment".into(),
                namespace: "default".into(),
                name: "web".into(),
            })
        );
        assert_eq!(
            parse(&head("GET", "/nodes/-/n1")),
            Ok(CacheQuery::Get {
                kind: "nodes".into(),
                namespace: String::new(),
                name: "n1".into(),
            })
        );
    }

    #[test]
    fn rejects_bad_requests() {
        let cases = [
            ("LIST", "pods", 400),
            ("LIST", "/", 400),
            ("LIST", "/a/b/c/d", 400),
            ("LIST", "/pods?labelSelector=%3D%3D", 400),
            ("LIST", "/pods?namespace=%ff", 400),
            ("GET", "/pods/a", 400),
            ("GET", "/pods//x", 400),
            ("WATCH", "/pods", 405),
            ("DELETE", "/pods/a/p1", 405),
        ];
        for (method, path, expected) in cases {
            match parse(&head(method, path)) {
                Ok(q) => panic!("{method} {path} parsed as {q:?}"),
                Err(a) => assert_eq!(code(&a), expected, "{method} {path}: {a:?}"),
            }
        }
    }

    #[test]
    fn answers_from_the_store() {
        let s = store();
        let q = |m, p| parse(&head(m, p)).expect("valid query");
        assert_eq!(names(&answer(&s, &q("LIST", "/pods"))), ["p1", "p2", "p3"]);
        assert_eq!(
            names(&answer(
                &s,
                &q("LIST", "/Pod?namespace=a&labelSelector=app%3Dweb")
            )),
            ["p1"]
        );
        assert_eq!(
            names(&answer(&s, &q("LIST", "/v1/Pod?labelSelector=app!%3Dweb"))),
            ["p2"]
        );
        assert_eq!(
            names(&answer(&s, &q("LIST", "/pods?namespace=c"))),
            Vec::<String>::new()
        );
        let CacheAnswer::Json(body) = answer(&s, &q("GET", "/pods/b/p3")) else {
            panic!("p3 is cached");
        };
        let v: Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(v["metadata"]["uid"], "u-b-p3");
        let CacheAnswer::Json(body) = answer(&s, &q("GET", "/nodes/_/n1")) else {
            panic!("n1 is cached");
        };
        let v: Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(v["kind"], "Node");
        assert_eq!(code(&answer(&s, &q("GET", "/pods/a/p3"))), 404);
        assert_eq!(code(&answer(&s, &q("LIST", "/services"))), 404);
        assert_eq!(code(&answer(&s, &q("LIST", "/deployments"))), 503);
        assert_eq!(code(&answer(&s, &q("GET", "/deployments/a/d"))), 503);
    }
}

//! Decoding the Kubernetes protobuf request encoding for the kinds kubectl's typed commands send
//! that way (`kubectl create namespace|configmap|secret|deployment|serviceaccount|role|
//! clusterrole|rolebinding|clusterrolebinding`) and the review kinds of `kubectl auth whoami|can-i`.
//!
//! The envelope is the magic `k8s\0` followed by a `runtime.Unknown` message (type meta, raw
//! bytes of the object). Objects are decoded with hand-written field tables into the same JSON
//! the JSON encoding would carry. Other kinds are refused with 415 by the caller; responses are
//! always JSON (kubectl accepts them).

use serde_json::{Map, Value, json};

/// The protobuf body could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ProtobufError(pub String);

fn err(m: impl Into<String>) -> ProtobufError {
    ProtobufError(m.into())
}

/// One decoded wire-format field.
enum Field<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Fixed,
}

struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Result<u64, ProtobufError> {
        let mut v = 0u64;
        for i in 0..10 {
            let (&b, rest) = self
                .buf
                .split_first()
                .ok_or_else(|| err("truncated varint"))?;
            self.buf = rest;
            v |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(err("varint too long"))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], ProtobufError> {
        if n > self.buf.len() {
            return Err(err("truncated field"));
        }
        let (a, b) = self.buf.split_at(n);
        self.buf = b;
        Ok(a)
    }

    fn next(&mut self) -> Result<Option<(u64, Field<'a>)>, ProtobufError> {
        if self.buf.is_empty() {
            return Ok(None);
        }
        let key = self.varint()?;
        let field = match key & 7 {
            0 => Field::Varint(self.varint()?),
            1 => {
                self.take(8)?;
                Field::Fixed
            }
            2 => {
                let n = usize::try_from(self.varint()?).map_err(|_| err("length too large"))?;
                Field::Bytes(self.take(n)?)
            }
            5 => {
                self.take(4)?;
                Field::Fixed
            }
            w => return Err(err(format!("unsupported wire type {w}"))),
        };
        Ok(Some((key >> 3, field)))
    }
}

fn fields(buf: &[u8]) -> Result<Vec<(u64, Field<'_>)>, ProtobufError> {
    let mut r = Reader { buf };
    let mut out = Vec::new();
    for _ in 0..1_000_000 {
        match r.next()? {
            Some(f) => out.push(f),
            None => return Ok(out),
        }
    }
    Err(err("too many fields"))
}

fn string(b: &[u8]) -> Result<String, ProtobufError> {
    String::from_utf8(b.to_vec()).map_err(|_| err("invalid UTF-8 in a string field"))
}

fn base64(b: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(b)
}

/// Adds one map entry (key = 1, value = 2) to `map`.
fn map_entry(
    map: &mut Map<String, Value>,
    entry: &[u8],
    bytes_value: bool,
) -> Result<(), ProtobufError> {
    let mut key = String::new();
    let mut value = Value::String(String::new());
    for (n, f) in fields(entry)? {
        match (n, f) {
            (1, Field::Bytes(b)) => key = string(b)?,
            (2, Field::Bytes(b)) => {
                value = if bytes_value {
                    json!(base64(b))
                } else {
                    json!(string(b)?)
                };
            }
            _ => {}
        }
    }
    map.insert(key, value);
    Ok(())
}

fn object_meta(buf: &[u8]) -> Result<Value, ProtobufError> {
    let mut m = Map::new();
    let mut labels = Map::new();
    let mut annotations = Map::new();
    let mut finalizers = Vec::new();
    for (n, f) in fields(buf)? {
        match (n, f) {
            (1, Field::Bytes(b)) => {
                put_str(&mut m, "name", b)?;
            }
            (2, Field::Bytes(b)) => {
                put_str(&mut m, "generateName", b)?;
            }
            (3, Field::Bytes(b)) => {
                put_str(&mut m, "namespace", b)?;
            }
            (5, Field::Bytes(b)) => {
                put_str(&mut m, "uid", b)?;
            }
            (6, Field::Bytes(b)) => {
                put_str(&mut m, "resourceVersion", b)?;
            }
            (11, Field::Bytes(b)) => map_entry(&mut labels, b, false)?,
            (12, Field::Bytes(b)) => map_entry(&mut annotations, b, false)?,
            (14, Field::Bytes(b)) => finalizers.push(json!(string(b)?)),
            _ => {}
        }
    }
    if !labels.is_empty() {
        m.insert("labels".into(), Value::Object(labels));
    }
    if !annotations.is_empty() {
        m.insert("annotations".into(), Value::Object(annotations));
    }
    if !finalizers.is_empty() {
        m.insert("finalizers".into(), Value::Array(finalizers));
    }
    Ok(Value::Object(m))
}

fn namespace(buf: &[u8]) -> Result<Value, ProtobufError> {
    let mut o = json!({"apiVersion": "v1", "kind": "Namespace"});
    for (n, f) in fields(buf)? {
        if let (1, Field::Bytes(b)) = (n, f) {
            o["metadata"] = object_meta(b)?;
        }
    }
    Ok(o)
}

fn configmap(buf: &[u8]) -> Result<Value, ProtobufError> {
    let mut o = json!({"apiVersion": "v1", "kind": "ConfigMap"});
    let mut data = Map::new();
    let mut binary = Map::new();
    for (n, f) in fields(buf)? {
        match (n, f) {
            (1, Field::Bytes(b)) => o["metadata"] = object_meta(b)?,
            (2, Field::Bytes(b)) => map_entry(&mut data, b, false)?,
            (3, Field::Bytes(b)) => map_entry(&mut binary, b, true)?,
            (4, Field::Varint(v)) => o["immutable"] = json!(v != 0),
            _ => {}
        }
    }
    if !data.is_empty() {
        o["data"] = Value::Object(data);
    }
    if !binary.is_empty() {
        o["binaryData"] = Value::Object(binary);
    }
    Ok(o)
}

fn secret(buf: &[u8]) -> Result<Value, ProtobufError> {
    let mut o = json!({"apiVersion": "v1", "kind": "Secret"});
    let mut data = Map::new();
    let mut string_data = Map::new();
    for (n, f) in fields(buf)? {
        match (n, f) {
            (1, Field::Bytes(b)) => o["metadata"] = object_meta(b)?,
            (2, Field::Bytes(b)) => map_entry(&mut data, b, true)?,
            (3, Field::Bytes(b)) if !b.is_empty() => o["type"] = json!(string(b)?),
            (4, Field::Bytes(b)) => map_entry(&mut string_data, b, false)?,
            (5, Field::Varint(v)) => o["immutable"] = json!(v != 0),
            _ => {}
        }
    }
    // The server folds stringData into data.
    for (k, v) in string_data {
        data.insert(k, json!(base64(v.as_str().unwrap_or("").as_bytes())));
    }
    if !data.is_empty() {
        o["data"] = Value::Object(data);
    }
    Ok(o)
}

/// Inserts a string field, leaving out empty ones (as the JSON encoding omits them).
fn put_str(map: &mut Map<String, Value>, key: &str, b: &[u8]) -> Result<(), ProtobufError> {
    let v = string(b)?;
    if !v.is_empty() {
        map.insert(key.to_string(), json!(v));
    }
    Ok(())
}

fn int(v: u64) -> Value {
    // int32/int64 fields: two's complement in a varint.
    json!(v as i64)
}

fn label_selector(buf: &[u8]) -> Result<Value, ProtobufError> {
    let mut match_labels = Map::new();
    for (n, f) in fields(buf)? {
        if let (1, Field::Bytes(b)) = (n, f) {
            map_entry(&mut match_labels, b, false)?;
        }
    }
    Ok(json!({"matchLabels": match_labels}))
}

fn container(buf: &[u8]) -> Result<Value, ProtobufError> {
    let mut c = Map::new();
    let (mut command, mut args, mut ports) = (Vec::new(), Vec::new(), Vec::new());
    for (n, f) in fields(buf)? {
        match (n, f) {
            (1, Field::Bytes(b)) => {
                put_str(&mut c, "name", b)?;
            }
            (2, Field::Bytes(b)) => {
                put_str(&mut c, "image", b)?;
            }
            (3, Field::Bytes(b)) => command.push(json!(string(b)?)),
            (4, Field::Bytes(b)) => args.push(json!(string(b)?)),
            (5, Field::Bytes(b)) => {
                put_str(&mut c, "workingDir", b)?;
            }
            (6, Field::Bytes(b)) => {
                let mut p = Map::new();
                for (pn, pf) in fields(b)? {
                    match (pn, pf) {
                        (1, Field::Bytes(x)) => {
                            put_str(&mut p, "name", x)?;
                        }
                        (2, Field::Varint(v)) if v != 0 => {
                            p.insert("hostPort".into(), int(v));
                        }
                        (3, Field::Varint(v)) => {
                            p.insert("containerPort".into(), int(v));
                        }
                        (4, Field::Bytes(x)) => {
                            put_str(&mut p, "protocol", x)?;
                        }
                        _ => {}
                    }
                }
                ports.push(Value::Object(p));
            }
            (14, Field::Bytes(b)) => {
                put_str(&mut c, "imagePullPolicy", b)?;
            }
            _ => {}
        }
    }
    for (k, v) in [("command", command), ("args", args), ("ports", ports)] {
        if !v.is_empty() {
            c.insert(k.into(), Value::Array(v));
        }
    }
    Ok(Value::Object(c))
}

fn pod_template(buf: &[u8]) -> Result<Value, ProtobufError> {
    let mut t = json!({});
    for (n, f) in fields(buf)? {
        match (n, f) {
            (1, Field::Bytes(b)) => t["metadata"] = object_meta(b)?,
            (2, Field::Bytes(b)) => {
                let mut containers = Vec::new();
                let mut spec = Map::new();
                for (sn, sf) in fields(b)? {
                    match (sn, sf) {
                        (2, Field::Bytes(c)) => containers.push(container(c)?),
                        (3, Field::Bytes(x)) => {
                            put_str(&mut spec, "restartPolicy", x)?;
                        }
                        _ => {}
                    }
                }
                spec.insert("containers".into(), Value::Array(containers));
                t["spec"] = Value::Object(spec);
            }
            _ => {}
        }
    }
    Ok(t)
}

fn deployment(buf: &[u8]) -> Result<Value, ProtobufError> {
    let mut o = json!({"apiVersion": "apps/v1", "kind": "Deployment"});
    for (n, f) in fields(buf)? {
        match (n, f) {
            (1, Field::Bytes(b)) => o["metadata"] = object_meta(b)?,
            (2, Field::Bytes(b)) => {
                let mut spec = json!({});
                for (sn, sf) in fields(b)? {
                    match (sn, sf) {
                        (1, Field::Varint(v)) => spec["replicas"] = int(v),
                        (2, Field::Bytes(x)) => spec["selector"] = label_selector(x)?,
                        (3, Field::Bytes(x)) => spec["template"] = pod_template(x)?,
                        _ => {}
                    }
                }
                o["spec"] = spec;
            }
            _ => {}
        }
    }
    Ok(o)
}

/// Strings of repeated string fields, by field number, into `obj[name]`.
fn strings_into(obj: &mut Value, names: &[(u64, &str)], buf: &[u8]) -> Result<(), ProtobufError> {
    for (n, f) in fields(buf)? {
        if let (Some((_, name)), Field::Bytes(b)) = (names.iter().find(|(k, _)| *k == n), f) {
            let s = json!(string(b)?);
            match obj.get_mut(*name).and_then(Value::as_array_mut) {
                Some(a) => a.push(s),
                None => obj[*name] = json!([s]),
            }
        }
    }
    Ok(())
}

/// Scalar string fields, by field number, into `obj[name]`.
fn string_fields(names: &[(u64, &str)], buf: &[u8]) -> Result<Value, ProtobufError> {
    let mut o = json!({});
    for (n, f) in fields(buf)? {
        if let (Some((_, name)), Field::Bytes(b)) = (names.iter().find(|(k, _)| *k == n), f)
            && !b.is_empty()
        {
            o[*name] = json!(string(b)?);
        }
    }
    Ok(o)
}

fn service_account(buf: &[u8]) -> Result<Value, ProtobufError> {
    let mut o = json!({"apiVersion": "v1", "kind": "ServiceAccount"});
    for (n, f) in fields(buf)? {
        match (n, f) {
            (1, Field::Bytes(b)) => o["metadata"] = object_meta(b)?,
            (4, Field::Varint(v)) => o["automountServiceAccountToken"] = json!(v != 0),
            _ => {}
        }
    }
    Ok(o)
}

/// `Role` and `ClusterRole`: metadata and policy rules.
fn role(kind: &str, buf: &[u8]) -> Result<Value, ProtobufError> {
    let mut o = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": kind, "rules": []});
    for (n, f) in fields(buf)? {
        match (n, f) {
            (1, Field::Bytes(b)) => o["metadata"] = object_meta(b)?,
            (2, Field::Bytes(b)) => {
                let mut rule = json!({});
                strings_into(
                    &mut rule,
                    &[
                        (1, "verbs"),
                        (2, "apiGroups"),
                        (3, "resources"),
                        (4, "resourceNames"),
                        (5, "nonResourceURLs"),
                    ],
                    b,
                )?;
                if let Some(rules) = o["rules"].as_array_mut() {
                    rules.push(rule);
                }
            }
            _ => {}
        }
    }
    Ok(o)
}

/// `RoleBinding` and `ClusterRoleBinding`: metadata, subjects and the role reference.
fn role_binding(kind: &str, buf: &[u8]) -> Result<Value, ProtobufError> {
    let mut o = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": kind});
    let mut subjects = Vec::new();
    for (n, f) in fields(buf)? {
        match (n, f) {
            (1, Field::Bytes(b)) => o["metadata"] = object_meta(b)?,
            (2, Field::Bytes(b)) => subjects.push(string_fields(
                &[(1, "kind"), (2, "apiGroup"), (3, "name"), (4, "namespace")],
                b,
            )?),
            (3, Field::Bytes(b)) => {
                o["roleRef"] = string_fields(&[(1, "apiGroup"), (2, "kind"), (3, "name")], b)?;
            }
            _ => {}
        }
    }
    if !subjects.is_empty() {
        o["subjects"] = Value::Array(subjects);
    }
    Ok(o)
}

/// The review kinds (`SelfSubjectReview`, `SelfSubjectAccessReview`, `SelfSubjectRulesReview`,
/// `SubjectAccessReview`, `LocalSubjectAccessReview`): metadata and the spec.
fn review(api_version: &str, kind: &str, buf: &[u8]) -> Result<Value, ProtobufError> {
    let mut o = json!({"apiVersion": api_version, "kind": kind, "spec": {}});
    for (n, f) in fields(buf)? {
        match (n, f) {
            (1, Field::Bytes(b)) => o["metadata"] = object_meta(b)?,
            (2, Field::Bytes(b)) if kind == "SelfSubjectRulesReview" => {
                o["spec"] = string_fields(&[(1, "namespace")], b)?;
            }
            (2, Field::Bytes(b)) if kind != "SelfSubjectReview" => o["spec"] = access_spec(b)?,
            _ => {}
        }
    }
    Ok(o)
}

/// `SubjectAccessReviewSpec` (and the self/local variants, which share its first fields).
fn access_spec(buf: &[u8]) -> Result<Value, ProtobufError> {
    let mut spec = json!({});
    let mut extra = Map::new();
    for (n, f) in fields(buf)? {
        match (n, f) {
            (1, Field::Bytes(b)) => {
                spec["resourceAttributes"] = string_fields(
                    &[
                        (1, "namespace"),
                        (2, "verb"),
                        (3, "group"),
                        (4, "version"),
                        (5, "resource"),
                        (6, "subresource"),
                        (7, "name"),
                    ],
                    b,
                )?;
            }
            (2, Field::Bytes(b)) => {
                spec["nonResourceAttributes"] = string_fields(&[(1, "path"), (2, "verb")], b)?;
            }
            (3, Field::Bytes(b)) => spec["user"] = json!(string(b)?),
            (4, Field::Bytes(b)) => {
                let g = json!(string(b)?);
                match spec.get_mut("groups").and_then(Value::as_array_mut) {
                    Some(a) => a.push(g),
                    None => spec["groups"] = json!([g]),
                }
            }
            (5, Field::Bytes(entry)) => {
                // map<string, ExtraValue>; ExtraValue is `repeated string items = 1`.
                let mut key = String::new();
                let mut values = json!({});
                for (en, ef) in fields(entry)? {
                    match (en, ef) {
                        (1, Field::Bytes(k)) => key = string(k)?,
                        (2, Field::Bytes(v)) => strings_into(&mut values, &[(1, "items")], v)?,
                        _ => {}
                    }
                }
                extra.insert(key, values.get("items").cloned().unwrap_or(json!([])));
            }
            (6, Field::Bytes(b)) => spec["uid"] = json!(string(b)?),
            _ => {}
        }
    }
    if !extra.is_empty() {
        spec["extra"] = Value::Object(extra);
    }
    Ok(spec)
}

/// Decodes a `k8s\0`-prefixed protobuf body into a JSON object. Returns `Ok(None)` for kinds
/// this decoder does not know.
pub fn decode(body: &[u8]) -> Result<Option<Value>, ProtobufError> {
    let unknown = body
        .strip_prefix(b"k8s\0")
        .ok_or_else(|| err("missing the k8s protobuf envelope prefix"))?;
    let (mut api_version, mut kind, mut raw) = (String::new(), String::new(), &[][..]);
    for (n, f) in fields(unknown)? {
        match (n, f) {
            (1, Field::Bytes(tm)) => {
                for (tn, tf) in fields(tm)? {
                    match (tn, tf) {
                        (1, Field::Bytes(b)) => api_version = string(b)?,
                        (2, Field::Bytes(b)) => kind = string(b)?,
                        _ => {}
                    }
                }
            }
            (2, Field::Bytes(b)) => raw = b,
            (3, Field::Bytes(b)) if !b.is_empty() => {
                return Err(err("compressed protobuf bodies are not supported"));
            }
            _ => {}
        }
    }
    let obj = match (api_version.as_str(), kind.as_str()) {
        ("v1", "Namespace") => namespace(raw)?,
        ("v1", "ConfigMap") => configmap(raw)?,
        ("v1", "Secret") => secret(raw)?,
        ("apps/v1", "Deployment") => deployment(raw)?,
        ("v1", "ServiceAccount") => service_account(raw)?,
        ("rbac.authorization.k8s.io/v1", k @ ("Role" | "ClusterRole")) => role(k, raw)?,
        ("rbac.authorization.k8s.io/v1", k @ ("RoleBinding" | "ClusterRoleBinding")) => {
            role_binding(k, raw)?
        }
        (v @ "authentication.k8s.io/v1", k @ "SelfSubjectReview")
        | (
            v @ "authorization.k8s.io/v1",
            k @ ("SelfSubjectAccessReview"
            | "SelfSubjectRulesReview"
            | "SubjectAccessReview"
            | "LocalSubjectAccessReview"),
        ) => review(v, k, raw)?,
        _ => return Ok(None),
    };
    Ok(Some(obj))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn varint(mut v: u64, out: &mut Vec<u8>) {
        loop {
            let b = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(b);
                return;
            }
            out.push(b | 0x80);
        }
    }

    fn bytes_field(n: u64, b: &[u8], out: &mut Vec<u8>) {
        varint(n << 3 | 2, out);
        varint(b.len() as u64, out);
        out.extend_from_slice(b);
    }

    fn entry(k: &str, v: &[u8]) -> Vec<u8> {
        let mut e = Vec::new();
        bytes_field(1, k.as_bytes(), &mut e);
        bytes_field(2, v, &mut e);
        e
    }

    fn envelope(api_version: &str, kind: &str, raw: &[u8]) -> Vec<u8> {
        let mut tm = Vec::new();
        bytes_field(1, api_version.as_bytes(), &mut tm);
        bytes_field(2, kind.as_bytes(), &mut tm);
        let mut u = Vec::new();
        bytes_field(1, &tm, &mut u);
        bytes_field(2, raw, &mut u);
        bytes_field(4, b"application/vnd.kubernetes.protobuf", &mut u);
        let mut out = b"k8s\0".to_vec();
        out.extend(u);
        out
    }

    #[test]
    fn configmap_and_secret() {
        let mut meta = Vec::new();
        bytes_field(1, b"cfg", &mut meta);
        bytes_field(3, b"default", &mut meta);
        bytes_field(11, &entry("app", b"web"), &mut meta);
        let mut cm = Vec::new();
        bytes_field(1, &meta, &mut cm);
        bytes_field(2, &entry("k", b"v"), &mut cm);
        let v = decode(&envelope("v1", "ConfigMap", &cm))
            .ok()
            .flatten()
            .unwrap_or_default();
        assert_eq!(
            v,
            json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "cfg", "namespace": "default", "labels": {"app": "web"}},
            "data": {"k": "v"}})
        );
        let mut s = Vec::new();
        bytes_field(1, &meta, &mut s);
        bytes_field(2, &entry("password", b"hunter2"), &mut s);
        bytes_field(3, b"Opaque", &mut s);
        let v = decode(&envelope("v1", "Secret", &s))
            .ok()
            .flatten()
            .unwrap_or_default();
        assert_eq!(v["data"]["password"], "aHVudGVyMg==");
        assert_eq!(v["type"], "Opaque");
        assert_eq!(decode(&envelope("batch/v1", "Job", b"")), Ok(None));
        assert!(decode(b"not protobuf").is_err());
        assert!(decode(b"k8s\0\x0a\xff").is_err());
    }

    #[test]
    fn review_kinds() {
        let mut attrs = Vec::new();
        bytes_field(1, b"team-a", &mut attrs);
        bytes_field(2, b"create", &mut attrs);
        bytes_field(5, b"pods", &mut attrs);
        bytes_field(6, b"exec", &mut attrs);
        let mut items = Vec::new();
        bytes_field(1, b"7", &mut items);
        let mut extra = Vec::new();
        bytes_field(1, b"agent.gitlab.com/id", &mut extra);
        bytes_field(2, &items, &mut extra);
        let mut spec = Vec::new();
        bytes_field(1, &attrs, &mut spec);
        bytes_field(3, b"jane", &mut spec);
        bytes_field(4, b"devs", &mut spec);
        bytes_field(5, &extra, &mut spec);
        let mut sar = Vec::new();
        bytes_field(2, &spec, &mut sar);
        let r = decode(&envelope(
            "authorization.k8s.io/v1",
            "SubjectAccessReview",
            &sar,
        ))
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_default();
        assert_eq!(
            r["spec"],
            json!({
                "resourceAttributes": {"namespace": "team-a", "verb": "create", "resource": "pods", "subresource": "exec"},
                "user": "jane", "groups": ["devs"], "extra": {"agent.gitlab.com/id": ["7"]},
            })
        );
        let who = decode(&envelope(
            "authentication.k8s.io/v1",
            "SelfSubjectReview",
            &[],
        ))
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_default();
        assert_eq!(who["kind"], "SelfSubjectReview");
    }

    #[test]
    fn rbac_kinds() {
        let mut meta = Vec::new();
        bytes_field(1, b"reader", &mut meta);
        let mut rule = Vec::new();
        bytes_field(1, b"get", &mut rule);
        bytes_field(1, b"list", &mut rule);
        bytes_field(2, b"", &mut rule);
        bytes_field(3, b"pods", &mut rule);
        let mut role = Vec::new();
        bytes_field(1, &meta, &mut role);
        bytes_field(2, &rule, &mut role);
        let r = decode(&envelope("rbac.authorization.k8s.io/v1", "Role", &role))
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_default();
        assert_eq!(
            r["rules"],
            json!([{"verbs": ["get", "list"], "apiGroups": [""], "resources": ["pods"]}])
        );
        let mut subject = Vec::new();
        bytes_field(1, b"User", &mut subject);
        bytes_field(2, b"rbac.authorization.k8s.io", &mut subject);
        bytes_field(3, b"ann", &mut subject);
        let mut role_ref = Vec::new();
        bytes_field(1, b"rbac.authorization.k8s.io", &mut role_ref);
        bytes_field(2, b"ClusterRole", &mut role_ref);
        bytes_field(3, b"view", &mut role_ref);
        let mut binding = Vec::new();
        bytes_field(1, &meta, &mut binding);
        bytes_field(2, &subject, &mut binding);
        bytes_field(3, &role_ref, &mut binding);
        let b = decode(&envelope(
            "rbac.authorization.k8s.io/v1",
            "ClusterRoleBinding",
            &binding,
        ))
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_default();
        assert_eq!(b["metadata"]["name"], "reader");
        assert_eq!(
            b["subjects"],
            json!([{"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": "ann"}])
        );
        assert_eq!(b["roleRef"]["name"], "view");
        let sa = decode(&envelope("v1", "ServiceAccount", &{
            let mut s = Vec::new();
            bytes_field(1, &meta, &mut s);
            s
        }))
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_default();
        assert_eq!(sa["kind"], "ServiceAccount");
    }

    #[test]
    fn deployment_subset() {
        let mut meta = Vec::new();
        bytes_field(1, b"d", &mut meta);
        bytes_field(11, &entry("app", b"d"), &mut meta);
        let mut port = Vec::new();
        varint(3 << 3, &mut port);
        varint(80, &mut port);
        let mut c = Vec::new();
        bytes_field(1, b"nginx", &mut c);
        bytes_field(2, b"nginx:1.27", &mut c);
        bytes_field(6, &port, &mut c);
        let mut pod_spec = Vec::new();
        bytes_field(2, &c, &mut pod_spec);
        let mut template = Vec::new();
        bytes_field(1, &meta, &mut template);
        bytes_field(2, &pod_spec, &mut template);
        let mut selector = Vec::new();
        bytes_field(1, &entry("app", b"d"), &mut selector);
        let mut spec = Vec::new();
        varint(1 << 3, &mut spec);
        varint(3, &mut spec);
        bytes_field(2, &selector, &mut spec);
        bytes_field(3, &template, &mut spec);
        let mut d = Vec::new();
        bytes_field(1, &meta, &mut d);
        bytes_field(2, &spec, &mut d);
        let v = decode(&envelope("apps/v1", "Deployment", &d))
            .ok()
            .flatten()
            .unwrap_or_default();
        assert_eq!(v["spec"]["replicas"], 3);
        assert_eq!(v["spec"]["selector"]["matchLabels"]["app"], "d");
        assert_eq!(
            v["spec"]["template"]["spec"]["containers"][0]["image"],
            "nginx:1.27"
        );
        assert_eq!(
            v["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"],
            80
        );
    }

    proptest! {
        #[test]
        fn never_panics(body in proptest::collection::vec(any::<u8>(), 0..200)) {
            let mut b = b"k8s\0".to_vec();
            b.extend(body);
            let _ = decode(&b);
        }
    }
}

//! Kubernetes `Status` objects: the body of every error response (and of some successes).

use http::StatusCode;
use serde_json::{Value, json};

use super::patch::PatchError;
use super::selector::SelectorError;
use super::store::StoreError;

/// An error answered to an HTTP client as a `Status` object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status code.
    pub code: StatusCode,
    /// Machine-readable reason (`NotFound`, `AlreadyExists`, `Conflict`, `Invalid`, ...).
    pub reason: &'static str,
    /// Human-readable message.
    pub message: String,
    /// Optional `details` (name, kind, group).
    pub details: Option<Value>,
}

impl ApiError {
    /// An error with the given code, reason and message.
    pub fn new(code: StatusCode, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            reason,
            message: message.into(),
            details: None,
        }
    }

    /// 400 BadRequest.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "BadRequest", message)
    }

    /// 404 NotFound for a URL that names nothing (an unknown group, version, resource or
    /// subresource), worded as the real server words it; clients add what they asked for.
    pub fn not_found_path(path: &str) -> Self {
        tracing::debug!(path, "nothing served here");
        Self {
            details: Some(json!({})),
            ..Self::new(
                StatusCode::NOT_FOUND,
                "NotFound",
                "the server could not find the requested resource",
            )
        }
    }

    /// 405 MethodNotAllowed.
    pub fn method_not_allowed(method: &http::Method, what: &str) -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            format!(
                "the server does not allow this method on the requested resource ({method} {what})"
            ),
        )
    }

    /// 415 UnsupportedMediaType.
    pub fn unsupported_media_type(ct: &str) -> Self {
        Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml, application/strategic-merge-patch+json (got {ct:?})"
            ),
        )
    }

    /// 401 Unauthorized.
    pub fn unauthorized() -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "Unauthorized", "Unauthorized")
    }

    /// 410 Gone with reason `Expired` (as the real server answers too-old versions).
    pub fn expired(message: impl Into<String>) -> Self {
        Self::new(StatusCode::GONE, "Expired", message)
    }

    /// The `Status` object for this error.
    pub fn to_status(&self) -> Value {
        let mut s = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code.as_u16(),
        });
        if let (Some(d), Some(o)) = (&self.details, s.as_object_mut()) {
            o.insert("details".to_string(), d.clone());
        }
        s
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.code.as_u16(),
            self.reason,
            self.message
        )
    }
}

fn split_resource(resource: &str) -> (&str, &str) {
    match resource.split_once('.') {
        Some((kind, group)) => (kind, group),
        None => (resource, ""),
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        let message = e.to_string();
        match e {
            StoreError::NotFound { resource, name } => {
                let (kind, group) = split_resource(&resource);
                Self {
                    details: Some(json!({"name": name, "group": group, "kind": kind})),
                    ..Self::new(StatusCode::NOT_FOUND, "NotFound", message)
                }
            }
            StoreError::AlreadyExists { resource, name } => {
                let (kind, group) = split_resource(&resource);
                Self {
                    details: Some(json!({"name": name, "group": group, "kind": kind})),
                    ..Self::new(StatusCode::CONFLICT, "AlreadyExists", message)
                }
            }
            StoreError::Conflict { resource, name, .. } => {
                let (kind, group) = split_resource(&resource);
                Self {
                    details: Some(json!({"name": name, "group": group, "kind": kind})),
                    ..Self::new(StatusCode::CONFLICT, "Conflict", message)
                }
            }
            StoreError::Invalid { kind, name, errors } => {
                let (kind, group) = split_resource(&kind);
                let causes: Vec<Value> = errors.iter().map(|e| field_cause(e)).collect();
                Self {
                    details: Some(
                        json!({"name": name, "group": group, "kind": kind, "causes": causes}),
                    ),
                    ..Self::new(StatusCode::UNPROCESSABLE_ENTITY, "Invalid", message)
                }
            }
            StoreError::Forbidden { cause, .. } => Self {
                details: cause.map(|reason| {
                    json!({"causes": [{"reason": reason, "message": message.clone(), "field": "metadata.namespace"}]})
                }),
                ..Self::new(StatusCode::FORBIDDEN, "Forbidden", message.clone())
            },
            StoreError::BadRequest(m) => Self::bad_request(m),
            StoreError::Expired(m) => Self::expired(m),
            StoreError::TooLargeResourceVersion { .. } => Self {
                details: Some(
                    json!({"causes": [{"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}], "retryAfterSeconds": 1}),
                ),
                ..Self::new(StatusCode::GATEWAY_TIMEOUT, "Timeout", message)
            },
        }
    }
}

/// A `StatusCause` for a `field: Type: detail` field error.
fn field_cause(error: &str) -> Value {
    let (field, detail) = error.split_once(": ").unwrap_or(("", error));
    let reason = match detail.split(':').next().unwrap_or("") {
        "Required value" => "FieldValueRequired",
        "Invalid value" => "FieldValueInvalid",
        "Forbidden" => "FieldValueForbidden",
        "Unsupported value" => "FieldValueNotSupported",
        "Duplicate value" => "FieldValueDuplicate",
        "Too long" => "FieldValueTooLong",
        "Not found" => "FieldValueNotFound",
        _ => "FieldValueInvalid",
    };
    json!({"reason": reason, "message": detail, "field": field})
}

impl From<SelectorError> for ApiError {
    fn from(e: SelectorError) -> Self {
        Self::bad_request(e.0)
    }
}

impl From<PatchError> for ApiError {
    fn from(e: PatchError) -> Self {
        match e {
            PatchError::Invalid(m) => Self::bad_request(m),
            PatchError::Failed(m) => Self::new(StatusCode::UNPROCESSABLE_ENTITY, "Invalid", m),
        }
    }
}

/// A `Status` reporting success (as returned by some deletes).
pub fn success(details: Value) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success",
        "details": details,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_errors_map_to_codes() {
        let cases: Vec<(StoreError, u16, &str)> = vec![
            (
                StoreError::NotFound {
                    resource: "pods".into(),
                    name: "x".into(),
                },
                404,
                "NotFound",
            ),
            (
                StoreError::AlreadyExists {
                    resource: "deployments.apps".into(),
                    name: "x".into(),
                },
                409,
                "AlreadyExists",
            ),
            (
                StoreError::Conflict {
                    resource: "pods".into(),
                    name: "x".into(),
                    message: "m".into(),
                },
                409,
                "Conflict",
            ),
            (
                StoreError::Invalid {
                    kind: "Pod".into(),
                    name: "".into(),
                    errors: vec!["metadata.name: Required value: x".into()],
                },
                422,
                "Invalid",
            ),
            (StoreError::BadRequest("b".into()), 400, "BadRequest"),
            (StoreError::Expired("e".into()), 410, "Expired"),
        ];
        for (e, code, reason) in cases {
            let s = ApiError::from(e).to_status();
            assert_eq!(s["code"], code);
            assert_eq!(s["reason"], reason);
            assert_eq!(s["kind"], "Status");
            assert_eq!(s["status"], "Failure");
        }
        let nf = ApiError::from(StoreError::NotFound {
            resource: "deployments.apps".into(),
            name: "web".into(),
        })
        .to_status();
        assert_eq!(nf["message"], "deployments.apps \"web\" not found");
        assert_eq!(nf["details"]["group"], "apps");
        assert_eq!(nf["details"]["kind"], "deployments");
        let inv = ApiError::from(StoreError::Invalid {
            kind: "Deployment.apps".into(),
            name: "web".into(),
            errors: vec![
                "metadata.finalizers: Forbidden: no new finalizers".into(),
                "spec.replicas: Invalid value: -1".into(),
            ],
        })
        .to_status();
        assert_eq!(
            inv["message"],
            "Deployment.apps \"web\" is invalid: [metadata.finalizers: Forbidden: no new finalizers, spec.replicas: Invalid value: -1]"
        );
        assert_eq!(inv["details"]["kind"], "Deployment");
        assert_eq!(inv["details"]["group"], "apps");
        assert_eq!(inv["details"]["causes"][0]["reason"], "FieldValueForbidden");
        assert_eq!(inv["details"]["causes"][1]["field"], "spec.replicas");
    }
}

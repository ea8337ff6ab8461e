//! Query-string parameters of API requests (`ListOptions`, `GetOptions`, `PatchOptions`, log
//! options), parsed into typed values with clear 400 errors for malformed input.

use std::collections::HashMap;
use std::time::Duration;

use super::logs::LogRequest;
use super::resource::ResourceType;
use super::selector::{FieldSelector, LabelSelector, Selectors};
use super::status::ApiError;
use super::store::{ListOptions, WatchStart};
use super::table::IncludeObject;

/// The decoded query string (the last value wins for repeated keys).
#[derive(Debug, Clone, Default)]
pub struct Query {
    params: HashMap<String, String>,
}

impl Query {
    /// Parses `a=1&b=2` (percent-decoding, `+` as space).
    pub fn parse(query: Option<&str>) -> Self {
        let params = url::form_urlencoded::parse(query.unwrap_or("").as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        Self { params }
    }

    /// A raw parameter.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.params.get(key).map(String::as_str)
    }

    /// A boolean parameter (`true`/`1`; absent = false).
    pub fn flag(&self, key: &str) -> Result<bool, ApiError> {
        match self.get(key) {
            None | Some("") | Some("false") | Some("0") => Ok(false),
            Some("true") | Some("1") => Ok(true),
            Some(other) => Err(ApiError::bad_request(format!(
                "invalid value {other:?} for boolean parameter {key}"
            ))),
        }
    }

    /// A non-negative integer parameter.
    pub fn number(&self, key: &str) -> Result<Option<u64>, ApiError> {
        match self.get(key) {
            None | Some("") => Ok(None),
            Some(v) => v.parse::<u64>().map(Some).map_err(|_| {
                ApiError::bad_request(format!(
                    "invalid value {v:?} for parameter {key}: expected a non-negative integer"
                ))
            }),
        }
    }

    /// Whether `watch` is requested.
    pub fn watch(&self) -> Result<bool, ApiError> {
        self.flag("watch")
    }

    /// The label and field selectors.
    pub fn selectors(&self, r: &ResourceType) -> Result<Selectors, ApiError> {
        Ok(Selectors {
            labels: LabelSelector::parse(self.get("labelSelector").unwrap_or(""))?,
            fields: FieldSelector::parse(self.get("fieldSelector").unwrap_or(""), r)?,
        })
    }

    fn resource_version(&self) -> Result<Option<u64>, ApiError> {
        match self.get("resourceVersion") {
            None | Some("") => Ok(None),
            Some(v) => v
                .parse::<u64>()
                .map(Some)
                .map_err(|_| ApiError::bad_request(format!("invalid resourceVersion {v:?}"))),
        }
    }

    /// List options (`limit`, `continue`, `resourceVersion`, `resourceVersionMatch`).
    pub fn list_options(&self) -> Result<ListOptions, ApiError> {
        let rv = self.resource_version()?;
        let exact = match self.get("resourceVersionMatch") {
            None | Some("") | Some("NotOlderThan") => false,
            Some("Exact") => true,
            Some(other) => {
                return Err(ApiError::bad_request(format!(
                    "invalid resourceVersionMatch {other:?}: must be Exact or NotOlderThan"
                )));
            }
        };
        if exact && rv.is_none_or(|v| v == 0) {
            return Err(ApiError::bad_request(
                "resourceVersionMatch=Exact requires a non-zero resourceVersion",
            ));
        }
        let continue_token = self
            .get("continue")
            .filter(|c| !c.is_empty())
            .map(str::to_string);
        if continue_token.is_some() && rv.is_some_and(|v| v != 0) {
            return Err(ApiError::bad_request(
                "specifying resource version is not allowed when using continue",
            ));
        }
        Ok(ListOptions {
            limit: self
                .number("limit")?
                .map(|l| usize::try_from(l).unwrap_or(usize::MAX)),
            continue_token,
            exact_version: if exact { rv } else { None },
            min_version: if exact { None } else { rv.filter(|v| *v != 0) },
        })
    }

    /// Where a watch starts: unset or `0` = current state as synthetic ADDED events.
    pub fn watch_start(&self) -> Result<WatchStart, ApiError> {
        Ok(match self.resource_version()? {
            None | Some(0) => WatchStart::Snapshot,
            Some(v) => WatchStart::After(v),
        })
    }

    /// `timeoutSeconds`.
    pub fn timeout(&self) -> Result<Option<Duration>, ApiError> {
        Ok(self.number("timeoutSeconds")?.map(Duration::from_secs))
    }

    /// `includeObject` for Table responses.
    pub fn include_object(&self) -> IncludeObject {
        IncludeObject::parse(self.get("includeObject"))
    }

    /// The `fieldManager` parameter (checked: at most 128 printable characters).
    pub fn field_manager(&self) -> Result<Option<String>, ApiError> {
        match self.get("fieldManager").filter(|m| !m.is_empty()) {
            None => Ok(None),
            Some(m) => {
                crate::managed::validate_field_manager(m)?;
                Ok(Some(m.to_string()))
            }
        }
    }

    /// Whether `force=true` (server-side apply taking over conflicting fields).
    pub fn force(&self) -> Result<bool, ApiError> {
        self.flag("force")
    }

    /// Whether `dryRun=All` was requested.
    pub fn dry_run(&self) -> Result<bool, ApiError> {
        match self.get("dryRun") {
            None | Some("") => Ok(false),
            Some("All") => Ok(true),
            Some(other) => Err(ApiError::bad_request(format!(
                "invalid dryRun {other:?}: only All is supported"
            ))),
        }
    }

    /// Pod log options.
    pub fn log_request(&self) -> Result<LogRequest, ApiError> {
        Ok(LogRequest {
            container: self
                .get("container")
                .filter(|c| !c.is_empty())
                .map(str::to_string),
            follow: self.flag("follow")?,
            tail_lines: self
                .get("tailLines")
                .filter(|v| *v != "-1")
                .map(|v| {
                    v.parse::<u64>()
                        .map_err(|_| ApiError::bad_request(format!("invalid tailLines {v:?}")))
                })
                .transpose()?,
            since_seconds: self.number("sinceSeconds")?,
            timestamps: self.flag("timestamps")?,
            limit_bytes: self
                .number("limitBytes")?
                .map(|l| usize::try_from(l).unwrap_or(usize::MAX)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses() {
        let q = Query::parse(Some(
            "watch=1&resourceVersion=42&labelSelector=app%3Dweb&timeoutSeconds=5&limit=10",
        ));
        assert_eq!(q.watch().ok(), Some(true));
        assert_eq!(q.watch_start().ok(), Some(WatchStart::After(42)));
        assert_eq!(q.timeout().ok().flatten(), Some(Duration::from_secs(5)));
        assert_eq!(q.get("labelSelector"), Some("app=web"));
        assert_eq!(q.list_options().ok().and_then(|o| o.limit), Some(10));
        assert_eq!(
            Query::parse(Some("resourceVersion=0")).watch_start().ok(),
            Some(WatchStart::Snapshot)
        );
        assert_eq!(
            Query::parse(None).watch_start().ok(),
            Some(WatchStart::Snapshot)
        );
        assert!(Query::parse(Some("watch=maybe")).watch().is_err());
        assert!(Query::parse(Some("limit=-1")).list_options().is_err());
        assert!(
            Query::parse(Some("resourceVersion=abc"))
                .list_options()
                .is_err()
        );
        assert!(
            Query::parse(Some("resourceVersionMatch=Exact"))
                .list_options()
                .is_err()
        );
        let l = Query::parse(Some("follow=true&tailLines=-1&timestamps=true")).log_request();
        assert!(l.is_ok_and(|l| l.follow && l.timestamps && l.tail_lines.is_none()));
    }
}

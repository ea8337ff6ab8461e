//! Reading typed values out of a loaded YAML tree, collecting every error with its path and position
//! instead of stopping at the first (the walker behind `ConfigFile::parse`).
//!
//! Conventions: a missing key and an explicit `null` are the same (the default applies, as protobuf
//! JSON does); a wrong type, a bad value or an unknown key is one error at the node (or the key) and the
//! walk goes on with the other keys.

use crate::error::{ConfigError, ErrorKind};
use crate::yaml::{Entry, Node, Pos, ScalarKind, Value};

/// Collects errors during one walk.
#[derive(Default)]
pub(crate) struct Decoder {
    pub(crate) errors: Vec<ConfigError>,
}

/// `parent.key`.
pub(crate) fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_string()
    } else {
        format!("{parent}.{key}")
    }
}

/// `parent[index]`.
pub(crate) fn index(parent: &str, i: usize) -> String {
    format!("{parent}[{i}]")
}

/// The keys of one mapping, checked against the schema's list.
pub(crate) struct Fields<'n> {
    entries: &'n [Entry],
    pub(crate) path: String,
    pub(crate) pos: Pos,
}

impl<'n> Fields<'n> {
    /// The value of `key`, unless it is missing or null.
    pub(crate) fn get(&self, key: &str) -> Option<&'n Node> {
        self.entries
            .iter()
            .find(|e| e.key == key)
            .map(|e| &e.value)
            .filter(|n| !n.is_null())
    }

    /// The path of `key` in this mapping.
    pub(crate) fn path_of(&self, key: &str) -> String {
        join(&self.path, key)
    }

    /// The keys present with a non-null value, in source order, with their positions.
    pub(crate) fn present(&self) -> impl Iterator<Item = &'n Entry> {
        self.entries.iter().filter(|e| !e.value.is_null())
    }
}

impl Decoder {
    pub(crate) fn error(
        &mut self,
        kind: ErrorKind,
        path: &str,
        pos: Pos,
        message: impl Into<String>,
    ) {
        self.errors.push(ConfigError::new(kind, path, pos, message));
    }

    fn wrong_type(&mut self, path: &str, node: &Node, expected: &str) {
        self.error(
            ErrorKind::InvalidType,
            path,
            node.pos,
            format!("expected {expected}, found {}", node.type_name()),
        );
    }

    /// A mapping with only the `allowed` keys. `None` for null (absent) or a wrong type (an error).
    /// Unknown keys are errors at the key, naming the allowed keys.
    pub(crate) fn fields<'n>(
        &mut self,
        node: &'n Node,
        path: &str,
        allowed: &[&str],
    ) -> Option<Fields<'n>> {
        if node.is_null() {
            return None;
        }
        let Some(entries) = node.as_map() else {
            self.wrong_type(path, node, "a mapping");
            return None;
        };
        for e in entries {
            if !allowed.contains(&e.key.as_str()) {
                let mut message = format!("unknown key `{}`", e.key);
                if let Some(near) = nearest(&e.key, allowed) {
                    message.push_str(&format!(" (did you mean `{near}`?)"));
                }
                if allowed.is_empty() {
                    message.push_str("; this mapping takes no keys");
                } else {
                    message.push_str(&format!("; allowed: {}", allowed.join(", ")));
                }
                self.error(
                    ErrorKind::UnknownKey,
                    &join(path, &e.key),
                    e.key_pos,
                    message,
                );
            }
        }
        Some(Fields {
            entries,
            path: path.to_string(),
            pos: node.pos,
        })
    }

    /// A string. Plain scalars of any type are read as their source text (`id: 123` is `"123"`,
    /// `tag: 1.10` is `"1.10"`).
    pub(crate) fn string(&mut self, node: &Node, path: &str) -> Option<String> {
        match &node.value {
            Value::Scalar {
                kind: ScalarKind::Null,
                ..
            } => None,
            Value::Scalar { text, .. } => Some(text.clone()),
            _ => {
                self.wrong_type(path, node, "a string");
                None
            }
        }
    }

    /// A boolean (`true`/`false`).
    pub(crate) fn boolean(&mut self, node: &Node, path: &str) -> Option<bool> {
        match &node.value {
            Value::Scalar {
                kind: ScalarKind::Bool(b),
                ..
            } => Some(*b),
            _ => {
                self.wrong_type(path, node, "true or false");
                None
            }
        }
    }

    /// An integer.
    pub(crate) fn integer(&mut self, node: &Node, path: &str) -> Option<i64> {
        match &node.value {
            Value::Scalar {
                kind: ScalarKind::Int(i),
                ..
            } => Some(*i),
            _ => {
                self.wrong_type(path, node, "an integer");
                None
            }
        }
    }

    /// A sequence, each item read by `item`; a bad item is skipped (its error recorded).
    pub(crate) fn list<T>(
        &mut self,
        node: &Node,
        path: &str,
        mut item: impl FnMut(&mut Self, &Node, &str) -> Option<T>,
    ) -> Vec<T> {
        let Some(items) = node.as_seq() else {
            if !node.is_null() {
                self.wrong_type(path, node, "a sequence");
            }
            return Vec::new();
        };
        items
            .iter()
            .enumerate()
            .filter_map(|(i, n)| item(self, n, &index(path, i)))
            .collect()
    }

    /// A non-empty string validated by `check` (which says what is allowed on failure).
    pub(crate) fn checked<T>(
        &mut self,
        node: &Node,
        path: &str,
        check: impl FnOnce(&str) -> Result<T, String>,
    ) -> Option<T> {
        let text = self.string(node, path)?;
        match check(&text) {
            Ok(v) => Some(v),
            Err(message) => {
                self.error(ErrorKind::InvalidValue, path, node.pos, message);
                None
            }
        }
    }

    /// One of a fixed set of strings.
    pub(crate) fn one_of<T: Copy>(
        &mut self,
        node: &Node,
        path: &str,
        choices: &[(&str, T)],
    ) -> Option<T> {
        let text = self.string(node, path)?;
        if let Some((_, v)) = choices.iter().find(|(name, _)| *name == text) {
            return Some(*v);
        }
        let names: Vec<&str> = choices
            .iter()
            .map(|(n, _)| *n)
            .filter(|n| !n.is_empty())
            .collect();
        self.error(
            ErrorKind::InvalidValue,
            path,
            node.pos,
            format!("`{text}` is not allowed; allowed: {}", names.join(", ")),
        );
        None
    }

    /// A sequence of at most `max` items (an error at the sequence otherwise; items are still read).
    pub(crate) fn bounded_list<T>(
        &mut self,
        node: &Node,
        path: &str,
        max: usize,
        item: impl FnMut(&mut Self, &Node, &str) -> Option<T>,
    ) -> Vec<T> {
        if let Some(items) = node.as_seq()
            && items.len() > max
        {
            self.error(
                ErrorKind::InvalidValue,
                path,
                node.pos,
                format!("{} entries; at most {max} are allowed", items.len()),
            );
        }
        self.list(node, path, item)
    }

    /// A mapping that must be empty (`agent: {}`); null counts as empty.
    pub(crate) fn empty(&mut self, node: &Node, path: &str) {
        let _ = self.fields(node, path, &[]);
    }
}

/// The allowed key closest to `key` (edit distance at most 2), for "did you mean".
fn nearest<'a>(key: &str, allowed: &[&'a str]) -> Option<&'a str> {
    allowed
        .iter()
        .map(|a| (distance(key, a), *a))
        .filter(|(d, _)| *d <= 2)
        .min_by_key(|(d, _)| *d)
        .map(|(_, a)| a)
}

/// Levenshtein distance (short keys only; bounded by the key lengths).
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    #[test]
    fn nearest_key() {
        assert_eq!(super::nearest("refx", &["id", "ref", "paths"]), Some("ref"));
        assert_eq!(super::nearest("zzzzzz", &["id", "ref"]), None);
    }
}

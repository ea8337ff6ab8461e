//! Reading fields of JSON objects: the few shapes every module needs.

use serde_json::Value;

/// The string at `ptr` (`""` when absent or not a string).
pub fn str_at<'a>(v: &'a Value, ptr: &str) -> &'a str {
    v.pointer(ptr).and_then(Value::as_str).unwrap_or("")
}

/// The strings of the list at `ptr` (non-strings skipped).
pub fn strings_at(v: &Value, ptr: &str) -> Vec<String> {
    v.pointer(ptr)
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(str::to_string)
        .collect()
}

/// The string map at `ptr` as a selector (`a=b,c=d`; `""` when absent).
pub fn labels_at(v: &Value, ptr: &str) -> String {
    v.pointer(ptr)
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads() {
        let v = json!({"a": {"b": "c", "l": ["x", 1, "y"], "m": {"k": "v", "z": "w"}}});
        assert_eq!(str_at(&v, "/a/b"), "c");
        assert_eq!(str_at(&v, "/a/nope"), "");
        assert_eq!(strings_at(&v, "/a/l"), vec!["x", "y"]);
        assert_eq!(labels_at(&v, "/a/m"), "k=v,z=w");
        assert_eq!(labels_at(&v, "/a/none"), "");
    }
}

//! The data store: one JSON document, replaced by `PUT /mmds`, merged by `PATCH /mmds`
//! (RFC 7396) and read by the guest through JSON pointers.
//!
//! The size limit applies to the document as serialised (compact JSON), checked before the
//! store changes, so a refused update leaves the previous document in place.

use serde_json::{Map, Value};

/// Why the store refused an update or a read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// Firecracker's words (its API answers 413 with them).
    #[error("The MMDS patch request doesn't fit.")]
    TooLarge,
    #[error("The MMDS data store is not initialized.")]
    NotInitialized,
    #[error("The MMDS resource does not exist.")]
    NotFound,
    /// IMDS text can show objects (their keys) and strings only.
    #[error("Cannot retrieve value. The value has an unsupported type.")]
    UnsupportedValueType,
}

/// How a value is written for the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputFormat {
    /// The value as compact JSON (`Accept: application/json`).
    Json,
    /// EC2's IMDS text: an object lists its keys one a line (`key/` for objects), a string
    /// is written raw; anything else cannot be shown.
    Imds,
}

/// The document and its limit.
#[derive(Debug, Clone)]
pub struct DataStore {
    data: Value,
    initialized: bool,
    limit: usize,
}

impl DataStore {
    /// An empty, uninitialised store that will hold at most `limit` bytes of JSON.
    pub fn new(limit: usize) -> Self {
        Self {
            data: Value::Object(Map::new()),
            initialized: false,
            limit,
        }
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    /// The document (`{}` until the first `PUT`).
    pub fn value(&self) -> &Value {
        &self.data
    }

    /// `PUT /mmds`: replaces the document.
    pub fn put(&mut self, data: Value) -> Result<(), StoreError> {
        self.check_size(&data)?;
        self.data = data;
        self.initialized = true;
        Ok(())
    }

    /// `PATCH /mmds`: RFC 7396 merge of `patch` into the document (Firecracker refuses a
    /// patch before the first `PUT`).
    pub fn patch(&mut self, patch: &Value) -> Result<(), StoreError> {
        if !self.initialized {
            return Err(StoreError::NotInitialized);
        }
        let mut next = self.data.clone();
        merge_patch(&mut next, patch);
        self.check_size(&next)?;
        self.data = next;
        Ok(())
    }

    fn check_size(&self, data: &Value) -> Result<(), StoreError> {
        let mut counter = ByteCounter(0);
        // Writing to a counter cannot fail: every key of a `Value` is a string.
        serde_json::to_writer(&mut counter, data).map_err(|_| StoreError::TooLarge)?;
        if counter.0 > self.limit {
            Err(StoreError::TooLarge)
        } else {
            Ok(())
        }
    }

    /// The value at `path`, a JSON pointer as the guest wrote it in its URL (already free of
    /// repeated slashes); a trailing slash is allowed (`/meta-data/`).
    pub fn get(&self, path: &str, format: OutputFormat) -> Result<String, StoreError> {
        let pointer = path.strip_suffix('/').unwrap_or(path);
        let value = self.data.pointer(pointer).ok_or(StoreError::NotFound)?;
        match format {
            OutputFormat::Json => Ok(value.to_string()),
            OutputFormat::Imds => imds_text(value),
        }
    }
}

/// Counts serialised bytes without keeping them.
struct ByteCounter(usize);

impl std::io::Write for ByteCounter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 = self.0.saturating_add(buf.len());
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// RFC 7396 JSON merge patch, in place. An object patch merges key by key (`null` removes
/// the key) into an object target (anything else is first replaced by `{}`); any other
/// patch replaces the target.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(entries) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Value::Object(doc) = target else {
        return;
    };
    for (key, value) in entries {
        if value.is_null() {
            doc.remove(key);
        } else {
            merge_patch(doc.entry(key.as_str()).or_insert(Value::Null), value);
        }
    }
}

/// A value as IMDS text.
fn imds_text(value: &Value) -> Result<String, StoreError> {
    match value {
        Value::Object(map) => {
            let keys: Vec<String> = map
                .iter()
                .map(|(k, v)| {
                    if v.is_object() {
                        format!("{k}/")
                    } else {
                        k.clone()
                    }
                })
                .collect();
            Ok(keys.join("\n"))
        }
        Value::String(s) => Ok(s.clone()),
        _ => Err(StoreError::UnsupportedValueType),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn store() -> DataStore {
        let mut s = DataStore::new(51_200);
        s.put(json!({
            "latest": {"meta-data": {"instance-id": "i-1", "ami-id": "ami-9", "tags": {"a": "b"}}},
            "age": 43, "list": ["x", "y"], "flag": false
        }))
        .unwrap();
        s
    }

    #[test]
    fn merge_patch_follows_rfc_7396_examples() {
        // The examples of RFC 7396 appendix A, a few of them.
        let cases = [
            (json!({"a": "b"}), json!({"a": "c"}), json!({"a": "c"})),
            (
                json!({"a": "b"}),
                json!({"b": "c"}),
                json!({"a": "b", "b": "c"}),
            ),
            (json!({"a": "b"}), json!({"a": null}), json!({})),
            (
                json!({"a": "b", "b": "c"}),
                json!({"a": null}),
                json!({"b": "c"}),
            ),
            (json!({"a": ["b"]}), json!({"a": "c"}), json!({"a": "c"})),
            (json!({"a": "c"}), json!({"a": ["b"]}), json!({"a": ["b"]})),
            (
                json!({"a": {"b": "c"}}),
                json!({"a": {"b": "d", "c": null}}),
                json!({"a": {"b": "d"}}),
            ),
            (
                json!({"a": [{"b": "c"}]}),
                json!({"a": [1]}),
                json!({"a": [1]}),
            ),
            (json!(["a", "b"]), json!(["c", "d"]), json!(["c", "d"])),
            (json!({"a": "b"}), json!(["c"]), json!(["c"])),
            (
                json!({"e": null}),
                json!({"a": 1}),
                json!({"e": null, "a": 1}),
            ),
            (
                json!([1, 2]),
                json!({"a": "b", "c": null}),
                json!({"a": "b"}),
            ),
            (
                json!({}),
                json!({"a": {"bb": {"ccc": null}}}),
                json!({"a": {"bb": {}}}),
            ),
        ];
        for (mut target, patch, want) in cases {
            merge_patch(&mut target, &patch);
            assert_eq!(target, want, "patch {patch}");
        }
    }

    #[test]
    fn patch_needs_a_put_first_and_a_refused_patch_changes_nothing() {
        let mut s = DataStore::new(40);
        assert_eq!(s.patch(&json!({"a": "b"})), Err(StoreError::NotInitialized));
        assert_eq!(s.value(), &json!({}));
        s.put(json!({"a": "b"})).unwrap();
        s.patch(&json!({"c": "d"})).unwrap();
        assert_eq!(s.value(), &json!({"a": "b", "c": "d"}));
        let big = "x".repeat(40);
        assert_eq!(s.patch(&json!({"e": big})), Err(StoreError::TooLarge));
        assert_eq!(s.value(), &json!({"a": "b", "c": "d"}));
    }

    #[test]
    fn the_limit_counts_compact_json_bytes() {
        // {"k":"vvvv"} is 12 bytes.
        let mut s = DataStore::new(12);
        s.put(json!({"k": "vvvv"})).unwrap();
        assert_eq!(s.put(json!({"k": "vvvvv"})), Err(StoreError::TooLarge));
        assert_eq!(s.value(), &json!({"k": "vvvv"}));
    }

    #[test]
    fn json_pointer_reads() {
        let s = store();
        let j = OutputFormat::Json;
        assert_eq!(
            s.get("/latest/meta-data/instance-id", j).unwrap(),
            "\"i-1\""
        );
        assert_eq!(s.get("/age", j).unwrap(), "43");
        assert_eq!(s.get("/list/1", j).unwrap(), "\"y\"");
        assert_eq!(s.get("/latest/meta-data/tags/", j).unwrap(), r#"{"a":"b"}"#);
        assert!(s.get("", j).unwrap().starts_with('{'));
        assert_eq!(s.get("/nope", j), Err(StoreError::NotFound));
        assert_eq!(s.get("/list/7", j), Err(StoreError::NotFound));
    }

    #[test]
    fn imds_text_lists_keys_and_writes_strings_raw() {
        let s = store();
        let i = OutputFormat::Imds;
        assert_eq!(
            s.get("/latest/meta-data", i).unwrap(),
            "ami-id\ninstance-id\ntags/"
        );
        assert_eq!(
            s.get("/latest/meta-data/", i).unwrap(),
            s.get("/latest/meta-data", i).unwrap()
        );
        assert_eq!(s.get("/latest/meta-data/instance-id", i).unwrap(), "i-1");
        assert_eq!(s.get("/", i).unwrap(), "age\nflag\nlatest/\nlist");
        for leaf in ["/age", "/flag", "/list"] {
            assert_eq!(
                s.get(leaf, i),
                Err(StoreError::UnsupportedValueType),
                "{leaf}"
            );
        }
    }
}

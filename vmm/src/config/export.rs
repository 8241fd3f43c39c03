//! How [`super::VmConfig`] meets Firecracker's export shape: what `GET /vm/config` writes for
//! unset sections, and which values of sections xenia does not implement ask for nothing.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

use super::{BootSourceConfig, ConfigError, MachineConfig};

/// `boot-source` as Firecracker writes it before one is set: an empty kernel path.
pub(super) fn boot_source_or_empty<S: Serializer>(
    boot: &Option<BootSourceConfig>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match boot {
        Some(b) => b.serialize(s),
        None => BootSourceConfig {
            kernel_image_path: String::new(),
            initrd_path: None,
            boot_args: None,
        }
        .serialize(s),
    }
}

/// Reads `boot-source` back: the form [`boot_source_or_empty`] writes for "none set" (an
/// empty kernel path and nothing else) is no boot source, so an export of a VMM that had none
/// reads back as it was; a start then fails naming the missing kernel.
pub(super) fn boot_source_unless_empty<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<BootSourceConfig>, D::Error> {
    let boot = Option::<BootSourceConfig>::deserialize(d)?;
    Ok(boot.filter(|b| {
        !(b.kernel_image_path.is_empty() && b.initrd_path.is_none() && b.boot_args.is_none())
    }))
}

/// `machine-config` as in force: the defaults (what `GET /machine-config` shows) when unset.
pub(super) fn machine_config_or_default<S: Serializer>(
    machine: &Option<MachineConfig>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match machine {
        Some(m) => m.serialize(s),
        None => MachineConfig::default().serialize(s),
    }
}

/// A list section: `[]` when it holds nothing.
pub(super) fn list_or_empty<S: Serializer>(list: &Option<Value>, s: S) -> Result<S::Ok, S::Error> {
    match list {
        Some(v) => v.serialize(s),
        None => Value::Array(Vec::new()).serialize(s),
    }
}

/// Reads a field that has a default, taking `null` as that default (Firecracker writes
/// `null` for optional fields it has no value for).
pub(super) fn null_as_default<'de, D: Deserializer<'de>, T: Deserialize<'de> + Default>(
    d: D,
) -> Result<T, D::Error> {
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// Reads a list section, taking `null` as the empty list.
pub(super) fn null_as_empty<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Vec<T>, D::Error> {
    Ok(Option::<Vec<T>>::deserialize(d)?.unwrap_or_default())
}

/// Reads an optional section: `null` and an empty list (what Firecracker's export holds for
/// an unset section) become `None`.
pub(super) fn typed_unless_empty<'de, D: Deserializer<'de>, T: serde::de::DeserializeOwned>(
    d: D,
) -> Result<Option<T>, D::Error> {
    match unless_empty(d)? {
        None => Ok(None),
        Some(v) => serde_json::from_value(v)
            .map(Some)
            .map_err(serde::de::Error::custom),
    }
}

/// Reads a section xenia does not implement: `null` and an empty list ask for nothing and
/// become `None`; anything else is kept so that validation can refuse it by name.
pub(super) fn unless_empty<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Ok(match Option::<Value>::deserialize(d)? {
        None | Some(Value::Null) => None,
        Some(Value::Array(items)) if items.is_empty() => None,
        Some(v) => Some(v),
    })
}

/// Sections whose value is a list of objects.
const LIST_SECTIONS: &[&str] = &["drives", "network-interfaces", "pmem"];
/// Sections whose value is one object, and whether an empty list stands for "nothing" there
/// (sections xenia does not implement: Firecracker's clients send `[]` for them).
const OBJECT_SECTIONS: &[(&str, bool)] = &[
    ("boot-source", false),
    ("machine-config", false),
    ("logger", false),
    ("metrics", false),
    ("serial", false),
    ("balloon", true),
    ("vsock", true),
    ("entropy", true),
    ("mmds-config", true),
    ("cpu-config", true),
    ("memory-hotplug", true),
];

fn shape(v: &Value) -> &'static str {
    match v {
        Value::Object(_) => "an object",
        Value::Array(_) => "an array",
        Value::String(_) => "a string",
        Value::Number(_) => "a number",
        Value::Bool(_) => "a boolean",
        Value::Null => "null",
    }
}

/// Checks that the file is an object whose sections are objects (lists of objects for list
/// sections) or `null`. serde alone would fill a struct from an array in field order
/// (`"machine-config": [2, 256]`), which Firecracker refuses and so do we. Unknown section
/// names are left to serde, whose message names them.
pub(super) fn check_objects(config: &Value) -> Result<(), ConfigError> {
    let Value::Object(sections) = config else {
        return Err(ConfigError::Parse(format!(
            "the configuration must be a JSON object, not {}",
            shape(config)
        )));
    };
    for (name, value) in sections {
        let name = name.as_str();
        if LIST_SECTIONS.contains(&name) {
            match value {
                Value::Null => {}
                Value::Array(items) => {
                    if let Some(bad) = items.iter().find(|i| !i.is_object()) {
                        return Err(ConfigError::Parse(format!(
                            "`{name}`: each entry must be a JSON object, not {}",
                            shape(bad)
                        )));
                    }
                }
                other => {
                    return Err(ConfigError::Parse(format!(
                        "`{name}` must be a list of objects, not {}",
                        shape(other)
                    )))
                }
            }
        } else if let Some((_, empty_list_ok)) = OBJECT_SECTIONS.iter().find(|(n, _)| *n == name) {
            let fine = match value {
                Value::Null | Value::Object(_) => true,
                Value::Array(items) => *empty_list_ok && items.is_empty(),
                _ => false,
            };
            if !fine {
                return Err(ConfigError::Parse(format!(
                    "`{name}` must be a JSON object, not {}",
                    shape(value)
                )));
            }
        }
    }
    Ok(())
}

/// Finds where serde filled a struct from an array: a place where `input` (the JSON as sent)
/// holds an array but `parsed` (the value read from it, serialised again) holds an object.
/// serde's derived structs accept a sequence in field order, so `"bandwidth": [100, 0, 10]`
/// would quietly become a token bucket; Firecracker refuses that and so do we. Returns the
/// place as a dotted path (`rate_limiter.bandwidth`, `drives[0]`).
pub(crate) fn array_used_as_object(input: &Value, parsed: &Value) -> Option<String> {
    fn walk(input: &Value, parsed: &Value, path: &mut String) -> bool {
        match (input, parsed) {
            (Value::Array(_), Value::Object(_)) => true,
            (Value::Object(a), Value::Object(b)) => a.iter().any(|(key, value)| {
                let Some(other) = b.get(key) else {
                    return false;
                };
                let len = path.len();
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(key);
                if walk(value, other, path) {
                    return true;
                }
                path.truncate(len);
                false
            }),
            (Value::Array(a), Value::Array(b)) => a.iter().zip(b).enumerate().any(|(i, (x, y))| {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                if walk(x, y, path) {
                    return true;
                }
                path.truncate(len);
                false
            }),
            _ => false,
        }
    }
    let mut path = String::new();
    walk(input, parsed, &mut path).then_some(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn arrays_standing_in_for_objects_are_found_by_path() {
        let parsed = json!({"a": {"b": {"c": 1}}, "l": [{"x": 1}, {"x": 2}]});
        assert_eq!(array_used_as_object(&parsed, &parsed), None);
        let input = json!({"a": {"b": [1]}, "l": [{"x": 1}, {"x": 2}]});
        assert_eq!(
            array_used_as_object(&input, &parsed).as_deref(),
            Some("a.b")
        );
        let input = json!({"a": {"b": {"c": 1}}, "l": [{"x": 1}, [2]]});
        assert_eq!(
            array_used_as_object(&input, &parsed).as_deref(),
            Some("l[1]")
        );
        assert_eq!(
            array_used_as_object(&json!([1]), &json!({"x": 1})).as_deref(),
            Some("")
        );
        // Keys only one side has (skipped when serialising, or defaults) are not compared.
        let input = json!({"only_in_input": [1]});
        assert_eq!(array_used_as_object(&input, &json!({"other": {}})), None);
    }
}

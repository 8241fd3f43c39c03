//! `metrics`: where the JSON metrics lines are flushed.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{validate_path, ConfigError};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    pub metrics_path: String,
    /// Add the instance id as a top-level `id` field on every line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub emit_id: Option<bool>,
    /// Operator-defined pairs copied under `properties` on every line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub properties: Option<BTreeMap<String, String>>,
}

impl MetricsConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        validate_path("metrics.metrics_path", &self.metrics_path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_is_required_and_checked() {
        assert!(serde_json::from_str::<MetricsConfig>("{}").is_err());
        let m: MetricsConfig =
            serde_json::from_str(r#"{"metrics_path": "", "properties": {"az": "1"}}"#).unwrap();
        assert!(m.validate().is_err());
    }
}

//! Configuration types, one file per resource.
//!
//! The same types serve every front door: the `--config-file` JSON, the API bodies and
//! `GET /vm/config`, so a configuration read back from a running VM can be fed to a new one.
//! Field names and shapes follow Firecracker's public API. Each type validates itself with
//! `validate()` (pure checks, no file system access); [`VmConfig::validate`] adds the checks
//! that span sections (duplicate ids, a single root device, ...).

mod boot_source;
mod drive;
mod logger;
mod machine_config;
mod metrics;
mod net;
mod rate_limiter;
mod serial;
mod snapshot;

use serde::{Deserialize, Serialize};

pub use boot_source::BootSourceConfig;
pub use drive::{CacheType, DriveConfig, DriveUpdate, IoEngine};
pub use logger::{LogLevel, LoggerConfig};
pub use machine_config::{HugePages, MachineConfig, MachineConfigUpdate, MAX_VCPUS};
pub use metrics::MetricsConfig;
pub use net::{MacAddr, NetworkInterfaceConfig, NetworkInterfaceUpdate};
pub use rate_limiter::{bucket_is_active, limiter_is_active, RateLimiterConfig, TokenBucketConfig};
pub use serial::SerialConfig;
pub use snapshot::{
    LoadHugePages, MemBackendConfig, MemBackendType, NetworkOverride, SnapshotCreateConfig,
    SnapshotLoadConfig,
};

/// Most block devices one VM may have; each takes an MMIO window and an IRQ line.
pub const MAX_DRIVES: usize = 16;
/// Most network interfaces one VM may have.
pub const MAX_NETWORK_INTERFACES: usize = 8;

/// Errors found while reading or validating a configuration.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// The JSON is malformed or does not match the schema; serde's message names the field.
    #[error("invalid configuration: {0}")]
    Parse(String),
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
    #[error("the `{0}` section is not supported by this version of xenia")]
    Unsupported(&'static str),
}

impl ConfigError {
    pub(crate) fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        ConfigError::Invalid {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// Checks an identifier supplied by a user (drive id, interface id): it ends up in log lines,
/// metrics keys and the guest-visible serial, so keep it short and printable.
pub(crate) fn validate_id(field: &str, id: &str) -> Result<(), ConfigError> {
    if id.is_empty() || id.len() > 64 {
        return Err(ConfigError::invalid(
            field,
            "must be 1 to 64 characters long",
        ));
    }
    if !id
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return Err(ConfigError::invalid(
            field,
            format!("`{id}` may contain only ASCII letters, digits, `_` and `-`"),
        ));
    }
    Ok(())
}

/// Checks a host path supplied by a user: non-empty and free of NUL bytes.
pub(crate) fn validate_path(field: &str, path: &str) -> Result<(), ConfigError> {
    if path.is_empty() {
        return Err(ConfigError::invalid(field, "must not be empty"));
    }
    if path.contains('\0') {
        return Err(ConfigError::invalid(field, "must not contain a NUL byte"));
    }
    Ok(())
}

/// A whole VM configuration: the `--config-file` schema and the `GET /vm/config` answer.
///
/// Sections xenia does not implement yet are kept as raw JSON so that they are reported as
/// "not supported" (rather than "unknown field") and appear as `null` in `GET /vm/config`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmConfig {
    #[serde(rename = "boot-source")]
    pub boot_source: Option<BootSourceConfig>,
    #[serde(rename = "machine-config", default)]
    pub machine_config: Option<MachineConfig>,
    #[serde(default)]
    pub drives: Vec<DriveConfig>,
    #[serde(rename = "network-interfaces", default)]
    pub network_interfaces: Vec<NetworkInterfaceConfig>,
    #[serde(default)]
    pub logger: Option<LoggerConfig>,
    #[serde(default)]
    pub metrics: Option<MetricsConfig>,
    #[serde(default)]
    pub serial: Option<SerialConfig>,
    #[serde(default)]
    pub balloon: Option<serde_json::Value>,
    #[serde(default)]
    pub vsock: Option<serde_json::Value>,
    #[serde(default)]
    pub entropy: Option<serde_json::Value>,
    #[serde(rename = "mmds-config", default)]
    pub mmds_config: Option<serde_json::Value>,
    #[serde(rename = "cpu-config", default)]
    pub cpu_config: Option<serde_json::Value>,
    #[serde(default)]
    pub pmem: Option<serde_json::Value>,
    #[serde(rename = "memory-hotplug", default)]
    pub memory_hotplug: Option<serde_json::Value>,
}

impl VmConfig {
    /// Parses and validates a configuration file's text.
    pub fn from_json(text: &str) -> Result<Self, ConfigError> {
        let config: VmConfig =
            serde_json::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// Validates every section and the rules that span sections.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let unsupported = [
            ("balloon", self.balloon.is_some()),
            ("vsock", self.vsock.is_some()),
            ("entropy", self.entropy.is_some()),
            ("mmds-config", self.mmds_config.is_some()),
            ("cpu-config", self.cpu_config.is_some()),
            ("pmem", self.pmem.is_some()),
            ("memory-hotplug", self.memory_hotplug.is_some()),
        ];
        if let Some((name, _)) = unsupported.iter().find(|(_, present)| *present) {
            return Err(ConfigError::Unsupported(name));
        }
        if let Some(b) = &self.boot_source {
            b.validate()?;
        }
        if let Some(m) = &self.machine_config {
            m.validate()?;
        }
        if let Some(l) = &self.logger {
            l.validate()?;
        }
        if let Some(m) = &self.metrics {
            m.validate()?;
        }
        if let Some(s) = &self.serial {
            s.validate()?;
        }
        drive::validate_drive_set(&self.drives)?;
        net::validate_interface_set(&self.network_interfaces)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_minimal_config_file() {
        let c = VmConfig::from_json(
            r#"{"boot-source": {"kernel_image_path": "/k", "boot_args": "console=ttyS0"},
                "machine-config": {"vcpu_count": 2, "mem_size_mib": 256}}"#,
        )
        .unwrap();
        assert_eq!(c.boot_source.unwrap().kernel_image_path, "/k");
        let m = c.machine_config.unwrap();
        assert_eq!((m.vcpu_count, m.mem_size_mib, m.smt), (2, 256, false));
    }

    #[test]
    fn unknown_fields_and_malformed_json_are_named() {
        let e = VmConfig::from_json(r#"{"boot-source": {"kernel_image_path": "/k", "x": 1}}"#)
            .unwrap_err();
        assert!(e.to_string().contains("unknown field `x`"), "{e}");
        let e = VmConfig::from_json(r#"{"bogus-section": {}}"#).unwrap_err();
        assert!(e.to_string().contains("bogus-section"), "{e}");
        let e = VmConfig::from_json("{ not json").unwrap_err();
        assert!(matches!(e, ConfigError::Parse(_)));
    }

    #[test]
    fn unimplemented_sections_are_refused_by_name() {
        let e =
            VmConfig::from_json(r#"{"vsock": {"guest_cid": 3, "uds_path": "/v"}}"#).unwrap_err();
        assert_eq!(e, ConfigError::Unsupported("vsock"));
    }

    #[test]
    fn serializes_every_section_with_null_where_unset() {
        let v = serde_json::to_value(VmConfig::default()).unwrap();
        for key in [
            "boot-source",
            "machine-config",
            "logger",
            "metrics",
            "vsock",
            "balloon",
        ] {
            assert!(
                v.get(key).is_some_and(|x| x.is_null()),
                "{key} missing: {v}"
            );
        }
        assert_eq!(v["drives"], serde_json::json!([]));
    }

    #[test]
    fn round_trips_through_json() {
        let text = r#"{"boot-source": {"kernel_image_path": "/k", "initrd_path": "/i"},
            "machine-config": {"vcpu_count": 4, "mem_size_mib": 128, "smt": true},
            "drives": [{"drive_id": "root", "path_on_host": "/r", "is_root_device": true,
                        "is_read_only": false}],
            "network-interfaces": [{"iface_id": "eth0", "host_dev_name": "tap0",
                                    "guest_mac": "06:00:00:00:00:01"}]}"#;
        let c = VmConfig::from_json(text).unwrap();
        let again = VmConfig::from_json(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(c, again);
    }
}

//! Configuration types, one file per resource.
//!
//! The same types serve every front door: the `--config-file` JSON, the API bodies and
//! `GET /vm/config`, so a configuration read back from a running VM can be fed to a new one.
//! Field names and shapes follow Firecracker's public API. Each type validates itself with
//! `validate()` (pure checks, no file system access); [`VmConfig::validate`] adds the checks
//! that span sections (duplicate ids, a single root device, ...).

mod balloon;
mod boot_source;
mod drive;
mod entropy;
mod export;
mod logger;
mod machine_config;
mod metrics;
mod mmds;
mod net;
mod rate_limiter;
mod serial;
mod snapshot;
mod vsock;

use serde::{Deserialize, Serialize};

pub use crate::arch::x86_64::cpu_template::CustomCpuTemplate;
pub use balloon::{
    check_amount as check_balloon_amount, BalloonDeviceConfig, BalloonStatsUpdate, BalloonUpdate,
};

pub use self::mmds::{MmdsConfig, MmdsVersion};
pub use boot_source::BootSourceConfig;
pub use drive::{CacheType, DriveConfig, DriveUpdate, ImageFormat, IoEngine};
pub use entropy::EntropyDeviceConfig;
pub(crate) use export::array_used_as_object;
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
pub use vsock::{VsockDeviceConfig, VsockOverride, MAX_UDS_PATH_LEN};

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
/// It is written in Firecracker's export shape, so that each VMM loads the other's export:
/// every section is present, `boot-source` and `machine-config` show the defaults when
/// unset (an empty kernel path; 1 vCPU, 128 MiB), list sections are `[]`, the others `null`.
/// The xenia-only `serial` section is written only when set, out of the way of parsers that
/// refuse unknown sections.
///
/// Sections xenia does not implement yet are kept as raw JSON so that they are reported as
/// "not supported" (rather than "unknown field"); `null` or `[]` asks for nothing and is
/// accepted, as Firecracker's own export contains them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmConfig {
    #[serde(
        rename = "boot-source",
        default,
        serialize_with = "export::boot_source_or_empty",
        deserialize_with = "export::boot_source_unless_empty"
    )]
    pub boot_source: Option<BootSourceConfig>,
    #[serde(
        rename = "machine-config",
        default,
        serialize_with = "export::machine_config_or_default"
    )]
    pub machine_config: Option<MachineConfig>,
    #[serde(default, deserialize_with = "export::null_as_empty")]
    pub drives: Vec<DriveConfig>,
    #[serde(
        rename = "network-interfaces",
        default,
        deserialize_with = "export::null_as_empty"
    )]
    pub network_interfaces: Vec<NetworkInterfaceConfig>,
    #[serde(default)]
    pub logger: Option<LoggerConfig>,
    #[serde(default)]
    pub metrics: Option<MetricsConfig>,
    /// xenia only (Firecracker has `PUT /serial` but no such section in its export).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<SerialConfig>,
    #[serde(default, deserialize_with = "export::typed_unless_empty")]
    pub balloon: Option<BalloonDeviceConfig>,
    #[serde(default, deserialize_with = "export::typed_unless_empty")]
    pub vsock: Option<VsockDeviceConfig>,
    #[serde(default, deserialize_with = "export::typed_unless_empty")]
    pub entropy: Option<EntropyDeviceConfig>,
    #[serde(
        rename = "mmds-config",
        default,
        deserialize_with = "export::typed_unless_empty"
    )]
    pub mmds_config: Option<MmdsConfig>,
    /// A custom CPU template (Firecracker's `PUT /cpu-config` body).
    #[serde(
        rename = "cpu-config",
        default,
        deserialize_with = "export::typed_unless_empty"
    )]
    pub cpu_config: Option<CustomCpuTemplate>,
    /// A list in Firecracker's schema: written as `[]`.
    #[serde(
        default,
        deserialize_with = "export::unless_empty",
        serialize_with = "export::list_or_empty"
    )]
    pub pmem: Option<serde_json::Value>,
    #[serde(
        rename = "memory-hotplug",
        default,
        deserialize_with = "export::unless_empty"
    )]
    pub memory_hotplug: Option<serde_json::Value>,
}

impl VmConfig {
    /// Parses and validates a configuration file's text.
    pub fn from_json(text: &str) -> Result<Self, ConfigError> {
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))?;
        export::check_objects(&value)?;
        let config: VmConfig =
            serde_json::from_value(value.clone()).map_err(|e| ConfigError::Parse(e.to_string()))?;
        let written =
            serde_json::to_value(&config).map_err(|e| ConfigError::Parse(e.to_string()))?;
        if let Some(path) = export::array_used_as_object(&value, &written) {
            return Err(ConfigError::Parse(format!(
                "`{path}` must be a JSON object, not an array"
            )));
        }
        config.validate()?;
        Ok(config)
    }

    /// Validates every section and the rules that span sections.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let unsupported = [
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
        if let Some(t) = &self.cpu_config {
            t.validate()
                .map_err(|e| ConfigError::invalid("cpu-config", e.to_string()))?;
            let static_template = self
                .machine_config
                .as_ref()
                .and_then(|m| m.cpu_template.as_deref())
                .filter(|t| *t != "None");
            if static_template.is_some() {
                return Err(ConfigError::invalid(
                    "cpu-config",
                    "machine-config.cpu_template and cpu-config cannot both be set",
                ));
            }
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
        if let Some(e) = &self.entropy {
            e.validate()?;
        }
        if let Some(v) = &self.vsock {
            v.validate()?;
        }
        if let Some(b) = &self.balloon {
            b.validate()?;
            b.validate_with(&self.machine_config.clone().unwrap_or_default())?;
        }
        drive::validate_drive_set(&self.drives)?;
        net::validate_interface_set(&self.network_interfaces)?;
        if let Some(m) = &self.mmds_config {
            m.validate()?;
            m.validate_interfaces(self.network_interfaces.iter().map(|n| n.iface_id.as_str()))?;
        }
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
        let e = VmConfig::from_json(r#"{"pmem": [{"id": "p0"}]}"#).unwrap_err();
        assert_eq!(e, ConfigError::Unsupported("pmem"));
    }

    #[test]
    fn the_vsock_section_is_read_validated_and_exported_in_firecrackers_shape() {
        let c = VmConfig::from_json(
            r#"{"vsock": {"vsock_id": "vsock0", "guest_cid": 3, "uds_path": "/v"}}"#,
        )
        .unwrap();
        let v = c.vsock.as_ref().unwrap();
        assert_eq!((v.guest_cid, v.uds_path.as_str()), (3, "/v"));
        let out = serde_json::to_value(&c).unwrap();
        assert_eq!(
            out["vsock"],
            serde_json::json!({"vsock_id": "vsock0", "guest_cid": 3, "uds_path": "/v"})
        );
        let e = VmConfig::from_json(r#"{"vsock": {"guest_cid": 1, "uds_path": "/v"}}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("vsock.guest_cid"), "{e}");
    }

    /// The sections of Firecracker's `FullVmConfiguration` (its OpenAPI document).
    const FIRECRACKER_SECTIONS: &[&str] = &[
        "balloon",
        "drives",
        "boot-source",
        "cpu-config",
        "logger",
        "machine-config",
        "metrics",
        "memory-hotplug",
        "mmds-config",
        "network-interfaces",
        "pmem",
        "vsock",
        "entropy",
    ];

    #[test]
    fn a_fresh_export_has_firecrackers_shape() {
        let v = serde_json::to_value(VmConfig::default()).unwrap();
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        let mut want = FIRECRACKER_SECTIONS.to_vec();
        want.sort_unstable();
        let mut got = keys.clone();
        got.sort_unstable();
        assert_eq!(got, want, "exactly Firecracker's sections: {v}");
        assert_eq!(
            v["boot-source"],
            serde_json::json!({"kernel_image_path": "", "initrd_path": null, "boot_args": null})
        );
        assert_eq!(
            v["machine-config"],
            serde_json::json!({"vcpu_count": 1, "mem_size_mib": 128, "smt": false,
                               "track_dirty_pages": false, "huge_pages": "None"})
        );
        for list in ["drives", "network-interfaces", "pmem"] {
            assert_eq!(v[list], serde_json::json!([]), "{list}");
        }
        for object in [
            "balloon",
            "cpu-config",
            "logger",
            "metrics",
            "memory-hotplug",
            "mmds-config",
            "vsock",
            "entropy",
        ] {
            assert!(v[object].is_null(), "{object}: {v}");
        }
    }

    #[test]
    fn the_serial_section_is_written_only_when_set() {
        let c = VmConfig {
            serial: Some(SerialConfig::default()),
            ..Default::default()
        };
        let v = serde_json::to_value(&c).unwrap();
        assert!(v["serial"].is_object(), "{v}");
    }

    #[test]
    fn firecrackers_export_is_accepted() {
        let text = include_str!("../../../tests/integration/fixtures/firecracker-vm-config.json")
            .replace("@KERNEL@", "/k")
            .replace("@BOOT_ARGS@", "console=ttyS0")
            .replace("@DISK@", "/d.img");
        let c = VmConfig::from_json(&text).unwrap();
        assert_eq!(c.boot_source.as_ref().unwrap().kernel_image_path, "/k");
        assert_eq!(c.machine_config.as_ref().unwrap().vcpu_count, 2);
        assert_eq!(c.drives.len(), 1);
        assert!(c.drives[0].read_only());
        assert!(c.pmem.is_none() && c.vsock.is_none());
        // Our export of it parses again to the same thing.
        let again = VmConfig::from_json(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(c, again);
    }

    #[test]
    fn our_fresh_export_parses_back_to_the_same_export() {
        // A fresh VMM's export has an empty kernel path, which means "no boot source": it
        // reads back without one (a start then fails naming the missing kernel) and exports
        // identically, so GET /vm/config can always be fed back with --config-file.
        let text = serde_json::to_string(&VmConfig::default()).unwrap();
        let c = VmConfig::from_json(&text).unwrap();
        assert_eq!(c.boot_source, None);
        assert_eq!(serde_json::to_string(&c).unwrap(), text);
        // A kernel path that is only half empty is still refused.
        let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
        v["boot-source"]["boot_args"] = "console=ttyS0".into();
        let e = VmConfig::from_json(&v.to_string()).unwrap_err().to_string();
        assert!(e.contains("kernel_image_path"), "{e}");
        v["boot-source"]["kernel_image_path"] = "/k".into();
        let c = VmConfig::from_json(&v.to_string()).unwrap();
        assert_eq!(c.machine_config, Some(MachineConfig::default()));
    }

    #[test]
    fn unimplemented_sections_asking_for_nothing_are_accepted() {
        for empty in ["null", "[]"] {
            for section in [
                "balloon",
                "vsock",
                "entropy",
                "mmds-config",
                "cpu-config",
                "pmem",
                "memory-hotplug",
            ] {
                let text = format!(r#"{{"{section}": {empty}}}"#);
                let c = VmConfig::from_json(&text).unwrap_or_else(|e| panic!("{text}: {e}"));
                assert_eq!(c, VmConfig::default(), "{text}");
            }
        }
        assert_eq!(
            VmConfig::from_json(r#"{"pmem": [{"id": "p", "path_on_host": "/p"}]}"#).unwrap_err(),
            ConfigError::Unsupported("pmem")
        );
        assert!(matches!(
            VmConfig::from_json(r#"{"vsock": {"guest_cid": 3}}"#).unwrap_err(),
            ConfigError::Parse(_)
        ));
        let c = VmConfig::from_json(r#"{"balloon": {"amount_mib": 0, "deflate_on_oom": false}}"#)
            .unwrap();
        assert_eq!(c.balloon.map(|b| b.amount_mib), Some(0));
        let e =
            VmConfig::from_json(r#"{"balloon": {"amount_mib": 4096, "deflate_on_oom": false}}"#)
                .unwrap_err()
                .to_string();
        assert!(e.contains("balloon.amount_mib"), "{e}");
        let c = VmConfig::from_json(r#"{"drives": null, "network-interfaces": null}"#).unwrap();
        assert!(c.drives.is_empty() && c.network_interfaces.is_empty());
    }

    #[test]
    fn sections_must_be_objects_not_arrays() {
        for (text, needle) in [
            ("[]", "must be a JSON object, not an array"),
            (
                r#"{"machine-config": [2, 256]}"#,
                "`machine-config` must be a JSON object",
            ),
            (
                r#"{"boot-source": ["/k"]}"#,
                "`boot-source` must be a JSON object",
            ),
            (r#"{"logger": []}"#, "`logger` must be a JSON object"),
            (r#"{"vsock": [3, "/v"]}"#, "`vsock` must be a JSON object"),
            (r#"{"drives": [["d", "/d", true]]}"#, "`drives`: each entry"),
            (
                r#"{"drives": {"drive_id": "d"}}"#,
                "`drives` must be a list",
            ),
            (
                r#"{"drives": [{"drive_id": "d", "path_on_host": "/d", "is_root_device": false,
                    "rate_limiter": {"bandwidth": [100, 0, 10]}}]}"#,
                "`drives[0].rate_limiter.bandwidth` must be a JSON object",
            ),
        ] {
            let e = VmConfig::from_json(text).unwrap_err().to_string();
            assert!(e.contains(needle), "{text}: {e}");
        }
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

//! `PUT /snapshot/create` and `PUT /snapshot/load` bodies (Firecracker's shapes).

use serde::{Deserialize, Serialize};

use super::{validate_id, validate_path, ConfigError};
use crate::persist::SnapshotType;

/// `PUT /snapshot/create`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotCreateConfig {
    pub snapshot_path: String,
    pub mem_file_path: String,
    #[serde(default)]
    pub snapshot_type: SnapshotType,
}

impl SnapshotCreateConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        validate_path("snapshot_path", &self.snapshot_path)?;
        validate_path("mem_file_path", &self.mem_file_path)?;
        if self.snapshot_path == self.mem_file_path {
            return Err(ConfigError::invalid(
                "mem_file_path",
                "must differ from snapshot_path",
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MemBackendType {
    File,
    Uffd,
}

/// `mem_backend` of a load.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemBackendConfig {
    pub backend_type: MemBackendType,
    pub backend_path: String,
}

/// One entry of `network_overrides`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkOverride {
    pub iface_id: String,
    pub host_dev_name: String,
}

/// `huge_pages` of a load (Firecracker 1.17): only the snapshot's own setting is supported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LoadHugePages {
    Snapshot,
    None,
    Transparent,
    #[serde(rename = "2M")]
    Hugetlbfs2M,
}

/// `PUT /snapshot/load`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotLoadConfig {
    pub snapshot_path: String,
    /// Deprecated form of `mem_backend {backend_type: File}`.
    #[serde(default)]
    pub mem_file_path: Option<String>,
    #[serde(default)]
    pub mem_backend: Option<MemBackendConfig>,
    #[serde(default)]
    pub track_dirty_pages: bool,
    /// Deprecated alias of `track_dirty_pages`.
    #[serde(default)]
    pub enable_diff_snapshots: bool,
    #[serde(default)]
    pub resume_vm: bool,
    #[serde(default)]
    pub network_overrides: Vec<NetworkOverride>,
    /// The restored vsock device listens at this `uds_path` instead of the saved one.
    #[serde(default)]
    pub vsock_override: Option<super::VsockOverride>,
    #[serde(default)]
    pub clock_realtime: bool,
    #[serde(default)]
    pub huge_pages: Option<LoadHugePages>,
}

impl SnapshotLoadConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        validate_path("snapshot_path", &self.snapshot_path)?;
        match (&self.mem_file_path, &self.mem_backend) {
            (Some(p), None) => validate_path("mem_file_path", p)?,
            (None, Some(b)) => validate_path("mem_backend.backend_path", &b.backend_path)?,
            _ => {
                return Err(ConfigError::invalid(
                    "mem_backend",
                    "exactly one of mem_backend and mem_file_path must be given",
                ))
            }
        }
        for o in &self.network_overrides {
            validate_id("network_overrides.iface_id", &o.iface_id)?;
            if o.host_dev_name.is_empty() || o.host_dev_name.len() > 15 {
                return Err(ConfigError::invalid(
                    "network_overrides.host_dev_name",
                    "must be 1 to 15 characters (a tap name)",
                ));
            }
        }
        let mut ids: Vec<&str> = self
            .network_overrides
            .iter()
            .map(|o| o.iface_id.as_str())
            .collect();
        ids.sort_unstable();
        if ids.windows(2).any(|w| w[0] == w[1]) {
            return Err(ConfigError::invalid(
                "network_overrides",
                "an interface is overridden twice",
            ));
        }
        if let Some(o) = &self.vsock_override {
            validate_path("vsock_override.uds_path", &o.uds_path)?;
            if o.uds_path.len() > super::MAX_UDS_PATH_LEN {
                return Err(ConfigError::invalid(
                    "vsock_override.uds_path",
                    format!(
                        "is longer than {} bytes (a Unix socket address)",
                        super::MAX_UDS_PATH_LEN
                    ),
                ));
            }
        }
        if let Some(h) = self.huge_pages {
            if h != LoadHugePages::Snapshot {
                return Err(ConfigError::invalid(
                    "huge_pages",
                    "only \"Snapshot\" (the snapshot's own setting) is supported",
                ));
            }
        }
        Ok(())
    }

    /// The request used a deprecated field (`mem_file_path`, `enable_diff_snapshots`).
    pub fn uses_deprecated_fields(&self) -> bool {
        self.mem_file_path.is_some() || self.enable_diff_snapshots
    }

    /// Dirty page tracking asked for under either name.
    pub fn dirty_tracking(&self) -> bool {
        self.track_dirty_pages || self.enable_diff_snapshots
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(json: &str) -> Result<SnapshotLoadConfig, String> {
        let c: SnapshotLoadConfig = serde_json::from_str(json).map_err(|e| e.to_string())?;
        c.validate().map_err(|e| e.to_string())?;
        Ok(c)
    }

    #[test]
    fn exactly_one_memory_source() {
        assert!(load(r#"{"snapshot_path": "s"}"#)
            .unwrap_err()
            .contains("exactly one"));
        assert!(load(
            r#"{"snapshot_path": "s", "mem_file_path": "m",
                "mem_backend": {"backend_type": "File", "backend_path": "m"}}"#
        )
        .unwrap_err()
        .contains("exactly one"));
        let c = load(r#"{"snapshot_path": "s", "mem_file_path": "m"}"#).unwrap();
        assert!(c.uses_deprecated_fields());
        let c = load(
            r#"{"snapshot_path": "s", "mem_backend": {"backend_type": "Uffd", "backend_path": "u"},
                "track_dirty_pages": true, "resume_vm": true, "clock_realtime": true,
                "network_overrides": [{"iface_id": "eth0", "host_dev_name": "tap9"}]}"#,
        )
        .unwrap();
        assert!(!c.uses_deprecated_fields() && c.dirty_tracking());
    }

    #[test]
    fn the_removed_version_field_and_unknown_types_are_refused() {
        let e = serde_json::from_str::<SnapshotCreateConfig>(
            r#"{"snapshot_path": "s", "mem_file_path": "m", "version": "1.0.0"}"#,
        )
        .unwrap_err();
        assert!(e.to_string().contains("unknown field `version`"), "{e}");
        assert!(serde_json::from_str::<SnapshotCreateConfig>(
            r#"{"snapshot_path": "s", "mem_file_path": "m", "snapshot_type": "Half"}"#
        )
        .is_err());
        let c: SnapshotCreateConfig =
            serde_json::from_str(r#"{"snapshot_path": "s", "mem_file_path": "m"}"#).unwrap();
        assert_eq!(c.snapshot_type, SnapshotType::Full);
        assert!(c.validate().is_ok());
    }

    #[test]
    fn deprecated_diff_alias_and_bad_overrides() {
        let c =
            load(r#"{"snapshot_path": "s", "mem_file_path": "m", "enable_diff_snapshots": true}"#)
                .unwrap();
        assert!(c.dirty_tracking() && c.uses_deprecated_fields());
        assert!(load(
            r#"{"snapshot_path": "s", "mem_file_path": "m",
                "network_overrides": [{"iface_id": "a", "host_dev_name": "t1"},
                                      {"iface_id": "a", "host_dev_name": "t2"}]}"#
        )
        .unwrap_err()
        .contains("twice"));
        let c = load(
            r#"{"snapshot_path": "s", "mem_file_path": "m", "vsock_override": {"uds_path": "x"}}"#,
        )
        .unwrap();
        assert_eq!(c.vsock_override.unwrap().uds_path, "x");
        for bad in [
            r#"{"uds_path": ""}"#.to_owned(),
            r#"{"uds_path": "x", "extra": 1}"#.to_owned(),
            format!(r#"{{"uds_path": "{}"}}"#, "x".repeat(200)),
        ] {
            let text = format!(
                r#"{{"snapshot_path": "s", "mem_file_path": "m", "vsock_override": {bad}}}"#
            );
            assert!(load(&text).is_err(), "{text}");
        }
    }
}

//! `machine-config`: vCPUs, memory and how memory is backed.

use serde::{Deserialize, Serialize};

use super::ConfigError;

/// Most vCPUs a VM may have (the MP table and APIC ID layout are sized for it).
pub const MAX_VCPUS: u8 = 32;
/// Largest guest memory accepted, in MiB (1 TiB): keeps address arithmetic far from overflow.
pub const MAX_MEM_SIZE_MIB: usize = 1 << 20;

/// How guest memory is backed on the host.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum HugePages {
    #[default]
    None,
    /// Transparent huge pages through `madvise(MADV_HUGEPAGE)`.
    Transparent,
    /// Explicit 2 MiB hugetlbfs pages.
    #[serde(rename = "2M")]
    Hugetlbfs2M,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineConfig {
    pub vcpu_count: u8,
    pub mem_size_mib: usize,
    #[serde(default)]
    pub smt: bool,
    #[serde(default)]
    pub track_dirty_pages: bool,
    #[serde(default)]
    pub huge_pages: HugePages,
    /// Deprecated in Firecracker; only the neutral template is accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_template: Option<String>,
}

impl Default for MachineConfig {
    fn default() -> Self {
        MachineConfig {
            vcpu_count: 1,
            mem_size_mib: 128,
            smt: false,
            track_dirty_pages: false,
            huge_pages: HugePages::None,
            cpu_template: None,
        }
    }
}

impl MachineConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.vcpu_count == 0 || self.vcpu_count > MAX_VCPUS {
            return Err(ConfigError::invalid(
                "machine-config.vcpu_count",
                format!(
                    "{} is out of range: must be 1 to {MAX_VCPUS}",
                    self.vcpu_count
                ),
            ));
        }
        if self.smt && self.vcpu_count > 1 && self.vcpu_count % 2 == 1 {
            return Err(ConfigError::invalid(
                "machine-config.vcpu_count",
                format!(
                    "{} is odd: with smt it must be 1 or an even number",
                    self.vcpu_count
                ),
            ));
        }
        if self.mem_size_mib == 0 || self.mem_size_mib > MAX_MEM_SIZE_MIB {
            return Err(ConfigError::invalid(
                "machine-config.mem_size_mib",
                format!(
                    "{} is out of range: must be 1 to {MAX_MEM_SIZE_MIB}",
                    self.mem_size_mib
                ),
            ));
        }
        if self.huge_pages == HugePages::Hugetlbfs2M && !self.mem_size_mib.is_multiple_of(2) {
            return Err(ConfigError::invalid(
                "machine-config.mem_size_mib",
                format!(
                    "{} is odd: with huge_pages \"2M\" it must be a multiple of 2",
                    self.mem_size_mib
                ),
            ));
        }
        if let Some(t) = &self.cpu_template {
            if !crate::arch::x86_64::cpu_template::presets::is_known(t) {
                return Err(ConfigError::invalid(
                    "machine-config.cpu_template",
                    format!(
                        "`{t}` is not a static CPU template: use C3, T2, T2S, T2CL, T2A or None \
                         (V1N1 is for aarch64)"
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Memory size in bytes.
    pub fn mem_size_bytes(&self) -> u64 {
        (self.mem_size_mib as u64) << 20
    }
}

/// `PATCH /machine-config`: every field optional, applied over the current configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineConfigUpdate {
    pub vcpu_count: Option<u8>,
    pub mem_size_mib: Option<usize>,
    pub smt: Option<bool>,
    pub track_dirty_pages: Option<bool>,
    pub huge_pages: Option<HugePages>,
    pub cpu_template: Option<String>,
}

impl MachineConfigUpdate {
    /// Returns `base` with this update applied, validated as a whole.
    pub fn apply(&self, base: &MachineConfig) -> Result<MachineConfig, ConfigError> {
        let merged = MachineConfig {
            vcpu_count: self.vcpu_count.unwrap_or(base.vcpu_count),
            mem_size_mib: self.mem_size_mib.unwrap_or(base.mem_size_mib),
            smt: self.smt.unwrap_or(base.smt),
            track_dirty_pages: self.track_dirty_pages.unwrap_or(base.track_dirty_pages),
            huge_pages: self.huge_pages.unwrap_or(base.huge_pages),
            cpu_template: self
                .cpu_template
                .clone()
                .or_else(|| base.cpu_template.clone()),
        };
        merged.validate()?;
        Ok(merged)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mc(vcpus: u8, mib: usize) -> MachineConfig {
        MachineConfig {
            vcpu_count: vcpus,
            mem_size_mib: mib,
            ..Default::default()
        }
    }

    #[test]
    fn vcpu_and_memory_ranges() {
        assert!(mc(1, 128).validate().is_ok());
        assert!(mc(32, 3072).validate().is_ok());
        let e = mc(0, 128).validate().unwrap_err().to_string();
        assert!(
            e.contains("vcpu_count") && e.contains("out of range"),
            "{e}"
        );
        assert!(mc(33, 128).validate().is_err());
        assert!(mc(1, 0)
            .validate()
            .unwrap_err()
            .to_string()
            .contains("mem_size_mib"));
        assert!(mc(1, MAX_MEM_SIZE_MIB + 1).validate().is_err());
    }

    #[test]
    fn smt_needs_an_even_count() {
        let mut m = mc(3, 128);
        m.smt = true;
        assert!(m.validate().is_err());
        m.vcpu_count = 4;
        assert!(m.validate().is_ok());
    }

    #[test]
    fn two_mib_pages_need_an_even_size() {
        let mut m = mc(1, 129);
        m.huge_pages = HugePages::Hugetlbfs2M;
        assert!(m
            .validate()
            .unwrap_err()
            .to_string()
            .contains("multiple of 2"));
        m.mem_size_mib = 128;
        assert!(m.validate().is_ok());
    }

    #[test]
    fn huge_pages_use_firecrackers_names() {
        let m: MachineConfig =
            serde_json::from_str(r#"{"vcpu_count":1,"mem_size_mib":8,"huge_pages":"2M"}"#).unwrap();
        assert_eq!(m.huge_pages, HugePages::Hugetlbfs2M);
        let v = serde_json::to_value(mc(1, 8)).unwrap();
        assert_eq!(v["huge_pages"], "None");
    }

    #[test]
    fn patch_applies_over_the_base_and_revalidates() {
        let base = mc(2, 256);
        let up = MachineConfigUpdate {
            mem_size_mib: Some(512),
            ..Default::default()
        };
        assert_eq!(up.apply(&base).unwrap(), mc(2, 512));
        let bad = MachineConfigUpdate {
            vcpu_count: Some(0),
            ..Default::default()
        };
        assert!(bad.apply(&base).is_err());
    }

    #[test]
    fn wrong_types_are_reported_by_serde() {
        let e = serde_json::from_str::<MachineConfig>(r#"{"vcpu_count":"two","mem_size_mib":8}"#)
            .unwrap_err();
        assert!(e.to_string().contains("invalid type"), "{e}");
    }
}

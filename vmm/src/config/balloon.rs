//! `balloon`: the memory balloon (`PUT /balloon` before boot, `PATCH /balloon` and
//! `PATCH /balloon/statistics` any time), Firecracker's field names.

use serde::{Deserialize, Serialize};

use super::{ConfigError, HugePages, MachineConfig};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BalloonDeviceConfig {
    /// Target balloon size in MiB.
    pub amount_mib: u32,
    /// Offer `VIRTIO_BALLOON_F_DEFLATE_ON_OOM`: the guest may deflate under memory pressure.
    pub deflate_on_oom: bool,
    /// Seconds between statistics refreshes; 0 (the default) turns statistics off.
    #[serde(default)]
    pub stats_polling_interval_s: u16,
    /// Free page hinting is not implemented: `true` is refused.
    #[serde(default)]
    pub free_page_hinting: bool,
    /// Offer `VIRTIO_BALLOON_F_PAGE_REPORTING`: ranges the guest reports free are released.
    #[serde(default)]
    pub free_page_reporting: bool,
}

impl BalloonDeviceConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.free_page_hinting {
            return Err(ConfigError::invalid(
                "balloon.free_page_hinting",
                "free page hinting is not supported by this version of xenia (free_page_reporting is)",
            ));
        }
        Ok(())
    }

    /// Checks that span sections: the balloon cannot be larger than guest memory, and 4 KiB
    /// pages cannot be released from 2 MiB hugetlbfs pages.
    pub fn validate_with(&self, machine: &MachineConfig) -> Result<(), ConfigError> {
        check_amount(self.amount_mib, machine)?;
        if machine.huge_pages == HugePages::Hugetlbfs2M {
            return Err(ConfigError::invalid(
                "balloon",
                "a balloon cannot give back 4 KiB pages of guest memory backed by 2M hugetlbfs pages (machine-config.huge_pages)",
            ));
        }
        Ok(())
    }
}

/// `amount_mib` must fit in guest memory.
pub fn check_amount(amount_mib: u32, machine: &MachineConfig) -> Result<(), ConfigError> {
    if u64::from(amount_mib) > machine.mem_size_mib as u64 {
        return Err(ConfigError::invalid(
            "balloon.amount_mib",
            format!(
                "{amount_mib} MiB is more than the guest's {} MiB of memory",
                machine.mem_size_mib
            ),
        ));
    }
    Ok(())
}

/// `PATCH /balloon`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BalloonUpdate {
    pub amount_mib: u32,
}

/// `PATCH /balloon/statistics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BalloonStatsUpdate {
    pub stats_polling_interval_s: u16,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn firecrackers_body_parses_and_hinting_or_oversize_are_refused() {
        let b: BalloonDeviceConfig = serde_json::from_str(
            r#"{"amount_mib": 64, "deflate_on_oom": true, "stats_polling_interval_s": 1}"#,
        )
        .unwrap();
        assert!(b.validate().is_ok());
        assert!(!b.free_page_reporting);
        let machine = MachineConfig::default();
        assert!(b.validate_with(&machine).is_ok());
        let big = BalloonDeviceConfig {
            amount_mib: 129,
            ..b.clone()
        };
        let e = big.validate_with(&machine).unwrap_err().to_string();
        assert!(
            e.contains("balloon.amount_mib") && e.contains("128 MiB"),
            "{e}"
        );
        let hint = BalloonDeviceConfig {
            free_page_hinting: true,
            ..b.clone()
        };
        assert!(hint.validate().unwrap_err().to_string().contains("hinting"));
        let huge = MachineConfig {
            huge_pages: HugePages::Hugetlbfs2M,
            ..MachineConfig::default()
        };
        assert!(b.validate_with(&huge).is_err());
        // deflate_on_oom is required, as in Firecracker's schema.
        assert!(serde_json::from_str::<BalloonDeviceConfig>(r#"{"amount_mib": 1}"#).is_err());
        assert!(serde_json::from_str::<BalloonUpdate>(r#"{"amount_mib": 1, "x": 2}"#).is_err());
    }
}

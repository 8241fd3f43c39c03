//! `boot-source`: the kernel, its command line and an optional initrd.

use serde::{Deserialize, Serialize};

use super::{validate_path, ConfigError};

/// Longest kernel command line accepted (the x86 boot protocol allows 2048 bytes with the NUL;
/// xenia appends its own device entries, so leave room for them).
pub const MAX_BOOT_ARGS_LEN: usize = 1536;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootSourceConfig {
    pub kernel_image_path: String,
    /// Written as `null` when unset, as in Firecracker's export.
    #[serde(default)]
    pub initrd_path: Option<String>,
    #[serde(default)]
    pub boot_args: Option<String>,
}

impl BootSourceConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        validate_path("boot-source.kernel_image_path", &self.kernel_image_path)?;
        if let Some(p) = &self.initrd_path {
            validate_path("boot-source.initrd_path", p)?;
        }
        if let Some(args) = &self.boot_args {
            if args.len() > MAX_BOOT_ARGS_LEN {
                return Err(ConfigError::invalid(
                    "boot-source.boot_args",
                    format!(
                        "is {} bytes long; the limit is {MAX_BOOT_ARGS_LEN}",
                        args.len()
                    ),
                ));
            }
            if !args.bytes().all(|b| (0x20..0x7f).contains(&b)) {
                return Err(ConfigError::invalid(
                    "boot-source.boot_args",
                    "may contain only printable ASCII characters",
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn boot(args: Option<&str>) -> BootSourceConfig {
        BootSourceConfig {
            kernel_image_path: "/k".into(),
            initrd_path: None,
            boot_args: args.map(str::to_owned),
        }
    }

    #[test]
    fn checks_paths_and_arguments() {
        assert!(boot(Some("console=ttyS0 reboot=k")).validate().is_ok());
        assert!(boot(Some("a\nb")).validate().is_err());
        assert!(boot(Some(&"x".repeat(MAX_BOOT_ARGS_LEN + 1)))
            .validate()
            .is_err());
        let mut b = boot(None);
        b.kernel_image_path.clear();
        assert!(b
            .validate()
            .unwrap_err()
            .to_string()
            .contains("kernel_image_path"));
    }

    #[test]
    fn kernel_path_is_required() {
        let e = serde_json::from_str::<BootSourceConfig>(r#"{"boot_args": ""}"#).unwrap_err();
        assert!(e.to_string().contains("missing field `kernel_image_path`"));
    }
}

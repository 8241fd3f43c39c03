//! `mmds-config`: which interfaces serve the metadata service, at which address, in which
//! version (`PUT /mmds/config`, pre-boot only; Firecracker's shape). The data store itself is
//! not configuration: it lives in the VMM (`PUT /mmds`, `--metadata`), and is neither
//! exported by `GET /vm/config` nor saved in snapshots.

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use super::ConfigError;

pub use mmds::Version as MmdsVersion;

fn default_ipv4() -> Ipv4Addr {
    mmds::DEFAULT_IPV4
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MmdsConfig {
    #[serde(default)]
    pub version: MmdsVersion,
    /// Interfaces (`iface_id`) whose guest traffic to `ipv4_address` the MMDS answers.
    pub network_interfaces: Vec<String>,
    /// A link-local address (169.254.1.0 – 169.254.254.255, Firecracker's range).
    #[serde(default = "default_ipv4")]
    pub ipv4_address: Ipv4Addr,
    /// Always answer in IMDS text, whatever `Accept` says.
    #[serde(default)]
    pub imds_compat: bool,
}

impl MmdsConfig {
    /// Checks what the body alone can tell; that the interfaces exist is checked against the
    /// configured ones ([`Self::validate_interfaces`]).
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.network_interfaces.is_empty() {
            return Err(ConfigError::invalid(
                "mmds-config.network_interfaces",
                "The list of network interface IDs that allow forwarding MMDS requests is empty.",
            ));
        }
        let [a, b, c, _] = self.ipv4_address.octets();
        if (a, b) != (169, 254) || !(1..=254).contains(&c) {
            return Err(ConfigError::invalid(
                "mmds-config.ipv4_address",
                format!(
                    "The MMDS IPv4 address is not link-local: {} (use 169.254.1.0 to \
                     169.254.254.255).",
                    self.ipv4_address
                ),
            ));
        }
        for (i, id) in self.network_interfaces.iter().enumerate() {
            if self.network_interfaces[..i].contains(id) {
                return Err(ConfigError::invalid(
                    "mmds-config.network_interfaces",
                    format!("`{id}` is listed twice"),
                ));
            }
        }
        Ok(())
    }

    /// Every listed interface must be configured (by `iface_id`).
    pub fn validate_interfaces<'a>(
        &self,
        configured: impl Iterator<Item = &'a str> + Clone,
    ) -> Result<(), ConfigError> {
        for id in &self.network_interfaces {
            if !configured.clone().any(|c| c == id) {
                return Err(ConfigError::invalid(
                    "mmds-config.network_interfaces",
                    format!("The network interface ID `{id}` does not exist."),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<MmdsConfig, String> {
        let c: MmdsConfig = serde_json::from_str(text).map_err(|e| e.to_string())?;
        c.validate().map_err(|e| e.to_string())?;
        Ok(c)
    }

    #[test]
    fn defaults_are_firecrackers() {
        let c = parse(r#"{"network_interfaces": ["eth0"]}"#).unwrap();
        assert_eq!(c.version, MmdsVersion::V1);
        assert_eq!(c.ipv4_address, Ipv4Addr::new(169, 254, 169, 254));
        assert!(!c.imds_compat);
        assert_eq!(
            serde_json::to_value(&c).unwrap(),
            serde_json::json!({"version": "V1", "network_interfaces": ["eth0"],
                               "ipv4_address": "169.254.169.254", "imds_compat": false})
        );
    }

    #[test]
    fn bad_bodies_are_named() {
        for (text, needle) in [
            (
                r#"{"network_interfaces": ["eth0"], "version": "V3"}"#,
                "unknown variant `V3`",
            ),
            (
                r#"{"network_interfaces": ["eth0"], "version": "v2"}"#,
                "unknown variant",
            ),
            (r#"{"version": "V2"}"#, "missing field `network_interfaces`"),
            (r#"{"network_interfaces": []}"#, "is empty"),
            (r#"{"network_interfaces": ["a", "a"]}"#, "listed twice"),
            (
                r#"{"network_interfaces": ["a"], "ipv4_address": "10.0.0.1"}"#,
                "not link-local",
            ),
            (
                r#"{"network_interfaces": ["a"], "ipv4_address": "169.254.0.9"}"#,
                "not link-local",
            ),
            (
                r#"{"network_interfaces": ["a"], "ipv4_address": "169.254.255.1"}"#,
                "not link-local",
            ),
            (
                r#"{"network_interfaces": ["a"], "ipv4_address": "169.254.1"}"#,
                "invalid",
            ),
            (
                r#"{"network_interfaces": ["a"], "x": 1}"#,
                "unknown field `x`",
            ),
        ] {
            let e = parse(text).unwrap_err();
            assert!(e.contains(needle), "{text}: {e}");
        }
        let c = parse(r#"{"network_interfaces": ["a"], "ipv4_address": "169.254.1.0", "version": "V2", "imds_compat": true}"#).unwrap();
        assert_eq!(c.version, MmdsVersion::V2);
    }

    #[test]
    fn listed_interfaces_must_exist() {
        let c = parse(r#"{"network_interfaces": ["eth0", "eth1"]}"#).unwrap();
        assert!(c
            .validate_interfaces(["eth0", "eth1", "eth2"].into_iter())
            .is_ok());
        let e = c.validate_interfaces(["eth0"].into_iter()).unwrap_err();
        assert!(e.to_string().contains("`eth1` does not exist"), "{e}");
    }
}

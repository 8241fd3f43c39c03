//! `network-interfaces`: virtio-net devices backed by existing tap devices.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::rate_limiter::validate_limiter;
use super::{validate_id, ConfigError, RateLimiterConfig, MAX_NETWORK_INTERFACES};

/// Linux interface names are at most IFNAMSIZ - 1 bytes.
const MAX_IFNAME_LEN: usize = 15;

/// An Ethernet MAC address, written `aa:bb:cc:dd:ee:ff` on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    pub fn is_multicast(&self) -> bool {
        self.0[0] & 1 == 1
    }
}

impl FromStr for MacAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || {
            format!("`{s}` is not a MAC address (expected six hex pairs like 06:00:0a:00:00:02)")
        };
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for byte in out.iter_mut() {
            let p = parts.next().filter(|p| p.len() == 2).ok_or_else(bad)?;
            *byte = u8::from_str_radix(p, 16).map_err(|_| bad())?;
        }
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(MacAddr(out))
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl Serialize for MacAddr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for MacAddr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        // serde does not say which field failed: MACs appear only as `guest_mac`.
        s.parse()
            .map_err(|e| serde::de::Error::custom(format!("guest_mac: {e}")))
    }
}

/// Reads `mtu` wide so that a value past 65535 is refused with the field's name (serde's own
/// error for a u16 overflow names no field).
fn deserialize_mtu<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u16>, D::Error> {
    match Option::<u64>::deserialize(d)? {
        None => Ok(None),
        Some(v) => u16::try_from(v).map(Some).map_err(|_| {
            serde::de::Error::custom(format!("mtu: {v} is out of range: must be 68 to 65535"))
        }),
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkInterfaceConfig {
    pub iface_id: String,
    pub host_dev_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest_mac: Option<MacAddr>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "deserialize_mtu"
    )]
    pub mtu: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rx_rate_limiter: Option<RateLimiterConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tx_rate_limiter: Option<RateLimiterConfig>,
    /// xenia extension: let the guest send frames whose source MAC is not `guest_mac`.
    /// Off by default, so that a tenant cannot impersonate another host on the segment.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_mac_spoofing: bool,
}

impl NetworkInterfaceConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        validate_id("iface_id", &self.iface_id)?;
        let field = |name: &str| format!("network-interfaces[{}].{name}", self.iface_id);
        let name = &self.host_dev_name;
        if name.is_empty()
            || name.len() > MAX_IFNAME_LEN
            || name.contains(['/', '\0'])
            || name.chars().any(char::is_whitespace)
        {
            return Err(ConfigError::invalid(
                field("host_dev_name"),
                format!("`{name}` is not a valid interface name (1 to {MAX_IFNAME_LEN} characters, no `/` or spaces)"),
            ));
        }
        if let Some(mac) = &self.guest_mac {
            if mac.is_multicast() {
                return Err(ConfigError::invalid(
                    field("guest_mac"),
                    format!("{mac} is a multicast address"),
                ));
            }
        }
        if let Some(mtu) = self.mtu {
            if mtu < 68 {
                return Err(ConfigError::invalid(
                    field("mtu"),
                    format!("{mtu} is out of range: must be 68 to 65535"),
                ));
            }
        }
        if let Some(r) = &self.rx_rate_limiter {
            validate_limiter(r, &field("rx_rate_limiter"))?;
        }
        if let Some(r) = &self.tx_rate_limiter {
            validate_limiter(r, &field("tx_rate_limiter"))?;
        }
        Ok(())
    }
}

/// Checks the rules that span interfaces: unique ids, tap names and MACs, a bounded count.
pub(crate) fn validate_interface_set(ifaces: &[NetworkInterfaceConfig]) -> Result<(), ConfigError> {
    if ifaces.len() > MAX_NETWORK_INTERFACES {
        return Err(ConfigError::invalid(
            "network-interfaces",
            format!(
                "{} given; at most {MAX_NETWORK_INTERFACES} are supported",
                ifaces.len()
            ),
        ));
    }
    for (i, n) in ifaces.iter().enumerate() {
        n.validate()?;
        for o in &ifaces[..i] {
            let clash = if o.iface_id == n.iface_id {
                Some(format!("iface_id `{}` is used twice", n.iface_id))
            } else if o.host_dev_name == n.host_dev_name {
                Some(format!("host_dev_name `{}` is used twice", n.host_dev_name))
            } else if o.guest_mac.is_some() && o.guest_mac == n.guest_mac {
                n.guest_mac.map(|m| format!("guest_mac {m} is used twice"))
            } else {
                None
            };
            if let Some(reason) = clash {
                return Err(ConfigError::invalid("network-interfaces", reason));
            }
        }
    }
    Ok(())
}

/// `PATCH /network-interfaces/{id}`: new rate limiters for a running VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkInterfaceUpdate {
    pub iface_id: String,
    #[serde(default)]
    pub rx_rate_limiter: Option<RateLimiterConfig>,
    #[serde(default)]
    pub tx_rate_limiter: Option<RateLimiterConfig>,
}

impl NetworkInterfaceUpdate {
    pub fn validate(&self) -> Result<(), ConfigError> {
        validate_id("iface_id", &self.iface_id)?;
        if let Some(r) = &self.rx_rate_limiter {
            validate_limiter(r, "rx_rate_limiter")?;
        }
        if let Some(r) = &self.tx_rate_limiter {
            validate_limiter(r, "tx_rate_limiter")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iface(id: &str, tap: &str, mac: Option<&str>) -> NetworkInterfaceConfig {
        NetworkInterfaceConfig {
            iface_id: id.into(),
            host_dev_name: tap.into(),
            guest_mac: mac.map(|m| m.parse().unwrap()),
            mtu: None,
            rx_rate_limiter: None,
            tx_rate_limiter: None,
            allow_mac_spoofing: false,
        }
    }

    #[test]
    fn mac_parsing_and_printing() {
        let m: MacAddr = "06:00:AC:10:00:02".parse().unwrap();
        assert_eq!(m.to_string(), "06:00:ac:10:00:02");
        for bad in [
            "06:00:ac:10:00",
            "06:00:ac:10:00:02:03",
            "0600ac100002",
            "g6:00:00:00:00:00",
            "6:0:0:0:0:0",
        ] {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad}");
        }
        let e = serde_json::from_str::<NetworkInterfaceConfig>(
            r#"{"iface_id":"e","host_dev_name":"t","guest_mac":"zz"}"#,
        )
        .unwrap_err();
        assert!(e.to_string().contains("not a MAC address"), "{e}");
    }

    #[test]
    fn set_rules() {
        assert!(validate_interface_set(&[
            iface("a", "tap0", Some("06:00:00:00:00:01")),
            iface("b", "tap1", Some("06:00:00:00:00:02")),
        ])
        .is_ok());
        let dup_mac = [
            iface("a", "tap0", Some("06:00:00:00:00:01")),
            iface("b", "tap1", Some("06:00:00:00:00:01")),
        ];
        assert!(validate_interface_set(&dup_mac)
            .unwrap_err()
            .to_string()
            .contains("guest_mac"));
        let dup_tap = [iface("a", "tap0", None), iface("b", "tap0", None)];
        assert!(validate_interface_set(&dup_tap)
            .unwrap_err()
            .to_string()
            .contains("tap0"));
        let dup_id = [iface("a", "tap0", None), iface("a", "tap1", None)];
        assert!(validate_interface_set(&dup_id).is_err());
    }

    #[test]
    fn field_ranges() {
        assert!(iface("a", "a-name-that-is-too-long", None)
            .validate()
            .is_err());
        assert!(iface("a", "tap0", Some("01:00:5e:00:00:01"))
            .validate()
            .is_err());
        let mut n = iface("a", "tap0", None);
        n.mtu = Some(67);
        assert!(n.validate().unwrap_err().to_string().contains("mtu"));
        n.mtu = Some(9000);
        assert!(n.validate().is_ok());
        assert!(serde_json::from_str::<NetworkInterfaceConfig>(
            r#"{"iface_id":"e","host_dev_name":"t","mtu":70000}"#
        )
        .is_err());
    }
}

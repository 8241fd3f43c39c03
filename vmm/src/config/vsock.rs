//! `vsock`: the virtio socket device (`PUT /vsock`, pre-boot only), Firecracker's shape.

use serde::{Deserialize, Serialize};

use super::{validate_path, ConfigError};

/// Longest `uds_path`: a `sockaddr_un` holds 107 bytes, and guest connections to port P use
/// `<uds_path>_<P>`, up to 11 bytes more.
pub const MAX_UDS_PATH_LEN: usize = 107 - 11;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VsockDeviceConfig {
    /// Deprecated and ignored (Firecracker still accepts it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vsock_id: Option<String>,
    /// The guest's CID: 0-2 are reserved.
    pub guest_cid: u32,
    /// Where xenia listens for host connections; guest connections to port P go to
    /// `<uds_path>_<P>`.
    pub uds_path: String,
}

impl VsockDeviceConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.guest_cid < 3 {
            return Err(ConfigError::invalid(
                "vsock.guest_cid",
                format!("{} is reserved; use 3 or more", self.guest_cid),
            ));
        }
        validate_path("vsock.uds_path", &self.uds_path)?;
        if self.uds_path.len() > MAX_UDS_PATH_LEN {
            return Err(ConfigError::invalid(
                "vsock.uds_path",
                format!(
                    "is {} bytes; at most {MAX_UDS_PATH_LEN} fit a Unix socket address with the `_<port>` suffix",
                    self.uds_path.len()
                ),
            ));
        }
        Ok(())
    }
}

/// `vsock_override` of `PUT /snapshot/load`: the restored device listens here instead.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VsockOverride {
    pub uds_path: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn firecracker_bodies_parse_and_bad_ones_do_not() {
        let c: VsockDeviceConfig =
            serde_json::from_str(r#"{"guest_cid": 3, "uds_path": "/tmp/v.sock"}"#).unwrap();
        assert!(c.validate().is_ok());
        assert_eq!(
            serde_json::to_value(&c).unwrap(),
            serde_json::json!({"guest_cid": 3, "uds_path": "/tmp/v.sock"})
        );
        let c: VsockDeviceConfig =
            serde_json::from_str(r#"{"vsock_id": "vsock0", "guest_cid": 52, "uds_path": "/v"}"#)
                .unwrap();
        assert_eq!(c.vsock_id.as_deref(), Some("vsock0"));
        for bad in [
            r#"{"guest_cid": 3}"#,
            r#"{"uds_path": "/v"}"#,
            r#"{"guest_cid": -1, "uds_path": "/v"}"#,
            r#"{"guest_cid": 3, "uds_path": "/v", "port": 1}"#,
        ] {
            assert!(
                serde_json::from_str::<VsockDeviceConfig>(bad).is_err(),
                "{bad}"
            );
        }
        for (cid, path, field) in [
            (2, "/v".to_owned(), "guest_cid"),
            (3, String::new(), "uds_path"),
            (3, format!("/{}", "x".repeat(MAX_UDS_PATH_LEN)), "uds_path"),
        ] {
            let c = VsockDeviceConfig {
                vsock_id: None,
                guest_cid: cid,
                uds_path: path,
            };
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains(field), "{e}");
        }
    }
}

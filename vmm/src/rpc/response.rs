//! The VMM's answers and how they look on the wire.

use api_socket::Response;
use serde::Serialize;

use crate::config::{BalloonDeviceConfig, ConfigError, MachineConfig, VmConfig};

/// Lifecycle state in `GET /`, spelled as Firecracker spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum InstanceState {
    #[serde(rename = "Not started")]
    NotStarted,
    Running,
    Paused,
}

/// The `GET /` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InstanceInfo {
    pub id: String,
    pub state: InstanceState,
    pub vmm_version: String,
    pub app_name: String,
}

/// The `GET /version` answer. The key is Firecracker's, which clients look for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VersionInfo {
    pub firecracker_version: String,
}

/// What a successful action returns.
#[derive(Debug, Clone, PartialEq)]
pub enum VmmData {
    /// 204 No Content.
    Empty,
    InstanceInfo(InstanceInfo),
    Version(VersionInfo),
    MachineConfig(MachineConfig),
    FullConfig(Box<VmConfig>),
    BalloonConfig(BalloonDeviceConfig),
    BalloonStats(virtio::balloon::BalloonStats),
    /// `GET /usage`
    Usage(Box<crate::usage::UsageRecord>),
    /// `GET /mmds`
    Mmds(serde_json::Value),
}

/// Why an action failed. Everything but `Internal` is the client's fault (400).
#[derive(Debug, thiserror::Error)]
pub enum ActionError {
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error("The requested operation is not supported after starting the microVM.")]
    NotAllowedAfterBoot,
    #[error("The requested operation is not supported before starting the microVM.")]
    NotAllowedBeforeBoot,
    /// A request that was valid but could not be carried out (e.g. a file cannot be opened).
    #[error("{0}")]
    Failed(String),
    /// A fault of the VMM itself.
    #[error("Internal error: {0}")]
    Internal(String),
    /// A body the action cannot take for its size (the MMDS data store limit): 413.
    #[error("{0}")]
    TooLarge(String),
}

impl ActionError {
    fn status(&self) -> u16 {
        match self {
            ActionError::Internal(_) => 500,
            ActionError::TooLarge(_) => 413,
            _ => 400,
        }
    }
}

fn json<T: Serialize>(value: &T) -> Response {
    match serde_json::to_vec(value) {
        Ok(body) => Response::json(200, body),
        Err(e) => Response::fault(
            500,
            &format!("Internal error: cannot serialise the answer: {e}"),
        ),
    }
}

/// Turns an action's outcome into the HTTP answer.
pub fn response_for(result: Result<VmmData, ActionError>) -> Response {
    match result {
        Ok(VmmData::Empty) => Response::no_content(),
        Ok(VmmData::InstanceInfo(info)) => json(&info),
        Ok(VmmData::Version(v)) => json(&v),
        Ok(VmmData::MachineConfig(m)) => json(&m),
        Ok(VmmData::FullConfig(c)) => json(&c),
        Ok(VmmData::BalloonConfig(b)) => json(&b),
        Ok(VmmData::BalloonStats(s)) => json(&s),
        Ok(VmmData::Usage(u)) => json(&u),
        Ok(VmmData::Mmds(v)) => json(&v),
        Err(e) => Response::fault(e.status(), &e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body_json(r: &Response) -> serde_json::Value {
        serde_json::from_slice(r.body.as_deref().expect("a body")).expect("json body")
    }

    #[test]
    fn empty_is_no_content() {
        let r = response_for(Ok(VmmData::Empty));
        assert_eq!((r.status, r.body.is_none()), (204, true));
    }

    #[test]
    fn instance_info_uses_firecracker_spelling() {
        let r = response_for(Ok(VmmData::InstanceInfo(InstanceInfo {
            id: "vm1".into(),
            state: InstanceState::NotStarted,
            vmm_version: "0.1.0".into(),
            app_name: "xenia".into(),
        })));
        assert_eq!(r.status, 200);
        assert_eq!(
            body_json(&r),
            serde_json::json!({"id": "vm1", "state": "Not started",
                               "vmm_version": "0.1.0", "app_name": "xenia"})
        );
    }

    #[test]
    fn version_key_is_firecracker_version() {
        let r = response_for(Ok(VmmData::Version(VersionInfo {
            firecracker_version: "0.1.0".into(),
        })));
        assert_eq!(
            body_json(&r),
            serde_json::json!({"firecracker_version": "0.1.0"})
        );
    }

    #[test]
    fn full_config_lists_every_section() {
        let r = response_for(Ok(VmmData::FullConfig(Box::default())));
        let v = body_json(&r);
        assert_eq!(v["boot-source"]["kernel_image_path"], "", "{v}");
        assert_eq!(v["machine-config"]["vcpu_count"], 1, "{v}");
        assert!(
            v["vsock"].is_null() && v["pmem"] == serde_json::json!([]),
            "{v}"
        );
    }

    #[test]
    fn errors_are_fault_messages() {
        let r = response_for(Err(ActionError::NotAllowedAfterBoot));
        assert_eq!(r.status, 400);
        assert_eq!(
            body_json(&r)["fault_message"],
            "The requested operation is not supported after starting the microVM."
        );
        let r = response_for(Err(ActionError::Internal("boom".into())));
        assert_eq!(r.status, 500);
        let r = response_for(Err(ActionError::Config(ConfigError::Unsupported("vsock"))));
        assert_eq!(r.status, 400);
    }
}

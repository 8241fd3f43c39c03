//! The route table: (method, path, body) → [`VmmAction`], with Firecracker's errors.

use api_socket::{Method, Request, Response};
use serde::de::DeserializeOwned;
use serde::Deserialize;

use super::{VmState, VmmAction};
use crate::config::ConfigError;

/// Every (method, route) xenia serves; `{id}` stands for a path parameter. Kept in step
/// with `api-socket/openapi.yaml` by a test.
pub const ROUTES: &[(Method, &str)] = &[
    (Method::Get, "/"),
    (Method::Put, "/actions"),
    (Method::Put, "/boot-source"),
    (Method::Put, "/drives/{drive_id}"),
    (Method::Patch, "/drives/{drive_id}"),
    (Method::Put, "/logger"),
    (Method::Get, "/machine-config"),
    (Method::Put, "/machine-config"),
    (Method::Patch, "/machine-config"),
    (Method::Put, "/metrics"),
    (Method::Put, "/network-interfaces/{iface_id}"),
    (Method::Patch, "/network-interfaces/{iface_id}"),
    (Method::Put, "/serial"),
    (Method::Get, "/usage"),
    (Method::Get, "/version"),
    (Method::Patch, "/vm"),
    (Method::Get, "/vm/config"),
];

/// Firecracker paths (first segment) xenia recognises but does not implement yet.
pub const UNSUPPORTED_ROUTES: &[&str] = &[
    "balloon",
    "cpu-config",
    "entropy",
    "hotplug",
    "mmds",
    "pmem",
    "snapshot",
    "vsock",
];

/// A request the router accepted.
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedRequest {
    pub action: VmmAction,
    /// The request used a deprecated field: answer with `Deprecation: true`.
    pub deprecated: bool,
}

impl From<VmmAction> for ParsedRequest {
    fn from(action: VmmAction) -> Self {
        ParsedRequest {
            action,
            deprecated: false,
        }
    }
}

/// Why a request could not become an action. Every variant is answered with 400.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    #[error("Invalid request method and/or path: {method} {path}.")]
    InvalidPathMethod { method: Method, path: String },
    #[error("{feature} is not supported by this version of xenia.")]
    Unsupported { feature: String },
    #[error("The request body is empty; {method} {path} needs a JSON body.")]
    EmptyBody { method: Method, path: String },
    /// serde's message, passed through as Firecracker does.
    #[error("{0}")]
    Json(String),
    #[error("Missing {0} in the request path.")]
    MissingId(&'static str),
    #[error("The id from the path does not match the id from the body!")]
    IdMismatch,
    #[error("{0}")]
    Invalid(#[from] ConfigError),
}

impl From<RouteError> for Response {
    fn from(e: RouteError) -> Response {
        Response::fault(400, &e.to_string())
    }
}

/// The body of `PUT /actions`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ActionBody {
    action_type: ActionType,
}

#[derive(Debug, Deserialize)]
enum ActionType {
    InstanceStart,
    SendCtrlAltDel,
    FlushMetrics,
}

/// The body of `PATCH /vm`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct VmStateBody {
    state: VmState,
}

/// Parses an HTTP request into an action.
pub fn parse_request(request: &Request) -> Result<ParsedRequest, RouteError> {
    route(request.method, &request.path, &request.body)
}

fn route(method: Method, path: &str, body: &[u8]) -> Result<ParsedRequest, RouteError> {
    let invalid = || RouteError::InvalidPathMethod {
        method,
        path: path.to_string(),
    };
    let mut segments = path.trim_start_matches('/').split('/');
    let first = segments.next().unwrap_or("");
    // Only the first segment (and the id, for routes that take one) matter: a trailing
    // segment on a route that takes none is ignored, as Firecracker does.
    let second = segments.next().filter(|s| !s.is_empty());
    let json = |_resource: &str| JsonBody { method, path, body };
    use Method::{Get, Patch, Put};
    use VmmAction as A;
    let action = match (method, first) {
        (Get, "") => A::GetInstanceInfo,
        (Get, "version") => A::GetVersion,
        (Get, "usage") => A::GetUsage,
        (Get, "vm") if second == Some("config") => A::GetFullConfig,
        (Patch, "vm") if second != Some("config") => {
            A::PatchVmState(json("vm").parse::<VmStateBody>()?.state)
        }
        (Put, "actions") => match json("actions").parse::<ActionBody>()?.action_type {
            ActionType::InstanceStart => A::StartInstance,
            ActionType::SendCtrlAltDel => A::SendCtrlAltDel,
            ActionType::FlushMetrics => A::FlushMetrics,
        },
        (Put, "boot-source") => {
            let config: crate::config::BootSourceConfig = json("boot-source").parse()?;
            config.validate()?;
            A::PutBootSource(config)
        }
        (Get, "machine-config") => A::GetMachineConfig,
        (Put, "machine-config") => {
            let config: crate::config::MachineConfig = json("machine-config").parse()?;
            config.validate()?;
            A::PutMachineConfig(config)
        }
        (Patch, "machine-config") => A::PatchMachineConfig(json("machine-config").parse()?),
        (Put, "logger") => {
            let config: crate::config::LoggerConfig = json("logger").parse()?;
            config.validate()?;
            A::PutLogger(config)
        }
        (Put, "metrics") => {
            let config: crate::config::MetricsConfig = json("metrics").parse()?;
            config.validate()?;
            A::PutMetrics(config)
        }
        (Put, "serial") => {
            let config: crate::config::SerialConfig = json("serial").parse()?;
            config.validate()?;
            A::PutSerial(config)
        }
        (Put, "drives") => {
            let id = second.ok_or(RouteError::MissingId("drive id"))?;
            let config: crate::config::DriveConfig = json("drives").parse()?;
            check_id(id, &config.drive_id)?;
            config.validate()?;
            A::PutDrive(config)
        }
        (Patch, "drives") => {
            let id = second.ok_or(RouteError::MissingId("drive id"))?;
            let update: crate::config::DriveUpdate = json("drives").parse()?;
            check_id(id, &update.drive_id)?;
            update.validate()?;
            A::PatchDrive(update)
        }
        (Put, "network-interfaces") => {
            let id = second.ok_or(RouteError::MissingId("network interface id"))?;
            let config: crate::config::NetworkInterfaceConfig =
                json("network-interfaces").parse()?;
            check_id(id, &config.iface_id)?;
            config.validate()?;
            A::PutNetworkInterface(config)
        }
        (Patch, "network-interfaces") => {
            let id = second.ok_or(RouteError::MissingId("network interface id"))?;
            let update: crate::config::NetworkInterfaceUpdate =
                json("network-interfaces").parse()?;
            check_id(id, &update.iface_id)?;
            update.validate()?;
            A::PatchNetworkInterface(update)
        }
        (_, feature) if UNSUPPORTED_ROUTES.contains(&feature) => {
            return Err(RouteError::Unsupported {
                feature: format!("/{feature}"),
            })
        }
        _ => return Err(invalid()),
    };
    Ok(action.into())
}

fn check_id(path_id: &str, body_id: &str) -> Result<(), RouteError> {
    if path_id == body_id {
        Ok(())
    } else {
        Err(RouteError::IdMismatch)
    }
}

/// A request body on its way to a typed value.
struct JsonBody<'a> {
    method: Method,
    path: &'a str,
    body: &'a [u8],
}

impl JsonBody<'_> {
    fn parse<T: DeserializeOwned>(&self) -> Result<T, RouteError> {
        if self.body.iter().all(u8::is_ascii_whitespace) {
            return Err(RouteError::EmptyBody {
                method: self.method,
                path: self.path.to_string(),
            });
        }
        serde_json::from_slice(self.body).map_err(|e| RouteError::Json(e.to_string()))
    }
}

#[cfg(test)]
#[path = "routes_tests.rs"]
mod tests;

//! The route table: (method, path, body) → [`VmmAction`], with Firecracker's errors.

use api_socket::{Method, Request, Response};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::{VmState, VmmAction};
use crate::config::ConfigError;

/// Every (method, route) xenia serves; `{id}` stands for a path parameter. Kept in step
/// with `api-socket/openapi.yaml` by a test.
pub const ROUTES: &[(Method, &str)] = &[
    (Method::Get, "/"),
    (Method::Put, "/actions"),
    (Method::Get, "/balloon"),
    (Method::Put, "/balloon"),
    (Method::Patch, "/balloon"),
    (Method::Get, "/balloon/statistics"),
    (Method::Patch, "/balloon/statistics"),
    (Method::Put, "/boot-source"),
    (Method::Put, "/cpu-config"),
    (Method::Put, "/drives/{drive_id}"),
    (Method::Patch, "/drives/{drive_id}"),
    (Method::Put, "/entropy"),
    (Method::Put, "/logger"),
    (Method::Get, "/machine-config"),
    (Method::Put, "/machine-config"),
    (Method::Patch, "/machine-config"),
    (Method::Put, "/metrics"),
    (Method::Get, "/mmds"),
    (Method::Put, "/mmds"),
    (Method::Patch, "/mmds"),
    (Method::Put, "/mmds/config"),
    (Method::Put, "/network-interfaces/{iface_id}"),
    (Method::Patch, "/network-interfaces/{iface_id}"),
    (Method::Put, "/serial"),
    (Method::Get, "/usage"),
    (Method::Put, "/snapshot/create"),
    (Method::Put, "/snapshot/load"),
    (Method::Get, "/version"),
    (Method::Patch, "/vm"),
    (Method::Get, "/vm/config"),
    (Method::Put, "/vsock"),
];

/// Firecracker paths (first segment) xenia recognises but does not implement yet.
pub const UNSUPPORTED_ROUTES: &[&str] = &["hotplug", "pmem"];

/// A request the router accepted.
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedRequest {
    pub action: VmmAction,
    /// What the request used that is deprecated, one message each (e.g. "PUT /machine-config:
    /// the cpu_template field is deprecated."). Non-empty: the answer carries
    /// `Deprecation: true` and each message is logged as a warning the first time it occurs.
    pub deprecations: Vec<&'static str>,
}

impl ParsedRequest {
    /// Whether the answer must carry `Deprecation: true`.
    pub fn is_deprecated(&self) -> bool {
        !self.deprecations.is_empty()
    }

    /// Marks the request as using something deprecated when `used` holds. Route arms call
    /// this for each deprecated field or path they see: `message` names the route and what
    /// is deprecated (a static string, so that it can be logged once per process).
    pub fn deprecated_if(mut self, used: bool, message: &'static str) -> Self {
        if used && !self.deprecations.contains(&message) {
            self.deprecations.push(message);
        }
        self
    }
}

impl From<VmmAction> for ParsedRequest {
    fn from(action: VmmAction) -> Self {
        ParsedRequest {
            action,
            deprecations: Vec::new(),
        }
    }
}

/// The messages of [`ParsedRequest::deprecations`] already logged: each is logged once per
/// process, so a client repeating a deprecated call cannot flood the log.
fn first_sighting(message: &'static str) -> bool {
    static SEEN: std::sync::Mutex<Vec<&'static str>> = std::sync::Mutex::new(Vec::new());
    let mut seen = SEEN.lock().unwrap_or_else(|e| e.into_inner());
    if seen.contains(&message) {
        false
    } else {
        seen.push(message);
        true
    }
}

/// Logs each deprecation of `parsed` the first time it is seen and counts every deprecated
/// request in the metrics (`deprecated_api.deprecated_http_api_calls`, Firecracker's name).
pub fn note_deprecations(parsed: &ParsedRequest) {
    if !parsed.is_deprecated() {
        return;
    }
    crate::metrics::global()
        .deprecated_api
        .deprecated_http_api_calls
        .inc();
    for message in &parsed.deprecations {
        if first_sighting(message) {
            log::warn!("{message}");
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
    /// Firecracker's words for a PATCH that changes nothing.
    #[error("Empty PATCH request.")]
    EmptyPatch,
    #[error("Please specify at least one property to patch: {0}.")]
    NothingToPatch(&'static str),
    /// serde would fill a struct from an array in field order; Firecracker refuses that.
    #[error("The request body must be a JSON object, not {0}.")]
    NotAnObject(&'static str),
    #[error("`{0}` must be a JSON object, not an array.")]
    ArrayForObject(String),
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
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ActionBody {
    action_type: ActionType,
}

#[derive(Debug, Serialize, Deserialize)]
enum ActionType {
    InstanceStart,
    SendCtrlAltDel,
    FlushMetrics,
}

/// The body of `PATCH /vm`.
#[derive(Debug, Serialize, Deserialize)]
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
        (Put, "cpu-config") => {
            let template: crate::config::CustomCpuTemplate = json("cpu-config").parse()?;
            template
                .validate()
                .map_err(|e| RouteError::Json(e.to_string()))?;
            A::PutCpuConfig(template)
        }
        (Get, "machine-config") => A::GetMachineConfig,
        (Put, "machine-config") => {
            let config: crate::config::MachineConfig = json("machine-config").parse()?;
            config.validate()?;
            let old_template = config.cpu_template.is_some();
            return Ok(ParsedRequest::from(A::PutMachineConfig(config))
                .deprecated_if(old_template, CPU_TEMPLATE_PUT_DEPRECATED));
        }
        (Patch, "machine-config") => {
            let update: crate::config::MachineConfigUpdate = json("machine-config").parse()?;
            if update == crate::config::MachineConfigUpdate::default() {
                return Err(RouteError::EmptyPatch);
            }
            let old_template = update.cpu_template.is_some();
            return Ok(ParsedRequest::from(A::PatchMachineConfig(update))
                .deprecated_if(old_template, CPU_TEMPLATE_PATCH_DEPRECATED));
        }
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
        (_, "balloon") => return balloon_route(method, second, &json("balloon")),
        (Put, "mmds") if second == Some("config") => {
            let config: crate::config::MmdsConfig = json("mmds").parse()?;
            config.validate()?;
            A::PutMmdsConfig(config)
        }
        (Get, "mmds") => A::GetMmds,
        (Put, "mmds") => A::PutMmds(json("mmds").parse::<JsonObject>()?.into()),
        (Patch, "mmds") => A::PatchMmds(json("mmds").parse::<JsonObject>()?.into()),
        (Put, "entropy") => {
            let config: crate::config::EntropyDeviceConfig = json("entropy").parse()?;
            config.validate()?;
            A::PutEntropy(config)
        }
        (Put, "vsock") => {
            let config: crate::config::VsockDeviceConfig = json("vsock").parse()?;
            config.validate()?;
            let old_id = config.vsock_id.is_some();
            return Ok(
                ParsedRequest::from(A::PutVsock(config)).deprecated_if(old_id, VSOCK_ID_DEPRECATED)
            );
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
            if update.path_on_host.is_none() && update.rate_limiter.is_none() {
                return Err(RouteError::NothingToPatch("path_on_host, rate_limiter"));
            }
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
        (Put, "snapshot") if second == Some("create") => {
            let config: crate::config::SnapshotCreateConfig = json("snapshot").parse()?;
            config.validate()?;
            A::CreateSnapshot(config)
        }
        (Put, "snapshot") if second == Some("load") => {
            let config: crate::config::SnapshotLoadConfig = json("snapshot").parse()?;
            config.validate()?;
            let mem_file = config.mem_file_path.is_some();
            let diff = config.enable_diff_snapshots;
            return Ok(ParsedRequest::from(A::LoadSnapshot(Box::new(config)))
                .deprecated_if(mem_file, SNAPSHOT_LOAD_MEM_FILE_DEPRECATED)
                .deprecated_if(diff, SNAPSHOT_LOAD_DIFF_DEPRECATED));
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

/// `/balloon` and its sub-paths. Free page hinting is not implemented: its paths are
/// answered 400 by name.
fn balloon_route(
    method: Method,
    sub: Option<&str>,
    body: &JsonBody<'_>,
) -> Result<ParsedRequest, RouteError> {
    use Method::{Get, Patch, Put};
    use VmmAction as A;
    let action = match (method, sub) {
        (_, Some("hinting")) => {
            return Err(RouteError::Unsupported {
                feature: "Free page hinting (/balloon/hinting)".into(),
            })
        }
        (Get, None) => A::GetBalloonConfig,
        (Put, None) => {
            let config: crate::config::BalloonDeviceConfig = body.parse()?;
            config.validate()?;
            A::PutBalloon(config)
        }
        (Patch, None) => A::PatchBalloon(body.parse()?),
        (Get, Some("statistics")) => A::GetBalloonStats,
        (Patch, Some("statistics")) => A::PatchBalloonStats(body.parse()?),
        _ => {
            return Err(RouteError::InvalidPathMethod {
                method,
                path: body.path.to_string(),
            })
        }
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

/// The deprecation messages of `PUT /snapshot/load`'s old field names.
const SNAPSHOT_LOAD_MEM_FILE_DEPRECATED: &str =
    "PUT /snapshot/load: the mem_file_path field is deprecated; use mem_backend.";
const SNAPSHOT_LOAD_DIFF_DEPRECATED: &str =
    "PUT /snapshot/load: the enable_diff_snapshots field is deprecated; use track_dirty_pages.";

/// `PUT /vsock`'s old device id (Firecracker ignores it too).
const VSOCK_ID_DEPRECATED: &str = "PUT /vsock: the vsock_id field is deprecated.";

/// The deprecation messages of `machine-config`'s static CPU template field.
const CPU_TEMPLATE_PUT_DEPRECATED: &str =
    "PUT /machine-config: the cpu_template field is deprecated.";
const CPU_TEMPLATE_PATCH_DEPRECATED: &str =
    "PATCH /machine-config: the cpu_template field is deprecated.";

/// The MMDS data store's bodies: any JSON object.
type JsonObject = serde_json::Map<String, serde_json::Value>;

/// A request body on its way to a typed value.
struct JsonBody<'a> {
    method: Method,
    path: &'a str,
    body: &'a [u8],
}

impl JsonBody<'_> {
    fn parse<T: DeserializeOwned + Serialize>(&self) -> Result<T, RouteError> {
        let Some(first) = self.body.iter().find(|b| !b.is_ascii_whitespace()) else {
            if self.method == Method::Patch {
                return Err(RouteError::EmptyPatch);
            }
            return Err(RouteError::EmptyBody {
                method: self.method,
                path: self.path.to_string(),
            });
        };
        // Every body is an object. Anything else is refused before serde sees it: serde
        // would fill a struct from an array in field order (`[2, 256]` as a machine-config).
        let kind = match first {
            b'{' => None,
            b'[' => Some("an array"),
            b'"' => Some("a string"),
            b'n' => Some("null"),
            b't' | b'f' => Some("a boolean"),
            b'-' | b'0'..=b'9' => Some("a number"),
            _ => None, // not JSON at all: serde's syntax error says where
        };
        if let Some(kind) = kind {
            return Err(RouteError::NotAnObject(kind));
        }
        let value: T =
            serde_json::from_slice(self.body).map_err(|e| RouteError::Json(e.to_string()))?;
        // Nested objects too: `"rate_limiter": {"bandwidth": [100, 0, 10]}` must not become
        // a token bucket. Both steps succeed for anything serde accepted above.
        if let (Ok(input), Ok(written)) = (
            serde_json::from_slice::<serde_json::Value>(self.body),
            serde_json::to_value(&value),
        ) {
            if let Some(path) = crate::config::array_used_as_object(&input, &written) {
                return Err(RouteError::ArrayForObject(path));
            }
        }
        Ok(value)
    }
}

#[cfg(test)]
#[path = "routes_tests.rs"]
mod tests;

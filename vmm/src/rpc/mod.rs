//! The API's vocabulary: HTTP requests parsed into typed [`VmmAction`]s, and the VMM's
//! answers ([`VmmData`] or [`ActionError`]) turned back into HTTP responses.
//!
//! Parsing happens on the API thread: a request that cannot become an action is answered
//! there (400 + `fault_message`, as Firecracker does) without bothering the VMM thread.
//! Executing actions happens on the VMM thread ([`Vmm::execute`], in `execute.rs`); the
//! `api` thread itself lives in `thread.rs`.

mod bridge;
mod execute;
mod response;
mod routes;
mod thread;

pub use bridge::{api_handler, serve_pending, ApiRequest};
pub use execute::{Vmm, VmmError, APP_NAME};
pub use thread::{instrumented, route_key, ApiThread, ApiThreadError, ThreadStartHook};

pub use response::{response_for, ActionError, InstanceInfo, InstanceState, VersionInfo, VmmData};
pub use routes::{
    note_deprecations, parse_request, ParsedRequest, RouteError, ROUTES, UNSUPPORTED_ROUTES,
};

use serde::{Deserialize, Serialize};

use crate::config::{
    BalloonDeviceConfig, BalloonStatsUpdate, BalloonUpdate, BootSourceConfig, CustomCpuTemplate,
    DriveConfig, DriveUpdate, EntropyDeviceConfig, LoggerConfig, MachineConfig,
    MachineConfigUpdate, MetricsConfig, NetworkInterfaceConfig, NetworkInterfaceUpdate,
    SerialConfig, SnapshotCreateConfig, SnapshotLoadConfig,
};

/// The state `PATCH /vm` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum VmState {
    Paused,
    Resumed,
}

/// Everything the API can ask the VMM to do.
#[derive(Debug, Clone, PartialEq)]
pub enum VmmAction {
    /// `GET /`
    GetInstanceInfo,
    /// `GET /version`
    GetVersion,
    /// `GET /vm/config`
    GetFullConfig,
    /// `GET /usage` (xenia extension)
    GetUsage,
    /// `GET /machine-config`
    GetMachineConfig,
    /// `PUT /boot-source`
    PutBootSource(BootSourceConfig),
    /// `PUT /machine-config`
    PutMachineConfig(MachineConfig),
    /// `PUT /cpu-config`: a custom CPU template.
    PutCpuConfig(CustomCpuTemplate),
    /// `PATCH /machine-config`: applied over the current configuration by the VMM.
    PatchMachineConfig(MachineConfigUpdate),
    /// `PUT /actions` with `InstanceStart`
    StartInstance,
    /// `PUT /actions` with `SendCtrlAltDel`
    SendCtrlAltDel,
    /// `PUT /actions` with `FlushMetrics`
    FlushMetrics,
    /// `PATCH /vm`
    PatchVmState(VmState),
    /// `PUT /logger`
    PutLogger(LoggerConfig),
    /// `PUT /metrics`
    PutMetrics(MetricsConfig),
    /// `PUT /serial`
    PutSerial(SerialConfig),
    /// `PUT /drives/{id}` (the path id equals `drive_id`)
    PutDrive(DriveConfig),
    /// `PATCH /drives/{id}`
    PatchDrive(DriveUpdate),
    /// `PUT /network-interfaces/{id}` (the path id equals `iface_id`)
    PutNetworkInterface(NetworkInterfaceConfig),
    /// `PATCH /network-interfaces/{id}`
    PatchNetworkInterface(NetworkInterfaceUpdate),
    /// `PUT /entropy`
    PutEntropy(EntropyDeviceConfig),
    /// `PUT /balloon`
    PutBalloon(BalloonDeviceConfig),
    /// `PUT /vsock`
    PutVsock(crate::config::VsockDeviceConfig),
    /// `PATCH /balloon`
    PatchBalloon(BalloonUpdate),
    /// `GET /balloon`
    GetBalloonConfig,
    /// `GET /balloon/statistics`
    GetBalloonStats,
    /// `PATCH /balloon/statistics`
    PatchBalloonStats(BalloonStatsUpdate),
    /// `PUT /snapshot/create` (paused VM only)
    CreateSnapshot(SnapshotCreateConfig),
    /// `PUT /snapshot/load` (fresh process only)
    LoadSnapshot(Box<SnapshotLoadConfig>),
    /// `PUT /mmds/config` (pre-boot only)
    PutMmdsConfig(crate::config::MmdsConfig),
    /// `PUT /mmds`: replaces the data store.
    PutMmds(serde_json::Value),
    /// `PATCH /mmds`: RFC 7396 merge into the data store.
    PatchMmds(serde_json::Value),
    /// `GET /mmds`
    GetMmds,
}

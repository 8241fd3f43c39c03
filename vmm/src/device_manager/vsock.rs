//! The vsock device (`PUT /vsock`): virtio-vsock on the MMIO bus, its host sockets served on
//! the `io` thread, its counters as the `vsock` metrics object.

use std::path::Path;
use std::sync::{Arc, Mutex};

use serde_json::Value;
use virtio::vsock::{Vsock, VsockError, VsockMetrics};
use virtio::GuestMemoryMmap;
use virtio::IoSubscriber;

use super::mmio::{attach_virtio_mmio, MmioAllocator, MmioDevice, MmioError};
use super::DeviceBuses;
use crate::config::VsockDeviceConfig;
use crate::metrics::Metrics;
use crate::vstate::vm::Vm;

/// Errors while attaching the vsock device.
#[derive(Debug, thiserror::Error)]
pub enum VsockDeviceError {
    #[error(transparent)]
    Device(#[from] VsockError),
    #[error(transparent)]
    Mmio(#[from] MmioError),
}

/// The attached vsock device.
#[derive(Debug)]
pub struct VsockDevice {
    pub device: Arc<Mutex<Vsock>>,
    pub mmio: MmioDevice,
    /// Its counters (shared with the device), for metrics and `GET /usage`.
    pub counters: Arc<VsockMetrics>,
}

impl VsockDevice {
    /// The device as the `io` loop holds it.
    pub fn subscriber(&self) -> IoSubscriber {
        self.device.clone()
    }

    /// Adds the device's counters to `metrics` as `vsock` (Firecracker's key).
    pub fn register_metrics(&self, metrics: &Metrics) {
        let counters = self.counters.clone();
        metrics.register_device(
            "vsock",
            Box::new(move || serde_json::to_value(counters.snapshot()).unwrap_or(Value::Null)),
        );
    }
}

/// Creates the vsock device (binding its listening socket) and attaches it through
/// virtio-mmio.
pub fn attach_vsock(
    vm: &Vm,
    buses: &mut DeviceBuses,
    allocator: &mut MmioAllocator,
    memory: &GuestMemoryMmap,
    config: &VsockDeviceConfig,
) -> Result<VsockDevice, VsockDeviceError> {
    let vsock = Vsock::new(u64::from(config.guest_cid), Path::new(&config.uds_path))?;
    let counters = vsock.metrics();
    let device = Arc::new(Mutex::new(vsock));
    let mmio = attach_virtio_mmio(vm, buses, allocator, memory, device.clone(), "vsock")?;
    log::info!(
        "vsock at {:#x} irq {}: guest CID {}, listening on {}",
        mmio.slot.base,
        mmio.slot.irq,
        config.guest_cid,
        config.uds_path
    );
    Ok(VsockDevice {
        device,
        mmio,
        counters,
    })
}

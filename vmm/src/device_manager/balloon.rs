//! The memory balloon (`/balloon`): virtio-balloon on the MMIO bus, served on the `io`
//! thread; runtime target and statistics-interval updates from the VMM thread; its counters
//! as the `balloon` metrics object.

use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::Value;
use virtio::balloon::{Balloon, BalloonConfig, BalloonError, BalloonStats};
use virtio::GuestMemoryMmap;
use virtio::IoSubscriber;

use super::mmio::{attach_virtio_mmio, MmioAllocator, MmioDevice, MmioError};
use super::DeviceBuses;
use crate::config::BalloonDeviceConfig;
use crate::metrics::Metrics;
use crate::vstate::vm::Vm;

/// Errors while attaching or updating the balloon.
#[derive(Debug, thiserror::Error)]
pub enum BalloonDeviceError {
    #[error(transparent)]
    Device(#[from] BalloonError),
    #[error(transparent)]
    Mmio(#[from] MmioError),
}

/// The attached balloon.
#[derive(Debug)]
pub struct BalloonDevice {
    pub device: Arc<Mutex<Balloon>>,
    pub mmio: MmioDevice,
}

impl BalloonDevice {
    fn lock(&self) -> MutexGuard<'_, Balloon> {
        self.device.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The device as the `io` loop holds it.
    pub fn subscriber(&self) -> IoSubscriber {
        self.device.clone()
    }

    /// `PATCH /balloon` on a running VM.
    pub fn update_target(&self, amount_mib: u32) -> Result<(), BalloonDeviceError> {
        Ok(self.lock().update_target(amount_mib)?)
    }

    /// `PATCH /balloon/statistics` on a running VM.
    pub fn update_stats_interval(&self, seconds: u16) -> Result<(), BalloonDeviceError> {
        Ok(self.lock().update_stats_interval(seconds)?)
    }

    /// `GET /balloon/statistics`.
    pub fn statistics(&self) -> Result<BalloonStats, BalloonDeviceError> {
        Ok(self.lock().statistics()?)
    }

    /// Adds the device's counters to `metrics` as `balloon` (Firecracker's key).
    pub fn register_metrics(&self, metrics: &Metrics) {
        let counters = self.lock().metrics();
        metrics.register_device(
            "balloon",
            Box::new(move || serde_json::to_value(counters.snapshot()).unwrap_or(Value::Null)),
        );
    }
}

/// Creates the balloon and attaches it through virtio-mmio.
pub fn attach_balloon(
    vm: &Vm,
    buses: &mut DeviceBuses,
    allocator: &mut MmioAllocator,
    memory: &GuestMemoryMmap,
    config: &BalloonDeviceConfig,
) -> Result<BalloonDevice, BalloonDeviceError> {
    let balloon = Balloon::new(BalloonConfig {
        amount_mib: config.amount_mib,
        deflate_on_oom: config.deflate_on_oom,
        stats_polling_interval_s: config.stats_polling_interval_s,
        free_page_reporting: config.free_page_reporting,
    })?;
    let device = Arc::new(Mutex::new(balloon));
    let mmio = attach_virtio_mmio(vm, buses, allocator, memory, device.clone(), "balloon")?;
    log::info!(
        "balloon at {:#x} irq {}: target {} MiB, statistics every {} s{}",
        mmio.slot.base,
        mmio.slot.irq,
        config.amount_mib,
        config.stats_polling_interval_s,
        if config.free_page_reporting {
            ", free page reporting"
        } else {
            ""
        }
    );
    Ok(BalloonDevice { device, mmio })
}

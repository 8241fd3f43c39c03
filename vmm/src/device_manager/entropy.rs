//! The entropy device (`PUT /entropy`): virtio-rng on the MMIO bus, served on the `io`
//! thread, with its counters as the `entropy` metrics object.

use std::sync::{Arc, Mutex};

use serde_json::Value;
use virtio::rng::{Rng, RngError};
use virtio::GuestMemoryMmap;
use virtio::IoSubscriber;

use super::mmio::{attach_virtio_mmio, MmioAllocator, MmioDevice, MmioError};
use super::DeviceBuses;
use crate::config::EntropyDeviceConfig;
use crate::metrics::Metrics;
use crate::vstate::vm::Vm;

/// Errors while attaching the entropy device.
#[derive(Debug, thiserror::Error)]
pub enum EntropyError {
    #[error(transparent)]
    Device(#[from] RngError),
    #[error(transparent)]
    Mmio(#[from] MmioError),
}

/// The attached entropy device.
#[derive(Debug)]
pub struct EntropyDevice {
    pub device: Arc<Mutex<Rng>>,
    pub mmio: MmioDevice,
}

impl EntropyDevice {
    /// The device as the `io` loop holds it.
    pub fn subscriber(&self) -> IoSubscriber {
        self.device.clone()
    }

    /// Adds the device's counters to `metrics` as `entropy` (Firecracker's key).
    pub fn register_metrics(&self, metrics: &Metrics) {
        let counters = self
            .device
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .metrics();
        metrics.register_device(
            "entropy",
            Box::new(move || serde_json::to_value(counters.snapshot()).unwrap_or(Value::Null)),
        );
    }
}

/// Creates the virtio-rng device and attaches it through virtio-mmio.
pub fn attach_entropy(
    vm: &Vm,
    buses: &mut DeviceBuses,
    allocator: &mut MmioAllocator,
    memory: &GuestMemoryMmap,
    config: &EntropyDeviceConfig,
) -> Result<EntropyDevice, EntropyError> {
    let device = Arc::new(Mutex::new(Rng::new(config.rate_limiter.as_ref())?));
    let mmio = attach_virtio_mmio(vm, buses, allocator, memory, device.clone(), "entropy")?;
    log::info!(
        "entropy device at {:#x} irq {}{}",
        mmio.slot.base,
        mmio.slot.irq,
        if config.rate_limiter.is_some() {
            ", rate limited"
        } else {
            ""
        }
    );
    Ok(EntropyDevice { device, mmio })
}

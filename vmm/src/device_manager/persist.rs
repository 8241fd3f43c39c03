//! Saving and restoring the whole device set (snapshots, issue 11).
//!
//! [`DeviceSet`] is a view of the devices a [`RunningVm`] owns. Saving: the vCPUs are paused
//! by the caller; [`DeviceSet::quiesce`] then locks every device (transport first, then the
//! device, the order the vCPU path uses), drains in-flight work, and keeps the `io` thread
//! away from the devices until the returned guard is dropped: hold it while guest memory is
//! written too, so the rings in the memory file match the saved queue positions.
//!
//! Restoring: the devices are first built from the saved configuration exactly as for a cold
//! boot (same order, so the same MMIO windows and IRQs, the same irqfd/ioeventfd wiring);
//! [`DeviceSet::restore_state`] then checks the layout and every state before it applies any,
//! and re-activates each device the guest had started with its saved queues (the `io` thread
//! picks the queues up through the device's control EventFd, as after a guest activation).
//! On resume, [`DeviceSet::kick_all_queues`].
//!
//! ```ignore
//! // Create (vCPUs paused):
//! let quiet = vm.devices().quiesce();
//! let devices: DeviceStates = quiet.save_state();
//! // ... write the memory file ...
//! drop(quiet);
//! // Load (devices built from the saved configuration), then resume:
//! vm.devices().restore_state(&devices)?;
//! vm.devices().kick_all_queues()?;
//! ```
//!
//! Seccomp: saving and kicking use only what the VMM thread's filter already allows (futex,
//! eventfd writes, `io_uring_enter` to drain async requests). Restoring duplicates EventFds
//! and sets tap offloads (`TUNSETOFFLOAD`) like the builder does, so it runs where the builder
//! runs, before the VMM thread's own filter is installed.

use std::sync::{Arc, Mutex, MutexGuard};

use devices::legacy::persist::{I8042State, LegacyStateError, SerialConsoleState};
use devices::legacy::{SerialConsole, I8042};
use serde::{Deserialize, Serialize};
use virtio::balloon::{Balloon, BalloonState};
use virtio::block::{Block, BlockState};
use virtio::net::{Net, NetState};
use virtio::rng::{Rng, RngState};
use virtio::vsock::{Vsock, VsockState};
use virtio::{MmioTransport, MmioTransportState, TransportStateError, VirtioPersist};

use super::balloon::BalloonDevice;
use super::block::BlockDevice;
use super::entropy::EntropyDevice;
use super::legacy::LegacyDevices;
use super::mmio::{MmioDevice, MmioSlot};
use super::net::NetDevice;
use super::vsock::VsockDevice;
use crate::builder::RunningVm;

/// Where a virtio device sat on the MMIO bus.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MmioSlotState {
    pub base: u64,
    pub irq: u32,
}

impl From<MmioSlot> for MmioSlotState {
    fn from(s: MmioSlot) -> Self {
        MmioSlotState {
            base: s.base,
            irq: s.irq,
        }
    }
}

/// One virtio-mmio device: its configuration id, its place, the transport registers and the
/// device's own state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VirtioDeviceEntry<S> {
    /// `drive_id` or `iface_id`.
    pub id: String,
    pub slot: MmioSlotState,
    pub transport: MmioTransportState,
    pub device: S,
}

pub type BlockDeviceState = VirtioDeviceEntry<BlockState>;
pub type NetDeviceState = VirtioDeviceEntry<NetState>;
pub type EntropyDeviceState = VirtioDeviceEntry<RngState>;
pub type BalloonDeviceState = VirtioDeviceEntry<BalloonState>;
pub type VsockDeviceState = VirtioDeviceEntry<VsockState>;

/// Every device's saved state, in configuration order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceStates {
    pub serial: SerialConsoleState,
    pub i8042: I8042State,
    pub drives: Vec<BlockDeviceState>,
    pub nets: Vec<NetDeviceState>,
    /// The entropy device (id `entropy`), when configured.
    pub entropy: Option<EntropyDeviceState>,
    /// The balloon (id `balloon`), when configured.
    pub balloon: Option<BalloonDeviceState>,
    /// The vsock device (id `vsock`), when configured.
    pub vsock: Option<VsockDeviceState>,
}

/// Why a saved device set was refused or could not be applied; each names the device and
/// the field.
#[derive(Debug, thiserror::Error)]
pub enum DevicePersistError {
    #[error("devices.{kind}: {got} saved, the configuration has {expected}")]
    Count {
        kind: &'static str,
        got: usize,
        expected: usize,
    },
    #[error("devices.{kind}[{index}].id: `{got}` saved, the configuration has `{expected}` at this position")]
    Id {
        kind: &'static str,
        index: usize,
        got: String,
        expected: String,
    },
    #[error("devices.{kind}[{id}].slot: saved at {saved_base:#x} irq {saved_irq}, built at {base:#x} irq {irq}")]
    Slot {
        kind: &'static str,
        id: String,
        saved_base: u64,
        saved_irq: u32,
        base: u64,
        irq: u32,
    },
    #[error("devices.{0}")]
    Legacy(#[from] LegacyStateError),
    #[error("devices.{kind}[{id}].{source}")]
    Device {
        kind: &'static str,
        id: String,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("devices.{kind}[{id}].{source}")]
    Transport {
        kind: &'static str,
        id: String,
        source: TransportStateError,
    },
    #[error("devices.{kind}[{id}]: cannot notify the queues: {source}")]
    Kick {
        kind: &'static str,
        id: String,
        source: std::io::Error,
    },
}

fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// One virtio device of the set, whatever its type.
struct VirtioHandle<'a, D> {
    kind: &'static str,
    id: &'a str,
    slot: MmioSlot,
    transport: &'a Arc<Mutex<MmioTransport>>,
    device: &'a Arc<Mutex<D>>,
}

impl<'a, D> VirtioHandle<'a, D> {
    /// The one device of its kind a VM can have: its id is its kind.
    fn single(kind: &'static str, mmio: &'a MmioDevice, device: &'a Arc<Mutex<D>>) -> Self {
        VirtioHandle {
            kind,
            id: kind,
            slot: mmio.slot,
            transport: &mmio.transport,
            device,
        }
    }
}

/// A virtio device locked for saving (transport, then device).
struct Locked<'a, D> {
    id: &'a str,
    slot: MmioSlot,
    transport: MutexGuard<'a, MmioTransport>,
    device: MutexGuard<'a, D>,
}

impl<'a, D: VirtioPersist> VirtioHandle<'a, D> {
    fn lock_and_quiesce(&self) -> Locked<'a, D> {
        let transport = lock(self.transport);
        let mut device = lock(self.device);
        device.quiesce();
        Locked {
            id: self.id,
            slot: self.slot,
            transport,
            device,
        }
    }

    /// Checks the saved entry against this device (position, id, slot, device state and
    /// transport state); `apply` then restores it.
    fn restore(
        &self,
        index: usize,
        entry: &VirtioDeviceEntry<D::State>,
        apply: bool,
    ) -> Result<(), DevicePersistError> {
        if entry.id != self.id {
            return Err(DevicePersistError::Id {
                kind: self.kind,
                index,
                got: entry.id.clone(),
                expected: self.id.to_owned(),
            });
        }
        if entry.slot != MmioSlotState::from(self.slot) {
            return Err(DevicePersistError::Slot {
                kind: self.kind,
                id: self.id.to_owned(),
                saved_base: entry.slot.base,
                saved_irq: entry.slot.irq,
                base: self.slot.base,
                irq: self.slot.irq,
            });
        }
        let device_err = |e: D::Error| DevicePersistError::Device {
            kind: self.kind,
            id: self.id.to_owned(),
            source: Box::new(e),
        };
        let transport_err = |source| DevicePersistError::Transport {
            kind: self.kind,
            id: self.id.to_owned(),
            source,
        };
        let mut transport = lock(self.transport);
        let mut device = lock(self.device);
        let virtio = D::virtio_state(&entry.device);
        if apply {
            device.restore_state(&entry.device).map_err(device_err)?;
            transport
                .restore_state(&entry.transport, &mut *device, virtio)
                .map_err(transport_err)?;
        } else {
            device.validate_state(&entry.device).map_err(device_err)?;
            transport
                .validate_state(&entry.transport, &*device, virtio)
                .map_err(transport_err)?;
        }
        Ok(())
    }

    fn kick(&self) -> Result<usize, DevicePersistError> {
        lock(self.transport)
            .kick()
            .map_err(|source| DevicePersistError::Kick {
                kind: self.kind,
                id: self.id.to_owned(),
                source,
            })
    }
}

impl<D: VirtioPersist> Locked<'_, D> {
    fn save(&self) -> VirtioDeviceEntry<D::State> {
        VirtioDeviceEntry {
            id: self.id.to_owned(),
            slot: self.slot.into(),
            transport: self.transport.save_state(),
            device: self.device.save_state(),
        }
    }
}

/// The devices of one VM, borrowed from their owner.
#[derive(Debug, Clone, Copy)]
pub struct DeviceSet<'a> {
    pub legacy: &'a LegacyDevices,
    pub drives: &'a [BlockDevice],
    pub nets: &'a [NetDevice],
    pub entropy: Option<&'a EntropyDevice>,
    pub balloon: Option<&'a BalloonDevice>,
    pub vsock: Option<&'a VsockDevice>,
}

/// Every device locked and drained; the `io` thread cannot touch a device until this is
/// dropped. Do not wait for the `io` thread (e.g. hot-plug) while holding it.
pub struct QuiescedDevices<'a> {
    serial: MutexGuard<'a, SerialConsole>,
    i8042: MutexGuard<'a, I8042>,
    drives: Vec<Locked<'a, Block>>,
    nets: Vec<Locked<'a, Net>>,
    entropy: Option<Locked<'a, Rng>>,
    balloon: Option<Locked<'a, Balloon>>,
    vsock: Option<Locked<'a, Vsock>>,
}

impl std::fmt::Debug for QuiescedDevices<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuiescedDevices")
            .field("drives", &self.drives.len())
            .field("nets", &self.nets.len())
            .finish()
    }
}

impl QuiescedDevices<'_> {
    /// The state of every device, consistent with guest memory while this guard lives.
    pub fn save_state(&self) -> DeviceStates {
        DeviceStates {
            serial: self.serial.save_state(),
            i8042: self.i8042.save_state(),
            drives: self.drives.iter().map(Locked::save).collect(),
            nets: self.nets.iter().map(Locked::save).collect(),
            entropy: self.entropy.as_ref().map(Locked::save),
            balloon: self.balloon.as_ref().map(Locked::save),
            vsock: self.vsock.as_ref().map(Locked::save),
        }
    }
}

impl<'a> DeviceSet<'a> {
    fn drive_handles(&self) -> impl Iterator<Item = VirtioHandle<'a, Block>> {
        self.drives.iter().map(|d| VirtioHandle {
            kind: "drives",
            id: &d.drive_id,
            slot: d.mmio.slot,
            transport: &d.mmio.transport,
            device: &d.device,
        })
    }

    fn net_handles(&self) -> impl Iterator<Item = VirtioHandle<'a, Net>> {
        self.nets.iter().map(|n| VirtioHandle {
            kind: "network-interfaces",
            id: &n.iface_id,
            slot: n.mmio.slot,
            transport: &n.mmio.transport,
            device: &n.device,
        })
    }

    fn entropy_handle(&self) -> Option<VirtioHandle<'a, Rng>> {
        self.entropy
            .map(|e| VirtioHandle::single("entropy", &e.mmio, &e.device))
    }

    fn balloon_handle(&self) -> Option<VirtioHandle<'a, Balloon>> {
        self.balloon
            .map(|b| VirtioHandle::single("balloon", &b.mmio, &b.device))
    }

    fn vsock_handle(&self) -> Option<VirtioHandle<'a, Vsock>> {
        self.vsock
            .map(|v| VirtioHandle::single("vsock", &v.mmio, &v.device))
    }

    /// Locks every device and drains what is in flight (call with the vCPUs paused). The
    /// guard keeps the `io` thread away until dropped.
    pub fn quiesce(&self) -> QuiescedDevices<'a> {
        QuiescedDevices {
            serial: lock(&self.legacy.serial),
            i8042: lock(&self.legacy.i8042),
            drives: self.drive_handles().map(|h| h.lock_and_quiesce()).collect(),
            nets: self.net_handles().map(|h| h.lock_and_quiesce()).collect(),
            entropy: self.entropy_handle().map(|h| h.lock_and_quiesce()),
            balloon: self.balloon_handle().map(|h| h.lock_and_quiesce()),
            vsock: self.vsock_handle().map(|h| h.lock_and_quiesce()),
        }
    }

    /// Quiesces, saves, and lets the devices go again. Prefer [`Self::quiesce`] when guest
    /// memory is written after this: the `io` thread may move the rings meanwhile.
    pub fn save_state(&self) -> DeviceStates {
        self.quiesce().save_state()
    }

    /// Applies `states` to devices freshly built from the saved configuration. Everything is
    /// checked first (device counts, ids, MMIO windows, IRQs, every field of every state);
    /// only then is anything applied, so a refused state leaves the devices as built.
    pub fn restore_state(&self, states: &DeviceStates) -> Result<(), DevicePersistError> {
        self.restore_pass(states, false)?;
        self.restore_pass(states, true)
    }

    fn restore_pass(&self, states: &DeviceStates, apply: bool) -> Result<(), DevicePersistError> {
        let count = |kind, got, expected| {
            if got == expected {
                Ok(())
            } else {
                Err(DevicePersistError::Count {
                    kind,
                    got,
                    expected,
                })
            }
        };
        count("drives", states.drives.len(), self.drives.len())?;
        count("network-interfaces", states.nets.len(), self.nets.len())?;
        let entropy = self.entropy_handle();
        let balloon = self.balloon_handle();
        let vsock = self.vsock_handle();
        count(
            "vsock",
            usize::from(states.vsock.is_some()),
            usize::from(vsock.is_some()),
        )?;
        count(
            "entropy",
            usize::from(states.entropy.is_some()),
            usize::from(entropy.is_some()),
        )?;
        count(
            "balloon",
            usize::from(states.balloon.is_some()),
            usize::from(balloon.is_some()),
        )?;
        if apply {
            lock(&self.legacy.serial).restore_state(&states.serial)?;
            lock(&self.legacy.i8042).restore_state(&states.i8042)?;
        } else {
            states.serial.validate()?;
            states.i8042.validate()?;
        }
        for (index, (h, s)) in self.drive_handles().zip(&states.drives).enumerate() {
            h.restore(index, s, apply)?;
        }
        for (index, (h, s)) in self.net_handles().zip(&states.nets).enumerate() {
            h.restore(index, s, apply)?;
        }
        if let (Some(h), Some(s)) = (entropy, &states.entropy) {
            h.restore(0, s, apply)?;
        }
        if let (Some(h), Some(s)) = (balloon, &states.balloon) {
            h.restore(0, s, apply)?;
        }
        if let (Some(h), Some(s)) = (vsock, &states.vsock) {
            h.restore(0, s, apply)?;
        }
        Ok(())
    }

    /// On resume after a restore: notifies every queue of every live virtio device and
    /// re-raises pending interrupts. Returns the number of queues notified.
    pub fn kick_all_queues(&self) -> Result<usize, DevicePersistError> {
        let mut n = 0;
        for h in self.drive_handles() {
            n += h.kick()?;
        }
        for h in self.net_handles() {
            n += h.kick()?;
        }
        if let Some(h) = self.entropy_handle() {
            n += h.kick()?;
        }
        if let Some(h) = self.balloon_handle() {
            n += h.kick()?;
        }
        if let Some(h) = self.vsock_handle() {
            n += h.kick()?;
        }
        Ok(n)
    }
}

impl RunningVm {
    /// The VM's devices, for saving and restoring them.
    pub fn devices(&self) -> DeviceSet<'_> {
        DeviceSet {
            legacy: &self.legacy,
            drives: &self.drives,
            nets: &self.nets,
            entropy: self.entropy.as_ref(),
            balloon: self.balloon.as_ref(),
            vsock: self.vsock.as_ref(),
        }
    }
}

#[cfg(test)]
#[path = "persist_tests.rs"]
mod tests;

//! The VM-wide KVM state: kvmclock, the PIT and the interrupt controllers (both PICs and
//! the IOAPIC), as plain data.

use kvm_bindings::{
    kvm_clock_data, kvm_irqchip, kvm_pit_state2, KVM_CLOCK_REALTIME, KVM_IRQCHIP_IOAPIC,
    KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE,
};
use kvm_ioctls::VmFd;
use serde::{Deserialize, Serialize};

/// Saved VM-wide state.
#[derive(Clone, Serialize, Deserialize)]
pub struct VmState {
    pub clock: kvm_clock_data,
    pub pit: kvm_pit_state2,
    pub pic_master: kvm_irqchip,
    pub pic_slave: kvm_irqchip,
    pub ioapic: kvm_irqchip,
}

impl std::fmt::Debug for VmState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmState")
            .field("clock_ns", &self.clock.clock)
            .field("clock_flags", &self.clock.flags)
            .finish_non_exhaustive()
    }
}

/// Errors while saving or restoring the VM state.
#[derive(Debug, thiserror::Error)]
pub enum VmStateError {
    #[error("{what} failed: {source}")]
    Kvm {
        what: &'static str,
        source: kvm_ioctls::Error,
    },
    #[error("invalid VM state: {0}")]
    Invalid(String),
}

fn err(what: &'static str) -> impl Fn(kvm_ioctls::Error) -> VmStateError {
    move |source| VmStateError::Kvm { what, source }
}

fn get_chip(fd: &VmFd, chip_id: u32) -> Result<kvm_irqchip, VmStateError> {
    let mut chip = kvm_irqchip {
        chip_id,
        ..Default::default()
    };
    fd.get_irqchip(&mut chip).map_err(err("KVM_GET_IRQCHIP"))?;
    Ok(chip)
}

/// Reads the VM state; the vCPUs must be paused.
pub fn save_vm(fd: &VmFd) -> Result<VmState, VmStateError> {
    Ok(VmState {
        clock: fd.get_clock().map_err(err("KVM_GET_CLOCK"))?,
        pit: fd.get_pit2().map_err(err("KVM_GET_PIT2"))?,
        pic_master: get_chip(fd, KVM_IRQCHIP_PIC_MASTER)?,
        pic_slave: get_chip(fd, KVM_IRQCHIP_PIC_SLAVE)?,
        ioapic: get_chip(fd, KVM_IRQCHIP_IOAPIC)?,
    })
}

impl VmState {
    pub fn validate(&self) -> Result<(), VmStateError> {
        for (chip, want) in [
            (&self.pic_master, KVM_IRQCHIP_PIC_MASTER),
            (&self.pic_slave, KVM_IRQCHIP_PIC_SLAVE),
            (&self.ioapic, KVM_IRQCHIP_IOAPIC),
        ] {
            if chip.chip_id != want {
                return Err(VmStateError::Invalid(format!(
                    "interrupt controller {want} saved with id {}",
                    chip.chip_id
                )));
            }
        }
        Ok(())
    }
}

/// Writes the VM state into a VM whose vCPUs have not run. With `clock_realtime`, kvmclock
/// is advanced by the wall-clock time since the snapshot (KVM_CLOCK_REALTIME, when the
/// snapshot recorded the real time); otherwise it continues from where it stopped.
pub fn restore_vm(fd: &VmFd, state: &VmState, clock_realtime: bool) -> Result<(), VmStateError> {
    state.validate()?;
    fd.set_pit2(&state.pit).map_err(err("KVM_SET_PIT2"))?;
    for chip in [&state.pic_master, &state.pic_slave, &state.ioapic] {
        fd.set_irqchip(chip).map_err(err("KVM_SET_IRQCHIP"))?;
    }
    let mut clock = kvm_clock_data {
        clock: state.clock.clock,
        ..Default::default()
    };
    if clock_realtime {
        if state.clock.flags & KVM_CLOCK_REALTIME == 0 {
            return Err(VmStateError::Invalid(
                "clock_realtime: the snapshot did not record the real time (its host KVM has no \
                 KVM_CLOCK_REALTIME)"
                    .into(),
            ));
        }
        clock.flags = KVM_CLOCK_REALTIME;
        clock.realtime = state.clock.realtime;
    }
    fd.set_clock(&clock).map_err(err("KVM_SET_CLOCK"))?;
    Ok(())
}

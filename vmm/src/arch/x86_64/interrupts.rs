//! Local APIC set-up: LINT0 delivers ExtINT (the PIC through the APIC), LINT1 delivers NMI,
//! as the MP specification's virtual-wire mode expects.

use kvm_bindings::kvm_lapic_state;
use kvm_ioctls::VcpuFd;

const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

/// Errors while programming the LAPIC.
#[derive(Debug, thiserror::Error)]
pub enum LapicError {
    #[error("KVM_GET_LAPIC failed: {0}")]
    Get(kvm_ioctls::Error),
    #[error("KVM_SET_LAPIC failed: {0}")]
    Set(kvm_ioctls::Error),
}

fn get_reg(lapic: &kvm_lapic_state, offset: usize) -> u32 {
    let mut bytes = [0u8; 4];
    for (i, b) in bytes.iter_mut().enumerate() {
        *b = lapic.regs[offset + i] as u8;
    }
    u32::from_le_bytes(bytes)
}

fn set_reg(lapic: &mut kvm_lapic_state, offset: usize, value: u32) {
    for (i, b) in value.to_le_bytes().iter().enumerate() {
        lapic.regs[offset + i] = *b as _;
    }
}

/// Replaces the delivery mode (bits 8-10) of an LVT entry.
fn with_delivery_mode(reg: u32, mode: u32) -> u32 {
    (reg & !0x700) | (mode << 8)
}

/// Programs LINT0 = ExtINT and LINT1 = NMI in `lapic`.
pub fn set_lint_modes(lapic: &mut kvm_lapic_state) {
    let lvt0 = get_reg(lapic, APIC_LVT0);
    set_reg(lapic, APIC_LVT0, with_delivery_mode(lvt0, APIC_MODE_EXTINT));
    let lvt1 = get_reg(lapic, APIC_LVT1);
    set_reg(lapic, APIC_LVT1, with_delivery_mode(lvt1, APIC_MODE_NMI));
}

/// Reads, adjusts and writes back the vCPU's LAPIC.
pub fn setup_lapic(vcpu: &VcpuFd) -> Result<(), LapicError> {
    let mut lapic = vcpu.get_lapic().map_err(LapicError::Get)?;
    set_lint_modes(&mut lapic);
    vcpu.set_lapic(&lapic).map_err(LapicError::Set)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lint0_is_extint_and_lint1_is_nmi() {
        let mut lapic = kvm_lapic_state::default();
        set_reg(&mut lapic, APIC_LVT0, 0x0001_0700); // masked, some mode
        set_lint_modes(&mut lapic);
        assert_eq!(get_reg(&lapic, APIC_LVT0), 0x0001_0700);
        assert_eq!((get_reg(&lapic, APIC_LVT0) >> 8) & 7, APIC_MODE_EXTINT);
        assert_eq!((get_reg(&lapic, APIC_LVT1) >> 8) & 7, APIC_MODE_NMI);
    }
}

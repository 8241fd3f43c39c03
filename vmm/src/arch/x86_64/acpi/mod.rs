//! A hardware-reduced ACPI platform: RSDP, XSDT, FADT, MADT and DSDT in the BIOS area below
//! 1 MiB, where a guest that is handed no RSDP address still finds it by scanning.
//!
//! Hardware-reduced ACPI needs no PM timer, no GPE blocks and no SCI: the FADT points at a
//! sleep control/status register pair for power-off and at the i8042 for reset, and device
//! events (the VM generation ID's change notification) arrive through a Generic Event Device.
//! The MP table stays for guests booted with `acpi=off`; both describe the same machine.

mod dsdt;

use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::madt::{
    EnabledStatus, IoApic, LocalInterruptController, ProcessorLocalApic, MADT,
};
use acpi_tables::rsdp::Rsdp;
use acpi_tables::xsdt::XSDT;
use acpi_tables::Aml;
use devices::legacy::{ACPI_SLEEP_PORT_BASE, I8042_PORT_BASE};
use virtio::GuestMemoryMmap;
use vm_memory::{Bytes, GuestAddress};

use super::layout::{APIC_BASE, IOAPIC_BASE};
use super::mptable::ioapic_id;

/// Where the RSDP goes: the start of the BIOS read-only area, inside the range a guest scans.
pub const RSDP_ADDR: u64 = 0x000e_0000;
/// The tables end below this address.
pub const TABLES_END: u64 = 0x000f_f000;
/// The VM generation ID's 16 bytes: a page of their own after the tables, in the BIOS area
/// the E820 map does not give the guest as RAM.
pub const VMGENID_ADDR: u64 = 0x000f_f000;

const OEM_ID: [u8; 6] = *b"XENIA ";
const OEM_TABLE_ID: [u8; 8] = *b"XENIAVM ";
const OEM_REVISION: u32 = 1;
/// FADT IAPC_BOOT_ARCH: an i8042 is present (Linux drops its keyboard driver, and with it
/// Ctrl-Alt-Del, without this) and there is no VGA to probe.
const BOOT_ARCH_8042: u16 = 1 << 1;
const BOOT_ARCH_NO_VGA: u16 = 1 << 2;
/// The i8042 command that resets the machine: the FADT's reset register points there.
const I8042_RESET_VALUE: u8 = 0xfe;
const I8042_COMMAND_PORT: u64 = I8042_PORT_BASE + 4;
const TABLE_ALIGN: u64 = 16;

/// Errors while placing the tables.
#[derive(Debug, thiserror::Error)]
pub enum AcpiError {
    #[error("the ACPI tables ({size} bytes from {RSDP_ADDR:#x}) do not fit below {TABLES_END:#x}")]
    TooLarge { size: u64 },
    #[error("cannot write the ACPI tables to guest memory: {0}")]
    Write(vm_memory::GuestMemoryError),
}

/// One virtio-mmio device as the DSDT describes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MmioDeviceInfo {
    pub base: u64,
    pub size: u64,
    pub irq: u32,
}

/// What the tables describe.
#[derive(Debug, Clone)]
pub struct Platform {
    pub vcpu_count: u8,
    pub virtio: Vec<MmioDeviceInfo>,
    /// The Generic Event Device's interrupt line.
    pub ged_irq: u32,
    /// Guest address of the VM generation ID.
    pub vmgenid_addr: u64,
}

/// The tables, each with its guest address, the RSDP first.
pub fn build(platform: &Platform) -> Result<Vec<(u64, Vec<u8>)>, AcpiError> {
    let mut next = align(RSDP_ADDR + Rsdp::len() as u64);
    let mut place = |bytes: Vec<u8>| {
        let addr = next;
        next = align(addr + bytes.len() as u64);
        (addr, bytes)
    };
    let dsdt = place(dsdt::build(platform));
    let fadt = place(aml_bytes(&fadt(dsdt.0)));
    let madt = place(aml_bytes(&madt(platform.vcpu_count)));
    let mut xsdt = XSDT::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    xsdt.add_entry(fadt.0);
    xsdt.add_entry(madt.0);
    let xsdt = place(aml_bytes(&xsdt));
    if next > TABLES_END {
        return Err(AcpiError::TooLarge {
            size: next - RSDP_ADDR,
        });
    }
    let rsdp = (RSDP_ADDR, aml_bytes(&Rsdp::new(OEM_ID, xsdt.0)));
    Ok(vec![rsdp, dsdt, fadt, madt, xsdt])
}

/// Writes the tables into guest memory; returns the RSDP's address for the boot protocol.
pub fn write_tables(mem: &GuestMemoryMmap, platform: &Platform) -> Result<u64, AcpiError> {
    for (addr, bytes) in build(platform)? {
        mem.write_slice(&bytes, GuestAddress(addr))
            .map_err(AcpiError::Write)?;
    }
    Ok(RSDP_ADDR)
}

fn align(addr: u64) -> u64 {
    addr.next_multiple_of(TABLE_ALIGN)
}

fn aml_bytes(table: &dyn Aml) -> Vec<u8> {
    let mut bytes = Vec::new();
    table.to_aml_bytes(&mut bytes);
    bytes
}

fn io_register(port: u64) -> GAS {
    GAS::new(AddressSpace::SystemIo, 8, 0, AccessSize::ByteAccess, port)
}

fn fadt(dsdt_addr: u64) -> acpi_tables::fadt::FADT {
    let mut fadt = FADTBuilder::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION)
        .dsdt_64(dsdt_addr)
        .flag(Flags::HwReducedAcpi)
        .flag(Flags::ResetRegSup)
        .flag(Flags::PwrButton)
        .flag(Flags::SlpButton);
    fadt.iapc_boot_arch = (BOOT_ARCH_8042 | BOOT_ARCH_NO_VGA).into();
    fadt.reset_reg = io_register(I8042_COMMAND_PORT);
    fadt.reset_value = I8042_RESET_VALUE;
    fadt.sleep_control_reg = io_register(ACPI_SLEEP_PORT_BASE);
    fadt.sleep_status_reg = io_register(ACPI_SLEEP_PORT_BASE + 1);
    fadt.hypervisor_vendor_identity = u64::from_le_bytes(*b"XENIAVMM").into();
    fadt.finalize()
}

fn madt(vcpu_count: u8) -> MADT {
    let mut madt = MADT::new(
        OEM_ID,
        OEM_TABLE_ID,
        OEM_REVISION,
        LocalInterruptController::Address(APIC_BASE as u32),
    );
    for cpu in 0..vcpu_count {
        madt.add_structure(ProcessorLocalApic::new(cpu, cpu, EnabledStatus::Enabled));
    }
    // ISA IRQs map one to one onto IOAPIC pins, as in the MP table: no source overrides.
    madt.add_structure(IoApic::new(ioapic_id(vcpu_count), IOAPIC_BASE as u32, 0));
    madt
}

#[cfg(test)]
mod tests;

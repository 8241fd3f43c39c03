//! Entry state of a vCPU for each boot protocol: registers, segments, paging, FPU.

use kvm_bindings::{kvm_fpu, kvm_regs, kvm_sregs};
use kvm_ioctls::VcpuFd;
use virtio::GuestMemoryMmap;
use vm_memory::{Bytes, GuestAddress};

use super::gdt::{kvm_segment_from_gdt, GDT_LONG_MODE, GDT_PVH};
use super::layout::{
    BOOT_STACK_POINTER, GDT_START, IDT_START, PDE_START, PDPTE_START, PML4_START, ZERO_PAGE_START,
};

const X86_CR0_PE: u64 = 1 << 0;
const X86_CR0_ET: u64 = 1 << 4;
const X86_CR0_PG: u64 = 1 << 31;
const X86_CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;
/// Reserved bit 1 of RFLAGS is always set.
const RFLAGS_RESERVED: u64 = 0x2;
const PAGE_PRESENT_RW: u64 = 0x3;
const PAGE_SIZE_2M: u64 = 0x80;

/// Errors while setting a vCPU's entry state.
#[derive(Debug, thiserror::Error)]
pub enum RegsError {
    #[error("cannot write the {what} at guest address {addr:#x}: {source}")]
    WriteMemory {
        what: &'static str,
        addr: u64,
        source: vm_memory::GuestMemoryError,
    },
    #[error("KVM rejected the vCPU's {what}: {source}")]
    Kvm {
        what: &'static str,
        source: kvm_ioctls::Error,
    },
}

/// How the kernel is entered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryProtocol {
    /// 64-bit Linux boot protocol: long mode, identity paging, zero page in RSI.
    Linux64,
    /// PVH: 32-bit protected mode, paging off, `hvm_start_info` in EBX.
    Pvh,
}

/// Writes the GDT, an empty IDT and (for the 64-bit entry) the identity page tables.
pub fn write_boot_tables(mem: &GuestMemoryMmap, protocol: EntryProtocol) -> Result<(), RegsError> {
    let gdt = match protocol {
        EntryProtocol::Linux64 => &GDT_LONG_MODE,
        EntryProtocol::Pvh => &GDT_PVH,
    };
    for (i, entry) in gdt.iter().enumerate() {
        let addr = GDT_START + (i as u64) * 8;
        write(mem, "GDT", addr, *entry)?;
    }
    write(mem, "IDT", IDT_START, 0u64)?;
    if protocol == EntryProtocol::Linux64 {
        write_identity_page_tables(mem)?;
    }
    Ok(())
}

fn write<T: vm_memory::ByteValued>(
    mem: &GuestMemoryMmap,
    what: &'static str,
    addr: u64,
    val: T,
) -> Result<(), RegsError> {
    mem.write_obj(val, GuestAddress(addr))
        .map_err(|source| RegsError::WriteMemory { what, addr, source })
}

/// Maps the first GiB 1:1 with 2 MiB pages: enough for any kernel's early start-up code.
fn write_identity_page_tables(mem: &GuestMemoryMmap) -> Result<(), RegsError> {
    write(mem, "PML4", PML4_START, PDPTE_START | PAGE_PRESENT_RW)?;
    write(mem, "PDPT", PDPTE_START, PDE_START | PAGE_PRESENT_RW)?;
    let pd: Vec<u8> = (0..512u64)
        .flat_map(|i| ((i << 21) | PAGE_PRESENT_RW | PAGE_SIZE_2M).to_le_bytes())
        .collect();
    mem.write_slice(&pd, GuestAddress(PDE_START))
        .map_err(|source| RegsError::WriteMemory {
            what: "page directory",
            addr: PDE_START,
            source,
        })
}

/// Special registers for `protocol`, starting from the vCPU's current ones.
pub fn entry_sregs(mut sregs: kvm_sregs, protocol: EntryProtocol) -> kvm_sregs {
    let gdt = match protocol {
        EntryProtocol::Linux64 => &GDT_LONG_MODE,
        EntryProtocol::Pvh => &GDT_PVH,
    };
    let code = kvm_segment_from_gdt(gdt[1], 1);
    let data = kvm_segment_from_gdt(gdt[2], 2);
    let tss = kvm_segment_from_gdt(gdt[3], 3);

    sregs.gdt.base = GDT_START;
    sregs.gdt.limit = (std::mem::size_of_val(gdt) - 1) as u16;
    sregs.idt.base = IDT_START;
    sregs.idt.limit = (std::mem::size_of::<u64>() - 1) as u16;
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = tss;

    match protocol {
        EntryProtocol::Linux64 => {
            sregs.cr0 = (sregs.cr0 | X86_CR0_PE | X86_CR0_PG) & !(1 << 30 | 1 << 29);
            sregs.cr3 = PML4_START;
            sregs.cr4 |= X86_CR4_PAE;
            sregs.efer |= EFER_LME | EFER_LMA;
        }
        EntryProtocol::Pvh => {
            sregs.cr0 = X86_CR0_PE | X86_CR0_ET;
            sregs.cr3 = 0;
            sregs.cr4 = 0;
            sregs.efer = 0;
        }
    }
    sregs
}

/// General registers at entry: `entry` in RIP; RSI = zero page (64-bit) or EBX = start_info
/// (PVH, no stack).
pub fn entry_regs(protocol: EntryProtocol, entry: u64, boot_info: u64) -> kvm_regs {
    let mut regs = kvm_regs {
        rflags: RFLAGS_RESERVED,
        rip: entry,
        ..Default::default()
    };
    match protocol {
        EntryProtocol::Linux64 => {
            regs.rsp = BOOT_STACK_POINTER;
            regs.rbp = BOOT_STACK_POINTER;
            regs.rsi = boot_info;
        }
        EntryProtocol::Pvh => regs.rbx = boot_info,
    }
    regs
}

/// The x87/SSE state after reset as firmware leaves it.
pub fn entry_fpu() -> kvm_fpu {
    kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    }
}

/// Sets registers, special registers and FPU on the boot vCPU for `protocol`.
pub fn setup_boot_vcpu(
    vcpu: &VcpuFd,
    protocol: EntryProtocol,
    entry: u64,
    boot_info: u64,
) -> Result<(), RegsError> {
    let kvm = |what| move |source| RegsError::Kvm { what, source };
    vcpu.set_fpu(&entry_fpu()).map_err(kvm("FPU state"))?;
    let sregs = vcpu.get_sregs().map_err(kvm("special registers"))?;
    vcpu.set_sregs(&entry_sregs(sregs, protocol))
        .map_err(kvm("special registers"))?;
    vcpu.set_regs(&entry_regs(protocol, entry, boot_info))
        .map_err(kvm("registers"))?;
    Ok(())
}

/// Where the boot information lives for `protocol` (see [`entry_regs`]).
pub fn default_boot_info(protocol: EntryProtocol) -> u64 {
    match protocol {
        EntryProtocol::Linux64 => ZERO_PAGE_START,
        EntryProtocol::Pvh => super::layout::PVH_INFO_START,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn memory() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
    }

    #[test]
    fn page_tables_map_the_first_gib_with_2m_pages() {
        let mem = memory();
        write_boot_tables(&mem, EntryProtocol::Linux64).unwrap();
        let pml4: u64 = mem.read_obj(GuestAddress(PML4_START)).unwrap();
        assert_eq!(pml4, PDPTE_START | 3);
        let pdpt: u64 = mem.read_obj(GuestAddress(PDPTE_START)).unwrap();
        assert_eq!(pdpt, PDE_START | 3);
        for i in [0u64, 1, 255, 511] {
            let pde: u64 = mem.read_obj(GuestAddress(PDE_START + i * 8)).unwrap();
            assert_eq!(pde, (i << 21) | 0x83);
        }
        let gdt1: u64 = mem.read_obj(GuestAddress(GDT_START + 8)).unwrap();
        assert_eq!(gdt1, GDT_LONG_MODE[1]);
    }

    #[test]
    fn pvh_tables_have_no_paging() {
        let mem = memory();
        write_boot_tables(&mem, EntryProtocol::Pvh).unwrap();
        let pml4: u64 = mem.read_obj(GuestAddress(PML4_START)).unwrap();
        assert_eq!(pml4, 0);
        let gdt1: u64 = mem.read_obj(GuestAddress(GDT_START + 8)).unwrap();
        assert_eq!(gdt1, GDT_PVH[1]);
    }

    #[test]
    fn long_mode_sregs_enable_paging() {
        let s = entry_sregs(kvm_sregs::default(), EntryProtocol::Linux64);
        assert_eq!(s.cr0 & (X86_CR0_PE | X86_CR0_PG), X86_CR0_PE | X86_CR0_PG);
        assert_eq!(s.cr3, PML4_START);
        assert_ne!(s.cr4 & X86_CR4_PAE, 0);
        assert_eq!(s.efer & (EFER_LME | EFER_LMA), EFER_LME | EFER_LMA);
        assert_eq!(s.cs.selector, 0x8);
        assert_eq!(s.cs.l, 1);
    }

    #[test]
    fn pvh_sregs_are_flat_protected_mode() {
        let s = entry_sregs(kvm_sregs::default(), EntryProtocol::Pvh);
        assert_eq!(s.cr0, X86_CR0_PE | X86_CR0_ET);
        assert_eq!((s.cr3, s.cr4, s.efer), (0, 0, 0));
        assert_eq!((s.cs.db, s.cs.l), (1, 0));
        let r = entry_regs(EntryProtocol::Pvh, 0x1234, 0x6000);
        assert_eq!((r.rip, r.rbx, r.rflags), (0x1234, 0x6000, 2));
        let r = entry_regs(EntryProtocol::Linux64, 0x20_0000, ZERO_PAGE_START);
        assert_eq!((r.rsi, r.rsp), (ZERO_PAGE_START, BOOT_STACK_POINTER));
    }
}

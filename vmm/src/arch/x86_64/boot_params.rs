//! Boot information handed to the kernel: the Linux zero page (64-bit boot protocol) or
//! `hvm_start_info` with its memory map (PVH), written with linux-loader's configurators.

use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use virtio::GuestMemoryMmap;
use vm_memory::GuestAddress;

use super::layout::{
    e820_map, E820Entry, CMDLINE_START, PVH_INFO_START, PVH_MEMMAP_START, ZERO_PAGE_START,
};

const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448; // "HdrS"
const KERNEL_LOADER_OTHER: u8 = 0xff;
const KERNEL_MIN_ALIGNMENT: u32 = 0x0100_0000;
const XEN_HVM_START_MAGIC: u32 = 0x336e_c578;
/// `hvm_start_info` is 56 bytes; the module list follows it in the same page.
const PVH_MODLIST_START: u64 = PVH_INFO_START + 0x40;

/// Errors while writing boot information.
#[derive(Debug, thiserror::Error)]
pub enum BootParamsError {
    #[error("the memory map has {0} entries, more than the zero page holds")]
    TooManyE820Entries(usize),
    #[error("cannot write the boot information to guest memory: {0}")]
    Write(#[from] linux_loader::configurator::Error),
}

/// What the kernel needs to know, whatever the protocol.
#[derive(Debug, Clone, Copy, Default)]
pub struct BootInfo {
    pub mem_size: u64,
    /// Length of the command line without its NUL.
    pub cmdline_len: usize,
    /// Guest address and size of the initrd, if any.
    pub initrd: Option<(u64, u64)>,
    /// The bzImage's setup header, to start the zero page from.
    pub setup_header: Option<setup_header>,
    /// Guest address of the ACPI RSDP, handed to the kernel so it need not scan for it.
    pub rsdp: Option<u64>,
}

/// The zero page for the 64-bit boot protocol.
pub fn zero_page(info: &BootInfo) -> Result<boot_params, BootParamsError> {
    let mut params = boot_params::default();
    if let Some(hdr) = info.setup_header {
        params.hdr = hdr;
    }
    params.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    params.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
    params.hdr.header = KERNEL_HDR_MAGIC;
    params.hdr.cmd_line_ptr = CMDLINE_START as u32;
    params.hdr.cmdline_size = info.cmdline_len as u32;
    params.hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT;
    if let Some((addr, size)) = info.initrd {
        params.hdr.ramdisk_image = addr as u32;
        params.hdr.ramdisk_size = size as u32;
    }
    let map = e820_map(info.mem_size);
    if map.len() > params.e820_table.len() {
        return Err(BootParamsError::TooManyE820Entries(map.len()));
    }
    for (slot, e) in params.e820_table.iter_mut().zip(&map) {
        *slot = boot_e820_entry {
            addr: e.addr,
            size: e.size,
            r#type: e.kind as u32,
        };
    }
    params.e820_entries = map.len() as u8;
    params.acpi_rsdp_addr = info.rsdp.unwrap_or(0);
    Ok(params)
}

/// Writes the zero page at [`ZERO_PAGE_START`].
pub fn write_zero_page(mem: &GuestMemoryMmap, info: &BootInfo) -> Result<(), BootParamsError> {
    let params = zero_page(info)?;
    let boot = BootParams::new(&params, GuestAddress(ZERO_PAGE_START));
    LinuxBootConfigurator::write_bootparams(&boot, mem)?;
    Ok(())
}

fn pvh_memmap(map: &[E820Entry]) -> Vec<hvm_memmap_table_entry> {
    map.iter()
        .map(|e| hvm_memmap_table_entry {
            addr: e.addr,
            size: e.size,
            type_: e.kind as u32,
            reserved: 0,
        })
        .collect()
}

/// Writes `hvm_start_info`, its memory map and (with an initrd) its module list.
pub fn write_pvh_info(mem: &GuestMemoryMmap, info: &BootInfo) -> Result<(), BootParamsError> {
    let memmap = pvh_memmap(&e820_map(info.mem_size));
    let mut start_info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC,
        version: 1,
        cmdline_paddr: CMDLINE_START,
        memmap_paddr: PVH_MEMMAP_START,
        memmap_entries: memmap.len() as u32,
        rsdp_paddr: info.rsdp.unwrap_or(0),
        ..Default::default()
    };
    let modules: Vec<hvm_modlist_entry> = info
        .initrd
        .iter()
        .map(|(paddr, size)| hvm_modlist_entry {
            paddr: *paddr,
            size: *size,
            ..Default::default()
        })
        .collect();
    if !modules.is_empty() {
        start_info.nr_modules = modules.len() as u32;
        start_info.modlist_paddr = PVH_MODLIST_START;
    }
    let mut boot = BootParams::new(&start_info, GuestAddress(PVH_INFO_START));
    boot.set_sections(&memmap, GuestAddress(PVH_MEMMAP_START));
    if !modules.is_empty() {
        boot.set_modules(&modules, GuestAddress(PVH_MODLIST_START));
    }
    PvhBootConfigurator::write_bootparams(&boot, mem)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use vm_memory::Bytes;

    use super::*;
    use crate::arch::x86_64::layout::{HIMEM_START, MMIO_HOLE_END, MMIO_HOLE_START};

    const MIB: u64 = 1 << 20;

    #[test]
    fn zero_page_carries_cmdline_initrd_and_e820() {
        let info = BootInfo {
            mem_size: 256 * MIB,
            cmdline_len: 12,
            initrd: Some((0x0f00_0000, 0x1000)),
            setup_header: None,
            rsdp: None,
        };
        let p = zero_page(&info).unwrap();
        assert_eq!({ p.hdr.boot_flag }, 0xaa55);
        assert_eq!({ p.hdr.header }, KERNEL_HDR_MAGIC);
        assert_eq!({ p.hdr.type_of_loader }, 0xff);
        assert_eq!({ p.hdr.cmd_line_ptr }, CMDLINE_START as u32);
        assert_eq!({ p.hdr.cmdline_size }, 12);
        assert_eq!({ p.hdr.ramdisk_image }, 0x0f00_0000);
        assert_eq!({ p.hdr.ramdisk_size }, 0x1000);
        assert_eq!(p.e820_entries, 2);
        let e1 = p.e820_table[1];
        assert_eq!(
            ({ e1.addr }, { e1.size }, { e1.r#type }),
            (HIMEM_START, 255 * MIB, 1)
        );
    }

    #[test]
    fn zero_page_e820_skips_the_hole() {
        let info = BootInfo {
            mem_size: 4096 * MIB,
            rsdp: Some(0xe_0000),
            ..Default::default()
        };
        let p = zero_page(&info).unwrap();
        assert_eq!(p.e820_entries, 3);
        assert_eq!({ p.acpi_rsdp_addr }, 0xe_0000);
        let (e1, e2) = (p.e820_table[1], p.e820_table[2]);
        assert_eq!({ e1.addr } + { e1.size }, MMIO_HOLE_START);
        assert_eq!({ e2.addr }, MMIO_HOLE_END);
    }

    #[test]
    fn pvh_start_info_points_at_memmap_and_modules() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), (16 * MIB) as usize)]).unwrap();
        let info = BootInfo {
            mem_size: 16 * MIB,
            cmdline_len: 5,
            initrd: Some((0x80_0000, 0x2000)),
            setup_header: None,
            rsdp: Some(0xe_0000),
        };
        write_pvh_info(&mem, &info).unwrap();
        let si: hvm_start_info = mem.read_obj(GuestAddress(PVH_INFO_START)).unwrap();
        assert_eq!(si.magic, XEN_HVM_START_MAGIC);
        assert_eq!(si.rsdp_paddr, 0xe_0000);
        assert_eq!(si.memmap_entries, 2);
        assert_eq!(si.cmdline_paddr, CMDLINE_START);
        assert_eq!(si.nr_modules, 1);
        let m: hvm_modlist_entry = mem.read_obj(GuestAddress(si.modlist_paddr)).unwrap();
        assert_eq!((m.paddr, m.size), (0x80_0000, 0x2000));
        let e: hvm_memmap_table_entry = mem.read_obj(GuestAddress(PVH_MEMMAP_START + 24)).unwrap();
        assert_eq!((e.addr, e.size, e.type_), (HIMEM_START, 15 * MIB, 1));
    }
}

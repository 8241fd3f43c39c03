//! What the VMM told us at entry, copied out of the zero page (64-bit Linux
//! boot protocol) or hvm_start_info (PVH) into our own memory at once, so low
//! memory is free to reuse (e.g. for the AP trampoline) afterwards.

use crate::e820::{E820Entry, MAX_E820};
use crate::mem::{read_phys, MAPPED_LIMIT};
use crate::sync::BootCell;

/// Longest command line we keep (Linux's x86 COMMAND_LINE_SIZE is 2048).
pub const MAX_CMDLINE: usize = 4096;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum EntryKind {
    Linux64,
    Pvh,
}

impl EntryKind {
    pub fn name(self) -> &'static str {
        match self {
            EntryKind::Linux64 => "linux64",
            EntryKind::Pvh => "pvh",
        }
    }
}

/// Everything the probe needs from the boot protocol.
pub struct BootInfo {
    pub entry: EntryKind,
    pub info_addr: u64,
    pub e820: [E820Entry; MAX_E820],
    pub e820_len: usize,
    /// Why there is no memory map, when there is none.
    pub e820_missing: Option<&'static str>,
    pub cmdline: [u8; MAX_CMDLINE],
    pub cmdline_len: usize,
    /// (address, size) of the initrd / first PVH module.
    pub initrd: Option<(u64, u64)>,
    /// The ACPI RSDP address the boot protocol handed over (0: none).
    pub rsdp: u64,
}

impl BootInfo {
    /// Which boot-protocol structure carried the boot information.
    pub fn entry_protocol_name(&self) -> &'static str {
        match self.entry {
            EntryKind::Linux64 => "zeropage",
            EntryKind::Pvh => "pvh",
        }
    }
}

static BOOT: BootCell<BootInfo> = BootCell::new(BootInfo {
    entry: EntryKind::Linux64,
    info_addr: 0,
    e820: [E820Entry::EMPTY; MAX_E820],
    e820_len: 0,
    e820_missing: None,
    cmdline: [0; MAX_CMDLINE],
    cmdline_len: 0,
    initrd: None,
    rsdp: 0,
});

/// The boot information, read-only once `capture` has run.
pub fn get() -> &'static BootInfo {
    // SAFETY: BOOT is written only by `capture`, once, before anyone calls
    // `get`; afterwards it is never mutated, so shared references are sound.
    unsafe { &*BOOT.as_ptr() }
}

/// Copies the boot protocol's data into `BOOT`.
pub fn capture(entry: EntryKind, info_addr: u64) {
    BOOT.with(|boot| {
        boot.entry = entry;
        boot.info_addr = info_addr;
        if info_addr == 0 || info_addr >= MAPPED_LIMIT - 4096 {
            boot.e820_missing = Some("bad-boot-info-pointer");
            return;
        }
        match entry {
            EntryKind::Linux64 => capture_zero_page(boot, info_addr),
            EntryKind::Pvh => capture_pvh(boot, info_addr),
        }
    });
}

// boot_params offsets (Linux Documentation/arch/x86/zero-page.rst, boot.rst).
const BP_ACPI_RSDP_ADDR: u64 = 0x070;
const BP_EXT_RAMDISK_IMAGE: u64 = 0x0c0;
const BP_EXT_RAMDISK_SIZE: u64 = 0x0c4;
const BP_EXT_CMD_LINE_PTR: u64 = 0x0c8;
const BP_E820_ENTRIES: u64 = 0x1e8;
const BP_RAMDISK_IMAGE: u64 = 0x218;
const BP_RAMDISK_SIZE: u64 = 0x21c;
const BP_CMD_LINE_PTR: u64 = 0x228;
const BP_E820_TABLE: u64 = 0x2d0;
const BP_E820_TABLE_MAX: usize = 128;

fn capture_zero_page(boot: &mut BootInfo, bp: u64) {
    // SAFETY: bp was checked to lie in mapped memory with a page to spare, and
    // every offset read from it is inside the 4 KiB boot_params.
    let n = unsafe { read_phys::<u8>(bp + BP_E820_ENTRIES) } as usize;
    let n = n.min(BP_E820_TABLE_MAX).min(MAX_E820);
    for i in 0..n {
        let at = bp + BP_E820_TABLE + 20 * i as u64;
        // SAFETY: see above (0x2d0 + 128 * 20 = 0xcd0 < 4096).
        let (addr, size, kind) = unsafe {
            (
                read_phys::<u64>(at),
                read_phys::<u64>(at + 8),
                read_phys::<u32>(at + 16),
            )
        };
        boot.e820[i] = E820Entry { addr, size, kind };
    }
    boot.e820_len = n;
    if n == 0 {
        boot.e820_missing = Some("empty-e820-table");
    }
    // SAFETY: see above.
    let cmd = unsafe {
        read_phys::<u32>(bp + BP_CMD_LINE_PTR) as u64
            | (read_phys::<u32>(bp + BP_EXT_CMD_LINE_PTR) as u64) << 32
    };
    copy_cmdline(boot, cmd);
    // SAFETY: see above.
    boot.rsdp = unsafe { read_phys::<u64>(bp + BP_ACPI_RSDP_ADDR) };
    // SAFETY: see above.
    let (image, size) = unsafe {
        (
            read_phys::<u32>(bp + BP_RAMDISK_IMAGE) as u64
                | (read_phys::<u32>(bp + BP_EXT_RAMDISK_IMAGE) as u64) << 32,
            read_phys::<u32>(bp + BP_RAMDISK_SIZE) as u64
                | (read_phys::<u32>(bp + BP_EXT_RAMDISK_SIZE) as u64) << 32,
        )
    };
    if image != 0 && size != 0 {
        boot.initrd = Some((image, size));
    }
}

// hvm_start_info (xen/include/public/arch-x86/hvm/start_info.h).
const PVH_MAGIC: u32 = 0x336e_c578;
const SI_VERSION: u64 = 4;
const SI_NR_MODULES: u64 = 12;
const SI_MODLIST: u64 = 16;
const SI_CMDLINE: u64 = 24;
const SI_RSDP: u64 = 32;
const SI_MEMMAP: u64 = 40;
const SI_MEMMAP_ENTRIES: u64 = 48;
const MEMMAP_ENTRY_SIZE: u64 = 24;

fn capture_pvh(boot: &mut BootInfo, si: u64) {
    // SAFETY: si was checked to be mapped with a page to spare; the
    // structure is 56 bytes.
    let magic = unsafe { read_phys::<u32>(si) };
    if magic != PVH_MAGIC {
        boot.e820_missing = Some("bad-pvh-magic");
        return;
    }
    // SAFETY: see above.
    let (version, nr_modules, modlist, cmd) = unsafe {
        (
            read_phys::<u32>(si + SI_VERSION),
            read_phys::<u32>(si + SI_NR_MODULES),
            read_phys::<u64>(si + SI_MODLIST),
            read_phys::<u64>(si + SI_CMDLINE),
        )
    };
    copy_cmdline(boot, cmd);
    // SAFETY: see above (rsdp_paddr is part of version 0).
    boot.rsdp = unsafe { read_phys::<u64>(si + SI_RSDP) };
    if nr_modules > 0 && modlist != 0 && modlist < MAPPED_LIMIT - 32 {
        // SAFETY: modlist checked to be mapped; one hvm_modlist_entry is 32 bytes.
        let (paddr, size) = unsafe { (read_phys::<u64>(modlist), read_phys::<u64>(modlist + 8)) };
        if size != 0 {
            boot.initrd = Some((paddr, size));
        }
    }
    if version < 1 {
        boot.e820_missing = Some("pvh-v0-has-no-memmap");
        return;
    }
    // SAFETY: see above (version >= 1 has the memmap fields).
    let (memmap, entries) = unsafe {
        (
            read_phys::<u64>(si + SI_MEMMAP),
            read_phys::<u32>(si + SI_MEMMAP_ENTRIES),
        )
    };
    let n = (entries as usize).min(MAX_E820);
    if memmap == 0 || n == 0 || memmap + n as u64 * MEMMAP_ENTRY_SIZE > MAPPED_LIMIT {
        boot.e820_missing = Some("no-pvh-memmap");
        return;
    }
    for i in 0..n {
        let at = memmap + MEMMAP_ENTRY_SIZE * i as u64;
        // SAFETY: the whole memmap was checked to be mapped above.
        let (addr, size, kind) = unsafe {
            (
                read_phys::<u64>(at),
                read_phys::<u64>(at + 8),
                read_phys::<u32>(at + 16),
            )
        };
        boot.e820[i] = E820Entry { addr, size, kind };
    }
    boot.e820_len = n;
}

fn copy_cmdline(boot: &mut BootInfo, addr: u64) {
    if addr == 0 || addr >= MAPPED_LIMIT - MAX_CMDLINE as u64 {
        return;
    }
    let mut len = 0;
    while len < MAX_CMDLINE - 1 {
        // SAFETY: addr + len stays below MAPPED_LIMIT (checked above).
        let b = unsafe { read_phys::<u8>(addr + len as u64) };
        if b == 0 {
            break;
        }
        boot.cmdline[len] = b;
        len += 1;
    }
    boot.cmdline_len = len;
}

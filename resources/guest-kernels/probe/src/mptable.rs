//! Intel MultiProcessor table: find the floating pointer where Linux looks
//! for it and list the processor entries.

use crate::mem::read_phys;

const MAX_CPUS: usize = 256;

#[derive(Clone, Copy, Debug)]
pub struct Processor {
    pub apic_id: u8,
    pub bsp: bool,
}

pub struct MpTable {
    /// Physical address of the floating pointer structure.
    pub floating_pointer: u64,
    pub lapic_addr: u32,
    pub cpus: [Processor; MAX_CPUS],
    pub cpu_count: usize,
}

impl MpTable {
    /// A made-up table: APIC IDs 0..n-1 at the default LAPIC address.
    pub fn first_n(n: usize) -> MpTable {
        let mut table = MpTable {
            floating_pointer: 0,
            lapic_addr: 0xfee0_0000,
            cpus: [Processor {
                apic_id: 0,
                bsp: false,
            }; MAX_CPUS],
            cpu_count: n.min(MAX_CPUS),
        };
        for (i, cpu) in table.cpus[..table.cpu_count].iter_mut().enumerate() {
            *cpu = Processor {
                apic_id: i as u8,
                bsp: i == 0,
            };
        }
        table
    }
}

#[derive(Clone, Copy, Debug)]
pub enum MpError {
    NoFloatingPointer,
    NoConfigTable,
    BadConfigTable,
}

impl MpError {
    pub fn reason(self) -> &'static str {
        match self {
            MpError::NoFloatingPointer => "no-mp-floating-pointer",
            MpError::NoConfigTable => "no-mp-config-table",
            MpError::BadConfigTable => "bad-mp-config-table",
        }
    }
}

fn checksum_ok(addr: u64, len: u64) -> bool {
    let mut sum: u8 = 0;
    for i in 0..len {
        // SAFETY: callers only pass ranges below 1 MiB or checked table ranges, all mapped.
        sum = sum.wrapping_add(unsafe { read_phys::<u8>(addr + i) });
    }
    sum == 0
}

fn scan(base: u64, len: u64) -> Option<u64> {
    let mut at = base;
    while at + 16 <= base + len {
        // SAFETY: the scanned ranges are below 1 MiB, always mapped.
        if unsafe { read_phys::<[u8; 4]>(at) } == *b"_MP_" && checksum_ok(at, 16) {
            return Some(at);
        }
        at += 16;
    }
    None
}

fn find_floating_pointer() -> Option<u64> {
    // SAFETY: 0x40e (the BDA's EBDA segment) is mapped.
    let ebda = (unsafe { read_phys::<u16>(0x40e) } as u64) << 4;
    let ebda_scan = (0x8_0000..0xa_0000)
        .contains(&ebda)
        .then_some((ebda, 0x400));
    [
        Some((0, 0x400)),
        Some((0x9_fc00, 0x400)),
        ebda_scan,
        Some((0xf_0000, 0x1_0000)),
    ]
    .into_iter()
    .flatten()
    .find_map(|(base, len)| scan(base, len))
}

pub fn parse() -> Result<MpTable, MpError> {
    let fp = find_floating_pointer().ok_or(MpError::NoFloatingPointer)?;
    // SAFETY: fp is below 1 MiB and the pointer structure is 16 bytes.
    let config = unsafe { read_phys::<u32>(fp + 4) } as u64;
    if config == 0 || config >= 0x1_0000_0000 - 0x1_0000 {
        return Err(MpError::NoConfigTable);
    }
    // SAFETY: config is below 4 GiB minus 64 KiB: the header (44 bytes) is mapped.
    let (sig, length, count, lapic) = unsafe {
        (
            read_phys::<[u8; 4]>(config),
            read_phys::<u16>(config + 4),
            read_phys::<u16>(config + 34),
            read_phys::<u32>(config + 36),
        )
    };
    if sig != *b"PCMP" || length < 44 || !checksum_ok(config, length as u64) {
        return Err(MpError::BadConfigTable);
    }
    let mut table = MpTable {
        floating_pointer: fp,
        lapic_addr: lapic,
        cpus: [Processor {
            apic_id: 0,
            bsp: false,
        }; MAX_CPUS],
        cpu_count: 0,
    };
    let end = config + length as u64;
    let mut at = config + 44;
    for _ in 0..count {
        if at >= end {
            return Err(MpError::BadConfigTable);
        }
        // SAFETY: at < end <= config + 64 KiB, inside the mapped range checked above.
        let kind = unsafe { read_phys::<u8>(at) };
        let size = if kind == 0 { 20 } else { 8 };
        if at + size > end {
            return Err(MpError::BadConfigTable);
        }
        if kind == 0 {
            // SAFETY: the 20-byte entry lies inside the table (checked above).
            let (apic_id, flags) = unsafe { (read_phys::<u8>(at + 1), read_phys::<u8>(at + 3)) };
            if flags & 1 != 0 && table.cpu_count < MAX_CPUS {
                table.cpus[table.cpu_count] = Processor {
                    apic_id,
                    bsp: flags & 2 != 0,
                };
                table.cpu_count += 1;
            }
        } else if kind > 4 {
            return Err(MpError::BadConfigTable);
        }
        at += size;
    }
    Ok(table)
}

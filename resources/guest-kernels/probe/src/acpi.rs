//! ACPI as a guest kernel meets it: find the RSDP (from the boot protocol, else by scanning
//! the BIOS area), walk the XSDT, check every checksum, count the MADT's CPUs, and read the
//! few DSDT objects the probe needs (virtio-mmio windows, the VM generation ID, `\_S5`)
//! by looking for their encodings: enough AML for the tables xenia writes, not a parser.

use crate::bootinfo;
use crate::mem::{read_phys, MAPPED_LIMIT};

/// Largest table we read (xenia's DSDT is a few KiB).
const MAX_TABLE: u32 = 64 * 1024;
const MAX_TABLES: usize = 16;

#[derive(Clone, Copy)]
pub struct Table {
    pub signature: [u8; 4],
    pub addr: u64,
    pub len: u32,
}

pub struct Acpi {
    pub rsdp: u64,
    /// "pvh", "zeropage" or "scan".
    pub rsdp_from: &'static str,
    /// The DSDT followed by what the XSDT lists.
    pub tables: [Table; MAX_TABLES],
    pub count: usize,
}

/// Why the tables cannot be used.
pub type AcpiError = &'static str;

fn byte(addr: u64) -> u8 {
    // SAFETY: every caller checks `addr` against MAPPED_LIMIT (identity-mapped memory).
    unsafe { read_phys::<u8>(addr) }
}

fn checksum_ok(addr: u64, len: u64) -> bool {
    (0..len).fold(0u8, |a, i| a.wrapping_add(byte(addr + i))) == 0
}

fn in_memory(addr: u64, len: u64) -> bool {
    addr != 0 && addr.checked_add(len).is_some_and(|end| end <= MAPPED_LIMIT)
}

/// Scans the BIOS area for the RSDP signature on 16-byte boundaries.
pub fn scan_rsdp() -> Option<u64> {
    (0xe_0000u64..0x10_0000)
        .step_by(16)
        .find(|&a| (0..8).all(|i| byte(a + i) == b"RSD PTR "[i as usize]) && checksum_ok(a, 20))
}

fn table_at(addr: u64) -> Result<Table, AcpiError> {
    if !in_memory(addr, 36) {
        return Err("table-outside-memory");
    }
    // SAFETY: the 36-byte header was checked to be mapped.
    let len = unsafe { read_phys::<u32>(addr + 4) };
    if !(36..=MAX_TABLE).contains(&len) || !in_memory(addr, u64::from(len)) {
        return Err("bad-table-length");
    }
    if !checksum_ok(addr, u64::from(len)) {
        return Err("bad-table-checksum");
    }
    let mut signature = [0u8; 4];
    for (i, b) in signature.iter_mut().enumerate() {
        *b = byte(addr + i as u64);
    }
    Ok(Table {
        signature,
        addr,
        len,
    })
}

/// Finds and checks every table.
pub fn load() -> Result<Acpi, AcpiError> {
    let boot = bootinfo::get();
    let (rsdp, rsdp_from) = match boot.rsdp {
        0 => (scan_rsdp().ok_or("no-rsdp")?, "scan"),
        a => (a, boot.entry_protocol_name()),
    };
    if !in_memory(rsdp, 36) || !checksum_ok(rsdp, 20) {
        return Err("bad-rsdp-checksum");
    }
    // SAFETY: the 36-byte RSDP was checked to be mapped.
    let (revision, len, xsdt) = unsafe {
        (
            read_phys::<u8>(rsdp + 15),
            read_phys::<u32>(rsdp + 20),
            read_phys::<u64>(rsdp + 24),
        )
    };
    if revision < 2 || len < 36 || !checksum_ok(rsdp, u64::from(len.min(36))) {
        return Err("bad-rsdp-extended-checksum");
    }
    let x = table_at(xsdt)?;
    if &x.signature != b"XSDT" {
        return Err("no-xsdt");
    }
    let mut acpi = Acpi {
        rsdp,
        rsdp_from,
        tables: [x; MAX_TABLES],
        count: 0,
    };
    let entries = (u64::from(x.len) - 36) / 8;
    for i in 0..entries {
        // SAFETY: inside the XSDT, which table_at checked to be mapped.
        let addr = unsafe { read_phys::<u64>(xsdt + 36 + 8 * i) };
        let t = table_at(addr)?;
        if acpi.count == MAX_TABLES {
            return Err("too-many-tables");
        }
        acpi.tables[acpi.count] = t;
        acpi.count += 1;
        if &t.signature == b"FACP" && t.len >= 148 {
            // SAFETY: X_DSDT lies inside the FADT (offset 140, checked length).
            let dsdt = unsafe { read_phys::<u64>(addr + 140) };
            let d = table_at(dsdt)?;
            if acpi.count == MAX_TABLES {
                return Err("too-many-tables");
            }
            acpi.tables[acpi.count] = d;
            acpi.count += 1;
        }
    }
    Ok(acpi)
}

impl Acpi {
    pub fn find(&self, signature: &[u8; 4]) -> Option<Table> {
        self.tables[..self.count]
            .iter()
            .copied()
            .find(|t| &t.signature == signature)
    }

    /// (local APICs, IOAPICs) in the MADT.
    pub fn madt_counts(&self) -> Option<(u32, u32)> {
        let m = self.find(b"APIC")?;
        let (mut lapics, mut ioapics) = (0, 0);
        let mut at = m.addr + 44;
        while at + 2 <= m.addr + u64::from(m.len) {
            let (kind, len) = (byte(at), byte(at + 1));
            if len < 2 {
                break;
            }
            match kind {
                0 => lapics += 1,
                1 => ioapics += 1,
                _ => {}
            }
            at += u64::from(len);
        }
        Some((lapics, ioapics))
    }

    /// FADT flags (offset 112).
    pub fn fadt_flags(&self) -> Option<u32> {
        let f = self.find(b"FACP")?;
        // SAFETY: offset 112 is inside any FADT long enough to hold X_DSDT.
        Some(unsafe { read_phys::<u32>(f.addr + 112) })
    }

    /// The I/O port of the FADT's sleep control register (GAS at offset 244), if it is one.
    pub fn sleep_control_port(&self) -> Option<u16> {
        let f = self.find(b"FACP")?;
        if f.len < 256 || byte(f.addr + 244) != 1 {
            return None;
        }
        // SAFETY: the GAS lies inside the FADT (length checked).
        let port = unsafe { read_phys::<u64>(f.addr + 248) };
        u16::try_from(port).ok()
    }

    /// Where `needle` starts in the DSDT, from `from` (an offset into the table) on.
    fn dsdt_find(&self, needle: &[u8], from: u64) -> Option<u64> {
        let d = self.find(b"DSDT")?;
        let end = d.addr + u64::from(d.len);
        let mut at = d.addr + from.max(36);
        while at + needle.len() as u64 <= end {
            if (0..needle.len()).all(|i| byte(at + i as u64) == needle[i]) {
                return Some(at - d.addr);
            }
            at += 1;
        }
        None
    }

    fn dsdt_byte(&self, offset: u64) -> u8 {
        match self.find(b"DSDT") {
            Some(d) if offset < u64::from(d.len) => byte(d.addr + offset),
            _ => 0,
        }
    }

    fn dsdt_le(&self, offset: u64, n: u64) -> u64 {
        (0..n).fold(0, |v, i| {
            v | u64::from(self.dsdt_byte(offset + i)) << (8 * i)
        })
    }

    /// An AML integer at `offset`: (value, encoded length).
    fn aml_integer(&self, offset: u64) -> Option<(u64, u64)> {
        match self.dsdt_byte(offset) {
            0x00 => Some((0, 1)),
            0x01 => Some((1, 1)),
            0xff => Some((u64::MAX, 1)),
            0x0a => Some((self.dsdt_le(offset + 1, 1), 2)),
            0x0b => Some((self.dsdt_le(offset + 1, 2), 3)),
            0x0c => Some((self.dsdt_le(offset + 1, 4), 5)),
            0x0e => Some((self.dsdt_le(offset + 1, 8), 9)),
            _ => None,
        }
    }

    /// The first two integers of the package named `name` (a `Name(XXXX, Package(){...})`).
    fn package_pair(&self, name: &[u8; 4]) -> Option<(u64, u64)> {
        let at = self.dsdt_find(name, 0)? + 4;
        if self.dsdt_byte(at) != 0x12 {
            return None;
        }
        // PkgLength: bits 7..6 of the lead byte count the bytes that follow it.
        let follow = u64::from(self.dsdt_byte(at + 1) >> 6);
        let mut p = at + 2 + follow + 1; // past NumElements
        let (a, n) = self.aml_integer(p)?;
        p += n;
        let (b, _) = self.aml_integer(p)?;
        Some((a, b))
    }

    /// The VM generation ID's guest address (the `ADDR` package: low, high halves).
    pub fn vmgenid_addr(&self) -> Option<u64> {
        self.dsdt_find(b"VMGENCTR\0", 0)?;
        let (low, high) = self.package_pair(b"ADDR")?;
        Some((low & 0xffff_ffff) | (high << 32))
    }

    /// SLP_TYPa of `\_S5`.
    pub fn s5_sleep_type(&self) -> Option<u8> {
        self.package_pair(b"_S5_").map(|(a, _)| a as u8)
    }

    /// Every `LNRO0005` device's (window base, window size, IRQ), in DSDT order, from each
    /// device's Memory32Fixed and Extended Interrupt descriptors.
    pub fn virtio_mmio(&self, out: &mut [(u64, u64, u32)]) -> usize {
        let mut n = 0;
        let mut from = 0;
        while let Some(at) = self.dsdt_find(b"LNRO0005\0", from) {
            from = at + 9;
            let Some(mem) = self.dsdt_find(&[0x86, 0x09, 0x00], from) else {
                break;
            };
            let Some(irq) = self.dsdt_find(&[0x89, 0x06, 0x00], mem) else {
                break;
            };
            if n == out.len() {
                break;
            }
            out[n] = (
                self.dsdt_le(mem + 4, 4),
                self.dsdt_le(mem + 8, 4),
                self.dsdt_le(irq + 5, 4) as u32,
            );
            n += 1;
        }
        n
    }
}

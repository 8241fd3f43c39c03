//! Intel MultiProcessor Specification 1.4 table: how a guest without ACPI learns about its
//! vCPUs, the IOAPIC and the ISA bus. The floating pointer sits at the start of the EBDA,
//! where Linux scans for it, and the configuration table follows it.

use virtio::GuestMemoryMmap;
use vm_memory::{Bytes, GuestAddress};

use super::layout::{APIC_BASE, EBDA_START, HIMEM_START, IOAPIC_BASE};

/// Pins on KVM's in-kernel IOAPIC.
pub const IOAPIC_PINS: u8 = 24;
const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
const SPEC_REVISION: u8 = 4;

const ENTRY_PROCESSOR: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_IO_INTERRUPT: u8 = 3;
const ENTRY_LOCAL_INTERRUPT: u8 = 4;

const CPU_ENABLED: u8 = 1;
const CPU_BOOTSTRAP: u8 = 2;
const INT_TYPE_INT: u8 = 0;
const INT_TYPE_NMI: u8 = 1;
const INT_TYPE_EXTINT: u8 = 3;
/// Polarity and trigger "conforms to the bus".
const IRQ_FLAGS_DEFAULT: u16 = 0;
const ISA_BUS_ID: u8 = 0;
const ALL_LOCAL_APICS: u8 = 0xff;

const FLOATING_POINTER_LEN: usize = 16;
const HEADER_LEN: usize = 44;

/// Errors while writing the MP table.
#[derive(Debug, thiserror::Error)]
pub enum MpTableError {
    #[error("{0} vCPUs do not fit in an MP table (at most 254)")]
    TooManyCpus(u8),
    #[error("the MP table ({size} bytes at {addr:#x}) does not fit below 1 MiB")]
    TooLarge { addr: u64, size: usize },
    #[error("cannot write the MP table to guest memory: {0}")]
    Write(vm_memory::GuestMemoryError),
}

fn checksum(bytes: &[u8]) -> u8 {
    bytes
        .iter()
        .fold(0u8, |acc, b| acc.wrapping_add(*b))
        .wrapping_neg()
}

/// The IOAPIC's ID: right after the vCPUs' APIC IDs.
pub fn ioapic_id(vcpu_count: u8) -> u8 {
    vcpu_count
}

/// Builds the floating pointer and configuration table for a table placed at `base`.
pub fn build(vcpu_count: u8, base: u64) -> Result<Vec<u8>, MpTableError> {
    if vcpu_count == 0 || vcpu_count == u8::MAX {
        return Err(MpTableError::TooManyCpus(vcpu_count));
    }
    let table_addr = base + FLOATING_POINTER_LEN as u64;
    let ioapic = ioapic_id(vcpu_count);

    let mut entries: Vec<u8> = Vec::new();
    let mut entry_count: u16 = 0;
    for cpu in 0..vcpu_count {
        let flags = CPU_ENABLED | if cpu == 0 { CPU_BOOTSTRAP } else { 0 };
        entries.extend([ENTRY_PROCESSOR, cpu, APIC_VERSION, flags]);
        // Signature: family 6 model 0; feature flags: FPU and APIC present.
        entries.extend(0x600u32.to_le_bytes());
        entries.extend(((1u32 << 0) | (1 << 9)).to_le_bytes());
        entries.extend([0u8; 8]);
        entry_count += 1;
    }
    entries.extend([ENTRY_BUS, ISA_BUS_ID]);
    entries.extend(*b"ISA   ");
    entry_count += 1;
    entries.extend([ENTRY_IOAPIC, ioapic, IOAPIC_VERSION, 1]);
    entries.extend((IOAPIC_BASE as u32).to_le_bytes());
    entry_count += 1;
    for pin in 0..IOAPIC_PINS {
        entries.extend([ENTRY_IO_INTERRUPT, INT_TYPE_INT]);
        entries.extend(IRQ_FLAGS_DEFAULT.to_le_bytes());
        entries.extend([ISA_BUS_ID, pin, ioapic, pin]);
        entry_count += 1;
    }
    for (kind, lint, dest) in [(INT_TYPE_EXTINT, 0, 0), (INT_TYPE_NMI, 1, ALL_LOCAL_APICS)] {
        entries.extend([ENTRY_LOCAL_INTERRUPT, kind]);
        entries.extend(IRQ_FLAGS_DEFAULT.to_le_bytes());
        entries.extend([ISA_BUS_ID, 0, dest, lint]);
        entry_count += 1;
    }

    let table_len = HEADER_LEN + entries.len();
    let mut table = Vec::with_capacity(table_len);
    table.extend(*b"PCMP");
    table.extend((table_len as u16).to_le_bytes());
    table.extend([SPEC_REVISION, 0]); // checksum patched below
    table.extend(*b"XENIA   ");
    table.extend(*b"MICROVM     ");
    table.extend(0u32.to_le_bytes()); // no OEM table
    table.extend(0u16.to_le_bytes());
    table.extend(entry_count.to_le_bytes());
    table.extend((APIC_BASE as u32).to_le_bytes());
    table.extend(0u32.to_le_bytes()); // no extended entries
    table.extend(entries);
    table[7] = checksum(&table);

    let mut out = Vec::with_capacity(FLOATING_POINTER_LEN + table.len());
    out.extend(*b"_MP_");
    out.extend((table_addr as u32).to_le_bytes());
    out.extend([1, SPEC_REVISION, 0, 0, 0, 0, 0, 0]); // length in 16-byte units, checksum
    out[10] = checksum(&out);
    out.extend(table);
    Ok(out)
}

/// Writes the MP table at the start of the EBDA.
pub fn setup_mptable(mem: &GuestMemoryMmap, vcpu_count: u8) -> Result<(), MpTableError> {
    let bytes = build(vcpu_count, EBDA_START)?;
    if EBDA_START + bytes.len() as u64 > HIMEM_START {
        return Err(MpTableError::TooLarge {
            addr: EBDA_START,
            size: bytes.len(),
        });
    }
    mem.write_slice(&bytes, GuestAddress(EBDA_START))
        .map_err(MpTableError::Write)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(bytes: &[u8]) -> u8 {
        bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b))
    }

    fn entries(table: &[u8]) -> Vec<&[u8]> {
        let mut out = Vec::new();
        let mut pos = HEADER_LEN;
        while pos < table.len() {
            let len = if table[pos] == ENTRY_PROCESSOR { 20 } else { 8 };
            out.push(&table[pos..pos + len]);
            pos += len;
        }
        out
    }

    #[test]
    fn checksums_and_pointers_are_valid() {
        let bytes = build(2, EBDA_START).unwrap();
        let (mpf, table) = bytes.split_at(FLOATING_POINTER_LEN);
        assert_eq!(&mpf[..4], b"_MP_");
        assert_eq!(sum(mpf), 0);
        let ptr = u32::from_le_bytes(mpf[4..8].try_into().unwrap());
        assert_eq!(u64::from(ptr), EBDA_START + 16);
        assert_eq!(&table[..4], b"PCMP");
        assert_eq!(sum(table), 0);
        let len = u16::from_le_bytes(table[4..6].try_into().unwrap());
        assert_eq!(usize::from(len), table.len());
    }

    #[test]
    fn entries_describe_cpus_bus_ioapic_and_interrupts() {
        for cpus in [1u8, 4, 32] {
            let bytes = build(cpus, EBDA_START).unwrap();
            let table = &bytes[FLOATING_POINTER_LEN..];
            let count = u16::from_le_bytes(table[34..36].try_into().unwrap());
            let list = entries(table);
            assert_eq!(usize::from(count), list.len());
            let procs: Vec<_> = list.iter().filter(|e| e[0] == ENTRY_PROCESSOR).collect();
            assert_eq!(procs.len(), usize::from(cpus));
            for (i, p) in procs.iter().enumerate() {
                assert_eq!(usize::from(p[1]), i);
                assert_eq!(p[3] & CPU_BOOTSTRAP != 0, i == 0);
            }
            let ioapics: Vec<_> = list.iter().filter(|e| e[0] == ENTRY_IOAPIC).collect();
            assert_eq!(ioapics.len(), 1);
            assert_eq!(ioapics[0][1], cpus);
            let ints = list.iter().filter(|e| e[0] == ENTRY_IO_INTERRUPT).count();
            assert_eq!(ints, usize::from(IOAPIC_PINS));
            assert_eq!(list.iter().filter(|e| e[0] == ENTRY_BUS).count(), 1);
            assert_eq!(
                list.iter()
                    .filter(|e| e[0] == ENTRY_LOCAL_INTERRUPT)
                    .count(),
                2
            );
        }
    }

    #[test]
    fn refuses_impossible_cpu_counts() {
        assert!(build(0, EBDA_START).is_err());
        assert!(build(255, EBDA_START).is_err());
    }

    #[test]
    fn written_table_is_found_in_the_ebda() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        setup_mptable(&mem, 2).unwrap();
        let mut sig = [0u8; 4];
        mem.read_slice(&mut sig, GuestAddress(EBDA_START)).unwrap();
        assert_eq!(&sig, b"_MP_");
    }
}

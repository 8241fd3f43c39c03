use super::*;

fn platform(vcpu_count: u8, devices: usize) -> Platform {
    Platform {
        vcpu_count,
        virtio: (0..devices)
            .map(|i| MmioDeviceInfo {
                base: 0xd000_0000 + 0x1000 * i as u64,
                size: 0x1000,
                irq: 5 + i as u32,
            })
            .collect(),
        ged_irq: 23,
        vmgenid_addr: VMGENID_ADDR,
    }
}

fn sum(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b))
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

fn table(tables: &[(u64, Vec<u8>)], addr: u64) -> &[u8] {
    &tables.iter().find(|(a, _)| *a == addr).expect("table").1
}

fn count(haystack: &[u8], needle: &[u8]) -> usize {
    haystack
        .windows(needle.len())
        .filter(|w| w == &needle)
        .count()
}

#[test]
fn every_table_is_checksummed_and_sized() {
    let tables = build(&platform(4, 3)).unwrap();
    let (rsdp_addr, rsdp) = &tables[0];
    assert_eq!(*rsdp_addr, RSDP_ADDR);
    assert_eq!(&rsdp[..8], b"RSD PTR ");
    assert_eq!(sum(&rsdp[..20]), 0, "RSDP v1 checksum");
    assert_eq!(sum(rsdp), 0, "RSDP extended checksum");
    for (addr, bytes) in &tables[1..] {
        assert_eq!(
            u32_at(bytes, 4) as usize,
            bytes.len(),
            "length at {addr:#x}"
        );
        assert_eq!(sum(bytes), 0, "checksum of {:?}", &bytes[..4]);
        assert_eq!(addr % TABLE_ALIGN, 0);
        assert!(addr + bytes.len() as u64 <= TABLES_END);
    }
}

#[test]
fn rsdp_xsdt_fadt_dsdt_chain() {
    let tables = build(&platform(2, 1)).unwrap();
    let xsdt = table(&tables, u64_at(&tables[0].1, 24));
    assert_eq!(&xsdt[..4], b"XSDT");
    let entries: Vec<u64> = (36..xsdt.len())
        .step_by(8)
        .map(|at| u64_at(xsdt, at))
        .collect();
    let signatures: Vec<&[u8]> = entries.iter().map(|a| &table(&tables, *a)[..4]).collect();
    assert_eq!(signatures, [b"FACP", b"APIC"]);
    let fadt = table(&tables, entries[0]);
    // X_DSDT at offset 140; flags at 112; sleep control/status GAS at 244/256.
    let dsdt = table(&tables, u64_at(fadt, 140));
    assert_eq!(&dsdt[..4], b"DSDT");
    let flags = u32_at(fadt, 112);
    assert_ne!(flags & Flags::HwReducedAcpi as u32, 0);
    assert_ne!(flags & Flags::ResetRegSup as u32, 0);
    assert_eq!(u64_at(fadt, 244 + 4), ACPI_SLEEP_PORT_BASE);
    assert_eq!(u64_at(fadt, 256 + 4), ACPI_SLEEP_PORT_BASE + 1);
    // Reset register: the i8042 command port, value 0xFE.
    assert_eq!((u64_at(fadt, 116 + 4), fadt[128]), (0x64, 0xfe));
    assert_ne!(
        u16::from_le_bytes([fadt[109], fadt[110]]) & BOOT_ARCH_8042,
        0
    );
}

#[test]
fn madt_lists_every_vcpu_and_the_ioapic() {
    for vcpus in [1u8, 2, 4, 32] {
        let tables = build(&platform(vcpus, 0)).unwrap();
        let xsdt = table(&tables, u64_at(&tables[0].1, 24));
        let madt = table(&tables, u64_at(xsdt, 44));
        assert_eq!(u32_at(madt, 36), APIC_BASE as u32);
        let mut at = 44;
        let (mut lapics, mut ioapics) = (Vec::new(), Vec::new());
        while at < madt.len() {
            let (kind, len) = (madt[at], madt[at + 1] as usize);
            match kind {
                0 => lapics.push((madt[at + 3], u32_at(madt, at + 4))),
                1 => ioapics.push((madt[at + 2], u32_at(madt, at + 4))),
                other => panic!("unexpected MADT entry {other}"),
            }
            at += len;
        }
        let expected: Vec<(u8, u32)> = (0..vcpus).map(|id| (id, 1)).collect();
        assert_eq!(lapics, expected);
        assert_eq!(ioapics, [(vcpus, IOAPIC_BASE as u32)]);
    }
}

#[test]
fn dsdt_describes_the_devices() {
    let tables = build(&platform(1, 5)).unwrap();
    let dsdt = &tables[1].1;
    assert_eq!(count(dsdt, b"LNRO0005\0"), 5);
    assert_eq!(count(dsdt, b"VMGENCTR\0"), 1);
    assert_eq!(count(dsdt, b"ACPI0013\0"), 1);
    assert_eq!(count(dsdt, b"_S5_"), 1);
    // Each window as a Memory32Fixed descriptor (0x86, length 9, read-write).
    for i in 0..5u32 {
        let mut desc = vec![0x86, 9, 0, 1];
        desc.extend((0xd000_0000 + 0x1000 * i).to_le_bytes());
        desc.extend(0x1000u32.to_le_bytes());
        assert_eq!(count(dsdt, &desc), 1, "window {i}");
    }
    // ADDR = Package(2) { DWord low, Zero high }.
    let mut addr = b"ADDR".to_vec();
    addr.extend([0x12, 0x08, 0x02, 0x0c]);
    addr.extend((VMGENID_ADDR as u32).to_le_bytes());
    addr.push(0x00);
    assert_eq!(count(dsdt, &addr), 1, "{dsdt:02x?}");
}

#[test]
fn too_many_cpus_and_devices_still_fit_or_fail_cleanly() {
    assert!(build(&platform(254, 19)).is_ok());
}

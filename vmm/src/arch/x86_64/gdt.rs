//! GDT entries and the `kvm_segment`s KVM wants for them.

use kvm_bindings::kvm_segment;

/// Packs a segment descriptor: `flags` holds the access byte (bits 0-7) and the
/// granularity/size nibble (bits 12-15), as in the architecture manual's layout.
pub const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    let base = base as u64;
    let limit = limit as u64;
    ((base & 0xff00_0000) << 32)
        | (((flags as u64) & 0xf0ff) << 40)
        | ((limit & 0x000f_0000) << 32)
        | ((base & 0x00ff_ffff) << 16)
        | (limit & 0xffff)
}

fn base(entry: u64) -> u64 {
    ((entry & 0xff00_0000_0000_0000) >> 32) | ((entry & 0x0000_00ff_ffff_0000) >> 16)
}

fn limit(entry: u64) -> u32 {
    let raw = (((entry & 0x000f_0000_0000_0000) >> 32) | (entry & 0xffff)) as u32;
    if (entry >> 55) & 1 == 1 {
        (raw << 12) | 0xfff
    } else {
        raw
    }
}

/// The `kvm_segment` for descriptor `index` of a table holding `entry`.
pub fn kvm_segment_from_gdt(entry: u64, index: u8) -> kvm_segment {
    let present = ((entry >> 47) & 1) as u8;
    kvm_segment {
        base: base(entry),
        limit: limit(entry),
        selector: u16::from(index) * 8,
        type_: ((entry >> 40) & 0xf) as u8,
        present,
        dpl: ((entry >> 45) & 3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g: ((entry >> 55) & 1) as u8,
        avl: ((entry >> 52) & 1) as u8,
        unusable: u8::from(present == 0),
        padding: 0,
    }
}

/// GDT for the 64-bit Linux entry: null, 64-bit code, data, TSS.
pub const GDT_LONG_MODE: [u64; 4] = [
    gdt_entry(0, 0, 0),
    gdt_entry(0xa09b, 0, 0xfffff),
    gdt_entry(0xc093, 0, 0xfffff),
    gdt_entry(0x808b, 0, 0xfffff),
];

/// GDT for the PVH entry (32-bit protected mode, paging off): null, 32-bit code, data, TSS.
pub const GDT_PVH: [u64; 4] = [
    gdt_entry(0, 0, 0),
    gdt_entry(0xc09b, 0, 0xffff_ffff),
    gdt_entry(0xc093, 0, 0xffff_ffff),
    gdt_entry(0x008b, 0, 0x67),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_mode_code_segment_is_64_bit_ring_0() {
        let cs = kvm_segment_from_gdt(GDT_LONG_MODE[1], 1);
        assert_eq!(cs.selector, 0x8);
        assert_eq!((cs.l, cs.db, cs.dpl, cs.present, cs.s), (1, 0, 0, 1, 1));
        assert_eq!(cs.type_, 0xb);
        assert_eq!(cs.limit, 0xffff_ffff);
        assert_eq!(cs.base, 0);
    }

    #[test]
    fn data_and_tss_segments() {
        let ds = kvm_segment_from_gdt(GDT_LONG_MODE[2], 2);
        assert_eq!((ds.selector, ds.type_, ds.db, ds.l), (0x10, 0x3, 1, 0));
        let tss = kvm_segment_from_gdt(GDT_LONG_MODE[3], 3);
        assert_eq!((tss.selector, tss.type_, tss.s, tss.g), (0x18, 0xb, 0, 1));
        let null = kvm_segment_from_gdt(GDT_LONG_MODE[0], 0);
        assert_eq!((null.present, null.unusable), (0, 1));
    }

    #[test]
    fn pvh_code_segment_is_flat_32_bit() {
        let cs = kvm_segment_from_gdt(GDT_PVH[1], 1);
        assert_eq!((cs.l, cs.db, cs.g), (0, 1, 1));
        assert_eq!(cs.limit, 0xffff_ffff);
    }

    #[test]
    fn entry_round_trips_base_and_limit() {
        let e = gdt_entry(0x4093, 0x1234_5678, 0xabcde);
        assert_eq!(base(e), 0x1234_5678);
        assert_eq!(limit(e), 0xabcde);
    }
}

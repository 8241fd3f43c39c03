//! What CPUID shows the guest: vendor, hypervisor signature, topology.

use crate::arch::cpu::{cpuid, CpuidResult};

pub struct CpuInfo {
    pub vendor: [u8; 12],
    pub max_leaf: u32,
    pub apic_id: u32,
    /// Leaf 0x40000000 signature, if the hypervisor bit is set.
    pub hypervisor: Option<[u8; 12]>,
    pub logical: u32,
    pub threads_per_core: u32,
    pub cores_per_pkg: u32,
    /// Where the topology came from.
    pub topology_source: &'static str,
}

fn regs_text(a: u32, b: u32, c: u32) -> [u8; 12] {
    let mut out = [0u8; 12];
    out[..4].copy_from_slice(&a.to_le_bytes());
    out[4..8].copy_from_slice(&b.to_le_bytes());
    out[8..].copy_from_slice(&c.to_le_bytes());
    out
}

pub fn read() -> CpuInfo {
    let l0 = cpuid(0, 0);
    let l1 = cpuid(1, 0);
    let hypervisor = (l1.ecx & (1 << 31) != 0).then(|| {
        let h = cpuid(0x4000_0000, 0);
        regs_text(h.ebx, h.ecx, h.edx)
    });
    let vendor = regs_text(l0.ebx, l0.edx, l0.ecx);
    let logical = (l1.ebx >> 16) & 0xff;
    let mut info = CpuInfo {
        vendor,
        max_leaf: l0.eax,
        apic_id: l1.ebx >> 24,
        hypervisor,
        logical,
        threads_per_core: 1,
        cores_per_pkg: logical.max(1),
        topology_source: "leaf1",
    };
    if info.max_leaf >= 0xb && topology_from_leaf_b(&mut info) {
        return info;
    }
    if &vendor == b"AuthenticAMD" || &vendor == b"HygonGenuine" {
        topology_from_amd(&mut info);
    }
    info
}

/// Leaf 0xb: level type 1 = SMT, 2 = core; EBX = logical CPUs at that level.
fn topology_from_leaf_b(info: &mut CpuInfo) -> bool {
    let mut smt = None;
    let mut core = None;
    for sub in 0..8 {
        let r: CpuidResult = cpuid(0xb, sub);
        let level_type = (r.ecx >> 8) & 0xff;
        if level_type == 0 {
            break;
        }
        let count = r.ebx & 0xffff;
        match level_type {
            1 => smt = Some(count),
            2 => core = Some(count),
            _ => {}
        }
        if sub == 0 {
            info.apic_id = r.edx; // the full x2APIC ID
        }
    }
    let (Some(threads), Some(per_pkg)) = (smt, core) else {
        return false;
    };
    if threads == 0 {
        return false;
    }
    info.threads_per_core = threads;
    info.cores_per_pkg = per_pkg / threads;
    info.topology_source = "leaf0xb";
    true
}

/// AMD: 0x8000001e EBX[15:8] = threads per core - 1; 0x80000008 ECX[7:0] =
/// logical CPUs per package - 1.
fn topology_from_amd(info: &mut CpuInfo) {
    let max_ext = cpuid(0x8000_0000, 0).eax;
    if max_ext < 0x8000_0008 {
        return;
    }
    let per_pkg = (cpuid(0x8000_0008, 0).ecx & 0xff) + 1;
    let threads = if max_ext >= 0x8000_001e {
        ((cpuid(0x8000_001e, 0).ebx >> 8) & 0xff) + 1
    } else {
        1
    };
    info.threads_per_core = threads;
    info.cores_per_pkg = per_pkg / threads;
    info.topology_source = if max_ext >= 0x8000_001e {
        "amd-0x8000001e"
    } else {
        "amd-0x80000008"
    };
}

/// Printable form of a 12-byte CPUID signature: NULs dropped, other
/// non-graphic bytes as '_' so the line stays one key=value token.
pub fn signature_text(sig: &[u8; 12], out: &mut [u8; 12]) -> usize {
    let mut n = 0;
    for &b in sig.iter().filter(|&&b| b != 0) {
        out[n] = if b.is_ascii_graphic() { b } else { b'_' };
        n += 1;
    }
    n
}

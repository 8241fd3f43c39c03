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

/// The topology one CPUID source describes.
#[derive(Clone, Copy)]
pub struct SourceTopology {
    pub source: &'static str,
    pub threads_per_core: u32,
    pub logical_per_pkg: u32,
    pub apic_id: u32,
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
    // The first source a kernel would use wins the summary line; `sources` reports each.
    if let Some(t) = sources().into_iter().flatten().next() {
        info.apic_id = t.apic_id;
        info.threads_per_core = t.threads_per_core;
        info.cores_per_pkg = t.logical_per_pkg / t.threads_per_core;
        info.topology_source = t.source;
    }
    info
}

/// Every topology source this CPU offers, in the order Linux prefers them: leaf 0x1F,
/// leaf 0xB, then AMD's 0x8000001E. Each is read on its own so that a wrong leaf cannot hide
/// behind a right one.
pub fn sources() -> [Option<SourceTopology>; 3] {
    let max_leaf = cpuid(0, 0).eax;
    let vendor = {
        let l0 = cpuid(0, 0);
        regs_text(l0.ebx, l0.edx, l0.ecx)
    };
    let amd = &vendor == b"AuthenticAMD" || &vendor == b"HygonGenuine";
    [
        (max_leaf >= 0x1f)
            .then(|| extended_topology(0x1f, "leaf0x1f"))
            .flatten(),
        (max_leaf >= 0xb)
            .then(|| extended_topology(0xb, "leaf0xb"))
            .flatten(),
        if amd { topology_from_amd() } else { None },
    ]
}

/// Leaf 0xB or 0x1F: level type 1 = SMT, 2 = core; EBX = logical CPUs at that level.
/// `None` when the leaf describes no SMT and CORE level (a zeroed leaf, say).
fn extended_topology(leaf: u32, source: &'static str) -> Option<SourceTopology> {
    let mut smt = None;
    let mut core = None;
    let apic_id = cpuid(leaf, 0).edx; // the full x2APIC ID
    for sub in 0..8 {
        let r: CpuidResult = cpuid(leaf, sub);
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
    }
    match (smt, core) {
        (Some(threads), Some(per_pkg)) if threads > 0 => Some(SourceTopology {
            source,
            threads_per_core: threads,
            logical_per_pkg: per_pkg,
            apic_id,
        }),
        _ => None,
    }
}

/// AMD: 0x8000001e EBX[15:8] = threads per core - 1, EAX = extended APIC ID;
/// 0x80000008 ECX[7:0] = logical CPUs per package - 1.
fn topology_from_amd() -> Option<SourceTopology> {
    let max_ext = cpuid(0x8000_0000, 0).eax;
    if max_ext < 0x8000_0008 {
        return None;
    }
    let per_pkg = (cpuid(0x8000_0008, 0).ecx & 0xff) + 1;
    if max_ext >= 0x8000_001e {
        let e = cpuid(0x8000_001e, 0);
        Some(SourceTopology {
            source: "amd-0x8000001e",
            threads_per_core: ((e.ebx >> 8) & 0xff) + 1,
            logical_per_pkg: per_pkg,
            apic_id: e.eax,
        })
    } else {
        Some(SourceTopology {
            source: "amd-0x80000008",
            threads_per_core: 1,
            logical_per_pkg: per_pkg,
            apic_id: cpuid(1, 0).ebx >> 24,
        })
    }
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

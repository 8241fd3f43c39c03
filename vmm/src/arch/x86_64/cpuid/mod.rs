//! Per-vCPU CPUID: KVM's supported set, normalised so each vCPU sees its own APIC ID and a
//! topology consistent with `vcpu_count` and `smt` (one socket, `threads_per_core` threads
//! per core), the hypervisor bit set, no hardware virtualization and no PMU.
//!
//! What the guest sees must not depend on what one host's KVM happens to report: the
//! topology leaves are built from scratch, vendor-specific leaves are applied only on their
//! vendor, and anything KVM reports that we do not want is cleared rather than trusted.

#[cfg(test)]
mod tests;
mod topology;

use kvm_bindings::{kvm_cpuid_entry2, CpuId, KVM_MAX_CPUID_ENTRIES};

use topology::extended_topology_leaf;
pub use topology::Topology;

const LEAF_VENDOR: u32 = 0x0;
const LEAF_FEATURES: u32 = 0x1;
const LEAF_CACHE_PARAMS: u32 = 0x4;
const LEAF_PMU: u32 = 0xa;
const LEAF_TOPOLOGY: u32 = 0xb;
const LEAF_TOPOLOGY_V2: u32 = 0x1f;
const LEAF_EXT_FEATURES: u32 = 0x8000_0001;
const LEAF_ADDR_SIZES: u32 = 0x8000_0008;
const LEAF_SVM_FEATURES: u32 = 0x8000_000a;
const LEAF_AMD_CACHE_TOPOLOGY: u32 = 0x8000_001d;
const LEAF_AMD_EXT_APIC_ID: u32 = 0x8000_001e;
const LEAF_AMD_PERFMON_V2: u32 = 0x8000_0022;

const ECX_HYPERVISOR: u32 = 1 << 31;
/// Hardware virtualization is not offered to tenants: nested KVM widens the attack surface of
/// the host kernel, and a guest that needs it must be given it on purpose.
const ECX_VMX: u32 = 1 << 5;
/// Perfmon and debug capability (IA32_PERF_CAPABILITIES): part of the PMU we hide.
const ECX_PDCM: u32 = 1 << 15;
const EDX_HTT: u32 = 1 << 28;
const AMD_ECX_SVM: u32 = 1 << 2;
const AMD_ECX_CMP_LEGACY: u32 = 1 << 1;
const AMD_ECX_PERFCTR_CORE: u32 = 1 << 23;

/// Physical address width assumed when KVM reports no leaf 0x80000008 (the architectural
/// minimum for processors with PAE).
const DEFAULT_PHYS_ADDR_BITS: u8 = 36;

/// Errors from building a vCPU's CPUID.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CpuidError {
    #[error("the CPUID table would need {0} entries; KVM takes at most {KVM_MAX_CPUID_ENTRIES}")]
    TooManyEntries(usize),
    #[error(
        "machine-config.mem_size_mib: guest memory ends at {end:#x}, beyond the {bits}-bit \
         physical address space this host offers guests"
    )]
    MemoryBeyondPhysAddrBits { end: u64, bits: u8 },
}

/// The CPU vendor, from leaf 0's signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vendor {
    Intel,
    /// AMD and Hygon, which share AMD's extended leaves.
    Amd,
    Other,
}

impl Vendor {
    pub(crate) fn of(entries: &[kvm_cpuid_entry2]) -> Self {
        let Some(l0) = find(entries, LEAF_VENDOR, 0) else {
            return Vendor::Other;
        };
        let mut sig = [0u8; 12];
        sig[..4].copy_from_slice(&l0.ebx.to_le_bytes());
        sig[4..8].copy_from_slice(&l0.edx.to_le_bytes());
        sig[8..].copy_from_slice(&l0.ecx.to_le_bytes());
        match &sig {
            b"GenuineIntel" => Vendor::Intel,
            b"AuthenticAMD" | b"HygonGenuine" => Vendor::Amd,
            _ => Vendor::Other,
        }
    }
}

fn find(entries: &[kvm_cpuid_entry2], function: u32, index: u32) -> Option<&kvm_cpuid_entry2> {
    entries
        .iter()
        .find(|e| e.function == function && e.index == index)
}

/// Builds vCPU `apic_id`'s CPUID from `supported` (KVM_GET_SUPPORTED_CPUID's output).
pub fn normalize(supported: &CpuId, apic_id: u8, topo: Topology) -> Result<CpuId, CpuidError> {
    let mut entries: Vec<kvm_cpuid_entry2> = supported.as_slice().to_vec();
    let vendor = Vendor::of(&entries);
    let max_basic = find(&entries, LEAF_VENDOR, 0).map_or(0, |e| e.eax);
    let apic = u32::from(apic_id);

    // Whatever KVM reported for the topology leaves is replaced, and so are the AMD-only
    // leaves on other vendors.
    entries.retain(|e| {
        let topology = e.function == LEAF_TOPOLOGY || e.function == LEAF_TOPOLOGY_V2;
        let foreign = vendor != Vendor::Amd
            && (e.function == LEAF_AMD_CACHE_TOPOLOGY || e.function == LEAF_AMD_EXT_APIC_ID);
        !(topology || foreign)
    });
    if max_basic >= LEAF_TOPOLOGY {
        entries.extend(extended_topology_leaf(LEAF_TOPOLOGY, apic, topo));
    }
    if max_basic >= LEAF_TOPOLOGY_V2 {
        entries.extend(extended_topology_leaf(LEAF_TOPOLOGY_V2, apic, topo));
    }
    for e in entries.iter_mut() {
        normalize_entry(e, apic, topo, vendor);
    }
    CpuId::from_entries(&entries).map_err(|_| CpuidError::TooManyEntries(entries.len()))
}

/// The guest-physical address width the CPUID advertises (leaf 0x80000008 EAX[7:0]).
pub fn phys_addr_bits(cpuid: &CpuId) -> u8 {
    match find(cpuid.as_slice(), LEAF_ADDR_SIZES, 0) {
        Some(e) if e.eax & 0xff != 0 => (e.eax & 0xff) as u8,
        _ => DEFAULT_PHYS_ADDR_BITS,
    }
}

/// Refuses guest memory that reaches past what the guest can address: a guest told it has
/// memory it cannot map would crash in ways that look like our bug.
pub fn check_memory_end(cpuid: &CpuId, end: u64) -> Result<(), CpuidError> {
    let bits = phys_addr_bits(cpuid);
    if bits < 64 && end > (1u64 << bits) {
        return Err(CpuidError::MemoryBeyondPhysAddrBits { end, bits });
    }
    Ok(())
}

fn normalize_entry(e: &mut kvm_cpuid_entry2, apic: u32, topo: Topology, vendor: Vendor) {
    let count = u32::from(topo.vcpu_count);
    let threads = u32::from(topo.threads_per_core);
    match e.function {
        LEAF_FEATURES => {
            // EBX: [31:24] initial APIC ID, [23:16] logical processors per package,
            // [15:8] CLFLUSH line size in quadwords.
            let logical = 1u32 << topo.package_bits();
            e.ebx = (apic << 24) | ((logical & 0xff) << 16) | (8 << 8) | (e.ebx & 0xff);
            e.ecx = (e.ecx | ECX_HYPERVISOR) & !ECX_VMX & !ECX_PDCM;
            if count > 1 {
                e.edx |= EDX_HTT;
            } else {
                e.edx &= !EDX_HTT;
            }
        }
        LEAF_CACHE_PARAMS => {
            // EAX: [31:26] cores per package - 1, [25:14] threads sharing this cache - 1.
            let level = (e.eax >> 5) & 0x7;
            let sharing = if level >= 3 { count } else { threads };
            let cores = (1u32 << (topo.package_bits() - topo.thread_bits())).max(1);
            e.eax = (e.eax & 0x3fff)
                | ((sharing.saturating_sub(1) & 0xfff) << 14)
                | ((cores - 1) << 26);
        }
        LEAF_PMU | LEAF_SVM_FEATURES | LEAF_AMD_PERFMON_V2 => {
            // No virtual PMU (either vendor's), no nested SVM.
            clear(e);
        }
        LEAF_EXT_FEATURES => {
            e.ecx &= !AMD_ECX_SVM & !AMD_ECX_PERFCTR_CORE;
            // CMP_LEGACY means something only to AMD's topology enumeration.
            if vendor == Vendor::Amd && count > 1 {
                e.ecx |= AMD_ECX_CMP_LEGACY;
            } else {
                e.ecx &= !AMD_ECX_CMP_LEGACY;
            }
        }
        LEAF_ADDR_SIZES => {
            // ECX: [15:12] APIC-ID bits per package, [7:0] logical processors - 1 (AMD's
            // definition; reserved on Intel, where writing it is harmless and Linux ignores it).
            e.ecx = (e.ecx & !0xf0ff) | (topo.package_bits() << 12) | ((count - 1) & 0xff);
        }
        LEAF_AMD_CACHE_TOPOLOGY => {
            let level = (e.eax >> 5) & 0x7;
            let sharing = if level >= 3 { count } else { threads };
            e.eax = (e.eax & !(0xfff << 14)) | ((sharing.saturating_sub(1) & 0xfff) << 14);
        }
        LEAF_AMD_EXT_APIC_ID => {
            // EAX: extended APIC ID; EBX: [15:8] threads per compute unit - 1, [7:0] compute
            // unit ID; ECX: one node, node 0.
            e.eax = apic;
            e.ebx = ((threads - 1) << 8) | (apic >> topo.thread_bits());
            e.ecx = 0;
            e.edx = 0;
        }
        _ => {}
    }
}

fn clear(e: &mut kvm_cpuid_entry2) {
    e.eax = 0;
    e.ebx = 0;
    e.ecx = 0;
    e.edx = 0;
}

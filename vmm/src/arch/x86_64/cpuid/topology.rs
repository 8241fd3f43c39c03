//! The CPU topology every vCPU reports, and the extended-topology leaves (0xB, 0x1F) built from
//! it. Those leaves are generated, never patched: since Linux 6.2 `KVM_GET_SUPPORTED_CPUID`
//! returns leaf 0xB with one zeroed sub-leaf and no 0x1F sub-leaves, so there is nothing
//! trustworthy to patch.

use kvm_bindings::{kvm_cpuid_entry2, KVM_CPUID_FLAG_SIGNIFCANT_INDEX};

const LEVEL_TYPE_INVALID: u32 = 0;
pub(super) const LEVEL_TYPE_SMT: u32 = 1;
pub(super) const LEVEL_TYPE_CORE: u32 = 2;

/// The topology a vCPU reports: one package of `vcpu_count` logical processors,
/// `threads_per_core` threads per core.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Topology {
    pub vcpu_count: u8,
    pub threads_per_core: u8,
}

impl Topology {
    pub fn new(vcpu_count: u8, smt: bool) -> Self {
        let threads_per_core = if smt && vcpu_count > 1 { 2 } else { 1 };
        Self {
            vcpu_count,
            threads_per_core,
        }
    }

    /// APIC-ID bits used by the thread number within a core.
    pub fn thread_bits(&self) -> u32 {
        bits_for(u32::from(self.threads_per_core))
    }

    /// APIC-ID bits used by the thread and core numbers within the package.
    pub fn package_bits(&self) -> u32 {
        bits_for(u32::from(self.vcpu_count))
    }

    pub fn cores(&self) -> u32 {
        u32::from(self.vcpu_count).div_ceil(u32::from(self.threads_per_core))
    }
}

/// Bits needed to number `n` items (ceil(log2(n))).
pub(super) fn bits_for(n: u32) -> u32 {
    if n <= 1 {
        0
    } else {
        32 - (n - 1).leading_zeros()
    }
}

/// The sub-leaves of extended-topology leaf `function` (0xB or 0x1F) for the vCPU with
/// x2APIC id `apic`: SMT, CORE, then the INVALID level that ends the enumeration.
pub(super) fn extended_topology_leaf(
    function: u32,
    apic: u32,
    topo: Topology,
) -> [kvm_cpuid_entry2; 3] {
    // EAX[4:0]: bits to shift the x2APIC id right to reach the next level's id;
    // EBX[15:0]: logical processors at this level; ECX[15:8]: level type, ECX[7:0]: the
    // sub-leaf; EDX: the x2APIC id, on every sub-leaf.
    let level = |index: u32, shift: u32, count: u32, level_type: u32| kvm_cpuid_entry2 {
        function,
        index,
        flags: KVM_CPUID_FLAG_SIGNIFCANT_INDEX,
        eax: shift,
        ebx: count,
        ecx: (level_type << 8) | index,
        edx: apic,
        ..Default::default()
    };
    [
        level(
            0,
            topo.thread_bits(),
            u32::from(topo.threads_per_core),
            LEVEL_TYPE_SMT,
        ),
        level(
            1,
            topo.package_bits(),
            u32::from(topo.vcpu_count),
            LEVEL_TYPE_CORE,
        ),
        level(2, 0, 0, LEVEL_TYPE_INVALID),
    ]
}

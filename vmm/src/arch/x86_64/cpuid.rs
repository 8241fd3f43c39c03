//! Per-vCPU CPUID: KVM's supported set, normalised so each vCPU sees its own APIC ID and a
//! topology consistent with `vcpu_count` and `smt` (one socket, `threads_per_core` threads
//! per core), with the hypervisor bit set and the PMU hidden.

use kvm_bindings::{kvm_cpuid_entry2, CpuId};

const LEAF_FEATURES: u32 = 0x1;
const LEAF_CACHE_PARAMS: u32 = 0x4;
const LEAF_PMU: u32 = 0xa;
const LEAF_TOPOLOGY: u32 = 0xb;
const LEAF_TOPOLOGY_V2: u32 = 0x1f;
const LEAF_EXT_FEATURES: u32 = 0x8000_0001;
const LEAF_ADDR_SIZES: u32 = 0x8000_0008;
const LEAF_AMD_CACHE_TOPOLOGY: u32 = 0x8000_001d;
const LEAF_AMD_EXT_APIC_ID: u32 = 0x8000_001e;

const LEAF_SVM_FEATURES: u32 = 0x8000_000a;

const ECX_HYPERVISOR: u32 = 1 << 31;
/// Hardware virtualization is not offered to tenants: nested KVM widens the attack surface of
/// the host kernel, and a guest that needs it must be given it on purpose.
const ECX_VMX: u32 = 1 << 5;
const AMD_ECX_SVM: u32 = 1 << 2;
const EDX_HTT: u32 = 1 << 28;
const AMD_ECX_CMP_LEGACY: u32 = 1 << 1;

const LEVEL_TYPE_INVALID: u32 = 0;
const LEVEL_TYPE_SMT: u32 = 1;
const LEVEL_TYPE_CORE: u32 = 2;

/// The topology a vCPU reports.
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
fn bits_for(n: u32) -> u32 {
    if n <= 1 {
        0
    } else {
        32 - (n - 1).leading_zeros()
    }
}

/// Rewrites `cpuid` (KVM_GET_SUPPORTED_CPUID's output) for vCPU `apic_id`.
pub fn normalize(cpuid: &mut CpuId, apic_id: u8, topo: Topology) {
    for entry in cpuid.as_mut_slice().iter_mut() {
        normalize_entry(entry, apic_id, topo);
    }
}

fn normalize_entry(e: &mut kvm_cpuid_entry2, apic_id: u8, topo: Topology) {
    let apic = u32::from(apic_id);
    let count = u32::from(topo.vcpu_count);
    let threads = u32::from(topo.threads_per_core);
    match e.function {
        LEAF_FEATURES => {
            // EBX: [31:24] initial APIC ID, [23:16] logical processors per package,
            // [15:8] CLFLUSH line size in quadwords.
            let logical = 1u32 << topo.package_bits();
            e.ebx = (apic << 24) | ((logical & 0xff) << 16) | (8 << 8) | (e.ebx & 0xff);
            e.ecx = (e.ecx | ECX_HYPERVISOR) & !ECX_VMX;
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
        LEAF_PMU | LEAF_SVM_FEATURES => {
            // No virtual PMU, no nested SVM.
            e.eax = 0;
            e.ebx = 0;
            e.ecx = 0;
            e.edx = 0;
        }
        LEAF_TOPOLOGY | LEAF_TOPOLOGY_V2 => {
            e.edx = apic;
            match e.index {
                0 => {
                    e.eax = topo.thread_bits();
                    e.ebx = threads;
                    e.ecx = (LEVEL_TYPE_SMT << 8) | e.index;
                }
                1 => {
                    e.eax = topo.package_bits();
                    e.ebx = count;
                    e.ecx = (LEVEL_TYPE_CORE << 8) | e.index;
                }
                _ => {
                    e.eax = 0;
                    e.ebx = 0;
                    e.ecx = (LEVEL_TYPE_INVALID << 8) | (e.index & 0xff);
                }
            }
        }
        LEAF_EXT_FEATURES => {
            e.ecx &= !AMD_ECX_SVM;
            if count > 1 {
                e.ecx |= AMD_ECX_CMP_LEGACY;
            } else {
                e.ecx &= !AMD_ECX_CMP_LEGACY;
            }
        }
        LEAF_ADDR_SIZES => {
            // ECX: [15:12] APIC-ID bits per package, [7:0] logical processors - 1.
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
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_cpuid() -> CpuId {
        let entries = [
            (LEAF_FEATURES, 0, 0x0000_0800, 0),
            (LEAF_CACHE_PARAMS, 0, 0x21, 0),  // L1 data
            (LEAF_CACHE_PARAMS, 3, 0x163, 0), // L3 unified
            (LEAF_TOPOLOGY, 0, 0, 0),
            (LEAF_TOPOLOGY, 1, 0, 0),
            (LEAF_TOPOLOGY, 2, 0, 0),
            (LEAF_PMU, 0, 0x0703_0804, 0),
            (LEAF_ADDR_SIZES, 0, 0x3030, 0),
            (LEAF_AMD_EXT_APIC_ID, 0, 0, 0),
        ]
        .map(|(function, index, eax, ebx)| kvm_cpuid_entry2 {
            function,
            index,
            eax,
            ebx,
            ..Default::default()
        });
        CpuId::from_entries(&entries).unwrap()
    }

    fn find(c: &CpuId, function: u32, index: u32) -> kvm_cpuid_entry2 {
        *c.as_slice()
            .iter()
            .find(|e| e.function == function && e.index == index)
            .unwrap()
    }

    #[test]
    fn each_vcpu_sees_its_apic_id() {
        let topo = Topology::new(4, false);
        for id in 0..4u8 {
            let mut c = sample_cpuid();
            normalize(&mut c, id, topo);
            assert_eq!(find(&c, LEAF_FEATURES, 0).ebx >> 24, u32::from(id));
            assert_eq!(find(&c, LEAF_TOPOLOGY, 0).edx, u32::from(id));
            assert_eq!(find(&c, LEAF_TOPOLOGY, 1).edx, u32::from(id));
            assert_eq!(find(&c, LEAF_AMD_EXT_APIC_ID, 0).eax, u32::from(id));
            assert_ne!(find(&c, LEAF_FEATURES, 0).ecx & ECX_HYPERVISOR, 0);
        }
    }

    #[test]
    fn hardware_virtualization_is_hidden() {
        let mut c = sample_cpuid();
        let mut entries = c.as_slice().to_vec();
        entries[0].ecx |= ECX_VMX;
        entries.push(kvm_cpuid_entry2 {
            function: LEAF_EXT_FEATURES,
            ecx: AMD_ECX_SVM | AMD_ECX_CMP_LEGACY,
            ..Default::default()
        });
        entries.push(kvm_cpuid_entry2 {
            function: LEAF_SVM_FEATURES,
            eax: 1,
            ebx: 0x8000,
            edx: 0x1ff,
            ..Default::default()
        });
        c = CpuId::from_entries(&entries).unwrap();
        normalize(&mut c, 0, Topology::new(1, false));
        assert_eq!(find(&c, LEAF_FEATURES, 0).ecx & ECX_VMX, 0);
        assert_eq!(find(&c, LEAF_EXT_FEATURES, 0).ecx & AMD_ECX_SVM, 0);
        let svm = find(&c, LEAF_SVM_FEATURES, 0);
        assert_eq!((svm.eax, svm.ebx, svm.edx), (0, 0, 0));
    }

    #[test]
    fn topology_without_smt() {
        let mut c = sample_cpuid();
        normalize(&mut c, 2, Topology::new(3, false));
        let smt = find(&c, LEAF_TOPOLOGY, 0);
        assert_eq!(
            (smt.eax, smt.ebx, smt.ecx >> 8 & 0xff),
            (0, 1, LEVEL_TYPE_SMT)
        );
        let core = find(&c, LEAF_TOPOLOGY, 1);
        assert_eq!(
            (core.eax, core.ebx, core.ecx >> 8 & 0xff),
            (2, 3, LEVEL_TYPE_CORE)
        );
        assert_eq!(
            find(&c, LEAF_TOPOLOGY, 2).ecx >> 8 & 0xff,
            LEVEL_TYPE_INVALID
        );
        let addr = find(&c, LEAF_ADDR_SIZES, 0);
        assert_eq!((addr.ecx & 0xff, addr.ecx >> 12 & 0xf), (2, 2));
        assert_eq!(find(&c, LEAF_FEATURES, 0).ebx >> 16 & 0xff, 4);
        let ext = find(&c, LEAF_AMD_EXT_APIC_ID, 0);
        assert_eq!((ext.ebx >> 8 & 0xff, ext.ebx & 0xff), (0, 2));
        // L1 shared by one thread, L3 by all; three cores rounded up to four ID slots.
        assert_eq!(find(&c, LEAF_CACHE_PARAMS, 0).eax >> 14 & 0xfff, 0);
        assert_eq!(find(&c, LEAF_CACHE_PARAMS, 3).eax >> 14 & 0xfff, 2);
        assert_eq!(find(&c, LEAF_CACHE_PARAMS, 0).eax >> 26, 3);
        assert_eq!(find(&c, LEAF_PMU, 0).eax, 0);
    }

    #[test]
    fn topology_with_smt() {
        let topo = Topology::new(4, true);
        let mut c = sample_cpuid();
        normalize(&mut c, 3, topo);
        let smt = find(&c, LEAF_TOPOLOGY, 0);
        assert_eq!((smt.eax, smt.ebx), (1, 2));
        let core = find(&c, LEAF_TOPOLOGY, 1);
        assert_eq!((core.eax, core.ebx), (2, 4));
        let ext = find(&c, LEAF_AMD_EXT_APIC_ID, 0);
        // vCPU 3 = thread 1 of core 1.
        assert_eq!((ext.ebx >> 8 & 0xff, ext.ebx & 0xff), (1, 1));
        assert_eq!(find(&c, LEAF_CACHE_PARAMS, 0).eax >> 14 & 0xfff, 1);
        assert_eq!(find(&c, LEAF_CACHE_PARAMS, 0).eax >> 26, 1);
    }

    #[test]
    fn single_vcpu_has_no_htt_and_smt_is_ignored() {
        let topo = Topology::new(1, true);
        assert_eq!(topo.threads_per_core, 1);
        let mut c = sample_cpuid();
        normalize(&mut c, 0, topo);
        assert_eq!(find(&c, LEAF_FEATURES, 0).edx & EDX_HTT, 0);
        assert_eq!(find(&c, LEAF_TOPOLOGY, 1).ebx, 1);
    }

    #[test]
    fn bits_for_rounds_up() {
        assert_eq!([1, 2, 3, 4, 5, 32].map(bits_for), [0, 1, 2, 2, 3, 5]);
    }
}

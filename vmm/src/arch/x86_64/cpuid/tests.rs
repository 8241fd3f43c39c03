//! Fixtures shaped like what today's kernels return from `KVM_GET_SUPPORTED_CPUID`, and the
//! guest-visible leaves each vCPU must get from them.

use kvm_bindings::{kvm_cpuid_entry2, CpuId, KVM_CPUID_FLAG_SIGNIFCANT_INDEX};

use super::topology::{bits_for, LEVEL_TYPE_CORE, LEVEL_TYPE_SMT};
use super::*;

const INTEL: (u32, u32, u32) = (0x756e_6547, 0x4965_6e69, 0x6c65_746e); // "GenuineIntel"
const AMD: (u32, u32, u32) = (0x6874_7541, 0x6974_6e65, 0x444d_4163); // "AuthenticAMD"

fn entry(function: u32, index: u32, eax: u32, ebx: u32, ecx: u32) -> kvm_cpuid_entry2 {
    kvm_cpuid_entry2 {
        function,
        index,
        eax,
        ebx,
        ecx,
        ..Default::default()
    }
}

fn vendor_leaf(max_basic: u32, (ebx, edx, ecx): (u32, u32, u32)) -> kvm_cpuid_entry2 {
    kvm_cpuid_entry2 {
        eax: max_basic,
        ebx,
        ecx,
        edx,
        ..Default::default()
    }
}

/// An Intel host on Linux >= 6.2: leaf 0xB has sub-leaf 0 only, all zero; no 0x1F entries
/// although the maximum basic leaf is 0x1F.
fn intel_modern(max_basic: u32) -> CpuId {
    let entries = [
        vendor_leaf(max_basic, INTEL),
        entry(LEAF_FEATURES, 0, 0x806f8, 0x0000_0800, ECX_VMX | ECX_PDCM),
        entry(LEAF_CACHE_PARAMS, 0, 0x21, 0, 0),  // L1 data
        entry(LEAF_CACHE_PARAMS, 3, 0x163, 0, 0), // L3 unified
        entry(LEAF_PMU, 0, 0x0703_0804, 0, 0),
        entry(LEAF_TOPOLOGY, 0, 0, 0, 0),
        entry(LEAF_EXT_FEATURES, 0, 0, 0, 0),
        entry(LEAF_ADDR_SIZES, 0, 0x3030, 0, 0),
    ];
    CpuId::from_entries(&entries).unwrap()
}

/// An AMD host: no 0xB/0x1F entries (maximum basic leaf 0x10), the AMD topology leaves present
/// with host values, a PMU advertised through PERFCTR_CORE and leaf 0x80000022.
fn amd_host() -> CpuId {
    let entries = [
        vendor_leaf(0x10, AMD),
        entry(LEAF_FEATURES, 0, 0xa00f11, 0x0000_0800, 0),
        entry(
            LEAF_EXT_FEATURES,
            0,
            0,
            0,
            AMD_ECX_SVM | AMD_ECX_PERFCTR_CORE,
        ),
        entry(LEAF_ADDR_SIZES, 0, 0x3030, 0, 0x700f),
        entry(LEAF_SVM_FEATURES, 0, 1, 0x8000, 0),
        entry(LEAF_AMD_CACHE_TOPOLOGY, 0, 0x121, 0, 0),
        entry(LEAF_AMD_CACHE_TOPOLOGY, 3, 0x163, 0, 0),
        entry(LEAF_AMD_EXT_APIC_ID, 0, 7, 0x107, 0),
        entry(LEAF_AMD_PERFMON_V2, 0, 0x3, 0x6, 0),
    ];
    CpuId::from_entries(&entries).unwrap()
}

fn get(c: &CpuId, function: u32, index: u32) -> kvm_cpuid_entry2 {
    *find(c.as_slice(), function, index).unwrap_or_else(|| panic!("no leaf {function:#x}.{index}"))
}

fn has(c: &CpuId, function: u32) -> bool {
    c.as_slice().iter().any(|e| e.function == function)
}

/// The (shift, count, level type, x2APIC id) of each sub-leaf of an extended-topology leaf,
/// as a guest enumerates them: until the INVALID level.
fn levels(c: &CpuId, function: u32) -> Vec<(u32, u32, u32, u32)> {
    let mut out = Vec::new();
    for index in 0.. {
        let e = get(c, function, index);
        assert_eq!(e.flags & KVM_CPUID_FLAG_SIGNIFCANT_INDEX, 1);
        assert_eq!(e.ecx & 0xff, index, "ECX[7:0] echoes the sub-leaf");
        let level_type = (e.ecx >> 8) & 0xff;
        if level_type == 0 {
            break;
        }
        out.push((e.eax & 0x1f, e.ebx & 0xffff, level_type, e.edx));
    }
    out
}

#[test]
fn intel_zeroed_leaf_b_is_built_from_scratch() {
    let topo = Topology::new(2, true);
    for id in 0..2u8 {
        let c = normalize(&intel_modern(0x16), id, topo).unwrap();
        let apic = u32::from(id);
        assert_eq!(
            levels(&c, LEAF_TOPOLOGY),
            vec![(1, 2, LEVEL_TYPE_SMT, apic), (1, 2, LEVEL_TYPE_CORE, apic)]
        );
        // Maximum basic leaf 0x16: no 0x1F for the guest.
        assert!(!has(&c, LEAF_TOPOLOGY_V2));
        assert_eq!(get(&c, LEAF_FEATURES, 0).ebx >> 24, apic);
    }
}

#[test]
fn intel_with_leaf_1f_gets_both_leaves_alike() {
    let topo = Topology::new(4, true);
    let c = normalize(&intel_modern(0x1f), 3, topo).unwrap();
    let expected = vec![(1, 2, LEVEL_TYPE_SMT, 3), (2, 4, LEVEL_TYPE_CORE, 3)];
    assert_eq!(levels(&c, LEAF_TOPOLOGY), expected);
    assert_eq!(levels(&c, LEAF_TOPOLOGY_V2), expected);
}

#[test]
fn intel_without_smt_has_one_thread_per_core() {
    let c = normalize(&intel_modern(0x1f), 2, Topology::new(3, false)).unwrap();
    assert_eq!(
        levels(&c, LEAF_TOPOLOGY_V2),
        vec![(0, 1, LEVEL_TYPE_SMT, 2), (2, 3, LEVEL_TYPE_CORE, 2)]
    );
    let addr = get(&c, LEAF_ADDR_SIZES, 0);
    assert_eq!((addr.ecx & 0xff, addr.ecx >> 12 & 0xf), (2, 2));
    assert_eq!(get(&c, LEAF_FEATURES, 0).ebx >> 16 & 0xff, 4);
    // L1 shared by one thread, L3 by all; three cores rounded up to four ID slots.
    assert_eq!(get(&c, LEAF_CACHE_PARAMS, 0).eax >> 14 & 0xfff, 0);
    assert_eq!(get(&c, LEAF_CACHE_PARAMS, 3).eax >> 14 & 0xfff, 2);
    assert_eq!(get(&c, LEAF_CACHE_PARAMS, 0).eax >> 26, 3);
}

#[test]
fn intel_gets_no_amd_only_bits_and_no_pmu() {
    let c = normalize(&intel_modern(0x1f), 0, Topology::new(2, false)).unwrap();
    assert_eq!(get(&c, LEAF_EXT_FEATURES, 0).ecx & AMD_ECX_CMP_LEGACY, 0);
    assert!(!has(&c, LEAF_AMD_EXT_APIC_ID));
    let features = get(&c, LEAF_FEATURES, 0);
    assert_eq!(features.ecx & (ECX_VMX | ECX_PDCM), 0);
    assert_ne!(features.ecx & ECX_HYPERVISOR, 0);
    assert_ne!(features.edx & EDX_HTT, 0);
    let pmu = get(&c, LEAF_PMU, 0);
    assert_eq!((pmu.eax, pmu.ebx, pmu.ecx, pmu.edx), (0, 0, 0, 0));
}

#[test]
fn intel_host_amd_leaves_reported_anyway_are_dropped() {
    let mut entries = intel_modern(0x1f).as_slice().to_vec();
    entries.push(entry(LEAF_AMD_EXT_APIC_ID, 0, 9, 9, 9));
    entries.push(entry(LEAF_AMD_CACHE_TOPOLOGY, 0, 9, 9, 9));
    let host = CpuId::from_entries(&entries).unwrap();
    let c = normalize(&host, 1, Topology::new(2, true)).unwrap();
    assert!(!has(&c, LEAF_AMD_EXT_APIC_ID));
    assert!(!has(&c, LEAF_AMD_CACHE_TOPOLOGY));
}

#[test]
fn amd_topology_comes_from_the_amd_leaves() {
    let topo = Topology::new(4, true);
    let c = normalize(&amd_host(), 3, topo).unwrap();
    // Maximum basic leaf 0x10: leaf 0xB (which Linux also reads on AMD) tells the same
    // story; 0x1F is beyond the maximum and absent.
    assert_eq!(
        levels(&c, LEAF_TOPOLOGY),
        vec![(1, 2, LEVEL_TYPE_SMT, 3), (2, 4, LEVEL_TYPE_CORE, 3)]
    );
    assert!(!has(&c, LEAF_TOPOLOGY_V2));
    let ext = get(&c, LEAF_AMD_EXT_APIC_ID, 0);
    // vCPU 3 = thread 1 of core 1.
    assert_eq!((ext.eax, ext.ebx >> 8 & 0xff, ext.ebx & 0xff), (3, 1, 1));
    let addr = get(&c, LEAF_ADDR_SIZES, 0);
    assert_eq!((addr.ecx & 0xff, addr.ecx >> 12 & 0xf), (3, 2));
    assert_ne!(get(&c, LEAF_EXT_FEATURES, 0).ecx & AMD_ECX_CMP_LEGACY, 0);
    // L1 shared by the two threads of a core, L3 by all four.
    assert_eq!(get(&c, LEAF_AMD_CACHE_TOPOLOGY, 0).eax >> 14 & 0xfff, 1);
    assert_eq!(get(&c, LEAF_AMD_CACHE_TOPOLOGY, 3).eax >> 14 & 0xfff, 3);
}

#[test]
fn amd_pmu_and_svm_are_hidden() {
    let c = normalize(&amd_host(), 0, Topology::new(1, false)).unwrap();
    let ext = get(&c, LEAF_EXT_FEATURES, 0);
    assert_eq!(
        ext.ecx & (AMD_ECX_SVM | AMD_ECX_PERFCTR_CORE | AMD_ECX_CMP_LEGACY),
        0
    );
    for leaf in [LEAF_AMD_PERFMON_V2, LEAF_SVM_FEATURES] {
        let e = get(&c, leaf, 0);
        assert_eq!((e.eax, e.ebx, e.ecx, e.edx), (0, 0, 0, 0), "{leaf:#x}");
    }
    assert_eq!(get(&c, LEAF_FEATURES, 0).edx & EDX_HTT, 0);
}

#[test]
fn amd_host_with_leaf_b_gets_it_rebuilt() {
    let mut entries = amd_host().as_slice().to_vec();
    entries[0].eax = 0x10;
    entries.push(entry(LEAF_TOPOLOGY, 0, 1, 2, 0x100));
    entries.push(entry(LEAF_TOPOLOGY, 1, 7, 64, 0x201));
    let c = normalize(
        &CpuId::from_entries(&entries).unwrap(),
        1,
        Topology::new(2, false),
    )
    .unwrap();
    assert_eq!(
        levels(&c, LEAF_TOPOLOGY),
        vec![(0, 1, LEVEL_TYPE_SMT, 1), (1, 2, LEVEL_TYPE_CORE, 1)]
    );
}

#[test]
fn single_vcpu_has_no_htt_and_smt_is_ignored() {
    let topo = Topology::new(1, true);
    assert_eq!(topo.threads_per_core, 1);
    let c = normalize(&intel_modern(0x1f), 0, topo).unwrap();
    assert_eq!(get(&c, LEAF_FEATURES, 0).edx & EDX_HTT, 0);
    assert_eq!(
        levels(&c, LEAF_TOPOLOGY),
        vec![(0, 1, LEVEL_TYPE_SMT, 0), (0, 1, LEVEL_TYPE_CORE, 0)]
    );
}

#[test]
fn memory_must_fit_the_physical_address_width() {
    let c = normalize(&intel_modern(0x1f), 0, Topology::new(1, false)).unwrap();
    assert_eq!(phys_addr_bits(&c), 0x30);
    assert_eq!(check_memory_end(&c, 1 << 48), Ok(()));
    assert_eq!(
        check_memory_end(&c, (1 << 48) + 4096),
        Err(CpuidError::MemoryBeyondPhysAddrBits {
            end: (1 << 48) + 4096,
            bits: 48
        })
    );
    let mut entries = c.as_slice().to_vec();
    entries.retain(|e| e.function != LEAF_ADDR_SIZES);
    let without = CpuId::from_entries(&entries).unwrap();
    assert_eq!(phys_addr_bits(&without), DEFAULT_PHYS_ADDR_BITS);
    assert!(check_memory_end(&without, (64 << 30) + 1).is_err());
}

#[test]
fn bits_for_rounds_up() {
    assert_eq!([1, 2, 3, 4, 5, 32].map(bits_for), [0, 1, 2, 2, 3, 5]);
}

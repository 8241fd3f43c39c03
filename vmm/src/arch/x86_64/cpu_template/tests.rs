use kvm_bindings::{kvm_cpuid_entry2, CpuId, KVM_CPUID_FLAG_SIGNIFCANT_INDEX};

use super::*;

fn entry(function: u32, index: u32, regs: [u32; 4]) -> kvm_cpuid_entry2 {
    kvm_cpuid_entry2 {
        function,
        index,
        flags: if function == 0x7 || function == 0xd {
            KVM_CPUID_FLAG_SIGNIFCANT_INDEX
        } else {
            0
        },
        eax: regs[0],
        ebx: regs[1],
        ecx: regs[2],
        edx: regs[3],
        ..Default::default()
    }
}

/// An Intel host with every feature bit of leaves 1 and 7 set.
fn intel_host() -> CpuId {
    let vendor = [0x756e_6547, 0x6c65_746e, 0x4965_6e69]; // EBX "Genu", ECX "ntel", EDX "ineI"
    CpuId::from_entries(&[
        entry(0x0, 0, [0xd, vendor[0], vendor[1], vendor[2]]),
        entry(0x1, 0, [0, 0, u32::MAX, u32::MAX]),
        entry(0x7, 0, [1, u32::MAX, u32::MAX, u32::MAX]),
        entry(0x7, 1, [u32::MAX, 0, 0, 0]),
    ])
    .expect("cpuid")
}

fn regs(c: &CpuId, function: u32, index: u32) -> [u32; 4] {
    let e = c
        .as_slice()
        .iter()
        .find(|e| e.function == function && e.index == index)
        .expect("entry");
    [e.eax, e.ebx, e.ecx, e.edx]
}

#[test]
fn bitmaps_parse_and_print_in_firecrackers_notation() {
    let b = Bitmap::parse("0b1x0_x", 32).unwrap();
    assert_eq!((b.mask, b.value), (0b1010, 0b1000));
    assert_eq!(b.format(6), "0bxx1x0x");
    for bad in ["1010", "0b", "0b102", &format!("0b{}", "0".repeat(33))] {
        assert!(Bitmap::parse(bad, 32).is_err(), "{bad}");
    }
}

#[test]
fn a_custom_template_in_firecrackers_json_round_trips() {
    let text = r#"{"cpuid_modifiers": [{"leaf": "0x7", "subleaf": 0, "flags": 1,
        "modifiers": [{"register": "ebx", "bitmap": "0bxxxxxxxxxxxxxxx0xxxxxxxxxxxxxxxx"}]}],
        "msr_modifiers": [], "kvm_capabilities": []}"#;
    let t: CustomCpuTemplate = serde_json::from_str(text).unwrap();
    t.validate().unwrap();
    assert_eq!(t.cpuid_modifiers[0].leaf, Number(7));
    assert_eq!(t.cpuid_modifiers[0].modifiers[0].bitmap.mask, 1 << 16);
    let again: CustomCpuTemplate =
        serde_json::from_str(&serde_json::to_string(&t).unwrap()).unwrap();
    assert_eq!(t, again);
    let v = serde_json::to_value(&t).unwrap();
    assert_eq!(v["cpuid_modifiers"][0]["leaf"], "0x7");
}

#[test]
fn keys_xenia_does_not_honour_must_be_empty() {
    for (text, needle) in [
        (
            r#"{"msr_modifiers": [{"addr": "0x10a", "bitmap": "0b0"}]}"#,
            "msr_modifiers",
        ),
        (r#"{"kvm_capabilities": ["!56"]}"#, "kvm_capabilities"),
        (r#"{"reg_modifiers": [{}]}"#, "aarch64"),
        (r#"{"vcpu_features": [{}]}"#, "aarch64"),
    ] {
        let t: CustomCpuTemplate = serde_json::from_str(text).unwrap();
        let e = t.validate().unwrap_err().to_string();
        assert!(e.contains(needle), "{text}: {e}");
    }
    let e = serde_json::from_str::<CustomCpuTemplate>(
        r#"{"cpuid_modifiers": [{"leaf": "7x",
        "subleaf": "0", "modifiers": []}]}"#,
    )
    .unwrap_err();
    assert!(e.to_string().contains("7x"), "{e}");
}

#[test]
fn apply_clears_and_sets_only_the_given_bits() {
    let t: CustomCpuTemplate = serde_json::from_str(
        r#"{"cpuid_modifiers": [{"leaf": "0x7", "subleaf": "0x0",
            "modifiers": [{"register": "ebx", "bitmap": "0b0x1"}]},
            {"leaf": "0x7", "subleaf": "0x1",
            "modifiers": [{"register": "eax", "bitmap": "0b0000"}]},
            {"leaf": "0x1234", "subleaf": "0x0",
            "modifiers": [{"register": "eax", "bitmap": "0b0"}]}]}"#,
    )
    .unwrap();
    let host = intel_host();
    let out = t.apply(&host).unwrap();
    assert_eq!(regs(&out, 0x7, 0)[1], !0b100_u32);
    assert_eq!(regs(&out, 0x7, 0)[2], u32::MAX);
    assert_eq!(regs(&out, 0x7, 1)[0], !0b1111_u32);
    // A leaf the host lacks is not invented.
    assert_eq!(out.as_slice().len(), host.as_slice().len());
}

#[test]
fn a_bit_the_host_lacks_is_refused_by_name() {
    let mut host = intel_host();
    for e in host.as_mut_slice() {
        if e.function == 0x7 && e.index == 0 {
            e.ebx &= !(1 << 16);
        }
    }
    let t: CustomCpuTemplate = serde_json::from_str(
        r#"{"cpuid_modifiers": [{"leaf": "0x7", "subleaf": "0x0",
            "modifiers": [{"register": "ebx", "bitmap": "0b1_0000000000000000"}]}]}"#,
    )
    .unwrap();
    let e = t.check_host(&host).unwrap_err();
    assert_eq!(
        e.to_string(),
        "cpu-config: leaf 0x7 sub-leaf 0x0 ebx bit 16 (avx512f) is set to 1, but this \
         host's KVM does not offer it"
    );
    // Clearing it is always possible; a leaf the host lacks cannot be asked for.
    let t: CustomCpuTemplate = serde_json::from_str(
        r#"{"cpuid_modifiers": [{"leaf": "0x7", "subleaf": "0x0",
            "modifiers": [{"register": "ebx", "bitmap": "0b0_0000000000000000"}]},
            {"leaf": "0x4000", "subleaf": "0x0",
            "modifiers": [{"register": "eax", "bitmap": "0b0"}]}]}"#,
    )
    .unwrap();
    t.check_host(&host).unwrap();
    let t: CustomCpuTemplate = serde_json::from_str(
        r#"{"cpuid_modifiers": [{"leaf": "0x4000", "subleaf": "0x0",
            "modifiers": [{"register": "eax", "bitmap": "0b1"}]}]}"#,
    )
    .unwrap();
    assert!(matches!(
        t.check_host(&host),
        Err(TemplateError::FeatureMissing { leaf: 0x4000, .. })
    ));
}

#[test]
fn every_preset_parses_and_loads_for_its_vendor_only() {
    assert!(presets::all_parse().unwrap() > 100);
    for name in ["C3", "T2", "T2S", "T2CL"] {
        let t = presets::load(name, Vendor::Intel).unwrap();
        t.validate().unwrap();
        t.check_host(&intel_host()).unwrap();
        let e = presets::load(name, Vendor::Amd).unwrap_err().to_string();
        assert!(e.contains("Intel hosts") && e.contains("AMD"), "{e}");
    }
    assert!(presets::load("T2A", Vendor::Amd).is_ok());
    let e = presets::load("T2A", Vendor::Intel).unwrap_err().to_string();
    assert!(e.contains("AMD hosts"), "{e}");
    assert!(matches!(
        presets::load("V1N1", Vendor::Intel),
        Err(TemplateError::UnknownStatic(_))
    ));
}

#[test]
fn t2_hides_avx512_and_keeps_avx2_c3_hides_avx2_too() {
    let host = intel_host();
    let t2 = presets::load("T2", Vendor::Intel)
        .unwrap()
        .apply(&host)
        .unwrap();
    let ebx = regs(&t2, 0x7, 0)[1];
    assert_eq!(ebx & (1 << 16), 0, "avx512f hidden");
    assert_eq!(ebx & (1 << 29), 0, "sha hidden");
    assert_ne!(ebx & (1 << 5), 0, "avx2 kept");
    let c3 = presets::load("C3", Vendor::Intel)
        .unwrap()
        .apply(&host)
        .unwrap();
    assert_eq!(regs(&c3, 0x7, 0)[1] & (1 << 5), 0, "avx2 hidden");
    assert_eq!(regs(&c3, 0x1, 0)[2] & (1 << 12), 0, "fma hidden");
    // Speculation controls stay as the host has them.
    assert_eq!(regs(&t2, 0x7, 0)[3] >> 26, u32::MAX >> 26);
}

#[test]
fn resolve_picks_one_template() {
    let custom = CustomCpuTemplate::default();
    assert_eq!(resolve(None, None, Vendor::Intel), Ok(None));
    assert_eq!(resolve(Some("None"), None, Vendor::Intel), Ok(None));
    assert_eq!(
        resolve(Some("T2"), Some(&custom), Vendor::Intel),
        Err(TemplateError::Both)
    );
    assert_eq!(
        resolve(None, Some(&custom), Vendor::Intel),
        Ok(Some(custom.clone()))
    );
    assert!(resolve(Some("T2S"), None, Vendor::Intel).unwrap().is_some());
}

#[test]
fn a_host_that_cannot_honour_the_template_is_refused_as_a_whole() {
    let intel = intel_host();
    assert_eq!(check_for_host(None, None, &intel), Ok(()));
    assert_eq!(check_for_host(Some("T2"), None, &intel), Ok(()));
    // A snapshot made on AMD with T2A, restored on Intel.
    assert!(matches!(
        check_for_host(Some("T2A"), None, &intel),
        Err(TemplateError::WrongVendor { .. })
    ));
    // A custom template that kept a bit this host lacks.
    let mut host = intel_host();
    for e in host.as_mut_slice() {
        if e.function == 0x7 && e.index == 0 {
            e.ebx = 0;
        }
    }
    let t: CustomCpuTemplate = serde_json::from_str(
        r#"{"cpuid_modifiers": [{"leaf": "0x7", "subleaf": "0x0",
            "modifiers": [{"register": "ebx", "bitmap": "0b100000"}]}]}"#,
    )
    .unwrap();
    assert!(matches!(
        check_for_host(None, Some(&t), &host),
        Err(TemplateError::FeatureMissing { bit: 5, .. })
    ));
    assert_eq!(check_for_host(None, Some(&t), &intel), Ok(()));
}

//! CPU templates: what CPUID the guest sees, made the same on every host of a fleet.
//!
//! A custom template is Firecracker's JSON (`PUT /cpu-config`, the `cpu-config` config-file
//! section): CPUID modifiers per leaf, sub-leaf and register, each a bitmap of `0`, `1` and
//! `x` (leave as the host has it). The static templates Firecracker still accepts in
//! `machine-config.cpu_template` (`C3`, `T2`, `T2S`, `T2CL`, `T2A`) are presets in our own
//! data files (`data/*.tmpl`, see [`presets`]).
//!
//! A template is applied to KVM's supported CPUID before xenia's per-vCPU normalisation, so
//! the topology leaves, APIC IDs, the hypervisor bit and the hidden PMU stay xenia's. A
//! template may only take features away or keep them: a bit set to `1` that this host's KVM
//! does not offer is refused, naming the feature, and so is a static template for the other
//! CPU vendor.

mod bitmap;
pub mod presets;
#[cfg(test)]
mod tests;

use kvm_bindings::{kvm_cpuid_entry2, CpuId};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

pub use bitmap::Bitmap;

use super::cpuid::Vendor;

/// Errors from reading, checking or applying a template.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TemplateError {
    #[error("cpu-config: `{0}` is not a number (decimal or 0x-hex)")]
    BadNumber(String),
    #[error("cpu-config: bitmap `{bitmap}`: {reason}")]
    BadBitmap { bitmap: String, reason: String },
    #[error("cpu-config: {0} is not supported on x86_64 (it is for aarch64)")]
    Aarch64Only(&'static str),
    #[error(
        "cpu-config: kvm_capabilities is not supported by xenia (it checks the capabilities it \
         needs itself)"
    )]
    KvmCapabilities,
    #[error(
        "cpu-config: msr_modifiers are not supported by this version of xenia (CPUID modifiers \
         are)"
    )]
    MsrModifiers,
    #[error(
        "cpu-config: leaf {leaf:#x} sub-leaf {subleaf:#x} {register} bit {bit}{name} is set \
         to 1, but this host's KVM does not offer it"
    )]
    FeatureMissing {
        leaf: u32,
        subleaf: u32,
        register: Register,
        bit: u32,
        name: String,
    },
    #[error("machine-config.cpu_template `{template}` is for {wanted} hosts; this host is {host}")]
    WrongVendor {
        template: String,
        wanted: &'static str,
        host: &'static str,
    },
    #[error(
        "machine-config.cpu_template `{0}` is not known: use C3, T2, T2S, T2CL, T2A or None \
         (V1N1 is for aarch64)"
    )]
    UnknownStatic(String),
    #[error("machine-config.cpu_template and cpu-config cannot both be set")]
    Both,
    #[error("the CPUID table would need more entries than KVM takes")]
    TooManyEntries,
}

/// A CPUID output register.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Register {
    Eax,
    Ebx,
    Ecx,
    Edx,
}

impl std::fmt::Display for Register {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Register::Eax => "eax",
            Register::Ebx => "ebx",
            Register::Ecx => "ecx",
            Register::Edx => "edx",
        })
    }
}

impl Register {
    fn of(self, e: &mut kvm_cpuid_entry2) -> &mut u32 {
        match self {
            Register::Eax => &mut e.eax,
            Register::Ebx => &mut e.ebx,
            Register::Ecx => &mut e.ecx,
            Register::Edx => &mut e.edx,
        }
    }
}

/// A 32-bit number written as a string (`"0x7"`, `"7"`) or a JSON number; written back as
/// a hex string, as Firecracker's templates write leaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Number(pub u32);

impl Serialize for Number {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&format_args!("{:#x}", self.0))
    }
}

impl<'de> Deserialize<'de> for Number {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u64),
            Text(String),
        }
        let bad = |s: String| serde::de::Error::custom(TemplateError::BadNumber(s));
        match Raw::deserialize(d)? {
            Raw::Int(v) => u32::try_from(v).map(Number).map_err(|_| bad(v.to_string())),
            Raw::Text(t) => parse_number(&t).map(Number).ok_or_else(|| bad(t)),
        }
    }
}

pub(crate) fn parse_number(text: &str) -> Option<u32> {
    let t = text.trim();
    match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        Some(hex) if !hex.is_empty() => u32::from_str_radix(hex, 16).ok(),
        Some(_) => None,
        None if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) => t.parse().ok(),
        None => None,
    }
}

/// One register of one CPUID leaf.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterModifier {
    pub register: Register,
    pub bitmap: Bitmap,
}

/// The registers of one CPUID leaf and sub-leaf to change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CpuidLeafModifier {
    pub leaf: Number,
    pub subleaf: Number,
    /// KVM's CPUID entry flags; accepted for compatibility, KVM's own flags are kept.
    #[serde(default)]
    pub flags: u32,
    pub modifiers: Vec<RegisterModifier>,
}

/// Firecracker's custom CPU template. Only CPUID modifiers are honoured; the other keys are
/// accepted when empty, as templates written for Firecracker carry them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CustomCpuTemplate {
    #[serde(default)]
    pub cpuid_modifiers: Vec<CpuidLeafModifier>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub msr_modifiers: Vec<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kvm_capabilities: Vec<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub vcpu_features: Vec<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reg_modifiers: Vec<serde_json::Value>,
}

impl CustomCpuTemplate {
    /// Checks what needs no host: the keys xenia does not honour must be empty.
    pub fn validate(&self) -> Result<(), TemplateError> {
        if !self.vcpu_features.is_empty() {
            return Err(TemplateError::Aarch64Only("vcpu_features"));
        }
        if !self.reg_modifiers.is_empty() {
            return Err(TemplateError::Aarch64Only("reg_modifiers"));
        }
        if !self.kvm_capabilities.is_empty() {
            return Err(TemplateError::KvmCapabilities);
        }
        if !self.msr_modifiers.is_empty() {
            return Err(TemplateError::MsrModifiers);
        }
        Ok(())
    }

    /// Refuses a template that sets a bit this host's KVM does not offer (`supported` is
    /// KVM_GET_SUPPORTED_CPUID's output).
    pub fn check_host(&self, supported: &CpuId) -> Result<(), TemplateError> {
        let entries = supported.as_slice();
        for leaf in &self.cpuid_modifiers {
            let entry = find(entries, leaf.leaf.0, leaf.subleaf.0);
            for m in &leaf.modifiers {
                let offered = entry.map_or(0, |e| {
                    let mut e = *e;
                    *m.register.of(&mut e)
                });
                let wanted = (m.bitmap.value & m.bitmap.mask) as u32;
                let missing = wanted & !offered;
                if missing != 0 {
                    let bit = missing.trailing_zeros();
                    let name = presets::feature_name(leaf.leaf.0, leaf.subleaf.0, m.register, bit)
                        .map(|n| format!(" ({n})"))
                        .unwrap_or_default();
                    return Err(TemplateError::FeatureMissing {
                        leaf: leaf.leaf.0,
                        subleaf: leaf.subleaf.0,
                        register: m.register,
                        bit,
                        name,
                    });
                }
            }
        }
        Ok(())
    }

    /// Returns `supported` with the template's modifiers applied. Leaves the host does not
    /// report are left out (a template can only clear bits there, and absent is all zero).
    pub fn apply(&self, supported: &CpuId) -> Result<CpuId, TemplateError> {
        let mut entries: Vec<kvm_cpuid_entry2> = supported.as_slice().to_vec();
        for leaf in &self.cpuid_modifiers {
            let found = entries
                .iter_mut()
                .filter(|e| e.function == leaf.leaf.0 && matches_index(e, leaf.subleaf.0));
            for e in found {
                for m in &leaf.modifiers {
                    let reg = m.register.of(e);
                    let mask = m.bitmap.mask as u32;
                    *reg = (*reg & !mask) | (m.bitmap.value as u32 & mask);
                }
            }
        }
        CpuId::from_entries(&entries).map_err(|_| TemplateError::TooManyEntries)
    }
}

/// Whether `e` answers sub-leaf `index`: its own index when KVM says the index matters,
/// every index otherwise.
fn matches_index(e: &kvm_cpuid_entry2, index: u32) -> bool {
    e.flags & kvm_bindings::KVM_CPUID_FLAG_SIGNIFCANT_INDEX == 0 || e.index == index
}

fn find(entries: &[kvm_cpuid_entry2], leaf: u32, index: u32) -> Option<&kvm_cpuid_entry2> {
    entries
        .iter()
        .find(|e| e.function == leaf && matches_index(e, index))
}

/// The template a VM boots with: the custom one, or a static one by name.
pub fn resolve(
    static_name: Option<&str>,
    custom: Option<&CustomCpuTemplate>,
    host: Vendor,
) -> Result<Option<CustomCpuTemplate>, TemplateError> {
    let static_name = static_name.filter(|n| *n != "None");
    match (static_name, custom) {
        (Some(_), Some(_)) => Err(TemplateError::Both),
        (None, Some(c)) => {
            c.validate()?;
            Ok(Some(c.clone()))
        }
        (Some(name), None) => presets::load(name, host).map(Some),
        (None, None) => Ok(None),
    }
}

/// Whether this host (`supported`: its KVM's CPUID) can honour the template a VM asks for:
/// the vendor of a static one, every bit set to 1. Used before boot and when a snapshot taken
/// with a template is restored on another host.
pub fn check_for_host(
    static_name: Option<&str>,
    custom: Option<&CustomCpuTemplate>,
    supported: &CpuId,
) -> Result<(), TemplateError> {
    if let Some(t) = resolve(static_name, custom, host_vendor(supported))? {
        t.check_host(supported)?;
    }
    Ok(())
}

/// The host's vendor as KVM reports it.
pub fn host_vendor(supported: &CpuId) -> Vendor {
    Vendor::of(supported.as_slice())
}

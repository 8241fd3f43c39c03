//! The static templates (`machine-config.cpu_template`), read from our data files.
//!
//! A data file is lines of `vendor intel|amd`, `include NAME` (another preset's lines) and
//! `hide LEAF SUBLEAF REGISTER BIT NAME` (clear one feature bit); `#` starts a comment. Each
//! hidden feature is named, so the files read as the feature list they are, and the names
//! also label bits in error messages.

use super::bitmap::Bitmap;
use super::{
    parse_number, CpuidLeafModifier, CustomCpuTemplate, Number, Register, RegisterModifier,
};
use super::{TemplateError, Vendor};

/// (name, data file), for every static template.
const PRESETS: &[(&str, &str)] = &[
    ("C3", include_str!("data/c3.tmpl")),
    ("T2", include_str!("data/t2.tmpl")),
    ("T2S", include_str!("data/t2s.tmpl")),
    ("T2CL", include_str!("data/t2cl.tmpl")),
    ("T2A", include_str!("data/t2a.tmpl")),
];

/// The static template names xenia knows (plus `None`).
pub fn is_known(name: &str) -> bool {
    name == "None" || PRESETS.iter().any(|(n, _)| *n == name)
}

/// One `hide` line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Hide<'a> {
    leaf: u32,
    subleaf: u32,
    register: Register,
    bit: u32,
    name: &'a str,
}

/// A preset's vendor and hidden bits, `include`s followed. Data files are ours and tested,
/// so a malformed line is a build-time bug: the parser still reports it rather than panic.
fn parse(name: &str, depth: u32) -> Result<(Option<&'static str>, Vec<Hide<'static>>), String> {
    let text = PRESETS
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, t)| *t)
        .ok_or_else(|| format!("no preset `{name}`"))?;
    if depth > 4 {
        return Err(format!("`{name}`: includes nest too deep"));
    }
    let mut vendor = None;
    let mut hides = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        let words: Vec<&'static str> = line.split_whitespace().collect();
        let bad = || format!("`{name}` line {}: `{line}`", n + 1);
        match words.as_slice() {
            [] => {}
            ["vendor", v @ ("intel" | "amd")] => vendor = Some(*v),
            ["include", other] => hides.extend(parse(other, depth + 1)?.1),
            ["hide", leaf, subleaf, register, bit, feature] => {
                let register = match *register {
                    "eax" => Register::Eax,
                    "ebx" => Register::Ebx,
                    "ecx" => Register::Ecx,
                    "edx" => Register::Edx,
                    _ => return Err(bad()),
                };
                hides.push(Hide {
                    leaf: parse_number(leaf).ok_or_else(bad)?,
                    subleaf: parse_number(subleaf).ok_or_else(bad)?,
                    register,
                    bit: bit.parse().ok().filter(|b| *b < 32).ok_or_else(bad)?,
                    name: feature,
                });
            }
            _ => return Err(bad()),
        }
    }
    Ok((vendor, hides))
}

/// The static template `name` as a custom template, for a host of vendor `host`.
pub fn load(name: &str, host: Vendor) -> Result<CustomCpuTemplate, TemplateError> {
    if !PRESETS.iter().any(|(n, _)| *n == name) {
        return Err(TemplateError::UnknownStatic(name.to_owned()));
    }
    let (vendor, hides) = parse(name, 0).map_err(|_| TemplateError::UnknownStatic(name.into()))?;
    let (wanted, host_name) = (
        vendor.unwrap_or("intel"),
        match host {
            Vendor::Intel => "intel",
            Vendor::Amd => "amd",
            Vendor::Other => "other",
        },
    );
    if wanted != host_name {
        return Err(TemplateError::WrongVendor {
            template: name.to_owned(),
            wanted: if wanted == "amd" { "AMD" } else { "Intel" },
            host: match host {
                Vendor::Intel => "Intel",
                Vendor::Amd => "AMD",
                Vendor::Other => "neither Intel nor AMD",
            },
        });
    }
    // One modifier per (leaf, sub-leaf, register), all its hidden bits at 0.
    let mut leaves: Vec<CpuidLeafModifier> = Vec::new();
    for h in hides {
        let index = match leaves
            .iter()
            .position(|l| l.leaf.0 == h.leaf && l.subleaf.0 == h.subleaf)
        {
            Some(i) => i,
            None => {
                leaves.push(CpuidLeafModifier {
                    leaf: Number(h.leaf),
                    subleaf: Number(h.subleaf),
                    flags: 0,
                    modifiers: Vec::new(),
                });
                leaves.len() - 1
            }
        };
        let mods = &mut leaves[index].modifiers;
        match mods.iter_mut().find(|m| m.register == h.register) {
            Some(m) => m.bitmap.mask |= 1 << h.bit,
            None => mods.push(RegisterModifier {
                register: h.register,
                bitmap: Bitmap {
                    mask: 1 << h.bit,
                    value: 0,
                },
            }),
        }
    }
    Ok(CustomCpuTemplate {
        cpuid_modifiers: leaves,
        ..Default::default()
    })
}

/// The name our data files give a feature bit, if any.
pub fn feature_name(leaf: u32, subleaf: u32, register: Register, bit: u32) -> Option<&'static str> {
    PRESETS.iter().find_map(|(name, _)| {
        parse(name, 0).ok()?.1.into_iter().find_map(|h| {
            (h.leaf == leaf && h.subleaf == subleaf && h.register == register && h.bit == bit)
                .then_some(h.name)
        })
    })
}

#[cfg(test)]
pub(super) fn all_parse() -> Result<usize, String> {
    let mut count = 0;
    for (name, _) in PRESETS {
        count += parse(name, 0)?.1.len();
    }
    Ok(count)
}

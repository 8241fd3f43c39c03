//! The images a run uses: the raw 1 GiB image itself, a fresh qcow2 overlay over it (every
//! write is the first to its cluster: allocation and copy-on-write from the base), or a fully
//! allocated qcow2 copy of it (no backing file; writes rewrite allocated clusters).

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Value};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Raw,
    Qcow2Fresh,
    Qcow2Full,
}

impl Format {
    pub fn parse(name: &str) -> Result<Self, String> {
        match name {
            "raw" => Ok(Format::Raw),
            "qcow2-fresh" => Ok(Format::Qcow2Fresh),
            "qcow2-full" => Ok(Format::Qcow2Full),
            other => Err(format!(
                "unknown format `{other}` (raw, qcow2-fresh, qcow2-full)"
            )),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Format::Raw => "raw",
            Format::Qcow2Fresh => "qcow2-fresh",
            Format::Qcow2Full => "qcow2-full",
        }
    }

    /// qcow2 drives run on the Sync engine only.
    pub fn supports(self, engine: &str) -> bool {
        self == Format::Raw || engine == "Sync"
    }

    /// Drive fields beyond the path.
    pub fn drive_fields(self) -> Value {
        match self {
            Format::Raw => json!({}),
            _ => json!({"image_format": "Qcow2"}),
        }
    }
}

fn qemu_img(args: &[&str]) -> Result<(), String> {
    let out = Command::new("qemu-img")
        .args(args)
        .output()
        .map_err(|e| format!("qemu-img ({e}): install qemu-utils (tools/setup)"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "qemu-img {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

fn sibling(base: &Path, suffix: &str) -> PathBuf {
    let name = base
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "image".into());
    base.with_file_name(format!("{name}.{suffix}"))
}

/// The image for one run. Overlays sit beside the base (a backing file must be inside the
/// overlay's directory tree) and name it relatively.
pub fn prepare(format: Format, base: &Path) -> Result<PathBuf, String> {
    let base_name = base
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or("image path has no file name")?;
    match format {
        Format::Raw => Ok(base.to_path_buf()),
        Format::Qcow2Fresh => {
            let ov = sibling(base, "fresh.qcow2");
            let _ = std::fs::remove_file(&ov);
            let ov_s = ov.to_string_lossy().into_owned();
            qemu_img(&[
                "create", "-q", "-f", "qcow2", "-b", &base_name, "-F", "raw", &ov_s,
            ])?;
            Ok(ov)
        }
        Format::Qcow2Full => {
            let full = sibling(base, "full.qcow2");
            if !full.is_file() {
                eprintln!("creating {} (qemu-img convert)...", full.display());
                let (b, f) = (base.to_string_lossy(), full.to_string_lossy());
                qemu_img(&["convert", "-O", "qcow2", &b, &f])?;
            }
            Ok(full)
        }
    }
}

/// Removes the overlays `prepare` made.
pub fn cleanup(base: &Path) {
    let _ = std::fs::remove_file(sibling(base, "fresh.qcow2"));
}

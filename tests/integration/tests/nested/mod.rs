//! The Linux-guest tier: a scenario describes one xenia VM booting our minimal Linux
//! (resources/guest-kernels, tools/mkrootfs) and is run wherever real Linux can boot:
//! - on a host with hardware KVM, xenia boots it directly;
//! - on a PVM host (/sys/module/kvm_pvm, where an unmodified Linux cannot run), inside
//!   an L1 Linux with KVM under QEMU's TCG emulating AMD SVM (tools/nested-kvm).
//!
//! Either way the result is the L2 guest's console, so tests assert on the same lines.
//! Shared by nested_linux.rs (single boots) and nested_devices.rs (plans only).
#![allow(
    dead_code,
    reason = "each test binary that includes this module uses a different part of it"
)]

pub mod direct;
pub mod plan;
pub mod qemu;
pub mod watchdog;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::Duration;

/// Which kernel image and therefore which of xenia's loader paths boots the guest.
#[derive(Clone, Copy, Debug)]
pub enum Kernel {
    /// ELF vmlinux with the PVH note: PVH entry (32-bit, start_info).
    VmlinuxPvh,
    /// ELF vmlinux with its notes stripped: the 64-bit Linux boot protocol.
    VmlinuxNoPvh,
    /// bzImage: the Linux boot protocol from the setup header.
    BzImage,
}

impl Kernel {
    fn file_name(self) -> &'static str {
        match self {
            Kernel::VmlinuxPvh => "vmlinux",
            Kernel::VmlinuxNoPvh => "vmlinux-nopvh",
            Kernel::BzImage => "bzImage",
        }
    }
}

/// Where the guest's root filesystem comes from.
#[derive(Clone, Copy, Debug)]
pub enum Root {
    /// tools/mkrootfs's initramfs.cpio as the initrd. (Disk roots need a writable copy
    /// of the image and several boots: see plan.rs and the ext4 root scenario.)
    Initramfs,
}

/// One VM: everything that decides what the L2 console must show.
#[derive(Clone, Debug)]
pub struct Scenario {
    pub kernel: Kernel,
    pub root: Root,
    pub vcpus: u8,
    pub mem_mib: u32,
    /// Appended to the base command line (e.g. `l2.run=...`).
    pub extra_args: String,
}

/// Where the guest artifacts are, as seen by whoever runs xenia.
pub struct Artifacts {
    /// vmlinux, vmlinux-nopvh, bzImage.
    pub kernels: PathBuf,
    /// initramfs.cpio, rootfs.ext4.
    pub rootfs: PathBuf,
}

impl Scenario {
    pub fn boot_args(&self) -> String {
        // loglevel=4 keeps the console short (the emulated serial dominates nested boot
        // time) but still shows warnings and errors.
        let mut args = String::from("console=ttyS0 reboot=k panic=1 loglevel=4");
        if !self.extra_args.is_empty() {
            args.push(' ');
            args.push_str(&self.extra_args);
        }
        args
    }

    /// xenia's config file (Firecracker's `--config-file` schema).
    pub fn vm_config(&self, dir: &Artifacts) -> serde_json::Value {
        let path = |dir: &Path, name: &str| dir.join(name).to_string_lossy().into_owned();
        let mut config = serde_json::json!({
            "boot-source": {
                "kernel_image_path": path(&dir.kernels, self.kernel.file_name()),
                "boot_args": self.boot_args(),
            },
            "machine-config": {
                "vcpu_count": self.vcpus,
                "mem_size_mib": self.mem_mib,
            },
        });
        match self.root {
            Root::Initramfs => {
                config["boot-source"]["initrd_path"] = path(&dir.rootfs, "initramfs.cpio").into();
            }
        }
        config
    }
}

/// What a scenario run produced.
pub struct Outcome {
    /// The L2 guest's console lines.
    pub l2_lines: Vec<String>,
    /// xenia's exit status (None: it did not exit on its own).
    pub xenia_status: Option<i32>,
    /// Everything seen, for failure messages (L1 console or xenia's stderr, hang reports).
    pub transcript: String,
}

impl Outcome {
    /// The `key=value` facts of the first L2 line starting with `marker`.
    pub fn marker(&self, marker: &str) -> Option<&str> {
        self.l2_lines
            .iter()
            .find_map(|line| line.trim_start().strip_prefix(marker))
    }

    pub fn fact(&self, marker: &str, key: &str) -> Option<String> {
        let rest = self.marker(marker)?;
        let prefix = format!("{key}=");
        if key == "cmdline" {
            // The command line is last and contains spaces.
            return rest
                .find(" cmdline=")
                .map(|at| rest[at + " cmdline=".len()..].to_string());
        }
        rest.split_whitespace()
            .find_map(|word| word.strip_prefix(&prefix))
            .map(str::to_string)
    }
}

/// Where real Linux guests run on this machine.
pub enum Tier {
    /// Hardware KVM: xenia boots the guest directly.
    Direct,
    /// PVM: through an L1 under QEMU.
    Nested(PathBuf),
}

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap_or_else(|_| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../..")))
}

/// Decides the tier, or returns why Linux guests cannot run here (the test then skips
/// with that message). QEMU's TCG needs no /dev/kvm, so only a missing QEMU skips.
/// `XENIA_LINUX_TIER=direct|nested` overrides the choice (e.g. to exercise the nested
/// tier on a hardware-KVM host); `XENIA_LINUX_TIER=skip` skips the Linux scenarios (the fast
/// tier, `tools/test --fast`).
pub fn tier() -> Result<Tier, String> {
    let forced = std::env::var("XENIA_LINUX_TIER").unwrap_or_default();
    if forced == "skip" {
        return Err("XENIA_LINUX_TIER=skip: the Linux guest tier is skipped on request".into());
    }
    let hardware_kvm = Path::new("/dev/kvm").exists() && !Path::new("/sys/module/kvm_pvm").exists();
    if forced == "direct" || (hardware_kvm && forced != "nested") {
        return Ok(Tier::Direct);
    }
    let qemu = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|dir| dir.join("qemu-system-x86_64"))
        .find(|candidate| candidate.is_file())
        .ok_or(
            "no hardware KVM here (PVM or no /dev/kvm) and qemu-system-x86_64 is not \
             installed (apt-get install qemu-system-x86)",
        )?;
    Ok(Tier::Nested(qemu))
}

/// Nested runs each need a whole core: one at a time per test process.
fn one_at_a_time() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Builds (cached) the artifacts a tier needs, once per test process.
fn prepare(tier: &Tier) -> Result<(), String> {
    static PREPARED: OnceLock<Result<(), String>> = OnceLock::new();
    PREPARED
        .get_or_init(|| {
            let root = repo_root();
            let steps: Vec<PathBuf> = match tier {
                Tier::Direct => vec![
                    root.join("resources/guest-kernels/build-linux.sh"),
                    root.join("tools/mkrootfs"),
                ],
                Tier::Nested(_) => vec![root.join("tools/nested-kvm/build")],
            };
            for step in steps {
                let output = Command::new(&step)
                    .output()
                    .map_err(|e| format!("cannot run {}: {e}", step.display()))?;
                if !output.status.success() {
                    return Err(format!(
                        "{} failed ({}):\n{}{}",
                        step.display(),
                        output.status,
                        String::from_utf8_lossy(&output.stdout),
                        String::from_utf8_lossy(&output.stderr)
                    ));
                }
            }
            Ok(())
        })
        .clone()
}

/// What to do when the Linux tier cannot run here: skip (print why) or fail.
#[derive(Debug, PartialEq, Eq)]
pub enum Unavailable {
    Skip(String),
    Fail(String),
}

/// Under CI (`CI=true`) a missing tier fails the test, so that a CI host without QEMU or
/// kernel artifacts cannot go green by skipping every Linux scenario. Only an explicit
/// `XENIA_LINUX_TIER=skip` (what `tools/test --fast` sets) skips there.
pub fn unavailable(forced: Option<&str>, ci: Option<&str>, reason: String) -> Unavailable {
    let under_ci = matches!(ci, Some(v) if v.eq_ignore_ascii_case("true") || v == "1");
    if under_ci && forced != Some("skip") {
        Unavailable::Fail(format!(
            "CI=true and the Linux guest tier cannot run here: {reason} \
             (set XENIA_LINUX_TIER=skip to skip it on purpose)"
        ))
    } else {
        Unavailable::Skip(reason)
    }
}

/// Ok(Some(tier)), Ok(None) after printing why `what` is skipped, or the error that fails
/// the test under CI.
pub fn tier_or_skip(what: &str) -> Result<Option<Tier>, String> {
    let reason = match tier() {
        Ok(tier) => return Ok(Some(tier)),
        Err(reason) => reason,
    };
    let forced = std::env::var("XENIA_LINUX_TIER").ok();
    match unavailable(
        forced.as_deref(),
        std::env::var("CI").ok().as_deref(),
        reason,
    ) {
        Unavailable::Skip(reason) => {
            eprintln!("SKIPPED: {what}: {reason}");
            Ok(None)
        }
        Unavailable::Fail(why) => Err(why),
    }
}

/// Runs one scenario on this machine's tier. `Ok(None)`: skipped (the reason is printed).
pub fn run(scenario: &Scenario) -> Result<Option<Outcome>, String> {
    let Some(tier) = tier_or_skip(&format!("Linux guest scenario {scenario:?}"))? else {
        return Ok(None);
    };
    let _guard = one_at_a_time();
    prepare(&tier)?;
    let start = std::time::Instant::now();
    let outcome = match &tier {
        Tier::Direct => direct::run(scenario)?,
        Tier::Nested(qemu) => qemu::run(qemu, scenario)?,
    };
    eprintln!(
        "scenario {scenario:?}: {:.1} s, L2-INIT-OK{}",
        start.elapsed().as_secs_f64(),
        outcome.marker("L2-INIT-OK").unwrap_or(" missing")
    );
    Ok(Some(outcome))
}

/// A run is declared hung after this much console silence (`XENIA_LINUX_IDLE_SECS`
/// overrides it, e.g. to check the hang report quickly).
pub fn idle_limit() -> Duration {
    std::env::var("XENIA_LINUX_IDLE_SECS")
        .ok()
        .and_then(|secs| secs.parse().ok())
        .map_or(Duration::from_secs(45), Duration::from_secs)
}

/// No scenario takes this long, even on a loaded machine.
pub const TOTAL_LIMIT: Duration = Duration::from_secs(300);

#[cfg(test)]
mod tier_tests {
    use super::*;

    #[test]
    fn a_missing_tier_fails_under_ci_unless_skipped_on_purpose() {
        let why = || "no qemu".to_owned();
        assert_eq!(
            unavailable(None, None, why()),
            Unavailable::Skip(why()),
            "outside CI a missing tier skips"
        );
        assert!(matches!(
            unavailable(None, Some("true"), why()),
            Unavailable::Fail(m) if m.contains("no qemu")
        ));
        assert!(matches!(
            unavailable(Some("nested"), Some("true"), why()),
            Unavailable::Fail(_)
        ));
        assert_eq!(
            unavailable(Some("skip"), Some("true"), why()),
            Unavailable::Skip(why())
        );
        assert_eq!(
            unavailable(None, Some("false"), why()),
            Unavailable::Skip(why())
        );
    }
}

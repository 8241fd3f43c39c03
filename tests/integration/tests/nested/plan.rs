//! Plans: a shell script run on the machine that hosts xenia (L1 in the nested tier, the
//! host with hardware KVM), with tools/nested-kvm/steps.sh sourced. A plan can boot several
//! VMs in a row on the same disk image, prepare taps and jails, and measure what the guests
//! left behind, all in one L1 boot. Its output follows steps.sh's line protocol, which this
//! module parses the same way for both tiers.

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use super::watchdog::{self, Limits};
use super::{repo_root, Tier, TOTAL_LIMIT};

/// A script for the hosting machine. It sees `$XENIA`, `$JAILER`, `$XENIA_API`, `$L2` (the guest
/// artifacts) and `$WORK` (scratch) and the helpers of tools/nested-kvm/steps.sh.
#[derive(Debug, Clone)]
pub struct Plan {
    pub name: &'static str,
    pub script: String,
}

/// One VM the plan booted.
#[derive(Debug, Clone)]
pub struct VmRun {
    pub name: String,
    /// xenia's (or the jailer's) exit status; None when the run never ended.
    pub status: Option<i32>,
    /// The guest console.
    pub lines: Vec<String>,
    /// xenia's log.
    pub log: Vec<String>,
}

impl VmRun {
    /// The `key=value` of the first console line that starts with `marker` and has `key`.
    pub fn fact(&self, marker: &str, key: &str) -> Option<String> {
        let prefix = format!("{key}=");
        self.lines
            .iter()
            .filter_map(|line| line.trim_start().strip_prefix(marker))
            .find_map(|rest| {
                rest.split_whitespace()
                    .find_map(|word| word.strip_prefix(&prefix))
                    .map(str::to_string)
            })
    }

    pub fn has_line(&self, needle: &str) -> bool {
        self.lines.iter().any(|line| line.contains(needle))
    }
}

/// What a plan produced.
#[derive(Debug, Default)]
pub struct PlanOutcome {
    pub vms: Vec<VmRun>,
    /// `HOST-FACT key=value` lines, in order.
    pub facts: Vec<(String, String)>,
    /// `HOST-FAIL` reasons.
    pub failures: Vec<String>,
    /// The plan script's exit status (None: it did not finish).
    pub status: Option<i32>,
    /// Everything seen, for failure messages.
    pub transcript: String,
}

impl PlanOutcome {
    pub fn vm(&self, name: &str) -> &VmRun {
        self.vms
            .iter()
            .find(|vm| vm.name == name)
            .unwrap_or_else(|| panic!("the plan never booted VM `{name}`\n{}", self.transcript))
    }

    pub fn fact(&self, key: &str) -> Option<&str> {
        self.facts
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Parses steps.sh's protocol out of the hosting machine's output lines.
    pub fn parse(lines: &[String]) -> PlanOutcome {
        let mut outcome = PlanOutcome::default();
        for line in lines {
            if let Some(rest) = line.strip_prefix("VM-BEGIN name=") {
                outcome.vms.push(VmRun {
                    name: rest.trim().to_string(),
                    status: None,
                    lines: Vec::new(),
                    log: Vec::new(),
                });
            } else if let Some(rest) = line.strip_prefix("VM-END name=") {
                let status = rest
                    .split_whitespace()
                    .find_map(|w| w.strip_prefix("status="))
                    .and_then(|s| s.parse().ok());
                if let Some(vm) = outcome.vms.last_mut() {
                    vm.status = status;
                }
            } else if let Some(rest) = line.strip_prefix("L2| ") {
                if let Some(vm) = outcome.vms.last_mut() {
                    vm.lines.push(rest.to_string());
                }
            } else if let Some(rest) = line.strip_prefix("XENIA| ") {
                if let Some(vm) = outcome.vms.last_mut() {
                    vm.log.push(rest.to_string());
                }
            } else if let Some(rest) = line.strip_prefix("HOST-FACT ") {
                if let Some((k, v)) = rest.trim().split_once('=') {
                    outcome.facts.push((k.to_string(), v.to_string()));
                }
            } else if let Some(rest) = line.strip_prefix("HOST-FAIL ") {
                outcome.failures.push(rest.trim().to_string());
            } else if let Some(rest) = line.strip_prefix("L1-PLAN-END status=") {
                outcome.status = rest.trim().parse().ok();
            }
        }
        outcome
    }
}

/// Standard base64 with padding (decoded by busybox `base64 -d` in L1 and L2).
pub fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A newc cpio archive holding regular files (name, mode, contents), root-owned. Linux
/// unpacks cpio archives appended to an initramfs over it: that is how a plan reaches L1.
pub fn newc_archive(files: &[(&str, u32, &[u8])]) -> Vec<u8> {
    fn entry(out: &mut Vec<u8>, ino: u32, name: &str, mode: u32, data: &[u8]) {
        let name_size = name.len() + 1;
        let header = format!(
            "070701{ino:08x}{mode:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{name_size:08x}{:08x}",
            0, 0, 1, 0, data.len(), 0, 0, 0, 0, 0
        );
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(name.as_bytes());
        out.push(0);
        while !out.len().is_multiple_of(4) {
            out.push(0);
        }
        out.extend_from_slice(data);
        while !out.len().is_multiple_of(4) {
            out.push(0);
        }
    }
    let mut out = Vec::new();
    for (index, (name, mode, data)) in files.iter().enumerate() {
        entry(&mut out, index as u32 + 1, name, 0o100_000 | mode, data);
    }
    entry(&mut out, 0, "TRAILER!!!", 0, &[]);
    out
}

/// Runs a plan on this machine's tier. `Ok(None)`: skipped (the reason is printed).
pub fn run(plan: &Plan) -> Result<Option<PlanOutcome>, String> {
    let Some(tier) = super::tier_or_skip(&format!("Linux guest plan {}", plan.name))? else {
        return Ok(None);
    };
    let _guard = super::one_at_a_time();
    super::prepare(&tier)?;
    let start = std::time::Instant::now();
    let outcome = match &tier {
        Tier::Direct => run_direct(plan)?,
        Tier::Nested(qemu) => {
            let watched = super::qemu::run_plan(qemu, &plan.script)?;
            let mut outcome = PlanOutcome::parse(&watched.lines);
            outcome.transcript = watched.transcript;
            outcome
        }
    };
    eprintln!(
        "plan {}: {:.1} s, {} VM(s): {}",
        plan.name,
        start.elapsed().as_secs_f64(),
        outcome.vms.len(),
        outcome
            .vms
            .iter()
            .map(|vm| format!("{} status={:?}", vm.name, vm.status))
            .collect::<Vec<_>>()
            .join(", ")
    );
    if std::env::var_os("XENIA_LINUX_TRANSCRIPT").is_some() {
        eprintln!("--- plan {} transcript:\n{}", plan.name, outcome.transcript);
    }
    Ok(Some(outcome))
}

/// Hardware KVM: the plan runs on this host with a scratch directory of its own.
fn run_direct(plan: &Plan) -> Result<PlanOutcome, String> {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let root = repo_root();
    let work = std::env::temp_dir().join(format!(
        "xenia-plan-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let l2 = work.join("l2");
    std::fs::create_dir_all(work.join("scratch"))
        .and_then(|()| std::fs::create_dir_all(&l2))
        .map_err(|e| format!("cannot create {}: {e}", work.display()))?;
    let artifacts: [(&str, PathBuf); 6] = [
        ("vmlinux", root.join("build/linux/vmlinux")),
        ("vmlinux-nopvh", root.join("build/linux/vmlinux-nopvh")),
        ("bzImage", root.join("build/linux/bzImage")),
        ("initramfs.cpio", root.join("build/rootfs/initramfs.cpio")),
        ("rootfs.ext4", root.join("build/rootfs/rootfs.ext4")),
        ("vsock-test", root.join("build/rootfs/vsock-test")),
    ];
    for (name, target) in &artifacts {
        std::os::unix::fs::symlink(target, l2.join(name))
            .map_err(|e| format!("cannot link {name} in {}: {e}", l2.display()))?;
    }
    let script = work.join("plan.sh");
    std::fs::write(&script, &plan.script)
        .map_err(|e| format!("cannot write {}: {e}", script.display()))?;

    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg(". \"$STEPS\" && . \"$PLAN\"; status=$?; echo \"L1-PLAN-END status=$status\"")
        .env("STEPS", root.join("tools/nested-kvm/steps.sh"))
        .env("PLAN", &script)
        .env("XENIA", xenia_integration_tests::static_xenia())
        .env(
            "XENIA_API",
            xenia_integration_tests::static_xenia().with_file_name("xenia-api"),
        )
        .env("JAILER", xenia_integration_tests::jailer_binary())
        .env("L2", &l2)
        .env("WORK", work.join("scratch"))
        .env(
            "XENIA_EXTRA_ARGS",
            std::env::var("XENIA_NESTED_XENIA_ARGS")
                .unwrap_or_default()
                .replace(',', " "),
        );
    let no_diagnostics = String::new;
    let watched = watchdog::run(
        command,
        &Limits {
            idle: super::idle_limit(),
            total: TOTAL_LIMIT,
            on_hang: &no_diagnostics,
        },
    );
    let _ = std::fs::remove_dir_all(&work);
    let watched = watched?;
    let mut outcome = PlanOutcome::parse(&watched.lines);
    outcome.transcript = format!(
        "{}\n--- plan stderr:\n{}{}",
        watched.lines.join("\n"),
        watched.stderr,
        watched
            .killed
            .map(|why| format!("\n--- watchdog killed the plan: {why}"))
            .unwrap_or_default()
    );
    Ok(outcome)
}

#[test]
fn base64_matches_the_standard_alphabet_and_padding() {
    assert_eq!(base64(b""), "");
    assert_eq!(base64(b"f"), "Zg==");
    assert_eq!(base64(b"fo"), "Zm8=");
    assert_eq!(base64(b"foo"), "Zm9v");
    assert_eq!(base64(b"{\"a\": 1}"), "eyJhIjogMX0=");
}

#[test]
fn newc_archive_has_aligned_entries_and_a_trailer() {
    let archive = newc_archive(&[("plan.sh", 0o755, b"echo hi\n")]);
    assert!(archive.len().is_multiple_of(4));
    assert!(archive.starts_with(b"070701"));
    let text = String::from_utf8_lossy(&archive);
    assert!(text.contains("plan.sh\0"));
    assert!(text.contains("echo hi\n"));
    assert!(text.contains("TRAILER!!!\0"));
    // The first header's file size field (7th field, after the magic) is 8 bytes.
    assert_eq!(&archive[6 + 6 * 8..6 + 7 * 8], b"00000008");
}

#[test]
fn plan_output_is_split_per_vm() {
    let lines: Vec<String> = [
        "L1 noise",
        "VM-BEGIN name=first",
        "L2| L2-FACT a=1",
        "XENIA| a log line",
        "VM-END name=first status=0",
        "HOST-FACT image_md5=abc",
        "VM-BEGIN name=second",
        "L2| L2-FACT a=2",
        "VM-END name=second status=2",
        "HOST-FAIL tap missing",
        "L1-PLAN-END status=0",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let outcome = PlanOutcome::parse(&lines);
    assert_eq!(outcome.vms.len(), 2);
    assert_eq!(
        outcome.vm("first").fact("L2-FACT", "a").as_deref(),
        Some("1")
    );
    assert_eq!(outcome.vm("first").log, vec!["a log line".to_string()]);
    assert_eq!(outcome.vm("second").status, Some(2));
    assert_eq!(outcome.fact("image_md5"), Some("abc"));
    assert_eq!(outcome.failures, vec!["tap missing".to_string()]);
    assert_eq!(outcome.status, Some(0));
}

/// A VM for a plan: its config file is written by the plan, with paths that the plan's
/// shell expands (`$L2/vmlinux`, `$WORK/root.ext4`, or jail-relative `/vmlinux`).
#[derive(Debug, Clone)]
pub struct PlanVm {
    /// Kernel path as the config names it.
    pub kernel: String,
    /// Initrd path, if any.
    pub initrd: Option<String>,
    pub vcpus: u8,
    pub mem_mib: u32,
    /// Shell script the L2 init runs after boot (`l2.script=`), before it resets the VM.
    pub l2_script: String,
    /// `drives[]` entries.
    pub drives: Vec<serde_json::Value>,
    /// `network-interfaces[]` entries.
    pub interfaces: Vec<serde_json::Value>,
    /// Whether the VM has a virtio-rng device (`entropy`): Linux then seeds its CRNG from
    /// it at once instead of waiting for jitter entropy, which under the emulated tier can
    /// take longer than a watchdog allows.
    pub entropy: bool,
}

impl PlanVm {
    /// Our vmlinux (PVH) from `$L2`, 1 vCPU, 128 MiB, no disk, no initrd.
    pub fn new(l2_script: &str) -> PlanVm {
        PlanVm {
            kernel: "$L2/vmlinux".into(),
            initrd: None,
            vcpus: 1,
            mem_mib: 128,
            l2_script: l2_script.into(),
            drives: Vec::new(),
            interfaces: Vec::new(),
            entropy: false,
        }
    }

    pub fn boot_args(&self) -> String {
        format!(
            "console=ttyS0 reboot=k panic=1 pci=off loglevel=4 l2.script={}",
            base64(self.l2_script.as_bytes())
        )
    }

    pub fn config(&self) -> serde_json::Value {
        let mut config = serde_json::json!({
            "boot-source": {
                "kernel_image_path": self.kernel,
                "boot_args": self.boot_args(),
            },
            "machine-config": {"vcpu_count": self.vcpus, "mem_size_mib": self.mem_mib},
        });
        if let Some(initrd) = &self.initrd {
            config["boot-source"]["initrd_path"] = initrd.clone().into();
        }
        if !self.drives.is_empty() {
            config["drives"] = self.drives.clone().into();
        }
        if !self.interfaces.is_empty() {
            config["network-interfaces"] = self.interfaces.clone().into();
        }
        if self.entropy {
            config["entropy"] = serde_json::json!({});
        }
        config
    }

    /// Shell lines that write the config to `path` (a shell word, expanded).
    pub fn write_config(&self, path: &str) -> String {
        format!("cat >{path} <<EOF\n{}\nEOF\n", self.config())
    }
}

/// Checks what every plan VM must show: init ran, the scenario script ended with status 0,
/// nothing panicked, and the guest reset itself so xenia exited 0.
pub fn assert_clean_boot(outcome: &PlanOutcome, name: &str) {
    let vm = outcome.vm(name);
    let context = || {
        format!(
            "VM `{name}`\n--- L2 console:\n{}\n--- xenia log:\n{}\n--- everything:\n{}",
            vm.lines.join("\n"),
            vm.log.join("\n"),
            outcome.transcript
        )
    };
    assert!(
        outcome.failures.is_empty(),
        "the plan failed: {:?}\n{}",
        outcome.failures,
        context()
    );
    assert!(
        vm.has_line("L2-INIT-OK"),
        "L2 never reached init\n{}",
        context()
    );
    assert!(!vm.has_line("Kernel panic"), "L2 panicked\n{}", context());
    assert!(
        vm.has_line("L2-SCRIPT-END status=0"),
        "the L2 script did not end with status 0\n{}",
        context()
    );
    assert!(
        vm.has_line("L2-DONE"),
        "L2 init did not finish\n{}",
        context()
    );
    assert_eq!(
        vm.status,
        Some(0),
        "xenia did not exit 0 after the guest's reset\n{}",
        context()
    );
}

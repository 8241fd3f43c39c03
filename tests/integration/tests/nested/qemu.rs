//! The nested tier: QEMU (TCG, emulated AMD SVM) boots L1 — our kernel with KVM built in
//! and tools/nested-kvm/l1-init — which runs xenia on the scenario's config and relays the
//! L2 console as `L2| ` lines (see l1-init for the protocol).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use super::plan::{base64, newc_archive};
use super::watchdog::{self, Limits};
use super::{repo_root, Artifacts, Outcome, Scenario, TOTAL_LIMIT};

/// L1's memory: enough for a 1 GiB L2 plus L1's initramfs (~80 MiB, unpacked in RAM).
const L1_MEM_MIB: u32 = 2048;

/// Extra xenia arguments inside L1, e.g. `--level,Debug` (commas become spaces).
const XENIA_ARGS_ENV: &str = "XENIA_NESTED_XENIA_ARGS";

pub fn run(qemu: &Path, scenario: &Scenario) -> Result<Outcome, String> {
    let vm = scenario.vm_config(&Artifacts {
        kernels: PathBuf::from("/l2"),
        rootfs: PathBuf::from("/l2"),
    });
    let mut tail = format!("l1.vm={}", base64(vm.to_string().as_bytes()));
    if let Ok(args) = std::env::var(XENIA_ARGS_ENV) {
        if !args.is_empty() {
            tail.push_str(&format!(" l1.xenia_args={args}"));
        }
    }
    let l1 = boot_l1(qemu, &tail, None)?;
    if let Some(fail) = l1.lines.iter().find(|l| l.starts_with("L1-FAIL")) {
        return Err(format!("L1 could not run xenia: {fail}\n{}", l1.transcript));
    }
    let l2_lines = l1
        .lines
        .iter()
        .filter_map(|line| line.strip_prefix("L2| "))
        .map(str::to_string)
        .collect();
    let xenia_status = l1
        .lines
        .iter()
        .find_map(|line| line.strip_prefix("L1-XENIA-EXIT status="))
        .and_then(|status| status.trim().parse().ok());
    Ok(Outcome {
        l2_lines,
        xenia_status,
        transcript: l1.transcript,
    })
}

/// Runs a plan (see plan.rs) inside L1: the script reaches L1 as /plan.sh in a cpio
/// archive appended to L1's initramfs.
pub fn run_plan(qemu: &Path, script: &str) -> Result<L1Run, String> {
    let run_dir = scratch_dir()?;
    let initrd = run_dir.join("l1-plan.cpio");
    let assemble = || -> std::io::Result<()> {
        let mut archive = std::fs::read(repo_root().join("build/nested/l1.cpio"))?;
        // Each archive starts 4-byte aligned; the kernel skips zero padding between them.
        while !archive.len().is_multiple_of(4) {
            archive.push(0);
        }
        archive.extend(newc_archive(&[("plan.sh", 0o755, script.as_bytes())]));
        std::fs::write(&initrd, archive)
    };
    let assembled = assemble().map_err(|e| format!("cannot write {}: {e}", initrd.display()));
    let tail = match std::env::var(XENIA_ARGS_ENV) {
        Ok(args) if !args.is_empty() => format!("l1.xenia_args={args}"),
        _ => String::new(),
    };
    let l1 = assembled.and_then(|()| boot_l1(qemu, &tail, Some(&initrd)));
    let _ = std::fs::remove_dir_all(&run_dir);
    let l1 = l1?;
    if !l1.lines.iter().any(|l| l.starts_with("L1-PLAN-BEGIN")) {
        return Err(format!("L1 never started the plan\n{}", l1.transcript));
    }
    Ok(l1)
}

/// What one L1 boot printed.
pub struct L1Run {
    /// L1's console lines.
    pub lines: Vec<String>,
    /// The console, QEMU's status and stderr and any hang report.
    pub transcript: String,
}

/// Boots L1 with `cmdline_tail` appended to its command line and `initrd` (default: the
/// tier's l1.cpio), under the watchdog.
fn boot_l1(qemu: &Path, cmdline_tail: &str, initrd: Option<&Path>) -> Result<L1Run, String> {
    let root = repo_root();
    let cmdline = format!(
        "console=ttyS0 reboot=t panic=1 loglevel=4 random.trust_cpu=on tsc_early_khz={} {cmdline_tail}",
        host_tsc_khz()?,
    );
    let run_dir = scratch_dir()?;
    let monitor = run_dir.join("hmp.sock");
    let mut command = Command::new(qemu);
    command
        .args([
            "-M",
            "microvm,acpi=off",
            "-accel",
            "tcg,thread=multi",
            "-cpu",
            "EPYC",
        ])
        .args(["-smp", "1", "-m", &L1_MEM_MIB.to_string()])
        .args([
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-no-reboot",
        ])
        .args(["-serial", "stdio"])
        .arg("-monitor")
        .arg(format!("unix:{},server=on,wait=off", monitor.display()))
        .arg("-kernel")
        .arg(root.join("build/linux/bzImage"))
        .arg("-initrd")
        .arg(initrd.map_or_else(|| root.join("build/nested/l1.cpio"), Path::to_path_buf))
        .arg("-append")
        .arg(cmdline.trim_end());
    let dump_registers = || registers(&monitor);
    let watched = watchdog::run(
        command,
        &Limits {
            idle: super::idle_limit(),
            total: TOTAL_LIMIT,
            on_hang: &dump_registers,
        },
    );
    let _ = std::fs::remove_dir_all(&run_dir);
    let watched = watched?;

    let mut transcript = watched.lines.join("\n");
    transcript.push_str(&format!(
        "\n--- QEMU exit {:?} after {:.1} s; stderr:\n{}",
        watched.status,
        watched.wall.as_secs_f64(),
        watched.stderr
    ));
    if let Some(why) = &watched.killed {
        transcript.push_str(&format!("\n--- watchdog killed QEMU: {why}"));
    }
    Ok(L1Run {
        lines: watched.lines,
        transcript,
    })
}

/// The host's TSC rate, which L1 needs as `tsc_early_khz=` (TCG passes the host TSC through).
fn host_tsc_khz() -> Result<u64, String> {
    static KHZ: OnceLock<Result<u64, String>> = OnceLock::new();
    KHZ.get_or_init(|| {
        let tool = repo_root().join("build/nested/tsc-khz");
        let output = Command::new(&tool)
            .output()
            .map_err(|e| format!("cannot run {}: {e}", tool.display()))?;
        let text = String::from_utf8_lossy(&output.stdout);
        text.trim()
            .parse::<u64>()
            .ok()
            .filter(|khz| *khz > 0)
            .ok_or_else(|| {
                format!(
                    "{} printed '{}', not a TSC rate in kHz",
                    tool.display(),
                    text.trim()
                )
            })
    })
    .clone()
}

/// The HMP monitor's `info registers`, so a hang shows where L1 was stuck.
fn registers(monitor: &Path) -> String {
    let dump = || -> std::io::Result<String> {
        let mut stream = UnixStream::connect(monitor)?;
        stream.set_read_timeout(Some(Duration::from_secs(2)))?;
        stream.write_all(b"info registers\n")?;
        let mut text = Vec::new();
        let mut buf = [0u8; 4096];
        // The answer ends with the next prompt; a timeout ends a partial answer.
        while let Ok(n) = stream.read(&mut buf) {
            if n == 0 {
                break;
            }
            text.extend_from_slice(&buf[..n]);
            if String::from_utf8_lossy(&text).matches("(qemu)").count() >= 2 {
                break;
            }
        }
        // Drop the monitor's echo of the command, full of line-editing escapes.
        Ok(String::from_utf8_lossy(&text)
            .lines()
            .filter(|line| !line.contains('\u{1b}'))
            .collect::<Vec<_>>()
            .join("\n"))
    };
    match dump() {
        Ok(text) => format!("QEMU `info registers`:\n{text}"),
        Err(e) => format!("cannot query QEMU's monitor at {}: {e}", monitor.display()),
    }
}

fn scratch_dir() -> Result<PathBuf, String> {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "xenia-nested-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    Ok(dir)
}

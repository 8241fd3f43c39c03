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

use super::watchdog::{self, Limits};
use super::{repo_root, Artifacts, Outcome, Scenario, TOTAL_LIMIT};

/// L1's memory: enough for a 1 GiB L2 plus L1's initramfs (~80 MiB, unpacked in RAM).
const L1_MEM_MIB: u32 = 2048;

/// Extra xenia arguments inside L1, e.g. `--level,Debug` (commas become spaces).
const XENIA_ARGS_ENV: &str = "XENIA_NESTED_XENIA_ARGS";

pub fn run(qemu: &Path, scenario: &Scenario) -> Result<Outcome, String> {
    let root = repo_root();
    let vm = scenario.vm_config(&Artifacts {
        kernels: PathBuf::from("/l2"),
        rootfs: PathBuf::from("/l2"),
    });
    let mut cmdline = format!(
        "console=ttyS0 reboot=t panic=1 loglevel=4 random.trust_cpu=on tsc_early_khz={} l1.vm={}",
        host_tsc_khz()?,
        base64(vm.to_string().as_bytes())
    );
    if let Ok(args) = std::env::var(XENIA_ARGS_ENV) {
        if !args.is_empty() {
            cmdline.push_str(&format!(" l1.xenia_args={args}"));
        }
    }

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
        .arg(root.join("build/nested/l1.cpio"))
        .arg("-append")
        .arg(&cmdline);
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
    if let Some(fail) = watched.lines.iter().find(|l| l.starts_with("L1-FAIL")) {
        return Err(format!("L1 could not run xenia: {fail}\n{transcript}"));
    }
    let l2_lines = watched
        .lines
        .iter()
        .filter_map(|line| line.strip_prefix("L2| "))
        .map(str::to_string)
        .collect();
    let xenia_status = watched
        .lines
        .iter()
        .find_map(|line| line.strip_prefix("L1-XENIA-EXIT status="))
        .and_then(|status| status.trim().parse().ok());
    Ok(Outcome {
        l2_lines,
        xenia_status,
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

/// Standard base64 with padding; l1-init decodes it with busybox `base64 -d`.
fn base64(data: &[u8]) -> String {
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

#[test]
fn base64_matches_the_standard_alphabet_and_padding() {
    assert_eq!(base64(b""), "");
    assert_eq!(base64(b"f"), "Zg==");
    assert_eq!(base64(b"fo"), "Zm8=");
    assert_eq!(base64(b"foo"), "Zm9v");
    assert_eq!(base64(b"{\"a\": 1}"), "eyJhIjogMX0=");
}

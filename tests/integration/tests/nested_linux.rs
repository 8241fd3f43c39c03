//! Real Linux guests booted by xenia: our minimal 6.1 kernel with the busybox initramfs
//! from tools/mkrootfs, through each of xenia's loader paths, with 1–2 vCPUs and small
//! and large memory. On a PVM host these run inside an L1 under QEMU (see nested/mod.rs);
//! on hardware KVM xenia boots them directly. The assertions read only the L2 console.
#![allow(
    clippy::panic,
    clippy::print_stderr,
    reason = "a test crate: helpers fail by panicking, skips and wall times go to stderr"
)]

mod nested;

use nested::plan::{self, assert_clean_boot, Plan, PlanVm};
use nested::{Kernel, Outcome, Root, Scenario};

/// Runs the scenario and checks what every boot must show: init ran with our command
/// line, nothing panicked, and the guest reset itself so xenia exited 0.
fn boot(scenario: Scenario) -> Option<Outcome> {
    let tag = format!(
        "l2.tag={:?}-{}x{}",
        scenario.kernel, scenario.vcpus, scenario.mem_mib
    );
    let scenario = Scenario {
        extra_args: format!("{} {tag}", scenario.extra_args).trim().to_string(),
        ..scenario
    };
    let outcome = match nested::run(&scenario) {
        Ok(Some(outcome)) => outcome,
        Ok(None) => return None,
        Err(e) => panic!("scenario {scenario:?} did not run: {e}"),
    };
    let context = || {
        format!(
            "scenario {scenario:?}\n--- L2 console:\n{}\n{}",
            outcome.l2_lines.join("\n"),
            outcome.transcript
        )
    };
    assert!(
        outcome.marker("L2-INIT-OK").is_some(),
        "L2 never reached init\n{}",
        context()
    );
    let cmdline = outcome.fact("L2-INIT-OK", "cmdline").unwrap_or_default();
    assert!(
        cmdline.split_whitespace().any(|word| word == tag),
        "the command line did not reach L2: expected '{tag}' in '{cmdline}'\n{}",
        context()
    );
    assert!(
        !outcome.l2_lines.iter().any(|l| l.contains("Kernel panic")),
        "L2 panicked\n{}",
        context()
    );
    assert!(
        outcome.marker("L2-DONE").is_some(),
        "L2 init did not finish\n{}",
        context()
    );
    assert_eq!(
        outcome.xenia_status,
        Some(0),
        "xenia did not exit 0 after the guest's reset\n{}",
        context()
    );
    // Linux's PVH entry code fills the zero page itself and marks it with loader type
    // 0xb0; on the Linux boot protocol the VMM writes it. So this tells the paths apart.
    let loader = outcome.fact("L2-INIT-OK", "loader").unwrap_or_default();
    match scenario.kernel {
        Kernel::VmlinuxPvh => {
            assert_eq!(loader, PVH_LOADER, "not entered through PVH\n{}", context())
        }
        Kernel::VmlinuxNoPvh | Kernel::BzImage => assert!(
            loader.len() == 4 && loader != PVH_LOADER,
            "expected the Linux boot protocol (a VMM-written loader type), got loader={loader}\n{}",
            context()
        ),
    }
    Some(outcome)
}

/// boot_params.hdr.type_of_loader as Linux's PVH entry sets it outside Xen.
const PVH_LOADER: &str = "0xb0";

fn scenario(kernel: Kernel, vcpus: u8, mem_mib: u32) -> Scenario {
    Scenario {
        kernel,
        root: Root::Initramfs,
        vcpus,
        mem_mib,
        extra_args: String::new(),
    }
}

fn fact_u64(outcome: &Outcome, key: &str) -> u64 {
    outcome
        .fact("L2-INIT-OK", key)
        .and_then(|value| value.parse().ok())
        .unwrap_or_else(|| {
            panic!(
                "L2-INIT-OK has no numeric {key}: {:?}",
                outcome.marker("L2-INIT-OK")
            )
        })
}

/// MemTotal is RAM minus what the kernel reserves for itself: within 25 % below the
/// configured size, never above.
fn assert_memory(outcome: &Outcome, mem_mib: u32) {
    let total_kb = fact_u64(outcome, "memtotal_kb");
    let configured_kb = u64::from(mem_mib) * 1024;
    assert!(
        total_kb <= configured_kb && total_kb >= configured_kb * 3 / 4,
        "MemTotal {total_kb} kB does not fit a {mem_mib} MiB guest"
    );
}

#[test]
fn linux_boots_vmlinux_through_pvh() {
    if let Some(outcome) = boot(scenario(Kernel::VmlinuxPvh, 1, 128)) {
        assert_eq!(fact_u64(&outcome, "nproc"), 1);
        assert_memory(&outcome, 128);
    }
}

#[test]
fn linux_boots_vmlinux_without_pvh_note_through_64bit_protocol() {
    if let Some(outcome) = boot(scenario(Kernel::VmlinuxNoPvh, 1, 128)) {
        assert_eq!(fact_u64(&outcome, "nproc"), 1);
    }
}

#[test]
fn linux_boots_bzimage() {
    if let Some(outcome) = boot(scenario(Kernel::BzImage, 1, 128)) {
        assert_eq!(fact_u64(&outcome, "nproc"), 1);
    }
}

#[test]
fn linux_sees_two_vcpus() {
    if let Some(outcome) = boot(scenario(Kernel::VmlinuxPvh, 2, 128)) {
        assert_eq!(fact_u64(&outcome, "nproc"), 2);
    }
}

#[test]
fn linux_sees_1024_mib() {
    if let Some(outcome) = boot(scenario(Kernel::VmlinuxPvh, 1, 1024)) {
        assert_memory(&outcome, 1024);
    }
}

#[test]
fn linux_runs_a_command_from_the_command_line() {
    let mut with_run = scenario(Kernel::BzImage, 2, 256);
    with_run.extra_args = "l2.run=grep,-c,^processor,/proc/cpuinfo".into();
    if let Some(outcome) = boot(with_run) {
        let lines = &outcome.l2_lines;
        let begin = lines.iter().position(|l| l.starts_with("L2-RUN-BEGIN"));
        let end = lines
            .iter()
            .position(|l| l.starts_with("L2-RUN-END status=0"));
        let (Some(begin), Some(end)) = (begin, end) else {
            panic!(
                "no L2-RUN-BEGIN / L2-RUN-END status=0 pair:\n{}",
                lines.join("\n")
            );
        };
        assert!(
            lines[begin + 1..end].iter().any(|l| l.trim() == "2"),
            "the scenario command did not print 2 processors:\n{}",
            lines[begin..=end].join("\n")
        );
    }
}

/// ACPI in real Linux: the tables under /sys/firmware/acpi/tables, every vCPU from the MADT,
/// the VM generation ID driver bound to our device, and `poweroff -f` (no `reboot=k` path
/// involved) ending xenia with status 0 before init could reach L2-DONE.
#[test]
fn linux_sees_acpi_and_powers_off() {
    let mut s = scenario(Kernel::VmlinuxPvh, 2, 128);
    s.extra_args =
        "l2.tag=acpi l2.run=ls,/sys/firmware/acpi/tables,/sys/bus/acpi/drivers/vmgenid;poweroff,-f"
            .into();
    let outcome = match nested::run(&s) {
        Ok(Some(outcome)) => outcome,
        Ok(None) => return,
        Err(e) => panic!("scenario {s:?} did not run: {e}"),
    };
    let lines = &outcome.l2_lines;
    let context = || format!("{}\n{}", lines.join("\n"), outcome.transcript);
    assert!(outcome.marker("L2-INIT-OK").is_some(), "{}", context());
    assert_eq!(fact_u64(&outcome, "nproc"), 2, "{}", context());
    for table in ["APIC", "DSDT", "FACP"] {
        assert!(
            lines
                .iter()
                .any(|l| l.split_whitespace().any(|w| w == table)),
            "no {table} in /sys/firmware/acpi/tables\n{}",
            context()
        );
    }
    assert!(
        lines.iter().any(|l| l.contains("VMGENCTR:00")),
        "the vmgenid driver is not bound\n{}",
        context()
    );
    assert!(
        !lines
            .iter()
            .any(|l| l.contains("Kernel panic") || l.starts_with("L2-DONE")),
        "the guest did not power off through ACPI\n{}",
        context()
    );
    assert_eq!(outcome.xenia_status, Some(0), "{}", context());
}

/// L2 script of the first boot on the ext4 root: fresh image, writes 1 MiB of random data.
const WRITE_ON_ROOT: &str = r#"set -e
root="$(awk '$2 == "/" {print "dev=" $1 " fs=" $3 " opts=" substr($4, 1, 2)}' /proc/mounts)"
[ -e /persist.bin ] && echo "L2-FACT preexisting=yes"
head -c 1048576 /dev/urandom >/persist.bin
sync
echo "L2-FACT wrote_md5=$(md5sum </persist.bin | cut -d' ' -f1) $root"
"#;

/// L2 script of the second boot: reads the file back.
const READ_FROM_ROOT: &str = r#"set -e
root="$(awk '$2 == "/" {print "dev=" $1 " fs=" $3 " opts=" substr($4, 1, 2)}' /proc/mounts)"
echo "L2-FACT read_md5=$(md5sum </persist.bin | cut -d' ' -f1) size=$(wc -c </persist.bin) $root"
"#;

/// The root filesystem is our ext4 image on a virtio-blk drive (`root=` from
/// `is_root_device`, no initramfs): the first boot writes a file, syncs and resets; a second
/// xenia on the same image reads it back. Linux's virtio-blk driver waits for the used-ring
/// interrupt of every request, so this also proves irqfd delivery to a real guest.
#[test]
fn linux_mounts_an_ext4_root_from_a_virtio_block_device() {
    let vm = |script: &str| {
        let mut vm = PlanVm::new(script);
        vm.drives = vec![serde_json::json!({
            "drive_id": "rootfs",
            "path_on_host": "$WORK/root.ext4",
            "is_root_device": true,
            "is_read_only": false,
        })];
        vm
    };
    let script = format!(
        "cp \"$L2/rootfs.ext4\" \"$WORK/root.ext4\"\n\
         {}{}vm write \"$WORK/write.json\"\n\
         vm read \"$WORK/read.json\"\n\
         if cmp -s \"$L2/rootfs.ext4\" \"$WORK/root.ext4\"; then fact image_changed no; \
         else fact image_changed yes; fi\n",
        vm(WRITE_ON_ROOT).write_config("\"$WORK/write.json\""),
        vm(READ_FROM_ROOT).write_config("\"$WORK/read.json\""),
    );
    let Some(outcome) = plan::run(&Plan {
        name: "ext4-root",
        script,
    })
    .unwrap_or_else(|e| panic!("{e}")) else {
        return;
    };
    assert_clean_boot(&outcome, "write");
    assert_clean_boot(&outcome, "read");
    let (write, read) = (outcome.vm("write"), outcome.vm("read"));
    for vm in [write, read] {
        let cmdline = vm.fact("L2-INIT-OK", "root").unwrap_or_default();
        assert_eq!(cmdline, "ext4", "boot `{}`: root is not ext4", vm.name);
        assert_eq!(vm.fact("L2-FACT", "dev").as_deref(), Some("/dev/root"));
        assert_eq!(
            vm.fact("L2-FACT", "opts").as_deref(),
            Some("rw"),
            "boot `{}`: the root drive is not mounted read-write ({:?})",
            vm.name,
            vm.lines
        );
    }
    assert_eq!(write.fact("L2-FACT", "preexisting"), None);
    let wrote = write.fact("L2-FACT", "wrote_md5").unwrap_or_default();
    assert_eq!(
        wrote.len(),
        32,
        "no checksum from the writing boot: {:?}",
        write.lines
    );
    assert_eq!(
        read.fact("L2-FACT", "read_md5").as_deref(),
        Some(wrote.as_str()),
        "the second boot read different data: {:?}",
        read.lines
    );
    assert_eq!(read.fact("L2-FACT", "size").as_deref(), Some("1048576"));
    assert_eq!(outcome.fact("image_changed"), Some("yes"));
}

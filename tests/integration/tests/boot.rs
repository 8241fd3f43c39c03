//! Booting the probe guest through each entry protocol.

use xenia_integration_tests::{boot_config, probe, probe_args, Xenia, BOOT_TIMEOUT};

fn boot_and_finish(kernel: &std::path::Path, cmds: &str, vcpus: u8, entry: &str) -> Xenia {
    let config = boot_config(kernel, &probe_args(cmds), vcpus, 128);
    let mut x = Xenia::start(&config, &[]);
    let first = x
        .wait_for_line("PROBE-BOOT-OK", BOOT_TIMEOUT)
        .expect("boot marker");
    assert_eq!(first, format!("PROBE-BOOT-OK entry={entry}"));
    x.wait_for_line("PROBE-DONE", BOOT_TIMEOUT)
        .expect("done marker");
    let status = x.wait_exit(BOOT_TIMEOUT).expect("exit");
    assert_eq!(status.code(), Some(0), "stderr:\n{}", x.stderr());
    assert!(
        x.lines.iter().all(|l| !l.contains(" FAIL ")),
        "{:#?}",
        x.lines
    );
    x
}

#[test]
fn probe_boots_through_pvh() {
    let x = boot_and_finish(&probe().pvh, "e820,cmdline", 1, "pvh");
    assert!(x
        .lines
        .iter()
        .any(|l| l.starts_with("PROBE e820 ok entries=2")));
    assert!(x
        .lines
        .iter()
        .any(|l| l.starts_with("PROBE cmdline ok") && l.contains("probe.cmds=e820,cmdline")));
}

#[test]
fn probe_boots_through_the_64_bit_linux_protocol() {
    let x = boot_and_finish(&probe().linux64, "e820,cmdline", 1, "linux64");
    assert!(x
        .lines
        .iter()
        .any(|l| l.starts_with("PROBE e820 ok entries=2")));
}

#[test]
fn probe_sees_every_vcpu_with_its_apic_id() {
    for kernel in [probe().pvh, probe().linux64] {
        let x = boot_and_finish(
            &kernel,
            "cpuid,smp",
            2,
            if kernel == probe().pvh {
                "pvh"
            } else {
                "linux64"
            },
        );
        let smp = x.lines_with("PROBE smp ok");
        assert_eq!(smp.len(), 1, "{:#?}", x.lines);
        assert!(
            smp[0].contains("expected=2 online=2 apic_ids=0,1"),
            "{}",
            smp[0]
        );
        assert!(x
            .lines
            .iter()
            .any(|l| l.starts_with("PROBE cpuid ok") && l.contains("hypervisor=KVMKVMKVM")));
    }
}

#[test]
fn memory_above_the_mmio_hole_continues_at_4_gib() {
    let config = boot_config(&probe().linux64, &probe_args("e820"), 1, 4096);
    let mut x = Xenia::start(&config, &[]);
    x.wait_for_line("PROBE-DONE", BOOT_TIMEOUT)
        .expect("done marker");
    assert_eq!(x.wait_exit(BOOT_TIMEOUT).expect("exit").code(), Some(0));
    let entries = x.lines_with("PROBE e820-entry");
    assert_eq!(
        entries,
        [
            "PROBE e820-entry addr=0x0 len=0x9fc00 type=1",
            "PROBE e820-entry addr=0x100000 len=0xcff00000 type=1",
            "PROBE e820-entry addr=0x100000000 len=0x30000000 type=1",
        ]
    );
}

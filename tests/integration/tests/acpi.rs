//! The ACPI platform, seen from inside the probe guest: tables found through each boot
//! protocol, checksums, the MADT against the vCPU count, virtio devices through the DSDT,
//! the VM generation ID, power-off through the sleep registers, garbage ignored and counted.

// Test helpers report a failure by panicking with the console transcript.
#![allow(clippy::panic)]

use std::time::Duration;

use xenia_integration_tests::probe_lines::{field, ok_line};
use xenia_integration_tests::{
    boot_config, last_metrics, probe, probe_args, TempDir, Xenia, BOOT_TIMEOUT,
};

fn boot(config: &serde_json::Value) -> Xenia {
    let mut x = Xenia::start(config, &[]);
    x.wait_for_line("PROBE-DONE", BOOT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}\n{}", x.stderr()));
    assert_eq!(x.wait_exit(BOOT_TIMEOUT).expect("exit").code(), Some(0));
    x
}

fn acpi_line(x: &Xenia) -> String {
    ok_line(x, "acpi").to_owned()
}

#[test]
fn tables_reach_the_guest_through_every_boot_protocol() {
    let p = probe();
    for (kernel, from) in [
        (&p.pvh, "pvh"),
        (&p.linux64, "zeropage"),
        (&p.bzimage, "zeropage"),
    ] {
        let x = boot(&boot_config(kernel, &probe_args("acpi"), 2, 128));
        let line = acpi_line(&x);
        assert_eq!(field(&line, "rsdp_from"), Some(from), "{line}");
        // The address handed over is where a scanning guest finds it too.
        assert_eq!(field(&line, "rsdp"), field(&line, "rsdp_scan"), "{line}");
        assert_eq!(field(&line, "tables"), Some("FACP,DSDT,APIC"), "{line}");
        assert_eq!(field(&line, "hw_reduced"), Some("1"), "{line}");
        assert_eq!(field(&line, "s5"), Some("5"), "{line}");
    }
}

#[test]
fn madt_lists_every_vcpu() {
    let p = probe();
    for vcpus in [1u8, 2, 4, 32] {
        let x = boot(&boot_config(&p.pvh, &probe_args("acpi"), vcpus, 128));
        let line = acpi_line(&x);
        assert_eq!(
            field(&line, "cpus"),
            Some(vcpus.to_string().as_str()),
            "{line}"
        );
        assert_eq!(field(&line, "ioapics"), Some("1"), "{line}");
    }
}

#[test]
fn generation_id_is_random_per_boot() {
    let p = probe();
    let ids: Vec<String> = (0..2)
        .map(|_| {
            let x = boot(&boot_config(&p.pvh, &probe_args("acpi"), 1, 128));
            field(&acpi_line(&x), "vmgenid")
                .expect("vmgenid")
                .to_owned()
        })
        .collect();
    for id in &ids {
        assert_eq!(id.len(), 32);
        assert_ne!(id.as_str(), "0".repeat(32), "an all-zero id");
    }
    assert_ne!(ids[0], ids[1], "two boots, one generation id");
}

/// Two drives: described by the DSDT (and not on the command line) with ACPI on, on the
/// command line with `acpi=off`; the guest uses them either way.
#[test]
fn virtio_devices_through_acpi_or_the_command_line() {
    let dir = TempDir::new();
    let disks: Vec<_> = (0..2)
        .map(|i| {
            let path = dir.path().join(format!("d{i}.img"));
            std::fs::write(&path, vec![0u8; 1 << 20]).unwrap();
            path
        })
        .collect();
    let p = probe();
    for acpi_off in [false, true] {
        let cmds = "cmdline,acpi,blk-id@0,blk-id@1";
        let args = if acpi_off {
            format!("{} acpi=off", probe_args(cmds))
        } else {
            probe_args(cmds)
        };
        let mut config = boot_config(&p.pvh, &args, 1, 128);
        config["drives"] = serde_json::json!([
            {"drive_id": "first", "path_on_host": disks[0], "is_root_device": false},
            {"drive_id": "second", "path_on_host": disks[1], "is_root_device": false},
        ]);
        let x = boot(&config);
        let entries = x
            .lines
            .iter()
            .filter(|l| l.starts_with("PROBE cmdline"))
            .map(|l| l.matches("virtio_mmio.device=").count())
            .sum::<usize>();
        assert_eq!(entries, if acpi_off { 2 } else { 0 }, "{:#?}", x.lines);
        assert_eq!(field(&acpi_line(&x), "virtio"), Some("2"));
        let ids: Vec<&str> = x
            .lines
            .iter()
            .filter(|l| l.starts_with("PROBE blk-id ok"))
            .filter_map(|l| field(l, "serial"))
            .collect();
        assert_eq!(ids, ["first", "second"], "acpi_off={acpi_off}");
    }
}

#[test]
fn acpi_poweroff_ends_xenia_with_status_0() {
    let dir = TempDir::new();
    let metrics = dir.path().join("metrics.json");
    let mut config = boot_config(&probe().pvh, &probe_args("acpi-poweroff"), 1, 128);
    config["metrics"] = serde_json::json!({"metrics_path": metrics});
    let mut x = Xenia::start(&config, &[]);
    let status = x.wait_exit(BOOT_TIMEOUT).expect("xenia exits");
    assert_eq!(status.code(), Some(0), "{}", x.stderr());
    x.lines_within(Duration::from_millis(100));
    assert!(
        x.lines
            .iter()
            .any(|l| l.starts_with("PROBE acpi-poweroff ok")),
        "{:#?}",
        x.lines
    );
    assert!(
        !x.lines.iter().any(|l| l.contains("still-running")),
        "{:#?}",
        x.lines
    );
    let last = last_metrics(&metrics);
    assert_eq!(last["acpi"]["poweroff_requests"], 1, "{last}");
}

#[test]
fn garbage_in_the_sleep_registers_is_ignored_and_counted() {
    let dir = TempDir::new();
    let metrics = dir.path().join("metrics.json");
    let mut config = boot_config(&probe().pvh, &probe_args("acpi-garbage,timer"), 1, 128);
    config["metrics"] = serde_json::json!({"metrics_path": metrics});
    let x = boot(&config);
    ok_line(&x, "acpi-garbage");
    ok_line(&x, "timer");
    let last = last_metrics(&metrics);
    assert_eq!(last["acpi"]["ignored_writes"], 4, "{last}");
    assert_eq!(last["acpi"]["poweroff_requests"], 0, "{last}");
}

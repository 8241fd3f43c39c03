//! What the guest sees of the machine xenia builds: memory map, command line, initrd and CPU
//! topology, as reported by the probe guest from inside.

// Test helpers report a failure by panicking with the console transcript.
#![allow(clippy::panic)]

use std::collections::HashMap;

use xenia_integration_tests::{boot_config, probe, probe_args, TempDir, Xenia, BOOT_TIMEOUT};

/// RAM the E820 map leaves out below 1 MiB: the EBDA, VGA hole and BIOS area
/// [0x9fc00, 0x100000), as on a PC.
const LOW_HOLE: u64 = 0x10_0000 - 0x9_fc00;
const MMIO_HOLE_START: u64 = 0xd000_0000;
const FOUR_GIB: u64 = 1 << 32;

/// Boots the probe with `config`, waits for a clean finish and returns the console lines.
fn run_probe(config: serde_json::Value) -> Vec<String> {
    let mut x = Xenia::start(&config, &[]);
    x.wait_for_line("PROBE-DONE", BOOT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}\nstderr:\n{}", x.stderr()));
    let status = x.wait_exit(BOOT_TIMEOUT).expect("exit");
    assert_eq!(status.code(), Some(0), "stderr:\n{}", x.stderr());
    let fails: Vec<_> = x.lines.iter().filter(|l| l.contains(" FAIL")).collect();
    assert!(fails.is_empty(), "{fails:#?}");
    x.lines.clone()
}

/// The `key=value` pairs of the first line starting with `prefix`.
fn fields(lines: &[String], prefix: &str) -> HashMap<String, String> {
    let line = lines
        .iter()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no line starting with {prefix:?} in {lines:#?}"));
    line_fields(line)
}

/// The `key=value` pairs of one line.
fn line_fields(line: &str) -> HashMap<String, String> {
    line.split_whitespace()
        .filter_map(|w| w.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

fn hex(v: &str) -> u64 {
    u64::from_str_radix(v.trim_start_matches("0x"), 16).expect("hex value")
}

fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[test]
fn e820_total_matches_the_configured_memory() {
    for mem_mib in [128u64, 3072] {
        let kernel = probe().pvh;
        let lines = run_probe(boot_config(&kernel, &probe_args("e820"), 1, mem_mib as u32));
        let total = fields(&lines, "PROBE e820 ok");
        assert_eq!(
            total["ram_bytes"].parse::<u64>().unwrap(),
            (mem_mib << 20) - LOW_HOLE,
            "{lines:#?}"
        );
        // No RAM inside the 32-bit MMIO hole, where virtio windows live.
        for entry in lines.iter().filter(|l| l.starts_with("PROBE e820-entry")) {
            let f = fields(std::slice::from_ref(entry), "PROBE e820-entry");
            let (start, end) = (hex(&f["addr"]), hex(&f["addr"]) + hex(&f["len"]));
            assert!(
                end <= MMIO_HOLE_START || start >= FOUR_GIB,
                "{entry} overlaps the MMIO hole"
            );
        }
    }
}

#[test]
fn command_line_and_initrd_arrive_intact() {
    let dir = TempDir::new();
    // Not a multiple of the page size, and every byte value, so truncation or padding shows.
    let initrd: Vec<u8> = (0..70_001u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let initrd_path = dir.write("initrd.img", &initrd);
    let args = format!(
        "{} quiet some.flag=\"x y\" last=1",
        probe_args("cmdline,initrd")
    );
    for kernel in [probe().pvh, probe().linux64] {
        let mut config = boot_config(&kernel, &args, 1, 128);
        config["boot-source"]["initrd_path"] = serde_json::json!(initrd_path);
        let lines = run_probe(config);
        let cmdline = lines
            .iter()
            .find_map(|l| l.strip_prefix("PROBE cmdline ok "))
            .expect("cmdline line");
        let text = cmdline.split_once("text=").expect("text=").1;
        assert_eq!(text, args, "kernel {}", kernel.display());
        let f = fields(&lines, "PROBE initrd ok");
        assert_eq!(f["size"].parse::<usize>().unwrap(), initrd.len());
        assert_eq!(
            hex(&f["fnv1a64"]),
            fnv1a64(&initrd),
            "kernel {}",
            kernel.display()
        );
        assert_eq!(hex(&f["addr"]) % 4096, 0, "initrd must be page aligned");
    }
}

#[test]
fn cpu_topology_follows_the_machine_config() {
    for (vcpus, smt) in [(1u8, false), (2, false), (2, true), (4, true)] {
        let kernel = probe().pvh;
        let mut config = boot_config(&kernel, &probe_args("cpuid,smp"), vcpus, 128);
        config["machine-config"]["smt"] = serde_json::json!(smt);
        let lines = run_probe(config);
        let cpu = fields(&lines, "PROBE cpuid ok");
        assert_eq!(cpu["hypervisor"], "KVMKVMKVM");
        assert_eq!(cpu["apic_id"], "0");
        assert_eq!(cpu["logical"].parse::<u8>().unwrap(), vcpus, "{lines:#?}");
        let threads = if smt && vcpus > 1 { 2 } else { 1 };
        assert_eq!(
            cpu["threads_per_core"].parse::<u8>().unwrap(),
            threads,
            "{lines:#?}"
        );
        assert_eq!(
            cpu["cores_per_pkg"].parse::<u8>().unwrap(),
            vcpus / threads,
            "{lines:#?}"
        );
        // Every topology source the CPU offers must tell the same story: a vendor whose
        // kernel prefers a leaf we got wrong would otherwise hide it.
        let sources: Vec<&String> = lines
            .iter()
            .filter(|l| l.starts_with("PROBE topology ok"))
            .collect();
        assert!(!sources.is_empty(), "no topology source: {lines:#?}");
        if cpu["vendor"] == "GenuineIntel" {
            assert!(
                sources.iter().any(|l| l.contains("source=leaf0xb")),
                "an Intel guest needs leaf 0xB: {lines:#?}"
            );
        }
        for line in sources {
            let t = line_fields(line);
            assert_eq!(
                t["threads_per_core"].parse::<u8>().unwrap(),
                threads,
                "{line}"
            );
            assert_eq!(t["logical_per_pkg"].parse::<u8>().unwrap(), vcpus, "{line}");
            assert_eq!(t["apic_id"], "0", "{line}");
        }
        let smp = fields(&lines, "PROBE smp ok");
        assert_eq!(smp["expected"], vcpus.to_string());
        // INIT-SIPI-SIPI works under PVM and hardware KVM alike: every AP must come up.
        assert_eq!(smp["online"], vcpus.to_string(), "{lines:#?}");
        let ids: Vec<String> = (0..vcpus).map(|i| i.to_string()).collect();
        assert_eq!(smp["apic_ids"], ids.join(","));
    }
}

#[test]
fn bzimage_boots_through_the_64_bit_protocol() {
    let kernel = probe().bzimage;
    let mut x = Xenia::start(
        &boot_config(&kernel, &probe_args("e820,cmdline"), 1, 128),
        &[],
    );
    assert_eq!(
        x.wait_for_line("PROBE-BOOT-OK", BOOT_TIMEOUT)
            .expect("boot marker"),
        "PROBE-BOOT-OK entry=linux64"
    );
    x.wait_for_line("PROBE-DONE", BOOT_TIMEOUT)
        .expect("done marker");
    assert_eq!(x.wait_exit(BOOT_TIMEOUT).expect("exit").code(), Some(0));
    assert!(
        x.lines.iter().any(|l| l.starts_with("PROBE e820 ok")),
        "{:#?}",
        x.lines
    );
}

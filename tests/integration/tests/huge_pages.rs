//! `machine-config.huge_pages`: guest memory backed by 2 MiB hugetlb pages or by transparent
//! huge pages, checked in the running xenia's own mappings.

// Test helpers report a failure by panicking with the console transcript.
#![allow(clippy::panic)]

use xenia_integration_tests::{boot_config, probe, probe_args, Xenia, BOOT_TIMEOUT};

const NR_HUGEPAGES: &str = "/proc/sys/vm/nr_hugepages";

/// Reserves 2 MiB pages for the test and gives the previous count back on drop.
struct HugePageReservation(String);

impl HugePageReservation {
    fn at_least(pages: u64) -> Self {
        let before = std::fs::read_to_string(NR_HUGEPAGES).expect("read nr_hugepages");
        let now: u64 = before.trim().parse().expect("nr_hugepages is a number");
        std::fs::write(NR_HUGEPAGES, (now + pages).to_string()).expect("write nr_hugepages");
        HugePageReservation(before.trim().to_owned())
    }
}

impl Drop for HugePageReservation {
    fn drop(&mut self) {
        let _ = std::fs::write(NR_HUGEPAGES, &self.0);
    }
}

/// `VmFlags` and `KernelPageSize` of the xenia mapping whose size is `len` (the tests use an
/// unusual guest size, 66 MiB: glibc malloc arenas are 64 MiB mappings).
fn guest_mapping(pid: u32, len: u64) -> Option<(String, String)> {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).ok()?;
    let mut found = false;
    let mut page_size = String::new();
    for line in smaps.lines() {
        let range = line.split_whitespace().next().unwrap_or_default();
        if let Some((s, e)) = range.split_once('-') {
            if let (Ok(s), Ok(e)) = (u64::from_str_radix(s, 16), u64::from_str_radix(e, 16)) {
                found = e - s == len;
                continue;
            }
        }
        if !found {
            continue;
        }
        if let Some(v) = line.strip_prefix("KernelPageSize:") {
            page_size = v.trim().to_owned();
        }
        if let Some(flags) = line.strip_prefix("VmFlags:") {
            return Some((flags.trim().to_owned(), page_size));
        }
    }
    None
}

fn boot_idle(huge_pages: &str, mem_mib: u32) -> Xenia {
    let mut config = boot_config(&probe().pvh, &probe_args("touch:8,idle"), 1, mem_mib);
    config["machine-config"]["huge_pages"] = serde_json::json!(huge_pages);
    let mut x = Xenia::start(&config, &[]);
    x.wait_for_line("PROBE touch ok", BOOT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}\nstderr:\n{}", x.stderr()));
    x
}

#[test]
fn hugetlb_2m_backs_guest_memory_with_2_mib_pages() {
    let _reserved = HugePageReservation::at_least(33);
    let x = boot_idle("2M", 66);
    let (flags, page_size) = guest_mapping(x.pid(), 66 << 20).expect("the guest mapping");
    assert!(flags.split(' ').any(|f| f == "ht"), "VmFlags: {flags}");
    assert_eq!(page_size, "2048 kB");
}

#[test]
fn transparent_huge_pages_are_advised() {
    let x = boot_idle("Transparent", 66);
    let (flags, _) = guest_mapping(x.pid(), 66 << 20).expect("the guest mapping");
    assert!(flags.split(' ').any(|f| f == "hg"), "VmFlags: {flags}");
}

#[test]
fn too_few_huge_pages_is_a_clear_start_up_error() {
    // Far more than any test host reserves: the mapping must fail at start, not SIGBUS later.
    let mut config = boot_config(&probe().pvh, &probe_args("idle"), 1, 1 << 19);
    config["machine-config"]["huge_pages"] = serde_json::json!("2M");
    let mut x = Xenia::start(&config, &[]);
    let status = x.wait_exit(BOOT_TIMEOUT).expect("exit");
    assert_eq!(status.code(), Some(1));
    let err = x.stderr();
    assert!(
        err.contains("huge_pages") && err.contains("nr_hugepages"),
        "{err}"
    );
}

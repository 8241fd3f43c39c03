//! Clones: twenty processes restore one snapshot at once; each guest carries on with its
//! memory intact, and together they use far less memory than twenty cold VMs (the memory
//! file's clean pages are shared through the page cache).

// Helpers outside #[test] functions fail the test with context.
#![allow(clippy::panic, clippy::unwrap_used)]

mod snapshot_common;

use snapshot_common::*;
use xenia_integration_tests::{Xenia, BOOT_TIMEOUT};

const CLONES: usize = 20;
/// 32 MiB touched once, then a 4 MiB pattern re-read every tick.
const CMDS: &str = "touch:32,memtick:4";

/// Proportional set size of `pid`, in KiB.
fn pss_kib(pid: u32) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("Pss:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no Pss in smaps_rollup:\n{text}"))
}

#[test]
fn twenty_clones_run_at_once_and_share_the_snapshot_pages() {
    let (mut cold, api) = Xenia::with_api(&[]);
    boot(&api, CMDS, 128, false);
    cold.wait_for_line("PROBE memtick n=2 ", BOOT_TIMEOUT)
        .unwrap();
    let cold_pss = pss_kib(cold.pid());
    let files = SnapshotFiles::new();
    pause_and_create(&mut cold, &api, &files, "Full");
    drop(cold);

    let mut clones: Vec<(Xenia, _)> = (0..CLONES).map(|_| Xenia::with_api(&[])).collect();
    for (_, api) in &clones {
        api.expect("PUT", "/snapshot/load", &files.load_body(true), 204);
    }
    let mut total = 0;
    for (x, _) in &mut clones {
        let t = next_tick(x);
        assert_eq!((t.bad, t.sum), (0, expected_sum(t.n, t.pages)), "{t:?}");
        total += pss_kib(x.pid());
    }
    // Each clone holds its own xenia (a few MiB) and the pages it wrote; the 36 MiB the
    // guest had are shared by all of them.
    assert!(
        total * 2 < cold_pss * CLONES as u64,
        "{CLONES} clones: {} MiB PSS in all, a cold VM alone {} MiB",
        total >> 10,
        cold_pss >> 10
    );
}

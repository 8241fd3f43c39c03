//! The Uffd memory backend with the example handler (tools/uffd-handler): a restore whose
//! pages come from the handler carries on and can be snapshotted again; a handler that dies
//! stops the VM visibly (exit status 2, the handler named) instead of leaving it hung.

// Helpers outside #[test] functions fail the test with context.
#![allow(clippy::panic, clippy::unwrap_used)]

mod snapshot_common;

use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use serde_json::json;
use snapshot_common::*;
use xenia_integration_tests::{tool_binary, TempDir, Xenia, BOOT_TIMEOUT};

/// The example handler serving `mem` on `socket`; killed on drop.
struct Handler(Child);

impl Handler {
    fn start(socket: &Path, mem: &Path, extra: &[&str]) -> Self {
        let child = Command::new(tool_binary("uffd-handler"))
            .arg(socket)
            .arg(mem)
            .args(extra)
            .spawn()
            .unwrap();
        let deadline = Instant::now() + BOOT_TIMEOUT;
        while !socket.exists() {
            assert!(Instant::now() < deadline, "the handler never listened");
            std::thread::sleep(Duration::from_millis(10));
        }
        Handler(child)
    }
}

impl Drop for Handler {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn snapshot_of_memtick() -> SnapshotFiles {
    let (mut x, api) = Xenia::with_api(&[]);
    boot(&api, "memtick:4", 128, false);
    x.wait_for_line("PROBE memtick n=2 ", BOOT_TIMEOUT).unwrap();
    let files = SnapshotFiles::new();
    pause_and_create(&mut x, &api, &files, "Full");
    files
}

fn uffd_body(files: &SnapshotFiles, socket: &Path) -> String {
    json!({"snapshot_path": files.state,
           "mem_backend": {"backend_type": "Uffd", "backend_path": socket},
           "resume_vm": true})
    .to_string()
}

#[test]
fn a_restore_through_the_example_handler_runs_and_snapshots_again() {
    let files = snapshot_of_memtick();
    let dir = TempDir::new();
    let socket = dir.path().join("uffd.sock");
    let _handler = Handler::start(&socket, &files.mem, &[]);
    let (mut y, api) = Xenia::with_api(&[]);
    api.expect("PUT", "/snapshot/load", &uffd_body(&files, &socket), 204);
    let t = next_tick(&mut y);
    assert_eq!((t.bad, t.sum), (0, expected_sum(t.n, t.pages)), "{t:?}");

    // A Full snapshot of a Uffd-backed VM reads every page (through the handler).
    let again = SnapshotFiles::new();
    pause_and_create(&mut y, &api, &again, "Full");
    drop(y);
    let (mut z, api2) = Xenia::with_api(&[]);
    api2.expect("PUT", "/snapshot/load", &again.load_body(true), 204);
    let t2 = next_tick(&mut z);
    assert!(t2.n > t.n, "{t:?} then {t2:?}");
    assert_eq!((t2.bad, t2.sum), (0, expected_sum(t2.n, t2.pages)));
}

#[test]
fn a_handler_that_dies_stops_the_vm_visibly() {
    let files = snapshot_of_memtick();
    let dir = TempDir::new();
    let socket = dir.path().join("uffd.sock");
    // memtick reads 1,024 pages a tick: the handler dies in the first one.
    let _handler = Handler::start(&socket, &files.mem, &["--die-after", "200"]);
    let (mut y, api) = Xenia::with_api(&[]);
    api.expect("PUT", "/snapshot/load", &uffd_body(&files, &socket), 204);
    let status = y.wait_exit(BOOT_TIMEOUT).unwrap();
    assert_eq!(status.code(), Some(2), "{}", y.stderr());
    assert!(y.stderr().contains("page-fault handler"), "{}", y.stderr());
}

#[test]
fn a_missing_handler_is_refused_and_the_process_stays_usable() {
    let files = snapshot_of_memtick();
    let dir = TempDir::new();
    let (mut y, api) = Xenia::with_api(&[]);
    let r = api.expect(
        "PUT",
        "/snapshot/load",
        &uffd_body(&files, &dir.path().join("nobody.sock")),
        400,
    );
    assert!(r.fault().contains("page-fault handler"), "{}", r.fault());
    api.expect("PUT", "/snapshot/load", &files.load_body(true), 204);
    assert_eq!(next_tick(&mut y).bad, 0);
}

const NR_HUGEPAGES: &str = "/proc/sys/vm/nr_hugepages";

/// Reserves `pages` more 2 MiB pages; gives the previous count back on drop.
struct HugePages(String);

impl HugePages {
    fn reserve(pages: u64) -> Self {
        let before = std::fs::read_to_string(NR_HUGEPAGES).unwrap();
        let now: u64 = before.trim().parse().unwrap();
        std::fs::write(NR_HUGEPAGES, (now + pages).to_string()).unwrap();
        HugePages(before.trim().to_owned())
    }
}

impl Drop for HugePages {
    fn drop(&mut self) {
        let _ = std::fs::write(NR_HUGEPAGES, &self.0);
    }
}

#[test]
fn a_hugetlbfs_vm_restores_through_uffd_and_a_file_load_says_why_not() {
    // Two 64 MiB VMs on 2 MiB pages at most at once (the snapshotted one, then the restore).
    let _reserved = HugePages::reserve(2 * 32 + 4);
    let (mut x, api) = Xenia::with_api(&[]);
    let body = json!({"kernel_image_path": xenia_integration_tests::probe().pvh,
                      "boot_args": xenia_integration_tests::probe_args("memtick:4")});
    api.expect("PUT", "/boot-source", &body.to_string(), 204);
    api.expect(
        "PUT",
        "/machine-config",
        r#"{"vcpu_count": 1, "mem_size_mib": 64, "huge_pages": "2M"}"#,
        204,
    );
    api.start_instance(204);
    x.wait_for_line("PROBE memtick n=2 ", BOOT_TIMEOUT).unwrap();
    let files = SnapshotFiles::new();
    pause_and_create(&mut x, &api, &files, "Full");
    drop(x);

    let (_y, api2) = Xenia::with_api(&[]);
    let r = api2.expect("PUT", "/snapshot/load", &files.load_body(true), 400);
    assert!(r.fault().contains("Uffd"), "{}", r.fault());

    let dir = TempDir::new();
    let socket = dir.path().join("uffd.sock");
    let _handler = Handler::start(&socket, &files.mem, &[]);
    let (mut z, api3) = Xenia::with_api(&[]);
    api3.expect("PUT", "/snapshot/load", &uffd_body(&files, &socket), 204);
    let t = next_tick(&mut z);
    assert_eq!((t.bad, t.sum), (0, expected_sum(t.n, t.pages)), "{t:?}");
}

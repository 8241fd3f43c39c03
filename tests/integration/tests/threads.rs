//! Which threads a VM runs: the `io` thread only with a virtio device to serve (a drive
//! configured through the API before boot, or restored from a snapshot), the `api` thread
//! only with an API socket. Read from /proc/PID/task/*/comm of the live process.

// Helpers outside #[test] functions fail the test with the console attached.
#![allow(clippy::panic)]

mod block_common;
mod snapshot_common;

use block_common::zero_image;
use serde_json::json;
use snapshot_common::{boot_with, pause_and_create, SnapshotFiles};
use xenia_integration_tests::{
    boot_config, probe, probe_args, thread_names, TempDir, Xenia, BOOT_TIMEOUT,
};

fn wait(x: &mut Xenia, needle: &str) {
    if let Err(e) = x.wait_for_line(needle, BOOT_TIMEOUT) {
        panic!("{e}\nstderr:\n{}", x.stderr());
    }
}

#[test]
fn a_vm_without_virtio_devices_and_without_api_runs_only_its_vmm_and_vcpu_threads() {
    let config = boot_config(&probe().pvh, &probe_args("idle"), 2, 64);
    let mut x = Xenia::start(&config, &[]);
    wait(&mut x, "PROBE idle ok");
    assert_eq!(thread_names(x.pid()), ["vcpu 0", "vcpu 1", "xenia"]);
}

#[test]
fn a_drive_added_through_the_api_before_boot_gets_an_io_thread() {
    let dir = TempDir::new();
    let image = zero_image(&dir, "data.img", 1 << 20);
    let (mut x, api) = Xenia::with_api(&[]);
    // Before boot: the API thread and the VMM thread only. The socket accepts before the
    // thread names itself; an answer proves it runs.
    api.expect("GET", "/", "", 200);
    assert_eq!(thread_names(x.pid()), ["api", "xenia"]);
    let drive = json!({"drive_id": "data", "path_on_host": image, "is_root_device": false,
                       "is_read_only": false});
    boot_with(
        &api,
        &probe_args("blk-write:0:8:3,blk-read:0:8:3,idle"),
        64,
        false,
        &[drive],
        &[],
    );
    wait(&mut x, "PROBE blk-read ok");
    wait(&mut x, "PROBE idle ok");
    assert_eq!(thread_names(x.pid()), ["api", "io", "vcpu 0", "xenia"]);
}

#[test]
fn a_restored_vm_with_a_drive_gets_an_io_thread_and_one_without_gets_none() {
    let dir = TempDir::new();
    let image = zero_image(&dir, "data.img", 1 << 20);
    for with_drive in [true, false] {
        let (mut x, api) = Xenia::with_api(&[]);
        let drives: Vec<_> = with_drive
            .then(|| {
                json!({"drive_id": "data", "path_on_host": image, "is_root_device": false,
                       "is_read_only": false})
            })
            .into_iter()
            .collect();
        boot_with(&api, &probe_args("tick:0"), 64, false, &drives, &[]);
        wait(&mut x, "PROBE tick");
        let files = SnapshotFiles::new();
        pause_and_create(&mut x, &api, &files, "Full");
        drop(x);

        let (y, api2) = Xenia::with_api(&[]);
        let r = api2.call("PUT", "/snapshot/load", &files.load_body(true));
        assert_eq!(r.status, 204, "{}", y.stderr());
        let expected: &[&str] = if with_drive {
            &["api", "io", "vcpu 0", "xenia"]
        } else {
            &["api", "vcpu 0", "xenia"]
        };
        assert_eq!(thread_names(y.pid()), expected, "with_drive={with_drive}");
    }
}

//! How xenia ends: guest crash, SIGTERM, boot timer.

use xenia_integration_tests::{boot_config, probe, probe_args, Xenia, BOOT_TIMEOUT};

#[test]
fn guest_crash_exits_with_status_2() {
    let config = boot_config(&probe().pvh, &probe_args("panic"), 1, 64);
    let mut x = Xenia::start(&config, &[]);
    x.wait_for_line("PROBE panic ok", BOOT_TIMEOUT).unwrap();
    let status = x.wait_exit(BOOT_TIMEOUT).unwrap();
    assert_eq!(status.code(), Some(2), "stderr:\n{}", x.stderr());
    assert!(x.stderr().contains("triple fault"), "{}", x.stderr());
}

#[test]
fn sigterm_stops_a_running_guest_cleanly() {
    let config = boot_config(&probe().linux64, &probe_args("idle"), 1, 64);
    let mut x = Xenia::start(&config, &[]);
    x.wait_for_line("PROBE idle ok", BOOT_TIMEOUT).unwrap();
    x.signal(libc::SIGTERM);
    let status = x.wait_exit(BOOT_TIMEOUT).unwrap();
    assert_eq!(status.code(), Some(0), "stderr:\n{}", x.stderr());
}

#[test]
fn boot_timer_logs_the_guest_boot_time() {
    let config = boot_config(&probe().pvh, &probe_args("timer"), 1, 64);
    let mut x = Xenia::start(&config, &["--boot-timer"]);
    x.wait_for_line("PROBE timer ok", BOOT_TIMEOUT).unwrap();
    let status = x.wait_exit(BOOT_TIMEOUT).unwrap();
    assert_eq!(status.code(), Some(0));
    assert!(x.stderr().contains("Guest-boot-time ="), "{}", x.stderr());
}

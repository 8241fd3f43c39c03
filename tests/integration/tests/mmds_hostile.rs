//! A hostile guest against the metadata service: 10,000 SYNs it never completes, more
//! half-sent requests than there are connection slots, and a 1 MiB request head. xenia's
//! memory stays bounded, its API keeps answering during the attack, the MMDS still answers
//! afterwards, and another interface keeps carrying traffic.

// Helpers outside #[test] functions fail the test with the console attached.
#![allow(clippy::panic, clippy::print_stderr)]

mod net_common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use net_common::*;
use serde_json::json;
use xenia_integration_tests::api::ApiClient;
use xenia_integration_tests::probe;

const MMDS: &str = "169.254.169.254";

/// A `kB` field of /proc/PID/status, in bytes.
fn status_kb(pid: u32, key: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/status: {e}"));
    text.lines()
        .find_map(|l| {
            l.strip_prefix(key)?
                .trim()
                .strip_suffix(" kB")?
                .parse::<u64>()
                .ok()
        })
        .unwrap_or_else(|| panic!("no {key} in /proc/{pid}/status"))
        * 1024
}

#[test]
fn syn_floods_half_requests_and_a_huge_request_stay_bounded() {
    let ns = NetNs::new("mmdsh");
    ns.tap("xt0", None);
    ns.tap("xt1", Some("10.32.0.1/24"));
    let (mut x, api) = ns.xenia_api(&[]);
    let cmds = format!(
        "net-mmds-get:{MMDS}:/id,net-mmds-hostile:{MMDS}:10000:40:1048576,\
         net-mmds-get:{MMDS}:/id,net-ping@1:10.32.0.1:3,tick:30"
    );
    let args = format!("console=ttyS0 probe.ip=10.32.0.2/24 probe.cmds={cmds}");
    let boot = json!({"kernel_image_path": probe().pvh, "boot_args": args});
    api.expect("PUT", "/boot-source", &boot.to_string(), 204);
    for (id, tap, mac) in [
        ("eth0", "xt0", "06:00:0a:20:00:02"),
        ("eth1", "xt1", "06:00:0a:20:00:03"),
    ] {
        let nic = iface(id, tap, mac, json!({}));
        api.expect(
            "PUT",
            &format!("/network-interfaces/{id}"),
            &nic.to_string(),
            204,
        );
    }
    api.expect(
        "PUT",
        "/mmds/config",
        r#"{"network_interfaces": ["eth0"]}"#,
        204,
    );
    api.expect("PUT", "/mmds", r#"{"id": "i-1"}"#, 204);
    api.start_instance(204);

    // The baseline: the guest has booted and been answered once.
    let first = x
        .wait_for_line("PROBE net-mmds-get", RUN_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(first.ends_with("body=i-1"), "{first}");
    let pid = x.pid();
    let baseline = status_kb(pid, "VmRSS:");

    // The API is polled throughout the attack.
    let stop = Arc::new(AtomicBool::new(false));
    let poller = {
        let stop = stop.clone();
        let api: ApiClient = api.clone();
        std::thread::spawn(move || {
            let (mut n, mut worst) = (0u32, Duration::ZERO);
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                let r = api.call("GET", "/", "");
                assert_eq!(r.status, 200);
                worst = worst.max(t.elapsed());
                n += 1;
            }
            (n, worst)
        })
    };
    let hostile = x
        .wait_for_line("PROBE net-mmds-hostile", RUN_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}\n{}", x.lines.join("\n")));
    let ping = x
        .wait_for_line("PROBE net-ping ", RUN_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}\n{}", x.lines.join("\n")));
    let peak = status_kb(pid, "VmHWM:");
    stop.store(true, Ordering::Relaxed);
    let (polls, worst) = poller
        .join()
        .unwrap_or_else(|_| panic!("API poller failed"));
    run_to_done(&mut x);

    assert!(hostile.contains(" ok "), "{hostile}");
    assert_eq!(num(&hostile, "syns"), 10_000);
    assert_eq!(num(&hostile, "big_status"), 400, "{hostile}");
    assert!(
        num(&hostile, "big_sent") < 64 * 1024,
        "the server stopped taking the 1 MiB request early: {hostile}"
    );
    let gets = x.lines_with("PROBE net-mmds-get ");
    assert_eq!(gets.len(), 2, "{gets:?}");
    assert!(
        gets[1].ends_with("body=i-1"),
        "answered after the attack: {}",
        gets[1]
    );
    assert_eq!(num(&ping, "received"), 3, "{ping}");
    let growth = peak.saturating_sub(baseline);
    eprintln!(
        "mmds_hostile: rss baseline {} KiB, peak {} KiB (+{} KiB); {polls} API polls, worst {:?}; {hostile}",
        baseline / 1024,
        peak / 1024,
        growth / 1024,
        worst
    );
    assert!(growth < 16 << 20, "xenia grew by {growth} bytes");
    assert!(
        polls > 0 && worst < Duration::from_secs(2),
        "{polls} polls, worst {worst:?}"
    );
}

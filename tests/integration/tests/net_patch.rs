//! `PATCH /network-interfaces/{id}` on a running VM changes the rate the guest gets.

// Helpers outside #[test] functions fail the test with the console attached.
#![allow(clippy::panic)]

mod net_common;

use net_common::*;
use serde_json::json;
use xenia_integration_tests::probe;

#[test]
fn patching_the_tx_limit_changes_the_measured_rate() {
    const SLOW: u64 = 200_000;
    const FAST: u64 = 2_000_000;
    let ns = NetNs::new("patch");
    ns.tap("xt0", Some("10.40.0.1/24"));
    let (mut x, api) = ns.xenia_api(&[]);
    let flood = "net-flood:10.40.0.1:9:4:1400";
    // The ticks leave time for the PATCH between the two floods.
    let args = format!("console=ttyS0 probe.ip=10.40.0.2/24 probe.cmds={flood},tick:30,{flood}");
    let boot = json!({"kernel_image_path": probe().pvh, "boot_args": args});
    api.expect("PUT", "/boot-source", &boot.to_string(), 204);
    let limiter = |size: u64| json!({"bandwidth": {"size": size, "refill_time": 1000}});
    let nic = iface(
        "eth0",
        "xt0",
        "06:00:0a:28:00:02",
        json!({"tx_rate_limiter": limiter(SLOW)}),
    );
    api.expect("PUT", "/network-interfaces/eth0", &nic.to_string(), 204);
    api.start_instance(204);
    let first = x
        .wait_for_line("PROBE net-flood", RUN_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}"));
    let patch = json!({"iface_id": "eth0", "tx_rate_limiter": limiter(FAST)});
    api.expect("PATCH", "/network-interfaces/eth0", &patch.to_string(), 204);
    let fault = api
        .expect(
            "PATCH",
            "/network-interfaces/eth9",
            r#"{"iface_id": "eth9"}"#,
            400,
        )
        .fault();
    assert!(fault.contains("no such network interface"), "{fault}");
    let config = api.expect("GET", "/vm/config", "", 200).json();
    assert_eq!(
        config["network-interfaces"][0]["tx_rate_limiter"]["bandwidth"]["size"], FAST,
        "{config}"
    );
    let second = x
        .wait_for_line("PROBE net-flood", RUN_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}"));
    let (slow, fast) = (num(&first, "bytes_per_s"), num(&second, "bytes_per_s"));
    assert!(
        first.contains(" ok ") && second.contains(" ok "),
        "{first}\n{second}"
    );
    assert!(
        slow <= 2 * SLOW,
        "before the PATCH: {slow} B/s, limit {SLOW}"
    );
    assert!(
        fast >= 3 * slow && fast >= 3 * SLOW,
        "after the PATCH: {fast} B/s (before: {slow} B/s)"
    );
}

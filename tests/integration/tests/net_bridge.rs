//! Two VMs on one Linux bridge: they reach each other, and a tx rate limit on one holds
//! its throughput near the limit without slowing the other.

// Helpers outside #[test] functions fail the test with the console attached.
#![allow(clippy::panic)]

mod net_common;

use net_common::*;
use serde_json::json;
use xenia_integration_tests::BOOT_TIMEOUT;

const MAC_A: &str = "06:00:0a:1e:00:02";
const MAC_B: &str = "06:00:0a:1e:00:03";

fn bridged_pair(tag: &str) -> NetNs {
    let ns = NetNs::new(tag);
    ns.tap("xta", None);
    ns.tap("xtb", None);
    ns.bridge("xbr0", "10.30.0.1/24", &["xta", "xtb"]);
    ns
}

#[test]
fn two_vms_on_a_bridge_ping_each_other() {
    let ns = bridged_pair("br");
    let b_config = probe_net_config(
        "net-responder:60",
        "10.30.0.3/24",
        None,
        vec![iface("eth0", "xtb", MAC_B, json!({}))],
    );
    let mut b = ns.xenia(&b_config, &[]);
    b.wait_for_line("PROBE-BOOT-OK", BOOT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}"));
    let a_config = probe_net_config(
        "net-arp:10.30.0.3,net-ping:10.30.0.3:4",
        "10.30.0.2/24",
        None,
        vec![iface("eth0", "xta", MAC_A, json!({}))],
    );
    let mut a = ns.xenia(&a_config, &[]);
    run_to_done(&mut a);
    let arp = ok_line(&a, "net-arp");
    assert_eq!(field(arp, "mac"), Some(MAC_B), "{arp}");
    let ping = ok_line(&a, "net-ping");
    assert_eq!(num(ping, "received"), 4, "{ping}");
    // B was the one answering: it is still running its responder.
    assert!(alive(b.pid()), "B exited:\n{}", b.stderr());
}

#[test]
fn a_tx_limit_holds_one_vm_near_its_rate_and_leaves_the_other_alone() {
    const LIMIT: u64 = 300_000;
    const SECONDS: u64 = 6;
    let ns = bridged_pair("rl");
    let limiter = json!({"tx_rate_limiter": {"bandwidth": {"size": LIMIT, "refill_time": 1000}}});
    let flood = format!("net-flood:10.30.0.1:9:{SECONDS}:1400");
    let a_config = probe_net_config(
        &flood,
        "10.30.0.2/24",
        None,
        vec![iface("eth0", "xta", MAC_A, limiter)],
    );
    let b_config = probe_net_config(
        &flood,
        "10.30.0.3/24",
        None,
        vec![iface("eth0", "xtb", MAC_B, json!({}))],
    );
    let mut a = ns.xenia(&a_config, &[]);
    let mut b = ns.xenia(&b_config, &[]);
    run_to_done(&mut a);
    run_to_done(&mut b);
    let rate_a = num(ok_line(&a, "net-flood"), "bytes_per_s");
    let rate_b = num(ok_line(&b, "net-flood"), "bytes_per_s");
    // The bucket starts full, so A may pass LIMIT over SECONDS by one bucket.
    assert!(
        (LIMIT / 3..=2 * LIMIT).contains(&rate_a),
        "limited VM: {rate_a} B/s, limit {LIMIT} B/s"
    );
    assert!(
        rate_b >= 3 * LIMIT,
        "the unlimited VM only reached {rate_b} B/s (limited one: {rate_a} B/s)"
    );
}

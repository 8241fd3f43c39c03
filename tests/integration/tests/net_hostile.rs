//! A hostile guest driver against virtio-net: malformed tx and rx chains and broken queue
//! setups. xenia must survive each, answer or ask for a reset, and the interface must
//! carry traffic afterwards.

// Helpers outside #[test] functions fail the test with the console attached.
#![allow(clippy::panic)]

mod net_common;

use net_common::*;
use serde_json::json;
use xenia_integration_tests::TempDir;

const KINDS: [&str; 11] = [
    "desc-oob",
    "loop",
    "wo-tx",
    "zero-len",
    "short",
    "head-oob",
    "avail-jump",
    "rx-ro",
    "rx-oob",
    "qsize-npot",
    "ring-oob",
];

#[test]
fn malformed_descriptors_and_queues_are_survived() {
    let ns = NetNs::new("hostile");
    ns.tap("xt0", Some("10.24.0.1/24"));
    let dir = TempDir::new();
    let metrics = dir.path().join("metrics.json");
    let mut cmds: Vec<String> = KINDS.iter().map(|k| format!("net-hostile:{k}")).collect();
    cmds.push("net-ping:10.24.0.1:2".into());
    // probe.gw makes the rx kinds ARP the host end, so that frames arrive.
    let config = probe_net_config(
        &cmds.join(","),
        "10.24.0.2/24",
        Some("10.24.0.1"),
        vec![iface("eth0", "xt0", "06:00:0a:18:00:02", json!({}))],
    );
    let mut x = ns.xenia(&config, &["--metrics-path", &metrics.to_string_lossy()]);
    run_to_done(&mut x);
    for kind in KINDS {
        let line = x
            .lines_with("PROBE net-hostile ")
            .into_iter()
            .find(|l| field(l, "kind") == Some(kind))
            .unwrap_or_else(|| panic!("no result for {kind}:\n{}", x.lines.join("\n")));
        assert!(line.starts_with("PROBE net-hostile ok"), "{line}");
        assert_eq!(field(line, "then"), Some("ok"), "{line}");
        let outcome = field(line, "outcome").unwrap_or("");
        assert!(
            ["answered", "needs-reset", "refused"].contains(&outcome),
            "{line}"
        );
    }
    let ping = ok_line(&x, "net-ping");
    assert_eq!(num(ping, "received"), 2, "{ping}");
    let m = net_metrics(&metrics, "eth0");
    let guest_errors = m["tx_malformed"].as_u64().unwrap_or(0)
        + m["rx_malformed"].as_u64().unwrap_or(0)
        + m["queue_errors"].as_u64().unwrap_or(0);
    assert!(
        guest_errors >= 5,
        "the malformed chains were not counted: {m}"
    );
}

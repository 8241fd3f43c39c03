//! Bad network-interface configurations: the config file exits 1 naming the field, the API
//! answers 400 naming it.

// Helpers outside #[test] functions fail the test with the console attached.
#![allow(clippy::panic)]

mod net_common;

use std::time::Duration;

use net_common::*;
use serde_json::{json, Value};
use xenia_integration_tests::{probe, run_to_exit, TempDir, Xenia};

const TIMEOUT: Duration = Duration::from_secs(60);
const MAC: &str = "06:00:0a:19:00:02";

fn config_with(ifaces: Vec<Value>) -> Value {
    probe_net_config("net-info", "10.25.0.2/24", None, ifaces)
}

/// Runs xenia on `config` (in the host namespace) and checks exit 1 with every needle.
fn assert_refused(config: &Value, needles: &[&str]) {
    let dir = TempDir::new();
    let path = dir.write("config.json", config.to_string());
    let args = vec![
        "--no-api".to_owned(),
        "--config-file".to_owned(),
        path.to_string_lossy().into_owned(),
    ];
    let (status, stderr) = run_to_exit(&args, TIMEOUT);
    assert_eq!(status.code(), Some(1), "{status:?}: {stderr}");
    for n in needles {
        assert!(stderr.contains(n), "`{n}` not in: {stderr}");
    }
}

/// A tap name that exists nowhere.
fn missing_tap() -> String {
    format!("xnone{}", std::process::id() % 100_000)
}

#[test]
fn config_file_errors_name_the_field() {
    let tap = missing_tap();
    assert_refused(
        &config_with(vec![iface("eth0", &tap, MAC, json!({}))]),
        &[
            "network-interfaces[eth0].host_dev_name",
            &tap,
            "does not exist",
        ],
    );
    assert_refused(
        &config_with(vec![
            iface("eth0", "xa0", MAC, json!({})),
            iface("eth0", "xa1", "06:00:0a:19:00:03", json!({})),
        ]),
        &["network-interfaces", "iface_id `eth0` is used twice"],
    );
    assert_refused(
        &config_with(vec![
            iface("eth0", "xa0", MAC, json!({})),
            iface("eth1", "xa1", MAC, json!({})),
        ]),
        &["network-interfaces", "guest_mac", MAC, "used twice"],
    );
    assert_refused(
        &config_with(vec![iface("eth0", "xa0", "06:00:0a:19:00", json!({}))]),
        &["guest_mac", "not a MAC address"],
    );
    assert_refused(
        &config_with(vec![iface("eth0", "xa0", MAC, json!({"mtu": 67}))]),
        &["network-interfaces[eth0].mtu", "68 to 65535"],
    );
    assert_refused(
        &config_with(vec![iface("eth0", "xa0", MAC, json!({"mtu": 65536}))]),
        &["mtu"],
    );
}

#[test]
fn api_errors_are_400_naming_the_field() {
    let (x, api) = Xenia::with_api(&[]);
    let boot = json!({"kernel_image_path": probe().pvh, "boot_args": "console=ttyS0"});
    api.expect("PUT", "/boot-source", &boot.to_string(), 204);
    let put = |id: &str, body: Value, status: u16| {
        api.expect(
            "PUT",
            &format!("/network-interfaces/{id}"),
            &body.to_string(),
            status,
        )
    };
    let fault = put("eth0", iface("eth0", "xa0", "06:00:0a:19", json!({})), 400).fault();
    assert!(fault.contains("not a MAC address"), "{fault}");
    let fault = put("eth0", iface("eth0", "xa0", MAC, json!({"mtu": 10})), 400).fault();
    assert!(
        fault.contains("mtu") && fault.contains("68 to 65535"),
        "{fault}"
    );
    put("eth0", iface("eth0", &missing_tap(), MAC, json!({})), 204);
    let fault = put("eth1", iface("eth1", "xa1", MAC, json!({})), 400).fault();
    assert!(
        fault.contains("guest_mac") && fault.contains("used twice"),
        "{fault}"
    );
    // The tap is looked up at start.
    let fault = api.start_instance(400).fault();
    assert!(
        fault.contains("network-interfaces[eth0].host_dev_name")
            && fault.contains("does not exist"),
        "{fault}"
    );
    let state = api.expect("GET", "/", "", 200).json();
    assert_eq!(state["state"], "Not started", "{state}");
    drop(x);
}

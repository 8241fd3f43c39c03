//! The metadata service end to end: the probe guest speaks HTTP over its own minimal TCP to
//! 169.254.169.254 through its virtio-net interface; xenia answers inside the device.

// Helpers outside #[test] functions fail the test with the console attached.
#![allow(clippy::panic, clippy::print_stderr)]

mod net_common;
mod snapshot_common;

use net_common::*;
use serde_json::json;
use snapshot_common::{pause_and_create, SnapshotFiles};
use xenia_integration_tests::api::ApiClient;
use xenia_integration_tests::{last_metrics, probe, TempDir, Xenia};

const MMDS: &str = "169.254.169.254";
const DATA: &str =
    r#"{"latest": {"meta-data": {"instance-id": "i-abc", "local": {"zone": "z1"}, "count": 3}}}"#;

/// Configures a probe on tap `xt0` (host 10.30.0.1) with MMDS on eth0, and starts it.
fn start(
    ns: &NetNs,
    mmds_config: serde_json::Value,
    cmds: &str,
    extra: &[&str],
) -> (Xenia, ApiClient) {
    ns.tap("xt0", Some("10.30.0.1/24"));
    let (x, api) = ns.xenia_api(extra);
    let args = format!("console=ttyS0 probe.ip=10.30.0.2/24 probe.cmds={cmds}");
    let boot = json!({"kernel_image_path": probe().pvh, "boot_args": args});
    api.expect("PUT", "/boot-source", &boot.to_string(), 204);
    let nic = iface("eth0", "xt0", "06:00:0a:1e:00:02", json!({}));
    api.expect("PUT", "/network-interfaces/eth0", &nic.to_string(), 204);
    api.expect("PUT", "/mmds/config", &mmds_config.to_string(), 204);
    api.expect("PUT", "/mmds", DATA, 204);
    api.start_instance(204);
    (x, api)
}

/// (status, body) of each `net-mmds-get` result, in order.
fn gets(x: &Xenia) -> Vec<(u64, String)> {
    x.lines_with("PROBE net-mmds-get ")
        .into_iter()
        .map(|l| {
            assert!(l.starts_with("PROBE net-mmds-get ok"), "{l}");
            let body = l.split_once(" body=").map_or("", |(_, b)| b);
            (num(l, "status"), body.to_owned())
        })
        .collect()
}

#[test]
fn v1_values_json_and_imds_text_and_a_host_patch_seen_by_the_next_get() {
    let ns = NetNs::new("mmds1");
    let dir = TempDir::new();
    let metrics = dir.path().join("metrics.json");
    let m = format!("{MMDS}:/latest/meta-data");
    let cmds = format!(
        "net-mmds-get:{m}/instance-id,net-mmds-get:{m}/instance-id:j,net-mmds-get:{m},\
         net-mmds-get:{m}:j,net-mmds-get:{m}/count,net-mmds-get:{MMDS}:/missing,\
         net-mmds-until:{m}/instance-id:i-patched,net-ping:10.30.0.1:2"
    );
    let (mut x, api) = start(
        &ns,
        json!({"network_interfaces": ["eth0"]}),
        &cmds,
        &["--metrics-path", &metrics.to_string_lossy()],
    );
    let first = x
        .wait_for_line("PROBE net-mmds-until-first", RUN_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}\n{}", x.lines.join("\n")));
    assert!(first.ends_with("body=i-abc"), "{first}");
    api.expect(
        "PATCH",
        "/mmds",
        r#"{"latest": {"meta-data": {"instance-id": "i-patched"}}}"#,
        204,
    );
    run_to_done(&mut x);
    let got = gets(&x);
    let want: Vec<(u64, &str)> = vec![
        (200, "i-abc"),
        (200, "\"i-abc\""),
        (200, "count\\ninstance-id\\nlocal/"),
        (
            200,
            r#"{"count":3,"instance-id":"i-abc","local":{"zone":"z1"}}"#,
        ),
        (
            501,
            "Cannot retrieve value. The value has an unsupported type.",
        ),
        (404, "Resource not found: /missing."),
    ];
    let got_ref: Vec<(u64, &str)> = got.iter().map(|(s, b)| (*s, b.as_str())).collect();
    assert_eq!(got_ref, want, "console:\n{}", x.lines.join("\n"));
    ok_line(&x, "net-mmds-until");
    // ARP, handshake, request, response and close, from the probe's ring 0 (emulated on PVM).
    let us: Vec<u64> = x
        .lines_with("PROBE net-mmds-get ")
        .iter()
        .map(|l| num(l, "us"))
        .collect();
    eprintln!("mmds v1: one GET on a fresh connection took {us:?} us in the guest");
    // Ordinary traffic on the same interface still reaches the host.
    assert_eq!(num(ok_line(&x, "net-ping"), "received"), 2);
    let mmds = &last_metrics(&metrics)["mmds"];
    assert!(mmds["rx_count"].as_u64().unwrap_or(0) >= 7, "{mmds}");
    assert!(mmds["rx_errors"].as_u64().unwrap_or(0) >= 2, "{mmds}");
    assert!(
        mmds["connections_created"].as_u64().unwrap_or(0) >= 7,
        "{mmds}"
    );
}

#[test]
fn v2_needs_a_session_token_and_expired_or_forged_tokens_get_401() {
    let ns = NetNs::new("mmds2");
    let dir = TempDir::new();
    let metrics = dir.path().join("metrics.json");
    let id = format!("{MMDS}:/latest/meta-data/instance-id");
    let cmds = format!(
        "net-mmds-get:{id},net-mmds-get:{id}:x,net-mmds-token:{MMDS}:60,net-mmds-get:{id}:t,\
         net-mmds-token:{MMDS}:1,tick:15,net-mmds-get:{id}:t,net-mmds-token:{MMDS}:0"
    );
    let (mut x, _api) = start(
        &ns,
        json!({"network_interfaces": ["eth0"], "version": "V2", "imds_compat": true}),
        &cmds,
        &["--metrics-path", &metrics.to_string_lossy()],
    );
    run_to_done(&mut x);
    let got = gets(&x);
    let statuses: Vec<u64> = got.iter().map(|g| g.0).collect();
    assert_eq!(
        statuses,
        [401, 401, 200, 401],
        "console:\n{}",
        x.lines.join("\n")
    );
    assert!(got[0].1.starts_with("No MMDS token provided."), "{got:?}");
    assert_eq!(got[1].1, "MMDS token not valid.");
    assert_eq!(got[2].1, "i-abc");
    let tokens = x.lines_with("PROBE net-mmds-token ");
    assert_eq!(tokens.len(), 3, "{tokens:?}");
    assert_eq!(num(tokens[0], "status"), 200);
    assert_eq!(num(tokens[0], "len"), 72, "{}", tokens[0]);
    assert_eq!(
        num(tokens[2], "status"),
        400,
        "TTL 0 is refused: {}",
        tokens[2]
    );
    let mmds = &last_metrics(&metrics)["mmds"];
    assert_eq!(mmds["rx_no_token"], 1, "{mmds}");
    assert_eq!(mmds["rx_invalid_token"], 2, "{mmds}");
}

#[test]
fn a_snapshot_keeps_the_mmds_config_and_the_control_plane_pushes_new_data_before_resume() {
    let ns = NetNs::new("mmdss");
    let addr = "169.254.170.2";
    let cmds = format!(
        "net-mmds-token:{addr}:60,net-mmds-until:{addr}:/id:i-old:t,\
         net-mmds-until:{addr}:/id:i-new:tT"
    );
    let config = json!({"network_interfaces": ["eth0"], "version": "V2", "ipv4_address": addr});
    ns.tap("xt0", Some("10.30.0.1/24"));
    let (mut x, api) = ns.xenia_api(&[]);
    let args = format!("console=ttyS0 probe.ip=10.30.0.2/24 probe.cmds={cmds}");
    let boot = json!({"kernel_image_path": probe().pvh, "boot_args": args});
    api.expect("PUT", "/boot-source", &boot.to_string(), 204);
    let nic = iface("eth0", "xt0", "06:00:0a:1e:00:02", json!({}));
    api.expect("PUT", "/network-interfaces/eth0", &nic.to_string(), 204);
    api.expect("PUT", "/mmds/config", &config.to_string(), 204);
    api.expect("PUT", "/mmds", r#"{"id": "i-old"}"#, 204);
    api.start_instance(204);
    let first = x
        .wait_for_line("PROBE net-mmds-until-first", RUN_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}\n{}", x.lines.join("\n")));
    assert!(first.ends_with("body=i-old"), "{first}");
    let files = SnapshotFiles::new();
    pause_and_create(&mut x, &api, &files, "Full");
    drop(x);

    // E2B's order: load without resuming, push this clone's identity, resume.
    let (mut y, api2) = ns.xenia_api(&[]);
    api2.expect("PUT", "/snapshot/load", &files.load_body(false), 204);
    assert_eq!(
        api2.expect("GET", "/mmds", "", 200).json(),
        json!({}),
        "the data store is not part of a snapshot"
    );
    let exported = api2.expect("GET", "/vm/config", "", 200).json();
    assert_eq!(
        exported["mmds-config"],
        json!({"version": "V2", "network_interfaces": ["eth0"],
        "ipv4_address": addr, "imds_compat": false})
    );
    api2.expect("PUT", "/mmds", r#"{"id": "i-new"}"#, 204);
    api2.expect("PATCH", "/vm", r#"{"state": "Resumed"}"#, 204);
    let done = y
        .wait_for_line("PROBE net-mmds-until ", RUN_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}\n{}\n{}", y.lines.join("\n"), y.stderr()));
    assert!(done.contains(" ok "), "{done}");
    // The token issued before the snapshot is refused after it (a new key per process).
    assert!(num(&done, "tokens") >= 1, "{done}");
}

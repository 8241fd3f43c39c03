//! The MMDS API without a guest: `PUT /mmds/config` checks, the data store's merge semantics
//! and size limit (413), and what `GET /vm/config` exports.

// Helpers outside #[test] functions fail the test with the console attached.
#![allow(clippy::panic)]

mod net_common;

use net_common::NetNs;
use serde_json::json;

fn iface(id: &str, tap: &str) -> String {
    json!({"iface_id": id, "host_dev_name": tap}).to_string()
}

#[test]
fn bad_mmds_configs_are_400_and_a_good_one_is_exported() {
    let ns = NetNs::new("mmdsapi");
    ns.tap("xt0", None);
    let (_x, api) = ns.xenia_api(&[]);
    api.expect(
        "PUT",
        "/network-interfaces/eth0",
        &iface("eth0", "xt0"),
        204,
    );
    for (body, needle) in [
        (
            json!({"network_interfaces": ["eth9"]}),
            "`eth9` does not exist",
        ),
        (
            json!({"network_interfaces": ["eth0"], "ipv4_address": "10.0.0.1"}),
            "not link-local",
        ),
        (
            json!({"network_interfaces": ["eth0"], "version": "V3"}),
            "unknown variant `V3`",
        ),
        (json!({"network_interfaces": []}), "is empty"),
        (
            json!({"version": "V2"}),
            "missing field `network_interfaces`",
        ),
        (
            json!({"network_interfaces": ["eth0"], "extra": 1}),
            "unknown field `extra`",
        ),
    ] {
        let r = api.expect("PUT", "/mmds/config", &body.to_string(), 400);
        assert!(r.fault().contains(needle), "{body}: {}", r.fault());
    }
    let exported = api.expect("GET", "/vm/config", "", 200).json();
    assert!(exported["mmds-config"].is_null(), "{exported}");
    api.expect(
        "PUT",
        "/mmds/config",
        r#"{"network_interfaces": ["eth0"], "version": "V2", "ipv4_address": "169.254.170.2"}"#,
        204,
    );
    let exported = api.expect("GET", "/vm/config", "", 200).json();
    assert_eq!(
        exported["mmds-config"],
        json!({"version": "V2", "network_interfaces": ["eth0"],
               "ipv4_address": "169.254.170.2", "imds_compat": false})
    );
}

#[test]
fn put_patch_get_follow_rfc_7396_and_the_size_limit() {
    let ns = NetNs::new("mmdsdata");
    let (_x, api) = ns.xenia_api(&["--mmds-size-limit", "100"]);
    assert_eq!(api.expect("GET", "/mmds", "", 200).json(), json!({}));
    let r = api.expect("PATCH", "/mmds", r#"{"a": 1}"#, 400);
    assert_eq!(r.fault(), "The MMDS data store is not initialized.");
    api.expect(
        "PUT",
        "/mmds",
        r#"{"latest": {"meta-data": {"id": "i-1", "tags": {"a": "b"}}}, "n": 1}"#,
        204,
    );
    api.expect(
        "PATCH",
        "/mmds",
        r#"{"latest": {"meta-data": {"tags": null, "zone": "z1"}}, "n": [1, 2]}"#,
        204,
    );
    assert_eq!(
        api.expect("GET", "/mmds", "", 200).json(),
        json!({"latest": {"meta-data": {"id": "i-1", "zone": "z1"}}, "n": [1, 2]})
    );
    let big = json!({"blob": "x".repeat(100)}).to_string();
    let r = api.expect("PUT", "/mmds", &big, 413);
    assert_eq!(r.fault(), "The MMDS patch request doesn't fit.");
    api.expect("PATCH", "/mmds", &big, 413);
    assert_eq!(
        api.expect("GET", "/mmds", "", 200).json()["latest"]["meta-data"]["zone"],
        "z1",
        "a refused update changes nothing"
    );
    for (method, body) in [("PUT", "[1, 2]"), ("PUT", "\"text\""), ("PATCH", "{ nope")] {
        api.expect(method, "/mmds", body, 400);
    }
    // The data is not configuration: the export does not carry it.
    let exported = api.expect("GET", "/vm/config", "", 200).json();
    assert!(!exported.to_string().contains("z1"), "{exported}");
}

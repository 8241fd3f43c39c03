//! Every endpoint with a good body and each kind of bad body, before and after boot:
//! status codes and `fault_message`s as Firecracker gives them.

use std::time::{Duration, Instant};

use xenia_integration_tests::api::ApiClient;
use xenia_integration_tests::{probe, probe_args, Xenia, BOOT_TIMEOUT};

/// Expects 400 with a `fault_message` containing `needle`.
fn refused(api: &ApiClient, method: &str, path: &str, body: &str, needle: &str) {
    let r = api.expect(method, path, body, 400);
    assert_eq!(
        r.header("content-type"),
        Some("application/json"),
        "{method} {path}"
    );
    let fault = r.fault();
    assert!(
        fault.contains(needle),
        "{method} {path} {body}: fault_message {fault:?} lacks {needle:?}"
    );
}

fn kernel_body(cmds: &str) -> String {
    serde_json::json!({"kernel_image_path": probe().pvh, "boot_args": probe_args(cmds)}).to_string()
}

/// Reads `path` until it contains `needle` (a file written by another process).
fn wait_for_file(path: &std::path::Path, needle: &str) -> String {
    let deadline = Instant::now() + BOOT_TIMEOUT;
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.contains(needle) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "{} never contained {needle:?}:\n{text}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn pre_boot_endpoints_accept_good_bodies() {
    let (x, api) = Xenia::with_api(&[]);
    let dir = x.dir().to_path_buf();
    let disk = dir.join("disk.img");
    std::fs::write(&disk, vec![0u8; 4096]).unwrap();

    assert_eq!(api.expect("GET", "/", "", 200).json()["app_name"], "xenia");
    let v = api.expect("GET", "/version", "", 200).json();
    assert!(v["firecracker_version"].is_string(), "{v}");
    api.expect("PUT", "/boot-source", &kernel_body("idle"), 204);
    api.expect(
        "PUT",
        "/machine-config",
        r#"{"vcpu_count": 1, "mem_size_mib": 64}"#,
        204,
    );
    api.expect("PATCH", "/machine-config", r#"{"vcpu_count": 2}"#, 204);
    let m = api.expect("GET", "/machine-config", "", 200).json();
    assert_eq!(
        (m["vcpu_count"].as_u64(), m["mem_size_mib"].as_u64()),
        (Some(2), Some(64))
    );

    let log = dir.join("xenia.log");
    let body = serde_json::json!({"log_path": log, "level": "Info"}).to_string();
    api.expect("PUT", "/logger", &body, 204);
    api.expect("GET", "/", "", 200);
    wait_for_file(&log, "API GET / -> 200");

    let metrics = dir.join("metrics.json");
    let body = serde_json::json!({"metrics_path": metrics}).to_string();
    api.expect("PUT", "/metrics", &body, 204);
    refused(&api, "PUT", "/metrics", &body, "already configured");
    api.expect("PUT", "/actions", r#"{"action_type": "FlushMetrics"}"#, 204);

    let body = serde_json::json!({"serial_out_path": dir.join("serial.out")}).to_string();
    api.expect("PUT", "/serial", &body, 204);
    let body = serde_json::json!({"drive_id": "root", "path_on_host": disk,
        "is_root_device": true, "is_read_only": false})
    .to_string();
    api.expect("PUT", "/drives/root", &body, 204);
    api.expect(
        "PUT",
        "/network-interfaces/eth0",
        r#"{"iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": "06:00:00:00:00:01"}"#,
        204,
    );

    let config = api.expect("GET", "/vm/config", "", 200).json();
    assert_eq!(config["drives"][0]["drive_id"], "root");
    assert_eq!(config["network-interfaces"][0]["host_dev_name"], "tap0");
    assert_eq!(config["machine-config"]["vcpu_count"], 2);
    assert_eq!(config["logger"]["level"], "Info");
    assert!(config["metrics"]["metrics_path"].is_string());
    assert!(config["serial"]["serial_out_path"].is_string());
}

#[test]
fn bad_bodies_are_400_with_a_fault_message() {
    let (x, api) = Xenia::with_api(&[]);
    let mc = "/machine-config";
    refused(&api, "PUT", mc, r#"{"vcpu_count": 1,"#, "EOF");
    refused(
        &api,
        "PUT",
        mc,
        r#"{"vcpu_count": "two", "mem_size_mib": 64}"#,
        "invalid type",
    );
    refused(
        &api,
        "PUT",
        mc,
        r#"{"vcpu_count": 1, "mem_size_mib": 64, "bogus": 1}"#,
        "unknown field `bogus`",
    );
    refused(
        &api,
        "PUT",
        mc,
        r#"{"vcpu_count": 1}"#,
        "missing field `mem_size_mib`",
    );
    refused(
        &api,
        "PUT",
        mc,
        r#"{"vcpu_count": 0, "mem_size_mib": 64}"#,
        "out of range",
    );
    refused(&api, "PATCH", mc, r#"{"vcpu_count": 99}"#, "out of range");
    refused(&api, "PUT", mc, "", "empty");
    refused(
        &api,
        "PUT",
        "/actions",
        r#"{"action_type": "Explode"}"#,
        "unknown variant",
    );
    refused(
        &api,
        "PUT",
        "/boot-source",
        r#"{"kernel_image_path": "/no/such/kernel"}"#,
        "/no/such/kernel",
    );
    refused(
        &api,
        "PUT",
        "/boot-source",
        r#"{"boot_args": "x"}"#,
        "missing field `kernel_image_path`",
    );
    refused(
        &api,
        "PUT",
        "/logger",
        r#"{"level": "Loud"}"#,
        "unknown log level",
    );
    refused(
        &api,
        "PUT",
        "/metrics",
        r#"{"metrics_path": "/no/dir/m.json"}"#,
        "/no/dir/m.json",
    );

    let disk = x.dir().join("d.img");
    std::fs::write(&disk, [0u8; 512]).unwrap();
    let drive = |id: &str, path: &str, root: bool| {
        serde_json::json!({"drive_id": id, "path_on_host": path, "is_root_device": root})
            .to_string()
    };
    let disk_s = disk.to_string_lossy();
    refused(
        &api,
        "PUT",
        "/drives/other",
        &drive("root", &disk_s, true),
        "does not match",
    );
    refused(
        &api,
        "PUT",
        "/drives/root",
        &drive("root", "/no/disk.img", true),
        "/no/disk.img",
    );
    let read_only_dir = serde_json::json!({"drive_id": "root", "path_on_host": x.dir(),
        "is_root_device": true, "is_read_only": true})
    .to_string();
    refused(
        &api,
        "PUT",
        "/drives/root",
        &read_only_dir,
        "not a regular file",
    );
    api.expect("PUT", "/drives/root", &drive("root", &disk_s, true), 204);
    refused(
        &api,
        "PUT",
        "/drives/data",
        &drive("data", &disk_s, true),
        "root device",
    );
    refused(
        &api,
        "PUT",
        "/network-interfaces/eth0",
        r#"{"iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": "zz"}"#,
        "MAC",
    );

    // Unknown paths and methods, and paths xenia does not implement.
    refused(
        &api,
        "GET",
        "/nope",
        "",
        "Invalid request method and/or path",
    );
    refused(
        &api,
        "GET",
        "/actions",
        "",
        "Invalid request method and/or path",
    );
    refused(
        &api,
        "PUT",
        "/pmem/p0",
        r#"{"id": "p0", "path_on_host": "/p"}"#,
        "not supported",
    );
    refused(
        &api,
        "PUT",
        "/vsock",
        r#"{"guest_cid": 2, "uds_path": "/v"}"#,
        "vsock.guest_cid",
    );

    // Post-boot calls before boot.
    let before = "before starting the microVM";
    refused(&api, "PATCH", "/vm", r#"{"state": "Paused"}"#, before);
    refused(
        &api,
        "PUT",
        "/actions",
        r#"{"action_type": "SendCtrlAltDel"}"#,
        before,
    );
    refused(
        &api,
        "PATCH",
        "/drives/root",
        r#"{"drive_id": "root", "path_on_host": "/r"}"#,
        before,
    );
    refused(
        &api,
        "PATCH",
        "/network-interfaces/eth0",
        r#"{"iface_id": "eth0"}"#,
        before,
    );
    // Nothing of the above changed the state.
    assert_eq!(
        api.expect("GET", "/", "", 200).json()["state"],
        "Not started"
    );
}

#[test]
fn pre_boot_calls_after_boot_are_refused() {
    let (mut x, api) = Xenia::with_api(&[]);
    let serial = x.dir().join("serial.out");
    let body = serde_json::json!({"serial_out_path": serial}).to_string();
    api.expect("PUT", "/serial", &body, 204);
    api.expect("PUT", "/boot-source", &kernel_body("idle"), 204);
    let data = x.dir().join("data.img");
    std::fs::write(&data, [0u8; 4096]).unwrap();
    let body = serde_json::json!({"drive_id": "data", "path_on_host": data,
        "is_root_device": false})
    .to_string();
    api.expect("PUT", "/drives/data", &body, 204);
    api.start_instance(204);
    // The console went to the file, not to stdout.
    wait_for_file(&serial, "PROBE idle ok");
    assert!(x.lines_within(Duration::from_millis(200)).is_empty());

    let after = "after starting the microVM";
    let disk = x.dir().join("d.img");
    std::fs::write(&disk, [0u8; 512]).unwrap();
    let drive = serde_json::json!({"drive_id": "d", "path_on_host": disk,
        "is_root_device": false})
    .to_string();
    for (method, path, body) in [
        ("PUT", "/boot-source", kernel_body("idle")),
        (
            "PUT",
            "/machine-config",
            r#"{"vcpu_count": 1, "mem_size_mib": 64}"#.into(),
        ),
        ("PATCH", "/machine-config", r#"{"vcpu_count": 1}"#.into()),
        ("PUT", "/logger", r#"{"level": "Debug"}"#.into()),
        (
            "PUT",
            "/metrics",
            r#"{"metrics_path": "/tmp/never"}"#.into(),
        ),
        ("PUT", "/serial", "{}".into()),
        ("PUT", "/drives/d", drive),
        (
            "PUT",
            "/network-interfaces/eth0",
            r#"{"iface_id": "eth0", "host_dev_name": "tap0"}"#.into(),
        ),
        (
            "PUT",
            "/actions",
            r#"{"action_type": "InstanceStart"}"#.into(),
        ),
    ] {
        refused(&api, method, path, &body, after);
    }
    // Runtime calls still work.
    assert_eq!(api.expect("GET", "/", "", 200).json()["state"], "Running");
    api.expect("GET", "/machine-config", "", 200);
    api.expect("GET", "/vm/config", "", 200);
    refused(
        &api,
        "PATCH",
        "/drives/nope",
        r#"{"drive_id": "nope", "rate_limiter": {}}"#,
        "nope",
    );
    // PATCH /drives swaps the backing file of the running drive.
    let disk2 = x.dir().join("d2.img");
    std::fs::write(&disk2, [0u8; 1024]).unwrap();
    let body = serde_json::json!({"drive_id": "data", "path_on_host": disk2}).to_string();
    api.expect("PATCH", "/drives/data", &body, 204);
    let config = api.expect("GET", "/vm/config", "", 200).json();
    assert_eq!(
        config["drives"][0]["path_on_host"],
        disk2.to_string_lossy().as_ref()
    );
    refused(
        &api,
        "PATCH",
        "/drives/data",
        r#"{"drive_id": "data", "path_on_host": "/no/such.img"}"#,
        "/no/such.img",
    );
}

//! `GET /vm/config` in Firecracker's export shape, and `--config-file` taking both xenia's
//! export and one shaped like Firecracker's (a hand-written fixture).

use std::path::Path;

use serde_json::{json, Value};
use xenia_integration_tests::api::ApiClient;
use xenia_integration_tests::probe_lines::{field, ok_line};
use xenia_integration_tests::{probe, probe_args, workspace_root, TempDir, Xenia, BOOT_TIMEOUT};

/// The sections of Firecracker's `FullVmConfiguration`, each with its empty value.
fn firecracker_sections() -> Vec<(&'static str, Value)> {
    vec![
        ("balloon", Value::Null),
        ("drives", json!([])),
        ("boot-source", Value::Null),
        ("cpu-config", Value::Null),
        ("logger", Value::Null),
        ("machine-config", Value::Null),
        ("metrics", Value::Null),
        ("memory-hotplug", Value::Null),
        ("mmds-config", Value::Null),
        ("network-interfaces", json!([])),
        ("pmem", json!([])),
        ("vsock", Value::Null),
        ("entropy", Value::Null),
    ]
}

/// Checks that `config` has exactly Firecracker's sections, that every section xenia does
/// not implement has Firecracker's empty value, and that lists are lists.
fn assert_firecracker_shape(config: &Value) {
    let keys: Vec<&str> = config
        .as_object()
        .expect("an object")
        .keys()
        .map(String::as_str)
        .collect();
    let mut got = keys.clone();
    got.sort_unstable();
    let mut want: Vec<&str> = firecracker_sections().iter().map(|(k, _)| *k).collect();
    want.sort_unstable();
    assert_eq!(got, want, "{config}");
    for (key, empty) in firecracker_sections() {
        match key {
            "balloon" | "cpu-config" | "memory-hotplug" | "mmds-config" | "vsock" | "entropy"
            | "pmem" => assert_eq!(config[key], empty, "{key}: {config}"),
            "drives" | "network-interfaces" => assert!(config[key].is_array(), "{key}"),
            "boot-source" | "machine-config" => assert!(config[key].is_object(), "{key}"),
            _ => assert!(config[key].is_null() || config[key].is_object(), "{key}"),
        }
    }
}

fn boot_source(kernel: &Path, cmds: &str) -> String {
    json!({"kernel_image_path": kernel, "boot_args": probe_args(cmds)}).to_string()
}

fn data_drive(dir: &Path) -> String {
    let image = dir.join("data.img");
    std::fs::write(&image, vec![0u8; 1 << 20]).expect("write the drive image");
    json!({"drive_id": "data", "path_on_host": image, "is_root_device": false,
           "is_read_only": true})
    .to_string()
}

fn spawn_with_config(text: &str, dir: TempDir) -> Xenia {
    let file = dir.write("config.json", text);
    let args = vec![
        "--no-api".to_owned(),
        "--config-file".to_owned(),
        file.to_string_lossy().into_owned(),
    ];
    Xenia::spawn(&args, dir)
}

fn full_config(api: &ApiClient) -> Value {
    api.expect("GET", "/vm/config", "", 200).json()
}

#[test]
fn a_fresh_vmm_shows_firecrackers_defaults_and_agrees_with_machine_config() {
    let (_x, api) = Xenia::with_api(&[]);
    let config = full_config(&api);
    assert_firecracker_shape(&config);
    assert_eq!(
        config["boot-source"],
        json!({"kernel_image_path": "", "initrd_path": null, "boot_args": null})
    );
    assert_eq!(config["machine-config"]["vcpu_count"], 1);
    assert_eq!(config["machine-config"]["mem_size_mib"], 128);
    assert_eq!(
        config["machine-config"],
        api.expect("GET", "/machine-config", "", 200).json()
    );
    assert!(config["logger"].is_null() && config["metrics"].is_null());
}

#[test]
fn a_configured_then_running_vm_keeps_the_shape_and_its_export_boots_again() {
    let (mut x, api) = Xenia::with_api(&["--id", "export"]);
    // `idle` keeps the guest from resetting (and xenia from exiting) before the running
    // VM's export is read.
    api.expect(
        "PUT",
        "/boot-source",
        &boot_source(&probe().pvh, "blk-info,idle"),
        204,
    );
    api.expect(
        "PUT",
        "/machine-config",
        r#"{"vcpu_count": 2, "mem_size_mib": 64}"#,
        204,
    );
    api.expect("PUT", "/drives/data", &data_drive(x.dir()), 204);
    let configured = full_config(&api);
    assert_firecracker_shape(&configured);
    assert_eq!(configured["drives"][0]["drive_id"], "data");
    assert_eq!(configured["machine-config"]["vcpu_count"], 2);

    api.start_instance(204);
    x.wait_for_line("PROBE blk-info", BOOT_TIMEOUT).unwrap();
    let running = full_config(&api);
    assert_firecracker_shape(&running);
    assert_eq!(running, configured);

    // The export boots a second VMM as it is.
    let mut again = spawn_with_config(&running.to_string(), TempDir::new());
    again.wait_for_line("PROBE blk-info", BOOT_TIMEOUT).unwrap();
    let info = ok_line(&again, "blk-info");
    assert_eq!(field(info, "capacity"), Some("2048"), "{info}");
    assert_eq!(field(info, "ro"), Some("1"), "{info}");
    again.signal(libc::SIGTERM);
    assert_eq!(again.wait_exit(BOOT_TIMEOUT).unwrap().code(), Some(0));
    x.signal(libc::SIGTERM);
    assert_eq!(x.wait_exit(BOOT_TIMEOUT).unwrap().code(), Some(0));
}

#[test]
fn a_firecracker_shaped_export_boots_through_config_file() {
    let fixture = workspace_root().join("tests/integration/fixtures/firecracker-vm-config.json");
    let text = std::fs::read_to_string(&fixture).unwrap();
    let dir = TempDir::new();
    let image = dir.write("disk.img", vec![0u8; 1 << 20]);
    let quoted = |s: &str| Value::String(s.to_owned()).to_string();
    let text = text
        .replace("\"@KERNEL@\"", &quoted(&probe().pvh.to_string_lossy()))
        .replace("\"@BOOT_ARGS@\"", &quoted(&probe_args("blk-info")))
        .replace("\"@DISK@\"", &quoted(&image.to_string_lossy()));
    // The fixture is what Firecracker writes: every section, nulls and empty lists.
    let parsed: Value = serde_json::from_str(&text).unwrap();
    assert_firecracker_shape(&parsed);
    assert_eq!(parsed["drives"][0]["socket"], Value::Null);

    let mut x = spawn_with_config(&text, dir);
    x.wait_for_line("PROBE-BOOT-OK", BOOT_TIMEOUT).unwrap();
    x.wait_for_line("PROBE blk-info", BOOT_TIMEOUT).unwrap();
    let info = ok_line(&x, "blk-info");
    assert_eq!(field(info, "capacity"), Some("2048"), "{info}");
    assert_eq!(field(info, "ro"), Some("1"), "{info}");
    x.signal(libc::SIGTERM);
    assert_eq!(x.wait_exit(BOOT_TIMEOUT).unwrap().code(), Some(0));
}

#[test]
fn sections_that_ask_for_something_xenia_lacks_are_still_refused() {
    let base = json!({
        "boot-source": {"kernel_image_path": probe().pvh},
        "pmem": [{"id": "p0", "path_on_host": "/nonexistent"}]
    });
    let mut x = spawn_with_config(&base.to_string(), TempDir::new());
    let status = x.wait_exit(BOOT_TIMEOUT).unwrap();
    assert_eq!(status.code(), Some(1), "stderr:\n{}", x.stderr());
    assert!(
        x.stderr().contains("`pmem` section is not supported"),
        "{}",
        x.stderr()
    );
}

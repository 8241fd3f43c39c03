//! Booting through the API socket, and how an API-driven xenia starts and ends.

use std::path::Path;

use xenia_integration_tests::api::{exists, ApiClient};
use xenia_integration_tests::{probe, probe_args, run_to_exit, TempDir, Xenia, BOOT_TIMEOUT};

fn boot_source(kernel: &Path, cmds: &str) -> String {
    serde_json::json!({"kernel_image_path": kernel, "boot_args": probe_args(cmds)}).to_string()
}

/// PUT boot-source and machine-config, then InstanceStart.
fn start_through_api(api: &ApiClient, kernel: &Path, cmds: &str) {
    api.expect("PUT", "/boot-source", &boot_source(kernel, cmds), 204);
    api.expect(
        "PUT",
        "/machine-config",
        r#"{"vcpu_count": 1, "mem_size_mib": 64}"#,
        204,
    );
    api.start_instance(204);
}

#[test]
fn a_guest_boots_through_the_socket_and_its_config_boots_again_from_a_file() {
    let (mut x, api) = Xenia::with_api(&["--id", "api-boot"]);
    let info = api.expect("GET", "/", "", 200).json();
    assert_eq!(info["state"], "Not started");
    assert_eq!(info["id"], "api-boot");
    assert_eq!(info["app_name"], "xenia");
    start_through_api(&api, &probe().pvh, "idle");
    x.wait_for_line("PROBE-BOOT-OK entry=pvh", BOOT_TIMEOUT)
        .unwrap();
    x.wait_for_line("PROBE idle ok", BOOT_TIMEOUT).unwrap();
    assert_eq!(api.expect("GET", "/", "", 200).json()["state"], "Running");

    let config = api.expect("GET", "/vm/config", "", 200).json();
    for section in ["boot-source", "machine-config", "drives", "logger", "vsock"] {
        assert!(config.get(section).is_some(), "{section} missing: {config}");
    }
    assert!(config["vsock"].is_null() && config["metrics"].is_null());
    assert_eq!(config["machine-config"]["mem_size_mib"], 64);

    let dir = TempDir::new();
    let file = dir.write("from-api.json", config.to_string());
    let args = vec![
        "--no-api".to_owned(),
        "--config-file".to_owned(),
        file.to_string_lossy().into_owned(),
    ];
    let mut again = Xenia::spawn(&args, dir);
    again
        .wait_for_line("PROBE-BOOT-OK entry=pvh", BOOT_TIMEOUT)
        .unwrap();
    again.wait_for_line("PROBE idle ok", BOOT_TIMEOUT).unwrap();
    again.signal(libc::SIGTERM);
    assert_eq!(again.wait_exit(BOOT_TIMEOUT).unwrap().code(), Some(0));
    x.signal(libc::SIGTERM);
    assert_eq!(x.wait_exit(BOOT_TIMEOUT).unwrap().code(), Some(0));
}

#[test]
fn send_ctrl_alt_del_resets_the_guest_and_xenia_exits_0() {
    let (mut x, api) = Xenia::with_api(&[]);
    start_through_api(&api, &probe().linux64, "kbd");
    x.wait_for_line("PROBE kbd waiting", BOOT_TIMEOUT).unwrap();
    api.expect(
        "PUT",
        "/actions",
        r#"{"action_type": "SendCtrlAltDel"}"#,
        204,
    );
    x.wait_for_line("PROBE kbd ok", BOOT_TIMEOUT).unwrap();
    let status = x.wait_exit(BOOT_TIMEOUT).unwrap();
    assert_eq!(status.code(), Some(0), "stderr:\n{}", x.stderr());
    assert!(!exists(&api.socket), "the socket file outlived xenia");
}

#[test]
fn sigterm_exits_0_and_removes_the_socket() {
    let (mut x, api) = Xenia::with_api(&[]);
    start_through_api(&api, &probe().pvh, "idle");
    x.wait_for_line("PROBE idle ok", BOOT_TIMEOUT).unwrap();
    assert!(exists(&api.socket));
    x.signal(libc::SIGTERM);
    let status = x.wait_exit(BOOT_TIMEOUT).unwrap();
    assert_eq!(status.code(), Some(0), "stderr:\n{}", x.stderr());
    assert!(!exists(&api.socket), "the socket file outlived xenia");
}

#[test]
fn sigterm_before_boot_also_removes_the_socket() {
    let (mut x, api) = Xenia::with_api(&[]);
    x.signal(libc::SIGTERM);
    assert_eq!(x.wait_exit(BOOT_TIMEOUT).unwrap().code(), Some(0));
    assert!(!exists(&api.socket), "the socket file outlived xenia");
}

#[test]
fn a_second_xenia_on_the_same_socket_fails_clearly() {
    let (_first, api) = Xenia::with_api(&[]);
    let args = vec![
        "--api-sock".to_owned(),
        api.socket.to_string_lossy().into_owned(),
    ];
    let (status, stderr) = run_to_exit(&args, BOOT_TIMEOUT);
    assert_eq!(status.code(), Some(1), "stderr:\n{stderr}");
    assert!(
        stderr.contains("already serving") && stderr.contains(&*api.socket.to_string_lossy()),
        "{stderr}"
    );
    // The first one is untouched.
    assert_eq!(
        api.expect("GET", "/", "", 200).json()["state"],
        "Not started"
    );
}

#[test]
fn a_failed_start_answers_400_and_the_vmm_stays_usable() {
    let (mut x, api) = Xenia::with_api(&[]);
    // A readable file that is not a kernel passes PUT /boot-source but cannot boot.
    let not_a_kernel = x.dir().join("not-a-kernel");
    std::fs::write(&not_a_kernel, b"plain text, no ELF header").unwrap();
    api.expect(
        "PUT",
        "/boot-source",
        &boot_source(&not_a_kernel, "idle"),
        204,
    );
    let r = api.start_instance(400);
    assert!(
        r.fault().contains("Cannot start the microVM"),
        "{}",
        r.fault()
    );
    assert_eq!(
        api.expect("GET", "/", "", 200).json()["state"],
        "Not started"
    );
    start_through_api(&api, &probe().pvh, "idle");
    x.wait_for_line("PROBE idle ok", BOOT_TIMEOUT).unwrap();
    assert_eq!(api.expect("GET", "/", "", 200).json()["state"], "Running");
}

#[test]
fn a_config_file_with_an_api_socket_boots_and_keeps_the_api() {
    let dir = TempDir::new();
    let config = xenia_integration_tests::boot_config(&probe().pvh, &probe_args("idle"), 1, 64);
    let file = dir.write("vm.json", config.to_string());
    let socket = dir.path().join("api.sock");
    let args = vec![
        "--config-file".to_owned(),
        file.to_string_lossy().into_owned(),
        "--api-sock".to_owned(),
        socket.to_string_lossy().into_owned(),
    ];
    let mut x = Xenia::spawn(&args, dir);
    x.wait_for_line("PROBE idle ok", BOOT_TIMEOUT).unwrap();
    let api = ApiClient::new(socket);
    api.wait_ready(BOOT_TIMEOUT).unwrap();
    assert_eq!(api.expect("GET", "/", "", 200).json()["state"], "Running");
    let r = api.expect(
        "PUT",
        "/machine-config",
        r#"{"vcpu_count": 1, "mem_size_mib": 64}"#,
        400,
    );
    assert!(r.fault().contains("after starting"), "{}", r.fault());
    let config = api.expect("GET", "/vm/config", "", 200).json();
    assert_eq!(config["boot-source"]["boot_args"], probe_args("idle"));
}

#[test]
fn no_api_without_a_config_file_is_an_error() {
    let (status, stderr) = run_to_exit(&["--no-api".to_owned()], BOOT_TIMEOUT);
    assert_eq!(status.code(), Some(1));
    assert!(stderr.contains("--no-api needs --config-file"), "{stderr}");
}

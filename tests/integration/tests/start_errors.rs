//! The overlapped start (the memory slot registered on a helper thread while the VMM thread
//! loads the kernel and sets up vCPUs and devices) still reports every start-up error by
//! name and leaves nothing running: a kernel that is not one, and a memory registration
//! failure injected through the debug build's test hook.

// Helpers outside #[test] functions fail the test with the console attached.
#![allow(clippy::panic)]

use serde_json::json;
use xenia_integration_tests::api::ApiClient;
use xenia_integration_tests::{
    boot_config, probe, probe_args, thread_names, TempDir, Xenia, BOOT_TIMEOUT,
};

/// Makes `KVM_SET_USER_MEMORY_REGION` fail (after the real call) in a debug xenia.
const FAIL_REGISTRATION: (&str, &str) = ("XENIA_TEST_FAIL_MEMORY_REGISTRATION", "1");

/// Configures the probe with `kernel` through the API and asks for InstanceStart; returns
/// the fault message of the refusal.
fn refused_start(x: &Xenia, api: &ApiClient, kernel: &std::path::Path) -> String {
    let body = json!({"kernel_image_path": kernel, "boot_args": probe_args("idle")});
    api.expect("PUT", "/boot-source", &body.to_string(), 204);
    api.expect(
        "PUT",
        "/machine-config",
        r#"{"vcpu_count": 2, "mem_size_mib": 64}"#,
        204,
    );
    let r = api.call("PUT", "/actions", r#"{"action_type": "InstanceStart"}"#);
    assert_eq!(r.status, 400, "stderr:\n{}", x.stderr());
    r.json()["fault_message"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

#[test]
fn a_bad_kernel_is_refused_by_name_and_leaves_no_thread_behind() {
    let dir = TempDir::new();
    let junk = dir.write("junk.bin", vec![0x5a; 8192]);
    let (mut x, api) = Xenia::with_api(&[]);
    let fault = refused_start(&x, &api, &junk);
    assert!(fault.contains("neither an ELF"), "{fault}");
    // No vCPU, io or memslot thread survives the failed start.
    assert_eq!(thread_names(x.pid()), ["api", "xenia"]);
    assert_eq!(
        api.expect("GET", "/", "", 200).json()["state"],
        "Not started"
    );
    // The same process boots once the kernel is right.
    let body = json!({"kernel_image_path": probe().pvh, "boot_args": probe_args("idle")});
    api.expect("PUT", "/boot-source", &body.to_string(), 204);
    api.start_instance(204);
    x.wait_for_line("PROBE idle ok", BOOT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}\nstderr:\n{}", x.stderr()));
}

#[test]
fn a_failed_memory_registration_is_reported_and_leaves_no_thread_behind() {
    let (x, api) = Xenia::with_api_env(&[], &[FAIL_REGISTRATION]);
    let fault = refused_start(&x, &api, &probe().pvh);
    assert!(fault.contains("KVM_SET_USER_MEMORY_REGION"), "{fault}");
    assert_eq!(thread_names(x.pid()), ["api", "xenia"]);
    assert_eq!(
        api.expect("GET", "/", "", 200).json()["state"],
        "Not started"
    );
}

#[test]
fn a_failed_memory_registration_ends_a_config_file_start_with_the_error() {
    let dir = TempDir::new();
    let config = boot_config(&probe().pvh, &probe_args("idle"), 1, 64);
    let path = dir.write("vm.json", config.to_string());
    let args = [
        "--no-api".to_owned(),
        "--config-file".to_owned(),
        path.to_string_lossy().into_owned(),
    ];
    let mut x = Xenia::spawn_program_env(
        &xenia_integration_tests::xenia_binary(),
        &args,
        &[FAIL_REGISTRATION],
        TempDir::new(),
    );
    let status = x.wait_exit(BOOT_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(status.code(), Some(1), "stderr:\n{}", x.stderr());
    assert!(
        x.stderr().contains("KVM_SET_USER_MEMORY_REGION"),
        "stderr:\n{}",
        x.stderr()
    );
    // The guest never ran.
    assert!(x.lines_with("PROBE-BOOT-OK").is_empty(), "{:?}", x.lines);
}

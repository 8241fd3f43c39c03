//! Bad command lines and configurations: exit status 1 and a message naming the problem.

use std::time::Duration;

use serde_json::json;
use xenia_integration_tests::{probe, run_to_exit, TempDir};

const TIMEOUT: Duration = Duration::from_secs(30);

fn run_config(text: &str) -> (Option<i32>, String) {
    let dir = TempDir::new();
    let path = dir.write("config.json", text);
    let args = vec![
        "--no-api".to_owned(),
        "--config-file".to_owned(),
        path.to_string_lossy().into_owned(),
    ];
    let (status, stderr) = run_to_exit(&args, TIMEOUT);
    (status.code(), stderr)
}

fn assert_refused(config: serde_json::Value, needles: &[&str]) {
    let (code, stderr) = run_config(&config.to_string());
    assert_eq!(code, Some(1), "stderr:\n{stderr}");
    for n in needles {
        assert!(stderr.contains(n), "`{n}` not in stderr:\n{stderr}");
    }
}

fn machine(vcpus: u32, mem: u32) -> serde_json::Value {
    json!({
        "boot-source": {"kernel_image_path": probe().pvh},
        "machine-config": {"vcpu_count": vcpus, "mem_size_mib": mem}
    })
}

#[test]
fn missing_kernel_file() {
    assert_refused(
        json!({"boot-source": {"kernel_image_path": "/nonexistent/vmlinux"}}),
        &["kernel_image_path", "/nonexistent/vmlinux"],
    );
}

#[test]
fn a_file_that_is_not_a_kernel() {
    let dir = TempDir::new();
    let junk = dir.write("junk.bin", vec![0x5a; 8192]);
    assert_refused(
        json!({"boot-source": {"kernel_image_path": junk}}),
        &["kernel_image_path", "neither an ELF"],
    );
}

#[test]
fn vcpu_count_out_of_range() {
    assert_refused(machine(0, 64), &["vcpu_count", "0"]);
    assert_refused(machine(33, 64), &["vcpu_count", "33"]);
}

#[test]
fn zero_memory() {
    assert_refused(machine(1, 0), &["mem_size_mib", "0"]);
}

#[test]
fn unknown_field() {
    assert_refused(
        json!({"boot-source": {"kernel_image_path": "/k", "kernel_flavour": "x"}}),
        &["unknown field `kernel_flavour`"],
    );
}

#[test]
fn malformed_json() {
    let (code, stderr) = run_config("{\"boot-source\": ");
    assert_eq!(code, Some(1));
    assert!(stderr.contains("invalid configuration"), "{stderr}");
}

#[test]
fn bad_flags_and_missing_config() {
    let cases: [(&[&str], &str); 4] = [
        (&["--bogus"], "unknown argument `--bogus`"),
        (&["--level", "loud"], "--level"),
        (
            &["--config-file", "/nonexistent/config.json"],
            "/nonexistent/config.json",
        ),
        (&["--no-api"], "--no-api needs --config-file"),
    ];
    for (args, needle) in cases {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let (status, stderr) = run_to_exit(&args, TIMEOUT);
        assert_eq!(status.code(), Some(1), "{args:?}: {stderr}");
        assert!(
            stderr.contains(needle),
            "{args:?}: `{needle}` not in {stderr}"
        );
    }
}

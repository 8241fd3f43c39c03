//! Command-line flags Firecracker accepts and its launchers and clients pass: each accepted
//! with its effect, or refused with a message naming the missing feature.

use std::time::Duration;

use xenia_integration_tests::{run_to_exit, TempDir, Xenia, BOOT_TIMEOUT};

const TIMEOUT: Duration = Duration::from_secs(30);

fn refused(args: &[&str], needles: &[&str]) {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let (status, stderr) = run_to_exit(&args, TIMEOUT);
    assert_eq!(status.code(), Some(1), "stderr:\n{stderr}");
    for n in needles {
        assert!(stderr.contains(n), "`{n}` not in stderr:\n{stderr}");
    }
}

/// Microseconds on `clock`.
fn clock_us(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime(2) writes one timespec that lives on this stack frame.
    let rc = unsafe { libc::clock_gettime(clock, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime");
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1_000
}

#[test]
fn enable_pci_is_refused_naming_pci() {
    let dir = TempDir::new();
    let sock = dir.path().join("api.sock");
    refused(
        &["--api-sock", &sock.to_string_lossy(), "--enable-pci"],
        &["--enable-pci", "PCI transport"],
    );
    assert!(!sock.exists(), "nothing should have been started");
}

#[test]
fn metadata_loads_the_mmds_data_store() {
    let dir = TempDir::new();
    let data = dir.write(
        "metadata.json",
        r#"{"latest": {"meta-data": {"id": "i-1"}}}"#,
    );
    let (_x, api) = Xenia::with_api(&["--metadata", &data.to_string_lossy()]);
    let got = api.expect("GET", "/mmds", "", 200).json();
    assert_eq!(
        got,
        serde_json::json!({"latest": {"meta-data": {"id": "i-1"}}})
    );
    let bad = dir.write("bad.json", "{ not json");
    let sock = dir.path().join("api2.sock");
    refused(
        &[
            "--api-sock",
            &sock.to_string_lossy(),
            "--metadata",
            &bad.to_string_lossy(),
        ],
        &["--metadata", "not valid JSON"],
    );
}

#[test]
fn mmds_size_limit_is_accepted_and_checked() {
    let (_x, api) = Xenia::with_api(&["--mmds-size-limit", "18"]);
    api.expect("PUT", "/mmds", r#"{"k": "0123456789"}"#, 204);
    let over = api.expect("PUT", "/mmds", r#"{"k": "0123456789a"}"#, 413);
    assert_eq!(over.fault(), "The MMDS patch request doesn't fit.");
    refused(
        &["--mmds-size-limit", "0"],
        &["--mmds-size-limit", "positive"],
    );
    refused(&["--mmds-size-limit", "lots"], &["--mmds-size-limit"]);
}

#[test]
fn launcher_start_times_become_the_startup_metrics() {
    let dir = TempDir::new();
    let metrics = dir.path().join("metrics.json");
    // As a jailer would pass them: it started 1.5 s ago, its own CPU clock read 0 then, and
    // its parent had used 0.7 s of CPU before forking.
    let start = clock_us(libc::CLOCK_MONOTONIC) - 1_500_000;
    let start_arg = start.to_string();
    let (mut x, api) = Xenia::with_api(&[
        "--metrics-path",
        &metrics.to_string_lossy(),
        "--start-time-us",
        &start_arg,
        "--start-time-cpu-us",
        "0",
        "--parent-cpu-time-us",
        "700000",
    ]);
    // An answer from the VMM thread proves start-up is over (the socket alone accepts from
    // bind on, before the times are recorded).
    api.expect("GET", "/", "", 200);
    let ready_bound = clock_us(libc::CLOCK_MONOTONIC) - start;
    api.expect("PUT", "/actions", r#"{"action_type": "FlushMetrics"}"#, 204);
    let text = std::fs::read_to_string(&metrics).unwrap();
    let line: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    let wall = line["api_server"]["process_startup_time_us"]
        .as_u64()
        .unwrap();
    let cpu = line["api_server"]["process_startup_time_cpu_us"]
        .as_u64()
        .unwrap();
    // Measured from the launcher's start to API readiness: past 1.5 s, and before the
    // first answer came back.
    assert!(
        (1_500_000..=ready_bound).contains(&wall),
        "{wall} not in 1.5 s ..= {ready_bound} us"
    );
    // The parent's 0.7 s plus what xenia itself used (well under the wall time).
    assert!((700_000..700_000 + ready_bound).contains(&cpu), "{cpu}");
    x.signal(libc::SIGTERM);
    assert_eq!(x.wait_exit(BOOT_TIMEOUT).unwrap().code(), Some(0));
}

#[test]
fn without_launcher_times_the_startup_metrics_stay_zero() {
    let dir = TempDir::new();
    let metrics = dir.path().join("metrics.json");
    let (_x, api) = Xenia::with_api(&["--metrics-path", &metrics.to_string_lossy()]);
    api.expect("PUT", "/actions", r#"{"action_type": "FlushMetrics"}"#, 204);
    let text = std::fs::read_to_string(&metrics).unwrap();
    let line: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(line["api_server"]["process_startup_time_us"], 0, "{line}");
    assert_eq!(
        line["api_server"]["process_startup_time_cpu_us"], 0,
        "{line}"
    );
}

#[test]
fn module_keeps_only_that_modules_log_lines() {
    let (mut x, api) = Xenia::with_api(&[
        "--level",
        "Info",
        "--show-log-origin",
        "--module",
        "vmm::rpc",
    ]);
    // Each request logs an Info line from vmm::rpc; start-up logged lines from elsewhere
    // (the API server's "listening" line comes from the binary) that must not appear.
    for _ in 0..3 {
        api.expect("GET", "/machine-config", "", 200);
    }
    x.signal(libc::SIGTERM);
    assert_eq!(x.wait_exit(BOOT_TIMEOUT).unwrap().code(), Some(0));
    let stderr = x.stderr();
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(lines.len() >= 3, "stderr:\n{stderr}");
    for line in &lines {
        assert!(
            line.contains(":vmm/src/rpc/"),
            "line from another module: {line}"
        );
    }
    assert!(
        !stderr.contains("API server listening"),
        "stderr:\n{stderr}"
    );
}

//! The serial console's host side: a rate limit on its output.

use xenia_integration_tests::{boot_config, probe, probe_args, TempDir, Xenia, BOOT_TIMEOUT};

#[test]
fn console_output_beyond_the_rate_limit_is_dropped_and_counted() {
    let dir = TempDir::new();
    let console = dir.path().join("console.log");
    let metrics = dir.path().join("metrics.json");
    // 300 bytes, refilled over an hour: the boot marker fits, the ticks do not.
    let mut config = boot_config(&probe().pvh, &probe_args("tick:30"), 1, 128);
    config["serial"] = serde_json::json!({
        "serial_out_path": console,
        "rate_limiter": {"size": 300, "refill_time": 3_600_000}
    });
    let metrics_arg = metrics.to_string_lossy().into_owned();
    let mut x = Xenia::start(&config, &["--metrics-path", &metrics_arg]);
    // The guest is never slowed or stopped by the limit: it finishes and resets.
    let status = x.wait_exit(BOOT_TIMEOUT).expect("exit");
    assert_eq!(status.code(), Some(0), "stderr:\n{}", x.stderr());

    let text = std::fs::read_to_string(&console).expect("console file");
    assert!(text.starts_with("PROBE-BOOT-OK"), "{text}");
    assert!(
        text.len() <= 300,
        "{} bytes passed a 300-byte budget",
        text.len()
    );
    assert!(
        !text.contains("PROBE-DONE"),
        "the end of the output should have been dropped"
    );

    let last = std::fs::read_to_string(&metrics).expect("metrics file");
    let line: serde_json::Value =
        serde_json::from_str(last.lines().last().expect("a metrics line")).expect("json");
    let dropped = line["uart"]["dropped_bytes"].as_u64().unwrap_or(0);
    let passed = line["uart"]["bytes_out"].as_u64().unwrap_or(0);
    assert_eq!(passed, text.len() as u64, "{line}");
    assert!(dropped > 0, "{line}");
    // Everything the guest wrote was either passed or counted: 30 lines `PROBE tick n=K`
    // alone are over 400 bytes.
    assert!(passed + dropped > 30 * 15, "{line}");
}

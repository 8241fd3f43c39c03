//! Pause and resume through `PATCH /vm`, and metrics flushed through the API.

use std::time::Duration;

use xenia_integration_tests::api::ApiClient;
use xenia_integration_tests::{probe, probe_args, Xenia, BOOT_TIMEOUT};

fn start(api: &ApiClient, cmds: &str) {
    let body = serde_json::json!({"kernel_image_path": probe().pvh, "boot_args": probe_args(cmds)});
    api.expect("PUT", "/boot-source", &body.to_string(), 204);
    api.start_instance(204);
}

fn state(api: &ApiClient) -> String {
    api.expect("GET", "/", "", 200).json()["state"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

fn ticks(lines: &[String]) -> usize {
    lines
        .iter()
        .filter(|l| l.starts_with("PROBE tick n="))
        .count()
}

#[test]
fn pause_stops_the_guest_and_resume_restarts_it() {
    let (mut x, api) = Xenia::with_api(&[]);
    start(&api, "tick:0");
    x.wait_for_line("PROBE tick n=3", BOOT_TIMEOUT).unwrap();
    assert_eq!(state(&api), "Running");

    api.expect("PATCH", "/vm", r#"{"state": "Paused"}"#, 204);
    assert_eq!(state(&api), "Paused");
    // Lines the guest wrote before the pause may still be in the pipe: let them arrive,
    // then a paused guest (ticking every 100 ms when running) must stay silent.
    let _in_flight = x.lines_within(Duration::from_millis(500));
    let while_paused = x.lines_within(Duration::from_millis(1200));
    assert_eq!(
        ticks(&while_paused),
        0,
        "ticks while paused: {while_paused:?}"
    );
    // Pausing twice is harmless.
    api.expect("PATCH", "/vm", r#"{"state": "Paused"}"#, 204);

    api.expect("PATCH", "/vm", r#"{"state": "Resumed"}"#, 204);
    assert_eq!(state(&api), "Running");
    let after = x.lines_within(Duration::from_millis(1200));
    assert!(ticks(&after) >= 2, "no ticks after resume: {after:?}");
    // The probe keeps counting where it stopped: the guest was paused, not restarted.
    assert!(
        x.lines_with("PROBE-BOOT-OK").len() == 1,
        "the guest booted twice: {:?}",
        x.lines
    );

    api.expect("PATCH", "/vm", r#"{"state": "Paused"}"#, 204);
    x.signal(libc::SIGTERM);
    assert_eq!(x.wait_exit(BOOT_TIMEOUT).unwrap().code(), Some(0));
}

#[test]
fn flush_metrics_writes_a_line_with_api_counts() {
    let (mut x, api) = Xenia::with_api(&[]);
    let path = x.dir().join("metrics.json");
    let body = serde_json::json!({"metrics_path": path}).to_string();
    api.expect("PUT", "/metrics", &body, 204);
    for _ in 0..3 {
        api.expect("GET", "/", "", 200);
    }
    api.expect("GET", "/nope", "", 400);
    start(&api, "idle");
    x.wait_for_line("PROBE idle ok", BOOT_TIMEOUT).unwrap();
    api.expect("PUT", "/actions", r#"{"action_type": "FlushMetrics"}"#, 204);
    let text = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert_eq!(lines.len(), 1, "{text}");
    let m = &lines[0];
    assert_eq!(m["api_server"]["GET /"]["count"], 3, "{m}");
    assert_eq!(m["api_server"]["GET /"]["errors"], 0, "{m}");
    assert_eq!(m["api_server"]["other"]["errors"], 1, "{m}");
    assert_eq!(m["api_server"]["PUT /metrics"]["count"], 1, "{m}");
    assert!(
        m["api_server"]["PUT /actions"]["count"].as_u64() >= Some(1),
        "{m}"
    );
    assert!(m["vcpu"]["exit_io_out"].as_u64() > Some(0), "{m}");
    assert!(m["uart"]["bytes_out"].as_u64() > Some(0), "{m}");
    assert!(m["utc_timestamp_ms"].as_u64() > Some(0), "{m}");

    // One more line at exit.
    x.signal(libc::SIGTERM);
    assert_eq!(x.wait_exit(BOOT_TIMEOUT).unwrap().code(), Some(0));
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(text.lines().count(), 2, "{text}");
}

#[test]
fn metrics_path_flag_flushes_at_exit() {
    let dir = xenia_integration_tests::TempDir::new();
    let path = dir.path().join("m.json");
    let config = xenia_integration_tests::boot_config(&probe().pvh, &probe_args("cmdline"), 1, 64);
    let file = dir.write("vm.json", config.to_string());
    let args = vec![
        "--no-api".to_owned(),
        "--config-file".to_owned(),
        file.to_string_lossy().into_owned(),
        "--metrics-path".to_owned(),
        path.to_string_lossy().into_owned(),
    ];
    let mut x = Xenia::spawn(&args, dir);
    x.wait_for_line("PROBE-DONE", BOOT_TIMEOUT).unwrap();
    assert_eq!(x.wait_exit(BOOT_TIMEOUT).unwrap().code(), Some(0));
    let text = std::fs::read_to_string(&path).unwrap();
    let last: serde_json::Value =
        serde_json::from_str(text.lines().last().expect("a metrics line")).unwrap();
    assert!(last["uart"]["bytes_out"].as_u64() > Some(0), "{last}");
}

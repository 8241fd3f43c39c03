//! virtio-balloon: the probe touches a 64 MiB region, the host asks for 48 MiB with
//! `PATCH /balloon`, the probe inflates and xenia's resident memory (smaps_rollup) falls by
//! about that much; statistics arrive at the configured interval; deflating gives the pages
//! back (they read as zeroes: they were released); hostile inflate chains are refused and
//! counted while the device keeps working; the API's balloon endpoints answer as
//! Firecracker's.

// Helpers outside #[test] functions fail the test with the console attached.
#![allow(clippy::panic)]

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use xenia_integration_tests::api::ApiClient;
use xenia_integration_tests::{
    boot_config, last_metrics, probe, probe_args, TempDir, Xenia, BOOT_TIMEOUT,
};

const RUN_TIMEOUT: Duration = Duration::from_secs(120);
const MIB: u64 = 1 << 20;

/// Resident memory of `pid` in bytes, from /proc/PID/smaps_rollup.
fn rss(pid: u32) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .unwrap_or_else(|e| panic!("smaps_rollup: {e}"));
    let kb: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("Rss:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no Rss in {text}"));
    kb * 1024
}

fn field(line: &str, key: &str) -> u64 {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{key}=")))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no `{key}` in {line}"))
}

/// Starts xenia from a config file with the API up; the probe runs `cmds`.
fn start(dir: &TempDir, balloon: Value, cmds: &str, extra: &[&str]) -> (Xenia, ApiClient) {
    let mut config = boot_config(&probe().pvh, &probe_args(cmds), 1, 256);
    config["balloon"] = balloon;
    let path = dir.write("vm.json", config.to_string());
    let path = path.to_string_lossy().into_owned();
    let mut args = vec!["--config-file", path.as_str()];
    args.extend_from_slice(extra);
    let (mut x, api) = Xenia::with_api(&args);
    x.wait_for_line("PROBE-BOOT-OK", BOOT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}"));
    (x, api)
}

fn wait(x: &mut Xenia, needle: &str) -> String {
    x.wait_for_line(needle, RUN_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}"))
}

fn metrics(path: &Path) -> Value {
    last_metrics(path)["balloon"].clone()
}

#[test]
fn inflating_gives_memory_back_to_the_host_and_deflating_returns_it() {
    let dir = TempDir::new();
    let balloon = json!({"amount_mib": 0, "deflate_on_oom": true, "stats_polling_interval_s": 1});
    let metrics_path = dir.path().join("metrics.json");
    let metrics_arg = metrics_path.to_string_lossy().into_owned();
    let (mut x, api) = start(
        &dir,
        balloon,
        "balloon-serve:90:64",
        &["--metrics-path", &metrics_arg],
    );
    let ready = wait(&mut x, "PROBE balloon-ready");
    assert_eq!(field(&ready, "stats"), 1, "{ready}");
    assert_eq!(field(&ready, "target"), 0, "{ready}");
    let before = rss(x.pid());

    // 48 MiB of the 64 MiB the guest touched.
    api.expect("PATCH", "/balloon", r#"{"amount_mib": 48}"#, 204);
    let line = wait(&mut x, "PROBE balloon-inflated");
    assert_eq!(field(&line, "actual"), 48 * 256, "{line}");
    let after = rss(x.pid());
    let fell = before.saturating_sub(after);
    eprintln!(
        "balloon: RSS {} MiB -> {} MiB after inflating 48 MiB (fell {:.1} MiB)",
        before / MIB,
        after / MIB,
        fell as f64 / MIB as f64
    );
    assert!(
        fell >= 44 * MIB,
        "RSS fell by {fell} bytes only ({before} -> {after})"
    );

    let config = api.expect("GET", "/balloon", "", 200).json();
    assert_eq!(config["amount_mib"], 48, "{config}");
    assert_eq!(config["stats_polling_interval_s"], 1, "{config}");

    // Statistics: the probe counts its updates in minor_faults; two new numbers arrive about
    // a second apart.
    let mut changes = Vec::new();
    let mut last = None;
    let deadline = Instant::now() + Duration::from_secs(20);
    while changes.len() < 3 && Instant::now() < deadline {
        let s = api.expect("GET", "/balloon/statistics", "", 200).json();
        let n = s["minor_faults"].as_u64();
        if n.is_some() && n != last {
            last = n;
            changes.push((Instant::now(), s));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(changes.len(), 3, "statistics did not refresh: {changes:?}");
    let gap = changes[2].0 - changes[1].0;
    assert!(
        gap >= Duration::from_millis(700),
        "statistics refreshed after {gap:?} with a 1 s interval"
    );
    let s = &changes[2].1;
    assert_eq!(
        (&s["target_mib"], &s["actual_mib"], &s["actual_pages"]),
        (&json!(48), &json!(48), &json!(48 * 256)),
        "{s}"
    );
    assert_eq!(s["free_memory"], 16 * MIB, "{s}");
    assert_eq!(
        s["total_memory"].as_u64().map(|t| t > 200 * MIB),
        Some(true)
    );

    // The interval can change; statistics cannot be switched off after boot.
    api.expect(
        "PATCH",
        "/balloon/statistics",
        r#"{"stats_polling_interval_s": 2}"#,
        204,
    );
    let f = api
        .expect(
            "PATCH",
            "/balloon/statistics",
            r#"{"stats_polling_interval_s": 0}"#,
            400,
        )
        .fault();
    assert!(f.contains("cannot be switched on or off"), "{f}");
    let f = api
        .expect("PATCH", "/balloon", r#"{"amount_mib": 257}"#, 400)
        .fault();
    assert!(f.contains("balloon.amount_mib"), "{f}");
    api.expect(
        "PUT",
        "/balloon",
        r#"{"amount_mib": 1, "deflate_on_oom": false}"#,
        400,
    );
    let f = api
        .expect("PATCH", "/balloon/hinting/start", "{}", 400)
        .fault();
    assert!(f.contains("not supported"), "{f}");

    // Deflate: every page comes back, and each reads as zero: it had been released.
    api.expect("PATCH", "/balloon", r#"{"amount_mib": 0}"#, 204);
    let line = wait(&mut x, "PROBE balloon-deflated");
    assert_eq!(field(&line, "actual"), 0, "{line}");
    assert_eq!(field(&line, "zero_pages"), 48 * 256, "{line}");

    api.expect("PUT", "/actions", r#"{"action_type": "FlushMetrics"}"#, 204);
    let m = metrics(&metrics_path);
    assert_eq!(m["pages_released"], 48 * 256, "{m}");
    assert_eq!(m["invalid_pfns"], 0, "{m}");
    assert!(m["inflate_count"].as_u64() >= Some(48), "{m}");
    assert!(m["stats_updates_count"].as_u64() >= Some(3), "{m}");
}

#[test]
fn hostile_inflate_chains_are_refused_and_counted() {
    let dir = TempDir::new();
    let balloon = json!({"amount_mib": 0, "deflate_on_oom": false});
    let metrics_path = dir.path().join("metrics.json");
    let metrics_arg = metrics_path.to_string_lossy().into_owned();
    let kinds = ["pfn-oob", "odd-len", "wo", "buf-oob", "huge-count"];
    let mut cmds: Vec<String> = kinds
        .iter()
        .map(|k| format!("balloon-hostile:{k}"))
        .collect();
    cmds.push("idle".into());
    let (mut x, api) = start(
        &dir,
        balloon,
        &cmds.join(","),
        &["--metrics-path", &metrics_arg],
    );
    for k in kinds {
        let line = wait(&mut x, "PROBE balloon-hostile");
        assert!(
            line.contains(&format!("kind={k} outcome=answered then=ok")),
            "{line}\nstderr:\n{}",
            x.stderr()
        );
    }
    wait(&mut x, "PROBE idle ok");
    // Statistics were not enabled: 400, as Firecracker answers.
    let f = api.expect("GET", "/balloon/statistics", "", 400).fault();
    assert!(f.contains("not enabled"), "{f}");
    api.expect("PUT", "/actions", r#"{"action_type": "FlushMetrics"}"#, 204);
    let m = metrics(&metrics_path);
    // Two PFNs past memory; four chains refused whole.
    assert_eq!(m["invalid_pfns"], 2, "{m}");
    assert_eq!(m["invalid_requests"], 4, "{m}");
    // One good page per kind.
    assert_eq!(m["pages_released"], kinds.len(), "{m}");
    assert_eq!(m["queue_errors"], 0, "{m}");
}

/// A snapshot taken while the probe holds 16 MiB in the balloon (and with an entropy device
/// configured) restores in a new process: the restored balloon deflates on `PATCH`, every
/// page reads zero (released before the snapshot, holes in the memory file), pages inflated
/// from the memory file read zero after deflating too, statistics keep coming, and the
/// entropy device serves the probe's next command.
#[test]
fn a_restored_balloon_and_entropy_device_keep_working() {
    let files = snapshot_files();
    let (mut x, api) = Xenia::with_api(&[]);
    api.expect("PUT", "/entropy", "{}", 204);
    api.expect(
        "PUT",
        "/balloon",
        r#"{"amount_mib": 16, "deflate_on_oom": false, "stats_polling_interval_s": 1}"#,
        204,
    );
    let boot = json!({"kernel_image_path": probe().pvh,
                      "boot_args": probe_args("balloon-serve:20:32,rng-read:65536")});
    api.expect("PUT", "/boot-source", &boot.to_string(), 204);
    api.start_instance(204);
    let line = wait(&mut x, "PROBE balloon-inflated");
    assert_eq!(field(&line, "actual"), 16 * 256, "{line}");
    // Let a statistics round trip happen, so the device holds the guest's buffer.
    std::thread::sleep(Duration::from_millis(1500));
    api.expect("PATCH", "/vm", r#"{"state": "Paused"}"#, 204);
    api.expect("PUT", "/snapshot/create", &files.0.to_string(), 204);
    drop(x);

    let (mut y, api2) = Xenia::with_api(&[]);
    api2.expect("PUT", "/snapshot/load", &files.1.to_string(), 204);
    let config = api2.expect("GET", "/balloon", "", 200).json();
    assert_eq!(config["amount_mib"], 16, "{config}");
    let s = api2.expect("GET", "/balloon/statistics", "", 200).json();
    assert_eq!(
        (&s["actual_mib"], &s["target_mib"]),
        (&json!(16), &json!(16)),
        "{s}"
    );
    api2.expect("PATCH", "/balloon", r#"{"amount_mib": 0}"#, 204);
    let line = wait(&mut y, "PROBE balloon-deflated");
    assert_eq!(field(&line, "actual"), 0, "{line}");
    assert_eq!(field(&line, "zero_pages"), 16 * 256, "{line}");
    // Inflating again now gives back pages mapped from the memory file, 8 MiB of them still
    // holding the probe's pattern there: after deflating they read zero too, not the file.
    api2.expect("PATCH", "/balloon", r#"{"amount_mib": 24}"#, 204);
    let line = wait(&mut y, "PROBE balloon-inflated");
    assert_eq!(field(&line, "actual"), 24 * 256, "{line}");
    api2.expect("PATCH", "/balloon", r#"{"amount_mib": 0}"#, 204);
    let line = wait(&mut y, "PROBE balloon-deflated");
    assert_eq!(field(&line, "zero_pages"), (16 + 24) * 256, "{line}");
    let before = api2.expect("GET", "/balloon/statistics", "", 200).json()["minor_faults"].as_u64();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now =
            api2.expect("GET", "/balloon/statistics", "", 200).json()["minor_faults"].as_u64();
        if now > before {
            break;
        }
        assert!(Instant::now() < deadline, "no statistics after the restore");
        std::thread::sleep(Duration::from_millis(100));
    }
    let rng = wait(&mut y, "PROBE rng-read");
    assert!(rng.contains(" ok ") && rng.contains("bytes=65536"), "{rng}");
}

/// The bodies of `PUT /snapshot/create` and `PUT /snapshot/load` for files in a fresh
/// directory (removed with the returned guard).
fn snapshot_files() -> (Value, Value, TempDir) {
    let dir = TempDir::new();
    let state = dir.path().join("vm.state");
    let mem = dir.path().join("vm.mem");
    (
        json!({"snapshot_path": state, "mem_file_path": mem, "snapshot_type": "Full"}),
        json!({"snapshot_path": state, "mem_backend": {"backend_type": "File", "backend_path": mem},
               "resume_vm": true}),
        dir,
    )
}

//! Snapshots of the probe guest: create on a paused VM, kill the process, load in a new one;
//! the guest's memory pattern and tick counter carry on; bad input is refused by name and
//! leaves the process usable.

mod snapshot_common;

use std::os::unix::fs::MetadataExt;
use std::time::Duration;

use snapshot_common::*;
use xenia_integration_tests::{xenia_binary, Xenia, BOOT_TIMEOUT};

#[test]
fn a_full_snapshot_restores_in_a_new_process_and_carries_on() {
    let (mut x, api) = Xenia::with_api(&[]);
    boot(&api, "memtick:4", 128, false);
    x.wait_for_line("PROBE memtick n=3 ", BOOT_TIMEOUT).unwrap();
    let files = SnapshotFiles::new();
    pause_and_create(&mut x, &api, &files, "Full");
    let last = last_tick(&x).expect("ticks before the snapshot");
    drop(x);

    let (mut y, api2) = Xenia::with_api(&[]);
    let metrics = y.dir().join("metrics.json");
    api2.expect(
        "PUT",
        "/metrics",
        &serde_json::json!({"metrics_path": metrics}).to_string(),
        204,
    );
    // The deprecated memory field works and is answered with a Deprecation header.
    let body = serde_json::json!({"snapshot_path": files.state, "mem_file_path": files.mem,
                                  "resume_vm": true});
    let r = api2.expect("PUT", "/snapshot/load", &body.to_string(), 204);
    assert_eq!(r.header("deprecation"), Some("true"));
    let first = next_tick(&mut y);
    // The counter goes on from where it stopped (one more if a line was cut by the pause),
    // the memory is what the ticks imply, and nothing rebooted.
    assert!(
        first.n == last.n + 1 || first.n == last.n + 2,
        "last before {last:?}, first after {first:?}"
    );
    assert_eq!(first.sum, expected_sum(first.n, first.pages), "{first:?}");
    assert_eq!(first.bad, 0);
    let second = next_tick(&mut y);
    assert_eq!(second.n, first.n + 1);
    assert!(y.lines_with("PROBE-BOOT-OK").is_empty(), "{:?}", y.lines);

    let state = api2.expect("GET", "/", "", 200).json();
    assert_eq!(state["state"], "Running");
    let config = api2.expect("GET", "/vm/config", "", 200).json();
    assert_eq!(config["machine-config"]["mem_size_mib"], 128, "{config}");
    assert!(config["boot-source"]["boot_args"]
        .as_str()
        .unwrap_or_default()
        .contains("memtick:4"));

    api2.expect("PUT", "/actions", r#"{"action_type": "FlushMetrics"}"#, 204);
    let text = std::fs::read_to_string(&metrics).unwrap();
    let line: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    assert!(
        line["latencies_us"]["load_snapshot"].as_u64() > Some(0),
        "{line}"
    );
    // A loaded VM can be paused and snapshotted again.
    let again = SnapshotFiles::new();
    pause_and_create(&mut y, &api2, &again, "Full");
}

#[test]
fn a_restored_vm_starts_paused_unless_resume_vm() {
    let (mut x, api) = Xenia::with_api(&[]);
    boot(&api, "memtick:1", 64, false);
    x.wait_for_line("PROBE memtick n=2 ", BOOT_TIMEOUT).unwrap();
    let files = SnapshotFiles::new();
    pause_and_create(&mut x, &api, &files, "Full");
    drop(x);

    // The CLI describes the state file after checking it, and names the format version.
    let out = std::process::Command::new(xenia_binary())
        .arg("--describe-snapshot")
        .arg(&files.state)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let desc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(desc["mem_size_mib"], 64, "{desc}");
    assert_eq!(desc["snapshot_type"], "Full");
    let out = std::process::Command::new(xenia_binary())
        .arg("--snapshot-version")
        .output()
        .unwrap();
    let version = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert_eq!(desc["format_version"].to_string(), version);
    let out = std::process::Command::new(xenia_binary())
        .arg("--describe-snapshot")
        .arg(&files.mem)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));

    let (mut y, api2) = Xenia::with_api(&[]);
    api2.expect("PUT", "/snapshot/load", &files.load_body(false), 204);
    assert_eq!(api2.expect("GET", "/", "", 200).json()["state"], "Paused");
    let quiet = y.lines_within(Duration::from_millis(600));
    assert!(
        !quiet.iter().any(|l| l.starts_with("PROBE memtick n=")),
        "ticks while paused: {quiet:?}"
    );
    api2.expect("PATCH", "/vm", r#"{"state": "Resumed"}"#, 204);
    let t = next_tick(&mut y);
    assert_eq!((t.bad, t.sum), (0, expected_sum(t.n, t.pages)));
}

#[test]
fn a_full_memory_file_is_sparse() {
    let (mut x, api) = Xenia::with_api(&[]);
    boot(&api, "touch:48,memtick:1", 1024, false);
    x.wait_for_line("PROBE memtick n=1 ", BOOT_TIMEOUT).unwrap();
    let files = SnapshotFiles::new();
    pause_and_create(&mut x, &api, &files, "Full");
    let meta = std::fs::metadata(&files.mem).unwrap();
    assert_eq!(meta.len(), 1024 << 20);
    let allocated = meta.blocks() * 512;
    // 48 MiB touched, plus the probe image, its page tables and the memtick page.
    assert!(
        (48 << 20..=56 << 20).contains(&allocated),
        "{} MiB allocated",
        allocated >> 20
    );
    drop(x);
    let (mut y, api2) = Xenia::with_api(&[]);
    // With kvmclock advanced by the wall-clock time since the snapshot (KVM_CLOCK_REALTIME).
    let body = serde_json::json!({"snapshot_path": files.state,
        "mem_backend": {"backend_type": "File", "backend_path": files.mem},
        "resume_vm": true, "clock_realtime": true});
    api2.expect("PUT", "/snapshot/load", &body.to_string(), 204);
    let t = next_tick(&mut y);
    assert_eq!(t.bad, 0);
}

#[test]
fn bad_snapshots_are_refused_by_name_and_leave_the_process_usable() {
    let (mut x, api) = Xenia::with_api(&[]);
    boot(&api, "memtick:1", 64, false);
    x.wait_for_line("PROBE memtick n=1 ", BOOT_TIMEOUT).unwrap();
    // Create on a running VM.
    let files = SnapshotFiles::new();
    let r = api.expect("PUT", "/snapshot/create", &files.create_body("Full"), 400);
    assert!(r.fault().contains("pause it first"), "{}", r.fault());
    // Diff without dirty tracking.
    api.expect("PATCH", "/vm", r#"{"state": "Paused"}"#, 204);
    let r = api.expect("PUT", "/snapshot/create", &files.create_body("Diff"), 400);
    assert!(r.fault().contains("track_dirty_pages"), "{}", r.fault());
    // The removed `version` field.
    let r = api.expect(
        "PUT",
        "/snapshot/create",
        r#"{"snapshot_path": "/tmp/s", "mem_file_path": "/tmp/m", "version": "1.0.0"}"#,
        400,
    );
    assert!(r.fault().contains("version"), "{}", r.fault());
    api.expect("PUT", "/snapshot/create", &files.create_body("Full"), 204);
    // Load on a started process.
    let r = api.expect("PUT", "/snapshot/load", &files.load_body(false), 400);
    assert!(r.fault().contains("after starting"), "{}", r.fault());
    drop(x);

    let good = std::fs::read(&files.state).unwrap();
    let dir = xenia_integration_tests::TempDir::new();
    let (mut y, api2) = Xenia::with_api(&[]);
    let check = |name: &str, state: Vec<u8>, mem: Option<&std::path::Path>, needle: &str| {
        let state_path = dir.write(&format!("{name}.state"), state);
        let body = serde_json::json!({"snapshot_path": state_path,
            "mem_backend": {"backend_type": "File", "backend_path": mem.unwrap_or(&files.mem)}});
        let r = api2.expect("PUT", "/snapshot/load", &body.to_string(), 400);
        assert!(
            r.fault().contains(needle),
            "{name}: `{}` lacks `{needle}`",
            r.fault()
        );
        assert_eq!(
            api2.expect("GET", "/", "", 200).json()["state"],
            "Not started",
            "{name}"
        );
    };
    check(
        "truncated",
        good[..good.len() / 2].to_vec(),
        None,
        "truncated",
    );
    check("header-only", good[..20].to_vec(), None, "truncated");
    let mut flipped = good.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0x01;
    check("flipped", flipped, None, "corrupted");
    let mut version = good.clone();
    version[8..12].copy_from_slice(&999u32.to_le_bytes());
    check("version", version, None, "format version 999");
    let mut arch = good.clone();
    arch[12..16].copy_from_slice(&2u32.to_le_bytes());
    check("arch", arch, None, "aarch64");
    check(
        "garbage",
        b"not a snapshot at all, just text".to_vec(),
        None,
        "magic",
    );
    let short = dir.write("short.mem", vec![0u8; 1 << 20]);
    check("short-memory", good.clone(), Some(&short), "shorter");
    let missing = dir.path().join("missing.mem");
    check(
        "missing-memory",
        good.clone(),
        Some(&missing),
        "cannot open",
    );

    // Nothing was left half-restored: the same process loads the good snapshot.
    api2.expect("PUT", "/snapshot/load", &files.load_body(true), 204);
    let t = next_tick(&mut y);
    assert_eq!(t.bad, 0);
}

#[test]
fn load_after_configuring_a_resource_is_refused() {
    let (_x, api) = Xenia::with_api(&[]);
    // Logger and metrics may come first.
    api.expect("PUT", "/logger", r#"{"level": "Warning"}"#, 204);
    api.expect(
        "PUT",
        "/machine-config",
        r#"{"vcpu_count": 1, "mem_size_mib": 64}"#,
        204,
    );
    let body = r#"{"snapshot_path": "/nonexistent/s",
                   "mem_backend": {"backend_type": "File", "backend_path": "/nonexistent/m"}}"#;
    let r = api.expect("PUT", "/snapshot/load", body, 400);
    assert!(r.fault().contains("fresh"), "{}", r.fault());
    let r = api.expect(
        "PUT",
        "/snapshot/load",
        r#"{"snapshot_path": "/s", "mem_file_path": "/m",
            "mem_backend": {"backend_type": "File", "backend_path": "/m"}}"#,
        400,
    );
    assert!(r.fault().contains("exactly one"), "{}", r.fault());
}

#[test]
fn every_restore_gets_a_new_vm_generation_id() {
    let (mut x, api) = Xenia::with_api(&[]);
    boot(&api, "acpi,tick:15,acpi", 64, false);
    x.wait_for_line("PROBE tick n=2", BOOT_TIMEOUT).unwrap();
    let files = SnapshotFiles::new();
    pause_and_create(&mut x, &api, &files, "Full");
    let genid = |line: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix("vmgenid="))
            .unwrap_or_default()
            .to_owned()
    };
    let booted = genid(
        x.lines_with("PROBE acpi ok")
            .first()
            .copied()
            .unwrap_or_default(),
    );
    assert_eq!(booted.len(), 32, "{:?}", x.lines);
    drop(x);
    let mut seen = vec![booted.clone()];
    // Two clones of one snapshot: each sees an id of its own, none the snapshot's.
    for _ in 0..2 {
        let (mut y, api2) = Xenia::with_api(&[]);
        api2.expect("PUT", "/snapshot/load", &files.load_body(true), 204);
        let line = y.wait_for_line("PROBE acpi ok", BOOT_TIMEOUT).unwrap();
        let id = genid(&line);
        assert_eq!(id.len(), 32, "{line}");
        assert!(!seen.contains(&id), "id {id} seen before: {seen:?}");
        seen.push(id);
    }
}

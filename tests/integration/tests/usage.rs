//! Usage metering (`GET /usage`, the `usage` object of metrics lines, the final record):
//! CPU time per vCPU against what the guest burned and what /proc says, paused time not
//! billed, drive and network counters against what the probe did, resident memory against
//! what it touched, and a final record on every exit path.

// Helpers outside #[test] functions fail the test with the console attached.
#![allow(clippy::panic)]

mod block_common;
mod net_common;
mod snapshot_common;

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use xenia_integration_tests::api::ApiClient;
use xenia_integration_tests::{boot_config, probe, probe_args, TempDir, Xenia, BOOT_TIMEOUT};

const MIB: u64 = 1 << 20;

fn usage(api: &ApiClient) -> Value {
    api.expect("GET", "/usage", "", 200).json()
}

fn u64_at(v: &Value, path: &[&str]) -> u64 {
    let mut cur = v;
    for k in path {
        cur = &cur[*k];
    }
    cur.as_u64()
        .unwrap_or_else(|| panic!("no integer at {path:?} in {v}"))
}

fn vcpu_ns(u: &Value, index: usize) -> u64 {
    u["counters"]["vcpus"][index]["cpu_total_ns"]
        .as_u64()
        .unwrap_or_else(|| panic!("no vCPU {index} in {u}"))
}

/// The scheduler's run time of xenia's thread named `name`, from /proc (schedstat, ns).
fn thread_run_ns(pid: u32, name: &str) -> u64 {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("task dir");
    for t in tasks.flatten() {
        let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        if comm.trim_end() == name {
            let stat = std::fs::read_to_string(t.path().join("schedstat")).expect("schedstat");
            return stat
                .split_whitespace()
                .next()
                .and_then(|v| v.parse().ok())
                .expect("schedstat field");
        }
    }
    panic!("no thread `{name}` in process {pid}");
}

/// Every metrics line of `path` that carries a usage record.
fn usage_lines(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str::<Value>(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .map(|v| v["usage"].clone())
        .collect()
}

/// Every counter (all numbers under `counters` except the gauges) only grows from one
/// record to the next.
fn assert_monotonic(records: &[Value]) {
    fn walk(path: &str, a: &Value, b: &Value) {
        match (a, b) {
            (Value::Object(x), Value::Object(y)) => {
                for (k, va) in x {
                    if k == "resident_bytes" || k == "configured_mib" {
                        continue;
                    }
                    let vb = y.get(k).unwrap_or_else(|| panic!("{path}.{k} disappeared"));
                    walk(&format!("{path}.{k}"), va, vb);
                }
            }
            (Value::Array(x), Value::Array(y)) => {
                assert!(y.len() >= x.len(), "{path} shrank");
                for (i, (va, vb)) in x.iter().zip(y).enumerate() {
                    walk(&format!("{path}[{i}]"), va, vb);
                }
            }
            (Value::Number(x), Value::Number(y)) => {
                assert!(y.as_f64() >= x.as_f64(), "{path} went down: {x} -> {y}");
            }
            _ => {}
        }
    }
    for pair in records.windows(2) {
        if pair[0]["counters"].is_null() {
            continue;
        }
        walk("counters", &pair[0]["counters"], &pair[1]["counters"]);
    }
}

fn final_record(path: &Path) -> Value {
    let lines = usage_lines(path);
    let last = lines.last().unwrap_or_else(|| panic!("no metrics line"));
    assert_eq!(last["final"], true, "{last}");
    // Only the last line is final.
    assert!(
        lines[..lines.len() - 1].iter().all(|l| l["final"] == false),
        "{lines:?}"
    );
    last.clone()
}

fn start_with_api(api: &ApiClient, metrics: &Path, config: &Value) {
    let m = json!({"metrics_path": metrics, "properties": {"tenant": "acme"}});
    api.expect("PUT", "/metrics", &m.to_string(), 204);
    api.expect(
        "PUT",
        "/boot-source",
        &config["boot-source"].to_string(),
        204,
    );
    api.expect(
        "PUT",
        "/machine-config",
        &config["machine-config"].to_string(),
        204,
    );
    let before = usage(api);
    assert_eq!(before["state"], "Not started", "{before}");
    assert!(before["counters"].is_null(), "{before}");
    api.start_instance(204);
}

#[test]
fn cpu_time_goes_to_the_burning_vcpu_and_paused_time_is_not_billed() {
    const BURN_MS: u64 = 4000;
    let (mut x, api) = Xenia::with_api(&[]);
    let metrics = x.dir().join("metrics.json");
    let config = boot_config(
        &probe().pvh,
        &probe_args(&format!("burn:{BURN_MS},idle")),
        2,
        128,
    );
    start_with_api(&api, &metrics, &config);
    x.wait_for_line("PROBE-BOOT-OK", BOOT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}"));

    // Pause while vCPU 0 burns: the paused wall time grows, its CPU time does not.
    let running = usage(&api);
    let flush = r#"{"action_type": "FlushMetrics"}"#;
    api.expect("PUT", "/actions", flush, 204);
    api.expect("PATCH", "/vm", r#"{"state": "Paused"}"#, 204);
    let a = usage(&api);
    // The pause itself is what is measured: nothing to wait on but time.
    std::thread::sleep(Duration::from_millis(1500));
    let b = usage(&api);
    api.expect("PUT", "/actions", flush, 204);
    api.expect("PATCH", "/vm", r#"{"state": "Resumed"}"#, 204);
    assert_eq!(a["state"], "Paused");
    let paused_ms = u64_at(&b, &["counters", "wall", "paused_ms"])
        - u64_at(&a, &["counters", "wall", "paused_ms"]);
    assert!(paused_ms >= 1400, "paused {paused_ms} ms: {a}\n{b}");
    let running_during_pause = u64_at(&b, &["counters", "wall", "running_ms"])
        - u64_at(&a, &["counters", "wall", "running_ms"]);
    assert!(running_during_pause <= 50, "{a}\n{b}");
    let cpu_during_pause = vcpu_ns(&b, 0) - vcpu_ns(&a, 0);
    assert!(
        cpu_during_pause < 50_000_000,
        "vCPU 0 accrued {cpu_during_pause} ns while paused"
    );
    assert!(vcpu_ns(&a, 0) >= vcpu_ns(&running, 0));

    let done = x
        .wait_for_line("PROBE burn ok", BOOT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}"));
    let before = thread_run_ns(x.pid(), "vcpu 0");
    let u = usage(&api);
    let after = thread_run_ns(x.pid(), "vcpu 0");
    let (burner, idle) = (vcpu_ns(&u, 0), vcpu_ns(&u, 1));
    let wall_ns = u64_at(&u, &["counters", "wall", "running_ms"]) * 1_000_000;
    eprintln!(
        "{done}\nvCPU 0 {burner} ns, vCPU 1 {idle} ns, running {wall_ns} ns, /proc {before}..{after}; {u}"
    );
    // Exactly what the kernel says the thread ran (read just before and after).
    assert!(
        before <= burner && burner <= after,
        "{before} <= {burner} <= {after}"
    );
    // Generous: the burn is TSC time and includes the 1.5 s pause, and on a shared machine
    // the vCPU may get a fraction of a core (the exact check is the /proc one above).
    assert!(
        burner >= BURN_MS * 1_000_000 / 10,
        "vCPU 0 ran {burner} ns for a {BURN_MS} ms burn"
    );
    assert!(burner <= wall_ns + 100_000_000, "{burner} > wall {wall_ns}");
    assert!(
        idle < 200_000_000 && idle < burner / 5,
        "idle vCPU 1 ran {idle} ns"
    );
    let t = &u["counters"]["vcpu_total"];
    assert_eq!(t["cpu_total_ns"], burner + idle, "{u}");
    for kind in ["vmm", "api", "io"] {
        assert!(
            u["counters"]["vmm_threads"][kind]["cpu_total_ns"].is_u64(),
            "{kind}: {u}"
        );
    }
    assert!(u64_at(&u, &["counters", "vmm_threads", "vmm", "cpu_total_ns"]) > 0);

    x.signal(libc::SIGTERM);
    assert_eq!(x.wait_exit(BOOT_TIMEOUT).expect("exit").code(), Some(0));
    let last = final_record(&metrics);
    assert_eq!(last["exit_reason"], "signal", "{last}");
    assert!(vcpu_ns(&last, 0) >= burner);
    assert_eq!(last["usage_id"], u["usage_id"]);
    assert_eq!(last["usage_epoch"], 0);
    assert!(last["parent_usage_id"].is_null());
    let records = usage_lines(&metrics);
    assert!(records.len() >= 3, "{records:?}");
    assert_monotonic(&records);

    // The billing tool's view of the same file: one tenant, one VM, the vCPU time billed.
    let report = std::process::Command::new(
        xenia_integration_tests::workspace_root().join("tools/usage-report"),
    )
    .args(["--json".as_ref(), metrics.as_os_str()])
    .output()
    .expect("run tools/usage-report");
    assert!(report.status.success(), "{report:?}");
    let row: Value = serde_json::from_slice(&report.stdout).expect("one JSON line");
    assert_eq!(
        (&row["tenant"], &row["vms"]),
        (&json!("acme"), &json!(1)),
        "{row}"
    );
    let billed_ns = row["vcpu_cpu_s"].as_f64().expect("vcpu_cpu_s") * 1e9;
    let total = u64_at(&last, &["counters", "vcpu_total", "cpu_total_ns"]) as f64;
    assert!((billed_ns - total).abs() < 1e3, "{row} vs {last}");
    assert!(row["paused_s"].as_f64() >= Some(1.4), "{row}");
}

#[test]
fn drive_and_network_counters_cover_what_the_guest_did() {
    use net_common::{iface, num, ok_line, NetNs};
    const WRITE_MIB: u64 = 4;
    // Stop-and-wait echo requests: each one has left the device before the next is sent
    // (a flood's last frames may still sit in the ring when the command resets the device).
    const PINGS: u64 = 20;
    // Ethernet + IPv4 + ICMP headers and the probe's 56-byte payload.
    const PING_FRAME_BYTES: u64 = 14 + 20 + 8 + 56;
    let ns = NetNs::new("usage");
    ns.tap("ut0", Some("10.51.0.1/24"));
    let dir = TempDir::new();
    let image = block_common::zero_image(&dir, "scratch.img", 16 * MIB);
    let metrics = dir.path().join("metrics.json");
    let sectors = WRITE_MIB * MIB / 512;
    let cmds =
        format!("blk-write:0:{sectors}:7,blk-flush,net-ping:10.51.0.1:{PINGS},net-spoof:10.51.0.1");
    let config = json!({
        "boot-source": {"kernel_image_path": probe().pvh,
            "boot_args": format!("console=ttyS0 probe.ip=10.51.0.2/24 probe.cmds={cmds}")},
        "machine-config": {"vcpu_count": 1, "mem_size_mib": 128},
        "drives": [block_common::drive("scratch", &image, json!({"cache_type": "Writeback"}))],
        "network-interfaces": [iface("eth0", "ut0", "06:00:0a:33:00:02", json!({}))],
        "metrics": {"metrics_path": metrics},
    });
    let mut x = ns.xenia(&config, &[]);
    net_common::run_to_done(&mut x);
    let ping = ok_line(&x, "net-ping");
    let (sent, received) = (num(ping, "sent"), num(ping, "received"));
    assert_eq!((sent, received), (PINGS, PINGS), "{ping}");
    let last = final_record(&metrics);
    assert_eq!(last["exit_reason"], "guest-reset-or-poweroff", "{last}");
    let d = &last["counters"]["drives"]["scratch"];
    // The device knows these exactly.
    assert_eq!(d["write_bytes"], WRITE_MIB * MIB, "{d}");
    assert_eq!(d["write_ops"], sectors / 128, "{d}");
    assert_eq!(d["flush_ops"], 1, "{d}");
    assert_eq!(
        (&d["read_bytes"], &d["discard_ops"]),
        (&json!(0), &json!(0)),
        "{d}"
    );
    let n = &last["counters"]["interfaces"]["eth0"];
    // The echo requests plus at least one ARP request; the forged frame is dropped, not
    // sent. In: the replies plus at least one ARP reply.
    assert!(n["tx_frames"].as_u64() >= Some(sent + 1), "{n}");
    assert!(
        n["tx_bytes"].as_u64() >= Some(sent * PING_FRAME_BYTES + 42),
        "{n}"
    );
    assert!(n["rx_frames"].as_u64() >= Some(received + 1), "{n}");
    assert!(
        n["rx_bytes"].as_u64() >= Some(received * PING_FRAME_BYTES + 42),
        "{n}"
    );
    assert_eq!(n["tx_dropped_spoofed_frames"], 1, "{n}");
    eprintln!("{ping}\n{last}");
    assert_monotonic(&usage_lines(&metrics));
}

#[test]
fn resident_memory_follows_what_the_guest_touches() {
    const TOUCH_MIB: u64 = 64;
    let dir = TempDir::new();
    let config = boot_config(
        &probe().pvh,
        &probe_args(&format!("tick:10,touch:{TOUCH_MIB},tick:20,idle")),
        1,
        256,
    );
    let path = dir.write("config.json", config.to_string());
    let socket = dir.path().join("api.sock");
    let args: Vec<String> = vec![
        "--api-sock".into(),
        socket.to_string_lossy().into_owned(),
        "--config-file".into(),
        path.to_string_lossy().into_owned(),
    ];
    let mut x = Xenia::spawn(&args, TempDir::new());
    let api = ApiClient::new(&socket);
    api.wait_ready(BOOT_TIMEOUT).expect("api");
    x.wait_for_line("PROBE tick n=2", BOOT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}"));
    let r0 = usage(&api);
    x.wait_for_line("PROBE touch ok", BOOT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}"));
    let r1 = usage(&api);
    x.wait_for_line("PROBE tick n=15", BOOT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}"));
    let r2 = usage(&api);
    let res = |u: &Value| u64_at(u, &["counters", "memory", "resident_bytes"]);
    let integral = |u: &Value| {
        u["counters"]["memory"]["resident_mib_seconds"]
            .as_f64()
            .expect("integral")
    };
    let grew = res(&r1) - res(&r0);
    eprintln!(
        "resident {} -> {} -> {} bytes; integral {} -> {} -> {} MiB*s",
        res(&r0),
        res(&r1),
        res(&r2),
        integral(&r0),
        integral(&r1),
        integral(&r2)
    );
    assert!(
        ((TOUCH_MIB - 2) * MIB..=(TOUCH_MIB + 8) * MIB).contains(&grew),
        "resident grew by {grew} bytes for {TOUCH_MIB} MiB touched"
    );
    assert_eq!(u64_at(&r0, &["counters", "memory", "configured_mib"]), 256);
    assert!(u64_at(&r2, &["counters", "memory", "resident_high_water_bytes"]) >= res(&r1));
    let dt_s = (u64_at(&r2, &["counters", "wall", "running_ms"])
        - u64_at(&r1, &["counters", "wall", "running_ms"])) as f64
        / 1000.0;
    let expected = res(&r1) as f64 / MIB as f64 * dt_s;
    let got = integral(&r2) - integral(&r1);
    assert!(
        dt_s > 0.5 && got >= 0.8 * expected && got <= 1.2 * expected + 1.0,
        "integral grew {got} MiB*s over {dt_s} s at {} MiB",
        res(&r1) / MIB
    );
    x.signal(libc::SIGTERM);
    let _ = x.wait_exit(BOOT_TIMEOUT);
}

/// Boots `cmds` to its end with a metrics file; returns the final record and exit code.
fn run_cmds(cmds: &str) -> (Value, Option<i32>) {
    let dir = TempDir::new();
    let metrics = dir.path().join("metrics.json");
    let mut config = boot_config(&probe().pvh, &probe_args(cmds), 1, 128);
    config["metrics"] = json!({"metrics_path": metrics});
    let mut x = Xenia::start(&config, &[]);
    let code = x.wait_exit(BOOT_TIMEOUT).expect("exit").code();
    (final_record(&metrics), code)
}

#[test]
fn every_exit_path_writes_a_final_record() {
    let started = Instant::now();
    for (cmds, reason, code) in [
        ("reboot", "guest-reset-or-poweroff", 0),
        ("acpi-poweroff", "guest-reset-or-poweroff", 0),
        ("panic", "guest-crash", 2),
    ] {
        let (last, got) = run_cmds(cmds);
        assert_eq!(got, Some(code), "{cmds}: {last}");
        assert_eq!(last["exit_reason"], reason, "{cmds}: {last}");
        assert!(
            last["counters"]["vcpus"][0]["cpu_total_ns"].as_u64() > Some(0),
            "{cmds}: {last}"
        );
    }

    // A start that fails: a final record, clearly empty.
    let dir = TempDir::new();
    let metrics = dir.path().join("metrics.json");
    let mut config = boot_config(&probe().pvh, &probe_args("idle"), 1, 128);
    config["metrics"] = json!({"metrics_path": metrics});
    config["network-interfaces"] = json!([{"iface_id": "eth0", "host_dev_name": "no-such-tap0"}]);
    let mut x = Xenia::start(&config, &[]);
    assert_eq!(x.wait_exit(BOOT_TIMEOUT).expect("exit").code(), Some(1));
    let last = final_record(&metrics);
    assert_eq!(last["exit_reason"], "start-failed", "{last}");
    assert!(last["counters"].is_null(), "{last}");
    assert_eq!(last["state"], "Not started", "{last}");

    // SIGTERM before any VM exists: final, empty.
    let (mut x, api) = Xenia::with_api(&[]);
    let metrics = x.dir().join("metrics.json");
    let m = json!({"metrics_path": metrics});
    api.expect("PUT", "/metrics", &m.to_string(), 204);
    x.signal(libc::SIGTERM);
    assert_eq!(x.wait_exit(BOOT_TIMEOUT).expect("exit").code(), Some(0));
    let last = final_record(&metrics);
    assert_eq!(last["exit_reason"], "signal", "{last}");
    assert!(last["counters"].is_null(), "{last}");
    eprintln!("exit paths checked in {:?}", started.elapsed());
}

/// Runs `tools/usage-report --json ARGS` and returns its rows by tenant.
fn report(args: &[&str]) -> std::collections::BTreeMap<String, Value> {
    let out = std::process::Command::new(
        xenia_integration_tests::workspace_root().join("tools/usage-report"),
    )
    .arg("--json")
    .args(args)
    .output()
    .expect("run tools/usage-report");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).expect("json row"))
        .map(|v| (v["tenant"].as_str().expect("tenant").to_owned(), v))
        .collect()
}

#[test]
fn usage_report_bills_a_clone_once_and_honours_the_window() {
    let line = |tenant: &str, id: &str, ts: u64, cpu_s: u64, inherited_s: Option<u64>| {
        let counters = |s: u64| json!({"vcpu_total": {"cpu_total_ns": s * 1_000_000_000}});
        json!({"properties": {"tenant": tenant}, "usage": {
            "usage_id": id, "usage_epoch": u64::from(inherited_s.is_some()),
            "utc_timestamp_ms": ts, "final": false,
            "counters": counters(cpu_s), "inherited": inherited_s.map(counters)}})
        .to_string()
    };
    let dir = TempDir::new();
    // The original runs 3 s of vCPU time; a snapshot at 2 s is restored as a clone that runs
    // on to 4 s (2 s of its own); another tenant runs 1 s. A torn last line is skipped.
    let a = dir.write(
        "a.json",
        [
            line("t1", "a", 1000, 0, None),
            line("t1", "a", 2000, 2, None),
            line("t1", "a", 3000, 3, None),
            "{\"usage\": {\"usage_id\"".to_owned(),
        ]
        .join("\n"),
    );
    let b = dir.write(
        "b.json",
        [
            line("t1", "b", 2500, 3, Some(2)),
            line("t1", "b", 4000, 4, Some(2)),
            line("t2", "c", 1500, 1, None),
        ]
        .join("\n"),
    );
    let (a, b) = (a.to_string_lossy(), b.to_string_lossy());
    let all = report(&[&a, &b]);
    assert_eq!(all["t1"]["vcpu_cpu_s"], 5.0, "{all:?}");
    assert_eq!(all["t1"]["vms"], 2);
    assert_eq!(all["t2"]["vcpu_cpu_s"], 1.0);
    // 2000..3000: the original's third second and the clone's first second.
    let window = report(&["--from", "2000", "--to", "3000", &a, &b]);
    assert_eq!(window["t1"]["vcpu_cpu_s"], 2.0, "{window:?}");
}

#[test]
fn a_restore_continues_the_counters_and_each_clone_has_its_own_identity() {
    use snapshot_common::{boot, next_tick, SnapshotFiles};
    let (mut x, api) = Xenia::with_api(&[]);
    boot(&api, "burn:1000,memtick:1", 64, false);
    x.wait_for_line("PROBE memtick n=2 ", BOOT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}"));
    api.expect("PATCH", "/vm", r#"{"state": "Paused"}"#, 204);
    let before = usage(&api);
    let files = SnapshotFiles::new();
    api.expect("PUT", "/snapshot/create", &files.create_body("Full"), 204);
    let after = usage(&api);
    drop(x);
    assert!(vcpu_ns(&before, 0) >= 200_000_000, "the burn: {before}");

    let mut ids = Vec::new();
    for _ in 0..2 {
        let (mut y, api2) = Xenia::with_api(&[]);
        api2.expect("PUT", "/snapshot/load", &files.load_body(true), 204);
        next_tick(&mut y);
        let u = usage(&api2);
        eprintln!("{u}");
        assert_eq!(u["parent_usage_id"], before["usage_id"], "{u}");
        assert_eq!(u["usage_epoch"], 1, "{u}");
        assert_ne!(u["usage_id"], before["usage_id"], "{u}");
        // The snapshot's counters, taken while paused: between the reads around create.
        let inherited = &u["inherited"];
        let saved = inherited["vcpus"][0]["cpu_total_ns"]
            .as_u64()
            .expect("saved");
        assert!(
            vcpu_ns(&before, 0) <= saved && saved <= vcpu_ns(&after, 0),
            "{before}\n{inherited}\n{after}"
        );
        assert_eq!(
            inherited["wall"]["running_ms"], before["counters"]["wall"]["running_ms"],
            "no running time passes while paused"
        );
        // Not billed from zero: the counters continue from the snapshot's.
        assert!(vcpu_ns(&u, 0) >= saved, "{u}");
        assert!(
            u64_at(&u, &["counters", "wall", "running_ms"])
                > u64_at(inherited, &["wall", "running_ms"]),
            "{u}"
        );
        assert!(
            u["counters"]["memory"]["resident_mib_seconds"].as_f64()
                >= inherited["memory"]["resident_mib_seconds"].as_f64(),
            "{u}"
        );
        ids.push(u["usage_id"].clone());
    }
    assert_ne!(ids[0], ids[1], "two clones, two identities");
}

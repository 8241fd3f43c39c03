//! virtio-rng (`entropy`): the probe reads random bytes through the device configured from a
//! config file or `PUT /entropy`; requests over 64 KiB are answered with 64 KiB; hostile
//! chains are refused and counted while the device keeps working; the rate limiter holds a
//! reader to its budget (lower bound on wall time only).

// Helpers outside #[test] functions fail the test with the console attached.
#![allow(clippy::panic)]

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use xenia_integration_tests::{
    boot_config, last_metrics, probe, probe_args, TempDir, Xenia, BOOT_TIMEOUT,
};

const RUN_TIMEOUT: Duration = Duration::from_secs(120);

/// `key=value` fields of a probe result line.
fn fields(line: &str) -> HashMap<String, String> {
    line.split_whitespace()
        .filter_map(|w| w.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

fn num(f: &HashMap<String, String>, key: &str) -> u64 {
    f.get(key)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no numeric `{key}` in {f:?}"))
}

/// The `entropy` object of the last metrics line.
fn entropy_metrics(path: &Path) -> Value {
    let line = last_metrics(path);
    assert!(line["entropy"].is_object(), "no `entropy` in {line}");
    line["entropy"].clone()
}

/// Boots the probe with an entropy device (`entropy` section as given) running `cmds`;
/// returns each command's result line, in order, and the final metrics.
fn run(entropy: Value, cmds: &str) -> (Vec<String>, Value, Vec<Instant>) {
    let dir = TempDir::new();
    let mut config = boot_config(&probe().pvh, &probe_args(cmds), 1, 128);
    config["entropy"] = entropy;
    let metrics = dir.path().join("metrics.json");
    let metrics_arg = metrics.to_string_lossy().into_owned();
    let mut x = Xenia::start(&config, &["--metrics-path", &metrics_arg]);
    x.wait_for_line("PROBE-BOOT-OK", BOOT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}"));
    let mut lines = Vec::new();
    let mut times = vec![Instant::now()];
    for name in cmds.split(',') {
        let name = name.split(':').next().unwrap_or(name);
        let line = x
            .wait_for_line(&format!("PROBE {name} "), RUN_TIMEOUT)
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(line.contains(" ok "), "{line}\nstderr:\n{}", x.stderr());
        times.push(Instant::now());
        lines.push(line);
    }
    x.wait_for_line("PROBE-DONE", RUN_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}"));
    let status = x.wait_exit(RUN_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(status.code(), Some(0), "stderr:\n{}", x.stderr());
    (lines, entropy_metrics(&metrics), times)
}

#[test]
fn the_guest_reads_random_bytes_and_requests_are_capped_at_64_kib() {
    let (lines, m, _) = run(
        json!({}),
        "rng-read:1048576:65536,rng-read:262144:131072,rng-read:4096,rng-read:4096",
    );
    let big = fields(&lines[0]);
    assert_eq!(num(&big, "bytes"), 1 << 20);
    assert_eq!(num(&big, "short"), 0, "{}", lines[0]);
    // 1 MiB from a real random source hits every byte value and has no long runs.
    assert_eq!(num(&big, "distinct"), 256, "{}", lines[0]);
    assert!(num(&big, "max_run") < 8, "{}", lines[0]);
    // 128 KiB asked: 64 KiB answered each time.
    let capped = fields(&lines[1]);
    assert_eq!(num(&capped, "max_len"), 64 << 10, "{}", lines[1]);
    // Three 128 KiB requests answered with 64 KiB, then 64 KiB left to ask for.
    assert_eq!(
        (num(&capped, "requests"), num(&capped, "short")),
        (4, 3),
        "{}",
        lines[1]
    );
    assert_eq!(num(&capped, "bytes"), 256 << 10);
    // Two reads of the same size are different bytes.
    assert_ne!(fields(&lines[2])["fnv1a64"], fields(&lines[3])["fnv1a64"]);
    let expected = (1u64 << 20) + (256 << 10) + 2 * 4096;
    assert_eq!(m["entropy_bytes"], expected, "{m}");
    assert_eq!(m["invalid_requests"], 0, "{m}");
    assert!(m["entropy_event_count"].as_u64() >= Some(16 + 4 + 2), "{m}");
}

#[test]
fn hostile_chains_are_refused_and_counted_and_the_device_keeps_working() {
    let (lines, m, _) = run(
        json!({}),
        "rng-hostile:ro,rng-hostile:oob,rng-hostile:straddle,rng-hostile:head-oob,rng-read:65536",
    );
    for (line, outcome) in lines
        .iter()
        .zip(["answered", "answered", "answered", "needs-reset"])
    {
        assert!(
            line.contains(&format!("outcome={outcome} then=ok")),
            "{line}"
        );
    }
    // Every hostile chain is refused; the head past the table also breaks the queue (its
    // used entry cannot be written), which the driver's reset repairs.
    assert_eq!(m["invalid_requests"], 4, "{m}");
    assert_eq!(m["queue_errors"], 1, "{m}");
    // The good requests after each hostile one, and the final read.
    assert_eq!(m["entropy_bytes"], 4 * 64 + 65536, "{m}");
}

#[test]
fn the_rate_limiter_holds_the_guest_to_its_budget() {
    // 16 KiB a second, bucket full at start: 4 KiB, then 64 KiB, takes at least 3 s.
    let limiter = json!({"rate_limiter": {"bandwidth": {"size": 16384, "refill_time": 1000}}});
    let (lines, m, times) = run(limiter, "rng-read:4096,rng-read:65536:4096");
    let took = times[2] - times[1];
    assert!(
        took >= Duration::from_millis(2500),
        "64 KiB at 16 KiB/s read in {took:?}: {}",
        lines[1]
    );
    assert!(
        m["entropy_rate_limiter_throttled"].as_u64() > Some(0),
        "{m}"
    );
    assert_eq!(m["entropy_bytes"], 4096 + 65536, "{m}");
}

#[test]
fn put_entropy_before_boot_is_exported_and_refused_after_boot() {
    let (mut x, api) = Xenia::with_api(&[]);
    api.expect(
        "PUT",
        "/entropy",
        r#"{"rate_limiter": {"ops": {"size": 5}}}"#,
        400,
    );
    let f = api
        .expect("PUT", "/entropy", r#"{"bytes": 1}"#, 400)
        .fault();
    assert!(f.contains("unknown field `bytes`"), "{f}");
    api.expect(
        "PUT",
        "/entropy",
        r#"{"rate_limiter": {"ops": {"size": 100, "refill_time": 1000}}}"#,
        204,
    );
    let kernel = probe().pvh;
    let boot = json!({"kernel_image_path": kernel, "boot_args": probe_args("rng-read:8192,idle")});
    api.expect("PUT", "/boot-source", &boot.to_string(), 204);
    let config = api.expect("GET", "/vm/config", "", 200).json();
    assert_eq!(
        config["entropy"]["rate_limiter"]["ops"]["size"], 100,
        "{config}"
    );
    api.start_instance(204);
    let line = x
        .wait_for_line("PROBE rng-read", RUN_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        line.contains(" ok ") && line.contains("bytes=8192"),
        "{line}"
    );
    let f = api.expect("PUT", "/entropy", "{}", 400).fault();
    assert!(f.contains("after starting"), "{f}");
}

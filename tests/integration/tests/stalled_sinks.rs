//! Output sinks on FIFOs that nobody reads: the log, the metrics and the console. None of
//! them may block a thread; what they cannot take is dropped and counted. A FIFO given as a
//! drive is refused at once instead of waiting for a writer.
#![allow(
    clippy::panic,
    clippy::print_stderr,
    reason = "a test crate: helpers fail by panicking, timings go to stderr"
)]

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use xenia_integration_tests::api::ApiClient;
use xenia_integration_tests::{probe, probe_args, run_to_exit, TempDir, Xenia};

fn mkfifo(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    let c = CString::new(path.as_os_str().as_encoded_bytes()).expect("path");
    // SAFETY: mkfifo(3) with a valid NUL-terminated path.
    let rc = unsafe { libc::mkfifo(c.as_ptr(), 0o600) };
    assert_eq!(rc, 0, "mkfifo: {}", std::io::Error::last_os_error());
    path
}

/// A reader that never waits (xenia holds the FIFO open, so there is no end of file).
fn open_reader(path: &Path) -> File {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .expect("open the FIFO for reading")
}

/// Everything queued in the FIFO now.
fn drain(reader: &mut File) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 65536];
    loop {
        match reader.read(&mut buf) {
            Ok(0) => return got,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return got,
            Err(e) => panic!("read the FIFO: {e}"),
        }
    }
}

/// The current metrics: empties the metrics FIFO, asks for a flush, reads that line.
fn metrics_now(api: &ApiClient, reader: &mut File) -> Value {
    drain(reader);
    api.expect("PUT", "/actions", r#"{"action_type": "FlushMetrics"}"#, 204);
    let text = String::from_utf8(drain(reader)).expect("metrics are UTF-8");
    let line = text.lines().last().expect("a metrics line after the flush");
    serde_json::from_str(line).unwrap_or_else(|e| panic!("metrics line {line:?}: {e}"))
}

fn counter(m: &Value, section: &str, name: &str) -> u64 {
    m[section][name]
        .as_u64()
        .unwrap_or_else(|| panic!("no {section}.{name} in {m}"))
}

#[test]
fn sinks_nobody_reads_block_neither_the_api_nor_the_guest() {
    let (mut x, api) = Xenia::with_api(&[]);
    let log = mkfifo(x.dir(), "log.fifo");
    let metrics = mkfifo(x.dir(), "metrics.fifo");
    let serial = mkfifo(x.dir(), "serial.fifo");
    api.expect(
        "PUT",
        "/logger",
        &json!({"log_path": log, "level": "Info"}).to_string(),
        204,
    );
    api.expect(
        "PUT",
        "/metrics",
        &json!({"metrics_path": metrics}).to_string(),
        204,
    );
    api.expect(
        "PUT",
        "/serial",
        &json!({"serial_out_path": serial}).to_string(),
        204,
    );
    // The guest writes its console as fast as it can, for ever.
    let boot = json!({"kernel_image_path": probe().pvh, "boot_args": probe_args("print:0")});
    api.expect("PUT", "/boot-source", &boot.to_string(), 204);
    api.start_instance(204);

    // First the console FIFO fills up: the guest's output starts being dropped.
    let mut reader = open_reader(&metrics);
    let deadline = Instant::now() + Duration::from_secs(60);
    let jammed = loop {
        let m = metrics_now(&api, &mut reader);
        if counter(&m, "uart", "dropped_bytes") > 0 {
            break m;
        }
        assert!(
            Instant::now() < deadline,
            "console output never dropped: {m}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };

    // Then, while the guest keeps flooding it, 1,000 requests, each logged (level Info);
    // every fourth writes a metrics line too. Every one is answered.
    let start = Instant::now();
    for i in 0..1_000 {
        if i % 4 == 0 {
            api.expect("PUT", "/actions", r#"{"action_type": "FlushMetrics"}"#, 204);
        } else {
            api.expect("GET", "/", "", 200);
        }
    }
    eprintln!(
        "1,000 API requests with stalled sinks: {:?}",
        start.elapsed()
    );
    assert_eq!(api.expect("GET", "/", "", 200).json()["state"], "Running");

    let after = metrics_now(&api, &mut reader);
    for (section, name) in [
        ("logger", "dropped_lines"),
        ("logger", "dropped_metrics"),
        ("uart", "dropped_bytes"),
        // The guest kept running: its port writes went on.
        ("vcpu", "exit_io_out"),
    ] {
        assert!(
            counter(&after, section, name) > counter(&jammed, section, name),
            "{section}.{name} did not rise: {after}"
        );
    }
    // A vCPU busy writing to a stalled console still stops when asked.
    x.signal(libc::SIGTERM);
    let status = x.wait_exit(Duration::from_secs(30)).expect("exit");
    assert_eq!(status.code(), Some(0), "stderr:\n{}", x.stderr());
}

#[test]
fn a_fifo_drive_is_refused_at_once() {
    let (x, api) = Xenia::with_api(&[]);
    let fifo = mkfifo(x.dir(), "disk.fifo");
    // Read-only is the case that hung: opening a FIFO for reading waits for a writer.
    for read_only in [true, false] {
        let drive = json!({
            "drive_id": "data", "path_on_host": fifo, "is_root_device": false,
            "is_read_only": read_only
        });
        let r = api.call("PUT", "/drives/data", &drive.to_string());
        assert_eq!(r.status, 400, "{}", r.fault());
        assert!(r.fault().contains("not a regular file"), "{}", r.fault());
    }
}

#[test]
fn a_fifo_drive_in_the_config_file_exits_with_status_1() {
    let dir = TempDir::new();
    let fifo = mkfifo(dir.path(), "disk.fifo");
    let config = json!({
        "boot-source": {"kernel_image_path": probe().pvh, "boot_args": probe_args("")},
        "drives": [{
            "drive_id": "data", "path_on_host": fifo, "is_root_device": false,
            "is_read_only": true
        }]
    });
    let path = dir.write("config.json", config.to_string());
    let args = vec![
        "--no-api".to_owned(),
        "--config-file".to_owned(),
        path.to_string_lossy().into_owned(),
    ];
    let (status, stderr) = run_to_exit(&args, Duration::from_secs(30));
    assert_eq!(status.code(), Some(1), "stderr:\n{stderr}");
    assert!(stderr.contains("disk.fifo"), "{stderr}");
}

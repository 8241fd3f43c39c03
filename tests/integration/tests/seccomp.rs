//! Seccomp: every xenia thread runs under its filter, a forbidden call ends xenia with status
//! 148 and names the call, `--no-seccomp` and `--seccomp-filter` do what they say.

// A test helper reports a broken environment (no cargo) by failing the test.
#![allow(clippy::panic)]

use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc::channel;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use xenia_integration_tests::{
    boot_config, probe, probe_args, workspace_root, TempDir, Xenia, BOOT_TIMEOUT,
};

/// xenia's exit status after a seccomp violation.
const VIOLATION_EXIT: i32 = 148;
const EXIT_TIMEOUT: Duration = Duration::from_secs(60);
const VCPUS: u8 = 2;

fn idle_config() -> serde_json::Value {
    boot_config(&probe().pvh, &probe_args("idle"), VCPUS, 64)
}

/// One thread of a running xenia: its name and its `Seccomp:` mode.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ThreadInfo {
    comm: String,
    seccomp: String,
}

fn threads(pid: u32) -> Vec<ThreadInfo> {
    let dir = format!("/proc/{pid}/task");
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{dir}: {e}")) {
        let task = entry.expect("task entry").path();
        // A thread may end between the listing and the reads; skip it then.
        let (Ok(comm), Ok(status), Ok(stat)) = (
            std::fs::read_to_string(task.join("comm")),
            std::fs::read_to_string(task.join("status")),
            std::fs::read_to_string(task.join("stat")),
        ) else {
            continue;
        };
        if is_kernel_worker(&stat) {
            continue;
        }
        let seccomp = status
            .lines()
            .find_map(|l| l.strip_prefix("Seccomp:"))
            .map(|v| v.trim().to_owned())
            .unwrap_or_else(|| panic!("no Seccomp: line in {}", task.display()));
        out.push(ThreadInfo {
            comm: comm.trim_end().to_owned(),
            seccomp,
        });
    }
    out.sort_by(|a, b| a.comm.cmp(&b.comm));
    out
}

/// PF_USER_WORKER: a task the kernel runs inside the process, such as KVM's
/// `kvm-nx-lpage-recovery` worker; it executes no xenia code.
const PF_USER_WORKER: u64 = 0x4000;

/// Whether `/proc/<pid>/task/<tid>/stat` describes a kernel worker (flags is the 9th field;
/// the name in field 2 may contain spaces, so count from its closing parenthesis).
fn is_kernel_worker(stat: &str) -> bool {
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().nth(6))
        .and_then(|flags| flags.parse::<u64>().ok())
        .is_some_and(|flags| flags & PF_USER_WORKER != 0)
}

/// Polls the threads until all have `mode` (the VMM thread installs its filter just after the
/// vCPUs start, so the first console line can come a little before it).
fn wait_for_mode(pid: u32, mode: &str) -> Vec<ThreadInfo> {
    let deadline = Instant::now() + BOOT_TIMEOUT;
    loop {
        let now = threads(pid);
        if now.iter().all(|t| t.seccomp == mode) || Instant::now() > deadline {
            return now;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn assert_thread_names(threads: &[ThreadInfo]) {
    let names: Vec<&str> = threads.iter().map(|t| t.comm.as_str()).collect();
    assert_eq!(
        names.iter().filter(|n| **n == "xenia").count(),
        1,
        "one VMM thread named xenia: {names:?}"
    );
    for i in 0..VCPUS {
        let want = format!("vcpu {i}");
        assert!(names.contains(&want.as_str()), "no `{want}` in {names:?}");
    }
    for name in &names {
        let known = *name == "xenia"
            || *name == "api"
            || *name == "io"
            || name
                .strip_prefix("vcpu ")
                .is_some_and(|i| i.parse::<u8>().is_ok_and(|i| i < VCPUS));
        assert!(known, "unexpected thread `{name}` in {names:?}");
    }
}

#[test]
fn every_thread_of_a_booted_vm_is_named_and_filtered() {
    let mut x = Xenia::start(&idle_config(), &[]);
    x.wait_for_line("PROBE idle ok", BOOT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}"));
    let threads = wait_for_mode(x.pid(), "2");
    assert_thread_names(&threads);
    for t in &threads {
        assert_eq!(
            t.seccomp, "2",
            "thread `{}` is not filtered: {threads:?}",
            t.comm
        );
    }
}

#[test]
fn no_seccomp_leaves_every_thread_unfiltered_and_says_so() {
    let mut x = Xenia::start(&idle_config(), &["--no-seccomp"]);
    x.wait_for_line("PROBE idle ok", BOOT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}"));
    let threads = threads(x.pid());
    assert_thread_names(&threads);
    for t in &threads {
        assert_eq!(t.seccomp, "0", "thread `{}`: {threads:?}", t.comm);
    }
    assert!(
        x.stderr_contains_within("--no-seccomp", BOOT_TIMEOUT),
        "stderr:\n{}",
        x.stderr()
    );
}

/// Runs xenia to its end with `extra` flags on the idle probe.
fn run_idle(extra: &[&str]) -> (Option<i32>, String) {
    let mut x = Xenia::start(&idle_config(), extra);
    let status = x.wait_exit(EXIT_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    (status.code(), x.stderr())
}

#[test]
fn bad_seccomp_filter_files_are_refused_at_start_up() {
    let (code, stderr) = run_idle(&["--seccomp-filter", "/nonexistent/filter.json"]);
    assert_eq!(code, Some(1), "stderr:\n{stderr}");
    assert!(stderr.contains("--seccomp-filter"), "stderr:\n{stderr}");
    assert!(
        stderr.contains("/nonexistent/filter.json"),
        "stderr:\n{stderr}"
    );

    let dir = TempDir::new();
    let garbage = dir.write("garbage.json", "{\"vmm\": [1, 2");
    let (code, stderr) = run_idle(&["--seccomp-filter", &garbage.to_string_lossy()]);
    assert_eq!(code, Some(1), "stderr:\n{stderr}");
    assert!(
        stderr.contains("not a valid filter file"),
        "stderr:\n{stderr}"
    );

    let rule = r#"{"default_action":"trap","filter_action":"allow","filter":[{"syscall":"read"}]}"#;
    let partial = dir.write("partial.json", format!(r#"{{"vmm":{rule},"vcpu":{rule}}}"#));
    let (code, stderr) = run_idle(&["--seccomp-filter", &partial.to_string_lossy()]);
    assert_eq!(code, Some(1), "stderr:\n{stderr}");
    assert!(
        stderr.contains("no filter for thread kind"),
        "stderr:\n{stderr}"
    );

    let (code, stderr) = run_idle(&[
        "--no-seccomp",
        "--seccomp-filter",
        &partial.to_string_lossy(),
    ]);
    assert_eq!(code, Some(1), "stderr:\n{stderr}");
    assert!(
        stderr.contains("cannot be used together"),
        "stderr:\n{stderr}"
    );
}

fn builtin_filter_json() -> serde_json::Value {
    let path = workspace_root().join("resources/seccomp/x86_64.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn a_custom_filter_file_is_the_one_installed() {
    // The built-in file, unchanged, works as a custom filter.
    let dir = TempDir::new();
    let same = dir.write("same.json", builtin_filter_json().to_string());
    let mut x = Xenia::start(
        &idle_config(),
        &["--seccomp-filter", &same.to_string_lossy()],
    );
    x.wait_for_line("PROBE idle ok", BOOT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}"));
    let threads = wait_for_mode(x.pid(), "2");
    assert!(threads.iter().all(|t| t.seccomp == "2"), "{threads:?}");
    drop(x);

    // Without ioctl on the vCPU threads, the first KVM_RUN is a violation.
    let mut narrow = builtin_filter_json();
    let rules = narrow["vcpu"]["filter"]
        .as_array_mut()
        .expect("vcpu filter rules");
    rules.retain(|r| r["syscall"] != "ioctl");
    let narrow = dir.write("narrow.json", narrow.to_string());
    let (code, stderr) = run_idle(&["--seccomp-filter", &narrow.to_string_lossy()]);
    assert_eq!(code, Some(VIOLATION_EXIT), "stderr:\n{stderr}");
    assert!(
        stderr.contains("the `vcpu` thread made a forbidden system call: ioctl (#16)"),
        "stderr:\n{stderr}"
    );
}

/// xenia built with the `seccomp-test-trigger` feature, in its own target directory so the
/// normal build stays free of it.
fn trigger_binary() -> PathBuf {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let result = BUILT.get_or_init(|| {
        let target = workspace_root().join("target").join("seccomp-trigger");
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let out = Command::new(cargo)
            .current_dir(workspace_root())
            .args(["build", "-p", "vmm", "--bin", "xenia"])
            .args(["--features", "seccomp-test-trigger", "--target-dir"])
            .arg(&target)
            .output()
            .map_err(|e| format!("cannot run cargo: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "building xenia with seccomp-test-trigger failed:\n{}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(target.join("debug").join("xenia"))
    });
    result.clone().unwrap_or_else(|e| panic!("{e}"))
}

/// Runs the trigger build on the idle probe with `XENIA_SECCOMP_TEST_TRIGGER=trigger`; returns
/// the exit status and stderr.
fn run_trigger(trigger: &str, extra: &[&str]) -> (Option<i32>, String) {
    let dir = TempDir::new();
    let config = dir.write("config.json", idle_config().to_string());
    let mut child = Command::new(trigger_binary())
        .arg("--no-api")
        .arg("--config-file")
        .arg(&config)
        .args(extra)
        .env("XENIA_SECCOMP_TEST_TRIGGER", trigger)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the trigger build");
    let mut stderr = child.stderr.take().expect("stderr is piped");
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        let _ = tx.send(text);
    });
    // stderr closes when the process ends.
    let text = match rx.recv_timeout(EXIT_TIMEOUT) {
        Ok(text) => text,
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            panic!("xenia ({trigger}) did not exit within {EXIT_TIMEOUT:?}");
        }
    };
    let status = child.wait().expect("wait for xenia");
    (status.code(), text)
}

#[test]
fn a_forbidden_call_on_a_vcpu_thread_kills_xenia_and_is_named() {
    let (code, stderr) = run_trigger("vcpu", &[]);
    assert_eq!(code, Some(VIOLATION_EXIT), "stderr:\n{stderr}");
    assert!(
        stderr.contains("the `vcpu` thread made a forbidden system call: getppid (#110)"),
        "stderr:\n{stderr}"
    );
}

#[test]
fn a_forbidden_call_on_the_vmm_thread_kills_xenia_and_is_named() {
    let (code, stderr) = run_trigger("vmm", &[]);
    assert_eq!(code, Some(VIOLATION_EXIT), "stderr:\n{stderr}");
    assert!(
        stderr.contains("the `vmm` thread made a forbidden system call: getppid (#110)"),
        "stderr:\n{stderr}"
    );
}

#[test]
fn an_inet_socket_is_refused_by_the_argument_check() {
    let (code, stderr) = run_trigger("vcpu:socket-inet", &[]);
    assert_eq!(code, Some(VIOLATION_EXIT), "stderr:\n{stderr}");
    assert!(
        stderr.contains("forbidden system call: socket (#41)"),
        "stderr:\n{stderr}"
    );
}

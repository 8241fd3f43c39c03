//! Shared helpers for the integration tests: locating binaries and guest artifacts,
//! spawning xenia, reading its console.
//!
//! The binaries are built once per test process (`cargo build --bins` at the workspace
//! root) and the probe guest once (its `build.sh`, which caches). [`Xenia`] owns a child
//! process: its stdout (the guest's serial console) and stderr are read by threads into
//! channels, and the child is killed when the handle is dropped.

// A test helper reports a broken environment (no cargo, no probe) by failing the test.
#![allow(clippy::panic)]

pub mod api;
pub mod probe_lines;

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Generous default for a boot to reach a console marker.
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(60);

/// The workspace root (two levels above this crate).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

fn run_once(cell: &'static OnceLock<Result<(), String>>, what: &str, mut cmd: Command) {
    let result = cell.get_or_init(|| {
        let out = cmd
            .output()
            .map_err(|e| format!("cannot run {what}: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{what} failed ({}):\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

/// Builds the workspace's binaries (once per test process) and returns xenia's path.
pub fn xenia_binary() -> PathBuf {
    static BUILT: OnceLock<Result<(), String>> = OnceLock::new();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace_root()).args(["build", "--bins"]);
    run_once(&BUILT, "cargo build --bins", cmd);
    target_dir().join("debug").join("xenia")
}

/// `xenia-jailer` from the workspace build (built with xenia by [`xenia_binary`]).
pub fn jailer_binary() -> PathBuf {
    xenia_binary();
    target_dir().join("debug").join("xenia-jailer")
}

/// A statically linked release xenia (the jail holds no libraries), built once per test
/// process into `target/static` with `xenia-api` (tools/api-call) beside it, the same command and path as `tools/nested-kvm/build.sh`.
pub fn static_xenia() -> PathBuf {
    static BUILT: OnceLock<Result<(), String>> = OnceLock::new();
    let root = workspace_root();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&root)
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_TARGET_DIR")
        .args([
            "build",
            "--release",
            "--target",
            "x86_64-unknown-linux-gnu",
            "--bin",
            "xenia",
            "--bin",
            "xenia-api",
            "--target-dir",
        ])
        .arg(root.join("target/static"));
    run_once(&BUILT, "the static xenia build", cmd);
    root.join("target/static/x86_64-unknown-linux-gnu/release/xenia")
}

/// The probe guest's two builds.
#[derive(Debug, Clone)]
pub struct Probe {
    /// ELF with a PVH note: booted through PVH.
    pub pvh: PathBuf,
    /// Same code without the note: booted through the 64-bit Linux boot protocol.
    pub linux64: PathBuf,
    /// Same code in a bzImage wrapper: the bzImage loader, then the 64-bit boot protocol.
    pub bzimage: PathBuf,
}

/// Builds the probe guest (once per test process; its script caches across runs).
pub fn probe() -> Probe {
    static BUILT: OnceLock<Result<(), String>> = OnceLock::new();
    let root = workspace_root();
    let mut cmd = Command::new("sh");
    cmd.arg(root.join("resources/guest-kernels/probe/build.sh"));
    run_once(&BUILT, "resources/guest-kernels/probe/build.sh", cmd);
    let dir = root.join("build/probe");
    Probe {
        pvh: dir.join("probe.elf"),
        linux64: dir.join("probe-nopvh.elf"),
        bzimage: dir.join("probe.bzImage"),
    }
}

/// A temporary directory removed on drop.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new() -> Self {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("xenia-it-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&path).expect("create temp dir");
        Self(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// Writes `contents` to `name` inside the directory and returns its path.
    pub fn write(&self, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, contents).expect("write temp file");
        p
    }
}

impl Default for TempDir {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A config file for booting `kernel` with `boot_args`.
pub fn boot_config(kernel: &Path, boot_args: &str, vcpus: u8, mem_mib: u32) -> serde_json::Value {
    serde_json::json!({
        "boot-source": {"kernel_image_path": kernel, "boot_args": boot_args},
        "machine-config": {"vcpu_count": vcpus, "mem_size_mib": mem_mib}
    })
}

/// Boot arguments running the given probe commands.
pub fn probe_args(cmds: &str) -> String {
    if cmds.is_empty() {
        "console=ttyS0".to_owned()
    } else {
        format!("console=ttyS0 probe.cmds={cmds}")
    }
}

/// A running xenia process.
#[derive(Debug)]
pub struct Xenia {
    child: Child,
    console: Receiver<String>,
    /// Console lines read so far.
    pub lines: Vec<String>,
    stderr: Arc<(Mutex<String>, Condvar)>,
    stderr_done: Receiver<()>,
    /// Keeps the config file alive.
    _dir: TempDir,
}

impl Xenia {
    /// Starts xenia with `config` written to a config file and `extra_args` after it.
    pub fn start(config: &serde_json::Value, extra_args: &[&str]) -> Self {
        let dir = TempDir::new();
        let path = dir.write("config.json", config.to_string());
        let mut args = vec!["--no-api".to_owned(), "--config-file".to_owned()];
        args.push(path.to_string_lossy().into_owned());
        args.extend(extra_args.iter().map(|s| s.to_string()));
        Self::spawn(&args, dir)
    }

    /// Starts xenia serving its API on a socket in a fresh temporary directory, with
    /// `extra_args` after `--api-sock`; returns once the socket accepts connections.
    pub fn with_api(extra_args: &[&str]) -> (Self, api::ApiClient) {
        Self::with_api_env(extra_args, &[])
    }

    /// [`with_api`](Self::with_api) with `env` added to xenia's environment (test hooks of
    /// debug builds).
    pub fn with_api_env(extra_args: &[&str], env: &[(&str, &str)]) -> (Self, api::ApiClient) {
        let dir = TempDir::new();
        let socket = dir.path().join("api.sock");
        let mut args = vec![
            "--api-sock".to_owned(),
            socket.to_string_lossy().into_owned(),
        ];
        args.extend(extra_args.iter().map(|s| s.to_string()));
        let x = Self::spawn_program_env(&xenia_binary(), &args, env, dir);
        let client = api::ApiClient::new(socket);
        if let Err(e) = client.wait_ready(BOOT_TIMEOUT) {
            panic!("{e}; stderr:\n{}", x.stderr());
        }
        (x, client)
    }

    /// The temporary directory that lives as long as this process handle.
    pub fn dir(&self) -> &Path {
        self._dir.path()
    }

    /// Console lines that arrive within `window` (all of them, in order).
    pub fn lines_within(&mut self, window: Duration) -> Vec<String> {
        let deadline = Instant::now() + window;
        let mut got = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.console.recv_timeout(left) {
                Ok(line) => {
                    self.lines.push(line.clone());
                    got.push(line);
                }
                Err(_) => return got,
            }
        }
    }

    /// Starts xenia with exactly `args`.
    pub fn spawn(args: &[String], dir: TempDir) -> Self {
        Self::spawn_program(&xenia_binary(), args, dir)
    }

    /// Starts `program` (xenia, or a launcher such as the jailer that becomes xenia) with
    /// exactly `args`; its stdout is read as the console.
    pub fn spawn_program(program: &Path, args: &[String], dir: TempDir) -> Self {
        Self::spawn_program_env(program, args, &[], dir)
    }

    /// [`spawn_program`](Self::spawn_program) with `env` added to its environment.
    pub fn spawn_program_env(
        program: &Path,
        args: &[String],
        env: &[(&str, &str)],
        dir: TempDir,
    ) -> Self {
        let mut child = Command::new(program)
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn xenia");
        let stdout = child.stdout.take().expect("stdout is piped");
        let stderr = child.stderr.take().expect("stderr is piped");
        let (tx, console) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).split(b'\n') {
                let Ok(line) = line else { break };
                let text = String::from_utf8_lossy(&line)
                    .trim_end_matches('\r')
                    .to_owned();
                if tx.send(text).is_err() {
                    break;
                }
            }
        });
        let stderr_text = Arc::new((Mutex::new(String::new()), Condvar::new()));
        let (done_tx, stderr_done) = channel();
        let sink = stderr_text.clone();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stderr);
            let mut buf = [0u8; 4096];
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.0
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
                sink.1.notify_all();
            }
            let _ = done_tx.send(());
        });
        Self {
            child,
            console,
            lines: Vec::new(),
            stderr: stderr_text,
            stderr_done,
            _dir: dir,
        }
    }

    /// Waits for a console line containing `needle`; returns it, or an error with the
    /// console so far when the timeout passes or the console closes first.
    pub fn wait_for_line(&mut self, needle: &str, timeout: Duration) -> Result<String, String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.console.recv_timeout(left) {
                Ok(line) => {
                    self.lines.push(line.clone());
                    if line.contains(needle) {
                        return Ok(line);
                    }
                }
                Err(e) => {
                    let why = match e {
                        RecvTimeoutError::Timeout => "timed out",
                        RecvTimeoutError::Disconnected => "console closed",
                    };
                    return Err(format!(
                        "{why} waiting for `{needle}`; console:\n{}\nstderr:\n{}",
                        self.lines.join("\n"),
                        self.stderr()
                    ));
                }
            }
        }
    }

    /// Reads the console to its end and waits for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus, String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.console.recv_timeout(left) {
                Ok(line) => self.lines.push(line),
                Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => {
                    return Err(format!(
                        "xenia did not exit in {timeout:?}; console:\n{}",
                        self.lines.join("\n")
                    ))
                }
            }
        }
        // The console closed, so the process is exiting; stderr closes with it.
        let left = deadline.saturating_duration_since(Instant::now());
        let _ = self.stderr_done.recv_timeout(left);
        self.child.wait().map_err(|e| format!("wait: {e}"))
    }

    /// The process id (for /proc inspection).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything xenia wrote on stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Waits until stderr contains `needle` (the reader thread may lag behind the console
    /// on a loaded machine); `false` after `timeout`.
    pub fn stderr_contains_within(&self, needle: &str, timeout: Duration) -> bool {
        let (text, grew) = &*self.stderr;
        let guard = text.lock().unwrap_or_else(|e| e.into_inner());
        let (guard, _) = grew
            .wait_timeout_while(guard, timeout, |t| !t.contains(needle))
            .unwrap_or_else(|e| e.into_inner());
        guard.contains(needle)
    }

    /// Sends `signal` to the process.
    pub fn signal(&self, signal: i32) {
        let pid = self.child.id() as libc::pid_t;
        // SAFETY: kill(2) on our own child's pid; the child is not reaped until `wait`.
        unsafe { libc::kill(pid, signal) };
    }

    /// The console lines that start with `prefix`.
    pub fn lines_with(&self, prefix: &str) -> Vec<&str> {
        self.lines
            .iter()
            .filter(|l| l.starts_with(prefix))
            .map(String::as_str)
            .collect()
    }
}

impl Drop for Xenia {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The last line of the metrics file `path` (`--metrics-path`: one JSON object a flush),
/// parsed. Blank lines are passed over.
pub fn last_metrics(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("metrics file {}: {e}", path.display()));
    let last = text
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or_else(|| panic!("no metrics line in {}", path.display()));
    serde_json::from_str(last).unwrap_or_else(|e| panic!("{e}: {last}"))
}

/// The names of `pid`'s threads, sorted. Kernel workers KVM runs inside the process
/// (`kvm-nx-lpage-re...`) are left out: xenia does not start them.
pub fn thread_names(pid: u32) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/task: {e}"))
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|s| s.trim_end().to_owned())
        .filter(|s| !s.starts_with("kvm-"))
        .collect();
    names.sort();
    names
}

/// Runs xenia with `args` to completion (it must exit by itself) and returns its status and
/// stderr.
pub fn run_to_exit(args: &[String], timeout: Duration) -> (ExitStatus, String) {
    let mut x = Xenia::spawn(args, TempDir::new());
    let status = x.wait_exit(timeout).unwrap_or_else(|e| panic!("{e}"));
    let err = x.stderr();
    (status, err)
}

/// A workspace tool binary (built with xenia by [`xenia_binary`]), e.g. `snapshot-merge`.
pub fn tool_binary(name: &str) -> PathBuf {
    xenia_binary();
    target_dir().join("debug").join(name)
}

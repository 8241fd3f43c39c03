//! Shared harness: builds the static probe, runs the jailer, inspects the
//! jailed process through /proc and removes every jail, cgroup and netns made.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::sync::OnceLock;
use std::time::Duration;

pub const JAILER: &str = env!("CARGO_BIN_EXE_xenia-jailer");
pub const PROBE_NAME: &str = "jail-probe";
const TIMEOUT: Duration = Duration::from_secs(60);

/// The probe, compiled once per test binary as a static executable (the jail
/// holds no shared libraries).
pub fn probe() -> &'static Path {
    static PROBE: OnceLock<PathBuf> = OnceLock::new();
    PROBE.get_or_init(|| {
        // One folder per test binary: the binaries of a `cargo test` run concurrently.
        let exe = std::env::current_exe().unwrap();
        let stem = exe.file_stem().unwrap().to_string_lossy();
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("probe-{stem}"));
        std::fs::create_dir_all(&dir).unwrap();
        let out = dir.join(PROBE_NAME);
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/helper/jail_probe.rs");
        let status = Command::new(std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into()))
            .args([
                "--edition",
                "2021",
                "-O",
                "-C",
                "target-feature=+crt-static",
                "-o",
            ])
            .arg(&out)
            .arg(&src)
            .status()
            .expect("run rustc");
        assert!(status.success(), "building the probe failed");
        out
    })
}

/// A unique name per test and test process, usable as id, cgroup and netns name.
pub fn unique(tag: &str) -> String {
    format!("t{}-{tag}", std::process::id())
}

/// One jail of a test; dropping it removes the jail directory, its cgroups and
/// the shared test parent cgroup (if empty).
pub struct Jail {
    pub base: PathBuf,
    pub id: String,
    pub parent_cgroup: String,
    pub uid: u32,
}

impl Jail {
    pub fn new(tag: &str, uid: u32) -> Jail {
        let id = unique(tag);
        let base = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("jails-{id}"));
        Jail {
            base,
            parent_cgroup: format!("xenia-jailer-test-{id}"),
            id,
            uid,
        }
    }

    pub fn jail_dir(&self) -> PathBuf {
        self.base.join(PROBE_NAME).join(&self.id)
    }

    pub fn root(&self) -> PathBuf {
        self.jail_dir().join("root")
    }

    /// The jailer command for the probe with the common flags.
    pub fn command(&self, extra: &[&str], probe_args: &[&str]) -> Command {
        let mut cmd = Command::new(JAILER);
        cmd.arg("--id")
            .arg(&self.id)
            .arg("--exec-file")
            .arg(probe())
            .args([
                "--uid",
                &self.uid.to_string(),
                "--gid",
                &self.uid.to_string(),
            ])
            .arg("--chroot-base-dir")
            .arg(&self.base)
            .args(["--parent-cgroup", &self.parent_cgroup])
            .args(extra)
            .arg("--")
            .args(probe_args);
        cmd
    }

    /// Starts the jailed probe and waits for its report.
    pub fn start(&self, extra: &[&str], probe_args: &[&str]) -> Running {
        let mut cmd = self.command(extra, probe_args);
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn the jailer");
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut report = Vec::new();
        loop {
            match lines.recv_timeout(TIMEOUT) {
                Ok(line) if line == "READY" => break,
                Ok(line) => report.push(line),
                Err(e) => {
                    let _ = child.kill();
                    let out = child.wait_with_output().expect("wait");
                    panic!(
                        "no READY from the probe ({e}); report so far {report:?}; jailer stderr: {}",
                        String::from_utf8_lossy(&out.stderr)
                    );
                }
            }
        }
        Running {
            child: Some(child),
            stdin,
            lines,
            report,
        }
    }

    pub fn cleanup(&self) -> Output {
        Command::new(JAILER)
            .args(["--cleanup", "--id", &self.id, "--exec-file"])
            .arg(probe())
            .arg("--chroot-base-dir")
            .arg(&self.base)
            .args(["--parent-cgroup", &self.parent_cgroup])
            .output()
            .expect("run the jailer --cleanup")
    }
}

impl Drop for Jail {
    fn drop(&mut self) {
        let out = self.cleanup();
        if !out.status.success() {
            eprintln!(
                "cleanup of {}: {}",
                self.id,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        for hierarchy in cgroup_hierarchies() {
            let _ = std::fs::remove_dir(hierarchy.join(&self.parent_cgroup));
        }
        let _ = std::fs::remove_dir_all(&self.base);
    }
}

/// Mount points of all cgroup hierarchies (v1 and v2).
pub fn cgroup_hierarchies() -> Vec<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    info.lines()
        .filter_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let fstype = right.split(' ').next()?;
            (fstype == "cgroup" || fstype == "cgroup2")
                .then(|| PathBuf::from(left.split(' ').nth(4).unwrap()))
        })
        .collect()
}

/// A jailed probe that has reported and waits for its stdin to close.
pub struct Running {
    child: Option<Child>,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    pub report: Vec<String>,
}

impl Running {
    /// The value of the probe's `key=` line.
    pub fn value(&self, key: &str) -> String {
        let prefix = format!("{key}=");
        self.report
            .iter()
            .find_map(|l| l.strip_prefix(&prefix))
            .unwrap_or_else(|| panic!("no `{key}=` in {:?}", self.report))
            .to_string()
    }

    /// The jailer's own process (which becomes the probe unless it forked).
    pub fn jailer_pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).expect("child")
    }

    /// Waits for the jailer to exit (it does so after forking) and returns its status.
    pub fn wait_jailer(&mut self) -> std::process::ExitStatus {
        self.child.as_mut().expect("child").wait().expect("wait")
    }

    /// Lets the probe exit and waits until it has (its stdout closes).
    pub fn finish(mut self) {
        drop(self.stdin.take());
        if let Some(mut c) = self.child.take() {
            let _ = c.wait();
        }
        // The probe may be a grandchild (after a fork): wait for its stdout to close.
        loop {
            match self.lines.recv_timeout(TIMEOUT) {
                Ok(_) => continue,
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Err(e) => panic!("probe did not exit: {e}"),
            }
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        drop(self.stdin.take());
        if let Some(mut c) = self.child.take() {
            let _ = c.wait();
        }
    }
}

/// A field of /proc/PID/status, e.g. `CapEff`.
pub fn status_field(pid: u32, field: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .unwrap_or_else(|| panic!("no {field} in status"))
        .trim()
        .to_string()
}

/// Runs the jailer with `args`, expecting failure; returns its stderr.
pub fn jailer_fails(args: &[&str]) -> String {
    let out = Command::new(JAILER).args(args).output().unwrap();
    assert!(!out.status.success(), "jailer {args:?} should fail");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A network namespace made with `ip netns add`, deleted on drop.
pub struct Netns(pub String);

impl Netns {
    pub fn new(tag: &str) -> Netns {
        let name = unique(tag);
        let ok = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .unwrap();
        assert!(ok.success(), "ip netns add {name}");
        Netns(name)
    }

    pub fn path(&self) -> String {
        format!("/var/run/netns/{}", self.0)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

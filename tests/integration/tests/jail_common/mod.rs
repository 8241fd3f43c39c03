//! Helpers for the jailer tests: a jail for one static xenia (files placed in its root,
//! everything removed on drop), network namespaces, and the /proc views of a jailed process.

// A test helper reports a broken environment or a failed step by failing the test.
#![allow(dead_code, clippy::panic, clippy::print_stderr)]

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use xenia_integration_tests::{jailer_binary, static_xenia, TempDir, Xenia, BOOT_TIMEOUT};

/// The exec file's name inside the jail (the jail lives under `<base>/xenia/<id>`).
pub const EXEC_NAME: &str = "xenia";

/// A name unique per test and test process: usable as jail id, cgroup and netns name.
pub fn unique(tag: &str) -> String {
    format!("xj{}-{tag}", std::process::id())
}

/// Mount point of the cgroup v1 hierarchy that holds `controller`, if mounted.
pub fn v1_hierarchy(controller: &str) -> Option<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        let mut r = right.split(' ');
        let fstype = r.next()?;
        let super_opts = r.nth(1)?;
        (fstype == "cgroup" && super_opts.split(',').any(|o| o == controller))
            .then(|| left.split(' ').nth(4).map(PathBuf::from))
            .flatten()
    })
}

/// Mount points of every cgroup hierarchy (v1 and v2).
pub fn cgroup_hierarchies() -> Vec<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    info.lines()
        .filter_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let fstype = right.split(' ').next()?;
            (fstype == "cgroup" || fstype == "cgroup2")
                .then(|| left.split(' ').nth(4).map(PathBuf::from))
                .flatten()
        })
        .collect()
}

/// A field of `/proc/<pid>/status`, e.g. `CapEff`.
pub fn status_field(pid: u32, field: &str) -> String {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .unwrap_or_else(|| panic!("no {field} in {path}"))
        .trim()
        .to_owned()
}

/// PF_USER_WORKER: a kernel task inside the process (KVM's workers), running no xenia code.
const PF_USER_WORKER: u64 = 0x4000;

/// `(name, Seccomp mode)` of every thread of `pid` that runs xenia code.
pub fn thread_seccomp(pid: u32) -> Vec<(String, String)> {
    let dir = format!("/proc/{pid}/task");
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{dir}: {e}")) {
        let Ok(entry) = entry else { continue };
        let task = entry.path();
        // A thread may end between the listing and the reads: skip it then.
        let (Ok(comm), Ok(status), Ok(stat)) = (
            std::fs::read_to_string(task.join("comm")),
            std::fs::read_to_string(task.join("status")),
            std::fs::read_to_string(task.join("stat")),
        ) else {
            continue;
        };
        let flags = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(6))
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0);
        if flags & PF_USER_WORKER != 0 {
            continue;
        }
        let mode = status
            .lines()
            .find_map(|l| l.strip_prefix("Seccomp:"))
            .map(|v| v.trim().to_owned())
            .unwrap_or_default();
        out.push((comm.trim_end().to_owned(), mode));
    }
    out.sort();
    out
}

/// Polls until every thread of `pid` runs under a filter (the VMM thread installs its own
/// just after the vCPUs start); returns the last view.
pub fn wait_all_filtered(pid: u32) -> Vec<(String, String)> {
    let deadline = Instant::now() + BOOT_TIMEOUT;
    loop {
        let now = thread_seccomp(pid);
        if now.iter().all(|(_, m)| m == "2") || Instant::now() > deadline {
            return now;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A network namespace made with `ip netns add`, deleted (with its taps) on drop.
pub struct Netns(pub String);

impl Netns {
    pub fn new(tag: &str) -> Netns {
        let name = unique(tag);
        let out = ip(&["netns", "add", &name]);
        assert!(out.status.success(), "ip netns add {name}: {out:?}");
        Netns(name)
    }

    pub fn path(&self) -> String {
        format!("/var/run/netns/{}", self.0)
    }

    /// What `readlink /proc/<pid>/ns/net` shows for a process inside this namespace.
    pub fn link(&self) -> String {
        let meta = std::fs::metadata(self.path()).expect("netns file");
        format!("net:[{}]", meta.ino())
    }

    /// Runs `ip ARGS` inside the namespace.
    pub fn ip(&self, args: &[&str]) -> Output {
        let mut all = vec!["-n", self.0.as_str()];
        all.extend_from_slice(args);
        ip(&all)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.0]);
    }
}

fn ip(args: &[&str]) -> Output {
    Command::new("ip").args(args).output().expect("run ip")
}

/// One jail for a static xenia. Dropping it kills the jailed xenia (if still running),
/// then removes the jail with `xenia-jailer --cleanup`, the parent cgroup and the base dir.
pub struct Jail {
    pub id: String,
    pub uid: u32,
    pub base: PathBuf,
    pub parent_cgroup: String,
    /// The jailed xenia's host pid, once known.
    pid: Option<u32>,
    /// Whether the jailer forked, so that xenia is not the child the [`Xenia`] handle kills.
    forked: bool,
}

impl Jail {
    /// A jail for `uid` (also its gid) under a fresh base directory; `root()` exists, owned by
    /// the uid, so files can be placed before the jailer runs.
    pub fn new(tag: &str, uid: u32) -> Jail {
        Self::in_base(
            tag,
            uid,
            std::env::temp_dir().join(unique(&format!("{tag}-jails"))),
        )
    }

    /// Like [`Jail::new`] under a given base (jails that share a base share a filesystem).
    pub fn in_base(tag: &str, uid: u32, base: PathBuf) -> Jail {
        let jail = Jail {
            id: unique(tag),
            uid,
            base,
            parent_cgroup: format!("xenia-it-{}", unique(tag)),
            pid: None,
            forked: false,
        };
        let root = jail.root();
        std::fs::create_dir_all(&root).unwrap_or_else(|e| panic!("{}: {e}", root.display()));
        jail.own(&root, 0o700);
        jail
    }

    pub fn jail_dir(&self) -> PathBuf {
        self.base.join(EXEC_NAME).join(&self.id)
    }

    pub fn root(&self) -> PathBuf {
        self.jail_dir().join("root")
    }

    fn own(&self, path: &Path, mode: u32) {
        std::os::unix::fs::chown(path, Some(self.uid), Some(self.uid))
            .unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
    }

    /// Writes `contents` to `/<name>` in the jail, owned by the tenant, mode 0600.
    pub fn put(&self, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let path = self.root().join(name);
        std::fs::write(&path, contents).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        self.own(&path, 0o600);
        path
    }

    /// Copies a host file to `/<name>` in the jail (a copy: chowning a hard link would
    /// change the host's file).
    pub fn copy_in(&self, from: &Path, name: &str) -> PathBuf {
        let path = self.root().join(name);
        std::fs::copy(from, &path)
            .unwrap_or_else(|e| panic!("copy {} -> {}: {e}", from.display(), path.display()));
        self.own(&path, 0o600);
        path
    }

    /// A sparse zero disk image `/<name>` of `bytes` bytes in the jail.
    pub fn disk(&self, name: &str, bytes: u64) -> PathBuf {
        let path = self.root().join(name);
        let f = std::fs::File::create(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        f.set_len(bytes).expect("size the disk image");
        self.own(&path, 0o600);
        path
    }

    /// The jailer's arguments for this jail: common flags, `extra`, then `--` and `xenia_args`.
    pub fn args(&self, extra: &[&str], xenia_args: &[&str]) -> Vec<String> {
        let uid = self.uid.to_string();
        let mut args: Vec<String> = vec![
            "--id".into(),
            self.id.clone(),
            "--exec-file".into(),
            static_xenia().to_string_lossy().into_owned(),
            "--uid".into(),
            uid.clone(),
            "--gid".into(),
            uid,
            "--chroot-base-dir".into(),
            self.base.to_string_lossy().into_owned(),
            "--parent-cgroup".into(),
            self.parent_cgroup.clone(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        args.push("--".into());
        args.extend(xenia_args.iter().map(|s| s.to_string()));
        args
    }

    /// Starts the jailer; its stdout (xenia's console, passed through) is read by the handle.
    /// With `--new-pid-ns` the jailer forks and exits: [`Jail::xenia_pid`] finds the real pid.
    pub fn start(&mut self, extra: &[&str], xenia_args: &[&str]) -> Xenia {
        let x = Xenia::spawn_program(
            &jailer_binary(),
            &self.args(extra, xenia_args),
            TempDir::new(),
        );
        self.forked = extra.contains(&"--new-pid-ns") || extra.contains(&"--daemonize");
        // Without a fork the jailer process becomes xenia.
        self.pid = (!self.forked).then(|| x.pid());
        x
    }

    /// The jailed xenia's host pid: the jailer's own, or the one the forking jailer wrote to
    /// `/<exec-name>.pid` in the jail.
    pub fn xenia_pid(&mut self, x: &Xenia) -> u32 {
        if let Some(pid) = self.pid {
            return pid;
        }
        let file = self.root().join(format!("{EXEC_NAME}.pid"));
        let deadline = Instant::now() + BOOT_TIMEOUT;
        loop {
            if let Some(pid) = std::fs::read_to_string(&file)
                .ok()
                .and_then(|s| s.trim().parse::<u32>().ok())
            {
                self.pid = Some(pid);
                return pid;
            }
            assert!(
                Instant::now() < deadline,
                "no pid in {}; stderr:\n{}",
                file.display(),
                x.stderr()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Kills the jailed xenia (SIGKILL) and waits until it has exited: its console closed and
    /// it is gone or a zombie (its files, the jail's lock among them, are closed then).
    pub fn kill(&mut self, x: &mut Xenia) {
        let pid = self.pid.take();
        if let Some(pid) = pid {
            // SAFETY: kill(2) on the pid of the process this jail started.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
        }
        x.wait_exit(BOOT_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
        let Some(pid) = pid else { return };
        let deadline = Instant::now() + BOOT_TIMEOUT;
        while std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
            let state = stat
                .rsplit_once(')')
                .and_then(|(_, r)| r.split_whitespace().next());
            !matches!(state, Some("Z" | "X"))
        }) {
            assert!(Instant::now() < deadline, "{pid} still runs after SIGKILL");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// `xenia-jailer --cleanup` for this jail.
    pub fn cleanup(&self) -> Output {
        Command::new(jailer_binary())
            .args(["--cleanup", "--id", &self.id, "--exec-file"])
            .arg(static_xenia())
            .arg("--chroot-base-dir")
            .arg(&self.base)
            .args(["--parent-cgroup", &self.parent_cgroup])
            .output()
            .expect("run xenia-jailer --cleanup")
    }

    /// Cgroup directories of this jail (`<hierarchy>/<parent>/<id>`) that still exist.
    pub fn leftover_cgroups(&self) -> Vec<PathBuf> {
        cgroup_hierarchies()
            .into_iter()
            .map(|h| h.join(&self.parent_cgroup).join(&self.id))
            .filter(|p| p.exists())
            .collect()
    }
}

impl Drop for Jail {
    fn drop(&mut self) {
        // A forked xenia is no child of the test (the handle kills only the jailer process).
        if let Some(pid) = self.pid.take().filter(|_| self.forked) {
            // SAFETY: kill(2) on the pid of the process this jail started.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
        }
        // The lock is released when the killed process's files close: retry for a while.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let out = self.cleanup();
            if out.status.success() {
                break;
            }
            if Instant::now() > deadline {
                eprintln!(
                    "cleanup of jail {}: {}",
                    self.id,
                    String::from_utf8_lossy(&out.stderr)
                );
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        for hierarchy in cgroup_hierarchies() {
            let _ = std::fs::remove_dir(hierarchy.join(&self.parent_cgroup).join(&self.id));
            let _ = std::fs::remove_dir(hierarchy.join(&self.parent_cgroup));
        }
        let _ = std::fs::remove_dir_all(self.jail_dir());
        let _ = std::fs::remove_dir(self.base.join(EXEC_NAME));
        let _ = std::fs::remove_dir(&self.base);
    }
}

/// Whether `uid` may open `path` for reading (checked by `setpriv` as that uid, no groups).
pub fn readable_as(uid: u32, path: &Path) -> Result<(), String> {
    let id = uid.to_string();
    let out = Command::new("setpriv")
        .args(["--reuid", &id, "--regid", &id, "--clear-groups", "--"])
        .arg("head")
        .args(["-c", "1"])
        .arg(path)
        .output()
        .expect("run setpriv");
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
    }
}

//! cgroups: `<hierarchy>/<parent-cgroup>/<id>` with the `--cgroup FILE=VALUE` limits.
//!
//! v2: one hierarchy; the controllers the files need are enabled in
//! `cgroup.subtree_control` of every ancestor. v1: each file goes to the
//! hierarchy of its controller (`cpuset.cpus` → the cpuset hierarchy); new
//! cpuset levels inherit `cpuset.cpus`/`cpuset.mems` from their parent, since
//! an empty cpuset cannot hold a process. No `--cgroup` means no cgroup (as
//! Firecracker).

use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::args::{CgroupSetting, CgroupVersion};
use crate::chroot::Rollback;

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("read /proc/self/mountinfo: {0}")]
    MountInfo(io::Error),
    #[error(
        "no cgroup v2 hierarchy is mounted (looked for a cgroup2 mount in /proc/self/mountinfo)"
    )]
    NoV2,
    #[error(
        "no cgroup v1 hierarchy has the `{controller}` controller (needed for --cgroup {file})"
    )]
    NoV1Controller { controller: String, file: String },
    #[error(
        "controller `{controller}` (needed for --cgroup {file}) is not available in the cgroup v2 \
         hierarchy {root} (it offers: {offered}); it may be bound to a v1 hierarchy: try --cgroup-version 1"
    )]
    NoV2Controller {
        controller: String,
        file: String,
        root: PathBuf,
        offered: String,
    },
    #[error("create cgroup {path}: {source}")]
    Create { path: PathBuf, source: io::Error },
    #[error("read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("write `{value}` to {path}: {source}")]
    Write {
        path: PathBuf,
        value: String,
        source: io::Error,
    },
    #[error("remove cgroup {path}: {source}")]
    Remove { path: PathBuf, source: io::Error },
}

/// A cgroup hierarchy mounted on this host.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Hierarchy {
    mount_point: PathBuf,
    /// v1: the controllers bound to it; v2: empty (see `cgroup.controllers`).
    controllers: Vec<String>,
    v2: bool,
}

fn unescape_mountinfo(field: &str) -> String {
    // The kernel escapes space, tab, newline and backslash as \ooo.
    let mut out = Vec::new();
    let bytes = field.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 4 <= bytes.len() {
            let octal = std::str::from_utf8(&bytes[i + 1..i + 4]).ok();
            if let Some(v) = octal.and_then(|o| u8::from_str_radix(o, 8).ok()) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn parse_mountinfo(text: &str) -> Vec<Hierarchy> {
    let mut found = Vec::new();
    for line in text.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let Some(mount_point) = left.split(' ').nth(4) else {
            continue;
        };
        let mut right = right.split(' ');
        let (Some(fstype), Some(_source), Some(options)) =
            (right.next(), right.next(), right.next())
        else {
            continue;
        };
        let mount_point = PathBuf::from(unescape_mountinfo(mount_point));
        match fstype {
            "cgroup2" => found.push(Hierarchy {
                mount_point,
                controllers: Vec::new(),
                v2: true,
            }),
            "cgroup" => found.push(Hierarchy {
                mount_point,
                controllers: options
                    .split(',')
                    .filter(|o| !o.contains('=') && !["rw", "ro"].contains(o))
                    .map(str::to_string)
                    .collect(),
                v2: false,
            }),
            _ => {}
        }
    }
    found
}

fn hierarchies() -> Result<Vec<Hierarchy>, CgroupError> {
    let text = fs::read_to_string("/proc/self/mountinfo").map_err(CgroupError::MountInfo)?;
    Ok(parse_mountinfo(&text))
}

fn read(path: &Path) -> Result<String, CgroupError> {
    fs::read_to_string(path).map_err(|source| CgroupError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Writes a control file; never creates one (a typo must fail, not make a file).
fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    OpenOptions::new()
        .write(true)
        .open(path)
        .and_then(|mut f| f.write_all(value.as_bytes()))
        .map_err(|source| CgroupError::Write {
            path: path.to_path_buf(),
            value: value.to_string(),
            source,
        })
}

/// The levels from the hierarchy root down to the leaf, root excluded.
fn levels(mount_point: &Path, relative: &Path) -> Vec<PathBuf> {
    let mut cur = mount_point.to_path_buf();
    relative
        .components()
        .map(|c| {
            cur.push(c);
            cur.clone()
        })
        .collect()
}

fn create_levels(levels: &[PathBuf], rollback: &mut Rollback) -> Result<(), CgroupError> {
    for dir in levels {
        match fs::create_dir(dir) {
            Ok(()) => rollback.dir(dir.clone()),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(source) => {
                return Err(CgroupError::Create {
                    path: dir.clone(),
                    source,
                })
            }
        }
    }
    Ok(())
}

/// Creates the cgroups and writes the limits; returns the `cgroup.procs` files
/// the process must join (see [`join`]).
pub fn setup(
    version: CgroupVersion,
    parent: &Path,
    id: &str,
    settings: &[CgroupSetting],
    rollback: &mut Rollback,
) -> Result<Vec<PathBuf>, CgroupError> {
    if settings.is_empty() {
        return Ok(Vec::new());
    }
    let relative = parent.join(id);
    let all = hierarchies()?;
    match version {
        CgroupVersion::V2 => {
            let h = all.iter().find(|h| h.v2).ok_or(CgroupError::NoV2)?;
            setup_v2(&h.mount_point, &relative, settings, rollback).map(|p| vec![p])
        }
        CgroupVersion::V1 => setup_v1(&all, &relative, settings, rollback),
    }
}

fn setup_v2(
    root: &Path,
    relative: &Path,
    settings: &[CgroupSetting],
    rollback: &mut Rollback,
) -> Result<PathBuf, CgroupError> {
    let offered = read(&root.join("cgroup.controllers"))?;
    let mut needed: Vec<&str> = Vec::new();
    for s in settings {
        let c = s.controller();
        // `cgroup.*` files are the core's own: no controller to enable.
        if c == "cgroup" || needed.contains(&c) {
            continue;
        }
        if !offered.split_whitespace().any(|o| o == c) {
            return Err(CgroupError::NoV2Controller {
                controller: c.to_string(),
                file: s.file.clone(),
                root: root.to_path_buf(),
                offered: offered.trim().to_string(),
            });
        }
        needed.push(c);
    }
    let levels = levels(root, relative);
    create_levels(&levels, rollback)?;
    // A controller is usable in a cgroup only when every ancestor delegates it.
    let ancestors =
        std::iter::once(root.to_path_buf()).chain(levels[..levels.len() - 1].iter().cloned());
    for dir in ancestors {
        let control = dir.join("cgroup.subtree_control");
        let enabled = read(&control)?;
        for c in &needed {
            if !enabled.split_whitespace().any(|e| e == *c) {
                write(&control, &format!("+{c}"))?;
            }
        }
    }
    let leaf = root.join(relative);
    for s in settings {
        write(&leaf.join(&s.file), &s.value)?;
    }
    Ok(leaf.join("cgroup.procs"))
}

fn setup_v1(
    all: &[Hierarchy],
    relative: &Path,
    settings: &[CgroupSetting],
    rollback: &mut Rollback,
) -> Result<Vec<PathBuf>, CgroupError> {
    // Group the files by hierarchy, keeping command-line order within each.
    let mut by_mount: BTreeMap<PathBuf, Vec<&CgroupSetting>> = BTreeMap::new();
    for s in settings {
        let c = s.controller();
        let h = all
            .iter()
            .find(|h| !h.v2 && h.controllers.iter().any(|hc| hc == c))
            .ok_or_else(|| CgroupError::NoV1Controller {
                controller: c.to_string(),
                file: s.file.clone(),
            })?;
        by_mount.entry(h.mount_point.clone()).or_default().push(s);
    }
    let mut procs = Vec::new();
    for (mount_point, files) in by_mount {
        let levels = levels(&mount_point, relative);
        create_levels(&levels, rollback)?;
        if mount_point.join("cpuset.cpus").exists() {
            inherit_cpuset(&mount_point, &levels)?;
        }
        let leaf = mount_point.join(relative);
        for s in files {
            write(&leaf.join(&s.file), &s.value)?;
        }
        procs.push(leaf.join("cgroup.procs"));
    }
    Ok(procs)
}

/// A v1 cpuset starts with empty cpus/mems; copy them down from the parent.
fn inherit_cpuset(mount_point: &Path, levels: &[PathBuf]) -> Result<(), CgroupError> {
    let mut parent = mount_point.to_path_buf();
    for dir in levels {
        for file in ["cpuset.mems", "cpuset.cpus"] {
            let own = dir.join(file);
            if read(&own)?.trim().is_empty() {
                let inherited = read(&parent.join(file))?;
                write(&own, inherited.trim())?;
            }
        }
        parent = dir.clone();
    }
    Ok(())
}

/// Moves this process (and so what it execs) into the prepared cgroups.
pub fn join(procs_files: &[PathBuf]) -> Result<(), CgroupError> {
    let pid = std::process::id().to_string();
    procs_files.iter().try_for_each(|p| write(p, &pid))
}

/// Removes `<parent>/<id>` from every mounted hierarchy (for `--cleanup`);
/// returns the cgroups removed. The shared parent is left in place.
pub fn remove(parent: &Path, id: &str) -> Result<Vec<PathBuf>, CgroupError> {
    let mut removed = Vec::new();
    for h in hierarchies()? {
        let leaf = h.mount_point.join(parent).join(id);
        match remove_leaf(&leaf) {
            Ok(()) => removed.push(leaf),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => return Err(CgroupError::Remove { path: leaf, source }),
        }
    }
    Ok(removed)
}

/// How long `--cleanup` waits for the jail's exited process to leave its cgroups.
const DYING_TASKS_WAIT: Duration = Duration::from_secs(5);

/// `rmdir` of a leaf cgroup. The caller has proved through the jail's lock that no jailed
/// process runs any more, but the lock is released when the process closes its files on exit,
/// before the kernel takes it out of its cgroups (later still when it was PID 1 of its own
/// namespace and nobody has reaped it yet): `rmdir` then fails with EBUSY for a moment, even
/// while `cgroup.procs` still lists the dying process. Retry for a bounded time.
fn remove_leaf(leaf: &Path) -> io::Result<()> {
    let deadline = Instant::now() + DYING_TASKS_WAIT;
    loop {
        match fs::remove_dir(leaf) {
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
25 30 0:22 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
26 25 0:23 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu,cpuacct
27 25 0:24 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
28 25 0:25 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd
29 25 0:26 / /sys/fs/cgroup/my\\040unified rw,relatime shared:5 - cgroup2 cgroup2 rw,nsdelegate
";

    #[test]
    fn mountinfo_hierarchies() {
        let h = parse_mountinfo(MOUNTINFO);
        assert_eq!(h.len(), 4);
        assert_eq!(h[0].mount_point, PathBuf::from("/sys/fs/cgroup/cpu"));
        assert_eq!(h[0].controllers, vec!["cpu", "cpuacct"]);
        assert_eq!(h[2].controllers, vec!["xattr"]);
        assert!(h[3].v2);
        assert_eq!(h[3].mount_point, PathBuf::from("/sys/fs/cgroup/my unified"));
    }

    #[test]
    fn levels_walk_down_to_the_leaf() {
        let l = levels(Path::new("/cg"), Path::new("a/b/vm-1"));
        assert_eq!(
            l,
            vec![
                PathBuf::from("/cg/a"),
                PathBuf::from("/cg/a/b"),
                PathBuf::from("/cg/a/b/vm-1")
            ]
        );
    }

    #[test]
    fn unknown_v1_controller_is_named() {
        let h = parse_mountinfo(MOUNTINFO);
        let s = CgroupSetting {
            file: "memory.limit_in_bytes".into(),
            value: "1".into(),
        };
        let e = setup_v1(&h, Path::new("x/y"), &[s], &mut Rollback::default()).unwrap_err();
        assert!(e.to_string().contains("`memory`"), "{e}");
    }
}

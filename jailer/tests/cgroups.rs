//! The jailed probe lands in `<parent-cgroup>/<id>` with the requested limits.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stderr
)]

mod common;

use std::path::Path;

use common::Jail;

fn cgroup_of(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap()
}

fn mount_of(fstype: &str, option: Option<&str>) -> Option<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    info.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        let mut r = right.split(' ');
        let (ty, _, opts) = (r.next()?, r.next()?, r.next()?);
        let wanted = ty == fstype && option.is_none_or(|o| opts.split(',').any(|x| x == o));
        wanted.then(|| left.split(' ').nth(4).unwrap().to_string())
    })
}

fn read(path: impl AsRef<Path>) -> String {
    std::fs::read_to_string(path).unwrap().trim().to_string()
}

#[test]
fn cgroup_v1_limits_per_controller() {
    let (Some(pids), Some(cpuset)) = (
        mount_of("cgroup", Some("pids")),
        mount_of("cgroup", Some("cpuset")),
    ) else {
        eprintln!("skipped: no cgroup v1 pids and cpuset hierarchies on this host");
        return;
    };
    let jail = Jail::new("cg1", 40061);
    let running = jail.start(
        &[
            "--cgroup-version",
            "1",
            "--cgroup",
            "pids.max=17",
            "--cgroup",
            "cpuset.cpus=0",
        ],
        &[],
    );
    let pid = running.jailer_pid();
    let relative = format!("{}/{}", jail.parent_cgroup, jail.id);
    let membership = cgroup_of(pid);
    assert!(
        membership
            .lines()
            .any(|l| l.ends_with(&format!(":pids:/{relative}"))),
        "{membership}"
    );
    assert!(
        membership
            .lines()
            .any(|l| l.ends_with(&format!(":cpuset:/{relative}"))),
        "{membership}"
    );
    assert_eq!(read(format!("{pids}/{relative}/pids.max")), "17");
    assert_eq!(read(format!("{cpuset}/{relative}/cpuset.cpus")), "0");
    // The cpuset memory nodes were inherited, or the process could not have joined.
    assert_eq!(
        read(format!("{cpuset}/{relative}/cpuset.mems")),
        read(format!("{cpuset}/cpuset.mems"))
    );
    running.finish();
    assert!(jail.cleanup().status.success());
    assert!(!Path::new(&format!("{pids}/{relative}")).exists());
}

#[test]
fn cgroup_v2_limits_and_delegated_controller() {
    let Some(root) = mount_of("cgroup2", None) else {
        eprintln!("skipped: no cgroup v2 hierarchy on this host");
        return;
    };
    // Use a controller this host offers in v2 (here often only hugetlb, as the
    // others are bound to v1), plus a core file that needs no controller.
    let offered = read(format!("{root}/cgroup.controllers"));
    let mut flags = vec![
        "--cgroup-version",
        "2",
        "--cgroup",
        "cgroup.max.descendants=3",
    ];
    let limit = match offered
        .split_whitespace()
        .find(|c| ["memory", "pids", "hugetlb"].contains(c))
    {
        Some("memory") => Some(("memory.max", "268435456")),
        Some("pids") => Some(("pids.max", "33")),
        Some("hugetlb") => Some(("hugetlb.2MB.max", "2097152")),
        _ => None,
    };
    let spec = limit.map(|(f, v)| format!("{f}={v}"));
    if let Some(spec) = &spec {
        flags.extend(["--cgroup", spec]);
    }
    let jail = Jail::new("cg2", 40071);
    let running = jail.start(&flags, &[]);
    let pid = running.jailer_pid();
    let relative = format!("{}/{}", jail.parent_cgroup, jail.id);
    let membership = cgroup_of(pid);
    assert!(
        membership.lines().any(|l| l == format!("0::/{relative}")),
        "{membership}"
    );
    assert_eq!(
        read(format!("{root}/{relative}/cgroup.max.descendants")),
        "3"
    );
    if let Some((file, value)) = limit {
        assert_eq!(read(format!("{root}/{relative}/{file}")), value);
        let controller = file.split('.').next().unwrap();
        let parent = read(format!(
            "{root}/{}/cgroup.subtree_control",
            jail.parent_cgroup
        ));
        assert!(
            parent.split_whitespace().any(|c| c == controller),
            "{parent}"
        );
    }
    running.finish();
}

#[test]
fn unavailable_v2_controller_is_a_clear_error() {
    let Some(root) = mount_of("cgroup2", None) else {
        return;
    };
    if read(format!("{root}/cgroup.controllers"))
        .split_whitespace()
        .any(|c| c == "cpu")
    {
        return; // cpu is available here: nothing to refuse.
    }
    let jail = Jail::new("cg2bad", 40081);
    let out = jail
        .command(
            &["--cgroup-version", "2", "--cgroup", "cpu.max=50000 100000"],
            &[],
        )
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("controller `cpu`") && stderr.contains("--cgroup-version 1"),
        "{stderr}"
    );
    assert!(!jail.jail_dir().exists(), "rolled back");
    assert!(!Path::new(&format!("{root}/{}/{}", jail.parent_cgroup, jail.id)).exists());
}

//! Unit tests of argument parsing and validation.

use super::*;

fn args(list: &[&str]) -> Vec<OsString> {
    list.iter().map(OsString::from).collect()
}

/// A path that exists and is a regular file on every Linux machine.
fn exe() -> String {
    std::env::current_exe()
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

fn base(extra: &[&str]) -> Vec<OsString> {
    let exe = exe();
    let mut v = args(&[
        "--id",
        "vm-1",
        "--exec-file",
        &exe,
        "--uid",
        "123",
        "--gid",
        "100",
    ]);
    v.extend(args(extra));
    v
}

fn jail(list: Vec<OsString>) -> JailerArgs {
    match parse(list).unwrap() {
        Parsed::Jail(a) => *a,
        other => panic!("unexpected {other:?}"),
    }
}

fn err(list: Vec<OsString>) -> ArgsError {
    parse(list).unwrap_err()
}

#[test]
fn defaults_match_firecracker() {
    let a = jail(base(&[]));
    assert_eq!(a.action, Action::Run);
    assert_eq!(a.chroot_base, PathBuf::from("/srv/jailer"));
    assert_eq!(a.cgroup_version, CgroupVersion::V1);
    assert_eq!(a.parent_cgroup, PathBuf::from(&a.exec_file_name));
    assert_eq!(a.resource_limits, vec![(Resource::OpenFiles, 2048)]);
    assert!(!a.daemonize && !a.new_pid_ns && !a.userfaultfd);
    assert!(a.exec_args.is_empty());
    assert_eq!((a.uid, a.gid), (123, 100));
}

#[test]
fn all_flags_and_exec_args() {
    let a = jail(base(&[
        "--chroot-base-dir=/tmp/j",
        "--netns",
        "/var/run/netns/t",
        "--cgroup-version",
        "2",
        "--cgroup",
        "cpu.max=50000 100000",
        "--cgroup",
        "memory.max=1G",
        "--parent-cgroup",
        "a/b",
        "--resource-limit",
        "fsize=100",
        "--resource-limit",
        "no-file=64",
        "--daemonize",
        "--new-pid-ns",
        "--userfaultfd",
        "--",
        "--api-sock",
        "/run/api.sock",
        "--id",
    ]));
    assert_eq!(a.chroot_base, PathBuf::from("/tmp/j"));
    assert_eq!(a.netns, Some(PathBuf::from("/var/run/netns/t")));
    assert_eq!(a.cgroup_version, CgroupVersion::V2);
    assert_eq!(a.cgroups.len(), 2);
    assert_eq!(a.cgroups[0].file, "cpu.max");
    assert_eq!(a.cgroups[0].value, "50000 100000");
    assert_eq!(a.cgroups[1].controller(), "memory");
    assert_eq!(a.parent_cgroup, PathBuf::from("a/b"));
    assert_eq!(
        a.resource_limits,
        vec![
            (Resource::OpenFiles, 2048),
            (Resource::FileSize, 100),
            (Resource::OpenFiles, 64)
        ]
    );
    assert!(a.daemonize && a.new_pid_ns && a.userfaultfd);
    assert_eq!(a.exec_args, args(&["--api-sock", "/run/api.sock", "--id"]));
}

#[test]
fn bad_ids() {
    for id in ["", "a/b", "..", "a.b", "vm_1", &"x".repeat(65)] {
        let exe = exe();
        let e = err(args(&[
            "--id",
            id,
            "--exec-file",
            &exe,
            "--uid",
            "1",
            "--gid",
            "1",
        ]));
        assert!(matches!(e, ArgsError::BadId(_)), "{id}: {e}");
    }
    assert_eq!(jail(base(&[])).id, "vm-1");
    let exe = exe();
    let long = "a".repeat(64);
    let a = jail(args(&[
        "--id",
        &long,
        "--exec-file",
        &exe,
        "--uid",
        "1",
        "--gid",
        "1",
    ]));
    assert_eq!(a.id, long);
}

#[test]
fn root_and_bad_ids_refused() {
    let exe = exe();
    let with = |uid: &str, gid: &str| {
        err(args(&[
            "--id",
            "x",
            "--exec-file",
            &exe,
            "--uid",
            uid,
            "--gid",
            gid,
        ]))
    };
    assert_eq!(with("0", "5"), ArgsError::RootId("uid"));
    assert_eq!(with("5", "0"), ArgsError::RootId("gid"));
    assert!(matches!(with("-1", "5"), ArgsError::BadIdNumber { .. }));
    assert!(matches!(
        with("4294967295", "5"),
        ArgsError::BadIdNumber { .. }
    ));
    assert!(with("0", "5").to_string().contains("must not run as root"));
}

#[test]
fn exec_file_checks() {
    let e = err(args(&[
        "--id",
        "x",
        "--exec-file",
        "/nonexistent/xenia",
        "--uid",
        "1",
        "--gid",
        "1",
    ]));
    assert!(
        e.to_string().contains("/nonexistent/xenia"),
        "message names the path: {e}"
    );
    let e = err(args(&[
        "--id",
        "x",
        "--exec-file",
        "/tmp",
        "--uid",
        "1",
        "--gid",
        "1",
    ]));
    assert!(e.to_string().contains("not a regular file"), "{e}");
    let e = err(args(&[
        "--id",
        "x",
        "--exec-file",
        "/",
        "--uid",
        "1",
        "--gid",
        "1",
    ]));
    assert!(e.to_string().contains("no file name"), "{e}");
}

#[test]
fn bad_cgroup_specs() {
    for spec in [
        "cpu.max",
        "=1",
        "cpu.max=",
        "../cpu.max=1",
        "a/cpu.max=1",
        "cpumax=1",
        ".max=1",
        "cpu..max=1",
    ] {
        let e = err(base(&["--cgroup", spec]));
        assert!(matches!(e, ArgsError::BadCgroup { .. }), "{spec}: {e}");
    }
}

#[test]
fn bad_paths_and_versions() {
    assert!(matches!(
        err(base(&["--chroot-base-dir", "rel"])),
        ArgsError::BadPath { .. }
    ));
    assert!(matches!(
        err(base(&["--chroot-base-dir", "/srv/../etc"])),
        ArgsError::BadPath { .. }
    ));
    assert!(matches!(
        err(base(&["--parent-cgroup", "/abs"])),
        ArgsError::BadPath { .. }
    ));
    assert!(matches!(
        err(base(&["--parent-cgroup", "a/../b"])),
        ArgsError::BadPath { .. }
    ));
    assert!(matches!(
        err(base(&["--netns", "relative"])),
        ArgsError::BadPath { .. }
    ));
    assert_eq!(
        err(base(&["--cgroup-version", "3"])),
        ArgsError::BadCgroupVersion("3".into())
    );
}

#[test]
fn bad_resource_limits() {
    for spec in ["nofile=1", "fsize", "fsize=-1", "no-file=lots"] {
        assert!(matches!(
            err(base(&["--resource-limit", spec])),
            ArgsError::BadResourceLimit { .. }
        ));
    }
}

#[test]
fn unknown_missing_and_duplicate_flags() {
    assert_eq!(
        err(base(&["--seccomp-level", "0"])),
        ArgsError::UnknownFlag("--seccomp-level".into())
    );
    assert_eq!(
        err(base(&["stray"])),
        ArgsError::UnknownFlag("stray".into())
    );
    assert_eq!(err(base(&["--netns"])), ArgsError::MissingValue("--netns"));
    assert_eq!(err(base(&["--id", "y"])), ArgsError::Duplicate("--id"));
    assert_eq!(
        err(base(&["--daemonize", "--daemonize"])),
        ArgsError::Duplicate("--daemonize")
    );
    assert_eq!(
        err(args(&["--id", "x"])),
        ArgsError::Required("--exec-file")
    );
    assert_eq!(parse(args(&["--help"])).unwrap(), Parsed::Help);
}

#[test]
fn cleanup_needs_only_id_and_exec_name() {
    let a = jail(args(&[
        "--cleanup",
        "--id",
        "vm-2",
        "--exec-file",
        "/gone/xenia",
    ]));
    assert_eq!(a.action, Action::Cleanup);
    assert_eq!(a.exec_file_name, "xenia");
}

//! Bad command lines: non-zero exit and a message that names the problem.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stderr
)]

mod common;

use std::process::Command;

use common::{jailer_fails, probe, JAILER};

fn with(id: &str, uid: &str, extra: &[&str]) -> String {
    let exe = probe().to_string_lossy().into_owned();
    let mut args = vec![
        "--id",
        id,
        "--exec-file",
        &exe,
        "--uid",
        uid,
        "--gid",
        "40100",
    ];
    args.extend(extra);
    args.push("--chroot-base-dir");
    let base = format!("{}/jails-bad-input", env!("CARGO_TARGET_TMPDIR"));
    args.push(&base);
    let err = jailer_fails(&args);
    assert!(
        !std::path::Path::new(&base).exists(),
        "bad input must not create anything"
    );
    err
}

#[test]
fn bad_ids_are_refused() {
    for id in ["a/b", "..", "../../etc", &"x".repeat(65), ""] {
        let err = with(id, "40100", &[]);
        assert!(err.contains("invalid --id"), "{id}: {err}");
    }
}

#[test]
fn uid_and_gid_0_are_refused() {
    let err = with("vm-1", "0", &[]);
    assert!(err.contains("refusing --uid 0"), "{err}");
    let exe = probe().to_string_lossy().into_owned();
    let err = jailer_fails(&[
        "--id",
        "vm",
        "--exec-file",
        &exe,
        "--uid",
        "5",
        "--gid",
        "0",
    ]);
    assert!(err.contains("refusing --gid 0"), "{err}");
}

#[test]
fn missing_exec_file_is_named() {
    let err = jailer_fails(&[
        "--id",
        "vm",
        "--exec-file",
        "/no/such/xenia",
        "--uid",
        "5",
        "--gid",
        "5",
    ]);
    assert!(
        err.contains("/no/such/xenia") && err.contains("No such file"),
        "{err}"
    );
}

#[test]
fn dynamically_linked_exec_file_is_refused() {
    let base = format!("{}/jails-dynamic", env!("CARGO_TARGET_TMPDIR"));
    let err = jailer_fails(&[
        "--id",
        "vm",
        "--exec-file",
        "/bin/true",
        "--uid",
        "5",
        "--gid",
        "5",
        "--chroot-base-dir",
        &base,
    ]);
    assert!(
        err.contains("dynamically linked") && err.contains("/bin/true"),
        "{err}"
    );
    assert!(!std::path::Path::new(&base).exists());
}

#[test]
fn bad_cgroup_specs_are_refused() {
    for spec in ["cpu.max", "../x.y=1", "a/b.c=1", "nodot=1"] {
        let err = with("vm-1", "40100", &["--cgroup", spec]);
        assert!(err.contains("invalid --cgroup"), "{spec}: {err}");
    }
}

#[test]
fn bad_resource_limit_is_refused() {
    let err = with("vm-1", "40100", &["--resource-limit", "stack=1"]);
    assert!(err.contains("invalid --resource-limit"), "{err}");
}

#[test]
fn unknown_flag_is_refused_with_usage() {
    let err = with("vm-1", "40100", &["--seccomp-level", "2"]);
    assert!(
        err.contains("unknown argument `--seccomp-level`") && err.contains("usage:"),
        "{err}"
    );
}

#[test]
fn non_root_is_refused() {
    let exe = probe().to_string_lossy().into_owned();
    let out = Command::new("setpriv")
        .args([
            "--reuid",
            "40100",
            "--regid",
            "40100",
            "--clear-groups",
            JAILER,
        ])
        .args([
            "--id",
            "vm",
            "--exec-file",
            &exe,
            "--uid",
            "5",
            "--gid",
            "5",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("must run as root"), "{err}");
}

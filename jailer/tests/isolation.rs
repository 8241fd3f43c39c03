//! Jails the static probe and checks the box from outside, through /proc.
//! These tests need root (the jailer refuses to run otherwise).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stderr
)]

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::Command;

use common::{status_field, Jail, Netns, PROBE_NAME};

#[test]
fn probe_runs_as_tenant_without_privileges_in_its_own_root() {
    let jail = Jail::new("ids", 40001);
    let running = jail.start(
        &["--resource-limit", "fsize=1048576"],
        &["/etc/shadow", "/dev/kvm", "/dev/net/tun", "/"],
    );
    // Without forking, the jailer process became the probe.
    let pid = running.jailer_pid();
    assert_eq!(running.value("pid"), pid.to_string());
    assert_eq!(status_field(pid, "Uid"), "40001\t40001\t40001\t40001");
    assert_eq!(status_field(pid, "Gid"), "40001\t40001\t40001\t40001");
    assert_eq!(status_field(pid, "Groups"), "");
    assert_eq!(status_field(pid, "CapEff"), "0000000000000000");
    assert_eq!(status_field(pid, "CapPrm"), "0000000000000000");
    assert_eq!(status_field(pid, "CapBnd"), "0000000000000000");
    assert_eq!(status_field(pid, "NoNewPrivs"), "1");
    // Seccomp is a later change: the jailer installs no filter.
    assert_eq!(status_field(pid, "Seccomp"), "0");

    // Its root is the jail, which holds only the copy and the devices.
    // (The link text is "/" from another mount namespace: compare the inodes.)
    let seen = std::fs::metadata(format!("/proc/{pid}/root")).unwrap();
    let built = std::fs::metadata(jail.root()).unwrap();
    assert_eq!((seen.dev(), seen.ino()), (built.dev(), built.ino()));
    assert_eq!(running.value("root"), format!("dev,{PROBE_NAME}"));
    let dev: Vec<_> = std::fs::read_dir(jail.root().join("dev"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    let mut dev = dev;
    dev.sort();
    assert_eq!(dev, ["kvm", "net"]);
    assert_eq!(
        running.value("open /etc/shadow"),
        format!("err {}", libc::ENOENT)
    );
    assert_eq!(running.value("open /dev/kvm"), "ok");
    assert_eq!(running.value("open /dev/net/tun"), "ok");
    assert_eq!(running.value("open /"), "ok");
    // The arguments after `--` follow `--id ID` and the launch's start times (Firecracker's
    // jailer's flags), which are numbers of microseconds.
    let argv = running.value("argv");
    let words: Vec<&str> = argv.split(' ').collect();
    assert_eq!(words.len(), 12, "{argv}");
    assert_eq!(words[..2], ["--id", jail.id.as_str()], "{argv}");
    for (i, flag) in [
        "--start-time-us",
        "--start-time-cpu-us",
        "--parent-cpu-time-us",
    ]
    .into_iter()
    .enumerate()
    {
        assert_eq!(words[2 + 2 * i], flag, "{argv}");
        assert!(words[3 + 2 * i].parse::<u64>().is_ok(), "{argv}");
    }
    assert_eq!(
        words[8..],
        ["/etc/shadow", "/dev/kvm", "/dev/net/tun", "/"],
        "{argv}"
    );

    // The copy is a real copy (not a link to the host's file), not writable by the tenant.
    let copy = std::fs::metadata(jail.root().join(PROBE_NAME)).unwrap();
    let original = std::fs::metadata(common::probe()).unwrap();
    assert_ne!(copy.ino(), original.ino());
    assert_eq!((copy.uid(), copy.permissions().mode() & 0o777), (0, 0o555));
    let kvm = std::fs::metadata(jail.root().join("dev/kvm")).unwrap();
    assert_eq!(
        (kvm.uid(), kvm.gid(), kvm.mode() & 0o777),
        (40001, 40001, 0o600)
    );
    assert_eq!(kvm.rdev(), libc::makedev(10, 232));

    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = |name: &str| {
        limits
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    };
    assert_eq!(line("Max open files"), "Max open files 2048 2048 files");
    assert_eq!(line("Max file size"), "Max file size 1048576 1048576 bytes");

    // Inherited descriptors above 2 are closed; only the jail lock is kept.
    let fds: Vec<_> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .map(|e| {
            e.unwrap()
                .file_name()
                .into_string()
                .unwrap()
                .parse::<u32>()
                .unwrap()
        })
        .filter(|fd| *fd > 2)
        .collect();
    assert_eq!(fds.len(), 1, "fds above 2: {fds:?}");
    let kept = std::fs::read_link(format!("/proc/{pid}/fd/{}", fds[0])).unwrap();
    assert_eq!(kept, jail.jail_dir().join(".xenia-jailer.lock"));
    let flags = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{}", fds[0])).unwrap();
    let flags = flags
        .lines()
        .find_map(|l| l.strip_prefix("flags:"))
        .unwrap()
        .trim();
    let access = u32::from_str_radix(flags, 8).unwrap() & libc::O_ACCMODE as u32;
    assert_eq!(
        access,
        libc::O_RDONLY as u32,
        "the lock descriptor is read-only"
    );
    running.finish();
}

#[test]
fn tenants_cannot_read_each_others_jail() {
    let a = Jail::new("tenant-a", 40011);
    let b = Jail::new("tenant-b", 40012);
    let run_a = a.start(&[], &[]);
    let a_root = format!("{}/", a.root().display());
    let run_b = b.start(&[], &[&a_root]);
    // From inside jail B, jail A's path does not exist.
    assert_eq!(
        run_b.value(&format!("open {a_root}")),
        format!("err {}", libc::ENOENT)
    );
    // Even outside any jail, uid B may not list A's root.
    let meta = std::fs::metadata(a.root()).unwrap();
    assert_eq!((meta.uid(), meta.mode() & 0o777), (40011, 0o700));
    let out = Command::new("setpriv")
        .args(["--reuid", "40012", "--regid", "40012", "--clear-groups"])
        .arg(common::probe())
        .args(["--id", "x", &a_root])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!("open {a_root}=err {}", libc::EACCES)),
        "{stdout}"
    );
    run_a.finish();
    run_b.finish();
}

#[test]
fn joins_the_given_network_namespace() {
    let ns = Netns::new("net");
    let jail = Jail::new("netns", 40021);
    let running = jail.start(
        &["--netns", &ns.path(), "--userfaultfd"],
        &["/dev/userfaultfd"],
    );
    let pid = running.jailer_pid();
    // --userfaultfd adds the node with the host's device number.
    let host = std::fs::metadata("/dev/userfaultfd").unwrap();
    let node = std::fs::metadata(jail.root().join("dev/userfaultfd")).unwrap();
    assert_eq!(node.rdev(), host.rdev());
    assert_eq!(running.value("open /dev/userfaultfd"), "ok");
    let link = std::fs::read_link(format!("/proc/{pid}/ns/net")).unwrap();
    let ino = std::fs::metadata(ns.path()).unwrap().ino();
    assert_eq!(link.to_string_lossy(), format!("net:[{ino}]"));
    let own = std::fs::read_link("/proc/self/ns/net").unwrap();
    assert_ne!(link, own);
    running.finish();
}

#[test]
fn new_pid_ns_makes_the_probe_pid_1() {
    let jail = Jail::new("pidns", 40031);
    let mut running = jail.start(&["--new-pid-ns"], &[]);
    assert_eq!(running.value("pid"), "1");
    // The child's CPU clock restarted at the fork: it counts from 0, and what the jailer had
    // spent before (building the jail) is passed as the parent's CPU time.
    let argv = running.value("argv");
    let words: Vec<&str> = argv.split(' ').collect();
    assert_eq!(words[4..6], ["--start-time-cpu-us", "0"], "{argv}");
    assert_eq!(words[6], "--parent-cpu-time-us", "{argv}");
    let parent: u64 = words[7].parse().unwrap();
    assert!((1..60_000_000).contains(&parent), "{argv}");
    // The jailer forked, wrote the child's pid into the jail and exited 0.
    assert!(running.wait_jailer().success());
    let pid_file = jail.root().join(format!("{PROBE_NAME}.pid"));
    let host_pid: u32 = std::fs::read_to_string(pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(status_field(host_pid, "NSpid"), format!("{host_pid}\t1"));
    assert_eq!(status_field(host_pid, "Uid"), "40031\t40031\t40031\t40031");
    assert_eq!(status_field(host_pid, "CapEff"), "0000000000000000");
    running.finish();
}

#[test]
fn second_start_with_the_same_id_fails_while_the_first_runs() {
    let jail = Jail::new("twice", 40041);
    let running = jail.start(&[], &[]);
    let out = jail.command(&[], &[]).output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("already running"), "{stderr}");
    // Cleanup also refuses while it runs.
    let cleanup = jail.cleanup();
    assert!(!cleanup.status.success());
    assert!(jail.root().exists(), "the running jail was not touched");
    running.finish();
    // Once it ended, the same id starts again and cleanup removes the jail.
    let again = jail.start(&[], &[]);
    again.finish();
    assert!(jail.cleanup().status.success());
    assert!(!jail.jail_dir().exists());
}

#[test]
fn failed_start_leaves_no_jail_behind() {
    let jail = Jail::new("rollback", 40051);
    let out = jail
        .command(&["--netns", "/var/run/netns/xenia-jailer-no-such-ns"], &[])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("/var/run/netns/xenia-jailer-no-such-ns"),
        "{stderr}"
    );
    assert!(!jail.jail_dir().exists(), "half-built jail left behind");
    // And the same id then works.
    jail.start(&[], &[]).finish();
}

#[test]
fn daemonize_detaches_stdio() {
    let jail = Jail::new("daemon", 40091);
    // The probe would print its report and wait for stdin: daemonized, its
    // stdio is /dev/null, so nothing reaches us and stdin is at EOF at once.
    let out = jail
        .command(&["--daemonize"], &["/dev/kvm"])
        .stdin(std::process::Stdio::piped())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stdout.is_empty() && out.stderr.is_empty());
}

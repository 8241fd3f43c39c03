//! Per-tenant isolation end to end: the real probe guest booted by a static xenia under
//! `xenia-jailer`, checked from the host through /proc, the cgroup tree and the jail.
//! Needs root (the jailer refuses to run otherwise) and cgroup v1 cpuset and pids.

#![allow(clippy::panic)]

#[path = "block_common/mod.rs"]
mod block_common;
mod jail_common;

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use serde_json::json;

use block_common::{field, pattern, read_at, SECTOR};
use jail_common::{readable_as, status_field, v1_hierarchy, wait_all_filtered, Jail, Netns};
use xenia_integration_tests::api::ApiClient;
use xenia_integration_tests::{boot_config, probe, probe_args, Xenia, BOOT_TIMEOUT};

/// A config file for the probe at `/probe.elf` inside the jail.
fn jailed_config(cmds: &str, drives: serde_json::Value) -> serde_json::Value {
    let mut c = boot_config(Path::new("/probe.elf"), &probe_args(cmds), 1, 64);
    c["drives"] = drives;
    c
}

/// The probe and `config` placed in the jail as `/probe.elf` and `/vm.json`.
fn provision(jail: &Jail, config: &serde_json::Value) {
    jail.copy_in(&probe().pvh, "probe.elf");
    jail.put("vm.json", config.to_string());
}

fn wait(x: &mut Xenia, needle: &str) -> String {
    x.wait_for_line(needle, BOOT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Asserts that `pid` is the jailed tenant `uid`: ids, no capabilities, no-new-privs, a
/// filter on every thread, and the jail as its root.
fn assert_confined(pid: u32, jail: &Jail) {
    let ids = format!("{0}\t{0}\t{0}\t{0}", jail.uid);
    assert_eq!(status_field(pid, "Uid"), ids);
    assert_eq!(status_field(pid, "Gid"), ids);
    assert_eq!(status_field(pid, "Groups"), "");
    assert_eq!(status_field(pid, "CapEff"), "0000000000000000");
    assert_eq!(status_field(pid, "CapPrm"), "0000000000000000");
    assert_eq!(status_field(pid, "CapBnd"), "0000000000000000");
    assert_eq!(status_field(pid, "NoNewPrivs"), "1");
    let threads = wait_all_filtered(pid);
    assert!(
        // The VMM thread and `vcpu 0` at least (no `io` thread without a virtio device).
        threads.len() >= 2 && threads.iter().all(|(_, mode)| mode == "2"),
        "every thread filtered: {threads:?}"
    );
    assert!(threads.iter().any(|(n, _)| n == "vcpu 0"), "{threads:?}");
    // The link text is "/" seen from another mount namespace: compare the inodes.
    let seen = std::fs::metadata(format!("/proc/{pid}/root")).expect("/proc/<pid>/root");
    let jail_root = std::fs::metadata(jail.root()).expect("jail root");
    assert_eq!(
        (seen.dev(), seen.ino()),
        (jail_root.dev(), jail_root.ino()),
        "root of {pid} is not {}",
        jail.root().display()
    );
}

#[test]
fn jailed_xenia_boots_the_probe_confined_to_its_uid_cgroups_and_netns() {
    let cpuset = v1_hierarchy("cpuset").expect("a cgroup v1 cpuset hierarchy");
    let pids = v1_hierarchy("pids").expect("a cgroup v1 pids hierarchy");
    let netns = Netns::new("boot");
    let mut jail = Jail::new("boot", 10101);
    provision(&jail, &jailed_config("timer,idle", json!([])));
    let ns_path = netns.path();
    let mut x = jail.start(
        &[
            "--cgroup-version",
            "1",
            "--cgroup",
            "cpuset.cpus=0",
            "--cgroup",
            "pids.max=64",
            "--netns",
            &ns_path,
            "--new-pid-ns",
        ],
        &["--no-api", "--config-file", "/vm.json"],
    );
    wait(&mut x, "PROBE-BOOT-OK entry=pvh");
    wait(&mut x, "PROBE idle ok");
    let pid = jail.xenia_pid(&x);
    assert_confined(pid, &jail);

    // Pid 1 of its own pid namespace.
    let nspid = status_field(pid, "NSpid");
    assert_eq!(nspid, format!("{pid}\t1"));
    assert_eq!(
        std::fs::read_link(format!("/proc/{pid}/ns/net"))
            .expect("ns/net")
            .to_string_lossy(),
        netns.link()
    );

    let relative = format!("{}/{}", jail.parent_cgroup, jail.id);
    let membership = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("cgroup");
    for controller in ["cpuset", "pids"] {
        let wanted = format!(":{controller}:/{relative}");
        assert!(
            membership.lines().any(|l| l.ends_with(&wanted)),
            "no `{wanted}` in\n{membership}"
        );
    }
    let read = |p: std::path::PathBuf| {
        std::fs::read_to_string(&p)
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
            .trim()
            .to_owned()
    };
    assert_eq!(read(cpuset.join(&relative).join("cpuset.cpus")), "0");
    assert_eq!(read(pids.join(&relative).join("pids.max")), "64");
    let tasks = read(pids.join(&relative).join("tasks"));
    assert!(
        tasks.lines().any(|t| t == pid.to_string()),
        "{pid} not in the pids cgroup's tasks: {tasks}"
    );

    // While it runs, --cleanup refuses; once it is gone, --cleanup removes jail and cgroups.
    let refused = jail.cleanup();
    assert!(
        !refused.status.success(),
        "cleanup of a running jail: {refused:?}"
    );
    assert!(jail.root().join("probe.elf").exists());
    jail.kill(&mut x);
    let out = jail.cleanup();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!jail.jail_dir().exists(), "the jail dir is left");
    assert_eq!(jail.leftover_cgroups(), Vec::<std::path::PathBuf>::new());
}

#[test]
fn jailed_xenia_writes_and_reads_back_a_drive_inside_the_jail() {
    let mut jail = Jail::new("disk", 10102);
    let image = jail.disk("disk.img", 1 << 20);
    let drives =
        json!([{"drive_id": "data", "path_on_host": "/disk.img", "is_root_device": false}]);
    provision(
        &jail,
        &jailed_config("blk-write:8:16:5,blk-read:8:16:5", drives),
    );
    let mut x = jail.start(
        &["--cgroup-version", "1", "--cgroup", "pids.max=64"],
        &["--no-api", "--config-file", "/vm.json"],
    );
    wait(&mut x, "PROBE-BOOT-OK");
    wait(&mut x, "PROBE-DONE");
    let status = x.wait_exit(BOOT_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(status.code(), Some(0), "stderr:\n{}", x.stderr());
    for cmd in ["blk-write", "blk-read"] {
        let line = x.lines_with(&format!("PROBE {cmd} "));
        assert!(
            line.first()
                .is_some_and(|l| l.starts_with(&format!("PROBE {cmd} ok"))),
            "{cmd}: {line:?}\nconsole:\n{}",
            x.lines.join("\n")
        );
        assert_eq!(line.first().and_then(|l| field(l, "count")), Some("16"));
    }
    // The guest's data reached the image in the jail.
    assert_eq!(read_at(&image, 8 * SECTOR, 16 * SECTOR), pattern(5, 8, 16));
}

#[test]
fn jailed_api_sees_only_the_jail_and_boots_through_the_socket() {
    let mut jail = Jail::new("api", 10103);
    jail.copy_in(&probe().pvh, "probe.elf");
    jail.disk("disk.img", 1 << 20);
    let mut x = jail.start(&[], &["--api-sock", "/api.sock"]);
    let api = ApiClient::new(jail.root().join("api.sock"));
    if let Err(e) = api.wait_ready(BOOT_TIMEOUT) {
        panic!("{e}; stderr:\n{}", x.stderr());
    }
    // The host's /etc/shadow is not in the chroot.
    let shadow = api.expect(
        "PUT",
        "/drives/rootfs",
        r#"{"drive_id": "rootfs", "path_on_host": "/etc/shadow", "is_root_device": true}"#,
        400,
    );
    assert!(
        shadow.fault().contains("/etc/shadow"),
        "fault names the path: {}",
        shadow.fault()
    );
    api.expect(
        "PUT",
        "/drives/data",
        r#"{"drive_id": "data", "path_on_host": "/disk.img", "is_root_device": false}"#,
        204,
    );
    api.expect(
        "PUT",
        "/metrics",
        r#"{"metrics_path": "/metrics.json"}"#,
        204,
    );
    let boot = json!({"kernel_image_path": "/probe.elf", "boot_args": probe_args("blk-write:0:8:3,blk-read:0:8:3,idle")});
    api.expect("PUT", "/boot-source", &boot.to_string(), 204);
    api.expect(
        "PUT",
        "/machine-config",
        r#"{"vcpu_count": 1, "mem_size_mib": 64}"#,
        204,
    );
    api.start_instance(204);
    wait(&mut x, "PROBE-BOOT-OK entry=pvh");
    let read = wait(&mut x, "PROBE blk-read");
    assert!(read.starts_with("PROBE blk-read ok"), "{read}");
    wait(&mut x, "PROBE idle ok");
    let pid = jail.xenia_pid(&x);
    assert_confined(pid, &jail);
    assert_eq!(api.expect("GET", "/", "", 200).json()["state"], "Running");
    // The socket the host sees is the one inside the jail.
    assert!(jail.root().join("api.sock").exists());
    // The jailer passed the launch's start times: the startup metrics cover it.
    api.expect("PUT", "/actions", r#"{"action_type": "FlushMetrics"}"#, 204);
    let text = std::fs::read_to_string(jail.root().join("metrics.json")).expect("metrics file");
    let line: serde_json::Value =
        serde_json::from_str(text.lines().next().unwrap_or_default()).expect("a JSON line");
    let startup = &line["api_server"];
    let wall = startup["process_startup_time_us"].as_u64().unwrap_or(0);
    let cpu = startup["process_startup_time_cpu_us"].as_u64().unwrap_or(0);
    assert!((1..60_000_000).contains(&wall), "{line}");
    assert!((1..60_000_000).contains(&cpu), "{line}");
}

#[test]
fn two_tenants_run_at_once_and_neither_can_open_the_others_files() {
    let base = std::env::temp_dir().join(jail_common::unique("pair-jails"));
    let mut a = Jail::in_base("tenant-a", 10104, base.clone());
    let mut b = Jail::in_base("tenant-b", 10105, base);
    let drives =
        json!([{"drive_id": "data", "path_on_host": "/disk.img", "is_root_device": false}]);
    let b_image = b.disk("disk.img", 1 << 20);
    provision(
        &b,
        &jailed_config("blk-write:0:8:11,blk-read:0:8:11,idle", drives),
    );
    let mut xb = b.start(&[], &["--no-api", "--config-file", "/vm.json"]);

    a.copy_in(&probe().pvh, "probe.elf");
    a.disk("disk.img", 1 << 20);
    // B's image, hard-linked into A's jail: reachable by path, still B's file (0600).
    std::fs::hard_link(&b_image, a.root().join("other.img")).expect("hard link B's image");
    let mut xa = a.start(&[], &["--api-sock", "/api.sock"]);
    let api = ApiClient::new(a.root().join("api.sock"));
    if let Err(e) = api.wait_ready(BOOT_TIMEOUT) {
        panic!("{e}; stderr:\n{}", xa.stderr());
    }
    let b_host_path = b_image.to_string_lossy();
    let by_host_path = api.expect(
        "PUT",
        "/drives/other",
        &json!({"drive_id": "other", "path_on_host": b_host_path, "is_root_device": false})
            .to_string(),
        400,
    );
    assert!(
        by_host_path.fault().contains(&*b_host_path),
        "{}",
        by_host_path.fault()
    );
    let by_link = api.expect(
        "PUT",
        "/drives/other",
        r#"{"drive_id": "other", "path_on_host": "/other.img", "is_root_device": false}"#,
        400,
    );
    assert!(
        by_link.fault().to_lowercase().contains("permission denied"),
        "{}",
        by_link.fault()
    );
    api.expect(
        "PUT",
        "/drives/data",
        r#"{"drive_id": "data", "path_on_host": "/disk.img", "is_root_device": false}"#,
        204,
    );
    let boot = json!({"kernel_image_path": "/probe.elf", "boot_args": probe_args("blk-write:0:8:12,blk-read:0:8:12,idle")});
    api.expect("PUT", "/boot-source", &boot.to_string(), 204);
    api.start_instance(204);

    for x in [&mut xa, &mut xb] {
        wait(x, "PROBE-BOOT-OK");
        let read = wait(x, "PROBE blk-read");
        assert!(read.starts_with("PROBE blk-read ok"), "{read}");
        wait(x, "PROBE idle ok");
    }
    let (pa, pb) = (a.xenia_pid(&xa), b.xenia_pid(&xb));
    assert_confined(pa, &a);
    assert_confined(pb, &b);
    // Outside any chroot too, each uid is kept out of the other's jail root (0700).
    for (reader, owner) in [(&a, &b), (&b, &a)] {
        let image = owner.root().join("disk.img");
        let denied = readable_as(reader.uid, &image).expect_err("read the other's image");
        assert!(denied.contains("Permission denied"), "{denied}");
        readable_as(owner.uid, &image).expect("the owner reads its image");
    }
    a.kill(&mut xa);
    b.kill(&mut xb);
}

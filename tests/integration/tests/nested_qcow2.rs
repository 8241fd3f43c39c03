//! Real Linux on a qcow2 overlay: the overlay is made on the host by `qemu-img` over the
//! raw ext4 root, Linux boots from it, writes a file, syncs and resets; a second boot reads
//! the file back; the base stays unchanged; the overlay comes back to the host, where
//! `qemu-img check` finds no errors and `qemu-img compare` sees the written differences.
#![allow(
    clippy::panic,
    clippy::print_stderr,
    reason = "a test crate: helpers fail by panicking, skips and wall times go to stderr"
)]

mod nested;

use std::path::Path;
use std::process::Command;

use nested::plan::{self, assert_clean_boot, base64, Plan, PlanVm};
use nested::repo_root;

/// First boot: a file on the overlay-backed root, flushed by `sync`.
const WRITE: &str = r#"set -e
[ -e /clone.bin ] && echo "L2-FACT preexisting=yes"
head -c 65536 /dev/urandom >/clone.bin
sync
echo "L2-FACT wrote_md5=$(md5sum </clone.bin | cut -d' ' -f1) opts=$(awk '$2 == "/" {print substr($4, 1, 2)}' /proc/mounts)"
"#;

/// Second boot: the file is there.
const READ: &str = r#"set -e
echo "L2-FACT read_md5=$(md5sum </clone.bin | cut -d' ' -f1) size=$(wc -c </clone.bin)"
"#;

fn run(cmd: &mut Command) -> std::process::Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e} (qemu-img and gzip come from tools/setup)"));
    out
}

/// A fresh overlay over `rootfs.ext4` (named relatively), gzipped: the plan carries it.
fn overlay_gz(dir: &Path, base_len: u64) -> Vec<u8> {
    let ov = dir.join("root.qcow2");
    let out = run(Command::new("qemu-img").args([
        "create",
        "-q",
        "-f",
        "qcow2",
        "-u",
        "-b",
        "rootfs.ext4",
        "-F",
        "raw",
        &ov.to_string_lossy(),
        &base_len.to_string(),
    ]));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(Command::new("gzip").arg("-c").arg(&ov));
    assert!(out.status.success());
    out.stdout
}

#[test]
fn linux_boots_from_a_qcow2_overlay_and_qemu_img_checks_it() {
    if std::env::var("XENIA_LINUX_TIER").as_deref() == Ok("skip") {
        eprintln!("SKIPPED: Linux guest plan qcow2-root: XENIA_LINUX_TIER=skip");
        return;
    }
    let base = repo_root().join("build/rootfs/rootfs.ext4");
    let Ok(meta) = std::fs::metadata(&base) else {
        // Same rule as the other Linux-tier tests: a skip passes, except under CI.
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "no {} under CI (tools/setup builds it)",
            base.display()
        );
        eprintln!("SKIPPED: no {} (tools/setup builds it)", base.display());
        return;
    };
    let dir = std::env::temp_dir().join(format!("xenia-nested-qcow2-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let gz = overlay_gz(&dir, meta.len());

    // `acpi=off`: this test is about the disk; the devices are then announced on the command
    // line (nested_linux covers discovery through the ACPI tables).
    let config = |script: &str, path: &str| {
        let mut vm = PlanVm::new(script);
        vm.drives = vec![serde_json::json!({
            "drive_id": "rootfs",
            "path_on_host": "$WORK/root.qcow2",
            "is_root_device": true,
            "image_format": "Qcow2",
            "cache_type": "Writeback",
        })];
        let mut c = vm.config();
        c["boot-source"]["boot_args"] = format!("{} acpi=off", vm.boot_args()).into();
        format!("cat >{path} <<EOF\n{c}\nEOF\n")
    };
    // The base beside the overlay (a backing file must be inside the overlay's directory).
    let script = format!(
        "cp \"$L2/rootfs.ext4\" \"$WORK/rootfs.ext4\"\n\
         fact base_md5_before \"$(md5 \"$WORK/rootfs.ext4\")\"\n\
         echo '{}' | base64 -d | gunzip >\"$WORK/root.qcow2\"\n\
         {}{}vm write \"$WORK/write.json\"\n\
         vm read \"$WORK/read.json\"\n\
         fact base_md5_after \"$(md5 \"$WORK/rootfs.ext4\")\"\n\
         fact overlay_gz \"$(gzip -c \"$WORK/root.qcow2\" | base64 | tr -d '\\n')\"\n",
        base64(&gz),
        config(WRITE, "\"$WORK/write.json\""),
        config(READ, "\"$WORK/read.json\""),
    );
    let Some(outcome) = plan::run(&Plan {
        name: "qcow2-root",
        script,
    })
    .unwrap_or_else(|e| panic!("{e}")) else {
        let _ = std::fs::remove_dir_all(&dir);
        return;
    };
    assert_clean_boot(&outcome, "write");
    assert_clean_boot(&outcome, "read");
    let (write, read) = (outcome.vm("write"), outcome.vm("read"));
    assert_eq!(write.fact("L2-FACT", "preexisting"), None);
    assert_eq!(
        write.fact("L2-FACT", "opts").as_deref(),
        Some("rw"),
        "{:?}",
        write.lines
    );
    let wrote = write.fact("L2-FACT", "wrote_md5").unwrap_or_default();
    assert_eq!(wrote.len(), 32, "no checksum: {:?}", write.lines);
    assert_eq!(
        read.fact("L2-FACT", "read_md5").as_deref(),
        Some(wrote.as_str()),
        "the second boot read different data: {:?}",
        read.lines
    );
    let before = outcome.fact("base_md5_before").unwrap_or_default();
    assert_eq!(before.len(), 32);
    assert_eq!(
        outcome.fact("base_md5_after"),
        Some(before),
        "the base changed"
    );

    // The overlay as L1 left it, checked by qemu-img against the same base.
    let b64 = outcome.fact("overlay_gz").unwrap_or_default();
    let gz_path = dir.join("after.qcow2.gz");
    let decoded = run(Command::new("sh")
        .arg("-c")
        .arg(format!(
            "printf '%s' \"$B64\" | base64 -d >'{}' && gzip -dc '{}' >'{}'",
            gz_path.display(),
            gz_path.display(),
            dir.join("after.qcow2").display()
        ))
        .env("B64", b64));
    assert!(decoded.status.success(), "overlay did not come back");
    std::fs::copy(&base, dir.join("rootfs.ext4")).expect("copy base");
    let after = dir.join("after.qcow2");
    let check = run(Command::new("qemu-img").args(["check", &after.to_string_lossy()]));
    let text = String::from_utf8_lossy(&check.stdout);
    assert!(
        check.status.success() && text.contains("No errors were found"),
        "qemu-img check: {text}{}",
        String::from_utf8_lossy(&check.stderr)
    );
    // compare: exit 1 = the images differ (the guest's writes), 0 would mean nothing landed.
    let cmp = run(Command::new("qemu-img").args([
        "compare",
        "-f",
        "qcow2",
        "-F",
        "raw",
        &after.to_string_lossy(),
        &dir.join("rootfs.ext4").to_string_lossy(),
    ]));
    assert_eq!(
        cmp.status.code(),
        Some(1),
        "qemu-img compare: {}",
        String::from_utf8_lossy(&cmp.stdout)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

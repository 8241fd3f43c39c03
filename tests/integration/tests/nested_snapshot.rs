//! A real Linux guest snapshotted while it runs and restored twice, as two clones, each in
//! a new xenia process driven through the API (`tools/api-call`'s `xenia-api` in L1): the
//! guest's tick counter carries on from where it stopped, its RNG reseeds because the VM
//! generation ID changed, the disk it was writing to in a loop is clean and readable, it
//! pings over another tap (`network_overrides`), and it powers off through ACPI. A plan (see nested/plan.rs): L1 in the nested tier on a PVM
//! host, the host itself with hardware KVM.
#![allow(
    clippy::panic,
    clippy::print_stderr,
    reason = "a test crate: helpers fail by panicking, skips and wall times go to stderr"
)]

mod nested;

use nested::plan::{self, Plan, PlanOutcome, PlanVm, VmRun};
use serde_json::json;

/// Ticks the original VM prints before the plan pauses and snapshots it.
const TICKS_BEFORE_SNAPSHOT: u64 = 5;
/// Ticks a restored guest counts from the one after which it saw its reseed, before it
/// checks and powers off (the first of them was usually printed by the original).
const TICKS_AFTER_RESTORE: u64 = 3;
/// The clones restored from the one snapshot, one after the other.
const CLONES: [&str; 2] = ["clone1", "clone2"];

/// The L2 side. Before the snapshot: makes the CRNG ready (so a VM fork reseeds it and says
/// so), mounts the data disk, writes `before.bin`, starts a writer loop on the disk (unless
/// the scenario is the idle one), then ticks every 0.2 s. A tick after the kernel logged "crng reseeded due to virtual machine
/// fork" (the vmgenid driver, on the generation ID change a restore makes) means "I am a
/// restored copy": a few more ticks, 16 bytes from /dev/urandom (hashed), then the writer is
/// stopped, a file written and synced, the disk remounted and both files read back, and the
/// guest powers off (ACPI). A guest
/// that never sees the reseed gives up after 150 ticks and reports `restored=no`.
const L2_SCRIPT: &str = r#"
reseed="crng reseeded due to virtual machine fork"
echo "L2-FACT hwrng=$(cat /sys/class/misc/hw_random/rng_current 2>/dev/null || echo none)"
head -c 1 /dev/random >/dev/null
echo "L2-FACT crng_ready=$(dmesg | grep -c 'crng init done') reseeds_at_boot=$(dmesg | grep -c "$reseed")"
ip link set lo up
ip addr add 172.16.0.2/30 dev eth0
ip link set eth0 up
if ping -c 2 -W 5 172.16.0.1 >/dev/null; then echo "L2-FACT ping_before=ok"; else echo "L2-FACT ping_before=failed"; fi
mkdir -p /mnt
if mount -t ext4 /dev/vda /mnt; then disk=yes; else disk=no; fi
echo "L2-FACT disk=$disk"
writer=""
if [ "$disk" = yes ]; then
	head -c 262144 /dev/urandom >/mnt/before.bin
	sync
	echo "L2-FACT before_md5=$(md5sum </mnt/before.bin | cut -d' ' -f1)"
	[ WRITER = yes ] && (
		while [ ! -e /tmp/stop-writer ]; do
			dd if=/dev/urandom of=/mnt/churn.bin bs=4096 count=32 conv=fsync 2>/dev/null || echo "L2-FACT churn=failed"
		done
	) &
	[ WRITER = yes ] && writer=$!
fi
i=0
after=0
while [ "$i" -lt 150 ] && [ "$after" -lt AFTER ]; do
	i=$((i + 1))
	echo "L2-TICK n=$i"
	sleep 0.2
	if [ "$after" -gt 0 ] || dmesg | grep -q "$reseed"; then after=$((after + 1)); fi
done
restored=no
[ "$after" -gt 0 ] && restored=yes
echo "L2-FACT restored=$restored reseeds=$(dmesg | grep -c "$reseed") last_tick=$i writer=${writer:+running}"
echo "L2-FACT urandom=$(head -c 16 /dev/urandom | md5sum | cut -d' ' -f1)"
if ping -c 3 -W 5 172.16.0.1 >/dev/null; then echo "L2-FACT ping_after=ok"; else echo "L2-FACT ping_after=failed"; fi
if [ "$disk" = yes ]; then
	touch /tmp/stop-writer
	[ -n "$writer" ] && wait "$writer"
	if sync; then echo "L2-FACT sync=ok"; else echo "L2-FACT sync=failed"; fi
	if dd if=/dev/urandom of=/mnt/after.bin bs=4096 count=32 conv=fsync 2>/dev/null; then
		echo "L2-FACT after_write=ok after_md5=$(md5sum </mnt/after.bin | cut -d' ' -f1)"
	else
		echo "L2-FACT after_write=failed"
	fi
	# A remount reads both files from the disk, not from the page cache.
	if umount /mnt && mount -t ext4 /dev/vda /mnt; then echo "L2-FACT remount=ok"; else echo "L2-FACT remount=failed"; fi
	echo "L2-FACT before_read=$(md5sum </mnt/before.bin | cut -d' ' -f1) after_read=$(md5sum </mnt/after.bin | cut -d' ' -f1)"
	echo "L2-FACT io_errors=$(dmesg | grep -c -i -E 'I/O error|EXT4-fs error|buffer_io_error')"
	umount /mnt
fi
poweroff -f
"#;

/// What the kernel command line carries (it is limited to 1536 bytes, too short for
/// L2_SCRIPT in base64): read the script from the second drive, which holds it padded
/// with zeros.
const L2_BOOTSTRAP: &str = "tr -d '\\000' </dev/vdb >/tmp/snap.sh && sh /tmp/snap.sh\n";

/// The hosting side: boots the original VM with an API socket, waits for its ticks, pauses
/// it, takes a Full snapshot, kills it, keeps the disk image as it was at the snapshot, and
/// restores each clone in a new xenia (`resume_vm`) onto a fresh copy of that image.
const HOST_SCRIPT: &str = r#"
cp "$L2/rootfs.ext4" "$WORK/data.ext4"
# The original's tap, in L1's own namespace (L1 is a throwaway VM). Each tap gets the same
# MAC, so the restored guest's ARP entry for 172.16.0.1 stays right on the clones' tap.
new_tap() {
	{ ip tuntap add dev "$1" mode tap 2>/dev/null || busybox tunctl -t "$1" >/dev/null; } &&
		ip link set "$1" address 02:00:00:00:ab:01 &&
		ip addr add 172.16.0.1/30 dev "$1" && ip link set "$1" up
}
new_tap xtap0 || fail "cannot create the tap xtap0"
cat >"$WORK/l2.sh" <<'L2_SCRIPT_END'
$(L2_SCRIPT)
L2_SCRIPT_END
{ cat "$WORK/l2.sh"; head -c 8192 /dev/zero; } | head -c 8192 >"$WORK/script.img"
$(WRITE_CONFIG)
vm_start original "$WORK/original.sock" --config-file "$WORK/vm.json"
if wait_console original "L2-TICK n=TICKS" 120; then
	api "$WORK/original.sock" PATCH /vm '{"state": "Paused"}' && fact paused yes
	api "$WORK/original.sock" PUT /snapshot/create "{\"snapshot_path\": \"$WORK/snap.state\", \"mem_file_path\": \"$WORK/snap.mem\", \"snapshot_type\": \"Full\"}" && fact created yes
else
	fail "L2 never printed tick TICKS"
fi
vm_kill original
# The clones come back on another tap, through `network_overrides`.
ip addr flush dev xtap0 && ip link set xtap0 down
new_tap xtap1 || fail "cannot create the tap xtap1"
cp "$WORK/data.ext4" "$WORK/data.snap.ext4"
fact snap_mem_kib "$(du -k "$WORK/snap.mem" | cut -f1)"
for clone in CLONES; do
	cp "$WORK/data.snap.ext4" "$WORK/data.ext4"
	vm_start "$clone" "$WORK/$clone.sock"
	if api "$WORK/$clone.sock" PUT /snapshot/load "{\"snapshot_path\": \"$WORK/snap.state\", \"mem_backend\": {\"backend_type\": \"File\", \"backend_path\": \"$WORK/snap.mem\"}, \"network_overrides\": [{\"iface_id\": \"eth0\", \"host_dev_name\": \"xtap1\"}], \"resume_vm\": true}"; then
		fact "${clone}_loaded" yes
		vm_wait "$clone"
	else
		vm_kill "$clone"
	fi
done
"#;

/// Whether the guest writes to its disk in a loop while it is snapshotted.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Disk {
    Idle,
    Writing,
}

fn host_script(disk: Disk) -> String {
    let mut vm = PlanVm::new(L2_BOOTSTRAP);
    vm.initrd = Some("$L2/initramfs.cpio".into());
    // Without a hardware RNG the CRNG waits for jitter entropy, which in the emulated tier
    // once took longer than the watchdog's 45 s of silence.
    vm.entropy = true;
    vm.interfaces = vec![json!({"iface_id": "eth0", "host_dev_name": "xtap0",
                                "guest_mac": "06:00:ac:10:00:02"})];
    vm.drives = vec![
        json!({"drive_id": "data", "path_on_host": "$WORK/data.ext4",
               "is_root_device": false, "is_read_only": false}),
        json!({"drive_id": "script", "path_on_host": "$WORK/script.img",
               "is_root_device": false, "is_read_only": true}),
    ];
    HOST_SCRIPT
        .replace(
            "$(L2_SCRIPT)",
            &L2_SCRIPT
                .replace("AFTER", &TICKS_AFTER_RESTORE.to_string())
                .replace("WRITER", if disk == Disk::Writing { "yes" } else { "no" }),
        )
        .replace("$(WRITE_CONFIG)", &vm.write_config("\"$WORK/vm.json\""))
        .replace("TICKS", &TICKS_BEFORE_SNAPSHOT.to_string())
        .replace("CLONES", &CLONES.join(" "))
}

/// The tick numbers on a VM's console. The first line of a restored VM may be the rest of
/// a tick line the original had begun when it was paused (`CK n=7`): a line counts as a
/// tick when what precedes `n=` ends the tick prefix.
fn ticks(vm: &VmRun) -> Vec<u64> {
    vm.lines
        .iter()
        .filter_map(|line| {
            let (before, number) = line.trim_end().split_once("n=")?;
            "L2-TICK ".ends_with(before).then_some(())?;
            number.parse().ok()
        })
        .collect()
}

fn context(outcome: &PlanOutcome) -> String {
    outcome.transcript.clone()
}

/// A running Linux L2, writing to its disk in a loop, is paused, snapshotted (Full) and
/// killed; two clones restored from the snapshot in new processes carry on: the tick
/// counter continues where it stopped (not from 1), the kernel logs the CRNG reseed the new
/// VM generation ID causes (and the clones' /dev/urandom differ), `sync` works, a file
/// written before the snapshot and one written after the restore read back from the disk
/// with their MD5s, no I/O errors, and `poweroff -f` ends each clone's xenia with status 0.
#[test]
fn a_linux_writing_to_its_disk_is_restored_twice_and_carries_on() {
    check(Disk::Writing);
}

/// The same with an idle disk (mounted, nothing in flight at the snapshot).
#[test]
fn an_idle_linux_is_restored_twice_and_carries_on() {
    check(Disk::Idle);
}

fn check(disk: Disk) {
    let name = match disk {
        Disk::Idle => "snapshot-idle",
        Disk::Writing => "snapshot-writing",
    };
    let Some(outcome) = plan::run(&Plan {
        name,
        script: host_script(disk),
    })
    .unwrap_or_else(|e| panic!("plan {name}: {e}")) else {
        return;
    };
    assert!(
        outcome.failures.is_empty(),
        "the plan failed: {:?}\n{}",
        outcome.failures,
        context(&outcome)
    );
    assert_eq!(outcome.fact("paused"), Some("yes"), "{}", context(&outcome));
    assert_eq!(
        outcome.fact("created"),
        Some("yes"),
        "{}",
        context(&outcome)
    );

    let original = outcome.vm("original");
    let fact = |vm: &VmRun, key: &str| vm.fact("L2-FACT", key);
    assert!(original.has_line("L2-INIT-OK"), "{}", context(&outcome));
    assert_eq!(
        fact(original, "disk").as_deref(),
        Some("yes"),
        "{}",
        context(&outcome)
    );
    assert!(
        fact(original, "hwrng").is_some_and(|name| name.starts_with("virtio_rng")),
        "Linux did not pick the entropy device as its hwrng\n{}",
        context(&outcome)
    );
    assert_ne!(
        fact(original, "crng_ready").as_deref(),
        Some("0"),
        "the CRNG never became ready: a VM fork would not reseed it\n{}",
        context(&outcome)
    );
    assert_eq!(
        fact(original, "reseeds_at_boot").as_deref(),
        Some("0"),
        "{}",
        context(&outcome)
    );
    assert_eq!(
        fact(original, "ping_before").as_deref(),
        Some("ok"),
        "{}",
        context(&outcome)
    );
    let before = ticks(original);
    let last = *before.last().unwrap_or(&0);
    assert!(
        last >= TICKS_BEFORE_SNAPSHOT && before == (1..=last).collect::<Vec<_>>(),
        "the original's ticks are not 1..={TICKS_BEFORE_SNAPSHOT} or more: {before:?}\n{}",
        context(&outcome)
    );
    let before_md5 = fact(original, "before_md5").unwrap_or_default();
    assert_eq!(before_md5.len(), 32, "{}", context(&outcome));

    for clone in CLONES {
        let vm = outcome.vm(clone);
        let why = || format!("clone `{clone}`\n{}", context(&outcome));
        assert_eq!(
            outcome.fact(&format!("{clone}_loaded")),
            Some("yes"),
            "{}",
            why()
        );
        assert!(
            !vm.has_line("L2-INIT-OK"),
            "the clone booted instead of resuming\n{}",
            why()
        );
        let after = ticks(vm);
        assert_eq!(
            after.first().copied(),
            Some(last + 1),
            "the counter did not continue from {last}: {after:?}\n{}",
            why()
        );
        let expected: Vec<u64> = (last + 1..last + 1 + after.len() as u64).collect();
        assert_eq!(after, expected, "ticks skipped or repeated\n{}", why());
        assert_eq!(
            fact(vm, "restored").as_deref(),
            Some("yes"),
            "no CRNG reseed\n{}",
            why()
        );
        assert_eq!(
            fact(vm, "writer").as_deref(),
            Some(if disk == Disk::Writing { "running" } else { "" }),
            "{}",
            why()
        );
        assert!(
            vm.has_line("L2-FACT restored=yes reseeds=1 "),
            "the kernel did not log one reseed\n{}",
            why()
        );
        assert_eq!(
            fact(vm, "ping_after").as_deref(),
            Some("ok"),
            "no ping over the tap `network_overrides` named\n{}",
            why()
        );
        assert_eq!(fact(vm, "sync").as_deref(), Some("ok"), "{}", why());
        assert_eq!(fact(vm, "churn"), None, "a write failed\n{}", why());
        assert_eq!(fact(vm, "after_write").as_deref(), Some("ok"), "{}", why());
        assert_eq!(fact(vm, "remount").as_deref(), Some("ok"), "{}", why());
        assert_eq!(
            fact(vm, "before_read").as_deref(),
            Some(before_md5.as_str()),
            "the file written before the snapshot reads back differently\n{}",
            why()
        );
        let after_md5 = fact(vm, "after_md5").unwrap_or_default();
        assert_eq!(after_md5.len(), 32, "{}", why());
        assert_eq!(
            fact(vm, "after_read"),
            Some(after_md5),
            "the file written after the restore reads back differently\n{}",
            why()
        );
        assert_eq!(fact(vm, "io_errors").as_deref(), Some("0"), "{}", why());
        assert!(
            !vm.has_line("Kernel panic") && !vm.has_line("L2-DONE"),
            "the clone did not power off through ACPI\n{}",
            why()
        );
        assert_eq!(vm.status, Some(0), "xenia did not exit 0\n{}", why());
    }
    let urandom: Vec<Option<String>> = CLONES
        .iter()
        .map(|clone| outcome.vm(clone).fact("L2-FACT", "urandom"))
        .collect();
    assert!(
        urandom
            .iter()
            .all(|u| u.as_ref().is_some_and(|u| u.len() == 32))
            && urandom[0] != urandom[1],
        "the clones' /dev/urandom gave {urandom:?}\n{}",
        context(&outcome)
    );
}

#[test]
fn a_tick_split_by_the_snapshot_still_counts() {
    let vm = VmRun {
        name: "clone".into(),
        status: None,
        lines: ["CK n=7", "L2-TICK n=8", "L2-FACT restored=yes", "n=9"]
            .iter()
            .map(|s| s.to_string())
            .collect(),
        log: Vec::new(),
    };
    assert_eq!(ticks(&vm), vec![7, 8, 9]);
}

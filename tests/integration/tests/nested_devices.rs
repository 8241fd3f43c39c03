//! Real Linux guests using xenia's devices: a read-only data drive, a jailed xenia with a
//! disk and a tap, TCP over virtio-net with offloads, and `/dev/hwrng` plus the balloon
//! (virtio-rng, virtio-balloon with statistics). Each test is a plan (see
//! nested/plan.rs): a script on the machine hosting xenia (L1 in the nested tier on a PVM
//! host, the host itself with hardware KVM) that prepares disks, taps and jails, boots the
//! VM and measures what it left behind. Assertions read the L2 console and those facts.
#![allow(
    clippy::panic,
    clippy::print_stderr,
    reason = "a test crate: helpers fail by panicking, skips and wall times go to stderr"
)]

mod nested;

use nested::plan::{self, assert_clean_boot, Plan, PlanOutcome, PlanVm};
use serde_json::json;

fn run(name: &'static str, script: String) -> Option<PlanOutcome> {
    plan::run(&Plan { name, script }).unwrap_or_else(|e| panic!("plan {name}: {e}"))
}

/// The root line of /proc/mounts as `dev=... fs=... opts=rw|ro`, for L2 scripts.
const ROOT_FACTS: &str =
    r#"awk '$2 == "/" {print "dev=" $1 " fs=" $3 " opts=" substr($4, 1, 2)}' /proc/mounts"#;

/// L2 side of the read-only drive scenario: vdb's read-only flag, its contents, a write
/// attempt on it and on the read-only root.
const READ_ONLY_CHECKS: &str = r#"
echo "L2-FACT ro=$(cat /sys/block/vdb/ro) sectors=$(cat /sys/block/vdb/size) md5=$(md5sum </dev/vdb | cut -d' ' -f1)"
if dd if=/dev/zero of=/dev/vdb bs=4096 count=1 conv=fsync 2>/tmp/dd.err; then
	echo "L2-FACT vdb_write=succeeded"
else
	echo "L2-FACT vdb_write=failed"
fi
echo "L2-FACT dd_error=$(head -n 1 /tmp/dd.err | tr ' ' _)"
if touch /written-on-a-read-only-root 2>/dev/null; then
	echo "L2-FACT root_write=succeeded"
else
	echo "L2-FACT root_write=failed"
fi
echo "L2-FACT $(ROOT_FACTS)"
"#;

/// A read-only data drive (next to a read-only ext4 root) is read-only to Linux:
/// `/sys/block/vdb/ro` is 1, a write fails, its contents read back as the host wrote them,
/// and the image is unchanged afterwards.
#[test]
fn linux_sees_a_read_only_data_drive_as_read_only() {
    let mut vm =
        PlanVm::new(&READ_ONLY_CHECKS.replace("$(ROOT_FACTS)", &format!("$({ROOT_FACTS})")));
    vm.drives = vec![
        json!({"drive_id": "rootfs", "path_on_host": "$L2/rootfs.ext4",
               "is_root_device": true, "is_read_only": true}),
        json!({"drive_id": "data", "path_on_host": "$WORK/data.img",
               "is_root_device": false, "is_read_only": true}),
    ];
    let script = format!(
        "head -c 1048576 /dev/urandom >\"$WORK/data.img\"\n\
         fact data_md5 \"$(md5 \"$WORK/data.img\")\"\n\
         {}vm ro \"$WORK/ro.json\"\n\
         fact data_md5_after \"$(md5 \"$WORK/data.img\")\"\n",
        vm.write_config("\"$WORK/ro.json\"")
    );
    let Some(outcome) = run("read-only-drive", script) else {
        return;
    };
    assert_clean_boot(&outcome, "ro");
    let vm = outcome.vm("ro");
    let fact = |key: &str| vm.fact("L2-FACT", key);
    let host_md5 = outcome.fact("data_md5").unwrap_or_default();
    assert_eq!(
        fact("ro").as_deref(),
        Some("1"),
        "vdb is not read-only: {:?}",
        vm.lines
    );
    assert_eq!(fact("sectors").as_deref(), Some("2048"), "{:?}", vm.lines);
    assert_eq!(fact("md5").as_deref(), Some(host_md5), "vdb reads differ");
    assert_eq!(
        fact("vdb_write").as_deref(),
        Some("failed"),
        "a write to the read-only vdb succeeded: {:?}",
        vm.lines
    );
    assert_eq!(fact("opts").as_deref(), Some("ro"), "{:?}", vm.lines);
    assert_eq!(fact("root_write").as_deref(), Some("failed"));
    assert_eq!(outcome.fact("data_md5_after"), Some(host_md5));
}

/// L2 side of the jailed scenario: writes on its root, brings up eth0, pings the tap.
const JAILED_L2: &str = r#"
head -c 262144 /dev/urandom >/jailed.bin
sync
echo "L2-FACT wrote_md5=$(md5sum </jailed.bin | cut -d' ' -f1) $(ROOT_FACTS)"
ip link set lo up
ip addr add 172.16.0.2/30 dev eth0
ip link set eth0 up
if ping -c 3 -W 5 172.16.0.1 >/tmp/ping.txt; then
	echo "L2-FACT ping=ok"
else
	echo "L2-FACT ping=failed"
	sed 's/^/L2-PING| /' /tmp/ping.txt
fi
"#;

/// The hosting side of the jailed scenario: a jail with the kernel, a copy of the ext4
/// image and the config; a network namespace with a tap; xenia-jailer with a pids cgroup
/// and that netns; while the VM runs, the jailed process's uid, root and netns are read
/// from /proc; afterwards the jail's image must have changed and --cleanup must succeed.
const JAILED_HOST: &str = r#"
uid=4321
id="nested-l2-$$"
ns="xenia-l2-$$"
base="$WORK/jails"
root="$(jail_dir "$base" "$id")"
v="$(cgroup_version)" || fail "no cgroup hierarchy at /sys/fs/cgroup"
mkdir -p "$root"
cp "$L2/vmlinux" "$root/vmlinux"
cp "$L2/rootfs.ext4" "$root/root.ext4"
$(WRITE_CONFIG)
chown -R "$uid:$uid" "$root"
chmod 700 "$root"
make_netns "$ns" || fail "cannot create the network namespace $ns"
tap_up "$ns" xtap0 172.16.0.1/30 || fail "cannot create the tap xtap0"
(
	i=0
	while [ $i -lt 1200 ]; do
		pid="$(jailed_pid "$root")"
		if [ -n "$pid" ]; then
			fact jailed_uid "$(awk '/^Uid:/ {print $2 "," $3}' "/proc/$pid/status")"
			fact jailed_caps "$(awk '/^CapEff:/ {print $2}' "/proc/$pid/status")"
			fact jailed_netns_is_ns "$([ "$(readlink "/proc/$pid/ns/net")" = "net:[$(stat -L -c %i "/var/run/netns/$ns")]" ] && echo yes || echo no)"
			fact jailed_cgroup "$(grep -c "/$id\$" "/proc/$pid/cgroup")"
			exit 0
		fi
		sleep 0.05
		i=$((i + 1))
	done
	fact jailed_uid never-seen
) &
prober=$!
jailed_vm jailed "$base" "$id" "$uid" --cgroup-version "$v" --cgroup pids.max=64 \
	--netns "/var/run/netns/$ns"
wait "$prober"
if cmp -s "$L2/rootfs.ext4" "$root/root.ext4"; then fact image_changed no; else fact image_changed yes; fi
"$JAILER" --cleanup --id "$id" --exec-file "$XENIA" --chroot-base-dir "$base" \
	--cgroup-version "$v" >/dev/null 2>&1
fact cleanup_status $?
fact jail_left "$([ -e "$base/$(basename "$XENIA")/$id" ] && echo yes || echo no)"
drop_netns "$ns"
"#;

/// xenia started by xenia-jailer (pivot_root jail, uid 4321, pids cgroup, its own netns)
/// boots a real Linux from an ext4 image inside the jail, writes to it, and reaches the
/// tap in the jail's network namespace.
#[test]
fn jailed_xenia_boots_linux_with_a_disk_and_a_tap() {
    let mut vm = PlanVm::new(&JAILED_L2.replace("$(ROOT_FACTS)", &format!("$({ROOT_FACTS})")));
    vm.kernel = "/vmlinux".into();
    vm.drives = vec![json!({"drive_id": "rootfs", "path_on_host": "/root.ext4",
                            "is_root_device": true, "is_read_only": false})];
    vm.interfaces = vec![json!({"iface_id": "eth0", "host_dev_name": "xtap0",
                                "guest_mac": "06:00:ac:10:00:02"})];
    let script = JAILED_HOST.replace("$(WRITE_CONFIG)", &vm.write_config("\"$root/vm.json\""));
    let Some(outcome) = run("jailed", script) else {
        return;
    };
    assert_clean_boot(&outcome, "jailed");
    let vm = outcome.vm("jailed");
    assert_eq!(
        vm.fact("L2-FACT", "fs").as_deref(),
        Some("ext4"),
        "{:?}",
        vm.lines
    );
    assert_eq!(
        vm.fact("L2-FACT", "opts").as_deref(),
        Some("rw"),
        "{:?}",
        vm.lines
    );
    assert_eq!(
        vm.fact("L2-FACT", "ping").as_deref(),
        Some("ok"),
        "L2 could not ping the tap in the jail's netns:\n{}",
        vm.lines.join("\n")
    );
    assert_eq!(
        outcome.fact("jailed_uid"),
        Some("4321,4321"),
        "{}",
        outcome.transcript
    );
    assert_eq!(outcome.fact("jailed_caps"), Some("0000000000000000"));
    assert_eq!(outcome.fact("jailed_netns_is_ns"), Some("yes"));
    assert_ne!(
        outcome.fact("jailed_cgroup"),
        Some("0"),
        "xenia is in no cgroup of its jail"
    );
    assert_eq!(outcome.fact("image_changed"), Some("yes"));
    assert_eq!(outcome.fact("cleanup_status"), Some("0"));
    assert_eq!(outcome.fact("jail_left"), Some("no"));
}

/// Bytes moved each way in the TCP scenario.
const TRANSFER_BYTES: u64 = 4 << 20;

/// L2 side of the network scenario.
const NET_L2: &str = r#"
ip link set lo up
ip addr add 172.16.0.2/30 dev eth0
ip link set eth0 up
echo "L2-FACT mac=$(cat /sys/class/net/eth0/address) mtu=$(cat /sys/class/net/eth0/mtu)"
if ping -c 3 -W 5 172.16.0.1 >/tmp/ping.txt; then echo "L2-FACT ping=ok"; else echo "L2-FACT ping=failed"; fi
head -c $(BYTES) /dev/urandom >/tmp/to-l1.bin
echo "L2-FACT to_l1_md5=$(md5sum </tmp/to-l1.bin | cut -d' ' -f1)"
nc -l -p 5000 -e cat /tmp/to-l1.bin </dev/null
echo "L2-FACT send_status=$?"
nc 172.16.0.1 5001 </dev/null >/tmp/from-l1.bin
echo "L2-FACT from_l1_md5=$(md5sum </tmp/from-l1.bin | cut -d' ' -f1) from_l1_bytes=$(wc -c </tmp/from-l1.bin)"
"#;

/// The hosting side: a tap with an address in a netns of its own, two busybox nc
/// listeners (one receives, one sends), the tap's counters before the VM and at the end
/// of each transfer: frames the tap received during the upload are the guest's data
/// segments, frames it sent during the download are L1's (the ACKs go the other way).
const NET_HOST: &str = r#"
ns="xenia-net-$$"
make_netns "$ns" || fail "cannot create the network namespace $ns"
tap_up "$ns" xtap0 172.16.0.1/30 || fail "cannot create the tap xtap0"
head -c $(BYTES) /dev/urandom >"$WORK/to-l2.bin"
fact to_l2_md5 "$(md5 "$WORK/to-l2.bin")"
set -- $(tap_counters "$ns" xtap0)
rx0=$1 rxp0=$2
# Each listener's end marks the end of a transfer: the counters then tell the frames of
# that transfer apart from the other's (and its ACKs).
(
	# L2 serves its data with `nc -l -e cat` (cat's large writes let TCP build large
	# segments); connect once it listens.
	until [ -e "$WORK/vm-done" ]; do
		if in_netns "$ns" busybox nc 172.16.0.2 5000 </dev/null >"$WORK/from-l2.bin" 2>/dev/null \
			&& [ -s "$WORK/from-l2.bin" ]; then
			break
		fi
		sleep 0.2
	done
	tap_counters "$ns" xtap0 >"$WORK/after-upload"
) &
in_netns "$ns" busybox nc -l -p 5001 -e cat "$WORK/to-l2.bin" </dev/null &
sender=$!
$(WRITE_CONFIG)
vm_in_netns "$ns" net "$WORK/net.json"
tap_counters "$ns" xtap0 >"$WORK/after-download"
: >"$WORK/vm-done"
# Only a failed transfer leaves the listener behind.
kill "$sender" 2>/dev/null
wait
set -- $(cat "$WORK/after-upload")
fact upload_rx "$(($1 - rx0)),$(($2 - rxp0))"
tx1=$3 txp1=$4
set -- $(cat "$WORK/after-download")
fact download_tx "$(($3 - tx1)),$(($4 - txp1))"
fact from_l2_md5 "$(md5 "$WORK/from-l2.bin" 2>/dev/null)"
drop_netns "$ns"
"#;

/// `bytes,packets` from a tap counter fact.
fn counter(outcome: &PlanOutcome, key: &str) -> (u64, u64) {
    outcome
        .fact(key)
        .and_then(|v| v.split_once(','))
        .and_then(|(b, p)| Some((b.parse().ok()?, p.parse().ok()?)))
        .unwrap_or_else(|| panic!("no {key} counters\n{}", outcome.transcript))
}

/// Largest Ethernet frame without offloads: the 1500-byte MTU plus the 14-byte header.
const MAX_PLAIN_FRAME: u64 = 1514;

/// L2 brings up eth0 over a tap, pings L1's end, and moves 4 MiB each way over TCP with
/// busybox nc, intact (MD5 on both sides). Segmentation offloads work both ways: during
/// each transfer the average data frame on the tap is larger than any frame could be
/// without TSO (Linux sends at least 2 segments per TSO frame), so some exceeded the MTU.
#[test]
fn linux_moves_tcp_data_over_virtio_net_with_offloads() {
    let bytes = TRANSFER_BYTES.to_string();
    let mut vm = PlanVm::new(&NET_L2.replace("$(BYTES)", &bytes));
    vm.mem_mib = 256;
    vm.initrd = Some("$L2/initramfs.cpio".into());
    vm.interfaces = vec![json!({"iface_id": "eth0", "host_dev_name": "xtap0",
                                "guest_mac": "06:00:ac:10:00:02"})];
    let script = NET_HOST
        .replace("$(BYTES)", &bytes)
        .replace("$(WRITE_CONFIG)", &vm.write_config("\"$WORK/net.json\""));
    let Some(outcome) = run("net", script) else {
        return;
    };
    assert_clean_boot(&outcome, "net");
    let vm = outcome.vm("net");
    let fact = |key: &str| vm.fact("L2-FACT", key);
    assert_eq!(fact("mac").as_deref(), Some("06:00:ac:10:00:02"));
    assert_eq!(
        fact("ping").as_deref(),
        Some("ok"),
        "{}",
        vm.lines.join("\n")
    );
    let sent = fact("to_l1_md5").unwrap_or_default();
    assert_eq!(sent.len(), 32, "{:?}", vm.lines);
    assert_eq!(
        outcome.fact("from_l2_md5"),
        Some(sent.as_str()),
        "L1 received different data from L2\n{}",
        outcome.transcript
    );
    assert_eq!(fact("from_l1_bytes"), Some(bytes.clone()));
    assert_eq!(
        fact("from_l1_md5").as_deref(),
        outcome.fact("to_l2_md5"),
        "L2 received different data from L1"
    );
    let (rx_bytes, rx_packets) = counter(&outcome, "upload_rx");
    let (tx_bytes, tx_packets) = counter(&outcome, "download_tx");
    eprintln!(
        "tap: L2 -> L1 transfer {rx_bytes} B in {rx_packets} frames ({} B/frame), L1 -> L2 \
         transfer {tx_bytes} B in {tx_packets} frames ({} B/frame)",
        rx_bytes / rx_packets.max(1),
        tx_bytes / tx_packets.max(1)
    );
    assert!(rx_bytes >= TRANSFER_BYTES, "the tap saw only {rx_bytes} B");
    assert!(
        rx_bytes > MAX_PLAIN_FRAME * rx_packets,
        "no frame larger than the MTU reached the tap from the guest: {rx_bytes} B in \
         {rx_packets} frames (TSO not used)"
    );
    // The other way: L1's stack hands the tap segments larger than the MTU only if xenia
    // told the tap (TUNSETOFFLOAD) that the guest accepts them.
    assert!(tx_bytes >= TRANSFER_BYTES, "the tap sent only {tx_bytes} B");
    assert!(
        tx_bytes > MAX_PLAIN_FRAME * tx_packets,
        "no frame larger than the MTU went from the tap to the guest: {tx_bytes} B in \
         {tx_packets} frames (guest TSO not offered)"
    );
}

/// L2 side of the entropy and balloon scenario: the hwrng Linux picked and 4 KiB read from
/// it, then MemTotal once the balloon reached its boot-time target (without
/// DEFLATE_ON_OOM, Linux takes inflated pages out of MemTotal), then two statistics rounds.
const RNG_BALLOON_L2: &str = r#"
echo "L2-FACT rng=$(cat /sys/class/misc/hw_random/rng_current)"
echo "L2-FACT hwrng_bytes=$(head -c 4096 /dev/hwrng | wc -c)"
echo "L2-FACT hwrng_distinct=$(head -c 4096 /dev/hwrng | od -An -v -tx1 | tr -s ' ' '\n' | grep -v '^$' | sort -u | wc -l)"
i=0
while [ "$i" -lt 300 ]; do
	total=$(awk '/^MemTotal:/ {print $2}' /proc/meminfo)
	[ "$total" -lt 200000 ] && break
	sleep 0.1
	i=$((i + 1))
done
echo "L2-FACT memtotal_kb=$total"
sleep 3
"#;

/// The hosting side: boots the VM with metrics, then reports the devices' counters.
const RNG_BALLOON_HOST: &str = r#"
$(WRITE_CONFIG)
vm rngballoon "$WORK/rb.json" --metrics-path "$WORK/metrics.json"
last=$(tail -n 1 "$WORK/metrics.json")
fact entropy_bytes "$(echo "$last" | grep -o '"entropy_bytes":[0-9]*' | cut -d: -f2)"
fact pages_released "$(echo "$last" | grep -o '"pages_released":[0-9]*' | cut -d: -f2)"
fact stats_updates "$(echo "$last" | grep -o '"stats_updates_count":[0-9]*' | cut -d: -f2)"
"#;

/// Linux uses the entropy device as its hwrng (`virtio_rng`), reads random bytes from
/// `/dev/hwrng`, inflates the balloon to its boot-time target of 64 MiB (MemTotal drops
/// below 200,000 kB in a 256 MiB VM; xenia released every page) and sends statistics at the
/// configured 1 s interval.
#[test]
fn linux_reads_dev_hwrng_and_inflates_the_balloon() {
    let mut vm = PlanVm::new(RNG_BALLOON_L2);
    vm.mem_mib = 256;
    vm.initrd = Some("$L2/initramfs.cpio".into());
    let mut config = vm.config();
    config["entropy"] = json!({});
    config["balloon"] =
        json!({"amount_mib": 64, "deflate_on_oom": false, "stats_polling_interval_s": 1});
    let write = format!("cat >\"$WORK/rb.json\" <<EOF\n{config}\nEOF\n");
    let script = RNG_BALLOON_HOST.replace("$(WRITE_CONFIG)", &write);
    let Some(outcome) = run("rng-balloon", script) else {
        return;
    };
    assert_clean_boot(&outcome, "rngballoon");
    let vm = outcome.vm("rngballoon");
    let fact = |key: &str| vm.fact("L2-FACT", key);
    let lines = || vm.lines.join("\n");
    assert!(
        fact("rng").is_some_and(|r| r.starts_with("virtio_rng")),
        "{}",
        lines()
    );
    assert_eq!(fact("hwrng_bytes").as_deref(), Some("4096"), "{}", lines());
    let distinct: u32 = fact("hwrng_distinct")
        .and_then(|d| d.parse().ok())
        .unwrap_or(0);
    assert!(
        distinct > 200,
        "4 KiB from /dev/hwrng had {distinct} byte values"
    );
    let memtotal: u64 = fact("memtotal_kb")
        .and_then(|m| m.parse().ok())
        .unwrap_or(0);
    assert!(
        memtotal > 0 && memtotal < 200_000,
        "MemTotal {memtotal} kB: the balloon did not inflate\n{}",
        lines()
    );
    let num = |key: &str| -> u64 {
        outcome
            .fact(key)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {key}\n{}", outcome.transcript))
    };
    assert!(num("entropy_bytes") >= 8192, "{}", outcome.transcript);
    assert_eq!(num("pages_released"), 64 * 256, "{}", outcome.transcript);
    assert!(num("stats_updates") >= 2, "{}", outcome.transcript);
}

# shellcheck shell=sh
# Helpers for a Linux-tier *plan*: a shell script that runs on the machine hosting xenia
# (L1 in the nested tier, the host itself with hardware KVM) and may boot several VMs,
# prepare disks and taps, and check what they left behind. Sourced before the plan.
#
# The caller sets:
#   XENIA   the (static) xenia binary        JAILER  xenia-jailer (static)
#   L2      directory with vmlinux, vmlinux-nopvh, bzImage, initramfs.cpio, rootfs.ext4
#   WORK    an empty scratch directory the plan may fill
# Output protocol (one line each, on stdout):
#   VM-BEGIN name=N / L2| <guest console line> / XENIA| <xenia log line> / VM-END name=N status=S
#   HOST-FACT key=value             a fact the plan measured on the hosting machine
#   HOST-FAIL <reason>              the plan could not do a step (the test fails with it)

fact() { echo "HOST-FACT $1=$2"; }
fail() { echo "HOST-FAIL $*"; }

# Runs `"$@"` (a command that becomes xenia) as VM NAME: its stdout is the guest console.
run_vm_command() {
	name="$1"
	shift
	echo "VM-BEGIN name=$name"
	rm -f "$WORK/.vm-log" "$WORK/.vm-status"
	mkfifo "$WORK/.vm-log"
	sed 's/^/XENIA| /' <"$WORK/.vm-log" &
	log_reader=$!
	{
		"$@" 2>"$WORK/.vm-log" </dev/null
		echo $? >"$WORK/.vm-status"
	} | sed 's/^/L2| /'
	wait "$log_reader"
	echo "VM-END name=$name status=$(cat "$WORK/.vm-status")"
}

# vm NAME CONFIG.json [xenia args...]: boots a VM with xenia, unjailed.
vm() {
	name="$1"
	config="$2"
	shift 2
	run_vm_command "$name" "$XENIA" --no-api --config-file "$config" "$@"
}

# The jailer pivot_roots, which Linux refuses while the caller's root is the initramfs
# (rootfs has no parent mount). A bind mount of / has one: run the jailer chrooted there.
jailer_root() {
	if [ "$(awk '$2 == "/" {fs = $3} END {print fs}' /proc/mounts)" = rootfs ]; then
		mkdir -p /.jailer-root
		grep -q ' /.jailer-root ' /proc/mounts || mount --rbind / /.jailer-root
		echo /.jailer-root
	else
		echo /
	fi
}

# jail_dir BASE ID: the jail's root directory, which the plan fills before jailed_vm.
jail_dir() { echo "$1/$(basename "$XENIA")/$2/root"; }

# jailed_vm NAME BASE ID UID [jailer args...]: boots the VM whose config the plan put at
# /vm.json inside the jail (paths in it are relative to the jail root).
jailed_vm() {
	name="$1"
	base="$2"
	id="$3"
	uid="$4"
	shift 4
	root="$(jailer_root)"
	run_vm_command "$name" chroot "$root" "$JAILER" --id "$id" --exec-file "$XENIA" \
		--uid "$uid" --gid "$uid" --chroot-base-dir "$base" "$@" \
		-- --no-api --config-file /vm.json
}

# cgroup_version: 2 when a cgroup2 hierarchy is at /sys/fs/cgroup, 1 when v1 hierarchies
# are mounted there; mounts cgroup2 when nothing is (as in L1).
cgroup_version() {
	fs="$(awk '$2 == "/sys/fs/cgroup" {print $3}' /proc/mounts)"
	if [ -z "$fs" ]; then
		mount -t cgroup2 none /sys/fs/cgroup || return 1
		fs=cgroup2
	fi
	if [ "$fs" = cgroup2 ]; then echo 2; else echo 1; fi
}

# md5 FILE: the file's MD5 in hex.
md5() { md5sum <"$1" | cut -d' ' -f1; }

# shellcheck shell=sh
# Helpers for a Linux-tier *plan*: a shell script that runs on the machine hosting xenia
# (L1 in the nested tier, the host itself with hardware KVM) and may boot several VMs,
# prepare disks and taps, and check what they left behind. Sourced before the plan.
#
# The caller sets:
#   XENIA   the (static) xenia binary        JAILER  xenia-jailer (static)
#   XENIA_API  the (static) xenia-api client (tools/api-call), for `api`
#   L2      directory with vmlinux, vmlinux-nopvh, bzImage, initramfs.cpio, rootfs.ext4
#   WORK    an empty scratch directory the plan may fill
#   XENIA_EXTRA_ARGS  optional: words added to every xenia command line (e.g. --level Debug)
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
	# shellcheck disable=SC2086 # a word list on purpose
	run_vm_command "$name" "$XENIA" --no-api --config-file "$config" "$@" $XENIA_EXTRA_ARGS
}

# vm_in_netns NETNS NAME CONFIG.json [xenia args...]: vm, inside a network namespace.
vm_in_netns() {
	ns="$1"
	name="$2"
	config="$3"
	shift 3
	# shellcheck disable=SC2086 # a word list on purpose
	run_vm_command "$name" nsenter --net="/var/run/netns/$ns" \
		"$XENIA" --no-api --config-file "$config" "$@" $XENIA_EXTRA_ARGS
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
	# shellcheck disable=SC2086 # a word list on purpose
	run_vm_command "$name" chroot "$root" "$JAILER" --id "$id" --exec-file "$XENIA" \
		--uid "$uid" --gid "$uid" --chroot-base-dir "$base" "$@" \
		-- --no-api --config-file /vm.json $XENIA_EXTRA_ARGS
}

# Background VMs driven through the API (snapshots, restores). Each keeps its files in
# $WORK/.vm-NAME: pid (xenia's), console (a copy of what it printed), status (its exit).

# vm_start NAME SOCK [xenia args...]: starts xenia serving its API on SOCK, in the
# background; its console is forwarded as `L2| ` lines (and copied to the console file),
# its log as `XENIA| ` lines. End it with vm_wait or vm_kill, before the next vm_start.
vm_start() {
	name="$1"
	sock="$2"
	shift 2
	dir="$WORK/.vm-$name"
	rm -rf "$dir" "$sock"
	mkdir -p "$dir"
	mkfifo "$dir/log"
	echo "VM-BEGIN name=$name"
	(
		sed 's/^/XENIA| /' <"$dir/log" &
		reader=$!
		{
			# shellcheck disable=SC2086 # a word list on purpose
			"$XENIA" --api-sock "$sock" "$@" $XENIA_EXTRA_ARGS 2>"$dir/log" </dev/null &
			echo $! >"$dir/pid"
			wait $!
			echo $? >"$dir/status"
		} | tee "$dir/console" | sed 's/^/L2| /'
		wait "$reader"
	) &
	echo $! >"$dir/runner"
}

# vm_wait NAME: waits for the VM's xenia to exit and prints VM-END with its status.
vm_wait() {
	dir="$WORK/.vm-$1"
	wait "$(cat "$dir/runner")"
	echo "VM-END name=$1 status=$(cat "$dir/status" 2>/dev/null)"
}

# vm_kill NAME: kills the VM's xenia (SIGKILL, as a control plane drops a snapshotted VM).
vm_kill() {
	dir="$WORK/.vm-$1"
	# The runner writes the pid right after starting xenia; an API call that answered
	# proves xenia runs, so this waits at most a moment.
	until [ -s "$dir/pid" ]; do sleep 0.05; done
	kill -KILL "$(cat "$dir/pid")" 2>/dev/null
	vm_wait "$1"
}

# wait_console NAME PATTERN SECS: waits until the VM's console has a line matching the
# (grep) PATTERN; status 1 after SECS seconds or when xenia exited first.
wait_console() {
	dir="$WORK/.vm-$1"
	tries=$(($3 * 10))
	while ! grep -q "$2" "$dir/console" 2>/dev/null; do
		[ -e "$dir/status" ] && return 1
		tries=$((tries - 1))
		[ "$tries" -gt 0 ] || return 1
		sleep 0.1
	done
}

# api SOCK METHOD PATH [BODY]: one request to xenia's API; prints `API METHOD PATH STATUS
# BODY` on one line; status 0 for a 2xx answer.
api() {
	answer="$("$XENIA_API" "$@" 2>&1)"
	result=$?
	echo "API $2 $3 $(echo "$answer" | tr '\n' ' ')"
	return "$result"
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

# make_netns NAME: a named network namespace (iproute2's /var/run/netns/NAME), through
# `ip netns` when iproute2 is there, else busybox `unshare --net=FILE` (L1).
make_netns() {
	if ip netns add "$1" 2>/dev/null; then return 0; fi
	mkdir -p /var/run/netns && : >"/var/run/netns/$1" && unshare --net="/var/run/netns/$1" true
}

# drop_netns NAME
drop_netns() {
	ip netns del "$1" 2>/dev/null && return 0
	umount "/var/run/netns/$1" 2>/dev/null
	rm -f "/var/run/netns/$1"
}

# in_netns NAME CMD...: runs CMD inside the namespace.
in_netns() {
	ns="$1"
	shift
	nsenter --net="/var/run/netns/$ns" "$@"
}

# tap_up NETNS TAP ADDRESS/PREFIX: a persistent tap with an address, up, in the namespace
# (iproute2's `ip tuntap`, else busybox tunctl).
tap_up() {
	in_netns "$1" ip link set lo up &&
		{ in_netns "$1" ip tuntap add dev "$2" mode tap 2>/dev/null ||
			in_netns "$1" busybox tunctl -t "$2" >/dev/null; } &&
		in_netns "$1" ip addr add "$3" dev "$2" &&
		in_netns "$1" ip link set "$2" up
}

# tap_counters NETNS TAP: "rx_bytes rx_packets tx_bytes tx_packets" from /proc/net/dev.
tap_counters() {
	in_netns "$1" cat /proc/net/dev | sed 's/^ *\([^:]*\):/\1 /' |
		awk -v tap="$2" '$1 == tap {print $2, $3, $10, $11}'
}

# jailed_pid ROOT: the pid of a running xenia whose root directory is ROOT (the jail's;
# /proc/PID/root reads as "/" from another mount namespace, so inodes are compared).
jailed_pid() {
	want="$(stat -c %d:%i "$1")"
	for proc in /proc/[0-9]*; do
		[ "$(cat "$proc/comm" 2>/dev/null)" = xenia ] || continue
		[ "$(stat -L -c %d:%i "$proc/root" 2>/dev/null)" = "$want" ] || continue
		echo "${proc#/proc/}"
		return 0
	done
}

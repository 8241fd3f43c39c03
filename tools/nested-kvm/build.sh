#!/usr/bin/env bash
# Builds everything the nested-KVM tier needs (each step cached):
#   <repo>/build/linux/{vmlinux,vmlinux-nopvh,bzImage}   guest kernel (L1 and L2)
#   <repo>/build/rootfs/{initramfs.cpio,rootfs.ext4}     L2 userland
#   <repo>/build/nested/xenia                            static xenia for L1
#   <repo>/build/nested/tsc-khz                          host TSC rate probe
#   <repo>/build/nested/l1.cpio                          L1's initramfs
# L1's initramfs holds busybox, /bin/xenia, the L2 artifacts under /l2/ and /init
# (tools/nested-kvm/l1-init). Run by tools/setup and by the nested integration tests.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
out="$repo/build/nested"
busybox="${BUSYBOX:-/bin/busybox}"
die() { echo "nested-kvm/build: error: $*" >&2; exit 1; }

"$repo/resources/guest-kernels/build-linux.sh"
"$repo/tools/mkrootfs"
mkdir -p "$out"

# xenia runs inside L1, whose initramfs has no libraries: link it statically (a static-pie
# with the gnu target). A separate target dir keeps the normal build's artifacts valid.
echo "nested-kvm/build: static xenia (cargo, release)"
(cd "$repo" && RUSTFLAGS='-C target-feature=+crt-static' cargo build -q --release \
	--target x86_64-unknown-linux-gnu --bin xenia --target-dir "$repo/target/static")
static_xenia="$repo/target/static/x86_64-unknown-linux-gnu/release/xenia"
[ -x "$static_xenia" ] || die "cargo did not produce $static_xenia"
if file -L "$static_xenia" | grep -q 'dynamically linked' \
	&& ! file -L "$static_xenia" | grep -q 'static-pie'; then
	die "$static_xenia is dynamically linked"
fi
cmp -s "$static_xenia" "$out/xenia" || cp -f "$static_xenia" "$out/xenia"

tsc_src="$here/tsc_khz.rs"
tsc_stamp="$(sha256sum <"$tsc_src" | cut -c1-16)"
if [ ! -x "$out/tsc-khz" ] || [ "$(cat "$out/tsc-khz.stamp" 2>/dev/null)" != "$tsc_stamp" ]; then
	rustc -O --edition 2021 "$tsc_src" -o "$out/tsc-khz"
	echo "$tsc_stamp" >"$out/tsc-khz.stamp"
fi

inputs=("$0" "$here/l1-init" "$busybox" "$out/xenia" "$repo/build/linux/vmlinux"
	"$repo/build/linux/vmlinux-nopvh" "$repo/build/linux/bzImage"
	"$repo/build/rootfs/initramfs.cpio" "$repo/build/rootfs/rootfs.ext4")
stamp="$(sha256sum "${inputs[@]}" | cut -d' ' -f1 | sha256sum | cut -c1-16)"
if [ -f "$out/l1.cpio" ] && [ "$(cat "$out/l1.stamp" 2>/dev/null)" = "$stamp" ]; then
	echo "nested-kvm/build: $out/l1.cpio up to date"
	exit 0
fi

stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT
tree="$stage/tree"
mkdir -p "$tree"/{bin,sbin,dev,proc,sys,tmp,run,etc,l2}
cp "$busybox" "$tree/bin/busybox"
for applet in $("$busybox" --list); do
	[ "$applet" = busybox ] || ln -sf busybox "$tree/bin/$applet"
done
cp "$out/xenia" "$tree/bin/xenia"
install -m 0755 "$here/l1-init" "$tree/init"
mknod -m 600 "$tree/dev/console" c 5 1
mknod -m 666 "$tree/dev/null" c 1 3
cp "$repo/build/linux/vmlinux" "$repo/build/linux/vmlinux-nopvh" "$repo/build/linux/bzImage" \
	"$repo/build/rootfs/initramfs.cpio" "$repo/build/rootfs/rootfs.ext4" "$tree/l2/"
(cd "$tree" && find . -print0 | LC_ALL=C sort -z \
	| cpio --null --create --format=newc --owner=0:0 --quiet) >"$stage/l1.cpio"
mv -f "$stage/l1.cpio" "$out/l1.cpio"
echo "$stamp" >"$out/l1.stamp"
echo "nested-kvm/build: $out/l1.cpio"

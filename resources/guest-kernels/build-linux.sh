#!/usr/bin/env bash
# Builds xenia's guest kernel from Debian's linux-source-6.1 and our config fragment.
#
#   resources/guest-kernels/build-linux.sh [FRAGMENT]
#
# Outputs <repo>/build/linux/{vmlinux,vmlinux-nopvh,bzImage,config}. vmlinux-nopvh is vmlinux
# without its ELF notes (so without the PVH entry note): a VMM boots it through the 64-bit
# Linux boot protocol. The build is cached in
# ${XENIA_CACHE:-$HOME/.cache/xenia}/linux-<hash>/, where <hash> covers the fragment, this
# script and the source tarball's identity; a cache hit only copies three files.
# Environment: JOBS (default: number of CPUs), LINUX_TARBALL (default: Debian's tarball).
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
fragment="$(realpath "${1:-$here/linux/xenia-6.1.config}")"
tarball="${LINUX_TARBALL:-/usr/src/linux-source-6.1.tar.xz}"
cache="${XENIA_CACHE:-$HOME/.cache/xenia}"
out="$repo/build/linux"
jobs="${JOBS:-$(nproc)}"

die() { echo "build-linux: error: $*" >&2; exit 1; }

[ -f "$fragment" ] || die "config fragment '$fragment' not found"
[ -f "$tarball" ] || die "kernel source '$tarball' not found (apt-get install linux-source-6.1)"

hash="$( { sha256sum <"$fragment"; sha256sum <"$0"; stat -c '%n %s %Y' "$tarball"; } \
	| sha256sum | cut -c1-16)"
dest="$cache/linux-$hash"

publish() {
	if [ ! -f "$dest/vmlinux-nopvh" ]; then
		objcopy --remove-section=.notes "$dest/vmlinux" "$dest/vmlinux-nopvh.tmp" 2>/dev/null
		if readelf -n "$dest/vmlinux-nopvh.tmp" | grep -q 'Xen'; then
			die "$dest/vmlinux-nopvh.tmp still has Xen ELF notes"
		fi
		mv -f "$dest/vmlinux-nopvh.tmp" "$dest/vmlinux-nopvh"
	fi
	mkdir -p "$out"
	cp -f "$dest/vmlinux" "$dest/vmlinux-nopvh" "$dest/bzImage" "$dest/config" "$out/"
	echo "build-linux: $out/vmlinux $out/bzImage (cache $dest)"
}

if [ -f "$dest/done" ]; then
	publish
	exit 0
fi

# Unpack the source once; every fragment builds out of tree (O=) against it.
src_root="$cache/src"
src="$src_root/$(basename "$tarball" .tar.xz)"
if [ ! -f "$src/.xenia-unpacked" ]; then
	echo "build-linux: unpacking $tarball into $src_root"
	rm -rf "$src"
	mkdir -p "$src_root"
	tar -C "$src_root" -xf "$tarball"
	[ -f "$src/Makefile" ] || die "unpacked tarball has no $src/Makefile"
	touch "$src/.xenia-unpacked"
fi

obj="$dest/obj"
mkdir -p "$obj"
echo "build-linux: configuring (allnoconfig + $fragment)"
make -s -C "$src" O="$obj" ARCH=x86_64 KCONFIG_ALLCONFIG="$fragment" allnoconfig

# Kconfig silently drops options whose dependencies are missing: check each one took effect.
missing=0
while IFS= read -r line; do
	line="${line%%#*}"
	line="$(echo "$line" | tr -d '[:space:]')"
	[ -n "$line" ] || continue
	name="${line%%=*}"
	value="${line#*=}"
	if [ "$value" = n ]; then
		if grep -q "^$name=" "$obj/.config"; then
			echo "build-linux: $name should be off but is: $(grep "^$name=" "$obj/.config")" >&2
			missing=1
		fi
	elif ! grep -qx "$name=$value" "$obj/.config"; then
		got="$(grep -E "^$name=|^# $name is not set" "$obj/.config" || echo 'absent')"
		echo "build-linux: $name=$value did not take effect (got: $got)" >&2
		missing=1
	fi
done <"$fragment"
[ "$missing" = 0 ] || die "config fragment $fragment not fully applied (see above)"

echo "build-linux: building vmlinux and bzImage with -j$jobs (takes minutes)"
start=$(date +%s)
make -s -C "$src" O="$obj" ARCH=x86_64 -j"$jobs" vmlinux bzImage
echo "build-linux: kernel built in $(( $(date +%s) - start )) s"

# The uncompressed ELF must carry the PVH entry note (Xen ELF note type 0x12).
readelf -n "$obj/vmlinux" | grep -q 'Xen.*0x00000012' \
	|| die "$obj/vmlinux has no PVH (Xen 0x12) ELF note"

cp -f "$obj/vmlinux" "$dest/vmlinux"
cp -f "$obj/arch/x86/boot/bzImage" "$dest/bzImage"
cp -f "$obj/.config" "$dest/config"
touch "$dest/done"
publish

#!/bin/sh
# Builds the probe guest into <repo>/build/probe/:
#   probe.elf        ELF with a PVH note (VMMs boot it through PVH)
#   probe-nopvh.elf  same code, no note (64-bit Linux boot protocol)
#   probe.bzImage    bzImage wrapper of the same code (bzImage loader path)
# Cargo's own caching makes a second run cost about a second.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../../.." && pwd)
out="$repo/build/probe"
mkdir -p "$out"
cd "$here"   # cargo reads .cargo/config.toml from the current directory only
cargo build --release --quiet --target-dir "$out/target"
bin="$out/target/x86_64-unknown-linux-gnu/release"
install -m 0644 "$bin/probe" "$out/probe.elf.tmp" && mv "$out/probe.elf.tmp" "$out/probe.elf"
install -m 0644 "$bin/probe-nopvh" "$out/probe-nopvh.elf.tmp" && mv "$out/probe-nopvh.elf.tmp" "$out/probe-nopvh.elf"
echo "$out/probe.elf"
echo "$out/probe-nopvh.elf"
if [ "$bin/probe-bzimage" -nt "$out/probe.bzImage" ] || [ ! -e "$out/probe.bzImage" ]; then
    objcopy -O binary "$bin/probe-bzimage" "$out/probe.bzImage.tmp"
    mv "$out/probe.bzImage.tmp" "$out/probe.bzImage"
fi
echo "$out/probe.bzImage"
